"""The training loop: DDP, autocast, Ray Data input, checkpoints, held-out AUC.

:func:`run` is the loop; a :class:`Session` is where it runs. :class:`TrainSession` is a Ray Train
worker (``train_loop_per_worker`` = :func:`train_worker`: dataset shards, DDP, ``ray.train.report``);
:class:`TuneSession` is a Ray Tune trial that trains in its own process (one worker, whole
datasets, ``ray.tune.report``).

One report per epoch, with the epoch's metrics; every ``checkpoint_every`` epochs (and after the
last) rank 0 attaches a checkpoint with the full training state, so a restarted worker group (a
worker died, ``FailureConfig(max_failures)``) continues from the epoch after it.
Every attempt appends its first epoch to ``starts``, which the checkpoint carries along: a run
that resumed after a failure at epoch 3 ends with ``starts == [0, 3]``.

**Broker runs** (``run_id`` set, see :mod:`workloads.research.preemptible`): after every step all
ranks ask :func:`medray.broker.preemption.yield_requested` together; when asked to yield they checkpoint at
that very step (mid-epoch), rank 0 reports the checkpoint to the broker, and the loop returns with
``yielded`` set: the worker group ends and its GPUs are free. Periodic checkpoints are reported too.
A run resumed from a mid-epoch checkpoint continues that epoch for its remaining steps, so no step
is trained twice and the step count goes on where it stopped. With the resident loader the epoch's
order is a function of (seed, epoch, rank): the resumed run skips exactly the batches already taken.
(Ray Data iterators cannot restart at a position: streaming, the steps already taken are skipped
on a fresh shuffle, without training.)

**Input** (``loader``): "stream" iterates the worker's Ray Data shard every epoch; "resident" pulls
it once into one tensor on the worker's device (float16 on a GPU) and slices a new permutation of
it every epoch (:class:`~workloads.research.data.ResidentSet`); "auto" is resident when the share
fits :func:`~workloads.research.data.resident_budget` on every rank, else stream.

Checkpoint directory: ``state.pt`` (model, optimiser, GradScaler, epoch, steps, history, starts) and
``model.pt`` (the bare model state dict that the model registry stores).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from medray.broker.preemption import report_checkpoint, yield_requested
from medray.data.shards import VOLUME
from medray.imaging.augment import random_flip
from medray.logs import get_logger
from medray.models import build_model
from medray.models.precision import choose_precision
from medray.scheduling.load import current_node_type
from workloads.research.config import TrainConfig, use_sync_bn
from workloads.research.data import LABEL, ResidentSet, load_resident, resident_budget
from workloads.research.evaluate import roc_auc

__all__ = ["STATE_FILE", "WEIGHTS_FILE", "Session", "TrainSession", "TuneSession", "run",
           "train_worker", "summarise"]

_log = get_logger("medray.research.loop")

STATE_FILE = "state.pt"
WEIGHTS_FILE = "model.pt"
# Rows per batch while a worker pulls its shard into memory (4 MiB of float32 volumes of 16x64x64).
_LOAD_BATCH = 256


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if _world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_min(value: int, device: torch.device) -> int:
    if _world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _resident(cfg: TrainConfig, session: Session, device: torch.device) -> ResidentSet | None:
    """The worker's training rows on its device, or None to stream them (ranks agree on which)."""
    if cfg.loader == "stream":
        return None
    budget = None if cfg.loader == "resident" else resident_budget(device)
    loaded = load_resident(
        session.batches("train", batch_size=_LOAD_BATCH, dtypes=torch.float32, device=device,
                        prefetch_batches=2, pin_memory=device.type == "cuda"),
        device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32, budget_bytes=budget)
    # Every rank takes as many steps as the smallest shard allows (DDP needs equal step counts);
    # -1 on any rank (over budget) makes them all stream.
    rows = _all_min(len(loaded) if loaded is not None else -1, device)
    if rows < 0:
        _log.info("streaming the training set: a worker's share exceeds %d MiB", budget // 2**20)
        return None
    return loaded.head(rows)


def _evaluate(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
              precision: Any) -> tuple[float, float, int]:
    """(AUC, mean BCE loss, volumes) of ``model`` over the whole held-out set."""
    scores, labels = [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            with precision.autocast():
                logits = model(batch[VOLUME].unsqueeze(1))
            scores.append(logits.float().cpu())
            labels.append(batch[LABEL].float().cpu())
    if not scores:
        return float("nan"), float("nan"), 0
    s, y = torch.cat(scores), torch.cat(labels)
    loss = float(F.binary_cross_entropy_with_logits(s, y))
    return roc_auc(s.numpy(), y.numpy()), loss, int(y.numel())


class _HeldOut:
    """The held-out batches: streamed from Ray Data at the first evaluation, then kept in memory
    when they fit ``budget_bytes`` (each streaming pass starts a new Ray Data execution: 16 s per
    epoch for 80 volumes on a loaded 2-core machine, more than the epoch's training)."""

    def __init__(self, stream: Callable[[], Iterable[dict[str, torch.Tensor]]], budget_bytes: int) -> None:
        self._stream, self._budget = stream, budget_bytes
        self._kept: list[dict[str, torch.Tensor]] | None = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[dict[str, torch.Tensor]] | None = []
        size = 0
        for batch in self._stream():
            if kept is not None:
                size += sum(t.numel() * t.element_size() for t in batch.values())
                if size <= self._budget:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept


class Session(Protocol):
    """What the loop needs from where it runs."""

    def device(self) -> torch.device:
        """The device to train on. Simulated GPUs (local cluster) reserve a GPU in Ray, but torch
        sees none: then it is the CPU."""

    def batches(self, split: str, **iter_args: Any) -> Iterable[dict[str, torch.Tensor]]:
        """``iter_torch_batches(**iter_args)`` over this worker's part of ``split`` ("train"/"val")."""

    def checkpoint(self) -> Any | None:
        """The checkpoint to resume from (after a failure), or None."""

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str) -> str | None:
        """Report an epoch's metrics, with a checkpoint directory (persisted as ``name``) or not.

        Returns where the checkpoint was persisted (what ``resume_from`` takes), when that is known.
        """


class TrainSession:
    """A Ray Train worker: its shard of the training set, the whole held-out set."""

    def device(self) -> torch.device:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        import ray.train.torch

        return ray.train.torch.get_device()  # this worker's GPU among the node's visible ones

    def batches(self, split: str, **iter_args: Any) -> Iterable[dict[str, torch.Tensor]]:
        import ray.train

        return ray.train.get_dataset_shard(split).iter_torch_batches(**iter_args)

    def checkpoint(self) -> Any | None:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str) -> str | None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint else None)
        if checkpoint is None:
            return None
        # report() uploads synchronously: the checkpoint is in the run's folder under this name now.
        return str(Path(ray.train.get_context().get_storage().experiment_fs_path) / name)


