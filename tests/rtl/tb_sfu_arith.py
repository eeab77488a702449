"""cocotb testbench of the SFU arithmetic blocks and row cores (hw/sfu_arith.py, sfu_norm.py,
sfu_softmax.py), driven by tests/test_hw_sfu_arith.py.

DUT ports: clk, rst, i__valid, i__ready, i__payload, o__valid, o__ready, o__payload; optionally
g__valid, g__ready, g__payload (row cores' parameter stream, offered with the beats flagged in
``g_with``) and ``params`` (row cores). Vectors (olivine.sim.rtl.load_vectors), computed on the
pytest side from golden:
  in_words  [beats, wi] uint32: input payloads, little-endian 32-bit words
  out_words [outs, wo]  uint32: expected output payloads
  g_words   [beats, wg] uint32 and g_with [beats] 0/1 (only when the DUT has a g port)
  params_words [beats, wp] uint32 (only when the DUT has params): set while offering each beat
  valid [cycles], ready [cycles] 0/1 handshake patterns
Reports the cycle of the first accept and the first output (latency check on the pytest side
through the assertion below when ``latency`` >= 0).
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import join_words as _join, load_vectors



@cocotb.test()
async def stream_matches_golden(dut):
    vec = load_vectors()
    beats = [_join(row) for row in vec["in_words"]]
    want = [_join(row) for row in vec["out_words"]]
    has_g = "g_words" in vec
    has_params = "params_words" in vec
    g_beats = [_join(row) for row in vec["g_words"]] if has_g else []
    g_with = [int(x) for x in vec["g_with"]] if has_g else []
    params = [_join(row) for row in vec["params_words"]] if has_params else []
    valid_pattern = [int(v) for v in vec["valid"]]
    ready_pattern = [int(v) for v in vec["ready"]]
    latency = int(vec["latency"])

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    if has_g:
        dut.g__valid.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    got, accepted_at, emitted_at = [], [], []
    k = gk = 0
    for cycle, (offer, take) in enumerate(zip(valid_pattern, ready_pattern)):
        if len(got) == len(want):
            break
        offering = bool(offer) and k < len(beats)
        dut.i__valid.value = int(offering)
        g_offer = offering and has_g and bool(g_with[k])
        if offering:
            dut.i__payload.value = beats[k]
            if has_params:
                dut.params.value = params[k]
            if g_offer:
                dut.g__payload.value = g_beats[gk]
        if has_g:
            dut.g__valid.value = int(g_offer)
        dut.o__ready.value = int(take)
        await ReadOnly()
        if offering and int(dut.i__ready.value):
            accepted_at.append(cycle)
            k += 1
            gk += int(g_offer)
        if int(dut.o__valid.value) and take:
            got.append(int(dut.o__payload.value))
            emitted_at.append(cycle)
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)

    assert len(got) == len(want), f"{len(got)} of {len(want)} results within {len(valid_pattern)} cycles"
    bad = [(i, hex(g), hex(w)) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{len(bad)} of {len(want)} results differ from golden; first (n, got, want): {bad[:3]}"
    if latency >= 0:
        assert emitted_at[0] - accepted_at[0] == latency, (accepted_at[:3], emitted_at[:3], latency)
