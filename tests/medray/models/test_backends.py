"""medray.models.backends: every backend gives eager fp32's finding on a fixed set of studies, the ONNX
export is cached once per version, the INT8 accuracy gate, and which backend ``auto`` picks."""

import json
import threading

import numpy as np
import pytest
import torch

from medray.errors import BackendError, ConfigError
from medray.models import DEFAULT_INPUT_SPEC, NoduleNetConfig, build_model
from medray.models import backends as B
from medray.models.evaluate import roc_auc
from medray.models.registry import list_models, register, resolve

THRESHOLD = 0.5
# Probability tolerances against eager fp32, per backend (docs/diagnosis.md, "Inference backends").
TOLERANCE = {"eager": 0.0, "onnx": 1e-4, "onnx-int8": 0.02, "compile": 0.02, "tensorrt": 0.02}
CUDA = torch.cuda.is_available()


def studies(n, seed):
    """``n`` normalised volumes (N, 1, 16, 64, 64), the odd ones with a bright nodule-like blob."""
    rng = np.random.default_rng(seed)
    x = (0.2 + 0.05 * rng.standard_normal((n, 1, *DEFAULT_INPUT_SPEC.shape))).astype(np.float32)
    labels = np.arange(n) % 2
    zz, yy, xx = np.mgrid[tuple(slice(0, s) for s in DEFAULT_INPUT_SPEC.shape)]
    for i in np.flatnonzero(labels):
        c, r = rng.uniform((4, 16, 16), (12, 48, 48)), rng.uniform(1.5, 3.0)
        d2 = (zz - c[0]) ** 2 + ((yy - c[1]) / 2) ** 2 + ((xx - c[2]) / 2) ** 2
        x[i, 0] += 0.7 * np.exp(-d2 / (2 * r * r))
    return np.clip(x, 0, 1).astype(np.float32), labels


def register_model(registry, seed):
    """A seeded NoduleNet whose head is rescaled so that its probabilities spread over about 0.1-0.9 on
    the blob studies (a seeded net already ranks them; unscaled, every probability is near 0.54).
    If the seed's net ranked them the wrong way round, the scale is negative: it still separates."""
    torch.manual_seed(seed)
    model = build_model(NoduleNetConfig()).eval()
    x, labels = studies(16, seed=100 + seed)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))
        negative, positive = float(logits[labels == 0].mean()), float(logits[labels == 1].mean())
        # The class means go to logits -2 and +2 (probabilities 0.12 and 0.88).
        scale, mid = 4.0 / (positive - negative), (positive + negative) / 2
        model.head.weight.mul_(scale)
        model.head.bias.sub_(mid).mul_(scale)
    weights = registry.parent / f"weights-{seed}.pt"
    torch.save(model.state_dict(), weights)
    return register(registry, "nodule", weights, input_spec=DEFAULT_INPUT_SPEC,
                    model_config=NoduleNetConfig().to_dict()).manifest.ref


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    reg = root / "registry"
    return reg, register_model(reg, seed=0), register_model(reg, seed=1)


@pytest.fixture(scope="module")
def fixed():
    return studies(24, seed=7)


@pytest.fixture(scope="module")
def held_out():
    return studies(48, seed=11)


@pytest.fixture(scope="module")
def eager(registry, fixed):
    reg, ref, _ = registry
    return B.load_backend(reg, ref, "eager", device="cpu")(fixed[0])


def assert_same_finding(probabilities, reference, tolerance):
    assert np.abs(probabilities - reference).max() <= tolerance
    # The thresholded finding is the same wherever eager's probability is farther than the tolerance
    # from the threshold; the fixed set is built so that this is every study.
    clear = np.abs(reference - THRESHOLD) > tolerance
    assert clear.all()
    assert np.array_equal(probabilities[clear] >= THRESHOLD, reference[clear] >= THRESHOLD)


def test_auto_picks_onnx_on_cpu_and_compile_on_cuda():
    assert B.choose_backend("auto", "cpu") == "onnx"
    assert B.choose_backend("auto", "cuda") == "compile"
    assert B.choose_backend("eager", "cuda") == "eager" and B.choose_backend("onnx-int8", "cpu") == "onnx-int8"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        B.choose_backend("compile", "cpu")
    with pytest.raises(ConfigError, match="unknown inference backend"):
        B.choose_backend("openvino", "cpu")


