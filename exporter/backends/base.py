"""The one interface every device backend implements, and the values it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Clock-event (throttle) reasons, in NVML's bit order; the exporter labels them with these names.
THROTTLE_REASONS = ("gpu_idle", "applications_clocks", "sw_power_cap", "hw_slowdown", "sync_boost",
                    "sw_thermal", "hw_thermal", "hw_power_brake", "display_clocks")


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # the `device` label: an index ("0") or a name ("cpu", "gpu")
    uuid: str
    model: str
    kind: str  # "gpu" or "cpu"
    backend: str
    power_limit_w: float | None  # the default rated power (None: the device does not say)
    temp_limit_c: float  # the default temperature limit for T_sustain
    # What drives a device that is not physical hardware (the `heat_source` label of rle_device_info): what heats a
    # simulated GPU, or the recording a replay plays. "" for real hardware.
    heat_source: str = ""
    max_sm_clock_hz: float | None = None  # the SM clock's maximum (boost) clock: a throttled clock's reference


# What a device can physically report, by Reading field (util %, °C, W, fan fraction). A value outside
# is a glitch (NVML's 0xFFFFFFFF, a corrupt recording, -300 °C, 1e308) and is never served: the RLE
# would be nonsense or overflow. Generous on purpose: the hottest GPUs shut down near 100 °C, the
# largest draw ~1.5 kW.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "util_pct": (0.0, 100.0),
    "temp_c": (-50.0, 150.0),
    "power_w": (0.0, 5000.0),
    "fan_ratio": (0.0, 1.0),
}


@dataclass(frozen=True)
class Reading:
    """One sample of one device. None means the device does not offer the value (never exported as 0)."""

    util_pct: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    sm_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    fan_ratio: float | None = None
    energy_j: float | None = None
    throttle: dict[str, bool] | None = None
    failed_ops: tuple[str, ...] = field(default=())  # queries that errored this round (not "unsupported")


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (no driver, no GPU, unreadable file)."""


class DeviceLost(RuntimeError):
    """The device did not answer this round; its series are omitted until it does."""

    def __init__(self, op: str, message: str) -> None:
        super().__init__(message)
        self.op = op


class Backend(Protocol):
    name: str
    # Optional: device seconds per wall-clock second (a replay at --speed N has N); absent means 1.
    # time_scale: float

    def devices(self) -> list[DeviceInfo]: ...

    def read(self, index: int, now_s: float) -> Reading:
        """Sample device `index` (position in devices()); raises DeviceLost when it is gone."""
        ...

    def close(self) -> None: ...
