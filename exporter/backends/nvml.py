"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py).

Every pynvml function is looked up on the module at call time, so tests can monkeypatch them.
A query a GPU does not support is dropped for that GPU (logged once); a lost GPU raises DeviceLost
and is looked up again by index on the next round, so it comes back when it answers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pynvml

from thermograd.exporter.backends.base import (
    THROTTLE_REASONS,
    BackendUnavailable,
    DeviceInfo,
    DeviceLost,
    Reading,
)
from thermograd.exporter.engine import DEFAULT_GPU_TEMP_LIMIT_C

log = logging.getLogger(__name__)

# Errors that mean the whole GPU is unreachable, not just one query.
_LOST_CODES = {pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_GPU_NOT_FOUND,
               pynvml.NVML_ERROR_UNINITIALIZED, pynvml.NVML_ERROR_RESET_REQUIRED}
_UNSUPPORTED_CODES = {pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
# Bit of each reason, from the ClocksEvent constants (newer name) or the ClocksThrottle ones.
_REASON_CONSTANTS = ("GpuIdle", "ApplicationsClocksSetting", "SwPowerCap", "HwSlowdown", "SyncBoost",
                     "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown", "DisplayClockSetting")


def _reason_bits() -> dict[str, int]:
    bits = {}
    for name, const in zip(THROTTLE_REASONS, _REASON_CONSTANTS, strict=True):
        value = getattr(pynvml, f"nvmlClocksEventReason{const}", None)
        bits[name] = value if value is not None else getattr(pynvml, f"nvmlClocksThrottleReason{const}")
    return bits


def decode_reasons(mask: int) -> dict[str, bool]:
    return {name: bool(mask & bit) for name, bit in _reason_bits().items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reasons_mask(handle: Any) -> int:
    getter = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if getter is None:  # older drivers / bindings only have the throttle-reasons name
        getter = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return getter(handle)


def _memory(handle: Any) -> dict[str, float]:
    info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return {"memory_used_bytes": float(info.used), "memory_total_bytes": float(info.total)}


# op name (the `op` label of rle_exporter_errors_total) -> query returning Reading fields
_QUERIES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "utilization": lambda h: {"util_pct": float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)},
    "temperature": lambda h: {"temp_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))},
    "power": lambda h: {"power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0},  # mW -> W
    "memory": _memory,
    "sm_clock": lambda h: {"sm_clock_hz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) * 1e6},
    "memory_clock": lambda h: {"memory_clock_hz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) * 1e6},
    "fan": lambda h: {"fan_ratio": pynvml.nvmlDeviceGetFanSpeed(h) / 100.0},  # % -> ratio
    "energy": lambda h: {"energy_j": pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0},  # mJ -> J
    "throttle": lambda h: {"throttle": decode_reasons(_reasons_mask(h))},
}


class NvmlBackend:
    name = "nvml"

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML is not usable (no NVIDIA driver or GPU?): {exc}") from None
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                raise BackendUnavailable("NVML found no GPU")
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._devices = [self._describe(i, h) for i, h in enumerate(self._handles)]
        except pynvml.NVMLError as exc:
            self.close()
            raise BackendUnavailable(f"NVML could not list GPUs: {exc}") from None
        except BackendUnavailable:
            self.close()
            raise
        self._unsupported: list[set[str]] = [set() for _ in self._handles]
        self._lost = [False] * count

    @staticmethod
    def _describe(index: int, handle: Any) -> DeviceInfo:
        try:
            limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        except pynvml.NVMLError as exc:
            log.warning("GPU %d: no enforced power limit (%s); pass --rated-power", index, exc)
            limit_w = None
        try:
            max_sm_hz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6
        except pynvml.NVMLError:  # not offered (some vGPUs): the clock's deficit is then unknown
            max_sm_hz = None
        return DeviceInfo(device=str(index), uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                          model=_text(pynvml.nvmlDeviceGetName(handle)), kind="gpu", backend="nvml",
                          power_limit_w=limit_w, temp_limit_c=DEFAULT_GPU_TEMP_LIMIT_C, max_sm_clock_hz=max_sm_hz)

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def read(self, index: int, now_s: float) -> Reading:
        if self._lost[index]:
            # A GPU that fell off the bus may come back with a new handle, and the indices of the others may
            # shift meanwhile: look it up by UUID so another GPU's data never lands under this one's labels.
            try:
                self._handles[index] = pynvml.nvmlDeviceGetHandleByUUID(self._devices[index].uuid)
            except pynvml.NVMLError as exc:
                raise DeviceLost("lost", f"GPU {index} still unreachable: {exc}") from None
        handle, unsupported = self._handles[index], self._unsupported[index]
        values: dict[str, Any] = {}
        failed: list[str] = []
        for op, query in _QUERIES.items():
            if op in unsupported:
                continue
            try:
                values.update(query(handle))
            except pynvml.NVMLError as exc:
                code = getattr(exc, "value", None)
                if code in _UNSUPPORTED_CODES:
                    unsupported.add(op)
                    log.info("GPU %d does not support %s; that series is omitted for it", index, op)
                elif code in _LOST_CODES:
                    if not self._lost[index]:
                        log.warning("GPU %d lost (%s); its series are omitted until it answers", index, exc)
                    self._lost[index] = True
                    raise DeviceLost("lost", f"GPU {index}: {exc}") from None
                else:
                    failed.append(op)
        if failed and not values:  # nothing answered: treat as gone for this round
            raise DeviceLost("lost", f"GPU {index}: every query failed ({', '.join(failed)})")
        if self._lost[index]:
            log.warning("GPU %d answers again", index)
            self._lost[index] = False
        return Reading(**values, failed_ops=tuple(failed))

    def close(self) -> None:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
