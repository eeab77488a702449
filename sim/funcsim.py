"""Functional simulator of the olivine accelerator: executes instruction streams on byte buffers.

The machine: HBM channels (byte arrays), the on-chip buffers of one core (the data space =
activation buffer followed by the global buffer, the weight, bias and meta buffers) and four
in-order unit queues (LD, ST, MPE, SFU) synchronised by wait/release tokens. Every instruction
does exactly what docs/isa.md "Semantics" says; MM/MV use golden/contract.py's integer ops and
MISC golden/sfu.py's (as sim/sfu_np.py's numpy ports, equal to golden's bit for bit), so a compiled
model is bit-exact with golden/qmodel.py. An instruction that breaks one of the "Validity" rules
there raises :class:`SimError` before it changes any state (field rules) or when the offending value
is read (data rules); no other exception escapes.

Scheduling: each unit runs ahead as far as its tokens allow (LD first), which exposes a missing
token as a wrong result or a deadlock; a deadlock raises :class:`DeadlockError` naming the
instruction each unit is stuck on. A run of consecutive instructions a unit executes back to back
(its tokens there) that are of one kind sharing their second operand (the Q.K^T or P'.V MVs of a
kv group, V shifts, RoPEs, INT8 quants) and do not read what an earlier one of them writes is
executed in one numpy pass, with exactly the one-by-one result; if one of them would fault, nothing
is written and they run one by one, raising that fault (``run_together = False``: always one by one).
The order depends on the schedule fields alone (units, wait / release masks, SYS), so it is worked out
once per program (per ``schedule_key`` for the runtime's patched programs) and replayed. Instructions
executed again (the unpatched ones of a program run every decode step) keep what their first execution
prepared: checked views of their operands (LDs, one-row linear MVs, one-row INT8 quants, runs of
Q.K^T / P'.V MVs); a prepared path that meets a cache miss or a broken data rule writes nothing and
hands over to the general path, which decodes, caches or raises as before. Statistics: instructions
per unit and mnemonic, bytes read and written per HBM channel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from olivine.hw import isa
from olivine.compiler.asm import disassemble_one
from olivine.compiler.spec import group_row_bytes, unpack_group_mult
from olivine.golden import contract, fixed, ovp, sfu
from olivine.golden.ovp_format import get_format

from . import int8_gemv, sfu_np

__all__ = ["FuncSim", "SimError", "DeadlockError", "SimStats", "Runtime", "run_main", "check_against_golden"]

F = 16  # fractional bits of every fixed-point activation (golden/fixed.py)


class SimError(RuntimeError):
    """An instruction that breaks a rule of docs/isa.md "Validity" (out-of-range address, field
    combination without a meaning, operand value out of the hardware's range); names the instruction."""


class DeadlockError(SimError):
    """No unit can proceed but the program has not ended."""


@dataclass
class SimStats:
    instructions: dict = field(default_factory=lambda: {u: 0 for u in isa.UNITS})
    by_mnemonic: dict = field(default_factory=dict)
    hbm_read: dict = field(default_factory=dict)
    hbm_written: dict = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, other: "SimStats") -> None:
        for k, v in other.instructions.items():
            self.instructions[k] = self.instructions.get(k, 0) + v
        for d, o in ((self.by_mnemonic, other.by_mnemonic), (self.hbm_read, other.hbm_read),
                     (self.hbm_written, other.hbm_written)):
            for k, v in o.items():
                d[k] = d.get(k, 0) + v
        self.seconds += other.seconds


#: largest row-scale mantissa of an INT8 block or of V (9 bits: contract.quantize_act_dynamic_int8 gives 1..256)
MAX_MANTISSA = 256
#: largest head dimension the RoPE unit's cos/sin ROM covers, and the positions it covers
ROPE_MAX_HEAD_DIM = 256
ROPE_POSITIONS = 1 << 16


_UNSET = object()  # an instruction whose run key is not computed yet
_RUN_MNEMONICS = frozenset(("MV", "MM", "MISC"))  # the instructions that may form runs (FuncSim._run_key)

