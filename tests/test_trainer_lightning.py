"""PrometheusLightningCallback inside a real Lightning `Trainer.fit` (CPU, offline, in-memory data), and
its DeepSpeed path against a stand-in engine (DeepSpeed needs CUDA: it cannot be installed here)."""

from __future__ import annotations

import copy
import csv
import io
import math
import types

import pytest
from conftest import free_port
from test_trainer_helpers import (
    lightning_token_lm,
    read_jsonl,
    reference_run,
    sample,
    scrape,
    tiny_token_lm,
    token_batches,
)

from thermograd.trainer import TrainingMetrics

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

BATCHES_PER_EPOCH, ACCUMULATION, STEPS = 10, 2, 7  # 5 optimizer steps per epoch: step 6 starts epoch 2
CLIP, LR, GAMMA = 0.525, 0.5, 0.8  # some steps' norms above the clipping threshold, some below


def test_every_optimizer_step_with_the_pre_clip_norm_lightning_clips_with(tmp_path, monkeypatch):
    from thermograd.trainer.lightning import PrometheusLightningCallback

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box (see test_trainer_job)
    batches = token_batches(BATCHES_PER_EPOCH)
    model = tiny_token_lm()
    reference = copy.deepcopy(model)
    banner = io.StringIO()
    callback = PrometheusLightningCallback(port=free_port(), run_id="pl", log_dir=str(tmp_path / "log"), stream=banner)
    scraped: dict = {}

    class ScrapeBeforeTeardown(pl.Callback):  # real HTTP, while the Trainer still runs
        def on_train_end(self, trainer, pl_module):
            scraped.update(scrape(callback.metrics.url))

    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, accumulate_grad_batches=ACCUMULATION,
        gradient_clip_val=CLIP, log_every_n_steps=3, logger=pl.loggers.CSVLogger(tmp_path, name="csv"),
        callbacks=[callback, ScrapeBeforeTeardown()], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True,
    )
    try:
        trainer.fit(lightning_token_lm(model, batches, LR, GAMMA))
    finally:
        torch.set_num_threads(threads)

    ids = [b["input_ids"] for b in batches * 2]
    steps = [ids[i : i + ACCUMULATION] for i in range(0, STEPS * ACCUMULATION, ACCUMULATION)]
    lrs = [LR * GAMMA**k for k in range(STEPS)]
    ref_norms, ref_losses = reference_run(reference, steps, CLIP, lrs)
    assert 0 < sum(n > CLIP for n in ref_norms) < STEPS, f"the test must clip some steps, not all: {ref_norms}"

    records = read_jsonl(tmp_path / "log" / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # every step, not every 3rd
    assert [r["grad_norm"] for r in records] == pytest.approx(ref_norms, rel=1e-5)
    assert [r["loss"] for r in records] == pytest.approx(ref_losses, rel=1e-5)
    assert [r["learning_rate"] for r in records] == pytest.approx(lrs, rel=1e-9)  # the LR each step applied
    assert [r["tokens"] for r in records] == [ACCUMULATION * 4 * 16] * STEPS
    assert [r["clipped"] for r in records] == [n > CLIP for n in ref_norms]
    assert [r["wait_s"] for r in records[1:]] == [0.0] * (STEPS - 1)  # one process waits on no other rank
    assert records[4]["epoch"] == pytest.approx(1.0) and records[-1]["epoch"] == pytest.approx(1.4)

    assert sample(scraped, "train_steps_total", run_id="pl", rank="0") == STEPS
    assert sample(scraped, "train_step_grad_norm_count") == STEPS
    assert sample(scraped, "train_step_grad_norm_sum") == pytest.approx(sum(ref_norms), rel=1e-5)
    assert sample(scraped, "train_grad_norm") == pytest.approx(ref_norms[-1], rel=1e-5)
    assert sample(scraped, "train_tokens_total") == STEPS * ACCUMULATION * 4 * 16
    assert sample(scraped, "train_clipped_steps_total") == sum(n > CLIP for n in ref_norms)
    assert sample(scraped, "train_run_info", model="TokenLM", device="cpu", world_size="1") == 1

    text = banner.getvalue()
    assert "EVERY optimizer step" in text and "log_every_n_steps=3" in text and f":{callback._endpoint.port}/" in text
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        lightning_rows = [row for row in csv.DictReader(f) if row.get("train_loss")]
    assert 0 < len(lightning_rows) < STEPS  # Lightning's own log is thinned by log_every_n_steps; ours is not
    assert callback.metrics is None  # the endpoint it opened was closed at teardown


def _stand_in_trainer(engine, global_step: int = 0):
    """What the callback reads of a Lightning Trainer running DeepSpeedStrategy."""
    strategy = type("DeepSpeedStrategy", (), {"deepspeed_engine": engine, "root_device": torch.device("cpu")})()
    return types.SimpleNamespace(
        strategy=strategy, global_step=global_step, local_rank=0, global_rank=0, world_size=1,
        gradient_clip_val=1.0, gradient_clip_algorithm="norm", accumulate_grad_batches=2,
        num_training_batches=4, current_epoch=0, log_every_n_steps=50,
    )


class _Engine:
    def __init__(self, norms):
        self.norms = iter(norms)

    def get_global_grad_norm(self):
        return next(self.norms)


def _run_deepspeed_steps(callback, trainer, n_steps: int) -> None:
    """DeepSpeed in Lightning: on_before_optimizer_step every micro-batch, global_step moves every 2nd."""
    module = types.SimpleNamespace(automatic_optimization=True)
    optimizer = types.SimpleNamespace(param_groups=[{"lr": 0.25, "params": []}])
    callback.setup(trainer, module, "fit")
    callback.on_train_start(trainer, module)
    for micro in range(2 * n_steps):
        callback.on_train_batch_start(trainer, module, {"input_ids": torch.zeros(2, 8, dtype=torch.long)}, micro)
        callback.on_before_optimizer_step(trainer, module, optimizer)
        trainer.global_step += micro % 2
        callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.5 + micro)}, {}, micro)


