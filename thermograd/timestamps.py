"""Unix times as ISO-8601 UTC text: one home for the step log's timestamps and the analysis's report."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(unix_s: float, *, timespec: str = "auto", zulu: bool = True) -> str:
    """`unix_s` as UTC ISO-8601: `zulu` writes the offset as "Z" (the report: 2026-11-25T07:30:00Z), else as
    "+00:00" (the step log's format: 2026-11-25T07:30:00.123456+00:00, with timespec="microseconds").
    `timespec` as datetime.isoformat's ("auto": microseconds only where there are any)."""
    text = datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec=timespec)
    return text.replace("+00:00", "Z") if zulu else text
