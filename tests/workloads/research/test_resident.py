"""The resident loader: a worker's training rows on its device, permuted per (seed, epoch, rank)."""

from __future__ import annotations

import pytest
import torch

from medray.data.shards import VOLUME
from medray.errors import ConfigError
from medray.models.registry import list_models
from workloads.research.config import TrainConfig
from workloads.research.data import LABEL, ResidentSet, load_resident
from workloads.research.train import train

ROWS = 10


def _resident(rows: int = ROWS) -> ResidentSet:
    # Row i holds the value i everywhere: a batch's volumes tell which rows it took.
    volume = torch.arange(rows, dtype=torch.float32).view(-1, 1, 1, 1).expand(rows, 2, 3, 3).contiguous()
    return ResidentSet(volume, torch.arange(rows, dtype=torch.float32) % 2)


def _rows(batches) -> list[list[int]]:
    out = []
    for b in batches:
        rows = b[VOLUME][:, 0, 0, 0].long()
        assert b[VOLUME].dtype == torch.float32 and torch.equal(b[LABEL], (rows % 2).float())
        out.append(rows.tolist())
    return out


def test_epochs_permute_every_row_once_reproducibly_per_seed_epoch_and_rank():
    data = _resident()
    epoch0 = _rows(data.batches(2, seed=3, epoch=0, drop_last=False))
    assert sorted(r for b in epoch0 for r in b) == list(range(ROWS))
    assert epoch0 == _rows(data.batches(2, seed=3, epoch=0, drop_last=False))
    assert epoch0 != _rows(data.batches(2, seed=3, epoch=1, drop_last=False))
    assert epoch0 != _rows(data.batches(2, seed=4, epoch=0, drop_last=False))
    assert epoch0 != _rows(data.batches(2, seed=3, epoch=0, rank=1, drop_last=False))


def test_drop_last_and_skip():
    data = _resident()
    full = _rows(data.batches(4, seed=0, epoch=2, drop_last=False))
    assert [len(b) for b in full] == [4, 4, 2] and data.steps(4, drop_last=False) == 3
    dropped = _rows(data.batches(4, seed=0, epoch=2))
    assert dropped == full[:2] and data.steps(4) == 2
    # A run resumed after k steps of an epoch takes exactly the batches it had not taken yet.
    for k in range(4):
        assert _rows(data.batches(4, seed=0, epoch=2, drop_last=False, skip=k)) == full[k:]
    with pytest.raises(ConfigError, match="skip"):
        next(data.batches(4, seed=0, epoch=0, skip=-1))


def test_load_resident_concatenates_batches_and_gives_up_over_budget():
    source = _resident()
    parts = [{VOLUME: source.volume[i:i + 4], LABEL: source.label[i:i + 4]} for i in range(0, ROWS, 4)]
    loaded = load_resident(parts, device=torch.device("cpu"), dtype=torch.float16)
    assert len(loaded) == ROWS and loaded.volume.dtype == torch.float16
    assert torch.equal(loaded.volume.float(), source.volume) and torch.equal(loaded.label, source.label)
    assert len(loaded.head(7)) == 7
    per_row = source.volume[0].numel() * 2
    assert load_resident(parts, device=torch.device("cpu"), dtype=torch.float16, budget_bytes=ROWS * per_row)
    assert load_resident(parts, device=torch.device("cpu"), dtype=torch.float16,
                         budget_bytes=ROWS * per_row - 1) is None
    assert len(load_resident([], device=torch.device("cpu"))) == 0


def test_config_rejects_an_unknown_loader():
    with pytest.raises(ConfigError, match="loader must be one of auto, resident, stream"):
        TrainConfig(data="d", labels="l", loader="disk")


def test_ddp_run_with_the_resident_loader_trains_and_registers(ray_cluster, small_data, tmp_path):
    registry = tmp_path / "registry"
    cfg = TrainConfig(data=str(small_data.data), labels=str(small_data.labels), registry=str(registry),
                      epochs=2, workers=2, width=8, batch_size=8, loader="resident",
                      storage_path=str(tmp_path / "runs"), seed=2)
    result = train(cfg)
    assert result.loader == "resident" and result.ref == "nodule:1"
    assert [int(h["epoch"]) for h in result.history] == [1, 2]
    # Both ranks took the same number of steps per epoch: equal resident shares, drop_last.
    train_series = result.cohort["train_patients"]  # one series per patient in the synthetic cohort
    assert result.steps == 2 * ((train_series // 2) // 4)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    (manifest,) = list_models(registry)
    assert manifest.ref == result.ref and manifest.metrics["epoch"] == 2
