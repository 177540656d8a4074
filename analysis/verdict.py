"""The overall verdict and the plain-language summary (pure text from the results)."""

from __future__ import annotations

import numpy as np

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


def overall(pairs: list[dict], step_s: float, direction: str = "optimizer_to_hardware") -> dict:
    """One of the seed's answers for one direction of the run: coupled (with strength), negligible, none
    (independence shown by an equivalence test), inconclusive, or insufficient data."""
    verdict = _answer([p for p in pairs if p.get("direction", direction) == direction], step_s)
    return {"direction": direction, "question": QUESTIONS.get(direction, direction), **verdict}


def _answer(pairs: list[dict], step_s: float) -> dict:
    coupled = [p for p in pairs if p["coupled"]]
    if coupled:
        best = max(coupled, key=lambda p: _ORDER.get(p["strength"], 0))
        names = ", ".join(f"{p['x']}~{p['y']}" for p in coupled)
        summary = (f"Coupled ({best['strength']}): {names} survive(s) Holm correction on stationary series "
                   f"with |r| of at least the smallest effect of interest; lags are resolved to the {step_s:g} s step.")
        return {"coupled": True, "strength": best["strength"], "summary": summary}
    informative = [p for p in pairs if p["strength"] != INSUFFICIENT]
    if not informative:
        return {"coupled": False, "strength": INSUFFICIENT,
                "summary": "Insufficient data: every pair has too few samples or a constant series."}
    inconclusive = [p for p in informative if p["strength"] == "inconclusive"]
    if inconclusive:
        longest = max(p.get("run_length_to_settle_s") or np.inf for p in inconclusive)
        mde = max(p.get("minimal_detectable_r") or 0.0 for p in inconclusive)
        names = ", ".join(f"{p['x']}~{p['y']}" for p in inconclusive)
        return {"coupled": False, "strength": "inconclusive",
                "summary": (f"Inconclusive: no coupling was found, but this run cannot show independence either "
                            f"({names}: the equivalence test does not put |r| below 0.3). Couplings of |r| >= "
                            f"{mde:.2f} would have been detected with 80 % power; {_duration(longest)} of data "
                            f"would settle it.")}
    negligible = [p for p in informative if p["strength"] == "negligible"]
    if negligible:
        names = ", ".join(f"{p['x']}~{p['y']}" for p in negligible)
        return {"coupled": False, "strength": "negligible",
                "summary": (f"Negligible: {names} move(s) together significantly, but by less than the smallest "
                            f"effect of interest (|r| < min-effect): reported, not called coupled.")}
    skipped = [f"{p['x']}~{p['y']}" for p in pairs if p["strength"] == INSUFFICIENT]
    return {"coupled": False, "strength": "none",
            "summary": ("Independent systems: for every pair an equivalence test shows |r| < 0.3 at every lag "
                        "scanned (the seed's band), and no test survives Holm correction"
                        + (f" ({', '.join(skipped)}: insufficient data)." if skipped else "."))}


def _pair_lines(pair: dict, alpha: float) -> list[str]:
    naive, prim, lag = pair["naive"], pair["primary"], pair["lag"]
    name = f"{pair['x']} vs {pair['y']}"
    if pair["strength"] == INSUFFICIENT:
        return [f"- {name}: insufficient data ({pair.get('reason', 'too few samples')})."]
    ci = prim.get("ci") or [None, None]
    lag_s = lag.get("peak_lag_s")
    lag_found = lag.get("p_adjusted") is not None and lag["p_adjusted"] < alpha
    lead = "" if not (lag_s and lag_found) else (f"; {pair['x']} leads by {lag_s:g} s" if lag_s > 0 else
                                                 f"; {pair['y']} leads by {-lag_s:g} s")
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
    if pair["coupled"] and nr is not None and abs(nr) < 0.3:
        lines.append("  The naive level correlation is small, but the step-to-step movements go together "
                     "(possibly with a delay), which the naive number cannot see.")
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
    lines = []
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
