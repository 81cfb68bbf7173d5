"""Helpers of the preprocessing tests: the cohort's size, copies of it, its canary PHI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom

PATIENTS = 10
SLICES = 10
ROWS = 64


def copy_dicom(cohort: Path, dest: Path) -> Path:
    """A private copy of the cohort's DICOM folder, safe to damage."""
    shutil.copytree(cohort / "dicom", dest)
    return dest


def canaries(cohort: Path) -> set[str]:
    """Every identifying string of the cohort that must never appear in an output or a log.

    Only strings of five characters or more, so that compressed pixel data cannot match one by
    chance; shorter names are covered by the full names that contain them. Original study dates
    are left out (a shifted date of one patient may equal the real date of another); birth dates
    (decades earlier than any study) are in.
    """
    found: set[str] = set()
    truth = pq.read_table(cohort / "ground_truth.parquet").to_pylist()
    found |= {r[k] for r in truth for k in ("mrn", "study_instance_uid", "series_instance_uid")}
    for p in pq.read_table(cohort / "emr/patients.parquet").to_pylist():
        found |= {p["first_name"], p["last_name"], f"{p['first_name']} {p['last_name']}",
                  p["street_address"], p["phone"], p["email"], p["ssn"], p["insurance_plan_id"],
                  p["account_number"], p["birth_date"].strftime("%Y%m%d"), p["birth_date"].isoformat()}
    found |= set(pq.read_table(cohort / "emr/encounters.parquet")["attending_physician"].to_pylist())
    for path in sorted((cohort / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.PatientName), ds.PatientID, ds.PatientAddress, ds.OtherPatientIDs,
                  ds.InstitutionName, ds.InstitutionAddress, str(ds.ReferringPhysicianName),
                  str(ds.OperatorsName), ds.AccessionNumber, ds.StudyID, ds.SOPInstanceUID,
                  ds.FrameOfReferenceUID}
    return {c for c in found if len(c) >= 5}
