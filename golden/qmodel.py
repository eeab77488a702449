"""Quantized LLaMA that runs entirely on the integer contract (golden/contract.py + golden/sfu.py).

``quantize_model(config, weights, qcfg, calib_tokens=None) -> QLlama``. The forward pass keeps
every activation in the int32 fixed-point formats of golden/fixed.py (all with 16 fractional
bits) and every linear in integers (contract.QLinear); float appears only when the final int32
logits are turned into float32 for accuracy measurement. Same inputs give bit-identical integer
tensors: the integer path uses float64 matmuls only where every partial sum is an exactly
representable integer, so neither thread count nor summation order can change a result.

Data flow of one layer (F = 16 everywhere; shapes for batch B, T new tokens, S cached positions)::

    x  int32 F            residual stream
    h  = sfu.rmsnorm(x, attn_norm)                     int32 F
    q,k,v = QLinear(h)                                 int32 F (INT8 x W, INT32 acc, requant)
    q,k = sfu.rope(q|k, positions)                     int32 F
    Q,K,V = per-(token, head) dynamic INT8 (contract.quantize_act_dynamic_int8 over head_dim):
            codes q, exponent e, mantissa m; real = q * m * 2**e / 127 * 2**-16
    cache <- K, V  (INT8 codes + per token-head exponent and mantissa)
    s  = requant(Q.K^T, (m_q m_k) * 2**(e_q + e_k) / 127**2 * 2**-32 / sqrt(hd) * 2**F)   int32 F
    p  = sfu.softmax(s, causal mask)                   int32, 1.0 = 2**16 (PROB_FRAC)
    p' = round_shift(p * m_v[t], 8 + e_ref - e_v[t]),  e_ref = running max of e_v over visible t
    a  = requant(p'.V, 2**(e_ref + 8 - 16) / 127)      int32 F   (p' <= 2**16, |acc| < 2**24)
    x  = sfu.add(x, QLinear_wo(a))
    h  = sfu.rmsnorm(x, ffn_norm); g, u = QLinear(h); m = sfu.mul(sfu.silu(g), u)
    x  = sfu.add(x, QLinear_w_down(m))
    logits = QLinear_lm_head(sfu.rmsnorm(x, final_norm))  -> float32 only here

Embeddings are an INT8 per-row table (the lm_head grid when tied) with per-row fixed-point
multipliers: x = round_shift(q[tok] * mult[tok], shift[tok]).

Why V's per-token scale is folded into p: the reduction of p.V runs over tokens, so V's scale
cannot leave the sum; multiplying each probability by m_v[t] and shifting it right by
(8 + e_ref - e_v[t]) puts every term on the common scale 2**e_ref with one 17x9 multiply and one
shifter per probability, and keeps the INT32 accumulator exact (the scaled probabilities still
sum to about 1). The running max makes the result
for position p independent of later positions, so decode with the cache equals the full forward
bit for bit.

Tracing: ``forward(..., trace=d)`` fills dict ``d`` (or calls ``d(name, tensor)``) with every
integer tensor, named ``"embed"``, ``"layers.<i>.<op>"`` (attn_norm, wq.act_q, wq.act_exp,
wq.acc, wq.out, ..., q_rope, k_rope, q_q, q_exp, k_q, k_exp, v_q, v_exp, scores_acc, scores,
probs, probs_shifted, pv_acc, attn_out, resid_attn, ffn_norm, silu, swiglu, resid_ffn),
``"final_norm"``, ``"lm_head.*"``, ``"logits"``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from olivine import progress

from . import fixed, sfu
from .contract import (
    ContractError,
    INT8_QMAX,
    Multiplier,
    QAct,
    QLinear,
    QWeight,
    apply_multiplier,
    compile_linear,
    from_fixed,
    _pow2,
    int_matmul,
    int_matmul_exact_float,
    quantize_act_dynamic_int8,
    quantize_multiplier,
    quantize_weight,
    requantize,
    round_shift,
    to_fixed,
)
from .model import LINEAR_NAMES, FloatLlama, LlamaConfig, LlamaWeights
from .qconfig import GPTQ_METHODS, LayerQuant, QuantConfig

__all__ = ["QLlama", "QKVCache", "quantize_model", "collect_linear_inputs", "LOGIT_FRAC"]

RES_F = fixed.RESIDUAL_FRAC
NORM_F = fixed.NORM_OUT_FRAC
ACT_F = fixed.ACT_FRAC
SCORE_F = fixed.SCORE_FRAC
PROB_F = fixed.PROB_FRAC
GAMMA_F = fixed.GAMMA_FRAC
LOGIT_FRAC = 16

Trace = dict | Callable[[str, torch.Tensor], None] | None


# ---------------------------------------------------------------------------------------------
# Special functions (golden.sfu): every call takes and returns int32 fixed-point tensors.
# ---------------------------------------------------------------------------------------------


class _Sfu:
    """The model's fixed-point formats bound to golden.sfu's integer special functions."""

    def __init__(self, config: LlamaConfig):
        self.config = config

    def rmsnorm(self, x: torch.Tensor, gamma_q: torch.Tensor) -> torch.Tensor:
        return sfu.rmsnorm(x, RES_F, gamma_q, GAMMA_F, eps=self.config.norm_eps, frac_out=NORM_F)

    def rope(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        pos = torch.arange(start_pos, start_pos + x.shape[-2])  # broadcasts over [B, H, T]
        return sfu.rope(x, pos, ACT_F, self.config.rope_theta, self.config.head_dim, style="half",
                        scaling=self.config.rope_scaling)

    def softmax(self, s: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return sfu.softmax(s, SCORE_F, mask=~masked, frac_out=PROB_F)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        return sfu.silu(x, ACT_F, ACT_F)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sfu.mul(a, b, ACT_F, ACT_F, ACT_F)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sfu.add(a, b)


# ---------------------------------------------------------------------------------------------
# Integer KV cache
# ---------------------------------------------------------------------------------------------


class QKVCache:
    """Post-RoPE keys and values of every layer as INT8 codes with a per-(token, head) scale.

    k_q, v_q: torch.int8 [B, Hkv, capacity, hd]; k_e, v_e: torch.int8 and k_m, v_m: torch.int16
    [B, Hkv, capacity, 1] (value = code * m * 2**e / 127 * 2**-16, contract.quantize_act_dynamic_int8).
    ``length`` positions are filled; the next forward must use ``start_pos == length``.
    """

    def __init__(self, config: LlamaConfig, batch: int = 1, capacity: int | None = None):
        capacity = config.max_seq_len if capacity is None else capacity
        if capacity <= 0 or capacity > config.max_seq_len:
            raise ValueError(f"KV cache capacity {capacity} must be in 1..max_seq_len={config.max_seq_len}")
        shape = (batch, config.n_kv_heads, capacity, config.head_dim)
        eshape = shape[:-1] + (1,)
        n = config.n_layers
        self.k_q = [torch.zeros(shape, dtype=torch.int8) for _ in range(n)]
        self.v_q = [torch.zeros(shape, dtype=torch.int8) for _ in range(n)]
        self.k_e = [torch.zeros(eshape, dtype=torch.int8) for _ in range(n)]
        self.v_e = [torch.zeros(eshape, dtype=torch.int8) for _ in range(n)]
        self.k_m = [torch.zeros(eshape, dtype=torch.int16) for _ in range(n)]
        self.v_m = [torch.zeros(eshape, dtype=torch.int16) for _ in range(n)]
        self.batch, self.capacity, self.length = batch, capacity, 0

    def update(self, layer, k, v, start_pos):
        """Store QActs k, v ([B, Hkv, T, hd]) at start_pos..; return (k, v) QActs of all positions."""
        kq = k.values
        t = kq.shape[2]
        if kq.shape[0] != self.batch:
            raise ValueError(f"KV cache was made for batch {self.batch}, got batch {kq.shape[0]}")
        if start_pos != self.length:
            raise ValueError(f"KV cache holds {self.length} positions but start_pos={start_pos}; pass start_pos=cache.length")
        end = start_pos + t
        if end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded (positions up to {end}); make a larger cache")
        sl = slice(start_pos, end)
        self.k_q[layer][:, :, sl], self.k_e[layer][:, :, sl], self.k_m[layer][:, :, sl] = k.values, k.exponent, k.mantissa
        self.v_q[layer][:, :, sl], self.v_e[layer][:, :, sl], self.v_m[layer][:, :, sl] = v.values, v.exponent, v.mantissa
        upto = slice(0, end)
        return (QAct(self.k_q[layer][:, :, upto], self.k_e[layer][:, :, upto], "int8", k.base_scale, mantissa=self.k_m[layer][:, :, upto]),
                QAct(self.v_q[layer][:, :, upto], self.v_e[layer][:, :, upto], "int8", v.base_scale, mantissa=self.v_m[layer][:, :, upto]))

    def advance(self, n: int) -> None:
        self.length += n

    def nbytes(self) -> int:
        """Bytes the cache occupies in the integer format (codes + exponents)."""
        return sum(t.numel() * t.element_size() for t in self.k_q + self.v_q + self.k_e + self.v_e + self.k_m + self.v_m)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


class _Recorder(FloatLlama):
    def __init__(self, config, weights, wanted):
        super().__init__(config, weights)
        self.wanted, self.seen = set(wanted), {}

    def linear(self, name, x, weight):
        if name in self.wanted:
            self.seen.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]).clone())
        return super().linear(name, x, weight)


def collect_linear_inputs(config: LlamaConfig, weights: LlamaWeights, tokens, names) -> dict[str, torch.Tensor]:
    """Float inputs [N_tokens, K] of the named linears when the float model runs ``tokens``.

    Sequences longer than ``config.max_seq_len`` are cut into consecutive windows of that length.
    """
    rec = _Recorder(config, weights, names)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    step = config.max_seq_len
    for row in tokens:
        for start in range(0, row.numel(), step):
            rec.forward(row[start : start + step])
    return {n: torch.cat(v, 0) for n, v in rec.seen.items()}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def _emit(trace: Trace, name: str, t: torch.Tensor) -> None:
    if trace is None:
        return
    if isinstance(trace, dict):
        trace[name] = t.clone()
    else:
        trace(name, t)


class _Prefixed:
    """Adapts a trace sink so QLinear's names get a layer prefix."""

    def __init__(self, trace: Trace, prefix: str):
        self.trace, self.prefix = trace, prefix

    def __call__(self, name: str, t: torch.Tensor) -> None:
        _emit(self.trace, self.prefix + name, t)


