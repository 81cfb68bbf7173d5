"""Mixed-precision policy: which autocast dtype a device gets, and whether a GradScaler goes with it.

``auto`` picks, in order: bf16 on a CUDA GPU that has it (Ampere and later), fp16 with a
GradScaler on older CUDA GPUs (fp16's narrow exponent range needs loss scaling), fp32 on CPU
(CPU autocast to bf16 is slower than fp32 on most CPUs). Training and serving both ask here, so a
model is trained and served in the precision its device suits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "Precision", "resolve_precision", "choose_precision"]

# What users may ask for; "off" is an alias of "fp32".
PRECISIONS = ("auto", "bf16", "fp16", "fp32", "off")


@dataclass(frozen=True)
class Precision:
    """A resolved precision (``bf16``, ``fp16`` or ``fp32``) on a device type (``cuda``, ``cpu``…)."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32 (no autocast)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> AbstractContextManager[object]:
        """Context manager for the forward pass: ``torch.autocast`` or nothing for fp32."""
        import torch

        dtype = self.dtype
        return nullcontext() if dtype is None else torch.autocast(self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is enabled only for fp16 (bf16 and fp32 have fp32's exponent range)."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(requested: str, device_type: str, *, bf16_supported: bool) -> str:
    """The policy as a pure function: ``bf16``, ``fp16`` or ``fp32`` for a request on a device.

    Raises ConfigError for unknown requests and for fp16/bf16 where the device cannot do them.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested in ("fp32", "off"):
        return "fp32"
    if device_type != "cuda":
        if requested == "fp16":
            raise ConfigError("fp16 autocast needs a CUDA GPU: use bf16 or fp32 (off) on CPU")
        return "bf16" if requested == "bf16" else "fp32"
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    if requested == "bf16" and not bf16_supported:
        raise ConfigError("this GPU has no bf16 support (it needs Ampere or later): use fp16 or auto")
    return requested


def choose_precision(requested: str = "auto", device: torch.device | str | None = None) -> Precision:
    """Resolve ``requested`` for ``device`` (default: CUDA when available, else CPU)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    bf16 = device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Precision(resolve_precision(requested, device_type, bf16_supported=bf16), device_type)
