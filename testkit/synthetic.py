"""A synthetic run with known, planted couplings (pure numpy): for tests, the benchmark and demos.

Planted: power follows the gradient norm 3 s later (and a_load = power / 200 W); collapses start 2 s
after gradient-norm spikes; learning-rate bursts raise the gradient norm (hence power); temperature
and RLE share trends with training but move independently of it step to step.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

POWER_LAG_S = 3
COLLAPSE_DELAY_S = 2


def ar1(n: int, phi: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    return lfilter([1.0], [1.0, -phi], rng.standard_normal(n)) * sd * np.sqrt(1 - phi * phi)


def planted_run(n_s: int, seed: int = 0, burst_every_s: int = 120, burst_len_s: int = 5,
                n_spikes: int | None = None) -> dict[str, np.ndarray]:
    """Per-second columns on t = 0..n_s-1 (values a scrape would see at each second)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_s, dtype=float)
    tau = max(n_s / 3.0, 60.0)
    perturbation = ((t % burst_every_s) < burst_len_s) & (t >= burst_every_s)
    grad = 2.0 + 6.0 * np.exp(-t / tau) + ar1(n_s, 0.6, 0.4, rng) + 4.0 * perturbation
    n_spikes = n_spikes if n_spikes is not None else max(3, n_s // 90)
    spikes = rng.choice(np.arange(10, n_s - 10), size=min(n_spikes, n_s // 20), replace=False)
    grad[spikes] += 6.0
    collapsed = np.zeros(n_s)
    for k in range(COLLAPSE_DELAY_S, COLLAPSE_DELAY_S + 3):
        collapsed[np.clip(spikes + k, 0, n_s - 1)] = 1.0
    lagged_grad = np.concatenate((np.full(POWER_LAG_S, grad[0]), grad[:-POWER_LAG_S]))
    power = 120.0 + 6.0 * lagged_grad + ar1(n_s, 0.9, 6.0, rng)
    temperature = 55.0 + 20.0 * (1 - np.exp(-t / tau)) + ar1(n_s, 0.95, 0.8, rng)
    rle = 0.5 + 0.3 * np.exp(-t / tau) + ar1(n_s, 0.9, 0.05, rng) - 0.2 * collapsed
    loss = 1.0 + 5.0 * np.exp(-t / tau) + ar1(n_s, 0.3, 0.05, rng)
    return {"grad_norm": grad, "loss": loss, "temperature": temperature, "power": power,
            "a_load": power / 200.0, "rle": rle, "collapsed": collapsed,
            "perturbation": perturbation.astype(float)}
