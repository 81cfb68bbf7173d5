"""Training-time volume augmentation with NVIDIA DALI, and a plain-PyTorch path with the same outputs.

Ray Data decodes the shards (:func:`medray.data.shards.read_volumes`: Arrow tensors to numpy batches
``(N, D, H, W)``); this module turns such a batch into the model's input ``(N, 1, D, H, W)``:

1. flip each sample along z, y and/or x (each with its own probability),
2. scale and shift intensities (``x * scale + shift``, one draw per sample),
3. clip to ``spec.clip`` (the window's [0, 1]; None for raw HU),
4. normalise: ``(x - mean) / std``.

Three backends compute it: ``dali-gpu`` (DALI on the node's CUDA device), ``dali-cpu`` (DALI's
CPU backend: CPU nodes, and nodes whose GPU is only simulated) and ``torch`` (when DALI is not
installed). The random parameters are drawn on the host from one seeded generator
(:class:`AugmentParams`) and fed to whichever backend runs, so every backend gives the same
output for the same seed, within float rounding.

    augmenter = VolumeAugmenter(AugmentSpec(), batch_size=8, seed=epoch)
    for batch in read_volumes(out).iter_batches(batch_size=8, batch_format="numpy"):
        x = augmenter(batch["volume"])  # torch.Tensor (N, 1, D, H, W), on the GPU with dali-gpu

The training loop (:mod:`workloads.research.loop`) flips only, on tensors already on its device:
:func:`random_flip` draws from a torch generator and flips with :func:`flip_volumes`, the flip that
:func:`augment_torch` applies too.

DALI is optional (``pip install 'medray[dali]'``, i.e. ``nvidia-dali-cuda120``) and imported
only when a DALI backend is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medray.errors import ConfigError

__all__ = [
    "BACKENDS",
    "AugmentSpec",
    "AugmentParams",
    "dali_available",
    "default_backend",
    "flip_volumes",
    "random_flip",
    "augment_torch",
    "VolumeAugmenter",
]

BACKENDS = ("dali-gpu", "dali-cpu", "torch")
_INSTALL = "install it with `pip install 'medray[dali]'` (nvidia-dali-cuda120) or use backend='torch'"


@dataclass(frozen=True)
class AugmentSpec:
    """What augmentation and normalisation to apply; the default suits windowed volumes in [0, 1]."""

    flip_probability: tuple[float, float, float] = (0.0, 0.5, 0.5)  # z, y, x
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_range: tuple[float, float] = (-0.05, 0.05)
    clip: tuple[float, float] | None = (0.0, 1.0)
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if len(self.flip_probability) != 3 or not all(0 <= p <= 1 for p in self.flip_probability):
            raise ConfigError(
                f"flip_probability must be 3 probabilities (z, y, x), got {self.flip_probability}")
        for name in ("scale_range", "shift_range") + (("clip",) if self.clip is not None else ()):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ConfigError(f"{name} must be finite (low, high) with low <= high, got {(lo, hi)}")
        if not (math.isfinite(self.std) and self.std > 0 and math.isfinite(self.mean)):
            raise ConfigError(f"std must be > 0 and mean finite, got mean={self.mean}, std={self.std}")

    @classmethod
    def identity(cls, **normalisation: Any) -> AugmentSpec:
        """No augmentation (evaluation): only clipping and normalisation."""
        return cls(flip_probability=(0.0, 0.0, 0.0), scale_range=(1.0, 1.0), shift_range=(0.0, 0.0),
                   **normalisation)


@dataclass(frozen=True)
class AugmentParams:
    """One batch's random draw: flips ``(N, 3)`` int32 (z, y, x), ``scale`` and ``shift`` ``(N,)``."""

    flips: np.ndarray
    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def draw(cls, spec: AugmentSpec, n: int, rng: np.random.Generator) -> AugmentParams:
        return cls(
            flips=(rng.random((n, 3)) < np.asarray(spec.flip_probability)).astype(np.int32),
            scale=rng.uniform(*spec.scale_range, size=n).astype(np.float32),
            shift=rng.uniform(*spec.shift_range, size=n).astype(np.float32),
        )


