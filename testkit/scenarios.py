"""A zoo of realistic recordings (pure numpy): independent (null) runs of many shapes, and planted couplings.

Each scenario returns what the offline files would hold, the trainer's step records and the hardware
sampler's rows with their own timestamps, so a calibration run goes through the same alignment
(`files.grid.files_to_table`) and the same `coupling.analyse.analyse` as a user's files. The null kinds are the
shapes real runs have and Gaussian AR(1) does not: trends of different shapes, rare large spikes,
shared volatility regimes, gaps, jittered and slow samplers, scrape-phase offsets, a restart.

In a null run nothing on the training side (gradient norm, loss, learning-rate bursts) drives anything
on the hardware side; they may share *timing* (a volatile start, a restart) but not their innovations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from thermograd.analysis.files.readers import Samples, step_durations

NULL_KINDS = ("ar1", "trends", "spikes", "volatility", "gaps", "jitter", "slow_2s", "slow_15s",
              "phase_offset", "restart", "paused", "idle_start", "loader_drift")
PLANTED_KINDS = ("gaussian", "spiky")
START_UNIX_S = 1_767_225_600.0  # 2026-01-01: any epoch works; a realistic one exercises float precision
RATED_W = 250.0


@dataclass
class Recording:
    train: Samples      # grad_norm, loss, learning_rate, perturbation at each optimizer step
    hardware: Samples   # rle, temperature, power, a_load, collapsed at each sampler row
    kind: str
    duration_s: float
    planted: dict | None = None  # {"x", "y", "lag_s", "r"} for a planted coupling
    loader_tau_s: float = 0.0  # the time constant of the loader speed's drift (loader_drift runs)


def ar1_unit(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) with unit variance (started from its stationary distribution)."""
    e = rng.standard_normal(n)
    e[0] /= np.sqrt(1.0 - phi * phi)
    return lfilter([np.sqrt(1.0 - phi * phi)], [1.0, -phi], e)


@dataclass
class _Plan:
    """How one null run is shaped (drawn per run from its kind)."""

    trends: bool = True
    spikes: bool = False
    volatile: bool = False
    hw_interval_s: float = 1.0
    hw_phase_s: float = 0.0
    hw_jitter_s: float = 0.01
    step_interval_s: float = 1.0
    step_jitter_s: float = 0.01
    hw_gaps: bool = False
    train_gap_s: float = 0.0
    restart: bool = False
    step_noise: float = 0.1  # per-step gradient-norm noise on top of the per-second process
    pause_every_s: float = 0.0  # the trainer idles 4 s this often (0: never); power and utilisation drop
    idle_start: bool = False  # the device leaves idle and the optimizer's first fast descent as the run starts
    loader_tau_s: float = 0.0  # a loader-bound job whose speed drifts with this time constant (0: steady)
    throttle_len_s: tuple[float, float] = (5.0, 60.0)  # hot spells (unrelated to the training) last this long


def _plan(kind: str, duration_s: float, rng: np.random.Generator) -> _Plan:
    p = _Plan(step_interval_s=float(rng.choice([0.5, 1.0])), hw_phase_s=float(rng.uniform(0, 0.2)))
    if kind == "ar1":
        p.trends = False
    elif kind == "spikes":
        p.spikes = True
    elif kind == "volatility":
        p.volatile = True
    elif kind == "gaps":
        p.hw_gaps = True
        p.spikes = bool(rng.random() < 0.5)
        p.train_gap_s = 200.0 if duration_s >= 600 else 0.2 * duration_s
    elif kind == "jitter":
        p.hw_jitter_s, p.step_jitter_s = 0.05, 0.1 * p.step_interval_s
        p.spikes = bool(rng.random() < 0.5)
    elif kind == "slow_2s":
        p.hw_interval_s, p.hw_phase_s = 2.0, float(rng.uniform(0, 2))
    elif kind == "slow_15s":
        p.hw_interval_s, p.hw_phase_s = 15.0, float(rng.uniform(0, 15))
    elif kind == "phase_offset":
        p.step_interval_s, p.step_jitter_s = 1.0, 0.0
        p.hw_phase_s, p.hw_jitter_s = float(rng.uniform(0.2, 0.8)), 0.0
    elif kind == "restart":
        p.restart = True
    elif kind == "paused":
        p.pause_every_s = float(rng.uniform(15, 40))
    elif kind == "idle_start":
        p.idle_start = True
    elif kind == "loader_drift":  # time constants from 10 s to 5 min, log-uniform; hot spells of minutes too
        p.loader_tau_s = float(np.exp(rng.uniform(np.log(10.0), np.log(300.0))))
        p.throttle_len_s = (20.0, 180.0)
    elif kind not in NULL_KINDS:
        raise ValueError(f"unknown null kind {kind!r} (known: {', '.join(NULL_KINDS)})")
    return p


