"""Every test on one Table -> the statistical part of the report (pure; no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis import table as T
from analysis.stats import correlation, events, granger, lagged, perturbation
from analysis.stats.multiple import holm
from analysis.stats.series import INSUFFICIENT, is_constant, stationary, strength_band

PAIRS = ((T.GRAD_NORM, T.RLE), (T.GRAD_NORM, T.TEMPERATURE), (T.GRAD_NORM, T.POWER),
         (T.GRAD_NORM, T.A_LOAD), (T.LOSS, T.RLE))
HARDWARE = (T.RLE, T.TEMPERATURE, T.POWER, T.A_LOAD)


@dataclass
class Settings:
    max_lag_s: float = 30.0
    # A run's start-up is one regime change, not coupling: in the same second or two the gradient norm
    # plunges and the device leaves idle. On differences that is one extreme pair, and on a 2-minute demo run
    # it alone made Pearson read r = -0.77 between series that were uncorrelated for the other 100 s.
    warmup_s: float = 30.0
    n_surrogates: int = 1000
    spike_z: float = 3.0
    event_window_s: float = 5.0
    perturbation_window_s: float | None = None  # None: twice the median burst length
    granger_max_order: int = 10
    alpha: float = 0.05
    seed: int = 0


def _steps(seconds: float, step_s: float) -> int:
    return max(1, int(round(seconds / step_s)))


def analyse_pair(x: np.ndarray, y: np.ndarray, names: tuple[str, str], step_s: float, cfg: Settings,
                 rng: np.random.Generator, naive_xy: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Naive (on `naive_xy`, default x and y), primary and lagged tests of one pair."""
    dx, dy = stationary(x), stationary(y)
    requested = _steps(cfg.max_lag_s, step_s)
    # A short run cannot support the full scan: narrow it so the largest lag still has 30 overlapping
    # pairs (lagged_test's floor), and say so, rather than give no lagged answer at all.
    fits = (int(np.sum(np.isfinite(dx) & np.isfinite(dy))) - lagged.MIN_OVERLAP) // 2
    max_lag = min(requested, fits) if fits >= 1 else requested
    lag = lagged.lagged_test(dx, dy, max_lag, cfg.n_surrogates, rng)
    lag["max_lag_s"] = max_lag * step_s
    if max_lag < requested:
        lag["max_lag_note"] = (f"scan narrowed from +/-{requested * step_s:g} s to +/-{max_lag * step_s:g} s: "
                               f"the run is too short for the full range")
    lag["peak_lag_s"] = None if lag["peak_lag_steps"] is None else lag["peak_lag_steps"] * step_s
    lag["lags_s"] = [k * step_s for k in range(-lag["max_lag_steps"], lag["max_lag_steps"] + 1)]
    return {"x": names[0], "y": names[1], "naive": correlation.naive(*(naive_xy or (x, y))),
            "primary": correlation.correlation_with_neff(dx, dy, correlation.PRIMARY_METHOD),
            "lag": lag, "coupled": False, "strength": None}


def _pair_verdict(pair: dict, alpha: float) -> None:
    """Coupled when the primary or the lagged test survives correction; strength from that test's |r|."""
    prim, lag = pair["primary"], pair["lag"]
    if prim.get("status") == INSUFFICIENT and lag.get("status") == INSUFFICIENT:
        pair["coupled"], pair["strength"] = False, INSUFFICIENT
        pair["reason"] = "; ".join(dict.fromkeys(t.get("reason", "too few samples") for t in (prim, lag)))
        return
    found = [abs(t[key]) for t, key in ((prim, "r"), (lag, "peak_r"))
             if t.get("p_adjusted") is not None and t["p_adjusted"] < alpha]
    pair["coupled"] = bool(found)
    if found:
        pair["strength"] = strength_band(max(found))
    elif prim.get("status") == INSUFFICIENT:
        pair["strength"] = INSUFFICIENT
        pair["reason"] = prim.get("reason")
    else:
        pair["strength"] = "none"


