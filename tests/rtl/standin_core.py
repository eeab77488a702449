"""A stand-in for the core's top, for testing the simulation harnesses only (not hardware).

``StandInCore`` has the port naming of ``olivine_core`` (CORE_INTERFACE.md section 4): an AXI4-Lite
slave ``s_axi_control`` with part of the register map of hw/core_regs.py (ctrl with ap_ctrl_hs,
gie, ier, isr, prog_addr_lo/hi, prog_words, prog_channel, watchdog, state, cycles_lo/hi, the
per-channel HBM byte counters, magic), ``interrupt``, and AXI4 masters ``m_axi_hbm0`` ..
``m_axi_hbm{C-1}``. Instead of running a program it copies one: on ap_start it DMA-copies
``ceil(prog_words * 4 / beat_bytes)`` beats from channel ``prog_channel`` at ``prog_addr`` to the
same address of channel ``(prog_channel + 1) % C`` (W beats with WSTRB = ~ the stand-in-only
register at ``STROBE_MASK_OFFSET``, default all bytes), then sets ap_done (state 2 "done", or 3
"error" when an RRESP/BRESP was not OKAY). ``prog_words = 0`` never finishes (state stays 1): the
hung run the cycle-budget test needs. ``prog_addr`` must be beat aligned.

Timing, so tests can predict cycle counts from the HBM model's parameters: strictly serial
phases per burst of n beats (n = min(beats left, ``max_burst``, beats to the next 4 KiB
boundary)): AR (one cycle when arready), R (rready held high; n beats into ``buffer``), AW, W (n
beats, wvalid held high), B. Nothing overlaps, so the copy's cycles grow by exactly
``bursts * (L2 - L1)`` when the read latency goes from L1 to L2.

Ports: as above; ``clk``/``rst`` Amaranth's defaults. Latency: none promised beyond the serial
phases. Throughput: at most one beat per cycle per phase.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from olivine.hw import core_regs
from olivine.hw.axi import BOUNDARY_BYTES, axi4_lite_signature, axi4_signature, check_data_width

__all__ = ["StandInCore", "STANDIN_TOP", "STROBE_MASK_OFFSET"]

STANDIN_TOP = "olivine_core"  # same Verilog top name as the real core
#: Stand-in only (a free offset of hw/core_regs.py): byte lanes NOT written by the copy's W beats
#: (WSTRB = ~mask), for testing the HBM model's WSTRB.
STROBE_MASK_OFFSET = 0x24


class StandInCore(wiring.Component):
    def __init__(self, channels: int = 2, data_width: int = 64, id_width: int = 1, max_burst: int = 16):
        self.channels, self.beat_bytes = channels, check_data_width(data_width)
        self.max_burst = max_burst
        members = {"s_axi_control": In(axi4_lite_signature(core_regs.ADDRESS_BITS)), "interrupt": Out(1)}
        for k in range(channels):
            members[f"m_axi_hbm{k}"] = Out(axi4_signature(64, data_width, id_width))
        super().__init__(wiring.Signature(members))

    def elaborate(self, platform):
        m = Module()
        C, D = self.channels, self.beat_bytes
        ctl = self.s_axi_control
        hbm = [getattr(self, f"m_axi_hbm{k}") for k in range(C)]

        # ---- registers
        regs = {n: Signal(32, name=n) for n in ("gie", "ier", "prog_addr_lo", "prog_addr_hi",
                                                "prog_words", "prog_channel", "watchdog")}
        ap_start = Const(0)  # a start is accepted in the cycle it is written
        ap_done, isr = Signal(), Signal()
        strobe_mask = Signal(D)
        state = Signal(2)  # hw.controller.STATES: idle, running, done, error
        cycles = Signal(64)
        read_bytes = [Signal(32, name=f"read_bytes{k}") for k in range(C)]
        write_bytes = [Signal(32, name=f"write_bytes{k}") for k in range(C)]
        idle = Signal()
        m.d.comb += self.interrupt.eq(regs["gie"][0] & regs["ier"][0] & isr)

        # ---- AXI4-Lite writes: AW and W together, then B
        m.d.comb += [ctl.awready.eq(ctl.awvalid & ctl.wvalid & ~ctl.bvalid),
                     ctl.wready.eq(ctl.awready)]
        start_pulse = Signal()
        with m.If(ctl.bvalid & ctl.bready):
            m.d.sync += ctl.bvalid.eq(0)
        with m.If(ctl.awready):
            m.d.sync += ctl.bvalid.eq(1)
            with m.Switch(ctl.awaddr):
                with m.Case(core_regs.offset("ctrl")):
                    m.d.comb += start_pulse.eq(ctl.wdata[0] & idle)
                with m.Case(core_regs.offset("isr")):
                    with m.If(ctl.wdata[0]):
                        m.d.sync += isr.eq(0)
                for name, reg in regs.items():
                    with m.Case(core_regs.offset(name)):
                        m.d.sync += reg.eq(ctl.wdata)
                with m.Case(STROBE_MASK_OFFSET):
                    m.d.sync += strobe_mask.eq(ctl.wdata)

        # ---- AXI4-Lite reads: one at a time
        m.d.comb += ctl.arready.eq(~ctl.rvalid)
        with m.If(ctl.rvalid & ctl.rready):
            m.d.sync += ctl.rvalid.eq(0)
        with m.If(ctl.arvalid & ctl.arready):
            m.d.sync += [ctl.rvalid.eq(1), ctl.rdata.eq(0)]
            with m.Switch(ctl.araddr):
                with m.Case(core_regs.offset("ctrl")):
                    m.d.sync += [ctl.rdata.eq(Cat(ap_start, ap_done, idle, idle)), ap_done.eq(0)]
                with m.Case(core_regs.offset("isr")):
                    m.d.sync += ctl.rdata.eq(isr)
                with m.Case(core_regs.offset("state")):
                    m.d.sync += ctl.rdata.eq(state)
                with m.Case(core_regs.offset("cycles_lo")):
                    m.d.sync += ctl.rdata.eq(cycles[:32])
                with m.Case(core_regs.offset("cycles_hi")):
                    m.d.sync += ctl.rdata.eq(cycles[32:])
                with m.Case(core_regs.offset("magic")):
                    m.d.sync += ctl.rdata.eq(core_regs.MAGIC)
                for name, reg in regs.items():
                    with m.Case(core_regs.offset(name)):
                        m.d.sync += ctl.rdata.eq(reg)
                for k in range(C):
                    with m.Case(core_regs.hbm_offset(k, "read_bytes")):
                        m.d.sync += ctl.rdata.eq(read_bytes[k])
                    with m.Case(core_regs.hbm_offset(k, "write_bytes")):
                        m.d.sync += ctl.rdata.eq(write_bytes[k])

        # ---- the copy engine
        shift = D.bit_length() - 1
        src, dst = Signal(range(C)), Signal(range(C))
        addr = Signal(64)
        beats_left = Signal(32)
        burst = Signal(range(self.max_burst + 1))
        index = Signal(range(self.max_burst))
        failed = Signal()
        m.submodules.buffer = buffer = memory.Memory(shape=8 * D, depth=self.max_burst, init=[])
        buf_wr = buffer.write_port()
        buf_rd = buffer.read_port(domain="comb")
        to_boundary = (Const(BOUNDARY_BYTES, 13) - addr[:12]) >> shift
        next_burst = Mux(beats_left < self.max_burst, beats_left, self.max_burst)
        next_burst = Mux(to_boundary < next_burst, to_boundary, next_burst)

        ar_fire = Signal()
        r_fire = Signal()
        aw_fire = Signal()
        w_fire = Signal()
        b_fire = Signal()
        r_data, r_resp, r_last, b_resp = Signal(8 * D), Signal(2), Signal(), Signal(2)
        for k, port in enumerate(hbm):
            is_src, is_dst = src == k, dst == k
            m.d.comb += [port.araddr.eq(addr), port.arlen.eq(burst - 1), port.arsize.eq(shift),
                         port.arburst.eq(1), port.awaddr.eq(addr), port.awlen.eq(burst - 1),
                         port.awsize.eq(shift), port.awburst.eq(1), port.wdata.eq(buf_rd.data),
                         port.wstrb.eq(~strobe_mask), port.wlast.eq(index == burst - 1)]
            with m.If(is_src):
                m.d.comb += [ar_fire.eq(port.arvalid & port.arready), r_fire.eq(port.rvalid & port.rready),
                             r_data.eq(port.rdata), r_resp.eq(port.rresp), r_last.eq(port.rlast)]
            with m.If(is_dst):
                m.d.comb += [aw_fire.eq(port.awvalid & port.awready), w_fire.eq(port.wvalid & port.wready),
                             b_fire.eq(port.bvalid & port.bready), b_resp.eq(port.bresp)]
            with m.If(r_fire & is_src):
                m.d.sync += read_bytes[k].eq(read_bytes[k] + D)
            with m.If(w_fire & is_dst):
                m.d.sync += write_bytes[k].eq(write_bytes[k] + D)

        def drive(valid_name, owner):
            for k, port in enumerate(hbm):
                m.d.comb += getattr(port, valid_name).eq(owner == k)

        m.d.comb += [buf_wr.addr.eq(index), buf_wr.data.eq(r_data), buf_rd.addr.eq(index)]
        with m.If(state == 1):
            m.d.sync += cycles.eq(cycles + 1)
        with m.FSM(name="copy"):
            with m.State("IDLE"):
                m.d.comb += idle.eq(1)
                with m.If(start_pulse):
                    m.d.sync += [state.eq(1), cycles.eq(0), failed.eq(0),
                                 src.eq(regs["prog_channel"]),
                                 dst.eq(Mux(regs["prog_channel"] == C - 1, 0, regs["prog_channel"] + 1)),
                                 addr.eq(Cat(regs["prog_addr_lo"], regs["prog_addr_hi"])),
                                 beats_left.eq((regs["prog_words"] * 4 + D - 1) >> shift)]
                    with m.If(regs["prog_words"] == 0):
                        m.next = "HANG"
                    with m.Else():
                        m.next = "NEXT"
            with m.State("HANG"):
                pass
            with m.State("NEXT"):
                m.d.sync += [burst.eq(next_burst), index.eq(0)]
                m.next = "AR"
            with m.State("AR"):
                drive("arvalid", src)
                with m.If(ar_fire):
                    m.next = "R"
            with m.State("R"):
                drive("rready", src)
                with m.If(r_fire):
                    m.d.comb += buf_wr.en.eq(-1)
                    m.d.sync += index.eq(index + 1)
                    with m.If(r_resp != 0):
                        m.d.sync += failed.eq(1)
                    with m.If(r_last):
                        m.d.sync += index.eq(0)
                        m.next = "AW"
            with m.State("AW"):
                drive("awvalid", dst)
                with m.If(aw_fire):
                    m.next = "W"
            with m.State("W"):
                drive("wvalid", dst)
                with m.If(w_fire):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == burst - 1):
                        m.next = "B"
            with m.State("B"):
                drive("bready", dst)
                with m.If(b_fire):
                    m.d.sync += [addr.eq(addr + (burst << shift)), beats_left.eq(beats_left - burst)]
                    with m.If((b_resp != 0) | failed | (beats_left == burst)):
                        m.d.sync += [state.eq(Mux((b_resp != 0) | failed, 3, 2)), ap_done.eq(1), isr.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "NEXT"
        return m