def _volatility(n: int, plan: _Plan, rng: np.random.Generator) -> np.ndarray:
    """Noise scale per second, shared by every series: early training and settling clocks are ~4x noisier."""
    vol = np.ones(n)
    if plan.volatile:
        vol[: max(1, int(0.15 * n))] = 4.0
        if rng.random() < 0.5:  # and a second, later volatile stretch (a data-loader hiccup, a neighbour job)
            a = int(rng.uniform(0.4, 0.8) * n)
            vol[a: a + max(1, int(rng.uniform(0.03, 0.1) * n))] = 3.0
    return vol


def _spikes(n: int, rate_per_s: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of rare events (at least one in a short run)."""
    k = max(1, rng.poisson(rate_per_s * n))
    return np.sort(rng.choice(n, size=min(k, max(1, n // 10)), replace=False))


def _episodes(n: int, mean_gap_s: float, len_lo: float, len_hi: float, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 state with episodes at random times (a renewal process)."""
    state = np.zeros(n)
    t = rng.exponential(mean_gap_s)
    while t < n:
        length = rng.uniform(len_lo, len_hi)
        state[int(t): int(t + length)] = 1.0
        t += length + rng.exponential(mean_gap_s)
    return state


def _shape(t: np.ndarray, duration_s: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A smooth trend of one of the shapes real runs have, 0 at t = 0."""
    tau = duration_s * rng.uniform(0.05, 0.6)
    if kind == "decay":
        return np.exp(-t / tau) - 1.0
    if kind == "warmup":
        return 1.0 - np.exp(-t / tau)
    if kind == "ramp":
        return np.minimum(t / tau, 1.0)
    return 1.0 / (1.0 + np.exp(-(t - duration_s * rng.uniform(0.2, 0.8)) / (tau / 4)))  # sigmoid


def _latent(n: int, plan: _Plan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-second values of every series; training and hardware noise are independent."""
    t = np.arange(n, dtype=float)
    vol = _volatility(n, plan, rng)
    on = 1.0 if plan.trends else 0.0
    since = t.copy()
    if plan.restart:  # the job restarts once: training starts over; the device idles, cools, re-warms
        r0 = int(rng.uniform(0.35, 0.6) * n)
        plan.train_gap_s = float(rng.uniform(20, 120))
        r1 = min(n, r0 + int(plan.train_gap_s))
        since = np.where(t >= r1, t - r1, t)
        plan_restart = (r0, r1)
    grad = (2.0 + on * rng.uniform(2, 8) * (1 + _shape(since, n, "decay", rng))
            + 0.4 * vol * ar1_unit(n, rng.uniform(0.3, 0.8), rng))
    loss = 1.0 + on * 4.0 * (1 + _shape(since, n, "decay", rng)) + 0.05 * vol * ar1_unit(n, 0.3, rng)
    temp = (60.0 + on * rng.uniform(5, 25) * _shape(since, n, str(rng.choice(["warmup", "ramp"])), rng)
            + 0.8 * vol * ar1_unit(n, rng.uniform(0.8, 0.98), rng))
    power = (150.0 + on * rng.uniform(-30, 30) * _shape(t, n, str(rng.choice(["ramp", "sigmoid", "warmup"])), rng)
             + 6.0 * vol * ar1_unit(n, rng.uniform(0.6, 0.95), rng))
    collapsed = _episodes(n, rng.uniform(200, 600), 5, 40, rng)
    throttled = _episodes(n, rng.uniform(100, 400), *plan.throttle_len_s, rng)  # hot spells, unrelated to training
    sm_clock = 1.8e9 * (1 - 0.25 * throttled) + 2e7 * vol * ar1_unit(n, rng.uniform(0.5, 0.95), rng)
    utilization = np.clip(0.95 + 0.02 * vol * ar1_unit(n, 0.7, rng), 0, 1)
    rle = (0.6 + on * 0.2 * _shape(t, n, "decay", rng) + 0.05 * vol * ar1_unit(n, rng.uniform(0.7, 0.95), rng)
           - 0.2 * collapsed)
    lr_every = float(rng.uniform(20, 120))
    perturbation = ((t % lr_every) < 5) & (t >= lr_every)
    grad = grad + 2.0 * perturbation
    if plan.spikes:  # loss spikes (6-15x the noise) and, unrelated, 2-second input-pipeline power dips
        s = _spikes(n, 1 / 60, rng)
        grad[s] += rng.uniform(6, 15, s.size) * 0.4 * np.maximum(vol[s], 1) * 4
        loss[s] += rng.uniform(0.5, 2, s.size)
        for d in _spikes(n, 1 / 60, rng):
            power[d: d + 2] *= 0.4
    if plan.restart:
        r0, r1 = plan_restart
        idle = np.arange(r0, r1)
        power[idle] = 60.0 + 2.0 * rng.standard_normal(idle.size)
        cooled = temp[r0] - 40.0
        temp[idle] = 40.0 + cooled * np.exp(-(idle - r0) / 60.0)
        after = np.arange(r1, n)
        temp[after] += (temp[r1 - 1] - temp[r1]) * np.exp(-(after - r1) / 90.0) if r1 < n else 0.0
    out = {"grad_norm": grad, "loss": loss, "perturbation": perturbation.astype(float), "temperature": temp,
           "power": power, "collapsed": collapsed, "rle": rle, "throttled": throttled, "sm_clock": sm_clock,
           "utilization": utilization, "_restart": plan_restart if plan.restart else None}
    if plan.idle_start:
        _from_idle(out, t, rng)
    return out


def _from_idle(series: dict[str, np.ndarray], t: np.ndarray, rng: np.random.Generator) -> None:
    """A run that starts from an idle device: power, temperature, clocks and utilisation climb from their
    idle values (power and temperature over tens of seconds to minutes) while the gradient norm and the loss
    fall fast; each transient has its own time constant and nothing else is shared."""
    def fade(lo: float, hi: float) -> np.ndarray:
        return np.exp(-t / rng.uniform(lo, hi))

    series["power"] -= rng.uniform(90, 200) * fade(10, 60)
    series["temperature"] -= rng.uniform(20, 40) * fade(30, 120)
    series["sm_clock"] += (0.6e9 - 1.8e9) * fade(1, 10)
    series["utilization"] *= 1.0 - fade(1, 5)
    series["rle"] += rng.uniform(-0.3, 0.3) * fade(10, 60)
    series["grad_norm"] += rng.uniform(5, 30) * fade(5, 60)
    series["loss"] += rng.uniform(2, 8) * fade(5, 60)


def drifting_steps(duration_s: float, interval_s: float, tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """Step end times of a loader-bound job whose speed drifts: the log step time is an AR(1) with time
    constant `tau_s` (sd 0.25), plus 2 % jitter per step."""
    drift = 0.25 * ar1_unit(int(duration_s) + 2, float(np.exp(-1.0 / tau_s)), rng)
    times, now = [], 0.0
    while now < duration_s - 1:
        now += interval_s * float(np.exp(drift[int(now)])) * (1.0 + 0.02 * rng.standard_normal())
        times.append(now)
    return np.asarray(times[:-1])


def _times(duration_s: float, interval_s: float, phase_s: float, jitter_s: float,
           rng: np.random.Generator) -> np.ndarray:
    t = np.arange(phase_s, duration_s, interval_s)
    if jitter_s > 0:
        t = np.sort(t + rng.normal(0, jitter_s, t.size))
    return t[(t >= 0) & (t <= duration_s - 1)]


def _gap_mask(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bursts of missing rows (scrape failures): short ones often, a 30 s one now and then."""
    keep = np.ones(t.size, dtype=bool)
    start = rng.exponential(120.0)
    while start < t[-1]:
        length = rng.exponential(5.0) + 1 if rng.random() < 0.9 else 30.0
        keep &= ~((t >= start) & (t < start + length))
        start += length + rng.exponential(120.0)
    return keep


def _sample(latent: dict[str, np.ndarray], t: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    grid = np.arange(latent[names[0]].size, dtype=float)
    out = {}
    for name in names:
        values = np.interp(t, grid, latent[name])
        if name in ("collapsed", "perturbation", "throttled"):  # states are read, not interpolated
            values = latent[name][np.clip(np.floor(t).astype(int), 0, grid.size - 1)]
        out[name] = values
    return out


def _recording(latent: dict, plan: _Plan, duration_s: float, kind: str, rng: np.random.Generator,
               quantise_temperature: bool) -> Recording:
    t_train = (drifting_steps(duration_s, plan.step_interval_s, plan.loader_tau_s, rng) if plan.loader_tau_s
               else _times(duration_s, plan.step_interval_s, 0.0, plan.step_jitter_s, rng))
    if plan.train_gap_s > 0:
        if latent.get("_restart"):
            g0, g1 = latent["_restart"]
        else:
            g0 = rng.uniform(0.3, 0.6) * duration_s
            g1 = g0 + plan.train_gap_s
        t_train = t_train[(t_train < g0) | (t_train >= g1)]
    pause_start = np.full(t_train.size, np.nan)
    pause_len = np.zeros(t_train.size)
    if plan.pause_every_s > 0:  # like the trainer: idle 4 s from the first step boundary after each start
        inside = np.zeros(t_train.size, dtype=bool)
        idle = np.zeros(latent["power"].size, dtype=bool)
        for due in np.arange(plan.pause_every_s, duration_s - 10, plan.pause_every_s):
            boundary = np.flatnonzero(t_train >= due)
            if boundary.size == 0:
                break
            p0 = t_train[boundary[0]]
            inside |= (t_train > p0) & (t_train <= p0 + 4.0)
            after = np.flatnonzero(t_train > p0 + 4.0)
            if after.size:
                pause_start[after[0]], pause_len[after[0]] = START_UNIX_S + p0, 4.0
            idle[int(np.ceil(p0)): int(np.ceil(p0 + 4.0))] = True
        keep = ~inside
        t_train, pause_start, pause_len = t_train[keep], pause_start[keep], pause_len[keep]
        latent["power"] = np.where(idle, 60.0 + 3 * rng.standard_normal(idle.size), latent["power"])
        latent["utilization"] = np.where(idle, 0.05, latent["utilization"])
    train = _sample(latent, t_train, ("grad_norm", "loss", "perturbation"))
    train["grad_norm"] = train["grad_norm"] + plan.step_noise * rng.standard_normal(t_train.size)  # per-step noise
    train["learning_rate"] = np.full(t_train.size, 3e-4)
    # every step does the same work: its tokens are fixed, its time is the sampler's own jitter
    train["tokens"] = np.full(t_train.size, 2048.0)
    train["pause_s"], train["pause_start_unix"] = pause_len, pause_start
    train["step_duration"] = step_durations(t_train, pause_len)
    t_hw = _times(duration_s, plan.hw_interval_s, plan.hw_phase_s, plan.hw_jitter_s, rng)
    if plan.hw_gaps:
        t_hw = t_hw[_gap_mask(t_hw, rng)]
    hw = _sample(latent, t_hw, ("rle", "temperature", "power", "collapsed", "utilization", "sm_clock",
                                "throttled"))
    if quantise_temperature:  # NVML reports whole degrees: the differences are mostly 0, now and then +/-1
        hw["temperature"] = np.round(hw["temperature"])
    hw["a_load"] = hw["power"] / RATED_W
    intervals = {"pause": [(float(a), float(a) + float(b)) for a, b in zip(pause_start, pause_len, strict=True)
                           if b > 0]}
    return Recording(Samples(START_UNIX_S + t_train, train, intervals), Samples(START_UNIX_S + t_hw, hw), kind,
                     duration_s)


def null_run(kind: str, duration_s: float, seed: int) -> Recording:
    """One independent run of `kind`, `duration_s` long."""
    rng = np.random.default_rng(seed)
    plan = _plan(kind, duration_s, rng)
    n = int(duration_s) + 1
    latent = _latent(n, plan, rng)
    rec = _recording(latent, plan, duration_s, kind, rng, quantise_temperature=bool(rng.random() < 0.5))
    rec.loader_tau_s = plan.loader_tau_s
    return rec


def planted_run(kind: str, duration_s: float, lag_s: int, r: float, seed: int) -> Recording:
    """Power follows the gradient norm `lag_s` later with correlation ~r on the differences.

    `gaussian`: Gaussian innovations; `spiky`: Student-t(3) innovations plus rare large spikes, so much
    of the coupling travels in the spikes. Everything else (temperature, RLE, loss) is independent.
    """
    if kind not in PLANTED_KINDS:
        raise ValueError(f"unknown planted kind {kind!r} (known: {', '.join(PLANTED_KINDS)})")
    rng = np.random.default_rng(seed)
    n = int(duration_s) + 1
    plan = _Plan(step_interval_s=1.0, hw_phase_s=float(rng.uniform(0, 0.3)), step_noise=0.0)
    latent = _latent(n, plan, rng)
    if kind == "gaussian":
        dg = rng.standard_normal(n + lag_s)
    else:
        dg = rng.standard_t(3, n + lag_s) / np.sqrt(3.0)
        hits = rng.choice(n + lag_s, size=max(2, n // 100), replace=False)
        dg[hits] += rng.choice([-1, 1], hits.size) * rng.uniform(6, 15, hits.size)
    dg /= dg.std()
    noise = rng.standard_normal(n) if kind == "gaussian" else rng.standard_t(4, n) / np.sqrt(2.0)
    noise /= noise.std()
    dp = r * dg[: n] + np.sqrt(1 - r * r) * noise           # dp[t] ~ dg[t - lag] after the slice below
    dg = dg[lag_s:]
    latent["grad_norm"] = 5.0 + 0.3 * np.cumsum(dg)
    latent["power"] = 150.0 + 4.0 * np.cumsum(dp)
    latent["perturbation"] = np.zeros(n)
    rec = _recording(latent, plan, duration_s, kind, rng, quantise_temperature=False)
    rec.planted = {"x": "grad_norm", "y": "power", "lag_s": lag_s, "r": r}
    return rec


def hot_run(duration_s: float, seed: int, pause_every_s: float = 20.0, pause_s: float = 4.0) -> Recording:
    """A run whose device throttles when hot and whose trainer pauses: the hardware -> training direction.

    Throttle episodes (the device past its limit) lower the SM clock by 30 %, and a step's compute time
    scales with 1 / clock, so step time rises and tokens/s fall while throttled. Every `pause_every_s`
    the trainer idles `pause_s` seconds: utilisation and power drop (the positive control). The gradient
    norm is independent of all of it.
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s) + 1
    plan = _Plan(step_interval_s=1.0, step_noise=0.05)
    latent = _latent(n, plan, rng)
    t = np.arange(n, dtype=float)
    throttled = _episodes(n, 90.0, 10, 30, rng)
    clock = 1.8e9 * (1 - 0.3 * throttled) * (1 + 0.005 * rng.standard_normal(n))
    paused = ((t % pause_every_s) < pause_s) & (t >= pause_every_s)
    latent["power"] = np.where(paused, 70.0, latent["power"]) + 4 * rng.standard_normal(n)
    latent["utilization"] = np.where(paused, 0.05, 0.97) + 0.01 * rng.standard_normal(n)
    latent["sm_clock"], latent["throttled"] = clock, throttled
    # steps: compute time 0.5 s at full clock, stretched by the clock deficit, plus jitter; none in a pause
    times, pause_s_col, pause_start = [], [], []
    now, pending = 0.0, None
    while now < n - 2:
        k = int(now)
        if paused[k]:
            start = now
            while now < n - 2 and paused[int(now)]:
                now += 0.1
            pending = (start, now - start)
            continue
        now += 0.5 * 1.8e9 / clock[k] + abs(rng.normal(0, 0.01))
        times.append(now)
        pause_s_col.append(pending[1] if pending else 0.0)
        pause_start.append(pending[0] if pending else np.nan)
        pending = None
    t_train = np.asarray(times)
    train = _sample(latent, t_train, ("grad_norm", "loss"))
    train.update(perturbation=np.zeros(t_train.size), learning_rate=np.full(t_train.size, 3e-4),
                 tokens=np.full(t_train.size, 1024.0), pause_s=np.asarray(pause_s_col),
                 pause_start_unix=START_UNIX_S + np.asarray(pause_start))
    train["step_duration"] = step_durations(t_train, train["pause_s"])
    t_hw = _times(duration_s, 1.0, 0.1, 0.01, rng)
    hw = _sample(latent, t_hw, ("rle", "temperature", "power", "collapsed", "utilization", "sm_clock"))
    hw["throttled"] = throttled[np.clip(np.floor(t_hw).astype(int), 0, n - 1)]
    hw["a_load"] = hw["power"] / RATED_W
    pauses = [(float(a), float(a) + float(b)) for a, b in zip(train["pause_start_unix"], train["pause_s"], strict=True)
              if b > 0]
    rec = Recording(Samples(START_UNIX_S + t_train, train, {"pause": pauses}), Samples(START_UNIX_S + t_hw, hw),
                    "hot", duration_s)
    rec.planted = {"x": "sm_clock", "y": "step_duration", "lag_s": 0, "r": None}
    return rec


def write_files(rec: Recording, directory: Path) -> tuple[Path, Path]:
    """The recording as a user's files: the trainer's JSON Lines step log and an RLE-lab style CSV
    (with util_pct, sm_clock_mhz and throttled columns when the recording has them)."""
    directory.mkdir(parents=True, exist_ok=True)
    log, csv_path = directory / "steps.jsonl", directory / "rle.csv"
    tr, hw = rec.train, rec.hardware
    with log.open("w") as f:
        for i, t in enumerate(tr.t_s):
            rec_ = {"step": i + 1, "time_unix": round(float(t), 6), "loss": float(tr.columns["loss"][i]),
                    "grad_norm": float(tr.columns["grad_norm"][i]),
                    "learning_rate": float(tr.columns["learning_rate"][i]),
                    "perturbation": bool(tr.columns["perturbation"][i] > 0.5)}
            if "tokens" in tr.columns:
                rec_["tokens"] = int(tr.columns["tokens"][i])
            if "pause_s" in tr.columns:
                start = tr.columns["pause_start_unix"][i]
                rec_["pause_s"] = round(float(tr.columns["pause_s"][i]), 6)
                rec_["pause_start_unix"] = None if not np.isfinite(start) else round(float(start), 6)
            f.write(json.dumps(rec_) + "\n")
    extra = [(name, col, fmt) for name, col, fmt in (("util_pct", "utilization", "{:.2f}"),
                                                     ("sm_clock_mhz", "sm_clock", "{:.1f}"),
                                                     ("throttled", "throttled", "{:.0f}")) if col in hw.columns]
    scale = {"utilization": 100.0, "sm_clock": 1e-6, "throttled": 1.0}
    with csv_path.open("w") as f:
        f.write(",".join(["timestamp", "device", "rle_smoothed", "temp_c", "power_w", "a_load", "collapse",
                          *(e[0] for e in extra)]) + "\n")
        for i, t in enumerate(hw.t_s):
            stamp = datetime.fromtimestamp(float(t), UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            c = hw.columns
            cells = [stamp, "gpu", f"{c['rle'][i]:.6f}", f"{c['temperature'][i]:.2f}", f"{c['power'][i]:.3f}",
                     f"{c['a_load'][i]:.5f}", str(int(c["collapsed"][i] > 0.5))]
            cells += [fmt.format(c[col][i] * scale[col]) for _, col, fmt in extra]
            f.write(",".join(cells) + "\n")
    return log, csv_path
