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

import itertools

import cocotb

from olivine.sim.rtl import join_words, load_vectors
from olivine.sim.tb_stream import check_stream, clock_and_reset, drive_stream


@cocotb.test()
async def stream_matches_golden(dut):
    vec = load_vectors()
    beats = [join_words(row) for row in vec["in_words"]]
    want = [join_words(row) for row in vec["out_words"]]
    has_g, has_params = "g_words" in vec, "params_words" in vec
    g_beats = [join_words(row) for row in vec["g_words"]] if has_g else []
    g_with = [int(x) for x in vec["g_with"]] if has_g else []
    g_index = list(itertools.accumulate(g_with, initial=0))  # item k's parameter beat
    params = [join_words(row) for row in vec["params_words"]] if has_params else []
    valid, ready = [int(v) for v in vec["valid"]], [int(v) for v in vec["ready"]]

    def side(k: int, offering: bool) -> None:
        g_offer = offering and has_g and bool(g_with[k])
        if offering and has_params:
            dut.params.value = params[k]
        if g_offer:
            dut.g__payload.value = g_beats[g_index[k]]
        if has_g:
            dut.g__valid.value = int(g_offer)

    await clock_and_reset(dut, {"i__valid": 0, "o__ready": 0, **({"g__valid": 0} if has_g else {})})
    run = await drive_stream(dut, beats, len(want), valid, ready, side=side)
    check_stream(run, want, len(valid), int(vec["latency"]), truth="golden")
