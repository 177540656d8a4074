"""Planted effects for the zoo (pure numpy): spike-triggered responses, spike-carried lagged couplings, and
couplings whose direction matters (the job driving the device; a measured common cause).

Each returns a scenarios.Recording in the offline file formats with `planted` saying what was put in, so a
calibration run goes through `files.grid.files_to_table` and `coupling.analyse.analyse` like a user's files.

- spike_response_run: every gradient-norm spike (one step, 6-15x the noise) is followed `delay_s` later by a
  change of `effect_w` watts in power lasting `length_s`; nothing else couples.
- spike_lagged_run: a 3-minute run where power follows the gradient norm `lag_s` later, the coupling carried
  mostly by three large spikes: one-step pulses ("pulse") or jumps of either sign ("jump").
- throughput_leads_run: data-loader stalls idle the device, so utilisation and power follow the training's
  throughput ~1.5 s later; clocks are flat and nothing throttles: the device cannot slow the steps.
- common_cause_run: hot spells throttle the device (clocks down) and raise its temperature; the slower clock
  makes every step `slowdown` times longer; the training cannot affect the device.
"""

from __future__ import annotations

import numpy as np

from testkit.scenarios import (
    RATED_W,
    START_UNIX_S,
    Recording,
    _episodes,
    _latent,
    _Plan,
    _recording,
    _times,
    ar1_unit,
)
from thermograd.analysis.files.readers import Samples, step_durations

GRAD_NOISE_SD = 0.4  # the zoo's per-second gradient-norm noise scale (scenarios._latent)


def _spike_times(duration_s: float, every_s: float, rng: np.random.Generator, first_s: float = 40.0,
                 min_count: int = 3) -> np.ndarray:
    """Spike times (s): a Poisson number (at least `min_count`) placed at random after `first_s`, at least 15 s
    apart and 15 s before the end."""
    room = np.arange(first_s, duration_s - 15.0, 15.0)
    count = int(min(room.size, max(min_count, rng.poisson((duration_s - first_s) / every_s))))
    return np.sort(rng.choice(room, size=count, replace=False) + rng.uniform(0.0, 14.0, count))


def _add_step_spikes(rec: Recording, times_s: np.ndarray, heights: np.ndarray, rng: np.random.Generator) -> None:
    """Each spike on the first step at or after its time; the loss spikes on the same step half the time."""
    t = rec.train.t_s - START_UNIX_S
    steps = np.minimum(np.searchsorted(t, times_s), t.size - 1)
    rec.train.columns["grad_norm"][steps] += heights
    with_loss = rng.random(steps.size) < 0.5
    rec.train.columns["loss"][steps[with_loss]] += rng.uniform(0.5, 2.0, int(with_loss.sum()))


def spike_response_run(duration_s: float, seed: int, effect_w: float, delay_s: int = 3, length_s: int = 5,
                       every_s: float = 90.0) -> Recording:
    """Gradient-norm spikes followed `delay_s` later by a power change of `effect_w` for `length_s` seconds."""
    rng = np.random.default_rng(seed)
    n = int(duration_s) + 1
    plan = _Plan(step_interval_s=float(rng.choice([0.5, 1.0])), hw_phase_s=float(rng.uniform(0, 0.2)))
    latent = _latent(n, plan, rng)
    times = _spike_times(duration_s, every_s, rng)
    for start in np.floor(times).astype(int) + delay_s:
        latent["power"][start: start + length_s] += effect_w
    rec = _recording(latent, plan, duration_s, "spike_response", rng, quantise_temperature=bool(rng.random() < 0.5))
    _add_step_spikes(rec, times, rng.uniform(6, 15, times.size) * GRAD_NOISE_SD, rng)
    rec.planted = {"x": "grad_norm", "y": "power", "effect_w": effect_w, "n_spikes": int(times.size),
                   "window_s": [float(delay_s), float(delay_s + length_s - 1)]}
    return rec


def spike_lagged_run(duration_s: float, seed: int, shape: str = "pulse", lag_s: int = 2,
                     n_spikes: int = 3) -> Recording:
    """Power follows the gradient norm `lag_s` later (r ~ 0.45 on the differences before clipping), the
    coupling carried mostly by `n_spikes` large spikes: one-step pulses up, or jumps of either sign."""
    if shape not in ("pulse", "jump"):
        raise ValueError(f"unknown shape {shape!r} (pulse or jump)")
    rng = np.random.default_rng(seed)
    n = int(duration_s) + 1
    plan = _Plan(step_interval_s=1.0, hw_phase_s=float(rng.uniform(0, 0.3)), step_noise=0.0)
    latent = _latent(n, plan, rng)
    times = _spike_times(duration_s, duration_s, rng, first_s=45.0, min_count=n_spikes)[:n_spikes]
    hits = np.floor(times).astype(int)
    size = rng.uniform(6, 15, hits.size)
    innovations = rng.standard_t(4, n) / np.sqrt(2.0)
    if shape == "pulse":  # the level: noise plus pulses; power follows the level's departures
        level = 0.4 * ar1_unit(n, 0.5, rng)
        level[hits] += size * 0.4
        lagged = np.concatenate((np.zeros(lag_s), level[:-lag_s]))
        latent["grad_norm"] = 5.0 + level
        latent["power"] = 150.0 + 6.0 * innovations + 5.0 * lagged
    else:  # the differences: heavy-tailed noise plus jumps of either sign; power's differences follow them
        dg = rng.standard_t(3, n) / np.sqrt(3.0)
        dg[hits] += rng.choice([-1.0, 1.0], hits.size) * size
        dg /= dg.std()
        lagged = np.concatenate((np.zeros(lag_s), dg[:-lag_s]))
        dp = 0.45 * lagged + np.sqrt(1 - 0.45 ** 2) * innovations / innovations.std()
        latent["grad_norm"] = 5.0 + 0.3 * np.cumsum(dg)
        latent["power"] = 150.0 + 4.0 * np.cumsum(dp)
    latent["perturbation"] = np.zeros(n)
    rec = _recording(latent, plan, duration_s, f"spike_lagged_{shape}", rng, quantise_temperature=False)
    rec.planted = {"x": "grad_norm", "y": "power", "lag_s": lag_s, "shape": shape, "n_spikes": int(hits.size),
                   "window_s": [float(lag_s), float(lag_s)]}
    return rec


