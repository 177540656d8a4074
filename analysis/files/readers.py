"""Offline inputs: the seed's grad_norm_log.json, the trainer's JSON Lines log, RLE-lab CSVs."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path

import numpy as np

from thermograd.analysis.catalog import SERIES
from thermograd.analysis.errors import InputError
from thermograd.timestamps import EPOCH_FIELDS, epoch_field, epoch_s, has_value, parse_time_s


@dataclass
class Samples:
    """Irregular samples of one source: Unix seconds plus named float columns."""

    t_s: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    # Named lists of (start, end) Unix-second intervals, e.g. the trainer's pauses (no step happens inside).
    intervals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # Text that describes the source as a whole, e.g. a hardware recording's uuid, backend and heat_source.
    info: dict[str, str] = field(default_factory=dict)

    @property
    def range_s(self) -> tuple[float, float]:
        return float(self.t_s.min()), float(self.t_s.max())


_ABSENT = object()
GRAD_FIELDS = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "learning_rate",
               "perturbation": "perturbation", "tokens": "tokens", "pause_s": "pause_s",
               "compute_s": "compute_s", "wait_s": "wait_s", "step": "step"}
MEASURED_FIELDS = ("loss", "grad_norm", "learning_rate", "tokens", "compute_s", "wait_s")  # numbers, never flags
# Text the trainer's log carries on every line: who the rank is, its GPU, and whether its clock is emulated.
GRAD_TEXT_FIELDS = ("run_id", "rank", "gpu_uuid", "emulation")


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


ISO_FIELDS = ("timestamp", "timestamp_iso")


def epoch_seconds(value: float, where: str, name: str, units_seen: set[str]) -> float:
    """Unix seconds from an epoch number in s, ms, us or ns (timestamps.epoch_s; the unit is noted)."""
    try:
        seconds, unit = epoch_s(value)
    except ValueError:
        raise InputError(f"{where}: {name} {value!r} is not a Unix time") from None
    if unit:
        units_seen.add(unit)
    return seconds


def _text_time(text: str, where: str, name: str, tz: tzinfo, units_seen: set[str]) -> float:
    try:
        seconds, unit = parse_time_s(text, tz)
    except ValueError:
        raise InputError(f"{where}: {name} {text!r} is neither ISO 8601 nor a Unix time") from None
    if unit:
        units_seen.add(unit)
    return seconds


def _record_time(rec: dict, where: str, tz: tzinfo, units_seen: set[str]) -> float:
    """An epoch field first (time_unix, timestamp_shared), else a text one: ISO 8601 (offset honoured, naive = tz)
    or a Unix time (thermograd.timestamps' rules, as for the hardware CSV)."""
    if (name := epoch_field(rec)) is not None:
        return epoch_seconds(_number(rec[name], where, name, True), where, name, units_seen)
    for name in ISO_FIELDS:
        stamp = rec.get(name)
        if has_value(stamp) and not isinstance(stamp, bool):
            return _text_time(str(stamp), where, name, tz, units_seen)
    raise InputError(f"{where}: no time field (epoch: {', '.join(EPOCH_FIELDS)}; ISO: {', '.join(ISO_FIELDS)})")


def _grad_records(path: Path, text: str, notes: list[str]) -> list[tuple[str, object]]:
    """(location, record) pairs from a JSON array (seed format) or JSON Lines (trainer format).

    A JSON Lines log whose last line is cut off (no newline: the writer was killed or the disk filled
    up mid-line) is read up to its last complete line, with a note; a bad line anywhere else is an error.
    """
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return [(f"{path}: entry {i + 1}", rec) for i, rec in enumerate(data)]
    out = []
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not text.endswith("\n"):
                notes.append(f"{path}:{lineno}: the last line is incomplete (the log was cut off mid-write); "
                             "read up to the last complete line.")
                break
            if not out and "," in line and not line.lstrip().startswith(("{", "[")):
                raise InputError(f"{path}:{lineno}: not JSON: a step log is JSON Lines (thermograd's steps.jsonl, "
                                 "one object per line) or the seed's JSON array; a CSV step log is not read "
                                 "(docs/offline-files.md)") from None
            raise InputError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    return out


COMPRESSED = {b"\x1f\x8b": "gzip (gunzip it)", b"BZh": "bzip2 (bunzip2 it)", b"\xfd7zXZ": "xz (unxz it)",
              b"(\xb5/\xfd": "zstd (unzstd it)", b"PK\x03\x04": "zip (unzip it)"}


def not_text(path: Path, exc: UnicodeDecodeError) -> InputError:
    """The one-line error for a file that is not UTF-8 text: a compressed file named as such (with the command
    that unpacks it), else where the first bad byte is."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        head = b""
    for magic, what in COMPRESSED.items():
        if head.startswith(magic):
            return InputError(f"{path}: a {what.split()[0]}-compressed file, not text: decompress it first "
                              f"({what.split(' ', 1)[1].strip('()')})")
    return InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} is not UTF-8): "
                      "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _note_units(units_seen: set[str], path: Path, notes: list[str]) -> None:
    if units_seen:
        notes.append(f"{path}: epoch timestamps in {', '.join(sorted(units_seen))} were converted to seconds.")


def load_grad_log(path: Path, tz: tzinfo, notes: list[str] | None = None) -> Samples:
    notes = [] if notes is None else notes
    units_seen: set[str] = set()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_text(path, exc) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    times, cols = [], {k: [] for k in GRAD_FIELDS}
    pauses: list[tuple[float, float]] = []
    info: dict[str, str] = {}
    for where, rec in _grad_records(path, text, notes):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected an object, got {type(rec).__name__}")
        if "grad_norm" not in rec and "loss" not in rec:
            continue  # e.g. a run header or summary line in a JSON Lines log
        times.append(_record_time(rec, where, tz, units_seen))
        for name in GRAD_TEXT_FIELDS:
            if name not in info and rec.get(name) not in (None, ""):
                info[name] = str(rec[name])
        pert = rec.get("perturbation")
        if isinstance(pert, dict):  # a burst description rather than a flag: its presence means active
            rec = {**rec, "perturbation": bool(pert.get("active", True))}
        for col, key in GRAD_FIELDS.items():
            value = rec.get(key, _ABSENT)
            if isinstance(value, bool) and key in MEASURED_FIELDS:  # a flag logged under a measurement's name
                raise InputError(f"{where}: field {key!r} is {str(value).lower()}, not a number: the log must hold "
                                 f"the {key.replace('_', ' ')} itself")
            cols[col].append(_number(value, where, key, key == "grad_norm"))
        pause_s = cols["pause_s"][-1]
        if pause_s > 0 and rec.get("pause_start_unix") not in (None, ""):
            start = epoch_seconds(_number(rec["pause_start_unix"], where, "pause_start_unix", True), where,
                                  "pause_start_unix", units_seen)
            pauses.append((start, start + pause_s))
    if not times:
        raise InputError(f"{path}: no records with grad_norm")
    _note_units(units_seen, path, notes)
    out = Samples(np.asarray(times), {k: np.asarray(v, dtype=float) for k, v in cols.items()}, {"pause": pauses},
                  info)
    out.columns["step_duration"] = step_durations(out.t_s, out.columns["pause_s"])
    negative = int(np.count_nonzero(out.columns["grad_norm"] < 0))
    if negative:
        notes.append(f"{path}: {negative} negative gradient norm(s) (a norm is never negative: is grad_norm the "
                     "norm, or a logged difference or log?); analysed as they are")
    return out


GAP_STEPS = 10  # a silence this many typical steps long is lost log lines or a restart, not one slow step
# ... and at least this long: a loop of 10 ms steps on a busy machine stalls for 100-200 ms now and then (a
# collector, another process), and calling each such stall a silence left a user's 2.5-minute run with throughput
# on 46 of its 147 rows; lost lines or a restart that a grid of seconds would misread last longer
MIN_SILENCE_S = 1.0


def step_durations(t_s: np.ndarray, pause_s: np.ndarray) -> np.ndarray:
    """Seconds of each step: the time since the previous record, less the pause idled before it (the
    trainer times a step from the pause's end, as train_step_duration_seconds does); NaN for the first
    and after a gap of GAP_STEPS typical steps and MIN_SILENCE_S (lost lines or a restart are not one huge
    step)."""
    order = np.argsort(t_s, kind="stable")
    out = np.full(t_s.size, np.nan)
    dt = np.diff(t_s[order]) - np.nan_to_num(pause_s[order][1:], nan=0.0)
    typical = float(np.median(dt[dt > 0])) if (dt > 0).any() else 0.0
    ok = (dt > 0) & (dt <= max(GAP_STEPS * typical, MIN_SILENCE_S))
    out[order[1:]] = np.where(ok, dt, np.nan)
    return out


# Read when the CSV has them (the RLE lab's has util_pct; an exporter recording can add clocks and throttling):
# column -> (CSV columns accepted, factor to the table's unit).
OPTIONAL_RLE_COLUMNS = {"utilization": (("util_pct",), 0.01),
                        "sm_clock": (("sm_clock_hz",), 1.0), "sm_clock_mhz": (("sm_clock_mhz", "gpu_clock_mhz"), 1e6),
                        "sm_clock_max": (("sm_clock_max_hz",), 1.0),
                        "throttled": (("throttled", "throttle_active"), 1.0)}
# Every other device column series.csv names a file column for (its `offline`): required in the file.
RLE_COLUMNS = {s.column: s.offline for s in SERIES
               if s.source == "device" and s.offline and s.column not in OPTIONAL_RLE_COLUMNS}
# Device-wide text of the exporter's recording (--record): who the device is and what drives it.
DEVICE_TEXT_COLUMNS = ("uuid", "model", "kind", "backend", "heat_source", "host")


def _pick_device(path: Path, rows: list[tuple[int, dict]], wanted: str | None, logged_uuid: str = "",
                 notes: list[str] | None = None) -> str:
    """The `device` value to read: --device as a device label or a uuid (any case, with or without GPU-);
    without it, the GPU the step log names (its gpu_uuid), else `gpu`, the only GPU (a recording's `kind`
    column) or the only device. A choice the user did not make is said in `notes` where it could surprise: a
    device that is no GPU, or another than the step log names."""
    from thermograd.analysis.sources.devices import normalise_uuid

    notes = [] if notes is None else notes
    labels = {row["device"]: row for _, row in rows}  # label -> its first row

    def by_uuid(uuid: str) -> list[str]:
        return [d for d, row in labels.items()
                if row.get("uuid") and normalise_uuid(row["uuid"]) == normalise_uuid(uuid)]

    logged = by_uuid(logged_uuid) if logged_uuid else []
    if wanted is not None:
        chosen = wanted if wanted in labels else next(iter(by_uuid(wanted)), None)
        if chosen is None:
            raise InputError(f"{path}: device {wanted!r} not in the file (devices: {_listing(labels)})")
        if logged and chosen not in logged:
            notes.append(f"--device {wanted} analyses device {chosen}, but the step log says the run trained on "
                         f"{logged_uuid} (device {logged[0]} in {path.name}): the verdicts are about a GPU the job "
                         "did not use")
        return chosen
    if logged:
        return logged[0]
    gpus = [d for d, row in labels.items() if (row.get("kind") or "") == "gpu"]
    for choice in (["gpu"] if "gpu" in labels else [], gpus, list(labels)):
        if len(choice) == 1:
            chosen = choice[0]
            kind = labels[chosen].get("kind") or ("gpu" if chosen == "gpu" else "")
            if kind != "gpu":
                notes.append(f"analysing device {chosen} of {path.name}"
                             + (f" (kind {kind}: not a GPU)" if kind else " (the file does not say it is a GPU)")
                             + ", its only device" + ("" if len(labels) == 1 else " of that kind") + "; pick "
                             "another with --device")
            if logged_uuid and any(row.get("uuid") for row in labels.values()):
                notes.append(f"the step log says the run trained on {logged_uuid}, which is not in {path.name}; "
                             f"device {chosen} was analysed instead")
            return chosen
    if logged_uuid and any(row.get("uuid") for row in labels.values()):
        raise InputError(f"{path}: several devices ({_listing(labels)}), none of them the step log's GPU "
                         f"{logged_uuid}; pick one with --device")
    raise InputError(f"{path}: several devices ({_listing(labels)}); pick one with --device")


def _listing(labels: dict[str, dict]) -> str:
    return ", ".join(f"{d} ({row['uuid']})" if row.get("uuid") else d for d, row in sorted(labels.items()))


def _hardware_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and numbered rows of an RLE-lab CSV or a recording, checked for the columns read here."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            if not header:
                raise InputError(f"{path}: empty file (no header): a hardware CSV starts with a header line "
                                 "(docs/offline-files.md)")
            missing = [c for c in ("device", *RLE_COLUMNS.values()) if c not in header]
            if "timestamp" not in header and not any(c in header for c in EPOCH_FIELDS):
                missing.insert(0, "timestamp")
            if missing:
                delimiter = next((d for d in ";\t|" if d in header[0]), None) if len(header) == 1 else None
                raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}"
                                 + (f" (its header is one field with {delimiter!r} in it: the file must be "
                                    "comma-separated)" if delimiter else ""))
            rows = [(lineno, row) for lineno, row in enumerate(reader, start=2)]
        except UnicodeDecodeError as exc:
            raise not_text(path, exc) from None
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: not a readable CSV: {exc}") from None
    if not rows:
        raise InputError(f"{path}: a header and no rows: nothing was recorded")
    # The lab's monitor leaves trailing CPU-only columns off its GPU rows, so a short row is fine as long
    # as it reaches every column read here; one that does not is truncated (a file still being written).
    needed = [c for c in ("timestamp", *EPOCH_FIELDS, "device", *RLE_COLUMNS.values()) if c in header]
    for lineno, row in rows:
        if any(row.get(c) is None for c in needed):
            got = sum(v is not None for k, v in row.items() if k is not None)
            raise InputError(f"{path}:{lineno}: truncated row ({got} of the header's {len(header)} fields)")
    return header, rows


def _device_samples(path: Path, header: list[str], rows: list[tuple[int, dict[str, str]]], device: str,
                    tz: tzinfo, units_seen: set[str]) -> Samples:
    times, cols = [], {k: [] for k in RLE_COLUMNS}
    optional = {col: (next(c for c in names if c in header), factor)
                for col, (names, factor) in OPTIONAL_RLE_COLUMNS.items() if any(c in header for c in names)}
    for col in optional:
        cols[col] = []
    for lineno, row in rows:
        if row["device"] != device:
            continue
        where = f"{path}:{lineno}"
        if (epoch := epoch_field(row)) is not None:
            times.append(epoch_seconds(_number(row[epoch], where, epoch, True), where, epoch, units_seen))
        else:
            times.append(_text_time(row.get("timestamp") or "", where, "timestamp", tz, units_seen))
        for col, key in RLE_COLUMNS.items():
            cols[col].append(_number(row.get(key), where, key, False))
        for col, (key, factor) in optional.items():
            cols[col].append(_number(row.get(key), where, key, False) * factor)
    if not times:
        raise InputError(f"{path}: no rows for device {device!r}")
    arrays = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    mhz = arrays.pop("sm_clock_mhz", None)  # scaled to Hz on reading; a Hz column wins
    if mhz is not None:
        arrays.setdefault("sm_clock", mhz)
    first = next(row for _, row in rows if row["device"] == device)
    info = {name: first[name] for name in DEVICE_TEXT_COLUMNS if first.get(name)}
    return Samples(np.asarray(times), arrays, info=info)


def load_rle_csv(path: Path, device: str | None, tz: tzinfo, notes: list[str] | None = None,
                 logged_uuid: str = "") -> tuple[Samples, str]:
    """Rows of one device from an RLE-lab CSV (several devices per file): --device `device`, else the GPU the
    step log names (`logged_uuid`), else the file's only GPU (_pick_device); returns (samples, device)."""
    notes = [] if notes is None else notes
    units_seen: set[str] = set()
    header, rows = _hardware_rows(path)
    device = _pick_device(path, rows, device, logged_uuid, notes)
    samples = _device_samples(path, header, rows, device, tz, units_seen)
    _note_units(units_seen, path, notes)
    return samples, device


def load_hardware_devices(path: Path, tz: tzinfo, notes: list[str] | None = None) -> dict[str, Samples]:
    """Every device of a hardware CSV, by its uuid (or its device label where the file has no uuid column)."""
    notes = [] if notes is None else notes
    units_seen: set[str] = set()
    header, rows = _hardware_rows(path)
    out = {}
    for device in dict.fromkeys(row["device"] for _, row in rows):
        samples = _device_samples(path, header, rows, device, tz, units_seen)
        out[samples.info.get("uuid", device)] = samples
    _note_units(units_seen, path, notes)
    return out
