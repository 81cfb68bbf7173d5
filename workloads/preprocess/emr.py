"""EMR de-identification on Ray Data: Parquet/CSV tables in, de-identified Parquet out, under the
mapping's profile (``safe_harbor``: HIPAA Safe Harbor; ``longitudinal``: the research profile that
joins with the images, not Safe Harbor; see :mod:`medray.privacy.emr`).

    python -m workloads.preprocess.emr --input IN --output OUT [--mapping F] [--key-file F] [--crosswalk F]

or :func:`preprocess_emr` from a notebook. Every ``.parquet`` / ``.csv`` file under IN is one
table part: ``IN/labs.csv`` is table ``labs``, ``IN/labs/2024-01.parquet`` a part of it. Each part
is one task on a prep node that applies :func:`medray.privacy.emr.deidentify_table` (pyarrow
compute, no per-row Python but for notes) and writes ``OUT/<table>.parquet`` (a part at the top of
IN) or ``OUT/<table>/<file id>.parquet`` (a part in a table folder: sub-folder and file names of real
exports may hold patient names, so parts are named by a keyed hash of their path,
:func:`workloads.preprocess.runs.file_id`, in outputs, the manifest and logs alike). Column roles
come from the mapping (default: the synthetic cohort's, :meth:`EmrMapping.default`); parts of tables
it does not name are skipped and reported by file id, columns it does not name are dropped. Columns
mapped as ``note`` are scrubbed (:mod:`medray.privacy.notes`) with a name dictionary that adds the
words of every ``name`` column of the run (the driver reads those columns first). Under
``longitudinal``, ``patient_pseudonym`` equals the DICOM pipeline's PatientID pseudonym, so the outputs join on it; under ``safe_harbor`` it is a
random code from the crosswalk file (``--crosswalk``, kept with the key), which the driver fills from
every table's identifiers before the tasks start, so codes agree across tables and exports.
``OUT/manifest.json`` records the key id, the mapping with its profile, the rule the profile
implements, per-part counts and, where notes were scrubbed, the scrubber, its version and what it found.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from medray.cli.table import format_table
from medray.cluster.local import connect
from medray.data.shards import write_parquet
from medray.errors import ConfigError, MedrayError
from medray.logs import get_logger
from medray.privacy.crosswalk import Crosswalk
from medray.privacy.emr import (
    PROFILE_RULES,
    EmrMapping,
    deidentify_table,
    identifier_kinds,
    identifier_values,
    name_values,
)
from medray.privacy.notes import scrubber_for, scrubber_info
from medray.privacy.pseudonym import key_id, load_key
from medray.scheduling.load import current_node_type
from workloads.preprocess.runs import (
    default_concurrency,
    file_id,
    list_files,
    map_options,
    pipeline_parser,
    placement,
    read_manifest,
    start_tasks_at_once,
    write_manifest,
)

__all__ = ["EMR_FORMAT_VERSION", "EmrSummary", "part_name", "preprocess_emr", "main"]

PIPELINE = "workloads.preprocess.emr"
EMR_FORMAT_VERSION = 2
_SUFFIXES = (".parquet", ".csv")
_log = get_logger("preprocess.emr")

_RESULT_SCHEMA = pa.schema([
    ("part", pa.string()), ("output", pa.string()), ("table", pa.string()),
    ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("rows_without_patient_id", pa.int64()),
    ("unmapped_dropped", pa.list_(pa.string())), ("notes_found", pa.string()), ("error", pa.string()),
    ("node_type", pa.string()), ("seconds", pa.float64()),
])


@dataclass(frozen=True)
class EmrSummary:
    """What a run did, per table part (named as :func:`part_name` says; counts and column names only);
    ``skipped``: the file ids of the parts no table mapping names."""

    output: Path
    parts: list[dict[str, Any]]
    skipped: list[str]
    seconds: float
    node_types: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return {p["part"]: p["error"] for p in self.parts if p["error"]}

    @property
    def rows_out(self) -> int:
        return sum(p["rows_out"] for p in self.parts)

    def table(self) -> str:
        """The final summary table printed by the CLI."""
        rows: list[tuple[str, Any]] = [
            (p["part"], f"{p['rows_out']} rows" if not p["error"] else f"FAILED: {p['error']}")
            for p in self.parts
        ]
        if self.skipped:
            rows.append(("parts without a mapping", f"{len(self.skipped)} skipped (file ids in the manifest)"))
        rows += [("rows out", self.rows_out),
                 ("by node type", ", ".join(f"{k}={v}" for k, v in sorted(self.node_types.items())) or "-"),
                 ("seconds", f"{self.seconds:.1f}")]
        return format_table(None, rows, title=f"EMR de-identification -> {self.output}")


def _table_name(path: str) -> str:
    """``labs.csv`` -> ``labs``; ``labs/2024-01.parquet`` -> ``labs``."""
    parts = PurePosixPath(path).parts
    return parts[0] if len(parts) > 1 else PurePosixPath(path).stem


def part_name(key: bytes, path: str) -> str:
    """How outputs, the manifest and logs name the part at ``path``: ``labs.csv`` as it is (its stem
    is a mapped table's name), ``labs/<any path>`` as ``labs/<file id>``."""
    parts = PurePosixPath(path).parts
    return path if len(parts) == 1 else f"{parts[0]}/{file_id(key, path)}"


def _read(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The table part at ``path``; with ``columns``, only those of them it has."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        if columns is not None:
            columns = [c for c in columns if c in pq.read_schema(path).names]
        return pq.read_table(path, columns=columns)
    if columns is not None:
        with pa_csv.open_csv(path) as reader:  # reads the header and the first block only
            columns = [c for c in columns if c in reader.schema.names]
        return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(include_columns=columns))
    return pa_csv.read_csv(path)


def _emr_batch(batch: pa.Table, root: str, out: str, key: bytes, mapping: EmrMapping,
               codes: dict[str, dict[str, str]] | None, names: tuple[str, ...]) -> pa.Table:
    node = current_node_type()
    crosswalk = Crosswalk.from_codes(codes, key) if codes is not None else None
    rows = []
    for path in batch.column("path").to_pylist():
        start = time.perf_counter()
        name = _table_name(path)
        part = part_name(key, path)
        output = PurePosixPath(part).with_suffix(".parquet").as_posix()
        row: dict[str, Any] = {"part": part, "output": output, "table": name, "rows_in": 0,
                               "rows_out": 0, "rows_without_patient_id": 0,
                               "unmapped_dropped": [], "notes_found": None, "error": None, "node_type": node}
        try:
            table = _read(Path(root) / path)
            table_mapping = mapping.tables[name]
            scrubber = scrubber_for(names) if "note" in table_mapping.columns.values() else None
            result = deidentify_table(table, table_mapping, key,
                                      age_reference_date=mapping.age_reference_date,
                                      profile=mapping.profile, crosswalk=crosswalk, scrubber=scrubber)
            write_parquet(result.table, Path(out) / output)
            row.update(rows_in=result.rows_in, rows_out=result.table.num_rows,
                       rows_without_patient_id=result.rows_without_patient_id,
                       unmapped_dropped=list(result.unmapped_dropped),
                       notes_found=json.dumps(result.notes_found) if scrubber else None)
        except ConfigError as e:  # messages name columns and roles, never values
            row["error"] = str(e)
        except Exception as e:
            # pyarrow's parse errors quote the offending row: keep the error type only.
            row["error"] = f"{type(e).__name__} while reading or de-identifying the table"
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_RESULT_SCHEMA)


