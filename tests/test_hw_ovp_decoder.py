"""OvpPairDecoder (hw/ovp_decoder.py) against golden/ovp_format: exhaustive over every code.

Levels: Amaranth simulation (all 256 bytes per 4-bit type, all 65536 words for int8), Verilator
lint, cocotb on Verilator and on Icarus (both exhaustive; the registered variant on Icarus).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from olivine.golden import ovp_format
from olivine.hw.ovp_decoder import DECODER_NORMALS, OvpDecoderError, OvpPairDecoder, operand_widths
from tests.helpers import REDUCED, requires_icarus, requires_verilator

RTL_DIR = Path(__file__).parent / "rtl"


def _decode_all(dut: OvpPairDecoder, words, flint: int = 0) -> np.ndarray:
    """Drive every word through the Amaranth simulation: -> [n, 4] (e_even, i_even, e_odd, i_odd)."""
    out: list[tuple[int, int, int, int]] = []

    async def bench(ctx):
        if dut.normal == "runtime":
            ctx.set(dut.flint, flint)
        for word in words:
            ctx.set(dut.pair, int(word))
            if dut.registered:
                await ctx.tick()
            out.append((ctx.get(dut.even.exponent), ctx.get(dut.even.integer),
                        ctx.get(dut.odd.exponent), ctx.get(dut.odd.integer)))

    sim = Simulator(dut)
    if dut.registered:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out, dtype=np.int64)


def _golden(normal: str) -> np.ndarray:
    table = ovp_format.PAIR_DECODE_TABLES[normal]
    e, i = table["exponent"].astype(np.int64), table["integer"].astype(np.int64)
    return np.stack([e[:, 0], i[:, 0], e[:, 1], i[:, 1]], axis=1)


def _assert_matches_golden(got: np.ndarray, normal: str) -> None:
    want = _golden(normal)
    bad = np.nonzero((got != want).any(axis=1))[0]
    assert bad.size == 0, (f"{normal}: {bad.size} codes differ, first {hex(int(bad[0]))}: "
                           f"got {got[bad[0]].tolist()}, want {want[bad[0]].tolist()}")
    # and the operands reproduce the grid values: integer << exponent == value
    value = ovp_format.PAIR_DECODE_TABLES[normal]["value"].astype(np.int64)
    assert np.array_equal(got[:, 1] << got[:, 0], value[:, 0])
    assert np.array_equal(got[:, 3] << got[:, 2], value[:, 1])


@pytest.mark.parametrize("normal", ["int4", "flint4"])
def test_fixed_4bit_decoder_exhaustive(normal):
    dut = OvpPairDecoder(normal)
    assert dut.latency == 0  # combinational
    got = _decode_all(dut, range(256))
    _assert_matches_golden(got, normal)


@pytest.mark.parametrize("flint,normal", [(0, "int4"), (1, "flint4")])
def test_runtime_decoder_exhaustive(flint, normal):
    got = _decode_all(OvpPairDecoder("runtime"), range(256), flint=flint)
    _assert_matches_golden(got, normal)


def test_int8_decoder_exhaustive():
    got = _decode_all(OvpPairDecoder("int8"), range(65536))
    _assert_matches_golden(got, "int8")


def test_every_encoded_pair_decodes_to_its_grid_values():
    """Round trip through the encoder: every valid (even, odd) grid pair decodes to itself."""
    for normal in ("int4", "flint4"):
        fmt = ovp_format.get_format(normal)
        pairs = [(a, b) for a in fmt.normal_grid for b in fmt.normal_grid]
        pairs += [(o, 0) for o in fmt.outlier_grid] + [(0, o) for o in fmt.outlier_grid]
        codes = [ovp_format.encode_pair(normal, a, b) for a, b in pairs]
        got = _decode_all(OvpPairDecoder(normal), codes)
        assert [(int(i0) << int(e0), int(i1) << int(e1)) for e0, i0, e1, i1 in got] == pairs


def test_registered_decoder_has_latency_one():
    dut = OvpPairDecoder("runtime", registered=True)
    assert dut.latency == 1
    got = _decode_all(dut, range(256), flint=1)
    _assert_matches_golden(got, "flint4")


def test_registered_output_lags_input_by_one_cycle():
    dut = OvpPairDecoder("int4", registered=True)
    seen = []

    async def bench(ctx):
        for word in (0x21, 0x8A, 0x77):  # (1, 2), (outlier, victim), (7, 7)
            ctx.set(dut.pair, word)
            seen.append(ctx.get(dut.even.integer))  # still the previous word's output
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # 0x8A: low nibble 0xA is an abfloat outlier (s=1, e=1, m=0) -> -(2) << 3 = -16; int4 bias 2
    assert seen == [0, 1, -2]


def test_operand_widths_follow_the_tables():
    assert operand_widths("int4") == (3, 4)
    assert operand_widths("flint4") == (3, 4)
    assert operand_widths("runtime") == (3, 4)
    assert operand_widths("int8") == (4, 8)
    dut = OvpPairDecoder("int8")
    Fragment.get(dut, None)  # elaborates (and marks the design used)
    assert len(dut.pair) == 16 and len(dut.even.integer) == 8 and len(dut.odd.exponent) == 4


def test_bad_configuration_is_rejected_clearly():
    with pytest.raises(OvpDecoderError, match="unknown decoder normal type 'int5'"):
        OvpPairDecoder("int5")
    with pytest.raises(OvpDecoderError, match="registered must be a bool"):
        OvpPairDecoder("int4", registered=1)
    assert set(DECODER_NORMALS) == {"int4", "flint4", "runtime", "int8"}


# ---------------------------------------------------------------------------------------------
# generated Verilog: lint and cocotb

def _verilog(normal: str, registered: bool = False):
    from olivine.hw.export import verilog

    top = f"ovp_decoder_{normal}{'_reg' if registered else ''}"
    return verilog(OvpPairDecoder(normal, registered=registered), top), top


@pytest.mark.rtl
@requires_verilator
@pytest.mark.parametrize("normal,registered", [("int4", False), ("flint4", False), ("runtime", True), ("int8", False)])
def test_decoder_verilog_lints_clean_without_waivers(normal, registered):
    from olivine.hw.export import lint

    text, top = _verilog(normal, registered)
    lint(text, top)  # no waivers beyond the backend ones: raises LintError on any warning


def _decoder_vectors(normal: str, words) -> dict:
    words = np.asarray(list(words), dtype=np.int64)
    if normal == "runtime":  # both types through one model: first all int4, then all flint4
        want = np.concatenate([_golden("int4")[words], _golden("flint4")[words]])
        return {"words": np.concatenate([words, words]), "flint": np.repeat([0, 1], len(words)),
                "want": want, "registered": np.array(0)}
    return {"words": words, "flint": np.zeros(len(words), dtype=np.int64), "want": _golden(normal)[words],
            "registered": np.array(0)}


@pytest.mark.rtl
@pytest.mark.slow
@requires_verilator
@pytest.mark.parametrize("normal", ["int8"] if REDUCED else ["runtime", "int8"])  # Icarus covers runtime too
def test_decoder_cocotb_verilator_exhaustive(normal):
    from olivine.sim.rtl import run_cocotb

    text, top = _verilog(normal)
    words = range(256) if normal == "runtime" else range(65536)
    run_cocotb(text, top, "tb_ovp_decoder", test_dir=RTL_DIR, vectors=_decoder_vectors(normal, words),
               testcase="decoder_matches_golden")


@pytest.mark.rtl
@requires_icarus
def test_registered_decoder_cocotb_icarus():
    from olivine.sim.rtl import run_cocotb

    text, top = _verilog("runtime", registered=True)
    vectors = _decoder_vectors("runtime", range(256))
    vectors["registered"] = np.array(1)
    run_cocotb(text, top, "tb_ovp_decoder", test_dir=RTL_DIR, simulator="icarus", vectors=vectors,
               testcase="decoder_matches_golden")


@pytest.mark.rtl
@requires_icarus
@pytest.mark.parametrize("normal", ["runtime", "int8"])
def test_decoder_cocotb_icarus_exhaustive(normal):
    """All 256 bytes (both types) / all 65536 words: about 8 s on Icarus, no build step."""
    from olivine.sim.rtl import run_cocotb

    words = range(256) if normal == "runtime" else range(65536)
    text, top = _verilog(normal)
    run_cocotb(text, top, "tb_ovp_decoder", test_dir=RTL_DIR, simulator="icarus",
               vectors=_decoder_vectors(normal, words), testcase="decoder_matches_golden")


def test_resource_unit_factory():
    from olivine.hw.resources import UNITS

    dut, top = UNITS["ovp_decoder"](normal="flint4")
    Fragment.get(dut, None)  # elaborate: the factory built a usable design
    assert isinstance(dut, OvpPairDecoder) and dut.normal == "flint4" and top == "ovp_decoder_flint4"
    dut, top = UNITS["ovp_decoder"](bits="8", registered="true")  # strings, as from the CLI
    Fragment.get(dut, None)  # elaborate: the factory built a usable design
    assert dut.normal == "int8" and dut.registered and top == "ovp_decoder_int8_reg"
    with pytest.raises(OvpDecoderError, match="bits=8 takes normal='int8'"):
        UNITS["ovp_decoder"](normal="flint4", bits=8)
    with pytest.raises(OvpDecoderError, match="expected a boolean"):
        UNITS["ovp_decoder"](registered="maybe")


@pytest.mark.synth
def test_decoder_is_a_handful_of_luts():
    """Yosys synth_xilinx: a 4-bit pair decoder is pure LUT logic (no DSP, no FF)."""
    from olivine.hw.resources import synthesize

    report = synthesize(OvpPairDecoder("int4"), "ovp_decoder_int4")
    assert report.dsp48e2 == 0 and report.ff == 0
    assert 4 <= report.lut <= 24, report
