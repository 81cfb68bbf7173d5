"""How a registered model runs: its inference backend, chosen by the node's accelerator.

=========== ====== ==================================================================== ============================
backend     device what runs                                                            cached in the version dir
=========== ====== ==================================================================== ============================
eager       any    the torch module, fp32 (the reference every other backend is held to) ``weights.pt`` (registered)
onnx        CPU    ONNX Runtime, fp32, graph exported once with a dynamic batch axis    ``model.onnx``
onnx-int8   CPU    ONNX Runtime, static INT8 (QDQ, per-channel weights), only after      ``model-int8.onnx``
                   :func:`check_int8` passed on held-out data
compile     CUDA   ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), bf16 autocast —
                   fp16 where the GPU has no bf16 — and ``channels_last_3d``
tensorrt    CUDA   a TensorRT fp16 engine built from ``model.onnx`` (``tensorrt`` installed) ``model.sm90.trt10.x.plan``
=========== ====== ==================================================================== ============================

``auto`` (:func:`choose_backend`) picks ``compile`` on a CUDA device and ``onnx`` on a CPU. Artifacts
are made by the first replica that needs them, under the version directory's lock, written to a
temporary file and renamed into place, and recorded with their sha256 (and the weights' sha256 they
derive from) in the manifest's ``backends``; a missing or mismatched one is made again. An export is
checked against eager fp32 before it is kept (:data:`EXPORT_TOLERANCE`).

A :class:`Predictor` maps a float32 batch ``(N, 1, D, H, W)`` to nodule probabilities ``(N,)``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medray.errors import BackendError, ConfigError
from medray.models.evaluate import roc_auc
from medray.models.registry import (
    ModelManifest,
    RegisteredModel,
    artifact_lock,
    file_sha256,
    record_backend,
    resolve,
)

if TYPE_CHECKING:
    import torch

__all__ = ["BACKENDS", "REQUESTS", "GPU_BACKENDS", "EXPORT_TOLERANCE", "INT8_MAX_AUC_DIFF", "Predictor",
           "Int8Check", "choose_backend", "load_backend", "onnx_artifact", "check_int8"]

BACKENDS = ("eager", "onnx", "onnx-int8", "compile", "tensorrt")
REQUESTS = ("auto", *BACKENDS)
GPU_BACKENDS = ("compile", "tensorrt")
# An ONNX export whose probabilities differ from eager fp32 by more than this is refused, not cached.
EXPORT_TOLERANCE = 1e-4
# INT8 is allowed only when its held-out AUC is within this of fp32's (issue 24).
INT8_MAX_AUC_DIFF = 0.01
ONNX_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
_OPSET = 18
_INPUT, _OUTPUT = "x", "probability"
_CALIBRATION_VOLUMES = 16
_CHUNK = 16  # volumes per ORT run in the checks (bounds memory, not speed)
_INT8_HINT = ("run medray.models.backends.check_int8(registry, ref, volumes, labels) on held-out studies "
              "first, or serve backend 'onnx'")


@dataclass(frozen=True)
class Predictor:
    """A model ready to score batches on one backend and device."""

    manifest: ModelManifest
    backend: str
    device: str
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    module: Any = field(default=None, repr=False)  # the torch module (eager and compile), else None

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        """Probabilities ``(N,)`` float32 for a batch ``(N, 1, D, H, W)`` of normalised volumes."""
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        expected = (1, *self.manifest.spec.shape)
        if xs.ndim != 5 or tuple(xs.shape[1:]) != expected:
            raise ValueError(f"{self.ref} expects a batch (N, {', '.join(map(str, expected))}), got {xs.shape}: "
                             "normalise with medray.imaging.normalize.normalize_volume and the model's InputSpec")
        return np.asarray(self.run(xs), dtype=np.float32).reshape(len(xs))


@dataclass(frozen=True)
class Int8Check:
    """The outcome of :func:`check_int8`, as recorded in the manifest."""

    auc_fp32: float
    auc_int8: float
    n: int
    max_abs_diff: float  # largest probability difference int8 vs fp32 on the held-out set
    passed: bool


def choose_backend(requested: str, device_type: str) -> str:
    """The backend for a request on a device type (``cuda``, ``cpu``): ``auto`` is ``compile`` on CUDA
    and ``onnx`` elsewhere. Raises ConfigError for unknown names and GPU backends without a GPU."""
    if requested not in REQUESTS:
        raise ConfigError(f"unknown inference backend {requested!r}: use one of {', '.join(REQUESTS)}")
    if requested == "auto":
        return "compile" if device_type == "cuda" else "onnx"
    if requested in GPU_BACKENDS and device_type != "cuda":
        raise ConfigError(f"backend {requested!r} needs a CUDA GPU and this replica has none: "
                          "use auto, onnx or eager")
    return requested


def load_backend(registry: str | Path, ref: str, backend: str = "auto", *, device: str | None = None,
                 threads: int | None = None, max_batch: int = 16) -> Predictor:
    """Load and verify ``ref`` from the registry and make it ready on ``backend``.

    ``device``: ``cuda``/``cuda:N``/``cpu`` (default: CUDA when available). ``threads``: ONNX Runtime's
    intra-op threads, the replica's CPUs (default: all). ``max_batch``: the largest batch ``compile``
    and ``tensorrt`` prepare for (larger batches run in parts).
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = choose_backend(backend, torch.device(device).type)
    entry = resolve(registry, ref)
    if name == "eager":
        module = _module(entry).to(device)
        return Predictor(entry.manifest, name, device, _torch_run(module, device), module)
    if name == "onnx":
        return Predictor(entry.manifest, name, "cpu", _ort_run(_verified(entry, "onnx"), threads))
    if name == "onnx-int8":
        info = entry.manifest.backends.get("onnx-int8", {})
        if not info.get("passed") or info.get("weights_sha256") != entry.manifest.sha256:
            raise BackendError(f"{entry.manifest.ref} has no passed INT8 accuracy check: {_INT8_HINT}")
        return Predictor(entry.manifest, name, "cpu", _ort_run(_verified(entry, "onnx-int8"), threads))
    if name == "compile":
        module = _module(entry)
        return Predictor(entry.manifest, name, device, _compiled_run(module, device, max_batch), module)
    from medray.models._tensorrt import tensorrt_run

    return Predictor(entry.manifest, name, device,
                     tensorrt_run(entry, onnx_artifact(entry), device, max_batch, _OUTPUT))


