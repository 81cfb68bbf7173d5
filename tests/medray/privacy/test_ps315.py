"""medray.privacy.ps315: PS3.15 Annex E Basic Profile with options, on real pydicom datasets (no cluster)."""

import io
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medray.data.cohort import generate_cohort
from medray.dicom.part10 import parse_part10
from medray.dicom.volume import REASONS
from medray.errors import DicomError
from medray.privacy.ps315 import (
    DEID_REASONS,
    PROFILE_CODES,
    DeidOptions,
    check_deidentifiable,
    deidentify,
    method_description,
)
from medray.privacy.pseudonym import date_shift_days, pseudo_uid, pseudonym

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "OtherPatientIDs",
               "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "OperatorsName",
               "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "FrameOfReferenceUID")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, patients=2, rows=32, slices=4, nodule_fraction=0.0)
    return sorted((out / "dicom").glob("study_0000/series_01/*.dcm"))


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def saved(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def canaries(ds: Dataset) -> list[str]:
    """Every identifying value of the original instance, including the private block."""
    values = [str(ds.get(k, "")) for k in IDENTIFYING]
    values += [str(e.value) for e in ds if e.tag.is_private and isinstance(e.value, str)]
    values += [v for v in str(ds.PatientName).split("^") if len(v) > 2]
    values += [ds.file_meta.MediaStorageSOPInstanceUID]
    return [v for v in values if v and v != "MEDRAY SYNTH"]


def test_no_identifying_value_survives_in_the_written_file(series):
    for path in series:
        original = read(path)
        data = saved(deidentify(read(path), KEY))
        leaked = [c for c in canaries(original) if c.encode() in data]
        assert not leaked, f"{path.name}: {len(leaked)} identifying values survived"


def test_private_elements_are_removed_and_identity_marked(series):
    ds = deidentify(read(series[0]), KEY)
    assert not [e for e in ds if e.tag.is_private]
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod == method_description(DeidOptions())
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM")]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_options_add_their_cid_7050_codes():
    ds = deidentify(patient_dataset(), KEY, DeidOptions(retain_dates=True,
                                                         retain_patient_characteristics=True))
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == [PROFILE_CODES[k][0] for k in ("basic", "retain_patient_characteristics",
                                                  "retain_dates")]
    assert codes == ["113100", "113108", "113107"]  # in the order of Table E.1-1's columns
    assert len(ds.DeidentificationMethod) <= 64
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_uids_are_consistent_within_a_study_and_across_runs(series):
    first = [deidentify(read(p), KEY) for p in series]
    again = [deidentify(read(p), KEY) for p in series]
    originals = [read(p) for p in series]
    assert {d.StudyInstanceUID for d in first} == {pseudo_uid(KEY, originals[0].StudyInstanceUID)}
    assert {d.SeriesInstanceUID for d in first} == {pseudo_uid(KEY, originals[0].SeriesInstanceUID)}
    assert {d.FrameOfReferenceUID for d in first} == {pseudo_uid(KEY, originals[0].FrameOfReferenceUID)}
    assert len({d.SOPInstanceUID for d in first}) == len(series)
    assert all(d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID for d in first)
    assert [saved(d) for d in first] == [saved(d) for d in again]
    other = deidentify(read(series[0]), OTHER_KEY)
    assert other.StudyInstanceUID != first[0].StudyInstanceUID


def test_patient_id_is_the_shared_patient_pseudonym(series):
    original = read(series[0])
    ds = deidentify(read(series[0]), KEY)
    assert ds.PatientID == pseudonym(KEY, original.PatientID, kind="patient")
    assert ds.PatientName == "" and ds.PatientBirthDate == ""


def test_basic_profile_removes_dates_and_characteristics(series):
    original = read(series[0])
    ds = deidentify(read(series[0]), KEY)
    assert ds.StudyDate == ""
    assert original.StudyDate.encode() not in saved(ds)
    assert ds.PatientSex == "" and "PatientAge" not in ds


def test_retained_dates_are_shifted_by_the_patient_offset(series):
    original = read(series[0])
    ds = deidentify(read(series[0]), KEY, DeidOptions(retain_dates=True))
    shift = timedelta(days=date_shift_days(KEY, original.PatientID))
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        day = date.fromisoformat(getattr(original, keyword)[:4] + "-" + getattr(original, keyword)[4:6]
                                 + "-" + getattr(original, keyword)[6:])
        assert getattr(ds, keyword) == (day + shift).strftime("%Y%m%d"), keyword
    assert ds.StudyTime == original.StudyTime  # times kept: the day moved, not the hour
    assert ds.PatientBirthDate == ""  # never kept, even shifted


def patient_dataset(**extra) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientAge = "Roe^Rita", "MRN-77", "F", "093Y"
    ds.PatientWeight, ds.EthnicGroup = "61", "Nordic"
    ds.AcquisitionDateTime = "20200131235959.5+0100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def test_retained_patient_characteristics_cap_ages_over_89():
    ds = deidentify(patient_dataset(), KEY, DeidOptions(retain_patient_characteristics=True))
    assert (ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.EthnicGroup) == ("F", "090Y", "61", "Nordic")
    young = deidentify(patient_dataset(PatientAge="045Y"), KEY,
                       DeidOptions(retain_patient_characteristics=True))
    assert young.PatientAge == "045Y"


def test_date_times_keep_their_time_and_offset():
    ds = deidentify(patient_dataset(), KEY, DeidOptions(retain_dates=True))
    shifted = date(2020, 1, 31) + timedelta(days=date_shift_days(KEY, "MRN-77"))
    assert ds.AcquisitionDateTime == shifted.strftime("%Y%m%d") + "235959.5+0100"
    plain = deidentify(patient_dataset(), KEY)
    assert "2020" not in str(plain.get("AcquisitionDateTime", ""))


def test_nested_sequences_are_cleaned():
    ds = patient_dataset()
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    ds.ReferencedImageSequence = Sequence([ref])
    region = Dataset()
    region.CodeValue, region.CodeMeaning = "T-D3000", "Chest"
    region.PatientName = "Nested^Name"
    region.add_new(0x00091001, "LO", "nested private")
    ds.AnatomicRegionSequence = Sequence([region])  # not in the table: kept, but cleaned inside
    request = Dataset()
    request.RequestedProcedureID = "REQ-1"
    ds.RequestAttributesSequence = Sequence([request])  # X: removed whole
    ds = deidentify(ds, KEY)
    item = ds.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == pseudo_uid(KEY, "1.2.3.4.5")
    assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    kept = ds.AnatomicRegionSequence[0]
    assert kept.CodeMeaning == "Chest" and kept.PatientName == ""
    assert not [e for e in kept if e.tag.is_private]
    assert "RequestAttributesSequence" not in ds


def test_overlay_and_curve_groups_follow_the_repeating_group_rules():
    ds = patient_dataset()
    ds.add_new(0x60003000, "OW", b"\x01\x02")  # Overlay Data: X
    ds.add_new(0x60024000, "LT", "overlay comment naming Roe")  # Overlay Comments: X
    ds.add_new(0x50000010, "US", 3)  # curve data: X
    ds.add_new(0x60000010, "US", 512)  # Overlay Rows: kept
    ds = deidentify(ds, KEY)
    assert 0x60003000 not in ds and 0x60024000 not in ds and 0x50000010 not in ds
    assert ds[0x60000010].value == 512


@pytest.mark.parametrize("extra, reason", [
    ({"BurnedInAnnotation": "YES"}, "burned_in_annotation"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.11"}, "cannot_deidentify"),  # Basic Text SR
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "cannot_deidentify"),  # Encapsulated PDF
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "cannot_deidentify"),  # SC, burned-in unknown
    ({"PatientID": ""}, "missing_patient_id"),
])
def test_what_the_profile_cannot_clean_is_refused_unchanged(extra, reason):
    ds = patient_dataset(**extra)
    with pytest.raises(DicomError) as raised:
        deidentify(ds, KEY)
    assert raised.value.reason == reason and reason in REASONS + DEID_REASONS
    assert "Roe" not in str(raised.value) and "MRN-77" not in str(raised.value)
    assert ds.PatientName == "Roe^Rita"


