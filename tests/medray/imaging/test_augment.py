"""medray.imaging.augment: the DALI augmentation pipeline against its plain-PyTorch reference path, and
the training loop's random flip."""

import itertools

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
    random_flip,
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


def _tensors(n: int) -> torch.Tensor:
    return torch.arange(n * 2 * 3 * 4, dtype=torch.float32).reshape(n, 1, 2, 3, 4)


def test_random_flip_strength_zero_is_identity():
    x = _tensors(4)
    assert random_flip(x, 0.0, torch.Generator().manual_seed(0)) is x


def test_random_flip_turns_each_volume_along_a_subset_of_axes_reproducibly():
    x = _tensors(64)
    out = random_flip(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(out, random_flip(x, 1.0, torch.Generator().manual_seed(3)))
    seen = set()
    for volume, flipped in zip(x, out):
        matches = [axes for r in range(4) for axes in itertools.combinations((1, 2, 3), r)
                   if torch.equal(volume.flip(axes) if axes else volume, flipped)]
        assert matches, "a volume came out as something other than a flip of itself"
        seen.add(matches[0])
    # strength 1: every axis flips with probability 1/2, so 64 volumes show most of the 8 subsets
    assert len(seen) >= 6
    # the masks are drawn from the generator alone: the same draws on CPU as before the change
    g = torch.Generator().manual_seed(3)
    masks = [torch.rand(64, generator=g) < 0.5 for _ in range(3)]
    expected = x
    for axis, mask in zip((2, 3, 4), masks):
        expected = torch.where(mask.view(-1, 1, 1, 1, 1), expected.flip(axis), expected)
    assert torch.equal(out, expected)
