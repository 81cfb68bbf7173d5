"""`medray up --local` / `medray down`: a persistent cluster that `ray job submit` and status reach."""

import json
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from ..conftest import CLUSTER_YAML

def _gcs_pids():
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"}


def _medray(*args, env, timeout=480):
    return subprocess.run([sys.executable, "-m", "medray", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=timeout).stdout


def test_up_status_job_submit_down(tmp_path):
    gcs_before = _gcs_pids()
    env = {**os.environ, "MEDRAY_HOME": str(tmp_path / "home")}
    try:
        out = _medray("up", "--local", "--config", str(CLUSTER_YAML), env=env)
        assert "local cluster up: 8 nodes" in out
        with pytest.raises(subprocess.CalledProcessError):  # a second `up` is refused
            _medray("up", "--local", "--config", str(CLUSTER_YAML), env=env)

        rows = json.loads(_medray("status", "--json", env=env))
        assert sorted(r["node_type"] for r in rows) == sorted(
            json.loads((tmp_path / "home" / "local-cluster.json").read_text())["node_types"])
        assert all(r["alive"] for r in rows)

        job = tmp_path / "job"
        job.mkdir()
        (job / "where.py").write_text(textwrap.dedent("""
            import ray
            from medray import WorkloadProfile, ray_options
            ray.init(address="auto")
            opts = ray_options(WorkloadProfile(roles=("train",), num_gpus=1, gpu_memory_gb=60))
            probe = ray.remote(lambda: ray.get_runtime_context().get_node_labels())
            print("LANDED", ray.get(probe.options(**opts).remote())["medray.io/node-type"])
        """))
        submitted = subprocess.run(
            [str(os.path.join(os.path.dirname(sys.executable), "ray")), "job", "submit",
             "--", sys.executable, str(job / "where.py")],
            env={**env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": "http://127.0.0.1:8265"},
            capture_output=True, text=True, timeout=300,
        )
        assert submitted.returncode == 0, submitted.stdout[-3000:]
        assert "LANDED train-h100" in submitted.stdout
    finally:
        _medray("down", env=env)
    assert _gcs_pids() <= gcs_before, "`medray down` left its GCS running"
    assert not (tmp_path / "home" / "local-cluster.json").exists()
