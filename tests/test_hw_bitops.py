"""olivine.hw.bitops: the log-depth shifters and the popcount against Python's integers."""

import random

from amaranth import Module, Signal
from amaranth.sim import Simulator

from olivine.hw.bitops import popcount, rotate_left, shift_right


def _evaluate(build, inputs, cases):
    """Build the combinational logic once, then read its output for every case (a dict per input)."""
    m = Module()
    out = build(m)
    results = []

    async def bench(ctx):
        for case in cases:
            for sig, value in zip(inputs, case):
                ctx.set(sig, value)
            results.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_rotate_left_by_bytes_matches_python():
    rng = random.Random(1)
    width, nbytes = 96, 12          # not a power of two: the amount wraps modulo the width
    value, amount = Signal(width), Signal(4)
    cases = [(rng.getrandbits(width), a) for a in range(16) for _ in range(3)]
    got = _evaluate(lambda m: rotate_left(m, value, amount, step=8), (value, amount), cases)
    for (v, a), g in zip(cases, got):
        bits = 8 * (a % nbytes)
        expect = ((v << bits) | (v >> (width - bits))) & ((1 << width) - 1)
        assert g == expect, (hex(v), a)


def test_shift_right_keeps_the_low_bits_and_shifts_in_zeros():
    rng = random.Random(2)
    value, amount = Signal(256), Signal(5)
    cases = [(rng.getrandbits(256), a) for a in range(32) for _ in range(2)]
    got = _evaluate(lambda m: shift_right(m, value, amount, step=8, width=64), (value, amount), cases)
    for (v, a), g in zip(cases, got):
        assert g == (v >> (8 * a)) & ((1 << 64) - 1), (hex(v), a)
    # a shift past the end gives zeros, as a variable part-select does
    value2, amount2 = Signal(32), Signal(3)
    got = _evaluate(lambda m: shift_right(m, value2, amount2, step=16, width=16), (value2, amount2),
                    [(0xDEADBEEF, a) for a in range(8)])
    assert got == [0xBEEF, 0xDEAD, 0, 0, 0, 0, 0, 0]


def test_popcount_is_a_balanced_tree_of_the_right_width():
    rng = random.Random(3)
    bits = Signal(64)
    cases = [(0,), ((1 << 64) - 1,)] + [(rng.getrandbits(64),) for _ in range(20)]
    m = Module()
    out = popcount(m, bits)
    assert len(out) == 7
    got = _evaluate(lambda mm: popcount(mm, bits), (bits,), cases)
    assert got == [bin(v).count("1") for (v,) in cases]
