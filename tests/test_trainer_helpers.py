"""Shared helpers for the trainer tests (scraping /metrics, running the real `thermograd-trainer`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]


def scrape(url: str, timeout_s: float = 2.0) -> dict[tuple[str, frozenset], float]:
    """All samples of one scrape keyed by (sample name, frozenset of label items)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    """The value of the one sample `name` whose labels include `labels`."""
    hits = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= lab]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def try_scrape(url: str) -> dict | None:
    try:
        return scrape(url, timeout_s=1.0)
    except OSError:
        return None


def trainer_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None)
    # One intra-op thread: on a shared 2-core box, two spinning OpenMP threads per trainer can make a
    # 50 ms step take seconds.
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_trainer(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "thermograd.trainer", "--quiet", *args], cwd=cwd, env=trainer_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_trainer(args: list[str], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thermograd.trainer", "--quiet", *args], cwd=cwd, env=trainer_env(),
        capture_output=True, text=True, timeout=timeout_s,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {predicate}")


def tiny_lm_and_data(n_sequences: int) -> tuple[object, list[dict]]:
    """A 1-layer GPT-2 built from a config (seeded) and n random 16-token sequences for a Trainer."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_layer=1, n_embd=32, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (n_sequences, 16), generator=generator).tolist()
    return model, [{"input_ids": seq, "labels": seq} for seq in ids]


# ---- a tiny next-token model and an independent reference loop (framework callback tests) ----------
TOKEN_VOCAB = 64


def tiny_token_lm(seed: int = 0):
    """Embedding + linear head over 64 tokens (seeded, no dropout: a reference loop can replay it exactly)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(TOKEN_VOCAB, 32), torch.nn.Linear(32, TOKEN_VOCAB))


def next_token_loss(model, input_ids):
    import torch

    logits = model(input_ids[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, TOKEN_VOCAB), input_ids[:, 1:].reshape(-1))


def token_batches(count: int, batch_size: int = 4, seq_len: int = 16, seed: int = 0) -> list[dict]:
    """`count` batches {"input_ids": (batch_size, seq_len) int64} of random tokens."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, TOKEN_VOCAB, (batch_size, seq_len), generator=generator)}
            for _ in range(count)]


def reference_run(model, steps: list[list], max_norm: float, lrs: list[float]) -> tuple[list[float], list[float]]:
    """Plain SGD with accumulation (each micro-batch's loss / micro-batches, as Lightning and DDP do) and
    `clip_grad_norm_`, the textbook way: (pre-clip norms, mean micro-batch losses), one per step."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=lrs[0])
    norms, losses = [], []
    for micro_batches, lr in zip(steps, lrs, strict=True):
        step_losses = []
        for input_ids in micro_batches:
            loss = next_token_loss(model, input_ids)
            (loss / len(micro_batches)).backward()
            step_losses.append(float(loss.detach()))
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        losses.append(sum(step_losses) / len(step_losses))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
    return norms, losses


def lightning_token_lm(model, batches: list[dict], lr: float, gamma: float = 1.0, shard: bool = False):
    """A LightningModule training `model` on `batches` in order: SGD, LR lr * gamma**step (stepped per
    optimizer step), `self.log` of the loss (Lightning's own logging); `shard`: FSDP2 in configure_model."""
    import lightning.pytorch as pl
    import torch

    class TokenLM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def configure_model(self) -> None:  # ModelParallelStrategy requires it; a no-op unless sharding
            if shard:
                from torch.distributed.fsdp import fully_shard

                mesh = self.device_mesh["data_parallel"]
                for layer in self.model:
                    fully_shard(layer, mesh=mesh)
                fully_shard(self.model, mesh=mesh)

        def training_step(self, batch, batch_idx):
            loss = next_token_loss(self.model, batch["input_ids"])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma**step)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

    return TokenLM()


def with_fsdp1_child(model):
    """`model` holding a real FSDP1 (`FullyShardedDataParallel`) module, never initialised: FSDP1 needs an
    accelerator to wrap anything (torch 2.13 refuses CPU), and the callbacks only look for its class."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapper = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    torch.nn.Module.__init__(wrapper)
    model.add_module("fsdp1", wrapper)
    return model
