"""The series of one run and one device, as PromQL range queries on one clock -> Table (streamed: each
chunk's answer goes straight into its rows of a preallocated column)."""

from __future__ import annotations

from analysis import table as T
from analysis.catalog import SERIES
from analysis.errors import InputError
from analysis.promql import PromClient
from analysis.selection import quote_label

REQUIRED = (T.GRAD_NORM, T.LOSS, T.RLE)


def range_window(seconds: float) -> str:
    """A PromQL range: whole seconds as `Ns`, anything else in whole milliseconds (PromQL rejects `0.5s`)."""
    millis = max(1, round(seconds * 1000))
    return f"[{millis // 1000}s]" if millis % 1000 == 0 else f"[{millis}ms]"


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


def _rate_fn(step_s: float, scrape_s: float) -> tuple[str, str]:
    if step_s >= 2 * scrape_s:
        return "rate", range_window(step_s + scrape_s)
    return "irate", range_window(2 * step_s)


def grad_norm_mean_expr(train_sel: str, step_s: float, scrape_s: float) -> str:
    return histogram_mean_expr("train_step_grad_norm", train_sel, step_s, scrape_s)


def series_exprs(run_id: str, rank: str, uuid: str, step_s: float, scrape_s: float) -> dict[str, str]:
    """One expression per column of catalog.SERIES; gauges via last_over_time over one step so a gap
    stays a gap, counters as a per-second rate over the step, histograms as their exact mean."""
    base = {"train": f"run_id={quote_label(run_id)},rank={quote_label(rank)}", "device": f"uuid={quote_label(uuid)}"}
    out = {}
    for s in SERIES:
        sel = "{" + ",".join(m for m in (base[s.source], s.matchers) if m) + "}"
        if s.kind == "gauge":
            out[s.column] = f"max(last_over_time({s.metric}{sel}{range_window(step_s)}))"
        elif s.kind == "histogram_mean":
            out[s.column] = histogram_mean_expr(s.metric, sel, step_s, scrape_s)
        else:
            fn, win = _rate_fn(step_s, scrape_s)
            out[s.column] = f"max({fn}({s.metric}{sel}{win}))"
    return out


def fetch_table(client: PromClient, exprs: dict[str, str], start_s: float, end_s: float,
                step_s: float) -> tuple[T.Table, list[str]]:
    """Query every expression with the same start/end/step and place them on Prometheus's timestamps."""
    columns = client.query_range_columns(exprs, start_s, end_s, step_s)
    table = T.Table(start_s, step_s, next(iter(columns.values())).size, columns)
    notes: list[str] = []
    if not table.has(T.GRAD_NORM) and table.has(T.GRAD_NORM_LAST):
        table.columns[T.GRAD_NORM] = table.columns[T.GRAD_NORM_LAST]
        notes.append("train_step_grad_norm histogram absent: using the last value (train_grad_norm) per step")
    for name in REQUIRED:
        if not table.has(name):
            raise InputError(f"series {name} missing in the window: no data for PromQL {exprs[name]}")
    return table, notes
