"""Every test on one Table -> the statistical part of the report (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from thermograd.analysis import table as T
from thermograd.analysis.catalog import DIRECTIONS, PAIRS, SERIES
from thermograd.analysis.coupling.direction import lead
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.startup import (
    ABSENT_S,
    DEVICE_SETTLE_SERIES,
    SETTLE_SERIES,
    absent_rows,
    startup_rows,
)
from thermograd.analysis.coupling.verdict import pair_verdict, response_verdict
from thermograd.analysis.stats import correlation, events, granger, lagged, perturbation
from thermograd.analysis.stats.multiple import holm
from thermograd.analysis.stats.preprocess import (
    INSUFFICIENT,
    LONG_GAP_S,
    is_constant,
    stationary,
)
from thermograd.analysis.stats.spike_response import Events, SpikeResponse, spike_response, training_events
from thermograd.analysis.stats.throttle import throttle_cost

HARDWARE = (T.RLE, T.TEMPERATURE, T.POWER, T.A_LOAD)
# A pause idles the compute: a known effect on these, the positive control of every run that has pauses.
POSITIVE_CONTROL_METRICS = (T.UTILIZATION, T.POWER, T.RLE)
THROTTLE_BLOCK_S = 60.0
PAUSE_SETTLE_S = 2.0


SOURCE_OF = {s.column: s.source for s in SERIES}  # train or device
MEMO_MAX_ROWS = 1_000_000  # Granger's per-series transforms are shared between pairs up to this many rows


def _steps(seconds: float, step_s: float) -> int:
    return max(1, int(round(seconds / step_s)))


@dataclass
class PairInputs:
    """One pair's stationary series, its scan's range, and its circle with the circular sums made beforehand
    (None where the scan cannot run)."""

    dx: np.ndarray
    dy: np.ndarray
    requested: int
    max_lag: int
    prepared: tuple[lagged.Circle, lagged.CircularSums] | None = None


def pair_inputs(dx: np.ndarray, dy: np.ndarray, step_s: float, cfg: Settings) -> PairInputs:
    """A short run cannot support the full scan: narrow it so the largest lag still has 30 overlapping
    pairs (and say so: analyse_pair) rather than give no lagged answer at all."""
    requested = _steps(cfg.max_lag_s, step_s)
    fits = (int(np.sum(np.isfinite(dx) & np.isfinite(dy))) - lagged.MIN_OVERLAP) // 2
    return PairInputs(dx, dy, requested, min(requested, fits) if fits >= 1 else requested)


def prepared_pairs(cols: Mapping[str, np.ndarray], names: list[tuple[str, str]], rows: int, step_s: float,
                   cfg: Settings) -> Iterator[PairInputs]:
    """Every pair's inputs in order, their circular sums computed a group of pairs at a time
    (lagged.pair_groups): each series' differences and spectra are made once for all the pairs of a group
    that hold it, and dropped with the group."""
    absent = np.full(rows, np.nan)
    for group in lagged.pair_groups(names, rows):
        held = dict.fromkeys(name for i in group for name in names[i])
        diffs = {name: stationary(cols.get(name, absent), step_s) for name in held}
        inputs = [pair_inputs(diffs[names[i][0]], diffs[names[i][1]], step_s, cfg) for i in group]
        del diffs
        circles = [lagged.scan_circle(p.dx, p.dy, p.max_lag, names[i]) for i, p in zip(group, inputs, strict=True)]
        sums = iter(lagged.circular_sums([c for c in circles if c is not None]) if any(circles) else ())
        for pair, circle in zip(inputs, circles, strict=True):
            pair.prepared = None if circle is None else (circle, next(sums))
        del circles, sums, pair, circle
        while inputs:
            yield inputs.pop(0)  # handed over: the group keeps no reference to what the caller is done with


def analyse_pair(x: np.ndarray, y: np.ndarray, names: tuple[str, str], step_s: float, cfg: Settings,
                 rng: np.random.Generator, naive_xy: tuple[np.ndarray, np.ndarray] | None = None,
                 inputs: PairInputs | None = None) -> dict:
    """Naive (on `naive_xy`, default x and y), primary (lag 0) and lagged tests of one pair. `inputs`: the
    pair's stationary series and circular sums made beforehand (prepared_pairs), else made here."""
    if inputs is None:
        inputs = pair_inputs(stationary(x, step_s), stationary(y, step_s), step_s, cfg)
    requested, max_lag = inputs.requested, inputs.max_lag
    res = lagged.scan(inputs.dx, inputs.dy, max_lag, cfg.n_surrogates, rng, prepared=inputs.prepared)
    del inputs
    prim, lag = res["lag0"], res["lagged"]
    prim["method"] = correlation.PRIMARY_METHOD
    lag["max_lag_s"] = max_lag * step_s
    if max_lag < requested:
        lag["max_lag_note"] = (f"scan narrowed from +/-{requested * step_s:g} s to +/-{max_lag * step_s:g} s: "
                               f"the run is too short for the full range")
    lag["peak_lag_s"] = None if lag["peak_lag_steps"] is None else lag["peak_lag_steps"] * step_s
    if lag.get("lag_set_steps"):
        lag["lag_set_s"] = [k * step_s for k in lag["lag_set_steps"]]
    lag["lags_s"] = [k * step_s for k in range(-lag["max_lag_steps"], lag["max_lag_steps"] + 1)]
    return {"x": names[0], "y": names[1], "naive": correlation.naive(*(naive_xy or (x, y))),
            "primary": prim, "lag": lag, "coupled": False, "strength": None, "_equivalence": res["equivalence"]}


