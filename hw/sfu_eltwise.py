"""Element-wise op cores of the SFU: add, mul, copy (golden/sfu.py ``add``, ``mul``; docs/isa.md MISC).

Each is a :class:`~olivine.hw.sfu_core.PipelinedElementwise` core (ports ``i``, ``g`` for the two
operand ones, ``o``; beat layout in hw/sfu_core.py), one pass, one beat of ``lanes`` elements per
cycle.

* :class:`AddCore`: ``saturate32(a + b)``; latency 1 cycle; no DSP.
* :class:`MulCore`: ``saturate32(round_shift(a * b, frac_a + frac_b - frac_out))`` (16 + 16 - 16 =
  16 for MISC mul); latency 2 cycles (product register, then the rounding shift and saturation).
  The 32 x 32 signed product maps to DSP48E2 slices (27 x 18 each; Yosys builds it from 4 per lane,
  see docs/benchmarks.md for the measured count).
* :class:`CopyCore`: ``a``; latency 1 cycle.
* :class:`SiluCore`, :class:`SwigluCore`: golden ``silu`` / ``swiglu`` on sfu-arith's
  :class:`~olivine.hw.sfu_arith.Sigmoid` table pipeline; latency 5 / 7 cycles.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .sfu_arith import Sigmoid
from .sfu_core import PipelinedElementwise, op_core_members, round_shift, saturate

__all__ = ["AddCore", "CopyCore", "MulCore", "SiluCore", "SwigluCore"]


class AddCore(PipelinedElementwise):
    """Saturating int32 add ``dst = sat32(src0 + src1)``. Ports i, g, o; latency 1; lanes/cycle."""

    operands = 2
    latency = 1

    def lane(self, m, a, b, enable):
        y = Signal(signed(32))
        with m.If(enable):
            m.d.sync += y.eq(saturate(a + b))
        return y


class MulCore(PipelinedElementwise):
    """Fixed-point multiply ``dst = sat32(round_shift(src0 * src1, shift))``, ``shift`` = 16 for
    MISC mul (all formats 16 fractional bits). Ports i, g, o; latency 2; lanes elements/cycle."""

    operands = 2
    latency = 2

    def __init__(self, lanes: int, shift: int = 16):
        self.shift = shift
        super().__init__(lanes)

    def lane(self, m, a, b, enable):
        product = Signal(signed(64))
        y = Signal(signed(32))
        with m.If(enable):
            m.d.sync += [product.eq(a * b), y.eq(saturate(round_shift(product, self.shift)))]
        return y


class CopyCore(PipelinedElementwise):
    """``dst = src0``. Ports i, o; latency 1; lanes elements/cycle."""

    operands = 1
    latency = 1

    def lane(self, m, a, b, enable):
        y = Signal(signed(32))
        with m.If(enable):
            m.d.sync += y.eq(a)
        return y


class _SigmoidProductCore(wiring.Component):
    """SiLU / SwiGLU: :class:`~olivine.hw.sfu_arith.Sigmoid` (3-stage table pipeline) followed by
    the product stages; the input element (and ``up``) and the beat bookkeeping travel in the
    Sigmoid's tag. All stages advance together when the output is free."""

    passes = 1

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__(op_core_members(lanes, self.operands))

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        meta_layout = data.StructLayout({"count": range(lanes + 1), "first": 1, "last": 1, "pass_": 2})
        fields = {"meta": meta_layout, "x": data.ArrayLayout(signed(32), lanes)}
        if self.operands == 2:
            fields["up"] = data.ArrayLayout(signed(32), lanes)
        tag_layout = data.StructLayout(fields)
        m.submodules.sigmoid = sig = Sigmoid(lanes, frac_in=16, tag_bits=tag_layout.size)
        tag_in = Signal(tag_layout)
        m.d.comb += [tag_in.meta.count.eq(self.i.p.count), tag_in.meta.first.eq(self.i.p.first),
                     tag_in.meta.last.eq(self.i.p.last), tag_in.meta.pass_.eq(self.i.p.pass_),
                     tag_in.x.eq(self.i.p.data), sig.i.p.x.eq(self.i.p.data), sig.i.p.tag.eq(tag_in)]
        if self.operands == 2:
            m.d.comb += [tag_in.up.eq(self.g.p.data), sig.i.valid.eq(self.i.valid & self.g.valid),
                         self.i.ready.eq(sig.i.ready & self.g.valid), self.g.ready.eq(sig.i.ready & self.i.valid)]
        else:
            m.d.comb += [sig.i.valid.eq(self.i.valid), self.i.ready.eq(sig.i.ready)]
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), sig.o.ready.eq(advance)]
        tag = data.View(tag_layout, sig.o.p.tag)
        valid, meta = sig.o.valid, tag.meta
        stages = 4 if self.operands == 2 else 2
        for s in range(stages):
            v, mt = Signal(name=f"valid_p{s}"), Signal(meta_layout, name=f"meta_p{s}")
            with m.If(advance):
                m.d.sync += [v.eq(valid), mt.eq(meta)]
            valid, meta = v, mt
        m.d.comb += [self.o.valid.eq(valid), self.o.p.count.eq(meta.count), self.o.p.first.eq(meta.first),
                     self.o.p.last.eq(meta.last), self.o.p.pass_.eq(meta.pass_)]
        for lane in range(lanes):
            prod, silu = Signal(signed(58), name=f"xsig{lane}"), Signal(signed(32), name=f"silu{lane}")
            with m.If(advance):
                # silu = sat32(round_shift(x * sig, 24 + frac_in - frac_out)), 32 x 25-bit product
                m.d.sync += [prod.eq(tag.x[lane] * sig.o.p.sig[lane]), silu.eq(saturate(round_shift(prod, 24)))]
            y = silu
            if self.operands == 2:
                up1, up2 = Signal(signed(32), name=f"up_a{lane}"), Signal(signed(32), name=f"up_b{lane}")
                p2, out = Signal(signed(64), name=f"su{lane}"), Signal(signed(32), name=f"swiglu{lane}")
                with m.If(advance):
                    # the up operand waits for the two SiLU stages, then mul(silu, up, 16, 16, 16)
                    m.d.sync += [up1.eq(tag.up[lane]), up2.eq(up1), p2.eq(silu * up2),
                                 out.eq(saturate(round_shift(p2, 16)))]
                y = out
            m.d.comb += self.o.p.data[lane].eq(Mux(lane < meta.count, y, 0))
        return m


class SiluCore(_SigmoidProductCore):
    """``dst = silu(src0)`` (golden ``sfu.silu(x, 16, 16)``). Ports i, o (hw/sfu_core.py beats).

    Latency 5 cycles (Sigmoid 3 + product + rounding/saturation); one beat (``lanes`` elements)
    per cycle. Per lane one 17 x 12 (interpolation) and one 32 x 25 multiply: about 3 DSP48E2.
    """

    operands = 1
    latency = Sigmoid.LATENCY + 2


class SwigluCore(_SigmoidProductCore):
    """``dst = swiglu(src0 = gate, src1 = up)`` = ``mul(silu(gate, 16, 16), up, 16, 16, 16)``
    (golden ``sfu.swiglu``, frac_mid = 16). Ports i (gate), g (up), o.

    Latency 7 cycles (SiLU 5 + product + rounding/saturation); one beat per cycle (the SFU top
    feeds it at half rate: gate and up share the read port). Per lane about 7 DSP48E2.
    """

    operands = 2
    latency = Sigmoid.LATENCY + 4
