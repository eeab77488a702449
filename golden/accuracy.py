"""Accuracy of a (quantized) model against text and against the float reference.

Every model here is anything that follows :class:`olivine.golden.model.ForwardModel`: it has a
``config`` (:class:`~olivine.golden.model.LlamaConfig`) and ``forward(tokens[B, T]) -> logits
[B, T, V]`` (float). :class:`~olivine.golden.model.FloatLlama` and the quantized
``olivine.golden.qmodel.QLlama`` both do.

Definitions:

* :func:`perplexity`: ``exp(mean NLL)`` of every token after the first, each predicted from at
  most ``window`` preceding tokens. Windows start every ``stride`` tokens; each scores only the
  targets no earlier window scored (``stride == window``: disjoint windows; smaller ``stride``:
  more context per target, more compute). Equal-length windows run as one batch.
* :func:`next_token_agreement`: teacher-forced on a token stream, the fraction of positions where
  the two models' argmax next tokens agree.
* :func:`greedy_agreement`: model ``a`` (the reference) continues ``prompt`` greedily for ``n``
  tokens; model ``b`` reads the same sequence; the fraction of those ``n`` steps at which ``b``'s
  greedy choice equals ``a``'s. It is 1.0 exactly when ``b``'s own greedy generation would be
  identical, and unlike comparing two free-running generations it does not punish every step
  after a first divergence.
* :func:`accuracy_table`: the rows ``benchmarks/bench_accuracy.py`` and ``olivine demo`` print.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from olivine.progress import track

from .model import FloatLlama, ForwardModel

__all__ = [
    "DEFAULT_PRESETS",
    "DEFAULT_PROMPTS",
    "AccuracyRow",
    "window_spans",
    "negative_log_likelihood",
    "perplexity",
    "next_token_agreement",
    "greedy_tokens",
    "greedy_agreement",
    "accuracy_table",
    "accuracy_rich_table",
]

#: The precision presets of ``olivine.golden.qconfig`` the benchmark reports, in order.
DEFAULT_PRESETS = ("fp32", "w8a8", "w4a8-int4", "w4a8-ovp", "w4a4-ovp", "w4a8-ovp-8:16", "w4a8-ovp-4:16")

#: Prompts for greedy agreement (English; both built-in models speak it).
DEFAULT_PROMPTS = ("The capital of France is", "Once upon a time, there was a")


def _as_1d_tokens(tokens) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.dim() != 1 or t.dtype.is_floating_point:
        raise ValueError(f"tokens must be a 1-D sequence of integer ids, got shape {tuple(t.shape)} "
                         f"dtype {t.dtype}")
    if t.numel() < 2:
        raise ValueError("need at least 2 tokens (one input and one target)")
    return t.to(torch.int64)


def window_spans(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a stream of ``n_tokens`` tokens: ``(start, end, first_scored)`` with inputs
    ``tokens[start:end]`` predicting ``tokens[start+1:end+1]``, of which positions
    ``first_scored..end`` (target indices) are scored. Every target ``1..n_tokens-1`` is scored once."""
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    if stride > window:
        raise ValueError(f"stride ({stride}) > window ({window}) would leave tokens unscored")
    spans, scored_up_to, start = [], 0, 0  # targets 1..scored_up_to are done
    last_target = n_tokens - 1
    while scored_up_to < last_target:
        end = min(start + window, last_target)  # inputs start..end-1, targets start+1..end
        spans.append((start, end, max(start + 1, scored_up_to + 1)))
        scored_up_to = end
        start += stride
    return spans


def _default_window(model: ForwardModel, n_tokens: int, window: int | None) -> int:
    limit = model.config.max_seq_len
    if window is None:
        return min(limit, n_tokens - 1)
    if window > limit:
        raise ValueError(f"window {window} exceeds max_seq_len={limit} of {model.config.name!r}")
    return window


