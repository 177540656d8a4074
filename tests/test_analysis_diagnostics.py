"""Errors that name the real fix, through the command, against a real Prometheus: no trainer scraped, the
exporter's target down, a URL that is no Prometheus API, a refused connection (at once, not after retries)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_trainer_helpers import wait_for

from thermograd.analysis.sources.runs import hardware_down, no_runs_reason
from thermograd.processes import Child, find_binary, free_port, prometheus_argv
from thermograd.trainer.metrics import TrainingMetrics


def analysis(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", *args], capture_output=True, text=True,
                          timeout=timeout_s)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("analysis: error: "), proc.stderr
    return lines[0]


def test_the_reasons_name_what_prometheus_scrapes():
    exporter = {"job": "exporter", "url": "http://127.0.0.1:9842/metrics", "health": "down",
                "last_error": "connection refused"}
    trainer = {"job": "trainer", "url": "http://127.0.0.1:9843/metrics", "health": "up", "last_error": ""}
    assert "scrapes no trainer" in no_runs_reason([exporter], "http://p")
    assert "prometheus-local.yml" in no_runs_reason([exporter], "http://p")
    assert "every trainer target is down" in no_runs_reason([exporter, {**trainer, "health": "down"}], "http://p")
    assert "the trainer targets are up" in no_runs_reason([trainer], "http://p")
    assert "is your training job's /metrics scraped" in no_runs_reason(None, "http://p")
    said = hardware_down([exporter, trainer])
    assert "exporter 127.0.0.1:9842" not in said and "http://127.0.0.1:9842/metrics" in said
    assert "connection refused" in said and hardware_down([trainer]) is None


@pytest.mark.integration
@pytest.mark.slow
def test_no_trainer_then_the_exporter_down_each_said_with_its_fix(tmp_path: Path):
    binary = find_binary("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `make system-deps`")
    dead_exporter = f"127.0.0.1:{free_port()}"  # nothing listens there: a stopped exporter
    targets = tmp_path / "targets"
    targets.mkdir()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [
        {"job_name": "exporter", "static_configs": [{"targets": [dead_exporter]}]},
        {"job_name": "trainer", "file_sd_configs": [{"files": [str(targets / "*.json")], "refresh_interval": "1s"}]},
    ]}
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prometheus = Child("prometheus", prometheus_argv(binary, tmp_path / "prometheus.yml", tmp_path / "tsdb", port),
                       tmp_path / "prometheus.log")

    def query(expr: str) -> list:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}",
                                        timeout=5) as answer:
                return json.loads(answer.read())["data"]["result"]
        except OSError:  # not listening yet
            return []

    try:
        wait_for(lambda: query("up{job='exporter'}"), 60, 0.3)
        no_trainer = error_line(analysis("--prometheus", url, "--out", str(tmp_path / "a")))
        assert ("scrapes no trainer" in no_trainer and dead_exporter in no_trainer
                and "prometheus-local.yml" in no_trainer)

        with TrainingMetrics(port=0, run_id="diag", gpu_uuid="sim-0") as metrics:
            for step in range(1, 6):
                metrics.observe_step(step, 1.0, 2.0, 1e-3, tokens=8)
            (targets / "trainer.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{metrics.port}"]}]))
            wait_for(lambda: query('train_run_start_time_seconds{run_id="diag"}'), 60, 0.3)
            down = error_line(analysis("--prometheus", url, "--run", "diag", "--out", str(tmp_path / "b")))
            assert "the hardware exporter's target is down" in down and dead_exporter in down
            assert "connection refused" in down and "is thermograd-exporter" in down

            not_api = error_line(analysis("--prometheus", f"http://127.0.0.1:{metrics.port}", "--out",
                                          str(tmp_path / "c")))
            assert "is not a Prometheus HTTP API" in not_api and "e.g. http://127.0.0.1:9090" in not_api
    finally:
        prometheus.stop()


def test_a_refused_connection_fails_at_once(tmp_path: Path):
    started = time.monotonic()
    line = error_line(analysis("--prometheus", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path)))
    assert time.monotonic() - started < 8.0  # an interpreter start and one refused connect; no retries (9.7 s)
    assert "refused the connection" in line and "is Prometheus running" in line


def test_what_was_measured_decides_which_direction_has_a_physical_path():
    from thermograd.analysis.provenance import Provenance

    sim = Provenance("sim", "the CPU use of the job's own processes", "sim-0")
    assert sim.no_path("hardware_to_training") and sim.no_path("optimizer_to_hardware") is None
    assert sim.first_line().startswith("SIMULATED hardware: sim-0") and sim.as_report()["simulated"] is True
    replay = Provenance("replay", "the recording lab.csv, played back", "replay-gpu")
    assert all(replay.no_path(d) for d in ("optimizer_to_hardware", "hardware_to_training"))
    real = Provenance("nvml", "", "GPU-1")
    assert real.first_line() == "MEASURED hardware: GPU-1, read through nvml." and real.as_report()["measured"] is True
    assert not any(real.no_path(d) for d in ("optimizer_to_hardware", "hardware_to_training"))
    assert Provenance(None).as_report()["measured"] is None  # a file that does not say


def test_a_recordings_device_is_picked_by_uuid_or_as_the_only_gpu(tmp_path: Path):
    from thermograd.analysis.errors import InputError
    from thermograd.analysis.files.readers import load_rle_csv
    from thermograd.analysis.timeparse import get_tz

    head = "time_unix,device,uuid,kind,backend,heat_source,temp_c,power_w,rle_smoothed,a_load,collapse\n"
    rows = "".join(f"{100 + t},{d},{u},{k},nvml,,50,100,0.5,0.4,0\n" for t in range(3)
                   for d, u, k in (("0", "GPU-AbC", "gpu"), ("cpu", "cpu-h", "cpu")))
    path = tmp_path / "hw.csv"
    path.write_text(head + rows)
    samples, device = load_rle_csv(path, None, get_tz(None))
    assert device == "0" and samples.info["uuid"] == "GPU-AbC" and samples.info["backend"] == "nvml"
    assert load_rle_csv(path, "abc", get_tz(None))[1] == "0"  # a uuid in any spelling
    assert list(samples.t_s) == [100.0, 101.0, 102.0]
    with pytest.raises(InputError, match=r"devices: 0 \(GPU-AbC\), cpu \(cpu-h\)"):
        load_rle_csv(path, "GPU-zzz", get_tz(None))


def _none_pair(x: str, y: str) -> dict:
    return {"x": x, "y": y, "direction": "hardware_to_training", "coupled": False, "strength": "none",
            "equivalence": {"bound": 0.3, "equivalent": True}}


def _untested_pair(x: str, y: str, kind: str) -> dict:
    return {"x": x, "y": y, "direction": "hardware_to_training", "coupled": False, "strength": "insufficient data",
            "untested": kind, "reason": f"{x}: {kind}"}


def test_which_untested_pairs_leave_independence_open():
    """A device state never set in the rows tested (a GPU that never throttled, a clock that moved only in the
    pauses) or a series never measured is named outside a `none` claim; a training series that never changes, or
    too few rows, leaves the question open (inconclusive)."""
    from thermograd.analysis.coupling.verdict import overall

    tested = [_none_pair("power", "step_duration"), _none_pair("temperature", "step_duration")]
    for kind in ("constant_device", "absent"):
        verdict = overall([*tested, _untested_pair("throttled", "step_duration", kind)], 1.0, "hardware_to_training")
        assert verdict["strength"] == "none" and "not part of the claim: throttled~step_duration" in verdict["summary"]
    for kind in ("constant_training", "too_few"):
        verdict = overall([*tested, _untested_pair("sm_clock", "step_duration", kind)], 1.0, "hardware_to_training")
        assert verdict["strength"] == "inconclusive" and "could not be tested" in verdict["summary"]


def test_a_constant_device_series_is_judged_in_the_rows_tested():
    """A clock that moves only inside the pause bursts is constant where the tests look: a device state, not a
    question left open (the whole run's series would have called it 'too few rows')."""
    import numpy as np

    from thermograd.analysis.coupling.analyse import MaskedColumns, _untested_because

    clock = np.full(100, 1.9e9)
    clock[40:45] = 1.2e9  # a pause
    paused = np.zeros(100, dtype=bool)
    paused[40:45] = True
    cols = MaskedColumns({"sm_clock": clock, "step_duration": np.linspace(0.1, 0.2, 100)}, paused)
    kind, words = _untested_because(cols, {"x": "sm_clock", "y": "step_duration"})
    assert kind == "constant_device" and "sm_clock never changes in the rows tested" in words
    assert _untested_because(cols, {"x": "throttled", "y": "step_duration"})[0] == "absent"


def test_none_from_the_spike_responses_alone_is_said_without_a_pair():
    """Every pair untested for want of a series, the spike-triggered responses bounded: `none` says what it rests
    on (an internal error before: the pairs' bound was looked up among pairs that had none)."""
    from thermograd.analysis.coupling.verdict import overall

    pairs = [{**_untested_pair("grad_norm", y, "absent"), "direction": "optimizer_to_hardware"}
             for y in ("rle", "power")]
    response = {"spikes": "grad_norm", "metric": "utilization", "direction": "optimizer_to_hardware",
                "coupled": False, "strength": "none", "equivalence": {"bound_sd": 1.0}}
    verdict = overall(pairs, 1.0, "optimizer_to_hardware", [response])
    assert verdict["strength"] == "none" and "every spike-triggered response is shown within" in verdict["summary"]
    assert "for every pair" not in verdict["summary"]
