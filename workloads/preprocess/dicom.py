"""DICOM bulk preprocessing on Ray Data: de-identified, normalised CT volumes as Parquet shards.

    python -m workloads.preprocess.dicom --input IN --output OUT [--key-file F]
        [--window lung|mediastinum|brain|bone|none] [--spacing Z Y X] [--shape D H W]
        [--retain-dates] [--retain-patient-characteristics] [--retain-full-dates] [--retain-uids]
        [--retain-device-identity] [--retain-institution-identity] [--clean-descriptors]
        [--clean-structured-content] [--clean-graphics] [--safe-private GGGG,EE,CREATOR ...]
        [--clean-pixel-data [--pixel-regions FILE]] [--export-dicom] [--resume] [--concurrency N]
        [--grouping auto|folder|scan]

or, from a notebook connected to the cluster, :func:`preprocess_dicom`. Ray Data tasks run on prep
nodes (placement from :mod:`medray.scheduling`, spilling onto idle inference and training nodes)
and group every file under IN into series, then de-identify, normalise and write each series
(:mod:`workloads.preprocess.tasks`). Two ways to group (``--grouping``, same output): a header
scan of every file, then tasks taking groups of series (two Ray Data executions); or, when the
export has a folder per series, one execution whose tasks take whole folders, reading each header
once, after which the few series found in more than one folder are processed again, whole.
Outputs under OUT:

* ``volumes/<pseudonymous series UID>.parquet`` (schema: :mod:`medray.data.shards`),
* ``quarantine.parquet`` (the file's keyed id, reason code, PHI-free message; ``runs.locate_files`` maps ids back),
* ``manifest.json`` (schema version, key id, options, counts, node types, timings),
* with ``--export-dicom``, ``dicom/<pseudonymous series UID>/<pseudonymous SOP Instance UID>.dcm``:
  every instance of the series written, de-identified in full, as a DICOM Part 10 file.

Same input and key give byte-identical Parquet files; ``--resume`` skips series already written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import posixpath
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from medray.cli.table import format_table
from medray.cluster.local import connect
from medray.data.shards import SCHEMA_VERSION, VOLUMES_DIR
from medray.dicom.quiet import quiet_pydicom
from medray.errors import ConfigError, MedrayError
from medray.imaging.normalize import WINDOWS, InputSpec
from medray.logs import get_logger
from medray.metrics import counter
from medray.privacy.pixels import load_regions, require_tesseract
from medray.privacy.ps315 import (
    OPTIONS_TABLE,
    PROFILE_CODES,
    TABLE_VERSION,
    DeidOptions,
    applied_codes,
    method_description,
)
from medray.privacy.ps315_options import parse_safe_private
from medray.privacy.pseudonym import key_id, load_key
from medray.scheduling.load import current_node_type
from medray.scheduling.placement import Placement
from workloads.preprocess.runs import (
    MANIFEST,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    Quarantined,
    default_concurrency,
    list_files,
    map_options,
    pipeline_parser,
    placement,
    read_manifest,
    start_tasks_at_once,
    write_manifest,
    write_quarantine,
)
from workloads.preprocess.tasks import (
    EXPORT_DIR,
    GROUPINGS,
    DicomOptions,
    Scanned,
    SeriesResult,
    commit_export,
    is_done,
    pending_export_path,
    pending_path,
    process_folder,
    process_series,
    scan_file,
    shard_path,
)

__all__ = ["DicomOptions", "Summary", "preprocess_dicom", "main"]

PIPELINE = "workloads.preprocess.dicom"
_log = get_logger("preprocess.dicom")
# Few, long tasks: each Ray Data task costs tens of milliseconds to schedule on a busy node.
# 6,144 slices in 128 series on 2 cores: 16 series a block took 3.9 s, 8 took 4.3 s (and 3, 4.7 s).
_FILES_PER_SCAN_BLOCK = 2048
_SERIES_PER_BLOCK = 16
_MAX_SERIES_BLOCKS = 1000

_SCAN_SCHEMA = pa.schema([
    ("path", pa.string()), ("study_uid", pa.string()), ("series_uid", pa.string()),
    ("reason", pa.string()), ("message", pa.string()), ("node_type", pa.string()),
    ("cpu_seconds", pa.float64()),
])
_FOLDER_SCHEMA = pa.schema([
    ("series_uid", pa.string()), ("study_uid", pa.string()), ("paths", pa.list_(pa.string())),
    ("skipped", pa.bool_()), ("written", pa.bool_()), ("n_instances", pa.int32()),
    ("node_type", pa.string()), ("seconds", pa.string()),
    ("quarantine", pa.list_(pa.struct(list(QUARANTINE_SCHEMA)))),
])
_SERIES_SCHEMA = pa.schema([
    ("series_uid", pa.string()), ("written", pa.bool_()), ("n_instances", pa.int32()),
    ("node_type", pa.string()), ("seconds", pa.string()),
    ("quarantine", pa.list_(pa.struct(list(QUARANTINE_SCHEMA)))),
])


@dataclass(frozen=True)
class Summary:
    """What a run did: counts by outcome, quarantined files by reason, wall time, where it ran."""

    output: Path
    files: int
    series_written: int
    series_skipped: int
    series_quarantined: int
    slices: int
    quarantined: dict[str, int]
    seconds: float
    node_types: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_files(self) -> int:
        return sum(self.quarantined.values())

    def table(self) -> str:
        """The final summary table printed by the CLI."""
        rows: list[tuple[str, Any]] = [
            ("input files", self.files),
            ("series written", self.series_written),
            ("series skipped (resume)", self.series_skipped),
            ("series quarantined", self.series_quarantined),
            ("slices in output", self.slices),
            ("files quarantined", self.quarantined_files),
        ]
        rows += [(f"  {reason}", n) for reason, n in sorted(self.quarantined.items())]
        where = ", ".join(f"{k}={v}" for k, v in sorted(self.node_types.items()))
        rows += [("series by node type", where or "-"), ("seconds", f"{self.seconds:.1f}")]
        return format_table(None, rows, title=f"DICOM preprocessing -> {self.output}")


# --- Ray Data tasks (run on prep nodes) ------------------------------------------------------

def _scan_batch(batch: pa.Table, root: str, key: bytes) -> pa.Table:
    quiet_pydicom()
    node = current_node_type()
    rows = []
    for path in batch.column("path").to_pylist():
        cpu = time.process_time()
        try:
            s = scan_file(Path(root), path, key)
        except Exception as e:  # a bug must not kill the job
            s = Scanned(path, quarantined=Quarantined(
                path, "internal_error", f"unexpected {type(e).__name__} while scanning: report it"))
        q = s.quarantined
        rows.append({"path": path, "study_uid": s.study_uid, "series_uid": s.series_uid,
                     "reason": q.reason if q else None, "message": q.message if q else None,
                     "node_type": node, "cpu_seconds": time.process_time() - cpu})
    return pa.Table.from_pylist(rows, schema=_SCAN_SCHEMA)


def _outcome(r: SeriesResult, node: str) -> dict[str, Any]:
    """The columns a series' result fills in a task's output row."""
    return {"written": r.written, "n_instances": r.n_instances, "node_type": node,
            "seconds": json.dumps(r.seconds), "quarantine": [vars(q) for q in r.quarantined]}


def _series_batch(batch: pa.Table, root: str, out: str, key: bytes, options: DicomOptions) -> pa.Table:
    quiet_pydicom()
    node = current_node_type()
    rows = []
    for unit in batch.to_pylist():
        uid, paths = unit["series_uid"], unit["paths"]
        try:
            r = process_series(Path(root), uid, paths, Path(out), key, options)
        except Exception as e:  # a bug must not kill the job or lose the other series
            message = f"unexpected {type(e).__name__} while processing the series: report it"
            r = SeriesResult(uid, False, len(paths), tuple(Quarantined(p, "internal_error", message) for p in paths))
        rows.append({"series_uid": uid, **_outcome(r, node)})
    return pa.Table.from_pylist(rows, schema=_SERIES_SCHEMA)


def _folder_batch(batch: pa.Table, root: str, out: str, key: bytes, options: DicomOptions) -> pa.Table:
    quiet_pydicom()
    node = current_node_type()
    rows = []
    for unit in batch.to_pylist():
        try:
            found, refused = process_folder(Path(root), unit["paths"], Path(out), key, options)
        except Exception as e:  # a bug must not kill the job or lose the other folders
            message = f"unexpected {type(e).__name__} while processing the folder: report it"
            found, refused = [], [Quarantined(p, "internal_error", message) for p in unit["paths"]]
        for f in found:
            r = f.result or SeriesResult(f.series_uid, False, len(f.paths))  # skipped on resume
            rows.append({"series_uid": f.series_uid, "study_uid": f.study_uid, "paths": list(f.paths),
                         "skipped": f.skipped, **_outcome(r, node)})
        if refused:  # files that name no series
            r = SeriesResult("", False, len(refused), tuple(refused))
            rows.append({"series_uid": None, "study_uid": None, "paths": [q.path for q in refused],
                         "skipped": False, **_outcome(r, node)})
    return pa.Table.from_pylist(rows, schema=_FOLDER_SCHEMA)


# --- The driver ------------------------------------------------------------------------------

def _prepare_output(out: Path, options: DicomOptions, key: bytes) -> None:
    """A fresh run removes its own previous outputs; a resumed one checks they match."""
    previous = read_manifest(out)
    if options.resume and previous is not None:
        same = (previous.get("schema_version") == SCHEMA_VERSION
                and previous.get("key_id") == key_id(key)
                and previous.get("options") == options.to_dict())
        if not same:
            raise ConfigError(
                f"{out} was written with another key, options or schema version: resume with the "
                "same ones, or run without --resume to start over"
            )
    elif not options.resume:
        # Only files this pipeline writes: never anything else a user keeps in OUT.
        shutil.rmtree(out / VOLUMES_DIR, ignore_errors=True)
        shutil.rmtree(out / EXPORT_DIR, ignore_errors=True)
        for name in (QUARANTINE, MANIFEST):
            (out / name).unlink(missing_ok=True)
    for stale in (out / VOLUMES_DIR).glob(".*.tmp"):  # left by an interrupted run
        stale.unlink(missing_ok=True)
    for stale in (out / EXPORT_DIR).glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _refused(scanned: pa.Table) -> list[Quarantined]:
    """The files the scan refused."""
    return [Quarantined(r["path"], r["reason"], r["message"])
            for r in scanned.filter(scanned["reason"].is_valid()).to_pylist()]


def _group(members: Iterable[tuple[str, str, str]]) -> tuple[list[dict[str, Any]], list[Quarantined]]:
    """Series work units (largest first) from (path, study UID, series UID) of each file, and the
    files of series whose UID is used in more than one study."""
    paths: dict[str, list[str]] = {}
    studies: dict[str, set[str]] = {}
    for path, study_uid, series_uid in members:
        paths.setdefault(series_uid, []).append(path)
        studies.setdefault(series_uid, set()).add(study_uid)
    units, refused = [], []
    for series_uid, files in paths.items():
        if len(studies[series_uid]) > 1:
            message = (f"one SeriesInstanceUID is used in {len(studies[series_uid])} studies: "
                       "fix the UIDs at the source")
            refused += [Quarantined(p, "inconsistent_series", message) for p in files]
        else:
            units.append({"series_uid": series_uid, "paths": sorted(files)})
    units.sort(key=lambda u: (-len(u["paths"]), u["series_uid"]))
    return units, refused


def _by_folder(files: Sequence[str], grouping: str, concurrency: int) -> bool:
    """Whether to group by folder in one pass (see ``GROUPINGS`` in the series module)."""
    if grouping != "auto":
        return grouping == "folder"
    largest = max(Counter(posixpath.dirname(f) for f in files).values())
    return largest * concurrency <= len(files)


def _deal(units: Sequence[dict[str, Any]], concurrency: int) -> tuple[list[dict[str, Any]], int]:
    """Units (largest first) dealt round-robin into blocks, so that every block gets a fair share,
    and the number of blocks.

    Small runs get one block per task slot: Ray Data notices a finished task up to 0.1 s late (its
    scheduling loop waits that long for the running ones), so a second, queued block per slot
    made 1,536 slices on 2 cores take 0.99 s instead of 0.87 s (medians of 10 runs).
    """
    blocks = min(len(units), _MAX_SERIES_BLOCKS, max(concurrency, math.ceil(len(units) / _SERIES_PER_BLOCK)))
    return [u for b in range(blocks) for u in units[b::blocks]], blocks


def _commit_folders(rows: list[dict[str, Any]], out: Path) -> tuple[
        list[dict[str, Any]], list[tuple[str, str, str]], list[dict[str, Any]], list[Quarantined]]:
    """What the folder pass found: results of the series it completed (their shards renamed into
    place), the (path, study, series) of the files of series spanning folders (to process again,
    whole), the series skipped on resume, and the files that name no series."""
    refused: list[Quarantined] = []
    parts: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["series_uid"] is None:
            refused += [Quarantined(**q) for q in r["quarantine"]]
        else:
            parts.setdefault(r["series_uid"], []).append(r)
    results, again, skipped = [], [], []
    for series_uid, found in parts.items():
        if len(found) > 1:  # each folder saw part of the series: drop the parts, redo it whole
            pending_path(out, series_uid).unlink(missing_ok=True)
            shutil.rmtree(pending_export_path(out, series_uid), ignore_errors=True)
            again += [(p, f["study_uid"], series_uid) for f in found for p in f["paths"]]
        elif found[0]["skipped"]:
            skipped.append({"series_uid": series_uid, "paths": found[0]["paths"]})
        else:
            if found[0]["written"]:
                os.replace(pending_path(out, series_uid), shard_path(out, series_uid))
                if pending_export_path(out, series_uid).is_dir():
                    commit_export(out, series_uid)
            results.append(found[0])
    return results, again, skipped, refused


def _manifest(options: DicomOptions, key: bytes, status: str, counts: dict[str, Any] | None = None,
              run: dict[str, Any] | None = None) -> dict[str, Any]:
    deid = options.deid
    return {
        "pipeline": PIPELINE,
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "key_id": key_id(key),
        "options": options.to_dict(),
        "deidentification": {
            "method": method_description(deid, pixels_cleaned=options.clean_pixel_data),
            "codes": [{"code_value": PROFILE_CODES[c][0], "coding_scheme": "DCM",
                       "code_meaning": PROFILE_CODES[c][1]}
                      for c in applied_codes(deid, pixels_cleaned=options.clean_pixel_data)],
            "attribute_table": f"dicom-anonymizer {TABLE_VERSION}",
            "options_table": f"medray.privacy/{OPTIONS_TABLE}",
        },
        "outputs": {"volumes": f"{VOLUMES_DIR}/", "quarantine": QUARANTINE,
                    **({"dicom": f"{EXPORT_DIR}/"} if options.export_dicom else {})},
        "counts": counts or {},
        "run": run or {},
    }


@dataclass
class _Grouped:
    """What grouping found: series still to process, results of series the folder pass completed,
    series skipped on resume, refused files, where files were read first, the scan's task CPU
    seconds and the series that spanned folders."""

    units: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    read_on: Counter[str] = field(default_factory=Counter)
    scan_cpu: float = 0.0
    spanning: int = 0


def _map(units: Sequence[dict[str, Any]], fn: Any, args: dict[str, Any], chosen: Placement,
         concurrency: int, *, by_block: bool) -> list[dict[str, Any]]:
    """``fn`` over ``units`` as one Ray Data execution on the chosen nodes; its output rows.

    ``by_block``: ``units`` go in as they are, ``fn`` takes a whole block (a scan); else they are
    dealt into blocks (:func:`_deal`) and ``fn`` takes one unit at a time.
    """
    import ray.data

    if by_block:
        items, blocks = list(units), min(len(units), max(concurrency, math.ceil(len(units) / _FILES_PER_SCAN_BLOCK)))
    else:
        items, blocks = _deal(units, concurrency)
    work = start_tasks_at_once(ray.data.from_items(items, override_num_blocks=blocks))
    work = work.map_batches(fn, batch_format="pyarrow", batch_size=None if by_block else 1, fn_kwargs=args,
                            **map_options(chosen, min(concurrency, blocks)))
    return [r for b in work.iter_batches(batch_format="pyarrow", batch_size=None) for r in b.to_pylist()]


def _folder_pass(files: Sequence[str], out: Path, args: dict[str, Any], chosen: Placement,
                 concurrency: int) -> _Grouped:
    """Tasks take whole folders (largest first); the series found whole are committed."""
    folders: dict[str, list[str]] = {}
    for f in files:
        folders.setdefault(posixpath.dirname(f), []).append(f)
    units = sorted(({"paths": p} for p in folders.values()), key=lambda u: (-len(u["paths"]), u["paths"][0]))
    rows = _map(units, _folder_batch, args, chosen, concurrency, by_block=False)
    grouped = _Grouped()
    for r in rows:
        grouped.read_on[r["node_type"]] += len(r["paths"])
    grouped.results, again, grouped.skipped, grouped.quarantined = _commit_folders(rows, out)
    grouped.units, refused = _group(again)
    grouped.quarantined += refused
    grouped.spanning = len({series for _, _, series in again})
    return grouped


def _scan_pass(files: Sequence[str], args: dict[str, Any], chosen: Placement, concurrency: int) -> _Grouped:
    """A header scan of every file, grouped into series in the driver."""
    if not files:
        return _Grouped()
    scan_args = {"root": args["root"], "key": args["key"]}
    scanned = pa.Table.from_pylist(
        _map([{"path": p} for p in files], _scan_batch, scan_args, chosen, concurrency, by_block=True),
        schema=_SCAN_SCHEMA)
    valid = scanned.filter(scanned["reason"].is_null())
    units, refused = _group(zip(valid["path"].to_pylist(), valid["study_uid"].to_pylist(),
                                valid["series_uid"].to_pylist()))
    return _Grouped(units=units, quarantined=_refused(scanned) + refused,
                    read_on=Counter(scanned["node_type"].to_pylist()),
                    scan_cpu=math.fsum(scanned["cpu_seconds"].to_pylist()))


def preprocess_dicom(input: str | Path, output: str | Path, *, key: bytes,
                     options: DicomOptions = DicomOptions()) -> Summary:
    """Preprocess every file under ``input`` into ``output`` on the connected Ray cluster.

    Bad files never stop the run: they land in ``quarantine.parquet``. Raises ConfigError or
    PlacementError for problems with the arguments or the cluster, before any work starts.
    """
    t0 = time.perf_counter()
    root, out = Path(input).resolve(), Path(output).resolve()
    if out == root or root in out.parents:
        raise ConfigError("the output must not lie inside the input: it would be read as input next time")
    if options.clean_pixel_data:
        require_tesseract()  # here, not in every task: one actionable line, before any work
    chosen = placement()
    concurrency = options.concurrency or default_concurrency(chosen)
    files = list_files(root)
    # Only now, with the arguments and the cluster checked, is a previous output touched.
    _prepare_output(out, options, key)
    write_manifest(out, _manifest(options, key, "running"))
    walls = {"list": time.perf_counter() - t0}
    by_folder = bool(files) and _by_folder(files, options.grouping, concurrency)
    _log.info("%s %d files on %s (falls back to %s)", "processing by folder" if by_folder else "scanning",
              len(files), chosen.node_type.name,
              ", ".join(t.name for t in chosen.candidates[1:]) or "nothing")
    args = {"root": str(root), "out": str(out), "key": key, "options": options}
    if by_folder:
        grouped = _folder_pass(files, out, args, chosen, concurrency)
        walls["folders"] = time.perf_counter() - t0 - sum(walls.values())
    else:
        grouped = _scan_pass(files, args, chosen, concurrency)
        walls["scan"] = time.perf_counter() - t0 - sum(walls.values())
    units, results, skipped, quarantined = grouped.units, grouped.results, grouped.skipped, grouped.quarantined

    todo = []
    for u in units:
        (skipped if options.resume and is_done(out, u["series_uid"], options) else todo).append(u)
    _log.info("%d series to process, %d already written", len(todo), len(skipped))
    walls["group"] = time.perf_counter() - t0 - sum(walls.values())
    if todo:
        results += _map(todo, _series_batch, args, chosen, concurrency, by_block=False)
    walls["process"] = time.perf_counter() - t0 - sum(walls.values())

    quarantined += [Quarantined(**q) for r in results for q in r["quarantine"]]
    write_quarantine(quarantined, out / QUARANTINE, key=key)
    written = [r for r in results if r["written"]]
    by_reason = dict(sorted(Counter(q.reason for q in quarantined).items()))
    worker_seconds: Counter[str] = Counter()
    for r in results:
        worker_seconds.update(json.loads(r["seconds"]))
    walls["finish"] = time.perf_counter() - t0 - sum(walls.values())
    seconds = time.perf_counter() - t0
    summary = Summary(
        output=out,
        files=len(files),
        series_written=len(written),
        series_skipped=len(skipped),
        series_quarantined=len(results) - len(written),
        slices=sum(r["n_instances"] for r in written) + sum(len(u["paths"]) for u in skipped),
        quarantined=by_reason,
        seconds=seconds,
        node_types=dict(Counter(r["node_type"] for r in results)),
    )
    counts = {"files": summary.files, "series": summary.series_written + summary.series_skipped,
              "series_quarantined": summary.series_quarantined, "slices": summary.slices,
              "files_quarantined": summary.quarantined_files, "quarantined_by_reason": by_reason}
    cpu = {"scan": round(grouped.scan_cpu, 3),
           "series": round(worker_seconds.pop("cpu", 0.0), 3)}
    run = {"seconds": {k: round(v, 3) for k, v in {**walls, "total": seconds}.items()},
           "worker_seconds": {k: round(v, 3) for k, v in sorted(worker_seconds.items())},
           "worker_cpu_seconds": cpu,
           # "scan": where each file was read first (the scan, or the folder pass).
           "node_types": {"scan": dict(grouped.read_on), "series": summary.node_types},
           "series_written_this_run": summary.series_written,
           "series_skipped": summary.series_skipped,
           "concurrency": concurrency,
           "grouping": "folder" if by_folder else "scan",
           "series_spanning_folders": grouped.spanning}
    write_manifest(out, _manifest(options, key, "complete", counts, run))
    _count(summary)
    return summary


def _count(summary: Summary) -> None:
    """Export the run's outcome as Ray metrics (reason codes only)."""
    series = counter("preprocess_series", "Series preprocessed, by outcome", ("outcome",))
    for outcome, n in (("written", summary.series_written), ("quarantined", summary.series_quarantined)):
        if n:
            series.inc(n, tags={"outcome": outcome})
    files = counter("preprocess_quarantined_files", "Input files quarantined, by reason", ("reason",))
    for reason, n in summary.quarantined.items():
        files.inc(n, tags={"reason": reason})


