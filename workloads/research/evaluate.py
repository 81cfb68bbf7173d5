"""Held-out evaluation: :func:`medray.models.evaluate.roc_auc` (one implementation, shared with the INT8
accuracy gate of serving's inference backends)."""

from medray.models.evaluate import roc_auc

__all__ = ["roc_auc"]
