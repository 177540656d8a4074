"""Both directions of the question, the positive control and the throttle cost, from the user's files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from testkit.scenarios import hot_run, null_run, write_files
from thermograd.analysis.catalog import DIRECTIONS, PAIRS, SERIES
from thermograd.analysis.coupling.analyse import analyse
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.verdict import overall
from thermograd.analysis.files.grid import files_to_table
from thermograd.analysis.files.readers import load_grad_log, load_rle_csv
from thermograd.analysis.sources.fetch import series_exprs
from thermograd.analysis.stats.throttle import throttle_cost
from thermograd.analysis.timeparse import get_tz


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", *args], capture_output=True, text=True,
                          timeout=180)


def test_series_and_pairs_are_data():
    columns = {s.column for s in SERIES}
    assert {"step_duration", "throughput", "sm_clock", "throttled", "pause"} <= columns
    assert DIRECTIONS == ("optimizer_to_hardware", "hardware_to_training")
    assert all(p.x in columns and p.y in columns for p in PAIRS)
    exprs = series_exprs("r1", "0", "GPU-1", 1.0, 1.0)
    assert exprs["pause"] == 'max(last_over_time(train_perturbation_active{run_id="r1",rank="0",kind="pause"}[1s]))'
    assert 'kind!="pause"' in exprs["perturbation"]  # LR bursts, and runs from before pauses had a kind label
    assert exprs["step_duration"].startswith("max(irate(train_step_duration_seconds_sum{")
    assert exprs["throughput"] == 'max(irate(train_tokens_total{run_id="r1",rank="0"}[2s]))'
    assert 'reason=~"sw_power_cap|hw_slowdown|sw_thermal|hw_thermal|hw_power_brake"' in exprs["throttled"]


def test_step_log_pauses_tokens_and_csv_clocks_are_read(tmp_path):
    log, csv = write_files(hot_run(300, 2), tmp_path)
    grad = load_grad_log(log, get_tz(None))
    assert grad.intervals["pause"] and all(hi > lo for lo, hi in grad.intervals["pause"])
    assert np.nanmin(grad.columns["step_duration"]) > 0.45  # a step is timed from the pause's end
    hw, _ = load_rle_csv(csv, None, get_tz(None))
    assert np.nanmax(hw.columns["sm_clock"]) > 1e9  # MHz in the CSV, Hz in the table
    assert set(np.unique(hw.columns["throttled"])) <= {0.0, 1.0}
    table = files_to_table(grad, hw)
    assert np.nanmax(table.columns["pause"]) == 1 and np.nanmin(table.columns["pause"]) == 0
    assert np.isnan(table.columns["throughput"][table.columns["pause"] == 1]).all()  # no steps in a pause


def test_heat_slows_training_the_pauses_are_found_and_the_cost_is_counted(tmp_path):
    log, csv = write_files(hot_run(900, 3), tmp_path / "in")
    proc = run_cli("--grad-log", str(log), "--rle-csv", str(csv), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    hw = report["verdicts"]["hardware_to_training"]
    assert hw["coupled"] is True
    clock = next(p for p in report["pairs"] if (p["x"], p["y"]) == ("sm_clock", "step_duration"))
    assert clock["coupled"] and clock["effect"]["r"] < 0  # lower clocks, longer steps
    assert report["verdict"]["direction"] == "optimizer_to_hardware" and report["verdict"]["coupled"] is False
    pc = report["positive_control"]
    assert pc["intervention"] == "pause" and pc["detected"] is True and pc["effect"] < 0
    assert pc["ci"][1] < 0 and pc["p_adjusted"] < 0.05
    cost = report["throttle_cost"]
    assert cost["status"] == "ok" and cost["tokens_lost"] > 0 and cost["ci_tokens_lost"][0] > 0
    assert 0.1 < cost["fraction_lost"] < 0.5  # clocks 30 % lower while throttled
    assert "Positive control: the method found the pauses' effect" in proc.stdout
    assert "Throttle cost:" in proc.stdout and "hardware to training" in proc.stdout


def test_a_run_without_pauses_says_it_has_no_positive_control():
    rec = null_run("ar1", 600, 4)
    result = analyse(files_to_table(rec.train, rec.hardware).trimmed(["grad_norm", "loss"]), Settings())
    assert result["positive_control"]["intervention"] is None and result["positive_control"]["detected"] is False
    assert "no pause burst in this run" in result["positive_control"]["reason"]
    assert overall(result["pairs"], 1.0, "hardware_to_training")["strength"] in {"insufficient data", "none",
                                                                               "inconclusive"}


def test_throttle_cost_against_a_known_loss():
    rng = np.random.default_rng(1)
    n = 3600
    throttled = np.zeros(n)
    for start in (300, 900, 1500, 2100, 2700, 3300):
        throttled[start:start + 100] = 1
    throughput = 2000.0 * (1 - 0.25 * throttled) + 20 * rng.standard_normal(n)
    paused = np.zeros(n)
    cost = throttle_cost(throughput, throttled, np.zeros(n), paused, 1.0, 60)
    assert abs(cost["tokens_lost"] - 0.25 * 2000 * 600) < 0.02 * 0.25 * 2000 * 600
    assert cost["ci_tokens_lost"][0] < 0.25 * 2000 * 600 < cost["ci_tokens_lost"][1]
    assert abs(cost["seconds_lost"] - 150) < 5
    never = throttle_cost(throughput, np.zeros(n), np.zeros(n), paused, 1.0, 60)
    assert cost["impaired_episodes"] == 6
    short = slice(0, 230)  # 200 s throttled, 30 s not: three 10-s blocks cannot say how the unimpaired rate varies
    few = throttle_cost(throughput[short], (np.arange(230) < 200).astype(float), np.zeros(230), paused[short], 1.0, 60)
    assert few["ci_tokens_lost"] is None and "too few" in few["ci_note"]
    # a two-minute run (the demo's) gets shorter blocks, and so a CI, rather than a bare number
    demo = slice(0, 420)  # 300-399 throttled: 320 s unimpaired: five 60-s blocks at most, ten of 32 s
    brief = throttle_cost(throughput[demo], throttled[demo], np.zeros(420), paused[demo], 1.0, 60)
    assert brief["block_s"] == 32 and brief["ci_tokens_lost"][0] < 0.25 * 2000 * 100 < brief["ci_tokens_lost"][1]
    nothing = 2000.0 + 20 * rng.standard_normal(n)  # throttled, but nothing is lost
    zero = throttle_cost(nothing, throttled, np.zeros(n), paused, 1.0, 60)
    assert zero["ci_tokens_lost"][0] < 0 < zero["ci_tokens_lost"][1]
    assert never["tokens_lost"] == 0 and never["impaired_s"] == 0


def test_throttle_cost_ci_covers_this_runs_loss_with_one_long_hot_spell_among_short_ones():
    """The loss is this run's: the impaired rows are observed, their unimpaired counterfactual is not. With
    one 200-s hot spell and six of a few seconds, each at its own rate, treating the episodes as
    replicates covered the run's loss in 61 % of runs; the counterfactual's variance covers it in ~95 %."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(5)
    covered, runs = 0, 300
    for _ in range(runs):
        n = 3000
        impaired, episode_effect = np.zeros(n), np.zeros(n)
        for start, length in zip(rng.choice(np.arange(100, n - 300, 50), 7, replace=False),
                                 [200, *rng.integers(2, 6, 6)], strict=True):
            impaired[start:start + length] = 1
            episode_effect[start:start + length] = rng.normal(0, 10)
        noise = lfilter([1.0], [1.0, -0.8], rng.normal(0, 3, n))
        unimpaired = 100 + noise
        throughput = np.where(impaired > 0, 80 + episode_effect + noise, unimpaired)
        cost = throttle_cost(throughput, impaired, np.zeros(n), np.zeros(n), 1.0, 60)
        lo, hi = cost["ci_tokens_lost"]
        covered += lo <= float(np.sum((unimpaired - throughput)[impaired > 0])) <= hi
    assert 0.92 <= covered / runs <= 0.98


def test_positive_control_reports_an_effect_in_the_direction_an_idle_loop_can_have():
    """Utilisation rising during the pauses (a wrongly signed artefact) must not hide power falling: the
    control reports the rightly signed metric, and is detected by it."""
    from thermograd.analysis import table as T
    from thermograd.analysis.coupling.analyse import positive_control
    from thermograd.analysis.coupling.settings import Settings

    rng = np.random.default_rng(3)
    n = 1200
    pause = np.zeros(n)
    for start in range(60, n - 60, 40):
        pause[start:start + 4] = 1.0
    cols = {T.PAUSE: pause,
            T.UTILIZATION: 0.5 + 0.3 * pause + 0.01 * rng.standard_normal(n),   # wrong sign, strong
            T.POWER: 200.0 - 80.0 * pause + 2.0 * rng.standard_normal(n)}       # right sign
    control = positive_control(cols, 1.0, Settings())
    assert control["metric"] == T.POWER and control["detected"] and control["effect"] < 0
