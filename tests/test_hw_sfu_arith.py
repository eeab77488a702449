"""SFU arithmetic blocks (hw/sfu_arith.py) against golden/fixed.py and golden/sfu.py, bit for bit.

Levels: expression helpers exhaustively on small widths and on random wide values; the divider,
isqrt and rsqrt on edge and random inputs in Amaranth simulation (latency measured); Exp2Neg
and Sigmoid exhaustively over their table indices plus random inputs, with output back-pressure;
Verilator lint; cocotb + Verilator runs of the divider, RsqrtNorm and Exp2Neg/Sigmoid; Yosys
resources (synth marker).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from olivine.golden import fixed, sfu
from olivine.hw.sfu_arith import (DIVIDER_USES, Exp2Neg, Isqrt, RsqrtNorm, SfuArithError, Sigmoid,
                                  UnsignedDivider, bit_length, round_shift, saturate)
from tests.helpers import REDUCED, evaluate_comb, requires_verilator

RTL_DIR = Path(__file__).parent / "rtl"


# --------------------------------------------------------------------------- stream harness


def _set_payload(ctx, view, value):
    """Set a stream payload from an int or a (nested) dict / list of ints."""
    if isinstance(value, dict):
        for key, v in value.items():
            _set_payload(ctx, getattr(view, key), v)
    elif isinstance(value, (list, tuple)):
        for k, v in enumerate(value):
            _set_payload(ctx, view[k], v)
    else:
        ctx.set(view, value)


def run_stream(dut, items, read, *, ready_pattern=None, valid_pattern=None, max_cycles=200000,
               extra=None):
    """Drive ``items`` into ``dut.i`` and collect ``read(ctx)`` of every ``dut.o`` beat.

    Returns (outputs, accept_cycles, emit_cycles). ``ready_pattern`` / ``valid_pattern`` are
    callables cycle -> bool (default always). ``extra(ctx)`` runs once before the first cycle.
    """
    outputs, accepted, emitted = [], [], []
    ready_pattern = ready_pattern or (lambda c: True)
    valid_pattern = valid_pattern or (lambda c: True)

    async def bench(ctx):
        # one process drives both sides, so every handshake reads this cycle's settled values
        if extra is not None:
            extra(ctx)
        cycle, k = 0, 0
        while len(outputs) < len(items) and cycle < max_cycles:
            offer = k < len(items) and valid_pattern(cycle)
            ctx.set(dut.i.valid, int(offer))
            if offer:
                _set_payload(ctx, dut.i.payload, items[k])
            take = ready_pattern(cycle)
            ctx.set(dut.o.ready, int(take))
            fire = offer and ctx.get(dut.i.ready)
            got = read(ctx) if take and ctx.get(dut.o.valid) else None
            await ctx.tick()
            if fire:
                accepted.append(cycle)
                k += 1
            if got is not None:
                outputs.append(got)
                emitted.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(outputs) == len(items), f"only {len(outputs)} of {len(items)} results came out"
    return outputs, accepted, emitted


# --------------------------------------------------------------------------- helpers


def test_bit_length_exhaustive_small_and_random_wide():
    vals = list(range(1 << 10))
    got = evaluate_comb(lambda m, x: bit_length(x), [unsigned(10)], [(v,) for v in vals])
    assert got == [v.bit_length() for v in vals]
    rng = random.Random(1)
    wide = [0, 1, (1 << 62) - 1, 1 << 61] + [rng.getrandbits(rng.randint(1, 62)) for _ in range(500)]
    got = evaluate_comb(lambda m, x: bit_length(x), [unsigned(62)], [(v,) for v in wide])
    assert got == [v.bit_length() for v in wide]
    # agrees with golden's tensor version
    assert got == fixed.bit_length(torch.tensor(wide)).tolist()


@pytest.mark.parametrize("s", [-3, 0, 1, 2, 5])
def test_round_shift_constant_exhaustive_8bit(s):
    vals = list(range(-128, 128))
    got = evaluate_comb(lambda m, x: round_shift(x, s), [signed(8)], [(v,) for v in vals])
    assert got == [fixed.round_shift(v, s) for v in vals]


def test_round_shift_variable_exhaustive_small():
    rows = [(v, s) for v in range(-128, 128) for s in range(8)]
    got = evaluate_comb(lambda m, x, s: round_shift(x, s), [signed(8), unsigned(3)], rows)
    assert got == [fixed.round_shift(v, s) for v, s in rows]


def test_round_shift_variable_wide_random():
    rng = random.Random(2)
    rows = [(rng.randint(-(1 << 62), (1 << 62) - 1), rng.randint(0, 63)) for _ in range(400)]
    rows += [(v, s) for v in (-(1 << 62), (1 << 62) - 1, -1, 1) for s in (0, 1, 62, 63)]
    got = evaluate_comb(lambda m, x, s: round_shift(x, s, max_shift=63), [signed(63), unsigned(6)], rows)
    assert got == [fixed.round_shift(v, s) for v, s in rows]


def test_saturate_exhaustive_10_to_6_bits():
    vals = list(range(-512, 512))
    got = evaluate_comb(lambda m, x: saturate(x, 6), [signed(10)], [(v,) for v in vals])
    assert got == [fixed.saturate(v, 6) for v in vals]


# --------------------------------------------------------------------------- divider


def _divide(dut, pairs, **kw):
    def read(ctx):
        p = dut.o.payload
        return ctx.get(p.quotient), ctx.get(p.remainder), ctx.get(p.overflow)
    return run_stream(dut, [{"num": n, "den": d} for n, d in pairs], read, **kw)


def _divider_cases(use, rng, n):
    nb, db, qb = DIVIDER_USES[use]
    if use == "softmax":
        dens = [1 << 31, (1 << 51), (1 << 51) - 1, 3 << 30] + \
            [rng.randint(1 << 31, 1 << 51) for _ in range(n)]
        return [(1 << 62, d) for d in dens]
    if use == "rsqrt":
        dens = [1 << 22, 1 << 24, (1 << 23) + 1] + [rng.randint(1 << 22, 1 << 24) for _ in range(n)]
        return [(1 << 62, d) for d in dens]
    return [(127 << 22, d) for d in range(1, 257)]          # quant: every mantissa


@pytest.mark.parametrize("use", sorted(DIVIDER_USES))
@pytest.mark.parametrize("bits_per_cycle", [1, 2])
def test_divider_matches_floor_division(use, bits_per_cycle):
    rng = random.Random(3)
    dut = UnsignedDivider(*DIVIDER_USES[use], bits_per_cycle=bits_per_cycle)
    pairs = _divider_cases(use, rng, 40 if REDUCED else 120)
    out, acc, emit = _divide(dut, pairs)
    assert out == [(n // d, n % d, 0) for n, d in pairs]
    assert dut.latency == -(-DIVIDER_USES[use][2] // bits_per_cycle) + 1
    assert emit[0] - acc[0] == dut.latency                       # measured latency
    assert acc[1] - acc[0] == dut.latency                        # back-to-back throughput


def test_divider_random_widths_backpressure_and_overflow_flag():
    rng = random.Random(4)
    dut = UnsignedDivider(20, 8, 13, bits_per_cycle=3)
    pairs = [(rng.getrandbits(20), rng.randint(1, 255)) for _ in range(150)] + [(5, 0), (1 << 19, 1)]
    out, _, _ = _divide(dut, pairs, ready_pattern=lambda c: c % 3 != 1,
                        valid_pattern=lambda c: c % 5 != 2)
    for (n, d), (q, r, ovf) in zip(pairs, out):
        fits = d > 0 and n < d << 13
        assert ovf == (not fits), (n, d)
        if fits:
            assert (q, r) == (n // d, n % d), (n, d)


# --------------------------------------------------------------------------- isqrt


@pytest.mark.parametrize("n_bits,bits_per_cycle", [(62, 1), (42, 2), (12, 3)])
def test_isqrt_matches_golden(n_bits, bits_per_cycle):
    rng = random.Random(5)
    dut = Isqrt(n_bits, bits_per_cycle)
    top = (1 << n_bits) - 1
    vals = [0, 1, 2, 3, 4, top, top - 1]
    vals += [r * r for r in (rng.getrandbits(n_bits // 2) for _ in range(20))]
    vals += [r * r - 1 for r in (rng.randint(1, 1 << (n_bits // 2)) for _ in range(20))]
    vals = [min(v, top) for v in vals]
    vals += [rng.getrandbits(n_bits) for _ in range(60 if REDUCED else 200)]
    out, acc, emit = run_stream(dut, vals, lambda ctx: (ctx.get(dut.o.payload.root),
                                                       ctx.get(dut.o.payload.remainder)))
    want_root = fixed.isqrt(torch.tensor(vals)).tolist() if n_bits <= 62 else None
    for v, (root, rem), w in zip(vals, out, want_root):
        assert root == w and rem == v - w * w, v
    assert emit[0] - acc[0] == dut.latency == -(-(n_bits // 2) // bits_per_cycle) + 1


def test_isqrt_small_exhaustive():
    dut = Isqrt(10, 1)
    vals = list(range(1 << 10))
    out, _, _ = run_stream(dut, vals, lambda ctx: ctx.get(dut.o.payload.root))
    assert out == [fixed.isqrt(v) for v in vals]


# --------------------------------------------------------------------------- rsqrt_norm


def _rsqrt_cases(rng, n):
    vals = [0, 1, 2, 3, (1 << 22) - 1, 1 << 22, (1 << 23) - 1, 1 << 23, (1 << 24) - 1, 1 << 24,
            (1 << 62) - 1, 1 << 61, (1 << 61) - 1, (1 << 25) + 1]
    vals += [(1 << b) + d for b in range(0, 62) for d in (-1, 0, 1) if (1 << b) + d >= 0]
    vals += [rng.getrandbits(rng.randint(1, 62)) for _ in range(n)]
    return [v for v in vals if v < 1 << 62]


def rsqrt_model(vals):
    r, u = sfu.rsqrt_norm(torch.tensor(vals, dtype=torch.int64))
    return list(zip(r.tolist(), u.tolist()))


def test_rsqrt_norm_matches_golden():
    rng = random.Random(6)
    dut = RsqrtNorm()
    vals = _rsqrt_cases(rng, 60 if REDUCED else 300)
    out, acc, emit = run_stream(dut, vals, lambda ctx: (ctx.get(dut.o.payload.r),
                                                       ctx.get(dut.o.payload.u)))
    assert out == rsqrt_model(vals)
    assert emit[0] - acc[0] == dut.latency == 35
    # the R floor property of docs/sfu.md holds for every normalised T'
    for v, (r, u) in zip(vals, out):
        if v:
            tn = fixed.round_shift(v, 2 * u)
            assert r * r * tn <= 1 << 62 < (r + 1) * (r + 1) * tn


def test_rsqrt_norm_radix2_with_backpressure():
    rng = random.Random(7)
    dut = RsqrtNorm(bits_per_cycle=1)
    vals = _rsqrt_cases(rng, 10)[::3]
    out, _, _ = run_stream(dut, vals, lambda ctx: (ctx.get(dut.o.payload.r), ctx.get(dut.o.payload.u)),
                           ready_pattern=lambda c: c % 7 < 3)
    assert out == rsqrt_model(vals)


# --------------------------------------------------------------------------- Exp2Neg / Sigmoid


def _exp_inputs(rng, n):
    ts = [j << 12 for j in range(256)] + [(j << 12) | 4095 for j in range(256)]   # every index
    ts += [k << 20 | rng.getrandbits(20) for k in range(64)]                       # every k
    ts += [0, 1, 2048, 2047, (1 << 26) - 1, (40 * 2**16 * sfu._LOG2E_M + (1 << 25)) >> 26]
    ts += [rng.getrandbits(26) for _ in range(n)]
    return [t for t in ts if t < 1 << 26]


def _lanes(seq, lanes):
    seq = list(seq) + [seq[-1]] * (-len(seq) % lanes)
    return [seq[k:k + lanes] for k in range(0, len(seq), lanes)]


@pytest.mark.parametrize("lanes,stall", [(1, False), (4, True)])
def test_exp2_neg_matches_golden(lanes, stall):
    rng = random.Random(8)
    ts = _exp_inputs(rng, 200 if REDUCED else 1000)
    dut = Exp2Neg(lanes, tag_bits=12)
    beats = _lanes(ts, lanes)
    items = [{"t": b, "tag": k & 0xFFF} for k, b in enumerate(beats)]
    out, acc, emit = run_stream(
        dut, items, lambda ctx: ([ctx.get(dut.o.payload.e[i]) for i in range(lanes)],
                                 ctx.get(dut.o.payload.tag)),
        ready_pattern=(lambda c: c % 4 != 3) if stall else None,
        valid_pattern=(lambda c: c % 6 != 1) if stall else None)
    want = sfu.exp2_neg(torch.tensor([x for b in beats for x in b], dtype=torch.int64)).tolist()
    got = [x for e, _ in out for x in e]
    assert got == want
    assert [t for _, t in out] == [k & 0xFFF for k in range(len(beats))]
    assert dut.latency == 3
    if not stall:
        assert emit[0] - acc[0] == dut.latency
        assert emit[-1] - emit[0] == len(beats) - 1          # one beat per cycle


def _sig_inputs(frac_in, rng, n):
    xs = []
    for j in range(1025):                                   # every table index, both signs
        base = fixed.round_shift(j << 12, 18 - frac_in) if frac_in <= 18 else j << (frac_in - 6)
        xs += [base, -base, base + 1, -base - 1]
    xs += [fixed.INT32_MIN, fixed.INT32_MAX, 0, 1, -1, 16 << frac_in, -(16 << frac_in),
           (16 << frac_in) - 1, 1 - (16 << frac_in)]
    xs += [rng.randint(-(40 << frac_in), 40 << frac_in) for _ in range(n)]
    xs += [rng.randint(fixed.INT32_MIN, fixed.INT32_MAX) for _ in range(n // 4)]
    return [max(fixed.INT32_MIN, min(fixed.INT32_MAX, x)) for x in xs]


@pytest.mark.parametrize("frac_in,lanes,stall", [(16, 4, False), (16, 1, True), (20, 2, False),
                                                 (8, 2, False)])
def test_sigmoid_matches_golden(frac_in, lanes, stall):
    rng = random.Random(9)
    xs = _sig_inputs(frac_in, rng, 200 if REDUCED else 1000)
    dut = Sigmoid(lanes, frac_in=frac_in)
    beats = _lanes(xs, lanes)
    out, acc, emit = run_stream(
        dut, [{"x": b} for b in beats], lambda ctx: [ctx.get(dut.o.payload.sig[i]) for i in range(lanes)],
        ready_pattern=(lambda c: c % 3 != 0) if stall else None)
    want = sfu._sigmoid_q(torch.tensor([x for b in beats for x in b], dtype=torch.int64), frac_in)
    assert [x for b in out for x in b] == want.tolist()
    assert dut.latency == 3
    if not stall:
        assert emit[0] - acc[0] == dut.latency
        assert emit[-1] - emit[0] == len(beats) - 1          # one beat per cycle


def test_bad_configurations_are_rejected():
    with pytest.raises(SfuArithError, match="n_bits=7 must be even"):
        Isqrt(7)
    with pytest.raises(SfuArithError, match="bits_per_cycle=0"):
        UnsignedDivider(8, 4, 4, bits_per_cycle=0)
    with pytest.raises(SfuArithError, match="frac_in=31"):
        Sigmoid(1, frac_in=31)
    with pytest.raises(SfuArithError, match="lanes=0"):
        Exp2Neg(0)


# --------------------------------------------------------------------------- Verilog: lint, cocotb


def pack(layout, value) -> int:
    """Pack a (nested) dict / list / int into the bits of an Amaranth layout (for cocotb)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data as ldata

    if isinstance(layout, ldata.StructLayout):
        out = 0
        for name, field in layout:
            if name in value:
                out |= pack(field.shape, value[name]) << field.offset
        return out
    if isinstance(layout, ldata.ArrayLayout):
        width = Shape.cast(layout.elem_shape).width
        return sum(pack(layout.elem_shape, v) << (k * width) for k, v in enumerate(value))
    width = Shape.cast(layout).width
    return int(value) & ((1 << width) - 1)


