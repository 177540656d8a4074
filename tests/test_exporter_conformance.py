"""Conformance with the RLE lab's reference monitor on its own recording, and `thermograd-exporter recompute`."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thermograd.exporter.engine import RleEngine
from thermograd.exporter.labcsv import iter_rows

# device -> (rated power W, temperature limit °C) the lab's monitor ran with (../shared/data/README.md)
LAB_SETTINGS = {"gpu": (200.0, 83.0), "cpu": (125.0, 80.0)}
# reference column -> (engine attribute, absolute floor). The monitor printed these four with %.6f, so a
# value like 0.000412 carries only three significant digits: its rounding (up to 5e-7) is allowed on top
# of the 1e-3 relative error. t_sustain_s was printed with %.1f and gets no floor (strictly relative).
COLUMNS = {"rle_raw": ("rle_raw", 5e-7), "rle_smoothed": ("rle_smoothed", 5e-7), "E_th": ("e_th", 5e-7),
           "E_pw": ("e_pw", 5e-7), "t_sustain_s": ("sustain_s", 0.0)}
REL_TOL = 1e-3


def _close(mine: float, reference: float, floor: float) -> bool:
    return abs(mine - reference) <= max(REL_TOL * abs(reference), floor)


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_engine_reproduces_the_lab_monitor(rle_lab_csv: Path, device: str):
    rated_w, limit_c = LAB_SETTINGS[device]
    engine = RleEngine(rated_w, limit_c)
    matches = dict.fromkeys(COLUMNS, 0)
    late_misses = []
    rows = list(iter_rows(rle_lab_csv, device=device))
    for i, row in enumerate(rows):
        result = engine.update(row.timestamp_s, row.util_pct, row.power_w, row.temp_c)
        for column, (attr, floor) in COLUMNS.items():
            mine, reference = getattr(result, attr), float(row.fields[column])
            ok = _close(mine, reference, floor)
            matches[column] += ok
            # The file begins mid-run: RLE_smoothed of row i depends on utilization rows i-13..i, so from
            # row 13 on every miss can only be the %.1f rounding of t_sustain_s.
            if not ok and i >= 13 and not (column == "t_sustain_s" and abs(mine - reference) <= 0.05):
                late_misses.append((row.line, column, reference, mine))
    assert len(rows) == 2160  # one hour at 1 Hz
    fractions = {column: n / len(rows) for column, n in matches.items()}
    assert all(f >= 0.99 for f in fractions.values()), fractions
    assert late_misses == []
    # the monitor restarted once (4.6 s gap): the engine saw the file's segment and the restarted one
    assert engine.segments == 2


def _recompute(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thermograd.exporter", "recompute", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_recompute_adds_tg_columns(rle_lab_csv: Path, tmp_path: Path):
    out = tmp_path / "scored.csv"
    proc = _recompute("--csv", rle_lab_csv, "--device", "cpu", "--rated-power", 125, "--temp-limit", 80,
                      "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2160 and {r["device"] for r in rows} == {"cpu"}
    tg = ["tg_rle_raw", "tg_rle_smoothed", "tg_e_th", "tg_e_pw", "tg_t_sustain_s", "tg_rolling_peak", "tg_collapsed"]
    assert list(rows[0])[-7:] == tg
    with open(rle_lab_csv, newline="") as fh:
        assert list(rows[0])[:-7] == next(csv.reader(fh))  # every input column kept, in order
    same = sum(_close(float(r["tg_rle_raw"]), float(r["rle_raw"]), 5e-7) for r in rows)
    assert same / len(rows) >= 0.99
    assert {r["tg_collapsed"] for r in rows} <= {"0", "1"}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


HEADER = "timestamp,device,util_pct,temp_c,power_w"


def test_recompute_restarts_state_at_a_gap(tmp_path: Path):
    lines = [HEADER] + [f"{t},gpu,{50 + 10 * (t % 2)},{60 + t},100" for t in range(8)]
    lines.append("12,gpu,50,70,100")  # 5 s after the previous row: the recorder restarted
    out = tmp_path / "out.csv"
    proc = _recompute("--csv", _write(tmp_path / "in.csv", lines), "--device", "gpu", "--rated-power", 200,
                      "--temp-limit", 83, "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[7]["tg_t_sustain_s"]) < 600  # heating 1 °C/s before the gap
    assert float(rows[8]["tg_t_sustain_s"]) == 600  # a fresh start has no previous temperature
    assert rows[8]["tg_rle_smoothed"] == rows[8]["tg_rle_raw"]
    assert "2 segment(s)" in proc.stderr


def test_recompute_scores_rows_without_power_like_the_lab_and_says_so(tmp_path: Path):
    # The lab's 2025-10-27 PC session logs its CPU rows with an empty power_w;
    # its monitor scored them as 0 W: util 49 % -> E_pw = 0.49 / 1e-3 = 490, rle_raw = 489.184692.
    lines = [HEADER, "2025-10-27T09:04:30.204129Z,cpu,49.00,,", "2025-10-27T09:04:31.206949Z,cpu,11.90,,"]
    out = tmp_path / "out.csv"
    proc = _recompute("--csv", _write(tmp_path / "in.csv", lines), "--device", "cpu", "--rated-power", 125,
                      "--temp-limit", 80, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "2 cpu row(s) have no power_w" in proc.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["tg_e_pw"]) == pytest.approx(490.0)
    assert float(rows[0]["tg_rle_raw"]) == pytest.approx(489.184692, rel=1e-6)
    assert rows[0]["power_w"] == ""  # the input columns pass through untouched


def test_naive_lab_timestamps_are_utc(monkeypatch):
    from thermograd.timestamps import parse_time_s

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_time_s("2025-10-29T00:54:13.5")[0] == parse_time_s("2025-10-29T00:54:13.5Z")[0] == 1761699253.5
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("times", [
    ("2025-10-29T00:54:13.5Z", "2025-10-29T00:54:14.5Z"),  # ISO with Z
    ("2025-10-29T01:54:13.5+01:00", "2025-10-29T00:54:14.5"),  # an offset; a naive time is UTC
    ("1761699253.5", "1761699254.5"),  # Unix seconds
    ("1761699253500", "1761699254500"),  # Unix milliseconds
])
def test_the_replay_and_the_analysis_read_a_files_times_alike(tmp_path, times):
    """One file, two readers (the exporter's replay and recompute; the offline analysis): the same instants."""
    from datetime import UTC

    from thermograd.analysis.files.readers import load_rle_csv

    path = tmp_path / "lab.csv"
    rows = [f"{t},gpu,50,150,60,0.5,0.5,0" for t in times]
    path.write_text("timestamp,device,util_pct,power_w,temp_c,rle_smoothed,a_load,collapse\n" + "\n".join(rows) + "\n")
    replayed = [row.timestamp_s for row in iter_rows(path)]
    analysed = list(load_rle_csv(path, None, UTC)[0].t_s)
    assert replayed == pytest.approx(analysed, abs=1e-6) and replayed == pytest.approx([1761699253.5, 1761699254.5])


def test_an_epoch_column_wins_over_naive_local_text_in_both_readers(tmp_path):
    """The RLE lab's timestamp_shared (epoch) beside a naive local timestamp: both readers take the epoch."""
    from datetime import UTC

    from thermograd.analysis.files.readers import load_rle_csv

    path = tmp_path / "lab.csv"
    path.write_text("timestamp,timestamp_shared,device,util_pct,power_w,temp_c,rle_smoothed,a_load,collapse\n"
                    "2025-10-28T20:54:13.5,1761699253.5,gpu,50,150,60,0.5,0.5,0\n")
    assert [row.timestamp_s for row in iter_rows(path)] == list(load_rle_csv(path, None, UTC)[0].t_s) == [1761699253.5]


@pytest.mark.parametrize(("bad_line", "column"), [
    ("2,gpu,abc,61,100", "util_pct"),
    ("2,gpu,50,61,lots", "power_w"),
    ("yesterday,gpu,50,61,100", "timestamp"),
    ("2,gpu,50,nan,100", "temp_c"),
])
def test_recompute_malformed_csv_names_file_line_and_column(tmp_path: Path, bad_line: str, column: str):
    src = _write(tmp_path / "bad.csv", [HEADER, "1,gpu,50,60,100", bad_line])
    out = tmp_path / "out.csv"
    proc = _recompute("--csv", src, "--device", "gpu", "--rated-power", 200, "--temp-limit", 83, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(src) in lines[0] and "line 3" in lines[0] and column in lines[0]
    assert not out.exists()


def test_recompute_rejects_missing_column_and_bad_power(tmp_path: Path):
    src = _write(tmp_path / "nocol.csv", ["timestamp,device,util_pct,power_w", "1,gpu,50,100"])
    proc = _recompute("--csv", src, "--device", "gpu", "--rated-power", 200, "--temp-limit", 83,
                      "--out", tmp_path / "o.csv")
    assert proc.returncode == 2 and "line 1" in proc.stderr and "temp_c" in proc.stderr
    proc = _recompute("--csv", src, "--device", "gpu", "--rated-power", 0, "--temp-limit", 83,
                      "--out", tmp_path / "o.csv")
    assert proc.returncode == 2 and "--rated-power" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_recompute_unreadable_input_or_output_is_one_line_exit_2(tmp_path: Path):
    good = _write(tmp_path / "in.csv", [HEADER, "1,gpu,50,60,100"])
    for csv_path, out, expected in ((tmp_path / "nope.csv", tmp_path / "o.csv", "cannot read"),
                                    (tmp_path, tmp_path / "o.csv", "cannot read"),
                                    (good, tmp_path / "missing-dir" / "o.csv", "cannot write")):
        proc = _recompute("--csv", csv_path, "--device", "gpu", "--rated-power", 200, "--temp-limit", 83,
                          "--out", out)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not list((tmp_path).glob("*.tmp"))
