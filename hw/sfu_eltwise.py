"""Element-wise op cores of the SFU: add, mul, copy (golden/sfu.py ``add``, ``mul``; docs/isa.md MISC).

Each is a :class:`~olivine.hw.sfu_core.PipelinedElementwise` core (ports ``i``, ``g`` for the two
operand ones, ``o``; beat layout in hw/sfu_core.py), one pass, one beat of ``lanes`` elements per
cycle.

* :class:`AddCore`: ``saturate32(a + b)``; latency 1 cycle; no DSP.
* :class:`MulCore`: ``saturate32(round_shift(a * b, frac_a + frac_b - frac_out))`` (16 + 16 - 16 =
  16 for MISC mul); latency 2 cycles (product register, then the rounding shift and saturation).
  The 32 x 32 signed product is one lane of the SFU's multiplier bank (hw/sfu_mul.py: 4 DSP48E2
  per lane, shared by every op; docs/benchmarks.md).
* :class:`CopyCore`: ``a``; latency 1 cycle.
* :class:`SiluCore`, :class:`SwigluCore`: golden ``silu`` / ``swiglu`` on sfu-arith's
  :class:`~olivine.hw.sfu_arith.Sigmoid` table pipeline; latency 5 / 7 cycles.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .sfu_arith import Sigmoid
from .sfu_core import PipelinedElementwise, op_core_members, round_shift, saturate

__all__ = ["AddCore", "CopyCore", "MulCore", "SiluCore", "SwigluCore"]


class AddCore(PipelinedElementwise):
    """Saturating int32 add ``dst = sat32(src0 + src1)``. Ports i, g, o; latency 1; lanes/cycle."""

    operands = 2
    latency = 1

    def lane(self, m, index, a, b, enable):
        y = Signal(signed(32))
        with m.If(enable):
            m.d.sync += y.eq(saturate(a + b))
        return y


class MulCore(PipelinedElementwise):
    """Fixed-point multiply ``dst = sat32(round_shift(src0 * src1, shift))``, ``shift`` = 16 for
    MISC mul (all formats 16 fractional bits). Ports i, g, o; latency 2; lanes elements/cycle."""

    operands = 2
    latency = 2
    uses_mul = True

    def __init__(self, lanes: int, shift: int = 16, *, shared_mul: bool = False):
        self.shift = shift
        super().__init__(lanes, shared_mul=shared_mul)

    def lane(self, m, index, a, b, enable):
        product = Signal(signed(64))
        y = Signal(signed(32))
        bank = self.products
        m.d.comb += [bank.a[index].eq(a), bank.b[index].eq(b)]
        with m.If(enable):
            m.d.sync += [product.eq(bank.p[index]), y.eq(saturate(round_shift(product, self.shift)))]
        return y


class CopyCore(PipelinedElementwise):
    """``dst = src0``. Ports i, o; latency 1; lanes elements/cycle."""

    operands = 1
    latency = 1

    def lane(self, m, index, a, b, enable):
        y = Signal(signed(32))
        with m.If(enable):
            m.d.sync += y.eq(a)
        return y


class _SigmoidProductCore(wiring.Component):
    """SiLU / SwiGLU: :class:`~olivine.hw.sfu_arith.Sigmoid` (3-stage table pipeline) followed by
    the product stages; the input element (and ``up``) and the beat bookkeeping travel in the
    Sigmoid's tag. All stages after the Sigmoid advance together when the output is free.

    Products on the multiplier bank (hw/sfu_mul.py), one per lane and cycle: ``x * sig`` as a beat
    leaves the Sigmoid (stage A), SwiGLU's ``silu * up`` from stage A into stage B. A beat leaves the
    Sigmoid only while stage A is empty, so the two never need the bank in the same cycle (SwiGLU's
    beats come every other cycle: gate and up share the read port)."""

    passes = 1
    uses_mul = True

    def __init__(self, lanes: int, *, shared_mul: bool = False):
        from .sfu_mul import mul_signature
        self.lanes, self.shared_mul = lanes, shared_mul
        members = op_core_members(lanes, self.operands)
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    def elaborate(self, platform):
        from .sfu_mul import multiplier_port
        m = Module()
        lanes = self.lanes
        bank = multiplier_port(m, self, lanes)
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
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        tag = data.View(tag_layout, sig.o.p.tag)
        stages = 4 if self.operands == 2 else 2
        valids = [Signal(name=f"valid_p{s}") for s in range(stages)]
        second = valids[0] if self.operands == 2 else Const(0, 1)   # stage A holds a beat: silu * up
        m.d.comb += sig.o.ready.eq(advance & ~second)
        valid, meta = sig.o.valid & sig.o.ready, tag.meta
        for s in range(stages):
            v, mt = valids[s], Signal(meta_layout, name=f"meta_p{s}")
            with m.If(advance):
                m.d.sync += [v.eq(valid), mt.eq(meta)]
            valid, meta = v, mt
        m.d.comb += [self.o.valid.eq(valid), self.o.p.count.eq(meta.count), self.o.p.first.eq(meta.first),
                     self.o.p.last.eq(meta.last), self.o.p.pass_.eq(meta.pass_)]
        for lane in range(lanes):
            prod, silu = Signal(signed(58), name=f"xsig{lane}"), Signal(signed(32), name=f"silu{lane}")
            # silu = sat32(round_shift(x * sig, 24 + frac_in - frac_out)), 32 x 25-bit product
            m.d.comb += [bank.a[lane].eq(tag.x[lane]), bank.b[lane].eq(sig.o.p.sig[lane])]
            with m.If(advance):
                m.d.sync += prod.eq(bank.p[lane])
            if self.operands == 2:
                up1 = Signal(signed(32), name=f"up_a{lane}")
                silu_a = Signal(signed(32), name=f"silu_a{lane}")
                p2, out, y = (Signal(signed(64), name=f"su{lane}"), Signal(signed(32), name=f"swiglu{lane}"),
                              Signal(signed(32), name=f"swiglu_o{lane}"))
                m.d.comb += silu_a.eq(saturate(round_shift(prod, 24)))
                with m.If(second):
                    # mul(silu, up, 16, 16, 16) on the bank while stage A holds the beat
                    m.d.comb += [bank.a[lane].eq(silu_a), bank.b[lane].eq(up1)]
                with m.If(advance):
                    # the up operand travels beside x * sig; the last register keeps the latency
                    m.d.sync += [up1.eq(tag.up[lane]), p2.eq(bank.p[lane]),
                                 out.eq(saturate(round_shift(p2, 16))), y.eq(out)]
            else:
                with m.If(advance):
                    m.d.sync += silu.eq(saturate(round_shift(prod, 24)))
                y = silu
            m.d.comb += self.o.p.data[lane].eq(Mux(lane < meta.count, y, 0))
        return m


class SiluCore(_SigmoidProductCore):
    """``dst = silu(src0)`` (golden ``sfu.silu(x, 16, 16)``). Ports i, o (hw/sfu_core.py beats).

    Latency 5 cycles (Sigmoid 3 + product + rounding/saturation); one beat (``lanes`` elements)
    per cycle. Per lane one 32 x 25 product on the multiplier bank (hw/sfu_mul.py; the 17 x 12
    interpolation is a shift-and-add tree).
    """

    operands = 1
    latency = Sigmoid.LATENCY + 2


class SwigluCore(_SigmoidProductCore):
    """``dst = swiglu(src0 = gate, src1 = up)`` = ``mul(silu(gate, 16, 16), up, 16, 16, 16)``
    (golden ``sfu.swiglu``, frac_mid = 16). Ports i (gate), g (up), o.

    Latency 7 cycles (Sigmoid 3, ``x * sig``, ``silu * up``, rounding/saturation, output register);
    one beat per two cycles (its two products per lane share the lane's bank multiplier; the SFU
    top feeds it at that rate anyway: gate and up share the read port).
    """

    operands = 2
    latency = Sigmoid.LATENCY + 4
    #: cycles per beat at most: two products per lane on the lane's bank multiplier
    beat_interval = 2
