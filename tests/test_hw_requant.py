"""The matrix engine's requantizer (hw/requant.py) against sim.funcsim.requantize_exact, bit for bit.

Levels: the interface of CORE_INTERFACE.md section 3 (layouts, latency constant); Amaranth simulation
of edge values (INT32_MIN/MAX accumulators, mantissas 0/1/256/65536, multipliers 0 / 2**30 /
2**31-1 / bit 31 set, shifts -5..70 and int32 extremes, exponents -256..254, saturating biases, both
output forms) and random values, under random valid/ready back-pressure, with the latency and
throughput measured; ApplyMultiplier alone against contract.apply_multiplier; Verilator lint;
cocotb + Verilator; Yosys resources (synth marker).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from amaranth.hdl import EnableInserter, Module, Shape, signed, unsigned
from amaranth.lib import wiring
from amaranth.sim import Simulator

from olivine.golden import contract
from olivine.hw.requant import (REQUANT_IN, REQUANT_LATENCY, REQUANT_OUT, ApplyMultiplier, Requantizer, apply_latency,
                                clamp_shift)
from olivine.sim.funcsim import requantize_exact
from tests.helpers import REDUCED, requires_verilator
from tests.test_hw_sfu_arith import pack, run_stream, words

RTL_DIR = Path(__file__).parent / "rtl"
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
FIELDS = ("acc", "mantissa", "exponent", "mult", "shift", "bias", "add_bias", "int8")


def expected(cases: list[dict]) -> list[tuple[int, int]]:
    """(value, bad_mult) per case from funcsim: the multiplier's low 31 bits, then bias or int8."""
    col = {f: np.array([c[f] for c in cases], dtype=np.int64) for f in FIELDS}
    out = []
    for int8 in (0, 1):
        lo, hi = (-contract.INT8_QMAX, contract.INT8_QMAX) if int8 else (I32_MIN, I32_MAX)
        y = requantize_exact(col["acc"], col["mult"] & 0x7FFFFFFF, col["shift"], col["exponent"],
                             col["mantissa"], lo, hi)
        if not int8:
            y = np.where(col["add_bias"] == 1, np.clip(y + col["bias"], I32_MIN, I32_MAX), y)
        out.append(y)
    return [(int(out[c["int8"]][n]), c["mult"] >> 31) for n, c in enumerate(cases)]


def edge_cases(rng: random.Random) -> list[dict]:
    accs = [I32_MIN, I32_MAX, 0, 1, -1, I32_MIN + 1, 1 << 30, -(1 << 30), 12345, -98765]
    mants = [0, 1, 256, 65536, (1 << 17) - 1, 255 * 256, 3]
    mults = [0, 1 << 30, (1 << 31) - 1, (1 << 31) | (1 << 30), 1, 0x5A5A5A5, 1518500250, 0xFFFFFFFF]
    shifts = list(range(-5, 71)) + [I32_MIN, I32_MAX, -(1 << 20), 1 << 20]
    exps = list(range(-128, 128)) + [-256, 254, -255, 511, -512]
    biases = [0, I32_MAX, I32_MIN, 1, -1, 1 << 30, -(1 << 30)]
    cases = []
    # every shift and exponent with extreme accumulators and in-domain multipliers
    for s in shifts:
        cases.append(dict(acc=rng.choice(accs), mantissa=rng.choice(mants), exponent=0, mult=rng.choice(mults),
                          shift=s, bias=rng.choice(biases), add_bias=rng.getrandbits(1), int8=rng.getrandbits(1)))
    for e in exps:
        cases.append(dict(acc=rng.choice(accs), mantissa=rng.choice(mants), exponent=e, mult=rng.choice(mults),
                          shift=rng.randint(-5, 70), bias=rng.choice(biases), add_bias=rng.getrandbits(1),
                          int8=rng.getrandbits(1)))
    # the corners crossed: accumulator x mantissa x multiplier x output form
    for a in accs[:4]:
        for mt in mants[:5]:
            for mu in mults[:4]:
                for int8 in (0, 1):
                    cases.append(dict(acc=a, mantissa=mt, exponent=rng.randint(-10, 10), mult=mu,
                                      shift=rng.choice([-1, 0, 1, 30, 31, 32, 46, 47, 62]),
                                      bias=rng.choice(biases), add_bias=1, int8=int8))
    # exact ties of the rounding: acc * 2**30 = odd * 2**(s-1) with s = shift in [31, 49], both signs
    for _ in range(60):
        s = rng.randint(31, 49)
        acc = rng.choice([1, -1]) * (2 * rng.randint(0, 1 << 11) + 1) << (s - 31)
        cases.append(dict(acc=acc, mantissa=1, exponent=0, mult=1 << 30, shift=s, bias=0, add_bias=0, int8=0))
    return cases