class TuneSession:
    """A Ray Tune trial training in its own process: whole datasets, no DDP."""

    def __init__(self, datasets: dict[str, Any]) -> None:
        self._datasets = datasets

    def device(self) -> torch.device:
        # Tune makes only the trial's GPU visible.
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")

    def batches(self, split: str, **iter_args: Any) -> Iterable[dict[str, torch.Tensor]]:
        return self._datasets[split].iter_torch_batches(**iter_args)

    def checkpoint(self) -> Any | None:
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str) -> str | None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)
        return None


def _save(state: dict[str, Any], weights: dict[str, torch.Tensor], directory: Path) -> None:
    torch.save(state, directory / STATE_FILE)
    torch.save(weights, directory / WEIGHTS_FILE)


def _restore(checkpoint_dir: str) -> dict[str, Any]:
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's ``train_loop_per_worker``: :func:`run` in a :class:`TrainSession`."""
    return run(config, TrainSession())


class _Progress:
    """Rank 0's per-step line in ``progress_log`` (none elsewhere, or without a log)."""

    def __init__(self, path: str | None, rank: int) -> None:
        self._path = Path(path) if path and rank == 0 else None

    def step(self, step: int, epoch: int) -> None:
        if self._path is not None:
            with self._path.open("a") as f:
                f.write(json.dumps({"t": time.time(), "step": step, "epoch": epoch}) + "\n")


