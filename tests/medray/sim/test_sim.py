"""The fleet simulator (issue 21): pure, no Ray; small traces, except the shipped configs' checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from medray.cluster.node_types import load_node_types
from medray.errors import ConfigError
from medray.sim import calibrate, load_config, simulate, summarize, table
from medray.sim.calibration import RECORDED
from medray.sim.engine import Simulation
from medray.sim.fleet import fleet_nodes
from medray.sim.policies import FIRST_FIT, MEDRAY, POLICIES, STATIC
from medray.sim.trace import config_from_dict, diagnosis_arrivals

REPO = Path(__file__).resolve().parents[3]
SIM = REPO / "benchmarks" / "sim"

FLEET = """
head_node_type: head
available_node_types:
  head:
    resources: {CPU: 4}
    labels: {medray.io/role: coordinator, medray.io/storage: nvme, medray.io/site: main,
             medray.io/node-type: head, medray.io/price-per-hour: "0.2"}
  cpu-prep:
    resources: {CPU: 8}
    max_workers: 1
    labels: {medray.io/role: prep, medray.io/storage: nvme, medray.io/site: main,
             medray.io/node-type: cpu-prep, medray.io/price-per-hour: "0.9"}
  infer-t4:
    resources: {CPU: 4, GPU: 1}
    min_workers: 3
    max_workers: 3
    labels: {medray.io/role: infer, medray.io/storage: nvme, medray.io/site: main, medray.io/node-type: infer-t4,
             medray.io/accelerator: T4, medray.io/gpu-memory-gb: "16", medray.io/price-per-hour: "0.5"}
  train-a100:
    resources: {CPU: 8, GPU: 1}
    max_workers: 2
    labels: {medray.io/role: train, medray.io/storage: nvme, medray.io/site: main, medray.io/node-type: train-a100,
             medray.io/accelerator: A100, medray.io/gpu-memory-gb: "40", medray.io/price-per-hour: "4.1"}
