"""The per-step JSON Lines log and, at close, the seed's `grad_norm_log.json` (a JSON array).

The training thread only enqueues a tuple (a non-blocking put on a bounded queue, about a
microsecond); a writer thread formats the line and writes it with one system call, so each step
reaches the file within milliseconds without the training loop ever waiting on disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from thermograd.timestamps import iso_utc

# One record as enqueued by the training thread (formatting happens in the writer thread).
FIELDS = (
    "step", "loss", "grad_norm", "learning_rate", "epoch", "time_unix",
    "tokens", "clipped", "nonfinite", "perturbation", "pause_s", "pause_start_unix",
    "compute_s", "wait_s", "gpu_uuid", "emulation",
)


def _json_number(value: Any) -> Any:
    # JSON has no NaN/Infinity: a non-finite value is written as null (and `nonfinite` says why).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def format_record(record: tuple, run_id: str, rank: int) -> str:
    """One JSON line. A record of an earlier, shorter layout (no compute_s, wait_s, gpu_uuid) reads as unknown."""
    if len(record) > len(FIELDS):
        raise ValueError(f"a step record has {len(record)} fields, at most {len(FIELDS)}")
    fields = dict(zip(FIELDS, (*record, *(None,) * (len(FIELDS) - len(record))), strict=True))
    obj = {
        "step": fields["step"],
        "loss": _json_number(fields["loss"]),
        "grad_norm": _json_number(fields["grad_norm"]),
        "learning_rate": _json_number(fields["learning_rate"]),
        "epoch": _json_number(fields["epoch"]),
        "timestamp": iso_utc(fields["time_unix"], timespec="microseconds", zulu=False),
        "time_unix": round(fields["time_unix"], 6),
        "tokens": fields["tokens"],
        "clipped": fields["clipped"],
        "nonfinite": fields["nonfinite"],
        "perturbation": fields["perturbation"],
        "pause_s": round(fields["pause_s"], 6),
        "pause_start_unix": None if fields["pause_start_unix"] is None else round(fields["pause_start_unix"], 6),
        "compute_s": _rounded(fields["compute_s"]),
        "wait_s": _rounded(fields["wait_s"]),
        "gpu_uuid": fields["gpu_uuid"] or "",
        "run_id": run_id,
        "rank": rank,
    }
    if fields["emulation"]:  # only on a run that emulates (trainer/emulation.py): said on every line
        obj["emulation"] = fields["emulation"]
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def log_paths(log_dir: Path, rank: int) -> tuple[Path, Path]:
    suffix = "" if rank == 0 else f".rank{rank}"
    return log_dir / f"steps{suffix}.jsonl", log_dir / f"grad_norm_log{suffix}.json"


class LogExistsError(FileExistsError):
    """The log folder already holds a run's log, which is never overwritten; the message says how to go on."""

    def __init__(self, path: Path, fix: str = "give each run a folder of its own ('{run_id}' in the folder's "
                 "name is replaced by the run's id)") -> None:
        super().__init__(errno.EEXIST, f"{path} already holds a run's log, and a run's log is never overwritten: {fix}")
        self.path = path


MAX_QUEUED = 100_000  # records (~100 B each): minutes of steps at any speed; past that, drop and count
FLUSH_TIMEOUT_S = 30.0  # flush() waits this long at most: a writer stuck on a dead disk must not hold training


