"""The measured burst: research holds the training GPUs, emergency load jumps 10×, the broker lends them.

One *phase* (:func:`run_phase`) on the connected local multi-role cluster:

1. the diagnosis service is deployed (:func:`start_service`) with a routine lane of two replicas
   and an emergency lane of ``reserved`` replicas that may grow to ``max_replicas``: together they
   fill the inference nodes' GPUs;
2. a real research run (``workloads.research.preemptible``: Ray Train, two DDP workers) holds both
   training GPUs;
3. open-loop HTTP load: routine and emergency studies at steady rates, then emergency ×
   ``burst_factor`` for ``burst_s`` seconds, then steady again.

With ``broker=True`` the priority broker watches both lanes: the emergency replicas Serve adds in
the burst cannot be placed on the full inference nodes, so the broker asks the research run to
yield, the replicas land on the freed training GPUs, and after the burst Serve scales back and the
broker resumes research from its checkpoint. With ``broker=False`` (the *static partition*) the
lanes may only use inference nodes and the broker does not watch them (it only starts and stops
the research run): the same load meets the reserved replicas alone, and research runs on undisturbed.

The harness drives the two workloads as an operator does, importing neither: the service is
deployed by its Serve import path with its documented ``args`` and reached over its HTTP API; the
research run is handed to the broker by its entrypoint with a plain training config.

GPUs on the local cluster are simulated (Ray schedules them, torch computes on the CPU): the
service and the training steps are given a real GPU's busy time (``gpu_ms`` per volume,
``step_ms`` per step) so that what is measured is placement and queueing, not the CPU count of the
machine. ``benchmarks/burst.py`` runs both phases and compares them (:mod:`workloads.burst.report`);
:func:`workloads.burst.demo.stage` is the demo's short burst. Everything recorded is timing,
status codes, node types and step counts: no study content or identifier leaves the service's
answers here.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medray.broker.actor import serve_replicas, start_broker, stop_broker, submit_run
from medray.broker.client import broker_summary, get_broker
from medray.broker.lanes import LANE_PREFIXES, LANES, lane_url
from medray.broker.policy import BrokerPolicy
from medray.cluster.local_serve import LocalApp, serve_local
from medray.cluster.node_types import NODE_TYPE_LABEL, load_node_types
from medray.errors import ConfigError, MedrayError

__all__ = ["SERVICE_IMPORT_PATHS", "SERVICE_APP", "LANE_APPS", "LANE_DEPLOYMENTS", "RESEARCH_ENTRYPOINT", "LEND_ROLE",
           "BurstPlan", "Kit", "PhaseResult", "DEMO_PLAN", "prepare_kit", "diagnosis_args", "submit_research",
           "start_service", "stop_service", "run_phase", "burst_episode"]

# The diagnosis service as deploy/serve-diagnosis.yaml deploys it: each lane's application (import
# path and name) and the deployment serving it (docs/diagnosis.md).
SERVICE_IMPORT_PATHS = {"routine": "workloads.diagnosis:app", "emergency": "workloads.diagnosis:emergency_app"}
SERVICE_APP = "diagnosis"
LANE_APPS = {"routine": SERVICE_APP, "emergency": f"{SERVICE_APP}-emergency"}
LANE_DEPLOYMENTS = {"routine": "ingress", "emergency": "emergency"}
# The research run's broker entrypoint (docs/elasticity.md): called with a TrainConfig as a dict.
RESEARCH_ENTRYPOINT = "workloads.research.preemptible:run"
LEND_ROLE = "train"  # the node role whose GPUs the broker lends (research's)


@dataclass(frozen=True)
class BurstPlan:
    """The scenario. Defaults: the benchmark's (one phase takes about two minutes on 2 cores)."""

    routine_rps: float = 2.0
    emergency_rps: float = 1.0
    burst_factor: float = 10.0
    before_s: float = 15.0  # steady load before the burst
    burst_s: float = 30.0
    after_s: float = 5.0  # steady load after the burst (with the broker: after research runs again)
    after_max_s: float = 90.0  # the longest the phase waits after the burst for research to run again
    gpu_ms: float = 300.0  # simulated GPU time per served volume: 3.3 studies/s per replica
    step_ms: float = 250.0  # simulated GPU time per training step
    reserved: int = 2  # emergency replicas kept on inference nodes
    # Beyond the reserved ones: enough for the 10x burst (4 x 3.3 studies/s); more replicas starting
    # at once on this machine's 2 shared cores start slower (see docs/benchmarks.md, "Burst").
    max_replicas: int = 4
    downscale_delay_s: float = 20.0  # the emergency lane's; plus the broker's calm_s = give-back
    checkpoint_every: int = 5  # research checkpoint interval, in epochs
    policy: BrokerPolicy = field(default_factory=BrokerPolicy)

    def rate(self, lane: str, t: float) -> float:
        """Requests per second of ``lane`` at ``t`` seconds into the phase."""
        if lane == "routine":
            return self.routine_rps
        bursting = self.before_s <= t < self.burst_end
        return self.emergency_rps * (self.burst_factor if bursting else 1.0)

    @property
    def burst_end(self) -> float:
        return self.before_s + self.burst_s


