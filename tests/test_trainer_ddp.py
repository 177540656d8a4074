"""PrometheusCallback under real DDP (2 CPU processes, gloo): the published gradient norm is the
all-reduced (averaged) one that Trainer clips and logs, not one rank's local gradients.

Before the fix the callback measured when the autograd engine reached its own end-of-backward callback,
which ran before DDP's finalize (all-reduce + copy of the averaged gradients): ~1.2 vs Trainer's ~0.85.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import free_port
from test_trainer_helpers import tiny_lm_and_data

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

STEPS = 3


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
    })
    torch.set_num_threads(1)
    from thermograd.trainer import PrometheusCallback, TrainingMetrics

    model, data = tiny_lm_and_data(32)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(out_dir, "out"), max_steps=STEPS, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, ddp_find_unused_parameters=False, logging_steps=1, learning_rate=1e-3,
        max_grad_norm=1.0, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0, ddp_backend="gloo",
    )
    metrics = TrainingMetrics(port=0, run_id="ddp", rank=rank, log_dir=os.path.join(out_dir, "log"))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[PrometheusCallback(metrics, stream=open(os.devnull, "w"))])  # noqa: SIM115
    try:
        trainer.train()
    finally:
        metrics.close()
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    with open(os.path.join(out_dir, f"trainer_rank{rank}.json"), "w") as f:
        json.dump(logged, f)
    torch.distributed.barrier()


@pytest.mark.slow
def test_ddp_grad_norm_is_the_all_reduced_one_trainer_logs(tmp_path):
    world_size = 2
    torch.multiprocessing.spawn(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)
    for rank in range(world_size):
        suffix = "" if rank == 0 else f".rank{rank}"
        ours = [json.loads(line)["grad_norm"]
                for line in (tmp_path / "log" / f"steps{suffix}.jsonl").read_text().splitlines()]
        theirs = json.loads((tmp_path / f"trainer_rank{rank}.json").read_text())
        assert len(ours) == len(theirs) == STEPS
        assert ours == pytest.approx(theirs, rel=1e-5), f"rank {rank}: callback {ours} vs Trainer {theirs}"
