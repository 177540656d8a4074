"""Issue 16: spike-triggered responses, `none` only with every test bounded, which way an effect runs, Granger as
precedence with a measured common cause, the throttle cost's block length, start-up that follows the series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from testkit.scenario_effects import (
    common_cause_run,
    spike_lagged_run,
    spike_response_run,
    throughput_leads_run,
)
from testkit.scenarios import ar1_unit, null_run, write_files
from thermograd.analysis.align import bin_to_grid
from thermograd.analysis.coupling.analyse import analyse
from thermograd.analysis.coupling.direction import HARDWARE_TO_TRAINING, leader_of
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.startup import absent_rows, settled_rows, startup_rows
from thermograd.analysis.coupling.verdict import verdicts
from thermograd.analysis.files.grid import files_to_table
from thermograd.analysis.output.summary import summary_text
from thermograd.analysis.sources.fetch import series_exprs
from thermograd.analysis.stats import lagged
from thermograd.analysis.stats.spike_response import noise_threshold, training_events
from thermograd.analysis.stats.throttle import ar1_block_length, batch_means_correction, optimal_block_length


def analysed(rec, seed: int = 0) -> tuple[dict, dict]:
    table = files_to_table(rec.train, rec.hardware).trimmed(["grad_norm", "loss"])
    result = analyse(table, Settings(seed=seed))
    return result, verdicts(result, table.step_s)


def power_response(result: dict, spikes: str = "grad_norm") -> dict:
    return next(r for r in result["spike_responses"] if (r["spikes"], r["metric"]) == (spikes, "power"))


@pytest.mark.parametrize("effect_w", [-40.0, 20.0])
def test_a_spike_triggered_power_change_is_found_in_watts_with_its_window_and_spikes(effect_w):
    """Issue 16: each spike followed 3 s later by a 5 s change of power; before, `none` in 3 of 10 runs."""
    for seed in range(4):
        rec = spike_response_run(600, 40 + seed, effect_w)
        result, both = analysed(rec, seed)
        verdict, res = both["optimizer_to_hardware"], power_response(result)
        assert verdict["coupled"] and verdict["strength"] != "none"
        assert res["coupled"] and res["p_adjusted"] < 0.05 and res["train"] == "spikes"
        assert np.sign(res["effect"]) == np.sign(effect_w) and 0.4 < res["effect"] / effect_w < 1.5
        assert res["ci"][0] <= res["effect"] <= res["ci"][1] and 0 not in np.sign(res["ci"])
        lo, hi = res["lag_window_s"]
        assert lo <= 7 + 1 and hi >= 3 - 1  # inside the planted 3-7 s, to the step
        assert 3 <= res["n_spikes"] <= rec.planted["n_spikes"] + 2
        assert "after" in verdict["summary"] and "spikes" in verdict["summary"]


def test_a_small_spike_triggered_effect_is_never_called_independent():
    for seed in range(4):
        _, both = analysed(spike_response_run(600, 60 + seed, -8.0), seed)
        assert both["optimizer_to_hardware"]["strength"] != "none"


def test_a_three_spike_lagged_coupling_in_three_minutes_is_not_called_independent():
    found = 0
    for seed in range(6):
        result, both = analysed(spike_lagged_run(180, 300 + seed, "pulse"), seed)
        assert both["optimizer_to_hardware"]["strength"] != "none"
        found += both["optimizer_to_hardware"]["coupled"]
    assert found >= 3  # the bench measures the rate (docs/method.md); three spikes are near the limit of any test


def test_spike_responses_stay_near_alpha_on_independent_runs():
    rates = []
    for kind in ("spikes", "volatility", "jitter"):
        for seed in range(8):
            result, both = analysed(null_run(kind, (300, 600)[seed % 2], 500 + seed), seed)
            rates += [r["p"] < 0.05 for r in result["spike_responses"] if r["p"] is not None]
            assert not any(r["coupled"] for r in result["spike_responses"]), (kind, seed)
    assert len(rates) > 100 and np.mean(rates) <= 0.09, np.mean(rates)


def test_none_needs_every_spike_response_bounded_and_says_what_would_settle_it():
    rec = null_run("ar1", 600, 7)
    result, both = analysed(rec)
    pairs_none = all(p["strength"] == "none" for p in result["pairs"] if p["direction"] == "optimizer_to_hardware")
    unsettled = [r for r in result["spike_responses"] if r["strength"] == "inconclusive"]
    verdict = both["optimizer_to_hardware"]
    if unsettled:
        assert verdict["strength"] == "inconclusive" and "spikes" in verdict["summary"]
        assert all(r["spikes_to_settle"] > r["n_spikes"] and not r["equivalence"]["equivalent"] for r in unsettled)
    elif pairs_none:
        assert verdict["strength"] == "none"
    long_run, long_both = analysed(null_run("ar1", 3600, 7))
    ran = [r for r in long_run["spike_responses"] if r["status"] == "ok"]
    assert ran and all(r["equivalence"]["equivalent"] for r in ran)
    assert long_both["optimizer_to_hardware"]["strength"] == "none"


def hardware_side(rec, seed: int, pair: tuple[str, str]) -> tuple[dict, dict, dict]:
    """(result, the hardware -> training verdict, the pair) of one recording."""
    result, both = analysed(rec, seed)
    return result, both["hardware_to_training"], next(p for p in result["pairs"] if (p["x"], p["y"]) == pair)


def test_throughput_leading_power_never_answers_that_the_hardware_slows_training():
    """Issue 16: a stalled loader idles the device; before, 'hardware -> training: coupled' in 3 of 3 runs."""
    for seed in range(3):
        _, hw, power = hardware_side(throughput_leads_run(900, 70 + seed), seed, ("power", "throughput"))
        assert hw["coupled"] is False
        assert power["coupled"] and power["lead"]["runs"] != HARDWARE_TO_TRAINING
        assert power["lead"]["answers_question"] is False
        assert "do not answer this question" in hw["summary"]


def test_throttling_that_slows_steps_is_found_with_the_hardware_first_and_granger_is_precedence():
    for seed in range(3):
        result, hw, clock = hardware_side(common_cause_run(600, 80 + seed), seed, ("sm_clock", "step_duration"))
        assert hw["coupled"] is True
        assert clock["coupled"] and clock["lead"]["answers_question"]
        assert min(abs(v) for v in clock["lead"]["lag_range_s"]) <= 1
        for g in result["granger"]:
            assert "precedence, not cause" in g["label"]
            for found in g["precedence"]:
                if found["precedes"] in ("step_duration", "throughput") and found["follows"] == "temperature":
                    assert found["given"] == "throttled" and found["p_adjusted_given"] is not None
                if found["follows"] == "throttled":  # the state itself: given its own level, the speed adds nothing
                    assert found["conditioned_on"] == "its own level" and found["explained_by_common_cause"]


def test_block_means_are_corrected_for_the_drift_they_cut_off():
    assert batch_means_correction(0.0, 60) == 1.0 and batch_means_correction(None, 60) == 1.0
    rho = float(np.exp(-1 / 20))  # a ~20 s time constant in 60 s blocks: a third of the variance missing
    assert 1.4 < batch_means_correction(rho, 60) < 1.6
    assert batch_means_correction(rho, 6000) < 1.01  # blocks far longer than the drift need none
    assert batch_means_correction(0.999, 10) == 3.0  # bounded
    rng = np.random.default_rng(3)  # and it is right: block means of AR(1) with the factor match the long run
    x = np.stack([ar1_unit(6000, rho, rng) for _ in range(200)])
    block_var = x.reshape(200, 100, 60).mean(axis=2).var(axis=1).mean() * 60
    long_run = (1 + rho) / (1 - rho)  # unit variance (ar1_unit): sigma_e^2 = 1 - rho^2, over (1 - rho)^2
    assert abs(block_var * batch_means_correction(rho, 60) / long_run - 1) < 0.1


def test_the_summary_says_which_way_each_effect_runs(tmp_path):
    log, csv = write_files(common_cause_run(600, 81), tmp_path)
    from thermograd.analysis.cli import main

    assert main(["--grad-log", str(log), "--rle-csv", str(csv), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    effects = report["verdicts"]["hardware_to_training"]["effects"]
    assert effects and all(e["runs"] in ("training -> hardware", "hardware -> training", "simultaneous")
                           for e in effects)
    text = summary_text(report)
    assert "so the effect runs hardware -> training" in text and "precedence (Granger" in text
    assert all(r["direction"] == "optimizer_to_hardware" for r in report["spike_responses"])


def test_lag_confidence_set_puts_a_leader_only_where_the_set_is_one_sided():
    corr = lagged.lag_correlation(np.array([1.0, -0.5]), np.array([1.0, -0.5]), 5)
    active = np.ones(11, dtype=bool)
    t = np.zeros(11)
    t[5 + 2] = 9.0  # lag +2 far above the rest
    kept = lagged.lag_confidence_set(t, corr, active, 7) - 5
    assert kept.tolist() == [2] and leader_of(kept.tolist(), "x", "y") == "x"
    t[5] = 8.5  # lag 0 nearly as large: cannot be told apart
    kept = lagged.lag_confidence_set(t, corr, active, 7) - 5
    assert 0 in kept and leader_of(kept.tolist(), "x", "y") is None
    assert leader_of([-3, -2], "x", "y") == "y"


def test_training_events_tell_spikes_from_jumps_and_ignore_noise():
    rng = np.random.default_rng(1)
    series = 5 + 0.3 * rng.standard_normal(2000)
    series[500] += 6.0                       # a one-step spike up
    series[900:] += 4.0                      # a jump up that stays
    series[1400] -= 5.0                      # a one-step spike down
    events = training_events(series, 4.0)
    got = dict(zip(events.rows.tolist(), zip(events.signs.tolist(), events.pulse.tolist(), strict=True), strict=True))
    assert got == {500: (1.0, True), 900: (1.0, False), 1400: (-1.0, True)}
    assert np.all(np.abs(events.weights) >= 1)
    assert training_events(5 + 0.3 * rng.standard_normal(86400), 4.0).size <= 2  # noise makes no spikes
    assert 3.2 < noise_threshold(600) < 3.5 and 4.4 < noise_threshold(86400) < 4.7


def test_spikes_come_per_step_offline_and_from_the_histograms_upper_buckets_online():
    t = np.array([0.2, 0.7, 1.2, 1.7])
    values = np.array([1.0, 9.0, 2.0, 1.0])
    assert bin_to_grid(t, values, 1.0, 1.0, 2, how="max").tolist() == [9.0, 2.0]
    assert bin_to_grid(t, values, 1.0, 1.0, 2, how="mean").tolist() == [5.0, 1.5]
    rec = spike_response_run(300, 1, -40.0)
    table = files_to_table(rec.train, rec.hardware)
    assert np.nanmax(table.columns["grad_norm_max"] - table.columns["grad_norm"]) > 1.0
    exprs = series_exprs("r1", "0", "GPU-1", 1.0, 1.0)
    assert exprs["grad_norm_max"].startswith("histogram_quantile(1, sum by (le) (irate(train_step_grad_norm_bucket{")
    assert exprs["loss_max"].startswith("max(max_over_time(train_loss{")


def test_the_throttle_cost_block_follows_the_drift():
    rng = np.random.default_rng(2)
    white = rng.standard_normal(2000)
    drift = ar1_unit(2000, float(np.exp(-1 / 80)), rng)
    assert optimal_block_length(white) < 5 and ar1_block_length(white) < 5
    assert ar1_block_length(drift) > 5 * optimal_block_length(white) and ar1_block_length(drift) > 60


def test_the_throttle_cost_ci_covers_a_drifting_loaders_zero_cost():
    covered, runs = 0, 0
    for seed in range(40):
        result, _ = analysed(null_run("loader_drift", (900, 1800)[seed % 2], 9100 + seed), seed)
        ci = result["throttle_cost"].get("ci_tokens_lost")
        if ci and result["throttle_cost"]["impaired_s"]:
            runs += 1
            covered += ci[0] <= 0 <= ci[1]
            assert result["throttle_cost"]["block_s"] >= 10
    assert runs >= 30 and covered / runs >= 0.85  # the bench measures the rate by time constant (docs/method.md)


def test_the_start_up_follows_the_series():
    t = np.arange(180.0)
    rng = np.random.default_rng(3)
    ramp = 150 - 120 * np.exp(-t / 25) + 3 * rng.standard_normal(180)
    flat = 150 + 3 * rng.standard_normal(180)
    assert 30 < settled_rows(ramp, 1.0) <= 120 and settled_rows(flat, 1.0) < 15
    grad = 2 + 0.3 * rng.standard_normal(180)
    mask, _ = startup_rows(grad, 1.0, 30.0, (ramp,))
    assert 30 < mask.sum() <= 60  # longer than the fixed 18 s (a tenth), at most a third
    assert startup_rows(grad, 1.0, 30.0, (flat,))[0].sum() == 18
    assert startup_rows(grad, 1.0, 0.0, (ramp,))[0].sum() == 0  # --warmup 0 keeps the start-up


def test_the_jobs_absences_are_left_out_not_read_as_responses():
    """A restart's seconds with the device idling are the job's state: masked from the row after the last step
    to the next step (and after the last one), for gaps of 10 s and 5 of the series' own steps, unless one
    step took the gap (a stall)."""
    present = np.ones(300, dtype=bool)
    present[100:120] = False  # a 20 s restart: under the 30 s of a resume, still the job away
    present[200:205] = False  # a 5 s hiccup: not an absence
    present[280:] = False  # the job ended, the exporter went on
    absent = absent_rows(present, 1.0)
    assert np.array_equal(np.flatnonzero(absent), np.r_[100:120, 280:300])
    stalled = np.full(300, 1.0)
    stalled[120] = 21.0  # the step that ends the gap took it all: the job was there, stalled
    assert np.array_equal(np.flatnonzero(absent_rows(present, 1.0, stalled)), np.r_[280:300])
    sparse = np.zeros(300, dtype=bool)
    sparse[::8] = True  # a slow trainer's step every 8 rows: its spacing, not an absence
    assert not absent_rows(sparse, 1.0).any()


@pytest.mark.parametrize("seed", [9054, 9068])
def test_changes_just_before_a_restart_are_not_responses_to_it(seed):
    """In these calibration restart runs a loss change fell within 30 s before the restart; the response windows
    reached into the gap, where the device idled at 60 W, and read it as the change's effect (p = 1/1001)."""
    rec = null_run("restart", 1800, seed)
    result, both = analysed(rec, seed)
    assert not both["optimizer_to_hardware"]["coupled"], both["optimizer_to_hardware"]["summary"]
    assert result["warmup"]["rows_job_away"] >= 20
    table = files_to_table(rec.train, rec.hardware).trimmed(["grad_norm", "loss"])
    assert analyse(table, Settings(seed=seed, warmup_s=0.0))["warmup"]["rows_job_away"] >= 20  # not a warm-up


def test_short_runs_from_idle_are_not_called_coupled():
    coupled = 0
    for seed in range(16):
        _, both = analysed(null_run("idle_start", 180, 600 + seed), seed)
        coupled += any(v["coupled"] for v in both.values())
    assert coupled <= 2, coupled
