"""The priority broker: decisions as a pure state machine, then lending and returning on the real cluster."""

import json
import time
from pathlib import Path

import pytest
import ray

from medray.broker import actor as broker_actor
from medray.broker import preemption as broker_preemption
from medray.broker.actor import start_broker, stop_broker, submit_run
from medray.broker.client import broker_summary, report_demand, watch_serve
from medray.broker.policy import BrokerCore, BrokerPolicy, Demand, RunRecord
from medray.broker.preemption import report_checkpoint, yield_requested
from medray.cli.status import format_broker_summary
from medray.errors import ConfigError, MedrayError
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile
from tests.conftest import serve_running

# Decisions, without Ray -----------------------------------------------------------------------

POLICY = BrokerPolicy(pressure_grace_s=1.0, calm_s=5.0, demand_ttl_s=10.0)
ANY = WorkloadProfile(roles=("train",), num_cpus=0)


def run(run_id, priority="research", at=0.0):
    return RunRecord(run_id=run_id, priority=priority, entrypoint="m:f", config={}, profile=ANY,
                     submitted_at=at)


def core_with(*runs):
    core = BrokerCore(POLICY)
    for r in runs:
        core.add_run(r)
    return core


def actions(decisions):
    return [(d.action, d.run_id) for d in decisions]


def test_a_starved_lane_asks_the_lowest_priority_newest_runs_to_yield_after_the_grace():
    core = core_with(run("batch-1", "batch", at=3), run("old", at=1), run("new", at=2))
    core.report_demand(Demand("emergency", "emergency", pending=2, queued=4, oldest_s=2.0, at=10.0))
    assert core.tick(10.0) == [] and core.tick(10.9) == []  # within the grace: maybe just placing
    assert actions(core.tick(11.0)) == [("yield", "new"), ("yield", "old")]
    assert core.should_yield("new") and core.should_yield("old") and not core.should_yield("batch-1")
    # Already yielding runs count against the need: nothing more is asked.
    assert core.tick(11.5) == []
    lend = [e for e in core.events if e.action == "lend"]
    assert [e.subject for e in lend] == ["new", "old"]
    assert lend[0].reason == ("lane emergency (emergency): 2 replicas unplaced and 4 requests queued, "
                              "the oldest 2.0s, for 1.0s")


def test_replicas_that_are_only_starting_or_a_young_queue_are_not_starvation():
    core = core_with(run("r"))
    # A deployment coming up: replicas not placed yet, but no request waits.
    core.report_demand(Demand("emergency", "emergency", pending=2, at=0.0))
    assert core.tick(30.0 - 20.0) == []
    # Requests in flight, but none has waited queue_age_s: the lane keeps up.
    core.report_demand(Demand("emergency", "emergency", pending=2, queued=3, oldest_s=0.4, at=10.0))
    assert core.tick(12.0) == []
    # A queue but nothing unplaced: more replicas of the lane's own would not help lending.
    core.report_demand(Demand("emergency", "emergency", pending=0, queued=9, oldest_s=3.0, at=12.0))
    assert core.tick(14.0) == [] and not [e for e in core.events if e.action == "lend"]


def test_the_evidence_must_hold_for_the_whole_grace():
    core = core_with(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=2, oldest_s=1.5, at=0.0))
    assert core.tick(0.5) == []
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=2, oldest_s=0.2, at=0.8))
    assert core.tick(0.9) == []  # the queue drained: the grace starts again
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=2, oldest_s=1.1, at=1.2))
    assert core.tick(1.5) == [] and core.tick(2.1) == []
    assert actions(core.tick(2.2)) == [("yield", "r")]


def test_the_calm_timer_starts_only_when_the_yield_has_completed():
    core = core_with(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=2, oldest_s=2.0, at=0.0))
    assert actions(core.tick(1.0)) == [("yield", "r")]
    # The burst is over at once, but the run takes 20 s to checkpoint and release its GPUs.
    core.report_demand(Demand("emergency", "emergency", pending=0, at=1.5))
    for t in (2.0, 8.0, 15.0, 21.0):
        core.report_demand(Demand("emergency", "emergency", pending=0, at=t))
        assert core.tick(t) == []
    core.run_ended(21.0, "r")
    core.report_demand(Demand("emergency", "emergency", pending=0, at=21.5))
    assert core.tick(21.5) == [] and core.tick(26.0) == []  # calm_s (5 s) counts from 21.5
    core.report_demand(Demand("emergency", "emergency", pending=0, at=26.5))
    assert actions(core.tick(26.5)) == [("resume", "r")]


