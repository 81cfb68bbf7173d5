"""GPU readings through NVML (the ``pynvml`` module of ``nvidia-ml-py``), imported lazily.

On a machine without an NVIDIA driver every function answers "no GPU" instead of failing. Fields a
GPU or driver does not support (ECC on consumer boards, XID events inside some containers) read 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "THROTTLE_REASONS",
    "GpuReading",
    "NvmlReader",
    "physical_gpu_count",
    "read_gpus",
    "health_summary",
    "limit_gpu_memory",
]

# Clock throttle reasons by medray's name -> NVML's bit mask name ("gpu_idle" is benign, the rest
# mean the GPU runs slower than it could).
THROTTLE_REASONS = {
    "gpu_idle": "nvmlClocksThrottleReasonGpuIdle",
    "applications_clocks": "nvmlClocksThrottleReasonApplicationsClocksSetting",
    "sw_power_cap": "nvmlClocksThrottleReasonSwPowerCap",
    "hw_slowdown": "nvmlClocksThrottleReasonHwSlowdown",
    "sync_boost": "nvmlClocksThrottleReasonSyncBoost",
    "sw_thermal_slowdown": "nvmlClocksThrottleReasonSwThermalSlowdown",
    "hw_thermal_slowdown": "nvmlClocksThrottleReasonHwThermalSlowdown",
    "hw_power_brake_slowdown": "nvmlClocksThrottleReasonHwPowerBrakeSlowdown",
}


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment.

    ``ecc_uncorrected``: volatile uncorrected ECC errors since the driver loaded; ``xid_errors``:
    critical XID events seen by the :class:`NvmlReader` that took the reading; ``throttle_reasons``:
    active clock throttle reasons (names of :data:`THROTTLE_REASONS`).
    """

    index: int
    name: str
    temperature_c: float
    power_w: float
    power_limit_w: float
    memory_used_mib: float
    memory_total_mib: float
    utilization_pct: float
    ecc_uncorrected: int = 0
    xid_errors: int = 0
    throttle_reasons: tuple[str, ...] = ()

    @property
    def memory_fraction(self) -> float:
        """Share of the GPU's memory in use (0 when the total is unknown)."""
        return self.memory_used_mib / self.memory_total_mib if self.memory_total_mib else 0.0

    @property
    def power_fraction(self) -> float:
        """Power draw as a share of the enforced limit (0 when the limit is unknown)."""
        return self.power_w / self.power_limit_w if self.power_limit_w else 0.0

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


def _optional(default: Any, call: Any, *args: Any) -> Any:
    """``call(*args)``; NVML answers NotSupported / NoPermission for features a board lacks, and
    those read as ``default``."""
    try:
        return call(*args)
    except Exception:
        return default


class NvmlReader:
    """Keeps NVML open between readings so that XID events are counted across them.

    Without a driver, :meth:`read` returns an empty list. Call :meth:`close` when done.
    """

    def __init__(self) -> None:
        self._nvml = _nvml()
        self._events: Any = None
        self._xids: dict[int, int] = {}
        if self._nvml is None:
            return
        nvml = self._nvml
        try:
            self._events = nvml.nvmlEventSetCreate()
            for i in range(nvml.nvmlDeviceGetCount()):
                _optional(None, nvml.nvmlDeviceRegisterEvents, nvml.nvmlDeviceGetHandleByIndex(i),
                          nvml.nvmlEventTypeXidCriticalError, self._events)
        except Exception:  # event sets are refused in some containers: no XID counts then
            self._events = None

    def _drain_xid_events(self) -> None:
        nvml = self._nvml
        if self._events is None:
            return
        while True:
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except Exception:  # NVMLError_Timeout: no more events pending
                return
            index = _optional(-1, nvml.nvmlDeviceGetIndex, event.device)
            self._xids[index] = self._xids.get(index, 0) + 1

    def read(self) -> list[GpuReading]:
        """Read every GPU on this machine; an empty list when there is none."""
        nvml = self._nvml
        if nvml is None:
            return []
        self._drain_xid_events()
        readings = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            mask = _optional(0, nvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
            utilization = _optional(None, nvml.nvmlDeviceGetUtilizationRates, h)
            readings.append(
                GpuReading(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    temperature_c=float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                    power_w=_optional(0, nvml.nvmlDeviceGetPowerUsage, h) / 1000.0,
                    power_limit_w=_optional(0, nvml.nvmlDeviceGetEnforcedPowerLimit, h) / 1000.0,
                    memory_used_mib=mem.used / 2**20,
                    memory_total_mib=mem.total / 2**20,
                    utilization_pct=float(utilization.gpu) if utilization is not None else 0.0,
                    ecc_uncorrected=int(_optional(0, nvml.nvmlDeviceGetTotalEccErrors, h,
                                                  nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                                  nvml.NVML_VOLATILE_ECC)),
                    xid_errors=self._xids.get(i, 0),
                    throttle_reasons=tuple(
                        reason for reason, bit in THROTTLE_REASONS.items()
                        if mask & getattr(nvml, bit, 0)
                    ),
                )
            )
        return readings

    def close(self) -> None:
        """Release the event set and NVML."""
        if self._nvml is None:
            return
        if self._events is not None:
            _optional(None, self._nvml.nvmlEventSetFree, self._events)
        _optional(None, self._nvml.nvmlShutdown)
        self._nvml = None


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
    """Read every GPU on this machine once; an empty list when there is none."""
    reader = NvmlReader()
    try:
        return reader.read()
    finally:
        reader.close()


def health_summary(readings: list[GpuReading]) -> str:
    """One line for a status table: "no GPU", or per GPU its temperature, power, memory and trouble."""
    if not readings:
        return "no GPU"
    parts = []
    for r in readings:
        line = (f"{r.name} {r.temperature_c:.0f}C {r.power_w:.0f}/{r.power_limit_w:.0f}W "
                f"{r.memory_used_mib:.0f}/{r.memory_total_mib:.0f}MiB {r.utilization_pct:.0f}%")
        slow = [t for t in r.throttle_reasons if t != "gpu_idle"]
        if slow:
            line += " throttled:" + ",".join(slow)
        if r.ecc_uncorrected:
            line += f" ecc:{r.ecc_uncorrected}"
        if r.xid_errors:
            line += f" xid:{r.xid_errors}"
        parts.append(line)
    return "; ".join(parts)


def limit_gpu_memory(gpu_memory_gb: float = 0.0, *, share: float = 1.0, device: int = 0) -> float | None:
    """Cap this process's CUDA caching allocator to its budget; the fraction set, or None without CUDA.

    Ray treats fractional GPUs as bookkeeping only: two replicas with ``num_gpus=0.5`` share one
    device's memory unchecked. A replica calls this once at start with its profile's
    ``gpu_memory_gb`` (or, when that is 0, its GPU ``share``); allocations past the budget then raise
    ``torch.cuda.OutOfMemoryError`` in that replica instead of starving its neighbours.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    total_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
    fraction = gpu_memory_gb / total_gb if gpu_memory_gb else share
    fraction = max(0.0, min(1.0, fraction))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