def random_cases(rng: random.Random, n: int) -> list[dict]:
    cases = []
    for _ in range(n):
        kind = rng.random()
        mult = rng.randint(1 << 30, (1 << 31) - 1) if kind < 0.7 else rng.getrandbits(32 if kind > 0.95 else 31)
        mant = rng.choice([1, rng.randint(1, 256), rng.randint(1, 256) * rng.randint(1, 256)])
        acc = rng.choice([rng.randint(I32_MIN, I32_MAX), rng.randint(-(1 << 16), 1 << 16),
                          rng.randint(-300, 300)])
        # shifts around where results fall in or just out of range
        shift = rng.choice([rng.randint(-5, 70), rng.randint(25, 60), rng.randint(I32_MIN, I32_MAX)])
        cases.append(dict(acc=acc, mantissa=mant, exponent=rng.randint(-256, 254), mult=mult, shift=shift,
                          bias=rng.choice([rng.randint(I32_MIN, I32_MAX), rng.randint(-1000, 1000)]),
                          add_bias=rng.getrandbits(1), int8=int(rng.random() < 0.3)))
    return cases


def _read(dut):
    def read(ctx):
        return ctx.get(dut.o.payload.value), ctx.get(dut.o.payload.bad_mult)
    return read


def test_interface_matches_core_interface_section_3():
    dut = Requantizer()
    assert dut.i.payload.shape() == REQUANT_IN and dut.o.payload.shape() == REQUANT_OUT
    assert {n: Shape.cast(f.shape) for n, f in REQUANT_IN} == {
        "acc": signed(32), "mantissa": unsigned(17), "exponent": signed(10), "mult": unsigned(32),
        "shift": signed(32), "bias": signed(32), "add_bias": unsigned(1), "int8": unsigned(1)}
    assert {n: Shape.cast(f.shape) for n, f in REQUANT_OUT} == {"value": signed(32), "bad_mult": unsigned(1)}
    assert REQUANT_LATENCY == Requantizer.latency == 14


def test_edges_match_funcsim_unstalled_latency_and_throughput():
    rng = random.Random(1)
    cases = edge_cases(rng)
    dut = Requantizer()
    out, acc, emit = run_stream(dut, cases, _read(dut))
    want = expected(cases)
    bad = [(c, o, w) for c, o, w in zip(cases, out, want) if o != w]
    assert not bad, f"{len(bad)} of {len(cases)} differ; first (case, got, want): {bad[:2]}"
    assert emit[0] - acc[0] == REQUANT_LATENCY
    assert acc == list(range(len(cases))) and emit == [a + REQUANT_LATENCY for a in acc]  # one per cycle


def test_random_values_under_random_backpressure():
    rng = random.Random(2)
    cases = random_cases(rng, 600 if REDUCED else 3000)
    pattern = random.Random(3)
    offers = [pattern.random() < 0.7 for _ in range(20 * len(cases))]
    takes = [pattern.random() < 0.6 for _ in range(20 * len(cases))]
    dut = Requantizer()
    out, _, _ = run_stream(dut, cases, _read(dut), valid_pattern=offers.__getitem__,
                           ready_pattern=takes.__getitem__)
    want = expected(cases)
    bad = [(c, o, w) for c, o, w in zip(cases, out, want) if o != w]
    assert not bad, f"{len(bad)} of {len(cases)} differ; first (case, got, want): {bad[:2]}"
    assert sum(1 for c in cases if c["mult"] >> 31) > 0  # the flag was exercised


