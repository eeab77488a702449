"""Norm tweaking: after the weights are quantized (GPTQ or round-to-nearest), tune the RMSNorm
gains that feed the quantized linears so each quantized decoder layer reproduces the float one.

``tweak_norm_gains(model, tokens, steps=20, lr=3e-3) -> (gains, report)`` takes a built
:class:`olivine.golden.qmodel.QLlama` and calibration token ids [B, T]; it returns new
``attn_norm`` / ``ffn_norm`` gains for every decoder layer (``"layers.<i>.attn_norm"`` -> float32
[dim]) and per-layer losses. ``apply_gains(weights, gains)`` puts them into a LlamaWeights; the
QLlama built from those weights takes them through the usual path (``to_fixed(gamma, GAMMA_FRAC)``),
so the compiler, the functional simulator and the RTL read the tweaked gains like any others.

The scheme, layer by layer in order (sequential):

1. ``x``: the integer model's residual stream entering layer i, i.e. the quantized model's own
   output of layer i-1 (with the gains already chosen for layers 0..i-1), run by the integer
   layer code of QLlama itself; its float value ``x_f = x * 2**-16``.
2. Target: the float layer (golden.model.FloatLlama blocks, the model's float weights) on ``x_f``.
3. A differentiable stand-in of the quantized layer: the same data flow in float32 with the
   linears' dequantized integer weights, their inputs fake-quantized per token (INT8 amax / 127;
   the linear's own static scale or OVP alpha when it has one) and q, k, v fake-quantized per
   (token, head) as the integer attention does; every quantizer passes the gradient straight
   through (STE). Only the two gains are parameters.
4. Adam (``lr``) for ``steps`` steps on the mean squared error against the target; the gains with
   the lowest stand-in loss seen (the untouched gains are step 0) are rounded to the gains' fixed
   point grid (GAMMA_FRAC fractional bits) and then checked on the integer layer itself: kept
   only if the integer layer's error against the target is lower than with the untouched gains,
   else the untouched gains stay. So no layer ends worse than untouched on the calibration tokens.

Deterministic: no random numbers are drawn, and torch runs on one thread during the tweak (float
reductions then have one fixed order); the same model and tokens give the same gains bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import fixed
from .contract import (ContractError, from_fixed, fake_quant_act_ovp4, fake_quant_act_static_int8, round_half_up,
                       to_fixed, INT8_QMAX)
from .model import FloatLlama, LlamaWeights, causal_attention, rms_norm

__all__ = ["NORMS", "LayerTweak", "tweak_norm_gains", "apply_gains", "norm_tweak_tokens"]

#: the gains tuned in each decoder layer (those feeding the quantized q/k/v and gate/up projections)
NORMS = ("attn_norm", "ffn_norm")

GAMMA_F = fixed.GAMMA_FRAC
RES_F = fixed.RESIDUAL_FRAC


@dataclass(frozen=True)
class LayerTweak:
    """One layer's outcome: the integer layer's mean squared error (against the float layer on the
    same input) with the untouched and with the chosen gains, the stand-in's best loss and step."""

    layer: int
    loss_before: float
    loss_after: float
    surrogate_before: float
    surrogate_best: float
    best_step: int
    kept: bool  # the tweaked gains were adopted (False: the untouched gains stayed)


