"""The analysis's series and pairs, read from series.csv and pairs.csv beside this file (data, not code)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Series:
    column: str    # the table column
    source: str    # "train" (run_id, rank) or "device" (uuid)
    kind: str      # gauge | histogram_mean | rate
    metric: str    # the Prometheus metric (docs/metrics.md)
    matchers: str  # extra label matchers, e.g. kind="pause"
    offline: str   # the field in the step log / the RLE-lab CSV column, or ""


@dataclass(frozen=True)
class Pair:
    direction: str
    x: str
    y: str


KINDS = ("gauge", "histogram_mean", "rate")
SOURCES = ("train", "device")


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("analysis").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")))


def load_series() -> tuple[Series, ...]:
    out = tuple(Series(**row) for row in _rows("series.csv"))
    for s in out:
        if s.kind not in KINDS or s.source not in SOURCES:
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
