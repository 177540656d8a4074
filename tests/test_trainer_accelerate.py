"""docs/instrumentation.md's Accelerate loop: `accelerator.clip_grad_norm_` returns the pre-clip norm that
`TrainingMetrics` publishes, every optimizer step (a real `accelerate.Accelerator` on CPU)."""

from __future__ import annotations

import copy

import pytest
from test_trainer_helpers import (
    next_token_loss,
    read_jsonl,
    reference_run,
    sample,
    scrape,
    tiny_token_lm,
    token_batches,
)

from thermograd.trainer import TrainingMetrics

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

MICRO_BATCHES, ACCUMULATION, CLIP, LR = 8, 2, 0.5, 0.5


@pytest.fixture
def accelerator():
    from accelerate.state import AcceleratorState, GradientState

    yield accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATION)
    # Accelerate's state is process-wide: leave none behind for the Trainer tests in this process.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_accelerate_loop_publishes_every_step_with_the_norm_accelerate_clipped(tmp_path, accelerator):
    from thermograd.trainer import host_floats

    batches = token_batches(MICRO_BATCHES)
    model = tiny_token_lm()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics = TrainingMetrics(port=0, run_id="acc", rank=accelerator.process_index, log_dir=tmp_path)  # 1
    step, losses = 0, []
    with metrics:
        for batch in batches:
            with accelerator.accumulate(model):
                loss = next_token_loss(model, batch["input_ids"])
                accelerator.backward(loss)
                losses.append(loss.detach())
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), CLIP)
                    step += 1
                    metrics.observe_step(step, *host_floats(torch.stack(losses).mean(), norm),  # 2
                                         optimizer.param_groups[0]["lr"], tokens=ACCUMULATION * 64)
                    losses = []
                optimizer.step()
                optimizer.zero_grad()
        samples = scrape(metrics.url)

    ids = [b["input_ids"] for b in batches]
    steps = [ids[i : i + ACCUMULATION] for i in range(0, MICRO_BATCHES, ACCUMULATION)]
    ref_norms, ref_losses = reference_run(reference, steps, CLIP, [LR] * len(steps))
    assert any(n > CLIP for n in ref_norms), "clipping must act for the parameters to tell"
    records = read_jsonl(tmp_path / "steps.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # optimizer steps, not micro-batches
    assert [r["grad_norm"] for r in records] == pytest.approx(ref_norms, rel=1e-5)
    assert [r["loss"] for r in records] == pytest.approx(ref_losses, rel=1e-5)
    for ours, theirs in zip(accelerator.unwrap_model(model).parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)  # clipped with the norm we published
    assert sample(samples, "train_steps_total", run_id="acc", rank="0") == 4
    assert sample(samples, "train_step_grad_norm_sum") == pytest.approx(sum(ref_norms), rel=1e-5)


def test_host_floats_passes_numbers_and_none_through():
    """accelerate's clip_grad_norm_ under DeepSpeed returns a float (or None before the engine computed a
    norm): docs/instrumentation.md's two lines publish it as they do a tensor."""
    from thermograd.trainer.gradnorm import host_floats

    loss = torch.tensor(2.5)
    assert host_floats(loss, 0.75) == [2.5, 0.75]
    assert host_floats(loss, None) == [2.5, None]
    assert host_floats(loss, torch.tensor(0.5)) == [2.5, 0.5]
