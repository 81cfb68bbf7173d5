"""Hybrid parameter-server + AllReduce training of the EMR model on the shared local cluster."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medray.errors import ParameterServerError
from medray.paramserver import (
    ParameterClient,
    SparseAdagrad,
    TableSpec,
    configure_servers,
    gather_tables,
    initial_weight,
    start_servers,
)
from workloads.research.emr_config import EmrTrainConfig
from workloads.research.emr_loop import STATE_FILE, load_checkpoint, run_loop
from workloads.research.emr_train import load_data, server_name, train

SMALL = dict(synthetic_patients=800, vocab=600, code_rows=8_192, category_rows=64, dim=8, hidden=16,
             batch_size=64, workers=2, ps_shards=2, ps_cpus=0.5, probe_steps=3, seed=5)


def _single_process(cfg: EmrTrainConfig, out: Path) -> dict:
    """Single-process training (no Ray, every table local) of the same run; its final state."""
    train_set, val = load_data(cfg)

    def keep(metrics: dict, directory: str | None) -> None:
        (out / STATE_FILE).write_bytes((Path(directory) / STATE_FILE).read_bytes())

    run_loop(cfg, {"codes": "allreduce", "categories": "allreduce"}, train_set, val, report=keep)
    return torch.load(out / STATE_FILE, weights_only=False)["model"]


def _assert_same_model(checkpoint: str, reference: dict) -> None:
    state, tables = load_checkpoint(checkpoint)
    torch.testing.assert_close(torch.from_numpy(tables["codes"]["weight"]), reference["bags.codes.weight"],
                               atol=2e-5, rtol=1e-4)
    for name, value in state["model"].items():
        torch.testing.assert_close(value, reference[name], atol=2e-5, rtol=1e-4)


def test_only_touched_rows_move_and_a_restarted_shard_refuses(ray_cluster):
    spec = TableSpec("codes", rows=1_000, dim=4, seed=1)
    servers = start_servers([spec], 2, SparseAdagrad(lr=0.1), name="test-ps-rows", num_cpus=0.25)
    try:
        configure_servers(servers, "t1", world=1, start_step=0)
        client = ParameterClient(servers, [spec], token="t1", rank=0)
        ids = torch.tensor([3, 7, 500])
        rows = client.pull(0, {"codes": ids})["codes"]
        torch.testing.assert_close(rows, initial_weight(spec)[ids])
        assert client.traffic.pulled == 3 * 8 + 3 * 4 * 4  # ids out, rows back: nothing else
        client.push(0, {"codes": torch.ones(3, 4)})
        assert client.traffic.pushed == 3 * 8 + 3 * 4 * 4
        after = client.pull(1, {"codes": ids})["codes"]
        torch.testing.assert_close(after, rows - 0.1)  # Adagrad's first step: lr * g / |g|
        full = gather_tables(servers, [spec], "t1", 0)["codes"]["weight"]
        untouched = np.setdiff1d(np.arange(1_000), ids.numpy())
        np.testing.assert_array_equal(full[untouched], initial_weight(spec).numpy()[untouched])
        with pytest.raises(ParameterServerError, match="restarted"):
            ParameterClient(servers, [spec], token="stale", rank=0).pull(1, {"codes": ids})
    finally:
        import ray

        for s in servers:
            ray.kill(s)


def _tower_params(net):
    from workloads.research.emr_model import EmrRiskNet

    return list(EmrRiskNet(net, local=()).tower.parameters())


def test_hybrid_routes_by_density_survives_a_killed_server_and_equals_single_process(ray_cluster, tmp_path):
    """One run (two Ray Train starts) for the routing, the bytes, the kill-and-resume and the equality."""
    import ray

    cfg = EmrTrainConfig(**SMALL, max_steps=200, epochs=100, checkpoint_every=10, run_name="emr-kill",
                         storage_path=str(tmp_path / "runs"), max_failures=1)
    results: list = []
    runner = threading.Thread(target=lambda: results.append(train(cfg)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 180
    server = None
    while time.monotonic() < deadline and runner.is_alive():
        try:
            server = server or ray.get_actor(f"{server_name('emr-kill')}-0")
            if ray.get(server.applied_step.remote()) >= 14:
                break
        except ValueError:
            pass
        time.sleep(0.02)
    assert server is not None, "the run's parameter servers never started"
    ray.kill(server, no_restart=False)  # the actor process dies; Ray restarts it empty
    runner.join(timeout=300)
    assert results, "the run did not finish"
    result = results[0]
    assert result.routing.routes == {"codes": "ps", "categories": "allreduce", "tower": "allreduce"}
    assert result.routing.densities["codes"] < 0.1 < result.routing.densities["categories"]
    starts = result.metrics["starts"]
    assert len(starts) == 2 and starts[1] % 10 == 0 and 10 <= starts[1] < 200, starts
    assert result.metrics["steps"] == 200
    # Restored to one step on every shard, the run ends with the model of uninterrupted single-process training.
    _assert_same_model(result.checkpoint, _single_process(cfg, tmp_path))
    # Bytes: the tower and the category table are all-reduced whole; of the codes only touched rows move.
    net = cfg.net()
    dense_bytes = 4 * (net.category_rows * net.dim + sum(p.numel() for p in _tower_params(net)))
    assert result.metrics["allreduce_bytes_per_step"] == dense_bytes
    assert 0 < result.metrics["ps_bytes_per_step"] < 0.25 * net.code_rows * net.dim * 4
    assert 0.5 < result.metrics["val_auc"] <= 1.0
