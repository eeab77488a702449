"""Mixed precision under a weight-size budget: per-linear sensitivity, a knapsack assignment, a QuantConfig.

Three steps (issue 10, section 1):

1. :func:`measure_sensitivity`: for every decoder linear (each layer's wq, wk, wv, wo, w_gate,
   w_up, w_down) and every choice in :data:`CHOICES`, the predicted increase of the mean NLL
   (nats per token) when only that linear takes the choice. The proxy is the second-order
   (diagonal empirical Fisher) estimate on the calibration text::

       dNLL(linear, choice) = 1/2 * sum_{t, n} g[t, n]**2 * (x[t] . dW[n])**2 / T

   x: the linear's float input, g: the gradient of the summed NLL w.r.t. its output (one
   backward pass of the float model per window of held-out text: the calibration rule's next
   tokens, because GPTQ's choices look better than they are on the tokens GPTQ fitted), dW = W - W_q with W_q exactly the
   grid golden's quantize_model puts there for that choice (round to nearest, GPTQ with the
   same Hessians, or N:16 pruning then quantization). It is the layer-output error weighted by
   how much the loss cares about each output; it ignores the activation rounding (the same
   per-token INT8 for every choice) and interactions between linears (the assignment adds
   the per-linear figures). :func:`validate_sensitivity` compares it with the true NLL
   increase of single-linear substitutions on evaluation text (docs/benchmarks.md).
2. :func:`assign`: per linear the choice minimising the summed prediction subject to
   ``average weight bits <= budget``; an exact multiple-choice knapsack (dynamic programming
   over bytes in units of ``total / 2**17``, every cost rounded UP, so the result always meets
   the budget in exact bytes and is deterministic). A budget below the cheapest assignment is
   refused with the smallest feasible budget.
3. :func:`budget_config`: the assignment as a :class:`~olivine.golden.qconfig.QuantConfig` (one
   exact-name override per linear; lm_head W8A8 as in every preset), which quantize_model,
   the quantized-model cache and the compiler take like any other configuration.

What "bits" counts (:func:`storage_bytes`), per decoder linear, as the compiler stores it
(compiler/layout.py): the weight values (INT8 bytes, packed INT4 / OVP4 nibbles; only the kept
values of an N:16 linear), one 16-byte requantization entry per output row (bias, multiplier,
shift: the per-row scale), and for N:16 the block-N table (1 byte per 16x16 block, padded to
16 bytes as one tile would) and the packed 4-bit in-group index of every kept value of a sparse
block; with per-group weight multipliers (LayerQuant.group) their packed 4-bit values,
ceil(ceil(K / group) / 2) bytes per row. Not counted: the 64-byte alignment between tiles and the extra table padding of a
linear split into several tiles (< 0.1 %), lm_head and the embedding table (INT8 in every
configuration, the same for all). Average bits = 8 * bytes / (true weights of the decoder
linears).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import torch

from .model import LINEAR_NAMES, FloatLlama, LlamaConfig, LlamaWeights
from .qconfig import LayerQuant, QuantConfig

__all__ = ["CHOICES", "DEFAULT_CHOICES", "MixedPrecisionError", "Sensitivity", "Assignment", "storage_bytes",
           "decoder_linear_shapes", "measure_sensitivity", "sensitivity_cached", "assign", "min_budget_bits",
           "budget_config", "quantized_weight", "validate_sensitivity", "BUDGET_NAME", "model_sensitivity",
           "assignment_of", "config_bits"]

#: The per-linear choices (name -> LayerQuant). Activations are per-token INT8 everywhere (the
#: compiler's MM/MV path for any weight format). "-gptq": the same grid chosen by GPTQ.
CHOICES: dict[str, LayerQuant] = {
    "int8": LayerQuant("int8", "int8"),
    "int8-8:16": LayerQuant("int8", "int8", "8:16"),
    "ovp4": LayerQuant("ovp4", "int8"),
    "ovp4-gptq": LayerQuant("ovp4", "int8", method="gptq"),
    "int4": LayerQuant("int4", "int8"),
    "int4-gptq": LayerQuant("int4", "int8", method="gptq"),
    "int8-4:16": LayerQuant("int8", "int8", "4:16"),
    "ovp4-4:16": LayerQuant("ovp4", "int8", "4:16"),
}
#: All of them: 8, 6, 4 (three grids) and 3 / 2 bits (4:16). OVP4 at 8:16 (4 + 4 bits of index
#: per kept pair of values: as many bytes as dense OVP4 and far less accurate) is left out.
DEFAULT_CHOICES = tuple(CHOICES)
#: QuantConfig name of a budget assignment ("budget-4.5")
BUDGET_NAME = "budget-{:g}"
_HEAD = LayerQuant("int8", "int8")
_ENTRY = 16  # bytes of one requantization entry (compiler/layout.py ENTRY)
_UNITS = 1 << 17  # knapsack resolution: the largest total cost in units


class MixedPrecisionError(ValueError):
    """A budget no assignment meets, an unknown choice, or calibration that cannot be used."""


def _pad16(n: int) -> int:
    return -(-n // 16) * 16


def storage_bytes(n: int, k: int, lq: LayerQuant) -> int:
    """Bytes a linear of true shape [n, k] occupies in the weight image (see the module docstring)."""
    n_p, k_p = _pad16(n), _pad16(k)
    bits = 8 if lq.weights == "int8" else 4
    if lq.sparsity is None:  # + the packed 4-bit group multipliers of each row (contract 2a)
        groups = -(-k_p // lq.group) if lq.group else 0
        return n_p * (k_p * bits // 8 + -(-groups // 2) + _ENTRY)
    if not (isinstance(lq.sparsity, str) and lq.sparsity.endswith(":16")):
        raise MixedPrecisionError(f"storage of sparsity {lq.sparsity!r} is not modelled; use an N:16 pattern")
    keep = int(lq.sparsity.split(":")[0])
    blocks = (n_p // 16) * (k_p // 16)
    values = blocks * 16 * keep * bits // 8
    table = _pad16(blocks)
    indices = blocks * 16 * keep // 2 if keep < 16 else 0
    return values + table + indices + n_p * _ENTRY


def decoder_linear_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """True [n, k] of every decoder linear, in model order (``layers.<i>.<linear>``)."""
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    per = {"wq": (q, c.dim), "wk": (kv, c.dim), "wv": (kv, c.dim), "wo": (c.dim, q),
           "w_gate": (c.ffn_dim, c.dim), "w_up": (c.ffn_dim, c.dim), "w_down": (c.dim, c.ffn_dim)}
    return {f"layers.{i}.{n}": per[n] for i in range(c.n_layers) for n in LINEAR_NAMES}


def _check_choices(choices) -> tuple[str, ...]:
    choices = tuple(choices)
    unknown = [c for c in choices if c not in CHOICES]
    if unknown or not choices:
        raise MixedPrecisionError(f"unknown mixed-precision choice(s) {unknown or '(none)'}; choose from "
                                  f"{', '.join(CHOICES)}")
    return choices


def min_budget_bits(config: LlamaConfig, choices=DEFAULT_CHOICES) -> float:
    """Average bits of the cheapest assignment (every linear at its smallest choice)."""
    choices = _check_choices(choices)
    shapes = decoder_linear_shapes(config)
    total = sum(min(storage_bytes(n, k, CHOICES[c]) for c in choices) for n, k in shapes.values())
    return 8 * total / sum(n * k for n, k in shapes.values())


# ---------------------------------------------------------------------------------------------
# Sensitivity
# ---------------------------------------------------------------------------------------------


@dataclass
class Sensitivity:
    """Predicted dNLL (nats/token) and storage bytes per (decoder linear, choice).

    delta_nll[name][choice], nbytes[name][choice]; weights[name] = true n * k; calib_tokens: the
    number of calibration tokens scored; model: the config's name."""

    model: str
    choices: tuple[str, ...]
    delta_nll: dict[str, dict[str, float]]
    nbytes: dict[str, dict[str, int]]
    weights: dict[str, int]
    calib_tokens: int
    seconds: float = 0.0

    @property
    def names(self) -> list[str]:
        return list(self.delta_nll)

    def to_dict(self) -> dict:
        return {"model": self.model, "choices": list(self.choices), "delta_nll": self.delta_nll,
                "nbytes": self.nbytes, "weights": self.weights, "calib_tokens": self.calib_tokens,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        return cls(d["model"], tuple(d["choices"]), d["delta_nll"], d["nbytes"], d["weights"], d["calib_tokens"],
                   d.get("seconds", 0.0))


class _GradRecorder(FloatLlama):
    """The float model with autograd on: keeps each decoder linear's input and its output tensor
    (whose .grad the backward pass fills)."""

    def __init__(self, config, weights, names):
        super().__init__(config, weights)
        self.names = set(names)
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def embed(self, tokens):
        return super().embed(tokens).detach().clone().requires_grad_(True)

    def linear(self, name, x, weight):
        y = torch.matmul(x, weight.t())
        if name in self.names:
            y.retain_grad()
            self.inputs[name] = x.detach()
            self.outputs[name] = y
        return y

    def run(self, tokens: torch.Tensor) -> float:
        """Forward and backward of the summed NLL of ``tokens`` [T]; returns that NLL."""
        self.inputs, self.outputs = {}, {}
        with torch.enable_grad():
            t = tokens.unsqueeze(0)
            x = self.embed(t)
            for layer in range(self.config.n_layers):
                x = self.attn_block(layer, x, None, 0)
                x = self.ffn_block(layer, x)
            logits = self.logits_head(x)
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], t[0, 1:], reduction="sum")
            loss.backward()
        return float(loss.detach())


