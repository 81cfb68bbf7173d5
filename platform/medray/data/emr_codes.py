"""Diagnosis-code histories that predict an outcome: the synthetic EMR's learnable signal.

Every patient gets a history of diagnosis codes drawn from a vocabulary of synthetic codes shaped
like ICD-10-CM (a letter, two digits, a dot and two more digits: ``K37.04``; the 3-character
category ``K37`` groups a hundred of them). Codes are drawn by a Zipf-like popularity, as real code
use is (a few codes are common, most are rare). Each code carries a log-odds weight, its category's
effect plus its own; the outcome, :data:`OUTCOME_CODE` (I50.9, heart failure, unspecified), is
coded on the patient's latest encounter with probability ``sigmoid(2 * z - 0.85)``, ``z`` the
patient's summed weights standardised over the cohort (about 30 % positive). A model over the code
history can therefore learn the outcome; a model that ignores it cannot (the label is independent
of everything else in the cohort).

The synthetic codes always have a 2-digit extension, so they never equal the cohort's real codes
(R91.1, I10, E11.9 …) and never the outcome code. :func:`draw_histories` draws histories alone (the
EMR benchmark draws 100,000-code vocabularies without a cohort); :func:`add_code_histories` adds
them to a cohort's diagnoses table (``medray synth`` does, with :data:`COHORT_VOCAB` codes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date

import numpy as np
import pyarrow as pa

from medray.data.emr_tables import EmrTables
from medray.data.people import Patient
from medray.errors import ConfigError

__all__ = ["COHORT_VOCAB", "MAX_VOCAB", "OUTCOME_CODE", "OUTCOME_TEXT", "CodeHistories", "add_code_histories",
           "category", "code_names", "draw_histories"]

OUTCOME_CODE = "I50.9"
OUTCOME_TEXT = "Heart failure, unspecified"
COHORT_VOCAB = 5_000  # synthetic codes in medray synth's cohort
_LETTERS = "ABCDEFGHIJKLMNOPQRSTVWXYZ"  # ICD-10-CM chapters' first letters (U is reserved)
MAX_VOCAB = len(_LETTERS) * 100 * 100
_MEAN_CODES = 12.0


@dataclass(frozen=True)
class CodeHistories:
    """Code rows (``patient[i]`` has code ``codes[i]``) and each patient's outcome."""

    patient: np.ndarray  # int64 [rows], index into the patients
    codes: np.ndarray  # str [rows]
    outcome: np.ndarray  # bool [patients]


def code_names(index: np.ndarray) -> np.ndarray:
    """The synthetic code of each vocabulary index: letter, category digits, dot, 2-digit extension."""
    index = np.asarray(index, dtype=np.int64)
    letters = np.array(list(_LETTERS))[index % len(_LETTERS)]
    digits = np.char.zfill(((index // len(_LETTERS)) % 100).astype(str), 2)
    extension = np.char.zfill((index // (len(_LETTERS) * 100)).astype(str), 2)
    return np.char.add(np.char.add(np.char.add(letters, digits), "."), extension)


def category(codes: np.ndarray) -> np.ndarray:
    """The 3-character ICD-10-CM category of each code (``K37.04`` -> ``K37``)."""
    return np.char.partition(np.asarray(codes, dtype=str), ".")[:, 0]


def draw_histories(rng: np.random.Generator, patients: int, *, vocab: int = COHORT_VOCAB,
                   mean_codes: float = _MEAN_CODES) -> CodeHistories:
    """``patients`` histories of ``1 + Poisson(mean_codes - 1)`` codes each, with their outcomes."""
    if not 1 <= vocab <= MAX_VOCAB:
        raise ConfigError(f"vocab must be from 1 to {MAX_VOCAB}, got {vocab!r}")
    if patients < 1 or mean_codes < 1:
        raise ConfigError(f"patients and mean_codes must be >= 1, got {patients!r} and {mean_codes!r}")
    popularity = 1.0 / (rng.permutation(vocab) + 10.0) ** 1.05
    popularity /= popularity.sum()
    categories = len(_LETTERS) * 100
    category_effect = rng.normal(0.0, 1.0, categories) * (rng.random(categories) < 0.2)
    code_effect = rng.normal(0.0, 1.5, vocab) * (rng.random(vocab) < 0.05)
    weights = 0.5 * category_effect[np.arange(vocab) % categories] + code_effect

    counts = 1 + rng.poisson(mean_codes - 1.0, patients)
    drawn = rng.choice(vocab, size=int(counts.sum()), p=popularity)
    patient = np.repeat(np.arange(patients, dtype=np.int64), counts)
    score = np.bincount(patient, weights=weights[drawn], minlength=patients)
    z = (score - score.mean()) / (score.std() or 1.0)
    outcome = rng.random(patients) < 1.0 / (1.0 + np.exp(-(2.0 * z - 0.85)))
    return CodeHistories(patient=patient, codes=code_names(np.arange(vocab))[drawn], outcome=outcome)


def add_code_histories(emr: EmrTables, rng: np.random.Generator, cohort: list[Patient], *,
                       vocab: int = COHORT_VOCAB) -> EmrTables:
    """``emr`` with each patient's code history (on their encounters) and outcome added to the diagnoses."""
    histories = draw_histories(rng, len(cohort), vocab=vocab)
    visits: dict[str, list[tuple[date, str]]] = {}
    for e in emr.encounters.select(["mrn", "admit_date", "encounter_id"]).to_pylist():
        visits.setdefault(e["mrn"], []).append((e["admit_date"], e["encounter_id"]))
    for v in visits.values():
        v.sort()
    picks = rng.random(len(histories.codes))
    rows = []
    for p, code, pick in zip(histories.patient.tolist(), histories.codes.tolist(), picks.tolist()):
        mrn = cohort[p].mrn
        day, encounter_id = visits[mrn][int(pick * len(visits[mrn]))]
        rows.append({"mrn": mrn, "encounter_id": encounter_id, "icd10_code": code,
                     "description": f"Synthetic history code {code}", "diagnosed_at": day})
    for p in np.flatnonzero(histories.outcome).tolist():
        day, encounter_id = visits[cohort[p].mrn][-1]
        rows.append({"mrn": cohort[p].mrn, "encounter_id": encounter_id, "icd10_code": OUTCOME_CODE,
                     "description": OUTCOME_TEXT, "diagnosed_at": day})
    added = pa.Table.from_pylist(rows, schema=emr.diagnoses.schema)
    return replace(emr, diagnoses=pa.concat_tables([emr.diagnoses, added]))