def scalable(run_id, workers=4, min_workers=1, at=0.0):
    record = run(run_id, at=at)
    record.workers = record.max_workers = workers
    record.min_workers = min_workers
    return record


def test_a_run_of_several_workers_lends_only_what_the_burst_needs_and_grows_back():
    core = core_with(scalable("big", workers=4))
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=4, oldest_s=2.0, at=0.0))
    [lend] = core.tick(1.0)
    assert (lend.action, lend.run_id) == ("yield", "big") and "lends 1 of its 4 workers" in lend.reason
    assert core.tick(1.2) == []  # the one GPU on its way counts against the need
    core.report_checkpoint("big", 30, "/ckpt/30")
    [resume] = core.run_ended(2.0, "big")
    assert (resume.action, resume.workers) == ("resume", 3)  # trains on at once, on 3 workers
    run_ = core.runs["big"]
    assert (run_.state, run_.workers, run_.attempt) == ("running", 3, 2)
    # Calm again: the run grows back to 4 workers by a restart from its next checkpoint.
    core.report_demand(Demand("emergency", "emergency", pending=0, at=3.0))
    assert core.tick(3.0) == []
    [grow] = core.tick(8.5)
    assert (grow.action, grow.run_id) == ("yield", "big") and "grow back from 3 to 4" in grow.reason
    [resume] = core.run_ended(9.0, "big")
    assert resume.workers == 4 and core.runs["big"].workers == 4
    assert [e.action for e in core.events if e.subject == "big"] == [
        "submit", "lend", "resized", "return", "resized"]


def test_a_burst_that_needs_more_than_a_run_can_spare_takes_it_whole():
    core = core_with(scalable("big", workers=2, min_workers=2), scalable("small", workers=2, at=1.0))
    core.report_demand(Demand("emergency", "emergency", pending=3, queued=4, oldest_s=2.0, at=0.0))
    decisions = core.tick(1.0)
    # Newest first: "small" gives both its workers (3 > 2 - 1), then "big" (min 2) all of its.
    assert actions(decisions) == [("yield", "small"), ("yield", "big")]
    assert "lends all 2 of its workers" in decisions[0].reason
    assert core.run_ended(2.0, "small") == [] and core.runs["small"].state == "yielded"


def test_a_lane_only_preempts_lower_classes():
    core = core_with(run("b", "batch"), run("r", "research"))
    core.report_demand(Demand("nightly", "batch", pending=5, queued=4, oldest_s=2.0, at=0.0))
    assert actions(core.tick(2.0)) == [("yield", "r")]  # never the batch run: same class
    core2 = core_with(run("b", "batch"))
    core2.report_demand(Demand("nightly", "batch", pending=1, queued=4, oldest_s=2.0, at=0.0))
    assert core2.tick(2.0) == [] and core2.tick(3.0) == []
    assert [e.action for e in core2.events].count("unmet") == 1  # said once per episode


def test_lent_gpus_return_only_when_nothing_is_pending_or_borrowed_for_the_calm_time():
    core = core_with(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=4, oldest_s=2.0, at=0.0))
    assert actions(core.tick(1.0)) == [("yield", "r")]
    core.report_checkpoint("r", 40, "/ckpt/40")
    core.run_ended(2.0, "r")
    assert core.runs["r"].state == "yielded"
    # The replica runs on the lent node: nothing pending, but borrowed, so no return.
    core.report_demand(Demand("emergency", "emergency", pending=0, running=3, borrowed=1, at=2.0))
    assert core.tick(2.0) == [] and core.tick(9.0) == []
    # Serve scaled back: the calm time starts now.
    core.report_demand(Demand("emergency", "emergency", pending=0, running=2, borrowed=0, at=9.5))
    assert core.tick(9.5) == [] and core.tick(14.0) == []
    assert actions(core.tick(14.5)) == [("resume", "r")]
    assert core.runs["r"].state == "running" and core.runs["r"].attempt == 2
    ret = [e for e in core.events if e.action == "return"][0]
    assert "resume from step 40" in ret.reason


