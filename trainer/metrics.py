"""`TrainingMetrics`: /metrics for any training loop in two lines.

    metrics = TrainingMetrics(port=9843)              # serves /metrics from a background thread
    metrics.observe_step(step, loss, grad_norm, lr)   # once per optimizer step

Why a custom collector instead of prometheus_client's Gauge/Counter objects: `observe_step` only
updates plain Python numbers under one uncontended lock (a few µs in all), and a scrape copies that
snapshot under the same lock and renders it after releasing it, so no lock is ever held across I/O.
The metrics live in the object's own registry, never prometheus_client's global one, so two
instances (or a user's own metrics) never collide. Names are those of docs/metrics.md.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from thermograd.exporter.httpserve import BoundedHTTPServer, serve_in_thread
from thermograd.trainer.identity import default_rank, default_world_size, detect_gpu_uuid, new_run_id
from thermograd.trainer.steplog import StepLog


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    # Rounded to 6 significant digits so `le` labels read 10000.0, not 10000.000000000004.
    return tuple(float(f"{start * factor**i:.6g}") for i in range(count))


# Gradient norms span many decades between a converged fine-tune and a diverging run: quarter-decade
# buckets from 1e-4 to 1e4 (33 bounds, each ×1.78) keep the relative error of a quantile under ~±30 %.
GRAD_NORM_BUCKETS = exponential_buckets(1e-4, 10 ** 0.25, 33)
# Step times from 1 ms (a tiny model on a GPU) to ~2 min (a large model on a CPU), doubling.
STEP_DURATION_BUCKETS_S = exponential_buckets(1e-3, 2.0, 18)


class MetricsPortError(OSError):
    """The /metrics port could not be bound (in use, or not permitted)."""


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

    `rank` defaults to the RANK environment variable (0 if unset), `run_id` to a generated id
    (`run_id` attribute), `world_size` to WORLD_SIZE. `gpu_uuid=None` detects the NVML UUID of the
    CUDA device given in `device` ('' on CPU); pass a string to override (e.g. 'sim-0').
    `log_dir` adds the JSON Lines step log and, at `close()`, `grad_norm_log.json`.
    `max_grad_norm` lets `observe_step` infer `clipped` when the caller does not say.
    `port=0` picks a free port (see `port` after start). Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        port: int = 9843,
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
        linger_s: float = 0.0,
        start: bool = True,
    ) -> None:
        self.run_id = run_id or new_run_id()
        self.rank = default_rank() if rank is None else int(rank)
        self.bind = bind
        self.port = port
        self.linger_s = linger_s
        self.max_grad_norm = max_grad_norm if _finite(max_grad_norm) and max_grad_norm > 0 else None
        self.start_time_s = time.time()
        self._labels = (self.run_id, str(self.rank))
        self._lock = threading.Lock()
        self._state = _State()
        self._grad_hist = _Histogram(GRAD_NORM_BUCKETS)
        self._duration_hist = _Histogram(STEP_DURATION_BUCKETS_S)
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
        if start:
            self.start()  # before the log exists: a taken port must not leave empty log files behind
        if log_dir is not None:
            try:
                self.steplog = StepLog(log_dir, self.run_id, self.rank)
            except OSError:
                self.close(linger_s=0)
                raise

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start serving /metrics (idempotent). Raises MetricsPortError if the port is taken."""
        if self._server is not None:
            return
        routes = {"/metrics": lambda: (200, generate_latest(self.registry), CONTENT_TYPE_LATEST)}
        try:
            self._server = BoundedHTTPServer((self.bind, self.port), routes, name="trainer")
        except OSError as exc:
            raise MetricsPortError(exc.errno, f"cannot serve /metrics on {self.bind}:{self.port}: {exc.strerror or exc}") from None
        self._server_thread = serve_in_thread(self._server)
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def close(self, linger_s: float | None = None) -> None:
        """Flush the logs (JSON Lines + grad_norm_log.json), keep /metrics up `linger_s` seconds
        (default: the constructor's) so the last values get scraped, then stop serving. Idempotent."""
        if self._closed:
            return
        self._closed = True
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
        info = {
            "model": model,
            "device": device,
            "gpu_uuid": detect_gpu_uuid(device) if gpu_uuid is None else gpu_uuid,
            "world_size": str(default_world_size() if world_size is None else world_size),
        }
        with self._lock:
            self._state.info = info

    @property
    def run_info(self) -> dict[str, str]:
        return dict(self._state.info)

    def begin_step(self) -> None:
        """Optional: mark the start of a step, so its duration excludes time spent outside the step."""
        self._last_mark_s = time.perf_counter()

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
        pause_s, pause_start_unix = self._pause_s, self._pause_start_unix
        self._pause_s, self._pause_start_unix = 0.0, None
        if self.steplog is not None:
            self.steplog.append((
                step, loss, grad_norm, learning_rate, epoch, time.time(), tokens,
                bool(clipped), bool(nonfinite), lr_burst, pause_s, pause_start_unix,
            ))

    def snapshot(self) -> tuple[_State, tuple, tuple]:
        """A consistent copy of everything a scrape renders (taken under the lock, rendered outside)."""
        with self._lock:
            state = _State(**{**self._state.__dict__, "info": dict(self._state.info),
                              "perturbation": dict(self._state.perturbation)})
            return state, self._grad_hist.snapshot(), self._duration_hist.snapshot()


@dataclass(frozen=True)
class RankEndpoint:
    """How a framework callback opens its own `TrainingMetrics` once the framework knows the process's
    ranks: one endpoint per rank, on `port` + local rank so that the ranks of one host never collide
    (`port=0`: each rank picks a free port)."""

    port: int = 9843
    bind: str = "127.0.0.1"
    run_id: str | None = None
    log_dir: str | os.PathLike[str] | None = None
    linger_s: float = 0.0

    def open(self, *, local_rank: int, rank: int, world_size: int, max_grad_norm: float | None) -> TrainingMetrics:
        return TrainingMetrics(
            port=self.port + local_rank if self.port else 0, bind=self.bind, run_id=self.run_id, rank=rank,
            world_size=world_size, log_dir=self.log_dir, linger_s=self.linger_s, max_grad_norm=max_grad_norm,
        )


class _Collector:
    """Renders a TrainingMetrics snapshot as metric families (called on each scrape)."""

    def __init__(self, owner: TrainingMetrics) -> None:
        self._owner = owner

    def collect(self):
        owner = self._owner
        state, grad_hist, duration_hist = owner.snapshot()
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
            labels=[*names, "model", "device", "gpu_uuid", "world_size"],
        )
        info.add_metric(
            [*labels, state.info["model"], state.info["device"], state.info["gpu_uuid"], state.info["world_size"]], 1
        )
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
