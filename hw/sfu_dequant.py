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

The multiply, clamp, rounding shift and saturation are hw/requant.py's :class:`ApplyMultiplier`
(the requantizer's and the OVP4 encoder's, one implementation of ``contract.apply_multiplier``),
one per lane, its 8 x 31-bit product on the SFU's multiplier bank (hw/sfu_mul.py).

Latency ``DEQUANT_LATENCY`` = ``apply_latency(8)`` = 8 cycles from a pass-1 sub-beat to its output
beat. Throughput: ``lanes`` results per cycle in pass 1 (one product per lane); pass 0 takes one input beat per cycle, so a
row costs about ``cols / lanes + 2 * (cols / (4 * lanes) + 1)`` cycles: output-bound, not
read-bound.
"""

from __future__ import annotations

from amaranth.hdl import EnableInserter, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .requant import MULT_BITS, ApplyMultiplier, apply_latency, clamp_shift
from .sfu_core import beat_signature
from .sfu_mul import mul_signature, multiplier_port

__all__ = ["DequantCore", "DEQUANT_LATENCY", "record_words"]

#: the codes are int8: ApplyMultiplier on 8-bit x
_CODE_BITS = 8
DEQUANT_LATENCY = apply_latency(_CODE_BITS)


def record_words(cols: int) -> int:
    """32-bit words the SFU reads per record: codes padded to 16 bytes, multiplier, shift."""
    return -(-cols // 16) * 4 + 2


class DequantCore(wiring.Component):
    """Embedding record -> fixed32 row (see the module docstring for ports and timing)."""

    passes = 2
    operands = 1
    latency = DEQUANT_LATENCY

    def __init__(self, lanes: int, *, shared_mul: bool = False):
        self.lanes, self.shared_mul = lanes, shared_mul
        members = {"i": In(beat_signature(lanes)), "o": Out(beat_signature(lanes)),
                   "params": In(data.StructLayout({"cols": 20}))}
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

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

        # ---- pass 1: ApplyMultiplier per lane (clamp, product on the bank, rounding shift, saturation)
        bank = multiplier_port(m, self, lanes)
        dp = Module()  # the datapath: every register moves only when the pipeline advances
        m.submodules.datapath = EnableInserter(advance)(dp)
        s_c = Signal(signed(7))
        m.d.comb += s_c.eq(clamp_shift(shift))
        emit = self.i.valid & pass1 & advance & has_out
        meta = data.StructLayout({"count": range(lanes + 1), "first": 1, "last": 1})
        rest = Signal(23)
        m.d.comb += rest.eq(cols - base)
        valid, meta_now = Signal(), Signal(meta)
        m.d.comb += [valid.eq(emit), meta_now.count.eq(Mux(rest >= lanes, lanes, rest)),
                     meta_now.first.eq(base == 0), meta_now.last.eq(base + lanes >= cols)]
        for stage in range(DEQUANT_LATENCY):
            v_next, meta_next = Signal(name=f"valid_s{stage}"), Signal(meta, name=f"meta_s{stage}")
            with m.If(advance):
                m.d.sync += [v_next.eq(valid), meta_next.eq(meta_now)]
            valid, meta_now = v_next, meta_next
        words = self.i.p.data
        for j in range(lanes):
            # code j of sub-beat `sub`: byte (sub * lanes + j) of the beat, i.e. word (sub*lanes+j)//4
            code = Signal(signed(_CODE_BITS), name=f"code{j}")
            with m.Switch(sub):
                for s in range(4):
                    k = s * lanes + j
                    with m.Case(s):
                        m.d.comb += code.eq(words[k // 4].as_unsigned()[8 * (k % 4): 8 * (k % 4) + 8])
            am = ApplyMultiplier(_CODE_BITS, 32, external_product=True)
            dp.submodules[f"apply{j}"] = am
            # mult's bit 31 is clear: the multiplier scan faults the instruction before any row otherwise
            dp.d.comb += [am.x.eq(code), am.mult.eq(mult[:MULT_BITS]), am.s.eq(s_c),
                          bank.a[j].eq(am.pa), bank.b[j].eq(am.pb), am.pp.eq(bank.p[j])]
            m.d.comb += self.o.p.data[j].eq(Mux(j < meta_now.count, am.y, 0))
        m.d.comb += [self.o.valid.eq(valid), self.o.p.count.eq(meta_now.count), self.o.p.first.eq(meta_now.first),
                     self.o.p.last.eq(meta_now.last), self.o.p.pass_.eq(1)]
        return m
