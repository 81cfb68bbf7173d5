"""The local GPU guard: one actor per GPU node that watches its GPUs and drains the node when they are unwell.

Every ``interval_s`` a guard reads NVML (:class:`medray.cluster.nvml.NvmlReader`): temperature, power draw
against the enforced limit, memory used, utilisation, uncorrected ECC errors, critical XID events and
clock throttle reasons. It exports them as Ray metrics (``medray_gpu_*{node_type,node,gpu}``, served
in Prometheus format by every node's metrics agent) and judges them against :class:`GuardThresholds`:

* a node is **drained** after ``drain_after`` consecutive readings past a threshold, and
  **recovers** after ``recover_after`` consecutive readings back under the lower *recover*
  thresholds (hysteresis in value and in time, so a GPU hovering at its limit does not flap);
* draining tells the broker (:mod:`medray.broker`), and :mod:`medray.scheduling` then excludes the
  node from every GPU placement (``ray.io/node-id: !in(…)``). Work already running there stays:
  Ray cannot preempt, and killing a clinical replica for a warm GPU would be worse than the heat.

Ray schedules GPUs per node, not per device, so one unwell GPU drains its whole node for new GPU work.
On a node without an NVIDIA driver the guard reads "no GPU" and never drains. Readings can be
injected (:meth:`GpuGuard.inject`) so tests drive a hot GPU on a machine without one. The
thresholds and the drain state machine are plain functions: they need neither Ray nor a GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from medray import metrics
from medray.cluster.node_types import NODE_TYPE_LABEL
from medray.cluster.nvml import THROTTLE_REASONS, GpuReading, NvmlReader
from medray.errors import ConfigError
from medray.logs import get_logger
from medray.scheduling.placement import NODE_ID_LABEL

__all__ = [
    "GuardThresholds",
    "GuardState",
    "violations",
    "next_state",
    "GpuGuard",
    "guard_name",
    "start_guards",
    "stop_guards",
    "guard_states",
]

_log = get_logger("medray.cluster.guard")


@dataclass(frozen=True)
class GuardThresholds:
    """When a GPU node is drained, and when it recovers (each ``recover_*`` below its ``max_*``).

    ``max_power_fraction`` is off by default: a busy GPU legitimately sits at its power cap (that
    shows as the benign ``sw_power_cap`` throttle reason). ECC and XID counts only fall when the GPU
    is reset, so a node drained for them stays drained until then.
    """

    max_temperature_c: float = 85.0
    recover_temperature_c: float = 78.0
    max_memory_fraction: float = 0.95
    recover_memory_fraction: float = 0.85
    max_power_fraction: float | None = None
    recover_power_fraction: float = 0.9
    max_ecc_uncorrected: int = 0
    max_xid_errors: int = 0
    drain_throttle_reasons: tuple[str, ...] = ("hw_slowdown", "hw_thermal_slowdown",
                                               "hw_power_brake_slowdown")
    drain_after: int = 2
    recover_after: int = 3

    def __post_init__(self) -> None:
        pairs = [("temperature_c", self.max_temperature_c, self.recover_temperature_c),
                 ("memory_fraction", self.max_memory_fraction, self.recover_memory_fraction)]
        if self.max_power_fraction is not None:
            pairs.append(("power_fraction", self.max_power_fraction, self.recover_power_fraction))
        for name, high, low in pairs:
            if low >= high:
                raise ConfigError(f"recover_{name} ({low}) must be below max_{name} ({high}) "
                                  "so that a drained GPU does not flap")
        unknown = set(self.drain_throttle_reasons) - set(THROTTLE_REASONS)
        if unknown:
            raise ConfigError(f"unknown throttle reasons {sorted(unknown)}; "
                              f"known: {sorted(THROTTLE_REASONS)}")
        if self.drain_after < 1 or self.recover_after < 1:
            raise ConfigError("drain_after and recover_after must be at least 1 reading")


def violations(
    readings: Sequence[GpuReading], thresholds: GuardThresholds, *, drained: bool = False
) -> tuple[str, ...]:
    """Reason codes (``gpu0:temperature``…) for readings past the thresholds.

    A drained node is judged against the lower ``recover_*`` thresholds: it stays unwell until it
    is clearly better, not merely just under the line.
    """
    t = thresholds
    max_temp = t.recover_temperature_c if drained else t.max_temperature_c
    max_mem = t.recover_memory_fraction if drained else t.max_memory_fraction
    max_power = None
    if t.max_power_fraction is not None:
        max_power = t.recover_power_fraction if drained else t.max_power_fraction
    reasons = []
    for r in readings:
        gpu = f"gpu{r.index}"
        if r.temperature_c > max_temp:
            reasons.append(f"{gpu}:temperature")
        if r.memory_fraction > max_mem:
            reasons.append(f"{gpu}:memory")
        if max_power is not None and r.power_fraction > max_power:
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
    """A node's drain state: drained or not, why, and how many readings in a row point the other way."""

    drained: bool = False
    reasons: tuple[str, ...] = ()
    streak: int = 0


