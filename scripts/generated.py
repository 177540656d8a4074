"""Generated, committed files: write them, or check that the committed ones are current.

Shared by scripts/build_dashboards.py, scripts/build_k8s.py, scripts/build_longterm.py, scripts/build_local.py
and scripts/build_tls_config.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(outputs: dict[Path, str], *, check: bool, script: str) -> int:
    """Write every file (check=False) or report the stale ones on stderr and return 1 (check=True).

    `script` is the generator's module (`scripts.build_k8s`): the fix printed is `python -m` with it."""
    stale = []
    for path, text in outputs.items():
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run python -m {script}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


def build_command(outputs: Callable[[], dict[Path, str]], *, description: str, script: str,
                  argv: list[str] | None = None) -> int:
    """A build script's command line: write its files, or (--check) exit 1 when a committed one is stale."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    return write_or_check(outputs(), check=args.check, script=script)
