"""cocotb testbench of the whole core (top olivine_core), run by sim/core_rtl.py run_jobs.

DUT ports: s_axi_control__* (AXI4-Lite, cocotbext-axi AxiLiteMaster), interrupt,
m_axi_hbm<k>__* (AXI4, one cocotbext-axi AxiRam per channel with random pauses), clk, rst.
Vectors: images [jobs, channels, channel_bytes], prog_words (all jobs' words back to back) with
prog_len / prog_addr / prog_channel / watchdog per job, clear and dump (programs run before and
after each job), dump_bytes, reg_addr (registers read after each job), max_cycles, pause, seed.
Results (npz at $OLIVINE_CORE_TB_OUT): regs [jobs, registers], timeout [jobs], cycles [jobs]
(harness clock cycles from CTRL write to interrupt), hbm [jobs, channels, bytes] (before the
dump), dumps [jobs, dump_bytes].
"""

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from olivine.hw import core_regs
from olivine.sim.rtl import load_vectors

R = core_regs.offset


async def _reset(dut):
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)


async def _run_program(dut, host, words, addr, channel, watchdog, budget, rams):
    """The host sequence: program into HBM, registers, start, wait for the interrupt.
    Returns (finished, cycles)."""
    rams[channel].write(addr, np.asarray(words, dtype="<u4").tobytes())
    await host.write_dword(R("prog_addr_lo"), addr & 0xFFFFFFFF)
    await host.write_dword(R("prog_addr_hi"), addr >> 32)
    await host.write_dword(R("prog_words"), len(words))
    await host.write_dword(R("prog_channel"), channel)
    await host.write_dword(R("watchdog"), watchdog)
    await host.write_dword(R("gie"), 1)
    await host.write_dword(R("ier"), 1)
    await host.write_dword(R("ctrl"), 1)
    start = cocotb.utils.get_sim_time("ns")
    if not dut.interrupt.value:
        await First(RisingEdge(dut.interrupt), ClockCycles(dut.clk, budget))
    cycles = int((cocotb.utils.get_sim_time("ns") - start) // 10)
    if not dut.interrupt.value:
        return False, cycles
    ctrl = await host.read_dword(R("ctrl"))
    assert ctrl >> core_regs.CTRL_BITS["ap_done"] & 1, f"interrupt without ap_done (CTRL 0x{ctrl:x})"
    again = await host.read_dword(R("ctrl"))
    assert not again >> core_regs.CTRL_BITS["ap_done"] & 1, "ap_done is not cleared by reading CTRL"
    await host.write_dword(R("isr"), 1)
    await ClockCycles(dut.clk, 1)
    assert not dut.interrupt.value, "interrupt still high after clearing ISR"
    return True, cycles


@cocotb.test()
async def core_runs_jobs(dut):
    vec = load_vectors()
    rng = random.Random(int(vec["seed"]))
    channels, channel_bytes = int(vec["channels"]), int(vec["channel_bytes"])
    pause = float(vec["pause"])
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control_"), dut.clk, dut.rst)
    rams = []
    for k in range(channels):
        ram = AxiRam(AxiBus.from_prefix(dut, f"m_axi_hbm{k}_"), dut.clk, dut.rst, size=channel_bytes)
        if pause:
            for ch in (ram.read_if.ar_channel, ram.read_if.r_channel, ram.write_if.aw_channel,
                       ram.write_if.w_channel, ram.write_if.b_channel):
                ch.set_pause_generator(iter(lambda: rng.random() < pause, None))
        rams.append(ram)
    await _reset(dut)
    assert await host.read_dword(R("magic")) == core_regs.MAGIC

    words_all = [int(w) for w in vec["prog_words"]]
    clear = [int(w) for w in vec["clear"]]
    dump = [int(w) for w in vec["dump"]]
    dump_bytes = int(vec["dump_bytes"])
    budget = int(vec["max_cycles"])
    regs, timeout, cycles, hbm, dumps = [], [], [], [], []
    at = 0
    for n, length in enumerate(vec["prog_len"]):
        length = int(length)
        words = words_all[at: at + length]
        at += length
        image = vec["images"][n]
        for k in range(channels):
            rams[k].write(0, image[k].tobytes())
        # clear the buffers (zero-fill LDs), program placed past the job's program
        clear_addr = channel_bytes - 4096
        ok, _ = await _run_program(dut, host, clear, clear_addr, 0, 0, budget, rams)
        assert ok, "the clear program did not finish"
        rams[0].write(clear_addr, bytes(4 * len(clear)))
        ok, c = await _run_program(dut, host, words, int(vec["prog_addr"][n]), int(vec["prog_channel"][n]),
                                   int(vec["watchdog"][n]), budget, rams)
        timeout.append(not ok)
        cycles.append(c)
        regs.append([await host.read_dword(int(a)) for a in vec["reg_addr"]])  # a hung run's too
        if not ok:  # over budget: reset the core (registers; the buffers keep their bytes)
            await _reset(dut)
        hbm.append(np.stack([np.frombuffer(rams[k].read(0, channel_bytes), dtype=np.uint8) for k in range(channels)]))
        for k in range(channels):
            rams[k].write(0, bytes(channel_bytes))
        ok, _ = await _run_program(dut, host, dump, channel_bytes - 4096, 0, 0, budget, rams)
        assert ok, "the dump program did not finish"
        dumps.append(np.frombuffer(rams[0].read(0, dump_bytes), dtype=np.uint8))
    out = os.environ["OLIVINE_CORE_TB_OUT"]
    np.savez(out + ".tmp.npz", regs=np.asarray(regs, dtype=np.int64), timeout=np.asarray(timeout),
             cycles=np.asarray(cycles), hbm=np.stack(hbm) if hbm else np.zeros((0, channels, channel_bytes)),
             dumps=np.stack(dumps) if dumps else np.zeros((0, dump_bytes)))
    os.replace(out + ".tmp.npz", out)
