"""De-identified DICOM out (``export_dicom``), and compressed DICOM in, through the whole pipeline."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from medray.privacy.pseudonym import pseudo_uid, pseudonym
from tests.workloads.preprocess.helpers import PATIENTS, SLICES, canaries, copy_dicom
from workloads.preprocess.dicom import preprocess_dicom
from workloads.preprocess.tasks import EXPORT_DIR, export_path

COMPRESSED_SERIES = "study_0004/series_01"


@pytest.fixture(scope="module")
def export_run(clean_run, cohort, key, tmp_path_factory):
    """The clean run's options with export_dicom, on a copy of the cohort whose one series is
    JPEG 2000 lossless (written by pydicom's encoder, pylibjpeg-openjpeg)."""
    root = copy_dicom(cohort, tmp_path_factory.mktemp("prep-export") / "in")
    for path in sorted((root / COMPRESSED_SERIES).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.save_as(path, enforce_file_format=True)
    out = root.parent / "out"
    options = replace(clean_run[1], export_dicom=True)
    summary = preprocess_dicom(root, out, key=key, options=options)
    return root, out, summary


def test_every_instance_is_written_as_a_deidentified_part10_file(export_run, cohort, key):
    root, out, summary = export_run
    assert summary.series_written == PATIENTS and summary.quarantined_files == 0
    files = sorted((out / EXPORT_DIR).rglob("*.dcm"))
    assert len(files) == PATIENTS * SLICES
    assert {p.parent.name for p in files} == {p.stem for p in (out / "volumes").glob("*.parquet")}
    originals = {}
    for path in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        originals[pseudo_uid(key, ds.SOPInstanceUID)] = ds
    for path in files:
        ds = pydicom.dcmread(path)  # a valid Part 10 file: preamble, meta, dataset
        original = originals[ds.SOPInstanceUID]
        assert path.stem == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert path.parent == export_path(out, ds.SeriesInstanceUID)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert ds[keyword].value == pseudo_uid(key, original[keyword].value), keyword
        assert ds.PatientID == pseudonym(key, original.PatientID, kind="patient")
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == ""
        assert not [e for e in ds if e.tag.is_private]
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)  # pixel data intact
        assert ds.preamble == bytes(128)
    data = b"".join(p.read_bytes() for p in files)
    leaked = [c for c in canaries(cohort) if c.encode() in data]
    assert not leaked, f"{len(leaked)} identifying values in the export"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["dicom"] == f"{EXPORT_DIR}/" and manifest["options"]["export_dicom"] is True


def test_a_real_archive_accepts_the_export(export_run, orthanc):
    """The export is what another archive takes as is: every file C-STOREd to a real Orthanc gets
    status Success (0x0000), and Orthanc then holds each instance under its remapped UID."""
    import httpx

    from medray.dicom.net import store_instances

    _, out, _ = export_run
    datasets = [pydicom.dcmread(p) for p in sorted((out / EXPORT_DIR).rglob("*.dcm"))]
    statuses = store_instances(datasets, host=orthanc.host, port=orthanc.dicom_port, called_aet=orthanc.aet)
    assert statuses == [0x0000] * len(datasets)
    for ds in datasets[:: max(1, len(datasets) // 5)]:
        found = httpx.post(f"{orthanc.url}/tools/lookup", content=str(ds.SOPInstanceUID), timeout=10).json()
        assert [f["Type"] for f in found] == ["Instance"], ds.SOPInstanceUID


def test_a_compressed_series_gives_the_volume_of_its_uncompressed_original(export_run, clean_run, key):
    _, out, _ = export_run
    compressed = sorted((export_run[0] / COMPRESSED_SERIES).glob("*.dcm"))
    series = pseudo_uid(key, pydicom.dcmread(compressed[0]).SeriesInstanceUID)
    exported = [pydicom.dcmread(p) for p in sorted(export_path(out, series).glob("*.dcm"))]
    assert len(exported) == SLICES and {d.file_meta.TransferSyntaxUID for d in exported} == {JPEG2000Lossless}
    shard = f"volumes/{series}.parquet"
    here = pq.read_table(out / shard)["volume"].combine_chunks().to_numpy_ndarray()
    there = pq.read_table(clean_run[0] / shard)["volume"].combine_chunks().to_numpy_ndarray()
    np.testing.assert_array_equal(here, there)


def test_resume_needs_the_export_too(export_run, clean_run, key):
    root, out, _ = export_run
    options = replace(clean_run[1], export_dicom=True, resume=True)
    victim = sorted((out / EXPORT_DIR).iterdir())[0]
    before = sorted(p.name for p in victim.iterdir())
    for p in victim.iterdir():
        p.unlink()
    victim.rmdir()  # a shard without its export: the series is done again
    summary = preprocess_dicom(root, out, key=key, options=options)
    assert (summary.series_written, summary.series_skipped) == (1, PATIENTS - 1)
    assert sorted(p.name for p in victim.iterdir()) == before
    assert not list((out / EXPORT_DIR).glob(".*"))  # no pending folder left


def test_the_cli_takes_every_ps315_option():
    from medray.errors import ConfigError
    from medray.privacy.ps315 import DeidOptions
    from medray.privacy.ps315_options import parse_safe_private
    from workloads.preprocess import dicom

    names = [name for name in dicom._DEID_FLAGS if name != "retain_full_dates"]  # excludes --retain-dates
    args = dicom._parser().parse_args(["--input", "i", "--output", "o", "--retain-dates", "--export-dicom",
                                       "--safe-private", "0043,27,GEMS_PARM_01",
                                       *[f"--{name.replace('_', '-')}" for name in names]])
    assert args.export_dicom and all(getattr(args, name) for name in names)
    assert parse_safe_private(args.safe_private) == frozenset({("GEMS_PARM_01", 0x0043, 0x27)})
    DeidOptions(retain_safe_private=True, safe_private=parse_safe_private(args.safe_private))
    with pytest.raises(ConfigError, match="GGGG,EE,CREATOR"):
        parse_safe_private(["GEMS_PARM_01"])


def test_pixel_regions_are_read_from_a_json_file(tmp_path):
    from medray.errors import ConfigError
    from medray.privacy.pixels import DeviceRegions, load_regions

    good = tmp_path / "regions.json"
    good.write_text(json.dumps([{"manufacturer": "SIEMENS", "model": "SOMATOM", "rows": 512, "columns": 512,
                                 "boxes": [[0, 0, 200, 24]]}]))
    expected = DeviceRegions("SIEMENS", "SOMATOM", 512, 512, ((0, 0, 200, 24),))
    assert load_regions(good) == (expected,)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"rows": 512}]))
    with pytest.raises(ConfigError, match="not a JSON list"):
        load_regions(bad)