def _module(entry: RegisteredModel) -> torch.nn.Module:
    """The registered network with its verified weights, in eval mode, on the CPU."""
    import torch

    from medray.models.nodule import build_model

    module = build_model(entry.manifest.model_config)
    module.load_state_dict(torch.load(entry.weights_path, map_location="cpu", weights_only=True))
    if tuple(module.config.in_shape) != entry.manifest.spec.shape:
        raise ConfigError(f"{entry.manifest.ref}: model in_shape {module.config.in_shape} differs from its input "
                          f"spec shape {entry.manifest.spec.shape}: re-register the model with matching values")
    return module.eval()


def _torch_run(module: torch.nn.Module, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(xs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(module(torch.from_numpy(xs).to(device))).float().cpu().numpy()

    return run


def _with_sigmoid(module: torch.nn.Module) -> torch.nn.Module:
    # Exported graphs end in the sigmoid, so every backend answers probabilities.
    import torch

    class WithSigmoid(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))

    return WithSigmoid().eval()


def _export_onnx(module: torch.nn.Module, in_shape: tuple[int, ...], path: Path) -> None:
    """Export ``module`` (+ sigmoid) to ONNX at ``path``: one self-contained file, dynamic batch axis."""
    import torch

    example = torch.rand(2, 1, *in_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notices, not ours to fix
        torch.onnx.export(_with_sigmoid(module), (example,), str(path), dynamo=True, opset_version=_OPSET,
                          input_names=[_INPUT], output_names=[_OUTPUT], external_data=False, optimize=True,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, verbose=False)


def _session(model: bytes, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendError("the onnx backends need onnxruntime: pip install onnxruntime (a medray dependency), "
                           "or serve backend 'eager'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads or os.cpu_count() or 1))
    options.inter_op_num_threads = 1  # one graph, run operator after operator: no second pool
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the quantised graph's fusion notices are expected
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _ort_run(model: bytes, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    session = _session(model, threads)

    def run(xs: np.ndarray) -> np.ndarray:
        return session.run(None, {_INPUT: xs})[0]

    return run


def _scores(run: Callable[[np.ndarray], np.ndarray], volumes: np.ndarray) -> np.ndarray:
    return np.concatenate([run(volumes[i:i + _CHUNK]) for i in range(0, len(volumes), _CHUNK)]).reshape(-1)


def _atomic_write(directory: Path, name: str, data: bytes) -> None:
    # Written beside the target and renamed over it: a reader sees the old file or the new, never half.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cached(entry: RegisteredModel, backend: str) -> bytes | None:
    """The artifact of ``backend`` if the manifest records it for these weights and its sha256 matches."""
    import hashlib

    info = entry.manifest.backends.get(backend, {})
    path = entry.path / str(info.get("file", ""))
    if info.get("weights_sha256") != entry.manifest.sha256 or not info.get("file") or not path.is_file():
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == info.get("sha256") else None


def _verified(entry: RegisteredModel, backend: str) -> bytes:
    """The bytes of ``backend``'s artifact, made first if needed (only ``onnx`` is made here)."""
    if backend == "onnx":
        onnx_artifact(entry)
        entry = resolve(entry.path.parent.parent, entry.manifest.ref)
    data = _cached(entry, backend)
    if data is None:
        raise BackendError(f"{entry.manifest.ref}: {backend} artifact missing or changed since its check: "
                           + (_INT8_HINT if backend == "onnx-int8" else "load it again to re-export"))
    return data


def onnx_artifact(entry: RegisteredModel) -> Path:
    """The version's ``model.onnx``: reused when its sha256 matches the manifest, else exported again
    (once, under the version's lock) after checking it against eager fp32."""
    registry, ref = entry.path.parent.parent, entry.manifest.ref
    with artifact_lock(entry):
        entry = resolve(registry, ref)  # what another replica may have recorded while we waited
        if _cached(entry, "onnx") is not None:
            return entry.path / ONNX_FILE
        module = _module(entry)
        shape = entry.manifest.spec.shape
        with tempfile.TemporaryDirectory(prefix=".export-", dir=entry.path) as tmp:
            staged = Path(tmp) / ONNX_FILE
            _export_onnx(module, shape, staged)
            data = staged.read_bytes()
        probe = np.random.default_rng(0).random((3, 1, *shape), dtype=np.float32)
        diff = float(np.abs(_ort_run(data, 1)(probe) - _torch_run(module, "cpu")(probe)).max())
        if diff > EXPORT_TOLERANCE:
            raise BackendError(f"{ref}: the ONNX export differs from eager fp32 by {diff:.2e} (> {EXPORT_TOLERANCE}): "
                               "not cached; serve backend 'eager' and report the model")
        _atomic_write(entry.path, ONNX_FILE, data)
        import torch

        record_backend(entry, "onnx", {"file": ONNX_FILE, "sha256": file_sha256(entry.path / ONNX_FILE),
                                       "weights_sha256": entry.manifest.sha256, "opset": _OPSET,
                                       "torch": torch.__version__, "max_abs_diff_vs_eager": diff,
                                       "exported": _now()})
        return entry.path / ONNX_FILE


def _quantize(fp32: Path, calibration: np.ndarray, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{_INPUT: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    # Static (calibrated activations) in QDQ form with per-channel weights: the most accurate of ORT's
    # INT8 schemes for convolutions. Only the convolutions, where the time goes (pooling, the linear
    # head and the sigmoid stay float), and not the stem's: it reads the CT intensities themselves,
    # one channel, where 8 bits lost a faint nodule (probabilities off by 0.11, against 0.013 with
    # the stem in float, on the test's studies) for little time saved.
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=_single_channel_convs(fp32))


def _single_channel_convs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    in_channels = {t.name: t.dims[1] for t in graph.initializer if len(t.dims) == 5}
    return [n.name for n in graph.node if n.op_type == "Conv" and in_channels.get(n.input[1]) == 1]


def check_int8(registry: str | Path, ref: str, volumes: np.ndarray, labels: np.ndarray, *,
               calibration: np.ndarray | None = None, max_auc_diff: float = INT8_MAX_AUC_DIFF,
               threads: int | None = None,
               quantize: Callable[[Path, np.ndarray, Path], None] = _quantize) -> Int8Check:
    """Quantise ``ref`` to INT8, score held-out ``volumes`` ``(N, 1, D, H, W)`` with true ``labels``, and
    allow the ``onnx-int8`` backend only when its AUC is within ``max_auc_diff`` of fp32's.

    ``calibration``: volumes for the activation ranges (default: the first 16 of ``volumes``). The
    result is recorded in the manifest either way; a failed check raises BackendError naming both AUCs.
    ``quantize`` is the quantiser (a parameter so that tests can break it).
    """
    volumes = np.ascontiguousarray(volumes, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    if len(volumes) != len(labels) or len(set(labels.tolist())) != 2:
        raise ConfigError(f"check_int8 needs one label per volume and both classes: got {len(volumes)} volumes, "
                          f"{len(labels)} labels of classes {sorted(set(labels.tolist()))}")
    entry = resolve(registry, ref)
    fp32 = _ort_run(_verified(entry, "onnx"), threads)
    calibration = volumes[:_CALIBRATION_VOLUMES] if calibration is None else calibration
    with artifact_lock(entry), tempfile.TemporaryDirectory(prefix=".int8-", dir=entry.path) as tmp:
        staged = Path(tmp) / INT8_FILE
        quantize(entry.path / ONNX_FILE, np.ascontiguousarray(calibration, dtype=np.float32), staged)
        data = staged.read_bytes()
        p32, p8 = _scores(fp32, volumes), _scores(_ort_run(data, threads), volumes)
        auc_fp32, auc_int8 = roc_auc(p32, labels), roc_auc(p8, labels)
        passed = abs(auc_int8 - auc_fp32) <= max_auc_diff
        result = Int8Check(auc_fp32=auc_fp32, auc_int8=auc_int8, n=len(labels),
                           max_abs_diff=float(np.abs(p8 - p32).max()), passed=passed)
        entry = resolve(registry, ref)
        info: dict[str, Any] = {**asdict(result), "weights_sha256": entry.manifest.sha256,
                                "max_auc_diff": max_auc_diff, "calibration_volumes": len(calibration),
                                "checked": _now()}
        if passed:
            _atomic_write(entry.path, INT8_FILE, data)
            info.update(file=INT8_FILE, sha256=file_sha256(entry.path / INT8_FILE))
        record_backend(entry, "onnx-int8", info)
    if not passed:
        raise BackendError(
            f"{entry.manifest.ref}: INT8 refused: held-out AUC {result.auc_int8:.4f} against fp32 {result.auc_fp32:.4f} "
            f"on {result.n} studies differs by {abs(result.auc_int8 - result.auc_fp32):.4f} (> {max_auc_diff}); "
            "serve backend 'onnx' (fp32)")
    return result


def _compiled_run(module: torch.nn.Module, device: str, max_batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """CUDA graphs of ``module`` for batches of 1, 2, 4 … ``max_batch`` (captured now), bf16/fp16 autocast."""
    import torch

    from medray.models.precision import choose_precision

    precision = choose_precision("auto", device)  # bf16, fp16 where the GPU has none
    module = module.to(device, memory_format=torch.channels_last_3d)
    # One static graph per batch bucket: a batch is padded up to the next bucket, so the set of
    # shapes (and of recompilations, and of captured graphs) stays small and known.
    compiled = torch.compile(module, mode="reduce-overhead", dynamic=False, fullgraph=True)
    buckets = [1 << i for i in range(max(1, max_batch).bit_length()) if 1 << i <= max_batch]
    in_shape = (1, *module.config.in_shape)

    def forward(x: torch.Tensor) -> np.ndarray:
        n = len(x)
        size = next(b for b in buckets if b >= n)
        if size > n:
            x = torch.cat([x, x.new_zeros((size - n, *in_shape))])
        with torch.inference_mode(), precision.autocast():
            logits = compiled(x.contiguous(memory_format=torch.channels_last_3d))
        return torch.sigmoid(logits[:n].float()).cpu().numpy()  # copied out before the next replay

    def run(xs: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(xs).to(device)
        return np.concatenate([forward(x[i:i + buckets[-1]]) for i in range(0, len(x), buckets[-1])])

    for size in buckets:  # capture every bucket's graph before traffic arrives
        for _ in range(3):
            forward(torch.zeros((size, *in_shape), device=device))
    return run
