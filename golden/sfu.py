"""Special function unit (SFU) of olivine's integer contract: exact integer specifications.

Each function takes int32 fixed-point tensors (``value = q / 2**F``, see golden/fixed.py), works in
int64 with integer operations only (add, multiply, shift, compare, table lookup, and a divider /
integer square root where stated) and returns saturated ``torch.int32``. The hardware SFU must
reproduce these results bit for bit. Each function has a float64 reference (``*_float``) used only
to measure the error, and every table the hardware needs comes from a function returning plain
Python ints (``exp_table``, ``sigmoid_table``, ``rope_tables``) so ROM contents can be generated
without torch. docs/sfu.md has the algorithms, widths, table costs and measured errors;
``python -m olivine.golden.sfu`` reprints the error table.

Shapes: functions work on the last dimension (rows = all leading dims) and are vectorized.
Rounding points all use ``fixed.round_shift`` (round half up).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .fixed import (ACT_FRAC, GAMMA_FRAC, INT32_MAX, INT32_MIN, MAX_FRAC_BITS, NORM_OUT_FRAC,
                    PROB_FRAC, ROPE_TABLE_FRAC, FixedPointTypeError, FixedPointValueError,
                    apply_multiplier, bit_length, check_frac_bits, isqrt, quantize_multiplier,
                    round_shift)
# the constants and ROMs: torch-free, shared with hw/
from . import sfu_tables
from .sfu_tables import (EXP_FRAC, EXP_INDEX_BITS, EXP_INTERP_BITS, EXP_OUT_EXTRA_BITS, EXP_VALUE_BITS,
                         NORM_FRAC, NORM_MANT_BITS, NORM_MAX_DIM, RSQRT_NUM_BITS, SIG_FRAC, SIG_INTERP_BITS,
                         SIG_RANGE, SIG_STEP_BITS, SIG_VALUE_BITS, SOFTMAX_MAX_LEN, _EXP_MAX_DIFF, _G_SHIFT, _LOG2E_M,
                         _LOG2E_S, _MASKED, _RSQRT_T_BITS, _rope_tables_np, check_rope_scaling, exp_table,
                         llama3_inv_freq, rope_tables, sigmoid_table, silu_table)  # noqa: F401 (re-exported)

__all__ = [*sfu_tables.__all__,
    "exp2_neg", "rsqrt_norm",
    "rmsnorm", "layernorm", "softmax", "silu", "swiglu", "rope", "add", "mul", "requantize",
    "rmsnorm_float", "layernorm_float", "softmax_float", "silu_float", "swiglu_float",
    "rope_float", "add_float", "mul_float",
    "ERROR_BOUNDS", "error_bound", "measure_errors",
]

_LN2 = math.log(2.0)


def _err_type(x, name):
    if not isinstance(x, torch.Tensor):
        raise FixedPointTypeError(
            f"{name} must be a torch integer tensor (int32 fixed-point), got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise FixedPointTypeError(
            f"{name} must be an integer tensor (torch.int32 fixed-point codes), got {x.dtype}; "
            f"convert real values with olivine.golden.fixed.to_fixed(x, frac_bits)")


def _act(x, name="x") -> torch.Tensor:
    """Validate an int32 activation tensor (int8/16/32, or int64 holding int32 values); return it
    unchanged (kernels convert chunks to int64)."""
    _err_type(x, name)
    if x.dtype == torch.int64 and x.numel():
        if int(x.max()) > INT32_MAX or int(x.min()) < INT32_MIN:
            raise FixedPointValueError(
                f"{name} holds values outside int32; saturate it first (fixed.saturate_int32)")
    if x.dtype == torch.uint8:
        raise FixedPointTypeError(f"{name} must be a signed integer tensor, got torch.uint8")
    return x


#: Kernels run on chunks of about this many elements: the dozen int64 temporaries of a chunk then
#: stay in the CPU cache (about 4x faster than whole-tensor ops), and each op stays below torch's
#: parallel grain size, so no thread synchronisation per op (callers may parallelize outside).
_CHUNK_ELEMS = 1 << 14


def _row_chunks(n_rows: int, row_len: int):
    step = max(1, _CHUNK_ELEMS // max(1, row_len))
    for i in range(0, n_rows, step):
        yield slice(i, min(n_rows, i + step))


def _map_rows(kernel, x: torch.Tensor) -> torch.Tensor:
    """Apply an int64 row kernel ([R, L] -> int32 [R, L]) to chunks of rows of x."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    out = torch.empty(x2.shape, dtype=torch.int32)
    for sl in _row_chunks(x2.shape[0], n):
        out[sl] = kernel(x2[sl].to(torch.int64))
    return out.view(x.shape)


def _elementwise(kernel, *tensors) -> torch.Tensor:
    """Apply an int64 kernel to broadcast, flattened chunks of the tensors; int32 result."""
    shape = tensors[0].shape
    for t in tensors[1:]:
        shape = _broadcast_shape(shape, t.shape)
    flats = [t.expand(shape).reshape(-1) for t in tensors]
    n = flats[0].numel()
    out = torch.empty(n, dtype=torch.int32)
    for i in range(0, n, _CHUNK_ELEMS):
        sl = slice(i, min(n, i + _CHUNK_ELEMS))
        out[sl] = kernel(*(f[sl].to(torch.int64) for f in flats))
    return out.view(shape)


def _frac(f, name):
    return check_frac_bits(f, name, 0, MAX_FRAC_BITS)


def _out32(y: torch.Tensor) -> torch.Tensor:
    return y.clamp(min=INT32_MIN, max=INT32_MAX).to(torch.int32)