class _ApplyHarness(wiring.Component):
    """ApplyMultiplier with its shift clamp in front, frozen by an enable (as the SFU drives it)."""

    def __init__(self, x_bits, out_bits):
        from amaranth.lib.wiring import In, Out
        self.x_bits, self.out_bits = x_bits, out_bits
        super().__init__({"x": In(signed(x_bits)), "mult": In(unsigned(31)), "shift": In(signed(32)),
                          "en": In(1), "y": Out(signed(out_bits))})

    def elaborate(self, platform):
        m = Module()
        core = ApplyMultiplier(self.x_bits, self.out_bits)
        m.submodules.core = EnableInserter(self.en)(core)
        m.d.comb += [core.x.eq(self.x), core.mult.eq(self.mult), core.s.eq(clamp_shift(self.shift)),
                     self.y.eq(core.y)]
        return m


def test_apply_multiplier_matches_contract_with_a_40_bit_clamp_and_stalls():
    """The SFU's use: int32 x, apply_multiplier clamped to +-2**40 (out_bits 42), enable toggling."""
    rng = random.Random(4)
    n = 150 if REDUCED else 500
    xs = [rng.choice([I32_MIN, I32_MAX, 0, rng.randint(I32_MIN, I32_MAX), rng.randint(-999, 999)]) for _ in range(n)]
    mults = [rng.choice([0, 1 << 30, (1 << 31) - 1, rng.randint(1 << 30, (1 << 31) - 1), rng.getrandbits(31)])
             for _ in range(n)]
    shifts = [rng.choice([rng.randint(-40, 70), rng.randint(0, 40)]) for _ in range(n)]
    lim = 1 << 40
    want = contract.apply_multiplier(torch.tensor(xs), contract.Multiplier(torch.tensor(mults), torch.tensor(shifts)),
                                     lo=-lim, hi=lim).tolist()
    dut = _ApplyHarness(32, 42)
    lat = apply_latency(32)
    enables = [rng.random() < 0.6 for _ in range(4 * n + 50)]
    got = []

    async def bench(ctx):
        fed, pending = 0, []  # pending: enabled clock edges since each value was taken
        for en in enables:
            if pending and pending[0] == lat:
                pending.pop(0)
                got.append(max(-lim, min(lim, ctx.get(dut.y))))
            if len(got) == n:
                break
            ctx.set(dut.en, en)
            if fed < n:
                ctx.set(dut.x, xs[fed])
                ctx.set(dut.mult, mults[fed])
                ctx.set(dut.shift, shifts[fed])
                if en:
                    pending.append(0)
                    fed += 1
            await ctx.tick()
            if en:
                pending = [p + 1 for p in pending]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


@pytest.mark.rtl
@requires_verilator
def test_verilog_lints_clean():
    from olivine.hw.export import lint, verilog
    from olivine.hw.resources import build_unit
    from olivine.hw.sfu_arith import LINT_WAIVERS

    dut, top = build_unit("requant", {})
    lint(verilog(dut, top), top, waivers=LINT_WAIVERS)


@pytest.mark.rtl
@requires_verilator
def test_cocotb_verilator_random_backpressure():
    from olivine.hw.export import verilog
    from olivine.sim.rtl import run_cocotb

    rng = random.Random(5)
    cases = edge_cases(rng) + random_cases(rng, 300 if REDUCED else 3000)
    want = expected(cases)
    n_cycles = 4 * len(cases) + 400
    pattern = np.random.default_rng(6)
    valid = (pattern.random(n_cycles) < 0.75).astype(np.int64)
    ready = (pattern.random(n_cycles) < 0.65).astype(np.int64)
    valid[:30] = ready[:30] = 1  # a clean start: the latency is measured on the first value
    vec = {
        "in_words": words([pack(REQUANT_IN, c) for c in cases], Shape.cast(REQUANT_IN).width),
        "out_words": words([pack(REQUANT_OUT, {"value": v, "bad_mult": b}) for v, b in want],
                           Shape.cast(REQUANT_OUT).width),
        "valid": valid, "ready": ready, "latency": np.array(REQUANT_LATENCY),
    }
    run_cocotb(verilog(Requantizer(), "requant"), "requant", "tb_requant", test_dir=RTL_DIR, vectors=vec,
               testcase="requant_matches_funcsim")


@pytest.mark.synth
def test_yosys_resources_six_dsps():
    from olivine.hw.resources import build_unit, synthesize

    dut, top = build_unit("requant", {})
    rep = synthesize(dut, top)
    assert rep.dsp48e2 == 6, rep
    assert rep.bram36 == rep.bram18 == 0
