"""The fixed-point contract's torch-free part: formats, multiplier ranges, the error classes, and the
scalar helpers (fractional-bit checks, ``quantize_multiplier``) that the hardware (hw/) needs at
elaboration time. golden/fixed.py re-exports all of it next to its tensor operations.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "RESIDUAL_FRAC", "NORM_OUT_FRAC", "SCORE_FRAC", "PROB_FRAC", "ACT_FRAC",
    "ROPE_TABLE_FRAC", "GAMMA_FRAC", "INT32_MIN", "INT32_MAX", "MAX_FRAC_BITS",
    "MULTIPLIER_BITS", "MIN_SHIFT", "MAX_SHIFT", "EXACT_INPUT_BOUND",
    "FixedPointTypeError", "FixedPointValueError", "check_frac_bits", "quantize_multiplier", "multiplier_value",
]

RESIDUAL_FRAC = 16
NORM_OUT_FRAC = 16
SCORE_FRAC = 16
PROB_FRAC = 16
ACT_FRAC = 16
ROPE_TABLE_FRAC = 16
GAMMA_FRAC = 16

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
#: Largest number of fractional bits accepted for an int32 tensor.
MAX_FRAC_BITS = 30
#: quantize_multiplier mantissas lie in [2**30, 2**31) (or are 0): 31 bits, unsigned.
MULTIPLIER_BITS = 31
#: Shift range of quantize_multiplier / apply_multiplier (negative = left shift).
MIN_SHIFT = -31
MAX_SHIFT = 62
#: apply_multiplier and round_shift are exact for |x| < EXACT_INPUT_BOUND.
EXACT_INPUT_BOUND = 2**62


class FixedPointTypeError(TypeError):
    """An argument has the wrong type or dtype (e.g. a float tensor where integers are needed)."""


class FixedPointValueError(ValueError):
    """An argument has an invalid value (frac bits out of range, NaN, negative, shapes...)."""


def check_frac_bits(frac: int, name: str = "frac_bits", lo: int = 0,
                    hi: int = MAX_FRAC_BITS) -> int:
    """Validate a fractional-bit count (a Python int in [lo, hi])."""
    if isinstance(frac, bool) or not isinstance(frac, (int, np.integer)):
        raise FixedPointTypeError(f"{name} must be an int, got {type(frac).__name__}")
    frac = int(frac)
    if not lo <= frac <= hi:
        raise FixedPointValueError(f"{name}={frac} is out of range [{lo}, {hi}]")
    return frac


def quantize_multiplier(real: float, allow_negative: bool = False) -> tuple[int, int]:
    """Represent a real factor as ``multiplier * 2**-shift`` with a 31-bit mantissa.

    Exact integer spec: write ``real = f * 2**e`` with ``f`` in [0.5, 1) (``math.frexp``, exact);
    ``multiplier = floor(f * 2**31 + 1/2)`` (computed exactly from the 53-bit mantissa); if it
    reaches ``2**31`` it becomes ``2**30`` and ``e`` grows by one; ``shift = 31 - e``.
    So ``multiplier`` lies in ``[2**30, 2**31)`` (relative error <= 2**-31) and ``shift`` in
    ``[MIN_SHIFT, MAX_SHIFT] = [-31, 62]``.

    * ``real == 0`` gives ``(0, 0)``.
    * tiny values (``shift`` would exceed 62) keep ``shift = 62`` with a smaller mantissa; if that
      mantissa rounds to 0 (``real < 2**-63``) a ``FixedPointValueError`` is raised.
    * huge values (``real >= 2**62``) raise ``FixedPointValueError``.
    * NaN/inf raise; negative values raise unless ``allow_negative`` (then the multiplier is
      negative, ``|multiplier|`` in ``[2**30, 2**31]``).
    """
    if isinstance(real, bool) or not isinstance(real, (int, float, np.floating, np.integer)):
        raise FixedPointTypeError(f"real must be a number, got {type(real).__name__}")
    real = float(real)
    if math.isnan(real) or math.isinf(real):
        raise FixedPointValueError(f"quantize_multiplier: real={real} is not finite")
    if real < 0:
        if not allow_negative:
            raise FixedPointValueError(
                f"quantize_multiplier: real={real} is negative; pass allow_negative=True if a "
                f"signed multiplier is intended")
        m, s = quantize_multiplier(-real)
        return -m, s
    if real == 0.0:
        return 0, 0
    f, e = math.frexp(real)              # real = f * 2**e, 0.5 <= f < 1 (exact)
    mant53 = int(f * (1 << 53))          # exact: f has a 53-bit mantissa
    shift = 31 - e
    if shift > MAX_SHIFT:
        # denormal mantissa at the largest shift: multiplier = round(real * 2**62)
        drop = 53 - 31 + (shift - MAX_SHIFT)
        m = (mant53 + (1 << (drop - 1))) >> drop if drop < 120 else 0
        if m == 0:
            raise FixedPointValueError(
                f"quantize_multiplier: real={real!r} is below 2**-63 and would round to 0; "
                f"use 0 explicitly if that is intended")
        return m, MAX_SHIFT
    m = (mant53 + (1 << 21)) >> 22
    if m == 1 << 31:
        m, shift = 1 << 30, shift - 1
    if shift < MIN_SHIFT:
        raise FixedPointValueError(
            f"quantize_multiplier: real={real!r} is too large (>= 2**62); rescale the tensors")
    return m, shift


def multiplier_value(multiplier: int, shift: int) -> float:
    """The real value ``multiplier * 2**-shift`` (float64) of a quantized multiplier."""
    return math.ldexp(float(multiplier), -int(shift))
