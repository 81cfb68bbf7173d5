"""Train the EMR risk model: embedding tables on parameter servers, the dense tower by AllReduce.

    python -m workloads.research.emr_train --diagnoses PREP_EMR/diagnoses.parquet [--workers 2 ...]
    python -m workloads.research.emr_train --synthetic-patients 20000 --vocab 100000 --code-rows 131072 --dim 64

(also under ``ray job submit -- python -m workloads.research.emr_train …``) or :func:`train` from a
notebook. The driver reads the patients' code histories (:mod:`workloads.research.emr_data`),
measures each parameter group's update density over ``--probe-steps`` worker batches and routes the
sparse embedding tables to the parameter servers and the rest to AllReduce
(:mod:`medray.paramserver.routing`; ``--route codes=ps`` pins a group, ``--mode ddp`` all-reduces
everything), starts ``--ps-shards`` server actors on CPU nodes with memory to spare
(:mod:`medray.paramserver.placement`) and a ``TorchTrainer`` whose workers are placed on train
nodes by :mod:`workloads.research.placement` and run :func:`~workloads.research.emr_loop.train_worker`.
A worker or server that dies fails the attempt; Ray Train restarts the workers from the last
checkpoint (``--max-failures``) and rank 0 restores every shard to that checkpoint's step.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from medray.cli.table import format_table
from medray.cluster.local import connect
from medray.errors import MedrayError
from medray.logs import get_logger
from medray.paramserver import Routing, SparseAdagrad, measure_densities, parse_pins, route, start_servers
from medray.paramserver.routing import ALLREDUCE
from workloads.research.emr_config import MODES, EmrTrainConfig
from workloads.research.emr_data import EmrExamples, load_examples, synthetic_examples
from workloads.research.emr_loop import batch_index, train_worker
from workloads.research.emr_model import TABLES, EmrRiskNet
from workloads.research.placement import place_workers
from workloads.research.train import TrainingError

__all__ = ["EmrResult", "load_data", "measure_routing", "server_name", "train", "build_parser", "main"]

_log = get_logger("medray.research.emr_train")


@dataclass(frozen=True)
class EmrResult:
    """A finished run: rank 0's figures, the routing, the last checkpoint and the run's servers' name."""

    metrics: dict[str, Any]
    routing: Routing
    checkpoint: str
    run_path: str
    patients: dict[str, int]
    seconds: float

    def table(self) -> str:
        m = self.metrics
        rows = [(r, g, f"{self.routing.densities[g]:.4f}") for g, r in self.routing.routes.items()]
        figures = (f"steps {m['steps']}, {m['samples_per_s']:.0f} samples/s, held-out AUC {m.get('val_auc', float('nan')):.3f}, "
                   f"bytes/step/worker: parameter servers {m['ps_bytes_per_step'] / 1e6:.2f} MB, "
                   f"AllReduce {m['allreduce_bytes_per_step'] / 1e6:.2f} MB")
        return format_table(("route", "group", "density"), rows) + "\n" + figures


def load_data(cfg: EmrTrainConfig) -> tuple[EmrExamples, EmrExamples]:
    """(train, held-out) examples of the diagnoses table, or of ``synthetic_patients`` drawn in memory."""
    net = cfg.net()
    examples = (load_examples(cfg.diagnoses, net, outcome=cfg.outcome) if cfg.diagnoses is not None
                else synthetic_examples(cfg.synthetic_patients, net, vocab=cfg.vocab, seed=cfg.seed))
    return examples.split(cfg.val_fraction, cfg.seed)


def measure_routing(cfg: EmrTrainConfig, train: EmrExamples) -> Routing:
    """Update densities over the first ``probe_steps`` worker batches of the run, and the routing they give.

    The probe trains a throwaway copy of the initial model in this process on rank 0's batches of
    the run's first steps (a worker's batch is what it pulls). ``--mode ddp`` pins everything to AllReduce.
    """
    model = EmrRiskNet(cfg.net())
    per_worker = cfg.batch_size // cfg.workers
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def loss_of(step: int) -> torch.Tensor:
        batch = train.take(batch_index(len(train), cfg.batch_size, step, cfg.seed)[:per_worker])
        return loss_fn(model(batch.bags()), torch.from_numpy(batch.labels))

    steps = min(cfg.probe_steps, cfg.total_steps(len(train)))
    densities = measure_densities(model.parameter_groups(), [partial(loss_of, s) for s in range(steps)])
    pins = parse_pins(cfg.route) if cfg.mode == "hybrid" else dict.fromkeys(densities, ALLREDUCE)
    return route(densities, threshold=cfg.threshold, row_sparse=TABLES, pinned=pins)


