"""The GLOBAL gradient norm on every rank under `torchrun --nproc-per-node 2` (CPU, gloo): a plain loop
with FSDP2 (`fully_shard`) and with DDP (`clip_and_measure_grad_norm`), the HF callback's hooks on an
FSDP2 model, and the Lightning callback under Lightning's DDP and FSDP2 (ModelParallelStrategy).

Every scenario trains the same seeded model on the same global micro-batches (rank r gets the r-th
half of each); this file's reference replays them in ONE process on the unsharded model with
`clip_grad_norm_`. Both ranks' published norms must equal the reference's at every step (1e-5), and
the final parameters must equal the reference's: they would not if clipping had used another norm.

Under FSDP2 the naive per-rank norm (of the local shards) is ~1/sqrt(2) of the global one: the
pitfall the code avoids. One torchrun launch runs every scenario (torch, Lightning and transformers
start once per rank), run as this very file: `python -m torch.distributed.run ... <this file> OUT PORT`.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS, ACCUMULATION, WORLD_SIZE = 3, 2, 2
CLIP, LR, GAMMA = 0.3, 0.5, 0.8  # every step's pre-clip norm (~0.4) is above CLIP: clipping always acts
SCENARIOS = ("plain_fsdp2", "plain_ddp", "hf_fsdp2", "lightning_ddp", "lightning_fsdp2")
TESTS_DIR = Path(__file__).resolve().parent


def rank_batches(rank: int):
    """Rank `rank`'s micro-batches in order: the `rank`-th of each group of WORLD_SIZE global ones."""
    from test_trainer_helpers import token_batches

    return token_batches(STEPS * ACCUMULATION * WORLD_SIZE, seed=1)[rank::WORLD_SIZE]


def learning_rates() -> list[float]:
    return [LR * GAMMA**k for k in range(STEPS)]


# ---- the worker (one per rank, started by torchrun) -------------------------------------------------
def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _final_params(model) -> list[list[float]]:
    return [_full(p.detach()).reshape(-1).tolist() for p in model.parameters()]


def _shard(model, layers=None) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in model if layers is None else layers:
        fully_shard(layer)
    fully_shard(model)


def _lm_loss(model, input_ids):
    from test_trainer_helpers import next_token_loss

    return next_token_loss(model, input_ids)


def _backward_step(model, micro_batches, kind: str, loss_of=_lm_loss):
    """One step's forward/backward passes, gradients synchronised on the last micro-batch only."""
    import contextlib

    import torch

    losses = []
    for m, batch in enumerate(micro_batches):
        last = m == len(micro_batches) - 1
        if kind == "ddp":
            context = contextlib.nullcontext() if last else model.no_sync()
        else:
            model.set_requires_gradient_sync(last)
            context = contextlib.nullcontext()
        with context:
            loss = loss_of(model, batch["input_ids"])
            (loss / len(micro_batches)).backward()
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def plain_loop(kind: str, rank: int, out_dir: Path) -> dict:
    import torch
    from test_trainer_helpers import tiny_token_lm
    from torch.distributed.tensor.debug import CommDebugMode

    from thermograd.trainer import TrainingMetrics, clip_and_measure_grad_norm

    model = tiny_token_lm()
    if kind == "fsdp2":
        _shard(model)
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batches = rank_batches(rank)
    result: dict = {"all_reduces": [], "naive_local_norms": []}
    with TrainingMetrics(port=0, run_id=f"plain_{kind}", rank=rank, log_dir=out_dir / f"plain_{kind}") as metrics:
        for step, lr in enumerate(learning_rates(), start=1):
            loss = _backward_step(model, batches[(step - 1) * ACCUMULATION : step * ACCUMULATION], kind)
            local = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in model.parameters()]
            result["naive_local_norms"].append(
                float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in local]))))
            with CommDebugMode() as comms:
                norm = clip_and_measure_grad_norm(model.parameters(), max_norm=CLIP)
            result["all_reduces"].append(sum(n for op, n in comms.get_comm_counts().items() if "all_reduce" in str(op)))
            loss_value, norm_value = norm.publish_with(loss)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad()
            metrics.observe_step(step, loss_value, norm_value, lr, tokens=64 * ACCUMULATION, clipped=norm.clipped)
    result["params"] = _final_params(model.module if kind == "ddp" else model)
    if kind == "fsdp2":
        result["partial"] = _reduce_a_partial(rank, next(model.parameters()).device_mesh)
    return result


