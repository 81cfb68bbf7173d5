"""The settings of a training run, validated once at the boundary (CLI, notebook, Tune trial)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from medray.errors import ConfigError
from medray.models import NoduleNetConfig
from medray.models.precision import PRECISIONS
from workloads.research.data import NODULE_CODE

__all__ = ["LOADERS", "SYNC_BN_BELOW", "TrainConfig", "parse_workers", "use_sync_bn"]

# How a worker gets its training batches: "stream" = Ray Data every epoch; "resident" = its shard
# once into one tensor on its device, then permuted slices; "auto" = resident when it fits the
# budget of workloads.research.data.resident_budget, else stream.
LOADERS = ("auto", "resident", "stream")


SYNC_BN_BELOW = 32  # per-worker batch under which DDP on GPUs shares BatchNorm statistics (auto)


def use_sync_bn(setting: bool | None, per_worker_batch: int) -> bool:
    """Whether DDP workers on GPUs use SyncBatchNorm: the setting, or (None) small per-worker batches."""
    return per_worker_batch < SYNC_BN_BELOW if setting is None else setting


def parse_workers(text: str | int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """``2`` → 2 workers; ``"1-4"`` or ``(1, 4)`` → an elastic group of 1 to 4 workers."""
    if isinstance(text, (tuple, list)):
        low, high = (int(v) for v in text)
    elif isinstance(text, int):
        low = high = text
    else:
        low_s, sep, high_s = str(text).partition("-")
        try:
            low = int(low_s)
            high = int(high_s) if sep else low
        except ValueError:
            raise ConfigError(f"workers must be a number or a range like 1-4, got {text!r}") from None
    if not 1 <= low <= high:
        raise ConfigError(f"workers must be >= 1 and a range low <= high, got {text!r}")
    return low if low == high else (low, high)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``python -m workloads.research.train --help`` explains each."""

    data: str
    labels: str
    registry: str | None = None
    name: str = "nodule"
    epochs: int = 20
    workers: int | tuple[int, int] = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    accelerator: str | None = None
    batch_size: int = 16  # global: split evenly across the workers
    lr: float = 5e-4
    weight_decay: float = 1e-4
    width: int = 16
    dropout: float = 0.1
    augment: float = 1.0  # 0..1: each axis is flipped with probability augment / 2
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 2
    storage_path: str | None = None
    run_name: str | None = None
    max_failures: int = 1
    seed: int = 0
    val_fraction: float = 0.2
    cache: bool | None = None
    # SyncBatchNorm across DDP workers on GPUs: None = only when a worker's batch is below
    # SYNC_BN_BELOW (small batches give noisy statistics; large ones don't need the extra all-reduces).
    sync_bn: bool | None = None
    loader: str = "auto"
    code: str = NODULE_CODE
    resume_from: str | None = None
    # Set by the broker entrypoint (workloads.research.preemptible): poll the broker at every step.
    run_id: str | None = None
    progress_log: str | None = None  # rank 0 appends one JSON line per step (t, step, epoch)
    # On simulated GPUs only (the local cluster: Ray counts a GPU, torch has none): a step takes at
    # least this long, as if a GPU computed it while the host CPU idles. 0 = as fast as the CPU goes.
    simulated_gpu_ms: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", parse_workers(self.workers))
        max_workers = self.workers if isinstance(self.workers, int) else self.workers[1]
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= max_workers,
             f"batch_size ({self.batch_size}) is global and must be at least the number of workers ({max_workers})"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (0.0 <= self.augment <= 1.0, f"augment must be within [0, 1], got {self.augment}"),
            (self.amp in PRECISIONS, f"amp must be one of {', '.join(PRECISIONS)}, got {self.amp!r}"),
            (self.checkpoint_every >= 1 and self.keep_checkpoints >= 1,
             "checkpoint_every and keep_checkpoints must be >= 1"),
            (self.max_failures >= -1, "max_failures must be >= 0, or -1 for unlimited retries"),
            (self.cpus_per_worker > 0 and self.gpus_per_worker >= 0,
             "cpus_per_worker must be > 0 and gpus_per_worker >= 0"),
            (self.loader in LOADERS, f"loader must be one of {', '.join(LOADERS)}, got {self.loader!r}"),
            (self.simulated_gpu_ms >= 0, f"simulated_gpu_ms must be >= 0, got {self.simulated_gpu_ms}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.model_config((16, 64, 64))  # width and dropout are validated by the model's config

    def model_config(self, in_shape: tuple[int, int, int]) -> NoduleNetConfig:
        """The model's config for volumes of ``in_shape`` (the shards' InputSpec shape)."""
        return NoduleNetConfig(width=self.width, dropout=self.dropout, in_shape=tuple(in_shape))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again), e.g. for a Tune trial."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}")
        return replace(self, **changes)
