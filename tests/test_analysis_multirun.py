"""--all-runs: the random-effects meta-analysis (checked against statsmodels), the pooled verdict's bands,
and the whole command offline on a folder of runs and against a real Prometheus with backfilled runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from statsmodels.stats.meta_analysis import combine_effects

from testkit.backfill import (
    create_blocks,
    device_series,
    serve_prometheus,
    train_series,
    write_openmetrics,
)
from testkit.scenarios import Recording, null_run, planted_run, write_files
from thermograd.analysis.align import bin_to_grid
from thermograd.analysis.cli import main
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.verdict import pooled_verdict
from thermograd.analysis.multirun import meta_analyse, mixed_steps_note
from thermograd.analysis.stats.meta import dersimonian_laird, z_and_se

RUN_S = 300


def strict_json(path: Path) -> object:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path.name}"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dersimonian_laird_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    z, se = rng.normal(0.3, 0.25, k), rng.uniform(0.03, 0.2, k)
    ours = dersimonian_laird(z, se)
    ref = combine_effects(z, se**2, method_re="dl")
    frame = ref.summary_frame().loc["random effect"]
    assert ours["z"] == pytest.approx(ref.mean_effect_re, rel=1e-12)
    assert ours["dl"]["se_z"] == pytest.approx(ref.sd_eff_w_re, rel=1e-12)
    assert ours["tau2"] == pytest.approx(ref.tau2, rel=1e-10, abs=1e-15)
    assert ours["i2"] == pytest.approx(ref.i2, rel=1e-10, abs=1e-15)
    assert ours["q"] == pytest.approx(ref.q, rel=1e-12)
    assert np.arctanh(ours["dl"]["ci"]) == pytest.approx([frame["ci_low"], frame["ci_upp"]], rel=1e-10)
    assert ours["r"] == pytest.approx(np.tanh(ref.mean_effect_re), rel=1e-12)
    # Hartung-Knapp-Sidik-Jonkman: statsmodels' "random effect wls" scale, floored at 1; t with k - 1 df
    assert ours["hksj_scale"] == pytest.approx(ref.scale_hksj_re, rel=1e-10)
    assert ours["se_z"] == pytest.approx(ref.sd_eff_w_re * np.sqrt(max(1.0, ref.scale_hksj_re)), rel=1e-10)
    if ref.scale_hksj_re >= 1:
        assert np.arctanh(ours["ci"]) == pytest.approx(ref.conf_int(use_t=True)[3], rel=1e-10)


def test_pooled_test_keeps_its_error_rate_with_few_heterogeneous_runs():
    """No pooled effect, 4 runs whose true r differ (sd 0.2 on the z scale): DerSimonian-Laird's normal
    test rejects far more often than 5 %; the Hartung-Knapp-Sidik-Jonkman test the verdict uses does not."""
    rng = np.random.default_rng(11)
    rejections = {"dl": 0, "hksj": 0}
    draws = 2000
    for _ in range(draws):
        se = rng.uniform(0.05, 0.2, 4)
        pooled = dersimonian_laird(rng.normal(0.0, np.sqrt(se**2 + 0.2**2)), se)
        rejections["dl"] += pooled["dl"]["p"] < 0.05
        rejections["hksj"] += pooled["p"] < 0.05
    assert rejections["dl"] / draws > 0.09
    assert rejections["hksj"] / draws <= 0.06


def test_one_run_and_identical_runs_have_no_heterogeneity():
    one = dersimonian_laird(np.array([0.2]), np.array([0.05]))
    assert one["tau2"] == 0 and one["i2"] is None and one["q_p"] is None and one["prediction_interval"] is None
    same = dersimonian_laird(np.full(4, 0.2), np.full(4, 0.05))
    assert same["tau2"] == 0 and same["i2"] == 0 and same["se_z"] == pytest.approx(0.025)
    with pytest.raises(ValueError):
        dersimonian_laird(np.array([0.1, np.nan]), np.array([0.1, 0.1]))


def test_z_and_se_invert_a_fisher_ci():
    z, se = 0.4, 0.07
    ci = list(np.tanh([z - 1.959964 * se, z + 1.959964 * se]))
    got_z, got_se = z_and_se(float(np.tanh(z)), ci)
    assert got_z == pytest.approx(z) and got_se == pytest.approx(se, rel=1e-6)


def _pooled(r: float, se_z: float) -> dict:
    z = float(np.arctanh(r))
    return {"r": r, "z": z, "se_z": se_z, "ci": list(np.tanh([z - 1.96 * se_z, z + 1.96 * se_z]))}


@pytest.mark.parametrize(("r", "se_z", "p_adj", "coupled", "strength"), [
    (0.85, 0.02, 1e-9, True, "strong"),        # CI bound nearest zero above 0.7
    (0.5, 0.03, 1e-9, True, "moderate"),
    (0.2, 0.03, 1e-6, True, "weak"),
    (0.05, 0.01, 1e-6, False, "negligible"),   # significant, below min_effect
    (0.02, 0.05, 0.6, False, "none"),          # equivalence inside +/-0.3 shown
    (0.1, 0.2, 0.6, False, "inconclusive"),    # neither
])
def test_pooled_verdict_uses_a_single_runs_bands(r, se_z, p_adj, coupled, strength):
    verdict = pooled_verdict(_pooled(r, se_z), p_adj, Settings())
    assert (verdict["coupled"], verdict["strength"]) == (coupled, strength)
    assert "pooled r" in verdict["equivalence"]["method"]


def test_the_pooled_equivalence_test_uses_the_pooled_cis_t():
    """Three heterogeneous runs: the Hartung-Knapp-Sidik-Jonkman CI is a t on 2 df. An equivalence test on the
    normal quantile called such a pair "none" while its reported 95 % CI reached past -0.3 (a new user's
    --all-runs over three runs); on the same t it is inconclusive."""
    z = np.arctanh([0.05, -0.30, -0.09])
    pooled = dersimonian_laird(z, np.full(3, 0.03))
    assert pooled["ci"][0] < -0.3  # the interval the report shows reaches past the band
    verdict = pooled_verdict(pooled, 0.6, Settings())
    assert verdict["strength"] == "inconclusive" and not verdict["equivalence"]["equivalent"]
    assert "t with 2 df" in verdict["equivalence"]["method"]
    # and a tight pool is still shown inside the band on the same t
    tight = dersimonian_laird(np.arctanh([0.01, -0.02, 0.0]), np.full(3, 0.02))
    assert pooled_verdict(tight, 0.6, Settings())["strength"] == "none"


def test_runs_without_a_usable_ci_are_left_out_and_a_pair_without_any_is_insufficient():
    rows = [{"run": "a", "direction": "d", "x": "g", "y": "p", "r": 0.5, "ci_low": 0.4, "ci_high": 0.6},
            {"run": "b", "direction": "d", "x": "g", "y": "p", "r": None, "ci_low": None, "ci_high": None},
            {"run": "a", "direction": "d", "x": "g", "y": "t", "r": None, "ci_low": None, "ci_high": None}]
    power, temp = meta_analyse(rows, Settings())
    assert power["runs"] == ["a"] and power["runs_left_out"] == ["b"] and power["pooled"]["k"] == 1
    assert temp["pooled"] is None and temp["strength"] == "insufficient data"


def test_holm_runs_within_each_direction_as_in_a_single_run():
    rows = [{"run": run, "direction": direction, "x": x, "y": "s", "r": 0.2, "ci_low": 0.1, "ci_high": 0.3}
            for run in ("a", "b", "c") for direction, x in (("one", "g"), ("one", "l"), ("two", "c"))]
    one_g, one_l, two = meta_analyse(rows, Settings())
    p = two["pooled"]["p"]
    assert one_g["pooled"]["p"] == pytest.approx(p) and one_l["pooled"]["p"] == pytest.approx(p)
    assert two["pooled"]["p_adjusted"] == pytest.approx(p)  # alone in its family
    assert one_g["pooled"]["p_adjusted"] == pytest.approx(min(1.0, 2 * p))


def analysis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", *args, "--surrogates", "200"],
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and text in proc.stderr, proc.stderr


def in_process(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """The command in this process (bad-input checks need no fresh interpreter)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def _pairs(out: Path) -> dict[str, dict]:
    meta = strict_json(out / "meta_analysis.json")
    return {f"{p['x']}~{p['y']}": p for p in meta["pairs"]}


