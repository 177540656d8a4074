"""Compute time apart from waiting, per rank, under `torchrun --nproc-per-node 2` (CPU, gloo): rank 1 computes
slower (a sleep in its forward, as a throttled GPU would), so both ranks' wall step times are equal — they wait for
each other — but rank 1's compute time is longer and rank 0's wait is. Under DDP and under FSDP2, with a plain loop
that calls `metrics.watch(model)`. One torchrun launch runs both, as this very file."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SLOW_S, STEPS = 0.12, 12


def _worker(out_dir: str) -> None:
    import time

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from thermograd.trainer.metrics import TrainingMetrics

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    for kind in ("ddp", "fsdp2"):
        inner = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(3)])
        if rank == 1:
            inner[0].register_forward_hook(lambda *_: time.sleep(SLOW_S))
        if kind == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(inner)
        else:
            for layer in inner:
                fully_shard(layer)
            model = fully_shard(inner)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        with TrainingMetrics(port=0, run_id=kind, rank=rank, world_size=2, log_dir=Path(out_dir) / kind) as metrics:
            metrics.watch(model)
            metrics.begin_step()
            for step in range(1, STEPS + 1):
                loss = model(torch.randn(32, 128)).square().mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                metrics.observe_step(step, float(loss), 1.0, 1e-3)
        dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.integration
def test_the_slow_rank_computes_longer_and_the_other_waits_though_their_steps_are_equal(tmp_path: Path):
    from conftest import free_port

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), __file__, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in ("ddp", "fsdp2"):
        ranks = []
        for name in ("steps.jsonl", "steps.rank1.jsonl"):
            records = [json.loads(line) for line in (tmp_path / kind / name).read_text().splitlines()][2:]
            ranks.append({key: statistics.median(r[key] for r in records if r[key] is not None)
                          for key in ("compute_s", "wait_s")}
                         | {"step_s": statistics.median(r["compute_s"] + r["wait_s"] for r in records)})
        fast, slow = ranks
        assert abs(fast["step_s"] - slow["step_s"]) < 0.3 * slow["step_s"], (kind, ranks)  # lockstep
        assert slow["compute_s"] > fast["compute_s"] + 0.7 * SLOW_S, (kind, ranks)
        assert fast["wait_s"] > 0.7 * SLOW_S and slow["wait_s"] < 0.3 * SLOW_S, (kind, ranks)


def test_one_process_waits_on_nothing_though_its_backward_ends_with_callbacks(tmp_path: Path):
    """No process group of several ranks: the end of backward's callbacks (here a 50 ms one, as the Hugging Face
    callback's own norm or any framework's bookkeeping) are compute, and every step's wait is exactly 0."""
    import time

    torch = pytest.importorskip("torch")
    from thermograd.trainer.metrics import TrainingMetrics

    assert not torch.distributed.is_initialized()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))

    def slow_bookkeeping(_param) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(lambda: time.sleep(0.05))

    model[0].weight.register_post_accumulate_grad_hook(slow_bookkeeping)  # the last gradient of the backward
    with TrainingMetrics(port=0, run_id="one", log_dir=tmp_path) as metrics:
        metrics.watch(model)
        metrics.begin_step()
        for step in range(1, 4):
            model(torch.randn(4, 8)).square().mean().backward()
            metrics.observe_step(step, 1.0, 1.0, 1e-3)
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["wait_s"] for r in records] == [0.0, 0.0, 0.0]
    assert all(r["compute_s"] >= 0.05 for r in records)


def test_a_rank_among_several_counts_the_end_of_backward_as_its_wait(monkeypatch):
    """The same hooks with a process group of several ranks (stood in for): the span from the last gradient to
    the end of backward's callbacks is the wait (DDP's finalize waiting for the all-reduce)."""
    import time

    torch = pytest.importorskip("torch")
    from thermograd.trainer import waits

    monkeypatch.setattr(waits, "collectives_running", lambda: True)
    model = torch.nn.Linear(8, 1)
    model.weight.register_post_accumulate_grad_hook(
        lambda _p: torch.autograd.Variable._execution_engine.queue_callback(lambda: time.sleep(0.05)))
    watched = waits.CollectiveWaits(model)
    model(torch.randn(4, 8)).square().mean().backward()
    assert 0.045 <= watched.take_s() < 0.5
    monkeypatch.setattr(waits, "collectives_running", lambda: False)
    model(torch.randn(4, 8)).square().mean().backward()
    assert watched.take_s() == 0.0
    watched.remove()


if __name__ == "__main__":  # a torchrun rank
    _worker(sys.argv[1])
