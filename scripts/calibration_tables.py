"""Regenerate the calibration and power tables of docs/method.md from a `bench/bench_calibration.py` result.

The tables sit between the markers `<!-- calibration-tables:begin -->` and `<!-- calibration-tables:end -->`;
everything between them is replaced by `bench_calibration.markdown(result)` (null kinds, planted couplings,
spike-triggered effects, directions, the throttle cost's coverage), so a table is never copied by hand. The
prose around them (ranges, caveats) is the author's and is not touched.

    python -m bench.bench_calibration --workers 2 > /tmp/calibration.json
    python -m scripts.calibration_tables /tmp/calibration.json            # rewrite docs/method.md
    python -m scripts.calibration_tables /tmp/calibration.json --check    # exit 1 if the page differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BEGIN = "<!-- calibration-tables:begin -->"
END = "<!-- calibration-tables:end -->"
PAGE = ROOT / "docs" / "method.md"


def replaced(page: str, tables: str) -> str:
    """`page` with the text between the markers replaced by `tables` (markers kept, one blank line each side)."""
    head, sep, rest = page.partition(BEGIN)
    _, sep_end, tail = rest.partition(END)
    if not sep or not sep_end:
        raise ValueError(f"the page has no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n\n{tables.strip()}\n\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="the JSON bench_calibration.py printed")
    parser.add_argument("--page", type=Path, default=PAGE, help="the page to update (default docs/method.md)")
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 if the page's tables differ")
    args = parser.parse_args(argv)
    from bench.bench_calibration import markdown  # the bench's own rendering: one source for the tables

    page = args.page.read_text(encoding="utf-8")
    new = replaced(page, markdown(json.loads(args.result.read_text(encoding="utf-8"))))
    if args.check:
        if new != page:
            print(f"{args.page}: the calibration tables differ from {args.result}", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(new, encoding="utf-8")
    print(f"{args.page}: calibration tables rewritten from {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
