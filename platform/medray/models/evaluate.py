"""Held-out evaluation of a model's scores: ROC AUC, with ties handled as the Mann-Whitney U statistic.

Training (`workloads.research`) reports it; the INT8 accuracy gate of :mod:`medray.models.backends` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["roc_auc"]


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present.

    Equals the probability that a random positive scores higher than a random negative, ties
    counting one half (average ranks), as scikit-learn's ``roc_auc_score``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over runs of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
