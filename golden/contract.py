"""The integer contract of olivine's linear layers (docs/contract.md is the prose form).

Everything the RTL and the functional simulator must reproduce bit for bit lives here: how an
int32 fixed-point activation becomes INT8 (or OVP4), how weights sit on their integer grids, how
the matmul accumulates (INT32, two's complement wrap), and how the accumulator is requantized with
per-channel fixed-point multipliers and the per-token activation scale (mantissa and exponent).
Float numbers appear only at compile time (choosing grids and folding scales into integer
multipliers) and in the float counterparts (``fake_quant_*``, ``QLinear.forward_float``), which
exist only to measure accuracy loss.

Conventions
- Fixed-point activation: an int32 tensor ``x`` with ``frac_bits`` fractional bits, i.e. the real
  value is ``x * 2**-frac_bits`` (the format of golden/fixed.py).
- Integer tensors are returned with the dtype of their width: int8 codes as torch.int8, grid
  values (at most 192 in magnitude) as torch.int16, accumulators and fixed-point as torch.int32,
  per-row exponents as torch.int8, per-row mantissas as torch.int16. Arithmetic inside uses int64 (or float64 where every partial
  sum is provably below 2**53, which is exact) and then wraps/saturates as stated.
- Rounding: the project rule, round half up (toward +inf on ties): ``round_shift(x, s) =
  (x + 2**(s-1)) >> s`` with an arithmetic shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import fixed as _fixed
from .contract_constants import INT8_QMAX, MULT_BITS, OVP_ACT_GUARD_BITS, RECIP_BITS

__all__ = [
    "ContractError",
    "ContractTypeError",
    "INT8_QMAX",
    "INT32_MIN",
    "INT32_MAX",
    "MULT_BITS",
    "ACT_KINDS",
    "WEIGHT_KINDS",
    "round_shift",
    "round_half_up",
    "saturate",
    "wrap_int32",
    "quantize_multiplier",
    "Multiplier",
    "fold_multipliers",
    "apply_multiplier",
    "apply_victims",
    "QAct",
    "dynamic_int8_exponent",
    "quantize_act_dynamic_int8",
    "quantize_act_pow2_int8",
    "RECIP_BITS",
    "quantize_act_static_int8",
    "quantize_act_ovp4",
    "static_int8_scale",
    "calibrate_ovp_alpha",
    "fake_quant_act_dynamic_int8",
    "fake_quant_act_static_int8",
    "fake_quant_act_ovp4",
    "QWeight",
    "quantize_weight",
    "GROUP_SIZES",
    "GROUP_MULT_BITS",
    "GROUP_MULT_SHIFT",
    "expand_group_mult",
    "grouped_values",
    "int_matmul_grouped",
    "int_matmul",
    "int_matmul_operands",
    "int_matmul_exact_float",
    "grid_to_operands",
    "requantize",
    "requantize_reference",
    "QLinear",
    "compile_linear",
    "padded_weight",
    "to_fixed",
    "from_fixed",
]

# INT8_QMAX, MULT_BITS, RECIP_BITS, OVP_ACT_GUARD_BITS: golden/contract_constants.py (torch-free, for hw/)
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
#: Per-group weight scales (docs/contract.md section 2a): a K group of GROUP_SIZES elements of one
#: row carries an unsigned GROUP_MULT_BITS-bit multiplier m in 1..15; the group's weights are worth
#: m / 2**GROUP_MULT_SHIFT of the row scale (the 2**-3 is folded into the row's requantization multiplier)
GROUP_SIZES = (64, 128)
GROUP_MULT_BITS = 4
GROUP_MULT_SHIFT = 3
_EXACT_F64 = 1 << 53
_EXACT_F32 = 1 << 24

ACT_KINDS = ("int8", "int8-pow2", "int8-static", "ovp4", "fp32")
WEIGHT_KINDS = ("int8", "int4", "ovp4", "fp32")


class ContractError(ValueError):
    """A value the integer contract cannot represent, or an inconsistent request."""


class ContractTypeError(TypeError):
    """A tensor of the wrong dtype/kind given to a contract function."""


def _require_int(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ContractTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ContractTypeError(f"{name} must be an integer tensor, got {x.dtype}; quantize it first")


# ---------------------------------------------------------------------------------------------
# Primitives (identical to golden/fixed.py's rule; restated here so the contract is self-contained
# and tested against fixed.py in tests/test_golden_contract.py)
# ---------------------------------------------------------------------------------------------


def round_shift(x: torch.Tensor, shift) -> torch.Tensor:
    """floor(x / 2**shift + 1/2) on int64, elementwise; ``shift`` is an int or an int tensor.

    shift > 0: (x + 2**(shift-1)) >> shift (arithmetic); shift == 0: x; shift < 0: x << -shift
    (no saturation here: callers saturate). Shifts >= 63 give 0 for |x| < 2**62.
    """
    _require_int(x, "x")
    x = x.to(torch.int64)
    s = torch.as_tensor(shift, dtype=torch.int64)
    right = s.clamp(min=0, max=62)
    # (x + half) may not overflow: callers keep |x| < 2**62.
    half = torch.where(right > 0, torch.ones_like(right) << (right - 1).clamp(min=0), torch.zeros_like(right))
    out_r = (x + half) >> right
    out_r = torch.where(s > 62, torch.zeros_like(out_r), out_r)
    left = (-s).clamp(min=0, max=62)
    out_l = x << left
    return torch.where(s >= 0, out_r, out_l)


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 0.5) for float tensors: the project's rounding rule at compile time."""
    return torch.floor(x + 0.5)


