"""The exporter as one object: a backend's devices sampled by the sampler thread, published on /metrics and
/healthz, and (optionally) recorded to a hardware CSV. `thermograd-exporter` serves one until it is told to
stop; `thermograd run` runs one beside the user's job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from thermograd.endpoint.webconfig import WebConfig
from thermograd.exporter.backends import Backend, open_backend
from thermograd.exporter.backends.base import DeviceInfo
from thermograd.exporter.engine import RleConfig
from thermograd.exporter.record import HardwareRecorder
from thermograd.exporter.sampler import Sampler

log = logging.getLogger("thermograd.exporter")


@dataclass
class MonitorSpec:
    """What to sample and where to publish it (the exporter's flags, parsed)."""

    backend: str = "auto"
    devices: int = 1
    seed: int = 0
    sim_load: Callable[[float], float] | list[Callable[[float], float]] | None = None  # one, or one per device
    sim_profile: str = "default"
    sim_cooling: dict[int, float] = field(default_factory=dict)  # device index -> fraction of its cooling
    replay_csv: Path | None = None
    speed: float = 1.0
    sample_hz: float = 1.0
    rated_power_w: dict[str | None, float] = field(default_factory=dict)  # {None: every device, label: one}
    temp_limit_c: dict[str | None, float] = field(default_factory=dict)
    rle: RleConfig | None = None
    bind: str = "127.0.0.1"
    port: int | None = 9842  # None: no endpoint (record only)
    record: Path | None = None
    web_config: WebConfig | None = None  # --web.config.file, loaded: TLS and basic auth on the endpoint


class UnknownDevice(ValueError):
    """A per-device value names a device the backend does not have."""


def per_device(values: dict[str | None, float], labels: list[str], flag: str) -> dict[str, float]:
    """{None: v} applies to every device, {label: v} to one; an unknown label is an error naming the devices."""
    unknown = [d for d in values if d is not None and d not in labels]
    if unknown:
        raise UnknownDevice(f"{flag}: unknown device {unknown[0]!r} (devices: {', '.join(labels)})")
    resolved = {label: values[None] for label in labels if None in values}
    resolved.update({d: v for d, v in values.items() if d is not None})
    return resolved


class HardwareMonitor:
    """Opens the backend, the recording and the endpoint at construction (so every bad input fails before
    anything runs, with OSError for a taken port and RecordError for a recording that exists); `start()`
    begins sampling and serving, `stop()` ends both and closes everything. Also a context manager."""

    def __init__(self, spec: MonitorSpec) -> None:
        from thermograd.exporter.server import make_server

        self.spec = spec
        self.backend: Backend = open_backend(spec.backend, devices=spec.devices, seed=spec.seed,
                                             sim_load=spec.sim_load, replay_csv=spec.replay_csv, speed=spec.speed,
                                             sim_profile=spec.sim_profile, sim_cooling=spec.sim_cooling)
        self.recorder: HardwareRecorder | None = None
        self.server = None
        self._serving = False
        try:
            labels = [d.device for d in self.backend.devices()]
            self.sampler = Sampler(self.backend, spec.sample_hz,
                                   per_device(spec.rated_power_w, labels, "--rated-power"),
                                   per_device(spec.temp_limit_c, labels, "--temp-limit"), spec.rle,
                                   on_sample=self._record)
            if spec.record is not None:
                self.recorder = HardwareRecorder(spec.record, self.sampler.count_error)
            if spec.port is not None:
                self.server = make_server(spec.bind, spec.port, lambda: self.sampler.snapshot,
                                          self.sampler.healthy, web=spec.web_config)
        except BaseException:
            self.close()
            raise

    def _record(self, snapshot) -> None:
        if self.recorder is not None:
            self.recorder(snapshot)

    @property
    def devices(self) -> list[DeviceInfo]:
        return self.sampler.devices

    @property
    def url(self) -> str | None:
        if self.server is None:
            return None
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        return f"{self.server.scheme}://{host}:{port}/metrics"

    @property
    def address(self) -> str | None:
        """host:port of the endpoint, as a scrape target."""
        url = self.url
        return None if url is None else url.split("://", 1)[1].removesuffix("/metrics")

    def start(self) -> HardwareMonitor:
        from thermograd.exporter.server import serve_in_thread

        self.sampler.start()
        if self.server is not None:
            serve_in_thread(self.server)
            self._serving = True
        log.info("backend %s, %d device(s): %s", self.backend.name, len(self.devices),
                 ", ".join(f"{d.device} ({d.kind}, {d.uuid})" for d in self.devices))
        return self

    def close(self) -> None:
        """Stop serving and sampling; close the recording and the backend. Idempotent."""
        if self.server is not None:
            if self._serving:  # shutdown() waits for serve_forever: it would hang on a server never started
                self.server.shutdown()
            self.server.server_close()
            self.server = None
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.stop()
        if self.recorder is not None:
            self.recorder.close()
        self.backend.close()

    def __enter__(self) -> HardwareMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
