"""Device backends behind one interface (see base.Backend), and the `auto` choice between them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from thermograd.exporter.backends.base import Backend, BackendUnavailable, DeviceInfo, DeviceLost, Reading

__all__ = ["Backend", "BackendUnavailable", "DeviceInfo", "DeviceLost", "Reading", "open_backend"]

log = logging.getLogger(__name__)


def open_backend(name: str, *, devices: int = 1, seed: int = 0, sim_load: Callable[[float], float] | None = None,
                 replay_csv: Path | None = None, speed: float = 1.0, sim_profile: str = "default",
                 sim_cooling: dict[int, float] | None = None) -> Backend:
    """Opens backend `name`; raises BackendUnavailable (nvml without a GPU) or ValueError (bad input)."""
    if name == "auto":
        try:
            backend = open_backend("nvml")
        except BackendUnavailable as exc:
            log.warning("backend auto: %s; falling back to the simulated GPU (sim)", exc)
            backend = open_backend("sim", devices=devices, seed=seed, sim_load=sim_load, sim_profile=sim_profile,
                                   sim_cooling=sim_cooling)
        log.info("backend auto chose %s", backend.name)
        return backend
    if name == "nvml":
        from thermograd.exporter.backends.nvml import NvmlBackend

        return NvmlBackend()
    if name == "cpu":
        from thermograd.exporter.backends.cpu import CpuBackend

        return CpuBackend()
    if name == "sim":
        from thermograd.exporter.backends.sim import SIM_PROFILES, SimBackend

        return SimBackend(count=devices, seed=seed, load=sim_load, params=SIM_PROFILES[sim_profile],
                          cooling=sim_cooling)
    if name == "replay":
        from thermograd.exporter.backends.replay import ReplayBackend

        if replay_csv is None:
            raise ValueError("--backend replay needs --replay-csv PATH")
        return ReplayBackend(replay_csv, speed=speed)
    raise ValueError(f"unknown backend {name!r}")
