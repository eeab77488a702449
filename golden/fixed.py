"""Fixed-point conventions and exact integer rounding helpers of olivine's integer contract.

Every integer computation in golden/ (and therefore in the hardware, which must reproduce golden
bit-for-bit) uses the helpers of this module, so there is exactly one rounding rule, one
saturation rule and one requantization rule in the project.

Conventions
-----------
* A fixed-point value is an integer ``q`` with a stated number of fractional bits ``F``:
  ``value = q / 2**F``. Activations passed between operations are ``torch.int32`` tensors;
  arithmetic is done in ``torch.int64`` internally and saturated (never wrapped) back to int32.
* Rounding rule of the project (``round_shift``): arithmetic right shift with round-half-up,
  ``round_shift(x, s) = floor((x + 2**(s-1)) / 2**s)`` for ``s > 0``; ``s == 0`` is the identity;
  ``s < 0`` is an exact left shift. Half-up (towards +inf) is what an adder plus a plain
  arithmetic shift gives in hardware: one carry-in constant, no sign logic.
* Saturation: ``saturate(x, bits)`` clamps to the signed range ``[-2**(bits-1), 2**(bits-1)-1]``.
* Requantization by a real factor uses a 31-bit mantissa multiplier and a shift
  (``quantize_multiplier`` / ``apply_multiplier``), exact for every int64 input with
  ``|x| < 2**62`` (see ``apply_multiplier`` for the bound and the split rule).

Default fractional bits per tensor kind (int32 storage)
-------------------------------------------------------
================== ===== ============================================================
constant           F     why
================== ===== ============================================================
RESIDUAL_FRAC      16    residual stream; range +-32768 covers SmolLM2's ~24,900 sink
NORM_OUT_FRAC      16    RMSNorm/LayerNorm output (x/rms*gamma, |.| << 2**15)
SCORE_FRAC         16    attention scores after the 1/sqrt(d_head) scale
PROB_FRAC          16    softmax output, 1.0 == 65536 (fits 17 bits unsigned)
ACT_FRAC           16    FFN intermediates (gate, up, silu, swiglu)
ROPE_TABLE_FRAC    16    cos/sin table entries (18-bit signed: one DSP48E2 B port)
GAMMA_FRAC         16    norm weights gamma/beta (int32)
================== ===== ============================================================

``round_shift``, ``saturate``, ``quantize_multiplier`` and ``apply_multiplier`` / ``reciprocal`` /
``isqrt`` on Python ints work on ``torch`` integer tensors, ``numpy`` integer arrays (round_shift,
saturate) and Python ``int`` alike, so hardware generators can use the rules with plain ints.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

__all__ = [
    "RESIDUAL_FRAC", "NORM_OUT_FRAC", "SCORE_FRAC", "PROB_FRAC", "ACT_FRAC",
    "ROPE_TABLE_FRAC", "GAMMA_FRAC", "INT32_MIN", "INT32_MAX", "MAX_FRAC_BITS",
    "MULTIPLIER_BITS", "MIN_SHIFT", "MAX_SHIFT", "EXACT_INPUT_BOUND",
    "FixedPointTypeError", "FixedPointValueError",
    "round_shift", "saturate", "saturate_int32", "to_fixed", "from_fixed",
    "quantize_multiplier", "multiplier_value", "apply_multiplier",
    "reciprocal", "isqrt", "check_int_tensor", "check_frac_bits", "bit_length",
]

from .fixed_scalar import (ACT_FRAC, EXACT_INPUT_BOUND, GAMMA_FRAC, INT32_MAX, INT32_MIN, MAX_FRAC_BITS,
                           MAX_SHIFT, MIN_SHIFT, MULTIPLIER_BITS, NORM_OUT_FRAC, PROB_FRAC, RESIDUAL_FRAC,
                           ROPE_TABLE_FRAC, SCORE_FRAC, FixedPointTypeError, FixedPointValueError,
                           check_frac_bits, multiplier_value, quantize_multiplier)

IntLike = Union[int, np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------- validation


def check_int_tensor(x, name: str = "x") -> torch.Tensor:
    """Return ``x`` as an int64 torch tensor; reject float/bool/complex inputs clearly."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise FixedPointTypeError(
                f"{name} must be an integer tensor (torch.int32/int64 fixed-point codes), got "
                f"{x.dtype}; convert real values first with to_fixed(x, frac_bits)")
        return x.to(torch.int64)
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise FixedPointTypeError(
                f"{name} must be an integer array, got dtype {x.dtype}; use to_fixed first")
        return torch.from_numpy(x.astype(np.int64))
    raise FixedPointTypeError(
        f"{name} must be a torch integer tensor, got {type(x).__name__}")