def _broadcast_shape(a, b):
    """Broadcast two shapes (numpy rules) or return None; avoids torch.broadcast_shapes, whose
    first call imports sympy (seconds)."""
    a, b = tuple(a), tuple(b)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def _rshift_scalar(x: torch.Tensor, s: int) -> torch.Tensor:
    """round_shift by an int; a left shift first clamps to +-2**32 so that a result saturated to
    int32 afterwards is exact and nothing wraps."""
    if s >= 0:
        return round_shift(x, s)
    return x.clamp(-(1 << 32), 1 << 32) << -s


def _rshift_rows(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """round_shift with a per-element non-negative or negative shift tensor (no overflow checks:
    callers guarantee the ranges documented at each call)."""
    # s is usually per row ([R, 1]): the shift/round constants are computed on the small tensor
    right = s.clamp(min=0, max=63)
    rnd = (torch.ones_like(right) << right) >> 1                   # 2**(right-1), 0 if right == 0
    if s.numel() and int(s.min()) >= 0:
        if int(s.max()) == 0:
            return x
        return (x + rnd) >> right
    left = (-s).clamp(min=0)
    return torch.where(s >= 0, (x + rnd) >> right, x << left)


@functools.lru_cache(maxsize=None)
def _exp_table_t() -> torch.Tensor:
    return torch.tensor(exp_table(), dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _sig_table_t() -> torch.Tensor:
    return torch.tensor(sigmoid_table(), dtype=torch.int64)


@functools.lru_cache(maxsize=32)
def _rope_tables_t(max_pos, head_dim, theta, frac, scaling=None):
    c, s = _rope_tables_np(max_pos, head_dim, theta, frac, scaling)
    return torch.from_numpy(c.copy()), torch.from_numpy(s.copy())




# ----------------------------------------------------------------------------- primitives


def exp2_neg(t: torch.Tensor) -> torch.Tensor:
    """``2**(-t / 2**EXP_FRAC) * 2**31`` for int64 ``t >= 0`` (table + linear interpolation).

    k = t >> 20 (integer part), j = (t >> 12) & 255 (table index), w = t & 4095 (weight):
    ``v = T[j] - round_shift((T[j] - T[j+1]) * w, 12)`` (in [2**22, 2**23]), result
    ``E = round_shift(v * 2**8, k)`` in [0, 2**31], computed as ``(((v << 9) >> k) + 1) >> 1``
    (the same value: one guard bit, then round half up).
    """
    tab = _exp_table_t()
    k = t >> EXP_FRAC
    f = t & ((1 << EXP_FRAC) - 1)
    j = f >> EXP_INTERP_BITS
    w = f & ((1 << EXP_INTERP_BITS) - 1)
    shape = t.shape
    j = j.reshape(-1)
    t0 = tab.index_select(0, j).view(shape)
    t1 = tab.index_select(0, j + 1).view(shape)
    v = t0 - (((t0 - t1) * w + (1 << (EXP_INTERP_BITS - 1))) >> EXP_INTERP_BITS)
    # E = round_shift(v * 2**8, k): 2**-x with 31 fractional bits (the row maximum gives 2**31)
    return (((v << (EXP_OUT_EXTRA_BITS + 1)) >> k.clamp_(max=63)) + 1) >> 1


def rsqrt_norm(t: torch.Tensor):
    """Normalized integer inverse square root, the exact spec of the norm's rsqrt unit.

    For ``t > 0``: ``u = (bit_length(t) - 23) >> 1`` (floor), ``t' = round_shift(t, 2u)``
    (a left shift when u < 0) so t' lies in [2**22, 2**24]; ``R = isqrt(2**62 // t')`` in
    [2**19, 2**20], which equals ``floor(2**31 / sqrt(t'))`` exactly (any implementation that
    lands on that floor matches). Then ``1 / sqrt(t) ~= R * 2**-(31 + u)``. ``t == 0`` gives 0.
    Returns (R, u) as int64 tensors.
    """
    zero = t <= 0
    bl = bit_length(torch.where(zero, torch.ones_like(t), t))
    u = (bl - _RSQRT_T_BITS) >> 1
    tn = _rshift_rows(t, 2 * u)
    tn = torch.where(zero, torch.full_like(tn, 1 << 22), tn)        # any valid value; R forced to 0
    q = torch.div(torch.full_like(tn, 1 << RSQRT_NUM_BITS), tn, rounding_mode="floor")
    r = isqrt(q)
    return torch.where(zero, torch.zeros_like(r), r), u


# ----------------------------------------------------------------------------- norms


def _check_gamma(g, d, name):
    _err_type(g, name)
    if g.shape != (d,):
        raise FixedPointValueError(
            f"{name} must have shape ({d},) matching the last dim of x, got {tuple(g.shape)}")
    return _act(g, name)


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        raise FixedPointValueError(f"eps={eps!r} must be a finite number >= 0")
    return float(eps)


def _normalize_rows(c: torch.Tensor, frac_in: int, eps: float) -> torch.Tensor:
    """c / sqrt(mean(c**2) + eps) with NORM_FRAC fractional bits, for int64 rows |c| < 2**47.

    Two per-row alignments of the row maximum: to NORM_MANT_BITS = 23 bits for the sum of squares
    (sh) and to 32 bits for the output multiply (sh2, zero for int32 inputs).
    """
    d = c.shape[-1]
    mx = c.abs().amax(dim=-1, keepdim=True)
    bl = bit_length(mx)
    sh = (bl - NORM_MANT_BITS).clamp(min=0)                        # per-row alignment shifts
    sh2 = (bl - 32).clamp(min=0)
    cs = _rshift_rows(c, sh)                                       # |cs| <= 2**23
    ssq = (cs * cs).sum(dim=-1, keepdim=True)                      # < 2**62 for d <= 2**14
    # eps term E(sh) = round_shift(d * eps_m, eps_s - 2*frac_in + 2*sh) for the sh values present
    em, es = quantize_multiplier(eps)
    e_by_sh = [0] * 64
    if em:
        for v in torch.unique(sh).tolist():
            e = round_shift(d * em, es - 2 * frac_in + 2 * v)
            if e >= 1 << 61:
                raise FixedPointValueError(
                    f"eps={eps} is too large for frac_in={frac_in} and dim {d}: "
                    f"d * eps * 2**(2*frac_in) must stay below 2**61")
            e_by_sh[v] = e
    t = ssq + torch.tensor(e_by_sh, dtype=torch.int64)[sh]
    r, u = rsqrt_norm(t)
    sdm, sds = quantize_multiplier(math.sqrt(d))
    g = (r * sdm + (1 << (_G_SHIFT - 1))) >> _G_SHIFT             # <= 2**27
    # 1/rms = sqrt(d) * 2**(F - sh) / sqrt(T) ~= G * 2**(24 - sds - 31 - u + F - sh), so
    # c/rms * 2**NORM_FRAC = c * G * 2**-(sds + 31 + u + sh - 24 - NORM_FRAC)  (docs/sfu.md)
    shift = sds + 31 + u + sh - _G_SHIFT - NORM_FRAC
    c2 = _rshift_rows(c, sh2)                                      # |c2| <= 2**32
    return _rshift_rows(c2 * g, shift - sh2)                       # |c2 * g| < 2**60



def _norm_args(x, frac_in, frac_gamma, frac_out, eps):
    """Validate the arguments shared by RMSNorm and LayerNorm."""
    xi = _act(x)
    frac_in = _frac(frac_in, "frac_in")
    frac_gamma = _frac(frac_gamma, "frac_gamma")
    frac_out = _frac(frac_out, "frac_out")
    eps = _check_eps(eps)
    if xi.dim() < 1 or xi.shape[-1] < 1 or xi.shape[-1] > NORM_MAX_DIM:
        raise FixedPointValueError(
            f"x last dim must be in [1, {NORM_MAX_DIM}], got shape {tuple(xi.shape)}")
    return xi, frac_in, frac_gamma, frac_out, eps

def rmsnorm(x: torch.Tensor, frac_in: int, gamma_q: torch.Tensor, frac_gamma: int = GAMMA_FRAC,
            eps: float = 1e-5, frac_out: int = NORM_OUT_FRAC) -> torch.Tensor:
    """Integer RMSNorm over the last dim: ``y = x / sqrt(mean(x**2) + eps) * gamma``.

    x: int32 [..., d] with ``frac_in`` fractional bits (d <= 16384); gamma_q: int32 [d] with
    ``frac_gamma`` bits; returns int32 [..., d] with ``frac_out`` bits (saturated). Algorithm in
    docs/sfu.md ("RMSNorm"): per-row 23-bit alignment, exact sum of squares, eps term, normalized
    integer rsqrt (divider + isqrt), sqrt(d) multiplier, two rounding multiplies.
    A row of zeros with eps = 0 gives zeros.
    """
    xi, frac_in, frac_gamma, frac_out, eps = _norm_args(x, frac_in, frac_gamma, frac_out, eps)
    g = _check_gamma(gamma_q, xi.shape[-1], "gamma_q").to(torch.int64)
    out_shift = NORM_FRAC + frac_gamma - frac_out                  # >= -6

    def kernel(rows):
        n = _normalize_rows(rows, frac_in, eps)                    # |n| <= sqrt(d) * 2**24
        return _out32(_rshift_scalar(n * g, out_shift))            # |n * g| < 2**62
    return _map_rows(kernel, xi)


def layernorm(x: torch.Tensor, frac_in: int, gamma_q: torch.Tensor, beta_q: torch.Tensor,
              frac_gamma: int = GAMMA_FRAC, eps: float = 1e-5,
              frac_out: int = NORM_OUT_FRAC) -> torch.Tensor:
    """Integer LayerNorm over the last dim: ``y = (x - mean) / sqrt(var + eps) * gamma + beta``.

    gamma_q and beta_q are int32 [d] with ``frac_gamma`` fractional bits. Centering is exact:
    ``c = d*x - sum(x)`` (= d * (x - mean), no divider, no rounding); c goes through the RMSNorm
    datapath with eps * d**2; beta is added (aligned to NORM_FRAC) before the final rounding
    shift.
    """
    xi, frac_in, frac_gamma, frac_out, eps = _norm_args(x, frac_in, frac_gamma, frac_out, eps)
    d = xi.shape[-1]
    g = _check_gamma(gamma_q, d, "gamma_q").to(torch.int64)
    b = _check_gamma(beta_q, d, "beta_q").to(torch.int64) << NORM_FRAC
    out_shift = NORM_FRAC + frac_gamma - frac_out

    def kernel(rows):
        # exact centering without a divider: c = d*x - sum(x) = d * (x - mean); the scale d
        # cancels in the normalization, except in eps, which becomes eps * d**2
        c = rows * d - rows.sum(dim=-1, keepdim=True)              # |c| < 2**46
        n = _normalize_rows(c, frac_in, eps * d * d)
        return _out32(_rshift_scalar(n * g + b, out_shift))
    return _map_rows(kernel, xi)


def rmsnorm_float(x, gamma, eps: float = 1e-5) -> torch.Tensor:
    """Float64 reference RMSNorm."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) \
        * torch.as_tensor(gamma, dtype=torch.float64)


def layernorm_float(x, gamma, beta, eps: float = 1e-5) -> torch.Tensor:
    """Float64 reference LayerNorm."""
    x = torch.as_tensor(x, dtype=torch.float64)
    c = x - x.mean(dim=-1, keepdim=True)
    return c / torch.sqrt((c * c).mean(dim=-1, keepdim=True) + eps) \
        * torch.as_tensor(gamma, dtype=torch.float64) + torch.as_tensor(beta, dtype=torch.float64)


# ----------------------------------------------------------------------------- softmax


def _check_mask(mask, shape):
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise FixedPointTypeError(
            "mask must be a torch.bool tensor (True = attend, False = masked out), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if _broadcast_shape(mask.shape, shape) != tuple(shape):
        raise FixedPointValueError(
            f"mask shape {tuple(mask.shape)} does not broadcast to scores {tuple(shape)}")
    return mask


def softmax(scores: torch.Tensor, frac_in: int, mask: torch.Tensor | None = None,
            frac_out: int = PROB_FRAC) -> torch.Tensor:
    """Integer softmax along the last dim; masked positions (mask False) give exactly 0.

    1. m = max of the unmasked scores of the row; d = min(m - s, 40 * 2**frac_in) (int64;
       masked scores count as -2**40, so their d clamps and their e is 0).
    2. t = apply_multiplier(d, log2(e)) with EXP_FRAC = 20 fractional bits.
    3. e = exp2_neg(t): 2**(-t) * 2**31 by the 257-entry table + 12-bit linear interpolation
       + rounding shift by the integer part (so the row maximum gives exactly 2**31).
    4. Z = sum(e) (exact, in [2**31, 2**51] if any position is unmasked); r = 2**62 // Z
       (a 62-by-52-bit divider, once per row).
    5. p = round_shift(e * r, 62 - frac_out) (e * r <= 2**62).
    A fully masked row gives all zeros. Each p is within 1 LSB of the float softmax (0.5 LSB of
    final rounding + table error; ERROR_BOUNDS["softmax"]); rows sum to 2**frac_out within L/2 + 1 LSB (L = row length;
    measured: a few LSB). Returns int32 with ``frac_out`` fractional bits.
    """
    s = _act(scores, "scores")
    frac_in = _frac(frac_in, "frac_in")
    frac_out = _frac(frac_out, "frac_out")
    if s.dim() < 1 or s.shape[-1] < 1:
        raise FixedPointValueError(f"scores must have a non-empty last dim, got {tuple(s.shape)}")
    if s.shape[-1] > SOFTMAX_MAX_LEN:
        raise FixedPointValueError(
            f"softmax rows longer than {SOFTMAX_MAX_LEN} are not supported, got {s.shape[-1]}")
    mask = _check_mask(mask, s.shape)
    n = s.shape[-1]
    s2 = s.reshape(-1, n)
    m2 = None if mask is None else mask.expand(s.shape).reshape(-1, n)
    out = torch.empty(s2.shape, dtype=torch.int32)
    for sl in _row_chunks(s2.shape[0], n):
        out[sl] = _softmax_rows(s2[sl].to(torch.int64), None if m2 is None else m2[sl],
                                frac_in, frac_out)
    return out.view(s.shape)


def _softmax_rows(s: torch.Tensor, mask, frac_in: int, frac_out: int) -> torch.Tensor:
    """Softmax kernel on int64 rows [R, L] (see softmax)."""
    if mask is not None:
        s = torch.where(mask, s, _MASKED)                          # masked: d clamps, e = 0
    m = s.amax(dim=-1, keepdim=True)
    d = (m - s).clamp_(max=_EXP_MAX_DIFF << frac_in)
    shift = _LOG2E_S + frac_in - EXP_FRAC
    if (_EXP_MAX_DIFF << frac_in) * _LOG2E_M < (1 << 62):
        t = (d * _LOG2E_M + (1 << (shift - 1))) >> shift           # = round_shift(d * M, shift)
    else:
        t = apply_multiplier(d, _LOG2E_M, shift)
    e = exp2_neg(t)
    z = e.sum(dim=-1, keepdim=True)                                # >= 2**31
    r = torch.div(torch.full_like(z, 1 << 62), z, rounding_mode="floor")
    if mask is not None:
        r = r * (m > _MASKED)                                      # fully masked row -> 0
    sh = 62 - frac_out
    return (e * r + (1 << (sh - 1))) >> sh


def softmax_float(scores, mask=None) -> torch.Tensor:
    """Float64 reference softmax; masked positions and fully masked rows give 0 (not NaN)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    z = e.sum(dim=-1, keepdim=True)
    return torch.where(z > 0, e / torch.where(z > 0, z, torch.ones_like(z)), torch.zeros_like(e))


# ----------------------------------------------------------------------------- SiLU


def _sigmoid_q(x: torch.Tensor, frac_in: int) -> torch.Tensor:
    """sigmoid(x) * 2**24 for int64 x with frac_in bits (table + interpolation + symmetry)."""
    tab = _sig_table_t()
    n = SIG_RANGE << SIG_STEP_BITS
    a = x.abs().clamp_(max=(SIG_RANGE << frac_in))                # beyond the range: saturate
    a = round_shift(a, frac_in - SIG_FRAC)                          # |x| with 18 fractional bits
    j = a >> SIG_INTERP_BITS
    w = a & ((1 << SIG_INTERP_BITS) - 1)
    inside = j < n
    jc = j.clamp(max=n - 1)
    t0 = tab.index_select(0, jc.reshape(-1)).view(jc.shape)
    t1 = tab.index_select(0, (jc + 1).reshape(-1)).view(jc.shape)
    v = t0 + (((t1 - t0) * w + (1 << (SIG_INTERP_BITS - 1))) >> SIG_INTERP_BITS)
    v = torch.where(inside, v, torch.full_like(v, 1 << SIG_VALUE_BITS))
    return torch.where(x < 0, (1 << SIG_VALUE_BITS) - v, v)


def silu(x: torch.Tensor, frac_in: int, frac_out: int = ACT_FRAC) -> torch.Tensor:
    """Integer SiLU ``y = x * sigmoid(x)``.

    a = round_shift(min(|x|, 16), frac_in - 18) (|x| with 18 fractional bits); j = a >> 12
    indexes the 1025-entry sigmoid table (step 1/64), w = a & 4095 interpolates:
    ``sig = T[j] + round_shift((T[j+1] - T[j]) * w, 12)``; |x| >= 16 gives sig = 2**24; for
    x < 0, sig = 2**24 - sig (exact symmetry).
    ``y = round_shift(x * sig, 24 + frac_in - frac_out)``,
    saturated to int32.
    """
    xi = _act(x)
    frac_in = _frac(frac_in, "frac_in")
    frac_out = _frac(frac_out, "frac_out")
    return _elementwise(lambda v: _silu_kernel(v, frac_in, frac_out), xi)


def _silu_kernel(x: torch.Tensor, frac_in: int, frac_out: int) -> torch.Tensor:
    sig = _sigmoid_q(x, frac_in)
    return _out32(_rshift_scalar(x * sig, SIG_VALUE_BITS + frac_in - frac_out))


def swiglu(gate: torch.Tensor, up: torch.Tensor, frac_gate: int, frac_up: int,
           frac_out: int = ACT_FRAC, frac_mid: int | None = None) -> torch.Tensor:
    """``silu(gate) * up``: ``s = silu(gate, frac_gate, frac_mid)`` then
    ``mul(s, up, frac_mid, frac_up, frac_out)`` (two rounding points, each saturating to int32).
    ``frac_mid`` defaults to ``frac_gate``; its 0.5 LSB rounding error is multiplied by |up|."""
    g = _act(gate, "gate")
    u = _act(up, "up")
    _shape_match(g, u, "gate", "up")
    frac_gate, frac_up = _frac(frac_gate, "frac_gate"), _frac(frac_up, "frac_up")
    frac_out = _frac(frac_out, "frac_out")
    frac_mid = frac_gate if frac_mid is None else _frac(frac_mid, "frac_mid")

    def kernel(gv, uv):
        sv = _silu_kernel(gv, frac_gate, frac_mid).to(torch.int64)
        return _mul_kernel(sv, uv, frac_mid + frac_up - frac_out)
    return _elementwise(kernel, g, u)


def silu_float(x) -> torch.Tensor:
    """Float64 reference SiLU."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return x * torch.sigmoid(x)


def swiglu_float(gate, up) -> torch.Tensor:
    """Float64 reference SwiGLU."""
    return silu_float(gate) * torch.as_tensor(up, dtype=torch.float64)


# ----------------------------------------------------------------------------- element-wise


def _shape_match(a, b, na, nb):
    if _broadcast_shape(a.shape, b.shape) is None:
        raise FixedPointValueError(
            f"{na} shape {tuple(a.shape)} and {nb} shape {tuple(b.shape)} do not broadcast")


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Saturating int32 add of two fixed-point tensors with the SAME fractional bits."""
    ai, bi = _act(a, "a"), _act(b, "b")
    _shape_match(ai, bi, "a", "b")
    return _elementwise(lambda u, v: _out32(u + v), ai, bi)


def mul(a: torch.Tensor, b: torch.Tensor, frac_a: int, frac_b: int,
        frac_out: int) -> torch.Tensor:
    """``round_shift(a * b, frac_a + frac_b - frac_out)`` saturated to int32 (exact, int64)."""
    ai, bi = _act(a, "a"), _act(b, "b")
    _shape_match(ai, bi, "a", "b")
    s = _frac(frac_a, "frac_a") + _frac(frac_b, "frac_b") - _frac(frac_out, "frac_out")
    return _elementwise(lambda u, v: _mul_kernel(u, v, s), ai, bi)


def _mul_kernel(a: torch.Tensor, b: torch.Tensor, s: int) -> torch.Tensor:
    # |a * b| <= 2**62; a left shift (s < 0) clamps first so that saturation stays exact
    return _out32(_rshift_scalar(a * b, s))


def requantize(x: torch.Tensor, frac_in: int, frac_out: int) -> torch.Tensor:
    """Change the fractional bits: ``round_shift(x, frac_in - frac_out)`` saturated to int32."""
    xi = _act(x)
    s = _frac(frac_in, "frac_in") - _frac(frac_out, "frac_out")
    return _elementwise(lambda v: _out32(_rshift_scalar(v, s)), xi)


def add_float(a, b) -> torch.Tensor:
    """Float64 reference add."""
    return torch.as_tensor(a, dtype=torch.float64) + torch.as_tensor(b, dtype=torch.float64)


def mul_float(a, b) -> torch.Tensor:
    """Float64 reference multiply."""
    return torch.as_tensor(a, dtype=torch.float64) * torch.as_tensor(b, dtype=torch.float64)


# ----------------------------------------------------------------------------- RoPE


def _table_len(n: int) -> int:
    return max(2048, 1 << (int(n) - 1).bit_length())


def rope(x: torch.Tensor, positions, frac: int, theta: float, head_dim: int,
         style: str = "half", table_frac: int = ROPE_TABLE_FRAC, scaling=None) -> torch.Tensor:
    """Integer rotary embedding of the last dim (size head_dim) at integer ``positions``.

    style "half": pairs (i, i + d/2) (Hugging Face rotate_half); "interleaved": pairs (2i, 2i+1)
    (glassllm's native layout). For a pair (a, b) and table entries c = cos[p, i], s = sin[p, i]
    (``rope_tables``, ``table_frac`` bits): ``a' = round_shift(a*c - b*s, table_frac)``,
    ``b' = round_shift(b*c + a*s, table_frac)``, saturated to int32. The output keeps ``frac``.
    positions: integer tensor (or sequence) >= 0 broadcastable to x.shape[:-1].
    scaling: LLaMA-3 frequency rescaling of the tables (see :func:`rope_tables`), or None.
    """
    xi = _act(x)
    scaling = check_rope_scaling(scaling)
    _frac(frac, "frac")
    table_frac = check_frac_bits(table_frac, "table_frac", 1, 30)
    if style not in ("half", "interleaved"):
        raise FixedPointValueError(f"style={style!r} must be 'half' or 'interleaved'")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise FixedPointValueError(f"head_dim={head_dim!r} must be a positive even int")
    if xi.dim() < 1 or xi.shape[-1] != head_dim:
        raise FixedPointValueError(
            f"x last dim {tuple(xi.shape)[-1:] } must equal head_dim={head_dim}")
    if not isinstance(positions, torch.Tensor):
        positions = torch.as_tensor(positions)
    _err_type(positions, "positions")
    pos = positions.to(torch.int64)
    if pos.numel() and int(pos.min()) < 0:
        raise FixedPointValueError("positions must be >= 0")
    if _broadcast_shape(pos.shape, xi.shape[:-1]) != tuple(xi.shape[:-1]):
        raise FixedPointValueError(
            f"positions shape {tuple(pos.shape)} does not broadcast to x.shape[:-1] "
            f"{tuple(xi.shape[:-1])}")
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 1):
        raise FixedPointValueError(f"theta={theta!r} must be a finite number > 1")
    n = int(pos.max()) + 1 if pos.numel() else 1
    cos_t, sin_t = _rope_tables_t(_table_len(n), head_dim, float(theta), table_frac, scaling)
    h = head_dim // 2
    rnd = 1 << (table_frac - 1)
    x2 = xi.reshape(-1, head_dim)
    p2 = pos.expand(xi.shape[:-1]).reshape(-1)
    out = torch.empty(x2.shape, dtype=torch.int32)
    for sl in _row_chunks(x2.shape[0], head_dim):
        v = x2[sl].to(torch.int64)
        c = cos_t.index_select(0, p2[sl])
        sn = sin_t.index_select(0, p2[sl])
        if style == "half":
            a, b = v[:, :h], v[:, h:]
        else:
            a, b = v[:, 0::2], v[:, 1::2]
        a2 = _out32((a * c - b * sn + rnd) >> table_frac)          # |a*c - b*s| < 2**49
        b2 = _out32((b * c + a * sn + rnd) >> table_frac)
        o = out[sl]
        if style == "half":
            o[:, :h], o[:, h:] = a2, b2
        else:
            o[:, 0::2], o[:, 1::2] = a2, b2
    return out.view(xi.shape)


def rope_float(x, positions, theta: float, head_dim: int, style: str = "half") -> torch.Tensor:
    """Float64 reference rotary embedding (exact angles, no table)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    pos = torch.as_tensor(positions, dtype=torch.float64)
    h = head_dim // 2
    inv = float(theta) ** (-(2.0 * torch.arange(h, dtype=torch.float64)) / head_dim)
    ang = pos[..., None] * inv
    c, s = torch.cos(ang), torch.sin(ang)
    if style == "half":
        a, b = x[..., :h], x[..., h:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- error measurement

#: Documented error bounds, asserted elementwise by tests/test_golden_sfu.py and reported in
#: docs/sfu.md: |y - ref| <= abs_lsb * 2**-frac_out + abs + rel * scale (see error_bound; the
#: norms add 2**-25 * |gamma|), where ref is the float64
#: reference on the SAME dequantized integer inputs and scale is |ref| (RMSNorm, softmax, mul),
#: |ref - beta| (LayerNorm),
#: |x| (silu), the pair norm sqrt(a**2 + b**2) (rope) or |up| (swiglu; the SiLU intermediate is
#: rounded to frac_mid = frac_gate bits, so its 0.5 LSB is multiplied by |up|). Softmax's "abs"
#: term (2**-30) covers the 2**-31 resolution of e and the reciprocal's truncation; it only shows
#: at frac_out near 30.
ERROR_BOUNDS = {
    "rmsnorm": {"abs_lsb": 1.0, "rel": 2.0**-18},
    "layernorm": {"abs_lsb": 1.0, "rel": 2.0**-18},
    "softmax": {"abs_lsb": 0.5, "rel": 2.0**-18, "abs": 2.0**-30},
    "silu": {"abs_lsb": 0.5, "rel": 2.0**-17},
    "swiglu": {"abs_lsb": 0.5, "rel": 2.0**-16},
    "rope": {"abs_lsb": 0.5, "rel": 2.0**-16},
    "mul": {"abs_lsb": 0.5, "rel": 0.0},
    "add": {"abs_lsb": 0.0, "rel": 0.0},
}


def error_bound(name: str, ref: torch.Tensor, frac_out: int, scale=None,
                gamma=None) -> torch.Tensor:
    """Elementwise documented error bound (float64 tensor shaped like ``ref``).

    ``abs_lsb * 2**-frac_out + abs + rel * scale (+ 2**-25 * |gamma| for the norms: the rounding
    of x/rms at NORM_FRAC = 24 bits, visible when frac_out > 24)``; ``scale`` defaults to |ref|
    (use |ref - beta| for LayerNorm, |x| for SiLU, |up| for SwiGLU, the pair norm for RoPE).
    """
    ref = torch.as_tensor(ref, dtype=torch.float64)
    b = ERROR_BOUNDS[name]
    scale = ref.abs() if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    bound = b["abs_lsb"] * 2.0 ** -frac_out + b.get("abs", 0.0) + b["rel"] * scale
    if gamma is not None:
        bound = bound + 2.0 ** -(NORM_FRAC + 1) * torch.as_tensor(gamma, dtype=torch.float64).abs()
    return bound.expand_as(ref)


def _err_stats(name: str, y_q: torch.Tensor, ref: torch.Tensor, frac_out: int,
               scale: torch.Tensor | None = None, gamma=None) -> dict:
    """Error statistics of y_q (fixed point) against ref, and the bound check of ERROR_BOUNDS."""
    from .fixed import from_fixed
    err = (from_fixed(y_q, frac_out) - ref).abs()
    lsb = 2.0 ** -frac_out
    bound = error_bound(name, ref, frac_out, scale, gamma)
    floor = error_bound(name, ref, frac_out, torch.zeros(()), gamma)
    scale = ref.abs() if scale is None else scale.expand_as(err)
    excess = err - bound
    beyond = (err - floor).clamp(min=0) / scale.clamp(min=1e-300)
    return {"max_abs": err.max().item(), "mean_abs": err.mean().item(),
            "max_abs_lsb": err.max().item() / lsb, "mean_abs_lsb": err.mean().item() / lsb,
            "rel_needed": beyond.max().item(), "bound_ok": bool((excess <= 1e-12).all()),
            "n": int(err.numel())}


def measure_errors(reduced: bool = False, seed: int = 0) -> dict:
    """Measure every SFU function against its float64 reference on realistic ranges.

    Inputs (F = 16 everywhere): residual-like rows at scales 1e-3 .. 1e3 plus SmolLM2-like rows
    (an attention-sink channel at 24,900, outlier channels at +-500), d = 576; attention scores
    with std 1 .. 20 and saturating rows, causal masks, context up to 2048, one fully masked row;
    SiLU on [-30, 30] and +-25,000; RoPE (theta 1e5 and 1e4, head_dim 64) at positions up to
    2047. ``reduced`` shrinks the shapes (the unit tests use it). Returns {name: stats}.
    """
    from .fixed import from_fixed, to_fixed
    gen = torch.Generator().manual_seed(seed)
    F = 16
    out = {}

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    # --- norms
    rows, d = (64, 576) if reduced else (512, 576)
    x = randn(rows, d) * torch.logspace(-3, 3, rows, dtype=torch.float64)[:, None]
    x[0] = randn(d)
    x[0, 17] = 24900.0                                   # attention-sink token
    x[1] = randn(d)
    x[1, [3, 99, 400]] = torch.tensor([500.0, -480.0, 300.0], dtype=torch.float64)
    x[2] = 0.0                                           # zero variance: eps only
    x[3] = 7.25                                          # constant row
    xq = to_fixed(x, F)
    gq = to_fixed(1.0 + 0.3 * randn(d), F)
    bq = to_fixed(0.2 * randn(d), F)
    xr, gr, br = from_fixed(xq, F), from_fixed(gq, F), from_fixed(bq, F)
    out["rmsnorm"] = _err_stats("rmsnorm", rmsnorm(xq, F, gq, F, 1e-5, F),
                                rmsnorm_float(xr, gr, 1e-5), F, gamma=gr)
    xo = x + 50.0 * randn(rows, 1)                       # non-zero means
    xo[3] = 7.25
    xoq = to_fixed(xo, F)
    ln_ref = layernorm_float(from_fixed(xoq, F), gr, br, 1e-5)
    out["layernorm"] = _err_stats("layernorm", layernorm(xoq, F, gq, bq, F, 1e-5, F), ln_ref, F,
                                  (ln_ref - br).abs(), gamma=gr)

    # --- softmax
    heads, q_len, k_len = (3, 64, 2048) if reduced else (9, 256, 2048)
    std = torch.tensor([1.0, 5.0, 20.0] * (heads // 3), dtype=torch.float64)[:heads, None, None]
    sc = randn(heads, q_len, k_len) * std
    sc[:, 0, :] = randn(k_len) * 0.01                    # nearly uniform row
    sc[:, 1, 5] = 300.0                                  # saturating row (one-hot)
    sq = to_fixed(sc, F)
    mask = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=k_len - q_len)
    mask[2] = False                                      # fully masked row
    p = softmax(sq, F, mask, F)
    ref = softmax_float(from_fixed(sq, F), mask)
    st = _err_stats("softmax", p, ref, F)
    live = mask.any(dim=-1).expand(heads, q_len)
    sums = p.to(torch.int64).sum(dim=-1)
    lens = mask.sum(dim=-1).to(torch.float64).expand(heads, q_len)
    st["max_row_sum_err_lsb"] = int((sums - (1 << F)).abs()[live].max())
    st["max_row_sum_err_per_sqrt_len"] = float(
        ((sums - (1 << F)).abs().to(torch.float64) / lens.clamp(min=1).sqrt())[live].max())
    out["softmax"] = st

    # --- SiLU / SwiGLU
    n = 20001 if reduced else 200001
    xs = torch.cat([torch.linspace(-30, 30, n, dtype=torch.float64),
                    torch.tensor([-25000.0, -16.0, 16.0, 25000.0, 32767.0], dtype=torch.float64)])
    xsq = to_fixed(xs, F)
    out["silu"] = _err_stats("silu", silu(xsq, F, F), silu_float(from_fixed(xsq, F)), F,
                             from_fixed(xsq, F).abs())
    upq = to_fixed(randn(xs.numel()) * 10, F)
    gsq = to_fixed(torch.linspace(-12, 12, xs.numel(), dtype=torch.float64), F)
    out["swiglu"] = _err_stats("swiglu", swiglu(gsq, upq, F, F, F),
                               swiglu_float(from_fixed(gsq, F), from_fixed(upq, F)), F,
                               from_fixed(upq, F).abs())

    # --- RoPE (error relative to the pair magnitude is what matters; big = 1)
    heads_r, seq = (3, 256) if reduced else (9, 2048)
    qk = randn(heads_r, seq, 64) * 4
    qk[0, :, 5] = 900.0                                  # outlier channel
    qkq = to_fixed(qk, F)
    pos = torch.arange(seq)
    worst = None
    for theta in (1e5, 1e4):
        for style in ("half", "interleaved"):
            st = _err_stats("rope", rope(qkq, pos, F, theta, 64, style),
                            rope_float(from_fixed(qkq, F), pos, theta, 64, style), F,
                            _pair_norm(from_fixed(qkq, F), style))
            if worst is None or st["rel_needed"] > worst["rel_needed"]:
                worst = st
    out["rope"] = worst

    # --- element-wise
    a = to_fixed(randn(100000) * 100, F)
    b = to_fixed(randn(100000) * 3, F)
    out["mul"] = _err_stats("mul", mul(a, b, F, F, F),
                            mul_float(from_fixed(a, F), from_fixed(b, F)), F)
    out["add"] = _err_stats("add", add(a, b), add_float(from_fixed(a, F), from_fixed(b, F)), F)
    return out


def _pair_norm(x: torch.Tensor, style: str) -> torch.Tensor:
    """sqrt(a**2 + b**2) of each RoPE pair, laid out like x."""
    h = x.shape[-1] // 2
    if style == "half":
        a, b = x[..., :h], x[..., h:]
        n = torch.sqrt(a * a + b * b)
        return torch.cat([n, n], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    n = torch.sqrt(a * a + b * b)
    return torch.stack([n, n], dim=-1).flatten(-2)


def _speed_report(tokens: int = 1024) -> None:  # pragma: no cover - command line report
    """Time the SFU work of one SmolLM2-135M layer (d 576, 9/3 heads of 64, FFN 1536) at
    ``tokens`` tokens of causal prefill, single-threaded, best of 3."""
    import time
    from .fixed import to_fixed
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    F = 16
    x = to_fixed(torch.randn(tokens, 576, generator=gen), F)
    gam = to_fixed(torch.ones(576), F)
    q = to_fixed(torch.randn(9, tokens, 64, generator=gen) * 3, F)
    k = to_fixed(torch.randn(3, tokens, 64, generator=gen) * 3, F)
    sc = to_fixed(torch.randn(9, tokens, tokens, generator=gen) * 3, F)
    mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    gate = to_fixed(torch.randn(tokens, 1536, generator=gen), F)
    up = to_fixed(torch.randn(tokens, 1536, generator=gen), F)
    pos = torch.arange(tokens)
    jobs = [("rmsnorm x2", 2, lambda: rmsnorm(x, F, gam, F, 1e-5, F)),
            ("rope q+k", 1, lambda: (rope(q, pos, F, 1e5, 64), rope(k, pos, F, 1e5, 64))),
            ("softmax", 1, lambda: softmax(sc, F, mask)),
            ("swiglu", 1, lambda: swiglu(gate, up, F, F, F)),
            ("add x2", 2, lambda: add(x, x))]
    total = [0.0, 0.0]
    print(f"SFU time of one SmolLM2-135M layer, {tokens} tokens, 1 thread (best of 3; CPU time "
          f"is the figure to quote on a shared machine):")
    for name, times, fn in jobs:
        best = [float("inf"), float("inf")]
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best = [min(best[0], time.perf_counter() - t0), min(best[1], time.process_time() - c0)]
        total = [total[0] + times * best[0], total[1] + times * best[1]]
        print(f"  {name:11s} wall {times * best[0] * 1e3:8.1f} ms   CPU {times * best[1] * 1e3:8.1f} ms")
    print(f"  {'layer':11s} wall {total[0] * 1e3:8.1f} ms   CPU {total[1] * 1e3:8.1f} ms"
          f"  -> 30 layers: wall {30 * total[0]:.1f} s, CPU {30 * total[1]:.1f} s")


def _main() -> None:  # pragma: no cover - command line report
    import sys
    import time
    if "--speed" in sys.argv:
        _speed_report()
        return
    reduced = "--reduced" in sys.argv
    t0 = time.time()
    res = measure_errors(reduced=reduced)
    print(f"SFU error vs float64 (F=16 in/out, LSB = 2**-16), reduced={reduced}, "
          f"{time.time() - t0:.1f} s")
    print(f"{'function':10s} {'max abs':>10s} {'mean abs':>10s} {'max LSB':>9s} "
          f"{'mean LSB':>9s} {'rel needed':>10s} {'bound':>14s}")
    for k, v in res.items():
        extra = ""
        if k == "softmax":
            extra = (f"  row-sum err max {v['max_row_sum_err_lsb']} LSB "
                     f"({v['max_row_sum_err_per_sqrt_len']:.3f} LSB/sqrt(L))")
        b = ERROR_BOUNDS[k]
        bound = f"{b['abs_lsb']}+2^{math.log2(b['rel']):.0f}" if b["rel"] else f"{b['abs_lsb']}"
        print(f"{k:10s} {v['max_abs']:10.3e} {v['mean_abs']:10.3e} {v['max_abs_lsb']:9.3f} "
              f"{v['mean_abs_lsb']:9.3f} {v['rel_needed']:10.2e} {bound:>14s} "
              f"{'ok' if v['bound_ok'] else 'VIOLATED'}{extra}")


if __name__ == "__main__":  # pragma: no cover
    _main()
