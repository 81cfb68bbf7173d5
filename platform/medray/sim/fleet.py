"""The simulated fleet: machines from a cluster config at real scale (or as the local cluster starts them).

Nodes are the types of a ``cluster.yaml`` (:func:`medray.cluster.node_types.load_node_types`), sized
as a real node of the type (:func:`medray.cluster.local.full_node_spec`) or, for the local cluster,
as ``medray up --local`` scales them (:func:`medray.cluster.local.local_node_specs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medray.cluster.guard import GuardState
from medray.cluster.local import full_node_spec, local_node_specs
from medray.cluster.node_types import NodeType, load_node_types
from medray.sim.trace import SimConfig

__all__ = ["EPS", "SimNode", "NodeState", "fleet_nodes"]

EPS = 1e-9  # resources are floats (half a GPU): compare with this slack


@dataclass(frozen=True)
class SimNode:
    """One machine of the simulated fleet: its type and size (a :class:`~medray.cluster.local.LocalNodeSpec`'s)."""

    node_id: str
    node_type: NodeType
    cpus: float
    gpus: float


def fleet_nodes(config: SimConfig) -> list[SimNode]:
    """The fleet's machines: ``max_workers`` nodes of each type (the head once), or with ``local_cluster``
    one node per type scaled as ``medray up --local`` starts them (:func:`medray.cluster.local.local_node_specs`)."""
    types = load_node_types(config.fleet)
    if config.local_cluster:
        specs = local_node_specs(types, simulate_gpus=True)
    else:
        specs = [full_node_spec(t) for t in types for _ in range(1 if t.is_head else t.max_workers)]
    return [SimNode(f"{s.node_type.name}-{i:03d}", s.node_type, s.num_cpus, s.num_gpus) for i, s in enumerate(specs)]


class NodeState:
    """A node as the simulation changes it: free capacity, drained, lost, slowed; what runs there."""

    __slots__ = ("i", "spec", "kind", "free_cpus", "free_gpus", "lendable", "drained", "dead", "slow",
                 "guard", "replicas", "runs", "prep")

    def __init__(self, i: int, spec: SimNode, kind: int, lendable: bool) -> None:
        self.i, self.spec, self.kind, self.lendable = i, spec, kind, lendable
        self.free_cpus, self.free_gpus = spec.cpus, spec.gpus
        self.drained = self.dead = False
        self.slow = 1.0
        self.guard = GuardState()
        self.replicas: set[Any] = set()
        self.runs: set[str] = set()
        self.prep = 0

    def usable(self) -> bool:
        return not (self.dead or self.drained)

    def fits(self, cpus: float, gpus: float) -> bool:
        return self.free_cpus >= cpus - EPS and self.free_gpus >= gpus - EPS and not (self.dead or self.drained)