def _read_ahead(root: Path, files: list[str], mapping: EmrMapping, key: bytes,
                crosswalk: Crosswalk | None, with_names: bool) -> set[str]:
    """Before the tasks: codes in ``crosswalk`` for every identifier of every mapped part, and the
    words of every ``name`` column when ``with_names`` (only those columns are read)."""
    names: set[str] = set()
    for f in files:
        table_mapping = mapping.tables[_table_name(f)]
        wanted = list(identifier_kinds(table_mapping)) if crosswalk is not None else []
        if with_names:
            wanted += [c for c, role in table_mapping.columns.items() if role == "name"]
        if not wanted:
            continue
        try:
            table = _read(root / f, columns=wanted)
            values = identifier_values(table, table_mapping) if crosswalk is not None else {}
            names |= name_values(table, table_mapping) if with_names else set()
        except Exception as e:  # the task reports the part; a parse error could quote a row
            _log.warning("%s: cannot read its identifiers or names (%s)", part_name(key, f), type(e).__name__)
            continue
        for kind, ids in values.items():
            crosswalk.add(ids, kind)
    if crosswalk is not None:
        crosswalk.save()
    return names


def preprocess_emr(input: str | Path, output: str | Path, *, key: bytes,
                   mapping: EmrMapping | None = None, concurrency: int | None = None,
                   crosswalk: str | Path | None = None) -> EmrSummary:
    """De-identify every mapped table under ``input`` into ``output`` on the connected cluster.

    ``crosswalk``: the record-code file the ``safe_harbor`` profile needs (created on first use,
    kept with the key). A table that fails (e.g. its patient_id column is missing) is reported in
    the summary and the manifest; the others are still written.
    """
    import ray.data

    t0 = time.perf_counter()
    mapping = mapping or EmrMapping.default()
    root, out = Path(input).resolve(), Path(output).resolve()
    if out == root or root in out.parents:
        raise ConfigError("the output must not lie inside the input: it would be read as input next time")
    chosen = placement()
    concurrency = concurrency or default_concurrency(chosen)
    files = [f for f in list_files(root) if PurePosixPath(f).suffix in _SUFFIXES]
    mapped = [f for f in files if _table_name(f) in mapping.tables]
    skipped = sorted(file_id(key, f) for f in files if _table_name(f) not in mapping.tables)
    if skipped:
        _log.warning("%d table parts have no mapping: not written (their file ids are in the manifest; "
                     "workloads.preprocess.runs.locate_files finds them; add their tables to the mapping)",
                     len(skipped))
    walk = None
    if mapping.profile == "safe_harbor":
        if crosswalk is None:
            raise ConfigError("the safe_harbor profile takes its record codes from a crosswalk file kept with "
                              "the key: pass --crosswalk FILE (created on first use)")
        walk = Crosswalk(crosswalk, key)
    with_notes = {_table_name(f) for f in mapped if "note" in mapping.tables[_table_name(f)].columns.values()}
    names = _read_ahead(root, mapped, mapping, key, walk, bool(with_notes))
    codes = walk.snapshot() if walk is not None else None
    previous = read_manifest(out) or {}
    for stale in previous.get("outputs", []):  # a fresh run replaces the previous run's files
        (out / stale).unlink(missing_ok=True)

    parts: list[dict[str, Any]] = []
    if mapped:
        work = start_tasks_at_once(ray.data.from_items([{"path": f} for f in mapped],
                                                        override_num_blocks=len(mapped)))
        work = work.map_batches(_emr_batch, batch_format="pyarrow", batch_size=1,
                                fn_kwargs={"root": str(root), "out": str(out), "key": key,
                                           "mapping": mapping, "codes": codes, "names": tuple(sorted(names))},
                                **map_options(chosen, min(concurrency, len(mapped))))
        for batch in work.iter_batches(batch_format="pyarrow", batch_size=None):
            parts += batch.to_pylist()
    parts.sort(key=lambda p: p["part"])
    seconds = time.perf_counter() - t0
    summary = EmrSummary(output=out, parts=parts, skipped=skipped, seconds=seconds,
                         node_types=dict(Counter(p["node_type"] for p in parts)))
    write_manifest(out, {
        "pipeline": PIPELINE,
        "format_version": EMR_FORMAT_VERSION,
        "key_id": key_id(key),
        "mapping": mapping.to_dict(),
        "profile": {"name": mapping.profile, "rule": PROFILE_RULES[mapping.profile]},
        "tables": {p["part"]: {k: p[k] for k in ("table", "output", "rows_in", "rows_out",
                                                  "rows_without_patient_id", "unmapped_dropped",
                                                  "error")} for p in parts},
        "notes": {"scrubber": scrubber_info(len(names)),
                  "found": {p["part"]: json.loads(p["notes_found"]) for p in parts if p["notes_found"]}}
        if with_notes else None,
        "skipped_parts": skipped,
        "outputs": [p["output"] for p in parts if not p["error"]],
        "run": {"seconds": round(seconds, 3), "node_types": summary.node_types,
                "worker_seconds": round(math.fsum(p["seconds"] for p in parts), 3)},
    })
    return summary


def _parser() -> argparse.ArgumentParser:
    p = pipeline_parser(PIPELINE, __doc__, input_help="folder of Parquet/CSV tables", output_help="output folder")
    p.add_argument("--mapping", help="column-role mapping with its profile (YAML or JSON); default: the "
                                     "synthetic cohort's, longitudinal profile")
    p.add_argument("--crosswalk", help="record-code file of the safe_harbor profile (created on first use; "
                                       "keep it with the key, mode 0600)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 when every mapped table was written, 1 when one failed, 2 on bad usage."""
    args = _parser().parse_args(argv)
    try:
        key = load_key(args.key_file)
        mapping = EmrMapping.load(args.mapping) if args.mapping else EmrMapping.default()
        connect()
        summary = preprocess_emr(args.input, args.output, key=key, mapping=mapping,
                                 concurrency=args.concurrency, crosswalk=args.crosswalk)
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.table())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
