"""Fixtures of the preprocessing tests: a small synthetic cohort, a key file, its canary PHI."""

from __future__ import annotations

from pathlib import Path

import pytest

from medray.data.cohort import generate_cohort
from medray.privacy.ps315 import DeidOptions
from medray.privacy.pseudonym import ensure_key_file, load_key
from tests.workloads.preprocess.helpers import PATIENTS, ROWS, SLICES
from workloads.preprocess.dicom import DicomOptions, preprocess_dicom


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """10 patients x 10 slices of 64 x 64 (read-only: copy it before changing files)."""
    out = tmp_path_factory.mktemp("prep-cohort") / "cohort"
    generate_cohort(out, patients=PATIENTS, rows=ROWS, slices=SLICES)
    return out


@pytest.fixture(scope="session")
def key_file(tmp_path_factory) -> Path:
    return ensure_key_file(tmp_path_factory.mktemp("prep-key") / "deid.key")


@pytest.fixture(scope="session")
def key(key_file) -> bytes:
    return load_key(key_file)


@pytest.fixture(scope="session")
def clean_run(cohort, key, tmp_path_factory, ray_cluster):
    """The clean cohort through the DICOM pipeline, dates and characteristics retained."""
    out = tmp_path_factory.mktemp("prep-clean") / "out"
    options = DicomOptions(deid=DeidOptions(retain_dates=True, retain_patient_characteristics=True))
    summary = preprocess_dicom(cohort / "dicom", out, key=key, options=options)
    return out, options, summary
