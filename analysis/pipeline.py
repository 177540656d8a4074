"""Every test on one Table -> the statistical part of the report (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from thermograd.analysis import table as T
from thermograd.analysis.catalog import DIRECTIONS, PAIRS
from thermograd.analysis.stats import correlation, events, granger, lagged, perturbation
from thermograd.analysis.stats.multiple import holm
from thermograd.analysis.stats.series import INSUFFICIENT, LONG_GAP_S, is_constant, segment_bounds, stationary
from thermograd.analysis.stats.throttle import throttle_cost

HARDWARE = (T.RLE, T.TEMPERATURE, T.POWER, T.A_LOAD)
# A pause idles the compute: a known effect on these, the positive control of every run that has pauses.
POSITIVE_CONTROL_METRICS = (T.UTILIZATION, T.POWER, T.RLE)
THROTTLE_BLOCK_S = 60.0
PAUSE_SETTLE_S = 2.0
WIND_DOWN_S = 5.0
POWER_FOR_MDE = 0.8
Z_POWER = float(stats.norm.ppf(POWER_FOR_MDE))


@dataclass
class Settings:
    max_lag_s: float = 30.0
    # A run's start-up is one regime change, not coupling: in the same second or two the gradient norm
    # plunges and the device leaves idle. On differences that is one extreme pair, and on a 2-minute demo run
    # it alone made Pearson read r = -0.77 between series that were uncorrelated for the other 100 s. A
    # resume after a long gap in the training series (a restart, a checkpoint, an evaluation) is one too.
    warmup_s: float = 30.0
    n_surrogates: int = 1000
    spike_z: float = 3.0
    event_window_s: float = 5.0
    perturbation_window_s: float | None = None  # None: twice the median burst length
    granger_max_order: int = 10
    alpha: float = 0.05
    # The smallest |r| worth calling coupling: a week of 1 s data makes r = 0.01 significant.
    min_effect: float = 0.1
    # The seed's "independent systems" band: |r| < 0.3. Claimed only when an equivalence test shows it.
    equivalence_bound: float = 0.3
    seed: int = 0


def _steps(seconds: float, step_s: float) -> int:
    return max(1, int(round(seconds / step_s)))


def startup_rows(train: np.ndarray, step_s: float, warmup_s: float) -> tuple[np.ndarray, int]:
    """Rows to leave out of the tests: the run's first `warmup_s` and the same after every resume
    from a gap of LONG_GAP_S or more in the training series, each at most a tenth of its segment
    (a short run keeps most of its samples; a start-up transient lasts seconds, not minutes).
    Returns (mask, number of resumes)."""
    n = train.size
    mask = np.zeros(n, dtype=bool)
    present = np.isfinite(train)
    if warmup_s <= 0 or not present.any():
        return mask, 0
    first, last = segment_bounds(present, _steps(LONG_GAP_S, step_s))
    starts = np.unique(first[present])
    for s in starts:
        length = int(last[s] - s + 1)
        mask[s: s + min(_steps(warmup_s, step_s), length // 10)] = True
    # and the wind-down before each long gap: the job stopping drops power and throughput together
    for e in np.unique(last[present])[:-1]:
        mask[max(0, e - _steps(WIND_DOWN_S, step_s) + 1): e + 1] = True
    mask[: int(np.flatnonzero(present)[0])] = True  # before the first step there is nothing to test
    return mask, int(starts.size - 1)


def analyse_pair(x: np.ndarray, y: np.ndarray, names: tuple[str, str], step_s: float, cfg: Settings,
                 rng: np.random.Generator, naive_xy: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Naive (on `naive_xy`, default x and y), primary (lag 0) and lagged tests of one pair."""
    dx, dy = stationary(x, step_s), stationary(y, step_s)
    requested = _steps(cfg.max_lag_s, step_s)
    # A short run cannot support the full scan: narrow it so the largest lag still has 30 overlapping
    # pairs, and say so, rather than give no lagged answer at all.
    fits = (int(np.sum(np.isfinite(dx) & np.isfinite(dy))) - lagged.MIN_OVERLAP) // 2
    max_lag = min(requested, fits) if fits >= 1 else requested
    res = lagged.scan(dx, dy, max_lag, cfg.n_surrogates, rng)
    prim, lag = res["lag0"], res["lagged"]
    prim["method"] = correlation.PRIMARY_METHOD
    lag["max_lag_s"] = max_lag * step_s
    if max_lag < requested:
        lag["max_lag_note"] = (f"scan narrowed from +/-{requested * step_s:g} s to +/-{max_lag * step_s:g} s: "
                               f"the run is too short for the full range")
    lag["peak_lag_s"] = None if lag["peak_lag_steps"] is None else lag["peak_lag_steps"] * step_s
    lag["lags_s"] = [k * step_s for k in range(-lag["max_lag_steps"], lag["max_lag_steps"] + 1)]
    return {"x": names[0], "y": names[1], "naive": correlation.naive(*(naive_xy or (x, y))),
            "primary": prim, "lag": lag, "coupled": False, "strength": None, "_equivalence": res["equivalence"]}


