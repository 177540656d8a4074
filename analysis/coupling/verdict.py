"""Every verdict in one place: a pair's, a spike-triggered response's, a direction's and the pooled one over many
runs, each from the corrected tests and the thresholds of one Settings object (pure). The report's text is
output.summary's."""

from __future__ import annotations

import numpy as np
from scipy import stats

from thermograd.analysis.catalog import DIRECTIONS
from thermograd.analysis.coupling.direction import lead_text
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.stats.preprocess import INSUFFICIENT

_ORDER = {"strong": 3, "moderate": 2, "weak": 1}

POWER_FOR_MDE = 0.8
Z_POWER = float(stats.norm.ppf(POWER_FOR_MDE))


def strength_from_ci(ci: list[float], cfg: Settings) -> str:
    """The seed's bands (cfg.strong_r, cfg.moderate_r) applied to the CI's bound nearest zero: what the data
    show at least."""
    lo, hi = ci
    nearest = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
    return "strong" if nearest > cfg.strong_r else "moderate" if nearest > cfg.moderate_r else "weak"


def equivalence(eq: dict, cfg: Settings, df: float | None = None) -> tuple[dict, tuple[float, float]]:
    """TOST at every lag of the scan (an intersection-union test: no correction needed): |r| < bound is
    shown when every lag's (1 - 2 alpha) CI lies inside (-bound, bound); on a t with `df` degrees of freedom
    where the standard errors have them (a pooled estimate's Hartung-Knapp-Sidik-Jonkman one), else normal.
    Returns the test's result and the least settled lag's Fisher z and its standard error (detectable)."""
    z, se = np.abs(np.asarray(eq["z"])), np.asarray(eq["se_z"])
    bound_z = float(np.arctanh(cfg.equivalence_bound))
    dist = stats.norm if df is None else stats.t(df)
    z_crit = float(dist.ppf(1 - cfg.alpha))
    upper = np.tanh(z + z_crit * se)
    worst = int(np.argmax(upper))
    p_eq = float(np.max(dist.cdf((z - bound_z) / se)))
    return ({"bound": cfg.equivalence_bound, "alpha": cfg.alpha, "p": p_eq, "equivalent": p_eq < cfg.alpha,
             "max_abs_r_upper": float(upper[worst]),
             "method": f"TOST at every lag: each lag's {100 * (1 - 2 * cfg.alpha):g} % CI inside "
                       f"(-{cfg.equivalence_bound:g}, {cfg.equivalence_bound:g})"}, (float(z[worst]), float(se[worst])))


def detectable(pair: dict, eq: dict, worst: tuple[float, float], family: int, step_s: float, cfg: Settings
               ) -> None:
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
    z_w, se_w = worst
    gap = np.arctanh(cfg.equivalence_bound) - z_w
    if gap > 0:
        needs.append(n * ((z_eq + Z_POWER) * se_w / gap) ** 2)
    pair["run_length_to_settle_s"] = float(min(needs) * step_s) if needs else None


def pair_verdict(pair: dict, family: int, step_s: float, cfg: Settings) -> None:
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
    equiv, worst = equivalence(eq, cfg)
    pair["equivalence"] = equiv
    if found:
        size, r, ci, test = max(found)
        pair["effect"] = {"r": r, "ci": ci, "test": test}
        if size < cfg.min_effect:
            pair["coupled"], pair["strength"] = False, "negligible"
        else:
            pair["coupled"], pair["strength"] = True, strength_from_ci(ci, cfg)
        return
    pair["coupled"] = False
    pair["strength"] = "none" if equiv["equivalent"] else "inconclusive"
    if not equiv["equivalent"]:
        detectable(pair, eq, worst, family, step_s, cfg)


def strength_from_sd(ci: list[float], spread_ratio: float, cfg: Settings) -> str:
    """A response's band from its CI's bound nearest zero in standard deviations of the metric: above
    cfg.response_strong_sd strong, above cfg.response_moderate_sd moderate, else weak (what the data show at
    least)."""
    lo, hi = (v * spread_ratio for v in ci)
    nearest = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
    return ("strong" if nearest > cfg.response_strong_sd else "moderate" if nearest > cfg.response_moderate_sd
            else "weak")


def response_verdict(res: dict, cfg: Settings) -> None:
    """coupled / negligible / none / inconclusive / insufficient data for one spike-triggered response."""
    res["coupled"] = False
    if res["status"] != "ok":
        res["strength"] = INSUFFICIENT
        return
    sd_units = abs(res["effect_sd_units"] or 0.0)
    if res.get("p_adjusted") is not None and res["p_adjusted"] < cfg.alpha:
        ratio = sd_units / abs(res["effect"]) if res["effect"] else 0.0
        res["coupled"] = sd_units >= cfg.response_min_sd
        res["strength"] = strength_from_sd(res["ci"], ratio, cfg) if res["coupled"] else "negligible"
        return
    res["strength"] = "none" if res["equivalence"]["equivalent"] else "inconclusive"


