"""The RLE index and collapse detector for a hardware source that does not compute them (dcgm-exporter,
nvidia_gpu_exporter): the exporter's own engine (exporter/engine.py, the code `thermograd-exporter` and
`recompute` run) fed with the source's temperature, power and utilisation on the analysis's grid (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermograd.analysis import table as T
from thermograd.exporter.engine import RleConfig, RleEngine


@dataclass(frozen=True)
class EngineRun:
    columns: dict[str, np.ndarray]  # rle (RLE_smoothed, as rle_efficiency_smoothed), a_load, collapsed
    onsets: int
    segments: int


def engine_columns(t_s: np.ndarray, util_ratio: np.ndarray, power_w: np.ndarray, temp_c: np.ndarray,
                   rated_power_w: float, temp_limit_c: float, interval_s: float,
                   config: RleConfig | None = None) -> EngineRun:
    """One engine update per grid row that has utilisation and power (the temperature may be missing: the
    engine then takes T_sustain at its maximum, as the exporter does); other rows stay NaN, and a gap of more
    than the engine's gap_intervals restarts its state exactly as it restarts the exporter's.

    `interval_s` is the grid step, i.e. the source's real sample interval: the engine's windows (stability
    over 10 s, smoothing over 5 s, heating rate over 1 s, its gate over 7 s) are converted to samples of that
    interval, so a source collected every 30 s gets one-sample windows, the coarsest view the data allow."""
    engine = RleEngine(rated_power_w, temp_limit_c, interval_s, config)
    out = {name: np.full(t_s.size, np.nan) for name in (T.RLE, T.A_LOAD, T.COLLAPSED)}
    usable = np.isfinite(util_ratio) & np.isfinite(power_w)
    for k in np.flatnonzero(usable):
        temp = float(temp_c[k]) if np.isfinite(temp_c[k]) else None
        result = engine.update(float(t_s[k]), float(util_ratio[k]) * 100.0, float(power_w[k]), temp)
        out[T.RLE][k], out[T.A_LOAD][k], out[T.COLLAPSED][k] = result.rle_smoothed, result.load_ratio, result.collapsed
    return EngineRun(out, engine.collapse_events, engine.segments)
