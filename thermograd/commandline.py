"""What every thermograd command line shares: bad input is one line on stderr and exit status 2.

argparse's own error() prints the whole usage block and exits from inside the parser; `OneLineParser` raises
`UsageError` instead, and each command prints `<prog>: error: <message>` once and returns 2.
"""

from __future__ import annotations

import argparse
import os
import sys


class UsageError(Exception):
    """Bad input the user can fix (a flag, a file, a port in use): one line on stderr, exit 2."""

    exit_code = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError with argparse's message (no usage block, no exit of its own)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def internal_error(prog: str, exc: Exception) -> int:
    """A bug, not bad input: one line naming it and how to see the traceback (THERMOGRAD_DEBUG=1 re-raises),
    exit status 1. Call from a command's last `except Exception`."""
    if os.environ.get("THERMOGRAD_DEBUG"):
        raise exc
    print(f"{prog}: internal error: {type(exc).__name__}: {exc} (set THERMOGRAD_DEBUG=1 for details)",
          file=sys.stderr)
    return 1
