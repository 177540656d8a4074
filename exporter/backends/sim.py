"""A simulated GPU: first-order thermal model, power following load, thermal slowdown.

    C · dT/dt = P − (T − T_ambient) / R

integrated exactly over each step (T relaxes towards T_ambient + P·R with time constant R·C), so
the model gives the same trajectory at any sampling rate. Power follows load up to the power limit;
past the slowdown temperature clocks, utilization and power drop. With the defaults, sustained full
load heats the device through its 83 °C limit while it is still heating — a genuine RLE collapse —
and idle settles near 40 °C with no collapse.

Profiles (`--sim-profile`): `default` is the card above (time constant 120 s: under full load it reaches
83 °C after about 3 minutes). `demo` is a small, poorly cooled card in a warm case: 40 °C ambient and
half the heat capacity (time constant 60 s), so a demo-length run under full load heats through 83 °C
after about a minute, throttles past 86 °C (sw_thermal, hw_slowdown) and settles near 90 °C; half
load still settles below the limit (≈ 76 °C) and never collapses. Only the physics differ; the
detector is the same.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from thermograd.exporter.backends.base import DeviceInfo, Reading

GIB = 1024**3


@dataclass(frozen=True)
class SimParams:
    ambient_c: float = 30.0
    thermal_resistance_c_per_w: float = 0.28  # R: steady-state rise per watt
    time_constant_s: float = 120.0  # R·C
    idle_power_w: float = 30.0
    dynamic_power_w: float = 200.0  # extra power demanded at load 1 (full load runs just under the limit)
    power_limit_w: float = 250.0
    slowdown_c: float = 86.0  # clocks start dropping here ...
    slowdown_per_c: float = 0.05  # ... by this fraction per °C above it
    min_clock_factor: float = 0.3
    max_sm_clock_hz: float = 1.98e9
    memory_clock_hz: float = 9.5e9
    memory_total_bytes: float = 24 * GIB
    util_noise_pct: float = 1.5  # jitter of a half-busy device (standard deviation); none when idle or saturated
    power_noise_w: float = 1.0
    temp_limit_c: float = 83.0  # the default limit the engine uses for a sim device

    @property
    def heat_capacity_j_per_c(self) -> float:
        return self.time_constant_s / self.thermal_resistance_c_per_w


class SimGpu:
    """The physics of one simulated GPU; `step` advances it and returns what NVML would report."""

    def __init__(self, params: SimParams | None = None, seed: int = 0) -> None:
        self.p = params or SimParams()
        self.rng = random.Random(seed)
        self.temp_c = self.p.ambient_c + self.p.idle_power_w * self.p.thermal_resistance_c_per_w
        self.energy_j = 0.0

    def clock_factor(self) -> float:
        excess_c = max(0.0, self.temp_c - self.p.slowdown_c)
        return max(self.p.min_clock_factor, 1.0 - self.p.slowdown_per_c * excess_c)

    def step(self, dt_s: float, load: float) -> Reading:
        p = self.p
        load = min(max(load, 0.0), 1.0)
        clock = self.clock_factor()
        demand_w = p.idle_power_w + p.dynamic_power_w * load * clock
        power_w = min(demand_w, p.power_limit_w)
        capped = demand_w > p.power_limit_w
        # exact solution of the first-order model for constant power over the step
        target_c = p.ambient_c + power_w * p.thermal_resistance_c_per_w
        self.temp_c = target_c + (self.temp_c - target_c) * math.exp(-dt_s / p.time_constant_s)
        self.energy_j += power_w * dt_s
        cap_factor = p.power_limit_w / demand_w if capped else 1.0  # capping lowers clocks, not busy time
        busy = load * clock
        # busy-time jitter is binomial-like: largest at half load, none when idle or saturated
        util_pct = 100.0 * busy + self.rng.gauss(0.0, 2.0 * p.util_noise_pct * math.sqrt(busy * (1.0 - busy)))
        measured_w = power_w + self.rng.gauss(0.0, p.power_noise_w)
        hot = self.temp_c > p.slowdown_c
        return Reading(
            util_pct=min(max(util_pct, 0.0), 100.0), temp_c=round(self.temp_c, 2), power_w=max(measured_w, 0.0),
            memory_used_bytes=p.memory_total_bytes * (0.05 + 0.6 * load), memory_total_bytes=p.memory_total_bytes,
            sm_clock_hz=p.max_sm_clock_hz * clock * cap_factor, memory_clock_hz=p.memory_clock_hz,
            fan_ratio=min(1.0, max(0.3, (self.temp_c - 40.0) / 45.0)), energy_j=self.energy_j,
            throttle={"gpu_idle": load < 0.05, "applications_clocks": False, "sw_power_cap": capped,
                      "hw_slowdown": hot, "sync_boost": False, "sw_thermal": hot, "hw_thermal": False,
                      "hw_power_brake": False, "display_clocks": False},
        )


def cooled(params: SimParams, cooling: float) -> SimParams:
    """The card with `cooling` of its cooling (thermal resistance / cooling, heat capacity kept)."""
    if not (math.isfinite(cooling) and cooling > 0):
        raise ValueError(f"a simulated card's cooling must be a number > 0, got {cooling}")
    if cooling == 1.0:
        return params
    return dataclasses.replace(params, thermal_resistance_c_per_w=params.thermal_resistance_c_per_w / cooling,
                               time_constant_s=params.time_constant_s / cooling)


SIM_PROFILES: dict[str, SimParams] = {
    "default": SimParams(),
    "demo": SimParams(ambient_c=40.0, time_constant_s=60.0),
}


class ProcessLoad:
    """The load is the CPU use of one process *and every process it started* (a launcher such as torchrun,
    its ranks, their data-loader workers), relative to its usual busy rate (the 90th percentile of its last
    5 min of readings, so one lucky second on a shared machine does not set the scale; in the first minute
    at least a floor that fades from one core to none, so a job that starts in a light phase does not read
    as fully busy before anything heavier has been seen): ~1 while it computes, ~0 while it idles (a pause)
    or before it exists. Unlike `host`, other work on a shared machine does not heat the card; only the job
    it stands in for does.

    `pid_of` names the process each round (None: not started yet, or gone): `pid:FILE` reads it from FILE
    (`ProcessLoad.from_file`), `thermograd run` hands over its child's."""

    COLD_START_READINGS = 60

    def __init__(self, pid_of: Callable[[], int | None], description: str) -> None:
        import psutil

        self._psutil = psutil
        self._pid_of = pid_of
        self.description = description
        self._pid: int | None = None
        self._last: tuple[float, float] | None = None  # (wall s, CPU s) at the previous reading
        self._rates: deque[float] = deque(maxlen=300)
        self._value = 0.0
        self._at: float | None = None

    @classmethod
    def from_file(cls, path: Path) -> ProcessLoad:
        def pid_in_file() -> int | None:
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                return None

        return cls(pid_in_file, f"the CPU use of the process whose id {path} holds, and of its children")

    def _tree_cpu_s(self, pid: int) -> float:
        """CPU seconds of the process and its live descendants, with what they reaped from descendants that
        ended (each ended process counts once: in its parent's children_* once waited for)."""
        root = self._psutil.Process(pid)
        total = 0.0
        for proc in (root, *root.children(recursive=True)):
            try:
                times = proc.cpu_times()
            except self._psutil.Error:  # ended between listing and reading: its parent reaps it next round
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def _cpu_s(self) -> float | None:
        try:
            pid = self._pid_of()
            if pid is None:
                raise ProcessLookupError
            if pid != self._pid:  # a new process: start over
                self._pid, self._last = pid, None
                self._rates.clear()
            return self._tree_cpu_s(pid)
        except (OSError, ValueError, self._psutil.Error):
            self._pid, self._last = None, None
            return None

    def __call__(self, elapsed_s: float) -> float:
        if self._at == elapsed_s:  # one reading per sampling round, shared by all devices
            return self._value
        self._at = elapsed_s
        cpu_s, now_s = self._cpu_s(), time.monotonic()
        if cpu_s is None:
            self._value = 0.0
            return 0.0
        if self._last is not None and now_s > self._last[0]:
            rate = max(cpu_s - self._last[1], 0.0) / (now_s - self._last[0])
            self._rates.append(rate)
            busy = sorted(self._rates)[int(0.9 * (len(self._rates) - 1))]
            # A floor of one core at first (a process driving a GPU computes on at least one), fading to none
            # over the first minute: a job that starts in a light phase does not read as fully busy before
            # anything heavier has been seen, and a job that never uses a whole core ramps up to its own scale
            # (a warm-up the analysis finds) instead of jumping to it mid-run.
            busy = max(busy, 1.0 - len(self._rates) / self.COLD_START_READINGS)
            self._value = min(rate / busy, 1.0) if busy > 0 else 0.0
        self._last = (now_s, cpu_s)
        return self._value


