"""The overall verdict and the plain-language summary (pure text from the results)."""

from __future__ import annotations

from analysis.stats.series import INSUFFICIENT

_ORDER = {"strong": 3, "moderate": 2, "weak": 1}


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _fmt_r(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def overall(pairs: list[dict], step_s: float) -> dict:
    coupled = [p for p in pairs if p["coupled"]]
    if coupled:
        best = max(coupled, key=lambda p: _ORDER.get(p["strength"], 0))
        names = ", ".join(f"{p['x']}~{p['y']}" for p in coupled)
        summary = (f"Coupled ({best['strength']}): {names} survive(s) Holm correction on stationary series; "
                   f"lags are resolved to the {step_s:g} s step.")
        return {"coupled": True, "strength": best["strength"], "summary": summary}
    if all(p["strength"] == INSUFFICIENT for p in pairs):
        return {"coupled": False, "strength": INSUFFICIENT,
                "summary": "Insufficient data: every pair has an effective sample size below 30 or a constant series."}
    return {"coupled": False, "strength": "none",
            "summary": "No evidence of coupling: no pair's lag-0 or lagged test on stationary series survives "
                       "Holm correction."}


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
    lines = [f"- {name}: naive r = {_fmt_r(naive.get('pearson_r'))} (p = {_fmt_p(naive.get('p'))}, n = {naive['n']}); "
             f"primary r = {_fmt_r(prim.get('r'))} [95% CI {_fmt_r(ci[0])}, {_fmt_r(ci[1])}], "
             f"n_eff = {prim.get('n_eff') or 0:.0f}, Holm p = {_fmt_p(prim.get('p_adjusted'))}; "
             f"peak lagged r = {_fmt_r(lag.get('peak_r'))} at {lag_s if lag_s is not None else 'n/a'} s{lead}, "
             f"Holm p = {_fmt_p(lag.get('p_adjusted'))} -> "
             f"{'COUPLED (' + pair['strength'] + ')' if pair['coupled'] else 'not coupled'}."]
    nr, np_ = naive.get("pearson_r"), naive.get("p")
    if not pair["coupled"] and nr is not None and np_ is not None and np_ < 0.05 and abs(nr) >= 0.3:
        band = "strong" if abs(nr) > 0.7 else "moderate"
        lines.append(f"  The naive number would have claimed a {band} coupling (|r| = {abs(nr):.2f}, p = {_fmt_p(np_)}). "
                     "It counts every sample as independent and correlates shared trends (the model learns while "
                     "the device warms); once the trends are differenced away and autocorrelation is allowed for, "
                     "the step-to-step movements do not go together.")
    if lag.get("max_lag_note"):
        lines.append(f"  Lagged test: {lag['max_lag_note']}.")
    if pair["coupled"] and nr is not None and abs(nr) < 0.3:
        lines.append("  The naive level correlation is small, but the step-to-step movements go together "
                     "(possibly with a delay), which the naive number cannot see.")
    return lines


def summary_text(report: dict) -> str:
    v = report["verdict"]
    lines = [f"thermograd analysis: {v['summary']}", ""]
    for pair in report["pairs"]:
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
    lines += [f"Note: {note}" for note in report.get("notes", []) if "resolved to the step" not in note]
    lines.append(f"Lags are resolved to the {report['step']['seconds']:g} s step, never finer: Prometheus scrapes "
                 "each target at its own phase, so two targets' samples can be up to one interval apart.")
    return "\n".join(lines)
