"""The application builders: the ``import_path`` of each application in the Serve config.

The service is two Serve applications, one per lane, each with its own HTTP ingress
(:mod:`workloads.diagnosis.api`): ``workloads.diagnosis:app`` (:func:`build_app`, named
``diagnosis``, route ``/``: the routine ingress and the model catalog) and
``workloads.diagnosis:emergency_app`` (:func:`build_emergency_app`, ``diagnosis-emergency``,
route ``/emergency``). Both take the same ``args``.

Each builder validates the config's ``args`` (:class:`~workloads.diagnosis.config.DiagnosisArgs`)
and asks ``medray.scheduling`` where each deployment runs: the lanes' ingresses go to their lane's
``roles`` (default ``infer``, then ``train`` as fallback: real-time work, always-on node types
first); the catalog, which does no work, prefers the coordinator. The Serve config therefore
carries only arguments, never node names or resources.

Each lane autoscales by its own settings. Its replicas go to the cheapest node type first (the
primary label selector), then to the other types in price order (``fallback_strategy``): replicas
beyond what the inference nodes hold land on the next roles' nodes, GPUs the priority broker lends
from research (:func:`watch_lanes` tells the broker about the lanes). Serve stops replicas outside
the primary selector first when it scales down, so the dearest and the borrowed GPUs are the first
ones given back.
"""

from __future__ import annotations

import warnings
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from medray.broker.client import get_broker, unwatch_serve, watch_serve
from medray.scheduling.options import place
from medray.scheduling.placement import Placement, WorkloadProfile
from workloads.diagnosis.api import DiagnosisAPI, EmergencyAPI
from workloads.diagnosis.config import LANE_PRIORITIES, LANES, DiagnosisArgs, LaneConfig
from workloads.diagnosis.deployments import ModelCatalog

__all__ = ["APP_NAME", "LANE_DEPLOYMENTS", "build_app", "build_emergency_app",
           "deployment_options", "lane_apps", "lane_options", "watch_lanes", "unwatch_lanes"]

APP_NAME = "diagnosis"
LANE_DEPLOYMENTS = {"routine": "ingress", "emergency": "emergency"}  # the deployment serving each lane
_HEADROOM = 16  # requests a routine replica accepts beyond its limit: the model routes, /healthz
_UNBOUNDED = 100_000
_MAX_METRICS_INTERVAL_S = 10.0  # Serve's default


