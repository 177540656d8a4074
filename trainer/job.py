"""The reference training job: corpus → GPT-2 → AdamW with warm-up/decay, clipping, perturbations,
non-finite protection, every step published through TrainingMetrics.

`run()` checks everything that can be checked cheaply (data, port, log folder) before importing
torch, so bad input fails fast; torch and transformers load in `_train`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from thermograd.trainer.config import JobConfig
from thermograd.trainer.data import WindowSampler, corpus_byte_budget, corpus_files, read_documents
from thermograd.trainer.environment import RunEnvironment, RunEnvironmentError
from thermograd.trainer.errors import NonFiniteAbort, UsageError
from thermograd.trainer.identity import new_run_id
from thermograd.trainer.metrics import MetricsPortError, TrainingMetrics
from thermograd.trainer.perturb import PerturbSchedule
from thermograd.trainer.progress import Progress
from thermograd.trainer.ranks import Ranks, join
from thermograd.trainer.schedule import default_warmup_steps, lr_factor
from thermograd.trainer.steplog import LogExistsError
from thermograd.trainer.stopping import StopControl

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class JobResult:
    run_id: str
    log_dir: Path | None
    steps_done: int = 0
    tokens: int = 0
    nonfinite_steps: int = 0
    stopped_by_signal: bool = False
    step_durations_s: list[float] = field(default_factory=list)
    step_cpu_s: list[float] = field(default_factory=list)  # this process's CPU time per step (all threads)
    losses: list[float] = field(default_factory=list)

    def record(self, step: int, tokens: int, loss: float, duration_s: float, cpu_s: float, finite: bool) -> None:
        self.steps_done = step
        self.tokens += tokens
        self.losses.append(loss)
        self.step_durations_s.append(duration_s)
        self.step_cpu_s.append(cpu_s)
        self.nonfinite_steps += not finite


def _say(stream: TextIO, text: str) -> None:
    print(f"trainer: {text}", file=stream, flush=True)


DEFAULT_LOG_DIR = "out/trainer/{run_id}"


def resolve_log_dir(template: str | None, run_id: str, env: RunEnvironment | None = None) -> Path:
    """`{run_id}` in --log-dir becomes the run's id: a container restarted with the same command line
    (compose's fixed volume path) writes a fresh folder instead of being refused a previous run's. Without
    --log-dir, the run folder `thermograd run` gives (THERMOGRAD_RUN_DIR), else out/trainer/{run_id}."""
    if template is None and env is not None and env.run_dir is not None:
        return env.run_dir
    return Path((template or DEFAULT_LOG_DIR).replace("{run_id}", run_id))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def _start_metrics(cfg: JobConfig, run_id: str, log_dir: Path | None) -> TrainingMetrics | None:
    if not cfg.instrument:
        return None
    many = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    try:
        return TrainingMetrics(
            # one endpoint per rank: the ranks of one host on --port + their local rank (0: free ports)
            port=cfg.port + _local_rank() if cfg.port else cfg.port, bind=cfg.bind, run_id=run_id,
            model=cfg.model, device="", gpu_uuid="", log_dir=log_dir, max_grad_norm=cfg.max_grad_norm,
            linger_s=cfg.linger_s,
            # --perturb kind=pause wins, else THERMOGRAD_PAUSES (thermograd run's), seeded like the LR bursts;
            # the ranks of one job agree on each burst before they take it (trainer/ranks.py)
            pauses=cfg.pause, pause_seed=cfg.seed, auto_pause=not many, web_config=cfg.web_config,
        )
    except MetricsPortError as exc:
        raise UsageError(f"{exc.strerror} (is another trainer running? use --port)") from None
    except ValueError as exc:  # THERMOGRAD_PAUSES malformed
        raise UsageError(str(exc)) from None
    except LogExistsError as exc:
        raise UsageError(f"cannot write the step log in {log_dir}: {exc.path} already holds a run's log, and a run's "
                         "log is never overwritten: give --log-dir a new folder, or put {run_id} in it (replaced by "
                         "the run's id)") from None
    except OSError as exc:
        raise UsageError(f"cannot write the step log in {log_dir}: {exc.strerror or exc}") from None


def run(cfg: JobConfig, control: StopControl | None = None, stream: TextIO | None = None) -> JobResult:
    """Train per `cfg`. Raises UsageError (exit 2) or NonFiniteAbort (exit 3, logs flushed)."""
    control = control or StopControl()
    stream = stream or sys.stderr
    files = corpus_files(cfg.data)
    documents = read_documents(files, corpus_byte_budget(cfg.steps, cfg.batch_size, cfg.seq_len))
    if not documents:
        where = ", ".join(cfg.data) if cfg.data else "the Python standard library"
        raise UsageError(f"empty corpus: no text files found in {where}")
    try:
        env = RunEnvironment.read()
    except RunEnvironmentError as exc:
        raise UsageError(str(exc)) from None
    run_id = cfg.run_id or env.run_id or new_run_id()
    log_dir = None
    if cfg.instrument:
        log_dir = resolve_log_dir(cfg.log_dir, run_id, env)
    metrics = _start_metrics(cfg, run_id, log_dir)
    result = JobResult(run_id=run_id, log_dir=log_dir)
    if metrics is not None:
        control.on_first_signal(metrics.cancel_pause)  # a stopping run takes no (more) pause
        control.on_second_signal(metrics.cancel_linger)
        if not cfg.quiet:
            _say(stream, f"run_id={run_id} metrics {metrics.url} log {log_dir}")
    try:
        _train(cfg, documents, metrics, control, stream, result)
    finally:
        if metrics is not None:
            linger_s = metrics.linger_s if result.steps_done else 0.0  # nothing to scrape if no step ran
            if linger_s > 0 and not cfg.quiet:
                _say(stream, f"keeping /metrics up {linger_s:g} s for a final scrape")
            metrics.close(linger_s)  # flushes steps.jsonl and writes grad_norm_log.json before lingering
    return result


def _resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to torch")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass
class _Setup:
    """Everything a step needs, built once."""

    model: Any
    params: list
    optimizer: Any
    sampler: WindowSampler
    tokens: np.ndarray
    device: str
    autocast: Callable[[], contextlib.AbstractContextManager]
    ranks: Ranks | None = None  # one rank of several (torchrun): DDP, and stops and pauses agreed


@dataclass
class _StepOutcome:
    loss: float
    grad_norm: float
    clipped: bool
    tokens: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def _build(cfg: JobConfig, documents: list[bytes], metrics: TrainingMetrics | None, stream: TextIO) -> _Setup:
    import torch

    from thermograd.trainer.model import load_model

    device = _resolve_device(cfg.device)
    ranks = join(device)
    if ranks is not None and device == "cuda":
        device = ranks.device  # this rank's own GPU
    torch.manual_seed(cfg.seed)  # every rank starts from the same weights ...
    loaded = load_model(cfg.model, cfg.seq_len)
    model = loaded.model.to(device)
    model.train()
    tokens = loaded.tokenizer.encode_documents(documents)
    # ... and reads its own share of the data
    sampler = WindowSampler(len(tokens), cfg.seq_len, cfg.batch_size, cfg.seed + (ranks.rank if ranks else 0))
    params = [p for p in model.parameters() if p.requires_grad]
    if ranks is not None:
        model = ranks.wrap(model)
    if metrics is not None:
        gpu_uuid = None if cfg.gpu_uuid is None else cfg.gpu_uuid.replace("{local_rank}", str(_local_rank()))
        metrics.set_run_info(model=loaded.label, device=device, gpu_uuid=gpu_uuid,
                             world_size=ranks.world_size if ranks else 1)
        metrics.watch(model)  # compute time apart from waiting on the other ranks (trainer/waits.py)
    if not cfg.quiet:
        uuid = metrics.run_info["gpu_uuid"] if metrics is not None else ""
        _say(stream, f"model {loaded.label} ({loaded.n_params / 1e6:.2f} M params) on {device}"
             f"{' gpu_uuid=' + uuid if uuid else ''}; corpus {len(documents)} files, "
             f"{len(tokens):,} tokens ({sampler.n_windows:,} windows of {cfg.seq_len})")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    if device == "cuda":
        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    return _Setup(model, params, optimizer, sampler, tokens, device, autocast, ranks)


def _optimizer_step(s: _Setup, lr: float, max_grad_norm: float, poison: bool) -> _StepOutcome:
    """Forward, backward, clip (pre-clip norm measured), and AdamW unless the step is non-finite."""
    import torch

    from thermograd.trainer.gradnorm import clip_and_measure_grad_norm

    for group in s.optimizer.param_groups:
        group["lr"] = lr
    batch = torch.from_numpy(np.ascontiguousarray(s.sampler.batch(s.tokens))).to(s.device, non_blocking=True)
    with s.autocast():
        loss = s.model(input_ids=batch, labels=batch).loss
    if poison:
        loss = loss * float("nan")  # test hook: a poisoned step, exactly like a real divergence
    loss.backward()
    grad_norm = clip_and_measure_grad_norm(s.params, max_norm=max_grad_norm)
    loss_value, norm_value = grad_norm.publish_with(loss)  # the step's one host sync
    outcome = _StepOutcome(loss_value, norm_value, grad_norm.clipped, batch.numel())
    if outcome.finite:  # like AMP's scaler: a NaN/Inf step must not reach the optimizer state
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return outcome


def _train(
    cfg: JobConfig,
    documents: list[bytes],
    metrics: TrainingMetrics | None,
    control: StopControl,
    stream: TextIO,
    result: JobResult,
) -> None:
    setup = _build(cfg, documents, metrics, stream)
    try:
        _steps(cfg, setup, metrics, control, stream, result)
    finally:
        if setup.ranks is not None:
            setup.ranks.leave()


def _steps(cfg: JobConfig, setup: _Setup, metrics: TrainingMetrics | None, control: StopControl, stream: TextIO,
           result: JobResult) -> None:
    warmup = default_warmup_steps(cfg.steps) if cfg.warmup_steps is None else cfg.warmup_steps
    perturb = PerturbSchedule(cfg.perturb, cfg.seed) if cfg.perturb is not None else None
    progress = Progress(cfg.steps, stream)
    consecutive_nonfinite = 0
    t0 = time.monotonic()
    if metrics is not None:
        metrics.begin_step()
    for step in range(1, cfg.steps + 1):
        stop = control.stop.is_set()
        if setup.ranks is not None:  # every rank stops, and pauses, at the same step boundary or none does
            started_s = time.perf_counter()
            stop, due = setup.ranks.agree(stop, metrics is not None and metrics.pause_due())
            if metrics is not None:
                metrics.add_wait(time.perf_counter() - started_s)  # the agreement waits for the slowest rank too
            if due and not stop:
                metrics.pause_if_due(due=True)
        elif metrics is not None:  # a burst due before the first step (observe_step takes the later ones)
            metrics.pause_if_due()
            stop = control.stop.is_set()  # a signal during the pause
        if stop:
            result.stopped_by_signal = True
            break
        step_start, cpu_start = time.perf_counter(), time.process_time()
        perturbing = perturb is not None and perturb.active(step, time.monotonic() - t0)
        lr = cfg.lr * lr_factor(step, cfg.steps, warmup, cfg.schedule) * (cfg.perturb.lr_mult if perturbing else 1.0)
        poison = any(first <= step <= last for first, last in cfg.inject_nan_steps)
        out = _optimizer_step(setup, lr, cfg.max_grad_norm, poison)
        consecutive_nonfinite = 0 if out.finite else consecutive_nonfinite + 1
        if metrics is not None:
            metrics.observe_step(
                step, out.loss, out.grad_norm, lr, tokens=out.tokens, epoch=setup.sampler.epoch,
                clipped=out.clipped, nonfinite=not out.finite, perturbation=perturbing,
            )
        duration = time.perf_counter() - step_start
        result.record(step, out.tokens, out.loss, duration, time.process_time() - cpu_start, out.finite)
        if out.finite:
            if not cfg.quiet:
                progress.update(step, out.loss, out.grad_norm, lr, out.tokens / duration,
                                "perturbing" if perturbing else "")
            continue
        progress.message(
            f"trainer: warning: step {step}: non-finite loss={out.loss} grad_norm={out.grad_norm}; "
            f"optimizer step skipped ({consecutive_nonfinite} in a row, abort at {cfg.max_nonfinite})"
        )
        if consecutive_nonfinite >= cfg.max_nonfinite:
            progress.close()
            raise NonFiniteAbort(
                f"{consecutive_nonfinite} consecutive non-finite steps (last: step {step}); aborting "
                "- lower --lr or --max-grad-norm, or check the data; logs are flushed"
            )
    progress.close()
    if not cfg.quiet:
        how = "stopped by signal after" if result.stopped_by_signal else "finished"
        _say(stream, f"{how} {result.steps_done} steps, {result.tokens:,} tokens, "
             f"{result.nonfinite_steps} non-finite")
