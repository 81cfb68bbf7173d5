"""No canary PHI anywhere: output bytes, decoded cells, file names, quarantine, manifest, logs.

Both pipelines run as their CLIs (as under ``ray job submit``) against the shared cluster, on the
synthetic cohort plus every file pydicom ships, with all retention options on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_files

from tests.conftest import REPO
from tests.workloads.preprocess.helpers import PATIENTS, canaries, copy_dicom
from workloads.preprocess.runs import locate_files
from workloads.preprocess.tasks import QUARANTINE_REASONS


def run_cli(module: str, args: list[str], ray_cluster) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONPATH": str(REPO)}
    env.pop("MEDRAY_DEID_KEY", None)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def pydicom_files(dest: Path) -> int:
    """Copy every test file pydicom ships (DICOM or not) under ``dest``; returns the count."""
    count = 0
    for name in get_testdata_files():
        path = Path(name)
        if path.is_file():
            target = dest / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            count += 1
    return count


def texts_of(out: Path) -> list[tuple[str, str]]:
    """(where, text) for every output: raw bytes of each file, every decoded Parquet cell, names."""
    found = [("file names", "\n".join(p.relative_to(out).as_posix() for p in out.rglob("*")))]
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        found.append((path.name, path.read_bytes().decode("latin-1")))
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            cells = table.drop_columns([c for c in table.column_names if c == "volume"]).to_pylist()
            found.append((f"{path.name} cells", json.dumps(cells, default=str)))
    return found


@pytest.fixture(scope="module")
def runs(cohort, key_file, tmp_path_factory, ray_cluster):
    base = tmp_path_factory.mktemp("phi")
    inp = copy_dicom(cohort, base / "in")
    n_pydicom = pydicom_files(inp / "pydicom")
    dicom = run_cli("workloads.preprocess.dicom",
                    ["--input", str(inp), "--output", str(base / "out"), "--key-file", str(key_file),
                     "--retain-dates", "--retain-patient-characteristics"], ray_cluster)
    emr = run_cli("workloads.preprocess.emr",
                  ["--input", str(cohort / "emr"), "--output", str(base / "emr"), "--key-file",
                   str(key_file)], ray_cluster)
    return base, n_pydicom, dicom, emr


def test_both_clis_succeed_and_print_a_summary(runs):
    _, _, dicom, emr = runs
    assert dicom.returncode == 0, dicom.stderr[-3000:]
    assert emr.returncode == 0, emr.stderr[-3000:]
    assert "series written" in dicom.stdout and "files quarantined" in dicom.stdout
    assert "patients.parquet" in emr.stdout


def test_every_pydicom_file_is_written_or_quarantined_with_a_reason(runs, key):
    base, n_pydicom, _, _ = runs
    records = pq.read_table(base / "out/quarantine.parquet").to_pylist()
    assert all(r["reason"] in QUARANTINE_REASONS and r["message"] and "path" not in r for r in records)
    paths = locate_files(base / "in", key, [r["file_id"] for r in records])
    assert len(paths) == len(records)
    records = [{**r, "path": paths[r["file_id"]]} for r in records]
    refused = {r["path"] for r in records if r["path"].startswith("pydicom/")}
    manifest = json.loads((base / "out/manifest.json").read_text())
    written_from_pydicom = manifest["counts"]["series"] - PATIENTS
    assert written_from_pydicom >= 1  # e.g. CT_small.dcm is a valid one-slice CT
    assert len(refused) + manifest["counts"]["slices"] - PATIENTS * 10 == n_pydicom
    assert not [r for r in records if not r["path"].startswith("pydicom/")]  # the cohort is clean


def test_no_canary_in_outputs_names_or_logs(runs, cohort):
    base, _, dicom, emr = runs
    secrets = canaries(cohort)
    assert len(secrets) > 100
    # The search itself works: it finds the canaries in the raw inputs.
    assert any(s in text for _, text in texts_of(cohort / "emr") for s in secrets)
    places = texts_of(base / "out") + texts_of(base / "emr")
    places += [("dicom log", dicom.stdout + dicom.stderr), ("emr log", emr.stdout + emr.stderr)]
    leaks = sorted({where for where, text in places for secret in secrets if secret in text})
    assert not leaks, f"canary PHI found in: {leaks}"


def test_the_key_is_never_written(runs, key_file):
    base, _, dicom, emr = runs
    key_text = key_file.read_text().strip()
    places = texts_of(base / "out") + texts_of(base / "emr")
    places += [("logs", dicom.stdout + dicom.stderr + emr.stdout + emr.stderr)]
    assert not [where for where, text in places if key_text in text]
