"""`thermograd-exporter recompute`: re-score an RLE-lab recording with thermograd's engine."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from thermograd.exporter.engine import RleConfig, RleEngine, RleResult
from thermograd.exporter.labcsv import LabRow, iter_rows, read_header

OUTPUT_COLUMNS = ("tg_rle_raw", "tg_rle_smoothed", "tg_e_th", "tg_e_pw", "tg_t_sustain_s",
                  "tg_rolling_peak", "tg_collapsed")


def score(rows: Iterable[LabRow], engine: RleEngine) -> Iterator[tuple[LabRow, RleResult]]:
    """Feeds rows through the engine in order; a timestamp gap restarts its state (inside the engine).

    A row without a power reading is scored as 0 W, as the lab's monitor did (A_load then sits on its
    1e-3 floor, which inflates E_pw and RLE): re-scoring reproduces the recording, and `run` says so.
    """
    for row in rows:
        power_w = 0.0 if row.power_w is None else row.power_w
        yield row, engine.update(row.timestamp_s, row.util_pct, power_w, row.temp_c)


def _engine_columns(result: RleResult) -> list[str]:
    return [f"{result.rle_raw:.9g}", f"{result.rle_smoothed:.9g}", f"{result.e_th:.9g}", f"{result.e_pw:.9g}",
            f"{result.sustain_s:.9g}", f"{result.rolling_peak:.9g}", str(int(result.collapsed))]


def same_file(a: Path, b: Path) -> bool:
    """The same file by any name: one path, a relative one, a symlink or a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def run(args: argparse.Namespace, config: RleConfig) -> int:
    src, out = Path(args.csv), Path(args.out)
    if same_file(src, out):
        # OUT keeps only the --device rows: writing it over the input would delete the other devices'.
        raise ValueError(f"--out {out} is the input --csv {src}; refusing to overwrite the recording "
                         "(choose another --out)")
    header = read_header(src)
    engine = RleEngine(args.rated_power, args.temp_limit, args.interval_s, config)
    # Read and score everything before writing, so a malformed line leaves no half-written output.
    scored = list(score(iter_rows(src, device=args.device), engine))
    if not scored:
        raise ValueError(f"{src}: no rows with device {args.device!r}")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*header, *OUTPUT_COLUMNS])
            for row, result in scored:
                writer.writerow([*(row.fields.get(c, "") for c in header), *_engine_columns(result)])
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    no_power = sum(row.power_w is None for row, _ in scored)
    if no_power:
        print(f"recompute: warning: {no_power} {args.device} row(s) have no power_w; scored as 0 W like the lab's "
              f"monitor (A_load at its {config.load_floor:g} floor, so E_pw and RLE are inflated there)",
              file=sys.stderr)
    print(f"recompute: {len(scored)} {args.device} rows, {engine.segments} segment(s), "
          f"{engine.collapse_events} collapse event(s) -> {out}", file=sys.stderr)
    return 0
