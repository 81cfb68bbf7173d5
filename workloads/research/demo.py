"""The demo's training stage: NoduleNet on the preprocessed demo cohort, registered as ``nodule``.

It runs after the preprocessing stage, whose summary names the shard folder (``volumes``) and the
de-identified EMR folder (``emr``); ``data`` and ``labels`` override them. A quarter of the patients
(60 of the demo's 240) is held out, by patient; one 2-CPU worker trains on the rest for
:data:`DEMO_EPOCHS` epochs (batch 16, lr 5e-4: the shipped defaults), long enough to get past the
plateau before the net finds the nodule (docs/research.md), so the held-out AUC ends well above
chance (0.85 and more; ``tests/workloads/research/test_demo.py`` checks it). The split goes to
``ctx.split_file`` (pseudonyms only) and the summary's ``split`` names it: the diagnosis stage sends
only held-out patients' studies. The training curves (loss and held-out AUC per epoch) go to
``figures/train-curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medray.demo import figures
from medray.demo.report import FIGURES_DIR, figure_entry
from medray.demo.runner import DemoContext
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile
from workloads.research.config import TrainConfig
from workloads.research.data import Cohort, load_cohort
from workloads.research.placement import TRAIN_ROLES
from workloads.research.train import TrainResult, train

__all__ = ["DEMO_EPOCHS", "DEMO_VAL_FRACTION", "stage"]

# On the demo's 180 training patients the held-out AUC passed 0.85 after 12-17 epochs on each of 5
# splits tried (with seed 0's initial weights; docs/research.md, "Demo stage"): 26 leave a margin.
DEMO_EPOCHS = 26
DEMO_VAL_FRACTION = 0.25



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


def _write_split(ctx: DemoContext, model: str | None, cohort: Cohort) -> Path:
    # What the diagnosis stage needs to send held-out patients only; pseudonyms, never PHI.
    split = {"model": model, "held_out": sorted(cohort.val_patients), "train": sorted(cohort.train_patients)}
    ctx.split_file.write_text(json.dumps(split, indent=1) + "\n")
    return ctx.split_file


def stage(ctx: DemoContext, *, data: str | Path | None = None, labels: str | Path | None = None,
          epochs: int = DEMO_EPOCHS) -> dict[str, Any]:
    """Train on the demo cohort's shards and register ``nodule`` in ``ctx.registry``; a short summary."""
    if data is None or labels is None:
        found_data, found_labels = ctx.preprocessed("training", takes_paths=True)
        data, labels = data or found_data, labels or found_labels
    # One worker with both of the machine's CPUs and the whole batch (BatchNorm learns slower on
    # small per-worker batches: docs/research.md); a checkpoint every 10 epochs and after the last.
    cfg = TrainConfig(data=str(data), labels=str(labels), registry=str(ctx.registry), name="nodule",
                      epochs=epochs, workers=1, cpus_per_worker=2, batch_size=16, lr=5e-4,
                      val_fraction=DEMO_VAL_FRACTION, seed=ctx.seed, checkpoint_every=10,
                      storage_path=str((ctx.out / "runs").resolve()))
    result = train(cfg)
    # The same split as the run's: a patient's side depends only on its pseudonym, the seed and the sizes.
    cohort = load_cohort(cfg.data, cfg.labels, val_fraction=cfg.val_fraction, seed=cfg.seed, code=cfg.code)
    split = _write_split(ctx, result.ref, cohort)
    ctx.say(result.table())
    ctx.say(f"registered {result.ref} -> {result.registry_path} (worker on {result.workers[0]['node_type']}); "
            f"held-out AUC {result.metrics['val_auc']:.3f} on {result.cohort['val_patients']} patients it never "
            f"trained on; split -> {split}")
    return {
        "model": result.ref,
        "val_auc": round(result.metrics["val_auc"], 3),
        "epochs": int(result.metrics["epoch"]),
        "train_patients": result.cohort["train_patients"],
        "val_patients": result.cohort["val_patients"],
        "val_positive": result.cohort["val_positive"],
        "split": str(split),
        "worker_node_types": sorted({w["node_type"] for w in result.workers}),
        # Where the worker ran against the policy's first choice (the cheapest training type with room).
        "placement": {"policy_first_choice": place(WorkloadProfile(
            roles=TRAIN_ROLES, num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)).node_type.name,
            "workers_on": [w["node_type"] for w in result.workers]},
        "checkpoint": result.checkpoint,
        "figures": [_curves(ctx, result)],
    }
