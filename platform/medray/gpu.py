"""GPU readings through NVML (the ``pynvml`` module of ``nvidia-ml-py``), imported lazily.

On a machine without an NVIDIA driver every function answers "no GPU" instead of failing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GpuReading", "physical_gpu_count", "read_gpus", "health_summary"]


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment."""

    index: int
    name: str
    temperature_c: float
    power_w: float
    power_limit_w: float
    memory_used_mib: float
    memory_total_mib: float
    utilization_pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when there is no driver or no library."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when no driver: both mean "no GPU here"
        return None
    return pynvml


def physical_gpu_count() -> int:
    """Number of NVIDIA GPUs NVML sees on this machine (0 without a driver)."""
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    finally:
        nvml.nvmlShutdown()


def read_gpus() -> list[GpuReading]:
    """Read every GPU on this machine; an empty list when there is none."""
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        readings = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            readings.append(
                GpuReading(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    temperature_c=float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                    power_w=nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
                    power_limit_w=nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                    memory_used_mib=mem.used / 2**20,
                    memory_total_mib=mem.total / 2**20,
                    utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                )
            )
        return readings
    finally:
        nvml.nvmlShutdown()


def health_summary(readings: list[GpuReading]) -> str:
    """One line for a status table: "no GPU", or per GPU its temperature, power and memory."""
    if not readings:
        return "no GPU"
    return "; ".join(
        f"{r.name} {r.temperature_c:.0f}C {r.power_w:.0f}/{r.power_limit_w:.0f}W "
        f"{r.memory_used_mib:.0f}/{r.memory_total_mib:.0f}MiB {r.utilization_pct:.0f}%"
        for r in readings
    )