class QLlama(FloatLlama):
    """LLaMA decoder on the integer contract. Build it with :func:`quantize_model`.

    ``forward(tokens, cache=None, start_pos=0, trace=None) -> float32 logits`` ([T, V] for [T]
    tokens, [B, T, V] for [B, T]); ``forward_int`` returns the int32 logits (LOGIT_FRAC bits).
    prefill/decode/generate come from FloatLlama and run on :class:`QKVCache`.
    """

    def __init__(self, config: LlamaConfig, weights: LlamaWeights, qcfg: QuantConfig,
                 linears: dict[str, QLinear], embed_q: QWeight | None, layer_quant: dict[str, LayerQuant],
                 norm_scales: dict[str, torch.Tensor] | None = None,
                 col_scales: dict[str, torch.Tensor] | None = None,
                 row_scales: dict[str, torch.Tensor] | None = None,
                 norm_gains: dict[str, torch.Tensor] | None = None):
        super().__init__(config, weights)
        self.qcfg, self.linears, self.layer_quant = qcfg, linears, layer_quant
        # the RMSNorm smoothing scales already folded into ``weights`` (QuantConfig.smooth_norm;
        # kept so golden.qcache can rebuild the folded weights from the loaded ones)
        self.norm_scales = dict(norm_scales or {})
        # the linears' re-parametrizations (smooth_down, smooth_o): name -> s of column j x s_j
        # (col_scales) or row i x 1/s_i (row_scales) of the float weight that was quantized
        # (golden.gptq.rescale_linears; its QLinear's w_float is that weight, padded)
        self.col_scales = dict(col_scales or {})
        self.row_scales = dict(row_scales or {})
        # the norm gains QuantConfig.norm_tweak chose (golden.normtweak; already in ``weights``,
        # after the smoothing fold; kept so golden.qcache can put them back into the loaded weights)
        self.norm_gains = dict(norm_gains or {})
        self.norm_tweak_report: list = []  # golden.normtweak.LayerTweak per layer when built here
        self.is_float = qcfg.is_float
        self.sfu = _Sfu(config)
        self.embed_q = embed_q
        if embed_q is not None:
            self.embed_mult = quantize_multiplier(embed_q.scale * 2.0**RES_F)
        self.gamma = {f"layers.{i}.{n}": to_fixed(getattr(lw, n), GAMMA_F) for i, lw in enumerate(weights.layers) for n in ("attn_norm", "ffn_norm")}
        self.gamma["final_norm"] = to_fixed(weights.final_norm, GAMMA_F)
        hd = config.head_dim
        # scores: Q, K codes carry m * 2**e / 127 * 2**-ACT_F; result in SCORE_F, 1/sqrt(hd) folded in
        self.score_mult = quantize_multiplier(torch.tensor(2.0 ** (SCORE_F - 2 * ACT_F) / math.sqrt(hd) / INT8_QMAX**2))
        # p''.V: p'' = p * m_v * 2**(e_v - e_ref - 8) with PROB_F bits; V codes 2**e_ref / 127 * 2**-ACT_F
        self.pv_mult = quantize_multiplier(torch.tensor(2.0 ** (8 - PROB_F) / INT8_QMAX))

    # -- cache -------------------------------------------------------------------------------
    def new_cache(self, batch: int = 1, capacity: int | None = None):
        if self.is_float:
            return super().new_cache(batch, capacity)
        return QKVCache(self.config, batch, capacity)

    # -- forward -----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, tokens, cache=None, start_pos: int = 0, trace: Trace = None) -> torch.Tensor:
        if self.is_float:
            return super().forward(tokens, cache, start_pos)
        tokens_t, squeeze = self.check_tokens(tokens, start_pos)
        logits = from_fixed(self._forward_int(tokens_t, cache, start_pos, trace), LOGIT_FRAC)
        return logits[0] if squeeze else logits

    __call__ = forward

    @torch.no_grad()
    def forward_int(self, tokens, cache=None, start_pos: int = 0, trace: Trace = None) -> torch.Tensor:
        """int32 logits (LOGIT_FRAC fractional bits), [B, T, V] (or [T, V] for 1-D tokens)."""
        if self.is_float:
            raise ContractError("the fp32 configuration has no integer forward; use forward()")
        tokens_t, squeeze = self.check_tokens(tokens, start_pos)
        out = self._forward_int(tokens_t, cache, start_pos, trace)
        return out[0] if squeeze else out

    def _lin(self, name: str, x: torch.Tensor, trace: Trace) -> torch.Tensor:
        return self.linears[name](x, None if trace is None else _Prefixed(trace, ""))

    def _forward_int(self, tokens, cache, start_pos, trace):
        if cache is not None and not isinstance(cache, QKVCache):
            raise TypeError("the integer model needs a QKVCache; create it with model.new_cache()")
        q = self.embed_q.values[tokens]
        m = Multiplier(self.embed_mult.mult[tokens][..., None], self.embed_mult.shift[tokens][..., None])
        x = apply_multiplier(q, m).to(torch.int32)
        _emit(trace, "embed", x)
        for layer in range(self.config.n_layers):
            x = self._attn_int(layer, x, cache, start_pos, trace)
            x = self._ffn_int(layer, x, trace)
        if cache is not None:
            cache.advance(tokens.shape[1])
        h = self.sfu.rmsnorm(x, self.gamma["final_norm"])
        _emit(trace, "final_norm", h)
        logits = self._lin("lm_head", h, trace)
        _emit(trace, "logits", logits)
        return logits

    def _attn_int(self, layer, x, cache, start_pos, trace):
        c, p = self.config, f"layers.{layer}."
        b, t, _ = x.shape
        hq, hkv, hd, rep = c.n_heads, c.n_kv_heads, c.head_dim, c.n_rep
        h = self.sfu.rmsnorm(x, self.gamma[p + "attn_norm"])
        _emit(trace, p + "attn_norm", h)
        q = self._lin(p + "wq", h, trace).view(b, t, hq, hd).transpose(1, 2)
        k = self._lin(p + "wk", h, trace).view(b, t, hkv, hd).transpose(1, 2)
        v = self._lin(p + "wv", h, trace).view(b, t, hkv, hd).transpose(1, 2)
        q, k = self.sfu.rope(q, start_pos), self.sfu.rope(k, start_pos)
        _emit(trace, p + "q_rope", q)
        _emit(trace, p + "k_rope", k)
        qa = quantize_act_dynamic_int8(q, ACT_F)
        ka = quantize_act_dynamic_int8(k, ACT_F)
        va = quantize_act_dynamic_int8(v, ACT_F)
        for nm, qt in (("q", qa), ("k", ka), ("v", va)):
            _emit(trace, p + f"{nm}_q", qt.values)
            _emit(trace, p + f"{nm}_exp", qt.exponent)
            _emit(trace, p + f"{nm}_mant", qt.mantissa)
        if cache is not None:
            ka, va = cache.update(layer, ka, va, start_pos)
        s_len = ka.values.shape[2]
        # scores = (Q.K^T) * m_q * m_k * 2**(e_q + e_k) / 127**2 * 2**-32 / sqrt(hd), in SCORE_F
        qg = qa.values.view(b, hkv, rep, t, hd)
        acc = int_matmul(qg, ka.values.unsqueeze(2))  # [B, Hkv, rep, T, S]
        # the query and key scale factors stay separate ([T, 1] and [1, S]); requantize multiplies
        # them into the accumulator exactly (no [T, S] exponent or mantissa tensor is formed)
        e = (qa.exponent.view(b, hkv, rep, t, 1), ka.exponent.view(b, hkv, 1, 1, s_len))
        mant = (qa.mantissa.view(b, hkv, rep, t, 1), ka.mantissa.view(b, hkv, 1, 1, s_len))
        scores = requantize(acc, self.score_mult, e, mantissa=mant)
        _emit(trace, p + "scores_acc", acc)
        _emit(trace, p + "scores", scores)
        query_pos = torch.arange(start_pos, start_pos + t).unsqueeze(1)
        mask = torch.arange(s_len).unsqueeze(0) > query_pos  # [T, S]
        probs = self.sfu.softmax(scores, mask)
        _emit(trace, p + "probs", probs)
        # p'' = round_shift(p * m_v[t], 8 + e_ref - e_v[t]) puts every V row on the scale 2**e_ref
        ev = va.exponent.view(b, hkv, 1, 1, s_len).to(torch.int64)
        mv = va.mantissa.view(b, hkv, 1, 1, s_len)
        e_run = torch.cummax(va.exponent.view(b, hkv, s_len).to(torch.int64), dim=-1).values
        e_ref = e_run[..., start_pos : start_pos + t].reshape(b, hkv, 1, t, 1)
        shift = (8 + e_ref - ev).clamp(min=8)  # masked positions have p = 0 whatever the shift
        # In float64, exactly: p * m_v < 2**16 * 2**9 is an integer, scaling by 2**-shift is exact,
        # and + 1/2 needs at most max(25, shift) + 1 <= 53 significant bits (shift <= 8 + 25), so
        # floor(p * m_v * 2**-shift + 1/2) is round_shift's floor((x + 2**(shift-1)) / 2**shift).
        assert int(shift.max()) <= 52 if shift.numel() else True
        p_sh = probs.to(torch.float64).mul_(mv.to(torch.float64)).mul_(_pow2(-shift)).add_(0.5).floor_()
        if trace is not None:
            _emit(trace, p + "probs_shifted", p_sh.to(torch.int64))
        # p'' <= 2**16 (the shifted probabilities), |V| <= 127, S <= 2**20: sums below 2**53
        acc2 = int_matmul_exact_float(p_sh, va.values.unsqueeze(2).transpose(-1, -2).to(torch.float64))
        _emit(trace, p + "pv_acc", acc2)
        a = requantize(acc2, self.pv_mult, e_ref)
        a = a.reshape(b, hq, t, hd).transpose(1, 2).reshape(b, t, hq * hd)
        _emit(trace, p + "attn_out", a)
        o = self._lin(p + "wo", a, trace)
        x = self.sfu.add(x, o)
        _emit(trace, p + "resid_attn", x)
        return x

    def _ffn_int(self, layer, x, trace):
        p = f"layers.{layer}."
        h = self.sfu.rmsnorm(x, self.gamma[p + "ffn_norm"])
        _emit(trace, p + "ffn_norm", h)
        g = self._lin(p + "w_gate", h, trace)
        u = self._lin(p + "w_up", h, trace)
        s = self.sfu.silu(g)
        _emit(trace, p + "silu", s)
        m = self.sfu.mul(s, u)
        _emit(trace, p + "swiglu", m)
        d = self._lin(p + "w_down", m, trace)
        x = self.sfu.add(x, d)
        _emit(trace, p + "resid_ffn", x)
        return x

    def describe(self) -> dict[str, str]:
        """Linear name -> its precision/sparsity description."""
        return {n: lq.describe() for n, lq in self.layer_quant.items()}


