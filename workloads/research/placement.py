"""Where training workers go: ``medray.scheduling`` placement turned into Ray Train's ScalingConfig.

A Train worker group is one placement group, and placement-group bundles take a label selector but
no ``fallback_strategy``. So each worker gets its own selector (Ray Train's per-worker
``label_selector`` list), filled in the placement's cost order by the room the running cluster has
when the run starts (:meth:`~medray.scheduling.placement.Placement.group_selectors`): workers go to
the cheapest training type while it has free GPUs and spill onto the next only when it is full,
and never reach inference nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medray.cluster.node_types import SIMULATED_GPU_LABEL, NodeType, load_node_types
from medray.scheduling.load import cluster_load, require_running
from medray.scheduling.options import place
from medray.scheduling.placement import LoadSnapshot, Placement, WorkloadProfile

__all__ = ["TRAIN_ROLES", "WorkerPlacement", "place_workers"]

TRAIN_ROLES = ("train",)


@dataclass(frozen=True)
class WorkerPlacement:
    """Resources, per-worker label selectors, accelerator type and torch backend of training workers.

    ``load``: the cluster as it was when the workers were placed; selectors fill it cheapest first.
    """

    placement: Placement
    accelerator_type: str | None
    backend: str  # "nccl" on real GPUs, "gloo" on CPUs or simulated GPUs
    load: LoadSnapshot

    def label_selectors(self, num_workers: int) -> list[dict[str, str]]:
        """The label selector of each of ``num_workers`` workers, cheapest node type with room first."""
        return self.placement.group_selectors(num_workers, self.load)

    @property
    def resources_per_worker(self) -> dict[str, float]:
        profile = self.placement.profile
        resources = {"CPU": profile.num_cpus}
        if profile.num_gpus:
            resources["GPU"] = profile.num_gpus
        return resources

    @property
    def use_gpu(self) -> bool:
        return bool(self.placement.profile.num_gpus)

    def scaling_config(self, num_workers: int | tuple[int, int]) -> Any:
        """Ray Train's ScalingConfig; ``(min, max)`` workers make the group elastic."""
        from ray.train import ScalingConfig

        most = num_workers if isinstance(num_workers, int) else num_workers[1]
        return ScalingConfig(
            num_workers=num_workers,
            use_gpu=self.use_gpu,
            resources_per_worker=self.resources_per_worker,
            label_selector=self.label_selectors(most),
            accelerator_type=self.accelerator_type,
        )

    def torch_config(self) -> Any:
        from ray.train.torch import TorchConfig

        return TorchConfig(backend=self.backend)


def place_workers(
    *,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    accelerator: str | None = None,
    node_types: Sequence[NodeType] | None = None,
) -> WorkerPlacement:
    """Place training workers on ``train`` nodes (of one ``accelerator`` model when given).

    Needs a Ray connection: it checks that a candidate node is running and whether its GPUs are
    real (NCCL) or simulated (gloo). Raises PlacementError otherwise.
    """
    types = list(node_types) if node_types is not None else load_node_types()
    if accelerator is not None:
        types = [t for t in types if t.accelerator == accelerator]
    profile = WorkloadProfile(roles=TRAIN_ROLES, num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
    placement = place(profile, types)
    live = require_running(placement, hint="start the medray cluster (`medray up --local`) or connect to one "
                           "with training nodes")
    real_gpus = gpus_per_worker > 0 and any(n["Labels"].get(SIMULATED_GPU_LABEL) != "true" for n in live)
    accelerators = {t.accelerator for t in placement.candidates}
    # Ray's accelerator_type is one model: set it only when every candidate has that model.
    accelerator_type = accelerators.pop() if gpus_per_worker and len(accelerators) == 1 else None
    return WorkerPlacement(placement=placement, accelerator_type=accelerator_type,
                           backend="nccl" if real_gpus else "gloo", load=cluster_load())
