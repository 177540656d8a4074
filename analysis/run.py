"""One run's analysis: its series from a store or from files on one grid, every test, the verdicts, and
report.json with the figures (analyse_run). The command line only parses flags into a RunRequest and prints the
RunReport it gets back; --all-runs hands each run's request to analyse_run in a worker."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thermograd.analysis import table as T
from thermograd.analysis.catalog import DIRECTIONS
from thermograd.analysis.coupling.analyse import analyse
from thermograd.analysis.coupling.verdict import QUESTIONS, overall
from thermograd.analysis.errors import InputError
from thermograd.analysis.files.grid import files_to_table
from thermograd.analysis.files.readers import load_grad_log, load_rle_csv
from thermograd.analysis.output.figures import coupling_png, crosscorr_png
from thermograd.analysis.output.outdir import output_folder
from thermograd.analysis.output.report import lag_note, series_summary, versions, window, write_report
from thermograd.analysis.output.summary import summary_text
from thermograd.analysis.provenance import Provenance, no_path_verdict
from thermograd.analysis.requests import FileRun, Grid, RunRequest, StoreRun
from thermograd.analysis.sources.client import SCRAPE_JOBS, PromClient, store_note
from thermograd.analysis.sources.devices import Choice
from thermograd.analysis.sources.fetch import REQUIRED, fetch_table, series_exprs
from thermograd.analysis.sources.foreign import engine_columns
from thermograd.analysis.sources.intervals import collection_interval_s, grid_step_s
from thermograd.analysis.sources.runs import (
    change_series,
    choose_hardware,
    choose_run,
    discover_runs,
    hardware_down,
    last_seen_s,
    no_runs_reason,
    power_limit_w,
    run_identity,
    run_sample_interval_s,
)
from thermograd.analysis.timeparse import get_tz
from thermograd.exporter.engine import DEFAULT_GPU_TEMP_LIMIT_C

DEFAULT_STEP_S = 15.0  # Prometheus's own default scrape interval, used when the backend hides its config


def within_row_budget(start_s: float, end_s: float, step_s: float, step_source: str, grid: Grid,
                      notes: list[str]) -> tuple[float, str]:
    """The step, widened to a whole multiple when the window's grid would pass --max-rows (said in a note); a
    --step the user chose is never widened behind their back: too many rows for it is an error."""
    wider_s = T.step_within_rows(start_s, end_s, step_s, grid.max_rows)
    if wider_s == step_s:
        return step_s, step_source
    rows = T.grid_rows(T.aligned_start_s(start_s, step_s), end_s, step_s)
    if grid.step_s is not None:
        raise InputError(f"--step {grid.step_flag} makes the window {rows:,} rows, more than "
                         f"--max-rows {grid.max_rows:,} (about {T.PEAK_BYTES_PER_ROW} bytes of memory each): give a "
                         "coarser --step or a larger --max-rows")
    notes.append(f"the window ({(end_s - start_s) / 86400:.2f} days) is {rows:,} rows of {step_s:g} s, more than "
                 f"--max-rows {grid.max_rows:,} (about {T.PEAK_BYTES_PER_ROW} bytes of memory each), so it is analysed "
                 f"on a {wider_s:g} s grid (levels averaged and flags their max over each step; a lag is then a "
                 f"multiple of {wider_s:g} s). A larger --max-rows keeps the finer grid, with the memory it takes.")
    return wider_s, f"{step_source}, widened to {wider_s:g} s by --max-rows"


def from_store(req: StoreRun, grid: Grid) -> tuple[T.Table, dict]:
    """One run's table from a store, and what the report says about where it came from."""
    client = req.client.client()
    job_scrape_s = client.job_scrape_interval_s(SCRAPE_JOBS)
    scrape_s = job_scrape_s or client.scrape_interval_s()
    notes: list[str] = []
    if grid.step_s is not None:
        step_s, step_source = grid.step_s, "--step"
    elif job_scrape_s:
        step_s, step_source = job_scrape_s, f"scrape interval of the {'/'.join(SCRAPE_JOBS)} targets (/api/v1/targets)"
    elif scrape_s:
        step_s, step_source = scrape_s, "global scrape_interval from /api/v1/status/config"
    else:  # no config, no targets (VictoriaMetrics, Mimir): the run's own samples tell, once it is known
        step_s, step_source = None, ""
    look_from_s, end_s = req.window.bounds()
    start_s = req.window.start_s
    runs = discover_runs(client, look_from_s, end_s)
    run = choose_run(runs, req.run_id, "" if runs else no_runs_reason(client.targets(), client.url))
    run.last_seen_s = last_seen_s(client, run, end_s)
    if step_s is None:
        sampled_s = run_sample_interval_s(client, run)
        step_s, step_source = ((sampled_s, "median spacing of the run's raw samples") if sampled_s
                               else (DEFAULT_STEP_S, "default (no scrape interval served, too few samples)"))
        notes.append("the backend serves no scrape interval (empty or absent /api/v1/targets and "
                     f"/api/v1/status/config): the step is the {step_source}, {step_s:g} s")
    if not scrape_s:  # not Prometheus (VictoriaMetrics, Mimir, Thanos): what its query semantics change, and how met
        notes.append(store_note(client.store_flags(), step_s))
    scrape_s = scrape_s or step_s
    if start_s is None:
        start_s = max(run.first_seen_s, run.start_time_s - step_s)
    if req.window.end_s is None:
        end_s = min(end_s, run.last_seen_s)
    span_s = end_s - start_s + step_s
    ident = run_identity(client, run.run_id, req.rank, end_s, span_s)
    try:
        choice = choose_hardware(client, ident, req.device, req.hardware_source, end_s, span_s)
    except InputError as exc:  # an exporter that is down is the cause to name first
        down = hardware_down(client.targets())
        raise InputError(f"{down} ({exc})" if down else str(exc)) from None
    notes += choice.notes
    interval_s, repeats, hardware_lines = source_interval(client, choice, grid.step_s is not None, start_s, end_s,
                                                          scrape_s, step_s, notes)
    if repeats and grid.step_s is None and repeats > step_s:
        step_s, step_source = repeats, f"collection interval of hardware source {choice.source.name}"
    # How often the source takes a new reading: measured, else one per step as chosen so far (the user's --step
    # for a source too quiet to measure), so only a step the row budget widens blends several.
    readings_s, chosen_step_s = interval_s or step_s, step_s
    step_s, step_source = within_row_budget(start_s, end_s, step_s, step_source, grid, notes)
    if step_s != chosen_step_s:
        hardware_lines = [f"{line}; widened to a {step_s:g} s grid by --max-rows (readings averaged per row)"
                          for line in hardware_lines]
    notes += hardware_lines
    start_s = T.aligned_start_s(start_s, step_s)  # evaluation timestamps on whole steps
    span_s = end_s - start_s + step_s
    exprs = series_exprs(run.run_id, ident.rank, choice.device.uuid, step_s, scrape_s, choice.source,
                         choice.device.uuid_label, source_readings_s=readings_s)
    table, fetch_notes = fetch_table(client, exprs, start_s, end_s, step_s, REQUIRED)
    notes += fetch_notes
    provenance = Provenance(choice.device.backend or choice.source.name, choice.device.heat_source,
                            choice.device.uuid, ident.emulation)
    hardware = {"source": choice.source.name, "requested": req.hardware_source, "joined_by": choice.joined_by,
                "uuid_label": choice.device.uuid_label, "collection_interval_s": interval_s,
                "repeats_between_scrapes": repeats is not None, **provenance.as_report()}
    if choice.source.engine:
        hardware["rle"] = engine_rle(client, req, choice, table, exprs, end_s, span_s, notes)
        hardware_lines.append(notes[-1])
    else:
        hardware["rle"] = {"computed_by": "exporter (its rle_* series)"}
        if req.rated_power_w is not None or req.temp_limit_c is not None:
            notes.append("--rated-power/--temp-limit ignored: thermograd's exporter computed the RLE itself")
    meta = {
        "inputs": {"source": "prometheus", "url": client.url, "run_id": run.run_id, "rank": ident.rank,
                   "gpu_uuid": ident.gpu_uuid, "device": {"uuid": choice.device.uuid, "device": choice.device.device},
                   "hardware": hardware, "runs_found": sorted(runs), "extra_headers": sorted(client.headers),
                   "auth": "bearer" if client.bearer_token else ("basic" if client.basic_auth else None)},
        "step": {"seconds": step_s, "source": step_source, "scrape_interval_s": scrape_s},
        "queries": client.queries, "notes": notes, "backend": {"backend": client.build_version()},
        "hardware_lines": hardware_lines, "provenance": provenance,
    }
    return table, meta


