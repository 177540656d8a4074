"""`PrometheusLightningCallback`: every optimizer step of a PyTorch Lightning `Trainer` on /metrics.

    Trainer(..., callbacks=[PrometheusLightningCallback()])

Where each number is read, and why there:

* gradient norm: in `on_before_optimizer_step`, which Lightning calls once per optimizer step after
  the step's last backward (gradients accumulated; under DDP all-reduced, under FSDP2 reduce-scattered)
  and after AMP unscaling, but BEFORE it clips. One fused `_foreach_norm` over the optimizer's
  parameters — the very set Lightning clips — kept on the device. Under FSDP2 the norm is reduced to
  the global one (`trainer.gradnorm.total_grad_norm`). Under DeepSpeed the gradients are partitioned
  and clipped inside `engine.step()`, so the norm is read from `engine.get_global_grad_norm()` after
  the step instead.
* loss: `on_train_batch_end`'s `outputs["loss"]` of each micro-batch (Lightning divides it by
  `accumulate_grad_batches`; we undo that and publish the mean over the step's micro-batches).
* learning rate: the optimizer's, read in `on_before_optimizer_step`: the one this step applies
  (Lightning steps its schedulers only after the optimizer step).
* tokens: `input_ids.numel()` of each micro-batch when the batch is a mapping holding `input_ids`
  (a shape, no host sync), or what `tokens_in_batch(batch)` returns.

The loss and the norm reach the host in ONE copy per step, in the `on_train_batch_end` that follows
the optimizer step. Lightning's `log_every_n_steps` only thins Lightning's own logger: this callback
calls `TrainingMetrics.observe_step` directly, every step.

Works with `lightning` (`lightning.pytorch`) >= 2.4 and with the standalone `pytorch_lightning`:
the class derives from whichever is installed (`lightning` first), and a `pytorch_lightning.Trainer`
also drives the `lightning.pytorch` one, since Lightning calls callbacks by hook name.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override  # typing.override from Python 3.12; Lightning's own choice

from thermograd.endpoint.webconfig import WebConfig
from thermograd.endpoint.webconfig import resolve as resolve_web_config
from thermograd.trainer.gradnorm import (
    UnsupportedEngineError,
    deepspeed_grad_norm,
    fsdp1_unsupported,
    host_floats,
    total_grad_norm,
)
from thermograd.trainer.metrics import RankEndpoint, TrainingMetrics

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package (same API)
    from pytorch_lightning import Callback

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.utilities.types import STEP_OUTPUT
    from torch.optim import Optimizer


def input_ids_tokens(batch: Any) -> int:
    """Tokens in a batch that says: a mapping (dict, BatchEncoding) with an `input_ids` tensor; else 0."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    return ids.numel() if isinstance(ids, torch.Tensor) else 0