#: the units named by each 4-bit wait / release mask
_MASK_UNITS = tuple(tuple(v for v in range(4) if mask >> v & 1) for mask in range(16))


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether byte ranges (start, length) a and b share a byte."""
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _anchor(i, args: frozenset):
    """The instruction a prepared form of ``i`` is kept on: ``i`` itself, or for an instruction the runtime
    patched (``_sim_template`` = (decoded template, patched field names)) the template when every patched
    field is one the prepared form takes per execution (``args``); else None (nothing is kept)."""
    t = i.__dict__.get("_sim_template")
    if t is None:
        return i
    return t[0] if t[1] <= args else None


def _u32(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32).astype(np.int64)


@dataclass
class SparseTile:
    """A decoded N:16 sparse weight tile: row r multiplies ``vals[r, j]`` with the activation at column
    ``cols[r, j]`` (its group's base + the stored in-group index); unused slots point at column K, an
    appended zero activation (rows of different 16-row bands keep different counts)."""

    cols: torch.Tensor  # int64 [n, L]
    vals: torch.Tensor  # int64 [n, L]
    vmax: int

    def matmul(self, a: torch.Tensor) -> torch.Tensor:
        """acc[t, r] = wrap32(sum_j a[t, cols[r, j]] * vals[r, j]): the sparse MUX selects the activation
        of each kept weight; the products are summed exactly (float64 when every partial sum is an
        exactly representable integer, else int64), as ``contract.int_matmul`` sums the dense form."""
        a_ext = torch.cat([a.to(torch.int64), torch.zeros(a.shape[0], 1, dtype=torch.int64)], dim=1)
        amax = int(a_ext.abs().max()) if a_ext.numel() else 0
        selected = a_ext[:, self.cols]  # [m, n, L]: the MUX outputs
        if amax * self.vmax * max(self.cols.shape[1], 1) < 2**53:
            acc = torch.round((selected.to(torch.float64) * self.vals.to(torch.float64)).sum(-1)).to(torch.int64)
        else:
            acc = (selected * self.vals).sum(-1)
        return contract.wrap_int32(acc)


#: float32 sums are exact while every partial sum is an integer below 2**24
_EXACT_F32 = 1 << 24


#: torch's int8 x int8 -> int32 GEMM (oneDNN / VNNI on CPU); None where this torch lacks it
_INT_MM = getattr(torch, "_int_mm", None)


class DenseTile:
    """A decoded dense weight tile: integer grid values [n, K], kept in the narrowest exact form.

    ``matmul(a)`` returns ``contract.int_matmul(a, w)`` for INT8 codes ``a`` (|a| <= 128):
    - FBGEMM's uint8 x int8 product made exact (sim/int8_gemv.py: |w| <= 64 in one product, int4 and
      most OVP tiles; int8 tiles as two), ~10x ``torch._int_mm`` on CPUs without VNNI, where it applies;
    - else |w| <= 127: an int8 x int8 GEMM with int32 sums
      (``torch._int_mm``); |sum| <= 128 * 127 * 65520 < 2**31, so no partial sum can wrap and the
      result is exact. One byte per weight streamed per GEMV (float64 streamed eight).
    - else float32 while max|a| * max|w| * K < 2**24 (every partial sum an exact integer), else the
      contract's own float64 / int64 path.
    """

    def __init__(self, w: torch.Tensor):
        self.vmax = int(w.abs().max()) if w.numel() else 0
        self.k = max(w.shape[1], 1)
        self.i8 = w.to(torch.int8).T if _INT_MM is not None and self.vmax <= 127 else None  # [K, n]
        self.f32 = None if self.i8 is not None else w.to(torch.float32)
        # FBGEMM's packed weights (sim/int8_gemv.py: exact while max|w| <= 64), None where it does not apply
        self.packed = int8_gemv.pack(w, self.vmax) if w.numel() else None

    def matmul(self, a: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return int8_gemv.matmul(self.packed, a)
        if self.i8 is not None:
            return _INT_MM(a.to(torch.int8), self.i8)
        if 128 * self.vmax * self.k < _EXACT_F32 or (int(a.abs().max()) if a.numel() else 0) * self.vmax * self.k \
                < _EXACT_F32:
            return (a.to(torch.float32) @ self.f32.T).to(torch.int32)  # |acc| < 2**24: no wrap
        return contract.int_matmul(a, self.f32.to(torch.int64), w_max=self.vmax)

    def matmul_grid(self, a: torch.Tensor) -> torch.Tensor:
        """``contract.int_matmul(a, w)`` for any integer grid values ``a`` (OVP activations reach +-192,
        beyond the int8 GEMM's operand range): float32 while every partial sum is an exact integer
        below 2**24, else the contract's own exact path."""
        w = self.i8.T if self.i8 is not None else self.f32
        amax = int(a.abs().max()) if a.numel() else 0
        if amax * self.vmax * self.k < _EXACT_F32:
            return (a.to(torch.float32) @ w.to(torch.float32).T).to(torch.int32)
        return contract.int_matmul(a, w.to(torch.int64), w_max=self.vmax)


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's complement wrap of int64 values to int32 (what an INT32 accumulator does)."""
    return (((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)).astype(np.int32)


def _int_matmul_np(a: np.ndarray, w: np.ndarray, amax_bound: int | None) -> np.ndarray:
    """``contract.int_matmul(a, w)`` (wrap32 of the exact sum) for small integer matrices in numpy:
    float64 when max|a| * max|w| * K < 2**53 (exact), else int64 (exact below 2**63: |a| < 2**31,
    |w| <= 128, K < 2**16). ``amax_bound``: a known bound of |a| (INT8 codes: 128) or None to measure."""
    kdim = max(a.shape[-1], 1)
    amax = amax_bound if amax_bound is not None else (int(np.abs(a).max()) if a.size else 0)
    wmax = 128 if w.dtype == np.int8 else (int(np.abs(w).max()) if w.size else 0)
    if amax * wmax * kdim < 1 << 31:  # exact in float64 and no partial sum can wrap
        return (a.astype(np.float64) @ w.astype(np.float64).T).astype(np.int32)
    if amax * wmax * kdim < 1 << 53:
        return _wrap32(np.rint(a.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64))
    return _wrap32(a.astype(np.int64) @ w.astype(np.int64).T)


@dataclass
class LinearEntries:
    """A linear tile's requantization entries as int64 vectors [n], with the bounds the one-product
    requantization needs, and (shift - exponent, rounding half) per activation exponent met so far."""

    mult: np.ndarray
    shift: np.ndarray
    bias: np.ndarray
    shift_lo: int
    shift_hi: int
    mult_max: int
    bias_max: int
    by_exponent: dict


def _requantize_row(acc: np.ndarray, p: LinearEntries, exponent: int, mantissa: int | None, int8: bool,
                    with_bias: bool) -> np.ndarray | None:
    """:func:`requantize_exact` (plus the saturating bias of fixed32) of one linear output row from its
    cached entries, or None where :func:`_requantize_direct`'s one-product rule does not apply. The
    same integers: round_shift(acc * mantissa * mult, shift - exponent) in one int64 product, the
    output clamp (and the bias's) applied unless the bound ``(max|x| * max(mult) >> min(s)) + 1`` of
    every result shows it cannot act."""
    s_lo, s_hi = p.shift_lo - exponent, p.shift_hi - exponent
    if s_lo < 0 or s_hi > 62:
        return None
    # max|acc * mantissa| from the accumulators themselves (int32, or float32 integers below 2**24; mantissa >= 0)
    amax = max(int(acc.max()), -int(acc.min()))
    if mantissa is not None:
        amax *= mantissa
    if amax > 1 << min(s_lo + 2, 61) or amax * p.mult_max >= 1 << 62:
        return None
    sh = p.by_exponent.get(exponent)
    if sh is None:
        s = p.shift - exponent
        sh = p.by_exponent[exponent] = (s, (np.int64(1) << s) >> 1)
    # acc * mult in int64 in one pass (acc's integers convert exactly), then * mantissa: every partial is at
    # most max|acc| * max(mult) * mantissa < 2**62 (checked above; |acc| * mult < 2**62 for mantissa 0)
    x = np.multiply(acc, p.mult, dtype=np.int64, casting="unsafe")
    if mantissa is not None and mantissa != 1:
        x *= mantissa
    x += sh[1]
    x >>= sh[0]
    bound = ((amax * p.mult_max) >> s_lo) + 1  # |(x * mult + half) >> s| <= (max|x * mult| >> min s) + 1
    lim = contract.INT8_QMAX if int8 else contract.INT32_MAX
    if bound > lim:
        np.minimum(np.maximum(x, -lim if int8 else contract.INT32_MIN, out=x), lim, out=x)
        bound = lim + 1
    if with_bias:
        x += p.bias
        if bound + p.bias_max > contract.INT32_MAX:
            np.minimum(np.maximum(x, contract.INT32_MIN, out=x), contract.INT32_MAX, out=x)
    return x.astype(np.int8 if int8 else np.int32)


def _requantize_direct(x: np.ndarray, mult: np.ndarray, shift: np.ndarray, exponent, lo: int, hi: int):
    """:func:`requantize_exact` of ``x = acc * mantissa`` (int64) in one product, or None where it does
    not apply: when every shift s = shift - exponent lies in [0, 62] (no clamp of s acts), max|x| is at
    most 2**min(s + 2, 61) (the input clamp does not act) and max|x| * max(mult) < 2**62, the product
    x * mult and x * mult + 2**(s-1) fit int64, so round_shift(x * mult, s) is that sum shifted right:
    the same integers as the split rule, in a few numpy passes (most requantizations of a model)."""
    s = shift - exponent
    s_min, s_max = int(s.min()), int(s.max())
    if s_min < 0 or s_max > 62:
        return None
    amax = int(np.abs(x).max()) if x.size else 0
    if amax > 1 << min(s_min + 2, 61) or amax * int(mult.max()) >= 1 << 62:
        return None
    return np.minimum(np.maximum((x * mult + ((np.int64(1) << s) >> 1)) >> s, lo), hi)


def _requantize_one_entry(acc: np.ndarray, ent: np.ndarray, exponent: np.ndarray, mantissa: np.ndarray | None,
                          int8: bool) -> np.ndarray | None:
    """:func:`requantize_exact` of an attention product with its one requantization entry ``ent`` (int32
    [1, 4]: bias, multiplier, shift), in the one-product rule of :func:`_requantize_direct` with the entry as
    Python ints, the output clamp skipped where the bound ``(max|x| * mult >> min(s)) + 1`` shows it cannot
    act; None where the rule does not apply or the multiplier has bit 31 (the general path decides)."""
    mult, shift = int(ent[0, 1]) & 0xFFFFFFFF, int(ent[0, 2])
    if mult >> 31:
        return None
    s_lo, s_hi = shift - int(exponent.max()), shift - int(exponent.min())
    if s_lo < 0 or s_hi > 62:
        return None
    x = acc.astype(np.int64)
    if mantissa is not None:
        x *= mantissa
    amax = max(int(x.max()), -int(x.min()))
    if amax > 1 << min(s_lo + 2, 61) or amax * mult >= 1 << 62:
        return None
    s = shift - exponent
    x *= mult
    x += (np.int64(1) << s) >> 1
    x >>= s
    lim = contract.INT8_QMAX if int8 else contract.INT32_MAX
    if ((amax * mult) >> s_lo) + 1 > lim:
        np.minimum(np.maximum(x, -lim if int8 else contract.INT32_MIN, out=x), lim, out=x)
    return x.astype(np.int8 if int8 else np.int32)


def requantize_exact(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, exponent, mantissa,
                     lo: int, hi: int) -> np.ndarray:
    """``contract.requantize`` in numpy int64 (the same integers; tests/test_sim_funcsim_fuzz.py compares them).

    saturate(round_shift(acc * mantissa * mult, clamp(shift - exponent, -1, 62)), lo, hi), with the
    72-bit product rounded exactly by golden.fixed's split rule: x = hi * 2**k + lo with
    k = min(s, 31); every partial stays below 2**63 once |x| is clamped to 2**min(s + 2, 61)
    (larger |x| saturate anyway since mult >= 2**30 or the result is 0). One numpy pass instead of
    about forty small torch ops.
    """
    x = acc.astype(np.int64)
    if mantissa is not None:
        x = x * mantissa
    direct = _requantize_direct(x, mult, shift, exponent, lo, hi)
    if direct is not None:
        return direct
    s = np.minimum(np.maximum(shift - exponent, -1), 62)
    lim = np.left_shift(np.int64(1), np.minimum(s + 2, 61))
    x = np.minimum(np.maximum(x, -lim), lim)
    k = np.minimum(np.maximum(s, 0), 31)
    high, low = x >> k, x & ((np.int64(1) << k) - 1)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    res = (high * mult + ((low * mult + half) >> k)) >> np.maximum(s - k, 0)
    if (s < 0).any():
        res = np.where(s < 0, (x * mult) << 1, res)
    return np.minimum(np.maximum(res, lo), hi)


def quantize_rows_exact(x: np.ndarray, pow2: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``contract.quantize_act_dynamic_int8`` (``pow2``: ``quantize_act_pow2_int8``) of int32 rows in
    numpy: (int8 codes [rows, cols], int8 exponents [rows], uint16 mantissas [rows], 1 for pow2).

    The same integer rule (tests/test_sim_funcsim_fuzz.py compares them on the whole int32 range);
    bit lengths come from frexp, exact for amax <= 2**31 < 2**53.
    """
    xi = x.astype(np.int64)
    if not pow2 and xi.shape[-1]:
        return _quantize_rows_dynamic(xi)
    amax = np.abs(xi).max(axis=-1, keepdims=True) if xi.shape[-1] else np.zeros((xi.shape[0], 1), np.int64)
    if pow2:
        bl = np.frexp(amax.astype(np.float64))[1].astype(np.int64)  # bit_length (0 -> 0)
        e0 = np.maximum(bl - 7, 0)
        e = e0 + (((amax + ((np.int64(1) << e0) >> 1)) >> e0) > contract.INT8_QMAX)  # round_shift(amax, e0) > 127
        q = np.where(e > 0, (xi + ((np.int64(1) << e) >> 1)) >> e, xi)
        m = np.ones_like(amax)
    else:  # rows of no element: exponent 0, mantissa 1
        q, e, m = xi, np.zeros(xi.shape[0], dtype=np.int64), np.ones(xi.shape[0], dtype=np.int64)
    q = np.minimum(np.maximum(q, -contract.INT8_QMAX), contract.INT8_QMAX)
    return q.astype(np.int8), e.reshape(-1).astype(np.int8), m.reshape(-1).astype("<u2")


def _quantize_rows_dynamic(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`quantize_rows_exact`'s dynamic INT8 rule on int64 rows ``xi`` [rows, cols >= 1] (overwritten),
    its per-row scale in Python ints. No clamp: with m = ceil(amax / 2**e) (so amax <= m * 2**e) and
    R = floor(127 * 2**RB / m), |x * R| <= amax * R <= 127 * 2**(RB + e) = 127 * 2**s, so
    round_shift(x * R, s) = floor((x * R + 2**(s-1)) / 2**s) lies in [floor(-126.5), floor(127.5)]
    = [-127, 127]: the saturation to +-127 never acts."""
    rb = contract.RECIP_BITS
    if xi.shape[0] == 1:
        a = max(int(xi.max()), -int(xi.min()))
        e1 = max(a.bit_length() - 8, 0)
        m1 = max((a + (1 << e1) - 1) >> e1, 1)
        s1 = rb + e1
        xi *= (contract.INT8_QMAX << rb) // m1
        xi += 1 << (s1 - 1)
        xi >>= s1
        return xi.astype(np.int8), np.array([e1], dtype=np.int8), np.array([m1], dtype="<u2")
    e_l, m_l, r_l, s_l = [], [], [], []
    for a in np.maximum(xi.max(axis=-1), -xi.min(axis=-1)).tolist():
        e1 = max(a.bit_length() - 8, 0)
        m1 = max((a + (1 << e1) - 1) >> e1, 1)
        e_l.append(e1)
        m_l.append(m1)
        r_l.append((contract.INT8_QMAX << rb) // m1)
        s_l.append(rb + e1)
    sh = np.array(s_l, dtype=np.int64).reshape(-1, 1)
    xi *= np.array(r_l, dtype=np.int64).reshape(-1, 1)
    xi += (np.int64(1) << (sh - 1))
    xi >>= sh
    return xi.astype(np.int8), np.array(e_l, dtype=np.int8), np.array(m_l, dtype="<u2")


#: quant imm bits: [16] power-of-two INT8 scale, [17] OVP4 mode, [18] OVP4 normal type flint4
QUANT_POW2, QUANT_OVP4, QUANT_FLINT4 = isa.QUANT_POW2, isa.QUANT_OVP4, isa.QUANT_FLINT4
#: bytes of the OVP4 quantization parameter record at src1 (uint32 multiplier, int32 shift, 8 reserved)
OVP_QUANT_RECORD = 16


def quantize_rows_ovp4(x: np.ndarray, mult: int, shift: int, normal: str) -> np.ndarray:
    """The SFU's OVP4 activation encoder: int32 rows [rows, cols] -> OVP pair codes [rows, cols/2].

    ``contract.quantize_act_ovp4`` from its integer multiplier M = (mult, shift) (the compiler folds
    ``2**(G - 16) / scale`` into it exactly as golden does): t = apply_multiplier(x, M) clamped to
    +-2**40, nearest point of the union grid by the midpoint comparators (ties up, saturating), the
    "larger" victim rule on pairs (2k, 2k+1), then golden.ovp's pair codes (docs/isa.md).
    """
    fmt = get_format(normal)
    g = contract.OVP_ACT_GUARD_BITS
    m = contract.Multiplier(torch.tensor(mult, dtype=torch.int64), torch.tensor(shift, dtype=torch.int64))
    t = contract.apply_multiplier(torch.from_numpy(x.astype(np.int64)), m, lo=-(1 << 40), hi=1 << 40)
    grid = torch.tensor(fmt.union_grid, dtype=torch.int64)
    mids = (grid[:-1] + grid[1:]) << (g - 1)
    v = contract.apply_victims(grid[torch.bucketize(t, mids, right=True)], fmt.normal_max, "larger")
    return ovp.encode(v, normal).numpy()


def _block_pitch(rows: int, cols: int, groups: int) -> int:
    """Bytes from one head block of a MISC quant result to the next (64-aligned; one block: its size)."""
    t = rows // groups
    return -(-(t * cols + 3 * t) // 64) * 64 if groups > 1 else t * cols + 3 * t


def _head_blocks(codes: np.ndarray, exps: np.ndarray, mants: np.ndarray, groups: int) -> np.ndarray:
    """The bytes of each head block of a MISC quant result, uint8 [groups, t * cols + 3t]: input row
    t * groups + h is row t of block h (codes, then t int8 exponents, then t uint16 mantissas)."""
    rows, cols = codes.shape
    t = rows // groups
    if groups == 1:
        return np.concatenate([codes.reshape(-1).view(np.uint8), exps.view(np.uint8), mants.view(np.uint8)]
                              ).reshape(1, -1)
    c = codes.reshape(t, groups, cols).transpose(1, 0, 2).reshape(groups, t * cols).view(np.uint8)
    e = np.ascontiguousarray(exps.reshape(t, groups).T).view(np.uint8)
    m = np.ascontiguousarray(mants.reshape(t, groups).T).view(np.uint8)
    return np.concatenate([c, e, m], axis=1)


def _rows_view(buf: np.ndarray, addr: int, shape: tuple[int, int], pitch: int) -> np.ndarray:
    """A writable view of ``shape[0]`` rows of ``shape[1]`` bytes at ``addr``, ``pitch`` bytes apart
    (the caller has checked that the last row ends inside ``buf``)."""
    rows, width = shape
    if rows == 1 or pitch == width:
        return buf[addr: addr + rows * width].reshape(rows, width)
    return np.lib.stride_tricks.as_strided(buf[addr:], (rows, width), (pitch, 1))


def _vshift_rows(p: np.ndarray, ev: np.ndarray, mv: np.ndarray, rows: int, cols: int, imm: int):
    """:meth:`FuncSim._vshift` from V's exponents ``ev`` and (checked) mantissas ``mv`` (int64 [cols])."""
    qpos = (imm & 0xFFFF) + np.arange(rows) % max(1, imm >> 16)
    e_ref = np.maximum.accumulate(ev)[qpos].reshape(rows, 1)
    shift = np.maximum(8 + e_ref - ev.reshape(1, cols), 8)  # >= 8: a rounding right shift
    # contract.round_shift: (x + 2**(s-1)) >> s, and 0 for s > 62; |p * mv| < 2**48
    if int(shift.max()) <= 62:  # the usual case: no shift reaches the zero result
        p_sh = (p * mv.reshape(1, cols) + ((np.int64(1) << shift) >> 1)) >> shift
    else:
        p_sh = np.where(shift > 62, 0, (p * mv.reshape(1, cols) + (np.int64(1) << (np.minimum(shift, 62) - 1)))
                        >> np.minimum(shift, 62))
    return p_sh.astype(np.int32), e_ref.reshape(-1).astype(np.int8)


class FuncSim:
    """One accelerator core with its HBM. ``channel_bytes`` sizes each channel; ``image`` preloads them."""

    def __init__(self, config, channel_bytes: list[int], image: dict[int, bytes] | None = None):
        self.config = config
        b = config.buffers
        self.hbm = [np.zeros(int(n), dtype=np.uint8) for n in channel_bytes]
        for ch, data in (image or {}).items():
            if len(data) > len(self.hbm[ch]):
                raise SimError(f"weight image of channel {ch} ({len(data)} B) exceeds the channel size")
            self.hbm[ch][: len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.data = np.zeros((b.activation_kib + b.global_kib) * 1024, dtype=np.uint8)
        self.buffers = {"weight": np.zeros(b.weight_kib * 1024, dtype=np.uint8),
                        "meta": np.zeros(b.meta_kib * 1024, dtype=np.uint8),
                        "bias": np.zeros(b.bias_kib * 1024, dtype=np.uint8)}
        self.stats = SimStats()
        # ((channel, hbm address, bytes) of the weights, same of the meta or None, format, normal, n, k)
        #   -> decoded tile (dense: DenseTile; sparse: SparseTile); ("entries", source of the bias-buffer
        #   LD, n) -> LinearEntries (a linear tile's requantization entries)
        self._wcache: dict = {}
        # per buffer: buffer address -> (channel, hbm address, bytes) of its last LD (None: a zero fill, a
        # multi-burst LD, or an ST changed those HBM bytes since: the buffer no longer equals them)
        self._src: dict = {"weight": {}, "meta": {}, "bias": {}}
        self._src_span: dict[int, list[int]] = {}  # per HBM channel: [lo, hi) covering every source recorded
        # per HBM channel: the byte ranges [lo, hi) that cached tiles were decoded from (an ST into one
        # of them clears the cache)
        self._cached_hbm: dict[int, list[tuple[int, int]]] = {}
        self._cached_span: dict[int, list[int]] = {}  # per channel: [lo, hi) covering its _cached_hbm ranges
        # weight-buffer bytes an LD wrote but that are not copied yet, as disjoint pieces
        # [buffer lo, buffer hi, channel, hbm address]: a decode step streams ~70 MB of weights whose
        # decoded tiles are cached, so the bytes are copied only when something reads the buffer (a tile
        # decode, an ST from it), before an ST overwrites their HBM source, and when a run ends
        self._deferred: list[list[int]] = []
        self._defer = False  # only inside run(): a handler called on its own leaves its bytes in place
        #: execute runs of independent same-kind instructions together (False: strictly one by one)
        self.run_together = True
        self._plans: dict = {}  # schedule key -> _Plan (run(schedule_key=...))

    # ---- memory helpers ----------------------------------------------------------------------
    def _space(self, target: str) -> np.ndarray:
        return self.data if target in ("act", "global", "kv") else self.buffers[target]

    def _slice(self, arr: np.ndarray, addr: int, n: int, what: str) -> np.ndarray:
        if addr < 0 or addr + n > len(arr):
            raise SimError(f"{what}: bytes [{addr}, {addr + n}) outside a buffer of {len(arr)} bytes")
        return arr[addr: addr + n]

    def i32_np(self, addr: int, rows: int, cols: int, pitch: int | None = None, what="operand") -> np.ndarray:
        """A copy of the int32 matrix [rows, cols] at ``addr`` (row pitch ``pitch`` elements)."""
        pitch = cols if pitch is None else pitch
        if addr % 4:
            raise SimError(f"{what}: int32 data at unaligned address {addr}")
        n = 4 * ((rows - 1) * pitch + cols)
        raw = self._slice(self.data, addr, n, what)
        flat = raw.view("<i4")  # addr is 4-aligned and the data space starts aligned
        if pitch == cols:
            return flat.reshape(rows, cols).copy()
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4 * pitch, 4)).copy()

    def i32(self, addr: int, rows: int, cols: int, pitch: int | None = None, what="operand") -> torch.Tensor:
        return torch.from_numpy(self.i32_np(addr, rows, cols, pitch, what))

    def put_i32(self, addr: int, t, pitch: int | None = None, what="result") -> None:
        """Write the int32 matrix ``t`` [rows, cols] (torch tensor or numpy array) at ``addr``."""
        rows, cols = t.shape
        pitch = cols if pitch is None else pitch
        arr = t if isinstance(t, np.ndarray) and t.dtype == np.int32 else \
            (np.asarray(t, dtype=np.int32) if isinstance(t, np.ndarray) else t.to(torch.int32).numpy())
        if addr % 4:
            raise SimError(f"{what}: int32 data at unaligned address {addr}")
        n = 4 * ((rows - 1) * pitch + cols)
        out = self._slice(self.data, addr, n, what)
        if pitch == cols or rows == 1:  # one contiguous run of bytes
            out.view("<i4")[:] = arr.reshape(-1)
            return
        view = self.data[addr: addr + 4 * rows * pitch] if addr + 4 * rows * pitch <= len(self.data) else None
        if view is None:  # the last row's pitch padding would leave the data space: row by row
            for r in range(rows):
                o = addr + 4 * r * pitch
                self.data[o: o + 4 * cols] = arr[r].view(np.uint8)
            return
        v32 = view.view("<i4").reshape(rows, pitch)
        v32[:, :cols] = arr

    def qblock_np(self, addr: int, rows: int, cols: int, what="INT8 block"):
        """(codes int8 [rows, cols], exponents int64 [rows, 1], mantissas int64 [rows, 1]), copies."""
        raw = self._slice(self.data, addr, rows * cols + 3 * rows, what)
        n = rows * cols
        codes = raw[:n].view(np.int8).reshape(rows, cols).copy()
        exps = raw[n: n + rows].view(np.int8).astype(np.int64).reshape(rows, 1)
        mants = raw[n + rows:].copy().view("<u2").astype(np.int64).reshape(rows, 1)
        return codes, exps, mants

    def qblock(self, addr: int, rows: int, cols: int, what="INT8 block"):
        """(codes int8 [rows, cols], exponents int8 [rows, 1], mantissas int64 [rows, 1])."""
        raw = self._slice(self.data, addr, rows * cols + 3 * rows, what)
        n = rows * cols
        codes = torch.from_numpy(raw[:n].view(np.int8).reshape(rows, cols).copy())
        exps = torch.from_numpy(raw[n: n + rows].view(np.int8).copy()).reshape(rows, 1)
        mants = torch.from_numpy(np.frombuffer(raw[n + rows:].tobytes(), dtype="<u2").astype(np.int64)).reshape(rows, 1)
        return codes, exps, mants

    def put_qblock(self, addr: int, codes: torch.Tensor, exps: torch.Tensor, mants: torch.Tensor | None) -> None:
        rows, cols = codes.shape
        n = rows * cols
        dst = self._slice(self.data, addr, n + 3 * rows, "quant result")
        dst[:n] = codes.to(torch.int8).numpy().reshape(-1).view(np.uint8)
        dst[n: n + rows] = exps.to(torch.int8).numpy().reshape(-1).view(np.uint8)
        m = np.ones(rows, dtype="<u2") if mants is None else mants.to(torch.int64).numpy().reshape(-1).astype("<u2")
        dst[n + rows:] = m.view(np.uint8)

    def entries(self, index: int, n: int) -> np.ndarray:
        raw = self._slice(self.buffers["bias"], 16 * index, 16 * n, "requantization entries")
        return raw.view("<i4").reshape(n, 4)

    # ---- instructions ----------------------------------------------------------------------------
    def _hbm(self, ch: int) -> np.ndarray:
        if ch >= len(self.hbm):
            raise SimError(f"HBM channel {ch} does not exist ({len(self.hbm)} channels)")
        return self.hbm[ch]

    def _bursts(self, i: isa.Instruction) -> np.ndarray:
        n0, n1, n2 = i["n0"], i.get("n1", 1), i.get("n2", 1)
        i2, i1, i0 = np.meshgrid(np.arange(n2), np.arange(n1), np.arange(n0), indexing="ij")
        s1, s2 = i.get("hbm_stride1", 0), i.get("hbm_stride2", 0)
        return (i["hbm_addr"] + i2 * s2 + i1 * s1 + i0 * i["hbm_stride0"]).reshape(-1)

    def _forget_source(self, target: str, addr: int, nbytes: int, source) -> None:
        """Record that buffer bytes [addr, addr + nbytes) of ``target`` now come from ``source``
        ((channel, hbm address, bytes) or None): earlier records they overlap are dropped."""
        if target not in self._src:
            return
        src = self._src[target]
        for a in [a for a in src if a < addr + nbytes and a + (src[a][2] if src[a] else 1) > addr]:
            del src[a]
        src[addr] = source
        if source is not None:
            span = self._src_span.get(source[0])
            if span is None:
                self._src_span[source[0]] = [source[1], source[1] + source[2]]
            else:
                span[0], span[1] = min(span[0], source[1]), max(span[1], source[1] + source[2])

    def _flush_weight(self) -> None:
        """Copy the deferred weight-buffer bytes (the buffer then holds what every LD wrote)."""
        if self._deferred:
            buf = self.buffers["weight"]
            for lo, hi, ch, h in self._deferred:
                buf[lo:hi] = self.hbm[ch][h: h + hi - lo]
            self._deferred = []

    def _trim_deferred(self, lo: int, hi: int) -> list[list[int]]:
        """The deferred pieces without the bytes [lo, hi) (which a later write replaces)."""
        out = []
        for e in self._deferred:
            a, b = e[0], e[1]
            if b <= lo or a >= hi:
                out.append(e)
                continue
            if a < lo:
                out.append([a, lo, e[2], e[3]])
            if b > hi:
                out.append([hi, b, e[2], e[3] + (hi - a)])
        return out

    def do_ld(self, i):
        plan = i.__dict__.get("_sim_ld_plan")
        if plan is not None and plan[0] is self:  # a one-burst LD this core executed before: same views
            _, dst, src, ch, target, buf_addr, start = plan
            total = dst.size
            if target is not None:  # a buffer whose source is recorded (weight, meta, bias)
                self._forget_source(target, buf_addr, total, (ch, start, total))
                if target == "weight":
                    if self._deferred:
                        self._deferred = self._trim_deferred(buf_addr, buf_addr + total)
                    if self._defer:
                        self._deferred.append([buf_addr, buf_addr + total, ch, start])
                        self.stats.hbm_read[ch] = self.stats.hbm_read.get(ch, 0) + total
                        return
            dst[:] = src
            self.stats.hbm_read[ch] = self.stats.hbm_read.get(ch, 0) + total
            return
        target = i.enum("target")
        length, n0, n1, n2 = i["length"], i["n0"], i["n1"], i["n2"]
        total = length * n0 * n1 * n2
        dst = self._slice(self._space(target), i["buf_addr"], total, f"LD into {target}")  # before any burst
        if i["zero_fill"]:
            self._forget_source(target, i["buf_addr"], total, None)
            if target == "weight" and self._deferred:
                self._deferred = self._trim_deferred(i["buf_addr"], i["buf_addr"] + total)
            dst[:] = 0
            return
        ch = i["channel"]
        mem = self._hbm(ch)
        s0, s1, s2 = i["hbm_stride0"], i["hbm_stride1"], i["hbm_stride2"]
        last = i["hbm_addr"] + (n0 - 1) * s0 + (n1 - 1) * s1 + (n2 - 1) * s2  # strides are unsigned
        if last + length > len(mem):
            raise SimError(f"LD reads bytes up to {last + length} of HBM channel {ch} ({len(mem)} bytes)")
        single = n0 * n1 * n2 == 1
        start = i["hbm_addr"]
        # remember where the weight / meta bytes came from: decoded tiles are cached per HBM source
        if target in self._src:
            self._forget_source(target, i["buf_addr"], total, (ch, start, total) if single else None)
        if single:  # its checked views, for the next execution (the target's source record is kept there too)
            object.__setattr__(i, "_sim_ld_plan", (self, dst, mem[start: start + length], ch,
                                                   target if target in self._src else None, i["buf_addr"], start))
        if target == "weight":
            if self._deferred:
                self._deferred = self._trim_deferred(i["buf_addr"], i["buf_addr"] + total)
            if single and self._defer:
                self._deferred.append([i["buf_addr"], i["buf_addr"] + total, ch, start])
                self.stats.hbm_read[ch] = self.stats.hbm_read.get(ch, 0) + total
                return
        if single:
            dst[:] = mem[start: start + length]
        else:
            starts = self._bursts(i)
            idx = (starts[:, None] + np.arange(length)[None, :]).reshape(-1)
            dst[:] = mem[idx]
        self.stats.hbm_read[ch] = self.stats.hbm_read.get(ch, 0) + total

    #: fields a prepared ST takes per execution (the runtime patches a KV append's HBM address every step)
    _ST_ARGS = frozenset(("hbm_addr", "channel"))

    def do_st(self, i):
        anchor = _anchor(i, self._ST_ARGS)
        if anchor is not None:  # one-burst STs keep their checked source view on the (template) instruction
            plan = anchor.__dict__.get("_sim_st_plan")
            if plan is None or plan[0] is not self:
                plan = (self, self._prepare_st(anchor))
                object.__setattr__(anchor, "_sim_st_plan", plan)
            if plan[1] is not None:
                v = i.values
                plan[1](v["channel"], v["hbm_addr"])
                return
        source = i.enum("source")
        length, n0, stride = i["length"], i["n0"], i["hbm_stride0"]
        src = self._slice(self._space(source), i["buf_addr"], length * n0, f"ST from {source}")
        ch = i["channel"]
        mem = self._hbm(ch)
        last = i["hbm_addr"] + (n0 - 1) * stride
        if last + length > len(mem):  # checked before any byte is written
            raise SimError(f"ST writes bytes up to {last + length} of HBM channel {ch} ({len(mem)} bytes)")
        if self._deferred and (source == "weight" or self._deferred_from(ch, i["hbm_addr"], last + length)):
            self._flush_weight()  # the ST reads the weight buffer, or overwrites a deferred piece's source
        for k in range(n0):
            a = i["hbm_addr"] + k * stride
            mem[a: a + length] = src[k * length: (k + 1) * length]
        self._st_written(ch, i["hbm_addr"], last + length, length * n0)

    def _deferred_from(self, ch: int, lo: int, hi: int) -> bool:
        """Whether a deferred weight-buffer piece comes from HBM bytes [lo, hi) of channel ch."""
        return any(c == ch and h < hi and lo < h + b - a for a, b, c, h in self._deferred)

    def _st_written(self, ch: int, lo: int, hi: int, nbytes: int) -> None:
        """After an ST wrote HBM bytes [lo, hi) of channel ch: drop what was decoded or recorded from them."""
        span = self._cached_span.get(ch)
        if span is not None and span[0] < hi and lo < span[1] and \
                any(a < hi and lo < b for a, b in self._cached_hbm[ch]):  # a cached tile's source changed
            self._wcache.clear()
            self._cached_hbm.clear()
            self._cached_span.clear()
        span = self._src_span.get(ch)
        if span is not None and span[0] < hi and lo < span[1]:
            for src in self._src.values():  # buffer bytes loaded from these HBM bytes no longer equal them:
                for a in [a for a, hs in src.items()
                          if hs is not None and hs[0] == ch and hs[1] < hi and lo < hs[1] + hs[2]]:
                    src[a] = None  # nothing decoded from them may be cached under that source (a later LD)
        self.stats.hbm_written[ch] = self.stats.hbm_written.get(ch, 0) + nbytes

    def _prepare_st(self, i):
        """A one-burst ST compiled once per (template) instruction: its source view, checked here. The
        returned function executes it to HBM channel / address given per execution (the fields the
        runtime patches), with do_st's checks and effects in its order. None: not this case."""
        source = i.enum("source")
        length, n0 = i["length"], i["n0"]
        space = self._space(source)
        if n0 != 1 or i["buf_addr"] + length > len(space):
            return None
        src = space[i["buf_addr"]: i["buf_addr"] + length]
        from_weight = source == "weight"
        hbm = self.hbm

        def execute(ch: int, a: int) -> None:
            if ch >= len(hbm):
                raise SimError(f"HBM channel {ch} does not exist ({len(hbm)} channels)")
            mem = hbm[ch]
            hi = a + length
            if hi > len(mem):
                raise SimError(f"ST writes bytes up to {hi} of HBM channel {ch} ({len(mem)} bytes)")
            if self._deferred and (from_weight or self._deferred_from(ch, a, hi)):
                self._flush_weight()
            mem[a: hi] = src
            self._st_written(ch, a, hi, length)

        return execute

    def sparse_weights(self, i, n: int, k: int) -> "SparseTile":
        """Decode an N:16 sparse tile: block-N table and index stream from the meta buffer at
        16 * meta_addr, kept values from the weight buffer at b_addr (docs/isa.md "Semantics")."""
        if n % 16:
            raise SimError(f"a sparse tile has n={n} rows, not a multiple of 16 (one N per 16x16 block)")
        self._flush_weight()
        wfmt = i.enum("wfmt")
        meta = self.buffers["meta"]
        base = 16 * i["meta_addr"]
        bands, groups = n // 16, k // 16
        bn = self._slice(meta, base, bands * groups, "sparse block-N table").astype(np.int64).reshape(bands, groups)
        bad = ~np.isin(bn, (2, 4, 8, 16))
        if bad.any():
            b, c = (int(v) for v in np.argwhere(bad)[0])
            raise SimError(f"block ({b}, {c}) of the sparse tile has N={int(bn[b, c])}; N must be 2, 4, 8 or 16")
        counts = np.repeat(bn, 16, axis=0)  # [n, groups] kept per (row, group)
        kept = int(counts.sum())
        n_idx = int(np.where(counts < 16, counts, 0).sum())
        ibase = base + -(-bands * groups // 16) * 16
        packed = self._slice(meta, ibase, n_idx // 2, "sparse index stream")
        nib = np.empty(n_idx, dtype=np.int64)
        nib[0::2], nib[1::2] = packed & 0xF, packed >> 4
        vbytes = kept if wfmt == "int8" else kept // 2
        raw = self._slice(self.buffers["weight"], i["b_addr"], vbytes, "MM sparse weights")
        if wfmt == "int8":
            vals = raw.view(np.int8).astype(np.int64)
        elif wfmt == "int4":
            vals = np.empty(kept, dtype=np.int64)
            lo, hi = (raw & 0xF).astype(np.int64), (raw >> 4).astype(np.int64)
            vals[0::2], vals[1::2] = np.where(lo > 7, lo - 16, lo), np.where(hi > 7, hi - 16, hi)
        else:
            vals = ovp.unpack(torch.from_numpy(raw.copy()), i.enum("normal")).to(torch.int64).numpy().reshape(-1)
        # in-group index of every kept value: dense groups 0..15 in order, sparse groups from the stream
        flat = counts.reshape(-1)
        grp = np.repeat(np.arange(flat.size), flat)  # (row * groups + group) of each kept value
        pos = np.arange(kept) - np.repeat(np.cumsum(flat) - flat, flat)  # rank inside its group
        is_sparse = np.repeat(flat < 16, flat)
        idx = pos.copy()
        idx[is_sparse] = nib
        rows = grp // groups
        cols = (grp % groups) * 16 + idx
        lengths = counts.sum(axis=1)
        width = int(lengths.max())
        slot = np.arange(kept) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        col_m = np.full((n, width), k, dtype=np.int64)  # column k: an appended zero activation
        val_m = np.zeros((n, width), dtype=np.int64)
        col_m[rows, slot], val_m[rows, slot] = cols, vals
        return SparseTile(torch.from_numpy(col_m), torch.from_numpy(val_m), int(np.abs(vals).max()) if kept else 0)

    def weights(self, i, n: int, k: int) -> torch.Tensor:
        """Decode the weight tile at b_addr into integer grid values [n, k] (int16). With ``wgroup``
        (per-group multipliers: n rows of packed 4-bit multipliers after the n rows of values) the
        values are multiplied by their group's multiplier: the sum of the per-group partial sums
        times the multiplier is the same integer (golden.contract.int_matmul_grouped)."""
        self._flush_weight()
        wfmt = i.enum("wfmt")
        row = k if wfmt == "int8" else k // 2
        raw = self._slice(self.buffers["weight"], i["b_addr"], n * row, "MM weights")
        if wfmt == "int8":
            return torch.from_numpy(raw.view(np.int8).reshape(n, k).astype(np.int16))
        b = raw.reshape(n, row)
        if wfmt == "int4":
            lo = (b & 0xF).astype(np.int16)
            hi = (b >> 4).astype(np.int16)
            v = np.empty((n, k), dtype=np.int16)
            v[:, 0::2] = np.where(lo > 7, lo - 16, lo)
            v[:, 1::2] = np.where(hi > 7, hi - 16, hi)
            values = torch.from_numpy(v)
        else:
            values = ovp.unpack(torch.from_numpy(b.copy()), i.enum("normal")).to(torch.int16)
        group = isa.WEIGHT_GROUP_SIZE[i.enum("wgroup")]
        if group is None:
            return values
        groups, gbytes = -(-k // group), group_row_bytes(group, k)
        packed = self._slice(self.buffers["weight"], i["b_addr"] + n * row, n * gbytes, "MM group multipliers")
        gm = unpack_group_mult(packed.reshape(n, gbytes), groups)
        if int(gm.min()) < 1:
            raise SimError("a per-group weight multiplier is 0; multipliers are 1..15 (docs/contract.md 2a)")
        return contract.grouped_values(values, torch.from_numpy(gm.copy()), group)

    @staticmethod
    def _check_mantissas(mant, what: str) -> None:
        if mant.size and int(mant.max()) > MAX_MANTISSA:
            raise SimError(f"{what}: a row mantissa is {int(mant.max())}; mantissas are at most {MAX_MANTISSA}")

    @staticmethod
    def _multipliers_np(mult_word: np.ndarray, shift_word: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(multipliers, shifts) as int64 from (uint32 multiplier, int32 shift) words; a multiplier's
        bit 31 must be 0."""
        mult = _u32(mult_word)
        if int(mult.max()) >= 1 << 31:
            r = int(np.argmax(mult >= 1 << 31))
            raise SimError(f"{what} {r}: multiplier {int(mult[r])} has bit 31 set; multipliers are below 2**31")
        return mult, shift_word.astype(np.int64)

    @classmethod
    def _multipliers(cls, mult_word: np.ndarray, shift_word: np.ndarray, what: str) -> contract.Multiplier:
        """:meth:`_multipliers_np` as golden's Multiplier."""
        mult, shift = cls._multipliers_np(mult_word, shift_word, what)
        return contract.Multiplier(torch.from_numpy(mult), torch.from_numpy(shift))

    def check_mpe(self, i) -> None:
        """The field rules of MM/MV (docs/isa.md "Validity"), checked before any operand is read."""
        mode, m, n, k = i.enum("mode"), i["m"], i["n"], 16 * i["k_blocks"]
        ldo = i["ldo"] or n
        if ldo < n:
            raise SimError(f"output pitch ldo={ldo} is smaller than the row length n={n} (rows would overlap)")
        ovp_act = i.enum("afmt") == "ovp4"
        if i.enum("anormal") != "int4" and not ovp_act:
            raise SimError(f"anormal={i.enum('anormal')} applies to afmt=ovp4 only (must be int4 with afmt=int8)")
        if ovp_act and (mode != "linear" or i.enum("wfmt") != "ovp4" or i["sparse"]):
            raise SimError(f"afmt=ovp4 (the OVP array's W4A4 product) needs mode=linear, wfmt=ovp4 and sparse=0, "
                           f"not mode={mode}, wfmt={i.enum('wfmt')}, sparse={i['sparse']}")
        if i["bias"] and i.enum("out") != "fixed32":
            raise SimError(f"bias=1 needs out=fixed32 (the bias is added to the requantized value), "
                           f"not out={i.enum('out')}")
        if i.enum("wgroup") != "none" and (mode != "linear" or i["sparse"] or ovp_act or i.enum("wfmt") == "int8"):
            raise SimError(f"wgroup={i.enum('wgroup')} (per-group weight multipliers) needs mode=linear, sparse=0, "
                           f"afmt=int8 and wfmt=int4 or ovp4, not mode={mode}, sparse={i['sparse']}, "
                           f"afmt={i.enum('afmt')}, wfmt={i.enum('wfmt')}")
        if mode == "linear":
            if i["sparse"] and n % 16:
                raise SimError(f"a sparse tile has n={n} rows, not a multiple of 16 (one N per 16x16 block)")
            if not i["sparse"] and i["meta_addr"]:
                raise SimError(f"meta_addr={i['meta_addr']} is set but sparse=0 (meta_addr must be 0)")
            if i.enum("normal") != "int4" and i.enum("wfmt") != "ovp4":
                raise SimError(f"normal={i.enum('normal')} applies to wfmt=ovp4 only "
                               f"(must be int4 with wfmt={i.enum('wfmt')})")
            a_bytes = m * k // 2 if ovp_act else m * k + 3 * m
            b_region = None  # the weights live in the weight buffer
        else:
            if i["sparse"]:
                raise SimError(f"sparse=1 applies to weights (mode=linear), not to mode={mode}")
            for name in ("bias", "wfmt", "normal", "meta_addr"):
                if i[name]:
                    raise SimError(f"{name} must be 0 in mode={mode} (both operands come from the data space)")
            a_bytes = m * k + 3 * m if mode == "qk" else 4 * m * k + m
            b_region = (i["b_addr"], n * k + 3 * n if mode == "qk" else k * n)
        out_bytes = (m - 1) * ldo + n if i.enum("out") == "int8" else 4 * ((m - 1) * ldo + n)
        out = (i["out_addr"], out_bytes)
        for what, region in (("activations (a_addr)", (i["a_addr"], a_bytes)), ("second operand (b_addr)", b_region)):
            if region is not None and _overlap(out, region):
                raise SimError(f"the output [{out[0]}, {out[0] + out[1]}) overlaps the {what} "
                               f"[{region[0]}, {region[0] + region[1]})")

    #: the field values (name, value pairs) of instructions that passed their field rules: the runtime's
    #: patched instructions are new objects every step, mostly with values met before
    _valid_fields: set = set()
    _VALID_FIELDS_MAX = 1 << 16

    @classmethod
    def _checked_once(cls, i, check) -> None:
        """Run a field-rule check once per (immutable) instruction object, and once per set of field
        values (the rules are a function of the values alone): programs run many times."""
        if not i.__dict__.get("_sim_fields_valid"):
            key = tuple(i.values.items())
            if key not in cls._valid_fields:
                check(i)
                if len(cls._valid_fields) >= cls._VALID_FIELDS_MAX:
                    cls._valid_fields.clear()
                cls._valid_fields.add(key)
            object.__setattr__(i, "_sim_fields_valid", True)

    def do_mpe(self, i):
        prep = i.__dict__.get("_sim_prepared")
        if prep is None:
            self._checked_once(i, self.check_mpe)
            prep = (self, self._prepare_linear(i))
            object.__setattr__(i, "_sim_prepared", prep)
        if prep[0] is self and prep[1] is not None and prep[1]():
            return
        self._checked_once(i, self.check_mpe)
        v = i.values
        mode = i.enum("mode")
        m, n, k = v["m"], v["n"], 16 * v["k_blocks"]
        ldo = v["ldo"] or n
        out_fmt = i.enum("out")
        # per mode: acc (int32 [m, n]), requantization entries (n for linear, 1 otherwise), exponent,
        # mantissa, bias; numpy throughout (per-instruction torch calls cost more than the arithmetic)
        bias = fast = None
        if mode == "linear":
            if v["afmt"]:  # OVP4 block: pair codes only (static per-tensor scale: exponent 0, mantissa 1)
                codes = self._slice(self.data, v["a_addr"], m * k // 2, "MM OVP4 activations").reshape(m, k // 2)
                a = ovp.unpack(torch.from_numpy(codes.copy()), i.enum("anormal")).numpy()
                exp, mant = np.zeros((m, 1), dtype=np.int64), None
                mant_parts = ()
            else:
                a, exp, mant = self.qblock_np(v["a_addr"], m, k, "MM activations")
                mant_parts = (mant,)
            row = (k if v["wfmt"] == 0 else k // 2) + group_row_bytes(isa.WEIGHT_GROUP_SIZE[i.enum("wgroup")], k)
            src = self._src["weight"].get(v["b_addr"])
            msrc = self._src["meta"].get(16 * v["meta_addr"]) if v["sparse"] else None
            key = None if src is None or (v["sparse"] and msrc is None) or (not v["sparse"] and src[2] < n * row) \
                else (src, msrc, v["wfmt"], v["normal"], v["wgroup"], n, k)
            tile = self._wcache.get(key) if key is not None else None
            if tile is None:
                tile = self.sparse_weights(i, n, k) if v["sparse"] else DenseTile(self.weights(i, n, k))
                if key is not None:
                    self._wcache[key] = tile
                    for hs in key[:2]:
                        if hs is not None:
                            self._note_cached(hs[0], hs[1], hs[1] + hs[2])
            ent = self.entries(v["bias_addr"], n)
            esrc = self._src["bias"].get(16 * v["bias_addr"])
            if esrc is not None and esrc[2] >= 16 * n and m == 1 and out_fmt != "int32":
                fast = ("entries", esrc, n)  # the entries as their LD brought them: decoded once
            elif v["bias"]:
                bias = ent[:, 0].astype(np.int64)
            acc = (tile.matmul_grid(torch.from_numpy(a)) if v["afmt"] else tile.matmul(torch.from_numpy(a))).numpy()
        elif mode == "qk":
            a, ea, ma = self.qblock_np(v["a_addr"], m, k, "Q block")
            b, eb, mb = self.qblock_np(v["b_addr"], n, k, "K block")
            mant_parts = (ma, mb)
            acc = _int_matmul_np(a, b, 128)
            mant = ma * mb.reshape(1, n)
            ent = self.entries(v["bias_addr"], 1)
            exp = ea + eb.reshape(1, n)
        else:  # pv
            p = self.i32_np(v["a_addr"], m, k, what="P' block")
            raw = self._slice(self.data, v["a_addr"] + 4 * m * k, m, "P' exponents")
            exp = raw.view(np.int8).astype(np.int64).reshape(m, 1)
            vq = self._slice(self.data, v["b_addr"], k * n, "V block").view(np.int8).reshape(k, n)
            acc = _int_matmul_np(p, vq.T, None)
            mant, mant_parts = None, ()
            ent = self.entries(v["bias_addr"], 1)
        if v["accumulate"]:
            acc = _wrap32(acc.astype(np.int64) + self.i32_np(v["out_addr"], m, n, ldo))
        y = None
        if fast is not None:
            if mant is not None:
                self._check_mantissas(mant, "activation block")
            y = _requantize_row(acc, self._linear_entries(fast, ent), int(exp[0, 0]),
                                None if mant is None else int(mant[0, 0]), out_fmt == "int8", v["bias"])
            if y is None and v["bias"]:
                bias = ent[:, 0].astype(np.int64)
        if y is None:
            y = self._mpe_output(mode, out_fmt, acc, ent, exp, mant, mant_parts, bias)
        if y.dtype == np.int32:
            self.put_i32(v["out_addr"], y, ldo, "MM output")
        else:
            dst = self._slice(self.data, v["out_addr"], (m - 1) * ldo + n, "MM int8 output")
            for r in range(m):
                dst[r * ldo: r * ldo + n] = y[r].view(np.uint8)

    def _prepare_linear(self, i):
        """A linear MV's common case compiled once per instruction (its fields are checked): one INT8
        activation row, dense weights, requantized output (int8 or fixed32) at a 4-aligned address, every
        operand inside its buffer. The returned function executes it from views of the buffers made
        here, when the weight tile and the requantization entries are cached under the sources of the
        buffers' last LDs, and returns True; it returns False, having changed nothing, where the general
        path of do_mpe must run (a miss of either cache, a mantissa above 256 or a requantization outside
        the one-product rule: that path decodes and caches, or raises the error). None: not this case."""
        v = i.values
        n, k, out_fmt = v["n"], 16 * v["k_blocks"], i.enum("out")
        if (v["mode"] or v["afmt"] or v["sparse"] or v["m"] != 1 or v["accumulate"] or out_fmt == "int32"
                or _INT_MM is None or v["out_addr"] % 4):
            return None
        data, a_addr, out_addr = self.data, v["a_addr"], v["out_addr"]
        width = n if out_fmt == "int8" else 4 * n
        if a_addr + k + 3 > len(data) or out_addr + width > len(data) or 16 * (v["bias_addr"] + n) > \
                len(self.buffers["bias"]):
            return None
        codes_np = data[a_addr: a_addr + k].view(np.int8)
        codes = torch.from_numpy(codes_np.reshape(1, k))
        gemv = int8_gemv.Gemv(k)
        exp_byte, mant_bytes = data[a_addr + k: a_addr + k + 1].view(np.int8), data[a_addr + k + 1: a_addr + k + 3]
        out = data[out_addr: out_addr + width].view(np.int8 if out_fmt == "int8" else "<i4")
        int8, with_bias = out_fmt == "int8", bool(v["bias"])
        row = (k if v["wfmt"] == 0 else k // 2) + group_row_bytes(isa.WEIGHT_GROUP_SIZE[i.enum("wgroup")], k)
        b_addr, e_addr, tile_rest = v["b_addr"], 16 * v["bias_addr"], (v["wfmt"], v["normal"], v["wgroup"], n, k)
        wsrc, bsrc, cache = self._src["weight"], self._src["bias"], self._wcache

        def execute() -> bool:
            src = wsrc.get(b_addr)
            esrc = bsrc.get(e_addr)
            if src is None or src[2] < n * row or esrc is None or esrc[2] < 16 * n:
                return False
            tile = cache.get((src, None) + tile_rest)
            entries = cache.get(("entries", esrc, n))
            mant = int(mant_bytes[0]) | int(mant_bytes[1]) << 8
            if tile is None or entries is None or mant > MAX_MANTISSA:
                return False
            if type(tile) is DenseTile and tile.packed is not None:
                gemv.row[:] = codes_np  # exact: int8 codes in float32
                acc = gemv.run(tile.packed)
            elif type(tile) is DenseTile and tile.i8 is not None:
                acc = _INT_MM(codes, tile.i8)
            else:
                acc = tile.matmul(codes)
            y = _requantize_row(acc.numpy(), entries, int(exp_byte[0]), mant, int8, with_bias)
            if y is None:
                return False
            out[:] = y.reshape(-1)
            return True

        return execute

    def _note_cached(self, ch: int, lo: int, hi: int) -> None:
        """Something cached was decoded from HBM bytes [lo, hi) of channel ch (an ST into them clears the cache)."""
        self._cached_hbm.setdefault(ch, []).append((lo, hi))
        span = self._cached_span.get(ch)
        if span is None:
            self._cached_span[ch] = [lo, hi]
        else:
            span[0], span[1] = min(span[0], lo), max(span[1], hi)

    def _linear_entries(self, key: tuple, ent: np.ndarray) -> "LinearEntries":
        """The requantization entries ``ent`` of a linear tile, decoded once per HBM source of their LD
        (cached with the weight tiles: an ST into that source clears both). A multiplier with bit 31
        raises each time (it is never cached)."""
        p = self._wcache.get(key)
        if p is None:
            mult, shift = self._multipliers_np(ent[:, 1], ent[:, 2], "requantization entry")
            bias = ent[:, 0].astype(np.int64)
            p = self._wcache[key] = LinearEntries(mult, shift, bias, int(shift.min()), int(shift.max()),
                                                  int(mult.max()), int(np.abs(bias).max()), {})
            ch, h, nbytes = key[1]
            self._note_cached(ch, h, h + nbytes)
        return p

    def _mpe_output(self, mode: str, out_fmt: str, acc, ent, exp, mant, mant_parts, bias) -> np.ndarray:
        """The MPE's output rows from the int32 accumulators: int32 as they are (out=int32), else
        requantized with the entries ``ent`` (fixed32: int32 plus the saturating bias; int8: int8)."""
        if out_fmt == "int32":
            return np.ascontiguousarray(acc, dtype=np.int32)
        # the requantizer's inputs: mantissas of 9 bits, multipliers below 2**31 (checked only when used)
        for part, what in zip(mant_parts, ("activation block" if mode == "linear" else "Q block", "K block")):
            self._check_mantissas(part, what)
        mult, shift = self._multipliers_np(ent[:, 1], ent[:, 2], "requantization entry")
        lo, hi = (contract.INT32_MIN, contract.INT32_MAX) if out_fmt == "fixed32" else (-contract.INT8_QMAX,
                                                                                         contract.INT8_QMAX)
        y = requantize_exact(acc, mult, shift, exp, mant, lo, hi)
        if out_fmt == "fixed32":
            if bias is not None:  # the bias is in the output format, added with saturation
                y = np.minimum(np.maximum(y + bias, contract.INT32_MIN), contract.INT32_MAX)
            return y.astype(np.int32)
        return y.astype(np.int8)

    #: MISC ops that read src1 / use imm / may write in place over src0 (dst == src0, same layout)
    _MISC_SRC1 = ("add", "mul", "swiglu", "rmsnorm", "rope", "vshift")
    _MISC_IMM = ("rope", "softmax", "vshift", "quant", "dequant")
    _MISC_IN_PLACE = ("add", "mul", "swiglu", "silu", "copy", "rmsnorm", "rope", "softmax")

    def check_misc(self, i) -> None:
        """The field rules of MISC (docs/isa.md "Validity"), checked before any operand is read."""
        op = i.enum("op")
        rows, cols, imm = i["rows"], i["cols"], i["imm"]
        if op in ("layernorm", "argmax"):
            raise SimError(f"MISC op {op!r} is reserved (not implemented by the functional simulator)")
        if i["mask"] and op != "softmax":
            raise SimError(f"mask=1 applies to op=softmax only, not to op={op}")
        ovp_quant = op == "quant" and bool(imm & QUANT_OVP4)
        if op not in self._MISC_SRC1 and i["src1"] and not ovp_quant:
            raise SimError(f"op={op}{' without OVP4 mode (imm[17] = 0)' if op == 'quant' else ''} has no second "
                           f"operand: src1 must be 0, not {i['src1']}")
        if imm and (op not in self._MISC_IMM or (op == "softmax" and not i["mask"])):
            raise SimError(f"op={op}{' with mask=0' if op == 'softmax' else ''} takes no parameter: imm must be 0, "
                           f"not {imm}")
        per = max(1, imm >> 16)
        if op == "rope":
            if cols % 2 or cols > ROPE_MAX_HEAD_DIM:
                raise SimError(f"RoPE head dimension cols={cols} must be even and at most {ROPE_MAX_HEAD_DIM}")
            last = (imm & 0xFFFF) + (rows - 1) // per
            if last >= ROPE_POSITIONS:
                raise SimError(f"RoPE position {last} of the last row is beyond the table ({ROPE_POSITIONS} positions)")
        if op in ("softmax", "vshift") and (op == "vshift" or i["mask"]):
            last = (imm & 0xFFFF) + min(rows, per) - 1
            if last >= cols:
                raise SimError(f"query position {last} (imm[15:0] + min(rows, period) - 1) is not below the key "
                               f"count cols={cols}")
        if op == "rmsnorm" and cols > sfu.NORM_MAX_DIM:
            raise SimError(f"rmsnorm rows of cols={cols} exceed the norm unit's {sfu.NORM_MAX_DIM} elements")
        if op == "quant":
            if imm >> 19:
                raise SimError(f"quant imm=0x{imm:x}: bits [31:19] are reserved and must be 0")
            if imm & QUANT_FLINT4 and not ovp_quant:
                raise SimError(f"quant imm=0x{imm:x}: imm[18] (flint4 normal type) needs the OVP4 mode imm[17] = 1")
            if ovp_quant:
                if imm & (QUANT_POW2 | 0xFFFF):
                    raise SimError(f"quant imm=0x{imm:x}: the OVP4 mode (imm[17]) takes no head blocks (imm[15:0] "
                                   "= 0) and no power-of-two INT8 scale (imm[16] = 0)")
                if cols % 2:
                    raise SimError(f"OVP4 quant pairs elements (2k, 2k+1) along a row: cols={cols} must be even")
                if i["src1"] % 4:
                    raise SimError(f"OVP4 quant parameter record at unaligned address {i['src1']} (4-byte aligned)")
            groups = max(1, imm & 0xFFFF)
            if rows % groups:
                raise SimError(f"quant into {groups} head blocks needs rows ({rows}) divisible by {groups}")
        if op == "dequant":
            need = -(-cols // 16) * 16 + 16
            if imm < need or imm % 16:
                raise SimError(f"embedding record stride imm={imm} must be a multiple of 16 and at least "
                               f"pad16(cols) + 16 = {need}")
        # the destination is either the first operand itself (elementwise ops, same layout) or disjoint from it
        src0 = (i["src0"], {"dequant": rows * imm}.get(op, 4 * rows * cols))
        if op == "vshift":
            dst = (i["dst"], 4 * rows * cols + rows)
        elif op == "quant":
            dst = (i["dst"], rows * cols // 2 if ovp_quant else self._quant_bytes(rows, cols, max(1, imm & 0xFFFF)))
        else:
            dst = (i["dst"], 4 * rows * cols)
        if _overlap(src0, dst) and not (op in self._MISC_IN_PLACE and src0[0] == dst[0]):
            raise SimError(f"the destination [{dst[0]}, {dst[0] + dst[1]}) partly overlaps src0 "
                           f"[{src0[0]}, {src0[0] + src0[1]})" + (" (only an exact in-place dst = src0 is allowed)"
                                                                   if op in self._MISC_IN_PLACE else ""))
        if ovp_quant and _overlap((i["src1"], OVP_QUANT_RECORD), dst):
            raise SimError(f"the destination [{dst[0]}, {dst[0] + dst[1]}) overlaps the OVP4 quant parameter record "
                           f"at src1={i['src1']}")
        if op in ("add", "mul", "swiglu") and _overlap((i["src1"], 4 * rows * cols), dst) and i["src1"] != dst[0]:
            raise SimError(f"the destination [{dst[0]}, {dst[0] + dst[1]}) partly overlaps src1")

    @staticmethod
    def _quant_bytes(rows: int, cols: int, groups: int) -> int:
        if groups == 1:
            return rows * cols + 3 * rows
        t = rows // groups
        return (groups - 1) * (-(-(t * cols + 3 * t) // 64) * 64) + t * cols + 3 * t

    def _table(self, addr: int, nbytes: int, what: str) -> np.ndarray:
        if addr % 4:
            raise SimError(f"{what}: int32 data at unaligned address {addr}")
        return self._slice(self.data, addr, nbytes, what)

    #: MISC ops whose prepared form takes imm per execution (the runtime patches their query / RoPE position
    #: every step; their other field rules and the byte ranges they touch do not depend on imm)
    _IMM_OPS = frozenset(("softmax", "vshift", "rope"))
    _IMM_ARGS = frozenset(("imm",))
    _NO_ARGS = frozenset()

    def do_misc(self, i):
        anchor = _anchor(i, self._IMM_ARGS if i.enum("op") in self._IMM_OPS else self._NO_ARGS)
        if anchor is not None:
            prep = anchor.__dict__.get("_sim_prepared")
            if prep is None or prep[0] is not self:
                self._checked_once(i, self.check_misc)
                prep = (self, self._prepare_misc(i))
                object.__setattr__(anchor, "_sim_prepared", prep)
            if prep[1] is not None and prep[1]((i,)):
                return
        self._checked_once(i, self.check_misc)
        op = i.enum("op")
        rows, cols, imm = i["rows"], i["cols"], i["imm"]
        s0, s1, dst = i["src0"], i["src1"], i["dst"]
        if op in ("add", "mul", "swiglu"):
            a, b = self.i32_np(s0, rows, cols), self.i32_np(s1, rows, cols)
            y = sfu_np.add(a, b) if op == "add" else (sfu_np.mul(a, b, F, F, F) if op == "mul"
                                                      else sfu_np.swiglu(a, b, F, F, F))
            self.put_i32(dst, y)
        elif op == "silu":
            self.put_i32(dst, sfu_np.silu(self.i32_np(s0, rows, cols), F, F))
        elif op == "copy":
            self.put_i32(dst, self.i32_np(s0, rows, cols))
        elif op == "rmsnorm":
            x = self.i32_np(s0, rows, cols)
            tab = self._table(s1, 4 * cols + 16, "norm parameters").view("<i4")
            gamma = tab[:cols]
            em, es = int(tab[cols:cols + 1].view(np.uint32)[0]), int(tab[cols + 1])
            if em >= 1 << 31 or not 0 <= es <= 62:
                raise SimError(f"norm eps multiplier {em} / shift {es}: the multiplier must be below 2**31 and the "
                               "shift in 0..62")
            # d * eps * 2**(2F) < 2**61 for the row width itself (docs/isa.md data rule), whatever the
            # rows hold (golden checks only the alignment shifts its rows need; the RTL checks this)
            s = es - 2 * F
            e0 = cols * em << -s if s <= 0 else (cols * em + (1 << (s - 1))) >> s
            if e0 >= 1 << 61:
                raise SimError(f"norm eps multiplier {em} / shift {es} with {cols} columns: d * eps * 2**{2 * F} = "
                               f"{e0} must stay below 2**61 (a smaller eps)")
            eps = math.ldexp(float(em), -es)
            self.put_i32(dst, sfu_np.rmsnorm(x, F, gamma, F, eps, F))
        elif op == "rope":
            x = self.i32_np(s0, rows, cols)
            theta, hd, scaling = self._rope_record(s1, cols)
            self.put_i32(dst, rope_padded_np(x, self._rope_positions(rows, imm), theta, hd, scaling))
        elif op == "softmax":
            sc = self.i32_np(s0, rows, cols)
            mask = None
            if i["mask"]:
                qpos = (imm & 0xFFFF) + np.arange(rows) % max(1, imm >> 16)
                mask = np.arange(cols)[None, :] <= qpos[:, None]
            self.put_i32(dst, sfu_np.softmax(sc, F, mask, F))
        elif op == "vshift":
            p = self.i32_np(s0, rows, cols).astype(np.int64)
            p_sh, e_ref = self._vshift(p.reshape(1, rows, cols), s1, rows, cols, imm)
            self.put_i32(dst, p_sh[0])
            out = self._slice(self.data, dst + 4 * rows * cols, rows, "vshift exponents")
            out[:] = e_ref.view(np.uint8)
        elif op == "quant" and imm & QUANT_OVP4:
            x = self.i32_np(s0, rows, cols)
            rec = self._slice(self.data, s1, OVP_QUANT_RECORD, "OVP4 quant parameters").view("<i4")
            mult = int(rec[0:1].view(np.uint32)[0])
            if mult >= 1 << 31:
                raise SimError(f"OVP4 quant parameters: multiplier {mult} has bit 31 set; multipliers are below 2**31")
            codes = quantize_rows_ovp4(x, mult, int(rec[1]), "flint4" if imm & QUANT_FLINT4 else "int4")
            self._slice(self.data, dst, rows * cols // 2, "OVP4 quant result")[:] = codes.reshape(-1)
        elif op == "quant":
            x = self.i32_np(s0, rows, cols)
            groups = max(1, imm & 0xFFFF)
            out = self._slice(self.data, dst, self._quant_bytes(rows, cols, groups), "quant result")
            blocks = _head_blocks(*quantize_rows_exact(x, pow2=bool(imm & QUANT_POW2)), groups)
            _rows_view(out, 0, blocks.shape, _block_pitch(rows, cols, groups))[:] = blocks
        else:  # dequant
            rec = imm
            raw = self._slice(self.data, s0, rows * rec, "embedding records").reshape(rows, rec)
            codes = torch.from_numpy(raw[:, :cols].view(np.int8).astype(np.int64))
            off = -(-cols // 16) * 16
            mm = raw[:, off: off + 8].copy().view("<i4")
            mult = self._multipliers(mm[:, 0], mm[:, 1], "embedding record")
            mult = contract.Multiplier(mult.mult.reshape(rows, 1), mult.shift.reshape(rows, 1))
            self.put_i32(dst, contract.apply_multiplier(codes, mult).to(torch.int32))

    def _prepare_quant_row(self, i):
        """MISC quant (INT8, one head block) of one int32 row compiled once per instruction (its fields are
        checked): the row and the result (codes, exponent, mantissa) as views of the data space made here,
        when both lie inside it and the row is aligned. None: not this case (do_misc's general path)."""
        v = i.values
        if i.enum("op") != "quant" or v["rows"] != 1 or v["imm"] & ~(QUANT_POW2 | 1) or v["src0"] % 4:
            return None
        cols, s0, d = v["cols"], v["src0"], v["dst"]
        data = self.data
        if s0 + 4 * cols > len(data) or d + cols + 3 > len(data):
            return None
        row = data[s0: s0 + 4 * cols].view("<i4").reshape(1, cols)
        codes, exp, mant = data[d: d + cols].view(np.int8), data[d + cols: d + cols + 1].view(np.int8), \
            data[d + cols + 1: d + cols + 3]
        pow2 = bool(v["imm"] & QUANT_POW2)

        def execute(insts) -> bool:
            q, e, m = quantize_rows_exact(row, pow2)  # reads the row (an int64 copy) before writing
            codes[:] = q.reshape(-1)
            exp[:] = e
            mant[:] = m.view(np.uint8)
            return True

        return execute

    def _prepare_misc(self, i):
        """do_misc's prepared form of ``i`` (fields checked): a one-row quant (:meth:`_prepare_quant_row`),
        or a one-instruction :meth:`_prepare_misc_run`. None: the general path."""
        op, v = i.enum("op"), i.values
        if op == "quant" and v["rows"] == 1 and not v["imm"] & ~(QUANT_POW2 | 1):
            return self._prepare_quant_row(i)
        if op == "softmax":
            return self._prepare_softmax(i)
        if op in ("add", "swiglu", "rmsnorm"):
            return self._prepare_elementwise(i)
        return self._prepare_misc_run([i])

    def _prepare_elementwise(self, i):
        """MISC add / swiglu / rmsnorm compiled once per instruction (fields checked): views of its int32
        rows, its second operand (rows, or the norm's gamma + eps record) and its result (aligned, inside
        the data space). The functions read their operands (int64 copies) before the result is written,
        so dst = src0 in place is as one by one. rmsnorm's eps record is read and checked at each
        execution; where it breaks a rule the function returns False, having written nothing (the general
        path raises it). None: not this case."""
        op, v = i.enum("op"), i.values
        rows, cols, s0, s1, d = v["rows"], v["cols"], v["src0"], v["src1"], v["dst"]
        n, size = 4 * rows * cols, len(self.data)
        n1 = 4 * cols + 16 if op == "rmsnorm" else n
        if s0 % 4 or s1 % 4 or d % 4 or max(s0 + n, s1 + n1, d + n) > size:
            return None
        x = self.data[s0: s0 + n].view("<i4").reshape(rows, cols)
        out = self.data[d: d + n].view("<i4").reshape(rows, cols)
        if op != "rmsnorm":
            y = self.data[s1: s1 + n].view("<i4").reshape(rows, cols)
            if op == "add":
                def execute(insts) -> bool:
                    out[:] = sfu_np.add(x, y)
                    return True
            else:
                def execute(insts) -> bool:
                    out[:] = sfu_np.swiglu(x, y, F, F, F)
                    return True
            return execute
        tab = self.data[s1: s1 + n1].view("<i4")
        gamma, em_word = tab[:cols], tab[cols:cols + 1].view(np.uint32)
        eps_known: dict = {}  # (eps multiplier, shift) -> eps, once its rules held

        def execute(insts) -> bool:
            key = (int(em_word[0]), int(tab[cols + 1]))
            eps = eps_known.get(key)
            if eps is None:
                em, es = key
                if em >= 1 << 31 or not 0 <= es <= 62:
                    return False
                s = es - 2 * F
                e0 = cols * em << -s if s <= 0 else (cols * em + (1 << (s - 1))) >> s
                if e0 >= 1 << 61:
                    return False
                eps = eps_known[key] = math.ldexp(float(em), -es)
            out[:] = sfu_np.rmsnorm(x, F, gamma, F, eps, F)
            return True

        return execute

    def _prepare_softmax(self, i):
        """MISC softmax compiled once per (template) instruction: views of its rows and result (aligned,
        inside the data space), the mask built from each execution's imm, whose field rule (the last query
        position below cols) is checked here; the returned function returns False, having written nothing,
        where it breaks (the general path raises it). None: not this case."""
        v = i.values
        rows, cols, s0, d = v["rows"], v["cols"], v["src0"], v["dst"]
        n = 4 * rows * cols
        if s0 % 4 or d % 4 or s0 + n > len(self.data) or d + n > len(self.data):
            return None
        x = self.data[s0: s0 + n].view("<i4").reshape(rows, cols)
        out = self.data[d: d + n].view("<i4").reshape(rows, cols)
        masked = bool(v["mask"])
        row_ids, col_ids = np.arange(rows), np.arange(cols)[None, :]

        def compute(insts, rows_in=x):
            """The result rows (int32) from ``rows_in`` (default: the src0 rows in the data space), or None."""
            imm = insts[0].values["imm"]
            mask = None
            if masked:
                per, first = max(1, imm >> 16), imm & 0xFFFF
                if first + min(rows, per) - 1 >= cols:
                    return None
                mask = col_ids <= (first + row_ids % per)[:, None] if per < rows else col_ids <= first + row_ids[:, None]
            elif imm:
                return None
            return sfu_np.softmax(rows_in, F, mask, F)  # reads the rows (an int64 copy) before writing

        def execute(insts) -> bool:
            y = compute(insts)
            if y is None:
                return False
            out[:] = y
            return True

        def write(y) -> None:
            out[:] = y

        execute.compute, execute.write = compute, write
        return execute

    def _prepare_misc_run(self, insts: list):
        """MISC vshift, RoPE or INT8 quant of ``insts`` (one instruction, or a run: independent, one run key)
        compiled once for these (template) instructions, their fields checked: gather indices of their
        int32 rows and views of their results (every one aligned and inside the data space). The returned
        function computes every result from each execution's imm (the position the runtime patches; its
        field rule is checked there) before writing any, and returns True; or False, having written
        nothing, where a rule breaks or an operand faults (the general path then raises it). None: not
        this case."""
        first = insts[0]
        op, v = first.enum("op"), first.values
        if op not in ("vshift", "rope") and (op != "quant" or v["imm"] & QUANT_OVP4):
            return None
        for i in insts:
            self._checked_once(i, self.check_misc)
        data, size = self.data, len(self.data)
        data32 = data[: size - size % 4].view("<i4")
        cols = v["cols"]
        rows = [i.values["rows"] for i in insts]
        src0 = [i.values["src0"] for i in insts]
        dsts = [i.values["dst"] for i in insts]
        if any(a % 4 or a + 4 * r * cols > size for a, r in zip(src0, rows)):
            return None
        idx = np.concatenate([a // 4 + np.arange(r * cols) for a, r in zip(src0, rows)])
        total = sum(rows)
        bounds = np.cumsum([0] + rows).tolist()
        if op == "vshift":
            r, s1 = rows[0], v["src1"]
            if s1 + 3 * cols > size or any(d % 4 or d + 4 * r * cols + r > size for d in dsts):
                return None
            ev = data[s1: s1 + cols].view(np.int8)
            mv = data[s1 + cols: s1 + 3 * cols].view("<u2")
            outs = [(data[d: d + 4 * r * cols].view("<i4"), data[d + 4 * r * cols: d + 4 * r * cols + r])
                    for d in dsts]
            b = len(insts)

            def compute(run, p=None):
                """(shifted int32 [b, r, cols], exponent bytes [r]) from the P' rows ``p`` (int [b * r, cols];
                default: the src0 rows in the data space), or None where a rule breaks."""
                imm = run[0].values["imm"]  # one run key: one imm
                if (imm & 0xFFFF) + min(r, max(1, imm >> 16)) - 1 >= cols:
                    return None
                mvv = mv.astype(np.int64)
                if int(mvv.max()) > MAX_MANTISSA:
                    return None
                p_sh, e_ref = _vshift_rows((data32[idx] if p is None else p).astype(np.int64).reshape(b, r, cols),
                                           ev.astype(np.int64), mvv, r, cols, imm)
                return p_sh, e_ref.view(np.uint8)

            def write(result) -> None:
                p_sh, e_bytes = result
                for (o32, oe), y in zip(outs, p_sh):
                    o32[:] = y.reshape(-1)
                    oe[:] = e_bytes

            def execute(run) -> bool:
                result = compute(run)
                if result is None:
                    return False
                write(result)
                return True

            execute.compute, execute.write = compute, write
            return execute
        if op == "rope":
            s1 = v["src1"]
            if s1 % 8 or s1 + 48 > size or any(d % 4 or d + 4 * r * cols > size for d, r in zip(dsts, rows)):
                return None
            record = data[s1: s1 + 48]
            outs = [data[d: d + 4 * r * cols].view("<i4") for d, r in zip(dsts, rows)]
            row_ids = [np.arange(r) for r in rows]
            records: dict = {}  # the record's bytes -> (theta, head_dim, scaling)

            def execute(run) -> bool:
                pos = []
                for i, ids, r in zip(run, row_ids, rows):
                    imm = i.values["imm"]
                    per, first_pos = max(1, imm >> 16), imm & 0xFFFF
                    if first_pos + (r - 1) // per >= ROPE_POSITIONS:
                        return False
                    pos.append(first_pos + (ids // per if per > 1 else ids))
                key = record.tobytes()
                rec = records.get(key)
                try:
                    if rec is None:
                        rec = records[key] = self._rope_record(s1, cols)
                    y = rope_padded_np(data32[idx].reshape(total, cols), np.concatenate(pos) if len(pos) > 1
                                       else pos[0], *rec)
                except (SimError, fixed.FixedPointValueError):
                    return False
                for o, a, c in zip(outs, bounds, bounds[1:]):
                    o[:] = y[a:c].reshape(-1)
                return True

            return execute
        if op == "quant":
            pow2 = bool(v["imm"] & QUANT_POW2)
            views = []
            for i, d, r in zip(insts, dsts, rows):
                groups = max(1, i.values["imm"] & 0xFFFF)
                if d + self._quant_bytes(r, cols, groups) > size:
                    return None
                t = r // groups
                views.append((groups, _rows_view(data, d, (groups, t * cols + 3 * t), _block_pitch(r, cols, groups))))

            def execute(run) -> bool:
                codes, exps, mants = quantize_rows_exact(data32[idx].reshape(total, cols), pow2)
                for (groups, view), a, c in zip(views, bounds, bounds[1:]):
                    view[:] = _head_blocks(codes[a:c], exps[a:c], mants[a:c], groups)
                return True

            return execute

    def _rope_record(self, s1: int, cols: int) -> tuple[float, int, tuple | None]:
        """(theta, true head_dim, LLaMA-3 scaling or None) of the RoPE record at ``s1``, checked."""
        if s1 % 8:
            raise SimError(f"RoPE parameters: float64 record at unaligned address {s1}")
        rec = self._slice(self.data, s1, 48, "RoPE parameters")
        theta = float(rec[:8].view("<f8")[0])
        if not (math.isfinite(theta) and theta > 1):
            raise SimError(f"RoPE theta {theta!r} must be a finite number > 1")
        hd = int(rec[8:12].view("<u4")[0]) or cols  # the true head_dim; 0: the row width
        flag = int(rec[12:16].view("<u4")[0])
        if flag not in (0, 1):
            raise SimError(f"RoPE record scaling flag {flag} must be 0 (none) or 1 (LLaMA-3)")
        scaling = tuple(rec[16:48].view("<f8").tolist()) if flag == 1 else None
        if scaling is not None and not all(math.isfinite(v) and v > 0 for v in scaling):
            raise SimError(f"RoPE record LLaMA-3 scaling parameters {scaling} must be finite and positive")
        return theta, hd, scaling

    @staticmethod
    def _rope_positions(rows: int, imm: int) -> np.ndarray:
        """Row r of a RoPE instruction sits at position imm[15:0] + r // imm[31:16] (period 0 = 1)."""
        return (imm & 0xFFFF) + np.arange(rows) // max(1, imm >> 16)

    def _vshift(self, p: np.ndarray, s1: int, rows: int, cols: int, imm: int) -> tuple[np.ndarray, np.ndarray]:
        """MISC vshift of P' rows ``p`` (int64 [B, rows, cols]: B instructions sharing V's exponents and
        mantissas at ``s1`` and ``imm``): (shifted int32 [B, rows, cols], reference exponents int8 [rows])."""
        raw = self._slice(self.data, s1, 3 * cols, "V exponents and mantissas")
        ev = raw[:cols].view(np.int8).astype(np.int64)
        mv = raw[cols:].copy().view("<u2").astype(np.int64)
        self._check_mantissas(mv, "V mantissas")
        return _vshift_rows(p, ev, mv, rows, cols, imm)

    # ---- runs of independent same-kind instructions, executed together -----------------------------
    # A decode step issues ~900 small attention instructions (per head: Q.K^T MV, V shift, P'.V MV) whose
    # numpy calls cost more than their arithmetic. The scheduler hands a run of consecutive instructions
    # of one unit that it would execute back to back anyway (each one's tokens are there) to one numpy
    # pass when they are of one kind sharing their second operand (``_run_key``) and none reads what an
    # earlier one of the run writes. The pass reads every operand and checks every rule before it writes
    # anything; if any instruction of the run would fault, nothing is written and the scheduler executes
    # the run one by one, so state and errors are exactly the one-by-one execution's.

    def _run_key(self, i) -> tuple | None:
        """What instructions executed together share (None: ``i`` is executed on its own)."""
        v = i.values
        mnemonic = i.fmt.mnemonic
        if mnemonic in ("MV", "MM"):
            mode = v["mode"]
            if mode == 0 or v["accumulate"]:  # linear tiles: one GEMM each; accumulate reads the output
                return None
            return (mnemonic, mode, v["m"], v["n"], v["k_blocks"], v["b_addr"], v["bias_addr"], v["out"], v["ldo"])
        if mnemonic != "MISC":
            return None
        op = i.enum("op")
        if op == "vshift":
            return (op, v["rows"], v["cols"], v["src1"], v["imm"])
        if op == "rope":
            return (op, v["cols"], v["src1"])
        if op == "quant" and not v["imm"] & QUANT_OVP4:
            return (op, v["cols"], v["imm"] & QUANT_POW2)
        return None

    def _run_regions(self, i) -> tuple[tuple, tuple]:
        """(data-space byte ranges (start, length) ``i`` reads, ranges it writes), for a run's RAW test."""
        v = i.values
        if i.fmt.mnemonic != "MISC":
            m, n, k, ldo = v["m"], v["n"], 16 * v["k_blocks"], v["ldo"] or v["n"]
            out = (v["out_addr"], (m - 1) * ldo + n if i.enum("out") == "int8" else 4 * ((m - 1) * ldo + n))
            if i.enum("mode") == "qk":
                return ((v["a_addr"], m * k + 3 * m), (v["b_addr"], n * k + 3 * n)), (out,)
            return ((v["a_addr"], 4 * m * k + m), (v["b_addr"], k * n)), (out,)
        op, rows, cols = i.enum("op"), v["rows"], v["cols"]
        src0 = (v["src0"], 4 * rows * cols)
        if op == "vshift":
            return (src0, (v["src1"], 3 * cols)), ((v["dst"], 4 * rows * cols + rows),)
        if op == "rope":
            return (src0, (v["src1"], 48)), ((v["dst"], 4 * rows * cols),)
        return (src0,), ((v["dst"], self._quant_bytes(rows, cols, max(1, v["imm"] & 0xFFFF))),)

    def _independent(self, insts: list) -> bool:
        """Whether no instruction of the run reads bytes that an earlier one writes (computing all of them
        from the state before the run, then writing in order, then equals executing them in order)."""
        written = []
        for i in insts:
            reads, writes = self._run_regions(i)
            if any(_overlap(r, w) for r in reads for w in written):
                return False
            written.extend(writes)
        return True

    def _pending(self, addr: int, rows: np.ndarray, pitch: int, what: str, int32: bool) -> tuple:
        """A write of uint8 ``rows`` [r, width] at ``addr`` (``pitch`` bytes apart), checked as the
        one-by-one path checks it (int32 alignment, bounds) but not done yet."""
        if int32 and addr % 4:
            raise SimError(f"{what}: int32 data at unaligned address {addr}")
        self._slice(self.data, addr, (rows.shape[0] - 1) * pitch + rows.shape[1], what)
        return addr, pitch, rows

    def _run_writes(self, insts: list) -> list[tuple]:
        """Every write of the run (a list of :meth:`_pending`), computed from the state before it."""
        for i in insts:
            self._checked_once(i, self.check_mpe if i.fmt.mnemonic != "MISC" else self.check_misc)
        v = insts[0].values
        if insts[0].fmt.mnemonic != "MISC":
            return self._run_mpe(insts, v)
        op = insts[0].enum("op")
        if op == "vshift":
            rows, cols = v["rows"], v["cols"]
            p = np.stack([self.i32_np(i.values["src0"], rows, cols) for i in insts]).astype(np.int64)
            p_sh, e_ref = self._vshift(p, v["src1"], rows, cols, v["imm"])
            e_bytes = e_ref.view(np.uint8).reshape(1, rows)
            out = []
            for i, y in zip(insts, p_sh):
                d = i.values["dst"]
                out.append(self._pending(d, y.view(np.uint8).reshape(1, -1), 4 * rows * cols, "MISC result", True))
                out.append(self._pending(d + 4 * rows * cols, e_bytes, rows, "vshift exponents", False))
            return out
        cols = v["cols"]
        xs = [self.i32_np(i.values["src0"], i.values["rows"], cols) for i in insts]
        bounds = np.cumsum([0] + [x.shape[0] for x in xs]).tolist()
        if op == "rope":
            theta, hd, scaling = self._rope_record(v["src1"], cols)
            pos = np.concatenate([self._rope_positions(i.values["rows"], i.values["imm"]) for i in insts])
            y = rope_padded_np(np.concatenate(xs), pos, theta, hd, scaling)
            return [self._pending(i.values["dst"], y[a:b].view(np.uint8).reshape(1, -1), 4 * (b - a) * cols,
                                  "MISC result", True) for i, a, b in zip(insts, bounds, bounds[1:])]
        codes, exps, mants = quantize_rows_exact(np.concatenate(xs), pow2=bool(v["imm"] & QUANT_POW2))
        out = []
        for i, a, b in zip(insts, bounds, bounds[1:]):
            rows, groups = b - a, max(1, i.values["imm"] & 0xFFFF)
            blocks = _head_blocks(codes[a:b], exps[a:b], mants[a:b], groups)
            out.append(self._pending(i.values["dst"], blocks, _block_pitch(rows, cols, groups), "quant result", False))
        return out

    def _run_mpe(self, insts: list, v: dict) -> list[tuple]:
        """:meth:`_run_writes` of MV/MM qk or pv instructions sharing the second operand (K or V block)
        and the requantization entry: their rows stacked into one product."""
        mode, out_fmt = insts[0].enum("mode"), insts[0].enum("out")
        m, n, k = v["m"], v["n"], 16 * v["k_blocks"]
        ldo = v["ldo"] or n
        if mode == "qk":
            parts = [self.qblock_np(i.values["a_addr"], m, k, "Q block") for i in insts]
            b, eb, mb = self.qblock_np(v["b_addr"], n, k, "K block")
            a = np.concatenate([p[0] for p in parts])
            ea, ma = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
            acc = _int_matmul_np(a, b, 128)
            y = self._mpe_output(mode, out_fmt, acc, self.entries(v["bias_addr"], 1), ea + eb.reshape(1, n),
                                 ma * mb.reshape(1, n), (ma, mb), None)
        else:
            ps, es = [], []
            for i in insts:
                a_addr = i.values["a_addr"]
                ps.append(self.i32_np(a_addr, m, k, what="P' block"))
                es.append(self._slice(self.data, a_addr + 4 * m * k, m, "P' exponents").view(np.int8))
            vq = self._slice(self.data, v["b_addr"], k * n, "V block").view(np.int8).reshape(k, n)
            acc = _int_matmul_np(np.concatenate(ps), vq.T, None)
            exp = np.concatenate(es).astype(np.int64).reshape(-1, 1)
            y = self._mpe_output(mode, out_fmt, acc, self.entries(v["bias_addr"], 1), exp, None, (), None)
        int32 = y.dtype == np.int32
        width, pitch = (4 * n, 4 * ldo) if int32 else (n, ldo)
        y8 = y.view(np.uint8).reshape(len(insts), m, width)
        return [self._pending(i.values["out_addr"], rows, pitch, "MM output" if int32 else "MM int8 output", int32)
                for i, rows in zip(insts, y8)]

    def _prepare_mpe_run(self, insts: list):
        """:meth:`_run_mpe` of a run of one-row Q.K^T or P'.V MVs (requantized output) compiled once for
        these instructions (independent, fields checked): the operands and outputs as views of the data
        space made here (every one inside it, int32 data aligned), so a pass gathers the rows, multiplies,
        requantizes and writes. The returned function returns True when done, or False, having written
        nothing, where a rule breaks (a mantissa above 256, a multiplier with bit 31): the general path
        then finds the fault. None: not this case."""
        if insts[0].fmt.mnemonic != "MV":
            return None
        for i in insts:
            self._checked_once(i, self.check_mpe)
        v = insts[0].values
        mode, out_fmt = insts[0].enum("mode"), insts[0].enum("out")
        m, n, k = v["m"], v["n"], 16 * v["k_blocks"]
        if mode not in ("qk", "pv") or out_fmt == "int32" or m != 1:
            return None
        data, size = self.data, len(self.data)
        width = n if out_fmt == "int8" else 4 * n
        a_addrs = np.array([i.values["a_addr"] for i in insts], dtype=np.int64)
        outs = [i.values["out_addr"] for i in insts]
        b_addr, a_bytes = v["b_addr"], (k + 3 if mode == "qk" else 4 * k + 1)
        b_bytes = n * k + 3 * n if mode == "qk" else k * n
        if int(a_addrs.max()) + a_bytes > size or b_addr + b_bytes > size or max(outs) + width > size or \
                16 * (v["bias_addr"] + 1) > len(self.buffers["bias"]) or \
                (out_fmt != "int8" and any(o % 4 for o in outs)) or (mode == "pv" and (a_addrs % 4).any()):
            return None
        out_views = [data[o: o + width].view(np.int8 if out_fmt == "int8" else "<i4") for o in outs]
        int8 = out_fmt == "int8"
        ent = self.entries(v["bias_addr"], 1)
        mpe_output = self._mpe_output
        if mode == "qk":
            rows = a_addrs[:, None] + np.arange(k)[None, :]  # gather indices of the Q rows
            exp_at, mant_at = a_addrs + k, a_addrs + k + 1
            kb = data[b_addr: b_addr + n * k].view(np.int8).reshape(n, k)
            eb = data[b_addr + n * k: b_addr + n * k + n].view(np.int8)
            mb = data[b_addr + n * k + n: b_addr + b_bytes].view("<u2")

            def product():
                ea = data[exp_at].view(np.int8).astype(np.int64).reshape(-1, 1)
                ma = (data[mant_at].astype(np.int64) | data[mant_at + 1].astype(np.int64) << 8).reshape(-1, 1)
                mbn = mb.astype(np.int64)
                acc = _int_matmul_np(data[rows].view(np.int8), kb, 128)
                exp, mant = ea + eb.astype(np.int64).reshape(1, n), ma * mbn.reshape(1, n)
                y = _requantize_one_entry(acc, ent, exp, mant, int8) \
                    if int(ma.max()) <= MAX_MANTISSA and int(mbn.max()) <= MAX_MANTISSA else None
                return y if y is not None else \
                    mpe_output(mode, out_fmt, acc, ent, exp, mant, (ma, mbn.reshape(n, 1)), None)
        else:
            rows = (a_addrs // 4)[:, None] + np.arange(k)[None, :]  # int32 elements of the P' rows
            data32 = data[: size - size % 4].view("<i4")
            exp_at = a_addrs + 4 * k
            vq = data[b_addr: b_addr + k * n].view(np.int8).reshape(k, n)

            def product(p=None, p_exp=None):  # P' rows int32 [R, k], exponent bytes [R] (default: read them)
                exp = (data[exp_at] if p_exp is None else p_exp).view(np.int8).astype(np.int64).reshape(-1, 1)
                acc = _int_matmul_np(data32[rows] if p is None else p, vq.T, None)
                y = _requantize_one_entry(acc, ent, exp, None, int8)
                return y if y is not None else mpe_output(mode, out_fmt, acc, ent, exp, None, (), None)

        def write(y) -> None:
            for out, row in zip(out_views, y):
                out[:] = row

        def execute(insts) -> bool:
            try:
                y = product()
            except SimError:
                return False
            write(y)
            return True

        execute.compute, execute.write = product, write
        return execute

    def _run_end(self, prog: list, queue: list, h: int, key: tuple, into_u: list, u: int) -> int:
        """The end of the run of instructions from queue position ``h`` with run key ``key`` that the unit
        would execute back to back now: each one's tokens are there once the earlier ones have taken
        theirs (and given their own unit any it releases to itself)."""
        tokens = into_u[:]
        end, n = h, len(queue)
        while end < n:
            inst = prog[queue[end]]
            if end > h:
                k = inst.__dict__.get("_sim_run_key", _UNSET)
                if k is _UNSET:
                    k = self._run_key(inst)
                    object.__setattr__(inst, "_sim_run_key", k)
                if k != key:
                    break
            values = inst.values
            need = _MASK_UNITS[values["wait"]]
            for v in need:
                if tokens[v] < 1:
                    return end
            for v in need:
                tokens[v] -= 1
            if values["release"] >> u & 1:
                tokens[u] += 1
            end += 1
        return end

    def _execute_run(self, insts: list) -> bool:
        """Execute ``insts`` together; False (nothing written) when they are not independent or one of them
        would fault (the caller then executes them one by one, which raises that fault at its instruction)."""
        first = insts[0]
        # (this core, the other instructions, whether independent, the prepared pass or None), kept with the
        # first instruction: the unpatched instructions of a program are the same objects every run; for
        # V shifts and RoPEs whose imm the runtime patches, with their templates (the byte ranges a run
        # touches do not depend on imm, and the prepared pass takes each execution's imm)
        args = self._IMM_ARGS if first.fmt.mnemonic == "MISC" and first.enum("op") in ("vshift", "rope") \
            else self._NO_ARGS
        anchors = [_anchor(i, args) for i in insts]
        keep = None not in anchors
        known = anchors[0].__dict__.get("_sim_run_prepared") if keep else None
        if known is not None and not (known[0] is self and len(known[1]) == len(insts) - 1 and
                                      all(a is b for a, b in zip(known[1], anchors[1:]))):
            # another run starting at the same (shared) instruction: runs of one program that differ only in
            # a later member's token masks alternate here, so every run seen from this anchor is kept too
            known = anchors[0].__dict__.get("_sim_runs_prepared", {}).get((self, *map(id, anchors[1:])))
            if known is not None and all(a is b for a, b in zip(known[1], anchors[1:])):
                object.__setattr__(anchors[0], "_sim_run_prepared", known)
            else:
                known = None
        if known is not None:
            independent, prepared = known[2], known[3]
        else:
            independent = self._independent(insts)
            try:
                prepared = None if not independent else (
                    self._prepare_mpe_run(insts) if first.fmt.mnemonic != "MISC" else self._prepare_misc_run(insts))
            except SimError:  # a field rule breaks: the general path below finds it
                prepared = None
            if keep:
                known = (self, tuple(anchors[1:]), independent, prepared)
                object.__setattr__(anchors[0], "_sim_run_prepared", known)
                runs = anchors[0].__dict__.get("_sim_runs_prepared")
                if runs is None:
                    runs = {}
                    object.__setattr__(anchors[0], "_sim_runs_prepared", runs)
                if len(runs) >= 64:  # bounded: a program whose patches change the members each run
                    runs.clear()
                runs[(self, *map(id, anchors[1:]))] = known
        if not independent:
            return False
        if prepared is not None and prepared(insts):
            return True
        try:
            writes = self._run_writes(insts)
        except Exception:  # noqa: BLE001 - nothing is written: the one-by-one execution gives the error
            return False
        data = self.data
        for addr, pitch, rows in writes:
            _rows_view(data, addr, rows.shape, pitch)[:] = rows
        return True

    # ---- a kv group's attention, executed as one step ---------------------------------------------
    # A decode step's attention is, per kv group, four consecutive plan steps: the Q.K^T MVs (a run),
    # the masked softmax of their score rows, the V shifts of the probability rows (a run) and the P'.V
    # MVs (a run). Executed one after the other, each step reads back from the data space what the one
    # before it wrote. :meth:`_execute_chain` executes such consecutive steps as one: it hands each step's
    # result to the next as an array and writes every step's results afterwards, in step order. That is
    # the consecutive execution's state exactly when each step reads exactly the bytes the step before
    # wrote (score rows = the Q.K^T outputs, V-shift rows inside the softmax result, P' blocks = the V
    # shifts' outputs) and every other operand of a later step (V's exponents and mantissas, the V
    # block) lies outside what the chain writes, so the data space still holds it when the chain starts.
    # Both are checked from the instructions' fields when the chain is prepared (the runtime patches only
    # the softmax / V-shift imm, which the prepared steps take per execution). As for runs, every rule is
    # checked before anything is written: if a step would fault, nothing is written and the steps execute
    # one by one, which raise that fault at its instruction.

    #: execute consecutive Q.K^T, softmax, V-shift (and P'.V) steps as one (False: each step on its own)
    fuse_attention = True

    def _chain_kind(self, prog: list, step) -> str | None:
        """The attention step kind of plan step ``step`` ("qk", "softmax", "vshift", "pv") or None."""
        if step is None:
            return None
        inst = prog[step[0][0] if type(step[0]) is tuple else step[0]]
        mnemonic = inst.fmt.mnemonic
        if mnemonic == "MV":
            mode = inst.enum("mode")
            return mode if mode in ("qk", "pv") else None
        if mnemonic == "MISC":
            op = inst.enum("op")
            if (op == "softmax" and type(step[0]) is not tuple) or op == "vshift":
                return op
        return None

    def _chains(self, prog: list, steps: list) -> dict:
        """Plan step index -> the instruction indices of each step of the attention chain starting there
        (3 steps: Q.K^T, softmax, V shift; 4: with the P'.V step), found from the kinds of the steps of
        ``prog`` (each execution's instructions are checked again by :meth:`_prepare_chain`)."""
        kinds = [self._chain_kind(prog, st) for st in steps]
        chains = {}
        for k in range(len(steps) - 2):
            if kinds[k] == "qk" and kinds[k + 1] == "softmax" and kinds[k + 2] == "vshift":
                n = 4 if k + 3 < len(steps) and kinds[k + 3] == "pv" else 3
                chains[k] = [st[0] if type(st[0]) is tuple else (st[0],) for st in steps[k: k + n]]
        return chains

    def _execute_chain(self, groups: list) -> bool:
        """Execute the attention chain whose steps hold the instruction lists ``groups`` as one; False,
        having written nothing, when the steps are not such a chain or one of them would fault (the
        caller then executes them one by one)."""
        flat = []  # the instructions' anchors (the patched softmax / V shifts: their templates)
        for insts in groups:
            args = self._IMM_ARGS if insts[0].fmt.mnemonic == "MISC" else self._NO_ARGS
            for i in insts:
                t = i.__dict__.get("_sim_template")
                if t is not None:
                    if not t[1] <= args:
                        return False
                    i = t[0]
                flat.append(i)
        # kept with the first anchor, keyed by the identities of the others: the entry holds them, so while
        # it exists no other object can have their ids, and an equal key means the same instructions
        key = (self, len(groups), *map(id, flat))
        known = flat[0].__dict__.get("_sim_chains")
        if known is None:
            known = {}
            object.__setattr__(flat[0], "_sim_chains", known)
        entry = known.get(key)
        if entry is None:
            try:
                prepared = self._prepare_chain(groups)
            except SimError:  # a field rule breaks: the one-by-one execution finds it
                prepared = None
            if len(known) >= 64:
                known.clear()
            entry = known[key] = (flat, prepared)
        return entry[1] is not None and entry[1](groups)

    def _prepare_chain(self, groups: list):
        """The function executing the attention chain ``groups`` (see above) from its steps' prepared
        forms, or None where the steps are not such a chain (then each step executes on its own)."""
        qk, (sm,), vs = groups[0], groups[1], groups[2]
        pv = groups[3] if len(groups) > 3 else None
        if sm.fmt.mnemonic != "MISC" or sm.enum("op") != "softmax" or vs[0].fmt.mnemonic != "MISC" or \
                any(i.enum("op") != "vshift" for i in vs) or any(i.fmt.mnemonic != "MV" for i in qk) or \
                (pv is not None and any(i.fmt.mnemonic != "MV" for i in pv)):
            return None
        for run in (qk, vs, pv):
            if run is not None and len(run) > 1 and (self._run_key(run[0]) is None or
                                                     any(self._run_key(i) != self._run_key(run[0]) for i in run)):
                return None
        for i in groups[1]:
            self._checked_once(i, self.check_misc)
        # Q.K^T: one-row MVs with int32 (fixed32) outputs that are the softmax's rows, in order
        qv, smv = qk[0].values, sm.values
        n, rows, s0, d = qv["n"], smv["rows"], smv["src0"], smv["dst"]
        if any(i.enum("mode") != "qk" or i.enum("out") != "fixed32" for i in qk) or rows != len(qk) or \
                smv["cols"] != n or [i.values["out_addr"] for i in qk] != [s0 + 4 * n * j for j in range(rows)]:
            return None
        scores = (s0, 4 * n * rows)
        probs = (d, 4 * n * rows)
        # V shifts: rows of the softmax result; V's exponents and mantissas outside what the chain wrote
        vv = vs[0].values
        r, v_src1 = vv["rows"], vv["src1"]
        offsets = [(i.values["src0"] - d) // (4 * n) for i in vs]
        if vv["cols"] != n or any(i.values["src0"] != d + 4 * n * o or not 0 <= o <= rows - r
                                  for i, o in zip(vs, offsets)):
            return None
        shifted = [(i.values["dst"], 4 * r * n + r) for i in vs]
        if any(_overlap((v_src1, 3 * n), w) for w in (scores, probs)) or \
                any(_overlap(a, b) for j, a in enumerate(shifted) for b in shifted[j + 1:]):
            return None
        order = np.concatenate([np.arange(o, o + r) for o in offsets])
        # P'.V: one-row MVs whose P' blocks are the V shifts' outputs; the V block outside the chain's writes
        if pv is not None:
            pvv = pv[0].values
            at = {a: j for j, (a, _) in enumerate(shifted)}
            if r != 1 or any(i.enum("mode") != "pv" or i.values["a_addr"] not in at for i in pv) or \
                    16 * pvv["k_blocks"] != n or \
                    any(_overlap((pvv["b_addr"], 16 * pvv["k_blocks"] * pvv["n"]), w)
                        for w in (scores, probs, *shifted)):
                return None
            p_rows = np.array([at[i.values["a_addr"]] for i in pv])
        steps = []
        for run in (qk, vs) + ((pv,) if pv is not None else ()):
            if not self._independent(run):
                return None
            prepared = self._prepare_mpe_run(run) if run[0].fmt.mnemonic == "MV" else self._prepare_misc_run(run)
            if prepared is None:
                return None
            steps.append(prepared)
        softmax = self._prepare_softmax(sm)
        if softmax is None:
            return None
        score_step, shift_step = steps[0], steps[1]
        pv_step = steps[2] if pv is not None else None

        def execute(groups) -> bool:
            shifts = groups[2]
            imm = shifts[0].values["imm"]
            if any(i.values["imm"] != imm for i in shifts):  # patched apart: no longer one run key
                return False
            try:
                y = score_step.compute()
                p = softmax.compute(groups[1], y)
                if p is None:
                    return False
                shifted_rows = shift_step.compute(groups[2], p[order])
                if shifted_rows is None:
                    return False
                if pv_step is not None:
                    p_sh, e_bytes = shifted_rows
                    z = pv_step.compute(p_sh.reshape(-1, n)[p_rows], np.repeat(e_bytes, len(p_rows)))
            except (SimError, fixed.FixedPointValueError):
                return False
            score_step.write(y)
            softmax.write(p)
            shift_step.write(shifted_rows)
            if pv_step is not None:
                pv_step.write(z)
            return True

        return execute

    # ---- the unit queues ---------------------------------------------------------------------
    # The order in which the units execute a program depends only on its schedule fields (each
    # instruction's unit, wait and release masks, the SYS ops), never on data: :meth:`_plan` works it
    # out once by moving the tokens alone, and :meth:`_replay` executes that order. A caller that runs
    # programs differing only in other fields (the runtime patches addresses and immediates) passes a
    # ``schedule_key`` so the order is worked out once per key.

    def run(self, words, program: list | None = None, schedule_key=None) -> SimStats:
        """Execute a whole program (uint32 words, or ``program``: its decoded instructions); returns this
        run's statistics. When it returns or raises, every buffer holds what the executed instructions wrote.

        ``schedule_key``: programs run with the same key must have the same length and the same schedule
        fields (every instruction's format, wait and release masks, the SYS ops); their execution order
        is then computed once (the runtime's patched programs of one compiled program)."""
        self._defer = True
        try:
            return self._run(words, program, schedule_key)
        finally:
            self._defer = False
            self._flush_weight()

    def _run(self, words, program: list | None, schedule_key) -> SimStats:
        t0 = time.perf_counter()
        before = SimStats()
        before.add(self.stats)
        prog = program if program is not None else isa.decode_program(words)
        plan = self._plans.get(schedule_key) if schedule_key is not None else None
        if plan is None or plan.length != len(prog) or plan.batching != self.run_together:
            plan = self._plan(prog, self.run_together)
            if schedule_key is not None:
                self._plans[schedule_key] = plan
        self._replay(prog, plan)
        run = SimStats()
        for k in self.stats.instructions:
            run.instructions[k] = self.stats.instructions[k] - before.instructions.get(k, 0)
        for k, v in self.stats.by_mnemonic.items():
            run.by_mnemonic[k] = v - before.by_mnemonic.get(k, 0)
        for d, b, o in ((run.hbm_read, before.hbm_read, self.stats.hbm_read),
                        (run.hbm_written, before.hbm_written, self.stats.hbm_written)):
            for k, v in o.items():
                if v - b.get(k, 0):
                    d[k] = v - b.get(k, 0)
        run.seconds = time.perf_counter() - t0
        self.stats.seconds += run.seconds
        return run

    def _cached_run_key(self, inst):
        key = inst.__dict__.get("_sim_run_key", _UNSET)
        if key is _UNSET:
            key = self._run_key(inst)
            object.__setattr__(inst, "_sim_run_key", key)
        return key

    def _plan(self, prog: list, batching: bool) -> "_Plan":
        """The order in which the units execute ``prog``: each unit runs ahead as far as its tokens allow
        (LD first), a run of same-kind instructions it would execute back to back is one step, SYS is a
        barrier of all four units; moves the tokens only (nothing is executed). Ends at SYS op=end, when
        every queue is drained, or at a deadlock (recorded: the replay raises it where it happens)."""
        queues = [[], [], [], []]
        unit_of = {name: k for k, name in enumerate(isa.UNITS)}
        for idx, inst in enumerate(prog):
            unit = inst.fmt.unit
            if unit == "all":
                for q in queues:
                    q.append(idx)
            else:
                queues[unit_of[unit]].append(idx)
        steps = []  # (idx, unit) one instruction; (tuple of idx, unit) a run; None a SYS barrier
        head = [0, 0, 0, 0]
        done = [False] * 4
        into = [[0] * 4 for _ in range(4)]  # [to][from]: the tokens waiting at each unit
        deadlock = None
        while not all(done):
            progress = False
            at_sys = 0  # units whose next instruction is a SYS
            for u in range(4):
                if done[u]:
                    continue
                queue = queues[u]
                into_u, h, n = into[u], head[u], len(queue)
                while h < n:  # the unit runs ahead as far as its tokens allow
                    inst = prog[queue[h]]
                    mnemonic = inst.fmt.mnemonic
                    if mnemonic == "SYS":
                        at_sys += 1
                        break
                    values = inst.values
                    if batching and h + 1 < n and mnemonic in _RUN_MNEMONICS:
                        key = self._cached_run_key(inst)
                        if key is not None and self._cached_run_key(prog[queue[h + 1]]) == key:
                            end = self._run_end(prog, queue, h, key, into_u, u)
                            if end - h > 1:
                                for j in queue[h:end]:  # each one's tokens, as one by one
                                    values = prog[j].values
                                    for v in _MASK_UNITS[values["wait"]]:
                                        into_u[v] -= 1
                                    for w in _MASK_UNITS[values["release"]]:
                                        into[w][u] += 1
                                steps.append((tuple(queue[h:end]), u))
                                h = head[u] = end
                                progress = True
                                continue
                    wait = values["wait"]
                    if wait:
                        need = _MASK_UNITS[wait]
                        blocked = False
                        for v in need:
                            if into_u[v] < 1:
                                blocked = True
                                break
                        if blocked:
                            break
                        for v in need:
                            into_u[v] -= 1
                    steps.append((queue[h], u))
                    release = values["release"]
                    if release:
                        for w in _MASK_UNITS[release]:
                            into[w][u] += 1
                    h += 1
                    head[u] = h
                    progress = True
                if head[u] >= len(queue):
                    done[u] = True
            # SYS: all four units must sit on the same SYS instruction
            at = [queues[u][head[u]] if not done[u] else None for u in range(4)] if at_sys == 4 else ()
            live = [a for a in at if a is not None]
            if live and all(a is not None for a in at) and len(set(live)) == 1 and prog[live[0]].mnemonic == "SYS":
                steps.append(None)
                if prog[live[0]].enum("op") == "end":
                    break
                for u in range(4):
                    head[u] += 1
                progress = True
            if not progress and not all(done):  # a program may end on a barrier: every queue drained
                deadlock = [(u, queues[u][head[u]], [v for v in range(4) if into[u][v] < 1]) for u in range(4)
                            if not done[u]]
                break
        return _Plan(len(prog), batching, steps, deadlock)

    @staticmethod
    def _step_counts(prog: list, steps: list) -> tuple[dict, dict]:
        """(instructions per unit, per mnemonic) of the plan steps ``steps`` (SYS barriers count as SYS)."""
        units, by_mn = {}, {}
        for step in steps:
            if step is None:
                by_mn["SYS"] = by_mn.get("SYS", 0) + 1
                continue
            members = step[0] if type(step[0]) is tuple else (step[0],)
            unit = isa.UNITS[step[1]]
            units[unit] = units.get(unit, 0) + len(members)
            for j in members:
                mnemonic = prog[j].fmt.mnemonic
                by_mn[mnemonic] = by_mn.get(mnemonic, 0) + 1
        return units, by_mn

    def _add_counts(self, prog: list, steps: list) -> None:
        for d, t in zip((self.stats.instructions, self.stats.by_mnemonic), self._step_counts(prog, steps)):
            for name, n in t.items():
                d[name] = d.get(name, 0) + n

    def _replay(self, prog: list, plan: "_Plan") -> None:
        """Execute ``prog`` in the order of ``plan`` (:meth:`_plan`); a run that is not independent or
        would fault executes one by one, which raises that fault at its instruction. The instruction
        counts are added once at the end (the plan's totals), or up to the faulting instruction."""
        handlers = {"LD": self.do_ld, "ST": self.do_st, "MM": self.do_mpe, "MV": self.do_mpe, "MISC": self.do_misc}
        execute_run = self._execute_run
        run_key = self._cached_run_key
        steps = plan.steps
        chains = None
        if self.fuse_attention and self.run_together:
            if plan.chains is None:
                plan.chains = self._chains(prog, steps)
            chains = plan.chains
        resume = 0  # the step after the last chain executed as one
        k, idx = 0, None  # the step and the instruction being executed
        try:
            for k, step in enumerate(steps):
                if step is None or k < resume:
                    continue
                first = step[0]
                if chains and k in chains:
                    groups = [[prog[j] for j in members] for members in chains[k]]
                    if self._execute_chain(groups):
                        resume = k + len(groups)
                        continue
                    if len(groups) == 4 and self._execute_chain(groups[:3]):  # the P'.V step not part of it
                        resume = k + 3
                        continue
                if type(first) is tuple:
                    insts = [prog[j] for j in first]
                    # they still share a run key (a patched field may change keys: then one by one)
                    key = run_key(insts[0])
                    if key is not None and all(run_key(i) == key for i in insts[1:]) and execute_run(insts):
                        continue
                    for idx in first:
                        inst = prog[idx]
                        handlers[inst.fmt.mnemonic](inst)
                    idx = None
                else:
                    idx = first
                    inst = prog[first]
                    handlers[inst.fmt.mnemonic](inst)
                    idx = None
        except BaseException as exc:
            step = steps[k]
            self._add_counts(prog, steps[:k] + ([(step[0][:step[0].index(idx)], step[1])]
                                                if idx is not None and type(step[0]) is tuple else []))
            if idx is not None and isinstance(exc, (SimError, contract.ContractError, fixed.FixedPointValueError)):
                offsets = isa.program_offsets(prog)
                raise SimError(f"instruction {idx} at word {offsets[idx]} ({disassemble_one(prog[idx])}): {exc}") \
                    from None
            raise
        if plan.totals is None:
            plan.totals = self._step_counts(prog, steps)
        for d, t in zip((self.stats.instructions, self.stats.by_mnemonic), plan.totals):
            for name, n in t.items():
                d[name] = d.get(name, 0) + n
        if plan.deadlock is not None:
            offsets = isa.program_offsets(prog)
            lines = []
            for u, idx, empty in plan.deadlock:
                inst = prog[idx]
                waiting = [isa.UNITS[v] for v in empty if inst["wait"] >> v & 1]
                why = f"waits for a token from {', '.join(waiting)}" if waiting else "waits at SYS for the other units"
                lines.append(f"  {isa.UNITS[u]}: instruction {idx} at word {offsets[idx]} "
                             f"({disassemble_one(inst)}) {why}")
            raise DeadlockError("deadlock: no unit can proceed\n" + "\n".join(lines))


@dataclass
class _Plan:
    """A program's execution order (:meth:`FuncSim._plan`): its length, whether runs were formed, the
    steps, the deadlock it ends in ([(unit, instruction, units with no token for it)]) or None, and the
    instruction counts of all its steps (per unit, per mnemonic; the programs of one schedule key have the
    same formats), worked out at the first replay."""

    length: int
    batching: bool
    steps: list
    deadlock: list | None
    totals: tuple | None = None
    chains: dict | None = None  # FuncSim._chains of the steps, found at the first replay with fuse_attention


def rope_padded_np(x: np.ndarray, pos: np.ndarray, theta: float, head_dim: int, scaling=None) -> np.ndarray:
    """RoPE ("half") of int32 rows ``x [rows, cols]`` holding a head of ``head_dim`` padded to ``cols``: the
    halves sit at ``[0, hd/2)`` and ``[cols/2, cols/2 + hd/2)`` (compiler.spec.head_index); padded
    lanes are zero and stay zero. ``scaling``: LLaMA-3 frequency rescaling (golden.sfu.rope)."""
    cols = x.shape[-1]
    if head_dim == cols:
        return sfu_np.rope_half(x, pos, F, theta, cols, scaling)
    if head_dim > cols or head_dim % 2 or cols % 2:
        raise SimError(f"rope: head_dim {head_dim} in the RoPE record does not fit rows of {cols}")
    h, hp = head_dim // 2, cols // 2
    lanes = np.concatenate([np.arange(h), hp + np.arange(h)])
    out = np.zeros_like(x)
    out[:, lanes] = sfu_np.rope_half(np.ascontiguousarray(x[:, lanes]), pos, F, theta, head_dim, scaling)
    return out


def rope_padded(x: torch.Tensor, pos: torch.Tensor, theta: float, head_dim: int, scaling=None) -> torch.Tensor:
    """:func:`rope_padded_np` of torch tensors."""
    return torch.from_numpy(rope_padded_np(x.numpy(), pos.numpy(), theta, head_dim, scaling))


# ---- the runtime moved to sim/runtime.py; these names stay importable from here ----------------

_MOVED = ("Runtime", "greedy_loop", "golden_generate", "check_against_golden", "run_main")


def __getattr__(name: str):
    # lazy: sim/runtime.py imports this module, so an eager import here would be circular
    if name in _MOVED:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
