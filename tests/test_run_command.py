"""`thermograd run -- CMD`: a user's own script (not the reference trainer) to a verdict in one command, with
and without Prometheus, interrupted, uninstrumented, and given bad input. Real processes throughout: the
command, the user's script, the simulated GPU heated by that script's own CPU use, and a real Prometheus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer_helpers import read_jsonl, wait_for

from thermograd.processes import find_binary

# A user's own loop the docs' way (docs/instrumentation.md): a real PyTorch model, clip_and_measure_grad_norm,
# the context manager.
TORCH_LOOP = '''
import sys, time
import torch
from thermograd import TrainingMetrics, clip_and_measure_grad_norm

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
end = time.time() + float(sys.argv[1])
with TrainingMetrics() as metrics:
    step = 0
    while time.time() < end:
        step += 1
        x = torch.randn(64, 64)
        loss = ((model(x) - x[:, :1]) ** 2).mean()
        loss.backward()
        norm = clip_and_measure_grad_norm(model.parameters(), max_norm=10.0)
        loss_value, norm_value = norm.publish_with(loss)
        optimizer.step()
        optimizer.zero_grad()
        metrics.observe_step(step, loss_value, norm_value, 0.01, tokens=64)
        time.sleep(0.002)
'''

# A job whose compute follows its gradient norm: stretches of busy and lighter steps (never idle, so every
# pause of the positive control shows), each step's norm
# telling which. Its CPU use heats the simulated GPU, so optimizer -> hardware is coupled by construction
# (and no torch to import: it starts at once).
DUTY_LOOP = '''
import random, sys, time
from thermograd import TrainingMetrics

rng = random.Random(1)
end = time.time() + float(sys.argv[1])
with TrainingMetrics() as metrics:
    step = 0
    duty = 1.0
    while time.time() < end:
        duty, stretch_end = 1.6 - duty, time.time() + rng.uniform(3.0, 8.0)  # 0.6 and 1.0 in turn
        while time.time() < min(stretch_end, end):
            step += 1
            start = time.perf_counter()
            while time.perf_counter() - start < 0.02 * duty:
                pass
            time.sleep(0.02 * (1.0 - duty))
            metrics.observe_step(step, 2.0 - duty, 1.0 + 3.0 * duty + rng.gauss(0.0, 0.1), 1e-3, tokens=100)
'''

# A light loop (no torch: it starts at once), a step every 20 ms until it is stopped; argv[1] says what it does
# on SIGINT: "plain" dies of it (status 130), "quiet" ends without a word (0), "checkpoint" takes 3 s to save a
# checkpoint first (a second SIGINT there would lose it), "ignore-int" ignores SIGINT (SIGTERM ends it: 143),
# "ignore-int-term" ignores both (only SIGKILL ends it: 137); "stop-self" stops itself with SIGTSTP (Ctrl-Z)
# after 20 steps. It writes its process id to job.pid.
STEP_LOOP = '''
import os, signal, sys, time
from thermograd import TrainingMetrics

mode = sys.argv[1]
open("job.pid", "w").write(str(os.getpid()))
if mode in ("ignore-int", "ignore-int-term"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
with TrainingMetrics() as metrics:
    if mode == "ignore-int-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after TrainingMetrics, which makes SIGTERM a clean exit
    step = 0
    try:
        while True:
            step += 1
            time.sleep(0.02)
            metrics.observe_step(step, 1.0 / step, 1.0 + 0.1 * (step % 7), 1e-3)
            if mode == "stop-self" and step == 20:
                os.kill(os.getpid(), signal.SIGTSTP)
    except KeyboardInterrupt:
        if mode == "plain":
            raise
        if mode == "checkpoint":
            time.sleep(3)
            open("checkpoint.saved", "w").write(str(step))
'''

# Pauses dense enough for a short test run: a 3-s burst every 12 s, the first after the 30 s start-up.
TEST_PAUSES = "every=12s,duration=3s,start=34s"
# The duty loop's own load swings (0.6 to 1.0) are noise to the pauses' effect (1 to 0): longer pauses stand
# out of it.
# Six pauses in the 150 s run, the first after the start-up: every 12 s from 34 s left half the rows to the
# positive control, and a start-up the analysis extended to 32-36 s on a busy CI machine left 28-38 rows for the
# pairs: "inconclusive", rightly, in 2 of 3 CI runs of 2026-12-07.
DUTY_PAUSES = "every=20s,duration=4s,start=40s"


def write_script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run_env(path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOGRAD_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if path is not None:
        env["PATH"] = path
    return env


def thermograd_run(args: list[str], cwd: Path, timeout_s: float = 300, path: str | None = None,
                   ) -> subprocess.CompletedProcess:
    # stdin no terminal: under a developer's terminal the job would otherwise hold it (thermograd/job.py)
    return subprocess.run([sys.executable, "-m", "thermograd", "run", *args], cwd=cwd, env=run_env(path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)


def one_folder(parent: Path) -> Path:
    runs = sorted((parent / "thermograd-runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.quiet
def test_a_users_own_loop_to_a_verdict_without_prometheus(tmp_path: Path):
    """No Prometheus on PATH: the hardware is recorded to a CSV, the loop's log to steps.jsonl, and the
    analysis reads both. The simulated GPU is said to be simulated, first; its hardware -> training question
    has no physical path; the pauses are found on it (the positive control)."""
    script = write_script(tmp_path, "train.py", TORCH_LOOP)
    proc = thermograd_run(["--pauses", TEST_PAUSES, "--", sys.executable, str(script), "80"], tmp_path,
                          path="/nonexistent")  # no prometheus binary to be found
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = one_folder(tmp_path)
    for name in ("hardware.csv", "steps.jsonl", "grad_norm_log.json", "report.json", "coupling.png",
                 "crosscorr.png", "run.json"):
        assert (out / name).stat().st_size > 0, name
    rep = report(out)
    hardware = rep["inputs"]["hardware"]
    assert hardware["simulated"] is True and hardware["backend"] == "sim" and hardware["measured"] is False
    assert "job's own processes" in hardware["heat_source"]
    assert proc.stdout.splitlines()[0].startswith("SIMULATED hardware: sim-0")
    assert rep["verdicts"]["hardware_to_training"]["strength"] == "no physical path"
    assert "No physical path: simulated hardware" in proc.stdout
    control = rep["positive_control"]
    assert control["intervention"] == "pause" and control["detected"], control
    steps = read_jsonl(out / "steps.jsonl")
    assert {r["run_id"] for r in steps} == {json.loads((out / "run.json").read_text())["run_id"]}
    assert sum(r["pause_s"] > 0 for r in steps) >= 3
    # a short run: the start-up the analysis could leave out was cut, and the report says so
    assert any("--warmup 30s was overridden" in note for note in rep["notes"])
    assert "SIMULATED GPU" in proc.stderr and "report: " in proc.stderr


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.quiet
def test_with_prometheus_the_same_run_gets_the_same_verdict_as_from_its_files(tmp_path: Path):
    if find_binary("prometheus") is None:
        pytest.fail("prometheus not found: run `make system-deps`")
    script = write_script(tmp_path, "duty.py", DUTY_LOOP)
    proc = thermograd_run(["--prometheus", "--pauses", DUTY_PAUSES, "--", sys.executable, str(script), "150"],
                          tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = one_folder(tmp_path)
    online = report(out)
    assert online["inputs"]["source"] == "prometheus" and online["inputs"]["hardware"]["simulated"] is True
    assert {q["purpose"] for q in online["queries"]} >= {"grad_norm", "power"}
    assert (out / "prometheus" / "data").is_dir()  # the TSDB is kept
    offline_dir = tmp_path / "offline"
    again = subprocess.run([sys.executable, "-m", "thermograd.analysis", "--grad-log", str(out / "steps.jsonl"),
                            "--rle-csv", str(out / "hardware.csv"), "--out", str(offline_dir), "--quiet"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    offline = report(offline_dir)
    for rep in (online, offline):  # the job's compute follows its norm: coupled, found both ways
        verdict = rep["verdicts"]["optimizer_to_hardware"]
        assert verdict["coupled"] is True, verdict
        assert rep["verdicts"]["hardware_to_training"]["strength"] == "no physical path"
        assert rep["positive_control"]["detected"] is True
    couplings = [{(p["x"], p["y"]) for p in rep["pairs"] if p["coupled"] and p["direction"] == "optimizer_to_hardware"}
                 for rep in (online, offline)]
    assert ("grad_norm", "power") in couplings[0] & couplings[1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 143)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_interrupted_run_keeps_its_data_and_still_gets_its_report(tmp_path: Path, signum: int, status: int):
    """Started with SIGINT ignored (as nohup and CI runners start jobs): the signal still reaches the job once,
    its log is flushed whole (grad_norm_log.json written), and the run is analysed. SIGHUP (the terminal closed)
    stops the job as SIGTERM does: before, it killed thermograd and left the job training, unanalysed."""
    script = write_script(tmp_path, "duty.py", DUTY_LOOP)

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "thermograd", "run", "--no-pauses", "--", sys.executable,
                             str(script), "600"], cwd=tmp_path, env=run_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint)
    try:
        steps = wait_for(lambda: next((tmp_path / "thermograd-runs").glob("*/steps.jsonl"), None), 60, 0.2)
        wait_for(lambda: time.sleep(1) or (steps.stat().st_size > 20_000 and len(read_jsonl(steps)) > 200), 60)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, stderr[-3000:]
    out = steps.parent
    logged = read_jsonl(steps)  # every line whole
    assert json.loads((out / "grad_norm_log.json").read_text()) == logged
    assert (out / "report.json").is_file() and "thermograd analysis" in stdout
    assert f"interrupted ({signal.Signals(signum).name})" in stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["exit_status"] == status and summary["stopped_by"] == signal.Signals(signum).name
    assert summary["signals_sent"] == ["SIGINT" if signum == signal.SIGINT else "SIGTERM"]


def test_a_job_that_never_used_the_instrumentation_is_told_what_to_add(tmp_path: Path):
    proc = thermograd_run(["--", sys.executable, "-c", "print('training without thermograd')"], tmp_path, 120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "logged no training step" in errors[0]
    assert "TrainingMetrics" in errors[0] and "observe_step" in errors[0] and "PrometheusCallback" in errors[0]
    assert not (one_folder(tmp_path) / "report.json").exists()  # never an empty report


def test_a_failing_job_keeps_its_exit_status(tmp_path: Path):
    proc = thermograd_run(["--", sys.executable, "-c", "import sys; sys.exit(7)"], tmp_path, 120)
    assert proc.returncode == 7 and "before logging any training step" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    ([], "no command to run"),
    (["--", "no-such-program-here"], "command not found"),
    (["--pauses", "every=1s", "--", "true"], "--pauses"),
    (["--sample-hz", "0", "--", "true"], "--sample-hz"),
    (["--duration", "-3", "--", "true"], "--duration"),
    (["--grace", "-1", "--", "true"], "--grace"),
    (["--gpu-uuid", "GPU-nope", "--", "true"], "not a device"),
    (["--backend", "nvml", "--", "true"], "--backend nvml"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str):
    proc = thermograd_run(args, tmp_path, 60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("thermograd: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # refused before anything was made, and before the banner: the run never started
    assert not (tmp_path / "thermograd-runs").exists() and "data, report and figures in" not in proc.stderr


def test_a_refused_run_leaves_nothing_behind_so_the_corrected_command_runs(tmp_path: Path):
    """Before: --gpu-uuid was checked after OUT/hardware.csv was written, so the corrected command with the same
    --out was refused ("already holds files"); --backend nvml left an empty folder and a banner naming it."""
    for bad in (["--gpu-uuid", "GPU-nope"], ["--backend", "nvml"]):
        proc = thermograd_run([*bad, "--out", "g", "--", sys.executable, "-c", "pass"], tmp_path, 60)
        assert proc.returncode == 2 and "thermograd: error:" in proc.stderr, proc.stderr
        assert not (tmp_path / "g").exists(), bad
        assert "data, report and figures in" not in proc.stderr
    proc = thermograd_run(["--backend", "sim", "--out", "g", "--", sys.executable, "-c", "pass"], tmp_path, 60)
    assert "logged no training step" in proc.stderr, proc.stderr  # it ran: refused for what the job did, not --out
    assert (tmp_path / "g" / "hardware.csv").is_file() and "data, report and figures in" in proc.stderr


@pytest.mark.parametrize("out", [None, "new/run", "empty"], ids=["default", "new", "existing-empty"])
def test_a_start_that_fails_after_the_checks_removes_what_it_created(tmp_path: Path, out: str | None):
    """A CMD that passes the checks (an executable file) but cannot be exec'd: the run's folder was made by then;
    it goes again (a folder that was there, empty, stays, and stays empty)."""
    script = write_script(tmp_path, "not-a-program", "no interpreter line: exec fails with ENOEXEC\n")
    script.chmod(0o755)
    (tmp_path / "empty").mkdir()
    proc = thermograd_run(["--backend", "sim", *(["--out", out] if out else []), "--", str(script)], tmp_path, 60)
    assert proc.returncode == 2 and "cannot start it" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "data, report and figures in" not in proc.stderr
    assert not (tmp_path / "thermograd-runs").exists() and not (tmp_path / "new").exists()
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def run_summary(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.mark.slow
def test_duration_sends_one_sigint_and_the_jobs_checkpoint_gets_saved(tmp_path: Path):
    """Before: --duration re-sent SIGINT every 0.5 s until the job ended, interrupting the checkpoint its
    KeyboardInterrupt handler saves (3 s here). Now one SIGINT, as one Ctrl-C; the exit status is the job's."""
    script = write_script(tmp_path, "loop.py", STEP_LOOP)
    proc = thermograd_run(["--no-pauses", "--backend", "sim", "--duration", "2", "--out", "run", "--",
                           sys.executable, str(script), "checkpoint"], tmp_path, 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoint.saved").is_file()
    assert proc.stderr.count("--duration 2 s reached") == 1 and "SIGTERM to its" not in proc.stderr
    assert "the job was stopped by --duration 2 s with exit status 0" in proc.stderr
    summary = run_summary(tmp_path / "run")
    assert summary["stopped_by"] == "--duration" and summary["signals_sent"] == ["SIGINT"]
    assert (tmp_path / "run" / "report.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "status", "sent"), [
    ("ignore-int", 143, ["SIGINT", "SIGTERM"]),
    ("ignore-int-term", 137, ["SIGINT", "SIGTERM", "SIGKILL"]),
])
def test_duration_escalates_to_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path, mode: str, status: int,
                                                                          sent: list[str]):
    """Before: a job that ignores SIGINT was never stopped ("--duration reached" said every 0.5 s for ever).
    Now SIGINT, then SIGTERM --grace seconds later, then SIGKILL: each said once; the data are analysed."""
    script = write_script(tmp_path, "loop.py", STEP_LOOP)
    started_s = time.monotonic()
    proc = thermograd_run(["--no-pauses", "--backend", "sim", "--duration", "2", "--grace", "1.5", "--out", "run",
                           "--", sys.executable, str(script), mode], tmp_path, 120)
    assert proc.returncode == status, proc.stderr[-3000:]
    assert time.monotonic() - started_s < 60
    assert proc.stderr.count("--duration 2 s reached") == 1
    assert proc.stderr.count("SIGTERM to its process group") == 1
    assert proc.stderr.count("SIGKILL to its process group") == (status == 137)
    summary = run_summary(tmp_path / "run")
    assert summary["stopped_by"] == "--duration" and summary["signals_sent"] == sent
    assert summary["exit_status"] == status
    assert read_jsonl(tmp_path / "run" / "steps.jsonl") and (tmp_path / "run" / "report.json").is_file()