SPIKE_TRAINS = ((T.GRAD_NORM, T.GRAD_NORM_MAX), (T.LOSS, T.LOSS_MAX))  # each with its per-step largest value
RESPONSE_METRICS = (T.POWER, T.TEMPERATURE, T.UTILIZATION, T.SM_CLOCK, T.RLE)


def job_away_rows(table: T.Table, train: np.ndarray) -> np.ndarray:
    """The rows where the job is away (startup.absent_rows): left out of every test, with or without --warmup."""
    return absent_rows(np.isfinite(train), table.step_s, table.columns.get(T.STEP_DURATION))


def response_masks(table: T.Table, train: np.ndarray, away: np.ndarray, cfg: Settings
                   ) -> dict[str, np.ndarray]:
    """For each spike train, the rows its spike-triggered responses leave out: the start-up until the train's own
    series and the device (DEVICE_SETTLE_SERIES) have settled, the wind-downs, the job's absences and the pauses
    with their settling.

    A response compares each spike's window with the seconds just before it, so it needs the spikes' series and
    the device settled, not the other training series: in a 3-minute run the loss's early descent (a bend the
    run-wide start-up waits out, up to a third of the run) held back the first of its three gradient-norm spikes."""
    step = table.step_s
    paused = pause_rows(table.columns.get(T.PAUSE), table.n, _steps(PAUSE_SETTLE_S, step))
    out = {}
    for name, _ in SPIKE_TRAINS:
        own = tuple(table.columns[c] for c in (name, *DEVICE_SETTLE_SERIES) if c in table.columns)
        out[name] = startup_rows(train, step, cfg.warmup_s, own)[0] | paused | away
    return out


def spike_events(cols: Mapping[str, np.ndarray], name: str, peak: str, z_threshold: float) -> Events:
    """The spikes (and jumps) of a training series: from its largest step value per row where the table has it
    (a one-step spike is not diluted by the row's other steps), else from the series itself."""
    series = cols.get(peak)
    if series is None or not np.isfinite(series).any():
        series = cols.get(name)
    if series is None or not np.isfinite(series).any():
        return Events.none()
    return training_events(series, z_threshold)


def spike_responses(cols_of: Mapping[str, Mapping[str, np.ndarray]], step_s: float, cfg: Settings,
                    rng: np.random.Generator) -> list[dict]:
    """The spike-triggered response of every hardware metric to the gradient-norm and the loss spikes: tests of
    the optimizer -> hardware family. `cols_of[name]`: the columns with the rows that train's tests leave out
    blanked (response_masks)."""
    out = []
    for name, peak in SPIKE_TRAINS:
        cols = cols_of[name]
        spikes = spike_events(cols, name, peak, cfg.response_spike_z)
        for metric in RESPONSE_METRICS:
            values = cols.get(metric)
            if values is None or not np.isfinite(values).any():
                res = SpikeResponse(name, metric, reason=f"no {metric} series")
            else:
                res = spike_response(values, spikes, (name, metric), step_s, _steps(cfg.max_lag_s, step_s),
                                     cfg.n_surrogates, rng, cfg.response_bound_sd, cfg.alpha)
            out.append({**asdict(res), "direction": "optimizer_to_hardware"})
    return out