def saturate(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Clamp an integer tensor to [lo, hi] (int64 out)."""
    _require_int(x, "x")
    return x.to(torch.int64).clamp(lo, hi)


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's complement wrap of an int64 tensor to 32 bits (what an INT32 adder does on overflow)."""
    _require_int(x, "x")
    x = x.to(torch.int64)
    return (((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)).to(torch.int32)


# ---------------------------------------------------------------------------------------------
# Fixed-point multipliers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Multiplier:
    """Per-channel fixed-point multipliers: real[c] ~= mult[c] * 2**-shift[c].

    mult: int64 tensor, each in [2**30, 2**31) (an unsigned 31-bit mantissa with its top bit set)
    or 0 for a zero real; shift: int64 tensor (may be negative for reals >= 2).
    """

    mult: torch.Tensor
    shift: torch.Tensor

    def real(self) -> torch.Tensor:
        """The represented real values (float64), for inspection only."""
        return self.mult.to(torch.float64) * torch.pow(2.0, -self.shift.to(torch.float64))


def quantize_multiplier(real) -> Multiplier:
    """Elementwise golden.fixed.quantize_multiplier: real ~= mult * 2**-shift, mult in [2**30, 2**31).

    The rule (fixed.py): real = f * 2**e (frexp), mult = floor(f * 2**31 + 1/2), shift = 31 - e,
    a carry to 2**31 becomes (2**30, shift - 1); 0 gives (0, 0); reals below 2**-31 keep
    shift = 62 with a smaller mantissa. Negative or non-finite reals raise ContractError.
    """
    r = torch.as_tensor(real, dtype=torch.float64)
    flat = r.reshape(-1).tolist()
    ms, ss = [], []
    for v in flat:
        try:
            m, sh = _fixed.quantize_multiplier(v)
        except (ValueError, TypeError) as exc:
            raise ContractError(f"cannot represent scale {v!r} as a fixed-point multiplier: {exc}") from None
        ms.append(m)
        ss.append(sh)
    return Multiplier(torch.tensor(ms, dtype=torch.int64).reshape(r.shape), torch.tensor(ss, dtype=torch.int64).reshape(r.shape))


def fold_multipliers(*reals) -> Multiplier:
    """quantize_multiplier of the float64 product of compile-time scales (broadcast)."""
    prod = torch.ones((), dtype=torch.float64)
    for r in reals:
        prod = prod * torch.as_tensor(r, dtype=torch.float64)
    return quantize_multiplier(prod)


def apply_multiplier(x: torch.Tensor, m: Multiplier, exponent=0, *, lo: int = INT32_MIN, hi: int = INT32_MAX) -> torch.Tensor:
    """saturate(round_shift(x * mult, shift - exponent), lo, hi): the requantization step.

    x: integer, |x| < 2**50 (an INT32 accumulator, possibly times a per-row scale mantissa);
    mult < 2**31. The rounded product is exact (one rounding, half up), computed with
    golden.fixed.apply_multiplier's split rule, so no intermediate needs more than 63 bits.
    ``exponent`` (int or int tensor broadcasting against x, e.g. a per-token exponent [T, 1])
    lowers the shift: the combined scale is real * 2**exponent.
    Saturation shortcuts that do not change the result: with s = shift - exponent, any
    |x| >= 2**(s+2) saturates INT32 (mult >= 2**30), so x is clamped there first; s <= -1 acts like
    s = -1 (any non-zero x saturates). Returns int64 (callers cast to the output dtype).
    """
    _require_int(x, "x")
    x = x.to(torch.int64)
    s = (torch.as_tensor(m.shift, dtype=torch.int64) - torch.as_tensor(exponent, dtype=torch.int64)).clamp(-1, 62)
    lim = torch.ones_like(s) << (s + 2).clamp(max=61)
    x = torch.maximum(torch.minimum(x, lim), -lim)
    y = _fixed.apply_multiplier(x, m.mult, s)
    return y.clamp(lo, hi)


def to_fixed(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Float -> int32 fixed-point: saturate(floor(x * 2**frac_bits + 1/2)) (golden.fixed.to_fixed)."""
    return _fixed.to_fixed(x, frac_bits)


def from_fixed(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """int32 fixed-point -> float32 (for measurement only)."""
    return _fixed.from_fixed(x, frac_bits).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Activation quantization
# ---------------------------------------------------------------------------------------------


@dataclass
class QAct:
    """A quantized activation tensor as the MAC array receives it.

    values:   int tensor [..., K]: INT8 codes (torch.int8) or OVP grid values (torch.int16)
    exponent: torch.int8 [..., 1]: per-row power-of-two exponent e (the row's scale is
              base_scale * 2**e); zero for static and OVP activations
    kind:     "int8" (dynamic per token, mantissa scale), "int8-pow2" (dynamic per token,
              power-of-two scale), "int8-static" or "ovp4"
    base_scale: float compile-time scale of one LSB at e = 0 (and mantissa 1): 2**-frac_bits / 127
              for "int8", 2**-frac_bits for "int8-pow2"
    mantissa: for "int8", the per-row scale mantissa m (1..256): row scale = base * m * 2**e
    normal:   OVP normal type for kind "ovp4"
    """

    values: torch.Tensor
    exponent: torch.Tensor
    kind: str
    base_scale: float
    normal: str | None = None
    mantissa: torch.Tensor | None = None  # int16 [..., 1] per-row scale mantissa (kind "int8")

    def dequantize(self) -> torch.Tensor:
        e = self.exponent.to(torch.float64)
        v = self.values.to(torch.float64) * torch.pow(2.0, e) * self.base_scale
        if self.mantissa is not None:
            v = v * self.mantissa.to(torch.float64)
        return v.to(torch.float32)


def dynamic_int8_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Smallest e >= 0 with round_shift(amax, e) <= 127, elementwise (amax >= 0, int64 in).

    Hardware: e0 = max(0, bitlength(amax) - 7); e = e0 + 1 if round_shift(amax, e0) > 127 else e0
    (the round-up can carry into bit 7 only when amax's top 7 bits are all ones).
    """
    _require_int(amax, "amax")
    a = amax.to(torch.int64)
    if (a < 0).any():
        raise ContractError("amax must be non-negative")
    e0 = (_fixed.bit_length(a) - 7).clamp(min=0)
    e = torch.where(round_shift(a, e0) > INT8_QMAX, e0 + 1, e0)
    return e




def quantize_act_dynamic_int8(x: torch.Tensor, frac_bits: int) -> QAct:
    """Per-token dynamic INT8 with an 9-bit-mantissa scale (the default activation rule).

    For each row r of x (int32 fixed-point, rows along the last dim):
      amax_r = max_k |x[r, k]|                      (int64)
      e_r    = max(0, bitlength(amax_r) - 8)        (0..24)
      m_r    = ceil(amax_r / 2**e_r), at least 1    (1..256: amax rounded UP to 8-9 significant bits)
      R_r    = floor(127 * 2**22 / m_r)             (one 31-by-9-bit division per row)
      q[r,k] = saturate(round_shift(x[r,k] * R_r, 22 + e_r), -127, 127)
    Row scale (real per code) = m_r * 2**e_r / 127 * 2**-frac_bits, i.e. amax/127 up to the
    rounding of amax to its top 8 bits, so the row maximum maps to 126..127. |x * R| < 2**53.
    The hardware needs per row: a max-reduction, a leading-one detector, an increment (ceil), a
    small divider (or a 256-entry reciprocal table indexed by m - 1) and per element one 32x24
    multiply with a rounding shift.
    """
    _require_int(x, "x")
    xi = x.to(torch.int64)
    amax = xi.abs().amax(dim=-1, keepdim=True) if xi.shape[-1] else torch.zeros(xi.shape[:-1] + (1,), dtype=torch.int64)
    e = (_fixed.bit_length(amax) - 8).clamp(min=0)
    m = ((amax + (torch.ones_like(e) << e) - 1) >> e).clamp(min=1)
    r = torch.div(torch.full_like(m, INT8_QMAX << RECIP_BITS), m, rounding_mode="floor")
    shift = RECIP_BITS + e

    def exact(idx):  # the int64 rule on the few elements the float64 path cannot decide
        sub = (xi.expand(q_shape)[idx], r.expand(q_shape)[idx], shift.expand(q_shape)[idx])
        return round_shift(sub[0] * sub[1], sub[2]).clamp(-INT8_QMAX, INT8_QMAX)

    q_shape = xi.shape
    # round_shift(x * R, 22 + e) in float64 (|x| < 2**31, R < 2**29: see _requantize_f64)
    q = _requantize_f64(x, r, shift, (), (), -INT8_QMAX, INT8_QMAX, fallback=exact, clamp_input=False)
    return QAct(q.to(torch.int8), e.to(torch.int8), "int8", 2.0**-frac_bits / INT8_QMAX, mantissa=m.to(torch.int16))


def quantize_act_pow2_int8(x: torch.Tensor, frac_bits: int) -> QAct:
    """Per-token dynamic INT8 with a power-of-two scale (option "int8-pow2": cheapest hardware).

    For each row r of x (int32 fixed-point, ``frac_bits`` fractional bits, rows along the last
    dim): amax_r = max_k |x[r, k]| (int64, so |INT32_MIN| is representable);
    e_r = dynamic_int8_exponent(amax_r) (0..25); q[r, k] = saturate(round_shift(x[r, k], e_r), -127, 127).
    The row's real scale is 2**(e_r - frac_bits). The hardware needs one max-reduction and one
    leading-one detect per row, and a barrel shift per element: no divider, no multiplier.
    """
    _require_int(x, "x")
    xi = x.to(torch.int64)
    amax = xi.abs().amax(dim=-1, keepdim=True) if xi.shape[-1] else torch.zeros(xi.shape[:-1] + (1,), dtype=torch.int64)
    e = dynamic_int8_exponent(amax)
    q = round_shift(xi, e).clamp(-INT8_QMAX, INT8_QMAX)
    return QAct(q.to(torch.int8), e.to(torch.int8), "int8-pow2", 2.0**-frac_bits)


def static_int8_scale(calib: torch.Tensor) -> float:
    """Compile-time per-tensor INT8 scale from float calibration activations: max|x| / 127."""
    amax = float(calib.detach().abs().max()) if calib.numel() else 0.0
    if amax == 0.0 or not math.isfinite(amax):
        raise ContractError("static INT8 calibration saw only zeros or non-finite values; give real calibration tokens")
    return amax / INT8_QMAX


def quantize_act_static_int8(x: torch.Tensor, frac_bits: int, scale: float) -> QAct:
    """Per-tensor static INT8: q = saturate(apply_multiplier(x, M), -127, 127), M = 2**-frac_bits / scale.

    ``scale`` is the compile-time float scale (static_int8_scale); at run time only the folded
    integer multiplier (mult, shift) is used.
    """
    _require_int(x, "x")
    m = quantize_multiplier(2.0**-frac_bits / scale)
    q = apply_multiplier(x, m, lo=-INT8_QMAX, hi=INT8_QMAX)
    return QAct(q.to(torch.int8), torch.zeros(x.shape[:-1] + (1,), dtype=torch.int8), "int8-static", float(scale))




def _ovp_format(normal: str):
    from .ovp_format import get_format

    return get_format(normal)


def quantize_act_ovp4(x: torch.Tensor, frac_bits: int, alpha: float, normal: str = "int4", victim: str = "larger") -> QAct:
    """Per-tensor static OVP4 activation quantization in integers (the W4A4 path).

    scale = alpha / normal_max (compile time). Steps, all integer:
    1. t = apply_multiplier(x, M) with M = 2**(G - frac_bits) / scale, G = OVP_ACT_GUARD_BITS:
       x / scale in units of 2**-G LSB, rounded half up.
    2. nearest point of the union grid (normal U outlier, ascending g_0 < ... < g_n): the index is
       the number of midpoints (g_i + g_{i+1}) * 2**(G-1) that are <= t, so a tie goes to the
       larger point (the OliVe reference's tie rule) and values beyond the grid saturate.
    3. victims: pairs (2k, 2k+1) along the last dim (K must be even). If exactly one is an
       outlier (|v| > normal_max) the other becomes 0. If both are, "larger" keeps the larger
       magnitude (equal magnitudes keep the even element), "even" keeps the even element.
    Returns grid values (torch.int16) with exponent 0 and base_scale = scale.
    """
    _require_int(x, "x")
    if x.shape[-1] % 2:
        raise ContractError(f"OVP pairs need an even last dimension, got {x.shape[-1]}; pad with a zero column")
    if victim not in ("larger", "even"):
        raise ContractError(f"victim rule must be 'larger' or 'even', got {victim!r}")
    if not alpha > 0:
        raise ContractError(f"OVP activation alpha must be > 0, got {alpha}")
    fmt = _ovp_format(normal)
    if fmt.bits != 4:
        raise ContractError(f"quantize_act_ovp4 needs a 4-bit normal type (int4/flint4), got {normal!r}")
    scale = float(alpha) / fmt.normal_max
    g = OVP_ACT_GUARD_BITS
    t = apply_multiplier(x, quantize_multiplier(2.0 ** (g - frac_bits) / scale), lo=-(1 << 40), hi=1 << 40)
    grid = torch.tensor(fmt.union_grid, dtype=torch.int64)
    mids = (grid[:-1] + grid[1:]) << (g - 1)
    idx = torch.bucketize(t, mids, right=True)
    v = grid[idx]
    v = apply_victims(v, fmt.normal_max, victim)
    return QAct(v.to(torch.int16), torch.zeros(x.shape[:-1] + (1,), dtype=torch.int8), "ovp4", scale, normal)


def apply_victims(v: torch.Tensor, normal_max: int, victim: str = "larger") -> torch.Tensor:
    """Zero the victim of every pair that holds an outlier (|v| > normal_max); see quantize_act_ovp4."""
    pairs = v.reshape(*v.shape[:-1], v.shape[-1] // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out_e, out_o = even.abs() > normal_max, odd.abs() > normal_max
    if victim == "larger":
        keep_even = out_e & (~out_o | (even.abs() >= odd.abs()))
    else:
        keep_even = out_e
    keep_odd = out_o & ~keep_even
    new_even = torch.where(keep_odd, torch.zeros_like(even), even)
    new_odd = torch.where(keep_even, torch.zeros_like(odd), odd)
    return torch.stack([new_even, new_odd], dim=-1).reshape(v.shape)


def calibrate_ovp_alpha(calib: torch.Tensor, normal: str = "auto") -> tuple[float, str]:
    """Static per-tensor OVP alpha and normal type from float calibration activations.

    Delegates the search to golden.ovp.quantize(granularity="tensor") (OliVe's MSE search over
    88 candidates and the auto type choice). Returns (alpha, normal).
    """
    from . import ovp

    flat = calib.detach().reshape(-1, calib.shape[-1]).to(torch.float32)
    t = ovp.quantize(flat, bits=4, normal=normal, granularity="tensor")
    normal_used = t.normal
    fmt = _ovp_format(normal_used)
    scale = float(torch.as_tensor(t.scale).reshape(-1)[0])
    return scale * fmt.normal_max, normal_used


# Float counterparts (measurement only) -------------------------------------------------------


def fake_quant_act_dynamic_int8(x: torch.Tensor) -> torch.Tensor:
    """Float per-token INT8 with the ideal float scale amax/127 (what the integer rule approximates)."""
    amax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30)
    s = amax / INT8_QMAX
    return round_half_up(x / s).clamp(-INT8_QMAX, INT8_QMAX) * s


def fake_quant_act_static_int8(x: torch.Tensor, scale: float) -> torch.Tensor:
    return round_half_up(x / scale).clamp(-INT8_QMAX, INT8_QMAX) * scale


def fake_quant_act_ovp4(x: torch.Tensor, alpha: float, normal: str = "int4", victim: str = "larger") -> torch.Tensor:
    """Float OVP4 fake quantization via golden.ovp (same alpha)."""
    from . import ovp

    shape = x.shape
    t = ovp.quantize(x.reshape(-1, shape[-1]).to(torch.float32), bits=4, normal=normal, granularity="tensor", victim=victim, alpha=alpha)
    return t.dequantize().reshape(shape).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


@dataclass
class QWeight:
    """A weight matrix [N, K] (nn.Linear layout) on its integer grid.

    kind:     "int8" (-127..127), "int4" (-7..7), "ovp4" (OVP grid values, |v| <= 192)
    values:   torch.int16 [N, K] grid values (pruned positions are 0)
    scale:    torch.float64 [N] per-output-row scale (compile time only: folded into multipliers)
    exponent, integer: torch.int8 [N, K] decoded MAC operands, values == integer << exponent
              (for int8/int4: exponent 0, integer = values)
    normal:   OVP normal type ("int4"/"flint4") for kind "ovp4"
    codes:    the packed OVP bytes (torch.uint8 [N, K/2]) for "ovp4" (dense) else None
    block_n:  N:16 per 16x16 block ([N/16, K/16] long) when sparse, else None
    sparse:   the golden.sparsity compressed form (SparseWeight/SparseOvpWeight) when sparse
    group, group_mult: per-group scales (dense int4/ovp4 only, docs/contract.md 2a): group size
              (64 or 128 along K) and torch.uint8 [N, ceil(K/group)] multipliers in 1..15; then
              ``scale`` is the scale of one unit of ``values * group_mult``: real[c, k] =
              values[c, k] * group_mult[c, k // group] * scale[c] (None, None: one scale per row)
    """

    kind: str
    values: torch.Tensor
    scale: torch.Tensor
    exponent: torch.Tensor
    integer: torch.Tensor
    normal: str | None = None
    codes: torch.Tensor | None = None
    block_n: torch.Tensor | None = None
    sparse: object | None = field(default=None, repr=False)
    group: int | None = None
    group_mult: torch.Tensor | None = None

    def effective_values(self) -> torch.Tensor:
        """The integer each weight contributes to the accumulator per unit of activation: the
        grid values, times their group's multiplier when the weight has group scales (int16)."""
        if self.group_mult is None:
            return self.values
        return grouped_values(self.values, self.group_mult, self.group)

    def dequantize(self) -> torch.Tensor:
        return (self.effective_values().to(torch.float64) * self.scale[:, None]).to(torch.float32)

    @property
    def out_features(self) -> int:
        return self.values.shape[0]

    @property
    def in_features(self) -> int:
        return self.values.shape[1]


def _check_groups(group_mult: torch.Tensor, group: int, n: int, k: int) -> None:
    if group not in GROUP_SIZES:
        raise ContractError(f"group size {group} is not one of {GROUP_SIZES}")
    ng = -(-k // group)
    if tuple(group_mult.shape) != (n, ng):
        raise ContractError(f"group multipliers have shape {tuple(group_mult.shape)}; a [{n}, {k}] weight with "
                            f"groups of {group} needs [{n}, {ng}]")
    gm = group_mult.to(torch.int64)
    if gm.numel() and (int(gm.min()) < 1 or int(gm.max()) > (1 << GROUP_MULT_BITS) - 1):
        raise ContractError(f"group multipliers must lie in 1..{(1 << GROUP_MULT_BITS) - 1}")


def expand_group_mult(group_mult: torch.Tensor, group: int, k: int) -> torch.Tensor:
    """int64 [N, K]: the multiplier of every element (group_mult [N, ceil(K/group)])."""
    return group_mult.to(torch.int64).repeat_interleave(group, dim=1)[:, :k]


def grouped_values(values: torch.Tensor, group_mult: torch.Tensor, group: int) -> torch.Tensor:
    """values[c, k] * group_mult[c, k // group] (int16: |v| <= 192 * 15 = 2880)."""
    n, k = values.shape
    _check_groups(group_mult, group, n, k)
    return (values.to(torch.int64) * expand_group_mult(group_mult, group, k)).to(torch.int16)


def int_matmul_grouped(a: torch.Tensor, values: torch.Tensor, group_mult: torch.Tensor, group: int) -> torch.Tensor:
    """acc[t, c] = wrap32(sum_g group_mult[c, g] * P[t, c, g]), P[t, c, g] = sum_{k in group g}
    a[t, k] * values[c, k]: the per-group partial sums the engine forms (its 16-element K blocks,
    group / 16 of them per group) scaled by the group's 4-bit multiplier, then summed in the INT32
    accumulator. Reference form (int64, every step exact, one wrap at the end, which equals wrapping
    after every addition); equal to ``int_matmul(a, grouped_values(...))`` (tested)."""
    _require_int(a, "a")
    _require_int(values, "values")
    n, k = values.shape
    if a.shape[-1] != k:
        raise ContractError(f"reduction sizes differ: activations K={a.shape[-1]}, weights K={k}")
    _check_groups(group_mult, group, n, k)
    a64, w64, gm = a.to(torch.int64), values.to(torch.int64), group_mult.to(torch.int64)
    acc = torch.zeros(*a.shape[:-1], n, dtype=torch.int64)
    for g in range(gm.shape[1]):
        part = a64[..., g * group:(g + 1) * group] @ w64[:, g * group:(g + 1) * group].T
        acc += part * gm[:, g]
    return wrap_int32(acc)


def _absmax_per_row(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    w64 = w.detach().to(torch.float64)
    amax = w64.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = round_half_up(w64 / scale[:, None]).clamp(-qmax, qmax)
    return q.to(torch.int16), scale


def grid_to_operands(values: torch.Tensor, normal: str) -> tuple[torch.Tensor, torch.Tensor]:
    """OVP grid values -> (exponent, integer) MAC operands as the pair decoder emits them."""
    fmt = _ovp_format(normal)
    table = {}
    for v, c in fmt.normal_codes.items():
        table[v] = fmt.normal_operands[c]
    for v, c in fmt.outlier_codes.items():
        table[v] = fmt.outlier_operands[c]
    lo = min(table)
    lut_e = torch.zeros(max(table) - lo + 1, dtype=torch.int8)
    lut_i = torch.zeros_like(lut_e)
    valid = torch.zeros_like(lut_e, dtype=torch.bool)
    for v, (e, i) in table.items():
        lut_e[v - lo], lut_i[v - lo], valid[v - lo] = e, i, True
    idx = values.to(torch.int64) - lo
    if (idx < 0).any() or (idx >= len(lut_e)).any() or not valid[idx].all():
        raise ContractError(f"values are not all on the OVP {normal} grid")
    return lut_e[idx], lut_i[idx]


def _sparsity_block_n(w: torch.Tensor, sparsity) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(block_n, mask) for a sparsity spec: None, "N:16", "2:4" or a density float."""
    if sparsity is None:
        return None, None
    from . import sparsity as sp

    if isinstance(sparsity, str):
        n, m = sp.parse_pattern(sparsity)
        if m == 4:
            _, mask = sp.prune(w, n, m)
            return sp.uniform_block_n(w, 8), mask
        return sp.uniform_block_n(w, n), None
    if isinstance(sparsity, float):
        return sp.choose_block_n(w, density=sparsity), None
    raise ContractError(f"sparsity must be None, 'N:16', '2:4' or a density float, got {sparsity!r}")


def quantize_weight(w: torch.Tensor, kind: str, *, sparsity=None, normal: str = "auto", victim: str = "larger",
                    group: int | None = None) -> QWeight:
    """Quantize a float weight [N, K] per output row (compile time).

    - "int8"/"int4": symmetric absmax per row: scale = max|w_row| / qmax (qmax 127 / 7),
      q = clamp(floor(w / scale + 1/2), -qmax, qmax). The plain baseline.
    - "ovp4": golden.ovp.quantize(w, bits=4, normal=normal, granularity="row", victim=victim):
      per-row alpha search and int4/flint4 choice, outlier-victim pairs along K.
    - sparsity (N:16 per 16x16 block, "2:4" or a density): the weight is pruned by magnitude
      first (golden.sparsity) and only kept values are quantized (OVP pairs are formed among the
      kept values, as the sparse DSP chain stores them). N and K must be multiples of 16.
    - group (64 or 128, dense "int4"/"ovp4" only): per-group 4-bit multipliers on the row scale
      (section 2a of docs/contract.md), chosen per group by the least round-to-nearest squared
      error, then every weight rounded at its group's scale (golden.gptq.rtn_grouped).
    """
    if kind not in ("int8", "int4", "ovp4"):
        raise ContractError(f"weight kind must be one of ('int8', 'int4', 'ovp4'), got {kind!r}")
    if w.dim() != 2:
        raise ContractError(f"weights must be 2-D [out, in], got shape {tuple(w.shape)}")
    w = w.detach().to(torch.float32)
    if group is not None:
        if sparsity is not None or kind not in ("int4", "ovp4") or group not in GROUP_SIZES:
            raise ContractError(f"group scales (group={group!r}) are for dense int4/ovp4 weights with groups of "
                                f"{GROUP_SIZES}, not {kind} sparsity={sparsity!r}")
        from . import gptq

        return gptq.to_qweight(gptq.rtn_grouped(w, kind, group, "mult4", normal=normal))
    block_n, mask = _sparsity_block_n(w, sparsity)
    if block_n is not None:
        from . import sparsity as sp

        if kind == "ovp4":
            if mask is not None:
                raise ContractError("2:4 sparsity with OVP weights is not supported; use '8:16'")
            return _qweight_from_sparse_ovp(sp.quantize_sparse_ovp(w, block_n, normal=normal, victim=victim), block_n)
        if mask is None:
            w, mask = sp.prune_blocks(w, block_n)
        else:
            w = w * mask
    if kind in ("int8", "int4"):
        q, scale = _absmax_per_row(w, 127 if kind == "int8" else 7)
        qw = QWeight(kind, q, scale, torch.zeros_like(q, dtype=torch.int8), q.to(torch.int8), block_n=block_n)
        if block_n is not None:
            from . import sparsity as sp

            qw.sparse = sp.compress(q, block_n, mask=mask)
        return qw
    from . import ovp

    t = ovp.quantize(w, bits=4, normal=normal, granularity="row", victim=victim)
    values = t.grid_values().to(torch.int16)
    exp, integer = t.decode()
    scale = torch.as_tensor(t.scale, dtype=torch.float64).reshape(-1)
    return QWeight("ovp4", values, scale, exp.to(torch.int8), integer.to(torch.int8), normal=t.normal, codes=t.codes)


def _qweight_from_sparse_ovp(sow, block_n) -> QWeight:
    """Dense grid view of a golden.sparsity SparseOvpWeight."""
    from . import sparsity as sp

    values = sp.decompress_ovp_values(sow).to(torch.int16)
    normal = sow.normal
    exp, integer = grid_to_operands(values, normal)
    scale = torch.as_tensor(sow.scale, dtype=torch.float64).reshape(-1)
    return QWeight("ovp4", values, scale, exp, integer, normal=normal, block_n=block_n, sparse=sow)


# ---------------------------------------------------------------------------------------------
# Matmul
# ---------------------------------------------------------------------------------------------


def int_matmul(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
               w_f64: torch.Tensor | None = None, w_max: int | None = None) -> torch.Tensor:
    """acc[..., n] = wrap32(sum_k a[..., k] * w[n, k] (+ bias[..., n])): INT32 accumulation.

    a: integer [..., K] (INT8 codes or OVP grid values); w: integer [N, K] grid values, or a
    batch [..., N, K] broadcasting against a's leading dims (attention: q.k^T, p.v).
    The accumulator is a 32-bit two's complement register: it wraps on overflow (the sum is
    computed exactly and reduced mod 2**32, which equals wrapping at every addition).
    ``bias`` (integer, broadcasting to [..., N]) is added in the same register.
    ``w_f64``/``w_max`` are optional caches of w as float64 and of max|w| (a compiled layer
    keeps them). How the exact sum is computed: see :func:`_exact_matmul_f` (float32 or float64
    GEMM when the bound allows, else int64).
    """
    _require_int(a, "a")
    _require_int(w, "w")
    if a.shape[-1] != w.shape[-1]:
        raise ContractError(f"reduction sizes differ: activations K={a.shape[-1]}, weights K={w.shape[-1]}")
    acc, exact_bound = _exact_matmul_f(a, w, w_f64=w_f64, w_max=w_max)
    if bias is not None:
        _require_int(bias, "bias")
        return wrap_int32(acc.to(torch.int64) + bias.to(torch.int64))
    if exact_bound <= INT32_MAX:
        return acc.to(torch.int32)  # |sum| <= bound <= INT32_MAX: the register cannot wrap
    return wrap_int32(acc.to(torch.int64))


def int_matmul_exact_float(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """int_matmul for float64 operands that hold integers (a [..., K], w [..., N, K]): wrap32 of
    the exact sum. Exact while max|a| * max|w| * K < 2**53 (checked; see _exact_matmul_f)."""
    K = a.shape[-1]
    bound = _amax(a) * _amax(w) * max(K, 1)
    if bound >= _EXACT_F64:
        raise ContractError(f"int_matmul_exact_float: partial sums may reach {bound} >= 2**53")
    acc = a @ w.transpose(-1, -2)
    if bound <= INT32_MAX or _amax(acc) <= INT32_MAX:
        return acc.to(torch.int32)
    return wrap_int32(acc.to(torch.int64))


def _exact_matmul_f(a: torch.Tensor, w: torch.Tensor, *, w_f64=None, w_max=None) -> tuple[torch.Tensor, int]:
    """(the exact sum_k a[..., k] * w[n, k] as a float or int64 tensor, bound B on every |partial sum|).

    Exactness: every partial sum of the reduction (in whatever order and blocking the GEMM uses,
    FMA or not) is an integer of magnitude <= B = max|a| * max|w| * K. Integers up to 2**24 are
    exact in float32 and up to 2**53 in float64, so when B stays below that limit every addition
    and product of the GEMM is exact and the result is the exact integer sum (independent of
    thread count or summation order). INT8 x INT8 x K=1536 gives B = 127 * 127 * 1536 < 2**25:
    float64; with INT4/OVP normal weights (|w| <= 7) or K <= 1040 it is below 2**24: float32.
    Beyond 2**53 (never for this project's shapes) the sum is taken in int64.
    """
    K = a.shape[-1]
    amax = int(a.abs().max()) if a.numel() else 0
    wmax = w_max if w_max is not None else (int(w.abs().max()) if w.numel() else 0)
    bound = amax * wmax * max(K, 1)
    wt = w.transpose(-1, -2)
    if bound < _EXACT_F32:
        return a.to(torch.float32) @ wt.to(torch.float32), bound
    if bound < _EXACT_F64:
        wf = w_f64 if w_f64 is not None else w.to(torch.float64)
        return a.to(torch.float64) @ wf.transpose(-1, -2), bound
    return a.to(torch.int64) @ w.to(torch.int64).transpose(-1, -2), bound


def int_matmul_operands(a_exp: torch.Tensor, a_int: torch.Tensor, w_exp: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
    """acc[t, n] = wrap32(sum_k (a_int[t,k] * w_int[n,k]) << (a_exp[t,k] + w_exp[n,k])).

    The shift-and-add form an OVP processing element computes (decoded operands); equal to
    int_matmul on the grid values (tested). Reference implementation (slow): small shapes only.
    """
    for t, n in ((a_exp, "a_exp"), (a_int, "a_int"), (w_exp, "w_exp"), (w_int, "w_int")):
        _require_int(t, n)
    prod = (a_int.to(torch.int64)[..., None, :] * w_int.to(torch.int64)) << (a_exp.to(torch.int64)[..., None, :] + w_exp.to(torch.int64))
    return wrap_int32(prod.sum(-1))


# ---------------------------------------------------------------------------------------------
# Requantization
# ---------------------------------------------------------------------------------------------


def requantize(acc: torch.Tensor, m: Multiplier, exponent=0, *, mantissa=None, out: str = "int32") -> torch.Tensor:
    """INT32 accumulator -> int32 fixed-point or INT8, per output channel.

    y = saturate(round_shift(acc * mantissa * mult[c], shift[c] - e), lo, hi) where mantissa
    (the per-row scale mantissa, 1..256, or 1) and e (the per-row exponent) broadcast over
    channels, and (lo, hi) is INT32 (out="int32") or (-127, 127) (out="int8").
    ``exponent`` / ``mantissa`` may also be tuples of factors (broadcasting), meaning their sum /
    product: attention passes the query and key factors separately ([T, 1] and [1, S]) instead
    of forming the [T, S] products.
    Widths: acc 32 b x mantissa 9 b -> 41 b (exact); x mult 31 b -> 72 b product, rounded once
    (golden computes it exactly), then saturated. Without a mantissa the product is 63 b.
    The result equals :func:`requantize_reference` (the int64 split rule) bit for bit; it is
    computed in float64 with an exactness check (:func:`_requantize_f64`).
    ``acc`` may also be a float tensor holding exact integers (a float GEMM's result).
    """
    if not acc.is_floating_point():
        _require_int(acc, "acc")
    if out not in ("int32", "int8"):
        raise ContractError(f"requantize out must be 'int32' or 'int8', got {out!r}")
    exps = exponent if isinstance(exponent, tuple) else (exponent,)
    mants = () if mantissa is None else mantissa if isinstance(mantissa, tuple) else (mantissa,)
    for t in mants:
        _require_int(t, "mantissa")
    lo, hi = (INT32_MIN, INT32_MAX) if out == "int32" else (-INT8_QMAX, INT8_QMAX)
    y = _requantize_f64(acc, m.mult, m.shift, exps, mants, lo, hi)
    return y.to(torch.int32 if out == "int32" else torch.int8)


def requantize_reference(acc: torch.Tensor, m: Multiplier, exponent=0, *, mantissa=None, out: str = "int32") -> torch.Tensor:
    """:func:`requantize` with int64 arithmetic throughout (the split rule of golden.fixed)."""
    _require_int(acc, "acc")
    x = acc.to(torch.int64)
    if mantissa is not None:
        _require_int(mantissa, "mantissa")
        x = x * mantissa.to(torch.int64)
    if out == "int32":
        return apply_multiplier(x, m, exponent).to(torch.int32)
    if out == "int8":
        return apply_multiplier(x, m, exponent, lo=-INT8_QMAX, hi=INT8_QMAX).to(torch.int8)
    raise ContractError(f"requantize out must be 'int32' or 'int8', got {out!r}")


#: powers of two 2**k for k in [-_POW2_RANGE, _POW2_RANGE] (exact float64), indexed by k + _POW2_RANGE
_POW2_RANGE = 96
_POW2 = torch.tensor([2.0**k for k in range(-_POW2_RANGE, _POW2_RANGE + 1)], dtype=torch.float64)
#: a float64 value within this distance of a rounding boundary is recomputed in int64
_TIE_MARGIN = 2.0**-18


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """Exact float64 2**k of an integer tensor (|k| <= 96)."""
    k = torch.as_tensor(k, dtype=torch.int64)
    return _POW2[(k + _POW2_RANGE).reshape(-1)].reshape(k.shape)


def _amax(t) -> int:
    t = torch.as_tensor(t)
    return int(t.abs().max()) if t.numel() else 0


def _requantize_f64(acc, mult, shift, exps, mants, lo: int, hi: int, fallback=None,
                    clamp_input: bool = True) -> torch.Tensor:
    """saturate(round_shift(X * mult, clamp(shift - e, -1, 62)), lo, hi) in float64, exactly.

    X = acc * prod(mants) and e = sum(exps) (factors broadcasting). Why it is exact: X is an
    integer below 2**53 (asserted), and each factor 2**e_i, mant_i and mult * 2**-shift is an
    integer times a power of two, so the running product acc * mants * 2**e stays exact (its
    significand has at most 53 bits, asserted through the magnitudes) and the last multiplication
    by mult * 2**-s is the only rounding: |q - exact| <= |q| * 2**-53. t = fl(q + 1/2) adds at
    most 2**-53 * max(1, |t|). t is first clamped to [lo - 1.5, hi + 1.5] (beyond it the exact
    result saturates too). There |t| < 2**32, both errors are below 2**-20, so floor(t) is the
    exact round-half-up result unless the exact value lies within 2**-20 of an integer; those
    elements (flagged with margin 2**-18: rare, except exact ties at small shifts) are
    recomputed with the int64 split rule (apply_multiplier, or ``fallback(index) -> values``).
    ``clamp_input`` reproduces apply_multiplier's input clamp (see below; off for plain
    round_shift users such as quantize_act_dynamic_int8). Returns float64 (integer valued, in [lo, hi]).
    """
    mult = torch.as_tensor(mult, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    exps = tuple(torch.as_tensor(e, dtype=torch.int64) for e in exps)
    acc_bound = (1 << 31) if acc.dtype in (torch.int32, torch.int16, torch.int8) else _amax(acc)
    x_bound = acc_bound
    for t in mants:
        x_bound *= max(1, _amax(t))
    if x_bound >= _EXACT_F64:
        raise ContractError(f"requantize: |acc * mantissa| may reach {x_bound} >= 2**53")
    e_min = sum(int(e.min()) for e in exps if e.numel())
    e_max = sum(int(e.max()) for e in exps if e.numel())
    x = acc.to(torch.float64)
    if x is acc:
        x = x.clone()
    for t in mants:
        x.mul_(t.to(torch.float64))
    if -1 <= int(shift.min()) - e_max and int(shift.max()) - e_min <= 62:
        # no clamp acts: X * 2**e * 2**-shift first (exact), then the one rounding by mult
        for e in exps:
            if e.numel() != 1 or int(e.reshape(-1)[0]) != 0:
                x.mul_(_pow2(e))
        x.mul_(_pow2(-shift))
    else:
        e_sum = sum(exps[1:], exps[0])
        x.mul_(_pow2(-(shift - e_sum).clamp(-1, 62)))
    small_mult = clamp_input and bool(((mult > 0) & (mult < (1 << 30))).any())
    # apply_multiplier first clamps |X| to 2**(s + 2) (its saturation shortcut): with a mantissa
    # below 2**30 (reals below 2**-31) that changes the result to +-4 * mult; reproduce it
    clamped = x.abs() >= 4.0 if small_mult else None
    t = x.mul_(mult.to(torch.float64)).add_(0.5).clamp_(lo - 1.5, hi + 1.5)
    y = torch.floor(t)
    frac = t.sub_(y).sub_(0.5).abs_()
    near = frac > 0.5 - _TIE_MARGIN
    y.clamp_(lo, hi)
    if small_mult and bool(clamped.any()):
        four_m = (4 * mult).to(torch.float64).expand(y.shape)
        sign = torch.sign(acc.to(torch.float64)).expand(y.shape)
        for tm in mants:
            sign = sign * torch.sign(tm.to(torch.float64))
        y = torch.where(clamped, (sign * four_m).clamp(lo, hi), y)
    if bool(near.any()):
        idx = near.nonzero(as_tuple=True)
        if fallback is not None:
            y[idx] = fallback(idx).to(torch.float64)
            return y
        shape = y.shape
        xi = acc.expand(shape)[idx].to(torch.int64)
        for t in mants:
            xi = xi * t.to(torch.int64).expand(shape)[idx]
        e_sub = sum((e.expand(shape)[idx] for e in exps), torch.zeros_like(xi))
        sub = Multiplier(mult.expand(shape)[idx], shift.expand(shape)[idx])
        y[idx] = apply_multiplier(xi, sub, e_sub, lo=lo, hi=hi).to(torch.float64)
    return y


# ---------------------------------------------------------------------------------------------
# A compiled linear layer
# ---------------------------------------------------------------------------------------------


@dataclass
class QLinear:
    """One linear layer compiled to the integer contract: y_fixed = requant(acc(q(x), W) + bias).

    Run time is integers only: ``forward`` takes int32 fixed-point [..., K] with ``in_frac``
    fractional bits and returns int32 fixed-point [..., N] with ``out_frac`` fractional bits.
    Multipliers: real[c] = base_scale(act) * w.scale[c] * 2**out_frac, folded at compile time;
    for dynamic INT8 base_scale = 2**-in_frac / 127 ("int8") or 2**-in_frac ("int8-pow2"); the
    per-token mantissa multiplies the accumulator and the per-token exponent lowers the shift.
    Bias (real b[c]) is an int32 in the OUTPUT fixed-point format, bias_q[c] = to_fixed(b[c],
    out_frac), added with saturation after requantization (a per-token activation scale makes
    the accumulator's scale vary per token, the output format does not).
    Weights "fp32" or acts "fp32" (sensitivity studies only, not hardware) run a float64 matmul
    on the dequantized input and round the result to fixed-point.
    """

    name: str
    weight: QWeight | None
    w_float: torch.Tensor = field(repr=False)
    act: str
    in_frac: int
    out_frac: int
    mult: Multiplier | None = None
    act_scale: float | None = None  # int8-static scale / ovp4 scale (alpha / normal_max)
    act_alpha: float | None = None
    act_normal: str | None = None
    bias_q: torch.Tensor | None = None
    bias_float: torch.Tensor | None = field(default=None, repr=False)
    _w_cache: tuple | None = field(default=None, repr=False)
    out_features: int = 0  # N before padding (0: no padding)
    in_features: int = 0  # K before padding

    def _pad_in(self, x: torch.Tensor) -> torch.Tensor:
        k_pad = self.w_float.shape[1]
        if x.shape[-1] != self.in_features:
            raise ContractError(f"{self.name}: input has K={x.shape[-1]}, layer expects {self.in_features}")
        if k_pad == x.shape[-1]:
            return x
        return torch.nn.functional.pad(x, (0, k_pad - x.shape[-1]))

    def _crop_out(self, y: torch.Tensor) -> torch.Tensor:
        return y[..., : self.out_features] if y.shape[-1] != self.out_features else y

    def quantize_input(self, x: torch.Tensor) -> QAct:
        if self.act == "int8":
            return quantize_act_dynamic_int8(x, self.in_frac)
        if self.act == "int8-pow2":
            return quantize_act_pow2_int8(x, self.in_frac)
        if self.act == "int8-static":
            return quantize_act_static_int8(x, self.in_frac, self.act_scale)
        if self.act == "ovp4":
            return quantize_act_ovp4(x, self.in_frac, self.act_alpha, self.act_normal)
        raise ContractError(f"activation kind {self.act!r} has no integer quantizer")

    @property
    def integer(self) -> bool:
        return self.weight is not None and self.act != "fp32"

    def forward(self, x: torch.Tensor, trace: Callable[[str, torch.Tensor], None] | None = None) -> torch.Tensor:
        _require_int(x, "x")
        x = self._pad_in(x)
        if not self.integer:
            xf = x.to(torch.float64) * 2.0**-self.in_frac
            if self.act != "fp32":
                qa = self.quantize_input(x)
                xf = qa.dequantize().to(torch.float64)
            w = self.weight.dequantize().to(torch.float64) if self.weight is not None else self.w_float.to(torch.float64)
            y = xf @ w.T
            if self.bias_float is not None:
                y = y + self.bias_float.to(torch.float64)
            return self._crop_out(to_fixed(y, self.out_frac))
        qa = self.quantize_input(x)
        e = qa.exponent.to(torch.int64)
        if self._w_cache is None:
            wv = self.weight.effective_values()  # grid values x group multipliers (group scales: 2a)
            self._w_cache = (wv, wv.to(torch.float64), int(wv.abs().max()))
        acc = int_matmul(qa.values, self._w_cache[0], w_f64=self._w_cache[1], w_max=self._w_cache[2])
        y = requantize(acc, self.mult, e, mantissa=qa.mantissa)
        if self.bias_q is not None:
            y = (y.to(torch.int64) + self.bias_q.to(torch.int64)).clamp(INT32_MIN, INT32_MAX).to(torch.int32)
        y = self._crop_out(y)
        if trace is not None:
            trace(f"{self.name}.act_q", qa.values)
            trace(f"{self.name}.act_exp", qa.exponent)
            if qa.mantissa is not None:
                trace(f"{self.name}.act_mant", qa.mantissa)
            trace(f"{self.name}.acc", acc)
            trace(f"{self.name}.out", y)
        return y

    __call__ = forward

    def forward_float(self, x: torch.Tensor, *, quantized: bool = True) -> torch.Tensor:
        """Float counterpart (measurement only): fake-quantized input and dequantized weights
        (``quantized=True``) or the plain float layer (``quantized=False``)."""
        if x.shape[-1] != self.in_features:
            raise ContractError(f"{self.name}: input has K={x.shape[-1]}, layer expects {self.in_features}")
        x = torch.nn.functional.pad(x, (0, self.w_float.shape[1] - x.shape[-1]))
        w = self.w_float.to(torch.float32)
        if quantized and self.weight is not None:
            w = self.weight.dequantize()
        if quantized:
            if self.act in ("int8", "int8-pow2"):
                x = fake_quant_act_dynamic_int8(x)
            elif self.act == "int8-static":
                x = fake_quant_act_static_int8(x, self.act_scale)
            elif self.act == "ovp4":
                x = fake_quant_act_ovp4(x, self.act_alpha, self.act_normal)
        y = x.to(torch.float32) @ w.T
        if self.bias_float is not None:
            y = y + self.bias_float
        return self._crop_out(y)


def padded_weight(w: torch.Tensor, weights: str, acts: str, sparsity) -> torch.Tensor:
    """The float32 weight [N, K] zero-padded as compile_linear pads it (identical sums): OVP pairs
    need an even K; N:16 blocks (any ``sparsity`` not None) need N, K % 16 == 0."""
    w = w.detach().to(torch.float32)
    n_out, k_in = w.shape
    row_mult = 16 if sparsity is not None else 1
    col_mult = 16 if sparsity is not None else (2 if "ovp4" in (weights, acts) else 1)
    pad_n, pad_k = (-n_out) % row_mult, (-k_in) % col_mult
    if pad_n or pad_k:
        w = torch.nn.functional.pad(w, (0, pad_k, 0, pad_n))
        if pad_n and weights == "ovp4":
            # Padded rows only produce cropped outputs. For sparse OVP they are filled with 1.0
            # (exactly representable, MSE 0 in both normal types) because an all-zero row has no
            # valid OVP alpha in golden.sparsity.quantize_sparse_ovp.
            w[n_out:, :k_in] = 1.0
    return w


def compile_linear(
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    weights: str = "int8",
    acts: str = "int8",
    in_frac: int = 16,
    out_frac: int = 16,
    sparsity=None,
    calib: torch.Tensor | None = None,
    act_alpha: float | None = None,
    act_normal: str = "auto",
    name: str = "linear",
    qweight: "QWeight | None" = None,
    group: int | None = None,
) -> QLinear:
    """Compile a float linear (w [N, K] nn.Linear layout, optional bias [N]) to a QLinear.

    weights in WEIGHT_KINDS, acts in ACT_KINDS. "int8-static" needs ``calib`` (float
    activations [.., K]); "ovp4" needs ``calib`` or ``act_alpha`` (+ ``act_normal``).
    ``qweight``: an already quantized weight of kind ``weights`` (e.g. golden.gptq's choice of
    grid values) used instead of quantize_weight's round-to-nearest; shape = the padded [N, K].
    ``group``: per-group weight scales (64 or 128; dense int4/ovp4; docs/contract.md 2a).
    """
    if weights not in WEIGHT_KINDS:
        raise ContractError(f"{name}: weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    if acts not in ACT_KINDS:
        raise ContractError(f"{name}: acts must be one of {ACT_KINDS}, got {acts!r}")
    n_out, k_in = w.shape
    w = padded_weight(w, weights, acts, sparsity)
    pad_n, pad_k = w.shape[0] - n_out, w.shape[1] - k_in
    if pad_n or pad_k:
        if bias is not None:
            bias = torch.nn.functional.pad(bias.detach().to(torch.float32), (0, pad_n))
    if calib is not None and pad_k:
        calib = torch.nn.functional.pad(calib.detach().to(torch.float32), (0, pad_k))
    qw = None
    if qweight is not None:
        if (qweight.kind != weights or tuple(qweight.values.shape) != tuple(w.shape) or sparsity is not None
                or qweight.group != group):
            raise ContractError(f"{name}: qweight is {qweight.kind} {tuple(qweight.values.shape)} group {qweight.group}, "
                                f"the layer needs dense {weights} {tuple(w.shape)} group {group} (after padding)")
        qw = qweight
    elif weights != "fp32":
        qw = quantize_weight(w, weights, sparsity=sparsity, group=group)
    elif sparsity is not None:
        from . import sparsity as sp

        block_n, mask = _sparsity_block_n(w, sparsity)
        w = sp.decompress(sp.compress(w, block_n, mask=mask))
    lin = QLinear(name, qw, w, acts, in_frac, out_frac, bias_float=None if bias is None else bias.detach().to(torch.float32),
                  out_features=n_out, in_features=k_in)
    if acts == "int8":
        base = 2.0**-in_frac / INT8_QMAX
    elif acts == "int8-pow2":
        base = 2.0**-in_frac
    elif acts == "int8-static":
        if calib is None:
            raise ContractError(f"{name}: static INT8 activations need calibration activations (calib=)")
        lin.act_scale = base = static_int8_scale(calib)
    elif acts == "ovp4":
        if act_alpha is None:
            if calib is None:
                raise ContractError(f"{name}: OVP4 activations need calibration activations (calib=) or act_alpha")
            act_alpha, act_normal = calibrate_ovp_alpha(calib, act_normal)
        elif act_normal == "auto":
            raise ContractError(f"{name}: with an explicit act_alpha give act_normal 'int4' or 'flint4'")
        lin.act_alpha, lin.act_normal = float(act_alpha), act_normal
        lin.act_scale = base = float(act_alpha) / _ovp_format(act_normal).normal_max
    else:
        base = None
    if qw is not None and base is not None:
        lin.mult = fold_multipliers(base, qw.scale, 2.0**out_frac)
        if bias is not None:
            lin.bias_q = to_fixed(bias.detach(), out_frac)
    return lin
