"""What a job's analysis says: the `job` section of report.json, the summary text and job.png (the ranks over
time beside the named GPUs' temperature and clocks)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from thermograd.analysis.files.job import JobInputs
from thermograd.analysis.stats.stragglers import MARGIN, JobVerdict, RankVerdict, all_nan_is_nan

MAX_HEATMAP_COLUMNS = 2000
MAX_HEATMAP_RANKS = 256


def job_section(inputs: JobInputs, verdict: JobVerdict, source: dict) -> dict:
    """report.json's `job`: every rank's numbers, the stragglers by cause, the tokens lost, the method."""
    ranks = [asdict(v) for v in verdict.ranks]
    thermal = verdict.thermal
    return {
        "source": source, "n_ranks": len(verdict.ranks), "n_gpus": len(inputs.gpus), "step_s": inputs.step_s,
        "rows": inputs.n, "start_unix": inputs.start_s, "end_unix": inputs.start_s + (inputs.n - 1) * inputs.step_s,
        "nodes": sorted({v.node for v in verdict.ranks if v.node}),
        "stragglers": [v.rank for v in verdict.stragglers],
        # their GPU in no recording: compared with the others throughout only (cause unknown)
        "ranks_without_gpu_series": [v.rank for v in verdict.ranks if v.gpu_uuid not in inputs.gpus],
        "thermal_or_power_stragglers": [v.rank for v in thermal],
        "other_cause_stragglers": [v.rank for v in verdict.stragglers if v.cause != "thermal or power"],
        "tokens_lost_to_throttling": {v.gpu_uuid: {"rank": v.rank, "tokens": v.tokens_lost,
                                                   "ci_95": v.tokens_lost_ci} for v in thermal},
        "ranks": ranks,
        "method": {
            "ratio": "each rank's compute time per step over the median of the other ranks', per row",
            "straggler": (f"slower than the others by more than {100 * MARGIN:g} %, throughout (mean log-ratio) or "
                          "while its GPU reports a thermal or power clock-event reason (the difference between "
                          "its throttled and unthrottled rows); one-sided tests with Newey-West (HAC) errors, Holm "
                          f"over the ranks in each family, alpha {verdict.alpha:g}"),
            "cause": ("thermal or power: slower while its GPU throttles; another cause: slower throughout, not "
                      "more so while throttled (data, input, network); unknown: no hardware series for its GPU"),
            "tokens_lost": ("the job's tokens at the pace it would have had with the rank's compute divided by its "
                            "slowdown while throttled, minus the tokens it did, over the throttled steps; 95 % CI "
                            "from the slowdown's"),
        },
        "notes": inputs.notes,
    }


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * (ratio - 1):+.0f} %"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [95 % CI {100 * (ci[0] - 1):+.0f}, {100 * (ci[1] - 1):+.0f}]"


def _rank_line(v: RankVerdict) -> str:
    where = f"GPU {v.gpu_uuid or '(none)'}" + (f" on {v.node}" if v.node else "")
    if v.ratio is None:
        return f"- rank {v.rank} ({where}): not tested ({'; '.join(v.notes)})"
    line = f"- rank {v.rank} ({where}): compute {_pct(v.ratio)} against the other ranks{_ci(v.ratio_ci)}"
    if v.slowdown_while_throttled is not None:
        line += (f"; {_pct(v.slowdown_while_throttled)} while its GPU throttles{_ci(v.slowdown_ci)}, throttled "
                 f"{100 * (v.throttled_fraction or 0):.0f} % of the run")
    elif v.throttled_fraction:
        line += f"; its GPU throttled {100 * v.throttled_fraction:.0f} % of the run"
    if v.straggler:
        line += f" -> STRAGGLER ({v.cause}): {v.cause_reason}"
        if v.tokens_lost is not None and v.tokens_lost_ci is not None:
            line += (f"; the job lost {v.tokens_lost:.3g} tokens [95 % CI {v.tokens_lost_ci[0]:.3g}, "
                     f"{v.tokens_lost_ci[1]:.3g}] to its throttling")
    return line


def job_summary(section: dict, verdict: JobVerdict, description: str | None) -> str:
    lines = [description] if description else []
    name = section["source"].get("run_id") or section["source"].get("job_dir", "")
    nodes = len(section["nodes"])
    gpus = section["n_gpus"]
    lines.append(f"thermograd job analysis, {name}: {section['n_ranks']} ranks on {gpus} GPU{'' if gpus == 1 else 's'}"
                 + (f" ({nodes} node{'s' if nodes > 1 else ''})" if nodes else "")
                 + f", {section['rows']} rows of {section['step_s']:g} s.")
    thermal = verdict.thermal
    others = [v for v in verdict.stragglers if v.cause != "thermal or power"]
    if thermal:
        named = ", ".join(f"rank {v.rank} (GPU {v.gpu_uuid})" for v in thermal)
        lines.append(f"Thermal or power straggler(s): {named}: slower while their GPU throttles, which sets the "
                     "pace of every rank that waits for them.")
    if others:
        named = ", ".join(f"rank {v.rank} ({v.cause})" for v in others)
        lines.append(f"Straggler(s) of another cause: {named}.")
    if not verdict.stragglers:
        tested = sum(v.ratio is not None for v in verdict.ranks)
        lines.append(f"No straggler: none of the {tested} ranks tested computes more than {100 * MARGIN:g} % slower "
                     "than the others, throughout or while its GPU throttles (Holm-corrected).")
    blind = section["ranks_without_gpu_series"]
    if blind:
        lines.append(f"Rank(s) {', '.join(map(str, blind))}: no recording of their GPU, so whether they slow while it "
                     "throttles is not known (cause unknown); they are compared with the others throughout only.")
    lines.append("")
    lines += [_rank_line(v) for v in verdict.ranks]
    lines += [f"Note: {note}" for note in section["notes"]]
    return "\n".join(lines)


def job_png(inputs: JobInputs, verdict: JobVerdict, path: Path, title: str) -> None:
    """Ranks x time (compute time against the other ranks) beside the named GPUs' temperature and clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = np.exp(verdict.log_ratio) if verdict.log_ratio is not None else np.empty((0, inputs.n))
    shown = ratio[:MAX_HEATMAP_RANKS]
    factor = max(1, int(np.ceil(inputs.n / MAX_HEATMAP_COLUMNS)))
    if factor > 1:
        cut = shown.shape[1] // factor * factor
        with all_nan_is_nan():  # a column no rank has a row in stays NaN, without numpy's warning
            shown = np.nanmean(shown[:, :cut].reshape(shown.shape[0], -1, factor), axis=2)
    named = [v for v in verdict.stragglers if v.gpu_uuid in inputs.gpus][:4]
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=False, gridspec_kw={"height_ratios": [2, 1, 1]})
    minutes = inputs.step_s * factor * np.arange(shown.shape[1]) / 60
    image = axes[0].imshow(shown, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=0.75, vmax=1.25,
                           extent=(0, minutes[-1] if minutes.size else 1, shown.shape[0] - 0.5, -0.5))
    fig.colorbar(image, ax=axes[0], label="compute time / other ranks' median")
    axes[0].set_ylabel("rank")
    axes[0].set_title(title)
    t = inputs.step_s * np.arange(inputs.n) / 60
    for v in named:
        gpu = inputs.gpus[v.gpu_uuid]
        axes[1].plot(t, gpu.temperature, lw=0.8, label=f"rank {v.rank} ({v.gpu_uuid})")
        axes[2].plot(t, gpu.clock_ratio, lw=0.8, label=f"rank {v.rank}: {v.cause}")
    axes[1].set_ylabel("GPU temperature (°C)")
    axes[2].set_ylabel("SM clock / max")
    axes[2].set_xlabel("minutes since the job's first step")
    for ax in axes[1:]:
        ax.set_xlim(0, t[-1] if t.size else 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no straggler named", transform=ax.transAxes, ha="center", color="0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
