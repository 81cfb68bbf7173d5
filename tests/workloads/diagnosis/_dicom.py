"""DICOM inputs for the diagnosis tests: good slices with canary PHI, and each kind of bad input."""

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

# Canary PHI: none of these may appear in a response, an audit record or a log line.
PATIENT_NAME = "Quixby^Zelphine"
PATIENT_ID = "MRN-CANARY-90210"
STUDY_UID = "1.2.826.0.1.3680043.8.498.777111"
SERIES_UID = "1.2.826.0.1.3680043.8.498.777222"
PHI = (PATIENT_NAME, "Quixby", "Zelphine", PATIENT_ID, "CANARY-90210", STUDY_UID, SERIES_UID, "19370412")


def ct_slice(z=0.0, *, rows=32, columns=32, instance=1, modality="CT", body_part="CHEST",
             syntax=ExplicitVRLittleEndian, pixel_data=None, drop_pixels=False) -> bytes:
    """One axial CT slice carrying canary PHI, as a DICOM Part 10 file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = f"{SERIES_UID}.{instance}"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{SERIES_UID}.{instance}"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19370412"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    ds.Modality, ds.BodyPartExamined, ds.InstanceNumber = modality, body_part, instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.PixelSpacing, ds.SliceThickness = [4.0, 4.0], 6.0
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if not drop_pixels:
        rng = np.random.default_rng(instance)
        ds.PixelData = pixel_data if pixel_data is not None else (
            rng.integers(0, 1400, (rows, columns), dtype=np.uint16).tobytes())
        if syntax != ExplicitVRLittleEndian:
            ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def series(n=4, **kw) -> list[bytes]:
    return [ct_slice(6.0 * i, instance=i + 1, **kw) for i in range(n)]


def bomb() -> bytes:
    """A few bytes of compressed pixel data whose header declares 60000 x 60000 pixels."""
    return ct_slice(rows=60000, columns=60000, syntax=JPEG2000Lossless, pixel_data=encapsulate([b"\0" * 64]))