def norm_tweak_tokens(tokens, n_tokens: int, max_seq_len: int) -> torch.Tensor:
    """The first ``n_tokens`` of each calibration row [B, T], cut into windows of at most
    ``max_seq_len`` positions (rows of equal length; a shorter last window is dropped)."""
    ct = torch.as_tensor(tokens)
    if ct.dim() == 1:
        ct = ct.unsqueeze(0)
    if ct.shape[-1] < n_tokens:
        raise ContractError(f"norm tweaking takes {n_tokens} calibration tokens per corpus but calib_tokens holds "
                            f"{ct.shape[-1]}; pass more calibration tokens (golden.data.model_calibration_tokens(loaded, "
                            f"n_tokens=...)) or lower QuantConfig.norm_tweak_tokens")
    ct = ct[:, :n_tokens].to(torch.int64)
    w = min(n_tokens, max_seq_len)
    n_win = n_tokens // w
    return ct[:, : n_win * w].reshape(ct.shape[0] * n_win, w)


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q forward, identity gradient."""
    return x + (q - x).detach()


def _fq_dynamic(x: torch.Tensor) -> torch.Tensor:
    """Per-row (last axis) INT8 with scale amax / 127, straight-through."""
    xd = x.detach()
    s = xd.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30) / INT8_QMAX
    return _ste(x, round_half_up(xd / s).clamp(-INT8_QMAX, INT8_QMAX) * s)


class _Standin:
    """The differentiable float stand-in of one quantized decoder layer (see the module docstring)."""

    def __init__(self, model, layer: int, float_model: FloatLlama):
        self.model, self.layer, self.c = model, layer, model.config
        self.p = f"layers.{layer}."
        self.w = {}
        for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            lin = model.linears[self.p + n]
            self.w[n] = (lin.weight.dequantize() if lin.weight is not None else lin.w_float.to(torch.float32)).detach()
        self.float_model = float_model

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        lin = self.model.linears[self.p + name]
        w = self.w[name]
        if w.shape[1] != x.shape[-1]:
            x = torch.nn.functional.pad(x, (0, w.shape[1] - x.shape[-1]))
        if lin.act in ("int8", "int8-pow2"):
            x = _fq_dynamic(x)
        elif lin.act == "int8-static":
            x = _ste(x, fake_quant_act_static_int8(x.detach(), lin.act_scale))
        elif lin.act == "ovp4":
            x = _ste(x, fake_quant_act_ovp4(x.detach(), lin.act_alpha, lin.act_normal))
        y = x @ w.T
        return y[..., : lin.out_features] if lin.out_features and y.shape[-1] != lin.out_features else y

    def forward(self, x: torch.Tensor, g_attn: torch.Tensor, g_ffn: torch.Tensor) -> torch.Tensor:
        c = self.c
        b, t, _ = x.shape
        h = rms_norm(x, g_attn, c.norm_eps)
        q = self._linear("wq", h).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)
        k = self._linear("wk", h).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self._linear("wv", h).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q, k = self.float_model.rope(q, 0), self.float_model.rope(k, 0)
        q, k, v = _fq_dynamic(q), _fq_dynamic(k), _fq_dynamic(v)  # per (token, head) over head_dim
        x = x + self._linear("wo", causal_attention(q, k, v, 0))
        h = rms_norm(x, g_ffn, c.norm_eps)
        m = torch.nn.functional.silu(self._linear("w_gate", h)) * self._linear("w_up", h)
        return x + self._linear("w_down", m)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        fm = self.float_model
        return fm.ffn_block(self.layer, fm.attn_block(self.layer, x, None, 0))


def _on_grid(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 gains, int32 fixed-point gains) on the GAMMA_FRAC grid: the float32 value is the
    one the integer model's to_fixed maps to exactly the returned int32."""
    gf = from_fixed(to_fixed(g.detach().to(torch.float32), GAMMA_F), GAMMA_F).to(torch.float32)
    gq = to_fixed(gf, GAMMA_F)
    return gf, gq


def _embed_int(model, tokens: torch.Tensor) -> torch.Tensor:
    from .contract import Multiplier, apply_multiplier

    q = model.embed_q.values[tokens]
    m = Multiplier(model.embed_mult.mult[tokens][..., None], model.embed_mult.shift[tokens][..., None])
    return apply_multiplier(q, m).to(torch.int32)


def _int_layer(model, layer: int, x: torch.Tensor) -> torch.Tensor:
    return model._ffn_int(layer, model._attn_int(layer, x, None, 0, None), None)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).pow(2).mean())


