"""The diagnosis application's settings: the ``args`` of its Serve config, validated at the boundary.

``serve deploy deploy/serve-diagnosis.yaml`` hands the ``args`` mapping to the app builder, which
validates it here before anything is deployed: a typo fails the deploy with a message instead of
a replica failing later.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medray.broker.lanes import LANE_PRIORITIES, LANES, PRIORITY_HEADER
from medray.cluster.node_types import ROLES
from medray.errors import RegistryError
from medray.models.backends import REQUESTS as BACKEND_REQUESTS
from medray.models.registry import parse_ref

__all__ = ["LANES", "LANE_PRIORITIES", "PRIORITY_HEADER", "REASON_STATUS", "LaneConfig", "DiagnosisArgs",
           "expert_key"]

# Serve replicas do not run in the caller's directory: paths must not depend on it.
_PATH_HELP = "absolute path ('~' expands to the home of the user running Ray)"


def expert_key(modality: str, body_part: str) -> str:
    """``"CT/CHEST"``: how the routing table names the specialist for a modality and body part."""
    return f"{modality.strip().upper()}/{body_part.strip().upper() or '*'}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaneConfig(_Strict):
    """One priority lane: its replicas, their sizes and its queue."""

    min_replicas: int = Field(1, ge=0, description="replicas kept running (reserved capacity)")
    max_replicas: int = Field(2, ge=1, description="upper bound for autoscaling")
    target_ongoing_requests: float = Field(8, gt=0, description="autoscaling target per replica")
    max_ongoing_requests: int = Field(32, ge=1, description="requests a replica works on at once")
    max_queued_requests: int = Field(
        128, ge=-1, description="requests allowed to wait beyond those in progress; more -> 503; -1 = unbounded. "
                                "Routine: per ingress replica. Emergency: in front of the replicas (Serve's "
                                "queue, handed to whichever replica frees first)")
    queue_timeout_s: float = Field(
        30.0, gt=0, description="a study that waited this long for the model is answered 503 + Retry-After "
                                "instead of being diagnosed late")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica (also torch threads, at least 1)")
    num_gpus: float = Field(0.25, ge=0, description="GPU share per replica (fractions share one GPU)")
    gpu_memory_gb: float = Field(2.0, ge=0, description="GPU memory a replica needs (placement)")
    roles: tuple[str, ...] = Field(
        ("infer", "train"),
        description="node roles the replicas may use, preferred first; replicas beyond the first role's "
                    "capacity borrow the next roles' GPUs (lent by the priority broker); ['infer'] never borrows")
    upscale_delay_s: float = Field(3.0, ge=0, description="load above target this long adds replicas")
    downscale_delay_s: float = Field(
        60.0, ge=0, description="load below target this long removes replicas (and gives borrowed GPUs back)")
    look_back_period_s: float = Field(
        30.0, gt=0, description="the load is averaged over this window (pushed every min(10 s, half of it))")

    @model_validator(mode="after")
    def _bounds(self) -> LaneConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.gpu_memory_gb and not self.num_gpus:
            raise ValueError("gpu_memory_gb needs num_gpus > 0")
        unknown = [r for r in self.roles if r not in ROLES]
        if not self.roles or unknown or len(set(self.roles)) != len(self.roles):
            raise ValueError(f"roles must be distinct node roles of {list(ROLES)}, got {list(self.roles)}")
        return self


def _default_lanes() -> dict[str, LaneConfig]:
    return {
        "routine": LaneConfig(min_replicas=1, max_replicas=4),
        # Reserved on inference nodes, up to 5 more on GPUs the broker lends; quick up, quick back.
        # Few requests per replica, the rest queued in front of the replicas, so that a replica
        # that starts in a burst takes queued emergencies at once.
        "emergency": LaneConfig(min_replicas=1, max_replicas=6, target_ongoing_requests=4, max_ongoing_requests=8,
                                max_queued_requests=64, queue_timeout_s=10.0, upscale_delay_s=1.0,
                                downscale_delay_s=20.0, look_back_period_s=3.0),
    }


class DiagnosisArgs(_Strict):
    """Arguments of ``workloads.diagnosis:app`` and ``workloads.diagnosis:emergency_app`` (the ``args``
    of the Serve config: both applications take the same)."""

    registry: str = Field(description=f"model registry directory; {_PATH_HELP}")
    tokens: str = Field(description=f"bearer token file (see `medray token create`); {_PATH_HELP}")
    audit_log: str = Field(description=f"append-only audit log (JSON lines); {_PATH_HELP}")
    key_file: str | None = Field(
        None, description=f"pseudonym key file (chmod 600); {_PATH_HELP}. Default: $MEDRAY_DEID_KEY on the replicas")
    audit_key_file: str | None = Field(None, description="HMAC key file for the audit chain (optional)")
    audit_fsync: bool = Field(False, description="fsync every audit entry (power-loss safe, slower)")
    experts: dict[str, str] = Field(
        default_factory=lambda: {"CT/CHEST": "nodule:latest"},
        description="routing table 'MODALITY/BODYPART' (BODYPART may be '*') -> model 'name:version'")
    threshold: float = Field(0.5, gt=0, lt=1, description="probability at or above which a finding is positive")
    max_body_mb: float = Field(256, gt=0, description="largest request body; larger -> 413")
    max_instance_pixels: int = Field(4096 * 4096, ge=1, description="pixels one instance may declare; more -> 413")
    max_instances: int = Field(2000, ge=1, description="instances one request may carry; more -> 413")
    max_batch_size: int = Field(16, ge=1, description="largest inference batch (dynamic batching)")
    backend: str = Field(
        "auto",
        description="how replicas run the models (medray.models.backends): 'auto' = 'compile' (torch.compile, "
                    "CUDA graphs, bf16) where the replica has a CUDA GPU, 'onnx' (ONNX Runtime fp32, exported once "
                    "into the registry) on CPUs; 'onnx-int8' needs a passed check_int8 of the model; 'tensorrt' "
                    "needs TensorRT; 'eager' = plain torch fp32, the reference")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="how long a batch waits to fill; 0 = take what is queued, never wait")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of 503 responses when overloaded")
    app_name: str = Field(
        "diagnosis", min_length=1,
        description="the routine application's name in the Serve config (it holds the model catalog); the "
                    "emergency application is named `<app_name>-emergency`")
    simulated_gpu_ms: float = Field(
        0.0, ge=0,
        description="on simulated GPUs only (local cluster: Ray counts a GPU, torch has none), a replica's "
                    "GPU takes at least this long for a batch of one volume, as a real one would be busy: for "
                    "benchmarks of placement, queueing and batching on a CPU machine; 0 = as fast as the CPU goes")
    simulated_gpu_batch_share: float = Field(
        0.8, ge=0, le=1,
        description="the share of simulated_gpu_ms that a batch costs once (launches, weights read); the rest "
                    "is paid per volume: a batch of n takes simulated_gpu_ms * (share + (1 - share) * n)")
    broker: bool = Field(
        True, description="hand both lanes to the priority broker when one runs as the app is built, so that "
                          "bursts borrow research GPUs (start the broker first); false = a static partition")
    lanes: dict[str, LaneConfig] = Field(
        default_factory=_default_lanes,
        description="'routine' sizes the routine ingress deployment (it diagnoses routine studies itself); "
                    "'emergency' the emergency application's ingress, reserved for emergencies")

    @field_validator("registry", "tokens", "audit_log", "key_file", "audit_key_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            raise ValueError(f"{value!r} is relative: use an {_PATH_HELP}")
        return str(path)

    @field_validator("backend")
    @classmethod
    def _backend(cls, backend: str) -> str:
        if backend not in BACKEND_REQUESTS:
            raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKEND_REQUESTS)}")
        return backend

    @field_validator("experts")
    @classmethod
    def _experts(cls, experts: dict[str, str]) -> dict[str, str]:
        if not experts:
            raise ValueError("experts must route at least one 'MODALITY/BODYPART' to a model")
        for key, ref in experts.items():
            modality, sep, body_part = key.partition("/")
            if not sep or not modality.strip() or not body_part.strip() or key != expert_key(modality, body_part):
                raise ValueError(f"expert key {key!r} must be 'MODALITY/BODYPART' in capitals, e.g. 'CT/CHEST' or 'CT/*'")
            try:
                parse_ref(ref)
            except RegistryError as e:
                raise ValueError(str(e)) from None
        return experts

    @field_validator("lanes")
    @classmethod
    def _lanes(cls, lanes: dict[str, LaneConfig]) -> dict[str, LaneConfig]:
        if set(lanes) != set(LANES):
            raise ValueError(f"lanes must configure exactly {list(LANES)}, got {sorted(lanes)}")
        if lanes["emergency"].min_replicas < 1:
            raise ValueError("the emergency lane needs min_replicas >= 1: that is its reserved capacity")
        return lanes

    @property
    def emergency_app_name(self) -> str:
        """The emergency application's name."""
        return f"{self.app_name}-emergency"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# The HTTP status of each DICOM rejection reason (every one of medray.dicom.volume.REASONS).
REASON_STATUS: dict[str, int] = {
    "not_dicom": 400,
    "truncated": 400,
    "no_pixel_data": 422,
    "unsupported_transfer_syntax": 415,
    "unsupported_modality": 422,
    "too_large": 413,
    "inconsistent_series": 422,
    "burned_in_annotation": 422,
}
