"""The training corpus: text files found at run time, and seeded fixed-length windows over it.

With no `--data`, the corpus is the Python standard library's own `.py` sources on this machine
(`sysconfig.get_paths()["stdlib"]`): real text, present everywhere Python is, nothing downloaded and
nothing committed. File order is sorted, so a given machine and seed always see the same data.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from thermograd.trainer.errors import UsageError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(folder: Path, pattern: str) -> Iterator[Path]:
    for path in sorted(folder.rglob(pattern)):
        rel = path.relative_to(folder).parts
        if any(part in _SKIP_DIRS or part.startswith(".") for part in rel[:-1]) or not path.is_file():
            continue
        yield path


def corpus_files(paths: list[str] | None) -> list[Path]:
    """Files of the corpus in a deterministic order; a missing --data path is a UsageError."""
    if not paths:
        return list(_walk(stdlib_dir(), "*.py"))
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_walk(path, "*"))
        else:
            raise UsageError(f"--data path not found: {raw}")
    return files


def _is_text(head: bytes) -> bool:
    return b"\0" not in head


def read_documents(files: list[Path], max_bytes: int) -> list[bytes]:
    """Read text files in order until `max_bytes` (binary and unreadable files are skipped)."""
    documents: list[bytes] = []
    total = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data.strip() or not _is_text(data[:8192]):
            continue
        documents.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return documents


def corpus_byte_budget(steps: int, batch_size: int, seq_len: int) -> int:
    """Read ~4 bytes per token the run will see (several epochs' worth of variety), 1–32 MiB."""
    return int(min(32 << 20, max(1 << 20, 4 * steps * batch_size * seq_len)))


class WindowSampler:
    """Non-overlapping windows of `seq_len` tokens, visited in a seeded random order, epoch by epoch."""

    def __init__(self, n_tokens: int, seq_len: int, batch_size: int, seed: int) -> None:
        self.n_windows = n_tokens // seq_len
        if self.n_windows < batch_size:
            raise UsageError(
                f"corpus too small: {n_tokens} tokens make {self.n_windows} windows of {seq_len}; "
                f"need at least --batch-size={batch_size}"
            )
        self.seq_len = seq_len
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(self.n_windows)
        self._pos = 0
        self.windows_seen = 0

    def next_starts(self) -> np.ndarray:
        """Token offsets of the next batch's windows."""
        if self._pos + self.batch_size > self.n_windows:
            self._order = self._rng.permutation(self.n_windows)
            self._pos = 0
        chosen = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        self.windows_seen += self.batch_size
        return chosen * self.seq_len

    @property
    def epoch(self) -> float:
        return self.windows_seen / self.n_windows

    def batch(self, tokens: np.ndarray) -> np.ndarray:
        starts = self.next_starts()
        return tokens[starts[:, None] + np.arange(self.seq_len)]
