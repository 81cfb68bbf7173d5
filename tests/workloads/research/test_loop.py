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