def _kind(x):
    if isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, np.ndarray) or isinstance(x, np.integer):
        return "numpy"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return "int"
    raise FixedPointTypeError(f"expected an integer tensor, array or int, got {type(x).__name__}")


def _as_int64(x):
    k = _kind(x)
    if k == "torch":
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise FixedPointTypeError(f"expected an integer tensor, got {x.dtype}; use to_fixed")
        return x.to(torch.int64), k
    if k == "numpy":
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            raise FixedPointTypeError(f"expected an integer array, got {x.dtype}; use to_fixed")
        return x.astype(np.int64), k
    return int(x), k


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Vectorized ``int.bit_length`` of a non-negative int64 tensor (0 -> 0); integer-only."""
    x = check_int_tensor(x, "x")
    if bool((x < 0).any()):
        raise FixedPointValueError("bit_length expects non-negative values")
    n = torch.zeros_like(x)
    v = x.clone()
    for step in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << step)
        n = n + big.to(torch.int64) * step
        v = torch.where(big, v >> step, v)
    return n + (v > 0).to(torch.int64)


# --------------------------------------------------------------------------- rounding


def round_shift(x: IntLike, s) -> IntLike:
    """Arithmetic shift right by ``s`` with round-half-up; negative ``s`` shifts left (exact).

    ``round_shift(x, s) = floor((x + 2**(s-1)) / 2**s)`` for ``s > 0``, ``x`` for ``s == 0`` and
    ``x * 2**(-s)`` for ``s < 0``. Exact for ``|x| < 2**62`` and any ``s >= 0`` (shifts above 63
    give the same result as 63, i.e. 0 for such ``x``). A left shift whose result would not fit in
    ``2**62`` raises ``OverflowError`` (never a silent wrap).

    ``x`` may be a torch tensor, numpy array or Python int; tensors come back as int64.
    ``s`` may be an int or (for tensors) an integer tensor broadcastable with ``x``.
    """
    x, kind = _as_int64(x)
    if isinstance(s, (torch.Tensor, np.ndarray)):
        if kind == "int":
            raise FixedPointTypeError("a tensor shift needs a tensor x")
        return _round_shift_tensor_shift(x, s, kind)
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
        raise FixedPointTypeError(f"shift must be an int, got {type(s).__name__}")
    s = int(s)
    if s == 0:
        return x
    if s > 0:
        s = min(s, 63)
        if kind == "int":
            return (x + (1 << (s - 1))) >> s
        return (x + (1 << (s - 1))) >> s
    left = -s
    if kind == "int":
        return x << left
    bound = _max_abs(x, kind)
    if left >= 62 or bound >= (1 << (62 - left)):
        raise OverflowError(
            f"round_shift: left shift by {left} of values up to {bound} exceeds 2**62")
    return x << left


def _max_abs(x, kind) -> int:
    if kind == "torch":
        return int(x.abs().max()) if x.numel() else 0
    if kind == "numpy":
        return int(np.abs(x).max()) if x.size else 0
    return abs(int(x))


def _round_shift_tensor_shift(x, s, kind):
    if kind == "torch":
        s = check_int_tensor(torch.as_tensor(s), "shift")
        right = s.clamp(min=0, max=63)
        left = (-s).clamp(min=0)
        if bool((left >= 62).any()):
            raise OverflowError("round_shift: left shift of 62 or more")
        rnd = torch.where(right > 0, torch.ones_like(right) << (right - 1).clamp(min=0),
                          torch.zeros_like(right))
        shifted_right = (x + rnd) >> right
        if bool((left > 0).any()):
            lim = torch.ones_like(left) << (62 - left)
            if bool(((x.abs() >= lim) & (left > 0)).any()):
                raise OverflowError("round_shift: left shift result exceeds 2**62")
        return torch.where(s >= 0, shifted_right, x << left)
    s = np.asarray(s).astype(np.int64)
    right = np.clip(s, 0, 63)
    left = np.clip(-s, 0, None)
    if (left >= 62).any():
        raise OverflowError("round_shift: left shift of 62 or more")
    rnd = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    if ((np.abs(x) >= np.left_shift(np.int64(1), 62 - left)) & (left > 0)).any():
        raise OverflowError("round_shift: left shift result exceeds 2**62")
    return np.where(s >= 0, (x + rnd) >> right, x << left)


def saturate(x: IntLike, bits: int = 32) -> IntLike:
    """Clamp to the signed ``bits``-bit range ``[-2**(bits-1), 2**(bits-1) - 1]`` (no wrap).

    Tensors come back as int64 (use ``saturate_int32`` for int32 storage), arrays as int64
    arrays, ints as ints.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 64:
        raise FixedPointValueError(f"bits={bits!r} must be an int in [2, 64]")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x, kind = _as_int64(x)
    if kind == "torch":
        return x.clamp(min=lo, max=hi)
    if kind == "numpy":
        return np.clip(x, lo, hi)
    return max(lo, min(hi, x))


