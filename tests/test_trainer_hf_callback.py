"""PrometheusCallback inside a real transformers.Trainer (model from a config, in-memory data, offline)."""

from __future__ import annotations

import io
import os

import pytest
from test_trainer_helpers import read_jsonl, sample, scrape, tiny_lm_and_data

from thermograd.trainer import TrainingMetrics

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")


@pytest.mark.slow
@pytest.mark.parametrize(("accumulation", "max_grad_norm"), [(2, 0.05), (1, 0.0)])
def test_callback_publishes_every_optimizer_step_with_the_pre_clip_norm(
    tmp_path, monkeypatch, accumulation, max_grad_norm
):
    from thermograd.trainer import PrometheusCallback

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: avoid OpenMP spin contention (see test_trainer_job)
    monkeypatch.delenv("RANK", raising=False)
    model, data = tiny_lm_and_data(48)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation, logging_steps=3, learning_rate=1e-3, warmup_steps=2,
        max_grad_norm=max_grad_norm, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    metrics = TrainingMetrics(port=0, run_id="hf", log_dir=tmp_path / "log")
    banner = io.StringIO()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[PrometheusCallback(metrics, stream=banner)])
    try:
        trainer.train()
        final = scrape(metrics.url)
    finally:
        metrics.close()
        torch.set_num_threads(threads)
    assert "EVERY optimizer step" in banner.getvalue() and "logging_steps=3" in banner.getvalue()

    records = read_jsonl(tmp_path / "log" / "steps.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # every step, not every logging_steps
    # One process waits on no other: its whole step is compute (our own norm at the end of backward included).
    assert [r["wait_s"] for r in records[1:]] == [0.0] * 5 and all(r["compute_s"] > 0 for r in records[1:])
    assert sample(final, "train_steps_total", run_id="hf", rank="0") == 6
    assert sample(final, "train_step_grad_norm_count") == 6
    assert sample(final, "train_tokens_total") == 6 * accumulation * 4 * 16
    if max_grad_norm:
        # Clipping at 0.05 scaled every step's gradients down; we still publish the norm BEFORE clipping.
        assert all(r["grad_norm"] > max_grad_norm for r in records)
    assert sample(final, "train_clipped_steps_total") == (6 if max_grad_norm else 0)

    logged = [h for h in trainer.state.log_history if "grad_norm" in h]
    assert [h["step"] for h in logged] == [3, 6]
    for entry in logged:  # Trainer's own numbers at the steps it logs agree with ours
        ours = records[entry["step"] - 1]
        assert ours["grad_norm"] == pytest.approx(entry["grad_norm"], rel=1e-5)
        assert ours["learning_rate"] == pytest.approx(entry["learning_rate"], rel=1e-9)
        window = records[entry["step"] - 3 : entry["step"]]
        assert sum(r["loss"] for r in window) / 3 == pytest.approx(entry["loss"], rel=1e-4)
    assert records[-1]["epoch"] == pytest.approx(trainer.state.epoch)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def _callback_on(model):
    from thermograd.trainer import PrometheusCallback

    callback = PrometheusCallback(TrainingMetrics(port=0, run_id="unit", start=False), stream=io.StringIO())
    callback._install_hooks(model)
    return callback


def test_grad_norm_is_measured_after_callbacks_queued_later_in_the_backward():
    """DDP queues its finalize (wait for the all-reduce, write the averaged gradients) on the autograd
    engine when the LAST gradient is ready; the callback must measure after it, not after the first."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    callback = _callback_on(model)
    params = list(model.parameters())
    ready: list[torch.Tensor] = []

    def finalize() -> None:  # what DDP's reducer does, here with a fake "average" over 4 ranks
        for p in params:
            p.grad.div_(4)

    def ddp_like_hook(param: torch.Tensor) -> None:
        ready.append(param)
        if len(ready) == len(params):
            torch.autograd.Variable._execution_engine.queue_callback(finalize)

    for p in params:
        p.register_post_accumulate_grad_hook(ddp_like_hook)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert callback._grad_norm is not None
    assert float(callback._grad_norm) == pytest.approx(float(expected), rel=1e-6)  # the averaged gradients


def test_under_ddp_our_norm_is_compute_not_part_of_the_wait(monkeypatch):
    """Among several ranks the wait is the span from the last gradient to the end of DDP's finalize; the norm the
    callback then measures (queued after DDP's finalize too) is this rank's compute, not waiting on others."""
    import time
    import types

    from thermograd.trainer import PrometheusCallback, huggingface, waits

    monkeypatch.setattr(waits, "collectives_running", lambda: True)  # a process group of several ranks
    real_norm = huggingface.total_grad_norm

    def slow_norm(params):
        time.sleep(0.3)  # this rank's own work
        return real_norm(params)

    monkeypatch.setattr(huggingface, "total_grad_norm", slow_norm)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    params = list(model.parameters())
    ready: list[torch.Tensor] = []

    def ddp_like_hook(param: torch.Tensor) -> None:  # registered at wrapping, before the callback's hooks
        ready.append(param)
        if len(ready) == len(params):
            torch.autograd.Variable._execution_engine.queue_callback(lambda: time.sleep(0.05))  # the all-reduce

    for p in params:
        p.register_post_accumulate_grad_hook(ddp_like_hook)
    metrics = TrainingMetrics(port=0, run_id="order", start=False)
    callback = PrometheusCallback(metrics, stream=io.StringIO())
    args = types.SimpleNamespace(max_grad_norm=1.0, process_index=0, local_process_index=0, world_size=2,
                                 device="cpu", logging_steps=10, deepspeed=None)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    callback.on_train_begin(args, None, None, model=model, optimizer=None)
    try:
        model(torch.randn(8, 4)).pow(2).mean().backward()
        assert callback._grad_norm is not None  # measured in this backward
        assert 0.045 <= metrics._waits.take_s() < 0.25  # DDP's wait, not our 0.3 s norm
    finally:
        callback.on_train_end(args, None, None)
        metrics.close()


def test_grad_norm_without_torch_get_total_norm(monkeypatch):
    """torch < 2.6 (the extra allows >= 2.1) has no torch.nn.utils.get_total_norm."""
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    callback = _callback_on(model)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert float(callback._grad_norm) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize(
    ("deepspeed_arg", "accelerate_env", "fsdp1", "unsupported"),
    [
        ("ds_config.json", None, False, "DeepSpeed is not supported for the gradient norm"),
        (None, "true", False, "DeepSpeed is not supported for the gradient norm"),
        (None, None, True, "FSDP1 (FullyShardedDataParallel) is not supported"),
        (None, None, False, None),
    ],
)
def test_sharded_gradients_it_cannot_read_are_said_unsupported_and_not_measured(
    monkeypatch, deepspeed_arg, accelerate_env, fsdp1, unsupported
):
    """Under DeepSpeed (TrainingArguments(deepspeed=...) or `accelerate launch` with a DeepSpeed config)
    p.grad is a ZeRO partition or empty; under FSDP1 it is this rank's slice of flat parameters (plain
    tensors): no norm of it is published, and the callback says why."""
    import types

    from test_trainer_helpers import with_fsdp1_child

    from thermograd.trainer import PrometheusCallback

    if accelerate_env is None:
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", accelerate_env)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    if fsdp1:
        with_fsdp1_child(model)
    banner = io.StringIO()
    callback = PrometheusCallback(TrainingMetrics(port=0, run_id="sharded", start=False), stream=banner)
    args = types.SimpleNamespace(max_grad_norm=1.0, device="cpu", local_process_index=0, process_index=0,
                                 world_size=1, logging_steps=5, deepspeed=deepspeed_arg)
    callback.on_train_begin(args, None, None, model=model, optimizer=None)
    try:
        model(torch.randn(8, 4)).pow(2).mean().backward()
    finally:
        callback.on_train_end(args, None, None)
    assert (callback._grad_norm is None) == (unsupported is not None)
    assert "not supported" not in banner.getvalue() if unsupported is None else unsupported in banner.getvalue()
