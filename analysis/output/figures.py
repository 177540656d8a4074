"""coupling.png (the seed's four panels and the step time on one time axis) and crosscorr.png (CCFs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from thermograd.analysis import table as T  # noqa: E402

MAX_PLOT_POINTS = 4000  # a week at 1 s would otherwise be 600k points per line


def _bucket(values: np.ndarray, factor: int, how: str) -> np.ndarray:
    """Downsample by `factor` (mean or max per bucket, ignoring gaps); a factor of 1 is a no-op."""
    if factor == 1:
        return values
    n = values.size // factor * factor
    blocks = values[:n].reshape(-1, factor)
    finite = np.isfinite(blocks)
    if how == "max":
        out = np.where(finite, blocks, -np.inf).max(axis=1)
        return np.where(np.isfinite(out), out, np.nan)
    counts = finite.sum(axis=1)
    sums = np.where(finite, blocks, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _shade(ax: plt.Axes, t: np.ndarray, mask: np.ndarray, color: str, label: str) -> None:
    if mask.any():
        ax.fill_between(t, 0, 1, where=mask, transform=ax.get_xaxis_transform(), color=color, alpha=0.25,
                        step="mid", label=label, linewidth=0)


def coupling_png(table: T.Table, path: Path, title: str, grid: str = "Prometheus evaluation timestamps") -> None:
    """The seed's four panels and the step time on one time axis; `grid` names where the grid came from."""
    factor = max(1, int(np.ceil(table.n / MAX_PLOT_POINTS)))
    t = _bucket(table.t_unix_s, factor, "mean").astype("datetime64[s]")
    cols = table.columns
    absent = np.full(table.n, np.nan)
    collapsed = _bucket(np.nan_to_num(cols.get(T.COLLAPSED, absent)), factor, "max") > 0.5
    bursts = _bucket(np.nan_to_num(cols.get(T.PERTURBATION, absent)), factor, "max") > 0.5
    pauses = _bucket(np.nan_to_num(cols.get(T.PAUSE, absent)), factor, "max") > 0.5
    throttled = _bucket(np.nan_to_num(cols.get(T.THROTTLED, absent)), factor, "max") > 0.5
    panels = [(T.LOSS, "training loss", "mean"), (T.GRAD_NORM, "gradient norm", "max"),
              (T.RLE, "RLE (smoothed)", "mean"), (T.TEMPERATURE, "temperature (°C)", "mean"),
              (T.STEP_DURATION, "step time (s)", "mean")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 12), sharex=True)
    if T.GRAD_NORM_LAST in cols:  # the last value per step, under the interval mean
        axes[1].plot(t, _bucket(cols[T.GRAD_NORM_LAST], factor, "max"), lw=0.6, color="0.6", label="last value")
    for ax, (name, label, how) in zip(axes, panels, strict=True):
        ax.plot(t, _bucket(cols.get(name, absent), factor, how), lw=0.8,
                label="mean per interval" if name == T.GRAD_NORM else None)
        ax.set_ylabel(label)
        _shade(ax, t, bursts, "tab:orange", "learning-rate burst")
        _shade(ax, t, pauses, "tab:green", "pause")
    _shade(axes[1], t, collapsed, "tab:red", "collapse")
    _shade(axes[4], t, throttled, "tab:purple", "throttled (thermal/power)")
    if not np.isfinite(cols.get(T.STEP_DURATION, absent)).any():
        axes[4].text(0.5, 0.5, "no step-time series", transform=axes[4].transAxes, ha="center", color="0.5")
    onset = collapsed & ~np.r_[False, collapsed[:-1]]
    rle = _bucket(cols.get(T.RLE, absent), factor, "mean")
    if onset.any():
        axes[2].plot(t[onset], rle[onset], "v", color="tab:red", ms=5, label="collapse onset")
    for ax in (*axes[1:3], axes[4]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title(title)
    axes[-1].set_xlabel(f"time (UTC, {grid})" if factor == 1 else
                        f"time (UTC; {factor} steps per plotted point)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def crosscorr_png(pairs: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(len(pairs), 1, figsize=(9, 2.3 * len(pairs)), sharex=True, squeeze=False)
    for ax, pair in zip(axes[:, 0], pairs, strict=True):
        lag = pair["lag"]
        ax.set_ylabel(f"{pair['x']}\nvs {pair['y']}", fontsize=8)
        if lag.get("status") != "ok":
            ax.text(0.5, 0.5, "insufficient data", transform=ax.transAxes, ha="center")
            continue
        lags_s, ccf = np.asarray(lag["lags_s"]), np.asarray(lag["ccf"])
        band = lag["band_95"]
        ax.axhspan(-band, band, color="0.85", label="95% of the null's max |r| over lags")
        ax.axhline(0, color="0.5", lw=0.5)
        ax.plot(lags_s, ccf, lw=1)
        ax.plot([lag["peak_lag_s"]], [lag["peak_r"]], "o", color="tab:red",
                label=f"peak r={lag['peak_r']:+.2f} at {lag['peak_lag_s']:g} s (p={lag['p']:.2g})")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("lag (s); positive = y follows x (stationary series: high-passed differences)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