# --- CLI -------------------------------------------------------------------------------------

# The PS3.15 options beyond the two above, as DeidOptions names them (flags: dashes).
_DEID_FLAGS = {
    "retain_full_dates": "keep dates and times as they are (not with --retain-dates)",
    "retain_uids": "keep the original UIDs",
    "retain_device_identity": "keep device names and serial numbers (AE titles pseudonymised)",
    "retain_institution_identity": "keep institution names and addresses",
    "clean_descriptors": "keep descriptions and comments, cleaned of identifying words and dates",
    "clean_structured_content": "keep structured content (SR-like sequences), cleaned",
    "clean_graphics": "keep graphic annotations and overlay comments, cleaned",
}


def _parser() -> argparse.ArgumentParser:
    p = pipeline_parser(PIPELINE, __doc__, input_help="folder of DICOM files (searched recursively)",
                        output_help="output folder (volumes/, quarantine, manifest)")
    default = InputSpec()
    p.add_argument("--window", default=default.window, choices=[*WINDOWS, "none"],
                   help="intensity window (none keeps Hounsfield units)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   default=default.spacing_mm, help="target voxel spacing in mm")
    p.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"), default=default.shape,
                   help="output volume shape (centre crop/pad)")
    p.add_argument("--retain-dates", action="store_true",
                   help="PS3.15 option: keep dates, shifted per patient (as the EMR pipeline)")
    p.add_argument("--retain-patient-characteristics", action="store_true",
                   help="PS3.15 option: keep sex, age (90+ grouped), size, weight")
    for flag, meaning in _DEID_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=f"PS3.15 option: {meaning}")
    p.add_argument("--safe-private", action="append", default=[], metavar="GGGG,EE,CREATOR",
                   help="PS3.15 Retain Safe Private: keep this private attribute (odd group, element "
                        "byte, both hex, and its private creator); repeat for each")
    p.add_argument("--clean-pixel-data", action="store_true",
                   help="PS3.15 Clean Pixel Data: OCR (Tesseract) every slice, blank the --pixel-regions "
                        "of known devices, quarantine series with text left (burned_in_text)")
    p.add_argument("--pixel-regions", metavar="FILE",
                   help="JSON list of {manufacturer, model, rows, columns, boxes: [[left, top, width, "
                        "height], ...]}: where known devices burn in annotation (with --clean-pixel-data)")
    p.add_argument("--export-dicom", action="store_true",
                   help="also write every de-identified instance as a DICOM file under OUTPUT/dicom/")
    p.add_argument("--resume", action="store_true", help="skip series already written to OUTPUT")
    p.add_argument("--grouping", choices=GROUPINGS, default="auto",
                   help="folder: one pass, tasks take whole folders (each header read once); scan: a "
                        "header scan first; auto: folder when no folder holds more than a task's share "
                        "of the files (the output is the same)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 even when files were quarantined)."""
    args = _parser().parse_args(argv)
    try:
        key = load_key(args.key_file)
        spec = InputSpec(spacing_mm=tuple(args.spacing), shape=tuple(args.shape),
                         window=None if args.window == "none" else args.window)
        options = DicomOptions(
            spec=spec,
            deid=DeidOptions(retain_dates=args.retain_dates,
                             retain_patient_characteristics=args.retain_patient_characteristics,
                             **{flag: getattr(args, flag) for flag in _DEID_FLAGS},
                             retain_safe_private=bool(args.safe_private),
                             safe_private=parse_safe_private(args.safe_private)),
            concurrency=args.concurrency,
            resume=args.resume,
            grouping=args.grouping,
            export_dicom=args.export_dicom,
            clean_pixel_data=args.clean_pixel_data,
            pixel_regions=load_regions(args.pixel_regions) if args.pixel_regions else (),
        )
        connect()
        summary = preprocess_dicom(args.input, args.output, key=key, options=options)
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
