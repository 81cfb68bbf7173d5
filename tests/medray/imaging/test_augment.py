"""medray.imaging.augment: the DALI augmentation pipeline against its plain-PyTorch reference path."""

import numpy as np
import pytest
import torch

from medray.errors import ConfigError
from medray.imaging.augment import (
    AugmentParams,
    AugmentSpec,
    VolumeAugmenter,
    augment_torch,
    dali_available,
    default_backend,
)

SHAPE = (4, 6, 8)


def volumes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def test_torch_path_applies_flips_intensity_clip_and_normalisation():
    x = volumes(3)
    params = AugmentParams(flips=np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.int32),
                           scale=np.array([1.0, 2.0, 0.5], np.float32),
                           shift=np.array([0.0, -0.5, 0.25], np.float32))
    spec = AugmentSpec(mean=0.5, std=0.25)
    out = augment_torch(x, params, spec).numpy()
    assert out.shape == (3, 1, *SHAPE) and out.dtype == np.float32
    expected = [x[0, ::-1], np.clip(x[1, :, ::-1, ::-1] * 2.0 - 0.5, 0, 1), np.clip(x[2] * 0.5 + 0.25, 0, 1)]
    for got, want in zip(out[:, 0], expected):
        np.testing.assert_allclose(got, (want - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_identity_spec_only_adds_the_channel():
    x = volumes(2)
    augmenter = VolumeAugmenter(AugmentSpec.identity(), batch_size=2, backend="torch")
    np.testing.assert_array_equal(augmenter(x).numpy()[:, 0], x)


def test_draws_are_seeded_and_follow_the_spec():
    spec = AugmentSpec(flip_probability=(0.0, 1.0, 0.5), scale_range=(0.8, 0.9), shift_range=(0.1, 0.2))
    a = AugmentParams.draw(spec, 64, np.random.default_rng(7))
    b = AugmentParams.draw(spec, 64, np.random.default_rng(7))
    np.testing.assert_array_equal(a.flips, b.flips)
    assert (a.flips[:, 0] == 0).all() and (a.flips[:, 1] == 1).all() and 0 < a.flips[:, 2].sum() < 64
    assert ((a.scale >= 0.8) & (a.scale <= 0.9)).all() and ((a.shift >= 0.1) & (a.shift <= 0.2)).all()


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="flip_probability"):
        AugmentSpec(flip_probability=(0.5, 2.0, 0.0))
    with pytest.raises(ConfigError, match="std"):
        AugmentSpec(std=0.0)
    with pytest.raises(ConfigError, match="backend"):
        VolumeAugmenter(batch_size=2, backend="opencl")
    with pytest.raises(ValueError, match="exceeds"):
        VolumeAugmenter(batch_size=2, backend="torch")(volumes(3))


def test_default_backend_matches_what_is_installed():
    expected = "torch" if not dali_available() else ("dali-gpu" if torch.cuda.is_available() else "dali-cpu")
    assert default_backend() == expected


@pytest.mark.parametrize("backend", ["dali-cpu", "dali-gpu"])
def test_dali_backend_equals_the_torch_path(backend):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (pip install 'medray[dali]')")
    if backend == "dali-gpu" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    spec = AugmentSpec(flip_probability=(0.5, 0.5, 0.5), mean=0.4, std=0.3)
    dali = VolumeAugmenter(spec, batch_size=8, backend=backend, seed=3)
    reference = VolumeAugmenter(spec, batch_size=8, backend="torch", seed=3)
    for n in (8, 5, 8):  # full and partial batches; same seeds, so the same draws
        x = volumes(n, seed=n)
        got, want = dali(x), reference(x)
        assert got.shape == want.shape == (n, 1, *SHAPE)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