# The demo's short burst: quick to lend and to give back. On 2 shared cores a replica takes ~20 s
# to start and a Ray Train run 60-90 s to start again: the burst lasts long enough for the borrowed
# replicas to answer, and the stage waits up to 150 s after it for research to run again.
DEMO_PLAN = BurstPlan(before_s=3.0, burst_s=20.0, after_s=2.0, after_max_s=150.0, downscale_delay_s=3.0,
                      checkpoint_every=2, policy=BrokerPolicy(calm_s=2.0))


@dataclass(frozen=True)
class Kit:
    """What every phase uses: the service's files, one request body, the research run's config."""

    work: Path
    args: dict[str, Any]  # DiagnosisArgs without lanes
    token: str
    body: bytes
    content_type: str
    research: dict[str, Any]  # a TrainConfig of workloads.research, as a dict


def prepare_kit(work: str | Path, data: str | Path, labels: str | Path, plan: BurstPlan, *,
                seed: int = 0) -> Kit:
    """Registry (a seeded small NoduleNet), token and key under ``work``, and one small synthetic
    study to send; the research config trains on ``data`` (volume shards) and ``labels``."""
    import torch

    from medray.data.cohort import generate_cohort
    from medray.dicom.multipart import encode_series
    from medray.models import DEFAULT_INPUT_SPEC, NoduleNetConfig, build_model
    from medray.models.registry import register
    from medray.privacy.pseudonym import ensure_key_file
    from medray.security.tokens import add_client

    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The answers' quality does not matter here, only their timing: untrained seeded weights.
    torch.manual_seed(seed)
    config = NoduleNetConfig(width=8)
    torch.save(build_model(config).state_dict(), work / "weights.pt")
    ref = register(work / "registry", "burst", work / "weights.pt", input_spec=DEFAULT_INPUT_SPEC,
                   model_config=config.to_dict()).manifest.ref
    tokens = work / "tokens.json"
    tokens.unlink(missing_ok=True)
    token = add_client(tokens, "burst-load", ["clinic", "emergency"])
    # The synthetic study carries canary PHI, as real ones carry PHI: only its bytes are kept.
    with tempfile.TemporaryDirectory() as tmp:
        generate_cohort(Path(tmp), patients=1, seed=seed, rows=64, slices=10)
        files = sorted(Path(tmp, "dicom").rglob("*.dcm"))
        body, content_type = encode_series([f.read_bytes() for f in files])
    args = {
        "registry": str(work / "registry"),
        "tokens": str(tokens),
        "audit_log": str(work / "audit.jsonl"),
        "key_file": str(ensure_key_file(work / "deid.key").resolve()),
        "experts": {"CT/CHEST": ref, "CT/*": ref},
        "simulated_gpu_ms": plan.gpu_ms,
    }
    research = {
        "data": str(data), "labels": str(labels), "epochs": 100_000, "workers": 2, "cpus_per_worker": 1,
        "gpus_per_worker": 1, "batch_size": 4, "width": 8, "val_fraction": 0.25,
        "checkpoint_every": plan.checkpoint_every, "keep_checkpoints": 2, "max_failures": 0,
        "storage_path": str(work / "runs"), "simulated_gpu_ms": plan.step_ms, "seed": seed}
    return Kit(work=work, args=args, token=token, body=body, content_type=content_type, research=research)