def partly_sharded(rank: int) -> list[float]:
    """Only the embedding sharded (a DTensor), the head plain: torch's clip_grad_norm_ refuses the mix
    ("got mixed torch.Tensor and DTensor"); ours reduces each kind on its own and combines them.
    Returns (our pre-clip norm, the norm of all gradients gathered whole, that norm after our clipping)."""
    import torch
    from test_trainer_helpers import next_token_loss, tiny_token_lm
    from torch.distributed.fsdp import fully_shard

    from thermograd.trainer import clip_and_measure_grad_norm

    model = tiny_token_lm()
    fully_shard(model[0])
    next_token_loss(model, rank_batches(rank)[0]["input_ids"]).backward()

    def gathered_norm() -> float:
        return float(torch.linalg.vector_norm(torch.cat([_full(p.grad).reshape(-1) for p in model.parameters()])))

    before = gathered_norm()
    ours = clip_and_measure_grad_norm(model.parameters(), max_norm=0.1).item()
    return [ours, before, gathered_norm()]


def _reduce_a_partial(rank: int, mesh) -> list[float]:
    """torch 2.13's get_total_norm hands back an already-replicated norm; older ones (and sum-of-squares
    code) give a Partial one, whose local value is this rank's share: global_value must reduce it."""
    import torch
    from torch.distributed.tensor import DTensor, Partial
    from torch.distributed.tensor.debug import CommDebugMode

    from thermograd.trainer.gradnorm import global_value

    partial = DTensor.from_local(torch.tensor(float(rank + 1)), mesh, [Partial()])
    with CommDebugMode() as comms:
        value = float(global_value(partial))
    return [float(partial.to_local()), value, comms.get_total_counts()]


def hf_callback_fsdp2(rank: int, out_dir: Path) -> dict:
    """transformers.Trainer cannot run FSDP2 on CPU (see docs/instrumentation.md), so this plays Trainer's part around
    the HF callback: its forward hook (loss), its end-of-backward norm and its on_step_end publishing,
    on an FSDP2 model whose forward returns {"loss": ...} as a transformers model does."""
    import types

    import torch
    from test_trainer_helpers import next_token_loss, tiny_token_lm

    from thermograd.trainer import PrometheusCallback, TrainingMetrics, clip_and_measure_grad_norm

    class LossOutput(torch.nn.Module):
        def __init__(self, lm) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return {"loss": next_token_loss(self.lm, input_ids)}

    model = LossOutput(tiny_token_lm())
    _shard(model, layers=model.lm)
    metrics = TrainingMetrics(port=0, run_id="hf_fsdp2", rank=rank, log_dir=out_dir / "hf_fsdp2", start=False)
    callback = PrometheusCallback(metrics, stream=open(os.devnull, "w"))  # noqa: SIM115
    callback._install_hooks(model)
    callback._max_grad_norm = CLIP  # what on_train_begin reads from args.max_grad_norm
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    args = types.SimpleNamespace(logging_steps=1)
    batches = rank_batches(rank)
    for step, lr in enumerate(learning_rates(), start=1):
        callback.on_step_begin(args, None, None)
        _backward_step(model, batches[(step - 1) * ACCUMULATION : step * ACCUMULATION], "fsdp2",
                       loss_of=lambda m, ids: m(input_ids=ids)["loss"])
        clip_and_measure_grad_norm(model.parameters(), max_norm=CLIP)  # Trainer clips after the callback measured
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        callback.on_optimizer_step(args, None, None, optimizer=optimizer)
        optimizer.zero_grad()
        callback.on_step_end(args, types.SimpleNamespace(global_step=step, epoch=None), None)
    metrics.close()
    return {"params": _final_params(model)}


