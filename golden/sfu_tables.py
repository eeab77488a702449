"""The SFU's torch-free integer specification pieces: the constants of every op's arithmetic and the
ROM contents (exp, sigmoid, RoPE cos/sin), computed in exact decimal or float64 arithmetic.

golden/sfu.py (the torch operations) re-exports all of it; the hardware (hw/sfu_*.py) builds its
ROMs and widths from this module so that hw/ needs no torch.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal, localcontext

import numpy as np

from .fixed_scalar import ROPE_TABLE_FRAC, FixedPointValueError, check_frac_bits, quantize_multiplier

__all__ = [
    "EXP_INDEX_BITS", "EXP_INTERP_BITS", "EXP_FRAC", "EXP_VALUE_BITS", "EXP_OUT_EXTRA_BITS",
    "SOFTMAX_MAX_LEN",
    "SIG_RANGE", "SIG_STEP_BITS", "SIG_INTERP_BITS", "SIG_FRAC", "SIG_VALUE_BITS",
    "NORM_FRAC", "NORM_MANT_BITS", "NORM_MAX_DIM", "RSQRT_NUM_BITS",
    "exp_table", "sigmoid_table", "silu_table", "rope_tables", "llama3_inv_freq", "check_rope_scaling",
]

# ----------------------------------------------------------------------------- constants

#: exp: t = d * log2(e) with EXP_FRAC fractional bits; the top EXP_INDEX_BITS of its fraction
#: index the 2**(-j/256) table, the low EXP_INTERP_BITS interpolate linearly.
EXP_INDEX_BITS = 8
EXP_INTERP_BITS = 12
EXP_FRAC = EXP_INDEX_BITS + EXP_INTERP_BITS
#: table entries are round(2**EXP_VALUE_BITS * 2**(-j/256)), j = 0..256 (24-bit unsigned)
EXP_VALUE_BITS = 23
#: exp2_neg output scale: 2**(EXP_VALUE_BITS + EXP_OUT_EXTRA_BITS) = 2**31 for exp(0)
EXP_OUT_EXTRA_BITS = 8
#: differences beyond 40 (real units) give 2**31 * exp(-40) < 1e-8, i.e. e = 0 exactly as
#: without the clamp (e is already 0 beyond 22.2); clamping keeps t < 2**26 and k <= 57.
_EXP_MAX_DIFF = 40
#: log2(e) as a multiplier (mantissa, shift): softmax's d * log2(e) (golden/sfu.py and hw/sfu_softmax.py)
_LOG2E_M, _LOG2E_S = quantize_multiplier(1.0 / math.log(2.0))
#: masked scores are replaced by this (below any int32 score) before the row maximum
_MASKED = -(1 << 40)
#: longest softmax row: Z = sum(e) <= 2**31 * 2**20 stays far below 2**62
SOFTMAX_MAX_LEN = 1 << 20

#: sigmoid: table over u = |x| in [0, SIG_RANGE) with 2**SIG_STEP_BITS entries per unit,
#: linear interpolation on SIG_INTERP_BITS further bits; |x| >= SIG_RANGE saturates to 0 / 1.
SIG_RANGE = 16
SIG_STEP_BITS = 6
SIG_INTERP_BITS = 12
SIG_FRAC = SIG_STEP_BITS + SIG_INTERP_BITS
#: entries are round(2**SIG_VALUE_BITS * sigmoid(j / 64)), j = 0..1024
SIG_VALUE_BITS = 24

#: Normalization: rows are aligned to NORM_MANT_BITS-bit mantissas for the sum of squares;
#: the normalized value x/rms carries NORM_FRAC fractional bits before the gamma multiply.
NORM_MANT_BITS = 23
NORM_FRAC = 24
NORM_MAX_DIM = 1 << 14
#: rsqrt numerator: R = isqrt(2**RSQRT_NUM_BITS // T') with T' in [2**22, 2**24].
RSQRT_NUM_BITS = 62
_RSQRT_T_BITS = 23          # T' is normalized to bit length 23 or 24
_G_SHIFT = 24               # G = round_shift(R * sqrt_d_mult, 24)

# ----------------------------------------------------------------------------- tables


def _round_half_up_dec(v: Decimal) -> int:
    return int((v + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))


@functools.lru_cache(maxsize=None)
def exp_table() -> tuple[int, ...]:
    """ROM of the exponential: ``T[j] = round_half_up(2**23 * 2**(-j/256))`` for j = 0..256.

    257 entries, values in [2**22, 2**23] (24-bit unsigned). Computed with 40-digit decimal
    arithmetic, so the contents do not depend on the platform's libm.
    """
    n = 1 << EXP_INDEX_BITS
    with localcontext() as ctx:                  # 40 digits, without touching the global context
        ctx.prec = 40
        scale = Decimal(1 << EXP_VALUE_BITS)
        return tuple(_round_half_up_dec(scale * (Decimal(2) ** (Decimal(-j) / Decimal(n))))
                     for j in range(n + 1))


@functools.lru_cache(maxsize=None)
def sigmoid_table() -> tuple[int, ...]:
    """ROM of the sigmoid: ``T[j] = round_half_up(2**24 * sigmoid(j / 64))`` for j = 0..1024.

    1025 entries (u = 0 .. 16 in steps of 1/64), values in [2**23, 2**24) (24-bit unsigned).
    Decimal arithmetic (40 digits): platform independent.
    """
    n = SIG_RANGE << SIG_STEP_BITS
    with localcontext() as ctx:
        ctx.prec = 40
        scale = Decimal(1 << SIG_VALUE_BITS)
        step = Decimal(1 << SIG_STEP_BITS)
        return tuple(_round_half_up_dec(scale / (1 + (-(Decimal(j) / step)).exp()))
                     for j in range(n + 1))


def silu_table() -> tuple[int, ...]:
    """The table SiLU uses: it is the sigmoid table (silu(x) = x * sigmoid(x)); see silu()."""
    return sigmoid_table()


def llama3_inv_freq(inv_freq: np.ndarray, scaling) -> np.ndarray:
    """LLaMA-3 RoPE frequency rescaling (``rope_type="llama3"``) of float64 ``inv_freq``.

    ``scaling = (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)``:
    wavelengths above ``orig / low`` are divided by ``factor``, those below ``orig / high`` kept,
    and those between interpolated with ``s = (orig / wavelength - low) / (high - low)``:
    ``(1 - s) * f / factor + s * f``. ``None`` returns ``inv_freq`` unchanged.
    """
    if scaling is None:
        return inv_freq
    factor, low, high, orig = (float(v) for v in scaling)
    wavelen = 2.0 * math.pi / inv_freq
    out = np.where(wavelen > orig / low, inv_freq / factor, inv_freq)
    smooth = (orig / wavelen - low) / (high - low)
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return np.where(medium, (1.0 - smooth) * inv_freq / factor + smooth * inv_freq, out)


def check_rope_scaling(scaling):
    """``None`` or a valid LLaMA-3 ``(factor, low_freq_factor, high_freq_factor, original_max_pos)``."""
    if scaling is None:
        return None
    try:
        factor, low, high, orig = (float(v) for v in scaling)
    except (TypeError, ValueError):
        raise FixedPointValueError(f"rope scaling {scaling!r} must be (factor, low_freq_factor, high_freq_factor, "
                                   "original_max_position_embeddings)") from None
    if not (factor >= 1 and 0 < low < high and orig > 0 and all(map(math.isfinite, (factor, low, high, orig)))):
        raise FixedPointValueError(f"rope scaling {scaling!r} needs factor >= 1, 0 < low_freq_factor < "
                                   "high_freq_factor and original_max_position_embeddings > 0")
    return (factor, low, high, orig)


@functools.lru_cache(maxsize=64)
def _rope_tables_np(max_pos: int, head_dim: int, theta: float, frac: int, scaling=None):
    half = head_dim // 2
    i = np.arange(half, dtype=np.float64)
    inv_freq = llama3_inv_freq(float(theta) ** (-(2.0 * i) / head_dim), scaling)
    ang = np.arange(max_pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    scale = float(1 << frac)
    cos = np.floor(np.cos(ang) * scale + 0.5).astype(np.int64)
    sin = np.floor(np.sin(ang) * scale + 0.5).astype(np.int64)
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


def rope_tables(max_pos: int, head_dim: int, theta: float,
                frac: int = ROPE_TABLE_FRAC, scaling=None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin ROMs of RoPE: ``cos[p, i] = round_half_up(2**frac * cos(p * theta**(-2i/d)))``.

    ``scaling``: LLaMA-3 frequency rescaling applied to ``theta**(-2i/d)`` (:func:`llama3_inv_freq`).

    Returns two read-only int64 numpy arrays of shape [max_pos, head_dim // 2] (angles in
    float64; |entry| <= 2**frac, i.e. frac + 2 bits signed). The same [p, i] entry serves the
    pair (i, i + d/2) in "half" style and (2i, 2i+1) in "interleaved" style.
    """
    if isinstance(max_pos, bool) or not isinstance(max_pos, int) or max_pos < 1:
        raise FixedPointValueError(f"max_pos={max_pos!r} must be a positive int")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 \
            or head_dim % 2:
        raise FixedPointValueError(f"head_dim={head_dim!r} must be a positive even int")
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 1):
        raise FixedPointValueError(f"theta={theta!r} must be a finite number > 1")
    frac = check_frac_bits(frac, "frac", 1, 30)
    return _rope_tables_np(int(max_pos), int(head_dim), float(theta), frac, check_rope_scaling(scaling))