def _windows(tokens, max_len: int) -> list[torch.Tensor]:
    t = torch.as_tensor(tokens).to(torch.int64)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    return [row[s:s + max_len] for row in t for s in range(0, row.numel(), max_len) if row[s:s + max_len].numel() > 1]


def quantized_weight(weights: LlamaWeights, name: str, lq: LayerQuant, gptq_weight=None) -> torch.Tensor:
    """float32 [n, k]: the dequantized weight quantize_model gives linear ``name`` under ``lq``
    (``gptq_weight``: golden.gptq's QWeight when ``lq.method == "gptq"``)."""
    from .contract import padded_weight, quantize_weight

    w = weights.linear(name)
    n, k = w.shape
    if lq.method == "gptq":
        if gptq_weight is None:
            raise MixedPrecisionError(f"{name}: a GPTQ choice needs golden.gptq's weight")
        qw = gptq_weight
    else:
        qw = quantize_weight(padded_weight(w, lq.weights, lq.acts, lq.sparsity), lq.weights, sparsity=lq.sparsity)
    return qw.dequantize()[:n, :k]


def _measuring_source() -> bytes:
    """The source of what the measurement computes (not the assignment or the docs): the cache key's
    code part, with golden's quantization sources (qcache.code_version)."""
    import inspect

    parts = [measure_sensitivity, _GradRecorder, _windows, quantized_weight, storage_bytes, decoder_linear_shapes]
    return "\n".join(inspect.getsource(p) for p in parts).encode() + repr(sorted(CHOICES.items())).encode()


