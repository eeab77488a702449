"""The SFU top level (hw/sfu.py): MISC instructions on a data space, bit-exact with sim/funcsim.py.

Expected results come from ``FuncSim.do_misc`` (docs/isa.md MISC semantics = golden/sfu.py) on the
same data space image; the whole data space is compared after each instruction, so a write outside
the destination is caught. Cases (sim/sfu_check.py make_cases): random rows, saturation edges and
INT32_MIN, all-equal rows, row starts at every lane offset, the longest row the test data space
holds, and bad input (reserved ops, zero shapes, unaligned and out-of-range addresses) which must
answer an error code with the offset latched and write nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from olivine.hw.sfu import (FULL_LINT_WAIVERS, LINT_WAIVERS, MISC_OPS, OP_CORES, OP_TIMING, Sfu, SfuError, SfuHarness,
                            op_timing, sfu_lanes, small_config)
from olivine.sim import sfu_check
from tests.helpers import REDUCED, requires_verilator

CONFIG = small_config()
BUILT = tuple(OP_CORES)


def test_op_codes_are_the_isa_ones():
    from olivine.compiler import isa

    assert MISC_OPS == isa.MISC_OPS


@pytest.mark.parametrize("sfu_dsp,lanes", [(64, 16), (16, 4), (20, 4), (4, 1), (7, 1), (128, 32)])
def test_lanes_follow_the_dsp_budget(sfu_dsp, lanes):
    assert sfu_lanes(CONFIG.replace(sfu_dsp=sfu_dsp)) == lanes


def test_a_budget_below_one_lane_is_rejected():
    from olivine.hw.config import ConfigError
    with pytest.raises(ConfigError, match="sfu_dsp=3: .* at least 4"):
        CONFIG.replace(sfu_dsp=3)


@pytest.mark.parametrize("op", BUILT)
def test_op_bit_exact_with_funcsim_and_timing_model(op):
    cases = [c for c in sfu_check.make_cases(CONFIG, (op,), reduced=REDUCED, seed=3) if c.want_code == 0]
    assert any(np.any(c.want != c.image) for c in cases), "the cases must change the destination"
    results = sfu_check.run_amaranth(CONFIG, (op,), cases)
    lanes = sfu_lanes(CONFIG)
    for case, res in zip(cases, results):
        assert res["mismatches"] == 0, f"{case.label}: {res['mismatches']} lanes differ from funcsim"
        assert res["code"] == 0 and res["error"] == 0
        f = case.fields
        assert res["cycles"] == op_timing(op, f["imm"]).instruction_cycles(f["rows"], f["cols"], lanes, f["dst"],
                                                                          f["imm"], src1=f["src1"]), case.label


def test_several_ops_back_to_back_in_one_instance():
    cases = sfu_check.make_cases(CONFIG, BUILT, reduced=True, seed=5)
    results = sfu_check.run_amaranth(CONFIG, BUILT, cases)
    for case, res in zip(cases, results):
        assert res["mismatches"] == 0 and res["code"] == case.want_code, case.label


def test_bad_input_gets_an_error_code_the_offset_and_no_write():
    cases = [c for c in sfu_check.make_cases(CONFIG, ("add",), reduced=True, seed=1) if c.want_code]
    codes = {c.want_code for c in cases}
    assert {SfuError.RESERVED_OP, SfuError.NOT_BUILT, SfuError.ZERO_SHAPE, SfuError.UNALIGNED,
            SfuError.OUT_OF_RANGE} <= codes
    results = sfu_check.run_amaranth(CONFIG, ("add",), cases)
    for case, res in zip(cases, results):
        assert res["code"] == case.want_code and res["error"] == 1, case.label
        assert res["offset"] == case.fields["offset"], case.label
        assert res["mismatches"] == 0, f"{case.label}: the data space changed"
        assert res["cycles"] <= 3, case.label


def test_a_good_instruction_after_an_error_clears_it():
    good = [c for c in sfu_check.make_cases(CONFIG, ("copy",), reduced=True) if c.want_code == 0][:1]
    bad = [c for c in sfu_check.make_cases(CONFIG, ("copy",), reduced=True) if c.want_code][:1]
    res = sfu_check.run_amaranth(CONFIG, ("copy",), bad + good)
    assert res[0]["error"] == 1 and res[1]["error"] == 0 and res[1]["code"] == 0 and res[1]["mismatches"] == 0


def test_row_too_long_for_the_op_is_rejected(monkeypatch):
    from olivine.hw import sfu as sfu_mod

    monkeypatch.setitem(sfu_mod.OP_CORES, "copy", sfu_mod.OpCore(sfu_mod.CopyCore, max_cols=16))
    case = [c for c in sfu_check.make_cases(CONFIG, ("copy",), reduced=True) if c.want_code == 0][0]
    case.fields = dict(case.fields, cols=17, rows=1)
    case.want, case.want_code = None, int(SfuError.ROW_TOO_LONG)
    (res,) = sfu_check.run_amaranth(CONFIG, ("copy",), [case])
    assert res["code"] == SfuError.ROW_TOO_LONG and res["mismatches"] == 0


def test_bad_construction_is_rejected_clearly():
    with pytest.raises(ValueError, match="has no SFU core"):
        Sfu(CONFIG, ops=("frobnicate",))
    with pytest.raises(TypeError, match="AcceleratorConfig"):
        Sfu({"sfu_dsp": 16})


@pytest.mark.rtl
@requires_verilator
def test_sfu_verilog_lints_with_justified_waivers():
    from olivine.hw.export import lint, verilog

    for ops in (("add", "mul", "copy"), ("copy",)):  # the framework and its own cores
        top = f"sfu_lint_{'_'.join(ops)}"
        lint(verilog(Sfu(CONFIG, ops=ops), top), top, waivers=LINT_WAIVERS)
    # with the sfu-arith blocks, which waive their alias wires as a whole (hw/sfu_arith.py)
    lint(verilog(Sfu(CONFIG), "sfu_lint_all"), "sfu_lint_all", waivers=FULL_LINT_WAIVERS)
    # with the rope ROM (and its record check) and vshift's buffers; their UNUSEDSIGNAL findings are
    # the same alias class plus vshift-only wires of a rope-only instance (reviewed in hw/sfu_rope.py)
    from olivine.sim.sfu_check import CHECK_ROPE
    for ops in (("rope",), ("vshift",), None):
        top = f"sfu_lint_{'_'.join(ops or ('all', 'rope'))}"
        lint(verilog(Sfu(CONFIG, ops=ops, rope=CHECK_ROPE), top), top, waivers=FULL_LINT_WAIVERS)


@pytest.mark.rtl
@requires_verilator
def test_check_command_reduced_in_verilator(capsys):
    """The check command's reduced form: every built op in Verilator against funcsim."""
    assert sfu_check.main(["--reduced"]) == 0
    out = capsys.readouterr().out
    for op in BUILT:
        assert f"\n{op} " in out
    assert "MISMATCH" not in out


