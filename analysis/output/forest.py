"""forest.png for --all-runs: each run's lag-0 r with its 95 % CI and the pooled random-effects r, per pair."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

PANELS_PER_ROW = 3


def _panel(ax: plt.Axes, entry: dict, rows: list[dict], bound: float) -> None:
    mine = {row["run"]: row for row in rows if (row["x"], row["y"]) == (entry["x"], entry["y"])}
    runs = entry["runs"]
    ax.axvspan(-bound, bound, color="0.93", label=f"|r| < {bound:g}")
    ax.axvline(0, color="0.5", lw=0.6)
    for i, run in enumerate(runs):
        row = mine[run]
        y = len(runs) - i
        ax.plot([row["ci_low"], row["ci_high"]], [y, y], color="tab:blue", lw=1.2)
        ax.plot([row["r"]], [y], "s", color="tab:blue", ms=4)
    pooled = entry["pooled"]
    if pooled is not None:
        lo, hi, r = pooled["ci"][0], pooled["ci"][1], pooled["r"]
        if pooled.get("prediction_interval"):  # where a new run's r would fall: wider than the CI when runs differ
            p_lo, p_hi = pooled["prediction_interval"]
            ax.plot([p_lo, p_hi], [0, 0], color="tab:red", lw=0.8, ls=(0, (4, 2)),
                    label=f"prediction [{p_lo:+.2f}, {p_hi:+.2f}]")
        ax.fill([lo, r, hi, r], [0, 0.3, 0, -0.3], color="tab:red",
                label=f"pooled {r:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        i2 = "n/a" if pooled["i2"] is None else f"{100 * pooled['i2']:.0f}%"
        ax.set_title(f"{entry['x']} vs {entry['y']}: {entry['strength']}\nI²={i2}, τ²={pooled['tau2']:.3g}, "
                     f"k={pooled['k']}", fontsize=8)
    else:
        ax.set_title(f"{entry['x']} vs {entry['y']}: insufficient data", fontsize=8)
    ax.set_yticks(list(range(len(runs), 0, -1)) + [0], [*runs, "pooled"], fontsize=6)
    ax.set_xlim(-1, 1)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("lag-0 r (stationary series), 95 % CI", fontsize=7)
    ax.legend(loc="lower right", fontsize=6)


def forest_png(rows: list[dict], pooled: list[dict], path: Path, bound: float = 0.3) -> None:
    """One panel per pair that has a pooled r (pairs without data are in meta_analysis.json only)."""
    pooled = [e for e in pooled if e["pooled"] is not None] or pooled[:1]
    n = len(pooled)
    ncols = min(PANELS_PER_ROW, n)
    nrows = -(-n // ncols)
    k = max((len(e["runs"]) for e in pooled), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, (1.2 + 0.22 * (k + 1)) * nrows + 0.4),
                             squeeze=False)
    for ax, entry in zip(axes.flat, pooled, strict=False):
        _panel(ax, entry, rows, bound)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
