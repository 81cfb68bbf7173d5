"""Intensity and geometry normalisation of CT volumes: the one place a model's input is defined.

Volumes are float32 numpy arrays ordered ``(z, y, x)``; spacings are ``(z, y, x)`` in mm.
The preprocessing pipeline, training and serving all call :func:`normalize_volume` with the
:class:`InputSpec` stored in the model registry, so a model always sees the input it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medray.errors import ConfigError

__all__ = [
    "WINDOWS",
    "InputSpec",
    "to_hu",
    "apply_window",
    "resample",
    "normalize_volume",
]

# name -> (center, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}

Window = str | tuple[float, float]


def _center_width(window: Window) -> tuple[float, float]:
    """(center, width) of a named or explicit window; ValueError when unusable."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}: use one of {sorted(WINDOWS)} or (center, width)")
        center, width = WINDOWS[window]
    else:
        try:
            center, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a name or (center, width) numbers, got {window!r}") from None
        if not (math.isfinite(center) and math.isfinite(width) and width > 0):
            raise ValueError(f"window (center, width) must be finite with width > 0, got {window!r}")
    return center, width


def _triple(values: Any, what: str, *, integer: bool = False) -> tuple:
    """Three positive finite numbers (ints when ``integer``); ValueError otherwise."""
    kind = "integers" if integer else "numbers"
    try:
        items = tuple(values)
    except TypeError:
        items = ()
    ok = len(items) == 3 and all(
        not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) for v in items
    )
    if ok and integer:
        ok = all(float(v).is_integer() for v in items)
    if ok:
        ok = all(math.isfinite(float(v)) and v > 0 for v in items)
    if not ok:
        raise ValueError(f"{what} must be 3 positive {kind} (z, y, x), got {values!r}")
    return tuple(int(v) for v in items) if integer else tuple(float(v) for v in items)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input; stored in the model registry manifest.

    ``window`` is a name of :data:`WINDOWS`, a ``(center, width)`` pair, or ``None`` for raw HU.
    Lists are accepted wherever tuples are (JSON round-trips); invalid values raise ConfigError.
    """

    modality: str = "CT"
    body_part: str = "CHEST"
    spacing_mm: tuple[float, float, float] = (6.0, 6.0, 6.0)  # (z, y, x)
    shape: tuple[int, int, int] = (16, 64, 64)  # (z, y, x)
    window: str | tuple[float, float] | None = "lung"

    def __post_init__(self) -> None:
        # Normalise here rather than in from_dict so that every InputSpec, however built, is valid
        # and hashable (lists from JSON become tuples).
        try:
            for name in ("modality", "body_part"):
                value = getattr(self, name)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{name} must be a non-empty string, got {value!r}")
            object.__setattr__(self, "spacing_mm", _triple(self.spacing_mm, "spacing_mm"))
            object.__setattr__(self, "shape", _triple(self.shape, "shape", integer=True))
            if self.window is not None:
                center_width = _center_width(self.window)
                if not isinstance(self.window, str):
                    object.__setattr__(self, "window", center_width)
        except ValueError as e:
            raise ConfigError(f"invalid input spec: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists) that :meth:`from_dict` reads back."""
        return {
            "modality": self.modality,
            "body_part": self.body_part,
            "spacing_mm": list(self.spacing_mm),
            "shape": list(self.shape),
            "window": list(self.window) if isinstance(self.window, tuple) else self.window,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        """Build and validate a spec; missing keys take the defaults, unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"invalid input spec: expected a mapping, got {type(d).__name__}")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - allowed)
        if unknown:
            # Refused rather than ignored: a misspelt key would silently fall back to a default.
            raise ConfigError(f"invalid input spec: unknown keys {unknown}; allowed keys are {sorted(allowed)}")
        return cls(**d)


def to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored pixel values to Hounsfield units (``stored * slope + intercept``) as float32."""
    hu = np.asarray(stored).astype(np.float32)
    if slope != 1:
        hu *= np.float32(slope)
    if intercept != 0:
        hu += np.float32(intercept)
    return hu


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU linearly so that the window spans [0, 1], clipping outside it; float32."""
    center, width = _center_width(window)
    out = np.asarray(hu, dtype=np.float32) - np.float32(center - width / 2.0)
    out *= np.float32(1.0 / width)
    return np.clip(out, 0.0, 1.0, out=out)


def _as_volume(volume: np.ndarray) -> np.ndarray:
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or vol.size == 0:
        raise ValueError(f"expected a non-empty (z, y, x) volume, got shape {vol.shape}")
    return vol


def _crop_or_pad(vol: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Centre-crop or pad ``vol`` to ``shape``; padding uses the volume minimum (air in CT)."""
    if vol.shape == shape:
        return vol
    src: list[slice] = []
    dst: list[slice] = []
    for have, want in zip(vol.shape, shape):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out = np.full(shape, vol.min(), dtype=np.float32)
    out[tuple(dst)] = vol[tuple(src)]
    return out


def resample(
    volume: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    target_spacing_mm: Sequence[float] | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample a (z, y, x) volume to ``target_spacing_mm``, then centre-crop/pad to ``target_shape``.

    The output size along each axis is ``round(size * spacing / target_spacing)`` (at least 1), so
    the physical extent is kept. Interpolation is trilinear; when an axis shrinks by a factor k >= 2
    it is first interpolated to k times the output size and then averaged over k voxels, so that
    downsampling (e.g. 0.7 mm to 6 mm) averages rather than skips voxels and small structures are
    not lost to aliasing. ``target_shape`` alone only crops/pads (pad value: the volume minimum).
    """
    vol = _as_volume(volume)
    spacing = _triple(spacing_mm, "spacing_mm")
    if target_spacing_mm is not None:
        target = _triple(target_spacing_mm, "target_spacing_mm")
        size = tuple(max(1, round(n * s / t)) for n, s, t in zip(vol.shape, spacing, target))
        if size != vol.shape:
            # Imported here so that importing medray.imaging (e.g. for InputSpec in the registry or
            # the CLI) does not pay for importing torch.
            import torch
            import torch.nn.functional as F

            factor = tuple(max(1, n // m) for n, m in zip(vol.shape, size))
            x = torch.from_numpy(np.ascontiguousarray(vol))[None, None]  # (1, 1, z, y, x)
            x = F.interpolate(x, size=tuple(m * k for m, k in zip(size, factor)), mode="trilinear",
                              align_corners=False)
            if factor != (1, 1, 1):
                x = F.avg_pool3d(x, kernel_size=factor)  # exact: each output voxel averages k voxels
            vol = x[0, 0].numpy()
    if target_shape is not None:
        vol = _crop_or_pad(vol, _triple(target_shape, "target_shape", integer=True))
    return np.ascontiguousarray(vol)


def normalize_volume(hu: np.ndarray, spacing_mm: Sequence[float], spec: InputSpec) -> np.ndarray:
    """HU volume to model input: resample to ``spec.spacing_mm``, crop/pad to ``spec.shape``, window.

    Returns float32 ``(z, y, x)`` of exactly ``spec.shape``; values in [0, 1] unless the window is None.
    """
    vol = resample(hu, spacing_mm, target_spacing_mm=spec.spacing_mm, target_shape=spec.shape)
    if spec.window is None:
        return vol
    return apply_window(vol, spec.window)
