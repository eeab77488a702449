"""numpy ports of golden/sfu.py's integer SFU functions, for the functional simulator's MISC unit.

golden/sfu.py is the specification; these are the same integer algorithms, step for step, on numpy
int64 rows of one MISC instruction (a decode step runs ~600 of them on rows of 64..1536 elements,
where torch's per-op dispatch cost more than the arithmetic). tests/test_sim_sfu_np.py compares every
function with golden's on random rows and on the extremes of the int32 range.

Each function takes int32 (or int64 holding int32) numpy rows [R, C] and returns int32 [R, C], with the
fractional bits of the simulator (``frac`` = 16 in, gamma and out). Golden's argument checks that can
fail on data an instruction reads (eps too large for the norm, a bad RoPE record) raise the same
``FixedPointValueError`` messages: the checks are delegated to golden's pure-Python helpers.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from olivine.golden import sfu
from olivine.golden.fixed import INT32_MAX, INT32_MIN, FixedPointValueError, quantize_multiplier, round_shift

__all__ = ["rmsnorm", "softmax", "silu", "swiglu", "add", "mul", "rope_half"]

_ONE = np.int64(1)


def _clip(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Clamp integers to [lo, hi] (numpy's clip checks its bounds on every call, which costs more than
    the small rows of a decode step)."""
    return np.minimum(np.maximum(x, lo), hi)


def _out32(y: np.ndarray) -> np.ndarray:
    return _clip(y, INT32_MIN, INT32_MAX).astype(np.int32)


def _rshift_scalar(x: np.ndarray, s: int) -> np.ndarray:
    """golden sfu._rshift_scalar: round_shift by an int; a left shift clamps to +-2**32 first."""
    if s > 0:
        s = min(s, 63)
        return (x + (1 << (s - 1))) >> s
    if s == 0:
        return x
    return _clip(x, -(1 << 32), 1 << 32) << -s


def _rshift_rows(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """golden sfu._rshift_rows: round_shift by a per-row (or per-element) shift, right or left."""
    right = _clip(s, 0, 63)
    rnd = (_ONE << right) >> 1  # 2**(right-1), 0 if right == 0
    if s.size and int(s.min()) >= 0:
        if int(s.max()) == 0:
            return x
        return (x + rnd) >> right
    left = np.maximum(-s, 0)
    return np.where(s >= 0, (x + rnd) >> right, x << left)


def _bit_length(x: np.ndarray) -> np.ndarray:
    """int.bit_length of non-negative int64 values below 2**62 (0 -> 0): frexp's exponent of the
    float64 value, corrected where the conversion rounded up to the next power of two."""
    e = np.frexp(x.astype(np.float64))[1].astype(np.int64)
    return e - ((_ONE << np.maximum(e - 1, 0)) > x)


def _isqrt(n: np.ndarray) -> np.ndarray:
    """Exact floor(sqrt(n)) for 0 <= n < 2**62: golden fixed.isqrt's float estimate and corrections."""
    r = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)
    for _ in range(2):
        r = r - (r * r > n)
    for _ in range(2):
        r = r + ((r + 1) * (r + 1) <= n)
    return r


