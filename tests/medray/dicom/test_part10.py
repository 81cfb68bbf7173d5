"""medray.dicom.part10: the fast reader gives what pydicom gives, or leaves the file to pydicom."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medray.data.cohort import generate_cohort
from medray.dicom.part10 import get_value, parse_part10, pixel_data, pixel_data_length, read_part10

KEYWORDS = ("Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel",
            "NumberOfFrames", "InstanceNumber", "SliceThickness", "PixelSpacing",
            "ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept",
            "Modality", "BurnedInAnnotation", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
            "PatientAge", "StudyDate", "ImageType", "WindowCenter", "BodyPartExamined")


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("parse-cohort")
    generate_cohort(out, patients=2, slices=4, rows=192)  # 72 KiB of pixels: past the 64 KiB read
    return sorted((out / "dicom").rglob("*.dcm"))


def write(path: Path, change=None, *, syntax=ExplicitVRLittleEndian, rows: int = 192) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "1.2.3.10", "1.2.3.20", "MRN-1"
    ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing, ds.ImagePositionPatient = [0.75, 0.5], [-100.0, -120.5, 7.25]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation = rows, rows, 16, 1
    ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-1024"
    if change:
        change(ds)
    ds.PixelData = np.arange(rows * rows, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_same(ds: Dataset, ref: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(ds.keys()) == list(ref.keys())
        assert ds == ref and ds.file_meta == ref.file_meta and ds.preamble == ref.preamble
        assert _json(ds) == _json(ref)


def _json(ds: Dataset) -> object:
    try:
        return ds.to_json_dict()
    except ValueError as e:  # a malformed value in one of pydicom's test files: both must fail
        return type(e)


def test_equals_dcmread_wherever_it_answers(cohort_files):
    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()] + cohort_files
    answered = []
    for path in files:
        data = path.read_bytes()
        ds = parse_part10(data)
        if ds is None:
            continue
        answered.append(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = pydicom.dcmread(io.BytesIO(data))
        assert_same(ds, ref)
        from_file = read_part10(path)
        assert from_file is not None
        assert bytes(pixel_data(from_file) or b"") == bytes(ref.get("PixelData") or b"")
        assert pixel_data_length(from_file) == len(ref.get("PixelData") or b"")
        assert_same(from_file, ref)  # pydicom reads a deferred Pixel Data from the file itself
    assert set(cohort_files) <= set(answered)
    assert len(answered) >= len(cohort_files) + 10  # pydicom's own Explicit VR LE files too


def test_pixel_data_is_left_in_the_file_until_asked_for(tmp_path, cohort_files):
    ds = read_part10(cohort_files[0])
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    assert elem.value is None and elem.length == 192 * 192 * 2  # not read with the header
    buffer = bytearray()
    first = pixel_data(ds, buffer)
    assert len(buffer) == elem.length and bytes(first) == pydicom.dcmread(cohort_files[0]).PixelData
    second = pixel_data(read_part10(cohort_files[1]), buffer)
    assert second.obj is buffer and bytes(second) == pydicom.dcmread(cohort_files[1]).PixelData
    larger = read_part10(write(tmp_path / "larger.dcm", rows=256))
    third = pixel_data(larger, buffer)  # the buffer must grow while `second` still views it
    assert bytes(third) == pydicom.dcmread(tmp_path / "larger.dcm").PixelData
    assert bytes(second) == pydicom.dcmread(cohort_files[1]).PixelData  # untouched


def test_sequences_private_tags_and_long_headers(tmp_path):
    def rich(ds: Dataset) -> None:
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.99"
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        ds["ReferencedImageSequence"].is_undefined_length = True
        ds.add_new(0x00091010, "OB", b"\x01" * 70_000)  # a private blob: the header is > 64 KiB
        ds.add_new(0x00091011, "LO", "vendor")

    path = write(tmp_path / "rich.dcm", rich)
    ds = read_part10(path)
    assert ds is not None
    assert_same(ds, pydicom.dcmread(path))
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.99"


def test_unusual_files_are_left_to_pydicom(tmp_path):
    whole = write(tmp_path / "whole.dcm").read_bytes()
    assert parse_part10(write(tmp_path / "implicit.dcm", syntax=ImplicitVRLittleEndian).read_bytes()) is None
    assert parse_part10(whole[:200]) is None  # cut inside the header
    assert parse_part10(whole[:-10]) is None  # cut inside the pixel data
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:-10])
    assert read_part10(cut) is None
    assert parse_part10(b"not dicom" * 100) is None
    assert parse_part10(whole[:128] + b"DICX" + whole[132:]) is None
    padded = tmp_path / "padded.dcm"  # an element after Pixel Data: read whole, not deferred
    padded.write_bytes(whole + b"\xfc\xff\xfc\xffOB\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00")
    ds = read_part10(padded)
    assert ds is not None and ds.get_item(0x7FE00010).value is not None
    assert_same(ds, pydicom.dcmread(padded))
    with pytest.raises(OSError):
        read_part10(tmp_path / "missing.dcm")


def test_get_value_reads_as_dataset_get_does(tmp_path, cohort_files):
    def odd(ds: Dataset) -> None:
        ds.WindowCenter = ["40", "400"]
        ds.PatientAge = "069Y"
        ds.InstanceNumber = "12"

    malformed = write(tmp_path / "malformed.dcm", lambda ds: setattr(ds, "SliceThickness", "2.5"))
    data = malformed.read_bytes().replace(b"2.5 ", b"abc ")  # a DS that is not a number
    paths = [write(tmp_path / "odd.dcm", odd), *cohort_files]
    datasets = [read_part10(p) for p in paths] + [parse_part10(data)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ds in datasets:
            for keyword in KEYWORDS:
                expected = ds.get(keyword, "absent")
                got = get_value(ds, keyword, "absent")
                assert got == expected, keyword
                if isinstance(expected, (int, float)) and not isinstance(expected, bool):
                    assert float(got) == float(expected)
    assert get_value(datasets[-1], "SliceThickness") == "abc"  # left to pydicom, as ds.get gives
    assert get_value(datasets[0], "RescaleSlope") == 1.5 and get_value(datasets[0], "Rows") == 192


def test_tags_are_shared_between_files_but_never_without_bound(tmp_path, monkeypatch):
    from medray.dicom import part10 as dicom_parse

    monkeypatch.setattr(dicom_parse, "_TAGS", {})
    first, second = read_part10(write(tmp_path / "a.dcm")), read_part10(write(tmp_path / "b.dcm"))
    shared = {id(t) for t in first.keys()} & {id(t) for t in second.keys()}
    assert len(shared) == len(first.keys())  # one BaseTag object per tag number

    def private_flood(ds: Dataset) -> None:  # more distinct tags than are ever shared
        for block in range(0x11, 0x11 + 24):
            ds.add_new(0x00090000 | block, "LO", f"VENDOR{block}")  # the block's private creator
            for element in range(256):
                ds.add_new(0x00090000 | block << 8 | element, "SS", element)

    flooded = read_part10(write(tmp_path / "flood.dcm", private_flood))
    assert flooded is not None and len(flooded) > dicom_parse._MAX_SHARED_TAGS
    assert_same(flooded, pydicom.dcmread(tmp_path / "flood.dcm"))
    assert len(dicom_parse._TAGS) <= dicom_parse._MAX_SHARED_TAGS


def test_pydicom_without_the_raw_element_fields_it_builds_is_refused():
    from pydicom.dataelem import RawDataElement

    from medray.dicom import part10

    part10._check_raw_fields(RawDataElement._fields)  # the installed pydicom (also checked at import)
    with pytest.raises(ImportError, match=r"pydicom>=3\.0,<3\.1"):
        part10._check_raw_fields(("tag", "VR", "length", "value", "value_tell", "is_implicit_VR",
                                  "is_little_endian", "is_raw"))
