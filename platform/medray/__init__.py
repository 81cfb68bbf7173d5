"""medray: elastic compute for hospital AI on an asymmetric Ray cluster.

Layers, each a subpackage of one concept (docs/architecture.md draws them):

* :mod:`medray.cluster` — node types from cluster.yaml, the local cluster, autoscaling, KubeRay,
  status, NVML readings and the per-node GPU guard;
* :mod:`medray.scheduling` — global placement (pure), cluster load and drained nodes, Ray options;
* :mod:`medray.broker` — priorities and preemption: policy, actor, client calls, the training side;
* :mod:`medray.dicom`, :mod:`medray.imaging`, :mod:`medray.privacy` — DICOM in, image arithmetic,
  de-identification;
* :mod:`medray.security` (tokens, audit), :mod:`medray.data` (shards, synthetic cohort),
  :mod:`medray.models` (networks, registry, precision);
* :mod:`medray.cli` (the ``medray`` command) and :mod:`medray.demo` (``medray demo``);
* :mod:`medray.errors`, :mod:`medray.logs`, :mod:`medray.metrics` at the top.

The names below are imported on first use (as Flower's ``flwr/__init__.py`` does), so
``import medray`` imports neither Ray nor torch nor pydicom.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MedrayError": "medray.errors",
    "NodeType": "medray.cluster.node_types",
    "load_node_types": "medray.cluster.node_types",
    "WorkloadProfile": "medray.scheduling.placement",
    "Placement": "medray.scheduling.placement",
    "plan": "medray.scheduling.placement",
    "place": "medray.scheduling.options",
    "ray_options": "medray.scheduling.options",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from medray.cluster.node_types import NodeType, load_node_types
    from medray.errors import MedrayError
    from medray.scheduling.options import place, ray_options
    from medray.scheduling.placement import Placement, WorkloadProfile, plan


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
