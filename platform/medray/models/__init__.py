"""Models shared by training and serving: each network defined once (:mod:`~medray.models.nodule`), the
model registry (:mod:`~medray.models.registry`) and mixed precision (:mod:`~medray.models.precision`).

``build_model``, ``NoduleNet``, ``NoduleNetConfig`` and ``DEFAULT_INPUT_SPEC`` are imported from here
lazily, so importing :mod:`medray.models.registry` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_INPUT_SPEC", "NoduleNet", "NoduleNetConfig", "build_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("medray.models.nodule"), name)
    raise AttributeError(f"module 'medray.models' has no attribute {name!r}")