class StepLog:
    """Append-only per-step log with a background writer; `close()` also writes the JSON array.

    Built to lose as little as possible and never the run: the queue is bounded (a record that does
    not fit is dropped and counted); a failed write (disk full, I/O error) is cut back to the last
    complete line, warned about once and counted, and the writer goes on with the next record; `close()`
    never raises for I/O. So `steps.jsonl` holds only complete lines, whatever happened.
    """

    def __init__(self, log_dir: str | os.PathLike[str], run_id: str, rank: int,
                 max_queued: int = MAX_QUEUED) -> None:
        self.log_dir = Path(log_dir)
        self.jsonl_path, self.array_path = log_paths(self.log_dir, rank)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.jsonl_path, self.array_path):
            if path.exists() and path.stat().st_size > 0:
                # Never overwrite a previous run's measurements (either file is one).
                raise LogExistsError(path)
        self._run_id = run_id
        self._rank = rank
        self._queue: queue.Queue[tuple | threading.Event | None] = queue.Queue(max_queued)
        # Records not on disk, one counter per thread that drops (so neither `+=` races the other).
        self._dropped_full = 0  # training thread: the queue was full
        self._dropped_io = 0  # writer thread: the write failed
        self._warned: set[str] = set()
        # O_APPEND + one os.write per line: a line is on disk whole, or cut back with ftruncate.
        self._fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._size = 0  # bytes of complete lines in the file
        self._thread = threading.Thread(target=self._write_loop, name="trainer-steplog", daemon=True)
        self._thread.start()
        self._closed = False

    def append(self, record: tuple) -> None:
        """Called from the training loop: enqueue only (no formatting, no I/O, never blocks)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped_full += 1
            self._warn_once("full", f"more than {self._queue.maxsize} records waiting for the disk; dropping "
                            "records (counted in train_log_records_dropped_total)")

    @property
    def dropped(self) -> int:
        return self._dropped_full + self._dropped_io

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(f"trainer: warning: step log {self.jsonl_path}: {text}", file=sys.stderr, flush=True)

    def _write_loop(self) -> None:
        try:
            while (record := self._queue.get()) is not None:
                if isinstance(record, threading.Event):  # flush(): everything queued before it is written
                    record.set()
                    continue
                try:
                    line = format_record(record, self._run_id, self._rank)
                except Exception as exc:  # noqa: BLE001 - a value json (or a clock) cannot render: skip it, go on.
                    # Any exception must be caught here: a dead writer would leave the queue full and close()
                    # waiting forever for room, so the trainer would never exit.
                    self._warn_once("record", f"skipping a record that cannot be written ({type(exc).__name__}: "
                                    f"{exc}); further such records are skipped silently")
                    continue
                self._write_line((line + "\n").encode())
        finally:
            os.close(self._fd)

    def _write_line(self, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):  # a short write is retried: the retry names the reason (ENOSPC)
                n = os.write(self._fd, data[written:])
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
            self._size += written
            return
        except OSError as exc:
            error = exc
        self._dropped_io += 1
        self._warn_once("io", f"cannot write ({error.strerror or error}); training goes on, records are dropped "
                        "and counted in train_log_records_dropped_total until writing works again")
        with contextlib.suppress(OSError):  # no partial line left behind (truncating frees, never needs space)
            os.ftruncate(self._fd, self._size)

    def flush(self) -> None:
        """Wait until every record appended so far is written, then write `grad_norm_log.json` from the log;
        the log stays open. Never raises for I/O (like close())."""
        if self._closed:
            return
        done = threading.Event()
        try:
            self._queue.put(done, timeout=FLUSH_TIMEOUT_S)
        except queue.Full:
            return
        if done.wait(FLUSH_TIMEOUT_S):
            self._write_array()

    def close(self) -> None:
        """Drain the queue, close the JSON Lines file and write `grad_norm_log.json` from it."""
        if self._closed:
            return
        self._closed = True
        # Blocks only while the queue is full and the writer drains it; a writer that died cannot drain it,
        # and then nothing more can be written anyway.
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self.dropped:
            print(f"trainer: warning: step log {self.jsonl_path}: {self.dropped} record(s) could not be written",
                  file=sys.stderr, flush=True)
        self._write_array()

    def _write_array(self) -> None:
        try:
            write_json_array(self.jsonl_path, self.array_path)
        except OSError as exc:
            print(f"trainer: warning: cannot write {self.array_path}: {exc.strerror or exc} "
                  f"({self.jsonl_path} is complete)", file=sys.stderr, flush=True)


def write_json_array(jsonl_path: Path, array_path: Path) -> None:
    """Stream the JSON Lines file into a JSON array (constant memory; atomic replace)."""
    tmp = array_path.with_name(array_path.name + ".tmp")
    try:
        with open(jsonl_path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            dst.write("[")
            first = True
            for line in src:
                line = line.strip()
                if not line:
                    continue
                dst.write("\n  " if first else ",\n  ")
                dst.write(line)
                first = False
            dst.write("\n]\n" if not first else "]\n")
        os.replace(tmp, array_path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a stale half-written temporary file
        raise