"""


def _lane(name: str, priority: str, rate: float, **kw: object) -> dict[str, object]:
    return {"name": name, "priority": priority, "day_per_s": rate, "night_per_s": rate, "roles": ["infer", "train"],
            "arrivals": "paced", **kw}


@pytest.fixture
def trace(tmp_path: Path) -> dict[str, object]:
    """10 minutes: emergency 2/s with a 10x burst from 120 s for 60 s, routine 1/s, two 1-GPU research runs."""
    (tmp_path / "fleet.yaml").write_text(FLEET)
    return {
        "fleet": str(tmp_path / "fleet.yaml"), "duration_s": 600, "seed": 3, "bin_s": 60,
        "service": {"study_gpu_s": 0.3, "replica_start_s": 4.5, "run_release_s": 2.0, "run_restart_s": 10.0},
        "lanes": [_lane("emergency", "emergency", 2.0, min_replicas=2, max_replicas=5,
                        bursts=[{"start_s": 120, "duration_s": 60, "factor": 10}], target_ongoing_requests=1,
                        upscale_delay_s=0.5, look_back_period_s=2, max_queued_requests=64),
                  _lane("routine", "clinical", 1.0, min_replicas=1, max_replicas=1, slo_s=30)],
        "runs": [{"job_id": "r1", "submit_s": 0, "workers": 1, "min_workers": 1, "gpu_s": 1e6},
                 {"job_id": "r2", "submit_s": 0, "workers": 1, "min_workers": 1, "gpu_s": 1e6}],
        "research": {"roles": ["train"], "cpus_per_worker": 2, "checkpoint_every_s": 30},
    }


def _config(raw: dict[str, object]):
    return config_from_dict(raw, base=SIM)


def test_shipped_fleet_is_the_issue_scale():
    nodes = fleet_nodes(load_config(SIM / "day.yaml"))
    gpus = {role: sum(n.gpus for n in nodes if n.node_type.role == role) for role in ("train", "infer", "edge")}
    assert len(nodes) == 169
    assert gpus == {"train": 32, "infer": 84, "edge": 12}  # 96 inference GPUs with the partner sites' 12
    assert sum(1 for n in nodes if not n.gpus and not n.node_type.is_head) == 40
    assert {n.node_type.site for n in nodes} == {"main", "partner-a", "partner-b"}
    assert {t.name for t in load_node_types(SIM / "fleet.yaml")} >= {"cpu-prep", "infer-t4", "train-h100"}


def test_same_seed_same_day_other_seed_other_day(trace):
    config = _config({**trace, "lanes": [dict(trace["lanes"][0], arrivals="poisson"), trace["lanes"][1]]})
    a, b = summarize(simulate(config, MEDRAY)), summarize(simulate(config, MEDRAY))
    strip = lambda s: replace(s, wall_s=0.0, cpu_s=0.0)  # noqa: E731
    assert strip(a) == strip(b)
    c = summarize(simulate(config, MEDRAY, seed=4))
    assert c.lanes[0].arrivals != a.lanes[0].arrivals


def test_every_request_is_answered_or_refused_once(trace):
    overload = _config({**trace, "lanes": [dict(trace["lanes"][0], max_queued_requests=8, queue_timeout_s=3),
                                           trace["lanes"][1]],
                        "faults": {"count": 2, "roles": ["infer"], "fail_after_s": 60}})
    for policy in POLICIES:
        log = simulate(overload, policy)
        for i in range(len(log.lanes)):
            assert log.served[i] + log.rejected[i] + log.timed_out[i] + log.failed[i] == log.arrivals[i]
            assert log.served[i] == sum(len(b) for b in log.latencies[i])
        assert sum(log.rejected) + sum(log.timed_out) > 0  # the overload refused some: the count was tested


def test_static_partition_never_lends(trace):
    config = _config(trace)
    log = simulate(config, STATIC)
    assert not log.broker_events
    assert not [e for e in log.events if e[1].startswith("borrowed")]
    assert log.research_lost_preempt_gpu_s == 0
    # Both research runs trained the whole day through the burst: 2 GPUs x (600 s - their 10 s start).
    assert log.research_done_gpu_s == pytest.approx(2 * (config.duration_s - config.service.run_restart_s))
    assert summarize(log).busy_pct_by_kind["train-a100"] > 95


def test_medray_lends_in_the_burst_and_gives_back(trace):
    config = _config(trace)
    log = simulate(config, MEDRAY)
    lends = [e.at for e in log.broker_events if e.action == "lend"]
    returns = [e.at for e in log.broker_events if e.action == "return"]
    assert lends and all(120 < t < 180 for t in lends), lends  # only in the burst
    assert returns and min(returns) > 180, returns  # after it
    serving = [t for t, what, _ in log.events if what == "borrowed-serving"]
    assert serving and 120 < min(serving) < 150
    starts = [t for t, what, _ in log.events if what == "run-start"]
    assert max(starts) >= min(returns)  # the research run trains again
    static = summarize(simulate(config, STATIC))
    medray = summarize(log)
    assert medray.lanes[0].p99_s < static.lanes[0].p99_s


def test_a_tripped_guard_takes_the_nodes_work_elsewhere(trace):
    # One inference GPU going bad at a seeded time under a steady load, a training GPU free: the guard
    # drains it and Serve moves its replica there before the GPU is lost; without the guard the replica
    # serves on it until then.
    raw = {**trace, "lanes": [dict(trace["lanes"][0], day_per_s=6.0, night_per_s=6.0, bursts=[], min_replicas=3,
                                   max_replicas=3),
                              dict(trace["lanes"][1], roles=["train"])],
           "faults": {"count": 1, "roles": ["infer"], "fail_after_s": 120}, "runs": []}  # a free training GPU
    config = _config(raw)
    sim = Simulation(config, MEDRAY)
    log = sim.run()
    (degraded, node_id), = [(t, s) for t, what, s in log.events if what == "gpu-degraded"]
    drains = [t for t, what, s in log.events if what == "drain" and s == node_id]
    assert drains and drains[0] - degraded <= config.guard_interval_s * config.guard.drain_after
    assert [e for e in log.broker_events if e.action == "drain"]
    assert sum(log.failed) == 0
    assert not [e for e in log.events if e[1] == "replica-lost"]  # nothing was left on it when it failed
    node = next(n for n in sim.nodes if n.spec.node_id == node_id)
    assert node.dead and not node.replicas
    static = simulate(config, STATIC)
    assert not [e for e in static.events if e[1] == "drain"]
    assert [e for e in static.events if e[1] == "replica-lost"]  # without a guard its replica served to the end


def test_a_lost_training_gpu_costs_research_its_work_since_the_last_checkpoint(trace):
    # One 2-worker run on both training GPUs, one of which is lost: the run falls back to its last
    # checkpoint and waits in the queue (its gang no longer fits on the one GPU left).
    config = _config({**trace, "lanes": [dict(trace["lanes"][0], bursts=[])],
                      "runs": [{"job_id": "r", "submit_s": 0, "workers": 2, "min_workers": 2, "gpu_s": 1e6}],
                      "faults": {"count": 1, "roles": ["train"], "fail_after_s": 60}})
    every = config.research.checkpoint_every_s
    for policy in (STATIC, MEDRAY):
        log = simulate(config, policy)
        (failed,) = [t for t, what, _ in log.events if what == "gpu-failed"]
        trained = failed - config.service.run_restart_s
        kept = (trained // every) * every
        assert log.research_lost_fault_gpu_s == pytest.approx(2 * (trained - kept))
        assert log.research_done_gpu_s == pytest.approx(2 * kept)
        assert [what for _, what, _ in log.events].count("run-start") == 1


def test_calibration_against_the_recorded_burst_benchmark():
    comparison = calibrate(SIM / "local_burst.yaml")
    assert comparison.recorded == RECORDED
    assert comparison.ok, "\n".join(comparison.lines())
    assert comparison.simulated.refused == 0
    assert abs(comparison.error("lend_s")) <= 0.25


def test_first_fit_merges_lanes_and_the_table_has_ratios(trace):
    config = _config(trace)
    summaries = [summarize(simulate(config, p)) for p in (STATIC, FIRST_FIT, MEDRAY)]
    text = table(summaries)
    assert "medray/static" in text and "first-fit/static" in text
    assert summaries[1].lends == 0


def test_paced_arrivals_follow_the_burst(trace):
    lane = _config(trace).lanes[0]
    import numpy as np

    times = diagnosis_arrivals(lane, 600, np.random.default_rng(0))
    assert ((times >= 120) & (times < 180)).sum() == 1200
    assert ((times >= 0) & (times < 120)).sum() == 240


@pytest.mark.parametrize("change, message", [
    ({"lanes": []}, "at least one lane"),
    ({"lanes": [{"name": "x", "priority": "research", "day_per_s": 1, "night_per_s": 1, "roles": ["infer"]}]},
     "priority must be one of"),
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({"duration_s": 0}, "must be > 0"),
])
def test_bad_configs_say_what_is_wrong(trace, change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config({**trace, **change})


def test_half_an_hour_of_the_shipped_day_at_fleet_scale():
    config = replace(load_config(SIM / "day.yaml"), duration_s=1800.0)
    log = simulate(config, MEDRAY)
    assert sum(log.served) > 10_000
    assert [a - s - r - t - f for a, s, r, t, f in zip(log.arrivals, log.served, log.rejected, log.timed_out,
                                                       log.failed)] == [0] * len(log.lanes)
    assert summarize(log).busy_pct_by_kind["train-a100"] > 90  # the research backlog fills the training GPUs


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    from medray.sim.__main__ import main

    assert main(["--config", str(SIM / "local_burst.yaml"), "--policies", "static", "medray",
                 "--json", str(tmp_path / "out.json"), "--calibration", str(SIM / "local_burst.yaml")]) == 0
    out = capsys.readouterr().out
    assert "medray/static" in out and "within 25%" in out
    import json

    doc = json.loads((tmp_path / "out.json").read_text())
    assert [p["policy"] for p in doc["policies"]] == ["static", "medray"] and doc["calibration"]["ok"]
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_the_simulator_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    code = "import sys, medray.sim, medray.sim.__main__; assert not {'ray', 'torch'} & set(sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO / "platform")})
    assert out.returncode == 0, out.stderr


def test_missing_config_file_is_one_actionable_line(tmp_path):
    with pytest.raises(ConfigError, match="pass --config"):
        load_config(tmp_path / "nope.yaml")
