"""EMR training examples: each patient's diagnosis-code history (hashed into table rows) and outcome.

:func:`load_examples` reads the EMR pipeline's de-identified diagnoses (``workloads.preprocess.emr``
output, columns ``patient_pseudonym`` and ``icd10_code``): a patient's label is whether they have a
row of the outcome code (default I50.9, :mod:`medray.data.emr_codes`), their features are all their
other codes. :func:`synthetic_examples` draws the same kind of histories in memory at any size (the
benchmark's 100,000-code vocabulary). Codes map to rows by a keyed-free, stable hash (BLAKE2b, the
"hashing trick": no vocabulary to ship, unseen codes still get a row).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from medray.data.emr_codes import OUTCOME_CODE, category, draw_histories
from medray.data.labels import ICD10_COLUMN
from medray.data.shards import PATIENT_PSEUDONYM
from medray.errors import ConfigError
from workloads.research.emr_model import Bags, EmrNetConfig

__all__ = ["EmrExamples", "hash_rows", "load_examples", "synthetic_examples"]

def hash_rows(values: np.ndarray, rows: int, *, salt: str) -> np.ndarray:
    """The row of each string in a table of ``rows`` rows: BLAKE2b-64 of ``salt:value`` mod ``rows``."""
    distinct, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    hashed = np.array([int.from_bytes(hashlib.blake2b(f"{salt}:{v}".encode(), digest_size=8).digest(), "little")
                       % rows for v in distinct.tolist()], dtype=np.int64)
    return hashed[inverse.reshape(-1)] if len(distinct) else np.zeros(0, np.int64)


@dataclass(frozen=True)
class EmrExamples:
    """Patients' row ids per table in CSR form (``ids``, ``offsets`` [n + 1]) and their labels [n]."""

    ids: dict[str, np.ndarray]
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> EmrExamples:
        """The examples at ``index``, in that order."""
        index = np.asarray(index, dtype=np.int64)
        starts, lengths = self.offsets[index], np.diff(self.offsets)[index]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
        return EmrExamples(ids={n: v[positions] for n, v in self.ids.items()}, offsets=offsets,
                           labels=self.labels[index])

    def bags(self) -> Bags:
        """Model input: per table (ids, bag offsets [n])."""
        offsets = torch.from_numpy(self.offsets[:-1])
        return {n: (torch.from_numpy(v), offsets) for n, v in self.ids.items()}

    def split(self, val_fraction: float, seed: int) -> tuple[EmrExamples, EmrExamples]:
        """(train, held-out): a seeded random ``val_fraction`` of the patients is held out."""
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be within (0, 1), got {val_fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, round(val_fraction * len(self)))
        return self.take(np.sort(order[n_val:])), self.take(np.sort(order[:n_val]))


def _examples(patient: np.ndarray, codes: np.ndarray, labels: np.ndarray, net: EmrNetConfig) -> EmrExamples:
    order = np.argsort(patient, kind="stable")
    patient, codes = patient[order], codes[order]
    offsets = np.searchsorted(patient, np.arange(len(labels) + 1)).astype(np.int64)
    ids = {"codes": hash_rows(codes, net.code_rows, salt="code"),
           "categories": hash_rows(category(codes), net.category_rows, salt="category")}
    return EmrExamples(ids=ids, offsets=offsets, labels=labels.astype(np.float32))


def synthetic_examples(patients: int, net: EmrNetConfig, *, vocab: int, seed: int = 0) -> EmrExamples:
    """``patients`` in-memory histories from :func:`medray.data.emr_codes.draw_histories`."""
    h = draw_histories(np.random.default_rng(seed), patients, vocab=vocab)
    return _examples(h.patient, h.codes, h.outcome, net)


def _read(path: Path) -> pa.Table:
    columns = [PATIENT_PSEUDONYM, ICD10_COLUMN]
    if path.is_dir():
        return pads.dataset(path, format="parquet").to_table(columns=columns)
    return pq.read_table(path, columns=columns)


def load_examples(diagnoses: str | Path, net: EmrNetConfig, *, outcome: str = OUTCOME_CODE) -> EmrExamples:
    """The patients of a de-identified diagnoses table (Parquet file or folder), labelled by ``outcome``."""
    path = Path(diagnoses)
    if not path.exists():
        raise ConfigError(f"{path} does not exist: pass the de-identified diagnoses "
                          "(OUT/diagnoses.parquet of workloads.preprocess.emr)")
    try:
        table = _read(path)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise ConfigError(f"{path} cannot be read as a diagnoses table with columns {PATIENT_PSEUDONYM!r} and "
                          f"{ICD10_COLUMN!r} ({type(e).__name__})") from None
    table = table.filter(pc.and_(pc.is_valid(table[PATIENT_PSEUDONYM]), pc.is_valid(table[ICD10_COLUMN])))
    codes = np.asarray(pc.utf8_trim_whitespace(table[ICD10_COLUMN].cast(pa.string())).to_pylist(), dtype=str)
    people, patient = np.unique(np.asarray(table[PATIENT_PSEUDONYM].to_pylist(), dtype=str), return_inverse=True)
    if not len(people):
        raise ConfigError(f"{path} holds no diagnosis rows with a patient pseudonym")
    is_outcome = codes == outcome
    labels = np.bincount(patient[is_outcome], minlength=len(people)) > 0
    return _examples(patient[~is_outcome], codes[~is_outcome], labels, net)
