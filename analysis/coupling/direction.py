"""Which way a coupling runs: the leader from the lag scan (with its uncertainty), and whether the effect
answers its direction's question.

A pair's direction in pairs.csv names the question it serves, not the way its effect runs: power and
throughput move together whether the device slows the job or the job's data-loader stalls idle the device.
The lag scan tells the two apart. Its confidence set for the peak lag (lagged.lag_confidence_set: the lags
the data cannot tell from the peak) puts a leader on the side of zero where the whole set lies; a set that
holds zero is "simultaneous". An effect answers

- optimizer -> hardware when the training series leads or the two move in the same step (a one-step spike
  can raise power within the step), not when the hardware leads;
- hardware -> training when the hardware leads, or when the two move in the same step and the hardware
  series is a state the training cannot set within a step (HARDWARE_STATES: throttle and clock-event flags,
  clocks). A power or utilisation change in the same step as a slower step is what a stalled data loader
  makes (the device idles while the job waits): it says nothing about the device slowing the job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from thermograd.analysis import table as T

HARDWARE_STATES = (T.THROTTLED, T.SM_CLOCK)
TRAINING_TO_HARDWARE = "training -> hardware"
HARDWARE_TO_TRAINING = "hardware -> training"
SIMULTANEOUS = "simultaneous"


@dataclass(frozen=True)
class Lead:
    """Which series of a pair leads, by how much, and which way the effect runs."""

    leader: str | None              # the series that leads; None: simultaneous within the uncertainty
    lag_s: float | None             # the scan's peak lag (positive: x leads y)
    lag_range_s: list[float] | None  # the lags the data cannot tell from the peak (Hsu's set): lowest, highest
    runs: str                       # TRAINING_TO_HARDWARE, HARDWARE_TO_TRAINING or SIMULTANEOUS
    answers_question: bool          # the effect is one its direction's question asks about
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def training_series(pair: dict) -> str:
    """The pair's training-side series: x for optimizer -> hardware, y for hardware -> training."""
    return pair["y"] if pair.get("direction") == "hardware_to_training" else pair["x"]


def leader_of(lag_set_steps: list[int] | None, x: str, y: str) -> str | None:
    """x when every lag in the set is positive, y when every one is negative, else None (simultaneous)."""
    if not lag_set_steps:
        return None
    if min(lag_set_steps) > 0:
        return x
    if max(lag_set_steps) < 0:
        return y
    return None


def lead(pair: dict, step_s: float) -> Lead:
    """The lead of a coupled pair and the way its effect runs (see the module's docstring)."""
    lag = pair.get("lag") or {}
    steps = lag.get("lag_set_steps") if lag.get("status") == "ok" else None
    found_at = (pair.get("effect") or {}).get("test")
    if found_at == "lag 0" and not steps:
        steps = [0]
    leader = leader_of(steps, pair["x"], pair["y"])
    training = training_series(pair)
    hardware = pair["x"] if training == pair["y"] else pair["y"]
    runs = (SIMULTANEOUS if leader is None else TRAINING_TO_HARDWARE if leader == training
            else HARDWARE_TO_TRAINING)
    lag_range = None if not steps else [min(steps) * step_s, max(steps) * step_s]
    if pair.get("direction") == "hardware_to_training":
        answers = runs == HARDWARE_TO_TRAINING or (runs == SIMULTANEOUS and hardware in HARDWARE_STATES)
        why = ("the hardware leads" if runs == HARDWARE_TO_TRAINING else
               f"same step, and {hardware} is a state the training cannot set within a step" if answers else
               f"{training} leads: the training drives the device (e.g. a data-loader stall idles it), not the "
               "device the training" if runs == TRAINING_TO_HARDWARE else
               f"same step, and {hardware} is something the training itself moves within a step (a stalled step "
               "idles the device): no sign of the device slowing the training")
    else:
        answers = runs != HARDWARE_TO_TRAINING
        why = (f"{training} leads" if runs == TRAINING_TO_HARDWARE else "same step" if answers else
               f"{hardware} leads: not an effect of the optimizer on the device")
    return Lead(leader, lag.get("peak_lag_s"), lag_range, runs, answers, why)


def lead_text(pair: dict) -> str:
    """'power leads step_duration by 1-2 s' / 'simultaneous (lags -1..1 s)' for the summary."""
    info = pair.get("lead") or {}
    lo, hi = info.get("lag_range_s") or (None, None)
    if info.get("leader") is None:
        return "simultaneous" + ("" if lo is None or lo == hi else f" (lags {lo:g}..{hi:g} s cannot be told apart)")
    follower = pair["y"] if info["leader"] == pair["x"] else pair["x"]
    lo, hi = sorted((abs(lo), abs(hi)))
    span = f"{lo:g} s" if lo == hi else f"{lo:g}-{hi:g} s"
    return f"{info['leader']} leads {follower} by {span}"
