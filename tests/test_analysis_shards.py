"""--all-runs past one process: --workers N writes what one process writes, --shard K/N + --pool-shards
writes what one process over every run writes (the same bytes), and the refusals are one line, exit 2.

Offline (--runs-dir) on five short runs, one of which cannot be analysed (a skipped run keeps its place)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_analysis_multirun import analysis, in_process, one_line_error, strict_json

from testkit.scenarios import null_run, planted_run, write_files
from thermograd.analysis.errors import InputError
from thermograd.analysis.multirun import MANIFEST_FORMAT, RunOutcome, analyse_runs, manifest_name, shard_of

RUN_S = 180  # short runs: what is checked is how the runs are gathered, not their statistics
TABLES = ("runs.csv", "runs.json", "meta_analysis.json", "forest.png")


def _broken_run(folder: Path) -> None:
    """A run whose every gradient norm is null: the single-run command refuses it, so --all-runs skips it."""
    log, _ = write_files(null_run("ar1", RUN_S, seed=7), folder)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({**record, "grad_norm": None}) + "\n" for record in records))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five runs; sorted, the broken one comes first and shard 1 of 2 holds only the fourth (coupled-2), so
    pooling must interleave the shards' runs."""
    runs = tmp_path_factory.mktemp("shards") / "runs"
    for i in range(3):
        write_files(planted_run("gaussian", RUN_S, 0, 0.5, seed=i), runs / f"coupled-{i}")
    write_files(null_run("ar1", RUN_S, seed=40), runs / "null-ar1")
    _broken_run(runs / "b-broken")
    return runs


