"""cocotb testbench of the whole core (top olivine_core), run by sim/core_rtl.py run_jobs.

DUT ports: s_axi_control__* (AXI4-Lite, cocotbext-axi AxiLiteMaster), interrupt,
m_axi_hbm<k>__* (AXI4, one :class:`HbmChannel` per channel: cocotbext-axi's RAM with random
pauses, a read latency and SLVERR windows), clk, rst.
Vectors: images [jobs, channels, channel_bytes], prog_words (all jobs' words back to back) with
prog_len / prog_addr / prog_channel / watchdog per job, clear and dump (programs run before and
after each job), dump_bytes, reg_addr (registers read after each job), max_cycles, pause, seed,
read_latency (cycles from an AR handshake to its first R beat at least; 0: the model's own few),
slverr [n, 3] (channel, first byte, end byte: beats touching the window answer SLVERR).
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
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite
from cocotbext.axi.memory import Memory

from olivine.hw import core_regs
from olivine.sim.rtl import load_vectors

R = core_regs.offset


class SlverrWindow(Exception):
    """Raised by the channel model for a beat in an SLVERR window: cocotbext-axi answers SLVERR."""


class _WindowRead(AxiRamRead):
    def __init__(self, *args, windows=(), **kwargs):
        self.windows = windows
        super().__init__(*args, **kwargs)

    async def _read(self, address, length):
        if any(lo < address + length and address < hi for lo, hi in self.windows):
            raise SlverrWindow(f"read of {length} bytes at {address:#x}")
        return await super()._read(address, length)


class _WindowWrite(AxiRamWrite):
    def __init__(self, *args, windows=(), **kwargs):
        self.windows = windows
        super().__init__(*args, **kwargs)

    async def _write(self, address, data):
        if any(lo < address + len(data) and address < hi for lo, hi in self.windows):
            raise SlverrWindow(f"write of {len(data)} bytes at {address:#x}")
        await super()._write(address, data)


class HbmChannel(Memory):
    """One HBM channel: cocotbext-axi's AXI4 RAM (``size`` bytes) whose beats touching a
    ``windows`` byte range [lo, hi) answer SLVERR (RRESP = 2 with zero data; the burst's BRESP = 2,
    the beat not written), and whose first R beat of a burst comes ``read_latency`` cycles after
    the burst's AR handshake at the earliest (bursts stay pipelined: the wait counts from each
    AR's own handshake, recorded on the bus as the model's AR sink samples it)."""

    def __init__(self, bus, clock, reset, size: int, *, read_latency: int = 0, windows=()):
        super().__init__(size)
        self.write_if = _WindowWrite(bus.write, clock, reset, mem=self.mem, windows=tuple(windows))
        self.read_if = _WindowRead(bus.read, clock, reset, mem=self.mem, windows=tuple(windows))
        self.read_latency, self.clock, self.cycle = int(read_latency), clock, 0
        if self.read_latency:
            ar = self.read_if.ar_channel
            self._handshakes = []
            cocotb.start_soon(self._count_cycles(ar, reset))
            take = ar.recv

            async def delayed_recv():
                item = await take()
                due = self._handshakes.pop(0) + self.read_latency
                if self.cycle < due:
                    await ClockCycles(self.clock, due - self.cycle)
                return item
            ar.recv = delayed_recv

    async def _count_cycles(self, ar, reset):
        while True:
            await RisingEdge(self.clock)
            self.cycle += 1
            if reset is not None and reset.value:
                self._handshakes.clear()  # the AR sink drops its queue too
            elif ar.valid.value and ar.ready.value:
                self._handshakes.append(self.cycle)


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
    latency = int(vec["read_latency"]) if "read_latency" in vec else 0
    windows = [tuple(int(x) for x in row) for row in vec["slverr"]] if "slverr" in vec else []
    rams = []
    for k in range(channels):
        ram = HbmChannel(AxiBus.from_prefix(dut, f"m_axi_hbm{k}_"), dut.clk, dut.rst, channel_bytes,
                         read_latency=latency, windows=[(lo, hi) for ch, lo, hi in windows if ch == k])
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
