"""Unix times and their text: one home for every timestamp thermograd writes or reads.

Writing: the step log's timestamps and the analysis's report (`iso_utc`). Reading: the same rules for every
file that carries times (the trainer's step log, the seed's log, RLE-lab CSVs and the exporter's recordings,
read by the exporter's replay and by the analysis alike): an epoch field wins over ISO text, an epoch number is
recognised as s, ms, us or ns by its size, and ISO text honours its offset and reads a naive time in a zone the
caller names (UTC unless told otherwise). Errors are ValueError: the caller names the file, line and column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo

# Epoch fields win over ISO strings: the RLE lab's own training logs carry `timestamp_shared` (epoch) next to
# `timestamp_iso`, a naive *local* time, which read as UTC would shift the run by the host's offset.
EPOCH_FIELDS = ("time_unix", "timestamp_shared")
# Epoch values this large are not seconds: 1e11 s is the year 5138, 1e11 ms is 1973.
EPOCH_UNITS = ((1e17, 1e9, "nanoseconds"), (1e14, 1e6, "microseconds"), (1e11, 1e3, "milliseconds"))


def has_value(value: object) -> bool:
    """A time field with a value: not missing, null or blank."""
    return value is not None and str(value).strip() != ""


def epoch_field(fields: Mapping[str, object]) -> str | None:
    """The epoch field (EPOCH_FIELDS, in order) a record's time is read from, or None: read the text one then."""
    return next((name for name in EPOCH_FIELDS if has_value(fields.get(name))), None)


def iso_utc(unix_s: float, *, timespec: str = "auto", zulu: bool = True) -> str:
    """`unix_s` as UTC ISO-8601: `zulu` writes the offset as "Z" (the report: 2026-11-25T07:30:00Z), else as
    "+00:00" (the step log's format: 2026-11-25T07:30:00.123456+00:00, with timespec="microseconds").
    `timespec` as datetime.isoformat's ("auto": microseconds only where there are any)."""
    text = datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec=timespec)
    return text.replace("+00:00", "Z") if zulu else text


def parse_iso_s(text: str, naive_tz: tzinfo = UTC) -> float:
    """ISO 8601 -> Unix seconds; an explicit offset (or Z) is honoured, a naive time is read in `naive_tz`."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=naive_tz)
    return parsed.timestamp()


def epoch_s(value: float) -> tuple[float, str | None]:
    """(Unix seconds, the unit converted from or None for seconds) of an epoch number in s, ms, us or ns."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} is not a Unix time")
    for threshold, per_second, unit in EPOCH_UNITS:
        if value >= threshold:
            return value / per_second, unit
    return value, None


def parse_time_s(text: str, naive_tz: tzinfo = UTC) -> tuple[float, str | None]:
    """(Unix seconds, epoch unit converted from) of a time column's text: an epoch number (epoch_s) or ISO 8601
    (parse_iso_s)."""
    try:
        value = float(text)
    except ValueError:
        return parse_iso_s(text, naive_tz), None
    return epoch_s(value)
