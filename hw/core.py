"""The accelerator core's top: controller, LD/ST engines, SFU, matrix-engine slot, buffers, AXI.

Structure (one core, one :class:`~olivine.hw.config.AcceleratorConfig`)::

  s_axi_control (AXI4-Lite) -> register block (hw/core_regs.py) -> Controller start / status
  Controller.fetch -> R buffer\\
  TransferGuard -> LoadEngine -+-> channel router -> m_axi_hbm0 .. m_axi_hbm{C-1} (AXI4)
  TransferGuard -> StoreEngine-/
  Controller.sfu -> Sfu (EnableInserter)            \\
  Controller.mpe -> matrix engine (EnableInserter)   +-> buffer arbiters -> lib.memory buffers
  LD writes, ST reads                               /    (weight, meta, bias, data space banks)

Ports
  s_axi_control: In(axi4_lite_signature(hw.core_regs.ADDRESS_BITS, 32)), the register map of
      hw/core_regs.py (Vitis ap_ctrl_hs block at 0x00-0x0C).
  interrupt: Out(1) = gie[0] & ier[0] & isr[0] (isr[0] is set when ap_done is).
  m_axi_hbm<k> (k < config.hbm_channels): Out(axi4_signature(64, config.axi_data_width, 1)),
      byte addresses inside channel k. ARID 0 = program fetch, 1 = LD; AWID 0 (ST).
  Verilog: hw.export.verilog(core, "olivine_core"), clock ``clk``, synchronous active-high ``rst``.

Register access latency: a read is answered one cycle after AR is accepted (ARREADY is high
while no read response is pending); a write takes effect one cycle after both AW and W have been
accepted and BVALID rises with it (two cycles from a simultaneous AW + W to B).
ap_ctrl_hs: writing CTRL bit0 sets ap_start; the core takes it when the controller is idle and
nothing is in flight (ap_start clears then). ap_done is set when the program ends (state done or
error, once every unit has drained; after a watchdog error without waiting for the hung unit) and
is cleared by reading CTRL; ap_idle = ap_ready = no program running, nothing in flight and no
ap_start pending. Counters restart at each start: cycles counts while the state is running;
per unit ``busy`` (an instruction in flight), ``stall_token`` (idle with a queue head waiting for
a token), ``stall_memory`` (LD: waiting for read data, ``rready`` without ``rvalid``; ST: a W or
AW beat not accepted; SFU / matrix engine: frozen by the buffer arbiter), ``instructions``
(finished without fault); per channel the bytes moved on the bus (read: beats x beat bytes,
program fetch included; write: WSTRB bytes).

LD / ST checks (docs/isa.md "Validity"): a :class:`TransferGuard` in front of each engine checks
the buffer range, the channel (< hbm_channels) and the HBM range (< ``hbm_channel_bytes``) before
the engine starts, so a failing instruction moves no byte (3 cycles per instruction: latch,
products, compare); it faults with :class:`UnitError`. A read or write response other than OKAY
faults the instruction too (``BUS``; the bytes before it have moved).

Buffers (hw/buffers.py bank_plan, ``amaranth.lib.memory`` with Vivado's / Yosys's ``ram_style``):
weight (one memory: its double buffering is by address, LD writing one half while the engine
reads the other), meta and bias, written by LD and read by the matrix engine (and by ST); the data
space (activation + global) in ``data_banks`` banks interleaved by memory word. Each bank has one
write and one read port (simple dual port). A memory word is as wide as the widest unit port on it
(``axi_data_width``, the SFU's ``4 * lanes`` bytes, the engine's ports); narrower ports select a
slice on read and shift data and byte enables on write. Each bank's primitive (URAM / BRAM) follows
from its depth x width (hw.buffers.choose_primitive), and the core refuses (ConfigError, naming the
buffers) a configuration whose banks on ``config.cores`` cores exceed the board's URAM or BRAM
(hw.buffers.check_fit, with the matrix engine's chunk banks and carry memory,
hw.mpe.MatrixEngine.memory_primitives; ``buffer_primitives`` holds the totals), and one whose
logic, estimated per part from Yosys measurements (hw/fit.py check_logic: LUT sites = LUT + SRL +
LUTRAM), exceeds 70 % of the board's kernel LUTs or of one SLR's share per core, naming each part's
share (``logic_estimate`` holds the per-part estimate of one core).

Arbitration, per bank and port: LD (writes) and ST (reads) win in the data space; they are never
frozen because their AXI handshakes cannot pause mid-beat. The SFU and the matrix engine contend for the
rest; when both want the same port of the same bank, a round-robin bit decides (it flips after
each such conflict). A unit that loses any of its requests in a cycle is frozen for the cycle
(``EnableInserter``: none of its requests is performed, every register holds) and the core holds
the read data of its last granted read until its next enabled cycle. Cost: a lost cycle per
conflict; the SFU and the engine lose nothing to each other when they work in different banks
(word w lives in bank w mod data_banks). The engine's weight/meta/bias reads are never frozen
(CORE_INTERFACE.md): an ST reading one of those buffers (as test dumps do) waits for the port
while the engine reads it, in either half of the weight buffer, which has one read port
(StoreEngine ``buf.busy``; its words go to a queue, so its AXI side only sees a later beat). The controller's instruction handshake and the units' done/fault pulses are gated with
the same enable.

Matrix engine slot: ``mpe`` is a component with the signature of CORE_INTERFACE.md section 3
(``inst``, ``done``, ``fault``, ``busy``, ``error``, ``act_rd``, ``act_wr``, ``weight_rd``,
``meta_rd``, ``bias_rd``; widths its choice) or a callable building one from the configuration.
Without one (``mpe=None``) every MM / MV faults (``unit_fault``, unit error
:data:`MPE_NOT_BUILT`).

Latency: controller as hw/controller.py (a dependent instruction starts the cycle after the done
pulse); LD and ST 3 cycles more (the guard); a buffer read 1 cycle (+ frozen cycles).
Throughput: LD and ST one beat per cycle each (on different channels; fetch and LD share a
channel's read side, fetch first when both request an AR). The fetch reads bursts of
FETCH_BURST beats into a FETCH_BUFFER-beat buffer and issues an AR only when its beats fit, so it
always takes its R beats and never holds up an LD's beats behind its own (a program waiting at a
barrier for an LD on its channel would otherwise deadlock). SFU as hw/sfu.py when not frozen.
"""