class StepLoad:
    """A load set in advance: a constant, or steps (from t seconds after start, load L)."""

    def __init__(self, steps: list[tuple[float, float]], spec: str) -> None:
        self.steps = steps
        self.description = (f"a constant load of {steps[0][1]:g}" if len(steps) == 1 and steps[0][0] == 0
                            else f"the load steps {spec}")

    def __call__(self, elapsed_s: float) -> float:
        current = self.steps[0][1]
        for start_s, value in self.steps:
            if elapsed_s >= start_s:
                current = value
        return current


HOST_LOAD = "the whole machine's CPU utilisation (every process on it, not only the training job)"


def parse_load(spec: str) -> ProcessLoad | StepLoad | None:
    """'host' -> None (use the host's CPU utilization); 'pid:FILE' -> ProcessLoad; '0.8' -> constant;
    '0:0.1,60:1,300:0.2' -> steps (from t seconds after start, load L). Raises ValueError with a one-line reason."""
    spec = spec.strip()
    if spec == "host":
        return None
    if spec.startswith("pid:"):
        if not spec[4:]:
            raise ValueError("--sim-load pid:FILE needs a file that holds a process id")
        return ProcessLoad.from_file(Path(spec[4:]))
    try:
        if ":" not in spec:
            value = float(spec)
            steps = [(0.0, value)]
        else:
            steps = sorted((float(t), float(v)) for t, v in (part.split(":") for part in spec.split(",")))
    except ValueError:
        raise ValueError(f"--sim-load must be 'host', 'pid:FILE', a load in [0, 1] or 't:load,t:load,...', "
                         f"got {spec!r}") from None
    if any(not 0.0 <= v <= 1.0 for _, v in steps):
        raise ValueError(f"--sim-load loads must lie in [0, 1], got {spec!r}")
    return StepLoad(steps, spec)


