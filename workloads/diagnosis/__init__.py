"""Real-time diagnosis on Ray Serve: DICOM over HTTP in, pseudonymous findings (JSON or FHIR) out.

``app`` is the application builder that ``serve run workloads.diagnosis:app`` and the Serve
config ``deploy/serve-diagnosis.yaml`` name; see docs/diagnosis.md.
"""

from workloads.diagnosis.app import build_app as app

__all__ = ["app"]
