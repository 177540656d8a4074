"""`thermograd`: the one command for a user's own job (`thermograd run [options] -- CMD [ARG...]`).

The three tools it builds on keep their own commands: thermograd-exporter, thermograd-trainer and
thermograd-analysis. Bad input is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from thermograd import __version__
from thermograd.commandline import OneLineParser, UsageError, internal_error

RUN_EPILOG = """examples:
  thermograd run -- python train.py --epochs 1
  thermograd run --prometheus -- torchrun --nproc-per-node 2 train.py
  thermograd run --pauses every=120s,duration=3s --duration 600 -- python train.py

The job's instrumentation (TrainingMetrics, PrometheusCallback, PrometheusLightningCallback) logs to the
run's folder by itself: see docs/instrumentation.md. What the output means: docs/analysis.md. Stopping, signals,
the terminal and the exit status: docs/running.md."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="thermograd", description="Does what your optimizer does show up in what your GPU does, and "
                "does your GPU's heat slow your training? Measure and analyse your own job in one command.")
    p.add_argument("--version", action="version", version=f"thermograd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    run = sub.add_parser("run", help="measure the hardware, run CMD, analyse the result",
                         description="Measure the hardware, run CMD (your training job), then analyse what was "
                         "recorded: OUT/hardware.csv, OUT/steps.jsonl, OUT/report.json, OUT/coupling.png, "
                         "OUT/crosscorr.png.", epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="the run's folder (default: a new thermograd-runs/<run_id>; never an existing one's files)")
    run.add_argument("--backend", choices=["auto", "nvml", "cpu", "sim"], default="auto",
                     help="hardware: nvml (NVIDIA GPUs), cpu, sim (a simulated GPU heated by CMD's own CPU use) "
                     "or auto (default: nvml when a GPU answers, else sim)")
    run.add_argument("--gpu-uuid", metavar="UUID", help="the GPU the job trains on, when it cannot tell (default: "
                     "the GPU the instrumentation reports, else the only one)")
    run.add_argument("--sample-hz", type=float, default=1.0, help="hardware samples per second (default 1, at most 10)")
    run.add_argument("--sim-profile", choices=["default", "demo"], default="default",
                     help="sim: the simulated card's physics (see thermograd-exporter --help)")
    run.add_argument("--devices", type=int, default=1, metavar="N",
                     help="sim: simulated GPUs, one per rank of a multi-rank CMD (torchrun): card k is heated by the "
                     "CPU use of the rank with local rank k (default 1, heated by all of CMD)")
    run.add_argument("--sim-cooling", action="append", default=[], metavar="[DEV=]F",
                     help="sim: the fraction of its cooling a card has (1 as built; 0.5 a clogged heat sink); "
                     "repeatable, e.g. --sim-cooling 1=0.5 for a job whose rank 1 runs hot")
    run.add_argument("--emulate-clock", action="store_true",
                     help="sim: stretch the job's steps by the simulated card's clock deficit (the emulated clock "
                     "path: hardware -> training then has a path, labelled as emulation everywhere it shows)")
    pauses = run.add_mutually_exclusive_group()
    pauses.add_argument("--pauses", metavar="SPEC", help="the pause bursts the job takes, the analysis's positive "
                        "control, in thermograd-trainer's --perturb syntax (default: "
                        "every=120s,duration=2s,jitter=0.2,start=40s: at most 2 %% of a 10-minute run)")
    pauses.add_argument("--no-pauses", action="store_true", help="take no pause bursts (no positive control)")
    run.add_argument("--prometheus", action="store_true",
                     help="also run a local Prometheus (the system's binary) on a fresh TSDB in OUT, scraping the "
                     "hardware and the job every second, and analyse through it")
    run.add_argument("--duration", type=float, metavar="S",
                     help="stop the job after S seconds, as Ctrl-C would (SIGINT to it; SIGTERM if it still runs "
                     "--grace seconds later, then SIGKILL after --grace more); the exit status stays the job's: "
                     "typically 130")
    run.add_argument("--grace", type=float, metavar="S",
                     help="seconds a job being stopped by thermograd (--duration, or a SIGTERM or SIGHUP to "
                     "thermograd passed on) gets before the next, harder signal (default 30: time to save a "
                     "checkpoint)")
    run.add_argument("--quiet", action="store_true", help="no analysis summary on stdout")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]", help="the job to run")
    return p


def sim_cooling(args: argparse.Namespace) -> dict[int, float]:
    """--sim-cooling by simulated device index ([DEV=]F, as thermograd-exporter takes it)."""
    from thermograd.exporter.cli import sim_cooling as exporter_sim_cooling

    return exporter_sim_cooling(args)


def run_options(args: argparse.Namespace):
    from thermograd.run import DEFAULT_PAUSES, STOP_GRACE_S, RunOptions

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not (math.isfinite(args.sample_hz) and 0 < args.sample_hz <= 10):
        raise UsageError(f"--sample-hz must be > 0 and <= 10, got {args.sample_hz:g}")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be a number of seconds > 0, got {args.duration:g}")
    if args.grace is not None and not (math.isfinite(args.grace) and args.grace >= 0):
        raise UsageError(f"--grace must be a number of seconds >= 0, got {args.grace:g}")
    if not 1 <= args.devices <= 64:
        raise UsageError(f"--devices must be 1-64, got {args.devices}")
    cooling = sim_cooling(args)
    pauses = None if args.no_pauses else (args.pauses or DEFAULT_PAUSES)
    return RunOptions(command=command, out=args.out, backend=args.backend, gpu_uuid=args.gpu_uuid,
                      sample_hz=args.sample_hz, pauses=pauses, prometheus=args.prometheus, duration_s=args.duration,
                      grace_s=STOP_GRACE_S if args.grace is None else args.grace,
                      sim_profile=args.sim_profile, devices=args.devices, sim_cooling=cooling,
                      emulate_clock=args.emulate_clock, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("give a command: thermograd run [options] -- CMD [ARG...] (see thermograd --help)")
        # imported here, not at the top: `thermograd --help` stays light; its RunError is a UsageError
        from thermograd.run import run

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="thermograd: %(levelname)s %(message)s")
        return run(run_options(args))
    except UsageError as exc:
        print(f"thermograd: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for the user; THERMOGRAD_DEBUG=1 shows it
        return internal_error("thermograd", exc)
