"""`PrometheusCallback`: every optimizer step of a `transformers.Trainer` on /metrics.

    Trainer(..., callbacks=[PrometheusCallback()])

Why the callback measures things itself: `Trainer` computes the pre-clip gradient norm and the loss
every step but hands them to callbacks only through `on_log`, i.e. every `logging_steps` (default
500), and by the time `on_pre_optimizer_step` runs the gradients are already clipped. So:

* gradient norm: a callback queued on the autograd engine runs when the backward pass of the last
  micro-batch of a step finishes — after gradient accumulation and, under DDP, after the reducer has
  written the all-reduced (averaged) gradients, before Trainer clips — and takes the
  total L2 norm of the gradients with one fused `_foreach_norm` (a device tensor; fp16 loss scaling is
  divided out). Cost: one read of the gradients per optimizer step, no host sync of its own.
* loss: a forward hook keeps the training forward passes' `loss` tensors, combined over the step's
  micro-batches the way Trainer reports them. If the model returns no loss (a custom `compute_loss`),
  `train_loss` falls back to
  Trainer's logged value every `logging_steps`, and the callback says so at the first step.
* learning rate: the optimizer's, read right after `optimizer.step()` (what Trainer logs).

Both numbers reach the host in ONE copy per step, in `on_step_end`. Under DDP and FSDP2 the norm is
the global one on every rank (`trainer.gradnorm.total_grad_norm` reduces FSDP2's DTensor norm);
under FSDP1 (flat-parameter slices) no norm is published, and the callback says so.
DeepSpeed is not supported for the norm: DeepSpeed computes it inside `engine.step()` and Trainer
gives callbacks no handle on the engine, so the callback publishes loss and learning rate only and
says so at start-up (Trainer's own logs carry the norm every `logging_steps`).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch
from transformers import TrainerCallback

from thermograd.endpoint.webconfig import WebConfig
from thermograd.endpoint.webconfig import resolve as resolve_web_config
from thermograd.trainer.gradnorm import fsdp1_unsupported, host_floats, total_grad_norm
from thermograd.trainer.metrics import RankEndpoint, TrainingMetrics


def _sync_gradients_flag() -> Any:
    """accelerate's shared GradientState: True during the backward that completes a step."""
    try:
        from accelerate.state import GradientState

        return GradientState()
    except ImportError:  # pragma: no cover - Trainer itself requires accelerate
        return None


def _uses_deepspeed(args: Any) -> bool:
    # TrainingArguments(deepspeed=...) and `accelerate launch` with a DeepSpeed config both set this.
    return bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


