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

from olivine.sim.rtl import join_words, load_vectors
from olivine.sim.tb_stream import check_stream, clock_and_reset, drive_stream


@cocotb.test()
async def chain_matches_model(dut):
    vec = load_vectors()
    beats = [join_words(row) for row in vec["in_words"]]
    want = [join_words(row) for row in vec["out_words"]]
    valid, ready = [int(v) for v in vec["valid"]], [int(v) for v in vec["ready"]]
    await clock_and_reset(dut, {"i__valid": 0, "o__ready": 0, "i__payload": 0, "freeze": 0})
    run = await drive_stream(dut, beats, len(want), valid, ready)
    # While nothing stalls (the patterns start with a run of ones), latency is exact.
    check_stream(run, want, len(valid), int(vec["latency"]), what="beats")
