"""workloads.research.tune: ASHA over lr, width and augmentation on the training nodes only."""

import csv

from medray.models.registry import list_models
from workloads.research.config import TrainConfig
from workloads.research.tune import SearchSpace, tune, worker_slots


def test_asha_search_writes_results_and_registers_the_best(ray_cluster, small_data, tmp_path):
    base = TrainConfig(data=str(small_data.data), labels=str(small_data.labels), registry=str(tmp_path / "registry"),
                       epochs=2, workers=1, batch_size=8, val_fraction=0.25, storage_path=str(tmp_path / "runs"))
    # Only the two training nodes' GPUs count: inference and edge GPUs are never offered to research.
    assert worker_slots(base) == 2
    result = tune(base, tmp_path / "tune", trials=4, space=SearchSpace(widths=(8, 16)), max_concurrent=8)
    assert result.max_concurrent == 2  # asked for 8, bounded by the training nodes' worker slots

    assert len(result.trials) == 4 and not any(t["error"] for t in result.trials)
    assert all(1 <= t["epochs"] <= 2 and t["width"] in (8, 16) and 2e-4 <= t["lr"] <= 2e-3 for t in result.trials)
    assert len({round(t["lr"], 12) for t in result.trials}) == 4  # sampled, not one point
    best = max((t for t in result.trials if t["checkpoint"]), key=lambda t: t["val_auc"])
    assert result.best == best

    with result.trials_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["trial_id"] for r in rows} == {t["trial_id"] for t in result.trials}
    assert {"lr", "width", "augment", "epochs", "val_auc", "stopped_early"} <= set(rows[0])
    with result.epochs_csv.open() as f:
        assert len(list(csv.DictReader(f))) == sum(t["epochs"] for t in result.trials)
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result.plot.stat().st_size > 10_000

    (manifest,) = list_models(tmp_path / "registry")
    assert result.ref == manifest.ref
    assert manifest.model_config["width"] == best["width"] and manifest.metrics["val_auc"] == best["val_auc"]
    assert manifest.metrics["tune_trials"] == 4
