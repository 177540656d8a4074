"""The series of one run and one device, as PromQL range queries on one clock -> Table (streamed: each
chunk's answer goes straight into its rows of a preallocated column)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from thermograd.analysis import table as T
from thermograd.analysis.catalog import SERIES, Source
from thermograd.analysis.errors import InputError
from thermograd.analysis.sources.client import PromClient, range_window
from thermograd.analysis.sources.runs import quote_label

# Only the gradient norm is required: a device without power (a CPU without RAPL) has no RLE, and a job may log
# no loss; the pairs that need them are then "insufficient data", the rest is analysed.
REQUIRED = (T.GRAD_NORM,)


def histogram_mean_expr(base: str, sel: str, step_s: float, scrape_s: float) -> str:
    """A histogram's exact mean per interval: increase(_sum) / increase(_count).

    When the step spans several scrapes, rate() over one step plus one scrape covers the whole step (the
    samples in (t - step, t] alone span one scrape interval less, and would drop the steps between the
    last sample before the window and the first in it). When the step is the scrape interval, irate()
    over two steps uses the last two samples, i.e. exactly the steps observed in the last interval,
    whatever the scrape phase (rate() over one step would often hold one sample).
    """
    fn, win = _rate_fn(step_s, scrape_s)
    return f"max({fn}({base}_sum{sel}{win})) / max({fn}({base}_count{sel}{win}))"


def histogram_upper_expr(base: str, sel: str, step_s: float, scrape_s: float) -> str:
    """The upper bound of the highest bucket that any observation of the interval fell in: the histogram's
    upper buckets, read with histogram_quantile(1, ...) (the bound of the highest non-empty bucket). A
    one-step gradient-norm spike shows at its own size (to the bucket's resolution) where the interval's
    mean divides it by the steps in the interval; an interval without steps is NaN."""
    fn, win = _rate_fn(step_s, scrape_s)
    return f"histogram_quantile(1, sum by (le) ({fn}({base}_bucket{sel}{win})))"


def _rate_fn(step_s: float, scrape_s: float) -> tuple[str, str]:
    if step_s >= 2 * scrape_s:
        return "rate", range_window(step_s + scrape_s)
    return "irate", range_window(2 * step_s)


def grad_norm_mean_expr(train_sel: str, step_s: float, scrape_s: float) -> str:
    return histogram_mean_expr("train_step_grad_norm", train_sel, step_s, scrape_s)


def series_exprs(run_id: str, rank: str, uuid: str, step_s: float, scrape_s: float, source: Source | None = None,
                 uuid_label: str = "uuid", source_readings_s: float | None = None) -> dict[str, str]:
    """One expression per column of catalog.SERIES; gauges via last_over_time over one step so a gap
    stays a gap, counters as a per-second rate over the step, histograms as their exact mean.

    The device columns come from thermograd's exporter (series.csv) or, for another `source`, from its rows
    of sources.csv, selected by `uuid_label` as that source spells it and scaled into base units; columns the
    source lacks (rle, a_load, collapsed: the analysis computes them, sources/foreign.py) have no expression.
    `source_readings_s`: how often the foreign source takes a new reading (its collection interval, or the scrape
    interval when it does not repeat values); by default the step, one reading per row."""
    base = {"train": f"run_id={quote_label(run_id)},rank={quote_label(rank)}",
            "device": f"{uuid_label}={quote_label(uuid)}"}
    foreign = source is not None and source.name != "thermograd"
    out = {}
    for s in SERIES:
        if not (foreign and s.source == "device"):
            out[s.column] = _expr(s.kind, (s.metric,), ",".join(m for m in (base[s.source], s.matchers) if m),
                                  step_s, scrape_s)
    # A foreign source's readings repeat between its collections and the step is usually its interval: each row
    # then takes the one reading it holds (its last sample), never a blend of two collections. A step spanning
    # several readings (a long run widened by --max-rows, a coarse --step) aggregates them as for our series.
    for row in source.rows if foreign else ():
        out[row.column] = _expr(row.kind, row.metrics, base["device"], step_s, scrape_s, row.scale,
                                readings_s=source_readings_s or step_s)
    return out


def _gauge_fn(kind: str, step_s: float, readings_s: float) -> str:
    """How a gauge becomes one value per step. At one reading per step, its sample. When a step spans several
    readings (a coarse --step, the trainer's series on the grid of a hardware source collecting every 30 s), its
    last sample alone would drop the rest: a flag takes max_over_time (a 4-s pause burst on a 30-s grid is
    seen, not missed 26 times in 30), a level avg_over_time."""
    if step_s < 2 * readings_s:
        return "last_over_time"
    return "max_over_time" if kind == "state" else "avg_over_time"


def _expr(kind: str, metrics: tuple[str, ...], matchers: str, step_s: float, scrape_s: float,
          scale: float = 1.0, readings_s: float | None = None) -> str:
    """One column's expression: `kind` as in series.csv; a *_max kind takes the largest of several metrics;
    `readings_s`: how often the series takes a new value (default: every scrape)."""
    sel = "{" + matchers + "}"
    kind = kind.removesuffix("_max")
    if kind == "histogram_mean":
        return histogram_mean_expr(metrics[0], sel, step_s, scrape_s)
    if kind == "histogram_upper":
        return histogram_upper_expr(metrics[0], sel, step_s, scrape_s)
    if kind == "peak":
        fn, win = "max_over_time", range_window(step_s)
    elif kind in ("gauge", "state"):
        fn, win = _gauge_fn(kind, step_s, readings_s or scrape_s), range_window(step_s)
    else:
        fn, win = _rate_fn(step_s, scrape_s)
    if len(metrics) == 1:
        inner = f"{fn}({metrics[0]}{sel}{win})"
    else:  # rate() drops the metric name: a label keeps the metrics' results apart until max() takes the largest
        inner = " or ".join(f'label_replace({fn}({m}{sel}{win}), "metric", "{m}", "", "")' for m in metrics)
    expr = f"max({inner})"
    return expr if scale == 1 else f"{expr} * {scale:g}"


RECENT_S = 3600.0  # only a window ending within the last hour can meet a store's holding back of its newest points
PROBE_S = 600.0  # the newest ten minutes of the window are probed
MAX_WAIT_S = 120.0  # the longest the analysis waits for the store to serve the window's newest points


def wait_for_newest_points(client: PromClient, start_s: float, end_s: float, step_s: float, notes: list[str],
                           max_wait_s: float = MAX_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> float:
    """The window's end once the backend serves every point of the grid start + k*step up to it as evaluated.

    A store may hold back its newest points: VictoriaMetrics with its default -search.latencyOffset=30s answers a
    range query's points within 30 s of its now with copies of an older point (their samples might still be in
    flight). An analysis started right after a run ends would then read the run's last half-minute as a flat line
    and could reach another verdict. So the window's newest points are probed (newest_held_back_s) and, while held
    back, the analysis waits until the store serves them (said in the notes), at most `max_wait_s`; beyond that
    the rows it still holds back are left out, also said. Returns the end to fetch up to."""
    if end_s < time.time() - RECENT_S:
        return end_s
    probe_start_s = start_s + max(0.0, np.ceil((end_s - PROBE_S - start_s) / step_s)) * step_s
    waited_s = 0.0
    while (first_s := client.newest_held_back_s(probe_start_s, end_s, step_s)) is not None:
        wait_s = end_s - first_s + step_s + 1.0  # until the held-back span has passed the window's end
        if waited_s + wait_s > max_wait_s:
            if first_s <= start_s:
                raise InputError(f"{client.url} holds back every point of the window (its newest "
                                 f"{end_s - first_s + step_s:.0f} s; VictoriaMetrics: -search.latencyOffset): "
                                 "run the analysis again later")
            notes.append(f"the backend held back the window's points from {first_s - start_s:g} s on (its newest "
                         f"{end_s - first_s + step_s:.0f} s after waiting {waited_s:.0f} s; VictoriaMetrics's "
                         "-search.latencyOffset): the rows from there on are left out; rerun later for the whole run")
            return first_s - step_s
        if client.progress:
            print(f"waiting {wait_s:.0f} s: {client.url} holds back its newest points (VictoriaMetrics's "
                  "-search.latencyOffset)", file=sys.stderr, flush=True)
        sleep(wait_s)
        waited_s += wait_s
    if waited_s:
        notes.append(f"the backend held back its newest points when the analysis started (VictoriaMetrics's "
                     f"-search.latencyOffset, 30 s by default, serves a range query's points that recent as copies "
                     f"of an older one): the analysis waited {waited_s:.0f} s until it served the run's last points "
                     "as stored")
    return end_s


def fetch_table(client: PromClient, exprs: dict[str, str], start_s: float, end_s: float,
                step_s: float, required: tuple[str, ...] = REQUIRED) -> tuple[T.Table, list[str]]:
    """Query every expression with the same start/end/step and place them on Prometheus's timestamps, once the
    backend serves the window's newest points as evaluated (wait_for_newest_points)."""
    notes: list[str] = []
    end_s = wait_for_newest_points(client, start_s, end_s, step_s, notes)
    columns = client.query_range_columns(exprs, start_s, end_s, step_s)
    n = next(iter(columns.values())).size
    # The series the backend does not hold share one read-only array of NaN: a month of 1 s data is 20 MB a
    # column, and a run without clocks, pauses or tokens would otherwise carry 100+ MB of NaN.
    nothing = np.full(n, np.nan)
    nothing.setflags(write=False)
    columns = {name: col if np.isfinite(col).any() else nothing for name, col in columns.items()}
    table = T.Table(start_s, step_s, n, columns)
    if not table.has(T.GRAD_NORM) and table.has(T.GRAD_NORM_LAST):
        table.columns[T.GRAD_NORM] = table.columns[T.GRAD_NORM_LAST]
        notes.append("train_step_grad_norm histogram absent: using the last value (train_grad_norm) per step")
    for name in required:
        if not table.has(name):
            raise InputError(f"series {name} missing in the window: no data for PromQL {exprs[name]}")
    return table, notes