def diagnosis_args(kit: Kit, plan: BurstPlan, *, borrow: bool) -> dict[str, Any]:
    """The service's args: two routine replicas and ``reserved`` emergency replicas fill the inference
    GPUs (half a GPU each); ``borrow`` lets the lanes use training nodes too."""
    roles = ["infer", LEND_ROLE] if borrow else ["infer"]
    replica = {"num_cpus": 0.5, "num_gpus": 0.5, "gpu_memory_gb": 2, "roles": roles}
    return {**kit.args, "broker": borrow, "lanes": {
        "routine": {**replica, "min_replicas": 2, "max_replicas": 2},
        "emergency": {**replica, "min_replicas": plan.reserved, "max_replicas": plan.max_replicas,
                      "target_ongoing_requests": 1, "max_ongoing_requests": 8, "max_queued_requests": 64,
                      "upscale_delay_s": 0.5, "downscale_delay_s": plan.downscale_delay_s,
                      "look_back_period_s": 2.0},
    }}


def submit_research(run_id: str, config: dict[str, Any]) -> None:
    """Hand the research run ``config`` (a TrainConfig as a dict) to the running broker as ``run_id``."""
    submit_run(run_id, RESEARCH_ENTRYPOINT, config, priority="research")


def start_service(kit: Kit, plan: BurstPlan, *, borrow: bool) -> str:
    """Deploy the diagnosis service with :func:`diagnosis_args` on a free local port; its base URL.

    With a broker running and ``borrow``, the service hands its lanes to the broker as it deploys.
    """
    apps = [LocalApp(SERVICE_IMPORT_PATHS[lane], LANE_APPS[lane], LANE_PREFIXES[lane] or "/") for lane in LANES]
    return serve_local(apps, diagnosis_args(kit, plan, borrow=borrow))


def stop_service() -> None:
    """Shut Serve down, freeing the service's GPUs."""
    from ray import serve

    # The broker watching the lanes is the phase's own, stopped next: it sees no replicas meanwhile.
    serve.shutdown()


@dataclass
class PhaseResult:
    """What one phase measured. Times are seconds since the load started (``t0``, wall clock)."""

    name: str
    broker: bool
    t0: float
    requests: list[dict[str, Any]]  # lane, sent, latency_s, status, node_type
    samples: list[dict[str, Any]]  # t, per lane: pending and live replicas by node type
    progress: list[dict[str, float]]  # t, step (research, rank 0)
    events: list[dict[str, Any]]  # t, action, subject, reason (broker)
    steps_per_epoch: int | None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Load -----------------------------------------------------------------------------------------


