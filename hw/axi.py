"""AXI4 master signatures and burst arithmetic shared by the program fetch and the LD/ST engines.

Signal names follow the AXI4 specification in lower case (``araddr``, ``rdata``, ...), so a port
member ``m_axi`` appears in Verilog as ``m_axi__araddr`` and cocotbext-axi binds it with
``AxiReadBus.from_prefix(dut, "m_axi_")``. As alveo-kernel.md requires: 64-bit addresses by
default, a 1-bit AxLOCK, ID signals on every channel, QOS/CACHE/PROT present (driven constant).

Bursts are INCR, full-width beats (AxSIZE = log2(data bytes)), at most 256 beats and never crossing
a 4 KiB boundary (AXI4 A3.4.1); :func:`burst_beats` computes the length of the next burst.
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MAX_BURST_BEATS", "BOUNDARY_BYTES", "axi4_read_signature", "axi4_write_signature",
           "axi4_signature", "axi4_lite_signature", "burst_beats", "burst_beats_reference", "check_data_width"]

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
