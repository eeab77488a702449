"""The matrix engine's W4A4 path (hw/mpe_ovp.py: afmt=ovp4 on the OVP systolic array), byte for byte
against FuncSim.

Every case runs ``FuncSim.do_mpe`` (the executable specification: golden's OVP decode and the exact
integer matmul) on the same buffers and compares the whole data space after the instruction. Cases
cover both normal types of both operands, outlier-heavy and raw-byte codes (never-produced codes
decode to 0), the largest outlier products, any byte alignment of the codes, every output form
(int32, fixed32 with and without bias, int8) and accumulate, MV and MM, and random freezes of the
engine through EnableInserter as the core applies them.
"""

from __future__ import annotations

import numpy as np
import pytest

from olivine.hw.mpe import MpeError, mpe_cycles
from olivine.sim import mpe_check as mc
from tests.helpers import REDUCED, requires_verilator

CONFIG = mc.test_config(2)


def _run(cases, config=CONFIG, **kw):
    results = mc.run_amaranth(config, cases, **kw)
    for case, res in zip(cases, results):
        assert case.want is not None, f"{case.label}: funcsim rejected the case: {case.why}"
        assert not res["fault"] and res["error"] == 0, f"{case.label}: fault {MpeError(res['error']).name}"
        assert res["mismatches"] == 0, f"{case.label}: {res['mismatches']} data-space bytes differ from funcsim"
    return results


@pytest.mark.parametrize("normal,anormal", [(0, 0), (1, 1), (0, 1), (1, 0)],
                         ids=["int4-int4", "flint4-flint4", "int4w-flint4a", "flint4w-int4a"])
def test_w4a4_int32_random(normal, anormal):
    rng = np.random.default_rng(200 + 2 * normal + anormal)
    cases = [mc.make_linear_ovp(CONFIG, rng, normal=normal, anormal=anormal, out=0, outliers=frac)
             for frac in ((0.6,) if REDUCED else (0.05, 0.3, 0.7))]
    assert all(not np.array_equal(c.want, c.data) for c in cases), "every case must change the data space"
    _run(cases)


def test_w4a4_edges():
    rng = np.random.default_rng(210)
    cases = [
        mc.make_linear_ovp(CONFIG, rng, m=3, n=5, kb=9, normal=1, anormal=1, worst=True, accumulate=0, out=0,
                           label="flint4 x flint4, every pair the largest outlier, K=144"),
        mc.make_linear_ovp(CONFIG, rng, m=2, n=3, kb=4, normal=0, anormal=0, worst=True, accumulate=0, out=0,
                           label="int4 x int4 largest outliers"),
        mc.make_linear_ovp(CONFIG, rng, m=2, n=5, kb=3, raw=True, out=0, label="raw bytes (never-produced codes)"),
        mc.make_linear_ovp(CONFIG, rng, m=1, n=1, kb=1, accumulate=0, out=0, label="k_blocks = 1, one value"),
        mc.make_linear_ovp(CONFIG, rng, m=5, n=4, kb=1, out=0, label="m odd, k_blocks = 1 (a half segment)"),
        mc.make_linear_ovp(CONFIG, rng, m=3, n=3, kb=2, ldo_extra=5, out=0, label="ldo > n"),
        mc.make_linear_ovp(CONFIG, rng, m=2, n=4, kb=3, normal=1, anormal=1, worst=True, accumulate=1, old_fill=0x7F,
                           out=0, label="accumulate wraps past INT32_MAX"),
    ]
    mv = mc.make_linear_ovp(CONFIG, rng, m=1, n=5, kb=5, out=0, label="MV")
    mv.fields["_mv"] = 1
    cases.append(mc.expected(CONFIG, mv))
    _run(cases)


@pytest.mark.parametrize("out", [1, 2], ids=["fixed32", "int8"])
def test_w4a4_requantized_outputs(out):
    """fixed32 (the form the compiler emits for W4A4 linears, with and without bias) and int8: the
    engine's requantizer with exponent 0 and mantissa 1 (OVP4 blocks carry no scale data)."""
    rng = np.random.default_rng(220 + out)
    cases = [mc.make_linear_ovp(CONFIG, rng, out=out) for _ in range(2 if REDUCED else 4)]
    if out == 1:
        cases += [mc.make_linear_ovp(CONFIG, rng, out=1, bias_flag=b, accumulate=1, label=f"fixed32 bias={b} accumulate")
                  for b in (0, 1)]
    else:
        cases += [mc.make_linear_ovp(CONFIG, rng, out=2, m=3, n=5, kb=2, ldo_extra=3, worst=True, accumulate=0,
                                     label="int8 saturation, ldo > n"),
                  mc.make_linear_ovp(CONFIG, rng, out=2, m=1, n=5, kb=2, accumulate=1, label="int8 over accumulate")]
    _run(cases)


