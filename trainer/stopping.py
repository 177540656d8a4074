"""Stopping the reference job on a signal: the first SIGINT/SIGTERM finishes the current step, the second
skips the linger. Its own module so that the command line (trainer/cli.py) and the job (trainer/job.py) share
it without importing each other."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable


class StopControl:
    """First SIGINT/SIGTERM: finish the current step (cutting a pause short), flush, linger. Second: skip
    the linger."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._on_first: list[Callable[[], None]] = []
        self._on_second: list[Callable[[], None]] = []

    def on_first_signal(self, callback: Callable[[], None]) -> None:
        self._on_first.append(callback)

    def on_second_signal(self, callback: Callable[[], None]) -> None:
        self._on_second.append(callback)

    def handle(self, signum: int, _frame: object) -> None:
        if not self.stop.is_set():
            self.stop.set()
            print(f"trainer: {signal.Signals(signum).name}: finishing the current step", file=sys.stderr, flush=True)
            for callback in self._on_first:
                callback()
            return
        for callback in self._on_second:
            callback()
