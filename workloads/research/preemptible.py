"""Research training as a preemptible broker run: it gives its GPUs to clinical work in a burst.

    from workloads.research.preemptible import submit
    submit("nodule-study-7", TrainConfig(data=..., labels=..., registry=..., epochs=20, workers=2))

:func:`submit` hands the run to the priority broker (:mod:`medray.broker`), which calls :func:`run`
(``ENTRYPOINT``) in a Ray task: the ordinary :func:`~workloads.research.train.train` with the run id
set, so that every step polls the broker (:mod:`workloads.research.loop`). Asked to yield, the run
checkpoints at that step, reports the checkpoint and returns; after the burst the broker calls
:func:`run` again with ``resume_from`` = that checkpoint, and the step count goes on from there.
Each start is a new Ray Train run named ``<run_id>-<6 hex>`` under the config's ``storage_path``.
The model is registered when the run finishes, never on a yield.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from medray.broker.actor import submit_run
from workloads.research.config import TrainConfig
from workloads.research.train import train

__all__ = ["ENTRYPOINT", "run", "submit"]

ENTRYPOINT = "workloads.research.preemptible:run"
HEALTH_CHECK_ENV, HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def run(config: dict[str, Any], *, run_id: str, resume_from: str | None,
        workers: int | None = None) -> dict[str, Any]:
    """The broker's entrypoint: train ``config`` (a TrainConfig dict) as run ``run_id``, on
    ``workers`` workers when the broker resized it (the checkpoint is the same at any size).

    Returns ``{"yielded", "steps", "checkpoint", "ref"}``.
    """
    # Ray Train's controller notices finished workers at this period (default 2 s): a yielded run
    # releases its GPUs that much sooner. Ray Train hands the variable on to the controller.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)
    cfg = TrainConfig(**config).with_overrides(
        run_id=run_id,
        run_name=f"{run_id}-{uuid.uuid4().hex[:6]}",
        resume_from=resume_from or config.get("resume_from"),
        **({"workers": workers} if workers else {}),
    )
    result = train(cfg)
    return {"yielded": result.yielded, "steps": result.steps, "checkpoint": result.checkpoint,
            "ref": result.ref}


def submit(run_id: str, config: TrainConfig, *, priority: str = "research", min_workers: int = 1) -> None:
    """Start ``config`` as broker run ``run_id`` (a name without PHI: it appears in status and logs).

    A run of several workers lends only what a burst needs, down to ``min_workers``.
    """
    most = config.workers if isinstance(config.workers, int) else config.workers[1]
    submit_run(run_id, ENTRYPOINT, config.to_dict(), priority=priority,
               workers=(min(min_workers, most), most))