def _trainer(cfg: EmrTrainConfig, config: dict[str, Any], run_name: str) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    workers = place_workers(cpus_per_worker=cfg.cpus_per_worker, gpus_per_worker=cfg.gpus_per_worker)
    return TorchTrainer(
        train_worker, train_loop_config=config,
        scaling_config=workers.scaling_config(cfg.workers), torch_config=workers.torch_config(),
        run_config=RunConfig(name=run_name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)))


def server_name(run_name: str) -> str:
    """The name prefix of a run's parameter-server actors (``{prefix}-{shard}``)."""
    return f"emr-ps-{run_name}"


def train(config: EmrTrainConfig | dict[str, Any]) -> EmrResult:
    """Run on the connected Ray cluster (connecting first if needed).

    Raises ConfigError or PlacementError before any work starts, TrainingError when the run fails.
    """
    import ray

    cfg = config if isinstance(config, EmrTrainConfig) else EmrTrainConfig(**config)
    t0 = time.perf_counter()
    connect()
    train_set, val = load_data(cfg)
    routing = measure_routing(cfg, train_set)
    _log.info("routing (threshold %.3f): %s", cfg.threshold, routing.describe())
    run_name = cfg.run_name or f"emr-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    specs = cfg.net().tables()
    served = [specs[n] for n in routing.parameter_server]
    servers = (start_servers(served, cfg.ps_shards, SparseAdagrad(lr=cfg.lr_tables, eps=cfg.adagrad_eps),
                             name=server_name(run_name), num_cpus=cfg.ps_cpus) if served else [])
    try:
        trainer = _trainer(cfg, {"train": cfg.to_dict(), "routes": routing.routes,
                                 "data": ray.put((train_set, val)), "servers": servers}, run_name)
        result = trainer.fit()
    finally:
        for server in servers:
            ray.kill(server)
    if result.error is not None:
        raise TrainingError(f"EMR training run {run_name} failed after {cfg.max_failures} retries: "
                            f"{type(result.error).__name__}; see the worker logs (ray logs) and {result.path}")
    if result.checkpoint is None or not result.return_value:
        raise TrainingError(f"EMR training run {run_name} produced no checkpoint")
    patients = {"train_patients": len(train_set), "val_patients": len(val),
                "train_positive": int(train_set.labels.sum()), "val_positive": int(val.labels.sum())}
    return EmrResult(metrics=result.return_value, routing=routing, checkpoint=result.checkpoint.path,
                     run_path=result.path, patients=patients, seconds=time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    d = EmrTrainConfig(synthetic_patients=2)
    p = argparse.ArgumentParser(prog="python -m workloads.research.emr_train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--diagnoses", help="de-identified diagnoses (workloads.preprocess.emr's OUT/diagnoses.parquet)")
    src.add_argument("--synthetic-patients", type=int, help="draw this many code histories in memory instead")
    p.add_argument("--vocab", type=int, default=d.vocab, help="synthetic codes (with --synthetic-patients)")
    p.add_argument("--outcome", default=d.outcome, help="the ICD-10 code that labels a patient positive")
    p.add_argument("--mode", choices=MODES, default=d.mode, help="hybrid (routed by density) or ddp (all AllReduce)")
    p.add_argument("--code-rows", type=int, default=d.code_rows, help="rows of the hashed full-code table")
    p.add_argument("--category-rows", type=int, default=d.category_rows, help="rows of the category table")
    p.add_argument("--dim", type=int, default=d.dim, help="embedding width")
    p.add_argument("--hidden", type=int, default=d.hidden, help="tower width")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many steps (0: epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, split across workers")
    p.add_argument("--lr-tables", type=float, default=d.lr_tables, help="Adagrad learning rate of the tables")
    p.add_argument("--lr-tower", type=float, default=d.lr_tower, help="Adam learning rate of the tower")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    p.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker, help="> 0: tower on GPUs (NCCL)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="update density below which an embedding table goes to the parameter servers")
    p.add_argument("--route", default=d.route, help="pins, e.g. codes=ps,categories=allreduce")
    p.add_argument("--probe-steps", type=int, default=d.probe_steps, help="steps over which densities are measured")
    p.add_argument("--staleness", type=int, default=d.staleness, help="0: synchronous; s: bounded asynchronous")
    p.add_argument("--ps-shards", type=int, default=d.ps_shards, help="parameter-server actors")
    p.add_argument("--ps-cpus", type=float, default=d.ps_cpus, help="CPUs per parameter-server actor")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--storage-path", help="where checkpoints go (shared storage on multi-node clusters)")
    p.add_argument("--run-name")
    p.add_argument("--max-failures", type=int, default=d.max_failures)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    try:
        result = train(EmrTrainConfig(**args))
    except MedrayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"{result.patients['train_patients']} training / {result.patients['val_patients']} held-out patients; "
          f"attempts started at steps {result.metrics['starts']}; {result.seconds:.0f} s; "
          f"checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

