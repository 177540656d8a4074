"""A prometheus_client collector that renders the sampler's latest snapshot (never the hardware)."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from thermograd.exporter import __version__
from thermograd.exporter.backends.base import THROTTLE_REASONS, Reading
from thermograd.exporter.engine import RleResult
from thermograd.exporter.sampler import DURATION_BUCKETS_S, Snapshot

DEVICE_LABELS = ["device", "uuid"]

# metric name -> (Reading attribute, help); counters end in _total
HARDWARE = {
    "rle_temperature_celsius": ("temp_c", "Core temperature (°C)."),
    "rle_power_watts": ("power_w", "Power draw (W)."),
    "rle_utilization_ratio": ("util_pct", "Busy fraction (0-1)."),
    "rle_memory_used_bytes": ("memory_used_bytes", "Device memory in use."),
    "rle_memory_total_bytes": ("memory_total_bytes", "Device memory size."),
    "rle_sm_clock_hertz": ("sm_clock_hz", "SM (graphics) clock."),
    "rle_memory_clock_hertz": ("memory_clock_hz", "Memory clock."),
    "rle_fan_speed_ratio": ("fan_ratio", "Fan speed as a fraction of maximum."),
    "rle_energy_joules_total": ("energy_j", "Energy consumed since the driver loaded (J)."),
}
_SCALE = {"util_pct": 0.01}  # stored in percent, exported as a ratio

# metric name -> (value from the engine's result, help)
DERIVED: dict[str, tuple[Callable[[RleResult], float], str]] = {
    "rle_efficiency": (lambda r: r.rle_raw, "RLE_raw = util x stability / (max(A_load, 1e-3) x (1 + 1/T_sustain))."),
    "rle_efficiency_smoothed": (lambda r: r.rle_smoothed, "Mean of RLE_raw over the last 5 s."),
    "rle_thermal_efficiency": (lambda r: r.e_th, "E_th = stability / (1 + 1/T_sustain)."),
    "rle_power_efficiency": (lambda r: r.e_pw, "E_pw = util / max(A_load, 1e-3)."),
    "rle_load_ratio": (lambda r: r.load_ratio, "A_load = power / rated power."),
    "rle_stability": (lambda r: r.stability, "1 / (1 + population stdev of the last 10 s of utilization %)."),
    "rle_sustain_seconds": (lambda r: r.sustain_s, "Seconds until the temperature limit at the current heating rate."),
    "rle_rolling_peak": (lambda r: r.rolling_peak, "Decaying peak of RLE_smoothed used by the collapse detector."),
    "rle_collapsed": (lambda r: float(r.collapsed), "1 while the device is in thermal collapse."),
}


def _family(name: str, doc: str, labels: list[str]) -> Metric:
    if name.endswith("_total"):
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def _hardware_value(reading: Reading, attr: str) -> float | None:
    value = getattr(reading, attr)
    return None if value is None else value * _SCALE.get(attr, 1.0)


class SnapshotCollector:
    """Renders `get_snapshot()`; each collect() reads the snapshot reference once."""

    def __init__(self, get_snapshot: Callable[[], Snapshot],
                 http_stats: Callable[[], dict[str, int]] | None = None) -> None:
        self._get_snapshot = get_snapshot
        self._http_stats = http_stats  # the endpoint's own counters (thermograd.endpoint.server.HttpStats.snapshot)
        self._build = {"version": __version__, "python": platform.python_version()}

    def collect(self) -> Iterator[Metric]:
        snap = self._get_snapshot()
        yield from self._device_metrics(snap)
        yield from self._self_metrics(snap)

    def _device_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        info = GaugeMetricFamily("rle_device_info", "One series per device.",
                                 labels=[*DEVICE_LABELS, "model", "backend", "kind", "heat_source"])
        limit = GaugeMetricFamily("rle_power_limit_watts", "Rated power used for A_load (W).", labels=DEVICE_LABELS)
        max_clock = GaugeMetricFamily("rle_sm_clock_max_hertz", "The SM clock's maximum (boost) clock.",
                                      labels=DEVICE_LABELS)
        hardware = {name: _family(name, doc, DEVICE_LABELS) for name, (_, doc) in HARDWARE.items()}
        throttle = GaugeMetricFamily("rle_throttle_active", "1 while that clock-event (throttle) reason is active.",
                                     labels=[*DEVICE_LABELS, "reason"])
        derived = {name: GaugeMetricFamily(name, doc, labels=DEVICE_LABELS) for name, (_, doc) in DERIVED.items()}
        events = CounterMetricFamily("rle_collapse_events_total", "Collapse onsets (0 -> 1 transitions).",
                                     labels=DEVICE_LABELS)
        for sample in snap.devices:
            d = sample.info
            labels = [d.device, d.uuid]
            info.add_metric([*labels, d.model, d.backend, d.kind, d.heat_source], 1.0)
            limit.add_metric(labels, sample.rated_power_w)
            if d.max_sm_clock_hz is not None:
                max_clock.add_metric(labels, d.max_sm_clock_hz)
            for name, (attr, _) in HARDWARE.items():
                value = _hardware_value(sample.reading, attr)
                if value is not None:
                    hardware[name].add_metric(labels, value)
            if sample.reading.throttle is not None:
                for reason in THROTTLE_REASONS:
                    if reason in sample.reading.throttle:
                        throttle.add_metric([*labels, reason], float(sample.reading.throttle[reason]))
            if sample.result is not None:
                for name, (value_of, _) in DERIVED.items():
                    derived[name].add_metric(labels, value_of(sample.result))
            if sample.collapse_events is not None:
                events.add_metric(labels, float(sample.collapse_events))
        yield info
        yield limit
        yield max_clock
        yield from hardware.values()
        yield throttle
        yield from derived.values()
        yield events

    def _self_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        build = GaugeMetricFamily("rle_exporter_build_info", "Build identity.", labels=list(self._build))
        build.add_metric(list(self._build.values()), 1.0)
        yield build
        yield CounterMetricFamily("rle_exporter_samples_total", "Sampling rounds completed.",
                                  value=snap.samples_total)
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, DURATION_BUCKETS_S), "+Inf"), snap.duration_bucket_counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("rle_exporter_sample_duration_seconds",
                                    "Wall time of one sampling round over all devices.",
                                    buckets=buckets, sum_value=snap.duration_sum_s)
        errors = CounterMetricFamily("rle_exporter_errors_total", "Failed device queries by operation.",
                                     labels=["device", "op"])
        for device, op, count in snap.errors:
            errors.add_metric([device, op], float(count))
        yield errors
        if self._http_stats is not None:
            http = CounterMetricFamily("rle_exporter_http_errors_total",
                                       "HTTP endpoint events by reason (docs/metrics.md lists them).",
                                       labels=["reason"])
            for reason, count in self._http_stats().items():
                http.add_metric([reason], float(count))
            yield http
