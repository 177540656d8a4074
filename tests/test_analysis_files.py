"""Offline mode: the seed's JSON, the trainer's JSON Lines, RLE-lab CSVs, time zones, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from thermograd.analysis.errors import InputError
from thermograd.analysis.files.grid import throughput_on_grid
from thermograd.analysis.files.readers import load_grad_log, load_rle_csv, step_durations
from thermograd.analysis.timeparse import get_tz

CSV_HEADER = ("timestamp,device,rle_smoothed,rle_raw,rle_norm,E_th,E_pw,temp_c,vram_temp_c,power_w,util_pct,"
              "a_load,t_sustain_s,fan_pct,rolling_peak,collapse,alerts,cpu_freq_ghz,cycles_per_joule")
T0 = datetime(2025, 10, 28, 8, 0, 0, tzinfo=UTC)
PAIR_NAMES = {"grad_norm", "loss", "rle", "temperature", "power", "a_load"}


def write_csv(path: Path, n: int, seed: int = 0, start: datetime = T0) -> Path:
    """An RLE-lab style CSV with a gpu and a cpu row per second; the GPU warms up (a shared trend)."""
    rng = np.random.default_rng(seed)
    lines = [CSV_HEADER]
    temp = 50 + 25 * (1 - np.exp(-np.arange(n) / 400)) + np.cumsum(rng.normal(0, 0.1, n))
    for i in range(n):
        stamp = (start + timedelta(seconds=i, microseconds=408689)).isoformat().replace("+00:00", "Z")
        power = 150 + rng.normal(0, 5)
        collapse = int(i % 300 in (100, 101))
        lines.append(f"{stamp},gpu,{0.5 + rng.normal(0, 0.05):.6f},0.1,0.1,0.1,0.6,{temp[i]:.2f},,{power:.2f},60,"
                     f"{power / 200:.3f},600.0,76,0.17,{collapse},")
        lines.append(f"{stamp},cpu,{0.3 + rng.normal(0, 0.05):.6f},0.2,0.2,0.2,1.0,,,{20 + rng.normal(0, 1):.2f},"
                     "13.1,0.131,600.0,,0.54,0,,2.496,1.5e+08")
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_log(n_steps: int, start: datetime = T0, seconds_per_step: float = 0.7, naive: bool = True,
             seed: int = 1) -> list[dict]:
    """The seed's grad_norm_log.json: naive ISO timestamps, a decaying grad norm."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_steps):
        stamp = start + timedelta(seconds=5 + i * seconds_per_step)
        out.append({"step": i + 1, "loss": 6 * np.exp(-i / 800) + 0.1 * rng.standard_normal(),
                    "grad_norm": 40 * np.exp(-i / 500) + 2 * rng.standard_normal(), "learning_rate": 5e-05,
                    "epoch": i / 200, "timestamp": (stamp.replace(tzinfo=None) if naive else stamp).isoformat()})
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", *args], capture_output=True, text=True,
                          timeout=120)


