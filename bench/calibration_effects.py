"""The planted effects of bench_calibration.py (issue 16): spike-triggered responses, spike-carried lagged
couplings, couplings whose direction matters, and the throttle cost's coverage on drifting loaders.

Each job runs one recording of testkit/scenario_effects.py through the offline alignment and the whole
`analyse()`, and reports what the verdicts made of it:

- spike effects (drops and rises of power after each gradient-norm spike; 3-minute runs where power follows
  the gradient norm, the coupling carried by three spikes or jumps): detected (the optimizer -> hardware
  verdict coupled) with the right sign and lag (a spike-triggered response of power with the planted sign
  whose window overlaps the planted one within a step, or the grad_norm~power pair with its peak lag within a
  step); never `none`. Goal: >= 90 % right.
- throughput leads power (a stalled data loader idles the device): the hardware -> training verdict never
  coupled (the device does not slow the job). Goal: 0 %.
- throttling that slows the steps (x1.25) and raises the temperature, a measured common cause: hardware ->
  training coupled through a clock or throttle pair at lag 0 or 1 with the hardware leading or simultaneous
  (goal >= 90 %); Granger precedences of a training series before a device series, and whether conditioning
  on the throttle state explains them.
"""

from __future__ import annotations

import numpy as np

from testkit.scenario_effects import (
    common_cause_run,
    spike_lagged_run,
    spike_response_run,
    throughput_leads_run,
)
from thermograd.analysis.coupling.analyse import analyse
from thermograd.analysis.coupling.direction import HARDWARE_TO_TRAINING, SIMULTANEOUS
from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.coupling.verdict import verdicts
from thermograd.analysis.files.grid import files_to_table

SPIKE_EFFECTS = {  # name: (recording maker, run length s)
    "power_drop_40w": (lambda seed: spike_response_run(600, seed, -40.0), 600),
    "power_drop_20w": (lambda seed: spike_response_run(600, seed, -20.0), 600),
    "power_rise_40w": (lambda seed: spike_response_run(600, seed, 40.0), 600),
    "power_rise_20w": (lambda seed: spike_response_run(600, seed, 20.0), 600),
    "lagged_3_spikes_180s": (lambda seed: spike_lagged_run(180, seed, "pulse"), 180),
    "lagged_3_jumps_180s": (lambda seed: spike_lagged_run(180, seed, "jump"), 180),
}
DIRECTION_KINDS = {
    "throughput_leads_power": (lambda seed: throughput_leads_run(900, seed), 900),
    "throttle_slows_steps": (lambda seed: common_cause_run(600, seed), 600),
}
EFFECT_GOAL = 0.9
TRAINING = ("step_duration", "throughput", "grad_norm", "loss")


def _analyse(rec, seed: int, n_surrogates: int) -> tuple[dict, dict]:
    table = files_to_table(rec.train, rec.hardware).trimmed(["grad_norm", "loss"])
    result = analyse(table, Settings(n_surrogates=n_surrogates, seed=seed))
    return result, verdicts(result, table.step_s)


def right_response(result: dict, planted: dict, step_s: float = 1.0) -> bool:
    """A coupled spike-triggered response of the planted metric with the planted sign, whose window overlaps the
    planted one within a step."""
    lo, hi = planted["window_s"]
    sign = np.sign(planted.get("effect_w", 1.0))
    return any(r["coupled"] and r["metric"] == planted["y"] and np.sign(r["effect"]) == sign
               and r["lag_window_s"][0] <= hi + step_s and r["lag_window_s"][1] >= lo - step_s
               for r in result["spike_responses"])


def right_pair(result: dict, planted: dict, step_s: float = 1.0) -> bool:
    """The planted pair coupled with its peak lag within a step of the planted lag, positive r."""
    if "lag_s" not in planted:
        return False
    pair = next(p for p in result["pairs"] if (p["x"], p["y"]) == (planted["x"], planted["y"]))
    lag = pair["lag"].get("peak_lag_s")
    return bool(pair["coupled"] and lag is not None and abs(lag - planted["lag_s"]) <= step_s
                and (pair["lag"].get("peak_r") or 0) > 0)


def effect_job(args: tuple[str, int, int]) -> dict:
    name, seed, n_surr = args
    rec = SPIKE_EFFECTS[name][0](seed)
    result, v = _analyse(rec, seed, n_surr)
    verdict = v["optimizer_to_hardware"]
    by_response, by_pair = right_response(result, rec.planted), right_pair(result, rec.planted)
    return {"effect": name, "detected": bool(verdict["coupled"]), "by_response": by_response, "by_pair": by_pair,
            "right": bool(verdict["coupled"] and (by_response or by_pair)), "none": verdict["strength"] == "none"}