def next_state(state: GuardState, readings: Sequence[GpuReading], thresholds: GuardThresholds) -> GuardState:
    """The drain state after one more reading (pure; hysteresis in value and in time)."""
    reasons = violations(readings, thresholds, drained=state.drained)
    if not state.drained:
        if not reasons:
            return GuardState()
        streak = state.streak + 1
        if streak >= thresholds.drain_after:
            return GuardState(drained=True, reasons=reasons, streak=0)
        return GuardState(drained=False, reasons=reasons, streak=streak)
    if reasons:
        return GuardState(drained=True, reasons=reasons, streak=0)
    streak = state.streak + 1
    if streak >= thresholds.recover_after:
        return GuardState()
    return replace(state, streak=streak)


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
    """The guard of one node, run as a Ray actor pinned to it (start with :func:`start_guards`)."""

    def __init__(self, node_id: str, node_type: str, thresholds: GuardThresholds, interval_s: float) -> None:
        self._node_id = node_id
        self._node_type = node_type
        self._thresholds = thresholds
        self._interval_s = interval_s
        self._reader = NvmlReader()
        self._injected: list[GpuReading] | None = None
        self._state = GuardState()
        self._readings: list[GpuReading] = []
        self._loop: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start the reading loop (idempotent)."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad reading must never stop the guard
                _log.exception("guard reading failed", extra={"node_type": self._node_type})
            await asyncio.sleep(self._interval_s)

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
        if self._state.drained != before.drained:
            _log.warning("GPU node drained" if self._state.drained else "GPU node recovered",
                         extra={"node_type": self._node_type, "node": node,
                                "reasons": list(self._state.reasons or before.reasons)})
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


def guard_name(node_id: str) -> str:
    """The name of the guard actor of a node (namespace ``medray``)."""
    return f"medray-guard-{node_id}"


def _gpu_nodes(node_ids: Sequence[str] | None) -> list[dict[str, Any]]:
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"] and n.get("Resources", {}).get("GPU", 0) > 0]
    if node_ids is not None:
        nodes = [n for n in nodes if n["NodeID"] in set(node_ids)]
    return nodes


def start_guards(
    *,
    thresholds: GuardThresholds | None = None,
    interval_s: float = 5.0,
    node_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Start (or find) the guard of every live GPU node, or of ``node_ids``; node id -> actor handle.

    Guards are detached, named :func:`guard_name`, take no CPU and are pinned to their node by its
    ``ray.io/node-id`` label. The broker is started too if none runs, since it keeps the drains.
    """
    import ray

    from medray.broker.actor import start_broker
    from medray.broker.client import NAMESPACE

    start_broker()
    thresholds = thresholds or GuardThresholds()
    actor = ray.remote(GpuGuard)
    guards = {}
    for n in _gpu_nodes(node_ids):
        node_id = n["NodeID"]
        node_type = (n.get("Labels") or {}).get(NODE_TYPE_LABEL, "unknown")
        guard = actor.options(
            num_cpus=0, max_restarts=-1, name=guard_name(node_id), namespace=NAMESPACE,
            lifetime="detached", get_if_exists=True, label_selector={NODE_ID_LABEL: node_id},
        ).remote(node_id, node_type, thresholds, interval_s)
        guard.run.remote()
        guards[node_id] = guard
    return guards


def _running_guards() -> dict[str, Any]:
    import ray

    from medray.broker.client import NAMESPACE

    guards = {}
    for n in ray.nodes():
        try:
            guards[n["NodeID"]] = ray.get_actor(guard_name(n["NodeID"]), namespace=NAMESPACE)
        except ValueError:
            continue
    return guards


def stop_guards() -> None:
    """Stop every guard and clear the drains they reported."""
    import ray

    from medray.broker.client import get_broker

    broker = get_broker()
    for node_id, guard in _running_guards().items():
        ray.kill(guard)
        if broker is not None:
            ray.get(broker.forget_node.remote(node_id))


def guard_states(timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """:meth:`GpuGuard.status` of every running guard."""
    import ray

    refs = [g.status.remote() for g in _running_guards().values()]
    return ray.get(refs, timeout=timeout_s)
