"""medray.imaging.normalize: HU, windows, resampling, crop/pad and InputSpec."""

import json
import time

import numpy as np
import pytest

from medray.errors import ConfigError
from medray.imaging.normalize import (
    WINDOWS,
    InputSpec,
    apply_window,
    normalize_volume,
    resample,
    resample_slices,
    to_hu,
)


def _centroid(vol: np.ndarray) -> np.ndarray:
    weight = vol - vol.min()
    return (np.indices(vol.shape).reshape(3, -1) * weight.reshape(-1)).sum(axis=1) / weight.sum()


def test_to_hu_applies_slope_and_intercept_as_float32():
    stored = np.array([[0, 1000, 2000]], dtype=np.int16)
    hu = to_hu(stored, 1.0, -1024.0)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [[-1024, -24, 976]])
    np.testing.assert_allclose(to_hu(stored, 0.5, -10.0), [[-10, 490, 990]])
    assert stored[0, 1] == 1000  # input untouched


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_named_windows_span_zero_to_one(name):
    center, width = WINDOWS[name]
    hu = np.array([center - width, center - width / 2, center, center + width / 2, center + width], np.float32)
    out = apply_window(hu, name)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_explicit_window_and_bad_windows():
    np.testing.assert_allclose(apply_window(np.array([0.0, 50.0, 100.0]), (50, 100)), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="unknown window"):
        apply_window(np.zeros(3), "liver-ish")
    with pytest.raises(ValueError, match="width > 0"):
        apply_window(np.zeros(3), (40, 0))


def test_resample_changes_shape_by_spacing_ratio_and_keeps_a_cube_in_place():
    vol = np.full((40, 64, 96), -1000.0, np.float32)
    vol[18:22, 20:28, 60:68] = 1000.0  # cube centred at voxel (19.5, 23.5, 63.5)
    out = resample(vol, (1.0, 1.0, 1.0), target_spacing_mm=(2.0, 4.0, 0.5))
    assert out.shape == (20, 16, 192) and out.dtype == np.float32
    # Voxel centres map as (i + 0.5) * spacing, so physical positions must agree.
    np.testing.assert_allclose((_centroid(out) + 0.5) * (2.0, 4.0, 0.5), (20.0, 24.0, 64.0), atol=0.3)
    # Downsampling averages: the cube's mean intensity is kept rather than sampled.
    assert abs(out.mean() - vol.mean()) < 1.0


def test_resample_target_shape_crops_and_pads_with_air():
    vol = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8) - 1000.0
    out = resample(vol, (1, 1, 1), target_shape=(6, 4, 8))
    assert out.shape == (6, 4, 8)
    # Padded z, value = the minimum of what is kept (air in CT).
    np.testing.assert_array_equal(out[0], np.full((4, 8), vol[:, 1:5, :].min()))
    np.testing.assert_array_equal(out[1:5], vol[:, 1:5, :])  # centred crop in y
    assert resample(vol, (1, 1, 1)).shape == vol.shape


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="volume"):
        resample(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing_mm"):
        resample(np.zeros((4, 4, 4)), (1, 0, 1), target_spacing_mm=(2, 2, 2))


def test_normalize_volume_gives_spec_shape_in_unit_range_quickly():
    rng = np.random.default_rng(0)
    hu = rng.normal(-500, 400, size=(20, 128, 128)).astype(np.float32)
    spec = InputSpec()
    normalize_volume(hu, (5.0, 2.8, 2.8), spec)  # warm-up (torch import, thread pool)
    start = time.perf_counter()
    out = normalize_volume(hu, (5.0, 2.8, 2.8), spec)
    elapsed = time.perf_counter() - start
    assert out.shape == spec.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert elapsed < 0.1
    raw = normalize_volume(hu, (5.0, 2.8, 2.8), InputSpec(window=None))
    assert raw.min() < -100  # raw HU when window is None


def test_input_spec_round_trips_through_json():
    for spec in (InputSpec(), InputSpec(window=(40, 400), shape=(8, 32, 32)), InputSpec(window=None)):
        again = InputSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and hash(again) == hash(spec)
    assert InputSpec.from_dict({}) == InputSpec()


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"shape": [16, 64]}, "shape"),
        ({"shape": [16, 64, 64.5]}, "shape"),
        ({"spacing_mm": [6, -1, 6]}, "spacing_mm"),
        ({"window": "lungs"}, "unknown window"),
        ({"window": [10, 0]}, "width"),
        ({"modality": ""}, "modality"),
        ({"spacing": [1, 1, 1]}, "unknown keys"),
    ],
)
def test_input_spec_rejects_bad_input_clearly(bad, match):
    with pytest.raises(ConfigError, match=match):
        InputSpec.from_dict(bad)
    with pytest.raises(ConfigError):
        InputSpec.from_dict(["not", "a", "dict"])


@pytest.mark.parametrize("spacing, target", [((1.25, 0.7, 0.7), (6.0, 6.0, 6.0)),
                                             ((5.0, 3.0, 3.0), (6.0, 6.0, 6.0)),
                                             ((1.0, 1.0, 1.0), (0.5, 1.5, 2.0))])
