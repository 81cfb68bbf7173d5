"""The settings of an EMR training run, validated once at the boundary (CLI, notebook, benchmark)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medray.data.emr_codes import COHORT_VOCAB, MAX_VOCAB, OUTCOME_CODE
from medray.errors import ConfigError
from medray.paramserver.routing import parse_pins
from workloads.research.emr_model import EmrNetConfig

__all__ = ["MODES", "EmrTrainConfig"]

# hybrid: tables routed by measured density (parameter servers or AllReduce), tower by AllReduce;
# ddp: everything all-reduced (the baseline the hybrid is measured against).
MODES = ("hybrid", "ddp")


@dataclass(frozen=True)
class EmrTrainConfig:
    """Everything an EMR run needs; ``python -m workloads.research.emr_train --help`` explains each."""

    diagnoses: str | None = None  # de-identified diagnoses (Parquet); None: synthetic_patients in memory
    synthetic_patients: int = 0
    vocab: int = COHORT_VOCAB  # synthetic codes, when drawn in memory
    outcome: str = OUTCOME_CODE
    mode: str = "hybrid"
    code_rows: int = 16_384
    category_rows: int = 1_024
    dim: int = 16
    hidden: int = 64
    epochs: int = 3
    max_steps: int = 0  # 0: epochs decide
    batch_size: int = 256  # global: split evenly across the workers
    lr_tables: float = 0.05
    lr_tower: float = 1e-3
    adagrad_eps: float = 1e-10
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    threshold: float = 0.1  # update density below which an embedding table goes to the parameter servers
    route: str = ""  # pins, e.g. "codes=ps,categories=allreduce"
    probe_steps: int = 5
    staleness: int = 0  # 0 = synchronous; s > 0: a worker may run s steps ahead of the slowest
    ps_shards: int = 2
    ps_cpus: float = 1.0
    checkpoint_every: int = 50  # steps
    keep_checkpoints: int = 2
    storage_path: str | None = None
    run_name: str | None = None
    max_failures: int = 1
    seed: int = 0
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.diagnoses is not None or self.synthetic_patients >= 2,
             "pass the de-identified diagnoses (--diagnoses) or a synthetic size (--synthetic-patients >= 2)"),
            (1 <= self.vocab <= MAX_VOCAB, f"vocab must be from 1 to {MAX_VOCAB}"),
            (self.workers >= 1 and self.batch_size % self.workers == 0,
             f"batch_size ({self.batch_size}) must be a multiple of workers ({self.workers})"),
            (self.epochs >= 1 and self.max_steps >= 0, "epochs must be >= 1 and max_steps >= 0"),
            (self.lr_tables > 0 and self.lr_tower > 0 and self.adagrad_eps > 0, "learning rates must be > 0"),
            (self.probe_steps >= 1 and self.ps_shards >= 1, "probe_steps and ps_shards must be >= 1"),
            (self.staleness >= 0, f"staleness must be >= 0, got {self.staleness}"),
            (self.checkpoint_every >= 1 and self.keep_checkpoints >= 1,
             "checkpoint_every and keep_checkpoints must be >= 1"),
            (self.cpus_per_worker > 0 and self.gpus_per_worker >= 0 and self.ps_cpus > 0,
             "cpus_per_worker and ps_cpus must be > 0, gpus_per_worker >= 0"),
            (self.max_failures >= -1, "max_failures must be >= 0, or -1 for unlimited retries"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_pins(self.route)
        self.net()

    def net(self) -> EmrNetConfig:
        return EmrNetConfig(code_rows=self.code_rows, category_rows=self.category_rows, dim=self.dim,
                            hidden=self.hidden, seed=self.seed)

    def total_steps(self, train_examples: int) -> int:
        """Optimiser steps of the run over ``train_examples`` (whole batches only)."""
        per_epoch = train_examples // self.batch_size
        if per_epoch < 1:
            raise ConfigError(f"{train_examples} training patients make no batch of {self.batch_size}")
        return min(self.max_steps, self.epochs * per_epoch) if self.max_steps else self.epochs * per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
