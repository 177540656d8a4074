"""Tokenizers behind one small interface: bytes documents → one flat array of token ids.

`ByteTokenizer` (the tiny model's) needs no vocabulary file and no download: token = byte value
0–255, plus 256 as end-of-document. `HFTokenizer` wraps a `transformers` tokenizer for real models.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class DocumentTokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode_documents(self, documents: list[bytes]) -> np.ndarray: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    vocab_size = 257
    eos_id = 256

    def encode_documents(self, documents: list[bytes]) -> np.ndarray:
        # Each document's bytes followed by EOS, concatenated, without a Python loop over bytes.
        joined = np.frombuffer(b"".join(doc + b"\0" for doc in documents), dtype=np.uint8).astype(np.int64)
        ends = np.cumsum([len(doc) + 1 for doc in documents]) - 1
        joined[ends] = self.eos_id
        return joined

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size = len(tokenizer)
        eos = tokenizer.eos_token_id
        self.eos_id = int(eos) if eos is not None else 0

    def encode_documents(self, documents: list[bytes]) -> np.ndarray:
        texts = [doc.decode("utf-8", errors="replace") for doc in documents]
        encoded = self._tok(texts, add_special_tokens=False)["input_ids"]
        return np.fromiter(
            (tok for ids in encoded for tok in (*ids, self.eos_id)), dtype=np.int64
        )

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)