def test_secondary_capture_reviewed_for_burned_in_text_is_accepted():
    ds = deidentify(patient_dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.7", BurnedInAnnotation="NO"),
                    KEY)
    assert ds.PatientIdentityRemoved == "YES"


def test_every_pydicom_test_file_is_cleaned_or_refused_with_a_reason():
    """Robustness on real-world oddities: implicit VR, big endian, sequences, malformed values."""
    cleaned = 0
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        try:
            original = pydicom.dcmread(path, force=True)
            original_name = str(original.get("PatientName", ""))
            original_id = str(original.get("PatientID", "")).strip()
        except Exception:
            continue  # not DICOM at all: the pipeline quarantines it before de-identification
        try:
            ds = deidentify(pydicom.dcmread(path, force=True), KEY)
        except DicomError as e:
            assert e.reason in DEID_REASONS + REASONS, path.name
            continue
        cleaned += 1
        assert ds.PatientIdentityRemoved == "YES"
        assert not [e for e in ds if e.tag.is_private]
        if len(original_id) >= 4:
            assert ds.PatientID == pseudonym(KEY, original_id, kind="patient")
        if len(original_name) >= 6:
            assert str(ds.get("PatientName", "")) != original_name
    assert cleaned > 50


def test_the_refusal_checks_alone_leave_the_dataset_as_it_was():
    ds = patient_dataset()
    before = saved_plain(ds)
    assert check_deidentifiable(ds) == "MRN-77"
    assert saved_plain(ds) == before


