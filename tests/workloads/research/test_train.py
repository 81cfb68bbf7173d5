"""Training runs on the shared local cluster: DDP over both training nodes, recovery from a killed
worker, the registry entry, the CLI, and the held-out AUC bar."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from medray.cluster import ray_internals
from medray.data.shards import PATIENT_PSEUDONYM, VOLUME, shard_files
from medray.imaging.normalize import InputSpec
from medray.models import build_model
from medray.models.registry import list_models, load_state_dict
from workloads.research.config import TrainConfig
from workloads.research.data import load_cohort
from workloads.research.evaluate import roc_auc
from workloads.research.train import main, train

TRAIN_NODE_TYPES = {"train-a100", "train-h100"}
# Epochs of the AUC test: enough for AUC >= 0.9 with margin on every seed tried (docs/research.md).
AUC_EPOCHS = 24


def _registered_checkpoints(run_dir) -> list[str]:
    """Checkpoints Ray Train's controller has registered (a folder on disk may not be registered yet)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]


def _alive_train_worker_pids() -> list[int]:
    actors = ray_internals.actors("ALIVE").values()
    return [a["Pid"] for a in actors if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]


def _score(registry, ref, data, patients) -> tuple[np.ndarray, list[str]]:
    """Scores of the registered model for the series of ``patients``, read straight from the shards."""
    manifest, weights = load_state_dict(registry, ref)
    model = build_model(manifest.model_config)
    model.load_state_dict(weights)
    model.eval()
    table = pq.read_table([str(f) for f in shard_files(data)], columns=[PATIENT_PSEUDONYM, VOLUME])
    keep = [i for i, p in enumerate(table[PATIENT_PSEUDONYM].to_pylist()) if p in patients]
    table = table.take(keep)
    volumes = torch.from_numpy(table[VOLUME].combine_chunks().to_numpy_ndarray())
    with torch.no_grad():
        scores = torch.cat([model(volumes[i:i + 32].unsqueeze(1)) for i in range(0, len(volumes), 32)])
    return scores.numpy(), table[PATIENT_PSEUDONYM].to_pylist()


def test_ddp_run_recovers_from_a_killed_worker_and_registers(ray_cluster, small_data, tmp_path):
    registry, runs = tmp_path / "registry", tmp_path / "runs"
    # Width 48 makes an epoch take seconds, so that the kill lands mid-run, after a checkpoint.
    cfg = TrainConfig(data=str(small_data.data), labels=str(small_data.labels), registry=str(registry),
                      epochs=5, workers=2, width=48, batch_size=8, checkpoint_every=1, max_failures=1,
                      storage_path=str(runs), run_name="resume", seed=1)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = train(cfg)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread below
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not _registered_checkpoints(runs / "resume"):
        assert time.monotonic() < deadline and thread.is_alive(), f"no first checkpoint: {outcome}"
        time.sleep(0.05)
    pids = _alive_train_worker_pids()
    assert len(pids) == 2
    victim = pids[-1]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    result = outcome["result"]

    # Resumed from a checkpoint, not from scratch, and finished every epoch exactly once.
    assert result.starts[0] == 0 and len(result.starts) == 2 and 1 <= result.starts[1] < cfg.epochs
    assert [int(h["epoch"]) for h in result.history] == [1, 2, 3, 4, 5]
    # DDP over both training nodes, with a new worker in place of the killed one.
    assert {w["node_type"] for w in result.workers} == TRAIN_NODE_TYPES
    assert victim not in {w["pid"] for w in result.workers}

    # The registry entry: weights, metrics, input spec and model config, loadable and usable.
    (manifest,) = list_models(registry)
    assert result.ref == manifest.ref == "nodule:1"
    assert manifest.spec == InputSpec() and manifest.model_config["width"] == 48
    assert {"val_auc", "train_loss", "val_loss", "epoch", "train_patients", "val_patients"} <= set(manifest.metrics)
    assert manifest.metrics["epoch"] == 5 and manifest.metrics["train_patients"] == result.cohort["train_patients"]
    cohort = load_cohort(small_data.data, small_data.labels, seed=cfg.seed)
    scores, _ = _score(registry, result.ref, small_data.data, cohort.val_patients)
    assert len(scores) == len(cohort.val_patients) and np.isfinite(scores).all()


def test_cli_trains_an_elastic_group_and_registers(ray_cluster, small_data, tmp_path, capsys):
    registry = tmp_path / "registry"
    args = ["--data", str(small_data.data), "--labels", str(small_data.labels), "--registry", str(registry),
            "--epochs", "2", "--workers", "1-2", "--batch-size", "8", "--width", "8", "--amp", "auto",
            "--storage-path", str(tmp_path / "runs"), "--checkpoint-every", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "registered: nodule:1" in out and "val_auc" in out and "input_wait" in out
    assert list_models(registry)[0].model_config["width"] == 8
    assert main([*args[:1], str(tmp_path / "nothing"), *args[2:]]) == 2
    assert "preprocess.dicom" in capsys.readouterr().err


def test_registered_model_reaches_auc_090_on_held_out_patients(ray_cluster, auc_data, tmp_path):
    registry = tmp_path / "registry"
    cfg = TrainConfig(data=str(auc_data.data), labels=str(auc_data.labels), registry=str(registry),
                      epochs=AUC_EPOCHS, workers=1, cpus_per_worker=2, batch_size=16, lr=5e-4, seed=0,
                      storage_path=str(tmp_path / "runs"))
    result = train(cfg)
    print(result.table())
    assert result.metrics["val_auc"] >= 0.90
    # Recomputed from the registered weights on the held-out patients, not taken from the loop.
    cohort = load_cohort(auc_data.data, auc_data.labels, val_fraction=cfg.val_fraction, seed=cfg.seed)
    scores, patients = _score(registry, result.ref, auc_data.data, cohort.val_patients)
    assert set(patients) == cohort.val_patients and not set(patients) & cohort.train_patients
    auc = roc_auc(scores, [p in cohort.positives for p in patients])
    assert auc >= 0.90 and auc == pytest.approx(result.metrics["val_auc"], abs=1e-6)
    (manifest,) = list_models(registry)
    assert manifest.metrics["val_auc"] == pytest.approx(auc, abs=1e-6)
