"""Tokenizer wrappers with one small interface: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
``eos_id``, ``bos_id`` (``None`` if the model has none) and ``vocab_size``.

``encode`` never adds special tokens: callers that want a BOS token prepend ``bos_id`` themselves,
so token streams (corpora, prompts) mean the same thing for every model.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["TextTokenizer", "GlassTokenizer", "HFTokenizer"]


@runtime_checkable
class TextTokenizer(Protocol):
    eos_id: int | None
    bos_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f"encode() takes a str, got {type(text).__name__}")
    return text


class GlassTokenizer:
    """The glassllm package's own character BPE (1024 tokens)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.vocab_size = int(inner.vocab_size)
        self.eos_id = inner.token_to_id.get("<eos>")
        self.bos_id = inner.token_to_id.get("<bos>")

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(_check_text(text)))

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"GlassTokenizer(vocab_size={self.vocab_size})"


class HFTokenizer:
    """A Hugging Face ``transformers`` tokenizer (e.g. the one inside a GGUF file)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.vocab_size = int(len(inner))
        self.eos_id = inner.eos_token_id
        self.bos_id = inner.bos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(_check_text(text), add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.inner).__name__}, vocab_size={self.vocab_size})"