class SimBackend:
    name = "sim"

    def __init__(self, count: int = 1, seed: int = 0,
                 load: Callable[[float], float] | Sequence[Callable[[float], float]] | None = None,
                 params: SimParams | None = None, cooling: dict[int, float] | None = None) -> None:
        """`load`: one load for every card, one per card (a job's ranks, each heating its own GPU), or None for
        the host's CPU utilisation. `cooling`: per device index, the fraction of its cooling it has (1 as built;
        0.5 a clogged heat sink: twice the thermal resistance, so the same power heats it twice as far above
        ambient, and the heat capacity unchanged, so it also heats twice as slowly). Devices not named are as
        built."""
        self.params = params or SimParams()
        loads = list(load) if isinstance(load, Sequence) else [load] * count
        if len(loads) != count:
            raise ValueError(f"{len(loads)} loads for {count} simulated GPUs")
        # What heats each card, said wherever it shows (rle_device_info's heat_source, the analysis's first line).
        self._heat_sources = [HOST_LOAD if one is None else getattr(one, "description", "a load function")
                              for one in loads]
        self.heat_source = self._heat_sources[0] if count else HOST_LOAD
        self.cooling = {i: 1.0 for i in range(count)} | (cooling or {})
        self._gpus = [SimGpu(cooled(self.params, self.cooling[i]), seed=seed * 1000 + i) for i in range(count)]
        self._loads = loads
        self._start_s: float | None = None
        self._last_s: list[float | None] = [None] * count
        self._host_load = 0.0
        self._host_read_s: float | None = None
        if any(one is None for one in loads):  # the host's utilisation heats these
            import psutil

            self._psutil = psutil
            psutil.cpu_percent(interval=None)  # primes the counter: the first call returns 0

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(device=str(i), uuid=f"sim-{i}", model="thermograd simulated GPU", kind="gpu",
                           backend="sim", power_limit_w=self.params.power_limit_w,
                           temp_limit_c=self.params.temp_limit_c, heat_source=self._heat_sources[i],
                           max_sm_clock_hz=self.params.max_sm_clock_hz)
                for i in range(len(self._gpus))]

    def _load_now(self, index: int, now_s: float) -> float:
        load = self._loads[index]
        if load is not None:
            return load(now_s - self._start_s)
        if self._host_read_s != now_s:  # one host reading per round, shared by all devices
            self._host_load = self._psutil.cpu_percent(interval=None) / 100.0
            self._host_read_s = now_s
        return self._host_load

    def read(self, index: int, now_s: float) -> Reading:
        if self._start_s is None:
            self._start_s = now_s
        last = self._last_s[index]
        self._last_s[index] = now_s
        dt_s = 0.0 if last is None else max(now_s - last, 0.0)
        return self._gpus[index].step(dt_s, self._load_now(index, now_s))

    def close(self) -> None:
        pass
