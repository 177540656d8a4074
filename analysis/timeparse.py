"""Parsing of durations and instants given on the command line or found in files (pure)."""

from __future__ import annotations

import re
from datetime import UTC, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from thermograd.analysis.errors import InputError
from thermograd.timestamps import parse_iso_s

__all__ = ["get_tz", "parse_duration_s", "parse_instant_s", "parse_iso_s"]

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_s(text: str) -> float:
    """'15s', '1m30s', '2h', '0.5' (plain number = seconds) -> seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise InputError(f"not a duration: {text!r} (use e.g. 15s, 1m, 2h30m or a number of seconds)")
    return total


def get_tz(name: str | None) -> tzinfo:
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone {name!r} for --tz: {exc}") from exc


def parse_instant_s(text: str) -> float:
    """A command-line instant: Unix seconds or RFC 3339 (naive = UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_iso_s(text)
    except ValueError as exc:
        raise InputError(f"not a time: {text!r} (use Unix seconds or RFC 3339, e.g. 2025-10-28T08:00:00Z)") from exc


