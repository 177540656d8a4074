"""The analysis's series, pairs and hardware sources, read from series.csv, pairs.csv, sources.csv and
source_labels.csv beside this file (data, not code)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Series:
    column: str    # the table column
    source: str    # "train" (run_id, rank) or "device" (uuid)
    kind: str      # gauge | state | histogram_mean | histogram_upper | peak | rate
    metric: str    # the Prometheus metric (docs/metrics.md)
    matchers: str  # extra label matchers, e.g. kind="pause"
    offline: str   # the field in the step log / the RLE-lab CSV column, or ""


@dataclass(frozen=True)
class Pair:
    direction: str
    x: str
    y: str


KINDS = ("gauge", "state", "histogram_mean", "histogram_upper", "peak", "rate")
SERIES_ORIGINS = ("train", "device")  # where a series comes from: the trainer (run_id, rank) or a device (uuid)


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("thermograd.analysis").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")))


def load_series() -> tuple[Series, ...]:
    out = tuple(Series(**row) for row in _rows("series.csv"))
    for s in out:
        if s.kind not in KINDS or s.source not in SERIES_ORIGINS:
            raise ValueError(f"series.csv: {s.column}: kind {s.kind!r} / source {s.source!r} unknown")
    return out


def load_pairs(columns: set[str]) -> tuple[Pair, ...]:
    out = tuple(Pair(**row) for row in _rows("pairs.csv"))
    for p in out:
        if p.x not in columns or p.y not in columns:
            raise ValueError(f"pairs.csv: {p.x}~{p.y}: not a column of series.csv")
    return out


SERIES = load_series()
PAIRS = load_pairs({s.column for s in SERIES})
DIRECTIONS = tuple(dict.fromkeys(p.direction for p in PAIRS))


# --- hardware sources (sources.csv, source_labels.csv) ------------------------------------------------------------
SOURCE_KINDS = ("gauge", "state", "rate", "gauge_max", "rate_max")
POWER_LIMIT = "power_limit"  # the pseudo-column of sources.csv holding the rated power's metrics


@dataclass(frozen=True)
class SourceRow:
    column: str
    kind: str                  # gauge | rate | gauge_max | rate_max
    metrics: tuple[str, ...]   # one, or the alternatives combined by a *_max kind
    scale: float               # into the column's base unit


@dataclass(frozen=True)
class Source:
    name: str                          # thermograd | dcgm | nvidia-smi
    identity: str                      # a series every GPU of the source has
    uuid_labels: tuple[str, ...]
    device_labels: tuple[str, ...]
    pod_labels: tuple[str, ...]
    namespace_labels: tuple[str, ...]
    engine: bool                       # True: RLE and collapses are computed by the analysis
    default_interval_s: float
    rows: tuple[SourceRow, ...]        # the device columns it fills (thermograd: series.csv's device rows)
    power_limits: tuple[str, ...]      # rated-power metrics, in order of preference

    def row(self, column: str) -> SourceRow | None:
        return next((r for r in self.rows if r.column == column), None)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n for n in text.split("|") if n)


def load_sources(series: tuple[Series, ...]) -> dict[str, Source]:
    """Every hardware source, in the order `--hardware-source auto` tries them."""
    device_columns = {s.column for s in series if s.source == "device"}
    by_source: dict[str, list[dict[str, str]]] = {}
    for row in _rows("sources.csv"):
        by_source.setdefault(row["source"], []).append(row)
    out = {}
    for spec in _rows("source_labels.csv"):
        name = spec["source"]
        if spec["rle"] not in ("exporter", "engine"):
            raise ValueError(f"source_labels.csv: {name}: rle {spec['rle']!r} is not exporter or engine")
        if name == "thermograd":  # its own series are series.csv's device rows
            rows = tuple(SourceRow(s.column, s.kind, (s.metric,), 1.0) for s in series if s.source == "device")
            limits: tuple[str, ...] = ()
        else:
            rows = tuple(SourceRow(r["column"], r["kind"], _names(r["metric"]), float(r["scale"]))
                         for r in by_source.get(name, []) if r["column"] != POWER_LIMIT)
            limits = tuple(r["metric"] for r in by_source.get(name, []) if r["column"] == POWER_LIMIT)
        for r in rows:
            if r.column not in device_columns or r.kind not in SOURCE_KINDS or not r.metrics:
                raise ValueError(f"sources.csv: {name} {r.column}: not a device column of series.csv, or kind "
                                 f"{r.kind!r} unknown, or no metric")
            if len(r.metrics) > 1 and not r.kind.endswith("_max"):
                raise ValueError(f"sources.csv: {name} {r.column}: several metrics need a *_max kind")
        out[name] = Source(name, spec["identity"], _names(spec["uuid_labels"]), _names(spec["device_labels"]),
                           _names(spec["pod_labels"]), _names(spec["namespace_labels"]), spec["rle"] == "engine",
                           float(spec["default_interval_s"]), rows, limits)
    unknown = set(by_source) - set(out)
    if unknown:
        raise ValueError(f"sources.csv: sources {sorted(unknown)} are not in source_labels.csv")
    return out


SOURCES = load_sources(SERIES)
