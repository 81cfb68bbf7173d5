"""Training data: preprocessed volume shards plus EMR diagnoses, as labelled, patient-split Ray Datasets.

Inputs are the preprocessing workload's outputs, read only through their documented schemas:

* ``DATA``: a volume shard directory (:mod:`medray.data.shards`: ``DATA/volumes/*.parquet``, one row per
  series, ``patient_pseudonym`` + ``volume`` already normalised to the shards' InputSpec);
* ``LABELS``: the de-identified diagnoses table, read and split by patient with
  :mod:`medray.data.labels` (shared with the federated workload).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from medray.data.labels import ICD10_COLUMN, NODULE_CODE, read_positive_patients, split_patients
from medray.data.resident import LABEL, ResidentSet, epoch_permutation
from medray.data.shards import PATIENT_PSEUDONYM, VOLUME, check_schema, read_volumes, shard_files
from medray.errors import ConfigError
from medray.imaging.normalize import InputSpec
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "NODULE_CODE",
    "ICD10_COLUMN",
    "LABEL",
    "LOADER_PROFILE",
    "Cohort",
    "read_positive_patients",
    "split_patients",
    "load_cohort",
    "build_datasets",
    "ResidentSet",
    "epoch_permutation",
    "load_resident",
    "resident_budget",
]

# Reading and labelling shards is CPU work next to training: the platform's placement decides
# where (CPU-only node types first, then the training nodes' spare CPUs).
LOADER_PROFILE = WorkloadProfile(roles=("prep", "train"), num_cpus=1.0)
# Materialise the labelled data in the object store (read once, not every epoch) when it takes at
# most this share of the cluster's object store.
_CACHE_SHARE = 0.25
# A worker keeps its training rows resident when they take at most this share of its GPU's memory
# (loading briefly needs twice that), or this many bytes of host memory when it trains on the CPU.
RESIDENT_GPU_SHARE = 0.25
RESIDENT_HOST_BYTES = 2 << 30


@dataclass(frozen=True)
class Cohort:
    """Who is in the data, their labels and their side of the split (pseudonyms only, never PHI)."""

    data: Path
    spec: InputSpec
    series: int
    positives: frozenset[str]
    train_patients: frozenset[str]
    val_patients: frozenset[str]

    def counts(self) -> dict[str, int]:
        """Patient and series counts for logs, metrics and the registry."""
        return {
            "series": self.series,
            "train_patients": len(self.train_patients),
            "val_patients": len(self.val_patients),
            "train_positive": len(self.train_patients & self.positives),
            "val_positive": len(self.val_patients & self.positives),
        }


def load_cohort(
    data: str | Path, labels: str | Path, *, val_fraction: float = 0.2, seed: int = 0,
    code: str = NODULE_CODE,
) -> Cohort:
    """Check the shards' schema, read their patients (one column only) and labels, split them."""
    files = shard_files(data)
    if not files:
        raise ConfigError(f"no volume shards under {data}: run `python -m workloads.preprocess.dicom` "
                          "first and pass its output folder as --data")
    specs = {check_schema(pq.read_schema(f)) for f in files}
    if len(specs) != 1:
        raise ConfigError(f"the shards under {data} were normalised with {len(specs)} different "
                          "input specs: train on one preprocessing run at a time")
    patients = pads.dataset([str(f) for f in files], format="parquet").to_table(
        columns=[PATIENT_PSEUDONYM])[PATIENT_PSEUDONYM].to_pylist()
    positives = read_positive_patients(labels, code) & set(patients)
    train, val = split_patients(patients, positives, val_fraction=val_fraction, seed=seed)
    if not (train & positives and train - positives):
        raise ConfigError(f"the training split needs patients with and without {code}; it has "
                          f"{len(train & positives)} with and {len(train - positives)} without: "
                          "check --labels, or preprocess more patients")
    return Cohort(data=Path(data), spec=specs.pop(), series=len(patients), positives=positives,
                  train_patients=train, val_patients=val)


def _select(batch: dict[str, np.ndarray], keep: frozenset[str],
            positives: frozenset[str]) -> dict[str, np.ndarray]:
    """The rows of patients in ``keep``, with their label; only numeric columns leave here."""
    patients = batch[PATIENT_PSEUDONYM]
    mask = np.fromiter((p in keep for p in patients), dtype=bool, count=len(patients))
    labels = np.fromiter((p in positives for p in patients[mask]), dtype=np.float32,
                         count=int(mask.sum()))
    return {VOLUME: np.ascontiguousarray(batch[VOLUME][mask], dtype=np.float32), LABEL: labels}


def _fits_object_store(rows: int, spec: InputSpec) -> bool:
    import ray

    size = rows * int(np.prod(spec.shape)) * 4
    return size <= _CACHE_SHARE * ray.cluster_resources().get("object_store_memory", 0)


def build_datasets(cohort: Cohort, *, cache: bool | None = None) -> dict[str, ray.data.Dataset]:
    """``{"train": …, "val": …}`` Ray Datasets of ``volume`` (N, D, H, W) float32 and ``label``.

    ``cache``: materialise them in the object store so later epochs do not re-read the shards;
    None decides by size (at most a quarter of the cluster's object store).
    """
    options = place(LOADER_PROFILE).ray_options()
    source = read_volumes(cohort.data, **options).select_columns([PATIENT_PSEUDONYM, VOLUME])
    out = {}
    for name, keep in (("train", cohort.train_patients), ("val", cohort.val_patients)):
        ds = source.map_batches(_select, batch_format="numpy",
                                fn_kwargs={"keep": keep, "positives": cohort.positives}, **options)
        out[name] = ds
    if cache if cache is not None else _fits_object_store(cohort.series, cohort.spec):
        out = {name: ds.materialize() for name, ds in out.items()}
    # A new block order every epoch; the workers' local shuffle buffers mix within blocks.
    out["train"] = out["train"].randomize_block_order()
    return out


def resident_budget(device: torch.device) -> int:
    """Bytes a worker's resident training rows may take on ``device``."""
    if device.type == "cuda":
        return int(RESIDENT_GPU_SHARE * torch.cuda.get_device_properties(device).total_memory)
    return RESIDENT_HOST_BYTES


def load_resident(batches: Iterable[dict[str, torch.Tensor]], *, device: torch.device,
                  dtype: torch.dtype = torch.float32, budget_bytes: int | None = None) -> ResidentSet | None:
    """Pull ``batches`` (one pass over a worker's shard, in big batches) into a :class:`ResidentSet`
    on ``device``, volumes as ``dtype``; None as soon as they exceed ``budget_bytes``."""
    volumes, labels, size = [], [], 0
    for batch in batches:
        volume = batch[VOLUME].to(device=device, dtype=dtype)
        size += volume.numel() * volume.element_size()
        if budget_bytes is not None and size > budget_bytes:
            return None
        volumes.append(volume)
        labels.append(batch[LABEL].to(device=device, dtype=torch.float32))
    if not volumes:
        return ResidentSet(torch.empty(0, device=device, dtype=dtype), torch.empty(0, device=device))
    return ResidentSet(torch.cat(volumes), torch.cat(labels))
