"""The cpu backend (psutil, hwmon, RAPL under a fake powercap tree) and the replay backend."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from thermograd.exporter.backends.cpu import CpuBackend, RaplPackage, energy_delta_uj
from thermograd.exporter.backends.replay import ReplayBackend
from thermograd.exporter.labcsv import LabCsvError


def make_rapl(root: Path, energy_uj: int, max_range_uj: int = 262_143_328_850) -> Path:
    domain = root / "intel-rapl:0"
    domain.mkdir(parents=True, exist_ok=True)
    (domain / "energy_uj").write_text(f"{energy_uj}\n")
    (domain / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    (domain / "constraint_0_power_limit_uw").write_text("65000000\n")
    (root / "intel-rapl:0:0").mkdir(exist_ok=True)  # a subdomain (core): not the package
    return domain


def test_energy_delta_handles_the_counter_wrap():
    assert energy_delta_uj(1_000, 5_000, 10_000) == 4_000
    assert energy_delta_uj(9_000, 1_000, 10_000) == 2_000
    assert energy_delta_uj(9_000, 1_000, None) == 1_000  # unknown range: never negative


def test_rapl_power_from_energy_deltas_across_a_wrap(tmp_path: Path):
    domain = make_rapl(tmp_path, energy_uj=999_000_000, max_range_uj=1_000_000_000)
    rapl = RaplPackage.find(tmp_path)
    assert rapl is not None and rapl.power_limit_w == pytest.approx(65.0)
    total_j, power_w = rapl.sample(10.0)
    assert total_j == pytest.approx(999.0) and power_w is None
    (domain / "energy_uj").write_text("29000000\n")  # wrapped: 1 J to the top + 29 J
    total_j, power_w = rapl.sample(12.0)
    assert power_w == pytest.approx(15.0)  # 30 J in 2 s
    assert total_j == pytest.approx(1029.0)  # monotonic across the wrap


def test_cpu_backend_exports_only_what_the_machine_offers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    backend = CpuBackend(powercap_root=tmp_path / "absent")
    (info,) = backend.devices()
    assert (info.device, info.kind, info.backend) == ("cpu", "cpu", "cpu") and info.uuid.startswith("cpu-")
    reading = backend.read(0, 1.0)
    assert reading.temp_c is None and reading.power_w is None and reading.energy_j is None
    assert 0.0 <= reading.util_pct <= 100.0 and reading.memory_total_bytes > 0


def test_cpu_backend_with_sensors_and_rapl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sensor = SimpleNamespace(label="Package id 0", current=55.0, high=None, critical=None)
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {"coretemp": [sensor]}, raising=False)
    domain = make_rapl(tmp_path, energy_uj=0)
    backend = CpuBackend(powercap_root=tmp_path)
    assert backend.devices()[0].power_limit_w == pytest.approx(65.0)
    backend.read(0, 1.0)
    (domain / "energy_uj").write_text("20000000\n")
    reading = backend.read(0, 2.0)
    assert reading.temp_c == 55.0
    assert reading.power_w == pytest.approx(20.0) and reading.energy_j == pytest.approx(20.0)


def write_recording(path: Path) -> Path:
    lines = ["timestamp,device,util_pct,temp_c,power_w,fan_pct"]
    for t in range(10):
        lines.append(f"2025-10-28T08:00:{t:02d}Z,gpu,{50 + t},{60 + t},{100 + t},40")
        lines.append(f"2025-10-28T08:00:{t:02d}Z,cpu,{10 + t},,{20 + t},")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_plays_each_device_at_speed(tmp_path: Path):
    backend = ReplayBackend(write_recording(tmp_path / "rec.csv"), speed=2.0)
    infos = backend.devices()
    assert [(d.device, d.uuid, d.kind, d.power_limit_w, d.temp_limit_c) for d in infos] == [
        ("gpu", "replay-gpu", "gpu", 200.0, 83.0), ("cpu", "replay-cpu", "cpu", 125.0, 80.0)]
    assert backend.read(0, 100.0).util_pct == 50.0
    at_3s = backend.read(0, 103.0)  # 3 wall seconds at speed 2: the row 6 s into the recording
    assert (at_3s.util_pct, at_3s.temp_c, at_3s.power_w, at_3s.fan_ratio) == (56.0, 66.0, 106.0, 0.4)
    cpu = backend.read(1, 103.0)
    assert cpu.util_pct == 16.0 and cpu.temp_c is None
    assert backend.read(0, 105.5).util_pct == 51.0  # 11 s: looped past the end (10 s span) to 1 s


def test_replay_of_the_lab_recording(rle_lab_csv: Path):
    backend = ReplayBackend(rle_lab_csv, speed=60.0)
    assert [d.device for d in backend.devices()] == ["gpu", "cpu"]
    assert backend.read(0, 0.0).util_pct == 61.0  # the first gpu row


def test_replay_malformed_csv_names_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,device,util_pct,temp_c,power_w\n1,gpu,50,60,100\n2,gpu,50,60,lots\n")
    with pytest.raises(LabCsvError, match=r"bad\.csv: line 3, column 'power_w'"):
        ReplayBackend(path)


def test_replay_faster_than_real_time_keeps_the_recordings_heating_rate(tmp_path: Path):
    """At --speed 2 each 1 Hz sample advances 2 recorded seconds; T_sustain must use recorded time."""
    from thermograd.exporter.sampler import Sampler

    wall = iter([100.0, 101.0])
    sampler = Sampler(ReplayBackend(write_recording(tmp_path / "rec.csv"), speed=2.0), sample_hz=1.0,
                      rated_power_w={}, temp_limit_c={}, clock=lambda: next(wall))
    sampler.sample_once()
    gpu = sampler.sample_once().devices[0]
    assert gpu.reading.temp_c == 62.0  # recorded 0 s -> 2 s: 60 -> 62 °C, i.e. 1 °C per recorded second
    assert gpu.result.sustain_s == pytest.approx((83.0 - 62.0) / 1.0)


def test_the_rapl_hint_says_what_would_help_here(tmp_path, monkeypatch):
    from thermograd.exporter.backends import cpu

    assert "offers no RAPL counter" in cpu.rapl_hint(tmp_path)  # a VM: nothing to grant
    (tmp_path / "intel-rapl:0").mkdir()
    monkeypatch.setattr(cpu.os, "geteuid", lambda: 0)
    assert "even as root" in cpu.rapl_hint(tmp_path) and "run as root" not in cpu.rapl_hint(tmp_path)
    monkeypatch.setattr(cpu.os, "geteuid", lambda: 1000)
    assert "run as root" in cpu.rapl_hint(tmp_path)
