"""`--record FILE.csv`: every sample of every device written as it is taken, in the hardware CSV format.

The format (docs/offline-files.md) is the RLE lab's monitor CSV as a subset — `timestamp`, `device`,
`util_pct`, `temp_c`, `power_w`, `a_load`, `rle_raw`, `rle_smoothed`, `E_th`, `E_pw`, `t_sustain_s`,
`fan_pct`, `rolling_peak`, `collapse` mean what the lab's mean — plus what the analysis and a reader need to
know what was measured: Unix time, the device's uuid, model, kind and backend, what heats a simulated card,
the rated power, clocks, memory, energy and the clock-event (throttle) reasons. `thermograd-analysis
--rle-csv` and the replay backend read it directly.

Each sampling round is one `os.write` of complete lines (a few µs in the sampler's thread, on disk within
the round: well inside the promised second). A failed write (disk full) is cut back to the last complete
line, warned about once and counted in `rle_exporter_errors_total{op="record"}`; serving goes on.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from thermograd.exporter.backends.base import THROTTLE_REASONS
from thermograd.exporter.sampler import DeviceSample, Snapshot

log = logging.getLogger(__name__)

# The columns, in order. Empty means "not offered by this device" (never 0).
COLUMNS = (
    "timestamp", "time_unix", "host", "device", "uuid", "model", "kind", "backend", "heat_source",
    "util_pct", "temp_c", "power_w", "power_limit_w", "a_load",
    "rle_raw", "rle_smoothed", "E_th", "E_pw", "t_sustain_s", "rolling_peak", "collapse",
    "fan_pct", "sm_clock_hz", "sm_clock_max_hz", "memory_clock_hz", "memory_used_bytes", "memory_total_bytes",
    "energy_j", "throttled", "clock_event_reasons",
)
# The reasons that mean the device is slowed by heat or power (the analysis's `throttled`, the
# `throttled` column): idle, application clocks, sync boost and display clocks are not a slowdown.
SLOWDOWN_REASONS = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


class RecordError(ValueError):
    """The recording cannot be started (one line, exit 2)."""


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


HOST = socket.gethostname()


def _row(sample: DeviceSample, wall_s: float) -> list[str]:
    info, reading, result = sample.info, sample.reading, sample.result
    throttle = reading.throttle
    active = [r for r in THROTTLE_REASONS if throttle and throttle.get(r)]
    return [
        datetime.fromtimestamp(wall_s, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        f"{wall_s:.6f}", HOST, info.device, info.uuid, info.model, info.kind, info.backend, info.heat_source,
        _num(reading.util_pct), _num(reading.temp_c), _num(reading.power_w), _num(sample.rated_power_w),
        _num(None if result is None else result.load_ratio),
        *(("",) * 6 if result is None else (_num(result.rle_raw), _num(result.rle_smoothed), _num(result.e_th),
                                              _num(result.e_pw), _num(result.sustain_s), _num(result.rolling_peak))),
        "" if result is None else str(int(result.collapsed)),
        _num(None if reading.fan_ratio is None else 100.0 * reading.fan_ratio),
        _num(reading.sm_clock_hz, 8), _num(info.max_sm_clock_hz, 8), _num(reading.memory_clock_hz, 8),
        _num(reading.memory_used_bytes, 12), _num(reading.memory_total_bytes, 12), _num(reading.energy_j, 12),
        "" if throttle is None else str(int(any(throttle.get(r) for r in SLOWDOWN_REASONS))),
        "|".join(active),
    ]


class HardwareRecorder:
    """Appends each snapshot's devices to a CSV that did not exist before (never overwrites one)."""

    def __init__(self, path: Path, count_error: Callable[[str, str], None] | None = None) -> None:
        self.path = Path(path)
        self._count_error = count_error
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise RecordError(f"--record {self.path}: the file exists and a recording is never overwritten; "
                              "choose another file name") from None
        except OSError as exc:
            raise RecordError(f"--record {self.path}: cannot create it: {exc.strerror or exc}") from None
        self._size = 0  # bytes of complete lines on disk
        self._warned = False
        self.rows = 0
        self._write(self._lines([list(COLUMNS)]))

    @staticmethod
    def _lines(rows: list[list[str]]) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        return text.getvalue().encode()

    def __call__(self, snapshot: Snapshot) -> None:
        """The sampler's on_sample hook: one write per round."""
        if self._fd < 0 or not snapshot.devices or snapshot.wall_s is None:
            return
        rows = [_row(sample, snapshot.wall_s) for sample in snapshot.devices]
        if self._write(self._lines(rows)):
            self.rows += len(rows)

    def _write(self, data: bytes) -> bool:
        written = 0
        try:
            while written < len(data):
                n = os.write(self._fd, data[written:])
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
            self._size += written
            return True
        except OSError as exc:
            error = exc
        if self._count_error is not None:
            self._count_error("", "record")
        if not self._warned:
            self._warned = True
            log.warning("cannot write the recording %s (%s); serving goes on, rounds that cannot be written are "
                        "dropped and counted in rle_exporter_errors_total{op=\"record\"} (warned once)",
                        self.path, error.strerror or error)
        with contextlib.suppress(OSError):  # never a partial line: cut back to the last complete one
            os.ftruncate(self._fd, self._size)
        return False

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