def yielded_to_a_burst(released_at):
    """A core whose research run "r" was asked to yield to an emergency burst at 1 s and released its
    GPUs at ``released_at``."""
    core = core_with(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=2, queued=4, oldest_s=2.0, at=0.0))
    assert actions(core.tick(1.0)) == [("yield", "r")]
    core.run_ended(released_at, "r")
    return core


def test_a_lane_left_on_lent_nodes_while_its_own_have_room_is_asked_to_step_down():
    core = yielded_to_a_burst(released_at=2.0)
    # Bursting: on the lent nodes with no room at home, nothing to reclaim.
    core.report_demand(Demand("emergency", "emergency", pending=0, running=4, borrowed=2, at=3.0))
    assert core.tick(3.0) == [] and core.tick(9.0) == [] and not core.step_down("emergency")
    # Serve scaled down but stopped the replicas at home: room for both, held for the grace.
    core.report_demand(Demand("emergency", "emergency", pending=0, running=2, borrowed=2, room=2, at=10.0))
    core.tick(10.0)
    assert not core.step_down("emergency")
    core.tick(11.0)
    # One at a time: the other keeps serving while the first one's replacement starts at home.
    assert [core.step_down("emergency") for _ in range(2)] == [True, False]
    core.report_demand(Demand("emergency", "emergency", pending=0, running=2, borrowed=1, room=1, at=12.0))
    core.tick(12.0)
    assert [core.step_down("emergency") for _ in range(2)] == [True, False]
    reclaim = [e for e in core.events if e.action == "reclaim"]
    assert [(e.subject, e.reason) for e in reclaim] == [
        ("emergency", "2 units on lent nodes while its own nodes have room for 2 for 1.0s; asks 1 to step down"),
        ("emergency", "1 units on lent nodes while its own nodes have room for 1 for 2.0s; asks 1 to step down")]
    # The replacements run at home: the calm time starts, then research gets its GPUs back.
    core.report_demand(Demand("emergency", "emergency", pending=0, running=2, borrowed=0, at=14.0))
    assert core.tick(14.0) == [] and actions(core.tick(19.0)) == [("resume", "r")]
    assert [e.action for e in core.events].count("reclaim") == 2


def test_a_lane_of_one_unit_on_a_lent_node_still_moves_home():
    core = yielded_to_a_burst(released_at=2.0)
    core.report_demand(Demand("emergency", "emergency", pending=0, running=1, borrowed=1, room=1, at=3.0))
    core.tick(3.0), core.tick(4.0)
    assert [core.step_down("emergency") for _ in range(2)] == [True, False]


def test_no_unmet_while_ray_places_the_lane_on_gpus_just_released():
    core = yielded_to_a_burst(released_at=3.0)
    # Still pending right after the release: Ray is placing the replicas on the freed GPUs.
    core.report_demand(Demand("emergency", "emergency", pending=2, queued=9, oldest_s=3.0, at=3.5))
    core.tick(3.5), core.tick(7.9)
    assert "unmet" not in [e.action for e in core.events]
    core.tick(8.1)  # still unplaced 5 s after the release: nothing more can be lent
    assert [e.action for e in core.events].count("unmet") == 1


def test_a_starving_lane_is_never_asked_to_step_down():
    core = core_with(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=1, borrowed=1, room=1, queued=4,
                              oldest_s=2.0, at=0.0))
    for t in (0.0, 1.0, 2.0, 5.0):
        core.tick(t)
    assert not core.step_down("emergency")
    assert "reclaim" not in [e.action for e in core.events]


def test_stale_pushed_demand_is_ignored():
    core = core_with(run("r"))
    core.report_demand(Demand("clinical", "clinical", pending=3, queued=4, oldest_s=2.0, at=0.0))
    assert core.tick(20.0) == []  # older than demand_ttl_s


def test_run_endings_and_refusals():
    core = core_with(run("r"))
    core.run_ended(1.0, "r", error="ValueError")
    assert core.runs["r"].state == "failed" and core.events[-1].reason == "raised ValueError"
    core.add_run(run("r"))  # a failed run may be submitted again
    with pytest.raises(MedrayError, match="already running"):
        core.add_run(run("r"))
    with pytest.raises(ConfigError, match="is a lane"):
        core.add_run(run("e", "emergency"))
    with pytest.raises(ConfigError, match="unknown priority"):
        Demand("x", "urgent", pending=1)
    with pytest.raises(ConfigError, match=">= 0"):
        Demand("x", "clinical", pending=-1)
    with pytest.raises(ConfigError, match="room and oldest_s must be >= 0"):
        Demand("x", "clinical", pending=1, oldest_s=-0.5)
    with pytest.raises(ConfigError, match="queue age"):
        BrokerPolicy(queue_age_s=-1)
    with pytest.raises(ConfigError, match=r"workers must be \(min, max\)"):
        submit_run("r", "m:f", workers=(3, 2))  # refused before any broker is asked