@pytest.fixture(scope="module")
def sequential(runs_dir: Path) -> tuple[Path, str]:
    """One process, one run after another: the reference every other path must match."""
    out = runs_dir.parent / "sequential"
    proc = analysis("--all-runs", "--runs-dir", str(runs_dir), "--workers", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipped b-broken: " in proc.stdout  # the reference holds a skipped run
    return out, proc.stdout


def assert_same_tables(got: Path, want: Path) -> None:
    for name in TABLES:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name


@pytest.mark.slow
def test_workers_write_the_same_files_as_one_process(runs_dir, sequential):
    want, want_stdout = sequential
    out = runs_dir.parent / "workers"
    proc = analysis("--all-runs", "--runs-dir", str(runs_dir), "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert_same_tables(out, want)
    assert proc.stdout == want_stdout
    assert proc.stderr.count("analysis: run ") == 5  # one progress line per run
    assert strict_json(out / "meta_analysis.json")["runs_skipped"].keys() == {"b-broken"}


@pytest.mark.slow
def test_shards_pooled_write_the_same_files_as_one_process(runs_dir, sequential, capsys):
    want, want_stdout = sequential
    shared = runs_dir.parent / "shared"  # every shard on one --out, as on a shared volume
    for k in (1, 2):  # the second shard in two worker processes: shards and workers combine
        proc = analysis("--all-runs", "--runs-dir", str(runs_dir), "--shard", f"{k}/2", "--workers", str(k),
                        "--out", str(shared))
        assert proc.returncode == 0, proc.stderr
    manifests = {k: strict_json(shared / manifest_name(k, 2)) for k in (1, 2)}
    assert [e["run"] for e in manifests[1]["analysed"]] == ["coupled-2"]
    assert [e["run"] for e in manifests[2]["analysed"]] == ["coupled-0", "coupled-1", "null-ar1"]
    assert [e["run"] for e in manifests[2]["skipped"]] == ["b-broken"]
    assert not any((shared / name).exists() for name in TABLES)  # a shard leaves the tables to the pooling
    pooled = runs_dir.parent / "pooled"
    proc = in_process(capsys, "--pool-shards", str(shared), "--out", str(pooled))
    assert proc.returncode == 0, proc.stderr
    assert_same_tables(pooled, want)
    assert proc.stdout == want_stdout
    # a missing shard is refused, whatever else is there
    lone = runs_dir.parent / "lone"
    lone.mkdir()
    shutil.copy(shared / manifest_name(1, 2), lone)
    one_line_error(in_process(capsys, "--pool-shards", str(lone), "--out", str(pooled)), "shard 2/2 missing")


def test_a_shard_without_runs_writes_an_empty_manifest(runs_dir, tmp_path, capsys):
    k = next(k for k in range(1, 51) if all(shard_of(run.name, 50) != k for run in runs_dir.iterdir()))
    proc = in_process(capsys, "--all-runs", "--runs-dir", str(runs_dir), "--shard", f"{k}/50", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    manifest = strict_json(tmp_path / manifest_name(k, 50))
    assert (manifest["analysed"], manifest["skipped"], manifest["runs_total"]) == ([], [], 5)
    assert manifest["source"] == str(runs_dir) and manifest["settings"]["n_surrogates"] == 1000


@pytest.mark.slow
def test_ctrl_c_ends_the_workers_and_exits_130(runs_dir):
    proc = subprocess.Popen([sys.executable, "-m", "thermograd.analysis", "--all-runs", "--runs-dir", str(runs_dir),
                             "--workers", "2", "--surrogates", "200", "--out", str(runs_dir.parent / "interrupted")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (line := proc.stderr.readline()).startswith("analysis: run 1/5"):  # past any warning
        assert line, "no progress line"
    time.sleep(0.3)  # the workers are starting or analysing (five runs take seconds)
    proc.send_signal(signal.SIGINT)  # the parent alone: it must end its workers itself
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "analysis: interrupted" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 20  # not after the running runs finish


@pytest.mark.parametrize("spec", ["0/2", "3/2", "x", "1/0", "1/2/3", " /2"])
def test_bad_shard_specs_are_one_line(spec, tmp_path, capsys):
    one_line_error(in_process(capsys, "--all-runs", "--runs-dir", str(tmp_path), "--shard", spec,
                              "--out", str(tmp_path / "o")), f"--shard {spec!r}: must be K/N with 1 <= K <= N")


def test_bad_flag_combinations_are_one_line(tmp_path, capsys):
    one_line_error(in_process(capsys, "--all-runs", "--runs-dir", str(tmp_path), "--workers", "0",
                              "--out", str(tmp_path / "o")), "--workers 0: must be 1 or more")
    one_line_error(in_process(capsys, "--runs-dir", str(tmp_path), "--shard", "1/2", "--out", str(tmp_path / "o")),
                   "needs --all-runs")
    one_line_error(in_process(capsys, "--prometheus", "http://127.0.0.1:9", "--all-runs", "--shard", "1/2",
                              "--out", str(tmp_path / "o")), "--shard with --prometheus needs a fixed window")
    one_line_error(in_process(capsys, "--pool-shards", str(tmp_path), "--all-runs", "--out", str(tmp_path / "o")),
                   "drop --all-runs")
    one_line_error(in_process(capsys, "--pool-shards", str(tmp_path), "--out", str(tmp_path / "o")),
                   "no shard manifests")


def _manifest(k: int, n: int, **changes: object) -> dict:
    return {"format": MANIFEST_FORMAT, "shard": {"k": k, "n": n}, "source": "runs", "window": None,
            "settings": {"alpha": 0.05}, "flags": {"step": None}, "runs_total": 0, "runs_digest": "d",
            "analysed": [], "skipped": [], **changes}


@pytest.mark.parametrize(("shards", "text"), [
    ([_manifest(1, 2), _manifest(1, 2)], "shard 1/2 found twice"),
    ([_manifest(1, 2), _manifest(2, 3)], "shards of different splits (N = 2, 3)"),
    ([_manifest(1, 2), _manifest(2, 2, settings={"alpha": 0.01})], "shards 1/2 and 2/2 differ in settings (alpha)"),
    ([_manifest(1, 2), _manifest(2, 2, flags={"step": "5s"})], "shards 1/2 and 2/2 differ in flags (step)"),
    ([_manifest(1, 2), _manifest(2, 2, source="elsewhere")], "differ in source or window"),
    ([_manifest(1, 2), _manifest(2, 2, runs_total=3, runs_digest="e")], "differ in the runs they found (0 against 3)"),
    ([_manifest(1, 3), _manifest(3, 3)], "shard 2/3 missing (no shard-2-of-3.json"),
])
def test_pooling_refuses_shards_that_are_not_one_split(shards, text, tmp_path, capsys):
    folders = []
    for i, manifest in enumerate(shards):  # one folder each: a duplicate is a second copy, not the same file
        folders.append(tmp_path / f"node-{i}")
        folders[-1].mkdir()
        k, n = manifest["shard"]["k"], manifest["shard"]["n"]
        (folders[-1] / manifest_name(k, n)).write_text(json.dumps(manifest))
    one_line_error(in_process(capsys, "--pool-shards", *map(str, folders), "--out", str(tmp_path / "o")), text)


def test_a_runs_shard_follows_from_its_id_alone():
    """sha256 of the id, never Python's salted hash(): the same in every process, on every node, and a run
    keeps its shard when other runs are added."""
    assert [shard_of(run_id, 4) for run_id in ("run-a", "run-b", "coupled-2", "b-broken")] == [1, 1, 3, 4]
    ids = [f"run-{i}" for i in range(400)]
    counts = [sum(shard_of(run_id, 4) == k for run_id in ids) for k in range(1, 5)]
    assert sum(counts) == 400 and min(counts) > 70  # every run in one shard, the shards about even


# --- the worker pool on stand-in runs (no analysis): skipped runs, errors, order -------------------------------
def analyse_stand_in(run_id: str, ns: argparse.Namespace) -> list[dict]:
    """A stand-in for one run's analysis (multirun.run_rows), module level so worker processes can import it."""
    time.sleep(ns.seconds)
    if ns.fails == "input":
        raise InputError(f"{ns.name}: nothing to analyse")
    if ns.fails == "bug":
        raise RuntimeError(f"{ns.name}: a bug")
    if ns.fails == "killed":
        os._exit(137)  # as the kernel's OOM killer leaves it
    return [{"run": run_id}]


def _stand_ins(*fails: str) -> dict[str, argparse.Namespace]:
    # the first run is the slowest: outcomes must come back in the runs' order, not in the order they finish
    return {f"r{i}": argparse.Namespace(name=f"r{i}", fails=f, seconds=0.6 if i == 0 else 0.05)
            for i, f in enumerate(fails)}


def test_workers_keep_the_runs_order_and_skip_what_a_run_refuses(capsys):
    outcomes = analyse_runs(_stand_ins("", "input", "", "input", ""), analyse_stand_in, workers=2)
    assert outcomes == {"r0": RunOutcome(rows=[{"run": "r0"}]), "r1": RunOutcome(skipped="r1: nothing to analyse"),
                        "r2": RunOutcome(rows=[{"run": "r2"}]), "r3": RunOutcome(skipped="r3: nothing to analyse"),
                        "r4": RunOutcome(rows=[{"run": "r4"}])}
    assert capsys.readouterr().err.count("analysis: run ") == 5


def test_an_unexpected_error_in_a_worker_ends_the_pool_and_is_raised():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="r1: a bug"):
        analyse_runs(_stand_ins("", "bug", "", "", "", "", ""), analyse_stand_in, workers=2)
    assert time.monotonic() - t0 < 30


def test_a_worker_that_dies_is_one_line_naming_the_fix():
    with pytest.raises(InputError, match="a worker process died while analysing .*r1.*fewer processes"):
        analyse_runs(_stand_ins("", "killed", "", ""), analyse_stand_in, workers=2)
