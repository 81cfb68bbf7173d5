"""medray.dicom.sr: the finding report, written and read back with highdicom and pydicom."""

from __future__ import annotations

import io

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medray.dicom.sr import Concept, FindingResult, finding_report

RESULT = FindingResult(finding=Concept("I10C", "R91.1", "Solitary pulmonary nodule"), present=True,
                       probability=0.8125, body_site=Concept("SCT", "39607008", "Lung structure"),
                       procedure=Concept("LN", "24627-2", "CT Chest"), model_name="nodule", model_version="3")


def _series(n=3):
    out = []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4.5", f"1.2.3.4.5.{i + 1}"
        out.append(ds)
    return out


def _report(evidence, result=RESULT):
    return finding_report(evidence, result, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
                          device_uid="1.2.3.99")


def test_the_report_references_the_series_and_carries_the_finding_and_the_algorithm():
    evidence = _series()
    sr = _report(evidence)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert back.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and back.Modality == "SR"
    assert (back.StudyInstanceUID, back.PatientID) == (evidence[0].StudyInstanceUID, evidence[0].PatientID)
    assert back.SeriesInstanceUID != evidence[0].SeriesInstanceUID
    (study,) = back.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == "1.2.3.4.5"
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == [f"1.2.3.4.5.{i}" for i in (1, 2, 3)]

    report = hd.sr.MeasurementReport.from_sequence([back])
    (group,) = report.get_image_measurement_groups()
    assert (group.finding_type.value, group.finding_type.scheme_designator) == ("R91.1", "I10C")
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.value == pydicom.sr.codedict.codes.SCT.Present
    (measurement,) = group.get_measurements()
    assert measurement.name == pydicom.sr.codedict.codes.DCM.Probability and measurement.value == 0.8125
    (site,) = group.finding_sites
    assert site.value.value == "39607008"
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
             for item in group[0].ContentSequence}
    assert (texts["Algorithm Name"], texts["Algorithm Version"]) == ("nodule", "3")


def test_a_negative_finding_is_absent_and_source_gaps_stay_empty():
    evidence = _series(1)
    del evidence[0].PatientSex
    sr = _report(evidence, FindingResult(**{**RESULT.__dict__, "present": False, "probability": 0.1}))
    assert "PatientSex" in sr and not sr.PatientSex
    (group,) = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    assert group.get_qualitative_evaluations()[0].value == pydicom.sr.codedict.codes.SCT.Absent
    assert "PatientSex" not in evidence[0]  # the source headers are not changed


def test_the_evidence_must_be_one_study():
    with pytest.raises(ValueError, match="evidence"):
        _report([])
    evidence = _series(2)
    evidence[1].StudyInstanceUID = "9.9.9"
    with pytest.raises(ValueError, match="one study"):
        _report(evidence)
