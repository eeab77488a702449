"""Softmax op core (hw/sfu_softmax.py) against golden sfu.softmax with the causal mask and
valid length of docs/isa.md MISC (key j of row r visible iff j <= imm[15:0] + r mod imm[31:16]).

The test drives the three passes itself, as the SFU top level does, on random rows, all-equal
rows, INT32_MIN / INT32_MAX, one-hot rows, the SmolLM2 attention-sink magnitude, fully masked rows
and long rows (reduced under CI), with output back-pressure.
"""

from __future__ import annotations

import random

import pytest
import torch

from olivine.golden import fixed, sfu
from olivine.hw.sfu_arith import SfuArithError
from olivine.hw.sfu_softmax import SOFTMAX_LATENCY, Softmax
from tests.helpers import REDUCED, requires_verilator
from tests.test_hw_sfu_norm import run_row_core

F = 16


def golden_softmax(rows, mask, base, period):
    s = torch.tensor(rows, dtype=torch.int32)
    msk = None
    if mask:
        per = max(1, period)
        qpos = base + torch.arange(len(rows)) % per
        msk = torch.arange(len(rows[0]))[None, :] <= qpos[:, None]
    return sfu.softmax(s, F, msk, F).tolist()


def score_rows(rng, n, k_len):
    rows = [[0] * k_len, [fixed.INT32_MIN] * k_len, [fixed.INT32_MAX] * k_len,
            [rng.choice((fixed.INT32_MIN, fixed.INT32_MAX)) for _ in range(k_len)]]
    onehot = [int(rng.gauss(0, 1) * 2**F) for _ in range(k_len)]
    onehot[k_len // 2] = 300 << F
    rows.append(onehot)
    sink = [int(rng.gauss(0, 5) * 2**F) for _ in range(k_len)]
    sink[0] = 24900 << F                                                   # attention sink
    rows.append(sink)
    while len(rows) < n:
        std = rng.choice((0.01, 1, 5, 20))
        rows.append([int(rng.gauss(0, std) * 2**F) for _ in range(k_len)])
    return rows[:n]


def _run(dut, rows, mask, base, period, **kw):
    params = {"mask": mask, "qpos_base": base, "qpos_period": period, "row": 0}
    got, stats = run_row_core(dut, rows, params, row_param=True, **kw)
    return got, stats


@pytest.mark.parametrize("lanes,k_len,mask,base,period", [
    (4, 37, 0, 0, 0), (4, 37, 1, 0, 0), (4, 21, 1, 5, 3), (1, 6, 1, 2, 4), (8, 64, 1, 60, 2)])
def test_softmax_matches_golden(lanes, k_len, mask, base, period):
    rng = random.Random(k_len * 7 + base)
    rows = score_rows(rng, 10, k_len)
    dut = Softmax(lanes)
    got, stats = _run(dut, rows, mask, base, period, ready_pattern=lambda c: c % 6 != 2)
    assert got == golden_softmax(rows, mask, base, period)


def test_softmax_one_visible_key_and_latency():
    rng = random.Random(3)
    k_len = 12
    rows = score_rows(rng, 4, k_len)
    dut = Softmax(4)
    # base 0, period 1: only key 0 is visible in every row (the most masked row the ISA rule can
    # express: qpos >= 0 always sees key 0), so each row is exactly one-hot
    got, stats = _run(dut, rows, 1, 0, 1)
    assert got == golden_softmax(rows, 1, 0, 1)
    assert all(row[1:] == [0] * (k_len - 1) and row[0] == 1 << F for row in got)
    assert stats["latency"] == SOFTMAX_LATENCY == dut.latency


@pytest.mark.slow
def test_softmax_long_rows():
    rng = random.Random(4)
    k_len = 512 if REDUCED else 2048
    lanes = 16
    rows = score_rows(rng, 3, k_len)[3:] + [[int(rng.gauss(0, 3) * 2**F) for _ in range(k_len)]]
    dut = Softmax(lanes)
    got, stats = _run(dut, rows, 1, k_len - 2, 2)
    assert got == golden_softmax(rows, 1, k_len - 2, 2)
    per_row = stats["row_cycles"][1] - stats["row_cycles"][0]
    beats = k_len // lanes
    assert 3 * beats <= per_row <= 3 * beats + 45, per_row


def test_bad_configuration():
    with pytest.raises(SfuArithError, match="lanes=0"):
        Softmax(0)


@pytest.mark.rtl
@requires_verilator
def test_softmax_cocotb_verilator():
    from tests.test_hw_sfu_norm import cocotb_row_core

    rng = random.Random(31)
    k_len, lanes = 45, 4
    rows = score_rows(rng, 8 if REDUCED else 24, k_len)
    for mask, base, period in ((1, 30, 5), (0, 0, 0)):
        params = {"mask": mask, "qpos_base": base, "qpos_period": period, "row": 0}
        cocotb_row_core(Softmax(lanes), "sfu_softmax_l4", rows, params,
                        golden_softmax(rows, mask, base, period), row_param=True)


@pytest.mark.rtl
@requires_verilator
def test_softmax_verilog_lints_clean():
    from olivine.hw.export import lint, verilog
    from olivine.hw.resources import build_unit
    from olivine.hw.sfu_arith import LINT_WAIVERS

    dut, top = build_unit("sfu_softmax", {"lanes": 2})
    lint(verilog(dut, top), top, waivers=LINT_WAIVERS)
