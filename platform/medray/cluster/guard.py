"""The local GPU guard: one actor per GPU node that watches its GPUs and drains the node when they are unwell.

Every ``interval_s`` a guard reads NVML (:class:`medray.cluster.nvml.NvmlReader`): temperature, power draw
against the enforced limit, memory used, utilisation, uncorrected ECC errors, critical XID events and
clock throttle reasons. It exports them as Ray metrics (``medray_gpu_*{node_type,node,gpu}``, served
in Prometheus format by every node's metrics agent) and judges them against :class:`GuardThresholds`.
After ``drain_after`` consecutive readings past a threshold (so one spike does not drain) the guard
**drains the node through Ray** (:func:`medray.cluster.ray_internals.drain_node`, the autoscaler's
own preemption drain), which makes the drain live for every kind of work at once:

* Ray's schedulers stop placing anything there within a second: tasks, actors, placement-group
  bundles, so Ray Data tasks, Serve replicas the autoscaler adds later, Tune trials and Ray Train
  worker groups that restart (Ray's ``test_draining.py`` checks tasks, actors and groups);
* Serve moves the node's replicas: it starts each replacement elsewhere and stops the old replica
  only once the new one runs (Serve's migration of replicas on draining nodes);
* work already running there finishes; Ray stops an idle drained node (a Serve proxy can keep it
  up), and the autoscaler or the operator removes it. Ray has no undrain, so a drained node comes
  back as a new node: the autoscaler replaces it, or the node's ``ray start`` runs again after the
  GPU is looked at. A drained node therefore stays drained (no recovery
  thresholds): a GPU that cooled down once is not trusted again until someone restarts it.

The guard also tells the broker (:mod:`medray.broker`), which records the drain as an event and
keeps the temperatures that load-aware placement reads. Ray schedules GPUs per node, not per device,
so one unwell GPU drains its whole node. On a node without an NVIDIA driver the guard reads "no GPU"
and never drains. Readings can be injected (:meth:`GpuGuard.inject`) so tests drive a hot GPU on a
machine without one. The thresholds and the drain decision are plain functions: they need neither
Ray nor a GPU. Guards start with the cluster: :func:`start_guards` starts a keeper on the head that
gives every live GPU node a guard, nodes the autoscaler adds later included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medray import metrics
from medray.cluster import ray_internals
from medray.cluster.node_types import NODE_TYPE_LABEL
from medray.cluster.nvml import THROTTLE_REASONS, GpuReading, NvmlReader
from medray.cluster.periodic import keep_running
from medray.errors import ConfigError
from medray.logs import get_logger
from medray.scheduling.placement import NODE_ID_LABEL

__all__ = [
    "GuardThresholds",
    "GuardState",
    "violations",
    "next_state",
    "GpuGuard",
    "GuardKeeper",
    "KEEPER_NAME",
    "guard_name",
    "start_guards",
    "stop_guards",
    "guard_states",
]

_log = get_logger("medray.cluster.guard")


@dataclass(frozen=True)
class GuardThresholds:
    """When a GPU node is drained: ``drain_after`` consecutive readings past any line.

    ``max_power_fraction`` is off by default: a busy GPU legitimately sits at its power cap (that
    shows as the benign ``sw_power_cap`` throttle reason).
    """

    max_temperature_c: float = 85.0
    max_memory_fraction: float = 0.95
    max_power_fraction: float | None = None
    max_ecc_uncorrected: int = 0
    max_xid_errors: int = 0
    drain_throttle_reasons: tuple[str, ...] = ("hw_slowdown", "hw_thermal_slowdown",
                                               "hw_power_brake_slowdown")
    drain_after: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.drain_throttle_reasons) - set(THROTTLE_REASONS)
        if unknown:
            raise ConfigError(f"unknown throttle reasons {sorted(unknown)}; "
                              f"known: {sorted(THROTTLE_REASONS)}")
        if self.drain_after < 1:
            raise ConfigError("drain_after must be at least 1 reading")
        if not 0 < self.max_memory_fraction <= 1 or (self.max_power_fraction is not None
                                                     and self.max_power_fraction <= 0):
            raise ConfigError("max_memory_fraction must be in (0, 1] and max_power_fraction > 0")


def violations(readings: Sequence[GpuReading], thresholds: GuardThresholds) -> tuple[str, ...]:
    """Reason codes (``gpu0:temperature``…) for readings past the thresholds."""
    t = thresholds
    reasons = []
    for r in readings:
        gpu = f"gpu{r.index}"
        if r.temperature_c > t.max_temperature_c:
            reasons.append(f"{gpu}:temperature")
        if r.memory_fraction > t.max_memory_fraction:
            reasons.append(f"{gpu}:memory")
        if t.max_power_fraction is not None and r.power_fraction > t.max_power_fraction:
            reasons.append(f"{gpu}:power")
        if r.ecc_uncorrected > t.max_ecc_uncorrected:
            reasons.append(f"{gpu}:ecc")
        if r.xid_errors > t.max_xid_errors:
            reasons.append(f"{gpu}:xid")
        reasons.extend(f"{gpu}:throttle-{reason}" for reason in r.throttle_reasons
                       if reason in t.drain_throttle_reasons)
    return tuple(reasons)


@dataclass(frozen=True)
class GuardState:
    """A node's drain state: drained or not, why, and how many bad readings in a row so far."""

    drained: bool = False
    reasons: tuple[str, ...] = ()
    streak: int = 0


