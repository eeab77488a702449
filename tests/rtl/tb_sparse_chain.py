"""cocotb testbench of the sparse DSP chain (hw/sparse_chain.py), driven by tests/test_hw_sparse_chain.py.

DUT ports: clk, rst, i__valid, i__ready, i__payload (packed input beat), o__valid, o__ready,
o__payload (packed output beat). Vectors (olivine.sim.rtl.load_vectors), computed on the pytest
side from the behavioural model (reference_beat):
  in_words  [beats, wi] uint32: input payloads, little-endian 32-bit words
  out_words [beats, wo] uint32: expected output payloads
  valid     [cycles]  0/1: offer the next beat in this cycle (if one is left)
  ready     [cycles]  0/1: accept an output in this cycle
  latency   scalar: cycles from accepting a beat to its output while nothing stalls
The whole stream runs first; the comparison happens at the end (Python touches the DUT once per
cycle only to drive the handshake).
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import join_words as _join, load_vectors



@cocotb.test()
async def chain_matches_model(dut):
    vec = load_vectors()
    beats = [_join(row) for row in vec["in_words"]]
    want = [_join(row) for row in vec["out_words"]]
    valid_pattern = [int(v) for v in vec["valid"]]
    ready_pattern = [int(v) for v in vec["ready"]]
    latency = int(vec["latency"])

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.i__payload.value = 0
    dut.freeze.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    got, accepted_at, emitted_at = [], [], []
    next_beat = 0
    for cycle, (offer, take) in enumerate(zip(valid_pattern, ready_pattern)):
        if len(got) == len(want):
            break
        offering = bool(offer) and next_beat < len(beats)
        dut.i__valid.value = int(offering)
        if offering:
            dut.i__payload.value = beats[next_beat]
        dut.o__ready.value = int(take)
        await ReadOnly()   # settled values of this cycle: the handshake of the coming edge
        if offering and int(dut.i__ready.value):
            accepted_at.append(cycle)
            next_beat += 1
        if int(dut.o__valid.value) and take:
            got.append(int(dut.o__payload.value))
            emitted_at.append(cycle)
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)

    assert len(got) == len(want), f"{len(got)} of {len(want)} beats came out within {len(valid_pattern)} cycles"
    bad = [(i, hex(g), hex(w)) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} beats differ from the model; first (beat, got, want): {bad[:3]}"
    # While nothing stalls (the patterns start with a run of ones), latency is exact.
    assert emitted_at[0] - accepted_at[0] == latency, (accepted_at[:3], emitted_at[:3], latency)
