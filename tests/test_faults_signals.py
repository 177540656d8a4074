"""Fault suite, signals: a process started with SIGINT ignored (nohup, `make test &`, a CI runner
without a terminal) inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler. The demo,
the exporter and the trainer install theirs explicitly, so SIGINT still stops each of them cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from faultlib import ignore_sigint, serving
from test_stack_demo import assert_nothing_left, demo_argv, fresh_ports

from scripts import stacklib as sl

pytestmark = pytest.mark.integration


def test_the_exporter_stops_on_sigint_even_when_started_with_it_ignored(tmp_path: Path):
    with serving("exporter", tmp_path, preexec_fn=ignore_sigint) as served:
        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(timeout=10) == 0
        assert "Traceback" not in served.stderr()


@pytest.mark.slow
def test_the_trainer_stops_on_sigint_even_when_started_with_it_ignored(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-m", "thermograd.trainer", "--steps", "100000", "--batch-size", "1",
                             "--seq-len", "8", "--port", "0", "--linger", "0", "--log-dir", str(tmp_path / "log")],
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, preexec_fn=ignore_sigint)
    try:
        for line in proc.stderr:
            if "run_id=" in line:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "log" / "grad_norm_log.json").exists()  # stopped the clean way: logs flushed


@pytest.mark.slow
@pytest.mark.skipif(not all(sl.find_binary(kind) for kind in sl.BINARY_NAMES),
                    reason="prometheus and alertmanager binaries are not installed")
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_demo_stops_every_child_on_sigint_even_when_started_with_it_ignored(tmp_path: Path, signum: int,
                                                                                exit_code: int):
    # Before: `nohup make test` left the demo deaf to SIGINT (test_ctrl_c_stops_every_child hung); SIGTERM
    # exited 130 like SIGINT, where a shell reports 128 + 15.
    ports, out = fresh_ports(), tmp_path / "out"
    demo = subprocess.Popen(demo_argv(out, ports, "--duration", "600"), stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, preexec_fn=ignore_sigint)
    try:
        for line in demo.stdout:
            if line.startswith("demo: Prometheus http"):
                break
        demo.send_signal(signum)
        remaining = demo.communicate(timeout=60)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == exit_code
    assert "interrupted: stopping every child" in remaining and "all children stopped" in remaining
    assert_nothing_left(out, ports)
