"""The emulated clock path: a rank tied to a *simulated* GPU computes as if it ran on that GPU's clock.

A CPU job cannot be slowed by a simulated GPU's heat: the hardware -> training question has no physical path.
With this opt-in emulation it has one, made on purpose and said everywhere it shows: each step's compute is
stretched by the simulated card's published clock deficit, stretch = compute x (max clock / clock - 1), by
idling at the end of the step. A card throttled to 80 % of its clock makes its rank's steps 1.25x longer; in a
job that waits for its slowest rank (DDP, FSDP2) the other ranks then wait for it, as they would for a
throttled GPU. The clock comes from the exporter's /metrics (`rle_sm_clock_hertz`, `rle_sm_clock_max_hertz`
of the rank's `gpu_uuid`), read every half second by a background thread, never in the training loop.

Only a simulated card is emulated (`rle_device_info{backend="sim"}`): a real GPU's clock already acts on a job
that runs on it. Opt in with `TrainingMetrics(emulate_clock=URL)` or THERMOGRAD_EMULATE_CLOCK=URL (what
`thermograd run --emulate-clock` sets); `train_run_info{emulation="clock"}` and each step log line's
`"emulation": "clock"` say it is on.
"""

from __future__ import annotations

import logging
import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

POLL_S = 0.5
MIN_CLOCK_RATIO = 0.05  # a card reported at under 5 % of its clock: a glitch, not a 20x stretch


def read_clock_ratio(text: str, uuid: str) -> tuple[float | None, str | None]:
    """(clock / max clock of `uuid`, its backend) from an exporter's exposition text; (None, None) if absent."""
    clock = maximum = backend = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("uuid") != uuid:
                continue
            if sample.name == "rle_sm_clock_hertz":
                clock = sample.value
            elif sample.name == "rle_sm_clock_max_hertz":
                maximum = sample.value
            elif sample.name == "rle_device_info":
                backend = sample.labels.get("backend")
    if clock is None or not maximum:
        return None, backend
    return min(max(clock / maximum, MIN_CLOCK_RATIO), 1.0), backend


class ClockEmulation:
    """Polls `url` (an exporter's /metrics) for the clock of the simulated GPU `uuid`; `stretch_s(compute_s)`
    is the idle time that makes a step of `compute_s` last as long as on that clock."""

    def __init__(self, url: str, uuid: str) -> None:
        self.url, self.uuid = url, uuid
        self.ratio = 1.0  # the latest clock / max clock (1: full speed, and until the first reading)
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="thermograd-clock-emulation", daemon=True)
        self._thread.start()

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("clock emulation: %s", text)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2.0) as answer:
                    ratio, backend = read_clock_ratio(answer.read().decode("utf-8", "replace"), self.uuid)
            except (OSError, ValueError) as exc:
                self._warn_once("read", f"cannot read {self.url} ({exc}); steps run at full speed until it answers")
            else:
                if backend is not None and backend != "sim":
                    self._warn_once("real", f"{self.uuid} is no simulated GPU (backend {backend}): not emulated")
                    ratio = None
                self.ratio = 1.0 if ratio is None else ratio
            self._stop.wait(POLL_S)

    def stretch_s(self, compute_s: float) -> float:
        return max(compute_s, 0.0) * (1.0 / self.ratio - 1.0)

    def close(self) -> None:
        self._stop.set()
