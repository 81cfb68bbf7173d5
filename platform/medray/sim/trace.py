"""A simulated day as a documented, seeded config: the fleet, the workloads' arrivals, faults, service times.

A trace config is a YAML file (``benchmarks/sim/day.yaml`` is the fleet-scale day, ``local_burst.yaml``
the local cluster's burst benchmark); :func:`load_config` validates it into frozen dataclasses and
:func:`diagnosis_arrivals`, :func:`research_jobs` and :func:`gpu_faults` draw the day from its seed.
The same seed gives the same day for every policy, so they are compared on identical work.

Arrival rates follow a day/night curve per lane (lowest at 03:00, highest at 15:00, a raised cosine
between ``night_per_s`` and ``day_per_s``), multiplied by ``factor`` inside each burst span (the
mass-casualty hour); arrivals are a Poisson process of that piecewise-constant rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medray.broker.policy import PRIORITIES, BrokerPolicy
from medray.cluster.guard import GuardThresholds
from medray.cluster.node_types import ROLES
from medray.errors import ConfigError

__all__ = [
    "Burst",
    "LaneTrace",
    "ResearchTrace",
    "PrepTrace",
    "FaultTrace",
    "ServiceTimes",
    "SimConfig",
    "ResearchJob",
    "GpuFault",
    "load_config",
    "config_from_dict",
    "rate_at",
    "diagnosis_arrivals",
    "research_jobs",
    "gpu_faults",
]


@dataclass(frozen=True)
class Burst:
    """``factor`` × the lane's rate from ``start_s`` for ``duration_s`` (a mass-casualty incident)."""

    start_s: float
    duration_s: float
    factor: float


@dataclass(frozen=True)
class LaneTrace:
    """One clinical lane: its arrivals and the Serve deployment that answers them.

    The deployment fields mean what they mean in ``workloads.diagnosis.config.LaneConfig``
    (Serve autoscaling: ``target_ongoing_requests``, ``upscale_delay_s``, ``downscale_delay_s``,
    ``look_back_period_s``; admission: ``max_queued_requests``, ``queue_timeout_s``). One replica
    works on one study at a time. ``slo_s``: the p99 latency goal of the lane's class.
    ``arrivals``: ``poisson`` (a hospital's patients), or ``paced`` (one study every ``1 / rate`` s,
    as the burst benchmark's open-loop client sends them).
    """

    name: str
    priority: str
    day_per_s: float
    night_per_s: float
    roles: tuple[str, ...]
    site: str | None = None
    bursts: tuple[Burst, ...] = ()
    num_gpus: float = 1.0
    num_cpus: float = 1.0
    gpu_memory_gb: float = 2.0
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    max_queued_requests: int = 64
    queue_timeout_s: float = 10.0
    upscale_delay_s: float = 1.0
    downscale_delay_s: float = 20.0
    look_back_period_s: float = 3.0
    slo_s: float = 2.0
    arrivals: str = "poisson"


@dataclass(frozen=True)
class ResearchTrace:
    """Research training jobs: a backlog at midnight and Poisson arrivals, sizes drawn per job.

    ``gpu_hours_median``/``gpu_hours_sigma``: a log-normal job size; ``workers``: GPU counts drawn
    uniformly; ``elastic_share``: jobs that may shrink to half their workers in a burst (the broker's
    proportional lending), the rest yield whole. ``checkpoint_every_s``: training time between
    periodic checkpoints (a yield checkpoints at the step it stops: nothing is redone).
    """

    priority: str = "research"
    roles: tuple[str, ...] = ("train",)
    backlog_jobs: int = 0
    arrivals_per_h: float = 0.0
    workers: tuple[int, ...] = (1,)
    elastic_share: float = 0.0
    gpu_hours_median: float = 4.0
    gpu_hours_sigma: float = 0.0
    cpus_per_worker: float = 1.0
    gpu_memory_gb: float = 0.0
    checkpoint_every_s: float = 600.0


@dataclass(frozen=True)
class PrepTrace:
    """The nightly bulk preprocessing run: ``series`` CT series in tasks of ``series_per_task``.

    A task takes 1 CPU for ``series_per_task × slices_per_series × cpu_ms_per_slice`` (the service
    time's ``prep_cpu_ms_per_slice``). ``max_tasks``: tasks at once (the pipeline's task pool;
    0: as many as fit).
    """

    start_s: float = 3600.0
    series: int = 0
    slices_per_series: int = 300
    series_per_task: int = 64
    roles: tuple[str, ...] = ("prep", "infer", "train")
    storage: str | None = "nvme"
    max_tasks: int = 0


