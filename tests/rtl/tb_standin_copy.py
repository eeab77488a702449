"""cocotb testbench: the stand-in core's copy through cocotbext-axi (the cocotb route's speed).

Used by benchmarks/fast_harness.py to compare the cocotb route with the fast C++ harness on the
same design and the same work. Vectors: ``words`` (uint32, the data copied from channel 0 to 1),
``channel_bytes``. Writes ``{"cycles", "seconds"}`` as JSON to $STANDIN_TB_OUT.
"""

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from olivine.hw import core_regs
from olivine.sim.rtl import load_vectors


@cocotb.test()
async def copy(dut):
    vectors = load_vectors()
    words = vectors["words"].astype("<u4")
    size = int(vectors["channel_bytes"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control_"), dut.clk, dut.rst)
    rams = [AxiRam(AxiBus.from_prefix(dut, f"m_axi_hbm{k}_"), dut.clk, dut.rst, size=size) for k in range(2)]
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    rams[0].write(0, words.tobytes())
    await host.write_dword(core_regs.offset("prog_words"), words.size)
    await host.write_dword(core_regs.offset("prog_channel"), 0)
    await host.write_dword(core_regs.offset("gie"), 1)
    await host.write_dword(core_regs.offset("ier"), 1)
    start = time.monotonic()
    await host.write_dword(core_regs.offset("ctrl"), 1)
    await RisingEdge(dut.interrupt)  # no Python per cycle beyond cocotbext-axi's models
    seconds = time.monotonic() - start
    cycles = await host.read_dword(core_regs.offset("cycles_lo"))
    copied = np.frombuffer(rams[1].read(0, words.size * 4), dtype="<u4")
    assert np.array_equal(copied, words), "the copy differs from the source"
    with open(os.environ["STANDIN_TB_OUT"], "w") as out:
        json.dump({"cycles": int(cycles), "seconds": seconds}, out)
