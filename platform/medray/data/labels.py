"""Labels and the patient split of a training cohort, from the de-identified diagnoses table.

* ``LABELS``: the de-identified diagnoses table (Parquet or CSV file, or a folder of Parquet parts)
  with ``patient_pseudonym`` and ``icd10_code``. A patient's label is 1 iff any of their rows has
  the code (default ``R91.1``, solitary pulmonary nodule).

Patients, never series, are split: all series of a patient fall on one side. The split is
stratified by label and keyed by ``seed`` (a patient's side depends only on its pseudonym, the seed
and the split sizes), so it is the same on every run, every worker and every site.

Shared by the research workload (one cohort) and the federated workload (one cohort per site).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from medray.data.shards import PATIENT_PSEUDONYM
from medray.errors import ConfigError

__all__ = ["NODULE_CODE", "ICD10_COLUMN", "read_positive_patients", "split_patients"]

NODULE_CODE = "R91.1"
ICD10_COLUMN = "icd10_code"


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    if path.is_dir():
        return pads.dataset(path, format="parquet").to_table(columns=columns)
    if path.suffix.lower() == ".csv":
        options = pa_csv.ConvertOptions(include_columns=columns,
                                        column_types={c: pa.string() for c in columns})
        return pa_csv.read_csv(path, convert_options=options)
    return pq.read_table(path, columns=columns)


def read_positive_patients(labels: str | Path, code: str = NODULE_CODE) -> frozenset[str]:
    """Pseudonyms of the patients with a diagnosis row of ``code`` in the diagnoses table."""
    path = Path(labels)
    if not path.exists():
        raise ConfigError(f"labels {path} do not exist: pass the de-identified diagnoses table "
                          "(e.g. PREP/emr/diagnoses.parquet from workloads.preprocess.emr)")
    try:
        table = _read_table(path, [PATIENT_PSEUDONYM, ICD10_COLUMN])
    except (pa.ArrowInvalid, KeyError) as e:
        raise ConfigError(f"labels {path} cannot be read as a diagnoses table with columns "
                          f"{PATIENT_PSEUDONYM!r} and {ICD10_COLUMN!r} ({type(e).__name__})") from None
    codes = pc.utf8_trim_whitespace(table[ICD10_COLUMN].cast(pa.string()))
    hits = table.filter(pc.fill_null(pc.equal(codes, code), False))[PATIENT_PSEUDONYM]
    return frozenset(p for p in hits.to_pylist() if p)


def _rank(seed: int, patient: str) -> bytes:
    return hashlib.sha256(f"{seed}:{patient}".encode()).digest()


def split_patients(
    patients: Iterable[str], positives: frozenset[str], *, val_fraction: float, seed: int
) -> tuple[frozenset[str], frozenset[str]]:
    """(train, val) pseudonyms: ``round(val_fraction * n)`` of each class goes to val.

    Each class keeps at least one patient on each side when it has two or more, so that the
    held-out AUC is defined.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be within (0, 1), got {val_fraction!r}")
    unique = set(patients)
    train: set[str] = set()
    val: set[str] = set()
    for group in (sorted(unique & positives), sorted(unique - positives)):
        ordered = sorted(group, key=lambda p: _rank(seed, p))
        n_val = round(val_fraction * len(ordered))
        if len(ordered) >= 2:
            n_val = min(max(n_val, 1), len(ordered) - 1)
        val.update(ordered[:n_val])
        train.update(ordered[n_val:])
    return frozenset(train), frozenset(val)
