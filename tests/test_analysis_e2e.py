"""End to end against a real Prometheus: backfilled series with planted couplings, real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from testkit.backfill import (
    create_blocks,
    device_series,
    serve_prometheus,
    train_series,
    write_openmetrics,
)
from testkit.synthetic import COLLAPSE_DELAY_S, POWER_LAG_S, planted_run
from thermograd.analysis.table import grid_rows, step_within_rows

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WORLD_S = 3600
RUNS = {  # run_id: (first second, last second + 1, gpu_uuid, with loss)
    "r2-noloss": (0, 300, "sim-0", False),
    "r0-cpu": (400, 1000, "", True),  # empty gpu_uuid: the analysis falls back to the only GPU
    "r1": (1200, 3000, "sim-0", True),  # the most recent run
}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("prom")
    base = int(time.time()) // 60 * 60 - 2 * 86400  # backfill must be older than the head block
    world = planted_run(WORLD_S, seed=7)
    decoy = planted_run(WORLD_S, seed=8)
    series = device_series(world, base, "sim-0", "0") + device_series(decoy, base, "cpu-host", "cpu", kind="cpu")
    for run_id, (lo, hi, gpu_uuid, with_loss) in RUNS.items():
        cols = {k: v[lo:hi] for k, v in world.items()}
        series += train_series(cols, base + lo, run_id, gpu_uuid, with_loss=with_loss)
    write_openmetrics(series, tmp / "series.om")
    create_blocks(tmp / "series.om", tmp / "tsdb")
    with serve_prometheus(tmp / "tsdb", free_port()) as url:
        yield {"url": url, "base": base}


def analysis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", *args], capture_output=True, text=True,
                          timeout=180)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_recovers_planted_couplings(prometheus, tmp_path):
    out = tmp_path / "out"
    proc = analysis("--prometheus", prometheus["url"], "--out", str(out), "--header", "X-Scope-OrgID: t1",
                    "--bearer-token", "secret")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in report"))
    base = prometheus["base"]
    assert report["inputs"]["run_id"] == "r1"  # the most recent run by train_run_start_time_seconds
    assert report["inputs"]["device"]["uuid"] == "sim-0"  # the gpu_uuid join, not the cpu decoy
    assert report["inputs"]["auth"] == "bearer" and report["inputs"]["extra_headers"] == ["X-Scope-OrgID"]
    assert report["step"]["seconds"] == 1.0 and "scrape_interval" in report["step"]["source"]
    assert abs(report["window"]["start_unix"] - (base + 1200)) <= 2
    assert abs(report["window"]["end_unix"] - (base + 2999)) <= 2
    pairs = {p["y"] if p["x"] == "grad_norm" else "loss~rle": p for p in report["pairs"]}
    power = pairs["power"]
    assert power["coupled"] and power["strength"] == "strong"
    assert power["lag"]["peak_lag_s"] == POWER_LAG_S and power["lag"]["peak_r"] > 0.7
    temp = pairs["temperature"]  # shared trend only: the naive number claims coupling, the verdict does not
    assert abs(temp["naive"]["pearson_r"]) > 0.3 and temp["naive"]["p"] < 1e-10
    assert temp["coupled"] is False and temp["strength"] == "none"
    # RLE dips 2 s after each one-step spike; differencing turns a spike into an up/down pair one step
    # apart, so the CCF of the differences peaks within one step of the delay (events time it exactly)
    assert pairs["rle"]["coupled"] and abs(pairs["rle"]["lag"]["peak_lag_s"] - COLLAPSE_DELAY_S) <= 1
    assert report["events"]["trigger"]["p_adjusted"] < 0.05 and report["events"]["precursor"]["rate"] > 0.9
    assert report["perturbation"]["metrics"]["power"]["p_adjusted"] < 0.05
    assert report["verdict"]["coupled"] is True and report["verdict"]["strength"] == "strong"
    ranges = [q for q in report["queries"] if q["type"] == "range" and q["purpose"] != "runs"]
    assert len({(q["start"], q["end"], q["step"]) for q in ranges}) == 1  # one clock
    assert any('rle_power_watts{uuid="sim-0"}' in q["query"] for q in ranges)
    assert any("irate(train_step_grad_norm_sum" in q["query"] for q in ranges)
    assert any(q["purpose"] == "device by gpu_uuid join" for q in report["queries"])
    assert any("resolved to the step" in n for n in report["notes"])
    assert report["versions"]["backend"].startswith("2.")  # the real Prometheus answered buildinfo
    assert "would have claimed a moderate coupling" in proc.stdout
    assert (out / "coupling.png").stat().st_size > 10_000 and (out / "crosscorr.png").stat().st_size > 10_000


def test_empty_gpu_uuid_falls_back_to_the_only_gpu(prometheus, tmp_path):
    proc = analysis("--prometheus", prometheus["url"], "--run", "r0-cpu", "--out", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["inputs"]["device"]["uuid"] == "sim-0"
    assert any("only GPU" in n for n in report["notes"])
    assert proc.stdout == ""


def test_a_run_past_the_row_budget_goes_on_a_wider_grid_and_says_so(prometheus, tmp_path):
    """r1's window holds some 3,000 rows of 1 s scrapes: with --max-rows 1000 the step becomes a whole multiple
    of 1 s that fits (levels averaged, flags their max over each step), the report says why, and the planted
    coupling is still found."""
    proc = analysis("--prometheus", prometheus["url"], "--run", "r1", "--max-rows", "1000", "--out", str(tmp_path),
                    "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    step_s = report["step"]["seconds"]
    assert step_s > 1 and step_s.is_integer() and "widened" in report["step"]["source"]
    note = next(n for n in report["notes"] if "--max-rows 1,000" in n)
    rows = int(re.search(r"is ([\d,]+) rows of 1 s", note).group(1).replace(",", ""))
    assert rows > 1000 and rows / step_s <= 1000 < rows / (step_s - 1) and f"a {step_s:g} s grid" in note
    fetched = [q for q in report["queries"] if q["type"] == "range" and q["purpose"] != "runs"]
    assert all(grid_rows(q["start"], q["end"], q["step"]) <= 1000 and q["start"] % step_s == 0 for q in fetched)
    ranges = [q["query"] for q in fetched]
    assert any("avg_over_time(rle_temperature_celsius" in q for q in ranges)
    assert not any("last_over_time(rle_temperature_celsius" in q for q in ranges)
    power = next(p for p in report["pairs"] if p["x"] == "grad_norm" and p["y"] == "power")
    assert power["coupled"]


def test_the_row_budget_counts_the_row_that_aligning_the_start_adds():
    # 2,000 rows of 1 s: a 2 s grid aligned to whole steps starts at 1000, one row more than 1,000
    assert grid_rows(1000, 3000, 2) == 1001 and step_within_rows(1001, 3000, 1, 1000) == 3
    assert step_within_rows(0, 999, 1, 1000) == 1 and step_within_rows(0, 30 * 86400 - 1, 1, 30 * 86400) == 1
    assert step_within_rows(0, 60 * 86400 - 1, 1, 30 * 86400 + 3600) == 2
    assert step_within_rows(0, 90 * 86400, 30, 100_000) == 90  # whole multiples of a 30 s source's interval


def test_a_chosen_step_past_the_row_budget_is_refused(prometheus, tmp_path):
    err = one_line_error(analysis("--prometheus", prometheus["url"], "--run", "r1", "--step", "1s", "--max-rows",
                                  "1000", "--out", str(tmp_path)))
    assert "--max-rows 1,000" in err and "--step 1s makes the window" in err
    err = one_line_error(analysis("--prometheus", prometheus["url"], "--max-rows", "10", "--out", str(tmp_path)))
    assert "--max-rows 10" in err


def test_unknown_run_lists_runs(prometheus, tmp_path):
    err = one_line_error(analysis("--prometheus", prometheus["url"], "--run", "nope", "--out", str(tmp_path)))
    assert "run 'nope' not found" in err and all(r in err for r in RUNS)


def test_a_missing_optional_series_leaves_its_pairs_insufficient(prometheus, tmp_path):
    """Only the gradient norm is required (a missing one is named with its PromQL: test_analysis_diagnostics);
    a run without loss is analysed on what it has, the loss's pairs `insufficient data`."""
    proc = analysis("--prometheus", prometheus["url"], "--run", "r2-noloss", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    loss_pairs = [p for p in report["pairs"] if "loss" in (p["x"], p["y"])]
    assert loss_pairs and all(p["strength"] == "insufficient data" for p in loss_pairs)


def test_unknown_device(prometheus, tmp_path):
    err = one_line_error(analysis("--prometheus", prometheus["url"], "--device", "GPU-x", "--out", str(tmp_path)))
    assert "device 'GPU-x' not found" in err


def test_unreachable_prometheus(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    err = one_line_error(analysis("--prometheus", url, "--retries", "1", "--out", str(tmp_path / "o")))
    assert url in err and "refused the connection" in err and "--prometheus" in err  # at once: no retries
    assert not (Path(tmp_path) / "o" / "report.json").exists()