def _identity_key(loaded_or_none, config, weights, choices, calib, score=None) -> str:
    from . import qcache

    if loaded_or_none is not None:
        ident = qcache.model_identity(loaded_or_none)
    else:
        h = hashlib.sha256(repr(config).encode())
        for nm, t in weights.state_dict().items():
            h.update(nm.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        ident = {"weights_sha256": h.hexdigest()}
    code = hashlib.sha256(qcache.code_version().encode() + _measuring_source()).hexdigest()

    def digest(t):
        return None if t is None else hashlib.sha256(torch.as_tensor(t).to(torch.int64).numpy().tobytes()).hexdigest()

    blob = json.dumps({"model": ident, "choices": list(choices), "calib": digest(calib), "score": digest(score),
                       "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def measure_sensitivity(config: LlamaConfig, weights: LlamaWeights, calib_tokens, choices=DEFAULT_CHOICES,
                        progress=None, score_tokens=None) -> Sensitivity:
    """Predicted dNLL of every (decoder linear, choice). GPTQ choices are fitted on ``calib_tokens``
    (as quantize_model fits them); the estimate is scored on ``score_tokens`` (default: the same
    tokens; golden.data.model_calibration_tokens(held_out=True) for an unbiased one). Both [T] or
    [B, T], rows cut into max_seq_len windows. See the module docstring for the estimate."""
    import time

    from olivine.progress import track

    from . import gptq

    choices = _check_choices(choices)
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    shapes = decoder_linear_shapes(config)
    names = list(shapes)
    windows = _windows(calib_tokens if score_tokens is None else score_tokens, config.max_seq_len)
    n_scored = sum(w.numel() - 1 for w in windows)
    if n_scored < 16:
        raise MixedPrecisionError(f"{n_scored} calibration tokens are too few for a sensitivity measurement; "
                                  "pass at least 16 (golden.data.calibration_tokens gives 2 x 1024)")
    gptq_kinds = sorted({CHOICES[c].weights for c in choices if CHOICES[c].method == "gptq"})
    gptq_w: dict[str, dict[str, object]] = {}
    for kind in gptq_kinds:  # the same call (and Hessians) quantize_model makes for a GPTQ layer
        say(f"GPTQ {kind} of {len(names)} linears")
        gptq_w[kind] = gptq.quantize_linears(config, weights, calib_tokens, {n: kind for n in names})
    rec = _GradRecorder(config, weights, names)
    saved: list[tuple[dict, dict]] = []
    for w in windows:
        rec.run(w)
        saved.append((rec.inputs, {n: y.grad.detach().square_() for n, y in rec.outputs.items()}))
        rec.inputs, rec.outputs = {}, {}
    delta: dict[str, dict[str, float]] = {}
    nbytes: dict[str, dict[str, int]] = {}
    with track(f"sensitivity of {config.name} ({len(choices)} choices)", len(names), "linear") as bar:
        for name in names:
            w_f = weights.linear(name).detach().to(torch.float32)
            delta[name], nbytes[name] = {}, {}
            for c in choices:
                lq = CHOICES[c]
                wq = quantized_weight(weights, name, lq, gptq_w.get(lq.weights, {}).get(name))
                dw = (w_f - wq).t().contiguous()
                total = 0.0
                for inputs, g2 in saved:
                    dy = torch.matmul(inputs[name], dw)
                    total += float((g2[name] * dy.square_()).sum(dtype=torch.float64))
                delta[name][c] = 0.5 * total / n_scored
                nbytes[name][c] = storage_bytes(*shapes[name], lq)
            bar.advance(name)
    return Sensitivity(config.name, choices, delta, nbytes, {n: a * b for n, (a, b) in shapes.items()}, n_scored,
                       time.perf_counter() - t0)


def sensitivity_cached(loaded, calib_tokens, choices=DEFAULT_CHOICES, progress=None, score_tokens=None) -> Sensitivity:
    """:func:`measure_sensitivity` of a golden.loaders model through an on-disk cache
    (``$OLIVINE_CACHE/sensitivity/<model>-<key>.json``; key: model identity, choices, calibration
    and scoring tokens, golden's quantization sources and the measuring code of this file;
    ``OLIVINE_NO_CACHE=1`` bypasses it)."""
    import os
    import tempfile
    import warnings

    from . import qcache

    choices = _check_choices(choices)
    say = progress or (lambda msg: None)
    if not qcache._enabled():
        return measure_sensitivity(loaded.config, loaded.weights, calib_tokens, choices, progress, score_tokens)
    key = _identity_key(loaded, loaded.config, loaded.weights, choices, calib_tokens, score_tokens)
    slug = qcache._slug(loaded.config.name)
    path = qcache.cache_root() / "sensitivity" / f"{slug}-{key}.json"
    if path.exists():
        try:
            entry = json.loads(path.read_text())
            if entry.get("key") != key:
                raise ValueError("entry was written for another key")
            say(f"sensitivity loaded from the cache ({path})")
            return Sensitivity.from_dict(entry["sensitivity"])
        except Exception as err:  # noqa: BLE001 - an unreadable entry is rebuilt, never trusted
            warnings.warn(f"olivine cache entry {path} is unusable ({err}); rebuilding it", qcache.CacheWarning,
                          stacklevel=2)
            path.unlink(missing_ok=True)
    sens = measure_sensitivity(loaded.config, loaded.weights, calib_tokens, choices, progress, score_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "sensitivity": sens.to_dict()}, f)
        os.replace(tmp, path)
    except BaseException:
        from pathlib import Path

        Path(tmp).unlink(missing_ok=True)
        raise
    say(f"sensitivity stored in the cache ({path})")
    return sens


def model_sensitivity(loaded, choices=DEFAULT_CHOICES, progress=None, n_eval: int | None = None) -> Sensitivity:
    """The sensitivity ``olivine compile --budget-bits`` and the accuracy table use: GPTQ fitted on
    golden.data's calibration tokens (as quantize_model fits it), scored on the held-out tokens
    after them; cached."""
    from .data import model_calibration_tokens

    return sensitivity_cached(loaded, model_calibration_tokens(loaded, n_eval), choices, progress,
                              score_tokens=model_calibration_tokens(loaded, n_eval, held_out=True))


# ---------------------------------------------------------------------------------------------
# Assignment
# ---------------------------------------------------------------------------------------------


@dataclass
class Assignment:
    """A choice per decoder linear and what it costs: bytes, average bits, predicted dNLL."""

    choice: dict[str, str]
    budget_bits: float
    nbytes: int
    average_bits: float
    predicted_delta_nll: float
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"budget_bits": self.budget_bits, "average_bits": self.average_bits, "bytes": self.nbytes,
                "predicted_delta_nll": self.predicted_delta_nll, "counts": self.counts, "choice": self.choice}


