"""The per-step JSON Lines log and, at close, the seed's `grad_norm_log.json` (a JSON array).

The training thread only enqueues a tuple (a C-level SimpleQueue put, well under a microsecond); a
writer thread formats the line and writes it line-buffered, so each step reaches the file within
milliseconds without the training loop ever waiting on disk.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# One record as enqueued by the training thread (formatting happens in the writer thread).
FIELDS = (
    "step", "loss", "grad_norm", "learning_rate", "epoch", "time_unix",
    "tokens", "clipped", "nonfinite", "perturbation",
)


def iso_utc(time_unix: float) -> str:
    """UTC ISO-8601 with an explicit offset, e.g. 2026-11-25T07:30:00.123456+00:00."""
    return datetime.fromtimestamp(time_unix, tz=UTC).isoformat(timespec="microseconds")


def _json_number(value: Any) -> Any:
    # JSON has no NaN/Infinity: a non-finite value is written as null (and `nonfinite` says why).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_record(record: tuple, run_id: str, rank: int) -> str:
    fields = dict(zip(FIELDS, record, strict=True))
    obj = {
        "step": fields["step"],
        "loss": _json_number(fields["loss"]),
        "grad_norm": _json_number(fields["grad_norm"]),
        "learning_rate": _json_number(fields["learning_rate"]),
        "epoch": _json_number(fields["epoch"]),
        "timestamp": iso_utc(fields["time_unix"]),
        "time_unix": round(fields["time_unix"], 6),
        "tokens": fields["tokens"],
        "clipped": fields["clipped"],
        "nonfinite": fields["nonfinite"],
        "perturbation": fields["perturbation"],
        "run_id": run_id,
        "rank": rank,
    }
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def log_paths(log_dir: Path, rank: int) -> tuple[Path, Path]:
    suffix = "" if rank == 0 else f".rank{rank}"
    return log_dir / f"steps{suffix}.jsonl", log_dir / f"grad_norm_log{suffix}.json"


class StepLog:
    """Append-only per-step log with a background writer; `close()` also writes the JSON array."""

    def __init__(self, log_dir: str | os.PathLike[str], run_id: str, rank: int) -> None:
        self.log_dir = Path(log_dir)
        self.jsonl_path, self.array_path = log_paths(self.log_dir, rank)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl_path.exists() and self.jsonl_path.stat().st_size > 0:
            # Never overwrite a previous run's measurements.
            raise FileExistsError(f"{self.jsonl_path} already holds a run's log; choose another log directory")
        self._run_id = run_id
        self._rank = rank
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._file = open(self.jsonl_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed by the writer)
        self._thread = threading.Thread(target=self._write_loop, name="trainer-steplog", daemon=True)
        self._thread.start()
        self._closed = False

    def append(self, record: tuple) -> None:
        """Called from the training loop: enqueue only (no formatting, no I/O)."""
        self._queue.put(record)

    def _write_loop(self) -> None:
        warned = False
        with self._file:
            while (record := self._queue.get()) is not None:
                try:
                    line = format_record(record, self._run_id, self._rank)
                except (TypeError, ValueError) as exc:  # e.g. a value json cannot serialise: skip it, go on
                    if not warned:
                        warned = True
                        print(f"trainer: step log {self.jsonl_path}: skipping a record that cannot be written "
                              f"({type(exc).__name__}: {exc}); further such records are skipped silently",
                              file=sys.stderr, flush=True)
                    continue
                self._file.write(line + "\n")

    def close(self) -> None:
        """Drain the queue, close the JSON Lines file and write `grad_norm_log.json` from it."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        write_json_array(self.jsonl_path, self.array_path)


def write_json_array(jsonl_path: Path, array_path: Path) -> None:
    """Stream the JSON Lines file into a JSON array (constant memory; atomic replace)."""
    tmp = array_path.with_name(array_path.name + ".tmp")
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
