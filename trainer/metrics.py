"""`TrainingMetrics`: /metrics for any training loop in two lines.

    with TrainingMetrics() as metrics:                    # serves /metrics from a background thread
        ...
        metrics.observe_step(step, loss, grad_norm, lr)   # once per optimizer step

Under `thermograd run` the run's folder, id, pause schedule and port come from the environment
(trainer/environment.py); an argument given here always wins.

Why a custom collector instead of prometheus_client's Gauge/Counter objects: `observe_step` only
updates plain Python numbers under one uncontended lock (a few µs in all), and a scrape copies that
snapshot under the same lock and renders it after releasing it, so no lock is ever held across I/O.
The metrics live in the object's own registry, never prometheus_client's global one, so two
instances (or a user's own metrics) never collide. Names are those of docs/metrics.md.
"""

from __future__ import annotations

import atexit
import bisect
import math
import os
import signal
import sys
import threading
import time
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from thermograd.endpoint.bodycache import RenderCache
from thermograd.endpoint.server import TEXT, BoundedHTTPServer, serve_in_thread
from thermograd.endpoint.webconfig import WebConfig
from thermograd.endpoint.webconfig import resolve as resolve_web_config
from thermograd.trainer.environment import PAUSES, PAUSES_OFF, RunEnvironment, register
from thermograd.trainer.environment import RUN_DIR as RUN_DIR_VARIABLE
from thermograd.trainer.identity import (
    default_local_rank,
    default_rank,
    default_world_size,
    detect_gpu_uuid,
    new_run_id,
)
from thermograd.trainer.perturb import PerturbError, PerturbSchedule, PerturbSpec, parse_perturb
from thermograd.trainer.steplog import LogExistsError, StepLog


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    # Rounded to 6 significant digits so `le` labels read 10000.0, not 10000.000000000004.
    return tuple(float(f"{start * factor**i:.6g}") for i in range(count))


# Gradient norms span many decades between a converged fine-tune and a diverging run: quarter-decade
# buckets from 1e-4 to 1e4 (33 bounds, each ×1.78) keep the relative error of a quantile under ~±30 %.
GRAD_NORM_BUCKETS = exponential_buckets(1e-4, 10 ** 0.25, 33)
# Step times from 1 ms (a tiny model on a GPU) to ~2 min (a large model on a CPU), doubling.
STEP_DURATION_BUCKETS_S = exponential_buckets(1e-3, 2.0, 18)


DEFAULT_PORT = 9843


class MetricsPortError(OSError):
    """The /metrics port could not be bound (in use, or not permitted)."""


def rank_port(base: int | None, local_rank: int) -> int:
    """The port a rank serves on when none is given for it: `base` (THERMOGRAD_PORT, else 9843, when None) plus
    the local rank, so the ranks of one host never collide; base 0 stays 0 (each rank picks a free port)."""
    if base is None:
        env_port = RunEnvironment.read().port
        base = env_port if env_port is not None else DEFAULT_PORT
    return base + local_rank if base else 0


RUN_ID_FIELD = "{run_id}"  # in a log_dir: replaced by the run's id, so each run gets a folder of its own


def _say(text: str) -> None:
    print(f"TrainingMetrics: {text}", file=sys.stderr, flush=True)


def pause_schedule(pauses: str | PerturbSpec | None, env: RunEnvironment) -> PerturbSpec | None:
    """The pause bursts to take: `pauses` when given (a spec in `--perturb kind=pause,...` syntax, a parsed
    spec, or "off"), else THERMOGRAD_PAUSES, else none. Raises ValueError naming what is wrong."""
    where = "pauses"
    if pauses is None:
        pauses, where = env.pauses, PAUSES
    if pauses is None or pauses == PAUSES_OFF:
        return None
    if isinstance(pauses, PerturbSpec):
        spec = pauses
    else:
        text = pauses if "kind=" in pauses else f"kind=pause,{pauses}"
        try:
            spec = parse_perturb(text)
        except PerturbError as exc:
            raise ValueError(f"{where}={pauses!r}: {exc}") from None
    if spec.kind != "pause":
        raise ValueError(f"{where}: a pause schedule needs kind=pause, got kind={spec.kind}")
    return spec