def test_the_fixed_studies_separate_and_eager_is_the_torch_module(registry, fixed, eager):
    reg, ref, _ = registry
    assert roc_auc(eager, fixed[1]) == 1.0 and eager.min() < 0.3 and eager.max() > 0.7
    predictor = B.load_backend(reg, ref, "eager", device="cpu")
    with torch.inference_mode():
        expected = torch.sigmoid(predictor.module(torch.from_numpy(fixed[0]))).numpy()
    np.testing.assert_allclose(predictor(fixed[0]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="expects a batch"):
        predictor(fixed[0][:, 0])


def test_onnx_is_exported_once_per_version_even_by_concurrent_replicas(registry, fixed, eager, monkeypatch):
    reg, ref, _ = registry
    exports = []
    real = B._export_onnx
    monkeypatch.setattr(B, "_export_onnx", lambda *a: (exports.append(1), real(*a)))
    predictors = []
    threads = [threading.Thread(target=lambda: predictors.append(B.load_backend(reg, ref, "auto", device="cpu",
                                                                                threads=1)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(exports) == 1 and [p.backend for p in predictors] == ["onnx", "onnx"]
    entry = resolve(reg, ref)
    onnx_file = entry.path / B.ONNX_FILE
    mtime = onnx_file.stat().st_mtime_ns
    again = B.load_backend(reg, ref, "onnx", device="cpu", threads=2)
    assert len(exports) == 1 and onnx_file.stat().st_mtime_ns == mtime
    assert_same_finding(again(fixed[0]), eager, TOLERANCE["onnx"])
    assert_same_finding(again(fixed[0][:1]), eager[:1], TOLERANCE["onnx"])  # dynamic batch axis
    recorded = entry.manifest.backends["onnx"]
    assert recorded["sha256"] and recorded["weights_sha256"] == entry.manifest.sha256
    assert recorded["max_abs_diff_vs_eager"] <= B.EXPORT_TOLERANCE
    # A damaged artifact is noticed by its sha256 and exported again.
    onnx_file.write_bytes(b"not a model")
    assert_same_finding(B.load_backend(reg, ref, "onnx", device="cpu")(fixed[0]), eager, TOLERANCE["onnx"])
    assert len(exports) == 2


def test_int8_is_refused_until_a_passed_check_and_then_gives_the_same_finding(registry, fixed, eager, held_out):
    reg, ref, _ = registry
    with pytest.raises(BackendError, match="no passed INT8 accuracy check: run medray.models.backends.check_int8"):
        B.load_backend(reg, ref, "onnx-int8", device="cpu")
    result = B.check_int8(reg, ref, *held_out, calibration=studies(16, seed=5)[0], threads=2)
    assert result.passed and abs(result.auc_int8 - result.auc_fp32) <= B.INT8_MAX_AUC_DIFF
    assert result.auc_fp32 > 0.9 and result.n == 48
    recorded = resolve(reg, ref).manifest.backends["onnx-int8"]
    assert recorded["passed"] and recorded["auc_int8"] == result.auc_int8 and recorded["file"] == B.INT8_FILE
    int8 = B.load_backend(reg, ref, "onnx-int8", device="cpu", threads=1)
    assert int8.backend == "onnx-int8"
    assert_same_finding(int8(fixed[0]), eager, TOLERANCE["onnx-int8"])


def broken_quantizer(fp32, calibration, out):
    """A "quantised" model that lost what the network learned: sigmoid(-mean(x)) scores a bright blob low."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [4], [1, 2, 3, 4])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0), helper.make_node("Neg", ["m"], ["n"]),
         helper.make_node("Sigmoid", ["n"], ["probability"])],
        "broken", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 64, 64])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])], initializer=[axes])
    # IR version 9: what every ONNX Runtime of our range reads (a newer onnx writes a newer one by default).
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(out))


def test_int8_whose_auc_differs_is_refused_naming_both_aucs(registry, held_out):
    reg, _, ref = registry
    with pytest.raises(BackendError, match=r"INT8 refused: held-out AUC 0\.\d{4} against fp32 \d\.\d{4} on 48 studies"):
        B.check_int8(reg, ref, *held_out, quantize=broken_quantizer)
    recorded = resolve(reg, ref).manifest.backends["onnx-int8"]
    assert recorded["passed"] is False and "file" not in recorded
    assert recorded["auc_fp32"] - recorded["auc_int8"] > B.INT8_MAX_AUC_DIFF
    with pytest.raises(BackendError, match="no passed INT8 accuracy check"):
        B.load_backend(reg, ref, "onnx-int8", device="cpu")
    with pytest.raises(ConfigError, match="both classes"):
        B.check_int8(reg, ref, held_out[0][:4], np.zeros(4))


def test_manifests_without_backends_still_load(registry):
    reg, ref, _ = registry
    manifest = resolve(reg, ref).path / "manifest.json"
    data = json.loads(manifest.read_text())
    old = {k: v for k, v in data.items() if k != "backends"}
    manifest.write_text(json.dumps(old))
    try:
        assert resolve(reg, ref).manifest.backends == {}
        assert [m.ref for m in list_models(reg)] == ["nodule:1", "nodule:2"]
    finally:
        manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("backend", ["compile", "tensorrt"])
def test_gpu_backends_give_the_same_finding(registry, fixed, eager, backend):
    if not CUDA:
        pytest.skip(f"backend {backend!r} needs a CUDA GPU; this machine has none")
    if backend == "tensorrt":
        pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'medray[tensorrt]')")
    reg, ref, _ = registry
    predictor = B.load_backend(reg, ref, backend, device="cuda", max_batch=8)
    assert predictor.backend == backend
    assert_same_finding(predictor(fixed[0]), eager, TOLERANCE[backend])  # 24 studies: 8 + 8 + 8
    assert_same_finding(predictor(fixed[0][:3]), eager[:3], TOLERANCE[backend])  # padded to a batch of 4


def test_tensorrt_without_tensorrt_is_a_clear_error(registry, monkeypatch):
    if not CUDA:
        pytest.skip("the tensorrt backend needs a CUDA GPU; this machine has none")
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    reg, ref, _ = registry
    with pytest.raises(BackendError, match=r"pip install 'medray\[tensorrt\]'"):
        B.load_backend(reg, ref, "tensorrt", device="cuda")