def _rsqrt_norm(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """golden sfu.rsqrt_norm: (R, u) with 1/sqrt(t) ~= R * 2**-(31 + u); t == 0 gives R = 0."""
    zero = t <= 0
    bl = _bit_length(np.where(zero, 1, t))
    u = (bl - sfu._RSQRT_T_BITS) >> 1
    tn = _rshift_rows(t, 2 * u)
    tn = np.where(zero, 1 << 22, tn)
    r = _isqrt((_ONE << sfu.RSQRT_NUM_BITS) // tn)
    return np.where(zero, 0, r), u


@functools.lru_cache(maxsize=256)
def _eps_term(d: int, eps: float, frac_in: int, sh: int) -> int:
    """E(sh) of golden sfu._normalize_rows (its error for an eps too large, with its message)."""
    em, es = quantize_multiplier(eps)
    if not em:
        return 0
    e = round_shift(d * em, es - 2 * frac_in + 2 * sh)
    if e >= 1 << 61:
        raise FixedPointValueError(
            f"eps={eps} is too large for frac_in={frac_in} and dim {d}: "
            f"d * eps * 2**(2*frac_in) must stay below 2**61")
    return e


def _normalize_rows(c: np.ndarray, frac_in: int, eps: float) -> np.ndarray:
    """golden sfu._normalize_rows: c / sqrt(mean(c**2) + eps) with NORM_FRAC bits, int64 rows."""
    d = c.shape[-1]
    bl = _bit_length(np.abs(c).max(axis=-1, keepdims=True))
    sh = np.maximum(bl - sfu.NORM_MANT_BITS, 0)
    sh2 = np.maximum(bl - 32, 0)
    cs = _rshift_rows(c, sh)  # |cs| <= 2**23
    ssq = np.einsum("ij,ij->i", cs, cs).reshape(-1, 1)  # exact int64: < 2**62 for d <= 2**14
    quantize_multiplier(eps)  # its errors first, as golden raises them
    e_by_sh = {v: _eps_term(d, eps, frac_in, v) for v in np.unique(sh).tolist()}
    if len(e_by_sh) == 1:
        t = ssq + next(iter(e_by_sh.values()))
    else:
        t = ssq + np.vectorize(e_by_sh.__getitem__, otypes=[np.int64])(sh)
    r, u = _rsqrt_norm(t)
    sdm, sds = _sqrt_multiplier(d)
    g = (r * sdm + (1 << (sfu._G_SHIFT - 1))) >> sfu._G_SHIFT
    shift = sds + 31 + u + sh - sfu._G_SHIFT - sfu.NORM_FRAC
    c2 = _rshift_rows(c, sh2)
    return _rshift_rows(c2 * g, shift - sh2)


@functools.lru_cache(maxsize=64)
def _sqrt_multiplier(d: int) -> tuple[int, int]:
    return quantize_multiplier(math.sqrt(d))


def _rshift_int(x, s: int):
    """_rshift_rows by one Python-int shift (right shifts clamped to 63, as there)."""
    if s > 0:
        s = min(s, 63)
        return (x + (1 << (s - 1))) >> s
    return x if s == 0 else x << -s


def _normalize_row(c: np.ndarray, frac_in: int, eps: float) -> np.ndarray:
    """:func:`_normalize_rows` of one int64 row, its per-row scalars (alignment, sum of squares, rsqrt,
    gain, shift) in Python ints: the same integers, in a third of the numpy passes."""
    d = c.shape[-1]
    bl = int(np.abs(c).max()).bit_length()
    sh, sh2 = max(bl - sfu.NORM_MANT_BITS, 0), max(bl - 32, 0)
    cs = _rshift_int(c, sh)
    t = int(np.dot(cs, cs)) + _eps_term(d, eps, frac_in, sh)  # exact int64 dot: < 2**62 for d <= 2**14
    if t <= 0:
        r, u = 0, (1 - sfu._RSQRT_T_BITS) >> 1  # golden: bit_length(1), R forced to 0
    else:
        u = (t.bit_length() - sfu._RSQRT_T_BITS) >> 1
        r = math.isqrt((1 << sfu.RSQRT_NUM_BITS) // _rshift_int(t, 2 * u))
    sdm, sds = _sqrt_multiplier(d)
    g = (r * sdm + (1 << (sfu._G_SHIFT - 1))) >> sfu._G_SHIFT
    shift = sds + 31 + u + sh - sfu._G_SHIFT - sfu.NORM_FRAC
    return _rshift_int(_rshift_int(c, sh2) * g, shift - sh2)


#: up to this many rows, rmsnorm works row by row with Python-int row scalars
_ROW_BY_ROW = 8


def rmsnorm(x: np.ndarray, frac_in: int, gamma: np.ndarray, frac_gamma: int, eps: float,
            frac_out: int) -> np.ndarray:
    """golden sfu.rmsnorm of int32 rows x [R, d] with int32 gamma [d]."""
    if x.shape[-1] < 1 or x.shape[-1] > sfu.NORM_MAX_DIM:
        raise FixedPointValueError(f"x last dim must be in [1, {sfu.NORM_MAX_DIM}], got shape {tuple(x.shape)}")
    eps = sfu._check_eps(eps)
    c = x.astype(np.int64)
    if x.shape[0] <= _ROW_BY_ROW:
        quantize_multiplier(eps)  # its errors first, as golden raises them
        n = np.stack([_normalize_row(row, frac_in, eps) for row in c]) if x.shape[0] > 1 else \
            _normalize_row(c[0], frac_in, eps).reshape(1, -1)
    else:
        n = _normalize_rows(c, frac_in, eps)
    return _out32(_rshift_scalar(n * gamma.astype(np.int64), sfu.NORM_FRAC + frac_gamma - frac_out))


@functools.lru_cache(maxsize=None)
def _exp_table() -> np.ndarray:
    return np.asarray(sfu.exp_table(), dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _sig_table() -> np.ndarray:
    return np.asarray(sfu.sigmoid_table(), dtype=np.int64)


def _exp2_neg(t: np.ndarray) -> np.ndarray:
    """golden sfu.exp2_neg: 2**(-t / 2**20) * 2**31 by the 257-entry table + linear interpolation."""
    tab = _exp_table()
    k = t >> sfu.EXP_FRAC
    f = t & ((1 << sfu.EXP_FRAC) - 1)
    j = f >> sfu.EXP_INTERP_BITS
    w = f & ((1 << sfu.EXP_INTERP_BITS) - 1)
    t0, t1 = tab[j], tab[j + 1]
    v = t0 - (((t0 - t1) * w + (1 << (sfu.EXP_INTERP_BITS - 1))) >> sfu.EXP_INTERP_BITS)
    return (((v << (sfu.EXP_OUT_EXTRA_BITS + 1)) >> np.minimum(k, 63)) + 1) >> 1


def softmax(scores: np.ndarray, frac_in: int, mask: np.ndarray | None, frac_out: int) -> np.ndarray:
    """golden sfu.softmax of int32 rows [R, L] (mask: bool [R, L], True = attend, or None)."""
    if scores.shape[-1] < 1:
        raise FixedPointValueError(f"scores must have a non-empty last dim, got {tuple(scores.shape)}")
    if scores.shape[-1] > sfu.SOFTMAX_MAX_LEN:
        raise FixedPointValueError(
            f"softmax rows longer than {sfu.SOFTMAX_MAX_LEN} are not supported, got {scores.shape[-1]}")
    s = scores.astype(np.int64)
    if mask is not None:
        s = np.where(mask, s, sfu._MASKED)
    m = s.max(axis=-1, keepdims=True)
    d = np.minimum(m - s, sfu._EXP_MAX_DIFF << frac_in)
    shift = sfu._LOG2E_S + frac_in - sfu.EXP_FRAC
    if (sfu._EXP_MAX_DIFF << frac_in) * sfu._LOG2E_M >= 1 << 62:  # not the simulator's frac_in = 16
        raise FixedPointValueError(f"numpy softmax: frac_in={frac_in} needs golden's wide multiplier path")
    t = (d * sfu._LOG2E_M + (1 << (shift - 1))) >> shift
    e = _exp2_neg(t)
    z = e.sum(axis=-1, keepdims=True)  # >= 2**31
    r = (_ONE << 62) // z
    if mask is not None:
        r = r * (m > sfu._MASKED)  # a fully masked row gives zeros
    sh = 62 - frac_out
    return ((e * r + (1 << (sh - 1))) >> sh).astype(np.int32)


def _sigmoid_q(x: np.ndarray, frac_in: int) -> np.ndarray:
    """golden sfu._sigmoid_q: sigmoid(x) * 2**24 (table + interpolation + symmetry), int64 x."""
    tab = _sig_table()
    n = sfu.SIG_RANGE << sfu.SIG_STEP_BITS
    a = np.minimum(np.abs(x), sfu.SIG_RANGE << frac_in)
    s = frac_in - sfu.SIG_FRAC
    a = (a + (1 << (s - 1))) >> s if s > 0 else a << -s  # round_shift; |a| <= 2**(frac_in + 4)
    j = a >> sfu.SIG_INTERP_BITS
    w = a & ((1 << sfu.SIG_INTERP_BITS) - 1)
    jc = np.minimum(j, n - 1)
    t0, t1 = tab[jc], tab[jc + 1]
    v = t0 + (((t1 - t0) * w + (1 << (sfu.SIG_INTERP_BITS - 1))) >> sfu.SIG_INTERP_BITS)
    v = np.where(j < n, v, 1 << sfu.SIG_VALUE_BITS)
    return np.where(x < 0, (1 << sfu.SIG_VALUE_BITS) - v, v)


def _silu64(x: np.ndarray, frac_in: int, frac_out: int) -> np.ndarray:
    return _clip(_rshift_scalar(x * _sigmoid_q(x, frac_in), sfu.SIG_VALUE_BITS + frac_in - frac_out),
                 INT32_MIN, INT32_MAX)


def silu(x: np.ndarray, frac_in: int, frac_out: int) -> np.ndarray:
    """golden sfu.silu."""
    return _silu64(x.astype(np.int64), frac_in, frac_out).astype(np.int32)


def swiglu(gate: np.ndarray, up: np.ndarray, frac_gate: int, frac_up: int, frac_out: int) -> np.ndarray:
    """golden sfu.swiglu with frac_mid = frac_gate: silu(gate) rounded to frac_gate, times up."""
    s = _silu64(gate.astype(np.int64), frac_gate, frac_gate)
    return _out32(_rshift_scalar(s * up.astype(np.int64), frac_gate + frac_up - frac_out))


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """golden sfu.add: saturating int32 add."""
    return _out32(a.astype(np.int64) + b)


def mul(a: np.ndarray, b: np.ndarray, frac_a: int, frac_b: int, frac_out: int) -> np.ndarray:
    """golden sfu.mul: round_shift(a * b, frac_a + frac_b - frac_out), saturated."""
    return _out32(_rshift_scalar(a.astype(np.int64) * b, frac_a + frac_b - frac_out))


def rope_half(x: np.ndarray, positions: np.ndarray, frac: int, theta: float, head_dim: int,
              scaling=None) -> np.ndarray:
    """golden sfu.rope, style "half", of int32 rows x [R, head_dim] at int positions [R]."""
    scaling = sfu.check_rope_scaling(scaling)
    table_frac = sfu.ROPE_TABLE_FRAC
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 1):
        raise FixedPointValueError(f"theta={theta!r} must be a finite number > 1")
    if positions.size and int(positions.min()) < 0:
        raise FixedPointValueError("positions must be >= 0")
    n = int(positions.max()) + 1 if positions.size else 1
    cos_t, sin_t = sfu._rope_tables_np(sfu._table_len(n), head_dim, float(theta), table_frac, scaling)
    h = head_dim // 2
    rnd = 1 << (table_frac - 1)
    v = x.astype(np.int64)
    c, sn = cos_t[positions], sin_t[positions]
    a, b = v[:, :h], v[:, h:]
    out = np.empty(x.shape, dtype=np.int32)
    out[:, :h] = _out32((a * c - b * sn + rnd) >> table_frac)
    out[:, h:] = _out32((b * c + a * sn + rnd) >> table_frac)
    return out