def pooled_verdict(pooled: dict, p_adjusted: float, cfg: Settings) -> dict:
    """The single run's bands on the pooled r: coupled (strength from the CI's bound nearest zero) when the
    Holm-corrected pooled test is significant and |r| >= min_effect, negligible when it is significant but
    smaller, none when an equivalence test puts the pooled r inside +/-equivalence_bound, else inconclusive."""
    # the pooled se_z is Hartung-Knapp-Sidik-Jonkman's from two runs on: its interval is a t on k - 1 df, and so
    # is the equivalence test's (a normal one would show "none" where the reported CI reaches past the bound)
    df = pooled["q_df"] if pooled.get("hksj_scale") is not None else None
    equiv = equivalence({"z": [pooled["z"]], "se_z": [pooled["se_z"]]}, cfg, df)[0]
    equiv["method"] = (f"TOST on the pooled r: its {100 * (1 - 2 * cfg.alpha):g} % CI inside "
                       f"(-{cfg.equivalence_bound:g}, {cfg.equivalence_bound:g})"
                       + (f", t with {df} df (as its Hartung-Knapp-Sidik-Jonkman CI)" if df is not None else ""))
    if p_adjusted < cfg.alpha:
        if abs(pooled["r"]) < cfg.min_effect:
            coupled, strength = False, "negligible"
        else:
            coupled, strength = True, strength_from_ci(pooled["ci"], cfg)
    else:
        coupled, strength = False, "none" if equiv["equivalent"] else "inconclusive"
    return {"coupled": coupled, "strength": strength, "equivalence": equiv}



