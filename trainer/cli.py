"""`thermograd-trainer`: argument parsing, signal handling and exit codes (0 ok, 2 bad input, 3 diverged).

Everything here is light (no torch import) so bad input fails in a fraction of a second.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys

from thermograd.commandline import OneLineParser
from thermograd.trainer.config import JobConfig
from thermograd.trainer.errors import NonFiniteAbort, UsageError
from thermograd.trainer.perturb import PerturbError, PerturbSpec, parse_perturb, parse_step_ranges
from thermograd.trainer.schedule import SCHEDULES
from thermograd.trainer.stopping import StopControl

MAX_LINGER_S = 86400  # a day; also rejects inf and nan (threading's wait overflows on huge timeouts)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="thermograd-trainer",
        description="Reference GPT-2-architecture training job exposing loss and gradient norm on /metrics.",
    )
    p.add_argument("--model", default="tiny", help="'tiny' (built from a config, no download) or a name/path")
    p.add_argument("--data", nargs="+", metavar="PATH", help="text files or folders (default: Python's stdlib sources)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 10%% of --steps)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="decay after warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="clip threshold; 0 = no clipping")
    p.add_argument("--perturb", metavar="SPEC", action="append", default=[],
                   help='LR bursts: "every=60s,duration=5s,lr_mult=10,jitter=0.3" or "steps=10-14,30-34,lr_mult=10"; '
                   'pause bursts (the loop idles): "kind=pause,every=20s,duration=4s,jitter=0.3"; repeatable, one '
                   'spec per kind')
    p.add_argument("--port", type=int, help="/metrics port (0: any free port; default THERMOGRAD_PORT, else 9843)")
    p.add_argument("--bind", default="127.0.0.1", help="/metrics address")
    p.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="TLS, client certificates and basic auth for /metrics, in the Prometheus "
                   "exporter-toolkit's format (docs/web-config.md)")
    p.add_argument("--log-dir", help="step log folder; {run_id} in it is replaced by the run's id, so one "
                   "command line can run again (default: the run folder of `thermograd run`, else "
                   "out/trainer/{run_id})")
    p.add_argument("--linger", type=float, default=2.0,
                   help="seconds /metrics stays up after the last step (default 2 = two 1 s scrapes)")
    p.add_argument("--run-id", help="run_id label (default: THERMOGRAD_RUN_ID, else generated; printed at start)")
    p.add_argument("--gpu-uuid", help="gpu_uuid label (default: NVML UUID of the CUDA device, '' on CPU)")
    p.add_argument("--max-nonfinite", type=int, default=10, help="abort (exit 3) after this many consecutive "
                   "non-finite steps")
    p.add_argument("--inject-nan-at", metavar="STEPS", help=argparse.SUPPRESS)  # test hook: '3,10-12'
    p.add_argument("--no-instrument", action="store_true", help=argparse.SUPPRESS)  # benchmark baseline
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def parse_perturb_args(specs: list[str]) -> dict[str, PerturbSpec]:
    """Every --perturb, by kind: at most one spec per kind (two LR schedules would multiply into one)."""
    by_kind: dict[str, PerturbSpec] = {}
    for text in specs:
        try:
            spec = parse_perturb(text)
        except PerturbError as exc:
            raise UsageError(f"invalid --perturb {text!r}: {exc}") from None
        if spec.kind in by_kind:
            raise UsageError(f"invalid --perturb {text!r}: a kind={spec.kind} schedule is already given; "
                             "one --perturb per kind")
        by_kind[spec.kind] = spec
    return by_kind


def _web_config(path: str | None) -> object:
    """The loaded web config (a bad file is a usage error now, before torch loads), or None."""
    if not path:
        return None
    from thermograd.endpoint.webconfig import WebConfigError, load

    try:
        return load(path)
    except WebConfigError as exc:
        raise UsageError(str(exc)) from None


def parse_args(argv: list[str] | None) -> JobConfig:
    a = build_parser().parse_args(argv)
    _check(a.steps >= 1, "--steps must be >= 1")
    _check(a.batch_size >= 1, "--batch-size must be >= 1")
    _check(a.seq_len >= 2, "--seq-len must be >= 2")
    _check(math.isfinite(a.lr) and a.lr > 0, "--lr must be a finite number > 0")
    _check(a.warmup_steps is None or a.warmup_steps >= 0, "--warmup-steps must be >= 0")
    _check(math.isfinite(a.max_grad_norm) and a.max_grad_norm >= 0,
           "--max-grad-norm must be a finite number >= 0 (0 = no clipping)")
    _check(a.port is None or 0 <= a.port <= 65535, "--port must be in 0..65535")
    _check(0 <= a.linger <= MAX_LINGER_S, f"--linger must be a number of seconds in 0..{MAX_LINGER_S}")
    _check(a.max_nonfinite >= 1, "--max-nonfinite must be >= 1")
    bursts = parse_perturb_args(a.perturb)
    try:
        inject = parse_step_ranges(a.inject_nan_at) if a.inject_nan_at else ()
    except PerturbError as exc:
        raise UsageError(f"invalid --inject-nan-at: {exc}") from None
    return JobConfig(
        model=a.model, data=a.data, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr,
        warmup_steps=a.warmup_steps, schedule=a.schedule, seed=a.seed, device=a.device,
        max_grad_norm=a.max_grad_norm, perturb=bursts.get("lr"), pause=bursts.get("pause"), port=a.port, bind=a.bind,
        log_dir=a.log_dir, linger_s=a.linger, run_id=a.run_id, gpu_uuid=a.gpu_uuid, max_nonfinite=a.max_nonfinite,
        inject_nan_steps=inject, instrument=not a.no_instrument, quiet=a.quiet,
        web_config=_web_config(a.web_config_file),
    )


def main(argv: list[str] | None = None) -> int:
    control = StopControl()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, control.handle)
    try:
        cfg = parse_args(argv)
        from thermograd.trainer.job import (
            run,  # deferred: torch/transformers load only for a valid command line
        )

        run(cfg, control=control)
    except (UsageError, NonFiniteAbort) as exc:
        print(f"trainer: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0
