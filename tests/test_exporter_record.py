"""`thermograd-exporter --record FILE.csv`: every sample in the documented hardware CSV, read by the offline
analysis as it is (a simulated GPU said to be simulated; a device without power analysed on what it has)."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer_helpers import wait_for

from thermograd.exporter.backends.base import DeviceInfo, Reading
from thermograd.exporter.engine import RleEngine
from thermograd.exporter.record import COLUMNS, HardwareRecorder, RecordError
from thermograd.exporter.sampler import DeviceSample, Snapshot
from thermograd.trainer.metrics import TrainingMetrics

LAB_COLUMNS = ("timestamp", "device", "rle_smoothed", "rle_raw", "E_th", "E_pw", "temp_c", "power_w", "util_pct",
               "a_load", "t_sustain_s", "fan_pct", "rolling_peak", "collapse")


def exporter(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "thermograd.exporter", "--port", "0", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def analyse(log: Path, csv_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thermograd.analysis", "--grad-log", str(log), "--rle-csv",
                           str(csv_path), "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_the_format_holds_the_rle_labs_columns_and_what_was_measured():
    assert set(LAB_COLUMNS) <= set(COLUMNS)
    assert {"time_unix", "uuid", "backend", "heat_source", "sm_clock_hz", "throttled", "clock_event_reasons",
            "power_limit_w"} <= set(COLUMNS)
    documented = (Path(__file__).resolve().parents[1] / "docs" / "offline-files.md").read_text()
    missing = [c for c in COLUMNS if f"`{c}`" not in documented]
    assert not missing, f"columns not in docs/offline-files.md: {missing}"


def _snapshot(wall_s: float) -> Snapshot:
    info = DeviceInfo("0", "GPU-1", "m", "gpu", "nvml", 300.0, 83.0)
    reading = Reading(util_pct=50.0, temp_c=70.0, power_w=150.0, sm_clock_hz=1.5e9,
                      throttle={"sw_thermal": True, "gpu_idle": False})
    result = RleEngine(300.0, 83.0, 1.0).update(0.0, 50.0, 150.0, 70.0)
    return Snapshot(devices=(DeviceSample(info, 300.0, reading, result, 0),), wall_s=wall_s)


def test_a_full_disk_is_warned_once_counted_and_leaves_only_whole_lines(tmp_path, monkeypatch, caplog):
    errors = []
    recorder = HardwareRecorder(tmp_path / "new" / "hw.csv", lambda device, op: errors.append(op))
    recorder(_snapshot(1000.0))
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd == recorder._fd:  # half a line, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    recorder(_snapshot(1001.0))
    recorder(_snapshot(1002.0))
    monkeypatch.setattr(os, "write", real_write)
    recorder(_snapshot(1003.0))
    recorder.close()
    rows = list(csv.DictReader((tmp_path / "new" / "hw.csv").open()))
    assert [r["time_unix"] for r in rows] == ["1000.000000", "1003.000000"]
    assert errors == ["record", "record"]
    assert sum("cannot write the recording" in r.message for r in caplog.records) == 1
    assert rows[0]["throttled"] == "1" and rows[0]["clock_event_reasons"] == "sw_thermal"
    with pytest.raises(RecordError, match="never overwritten"):
        HardwareRecorder(tmp_path / "new" / "hw.csv")


@pytest.mark.slow
@pytest.mark.integration
def test_a_recording_is_read_by_the_offline_analysis_simulated_and_without_power(tmp_path: Path):
    """Two recordings made beside a training job's step log: a simulated GPU (named simulated in the verdict's
    first line and report.json) and this machine's CPU (no RAPL here: no power, so no RLE — analysed on
    utilisation and temperature, its RLE pairs insufficient data, not an exit 2)."""
    seconds = 75
    sim = exporter(["--backend", "sim", "--sim-load", "0:0.1,20:0.9,40:0.3,55:1", "--record", "rec/sim.csv",
                    "--duration", str(seconds)], tmp_path)
    cpu = exporter(["--backend", "cpu", "--record", "rec/cpu.csv", "--duration", str(seconds)], tmp_path)
    try:
        wait_for(lambda: (tmp_path / "rec" / "sim.csv").is_file() and (tmp_path / "rec" / "cpu.csv").is_file(), 30)
        with TrainingMetrics(port=0, run_id="rec", log_dir=tmp_path / "log") as metrics:
            end = time.time() + seconds - 8
            step = 0
            while time.time() < end:
                step += 1
                metrics.observe_step(step, 1.0 / step, 1.0 + (step % 17) / 10, 1e-3, tokens=10)
                time.sleep(0.1)
        assert sim.wait(60) == 0 and cpu.wait(60) == 0
    finally:
        for proc in (sim, cpu):
            if proc.poll() is None:
                proc.kill()
    assert "recording to rec/sim.csv" in sim.communicate()[1]
    rows = list(csv.DictReader((tmp_path / "rec" / "sim.csv").open()))
    assert len(rows) >= seconds - 3 and rows[0]["backend"] == "sim" and rows[0]["heat_source"].startswith("the load")

    proc = analyse(tmp_path / "log" / "steps.jsonl", tmp_path / "rec" / "sim.csv", tmp_path / "out-sim")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "out-sim" / "report.json").read_text())
    assert rep["inputs"]["hardware"]["simulated"] is True and rep["inputs"]["hardware"]["uuid"] == "sim-0"
    assert proc.stdout.startswith("SIMULATED hardware: sim-0, thermograd's simulated GPU, heated by the load steps")
    assert rep["verdicts"]["hardware_to_training"]["strength"] == "no physical path"

    proc = analyse(tmp_path / "log" / "steps.jsonl", tmp_path / "rec" / "cpu.csv", tmp_path / "out-cpu")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "out-cpu" / "report.json").read_text())
    assert rep["inputs"]["hardware"]["simulated"] is False and rep["inputs"]["hardware"]["measured"] is True
    if rep["series"]["power"]["n"] == 0:  # this machine's CPU offers no power (no RAPL): what it has is analysed
        rle_pairs = [p for p in rep["pairs"] if "rle" in (p["x"], p["y"]) or "power" in (p["x"], p["y"])]
        assert rle_pairs and all(p["strength"] == "insufficient data" for p in rle_pairs)
        assert any("no power" in note for note in rep["notes"])
        assert rep["series"]["utilization"]["n"] > 0

    again = exporter(["--backend", "sim", "--record", "rec/sim.csv", "--duration", "1"], tmp_path)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 2 and "never overwritten" in stderr and len(stderr.strip().splitlines()) == 1
