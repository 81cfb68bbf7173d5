"""The per-request work, outside any server: DICOM bytes -> model input -> probability.

Everything here calls the one implementation in medray (``dicom_series`` to read and validate,
``Volume.normalized``, i.e. ``imaging.normalize_volume``, with the model's InputSpec, ``registry``
and ``models.backends`` to load and run), so the service and the plain-FastAPI baseline of
``benchmarks/serve_load.py`` run exactly the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medray.dicom.volume import read_instance, volume_from_datasets
from medray.imaging.normalize import InputSpec
from medray.models.backends import Predictor, load_backend
from medray.models.registry import ModelManifest

__all__ = ["Study", "LoadedModel", "routing_fields", "prepare", "load_model", "predict"]


@dataclass(frozen=True)
class Study:
    """One series, normalised for a model. The identifiers are PHI: pseudonymise before use."""

    x: np.ndarray = field(repr=False)  # (z, y, x) float32 of the model's InputSpec shape
    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    n_instances: int


@dataclass
class LoadedModel:
    """A registry model ready for inference on one backend (:mod:`medray.models.backends`)."""

    manifest: ModelManifest
    predictor: Predictor = field(repr=False)
    spec: InputSpec

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def backend(self) -> str:
        """Which backend answers: ``eager``, ``onnx``, ``onnx-int8``, ``compile`` or ``tensorrt``."""
        return self.predictor.backend

    @property
    def module(self) -> object:
        """The torch module (eager and compile backends), else None."""
        return self.predictor.module


def routing_fields(ds: Dataset) -> tuple[str, str]:
    """(Modality, BodyPartExamined) of a parsed instance (:func:`medray.dicom.volume.read_instance`),
    upper-case: what the ingress routes on.

    The values come from the input: compare them with known codes, never echo them (a malformed
    file can hold free text, even a name, there).
    """
    return (str(ds.get("Modality", "") or "").strip().upper(),
            str(ds.get("BodyPartExamined", "") or "").strip().upper())


def prepare(instances: Sequence[bytes], spec: InputSpec, *, max_pixels: int, first: Dataset | None = None) -> Study:
    """Read, validate and stack ``instances`` (one series) and normalise them for ``spec``.

    Raises DicomError with a reason of medray.dicom.volume.REASONS; ``max_pixels`` bounds each
    instance before anything is decoded (decompression bombs are refused as ``too_large``).
    ``first``: the first instance already parsed by ``read_instance`` (the ingress routes on it).
    """
    datasets = [first if i == 0 and first is not None else read_instance(data, max_pixels=max_pixels)
                for i, data in enumerate(instances)]
    volume = volume_from_datasets(datasets, allow_modalities=(spec.modality,))
    return Study(
        x=volume.normalized(spec),
        study_uid=volume.study_uid,
        series_uid=volume.series_uid,
        patient_id=volume.patient_id,
        n_instances=volume.n_instances,
    )


def load_model(registry: str | Path, ref: str, *, backend: str = "eager", threads: int | None = None,
               max_batch: int = 16) -> LoadedModel:
    """Load and verify ``ref`` (``name:version`` or ``name:latest``) from the registry, ready on ``backend``
    (``auto`` picks by the device: :func:`medray.models.backends.choose_backend`); ``threads``: the
    replica's CPUs; ``max_batch``: the largest batch the GPU backends capture."""
    predictor = load_backend(registry, ref, backend, threads=threads, max_batch=max_batch)
    return LoadedModel(manifest=predictor.manifest, predictor=predictor, spec=predictor.manifest.spec)


def predict(model: LoadedModel, xs: np.ndarray) -> list[float]:
    """Probabilities for a batch ``xs`` of normalised volumes ``(n, z, y, x)``."""
    return model.predictor(np.asarray(xs, dtype=np.float32)[:, None]).tolist()
