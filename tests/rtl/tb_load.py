"""cocotb testbench of the LD engine behind a lib.memory buffer (tests/test_hw_ldst.py runs it).

HBM: cocotbext-axi AxiRamRead on ``axi__*`` holding vec["hbm"], with R-channel pauses
(probability vec["pause"]) and an AR-channel pause per burst (the latency knob). For every
descriptor of vec["insts"] (unit payload integers as 32-bit limbs): drive ``inst``, wait for
``done`` or ``fault``, then read the whole buffer through the host port. Results at
$LOAD_TB_OUT: buffers [n, bytes], outcome [n] (1 done, 2 fault), cycles [n].
"""

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotbext.axi import AxiRamRead, AxiReadBus

from olivine.sim.rtl import load_vectors


@cocotb.test()
async def load_engine_matches_funcsim(dut):
    vec = load_vectors()
    rng = random.Random(1)
    Clock(dut.clk, 10, unit="ns").start()
    hbm = bytes(vec["hbm"].astype(np.uint8))
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "axi_"), dut.clk, dut.rst, size=len(hbm))
    ram.write(0, hbm)
    pause = float(vec["pause"])
    ram.r_channel.set_pause_generator(iter(lambda: rng.random() < pause, None))
    ram.ar_channel.set_pause_generator(iter(lambda: rng.random() < pause, None))
    words, beat_bytes = int(vec["words"]), int(vec["beat_bytes"])
    dut.inst__valid.value = 0
    dut.host_addr.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    buffers, outcome, cycles = [], [], []
    for limbs in vec["insts"]:
        payload = sum(int(x) << (32 * i) for i, x in enumerate(limbs))
        dut.inst__payload.value = payload
        dut.inst__valid.value = 1
        while not dut.inst__ready.value:  # ready does not depend on valid
            await FallingEdge(dut.clk)
        await FallingEdge(dut.clk)  # the rising edge in between took the instruction
        dut.inst__valid.value = 0
        n = 0
        while not (dut.done.value or dut.fault.value):
            await FallingEdge(dut.clk)
            n += 1
            assert n < int(vec["max_cycles"]), "the LD engine did not finish"
        outcome.append(1 if dut.done.value else 2)
        cycles.append(n)
        buf = bytearray()
        for w in range(words):  # synchronous read: the address set here is read at the next edge
            dut.host_addr.value = w
            await FallingEdge(dut.clk)
            buf += dut.host_data.value.to_unsigned().to_bytes(beat_bytes, "little")
        buffers.append(np.frombuffer(bytes(buf), dtype=np.uint8))
    out = os.environ["LOAD_TB_OUT"]
    np.savez(out + ".tmp.npz", buffers=np.stack(buffers), outcome=np.asarray(outcome), cycles=np.asarray(cycles))
    os.replace(out + ".tmp.npz", out)
