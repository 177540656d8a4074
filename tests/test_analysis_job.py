"""A job of many ranks: its stragglers, their cause and cost — from files (`--job-dir`, synthetic jobs of
testkit/jobgen.py) and live (a 2-rank torchrun job on two simulated GPUs, one poorly cooled, with the emulated clock
path, scraped by a real Prometheus through `thermograd run --prometheus`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from testkit.jobgen import write_job
from thermograd.analysis.files.job import step_states
from thermograd.analysis.stats.stragglers import MIXED_STEP, GpuRows, RankRows, analyse_job, log_ratios
from thermograd.processes import find_binary


def analysis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", *args], capture_output=True, text=True,
                          timeout=300)


def test_the_log_ratio_is_against_the_other_ranks_median():
    compute = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.25, 1.0]])
    ratio = np.exp(log_ratios(compute))
    assert np.allclose(ratio[:, 0], [1.0, 1.0, 1.0, 1.25]) and np.allclose(ratio[:, 1], 1.0)
    assert np.allclose(np.exp(log_ratios(np.array([[1.0], [1.25]])))[:, 0], [0.8, 1.25])  # two ranks: each other


def _rows(n: int, slow_while_hot: float, slow_always: float, hot_every: int | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    hot = np.zeros(n) if hot_every is None else ((np.arange(n) // hot_every) % 2 == 1).astype(float)
    compute = 0.2 * np.exp(rng.normal(0, 0.03, (4, n)))
    compute[3] *= slow_always * np.where(hot > 0, slow_while_hot, 1.0)
    ranks = [RankRows(r, f"GPU-{r}", "node", compute[r], np.full(n, 1000.0)) for r in range(4)]
    gpus = {f"GPU-{r}": GpuRows(f"GPU-{r}", hot if r == 3 else np.zeros(n), np.where(hot > 0, 0.8, 1.0)
                                if r == 3 else np.ones(n), np.full(n, 70.0)) for r in range(4)}
    return ranks, gpus, compute.max(axis=0) + 0.01


def test_a_rank_slower_while_its_gpu_throttles_is_a_thermal_straggler_with_a_cost():
    ranks, gpus, step = _rows(600, 1.25, 1.0, 60)
    verdict = analyse_job(ranks, gpus, step, 1.0)
    assert [v.rank for v in verdict.thermal] == [3]
    v = verdict.ranks[3]
    assert v.cause == "thermal or power" and v.slowdown_ci[0] < 1.25 < v.slowdown_ci[1]
    assert v.tokens_lost > 0 and v.tokens_lost_ci[0] < v.tokens_lost < v.tokens_lost_ci[1]
    assert not any(r.straggler for r in verdict.ranks[:3])


def test_a_rank_slower_throughout_on_a_cool_gpu_is_another_cause_and_no_gpu_is_unknown():
    ranks, gpus, step = _rows(600, 1.0, 1.10, 60)  # its GPU throttles in spells that do not slow it
    verdict = analyse_job(ranks, gpus, step, 1.0)
    assert not verdict.thermal and [v.rank for v in verdict.stragglers] == [3]
    assert verdict.ranks[3].cause == "another cause" and "data, input or network" in verdict.ranks[3].cause_reason
    del gpus["GPU-3"]
    assert analyse_job(ranks, gpus, step, 1.0).ranks[3].cause == "unknown"
    quiet = analyse_job(*_rows(600, 1.0, 1.0, None), 1.0)
    assert not quiet.stragglers


def test_a_step_is_throttled_only_where_every_reading_around_it_says_so():
    """Readings every second, throttled at 3-5 s: a step is known hot or cool only when the reading at or before
    its start and the one at or after its end (and every one between) agree; else MIXED_STEP."""
    t = np.arange(10.0)
    flags = ((t >= 3) & (t <= 5)).astype(float)
    start, end = np.array([0.1, 2.2, 3.2, 5.5, 7.0, 2.5]), np.array([0.4, 2.5, 3.5, 5.8, 7.3, 6.5])
    assert step_states(t, flags, start, end).tolist() == [0.0, MIXED_STEP, 1.0, MIXED_STEP, 0.0, MIXED_STEP]
    assert np.isnan(step_states(t, np.full(10, np.nan), start, end)).all()


def test_the_cost_ci_covers_what_a_64_rank_job_lost(tmp_path: Path):
    """bench_job's job 11 (64 ranks): with the state read at each step's end only, the steps around each change of
    state fell on the wrong side, and the CI's upper end sat 0.2 % under the planted loss."""
    job = write_job(tmp_path / "job", "thermal", 64, seconds=600, seed=1011)
    proc = analysis("--job-dir", str(job.folder), "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    lost = next(iter(json.loads((tmp_path / "out" / "report.json").read_text())["job"]
                     ["tokens_lost_to_throttling"].values()))
    assert lost["ci_95"][0] <= job.tokens_lost <= lost["ci_95"][1]