class PrometheusCallback(TrainerCallback):
    """Publishes step, loss, pre-clip grad norm, learning rate, epoch and tokens every optimizer step.

    Give a ready `TrainingMetrics` (`metrics=`; flushed, not closed, at the end of training: it is yours)
    or let the callback create one at train start — closed at the end of training — with `port` (+ the
    process's local rank, so ranks on one host do not collide), `bind`, `run_id`, `log_dir`, `linger_s` and
    `pauses` (pause bursts, the analysis's positive control); each left as None takes TrainingMetrics'
    default (under `thermograd run`, the run's). Rank and world size come from `TrainingArguments`.
    `web_config` (a web config file, docs/web-config.md) serves that endpoint with TLS and/or basic auth;
    it is read here, so a bad file raises WebConfigError (a ValueError) before training starts.
    """

    def __init__(
        self,
        metrics: TrainingMetrics | None = None,
        *,
        port: int | None = None,
        bind: str = "127.0.0.1",
        run_id: str | None = None,
        log_dir: str | None = None,
        linger_s: float | None = None,
        gpu_uuid: str | None = None,
        pauses: str | None = None,
        web_config: str | os.PathLike[str] | WebConfig | None = None,
        stream: Any = None,
    ) -> None:
        self.metrics = metrics
        self._owns_metrics = metrics is None
        self._endpoint = RankEndpoint(port=port, bind=bind, run_id=run_id, log_dir=log_dir, linger_s=linger_s,
                                      pauses=pauses, web_config=resolve_web_config(web_config))
        self._gpu_uuid = gpu_uuid
        self._stream = stream if stream is not None else sys.stderr
        self._handles: list[Any] = []
        self._params: list[torch.Tensor] = []
        self._grad_state = None
        self._scaler = None
        self._queued = False
        self._grad_norm: torch.Tensor | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._loss_is_share = False
        self._tokens = 0
        self._lr: float | None = None
        self._loss_fallback_announced = False
        self._max_grad_norm = 0.0
        self._rank_zero = True

    def _say(self, message: str) -> None:
        """A message once per job (from the process of rank 0), not once per rank."""
        if self._rank_zero:
            print(f"PrometheusCallback: {message}", file=self._stream, flush=True)

    # ---- set-up / tear-down ----------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._max_grad_norm = float(args.max_grad_norm or 0.0)
        self._rank_zero = args.process_index == 0
        device = str(args.device)
        if self.metrics is None:
            self.metrics = self._endpoint.open(local_rank=args.local_process_index, rank=args.process_index,
                                               world_size=args.world_size, max_grad_norm=self._max_grad_norm)
        model_name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.metrics.set_run_info(model=model_name, device=device, gpu_uuid=self._gpu_uuid,
                                  world_size=args.world_size)
        self._scaler = getattr(optimizer, "scaler", None)
        self._grad_state = _sync_gradients_flag()
        deepspeed = _uses_deepspeed(args)
        fsdp1 = fsdp1_unsupported(model, "use FSDP2: fsdp_config={'fsdp_version': 2}")
        if not deepspeed:  # DeepSpeed's collectives run inside engine.step(), where no hook of ours sees them
            # Compute time apart from waiting on other ranks (trainer/waits.py). Watched before our hooks are
            # installed, so the end of the wait is marked before our norm is measured: the norm is compute.
            self.metrics.watch(model)
        self._install_hooks(model, measure_grad_norm=not (deepspeed or fsdp1))
        ranks = f" (rank 0 of {args.world_size}; each rank serves on its own port)" if args.world_size > 1 else ""
        self._say(f"{self.metrics.url} run_id={self.metrics.run_id}{ranks}: publishing EVERY optimizer step "
                  "(step, loss, pre-clip grad_norm, learning_rate), independent of "
                  f"logging_steps={args.logging_steps}")
        if deepspeed:
            self._say("DeepSpeed is not supported for the gradient norm (DeepSpeed computes it inside "
                      "engine.step(), which Trainer does not hand to callbacks): train_grad_norm is not "
                      "published; Trainer logs grad_norm every logging_steps")
        elif fsdp1:
            self._say(fsdp1)

    def _install_hooks(self, model: torch.nn.Module, measure_grad_norm: bool = True) -> None:
        self._handles.append(model.register_forward_hook(self._on_forward, with_kwargs=True))
        # DeepSpeed (ZeRO: p.grad empty or a partition) or FSDP1 (flat slices): a norm of p.grad would be wrong.
        self._params = [p for p in model.parameters() if p.requires_grad] if measure_grad_norm else []
        for param in self._params:
            self._handles.append(param.register_post_accumulate_grad_hook(self._on_grad_ready))

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.metrics is None:
            return
        if self._owns_metrics:
            self.metrics.close()
            self.metrics = None  # a later train() starts a fresh server
        else:
            self.metrics.flush()  # the caller's instance: on disk now, closed by its owner

    # ---- hooks (run inside forward / backward) -----------------------------------------------
    def _on_forward(self, module, args, kwargs, output) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation / generation
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
            # Given num_items_in_batch, the model already divides each micro-batch's loss by the whole
            # step's token count, so the step's loss is the sum over micro-batches; otherwise the mean.
            self._loss_is_share = kwargs.get("num_items_in_batch") is not None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(input_ids, torch.Tensor):
            self._tokens += input_ids.numel()

    def _on_grad_ready(self, _param: torch.Tensor) -> None:
        # First parameter whose gradient is ready in this backward: queue the end-of-backward measurement.
        if self._queued:
            return
        if self._grad_state is not None and not self._grad_state.sync_gradients:
            return  # a micro-batch that does not complete the step: nothing to measure yet
        self._queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._queue_measurement_last)

    def _queue_measurement_last(self) -> None:
        # Runs at the end of the backward, but possibly BEFORE callbacks queued later in the same
        # backward — notably DDP's finalize (wait for the all-reduce, write the averaged gradients),
        # which the reducer queues when the last bucket is ready. The engine runs its final callbacks
        # in order and also runs those appended while it does, so re-queuing from here puts the
        # measurement after every callback queued during the backward: it sees the averaged gradients.
        torch.autograd.Variable._execution_engine.queue_callback(self._measure_grad_norm)

    def _measure_grad_norm(self) -> None:
        self._queued = False
        if not any(p.grad is not None for p in self._params):
            return
        norm = total_grad_norm(self._params)
        scale = getattr(self._scaler, "_scale", None) if self._scaler is not None else None
        if isinstance(scale, torch.Tensor):  # fp16 loss scaling: the gradients are still scaled here
            norm = norm / scale.to(norm.device).reshape(())
        self._grad_norm = norm.detach()

    # ---- per-step publishing ------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        self._loss_sum, self._loss_count, self._tokens, self._grad_norm = None, 0, 0, None

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None and optimizer.param_groups:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, **kwargs):
        if self.metrics is None:
            return
        loss, grad_norm = host_floats(self._loss_sum, self._grad_norm)  # one host sync for both
        if loss is not None:
            loss /= 1 if self._loss_is_share else self._loss_count
        if loss is None and not self._loss_fallback_announced:
            self._loss_fallback_announced = True
            self._say(f"the model's forward returned no loss; train_loss follows Trainer's logs (every "
                      f"logging_steps={args.logging_steps}); set logging_steps=1 for per-step loss")
        clipped = grad_norm is not None and 0 < self._max_grad_norm < grad_norm and math.isfinite(grad_norm)
        self.metrics.observe_step(
            state.global_step, loss, grad_norm, self._lr, tokens=self._tokens, epoch=state.epoch, clipped=clipped,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.metrics is not None and self._loss_fallback_announced and logs and "loss" in logs:
            self.metrics.set_loss(float(logs["loss"]))