def _loss_tensor(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach().float().reshape(()) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def _clip_norm(trainer: Any) -> float | None:
    """Lightning's clipping threshold when it clips by norm (None: no clipping, or clipping by value)."""
    value = getattr(trainer, "gradient_clip_val", None)
    algorithm = getattr(trainer, "gradient_clip_algorithm", None)
    by_norm = str(getattr(algorithm, "value", algorithm) or "norm").lower() == "norm"
    return float(value) if by_norm and value and 0 < float(value) < math.inf else None


def _is_deepspeed(strategy: Any) -> bool:
    return any(cls.__name__ == "DeepSpeedStrategy" for cls in type(strategy).__mro__)


class PrometheusLightningCallback(Callback):
    """Publishes step, loss, pre-clip grad norm, learning rate, epoch and tokens every optimizer step.

    Give a ready `TrainingMetrics` (`metrics=`; flushed, not closed, at the end of fit: it is yours) or
    let the callback open one at fit start — closed at the end of fit — with `port` (+ the process's local
    rank, so ranks on one host never collide), `bind`, `run_id`, `log_dir`, `linger_s` and `pauses` (pause
    bursts, the analysis's positive control); each left as None takes TrainingMetrics' default (under
    `thermograd run`, the run's). Rank and world size come from the Lightning `Trainer`. With several
    optimizers stepping in one batch (manual optimization), the norm published is the last one's.
    `web_config` (a web config file, docs/web-config.md) serves that endpoint with TLS and/or basic auth;
    it is read here, so a bad file raises WebConfigError (a ValueError) before fit starts.
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
        tokens_in_batch: Callable[[Any], int] = input_ids_tokens,
        stream: Any = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self._owns_metrics = metrics is None
        self._endpoint = RankEndpoint(port=port, bind=bind, run_id=run_id, log_dir=log_dir, linger_s=linger_s,
                                      pauses=pauses, web_config=resolve_web_config(web_config))
        self._gpu_uuid = gpu_uuid
        self._tokens_in_batch = tokens_in_batch
        self._stream = stream if stream is not None else sys.stderr
        self._deepspeed = False
        self._deepspeed_note = False
        self._measure = True
        self._max_grad_norm: float | None = None
        self._published_step: int | None = None
        self._rank_zero = True
        self._reset_step()

    def _reset_step(self) -> None:
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._tokens = 0
        self._grad_norm: torch.Tensor | None = None
        self._lr: float | None = None

    def _say(self, message: str) -> None:
        """A message once per job (from global rank 0), not once per rank."""
        if self._rank_zero:
            print(f"PrometheusLightningCallback: {message}", file=self._stream, flush=True)

    # ---- set-up / tear-down ----------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._rank_zero = trainer.global_rank == 0
        self._max_grad_norm = _clip_norm(trainer)
        self._deepspeed = _is_deepspeed(trainer.strategy)
        if self.metrics is None:
            self.metrics = self._endpoint.open(local_rank=trainer.local_rank, rank=trainer.global_rank,
                                               world_size=trainer.world_size, max_grad_norm=self._max_grad_norm)
        self.metrics.set_run_info(model=type(pl_module).__name__, device=str(trainer.strategy.root_device),
                                  gpu_uuid=self._gpu_uuid, world_size=trainer.world_size)
        self._reset_step()
        ranks = f" (rank 0 of {trainer.world_size}; each rank serves on its own port)" if trainer.world_size > 1 else ""
        self._say(
            f"{self.metrics.url} run_id={self.metrics.run_id}{ranks}: publishing EVERY optimizer step (step, loss, "
            "pre-clip grad_norm, learning_rate), independent of "
            f"log_every_n_steps={getattr(trainer, 'log_every_n_steps', '?')}"
        )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.metrics is None:
            return
        if self._owns_metrics:
            self.metrics.close()
            self.metrics = None  # a later fit() opens a fresh endpoint
        else:
            self.metrics.flush()  # the caller's instance: on disk now, closed by its owner

    # ---- per micro-batch / per step ------------------------------------------------------------
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After a checkpoint is restored: a resumed run's first micro-batch must not look like a new step.
        self._published_step = int(trainer.global_step)
        # The strategy has wrapped the model by now (FSDPStrategy wraps after the callbacks' setup).
        fsdp1 = fsdp1_unsupported(getattr(trainer.strategy, "model", None) or pl_module,
                                  "use ModelParallelStrategy, which shards with FSDP2")
        self._measure = fsdp1 is None
        if fsdp1:
            self._say(fsdp1)
        if self.metrics is not None and not self._deepspeed:  # compute time apart from waiting on other ranks
            self.metrics.watch(getattr(trainer.strategy, "model", None) or pl_module)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._tokens += int(self._tokens_in_batch(batch))

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])
        if self._deepspeed or not self._measure:
            return  # DeepSpeed calls this every micro-batch, p.grad a partition: the engine is read after the step
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._grad_norm = total_grad_norm(params).detach()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: STEP_OUTPUT, batch: Any,
                           batch_idx: int) -> None:
        loss = _loss_tensor(outputs)
        if loss is not None:
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        step = int(trainer.global_step)
        if self.metrics is None or step == self._published_step:
            return  # an accumulation micro-batch: the optimizer has not stepped yet
        self._published_step = step
        loss_sum, grad_norm = host_floats(self._loss_sum, self._grad_norm)  # the step's one host sync
        if self._deepspeed:
            grad_norm = self._deepspeed_norm(trainer.strategy)
        loss_value = None
        if loss_sum is not None:
            # Automatic optimization divides each micro-batch's loss by accumulate_grad_batches.
            normaliser = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            loss_value = loss_sum * normaliser / self._loss_count
        batches = trainer.num_training_batches
        epoch = trainer.current_epoch + ((batch_idx + 1) / batches if 0 < batches < math.inf else 0.0)
        limit = self._max_grad_norm
        clipped = limit is not None and grad_norm is not None and math.isfinite(grad_norm) and grad_norm > limit
        self.metrics.observe_step(step, loss_value, grad_norm, self._lr, tokens=self._tokens, epoch=epoch,
                                  clipped=clipped)
        self._reset_step()

    def _deepspeed_norm(self, strategy: Any) -> float | None:
        try:
            norm = deepspeed_grad_norm(strategy.deepspeed_engine)
        except UnsupportedEngineError as exc:
            norm = None
            if not self._deepspeed_note:
                self._say(f"{exc}; train_grad_norm is not published")
        else:
            if norm is None and not self._deepspeed_note:
                self._say("the DeepSpeed engine computed no gradient norm this step (get_global_grad_norm() "
                          "is None); train_grad_norm is published from the steps where it does")
        self._deepspeed_note = self._deepspeed_note or norm is None
        return norm