def test_job_dir_names_the_thermal_straggler_and_what_it_cost(tmp_path: Path):
    job = write_job(tmp_path / "job", "thermal", 4, seconds=300, seed=3)
    proc = analysis("--job-dir", str(job.folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    section = json.loads((tmp_path / "out" / "report.json").read_text())["job"]
    assert section["thermal_or_power_stragglers"] == [job.straggler] and section["n_ranks"] == 4
    lost = next(iter(section["tokens_lost_to_throttling"].values()))
    # within 5 % of what was planted (the CI's coverage over many jobs is bench/bench_job.py's to measure)
    assert abs(lost["tokens"] - job.tokens_lost) < 0.05 * job.tokens_lost
    assert lost["ci_95"][0] < lost["tokens"] < lost["ci_95"][1]
    assert f"Thermal or power straggler(s): rank {job.straggler}" in proc.stdout
    assert (tmp_path / "out" / "job.png").stat().st_size > 10_000
    other = write_job(tmp_path / "other", "other", 4, seconds=300, seed=4)
    proc = analysis("--job-dir", str(other.folder), "--out", str(tmp_path / "out2"))
    section = json.loads((tmp_path / "out2" / "report.json").read_text())["job"]
    assert not section["thermal_or_power_stragglers"] and section["other_cause_stragglers"] == [other.straggler]


def test_bad_job_input_is_one_line(tmp_path: Path):
    proc = analysis("--job-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no step logs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "rank-0").mkdir()
    (tmp_path / "rank-0" / "steps.jsonl").write_text('{"step":1,"grad_norm":1.0,"time_unix":1.8e9}\n')
    (tmp_path / "rank-0" / "hardware.csv").write_text("time_unix,device,temp_c,power_w,rle_smoothed,a_load,collapse\n"
                                                      "1.8e9,0,50,100,0.5,0.4,0\n")
    proc = analysis("--job-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no compute_s" in proc.stderr and "watch(model)" in proc.stderr
    proc = analysis("--job", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--job needs --prometheus" in proc.stderr


def _rewrite(path: Path, edit) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(edit(line)) + "\n" for line in lines))


def test_job_folders_that_are_not_one_job_are_refused_and_a_gpu_without_a_recording_is_said(tmp_path: Path):
    """What a new user's --job-dir met: a rank's log in another rank's folder, logs of different days, one GPU
    uuid recorded on two hosts (each was exit 0 with a wrong or empty answer), and a rank whose GPU no recording
    holds (said in the headline, not only in a trailing note)."""
    def job(name: str):
        return write_job(tmp_path / name, "thermal", 3, seconds=120, seed=5)

    moved = job("moved")
    _rewrite(moved.folder / "rank-1" / "steps.jsonl", lambda line: {**line, "rank": 0})
    proc = analysis("--job-dir", str(moved.folder), "--out", str(tmp_path / "o1"))
    assert proc.returncode == 2 and "its steps say rank 0, but it is in folder rank-1" in proc.stderr
    assert not (tmp_path / "o1").exists()  # no empty folder left behind
    apart = job("apart")
    _rewrite(apart.folder / "rank-2" / "steps.jsonl",
             lambda line: {**line, "time_unix": line["time_unix"] + 2 * 86400, "timestamp": None})
    proc = analysis("--job-dir", str(apart.folder), "--out", str(tmp_path / "o2"))
    assert proc.returncode == 2 and "do not overlap in time" in proc.stderr and len(proc.stderr.splitlines()) == 1
    twice = job("twice")
    csv0 = (twice.folder / "rank-0" / "hardware.csv").read_text().splitlines()
    header, rows = csv0[0].split(","), [row.split(",") for row in csv0[1:]]
    host = header.index("host")
    other_host = [[*row[:host], "elsewhere", *row[host + 1:]] for row in rows]
    (twice.folder / "rank-1" / "copy.csv").write_text("\n".join([csv0[0], *map(",".join, other_host)]) + "\n")
    proc = analysis("--job-dir", str(twice.folder), "--out", str(tmp_path / "o3"))
    assert proc.returncode == 2 and "recorded on two hosts" in proc.stderr
    blind = job("blind")
    (blind.folder / "rank-1" / "hardware.csv").unlink()
    proc = analysis("--job-dir", str(blind.folder), "--out", str(tmp_path / "o4"))
    assert proc.returncode == 0, proc.stderr
    assert "Rank(s) 1: no recording of their GPU" in proc.stdout
    section = json.loads((tmp_path / "o4" / "report.json").read_text())["job"]
    assert section["ranks_without_gpu_series"] == [1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.quiet
def test_a_two_rank_torchrun_job_with_a_poorly_cooled_gpu_against_a_real_prometheus(tmp_path: Path):
    """Two ranks under torchrun (gloo), each on its own simulated GPU; GPU 1's heat sink is clogged. With the
    emulated clock path its rank computes slower as it throttles, rank 0 waits for it, and the job's analysis —
    through the real Prometheus that scraped both ranks and the exporter — names rank 1, thermal, labelled as
    emulation; the files give the same answer."""
    if find_binary("prometheus") is None:
        pytest.fail("prometheus not found: run `make system-deps`")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "thermograd", "run", "--prometheus", "--devices", "2", "--sim-cooling", "1=0.3",
         "--sim-profile", "demo", "--emulate-clock", "--no-pauses", "--quiet", "--duration", "120", "--out",
         str(out), "--", sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
         "thermograd.trainer", "--steps", "100000", "--batch-size", "4", "--seq-len", "64", "--quiet",
         "--linger", "3"], capture_output=True, text=True, timeout=420,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert (out / "job" / "report.json").is_file(), proc.stderr[-3000:]
    report = json.loads((out / "job" / "report.json").read_text())
    assert report["inputs"]["source"] == "prometheus" and report["inputs"]["hardware"]["emulation"] == "clock"
    assert report["job"]["thermal_or_power_stragglers"] == [1], report["job"]["ranks"]
    assert "EMULATED clock path" in report["inputs"]["hardware"]["description"]
    offline = analysis("--job-dir", str(out), "--out", str(tmp_path / "offline"), "--quiet")
    assert offline.returncode == 0, offline.stderr
    assert json.loads((tmp_path / "offline" / "report.json").read_text())["job"]["thermal_or_power_stragglers"] == [1]
