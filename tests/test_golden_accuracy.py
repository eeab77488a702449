"""Accuracy measurement (golden/accuracy.py) against brute-force definitions."""

import math

import pytest
import torch

from olivine.golden.accuracy import (
    AccuracyRow,
    accuracy_rich_table,
    accuracy_table,
    greedy_agreement,
    greedy_tokens,
    negative_log_likelihood,
    next_token_agreement,
    perplexity,
    window_spans,
)
from olivine.golden.data import corpus_tokens
from olivine.golden.loaders import load_model


@pytest.fixture(scope="module")
def glass():
    loaded = load_model("glassllm")
    return loaded.float_model(), loaded.tokenizer


class Uniform:
    """Equal logits for every token: perplexity must be exactly the vocabulary size."""

    def __init__(self, config):
        self.config = config

    def forward(self, tokens):
        return torch.zeros(*tokens.shape, self.config.vocab_size)


class ForwardOnly:
    """A model with only forward(); its logits are another model's plus, optionally, a fixed
    random vector chosen by the current token (causal, so batching and prefixes do not matter)."""

    def __init__(self, inner, noise=0.0, seed=0):
        self.inner, self.config = inner, inner.config
        g = torch.Generator().manual_seed(seed)
        self.table = noise * torch.randn(inner.config.vocab_size, inner.config.vocab_size, generator=g)

    def forward(self, tokens):
        return self.inner.forward(tokens) + self.table[tokens]


@pytest.mark.parametrize("n, window, stride", [(2, 1, 1), (10, 4, 4), (10, 4, 2), (100, 16, 5), (17, 16, 16), (9, 50, 50)])
def test_window_spans_score_every_target_once(n, window, stride):
    scored = []
    for start, end, first in window_spans(n, window, stride):
        assert 0 <= start < first <= end <= n - 1 and end - start <= window
        scored += range(first, end + 1)
    assert scored == list(range(1, n))


def test_window_spans_rejects_gaps():
    with pytest.raises(ValueError, match="unscored"):
        window_spans(10, 4, 5)


def test_perplexity_of_uniform_model_is_vocab_size(glass):
    model, tok = glass
    ids = corpus_tokens("lee", tok, 300)
    assert perplexity(Uniform(model.config), ids, window=64) == pytest.approx(1024, rel=1e-12)


def brute_force_nll(model, ids, window, stride):
    """Target j predicted from tokens[s:j] of the latest window s that contains j-1 in its input
    and was the first window to reach j, computed one target at a time."""
    total, done = 0.0, 0
    for s in range(0, len(ids), stride):
        end = min(s + window, len(ids) - 1)
        for j in range(max(s + 1, done + 1), end + 1):
            logits = model.forward(ids[s:j])[-1].double()
            total -= float(torch.log_softmax(logits, -1)[ids[j]])
        done = max(done, end)
        if done >= len(ids) - 1:
            break
    return total


@pytest.mark.parametrize("window, stride", [(40, 40), (40, 15)])
def test_perplexity_matches_brute_force(glass, window, stride):
    model, tok = glass
    ids = corpus_tokens("shakespeare", tok, 100)
    total, count = negative_log_likelihood(model, ids, window=window, stride=stride, max_batch_tokens=80)
    assert count == 99
    assert total == pytest.approx(brute_force_nll(model, ids, window, stride), rel=1e-5)
    assert perplexity(model, ids, window, stride) == pytest.approx(math.exp(total / 99), rel=1e-6)


def test_perplexity_batching_does_not_change_result(glass):
    model, tok = glass
    ids = corpus_tokens("lee", tok, 700)
    one = perplexity(model, ids, window=128, max_batch_tokens=1)
    many = perplexity(model, ids, window=128, max_batch_tokens=4096)
    assert one == pytest.approx(many, rel=1e-6)
    assert 20 < one < 1024  # a trained model beats uniform (1024) even on out-of-domain news
    with pytest.raises(ValueError, match="exceeds max_seq_len=128"):
        perplexity(model, ids, window=256)


def test_trained_model_beats_uniform_on_shakespeare(glass):
    model, tok = glass
    ids = corpus_tokens("shakespeare", tok, 1024)
    assert perplexity(model, ids) < 0.3 * 1024


def test_agreement_with_itself_and_with_a_perturbed_copy(glass):
    model, tok = glass
    ids = corpus_tokens("shakespeare", tok, 300)
    assert next_token_agreement(model, model, ids) == 1.0
    noisy = ForwardOnly(model, noise=1.5)
    agr = next_token_agreement(model, noisy, ids, window=100)
    expected = []
    for s in range(0, 299, 100):  # disjoint windows of inputs [s, s+100)
        x = ids[s:min(s + 100, 299)]
        expected += (model.forward(x).argmax(-1) == noisy.forward(x.unsqueeze(0))[0].argmax(-1)).tolist()
    assert len(expected) == 299 and agr == pytest.approx(sum(expected) / 299)
    assert 0.2 < agr < 0.98