def _log_taken_fix(given: object, env: RunEnvironment) -> str:
    """How to go on when the log folder already holds a run's log: a folder of its own for each run."""
    if given is None:  # THERMOGRAD_RUN_DIR: thermograd run makes a new folder per run, so it was set by hand
        return f"{RUN_DIR_VARIABLE} must name a new folder for each run"
    if RUN_ID_FIELD in str(given):
        return "give another run_id or log_dir"
    suggestion = str(Path(str(given)) / RUN_ID_FIELD)
    return (f"give each run a folder of its own, e.g. log_dir={suggestion!r} ({RUN_ID_FIELD} is replaced by the "
            "run's id), or leave log_dir unset under `thermograd run` (the step log goes to the run's own folder)")


def run_seed(run_id: str) -> int:
    """One seed per run, the same in every rank: ranks that wait for each other pause together."""
    return zlib.crc32(run_id.encode())


# Instances not closed yet: closed at interpreter exit (an exception or Ctrl-C that ends the script without
# reaching close() still drains the step log and writes grad_norm_log.json).
_OPEN: weakref.WeakSet[TrainingMetrics] = weakref.WeakSet()


@atexit.register
def _close_open_instances() -> None:
    for metrics in list(_OPEN):
        metrics.close()


def _sigterm_exits_cleanly() -> None:
    """Under `thermograd run`, a SIGTERM with no handler of the program's own ends it like Ctrl-C does
    (SystemExit: `with` blocks and `finally` run, the log is flushed) instead of killing it on the spot. Only
    from the main thread, and never over a handler the program (or its framework) installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        exiting = threading.Event()

        def exit_143(signum: int, frame: object) -> None:
            # once: a second SIGTERM during the clean exit (a SIGKILLed supervisor's kernel sends one per thread)
            # would cut it short and lose grad_norm_log.json; the supervisor's SIGKILL still ends a hung exit
            if not exiting.is_set():
                exiting.set()
                raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, exit_143)


class _Histogram:
    """Non-cumulative bucket counts; cumulative only when rendered (cheap observe)."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value: Prometheus's `le`
        self.total += value
        self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        return list(self.counts), self.total, self.count


