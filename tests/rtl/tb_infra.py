"""cocotb testbench of the infrastructure tests' tiny MAC (tests/test_sim_rtl.py).

DUT ports: a, b (signed 8), en, clear (1), acc (signed 24), clk, rst. Vectors (from
olivine.sim.rtl.load_vectors): a, b, en, clear (one element per cycle) and want (acc after
each cycle's rising edge), computed by the pytest side's behavioural model.
"""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import load_vectors


async def _reset(dut):
    dut.a.value = 0
    dut.b.value = 0
    dut.en.value = 0
    dut.clear.value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def mac_matches_vectors(dut):
    """Drive every cycle's inputs, record acc, compare with the model at the end."""
    vec = load_vectors()
    Clock(dut.clk, 10, unit="ns").start()
    await _reset(dut)
    got = []
    for a, b, en, clear in zip(vec["a"], vec["b"], vec["en"], vec["clear"]):
        dut.a.value = int(a)
        dut.b.value = int(b)
        dut.en.value = int(en)
        dut.clear.value = int(clear)
        await RisingEdge(dut.clk)
        await ReadOnly()
        got.append(dut.acc.value.to_signed())
        await FallingEdge(dut.clk)
    want = [int(x) for x in vec["want"]]
    mismatches = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert len(got) == len(want)
    assert not mismatches, f"{len(mismatches)} cycles differ, first (cycle, got, want): {mismatches[:5]}"


@cocotb.test(skip=os.environ.get("OLIVINE_TB_INFRA_FAIL") != "1")
async def mac_fails_on_purpose(dut):
    """Checks that failures reach pytest: expects acc != 0 after reset, which is false."""
    Clock(dut.clk, 10, unit="ns").start()
    await _reset(dut)
    await ReadOnly()
    assert dut.acc.value.to_signed() == 12345, "deliberate failure: acc after reset is not 12345"
