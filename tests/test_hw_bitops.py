"""olivine.hw.bitops: the log-depth shifters and the popcount against Python's integers."""

import random

from olivine.hw.bitops import popcount, rotate_left, shift_right
from tests.helpers import evaluate_comb


def test_rotate_left_by_bytes_matches_python():
    rng = random.Random(1)
    width, nbytes = 96, 12          # not a power of two: the amount wraps modulo the width
    cases = [(rng.getrandbits(width), a) for a in range(16) for _ in range(3)]
    got = evaluate_comb(lambda m, value, amount: rotate_left(m, value, amount, step=8), (width, 4), cases)
    for (v, a), g in zip(cases, got):
        bits = 8 * (a % nbytes)
        expect = ((v << bits) | (v >> (width - bits))) & ((1 << width) - 1)
        assert g == expect, (hex(v), a)


def test_shift_right_keeps_the_low_bits_and_shifts_in_zeros():
    rng = random.Random(2)
    cases = [(rng.getrandbits(256), a) for a in range(32) for _ in range(2)]
    got = evaluate_comb(lambda m, value, amount: shift_right(m, value, amount, step=8, width=64), (256, 5), cases)
    for (v, a), g in zip(cases, got):
        assert g == (v >> (8 * a)) & ((1 << 64) - 1), (hex(v), a)
    # a shift past the end gives zeros, as a variable part-select does
    got = evaluate_comb(lambda m, value, amount: shift_right(m, value, amount, step=16, width=16), (32, 3),
                        [(0xDEADBEEF, a) for a in range(8)])
    assert got == [0xBEEF, 0xDEAD, 0, 0, 0, 0, 0, 0]


def test_popcount_is_a_balanced_tree_of_the_right_width():
    rng = random.Random(3)
    cases = [(0,), ((1 << 64) - 1,)] + [(rng.getrandbits(64),) for _ in range(20)]
    widths = []

    def build(m, bits):
        ones = popcount(m, bits)
        widths.append(len(ones))
        return ones

    got = evaluate_comb(build, (64,), cases)
    assert widths == [7]
    assert got == [bin(v).count("1") for (v,) in cases]
