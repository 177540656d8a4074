"""Learning-rate schedule: linear warm-up, then cosine or linear decay to a floor."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear")


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "cosine", floor: float = 0.1) -> float:
    """Multiplier of the peak LR at 1-based `step`: step/warmup during warm-up, then decays from 1 to
    `floor` at `total_steps` (a floor rather than 0 so the last steps still learn)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1 - (1 - floor) * progress
    raise ValueError(f"unknown schedule {kind!r} (expected one of {', '.join(SCHEDULES)})")


def default_warmup_steps(total_steps: int) -> int:
    """10 % of the run, at least 1 step and at most 1000."""
    return min(1000, max(1, total_steps // 10))