def next_state(state: GuardState, readings: Sequence[GpuReading], thresholds: GuardThresholds) -> GuardState:
    """The drain state after one more reading (pure). Drained is final: Ray cannot undrain a node."""
    if state.drained:
        return state
    reasons = violations(readings, thresholds)
    if not reasons:
        return GuardState()
    streak = state.streak + 1
    return GuardState(drained=streak >= thresholds.drain_after, reasons=reasons,
                      streak=0 if streak >= thresholds.drain_after else streak)


_TAGS = ("node_type", "node", "gpu")
_GAUGES = {
    "temperature_c": "GPU temperature in degrees Celsius",
    "power_w": "GPU power draw in watts",
    "power_limit_w": "GPU enforced power limit in watts",
    "memory_used_mib": "GPU memory in use, MiB",
    "memory_total_mib": "GPU memory in total, MiB",
    "utilization_pct": "GPU utilisation in percent",
    "ecc_uncorrected": "volatile uncorrected ECC errors",
    "xid_errors": "critical XID events seen by the guard",
}


def _export(node_type: str, node: str, readings: Sequence[GpuReading], state: GuardState) -> None:
    for r in readings:
        tags = {"node_type": node_type, "node": node, "gpu": str(r.index)}
        for field, description in _GAUGES.items():
            metrics.gauge(f"gpu_{field}", description, _TAGS).set(float(getattr(r, field)), tags=tags)
        slow = any(t != "gpu_idle" for t in r.throttle_reasons)
        metrics.gauge("gpu_throttled", "1 while clocks are throttled for a reason other than idle",
                      _TAGS).set(1.0 if slow else 0.0, tags=tags)
    metrics.gauge("guard_drained", "1 while the GPU guard keeps new GPU work off the node",
                  ("node_type", "node")).set(1.0 if state.drained else 0.0,
                                             tags={"node_type": node_type, "node": node})