def test_w4a4_under_random_enable_pattern():
    """Random freezes (EnableInserter, CORE_INTERFACE.md section 1): same bytes, same enabled cycles."""
    rng = np.random.default_rng(230)
    forms = ((0, 1), (2, 0)) if REDUCED else ((0, 1), (1, 0), (2, 0))
    cases = [mc.make_linear_ovp(CONFIG, rng, out=o, accumulate=a) for o, a in forms]
    free = mc.run_amaranth(CONFIG, cases)
    stalled = _run(cases, stall=0.4, seed=5)
    assert [r["cycles"] for r in stalled] == [r["cycles"] for r in free]


def test_w4a4_on_four_chains():
    """C = 4: a column's 16 weight bytes may straddle 16-byte lanes and weight words."""
    config = mc.test_config(4)
    rng = np.random.default_rng(240)
    cases = [mc.make_linear_ovp(config, rng, out=o, outliers=0.5) for o in ((0, 1) if REDUCED else (0, 1, 2))]
    _run(cases, config=config)


def test_w4a4_multiplier_rule_faults_and_writes_nothing():
    rng = np.random.default_rng(250)
    cases = [mc.make_linear_ovp(CONFIG, rng, out=o, bad="multiplier") for o in (1, 2)]
    assert all(c.want is None for c in cases)
    for case, res in zip(cases, mc.run_amaranth(CONFIG, cases, stall=0.3, seed=6)):
        assert res["fault"] and res["error"] == MpeError.MULTIPLIER and res["mismatches"] == 0, case.label


def test_w4a4_cycle_formula_matches_the_rtl():
    """mpe_cycles for afmt=ovp4 (hw/mpe_ovp.ovp_cycles) against the measured cycles: within 15 % + 16."""
    rng = np.random.default_rng(260)
    cases = [mc.make_linear_ovp(CONFIG, rng, out=o, accumulate=a, m=mm, n=nn, kb=kk)
             for o, a, mm, nn, kk in ((0, 0, 1, 5, 7), (1, 1, 4, 3, 1), (2, 0, 3, 6, 4), (1, 0, 6, 2, 12))]
    for case, res in zip(cases, _run(cases)):
        model = mpe_cycles(case.fields, CONFIG)
        assert abs(res["cycles"] - model) <= 0.15 * model + 16, f"{case.label}: {res['cycles']} vs {model}"


@pytest.mark.rtl
@requires_verilator
def test_lint_generated_path():
    """The standalone path's Verilog lints clean under its waivers (inside the engine,
    tests/test_hw_mpe.py::test_lint_generated_engine covers it with the engine's)."""
    from olivine.hw.export import lint, verilog
    from olivine.hw.mpe_ovp import LINT_WAIVERS, _resource_unit

    path, top = _resource_unit(chains=2)
    lint(verilog(path, top), top, waivers=LINT_WAIVERS)


def test_path_rejects_bad_geometry():
    from amaranth.lib import data

    from olivine.hw.mpe_ovp import OvpMatrixPath

    record = data.StructLayout({"y": data.ArrayLayout(32, 6), "cb": 17, "t0": 13})
    kw = dict(fields_layout=data.StructLayout({"m": 12}), record_layout=record, act_words=64, weight_words=64)
    with pytest.raises(ValueError, match="power of two"):
        OvpMatrixPath(chains=3, weight_word_bytes=48, **kw)
    with pytest.raises(ValueError, match="16 bytes per chain"):
        OvpMatrixPath(chains=2, weight_word_bytes=64, **kw)


def test_w4a4_with_two_token_pairs_per_tile():
    """ovp_token_pairs=2: a 4 x C array, two writer records per tile (m odd and m < 4 included),
    frozen at random; the cycle model for that size."""
    rng = np.random.default_rng(270)
    cases = [mc.make_linear_ovp(CONFIG, rng, m=mm, n=nn, kb=kk, out=o, accumulate=a)
             for mm, nn, kk, o, a in ((5, 3, 3, 0, 1), (4, 4, 2, 1, 0), (1, 3, 1, 2, 0), (7, 2, 5, 0, 0))]
    free = _run(cases, ovp_token_pairs=2)
    for case, res in zip(cases, free):
        model = mpe_cycles(case.fields, CONFIG, ovp_token_pairs=2)
        assert abs(res["cycles"] - model) <= 0.15 * model + 16, f"{case.label}: {res['cycles']} vs {model}"
    stalled = _run(cases[:2], stall=0.4, seed=8, ovp_token_pairs=2)
    assert [r["cycles"] for r in stalled] == [r["cycles"] for r in free[:2]]
