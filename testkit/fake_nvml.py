"""A fake NVML for machines without a GPU: replaces pynvml's functions with ones backed by FakeGpu objects.

Used by the unit tests (through pytest's monkeypatch.setattr) and by the benchmark. Errors are the
real `pynvml.NVMLError(code)` exceptions, so the backend's error handling is exercised as on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA Fake GPU"
    temp_c: int = 60
    power_mw: int = 150_000
    power_limit_mw: int = 300_000
    util_pct: int = 80
    memory_used: int = 8 * 1024**3
    memory_total: int = 24 * 1024**3
    sm_mhz: int = 1800
    max_sm_mhz: int = 1980
    memory_mhz: int = 9500
    fan_pct: int = 55
    energy_mj: int = 123_456_789
    reasons_mask: int = 0
    unsupported: set[str] = field(default_factory=set)  # pynvml function names raising NOT_SUPPORTED
    failing: dict[str, int] = field(default_factory=dict)  # pynvml function name -> NVML error code
    lost: bool = False  # every call (and the handle lookup) raises GPU_IS_LOST


class FakeNvml:
    """Holds the fake GPUs; `install(setattr)` swaps pynvml's functions for fakes."""

    def __init__(self, gpus: list[FakeGpu], event_reasons_api: bool = True) -> None:
        self.gpus = gpus
        self.event_reasons_api = event_reasons_api  # False: only the older ClocksThrottleReasons exists
        self.calls = 0

    def _device(self, name: str, getter: Callable[..., Any]) -> Callable[..., Any]:
        def call(handle: FakeGpu, *args: Any) -> Any:
            self.calls += 1
            if handle.lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            if name in handle.unsupported:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if name in handle.failing:
                raise pynvml.NVMLError(handle.failing[name])
            return getter(handle, *args)

        return call

    def _handle_by_index(self, index: int) -> FakeGpu:
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return self.gpus[index]

    def _handle_by_uuid(self, uuid: str | bytes) -> FakeGpu:
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == wanted:
                if gpu.lost:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
                return gpu
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def functions(self) -> dict[str, Callable[..., Any]]:
        clocks = {pynvml.NVML_CLOCK_SM: "sm_mhz", pynvml.NVML_CLOCK_MEM: "memory_mhz"}
        device_getters: dict[str, Callable[..., Any]] = {
            "nvmlDeviceGetUUID": lambda g: g.uuid,
            "nvmlDeviceGetName": lambda g: g.name,
            "nvmlDeviceGetEnforcedPowerLimit": lambda g: g.power_limit_mw,
            "nvmlDeviceGetTemperature": lambda g, sensor: g.temp_c,
            "nvmlDeviceGetPowerUsage": lambda g: g.power_mw,
            "nvmlDeviceGetUtilizationRates": lambda g: SimpleNamespace(gpu=g.util_pct, memory=0),
            "nvmlDeviceGetMemoryInfo": lambda g: SimpleNamespace(used=g.memory_used, total=g.memory_total,
                                                                 free=g.memory_total - g.memory_used),
            "nvmlDeviceGetClockInfo": lambda g, clock: getattr(g, clocks[clock]),
            "nvmlDeviceGetMaxClockInfo": lambda g, clock: (g.max_sm_mhz if clock == pynvml.NVML_CLOCK_SM
                                                           else g.memory_mhz),
            "nvmlDeviceGetFanSpeed": lambda g: g.fan_pct,
            "nvmlDeviceGetTotalEnergyConsumption": lambda g: g.energy_mj,
            "nvmlDeviceGetCurrentClocksThrottleReasons": lambda g: g.reasons_mask,
        }
        if self.event_reasons_api:
            device_getters["nvmlDeviceGetCurrentClocksEventReasons"] = lambda g: g.reasons_mask
        funcs = {name: self._device(name, getter) for name, getter in device_getters.items()}
        funcs.update(nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                     nvmlDeviceGetCount=lambda: len(self.gpus), nvmlDeviceGetHandleByIndex=self._handle_by_index,
                     nvmlDeviceGetHandleByUUID=self._handle_by_uuid)
        return funcs

    def install(self, set_attr: Callable[[Any, str, Any], Any]) -> None:
        """set_attr(module, name, value): pytest's monkeypatch.setattr, or `install_until_restored`'s."""
        for name, func in self.functions().items():
            set_attr(pynvml, name, func)
        if not self.event_reasons_api and hasattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons"):
            set_attr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)

    def install_until_restored(self) -> Callable[[], None]:
        """For code without pytest: installs the fakes and returns a function that restores pynvml."""
        saved: dict[str, Any] = {}

        def set_attr(module: Any, name: str, value: Any) -> None:
            saved.setdefault(name, getattr(module, name, None))
            setattr(module, name, value)

        def restore() -> None:
            for name, value in saved.items():
                setattr(pynvml, name, value)

        self.install(set_attr)
        return restore