def unpack_signed(bits: int, width: int) -> int:
    return bits - (1 << width) if bits >> (width - 1) & 1 else bits


def words(values, bits):
    n = max(1, -(-bits // 32))
    import numpy as np
    return np.array([[(v >> (32 * k)) & 0xFFFFFFFF for k in range(n)] for v in values],
                    dtype=np.uint32).reshape(len(values), n)


def _patterns(n_cycles, stall):
    import numpy as np
    cyc = np.arange(n_cycles)
    valid = np.ones(n_cycles, dtype=np.int64)
    ready = np.ones(n_cycles, dtype=np.int64)
    if stall:                        # a clean start (latency measured), then stalls on both sides
        valid[40:] = (cyc[40:] % 5 != 2)
        ready[40:] = (cyc[40:] % 3 != 1)
    return valid, ready


def run_cocotb_stream(dut, top, items, expected, *, latency=-1, stall=True, cycles=None,
                      g_items=None, g_with=None, params=None):
    """Run tests/rtl/tb_sfu_arith.py on Verilator: ``items`` / ``expected`` are payload values
    (packed with the DUT's stream layouts)."""
    import numpy as np
    from olivine.hw.export import verilog
    from olivine.sim.rtl import run_cocotb

    in_layout = dut.i.payload.shape()
    out_layout = dut.o.payload.shape()
    from amaranth.hdl import Shape
    vec = {
        "in_words": words([pack(in_layout, v) for v in items], Shape.cast(in_layout).width),
        "out_words": words([pack(out_layout, v) for v in expected], Shape.cast(out_layout).width),
        "latency": np.array(latency),
    }
    if g_items is not None:
        g_layout = dut.g.payload.shape()
        vec["g_words"] = words([pack(g_layout, v) for v in g_items] or [0], Shape.cast(g_layout).width)
        vec["g_with"] = np.array(g_with, dtype=np.int64)
    if params is not None:
        p_layout = dut.params.shape()
        vec["params_words"] = words([pack(p_layout, v) for v in params], Shape.cast(p_layout).width)
    n = cycles or (len(items) + len(expected)) * 4 + 400
    vec["valid"], vec["ready"] = _patterns(n, stall)
    text = verilog(dut, top)
    return run_cocotb(text, top, "tb_sfu_arith", test_dir=RTL_DIR, vectors=vec,
                      testcase="stream_matches_golden")


@pytest.mark.rtl
@requires_verilator
@pytest.mark.parametrize("unit,params", [("sfu_divider", {"use": "softmax"}),
                                         ("sfu_divider", {"use": "quant"}),
                                         ("sfu_isqrt", {}), ("sfu_rsqrt", {}),
                                         ("sfu_exp2", {"lanes": 2}), ("sfu_sigmoid", {"lanes": 2})])
def test_verilog_lints_clean(unit, params):
    from olivine.hw.export import lint, verilog
    from olivine.hw.resources import build_unit
    from olivine.hw.sfu_arith import LINT_WAIVERS

    dut, top = build_unit(unit, params)
    lint(verilog(dut, top), top, waivers=LINT_WAIVERS)


@pytest.mark.rtl
@requires_verilator
def test_divider_and_rsqrt_cocotb_verilator():
    rng = random.Random(20)
    pairs = _divider_cases("softmax", rng, 30 if REDUCED else 200)
    dut = UnsignedDivider(*DIVIDER_USES["softmax"])
    run_cocotb_stream(dut, "sfu_div_softmax", [{"num": n, "den": d} for n, d in pairs],
                      [{"quotient": n // d, "remainder": n % d, "overflow": 0} for n, d in pairs],
                      latency=dut.latency, cycles=len(pairs) * 40 + 200)
    vals = _rsqrt_cases(rng, 20 if REDUCED else 200)
    dut = RsqrtNorm()
    run_cocotb_stream(dut, "sfu_rsqrt", vals, [{"r": r, "u": u} for r, u in rsqrt_model(vals)],
                      latency=dut.latency, cycles=len(vals) * 80 + 200)


@pytest.mark.rtl
@requires_verilator
def test_exp2_and_sigmoid_cocotb_verilator():
    rng = random.Random(21)
    lanes = 4
    ts = _lanes(_exp_inputs(rng, 200 if REDUCED else 2000), lanes)
    dut = Exp2Neg(lanes)
    want = sfu.exp2_neg(torch.tensor(ts, dtype=torch.int64)).tolist()
    run_cocotb_stream(dut, "sfu_exp2_l4", [{"t": b} for b in ts], [{"e": b} for b in want],
                      latency=dut.latency)
    xs = _lanes(_sig_inputs(16, rng, 200 if REDUCED else 2000), lanes)
    dut = Sigmoid(lanes)
    want = sfu._sigmoid_q(torch.tensor(xs, dtype=torch.int64), 16).tolist()
    run_cocotb_stream(dut, "sfu_sigmoid_l4", [{"x": b} for b in xs], [{"sig": b} for b in want],
                      latency=dut.latency)


@pytest.mark.synth
def test_exp_rom_maps_to_block_ram():
    """Yosys synth_xilinx: one Exp2Neg lane = one RAMB36 (dual-port ROM) and no DSP48E2 (the
    interpolation is shift-and-add: the SFU's DSPs are all in its multiplier bank)."""
    from olivine.hw.resources import build_unit, synthesize

    report = synthesize(*build_unit("sfu_exp2", {"lanes": 1}))
    assert report.bram36 == 1 and report.dsp48e2 == 0 and report.lut < 600, report
