"""The real `thermograd-trainer` process: /metrics mid-run, logs, signals, non-finite abort, exit codes."""

from __future__ import annotations

import json
import signal
import socket
import statistics

import pytest
from conftest import free_port
from test_trainer_helpers import (
    read_jsonl,
    run_trainer,
    sample,
    start_trainer,
    stop,
    try_scrape,
    wait_for,
)

SMALL = ["--batch-size", "4", "--seq-len", "64"]
TINY_BATCH = ["--batch-size", "2", "--seq-len", "32"]


@pytest.mark.slow
@pytest.mark.integration
def test_twenty_steps_scraped_mid_run_match_the_log(tmp_path):
    port = free_port()
    log_dir = tmp_path / "log"
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_trainer(
        ["--steps", "20", *TINY_BATCH, "--port", str(port), "--log-dir", str(log_dir), "--linger", "2",
         "--run-id", "proc-test"], tmp_path,
    )
    scrapes = []
    try:
        # Scrape as fast as we can while training runs; keep the ones taken mid-run.
        def finished():
            samples = try_scrape(url)
            if (samples is not None
                    and ("train_steps_total", frozenset({("run_id", "proc-test"), ("rank", "0")})) in samples):
                scrapes.append(samples)
                return samples[("train_steps_total", frozenset({("run_id", "proc-test"), ("rank", "0")}))] >= 20
            return proc.poll() is not None

        wait_for(finished, timeout_s=60, interval_s=0.01)
        final = scrapes[-1]
        out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    records = read_jsonl(log_dir / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(1, 21))
    by_step = {r["step"]: r for r in records}

    mid = [s for s in scrapes if 0 < sample(s, "train_steps_total") < 20]
    totals = [sample(s, "train_steps_total") for s in mid]
    assert len(set(totals)) >= 2, f"too few mid-run scrapes: {totals}"
    assert totals == sorted(totals)  # rising
    for s in mid:  # the gauge is exactly the logged pre-clip norm of the same step
        step = int(sample(s, "train_step"))
        assert sample(s, "train_grad_norm", run_id="proc-test", rank="0") == by_step[step]["grad_norm"]
        assert sample(s, "train_loss") == by_step[step]["loss"]

    assert sample(final, "train_steps_total") == 20
    assert sample(final, "train_step_grad_norm_count") == 20
    assert sample(final, "train_step_grad_norm_sum") == pytest.approx(sum(r["grad_norm"] for r in records), rel=1e-9)
    assert sample(final, "train_step_grad_norm_bucket", le="+Inf") == 20
    assert sample(final, "train_tokens_total") == 20 * 2 * 32
    assert sample(final, "train_clipped_steps_total") == sum(r["grad_norm"] > 1.0 for r in records)
    assert sample(final, "train_run_info", model="tiny-gpt2", device="cpu", gpu_uuid="", world_size="1") == 1
    losses = [r["loss"] for r in records]
    assert statistics.mean(losses[-5:]) < statistics.mean(losses[:5]) - 0.5, losses
    assert json.loads((log_dir / "grad_norm_log.json").read_text()) == records


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_finishes_the_step_flushes_logs_and_exits_0(tmp_path):
    log_dir = tmp_path / "log"
    proc = start_trainer(["--steps", "2000", *TINY_BATCH, "--port", "0", "--log-dir", str(log_dir), "--linger", "0.5"],
                         tmp_path)
    try:
        wait_for(lambda: len(read_jsonl(log_dir / "steps.jsonl")) >= 3 or proc.poll() is not None, timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "Traceback" not in err
    records = read_jsonl(log_dir / "steps.jsonl")
    assert len(records) >= 3 and [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert json.loads((log_dir / "grad_norm_log.json").read_text()) == records


@pytest.mark.slow
@pytest.mark.integration
def test_consecutive_nonfinite_steps_abort_with_exit_3(tmp_path):
    port = free_port()
    log_dir = tmp_path / "log"
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_trainer(
        ["--steps", "50", *TINY_BATCH, "--port", str(port), "--log-dir", str(log_dir), "--linger", "2",
         "--inject-nan-at", "4,6-100", "--max-nonfinite", "3", "--gpu-uuid", "sim-0"], tmp_path,
    )
    try:
        # While it lingers after aborting, /metrics shows the non-finite count.
        def aborted():
            samples = try_scrape(url)
            return samples if samples and sample(samples, "train_nonfinite_steps_total") == 4 else None

        final = wait_for(aborted, timeout_s=60)
        out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 3, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("trainer: error: 3 consecutive non-finite steps") and "Traceback" not in err
    assert sum("warning: step" in line for line in lines) == 4
    records = read_jsonl(log_dir / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["nonfinite"] for r in records] == [False] * 3 + [True, False, True, True, True]
    assert records[3]["loss"] is None and records[3]["grad_norm"] is None
    assert sample(final, "train_steps_total") == 8
    assert sample(final, "train_step_grad_norm_count") == 4  # non-finite norms stay out of the histogram
    assert sample(final, "train_run_info", gpu_uuid="sim-0", device="cpu") == 1  # --gpu-uuid overrides
    assert json.loads((log_dir / "grad_norm_log.json").read_text()) == records


def _one_line_error(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trainer: error: ") and expected in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n")
    _one_line_error(run_trainer(["--data", str(tmp_path / "missing.txt")], tmp_path), "--data path not found")
    _one_line_error(run_trainer(["--data", str(empty)], tmp_path), "empty corpus")
    _one_line_error(run_trainer(["--perturb", "every=60,duration=5s"], tmp_path), "needs a unit")
    _one_line_error(run_trainer(["--perturb", "steps=10-14,bogus=1"], tmp_path), "unknown key 'bogus'")
    _one_line_error(run_trainer(["--perturb", "kind=pause,every=20s,duration=4s,lr_mult=3"], tmp_path),
                    "kind=pause takes no lr_mult=")
    _one_line_error(run_trainer(["--perturb", "every=20s,duration=4s", "--perturb", "steps=3"], tmp_path),
                    "one --perturb per kind")
    _one_line_error(run_trainer(["--steps", "0"], tmp_path), "--steps must be >= 1")
    _one_line_error(run_trainer(["--steps", "ten"], tmp_path), "invalid int value")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        _one_line_error(run_trainer(["--port", str(taken), "--log-dir", str(tmp_path / "p")], tmp_path), "in use")
    assert not (tmp_path / "p" / "steps.jsonl").exists()  # nothing half-created


@pytest.mark.slow
def test_unloadable_model_is_one_line_and_exit_2(tmp_path):
    proc = run_trainer(["--model", str(tmp_path / "no-such-model"), "--port", "0", "--log-dir", str(tmp_path / "l")],
                       tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trainer: error: cannot load model"), proc.stderr


def test_a_second_sigterm_does_not_cut_the_clean_exit_short(tmp_path):
    """A SIGKILLed supervisor's kernel sends the job one SIGTERM per thread: the first ends the program like
    Ctrl-C does, the next ones must not interrupt the cleanup it starts (where grad_norm_log.json is written)."""
    import subprocess
    import sys

    program = (
        "import os, signal, time\n"
        "from thermograd.trainer.metrics import _sigterm_exits_cleanly\n"
        "_sigterm_exits_cleanly()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "finally:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # a second one, mid-cleanup\n"
        "    time.sleep(0.2)\n"
        "    print('cleaned up', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "cleaned up" in proc.stdout, proc.stderr
