"""The model registry: versioned directories of weights plus a manifest.

Layout (one directory per version, written atomically, never modified afterwards)::

    REGISTRY/<name>/v0001/manifest.json   name, version, input spec, metrics, created, sha256, …
    REGISTRY/<name>/v0001/weights.pt      torch state dict
    REGISTRY/<name>/v0001/model.onnx      derived inference artifacts (medray.models.backends), added later

Models are addressed as ``name:version`` or ``name:latest``. Loading verifies the weights'
sha256 against the manifest, so a corrupted or swapped file is refused, never served.

A version's weights and identity never change. What changes is its ``backends`` record: artifacts
derived from the weights (an ONNX export, an INT8 model and its accuracy check) are added to the
version directory by whoever first needs them and recorded there, under :func:`artifact_lock`, by
:func:`record_backend`. Manifests written before that field existed load with it empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medray.errors import RegistryError
from medray.imaging.normalize import InputSpec
from medray.models.findings import finding_spec

__all__ = [
    "MANIFEST_VERSION",
    "ModelManifest",
    "RegisteredModel",
    "parse_ref",
    "register",
    "list_models",
    "resolve",
    "load_state_dict",
    "file_sha256",
    "artifact_lock",
    "record_backend",
]

MANIFEST_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ModelManifest:
    """What ``manifest.json`` holds."""

    name: str
    version: int
    input_spec: dict[str, Any]
    sha256: str
    created: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    weights_file: str = "weights.pt"
    framework: str = "torch"
    manifest_version: int = MANIFEST_VERSION
    # Inference backend -> what this version has for it (artifact file, its sha256, accuracy checks).
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What the model finds (a name in medray.models.findings.FINDINGS): the labels, codes and body
    # site its answers and reports carry. Manifests from before this field are the nodule model's.
    finding: str = "lung-nodule"

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def spec(self) -> InputSpec:
        """The model's input spec as an :class:`~medray.imaging.normalize.InputSpec`."""
        return InputSpec.from_dict(self.input_spec)


@dataclass(frozen=True)
class RegisteredModel:
    """A verified registry entry on disk."""

    manifest: ModelManifest
    path: Path

    @property
    def weights_path(self) -> Path:
        return self.path / self.manifest.weights_file


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"nodule:3"`` → ``("nodule", 3)``; ``"nodule"`` or ``"nodule:latest"`` → ``("nodule", None)``."""
    name, _, version = ref.partition(":")
    if not _NAME.match(name):
        raise RegistryError(f"bad model name in {ref!r}: use lowercase letters, digits, '.', '_', '-'")
    if version in ("", "latest"):
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise RegistryError(f"bad model version in {ref!r}: use a positive integer or 'latest'")
    return name, int(version)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in model_dir.iterdir() if (m := _VERSION_DIR.match(p.name)))


def register(
    registry: str | Path,
    name: str,
    weights: str | Path,
    *,
    input_spec: InputSpec | dict[str, Any],
    metrics: dict[str, float] | None = None,
    model_config: dict[str, Any] | None = None,
    finding: str = "lung-nodule",
) -> RegisteredModel:
    """Copy ``weights`` (a torch state-dict file) into a new version of ``name``; returns it.

    ``finding``: what the model finds, a name in :data:`medray.models.findings.FINDINGS`.
    """
    parse_ref(name)
    finding_spec(finding)
    spec = input_spec if isinstance(input_spec, InputSpec) else InputSpec.from_dict(input_spec)
    model_dir = Path(registry) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        shutil.copyfile(weights, staging / "weights.pt")
        digest = file_sha256(staging / "weights.pt")
        while True:
            version = (_versions(model_dir) or [0])[-1] + 1
            manifest = ModelManifest(
                name=name,
                version=version,
                input_spec=spec.to_dict(),
                sha256=digest,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
                model_config=dict(model_config or {}),
                finding=finding,
            )
            (staging / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n")
            target = model_dir / f"v{version:04d}"
            try:
                # rename is atomic and fails if another writer took this version first.
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue
                raise
            return RegisteredModel(manifest=manifest, path=target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_manifest(version_dir: Path) -> ModelManifest:
    try:
        data = json.loads((version_dir / "manifest.json").read_text())
        return ModelManifest(**data)
    except FileNotFoundError:
        raise RegistryError(f"{version_dir} has no manifest.json: the entry is incomplete") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise RegistryError(f"{version_dir}/manifest.json is malformed ({e}): re-register") from None


def list_models(registry: str | Path) -> list[ModelManifest]:
    """Every registered version, by name then version (manifests only; weights not verified)."""
    root = Path(registry)
    if not root.is_dir():
        return []
    return [
        _read_manifest(model_dir / f"v{v:04d}")
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))
        for v in _versions(model_dir)
    ]


def resolve(registry: str | Path, ref: str) -> RegisteredModel:
    """Find ``ref`` (``name:version`` / ``name:latest``) and verify its weights' sha256."""
    name, version = parse_ref(ref)
    model_dir = Path(registry) / name
    versions = _versions(model_dir)
    if not versions:
        raise RegistryError(f"no model named {name!r} in the registry {registry}")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise RegistryError(f"model {name!r} has no version {version}; it has {versions}")
    entry = RegisteredModel(manifest=_read_manifest(model_dir / f"v{version:04d}"),
                            path=model_dir / f"v{version:04d}")
    if not entry.weights_path.is_file():
        raise RegistryError(f"{entry.manifest.ref}: weights file missing; re-register the model")
    actual = file_sha256(entry.weights_path)
    if actual != entry.manifest.sha256:
        raise RegistryError(
            f"{entry.manifest.ref}: weights sha256 {actual[:12]}… does not match the manifest's "
            f"{entry.manifest.sha256[:12]}…: the file is corrupted or was replaced; refusing to load it. "
            "Restore it from backup or register the model again."
        )
    return entry


def load_state_dict(registry: str | Path, ref: str) -> tuple[ModelManifest, dict[str, Any]]:
    """Resolve and verify ``ref``, then load its torch state dict (tensors only, no pickled code)."""
    import torch

    entry = resolve(registry, ref)
    state = torch.load(entry.weights_path, map_location="cpu", weights_only=True)
    return entry.manifest, state


@contextmanager
def artifact_lock(entry: RegisteredModel) -> Iterator[None]:
    """Hold the version directory's lock (an exclusive ``flock``, released on exit or process death):
    replicas that would create the same artifact wait for the first instead of racing it."""
    import fcntl

    try:
        fd = os.open(entry.path / ".artifacts.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
        raise RegistryError(f"{entry.manifest.ref}: cannot write to {entry.path} ({e.strerror}): inference "
                            "artifacts are cached there; make it writable or use the eager backend") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def record_backend(entry: RegisteredModel, backend: str, info: dict[str, Any]) -> RegisteredModel:
    """Record ``info`` as the manifest's entry for ``backend`` (replacing any earlier one); returns the
    updated entry. Call it under :func:`artifact_lock`; the manifest is replaced atomically."""
    current = _read_manifest(entry.path)
    if current.sha256 != entry.manifest.sha256:
        raise RegistryError(f"{entry.manifest.ref}: the manifest changed under us; resolve the model again")
    manifest = ModelManifest(**{**asdict(current), "backends": {**current.backends, backend: dict(info)}})
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=entry.path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(manifest), indent=2) + "\n")
        os.replace(tmp, entry.path / "manifest.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return RegisteredModel(manifest=manifest, path=entry.path)
