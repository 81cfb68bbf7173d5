"""The synthetic cohort's CT series as DICOM Part 10 files: one CT Image Storage file per slice.

UIDs are name-based (``2.25.`` + a UUID of the cohort's parameters), so the same cohort gets the same
UIDs; every identifying attribute holds the patient's fake PHI, and a private block repeats it.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from medray.data.anatomy import BITS_STORED, RESCALE_INTERCEPT, Geometry
from medray.data.people import Patient

__all__ = ["write_series"]

# The name predates this module (the cohort was one module): it is part of every UID written.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "medray.data.cohort")


def _uid(context: str, *parts: object) -> str:
    """A 2.25 UID from a name-based UUID of the cohort's parameters: equal inputs, equal UIDs.

    (pydicom's ``generate_uid(prefix=None)`` ignores ``entropy_srcs`` and is random.)
    """
    name = json.dumps([context, *map(str, parts)])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def write_series(series_dir: Path, p: Patient, geom: Geometry, volume: np.ndarray,
                 uid_context: str) -> tuple[str, str]:
    """Write one slice file per z of ``volume`` (stored values); returns (StudyInstanceUID,
    SeriesInstanceUID). ``uid_context`` names the cohort: the same context, the same UIDs."""
    uids = {kind: _uid(uid_context, kind, p.index) for kind in ("study", "series", "frame")}
    series_dir.mkdir(parents=True)
    for k in range(geom.slices):
        ds = Dataset()
        _set_patient(ds, p)
        _set_study(ds, p, uids["study"])
        _set_series(ds, p, geom, uids["series"], uids["frame"])
        _set_image(ds, geom, k, volume[k], _uid(uid_context, "sop", p.index, k))
        ds.save_as(series_dir / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return uids["study"], uids["series"]


def _set_patient(ds: Dataset, p: Patient) -> None:
    ds.PatientName = p.dicom_name
    ds.PatientID = p.mrn
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.PatientAge = f"{p.age:03d}Y"
    ds.PatientAddress = f"{p.street}, {p.city}, {p.state} {p.zip}"
    ds.OtherPatientIDs = p.account_number
    # A private block repeats the identifiers where only a thorough de-identifier looks.
    block = ds.private_block(0x0011, "MEDRAY SYNTH", create=True)
    block.add_new(0x01, "LO", p.mrn)
    block.add_new(0x02, "LO", p.dicom_name)


def _set_study(ds: Dataset, p: Patient, study_uid: str) -> None:
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = p.study_at.strftime("%Y%m%d")
    ds.StudyTime = p.study_at.strftime("%H%M%S")
    ds.AccessionNumber = p.accession
    ds.StudyID = f"CT{p.accession[-6:]}"
    ds.StudyDescription = "CT CHEST"
    ds.ReferringPhysicianName = f"{p.referring[0]}^{p.referring[1]}".upper()
    ds.InstitutionName, ds.InstitutionAddress = p.institution


def _set_series(ds: Dataset, p: Patient, geom: Geometry, series_uid: str,
                frame_uid: str) -> None:
    acquired = p.study_at + timedelta(minutes=2)
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"CHEST AXIAL {geom.thickness_mm:g}MM"
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = acquired.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S")
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.Manufacturer = "medray-synth"
    ds.ManufacturerModelName = "Phantom 1"
    ds.OperatorsName = f"{p.operator[0]}^{p.operator[1]}".upper()
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.SliceThickness = _ds(geom.thickness_mm)
    ds.SpacingBetweenSlices = _ds(geom.thickness_mm)
    ds.PixelSpacing = [_ds(geom.spacing_mm), _ds(geom.spacing_mm)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]


def _set_image(ds: Dataset, geom: Geometry, k: int, pixels: np.ndarray, sop_uid: str) -> None:
    x0, y0, z0 = geom.origin
    z = z0 + k * geom.thickness_mm
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.SliceLocation = _ds(z)
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = geom.rows
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.PixelData = pixels.tobytes()


def _ds(value: float) -> str:
    """A float as a valid (<= 16 character) DICOM decimal string."""
    return format_number_as_ds(float(value))
