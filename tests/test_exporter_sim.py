"""Physics of the simulated GPU, and what the RLE engine makes of it."""

from __future__ import annotations

import math

import pytest

from thermograd.exporter.backends.sim import SIM_PROFILES, SimBackend, SimGpu, SimParams, parse_load
from thermograd.exporter.engine import RleEngine


def run(load: float, seconds: int, params: SimParams | None = None, seed: int = 0):
    gpu = SimGpu(params, seed=seed)
    return gpu, [gpu.step(1.0 if t else 0.0, load) for t in range(seconds)]


def test_idle_settles_near_ambient_plus_idle_power():
    p = SimParams()
    gpu, readings = run(0.0, 900)
    assert readings[-1].temp_c == pytest.approx(p.ambient_c + p.idle_power_w * p.thermal_resistance_c_per_w, abs=0.05)
    assert readings[-1].util_pct == 0.0
    assert readings[-1].throttle["gpu_idle"]


def test_first_order_step_response_matches_the_analytic_solution():
    p = SimParams(slowdown_c=1000.0, util_noise_pct=0.0, power_noise_w=0.0)  # no slowdown: pure RC response
    gpu, readings = run(0.5, 300, p)
    power_w = p.idle_power_w + 0.5 * p.dynamic_power_w
    start_c = p.ambient_c + p.idle_power_w * p.thermal_resistance_c_per_w
    target_c = p.ambient_c + power_w * p.thermal_resistance_c_per_w
    t_s = 299.0  # the first step has dt = 0
    expected = target_c + (start_c - target_c) * math.exp(-t_s / p.time_constant_s)
    assert readings[-1].temp_c == pytest.approx(expected, abs=0.01)
    assert readings[-1].power_w == pytest.approx(power_w)
    assert gpu.energy_j == pytest.approx(power_w * t_s)


def test_heats_under_load_and_slows_down_past_the_slowdown_temperature():
    p = SimParams()
    _, readings = run(1.0, 900)
    temps = [r.temp_c for r in readings]
    assert temps[60] > temps[0] + 10  # heats under load
    hot = readings[-1]
    assert hot.temp_c > p.slowdown_c
    assert hot.throttle["sw_thermal"] and hot.util_pct < 95 and hot.sm_clock_hz < p.max_sm_clock_hz
    assert hot.power_w < p.idle_power_w + p.dynamic_power_w  # throttling sheds power: it settles
    assert abs(temps[-1] - temps[-60]) < 0.2


def test_power_follows_load_up_to_the_limit():
    p = SimParams(dynamic_power_w=400.0, util_noise_pct=0.0, power_noise_w=0.0)
    _, readings = run(1.0, 5, p)
    assert readings[-1].power_w == pytest.approx(p.power_limit_w)
    assert readings[-1].throttle["sw_power_cap"]


def _collapse_onsets(load, seconds: int, seed: int, params: SimParams | None = None) -> list[tuple[int, dict]]:
    """(second, reading) of every collapse onset; `load` is a number or a function of the second."""
    p = params or SimParams()
    gpu, engine = SimGpu(p, seed=seed), RleEngine(p.power_limit_w, p.temp_limit_c)
    onsets = []
    for t in range(seconds):
        r = gpu.step(1.0 if t else 0.0, load(t) if callable(load) else load)
        if engine.update(float(t), r.util_pct, r.power_w, r.temp_c).onset:
            onsets.append((t, r))
    return onsets


def _collapse_events(load: float, seconds: int, seed: int, params: SimParams | None = None) -> int:
    return len(_collapse_onsets(load, seconds, seed, params))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sustained_load_collapses_and_idle_or_moderate_load_does_not(seed):
    assert _collapse_events(1.0, 600, seed) >= 1
    assert _collapse_events(0.0, 600, seed) == 0
    assert _collapse_events(0.05, 600, seed) == 0
    assert _collapse_events(0.5, 600, seed) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_profile_collapses_within_a_demo_run_throttles_and_half_load_does_not(seed):
    demo = SIM_PROFILES["demo"]
    full = _collapse_onsets(1.0, 600, seed, demo)
    assert full and 60 < full[0][0] <= 100  # after the detector's 60 s warm-up, within 100 s
    assert _collapse_events(0.5, 600, seed, demo) == 0
    assert _collapse_events(0.0, 600, seed, demo) == 0
    gpu, readings = run(1.0, 300, demo, seed)
    hot = [r for r in readings if r.temp_c > demo.slowdown_c]
    assert hot and all(r.throttle["sw_thermal"] and r.throttle["hw_slowdown"] for r in hot)
    assert readings[-1].sm_clock_hz < 0.85 * demo.max_sm_clock_hz  # clocks cut by the heat
    assert 88 < readings[-1].temp_c < 92  # the throttled card settles near 90 °C


