"""Hyper-parameter search with Ray Tune and ASHA over learning rate, width and augmentation strength.

    python -m workloads.research.tune --data PREP --labels PREP/emr/diagnoses.parquet --registry DIR \
        --out DIR [--trials 8 --epochs 10 --max-concurrent N ...]

Each trial trains in its own process with the training loop of a single run
(:func:`workloads.research.loop.run`, one worker, no DDP) and takes exactly one training worker's
resources, placed like a run's workers (:mod:`workloads.research.placement`), cheapest training type
first: trials can never land on inference nodes. Tune owns each trial's placement group, so a trial that ASHA stops gives its
GPU back at once. At most ``--max-concurrent`` trials run at once (default and upper bound: the
worker slots of the running training nodes), so a search never queues work that would spill
elsewhere. ASHA stops the weaker trials early by held-out AUC. The best trial's last checkpoint is
registered; ``OUT/trials.csv`` (one row per trial), ``OUT/epochs.csv`` (one row per trial and
epoch) and ``OUT/curves.png`` (the trials' AUC and loss curves) are written.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medray.cli.table import format_table
from medray.cluster.local import connect
from medray.demo import figures
from medray.errors import ConfigError, MedrayError
from medray.logs import get_logger
from medray.scheduling.load import live_nodes
from workloads.research.config import TrainConfig
from workloads.research.data import build_datasets, load_cohort
from workloads.research.loop import TuneSession, run
from workloads.research.placement import WorkerPlacement, place_workers
from workloads.research.train import TrainingError, register_checkpoint

__all__ = ["SearchSpace", "TuneResult", "worker_slots", "tune", "main"]

_log = get_logger("medray.research.tune")
_METRIC = "val_auc"


@dataclass(frozen=True)
class SearchSpace:
    """What ASHA searches: lr log-uniform, width from a list, augmentation strength uniform."""

    lr: tuple[float, float] = (2e-4, 2e-3)
    widths: tuple[int, ...] = (8, 16, 24)
    augment: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not (0 < self.lr[0] <= self.lr[1]) or not (0 <= self.augment[0] <= self.augment[1] <= 1):
            raise ConfigError("lr must be 0 < low <= high and augment 0 <= low <= high <= 1")
        if not self.widths:
            raise ConfigError("widths must name at least one width")

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        return {"lr": tune.loguniform(*self.lr), "width": tune.choice(list(self.widths)),
                "augment": tune.uniform(*self.augment)}


@dataclass(frozen=True)
class TuneResult:
    """The search's trials (one dict each), the best one, and where its model and outputs went."""

    trials: list[dict[str, Any]]
    best: dict[str, Any]
    ref: str | None
    trials_csv: Path
    epochs_csv: Path
    plot: Path
    max_concurrent: int
    seconds: float

    def table(self) -> str:
        rows = [(t["trial_id"], f"{t['lr']:.2e}", t["width"], f"{t['augment']:.2f}", t["epochs"],
                 f"{t['val_auc']:.3f}", "early" if t["stopped_early"] else "") for t in self.trials]
        return format_table(("trial", "lr", "width", "augment", "epochs", "val_auc", "stopped"), rows,
                            align=">" * 7)


def _place(cfg: TrainConfig) -> WorkerPlacement:
    return place_workers(cpus_per_worker=cfg.cpus_per_worker, gpus_per_worker=cfg.gpus_per_worker,
                         accelerator=cfg.accelerator)


