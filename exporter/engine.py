"""The RLE engine: the RLE lab's efficiency index and collapse detector, per device, with no I/O.

Definitions follow the lab's reference monitor (public repository Nemeca99/RLE, lab/monitoring/).
Every window is expressed in seconds and converted to a sample count from the nominal sample
interval, so at 1 Hz the engine is the reference sample-for-sample and at 10 Hz it looks at the same
span of time. Like the reference, rates use the *nominal* interval (its loop tick), not the measured
loop time, so timestamp jitter does not leak into T_sustain.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

DEFAULT_GPU_TEMP_LIMIT_C = 83.0  # the RLE lab's GPU limit: NVML GPUs' default, and the analysis's for other sources


@dataclass(frozen=True)
class RleConfig:
    """Thresholds of the index and the collapse detector; the defaults are the lab's."""

    stability_window_s: float = 10.0  # pstdev of utilization % over this span ...
    stability_min_s: float = 5.0  # ... once this much history exists (else stability = 1)
    smoothing_window_s: float = 5.0  # RLE_smoothed = mean of RLE_raw over this span
    slope_window_s: float = 1.0  # heating rate dT/dt (T_sustain) looks back this far
    min_heating_rate_c_per_s: float = 1e-3  # floor of dT/dt in T_sustain (cooling counts as slow heating)
    sustain_min_s: float = 1.0
    sustain_max_s: float = 600.0  # also T_sustain when the device has no temperature reading
    load_floor: float = 1e-3  # floor of A_load in the denominators
    warmup_s: float = 60.0  # the detector starts after this much of a segment
    peak_decay_per_s: float = 0.998  # rolling peak decays by this factor per second
    gate_util_pct: float = 60.0  # "under load": util above this ...
    gate_load_ratio: float = 0.75  # ... or A_load above this
    gate_heating_c: float = 0.05  # and the temperature rose more than this per slope_window_s (a rate) ...
    # ... on average over this span. The lab gated on the last second alone; a GPU sensor reports whole
    # degrees (NVML, dcgm-exporter, nvidia-smi), so a steady 0.1 °C/s shows as one step of 1 °C every 10 s and
    # the per-second rise is 0 in 9 seconds out of 10: a 7-s hold of it essentially never holds. Over the hold
    # span (7 s) the same heating is a rise of >= 1 °C.
    gate_heating_window_s: float = 7.0
    drop_frac: float = 0.65  # drop: RLE_smoothed below this fraction of the rolling peak
    hold_s: float = 7.0  # gate-and-drop must hold this long
    evidence_sustain_s: float = 60.0  # thermal evidence: T_sustain below this ...
    evidence_temp_margin_c: float = 5.0  # ... or temperature above limit - margin
    evidence_power_cap_ratio: float = 0.95  # power capping: A_load above this
    gap_intervals: float = 3.0  # a timestamp gap longer than this many intervals restarts the state

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RLE setting {f.name} must be a finite number >= 0, got {value}")
        if not 0 < self.peak_decay_per_s <= 1:
            raise ValueError(f"RLE setting peak_decay_per_s must be in (0, 1], got {self.peak_decay_per_s}")
        # These end up in denominators (T_sustain, 1/T_sustain, util/A_load): zero would divide by zero.
        for name in ("min_heating_rate_c_per_s", "sustain_min_s", "sustain_max_s", "load_floor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RLE setting {name} must be > 0, got {getattr(self, name)}")
        if self.sustain_min_s > self.sustain_max_s:
            raise ValueError(f"RLE setting sustain_min_s ({self.sustain_min_s}) must not exceed sustain_max_s "
                             f"({self.sustain_max_s})")


@dataclass(frozen=True)
class RleResult:
    """The engine's output for one sample."""

    util_ratio: float
    load_ratio: float  # A_load
    stability: float
    sustain_s: float  # T_sustain
    rle_raw: float
    rle_smoothed: float
    e_th: float
    e_pw: float
    rolling_peak: float  # 0 during warm-up, like the reference's log
    warm: bool
    collapsed: bool
    onset: bool  # this sample is a collapse event (0 -> 1)


def _window_samples(span_s: float, interval_s: float) -> int:
    return max(1, round(span_s / interval_s))


def _pstdev(values: deque[float]) -> float:
    """Population standard deviation (statistics.pstdev is exact but ~50x slower)."""
    n = len(values)
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)


