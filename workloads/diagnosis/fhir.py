"""A diagnosis result as a FHIR R4 DiagnosticReport (``Accept: application/fhir+json``).

The report is ``preliminary``: it is a machine finding that a radiologist still has to confirm.
Every identifier in it is a pseudonym (patient, study and series UIDs under the service's key);
the probability travels in a contained Observation that ``result`` references. Each expert's model
reports its own finding (:mod:`medray.models.findings`): the study's LOINC code, the body site
(SNOMED CT, ``Observation.bodySite``) and, when positive, the finding's ICD-10-CM code
(``conclusionCode``).
"""

from __future__ import annotations

from typing import Any

from medray.models.findings import finding_spec

__all__ = ["FHIR_JSON", "MODEL_EXTENSION", "diagnostic_report"]

FHIR_JSON = "application/fhir+json"
MODEL_EXTENSION = "urn:medray:fhir:model"
_RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}


def diagnostic_report(result: dict[str, Any], *, report_id: str, issued: str) -> dict[str, Any]:
    """The DiagnosticReport for one ``/v1/diagnose`` result (the JSON response's fields)."""
    finding, study = result["finding"], result["study"]
    spec = finding_spec(finding["name"])
    probability = finding["probability"]
    positive = finding["label"] == spec.positive
    conclusion = (
        f"{spec.title} {'suspected' if positive else 'not detected'} "
        f"(model {result['model']}, probability {probability:.3f}, threshold {finding['threshold']:.2f}; "
        "machine finding, to be confirmed by a radiologist)"
    )
    observation = {
        "resourceType": "Observation",
        "id": "finding-probability",
        "status": "preliminary",
        "code": {"text": spec.observation},
        "bodySite": {"coding": [spec.coding("body_site")]},
        "valueQuantity": {"value": round(probability, 6), "unit": "probability",
                          "system": "http://unitsofmeasure.org", "code": "1"},
        "interpretation": [{"text": finding["label"]}],
    }
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "extension": [{"url": MODEL_EXTENSION, "valueString": result["model"]}],
        "contained": [observation],
        "status": "preliminary",
        "category": [{"coding": [_RADIOLOGY]}],
        "code": {"coding": [spec.coding("study")], "text": f"{study['modality']} {study['body_part'] or ''}".strip()},
        "issued": issued,
        "performer": [{"display": "medray diagnosis service"}],
        "result": [{"reference": "#finding-probability"}],
        "imagingStudy": [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study['study_ref']}"},
                          "display": f"series urn:oid:{study['series_ref']}"}],
        "conclusion": conclusion,
    }
    if study["patient_ref"]:
        report["subject"] = observation["subject"] = {"reference": f"Patient/{study['patient_ref']}"}
    if positive:
        report["conclusionCode"] = [{"coding": [spec.coding("code")]}]
    return report
