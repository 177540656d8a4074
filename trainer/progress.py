"""Progress display: an updating one-line bar on a terminal, plain lines (≤ 1 per 2 s) otherwise."""

from __future__ import annotations

import shutil
import time
from typing import TextIO


def format_status(step: int, total: int, loss: float, grad_norm: float, lr: float, tokens_per_s: float) -> str:
    return (
        f"step {step}/{total} loss {loss:.4f} grad_norm {grad_norm:.4g} "
        f"lr {lr:.3g} {tokens_per_s:,.0f} tok/s"
    )


class Progress:
    def __init__(self, total_steps: int, stream: TextIO, plain_interval_s: float = 2.0) -> None:
        self.total = total_steps
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.plain_interval_s = plain_interval_s
        self._last_print_s = -float("inf")
        self._drawn = False

    def update(self, step: int, loss: float, grad_norm: float, lr: float, tokens_per_s: float, note: str = "") -> None:
        status = format_status(step, self.total, loss, grad_norm, lr, tokens_per_s) + (f" {note}" if note else "")
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            bar_width = max(10, min(30, width - len(status) - 4))
            filled = int(bar_width * step / max(1, self.total))
            line = f"[{'#' * filled}{'.' * (bar_width - filled)}] {status}"
            self.stream.write("\r" + line[: width - 1].ljust(width - 1))
            self.stream.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if step in (1, self.total) or note or now - self._last_print_s >= self.plain_interval_s:
            self._last_print_s = now
            print(f"trainer: {status}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line that must not be overwritten by the bar (warnings)."""
        self.close()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