def test_deepspeed_norm_is_read_from_the_engine_after_each_step():
    from thermograd.trainer.lightning import PrometheusLightningCallback

    metrics = TrainingMetrics(port=0, run_id="ds", start=False)
    banner = io.StringIO()
    callback = PrometheusLightningCallback(metrics, stream=banner)
    _run_deepspeed_steps(callback, _stand_in_trainer(_Engine([torch.tensor(2.5), 0.75])), n_steps=2)
    state, (counts, total, count), _ = metrics.snapshot()
    assert state.steps == 2 and state.step == 2 and count == 2
    assert total == pytest.approx(2.5 + 0.75) and state.grad_norm == pytest.approx(0.75)
    assert state.clipped == 1  # 2.5 > gradient_clip_val=1.0, 0.75 is not
    assert state.loss == pytest.approx((2.5 + 3.5) * 2 / 2)  # Lightning's outputs are loss / accumulation
    assert state.tokens == 2 * 2 * 2 * 8 and state.learning_rate == 0.25 and state.epoch == pytest.approx(1.0)
    assert "DeepSpeed" not in banner.getvalue()


def test_deepspeed_engine_without_a_norm_is_said_once_and_publishes_none():
    from thermograd.trainer.lightning import PrometheusLightningCallback

    metrics = TrainingMetrics(port=0, run_id="ds", start=False)
    banner = io.StringIO()
    callback = PrometheusLightningCallback(metrics, stream=banner)
    _run_deepspeed_steps(callback, _stand_in_trainer(object()), n_steps=2)
    state, (_, _, count), _ = metrics.snapshot()
    assert state.steps == 2 and state.grad_norm is None and count == 0 and state.loss is not None
    assert banner.getvalue().count("has no get_global_grad_norm()") == 1
    callback = PrometheusLightningCallback(TrainingMetrics(port=0, start=False), stream=(banner := io.StringIO()))
    _run_deepspeed_steps(callback, _stand_in_trainer(_Engine([None, 1.5])), n_steps=2)
    assert callback.metrics.snapshot()[0].grad_norm == 1.5
    assert banner.getvalue().count("computed no gradient norm") == 1


