"""Global placement as pure functions: a workload profile and node types in, a ranked placement out.

No Ray here (:mod:`medray.scheduling.load` reads the cluster, :mod:`medray.scheduling.options` joins both).

Every workload asks here instead of naming nodes. The policy, in order:

0. **CPU-only work goes to CPU-only node types first**, whatever its role order: GPU nodes take
   CPU-only work only once the CPU nodes it may use are full (Ray's fallback does that part), so
   CPU tasks never crowd out the GPUs' host CPUs while CPU nodes are free.
1. **Site is a wall, both ways.** A profile pinned to a site only ever gets node types of that site
   (any role there, its own roles first). An unpinned profile only gets the roles it lists, at the
   home site (the head's): work that does not name a partner site never runs there, so the main
   hospital's data never moves to a partner's nodes (45 CFR 164.502(b), minimum necessary; the
   design's "PHI never leaves its site").
2. **Roles are preferences.** Listed roles are tried in order; later roles are fallbacks.
3. **Storage is a preference** (e.g. ``nvme`` for I/O-heavy preprocessing).
4. **Real-time work prefers always-on node types** (``min_workers >= 1``): it cannot wait minutes
   for a node to boot.
5. **Cheapest first.** Among equals, the lowest price for the share of the node the work takes
   (``price_per_hour × max(cpu share, gpu share)``).

With a :class:`LoadSnapshot` (``plan(profile, load=snapshot)``) step 5 becomes **load-aware**:
node types that can take the work right now come before full or absent ones, cool GPUs before hot
ones, and price is weighed by how busy the type is (``price × (1 + busy share)``), so idle, cheap,
cool nodes win.

**Drained nodes are excluded.** GPU work never lands on a node whose GPU guard has drained it
(:mod:`medray.cluster.guard`): every selector of a GPU profile gets ``ray.io/node-id: !in(…)``. The drained
set is an argument here; :func:`medray.scheduling.options.place` fills it in from the running cluster.

The result is a label selector naming the best node type plus a ``fallback_strategy`` naming the
rest in order (:meth:`Placement.ray_options`, for tasks, actors and Serve replicas): Ray places the
work on the first type with free capacity, so cheap nodes fill first and busy or absent types spill
over to the next feasible one. Placement groups (Ray Train worker groups, Tune trials) take no
fallback: :meth:`Placement.group_selectors` fills their units onto the types in the same order by
the room a :class:`LoadSnapshot` shows.
"""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medray.cluster.node_types import NODE_TYPE_LABEL, ROLES, SITE_LABEL, NodeType, load_node_types
from medray.errors import PlacementError

__all__ = [
    "LATENCY_CLASSES",
    "NODE_ID_LABEL",
    "WorkloadProfile",
    "NodeLoad",
    "LoadSnapshot",
    "Placement",
    "rank",
    "plan",
]

LATENCY_CLASSES = ("realtime", "interactive", "batch")
NODE_ID_LABEL = "ray.io/node-id"  # set by Ray itself on every node


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
class NodeLoad:
    """One live node at one moment: free and total CPU/GPU, its hottest GPU, whether it is drained."""

    node_id: str
    node_type: str
    free_cpus: float
    free_gpus: float
    total_cpus: float
    total_gpus: float
    gpu_temperature_c: float | None = None
    drained: bool = False


@dataclass(frozen=True)
class LoadSnapshot:
    """The cluster's load as placement sees it (:func:`cluster_load` takes one).

    GPUs at or above ``warm_temperature_c`` count as hot.
    """

    nodes: tuple[NodeLoad, ...] = ()
    warm_temperature_c: float = 80.0

    @property
    def drained_nodes(self) -> frozenset[str]:
        return frozenset(n.node_id for n in self.nodes if n.drained)


@dataclass(frozen=True)
class Placement:
    """The node types a profile may use, best first, and the Ray options that say so.

    ``excluded_nodes``: drained node ids that every selector rules out.
    """

    profile: WorkloadProfile
    candidates: tuple[NodeType, ...]
    excluded_nodes: frozenset[str] = field(default_factory=frozenset)

    @property
    def node_type(self) -> NodeType:
        """The preferred (cheapest feasible) node type."""
        return self.candidates[0]

    def _selector(self, node_type: NodeType) -> dict[str, str]:
        selector = {NODE_TYPE_LABEL: node_type.name}
        if self.profile.site is not None:
            selector[SITE_LABEL] = self.profile.site
        if self.excluded_nodes:
            selector[NODE_ID_LABEL] = f"!in({','.join(sorted(self.excluded_nodes))})"
        return selector

    @property
    def label_selector(self) -> dict[str, str]:
        """Ray ``label_selector`` for the preferred node type."""
        return self._selector(self.node_type)

    @property
    def fallback_strategy(self) -> list[dict[str, Any]]:
        """Ray ``fallback_strategy``: the other feasible node types, in order."""
        return [{"label_selector": self._selector(t)} for t in self.candidates[1:]]

    def group_types(self, count: int, load: LoadSnapshot) -> list[NodeType]:
        """The node type of each of ``count`` units placed together, cheapest first by free room now.

        For work that Ray places as one gang without a ``fallback_strategy`` (a Ray Train worker
        group or a Tune trial is a placement group, whose bundles take one label selector each):
        units fill the candidates in order, as many on a type as its live, undrained nodes have
        room for in ``load``; units that fit nowhere now wait for the best type.
        """
        if count < 0:
            raise PlacementError(f"count must be >= 0; got {count}")
        p, out = self.profile, []
        for t in self.candidates:
            for n in load.nodes:
                if n.node_type != t.name or n.drained or n.node_id in self.excluded_nodes:
                    continue
                room = [n.free_cpus / p.num_cpus] if p.num_cpus else []
                room += [n.free_gpus / p.num_gpus] if p.num_gpus else []
                out += [t] * min(int(min(room, default=count) + 1e-9), count - len(out))
        return out + [self.node_type] * (count - len(out))

    def group_selectors(self, count: int, load: LoadSnapshot) -> list[dict[str, str]]:
        """One label selector per unit of :meth:`group_types` (Ray Train's per-worker ``label_selector``)."""
        return [self._selector(t) for t in self.group_types(count, load)]

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


