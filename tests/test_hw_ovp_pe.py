"""OvpProcessingElement (hw/ovp_pe.py) against a behavioural shift-MAC model, in Amaranth sim."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from olivine.hw.ovp_pe import OvpPeError, OvpProcessingElement
from tests.helpers import requires_verilator


def wrap(value: int, bits: int = 32) -> int:
    """Two's-complement wrap of a Python int to ``bits`` bits."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class PeModel:
    """Cycle model: registers update on the clock edge from the inputs of that cycle."""

    def __init__(self, acc_bits: int = 32):
        self.acc_bits = acc_bits
        self.acc = 0
        self.forward = (0, 0, 0, 0, 0, 0)  # a_exp, a_int, b_exp, b_int, valid, first

    def step(self, ea, ia, eb, ib, valid, first):
        if valid:
            base = 0 if first else self.acc
            self.acc = wrap(base + ((ia * ib) << (ea + eb)), self.acc_bits)
        self.forward = (ea, ia, eb, ib, valid, first)


def _run(dut: OvpProcessingElement, steps) -> list[tuple]:
    """Apply one step per cycle; after each edge record (acc, forwarded outputs)."""
    seen = []

    async def bench(ctx):
        for ea, ia, eb, ib, valid, first in steps:
            ctx.set(dut.a_in.exponent, ea)
            ctx.set(dut.a_in.integer, ia)
            ctx.set(dut.b_in.exponent, eb)
            ctx.set(dut.b_in.integer, ib)
            ctx.set(dut.step_in.valid, valid)
            ctx.set(dut.step_in.first, first)
            await ctx.tick()
            seen.append((ctx.get(dut.acc), (ctx.get(dut.a_out.exponent), ctx.get(dut.a_out.integer),
                                            ctx.get(dut.b_out.exponent), ctx.get(dut.b_out.integer),
                                            ctx.get(dut.step_out.valid), ctx.get(dut.step_out.first))))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


def _check_against_model(dut, steps):
    model = PeModel(dut.acc_bits)
    got = _run(dut, steps)
    for cycle, (step, (acc, forward)) in enumerate(zip(steps, got)):
        model.step(*step)
        assert acc == model.acc, f"cycle {cycle} step {step}: acc {acc}, model {model.acc}"
        assert forward == model.forward, f"cycle {cycle}: forwarded {forward}, model {model.forward}"


def test_every_4bit_operand_product_is_exact():
    """All 128 x 128 (exponent 0..7, integer -8..7) operand pairs, each starting a new tile."""
    dut = OvpProcessingElement(exponent_bits=3, integer_bits=4)
    operands = [(e, i) for e in range(8) for i in range(-8, 8)]
    steps = [(ea, ia, eb, ib, 1, 1) for ea, ia in operands for eb, ib in operands]
    got = _run(dut, steps)
    want = [(ia * ib) << (ea + eb) for ea, ia, eb, ib, _, _ in steps]
    assert [acc for acc, _ in got] == want


@pytest.mark.parametrize("exponent_bits,integer_bits", [(3, 4), (4, 5)])
def test_random_sequences_with_valid_first_and_wrap(exponent_bits, integer_bits):
    """Random operands, bubbles and tile restarts; (4, 5) shifts up to 30 and wraps int32."""
    rng = np.random.default_rng(exponent_bits)
    dut = OvpProcessingElement(exponent_bits=exponent_bits, integer_bits=integer_bits)
    lo, hi = -(1 << (integer_bits - 1)), 1 << (integer_bits - 1)
    steps = []
    for _ in range(3000):
        steps.append((int(rng.integers(0, 1 << exponent_bits)), int(rng.integers(lo, hi)),
                      int(rng.integers(0, 1 << exponent_bits)), int(rng.integers(lo, hi)),
                      int(rng.random() < 0.8), int(rng.random() < 0.05)))
    _check_against_model(dut, steps)


def test_accumulator_wraps_like_int32():
    """Largest nibble products (-16 * -16 << 30 = 2**38) accumulate modulo 2**32."""
    dut = OvpProcessingElement(exponent_bits=4, integer_bits=5)
    steps = [(15, -16, 15, -16, 1, 1)] + [(15, -16, 14, 15, 1, 0)] * 5 + [(12, 7, 13, -9, 1, 0)] * 7
    _check_against_model(dut, steps)
    total = ((-16 * -16) << 30) + 5 * ((-16 * 15) << 29) + 7 * ((7 * -9) << 25)
    assert _run(dut, steps)[-1][0] == wrap(total)


def test_invalid_steps_hold_the_accumulator():
    dut = OvpProcessingElement()
    steps = [(2, 3, 1, -5, 1, 1), (6, 7, 6, 7, 0, 0), (6, 7, 6, 7, 0, 1), (0, 1, 0, 1, 1, 0)]
    assert [acc for acc, _ in _run(dut, steps)] == [-120, -120, -120, -119]


def test_bad_configuration_is_rejected_clearly():
    with pytest.raises(OvpPeError, match="integer_bits must be an integer >= 2"):
        OvpProcessingElement(integer_bits=1)
    with pytest.raises(OvpPeError, match="acc_bits"):
        OvpProcessingElement(acc_bits="32")


@pytest.mark.rtl
@requires_verilator
@pytest.mark.parametrize("exponent_bits,integer_bits", [(3, 4), (4, 5)])
def test_pe_verilog_lints_clean_without_waivers(exponent_bits, integer_bits):
    from olivine.hw.export import lint, verilog
    top = f"ovp_pe_e{exponent_bits}_i{integer_bits}"
    lint(verilog(OvpProcessingElement(exponent_bits=exponent_bits, integer_bits=integer_bits), top), top)


def test_resource_unit_factory():
    from amaranth.hdl import Fragment

    from olivine.hw.resources import UNITS

    pe, top = UNITS["ovp_pe"](bits="8")
    Fragment.get(pe, None)  # elaborate: the factory built a usable design
    assert (pe.exponent_bits, pe.integer_bits, pe.acc_bits) == (4, 5, 32) and top == "ovp_pe_8bit"
    pe, top = UNITS["ovp_pe"]()
    Fragment.get(pe, None)  # elaborate: the factory built a usable design
    assert (pe.exponent_bits, pe.integer_bits) == (3, 4) and top == "ovp_pe_4bit"
    with pytest.raises(OvpPeError, match="bits must be 4 or 8"):
        UNITS["ovp_pe"](bits=6)
