"""The NVML backend, sampler and collector against a fake NVML (monkeypatched pynvml functions).

No GPU exists here, so pynvml's functions are replaced; the errors they raise are real
`pynvml.NVMLError(code)` instances.
"""

from __future__ import annotations

import logging

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from testkit.fake_nvml import FakeGpu, FakeNvml
from thermograd.exporter.backends import open_backend
from thermograd.exporter.backends.nvml import NvmlBackend, decode_reasons
from thermograd.exporter.collector import SnapshotCollector
from thermograd.exporter.exposition import render
from thermograd.exporter.sampler import Sampler


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    gpus = [FakeGpu(uuid="GPU-aaaa", temp_c=65, power_mw=210_500, util_pct=97, fan_pct=40, energy_mj=5_000_000,
                    reasons_mask=pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwSlowdown),
            FakeGpu(uuid="GPU-bbbb", name="NVIDIA Other", unsupported={"nvmlDeviceGetFanSpeed",
                                                                       "nvmlDeviceGetTotalEnergyConsumption"})]
    nvml = FakeNvml(gpus)
    nvml.install(monkeypatch.setattr)
    return nvml


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def scrape(sampler: Sampler) -> dict[str, dict[tuple, float]]:
    """Renders the sampler's snapshot the way /metrics does and parses it back."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: sampler.snapshot))
    parsed: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            parsed.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return parsed


def series(metrics, name: str, **labels: str) -> float | None:
    for key, value in metrics.get(name, {}).items():
        if labels.items() <= dict(key).items():
            return value
    return None


def make_sampler(clock: FakeClock | None = None) -> Sampler:
    return Sampler(NvmlBackend(), 1.0, {}, {}, clock=clock or FakeClock())


def test_two_gpus_every_field_in_base_units(fake: FakeNvml):
    sampler = make_sampler()
    sampler.sample_once()
    m = scrape(sampler)
    assert series(m, "rle_device_info", device="0", uuid="GPU-aaaa", backend="nvml", kind="gpu",
                  model="NVIDIA Fake GPU") == 1.0
    assert series(m, "rle_device_info", device="1", uuid="GPU-bbbb", model="NVIDIA Other") == 1.0
    g0 = {"device": "0", "uuid": "GPU-aaaa"}
    assert series(m, "rle_temperature_celsius", **g0) == 65.0
    assert series(m, "rle_power_watts", **g0) == pytest.approx(210.5)  # mW -> W
    assert series(m, "rle_power_limit_watts", **g0) == pytest.approx(300.0)  # enforced limit is the default
    assert series(m, "rle_utilization_ratio", **g0) == pytest.approx(0.97)
    assert series(m, "rle_sm_clock_hertz", **g0) == pytest.approx(1.8e9)  # MHz -> Hz
    assert series(m, "rle_memory_clock_hertz", **g0) == pytest.approx(9.5e9)
    assert series(m, "rle_memory_total_bytes", **g0) == 24 * 1024**3
    assert series(m, "rle_fan_speed_ratio", **g0) == pytest.approx(0.40)  # % -> ratio
    assert series(m, "rle_energy_joules_total", **g0) == pytest.approx(5000.0)  # mJ -> J
    assert series(m, "rle_throttle_active", reason="sw_power_cap", **g0) == 1.0
    assert series(m, "rle_throttle_active", reason="hw_slowdown", **g0) == 1.0
    assert series(m, "rle_throttle_active", reason="gpu_idle", **g0) == 0.0
    assert len([k for k in m["rle_throttle_active"] if ("device", "0") in k]) == 9
    assert series(m, "rle_load_ratio", **g0) == pytest.approx(210.5 / 300.0)
    assert series(m, "rle_efficiency", **g0) is not None


def test_not_supported_is_omitted_for_that_gpu_and_logged_once(fake: FakeNvml, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="thermograd.exporter.backends.nvml")
    sampler = make_sampler()
    for _ in range(3):
        sampler.sample_once()
    m = scrape(sampler)
    assert series(m, "rle_fan_speed_ratio", device="1") is None
    assert series(m, "rle_energy_joules_total", device="1") is None
    assert series(m, "rle_fan_speed_ratio", device="0") is not None
    assert series(m, "rle_temperature_celsius", device="1") is not None
    notices = [r for r in caplog.records if "does not support fan" in r.getMessage()]
    assert len(notices) == 1
    assert "rle_exporter_errors_total" not in m or not m["rle_exporter_errors_total"]  # not an error


def test_lost_gpu_is_counted_omitted_and_recovers(fake: FakeNvml):
    clock = FakeClock()
    sampler = make_sampler(clock)
    sampler.sample_once()
    fake.gpus[1].lost = True
    for _ in range(3):
        clock.now_s += 1.0
        sampler.sample_once()
    m = scrape(sampler)
    assert series(m, "rle_exporter_errors_total", device="1", op="lost") == 3.0
    assert series(m, "rle_device_info", device="1") is None  # all its series are gone ...
    assert series(m, "rle_temperature_celsius", device="1") is None
    assert series(m, "rle_temperature_celsius", device="0") == 65.0  # ... the other GPU is still served
    assert sampler.healthy()[0]

    fake.gpus[1].lost = False
    clock.now_s += 1.0
    sampler.sample_once()
    m = scrape(sampler)
    assert series(m, "rle_device_info", device="1") == 1.0
    assert series(m, "rle_temperature_celsius", device="1") == 60.0
    assert series(m, "rle_exporter_errors_total", device="1", op="lost") == 3.0  # counter kept, not growing


def test_a_lost_gpu_comes_back_by_uuid_even_when_indices_shift(fake: FakeNvml):
    clock = FakeClock()
    sampler = make_sampler(clock)
    sampler.sample_once()
    lost_uuid = fake.gpus[1].uuid
    fake.gpus[1].lost = True
    clock.now_s += 1.0
    sampler.sample_once()
    # The driver re-enumerates: the GPU that was index 1 is now index 0, and the other one index 1.
    fake.gpus[0], fake.gpus[1] = fake.gpus[1], fake.gpus[0]
    fake.gpus[0].lost = False
    fake.gpus[0].temp_c = 71
    clock.now_s += 1.0
    sampler.sample_once()
    m = scrape(sampler)
    assert series(m, "rle_temperature_celsius", device="1", uuid=lost_uuid) == 71.0  # its own reading, own labels


def test_transient_query_error_counts_that_op_only(fake: FakeNvml):
    fake.gpus[0].failing["nvmlDeviceGetTemperature"] = pynvml.NVML_ERROR_UNKNOWN
    sampler = make_sampler()
    sampler.sample_once()
    sampler.sample_once()
    m = scrape(sampler)
    assert series(m, "rle_exporter_errors_total", device="0", op="temperature") == 2.0
    assert series(m, "rle_temperature_celsius", device="0") is None
    assert series(m, "rle_power_watts", device="0") is not None
    assert series(m, "rle_sustain_seconds", device="0") == 600.0  # no temperature this round


def test_throttle_reasons_fall_back_to_the_older_api(monkeypatch: pytest.MonkeyPatch):
    nvml = FakeNvml([FakeGpu(uuid="GPU-old", reasons_mask=pynvml.nvmlClocksThrottleReasonSwThermalSlowdown)],
                    event_reasons_api=False)
    nvml.install(monkeypatch.setattr)
    sampler = make_sampler()
    sampler.sample_once()
    assert series(scrape(sampler), "rle_throttle_active", reason="sw_thermal") == 1.0


def test_decode_reasons_names_all_nine():
    decoded = decode_reasons(0x1FF)
    assert sorted(decoded) == sorted(["gpu_idle", "applications_clocks", "sw_power_cap", "hw_slowdown", "sync_boost",
                                      "sw_thermal", "hw_thermal", "hw_power_brake", "display_clocks"])
    assert all(decoded.values())
    assert not any(decode_reasons(0).values())


def test_snapshot_is_one_sample_and_scrapes_do_not_touch_nvml(fake: FakeNvml):
    sampler = make_sampler()
    sampler.sample_once()
    calls = fake.calls
    first = scrape(sampler)
    fake.gpus[0].temp_c = 90  # the hardware changes, but no new sample was taken
    second = scrape(sampler)
    assert fake.calls == calls
    assert series(first, "rle_temperature_celsius", device="0") == series(second, "rle_temperature_celsius",
                                                                         device="0") == 65.0
    assert series(second, "rle_exporter_samples_total") == 1.0


def test_health_goes_stale_after_three_intervals(fake: FakeNvml):
    clock = FakeClock()
    sampler = make_sampler(clock)
    assert not sampler.healthy()[0]  # nothing sampled yet
    sampler.sample_once()
    clock.now_s += 2.9
    assert sampler.healthy()[0]
    clock.now_s += 0.2
    ok, why = sampler.healthy()
    assert not ok and "old" in why
    for gpu in fake.gpus:  # every GPU lost: rounds complete but none is good
        gpu.lost = True
    sampler.sample_once()
    assert not sampler.healthy()[0]


def test_auto_picks_nvml_when_a_gpu_is_visible(fake: FakeNvml):
    assert open_backend("auto").name == "nvml"


def test_auto_falls_back_to_sim_without_a_driver(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    caplog.set_level(logging.INFO)
    backend = open_backend("auto", sim_load=lambda t: 0.0)
    assert backend.name == "sim"
    assert any(r.levelno == logging.WARNING and "falling back" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="NVML"):
        open_backend("nvml")


def test_lean_exposition_is_byte_identical_to_prometheus_client(monkeypatch: pytest.MonkeyPatch):
    nvml = FakeNvml([FakeGpu(uuid="GPU-q", name='NVIDIA "Quoted" \\ Model\nX'), FakeGpu(uuid="GPU-r", lost=False)])
    nvml.install(monkeypatch.setattr)
    sampler = make_sampler()
    sampler.sample_once()
    nvml.gpus[1].failing["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN
    sampler.sample_once()
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: sampler.snapshot))
    assert render(registry.collect()) == generate_latest(registry)
