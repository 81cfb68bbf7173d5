"""The training loop's pieces that need no cluster: flip augmentation and the SyncBatchNorm rule."""

from __future__ import annotations

import itertools

import pytest
import torch

from workloads.research.config import SYNC_BN_BELOW, TrainConfig, use_sync_bn
from workloads.research.loop import flip
from workloads.research.train import build_parser


def _volumes(n: int) -> torch.Tensor:
    return torch.arange(n * 2 * 3 * 4, dtype=torch.float32).reshape(n, 1, 2, 3, 4)


def test_flip_strength_zero_is_identity():
    x = _volumes(4)
    assert flip(x, 0.0, torch.Generator().manual_seed(0)) is x


def test_flip_turns_each_volume_along_a_subset_of_axes_reproducibly():
    x = _volumes(64)
    out = flip(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(out, flip(x, 1.0, torch.Generator().manual_seed(3)))
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


def test_sync_batchnorm_only_for_small_per_worker_batches_unless_set():
    assert use_sync_bn(None, SYNC_BN_BELOW - 1)
    assert not use_sync_bn(None, SYNC_BN_BELOW)
    assert use_sync_bn(True, 512) and not use_sync_bn(False, 4)


@pytest.mark.parametrize(("flag", "value"), [("auto", None), ("yes", True), ("no", False)])
def test_cli_sync_bn_flag(flag, value, tmp_path):
    args = vars(build_parser().parse_args(["--data", str(tmp_path), "--labels", str(tmp_path), "--sync-bn", flag]))
    assert args["sync_bn"] == flag
    cfg = TrainConfig(**{**args, "sync_bn": value, "cache": None})
    assert cfg.sync_bn is value