def test_check_command_reports_mismatches(monkeypatch, capsys):
    """A wrong expected value makes the command fail (Amaranth backend, so it stays fast)."""
    real = sfu_check.make_cases

    def corrupted(*args, **kwargs):
        cases = real(*args, **kwargs)
        cases[0].want = cases[0].want.copy()
        cases[0].want[cases[0].fields["dst"]] ^= 0x40
        return cases

    monkeypatch.setattr(sfu_check, "make_cases", corrupted)
    assert sfu_check.main(["--reduced", "--amaranth", "--ops", "copy"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_resource_unit_factory():
    from amaranth.hdl import Fragment

    from olivine.hw.resources import UNITS

    dut, top = UNITS["sfu"](config="small", ops="add,copy")
    Fragment.get(dut, None)
    assert dut.ops == ("add", "copy") and dut.lanes == 4 and top == "sfu_small_4l_add_copy"
    from olivine.hw.config import DEFAULT_SHAPES, for_board
    from olivine.hw.sfu import sfu_lanes

    dut, top = UNITS["sfu"](config="u280")
    lanes = sfu_lanes(for_board("u280"))
    assert lanes == DEFAULT_SHAPES["u280"][2] // 4  # the board default's SFU DSP budget, 4 per lane
    assert dut.lanes == lanes and top.startswith(f"sfu_u280_{lanes}l")
    dut, top = UNITS["sfu"](config="u280", sfu_dsp=64)
    assert dut.lanes == 16 and top.startswith("sfu_u280_16l")


def test_harness_memory_is_the_configured_data_space():
    h = SfuHarness(CONFIG, ops=("copy",))
    assert h.words * 4 * h.lanes == (CONFIG.buffers.activation_kib + CONFIG.buffers.global_kib) * 1024


def test_sqrt_multiplier_rule_equals_golden_for_every_norm_width():
    from olivine.golden import fixed
    from olivine.golden import sfu as golden
    from olivine.hw.sfu import NORM_MAX_DIM, SOFTMAX_MAX_LEN, sqrt_multiplier

    assert (NORM_MAX_DIM, SOFTMAX_MAX_LEN) == (golden.NORM_MAX_DIM, golden.SOFTMAX_MAX_LEN)
    import math
    bad = [d for d in range(1, NORM_MAX_DIM + 1) if sqrt_multiplier(d) != fixed.quantize_multiplier(math.sqrt(d))]
    assert not bad, f"sqrt(cols) multiplier differs from golden for cols {bad[:5]}"


def test_sixteen_lanes_as_on_small():
    """The ``small`` configuration's lane count (sfu_dsp = 64 -> 16 lanes; the U280 default has 8):
    bit-exact and the timing model holds."""
    config = small_config(sfu_dsp=64)
    ops = ("add", "copy")
    cases = [c for c in sfu_check.make_cases(config, ops, reduced=True, seed=7) if c.want_code == 0]
    results = sfu_check.run_amaranth(config, ops, cases)
    for case, res in zip(cases, results):
        f = case.fields
        assert res["mismatches"] == 0, case.label
        assert res["cycles"] == OP_TIMING[case.op].instruction_cycles(f["rows"], f["cols"], 16, f["dst"]), case.label


def test_quant_both_rules_grouped_layout_and_bad_groups():
    """quant with the 9-bit-mantissa and the power-of-two rule, G = 1 and G > 1 at byte-unaligned
    destinations (bit-exact, timing model); a G that does not divide rows answers BAD_GROUPS."""
    rng = np.random.default_rng(11)
    cases = []
    for rows, cols, groups, pow2, kind in [(6, 5, 3, 0, "random"), (6, 5, 2, 1, "edges"), (4, 9, 1, 1, "small"),
                                           (4, 7, 4, 0, "equal"), (2, 3, 1, 0, "zero")]:
        case = sfu_check._fixed_case(CONFIG, rng, "quant", rows, cols, kind, 4, f"quant {rows}x{cols} G{groups}")
        case.fields = dict(case.fields, imm=groups | pow2 << 16)
        case.want = sfu_check.expected_image(CONFIG, case.image, case.fields)
        cases.append(case)
    bad = sfu_check.Case("quant", dict(cases[0].fields, imm=4), cases[0].image, want=None,
                         want_code=int(SfuError.BAD_GROUPS), label="G 4 of 6 rows")
    space = len(cases[0].image)
    past_end = sfu_check.Case("quant", dict(cases[0].fields, imm=3, dst=space - 6 * 8 + 1), cases[0].image,
                              want=None, want_code=int(SfuError.OUT_OF_RANGE), label="INT8 block past the end")
    results = sfu_check.run_amaranth(CONFIG, ("quant",), cases + [bad, past_end])
    assert results[-1]["code"] == SfuError.OUT_OF_RANGE and results[-1]["mismatches"] == 0
    results = results[:-1]
    for case, res in zip(cases, results):
        f = case.fields
        assert res["mismatches"] == 0 and res["code"] == 0, case.label
        assert res["cycles"] == OP_TIMING["quant"].instruction_cycles(f["rows"], f["cols"], 4, f["dst"], f["imm"])
    assert results[-1]["code"] == SfuError.BAD_GROUPS and results[-1]["mismatches"] == 0


def test_quant_reciprocal_rom_is_golden_division():
    from olivine.golden import contract
    from olivine.hw.sfu_quant import reciprocal_rom

    rom = reciprocal_rom()
    assert len(rom) == 256 and rom[0] == 127 << 22 and max(rom).bit_length() == 29
    for m in (1, 2, 3, 127, 255, 256):
        assert rom[m - 1] * m <= contract.INT8_QMAX << contract.RECIP_BITS < (rom[m - 1] + 1) * m


def test_dequant_records_and_bad_records():
    """dequant at 4 and 16 lanes, one instance running several instructions back to back (a
    record's words past its codes must not leak into the next one); a stride shorter than the
    record or not a multiple of 16 answers BAD_RECORD with nothing written (docs/isa.md Validity)."""
    for lanes in (4, 16):
        config = small_config(sfu_dsp=4 * lanes)
        rng = np.random.default_rng(lanes)
        cases = [sfu_check._fixed_case(config, rng, "dequant", rows, cols, kind, lanes, f"dequant {rows}x{cols} {kind}")
                 for rows, cols, kind in [(3, 100, "random"), (3, 48, "edges"), (2, 17, "random"), (4, 1, "edges"),
                                          (1, 64, "random")]]
        base = cases[0].fields
        codes = -(-base["cols"] // 16) * 16  # the codes alone: no room for the multiplier and shift
        bad = [sfu_check.Case("dequant", dict(base, imm=codes), cases[0].image, want_code=int(SfuError.BAD_RECORD)),
               sfu_check.Case("dequant", dict(base, imm=base["imm"] + 4), cases[0].image, want_code=int(SfuError.BAD_RECORD))]
        results = sfu_check.run_amaranth(config, ("dequant",), cases + bad)
        for case, res in zip(cases, results):
            f = case.fields
            assert res["mismatches"] == 0 and res["code"] == 0, case.label
            assert res["cycles"] == OP_TIMING["dequant"].instruction_cycles(f["rows"], f["cols"], lanes, f["dst"]), case.label
        for case, res in zip(bad, results[len(cases):]):
            assert res["code"] == case.want_code and res["mismatches"] == 0


def test_quant_timing_model_exact_on_short_rows_straddling_words():
    """One-beat quant rows whose INT8 codes straddle a destination word are writer-bound (a 5th
    write against 4 read slots): OP_TIMING counts +1 per such row; bit-exact and cycle-exact on
    random shapes, groupings and byte offsets (the Verilator check runs such rows too)."""
    rng = np.random.default_rng(21)
    cases = []
    for k in range(24):
        rows, cols = int(rng.integers(2, 8)), int(rng.integers(1, 6))
        groups = int(rng.choice([g for g in range(1, rows + 1) if rows % g == 0]))
        case = sfu_check._fixed_case(CONFIG, rng, "quant", rows, cols, "random", 4, f"quant {rows}x{cols} G{groups}")
        case.fields = dict(case.fields, imm=groups | int(rng.integers(0, 2)) << 16,
                           dst=case.fields["dst"] - case.fields["dst"] % 16 + int(rng.integers(0, 16)))
        case.want = sfu_check.expected_image(CONFIG, case.image, case.fields)
        cases.append(case)
    timing = OP_TIMING["quant"]
    flat = [timing.instruction_cycles(c.fields["rows"], c.fields["cols"], 4, c.fields["dst"] - c.fields["dst"] % 16,
                                      c.fields["imm"]) for c in cases]
    results = sfu_check.run_amaranth(CONFIG, ("quant",), cases)
    longer = 0
    for case, res, aligned in zip(cases, results, flat):
        f = case.fields
        model = timing.instruction_cycles(f["rows"], f["cols"], 4, f["dst"], f["imm"])
        assert res["mismatches"] == 0 and res["code"] == 0, case.label
        assert res["cycles"] == model, f"{case.label} at byte {f['dst'] % 16}: {res['cycles']} cycles, model {model}"
        longer += model > aligned
    assert longer >= 5, "the cases must include rows that straddle a word"


def test_data_rules_answer_an_error_and_write_nothing():
    """docs/isa.md MISC data rules in the operands: rmsnorm's eps multiplier (bit 31), eps shift
    (0..62) and d * eps * 2**32 < 2**61 (BAD_EPS), a dequant record multiplier with bit 31 set,
    here the last record's (BAD_MULTIPLIER, found by the scan before row 0 is written); the
    simulator rejects the same instructions, and the largest eps inside the bound runs bit-exact."""
    ops = ("rmsnorm", "dequant")
    labels = ("eps", "multiplier bit 31")
    cases = [c for c in sfu_check.make_cases(CONFIG, ops, reduced=True, seed=2) if any(k in c.label for k in labels)]
    codes = sorted(c.want_code for c in cases)
    assert codes == [0] + [int(SfuError.BAD_MULTIPLIER)] + [int(SfuError.BAD_EPS)] * 4, [c.label for c in cases]
    _check_rule_cases(ops, cases)


def test_overlap_and_query_position_rules_fault_as_funcsim_does():
    """docs/isa.md MISC Validity: dst partly over src0 (every op), dst = src0 for the layout-changing
    quant / dequant / vshift, dst partly over src1 of add / mul / swiglu: OVERLAP; softmax with
    mask = 1 and its query position at cols: BAD_FIELD; each answered with the offset and nothing
    written, and rejected by the simulator too. Exactly in place (dst = src0, add's dst = src1)
    runs bit-exact in the cycles of the timing model."""
    ops = ("add", "silu", "softmax", "quant", "dequant", "vshift", "rope")
    cases = [c for c in sfu_check.make_cases(CONFIG, ops, reduced=True, seed=4)
             if "place" in c.label or "past" in c.label or "dst = src0" in c.label or "query position" in c.label]
    codes = {c.label: c.want_code for c in cases}
    assert sorted(k for k, v in codes.items() if v == SfuError.OVERLAP) == sorted(
        [f"{op} dst 4 bytes past src0" for op in ops] + [f"{op} dst = src0" for op in ("quant", "dequant", "vshift")]
        + ["add dst 4 bytes past src1"])
    assert codes["softmax mask query position at cols"] == SfuError.BAD_FIELD
    assert sum(v == 0 for v in codes.values()) == 5   # add, silu, softmax, rope in place; add over src1
    _check_rule_cases(ops, cases)


def _check_rule_cases(ops, cases):
    """Each faulting case is rejected by the simulator too; in Amaranth every case answers its code
    with nothing written, a fault with the offending offset, a success in the timing model's cycles."""
    from olivine.sim.funcsim import SimError

    for case in cases:
        if case.want_code:
            with pytest.raises(SimError):
                sfu_check.expected_image(CONFIG, case.image, case.fields)
    results = sfu_check.run_amaranth(CONFIG, ops, cases)
    for case, res in zip(cases, results):
        f = case.fields
        assert res["code"] == case.want_code and res["mismatches"] == 0, case.label
        assert res["error"] == int(case.want_code != 0), case.label
        if case.want_code:
            assert res["offset"] == f["offset"], case.label
        else:
            assert res["cycles"] == op_timing(case.op, f["imm"]).instruction_cycles(
                f["rows"], f["cols"], 4, f["dst"], f["imm"], src1=f["src1"]), case.label