@pytest.mark.slow
def test_offline_folder_of_runs(tmp_path):
    runs = tmp_path / "runs"
    for i in range(3):
        write_files(planted_run("gaussian", RUN_S, 0, 0.5, seed=i), runs / f"coupled-{i}")
    for i, kind in enumerate(("ar1", "spikes")):  # and two runs in which nothing is coupled
        write_files(null_run(kind, RUN_S, seed=40 + i), runs / f"null-{kind}")
    out = tmp_path / "out"
    proc = analysis("--all-runs", "--runs-dir", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = strict_json(out / "runs.json")
    with (out / "runs.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    n_pairs = len(strict_json(out / "runs" / "coupled-0" / "report.json")["pairs"])
    assert len(rows) == len(csv_rows) == 5 * n_pairs
    assert {r["run"] for r in rows} == {"coupled-0", "coupled-1", "coupled-2", "null-ar1", "null-spikes"}
    by_run = {r["run"]: r for r in rows if (r["x"], r["y"]) == ("grad_norm", "power")}
    assert all(by_run[f"coupled-{i}"]["coupled"] for i in range(3))
    assert not by_run["null-ar1"]["coupled"] and not by_run["null-spikes"]["coupled"]
    pairs = _pairs(out)
    power = pairs["grad_norm~power"]["pooled"]
    # three runs at r ~ 0.5 and two at ~0: the runs disagree, the prediction interval says so
    assert power["k"] == 5 and 0.15 < power["r"] < 0.45 and power["i2"] > 0.8
    assert power["prediction_interval"][0] < 0 < power["prediction_interval"][1]
    assert pairs["grad_norm~power"]["direction"] == "optimizer_to_hardware"
    assert pairs["grad_norm~temperature"]["strength"] in ("none", "inconclusive")
    assert not pairs["grad_norm~temperature"]["coupled"]
    assert (out / "forest.png").stat().st_size > 10_000
    assert "grad_norm vs power: pooled r" in proc.stdout


def test_offline_bad_runs_dirs_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(in_process(capsys, "--all-runs", "--runs-dir", str(tmp_path / "empty"),
                              "--out", str(tmp_path / "o")),
                   "no run folders")
    two = tmp_path / "two" / "run-a"
    two.mkdir(parents=True)
    (two / "a.csv").write_text("x\n")
    (two / "b.csv").write_text("x\n")
    one_line_error(in_process(capsys, "--all-runs", "--runs-dir", str(tmp_path / "two"), "--out", str(tmp_path / "o")),
                   "folder run-a holds 0 training logs")
    one_line_error(in_process(capsys, "--runs-dir", str(tmp_path / "two"), "--out", str(tmp_path / "o")),
                   "--runs-dir needs --all-runs")


def _per_second(rec: Recording) -> dict[str, np.ndarray]:
    """A recording's columns as one value per second (bin_to_grid: the last sample in (t - 1, t]; the bins'
    edges half a second off the samplers' whole seconds, so jitter never splits them), a rare empty second
    filled forward: what a 1 s scrape would store."""
    start = float(np.ceil(max(rec.train.t_s[0], rec.hardware.t_s[0]))) + 0.5
    n = int(min(rec.train.t_s[-1], rec.hardware.t_s[-1]) - start)
    cols = {}
    for samples in (rec.train, rec.hardware):
        for name, values in samples.columns.items():
            col = bin_to_grid(samples.t_s, values, start, 1.0, n)
            filled = np.maximum.accumulate(np.where(np.isfinite(col), np.arange(n), 0))
            cols[name] = col[filled]
    # a gradient norm is positive: a negative draw would make the histogram's _sum fall, which PromQL's
    # rate() reads as a counter reset (a constant offset leaves every difference as it was)
    cols["grad_norm"] = cols["grad_norm"] + max(0.0, 1.0 - float(cols["grad_norm"].min()))
    return cols


@pytest.mark.slow
@pytest.mark.integration
def test_all_runs_against_a_real_prometheus(tmp_path):
    base = int(time.time()) // 60 * 60 - 2 * 86400  # backfill must be older than the head block
    recordings = {"coupled-a": planted_run("gaussian", RUN_S, 0, 0.6, seed=1),
                  "null-b": null_run("ar1", RUN_S, seed=2),
                  "coupled-c": planted_run("gaussian", RUN_S, 0, 0.6, seed=3),
                  "null-d": null_run("trends", RUN_S, seed=4)}
    series = []
    for i, (run_id, rec) in enumerate(recordings.items()):
        cols, start = _per_second(rec), base + i * (RUN_S + 120)
        series += train_series(cols, start, run_id, f"sim-{i}") + device_series(cols, start, f"sim-{i}", str(i))
    write_openmetrics(series, tmp_path / "series.om")
    create_blocks(tmp_path / "series.om", tmp_path / "tsdb")
    out = tmp_path / "out"
    with serve_prometheus(tmp_path / "tsdb", free_port()) as url:
        proc = analysis("--prometheus", url, "--all-runs", "--lookback", "3d", "--out", str(out))
        empty = analysis("--prometheus", url, "--all-runs", "--lookback", "1h", "--out", str(tmp_path / "e"))
    assert proc.returncode == 0, proc.stderr
    one_line_error(empty, "no runs in the window")
    rows = {(r["run"], r["y"]): r for r in strict_json(out / "runs.json") if r["x"] == "grad_norm"}
    assert {run for run, _ in rows} == set(recordings)
    for run in ("coupled-a", "coupled-c"):
        assert rows[(run, "power")]["coupled"] and rows[(run, "power")]["r"] > 0.45
    for run in ("null-b", "null-d"):
        assert not rows[(run, "power")]["coupled"] and abs(rows[(run, "power")]["r"]) < 0.2
    power = _pairs(out)["grad_norm~power"]["pooled"]
    assert power["k"] == 4 and power["i2"] > 0.9 and power["tau2"] > 0.05  # two coupled, two not
    assert strict_json(out / "runs" / "null-b" / "report.json")["inputs"]["run_id"] == "null-b"


def test_runs_on_different_grids_are_said_to_mix_time_scales():
    rows = [{"step_s": 1.0}, {"step_s": 2.0}, {"step_s": 1.0}]
    note = mixed_steps_note(rows)
    assert "1 s, 2 s" in note and "mixes time scales" in note
    assert mixed_steps_note(rows[::2]) is None
