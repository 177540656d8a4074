"""The real exporter process: /metrics parsed by prometheus_client, /healthz, signals, bad input."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
from conftest import REPO_ROOT, free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def documented_names() -> set[str]:
    text = (REPO_ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \|", text, flags=re.M))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample_value(body: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name)


def exporter(*args: str) -> list[str]:
    return [sys.executable, "-m", "thermograd.exporter", *args]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(exporter("--backend", "sim", "--devices", "2", "--sim-load", "0.9", "--seed", "3",
                                         "--sample-hz", "10", "--port", str(port)), stderr=err, cwd=REPO_ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("exporter did not become healthy: " + log.read_text())
        yield proc, base, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def test_metrics_parse_and_use_only_documented_names(running):
    proc, base, log = running
    status, body = get(base + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = {s.name for f in families.values() for s in f.samples}
    documented = documented_names()
    histogram_parts = {"rle_exporter_sample_duration_seconds" + p for p in ("_bucket", "_sum", "_count")}
    assert samples - histogram_parts <= documented, samples - documented
    for name in ["rle_device_info", "rle_temperature_celsius", "rle_power_watts", "rle_power_limit_watts",
                 "rle_utilization_ratio", "rle_memory_used_bytes", "rle_memory_total_bytes", "rle_sm_clock_hertz",
                 "rle_memory_clock_hertz", "rle_fan_speed_ratio", "rle_energy_joules_total", "rle_throttle_active",
                 "rle_efficiency", "rle_efficiency_smoothed", "rle_thermal_efficiency", "rle_power_efficiency",
                 "rle_load_ratio", "rle_stability", "rle_sustain_seconds", "rle_rolling_peak", "rle_collapsed",
                 "rle_collapse_events_total", "rle_exporter_build_info", "rle_exporter_samples_total"]:
        assert name in samples, name
    info = [s for s in families["rle_device_info"].samples]
    assert sorted((s.labels["device"], s.labels["uuid"], s.labels["backend"]) for s in info) == [
        ("0", "sim-0", "sim"), ("1", "sim-1", "sim")]
    temps = [s for s in families["rle_temperature_celsius"].samples]
    assert {s.labels["uuid"] for s in temps} == {"sim-0", "sim-1"}
    types = {s.name: f.type for f in families.values() for s in f.samples}
    assert types["rle_exporter_sample_duration_seconds_count"] == "histogram"
    assert types["rle_energy_joules_total"] == types["rle_exporter_samples_total"] == "counter"
    assert types["rle_temperature_celsius"] == "gauge"
    first = sample_value(body, "rle_exporter_samples_total")
    time.sleep(1.0)
    later = sample_value(get(base + "/metrics")[1], "rle_exporter_samples_total")
    assert later >= first + 3  # 10 Hz sampling keeps going between scrapes (slack for a loaded machine)
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/nope")[0] == 404
    assert f"listening on {base}/metrics" in log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(running, sig):
    proc, base, log = running
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0
    assert "Traceback" not in log.read_text()


def run_bad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(exporter(*args), capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


def nvml_available() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.parametrize(("args", "message"), [
    (["--sample-hz", "0"], "--sample-hz"),
    (["--sample-hz", "-2"], "--sample-hz"),
    (["--sample-hz", "11"], "--sample-hz"),
    (["--rated-power", "0"], "--rated-power"),
    (["--rated-power", "7=250"], "unknown device '7'"),
    (["--temp-limit", "gpu=abc"], "--temp-limit"),
    (["--devices", "0"], "--devices"),
    (["--collapse-drop-frac", "-1"], "drop_frac"),
    (["--backend", "replay"], "--replay-csv"),
    (["--bogus"], "unrecognized"),
    (["--sim-profile", "hot"], "--sim-profile"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = run_bad("--backend", "sim", "--sim-load", "0", "--port", str(free_port()), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_port_in_use_exits_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_bad("--backend", "sim", "--sim-load", "0", "--port", str(port))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.skipif(nvml_available(), reason="an NVIDIA driver is present: --backend nvml would start")
def test_nvml_without_driver_exits_2():
    proc = run_bad("--backend", "nvml", "--port", str(free_port()))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "NVML" in proc.stderr


def test_malformed_replay_csv_exits_2(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,device,util_pct,temp_c,power_w\n1,gpu,50,60,100\n2,gpu,50,hot,100\n")
    proc = run_bad("--backend", "replay", "--replay-csv", str(bad), "--port", str(free_port()))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert str(bad) in proc.stderr and "line 3" in proc.stderr and "temp_c" in proc.stderr