def _feasible(profile: WorkloadProfile, types: Sequence[NodeType]) -> list[NodeType]:
    if profile.site is not None:
        # Pinned: any role at that site, the head's coordinator role only if asked for.
        allowed = [
            t for t in types
            if t.site == profile.site and (t.role != "coordinator" or t.role in profile.roles)
        ]
    else:
        home = {t.site for t in types if t.is_head}
        allowed = [t for t in types if t.role in profile.roles and (not home or t.site in home)]
    feasible = [t for t in allowed if _fits(profile, t)]
    if not feasible:
        home = sorted({t.site for t in types if t.is_head})
        where = f" at site {profile.site!r}" if profile.site else (f" at the home site {home[0]!r}" if home else "")
        hint = " or pin it to a site (WorkloadProfile(site=...))" if where.startswith(" at the home") else ""
        raise PlacementError(
            f"no node type{where} with roles {profile.roles} fits {profile.num_cpus} CPU, "
            f"{profile.num_gpus} GPU, {profile.gpu_memory_gb} GB GPU memory: "
            f"add such a node type to cluster.yaml or ask for less{hint}"
        )
    return feasible


def _load_key(profile: WorkloadProfile, t: NodeType, load: LoadSnapshot) -> tuple[Any, ...]:
    live = [n for n in load.nodes if n.node_type == t.name and not n.drained]
    fits_now = any(n.free_cpus >= profile.num_cpus and n.free_gpus >= profile.num_gpus for n in live)
    temps = [n.gpu_temperature_c for n in live if n.gpu_temperature_c is not None]
    hot = bool(profile.num_gpus and temps and min(temps) >= load.warm_temperature_c)
    if profile.num_gpus:
        total, free = sum(n.total_gpus for n in live), sum(n.free_gpus for n in live)
    else:
        total, free = sum(n.total_cpus for n in live), sum(n.free_cpus for n in live)
    busy = 1.0 - free / total if total else 1.0
    return (not fits_now, hot, _share_price(profile, t) * (1.0 + busy))


def rank(
    profile: WorkloadProfile, candidates: Sequence[NodeType], load: LoadSnapshot | None = None
) -> list[NodeType]:
    """Order feasible node types best first, by the policy of the module docstring (pure)."""

    def key(t: NodeType) -> tuple[Any, ...]:
        cpu_work_on_gpu_type = not profile.num_gpus and t.gpus > 0
        role_rank = profile.roles.index(t.role) if t.role in profile.roles else len(profile.roles)
        storage_miss = profile.storage is not None and t.storage != profile.storage
        cold = profile.latency == "realtime" and not (t.min_workers >= 1 or t.is_head)
        price = _load_key(profile, t, load) if load is not None else (_share_price(profile, t),)
        return (cpu_work_on_gpu_type, role_rank, storage_miss, cold, *price, t.name)

    return sorted(candidates, key=key)


def plan(
    profile: WorkloadProfile,
    node_types: Sequence[NodeType] | None = None,
    *,
    load: LoadSnapshot | None = None,
    drained: frozenset[str] | None = None,
) -> Placement:
    """Choose the feasible node types for ``profile``, best first (see the module docstring).

    ``node_types``: cluster.yaml's by default. ``load``: rank by that snapshot's load too.
    ``drained``: node ids to keep GPU work off; by default the load snapshot's drained nodes, else none.
    """
    types = list(node_types) if node_types is not None else load_node_types()
    candidates = tuple(rank(profile, _feasible(profile, types), load))
    excluded: frozenset[str] = frozenset()
    if profile.num_gpus:
        if drained is not None:
            excluded = frozenset(drained)
        elif load is not None:
            excluded = load.drained_nodes
    return Placement(profile=profile, candidates=candidates, excluded_nodes=excluded)
