"""Fixtures of the DICOM tests: a small synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import pytest

from medray.data.cohort import generate_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """6 patients x 8 slices of 64 x 64 (read-only)."""
    out = tmp_path_factory.mktemp("dicom-cohort") / "cohort"
    generate_cohort(out, patients=6, rows=64, slices=8)
    return out
