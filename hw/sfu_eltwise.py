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
"""

from __future__ import annotations

from amaranth.hdl import Signal, signed

from .sfu_core import PipelinedElementwise, round_shift, saturate

__all__ = ["AddCore", "CopyCore", "MulCore"]


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
