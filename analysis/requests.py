"""What one analysis is asked to do, as typed values: the command line's flags are turned into these once
(arguments.py) and every layer below takes them, never the argparse namespace. Frozen and picklable: a run's
request is handed to a worker process as it is."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from thermograd.analysis.coupling.settings import Settings
from thermograd.analysis.errors import InputError
from thermograd.analysis.table import DEFAULT_MAX_ROWS


@dataclass(frozen=True)
class ClientOptions:
    """How to reach a Prometheus-compatible HTTP API (sources.client.PromClient's arguments)."""

    url: str
    timeout_s: float = 30.0
    retries: int = 4
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    progress: bool = False

    def client(self):  # -> PromClient; imported here so that a request does not pull in the HTTP client
        from thermograd.analysis.sources.client import PromClient

        return PromClient(self.url, timeout_s=self.timeout_s, retries=self.retries, bearer_token=self.bearer_token,
                          basic_auth=self.basic_auth, headers=dict(self.headers), progress=self.progress)


@dataclass(frozen=True)
class Window:
    """The window flags, checked: `start_s`/`end_s` None where not given (then the run's own first sample, and
    now or the run's last sample), `lookback_s` how far back from the end runs are looked for."""

    start_s: float | None = None
    end_s: float | None = None
    lookback_s: float = 30 * 86400.0

    def bounds(self, now_s: float | None = None) -> tuple[float, float]:
        """(start, end) in Unix seconds: the end given or now, the start given or the end less the look-back."""
        end_s = self.end_s if self.end_s is not None else (time.time() if now_s is None else now_s)
        start_s = self.start_s if self.start_s is not None else end_s - self.lookback_s
        if start_s >= end_s:
            raise InputError("--start must be before --end")
        return start_s, end_s


@dataclass(frozen=True)
class StoreRun:
    """One run's series in a store: which run, rank, GPU and hardware source, in which window."""

    client: ClientOptions
    window: Window = Window()
    run_id: str | None = None  # None: the most recent run
    rank: str | None = None
    device: str | None = None
    hardware_source: str = "auto"
    rated_power_w: float | None = None  # for a source whose RLE the analysis computes
    temp_limit_c: float | None = None


@dataclass(frozen=True)
class FileRun:
    """One run's offline files: the training log and the hardware CSV."""

    grad_log: Path
    rle_csv: Path
    device: str | None = None
    tz: str | None = None  # of naive timestamps; None: UTC


@dataclass(frozen=True)
class Grid:
    """The grid the series go on: `step_s` None for the source's own (scrape or sampling interval); `step_flag`
    the --step text as given (said in messages); `max_rows` the memory budget in rows."""

    step_s: float | None = None
    step_flag: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS


@dataclass(frozen=True)
class RunRequest:
    """Analyse one run from `source` on `grid` with `settings`; write its report and figures to `out`."""

    source: StoreRun | FileRun
    settings: Settings
    out: Path
    grid: Grid = Grid()
    warmup_flag: str = "30s"  # as given: a note names it when the run is too short for it


@dataclass(frozen=True)
class JobRequest:
    """Analyse one job of many ranks: from `job_dir` (files) or from a store (`store`, `run_id` None for the
    most recent job); write its report and figure to `out`."""

    out: Path
    alpha: float = 0.05
    step_s: float | None = None
    job_dir: Path | None = None
    tz: str | None = None
    store: ClientOptions | None = None
    window: Window = Window()
    run_id: str | None = None
