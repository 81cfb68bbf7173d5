"""Real-time diagnosis on Ray Serve: DICOM over HTTP in, pseudonymous findings (JSON or FHIR) out.

``app`` (the routine lane, the model routes) and ``emergency_app`` (the emergency lane's own
ingress) are the application builders that the Serve config ``deploy/serve-diagnosis.yaml``
names; see docs/diagnosis.md.
"""

from workloads.diagnosis.app import build_app as app
from workloads.diagnosis.app import build_emergency_app as emergency_app

__all__ = ["app", "emergency_app"]