@dataclass(frozen=True)
class FaultTrace:
    """GPU nodes that go bad during the day: ``count`` of them, drawn among ``roles``' nodes.

    From its first bad reading (``temperature_c`` and ``throttle_reasons``, what the guard's
    :func:`~medray.cluster.guard.violations` judges) a node's GPU runs ``slowdown`` × slower
    (``hw_slowdown`` halves the clocks) and fails hard ``fail_after_s`` later (an XID 79, the GPU
    fallen off the bus): the work on it is lost and the node leaves the cluster.
    """

    count: int = 0
    roles: tuple[str, ...] = ("infer", "train")
    fail_after_s: float = 900.0
    slowdown: float = 2.0
    temperature_c: float = 92.0
    throttle_reasons: tuple[str, ...] = ("hw_slowdown",)


@dataclass(frozen=True)
class ServiceTimes:
    """Service times, each from this project's own benchmarks (docs/benchmarks.md; cited in the config).

    A replica is taken ``request_s + study_gpu_s`` per study (its GPU only ``study_gpu_s``; a slowed GPU
    stretches that part only).
    """

    study_gpu_s: float = 0.300
    request_s: float = 0.0
    replica_start_s: float = 4.5
    run_release_s: float = 2.2
    run_restart_s: float = 20.0
    prep_cpu_ms_per_slice: float = 0.78


@dataclass(frozen=True)
class SimConfig:
    """A whole simulated run: the fleet file, the span, the workloads, faults, policies' settings.

    ``bin_s``: the width of the time bins that busy GPU-seconds and latencies are counted in (an hour
    for a day; 10 s for a burst benchmark). ``local_cluster``: one node per type, as ``medray up --local``.
    ``runs``: research jobs named explicitly, besides those drawn from ``research``.
    """

    fleet: Path
    duration_s: float
    seed: int
    lanes: tuple[LaneTrace, ...]
    research: ResearchTrace = field(default_factory=ResearchTrace)
    prep: PrepTrace = field(default_factory=PrepTrace)
    faults: FaultTrace = field(default_factory=FaultTrace)
    service: ServiceTimes = field(default_factory=ServiceTimes)
    broker: BrokerPolicy = field(default_factory=BrokerPolicy)
    guard: GuardThresholds = field(default_factory=GuardThresholds)
    guard_interval_s: float = 5.0
    control_interval_s: float = 0.5
    bin_s: float = 3600.0
    local_cluster: bool = False
    runs: tuple[ResearchJob, ...] = ()


@dataclass(frozen=True)
class ResearchJob:
    """One research job: when it is submitted, its GPUs, the fewest it may shrink to, its work."""

    job_id: str
    submit_s: float
    workers: int
    min_workers: int
    gpu_s: float


@dataclass(frozen=True)
class GpuFault:
    """Node ``node`` (an index into the fleet's GPU nodes of the fault roles) goes bad at ``at_s``."""

    node: int
    at_s: float


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    values = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_lane(lane: LaneTrace) -> None:
    where = f"lane {lane.name!r}"
    if lane.priority not in PRIORITIES[:2]:
        raise ConfigError(f"{where}: priority must be one of {PRIORITIES[:2]} (a lane is clinical work)")
    if not lane.roles or set(lane.roles) - set(ROLES):
        raise ConfigError(f"{where}: roles must be a non-empty list of {ROLES}")
    if min(lane.day_per_s, lane.night_per_s) < 0 or not 0 <= lane.min_replicas <= lane.max_replicas:
        raise ConfigError(f"{where}: rates must be >= 0 and 0 <= min_replicas <= max_replicas")
    if lane.num_gpus <= 0 or lane.target_ongoing_requests <= 0 or lane.slo_s <= 0:
        raise ConfigError(f"{where}: num_gpus, target_ongoing_requests and slo_s must be > 0")
    if lane.arrivals not in ("poisson", "paced"):
        raise ConfigError(f"{where}: arrivals must be 'poisson' or 'paced', got {lane.arrivals!r}")
    for b in lane.bursts:
        if b.duration_s <= 0 or b.factor < 0:
            raise ConfigError(f"{where}: a burst needs duration_s > 0 and factor >= 0")


