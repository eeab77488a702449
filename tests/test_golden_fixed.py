"""Tests of golden/fixed.py: the project's rounding, saturation and requantization rules,
checked against Python's unbounded integers and exact fractions."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from olivine.golden import fixed
from olivine.golden.fixed import (FixedPointTypeError, FixedPointValueError, apply_multiplier,
                                  bit_length, from_fixed, isqrt, multiplier_value,
                                  quantize_multiplier, reciprocal, round_shift, saturate,
                                  saturate_int32, to_fixed)


def ref_round_shift(x: int, s: int) -> int:
    """Round half up of x / 2**s with exact fractions (the definition, not the implementation)."""
    return math.floor(Fraction(x, 1) / Fraction(2) ** s + Fraction(1, 2)) if s > 0 else x * 2**(-s)


# ----------------------------------------------------------------------------- round_shift

def test_round_shift_ties_go_up():
    assert [round_shift(v, 1) for v in (5, -5, 3, -3, 4, -4)] == [3, -2, 2, -1, 2, -2]
    assert round_shift(-6, 2) == -1          # -1.5 -> -1 (half up, towards +inf)
    assert round_shift(6, 2) == 2            # 1.5 -> 2
    assert round_shift(7, 0) == 7
    assert round_shift(3, -2) == 12          # negative shift = exact left shift


def test_round_shift_matches_definition_for_all_kinds():
    rng = random.Random(1)
    xs = [rng.randint(-2**61, 2**61) >> rng.randint(0, 60) for _ in range(3000)]
    for s in (1, 2, 7, 16, 31, 45, 62):
        ref = [ref_round_shift(x, s) for x in xs]
        assert [round_shift(x, s) for x in xs] == ref
        assert round_shift(torch.tensor(xs), s).tolist() == ref
        assert round_shift(np.array(xs, dtype=np.int64), s).tolist() == ref


def test_round_shift_tensor_shift_and_dtype():
    x = torch.tensor([5, -5, -6, 7, 1 << 40], dtype=torch.int32 if False else torch.int64)
    s = torch.tensor([1, 0, -2, 3, 63])
    out = round_shift(x, s)
    assert out.dtype == torch.int64
    assert out.tolist() == [3, -5, -24, 1, 0]
    xi32 = torch.tensor([2**31 - 1], dtype=torch.int32)
    assert round_shift(xi32, 1).tolist() == [2**30]       # no int32 overflow of x + 2**(s-1)


def test_round_shift_huge_shift_and_left_overflow():
    assert round_shift(torch.tensor([2**61, -2**61]), 100).tolist() == [0, 0]
    with pytest.raises(OverflowError):
        round_shift(torch.tensor([1 << 40]), -30)
    with pytest.raises(FixedPointTypeError):
        round_shift(torch.tensor([1.5]), 1)
    with pytest.raises(FixedPointTypeError):
        round_shift(torch.tensor([1]), 1.0)


# ----------------------------------------------------------------------------- saturate

def test_saturate_int32_limits_never_wrap():
    x = torch.tensor([2**31, 2**31 - 1, -2**31, -2**31 - 1, 2**40, -2**40, 0])
    y = saturate_int32(x)
    assert y.dtype == torch.int32
    assert y.tolist() == [2**31 - 1, 2**31 - 1, -2**31, -2**31, 2**31 - 1, -2**31, 0]
    assert saturate(200, 8) == 127 and saturate(-200, 8) == -128
    assert saturate(np.array([300, -300]), 9).tolist() == [255, -256]
    with pytest.raises(FixedPointValueError):
        saturate(torch.tensor([1]), 1)


# ----------------------------------------------------------------------------- to/from fixed

def test_to_fixed_rounding_saturation_and_roundtrip():
    lsb = 2.0**-16
    x = torch.tensor([1.5, -0.25, 0.5 * lsb, -0.5 * lsb, 1e12, -1e12, float("inf"), float("-inf")],
                     dtype=torch.float64)
    q = to_fixed(x, 16)
    assert q.dtype == torch.int32
    assert q.tolist() == [98304, -16384, 1, 0, 2**31 - 1, -2**31, 2**31 - 1, -2**31]
    assert from_fixed(q[:2], 16).tolist() == [1.5, -0.25]
    assert to_fixed(torch.tensor([3.0]), 40, bits=64).dtype == torch.int64
    assert to_fixed(torch.tensor([3.0]), 40, bits=64).item() == 3 << 40
    y = torch.randn(1000, dtype=torch.float64) * 1000
    assert (from_fixed(to_fixed(y, 16), 16) - y).abs().max() <= 0.5 * lsb


def test_to_fixed_bad_input():
    with pytest.raises(FixedPointValueError, match="NaN"):
        to_fixed(torch.tensor([float("nan")]), 16)
    with pytest.raises(FixedPointValueError):
        to_fixed(torch.tensor([1.0]), 99)
    with pytest.raises(FixedPointTypeError):
        from_fixed(torch.tensor([1.0]), 16)


# ----------------------------------------------------------------------------- multipliers

def ref_quantize(real: float):
    """Exact reference: shift = 31 - e (frexp), m = round half up of real * 2**shift."""
    f, e = math.frexp(real)
    shift = 31 - e
    m = math.floor(Fraction(real) * Fraction(2) ** shift + Fraction(1, 2))
    if m == 2**31:
        m, shift = 2**30, shift - 1
    return m, shift


def test_quantize_multiplier_exact_and_precise():
    rng = random.Random(2)
    for _ in range(2000):
        real = rng.uniform(0.5, 1.0) * 2.0 ** rng.randint(-31, 61)
        m, s = quantize_multiplier(real)
        assert (m, s) == ref_quantize(real)
        assert 2**30 <= m < 2**31
        assert abs(multiplier_value(m, s) / real - 1) <= 2.0**-31
    for _ in range(200):                       # below 2**-32: shift 62, smaller mantissa
        real = rng.uniform(2.0**-63, 2.0**-32)
        m, s = quantize_multiplier(real)
        assert s == 62
        assert m == math.floor(Fraction(real) * 2**62 + Fraction(1, 2))


def test_quantize_multiplier_special_values():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1.0) == (2**30, 30)
    assert quantize_multiplier(0.5) == (2**30, 31)
    assert quantize_multiplier(1 - 2.0**-40) == (2**30, 30)       # mantissa carry
    assert quantize_multiplier(-0.75, allow_negative=True) == (-(3 << 29), 31)
    m, s = quantize_multiplier(2.0**-62)                          # denormal mantissa, shift 62
    assert (m, s) == (1, 62)
    assert quantize_multiplier(2.0**60) == (2**30, -30)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(FixedPointValueError):
            quantize_multiplier(bad)
    with pytest.raises(FixedPointValueError, match="2\\*\\*-63"):
        quantize_multiplier(1e-20)
    with pytest.raises(FixedPointValueError, match="too large"):
        quantize_multiplier(2.0**62)
    with pytest.raises(FixedPointTypeError):
        quantize_multiplier("1.0")


def test_apply_multiplier_exact_against_big_ints():
    rng = random.Random(3)
    xs, ms, ss, refs = [], [], [], []
    for _ in range(3000):
        x = rng.randint(-2**62 + 1, 2**62 - 1) >> rng.randint(0, 62)
        m, s = quantize_multiplier(rng.random() * 2.0 ** rng.randint(-40, 40))
        ref = ref_round_shift(x * m, s)
        if abs(ref) >= 2**62:
            continue
        xs.append(x), ms.append(m), ss.append(s), refs.append(ref)
        assert apply_multiplier(x, m, s) == ref
        assert apply_multiplier(torch.tensor([x]), m, s).item() == ref
    # per-element (per-channel) multipliers and shifts, negative shifts included
    got = apply_multiplier(torch.tensor(xs), torch.tensor(ms), torch.tensor(ss))
    assert got.tolist() == refs
    assert any(s < 0 for s in ss) and any(s > 31 for s in ss)


def test_apply_multiplier_overflow_and_bad_input():
    with pytest.raises(OverflowError):
        apply_multiplier(torch.tensor([2**40]), 2**30, 0)         # 2**70 does not fit
    with pytest.raises(OverflowError):
        apply_multiplier(torch.tensor([2**62]), 2**30, 40)        # |x| >= 2**62
    with pytest.raises(OverflowError):
        apply_multiplier(torch.tensor([2**40, 1]), torch.tensor([2**30, 2**30]),
                         torch.tensor([-5, 0]))
    with pytest.raises(FixedPointValueError):
        apply_multiplier(torch.tensor([1]), 2**32, 3)
    with pytest.raises(FixedPointValueError):
        apply_multiplier(torch.tensor([1]), 2**30, 63)
    with pytest.raises(FixedPointTypeError):
        apply_multiplier(torch.tensor([1.0]), 2**30, 3)


# ----------------------------------------------------------------------------- divide / sqrt

def test_reciprocal_is_floor_division():
    d = torch.tensor([1, 2, 3, 7, 1000, 2**31 - 1, 2**40])
    assert reciprocal(d, 62).tolist() == [(1 << 62) // v for v in d.tolist()]
    assert reciprocal(3, 10) == 341
    with pytest.raises(FixedPointValueError):
        reciprocal(torch.tensor([3, 0]), 10)
    with pytest.raises(FixedPointValueError):
        reciprocal(-2, 10)
    with pytest.raises(FixedPointValueError):
        reciprocal(3, 63)


def test_isqrt_is_floor_sqrt():
    gen = torch.Generator().manual_seed(4)
    n = torch.randint(0, 2**62, (20000,), generator=gen)
    sq = torch.arange(0, 2**31, 2**31 // 997)
    n = torch.cat([n, sq * sq, sq * sq - 1, sq * sq + 1, torch.tensor([0, 1, 2**62 - 1])])
    n = n.clamp(min=0)
    r = isqrt(n)
    assert r.tolist() == [math.isqrt(v) for v in n.tolist()]
    assert isqrt(99) == 9
    with pytest.raises(FixedPointValueError):
        isqrt(torch.tensor([-1]))
    with pytest.raises(FixedPointValueError):
        isqrt(torch.tensor([2**62]))


def test_bit_length_and_checks():
    v = [0, 1, 2, 3, 255, 256, 2**31 - 1, 2**40 + 5, 2**62]
    assert bit_length(torch.tensor(v)).tolist() == [x.bit_length() for x in v]
    with pytest.raises(FixedPointValueError):
        bit_length(torch.tensor([-1]))
    with pytest.raises(FixedPointTypeError):
        fixed.check_int_tensor(torch.tensor([1.0]))
    with pytest.raises(FixedPointValueError):
        fixed.check_frac_bits(31)
    assert issubclass(FixedPointTypeError, TypeError)
    assert issubclass(FixedPointValueError, ValueError)
