"""The instrumentation under `thermograd run`: what the THERMOGRAD_* environment sets (and what an argument
overrides), the rank's registration, pause bursts at a step boundary, flush(), and the callbacks closing what
they own and flushing what they were given."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer_helpers import read_jsonl, sample, scrape

from thermograd.trainer.environment import RunEnvironment, RunEnvironmentError, read_registrations
from thermograd.trainer.metrics import TrainingMetrics, pause_schedule


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch) -> Path:
    import signal

    # Under THERMOGRAD_RUN_DIR an instance makes an unhandled SIGTERM end the program cleanly: not pytest's.
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    folder = tmp_path / "run"
    monkeypatch.setenv("THERMOGRAD_RUN_DIR", str(folder))
    monkeypatch.setenv("THERMOGRAD_RUN_ID", "env-run")
    monkeypatch.setenv("THERMOGRAD_PORT", "0")
    monkeypatch.setenv("THERMOGRAD_GPU_UUID", "sim-0")
    monkeypatch.setenv("THERMOGRAD_PAUSES", "every=60s,duration=300ms,start=0.2s")
    monkeypatch.delenv("RANK", raising=False)
    return folder


def test_the_environment_is_read_checked_and_handed_on():
    env = RunEnvironment.read({"THERMOGRAD_RUN_DIR": "/r", "THERMOGRAD_PORT": "0", "THERMOGRAD_LINGER_S": "2"})
    assert (env.run_dir, env.port, env.linger_s, env.run_id) == (Path("/r"), 0, 2.0, None)
    assert RunEnvironment.read(env.as_variables()) == env
    for name, bad in (("THERMOGRAD_PORT", "http"), ("THERMOGRAD_PORT", "70000"), ("THERMOGRAD_LINGER_S", "inf")):
        with pytest.raises(RunEnvironmentError, match=name):
            RunEnvironment.read({name: bad})


def test_pause_schedules_parse_with_or_without_kind_and_off():
    assert pause_schedule("every=20s,duration=2s", RunEnvironment()).kind == "pause"
    assert pause_schedule("kind=pause,every=20s,duration=2s", RunEnvironment()).every == 20
    assert pause_schedule(None, RunEnvironment(pauses="off")) is None
    assert pause_schedule("off", RunEnvironment(pauses="every=20s,duration=2s")) is None  # the argument wins
    with pytest.raises(ValueError, match="THERMOGRAD_PAUSES"):
        pause_schedule(None, RunEnvironment(pauses="every=20s"))
    with pytest.raises(ValueError, match="kind=pause"):
        pause_schedule("kind=lr,every=20s,duration=2s", RunEnvironment())


def test_under_thermograd_run_a_plain_instance_logs_to_the_run_and_registers(run_dir: Path):
    with TrainingMetrics() as metrics:
        assert (metrics.run_id, metrics.run_info["gpu_uuid"]) == ("env-run", "sim-0")
        assert metrics.port != 9843  # THERMOGRAD_PORT=0: a free port
        record = read_registrations(run_dir)[0]
        assert record["url"] == metrics.url and record["run_id"] == "env-run" and record["gpu_uuid"] == "sim-0"
        assert Path(record["steps_jsonl"]) == (run_dir / "steps.jsonl").resolve()
        started = time.monotonic()
        metrics.observe_step(1, 1.0, 2.0, 1e-3)
        time.sleep(0.3)
        metrics.observe_step(2, 1.0, 2.0, 1e-3)  # the pause due at 0.2 s is taken here, after the step
        assert time.monotonic() - started >= 0.6
        metrics.observe_step(3, 1.0, 2.0, 1e-3)
        during = scrape(metrics.url)
    steps = read_jsonl(run_dir / "steps.jsonl")
    assert [r["pause_s"] > 0.25 for r in steps] == [False, False, True]  # the step after the pause carries it
    assert {r["run_id"] for r in steps} == {"env-run"}
    assert sample(during, "train_perturbation_active", kind="pause") == 0
    assert json.loads((run_dir / "grad_norm_log.json").read_text()) == steps


def test_an_argument_always_wins_over_the_environment(run_dir: Path, tmp_path: Path):
    with TrainingMetrics(port=0, run_id="mine", log_dir=tmp_path / "mine", pauses="off", gpu_uuid="GPU-x") as metrics:
        metrics.observe_step(1, 1.0, 2.0, 1e-3)
        time.sleep(0.3)
        metrics.observe_step(2, 1.0, 2.0, 1e-3)
    steps = read_jsonl(tmp_path / "mine" / "steps.jsonl")
    assert [r["pause_s"] for r in steps] == [0.0, 0.0] and {r["run_id"] for r in steps} == {"mine"}
    record = read_registrations(run_dir)[0]  # still registered: thermograd run finds the log where it is
    assert Path(record["steps_jsonl"]) == (tmp_path / "mine" / "steps.jsonl").resolve()
    assert record["gpu_uuid"] == "GPU-x"


def test_flush_writes_the_json_array_and_logging_goes_on(tmp_path: Path):
    with TrainingMetrics(port=0, run_id="f", log_dir=tmp_path) as metrics:
        for step in range(1, 4):
            metrics.observe_step(step, 1.0, 2.0, 1e-3)
        metrics.flush()
        assert [r["step"] for r in json.loads((tmp_path / "grad_norm_log.json").read_text())] == [1, 2, 3]
        metrics.observe_step(4, 1.0, 2.0, 1e-3)
    assert [r["step"] for r in json.loads((tmp_path / "grad_norm_log.json").read_text())] == [1, 2, 3, 4]


def test_an_instance_never_closed_is_closed_at_exit(tmp_path: Path):
    """A script that ends (here: an uncaught exception) without close(): the log is drained and written."""
    code = (f"from thermograd import TrainingMetrics\n"
            f"m = TrainingMetrics(port=0, run_id='x', log_dir={str(tmp_path)!r})\n"
            "for s in range(1, 201): m.observe_step(s, 1.0, 2.0, 1e-3)\n"
            "raise RuntimeError('the job crashed')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "the job crashed" in proc.stderr
    assert [r["step"] for r in json.loads((tmp_path / "grad_norm_log.json").read_text())] == list(range(1, 201))


def test_the_hf_callback_flushes_an_instance_it_was_given_and_closes_its_own(tmp_path: Path):
    pytest.importorskip("transformers")
    import io

    from thermograd.trainer import PrometheusCallback

    given = TrainingMetrics(port=0, run_id="given", log_dir=tmp_path / "given")
    callback = PrometheusCallback(given, stream=io.StringIO())
    given.observe_step(1, 1.0, 2.0, 1e-3)
    callback.on_train_end(None, None, None)
    assert json.loads((tmp_path / "given" / "grad_norm_log.json").read_text())[0]["step"] == 1
    assert scrape(given.url)  # still serving: the instance is the caller's to close
    given.close()


def test_the_emulated_clock_path_stretches_steps_by_the_simulated_cards_deficit(tmp_path: Path):
    """A card published at 80 % of its clock: each step lasts 1/0.8 as long, all of it compute, and the run
    says it is emulated (train_run_info, every step log line). A real card's clock is never emulated."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from thermograd.trainer.emulation import read_clock_ratio

    body = (b'rle_device_info{device="0",uuid="sim-0",backend="sim"} 1\n'
            b'rle_sm_clock_hertz{device="0",uuid="sim-0"} 1.584e9\n'
            b'rle_sm_clock_max_hertz{device="0",uuid="sim-0"} 1.98e9\n')

    class Exporter(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with TrainingMetrics(port=0, run_id="emu", gpu_uuid="sim-0", log_dir=tmp_path, emulate_clock=url) as metrics:
            time.sleep(1.0)  # the first reading of the clock
            metrics.begin_step()
            for step in range(1, 6):
                time.sleep(0.1)
                metrics.observe_step(step, 1.0, 2.0, 1e-3)
            info = scrape(metrics.url)
    finally:
        server.shutdown()
    steps = read_jsonl(tmp_path / "steps.jsonl")
    assert all(0.12 <= r["compute_s"] < 0.2 for r in steps), steps  # 0.1 s of work on a clock at 80 %
    assert {r["emulation"] for r in steps} == {"clock"}
    assert sample(info, "train_run_info", emulation="clock", gpu_uuid="sim-0") == 1
    assert read_clock_ratio(body.decode(), "sim-0") == (0.8, "sim")
    real = body.decode().replace('backend="sim"', 'backend="nvml"')
    assert read_clock_ratio(real, "sim-0")[1] == "nvml"  # ClockEmulation leaves a real card alone


def test_a_run_id_in_log_dir_gives_each_run_a_folder_and_a_taken_folder_names_the_fix(tmp_path: Path, monkeypatch):
    """The documented standalone step log: `log_dir=".../{run_id}"` never collides with an earlier run; a fixed
    folder run twice is refused (never overwritten) with the fix spelled out."""
    from thermograd.trainer.steplog import LogExistsError

    for name in ("THERMOGRAD_RUN_DIR", "THERMOGRAD_RUN_ID", "THERMOGRAD_PAUSES", "THERMOGRAD_PORT"):
        monkeypatch.delenv(name, raising=False)
    folders = []
    for _ in range(2):  # the same script run twice
        with TrainingMetrics(port=0, log_dir=str(tmp_path / "out" / "{run_id}")) as metrics:
            metrics.observe_step(1, 1.0, 2.0, 1e-3)
        folders.append(tmp_path / "out" / metrics.run_id)
    assert folders[0] != folders[1]
    assert all(read_jsonl(folder / "steps.jsonl")[0]["run_id"] == folder.name for folder in folders)

    fixed = tmp_path / "out" / "my-run"
    with TrainingMetrics(port=0, log_dir=fixed) as metrics:
        metrics.observe_step(1, 1.0, 2.0, 1e-3)
    before = (fixed / "steps.jsonl").read_text()
    with pytest.raises(LogExistsError) as info:
        TrainingMetrics(port=0, log_dir=fixed)
    message = str(info.value)
    assert f"{fixed / 'steps.jsonl'} already holds a run's log" in message
    assert f"log_dir={str(fixed / '{run_id}')!r}" in message and "leave log_dir unset under `thermograd run`" in message
    assert isinstance(info.value, FileExistsError) and (fixed / "steps.jsonl").read_text() == before


def test_under_thermograd_run_an_explicit_log_dir_is_said_to_leave_the_run_folder(run_dir: Path, tmp_path: Path,
                                                                                   capsys):
    with TrainingMetrics(pauses="off"):
        pass
    assert "TrainingMetrics:" not in capsys.readouterr().err  # the documented way: nothing to say
    with TrainingMetrics(pauses="off", log_dir=tmp_path / "elsewhere"):
        pass
    err = capsys.readouterr().err
    assert f"log_dir={str(tmp_path / 'elsewhere')!r} was given" in err and f"not to the run's folder {run_dir}" in err
    assert "leave log_dir unset under thermograd run" in err


def test_the_port_is_the_callbacks_rule_the_local_rank_added_unless_given(monkeypatch):
    """The plain DDP loop needs no port: 9843 (or THERMOGRAD_PORT) + LOCAL_RANK, like the callbacks; 0 stays 0
    (thermograd run: a free port each); a port given is used as is."""
    from thermograd.trainer.metrics import RankEndpoint

    monkeypatch.delenv("THERMOGRAD_PORT", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    cases = [(None, None, 9844), ("7000", None, 7001), ("0", None, 0), ("0", 9000, 9000), (None, 9000, 9000)]
    for env_port, given, expected in cases:
        if env_port is None:
            monkeypatch.delenv("THERMOGRAD_PORT", raising=False)
        else:
            monkeypatch.setenv("THERMOGRAD_PORT", env_port)
        metrics = TrainingMetrics(port=given, start=False)
        assert metrics.port == expected, (env_port, given)
        metrics.close()
        if given is None:  # the callbacks' endpoint for the same rank: the same port
            endpoint = RankEndpoint().open(local_rank=1, rank=1, world_size=2, max_grad_norm=None)
            assert endpoint.port == expected or (expected == 0 and endpoint.port > 0)
            endpoint.close()
    monkeypatch.setenv("THERMOGRAD_PORT", "0")
    with TrainingMetrics() as metrics:  # under thermograd run: a free port, whatever the local rank
        assert metrics.port not in (0, 1) and scrape(metrics.url) is not None


def test_a_bad_pause_value_is_named_not_reported_missing():
    with pytest.raises(ValueError, match=r"^pauses='every=xx': every='xx' is not an amount"):
        pause_schedule("every=xx", RunEnvironment())
    with pytest.raises(ValueError, match=r"duration= is missing"):
        pause_schedule("every=60s", RunEnvironment())