def config_from_dict(raw: dict[str, Any], *, base: Path) -> SimConfig:
    """A :class:`SimConfig` from a parsed trace config; ``base``: where a relative ``fleet`` path starts."""
    if not isinstance(raw, dict):
        raise ConfigError("a trace config must be a mapping")
    raw = dict(raw)
    for key in ("fleet", "duration_s", "seed", "lanes"):
        if key not in raw:
            raise ConfigError(f"trace config lacks {key!r}")
    lanes = []
    for i, lane in enumerate(raw.pop("lanes") or ()):
        lane = dict(lane) if isinstance(lane, dict) else lane
        if isinstance(lane, dict):
            lane["bursts"] = tuple(_build(Burst, b, f"lanes[{i}].bursts") for b in lane.get("bursts") or ())
        lanes.append(_build(LaneTrace, lane, f"lanes[{i}]"))
    if not lanes or len({lane.name for lane in lanes}) != len(lanes):
        raise ConfigError("trace config needs at least one lane, each with its own name")
    for lane in lanes:
        _check_lane(lane)
    sections = {"research": ResearchTrace, "prep": PrepTrace, "faults": FaultTrace, "service": ServiceTimes,
                "broker": BrokerPolicy, "guard": GuardThresholds}
    built = {key: _build(cls, raw.pop(key), key) for key, cls in sections.items() if key in raw}
    runs = tuple(_build(ResearchJob, r, f"runs[{i}]") for i, r in enumerate(raw.pop("runs", None) or ()))
    fleet = Path(raw.pop("fleet"))
    config = _build(SimConfig, {**raw, "fleet": fleet if fleet.is_absolute() else base / fleet, "lanes": lanes,
                                "runs": runs, **built}, "trace config")
    research = config.research
    if research.priority not in PRIORITIES[2:] or not research.workers or min(research.workers) < 1:
        raise ConfigError(f"research: priority must be one of {PRIORITIES[2:]} and workers >= 1")
    if min(config.duration_s, config.control_interval_s, config.guard_interval_s, config.bin_s) <= 0:
        raise ConfigError("duration_s, control_interval_s, guard_interval_s and bin_s must be > 0")
    return config


def load_config(path: str | Path) -> SimConfig:
    """Read and validate a trace config (YAML); :class:`~medray.errors.ConfigError` says what is wrong."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"trace config {path} not found: pass --config with an existing file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"trace config {path} is not valid YAML: {e}") from None
    return config_from_dict(raw, base=path.parent)


def rate_at(lane: LaneTrace, t: float) -> float:
    """Requests per second of ``lane`` at ``t`` seconds after midnight (day/night curve × bursts)."""
    hour = (t / 3600.0) % 24.0
    shape = (1.0 - math.cos(2.0 * math.pi * (hour - 3.0) / 24.0)) / 2.0  # 0 at 03:00, 1 at 15:00
    rate = lane.night_per_s + (lane.day_per_s - lane.night_per_s) * shape
    for b in lane.bursts:
        if b.start_s <= t < b.start_s + b.duration_s:
            rate *= b.factor
    return rate


def diagnosis_arrivals(lane: LaneTrace, duration_s: float, rng: np.random.Generator,
                       *, step_s: float = 60.0) -> np.ndarray:
    """Sorted arrival times of ``lane`` over ``[0, duration_s)``: Poisson, rate constant per ``step_s``
    (burst edges are steps of their own, so a 30 s burst is exactly 30 s long), or paced.
    """
    if lane.arrivals == "paced":  # benchmarks/burst.py's client: the next one 1 / rate(t) later
        times, t = [], 0.0
        while t < duration_s:
            rate = rate_at(lane, t)
            if rate <= 0:
                t = min((b.start_s for b in lane.bursts if b.start_s > t), default=duration_s)
                continue
            times.append(t)
            t += 1.0 / rate
        return np.array(times)
    edges = set(np.arange(0.0, duration_s, step_s).tolist()) | {duration_s}
    for b in lane.bursts:
        edges |= {min(max(b.start_s, 0.0), duration_s), min(max(b.start_s + b.duration_s, 0.0), duration_s)}
    cuts = np.array(sorted(edges))
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        n = rng.poisson(rate_at(lane, (a + b) / 2.0) * (b - a))
        if n:
            parts.append(rng.uniform(a, b, n))
    return np.sort(np.concatenate(parts)) if parts else np.empty(0)


def research_jobs(config: SimConfig, rng: np.random.Generator) -> list[ResearchJob]:
    """The day's research jobs: the config's explicit ``runs``, the backlog at 0 s and Poisson arrivals."""
    r = config.research
    jobs = list(config.runs)
    n_arrivals = rng.poisson(r.arrivals_per_h * config.duration_s / 3600.0)
    submits = [0.0] * r.backlog_jobs + sorted(rng.uniform(0.0, config.duration_s, n_arrivals).tolist())
    for i, at in enumerate(submits):
        workers = int(rng.choice(r.workers))
        elastic = rng.random() < r.elastic_share and workers > 1
        gpu_h = r.gpu_hours_median * math.exp(r.gpu_hours_sigma * rng.standard_normal())
        jobs.append(ResearchJob(job_id=f"research-{i:03d}", submit_s=at, workers=workers,
                                min_workers=max(1, workers // 2) if elastic else workers, gpu_s=gpu_h * 3600.0))
    return jobs


def gpu_faults(config: SimConfig, n_nodes: int, rng: np.random.Generator) -> list[GpuFault]:
    """``faults.count`` distinct nodes among ``n_nodes`` candidates, each going bad at a uniform time."""
    count = min(config.faults.count, n_nodes)
    nodes = rng.choice(n_nodes, size=count, replace=False) if count else []
    return [GpuFault(node=int(n), at_s=float(rng.uniform(0.0, config.duration_s))) for n in nodes]
