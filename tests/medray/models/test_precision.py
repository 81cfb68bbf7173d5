"""medray.models.precision: the autocast policy, and that its autocast and GradScaler work on this machine."""

import pytest
import torch

from medray.errors import ConfigError
from medray.models.precision import PRECISIONS, choose_precision, resolve_precision


@pytest.mark.parametrize(
    ("requested", "device", "bf16", "expected"),
    [
        ("auto", "cuda", True, "bf16"),  # H100, A100, L4
        ("auto", "cuda", False, "fp16"),  # T4, V100
        ("auto", "cpu", False, "fp32"),
        ("bf16", "cuda", True, "bf16"),
        ("fp16", "cuda", True, "fp16"),
        ("bf16", "cpu", False, "bf16"),  # CPU autocast supports bf16 when asked for
        ("off", "cuda", True, "fp32"),
        ("fp32", "cpu", False, "fp32"),
    ],
)
def test_policy(requested, device, bf16, expected):
    assert resolve_precision(requested, device, bf16_supported=bf16) == expected


@pytest.mark.parametrize(
    ("requested", "device", "bf16", "match"),
    [("fp16", "cpu", False, "CUDA"), ("bf16", "cuda", False, "Ampere"), ("fp8", "cuda", True, "unknown")],
)
def test_impossible_requests_are_refused_with_the_fix(requested, device, bf16, match):
    with pytest.raises(ConfigError, match=match):
        resolve_precision(requested, device, bf16_supported=bf16)


def test_cpu_defaults_to_fp32_without_autocast_or_scaling():
    precision = choose_precision("auto", "cpu")
    assert (precision.name, precision.dtype) == ("fp32", None)
    assert not precision.grad_scaler().is_enabled()
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_autocast_on_cpu_computes_in_bf16():
    precision = choose_precision("bf16", "cpu")
    assert precision.dtype == torch.bfloat16 and not precision.grad_scaler().is_enabled()
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert "off" in PRECISIONS and "auto" in PRECISIONS