def saved_plain(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


@pytest.mark.parametrize("charset, patient_id", [
    (None, "MRN-77"),
    (None, "  MRN 77 ~[]{}  "),       # read raw: printable ASCII
    (None, "MRN\\77"),                 # a value delimiter: pydicom's conversion decides
    ("ISO_IR 100", "Müller-77"),       # not ASCII: pydicom decodes it with the character set
    ("ISO_IR 13", "MRN~77"),           # JIS X 0201 (shift_jis) reads printable ASCII the same
    (None, "   "),                     # blank: refused either way
])
def test_the_patient_id_read_raw_equals_pydicoms_reading(charset, patient_id):
    # The MRN keys every pseudonym and date shift: the raw shortcut must never change it.
    ds = patient_dataset(PatientID=patient_id)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    data = saved(ds)
    raw = parse_part10(data)
    assert raw is not None and isinstance(raw.get_item("PatientID").value, bytes)
    converted = pydicom.dcmread(io.BytesIO(data))
    converted.PatientID  # noqa: B018 - convert the value, as before the shortcut
    outcomes = []
    for candidate in (raw, converted):
        try:
            outcomes.append(check_deidentifiable(candidate))
        except DicomError as e:
            outcomes.append(e.reason)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == (patient_id.strip() or "missing_patient_id") or "\\" in patient_id


def test_a_dicom_anonymizer_without_the_table_is_refused(monkeypatch):
    from medray.privacy import ps315

    assert set(ps315._load_table(ps315.TABLE_VERSION)) >= {"X_TAGS", "U_TAGS", "X_Z_U_STAR_TAGS"}
    with pytest.raises(ImportError, match=r"dicom-anonymizer>=2\.1,<2\.2"):
        ps315._load_table("dicomfields_1999")
    reshaped = {category: [(0x0010, 0x0010, "X")] for category in ps315._CATEGORY_ACTIONS}
    monkeypatch.setattr(ps315, "dicom_anonymization_database_selector", lambda version: reshaped)
    with pytest.raises(ImportError, match="dicomfields_2026c"):
        ps315._load_table(ps315.TABLE_VERSION)