def _untested_because(tested: Mapping[str, np.ndarray], pair: dict) -> tuple[str, str] | None:
    """Why a pair could not be tested, where its series say it in the rows the tests use (`tested`: the start-up,
    pauses and the job's absences blanked), as (kind, words): "absent" (no value there), "constant_device" (a
    device series or state that never changes there: a GPU that never throttled, a clock that moves only in the
    pauses), "constant_training" (a training series that never changes: the question's own signal missing).
    None: too few rows (the scan's own reason says how many)."""
    names = (pair["x"], pair["y"])
    values = {name: tested.get(name) for name in names}
    missing = [name for name, v in values.items() if v is None or not np.isfinite(v).any()]
    if missing:
        return "absent", f"no {' or '.join(missing)} values in the rows tested (after the start-up, outside pauses)"
    constant = [name for name, v in values.items() if is_constant(v)]
    if constant:
        training = any(SOURCE_OF.get(name) == "train" for name in constant)
        return ("constant_training" if training else "constant_device",
                f"{' and '.join(constant)} never changes in the rows tested: there is nothing to correlate")
    return None


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
    settle = tuple(table.columns[c] for c in SETTLE_SERIES if c in table.columns)
    excluded, resumes = startup_rows(train, step, cfg.warmup_s, settle)
    first = int(np.argmax(~excluded)) if (~excluded).any() else n
    away = job_away_rows(table, train)
    warmup = {"seconds": first * step, "rows_excluded": int(excluded.sum()), "resumes": resumes,
              "rows_job_away": int(away.sum()), "analysed_from_unix": table.start_s + first * step}
    # A pause is the trainer's own intervention: power, utilisation and throughput all drop at once. Its
    # rows (and the settling after it) are the positive control's, not evidence for either direction of
    # coupling: the pair, event, Granger and learning-rate tests leave them out. Found on the whole table: a
    # pause's rows have no step, so a long one is also a stretch of the job away.
    paused = pause_rows(table.columns.get(T.PAUSE), n, _steps(PAUSE_SETTLE_S, step))
    cols = MaskedColumns(table.columns, excluded | away | paused)
    # The positive control keeps the start-up: its after-minus-before windows on the high-passed metric do not
    # read a warm-up's slow trend as an effect, and a warm-up's rising power and utilisation can only work
    # against the drop it looks for. Left out, a two-minute run from idle loses most of its pauses.
    control_cols = table.columns
    # The naive numbers are what a naive look at the whole run gives, start-up included.
    pairs = []
    ready = prepared_pairs(cols, [(pair.x, pair.y) for pair in PAIRS], n, step, cfg)
    for pair in PAIRS:
        # next(), not zip(): zip keeps its last tuple (and so the pair before) alive while it fetches the next,
        # and a month's pair holds 200 MB of series and sums while the next group's are made
        inputs = next(ready)
        res = analyse_pair(cols.get(pair.x, absent), cols.get(pair.y, absent), (pair.x, pair.y), step, cfg, rng,
                           naive_xy=(table.columns.get(pair.x, absent), table.columns.get(pair.y, absent)),
                           inputs=inputs)
        del inputs
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
    throttled = cols.get(T.THROTTLED)
    measured = throttled is not None and not is_constant(throttled)
    # the memo holds up to a series per hardware metric: at a month of 1 s rows (20 MB each) that would cost the
    # 1 GB memory bound, so a run that long transforms each series where a test needs it
    transforms = granger.Transforms(step) if n <= MEMO_MAX_ROWS else None
    # each series' transform is dropped after the last pair that uses it: a month holds ten of 20 MB each
    last_use = {name: i for i, pair in enumerate(PAIRS) for name in (pair.x, pair.y)}
    for i, pair in enumerate(PAIRS):
        given = (T.THROTTLED, throttled) if measured and T.THROTTLED not in (pair.x, pair.y) else None
        state = ((T.THROTTLED, (pair.x, pair.y).index(T.THROTTLED)) if measured and given is None
                 and T.THROTTLED in (pair.x, pair.y) else None)
        res = granger.granger_both_ways(cols.get(pair.x, absent), cols.get(pair.y, absent),
                                        min(cfg.granger_max_order, _steps(cfg.max_lag_s, step)), step, given, state,
                                        transforms, (pair.x, pair.y))
        res.update(x=pair.x, y=pair.y, direction=pair.direction)
        secondary += [res[k] for k in ("x_to_y", "y_to_x") if res.get(k)]
        secondary += [res["given"][k] for k in ("x_to_y", "y_to_x") if (res.get("given") or {}).get(k)]
        gr.append(res)
        for name in {pair.x, pair.y}:
            if transforms is not None and last_use[name] == i and name != T.THROTTLED:  # the state: every pair
                transforms.forget(name)
    del transforms

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
    responses = spike_responses({name: MaskedColumns(table.columns, mask) for name, mask in
                                 response_masks(table, train, away, cfg).items()}, step, cfg, rng)
    _correct(secondary)
    for res in gr:
        res["precedence"] = granger_precedence(res, cfg.alpha)
    families = {}
    for direction in DIRECTIONS:
        mine = [p for p in pairs if p["direction"] == direction]
        events_here = [r for r in responses if r["direction"] == direction]
        tests = [t for p in mine for t in (p["primary"], p["lag"])] + events_here
        _correct(tests)
        families[direction] = sum(t.get("p") is not None for t in tests)
        families[f"{direction}_spike_responses"] = sum(r.get("p") is not None for r in events_here)
        for pair in mine:
            pair_verdict(pair, families[direction], step, cfg)
            if pair["strength"] == INSUFFICIENT:  # the cause to name, not the scan's row count ("0 samples")
                pair["untested"], pair["reason"] = _untested_because(cols, pair) or ("too_few", pair.get("reason"))
            if pair["coupled"]:
                pair["lead"] = lead(pair, step).as_dict()
        for res in events_here:
            response_verdict(res, cfg)
    families["secondary"] = sum(t.get("p") is not None for t in secondary)
    families["positive_control"] = len(control.get("tests", {}))
    notes = [f"Holm correction in separate families: each direction's lag-0 and lagged tests and, for optimizer -> "
             f"hardware, the spike-triggered responses ({', '.join(f'{d}: {families[d]}' for d in DIRECTIONS)}), "
             f"the {families['secondary']} secondary tests (events, Granger, learning-rate bursts) and the positive "
             "control."]
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
    if away.any():
        notes.append(f"{int(away.sum()) * step:g} s without training steps ({ABSENT_S:g} s or more at a time, and "
                     "after the last step): the job was away (a restart, a checkpoint, an evaluation) and the device "
                     "idled because of it; the tests leave those rows out, so no window reads the device going idle "
                     "as the effect of what the training did just before.")
    cost = throttle_cost(control_cols.get(T.THROUGHPUT, absent), control_cols.get(T.THROTTLED, absent),
                         control_cols.get(T.COLLAPSED, absent), paused.astype(float), step,
                         _steps(THROTTLE_BLOCK_S, step))
    return {"pairs": pairs, "spike_responses": responses, "events": ev, "granger": gr, "perturbation": pert,
            "positive_control": control, "throttle_cost": cost, "warmup": warmup, "notes": notes,
            "families": families}


