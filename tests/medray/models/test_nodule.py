"""medray.models: NoduleNet shapes, gradients, size and config handling."""

import pytest
import torch

from medray.errors import ConfigError
from medray.imaging.normalize import InputSpec
from medray.models import DEFAULT_INPUT_SPEC, NoduleNet, NoduleNetConfig, build_model


def test_forward_gives_one_logit_per_volume():
    torch.manual_seed(0)
    model = build_model().eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 1, *DEFAULT_INPUT_SPEC.shape))
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    assert model.config.in_shape == DEFAULT_INPUT_SPEC.shape


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model({"width": 8, "dropout": 0.0, "in_shape": [16, 64, 64]}).train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.rand(2, 1, 16, 64, 64)), torch.tensor([0.0, 1.0])
    )
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_parameter_count_is_small():
    n = sum(p.numel() for p in build_model().parameters())
    assert 100_000 < n < 1_000_000, n


def test_channels_last_and_autocast_work():
    model = build_model().eval().to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 1, 16, 64, 64).to(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (2,)


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match="normalize_volume"):
        build_model()(torch.rand(1, 1, 20, 64, 64))


def test_config_round_trip_and_validation():
    config = NoduleNetConfig(width=8, in_shape=(8, 32, 32))
    model = build_model(config.to_dict())
    assert isinstance(model, NoduleNet) and model.config == config
    assert model(torch.rand(1, 1, 8, 32, 32)).shape == (1,)
    with pytest.raises(ConfigError, match="unknown"):
        build_model({"widht": 8})
    with pytest.raises(ConfigError, match="width"):
        NoduleNetConfig(width=12)
    assert DEFAULT_INPUT_SPEC == InputSpec()