class GpuGuard:
    """The guard of one node, run as a Ray actor pinned to it (start with :func:`start_guards`).

    ``drain_deadline_s``: the deadline passed with Ray's drain (None: none; the node leaves once idle).
    """

    def __init__(self, node_id: str, node_type: str, thresholds: GuardThresholds, interval_s: float,
                 drain_deadline_s: float | None = None) -> None:
        self._node_id = node_id
        self._node_type = node_type
        self._thresholds = thresholds
        self._interval_s = interval_s
        self._drain_deadline_s = drain_deadline_s
        self._reader = NvmlReader()
        self._injected: list[GpuReading] | None = None
        self._state = GuardState()
        self._readings: list[GpuReading] = []
        self._loop: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start the reading loop (idempotent); a bad reading never stops it."""
        self._loop = keep_running(self._loop, self.tick, self._interval_s, log=_log,
                                  what=f"guard reading on {self._node_type}")

    async def inject(self, readings: list[GpuReading] | None) -> None:
        """Use these readings instead of NVML from now on (None: back to NVML)."""
        self._injected = list(readings) if readings is not None else None

    async def tick(self) -> dict[str, Any]:
        """Take one reading now, update the drain state, export and report it; returns :meth:`status`."""
        readings = self._injected if self._injected is not None else self._reader.read()
        before = self._state
        self._state = next_state(before, readings, self._thresholds)
        self._readings = list(readings)
        node = self._node_id[:8]
        _export(self._node_type, node, readings, self._state)
        if self._state.drained and not before.drained:
            accepted = ray_internals.drain_node(
                self._node_id, f"medray GPU guard: {', '.join(self._state.reasons)}",
                deadline_s=self._drain_deadline_s)
            _log.warning("GPU node drained" if accepted else "GPU node drain refused by Ray",
                         extra={"node_type": self._node_type, "node": node, "reasons": list(self._state.reasons)})
        self._report()
        return await self.status()

    def _report(self) -> None:
        from medray.broker.client import get_broker

        broker = get_broker()
        if broker is None:
            return
        temps = [r.temperature_c for r in self._readings]
        broker.report_node.remote(
            self._node_id, self._node_type, drained=self._state.drained,
            reasons=list(self._state.reasons), max_temperature_c=max(temps) if temps else None,
        )

    async def status(self) -> dict[str, Any]:
        """The node, its drain state and its latest readings."""
        return {
            "node_id": self._node_id,
            "node_type": self._node_type,
            "drained": self._state.drained,
            "reasons": list(self._state.reasons),
            "gpus": [r.to_dict() for r in self._readings],
        }


KEEPER_NAME = "medray-guards"


def guard_name(node_id: str) -> str:
    """The name of the guard actor of a node (namespace ``medray``)."""
    return f"medray-guard-{node_id}"


def _gpu_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n.get("Resources", {}).get("GPU", 0) > 0]


def _start_guard(node: dict[str, Any], thresholds: GuardThresholds, interval_s: float,
                 drain_deadline_s: float | None) -> Any:
    import ray

    from medray.broker.client import NAMESPACE

    node_id = node["NodeID"]
    node_type = (node.get("Labels") or {}).get(NODE_TYPE_LABEL, "unknown")
    # No restarts: the guard is pinned to its node and dies with it; the keeper starts a guard on
    # every live GPU node that has none, a crashed one's node included.
    guard = ray.remote(GpuGuard).options(
        num_cpus=0, max_restarts=0, name=guard_name(node_id), namespace=NAMESPACE,
        lifetime="detached", get_if_exists=True, label_selector={NODE_ID_LABEL: node_id},
    ).remote(node_id, node_type, thresholds, interval_s, drain_deadline_s)
    guard.run.remote()
    return guard


class GuardKeeper:
    """The head's actor that gives every live GPU node a guard, nodes added later included."""

    def __init__(self, thresholds: GuardThresholds, interval_s: float, drain_deadline_s: float | None,
                 every_s: float) -> None:
        self._args = (thresholds, interval_s, drain_deadline_s)
        self._every_s = every_s
        self._guards: dict[str, Any] = {}
        self._loop: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start the keeping loop (idempotent); a failed lookup never stops it."""
        self._loop = keep_running(self._loop, self.keep, self._every_s, log=_log, what="guard keeper step")

    async def keep(self) -> list[str]:
        """Start a guard on every live GPU node without one; returns the guarded node ids."""
        import ray

        from medray.broker.client import NAMESPACE

        nodes = _gpu_nodes()
        alive = {n["NodeID"] for n in nodes}
        self._guards = {k: v for k, v in self._guards.items() if k in alive}
        for n in nodes:
            if n["NodeID"] in self._guards:
                continue
            try:
                self._guards[n["NodeID"]] = ray.get_actor(guard_name(n["NodeID"]), namespace=NAMESPACE)
            except ValueError:
                self._guards[n["NodeID"]] = _start_guard(n, *self._args)
        return sorted(self._guards)


def start_guards(
    *,
    thresholds: GuardThresholds | None = None,
    interval_s: float = 5.0,
    drain_deadline_s: float | None = None,
    keep_every_s: float = 5.0,
) -> dict[str, Any]:
    """Start the guard keeper on the head (or find the running one) and return node id -> guard.

    The keeper (detached, named ``medray-guards``, no CPU) starts a guard on every live GPU node at
    once and then every ``keep_every_s``; each guard is detached, named :func:`guard_name`, takes no
    CPU and is pinned to its node by its ``ray.io/node-id`` label. A running keeper keeps its settings.
    """
    import ray

    from medray.broker.client import NAMESPACE
    from medray.scheduling.options import place
    from medray.scheduling.placement import WorkloadProfile

    opts = place(WorkloadProfile(roles=("coordinator",), num_cpus=0)).ray_options()
    keeper = ray.remote(GuardKeeper).options(
        name=KEEPER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        **opts).remote(thresholds or GuardThresholds(), interval_s, drain_deadline_s, keep_every_s)
    ray.get(keeper.keep.remote())
    keeper.run.remote()
    return _running_guards()


def _running_guards() -> dict[str, Any]:
    import ray

    from medray.broker.client import NAMESPACE

    guards = {}
    for n in ray.nodes():
        if not n["Alive"]:
            continue
        try:
            guards[n["NodeID"]] = ray.get_actor(guard_name(n["NodeID"]), namespace=NAMESPACE)
        except ValueError:
            continue
    return guards


def stop_guards() -> None:
    """Stop the keeper and every guard (drains already made stay: Ray cannot undrain)."""
    import ray

    from medray.broker.client import NAMESPACE

    try:
        ray.kill(ray.get_actor(KEEPER_NAME, namespace=NAMESPACE))
    except ValueError:
        pass
    for guard in _running_guards().values():
        ray.kill(guard)


def guard_states(timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """:meth:`GpuGuard.status` of every running guard."""
    import ray

    refs = [g.status.remote() for g in _running_guards().values()]
    return ray.get(refs, timeout=timeout_s)
