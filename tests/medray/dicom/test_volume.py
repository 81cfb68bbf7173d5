"""medray.dicom.volume: reading untrusted instances and stacking a validated CT volume."""

import io
import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from medray.dicom.volume import REASONS, Volume, read_instance, sort_slices, volume_from_datasets
from medray.errors import DicomError
from medray.imaging.normalize import InputSpec, normalize_volume

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-4711"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1111"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2222"
PHI = (PATIENT_NAME, "Doe", PATIENT_ID, STUDY_UID, SERIES_UID, "1.2.826.0.1.3680043", "20240131")


def make_slice(z: float, *, rows: int = 8, columns: int = 8, instance: int = 1, value: int = 0,
               syntax: str = ExplicitVRLittleEndian, pixel_data: bytes | None = None, **extra) -> bytes:
    """One CT slice at height ``z`` (axial), as the bytes of a DICOM Part 10 file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES_UID}.{instance}"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{SERIES_UID}.{instance}"
    ds.PatientName, ds.PatientID, ds.StudyDate = PATIENT_NAME, PATIENT_ID, "20240131"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    ds.Modality, ds.BodyPartExamined = "CT", "CHEST"
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -120.0, z]
    ds.PixelSpacing = [0.75, 0.5]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for keyword, v in extra.items():
        setattr(ds, keyword, v)
    if pixel_data is None:
        pixel_data = np.full((rows, columns), value, np.uint16).tobytes()
    ds.PixelData = pixel_data
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds["PixelData"].VR = "OB"  # encapsulated (compressed) pixel data
    out = io.BytesIO()
    # A private transfer syntax does not say how the dataset is encoded: say it.
    private = {} if UID(syntax).is_transfer_syntax else {"implicit_vr": False, "little_endian": True}
    ds.save_as(out, enforce_file_format=True, **private)
    return out.getvalue()


def write_series(tmp_path, zs, **extra):
    """Slices at heights ``zs`` written to files with shuffled InstanceNumbers; returns the paths."""
    numbers = list(range(1, len(zs) + 1))
    random.Random(7).shuffle(numbers)
    paths = []
    for z, number in zip(zs, numbers):
        path = tmp_path / f"{PATIENT_ID}_{number}.dcm"  # PHI in the name, as in real exports
        # Pixel value encodes the height so that the order of the volume can be checked.
        path.write_bytes(make_slice(z, instance=number, value=int(1024 + 10 * z), **extra))
        paths.append(path)
    return paths


def assert_reason(excinfo, reason):
    err = excinfo.value
    assert err.reason == reason and reason in REASONS
    for phi in PHI:
        assert phi not in str(err) and phi not in err.message


def test_reasons_are_the_stable_codes():
    assert set(REASONS) == {
        "not_dicom", "truncated", "no_pixel_data", "unsupported_transfer_syntax",
        "unsupported_modality", "too_large", "inconsistent_series", "burned_in_annotation",
    }


def test_series_sorted_by_geometry_not_instance_number(tmp_path):
    zs = [-10.0, -7.5, -5.0, -2.5, 0.0]
    datasets = [read_instance(p) for p in write_series(tmp_path, zs)]
    random.Random(1).shuffle(datasets)
    assert [float(ds.ImagePositionPatient[2]) for ds in sort_slices(datasets)] == zs

    vol = volume_from_datasets(datasets)
    assert isinstance(vol, Volume) and vol.hu.dtype == np.float32
    assert vol.hu.shape == (5, 8, 8) and vol.n_instances == 5
    assert vol.spacing_mm == pytest.approx((2.5, 0.75, 0.5))
    assert vol.origin_mm == pytest.approx((-100.0, -120.0, -10.0))
    np.testing.assert_allclose(vol.hu[:, 0, 0], [int(1024 + 10 * z) - 1024 for z in zs])
    assert (vol.modality, vol.body_part, vol.patient_id) == ("CT", "CHEST", PATIENT_ID)
    assert (vol.study_uid, vol.series_uid) == (STUDY_UID, SERIES_UID)
    assert PATIENT_ID not in repr(vol) and SERIES_UID not in repr(vol)


def test_reads_bytes_and_implicit_little_endian():
    ds = read_instance(make_slice(0.0, syntax=ImplicitVRLittleEndian, value=1024))
    assert volume_from_datasets([ds]).hu.max() == 0.0


def test_missing_slice_is_caught(tmp_path):
    datasets = [read_instance(p) for p in write_series(tmp_path, [0.0, 2.5, 5.0, 10.0, 12.5])]
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets(datasets)
    assert_reason(excinfo, "inconsistent_series")
    assert "missing" in excinfo.value.message


def test_duplicate_slice_is_caught(tmp_path):
    datasets = [read_instance(p) for p in write_series(tmp_path, [0.0, 2.5, 2.5, 5.0])]
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets(datasets)
    assert_reason(excinfo, "inconsistent_series")


def test_tilted_stack_is_caught():
    # Gantry tilt: each slice is shifted in-plane, so stacking them would shear the anatomy.
    datasets = [read_instance(make_slice(z, instance=i + 1, ImagePositionPatient=[-100.0, -120.0 + z, z]))
                for i, z in enumerate([0.0, 2.5, 5.0])]
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets(datasets)
    assert_reason(excinfo, "inconsistent_series")
    assert "tilt" in excinfo.value.message


def test_mixed_series_and_orientation_are_caught():
    a = read_instance(make_slice(0.0))
    b = read_instance(make_slice(2.5, instance=2, SeriesInstanceUID=SERIES_UID + ".9"))
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets([a, b])
    assert_reason(excinfo, "inconsistent_series")
    c = read_instance(make_slice(2.5, instance=2, ImageOrientationPatient=[1, 0, 0, 0, 0, -1]))
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets([a, c])
    assert_reason(excinfo, "inconsistent_series")


def test_modality_and_burned_in_annotation_are_refused():
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets([read_instance(make_slice(0.0, Modality="MR"))])
    assert_reason(excinfo, "unsupported_modality")
    assert volume_from_datasets([read_instance(make_slice(0.0, Modality="MR"))],
                                allow_modalities=("CT", "MR")).modality == "MR"
    with pytest.raises(DicomError) as excinfo:
        volume_from_datasets([read_instance(make_slice(0.0, BurnedInAnnotation="YES"))])
    assert_reason(excinfo, "burned_in_annotation")


def test_not_dicom(tmp_path):
    path = tmp_path / f"{PATIENT_ID}.dcm"
    path.write_bytes(b"Patient Doe^Jane, MRN-4711\n" * 20)
    with pytest.raises(DicomError) as excinfo:
        read_instance(path)
    assert_reason(excinfo, "not_dicom")
    assert str(path) not in str(excinfo.value)


@pytest.mark.parametrize("keep", [0.5, 0.99])
@pytest.mark.parametrize("rows", [64, 256])  # 256: pixel data past the header read of a path
def test_truncated(tmp_path, keep, rows):
    data = make_slice(0.0, rows=rows, columns=rows)
    path = tmp_path / f"{PATIENT_ID}.dcm"
    path.write_bytes(data[: int(len(data) * keep)])
    for source in (path, path.read_bytes()):
        with pytest.raises(DicomError) as excinfo:
            read_instance(source)
        assert_reason(excinfo, "truncated")


def test_a_missing_path_is_an_oserror():
    with pytest.raises(OSError):
        read_instance(f"/nonexistent/{PATIENT_ID}.dcm")


def test_truncated_encapsulated_pixel_data():
    data = make_slice(0.0, syntax=JPEG2000Lossless, pixel_data=encapsulate([b"\xff" * 64]))
    with pytest.raises(DicomError) as excinfo:
        read_instance(data[:-20])
    assert_reason(excinfo, "truncated")


def test_no_pixel_data():
    ds = pydicom.dcmread(io.BytesIO(make_slice(0.0)))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(DicomError) as excinfo:
        read_instance(out.getvalue())
    assert_reason(excinfo, "no_pixel_data")


def test_unsupported_transfer_syntax():
    # A syntax whose decoder is not installed: tests/medray/dicom/test_codecs.py.
    data = make_slice(0.0, syntax="1.2.3.4.5.6", pixel_data=encapsulate([b"\x00" * 64]))
    with pytest.raises(DicomError) as excinfo:
        read_instance(data)
    assert_reason(excinfo, "unsupported_transfer_syntax")


def test_made_up_transfer_syntaxes_are_refused_and_not_remembered_without_bound():
    from medray.dicom import codecs

    for i in range(100):  # a file's transfer syntax can be any string: each is asked about once
        with pytest.raises(DicomError) as excinfo:
            read_instance(make_slice(0.0, syntax=f"1.2.3.999.{i}", pixel_data=encapsulate([b"\x00" * 64])))
        assert_reason(excinfo, "unsupported_transfer_syntax")
    assert codecs.decodable.cache_info().currsize <= 64


def test_huge_header_is_refused_before_decoding():
    # A compressed "bomb": a few bytes of pixel data declaring 60000 x 60000 pixels.
    data = make_slice(0.0, rows=60000, columns=60000, syntax=JPEG2000Lossless,
                      pixel_data=encapsulate([b"\x00" * 64]))
    with pytest.raises(DicomError) as excinfo:
        read_instance(data)
    assert_reason(excinfo, "too_large")
    with pytest.raises(DicomError) as excinfo:
        read_instance(make_slice(0.0, rows=64, columns=64), max_pixels=64 * 63)
    assert_reason(excinfo, "too_large")


def test_undecodable_codestream_is_reported_when_decoded():
    syntax = JPEG2000Lossless
    if not get_decoder(syntax).is_available:
        pytest.skip("no JPEG 2000 decoder installed")
    ds = read_instance(make_slice(0.0, syntax=syntax, pixel_data=encapsulate([b"\x00" * 64])))
    volume = volume_from_datasets([ds])  # headers only: nothing decoded yet
    for decode in (lambda: volume.hu, lambda: volume.normalized(InputSpec())):
        with pytest.raises(DicomError) as excinfo:
            decode()
        assert_reason(excinfo, "truncated")


def test_real_ct_file_reads_into_one_slice_volume():
    vol = volume_from_datasets([read_instance(get_testdata_file("CT_small.dcm"))])
    assert vol.hu.shape == (1, 128, 128) and vol.n_instances == 1
    assert vol.spacing_mm == pytest.approx((5.0, 0.661468, 0.661468))
    assert vol.modality == "CT"
    assert -1100 < vol.hu.min() < vol.hu.max() < 3100  # plausible HU: air to dense bone
    assert vol.hu.mean() > -1000


def test_uncompressed_pixel_data_decodes_as_pydicoms_decoder_does():
    """The direct little-endian view and pydicom's decoder agree on every pydicom file it applies to."""
    import warnings

    from pydicom.data import get_testdata_files

    from medray.dicom.volume import _decode, _native_dtype

    checked = 0
    for path in get_testdata_files("*.dcm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
                rows, columns = int(ds.Rows), int(ds.Columns)
                frames = int(ds.get("NumberOfFrames", 1) or 1)
            except Exception:
                continue
            if frames != 1 or _native_dtype(ds, rows, columns) is None:
                continue
            expected, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds)
        got = _decode(ds, rows, columns)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), path
        checked += 1
    assert checked >= 5


def test_normalized_decodes_only_the_slices_it_needs(tmp_path):
    # 24 slices of 1 mm; the input spec keeps the 8 central 2 mm slices, i.e. input slices 4-19.
    # 192 x 192 pixels lie past the header read, so pixel data stays in the files until used.
    paths = write_series(tmp_path, [float(z) for z in range(24)], rows=192, columns=192)
    spec = InputSpec(spacing_mm=(2.0, 3.0, 3.0), shape=(8, 48, 48), window="lung")
    complete = volume_from_datasets([read_instance(p) for p in paths])
    expected = complete.normalized(spec)
    np.testing.assert_allclose(expected, normalize_volume(complete.hu, complete.spacing_mm, spec), atol=1e-6)

    volume = volume_from_datasets([read_instance(p) for p in paths])
    by_height = sorted(paths, key=lambda p: pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    for outer in by_height[:4] + by_height[-4:]:
        outer.unlink()  # the slices outside the crop: never needed
    np.testing.assert_array_equal(volume.normalized(spec), expected)
    with pytest.raises(DicomError) as excinfo:
        volume.hu  # the whole volume does need them
    assert_reason(excinfo, "truncated")
