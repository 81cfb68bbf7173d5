"""The DICOM pipeline on the shared local cluster: quarantine, placement, idempotency, resume, HU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from medray.data.shards import shard_files
from medray.errors import ConfigError
from medray.imaging.normalize import InputSpec
from medray.privacy.pseudonym import key_id, pseudo_uid, pseudonym
from tests.workloads.preprocess.helpers import PATIENTS, ROWS, SLICES, copy_dicom
from workloads.preprocess.dicom import DicomOptions, preprocess_dicom
from workloads.preprocess.runs import locate_files, start_tasks_at_once
from workloads.preprocess.tasks import QUARANTINE_REASONS, pending_path

PREP_NODE_TYPES = {"cpu-prep", "bulk-prep"}


def quarantine(out: Path, root: Path, key: bytes) -> dict[str, tuple[str, str]]:
    """The run's quarantine records by input path: they name files by keyed id only (issue 16.6)."""
    rows = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert rows and all("path" not in r for r in rows)
    paths = locate_files(root, key, [r["file_id"] for r in rows])
    return {paths[r["file_id"]]: (r["reason"], r["message"]) for r in rows}


def outputs(out: Path) -> dict[str, bytes]:
    """Every Parquet file of a run by relative path (the manifest holds timings: left out)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def rewrite(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def as_mpeg2(ds: pydicom.Dataset) -> None:
    """Claim MPEG-2 video, for which no decoder is installed (the pixels stay as they are)."""
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML


def corrupt(root: Path) -> dict[str, str]:
    """Damage 5 of the 100 files in five ways; returns {relative path: expected reason}."""
    def cut(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    damage = {
        "study_0000/series_01/slice_003.dcm": ("truncated", cut),
        "study_0001/series_01/slice_005.dcm": ("not_dicom", lambda p: p.write_bytes(b"no dicom here\n" * 40)),
        "study_0002/series_01/slice_000.dcm": ("no_pixel_data", lambda p: rewrite(
            p, lambda ds: delattr(ds, "PixelData"))),
        "study_0002/series_01/slice_007.dcm": ("unsupported_transfer_syntax", lambda p: rewrite(p, as_mpeg2)),
        "study_0003/series_01/slice_009.dcm": ("burned_in_annotation", lambda p: rewrite(
            p, lambda ds: setattr(ds, "BurnedInAnnotation", "YES"))),
    }
    for rel, (_, change) in damage.items():
        change(root / rel)
    return {rel: reason for rel, (reason, _) in damage.items()}


def test_corrupted_files_land_in_quarantine_exactly(cohort, key, tmp_path, ray_cluster):
    root = copy_dicom(cohort, tmp_path / "in")
    damaged = corrupt(root)
    assert len(damaged) == 0.05 * PATIENTS * SLICES
    out = tmp_path / "out"
    summary = preprocess_dicom(root, out, key=key)

    records = quarantine(out, root, key)
    assert {p: r for p, (r, _) in records.items() if p in damaged} == damaged
    affected = {p.split("/")[0] for p in damaged}
    others = {p: r for p, (r, _) in records.items() if p not in damaged}
    # Siblings of a refused instance are quarantined with it; the series that lost its
    # non-DICOM slice (which names no series) shows a gap and is inconsistent.
    assert {p.split("/")[0] for p in others} == affected
    assert set(others.values()) == {"series_incomplete", "inconsistent_series"}
    assert len(records) == len(affected) * SLICES
    assert all(reason in QUARANTINE_REASONS for reason, _ in records.values())
    assert all(message for _, message in records.values())

    assert summary.series_written == PATIENTS - len(affected) == len(shard_files(out))
    assert summary.quarantined_files == len(records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["files_quarantined"] == len(records)
    assert manifest["counts"]["quarantined_by_reason"]["truncated"] == 1
    assert manifest["key_id"] == key_id(key) and key.hex() not in json.dumps(manifest)


def test_grouping_by_folder_or_by_scan_gives_the_same_output(cohort, key, tmp_path, ray_cluster):
    root = copy_dicom(cohort, tmp_path / "in")
    damaged = corrupt(root)
    # One series spread over two folders, and one series UID reused by another study's folder.
    (root / "study_0004/more").mkdir()
    for k in range(5, SLICES):
        (root / f"study_0004/series_01/slice_{k:03d}.dcm").rename(root / f"study_0004/more/slice_{k:03d}.dcm")
    series_5 = pydicom.dcmread(root / "study_0005/series_01/slice_000.dcm").SeriesInstanceUID
    rewrite(root / "study_0006/series_01/slice_000.dcm", lambda ds: setattr(ds, "SeriesInstanceUID", series_5))

    runs = {}
    for grouping in ("folder", "scan"):
        out = tmp_path / grouping
        summary = preprocess_dicom(root, out, key=key, options=DicomOptions(grouping=grouping))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["run"]["grouping"] == grouping
        assert not [p.name for p in (out / "volumes").iterdir() if p.name.startswith(".")]  # nothing pending
        runs[grouping] = (outputs(out), summary.series_written, summary.quarantined, manifest["run"])

    by_folder, by_scan = runs["folder"], runs["scan"]
    assert by_folder[:3] == by_scan[:3]  # the same bytes in every Parquet file, the same counts
    assert by_folder[3]["series_spanning_folders"] == 2  # study_0004's and the reused UID's
    assert by_folder[3]["node_types"]["scan"] and sum(by_folder[3]["node_types"]["scan"].values()) == len(
        list(root.rglob("*.dcm")))
    records = quarantine(tmp_path / "folder", root, key)
    assert {p: r for p, (r, _) in records.items() if p in damaged} == damaged
    assert records["study_0006/series_01/slice_000.dcm"][0] == "inconsistent_series"
    written = {p.stem for p in shard_files(tmp_path / "folder")}
    assert pseudo_uid(key, pydicom.dcmread(cohort / "dicom/study_0004/series_01/slice_000.dcm").SeriesInstanceUID) in written


def test_auto_grouping_takes_folders_only_when_no_folder_is_too_large(cohort, key, tmp_path, ray_cluster):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted((cohort / "dicom").rglob("*.dcm"))):
        (flat / f"{i:04d}.dcm").write_bytes(f.read_bytes())
    for root, expected in ((cohort / "dicom", "folder"), (flat, "scan")):
        out = tmp_path / f"out-{expected}"
        summary = preprocess_dicom(root, out, key=key)
        assert json.loads((out / "manifest.json").read_text())["run"]["grouping"] == expected
        assert summary.series_written == PATIENTS and not summary.quarantined


def test_series_ran_on_prep_nodes(clean_run):
    out, _, summary = clean_run
    manifest = json.loads((out / "manifest.json").read_text())
    used = manifest["run"]["node_types"]
    assert set(used["series"]) <= PREP_NODE_TYPES and sum(used["series"].values()) == PATIENTS
    assert set(used["scan"]) <= PREP_NODE_TYPES and sum(used["scan"].values()) == PATIENTS * SLICES
    assert summary.node_types == used["series"]


def test_output_rows_are_deidentified_and_consistent(clean_run, cohort, key):
    out, options, summary = clean_run
    assert summary.series_written == PATIENTS and summary.slices == PATIENTS * SLICES
    assert summary.quarantined_files == 0
    truth = {r["series_instance_uid"]: r for r in pq.read_table(cohort / "ground_truth.parquet").to_pylist()}
    table = pq.read_table(out / "volumes")  # Ray Data's reader is tested in tests/medray/data/test_shards.py
    volumes = table["volume"].combine_chunks().to_numpy_ndarray()
    rows = table.drop_columns(["volume"]).to_pylist()
    assert len(rows) == PATIENTS and volumes.shape == (PATIENTS, *options.spec.shape)
    expected = {pseudo_uid(key, uid): r for uid, r in truth.items()}
    for row in rows:
        original = expected[row["series_uid"]]
        assert row["study_uid"] == pseudo_uid(key, original["study_instance_uid"])
        assert row["patient_pseudonym"] == pseudonym(key, original["mrn"], kind="patient")
        assert (row["n_instances"], row["modality"], row["window"]) == (SLICES, "CT", "lung")
        assert row["patient_sex"] in ("F", "M") and row["patient_age"]
        header = json.loads(row["dicom_header"])
        assert header["00100020"]["Value"] == [row["patient_pseudonym"]]
        assert header["00120062"]["Value"] == ["YES"]
        assert header["7FE00010"]["BulkDataURI"] == "omitted"


def test_reruns_are_byte_identical_and_resume_skips_finished_series(clean_run, cohort, key, tmp_path):
    out, options, _ = clean_run
    first = outputs(out)
    other = tmp_path / "again"
    preprocess_dicom(cohort / "dicom", other, key=key, options=options)
    assert outputs(other) == first  # same names, same bytes, in another folder

    victim = shard_files(out)[3]
    victim.unlink()
    # What an interrupted folder pass leaves: a half-written pending shard (here of a series this
    # resume skips), never to be read and removed by the next run.
    stale = pending_path(out, shard_files(out)[0].stem)
    stale.write_bytes(b"half a shard")
    summary = preprocess_dicom(cohort / "dicom", out, key=key,
                               options=replace(options, resume=True))
    assert not stale.exists()
    assert (summary.series_written, summary.series_skipped) == (1, PATIENTS - 1)
    assert outputs(out) == first
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["series_written_this_run"] == 1 and manifest["counts"]["series"] == PATIENTS


def test_resume_refuses_other_options(clean_run, cohort, key):
    out, options, _ = clean_run
    with pytest.raises(Exception, match="another key, options"):
        preprocess_dicom(cohort / "dicom", out, key=key, options=DicomOptions(resume=True))


def test_hounsfield_units_match_a_hand_computed_slice(cohort, key, tmp_path, ray_cluster):
    source_spacing = (5.0, 3.0, 3.0)  # the synthetic cohort's slice thickness and pixel spacing
    spec = InputSpec(spacing_mm=source_spacing, shape=(SLICES, ROWS, ROWS), window=None)
    out = tmp_path / "hu"
    preprocess_dicom(cohort / "dicom", out, key=key, options=DicomOptions(spec=spec))
    path = cohort / "dicom/study_0004/series_01/slice_006.dcm"
    ds = pydicom.dcmread(path)
    stored = np.frombuffer(ds.PixelData, dtype="<u2").reshape(ROWS, ROWS).astype(np.float64)
    by_hand = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    row = pq.read_table(out / "volumes" / f"{pseudo_uid(key, ds.SeriesInstanceUID)}.parquet").to_pylist()[0]
    volume = np.asarray(row["volume"], dtype=np.float32).reshape(SLICES, ROWS, ROWS)
    np.testing.assert_allclose(volume[6], by_hand, atol=1e-3)  # slices ascend with z: index 6
    assert row["window"] == "none" and row["source_spacing_mm"] == list(source_spacing)


def test_start_tasks_at_once_changes_only_its_own_dataset(ray_cluster):
    import ray.data

    ds = start_tasks_at_once(ray.data.from_items([{"x": 1}]))
    other = ray.data.from_items([{"x": 1}])
    assert ds.context.op_resource_reservation_enabled is False
    assert ds.map_batches(lambda b: b).context.op_resource_reservation_enabled is False
    assert other.context.op_resource_reservation_enabled is True
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled is True


def test_an_unknown_grouping_is_refused():
    with pytest.raises(ConfigError, match="grouping must be one of auto, folder, scan"):
        DicomOptions(grouping="by-date")