def worker_slots(cfg: TrainConfig) -> int:
    """How many workers of ``cfg``'s size the running training nodes can hold at once."""
    slots = 0
    for node in live_nodes({t.name for t in _place(cfg).placement.candidates}):
        r = node["Resources"]
        fit = [r.get("CPU", 0) // cfg.cpus_per_worker]
        if cfg.gpus_per_worker:
            fit.append(r.get("GPU", 0) // cfg.gpus_per_worker)
        slots += int(min(fit))
    return slots


def _trial_resources(workers: WorkerPlacement, bundle: dict[str, float], concurrent: int) -> Any:
    """Each trial's placement group, its one bundle on a node type of the cost-ordered fill.

    A trial is a placement group (no ``fallback_strategy``): the ``concurrent`` slots are filled
    cheapest type first by the room the cluster had when the search started
    (:meth:`~workloads.research.placement.WorkerPlacement.label_selectors`), and trial ``i`` takes
    slot ``i % concurrent``, so the trials that run together use the cheap slots before the dear ones.
    """
    from ray import tune as ray_tune

    slots = workers.label_selectors(concurrent)
    created = 0

    def resources(_config: dict[str, Any]) -> Any:
        nonlocal created
        selector = slots[created % len(slots)]
        created += 1
        return ray_tune.PlacementGroupFactory([bundle], bundle_label_selector=[selector])

    return resources


def _trial(params: dict[str, Any], *, base: dict[str, Any], in_shape: tuple[int, int, int],
           datasets: dict[str, Any]) -> None:
    cfg = TrainConfig(**base).with_overrides(lr=float(params["lr"]), width=int(params["width"]),
                                             augment=float(params["augment"]))
    run({"train": cfg.to_dict(), "model": cfg.model_config(in_shape).to_dict()}, TuneSession(datasets))


def _rows(grid: Any, epochs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    trials, per_epoch = [], []
    for result in grid:
        frame = result.metrics_dataframe
        metrics = result.metrics or {}
        params = result.config
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        done = int(metrics.get("epoch", 0))
        trials.append({
            "trial_id": trial_id, "lr": float(params["lr"]), "width": int(params["width"]),
            "augment": float(params["augment"]), "epochs": done,
            "val_auc": float(metrics.get(_METRIC, math.nan)),
            "best_val_auc": float(frame[_METRIC].max()) if frame is not None and _METRIC in frame else math.nan,
            "train_loss": float(metrics.get("train_loss", math.nan)),
            "stopped_early": done < epochs and result.error is None,
            "error": type(result.error).__name__ if result.error is not None else "",
            "checkpoint": result.checkpoint.path if result.checkpoint is not None else "",
        })
        if frame is not None:
            for _, row in frame.iterrows():
                per_epoch.append({"trial_id": trial_id, "epoch": int(row["epoch"]),
                                  "train_loss": float(row["train_loss"]),
                                  _METRIC: float(row.get(_METRIC, math.nan)),
                                  "val_loss": float(row.get("val_loss", math.nan))})
    return trials, per_epoch


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        writer.writeheader()
        writer.writerows(rows)


def _plot(path: Path, trials: list[dict[str, Any]], per_epoch: list[dict[str, Any]]) -> None:
    # ASHA stops trials at different epochs: a trial has NaN after its last epoch.
    epochs = sorted({int(r["epoch"]) for r in per_epoch})
    auc: dict[str, list[float]] = {}
    loss: dict[str, list[float]] = {}
    for t in trials:
        rows = {int(r["epoch"]): r for r in per_epoch if r["trial_id"] == t["trial_id"]}
        label = f"lr {t['lr']:.1e}, w {t['width']}, aug {t['augment']:.2f}"
        auc[label] = [rows[e][_METRIC] if e in rows else math.nan for e in epochs]
        loss[label] = [rows[e]["train_loss"] if e in rows else math.nan for e in epochs]
    figures.curves(epochs, {"held-out AUC": auc, "training loss (BCE)": loss}, path,
                   limits={"held-out AUC": (0.0, 1.02)}, title="ASHA trials", size_px=(1200, 460))


def tune(
    base: TrainConfig,
    out: str | Path,
    *,
    trials: int = 8,
    space: SearchSpace = SearchSpace(),
    max_concurrent: int | None = None,
    grace_period: int = 1,
    reduction_factor: int = 2,
) -> TuneResult:
    """Search ``space`` around ``base`` with ASHA; write the CSVs and plot into ``out``; register the best.

    ``base.epochs`` is every trial's budget (ASHA's ``max_t``).
    """
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    if trials < 1 or grace_period < 1 or grace_period > base.epochs or reduction_factor < 2:
        raise ConfigError("need trials >= 1, 1 <= grace_period <= epochs and reduction_factor >= 2")
    if base.workers != 1:
        raise ConfigError("each Tune trial trains in one process: use --workers 1 (DDP is for single runs)")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    connect()
    cohort = load_cohort(base.data, base.labels, val_fraction=base.val_fraction, seed=base.seed, code=base.code)
    limit = max(1, worker_slots(base))
    concurrent = min(max_concurrent or limit, limit, trials)
    _log.info("tuning %d trials, at most %d at a time, on %s", trials, concurrent, cohort.counts())
    storage = str(Path(base.storage_path or out / "runs").resolve())
    name = base.run_name or f"tune-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

    trainable = ray_tune.with_parameters(_trial, base=base.to_dict(), in_shape=cohort.spec.shape,
                                         datasets=build_datasets(cohort, cache=base.cache))
    workers = _place(base)
    bundle = dict(workers.resources_per_worker)
    if workers.accelerator_type:
        bundle[f"accelerator_type:{workers.accelerator_type}"] = 0.001  # as Ray Train asks for it
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(trainable, _trial_resources(workers, bundle, concurrent)),
        param_space=space.param_space(),
        tune_config=ray_tune.TuneConfig(
            metric=_METRIC, mode="max", num_samples=trials,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=base.epochs, grace_period=grace_period,
                                    reduction_factor=reduction_factor),
            # The generator, not TuneConfig.max_concurrent_trials, bounds a BasicVariantGenerator search.
            search_alg=BasicVariantGenerator(max_concurrent=concurrent, random_state=base.seed),
        ),
        run_config=ray_tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    rows, per_epoch = _rows(grid, base.epochs)
    finished = [r for r in rows if not r["error"] and r["checkpoint"] and not math.isnan(r["val_auc"])]
    if not finished:
        raise TrainingError(f"no trial of {name} finished with a checkpoint: see {storage}/{name}")
    best = max(finished, key=lambda r: r["val_auc"])
    ref = None
    if base.registry:
        best_cfg = base.with_overrides(lr=best["lr"], width=best["width"], augment=best["augment"])
        metrics = {"val_auc": best["val_auc"], "train_loss": best["train_loss"], "epoch": best["epochs"],
                   "tune_trials": len(rows)}
        ref = register_checkpoint(best["checkpoint"], base.registry, best_cfg, cohort, metrics).manifest.ref
        _log.info("registered %s from trial %s (val_auc %.3f)", ref, best["trial_id"], best["val_auc"])
    trials_csv, epochs_csv, plot = out / "trials.csv", out / "epochs.csv", out / "curves.png"
    _write_csv(trials_csv, rows)
    _write_csv(epochs_csv, per_epoch)
    _plot(plot, rows, per_epoch)
    return TuneResult(trials=rows, best=best, ref=ref, trials_csv=trials_csv, epochs_csv=epochs_csv,
                      plot=plot, max_concurrent=concurrent, seconds=time.perf_counter() - t0)


def _floats(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def _parser() -> argparse.ArgumentParser:
    from workloads.research.train import build_parser

    p = argparse.ArgumentParser(prog="python -m workloads.research.tune", parents=[build_parser()],
                                conflict_handler="resolve", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for trials.csv, epochs.csv and curves.png")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once "
                                                      "(default and upper bound: the training nodes' worker slots)")
    p.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--lr-range", type=_floats, default=SearchSpace.lr, help="LOW,HIGH (log-uniform)")
    p.add_argument("--widths", type=lambda s: tuple(int(v) for v in s.split(",")), default=SearchSpace.widths)
    p.add_argument("--augment-range", type=_floats, default=SearchSpace.augment, help="LOW,HIGH")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    search = {k: args.pop(k) for k in ("out", "trials", "max_concurrent", "grace_period", "reduction_factor")}
    space = SearchSpace(lr=args.pop("lr_range"), widths=args.pop("widths"), augment=args.pop("augment_range"))
    args["cache"] = {"auto": None, "yes": True, "no": False}[args["cache"]]
    try:
        result = tune(TrainConfig(**args), search.pop("out"), space=space, **search)
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"best: trial {result.best['trial_id']} (val_auc {result.best['val_auc']:.3f}); "
          f"{len(result.trials)} trials, at most {result.max_concurrent} at a time, {result.seconds:.0f} s")
    print(f"wrote {result.trials_csv}, {result.epochs_csv}, {result.plot}")
    print(f"registered: {result.ref}" if result.ref else "not registered (no --registry)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
