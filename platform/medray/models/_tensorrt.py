"""The ``tensorrt`` backend of :mod:`medray.models.backends`: an fp16 TensorRT engine built from the
version's ``model.onnx`` (TensorRT 10 API), cached per GPU architecture and TensorRT version.

Optional: imported only when the backend is asked for, and only where ``tensorrt`` is installed
(``pip install 'medray[tensorrt]'``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medray.errors import BackendError
from medray.models.registry import RegisteredModel, artifact_lock, record_backend, resolve

__all__ = ["tensorrt_run"]


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendError("backend 'tensorrt' needs NVIDIA TensorRT on this node: pip install 'medray[tensorrt]', "
                           "or serve backend 'compile' (or 'auto')") from None
    return tensorrt


def _build(trt: Any, onnx: bytes, in_shape: tuple[int, ...], max_batch: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse the model's ONNX export ({errors}): serve backend 'compile'")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    input_name = network.get_input(0).name
    profile.set_shape(input_name, (1, *in_shape), (max(1, max_batch // 2), *in_shape), (max_batch, *in_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError("TensorRT could not build an engine for this model (see its log): serve backend 'compile'")
    return bytes(plan)


def tensorrt_run(entry: RegisteredModel, onnx_path: Path, device: str, max_batch: int,
                 output: str) -> Callable[[np.ndarray], np.ndarray]:
    """A runner of the version's TensorRT engine on ``device``; the engine is built (and recorded in the
    manifest's ``backends["tensorrt"]``) on first use on this GPU architecture."""
    import torch

    trt = _import_tensorrt()
    major, minor = torch.cuda.get_device_capability(device)
    name = f"model.sm{major}{minor}.trt{trt.__version__}.plan"
    in_shape = (1, *entry.manifest.spec.shape)
    with artifact_lock(entry):
        entry = resolve(entry.path.parent.parent, entry.manifest.ref)
        engines = dict(entry.manifest.backends.get("tensorrt", {}).get("engines", {}))
        known = engines.get(name, {})
        path = entry.path / name
        plan = path.read_bytes() if path.is_file() else b""
        if (known.get("weights_sha256") != entry.manifest.sha256 or known.get("max_batch") != max_batch
                or hashlib.sha256(plan).hexdigest() != known.get("sha256")):
            plan = _build(trt, onnx_path.read_bytes(), in_shape, max_batch)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=entry.path)
            with os.fdopen(fd, "wb") as f:
                f.write(plan)
            os.replace(tmp, path)
            engines[name] = {"sha256": hashlib.sha256(plan).hexdigest(), "weights_sha256": entry.manifest.sha256,
                             "max_batch": max_batch, "precision": "fp16",
                             "built": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            record_backend(entry, "tensorrt", {"engines": engines})
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    input_name = engine.get_tensor_name(0)

    def run(xs: np.ndarray) -> np.ndarray:
        parts = []
        for i in range(0, len(xs), max_batch):
            x = torch.from_numpy(xs[i:i + max_batch]).to(device)
            y = torch.empty(len(x), dtype=torch.float32, device=device)
            context.set_input_shape(input_name, tuple(x.shape))
            context.set_tensor_address(input_name, x.data_ptr())
            context.set_tensor_address(output, y.data_ptr())
            if not context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream):
                raise BackendError("TensorRT failed to run a batch: serve backend 'compile'")
            parts.append(y.cpu().numpy())  # .cpu() waits for the stream
        return np.concatenate(parts)

    return run