_IN_OUT_FRAC = {"wq": (NORM_F, ACT_F), "wk": (NORM_F, ACT_F), "wv": (NORM_F, ACT_F), "wo": (ACT_F, RES_F),
                "w_gate": (NORM_F, ACT_F), "w_up": (NORM_F, ACT_F), "w_down": (ACT_F, RES_F), "lm_head": (NORM_F, LOGIT_FRAC)}


def quantize_model(config: LlamaConfig, weights: LlamaWeights, qcfg: QuantConfig | str, calib_tokens=None,
                   show_progress: bool = True) -> QLlama:
    """Compile a float LLaMA to the integer contract with per-layer precision ``qcfg``.

    qcfg: a QuantConfig or a preset name. ``calib_tokens`` ([T] or [B, T] token ids) are needed
    when some layer uses static activations ("ovp4" or "int8-static") or GPTQ weights; the float
    model runs them once and each such linear's inputs set its static scale/alpha or its Hessian.
    ``show_progress``: a progress bar (or a line per linear when stderr is not a terminal) once
    quantization takes over a second.
    """
    if isinstance(qcfg, str):
        qcfg = QuantConfig.preset(qcfg)
    if not isinstance(qcfg, QuantConfig):
        raise TypeError(f"qcfg must be a QuantConfig or a preset name, got {type(qcfg).__name__}")
    weights.validate(config)
    names = [n for n, _ in weights.named_linears(include_lm_head=True)]
    lq = qcfg.resolve(names)
    if qcfg.is_float:
        return QLlama(config, weights, qcfg, {}, None, lq)
    calib: dict[str, torch.Tensor] = {}
    static_tokens = gptq_tokens = calib_tokens
    if qcfg.gptq_tokens is not None and calib_tokens is not None:
        # GPTQ's Hessians take gptq_tokens per corpus; static scales keep the rule's first tokens
        from .data import CALIBRATION_TOKENS

        ct = torch.as_tensor(calib_tokens)
        if ct.shape[-1] < qcfg.gptq_tokens:
            raise ContractError(f"{qcfg.name} calibrates GPTQ on {qcfg.gptq_tokens} tokens per corpus but calib_tokens "
                                f"holds {ct.shape[-1]}; pass golden.data.model_calibration_tokens(loaded, "
                                f"n_tokens={qcfg.gptq_tokens}) (or calibration_tokens(..., n_tokens=...))")
        static_tokens, gptq_tokens = ct[..., :CALIBRATION_TOKENS], ct[..., : qcfg.gptq_tokens]
    norm_scales: dict[str, torch.Tensor] = {}
    if qcfg.smooth_norm:
        # RMSNorm-output smoothing first: every later step (static scales, GPTQ's Hessians, the
        # w_down smoothing) and the integer model's gammas see the folded weights
        if calib_tokens is None:
            raise ContractError(f"{qcfg.name}: the RMSNorm-output smoothing needs calibration inputs; pass calib_tokens")
        from . import gptq

        firsts = [f"layers.{i}.{feeds[0]}" for i in range(config.n_layers) for feeds in gptq.NORM_LINEARS.values()]
        norm_scales = gptq.norm_smoothing_scales(gptq.collect_hessians(config, weights, gptq_tokens, firsts),
                                                 qcfg.smooth_norm, range(config.n_layers))
        weights = gptq.fold_norm_scales(weights, norm_scales)
    static = [n for n in names if lq[n].acts in ("ovp4", "int8-static")]
    if static:
        if calib_tokens is None:
            raise ContractError(f"{len(static)} linears use static activations ({static[0]}, ...); pass calib_tokens")
        calib = collect_linear_inputs(config, weights, static_tokens, static)
    gptq_w = {}
    float_w: dict[str, torch.Tensor] = {}  # re-parametrized float weights (w_down input smoothing)
    col_scales: dict[str, torch.Tensor] = {}
    row_scales: dict[str, torch.Tensor] = {}
    gptq_names = [n for n in names if lq[n].method in GPTQ_METHODS]
    if gptq_names or qcfg.smooth_down or qcfg.smooth_o:
        if calib_tokens is None:
            what = f"{len(gptq_names)} linears use GPTQ ({gptq_names[0]}, ...)" if gptq_names else \
                "the input smoothing (smooth_down / smooth_o) needs calibration inputs"
            raise ContractError(f"{what}; pass calib_tokens")
        from . import gptq

        par = [n for n in gptq_names if lq[n].method == "gptq"]
        seq = [n for n in gptq_names if lq[n].method == "gptq-seq"]
        if seq and (qcfg.smooth_down or qcfg.smooth_o):
            raise ContractError(f"{qcfg.name}: w_down / wo input smoothing is offered with one-pass GPTQ or round-to-nearest, "
                                "not sequential GPTQ (gptq-seq); use method='gptq'")
        downs = [f"layers.{i}.w_down" for i in range(config.n_layers)] if qcfg.smooth_down else []
        outs = [f"layers.{i}.wo" for i in range(config.n_layers)] if qcfg.smooth_o else []
        hs = gptq.collect_hessians(config, weights, gptq_tokens, list(dict.fromkeys(par + downs + outs))) \
            if par or downs or outs else {}
        for down in downs:
            # w_up's rows x 1/s, w_down's columns x s: the same function in float; only w_down's grid
            # and its per-token INT8 input see the change (w_up's per-row scale absorbs 1/s)
            col_scales[down] = row_scales[down.replace("w_down", "w_up")] = \
                gptq.smoothing_scales(hs[down], qcfg.smooth_down)
        for wo in outs:
            # wv's rows x 1/s, wo's columns x s (s tied over the query heads of one kv head): the
            # attention output is a convex combination of v rows, so the same function in float
            s = gptq.head_tied_smoothing_scales(hs[wo], qcfg.smooth_o, config.n_heads, config.n_kv_heads)
            col_scales[wo], row_scales[wo.replace("wo", "wv")] = s, gptq.kv_rows_of(s, config.n_heads, config.n_kv_heads)
        if col_scales:
            float_w = gptq.rescale_linears(weights, col_scales, row_scales)
            for name, s in col_scales.items():  # the Hessian of the rescaled input x / s
                sd = s.to(torch.float64)
                hs[name] = hs[name].to(torch.float64) / sd.reshape(-1, 1) / sd.reshape(1, -1)
                if name in calib:
                    # static scales / OVP4 alphas from the rescaled input x / s the model feeds the
                    # linear (w_up's or wv's rows x 1/s), not from the unsmoothed x
                    calib[name] = (calib[name].to(torch.float64) / sd.reshape(1, -1)).to(calib[name].dtype)
        if par:
            gptq_w.update(gptq.quantize_linears(config, weights, None, {n: lq[n].weights for n in par},
                                                groups={n: lq[n].group for n in par}, hessians=hs,
                                                float_weights=float_w))
        if seq:  # the other linears run float during this calibration (the presets make them all gptq-seq)
            gptq_w.update(gptq.quantize_linears_sequential(
                config, weights, gptq_tokens, {n: lq[n].weights for n in seq}, groups={n: lq[n].group for n in seq},
                act_quant=lambda n: lq[n].acts != "fp32", show_progress=show_progress))
    linears = {}
    # progress per decoder layer (its 7 linears) and the head
    with progress.track(f"quantizing {config.name} ({qcfg.name})", config.n_layers + 1, "layer",
                        delay=None if show_progress else float("inf")) as bar:
        for n in names:
            short = n.split(".")[-1]
            in_f, out_f = _IN_OUT_FRAC[short]
            q = lq[n]
            linears[n] = compile_linear(float_w.get(n, weights.linear(n)), None, weights=q.weights, acts=q.acts, in_frac=in_f,
                                        out_frac=out_f, sparsity=q.sparsity, calib=calib.get(n), name=n,
                                        qweight=gptq_w.get(n), group=q.group)
            if n == "lm_head" or short == LINEAR_NAMES[-1]:
                bar.advance(n.rsplit(".", 1)[0] if n != "lm_head" else n)
    head = linears["lm_head"].weight
    if config.tie_embeddings and head is not None and head.kind == "int8" and head.block_n is None:
        embed_q = head  # one INT8 table serves the lookup and the head
    else:
        embed_q = quantize_weight(weights.embed, "int8")
    model = QLlama(config, weights, qcfg, linears, embed_q, lq, norm_scales=norm_scales, col_scales=col_scales,
                   row_scales=row_scales)
    if qcfg.norm_tweak:
        # last: the gains feeding the quantized linears tuned so each integer layer matches the
        # float one (golden/normtweak.py), on the first norm_tweak_tokens of GPTQ's calibration rows
        from . import normtweak

        if calib_tokens is None:
            raise ContractError(f"{qcfg.name}: norm tweaking needs calibration inputs; pass calib_tokens")
        source = calib_tokens if qcfg.gptq_tokens is None else gptq_tokens
        nt_tokens = normtweak.norm_tweak_tokens(source, qcfg.norm_tweak_tokens, config.max_seq_len)
        gains, report = normtweak.tweak_norm_gains(model, nt_tokens, steps=qcfg.norm_tweak_steps, lr=qcfg.norm_tweak_lr,
                                                   show_progress=show_progress)
        model = QLlama(config, normtweak.apply_gains(weights, gains), qcfg, linears, embed_q, lq, norm_scales=norm_scales,
                       col_scales=col_scales, row_scales=row_scales, norm_gains=gains)
        model.norm_tweak_report = report
    return model