def test_clip_threshold_only_when_lightning_clips_by_norm():
    from thermograd.trainer.lightning import _clip_norm

    def stand_in(value, algorithm):
        return types.SimpleNamespace(gradient_clip_val=value, gradient_clip_algorithm=algorithm)

    assert _clip_norm(stand_in(0.5, "norm")) == 0.5 and _clip_norm(stand_in(0.5, None)) == 0.5
    assert _clip_norm(stand_in(0.5, "value")) is None
    assert _clip_norm(stand_in(None, "norm")) is None and _clip_norm(stand_in(0, "norm")) is None
    assert _clip_norm(stand_in(math.inf, "norm")) is None


def test_the_callback_also_drives_a_pytorch_lightning_trainer():
    """`pytorch_lightning` (the standalone package) calls callbacks by hook name: the same callback works."""
    ptl = pytest.importorskip("pytorch_lightning")
    from test_trainer_helpers import next_token_loss

    from thermograd.trainer.lightning import PrometheusLightningCallback

    class Module(ptl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_token_lm()

        def training_step(self, batch, batch_idx):
            return next_token_loss(self.model, batch["input_ids"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(token_batches(4), batch_size=None)

    metrics = TrainingMetrics(port=0, run_id="ptl", start=False)
    trainer = ptl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[PrometheusLightningCallback(metrics, stream=io.StringIO())])
    trainer.fit(Module())
    state, (_, _, norms_observed), _ = metrics.snapshot()
    assert state.steps == 3 and norms_observed == 3 and state.tokens == 3 * 64


def test_fp16_amp_norm_is_read_after_unscaling():
    """fp16 AMP with a GradScaler (CPU autocast): the gradients are 65536x the true ones until Lightning
    unscales them, just before on_before_optimizer_step; the published norm is the true one."""
    from lightning.pytorch.plugins import MixedPrecision

    from thermograd.trainer.lightning import PrometheusLightningCallback

    batches = token_batches(3)
    model = tiny_token_lm()
    ref_norms, _ = reference_run(copy.deepcopy(model), [[b["input_ids"]] for b in batches], math.inf, [LR] * 3)
    metrics = TrainingMetrics(port=0, run_id="amp", start=False)
    scales: list[float] = []

    class Scale(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            scales.append(float(trainer.precision_plugin.scaler.get_scale()))

    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu")], logger=False,
        callbacks=[PrometheusLightningCallback(metrics, stream=io.StringIO()), Scale()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(lightning_token_lm(model, batches, LR))
    state, (_, total, count), _ = metrics.snapshot()
    assert scales == [65536.0] * 3 and count == 3
    assert total == pytest.approx(sum(ref_norms), rel=1e-2)  # fp16 autocast vs fp32: ~1e-3 apart; scaled: 65536x


def test_fsdp1_strategy_is_said_unsupported_and_publishes_no_norm():
    from test_trainer_helpers import with_fsdp1_child

    from thermograd.trainer.lightning import PrometheusLightningCallback

    model = tiny_token_lm()
    model(torch.zeros(2, 8, dtype=torch.long)).sum().backward()
    with_fsdp1_child(model)  # after the forward: a Sequential would call it
    trainer = _stand_in_trainer(None, global_step=0)
    trainer.strategy = types.SimpleNamespace(model=model, root_device=torch.device("cpu"))  # FSDPStrategy's
    module = types.SimpleNamespace(automatic_optimization=True)
    optimizer = types.SimpleNamespace(param_groups=[{"lr": 0.1, "params": list(model.parameters())}])
    banner = io.StringIO()
    callback = PrometheusLightningCallback(TrainingMetrics(port=0, run_id="fsdp1", start=False), stream=banner)
    callback.setup(trainer, module, "fit")
    callback.on_train_start(trainer, module)
    callback.on_before_optimizer_step(trainer, module, optimizer)
    trainer.global_step = 1
    callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, {}, 0)
    state = callback.metrics.snapshot()[0]
    assert state.steps == 1 and state.grad_norm is None and state.loss == pytest.approx(2.0)
    assert "FSDP1 (FullyShardedDataParallel) is not supported" in banner.getvalue()
    assert "ModelParallelStrategy" in banner.getvalue()
