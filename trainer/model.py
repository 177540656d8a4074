"""The GPT-2-architecture causal LM: the tiny from-scratch model, or real weights by name/path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thermograd.trainer.errors import UsageError
from thermograd.trainer.tokenizer import ByteTokenizer, DocumentTokenizer, HFTokenizer

# ~3.3 M parameters: a dozen steps in seconds on a laptop CPU, yet a real transformer's gradients.
TINY_CONFIG = {"n_layer": 4, "n_embd": 256, "n_head": 4}


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: DocumentTokenizer
    label: str  # for train_run_info{model}

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_tiny(seq_len: int) -> LoadedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = ByteTokenizer()
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=max(256, seq_len),
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
        # No dropout: the job is a measurement instrument, not a generalisation study.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        **TINY_CONFIG,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # what transformers falls back to anyway, minus its warning
    return LoadedModel(model, tokenizer, "tiny-gpt2")


def load_pretrained(name_or_path: str, seq_len: int) -> LoadedModel:
    """Real weights from a local path or the hub cache (HF_HUB_OFFLINE=1 forbids downloading)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except Exception as exc:  # noqa: BLE001 — hub/IO/config errors come in many types; all mean "cannot load"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot load model {name_or_path!r}: {reason}") from None
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise UsageError(f"--seq-len {seq_len} exceeds {name_or_path}'s context of {limit} tokens")
    return LoadedModel(model, HFTokenizer(tokenizer), name_or_path)


def load_model(name: str, seq_len: int) -> LoadedModel:
    return build_tiny(seq_len) if name == "tiny" else load_pretrained(name, seq_len)