from __future__ import annotations

import enum as py_enum

from amaranth.hdl import Array, Cat, Const, EnableInserter, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import core_regs, isa
from .axi import RESP_OKAY, axi4_lite_signature, axi4_signature
from .bitops import popcount, shift_right
from .buffers import RAM_STYLES, bank_plan, check_fit, plan_geometry
from .config import AcceleratorConfig
from .fit import check_logic
from .controller import LINT_WAIVERS as CONTROLLER_LINT_WAIVERS
from .controller import STATES, STATUS_CAUSES, UNIT_NAMES, Controller, unit_layout
from .decode import DEFAULT_OFFSET_BITS
from .ldst import LoadEngine, StoreEngine
from .resources import register_unit
from .sfu import FULL_LINT_WAIVERS as SFU_LINT_WAIVERS
from .sfu import INSTR_LAYOUT as SFU_INSTR_LAYOUT
from .sfu import Sfu

__all__ = ["OlivineCore", "TransferGuard", "UnitError", "MPE_NOT_BUILT", "LINT_WAIVERS", "VERILATOR_BUILD_ARGS",
           "core_ports"]

#: Program fetch bursts (beats) and the fetch's R buffer (2 bursts): the fetch shares a channel's
#: read side with LD, and a fetch that stops taking beats (dispatch waits at a barrier for an LD)
#: must not block the LD's beats behind its own on the R channel, so a fetch AR is issued only when
#: its beats fit in the buffer.
FETCH_BURST = 16
FETCH_BUFFER = 2 * FETCH_BURST

#: The matrix engine's buffer ports and their buffers.
_MPE_BUFFER_PORTS = {"act_rd": "data", "act_wr": "data", "weight_rd": "weight", "meta_rd": "meta", "bias_rd": "bias"}

#: unit_error code of an MM / MV when no matrix engine is built into the core.
MPE_NOT_BUILT = 0xFF

#: Verilator flags for building the core (cocotb and the C++ harness): Amaranth's case idiom and the
#: port name "interrupt" that Vitis requires (see LINT_WAIVERS).
VERILATOR_BUILD_ARGS = ("-Wno-CASEINCOMPLETE", "-Wno-SYMRSVDWORD")

#: -Wall waivers of the core's Verilog (the controller's and the SFU's, plus the core's own).
LINT_WAIVERS: dict[str, str] = {
    **CONTROLLER_LINT_WAIVERS, **SFU_LINT_WAIVERS,
    "SYMRSVDWORD": "the Vitis kernel interface requires a port named 'interrupt' (alveo-kernel.md)",
}


class UnitError(py_enum.IntEnum):
    """``unit_error[15:8]`` of a faulting LD or ST (docs/isa.md "Validity (LD / ST)")."""

    NONE = 0
    BUFFER_RANGE = 1   # buf_addr + the transfer's bytes beyond the buffer
    CHANNEL = 2        # channel >= hbm_channels
    HBM_RANGE = 3      # the last byte beyond the channel
    BUS = 4            # RRESP / BRESP not OKAY


def _log2(n: int) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{n} is not a power of two")
    return n.bit_length() - 1


