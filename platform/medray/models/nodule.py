"""NoduleNet: a small 3D CNN answering "is there a lung nodule in this CT volume?".

Input is the output of :func:`medray.imaging.normalize_volume` with :data:`DEFAULT_INPUT_SPEC`
(lung window, 6 mm voxels, 16 x 64 x 64), batched as ``(N, 1, D, H, W)`` floats in [0, 1];
output is one logit per volume, ``(N,)`` (apply a sigmoid for a probability).

Shapes below are for the default config (width 16, input 16 x 64 x 64)::

    (N, 1, 16, 64, 64)
    stem     conv s(1,2,2) -> (N, 16, 16, 32, 32)   in-plane first: voxels are already coarse in z
    stage 1  conv s2       -> (N, 32,  8, 16, 16)
    stage 2  conv s2       -> (N, 64,  4,  8,  8)
    stage 3  conv s2       -> (N, 128, 2,  4,  4)
    pool     max ++ mean   -> (N, 256)             max keeps a small nodule's response
    head     linear        -> (N,)

Every conv is 3x3x3 + GroupNorm + ReLU. GroupNorm rather than BatchNorm: it behaves the same for
a serving batch of 1 and for small per-GPU training batches. Nothing here depends on memory
layout or dtype, so ``channels_last_3d`` and autocast work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from medray.errors import ConfigError
from medray.imaging import InputSpec

__all__ = ["DEFAULT_INPUT_SPEC", "NoduleNetConfig", "NoduleNet", "build_model"]

DEFAULT_INPUT_SPEC = InputSpec()


@dataclass(frozen=True)
class NoduleNetConfig:
    """Hyper-parameters of :class:`NoduleNet`; stored as ``model_config`` in the registry manifest."""

    width: int = 16  # channels of the stem; doubled by each stage
    dropout: float = 0.1  # before the linear head
    in_shape: tuple[int, int, int] = (16, 64, 64)  # (D, H, W): must equal the InputSpec's shape

    def __post_init__(self) -> None:
        # Lists come back from JSON manifests; tuples keep the config hashable.
        object.__setattr__(self, "in_shape", tuple(self.in_shape))
        if not (isinstance(self.width, int) and self.width >= 8 and self.width % 8 == 0):
            raise ConfigError(f"NoduleNet width must be a positive multiple of 8, got {self.width!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"NoduleNet dropout must be in [0, 1), got {self.dropout!r}")
        if len(self.in_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in self.in_shape):
            raise ConfigError(f"NoduleNet in_shape must be 3 positive integers (D, H, W), got {self.in_shape!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, read back by :func:`build_model`."""
        d = asdict(self)
        d["in_shape"] = list(self.in_shape)
        return d


def _conv(c_in: int, c_out: int, stride: int | tuple[int, int, int]) -> nn.Sequential:
    """3x3x3 conv (no bias: the norm that follows has one) + GroupNorm + ReLU."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(num_groups=8, num_channels=c_out),
        nn.ReLU(inplace=True),
    )


class NoduleNet(nn.Module):
    """``(N, 1, D, H, W)`` float in [0, 1] -> nodule logits ``(N,)``."""

    def __init__(self, config: NoduleNetConfig = NoduleNetConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            _conv(1, w, stride=(1, 2, 2)),  # (N, w, D, H/2, W/2)
            _conv(w, 2 * w, stride=2),  # (N, 2w, D/2, H/4, W/4)
            _conv(2 * w, 4 * w, stride=2),  # (N, 4w, D/4, H/8, W/8)
            _conv(4 * w, 8 * w, stride=2),  # (N, 8w, D/8, H/16, W/16)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * 8 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (1, *self.config.in_shape):
            # Refused rather than run: the net is fully convolutional and would silently score a
            # volume that was not normalised with the InputSpec it was trained on.
            raise ValueError(
                f"NoduleNet expects input (N, 1, {', '.join(map(str, self.config.in_shape))}), "
                f"got {tuple(x.shape)}: normalise with medray.imaging.normalize_volume and the model's InputSpec"
            )
        f = self.features(x)  # (N, 8w, d, h, w)
        pooled = torch.cat([f.amax(dim=(2, 3, 4)), f.mean(dim=(2, 3, 4))], dim=1)  # (N, 16w)
        return self.head(self.dropout(pooled)).squeeze(1)  # (N,)


def build_model(config: NoduleNetConfig | Mapping[str, Any] | None = None) -> NoduleNet:
    """A freshly initialised NoduleNet from a config, a config dict (e.g. a manifest's), or defaults."""
    if config is None:
        config = NoduleNetConfig()
    elif isinstance(config, Mapping):
        allowed = {f.name for f in fields(NoduleNetConfig)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigError(f"unknown NoduleNet config keys {unknown}; allowed keys are {sorted(allowed)}")
        config = NoduleNetConfig(**config)
    return NoduleNet(config)
