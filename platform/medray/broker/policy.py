"""The broker's decisions as pure state: priority classes, runs, lane demand, node drains, lend and give back.

No Ray here: :mod:`medray.broker.actor` feeds :class:`BrokerCore` what it observes and carries out the
:class:`Decision` s it returns (see :mod:`medray.broker` for the whole picture).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medray.errors import ConfigError, MedrayError
from medray.scheduling.placement import WorkloadProfile

__all__ = ["PRIORITIES", "RUN_STATES", "priority_rank", "BrokerPolicy", "Demand", "Event", "RunRecord", "Decision", "BrokerCore"]

PRIORITIES = ("emergency", "clinical", "batch", "research")  # highest first
# A reclaim not carried out by then (no replica asked) is dropped and may be decided again.
RECLAIM_TIMEOUT_S = 60.0
# After a run released GPUs, Ray takes a moment (1.4 s in the demo on 2 cores) to place the lane's
# pending units on them: no "unmet" is said in that time.
PLACE_AFTER_RELEASE_S = 5.0
RUN_STATES = ("running", "yielding", "yielded", "stopping", "stopped", "finished", "failed")


def priority_rank(priority: str) -> int:
    """0 for the highest class; :class:`~medray.errors.ConfigError` for an unknown one."""
    if priority not in PRIORITIES:
        raise ConfigError(f"unknown priority class {priority!r}; classes are {PRIORITIES}")
    return PRIORITIES.index(priority)


@dataclass(frozen=True)
class BrokerPolicy:
    """How eagerly the broker lends and returns GPUs (thresholds documented in docs/elasticity.md).

    A lane is **starved** only with both kinds of evidence at once: units (replicas) it wants that
    Ray has not placed (``pending``) *and* requests queued in it, the oldest waiting at least
    ``queue_age_s`` (``oldest_s``). Replicas still starting while no request waits that long (a
    deployment coming up, an autoscaler step the lane's own nodes absorb) are not starvation.
    ``pressure_grace_s``: how long that evidence must hold without a break before runs are asked to
    yield, and how long a lane must sit on lent nodes while its own nodes have room before those
    units are asked to step down (a *reclaim*, see :meth:`BrokerCore.step_down`). ``calm_s``: how
    long every lane must be back on its own nodes, with nothing pending, before
    yielded runs start again; the timer starts only once every asked run has finished yielding.
    ``demand_ttl_s``: demand and queue reports older than this are ignored. ``lend_roles``: node roles
    whose GPUs runs hold and lanes borrow (a lane's units alive there are "borrowed").
    """

    interval_s: float = 0.5
    pressure_grace_s: float = 1.0
    queue_age_s: float = 1.0
    calm_s: float = 10.0
    demand_ttl_s: float = 10.0
    lend_roles: tuple[str, ...] = ("train",)
    event_capacity: int = 1000

    def __post_init__(self) -> None:
        if min(self.interval_s, self.demand_ttl_s) <= 0 or min(self.pressure_grace_s, self.calm_s,
                                                                 self.queue_age_s) < 0:
            raise ConfigError("interval_s and demand_ttl_s must be > 0, grace, queue age and calm "
                              "times >= 0")


@dataclass(frozen=True)
class Demand:
    """A lane's want at one moment.

    ``pending``: units (replicas) it wants that are not placed; ``running``: units placed;
    ``borrowed``: units placed on lent nodes; ``queued``: requests waiting in the lane;
    ``oldest_s``: how long the oldest of them has waited; ``room``: more units the lane's own
    (not lent) nodes could take now.
    """

    lane: str
    priority: str
    pending: int
    running: int = 0
    borrowed: int = 0
    queued: int = 0
    oldest_s: float = 0.0
    at: float = 0.0
    source: str = "push"
    room: int = 0

    def __post_init__(self) -> None:
        priority_rank(self.priority)
        if min(self.pending, self.running, self.borrowed, self.queued, self.room) < 0 or self.oldest_s < 0:
            raise ConfigError("pending, running, borrowed, queued, room and oldest_s must be >= 0")

    def starving(self, policy: BrokerPolicy) -> bool:
        """Both kinds of evidence at this moment: unplaced units and a queue at least ``queue_age_s`` old."""
        return self.pending > 0 and self.queued > 0 and self.oldest_s >= policy.queue_age_s


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
    # A run of several GPU workers that can restart on fewer (``workers`` > 0): it gives back only
    # what a burst needs, down to ``min_workers``, and grows back to ``max_workers`` after it.
    workers: int = 0
    min_workers: int = 1
    max_workers: int = 0
    target_workers: int | None = None

    @property
    def units(self) -> int:
        """GPU workers it holds (1 for a run that cannot resize: it yields whole)."""
        return self.workers or 1

    def to_dict(self) -> dict[str, Any]:
        """The record without its config (which may hold paths, never shown in status)."""
        d = asdict(self)
        del d["config"], d["profile"]
        return d


@dataclass(frozen=True)
class Decision:
    """What the broker actor must carry out: ``yield`` (ask a run to stop) or ``resume`` (start it
    again, on ``workers`` workers when set)."""

    action: str
    run_id: str
    reason: str
    workers: int | None = None


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
        self._starving_since: dict[str, float] = {}
        self._calm_since: float | None = None
        self._unmet_lanes: set[str] = set()
        self._misplaced_since: dict[str, float] = {}
        self._released_at = float("-inf")
        # lane -> [units still to step down, borrowed when asked, asked at]
        self._reclaims: dict[str, list[float]] = {}

    def event(self, now: float, action: str, subject: str, reason: str) -> None:
        e = Event(at=now, action=action, subject=subject, reason=reason)
        self.events.append(e)
        if self._on_event is not None:
            self._on_event(e)

    # Inputs ---------------------------------------------------------------------------------

    def add_run(self, record: RunRecord) -> None:
        priority_rank(record.priority)
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

    def step_down(self, lane: str) -> bool:
        """Whether a unit of ``lane`` on a lent node should stop now (it asks; each yes is counted).

        Serve chooses which replicas stop when a deployment scales down, and may keep the ones on
        lent nodes while the lane's own nodes have room (it ranks nodes by their replica counts,
        see Ray Serve's ``DeploymentScheduler._get_replicas_to_stop``). The broker then asks that
        many of the lent ones to step down; Serve starts their replacements on the lane's own
        nodes (its cheapest-first placement), and the lent GPUs can go back.
        """
        reclaim = self._reclaims.get(lane)
        if reclaim is None or reclaim[0] < 1:
            return False
        reclaim[0] -= 1
        return True

    def run_ended(self, now: float, run_id: str, error: str | None = None) -> list[Decision]:
        """A run's task returned (``error``: the exception's type name when it raised).

        A run that yielded to change size starts again at once on its target workers: the returned
        decision says so.
        """
        run = self.runs[run_id]
        if error is not None:
            run.state = "failed"
            self.event(now, "failed", run_id, f"raised {error}")
        elif run.state == "yielding" and run.target_workers:
            self._released_at = now
            at = f"step {run.checkpoint_step}" if run.checkpoint_step is not None else "the start"
            reason = f"from {run.workers} to {run.target_workers} workers, resume from {at}"
            run.workers, run.target_workers = run.target_workers, None
            run.state, run.attempt = "running", run.attempt + 1
            self.event(now, "resized", run_id, reason)
            return [Decision("resume", run_id, reason, workers=run.workers)]
        elif run.state in ("yielding", "stopping"):
            self._released_at = now
            run.state = "yielded" if run.state == "yielding" else "stopped"
            at = f"step {run.checkpoint_step}" if run.checkpoint_step is not None else "no checkpoint"
            self.event(now, run.state, run_id, f"GPUs released, last checkpoint {at}")
        else:
            run.state = "finished"
            self.event(now, "finished", run_id, "entrypoint returned")
        return []

    def report_node(self, now: float, node_id: str, node_type: str, *, drained: bool,
                    reasons: Sequence[str], max_temperature_c: float | None) -> None:
        """A GPU guard's reading of its node; its first drained report becomes a ``drain`` event."""
        old = self.nodes.get(node_id)
        if old is None or old.drained != drained:
            self.nodes[node_id] = _Node(node_type, drained, tuple(reasons), max_temperature_c, now)
            if drained:
                self.event(now, "drain", node_type, f"node {node_id[:8]}: {', '.join(reasons)}")
        else:
            old.reasons, old.max_temperature_c = tuple(reasons), max_temperature_c

    # Decisions ------------------------------------------------------------------------------

    def _fresh_demands(self, now: float) -> list[Demand]:
        return [d for d in self.demands.values() if now - d.at <= self.policy.demand_ttl_s]

    def tick(self, now: float) -> list[Decision]:
        """Decide who yields and who resumes now."""
        fresh = self._fresh_demands(now)
        for d in fresh:
            if d.starving(self.policy):
                self._starving_since.setdefault(d.lane, d.at)
            else:
                self._starving_since.pop(d.lane, None)
        for lane in set(self._starving_since) - {d.lane for d in fresh}:
            del self._starving_since[lane]
        starved = sorted(
            (d for d in fresh
             if d.lane in self._starving_since
             and now - self._starving_since[d.lane] >= self.policy.pressure_grace_s),
            key=lambda d: priority_rank(d.priority),
        )
        if starved:
            self._calm_since = None
            self._reclaims.clear()
            self._misplaced_since.clear()
            return self._lend(now, starved)
        self._unmet_lanes.clear()
        self._reclaim(now, fresh)
        return self._give_back(now, fresh)

    def _reclaim(self, now: float, fresh: list[Demand]) -> None:
        """Ask lanes that sit on lent nodes while their own have room to move (:meth:`step_down`)."""
        for d in fresh:
            reclaim = self._reclaims.get(d.lane)
            if reclaim is not None and (d.borrowed < reclaim[1] or now - reclaim[2] > RECLAIM_TIMEOUT_S):
                del self._reclaims[d.lane]  # done (or the replicas never asked: look again)
                reclaim = None
            misplaced = d.borrowed > 0 and d.room > 0 and d.pending == 0 and not d.starving(self.policy)
            if not misplaced:
                self._misplaced_since.pop(d.lane, None)
                continue
            since = self._misplaced_since.setdefault(d.lane, d.at)
            if reclaim is None and now - since >= self.policy.pressure_grace_s:
                # Never all of a lane's serving units at once: while a replacement starts at home,
                # the others keep serving (stepping down every unit left the lane with none, its
                # studies piled up, and the autoscaler scaled onto the lent nodes again). A lane
                # of one unit moves it anyway: it would sit on the lent GPUs for ever.
                units = min(d.borrowed, d.room, d.running - 1 if d.running > 1 else 1)
                self._reclaims[d.lane] = [units, d.borrowed, now]
                self.event(now, "reclaim", d.lane,
                           f"{d.borrowed} units on lent nodes while its own nodes have room for {d.room} "
                           f"for {now - since:.1f}s; asks {units} to step down")

    def _lend(self, now: float, starved: list[Demand]) -> list[Decision]:
        top = starved[0]
        releasing = sum((r.workers - r.target_workers) if r.target_workers else r.units
                        for r in self.runs.values() if r.state == "yielding")
        need = sum(d.pending for d in starved) - releasing
        victims = sorted(
            (r for r in self.runs.values()
             if r.state == "running" and priority_rank(r.priority) > priority_rank(top.priority)),
            key=lambda r: (-priority_rank(r.priority), -r.submitted_at),  # lowest class, newest first
        )
        waited = now - self._starving_since[top.lane]
        reason = (f"lane {top.lane} ({top.priority}): {top.pending} replicas unplaced and {top.queued} "
                  f"requests queued, the oldest {top.oldest_s:.1f}s, for {waited:.1f}s")
        decisions = []
        for run in victims:
            if need <= 0:
                break
            run.state = "yielding"
            run.yields += 1
            if run.workers and run.workers - need >= run.min_workers:
                # Proportional: give back what the burst needs, train on in the rest.
                run.target_workers = run.workers - need
                lent = f"{reason}; lends {need} of its {run.workers} workers"
                need = 0
            else:
                lent = f"{reason}; lends all {run.units} of its workers" if run.workers else reason
                need -= run.units
            self.event(now, "lend", run.run_id, lent)
            decisions.append(Decision("yield", run.run_id, lent))
        # Unmet only when nothing is on its way: a run still yielding may free more than it counts for.
        just_released = now - self._released_at < PLACE_AFTER_RELEASE_S
        if need > 0 and not (victims or releasing or just_released) and top.lane not in self._unmet_lanes:
            self._unmet_lanes.add(top.lane)
            self.event(now, "unmet", top.lane, reason + ", and no lower-priority run holds GPUs")
        return decisions

    def _give_back(self, now: float, fresh: list[Demand]) -> list[Decision]:
        yielded = [r for r in self.runs.values() if r.state == "yielded"]
        shrunk = [r for r in self.runs.values() if r.state == "running" and r.workers < r.max_workers]
        busy = [d for d in fresh if d.pending or d.borrowed]
        # The calm timer starts once every asked run has released its GPUs: a lane is only back on
        # its own nodes when the lent ones were free to take.
        yielding = any(r.state == "yielding" for r in self.runs.values())
        if busy or yielding or not (yielded or shrunk):
            self._calm_since = None
            return []
        if self._calm_since is None:
            self._calm_since = now
        calm_for = now - self._calm_since
        if calm_for < self.policy.calm_s:
            return []
        decisions = []
        calm = f"no lane pending or on lent nodes for {calm_for:.1f}s"
        for run in yielded:
            run.state = "running"
            run.attempt += 1
            run.workers = run.max_workers
            start = f"step {run.checkpoint_step}" if run.checkpoint_step is not None else "the start"
            reason = f"{calm}; resume from {start}"
            self.event(now, "return", run.run_id, reason)
            decisions.append(Decision("resume", run.run_id, reason, workers=run.workers or None))
        for run in shrunk:
            # Growing back is a restart from the next checkpoint on all its workers.
            run.state, run.target_workers = "yielding", run.max_workers
            reason = f"{calm}; grow back from {run.workers} to {run.max_workers} workers"
            self.event(now, "return", run.run_id, reason)
            decisions.append(Decision("yield", run.run_id, reason))
        return decisions

    # Views ----------------------------------------------------------------------------------

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
