"""Offline inputs: the seed's grad_norm_log.json, the trainer's JSON Lines log, RLE-lab CSVs."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path

import numpy as np

from analysis.errors import InputError
from analysis.timeparse import parse_iso_s


@dataclass
class Samples:
    """Irregular samples of one source: Unix seconds plus named float columns."""

    t_s: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def range_s(self) -> tuple[float, float]:
        return float(self.t_s.min()), float(self.t_s.max())


_ABSENT = object()
GRAD_FIELDS = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "learning_rate",
               "perturbation": "perturbation"}


def _number(value: object, where: str, name: str, required: bool) -> float:
    """A float from a JSON/CSV field; null or empty is a gap (NaN), e.g. a step the trainer skipped as
    non-finite. `required` only demands that the field exist."""
    if value is _ABSENT:
        if required:
            raise InputError(f"{where}: field {name!r} missing")
        return math.nan
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field {name!r} is not a number: {value!r}") from None


# Epoch fields win over ISO strings: the RLE lab's own training logs carry `timestamp_shared` (epoch) next
# to `timestamp_iso`, a naive *local* time, which read as UTC would shift the run by the host's offset.
EPOCH_FIELDS = ("time_unix", "timestamp_shared")
ISO_FIELDS = ("timestamp", "timestamp_iso")


def _record_time(rec: dict, where: str, tz: tzinfo) -> float:
    """An epoch field first (time_unix, timestamp_shared), else an ISO one (offset honoured, naive = tz)."""
    for name in EPOCH_FIELDS:
        if rec.get(name) not in (None, ""):
            return _number(rec[name], where, name, True)
    for name in ISO_FIELDS:
        stamp = rec.get(name)
        if isinstance(stamp, str) and stamp:
            try:
                return parse_iso_s(stamp, tz)
            except ValueError:
                raise InputError(f"{where}: {name} {stamp!r} is not ISO 8601") from None
    raise InputError(f"{where}: no time field (epoch: {', '.join(EPOCH_FIELDS)}; ISO: {', '.join(ISO_FIELDS)})")


def _grad_records(path: Path, text: str) -> list[tuple[str, object]]:
    """(location, record) pairs from a JSON array (seed format) or JSON Lines (trainer format)."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return [(f"{path}: entry {i + 1}", rec) for i, rec in enumerate(data)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    return out


def load_grad_log(path: Path, tz: tzinfo) -> Samples:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    times, cols = [], {k: [] for k in GRAD_FIELDS}
    for where, rec in _grad_records(path, text):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected an object, got {type(rec).__name__}")
        if "grad_norm" not in rec and "loss" not in rec:
            continue  # e.g. a run header or summary line in a JSON Lines log
        times.append(_record_time(rec, where, tz))
        pert = rec.get("perturbation")
        if isinstance(pert, dict):  # a burst description rather than a flag: its presence means active
            rec = {**rec, "perturbation": bool(pert.get("active", True))}
        for col, key in GRAD_FIELDS.items():
            cols[col].append(_number(rec.get(key, _ABSENT), where, key, key == "grad_norm"))
    if not times:
        raise InputError(f"{path}: no records with grad_norm")
    return Samples(np.asarray(times), {k: np.asarray(v, dtype=float) for k, v in cols.items()})


RLE_COLUMNS = {"rle": "rle_smoothed", "temperature": "temp_c", "power": "power_w", "a_load": "a_load",
               "collapsed": "collapse"}


def load_rle_csv(path: Path, device: str | None, tz: tzinfo) -> tuple[Samples, str]:
    """Rows of one device from an RLE-lab CSV (several devices per file); returns (samples, device)."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("device", *RLE_COLUMNS.values()) if c not in header]
        if "timestamp" not in header and "timestamp_shared" not in header:
            missing.insert(0, "timestamp")
        if missing:
            raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}")
        try:
            rows = [(lineno, row) for lineno, row in enumerate(reader, start=2)]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV: {exc}") from None
    # The lab's monitor leaves trailing CPU-only columns off its GPU rows, so a short row is fine as long
    # as it reaches every column read here; one that does not is truncated (a file still being written).
    needed = [c for c in ("timestamp", "timestamp_shared", "device", *RLE_COLUMNS.values()) if c in header]
    for lineno, row in rows:
        if any(row.get(c) is None for c in needed):
            got = sum(v is not None for k, v in row.items() if k is not None)
            raise InputError(f"{path}:{lineno}: truncated row ({got} of the header's {len(header)} fields)")
    devices = sorted({row["device"] for _, row in rows})
    if device is None:
        device = "gpu" if "gpu" in devices else (devices[0] if len(devices) == 1 else None)
        if device is None:
            raise InputError(f"{path}: several devices ({', '.join(devices)}); pick one with --device")
    elif device not in devices:
        raise InputError(f"{path}: device {device!r} not in the file (devices: {', '.join(devices)})")
    times, cols = [], {k: [] for k in RLE_COLUMNS}
    for lineno, row in rows:
        if row["device"] != device:
            continue
        where = f"{path}:{lineno}"
        if row.get("timestamp_shared") not in (None, ""):
            times.append(_number(row["timestamp_shared"], where, "timestamp_shared", True))
        else:
            try:
                times.append(parse_iso_s(row.get("timestamp") or "", tz))
            except ValueError:
                raise InputError(f"{where}: timestamp {row.get('timestamp')!r} is not ISO 8601") from None
        for col, key in RLE_COLUMNS.items():
            cols[col].append(_number(row.get(key), where, key, False))
    if not times:
        raise InputError(f"{path}: no rows for device {device!r}")
    return Samples(np.asarray(times), {k: np.asarray(v, dtype=float) for k, v in cols.items()}), device