def source_interval(client: PromClient, choice: Choice, step_given: bool, start_s: float, end_s: float,
                    scrape_s: float, step_s: float, notes: list[str]) -> tuple[float | None, float | None, list[str]]:
    """(the source's collection interval, the grid step it needs when it repeats values between scrapes,
    the lines to print, which the caller adds to the notes once the grid is final).

    A source that collects less often than it is scraped (dcgm-exporter: every 30 s by default) repeats each
    value for several scrapes. Those repeats are not observations: on a grid of scrapes they would count one
    reading many times (inflating n and the effective sample size), fake persistence at every lag and put a
    step at each collection. So the grid step becomes the source's real interval: each row holds one real
    reading, the trainer's series are aggregated over the same step (histogram means are exact over it), and
    the RLE engine runs at that interval. --step, when given, is kept as the user's choice, with a note."""
    interval_s = collection_interval_s(change_series(client, choice, start_s, end_s))
    repeat_step_s = grid_step_s(interval_s, scrape_s)
    name = choice.source.name
    if repeat_step_s is None:
        if interval_s is None and choice.source.engine:
            notes.append(f"hardware source {name}: too few value changes in its raw samples to tell how often it "
                         f"collects (its default: every {choice.source.default_interval_s:g} s); if it repeats "
                         "values between scrapes, pass --step with its collection interval")
        return interval_s, None, []
    said = (f"hardware source {name} repeats its values between scrapes: it collects every {interval_s:g} s "
            f"(from when its raw values change), Prometheus scrapes every {scrape_s:g} s")
    if step_given and step_s < repeat_step_s:
        said += f"; --step {step_s:g} s is kept, so its values repeat within the grid"
    elif repeat_step_s > step_s:
        said += f"; the analysis uses its real interval, a {repeat_step_s:g} s grid, one reading per row"
    return interval_s, repeat_step_s, [said]


