"""The per-group scaler (hw/group_scale.py) against its exact integer rule, in Amaranth simulation;
its Verilog lint; its resources with Yosys."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from olivine.hw.group_scale import GroupScaler, reference
from tests.helpers import requires_verilator


def _drive(ctx, dut, case, width: int) -> None:
    """Set the flat psum / mult ports from [(psum, mult)] per lane."""
    ctx.set(dut.psum, sum((p & ((1 << width) - 1)) << (i * width) for i, (p, _) in enumerate(case)))
    ctx.set(dut.mult, sum(m << (4 * i) for i, (_, m) in enumerate(case)))


def _lanes(flat: int, lanes: int, wo: int) -> list[int]:
    """The flat out vector as signed per-lane values."""
    vals = [(flat >> (i * wo)) & ((1 << wo) - 1) for i in range(lanes)]
    return [v - (1 << wo) if v >> (wo - 1) else v for v in vals]


@pytest.mark.parametrize("kind", ["mult4", "mult4-dsp", "pow2"])
def test_group_scaler_is_exact_with_one_cycle_latency(kind):
    lanes, width = 4, 23
    dut = GroupScaler(lanes, width, kind)
    rng = random.Random(7)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    cases = [[(lo, 15), (hi, 15), (-1, 1), (0, 7)]]  # extremes first
    cases += [[(rng.randint(lo, hi), rng.randint(0, 15)) for _ in range(lanes)] for _ in range(40)]
    got = []

    async def bench(ctx):
        for case in cases:
            _drive(ctx, dut, case, width)
            ctx.set(dut.valid, 1)
            await ctx.tick()
            assert ctx.get(dut.out_valid) == 1
            got.append(_lanes(ctx.get(dut.out), lanes, width + 4))
        ctx.set(dut.valid, 0)
        await ctx.tick()
        assert ctx.get(dut.out_valid) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [[reference(kind, p, m) for p, m in case] for case in cases]
    assert got == want
    assert got[0][0] == (lo << 3 if kind == "pow2" else lo * 15)


def test_combinational_group_scaler_is_exact_with_no_latency():
    """registered=False (the matrix engine's collector form): out follows psum / mult in the same cycle."""
    lanes, width = 3, 20
    dut = GroupScaler(lanes, width, "mult4", registered=False)
    assert dut.latency == 0
    rng = random.Random(11)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    cases = [[(lo, 15), (hi, 15), (-1, 1)]] + [[(rng.randint(lo, hi), rng.randint(1, 15)) for _ in range(lanes)]
                                              for _ in range(30)]
    got = []

    async def bench(ctx):
        for case in cases:
            _drive(ctx, dut, case, width)
            await ctx.delay(1e-9)
            got.append(_lanes(ctx.get(dut.out), lanes, width + 4))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert got == [[p * m for p, m in case] for case in cases]


def test_group_scaler_rejects_bad_parameters():
    with pytest.raises(ValueError, match="kind"):
        GroupScaler(kind="mult8")
    with pytest.raises(ValueError, match="lanes"):
        GroupScaler(lanes=0)


@pytest.mark.rtl
@requires_verilator
def test_group_scaler_verilog_lints_clean():
    from olivine.hw.export import lint, verilog
    from olivine.hw.resources import build_unit
    from olivine.hw.sfu_arith import LINT_WAIVERS

    for kind in ("mult4", "mult4-dsp", "pow2"):
        dut, top = build_unit("group_scaler", {"lanes": 2, "kind": kind})
        lint(verilog(dut, top), top, waivers=LINT_WAIVERS)


@pytest.mark.synth
def test_group_scaler_resources():
    """mult4 in the fabric (no DSP) costs more LUTs than the pow2 multiplexer; mult4-dsp one DSP48E2 per lane."""
    from olivine.hw.resources import build_unit, synthesize

    kinds = ("mult4", "mult4-dsp", "pow2")
    reports = {k: synthesize(*build_unit("group_scaler", {"lanes": 4, "kind": k})) for k in kinds}
    for k, r in reports.items():
        assert r.bram36 == r.bram18 == 0
        assert r.dsp == (4 if k == "mult4-dsp" else 0), (k, r.dsp)
    assert reports["mult4"].lut > reports["pow2"].lut > reports["mult4-dsp"].lut
