"""Intensity and geometry normalisation of CT volumes: the one place a model's input is defined.

Volumes are float32 numpy arrays ordered ``(z, y, x)``; spacings are ``(z, y, x)`` in mm.
The preprocessing pipeline, training and serving all call :func:`normalize_volume` with the
:class:`InputSpec` stored in the model registry, so a model always sees the input it was trained on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medray.errors import ConfigError

__all__ = [
    "WINDOWS",
    "InputSpec",
    "to_hu",
    "apply_window",
    "SliceReader",
    "resample",
    "resample_slices",
    "normalize_volume",
    "normalize_slices",
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


def to_hu(stored: np.ndarray, slope: float, intercept: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """Stored pixel values to Hounsfield units (``stored * slope + intercept``) as float32.

    ``out``: a float32 array of the same shape to write into (e.g. one slice of a volume).
    """
    stored = np.asarray(stored)
    if out is None:
        out = np.empty(stored.shape, dtype=np.float32)
    np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0:
        out += np.float32(intercept)
    return out


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


def _axis_matrix(n: int, m: int, keep: range) -> tuple[slice, np.ndarray]:
    """The matrix resampling an axis of ``n`` voxels to ``m``, for the outputs in ``keep`` only.

    Returns ``(used, matrix)``: the input voxels those outputs need, and the float32
    ``(len(keep), used length)`` matrix mapping them to the outputs. Shrinking by 2 or more averages the input voxels each
    output voxel covers, by overlap (an exact box filter: no aliasing, no skipped voxels); otherwise
    linear interpolation between voxel centres, edges clamped (``align_corners=False``).
    """
    out = np.arange(keep.start, keep.stop, dtype=np.float64)
    scale = n / m
    if n >= 2 * m:
        lo, hi = out * scale, (out + 1) * scale
        first = np.floor(lo).astype(np.int64)
        band = int(np.max(np.ceil(hi).astype(np.int64) - first))
        index = first[:, None] + np.arange(band)
        weight = (np.minimum(index + 1, hi[:, None]) - np.maximum(index, lo[:, None])) / scale
        weight = np.clip(weight, 0.0, None)
    else:
        src = np.clip((out + 0.5) * scale - 0.5, 0.0, n - 1)
        first = np.floor(src).astype(np.int64)
        index = np.stack([first, first + 1], axis=1)
        frac = src - first
        weight = np.stack([1.0 - frac, frac], axis=1)
    index = np.minimum(index, n - 1)  # padded band entries carry weight 0
    used = slice(int(index.min()), int(index.max()) + 1)
    matrix = np.zeros((len(keep), used.stop - used.start), np.float32)
    np.add.at(matrix, (np.arange(len(keep))[:, None], index - used.start), weight)
    return used, matrix


def _kept(size: int, want: int | None) -> tuple[range, tuple[int, int]]:
    """Which outputs survive a centre crop to ``want``, and the (before, after) padding it needs."""
    if want is None or size == want:
        return range(size), (0, 0)
    if size > want:
        start = (size - want) // 2
        return range(start, start + want), (0, 0)
    before = (want - size) // 2
    return range(size), (before, want - size - before)


def _cheapest_order(shape: tuple[int, ...], out: tuple[int, ...]) -> tuple[int, ...]:
    """The order of axes whose matrix products (``out[a] x shape[a]`` per line) cost the fewest MACs."""
    def cost(order: tuple[int, ...]) -> int:
        dims, total = list(shape), 0
        for a in order:
            total += out[a] * math.prod(dims)
            dims[a] = out[a]
        return total

    return min(itertools.permutations(range(len(shape))), key=cost)


def _axis_product(matrix: np.ndarray, part: np.ndarray, axis: int) -> np.ndarray:
    """``matrix`` (out x in) applied along ``axis`` of ``part``: one BLAS product per axis (or per
    leading index), laid out so that no operand is transposed into a copy first."""
    if axis == 0:
        return (matrix @ part.reshape(part.shape[0], -1)).reshape((matrix.shape[0], *part.shape[1:]))
    if axis == part.ndim - 1:
        return part @ matrix.T
    return matrix @ part  # broadcast over the leading axes


SliceReader = Callable[[int], tuple[np.ndarray, float, float]]


def resample_slices(
    shape: Sequence[int],
    read_slice: SliceReader,
    spacing_mm: Sequence[float],
    *,
    target_spacing_mm: Sequence[float] | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`resample` of a volume given slice by slice, without building it in memory.

    ``shape`` is the volume's ``(z, y, x)``; ``read_slice(i)`` returns slice ``i`` as ``(values,
    slope, intercept)``, standing for ``values * slope + intercept`` (stored pixel values and their
    rescale, or HU with 1 and 0). Only the slices the output needs are read, once each and in
    order: each is multiplied into the output slices it contributes to (the z filter), and an
    output slice is resampled in-plane as soon as its last input is in, so that only a few
    full-resolution slices are held at a time; the intercepts are added last (every output
    voxel's weights sum to 1). Same arithmetic as a volume in HU, up to float32 rounding.
    """
    vol_shape = _triple(shape, "shape", integer=True)
    size, kept, pads = _plan(vol_shape, spacing_mm, target_spacing_mm, target_shape)
    n, keep = vol_shape[0], kept[0]
    if size[0] == n:  # no resampling along z: the kept slices as they are
        used, matrix = slice(keep.start, keep.stop), np.eye(len(keep), dtype=np.float32)
    else:
        used, matrix = _axis_matrix(n, size[0], keep)
    steps = _axes_plan(vol_shape[1:], size[1:], kept[1:])
    out = np.zeros((len(keep), len(kept[1]), len(kept[2])), np.float32)
    offsets = np.zeros(len(keep))
    # The last input slice of each output slice: once it is in, that output slice is complete.
    last = np.full(len(keep), -1)
    outputs, inputs = np.nonzero(matrix)
    np.maximum.at(last, outputs, inputs + used.start)
    open_: dict[int, np.ndarray] = {}  # output slice -> its full-resolution sum so far
    spare: list[np.ndarray] = []
    term = np.empty(vol_shape[1:], np.float32)
    for i in range(used.start, used.stop):
        weights = matrix[:, i - used.start]
        targets = np.flatnonzero(weights)
        if targets.size == 0:
            continue
        stored, slope, intercept = read_slice(i)
        for k in targets:
            factor = np.float32(weights[k] * slope)
            total = open_.get(k)
            if total is None:
                total = open_[k] = spare.pop() if spare else np.empty(vol_shape[1:], np.float32)
                np.multiply(stored, factor, out=total, dtype=np.float32, casting="unsafe")
            else:
                np.multiply(stored, factor, out=term, dtype=np.float32, casting="unsafe")
                total += term
            offsets[k] += weights[k] * intercept
            if last[k] == i:
                out[k] = _apply_axes(open_.pop(k), steps)
                spare.append(total)
    if offsets.any():
        out += offsets.astype(np.float32)[:, None, None]
    return _pad(out, pads)