def _check_budget(budget_bits) -> float:
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) or not math.isfinite(budget_bits) \
            or budget_bits <= 0:
        raise MixedPrecisionError(f"budget {budget_bits!r}: give the average weight bits as a positive number "
                                  "(e.g. 4.5)")
    return float(budget_bits)


def _refuse_budget(budget: float, smallest: float, what: str) -> None:
    if budget * (1 + 1e-12) < smallest:
        need = math.ceil(smallest * 100) / 100
        raise MixedPrecisionError(f"no assignment meets a budget of {budget:g} bits per weight: the smallest feasible "
                                  f"budget {what} is {smallest:.4f} bits (every linear at its cheapest choice); use "
                                  f"--budget-bits {need:g} or more")


def assign(sens: Sensitivity, budget_bits: float, choices=None) -> Assignment:
    """Per linear the choice minimising the summed predicted dNLL with average bits <= budget_bits
    (exact multiple-choice knapsack on costs rounded up to ``total / 2**17`` bytes; see the module
    docstring). ``choices`` restricts the choices (default: all that were measured)."""
    import numpy as np

    budget = _check_budget(budget_bits)
    choices = sens.choices if choices is None else _check_choices(choices)
    missing = [c for c in choices if c not in sens.choices]
    if missing:
        raise MixedPrecisionError(f"choice(s) {missing} were not measured; measure them with the sensitivity")
    names = sens.names
    n_weights = sum(sens.weights.values())
    cap_bytes = budget * n_weights / 8
    smallest = sum(min(sens.nbytes[n][c] for c in choices) for n in names)
    _refuse_budget(budget, 8 * smallest / n_weights, f"for {sens.model}")
    largest = sum(max(sens.nbytes[n][c] for c in choices) for n in names)
    unit = max(1.0, largest / _UNITS)
    cap = min(int(math.floor(cap_bytes / unit)), int(math.ceil(largest / unit)))
    inf = float("inf")
    dp = np.zeros(cap + 1)  # dp[u]: least summed dNLL of the linears so far within u units
    picks = np.zeros((len(names), cap + 1), dtype=np.int8)
    for i, name in enumerate(names):
        new = np.full(cap + 1, inf)
        for j, c in enumerate(choices):
            cost = int(math.ceil(sens.nbytes[name][c] / unit))
            if cost > cap:
                continue
            cand = dp[:cap + 1 - cost] + sens.delta_nll[name][c]
            better = cand < new[cost:]  # strict: the earlier choice wins ties (deterministic)
            new[cost:][better] = cand[better]
            picks[i, cost:][better] = j
        dp = new
    if not math.isfinite(dp[cap]):  # rounding up made the cheapest assignment too large: say so
        _refuse_budget(budget, 8 * sum(min(math.ceil(sens.nbytes[n][c] / unit) for c in choices)
                                       for n in names) * unit / n_weights, f"at {unit:.0f}-byte resolution")
    chosen: dict[str, str] = {}
    u = cap
    for i in range(len(names) - 1, -1, -1):
        c = choices[int(picks[i, u])]
        chosen[names[i]] = c
        u -= int(math.ceil(sens.nbytes[names[i]][c] / unit))
    chosen = {n: chosen[n] for n in names}
    total = sum(sens.nbytes[n][c] for n, c in chosen.items())
    counts = {c: sum(1 for v in chosen.values() if v == c) for c in choices}
    return Assignment(chosen, budget, total, 8 * total / n_weights,
                      sum(sens.delta_nll[n][c] for n, c in chosen.items()), {c: v for c, v in counts.items() if v})