class TransferGuard(wiring.Component):
    """Checks an LD or ST against docs/isa.md "Validity (LD / ST)" before its engine starts.

    Ports: i (In stream unit_layout(unit)), o (Out stream, the same payload, to the engine),
    fault (Out 1 pulse: the instruction breaks a rule, nothing moved), error (Out 8, UnitError,
    held until the next instruction), channel (Out 6: the channel of the instruction in flight).
    Latency: 3 cycles from i to o (latch, products, compares), the fault pulse 4. One instruction
    at a time.
    """

    def __init__(self, unit: str, *, sizes: tuple[int, ...], channels: int, channel_bytes: int,
                 offset_bits: int = DEFAULT_OFFSET_BITS):
        assert unit in ("ld", "st")
        self.unit, self.sizes, self.channels, self.channel_bytes = unit, sizes, channels, channel_bytes
        layout = unit_layout(unit, offset_bits)
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout)),
                          "fault": Out(1), "error": Out(8), "channel": Out(6)})

    def elaborate(self, platform):
        m = Module()
        ld = self.unit == "ld"
        p = Signal.like(self.o.p)
        f = p.fields
        busy, step, send, faulted = Signal(), Signal(2), Signal(), Signal()
        m.d.sync += faulted.eq(0)
        m.d.comb += self.fault.eq(faulted)
        m.d.comb += [self.o.p.eq(p), self.o.valid.eq(send), self.i.ready.eq(~busy)]
        seg = Signal(48)          # length * n0
        outer = Signal(24)        # n1 * n2
        e0, e1, e2 = Signal(48), Signal(48), Signal(40)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [p.eq(self.i.p), busy.eq(1), step.eq(1), self.channel.eq(self.i.p.fields.channel)]
        with m.If(step == 1):
            m.d.sync += [seg.eq(f.length * f.n0), e0.eq((f.n0 - 1) * f.hbm_stride0), step.eq(2)]
            if ld:
                m.d.sync += [outer.eq(f.n1 * f.n2), e1.eq((f.n1 - 1) * f.hbm_stride1),
                             e2.eq((f.n2 - 1) * f.hbm_stride2)]
            else:
                m.d.sync += [outer.eq(1), e1.eq(0), e2.eq(0)]
        with m.If(step == 2):
            buf = f.target if ld else f.source
            size = Array(Const(s, 32) for s in self.sizes)[buf]
            total = Signal(80)
            last = Signal(52)
            m.d.comb += [total.eq(f.buf_addr + seg * outer), last.eq(f.hbm_addr + e0 + e1 + e2 + f.length)]
            memory_side = ~f.zero_fill if ld else Const(1)
            code = Signal(8)
            with m.If(total > size):
                m.d.comb += code.eq(UnitError.BUFFER_RANGE)
            with m.Elif(memory_side & (f.channel >= self.channels)):
                m.d.comb += code.eq(UnitError.CHANNEL)
            with m.Elif(memory_side & (last > self.channel_bytes)):
                m.d.comb += code.eq(UnitError.HBM_RANGE)
            m.d.sync += [self.error.eq(code), step.eq(0)]
            with m.If(code != 0):  # the fault pulse follows, with the code already in ``error``
                m.d.sync += [faulted.eq(1), busy.eq(0)]
            with m.Else():
                m.d.sync += send.eq(1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [send.eq(0), busy.eq(0)]
        return m


class _Buffer:
    """A buffer built of banks (lib.memory, one write and one read port each), with the core's
    arbitration of several requesters per port kind. Used inside OlivineCore.elaborate only."""

    def __init__(self, m: Module, name: str, nbytes: int, word_bytes: int, banks: int, primitive: str):
        if nbytes % (word_bytes * banks):
            raise ValueError(f"buffer {name}: {nbytes} B is not a whole number of {banks} banks of "
                             f"{word_bytes}-byte words")
        self.name, self.word_bytes, self.banks = name, word_bytes, banks
        self.bank_bits = _log2(banks)
        self.depth = nbytes // (word_bytes * banks)
        self.rd, self.wr = [], []
        for b in range(banks):
            mem = memory.Memory(shape=8 * word_bytes, depth=self.depth, init=[],
                                attrs={"ram_style": RAM_STYLES[primitive]})
            m.submodules[f"{name}{b}"] = mem
            self.wr.append(mem.write_port(granularity=8))
            self.rd.append(mem.read_port())
        self.readers, self.writers = [], []   # (unit, addr, en, ...) per requester

    def bank_row(self, addr, unit_bytes: int):
        """(bank, row, lane) of a unit address in words of ``unit_bytes``."""
        rb = _log2(self.word_bytes // unit_bytes)
        word = addr >> rb
        lane = addr[:rb] if rb else Const(0, 1)
        bank = word[:self.bank_bits] if self.bank_bits else Const(0, 1)
        return bank, word >> self.bank_bits, lane


class OlivineCore(wiring.Component):
    """See the module docstring for the structure, ports, latency, throughput and arbitration.

    Parameters: ``config`` (AcceleratorConfig), ``mpe`` (matrix engine component or a callable
    ``mpe(config)``; None: MM/MV fault), ``sfu_ops`` (the SFU's ops, default all; a subset keeps
    simulation models small), ``rope`` (the SFU's RoPE cos/sin ROM, a hw.sfu_rope.RopeRom; None: no
    rope op), ``hbm_channel_bytes`` (bytes per channel for the LD/ST range checks;
    default the board's), ``data_banks`` (banks of the data space), ``queue_depth`` /
    ``token_bits`` (controller), ``max_outstanding`` (bursts in flight per AXI master).
    """

    def __init__(self, config: AcceleratorConfig, mpe=None, *, sfu_ops: tuple[str, ...] | None = None,
                 rope=None, hbm_channel_bytes: int | None = None, data_banks: int = 2, queue_depth: int = 8,
                 token_bits: int = 8, max_outstanding: int = 4):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
        self.config = config
        self.data_width = config.axi_data_width
        self.beat_bytes = self.data_width // 8
        self.channels = config.hbm_channels
        self.channel_bytes = hbm_channel_bytes or config.board_facts.memory.channel_bytes
        if not 0 < self.channel_bytes <= 1 << 48:
            raise ValueError(f"hbm_channel_bytes={self.channel_bytes}: give a positive size up to 2**48")
        self.data_banks = data_banks
        self.queue_depth, self.token_bits, self.max_outstanding = queue_depth, token_bits, max_outstanding
        if mpe is not None and not isinstance(mpe, wiring.Component) and callable(mpe):
            mpe = mpe(config)
        self.mpe = mpe
        self.sfu = Sfu(config, ops=sfu_ops, rope=rope)
        # the banks as built (word = the widest port on the buffer, so after the SFU and the engine)
        # and their fit on the board's cores; the buffers' sizes (LD / ST range checks) are the plan's
        self.plan = bank_plan(config.buffers, data_banks, self._word_bytes())
        engine_memories = getattr(self.mpe, "memory_primitives", None)
        self.buffer_primitives = check_fit(self.plan, config.board_facts, config.cores,
                                           engine_memories() if engine_memories else None)
        # and the logic: LUT / FF estimated from Yosys measurements (hw/fit.py) within the board's cap
        self.logic_estimate = check_logic(config, engine=engine_memories is not None)
        self._geometry = plan_geometry(self.plan)
        self.buffer_bytes = {name: g[0] for name, g in self._geometry.items()}
        members = {"s_axi_control": In(axi4_lite_signature(core_regs.ADDRESS_BITS, 32)), "interrupt": Out(1)}
        for k in range(self.channels):
            members[f"m_axi_hbm{k}"] = Out(axi4_signature(64, self.data_width, 1))
        super().__init__(members)

    # ---- helpers -------------------------------------------------------------------------------
    def _target_sizes(self) -> tuple[int, ...]:
        """Byte size of each hw.isa.TARGET_BUFFERS entry (act / global / kv: the data space)."""
        bb = self.buffer_bytes
        return tuple(bb[t] if t in bb else bb["data"] for t in isa.TARGET_BUFFERS)

    def buffer_geometry(self) -> dict[str, tuple[int, int, int, str]]:
        """name -> (bytes, word bytes, banks, primitive) of the core's buffers: a word is as wide
        as the widest unit port on the buffer (the AXI beat, the SFU's, the engine's); the primitive
        is hw/buffers.py's choice for the bank's depth x width."""
        return dict(self._geometry)

    def _word_bytes(self) -> dict[str, int]:
        bb = self.beat_bytes
        widths = {"weight": [bb], "meta": [bb], "bias": [bb], "data": [bb, len(self.sfu.rd.data) // 8]}
        if self.mpe is not None:
            for port, buf in _MPE_BUFFER_PORTS.items():
                widths[buf].append(len(getattr(self.mpe, port).data) // 8)
        return {name: max(w) for name, w in widths.items()}

    def elaborate(self, platform):
        m = Module()
        cfg, nu, C = self.config, len(UNIT_NAMES), self.channels
        LD, ST, MPE, SFU = (UNIT_NAMES.index(u) for u in ("ld", "st", "mpe", "sfu"))
        bb = self.beat_bytes
        ob = DEFAULT_OFFSET_BITS

        ctrl = Controller(data_width=self.data_width, addr_width=64, id_width=1, offset_bits=ob,
                          max_outstanding=self.max_outstanding, queue_depth=self.queue_depth,
                          token_bits=self.token_bits, max_burst=FETCH_BURST)
        m.submodules.controller = ctrl
        largest = max(self.buffer_bytes.values())
        engine_bytes = -(-largest // bb) * bb
        ld = LoadEngine(data_width=self.data_width, max_outstanding=self.max_outstanding,
                        buffer_bytes=engine_bytes, offset_bits=ob)
        st = StoreEngine(data_width=self.data_width, max_outstanding=self.max_outstanding,
                         buffer_bytes=engine_bytes, offset_bits=ob)
        sizes = self._target_sizes()
        ld_guard = TransferGuard("ld", sizes=sizes, channels=C, channel_bytes=self.channel_bytes, offset_bits=ob)
        st_guard = TransferGuard("st", sizes=sizes, channels=C, channel_bytes=self.channel_bytes, offset_bits=ob)
        m.submodules.ld, m.submodules.st = ld, st
        m.submodules.ld_guard, m.submodules.st_guard = ld_guard, st_guard
        wiring.connect(m, ctrl.ld, ld_guard.i)
        wiring.connect(m, ld_guard.o, ld.inst)
        wiring.connect(m, ctrl.st, st_guard.i)
        wiring.connect(m, st_guard.o, st.inst)

        en = {u: Signal(name=f"{u}_en", init=1) for u in ("sfu", "mpe")}
        sfu = self.sfu
        m.submodules.sfu = EnableInserter(en["sfu"])(sfu)
        mpe = self.mpe
        if mpe is not None:
            m.submodules.mpe = EnableInserter(en["mpe"])(mpe)
            if "enable" in mpe.signature.members:  # hw/mpe.py: the chains' backpressure freeze (DSP primitives)
                m.d.comb += mpe.enable.eq(en["mpe"])

        # ---- unit control: done / fault / error ----------------------------------------------------
        done = [Signal(name=f"{u}_done") for u in UNIT_NAMES]
        fault = [Signal(name=f"{u}_fault") for u in UNIT_NAMES]
        error = [Signal(8, name=f"{u}_error") for u in UNIT_NAMES]
        for u, (guard, eng) in ((LD, (ld_guard, ld)), (ST, (st_guard, st))):
            m.d.comb += [done[u].eq(eng.done), fault[u].eq(guard.fault | eng.fault),
                         error[u].eq(Mux(guard.fault, guard.error, UnitError.BUS))]
        # SFU: the controller's MISC payload -> the SFU's instruction record; handshake and pulses gated
        sp = ctrl.sfu.p
        sfu_in = sfu.instr.p
        m.d.comb += [sfu_in.offset.eq(sp.offset)]
        for name in ("op", "mask", "src0", "src1", "dst", "rows", "cols", "imm"):
            m.d.comb += getattr(sfu_in, name).eq(getattr(sp.fields, name))
        m.d.comb += [sfu.instr.valid.eq(ctrl.sfu.valid), ctrl.sfu.ready.eq(sfu.instr.ready & en["sfu"]),
                     done[SFU].eq(sfu.status.done & ~sfu.status.error & en["sfu"]),
                     fault[SFU].eq(sfu.status.done & sfu.status.error & en["sfu"]),
                     error[SFU].eq(sfu.status.code)]
        if mpe is not None:
            m.d.comb += [mpe.inst.p.eq(ctrl.mpe.p), mpe.inst.valid.eq(ctrl.mpe.valid),
                         ctrl.mpe.ready.eq(mpe.inst.ready & en["mpe"]),
                         done[MPE].eq(mpe.done & en["mpe"]), fault[MPE].eq(mpe.fault & en["mpe"]),
                         error[MPE].eq(mpe.error)]
        else:  # the empty slot: accept, fault the next cycle
            absent = Signal()
            m.d.comb += [ctrl.mpe.ready.eq(~absent), fault[MPE].eq(absent), error[MPE].eq(MPE_NOT_BUILT)]
            m.d.sync += absent.eq(ctrl.mpe.valid & ~absent)
        for u, name in enumerate(UNIT_NAMES):
            m.d.comb += [getattr(ctrl, f"{name}_done").eq(done[u]), getattr(ctrl, f"{name}_fault").eq(fault[u])]

        # ---- buffers and their arbitration ----------------------------------------------------------
        sfu_bytes = len(sfu.rd.data) // 8
        mpe_ports = {} if mpe is None else {port: getattr(mpe, port) for port in _MPE_BUFFER_PORTS}
        buffers = {name: _Buffer(m, name, nbytes, word, banks, primitive)
                   for name, (nbytes, word, banks, primitive) in self.buffer_geometry().items()}
        # requests: (buffer, kind, unit (None: LD/ST, never frozen), addr, unit_bytes, en, data, sink)
        requests = []
        target_of = {t: ("data" if t in ("act", "global", "kv") else t) for t in isa.TARGET_BUFFERS}
        for t, buf in target_of.items():
            hit = ld.buf.target == isa.TARGET_BUFFERS.index(t)
            requests.append(dict(buf=buf, kind="w", unit=None, addr=ld.buf.addr, bytes=bb,
                                 en=Mux(hit, ld.buf.en, 0), data=ld.buf.data, tag=f"ld_{t}"))
        st_data = {}
        for t, buf in target_of.items():
            if buf in st_data:
                continue
            hit = Cat(*(st.buf.source == isa.TARGET_BUFFERS.index(x) for x, b2 in target_of.items() if b2 == buf)).any()
            sink = Signal(self.data_width, name=f"st_{buf}_data")
            st_data[buf] = (hit, sink)
            requests.append(dict(buf=buf, kind="r", unit=None, addr=st.buf.addr, bytes=bb, en=st.buf.en & hit,
                                 sink=sink, tag=f"st_{buf}"))
        st_hit_reg = Signal(len(st_data))
        m.d.sync += st_hit_reg.eq(Cat(*(h for h, _ in st_data.values())))
        m.d.comb += st.buf.data.eq(0)
        for i, (_, sink) in enumerate(st_data.values()):
            with m.If(st_hit_reg[i]):
                m.d.comb += st.buf.data.eq(sink)
        requests.append(dict(buf="data", kind="r", unit="sfu", addr=sfu.rd.addr, bytes=sfu_bytes, en=sfu.rd.en,
                             sink=sfu.rd.data, tag="sfu_rd"))
        requests.append(dict(buf="data", kind="w", unit="sfu", addr=sfu.wr.addr, bytes=sfu_bytes, en=sfu.wr.en,
                             data=sfu.wr.data, tag="sfu_wr"))
        for port, p in mpe_ports.items():
            buf = _MPE_BUFFER_PORTS[port]
            wbytes = len(p.data) // 8
            if port == "act_wr":
                requests.append(dict(buf=buf, kind="w", unit="mpe", addr=p.addr, bytes=wbytes, en=p.en, data=p.data,
                                     tag=f"mpe_{port}"))
            else:
                requests.append(dict(buf=buf, kind="r", unit="mpe", addr=p.addr, bytes=wbytes, en=p.en, sink=p.data,
                                     tag=f"mpe_{port}"))
        for r in requests:
            bank, row, lane = buffers[r["buf"]].bank_row(r["addr"], r["bytes"])
            r["bank"], r["row"], r["lane"] = bank, row, lane
            r["want"] = Signal(name=f"{r['tag']}_want")
            m.d.comb += r["want"].eq(r["en"].any())

        def same_bank(a, b):
            return a["want"] & b["want"] & (a["bank"] == b["bank"])

        # conflicts: against LD/ST (always lose), and between the SFU and the engine (round robin);
        # on the weight, meta and bias read ports the engine wins over an ST, whose read waits (its
        # words go to a queue, not straight to the bus), so only LD / ST in the data space freeze it
        lost = {u: [] for u in en}
        refused = {id(r): [] for r in requests}
        mutual = []
        for i, a in enumerate(requests):
            for b in requests[i + 1:]:
                if a["buf"] != b["buf"] or a["kind"] != b["kind"] or a["unit"] == b["unit"]:
                    continue
                if a["unit"] is None and b["unit"] is None:
                    continue  # LD's per-target writes / ST's per-buffer reads: one at a time
                if a["unit"] is None or b["unit"] is None:
                    ldst, unit = (a, b) if a["unit"] is None else (b, a)
                    if ldst["kind"] == "r" and ldst["buf"] in ("weight", "meta", "bias"):
                        refused[id(ldst)].append(same_bank(a, b))
                    else:
                        lost[unit["unit"]].append(same_bank(a, b))
                else:
                    mutual.append(same_bank(a, b))
        st_busy = []
        for r in requests:
            r["granted"] = r["want"]
            if refused[id(r)]:
                r["granted"] = Signal(name=f"{r['tag']}_granted")
                m.d.comb += r["granted"].eq(r["want"] & ~Cat(*refused[id(r)]).any())
                st_busy.append(r["want"] & ~r["granted"])
        m.d.comb += st.buf.busy.eq(Cat(*st_busy).any() if st_busy else 0)
        prio_mpe = Signal()  # who wins the next SFU / engine conflict
        conflict = Signal()
        m.d.comb += conflict.eq(Cat(*mutual).any() if mutual else 0)
        with m.If(conflict):
            m.d.sync += prio_mpe.eq(~prio_mpe)
        frozen_by_ldst = {u: Signal(name=f"{u}_lost") for u in en}
        for u in en:
            m.d.comb += frozen_by_ldst[u].eq(Cat(*lost[u]).any() if lost[u] else 0)
        m.d.comb += [en["sfu"].eq(~frozen_by_ldst["sfu"] & ~(conflict & prio_mpe)),
                     en["mpe"].eq(~frozen_by_ldst["mpe"] & ~(conflict & ~prio_mpe))]

        # perform the granted requests on the banks; read data: fresh the cycle after, else held
        for name, buf in buffers.items():
            for bank in range(buf.banks):
                wport, rport = buf.wr[bank], buf.rd[bank]
                for r in requests:
                    if r["buf"] != name:
                        continue
                    granted = r["granted"] & (r["bank"] == bank)
                    if r["unit"] is not None:
                        granted = granted & en[r["unit"]]
                    ratio = buf.word_bytes // r["bytes"]
                    if r["kind"] == "w":
                        with m.If(granted):
                            wide_en = Cat(*(Mux(r["lane"] == j, r["en"], 0) for j in range(ratio)))
                            m.d.comb += [wport.addr.eq(r["row"]), wport.data.eq(Cat(*([r["data"]] * ratio))),
                                         wport.en.eq(wide_en)]
                    else:
                        with m.If(granted):
                            m.d.comb += [rport.addr.eq(r["row"]), rport.en.eq(1)]
        for r in requests:
            if r["kind"] != "r":
                continue
            buf = buffers[r["buf"]]
            granted = r["granted"] if r["unit"] is None else r["want"] & en[r["unit"]]
            pending = Signal(name=f"{r['tag']}_pending")
            bank_q = Signal(max(buf.bank_bits, 1), name=f"{r['tag']}_bank")
            lane_q = Signal(len(r["lane"]), name=f"{r['tag']}_slice")
            hold = Signal(8 * r["bytes"], name=f"{r['tag']}_hold")
            m.d.sync += pending.eq(granted)
            with m.If(granted):
                m.d.sync += [bank_q.eq(r["bank"]), lane_q.eq(r["lane"])]
            words = Signal(8 * buf.word_bytes, name=f"{r['tag']}_word")
            m.d.comb += words.eq(Array(p.data for p in buf.rd)[bank_q] if buf.banks > 1 else buf.rd[0].data)
            fresh = (shift_right(m, words, lane_q, step=8 * r["bytes"], width=8 * r["bytes"], name=f"{r['tag']}_slice")
                     if buf.word_bytes > r["bytes"] else words)
            m.d.comb += r["sink"].eq(Mux(pending, fresh, hold))
            with m.If(pending):
                m.d.sync += hold.eq(fresh)

        # ---- AXI channel routing ---------------------------------------------------------------------
        prog_channel = Signal(range(max(C, 2)))
        ports = [getattr(self, f"m_axi_hbm{k}") for k in range(C)]
        fetch, ldx, stx = ctrl.fetch, ld.axi, st.axi
        ld_ch, st_ch = ld_guard.channel, st_guard.channel
        read_fields = ("araddr", "arlen", "arsize", "arburst", "arlock", "arcache", "arprot", "arqos")
        write_fields = ("awaddr", "awlen", "awsize", "awburst", "awlock", "awcache", "awprot", "awqos",
                        "wdata", "wstrb", "wlast")
        # the fetch's R beats go through a buffer with credits (FETCH_BUFFER): always accepted
        m.submodules.fetch_buffer = fbuf = fifo.SyncFIFO(width=self.data_width + 3, depth=FETCH_BUFFER)
        credit = Signal(range(FETCH_BUFFER + 1))      # beats requested and not yet read out
        f_ar = fetch.arvalid & fetch.arready
        f_take = fbuf.r_rdy & fetch.rready
        m.d.sync += credit.eq(credit + Mux(f_ar, fetch.arlen + 1, 0) - f_take)
        fits = credit + fetch.arlen + 1 <= FETCH_BUFFER
        m.d.comb += [fetch.rvalid.eq(fbuf.r_rdy), fetch.rdata.eq(fbuf.r_data[:self.data_width]),
                     fetch.rresp.eq(fbuf.r_data[self.data_width:self.data_width + 2]),
                     fetch.rlast.eq(fbuf.r_data[-1]), fbuf.r_en.eq(fetch.rready)]
        for k, port in enumerate(ports):
            want_f = fetch.arvalid & fits & (prog_channel == k)
            want_l = ldx.arvalid & (ld_ch == k)
            locked, owner = Signal(name=f"ar{k}_locked"), Signal(name=f"ar{k}_owner")
            grant = Signal(name=f"ar{k}_grant")  # 0 fetch, 1 LD
            m.d.comb += grant.eq(Mux(locked, owner, ~want_f))
            with m.If(grant):
                m.d.comb += [getattr(port, f).eq(getattr(ldx, f)) for f in read_fields]
            with m.Else():
                m.d.comb += [getattr(port, f).eq(getattr(fetch, f)) for f in read_fields]
            m.d.comb += [port.arid.eq(grant), port.arvalid.eq(Mux(grant, want_l, want_f))]
            with m.If(port.arvalid & ~port.arready):
                m.d.sync += [locked.eq(1), owner.eq(grant)]
            with m.Elif(port.arvalid):
                m.d.sync += locked.eq(0)
            with m.If(want_f & ~grant):
                m.d.comb += fetch.arready.eq(port.arready)
            with m.If(want_l & grant):
                m.d.comb += ldx.arready.eq(port.arready)
            r_to_f = port.rvalid & (port.rid == 0) & (prog_channel == k)
            r_to_l = port.rvalid & (port.rid == 1) & (ld_ch == k)
            m.d.comb += port.rready.eq(Mux(port.rid == 0, (prog_channel == k), ldx.rready & (ld_ch == k)))
            with m.If(r_to_f):
                m.d.comb += [fbuf.w_en.eq(1), fbuf.w_data.eq(Cat(port.rdata, port.rresp, port.rlast))]
            with m.If(r_to_l):
                m.d.comb += [ldx.rvalid.eq(1), ldx.rdata.eq(port.rdata), ldx.rresp.eq(port.rresp),
                             ldx.rlast.eq(port.rlast)]
            # write side: the ST engine alone
            sel = st_ch == k
            m.d.comb += [getattr(port, f).eq(getattr(stx, f)) for f in write_fields]
            m.d.comb += [port.awid.eq(0), port.awvalid.eq(stx.awvalid & sel), port.wvalid.eq(stx.wvalid & sel),
                         port.bready.eq(stx.bready & sel)]
            with m.If(sel):
                m.d.comb += [stx.awready.eq(port.awready), stx.wready.eq(port.wready), stx.bvalid.eq(port.bvalid),
                             stx.bresp.eq(port.bresp)]

        # ---- register block (s_axi_control) ----------------------------------------------------------
        self._registers(m, ctrl, ld, st, ports, prog_channel, en, fault, error)
        return m

    def _registers(self, m, ctrl, ld, st, ports, prog_channel, en, fault, error):
        s = self.s_axi_control
        nu, C = len(UNIT_NAMES), self.channels
        status = ctrl.status
        state = status.state
        running = state == STATES.index("running")
        terminal = (state == STATES.index("done")) | (state == STATES.index("error"))

        ap_start, ap_done = Signal(), Signal()
        gie, ier, isr = Signal(), Signal(2), Signal(2)
        prog_addr = Signal(64)
        prog_words, prog_ch_reg, watchdog = Signal(32), Signal(32), Signal(32)
        unit_error = Signal(16)
        cycles = Signal(64)
        counters = [[Signal(32, name=f"{u}_{c}") for c in core_regs.UNIT_COUNTERS] for u in UNIT_NAMES]
        hbm = [[Signal(32, name=f"hbm{k}_{c}") for c in core_regs.HBM_COUNTERS] for k in range(C)]

        accept = Signal()
        # a prog_channel beyond the channels is refused (state error, cause prog_channel), not
        # truncated to the channel its low bits name
        m.d.comb += [accept.eq(ap_start & ~running & ~ctrl.busy), ctrl.start.eq(accept),
                     ctrl.prog_error.eq(prog_ch_reg >= C),
                     ctrl.prog_addr.eq(prog_addr), ctrl.prog_words.eq(prog_words),
                     ctrl.watchdog_limit.eq(watchdog)]
        idle = ~ap_start & ~running & ~ctrl.busy
        ended = Signal()   # ap_done raised for this run already
        finish = terminal & ~ended & (~ctrl.busy | (status.cause == STATUS_CAUSES.index("watchdog")))
        strobes = [popcount(m, port.wstrb, name=f"hbm{k}_wstrb_ones") for k, port in enumerate(ports)]
        with m.If(accept):
            m.d.sync += [ap_start.eq(0), ended.eq(0), unit_error.eq(0), cycles.eq(0),
                         prog_channel.eq(prog_ch_reg)]
            m.d.sync += [c.eq(0) for row in counters + hbm for c in row]
        with m.Else():
            with m.If(running):
                m.d.sync += cycles.eq(cycles + 1)
            # per-unit counters (saturating)
            stall_memory = [ld.axi.rready & ~ld.axi.rvalid,
                            (st.axi.wvalid & ~st.axi.wready) | (st.axi.awvalid & ~st.axi.awready),
                            ~en["mpe"], ~en["sfu"]]
            for u in range(nu):
                busy_u = ctrl.unit_busy[u]
                events = (busy_u, ctrl.unit_waiting[u], busy_u & stall_memory[u],
                          getattr(ctrl, f"{UNIT_NAMES[u]}_done"))
                for c, ev in zip(counters[u], events):
                    with m.If(ev & ~c.all()):
                        m.d.sync += c.eq(c + 1)
            for k, port in enumerate(ports):
                with m.If(port.rvalid & port.rready):
                    m.d.sync += hbm[k][0].eq(hbm[k][0] + self.beat_bytes)
                with m.If(port.wvalid & port.wready):
                    m.d.sync += hbm[k][1].eq(hbm[k][1] + strobes[k])
        # the first fault of a run names its unit and code
        with m.If(running & (unit_error == 0)):
            for u in reversed(range(nu)):
                with m.If(fault[u]):
                    m.d.sync += unit_error.eq(Cat(Const(u, 4), Const(1, 4), error[u]))

        # ---- AXI4-Lite read ----
        values = {
            "ctrl": Cat(ap_start, ap_done, idle, idle), "gie": gie, "ier": ier, "isr": isr,
            "prog_addr_lo": prog_addr[:32], "prog_addr_hi": prog_addr[32:], "prog_words": prog_words,
            "prog_channel": prog_ch_reg, "watchdog": watchdog, "state": state, "cause": status.cause,
            "field": status.field, "offset": status.offset,
            # bits [3:0] the unit, [15:8] its code (bit 4 marks "recorded" internally and reads as 0)
            "unit_error": Cat(unit_error[:4], Const(0, 4), unit_error[8:]),
            "cycles_lo": cycles[:32], "cycles_hi": cycles[32:],
            "magic": Const(core_regs.MAGIC, 32), "version": Const(1, 32),
            "config_digest": Const(int(self.config.digest(), 16) & 0xFFFFFFFF, 32),
        }
        for u in range(nu):
            values[f"stuck_{UNIT_NAMES[u]}"] = Cat(status.stuck[u].offset, Const(0, 31 - len(status.stuck[u].offset)),
                                                   status.stuck[u].valid)
        table = {core_regs.offset(name): value for name, value in values.items()}
        for u in range(nu):
            for c, name in enumerate(core_regs.UNIT_COUNTERS):
                table[core_regs.unit_offset(u, name)] = counters[u][c]
        for k in range(C):
            for c, name in enumerate(core_regs.HBM_COUNTERS):
                table[core_regs.hbm_offset(k, name)] = hbm[k][c]
        rdata = Signal(32)
        m.d.comb += [s.arready.eq(~s.rvalid), s.rdata.eq(rdata), s.rresp.eq(RESP_OKAY), s.bresp.eq(RESP_OKAY)]
        ar_go = s.arvalid & s.arready
        word = s.araddr[2:core_regs.ADDRESS_BITS]
        with m.If(ar_go):
            m.d.sync += [s.rvalid.eq(1), rdata.eq(0)]
            with m.Switch(word):
                for off, value in sorted(table.items()):
                    with m.Case(off >> 2):
                        m.d.sync += rdata.eq(value)
        with m.Elif(s.rvalid & s.rready):
            m.d.sync += s.rvalid.eq(0)
        read_ctrl = ar_go & (word == 0)

        # ---- AXI4-Lite write ----
        aw_have, w_have = Signal(), Signal()
        aw_word = Signal(core_regs.ADDRESS_BITS - 2)
        w_data, w_strb = Signal(32), Signal(4)
        m.d.comb += [s.awready.eq(~aw_have), s.wready.eq(~w_have)]
        with m.If(s.awvalid & s.awready):
            m.d.sync += [aw_have.eq(1), aw_word.eq(s.awaddr[2:core_regs.ADDRESS_BITS])]
        with m.If(s.wvalid & s.wready):
            m.d.sync += [w_have.eq(1), w_data.eq(s.wdata), w_strb.eq(s.wstrb)]
        with m.If(s.bvalid & s.bready):
            m.d.sync += s.bvalid.eq(0)
        do_write = aw_have & w_have & ~s.bvalid

        def strobed(reg, lo=0):
            bits = Cat(*(Mux(w_strb[(lo + i) // 8], w_data[(lo + i) % 32], reg[i]) for i in range(len(reg))))
            return reg.eq(bits)

        set_done = Signal()
        m.d.comb += set_done.eq(finish)
        with m.If(finish):
            m.d.sync += ended.eq(1)
        with m.If(do_write):
            m.d.sync += [aw_have.eq(0), w_have.eq(0), s.bvalid.eq(1)]
            with m.Switch(aw_word):
                with m.Case(core_regs.offset("ctrl") >> 2):
                    with m.If(w_strb[0] & w_data[0]):
                        m.d.sync += ap_start.eq(1)
                with m.Case(core_regs.offset("gie") >> 2):
                    m.d.sync += strobed(gie)
                with m.Case(core_regs.offset("ier") >> 2):
                    m.d.sync += strobed(ier)
                with m.Case(core_regs.offset("prog_addr_lo") >> 2):
                    m.d.sync += strobed(prog_addr[:32])
                with m.Case(core_regs.offset("prog_addr_hi") >> 2):
                    m.d.sync += strobed(prog_addr[32:])
                with m.Case(core_regs.offset("prog_words") >> 2):
                    m.d.sync += strobed(prog_words)
                with m.Case(core_regs.offset("prog_channel") >> 2):
                    m.d.sync += strobed(prog_ch_reg)
                with m.Case(core_regs.offset("watchdog") >> 2):
                    m.d.sync += strobed(watchdog)
        # ISR (write 1 to clear) and ap_done (clear on read); a new done event wins over both
        isr_clear = Signal(2)
        m.d.comb += isr_clear.eq(Mux(do_write & (aw_word == core_regs.offset("isr") >> 2) & w_strb[0], w_data[:2], 0))
        m.d.sync += isr.eq((isr & ~isr_clear) | Cat(set_done, Const(0, 1)))
        with m.If(set_done):
            m.d.sync += ap_done.eq(1)
        with m.Elif(read_ctrl):
            m.d.sync += ap_done.eq(0)
        m.d.comb += self.interrupt.eq(gie & (ier[0] & isr[0]))


def core_ports(core: OlivineCore) -> list[dict]:
    """The top's ports as Verilog names, directions and widths (for the manifest and harnesses)."""
    out = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for path, member, value in core.signature.flatten(core):
        name = "__".join(str(p) for p in path)
        out.append({"name": name, "dir": "out" if member.flow == wiring.Flow.Out else "in", "width": len(value)})
    return out


@register_unit("transfer_guard")
def _guard_unit(unit: str = "ld", config: str = "small"):
    """The LD / ST range check in front of its engine, with the buffer sizes of ``config``."""
    from .config import load_config

    core = OlivineCore(load_config(str(config)), sfu_ops=("add",))
    return TransferGuard(str(unit), sizes=core._target_sizes(), channels=core.channels,
                         channel_bytes=core.channel_bytes), f"olivine_{unit}_guard"


@register_unit("core")
def _core_unit(config: str = "small", sfu_ops: str = "", axi_data_width: int = 0, mpe: int = 1):
    """The whole accelerator core (hw.hdl.core_for: controller, LD/ST, matrix engine with DSP48E2
    primitives, SFU, buffers, AXI).

    ``config``: a named configuration (small, default) or a JSON file; ``sfu_ops``: a comma
    list to build a smaller SFU; ``axi_data_width``: override the HBM data width (bits);
    ``mpe``: 0 leaves the engine out."""
    from .config import load_config
    from .hdl import core_for

    cfg = load_config(str(config))
    if int(axi_data_width):
        cfg = cfg.replace(axi_data_width=int(axi_data_width))
    ops = tuple(o for o in str(sfu_ops).split(",") if o) or None
    core = core_for(cfg, sfu_ops=ops, mpe=None if int(mpe) else False, primitive=True)
    tag = ("_".join(ops) if ops else "all") + ("" if core.mpe is not None else "_nompe")
    return core, f"olivine_core_{config}_{cfg.axi_data_width}b_{tag}".replace("/", "_").replace(".", "_")