def granger_precedence(res: dict, alpha: float) -> list[dict]:
    """Each way one series significantly precedes the other (Holm p < alpha), whether the measured common
    cause explains it (the conditional test given it, or given the state's own level where the state is one of the
    pair, is not significant)."""
    out = []
    for key, (a, b) in (("x_to_y", (res["x"], res["y"])), ("y_to_x", (res["y"], res["x"]))):
        test = res.get(key) or {}
        if test.get("p_adjusted") is None or test["p_adjusted"] >= alpha:
            continue
        given = res.get("given") or {}
        cond = given.get(key) or {}
        explained = cond.get("p_adjusted") is not None and cond["p_adjusted"] >= alpha
        out.append({"precedes": a, "follows": b, "p_adjusted": test["p_adjusted"],
                    "given": given.get("series") if cond else None,
                    "conditioned_on": given.get("conditioned_on", "its past and present") if cond else None,
                    "p_adjusted_given": cond.get("p_adjusted"), "explained_by_common_cause": explained})
    return out


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
                "reason": ("no pause burst in this run (none scheduled, or it ended before the first: thermograd "
                           "run's default schedule starts at 40 s), so no positive control")}
    window = perturbation.default_window(pause, delayed=False, clear_rows=_steps(PAUSE_SETTLE_S, step_s) + 1)
    tests = {}
    for name in POSITIVE_CONTROL_METRICS:
        metric = cols.get(name)
        if metric is not None and np.isfinite(metric).any():
            tests[name] = perturbation.triggered_average(metric, pause, window, step_s)
    _correct(list(tests.values()))
    ran = {k: v for k, v in tests.items() if v.get("p_adjusted") is not None}
    if not ran:
        why = next((v["reason"] for v in tests.values() if v.get("reason")), None)
        return {"intervention": "pause", "detected": False, "tests": tests,
                "reason": (f"too few pause bursts to test: {why}; the default schedule (one ~every 2 min from "
                           "40 s) gives three outside the start-up from runs of about 7 minutes" if why else
                           "no utilisation, power or RLE series to test the pauses' effect on")}
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
