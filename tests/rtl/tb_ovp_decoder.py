"""cocotb testbench of OvpPairDecoder (tests/test_hw_ovp_decoder.py runs it).

DUT ports: pair (8 or 16 bits), flint (only for normal="runtime"), even__exponent,
even__integer, odd__exponent, odd__integer (integers signed); clk/rst when registered.
Vectors: words [n], flint [n], want [n, 4] = (e_even, i_even, e_odd, i_odd) from
golden/ovp_format, registered (0: combinational, 1: one register stage).
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, Timer

from olivine.sim.rtl import load_vectors


def _read(dut):
    return (dut.even__exponent.value.to_unsigned(), dut.even__integer.value.to_signed(),
            dut.odd__exponent.value.to_unsigned(), dut.odd__integer.value.to_signed())


@cocotb.test()
async def decoder_matches_golden(dut):
    """Apply every word; compare all four operand fields with the golden table at the end."""
    vec = load_vectors()
    registered = int(vec["registered"])
    has_flint = hasattr(dut, "flint")
    got = []
    if registered:
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0
    for word, flint in zip(vec["words"], vec["flint"]):
        dut.pair.value = int(word)
        if has_flint:
            dut.flint.value = int(flint)
        if registered:
            await RisingEdge(dut.clk)
            await ReadOnly()
            got.append(_read(dut))
            await FallingEdge(dut.clk)
        else:
            await Timer(1, unit="ns")
            got.append(_read(dut))
    want = [tuple(int(x) for x in row) for row in vec["want"]]
    assert len(got) == len(want)
    bad = [(int(w), g, e) for w, g, e in zip(vec["words"], got, want) if g != e]
    assert not bad, f"{len(bad)} of {len(want)} words differ; first (word, got, want): {bad[:4]}"