def _load(url: str, kit: Kit, plan: BurstPlan, t0: float, stop: threading.Event,
          records: list[dict[str, Any]]) -> None:
    """Open-loop load on both lanes from wall-clock ``t0`` until ``stop`` is set (then waits for answers)."""
    import httpx

    async def one(client: httpx.AsyncClient, lane: str, sent: float) -> None:
        start = time.time()
        status, node_type = 0, None
        try:
            r = await client.post(lane_url(lane, "/v1/diagnose"), content=kit.body,
                                  headers={"Content-Type": kit.content_type})
            status = r.status_code
            if status == 200:
                node_type = r.json()["served_by"]["node_type"]
        except httpx.HTTPError:
            pass  # status 0: no answer (timeout, connection refused) counts as failed
        records.append({"lane": lane, "sent": sent, "latency_s": time.time() - start, "status": status,
                        "node_type": node_type})

    async def lane_loop(client: httpx.AsyncClient, lane: str, tasks: set[asyncio.Task[None]]) -> None:
        t = 0.0
        while not stop.is_set():
            delay = t0 + t - time.time()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.2))
                continue
            task = asyncio.create_task(one(client, lane, t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            t += 1.0 / plan.rate(lane, t)

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                     headers={"Authorization": f"Bearer {kit.token}"}) as client:
            await asyncio.gather(*(lane_loop(client, lane, tasks) for lane in LANES))
            if tasks:
                await asyncio.wait(set(tasks), timeout=70)

    asyncio.run(main())


def _warm_up(url: str, kit: Kit) -> None:
    """One answer per lane before measuring (models loaded, connections open)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {kit.token}"}) as client:
        for lane in LANES:
            for _ in range(2):
                r = client.post(lane_url(lane, "/v1/diagnose"), content=kit.body,
                                headers={"Content-Type": kit.content_type})
                if r.status_code != 200:
                    raise MedrayError(f"the diagnosis service answered {r.status_code} while warming up the "
                                      f"{lane} lane: see the Serve logs")


# One phase ------------------------------------------------------------------------------------


def _node_types() -> dict[str, str]:
    import ray

    return {n["NodeID"]: n["Labels"].get(NODE_TYPE_LABEL, "?") for n in ray.nodes() if n["Alive"]}


def _sample(t: float, node_types: dict[str, str]) -> dict[str, Any]:
    sample: dict[str, Any] = {"t": t}
    for lane in LANES:
        pending, nodes = serve_replicas(LANE_APPS[lane], LANE_DEPLOYMENTS[lane])
        by_type: dict[str, int] = {}
        for node in nodes:
            name = node_types.get(node, "?")
            by_type[name] = by_type.get(name, 0) + 1
        sample[lane] = {"pending": pending, "by_type": by_type}
    return sample


def _read_progress(path: Path, t0: float) -> list[dict[str, float]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"t": r["t"] - t0, "step": r["step"], "epoch": r["epoch"]} for r in lines]


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise MedrayError(f"the burst scenario timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)
    return value


def _gpus_free() -> bool:
    import ray

    return ray.available_resources().get("GPU", 0) >= ray.cluster_resources().get("GPU", 0)


def _steps_per_epoch(progress: list[dict[str, float]]) -> int | None:
    """Steps of a full epoch, read off the progress log (None before an epoch finished)."""
    counts: dict[int, int] = {}
    for p in progress:
        counts[int(p["epoch"])] = counts.get(int(p["epoch"]), 0) + 1
    complete = sorted(counts)[1:-1]  # the first may be a resumed one, the last unfinished
    return max(counts[e] for e in complete) if complete else None


def run_phase(kit: Kit, plan: BurstPlan, *, broker: bool, name: str,
              say: Callable[[str], None] = print) -> PhaseResult:
    """Run one phase (see the module docstring) on the connected cluster and measure it.

    Everything it starts (broker, service, research run) is stopped before it returns.
    """
    if get_broker() is not None:
        raise ConfigError("a priority broker is already running: the burst phases start their own "
                          "(stop it with medray.broker.actor.stop_broker())")
    progress_log = kit.work / f"{name}-progress.jsonl"
    progress_log.unlink(missing_ok=True)
    research = {**kit.research, "progress_log": str(progress_log)}
    t_setup = time.monotonic()
    # The broker starts and stops the research run in both phases; only with ``broker`` does it
    # watch the lanes, and so lend. (A run stops cleanly when asked: killed, Ray Train would leave
    # its GPUs reserved on a cluster without a dashboard.)
    start_broker(plan.policy)
    try:
        submit_research(f"burst-{name}", research)
        # The service deploys while the research run starts.
        url = start_service(kit, plan, borrow=broker)
        _wait(lambda: progress_log.exists(), 300, "the research run's first step")
        _warm_up(url, kit)
        say(f"{name}: service and research up in {time.monotonic() - t_setup:.0f} s; load for "
            f"{plan.before_s:.0f} s, then emergency x{plan.burst_factor:g} for {plan.burst_s:.0f} s")
        node_types = _node_types()
        requests: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        stop = threading.Event()
        t0 = time.time() + 0.5
        loader = threading.Thread(target=_load, args=(url, kit, plan, t0, stop, requests), daemon=True)
        loader.start()
        events: list[dict[str, Any]] = []
        while True:
            now = time.time() - t0
            samples.append(_sample(now, node_types))
            events = _events(t0)
            # Without lending research never stopped: the phase ends after_s after the burst.
            # A quiet run (factor 1) has no burst to lend for: it ends after_s after its window.
            lending = broker and plan.burst_factor > 1
            resumed = _resumed(events, progress_log, t0, plan.before_s) if lending else plan.burst_end
            if resumed is not None and now >= max(plan.burst_end, resumed) + plan.after_s:
                break
            if now >= plan.burst_end + plan.after_max_s:
                say(f"{name}: research did not run again within {plan.after_max_s:.0f} s after the burst")
                break
            time.sleep(0.5)
        stop.set()
        loader.join(timeout=90)
        progress = _read_progress(progress_log, t0)
    finally:
        stop_service()
        stop_broker(grace_s=120)
    _wait(_gpus_free, 120, "the phase's GPUs to be released")
    result = PhaseResult(name=name, broker=broker, t0=t0, requests=requests, samples=samples,
                         progress=progress, events=events, steps_per_epoch=_steps_per_epoch(progress))
    result.metrics = _metrics(result, plan)
    return result


def _events(t0: float) -> list[dict[str, Any]]:
    summary = broker_summary(events=200)
    if summary is None:
        return []
    return [{**e, "t": e["at"] - t0} for e in summary["events"]]


def _resumed(events: list[dict[str, Any]], progress_log: Path, t0: float, burst_start: float) -> float | None:
    """When research first trained after the burst's lending episode returned its GPUs (None: not yet)."""
    episode = burst_episode(events, burst_start)
    if episode is None or episode[2] is None:
        return None
    after = [p["t"] for p in _read_progress(progress_log, t0) if p["t"] > episode[2]]
    return after[0] if after else None


# Metrics --------------------------------------------------------------------------------------


def _percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _window(requests: list[dict[str, Any]], lane: str, start: float, end: float) -> dict[str, Any]:
    chosen = [r for r in requests if r["lane"] == lane and start <= r["sent"] < end]
    ok = [r["latency_s"] for r in chosen if r["status"] == 200]
    p50, p99 = _percentiles(ok)
    return {"requests": len(chosen), "failed": len(chosen) - len(ok), "p50_ms": p50, "p99_ms": p99}


def burst_episode(events: Sequence[Mapping[str, Any]],
                  burst_start: float) -> tuple[float, float, float | None] | None:
    """(lend, yielded, return) times of the measured burst's lending episode, from broker events.

    Only events at or after ``burst_start`` count, each after the one before it, so that no time can
    come out negative and nothing from before the burst (a lend at start-up, an earlier episode) is
    taken for the burst's. None when the broker lent nothing during the burst or no run finished yielding.
    """
    lent = next((e["t"] for e in events if e["action"] == "lend" and e["t"] >= burst_start), None)
    if lent is None:
        return None
    # A run that lent only some of its workers restarts on the rest ("resized") instead of "yielded".
    yielded = next((e["t"] for e in events if e["action"] in ("yielded", "resized") and e["t"] >= lent), None)
    if yielded is None:
        return None
    returned = next((e["t"] for e in events if e["action"] == "return" and e["t"] >= yielded), None)
    return lent, yielded, returned


def _metrics(result: PhaseResult, plan: BurstPlan) -> dict[str, Any]:
    roles = {t.name: t.role for t in load_node_types()}
    requests = result.requests
    emergency = {
        "before": _window(requests, "emergency", 0.0, plan.before_s),
        "during": _window(requests, "emergency", plan.before_s, plan.burst_end),
        "after": _window(requests, "emergency", plan.burst_end, float("inf")),
    }
    routine = _window(requests, "routine", 0.0, float("inf"))
    borrowed = [r["sent"] + r["latency_s"] for r in requests
                if r["lane"] == "emergency" and r["status"] == 200 and r["sent"] >= plan.before_s
                and roles.get(r["node_type"]) == LEND_ROLE]
    replicas = [sum(s["emergency"]["by_type"].values()) for s in result.samples
                if plan.before_s <= s["t"] < plan.burst_end]
    metrics: dict[str, Any] = {
        "extra_replicas_serving_s": min(borrowed) - plan.before_s if borrowed else None,
        "emergency_replicas_max": max(replicas, default=0),
        "emergency": emergency,
        "routine": routine,
        "steps_per_epoch": result.steps_per_epoch,
        "checkpoint_interval_steps": (result.steps_per_epoch * plan.checkpoint_every
                                      if result.steps_per_epoch else None),
        # What lending costs research: the steps it trained while the burst lasted.
        "research_steps_in_burst": sum(plan.before_s <= p["t"] < plan.burst_end for p in result.progress),
    }
    lends = [e["t"] for e in result.events if e["action"] == "lend"]
    # Lends before the burst answered no burst: counted, never taken as the burst's lend.
    metrics["lends_before_burst"] = sum(t < plan.before_s for t in lends)
    metrics["lends"] = len(lends)
    episode = burst_episode(result.events, plan.before_s)
    placed = [s["t"] for s in result.samples if s["t"] >= plan.before_s
              and any(roles.get(t) == LEND_ROLE for t in s["emergency"]["by_type"])]
    if episode is not None:
        lent, yielded, returned = episode
        before = [p for p in result.progress if p["t"] <= yielded]
        after = [p for p in result.progress if returned is not None and p["t"] > returned]
        metrics.update(
            lend_s=lent - plan.before_s,
            extra_replicas_placed_s=placed[0] - plan.before_s if placed else None,
            # 0 when the GPUs came back before the burst was over.
            returned_s=max(0.0, returned - plan.burst_end) if returned is not None else None,
            research_running_again_s=(max(0.0, after[0]["t"] - plan.burst_end) if after else None),
            # Steps trained before the yield that the resumed run trains again.
            steps_redone=(before[-1]["step"] - (after[0]["step"] - 1)) if before and after else None,
        )
    return metrics