class RleEngine:
    """Streaming RLE for one device. Feed samples in time order with `update`."""

    def __init__(self, rated_power_w: float, temp_limit_c: float, sample_interval_s: float = 1.0,
                 config: RleConfig | None = None) -> None:
        if not rated_power_w > 0:
            raise ValueError(f"rated power must be > 0 W, got {rated_power_w}")
        if not sample_interval_s > 0:
            raise ValueError(f"sample interval must be > 0 s, got {sample_interval_s}")
        self.config = config or RleConfig()
        self.rated_power_w = float(rated_power_w)
        self.temp_limit_c = float(temp_limit_c)
        self.interval_s = float(sample_interval_s)
        c, dt = self.config, self.interval_s
        self._stability_n = _window_samples(c.stability_window_s, dt)
        self._stability_min_n = _window_samples(c.stability_min_s, dt)
        self._smooth_n = _window_samples(c.smoothing_window_s, dt)
        self._slope_n = _window_samples(c.slope_window_s, dt)
        self._gate_n = max(_window_samples(c.gate_heating_window_s, dt), 1)
        self._decay = c.peak_decay_per_s ** dt
        self.collapse_events = 0
        self.segments = 0  # how many times the state (re)started
        self.reset()

    def reset(self) -> None:
        """Forget the rolling state (the recorder restarted); the event count is kept."""
        self._util: deque[float] = deque(maxlen=self._stability_n)
        self._util_seen = 0
        self._temps: deque[float] = deque(maxlen=max(self._slope_n, self._gate_n) + 1)
        self._raw: deque[float] = deque(maxlen=self._smooth_n)
        self._start_s: float | None = None
        self._last_s: float | None = None
        self._peak = 0.0
        self._held_s = 0.0
        self._collapsed = False

    def update(self, timestamp_s: float, util_pct: float, power_w: float,
               temp_c: float | None = None) -> RleResult:
        c = self.config
        if self._last_s is not None and timestamp_s - self._last_s > c.gap_intervals * self.interval_s:
            self.reset()
        if self._start_s is None:
            self._start_s = timestamp_s
            self.segments += 1
        self._last_s = timestamp_s

        self._util.append(util_pct)
        self._util_seen += 1
        util = util_pct / 100.0
        load = power_w / self.rated_power_w
        load_floored = max(load, c.load_floor)
        stdev = _pstdev(self._util) if self._util_seen >= self._stability_min_n else 0.0
        stability = 1.0 / (1.0 + stdev)

        gate_rate = 0.0  # mean heating rate over the gate's window, °C/s
        if temp_c is None:
            sustain_s = c.sustain_max_s
        else:
            self._temps.append(temp_c)
            sustain_s = c.sustain_max_s
            if len(self._temps) >= 2:
                back = min(self._slope_n, len(self._temps) - 1)
                heating_c = self._temps[-1] - self._temps[-1 - back]
                rate = max(heating_c / (back * self.interval_s), c.min_heating_rate_c_per_s)
                sustain_s = min(max((self.temp_limit_c - temp_c) / rate, c.sustain_min_s), c.sustain_max_s)
                back = min(self._gate_n, len(self._temps) - 1)
                gate_rate = (self._temps[-1] - self._temps[-1 - back]) / (back * self.interval_s)

        thermal_factor = 1.0 + 1.0 / sustain_s
        rle_raw = util * stability / (load_floored * thermal_factor)
        self._raw.append(rle_raw)
        rle_smoothed = math.fsum(self._raw) / len(self._raw)

        warm = timestamp_s - self._start_s > c.warmup_s
        onset = False
        if warm:
            self._peak = max(rle_smoothed, self._peak * self._decay)
            heating = gate_rate * c.slope_window_s > c.gate_heating_c
            gate = (util_pct > c.gate_util_pct or load > c.gate_load_ratio) and heating
            drop = rle_smoothed < c.drop_frac * self._peak
            self._held_s = self._held_s + self.interval_s if gate and drop else 0.0
            thermal = sustain_s < c.evidence_sustain_s or (
                temp_c is not None and temp_c > self.temp_limit_c - c.evidence_temp_margin_c)
            capped = load > c.evidence_power_cap_ratio
            # the small epsilon makes "held for 7 s" true on the 7th 1-s sample despite float sums
            collapsed = self._held_s >= c.hold_s - 1e-9 and (thermal or capped)
            onset = collapsed and not self._collapsed
            self._collapsed = collapsed
            self.collapse_events += onset
        else:
            self._collapsed = False
        return RleResult(
            util_ratio=util, load_ratio=load, stability=stability, sustain_s=sustain_s,
            rle_raw=rle_raw, rle_smoothed=rle_smoothed, e_th=stability / thermal_factor,
            e_pw=util / load_floored, rolling_peak=self._peak if warm else 0.0, warm=warm,
            collapsed=self._collapsed, onset=onset,
        )