def strict_json(path: Path) -> dict:
    def reject(value: str) -> None:
        raise AssertionError(f"non-JSON constant {value} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.mark.slow
def test_offline_seed_json_end_to_end(tmp_path):
    csv = write_csv(tmp_path / "rle.csv", 1500)
    log = tmp_path / "grad_norm_log.json"
    log.write_text(json.dumps(seed_log(2000)))
    out = tmp_path / "out"
    proc = run_cli("--grad-log", str(log), "--rle-csv", str(csv), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = strict_json(out / "report.json")
    optimizer = [p for p in report["pairs"] if p["direction"] == "optimizer_to_hardware"]
    assert {p["x"] for p in optimizer} | {p["y"] for p in optimizer} == PAIR_NAMES
    # the seed's log has no tokens and the lab's CSV no clocks: the other direction is mostly insufficient
    assert {p["direction"] for p in report["pairs"]} == {"optimizer_to_hardware", "hardware_to_training"}
    for pair in report["pairs"]:
        assert set(pair) >= {"x", "y", "naive", "primary", "lag", "coupled", "strength"}
        assert set(pair["naive"]) >= {"pearson_r", "p", "n"}
        assert set(pair["primary"]) >= {"r", "ci", "p", "p_adjusted", "n", "n_eff", "method"}
        assert set(pair["lag"]) >= {"peak_lag_s", "peak_r", "p"}
    assert set(report) >= {"inputs", "window", "step", "queries", "versions", "events", "granger", "verdict"}
    assert report["inputs"]["device"] == "gpu" and report["step"]["seconds"] == 1.0
    temp = next(p for p in report["pairs"] if p["y"] == "temperature")
    # shared trend: the naive r is large and "significant", the honest test is not
    assert abs(temp["naive"]["pearson_r"]) > 0.5 and temp["naive"]["p"] < 1e-10
    assert temp["coupled"] is False and abs(temp["primary"]["r"]) < 0.15
    assert report["events"]["n_collapses"] == 5  # onsets at 100, 400, 700, 1000, 1300 s
    assert "would have claimed" in proc.stdout
    for png in ("coupling.png", "crosscorr.png"):
        assert (out / png).stat().st_size > 10_000


def test_naive_iso_is_utc_unless_tz(tmp_path):
    csv = write_csv(tmp_path / "rle.csv", 200)
    log = tmp_path / "log.json"
    # local Berlin wall-clock times (UTC+1 in late October): 09:00 local = 08:00 UTC
    log.write_text(json.dumps(seed_log(200, start=T0 + timedelta(hours=1))))
    proc = run_cli("--grad-log", str(log), "--rle-csv", str(csv), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2
    assert "do not overlap" in proc.stderr and proc.stderr.count("\n") == 1
    assert "2025-10-28T09:00:05" in proc.stderr and "2025-10-28T08:00:00" in proc.stderr
    grad = load_grad_log(log, get_tz("Europe/Berlin"))
    assert grad.range_s[0] == pytest.approx(T0.timestamp() + 5)


def test_time_unix_preferred_and_offsets_honoured(tmp_path):
    log = tmp_path / "train.jsonl"
    records = [
        {"step": 1, "loss": 2.0, "grad_norm": 1.0, "timestamp": "1999-01-01T00:00:00", "time_unix": 1761638400.5},
        {"step": 2, "loss": 2.0, "grad_norm": 1.5, "timestamp": "2025-10-28T09:00:01+01:00"},
        {"event": "run_end"},
        {"step": 3, "loss": 1.9, "grad_norm": 1.2, "timestamp": "2025-10-28T08:00:02", "perturbation": True},
        {"step": 4, "loss": None, "grad_norm": None, "nonfinite": True, "time_unix": 1761638403.0},  # skipped step
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    grad = load_grad_log(log, get_tz(None))
    assert grad.t_s.tolist() == [1761638400.5, 1761638401.0, 1761638402.0, 1761638403.0]
    assert grad.columns["perturbation"][2] == 1.0
    assert np.isnan(grad.columns["grad_norm"][3])  # a gap, not an error and not a zero


def test_rle_lab_training_log_uses_timestamp_shared_not_its_naive_local_iso(tmp_path):
    # The lab's coupling runs log `timestamp_shared` (epoch) beside `timestamp_iso`, a naive *local* time
    # (here UTC-5): read as UTC it would put the run five hours off its RLE recording.
    log = tmp_path / "training_log_20251028_195412.json"
    log.write_text(json.dumps([
        {"step": 1, "step_counter": 1, "timestamp_shared": 1761699262.4882805,
         "timestamp_iso": "2025-10-28T19:54:22.488280", "loss": 6.3157, "grad_norm": 25.73,
         "learning_rate": 5e-05, "epoch": 0.04},
        {"step": 2, "step_counter": 2, "timestamp_shared": 1761699262.8900828,
         "timestamp_iso": "2025-10-28T19:54:22.890082", "loss": 5.7691, "grad_norm": 25.52,
         "learning_rate": 4.975e-05, "epoch": 0.08},
    ]))
    grad = load_grad_log(log, get_tz(None))
    assert grad.t_s.tolist() == [1761699262.4882805, 1761699262.8900828]
    iso_only = tmp_path / "iso.json"
    iso_only.write_text(json.dumps([{"step": 1, "grad_norm": 1.0, "timestamp_iso": "2025-10-29T00:54:22Z"}]))
    assert load_grad_log(iso_only, get_tz(None)).t_s.tolist() == [1761699262.0]


def test_truncated_csv_row_names_file_and_line(tmp_path):
    header = "timestamp,device,rle_smoothed,temp_c,power_w,a_load,collapse,cpu_freq_ghz"
    path = tmp_path / "rle.csv"
    # Row 2 lacks only the trailing CPU-only column, as the lab's GPU rows do: fine. Row 3 is cut short.
    path.write_text(f"{header}\n2025-10-28T08:00:00Z,gpu,0.1,60,100,0.5,0\n2025-10-28T08:00:01Z,gpu,0.1\n")
    with pytest.raises(InputError, match=r"rle\.csv:3: truncated row \(3 of the header's 8 fields\)"):
        load_rle_csv(path, None, get_tz(None))


def test_csv_device_choice_and_unknown_device(tmp_path):
    csv = write_csv(tmp_path / "rle.csv", 30)
    cpu, device = load_rle_csv(csv, "cpu", get_tz(None))
    assert device == "cpu" and cpu.t_s.size == 30 and np.isnan(cpu.columns["temperature"]).all()
    gpu, device = load_rle_csv(csv, None, get_tz(None))
    assert device == "gpu" and np.isfinite(gpu.columns["temperature"]).all()
    with pytest.raises(InputError, match="devices: cpu, gpu"):
        load_rle_csv(csv, "npu", get_tz(None))


@pytest.mark.parametrize(("content", "expected"), [
    ('{"step": 1, "grad_norm": 1.0, "time_unix": 5}\n{"step": 2, "grad_norm": \n', r"log\.jsonl:2: invalid JSON"),
    ('{"step": 1, "grad_norm": "big", "time_unix": 5}\n', r"log\.jsonl:1: field 'grad_norm' is not a number"),
    ('{"step": 1, "loss": 2.0, "time_unix": 5}\n', r"log\.jsonl:1: field 'grad_norm' missing"),
    ('{"step": 1, "grad_norm": 1.0, "timestamp": "yesterday"}\n', r"log\.jsonl:1: timestamp 'yesterday'"),
])
def test_malformed_grad_log_names_file_line_problem(tmp_path, content, expected):
    log = tmp_path / "log.jsonl"
    log.write_text(content)
    with pytest.raises(InputError, match=expected):
        load_grad_log(log, get_tz(None))


def test_malformed_csv_names_file_line_problem(tmp_path):
    csv = write_csv(tmp_path / "rle.csv", 5)
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace(",gpu,", ",gpu,abc", 1)  # file line 4
    csv.write_text("\n".join(lines) + "\n")
    proc = run_cli("--grad-log", str(tmp_path / "missing.json"), "--rle-csv", str(csv), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "missing.json: cannot read" in proc.stderr
    with pytest.raises(InputError, match=r"rle\.csv:4: field 'rle_smoothed' is not a number"):
        load_rle_csv(csv, "gpu", get_tz(None))
    (tmp_path / "bad.csv").write_text("time,device\n1,gpu\n")
    with pytest.raises(InputError, match=r"bad\.csv:1: missing column\(s\) timestamp, rle_smoothed"):
        load_rle_csv(tmp_path / "bad.csv", None, get_tz(None))


def test_reference_trace_loads_both_devices(rle_lab_csv):
    gpu, _ = load_rle_csv(rle_lab_csv, "gpu", get_tz(None))
    cpu, _ = load_rle_csv(rle_lab_csv, "cpu", get_tz(None))
    assert 2100 < gpu.t_s.size < 2200 and gpu.t_s.size == cpu.t_s.size
    assert np.all(np.diff(gpu.t_s) > 0)
    assert np.isfinite(gpu.columns["temperature"]).mean() > 0.99
    assert gpu.range_s[0] == pytest.approx(datetime(2025, 10, 28, 8, 0, 0, 408689, tzinfo=UTC).timestamp())


def test_a_fast_loops_stalls_are_slow_steps_and_only_long_silences_are_gaps():
    """10 ms steps with a 150 ms stall every 50 steps (a busy machine): every row keeps a throughput; a 5 s
    silence (lost lines, a restart) is still a gap."""
    rng = np.random.default_rng(0)
    dt = np.full(6000, 0.01) + 0.002 * rng.random(6000)
    dt[::50] = 0.15
    dt[3000] = 5.0
    t = 1_767_225_600.0 + np.cumsum(dt)
    durations = step_durations(t, np.zeros(t.size))
    assert np.isnan(durations[0]) and np.isnan(durations[3000])
    assert np.isfinite(durations[1:3000]).all() and np.isfinite(durations[3001:]).all()
    start = float(np.ceil(t[0]))
    rate = throughput_on_grid(t, np.full(t.size, 256.0), durations, start, 1.0, int(t[-1] - start))
    row_start = start - 1.0 + np.arange(rate.size)  # row i spans [start - 1 + i, start + i]
    gap_rows = (row_start < t[3000]) & (row_start + 1.0 > t[2999])
    logged = (row_start >= t[0]) & ~gap_rows
    assert gap_rows.sum() >= 5 and np.isnan(rate[gap_rows]).all()
    assert np.isfinite(rate[logged]).all() and logged.sum() == rate.size - gap_rows.sum() - 1


def test_series_csv_names_the_file_columns_the_loader_reads():
    """series.csv's `offline` column is the one reference for which file field holds each series: the step log's
    fields and the hardware CSV's columns the loader reads."""
    from thermograd.analysis.catalog import SERIES
    from thermograd.analysis.files import readers as load_files

    # the hardware CSV's required columns (the RLE lab's monitor writes them; the exporter's --record too)
    assert load_files.RLE_COLUMNS == {"rle": "rle_smoothed", "temperature": "temp_c", "power": "power_w",
                                      "a_load": "a_load", "collapsed": "collapse"}
    for s in SERIES:
        if not s.offline:
            continue
        if s.source == "train":
            assert s.offline in load_files.GRAD_FIELDS.values(), s
        else:
            first_alias = load_files.OPTIONAL_RLE_COLUMNS.get(s.column, ((None,), 1.0))[0][0]
            assert s.offline in (load_files.RLE_COLUMNS.get(s.column), first_alias), s


def _seed_files(tmp_path: Path, n: int = 400, log: list[dict] | None = None) -> tuple[Path, Path]:
    csv_path = write_csv(tmp_path / "rle.csv", n)
    log_path = tmp_path / "grad.json"
    log_path.write_text(json.dumps(log if log is not None else seed_log(int(n / 0.7) - 10)))
    return log_path, csv_path


def test_out_never_replaces_a_users_file_and_fails_before_the_work(tmp_path):
    """A new user's --out folder held their own report.json and coupling.png: both were replaced, exit 0. Now:
    exit 2, one line, nothing changed; a thermograd report there is refreshed (a re-run into its folder)."""
    log, csv_path = _seed_files(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "coupling.png").write_text("my figure")
    proc = run_cli("--grad-log", str(log), "--rle-csv", str(csv_path), "--out", str(mine), "--quiet")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "already holds coupling.png, which no thermograd analysis wrote" in proc.stderr
    assert (mine / "coupling.png").read_text() == "my figure" and not (mine / "report.json").exists()
    out = tmp_path / "out"
    for _ in range(2):  # the second run refreshes the first one's report
        proc = run_cli("--grad-log", str(log), "--rle-csv", str(csv_path), "--out", str(out), "--quiet")
        assert proc.returncode == 0, proc.stderr
    bad = run_cli("--grad-log", str(tmp_path / "absent.json"), "--rle-csv", str(csv_path), "--out",
                  str(tmp_path / "never"))
    assert bad.returncode == 2 and not (tmp_path / "never").exists()  # no empty folder left behind


def test_files_that_are_not_what_they_seem_are_one_line_naming_the_fix(tmp_path):
    import gzip

    log, csv_path = _seed_files(tmp_path)
    packed = tmp_path / "rle.csv.gz"
    packed.write_bytes(gzip.compress(csv_path.read_bytes()))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(csv_path.read_bytes().replace(b"timestamp", "timestämp".encode("latin-1"), 1))
    steps_csv = tmp_path / "steps.csv"
    steps_csv.write_text("step,time_unix,grad_norm,loss\n1,1761638400,1.0,2.0\n")
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text(csv_path.read_text().replace(",", ";"))
    flags = tmp_path / "flags.jsonl"
    flags.write_text("".join(json.dumps({"step": i, "time_unix": T0.timestamp() + i, "grad_norm": True}) + "\n"
                             for i in range(5)))
    empty, header_only = tmp_path / "empty.csv", tmp_path / "header.csv"
    empty.write_text("")
    header_only.write_text(CSV_HEADER + "\n")
    cases = [(log, packed, "gzip-compressed file, not text: decompress it first (gunzip it)"),
             (log, latin, "not UTF-8 text"), (steps_csv, csv_path, "a CSV step log is not read"),
             (log, semicolons, "the file must be comma-separated"), (log, empty, "empty file (no header)"),
             (log, header_only, "a header and no rows"), (flags, csv_path, "field 'grad_norm' is true, not a number")]
    for grad, hardware, expected in cases:
        proc = run_cli("--grad-log", str(grad), "--rle-csv", str(hardware), "--out", str(tmp_path / "o"))
        assert proc.returncode == 2 and expected in proc.stderr, (hardware, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_the_device_is_the_one_the_step_log_names_and_a_surprising_choice_is_said(tmp_path):
    rows = ["time_unix,device,uuid,kind,rle_smoothed,temp_c,power_w,a_load,collapse"]
    for i in range(5):
        rows += [f"{1.8e9 + i},0,GPU-aaaa,gpu,0.5,60,100,0.4,0", f"{1.8e9 + i},1,GPU-bbbb,gpu,0.5,60,100,0.4,0",
                 f"{1.8e9 + i},cpu,,cpu,0.5,50,30,0.2,0"]
    two = tmp_path / "two.csv"
    two.write_text("\n".join(rows) + "\n")
    tz, notes = get_tz(None), []
    assert load_rle_csv(two, None, tz, notes, logged_uuid="gpu-bbbb")[1] == "1" and not notes
    assert load_rle_csv(two, "0", tz, notes, logged_uuid="GPU-bbbb")[1] == "0"
    assert "the step log says the run trained on GPU-bbbb" in notes[-1]
    with pytest.raises(InputError, match="none of them the step log's GPU GPU-cccc"):
        load_rle_csv(two, None, tz, [], logged_uuid="GPU-cccc")
    cpu_only = tmp_path / "cpu.csv"
    cpu_only.write_text("\n".join([rows[0], *(r for r in rows[1:] if ",cpu," in r)]) + "\n")
    notes = []
    assert load_rle_csv(cpu_only, None, tz, notes)[1] == "cpu"
    assert "analysing device cpu of cpu.csv (kind cpu: not a GPU)" in notes[-1]


def test_steps_outside_the_recording_and_repeated_timestamps_are_said(tmp_path):
    log, csv_path = _seed_files(tmp_path, n=300, log=seed_log(700))  # 490 s of steps, 300 s of recording
    csv_text = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*csv_text, *csv_text[1:21]]) + "\n")  # 20 rows appended twice
    proc = run_cli("--grad-log", str(log), "--rle-csv", str(csv_path), "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    notes = strict_json(tmp_path / "o" / "report.json")["notes"]
    assert any("of the training log's 700 steps fall outside the hardware recording" in n for n in notes)
    assert any("the hardware recording repeats" in n for n in notes)
    assert any(n.startswith("Lags are resolved to the step, never finer: the step log and the hardware recording")
               for n in notes)


def test_a_constant_gradient_norm_leaves_the_question_open(tmp_path):
    """Every grad_norm `true` (a logged flag, not the norm): only loss ~ rle could be tested, and the verdict
    said "Independent systems". It is inconclusive, naming what could not be tested."""
    log = [{**rec, "grad_norm": 1.0} for rec in seed_log(560)]
    grad, csv_path = _seed_files(tmp_path, log=log)
    proc = run_cli("--grad-log", str(grad), "--rle-csv", str(csv_path), "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    verdict = strict_json(tmp_path / "o" / "report.json")["verdicts"]["optimizer_to_hardware"]
    assert verdict["strength"] == "inconclusive" and "grad_norm never changes in the rows tested" in verdict["summary"]


def test_all_runs_input_errors_leave_no_folder_and_earlier_tables_are_thermograds(tmp_path):
    from thermograd.analysis.output.outdir import prepare_out

    proc = run_cli("--all-runs", "--runs-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "a" / "b"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr and not (tmp_path / "a").exists()
    earlier = tmp_path / "lab"  # tables an earlier thermograd wrote, before meta_analysis.json named its version
    earlier.mkdir()
    (earlier / "meta_analysis.json").write_text(json.dumps({"source": "runs", "runs_analysed": 2, "runs_skipped": {},
                                                             "method": "…", "pairs": []}))
    (earlier / "runs.csv").write_text("run\n")
    prepare_out(earlier, ("runs.csv", "meta_analysis.json"))  # refreshed, not refused
    (earlier / "meta_analysis.json").write_text("{}")
    with pytest.raises(InputError, match="which no thermograd analysis wrote"):
        prepare_out(earlier, ("runs.csv", "meta_analysis.json"))


def test_a_job_log_whose_rank_is_not_a_number_is_one_line(tmp_path):
    from testkit.jobgen import write_job

    job = write_job(tmp_path / "job", "none", 2, seconds=60, seed=1)
    log = job.folder / "rank-1" / "steps.jsonl"
    log.write_text("".join(json.dumps({**json.loads(line), "rank": "r1"}) + "\n"
                           for line in log.read_text().splitlines()))
    proc = run_cli("--job-dir", str(job.folder), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "its steps' rank is 'r1', not a whole number" in proc.stderr
