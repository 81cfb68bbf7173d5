"""The per-request work, outside any server: DICOM bytes -> model input -> probability.

Everything here calls the one implementation in medray (``dicom_series`` to read and validate,
``imaging.normalize_volume`` with the model's registered InputSpec, ``registry`` + ``models`` to
load), so the service and the plain-FastAPI baseline of ``benchmarks/serve_load.py`` run exactly
the same code.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from medray.dicom_series import read_instance, volume_from_datasets
from medray.errors import ConfigError, DicomError
from medray.imaging import InputSpec, normalize_volume
from medray.registry import ModelManifest, load_state_dict

__all__ = ["Study", "LoadedModel", "peek", "prepare", "load_model", "predict"]


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
    """A registry model ready for inference (eval mode, on the CPU or the replica's GPU)."""

    manifest: ModelManifest
    module: object = field(repr=False)
    spec: InputSpec

    @property
    def ref(self) -> str:
        return self.manifest.ref


def peek(data: bytes) -> tuple[str, str]:
    """(Modality, BodyPartExamined) of a DICOM file, upper-case, from its header alone.

    Cheap enough for the ingress to route on; the full checks come later in :func:`prepare`.
    The values come from the input: compare them with known codes, never echo them (a malformed
    file can hold free text, even a name, there).
    Raises DicomError("not_dicom") when the header cannot be read.
    """
    # pydicom's warnings and errors can quote element values (PHI): keep them out of logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=["Modality", "BodyPartExamined"])
            modality, body_part = ds.get("Modality", ""), ds.get("BodyPartExamined", "")
        except Exception:
            # Broad on purpose, as in medray.dicom_series.read_instance.
            raise DicomError("not_dicom", "not a DICOM Part 10 file: send DICOM files only") from None
    return str(modality or "").strip().upper(), str(body_part or "").strip().upper()


def prepare(instances: Sequence[bytes], spec: InputSpec, *, max_pixels: int) -> Study:
    """Read, validate and stack ``instances`` (one series) and normalise them for ``spec``.

    Raises DicomError with a reason of medray.dicom_series.REASONS; ``max_pixels`` bounds each
    instance before anything is decoded (decompression bombs are refused as ``too_large``).
    """
    datasets = [read_instance(data, max_pixels=max_pixels) for data in instances]
    volume = volume_from_datasets(datasets, allow_modalities=(spec.modality,))
    return Study(
        x=normalize_volume(volume.hu, volume.spacing_mm, spec),
        study_uid=volume.study_uid,
        series_uid=volume.series_uid,
        patient_id=volume.patient_id,
        n_instances=volume.n_instances,
    )


def load_model(registry: str | Path, ref: str) -> LoadedModel:
    """Load and verify ``ref`` (``name:version`` or ``name:latest``) from the registry, in eval mode."""
    import torch

    from medray.models import build_model

    manifest, state = load_state_dict(registry, ref)
    module = build_model(manifest.model_config)
    module.load_state_dict(state)
    module.eval()
    spec = manifest.spec
    if tuple(module.config.in_shape) != spec.shape:
        raise ConfigError(f"{manifest.ref}: model in_shape {module.config.in_shape} differs from its input "
                          f"spec shape {spec.shape}: re-register the model with matching values")
    if torch.cuda.is_available():
        module = module.cuda()
    return LoadedModel(manifest=manifest, module=module, spec=spec)


def predict(model: LoadedModel, xs: np.ndarray) -> list[float]:
    """Probabilities for a batch ``xs`` of normalised volumes ``(n, z, y, x)``."""
    import torch

    module = model.module
    device = next(module.parameters()).device  # type: ignore[attr-defined]
    with torch.inference_mode():
        batch = torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32))[:, None].to(device)
        return torch.sigmoid(module(batch)).float().cpu().tolist()  # type: ignore[operator]