def test_demo_profile_collapses_again_after_each_pause_of_a_hot_card():
    """A trainer that idles 3 s every 15 s (the demo's pause bursts): each resume of a hot card is another
    collapse onset, three of them (RLECollapseRateHigh) within the demo's two minutes."""
    onsets = _collapse_onsets(lambda t: 0.05 if t >= 15 and t % 15 < 3 else 1.0, 200, 0, SIM_PROFILES["demo"])
    assert len(onsets) >= 5 and onsets[2][0] <= 110
    assert all(r.temp_c > SIM_PROFILES["demo"].temp_limit_c - 5 for _, r in onsets)


def test_seeded_runs_repeat_and_seeds_differ():
    a = [r.util_pct for r in run(0.5, 50, seed=7)[1]]
    assert a == [r.util_pct for r in run(0.5, 50, seed=7)[1]]
    assert a != [r.util_pct for r in run(0.5, 50, seed=8)[1]]


def test_parse_load():
    assert parse_load("host") is None
    assert parse_load("0.25")(100.0) == 0.25
    steps = parse_load("0:0.1,60:1,300:0.2")
    assert [steps(t) for t in (0, 59.9, 60, 299, 301)] == [0.1, 0.1, 1.0, 1.0, 0.2]
    for bad in ("1.5", "x", "0:0.1,60"):
        with pytest.raises(ValueError, match="--sim-load"):
            parse_load(bad)


def _readings(load, code: str, seconds: float, before=None) -> list[tuple[float, float]]:
    """(t, load) every 0.2 s for `seconds` while a Python process runs `code` (`before(pid)` once it exists)."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        if before is not None:
            before(proc.pid)
        load.pid = proc.pid
        readings, t0 = [], time.monotonic()
        while time.monotonic() - t0 < seconds:
            readings.append((time.monotonic() - t0, load(time.monotonic())))
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return readings


def test_pid_load_follows_one_process_busy_then_idle(tmp_path):
    """pid:FILE: ~1 while the process computes, ~0 while it idles (a trainer's pause) or is not there yet."""
    pidfile = tmp_path / "trainer.pid"
    load = parse_load(f"pid:{pidfile}")
    assert load(0.0) == 0.0  # no file yet: idle
    busy_then_idle = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass\ntime.sleep(30)"
    readings = _readings(load, busy_then_idle, 3.2, lambda pid: pidfile.write_text(str(pid)))
    busy = [v for t, v in readings if 0.6 < t < 1.3]
    idle = [v for t, v in readings if t > 2.2]
    assert busy and max(busy) > 0.5 and sum(busy) / len(busy) > 0.3, readings
    assert idle and max(idle) < 0.1, readings
    with pytest.raises(ValueError, match="pid:FILE"):
        parse_load("pid:")


def test_process_load_counts_the_children_a_launcher_starts():
    """A launcher (torchrun, a shell) that only waits while its child computes: the child's CPU use heats the
    card (the whole process tree counts), and the heat source says what it is."""
    from thermograd.exporter.backends.sim import ProcessLoad

    child = "import time\nend = time.time() + 2.0\nwhile time.time() < end: pass\ntime.sleep(3)"
    launcher = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}])"
    load = ProcessLoad(lambda: getattr(load, "pid", None), "the job's processes")
    readings = _readings(load, launcher, 3.6)
    busy = [v for t, v in readings if 0.8 < t < 1.8]
    idle = [v for t, v in readings if t > 2.8]
    assert busy and max(busy) > 0.5, readings
    assert idle and max(idle) < 0.1, readings
    assert SimBackend(load=load).devices()[0].heat_source == "the job's processes"
    assert "whole machine" in SimBackend().devices()[0].heat_source  # --sim-load host: said plainly


def test_backend_devices_and_scripted_load():
    backend = SimBackend(count=3, seed=1, load=parse_load("0:0,10:1"))
    assert [(d.device, d.uuid, d.kind, d.backend) for d in backend.devices()] == [
        (str(i), f"sim-{i}", "gpu", "sim") for i in range(3)]
    assert backend.read(0, 100.0).util_pct == 0.0
    assert backend.read(0, 111.0).util_pct == pytest.approx(100.0)
