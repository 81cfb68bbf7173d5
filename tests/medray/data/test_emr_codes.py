"""The synthetic EMR's code histories: the outcome is predictable from the codes, and in the cohort."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from medray.data.cohort import generate_cohort
from medray.data.emr_codes import OUTCOME_CODE, category, code_names, draw_histories
from medray.errors import ConfigError
from medray.models.evaluate import roc_auc


def test_codes_predict_the_outcome():
    h = draw_histories(np.random.default_rng(1), 6_000, vocab=2_000)
    assert 0.2 < h.outcome.mean() < 0.5
    train = h.patient < 4_000
    # Naive Bayes on code counts, fitted on 4,000 patients, scored on the other 2,000.
    vocab, inverse = np.unique(h.codes, return_inverse=True)
    pos = np.bincount(inverse[train & h.outcome[h.patient]], minlength=len(vocab)) + 1.0
    neg = np.bincount(inverse[train & ~h.outcome[h.patient]], minlength=len(vocab)) + 1.0
    log_odds = np.log(pos / pos.sum()) - np.log(neg / neg.sum())
    score = np.bincount(h.patient, weights=log_odds[inverse], minlength=6_000)
    assert roc_auc(score[4_000:], h.outcome[4_000:]) > 0.7
    shuffled = np.random.default_rng(2).permutation(h.outcome[4_000:])
    assert roc_auc(score[4_000:], shuffled) < 0.6  # the signal is in the codes, not in the scoring


def test_code_names_never_equal_real_codes():
    names = code_names(np.arange(0, 250_000, 7))
    assert all(len(n) == 6 and n[3] == "." for n in names[:100])
    assert not {"R91.1", "I10", "E11.9", "J45.909", OUTCOME_CODE} & set(names.tolist())
    assert category(np.array(["K37.04"])).tolist() == ["K37"]
    with pytest.raises(ConfigError):
        draw_histories(np.random.default_rng(0), 10, vocab=0)


def test_the_cohort_has_code_histories_and_outcomes(tmp_path):
    generate_cohort(tmp_path / "c", patients=6, seed=3, rows=32, slices=2, nodule_fraction=0.0)
    dx = pa_csv.read_csv(tmp_path / "c/emr/diagnoses.csv").to_pylist()
    synthetic = [r for r in dx if r["description"].startswith("Synthetic history code")]
    assert len({r["mrn"] for r in synthetic}) == 6 and len(synthetic) >= 6
    visits = {(e["mrn"], e["encounter_id"]) for e in pq.read_table(tmp_path / "c/emr/encounters.parquet").to_pylist()}
    assert all((r["mrn"], r["encounter_id"]) in visits for r in synthetic)  # on the patient's own encounters