def _autoscaling(cfg: LaneConfig) -> AutoscalingConfig:
    # Ray 2.60's handles push their load every metrics_interval_s: the field is deprecated (for
    # process-wide environment variables) but still the only per-deployment setting.
    interval = min(_MAX_METRICS_INTERVAL_S, cfg.look_back_period_s / 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The `metrics_interval_s` field", DeprecationWarning)
        return AutoscalingConfig(
            min_replicas=cfg.min_replicas,
            initial_replicas=max(cfg.min_replicas, 1),
            max_replicas=cfg.max_replicas,
            target_ongoing_requests=cfg.target_ongoing_requests,
            upscale_delay_s=cfg.upscale_delay_s,
            downscale_delay_s=cfg.downscale_delay_s,
            look_back_period_s=cfg.look_back_period_s,
            metrics_interval_s=interval,
        )


def lane_options(cfg: LaneConfig) -> dict[str, Any]:
    """``ray_actor_options`` of a lane's replicas: the cheapest node type, the others as fallbacks in order."""
    return _lane_placement(cfg).ray_options()


def _lane_placement(cfg: LaneConfig) -> Placement:
    return place(WorkloadProfile(roles=cfg.roles, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                 gpu_memory_gb=cfg.gpu_memory_gb, latency="realtime"))


def deployment_options(args: DiagnosisArgs) -> dict[str, dict[str, Any]]:
    """Serve options of every deployment (``ingress``, ``emergency``, ``catalog``), placement included."""
    backpressure = BackpressureConfig(status_code=503, retry_after_s=args.retry_after_s)
    routine, emergency = args.lanes["routine"], args.lanes["emergency"]
    unbounded = routine.max_queued_requests < 0
    # A lane that borrows checks each second whether the broker asks a replica to step down (Serve
    # stops a replica after 3 failed checks in a row).
    health = {"health_check_period_s": 1.0} if args.broker else {}
    return {
        # The routine replicas diagnose routine studies themselves (no hop on the hot path) and
        # admit at most max_ongoing + max_queued of them each (503 beyond): the queue is in the
        # replica, where the routine lane's batches form.
        "ingress": {
            "name": LANE_DEPLOYMENTS["routine"],
            "ray_actor_options": lane_options(routine),
            "autoscaling_config": _autoscaling(routine),
            "max_ongoing_requests": (
                _UNBOUNDED if unbounded else routine.max_ongoing_requests + routine.max_queued_requests + _HEADROOM),
            "max_queued_requests": -1,
            **health,
        },
        # The emergency replicas take max_ongoing_requests each (a batch's worth); Serve queues the
        # rest in front of them, up to max_queued_requests (503 + Retry-After beyond), and hands
        # each to whichever replica frees first, one that just started included.
        "emergency": {
            "name": LANE_DEPLOYMENTS["emergency"],
            "ray_actor_options": lane_options(emergency),
            "autoscaling_config": _autoscaling(emergency),
            "max_ongoing_requests": emergency.max_ongoing_requests,
            "max_queued_requests": emergency.max_queued_requests,
            "backpressure_config": backpressure,
            **health,
        },
        "catalog": {
            "name": "catalog",
            "num_replicas": 1,
            "ray_actor_options": place(WorkloadProfile(roles=("coordinator", "infer", "train"), num_cpus=0,
                                                       latency="realtime")).ray_options(),
            "max_ongoing_requests": 1000,  # every replica polls it; answers are instant
            "logging_config": {"enable_access_log": False},  # two polls a second per replica
        },
    }


def _args(args: dict[str, Any] | DiagnosisArgs) -> DiagnosisArgs:
    args = args if isinstance(args, DiagnosisArgs) else DiagnosisArgs.model_validate(args)
    if args.broker and get_broker() is not None:
        # Before any replica exists: replicas beyond the inference nodes may need lent GPUs. Every
        # way of deploying builds the apps here (`serve deploy`, `medray serve`, run_local).
        watch_lanes(args)
    return args


def build_app(args: dict[str, Any] | DiagnosisArgs) -> Application:
    """The routine application (its ingress and the model catalog) for ``args`` (a mapping as in
    the Serve config, or DiagnosisArgs)."""
    args = _args(args)
    options = deployment_options(args)
    catalog = serve.deployment(ModelCatalog).options(**options["catalog"]).bind(args.registry, args.experts)
    return serve.deployment(DiagnosisAPI).options(**options["ingress"]).bind(args, catalog)


def build_emergency_app(args: dict[str, Any] | DiagnosisArgs) -> Application:
    """The emergency application (its own ingress, reserved replicas) for ``args``; it follows the
    routine application's model catalog."""
    args = _args(args)
    return serve.deployment(EmergencyAPI).options(**deployment_options(args)["emergency"]).bind(args)


def lane_apps(app: str = APP_NAME) -> dict[str, str]:
    """The Serve application of each lane when the routine one is named ``app``."""
    return {"routine": app, "emergency": f"{app}-emergency"}


def watch_lanes(args: DiagnosisArgs) -> None:
    """Have the running priority broker read both lanes' demand from Serve (lanes ``<app>/<lane>``).

    The emergency lane counts as ``emergency``, the routine lane as ``clinical``: both outrank
    research runs, whose GPUs they then borrow when their replicas cannot be placed. The broker
    also learns each lane's node types and replica size, to see when a replica on a lent node
    could run on the lane's own nodes instead.
    """
    app = args.app_name
    for lane, lane_app in lane_apps(app).items():
        cfg = args.lanes[lane]
        placement = _lane_placement(cfg)
        watch_serve(f"{app}/{lane}", app=lane_app, deployment=LANE_DEPLOYMENTS[lane],
                    priority=LANE_PRIORITIES[lane], node_types=[t.name for t in placement.candidates],
                    unit={"CPU": cfg.num_cpus, "GPU": cfg.num_gpus})


def unwatch_lanes(app: str = APP_NAME) -> None:
    """Stop the broker watching the lanes of ``app`` (no broker: nothing to do)."""
    for lane in LANES:
        unwatch_serve(f"{app}/{lane}")
