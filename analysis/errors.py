"""The one exception the CLI turns into a one-line message and exit status 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user or a backend: reported as one line on stderr, exit 2."""
