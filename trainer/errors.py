"""Exceptions that map to the CLI's exit codes (2: bad input, 3: training diverged)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input the user can fix (port in use, missing data, unloadable model): one line, exit 2."""

    exit_code = 2


class NonFiniteAbort(Exception):
    """Too many consecutive non-finite steps: the run is diverging, exit 3."""

    exit_code = 3