def _device_samples(latent: dict[str, np.ndarray], duration_s: float, rng: np.random.Generator) -> Samples:
    """The hardware sampler's rows (1 s, small jitter): levels interpolated, states read."""
    t_hw = _times(duration_s, 1.0, 0.1, 0.01, rng)
    grid = np.arange(latent["power"].size, dtype=float)
    row = np.clip(np.floor(t_hw).astype(int), 0, grid.size - 1)
    hw = {name: np.interp(t_hw, grid, latent[name]) for name in ("rle", "temperature", "power", "utilization",
                                                                 "sm_clock")}
    hw.update(collapsed=latent["collapsed"][row], throttled=latent["throttled"][row], a_load=hw["power"] / RATED_W)
    return Samples(START_UNIX_S + t_hw, hw)


def _step_log(latent: dict[str, np.ndarray], t_train: np.ndarray, tokens: float) -> Samples:
    """The trainer's step records at `t_train`: gradient norm and loss read from the latent, fixed tokens."""
    grid = np.arange(latent["grad_norm"].size, dtype=float)
    k = t_train.size
    train = {name: np.interp(t_train, grid, latent[name]) for name in ("grad_norm", "loss")}
    train.update(perturbation=np.zeros(k), learning_rate=np.full(k, 3e-4), tokens=np.full(k, tokens),
                 pause_s=np.zeros(k), pause_start_unix=np.full(k, np.nan))
    train["step_duration"] = step_durations(t_train, train["pause_s"])
    return Samples(START_UNIX_S + t_train, train, {"pause": []})


def _simulate_steps(step_time_s: np.ndarray, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Step end times when a step starting in second k takes step_time_s[k] (plus 1 % jitter)."""
    times, now = [], 0.0
    while now < duration_s - 2:
        now += float(step_time_s[int(now)]) * (1.0 + 0.01 * rng.standard_normal())
        times.append(now)
    return np.asarray(times)


def throughput_leads_run(duration_s: float, seed: int, lead_s: float = 1.5) -> Recording:
    """Data-loader stalls (1-4 s, every ~15-40 s, and a slowly varying loader speed) make steps wait; the
    device idles while they wait, so utilisation and power follow the throughput `lead_s` later. Clocks stay
    flat and nothing throttles. The gradient norm is independent of all of it."""
    rng = np.random.default_rng(seed)
    n = int(duration_s) + 1
    plan = _Plan(step_interval_s=1.0, step_noise=0.05)
    latent = _latent(n, plan, rng)
    stalls = _episodes(n, rng.uniform(15, 40), 1, 4, rng)
    wait = 0.15 * np.exp(0.3 * ar1_unit(n, 0.9, rng)) + 1.5 * stalls  # s of loader wait per step
    compute = 0.5
    busy = compute / (compute + wait)  # the device's busy share in each second
    t = np.arange(n, dtype=float)
    follows = np.interp(t - lead_s, t, busy, left=busy[0])
    latent["utilization"] = np.clip(follows + 0.01 * rng.standard_normal(n), 0, 1)
    latent["power"] = 70.0 + 180.0 * follows + 4.0 * ar1_unit(n, 0.7, rng)
    latent["sm_clock"] = 1.8e9 + 5e6 * rng.standard_normal(n)
    latent["throttled"] = np.zeros(n)
    t_train = _simulate_steps(compute + wait, duration_s, rng)
    rec = Recording(_step_log(latent, t_train, 2048.0), _device_samples(latent, duration_s, rng), "throughput_leads",
                    duration_s)
    rec.planted = {"x": "throughput", "y": "power", "lead_s": lead_s, "runs": "training -> hardware"}
    return rec


def common_cause_run(duration_s: float, seed: int, slowdown: float = 1.25) -> Recording:
    """Hot spells (10-40 s, every ~90 s) throttle the device: clocks fall by 1 - 1/slowdown and the temperature
    rises; each step's compute time scales with 1 / clock, so step time is `slowdown` times longer while
    throttled. The training cannot affect the device, and the gradient norm is independent of all of it."""
    rng = np.random.default_rng(seed)
    n = int(duration_s) + 1
    plan = _Plan(step_interval_s=1.0, step_noise=0.05)
    latent = _latent(n, plan, rng)
    hot = _episodes(n, 90.0, 10, 40, rng)
    clock = 1.8e9 / (1.0 + (slowdown - 1.0) * hot) * (1 + 0.003 * rng.standard_normal(n))
    heat = np.convolve(hot, np.exp(-np.arange(60) / 15.0) / 15.0)[:n]  # the spell's heat, smoothed
    latent["sm_clock"], latent["throttled"] = clock, hot
    latent["temperature"] = latent["temperature"] + 6.0 * heat
    t_train = _simulate_steps(0.5 * 1.8e9 / clock, duration_s, rng)
    rec = Recording(_step_log(latent, t_train, 1024.0), _device_samples(latent, duration_s, rng), "common_cause",
                    duration_s)
    rec.planted = {"x": "sm_clock", "y": "step_duration", "lag_s": 0, "slowdown": slowdown,
                   "common_cause": "throttled"}
    return rec
