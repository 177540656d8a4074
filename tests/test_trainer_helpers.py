"""Shared helpers for the trainer tests (scraping /metrics, running the real `python -m trainer`)."""

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
        [sys.executable, "-m", "trainer", "--quiet", *args], cwd=cwd, env=trainer_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_trainer(args: list[str], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--quiet", *args], cwd=cwd, env=trainer_env(),
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
