"""The training loop's pieces that need no cluster: the SyncBatchNorm rule and its flag."""

from __future__ import annotations

import pytest

from workloads.research.config import SYNC_BN_BELOW, TrainConfig, use_sync_bn
from workloads.research.train import build_parser


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


def test_the_held_out_set_is_streamed_once_then_kept_unless_it_exceeds_the_budget():
    import torch

    from workloads.research.loop import _HeldOut

    passes = []

    def stream():
        passes.append(1)
        return iter([{"volume": torch.zeros(2, 4), "label": torch.ones(2)} for _ in range(3)])

    kept = _HeldOut(stream, budget_bytes=10_000)
    assert [len(list(kept)) for _ in range(3)] == [3, 3, 3] and len(passes) == 1
    passes.clear()
    too_big = _HeldOut(stream, budget_bytes=50)  # one batch is 32 + 8 bytes: the second overflows
    assert [len(list(too_big)) for _ in range(3)] == [3, 3, 3] and len(passes) == 3
