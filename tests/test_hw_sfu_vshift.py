"""The SFU's vshift op (hw/sfu_vshift.py in hw/sfu.py): bit-exact with sim/funcsim.py, V at every
byte offset, e_ref edges (shifts from 8 past 62), rows per query position, and the data / field
rules answering defined errors with nothing written.
"""

from __future__ import annotations

import numpy as np
import pytest

from olivine.hw.sfu import OP_TIMING, SfuError, small_config
from olivine.hw.sfu_vshift import VshiftCore
from olivine.sim import sfu_check
from olivine.sim.funcsim import SimError

CONFIG = small_config()


def _case(rng, rows, cols, kind, *, config=CONFIG, lanes=4, src1_off=None, imm=None, ev=None, mv=None, label=""):
    case = sfu_check._fixed_case(config, rng, "vshift", rows, cols, kind, lanes, label or f"vshift {rows}x{cols} {kind}")
    f = case.fields
    if src1_off is not None:  # move V to a chosen byte offset (the region has 4 spare bytes)
        old = f["src1"]
        table = case.image[old: old + 3 * cols].copy()
        f["src1"] = old - old % 4 + src1_off
        case.image[old: old + 3 * cols] = 0
        case.image[f["src1"]: f["src1"] + 3 * cols] = table
    if ev is not None:
        case.image[f["src1"]: f["src1"] + cols] = np.asarray(ev).astype(np.int8).view(np.uint8)
    if mv is not None:
        case.image[f["src1"] + cols: f["src1"] + 3 * cols] = np.asarray(mv).astype("<u2").view(np.uint8)
    if imm is not None:
        f["imm"] = imm
    try:
        case.want = sfu_check.expected_image(config, case.image, f)
    except SimError:
        case.want = None
    return case


def _assert_exact(cases, results, lanes=4):
    for case, res in zip(cases, results):
        f = case.fields
        assert res["mismatches"] == 0, f"{case.label}: {res['mismatches']} lanes differ from funcsim"
        assert res["code"] == 0 and res["error"] == 0, case.label
        assert res["cycles"] == OP_TIMING["vshift"].instruction_cycles(f["rows"], f["cols"], lanes, f["dst"], f["imm"],
                                                                      src1=f["src1"]), case.label


def test_every_byte_offset_of_v_and_row_lengths_around_the_chunks():
    """V at byte offsets 0..3 (mantissas then at any offset too); rows shorter than, equal to and
    longer than a V chunk (4 * lanes exponents) and a mantissa chunk (2 * lanes)."""
    rng = np.random.default_rng(31)
    cases = [_case(rng, rows, cols, kind, src1_off=off)
             for off in range(4)
             for rows, cols, kind in [(2, 7, "random"), (3, 16, "edges"), (2, 17, "small"), (1, 33, "random")]]
    assert all(c.want is not None for c in cases)
    _assert_exact(cases, sfu_check.run_amaranth(CONFIG, ("vshift",), cases))


def test_e_ref_edges_and_rows_per_query_position():
    """e_ref from the first exponent only, from the last visible one, the extremes -128 / 127 (shift
    8 + 255: the result is 0), all exponents equal (shift 8), INT32_MIN / INT32_MAX scores with
    mantissas 256 and 0, query periods 1..4 and a base at the last key."""
    rng = np.random.default_rng(32)
    cols = 12
    rising = np.arange(cols) - 6                         # e_ref = v[qpos]
    cases = [
        _case(rng, 4, cols, "edges", ev=rising, imm=0 | 4 << 16, label="rising, period 4"),
        _case(rng, 3, cols, "edges", ev=np.r_[127, np.full(cols - 1, -128)], imm=5 | 1 << 16,
              label="e_ref 127 from key 0, others -128: shift 263"),
        _case(rng, 2, cols, "random", ev=np.r_[np.full(cols - 1, -128), 127], imm=cols - 1, label="last key visible"),
        _case(rng, 5, cols, "edges", ev=np.full(cols, 7), imm=2 | 3 << 16, label="all equal: shift 8"),
        _case(rng, 6, cols, "edges", mv=np.tile([256, 0, 1, 255], cols // 4), imm=3 | 2 << 16, label="mantissa edges"),
        _case(rng, 3, cols, "edges", ev=rng.choice([-60, -30, 0, 30, 31, 32, 33, 54, 55], cols), imm=1 | 3 << 16,
              label="shifts around 40 and 62"),
    ]
    for c in cases:
        assert c.want is not None, c.label
    img = cases[0].image
    f = cases[0].fields
    assert np.any(img[f["src0"]: f["src0"] + 4 * f["rows"] * cols].view("<i4") == -(1 << 31)), "INT32_MIN must occur"
    _assert_exact(cases, sfu_check.run_amaranth(CONFIG, ("vshift",), cases))


def test_sixteen_lanes():
    config = small_config(sfu_dsp=64)
    rng = np.random.default_rng(33)
    cases = [_case(rng, rows, cols, kind, config=config, lanes=16, src1_off=off)
             for rows, cols, kind, off in [(3, 70, "random", 1), (2, 64, "edges", 3), (4, 9, "small", 2),
                                           (1, 200, "random", 0)]]
    _assert_exact(cases, sfu_check.run_amaranth(config, ("vshift",), cases), lanes=16)


def test_data_and_field_rules_write_nothing():
    rng = np.random.default_rng(34)
    cols = 20
    big_first = _case(rng, 3, cols, "random", mv=np.r_[257, np.ones(cols - 1, dtype=int)], label="mv[0] = 257")
    big_last = _case(rng, 2, cols, "random", mv=np.r_[np.ones(cols - 1, dtype=int), 65535], src1_off=3,
                     label="mv[-1] = 65535")
    cases = []
    for c in (big_first, big_last):
        assert c.want is None, "funcsim must reject the mantissa as well"
        c.want_code = int(SfuError.BAD_DATA)
        cases.append(c)
    ok = _case(rng, 3, cols, "random", mv=np.r_[np.full(cols - 1, 256), 256])
    f = ok.fields
    for change, code in [(dict(imm=cols), SfuError.BAD_FIELD), (dict(imm=(cols - 2) | 4 << 16), SfuError.BAD_FIELD),
                         (dict(src1=len(ok.image) - 3 * cols + 1), SfuError.OUT_OF_RANGE),
                         (dict(dst=len(ok.image) - 4 * 3 * cols), SfuError.OUT_OF_RANGE),
                         (dict(dst=f["dst"] + 1), SfuError.UNALIGNED)]:
        cases.append(sfu_check.Case("vshift", dict(f, **change), ok.image, want_code=int(code), label=str(change)))
    results = sfu_check.run_amaranth(CONFIG, ("vshift",), cases + [ok])
    for case, res in zip(cases, results):
        assert res["code"] == case.want_code and res["error"] == 1, case.label
        assert res["mismatches"] == 0, f"{case.label}: the data space changed"
    # an instruction after the rejected ones: the flag is cleared, the 256 mantissas are fine
    assert results[-1]["code"] == 0 and results[-1]["mismatches"] == 0


def test_core_rejects_a_bad_buffer_size():
    with pytest.raises(ValueError, match="max_cols"):
        VshiftCore(4, 0)
