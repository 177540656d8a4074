"""Reading RLE-lab recordings (CSV with timestamp, device, util_pct, temp_c, power_w, ...) for the exporter.

Shared by `recompute` and the replay backend. Any malformed value raises `LabCsvError`, whose
message names the file, the line and the column, so a user can find it. Times follow the rules every reader
of these files shares (thermograd.timestamps), so a replay and the offline analysis of one file agree on
every instant; this reader adds what playing and scoring a file need (plausible ranges, increasing times).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from thermograd.exporter.backends.base import PLAUSIBLE_RANGES
from thermograd.timestamps import EPOCH_FIELDS, epoch_field, epoch_s, parse_time_s

REQUIRED_COLUMNS = ("timestamp", "device", "util_pct", "power_w", "temp_c")


# CSV column -> its plausible range (fan_pct is in percent, the Reading's fan_ratio a fraction).
_RANGES = {"util_pct": PLAUSIBLE_RANGES["util_pct"], "temp_c": PLAUSIBLE_RANGES["temp_c"],
           "power_w": PLAUSIBLE_RANGES["power_w"],
           "fan_pct": tuple(100.0 * bound for bound in PLAUSIBLE_RANGES["fan_ratio"])}
# Spreadsheet exports often start with a byte-order mark; "utf-8-sig" drops it (and reads plain UTF-8).
ENCODING = "utf-8-sig"


class LabCsvError(ValueError):
    """A recording that cannot be read; str() is one line naming file, line and column."""


@dataclass(frozen=True)
class LabRow:
    line: int  # 1-based line number in the file (the header is line 1)
    fields: dict[str, str]  # the row as read, for pass-through
    timestamp_s: float
    device: str
    util_pct: float
    power_w: float | None  # None: the monitor had no power reading (its CPU rows on some machines)
    temp_c: float | None
    fan_ratio: float | None


class _RowParser:
    def __init__(self, path: Path, line: int, fields: dict[str, str]) -> None:
        self.path, self.line, self.fields = path, line, fields

    def fail(self, column: str, why: str) -> LabCsvError:
        return LabCsvError(f"{self.path}: line {self.line}, column {column!r}: {why}")

    def number(self, column: str, optional: bool = False) -> float | None:
        text = (self.fields.get(column) or "").strip()
        if not text:
            if optional:
                return None
            raise self.fail(column, "missing value")
        try:
            value = float(text)
        except ValueError:
            raise self.fail(column, f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise self.fail(column, f"not a finite number: {text!r}")
        low, high = _RANGES.get(column, (-math.inf, math.inf))
        if not low <= value <= high:
            raise self.fail(column, f"{text} is outside the physically plausible {low:g} to {high:g}")
        return value

    def time_column(self) -> str:
        """The column the row's time is read from: an epoch column with a value, else `timestamp`."""
        return epoch_field(self.fields) or "timestamp"

    def timestamp(self) -> float:
        """The row's time by the rules every reader of these files shares (thermograd.timestamps): an epoch
        column (time_unix, timestamp_shared) first, else `timestamp` (ISO 8601, a naive time is UTC; or a
        Unix time in s, ms, us or ns)."""
        column = self.time_column()
        text = (self.fields.get(column) or "").strip()
        try:
            return parse_time_s(text)[0] if column == "timestamp" else epoch_s(float(text))[0]
        except ValueError:
            what = "an ISO 8601 time or a Unix time" if column == "timestamp" else "a Unix time"
            raise self.fail(column, f"not {what}: {text!r}") from None


def read_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding=ENCODING) as fh:
            header = next(csv.reader(fh), None)
    except OSError as exc:
        raise LabCsvError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabCsvError(f"{path}: not a readable CSV: {exc}") from None
    if not header:
        raise LabCsvError(f"{path}: line 1: empty file, expected a header with {', '.join(REQUIRED_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header
               and not (c == "timestamp" and any(e in header for e in EPOCH_FIELDS))]
    if missing:
        raise LabCsvError(f"{path}: line 1, column {missing[0]!r}: missing from the header")
    return header


def iter_rows(path: Path, device: str | None = None) -> Iterator[LabRow]:
    """Rows in file order (optionally of one device); raises LabCsvError on the first bad one.

    Each device's timestamps must increase strictly: a recording that goes back in time (or repeats
    or lacks one) cannot be played or scored (the replay's loop length and the engine's rates would
    be zero or negative)."""
    path = Path(path)
    previous: dict[str, tuple[float, int]] = {}  # device -> (timestamp, line) of its last row
    try:
        header = read_header(path)
        with open(path, newline="", encoding=ENCODING) as fh:
            reader = csv.reader(fh)
            next(reader)
            for values in reader:
                line = reader.line_num
                if not values:
                    continue
                if len(values) > len(header):
                    raise LabCsvError(f"{path}: line {line}, column {len(header) + 1}: "
                                      f"{len(values)} fields but the header has {len(header)}")
                fields = dict(zip(header, values, strict=False))
                p = _RowParser(path, line, fields)
                name = (fields.get("device") or "").strip()
                if not name:
                    raise p.fail("device", "missing value")
                if device is not None and name != device:
                    continue
                fan = p.number("fan_pct", optional=True) if "fan_pct" in header else None
                timestamp_s = p.timestamp()
                if name in previous and not timestamp_s > previous[name][0]:
                    raise p.fail(p.time_column(), f"not after the previous {name} row's (line {previous[name][1]}); "
                                 "timestamps must increase")
                previous[name] = (timestamp_s, line)
                yield LabRow(line=line, fields=fields, timestamp_s=timestamp_s, device=name,
                             util_pct=p.number("util_pct"), power_w=p.number("power_w", optional=True),
                             temp_c=p.number("temp_c", optional=True),
                             fan_ratio=None if fan is None else fan / 100.0)
    except OSError as exc:
        raise LabCsvError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabCsvError(f"{path}: not a readable CSV: {exc}") from None
