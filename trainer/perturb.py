"""Perturbation bursts for causal experiments: grammar and (seeded) schedule.

Two kinds: `kind=lr` (the default) multiplies the learning rate by `lr_mult` during a burst;
`kind=pause` makes the training loop idle for `duration` (no step is taken, so on a GPU utilization
and power drop: an intervention on the compute, a positive control for the analysis).

Grammar (comma-separated `key=value`; `steps=` takes a list):

    every=60s,duration=5s,lr_mult=10,jitter=0.3[,start=30s]   bursts by wall time (units ms, s, m, h)
    every=200steps,duration=10steps,lr_mult=10,jitter=0.2     bursts by optimizer step
    steps=10-14,30-34,lr_mult=10                              explicit 1-based step ranges (inclusive)
    kind=pause,every=20s,duration=4s,jitter=0.3[,start=30s]   pause bursts (wall time only, no lr_mult)

The gap between consecutive burst starts is `every × (1 + jitter × U(-1, 1))`, drawn from a generator
seeded with the run's seed, so a burst is not locked to any periodic hardware rhythm yet the run is
reproducible. The first burst starts after `start` (default: one jittered gap). `lr_mult` defaults to 10.
A pause schedule draws from its own generator, so pause and LR bursts of one run are not in lockstep.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from dataclasses import dataclass

_TIME_UNITS_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_AMOUNT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|steps?)$")
_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_KEYS = ("kind", "every", "duration", "start", "jitter", "lr_mult", "steps")
KINDS = ("lr", "pause")
# Bursts must be seen by a 1 s scrape and cost nothing to schedule: `every=0.000001s` would draw
# millions of burst starts per minute. A burst per step (`every=1steps`) is the finest step schedule.
MIN_EVERY = {"s": 1.0, "steps": 1.0}
MAX_LR_MULT = 1000.0  # a burst is a perturbation, not a divergence (inf or 1e30 would wreck the run)


class PerturbError(ValueError):
    """A malformed --perturb / step-list value (the message is one line)."""


@dataclass(frozen=True)
class PerturbSpec:
    lr_mult: float
    unit: str  # "s" (wall time) or "steps"
    kind: str = "lr"  # "lr" or "pause"
    every: float = 0.0
    duration: float = 0.0
    jitter: float = 0.0
    start: float | None = None
    step_ranges: tuple[tuple[int, int], ...] = ()


def parse_step_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """'3,10-14' → ((3, 3), (10, 14)); 1-based, inclusive."""
    ranges = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        ranges.append(_parse_range(token))
    if not ranges:
        raise PerturbError(f"no steps in {text!r}")
    return tuple(ranges)


def _parse_range(token: str) -> tuple[int, int]:
    match = _RANGE.match(token)
    if not match:
        raise PerturbError(f"bad step range {token!r} (expected N or N-M)")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if first < 1 or last < first:
        raise PerturbError(f"bad step range {token!r} (steps start at 1 and N-M needs M >= N)")
    return first, last


def _parse_amount(key: str, value: str) -> tuple[float, str]:
    match = _AMOUNT.match(value)
    if not match:
        if _NUMBER.match(value):
            raise PerturbError(f"{key}={value!r} needs a unit: ms, s, m, h or steps (e.g. {key}=60s)")
        raise PerturbError(f"{key}={value!r} is not an amount: a number and a unit, ms, s, m, h or steps "
                           f"(e.g. {key}=60s)")
    number, unit = float(match.group(1)), match.group(2)
    if unit.startswith("step"):
        return number, "steps"
    return number * _TIME_UNITS_S[unit], "s"


def _parse_float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise PerturbError(f"{key}={value!r} is not a number") from None


def _split(text: str) -> dict[str, str]:
    """Comma-separated key=value pairs; bare items continue a preceding `steps=` list."""
    pairs: dict[str, str] = {}
    key = None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token:
            key, _, value = (part.strip() for part in token.partition("="))
            if key not in _KEYS:
                raise PerturbError(f"unknown key {key!r} (expected one of {', '.join(_KEYS)})")
            if key in pairs:
                raise PerturbError(f"{key} given twice")
            pairs[key] = value
        elif key == "steps":
            pairs["steps"] += "," + token
        else:
            raise PerturbError(f"{token!r} is not key=value")
    return pairs


def parse_perturb(text: str) -> PerturbSpec:
    pairs = _split(text)
    kind = pairs.pop("kind", "lr")
    if kind not in KINDS:
        raise PerturbError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if kind == "pause":
        return _parse_pause(pairs)
    lr_mult = _parse_float("lr_mult", pairs.get("lr_mult", "10"))
    if not 0 < lr_mult <= MAX_LR_MULT:
        raise PerturbError(f"lr_mult must be > 0 and <= {MAX_LR_MULT:g}, got {pairs.get('lr_mult')}")
    if "steps" in pairs:
        extra = set(pairs) - {"steps", "lr_mult"}
        if extra:
            raise PerturbError(f"steps= cannot be combined with {', '.join(sorted(extra))}")
        return PerturbSpec(lr_mult=lr_mult, unit="steps", step_ranges=parse_step_ranges(pairs["steps"]))
    return _periodic(pairs, lr_mult=lr_mult)


def _parse_pause(pairs: dict[str, str]) -> PerturbSpec:
    for key in ("lr_mult", "steps"):
        if key in pairs:
            raise PerturbError(f"kind=pause takes no {key}= (a pause idles for every=/duration= of wall time)")
    spec = _periodic(pairs, lr_mult=1.0, kind="pause")
    if spec.unit != "s":
        raise PerturbError("kind=pause needs times (e.g. every=20s,duration=4s), not steps: a pause is not a step")
    return spec


def _periodic(pairs: dict[str, str], *, lr_mult: float, kind: str = "lr") -> PerturbSpec:
    """Bursts every `every` for `duration` (both times or both steps), jittered."""
    # What was given is checked first, so a bad value is named as such, not reported as missing.
    amounts = {key: _parse_amount(key, pairs[key]) for key in ("every", "duration") if key in pairs}
    missing = [f"{key}=" for key in ("every", "duration") if key not in amounts]
    if missing:
        raise PerturbError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: a schedule "
                           "needs every= and duration= (e.g. every=60s,duration=5s)"
                           + (" or steps=N-M,…" if kind == "lr" else ""))
    every, unit = amounts["every"]
    duration, duration_unit = amounts["duration"]
    start = None
    if "start" in pairs:
        start, start_unit = _parse_amount("start", pairs["start"])
        if start_unit != unit:
            raise PerturbError("start= must use the same kind of unit as every=")
    if duration_unit != unit:
        raise PerturbError("every= and duration= must both be times or both be steps")
    if not MIN_EVERY[unit] <= every < math.inf:
        raise PerturbError(f"every={pairs['every']} is too short: at least {MIN_EVERY[unit]:g} "
                           f"{'second' if unit == 's' else 'step'}")
    jitter = _parse_float("jitter", pairs.get("jitter", "0"))
    if not 0 <= jitter < 1:
        raise PerturbError("jitter must be in [0, 1)")
    if not 0 < duration < every * (1 - jitter):
        raise PerturbError("need 0 < duration < every × (1 - jitter) so bursts never overlap")
    return PerturbSpec(lr_mult=lr_mult, unit=unit, kind=kind, every=every, duration=duration, jitter=jitter,
                       start=start)


class PerturbSchedule:
    """Answers 'is a burst active?' for a step (1-based) at `elapsed_s` since the first step."""

    def __init__(self, spec: PerturbSpec, seed: int) -> None:
        self.spec = spec
        # LR bursts keep the generator of earlier versions (same seed, same bursts); other kinds get their own.
        self._rng = random.Random(seed if spec.kind == "lr" else f"{spec.kind}:{seed}")
        self._starts: list[float] = []  # the most recent burst starts (at most KEEP_STARTS)
        self._forgotten = 0  # bursts before _starts[0]: indices stay global as old starts are dropped

    KEEP_STARTS = 4096  # a month of bursts every second would otherwise be 2.6 M floats in a training process

    def _gap(self) -> float:
        return self.spec.every * (1 + self.spec.jitter * self._rng.uniform(-1.0, 1.0))

    def burst_starts_until(self, position: float) -> list[float]:
        """Burst start positions (seconds or steps) kept so far, extended past `position`. Positions only
        move forward in a run, so the oldest half is dropped once KEEP_STARTS are kept."""
        if not self._starts:
            self._starts.append(self.spec.start if self.spec.start is not None else self._gap())
        while self._starts[-1] <= position:
            self._starts.append(self._starts[-1] + self._gap())
            if len(self._starts) > self.KEEP_STARTS:
                drop = self.KEEP_STARTS // 2
                del self._starts[:drop]
                self._forgotten += drop
        return self._starts

    def _kept_index(self, position: float) -> int:
        """Index in the kept starts of the last burst that started at or before `position` (-1: none kept)."""
        return bisect.bisect_right(self.burst_starts_until(position), position) - 1

    def latest_burst(self, position: float) -> int:
        """Index of the last burst that started at or before `position` (-1: none yet), counted from the
        run's first burst."""
        local = self._kept_index(position)
        return -1 if local < 0 and self._forgotten == 0 else local + self._forgotten

    def active(self, step: int, elapsed_s: float) -> bool:
        spec = self.spec
        if spec.step_ranges:
            return any(first <= step <= last for first, last in spec.step_ranges)
        # Step bursts count completed steps (step 1 is position 0), time bursts elapsed seconds.
        position = float(step - 1) if spec.unit == "steps" else elapsed_s
        index = self._kept_index(position)
        return index >= 0 and position < self._starts[index] + spec.duration
