"""The training side of preemption: a run polls whether to yield and reports its checkpoints.

A run started by the broker (:func:`medray.broker.actor.submit_run`) calls :func:`yield_requested` at
step or epoch boundaries and :func:`report_checkpoint` after saving; both cost next to nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray

from medray.broker.client import get_broker

__all__ = ["yield_requested", "report_checkpoint"]


@dataclass
class _Poll:
    answer: bool = False
    ref: Any = None
    at: float = float("-inf")
    broker: Any = None
    looked_up_at: float = float("-inf")


_polls: dict[str, _Poll] = {}


def _all_ranks_agree(flag: bool) -> bool:
    """True on every rank when any rank says True (ranks must stop at the same step under DDP)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def yield_requested(run_id: str, *, max_age_s: float = 0.5, all_ranks: bool = False) -> bool:
    """Whether the broker asks run ``run_id`` to checkpoint and stop. Never blocks on the broker.

    The answer is at most about ``max_age_s`` old: the call returns the last answer and, when that is
    stale, sends one asynchronous question whose reply a later call picks up. False without a broker.
    With ``all_ranks=True`` every rank of a ``torch.distributed`` group must call it at the same step;
    all then get the same answer (one tiny all-reduce).
    """
    poll = _polls.setdefault(run_id, _Poll())
    now = time.monotonic()
    if poll.ref is not None:
        ready, _ = ray.wait([poll.ref], timeout=0)
        if ready:
            try:
                poll.answer = bool(ray.get(poll.ref))
            except ray.exceptions.RayError:  # broker gone: look it up again next time
                poll.broker = None
            poll.ref, poll.at = None, now
    if poll.ref is None and now - poll.at >= max_age_s:
        if poll.broker is None and now - poll.looked_up_at >= 5 * max_age_s:
            poll.broker, poll.looked_up_at = get_broker(), now
        if poll.broker is not None:
            poll.ref = poll.broker.should_yield.remote(run_id)
        poll.at = now
    return _all_ranks_agree(poll.answer) if all_ranks else poll.answer


def report_checkpoint(run_id: str, step: int, path: str | None = None) -> None:
    """Tell the broker that run ``run_id`` saved a checkpoint after ``step`` at ``path`` (no wait).

    Under DDP call it from rank 0 only. ``path`` is what ``resume_from`` will be on the next start.
    """
    broker = get_broker()
    if broker is not None:
        broker.report_checkpoint.remote(run_id, int(step), path)
