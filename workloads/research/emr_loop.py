"""The EMR training loop, the same code in every Ray Train worker and in single-process training.

Each step: the global batch (``batch_size`` patients of a seeded per-epoch permutation) is split
evenly by rank. For every table routed to the parameter servers the worker pulls the distinct rows
its half needs, pools them, and after ``backward`` pushes their gradients (the servers apply sparse
Adagrad); the tower and the tables routed to AllReduce are in a DDP module whose gradients are
all-reduced (gloo on CPU, NCCL on GPUs) and stepped locally (Adam for the tower, Adagrad for the
tables, the servers' settings). With ``world == 1`` and no servers it is single-process training.

Checkpoint (every ``checkpoint_every`` steps and at the end): ``state.pt`` (local modules, both
optimisers, step, attempts' start steps) and ``tables.npz`` (the served tables' weights and
accumulators, gathered once every shard has applied that same step), so both halves agree. At
every start rank 0 configures the servers: fresh tables, or the checkpoint's.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from medray.models.evaluate import roc_auc
from medray.paramserver import ParameterClient, configure_servers, gather_tables
from medray.paramserver.routing import PARAMETER_SERVER
from workloads.research.emr_config import EmrTrainConfig
from workloads.research.emr_data import EmrExamples
from workloads.research.emr_model import TABLES, EmrRiskNet, pool

__all__ = ["STATE_FILE", "TABLES_FILE", "batch_index", "load_checkpoint", "run_loop", "train_worker"]

STATE_FILE = "state.pt"
TABLES_FILE = "tables.npz"
Report = Callable[[dict[str, float], str | None], None]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_index(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The examples of global batch ``step``: a slice of epoch ``step // (n // batch_size)``'s permutation."""
    epoch, b = divmod(step, n // batch_size)
    return np.random.default_rng([seed, epoch]).permutation(n)[b * batch_size:(b + 1) * batch_size]


@dataclass
class _AllReduceBytes:
    """The gradient bytes DDP all-reduced (the state of :func:`_counting_allreduce`)."""

    bytes: int = 0


def _counting_allreduce(state, bucket):  # DDP checks the hook's annotations: none here
    """DDP's default all-reduce hook, counting each bucket's bytes into ``state``."""
    buffer = bucket.buffer()
    state.bytes += buffer.numel() * buffer.element_size()
    return default_hooks.allreduce_hook(None, bucket)


def _shared_token(world: int) -> str:
    """One token per attempt, rank 0's, known to every rank."""
    token = [uuid.uuid4().hex]
    if world > 1:
        dist.broadcast_object_list(token, src=0)
    return token[0]


def _table_state(tables: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{n}.{k}": v for n, arrays in tables.items() for k, v in arrays.items()}


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """(``state.pt``'s dict, the served tables ``{table: {weight, sum_sq}}``) of a checkpoint folder."""
    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, weights_only=False)
    tables: dict[str, dict[str, np.ndarray]] = {}
    with np.load(directory / TABLES_FILE) as npz:
        for key in npz.files:
            name, _, kind = key.partition(".")
            tables.setdefault(name, {})[kind] = npz[key]
    return state, tables


def run_loop(cfg: EmrTrainConfig, routes: Mapping[str, str], train: EmrExamples, val: EmrExamples | None, *,
             servers: Sequence[Any] = (), checkpoint: str | None = None, report: Report | None = None,
             device: torch.device | None = None) -> dict[str, Any]:
    """Train from ``checkpoint`` (a folder) or the start; rank 0 returns the run's figures.

    ``report(metrics, checkpoint_dir)`` is called on every rank at each checkpoint (Ray Train's
    report); without it no checkpoint is written.
    """
    rank, world = _world()
    device = device or torch.device("cpu")
    net_cfg = cfg.net()
    specs = net_cfg.tables()
    served = [n for n in TABLES if routes[n] == PARAMETER_SERVER]
    model = EmrRiskNet(net_cfg, local=[n for n in TABLES if n not in served]).to(device)
    counter = _AllReduceBytes()
    forward: torch.nn.Module = model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        forward.register_comm_hook(counter, _counting_allreduce)
    table_opt = (torch.optim.Adagrad(model.bags.parameters(), lr=cfg.lr_tables, eps=cfg.adagrad_eps)
                 if len(model.bags) else None)
    tower_opt = torch.optim.Adam(model.tower.parameters(), lr=cfg.lr_tower)

    start, starts, tables = 0, [], None
    if checkpoint is not None:
        state, tables = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        tower_opt.load_state_dict(state["tower_opt"])
        if table_opt is not None:
            table_opt.load_state_dict(state["table_opt"])
        start, starts = state["step"], state["starts"]
    starts = [*starts, start]
    token = _shared_token(world)
    if served and rank == 0:
        configure_servers(servers, token, world=world, start_step=start, staleness=cfg.staleness,
                          state={n: tables[n] for n in served} if tables else None)
    if world > 1:
        dist.barrier()
    client = ParameterClient(servers, [specs[n] for n in served], token=token, rank=rank) if served else None

    per_worker = cfg.batch_size // world
    total = cfg.total_steps(len(train))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(start, total):
        batch = train.take(batch_index(len(train), cfg.batch_size, step, cfg.seed)[rank * per_worker:
                                                                                    (rank + 1) * per_worker])
        bags = {n: (ids.to(device), offsets.to(device)) for n, (ids, offsets) in batch.bags().items()}
        pulled: dict[str, torch.Tensor] = {}
        pooled: dict[str, torch.Tensor] = {}
        if client is not None:
            distinct = {n: torch.unique(bags[n][0].cpu(), return_inverse=True) for n in served}
            rows = client.pull(step, {n: d[0] for n, d in distinct.items()})
            for n in served:
                pulled[n] = rows[n].to(device).requires_grad_()
                pooled[n] = pool(pulled[n], distinct[n][1].to(device), bags[n][1])
        loss = loss_fn(forward(bags, pooled), torch.from_numpy(batch.labels).to(device))
        tower_opt.zero_grad(set_to_none=True)
        if table_opt is not None:
            table_opt.zero_grad(set_to_none=True)
        loss.backward()
        if client is not None:
            client.push(step, {n: p.grad.cpu() for n, p in pulled.items()})
        tower_opt.step()
        if table_opt is not None:
            table_opt.step()
        losses.append(float(loss.detach()))
        if report is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            metrics = {"step": step + 1, "train_loss": float(np.mean(losses[-cfg.checkpoint_every:]))}
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    gathered = gather_tables(servers, [specs[n] for n in served], token, step) if served else {}
                    torch.save({"model": model.state_dict(), "tower_opt": tower_opt.state_dict(),
                                "table_opt": table_opt.state_dict() if table_opt else None,
                                "step": step + 1, "starts": starts, "routes": dict(routes)}, Path(tmp) / STATE_FILE)
                    np.savez(Path(tmp) / TABLES_FILE, **_table_state(gathered))
                report(metrics, tmp if rank == 0 else None)
    seconds = time.perf_counter() - t0
    if client is not None:
        client.flush()
    steps = max(1, total - start)
    out = {"steps": total, "starts": starts, "seconds": seconds,
           "samples_per_s": (total - start) * cfg.batch_size / seconds if seconds > 0 else 0.0,
           "ps_bytes_per_step": (client.traffic.total if client else 0) / steps,
           "allreduce_bytes_per_step": counter.bytes / steps,
           "train_loss": float(np.mean(losses[-20:])) if losses else float("nan")}
    if rank == 0 and val is not None:
        full = gather_tables(servers, [specs[n] for n in served], token, total - 1) if served else {}
        out["val_auc"] = evaluate(model, {n: torch.from_numpy(full[n]["weight"]) for n in full}, val, device)
    return out


@torch.no_grad()
def evaluate(model: EmrRiskNet, served: Mapping[str, torch.Tensor], examples: EmrExamples,
             device: torch.device) -> float:
    """Held-out AUC of ``model`` with the served tables' full weights ``served``."""
    model.eval()
    bags = {n: (ids.to(device), offsets.to(device)) for n, (ids, offsets) in examples.bags().items()}
    pooled = {n: pool(w.to(device), *bags[n]) for n, w in served.items()}
    scores = model(bags, pooled).cpu().numpy()
    model.train()
    return roc_auc(scores, examples.labels)


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's ``train_loop_per_worker``: ``{"train", "routes", "data", "servers"}``."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = EmrTrainConfig(**config["train"])
    train, val = ray.get(config["data"])
    checkpoint = ray.train.get_checkpoint()

    def report(metrics: dict[str, float], directory: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)

    if checkpoint is None:
        return run_loop(cfg, config["routes"], train, val, servers=config["servers"], report=report,
                        device=ray.train.torch.get_device())
    with checkpoint.as_directory() as directory:
        return run_loop(cfg, config["routes"], train, val, servers=config["servers"], checkpoint=directory,
                        report=report, device=ray.train.torch.get_device())
