"""Train NoduleNet on preprocessed shards with Ray Train, and register the model.

    python -m workloads.research.train --data PREP --labels PREP/emr/diagnoses.parquet --registry DIR \
        [--epochs 20 --workers 2 --batch-size 16 --lr 1e-3 --width 16 --amp auto ...]

or :func:`train` from a notebook. A ``TorchTrainer`` runs :func:`~workloads.research.loop.train_worker`
on ``--workers`` workers (a range ``1-4`` makes the group elastic) placed on ``train`` nodes through
:mod:`workloads.research.placement`; the input comes from the shards through Ray Data
(:mod:`workloads.research.data`), pulled once into each worker's memory or streamed every epoch
(``--loader``). Checkpoints go to ``--storage-path`` every ``--checkpoint-every`` epochs; a worker
that dies is replaced and the run continues from the last checkpoint (up to ``--max-failures`` times). Running again with the same ``--run-name`` and ``--storage-path``
continues a stopped run; ``--resume-from CHECKPOINT_DIR`` starts a new run from a checkpoint.
The final model goes to the registry with its metrics (held-out AUC …), input spec and model config.
Under the priority broker the same training runs as a preemptible run: :mod:`workloads.research.preemptible`.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medray.cli.table import format_table
from medray.cluster.local import connect
from medray.errors import MedrayError
from medray.logs import get_logger
from medray.models.precision import PRECISIONS
from medray.models.registry import RegisteredModel, register
from workloads.research.config import LOADERS, SYNC_BN_BELOW, TrainConfig
from workloads.research.data import Cohort, build_datasets, load_cohort
from workloads.research.loop import WEIGHTS_FILE, summarise, train_worker
from workloads.research.placement import place_workers

__all__ = ["TrainingError", "TrainResult", "build_trainer", "register_checkpoint", "train", "build_parser", "main"]

_log = get_logger("medray.research.train")


class TrainingError(MedrayError):
    """A training run failed (after its retries) or produced no checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. ``ref`` is the registry reference (None when not registered)."""

    ref: str | None
    metrics: dict[str, float]
    history: list[dict[str, float]]
    starts: list[int]
    workers: list[dict[str, Any]]
    checkpoint: str
    run_path: str
    cohort: dict[str, int]
    seconds: float
    registry_path: str | None = None
    steps: int = 0  # optimiser steps taken by the end of this attempt, earlier attempts included
    yielded: bool = False  # stopped at the broker's request: ``checkpoint`` resumes it; not registered
    loader: str = "stream"  # how the workers got their training batches: "resident" or "stream"

    def table(self) -> str:
        """The per-epoch metrics as a text table."""
        nan = float("nan")
        rows = [(int(h["epoch"]), f"{h['train_loss']:.4f}", f"{h.get('val_loss', nan):.4f}",
                 f"{h.get('val_auc', nan):.3f}", f"{h['samples_per_s']:.1f}", f"{h['input_wait']:.1%}")
                for h in self.history]
        return format_table(("epoch", "train_loss", "val_loss", "val_auc", "samples/s", "input_wait"), rows,
                            align=">" * 6)


def build_trainer(
    cfg: TrainConfig,
    cohort: Cohort,
    datasets: Mapping[str, Any],
    *,
    run_name: str,
    storage_path: str | None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The ``TorchTrainer`` of a run: workers placed on training nodes, train split across them."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    workers = place_workers(cpus_per_worker=cfg.cpus_per_worker, gpus_per_worker=cfg.gpus_per_worker,
                            accelerator=cfg.accelerator)
    return TorchTrainer(
        train_worker,
        train_loop_config={"train": cfg.to_dict(), "model": cfg.model_config(cohort.spec.shape).to_dict()},
        scaling_config=workers.scaling_config(cfg.workers),
        torch_config=workers.torch_config(),
        # The held-out set is small and scored whole by rank 0: only the training set is split.
        dataset_config=DataConfig(datasets_to_split=["train"]),
        datasets=dict(datasets),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=list(callbacks),
        ),
    )


def register_checkpoint(checkpoint_dir: str | Path, registry: str | Path, cfg: TrainConfig, cohort: Cohort,
                        metrics: Mapping[str, float]) -> RegisteredModel:
    """Register the model of a checkpoint directory with its metrics, input spec and model config."""
    values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    values.update({k: float(v) for k, v in cohort.counts().items()})
    return register(registry, cfg.name, Path(checkpoint_dir) / WEIGHTS_FILE, input_spec=cohort.spec,
                    metrics=values, model_config=cfg.model_config(cohort.spec.shape).to_dict())


def train(config: TrainConfig | Mapping[str, Any], *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run training on the connected Ray cluster (connecting first if needed); register the model.

    ``callbacks``: Ray Train ``UserCallback`` objects (e.g. progress hooks). Raises ConfigError or
    PlacementError before any work starts, TrainingError when the run fails. A broker run
    (``run_id`` set) that was asked to yield returns early with ``yielded`` set and registers nothing.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    t0 = time.perf_counter()
    connect()
    cohort = load_cohort(cfg.data, cfg.labels, val_fraction=cfg.val_fraction, seed=cfg.seed, code=cfg.code)
    _log.info("training on %s", cohort.counts())
    run_name = cfg.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trainer = build_trainer(cfg, cohort, build_datasets(cohort, cache=cfg.cache), run_name=run_name,
                            storage_path=cfg.storage_path, callbacks=callbacks)
    result = trainer.fit()
    if result.error is not None:
        raise TrainingError(f"training run {run_name} failed after {cfg.max_failures} retries: "
                            f"{type(result.error).__name__}; see the worker logs (ray logs) and {result.path}")
    if result.checkpoint is None or not result.return_value:
        raise TrainingError(f"training run {run_name} produced no checkpoint: check --epochs and --resume-from")
    out = result.return_value
    metrics = summarise(out["history"]) if out["history"] else {}
    ref = registry = None
    with result.checkpoint.as_directory() as checkpoint_dir:
        if cfg.registry and not out["yielded"]:
            entry = register_checkpoint(checkpoint_dir, cfg.registry, cfg, cohort, metrics)
            ref, registry = entry.manifest.ref, str(entry.path)
            _log.info("registered %s (val_auc %.3f)", ref, metrics.get("val_auc", float("nan")))
    return TrainResult(ref=ref, metrics=metrics, history=out["history"], starts=out["starts"],
                       workers=out["workers"], checkpoint=result.checkpoint.path, run_path=result.path,
                       cohort=cohort.counts(), seconds=time.perf_counter() - t0, registry_path=registry,
                       steps=out["step"], yielded=out["yielded"], loader=out["loader"])


def build_parser() -> argparse.ArgumentParser:
    """The CLI's options (Tune's CLI extends them)."""
    d = TrainConfig(data="", labels="")
    p = argparse.ArgumentParser(prog="python -m workloads.research.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="preprocessed shards (the DICOM pipeline's --output)")
    p.add_argument("--labels", required=True, help="de-identified diagnoses table (Parquet/CSV file or folder)")
    p.add_argument("--registry", help="model registry folder; the model is not registered without it")
    p.add_argument("--name", default=d.name, help="registry model name (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--workers", default=str(d.workers), help="number of workers, or a range LOW-HIGH (elastic)")
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    p.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker, help="0 trains on CPUs only")
    p.add_argument("--accelerator", help="only train nodes with this GPU model (e.g. H100)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, split across workers")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--width", type=int, default=d.width, help="channels of the model's stem (multiple of 8)")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--augment", type=float, default=d.augment, help="flip augmentation strength in [0, 1]")
    p.add_argument("--amp", choices=PRECISIONS, default=d.amp,
                   help="autocast: auto = bf16 where supported, fp16 + GradScaler on older GPUs, fp32 on CPU")
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="epochs between checkpoints")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--storage-path", help="where checkpoints and results go (shared storage on multi-node "
                                          "clusters; default ~/ray_results)")
    p.add_argument("--run-name", help="run folder under --storage-path; reuse it to continue a stopped run")
    p.add_argument("--resume-from", help="a checkpoint folder to start from")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker failures to recover from")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of patients held out")
    p.add_argument("--cache", choices=("auto", "yes", "no"), default="auto",
                   help="keep the labelled volumes in Ray's object store between epochs")
    p.add_argument("--sync-bn", choices=("auto", "yes", "no"), default="auto",
                   help="SyncBatchNorm across GPU workers (auto: when a worker's batch is below "
                        f"{SYNC_BN_BELOW})")
    p.add_argument("--loader", choices=LOADERS, default=d.loader,
                   help="resident: each worker pulls its shard once into memory on its device and permutes it "
                        "every epoch; stream: Ray Data every epoch; auto: resident when it fits (default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    for key in ("cache", "sync_bn"):
        args[key] = {"auto": None, "yes": True, "no": False}[args[key]]
    try:
        result = train(TrainConfig(**args))
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    where = ", ".join(f"rank {w['rank']} on {w['node_type']}" for w in result.workers)
    print(f"{result.cohort['train_patients']} training / {result.cohort['val_patients']} held-out patients; "
          f"workers: {where}; {result.seconds:.0f} s")
    if result.starts[1:]:
        print(f"recovered from failures: attempts started at epochs {result.starts}")
    print(f"loader: {result.loader}; checkpoint: {result.checkpoint}")
    print(f"registered: {result.ref} -> {result.registry_path}" if result.ref else "not registered (no --registry)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
