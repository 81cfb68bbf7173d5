"""The demo's training stage: a few epochs on the preprocessed demo cohort, registered as ``nodule``.

It runs after the preprocessing stage, whose summary names the shard folder (``volumes``) and the
de-identified EMR folder (``emr``); ``data`` and ``labels`` override them. On the demo's small
cohort (24 patients by default) the model learns little in a few epochs: the stage shows the
mechanics (placement on training nodes, Ray Data input, checkpoints, registry) that the diagnosis
stage then serves. ``tests/workloads/research/test_train.py`` shows the accuracy on a cohort that
is big enough. The training curves (loss and held-out AUC per epoch) go to ``figures/train-curves.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medray.demo import figures
from medray.demo.report import FIGURES_DIR, figure_entry
from medray.demo.runner import DemoContext
from medray.errors import ConfigError
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile
from workloads.research.config import TrainConfig
from workloads.research.placement import TRAIN_ROLES
from workloads.research.train import TrainResult, train

__all__ = ["DEMO_EPOCHS", "stage"]

DEMO_EPOCHS = 4


def _prep_outputs(ctx: DemoContext) -> tuple[Path, Path]:
    for result in ctx.results.values():
        if "volumes" in result and "emr" in result:
            return Path(result["volumes"]).parent, Path(result["emr"]) / "diagnoses.parquet"
    raise ConfigError("the training stage needs the preprocessing stage's outputs: run it first "
                      "or pass data= and labels=")


def _curves(ctx: DemoContext, result: TrainResult) -> dict[str, str]:
    nan = float("nan")
    history = result.history
    path = figures.curves(
        [h["epoch"] for h in history],
        {"loss (BCE)": {"train": [h["train_loss"] for h in history],
                        "held-out": [h.get("val_loss", nan) for h in history]},
         "held-out AUC": {"held-out": [h.get("val_auc", nan) for h in history]}},
        ctx.out / FIGURES_DIR / "train-curves.png", limits={"held-out AUC": (0.0, 1.02)})
    return figure_entry(ctx.out, path, f"Training curves of {result.ref}: loss and held-out AUC per epoch "
                                       f"({result.cohort['train_patients']} training, "
                                       f"{result.cohort['val_patients']} held-out patients)")


def stage(ctx: DemoContext, *, data: str | Path | None = None, labels: str | Path | None = None,
          epochs: int = DEMO_EPOCHS) -> dict[str, Any]:
    """Train on the demo cohort's shards and register ``nodule`` in ``ctx.registry``; a short summary."""
    if data is None or labels is None:
        found_data, found_labels = _prep_outputs(ctx)
        data, labels = data or found_data, labels or found_labels
    cfg = TrainConfig(data=str(data), labels=str(labels), registry=str(ctx.registry), name="nodule",
                      epochs=epochs, workers=1, val_fraction=0.25, seed=ctx.seed,
                      storage_path=str((ctx.out / "runs").resolve()))
    result = train(cfg)
    ctx.say(result.table())
    ctx.say(f"registered {result.ref} -> {result.registry_path} (worker on {result.workers[0]['node_type']})")
    return {
        "model": result.ref,
        "val_auc": round(result.metrics["val_auc"], 3),
        "epochs": int(result.metrics["epoch"]),
        "train_patients": result.cohort["train_patients"],
        "val_patients": result.cohort["val_patients"],
        "worker_node_types": sorted({w["node_type"] for w in result.workers}),
        # Where the worker ran against the policy's first choice (the cheapest training type with room).
        "placement": {"policy_first_choice": place(WorkloadProfile(
            roles=TRAIN_ROLES, num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)).node_type.name,
            "workers_on": [w["node_type"] for w in result.workers]},
        "checkpoint": result.checkpoint,
        "figures": [_curves(ctx, result)],
    }
