"""Exceptions that map to the CLI's exit codes (2: bad input, 3: training diverged)."""

from __future__ import annotations

from thermograd.commandline import UsageError  # noqa: F401 (bad input: port in use, missing data, a bad model)


class NonFiniteAbort(Exception):
    """Too many consecutive non-finite steps: the run is diverging, exit 3."""

    exit_code = 3
