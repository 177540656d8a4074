"""Fault suite, data loss: nothing already measured or written is lost — recompute over its own input,
a previous run's log, a full disk under the step log, and a second `docker compose up`. Real processes,
and a real 64 KiB tmpfs for the full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_stack_compose import load  # the compose loader that knows `!reset`

from testkit.faults import one_line_error, run_module
from thermograd.trainer.steplog import StepLog

LAB_CSV = ("timestamp,device,util_pct,temp_c,power_w\n"
           + "".join(f"{t},gpu,90,{60 + t * 0.1:.1f},180\n{t},cpu,40,55,60\n" for t in range(1, 40)))


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink"])
def test_recompute_refuses_to_write_over_its_own_input(tmp_path: Path, how: str):
    # Before: OUT (the gpu rows only) replaced the input, deleting every cpu row.
    src = tmp_path / "rec.csv"
    src.write_text(LAB_CSV)
    out = {"same": src, "relative": Path(os.path.relpath(src, REPO_ROOT)), "symlink": tmp_path / "link.csv",
           "hardlink": tmp_path / "hard.csv"}[how]
    if how == "symlink":
        out.symlink_to(src)
    if how == "hardlink":
        os.link(src, out)
    result = run_module("thermograd.exporter", "recompute", "--csv", str(src), "--device", "gpu",
                        "--rated-power", "200", "--temp-limit", "83", "--out", str(out))
    one_line_error(result, "--out", "refusing to overwrite")
    assert src.read_text() == LAB_CSV


def test_a_log_dir_holding_only_grad_norm_log_json_is_not_overwritten(tmp_path: Path):
    previous = tmp_path / "run" / "grad_norm_log.json"
    previous.parent.mkdir()
    previous.write_text('[\n  {"step": 1, "grad_norm": 0.5}\n]\n')
    result = run_module("thermograd.trainer", "--steps", "1", "--port", "0", "--log-dir", str(previous.parent))
    one_line_error(result, "grad_norm_log.json", "already holds a run's log")
    assert previous.read_text() == '[\n  {"step": 1, "grad_norm": 0.5}\n]\n'
    assert not (previous.parent / "steps.jsonl").exists()


@pytest.fixture
def full_disk(tmp_path: Path):
    """A real 64 KiB tmpfs: the step log fills it within a few hundred steps."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


TRAIN_ON_A_FULL_DISK = """
import sys, urllib.request
from thermograd.trainer.metrics import TrainingMetrics
m = TrainingMetrics(port=0, run_id="full", log_dir=sys.argv[1])
for step in range(1, 3001):
    m.observe_step(step, 2.0, 0.5, 1e-3, tokens=64)
import time; time.sleep(1.0)  # let the writer meet the full disk
body = urllib.request.urlopen(m.url, timeout=5).read().decode()
dropped = [l for l in body.splitlines() if l.startswith("train_log_records_dropped_total")][0]
print(dropped.split()[-1], flush=True)
m.close(linger_s=0)
print("steps done", flush=True)
"""


def test_a_full_disk_keeps_training_and_leaves_only_complete_lines(full_disk: Path):
    # Before: the writer thread died with a traceback, the queue grew without bound, close() raised
    # (exit 1) and left a truncated steps.jsonl and a stale grad_norm_log.json.tmp.
    log_dir = full_disk / "run"
    result = subprocess.run([sys.executable, "-c", TRAIN_ON_A_FULL_DISK, str(log_dir)], capture_output=True,
                            text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    dropped_on_metrics, done = result.stdout.split()[0], result.stdout.strip().splitlines()[-1]
    assert done == "steps done"
    assert result.stderr.count("cannot write (No space left on device)") == 1  # warned once
    text = (log_dir / "steps.jsonl").read_text()
    assert text.endswith("\n")
    steps = [json.loads(line)["step"] for line in text.splitlines()]  # every line complete JSON
    assert 0 < len(steps) < 3000
    assert float(dropped_on_metrics) > 0
    assert f"{3000 - len(steps)} record(s) could not be written" in result.stderr
    assert not list(log_dir.glob("*.tmp"))


def test_the_step_log_queue_is_bounded_drops_and_counts(tmp_path: Path):
    log = StepLog(tmp_path, "q", 0, max_queued=10)
    stalled, real_write = threading.Event(), log._write_line

    def slow_disk(data: bytes) -> None:  # a disk that stops answering for a while
        stalled.wait(10)
        real_write(data)

    log._write_line = slow_disk  # type: ignore[method-assign]
    record = (1, 2.0, 0.5, 1e-3, None, 1.7e9, 64, False, False, False, 0.0, None)
    for _ in range(100):
        log.append(record)  # never blocks the training loop
    assert 85 <= log.dropped <= 90  # 10 queued, at most one in the writer's hands
    stalled.set()
    log.close()
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    assert len(lines) + log.dropped == 100
    assert all(json.loads(line)["step"] == 1 for line in lines)


def _compose_trainer_log_dir(path: Path) -> str:
    command = load(path)["services"]["trainer"]["command"]
    return command[command.index("--log-dir") + 1]


@pytest.mark.slow
def test_a_second_compose_up_starts_a_new_run_beside_the_first(tmp_path: Path):
    # Before: --log-dir /data/logs on the persistent volume: the second `up` was refused (exit 2).
    template = _compose_trainer_log_dir(REPO_ROOT / "docker-compose.yml")
    assert template == _compose_trainer_log_dir(REPO_ROOT / "docker-compose.nogpu.yml")
    assert template.startswith("/data/logs/") and "{run_id}" in template
    volume_template = template.replace("/data/logs", str(tmp_path / "volume"))
    for _ in range(2):
        result = run_module("thermograd.trainer", "--steps", "1", "--batch-size", "1", "--seq-len", "8", "--port", "0",
                            "--linger", "0", "--quiet", "--log-dir", volume_template, timeout=120)
        assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "volume").iterdir())
    assert len(runs) == 2 and all((run / "steps.jsonl").stat().st_size > 0 for run in runs)