def budget_config(assignment: Assignment) -> QuantConfig:
    """The assignment as a QuantConfig: every decoder linear its choice, lm_head W8A8."""
    overrides = {n: CHOICES[c] for n, c in assignment.choice.items()}
    overrides["lm_head"] = _HEAD
    return QuantConfig(CHOICES["int8"], overrides, name=BUDGET_NAME.format(assignment.budget_bits))


def config_bits(qcfg: QuantConfig, config: LlamaConfig) -> float:
    """Average weight bits of the decoder linears under any QuantConfig (storage_bytes' count;
    fp32 layers count 32 bits)."""
    shapes = decoder_linear_shapes(config)
    total = 0
    for name, lq in qcfg.resolve(list(shapes) + ["lm_head"]).items():
        if name == "lm_head":
            continue
        n, k = shapes[name]
        total += 4 * n * k if lq.weights == "fp32" else storage_bytes(n, k, lq)
    return 8 * total / sum(n * k for n, k in shapes.values())


def assignment_of(qcfg: QuantConfig, config: LlamaConfig) -> dict[str, str]:
    """Choice name of every decoder linear under ``qcfg`` (None where it is no listed choice)."""
    by_lq = {lq: c for c, lq in reversed(list(CHOICES.items()))}
    return {n: by_lq.get(qcfg.for_layer(n)) for n in decoder_linear_shapes(config)}