def test_an_out_folder_with_files_is_never_overwritten(tmp_path: Path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text("{}")
    proc = thermograd_run(["--out", "old", "--", "true"], tmp_path, 60)
    assert proc.returncode == 2 and "never overwritten" in proc.stderr
    assert (tmp_path / "old" / "report.json").read_text() == "{}"


def test_prometheus_asked_for_but_not_installed(tmp_path: Path):
    proc = thermograd_run(["--prometheus", "--", sys.executable, "-c", "pass"], tmp_path, 60, path="/nonexistent")
    assert proc.returncode == 2
    assert "no prometheus binary on PATH" in proc.stderr and "leave out --prometheus" in proc.stderr
    assert not (tmp_path / "thermograd-runs").exists()  # refused before anything was made


def test_a_prometheus_that_fails_to_start_leaves_nothing_and_says_why(tmp_path: Path):
    """A failed start after the checks (the folder made by then): one line with Prometheus's own last words (its
    log goes with the folder), exit 2, nothing left, so the same command can be run again once it is fixed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = write_script(bin_dir, "prometheus", "#!/bin/sh\necho 'opening storage failed: lock DB directory' >&2\n"
                                               "exit 1\n")
    fake.chmod(0o755)
    proc = thermograd_run(["--prometheus", "--backend", "sim", "--out", "run", "--", sys.executable, "-c", "pass"],
                          tmp_path, 60, path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("thermograd: error:")]
    assert len(errors) == 1 and "Prometheus exited with code 1" in errors[0], proc.stderr
    assert "opening storage failed" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and "data, report and figures in" not in proc.stderr
