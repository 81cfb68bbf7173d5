"""How node types become nodes: scaled down locally, full size on-prem."""

import subprocess
import sys

from medray.cluster.local import full_node_spec, local_node_specs, ray_start_command
from tests.conftest import CLUSTER_YAML


def test_local_specs_scale_down_and_simulate_gpus(node_types):
    specs = local_node_specs(node_types, simulate_gpus=True)
    assert specs[0].is_head and len(specs) == len(node_types)
    for s in specs:
        assert s.num_cpus <= 2 and s.num_gpus <= 1
        if s.node_type.gpus:
            assert s.labels["medray.io/simulated-gpu"] == "true"
            assert s.resources == {f"accelerator_type:{s.node_type.accelerator}": 1.0}
        else:
            assert "medray.io/simulated-gpu" not in s.labels and s.num_gpus == 0
    real = local_node_specs(node_types, simulate_gpus=False)
    assert all("medray.io/simulated-gpu" not in s.labels for s in real)


def test_on_prem_command_carries_full_resources_and_labels(node_types):
    a100 = next(t for t in node_types if t.name == "train-a100")
    cmd = ray_start_command(full_node_spec(a100), head_address="10.1.2.3:6379")
    assert cmd[:3] == ["ray", "start", "--address=10.1.2.3:6379"]
    assert "--num-cpus=96" in cmd and "--num-gpus=8" in cmd
    labels = next(c for c in cmd if c.startswith("--labels=")).removeprefix("--labels=").split(",")
    assert "medray.io/role=train" in labels and "medray.io/accelerator=A100" in labels
    assert not any(c.startswith("--object-store-memory") for c in cmd)


def test_cli_prints_the_on_prem_command():
    out = subprocess.run([sys.executable, "-m", "medray", "ray-start", "edge-partner-a",
                          "--address", "10.9.9.9:6379", "--config", str(CLUSTER_YAML)],
                         check=True, capture_output=True, text=True).stdout
    assert out.startswith("RAY_AUTH_MODE=token ray start --address=10.9.9.9:6379")
    assert "medray.io/site=partner-a" in out
