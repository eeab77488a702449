"""LD and ST engines (hw/ldst.py) against sim/funcsim.py's LD / ST on random descriptors: cocotb +
Verilator, cocotbext-axi's AxiRamRead / AxiRamWrite as the HBM pseudo-channel (random pauses on
every channel), a lib.memory buffer behind the engine's buffer port."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from olivine.hw import isa
from olivine.hw.axi import burst_beats_reference
from olivine.hw.controller import unit_layout
from olivine.hw.export import lint, verilog
from olivine.hw.ldst import LoadEngine, StoreEngine
from tests.helpers import REDUCED, requires_verilator

RTL_DIR = Path(__file__).parent / "rtl"
DATA_WIDTH = 64
BEAT = DATA_WIDTH // 8
BUFFER_BYTES = 4096
HBM_BYTES = 1 << 16
OFFSET_BITS = 16
LINT_WAIVERS = {
    "UNUSEDSIGNAL": "Amaranth's Verilog keeps alias wires for view fields and submodule ports "
                    "(the segment FIFOs' level ports, payload fields the LD engine does not use: "
                    "opcode, wait/release, channel, which the controller and the core's channel "
                    "routing consume)",
}


class LoadTop(wiring.Component):
    """The LD engine writing a lib.memory buffer, with a host read port for the testbench."""

    def __init__(self):
        self.engine = LoadEngine(data_width=DATA_WIDTH, max_outstanding=2, buffer_bytes=BUFFER_BYTES,
                                 offset_bits=OFFSET_BITS)
        sig = self.engine.signature.members
        super().__init__({"inst": sig["inst"],
                          "done": Out(1), "fault": Out(1), "axi": sig["axi"],
                          "host_addr": In(self.engine.word_bits), "host_data": Out(DATA_WIDTH)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        m.submodules.mem = mem = memory.Memory(shape=DATA_WIDTH, depth=BUFFER_BYTES // BEAT, init=[])
        w = mem.write_port(granularity=8)
        r = mem.read_port()
        wiring.connect(m, wiring.flipped(self.inst), e.inst)
        wiring.connect(m, wiring.flipped(self.axi), e.axi)
        m.d.comb += [w.addr.eq(e.buf.addr), w.data.eq(e.buf.data), w.en.eq(e.buf.en),
                     r.addr.eq(self.host_addr), self.host_data.eq(r.data),
                     self.done.eq(e.done), self.fault.eq(e.fault)]
        return m


def random_ld(rng) -> isa.Instruction:
    """A descriptor that fits the 4 KiB buffer and the 64 KiB channel (unaligned anything)."""
    big = rng.random() < 0.3
    length = int(rng.integers(1, 3000)) if big else int(rng.integers(1, 40))
    n0, n1, n2 = (1, 1, 1) if big else (int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    total = length * n0 * n1 * n2
    buf_addr = int(rng.integers(0, BUFFER_BYTES - total + 1))
    strides = [int(rng.integers(0, 200)) for _ in range(3)]
    span = length + (n0 - 1) * strides[0] + (n1 - 1) * strides[1] + (n2 - 1) * strides[2]
    hbm_addr = int(rng.integers(0, HBM_BYTES - span))
    return isa.make("LD", target="weight", hbm_addr=hbm_addr, buf_addr=buf_addr, length=length, n0=n0,
                    n1=n1, n2=n2, hbm_stride0=strides[0], hbm_stride1=strides[1], hbm_stride2=strides[2],
                    zero_fill=int(rng.random() < 0.15))


def payload_limbs(inst: isa.Instruction, offset: int, unit: str = "ld") -> list[int]:
    layout = unit_layout(unit, OFFSET_BITS)
    fields = layout["fields"].shape
    value = offset | inst.fmt.opcode << layout["opcode"].offset
    for name, f in fields:
        value |= inst[name] << (layout["fields"].offset + f.offset)
    return [(value >> (32 * i)) & 0xFFFFFFFF for i in range((layout.size + 31) // 32)]


def funcsim_buffers(hbm: np.ndarray, program) -> tuple[list[np.ndarray], list[int]]:
    """The weight buffer after each LD per sim/funcsim.py (1 done, 2 error)."""
    from olivine.hw.config import AcceleratorConfig, BufferConfig
    from olivine.sim.funcsim import FuncSim, SimError

    cfg = AcceleratorConfig(buffers=BufferConfig(weight_kib=BUFFER_BYTES // 1024, activation_kib=1,
                                                 global_kib=1, meta_kib=1, bias_kib=1))
    sim = FuncSim(cfg, [HBM_BYTES], {0: hbm.tobytes()})
    states, outcome = [], []
    for inst in program:
        try:
            sim.do_ld(inst)
            outcome.append(1)
        except SimError:
            outcome.append(2)
        states.append(sim.buffers["weight"].copy())
    return states, outcome


def test_burst_split_rule():
    assert burst_beats_reference(0, 1000, 8) == 256
    assert burst_beats_reference(4096 - 16, 10, 8) == 2
    assert burst_beats_reference(4096 - 64 * 4, 300, 64) == 4
    assert burst_beats_reference(0, 3, 64) == 3


@requires_verilator
def test_load_engine_verilog_is_lint_clean():
    from olivine.hw.decode import LINT_WAIVERS as BASE

    # 128 bits: the 512-bit engine lints the same way but takes Amaranth ~100 s to convert
    # (its resources are measured at 512 bits: docs/hw.md)
    lint(verilog(LoadEngine(data_width=128), "olivine_load_engine"), "olivine_load_engine",
         waivers={**BASE, **LINT_WAIVERS})


@requires_verilator
@pytest.mark.rtl
@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_load_engine_matches_funcsim(tmp_path, pause):
    from olivine.sim.rtl import run_cocotb

    rng = np.random.default_rng(int(pause * 10) + 5)
    hbm = rng.integers(0, 256, HBM_BYTES, dtype=np.uint8)
    program = [random_ld(rng) for _ in range(12 if REDUCED else 40)]
    # one that runs past the buffer's end: the engine must fault, like the simulator
    program.append(isa.make("LD", target="weight", buf_addr=BUFFER_BYTES - 8, length=100))
    out = tmp_path / "load.npz"
    run_cocotb(verilog(LoadTop(), "olivine_load_top"), "olivine_load_top", "tb_load", test_dir=RTL_DIR,
               extra_env={"LOAD_TB_OUT": str(out)}, build_args=["-Wno-CASEINCOMPLETE"],
               vectors={"hbm": hbm, "insts": [payload_limbs(i, 8 * k) for k, i in enumerate(program)],
                        "words": BUFFER_BYTES // BEAT, "beat_bytes": BEAT, "pause": pause,
                        "max_cycles": 20000})
    got = np.load(out)
    want, outcome = funcsim_buffers(hbm, program)
    assert list(got["outcome"]) == outcome
    for k, (inst, w) in enumerate(zip(program, want)):
        if outcome[k] == 1:
            bad = np.nonzero(got["buffers"][k] != w)[0]
            assert bad.size == 0, (f"LD {k} ({inst.values}): {bad.size} bytes differ, first at {bad[0]}: "
                                   f"got {got['buffers'][k][bad[0]]}, want {w[bad[0]]}")
    big = [k for k, i in enumerate(program[:-1]) if i["length"] >= 2048 and not i["zero_fill"]]
    if big:
        k = big[0]
        print(f"pause {pause}: LD of {program[k]['length']} B took {got['cycles'][k]} cycles "
              f"({program[k]['length'] / BEAT:.0f} beats)")


# ---- ST ------------------------------------------------------------------------------------------

class StoreTop(wiring.Component):
    """The ST engine reading a lib.memory buffer that the testbench preloads through a host port."""

    def __init__(self):
        self.engine = StoreEngine(data_width=DATA_WIDTH, max_outstanding=2, buffer_bytes=BUFFER_BYTES,
                                  offset_bits=OFFSET_BITS)
        sig = self.engine.signature.members
        super().__init__({"inst": sig["inst"], "done": Out(1), "fault": Out(1), "axi": sig["axi"],
                          "host_addr": In(self.engine.word_bits), "host_data": In(DATA_WIDTH),
                          "host_en": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        m.submodules.mem = mem = memory.Memory(shape=DATA_WIDTH, depth=BUFFER_BYTES // BEAT, init=[])
        w = mem.write_port()
        r = mem.read_port()
        wiring.connect(m, wiring.flipped(self.inst), e.inst)
        wiring.connect(m, wiring.flipped(self.axi), e.axi)
        m.d.comb += [w.addr.eq(self.host_addr), w.data.eq(self.host_data), w.en.eq(self.host_en),
                     r.addr.eq(e.buf.addr), r.en.eq(e.buf.en), e.buf.data.eq(r.data),
                     self.done.eq(e.done), self.fault.eq(e.fault)]
        return m


def random_st(rng) -> isa.Instruction:
    big = rng.random() < 0.3
    length = int(rng.integers(1, 3000)) if big else int(rng.integers(1, 60))
    n0 = 1 if big else int(rng.integers(1, 6))
    buf_addr = int(rng.integers(0, BUFFER_BYTES - length * n0 + 1))
    stride = int(rng.integers(0, 300))
    hbm_addr = int(rng.integers(0, HBM_BYTES - length - (n0 - 1) * stride))
    return isa.make("ST", source="weight", hbm_addr=hbm_addr, buf_addr=buf_addr, length=length, n0=n0,
                    hbm_stride0=stride)


def funcsim_hbm(hbm: np.ndarray, buffer: np.ndarray, program) -> tuple[list[np.ndarray], list[int]]:
    from olivine.hw.config import AcceleratorConfig, BufferConfig
    from olivine.sim.funcsim import FuncSim, SimError

    cfg = AcceleratorConfig(buffers=BufferConfig(weight_kib=BUFFER_BYTES // 1024, activation_kib=1,
                                                 global_kib=1, meta_kib=1, bias_kib=1))
    sim = FuncSim(cfg, [HBM_BYTES], {0: hbm.tobytes()})
    sim.buffers["weight"][:] = buffer
    states, outcome = [], []
    for inst in program:
        try:
            sim.do_st(inst)
            outcome.append(1)
        except SimError:
            outcome.append(2)
        states.append(sim.hbm[0].copy())
    return states, outcome


@requires_verilator
def test_store_engine_verilog_is_lint_clean():
    from olivine.hw.decode import LINT_WAIVERS as BASE

    lint(verilog(StoreEngine(data_width=64, buffer_bytes=BUFFER_BYTES), "olivine_store_engine"),
         "olivine_store_engine", waivers={**BASE, **LINT_WAIVERS})


@requires_verilator
@pytest.mark.rtl
@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_store_engine_matches_funcsim(tmp_path, pause):
    from olivine.sim.rtl import run_cocotb

    rng = np.random.default_rng(int(pause * 10) + 7)
    hbm = rng.integers(0, 256, HBM_BYTES, dtype=np.uint8)
    buffer = rng.integers(0, 256, BUFFER_BYTES, dtype=np.uint8)
    program = [random_st(rng) for _ in range(12 if REDUCED else 40)]
    program.append(isa.make("ST", source="weight", buf_addr=BUFFER_BYTES - 8, length=100))  # past the end
    out = tmp_path / "store.npz"
    run_cocotb(verilog(StoreTop(), "olivine_store_top"), "olivine_store_top", "tb_store", test_dir=RTL_DIR,
               extra_env={"STORE_TB_OUT": str(out)}, build_args=["-Wno-CASEINCOMPLETE"],
               vectors={"hbm": hbm, "buffer": buffer, "beat_bytes": BEAT, "pause": pause, "max_cycles": 20000,
                        "insts": [payload_limbs(i, 5 * k, "st") for k, i in enumerate(program)]})
    got = np.load(out)
    want, outcome = funcsim_hbm(hbm, buffer, program)
    assert list(got["outcome"]) == outcome
    for k, (inst, w) in enumerate(zip(program, want)):
        bad = np.nonzero(got["hbm"][k] != w)[0]
        assert bad.size == 0, (f"ST {k} ({inst.values}): {bad.size} bytes differ, first at {bad[0]}: "
                               f"got {got['hbm'][k][bad[0]]}, want {w[bad[0]]}")
    big = [k for k, i in enumerate(program[:-1]) if i["length"] >= 2048]
    if big:
        k = big[0]
        print(f"pause {pause}: ST of {program[k]['length']} B took {got['cycles'][k]} cycles "
              f"({program[k]['length'] / BEAT:.0f} beats)")
