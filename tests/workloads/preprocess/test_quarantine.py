"""Nothing identifying in quarantine records, outputs or logs when input folder names hold patient names
(issue 16.6): files are named by a keyed id that only the key holder maps back to a path."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq

from tests.workloads.preprocess.test_phi import run_cli, texts_of
from workloads.preprocess.runs import (
    QUARANTINE_FILE_SCHEMA,
    Quarantined,
    file_id,
    locate_files,
    write_quarantine,
)


def test_quarantine_records_name_files_by_keyed_id(key, tmp_path):
    root = tmp_path / "in"
    paths = ["DOE^JANE 1931-03-14/series 2/img1.dcm", "Smith, John/CT/x.dcm"]
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"not dicom")
    write_quarantine([Quarantined(p, "not_dicom", "the file is not DICOM") for p in paths], tmp_path / "q.parquet",
                     key=key)
    table = pq.read_table(tmp_path / "q.parquet")
    assert table.schema == QUARANTINE_FILE_SCHEMA
    raw = (tmp_path / "q.parquet").read_bytes().decode("latin-1")
    assert not [w for w in ("DOE", "JANE", "1931", "Smith", "John") if w in raw]
    ids = table["file_id"].to_pylist()
    assert sorted(ids) == sorted(file_id(key, p) for p in paths) and len(set(ids)) == 2
    # The key holder finds the files again; another key does not.
    assert locate_files(root, key, ids) == {file_id(key, p): p for p in paths}
    assert locate_files(root, b"x" * 32, ids) == {}


def test_patient_names_in_emr_folder_names_reach_no_output_manifest_or_log(cohort, key, key_file, tmp_path,
                                                                           ray_cluster):
    patient = pq.read_table(cohort / "emr/patients.parquet").to_pylist()[0]
    first, last, mrn = patient["first_name"], patient["last_name"], patient["mrn"]
    labs, notes = f"{last}_{first}_{mrn}", f"{first} {last}"
    inp = tmp_path / "in"
    for sub in (f"labs/{labs}", f"notes/{notes}", f"encounters/{last}^{first}", f"{first}{last}_scans"):
        (inp / sub).mkdir(parents=True)
    shutil.copy(cohort / "emr/patients.parquet", inp / "patients.parquet")
    shutil.copy(cohort / "emr/labs.csv", inp / f"labs/{labs}/2024.csv")
    shutil.copy(cohort / "emr/notes.parquet", inp / f"notes/{notes}/{mrn}.parquet")
    pq.write_table(pq.read_table(cohort / "emr/encounters.parquet").drop_columns(["mrn"]),
                   inp / f"encounters/{last}^{first}/broken.parquet")  # fails: its error names the part by id
    (inp / f"{first}{last}_scans/list.csv").write_text("a\n1\n")  # no mapping: skipped, reported by id
    out = tmp_path / "out"
    run = run_cli("workloads.preprocess.emr", ["--input", str(inp), "--output", str(out), "--key-file",
                                               str(key_file)], ray_cluster)
    assert run.returncode == 1, run.stderr[-3000:]  # the broken part failed, the others were written
    manifest = json.loads((out / "manifest.json").read_text())
    broken = f"encounters/{file_id(key, f'encounters/{last}^{first}/broken.parquet')}"
    assert {p: t["error"] is not None for p, t in manifest["tables"].items()} == {
        "patients.parquet": False, f"labs/{file_id(key, f'labs/{labs}/2024.csv')}": False,
        f"notes/{file_id(key, f'notes/{notes}/{mrn}.parquet')}": False, broken: True}
    assert manifest["notes"]["found"] and manifest["notes"]["scrubber"]["versions"]["presidio-analyzer"]
    assert locate_files(inp, key, manifest["skipped_parts"]) == {
        file_id(key, f"{first}{last}_scans/list.csv"): f"{first}{last}_scans/list.csv"}
    secrets = {first, last, mrn, labs, notes}
    places = texts_of(out) + [("log", run.stdout + run.stderr)]
    leaks = sorted({where for where, text in places for s in secrets if s in text})
    assert not leaks, f"a name from a folder name found in: {leaks}"
