"""The environment `thermograd run` gives the job it runs, read by the instrumentation.

`thermograd run -- CMD` cannot edit the user's script, so it tells the instrumentation inside CMD where the run
lives through these variables; `TrainingMetrics`, `PrometheusCallback` and `PrometheusLightningCallback` use
each one only where the user did not say otherwise (an explicit argument always wins). A user may set them by
hand too (docs/instrumentation.md):

    THERMOGRAD_RUN_DIR    the run's folder: the step log goes there (`steps.jsonl`, `grad_norm_log.json`) and
                          each rank registers itself in `trainers/rank-<k>.json` (its URL, step log, GPU)
    THERMOGRAD_RUN_ID     the run id every rank shares
    THERMOGRAD_PAUSES     the pause-burst schedule ("kind=pause,every=200s,duration=3s,..."), or "off"
    THERMOGRAD_GPU_UUID   the GPU a rank is tied to when it cannot tell (a CPU job heating a simulated GPU)
    THERMOGRAD_PORT       the /metrics port (0: a free one; ranks add their local rank to any other)
    THERMOGRAD_LINGER_S   how long /metrics stays up after the run for a last scrape
    THERMOGRAD_EMULATE_CLOCK  an exporter's /metrics URL: stretch each step by the simulated GPU's clock deficit
                          (the emulated clock path, trainer/emulation.py)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = "THERMOGRAD_RUN_DIR"
RUN_ID = "THERMOGRAD_RUN_ID"
PAUSES = "THERMOGRAD_PAUSES"
GPU_UUID = "THERMOGRAD_GPU_UUID"
PORT = "THERMOGRAD_PORT"
LINGER_S = "THERMOGRAD_LINGER_S"
EMULATE_CLOCK = "THERMOGRAD_EMULATE_CLOCK"
PAUSES_OFF = "off"
REGISTRY_DIR = "trainers"  # inside the run folder: one JSON file per rank


class RunEnvironmentError(ValueError):
    """A THERMOGRAD_* variable that cannot be used (the message names it and says what it expects)."""


@dataclass(frozen=True)
class RunEnvironment:
    run_dir: Path | None = None
    run_id: str | None = None
    pauses: str | None = None  # a pause spec, PAUSES_OFF, or None (not set)
    gpu_uuid: str | None = None
    port: int | None = None
    linger_s: float | None = None
    emulate_clock: str | None = None  # an exporter's /metrics URL

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> RunEnvironment:
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        port = text(PORT)
        if port is not None and not (port.isdigit() and int(port) <= 65535):
            raise RunEnvironmentError(f"{PORT}={port!r}: expected a port number 0-65535")
        linger = text(LINGER_S)
        try:
            linger_s = None if linger is None else float(linger)
        except ValueError:
            linger_s = math.nan
        if linger_s is not None and not (math.isfinite(linger_s) and 0 <= linger_s <= 86400):
            raise RunEnvironmentError(f"{LINGER_S}={linger!r}: expected seconds in 0..86400")
        run_dir = text(RUN_DIR)
        return cls(run_dir=Path(run_dir) if run_dir else None, run_id=text(RUN_ID), pauses=text(PAUSES),
                   gpu_uuid=text(GPU_UUID), port=None if port is None else int(port), linger_s=linger_s,
                   emulate_clock=text(EMULATE_CLOCK))

    def as_variables(self) -> dict[str, str]:
        """The variables that give a child process this environment (what `thermograd run` sets)."""
        values = {RUN_DIR: self.run_dir, RUN_ID: self.run_id, PAUSES: self.pauses, GPU_UUID: self.gpu_uuid,
                  PORT: self.port, LINGER_S: self.linger_s, EMULATE_CLOCK: self.emulate_clock}
        return {name: str(value) for name, value in values.items() if value is not None}


def registration_path(run_dir: Path, rank: int) -> Path:
    return run_dir / REGISTRY_DIR / f"rank-{rank}.json"


def register(run_dir: Path, rank: int, record: dict) -> None:
    """Write (atomically: write a temporary file, then rename) what `thermograd run` needs to know of a rank:
    its URL to scrape, its step log, its run id and GPU. Never raises: a run must not fail for its label."""
    path = registration_path(run_dir, rank)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def read_registrations(run_dir: Path) -> dict[int, dict]:
    """Every rank registered in the run folder, by rank (a file being replaced, or not JSON, is skipped)."""
    out: dict[int, dict] = {}
    for path in sorted((run_dir / REGISTRY_DIR).glob("rank-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            out[int(record["rank"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
