"""AXI4 master signatures and burst arithmetic shared by the program fetch and the LD/ST engines.

Signal names follow the AXI4 specification in lower case (``araddr``, ``rdata``, ...), so a port
member ``m_axi`` appears in Verilog as ``m_axi__araddr`` and cocotbext-axi binds it with
``AxiReadBus.from_prefix(dut, "m_axi_")``. As alveo-kernel.md requires: 64-bit addresses by
default, a 1-bit AxLOCK, ID signals on every channel, QOS/CACHE/PROT present (driven constant).

Bursts are INCR, full-width beats (AxSIZE = log2(data bytes)), at most 256 beats and never crossing
a 4 KiB boundary (AXI4 A3.4.1); :func:`burst_beats` computes the length of the next burst and
:class:`BurstIssuer` (the program fetch's AR, LD's AR, ST's AW and ST's W-side burst count) turns a
transfer into those bursts.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MAX_BURST_BEATS", "BOUNDARY_BYTES", "axi4_read_signature", "axi4_write_signature",
           "axi4_signature", "axi4_lite_signature", "burst_beats", "burst_beats_reference", "check_data_width", "BurstIssuer", "burst_layout"]

MAX_BURST_BEATS = 256
BOUNDARY_BYTES = 4096
RESP_OKAY = 0


def check_data_width(data_width: int) -> int:
    """Bytes per beat of a legal AXI data width (32 .. 1024 bits, a power of two)."""
    if data_width not in (32, 64, 128, 256, 512, 1024):
        raise ValueError(f"AXI data width {data_width} is not one of 32, 64, 128, 256, 512, 1024 bits")
    return data_width // 8


def axi4_read_signature(addr_width: int = 64, data_width: int = 512, id_width: int = 1) -> wiring.Signature:
    """AR and R channels, master side (Out = driven by the master)."""
    check_data_width(data_width)
    return wiring.Signature({
        "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
        "arburst": Out(2), "arlock": Out(1), "arcache": Out(4), "arprot": Out(3), "arqos": Out(4),
        "arvalid": Out(1), "arready": In(1),
        "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    })


def axi4_write_signature(addr_width: int = 64, data_width: int = 512, id_width: int = 1) -> wiring.Signature:
    """AW, W and B channels, master side."""
    check_data_width(data_width)
    return wiring.Signature({
        "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
        "awburst": Out(2), "awlock": Out(1), "awcache": Out(4), "awprot": Out(3), "awqos": Out(4),
        "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    })


def axi4_signature(addr_width: int = 64, data_width: int = 512, id_width: int = 1) -> wiring.Signature:
    """A full AXI4 master (read and write channels)."""
    members = dict(axi4_read_signature(addr_width, data_width, id_width).members.items())
    members.update(axi4_write_signature(addr_width, data_width, id_width).members.items())
    return wiring.Signature(members)


def axi4_lite_signature(addr_width: int, data_width: int = 32) -> wiring.Signature:
    """An AXI4-Lite master (the host side of ``s_axi_control``; a slave uses ``In(...)``), the
    signals Vitis' ap_ctrl_hs block and cocotbext-axi's AxiLiteBus use (no AxPROT)."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


def burst_beats(addr, remaining, beat_bytes: int):
    """Beats of the next burst from the beat-aligned byte address ``addr`` with ``remaining``
    beats to go: min(remaining, 256, beats to the next 4 KiB boundary). An Amaranth expression
    of 9 bits (1 .. 256 when remaining >= 1)."""
    shift = beat_bytes.bit_length() - 1
    to_boundary = (Const(BOUNDARY_BYTES, 13) - addr[:12]) >> shift
    cap = Mux(to_boundary < MAX_BURST_BEATS, to_boundary, MAX_BURST_BEATS)
    return Mux(remaining < cap, remaining, cap)[:9]


def burst_beats_reference(addr: int, remaining: int, beat_bytes: int) -> int:
    """Python twin of :func:`burst_beats` (the tests' model)."""
    to_boundary = (BOUNDARY_BYTES - addr % BOUNDARY_BYTES) // beat_bytes
    return min(remaining, MAX_BURST_BEATS, to_boundary)


