"""The sampler thread: reads every device at --sample-hz, runs the RLE engines, publishes a snapshot.

The snapshot is an immutable object swapped in with one assignment, so a scrape reads one consistent
sample of every device and never touches the hardware.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from thermograd.exporter.backends.base import PLAUSIBLE_RANGES, Backend, DeviceInfo, DeviceLost, Reading
from thermograd.exporter.engine import RleConfig, RleEngine, RleResult

log = logging.getLogger(__name__)

# Bucket bounds (s) of rle_exporter_sample_duration_seconds: a sampling round is µs (sim) to ms (NVML).
DURATION_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Reading field -> the `op` its implausible values are counted under in rle_exporter_errors_total.
_RANGE_OPS = {"util_pct": "utilization", "temp_c": "temperature", "power_w": "power", "fan_ratio": "fan"}
STALE_INTERVALS = 3.0  # /healthz fails when the newest good sample is older than this many intervals


@dataclass(frozen=True)
class DeviceSample:
    info: DeviceInfo
    rated_power_w: float
    reading: Reading
    result: RleResult | None  # None when utilization or power was unavailable this round
    collapse_events: int | None  # None until the engine has had a sample (no power reading yet)


@dataclass(frozen=True)
class Snapshot:
    devices: tuple[DeviceSample, ...] = ()
    samples_total: int = 0
    duration_bucket_counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS_S) + 1)  # last is +Inf
    duration_sum_s: float = 0.0
    errors: tuple[tuple[str, str, int], ...] = ()  # (device, op, count)
    last_good_s: float | None = None  # monotonic time of the newest round in which a device answered
    wall_s: float | None = None  # Unix time of this round (a recording's timestamp)


@dataclass
class _Device:
    index: int
    info: DeviceInfo
    engine: RleEngine


class Sampler:
    def __init__(self, backend: Backend, sample_hz: float, rated_power_w: dict[str, float],
                 temp_limit_c: dict[str, float], config: RleConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_sample: Callable[[Snapshot], None] | None = None) -> None:
        """rated_power_w / temp_limit_c: per device label; missing labels use the device's own defaults.
        `on_sample` sees every new snapshot in the sampler's thread (the recorder); it must not raise."""
        self.backend = backend
        self._on_sample = on_sample
        self.interval_s = 1.0 / sample_hz
        # The engine runs on the device's own clock: a replay at --speed N advances N recorded seconds per
        # wall second, so its windows and heating rates must be measured in recorded time.
        self.time_scale = float(getattr(backend, "time_scale", 1.0))
        self.clock = clock
        self._devices = []
        for index, info in enumerate(backend.devices()):
            power_w = rated_power_w.get(info.device, info.power_limit_w)
            if power_w is None:
                raise ValueError(f"device {info.device} reports no power limit: pass --rated-power {info.device}=W")
            engine = RleEngine(power_w, temp_limit_c.get(info.device, info.temp_limit_c),
                              self.interval_s * self.time_scale, config)
            self._devices.append(_Device(index, info, engine))
        self.snapshot = Snapshot()
        self._errors: dict[tuple[str, str], int] = {}
        self._logged: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def devices(self) -> list[DeviceInfo]:
        return [d.info for d in self._devices]

    def _log_once(self, device: str, key: str, fmt: str, detail: object) -> None:
        if (device, key) not in self._logged:
            self._logged.add((device, key))
            log.warning(fmt, device, detail)

    def _count_error(self, device: str, op: str) -> None:
        self._errors[(device, op)] = self._errors.get((device, op), 0) + 1

    def _read(self, dev: _Device, now_s: float) -> DeviceSample | None:
        label = dev.info.device
        try:
            reading = self.backend.read(dev.index, now_s)
        except DeviceLost as exc:
            self._count_error(label, exc.op)
            return None
        except Exception as exc:  # a backend bug or an odd driver state must not stop the other devices
            self._count_error(label, "read")
            self._log_once(label, type(exc).__name__, "device %s: reading failed: %s (logged once)",
                           f"{type(exc).__name__}: {exc}")
            return None
        for op in reading.failed_ops:
            self._count_error(label, op)
        reading = self._drop_implausible(label, reading)
        result = None
        if reading.util_pct is not None and reading.power_w is not None:
            try:
                result = dev.engine.update(now_s * self.time_scale, reading.util_pct, reading.power_w,
                                           reading.temp_c)
            except (ArithmeticError, ValueError) as exc:  # an odd reading must not kill the sampler thread
                self._count_error(label, "engine")
                self._log_once(label, f"engine-{type(exc).__name__}", "device %s: RLE engine failed: %s (logged once)",
                               exc)
        events = dev.engine.collapse_events if dev.engine.segments else None
        return DeviceSample(dev.info, dev.engine.rated_power_w, reading, result, events)

    def _drop_implausible(self, label: str, reading: Reading) -> Reading:
        """A value no device can report (non-finite, -300 °C, 1e308 W) is dropped, counted under its
        query's op and logged once: never served, never fed to the engine (it would overflow)."""
        dropped = {}
        for attr, (low, high) in PLAUSIBLE_RANGES.items():
            value = getattr(reading, attr)
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                dropped[attr] = None
                self._count_error(label, _RANGE_OPS[attr])
                self._log_once(label, f"range-{attr}", "device %s: dropping implausible %s (logged once)",
                               f"{attr}={value!r}, outside {low:g} to {high:g}")
        return dataclasses.replace(reading, **dropped) if dropped else reading

    def sample_once(self) -> Snapshot:
        """One sampling round over all devices; publishes and returns the new snapshot."""
        started = time.perf_counter()
        now_s, wall_s = self.clock(), time.time()
        samples = tuple(s for s in (self._read(d, now_s) for d in self._devices) if s is not None)
        duration_s = time.perf_counter() - started
        prev = self.snapshot
        buckets = list(prev.duration_bucket_counts)
        buckets[bisect.bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        self.snapshot = Snapshot(
            devices=samples, samples_total=prev.samples_total + 1, duration_bucket_counts=tuple(buckets),
            duration_sum_s=prev.duration_sum_s + duration_s,
            errors=tuple((dev, op, n) for (dev, op), n in sorted(self._errors.items())),
            last_good_s=now_s if samples else prev.last_good_s, wall_s=wall_s,
        )
        if self._on_sample is not None:
            self._on_sample(self.snapshot)
        return self.snapshot

    def count_error(self, device: str, op: str) -> None:
        """An error of something the sampler drives (the recorder), counted in rle_exporter_errors_total."""
        self._count_error(device, op)

    def healthy(self) -> tuple[bool, str]:
        last = self.snapshot.last_good_s
        if last is None:
            return False, "no good sample yet"
        age_s = self.clock() - last
        if age_s > STALE_INTERVALS * self.interval_s:
            return False, f"newest good sample is {age_s:.1f} s old (limit {STALE_INTERVALS * self.interval_s:.1f} s)"
        return True, f"ok: newest good sample {age_s:.2f} s old"

    def _run(self) -> None:
        next_s = self.clock() + self.interval_s
        while not self._stop.wait(max(0.0, next_s - self.clock())):
            self.sample_once()
            next_s += self.interval_s
            if next_s < self.clock():  # overran (slow driver): skip the missed ticks instead of bursting
                next_s = self.clock() + self.interval_s

    def start(self) -> None:
        self.sample_once()  # the first scrape already has data
        self._thread = threading.Thread(target=self._run, name="rle-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