@dataclass
class _State:
    # None until first observed: a gauge with no value yet is absent from /metrics, not NaN
    # (a NaN would make max()/avg() over every rank NaN in PromQL).
    step: float | None = None
    steps: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    epoch: float | None = None
    tokens: int = 0
    clipped: int = 0
    nonfinite: int = 0
    # train_perturbation_active by kind: "lr" always (0 outside bursts), "pause" once a pause is declared.
    perturbation: dict[str, int] = field(default_factory=lambda: {"lr": 0})
    info: dict[str, str] = field(default_factory=dict)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _check_step_inputs(tokens: int, duration_s: float | None) -> None:
    # A counter must never go down and a histogram's _sum must stay finite: one bad call would
    # corrupt every rate() over this run for good, so refuse it instead of publishing it.
    if tokens < 0:
        raise ValueError(f"observe_step: tokens must be >= 0, got {tokens}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"observe_step: duration_s must be a finite number >= 0, got {duration_s}")


class TrainingMetrics:
    """Serves the trainer metrics of docs/metrics.md for one rank of one run.

    `rank` defaults to the RANK environment variable (0 if unset), `run_id` to THERMOGRAD_RUN_ID or a
    generated id (`run_id` attribute), `world_size` to WORLD_SIZE. `gpu_uuid=None` detects the NVML UUID of
    the CUDA device given in `device` ('' on CPU, or THERMOGRAD_GPU_UUID); pass a string to override (e.g.
    'sim-0'). `log_dir` (default THERMOGRAD_RUN_DIR, else none) adds the JSON Lines step log and, at `close()`
    or `flush()`, `grad_norm_log.json`; `{run_id}` in it is replaced by the run id (a folder of its own per run:
    a folder already holding a run's log is refused, never overwritten). `max_grad_norm` lets `observe_step`
    infer `clipped` when the caller does not say. `port` defaults to THERMOGRAD_PORT, else 9843, plus the
    local rank (LOCAL_RANK) as the callbacks do, so the ranks of one host never collide; `port=0` (or
    THERMOGRAD_PORT=0) picks a free port (see `port` after start); a port given is used as is. `linger_s`
    (default THERMOGRAD_LINGER_S, else 0) keeps /metrics up that long at `close()`.

    `pauses` schedules pause bursts, the analysis's positive control: a spec in `--perturb` syntax without
    `kind=` ("every=200s,duration=3s,jitter=0.2,start=40s"), "off", or None for THERMOGRAD_PAUSES. A due
    pause is taken at the end of `observe_step` — a step boundary, after the step's host sync — by idling
    for its duration (`begin_pause`/`end_pause` mark it; call those yourself to pause on your own terms).

    `web_config` (a path, or a loaded `thermograd.endpoint.webconfig.WebConfig`) serves /metrics with TLS,
    client certificates and/or basic auth, from a Prometheus exporter-toolkit web config file
    (docs/web-config.md); a bad file raises `WebConfigError` (a ValueError) before anything is opened.

    Use as a context manager (an exception or Ctrl-C still flushes the log and serves the last scrape) or
    call `close()`; an instance never closed is closed at interpreter exit.
    """

    def __init__(
        self,
        port: int | None = None,
        bind: str = "127.0.0.1",
        run_id: str | None = None,
        rank: int | None = None,
        *,
        model: str = "",
        device: str = "cpu",
        gpu_uuid: str | None = None,
        world_size: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        max_grad_norm: float | None = None,
        linger_s: float | None = None,
        start: bool = True,
        pauses: str | PerturbSpec | None = None,
        pause_seed: int | None = None,
        web_config: str | os.PathLike[str] | WebConfig | None = None,
        emulate_clock: str | None = None,
        auto_pause: bool = True,
    ) -> None:
        # First: a bad web config file (WebConfigError, a ValueError) must fail before anything is opened.
        self.web_config = resolve_web_config(web_config)
        env = RunEnvironment.read()
        self.env = env
        self.run_id = run_id or env.run_id or new_run_id()
        self.rank = default_rank() if rank is None else int(rank)
        self.bind = bind
        self.port = port if port is not None else rank_port(env.port, default_local_rank())
        self.linger_s = linger_s if linger_s is not None else env.linger_s or 0.0
        pause_spec = pause_schedule(pauses, env)
        self._pauses = None if pause_spec is None else PerturbSchedule(
            pause_spec, run_seed(self.run_id) if pause_seed is None else pause_seed)
        self._pauses_served = -1  # index of the last burst taken
        self._auto_pause = auto_pause  # False: the caller takes them (ranks that agree on when: trainer/ranks.py)
        self._pause_cancel = threading.Event()
        self._clock_start_s: float | None = None  # the pause schedule's zero: the first step boundary seen
        self._emulate_url = emulate_clock or env.emulate_clock
        self._emulation: Any = None  # trainer.emulation.ClockEmulation, once the rank's GPU is known
        self.max_grad_norm = max_grad_norm if _finite(max_grad_norm) and max_grad_norm > 0 else None
        self.start_time_s = time.time()
        self._labels = (self.run_id, str(self.rank))
        self._lock = threading.Lock()
        self._state = _State()
        self._grad_hist = _Histogram(GRAD_NORM_BUCKETS)
        self._duration_hist = _Histogram(STEP_DURATION_BUCKETS_S)
        self._compute_hist = _Histogram(STEP_DURATION_BUCKETS_S)
        self._wait_hist = _Histogram(STEP_DURATION_BUCKETS_S)
        self._waits: Any = None  # trainer.waits.CollectiveWaits once watch(model) was called
        self._added_wait_s = 0.0  # waits the loop timed itself (add_wait) since the last step
        self._last_mark_s: float | None = None
        self._pause_start: tuple[float, float] | None = None  # (Unix time, perf_counter) of a pause going on
        self._pause_s = 0.0  # idle seconds since the last observed step, and when that idling began
        self._pause_start_unix: float | None = None
        self.set_run_info(model=model, device=device, gpu_uuid=gpu_uuid, world_size=world_size)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._linger_cancel = threading.Event()
        self._closed = False
        self.steplog: StepLog | None = None
        given_log_dir = log_dir  # '{run_id}' in it is replaced: a folder of its own per run
        log_dir = env.run_dir if log_dir is None else Path(str(log_dir).replace(RUN_ID_FIELD, self.run_id))
        _OPEN.add(self)
        if start:
            self.start()  # before the log exists: a taken port must not leave empty log files behind
        if log_dir is not None:
            try:
                self.steplog = StepLog(log_dir, self.run_id, self.rank)
            except LogExistsError as exc:
                self.close(linger_s=0)
                raise LogExistsError(exc.path, _log_taken_fix(given_log_dir, env)) from None
            except OSError:
                self.close(linger_s=0)
                raise
        if given_log_dir is not None and env.run_dir is not None and self.rank == 0 \
                and Path(log_dir).resolve() != env.run_dir.resolve():
            _say(f"log_dir={str(given_log_dir)!r} was given, so the step log goes to {log_dir}, not to the run's "
                 f"folder {env.run_dir}: thermograd run analyses one rank's log there, but compares a job's ranks only "
                 "in the run's folder; leave log_dir unset under thermograd run to keep the whole run in its folder")
        if self._pauses is not None:
            self.set_perturbation(False, kind="pause")  # the series exists from the start: pauses are scheduled
        if env.run_dir is not None:
            _sigterm_exits_cleanly()
            self._register()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start serving /metrics (idempotent). Raises MetricsPortError if the port is taken."""
        if self._server is not None:
            return
        body = RenderCache(self._scrape_version, lambda: generate_latest(self.registry))
        # /healthz: up and serving, for a container or pod probe
        # (no credentials needed: thermograd.endpoint.server.OPEN_PATHS)
        routes = {"/metrics": lambda: (200, body.get(), CONTENT_TYPE_LATEST),
                  "/healthz": lambda: (200, b"ok: serving\n", TEXT)}
        try:
            self._server = BoundedHTTPServer((self.bind, self.port), routes, name="trainer",
                                             web=self.web_config)
        except OSError as exc:
            raise MetricsPortError(exc.errno, f"cannot serve /metrics on {self.bind}:{self.port}: "
                                              f"{exc.strerror or exc}") from None
        self._server.body_cache = body
        self._server_thread = serve_in_thread(self._server)
        self.port = int(self._server.server_address[1])
        self._register()

    def _register(self) -> None:
        """Under `thermograd run`: tell it where this rank serves and logs (trainer/environment.py)."""
        if self.env.run_dir is None:
            return
        register(self.env.run_dir, self.rank, {
            "run_id": self.run_id, "rank": self.rank, "pid": os.getpid(),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0") or 0),
            "url": self.url if self._server is not None else None,
            "address": f"{self.bind}:{self.port}" if self._server is not None else None,
            "steps_jsonl": str(Path(self.steplog.jsonl_path).resolve()) if self.steplog is not None else None,
            "gpu_uuid": self._state.info.get("gpu_uuid", ""), "pauses": self._pauses is not None,
        })

    def _scrape_version(self) -> tuple:
        """Everything a scrape shows, compared rather than rendered: /metrics is rendered again only when
        it differs from what the cached body was rendered from (a step, a run-info or perturbation change,
        a dropped log record, an HTTP counter)."""
        server, steplog = self._server, self.steplog
        return (self._snapshot_all(), steplog.dropped if steplog is not None else 0,
                server.stats.version if server is not None else 0)

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        scheme = self.web_config.scheme if self.web_config is not None else "http"
        return f"{scheme}://{host}:{self.port}/metrics"

    def close(self, linger_s: float | None = None) -> None:
        """Flush the logs (JSON Lines + grad_norm_log.json), keep /metrics up `linger_s` seconds
        (default: the constructor's) so the last values get scraped, then stop serving. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self.cancel_pause()
        if self._emulation is not None:
            self._emulation.close()
        if self.steplog is not None:
            self.steplog.close()
        linger = self.linger_s if linger_s is None else linger_s
        if self._server is not None:
            if linger > 0:  # inf / huge: wait "forever" (until cancel_linger) instead of OverflowError
                self._linger_cancel.wait(min(linger, threading.TIMEOUT_MAX))
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def cancel_linger(self) -> None:
        """End a `close()` that is lingering (e.g. on a second Ctrl-C)."""
        self._linger_cancel.set()

    def flush(self) -> None:
        """Write every step logged so far to disk and `grad_norm_log.json` from it, and keep going (for an
        instance someone else closes: the callbacks flush one they were given at the end of training)."""
        if self.steplog is not None and not self._closed:
            self.steplog.flush()

    def __enter__(self) -> TrainingMetrics:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- updates ---------------------------------------------------------------------------
    def set_run_info(
        self, *, model: str = "", device: str = "cpu", gpu_uuid: str | None = None, world_size: int | None = None
    ) -> None:
        """(Re)set the `train_run_info` labels, e.g. once the model and device are known."""
        if gpu_uuid is None:
            # THERMOGRAD_GPU_UUID may name each rank's own card: "sim-{local_rank}"
            fallback = (self.env.gpu_uuid or "").replace("{local_rank}", os.environ.get("LOCAL_RANK", "0") or "0")
            gpu_uuid = detect_gpu_uuid(device) or fallback
        info = {
            "model": model,
            "device": device,
            "gpu_uuid": gpu_uuid,
            "world_size": str(default_world_size() if world_size is None else world_size),
            "emulation": "clock" if self._emulate_url else "",
        }
        self._emulate(gpu_uuid)
        with self._lock:
            self._state.info = info
        if getattr(self, "_server", None) is not None:  # re-register once the GPU is known
            self._register()

    @property
    def run_info(self) -> dict[str, str]:
        return dict(self._state.info)

    def watch(self, model: Any, on_local_done: Any = None) -> Any:
        """Measure this rank's waits on collectives (DDP's all-reduce, FSDP2's all-gathers and
        reduce-scatters) in `model`'s forward and backward, so each step's compute time is published apart from
        its wait (`train_step_compute_seconds`, `train_step_wait_seconds`): under DDP/FSDP2 every rank's wall
        step time is the same, its compute time is not. No host sync of its own (trainer/waits.py). Returns
        `model`. The callbacks call it for you; in a job of one process (no process group of several ranks) there
        is nothing to wait for, and every step's wait is 0."""
        from thermograd.trainer.waits import CollectiveWaits

        if self._waits is not None:
            self._waits.remove()
        self._waits = CollectiveWaits(model, on_local_done or self._stretch_in_step)
        return model

    def add_wait(self, seconds: float) -> None:
        """Count `seconds` of this step as waiting on other ranks: a collective the loop runs itself, outside the
        watched model (a barrier, an all-reduce of a flag), timed by the caller."""
        if math.isfinite(seconds) and seconds > 0:
            self._added_wait_s += seconds

    def _stretch_in_step(self) -> None:
        """The emulated clock path inside the step: at the end of the backward's local compute, before it
        waits for the other ranks, so a rank on a throttled card arrives late at its collectives, as a slow GPU
        would, and the others' wait shows it (trainer/emulation.py)."""
        if self._emulation is None or self._last_mark_s is None:
            return
        waited_s = self._waits.waited_so_far_s if self._waits is not None else 0.0
        self._stretch(time.perf_counter() - self._last_mark_s - waited_s)

    def _split_compute(self, duration_s: float | None) -> tuple[float | None, float | None]:
        """(compute, wait) seconds of a step: measured waits when watched; no waits in a job of one process;
        unknown (None) otherwise."""
        if duration_s is None:
            return None, None
        added_s, self._added_wait_s = self._added_wait_s, 0.0
        if self._waits is not None:
            wait_s = min(self._waits.take_s() + added_s, duration_s)
            return duration_s - wait_s, wait_s
        if self._state.info.get("world_size", "1") == "1":
            return duration_s, 0.0
        return None, None

    def _emulate(self, gpu_uuid: str) -> None:
        """(Re)start the emulated clock path for the rank's GPU (trainer/emulation.py), when asked for."""
        if not self._emulate_url or getattr(self, "_emulation_uuid", None) == gpu_uuid:
            return
        from thermograd.trainer.emulation import ClockEmulation

        if self._emulation is not None:
            self._emulation.close()
        self._emulation_uuid = gpu_uuid
        self._emulation = ClockEmulation(self._emulate_url, gpu_uuid) if gpu_uuid else None

    def _stretch(self, compute_s: float | None) -> float:
        """The emulated clock path: idle for the step's compute x (max clock / clock - 1), now, inside the step
        (so its duration and compute time include it, and ranks that wait for this one wait for it). Returns
        the seconds idled."""
        emulation = self._emulation
        if emulation is None or compute_s is None:
            return 0.0
        extra_s = emulation.stretch_s(compute_s)
        if extra_s > 0:
            time.sleep(extra_s)
        return extra_s

    def begin_step(self) -> None:
        """Optional: mark the start of a step, so its duration excludes time spent outside the step."""
        self._last_mark_s = time.perf_counter()
        if self._clock_start_s is None:
            self._clock_start_s = time.monotonic()

    def _due_burst(self) -> int | None:
        """The index of the scheduled burst due now and not taken yet (None: none)."""
        if self._pauses is None or self._pause_cancel.is_set():
            return None
        now_s = time.monotonic()
        if self._clock_start_s is None:
            self._clock_start_s = now_s
        index = self._pauses.latest_burst(now_s - self._clock_start_s)
        return index if index > self._pauses_served else None

    def pause_due(self) -> bool:
        """Whether a scheduled pause burst is due now (ranks that must pause together agree on it first)."""
        return self._due_burst() is not None

    def pause_if_due(self, due: bool | None = None) -> bool:
        """Take the scheduled pause burst that is due, if any (idle for its duration between two steps; a
        signal or `cancel_pause()` cuts it short). `observe_step` calls this at its end; call it yourself
        only to pause at another step boundary. `due=True` pauses now whatever this rank's own clock says
        (the ranks agreed a burst is due). Returns whether a pause was taken."""
        index = self._due_burst()
        if due is not None and self._pauses is not None and not self._pause_cancel.is_set():
            if not due:
                return False
            index = self._pauses_served + 1 if index is None else index
        if index is None:
            return False
        self._pauses_served = index
        self.begin_pause()
        try:
            self._pause_cancel.wait(self._pauses.spec.duration)
        finally:
            self.end_pause()
        return True

    def cancel_pause(self) -> None:
        """End a pause going on and take no more (the run is stopping)."""
        self._pause_cancel.set()

    def set_perturbation(self, active: bool, kind: str = "lr") -> None:
        """Set `train_perturbation_active{kind=...}`; a kind's series exists from its first call on."""
        with self._lock:
            self._state.perturbation[kind] = int(active)

    def begin_pause(self) -> None:
        """The loop starts idling (a pause burst): `train_perturbation_active{kind="pause"}` is 1 until
        `end_pause()`. A pause is not a step: it is not counted and is left out of the next step's duration."""
        self._pause_start = (time.time(), time.perf_counter())
        self.set_perturbation(True, kind="pause")

    def end_pause(self) -> None:
        """The pause is over: the next step is timed from now, and its log record carries `pause_s`."""
        if self._pause_start is None:
            return
        start_unix, start_perf = self._pause_start
        self._pause_start = None
        now_s = time.perf_counter()
        self._pause_s += now_s - start_perf
        if self._pause_start_unix is None:
            self._pause_start_unix = start_unix
        self._last_mark_s = now_s  # like begin_step(): the idle time is outside the step
        self.set_perturbation(False, kind="pause")

    def set_loss(self, loss: float) -> None:
        """Update only `train_loss` (e.g. from a coarser log when per-step loss is unavailable)."""
        with self._lock:
            self._state.loss = float(loss)

    def observe_step(
        self,
        step: int,
        loss: float | None,
        grad_norm: float | None,
        learning_rate: float | None,
        tokens: int = 0,
        epoch: float | None = None,
        *,
        clipped: bool | None = None,
        nonfinite: bool | None = None,
        perturbation: bool | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Record one optimizer step. Pass Python numbers: a tensor (or numpy scalar) works for any
        argument but costs a host sync each (`int()` / `float()` of a 0-d device tensor).

        `step` and `tokens` are stored as int, `epoch`, `loss`, `grad_norm`, `learning_rate` as float,
        so the step log always gets JSON-serialisable values.

        `grad_norm` is the total L2 norm before clipping. A non-finite loss or norm is published on
        the gauges as is, counted in `train_nonfinite_steps_total` and kept out of the histogram
        (one NaN would poison `_sum` forever). `None` leaves a gauge unchanged.
        `duration_s` defaults to the time since the previous `observe_step` (or `begin_step`).
        Raises ValueError (recording nothing) for negative `tokens` or a non-finite or negative
        `duration_s`.
        """
        now_s = time.perf_counter()
        if self._clock_start_s is None:
            self._clock_start_s = time.monotonic()
        if duration_s is None and self._last_mark_s is not None:
            duration_s = now_s - self._last_mark_s
        step = int(step)
        tokens = int(tokens)
        duration_s = None if duration_s is None else float(duration_s)
        _check_step_inputs(tokens, duration_s)
        self._last_mark_s = now_s  # only once accepted: a rejected call records nothing, its time included
        epoch = None if epoch is None else float(epoch)
        loss = None if loss is None else float(loss)
        grad_norm = None if grad_norm is None else float(grad_norm)
        learning_rate = None if learning_rate is None else float(learning_rate)
        if nonfinite is None:
            nonfinite = (loss is not None and not math.isfinite(loss)) or (
                grad_norm is not None and not math.isfinite(grad_norm)
            )
        if clipped is None:
            clipped = self.max_grad_norm is not None and _finite(grad_norm) and grad_norm > self.max_grad_norm
        compute_s, wait_s = self._split_compute(duration_s)
        if self._emulation is not None and duration_s is not None and self._waits is None:
            # not watched: stretch at the step's end (a watched model is stretched inside its backward)
            extra_s = self._stretch(compute_s if compute_s is not None else duration_s)
            if extra_s:  # the step lasted that much longer, all of it compute; the next starts after it
                duration_s += extra_s
                compute_s = None if compute_s is None else compute_s + extra_s
                self._last_mark_s = time.perf_counter()
        state = self._state
        with self._lock:
            state.step = step
            state.steps += 1
            state.tokens += tokens
            if loss is not None:
                state.loss = loss
            if grad_norm is not None:
                state.grad_norm = grad_norm
                if math.isfinite(grad_norm):
                    self._grad_hist.observe(grad_norm)
            if learning_rate is not None:
                state.learning_rate = learning_rate
            if epoch is not None:
                state.epoch = epoch
            if perturbation is not None:
                state.perturbation["lr"] = int(perturbation)
            lr_burst = bool(state.perturbation["lr"])
            state.clipped += bool(clipped)
            state.nonfinite += bool(nonfinite)
            if duration_s is not None:
                self._duration_hist.observe(duration_s)
            if compute_s is not None:
                self._compute_hist.observe(compute_s)
                self._wait_hist.observe(wait_s)
            gpu_uuid, emulation = state.info.get("gpu_uuid", ""), state.info.get("emulation", "")
        pause_s, pause_start_unix = self._pause_s, self._pause_start_unix
        self._pause_s, self._pause_start_unix = 0.0, None
        if self.steplog is not None:
            self.steplog.append((
                step, loss, grad_norm, learning_rate, epoch, time.time(), tokens,
                bool(clipped), bool(nonfinite), lr_burst, pause_s, pause_start_unix, compute_s, wait_s, gpu_uuid,
                emulation,
            ))
        if self._pauses is not None and self._auto_pause:
            self.pause_if_due()

    def snapshot(self) -> tuple[_State, tuple, tuple]:
        """The state and the grad-norm and step-duration histograms, copied consistently."""
        return self._snapshot_all()[:3]

    def _snapshot_all(self) -> tuple[_State, tuple, tuple, tuple, tuple]:
        """A consistent copy of everything a scrape renders (taken under the lock, rendered outside):
        the state, then the grad-norm, step-duration, compute and wait histograms."""
        with self._lock:
            state = _State(**{**self._state.__dict__, "info": dict(self._state.info),
                              "perturbation": dict(self._state.perturbation)})
            return (state, self._grad_hist.snapshot(), self._duration_hist.snapshot(),
                    self._compute_hist.snapshot(), self._wait_hist.snapshot())


@dataclass(frozen=True)
class RankEndpoint:
    """How a framework callback opens its own `TrainingMetrics` once the framework knows the process's
    ranks: one endpoint per rank, on `port` + local rank so that the ranks of one host never collide
    (`port=0`: each rank picks a free port; None: THERMOGRAD_PORT, else 9843). `None` elsewhere means
    TrainingMetrics' own default (the environment `thermograd run` sets, else its built-in one)."""

    port: int | None = None
    bind: str = "127.0.0.1"
    run_id: str | None = None
    log_dir: str | os.PathLike[str] | None = None
    linger_s: float | None = None
    pauses: str | PerturbSpec | None = None
    web_config: str | os.PathLike[str] | WebConfig | None = None

    def open(self, *, local_rank: int, rank: int, world_size: int, max_grad_norm: float | None) -> TrainingMetrics:
        return TrainingMetrics(
            port=rank_port(self.port, local_rank), bind=self.bind, run_id=self.run_id, rank=rank,
            world_size=world_size, log_dir=self.log_dir, linger_s=self.linger_s, max_grad_norm=max_grad_norm,
            pauses=self.pauses, web_config=self.web_config,
        )


class _Collector:
    """Renders a TrainingMetrics snapshot as metric families (called on each scrape)."""

    def __init__(self, owner: TrainingMetrics) -> None:
        self._owner = owner

    def collect(self):
        owner = self._owner
        state, grad_hist, duration_hist, compute_hist, wait_hist = owner._snapshot_all()
        labels = list(owner._labels)
        names = ["run_id", "rank"]

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            if value is not None:
                family.add_metric(labels, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(labels, value)
            return family

        def histogram(name: str, doc: str, bounds: tuple[float, ...], snap: tuple) -> HistogramMetricFamily:
            counts, total, _ = snap
            cumulative, buckets = 0, []
            for bound, n in zip((*bounds, math.inf), counts, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            family = HistogramMetricFamily(name, doc, labels=names)
            family.add_metric(labels, buckets, total)
            return family

        info = GaugeMetricFamily(
            "train_run_info", "Run identity; gpu_uuid joins a rank to its GPU's rle_* series.",
            labels=[*names, "model", "device", "gpu_uuid", "world_size", "emulation"],
        )
        info.add_metric([*labels, *(state.info[k] for k in ("model", "device", "gpu_uuid", "world_size", "emulation"))],
                        1)
        yield info
        yield gauge("train_run_start_time_seconds", "Unix time the run started.", owner.start_time_s)
        yield gauge("train_step", "Global optimizer step of the last observed step.", state.step)
        yield counter("train_steps", "Optimizer steps observed.", state.steps)
        yield gauge("train_loss", "Loss of the last step.", state.loss)
        yield gauge("train_grad_norm", "Total L2 gradient norm of the last step, before clipping.", state.grad_norm)
        yield gauge("train_learning_rate", "Learning rate used by the last step.", state.learning_rate)
        yield gauge("train_epoch", "Fractional epoch.", state.epoch)
        yield histogram(
            "train_step_grad_norm", "Pre-clip gradient norm of every finite step.", GRAD_NORM_BUCKETS, grad_hist
        )
        yield histogram(
            "train_step_duration_seconds", "Wall time between consecutive observed steps.",
            STEP_DURATION_BUCKETS_S, duration_hist,
        )
        yield histogram(
            "train_step_compute_seconds", "Each step's time less this rank's waits on collectives.",
            STEP_DURATION_BUCKETS_S, compute_hist,
        )
        yield histogram(
            "train_step_wait_seconds", "Each step's time this rank waited on collectives (other ranks).",
            STEP_DURATION_BUCKETS_S, wait_hist,
        )
        yield counter("train_tokens", "Tokens processed.", state.tokens)
        yield counter(
            "train_clipped_steps", "Steps whose gradient norm exceeded the clipping threshold.", state.clipped
        )
        yield counter(
            "train_nonfinite_steps", "Steps with a non-finite loss or gradient norm.", state.nonfinite
        )
        perturbation = GaugeMetricFamily(
            "train_perturbation_active", "1 while a perturbation burst of this kind (lr, pause) is active.",
            labels=[*names, "kind"],
        )
        for kind, active in sorted(state.perturbation.items()):
            perturbation.add_metric([*labels, kind], active)
        yield perturbation
        steplog = owner.steplog
        yield counter("train_log_records_dropped", "Step-log records not written (queue full or I/O error).",
                      steplog.dropped if steplog is not None else 0)
        http = CounterMetricFamily("train_http_errors", "/metrics endpoint events by reason.",
                                   labels=[*names, "reason"])
        server = owner._server
        for reason, count in (server.stats.snapshot().items() if server is not None else ()):
            http.add_metric([*labels, reason], count)
        yield http