def burst_layout(addr_width: int = 64) -> data.StructLayout:
    """One burst's address channel: ``addr`` (AxADDR, beat-aligned) and ``len`` (AxLEN = beats - 1)."""
    return data.StructLayout({"addr": unsigned(addr_width), "len": unsigned(8)})


class BurstIssuer(wiring.Component):
    """Splits a transfer of ``bytes`` bytes at byte address ``addr`` into AXI4 INCR bursts of full
    beats: the beats that hold those bytes, at most ``max_burst`` beats each and never across 4 KiB.

    Ports:
      load: In(1) starts a transfer (addr, bytes sampled); it replaces whatever was left.
      addr: In(addr_width) byte address, any alignment (the first burst starts at its beat).
      bytes: In(bytes_bits) bytes of the transfer, >= 1.
      hold: In(1) offer no burst this cycle (``burst.valid`` low).
      burst: Out(stream burst_layout): the next burst; the handshake issues it (AR / AW).
      burst_done: In(1) a burst ended (last R beat, B response): frees a slot of ``max_outstanding``.
      idle: Out(1) every burst of the transfer has been issued (nothing left to offer).
      outstanding: Out(range(max_outstanding + 1)) bursts issued and not yet done.
    With ``max_outstanding=None`` nothing is counted (``burst_done`` unused, ``outstanding`` 0):
    a splitter of a stream whose bursts are followed elsewhere (ST's W side counts its beats).
    Latency: the first burst is offered the cycle after ``load``; the next the cycle after a
    handshake. Throughput: one burst per cycle while fewer than ``max_outstanding`` are in flight.
    Registers: the next burst's address and the beats left; ``burst.p.len`` is combinational from them.
    """

    def __init__(self, *, data_width: int = 512, addr_width: int = 64, bytes_bits: int = 24,
                 max_burst: int = MAX_BURST_BEATS, max_outstanding: int | None = 4):
        self.beat_bytes = check_data_width(data_width)
        if not 1 <= max_burst <= MAX_BURST_BEATS:
            raise ValueError(f"max_burst={max_burst}: AXI4 bursts have 1..{MAX_BURST_BEATS} beats")
        if max_outstanding is not None and max_outstanding < 1:
            raise ValueError(f"max_outstanding={max_outstanding}: at least one burst in flight (or None)")
        self.addr_width, self.bytes_bits = addr_width, bytes_bits
        self.max_burst, self.max_outstanding = max_burst, max_outstanding
        super().__init__({
            "load": In(1), "addr": In(addr_width), "bytes": In(bytes_bits), "hold": In(1),
            "burst": Out(stream.Signature(burst_layout(addr_width))), "burst_done": In(1),
            "idle": Out(1), "outstanding": Out(range((max_outstanding or 0) + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        bb = self.beat_bytes
        sh = bb.bit_length() - 1
        addr = Signal(self.addr_width)              # the next burst's beat-aligned address
        left = Signal(self.bytes_bits - sh + 2)     # beats still to issue
        split = burst_beats(addr, left, bb)
        n = Signal(9)                               # beats of the next burst
        m.d.comb += n.eq(split if self.max_burst == MAX_BURST_BEATS else
                         Mux(split < self.max_burst, split, self.max_burst))
        room = Const(1) if self.max_outstanding is None else self.outstanding < self.max_outstanding
        m.d.comb += [self.burst.p.addr.eq(addr), self.burst.p.len.eq(n - 1),
                     self.burst.valid.eq((left != 0) & ~self.hold & room), self.idle.eq(left == 0)]
        go = self.burst.valid & self.burst.ready
        with m.If(go):
            m.d.sync += [addr.eq(addr + (n << sh)), left.eq(left - n)]
        if self.max_outstanding is not None:
            with m.If(go & ~self.burst_done):
                m.d.sync += self.outstanding.eq(self.outstanding + 1)
            with m.Elif(self.burst_done & ~go):
                m.d.sync += self.outstanding.eq(self.outstanding - 1)
        with m.If(self.load):  # after the handshake's update: a load wins
            m.d.sync += [addr.eq(Cat(Const(0, sh), self.addr[sh:])),
                         left.eq((self.addr[:sh] + self.bytes + bb - 1) >> sh)]
        return m