def strength_from_ci(ci: list[float]) -> str:
    """The seed's bands applied to the CI's bound nearest zero: what the data show at least."""
    lo, hi = ci
    nearest = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
    return "strong" if nearest > 0.7 else "moderate" if nearest > 0.3 else "weak"


def _equivalence(eq: dict, cfg: Settings) -> dict:
    """TOST at every lag of the scan (an intersection-union test: no correction needed): |r| < bound is
    shown when every lag's (1 - 2 alpha) CI lies inside (-bound, bound)."""
    z, se = np.abs(np.asarray(eq["z"])), np.asarray(eq["se_z"])
    bound_z = float(np.arctanh(cfg.equivalence_bound))
    z_crit = float(stats.norm.ppf(1 - cfg.alpha))
    upper = np.tanh(z + z_crit * se)
    worst = int(np.argmax(upper))
    p_eq = float(np.max(stats.norm.cdf((z - bound_z) / se)))
    return {"bound": cfg.equivalence_bound, "alpha": cfg.alpha, "p": p_eq, "equivalent": p_eq < cfg.alpha,
            "max_abs_r_upper": float(upper[worst]), "_worst": (float(z[worst]), float(se[worst])),
            "method": f"TOST at every lag: each lag's {100 * (1 - 2 * cfg.alpha):g} % CI inside "
                      f"(-{cfg.equivalence_bound:g}, {cfg.equivalence_bound:g})"}


def _detectable(pair: dict, eq: dict, equiv: dict, family: int, step_s: float, cfg: Settings) -> None:
    """Minimal detectable |r| at 80 % power (lag-0 test, Holm's first step) and the run length that would
    settle the question: detect the estimated r, or show it inside the equivalence band."""
    z_a = float(stats.norm.ppf(1 - cfg.alpha / (2 * max(family, 1))))
    z_eq = float(stats.norm.ppf(1 - cfg.alpha))
    se0, n = eq["se0_r"], eq["n"]  # at r = 0 the standard errors of r and of Fisher z agree
    pair["minimal_detectable_r"] = float(np.tanh((z_a + Z_POWER) * se0))
    r_hat = abs(pair["primary"]["r"] or 0.0)
    needs = []
    if r_hat > 0:
        needs.append(n * ((z_a + Z_POWER) * se0 / np.arctanh(min(r_hat, 0.999999))) ** 2)
    z_w, se_w = equiv["_worst"]
    gap = np.arctanh(cfg.equivalence_bound) - z_w
    if gap > 0:
        needs.append(n * ((z_eq + Z_POWER) * se_w / gap) ** 2)
    pair["run_length_to_settle_s"] = float(min(needs) * step_s) if needs else None


def _pair_verdict(pair: dict, family: int, step_s: float, cfg: Settings) -> None:
    """coupled / negligible / none / inconclusive / insufficient data, from the corrected tests, the
    smallest effect of interest and the equivalence test."""
    prim, lag = pair["primary"], pair["lag"]
    eq = pair.pop("_equivalence")
    if prim.get("status") == INSUFFICIENT and lag.get("status") == INSUFFICIENT:
        pair["coupled"], pair["strength"] = False, INSUFFICIENT
        pair["reason"] = "; ".join(dict.fromkeys(t.get("reason", "too few samples") for t in (prim, lag)))
        return
    found = [(abs(t[key]), t[key], t["ci"], name) for t, key, name in ((prim, "r", "lag 0"), (lag, "peak_r", "lagged"))
             if t.get("p_adjusted") is not None and t["p_adjusted"] < cfg.alpha]
    equiv = _equivalence(eq, cfg)
    pair["equivalence"] = {k: v for k, v in equiv.items() if not k.startswith("_")}
    if found:
        size, r, ci, test = max(found)
        pair["effect"] = {"r": r, "ci": ci, "test": test}
        if size < cfg.min_effect:
            pair["coupled"], pair["strength"] = False, "negligible"
        else:
            pair["coupled"], pair["strength"] = True, strength_from_ci(ci)
        return
    pair["coupled"] = False
    pair["strength"] = "none" if equiv["equivalent"] else "inconclusive"
    if not equiv["equivalent"]:
        _detectable(pair, eq, equiv, family, step_s, cfg)