def tweak_norm_gains(model, tokens, steps: int = 20, lr: float = 3e-3, show_progress: bool = False):
    """Tuned attn_norm / ffn_norm gains of every decoder layer of QLlama ``model`` on token ids
    ``tokens`` ([B, T], T <= max_seq_len; norm_tweak_tokens cuts longer rows). Returns
    (gains: "layers.<i>.<norm>" -> float32 [dim] on the GAMMA_FRAC grid, report: [LayerTweak]).
    ``model.gamma`` is updated in place as layers are done (the integer model then runs the tweaked
    gains); its ``weights`` are not: build the final model from apply_gains(weights, gains)."""
    from olivine import progress

    if model.is_float:
        raise ContractError("norm tweaking needs a quantized model; the fp32 configuration has nothing to match")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ContractError(f"norm tweaking steps={steps!r}; expected a positive integer")
    tokens = torch.as_tensor(tokens)
    tokens, _ = model.check_tokens(tokens)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gains, report = {}, []
    try:
        x = _embed_int(model, tokens)
        float_model = FloatLlama(model.config, model.weights)
        with progress.track(f"norm tweaking {model.config.name}", model.config.n_layers, "layer",
                            delay=None if show_progress else float("inf")) as bar:
            for i in range(model.config.n_layers):
                rep, x = _tweak_layer(model, float_model, i, x, steps, lr, gains)
                report.append(rep)
                bar.advance(f"layers.{i}")
    finally:
        torch.set_num_threads(threads)
    return gains, report


def _tweak_layer(model, float_model, i: int, x: torch.Tensor, steps: int, lr: float, gains: dict):
    p = f"layers.{i}."
    lw = model.weights.layers[i]
    x_f = from_fixed(x, RES_F).to(torch.float32)
    st = _Standin(model, i, float_model)
    target = st.target(x_f)
    g0 = [lw.attn_norm.detach().clone().to(torch.float32), lw.ffn_norm.detach().clone().to(torch.float32)]
    params = [g.clone().requires_grad_(True) for g in g0]
    opt = torch.optim.Adam(params, lr=lr)
    best, best_loss, best_step, first = [g.clone() for g in g0], float("inf"), 0, None
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = (st.forward(x_f, *params) - target).pow(2).mean()
        val = float(loss.detach())
        if first is None:
            first = val
        if val < best_loss:
            best_loss, best_step, best = val, step, [g.detach().clone() for g in params]
        if step == steps:
            break
        loss.backward()
        opt.step()
    # the integer layer decides: the grid-rounded best gains against the untouched ones
    names = [p + n for n in NORMS]
    before = {n: model.gamma[n] for n in names}
    with torch.no_grad():
        y0 = _int_layer(model, i, x)
        loss0 = _mse(from_fixed(y0, RES_F), target)
        grid = [_on_grid(g) for g in best]
        for n, (_, gq) in zip(names, grid):
            model.gamma[n] = gq
        y1 = _int_layer(model, i, x)
        loss1 = _mse(from_fixed(y1, RES_F), target)
    kept = best_step > 0 and loss1 < loss0
    if kept:
        for n, (gf, _) in zip(names, grid):
            gains[n] = gf
        y = y1
    else:
        for n in names:
            model.gamma[n] = before[n]
        y = y0
    return LayerTweak(i, loss0, loss1 if kept else loss0, first, best_loss, best_step, kept), y


def apply_gains(weights: LlamaWeights, gains: dict[str, torch.Tensor]) -> LlamaWeights:
    """LlamaWeights with the named decoder-layer norm gains replaced ("layers.<i>.attn_norm" ...)."""
    unknown = set(gains) - {f"layers.{i}.{n}" for i in range(len(weights.layers)) for n in NORMS}
    if unknown:
        raise ContractError(f"norm gains for {sorted(unknown)}: not a decoder layer's attn_norm / ffn_norm of this model")
    layers = []
    for i, lw in enumerate(weights.layers):
        changes = {n: gains[f"layers.{i}.{n}"].to(torch.float32) for n in NORMS if f"layers.{i}.{n}" in gains}
        layers.append(replace(lw, **changes) if changes else lw)
    return replace(weights, layers=layers)
