"""The synthetic cohort's phantom: CT geometry, a chest's organs, nodules, and the HU volume.

Everything is in DICOM patient coordinates (mm); the volume is drawn from the organs' equations,
then stored as a CT scanner stores it (uint16 values, rescale intercept -1024).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from medray.errors import ConfigError

__all__ = [
    "BITS_STORED",
    "MIN_BODY_SCALE",
    "NODULE_RADIUS_MM",
    "RESCALE_INTERCEPT",
    "Anatomy",
    "Geometry",
    "Nodule",
    "max_nodule_radius",
    "place_nodule",
    "render",
]

# --- HU of the phantom's tissues -------------------------------------------------------------
_HU_AIR = -1000.0
_HU_FAT = -100.0
_HU_SOFT = 40.0
_HU_LUNG = -850.0
_HU_BONE = 700.0
_HU_NODULE = 30.0
_LUNG_TEXTURE_SD = 20.0
_NOISE_SD = 15.0
RESCALE_INTERCEPT = -1024.0
BITS_STORED = 12

NODULE_RADIUS_MM = (6.0, 12.0)
MIN_BODY_SCALE = 0.92  # patients vary in size; the smallest must still fit a nodule


@dataclass(frozen=True)
class Geometry:
    """The CT grid shared by every series: square slices, contiguous axial slices."""

    rows: int
    slices: int
    spacing_mm: float
    thickness_mm: float

    @property
    def origin(self) -> tuple[float, float, float]:
        """Patient position of voxel (0, 0, 0): centred in-plane, table start at z=-200 mm."""
        half = -self.rows * self.spacing_mm / 2
        return (half, half, -200.0)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates (mm) of voxel centres along x (columns), y (rows), z (slices)."""
        x0, y0, z0 = self.origin
        grid = np.arange(self.rows) * self.spacing_mm
        return x0 + grid, y0 + grid, z0 + np.arange(self.slices) * self.thickness_mm


@dataclass(frozen=True)
class Anatomy:
    """Where a patient's organs are, in patient mm; used for drawing and for placing nodules."""

    center: tuple[float, float, float]
    body_semi: tuple[float, float]
    fat_rim_mm: float
    lung_centers_x: tuple[float, float]
    lung_center_y: float
    lung_semi: tuple[float, float, float]
    spine_center_y: float
    spine_radius: float

    @classmethod
    def for_patient(cls, geom: Geometry, scale: float) -> Anatomy:
        # In-plane sizes follow the field of view (the scanner's FOV is set to the body); the
        # lungs are taller than any slab we scan, so their z extent is physical.
        x, y, z = geom.axes()
        cx, cy, cz = float(x.mean()), float(y.mean()), float(z.mean())
        w = geom.rows * geom.spacing_mm * scale
        return cls(center=(cx, cy, cz), body_semi=(0.42 * w, 0.30 * w), fat_rim_mm=0.035 * w,
                   lung_centers_x=(cx - 0.18 * w, cx + 0.18 * w), lung_center_y=cy - 0.02 * w,
                   lung_semi=(0.12 * w, 0.19 * w, 125.0), spine_center_y=cy + 0.21 * w,
                   spine_radius=0.045 * w)

    def lung_value(self, side: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The lung's ellipsoid equation: <= 1 inside the lung on ``side`` (0 right, 1 left)."""
        ax, ay, az = self.lung_semi
        return (((x - self.lung_centers_x[side]) / ax) ** 2 + ((y - self.lung_center_y) / ay) ** 2
                + ((z - self.center[2]) / az) ** 2)


@dataclass(frozen=True)
class Nodule:
    """A solid sphere; its centre is in patient coordinates (mm)."""

    center_mm: tuple[float, float, float]
    radius_mm: float


def max_nodule_radius(geom: Geometry, anatomy: Anatomy) -> float:
    """Largest radius that fits inside a lung and between the first and last slice."""
    ax, ay, _ = anatomy.lung_semi
    z_span = (geom.slices - 1) * geom.thickness_mm
    return min(NODULE_RADIUS_MM[1], 0.5 * min(ax, ay), z_span / 2)


# Directions (unit vectors) whose surface points must lie inside the lung.
_DIRECTIONS = np.array([d for d in product((-1, 0, 1), repeat=3) if any(d)], float)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


def place_nodule(rng: np.random.Generator, geom: Geometry, anatomy: Anatomy) -> Nodule:
    """A sphere centred inside a lung, wholly inside it and inside the scanned slab."""
    radius = float(rng.uniform(NODULE_RADIUS_MM[0], max_nodule_radius(geom, anatomy)))
    side = int(rng.integers(2))
    ax, ay, _ = anatomy.lung_semi
    _, _, z = geom.axes()
    for _ in range(1000):  # rejection sampling; the radius cap makes acceptance likely
        c = np.array([anatomy.lung_centers_x[side] + rng.uniform(-ax, ax),
                      anatomy.lung_center_y + rng.uniform(-ay, ay),
                      rng.uniform(z[0] + radius, z[-1] - radius)])
        surface = c + radius * _DIRECTIONS
        if np.all(anatomy.lung_value(side, *surface.T) <= 1.0):
            return Nodule(center_mm=(float(c[0]), float(c[1]), float(c[2])), radius_mm=radius)
    raise ConfigError("could not place a nodule inside a lung; use more rows or slices")


def render(a: Anatomy, nodule: Nodule | None, geom: Geometry, rng: np.random.Generator) -> np.ndarray:
    """The CT volume as stored pixel values, shape (slices, rows, columns), little-endian uint16."""
    x, y, z = geom.axes()
    xx, yy, zz = x[None, None, :], y[None, :, None], z[:, None, None]
    cx, cy, _ = a.center
    bx, by = a.body_semi
    body = ((xx - cx) / bx) ** 2 + ((yy - cy) / by) ** 2 <= 1
    inner = ((xx - cx) / (bx - a.fat_rim_mm)) ** 2 + ((yy - cy) / (by - a.fat_rim_mm)) ** 2 <= 1
    spine = (xx - cx) ** 2 + (yy - a.spine_center_y) ** 2 <= a.spine_radius ** 2
    lungs = (a.lung_value(0, xx, yy, zz) <= 1) | (a.lung_value(1, xx, yy, zz) <= 1)

    shape = (geom.slices, geom.rows, geom.rows)
    hu = np.full(shape, _HU_AIR, np.float32)
    hu[np.broadcast_to(body, shape)] = _HU_FAT
    hu[np.broadcast_to(inner, shape)] = _HU_SOFT
    hu[np.broadcast_to(spine, shape)] = _HU_BONE
    texture = _smooth_noise(rng, shape, sigma_px=1.5) * _LUNG_TEXTURE_SD
    hu[lungs] = _HU_LUNG + texture[lungs]
    if nodule is not None:
        (nx, ny, nz), r = nodule.center_mm, nodule.radius_mm
        hu[(xx - nx) ** 2 + (yy - ny) ** 2 + (zz - nz) ** 2 <= r * r] = _HU_NODULE
    hu += rng.normal(0.0, _NOISE_SD, shape).astype(np.float32)
    stored = np.rint(hu - RESCALE_INTERCEPT)
    return np.clip(stored, 0, 2**BITS_STORED - 1).astype("<u2")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int],
                  sigma_px: float) -> np.ndarray:
    """Unit-variance noise blurred in-plane by a gaussian (in Fourier space: no scipy here)."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[1])[:, None]
    fx = np.fft.rfftfreq(shape[2])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    smooth = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape[1:])
    return (smooth / smooth.std()).astype(np.float32)
