"""The matrix engine's requantizer: INT32 accumulator -> int32 fixed-point or INT8, one value per cycle.

Golden: ``contract.requantize`` (= ``sim.funcsim.requantize_exact``; docs/contract.md)::

    x = acc * mantissa                              (32 b x 17 b -> 49 b, exact)
    s = clamp(shift - exponent, -1, 62)
    x = clamp(x, -2**min(s + 2, 61), 2**min(s + 2, 61))
    y = round_shift(x * mult, s)                    (49 b x 31 b -> 80 b, exact, round half up)
    int8:  clamp(y, -127, 127)
    else:  v = saturate32(y);  add_bias: saturate32(v + bias)

The 80-bit product is formed exactly (partial products of DSP48E2 size, summed in fabric), so the
rounded quotient is the one golden.fixed's split rule ``hi * m + ((lo * m + r) >> k)`` computes
(that rule only exists to keep software partials below 2**63; its result is the exact
``floor((x * m + 2**(s-1)) / 2**s)``).

Rounding and shifting in one barrel shifter: for every s in [-1, 62], with ``u = s + 1`` in
[0, 63], ``round_shift(P, s) = (((P << 2) >> u) + 1) >> 1``: for s >= 1 it is the half-up rule
(``Q = floor(P / 2**(s-1))`` then ``floor((Q + 1) / 2)``), for s = 0 it gives P and for s = -1
2 P (the left shift). So no rounding constant is added to the 80-bit product, and the right shift
by 0..63 is the only variable shifter.

Pieces
------
:func:`pipelined_product` -- an exact signed x unsigned product built from 27 x 18 partial products
(A = 26 unsigned bits or the signed top chunk, B = 17 unsigned bits), each registered twice (the
DSP48E2's MREG and PREG), then a pairwise adder tree with a register per level.
:class:`ApplyMultiplier` -- ``saturate(round_shift(clamp(x, 2**min(s+2, 61)) * mult, s), out_bits)``,
golden ``contract.apply_multiplier`` for a shift already clamped to [-1, 62]; shared with the SFU's
OVP4 activation encoder (hw/sfu_ovp_quant.py: 32-bit x, ``out_bits = 18``, as exact as its +-2**40
clamp for the grid it feeds).
:class:`Requantizer` -- the stream unit of CORE_INTERFACE.md section 3.

Requantizer ports (``lib.stream``, valid/ready)
-----------------------------------------------
i : In(stream.Signature(REQUANT_IN))   acc s32, mantissa u17, exponent s10, mult u32, shift s32,
                                       bias s32, add_bias, int8
o : Out(stream.Signature(REQUANT_OUT)) value s32 (INT8 results sign-extended), bad_mult (the input's
                                       mult had bit 31 set: docs/isa.md's data rule; ``value`` is then
                                       computed with mult's low 31 bits and must not be used)

Latency: ``REQUANT_LATENCY`` = 14 cycles from an accepted input to its output (o.valid), with o.ready
high: input register 1, acc x mantissa 3, shift clamp in parallel, ApplyMultiplier 9 (limit 1,
clamp 1, product 4, shifter 2, round/saturate 1), output select / bias 1.
Throughput: one value per cycle. Backpressure: a stalled output (o.valid & ~o.ready) freezes the
whole pipeline through one clock enable (DSP CE pins included); ``i.ready = ~o.valid | o.ready``.
DSP48E2: 6 (acc x mantissa: 2, x * mult: 4); measured with Yosys in docs/benchmarks.md
(``olivine resources requant``).
"""

from __future__ import annotations

from amaranth.hdl import Const, EnableInserter, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .resources import register_unit

__all__ = [
    "ApplyMultiplier", "apply_latency", "REQUANT_IN", "REQUANT_LATENCY", "REQUANT_OUT", "Requantizer",
    "clamp_shift", "delay", "pipelined_product", "product_latency", "MIN_SHIFT", "MAX_SHIFT", "MULT_BITS",
    "SHIFT_BITS",
]

#: the multiplier's magnitude bits (bit 31 of the 32-bit word must be 0)
MULT_BITS = 31
#: the effective shift range of contract.apply_multiplier (s <= -1 acts as -1)
MIN_SHIFT, MAX_SHIFT = -1, 62
#: width of a clamped shift value (-1..62)
SHIFT_BITS = 7
#: partial-product chunk widths: A port (27 signed: 26 unsigned bits), B port (18 signed: 17 unsigned)
A_CHUNK, B_CHUNK = 26, 17

REQUANT_IN = data.StructLayout({
    "acc": signed(32), "mantissa": unsigned(17), "exponent": signed(10), "mult": unsigned(32),
    "shift": signed(32), "bias": signed(32), "add_bias": 1, "int8": 1,
})
REQUANT_OUT = data.StructLayout({"value": signed(32), "bad_mult": 1})