def _batched_windows(model: ForwardModel, tokens: torch.Tensor, window: int, stride: int,
                     max_batch_tokens: int):
    """Yield ``(logits [T, V], targets [T], scored mask offset)`` per window, batching equal lengths."""
    spans = window_spans(tokens.numel(), window, stride)
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        groups.setdefault(span[1] - span[0], []).append(span)
    for length, group in groups.items():
        per_batch = max(1, max_batch_tokens // length)
        for i in range(0, len(group), per_batch):
            chunk = group[i:i + per_batch]
            inputs = torch.stack([tokens[s:e] for s, e, _ in chunk])
            with torch.no_grad():
                logits = model.forward(inputs)
            for row, (s, e, first) in enumerate(chunk):
                skip = first - (s + 1)
                yield logits[row, skip:].float(), tokens[first:e + 1]


def negative_log_likelihood(model: ForwardModel, tokens, window: int | None = None,
                            stride: int | None = None, max_batch_tokens: int = 2048) -> tuple[float, int]:
    """Summed NLL (nats) and number of scored targets; see :func:`perplexity`."""
    tokens = _as_1d_tokens(tokens)
    window = _default_window(model, tokens.numel(), window)
    stride = window if stride is None else stride
    total, count = 0.0, 0
    for logits, targets in _batched_windows(model, tokens, window, stride, max_batch_tokens):
        total += float(torch.nn.functional.cross_entropy(logits.double(), targets, reduction="sum"))
        count += targets.numel()
    return total, count


def perplexity(model: ForwardModel, tokens, window: int | None = None, stride: int | None = None,
               max_batch_tokens: int = 2048) -> float:
    """Perplexity of ``tokens`` (1-D) under ``model``, windows of ``window`` tokens (default: the
    whole stream or ``max_seq_len``) every ``stride`` tokens (default ``window``)."""
    total, count = negative_log_likelihood(model, tokens, window, stride, max_batch_tokens)
    return math.exp(total / count)


def next_token_agreement(a: ForwardModel, b: ForwardModel, tokens, window: int | None = None,
                         max_batch_tokens: int = 2048) -> float:
    """Fraction of positions of ``tokens`` where ``a`` and ``b`` predict the same next token
    (teacher forced, disjoint windows)."""
    tokens = _as_1d_tokens(tokens)
    if a.config.vocab_size != b.config.vocab_size:
        raise ValueError("the two models have different vocabularies; agreement is meaningless")
    window = _default_window(a, tokens.numel(), window)
    window = min(window, b.config.max_seq_len)
    same = count = 0
    for (la, _), (lb, _) in zip(_batched_windows(a, tokens, window, window, max_batch_tokens),
                                _batched_windows(b, tokens, window, window, max_batch_tokens)):
        same += int((la.argmax(-1) == lb.argmax(-1)).sum())
        count += la.shape[0]
    return same / count


def greedy_tokens(model: ForwardModel, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt``: the model's ``generate`` if it has one (KV cache),
    else repeated full forwards (works for any forward-only model)."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("the prompt is empty; give at least one token")
    if len(prompt) + n > model.config.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)}) + n ({n}) exceeds max_seq_len={model.config.max_seq_len}")
    if isinstance(model, FloatLlama):
        return model.generate(prompt, n, greedy=True)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model.forward(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def greedy_agreement(a: ForwardModel, b: ForwardModel, prompt: Sequence[int], n: int) -> float:
    """Fraction of ``a``'s ``n`` greedy steps after ``prompt`` at which ``b`` (reading the same
    history) makes the same greedy choice. See the module docstring."""
    if n < 1:
        raise ValueError("n must be >= 1")
    prompt = [int(t) for t in prompt]
    continuation = greedy_tokens(a, prompt, n)
    seq = torch.tensor([prompt + continuation[:-1]])
    with torch.no_grad():
        choices = b.forward(seq)[0, len(prompt) - 1:].argmax(-1)
    return float((choices == torch.tensor(continuation)).double().mean())


# ----------------------------------------------------------------------------------------------
# The accuracy table (benchmark and `olivine demo`)

@dataclass
class AccuracyRow:
    """One preset of one model. ``status`` is "ok" or the reason the row was skipped."""

    model: str
    preset: str
    perplexity: dict[str, float] = field(default_factory=dict)
    next_token_agreement: float | None = None
    greedy_agreement: float | None = None
    status: str = "ok"
    seconds: float = 0.0


def _quantizer():
    """``(QuantConfig, quantize_model)`` from olivine.golden.qmodel, or an explanation why not."""
    try:
        from . import qmodel
    except ImportError as err:
        return None, f"olivine.golden.qmodel unavailable ({err})"
    qcfg = getattr(qmodel, "QuantConfig", None)
    if qcfg is None:
        try:
            from .qconfig import QuantConfig as qcfg
        except ImportError as err:
            return None, f"QuantConfig unavailable ({err})"
    quantize = getattr(qmodel, "quantize_model", None)
    if quantize is None:
        return None, "olivine.golden.qmodel has no quantize_model()"
    return (qcfg, quantize), ""


def _quantize_model():
    from .qmodel import quantize_model

    return quantize_model


def accuracy_table(model_name: str, presets: Iterable[str] = DEFAULT_PRESETS,
                   corpora: Sequence[str] = ("shakespeare", "lee"), n_tokens: int | None = None,
                   window: int | None = None, greedy_n: int = 32,
                   prompts: Sequence[str] = DEFAULT_PROMPTS, budgets: Sequence[float] = (),
                   progress=None) -> list[AccuracyRow]:
    """Perplexity on the first ``n_tokens`` tokens of each corpus, next-token agreement with fp32 on
    those tokens, and greedy agreement with fp32 (``greedy_n`` tokens after each prompt), per preset.

    ``n_tokens`` defaults to 1024 for SmolLM2-sized models and 4096 for glassllm; ``window`` to
    min(max_seq_len, n_tokens). Calibration tokens (static activation scales, GPTQ, the
    mixed-precision sensitivity) are golden.data's rule (:func:`~olivine.golden.data.calibration_tokens`:
    Lee + Tiny Shakespeare after the evaluated tokens; at the default ``n_tokens`` the very tokens
    ``olivine compile`` calibrates with). ``budgets``: average weight bits; each adds a row
    ``budget-<bits>`` with the mixed-precision assignment of golden/mixed.py under that budget.
    A preset the quantizer does not know (or a missing quantizer) gives a row with ``status``
    saying why. ``progress(str)`` is called per step.
    """
    from .data import calibration_tokens, corpus_tokens, default_eval_tokens
    from .loaders import load_model

    if budgets:  # a budget below the cheapest assignment is refused from the shapes, before any work
        from . import mixed
        from .loaders import load_model_config

        shape = load_model_config(model_name)
        for b in budgets:
            mixed._refuse_budget(mixed._check_budget(b), mixed.min_budget_bits(shape), f"for {shape.name}")
    loaded = load_model(model_name)
    if loaded.tokenizer is None:
        raise ValueError(f"{model_name}: the checkpoint has no tokenizer; accuracy needs text -> tokens")
    cfg, tok = loaded.config, loaded.tokenizer
    if n_tokens is None:
        n_tokens = default_eval_tokens(cfg.max_seq_len)
    window = min(window or cfg.max_seq_len, cfg.max_seq_len, n_tokens - 1)
    say = progress or (lambda msg: None)
    texts = {c: corpus_tokens(c, tok, n_tokens) for c in corpora}
    calib = calibration_tokens(tok, max_seq_len=cfg.max_seq_len, n_eval=n_tokens)
    prompt_ids = [tok.encode(p) for p in prompts]
    greedy_n = min(greedy_n, cfg.max_seq_len - max(len(p) for p in prompt_ids))
    reference = FloatLlama(cfg, loaded.weights)
    quantizer, why = _quantizer()

    presets = list(presets)
    budget_cfgs = {}
    if budgets:
        from . import mixed

        sens = mixed.model_sensitivity(loaded, progress=say, n_eval=n_tokens)
        for b in budgets:
            a = mixed.assign(sens, b)
            budget_cfgs[mixed.BUDGET_NAME.format(b)] = mixed.budget_config(a)
            say(f"{cfg.name}: budget {b:g} bits -> {a.average_bits:.3f} bits {a.counts}")
        presets += list(budget_cfgs)
    bar = track(f"accuracy of {cfg.name}", len(presets) * (2 + len(corpora)), "step")

    rows = []
    for preset in presets:
        t0 = time.perf_counter()
        row = AccuracyRow(model=cfg.name, preset=preset)
        if quantizer is None and preset != "fp32":
            row.status = f"skipped: {why}"
            rows.append(row)
            bar.advance(f"{preset}: skipped", 2 + len(corpora))
            continue
        if quantizer is None:
            model = reference
            bar.advance(f"{preset}: the float reference")
        else:
            qcfg_cls, quantize = quantizer
            try:
                qcfg = budget_cfgs[preset] if preset in budget_cfgs else qcfg_cls.preset(preset)
            except ValueError as err:
                row.status = f"skipped: {err}"
                rows.append(row)
                bar.advance(f"{preset}: skipped", 2 + len(corpora))
                continue
            say(f"{cfg.name}: quantizing {preset}")
            c_tokens = calib
            if getattr(qcfg, "gptq_tokens", None):  # its GPTQ takes more calibration text (same first tokens)
                c_tokens = calibration_tokens(tok, qcfg.calibration_length(calib.shape[-1]), max_seq_len=cfg.max_seq_len,
                                              n_eval=n_tokens)
            if quantize is _quantize_model():
                from .qcache import quantize_cached  # the same model, kept on disk between runs

                model = quantize_cached(loaded, qcfg, c_tokens, progress=say)
            else:
                model = quantize(cfg, loaded.weights, qcfg, c_tokens)
            bar.advance(f"{preset}: quantized")
        for name, ids in texts.items():
            say(f"{cfg.name} {preset}: perplexity on {name}")
            row.perplexity[name] = perplexity(model, ids, window=window)
            bar.advance(f"{preset}: perplexity on {name}")
        if model is reference:
            row.next_token_agreement = row.greedy_agreement = 1.0
        else:
            say(f"{cfg.name} {preset}: agreement with fp32")
            ids = texts[corpora[0]]
            row.next_token_agreement = next_token_agreement(reference, model, ids, window=window)
            row.greedy_agreement = sum(greedy_agreement(reference, model, p, greedy_n)
                                       for p in prompt_ids) / len(prompt_ids)
        bar.advance(f"{preset}: agreement with fp32")
        row.seconds = time.perf_counter() - t0
        rows.append(row)
    bar.close()
    return rows


def accuracy_report(rows: Sequence[AccuracyRow], seconds: float | None = None) -> dict:
    """The rows as one JSON-ready object (``olivine accuracy --json``)::

        {"models": [...], "corpora": [...], "seconds": total,
         "results": [{"model", "preset", "status", "perplexity": {corpus: value},
                      "next_token_agreement", "greedy_agreement", "seconds"}, ...]}

    Values of skipped rows are null; ``status`` says why.
    """
    corpora: list[str] = []
    models: list[str] = []
    for row in rows:
        corpora += [c for c in row.perplexity if c not in corpora]
        if row.model not in models:
            models.append(row.model)
    results = [{"model": r.model, "preset": r.preset, "status": r.status,
                "perplexity": {c: r.perplexity.get(c) for c in corpora} if r.status == "ok" else {},
                "next_token_agreement": r.next_token_agreement, "greedy_agreement": r.greedy_agreement,
                "seconds": round(r.seconds, 3)} for r in rows]
    total = sum(r.seconds for r in rows) if seconds is None else seconds
    return {"models": models, "corpora": corpora, "seconds": round(total, 3), "results": results}


def accuracy_rich_table(rows: Sequence[AccuracyRow], title: str | None = None):
    """A ``rich.table.Table`` of :func:`accuracy_table` rows."""
    from rich.table import Table

    corpora: list[str] = []
    for row in rows:
        corpora += [c for c in row.perplexity if c not in corpora]
    table = Table(title=title or "Accuracy (perplexity lower is better; agreement vs fp32)")
    table.add_column("model", no_wrap=True)
    table.add_column("preset", no_wrap=True)
    for c in corpora:
        table.add_column(f"ppl {c}", justify="right", no_wrap=True)
    table.add_column("next-token agr.", justify="right")
    table.add_column("greedy agr.", justify="right")
    table.add_column("s", justify="right")
    table.add_column("note")
    for row in rows:
        if row.status != "ok":
            table.add_row(row.model, row.preset, *["-"] * len(corpora), "-", "-", "-", row.status)
            continue
        table.add_row(row.model, row.preset,
                      *[f"{row.perplexity[c]:.2f}" if c in row.perplexity else "-" for c in corpora],
                      f"{row.next_token_agreement:.3f}", f"{row.greedy_agreement:.3f}",
                      f"{row.seconds:.1f}", "")
    return table