def engine_rle(client: PromClient, req: StoreRun, choice: Choice, table: T.Table, exprs: dict[str, str],
               end_s: float, span_s: float, notes: list[str]) -> dict:
    """RLE, A_load and collapses for a source that has none: the exporter's engine on the table's temperature,
    power and utilisation (added to the table). Returns what was used, for the report; adds one note.

    Without a rated power (dcgm-exporter's default counters have no power limit) or without utilisation or
    power the RLE cannot be computed; the coupling tests of temperature, power and the training speed do not
    need it, so the analysis goes on without the RLE columns (those pairs are insufficient data) and says so."""
    source, uuid = choice.source.name, choice.device.uuid
    missing = [column for column in (T.UTILIZATION, T.POWER) if not table.has(column)]
    if req.rated_power_w is not None:
        rated_w, rated_from = req.rated_power_w, "--rated-power"
    else:
        rated_w, rated_from, limit_notes = power_limit_w(client, choice, end_s, span_s)
        notes += limit_notes
    if missing or not math.isfinite(rated_w):
        offered = " or ".join(choice.source.power_limits) or "no power-limit series in its metric set"
        why = (f"{source} serves no {' or '.join(missing)} for {uuid} in the window (PromQL: "
               f"{'; '.join(exprs[c] for c in missing)})" if missing else
               f"{source} reports no power limit for {uuid} in the window ({offered}); pass --rated-power W")
        notes.append(f"RLE, A_load and collapses not computed: {why}. The other tests run without them.")
        return {"computed_by": None, "reason": why}
    temp_limit_c = DEFAULT_GPU_TEMP_LIMIT_C if req.temp_limit_c is None else req.temp_limit_c
    absent = np.full(table.n, np.nan)
    done = engine_columns(table.t_unix_s, table.columns[T.UTILIZATION], table.columns[T.POWER],
                          table.columns.get(T.TEMPERATURE, absent), rated_w, temp_limit_c, table.step_s)
    table.columns.update(done.columns)
    used = {"computed_by": "analysis (exporter.engine.RleEngine, the exporter's engine)", "rated_power_w": rated_w,
            "rated_power_from": rated_from, "temp_limit_c": temp_limit_c,
            "temp_limit_from": "--temp-limit" if req.temp_limit_c is not None else "the exporter's default",
            "interval_s": table.step_s, "collapse_onsets": done.onsets, "segments": done.segments}
    notes.append(f"RLE, A_load and collapses of {source} computed here with the exporter's engine from its "
                 f"temperature, power and utilisation: rated power {rated_w:g} W ({rated_from}), temperature limit "
                 f"{temp_limit_c:g} C ({used['temp_limit_from']}), one sample every {table.step_s:g} s; "
                 f"{done.onsets} collapse onset(s)")
    return used


def from_files(req: FileRun, grid: Grid) -> tuple[T.Table, dict]:
    """One run's table from its files, and what the report says about where it came from."""
    tz = get_tz(req.tz)
    notes: list[str] = []
    grad = load_grad_log(req.grad_log, tz, notes)
    rle, device = load_rle_csv(req.rle_csv, req.device, tz, notes, grad.info.get("gpu_uuid", ""))
    provenance = Provenance(rle.info.get("backend"), rle.info.get("heat_source", ""), rle.info.get("uuid", device),
                            grad.info.get("emulation", ""))
    table = files_to_table(grad, rle, grid.step_s, notes)
    meta = {
        "provenance": provenance,
        "inputs": {"source": "files", "grad_log": str(req.grad_log), "rle_csv": str(req.rle_csv),
                   "device": device, "naive_timestamps_tz": req.tz or "UTC",
                   "hardware": {"uuid": rle.info.get("uuid"), "model": rle.info.get("model"),
                                **provenance.as_report()}},
        "step": {"seconds": table.step_s,
                 "source": "--step" if grid.step_s is not None
                           else "the slower source's own sampling interval (median spacing)",
                 "grid_start_unix": table.start_s},
        "queries": [], "notes": notes,
    }
    return table, meta


