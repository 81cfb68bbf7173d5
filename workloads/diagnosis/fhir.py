"""A diagnosis result as a FHIR R4 DiagnosticReport (``Accept: application/fhir+json``).

The report is ``preliminary``: it is a machine finding that a radiologist still has to confirm.
Every identifier in it is a pseudonym (patient, study and series UIDs under the service's key);
the probability travels in a contained Observation that ``result`` references.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FHIR_JSON", "MODEL_EXTENSION", "diagnostic_report"]

FHIR_JSON = "application/fhir+json"
MODEL_EXTENSION = "urn:medray:fhir:model"
_LOINC_CT_CHEST = {"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}
_RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
# The code the synthetic cohort's EMR uses for the same finding.
_NODULE = {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R91.1", "display": "Solitary pulmonary nodule"}


def diagnostic_report(result: dict[str, Any], *, report_id: str, issued: str) -> dict[str, Any]:
    """The DiagnosticReport for one ``/v1/diagnose`` result (the JSON response's fields)."""
    finding, study = result["finding"], result["study"]
    probability = finding["probability"]
    positive = finding["label"] == "nodule_suspected"
    conclusion = (
        f"{'Lung nodule suspected' if positive else 'No lung nodule detected'} "
        f"(model {result['model']}, probability {probability:.3f}, threshold {finding['threshold']:.2f}; "
        "machine finding, to be confirmed by a radiologist)"
    )
    observation = {
        "resourceType": "Observation",
        "id": "nodule-probability",
        "status": "preliminary",
        "code": {"text": "Lung nodule probability (machine learning model)"},
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
        "code": {"coding": [_LOINC_CT_CHEST], "text": f"{study['modality']} {study['body_part'] or ''}".strip()},
        "issued": issued,
        "performer": [{"display": "medray diagnosis service"}],
        "result": [{"reference": "#nodule-probability"}],
        "imagingStudy": [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study['study_ref']}"},
                          "display": f"series urn:oid:{study['series_ref']}"}],
        "conclusion": conclusion,
    }
    if study["patient_ref"]:
        report["subject"] = observation["subject"] = {"reference": f"Patient/{study['patient_ref']}"}
    if positive:
        report["conclusionCode"] = [{"coding": [_NODULE]}]
    return report
