"""The model registry: versioned, verified, addressable by name:version and name:latest."""

import json
import subprocess
import sys

import pytest
import torch

from medray.errors import RegistryError
from medray.imaging.normalize import InputSpec
from medray.models.registry import list_models, load_state_dict, parse_ref, record_backend, register, resolve

SPEC = InputSpec(spacing_mm=(6.0, 6.0, 6.0), shape=(16, 64, 64), window="lung")


def _weights(tmp_path, value):
    path = tmp_path / f"w{value}.pt"
    torch.save({"w": torch.full((3,), float(value))}, path)
    return path


def test_register_list_and_load_by_version_and_latest(tmp_path):
    reg = tmp_path / "registry"
    first = register(reg, "nodule", _weights(tmp_path, 1), input_spec=SPEC, metrics={"auc": 0.91})
    second = register(reg, "nodule", _weights(tmp_path, 2), input_spec=SPEC.to_dict(),
                      model_config={"width": 16})
    assert (first.manifest.ref, second.manifest.ref) == ("nodule:1", "nodule:2")
    assert [m.ref for m in list_models(reg)] == ["nodule:1", "nodule:2"]

    manifest, state = load_state_dict(reg, "nodule:latest")
    assert manifest.version == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    manifest, state = load_state_dict(reg, "nodule:1")
    assert manifest.metrics == {"auc": 0.91} and manifest.spec == SPEC
    on_disk = json.loads((first.path / "manifest.json").read_text())
    assert {"name", "version", "input_spec", "metrics", "created", "sha256"} <= set(on_disk)
    assert resolve(reg, "nodule").manifest.version == 2


def test_tampered_weights_are_refused(tmp_path):
    reg = tmp_path / "registry"
    entry = register(reg, "nodule", _weights(tmp_path, 1), input_spec=SPEC)
    data = bytearray(entry.weights_path.read_bytes())
    data[-10] ^= 0xFF
    entry.weights_path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="does not match the manifest"):
        load_state_dict(reg, "nodule:1")
    entry.weights_path.unlink()
    with pytest.raises(RegistryError, match="weights file missing"):
        resolve(reg, "nodule:1")


def test_malformed_manifest_and_unknown_refs(tmp_path):
    reg = tmp_path / "registry"
    entry = register(reg, "nodule", _weights(tmp_path, 1), input_spec=SPEC)
    with pytest.raises(RegistryError, match="no version 7"):
        resolve(reg, "nodule:7")
    with pytest.raises(RegistryError, match="no model named"):
        resolve(reg, "liver:1")
    (entry.path / "manifest.json").write_text("{not json")
    with pytest.raises(RegistryError, match="malformed"):
        resolve(reg, "nodule:1")


@pytest.mark.parametrize("ref", ["Nodule:1", "nodule:0", "nodule:x", "../etc:1", ""])
def test_bad_refs(ref):
    with pytest.raises(RegistryError):
        parse_ref(ref)


def test_cli_lists_models(tmp_path):
    reg = tmp_path / "registry"
    entry = register(reg, "nodule", _weights(tmp_path, 1), input_spec=SPEC, metrics={"auc": 0.93})
    register(reg, "ich", _weights(tmp_path, 2), input_spec=SPEC, finding="intracranial-hemorrhage")
    record_backend(entry, "onnx", {"file": "model.onnx"})
    record_backend(resolve(reg, "nodule:1"), "onnx-int8", {"passed": False, "auc_int8": 0.61, "auc_fp32": 0.93})
    out = subprocess.run([sys.executable, "-m", "medray", "models", "--registry", str(reg)],
                         check=True, capture_output=True, text=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"nodule:1", "ich:1"}, out
    assert "lung-nodule" in rows["nodule:1"] and "auc=0.930" in rows["nodule:1"]
    assert "onnx, onnx-int8 refused (AUC 0.610 vs fp32 0.930)" in rows["nodule:1"]
    assert "intracranial-hemorrhage" in rows["ich:1"] and rows["ich:1"].rstrip().endswith("-")
    empty = subprocess.run([sys.executable, "-m", "medray", "models", "--registry", str(tmp_path / "none")],
                           check=True, capture_output=True, text=True).stdout
    assert empty.startswith("no models in ")