def saturate_int32(x) -> torch.Tensor:
    """Saturate an integer tensor to int32 and return it as ``torch.int32`` (activation storage)."""
    return saturate(check_int_tensor(x), 32).to(torch.int32)


# --------------------------------------------------------------------------- float <-> fixed


def to_fixed(x_float, frac_bits: int, bits: int = 32) -> torch.Tensor:
    """Quantize real values to fixed point: ``saturate(floor(x * 2**F + 1/2), bits)``.

    Round-half-up like ``round_shift``; computed in float64 (exact scaling by a power of two).
    NaN raises; +-inf and out-of-range values saturate. Returns ``torch.int32`` when
    ``bits <= 32``, else ``torch.int64``.
    """
    frac_bits = check_frac_bits(frac_bits, "frac_bits", -32, 62)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 64:
        raise FixedPointValueError(f"bits={bits!r} must be an int in [2, 64]")
    t = torch.as_tensor(x_float)
    if not (t.dtype.is_floating_point or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                     torch.int64, torch.uint8)):
        raise FixedPointTypeError(f"to_fixed expects real values, got {t.dtype}")
    t = t.to(torch.float64)
    if bool(torch.isnan(t).any()):
        raise FixedPointValueError("to_fixed: input contains NaN")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    y = torch.floor(t * (2.0 ** frac_bits) + 0.5)
    # float64 cannot represent 2**63-1; clamp in float first (values there are saturated anyway)
    y = y.clamp(min=float(lo), max=float(hi) if bits < 54 else 2.0**62)
    q = y.to(torch.int64).clamp(min=lo, max=hi)
    return q.to(torch.int32) if bits <= 32 else q


def from_fixed(q, frac_bits: int) -> torch.Tensor:
    """Real value of fixed-point codes: ``q / 2**F`` as float64 (exact for |q| < 2**53)."""
    frac_bits = check_frac_bits(frac_bits, "frac_bits", -32, 62)
    q = check_int_tensor(q, "q")
    return q.to(torch.float64) * (2.0 ** -frac_bits)


# --------------------------------------------------------------------------- multipliers


