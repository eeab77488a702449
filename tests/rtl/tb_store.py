"""cocotb testbench of the ST engine reading a lib.memory buffer (tests/test_hw_ldst.py runs it).

The buffer is preloaded through the host write port with vec["buffer"]; HBM is cocotbext-axi's
AxiRamWrite on ``axi__*`` (initially vec["hbm"]) with W/AW/B pauses (probability vec["pause"]).
For every descriptor of vec["insts"]: drive ``inst``, wait for done or fault, dump HBM.
Results at $STORE_TB_OUT: hbm [n, bytes], outcome [n] (1 done, 2 fault), cycles [n].
"""

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotbext.axi import AxiRamWrite, AxiWriteBus

from olivine.sim.rtl import load_vectors


@cocotb.test()
async def store_engine_matches_funcsim(dut):
    vec = load_vectors()
    rng = random.Random(2)
    Clock(dut.clk, 10, unit="ns").start()
    hbm = bytes(vec["hbm"].astype(np.uint8))
    ram = AxiRamWrite(AxiWriteBus.from_prefix(dut, "axi_"), dut.clk, dut.rst, size=len(hbm))
    ram.write(0, hbm)
    pause = float(vec["pause"])
    for ch in (ram.aw_channel, ram.w_channel, ram.b_channel):
        ch.set_pause_generator(iter(lambda: rng.random() < pause, None))
    beat_bytes = int(vec["beat_bytes"])
    dut.inst__valid.value = 0
    dut.host_en.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    buf = bytes(vec["buffer"].astype(np.uint8))
    for w in range(len(buf) // beat_bytes):
        dut.host_addr.value = w
        dut.host_data.value = int.from_bytes(buf[w * beat_bytes:(w + 1) * beat_bytes], "little")
        dut.host_en.value = 1
        await FallingEdge(dut.clk)
    dut.host_en.value = 0
    images, outcome, cycles = [], [], []
    for limbs in vec["insts"]:
        dut.inst__payload.value = sum(int(x) << (32 * i) for i, x in enumerate(limbs))
        dut.inst__valid.value = 1
        while not dut.inst__ready.value:
            await FallingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.inst__valid.value = 0
        n = 0
        while not (dut.done.value or dut.fault.value):
            await FallingEdge(dut.clk)
            n += 1
            assert n < int(vec["max_cycles"]), "the ST engine did not finish"
        outcome.append(1 if dut.done.value else 2)
        cycles.append(n)
        images.append(np.frombuffer(ram.read(0, len(hbm)), dtype=np.uint8))
    out = os.environ["STORE_TB_OUT"]
    np.savez(out + ".tmp.npz", hbm=np.stack(images), outcome=np.asarray(outcome), cycles=np.asarray(cycles))
    os.replace(out + ".tmp.npz", out)
