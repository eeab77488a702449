"""Embedding dequantization core of the SFU (docs/isa.md MISC ``dequant``).

An embedding record (stride ``imm`` bytes) holds ``cols`` INT8 codes, zero padding to the next
16 bytes, then the row's uint32 multiplier and int32 shift; the result row is
``contract.apply_multiplier(codes, (mult, shift))`` = ``saturate32(round_shift(clamp(x, +-2**(s +
2)) * mult, s))`` with ``s = clamp(shift, -1, 62)`` (the clamp of ``x`` only matters for ``s <=
4`` and never changes the saturated result; it is applied so the integers are golden's).

The SFU top streams the record as 32-bit words (``align16(cols) / 4 + 2`` of them, four codes a
word, little endian) twice: pass 0 captures the multiplier and shift (the words at ``align16(cols)
/ 4`` and one after), pass 1 expands each input beat of ``4 * lanes`` codes into up to four
output beats of ``lanes`` results (the beat is taken with its last output; words past the codes
are taken without output).

Ports
-----
i : In(beat stream)   the record's words, pass 0 then pass 1
o : Out(beat stream)  ``cols`` fixed32 results per row, ``lanes`` a beat
params.cols : In(20)  codes per record

Latency 2 cycles from a pass-1 sub-beat to its output beat. Throughput: ``lanes`` results per
cycle in pass 1 (one 9 x 32 bit multiply per lane); pass 0 takes one input beat per cycle, so a
row costs about ``cols / lanes + 2 * (cols / (4 * lanes) + 1)`` cycles: output-bound, not
read-bound.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In

from .sfu_core import INT32_MAX, INT32_MIN, beat_signature

__all__ = ["DequantCore", "DEQUANT_LATENCY", "record_words"]

DEQUANT_LATENCY = 2


def record_words(cols: int) -> int:
    """32-bit words the SFU reads per record: codes padded to 16 bytes, multiplier, shift."""
    return -(-cols // 16) * 4 + 2


class DequantCore(wiring.Component):
    """Embedding record -> fixed32 row (see the module docstring for ports and timing)."""

    passes = 2
    operands = 1
    latency = DEQUANT_LATENCY

    def __init__(self, lanes: int):
        self.lanes = lanes
        from amaranth.lib.wiring import Out
        super().__init__({"i": In(beat_signature(lanes)), "o": Out(beat_signature(lanes)),
                          "params": In(data.StructLayout({"cols": 20}))})

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        cols = self.params.cols
        beat_idx = Signal(21)
        idx = Signal(21)
        m.d.comb += idx.eq(Mux(self.i.p.first, 0, beat_idx))
        mult_word = Signal(21)
        m.d.comb += mult_word.eq(((cols + 15) >> 4) << 2)
        mult, shift = Signal(32), Signal(signed(32))

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        sub = Signal(2)
        base = Signal(23)
        m.d.comb += base.eq((idx << (self.lanes.bit_length() + 1)) + sub * lanes)
        has_out = Signal()
        m.d.comb += has_out.eq(base < cols)
        last_sub = Signal()
        m.d.comb += last_sub.eq(~has_out | (sub == 3) | (base + lanes >= cols))
        pass1 = self.i.p.pass_ == 1
        m.d.comb += self.i.ready.eq(Mux(pass1, advance & last_sub, 1))
        take = self.i.valid & self.i.ready
        with m.If(take):
            m.d.sync += [beat_idx.eq(idx + 1), sub.eq(0)]
        with m.Elif(self.i.valid & pass1 & advance & has_out):
            m.d.sync += sub.eq(sub + 1)

        # ---- pass 0: the multiplier and shift words
        with m.If(take & ~pass1):
            for j in range(lanes):
                with m.If(idx * lanes + j == mult_word):
                    m.d.sync += mult.eq(self.i.p.data[j])
                with m.If(idx * lanes + j == mult_word + 1):
                    m.d.sync += shift.eq(self.i.p.data[j])

        # ---- pass 1: stage 1 = clamp and product, stage 2 = rounding shift and saturation
        s_c = Signal(signed(8))
        m.d.comb += s_c.eq(Mux(shift < -1, -1, Mux(shift > 62, 62, shift)))
        lim = Signal(9)
        m.d.comb += lim.eq(Mux(s_c >= 5, 256, Const(1, 9) << (s_c + 2).as_unsigned()[:3]))
        lim_s = Signal(signed(10))
        m.d.comb += lim_s.eq(lim)
        emit = self.i.valid & pass1 & advance & has_out
        meta = data.StructLayout({"count": range(lanes + 1), "first": 1, "last": 1})
        v1, v2 = Signal(), Signal()
        meta1, meta2 = Signal(meta), Signal(meta)
        s1 = Signal(signed(8))
        rest = Signal(23)
        m.d.comb += rest.eq(cols - base)
        with m.If(advance):
            m.d.sync += [v1.eq(emit), v2.eq(v1), meta2.eq(meta1), s1.eq(s_c),
                         meta1.count.eq(Mux(rest >= lanes, lanes, rest)), meta1.first.eq(base == 0),
                         meta1.last.eq(base + lanes >= cols)]
        words = self.i.p.data
        for j in range(lanes):
            # code j of sub-beat `sub`: byte (sub * lanes + j) of the beat, i.e. word (sub*lanes+j)//4
            code = Signal(signed(8), name=f"code{j}")
            with m.Switch(sub):
                for s in range(4):
                    k = s * lanes + j
                    with m.Case(s):
                        m.d.comb += code.eq(words[k // 4].as_unsigned()[8 * (k % 4): 8 * (k % 4) + 8])
            x = Signal(signed(10), name=f"xc{j}")
            m.d.comb += x.eq(Mux(code > lim_s, lim_s, Mux(code < -lim_s, -lim_s, code)))
            prod = Signal(signed(44), name=f"dq_prod{j}")
            with m.If(advance):
                m.d.sync += prod.eq(x * mult)
            half = Mux(s1 <= 0, 0, Const(1, 64) << (s1 - 1).as_unsigned()[:6])
            y = Signal(signed(66), name=f"dq_y{j}")
            m.d.comb += y.eq(Mux(s1 < 0, prod << 1, (prod + half) >> s1.as_unsigned()[:6]))
            out = Signal(signed(32), name=f"dq_out{j}")
            with m.If(advance):
                m.d.sync += out.eq(Mux(y > INT32_MAX, INT32_MAX, Mux(y < INT32_MIN, INT32_MIN, y)))
            m.d.comb += self.o.p.data[j].eq(Mux(j < meta2.count, out, 0))
        m.d.comb += [self.o.valid.eq(v2), self.o.p.count.eq(meta2.count), self.o.p.first.eq(meta2.first),
                     self.o.p.last.eq(meta2.last), self.o.p.pass_.eq(1)]
        return m
