"""Command-line parsing: per-device values, engine flags, and a sampler that survives a broken backend."""

from __future__ import annotations

import pytest

from thermograd.exporter.backends.base import DeviceInfo, Reading
from thermograd.exporter.cli import (
    UsageError,
    build_serve_parser,
    parse_device_values,
    rle_config_from,
)
from thermograd.exporter.monitor import UnknownDevice
from thermograd.exporter.monitor import per_device as resolve_device_values
from thermograd.exporter.sampler import Sampler


def test_device_values_plain_and_per_device():
    specs = parse_device_values(["250", "1=300"], "--rated-power", positive=True)
    assert specs == {None: 250.0, "1": 300.0}
    assert resolve_device_values(specs, ["0", "1", "2"], "--rated-power") == {"0": 250.0, "1": 300.0, "2": 250.0}
    assert resolve_device_values({"1": 300.0}, ["0", "1"], "--rated-power") == {"1": 300.0}


@pytest.mark.parametrize("spec", ["0", "-5", "1=0", "x", "1=abc", "inf"])
def test_bad_rated_power(spec):
    with pytest.raises(UsageError, match="--rated-power"):
        parse_device_values([spec], "--rated-power", positive=True)


def test_temp_limit_may_be_any_finite_number_but_device_must_exist():
    assert parse_device_values(["gpu=-10"], "--temp-limit", positive=False) == {"gpu": -10.0}
    with pytest.raises(UnknownDevice, match="unknown device 'gpu9'"):
        resolve_device_values({"gpu9": 80.0}, ["gpu", "cpu"], "--temp-limit")


def test_engine_flags_reach_the_config():
    args = build_serve_parser().parse_args(["--collapse-hold-s", "3", "--collapse-drop-frac", "0.5",
                                            "--rle-smoothing-window-s", "2", "--rle-gap-intervals", "5"])
    config = rle_config_from(args)
    assert (config.hold_s, config.drop_frac, config.smoothing_window_s, config.gap_intervals) == (3, 0.5, 2, 5)
    assert config.warmup_s == 60.0  # untouched defaults stay the lab's


def test_sim_profile_reaches_the_simulated_gpu_and_auto_fallback():
    from thermograd.exporter.backends import open_backend
    from thermograd.exporter.backends.sim import SIM_PROFILES

    args = build_serve_parser().parse_args(["--backend", "sim", "--sim-profile", "demo"])
    backend = open_backend(args.backend, sim_load=lambda _: 1.0, sim_profile=args.sim_profile)
    assert backend.params == SIM_PROFILES["demo"] and backend.params.ambient_c == 40.0
    assert build_serve_parser().parse_args([]).sim_profile == "default"
    assert open_backend("sim", sim_load=lambda _: 1.0).params == SIM_PROFILES["default"]


class FlakyBackend:
    """device 0 raises an unexpected error every round; device 1 works."""

    name = "flaky"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(str(i), f"flaky-{i}", "flaky", "gpu", "sim", 100.0, 83.0) for i in range(2)]

    def read(self, index: int, now_s: float) -> Reading:
        if index == 0:
            raise RuntimeError("driver hiccup")
        return Reading(util_pct=50.0, power_w=50.0, temp_c=50.0)

    def close(self) -> None:
        pass


def test_sampler_survives_an_unexpected_backend_error(caplog: pytest.LogCaptureFixture):
    sampler = Sampler(FlakyBackend(), 1.0, {"1": 200.0}, {})
    for _ in range(3):
        snap = sampler.sample_once()
    assert [d.info.device for d in snap.devices] == ["1"]
    assert snap.devices[0].rated_power_w == 200.0 and snap.devices[0].result.load_ratio == 0.25
    assert snap.errors == (("0", "read", 3),)
    assert sum("driver hiccup" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert snap.samples_total == 3 and sum(snap.duration_bucket_counts) == 3