def lightning_run(kind: str, rank: int, out_dir: Path, base_port: int) -> dict:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
    from test_trainer_helpers import lightning_token_lm, scrape, tiny_token_lm

    from thermograd.trainer.lightning import PrometheusLightningCallback

    if kind == "ddp":
        strategy = DDPStrategy(process_group_backend="gloo")
    else:
        strategy = ModelParallelStrategy(data_parallel_size=WORLD_SIZE, tensor_parallel_size=1,
                                         process_group_backend="gloo")
    module = lightning_token_lm(tiny_token_lm(), rank_batches(rank), LR, GAMMA, shard=kind == "fsdp2")
    callback = PrometheusLightningCallback(port=base_port, run_id=f"lightning_{kind}",
                                           log_dir=str(out_dir / f"lightning_{kind}"), stream=open(os.devnull, "w"))  # noqa: SIM115
    seen: dict = {}

    class ScrapeOwnEndpoint(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            samples = scrape(callback.metrics.url)
            seen["port"] = callback.metrics.port
            seen["samples"] = [[name, dict(labels), value] for (name, labels), value in samples.items()
                               if name in ("train_steps_total", "train_grad_norm")]

    trainer = pl.Trainer(
        accelerator="cpu", devices=WORLD_SIZE, strategy=strategy, max_steps=STEPS,
        accumulate_grad_batches=ACCUMULATION, gradient_clip_val=CLIP, use_distributed_sampler=False,
        callbacks=[callback, ScrapeOwnEndpoint()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
    )
    trainer.fit(module)
    return {**seen, "params": _final_params(module.model)}


def worker(out_dir: Path, base_port: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    results = {
        "plain_fsdp2": plain_loop("fsdp2", rank, out_dir),
        "plain_ddp": plain_loop("ddp", rank, out_dir),
        "hf_fsdp2": hf_callback_fsdp2(rank, out_dir),
        "partly_sharded": partly_sharded(rank),
        "lightning_ddp": lightning_run("ddp", rank, out_dir, base_port),
        "lightning_fsdp2": lightning_run("fsdp2", rank, out_dir, base_port),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


# ---- the tests ------------------------------------------------------------------------------------
def _consecutive_free_ports(count: int) -> int:
    """A base port whose next `count` ports are all free a moment ago (ranks serve on base + local rank)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for offset in range(count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports found")


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = tmp_path_factory.mktemp("torchrun")
    base_port = _consecutive_free_ports(WORLD_SIZE)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD_SIZE),
         __file__, str(out_dir), str(base_port)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    results = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    return out_dir, base_port, results


@pytest.fixture(scope="module")
def reference():
    """(pre-clip norms, mean micro-batch losses of each rank, final parameters) of the unsharded model in ONE
    process: each global micro-batch is both ranks' halves together (equal sizes: its mean loss is the
    mean of theirs, which is what DDP's and FSDP2's averaged gradients are the gradient of)."""
    torch = pytest.importorskip("torch")
    from test_trainer_helpers import next_token_loss, reference_run, tiny_token_lm

    per_rank = [rank_batches(rank) for rank in range(WORLD_SIZE)]
    merged = [torch.cat([batches[i]["input_ids"] for batches in per_rank]) for i in range(STEPS * ACCUMULATION)]
    steps = [merged[i : i + ACCUMULATION] for i in range(0, len(merged), ACCUMULATION)]
    model = tiny_token_lm()
    start = copy.deepcopy(model)
    norms, _ = reference_run(model, steps, CLIP, learning_rates())
    params = [p.detach().reshape(-1).tolist() for p in model.parameters()]
    # Each rank's loss is its own micro-batches' mean, on the weights the reference reached at that step.
    replay, rank_losses = copy.deepcopy(start), [[] for _ in range(WORLD_SIZE)]
    for k, micro in enumerate(steps):
        for rank in range(WORLD_SIZE):
            with torch.no_grad():
                halves = [ids.chunk(WORLD_SIZE)[rank] for ids in micro]
                rank_losses[rank].append(sum(float(next_token_loss(replay, ids)) for ids in halves) / len(halves))
        reference_run(replay, [micro], CLIP, [learning_rates()[k]])
    return norms, rank_losses, params


def _log(out_dir: Path, scenario: str, rank: int) -> list[dict]:
    from test_trainer_helpers import read_jsonl

    return read_jsonl(out_dir / scenario / ("steps.jsonl" if rank == 0 else f"steps.rank{rank}.jsonl"))


def _assert_same_params(ours: list[list[float]], theirs: list[list[float]]) -> None:
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == pytest.approx(ref, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rank_publishes_the_global_norm_that_clipping_used(torchrun, reference, scenario):
    out_dir, _, results = torchrun
    norms, rank_losses, params = reference
    assert all(n > CLIP for n in norms), "clipping must act at every step for the parameters to tell"
    for rank in range(WORLD_SIZE):
        records = _log(out_dir, scenario, rank)
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))
        assert [r["grad_norm"] for r in records] == pytest.approx(norms, abs=1e-5), f"rank {rank}"
        assert [r["loss"] for r in records] == pytest.approx(rank_losses[rank], abs=1e-5), f"rank {rank}"
        assert [r["learning_rate"] for r in records] == pytest.approx(learning_rates(), rel=1e-9)
        assert all(r["clipped"] for r in records)
        _assert_same_params(results[rank][scenario]["params"], params)


@pytest.mark.slow
def test_fsdp2_norm_costs_no_all_reduce_of_ours_and_the_naive_shard_norm_is_wrong(torchrun, reference):
    _, _, results = torchrun
    norms = reference[0]
    for rank in range(WORLD_SIZE):
        fsdp2 = results[rank]["plain_fsdp2"]
        assert fsdp2["all_reduces"] == [1] * STEPS  # the one clip_grad_norm_ itself needs, no second one
        assert results[rank]["plain_ddp"]["all_reduces"] == [0] * STEPS  # DDP's gradients are already averaged
        for naive, norm in zip(fsdp2["naive_local_norms"], norms, strict=True):
            assert naive < 0.9 * norm  # one shard's norm: what a DTensor's local value would have published
        assert fsdp2["partial"] == [rank + 1.0, 1.0 + 2.0, 1]  # a Partial value reduced with one all-reduce


@pytest.mark.slow
def test_a_partly_sharded_model_gets_one_norm_over_both_kinds_of_gradient(torchrun):
    _, _, results = torchrun
    for rank in range(WORLD_SIZE):
        ours, gathered, after = results[rank]["partly_sharded"]
        assert ours == pytest.approx(gathered, rel=1e-5) and gathered > 0.1
        assert after == pytest.approx(0.1, rel=1e-4)  # clipped with that norm


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["lightning_ddp", "lightning_fsdp2"])
def test_lightning_serves_one_endpoint_per_rank_on_port_plus_local_rank(torchrun, reference, scenario):
    _, base_port, results = torchrun
    for rank in range(WORLD_SIZE):
        seen = results[rank][scenario]
        assert seen["port"] == base_port + rank  # LOCAL_RANK == RANK on one host
        values = {name: (labels, value) for name, labels, value in seen["samples"]}
        assert values["train_steps_total"] == ({"run_id": scenario, "rank": str(rank)}, STEPS)
        assert values["train_grad_norm"][1] == pytest.approx(reference[0][-1], abs=1e-5)


if __name__ == "__main__":  # one rank, under torchrun (PYTHONPATH holds the repository and tests/)
    worker(Path(sys.argv[1]), int(sys.argv[2]))