# ---------------------------------------------------------------------------------------------
# Validation against the true NLL
# ---------------------------------------------------------------------------------------------


class _Substituted(FloatLlama):
    """The float model with some linears' weights replaced (weight-only substitution)."""

    def __init__(self, config, weights, replaced: dict[str, torch.Tensor]):
        super().__init__(config, weights)
        self.replaced = replaced

    def linear(self, name, x, weight):
        return torch.matmul(x, self.replaced.get(name, weight).t())


def validate_sensitivity(config: LlamaConfig, weights: LlamaWeights, sens: Sensitivity, tokens, pairs,
                         calib_tokens=None) -> list[dict]:
    """True dNLL of single-linear substitutions ``pairs`` [(name, choice), ...] on ``tokens`` (1-D,
    one window) next to the prediction. The float model with only that linear's weight
    dequantized (activations float), so it measures what the proxy predicts."""
    from . import gptq
    from .accuracy import negative_log_likelihood

    base_nll, count = negative_log_likelihood(FloatLlama(config, weights), tokens)
    gptq_cache: dict[tuple[str, str], object] = {}
    for kind in sorted({CHOICES[c].weights for _, c in pairs if CHOICES[c].method == "gptq"}):
        if calib_tokens is None:
            raise MixedPrecisionError("validating a GPTQ choice needs the calibration tokens")
        wanted = {name: kind for name, c in pairs if CHOICES[c].method == "gptq" and CHOICES[c].weights == kind}
        for name, qw in gptq.quantize_linears(config, weights, calib_tokens, wanted).items():
            gptq_cache[(kind, name)] = qw
    rows = []
    for name, c in pairs:
        lq = CHOICES[c]
        wq = quantized_weight(weights, name, lq, gptq_cache.get((lq.weights, name)))
        nll, _ = negative_log_likelihood(_Substituted(config, weights, {name: wq}), tokens)
        rows.append({"linear": name, "choice": c, "predicted": sens.delta_nll[name][c],
                     "measured": (nll - base_nll) / count})
    return rows
