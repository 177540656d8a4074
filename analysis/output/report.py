"""Assembling report.json: inputs, window, step, queries, versions, results; never a NaN."""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from thermograd.timestamps import iso_utc


def lag_note(source: str, step_s: float | None = None) -> str:
    """Why lags are resolved to the step and no finer, for a run from a store or from files."""
    step = "step" if step_s is None else f"{step_s:g} s step"
    why = ("Prometheus spreads each target's scrape phase within the interval, so samples of two targets can be up "
           "to one interval apart" if source != "files" else
           "the step log and the hardware recording are two samplers with their own clocks and phases, so their "
           "samples can be up to one step apart")
    return f"Lags are resolved to the {step}, never finer: {why}."


def clean(value: object) -> object:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None (report.json never holds NaN)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("thermograd", "numpy", "scipy", "statsmodels", "matplotlib", "requests"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def window(start_s: float, step_s: float, n: int) -> dict:
    end_s = start_s + (n - 1) * step_s
    return {"start": iso_utc(start_s), "end": iso_utc(end_s), "start_unix": start_s, "end_unix": end_s,
            "n_steps": n, "duration_s": end_s - start_s}


def write_report(report: dict, out_dir: Path) -> dict:
    """Write out_dir/report.json; returns the document written (JSON types only, NaN as None)."""
    document = clean(report)
    (out_dir / "report.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return document


def series_summary(columns: dict[str, np.ndarray]) -> dict[str, dict]:
    """Coverage of every aligned column: points with data, gaps, range and mean."""
    out = {}
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        out[name] = {"n": int(finite.size), "gaps": int(values.size - finite.size),
                     "min": float(finite.min()) if finite.size else None,
                     "max": float(finite.max()) if finite.size else None,
                     "mean": float(finite.mean()) if finite.size else None}
    return out
