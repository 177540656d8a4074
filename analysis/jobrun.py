"""`thermograd-analysis --job-dir DIR` and `--job [RUN_ID]`: one job of many ranks — its stragglers, their cause
and what they cost — written to OUT/report.json (`job`), OUT/job.png, and said on stdout."""

from __future__ import annotations

import sys
import time

from thermograd.analysis.errors import InputError
from thermograd.analysis.files.job import JobInputs, load_job
from thermograd.analysis.output.job import job_png, job_section, job_summary
from thermograd.analysis.output.outdir import output_folder
from thermograd.analysis.output.report import versions, write_report
from thermograd.analysis.provenance import Provenance
from thermograd.analysis.requests import JobRequest
from thermograd.analysis.stats.stragglers import analyse_job
from thermograd.analysis.timeparse import get_tz


def job_inputs(req: JobRequest) -> tuple[JobInputs, dict]:
    if req.job_dir is not None:
        return load_job(req.job_dir, get_tz(req.tz), req.step_s), {"source": "files", "job_dir": str(req.job_dir)}
    from thermograd.analysis.sources.job import load_job_prometheus

    assert req.store is not None  # a JobRequest names a folder or a store (arguments.job_request)
    return load_job_prometheus(req.store, req.window, req.run_id, req.step_s)


JOB_OUTPUTS = ("report.json", "job.png")


def run_job(req: JobRequest, quiet: bool = False) -> int:
    with output_folder(req.out, JOB_OUTPUTS):
        return _job_into(req, quiet)


def _job_into(req: JobRequest, quiet: bool) -> int:
    started = time.perf_counter()
    inputs, source = job_inputs(req)
    if len(inputs.ranks) < 2:
        raise InputError(f"a job's analysis compares ranks: {len(inputs.ranks)} found "
                         f"({source.get('job_dir') or source.get('run_id')})")
    fetched = time.perf_counter()
    verdict = analyse_job(inputs.ranks, inputs.gpus, inputs.step, inputs.step_s, req.alpha, steps=inputs.steps)
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
    job_png(inputs, verdict, req.out / "job.png", title)
    write_report(report, req.out)
    if not quiet:
        print(job_summary(section, verdict, description))
        print(f"report: {req.out / 'report.json'}; figure: {req.out / 'job.png'}", file=sys.stderr)
    return 0