def test_resample_computes_only_the_crop_but_equals_resample_then_crop(spacing, target):
    vol = np.random.default_rng(0).normal(size=(30, 70, 50)).astype(np.float32)
    full = resample(vol, spacing, target_spacing_mm=target)
    shape = tuple(max(1, n - 3) for n in full.shape)  # crop every axis
    cropped = resample(vol, spacing, target_spacing_mm=target, target_shape=shape)
    start = [(n - m) // 2 for n, m in zip(full.shape, shape)]
    expected = full[tuple(slice(s, s + m) for s, m in zip(start, shape))]
    np.testing.assert_allclose(cropped, expected, rtol=1e-5, atol=1e-5)


def test_resample_box_averages_when_shrinking_by_two_or_more():
    vol = np.arange(12, dtype=np.float32).reshape(1, 1, 12) * np.ones((2, 2, 1), np.float32)
    out = resample(vol, (1, 1, 1), target_spacing_mm=(1, 1, 4))  # 12 -> 3 voxels along x
    np.testing.assert_allclose(out[0, 0], [1.5, 5.5, 9.5])  # means of 0-3, 4-7, 8-11
    out = resample(vol, (1, 1, 1), target_spacing_mm=(1, 1, 12 / 5))  # 12 -> 5: overlap-weighted
    assert out.shape == (2, 2, 5)
    np.testing.assert_allclose(out[0, 0, 0], (0 + 1 + 0.4 * 2) / 2.4, rtol=1e-6)
    np.testing.assert_allclose(out.mean(), vol.mean(), rtol=1e-6)  # a box filter keeps the mean


def _reference_axis(values: np.ndarray, m: int) -> np.ndarray:
    """Resampling of the last axis to ``m`` by definition, one output voxel at a time (float64)."""
    n = values.shape[-1]
    scale = n / m
    out = np.empty(values.shape[:-1] + (m,))
    for j in range(m):
        if n >= 2 * m:  # box: each input voxel weighted by its overlap with the output voxel
            lo, hi = j * scale, (j + 1) * scale
            w = np.clip(np.minimum(np.arange(n) + 1, hi) - np.maximum(np.arange(n), lo), 0, None)
            out[..., j] = values @ (w / scale)
        else:  # linear between voxel centres, edges clamped
            src = min(max((j + 0.5) * scale - 0.5, 0.0), n - 1)
            i = int(np.floor(src))
            frac = src - i
            out[..., j] = values[..., i] * (1 - frac) + values[..., min(i + 1, n - 1)] * frac
    return out


@pytest.mark.parametrize("n, m", [(300, 37), (517, 64), (300, 200), (90, 250)])
def test_resample_of_long_axes_matches_the_definition(n, m):
    # Long axes are computed in bands of output voxels: each band must see all the inputs it needs.
    vol = np.random.default_rng(n).normal(0, 500, (2, 3, n)).astype(np.float32)
    got = resample(vol, (1, 1, 1), target_spacing_mm=(1, 1, n / m))
    assert got.shape == (2, 3, m)
    np.testing.assert_allclose(got, _reference_axis(vol.astype(np.float64), m), rtol=1e-4, atol=1e-2)
    along_y = resample(vol.transpose(0, 2, 1), (1, 1, 1), target_spacing_mm=(1, n / m, 1))
    np.testing.assert_allclose(along_y, got.transpose(0, 2, 1), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape, spacing, target, want", [
    ((48, 64, 64), (2.5, 6.0, 6.0), (6.0, 6.0, 6.0), (16, 64, 64)),  # z shrinks, then a crop
    ((10, 40, 40), (5.0, 2.0, 2.0), (6.0, 6.0, 6.0), (16, 12, 12)),  # z interpolated, then padded
    ((7, 30, 20), (1.0, 1.0, 1.0), None, None),                     # nothing to do
])
def test_resample_slices_equals_resample_of_the_hu_volume(shape, spacing, target, want):
    stored = np.random.default_rng(3).integers(-2000, 3000, shape).astype(np.int16)
    slopes = np.linspace(0.5, 1.5, shape[0])  # a rescale per slice, as DICOM allows
    hu = np.stack([to_hu(stored[i], slopes[i], -1024.0) for i in range(shape[0])])
    read = []

    def read_slice(i):
        read.append(i)
        return stored[i], slopes[i], -1024.0

    got = resample_slices(shape, read_slice, spacing, target_spacing_mm=target, target_shape=want)
    expected = resample(hu, spacing, target_spacing_mm=target, target_shape=want)
    assert got.shape == expected.shape and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float32 rounding of HU in the thousands
    assert len(read) == len(set(read))  # each slice read once, in order, and only when needed
    if shape[0] == 48:  # 48 x 2.5 mm -> 20 x 6 mm, 16 kept: the slices of the 2 outer ones are skipped
        assert 0 not in read and shape[0] - 1 not in read and len(read) < shape[0]
