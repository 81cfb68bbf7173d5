"""What a site does with its own data: read its shards, train the global model a round, evaluate it.

The model (:func:`medray.models.build_model`, NoduleNet), the labels and patient split
(:mod:`medray.data.labels`), the resident rows and their epoch order (:mod:`medray.data.resident`),
the flips (:func:`medray.imaging.augment.random_flip`) and the AUC (:func:`medray.models.evaluate.roc_auc`)
are the research workload's own, shared through medray. Shards are read with pyarrow in the site's
own process (never Ray Data, whose read tasks the cluster may place on any node), after
:func:`medray.cluster.sites.require_site` checked that the process stands on the site.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from medray.cluster.sites import require_site
from medray.data.labels import NODULE_CODE, read_positive_patients, split_patients
from medray.data.resident import LABEL, ResidentSet
from medray.data.shards import PATIENT_PSEUDONYM, VOLUME, check_schema, shard_files
from medray.errors import ConfigError
from medray.imaging.augment import random_flip
from medray.imaging.normalize import InputSpec
from medray.models.evaluate import roc_auc

__all__ = ["LABELS_FILE", "LocalTraining", "SiteData", "read_site_data", "federated_keys", "get_arrays",
           "set_arrays", "train_round", "evaluate"]

# Where a site's storage root keeps its labels (the preprocessing workload's layout: ROOT/volumes/,
# ROOT/emr/diagnoses.parquet).
LABELS_FILE = Path("emr") / "diagnoses.parquet"


@dataclass(frozen=True)
class LocalTraining:
    """How a site trains the global model in a round (the research code's knobs, the same on every site)."""

    epochs: int = 1  # local epochs per round
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    augment: float = 1.0
    width: int = 16
    dropout: float = 0.1
    seed: int = 0
    val_fraction: float = 0.25
    code: str = NODULE_CODE

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("local training needs epochs >= 1, batch_size >= 1 and lr > 0")


@dataclass(frozen=True)
class SiteData:
    """One site's labelled volumes, split by patient (held in the site's process only)."""

    spec: InputSpec
    train: ResidentSet
    val: ResidentSet

    def counts(self) -> dict[str, int]:
        """Volume counts (what a site may tell the coordinator: no pseudonyms)."""
        return {"train": len(self.train), "val": len(self.val),
                "train_positive": int(self.train.label.sum()), "val_positive": int(self.val.label.sum())}


def read_site_data(site: str, root: str | Path, settings: LocalTraining) -> SiteData:
    """Read ``root``'s shards and labels on a node of ``site`` (SiteAccessError anywhere else)."""
    root = Path(root)
    require_site(site, root)
    files = shard_files(root)
    if not files:
        raise ConfigError(f"site {site!r} has no volume shards under {root}: preprocess its data there first")
    specs = {check_schema(pq.read_schema(f)) for f in files}
    if len(specs) != 1:
        raise ConfigError(f"site {site!r}'s shards were normalised with {len(specs)} input specs: use one run")
    table = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=[PATIENT_PSEUDONYM, VOLUME])
    patients = table[PATIENT_PSEUDONYM].to_pylist()
    volumes = table[VOLUME].combine_chunks().to_numpy_ndarray()  # (N, D, H, W) float32
    positives = read_positive_patients(root / LABELS_FILE, settings.code) & set(patients)
    train, val = split_patients(patients, positives, val_fraction=settings.val_fraction, seed=settings.seed)

    def rows(keep: frozenset[str]) -> ResidentSet:
        index = [i for i, p in enumerate(patients) if p in keep]
        label = torch.tensor([patients[i] in positives for i in index], dtype=torch.float32)
        return ResidentSet(torch.from_numpy(np.ascontiguousarray(volumes[index])), label)

    return SiteData(spec=specs.pop(), train=rows(train), val=rows(val))


def federated_keys(model: torch.nn.Module) -> list[str]:
    """The state-dict entries that are federated: every float tensor (BatchNorm's counters stay local)."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def get_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    """The federated tensors as numpy arrays, in :func:`federated_keys` order."""
    state = model.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in federated_keys(model)]


def set_arrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    """Load arrays of :func:`get_arrays`'s layout into ``model`` (BatchNorm variances clamped at 0)."""
    keys = federated_keys(model)
    if len(arrays) != len(keys):
        raise ConfigError(f"got {len(arrays)} arrays for a model of {len(keys)} federated tensors")
    # Noised BatchNorm variances can come out negative; clamping them is post-processing of a DP
    # release (no privacy cost) and keeps the normalisation defined.
    state = OrderedDict((k, torch.from_numpy(np.maximum(a, 0.0) if k.endswith("running_var") else np.asarray(a)))
                        for k, a in zip(keys, arrays))
    model.load_state_dict(state, strict=False)


def train_round(model: torch.nn.Module, data: ResidentSet, settings: LocalTraining, *, round_: int,
                proximal_mu: float = 0.0) -> float:
    """Train ``model`` in place for the round's local epochs; returns the mean training loss.

    ``proximal_mu`` > 0 adds FedProx's proximal term ``mu/2 · ||w - w_global||²`` (Li et al. 2020,
    arXiv:1812.06127), ``w_global`` being the weights the round started from.
    """
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + round_)
    batch = min(settings.batch_size, max(len(data), 1))
    model.train()
    total, seen = 0.0, 0
    for epoch in range(settings.epochs):
        for b in data.batches(batch, seed=settings.seed, epoch=round_ * settings.epochs + epoch):
            x = random_flip(b[VOLUME].unsqueeze(1), settings.augment, generator)
            loss = F.binary_cross_entropy_with_logits(model(x), b[LABEL])
            objective = loss
            if anchor:
                objective = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum()
                                                         for p, a in zip(model.parameters(), anchor))
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += float(loss) * len(b[LABEL])
            seen += len(b[LABEL])
    return total / max(seen, 1)


def evaluate(model: torch.nn.Module, data: ResidentSet, batch_size: int = 32) -> tuple[float, float, int]:
    """(mean BCE loss, AUC, volumes) of ``model`` on ``data`` (AUC NaN when one class only)."""
    if len(data) == 0:
        return float("nan"), float("nan"), 0
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(data.volume[i:i + batch_size].float().unsqueeze(1))
                            for i in range(0, len(data), batch_size)])
    loss = float(F.binary_cross_entropy_with_logits(logits, data.label))
    return loss, roc_auc(logits.numpy(), data.label.numpy()), len(data)