def resample(
    volume: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    target_spacing_mm: Sequence[float] | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample a (z, y, x) volume to ``target_spacing_mm``, then centre-crop/pad to ``target_shape``.

    The output size along each axis is ``round(size * spacing / target_spacing)`` (at least 1), so
    the physical extent is kept. Each axis is resampled on its own (the filter is separable): an
    axis that shrinks by 2 or more is box-averaged over the voxels each output voxel covers, so
    that downsampling (e.g. 0.7 mm to 6 mm) averages rather than skips voxels and small structures
    are not lost to aliasing; otherwise it is interpolated linearly (trilinear overall). Only the
    output voxels that survive the crop are computed, from only the input voxels they need.
    Padding uses the minimum of what is kept (air in CT). Computed by :func:`resample_slices`.
    """
    vol = _as_volume(volume)
    return resample_slices(vol.shape, lambda i: (vol[i], 1.0, 0.0), spacing_mm,
                           target_spacing_mm=target_spacing_mm, target_shape=target_shape)


def _plan(shape: tuple[int, int, int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float] | None,
          target_shape: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[range, ...], tuple[tuple[int, int], ...]]:
    """Resampled size per axis, the outputs kept by the crop, and the padding after it."""
    spacing = _triple(spacing_mm, "spacing_mm")
    if target_spacing_mm is not None:
        target = _triple(target_spacing_mm, "target_spacing_mm")
        size = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))
    else:
        size = shape
    want = _triple(target_shape, "target_shape", integer=True) if target_shape is not None else size
    kept, pads = zip(*(_kept(have, w) for have, w in zip(size, want)))
    return size, kept, pads


# Outputs are computed in groups whose inputs span about this many voxels: a box filter's matrix
# is mostly zeros, and a product of its dense rows would cost (input size / band) times more.
_BAND_SPAN = 64

_Band = tuple[slice, slice, np.ndarray]  # output rows, the input voxels they use, their weights
_Step = tuple[int, slice, "list[_Band] | None"]


def _bands(matrix: np.ndarray) -> list[_Band]:
    """``matrix`` (out x in, non-zeros along a band) as consecutive groups of output rows, each
    with the input range it reads and the dense weights there."""
    nonzero = matrix != 0
    lo = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    hi = np.where(nonzero.any(axis=1), matrix.shape[1] - nonzero[:, ::-1].argmax(axis=1), 1)
    bands, start = [], 0
    for row in range(1, len(matrix) + 1):
        if row == len(matrix) or hi[row] - lo[start] > _BAND_SPAN:
            cols = slice(int(lo[start:row].min()), int(hi[start:row].max()))
            bands.append((slice(start, row), cols, np.ascontiguousarray(matrix[start:row, cols])))
            start = row
    return bands


def _axes_plan(shape: Sequence[int], size: Sequence[int], kept: Sequence[range]) -> list[_Step]:
    """How to resample the axes of an array of ``shape`` to ``size`` (their ``kept`` outputs
    only), cheapest order first: ``(axis, input slice, bands or None for a crop)`` per axis."""
    order = _cheapest_order(tuple(shape), tuple(len(k) for k in kept))
    steps: list[_Step] = []
    for axis in order:
        n, keep = shape[axis], kept[axis]
        if size[axis] == n:  # no resampling along this axis: a crop at most
            steps.append((axis, slice(keep.start, keep.stop), None))
        else:
            used, matrix = _axis_matrix(n, size[axis], keep)
            steps.append((axis, used, _bands(matrix)))
    return steps


def _apply_axes(vol: np.ndarray, steps: Sequence[_Step]) -> np.ndarray:
    """The resampling :func:`_axes_plan` planned, applied to ``vol``."""
    for axis, used, bands in steps:
        lead = (slice(None),) * axis
        part = vol[lead + (used,)]
        if bands is None:
            vol = part
            continue
        shape = list(part.shape)
        shape[axis] = bands[-1][0].stop
        vol = np.empty(shape, np.float32)
        for rows, cols, weights in bands:
            vol[lead + (rows,)] = _axis_product(weights, part[lead + (cols,)], axis)
    return vol


def _pad(vol: np.ndarray, pads: tuple[tuple[int, int], ...]) -> np.ndarray:
    if any(p != (0, 0) for p in pads):
        vol = np.pad(vol, pads, constant_values=vol.min())
    return np.ascontiguousarray(vol, dtype=np.float32)


def normalize_volume(hu: np.ndarray, spacing_mm: Sequence[float], spec: InputSpec) -> np.ndarray:
    """HU volume to model input: resample to ``spec.spacing_mm``, crop/pad to ``spec.shape``, window.

    Returns float32 ``(z, y, x)`` of exactly ``spec.shape``; values in [0, 1] unless the window is None.
    """
    vol = _as_volume(hu)
    return normalize_slices(vol.shape, lambda i: (vol[i], 1.0, 0.0), spacing_mm, spec)


def normalize_slices(shape: Sequence[int], read_slice: SliceReader, spacing_mm: Sequence[float],
                     spec: InputSpec) -> np.ndarray:
    """:func:`normalize_volume` of a volume given slice by slice (see :func:`resample_slices`)."""
    vol = resample_slices(shape, read_slice, spacing_mm, target_spacing_mm=spec.spacing_mm,
                          target_shape=spec.shape)
    if spec.window is None:
        return vol
    return apply_window(vol, spec.window)
