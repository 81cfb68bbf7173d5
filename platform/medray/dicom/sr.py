"""A model's finding as a DICOM Structured Report a PACS files with the study and a viewer shows.

:func:`finding_report` builds a Comprehensive 3D SR (PS3.3 A.35.13) holding a TID 1500 Measurement
Report (PS3.16) with highdicom: one TID 1501 measurement group whose finding is the model's
(qualitative evaluation Present/Absent, SCT 52101004/272519000), the probability as a numeric
measurement (DCM 122157 "Probability", unit UCUM ``1``), the body site as finding site, and the
algorithm (TID 4019: the model's name and version) on the group, the device observer and the
measurement. The source series' instances are the evidence (Current Requested Procedure Evidence
Sequence, PS3.3 C.17.2), so the SR carries their patient and study and references the series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

__all__ = ["SCHEMES", "Concept", "FindingResult", "finding_report", "MANUFACTURER"]

MANUFACTURER = "medray"
# DICOM coding scheme designators (PS3.16 Table 8-1) of the systems findings are coded in.
SCHEMES = {"http://snomed.info/sct": "SCT", "http://loinc.org": "LN", "http://hl7.org/fhir/sid/icd-10-cm": "I10C"}


@dataclass(frozen=True)
class Concept:
    """A coded concept: DICOM scheme designator (``SCT``, ``LN``, ``I10C``, ``DCM``), code and meaning."""

    scheme: str
    code: str
    meaning: str


@dataclass(frozen=True)
class FindingResult:
    """What a model found on one series: the finding concept, present or not, its probability, the
    body site, the procedure (e.g. LOINC CT Chest) and the model (``name``, ``version``)."""

    finding: Concept
    present: bool
    probability: float
    body_site: Concept
    procedure: Concept
    model_name: str
    model_version: str


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that the SR
# copies from its evidence: present, empty when the source left them out.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


def _with_type2(ds: Dataset) -> Dataset:
    out = Dataset()
    out.update(ds)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)
    return out


def _coded(concept: Concept):  # -> highdicom.sr.CodedConcept
    from highdicom.sr import CodedConcept

    return CodedConcept(value=concept.code, scheme_designator=concept.scheme, meaning=concept.meaning[:64])


def finding_report(evidence: Sequence[Dataset], result: FindingResult, *, series_instance_uid: str,
                   sop_instance_uid: str, series_number: int = 990, device_uid: str) -> Dataset:
    """The Comprehensive 3D SR of ``result`` for the series ``evidence`` (its instances' headers).

    ``device_uid`` identifies the algorithm's device observer (TID 1004); the UIDs are the SR's own
    (new ones: :func:`pydicom.uid.generate_uid`). Raises ValueError when ``evidence`` is empty or
    mixes studies.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        FindingSite,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        TrackingIdentifier,
    )

    if not evidence:
        raise ValueError("finding_report needs the source series' instances as evidence")
    if len({str(ds.StudyInstanceUID) for ds in evidence}) != 1:
        raise ValueError("the evidence of one finding report must belong to one study")
    algorithm = AlgorithmIdentification(name=result.model_name, version=result.model_version,
                                        manufacturer=MANUFACTURER)
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=f"{result.model_name}:{result.model_version}", manufacturer_name=MANUFACTURER))
    site = FindingSite(anatomic_location=_coded(result.body_site))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=result.finding.meaning[:64]),
        finding_type=_coded(result.finding),
        algorithm_id=algorithm,
        finding_sites=[site],
        qualitative_evaluations=[QualitativeEvaluation(
            name=_coded(result.finding), value=codes.SCT.Present if result.present else codes.SCT.Absent)],
        measurements=[Measurement(name=codes.DCM.Probability, value=round(float(result.probability), 6),
                                  unit=hd.sr.CodedConcept("1", "UCUM", "no units"), algorithm_id=algorithm)],
    )
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=device),
                               procedure_reported=_coded(result.procedure), imaging_measurements=[group])
    return Comprehensive3DSR(
        evidence=[_with_type2(evidence[0]), *evidence[1:]], content=report[0], series_instance_uid=series_instance_uid,
        series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description="medray finding")