def _range_shape(lo: int, hi: int) -> Shape:
    """The narrowest shape holding every integer of [lo, hi]."""
    if lo >= 0:
        return unsigned(max(1, hi.bit_length()))
    return signed(max((-lo - 1).bit_length(), hi.bit_length()) + 1)


def _chunks(width: int, is_signed: bool, chunk: int) -> list[tuple[int, int, bool]]:
    """Split a ``width``-bit operand into (offset, bits, signed) pieces: unsigned ``chunk``-bit pieces
    from the bottom, the top piece signed (up to chunk + 1 bits) when the operand is signed."""
    pieces, off = [], 0
    while True:
        rest = width - off
        if rest <= chunk or (is_signed and rest <= chunk + 1):
            pieces.append((off, rest, is_signed))
            return pieces
        pieces.append((off, chunk, False))
        off += chunk


def _value_range(bits: int, is_signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if is_signed else (0, (1 << bits) - 1)


def pipelined_product(m: Module, a, b, *, name: str = "prod"):
    """The exact product ``a * b`` (``a`` signed or unsigned, ``b`` unsigned) in registered stages.

    Partial products ``a_i * b_j`` of at most 27 x 18 signed bits (one DSP48E2 each), registered
    twice (MREG, PREG), then summed pairwise in order of weight, one register per adder level.
    Adds its logic to ``m.d.sync``. Returns ``(value, latency, dsp_count)``; ``value`` is exactly as
    wide as the product's range needs.
    """
    sa, sb = a.shape(), b.shape()
    if sb.signed:
        raise ValueError("pipelined_product: b must be unsigned")
    terms = []  # (signal, offset, lo, hi)
    for ao, abits, asg in _chunks(sa.width, sa.signed, A_CHUNK):
        a_part = a[ao:ao + abits]
        a_part = a_part.as_signed() if asg else a_part
        alo, ahi = _value_range(abits, asg)
        for bo, bbits, _ in _chunks(sb.width, False, B_CHUNK):
            b_part = b[bo:bo + bbits]
            blo, bhi = 0, (1 << bbits) - 1
            corners = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
            lo, hi = min(corners), max(corners)
            shape = _range_shape(lo, hi)
            mreg = Signal(shape, name=f"{name}_m{ao}_{bo}", reset_less=True)
            preg = Signal(shape, name=f"{name}_p{ao}_{bo}", reset_less=True)
            m.d.sync += [mreg.eq(a_part * b_part), preg.eq(mreg)]
            terms.append((preg, ao + bo, lo, hi))
    dsps = len(terms)
    latency = 2
    assert product_latency(sa.width, sa.signed, sb.width) == 2 + (dsps - 1).bit_length()
    terms.sort(key=lambda t: t[1])
    level = 0
    while len(terms) > 1:
        nxt = []
        for k in range(0, len(terms) - 1, 2):
            (v0, o0, lo0, hi0), (v1, o1, lo1, hi1) = terms[k], terms[k + 1]
            d = o1 - o0
            lo, hi = lo0 + (lo1 << d), hi0 + (hi1 << d)
            s = Signal(_range_shape(lo, hi), name=f"{name}_s{level}_{k // 2}", reset_less=True)
            m.d.sync += s.eq(v0 + (v1 << d))
            nxt.append((s, o0, lo, hi))
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
        latency += 1
        level += 1
    value, off, _, _ = terms[0]
    return (value << off if off else value), latency, dsps


def product_latency(a_bits: int, a_signed: bool, b_bits: int) -> int:
    """Cycles of :func:`pipelined_product` for these operand widths (2 + adder levels)."""
    terms = len(_chunks(a_bits, a_signed, A_CHUNK)) * len(_chunks(b_bits, False, B_CHUNK))
    return 2 + (terms - 1).bit_length()


def delay(m: Module, value, cycles: int, *, name: str):
    """``value`` delayed by ``cycles`` registers (to travel beside a pipeline)."""
    for k in range(cycles):
        reg = Signal(value.shape(), name=f"{name}_d{k}", reset_less=True)
        m.d.sync += reg.eq(value)
        value = reg
    return value


def clamp_shift(value):
    """``clamp(value, -1, 62)`` of a signed Amaranth value, as ``signed(7)`` (ApplyMultiplier's ``s``)."""
    return Mux(value < MIN_SHIFT, MIN_SHIFT, Mux(value > MAX_SHIFT, MAX_SHIFT, value))[:SHIFT_BITS].as_signed()


def apply_latency(x_bits: int) -> int:
    """Cycles of :class:`ApplyMultiplier`: limit, clamp, the product, shifter 2, round."""
    return 2 + product_latency(x_bits, True, MULT_BITS) + 3


class ApplyMultiplier(wiring.Component):
    """``saturate(round_shift(clamp(x, +-2**min(s+2, 61)) * mult, s), out_bits)``, pipelined.

    Golden ``contract.apply_multiplier(x, Multiplier(mult, shift), lo, hi)`` with ``s`` the shift
    already clamped to [-1, 62] (:func:`clamp_shift`) and (lo, hi) the caller's clamp applied to the
    ``out_bits``-saturated result (exact whenever the clamp lies inside ``out_bits``).

    Ports (plain signals, no handshake: every input is taken each cycle, the result comes out
    ``latency`` cycles later; stall it as a whole with ``EnableInserter``):
      x    : In(signed(x_bits))
      mult : In(unsigned(31))
      s    : In(signed(7))    in [-1, 62]
      y    : Out(signed(out_bits))
    Latency (``latency``): 2 + product + 3 cycles (limit 1, clamp 1, product 4 for 28..53-bit x,
    3 up to 27 bits, shift 2, round 1): 9 for the requantizer's 49-bit and the SFU's 32-bit x. Throughput: one value per cycle.
    DSP48E2: 2 per 26-bit piece of x (mult splits into 17 + 14 bits): 4 for 49 or 32 bits.

    ``external_product=True`` (the SFU, whose DSP48E2 are all in its shared multiplier bank,
    hw/sfu_mul.py): the product is not built here but taken from outside, combinationally:
    ``pa`` (Out, the clamped x) and ``pb`` (Out, mult) go to a multiplier whose exact product comes
    back on ``pp`` (In, ``x_bits + 32`` bits signed) in the same cycle; it is then registered as
    many times as the built product's stages, so latency and results are the same. No DSP48E2.
    """

    def __init__(self, x_bits: int, out_bits: int, *, external_product: bool = False):
        if not 2 <= x_bits <= 61 or not 2 <= out_bits <= 62:
            raise ValueError(f"ApplyMultiplier: x_bits={x_bits} must lie in [2, 61] and "
                             f"out_bits={out_bits} in [2, 62]")
        self.x_bits, self.out_bits, self.external_product = x_bits, out_bits, external_product
        self.latency = apply_latency(x_bits)
        members = {"x": In(signed(x_bits)), "mult": In(unsigned(MULT_BITS)),
                   "s": In(signed(SHIFT_BITS)), "y": Out(signed(out_bits))}
        if external_product:
            members.update({"pa": Out(signed(x_bits)), "pb": Out(unsigned(MULT_BITS)),
                            "pp": In(signed(x_bits + MULT_BITS + 1))})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        xb, ob = self.x_bits, self.out_bits
        # ---- stage 1: the clamp limit 2**min(s + 2, 61); beyond x's range it never acts
        lim_exp = Signal(range(xb), name="lim_exp")
        s2 = self.s + 2
        m.d.comb += lim_exp.eq(Mux(s2 >= xb - 1, xb - 1, s2))
        lim = Signal(unsigned(xb), name="lim", reset_less=True)
        x1, mult1, s1 = Signal(signed(xb), name="x1", reset_less=True), Signal(MULT_BITS, name="mult1", reset_less=True), Signal(signed(SHIFT_BITS), name="s1", reset_less=True)
        m.d.sync += [lim.eq(Const(1, xb) << lim_exp), x1.eq(self.x), mult1.eq(self.mult), s1.eq(self.s)]
        # ---- stage 2: clamp x to +-lim
        xc = Signal(signed(xb), name="xc", reset_less=True)
        mult2 = Signal(MULT_BITS, name="mult2", reset_less=True)
        m.d.sync += [xc.eq(Mux(x1 > lim, lim, Mux(x1 < -lim, -lim, x1))), mult2.eq(mult1)]
        u2 = Signal(6, name="u2", reset_less=True)  # u = s + 1 in [0, 63]
        m.d.sync += u2.eq((s1 + 1).as_unsigned()[:6])
        # ---- stages 3..: the exact product P (x_bits + 31 bits, signed)
        if self.external_product:
            plat = product_latency(xb, True, MULT_BITS)
            m.d.comb += [self.pa.eq(xc), self.pb.eq(mult2)]
            prod = delay(m, self.pp, plat, name="xm")
        else:
            prod, plat, _ = pipelined_product(m, xc, mult2, name="xm")
        u = delay(m, u2, plat, name="u")
        # ---- shifter: Q = (P << 2) >> u in two stages (by 8 * u[3:6], then by u[0:3])
        wide = Signal(signed(xb + MULT_BITS + 2), name="p4")
        m.d.comb += wide.eq(prod << 2)
        coarse = Signal(signed(len(wide)), name="coarse", reset_less=True)
        u_fine = Signal(3, name="u_fine", reset_less=True)
        m.d.sync += [coarse.eq(wide >> (u[3:6] * 8)), u_fine.eq(u[:3])]
        # fine shift, then narrow Q to out_bits + 2 bits with saturation (a clamped Q still saturates y)
        fine = Signal(signed(len(wide)), name="fine")
        m.d.comb += fine.eq(coarse >> u_fine)
        qb = ob + 2
        qhi, qlo = (1 << (qb - 1)) - 1, -(1 << (qb - 1))
        q = Signal(signed(qb), name="q", reset_less=True)
        m.d.sync += q.eq(Mux(fine > qhi, qhi, Mux(fine < qlo, qlo, fine)))
        # ---- round: y = (Q + 1) >> 1, saturated to out_bits
        r = Signal(signed(qb), name="r")  # (Q + 1) >> 1 lies in [-2**ob, 2**ob]: fits ob + 2 bits
        m.d.comb += r.eq((q + 1) >> 1)
        yhi, ylo = (1 << (ob - 1)) - 1, -(1 << (ob - 1))
        m.d.sync += self.y.eq(Mux(r > yhi, yhi, Mux(r < ylo, ylo, r)))
        return m


def _front_latency() -> int:
    return product_latency(32, True, 17)  # acc x mantissa: 2 DSPs (MREG, PREG) + one adder level


#: cycles from an accepted input to its output (input register + acc x mantissa + ApplyMultiplier + output)
REQUANT_LATENCY = 1 + _front_latency() + apply_latency(49) + 1


class Requantizer(wiring.Component):
    """The matrix engine's requantizer (module docstring: ports, latency, throughput, DSPs)."""

    latency = REQUANT_LATENCY

    def __init__(self):
        super().__init__({"i": In(stream.Signature(REQUANT_IN)), "o": Out(stream.Signature(REQUANT_OUT))})

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]

        dp = Module()  # the datapath: every register moves only when the pipeline advances
        m.submodules.datapath = EnableInserter(advance)(dp)
        p = Signal(REQUANT_IN, name="in_reg", reset_less=True)
        dp.d.sync += p.eq(self.i.payload)

        x, front, _ = pipelined_product(dp, p.acc, p.mantissa, name="am")
        assert front == _front_latency()
        # s = clamp(shift - exponent, -1, 62): subtract, then clamp, beside the product
        diff = Signal(signed(34), name="shift_diff", reset_less=True)
        dp.d.sync += diff.eq(p.shift - p.exponent)
        s_c = Signal(signed(SHIFT_BITS), name="s_clamped", reset_less=True)
        dp.d.sync += s_c.eq(clamp_shift(diff))
        s_c = delay(dp, s_c, front - 2, name="s")

        dp.submodules.apply = apply = ApplyMultiplier(len(x), 32)
        dp.d.comb += [apply.x.eq(x), apply.mult.eq(delay(dp, p.mult[:MULT_BITS], front, name="mult")),
                      apply.s.eq(s_c)]
        side = Signal(data.StructLayout({"bias": signed(32), "add_bias": 1, "int8": 1, "bad": 1}), name="side")
        dp.d.comb += [side.bias.eq(p.bias), side.add_bias.eq(p.add_bias), side.int8.eq(p.int8),
                      side.bad.eq(p.mult[MULT_BITS])]
        side = delay(dp, side, front + apply.latency, name="side")

        # ---- output: +-127 clamp, or int32 (already saturated) plus the bias with saturation
        y = apply.y
        biased = Signal(signed(33), name="biased")
        dp.d.comb += biased.eq(y + side.bias)
        i32_min, i32_max = -(1 << 31), (1 << 31) - 1
        with_bias = Mux(biased > i32_max, i32_max, Mux(biased < i32_min, i32_min, biased))
        as_int8 = Mux(y > 127, 127, Mux(y < -127, -127, y))
        out = Signal(REQUANT_OUT, name="out_reg", reset_less=True)
        dp.d.sync += [out.value.eq(Mux(side.int8, as_int8, Mux(side.add_bias, with_bias, y))),
                      out.bad_mult.eq(side.bad)]

        valid = Signal(REQUANT_LATENCY, name="valid_pipe")
        with m.If(advance):
            m.d.sync += valid.eq((valid << 1) | (self.i.valid & self.i.ready))
        m.d.comb += [self.o.valid.eq(valid[-1]), self.o.payload.eq(out)]
        return m


@register_unit("requant")
def _resource_unit():
    """The matrix engine's requantizer (6 DSP48E2 partial products, 14-cycle pipeline)."""
    return Requantizer(), "requant"
