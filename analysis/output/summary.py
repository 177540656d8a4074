"""The plain-language summary of a run's report, as the command prints it: pure text from report.json."""

from __future__ import annotations

import math

from thermograd.analysis.coupling.direction import lead_text
from thermograd.analysis.coupling.verdict import duration_text
from thermograd.analysis.output.report import lag_note
from thermograd.analysis.stats.preprocess import INSUFFICIENT


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _num(value: float | None, spec: str) -> str:
    """A number of report.json formatted, or n/a where the report holds none (report.json has null for NaN)."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _fmt_r(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def _pair_lines(pair: dict, settings: dict) -> list[str]:
    """A pair's line: the naive, lag-0 and lagged numbers and its verdict; `settings`: the run's (report.json's)."""
    alpha, moderate = settings["alpha"], settings.get("moderate_r", 0.3)  # reports from before the bands
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
                "none": f"none (equivalence shown: |r| < {(pair.get('equivalence') or {}).get('bound', 0.3):g} at "
                        "every lag)",
                "inconclusive": "inconclusive"}.get(pair["strength"], "not coupled"))
    lines = [f"- {name}: naive r = {_fmt_r(naive.get('pearson_r'))} (p = {_fmt_p(naive.get('p'))}, n = {naive['n']}); "
             f"primary r = {_fmt_r(prim.get('r'))} [95% CI {_fmt_r(ci[0])}, {_fmt_r(ci[1])}], "
             f"n_eff = {prim.get('n_eff') or 0:.0f}, Holm p = {_fmt_p(prim.get('p_adjusted'))}; "
             f"peak lagged r = {_fmt_r(lag.get('peak_r'))} at {lag_s if lag_s is not None else 'n/a'} s{lead}, "
             f"Holm p = {_fmt_p(lag.get('p_adjusted'))} -> {verdict}."]
    if pair["strength"] == "inconclusive":
        eq = pair.get("equivalence") or {}
        lines.append(f"  Not shown independent: |r| could be up to {_num(eq.get('max_abs_r_upper'), '.2f')} at some "
                     f"lag (equivalence p = {_fmt_p(eq.get('p'))}); the minimal detectable |r| at 80 % power is "
                     f"{_num(pair.get('minimal_detectable_r'), '.2f')}; "
                     f"{duration_text(pair.get('run_length_to_settle_s'))} of data would settle it.")
    nr, np_ = naive.get("pearson_r"), naive.get("p")
    if not pair["coupled"] and nr is not None and np_ is not None and np_ < alpha and abs(nr) >= moderate:
        band = "strong" if abs(nr) > settings.get("strong_r", 0.7) else "moderate"
        lines.append(f"  The naive number would have claimed a {band} coupling (|r| = {abs(nr):.2f}, "
                     f"p = {_fmt_p(np_)}). "
                     "It counts every sample as independent and correlates shared trends (the model learns while "
                     "the device warms); once the trends are differenced away and autocorrelation is allowed for, "
                     "no coupling of the step-to-step movements survives.")
    if lag.get("max_lag_note"):
        lines.append(f"  Lagged test: {lag['max_lag_note']}.")
    if pair.get("lead") and not pair["lead"]["answers_question"]:
        lines.append(f"  Not an answer to this direction's question: {pair['lead']['why']}.")
    if pair["coupled"] and nr is not None and abs(nr) < moderate:
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
        lines.append(f"{name}: {_num(res['effect'], '+.3g')}{unit} "
                     f"[95% CI {_num(res['ci'][0], '+.3g')}, {_num(res['ci'][1], '+.3g')}] "
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
    return (f"Positive control: the method {found} the pauses' effect on {pc['metric']} ({_num(pc['effect'], '+.3g')}, "
            f"95% CI [{_num(pc['ci'][0], '+.3g')}, {_num(pc['ci'][1], '+.3g')}], Holm p = {_fmt_p(pc['p_adjusted'])}, "
            f"{pc['n_onsets']} pauses)" + ("" if pc["detected"] else ": a 'not coupled' in this run means little"))


def _cost_line(cost: dict | None) -> str:
    if not cost or cost.get("status") != "ok":
        return f"Throttle cost: not computed ({(cost or {}).get('reason', 'no training-speed series')})."
    if not cost["impaired_s"]:
        return "Throttle cost: none: the device was never throttled or collapsed while training."
    ci = cost.get("ci_tokens_lost") or [None, None]
    ci_text = "" if ci[0] is None else f" [95% CI {_num(ci[0], '.3g')}, {_num(ci[1], '.3g')}]"
    return (f"Throttle cost: {_num(cost['tokens_lost'], '.3g')} tokens{ci_text} "
            f"({_num(cost['seconds_lost'], '.3g')} s of training) lost "
            f"in {cost['impaired_s']:g} s throttled or collapsed: {_num(cost['impaired_tokens_per_s'], '.3g')} vs "
            f"{_num(cost['unimpaired_tokens_per_s'], '.3g')} tokens/s unthrottled.")


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
            lines += _pair_lines(pair, report["settings"])
    lines += _response_lines(report.get("spike_responses") or [])
    lines += _granger_lines(report.get("granger") or [])
    ev = report.get("events") or {}
    if ev.get("status") == "ok":
        lines.append(f"- spikes vs collapses: {ev['n_spikes']} spikes, {ev['n_collapses']} collapse onsets; "
                     f"trigger rate {_num(ev['trigger']['rate'], '.2f')} "
                     f"(Holm p = {_fmt_p(ev['trigger']['p_adjusted'])}), "
                     f"precursor rate {_num(ev['precursor']['rate'], '.2f')} "
                     f"(Holm p = {_fmt_p(ev['precursor']['p_adjusted'])}) "
                     f"within {ev['window_s']:g} s.")
    else:
        lines.append(f"- spikes vs collapses: {ev.get('status', INSUFFICIENT)} ({ev.get('reason', '')}).")
    pert = report.get("perturbation")
    if pert:
        for name, res in pert["metrics"].items():
            if res.get("status") == "ok":
                lines.append(f"- perturbation bursts -> {name}: change {_num(res['effect'], '+.3g')} "
                             f"({res['n_onsets']} onsets, Holm p = {_fmt_p(res['p_adjusted'])}).")
    lines.append(_cost_line(report.get("throttle_cost")))
    lines += [f"Note: {note}" for note in report.get("notes", []) if "resolved to the step" not in note]
    lines.append(lag_note((report.get("inputs") or {}).get("source", ""), report["step"]["seconds"]))
    return "\n".join(lines)
