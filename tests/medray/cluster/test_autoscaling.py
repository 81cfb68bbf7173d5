"""Node-type autoscaling with Ray's fake multi-node provider: placement's selectors pick the node type.

The autoscaling cluster is a Ray cluster of its own, so the scenario runs in a subprocess: the test
process stays connected to the shared cluster .
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from medray.cluster.autoscaling import FAKE_HEAD_NODE_TYPE, fake_provider_config, fake_provider_node_types
from medray.cluster.local import local_node_specs

CLUSTER_YAML = Path(__file__).resolve().parents[3] / "cluster.yaml"
IDLE_TIMEOUT_S = 4.0


def test_provider_node_types_follow_cluster_yaml(node_types):
    types = fake_provider_node_types(node_types)
    specs = {s.node_type.name: s for s in local_node_specs(node_types)}
    assert sorted(types) == sorted(t.name for t in node_types if not t.is_head)
    t4 = types["infer-t4"]
    assert t4["labels"] == specs["infer-t4"].labels
    assert t4["resources"]["GPU"] == 1 and t4["resources"]["CPU"] == 2
    assert (t4["min_workers"], t4["max_workers"]) == (1, 6)  # cluster.yaml's own
    assert "GPU" not in types["bulk-prep"]["resources"]
    capped = fake_provider_node_types(node_types, min_workers=0, max_workers=1)
    assert {(t["min_workers"], t["max_workers"]) for t in capped.values()} == {(0, 1)}
    config = fake_provider_config(node_types, gcs_address="127.0.0.1:1", idle_timeout_s=6)
    assert config["idle_timeout_minutes"] == 0.1
    assert config["available_node_types"][FAKE_HEAD_NODE_TYPE]["max_workers"] == 0


def test_demand_starts_the_placed_node_type_and_idle_nodes_go_away():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                         timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["initial"] == ["head"]
    # GPU work for ("infer", "train") started an infer node, not a train node; CPU work for "prep"
    # the cheapest prep type, not a GPU node: the autoscaler followed placement's selectors.
    assert result["landed"] == {"gpu": "infer-t4", "cpu": "bulk-prep"}
    assert sorted(result["launched"]) == ["bulk-prep", "infer-t4"]
    assert result["final"] == ["head"], "idle nodes were not removed"
    assert result["scale_down_s"] >= IDLE_TIMEOUT_S


def scenario():
    import ray

    from medray.cluster.autoscaling import fake_autoscaling_cluster
    from medray.scheduling.options import place
    from medray.scheduling.placement import WorkloadProfile

    def alive():
        return sorted(n["Labels"].get("medray.io/node-type", "?") for n in ray.nodes() if n["Alive"])

    @ray.remote
    class Work:
        def node_type(self):
            return ray.get_runtime_context().get_node_labels()["medray.io/node-type"]

    with fake_autoscaling_cluster(CLUSTER_YAML, idle_timeout_s=IDLE_TIMEOUT_S, min_workers=0,
                                  max_workers=1):
        initial = alive()
        gpu = place(WorkloadProfile(roles=("infer", "train"), num_cpus=1, num_gpus=1))
        cpu = place(WorkloadProfile(roles=("prep",), num_cpus=1))
        work = {"gpu": Work.options(**gpu.ray_options()).remote(),
                "cpu": Work.options(**cpu.ray_options()).remote()}
        landed = {k: ray.get(w.node_type.remote(), timeout=90) for k, w in work.items()}
        for w in work.values():
            ray.kill(w)
        idle_at = time.monotonic()
        while len(alive()) > 1 and time.monotonic() - idle_at < 60:
            time.sleep(0.5)
        result = {
            "initial": initial,
            "landed": landed,
            "launched": sorted({n["Labels"].get("medray.io/node-type", "?") for n in ray.nodes()}
                               - {"head"}),
            "scale_down_s": round(time.monotonic() - idle_at, 1),
            "final": alive(),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    scenario()