def test_greedy_agreement(glass):
    model, tok = glass
    prompt = tok.encode("Once upon a time, there was a")
    assert greedy_tokens(ForwardOnly(model), prompt, 12) == model.generate(prompt, 12)
    assert greedy_agreement(model, ForwardOnly(model), prompt, 12) == 1.0
    noisy = ForwardOnly(model, noise=3.0, seed=5)
    ref = model.generate(prompt, 12)
    seq = prompt + ref
    choices = [int(noisy.forward(torch.tensor([seq[:len(prompt) + i]]))[0, -1].argmax()) for i in range(12)]
    expected = sum(c == r for c, r in zip(choices, ref)) / 12
    assert greedy_agreement(model, noisy, prompt, 12) == pytest.approx(expected)
    assert expected < 1.0


def test_accuracy_table_fp32_and_unknown_preset(glass):
    model, tok = glass
    rows = accuracy_table("glassllm", ["fp32", "w3a3-imaginary"], n_tokens=300, greedy_n=8)
    fp32, bad = rows
    assert fp32.status == "ok" and bad.status.startswith("skipped")
    assert set(fp32.perplexity) == {"shakespeare", "lee"}
    assert fp32.perplexity["lee"] == pytest.approx(perplexity(model, corpus_tokens("lee", tok, 300)), rel=1e-6)
    assert fp32.next_token_agreement == 1.0 and fp32.greedy_agreement == 1.0
    table = accuracy_rich_table(rows + [AccuracyRow("m", "x", status="skipped: test")])
    assert table.row_count == 3 and len(table.columns) == 8


def test_accuracy_json_report_through_the_command_line(capsys):
    """`olivine accuracy --json` prints one JSON object whose figures are accuracy_table's."""
    import json

    from olivine import cli
    from olivine.golden.accuracy import accuracy_report, accuracy_table

    assert cli.main(["accuracy", "--model", "glassllm", "--presets", "fp32,w8a8", "--tokens", "300", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["corpora"] == ["shakespeare"] and report["models"] == ["glassllm-en"]
    assert [r["preset"] for r in report["results"]] == ["fp32", "w8a8"]
    rows = accuracy_table("glassllm", ["fp32", "w8a8"], corpora=("shakespeare",), n_tokens=300)
    for got, row in zip(report["results"], rows):
        assert got["status"] == "ok" and got["perplexity"]["shakespeare"] == row.perplexity["shakespeare"]
        assert got["next_token_agreement"] == row.next_token_agreement
        assert got["greedy_agreement"] == row.greedy_agreement and got["seconds"] > 0
    assert report["results"][0]["perplexity"]["shakespeare"] > 1.0
    skipped = accuracy_report([type(rows[0])(model="m", preset="nope", status="skipped: unknown preset")])
    assert skipped["results"][0]["perplexity"] == {} and skipped["results"][0]["next_token_agreement"] is None


def test_accuracy_budget_rows_through_the_command_line(capsys):
    """`olivine accuracy --budget-bits 4.5` adds a row whose perplexity is that of golden.mixed's
    assignment, quantized with golden's calibration rule."""
    import json

    from olivine import cli
    from olivine.golden import mixed
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    assert cli.main(["accuracy", "--model", "glassllm", "--presets", "fp32", "--corpus", "lee", "--tokens", "300",
                     "--budget-bits", "4.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["preset"] for r in report["results"]] == ["fp32", "budget-4.5"]
    m = load_model("glassllm")
    a = mixed.assign(mixed.model_sensitivity(m, n_eval=300), 4.5)
    q = quantize_model(m.config, m.weights, mixed.budget_config(a), model_calibration_tokens(m, n_eval=300),
                       show_progress=False)
    want = perplexity(q, corpus_tokens("lee", m.tokenizer, 300), window=m.config.max_seq_len)
    assert report["results"][1]["perplexity"]["lee"] == pytest.approx(want, rel=1e-9)


def test_accuracy_row_of_a_preset_with_its_own_gptq_calibration_length():
    """w4a8-ovp-gptq-g128-cal4k-smooth's GPTQ takes 4,096 calibration tokens per corpus: the table
    passes them (the rule's text from the same offset) and its row is the integer model that
    quantize_model builds from exactly those tokens."""
    from olivine.golden.accuracy import perplexity
    from olivine.golden.data import calibration_tokens, corpus_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    preset = "w4a8-ovp-gptq-g128-cal4k-smooth"
    (row,) = accuracy_table("glassllm", [preset], corpora=("shakespeare",), n_tokens=300, greedy_n=4)
    assert row.status == "ok"
    m = load_model("glassllm")
    calib = calibration_tokens(m.tokenizer, 4096, max_seq_len=m.config.max_seq_len, n_eval=300)
    q = quantize_model(m.config, m.weights, preset, calib, show_progress=False)
    ids = corpus_tokens("shakespeare", m.tokenizer, 300)
    assert row.perplexity["shakespeare"] == perplexity(q, ids, window=min(m.config.max_seq_len, 299))
