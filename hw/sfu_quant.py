"""Activation quantization core of the SFU: per-token dynamic INT8 (docs/isa.md MISC ``quant``).

Golden: ``contract.quantize_act_dynamic_int8`` (9-bit mantissa) and, with ``params.pow2``,
``contract.quantize_act_pow2_int8``. Two passes over each row:

* pass 0: ``amax = max |x|`` (33 bits, so ``|INT32_MIN|`` is exact), one beat per cycle;
* between the passes (2 cycles): ``e = max(0, bit_length(amax) - 8)``, ``m = max(1, ceil(amax /
  2**e))`` (1..256) and ``R = floor(127 * 2**22 / m)`` read from a 256-entry ROM indexed by ``m -
  1``; the power-of-two rule instead takes ``e = dynamic_int8_exponent(amax)``, ``m = 1``, ``R = 1``;
* pass 1: ``q = saturate(round_shift(x * R, 22 + e), -127, 127)`` (pow2: ``round_shift(x, e)``).

Why a ROM and not the divider: ``m`` has only 256 values, so ``R`` is a 256 x 29 bit table (7.3
Kbit: one RAMB18) read in one cycle, against hw/sfu_arith.py's 29/9/29 radix-4 UnsignedDivider
(16 cycles, 89 LUT + 55 FF measured in docs/benchmarks.md): with the ROM the parameter step (2
cycles) hides in the aligner's extra read slot, so a row costs no gap at all, where the divider
would add ~14 cycles to every row (a 64-element row at 16 lanes: 10 -> 24 cycles); a block RAM
the SFU otherwise leaves unused is the cheaper resource. The table is generated at elaboration time
from golden's constants (``contract_constants.INT8_QMAX``, ``RECIP_BITS``: torch-free), not typed in.

Ports
-----
i : In(beat stream)  the row, twice (pass 0 then pass 1)
o : Out(beat stream) the INT8 codes (sign-extended in the 32-bit lanes), one beat per pass-1 beat
row_exp : Out(signed(8))   the row's exponent ``e``, valid with every ``o`` beat of the row
row_mant : Out(unsigned(16)) the row's mantissa ``m`` (1 for pow2), valid likewise
params.pow2 : In(1)  the power-of-two rule (``imm[16]``)

Latency: 2 cycles from a pass-1 beat to its output beat; the core waits 2 cycles after the last
pass-0 beat before it accepts pass 1 (parameter computation, ROM read). Throughput: one beat
(``lanes`` elements) per cycle per pass, so ``lanes / 2`` elements per cycle per row.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.contract_constants import INT8_QMAX, RECIP_BITS
from .sfu_arith import bit_length
from .sfu_core import beat_signature
from .sfu_mul import mul_signature, multiplier_port

__all__ = ["QuantCore", "QUANT_LATENCY", "reciprocal_rom"]

QUANT_LATENCY = 2


def reciprocal_rom() -> list[int]:
    """``R[m - 1] = floor(127 * 2**22 / m)`` for m = 1..256 (golden's per-row reciprocal)."""
    return [(INT8_QMAX << RECIP_BITS) // m for m in range(1, 257)]


class QuantCore(wiring.Component):
    """Per-token dynamic INT8 quantization (see the module docstring for ports and timing)."""

    passes = 2
    operands = 1
    latency = QUANT_LATENCY

    def __init__(self, lanes: int, *, shared_mul: bool = False):
        self.lanes, self.shared_mul = lanes, shared_mul
        members = {
            "i": In(beat_signature(lanes)), "o": Out(beat_signature(lanes)),
            "row_exp": Out(signed(8)), "row_mant": Out(unsigned(16)),
            "params": In(data.StructLayout({"pow2": 1})),
        }
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        rom_values = reciprocal_rom()
        # ram_style: Yosys would otherwise build the table from LUTs (as it did the exp ROM)
        m.submodules.rom = rom = Memory(shape=unsigned(max(rom_values).bit_length()), depth=256, init=rom_values,
                                        attrs={"ram_style": "block", "rom_style": "block"})
        rom_rd = rom.read_port()

        # phase: 0 = taking pass 0, 1 = computing e/m, 2 = ROM read, 3 = taking pass 1
        phase = Signal(2)
        amax = Signal(33)
        e_reg, m_reg, r_reg = Signal(5), Signal(9), Signal(30)

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        in_p1 = phase == 3
        m.d.comb += self.i.ready.eq((phase == 0) | (in_p1 & advance))
        take = self.i.valid & self.i.ready

        # ---- pass 0: max |x|
        mags = [Signal(33, name=f"mag{j}") for j in range(lanes)]
        for j in range(lanes):
            x = self.i.p.data[j]
            m.d.comb += mags[j].eq(Mux(x < 0, -x, x).as_unsigned())
        level = mags
        while len(level) > 1:
            nxt = []
            for k in range(0, len(level) - 1, 2):
                s = Signal(33, name=f"max_{len(level)}_{k}")
                m.d.comb += s.eq(Mux(level[k] > level[k + 1], level[k], level[k + 1]))
                nxt.append(s)
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        beat_max = level[0]
        with m.If(take & (phase == 0)):
            m.d.sync += amax.eq(Mux(self.i.p.first | (beat_max > amax), beat_max, amax))
            with m.If(self.i.p.last):
                m.d.sync += phase.eq(1)

        # ---- between the passes: e, m, R
        bl = Signal(6)
        m.d.comb += bl.eq(bit_length(amax))
        e_dyn = Signal(5)
        m.d.comb += e_dyn.eq(Mux(bl > 8, bl - 8, 0))
        m_dyn = Signal(10)
        m.d.comb += m_dyn.eq((amax + (Const(1, 34) << e_dyn) - 1) >> e_dyn)
        m_dyn_c = Signal(9)
        m.d.comb += m_dyn_c.eq(Mux(m_dyn == 0, 1, m_dyn))
        e0 = Signal(5)
        m.d.comb += e0.eq(Mux(bl > 7, bl - 7, 0))
        rounded = Signal(34)
        m.d.comb += rounded.eq((amax + Mux(e0 == 0, 0, Const(1, 34) << (e0 - 1).as_unsigned()[:5])) >> e0)
        e_pow2 = Signal(5)
        m.d.comb += e_pow2.eq(Mux(rounded > INT8_QMAX, e0 + 1, e0))
        m.d.comb += rom_rd.addr.eq(m_dyn_c - 1)
        with m.If(phase == 1):
            m.d.sync += [e_reg.eq(Mux(self.params.pow2, e_pow2, e_dyn)),
                         m_reg.eq(Mux(self.params.pow2, 1, m_dyn_c)), phase.eq(2)]
        with m.If(phase == 2):
            m.d.sync += [r_reg.eq(Mux(self.params.pow2, 1, rom_rd.data)), phase.eq(3)]

        # ---- pass 1: two stages, e and m travel with the beat
        meta = data.StructLayout({"count": range(lanes + 1), "first": 1, "last": 1, "e": 5, "m": 9})
        v1, v2 = Signal(), Signal()
        meta1, meta2 = Signal(meta), Signal(meta)
        shift1 = Signal(6)
        prods = [Signal(signed(63), name=f"prod{j}") for j in range(lanes)]
        codes = [Signal(signed(8), name=f"code{j}") for j in range(lanes)]
        with m.If(advance):
            m.d.sync += [v1.eq(take & in_p1), v2.eq(v1), meta2.eq(meta1),
                         meta1.count.eq(self.i.p.count), meta1.first.eq(self.i.p.first),
                         meta1.last.eq(self.i.p.last), meta1.e.eq(e_reg), meta1.m.eq(m_reg),
                         shift1.eq(Mux(self.params.pow2, e_reg, RECIP_BITS + e_reg))]
            with m.If(take & in_p1 & self.i.p.last):
                m.d.sync += phase.eq(0)
        bank = multiplier_port(m, self, lanes)
        for j in range(lanes):
            m.d.comb += [bank.a[j].eq(self.i.p.data[j]), bank.b[j].eq(r_reg)]    # x * R on the bank
            with m.If(advance):
                m.d.sync += prods[j].eq(bank.p[j][:63])
            half = Mux(shift1 == 0, 0, Const(1, 63) << (shift1 - 1).as_unsigned()[:6])
            shifted = Signal(signed(64), name=f"shifted{j}")
            m.d.comb += shifted.eq((prods[j] + half) >> shift1)
            with m.If(advance):
                m.d.sync += codes[j].eq(Mux(shifted > INT8_QMAX, INT8_QMAX,
                                            Mux(shifted < -INT8_QMAX, -INT8_QMAX, shifted)))
        m.d.comb += [self.o.valid.eq(v2), self.o.p.count.eq(meta2.count), self.o.p.first.eq(meta2.first),
                     self.o.p.last.eq(meta2.last), self.o.p.pass_.eq(1),
                     self.row_exp.eq(meta2.e), self.row_mant.eq(meta2.m)]
        for j in range(lanes):
            m.d.comb += self.o.p.data[j].eq(Mux(j < meta2.count, codes[j], 0))
        return m
