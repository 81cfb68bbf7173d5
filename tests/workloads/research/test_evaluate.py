"""workloads.research.evaluate: ROC AUC equals the pairwise definition, ties counting one half."""

import itertools
import math

import numpy as np
import pytest

from workloads.research.evaluate import roc_auc


def _pairwise(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(_pairwise(scores, labels))


def test_extremes_and_undefined():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="length"):
        roc_auc([0.1], [0, 1])