def test_a_drain_report_becomes_one_event_and_shows_in_the_summary():
    core = BrokerCore(POLICY)
    core.report_node(1.0, "n" * 56, "infer-t4", drained=False, reasons=[], max_temperature_c=50.0)
    core.report_node(2.0, "n" * 56, "infer-t4", drained=True, reasons=["gpu0:temperature"],
                     max_temperature_c=91.0)
    core.report_node(3.0, "n" * 56, "infer-t4", drained=True, reasons=["gpu0:temperature"],
                     max_temperature_c=92.0)
    assert core.node_health()["n" * 56]["max_temperature_c"] == 92.0
    assert [(e.action, e.subject) for e in core.events] == [("drain", "infer-t4")]
    assert [d["node_id"] for d in core.summary(3.0)["drained"]] == ["n" * 56]


def test_summary_formats_for_status():
    assert format_broker_summary(None) == "broker: not running"
    core = core_with(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=4, oldest_s=2.0, at=0.0))
    core.tick(1.0)
    text = format_broker_summary(core.summary(1.0))
    assert text.splitlines()[0].startswith("broker: LENDING")
    assert "emergency > clinical > batch > research" in text
    assert "run  r" in text and "yielding" in text and "lane emergency" in text and "lend" in text


def test_helpers_without_a_broker_are_harmless():
    assert yield_requested("nobody") is False
    report_checkpoint("nobody", 1)  # no broker: nothing to tell, no error


def poll_once(config, *, run_id, resume_from):
    return yield_requested(run_id)


def test_a_resumed_attempt_does_not_inherit_the_yield_answer_of_the_last_one():
    # The attempt that yielded ran in this (reused) worker process: its poll still says "yield".
    broker_preemption._polls["study-z"] = broker_preemption._Poll(answer=True, at=time.monotonic() + 3600)
    assert yield_requested("study-z") is True
    assert broker_actor._run_entrypoint("tests.medray.broker.test_broker:poll_once", {}, "study-z", "ckpt") is False
    assert "study-z" not in broker_preemption._polls


# On the real cluster --------------------------------------------------------------------------

# The simulated H100 is the only node type with 60 GB GPUs: research holds it, the lane wants it.
RESEARCH = WorkloadProfile(roles=("train",), num_cpus=0.1, num_gpus=1, gpu_memory_gb=60)
REPLICA = WorkloadProfile(roles=("train",), num_cpus=0.1, num_gpus=1, gpu_memory_gb=60)
LIVE_POLICY = BrokerPolicy(interval_s=0.2, pressure_grace_s=0.3, calm_s=1.5, demand_ttl_s=60)
ENTRYPOINT = "tests.medray.broker.test_broker:dummy_research"


def dummy_research(config, *, run_id, resume_from):
    """A research run in miniature: steps, a checkpoint every few steps and on a yield request."""
    log = Path(config["log"])
    step = int(Path(resume_from).read_text()) if resume_from else 0
    node_type = ray.get_runtime_context().get_node_labels()["medray.io/node-type"]
    _append(log, {"event": "start", "step": step, "node_type": node_type})

    def checkpoint():
        path = Path(config["dir"]) / f"step-{step:05d}"
        path.write_text(str(step))
        report_checkpoint(run_id, step, str(path))

    while step < config["steps"]:
        time.sleep(config["step_s"])
        step += 1
        _append(log, {"event": "step", "step": step})
        if step % config["every"] == 0:
            checkpoint()
        if yield_requested(run_id, max_age_s=0.1):
            checkpoint()
            _append(log, {"event": "yield", "step": step})
            return {"yielded_at": step}
    _append(log, {"event": "done", "step": step})
    return {"done": step}


