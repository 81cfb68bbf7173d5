"""The application builder: ``serve run workloads.diagnosis:app`` / the ``import_path`` of the Serve config.

It validates the config's ``args`` (:class:`~workloads.diagnosis.config.DiagnosisArgs`) and asks
``medray.scheduling`` where each deployment runs: the ingress (which diagnoses routine studies)
and the emergency lane prefer ``infer`` nodes and may fall back to ``train`` nodes (real-time
work, always-on node types first); the catalog, which does no work, prefers the coordinator.
The Serve config therefore carries only arguments, never node names or resources.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from medray.scheduling import WorkloadProfile, place
from workloads.diagnosis.api import DiagnosisAPI
from workloads.diagnosis.config import DiagnosisArgs, LaneConfig
from workloads.diagnosis.deployments import ModelCatalog, Diagnoser

__all__ = ["APP_NAME", "build_app", "deployment_options"]

APP_NAME = "diagnosis"
_SERVING_ROLES = ("infer", "train")
_EMERGENCY_HEADROOM = 64  # requests an ingress replica accepts beyond its routine limit
_UNBOUNDED = 100_000


def _autoscaling(cfg: LaneConfig) -> AutoscalingConfig:
    return AutoscalingConfig(
        min_replicas=cfg.min_replicas,
        initial_replicas=max(cfg.min_replicas, 1),
        max_replicas=cfg.max_replicas,
        target_ongoing_requests=cfg.target_ongoing_requests,
        # Scale up fast for bursts; scale down slowly so a burst's tail is not left short.
        upscale_delay_s=3.0,
        downscale_delay_s=60.0,
    )


def _placement(cfg: LaneConfig) -> dict[str, Any]:
    profile = WorkloadProfile(roles=_SERVING_ROLES, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                              gpu_memory_gb=cfg.gpu_memory_gb, latency="realtime")
    return place(profile).ray_options()


def deployment_options(args: DiagnosisArgs) -> dict[str, dict[str, Any]]:
    """Serve options of every deployment (``ingress``, ``emergency``, ``catalog``), placement included."""
    backpressure = BackpressureConfig(status_code=503, retry_after_s=args.retry_after_s)
    routine, emergency = args.lanes["routine"], args.lanes["emergency"]
    unbounded = routine.max_queued_requests < 0
    return {
        # The ingress replicas diagnose routine studies themselves (no hop on the hot path) and
        # admit at most max_ongoing + max_queued of them each (503 beyond). Serve's own limit is
        # set above that, so an emergency is never held in the proxy behind routine studies.
        "ingress": {
            "name": "ingress",
            "ray_actor_options": _placement(routine),
            "autoscaling_config": _autoscaling(routine),
            "max_ongoing_requests": (
                _UNBOUNDED if unbounded else
                routine.max_ongoing_requests + routine.max_queued_requests + _EMERGENCY_HEADROOM),
            # Unbounded in the proxy: a bound there would refuse emergencies along with routine
            # studies; routine studies are bounded by the replicas themselves.
            "max_queued_requests": -1,
        },
        "emergency": {
            "name": "emergency",
            "ray_actor_options": _placement(emergency),
            "autoscaling_config": _autoscaling(emergency),
            "max_ongoing_requests": emergency.max_ongoing_requests,
            "max_queued_requests": emergency.max_queued_requests,
            "backpressure_config": backpressure,
            # The ingress logs and audits each request; a second access line only costs CPU.
            "logging_config": {"enable_access_log": False},
        },
        "catalog": {
            "name": "catalog",
            "num_replicas": 1,
            "ray_actor_options": place(WorkloadProfile(roles=("coordinator", *_SERVING_ROLES), num_cpus=0,
                                                       latency="realtime")).ray_options(),
            "max_ongoing_requests": 1000,  # every replica polls it; answers are instant
            "logging_config": {"enable_access_log": False},  # two polls a second per replica
        },
    }


def build_app(args: dict[str, Any] | DiagnosisArgs) -> Application:
    """The diagnosis application for ``args`` (a mapping as in the Serve config, or DiagnosisArgs)."""
    args = args if isinstance(args, DiagnosisArgs) else DiagnosisArgs.model_validate(args)
    options = deployment_options(args)
    catalog = serve.deployment(ModelCatalog).options(**options["catalog"]).bind(args.registry, args.experts)
    emergency = serve.deployment(Diagnoser).options(**options["emergency"]).bind("emergency", args, catalog)
    return serve.deployment(DiagnosisAPI).options(**options["ingress"]).bind(args, catalog, emergency)
