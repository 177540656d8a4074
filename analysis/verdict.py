"""The overall verdict and the plain-language summary (pure text from the results)."""

from __future__ import annotations

import numpy as np

from thermograd.analysis.catalog import DIRECTIONS
from thermograd.analysis.direction import lead_text
from thermograd.analysis.stats.series import INSUFFICIENT

_ORDER = {"strong": 3, "moderate": 2, "weak": 1}


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _fmt_r(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def _duration(seconds: float | None) -> str:
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
    data. `responses`: the spike-triggered responses (pipeline.spike_responses), tests of their direction."""
    mine = [p for p in pairs if p.get("direction", direction) == direction]
    events = [r for r in responses or [] if r.get("direction") == direction]
    verdict = _answer(mine, events, step_s)
    return {"direction": direction, "question": QUESTIONS.get(direction, direction), **verdict}


def verdicts(result: dict, step_s: float) -> dict[str, dict]:
    """Both directions' verdicts of one analysis result (pipeline.analyse)."""
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
    negligible = [p for p in tests if p["strength"] == "negligible"]
    if negligible:
        names = ", ".join(_test_name(p) for p in negligible)
        return {"coupled": False, "strength": "negligible",
                "summary": (f"Negligible: {names} move(s) together significantly, but by less than the smallest "
                            f"effect of interest (|r| < min-effect, or a response under a quarter of the metric's "
                            f"sd): reported, not called coupled.")}
    skipped = [_test_name(p) for p in tests if p["strength"] == INSUFFICIENT]
    ran = [r for r in responses if r["strength"] == "none"]
    bound = ran[0]["equivalence"]["bound_sd"] if ran else None
    return {"coupled": False, "strength": "none",
            "summary": ("Independent systems: for every pair an equivalence test shows |r| < 0.3 at every lag "
                        "scanned (the seed's band)"
                        + (f", every spike-triggered response is shown within +/-{bound:g} sd of its metric at every "
                           "window" if ran else "")
                        + ", and no test survives Holm correction"
                        + (f" ({', '.join(skipped)}: insufficient data)." if skipped else "."))}


def _test_name(test: dict) -> str:
    return f"{test['spikes']} spikes~{test['metric']}" if "spikes" in test else f"{test['x']}~{test['y']}"


def _inconclusive(pairs: list[dict], responses: list[dict]) -> str:
    """What the run could not show, and what would settle it: a longer run for the correlations, more spikes for
    the spike-triggered responses."""
    parts = []
    if pairs:
        longest = max(p.get("run_length_to_settle_s") or np.inf for p in pairs)
        mde = max(p.get("minimal_detectable_r") or 0.0 for p in pairs)
        parts.append(f"{', '.join(_test_name(p) for p in pairs)}: the equivalence test does not put |r| below 0.3. "
                     f"Couplings of |r| >= {mde:.2f} would have been detected with 80 % power; "
                     f"{_duration(longest)} of data would settle it")
    if responses:
        spikes = max(r.get("spikes_to_settle") or 0 for r in responses)
        longest = max(r.get("run_length_to_settle_s") or np.inf for r in responses)
        bound = responses[0]["equivalence"]["bound_sd"]
        parts.append(f"{', '.join(_test_name(r) for r in responses)}: the spike-triggered response is not shown "
                     f"within +/-{bound:g} sd of the metric at every window; about {spikes} spikes "
                     f"({_duration(longest)} at this run's spike rate) would settle it")
    return ("Inconclusive: no coupling was found, but this run cannot show independence either ("
            + "; ".join(parts) + ").")


def _pair_lines(pair: dict, alpha: float) -> list[str]:
    naive, prim, lag = pair["naive"], pair["primary"], pair["lag"]
    name = f"{pair['x']} vs {pair['y']}"
    if pair["strength"] == INSUFFICIENT:
        return [f"- {name}: insufficient data ({pair.get('reason', 'too few samples')})."]
    ci = prim.get("ci") or [None, None]
    lag_s = lag.get("peak_lag_s")
    lag_found = lag.get("p_adjusted") is not None and lag["p_adjusted"] < alpha
    lead = (f"; {lead_text(pair)}, so the effect runs {pair['lead']['runs']}" if pair.get("lead") else
            "" if not (lag_s and lag_found) else (f"; {pair['x']} leads by {lag_s:g} s" if lag_s > 0 else
                                                  f"; {pair['y']} leads by {-lag_s:g} s"))
    verdict = (f"COUPLED ({pair['strength']})" if pair["coupled"] else
               {"negligible": "negligible (significant, |r| below the smallest effect of interest)",
                "none": "none (equivalence shown: |r| < 0.3 at every lag)",
                "inconclusive": "inconclusive"}.get(pair["strength"], "not coupled"))
    lines = [f"- {name}: naive r = {_fmt_r(naive.get('pearson_r'))} (p = {_fmt_p(naive.get('p'))}, n = {naive['n']}); "
             f"primary r = {_fmt_r(prim.get('r'))} [95% CI {_fmt_r(ci[0])}, {_fmt_r(ci[1])}], "
             f"n_eff = {prim.get('n_eff') or 0:.0f}, Holm p = {_fmt_p(prim.get('p_adjusted'))}; "
             f"peak lagged r = {_fmt_r(lag.get('peak_r'))} at {lag_s if lag_s is not None else 'n/a'} s{lead}, "
             f"Holm p = {_fmt_p(lag.get('p_adjusted'))} -> {verdict}."]
    if pair["strength"] == "inconclusive":
        eq = pair.get("equivalence") or {}
        lines.append(f"  Not shown independent: |r| could be up to {eq.get('max_abs_r_upper', float('nan')):.2f} at some "
                     f"lag (equivalence p = {_fmt_p(eq.get('p'))}); the minimal detectable |r| at 80 % power is "
                     f"{pair.get('minimal_detectable_r', float('nan')):.2f}; "
                     f"{_duration(pair.get('run_length_to_settle_s'))} of data would settle it.")
    nr, np_ = naive.get("pearson_r"), naive.get("p")
    if not pair["coupled"] and nr is not None and np_ is not None and np_ < 0.05 and abs(nr) >= 0.3:
        band = "strong" if abs(nr) > 0.7 else "moderate"
        lines.append(f"  The naive number would have claimed a {band} coupling (|r| = {abs(nr):.2f}, p = {_fmt_p(np_)}). "
                     "It counts every sample as independent and correlates shared trends (the model learns while "
                     "the device warms); once the trends are differenced away and autocorrelation is allowed for, "
                     "no coupling of the step-to-step movements survives.")
    if lag.get("max_lag_note"):
        lines.append(f"  Lagged test: {lag['max_lag_note']}.")
    if pair.get("lead") and not pair["lead"]["answers_question"]:
        lines.append(f"  Not an answer to this direction's question: {pair['lead']['why']}.")
    if pair["coupled"] and nr is not None and abs(nr) < 0.3:
        lines.append("  The naive level correlation is small, but the step-to-step movements go together "
                     "(possibly with a delay), which the naive number cannot see.")
    return lines


UNITS = {"power": " W", "temperature": " C", "sm_clock": " Hz", "utilization": " (share busy)", "rle": ""}


def _response_lines(responses: list[dict]) -> list[str]:
    """One line per spike-triggered response: its effect in the metric's units, CI, lag window, spikes, verdict."""
    lines = []
    skipped: dict[tuple[str, str], list[str]] = {}
    for res in responses:
        if res["status"] != "ok":  # one line per spike series and reason, not one per metric
            skipped.setdefault((res["spikes"], str(res.get("reason"))), []).append(res["metric"])
    lines += [f"- {spikes} spikes -> {', '.join(metrics)}: insufficient data ({reason})."
              for (spikes, reason), metrics in skipped.items()]
    for res in responses:
        name = f"- {res['spikes']} spikes -> {res['metric']}"
        if res["status"] != "ok":
            continue
        lo, hi = res["lag_window_s"]
        unit = UNITS.get(res["metric"], "")
        eq = res.get("equivalence") or {}
        verdict = (f"COUPLED ({res['strength']})" if res["coupled"] else
                   {"negligible": f"negligible (significant, under {res.get('min_sd', 0.25):g} sd of the metric)",
                    "none": f"none (shown within +/-{eq.get('bound_sd', 1):g} sd at every window)",
                    "inconclusive": f"inconclusive (not shown within +/-{eq.get('bound_sd', 1):g} sd; about "
                                    f"{res.get('spikes_to_settle')} spikes would settle it)"}.get(res["strength"], ""))
        window = f"{lo:g} s" if lo == hi else f"{lo:g}-{hi:g} s"
        lines.append(f"{name}: {res['effect']:+.3g}{unit} [95% CI {res['ci'][0]:+.3g}, {res['ci'][1]:+.3g}] "
                     f"{window} after {res['n_spikes']} {res['train']} ({res['effect_sd_units'] or 0:+.2f} sd), "
                     f"Holm p = {_fmt_p(res.get('p_adjusted'))} -> {verdict}.")
    return lines


def _granger_lines(granger: list[dict]) -> list[str]:
    """The significant Granger results, labelled as precedence, with what a measured common cause explains."""
    lines = []
    for res in granger:
        for found in res.get("precedence") or []:
            line = (f"- precedence (Granger: the past of one helps predict the other; not cause): {found['precedes']} "
                    f"precedes {found['follows']} (Holm p = {_fmt_p(found['p_adjusted'])})")
            own_level = found.get("conditioned_on") == "its own level"
            if found["explained_by_common_cause"] and own_level:
                line += (f"; given {found['given']}'s own level it does not (Holm p = "
                         f"{_fmt_p(found['p_adjusted_given'])}): {found['follows']} moved {found['precedes']}, "
                         f"which therefore tells when it is on")
            elif found["explained_by_common_cause"]:
                line += (f"; given {found['given']} (a measured common cause) it does not (Holm p = "
                         f"{_fmt_p(found['p_adjusted_given'])}): {found['given']} explains both")
            elif found.get("p_adjusted_given") is not None:
                line += f"; still so given {found['given']} (Holm p = {_fmt_p(found['p_adjusted_given'])})"
            lines.append(line + ".")
    return lines


def _control_line(pc: dict | None) -> str:
    if not pc or pc.get("intervention") is None:
        return "Positive control: none: " + ((pc or {}).get("reason") or "this run has no compute intervention") + "."
    if pc.get("metric") is None:
        return f"Positive control: {pc.get('reason')}."
    found = "found" if pc["detected"] else "did NOT find"
    return (f"Positive control: the method {found} the pauses' effect on {pc['metric']} ({pc['effect']:+.3g}, "
            f"95% CI [{pc['ci'][0]:+.3g}, {pc['ci'][1]:+.3g}], Holm p = {_fmt_p(pc['p_adjusted'])}, "
            f"{pc['n_onsets']} pauses)" + ("" if pc["detected"] else ": a 'not coupled' in this run means little"))


def _cost_line(cost: dict | None) -> str:
    if not cost or cost.get("status") != "ok":
        return f"Throttle cost: not computed ({(cost or {}).get('reason', 'no training-speed series')})."
    if not cost["impaired_s"]:
        return "Throttle cost: none: the device was never throttled or collapsed while training."
    ci = cost.get("ci_tokens_lost") or [None, None]
    ci_text = "" if ci[0] is None else f" [95% CI {ci[0]:.3g}, {ci[1]:.3g}]"
    return (f"Throttle cost: {cost['tokens_lost']:.3g} tokens{ci_text} ({cost['seconds_lost']:.3g} s of training) lost "
            f"in {cost['impaired_s']:g} s throttled or collapsed: {cost['impaired_tokens_per_s']:.3g} vs "
            f"{cost['unimpaired_tokens_per_s']:.3g} tokens/s unthrottled.")


def summary_text(report: dict) -> str:
    verdicts = report.get("verdicts") or {"optimizer_to_hardware": report["verdict"]}
    # What was measured comes first: simulated or replayed hardware is named before any verdict.
    first = ((report.get("inputs") or {}).get("hardware") or {}).get("description")
    lines = [first] if first else []
    for direction, v in verdicts.items():
        lines.append(f"thermograd analysis, {direction.replace('_', ' ')} ({v.get('question', '')}): {v['summary']}")
    lines.append(_control_line(report.get("positive_control")))
    lines.append("")
    for direction in verdicts:
        mine = [p for p in report["pairs"] if p.get("direction", direction) == direction]
        if mine and all(p["strength"] == INSUFFICIENT for p in mine):
            lines.append(f"- {direction.replace('_', ' ')}: insufficient data for every pair "
                         f"({mine[0].get('reason', 'too few samples')}).")
            continue
        for pair in mine:
            lines += _pair_lines(pair, report["settings"]["alpha"])
    lines += _response_lines(report.get("spike_responses") or [])
    lines += _granger_lines(report.get("granger") or [])
    ev = report.get("events") or {}
    if ev.get("status") == "ok":
        lines.append(f"- spikes vs collapses: {ev['n_spikes']} spikes, {ev['n_collapses']} collapse onsets; "
                     f"trigger rate {ev['trigger']['rate']:.2f} (Holm p = {_fmt_p(ev['trigger']['p_adjusted'])}), "
                     f"precursor rate {ev['precursor']['rate']:.2f} (Holm p = {_fmt_p(ev['precursor']['p_adjusted'])}) "
                     f"within {ev['window_s']:g} s.")
    else:
        lines.append(f"- spikes vs collapses: {ev.get('status', INSUFFICIENT)} ({ev.get('reason', '')}).")
    pert = report.get("perturbation")
    if pert:
        for name, res in pert["metrics"].items():
            if res.get("status") == "ok":
                lines.append(f"- perturbation bursts -> {name}: change {res['effect']:+.3g} "
                             f"({res['n_onsets']} onsets, Holm p = {_fmt_p(res['p_adjusted'])}).")
    lines.append(_cost_line(report.get("throttle_cost")))
    lines += [f"Note: {note}" for note in report.get("notes", []) if "resolved to the step" not in note]
    lines.append(f"Lags are resolved to the {report['step']['seconds']:g} s step, never finer: Prometheus scrapes "
                 "each target at its own phase, so two targets' samples can be up to one interval apart.")
    return "\n".join(lines)