def _correct(tests: list[dict]) -> None:
    """Holm over one family; each test dict gets its p_adjusted."""
    tests = [t for t in tests if t.get("p") is not None]
    for test, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
        test["p_adjusted"] = adjusted


class MaskedColumns(Mapping[str, np.ndarray]):
    """The table's columns with `rows` blanked (NaN), each made when it is asked for and not kept: two
    masked copies of a month of 1 s data, every column, would be 700 MB beside the table itself."""

    def __init__(self, columns: dict[str, np.ndarray], rows: np.ndarray) -> None:
        self._columns, self._rows = columns, rows

    def __getitem__(self, name: str) -> np.ndarray:
        return np.where(self._rows, np.nan, self._columns[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def analyse(table: T.Table, cfg: Settings) -> dict:
    """Every test on `table` (which starts at the run's first sample) without its start-up rows."""
    rng = np.random.default_rng(cfg.seed)
    step, n = table.step_s, table.n
    absent = np.full(n, np.nan)
    train = table.columns.get(T.GRAD_NORM, table.columns.get(T.LOSS, absent))
    excluded, resumes = startup_rows(train, step, cfg.warmup_s)
    first = int(np.argmax(~excluded)) if (~excluded).any() else n
    warmup = {"seconds": first * step, "rows_excluded": int(excluded.sum()), "resumes": resumes,
              "analysed_from_unix": table.start_s + first * step}
    cols = MaskedColumns(table.columns, excluded)
    # A pause is the trainer's own intervention: power, utilisation and throughput all drop at once. Its
    # rows (and the settling after it) are the positive control's, not evidence for either direction of
    # coupling: the pair, event, Granger and learning-rate tests leave them out.
    paused = pause_rows(cols.get(T.PAUSE), n, _steps(PAUSE_SETTLE_S, step))
    control_cols, cols = cols, MaskedColumns(table.columns, excluded | paused)
    # The naive numbers are what a naive look at the whole run gives, start-up included.
    pairs = []
    for pair in PAIRS:
        res = analyse_pair(cols.get(pair.x, absent), cols.get(pair.y, absent), (pair.x, pair.y), step, cfg, rng,
                           naive_xy=(table.columns.get(pair.x, absent), table.columns.get(pair.y, absent)))
        res["direction"] = pair.direction
        pairs.append(res)
    secondary: list[dict] = []

    ev: dict = {"status": INSUFFICIENT, "reason": "no collapse series"}
    collapsed = cols.get(T.COLLAPSED)  # each masked column is made once where it is used more than once
    if collapsed is not None and np.isfinite(collapsed).any():
        ev = events.spikes_vs_collapses(cols.get(T.GRAD_NORM, absent), collapsed, cfg.spike_z,
                                        _steps(cfg.event_window_s, step), cfg.n_surrogates, rng, step)
        ev["window_s"] = ev["window_steps"] * step
        for key in ("precursor", "trigger"):
            ev[key] = {"rate": ev.pop(f"{key}_rate"), "p": ev.pop(f"{key}_p"), "p_adjusted": None}
            secondary.append(ev[key])
        secondary.append(ev["point_biserial"])

    gr = []
    for pair in PAIRS:
        res = granger.granger_both_ways(cols.get(pair.x, absent), cols.get(pair.y, absent),
                                        min(cfg.granger_max_order, _steps(cfg.max_lag_s, step)), step)
        res.update(x=pair.x, y=pair.y, direction=pair.direction)
        secondary += [res[k] for k in ("x_to_y", "y_to_x") if res.get(k)]
        gr.append(res)

    pert = None
    bursts = cols.get(T.PERTURBATION)
    if bursts is not None and not is_constant(bursts):
        window = (_steps(cfg.perturbation_window_s, step) if cfg.perturbation_window_s
                  else perturbation.default_window(bursts))
        pert = {"window_s": window * step, "metrics": {}}
        for name in HARDWARE:
            res = perturbation.triggered_average(cols.get(name, absent), bursts, window, step)
            pert["metrics"][name] = res
            secondary.append(res)

    control = positive_control(control_cols, step, cfg)
    _correct(secondary)
    families = {}
    for direction in DIRECTIONS:
        mine = [p for p in pairs if p["direction"] == direction]
        tests = [t for p in mine for t in (p["primary"], p["lag"])]
        _correct(tests)
        families[direction] = sum(t.get("p") is not None for t in tests)
        for pair in mine:
            _pair_verdict(pair, families[direction], step, cfg)
    families["secondary"] = sum(t.get("p") is not None for t in secondary)
    families["positive_control"] = len(control.get("tests", {}))
    notes = [f"Holm correction in separate families: each direction's lag-0 and lagged tests "
             f"({', '.join(f'{d}: {families[d]}' for d in DIRECTIONS)}), the {families['secondary']} secondary "
             "tests (events, Granger, learning-rate bursts) and the positive control."]
    if max(families[d] for d in DIRECTIONS) / (cfg.n_surrogates + 1) >= cfg.alpha:
        notes.append(f"With {cfg.n_surrogates} Monte Carlo draws the lagged tests cannot reach alpha={cfg.alpha} "
                     "after correction: raise --surrogates.")
    if paused.any():
        notes.append(f"{int(paused.sum())} rows inside the trainer's pause bursts (and {PAUSE_SETTLE_S:g} s after "
                     "each) are the positive control's: the coupling, event, Granger and learning-rate tests leave "
                     "them out.")
    if first:
        notes.append(f"The run's first {first * step:g} s (start-up: the device leaving idle as the loss and "
                     "gradient norm plunge) are shown in the figures but left out of every test (--warmup).")
    if resumes:
        notes.append(f"The training series resumes {resumes} time(s) after a gap of {LONG_GAP_S:g} s or more "
                     "(a restart, a checkpoint or an evaluation); the start of each resumed stretch is left out "
                     "of the tests like the run's own start, and no window or lag reaches across a gap.")
    cost = throttle_cost(control_cols.get(T.THROUGHPUT, absent), control_cols.get(T.THROTTLED, absent),
                         control_cols.get(T.COLLAPSED, absent), paused.astype(float), step,
                         _steps(THROTTLE_BLOCK_S, step))
    return {"pairs": pairs, "events": ev, "granger": gr, "perturbation": pert, "positive_control": control,
            "throttle_cost": cost, "warmup": warmup, "notes": notes, "families": families}


def pause_rows(pause: np.ndarray | None, n: int, settle_rows: int) -> np.ndarray:
    """Rows inside a pause burst, the row before it and the `settle_rows` after its end (the device
    ramping back up)."""
    if pause is None:
        return np.zeros(n, dtype=bool)
    on = np.nan_to_num(pause) > 0.5
    after = np.concatenate(([False], on[:-1]))
    ends = np.flatnonzero(after & ~on)
    out = on.copy()
    out[:-1] |= on[1:]  # and the row before: the device starts ramping down within the row the pause begins
    for e in ends:
        out[e: e + settle_rows] = True
    return out


def positive_control(cols: Mapping[str, np.ndarray], step_s: float, cfg: Settings) -> dict:
    """The pause bursts' effect on utilisation, power and RLE: an effect known to exist. A "not coupled"
    is believable only where the same run shows the method finding it. Detected: significant after Holm
    over the three, and for utilisation and power downwards (an idle loop cannot raise them)."""
    pause = cols.get(T.PAUSE)
    if pause is None or is_constant(pause):
        return {"intervention": None, "detected": False,
                "reason": "this run has no compute intervention (pause bursts), so no positive control"}
    window = perturbation.default_window(pause)
    tests = {}
    for name in POSITIVE_CONTROL_METRICS:
        metric = cols.get(name)
        if metric is not None and np.isfinite(metric).any():
            tests[name] = perturbation.triggered_average(metric, pause, window, step_s)
    _correct(list(tests.values()))
    ran = {k: v for k, v in tests.items() if v.get("p_adjusted") is not None}
    if not ran:
        return {"intervention": "pause", "detected": False, "tests": tests,
                "reason": "too few pause onsets (or no utilisation, power or RLE series) to test"}
    # The metric reported: among those whose effect has the direction an idle loop can have (utilisation and
    # power down; RLE either way), the smallest Holm p, then the smallest raw p (Holm's step-down gives several
    # tests the same adjusted p), then the largest effect; a wrongly signed one only when none is right.
    def expected(kv: tuple[str, dict]) -> bool:
        return kv[0] == T.RLE or (kv[1]["effect"] or 0.0) < 0

    name, best = min(ran.items(), key=lambda kv: (not expected(kv), kv[1]["p_adjusted"], kv[1]["p"],
                                                   -abs(kv[1]["effect_sd_units"] or 0)))
    return {"intervention": "pause", "metric": name, "effect": best["effect"], "ci": best["ci"],
            "p_adjusted": best["p_adjusted"],
            "detected": bool(best["p_adjusted"] < cfg.alpha and expected((name, best))),
            "n_onsets": best["n_onsets"],
            "window_s": window * step_s, "tests": tests}