def run(config: dict[str, Any], session: Session) -> dict[str, Any]:
    """Train; ``config`` is ``{"train": TrainConfig dict, "model": NoduleNetConfig dict}``.

    Returns (rank 0's value is a Train run's ``return_value``) the per-epoch history, the
    attempts' start epochs, where the workers ran, the steps taken so far, whether the run
    stopped because the broker asked it to yield, and the loader used ("resident"/"stream").
    """
    cfg = TrainConfig(**config["train"])
    rank, world = _world()
    device = session.device()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = build_model(config["model"]).to(device)
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    per_worker = max(1, cfg.batch_size // world)
    if world > 1 and device.type == "cuda" and use_sync_bn(cfg.sync_bn, per_worker):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(net) if cfg.compile else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    precision = choose_precision(cfg.amp, device)
    scaler = precision.grad_scaler()

    history: list[dict[str, float]] = []
    starts: list[int] = []
    start_epoch = step = skip = 0
    # The run's own latest checkpoint (after a failure) wins over a checkpoint to start from.
    checkpoint = session.checkpoint()
    if checkpoint is not None or cfg.resume_from:
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                state = _restore(directory)
        else:
            state = _restore(str(cfg.resume_from))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history, starts = state["epoch"] + 1, state["history"], state["starts"]
        # Checkpoints taken on a yield stop mid-epoch: that many steps of the next epoch are done.
        step, skip = state.get("step", 0), state.get("epoch_steps", 0)
    starts = [*starts, start_epoch]

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    node_type = current_node_type()
    # A simulated GPU (Ray reserved one, torch sees none) is given a real GPU's step time.
    min_step_s = cfg.simulated_gpu_ms / 1e3 if cfg.gpus_per_worker and device.type == "cpu" else 0.0
    progress = _Progress(cfg.progress_log, rank)
    resident = _resident(cfg, session, device)
    held_out = _HeldOut(lambda: session.batches("val", batch_size=per_worker, dtypes=torch.float32,
                                                device=device, prefetch_batches=2),
                        resident_budget(device))

    def save(epoch_done: int, epoch_steps: int, metrics: dict[str, float], name: str) -> None:
        """Checkpoint (rank 0 writes; every rank reports, as Train requires) and tell the broker."""
        with tempfile.TemporaryDirectory() as tmp:
            directory = None
            if rank == 0:
                _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict(), "epoch": epoch_done, "step": step,
                       "epoch_steps": epoch_steps, "history": history, "starts": starts},
                      model.state_dict(), Path(tmp))
                directory = tmp
            path = session.report(metrics, directory, name)
        if rank == 0 and cfg.run_id is not None:
            report_checkpoint(cfg.run_id, step, path)

    yielded = False
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        waited = 0.0
        samples = 0.0
        # Summed on the device: reading the loss every step would make the CPU wait for the GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        net.train()
        epoch_steps, skip = skip, 0  # steps taken before the yield this run resumes from
        if resident is not None:
            batches = resident.batches(per_worker, seed=cfg.seed, epoch=epoch, rank=rank, skip=epoch_steps)
        else:
            batches = iter(session.batches(
                "train", batch_size=per_worker, dtypes=torch.float32, device=device, drop_last=True,
                prefetch_batches=2, pin_memory=device.type == "cuda",
                local_shuffle_buffer_size=16 * per_worker, local_shuffle_seed=cfg.seed * 1000 + epoch))
            for _ in range(epoch_steps):
                next(batches, None)
        while True:
            w0 = time.perf_counter()
            batch = next(batches, None)
            s0 = time.perf_counter()
            waited += s0 - w0
            if batch is None:
                break
            x = random_flip(batch[VOLUME].unsqueeze(1), cfg.augment, generator)
            x = x.contiguous(memory_format=memory_format)
            y = batch[LABEL]
            with precision.autocast():
                logits = forward(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(y)
            samples += len(y)
            if min_step_s:
                time.sleep(max(0.0, min_step_s - (time.perf_counter() - s0)))
            step += 1
            epoch_steps += 1
            progress.step(step, epoch + 1)
            if cfg.run_id is not None and yield_requested(cfg.run_id, all_ranks=True):
                yielded = True
                break
        if yielded:
            save(epoch - 1, epoch_steps, {"epoch": float(epoch), "step": float(step)},
                 f"step_{step:07d}")
            _log.info("yielded at step %d (epoch %d, %d steps into it) on the broker's request",
                      step, epoch + 1, epoch_steps)
            break
        loss_total = float(loss_sum)  # waits for the epoch's last step, so the time below includes it
        seconds = time.perf_counter() - t0
        loss_sum, samples, waited_sum = _all_sum([loss_total, samples, waited], device)

        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(samples, 1.0),
            "samples_per_s": samples / seconds,
            # Share of the epoch the workers spent waiting for their next batch: the input
            # pipeline keeps up while this stays small.
            "input_wait": waited_sum / world / seconds,
            "epoch_s": seconds,
        }
        if rank == 0:
            auc, val_loss, n_val = _evaluate(model, held_out, precision)
            metrics.update(val_auc=auc, val_loss=val_loss, val_volumes=n_val)
            _log.info("epoch %d/%d: train loss %.4f, held-out AUC %.3f on %d volumes, %.0f samples/s, "
                      "input wait %.0f%%", epoch + 1, cfg.epochs, metrics["train_loss"], auc, n_val,
                      metrics["samples_per_s"], 100 * metrics["input_wait"])
        history.append(metrics)

        if epoch + 1 == cfg.epochs or (epoch + 1) % cfg.checkpoint_every == 0:
            save(epoch, 0, metrics, f"epoch_{epoch + 1:04d}")
        else:
            session.report(metrics, None, "")

    nodes: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(nodes, {"rank": rank, "node_type": node_type, "pid": os.getpid()})
    else:
        nodes = [{"rank": rank, "node_type": node_type, "pid": os.getpid()}]
    return {"history": history, "starts": starts, "workers": nodes, "step": step, "yielded": yielded,
            "loader": "stream" if resident is None else "resident"}


def summarise(history: list[dict[str, float]]) -> dict[str, float]:
    """The last epoch's metrics plus the run's mean input wait and throughput."""
    last = dict(history[-1])
    last["mean_samples_per_s"] = float(np.mean([h["samples_per_s"] for h in history]))
    last["mean_input_wait"] = float(np.mean([h["input_wait"] for h in history]))
    return last