def _hardware_first(pair: dict) -> bool:
    lead = pair.get("lead") or {}
    return lead.get("runs") in (HARDWARE_TO_TRAINING, SIMULTANEOUS) and lead.get("answers_question", False)


def direction_job(args: tuple[str, int, int]) -> dict:
    name, seed, n_surr = args
    result, v = _analyse(DIRECTION_KINDS[name][0](seed), seed, n_surr)
    hw = v["hardware_to_training"]
    coupled = [p for p in result["pairs"] if p["coupled"] and p["direction"] == "hardware_to_training"]
    at_lag_0 = [p for p in coupled if p["x"] in ("sm_clock", "throttled") and _hardware_first(p)
                and min(abs(v) for v in (p["lead"].get("lag_range_s") or [99])) <= 1]
    training_first = [p for p in coupled if (p.get("lead") or {}).get("runs") != HARDWARE_TO_TRAINING]
    precedences = [f for g in result["granger"] for f in g.get("precedence") or []
                   if f["precedes"] in TRAINING and f["follows"] not in TRAINING]
    return {"kind": name, "hardware_slows_training": bool(hw["coupled"]),
            "throttle_found_at_lag_0": bool(hw["coupled"] and at_lag_0),
            "other_way_reported": bool(training_first),
            "training_precedes_device": len(precedences),
            "explained_by_common_cause": sum(f["explained_by_common_cause"] for f in precedences),
            "reported_without_caveat": sum(not f["explained_by_common_cause"] and f.get("given") is None
                                           for f in precedences)}


def _share(rows: list[dict], key: str) -> float:
    return round(sum(bool(r[key]) for r in rows) / len(rows), 3) if rows else 0.0


def summarise_effects(rows: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["effect"] for r in rows):
        mine = [r for r in rows if r["effect"] == name]
        out[name] = {"runs": len(mine), "detected": _share(mine, "detected"),
                     "right_sign_and_lag": _share(mine, "right"),
                     "by_spike_response": _share(mine, "by_response"), "by_pair": _share(mine, "by_pair"),
                     "called_none": _share(mine, "none"),
                     "within_goal": _share(mine, "right") >= EFFECT_GOAL and not any(r["none"] for r in mine)}
    return out


def summarise_directions(rows: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == name]
        found = sum(r["training_precedes_device"] for r in mine)
        out[name] = {"runs": len(mine), "hardware_slows_training": _share(mine, "hardware_slows_training"),
                     "throttle_found_at_lag_0": _share(mine, "throttle_found_at_lag_0"),
                     "training_leads_or_same_step_reported": _share(mine, "other_way_reported"),
                     "granger_training_precedes_device": found,
                     "of_which_explained_by_throttled": sum(r["explained_by_common_cause"] for r in mine),
                     "of_which_without_caveat": sum(r["reported_without_caveat"] for r in mine)}
        out[name]["within_goal"] = (out[name]["hardware_slows_training"] == 0 if name == "throughput_leads_power"
                                    else out[name]["throttle_found_at_lag_0"] >= EFFECT_GOAL)
    return out


def summarise_coverage(rows: list[dict]) -> dict:
    """The throttle cost's 95 % CI on the drifting-loader nulls (nothing is lost: the truth is 0), by the drift's
    time constant."""
    mine = [r for r in rows if r.get("cost_covered") is not None]
    out = {}
    for lo, hi in ((10, 30), (30, 100), (100, 300.1)):
        band = [r for r in mine if lo <= r["tau_s"] < hi]
        z = np.array([r["cost_z"] for r in band if r["cost_z"] is not None])
        out[f"tau_{lo:g}_{hi:.0f}s"] = {"runs": len(band), "coverage": _share(band, "cost_covered"),
                                        "sd_standardised_error": round(float(z.std()), 3) if z.size > 1 else None}
    out["all"] = {"runs": len(mine), "coverage": _share(mine, "cost_covered"), "goal_min": 0.93}
    return out


def cost_coverage(result: dict) -> tuple[bool | None, float | None]:
    """(CI covers 0, estimate / its standard error) of a run where nothing is lost to throttling."""
    cost = result["throttle_cost"]
    ci = cost.get("ci_tokens_lost")
    if cost.get("status") != "ok" or not ci or not cost.get("impaired_s"):
        return None, None
    half = (ci[1] - ci[0]) / 2
    return bool(ci[0] <= 0 <= ci[1]), (float(cost["tokens_lost"] / (half / 1.96)) if half > 0 else None)
