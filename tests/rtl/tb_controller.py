"""cocotb testbench of the Controller (tests/test_hw_controller.py runs it and checks the results).

The program memory is cocotbext-axi's AxiRamRead on the ``fetch__*`` port (random R-channel
pauses); the four units are stand-ins: a unit accepts its instruction when idle, finishes after
the instruction's programmed latency with a one-cycle ``done`` pulse (latency 0: never finishes,
for the watchdog). Vectors: words, prog_first / prog_len / prog_addr (per program: first word in
``words``, length, byte address in memory), latency (per word of ``words``: the latency of the
instruction starting there), watchdog, max_cycles, offset_bits.
Results (npz at $CONTROLLER_TB_OUT): per program state, cause, field, offset, stuck_valid[4],
stuck_offset[4], cycles; per executed instruction event_prog, event_unit, event_offset,
event_start, event_finish.
"""

import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotbext.axi import AxiRamRead, AxiReadBus

from olivine.hw.controller import STATES, UNIT_NAMES, status_layout
from olivine.sim.rtl import load_vectors


def _fields(layout, value, base=0):
    """Flatten a (nested) Amaranth layout value into {dotted name: int}."""
    from amaranth.lib import data

    out = {}
    for name, f in layout:
        shape = f.shape
        if isinstance(shape, data.ArrayLayout):
            for i in range(shape.length):
                elem = shape.elem_shape
                off = base + f.offset + i * elem.size
                for n2, f2 in elem:
                    out[f"{name}.{i}.{n2}"] = (value >> (off + f2.offset)) & ((1 << f2.width) - 1)
        else:
            out[name] = (value >> (base + f.offset)) & ((1 << f.width) - 1)
    return out


@cocotb.test()
async def controller_runs_programs(dut):
    vec = load_vectors()
    words = [int(w) for w in vec["words"]]
    latency = [int(x) for x in vec["latency"]]
    ob = int(vec["offset_bits"])
    layout = status_layout(ob)
    rng = random.Random(int(vec["seed"]))

    Clock(dut.clk, 10, unit="ns").start()
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "fetch_"), dut.clk, dut.rst, size=1 << 20)
    ram.r_channel.set_pause_generator(iter(lambda: rng.random() < 0.3, None))
    ram.ar_channel.set_pause_generator(iter(lambda: rng.random() < 0.2, None))
    dut.start.value = 0
    dut.watchdog_limit.value = int(vec["watchdog"])
    for u in UNIT_NAMES:
        getattr(dut, f"{u}__ready").value = 0
        getattr(dut, f"{u}_done").value = 0
        getattr(dut, f"{u}_fault").value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    res = {k: [] for k in ("state", "cause", "field", "offset", "stuck_valid", "stuck_offset", "cycles")}
    ev = {k: [] for k in ("event_prog", "event_unit", "event_offset", "event_start", "event_finish")}
    mask = (1 << ob) - 1
    for p, (first, length, addr) in enumerate(zip(vec["prog_first"], vec["prog_len"], vec["prog_addr"])):
        first, length, addr = int(first), int(length), int(addr)
        prog = words[first:first + length]
        ram.write(addr, b"".join(w.to_bytes(4, "little") for w in prog))
        dut.prog_addr.value = addr
        dut.prog_words.value = length
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        running = [None] * 4   # (offset, start cycle, finish cycle) of the instruction in flight
        cycle = 0
        while True:
            await FallingEdge(dut.clk)
            cycle += 1
            for u, name in enumerate(UNIT_NAMES):
                finishing = running[u] is not None and running[u][2] == cycle
                getattr(dut, f"{name}_done").value = int(finishing)
                if finishing:
                    off, start, finish = running[u]
                    for k, v in zip(ev, (p, u, off, start, finish)):
                        ev[k].append(v)
                    running[u] = None
                idle = running[u] is None and not finishing
                getattr(dut, f"{name}__ready").value = int(idle)
                if idle and getattr(dut, f"{name}__valid").value:
                    off = getattr(dut, f"{name}__payload").value.to_unsigned() & mask
                    lat = latency[first + off]
                    running[u] = (off, cycle, cycle + lat if lat else -1)
            st = _fields(layout, dut.status.value.to_unsigned())
            if STATES[st["state"]] in ("done", "error") and not dut.busy.value \
                    and all(r is None or r[2] == -1 for r in running):
                break
            if cycle > int(vec["max_cycles"]):
                break
        for u in UNIT_NAMES:
            getattr(dut, f"{u}__ready").value = 0
            getattr(dut, f"{u}_done").value = 0
        if any(r is not None for r in running):  # a never-finishing stand-in: finish it now
            for u, name in enumerate(UNIT_NAMES):
                getattr(dut, f"{name}_done").value = int(running[u] is not None)
            await FallingEdge(dut.clk)
            for name in UNIT_NAMES:
                getattr(dut, f"{name}_done").value = 0
            for _ in range(4):
                await FallingEdge(dut.clk)
        for k in ("state", "cause", "field", "offset"):
            res[k].append(st[k])
        res["stuck_valid"].append([st[f"stuck.{u}.valid"] for u in range(4)])
        res["stuck_offset"].append([st[f"stuck.{u}.offset"] for u in range(4)])
        res["cycles"].append(cycle)
    out = os.environ["CONTROLLER_TB_OUT"]
    np.savez(out + ".tmp.npz", **{k: np.asarray(v, dtype=np.int64) for k, v in {**res, **ev}.items()})
    os.replace(out + ".tmp.npz", out)
