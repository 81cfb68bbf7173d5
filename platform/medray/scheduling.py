"""Global placement: a workload profile in, Ray scheduling options out.

Every workload asks here instead of naming nodes. The policy, in order:

1. **Site is a wall.** A profile pinned to a site only ever gets node types of that site (any role
   there, its own roles first). An unpinned profile only gets the roles it lists.
2. **Roles are preferences.** Listed roles are tried in order; later roles are fallbacks.
3. **Storage is a preference** (e.g. ``nvme`` for I/O-heavy preprocessing).
4. **Real-time work prefers always-on node types** (``min_workers >= 1``): it cannot wait minutes
   for a node to boot.
5. **Cheapest first.** Among equals, the lowest price for the share of the node the work takes
   (``price_per_hour × max(cpu share, gpu share)``).

The result is a label selector naming the best node type plus a ``fallback_strategy`` naming the
rest in order: Ray places the work on the first type with free capacity, so cheap nodes fill first
and busy or absent types spill over to the next feasible one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medray.errors import PlacementError
from medray.roles import NODE_TYPE_LABEL, ROLES, SITE_LABEL, NodeType, load_node_types

__all__ = ["LATENCY_CLASSES", "WorkloadProfile", "Placement", "place", "ray_options"]

LATENCY_CLASSES = ("realtime", "interactive", "batch")


@dataclass(frozen=True)
class WorkloadProfile:
    """What a unit of work (a task, an actor, a replica, a training worker) needs."""

    roles: tuple[str, ...]
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    gpu_memory_gb: float = 0.0
    latency: str = "batch"
    site: str | None = None
    storage: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.roles, str):
            raise PlacementError(f"roles must be a tuple of roles, not the string {self.roles!r}")
        unknown = [r for r in self.roles if r not in ROLES]
        if not self.roles or unknown:
            raise PlacementError(f"roles must be a non-empty sequence of {ROLES}; got {self.roles}")
        if self.latency not in LATENCY_CLASSES:
            raise PlacementError(f"latency must be one of {LATENCY_CLASSES}; got {self.latency!r}")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.gpu_memory_gb < 0:
            raise PlacementError("num_cpus, num_gpus and gpu_memory_gb must be >= 0")
        if self.gpu_memory_gb and not self.num_gpus:
            raise PlacementError("gpu_memory_gb needs num_gpus > 0 (a fraction is fine)")


@dataclass(frozen=True)
class Placement:
    """The node types a profile may use, best first, and the Ray options that say so."""

    profile: WorkloadProfile
    candidates: tuple[NodeType, ...]

    @property
    def node_type(self) -> NodeType:
        """The preferred (cheapest feasible) node type."""
        return self.candidates[0]

    def _selector(self, node_type: NodeType) -> dict[str, str]:
        selector = {NODE_TYPE_LABEL: node_type.name}
        if self.profile.site is not None:
            selector[SITE_LABEL] = self.profile.site
        return selector

    @property
    def label_selector(self) -> dict[str, str]:
        """Ray ``label_selector`` for the preferred node type."""
        return self._selector(self.node_type)

    @property
    def fallback_strategy(self) -> list[dict[str, Any]]:
        """Ray ``fallback_strategy``: the other feasible node types, in order."""
        return [{"label_selector": self._selector(t)} for t in self.candidates[1:]]

    def ray_options(self) -> dict[str, Any]:
        """Options for ``.options(**…)`` of tasks and actors, and Serve's ``ray_actor_options``."""
        options: dict[str, Any] = {
            "num_cpus": self.profile.num_cpus,
            "num_gpus": self.profile.num_gpus,
            "label_selector": self.label_selector,
        }
        if len(self.candidates) > 1:
            options["fallback_strategy"] = self.fallback_strategy
        return options


def _share_price(profile: WorkloadProfile, t: NodeType) -> float:
    cpu_share = profile.num_cpus / t.cpus if t.cpus else 0.0
    gpu_share = profile.num_gpus / t.gpus if t.gpus else 0.0
    # Work that asks for nothing still occupies a slot: charge it a tiny share so price orders it.
    return t.price_per_hour * max(cpu_share, gpu_share, 1e-3)


def _fits(profile: WorkloadProfile, t: NodeType) -> bool:
    if profile.num_cpus > t.cpus or profile.num_gpus > t.gpus:
        return False
    return not profile.num_gpus or profile.gpu_memory_gb <= t.gpu_memory_gb


def place(profile: WorkloadProfile, node_types: Sequence[NodeType] | None = None) -> Placement:
    """Choose the feasible node types for ``profile``, best first (see the module docstring)."""
    types = list(node_types) if node_types is not None else load_node_types()
    if profile.site is not None:
        # Pinned: any role at that site, the head's coordinator role only if asked for.
        allowed = [
            t for t in types
            if t.site == profile.site and (t.role != "coordinator" or t.role in profile.roles)
        ]
    else:
        allowed = [t for t in types if t.role in profile.roles]
    feasible = [t for t in allowed if _fits(profile, t)]
    if not feasible:
        where = f" at site {profile.site!r}" if profile.site else ""
        raise PlacementError(
            f"no node type{where} with roles {profile.roles} fits {profile.num_cpus} CPU, "
            f"{profile.num_gpus} GPU, {profile.gpu_memory_gb} GB GPU memory: "
            "add such a node type to cluster.yaml or ask for less"
        )

    def rank(t: NodeType) -> tuple[Any, ...]:
        role_rank = profile.roles.index(t.role) if t.role in profile.roles else len(profile.roles)
        storage_miss = profile.storage is not None and t.storage != profile.storage
        cold = profile.latency == "realtime" and not (t.min_workers >= 1 or t.is_head)
        return (role_rank, storage_miss, cold, _share_price(profile, t), t.name)

    return Placement(profile=profile, candidates=tuple(sorted(feasible, key=rank)))


def ray_options(profile: WorkloadProfile, node_types: Sequence[NodeType] | None = None) -> dict[str, Any]:
    """Shortcut for ``place(profile, node_types).ray_options()``."""
    return place(profile, node_types).ray_options()
