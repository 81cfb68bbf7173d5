"""The scan's fast path: the sniffed UIDs equal pydicom's, and anything unusual is left to pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medray.dicom.sniff import sniff_series


def test_agrees_with_pydicom_wherever_it_answers(cohort):
    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    files += sorted((cohort / "dicom").rglob("*.dcm"))
    answered = 0
    for path in files:
        uids = sniff_series(path)
        if uids is None:
            continue
        answered += 1
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert uids == (ds.StudyInstanceUID, ds.SeriesInstanceUID), path.name
    assert answered >= len(list((cohort / "dicom").rglob("*.dcm")))  # every cohort file at least


def write(tmp_path: Path, name: str, change=None, syntax=ExplicitVRLittleEndian) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.10", "1.2.3.20"
    if change:
        change(ds)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_nested_uids_are_not_taken_for_the_series(tmp_path):
    def refer(ds: Dataset) -> None:
        item = Dataset()
        item.SeriesInstanceUID = "9.9.9"  # (0020,000E) inside an (0008,1115) item
        ds.ReferencedSeriesSequence = Sequence([item])

    path = write(tmp_path, "nested.dcm", refer)
    assert sniff_series(path) == ("1.2.3.10", "1.2.3.20")


def test_unusual_files_are_left_to_pydicom(tmp_path):
    assert sniff_series(write(tmp_path, "implicit.dcm", syntax=ImplicitVRLittleEndian)) is None
    assert pydicom.dcmread(tmp_path / "implicit.dcm").file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(write(tmp_path, "whole.dcm").read_bytes()[:200])
    assert sniff_series(cut) is None
    (tmp_path / "text.dcm").write_text("not dicom")
    assert sniff_series(tmp_path / "text.dcm") is None
    assert sniff_series(tmp_path / "missing.dcm") is None



def test_sequences_of_undefined_length_are_stepped_over(tmp_path):
    def undefined_length(ds: Dataset) -> None:
        item = Dataset()
        item.SeriesInstanceUID = "9.9.9"
        ds.ReferencedImageSequence = Sequence([item])  # (0008,1140): before the UIDs
        ds["ReferencedImageSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True

    path = write(tmp_path, "undefined.dcm", undefined_length)
    assert b"\xff\xff\xff\xff" in path.read_bytes()  # written with undefined lengths indeed
    assert sniff_series(path) == ("1.2.3.10", "1.2.3.20")
