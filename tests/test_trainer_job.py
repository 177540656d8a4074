"""The reference job in-process (imports paid once): determinism, perturbation bursts, a recoverable NaN."""

from __future__ import annotations

import io

import pytest
from test_trainer_helpers import read_jsonl

from thermograd.trainer.config import JobConfig
from thermograd.trainer.errors import UsageError
from thermograd.trainer.job import run
from thermograd.trainer.perturb import parse_perturb
from thermograd.trainer.schedule import lr_factor

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core box, two spinning OpenMP threads make a 15 ms step
    take hundreds (same reason the process tests set OMP_NUM_THREADS=1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(tmp_path, name: str, **overrides) -> list[dict]:
    cfg = JobConfig(steps=6, batch_size=2, seq_len=32, port=0, linger_s=0, quiet=True,
                    log_dir=str(tmp_path / name), run_id=name, **overrides)
    run(cfg, stream=io.StringIO())
    return read_jsonl(tmp_path / name / "steps.jsonl")


def test_same_seed_same_run_on_cpu(tmp_path):
    first = _run(tmp_path, "a", seed=3, device="cpu")
    second = _run(tmp_path, "b", seed=3, device="cpu")
    other = _run(tmp_path, "c", seed=4, device="cpu")
    keys = ("loss", "grad_norm", "learning_rate", "epoch")
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in second]
    assert [r["loss"] for r in first] != [r["loss"] for r in other]


def test_step_perturbation_bursts_multiply_the_lr_exactly_where_scheduled(tmp_path):
    records = _run(tmp_path, "p", device="cpu", lr=2e-3, warmup_steps=2,
                   perturb=parse_perturb("steps=2,4-5,lr_mult=10"))
    assert [r["perturbation"] for r in records] == [False, True, False, True, True, False]
    for r in records:
        expected = 2e-3 * lr_factor(r["step"], 6, 2, "cosine") * (10 if r["perturbation"] else 1)
        assert r["learning_rate"] == pytest.approx(expected, rel=1e-12)


def test_pause_and_lr_bursts_together(tmp_path):
    """A pause before step 1 (start=0s) and LR bursts on steps 2 and 4: the pause is no step, the LR bursts
    are where they were, and the step after the pause carries pause_s and pause_start_unix."""
    import time

    before = time.time()
    records = _run(tmp_path, "pl", device="cpu", perturb=parse_perturb("steps=2,4,lr_mult=10"),
                   pause=parse_perturb("kind=pause,every=60s,duration=300ms,start=0s"))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["perturbation"] for r in records] == [False, True, False, True, False, False]
    assert 0.3 <= records[0]["pause_s"] < 1.0
    assert before <= records[0]["pause_start_unix"] <= records[0]["time_unix"] - records[0]["pause_s"]
    assert [r["pause_s"] for r in records[1:]] == [0.0] * 5
    assert all(r["pause_start_unix"] is None for r in records[1:])


def test_an_isolated_nonfinite_step_is_skipped_and_training_goes_on(tmp_path):
    records = _run(tmp_path, "n", device="cpu", inject_nan_steps=((2, 2),))
    assert [r["nonfinite"] for r in records] == [False, True, False, False, False, False]
    assert records[1]["loss"] is None and records[1]["grad_norm"] is None
    # Had step 2's NaN gradients reached AdamW, every later loss would be NaN too.
    assert all(r["loss"] is not None for r in records[2:])


def test_instrumentation_adds_no_host_sync(tmp_path, monkeypatch):
    """Count every tensor→host conversion during a run with instrumentation on and off: equal counts
    (the job's own one per step, for the non-finite check and for publishing, is in both)."""
    import torch

    counts = {"n": 0}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            counts["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def syncs(instrument: bool, name: str, steps: int = 3) -> int:
        counts["n"] = 0
        cfg = JobConfig(steps=steps, batch_size=2, seq_len=32, port=0, linger_s=0, quiet=True, device="cpu",
                        instrument=instrument, log_dir=str(tmp_path / name))
        run(cfg, stream=io.StringIO())
        return counts["n"]

    syncs(False, "warm", steps=1)  # first-call conversions (lazy inits) happen once per process
    off, on = syncs(False, "off"), syncs(True, "on")
    assert on == off and off >= 3


def test_a_local_pretrained_model_and_its_tokenizer_load_offline(tmp_path):
    """--model PATH: real weights + tokenizer from disk (built here, saved, loaded by the job)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n" * 400)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([corpus.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_layer=1, n_embd=32, n_head=2))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    cfg = JobConfig(model=str(tmp_path / "model"), data=[str(corpus)], steps=3, batch_size=2, seq_len=32,
                    port=0, linger_s=0, quiet=True, device="cpu", log_dir=str(tmp_path / "log"))
    result = run(cfg, stream=io.StringIO())
    assert result.steps_done == 3
    records = read_jsonl(tmp_path / "log" / "steps.jsonl")
    assert len(records) == 3 and all(r["loss"] > 0 for r in records)
    with pytest.raises(UsageError, match="exceeds"):
        run(JobConfig(model=str(tmp_path / "model"), data=[str(corpus)], seq_len=128, port=0, quiet=True,
                      instrument=False), stream=io.StringIO())
