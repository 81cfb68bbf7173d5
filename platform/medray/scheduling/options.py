"""Ray options for a workload: the pure placement with the running cluster's drained nodes filled in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medray.cluster.node_types import NodeType
from medray.scheduling.load import drained_nodes
from medray.scheduling.placement import LoadSnapshot, Placement, WorkloadProfile, plan

__all__ = ["place", "ray_options"]


def place(
    profile: WorkloadProfile,
    node_types: Sequence[NodeType] | None = None,
    *,
    load: LoadSnapshot | None = None,
    drained: frozenset[str] | None = None,
) -> Placement:
    """:func:`~medray.scheduling.placement.plan`, keeping GPU work off the nodes drained right now.

    ``drained``: node ids to exclude; by default the load snapshot's drained nodes, else those Ray is
    draining (:func:`~medray.scheduling.load.drained_nodes`; none without Ray). Ray's scheduler keeps
    all work off a draining node by itself; the exclusion also keeps the selectors honest about it.
    """
    if drained is None and load is None and profile.num_gpus:
        drained = drained_nodes()
    return plan(profile, node_types, load=load, drained=drained)


def ray_options(
    profile: WorkloadProfile,
    node_types: Sequence[NodeType] | None = None,
    *,
    load: LoadSnapshot | None = None,
    drained: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Shortcut for ``place(profile, node_types, load=load, drained=drained).ray_options()``."""
    return place(profile, node_types, load=load, drained=drained).ray_options()
