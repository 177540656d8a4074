"""The series of one run and one device, as PromQL range queries on one clock -> Table."""

from __future__ import annotations

import numpy as np

from analysis import table as T
from analysis.align import place_on_grid
from analysis.errors import InputError
from analysis.promql import PromClient, matrix_to_arrays
from analysis.selection import quote_label

REQUIRED = (T.GRAD_NORM, T.LOSS, T.RLE)


def range_window(seconds: float) -> str:
    """A PromQL range: whole seconds as `Ns`, anything else in whole milliseconds (PromQL rejects `0.5s`)."""
    millis = max(1, round(seconds * 1000))
    return f"[{millis // 1000}s]" if millis % 1000 == 0 else f"[{millis}ms]"


def grad_norm_mean_expr(train_sel: str, step_s: float, scrape_s: float) -> str:
    """The histogram's exact mean gradient norm per interval: increase(_sum) / increase(_count).

    When the step spans several scrapes, rate() over one step plus one scrape covers the whole step (the
    samples in (t - step, t] alone span one scrape interval less, and would drop the steps between the
    last sample before the window and the first in it). When the step is the scrape interval, irate()
    over two steps uses the last two samples, i.e. exactly the steps observed in the last interval,
    whatever the scrape phase (rate() over one step would often hold one sample).
    """
    base = "train_step_grad_norm"
    if step_s >= 2 * scrape_s:
        win = range_window(step_s + scrape_s)
        return f"max(rate({base}_sum{train_sel}{win})) / max(rate({base}_count{train_sel}{win}))"
    win = range_window(2 * step_s)
    return f"max(irate({base}_sum{train_sel}{win})) / max(irate({base}_count{train_sel}{win}))"


def series_exprs(run_id: str, rank: str, uuid: str, step_s: float, scrape_s: float) -> dict[str, str]:
    """One expression per column; gauges via last_over_time over one step so a gap stays a gap."""
    train = f"{{run_id={quote_label(run_id)},rank={quote_label(rank)}}}"
    dev = f"{{uuid={quote_label(uuid)}}}"
    last = range_window(step_s)

    def gauge(name: str, sel: str) -> str:
        return f"max(last_over_time({name}{sel}{last}))"

    return {
        T.GRAD_NORM: grad_norm_mean_expr(train, step_s, scrape_s),
        T.GRAD_NORM_LAST: gauge("train_grad_norm", train),
        T.LOSS: gauge("train_loss", train),
        T.PERTURBATION: gauge("train_perturbation_active", train),
        T.RLE: gauge("rle_efficiency_smoothed", dev),
        T.TEMPERATURE: gauge("rle_temperature_celsius", dev),
        T.POWER: gauge("rle_power_watts", dev),
        T.A_LOAD: gauge("rle_load_ratio", dev),
        T.COLLAPSED: gauge("rle_collapsed", dev),
    }


def fetch_table(client: PromClient, exprs: dict[str, str], start_s: float, end_s: float,
                step_s: float) -> tuple[T.Table, list[str]]:
    """Query every expression with the same start/end/step and place them on Prometheus's timestamps."""
    results = client.query_range(exprs, start_s, end_s, step_s)
    n = int(np.floor((end_s - start_s) / step_s + 1e-9)) + 1
    table = T.Table(start_s, step_s, n)
    notes: list[str] = []
    for name, res in results.items():
        t_s, vals = matrix_to_arrays(res)
        table.columns[name] = place_on_grid(t_s, vals, start_s, step_s, n)
    if not table.has(T.GRAD_NORM) and table.has(T.GRAD_NORM_LAST):
        table.columns[T.GRAD_NORM] = table.columns[T.GRAD_NORM_LAST]
        notes.append("train_step_grad_norm histogram absent: using the last value (train_grad_norm) per step")
    for name in REQUIRED:
        if not table.has(name):
            raise InputError(f"series {name} missing in the window: no data for PromQL {exprs[name]}")
    return table, notes
