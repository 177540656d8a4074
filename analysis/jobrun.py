"""`thermograd-analysis --job-dir DIR` and `--job [RUN_ID]`: one job of many ranks — its stragglers, their cause
and what they cost — written to OUT/report.json (`job`), OUT/job.png, and said on stdout."""

from __future__ import annotations

import argparse
import sys
import time

from thermograd.analysis.errors import InputError
from thermograd.analysis.jobfiles import JobInputs, load_job
from thermograd.analysis.jobreport import job_png, job_section, job_summary
from thermograd.analysis.provenance import Provenance
from thermograd.analysis.report import versions, write_report
from thermograd.analysis.stats.stragglers import analyse_job
from thermograd.analysis.timeparse import get_tz, parse_duration_s


def job_inputs(args: argparse.Namespace) -> tuple[JobInputs, dict]:
    step_s = parse_duration_s(args.step) if args.step else None
    if step_s is not None and not step_s > 0:
        raise InputError(f"--step {args.step!r}: must be a duration > 0")
    if args.job_dir is not None:
        return load_job(args.job_dir, get_tz(args.tz), step_s), {"source": "files", "job_dir": str(args.job_dir)}
    if not args.prometheus:
        raise InputError("--job needs --prometheus URL (or analyse files with --job-dir DIR)")
    from thermograd.analysis.jobprometheus import load_job_prometheus

    return load_job_prometheus(args, step_s)


def run_job(args: argparse.Namespace) -> int:
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {args.out}: {exc}") from None
    started = time.perf_counter()
    inputs, source = job_inputs(args)
    if len(inputs.ranks) < 2:
        raise InputError(f"a job's analysis compares ranks: {len(inputs.ranks)} found "
                         f"({source.get('job_dir') or source.get('run_id')})")
    fetched = time.perf_counter()
    verdict = analyse_job(inputs.ranks, inputs.gpus, inputs.step, inputs.step_s, args.alpha, steps=inputs.steps)
    provenance = Provenance(inputs.provenance.get("backend"), inputs.provenance.get("heat_source", ""),
                            f"the job's {len(inputs.gpus)} GPU(s)", inputs.provenance.get("emulation", ""))
    description = provenance.first_line()
    if provenance.simulated and provenance.emulation != "clock":
        inputs.notes.append("simulated GPUs without the emulated clock path: no GPU's heat can slow a rank, so a "
                            "'thermal or power' straggler here is a coincidence of timing, not a physical cause")
    section = job_section(inputs, verdict, source)
    analysed = time.perf_counter()
    report = {"inputs": {**source, "hardware": {**provenance.as_report(), "description": description}},
              "job": section, "versions": versions(),
              "timing_s": {"fetch_align": fetched - started, "statistics": analysed - fetched}}
    title = f"{source.get('run_id') or source.get('job_dir')}: {len(verdict.stragglers)} straggler(s)"
    job_png(inputs, verdict, args.out / "job.png", title)
    write_report(report, args.out)
    if not args.quiet:
        print(job_summary(section, verdict, description))
        print(f"report: {args.out / 'report.json'}; figure: {args.out / 'job.png'}", file=sys.stderr)
    return 0
