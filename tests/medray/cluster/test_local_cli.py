"""`medray up --local` / `medray down`: a persistent cluster that `ray job submit` and status reach."""

import json
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from medray.cluster.node_types import load_node_types
from tests.conftest import CLUSTER_YAML


def _processes_of(cluster_id: str) -> list[str]:
    """Live processes started for the local cluster ``cluster_id`` (marked in their environment)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        # Zombies are dead: a container whose PID 1 does not reap them lists them until it exits.
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get("MEDRAY_LOCAL_CLUSTER_ID") == cluster_id:
                found.append(proc.info["name"])
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _medray(*args, env, timeout=600):
    result = subprocess.run([sys.executable, "-m", "medray", *args], env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout,
                                            f"{result.stderr[-3000:]}")
    return result.stdout


def test_up_status_job_submit_down(tmp_path):
    env = {**os.environ, "MEDRAY_HOME": str(tmp_path / "home")}
    try:
        try:
            out = _medray("up", "--local", "--config", str(CLUSTER_YAML), "--timeout", "540", env=env)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"`medray up --local` failed:\n{e.stderr}")
        assert f"local cluster up: {len(load_node_types(CLUSTER_YAML))} nodes" in out
        state = json.loads((tmp_path / "home" / "local-cluster.json").read_text())
        assert "gcs_server" in _processes_of(state["id"])
        with pytest.raises(subprocess.CalledProcessError):  # a second `up` is refused
            _medray("up", "--local", "--config", str(CLUSTER_YAML), env=env)

        rows = json.loads(_medray("status", "--json", env=env))
        assert sorted(r["node_type"] for r in rows) == sorted(state["node_types"])
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
    assert _processes_of(state["id"]) == [], "`medray down` left processes of its cluster running"
    assert not (tmp_path / "home" / "local-cluster.json").exists()
