"""On-chip buffers of one core (a sketch of the banking; the core does not instantiate it yet).

From ``BufferConfig`` (KiB per buffer, hw/config.py) and the buffer word width (the AXI beat,
``data_width`` bits):

* weight: two halves of ``weight_kib / 2`` (double buffering: LD fills one while the matrix
  engine reads the other), URAM;
* meta (sparse indices, block N) and bias (bias and requantization entries): one bank each, BRAM;
* data space (activation buffer followed by the global buffer, one byte address space):
  ``data_banks`` banks interleaved by word (word w in bank w mod data_banks), URAM, so that the
  matrix engine and the SFU reading consecutive words hit different banks every cycle.

Each bank is a :class:`BufferBank`: one write port with byte enables and one synchronous read
port, the memory primitive forced with Vivado's and Yosys's ``ram_style`` attribute ("ultra" for
URAM, "block" for BRAM: without it Yosys maps even large memories to BRAM, measured).

Ports of BufferBank: w_addr, w_data, w_en (one bit per byte) in; r_addr, r_en in; r_data out.
Latency: read data 1 cycle after r_en; a write is visible to a read of the next cycle.
Throughput: one read and one write per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .axi import check_data_width
from .config import BufferConfig
from .resources import register_unit

__all__ = ["BankSpec", "BufferBank", "bank_plan", "RAM_STYLES"]

RAM_STYLES = {"uram": "ultra", "bram": "block"}


@dataclass(frozen=True)
class BankSpec:
    name: str
    bytes: int
    primitive: str  # "uram" or "bram"


def bank_plan(buffers: BufferConfig, data_banks: int = 2) -> list[BankSpec]:
    """The banks of one core's buffers (see the module docstring)."""
    if buffers.weight_kib % 2:
        raise ValueError(f"weight_kib={buffers.weight_kib} must be even: the weight buffer is double-buffered")
    data_bytes = (buffers.activation_kib + buffers.global_kib) * 1024
    if data_bytes % data_banks:
        raise ValueError(f"the data space ({data_bytes} B) does not split into {data_banks} equal banks")
    plan = [BankSpec("weight0", buffers.weight_kib * 512, "uram"), BankSpec("weight1", buffers.weight_kib * 512, "uram"),
            BankSpec("meta", buffers.meta_kib * 1024, "bram"), BankSpec("bias", buffers.bias_kib * 1024, "bram")]
    plan += [BankSpec(f"data{i}", data_bytes // data_banks, "uram") for i in range(data_banks)]
    return plan


class BufferBank(wiring.Component):
    def __init__(self, nbytes: int, data_width: int = 512, primitive: str = "uram"):
        beat = check_data_width(data_width)
        if nbytes % beat:
            raise ValueError(f"a bank of {nbytes} B is not a whole number of {beat}-byte words")
        if primitive not in RAM_STYLES:
            raise ValueError(f"primitive {primitive!r}: choose one of {', '.join(RAM_STYLES)}")
        self.depth, self.data_width, self.primitive = nbytes // beat, data_width, primitive
        ab = max((self.depth - 1).bit_length(), 1)
        super().__init__({"w_addr": In(ab), "w_data": In(data_width), "w_en": In(beat),
                          "r_addr": In(ab), "r_en": In(1), "r_data": Out(data_width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self.data_width, depth=self.depth, init=[],
                                               attrs={"ram_style": RAM_STYLES[self.primitive]})
        w = mem.write_port(granularity=8)
        r = mem.read_port()
        m.d.comb += [w.addr.eq(self.w_addr), w.data.eq(self.w_data), w.en.eq(self.w_en),
                     r.addr.eq(self.r_addr), r.en.eq(self.r_en), self.r_data.eq(r.data)]
        return m


@register_unit("buffer_bank")
def _buffer_bank_unit(kib: int = 64, data_width: int = 512, primitive: str = "uram"):
    """One on-chip buffer bank of ``kib`` KiB, ``data_width`` bits wide, forced to URAM or BRAM."""
    return BufferBank(kib * 1024, data_width, primitive), "olivine_buffer_bank"
