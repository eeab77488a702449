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

from olivine.sim.rtl import join_words, load_vectors
from olivine.sim.tb_stream import check_stream, clock_and_reset, drive_stream


@cocotb.test()
async def requant_matches_funcsim(dut):
    vec = load_vectors()
    items = [join_words(row) for row in vec["in_words"]]
    want = [join_words(row) for row in vec["out_words"]]
    valid, ready = [int(v) for v in vec["valid"]], [int(v) for v in vec["ready"]]
    await clock_and_reset(dut, {"i__valid": 0, "o__ready": 0})
    run = await drive_stream(dut, items, len(want), valid, ready, check_hold=True)
    check_stream(run, want, len(valid), int(vec["latency"]), truth="funcsim")
