"""The priority broker: GPUs lent from research to clinical work in a burst, and given back after it.

Ray has neither priorities nor preemption; the broker adds both above it, cooperatively. Priority
classes, highest first: ``emergency`` > ``clinical`` > ``batch`` > ``research``.

* **Runs** (research or batch work that can stop and resume) are started *by the broker*
  (:func:`submit_run`) from an import path, so it can start them again: the entrypoint is called as
  ``fn(config, run_id=…, resume_from=…)``. A run polls :func:`yield_requested` at step or epoch
  boundaries (cheap enough for every step), saves a checkpoint and reports it
  (:func:`report_checkpoint`), and returns when asked to yield: its GPUs are free.
* **Lanes** (clinical work such as a Serve deployment) bring the demand: replicas that want a GPU and
  cannot get one. The broker reads it itself from Ray's actor table for Serve deployments it watches
  (:func:`watch_serve`: replicas pending creation, and replicas alive on lent nodes), or takes it
  pushed (:func:`report_demand`) from other work.
* **Lending**: when a lane outranking some runs has had pending units for ``pressure_grace_s``, the
  broker asks that many of the lowest-priority runs to yield; the lane's pending replicas then land on
  the freed GPUs through their placement fallbacks (e.g. ``roles=("infer", "train")``).
* **Returning**: once no lane has pending units or units on lent nodes for ``calm_s``, the broker
  starts the yielded runs again from their last checkpoint.
* **Stopping** (:func:`stop_run`, and :func:`stop_broker` for every run): a yield that is never
  resumed. Runs should end this way: a killed Ray Train run leaves its placement group (its GPUs)
  behind until Train's cleaner sees the controller dead, which needs Ray's State API (a dashboard).
* **Drains**: GPU guards (:mod:`medray.guard`) report their nodes here; :mod:`medray.scheduling`
  reads :meth:`Broker.drained_nodes` to keep new GPU work off drained nodes.

Every decision is an event with a reason: kept in a ring buffer (:func:`broker_summary`), logged
through :mod:`medray.logs` and counted in ``medray_broker_events_total{action}``.

The broker is a named, detached actor (``medray-broker`` in namespace ``medray``) on the head node.
Runs are its tasks, so they share its fate: stopping the broker stops its runs.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ray

from medray import metrics
from medray.errors import ConfigError, MedrayError
from medray.logs import get_logger
from medray.roles import ROLE_LABEL
from medray.scheduling import WorkloadProfile, place

__all__ = [
    "PRIORITIES",
    "BROKER_NAME",
    "NAMESPACE",
    "RUN_STATES",
    "BrokerPolicy",
    "Demand",
    "Event",
    "RunRecord",
    "Decision",
    "BrokerCore",
    "Broker",
    "DRIVER_PROFILE",
    "serve_replicas",
    "get_broker",
    "start_broker",
    "stop_broker",
    "stop_run",
    "submit_run",
    "yield_requested",
    "report_checkpoint",
    "report_demand",
    "watch_serve",
    "unwatch_serve",
    "broker_summary",
    "format_broker_summary",
]

PRIORITIES = ("emergency", "clinical", "batch", "research")  # highest first
BROKER_NAME = "medray-broker"
NAMESPACE = "medray"
RUN_STATES = ("running", "yielding", "yielded", "stopping", "stopped", "finished", "failed")
# Where a run's own task goes when the caller names no profile: the driver of a Train/Tune run
# mostly waits, and its workers take their GPUs through their own placement.
DRIVER_PROFILE = WorkloadProfile(roles=("coordinator", "prep"), num_cpus=0)

_log = get_logger("medray.broker")


def _rank(priority: str) -> int:
    if priority not in PRIORITIES:
        raise ConfigError(f"unknown priority class {priority!r}; classes are {PRIORITIES}")
    return PRIORITIES.index(priority)


@dataclass(frozen=True)
class BrokerPolicy:
    """How eagerly the broker lends and returns GPUs.

    ``pressure_grace_s``: how long a lane must have pending units before runs are asked to yield
    (filters replicas that are merely being placed). ``calm_s``: how long every lane must be back on
    its own nodes, with nothing pending, before yielded runs start again. ``demand_ttl_s``: pushed
    demand older than this is ignored. ``lend_roles``: node roles whose GPUs runs hold and lanes
    borrow (a lane's units alive there are "borrowed").
    """

    interval_s: float = 0.5
    pressure_grace_s: float = 1.0
    calm_s: float = 10.0
    demand_ttl_s: float = 10.0
    lend_roles: tuple[str, ...] = ("train",)
    event_capacity: int = 1000

    def __post_init__(self) -> None:
        if min(self.interval_s, self.demand_ttl_s) <= 0 or min(self.pressure_grace_s, self.calm_s) < 0:
            raise ConfigError("interval_s and demand_ttl_s must be > 0, grace and calm times >= 0")


@dataclass(frozen=True)
class Demand:
    """A lane's want at one moment: units (replicas) pending for a GPU, running, and running on lent nodes."""

    lane: str
    priority: str
    pending: int
    running: int = 0
    borrowed: int = 0
    at: float = 0.0
    source: str = "push"

    def __post_init__(self) -> None:
        _rank(self.priority)
        if min(self.pending, self.running, self.borrowed) < 0:
            raise ConfigError("pending, running and borrowed must be >= 0")


@dataclass(frozen=True)
class Event:
    """One broker decision or observation: what, about whom (run id, lane or node type), and why."""

    at: float
    action: str
    subject: str
    reason: str


@dataclass
class RunRecord:
    """A run the broker started and can start again."""

    run_id: str
    priority: str
    entrypoint: str
    config: dict[str, Any]
    profile: WorkloadProfile
    state: str = "running"
    attempt: int = 1
    yields: int = 0
    checkpoint_step: int | None = None
    checkpoint_path: str | None = None
    submitted_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The record without its config (which may hold paths, never shown in status)."""
        d = asdict(self)
        del d["config"], d["profile"]
        return d


@dataclass(frozen=True)
class Decision:
    """What the broker actor must carry out: ``yield`` (ask a run to stop) or ``resume`` (start it again)."""

    action: str
    run_id: str
    reason: str


@dataclass
class _Node:
    node_type: str
    drained: bool
    reasons: tuple[str, ...]
    max_temperature_c: float | None
    since: float


class BrokerCore:
    """The broker's state and decisions, without Ray: the actor feeds it and carries out its decisions."""

    def __init__(self, policy: BrokerPolicy | None = None, *,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.policy = policy or BrokerPolicy()
        self.runs: dict[str, RunRecord] = {}
        self.demands: dict[str, Demand] = {}
        self.nodes: dict[str, _Node] = {}
        self.events: deque[Event] = deque(maxlen=self.policy.event_capacity)
        self._on_event = on_event
        self._pending_since: dict[str, float] = {}
        self._calm_since: float | None = None
        self._unmet_lanes: set[str] = set()

    def event(self, now: float, action: str, subject: str, reason: str) -> None:
        e = Event(at=now, action=action, subject=subject, reason=reason)
        self.events.append(e)
        if self._on_event is not None:
            self._on_event(e)

    # Inputs ---------------------------------------------------------------------------------

    def add_run(self, record: RunRecord) -> None:
        _rank(record.priority)
        if record.priority in ("emergency", "clinical"):
            raise ConfigError(f"run {record.run_id!r}: {record.priority} work is a lane, not a "
                              "run that can be asked to yield; use priority 'batch' or 'research'")
        old = self.runs.get(record.run_id)
        if old is not None and old.state in ("running", "yielding", "stopping"):
            raise MedrayError(f"run {record.run_id!r} is already {old.state}: pick another run id "
                              "or wait for it to end")
        self.runs[record.run_id] = record
        self.event(record.submitted_at, "submit", record.run_id, f"priority {record.priority}")

    def should_yield(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and run.state in ("yielding", "stopping")

    def stop_run(self, now: float, run_id: str) -> bool:
        """Ask a run to checkpoint and stop for good; True while its task still has to end."""
        run = self.runs.get(run_id)
        if run is None or run.state in ("stopped", "finished", "failed"):
            return False
        self.event(now, "stop", run_id, f"requested while {run.state}")
        if run.state == "yielded":  # not running: nothing to wait for, and never resumed
            run.state = "stopped"
            return False
        run.state = "stopping"
        return True

    def report_checkpoint(self, run_id: str, step: int, path: str | None) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.checkpoint_step, run.checkpoint_path = step, path

    def report_demand(self, demand: Demand) -> None:
        self.demands[demand.lane] = demand

    def run_ended(self, now: float, run_id: str, error: str | None = None) -> None:
        """A run's task returned (``error``: the exception's type name when it raised)."""
        run = self.runs[run_id]
        if error is not None:
            run.state = "failed"
            self.event(now, "failed", run_id, f"raised {error}")
        elif run.state in ("yielding", "stopping"):
            run.state = "yielded" if run.state == "yielding" else "stopped"
            at = f"step {run.checkpoint_step}" if run.checkpoint_step is not None else "no checkpoint"
            self.event(now, run.state, run_id, f"GPUs released, last checkpoint {at}")
        else:
            run.state = "finished"
            self.event(now, "finished", run_id, "entrypoint returned")

    def report_node(self, now: float, node_id: str, node_type: str, *, drained: bool,
                    reasons: Sequence[str], max_temperature_c: float | None) -> None:
        old = self.nodes.get(node_id)
        if old is None or old.drained != drained:
            self.nodes[node_id] = _Node(node_type, drained, tuple(reasons), max_temperature_c, now)
            if drained:
                self.event(now, "drain", node_type, f"node {node_id[:8]}: {', '.join(reasons)}")
            elif old is not None:
                self.event(now, "undrain", node_type, f"node {node_id[:8]} recovered")
        else:
            old.reasons, old.max_temperature_c = tuple(reasons), max_temperature_c

    def forget_node(self, now: float, node_id: str) -> None:
        node = self.nodes.pop(node_id, None)
        if node is not None and node.drained:
            self.event(now, "undrain", node.node_type, f"node {node_id[:8]}: guard stopped")

    # Decisions ------------------------------------------------------------------------------

    def _fresh_demands(self, now: float) -> list[Demand]:
        return [d for d in self.demands.values() if now - d.at <= self.policy.demand_ttl_s]

    def tick(self, now: float) -> list[Decision]:
        """Decide who yields and who resumes now."""
        fresh = self._fresh_demands(now)
        for d in fresh:
            if d.pending:
                self._pending_since.setdefault(d.lane, d.at)
            else:
                self._pending_since.pop(d.lane, None)
        for lane in set(self._pending_since) - {d.lane for d in fresh}:
            del self._pending_since[lane]
        starved = sorted(
            (d for d in fresh
             if d.pending and now - self._pending_since[d.lane] >= self.policy.pressure_grace_s),
            key=lambda d: _rank(d.priority),
        )
        if starved:
            self._calm_since = None
            return self._lend(now, starved)
        self._unmet_lanes.clear()
        return self._give_back(now, fresh)

    def _lend(self, now: float, starved: list[Demand]) -> list[Decision]:
        top = starved[0]
        yielding = sum(r.state == "yielding" for r in self.runs.values())
        need = sum(d.pending for d in starved) - yielding
        victims = sorted(
            (r for r in self.runs.values()
             if r.state == "running" and _rank(r.priority) > _rank(top.priority)),
            key=lambda r: (-_rank(r.priority), -r.submitted_at),  # lowest class, newest first
        )
        waited = now - self._pending_since[top.lane]
        reason = f"lane {top.lane} ({top.priority}) has {top.pending} pending for {waited:.1f}s"
        decisions = []
        for run in victims[:max(need, 0)]:
            run.state = "yielding"
            run.yields += 1
            self.event(now, "lend", run.run_id, reason)
            decisions.append(Decision("yield", run.run_id, reason))
        if need > 0 and not victims and top.lane not in self._unmet_lanes:
            self._unmet_lanes.add(top.lane)
            self.event(now, "unmet", top.lane, reason + ", and no lower-priority run holds GPUs")
        return decisions

    def _give_back(self, now: float, fresh: list[Demand]) -> list[Decision]:
        yielded = [r for r in self.runs.values() if r.state == "yielded"]
        busy = [d for d in fresh if d.pending or d.borrowed]
        if busy or not any(r.state in ("yielding", "yielded") for r in self.runs.values()):
            self._calm_since = None
            return []
        if self._calm_since is None:
            self._calm_since = now
        calm_for = now - self._calm_since
        if calm_for < self.policy.calm_s or not yielded:
            return []
        decisions = []
        for run in yielded:
            run.state = "running"
            run.attempt += 1
            start = f"step {run.checkpoint_step}" if run.checkpoint_step is not None else "the start"
            reason = f"no lane pending or on lent nodes for {calm_for:.1f}s; resume from {start}"
            self.event(now, "return", run.run_id, reason)
            decisions.append(Decision("resume", run.run_id, reason))
        return decisions

    # Views ----------------------------------------------------------------------------------

    def drained_nodes(self) -> list[str]:
        return sorted(node_id for node_id, n in self.nodes.items() if n.drained)

    def node_health(self) -> dict[str, dict[str, Any]]:
        return {node_id: {"node_type": n.node_type, "drained": n.drained, "reasons": list(n.reasons),
                          "max_temperature_c": n.max_temperature_c, "since": n.since}
                for node_id, n in self.nodes.items()}

    def summary(self, now: float, *, events: int = 20) -> dict[str, Any]:
        lending = any(r.state in ("yielding", "yielded") for r in self.runs.values())
        return {
            "priorities": list(PRIORITIES),
            "lending": lending,
            "runs": [r.to_dict() for r in self.runs.values()],
            "lanes": [{**asdict(d), "age_s": round(now - d.at, 1)} for d in self._fresh_demands(now)],
            "drained": [{"node_id": node_id, **h} for node_id, h in self.node_health().items()
                        if h["drained"]],
            "events": [asdict(e) for e in list(self.events)[-events:]] if events else [],
        }


def _run_entrypoint(entrypoint: str, config: dict[str, Any], run_id: str, resume_from: str | None) -> Any:
    module, _, name = entrypoint.partition(":")
    fn = getattr(importlib.import_module(module), name)
    # Ray reuses worker processes: the answer "yield" cached for an earlier attempt of this run in
    # this process must not make the resumed attempt stop at its first step.
    _polls.pop(run_id, None)
    try:
        return fn(config, run_id=run_id, resume_from=resume_from)
    finally:
        _polls.pop(run_id, None)


_run_task = ray.remote(_run_entrypoint)


def serve_replicas(app: str, deployment: str) -> tuple[int, list[str]]:
    """(replicas Ray cannot place, node ids of the placed ones) of a Serve deployment.

    From Ray's actor table (replica actors are named ``SERVE_REPLICA::<app>#<deployment>#<id>``).
    An actor stays ``PENDING_CREATION`` until its constructor returned, also once placed: only
    those without a worker process yet are waiting for resources. Placed ones count where they
    run, starting or alive.
    """
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    pending, placed = 0, []
    for state in ("PENDING_CREATION", "ALIVE"):
        for a in actors(actor_state_name=state).values():
            if not a["Name"].startswith(prefix):
                continue
            if a["Pid"]:
                placed.append(a["Address"]["NodeID"])
            else:
                pending += 1
    return pending, placed


def _export_event(e: Event) -> None:
    _log.info(f"{e.action} {e.subject}: {e.reason}",
              extra={"broker_action": e.action, "subject": e.subject, "reason": e.reason})
    metrics.counter("broker_events_total", "priority broker decisions and observations",
                    ("action",)).inc(tags={"action": e.action})


@ray.remote(num_cpus=0, max_restarts=0)
class Broker:
    """The broker actor (start with :func:`start_broker`); see the module docstring."""

    def __init__(self, policy: BrokerPolicy) -> None:
        self._core = BrokerCore(policy, on_event=_export_event)
        self._tasks: dict[str, Any] = {}
        self._watches: dict[str, tuple[str, str, str]] = {}
        self._node_roles: dict[str, str] = {}
        self._loop: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start the decision loop (idempotent)."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # one bad step must never stop the broker
                _log.exception("broker step failed")
            await asyncio.sleep(self._core.policy.interval_s)

    def _step(self) -> None:
        now = time.time()
        self._collect_ended(now)
        self._poll_watches(now)
        for decision in self._core.tick(now):
            if decision.action == "resume":
                self._start(self._core.runs[decision.run_id])
        self._export_gauges()

    def _collect_ended(self, now: float) -> None:
        if not self._tasks:
            return
        ready, _ = ray.wait(list(self._tasks.values()), num_returns=len(self._tasks), timeout=0)
        for run_id, ref in list(self._tasks.items()):
            if ref not in ready:
                continue
            del self._tasks[run_id]
            try:
                ray.get(ref)
                error = None
            except Exception as e:  # the type only: a message could carry data from the run
                error = type(getattr(e, "cause", None) or e).__name__
            self._core.run_ended(now, run_id, error)

    def _poll_watches(self, now: float) -> None:
        for lane, (app, deployment, priority) in self._watches.items():
            pending, nodes = serve_replicas(app, deployment)
            if any(n not in self._node_roles for n in nodes):
                self._node_roles = {n["NodeID"]: (n.get("Labels") or {}).get(ROLE_LABEL, "")
                                    for n in ray.nodes()}
            borrowed = sum(self._node_roles.get(n) in self._core.policy.lend_roles for n in nodes)
            self._core.report_demand(Demand(lane=lane, priority=priority, pending=pending,
                                            running=len(nodes), borrowed=borrowed, at=now,
                                            source="serve"))

    def _export_gauges(self) -> None:
        runs = metrics.gauge("broker_runs", "runs known to the broker by state", ("state",))
        for state in RUN_STATES:
            runs.set(float(sum(r.state == state for r in self._core.runs.values())),
                     tags={"state": state})
        pending = metrics.gauge("broker_lane_pending", "units a lane waits to place", ("lane",))
        borrowed = metrics.gauge("broker_lane_borrowed", "units a lane runs on lent nodes", ("lane",))
        for d in self._core.demands.values():
            pending.set(float(d.pending), tags={"lane": d.lane})
            borrowed.set(float(d.borrowed), tags={"lane": d.lane})

    def _start(self, run: RunRecord) -> None:
        # Drains passed in: asking this very actor through medray.scheduling would block its loop.
        opts = place(run.profile, drained=frozenset(self._core.drained_nodes())).ray_options()
        self._tasks[run.run_id] = _run_task.options(max_retries=0, **opts).remote(
            run.entrypoint, run.config, run.run_id, run.checkpoint_path)

    # Runs -----------------------------------------------------------------------------------

    async def submit_run(self, run_id: str, entrypoint: str, config: dict[str, Any], priority: str,
                         profile: WorkloadProfile) -> None:
        record = RunRecord(run_id=run_id, priority=priority, entrypoint=entrypoint, config=config,
                           profile=profile, submitted_at=time.time())
        self._core.add_run(record)
        self._start(record)

    async def should_yield(self, run_id: str) -> bool:
        return self._core.should_yield(run_id)

    async def stop_runs(self, run_ids: list[str] | None = None) -> list[str]:
        """Ask runs (all when None) to stop for good; returns those whose tasks still have to end."""
        now = time.time()
        return [run_id for run_id in (run_ids if run_ids is not None else list(self._core.runs))
                if self._core.stop_run(now, run_id)]

    async def active_runs(self, run_ids: list[str]) -> list[str]:
        """Those of ``run_ids`` whose tasks have not ended yet."""
        return [run_id for run_id in run_ids if run_id in self._tasks]

    async def report_checkpoint(self, run_id: str, step: int, path: str | None) -> None:
        self._core.report_checkpoint(run_id, step, path)

    # Demand and nodes -----------------------------------------------------------------------

    async def report_demand(self, lane: str, priority: str, pending: int, running: int,
                            borrowed: int) -> None:
        self._core.report_demand(Demand(lane=lane, priority=priority, pending=pending, running=running,
                                        borrowed=borrowed, at=time.time()))

    async def watch_serve(self, lane: str, app: str, deployment: str, priority: str) -> None:
        _rank(priority)
        self._watches[lane] = (app, deployment, priority)
        self._core.event(time.time(), "watch", lane, f"Serve deployment {app}/{deployment} as {priority}")

    async def unwatch_serve(self, lane: str) -> None:
        self._watches.pop(lane, None)
        self._core.demands.pop(lane, None)

    async def report_node(self, node_id: str, node_type: str, *, drained: bool, reasons: list[str],
                          max_temperature_c: float | None) -> None:
        self._core.report_node(time.time(), node_id, node_type, drained=drained, reasons=reasons,
                               max_temperature_c=max_temperature_c)

    async def forget_node(self, node_id: str) -> None:
        self._core.forget_node(time.time(), node_id)

    async def drained_nodes(self) -> list[str]:
        return self._core.drained_nodes()

    async def node_health(self) -> dict[str, dict[str, Any]]:
        return self._core.node_health()

    async def summary(self, events: int = 20) -> dict[str, Any]:
        return self._core.summary(time.time(), events=events)

    async def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [asdict(e) for e in self._core.events if e.at >= since]


# Client helpers ------------------------------------------------------------------------------


def get_broker() -> Any | None:
    """The running broker's actor handle, or None (not connected to Ray, or no broker)."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(BROKER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def start_broker(policy: BrokerPolicy | None = None) -> Any:
    """Start the broker on the head node, or return the running one (whose policy then stays)."""
    opts = place(WorkloadProfile(roles=("coordinator",), num_cpus=0)).ray_options()
    broker = Broker.options(name=BROKER_NAME, namespace=NAMESPACE, lifetime="detached",
                            get_if_exists=True, **opts).remote(policy or BrokerPolicy())
    ray.get(broker.run.remote())
    return broker


def _stop_runs(broker: Any, run_ids: list[str] | None, timeout_s: float) -> list[str]:
    """Ask runs to stop and wait up to ``timeout_s`` for their tasks to end; returns those still running."""
    waiting = ray.get(broker.stop_runs.remote(run_ids))
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        time.sleep(0.2)
        waiting = ray.get(broker.active_runs.remote(waiting))
    return waiting


def stop_run(run_id: str, *, timeout_s: float = 60.0) -> bool:
    """Ask run ``run_id`` to checkpoint and stop for good (it is never resumed); wait for it.

    Returns True once its task has ended (or it was not running), False after ``timeout_s``.
    """
    return not _stop_runs(_require_broker(), [run_id], timeout_s)


def stop_broker(*, grace_s: float = 30.0) -> None:
    """Stop the broker and the runs it started.

    Running runs are first asked to stop (:func:`stop_run`) and given ``grace_s`` to end; the
    broker is then killed, and with it the tasks of runs that did not end.
    """
    broker = get_broker()
    if broker is None:
        return
    if grace_s > 0:
        try:
            _stop_runs(broker, None, grace_s)
        except ray.exceptions.RayError:  # a broker that does not answer is killed all the same
            pass
    ray.kill(broker)


def _require_broker() -> Any:
    broker = get_broker()
    if broker is None:
        raise MedrayError("no medray broker is running: start one with medray.broker.start_broker()")
    return broker


def submit_run(
    run_id: str,
    entrypoint: str,
    config: dict[str, Any] | None = None,
    *,
    priority: str = "research",
    profile: WorkloadProfile = DRIVER_PROFILE,
) -> None:
    """Start a preemptible run through the broker.

    ``entrypoint`` is ``"package.module:function"``, called in a Ray task placed by ``profile`` as
    ``function(config, run_id=run_id, resume_from=path_or_None)``. It polls :func:`yield_requested`,
    reports checkpoints with :func:`report_checkpoint`, and returns when asked to yield; the broker
    calls it again with ``resume_from`` set to the last checkpoint path it reported.
    """
    if ":" not in entrypoint:
        raise ConfigError(f"entrypoint {entrypoint!r} must be 'package.module:function'")
    ray.get(_require_broker().submit_run.remote(run_id, entrypoint, dict(config or {}), priority,
                                                profile))


@dataclass
class _Poll:
    answer: bool = False
    ref: Any = None
    at: float = float("-inf")
    broker: Any = None
    looked_up_at: float = float("-inf")


_polls: dict[str, _Poll] = {}


def _all_ranks_agree(flag: bool) -> bool:
    """True on every rank when any rank says True (ranks must stop at the same step under DDP)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def yield_requested(run_id: str, *, max_age_s: float = 0.5, all_ranks: bool = False) -> bool:
    """Whether the broker asks run ``run_id`` to checkpoint and stop. Never blocks on the broker.

    The answer is at most about ``max_age_s`` old: the call returns the last answer and, when that is
    stale, sends one asynchronous question whose reply a later call picks up. False without a broker.
    With ``all_ranks=True`` every rank of a ``torch.distributed`` group must call it at the same step;
    all then get the same answer (one tiny all-reduce).
    """
    poll = _polls.setdefault(run_id, _Poll())
    now = time.monotonic()
    if poll.ref is not None:
        ready, _ = ray.wait([poll.ref], timeout=0)
        if ready:
            try:
                poll.answer = bool(ray.get(poll.ref))
            except ray.exceptions.RayError:  # broker gone: look it up again next time
                poll.broker = None
            poll.ref, poll.at = None, now
    if poll.ref is None and now - poll.at >= max_age_s:
        if poll.broker is None and now - poll.looked_up_at >= 5 * max_age_s:
            poll.broker, poll.looked_up_at = get_broker(), now
        if poll.broker is not None:
            poll.ref = poll.broker.should_yield.remote(run_id)
        poll.at = now
    return _all_ranks_agree(poll.answer) if all_ranks else poll.answer


def report_checkpoint(run_id: str, step: int, path: str | None = None) -> None:
    """Tell the broker that run ``run_id`` saved a checkpoint after ``step`` at ``path`` (no wait).

    Under DDP call it from rank 0 only. ``path`` is what ``resume_from`` will be on the next start.
    """
    broker = get_broker()
    if broker is not None:
        broker.report_checkpoint.remote(run_id, int(step), path)


def report_demand(lane: str, *, priority: str, pending: int, running: int = 0, borrowed: int = 0) -> None:
    """Push a lane's demand (for work the broker does not watch itself); repeat it at least every
    ``demand_ttl_s`` while it holds. ``borrowed``: units running on lent nodes."""
    Demand(lane=lane, priority=priority, pending=pending, running=running, borrowed=borrowed)
    ray.get(_require_broker().report_demand.remote(lane, priority, pending, running, borrowed))


def watch_serve(lane: str, *, app: str, deployment: str, priority: str) -> None:
    """Have the broker read a Serve deployment's demand as lane ``lane`` of class ``priority``."""
    ray.get(_require_broker().watch_serve.remote(lane, app, deployment, priority))


def unwatch_serve(lane: str) -> None:
    """Stop reading lane ``lane`` from Serve and forget its demand (no broker: nothing to do)."""
    broker = get_broker()
    if broker is not None:
        ray.get(broker.unwatch_serve.remote(lane))


def broker_summary(*, events: int = 20, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The broker's state for ``medray status``, or None when no broker runs.

    Keys: ``priorities``, ``lending``, ``runs``, ``lanes``, ``drained``, ``events`` (the last
    ``events``, oldest first).
    """
    broker = get_broker()
    if broker is None:
        return None
    return ray.get(broker.summary.remote(events), timeout=timeout_s)


def format_broker_summary(summary: dict[str, Any] | None) -> str:
    """Text lines for ``medray status`` (one line when no broker runs)."""
    if summary is None:
        return "broker: not running"
    lines = [f"broker: {'LENDING' if summary['lending'] else 'idle'}  "
             f"priorities {' > '.join(summary['priorities'])}"]
    for r in summary["runs"]:
        step = r["checkpoint_step"] if r["checkpoint_step"] is not None else "-"
        lines.append(f"  run  {r['run_id']:24} {r['priority']:9} {r['state']:9} attempt {r['attempt']} "
                     f"yields {r['yields']} checkpoint step {step}")
    for d in summary["lanes"]:
        lines.append(f"  lane {d['lane']:24} {d['priority']:9} pending {d['pending']} running "
                     f"{d['running']} borrowed {d['borrowed']} ({d['source']}, {d['age_s']}s ago)")
    for n in summary["drained"]:
        lines.append(f"  drained {n['node_type']} {n['node_id'][:8]}: {', '.join(n['reasons'])}")
    for e in summary["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["at"]))
        lines.append(f"  {stamp} {e['action']:8} {e['subject']}: {e['reason']}")
    return "\n".join(lines)
