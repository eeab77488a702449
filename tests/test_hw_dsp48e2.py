# amaranth: UnusedElaboratable=no
"""Directed tests of the DSP48E2 behavioural model against the documented slice behaviour.

Facts checked (reference/dsp48e2.md): 3-edge latency of A*B (AREG=BREG=MREG=PREG=1), 4 edges
through the pre-adder, the WP486 worked example, PCOUT->PCIN cascade sums, ACOUT/BCOUT cascades,
registered controls, clock enables holding, synchronous resets, ALUMODE subtract, Z shifts.
"""

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from olivine.hw.dsp48e2 import (OPMODE_MUL, OPMODE_MUL_ACC, OPMODE_MUL_PCIN, DSP48E2,
                                DSP48E2ConfigError, opmode)
from tests.helpers import REDUCED, SIMULATOR_PARAMS, requires_verilator

MASK48 = (1 << 48) - 1


def u(value: int, bits: int) -> int:
    """Two's complement bit pattern of value in bits."""
    return value & ((1 << bits) - 1)


def s48(value: int) -> int:
    return value - (1 << 48) if value & (1 << 47) else value


def run(dut, bench, module=None):
    sim = Simulator(module if module is not None else dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_multiply_latency_three_edges():
    dut = DSP48E2()
    seen = []

    async def bench(ctx):
        ctx.set(dut.OPMODE, OPMODE_MUL)
        await ctx.tick().repeat(2)          # let the registered OPMODE settle
        ctx.set(dut.A, u(-1234, 30))
        ctx.set(dut.B, u(567, 18))
        for _ in range(4):
            await ctx.tick()
            seen.append(s48(ctx.get(dut.P)))

    run(dut, bench)
    assert seen[:2] == [0, 0]
    assert seen[2] == -1234 * 567          # third rising edge
    assert seen[3] == -1234 * 567


def test_preadder_latency_four_edges_and_wp486_example():
    # WP486: a = 5 (upper lane, A = a << 18), b = 3 (lower lane, D), c = -7 (shared weight, B).
    dut = DSP48E2(AREG=1, BREG=2, DREG=1, ADREG=1, MREG=1, PREG=1, AMULTSEL="AD")
    seen = []

    async def bench(ctx):
        ctx.set(dut.OPMODE, OPMODE_MUL)
        ctx.set(dut.INMODE, 0b00100)
        await ctx.tick().repeat(2)
        ctx.set(dut.A, u(5 << 18, 30))
        ctx.set(dut.D, u(3, 27))
        ctx.set(dut.B, u(-7, 18))
        for _ in range(5):
            await ctx.tick()
            seen.append(ctx.get(dut.P))

    run(dut, bench)
    assert seen[:3] == [0, 0, 0]
    assert seen[3] == 0xFFFF_FF73_FFEB        # fourth rising edge
    p = seen[3]
    low = (p & 0x3FFFF) - (1 << 18) * ((p >> 17) & 1)
    high = (s48(p) >> 18) + ((p >> 17) & 1)
    assert (low, high) == (3 * -7, 5 * -7)


def test_preadder_wraps_27_bits_and_subtracts():
    dut = DSP48E2(AREG=1, BREG=2, AMULTSEL="AD")
    out = {}

    async def bench(ctx):
        ctx.set(dut.OPMODE, OPMODE_MUL)
        ctx.set(dut.B, 1)
        # D - A (INMODE = 01100): 5 - 9 = -4.
        ctx.set(dut.INMODE, 0b01100)
        ctx.set(dut.A, 9)
        ctx.set(dut.D, 5)
        await ctx.tick().repeat(5)
        out["sub"] = s48(ctx.get(dut.P))
        # 2^26 - 1 + 1 wraps to -2^26 in the 27-bit pre-adder; A[29:27] never reaches it.
        ctx.set(dut.INMODE, 0b00100)
        ctx.set(dut.A, (0b111 << 27) | 1)
        ctx.set(dut.D, (1 << 26) - 1)
        await ctx.tick().repeat(5)
        out["wrap"] = s48(ctx.get(dut.P))
        # INMODE[1] zeroes A: P = D * B.
        ctx.set(dut.INMODE, 0b00110)
        await ctx.tick().repeat(5)
        out["zero_a"] = s48(ctx.get(dut.P))

    run(dut, bench)
    assert out == {"sub": -4, "wrap": -(1 << 26), "zero_a": (1 << 26) - 1}


def test_pcin_cascade_sums_three_slices():
    """Systolic FIR pattern: slice k's inputs skewed by k cycles; last P = sum of products."""
    m = Module()
    dsps = [DSP48E2() for _ in range(3)]
    for i, d in enumerate(dsps):
        m.submodules[f"dsp{i}"] = d
        if i:
            m.d.comb += d.PCIN.eq(dsps[i - 1].PCOUT)
    pairs = [(-100, 7), (300, -5), (-2, -9)]
    out = []

    async def bench(ctx):
        ctx.set(dsps[0].OPMODE, OPMODE_MUL)
        for d in dsps[1:]:
            ctx.set(d.OPMODE, OPMODE_MUL_PCIN)
        await ctx.tick().repeat(2)
        for k, (d, (a, b)) in enumerate(zip(dsps, pairs)):
            ctx.set(d.A, u(a, 30))
            ctx.set(d.B, u(b, 18))
            await ctx.tick()
        await ctx.tick().repeat(2)
        out.append(s48(ctx.get(dsps[2].P)))

    run(None, bench, m)
    assert out == [sum(a * b for a, b in pairs)]


def test_acout_bcout_cascade_registers():
    """AREG = 2, ACASCREG = 1: ACOUT is A1 (one edge); the next slice's ACIN feeds its own path."""
    m = Module()
    first = DSP48E2(AREG=2, ACASCREG=1, BREG=2, BCASCREG=2)
    second = DSP48E2(A_INPUT="CASCADE", B_INPUT="CASCADE")
    m.submodules.first, m.submodules.second = first, second
    m.d.comb += [second.ACIN.eq(first.ACOUT), second.BCIN.eq(first.BCOUT)]
    trace = []

    async def bench(ctx):
        ctx.set(second.OPMODE, OPMODE_MUL)
        ctx.set(first.A, 11)
        ctx.set(first.B, u(-3, 18))
        for _ in range(6):
            await ctx.tick()
            trace.append((ctx.get(first.ACOUT), ctx.get(first.BCOUT), s48(ctx.get(second.P))))

    run(None, bench, m)
    assert [t[0] for t in trace[:2]] == [11, 11]        # A1 after one edge
    assert [t[1] for t in trace[:2]] == [0, u(-3, 18)]  # B2 after two edges
    # second slice: BCIN arrives after 2 edges, + BREG + MREG + PREG = 5 edges.
    assert trace[3][2] == 0 and trace[4][2] == -33


def test_accumulate_subtract_and_c_port():
    dut = DSP48E2()
    out = {}

    async def bench(ctx):
        ctx.set(dut.A, 3)
        ctx.set(dut.B, 4)
        ctx.set(dut.OPMODE, OPMODE_MUL_ACC)          # P += A*B every cycle
        await ctx.tick().repeat(3)
        p0 = s48(ctx.get(dut.P))
        await ctx.tick().repeat(4)
        out["acc_step"] = s48(ctx.get(dut.P)) - p0
        # Z - (X + Y): C - A*B with Z = C, ALUMODE 0011.
        ctx.set(dut.C, 1000)
        ctx.set(dut.OPMODE, opmode(x=1, y=1, z=0b011))
        ctx.set(dut.ALUMODE, 0b0011)
        await ctx.tick().repeat(3)
        out["c_minus_m"] = s48(ctx.get(dut.P))
        # W = C, X = A:B, Y = all ones, Z = 0, CARRYIN = 1: C + A:B - 1 + 1.
        ctx.set(dut.ALUMODE, 0)
        ctx.set(dut.OPMODE, opmode(w=0b11, x=0b11, y=0b10, z=0))
        ctx.set(dut.CARRYIN, 1)
        await ctx.tick().repeat(3)
        out["w_ab_ones"] = ctx.get(dut.P)

    run(dut, bench)
    assert out["acc_step"] == 4 * 12
    assert out["c_minus_m"] == 1000 - 12
    assert out["w_ab_ones"] == (1000 + ((3 << 18) | 4)) & MASK48


def test_z_shift_by_17():
    m = Module()
    first, second = DSP48E2(), DSP48E2()
    m.submodules.first, m.submodules.second = first, second
    m.d.comb += second.PCIN.eq(first.PCOUT)
    out = {}

    async def bench(ctx):
        ctx.set(first.OPMODE, OPMODE_MUL)
        ctx.set(first.A, u(-(1 << 20), 30))
        ctx.set(first.B, 1000)
        ctx.set(second.OPMODE, opmode(z=0b101))       # P = PCIN >>> 17
        await ctx.tick().repeat(5)
        out["pcin_shift"] = s48(ctx.get(second.P))
        ctx.set(second.OPMODE, opmode(z=0b110))       # P = P >>> 17 (arithmetic)
        await ctx.tick().repeat(2)
        out["p_shift"] = s48(ctx.get(second.P))

    run(None, bench, m)
    assert out["pcin_shift"] == (-(1 << 20) * 1000) >> 17
    assert out["p_shift"] == ((-(1 << 20) * 1000) >> 17) >> 17


def test_clock_enables_hold_and_resets_clear():
    dut = DSP48E2()
    out = {}

    async def bench(ctx):
        ctx.set(dut.OPMODE, OPMODE_MUL)
        ctx.set(dut.A, 9)
        ctx.set(dut.B, 9)
        await ctx.tick().repeat(4)
        assert s48(ctx.get(dut.P)) == 81
        # CEP low: P holds even though the product changes.
        ctx.set(dut.CEP, 0)
        ctx.set(dut.A, 2)
        await ctx.tick().repeat(4)
        out["held"] = s48(ctx.get(dut.P))
        ctx.set(dut.CEP, 1)
        await ctx.tick()
        out["released"] = s48(ctx.get(dut.P))
        # CEA2 low: A register holds 2 while the A input changes.
        ctx.set(dut.CEA2, 0)
        ctx.set(dut.A, 100)
        await ctx.tick().repeat(4)
        out["a_held"] = s48(ctx.get(dut.P))
        ctx.set(dut.CEA2, 1)
        # RSTP clears P at the next edge, even with CEP = 0 (reset has priority).
        ctx.set(dut.CEP, 0)
        ctx.set(dut.RSTP, 1)
        await ctx.tick()
        out["rst_p"] = ctx.get(dut.P)
        ctx.set(dut.RSTP, 0)
        ctx.set(dut.CEP, 1)
        await ctx.tick().repeat(3)
        out["after"] = s48(ctx.get(dut.P))
        # RSTM clears the M register: P = 0 + 0 one edge later.
        ctx.set(dut.RSTM, 1)
        await ctx.tick().repeat(2)
        out["rst_m"] = ctx.get(dut.P)
        ctx.set(dut.RSTM, 0)
        # RSTCTRL clears the OPMODE register: X = Y = Z = 0 -> P = 0 while it is held.
        await ctx.tick().repeat(2)
        assert s48(ctx.get(dut.P)) == 900
        ctx.set(dut.RSTCTRL, 1)
        await ctx.tick().repeat(2)
        out["rst_ctrl"] = ctx.get(dut.P)

    run(dut, bench)
    assert out == {"held": 81, "released": 18, "a_held": 18, "rst_p": 0, "after": 900,
                   "rst_m": 0, "rst_ctrl": 0}


def test_registered_opmode_acts_one_cycle_later():
    dut = DSP48E2(MREG=0, AREG=0, BREG=0)   # product combinational: only OPMODEREG and PREG remain
    trace = []

    async def bench(ctx):
        ctx.set(dut.A, 6)
        ctx.set(dut.B, 7)
        ctx.set(dut.OPMODE, OPMODE_MUL)
        for _ in range(3):
            await ctx.tick()
            trace.append(s48(ctx.get(dut.P)))

    run(dut, bench)
    assert trace == [0, 42, 42]   # OPMODE register at edge 1, P at edge 2


@pytest.mark.parametrize("kwargs", [
    {"AREG": 3}, {"AREG": 1, "ACASCREG": 2}, {"BREG": 2, "BCASCREG": 0}, {"AMULTSEL": "B"},
    {"MREG": 2}, {"A_INPUT": "CHAIN"}, {"RND": -1},
])
def test_bad_attributes_rejected(kwargs):
    with pytest.raises(DSP48E2ConfigError):
        DSP48E2(**kwargs)


def test_primitive_instance_ties_every_input():
    from amaranth.back.verilog import convert

    dut = DSP48E2(primitive=True, AREG=2, ACASCREG=1, AMULTSEL="AD", BREG=2)
    text = convert(dut, name="dsp_top")
    assert "DSP48E2 #(" in text
    for port in ("A", "ACIN", "B", "BCIN", "C", "D", "PCIN", "OPMODE", "ALUMODE", "INMODE",
                 "CARRYIN", "CARRYINSEL", "CARRYCASCIN", "MULTSIGNIN", "CLK", "CEA1", "CEP",
                 "RSTA", "RSTP", "RSTALLCARRYIN"):
        assert f".{port}(" in text, port
    assert ".AREG(32'd2)" in text and '.AMULTSEL("AD")' in text and ".ACASCREG(32'd1)" in text


@pytest.mark.rtl
@requires_verilator
def test_lint_behavioural_slice():
    from olivine.hw.export import lint, verilog

    waivers = {"UNUSEDSIGNAL": "Amaranth keeps named aliases of nets as wires; a configuration "
                               "leaves slice ports unused as the silicon does (ACIN with "
                               "A_INPUT=DIRECT, CEA1 with AREG=1, the domain reset)."}
    for i, kwargs in enumerate([dict(AREG=1, BREG=2, AMULTSEL="AD"), dict(AREG=2, ACASCREG=1, PREG=0, MREG=0)]):
        lint(verilog(DSP48E2(**kwargs), f"dsp_lint{i}"), f"dsp_lint{i}", waivers=waivers)


@pytest.mark.synth
def test_resource_unit_is_one_slice():
    from olivine.hw.resources import build_unit, synthesize

    component, top = build_unit("dsp48e2", {"primitive": "true"})
    report = synthesize(component, top)
    assert report.dsp48e2 == 1 and report.lut == 0 and report.ff == 0


# -- RTL: the generated Verilog of the model against an independent cycle model ------------------


def _s(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def wp486_cycle_model(stim: dict) -> list[int]:
    """P after each rising edge for the WP486 configuration (AREG = DREG = ADREG = MREG = PREG = 1,
    BREG = 2, AMULTSEL = "AD", INMODE = 00100, controls and C registered): the ALU of cycle t
    sees the product of the inputs of cycle t - 3, OPMODE/ALUMODE/C/CARRYIN of cycle t - 1, PCIN
    of cycle t and P after cycle t - 1."""
    n = len(stim["a"])
    at = lambda key, t: stim[key][t] if t >= 0 else 0  # noqa: E731 - registers start at 0
    p, out = 0, []
    for t in range(n):
        ad = _s(_s(at("d", t - 3), 27) + _s(at("a", t - 3), 27), 27)
        m = ad * _s(at("b", t - 3), 18)
        op, alu, c, cin = at("opmode", t - 1), at("alumode", t - 1), at("c", t - 1), at("carryin", t - 1)
        pcin = stim["pcin"][t]
        w = {0: 0, 1: p, 2: 0, 3: c}[op >> 7 & 3]
        x = {0: 0, 1: m, 2: p}[op & 3]
        y = {0: 0, 1: 0, 2: -1, 3: c}[op >> 2 & 3]
        z = {0: 0, 1: pcin, 2: p, 3: c, 4: p, 5: _s(pcin, 48) >> 17, 6: _s(p, 48) >> 17}[op >> 4 & 7]
        z_eff = ~z if alu & 1 else z
        total = (w + x + y + z_eff + cin) & ((1 << 48) - 1)
        p = total ^ ((1 << 48) - 1) if alu & 2 else total
        out.append(p)
    return out


def wp486_stimulus(rng, cycles: int) -> dict:
    xy = [(1, 1), (0, 0), (2, 3), (2, 2)]   # X = Y = M, none, P + C, P + all ones
    ops = []
    for _ in range(cycles):
        x, y = rng.choice(xy)
        ops.append((rng.choice((0, 1, 3)) << 7) | (rng.choice((0, 1, 2, 3, 5, 6)) << 4) | (y << 2) | x)
    return {
        "a": [rng.getrandbits(30) for _ in range(cycles)],
        "b": [rng.getrandbits(18) for _ in range(cycles)],
        "d": [rng.getrandbits(27) for _ in range(cycles)],
        "c": [rng.getrandbits(48) for _ in range(cycles)],
        "pcin": [rng.getrandbits(48) for _ in range(cycles)],
        "opmode": ops,
        "alumode": [rng.choice((0, 3)) for _ in range(cycles)],
        "carryin": [rng.getrandbits(1) for _ in range(cycles)],
    }


def test_cycle_model_agrees_with_amaranth_simulation():
    """The independent cycle model (used for the RTL vectors) against the Amaranth simulation."""
    import random

    rng = random.Random(4)
    stim = wp486_stimulus(rng, 300)
    want = wp486_cycle_model(stim)
    dut = DSP48E2(AREG=1, BREG=2, DREG=1, ADREG=1, MREG=1, PREG=1, AMULTSEL="AD")
    got = []

    async def bench(ctx):
        ctx.set(dut.INMODE, 0b00100)
        for t in range(len(want)):
            for port, key in (("A", "a"), ("B", "b"), ("D", "d"), ("C", "c"), ("PCIN", "pcin"),
                              ("OPMODE", "opmode"), ("ALUMODE", "alumode"), ("CARRYIN", "carryin")):
                ctx.set(getattr(dut, port), stim[key][t])
            await ctx.tick()
            got.append(ctx.get(dut.P))

    run(dut, bench)
    assert got == want


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", SIMULATOR_PARAMS)
def test_rtl_slice_matches_cycle_model(simulator):
    import random
    from pathlib import Path

    import numpy as np

    from olivine.hw.export import verilog
    from olivine.sim.rtl import run_cocotb

    if simulator == "verilator" and REDUCED:
        pytest.skip("reduced run: the Icarus run covers the slice; the chain sweep builds it in Verilator")
    stim = wp486_stimulus(random.Random(8), 400)
    want = wp486_cycle_model(stim)
    vectors = {k: np.array(v, dtype=np.int64) for k, v in stim.items() if k not in ("c", "pcin")}
    for key in ("c", "pcin"):
        vectors[f"{key}_lo"] = np.array([v & 0xFFFFFF for v in stim[key]], dtype=np.int64)
        vectors[f"{key}_hi"] = np.array([v >> 24 for v in stim[key]], dtype=np.int64)
    vectors["p_lo"] = np.array([v & 0xFFFFFF for v in want], dtype=np.int64)
    vectors["p_hi"] = np.array([v >> 24 for v in want], dtype=np.int64)
    top = "dsp48e2_wp486"
    text = verilog(DSP48E2(AREG=1, BREG=2, DREG=1, ADREG=1, MREG=1, PREG=1, AMULTSEL="AD"), top)
    run_cocotb(text, top, "tb_dsp48e2", test_dir=Path(__file__).parent / "rtl", simulator=simulator,
               vectors=vectors)