def _correct(pairs: list[dict], extra: list[dict], cfg: Settings) -> list[str]:
    """Holm across every p-value in the report; each test dict gets its p_adjusted. Returns notes."""
    tests = [t for p in pairs for t in (p["primary"], p["lag"]) if t.get("p") is not None]
    tests += [t for t in extra if t.get("p") is not None]
    for test, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
        test["p_adjusted"] = adjusted
    floor = len(tests) / (cfg.n_surrogates + 1)  # the smallest Holm-adjusted surrogate p possible
    notes = [f"Holm correction over {len(tests)} tests; the smallest adjusted surrogate p-value is {floor:.3g}."]
    if floor >= cfg.alpha:
        notes.append(f"With {cfg.n_surrogates} surrogates no surrogate-based test can reach alpha={cfg.alpha} "
                     "after correction: raise --surrogates.")
    return notes


def analyse(table: T.Table, cfg: Settings) -> dict:
    """Every test on `table` (which starts at the run's first sample) after the start-up warm-up."""
    rng = np.random.default_rng(cfg.seed)
    # At most a tenth of the run: a short run (the lab's are 3 minutes) keeps most of its samples, and a
    # start-up transient lasts seconds, not minutes.
    warm_rows = min(_steps(cfg.warmup_s, table.step_s), table.n // 10) if cfg.warmup_s > 0 else 0
    warmup = {"seconds": warm_rows * table.step_s, "rows_excluded": warm_rows,
              "analysed_from_unix": table.start_s + warm_rows * table.step_s}
    full, table = table, table.rows_from(warm_rows)
    cols, step = table.columns, table.step_s
    absent, absent_full = np.full(table.n, np.nan), np.full(full.n, np.nan)
    # The naive numbers are what a naive look at the whole run gives, start-up included.
    pairs = [analyse_pair(cols.get(x, absent), cols.get(y, absent), (x, y), step, cfg, rng,
                          naive_xy=(full.columns.get(x, absent_full), full.columns.get(y, absent_full)))
             for x, y in PAIRS]
    extra: list[dict] = []

    ev: dict = {"status": INSUFFICIENT, "reason": "no collapse series"}
    if table.has(T.COLLAPSED):
        ev = events.spikes_vs_collapses(cols[T.GRAD_NORM], cols[T.COLLAPSED], cfg.spike_z,
                                        _steps(cfg.event_window_s, step), cfg.n_surrogates, rng)
        ev["window_s"] = ev["window_steps"] * step
        for key in ("precursor", "trigger"):
            ev[key] = {"rate": ev.pop(f"{key}_rate"), "p": ev.pop(f"{key}_p"), "p_adjusted": None}
            extra.append(ev[key])
        extra.append(ev["point_biserial"])

    gr = []
    for x, y in PAIRS:
        res = granger.granger_both_ways(cols.get(x, absent), cols.get(y, absent),
                                        min(cfg.granger_max_order, _steps(cfg.max_lag_s, step)))
        res.update(x=x, y=y)
        extra += [res[k] for k in ("x_to_y", "y_to_x") if res.get(k)]
        gr.append(res)

    pert = None
    if table.has(T.PERTURBATION) and not is_constant(cols[T.PERTURBATION]):
        window = (_steps(cfg.perturbation_window_s, step) if cfg.perturbation_window_s
                  else perturbation.default_window(cols[T.PERTURBATION]))
        pert = {"window_s": window * step, "metrics": {}}
        for name in HARDWARE:
            res = perturbation.triggered_average(cols.get(name, absent), cols[T.PERTURBATION], window,
                                                 cfg.n_surrogates, rng)
            pert["metrics"][name] = res
            extra.append(res)

    notes = _correct(pairs, extra, cfg)
    if warm_rows:
        notes.append(f"The run's first {warmup['seconds']:g} s (start-up: the device leaving idle as the loss and "
                     "gradient norm plunge) are shown in the figures but left out of every test (--warmup).")
    for pair in pairs:
        _pair_verdict(pair, cfg.alpha)
    return {"pairs": pairs, "events": ev, "granger": gr, "perturbation": pert, "warmup": warmup, "notes": notes}