def apply_multiplier(x, multiplier, shift) -> torch.Tensor:
    """Exact ``round_shift(x * multiplier, shift)`` for int64 ``x`` with ``|x| < 2**62``.

    ``multiplier`` (``|m| <= 2**31``) and ``shift`` (in ``[-31, 62]``) are ints or integer tensors
    broadcastable with ``x`` (per-channel factors). The product can need up to 93 bits, so it is
    never formed directly. Split rule, with ``k = clamp(shift, 0, 31)``:

        x = hi * 2**k + lo,   hi = x >> k,   0 <= lo < 2**k
        shift >= 0:  result = (hi*m + ((lo*m + r) >> k)) >> (shift - k),  r = 2**(shift-1) or 0
        shift <  0:  result = (x*m) << -shift

    which is the exact rounded quotient because floor((a*2**k + b) / 2**s) =
    floor((a + floor(b / 2**k)) / 2**(s-k)) for s >= k. Every partial stays below 2**63 as long
    as the result magnitude is below 2**62: if ``max|x| * |m| * 2**-shift >= 2**62`` an
    ``OverflowError`` is raised (never a silent wrap; callers saturate the in-range result to
    their storage width). Returns an int64 tensor (a Python int for Python-int inputs).
    """
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool) \
            and not isinstance(multiplier, torch.Tensor) and not isinstance(shift, torch.Tensor):
        m, s = int(multiplier), int(shift)
        _check_mult_scalar(m, s)
        res = round_shift(int(x) * m, s)
        if abs(res) >= EXACT_INPUT_BOUND or abs(int(x)) >= EXACT_INPUT_BOUND:
            raise OverflowError("apply_multiplier: |x| or the result reaches 2**62")
        return res
    x = check_int_tensor(x, "x")
    xmax = int(x.abs().max()) if x.numel() else 0
    if xmax >= EXACT_INPUT_BOUND:
        raise OverflowError("apply_multiplier: |x| must be below 2**62")
    if not isinstance(multiplier, torch.Tensor) and not isinstance(shift, torch.Tensor):
        m, s = int(multiplier), int(shift)
        _check_mult_scalar(m, s)
        if s >= 0 and xmax * abs(m) < EXACT_INPUT_BOUND:
            # fast path: the product itself fits (|x*m| + 2**(s-1) < 2**63)
            return round_shift(x * m, s)
        if s >= 0:
            if (xmax * abs(m)) >> s >= EXACT_INPUT_BOUND:
                raise OverflowError(
                    f"apply_multiplier: max|x|={xmax} * {m} * 2**-{s} does not fit 2**62")
            k = min(s, 31)
            hi = x >> k
            lo = x - (hi << k)
            rnd = (1 << (s - 1)) if s > 0 else 0
            return (hi * m + ((lo * m + rnd) >> k)) >> (s - k)
        if (xmax * abs(m)) << -s >= EXACT_INPUT_BOUND:
            raise OverflowError(
                f"apply_multiplier: max|x|={xmax} * {m} * 2**{-s} does not fit 2**62")
        return (x * m) << -s
    m = check_int_tensor(torch.as_tensor(multiplier), "multiplier")
    s = check_int_tensor(torch.as_tensor(shift), "shift")
    if m.numel() and int(m.abs().max()) > (1 << 31):
        raise FixedPointValueError("apply_multiplier: |multiplier| must be <= 2**31")
    if s.numel() and (int(s.min()) < MIN_SHIFT or int(s.max()) > MAX_SHIFT):
        raise FixedPointValueError(
            f"apply_multiplier: shift must lie in [{MIN_SHIFT}, {MAX_SHIFT}]")
    # overflow guard: |x|*|m| < 2**(62+s) elementwise, checked in float64 with margin
    est = (x.abs().to(torch.float64) * m.abs().to(torch.float64)
           * torch.pow(2.0, -s.to(torch.float64)))
    if est.numel() and float(est.max()) >= 2.0**62 * (1 - 2.0**-40):
        raise OverflowError("apply_multiplier: a result does not fit 2**62")
    k = s.clamp(min=0, max=31)
    hi = x >> k
    lo = x - (hi << k)
    pos = s.clamp(min=0)
    rnd = torch.where(pos > 0, torch.ones_like(pos) << (pos - 1).clamp(min=0),
                      torch.zeros_like(pos))
    right = (hi * m + ((lo * m + rnd) >> k)) >> (pos - k)
    if bool((s < 0).any()):
        left = (x * m) << (-s).clamp(min=0)
        return torch.where(s < 0, left, right)
    return right


def _check_mult_scalar(m: int, s: int) -> None:
    if abs(m) > (1 << 31):
        raise FixedPointValueError(f"apply_multiplier: |multiplier|={abs(m)} exceeds 2**31")
    if not MIN_SHIFT <= s <= MAX_SHIFT:
        raise FixedPointValueError(
            f"apply_multiplier: shift={s} outside [{MIN_SHIFT}, {MAX_SHIFT}]")


# --------------------------------------------------------------------------- divide / sqrt


def reciprocal(d, frac_bits: int) -> torch.Tensor:
    """Exact ``floor(2**frac_bits / d)`` for positive integer ``d`` (a hardware divider).

    ``frac_bits`` in [0, 62]. ``d <= 0`` raises ``FixedPointValueError``.
    """
    frac_bits = check_frac_bits(frac_bits, "frac_bits", 0, 62)
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        if d <= 0:
            raise FixedPointValueError(f"reciprocal: divisor {d} must be positive")
        return (1 << frac_bits) // int(d)
    d = check_int_tensor(d, "d")
    if d.numel() and bool((d <= 0).any()):
        raise FixedPointValueError("reciprocal: every divisor must be positive")
    num = torch.full_like(d, 1 << frac_bits)
    return torch.div(num, d, rounding_mode="floor")


def isqrt(n) -> torch.Tensor:
    """Exact ``floor(sqrt(n))`` for integers ``0 <= n < 2**62`` (vectorized).

    A float64 estimate is corrected with exact integer compares, so the result is the true floor
    square root (what any hardware isqrt, e.g. digit-by-digit, produces).
    """
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        if n < 0:
            raise FixedPointValueError("isqrt: argument must be non-negative")
        return math.isqrt(int(n))
    n = check_int_tensor(n, "n")
    if n.numel() == 0:
        return n.clone()
    if bool((n < 0).any()) or int(n.max()) >= EXACT_INPUT_BOUND:
        raise FixedPointValueError("isqrt: arguments must lie in [0, 2**62)")
    r = torch.sqrt(n.to(torch.float64)).floor().to(torch.int64)
    for _ in range(2):
        r = r - (r * r > n).to(torch.int64)
    for _ in range(2):
        r = r + ((r + 1) * (r + 1) <= n).to(torch.int64)
    return r