def duration_text(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "a much longer run"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"about {seconds / size:.0f} {unit}"
    return f"about {seconds:.0f} s"


QUESTIONS = {"optimizer_to_hardware": "does what the optimizer does show up in the hardware?",
             "hardware_to_training": "does the hardware's heat (clocks, temperature, power, throttling) slow training?"}


def overall(pairs: list[dict], step_s: float, direction: str = "optimizer_to_hardware",
            responses: list[dict] | None = None) -> dict:
    """One of the seed's answers for one direction of the run: coupled (with strength), negligible, none
    (independence shown by an equivalence test for every test of the family), inconclusive, or insufficient
    data. `responses`: the spike-triggered responses (coupling.analyse.spike_responses), tests of their direction."""
    mine = [p for p in pairs if p.get("direction", direction) == direction]
    events = [r for r in responses or [] if r.get("direction") == direction]
    verdict = _answer(mine, events, step_s)
    return {"direction": direction, "question": QUESTIONS.get(direction, direction), **verdict}


def verdicts(result: dict, step_s: float) -> dict[str, dict]:
    """Both directions' verdicts of one analysis result (coupling.analyse.analyse)."""
    return {d: overall(result["pairs"], step_s, d, result.get("spike_responses")) for d in DIRECTIONS}


def _answers_question(pair: dict) -> bool:
    return (pair.get("lead") or {}).get("answers_question", True)


def response_text(res: dict) -> str:
    """'grad_norm spikes -> power -38.2 [-45.1, -31.3] 3-7 s after 14 spikes' (the metric's units)."""
    lo, hi = res["lag_window_s"]
    window = f"{lo:g} s" if lo == hi else f"{lo:g}-{hi:g} s"
    return (f"{res['spikes']} spikes -> {res['metric']} {res['effect']:+.3g} [{res['ci'][0]:+.3g}, "
            f"{res['ci'][1]:+.3g}] {window} after {res['n_spikes']} spikes")


def _pair_name(pair: dict) -> str:
    lead = pair.get("lead")
    return f"{pair['x']}~{pair['y']}" + (f" ({lead_text(pair)})" if lead else "")


def _other_way(other: list[dict]) -> str:
    names = "; ".join(f"{_pair_name(p)}: {p['lead']['why']}" for p in other)
    return (f"{len(other)} coupling(s) found here do not answer this question: {names}. Which way each effect "
            f"runs: {', '.join(p['lead']['runs'] for p in other)}.")


def _answer(pairs: list[dict], responses: list[dict], step_s: float) -> dict:
    this_way = [p for p in pairs if p["coupled"] and _answers_question(p)]
    other = [p for p in pairs if p["coupled"] and not _answers_question(p)]
    found = [r for r in responses if r["coupled"]]
    effects = [{"pair": f"{p['x']}~{p['y']}", **p["lead"]} for p in [*this_way, *other] if p.get("lead")]
    effects += [{"pair": f"{r['spikes']} spikes~{r['metric']}", "leader": r["spikes"], "runs": "training -> hardware",
                 "answers_question": True, "lag_range_s": r["lag_window_s"], "why": "the response follows the spikes"}
                for r in found]
    if this_way or found:
        best = max([*this_way, *found], key=lambda p: _ORDER.get(p["strength"], 0))
        parts = []
        if this_way:
            parts.append(f"{', '.join(_pair_name(p) for p in this_way)} survive(s) Holm correction on stationary "
                         f"series with |r| of at least the smallest effect of interest")
        if found:
            parts.append("spike-triggered response(s) survive Holm correction: "
                         + "; ".join(response_text(r) for r in found))
        summary = (f"Coupled ({best['strength']}): {'; '.join(parts)}; lags are resolved to the {step_s:g} s step."
                   + (f" {_other_way(other)}" if other else ""))
        return {"coupled": True, "strength": best["strength"], "summary": summary, "effects": effects}
    if other:
        return {"coupled": False, "strength": "inconclusive", "effects": effects,
                "summary": (f"Not coupled this way: {_other_way(other)} No effect that runs this way was found, but "
                            "with these couplings present the run cannot show independence either.")}
    tests = [*pairs, *responses]
    informative = [p for p in tests if p["strength"] != INSUFFICIENT]
    if not informative:
        return {"coupled": False, "strength": INSUFFICIENT,
                "summary": "Insufficient data: every pair has too few samples or a constant series."}
    inconclusive = [p for p in pairs if p["strength"] == "inconclusive"]
    unsettled = [r for r in responses if r["strength"] == "inconclusive"]
    if inconclusive or unsettled:
        return {"coupled": False, "strength": "inconclusive", "summary": _inconclusive(inconclusive, unsettled)}
    # A pair the run could have answered but did not (a constant gradient norm: the question's own signal missing;
    # too few rows) is a question left open: the pairs that were tested cannot speak for it. A series the run
    # never measured (a CSV without clock columns), or a device state never set (a GPU that never throttled),
    # leaves its pairs out of the claim, said by name.
    untested = [p for p in pairs if p["strength"] == INSUFFICIENT
                and p.get("untested", "too_few") in ("too_few", "constant_training")]
    if untested and any(p["strength"] != INSUFFICIENT for p in pairs):
        names = "; ".join(f"{_test_name(p)} ({p.get('reason', 'too few samples')})" for p in untested)
        return {"coupled": False, "strength": "inconclusive",
                "summary": (f"Inconclusive: no coupling was found, but {names} could not be tested, so independence "
                            "is not claimed.")}
    negligible = [p for p in tests if p["strength"] == "negligible"]
    if negligible:
        names = ", ".join(_test_name(p) for p in negligible)
        return {"coupled": False, "strength": "negligible",
                "summary": (f"Negligible: {names} move(s) together significantly, but by less than the smallest "
                            f"effect of interest (|r| < min-effect, or a response under a quarter of the metric's "
                            f"sd): reported, not called coupled.")}
    skipped = [_test_name(p) for p in responses if p["strength"] == INSUFFICIENT]
    unmeasured = [f"{_test_name(p)} ({p.get('reason')})" for p in pairs if p["strength"] == INSUFFICIENT]
    ran = [r for r in responses if r["strength"] == "none"]
    bound = ran[0]["equivalence"]["bound_sd"] if ran else None
    tested = [p for p in pairs if p.get("equivalence")]
    shown = ([f"for every pair tested an equivalence test shows |r| < {_bound(tested):g} at every lag scanned (the "
              "seed's band)"] if tested else [])
    shown += ([f"every spike-triggered response is shown within +/-{bound:g} sd of its metric at every window"]
              if ran else [])
    return {"coupled": False, "strength": "none",
            "summary": ("Independent systems: " + ", and ".join(shown)
                        + ", and no test survives Holm correction"
                        + (f" ({', '.join(skipped)}: insufficient data)" if skipped else "")
                        + (f"; not part of the claim: {'; '.join(unmeasured)}."
                           if unmeasured else "."))}


def _bound(pairs: list[dict]) -> float:
    """The equivalence bound the pairs were tested against (Settings.equivalence_bound); every pair given here
    has its equivalence test."""
    return next(p["equivalence"]["bound"] for p in pairs if p.get("equivalence"))


def _test_name(test: dict) -> str:
    return f"{test['spikes']} spikes~{test['metric']}" if "spikes" in test else f"{test['x']}~{test['y']}"


def _inconclusive(pairs: list[dict], responses: list[dict]) -> str:
    """What the run could not show, and what would settle it: a longer run for the correlations, more spikes for
    the spike-triggered responses."""
    parts = []
    if pairs:
        longest = max(p.get("run_length_to_settle_s") or np.inf for p in pairs)
        mde = max(p.get("minimal_detectable_r") or 0.0 for p in pairs)
        parts.append(f"{', '.join(_test_name(p) for p in pairs)}: the equivalence test does not put |r| below "
                     f"{_bound(pairs):g}. Couplings of |r| >= {mde:.2f} would have been detected with 80 % power; "
                     f"{duration_text(longest)} of data would settle it")
    if responses:
        spikes = max(r.get("spikes_to_settle") or 0 for r in responses)
        longest = max(r.get("run_length_to_settle_s") or np.inf for r in responses)
        bound = responses[0]["equivalence"]["bound_sd"]
        parts.append(f"{', '.join(_test_name(r) for r in responses)}: the spike-triggered response is not shown "
                     f"within +/-{bound:g} sd of the metric at every window; about {spikes} spikes "
                     f"({duration_text(longest)} at this run's spike rate) would settle it")
    return ("Inconclusive: no coupling was found, but this run cannot show independence either ("
            + "; ".join(parts) + ").")