def dali_available() -> bool:
    """Whether nvidia-dali can be imported here."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend() -> str:
    """``dali-gpu`` with DALI and a CUDA device, ``dali-cpu`` with DALI only, else ``torch``."""
    if not dali_available():
        return "torch"
    import torch

    return "dali-gpu" if torch.cuda.is_available() else "dali-cpu"


def _batch(volumes: Any) -> np.ndarray:
    batch = np.ascontiguousarray(volumes, dtype=np.float32)
    if batch.ndim != 4 or batch.size == 0:
        raise ValueError(f"expected a non-empty batch of volumes (N, D, H, W), got shape {batch.shape}")
    return batch


def flip_volumes(x: Any, flips: Any) -> Any:
    """Flip each volume of the tensor ``x`` (N, 1, D, H, W) along z, y and x where ``flips`` (N, 3) says.

    ``flips``: on the host (numpy or a CPU tensor), nonzero where a volume flips on that axis.
    """
    import torch

    chosen = torch.as_tensor(flips, dtype=torch.bool).T.contiguous()  # (3, N): z, y, x
    # On a GPU: one copy that does not wait for the GPU's queue to drain.
    masks = chosen.pin_memory().to(x.device, non_blocking=True) if x.device.type == "cuda" else chosen
    for axis, any_chosen, mask in zip((2, 3, 4), chosen.any(dim=1).tolist(), masks):
        if any_chosen:
            x = torch.where(mask.view(-1, 1, 1, 1, 1), x.flip(axis), x)
    return x


def random_flip(x: Any, strength: float, generator: Any) -> Any:
    """Flip each volume of ``x`` (N, 1, D, H, W) along each spatial axis with probability strength/2.

    ``generator``: the ``torch.Generator`` the flips are drawn from (on the host), one draw per axis.
    """
    import torch

    if strength <= 0:
        return x
    flips = torch.stack([torch.rand(x.shape[0], generator=generator) < strength / 2 for _ in range(3)], dim=1)
    return flip_volumes(x, flips)


def augment_torch(volumes: Any, params: AugmentParams, spec: AugmentSpec, *, device: Any = None) -> Any:
    """The reference path in PyTorch: ``(N, D, H, W)`` -> ``(N, 1, D, H, W)`` float32 tensor."""
    import torch

    # A copy, never a view of the caller's array (Ray Data's batches are read-only).
    x = flip_volumes(torch.tensor(_batch(volumes), device=device)[:, None], params.flips)
    shape = (-1, 1, 1, 1, 1)
    x = x * torch.as_tensor(params.scale, device=x.device).view(shape)
    x = x + torch.as_tensor(params.shift, device=x.device).view(shape)
    if spec.clip is not None:
        x = x.clamp(*spec.clip)
    return (x - spec.mean) / spec.std


def _dali_pipeline(spec: AugmentSpec, batch_size: int, gpu: bool, device_id: int, num_threads: int) -> Any:
    """Build the DALI pipeline: external sources for the volumes and the per-sample parameters."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
    except ImportError:
        raise ConfigError(f"nvidia-dali is not installed: {_INSTALL}") from None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def pipeline():  # type: ignore[no-untyped-def]
        x = fn.external_source(name="volumes", layout="CDHW", dtype=types.FLOAT)
        # Per-sample arguments of flip must live on the CPU; the data may move to the GPU.
        fz, fy, fx = (fn.external_source(name=n, dtype=types.INT32) for n in ("fz", "fy", "fx"))
        scale = fn.external_source(name="scale", dtype=types.FLOAT)
        shift = fn.external_source(name="shift", dtype=types.FLOAT)
        if gpu:
            x, scale, shift = x.gpu(), scale.gpu(), shift.gpu()
        x = fn.flip(x, depthwise=fz, vertical=fy, horizontal=fx)
        x = x * scale + shift
        if spec.clip is not None:
            x = dmath.clamp(x, float(spec.clip[0]), float(spec.clip[1]))
        return (x - float(spec.mean)) / float(spec.std)

    pipe = pipeline()
    pipe.build()
    return pipe


class VolumeAugmenter:
    """Augment and normalise volume batches on the chosen backend (holds the built DALI pipeline)."""

    def __init__(self, spec: AugmentSpec = AugmentSpec(), *, batch_size: int, backend: str | None = None,
                 seed: int = 0, device_id: int = 0, num_threads: int = 1) -> None:
        backend = backend or default_backend()
        if backend not in BACKENDS:
            raise ConfigError(f"unknown augmentation backend {backend!r}: use one of {BACKENDS}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.spec, self.backend, self.batch_size, self.device_id = spec, backend, batch_size, device_id
        self._rng = np.random.default_rng(seed)
        self._pipe = (_dali_pipeline(spec, batch_size, backend == "dali-gpu", device_id, num_threads)
                      if backend != "torch" else None)

    def __call__(self, volumes: Any, params: AugmentParams | None = None) -> Any:
        """``(N, D, H, W)`` volumes (N <= batch_size) -> ``(N, 1, D, H, W)`` torch tensor.

        ``params`` defaults to a fresh draw from this augmenter's seeded generator.
        """
        batch = _batch(volumes)
        if len(batch) > self.batch_size:
            raise ValueError(f"batch of {len(batch)} volumes exceeds batch_size={self.batch_size}")
        params = params or AugmentParams.draw(self.spec, len(batch), self._rng)
        if self._pipe is None:
            return augment_torch(batch, params, self.spec)
        return self._run_dali(batch, params)

    def _run_dali(self, batch: np.ndarray, params: AugmentParams) -> Any:
        import torch

        pipe = self._pipe
        pipe.feed_input("volumes", batch[:, None])
        for i, name in enumerate(("fz", "fy", "fx")):
            pipe.feed_input(name, np.ascontiguousarray(params.flips[:, i]))
        pipe.feed_input("scale", params.scale)
        pipe.feed_input("shift", params.shift)
        (out,) = pipe.run()
        tensor = out.as_tensor()
        if self.backend == "dali-cpu":
            return torch.from_numpy(np.array(tensor))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        result = torch.empty(tensor.shape(), dtype=torch.float32, device=f"cuda:{self.device_id}")
        feed_ndarray(tensor, result, cuda_stream=torch.cuda.current_stream(self.device_id))
        return result
