"""The host CPU: psutil utilization, hwmon temperature and RAPL package power when the machine offers them.

Power comes from the RAPL package energy counter (µJ) under /sys/class/powercap: the difference
between two readings over the time between them, with the counter's wrap at max_energy_range_uj
handled. Anything unreadable is simply absent from the Reading.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import psutil

from thermograd.exporter.backends.base import DeviceInfo, Reading

log = logging.getLogger(__name__)

DEFAULT_CPU_TEMP_LIMIT_C = 80.0  # the RLE lab's CPU limit
DEFAULT_CPU_RATED_POWER_W = 125.0  # the RLE lab's CPU rated power, used when RAPL gives no limit
POWERCAP_ROOT = Path("/sys/class/powercap")
_TEMP_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "acpitz")


def energy_delta_uj(previous_uj: int, current_uj: int, max_range_uj: int | None) -> int:
    """Energy between two readings of a RAPL counter that wraps to 0 after max_range_uj."""
    if current_uj >= previous_uj:
        return current_uj - previous_uj
    if max_range_uj:
        return max_range_uj - previous_uj + current_uj
    return current_uj  # unknown range: count from the wrap only (an underestimate, never negative)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class RaplPackage:
    """One RAPL package domain (intel-rapl:N) as a monotonic energy total and a power estimate."""

    def __init__(self, domain: Path) -> None:
        self.domain = domain
        self.max_range_uj = _read_int(domain / "max_energy_range_uj")
        self._last_uj: int | None = None
        self._last_s: float | None = None
        self.total_j: float | None = None
        limit_uw = _read_int(domain / "constraint_0_power_limit_uw")
        self.power_limit_w = limit_uw / 1e6 if limit_uw else None

    @classmethod
    def find(cls, root: Path = POWERCAP_ROOT) -> RaplPackage | None:
        for domain in sorted(root.glob("intel-rapl:*")):
            if domain.name.count(":") == 1 and _read_int(domain / "energy_uj") is not None:
                return cls(domain)
        return None

    def sample(self, now_s: float) -> tuple[float | None, float | None]:
        """(energy total J, power W); power is None until two readings exist."""
        current = _read_int(self.domain / "energy_uj")
        if current is None:
            return None, None
        power_w = None
        if self._last_uj is None:
            self.total_j = current / 1e6
        else:
            delta_j = energy_delta_uj(self._last_uj, current, self.max_range_uj) / 1e6
            self.total_j += delta_j
            if now_s > self._last_s:
                power_w = delta_j / (now_s - self._last_s)
        self._last_uj, self._last_s = current, now_s
        return self.total_j, power_w


def _cpu_temperature() -> float | None:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    for name in (*_TEMP_SENSORS, *sensors):
        entries = sensors.get(name)
        if entries:
            return float(entries[0].current)
    return None


def rapl_hint(root: Path) -> str:
    """What would make RAPL readable here: nothing on a machine without it, not root for root."""
    if not any(root.glob("intel-rapl:*")):
        return (f"this machine offers no RAPL counter: {root} has none (a virtual machine, a container without "
                "/sys/class/powercap, or a CPU without RAPL)")
    if os.geteuid() == 0:
        return "energy_uj is not readable even as root: a container may mask /sys/class/powercap; mount it read-only"
    return "run as root, or grant this user read access to energy_uj"


class CpuBackend:
    name = "cpu"

    def __init__(self, powercap_root: Path = POWERCAP_ROOT) -> None:
        self._rapl = RaplPackage.find(powercap_root)
        if self._rapl is None:
            # RAPL is root-only on current kernels and absent in most VMs: say plainly what that costs.
            log.warning("no readable RAPL package energy counter under %s: CPU power is not exported, so the "
                        "RLE index (rle_efficiency and the other derived series) is not computed for the CPU "
                        "(%s)", powercap_root, rapl_hint(powercap_root))
        if _cpu_temperature() is None:
            log.info("no CPU temperature sensor: CPU temperature is not exported (T_sustain is 600 s)")
        psutil.cpu_percent(interval=None)  # primes the counter: the first call returns 0
        model = "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        limit_w = self._rapl.power_limit_w if self._rapl else None
        self._info = DeviceInfo(device="cpu", uuid=f"cpu-{socket.gethostname()}", model=model, kind="cpu",
                                backend="cpu", power_limit_w=limit_w or DEFAULT_CPU_RATED_POWER_W,
                                temp_limit_c=DEFAULT_CPU_TEMP_LIMIT_C)

    def devices(self) -> list[DeviceInfo]:
        return [self._info]

    def read(self, index: int, now_s: float) -> Reading:
        energy_j, power_w = self._rapl.sample(now_s) if self._rapl else (None, None)
        memory = psutil.virtual_memory()
        return Reading(util_pct=psutil.cpu_percent(interval=None), temp_c=_cpu_temperature(), power_w=power_w,
                       energy_j=energy_j, memory_used_bytes=float(memory.total - memory.available),
                       memory_total_bytes=float(memory.total))

    def close(self) -> None:
        pass
