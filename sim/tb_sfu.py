"""cocotb testbench of the SFU harness (hw/sfu.py SfuHarness), run by sim/sfu_check.py.

DUT ports: instr__payload (INSTR_LAYOUT packed), instr__valid, instr__ready, status (STATUS_LAYOUT
packed), host_wr_addr/host_wr_data/host_wr_en (byte enables), host_rd_addr -> host_rd_data (one
cycle later), clk, rst.

Vectors (sim/sfu_check.py cocotb_vectors): per case c, the words load_idx/load_val[load_ptr[c]:
load_ptr[c+1]] to write first, the instruction instr[c] (fields at field_offsets), then the words
chk_idx/chk_val[chk_ptr[c]: chk_ptr[c+1]] expected afterwards, and want_code[c]. The testbench
writes per case the status code, the number of mismatching 32-bit lanes and the instruction's
cycle count (status.cycles) to $OLIVINE_SFU_RESULTS (npz), then fails if anything differed.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import load_vectors


def _field(value: int, offset: int, width: int) -> int:
    return (value >> offset) & ((1 << width) - 1)


@cocotb.test()
async def sfu_matches_funcsim(dut):
    vec = load_vectors()
    lanes = int(vec["lanes"])
    offsets = [int(x) for x in vec["field_offsets"]]
    off_done, off_code, off_cycles = (int(x) for x in vec["status_offsets"])
    full_en = (1 << (4 * lanes)) - 1
    Clock(dut.clk, 10, unit="ns").start()
    dut.instr__valid.value = 0
    dut.host_wr_en.value = 0
    dut.host_rd_addr.value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    codes, mism, cycles = [], [], []
    n_cases = len(vec["instr"])
    for c in range(n_cases):
        for k in range(int(vec["load_ptr"][c]), int(vec["load_ptr"][c + 1])):
            dut.host_wr_addr.value = int(vec["load_idx"][k])
            dut.host_wr_data.value = sum(int(v) << (32 * j) for j, v in enumerate(vec["load_val"][k]))
            dut.host_wr_en.value = full_en
            await FallingEdge(dut.clk)
        dut.host_wr_en.value = 0
        word = 0
        for off, value in zip(offsets, vec["instr"][c]):
            word |= int(value) << off
        dut.instr__payload.value = word
        dut.instr__valid.value = 1
        while True:
            await ReadOnly()
            accepted = int(dut.instr__ready.value)
            await FallingEdge(dut.clk)
            if accepted:
                break
        dut.instr__valid.value = 0
        waited = 0
        while True:
            await ReadOnly()
            status = dut.status.value.to_unsigned()
            if _field(status, off_done, 1):
                break
            await FallingEdge(dut.clk)
            waited += 1
            assert waited < 1_000_000, f"case {c}: the SFU did not finish"
        codes.append(_field(status, off_code, 4))
        cycles.append(_field(status, off_cycles, 32))
        await FallingEdge(dut.clk)
        bad = 0
        lo, hi = int(vec["chk_ptr"][c]), int(vec["chk_ptr"][c + 1])
        for k in range(lo, hi):
            dut.host_rd_addr.value = int(vec["chk_idx"][k])
            await FallingEdge(dut.clk)  # the rising edge in between registers the read
            got = dut.host_rd_data.value.to_unsigned()
            want = vec["chk_val"][k]
            bad += sum(((got >> (32 * j)) & 0xFFFFFFFF) != int(want[j]) for j in range(lanes))
        mism.append(bad)

    out = os.environ.get("OLIVINE_SFU_RESULTS")
    if out:
        np.savez(out, code=np.array(codes), mismatches=np.array(mism), cycles=np.array(cycles))
    wrong = [c for c in range(n_cases) if mism[c] or codes[c] != int(vec["want_code"][c])]
    assert not wrong, (f"{len(wrong)} of {n_cases} cases differ; first: case {wrong[0]} "
                       f"code {codes[wrong[0]]} (want {int(vec['want_code'][wrong[0]])}), {mism[wrong[0]]} lanes")