@dataclass
class RunReport:
    """One run's analysis as written: report.json's document (JSON types only, NaN as None), where it and the
    figures are, and the lines the command prints about the hardware source before the summary."""

    document: dict
    out: Path
    hardware_lines: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.out / "report.json"

    def summary(self) -> str:
        """The plain-language summary the command prints (output.summary)."""
        return summary_text(self.document)


RUN_OUTPUTS = ("report.json", "coupling.png", "crosscorr.png")


def analyse_run(req: RunRequest) -> RunReport:
    """Gather the run's table (a store or files), run every test, write report.json and the figures under
    req.out; InputError (one line, exit 2 at the command) for anything the user can fix, found before anything
    is written where it can be (output.outdir)."""
    with output_folder(req.out, RUN_OUTPUTS):
        return _analyse_into(req)


def _analyse_into(req: RunRequest) -> RunReport:
    cfg = req.settings
    t0 = time.perf_counter()
    from_store_ = isinstance(req.source, StoreRun)
    table, meta = from_store(req.source, req.grid) if from_store_ else from_files(req.source, req.grid)
    if not table.has(T.GRAD_NORM):
        where = meta["inputs"].get("grad_log") or f"run {meta['inputs'].get('run_id')} on {meta['inputs'].get('url')}"
        raise InputError(f"{where}: no usable gradient norm (every value is null, NaN or missing)")
    absent = [name for name in (T.POWER, T.RLE, T.TEMPERATURE, T.UTILIZATION, T.LOSS) if not table.has(name)]
    if absent:
        meta["notes"].append(f"no {', '.join(absent)} in the window (a device without a power reading has no RLE "
                             "either): the pairs that need them are insufficient data; the rest is analysed")
    table = table.trimmed([T.GRAD_NORM, T.LOSS])
    t_fetch = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = analyse(table, cfg)
    t_stats = time.perf_counter() - t0
    used_s = (results.get("warmup") or {}).get("seconds")
    if used_s is not None and cfg.warmup_s > 0 and used_s + table.step_s < cfg.warmup_s:
        meta["notes"].append(f"--warmup {req.warmup_flag} was overridden: {used_s:g} s of start-up were left out, not "
                             f"{cfg.warmup_s:g} s, because the start-up left out is at most a tenth of the run "
                             f"({table.n * table.step_s:g} s here), or a third of it while its series are still "
                             "settling")
    report = {
        "inputs": meta["inputs"], "window": window(table.start_s, table.step_s, table.n), "step": meta["step"],
        "queries": meta["queries"], "versions": {**versions(), **meta.get("backend", {})},
        "notes": [*meta["notes"], *results.pop("notes"), lag_note(meta["inputs"]["source"])],
        "settings": vars(cfg), "series": series_summary(table.columns), **results,
    }
    report["verdicts"] = {d: overall(results["pairs"], table.step_s, d, results["spike_responses"])
                          for d in DIRECTIONS}
    provenance: Provenance = meta["provenance"]
    for direction in DIRECTIONS:  # never a coupling verdict for a path the run did not have
        if (reason := provenance.no_path(direction)) is not None:
            report["verdicts"][direction] = no_path_verdict(direction, QUESTIONS.get(direction, direction), reason)
    report["inputs"]["hardware"]["description"] = provenance.first_line()
    report["verdict"] = report["verdicts"]["optimizer_to_hardware"]
    if results["perturbation"] is None:
        del report["perturbation"]
    t0 = time.perf_counter()
    verdict = report["verdict"]
    label = f"{provenance.label()} hardware; " if provenance.label() else ""
    title = (f"{label}run {meta['inputs'].get('run_id', meta['inputs'].get('grad_log'))}: "
             f"optimizer -> hardware {verdict['strength']}; "
             f"hardware -> training {report['verdicts']['hardware_to_training']['strength']}")
    coupling_png(table, req.out / "coupling.png", title,
                 "Prometheus evaluation timestamps" if from_store_ else f"a {table.step_s:g} s grid")
    crosscorr_png(results["pairs"], req.out / "crosscorr.png")
    # fetch = reading and aligning the input (HTTP + JSON for Prometheus), statistics = every test
    report["timing_s"] = {"fetch_align": t_fetch, "statistics": t_stats, "figures": time.perf_counter() - t0}
    return RunReport(write_report(report, req.out), req.out, meta.get("hardware_lines", []))