def _append(log, record):
    with log.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(predicate, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def starts(log):
    return [r for r in read_log(log) if r["event"] == "start"]


def research_config(tmp_path):
    (tmp_path / "ckpt").mkdir()
    return {"log": str(tmp_path / "log.jsonl"), "dir": str(tmp_path / "ckpt"), "steps": 100_000,
            "step_s": 0.05, "every": 20}


@ray.remote
class Holder:
    def node_type(self):
        return ray.get_runtime_context().get_node_labels()["medray.io/node-type"]


@pytest.fixture
def broker(ray_cluster):
    stop_broker()
    wait_for(lambda: ray.available_resources().get("GPU", 0) >= ray.cluster_resources()["GPU"],
             what="every GPU to be free")
    handle = start_broker(LIVE_POLICY)
    yield handle
    stop_broker()  # its runs are its tasks: they stop with it
    wait_for(lambda: ray.available_resources().get("GPU", 0) >= ray.cluster_resources()["GPU"],
             what="the broker's runs to release their GPUs")


def run_state(run_id):
    return {r["run_id"]: r for r in broker_summary()["runs"]}[run_id]


def test_pushed_demand_borrows_research_gpus_and_gives_them_back(broker, tmp_path):
    config = research_config(tmp_path)
    log = Path(config["log"])
    submit_run("study-a", ENTRYPOINT, config, profile=RESEARCH)
    first = wait_for(lambda: starts(log), what="research to start")[0]
    assert first == {"event": "start", "step": 0, "node_type": "train-h100"}

    # An emergency replica wants the H100 that research holds: it waits, the lane says so.
    replica = Holder.options(**place(REPLICA).ray_options()).remote()
    ready, _ = ray.wait([replica.node_type.remote()], timeout=1)
    assert not ready, "research did not hold the GPU"
    report_demand("emergency", priority="emergency", pending=1, queued=3, oldest_s=2.0)
    assert ray.get(replica.node_type.remote(), timeout=60) == "train-h100"
    wait_for(lambda: run_state("study-a")["state"] == "yielded", what="the run to be yielded")
    yielded_at = [r for r in read_log(log) if r["event"] == "yield"][0]["step"]
    assert run_state("study-a")["checkpoint_step"] == yielded_at

    # The replica still runs on the lent node: the GPU stays lent past the calm time.
    report_demand("emergency", priority="emergency", pending=0, running=1, borrowed=1)
    time.sleep(LIVE_POLICY.calm_s + 1.0)
    assert run_state("study-a")["state"] == "yielded"

    ray.kill(replica)
    report_demand("emergency", priority="emergency", pending=0, running=0, borrowed=0)
    resumed = wait_for(lambda: starts(log)[1:], what="research to resume")[0]
    assert resumed["step"] == yielded_at, "resumed from elsewhere than its yield checkpoint"
    state = run_state("study-a")
    assert state["state"] == "running" and state["attempt"] == 2 and state["yields"] == 1
    actions = [(e["action"], e["subject"]) for e in broker_summary(events=50)["events"]]
    assert [a for a in actions if a[1] == "study-a"] == [
        ("submit", "study-a"), ("lend", "study-a"), ("yielded", "study-a"), ("return", "study-a")]


@pytest.mark.timeout(180)
def test_a_pending_serve_replica_borrows_research_gpus(broker, tmp_path):
    from ray import serve

    config = research_config(tmp_path)
    log = Path(config["log"])
    submit_run("study-b", ENTRYPOINT, config, profile=RESEARCH)
    wait_for(lambda: starts(log), what="research to start")

    @serve.deployment(ray_actor_options=place(REPLICA).ray_options())
    class Replica:
        def __call__(self):
            return ray.get_runtime_context().get_node_labels()["medray.io/node-type"]

    serve_was_running = serve_running()
    serve.start(proxy_location="Disabled")
    try:
        watch_serve("emergency", app="broker-test", deployment="Replica", priority="emergency")
        # A pending replica alone is a deployment starting: without a queue the broker lends nothing.
        serve._run(Replica.bind(), name="broker-test", route_prefix=None, _blocking=False)
        wait_for(lambda: [d for d in broker_summary()["lanes"] if d["pending"] == 1],
                 what="the lane to show its unplaced replica")
        time.sleep(LIVE_POLICY.pressure_grace_s + 1.0)
        assert run_state("study-b")["state"] == "running"
        # A front door reports requests waiting 2 s in the lane: now it is starvation.
        broker.report_queue.remote("emergency", "test-front-door", 3, 2.0)
        # serve.run returns once the replica runs, which it can only do on the research GPU.
        handle = serve.run(Replica.bind(), name="broker-test", route_prefix=None)
        assert handle.remote().result(timeout_s=30) == "train-h100"
        assert run_state("study-b")["state"] in ("yielding", "yielded")
        lane = wait_for(lambda: [d for d in broker_summary()["lanes"] if d["borrowed"] == 1],
                        what="the lane to show its borrowed replica")[0]
        assert (lane["lane"], lane["source"], lane["pending"], lane["queued"]) == ("emergency", "serve", 0, 3)
        serve.delete("broker-test")
        resumed = wait_for(lambda: starts(log)[1:], what="research to resume")[0]
        yielded_at = [r for r in read_log(log) if r["event"] == "yield"][0]["step"]
        assert resumed["step"] == yielded_at
    finally:
        serve.delete("broker-test")
        if not serve_was_running:
            serve.shutdown()


def _gpus_of(node_type):
    return sum(n["Resources"].get("GPU", 0) for n in ray.nodes()
               if n["Alive"] and n["Labels"].get("medray.io/node-type") == node_type)


@pytest.mark.timeout(180)
def test_a_replica_left_on_a_lent_node_steps_down_once_its_lane_has_room_at_home(broker):
    """Serve may keep a replica on a lent node when it scales down (it ranks nodes by replica
    counts); the broker asks it to step down and Serve places its replacement at home."""
    from ray import serve

    from medray.broker.client import asked_to_step_down

    home, lent = "infer-l4", "train-h100"
    gpus = _gpus_of(home)
    blocker = ray.remote(num_gpus=gpus, num_cpus=0)(type("Blocker", (), {"ready": lambda self: True}))
    blocker = blocker.options(label_selector={"medray.io/node-type": home}).remote()
    ray.get(blocker.ready.remote(), timeout=60)

    @serve.deployment(health_check_period_s=0.5, ray_actor_options={
        "num_cpus": 0.1, "num_gpus": gpus, "label_selector": {"medray.io/node-type": home},
        "fallback_strategy": [{"label_selector": {"medray.io/node-type": lent}}]})
    class Stepper:
        stepping_down = False

        async def check_health(self):  # as the diagnosis lanes' replicas do: once told, for good
            self.stepping_down = self.stepping_down or await asked_to_step_down("stepper")
            if self.stepping_down:
                raise RuntimeError("stepping down")

        def __call__(self):
            return ray.get_runtime_context().get_node_labels()["medray.io/node-type"]

    serve_was_running = serve_running()
    serve.start(proxy_location="Disabled")
    try:
        watch_serve("stepper", app="stepper-test", deployment="Stepper", priority="emergency",
                    node_types=[home, lent], unit={"CPU": 0.1, "GPU": gpus})
        handle = serve.run(Stepper.bind(), name="stepper-test", route_prefix=None)
        assert handle.remote().result(timeout_s=30) == lent  # home is full: on the lent node
        time.sleep(LIVE_POLICY.pressure_grace_s + 1.0)
        assert "reclaim" not in [e["action"] for e in broker_summary(events=50)["events"]]

        ray.kill(blocker)  # room at home now
        wait_for(lambda: handle.remote().result(timeout_s=30) == home, timeout_s=90,
                 what="the replica to move home")
        reclaims = [e for e in broker_summary(events=50)["events"] if e["action"] == "reclaim"]
        assert [(e["subject"], e["reason"].rsplit(" for ", 1)[0]) for e in reclaims] == [
            ("stepper", "1 units on lent nodes while its own nodes have room for 1")]
    finally:
        serve.delete("stepper-test")
        if not serve_was_running:
            serve.shutdown()
        ray.kill(blocker)


def _agree(rank, world, store_path, out_dir):
    import torch.distributed as dist

    from medray.broker.preemption import _all_ranks_agree

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        Path(out_dir, f"rank{rank}").write_text(json.dumps([_all_ranks_agree(rank == 0),
                                                           _all_ranks_agree(False)]))
    finally:
        dist.destroy_process_group()


def test_under_ddp_one_rank_seeing_a_yield_stops_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_agree, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    answers = [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(2)]
    assert answers == [[True, False], [True, False]]
