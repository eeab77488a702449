"""cocotb testbench of the matrix engine's requantizer (hw/requant.py), driven by tests/test_hw_requant.py.

DUT ports: clk, rst, i__valid, i__ready, i__payload (REQUANT_IN), o__valid, o__ready, o__payload
(REQUANT_OUT). Vectors (olivine.sim.rtl.load_vectors), computed on the pytest side from
``sim.funcsim.requantize_exact``:
  in_words  [n, 6] uint32: REQUANT_IN payloads, little-endian 32-bit words
  out_words [n, 2] uint32: expected REQUANT_OUT payloads
  valid, ready [cycles] 0/1: the random offer / take patterns
  latency: the expected cycles from the first accept to the first output (the first cycles of
  the patterns are all ones, so this is the unstalled latency)
Besides the values, the testbench checks the stream rules: an offered output stays valid with the
same payload until it is taken.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import join_words, load_vectors


@cocotb.test()
async def requant_matches_funcsim(dut):
    vec = load_vectors()
    items = [join_words(row) for row in vec["in_words"]]
    want = [join_words(row) for row in vec["out_words"]]
    valid_pattern = [int(v) for v in vec["valid"]]
    ready_pattern = [int(v) for v in vec["ready"]]
    latency = int(vec["latency"])

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    got, accepted_at, emitted_at = [], [], []
    held = None  # an output offered and not taken: must stay as it is
    k = 0
    for cycle, (offer, take) in enumerate(zip(valid_pattern, ready_pattern)):
        if len(got) == len(want):
            break
        offering = bool(offer) and k < len(items)
        dut.i__valid.value = int(offering)
        if offering:
            dut.i__payload.value = items[k]
        dut.o__ready.value = int(take)
        await ReadOnly()
        if offering and int(dut.i__ready.value):
            accepted_at.append(cycle)
            k += 1
        out_valid = int(dut.o__valid.value)
        if held is not None:
            assert out_valid and int(dut.o__payload.value) == held, f"cycle {cycle}: a stalled output changed"
        held = None
        if out_valid:
            if take:
                got.append(int(dut.o__payload.value))
                emitted_at.append(cycle)
            else:
                held = int(dut.o__payload.value)
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)

    assert len(got) == len(want), f"{len(got)} of {len(want)} results within {len(valid_pattern)} cycles"
    bad = [(n, hex(g), hex(w)) for n, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} of {len(want)} results differ from funcsim; first (n, got, want): {bad[:3]}"
    assert emitted_at[0] - accepted_at[0] == latency, (accepted_at[:3], emitted_at[:3], latency)
