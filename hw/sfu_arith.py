"""Arithmetic blocks of the special function unit (SFU), bit-exact with golden/fixed.py and
golden/sfu.py (docs/sfu.md is the integer specification of every step).

Expression helpers (combinational Amaranth values, no state):

* :func:`bit_length` -- leading-one detector, ``int.bit_length`` of an unsigned value;
* :func:`round_shift` -- golden ``fixed.round_shift`` (round half up) by a constant or a
  variable shift amount;
* :func:`saturate` -- clamp to a signed width (golden ``fixed.saturate``).

Iterative units (``lib.stream`` valid/ready in and out, one operation in flight):

* :class:`UnsignedDivider` -- ``floor(N / D)``, radix ``2**bits_per_cycle`` restoring divider;
* :class:`Isqrt` -- ``floor(sqrt(n))``, digit by digit;
* :class:`RsqrtNorm` -- golden ``sfu.rsqrt_norm`` (normaliser + divider + isqrt).

Pipelined element units (``lanes`` elements per cycle, one beat per cycle):

* :class:`Exp2Neg` -- golden ``sfu.exp2_neg`` (2**-t * 2**31, table + interpolation);
* :class:`Sigmoid` -- golden ``sfu._sigmoid_q`` (sigmoid(x) * 2**24, used by SiLU/SwiGLU).

Why iterative divider / isqrt: they run once per row (softmax, norms) or once per token
(quant), on rows of hundreds to thousands of elements, so a radix-4 unit finishing in ~20
cycles costs a few hundred LUTs where a combinational 62/25-bit divider would cost thousands
and a table-seed + Newton rsqrt would need several DSP48E2 (three 25 x 21-bit multiplies and a
correction step). Measured resources: docs/benchmarks.md ("SFU arithmetic blocks").
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from olivine.golden import sfu_tables as golden_sfu

from .ovp_decoder import quiet_rejection
from .resources import register_unit
from .sfu_mul import shift_add_product

__all__ = [
    "SfuArithError", "bit_length", "round_shift", "round_shift_signed", "saturate",
    "row_beat_layout", "LINT_WAIVERS",
    "UnsignedDivider", "Isqrt", "RsqrtNorm", "Exp2Neg", "Sigmoid",
    "DIVIDER_USES", "EXP_T_BITS", "EXP_OUT_BITS", "SIG_OUT_BITS",
]


class SfuArithError(ValueError):
    """An SFU arithmetic block was asked for an impossible configuration."""


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or \
            (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SfuArithError(f"{name}={value!r} must be an int {rng}")
    return value


# --------------------------------------------------------------------------- expression helpers


def bit_length(value):
    """``int.bit_length`` of an unsigned Amaranth value (0 -> 0): a leading-one detector.

    Balanced recursion on halves, ``bl(hi:lo) = hi != 0 ? len(lo) + bl(hi) : bl(lo)``, in which
    every sub-result is referenced once: Amaranth does not share repeated sub-expressions, so
    golden's halving loop (each step reading the previous value three times) would grow
    exponentially in the generated Verilog, and a flat priority chain nests too deep for the
    Python simulator. log2(width) levels of muxes. The result is ``unsigned(bits(width))``.
    Signed values must be made non-negative first (e.g. ``abs``).
    """
    value = value.as_unsigned()
    out_bits = max(1, len(value).bit_length())

    def rec(v):
        if len(v) == 1:
            return v
        half = len(v) // 2
        lo, hi = v[:half], v[half:]
        return Mux(hi != 0, rec(hi) + half, rec(lo))

    n = rec(value)
    return n[:out_bits] if len(n) > out_bits else n


def round_shift(x, s, *, max_shift: int | None = None):
    """Golden ``fixed.round_shift(x, s)``: ``floor((x + 2**(s-1)) / 2**s)`` (round half up).

    ``x`` is an Amaranth value (signed for arithmetic shifts). ``s`` is a Python int (negative =
    exact left shift) or an unsigned Amaranth value (a right shift by ``s``, 0 = identity;
    ``max_shift`` bounds it when known, which narrows the rounding constant). The result is one
    bit wider than ``x`` for a right shift (the rounding carry only matters when ``s = 0`` is
    impossible; the caller truncates to the width its range analysis gives).
    """
    if isinstance(s, int):
        if s == 0:
            return x
        if s < 0:
            return x << (-s)
        return (x + (1 << (s - 1))) >> s
    s = s.as_unsigned()
    limit = (1 << len(s)) - 1 if max_shift is None else max_shift
    # the rounding constant 2**(s-1) (0 when s = 0), as wide as the largest shift needs
    rnd = (Const(1, limit + 1) << s) >> 1
    wide = x + rnd
    return wide >> s


def round_shift_signed(x, s, *, max_right: int = 63, max_left: int = 31):
    """``round_shift`` by a signed Amaranth shift amount: right with rounding for ``s >= 0``,
    exact left shift for ``s < 0`` (golden's negative-shift convention). The caller guarantees
    ``-max_left <= s <= max_right`` (the shifters are sized by these bounds)."""
    rbits, lbits = max(1, max_right.bit_length()), max(1, max_left.bit_length())
    right = round_shift(x, s.as_unsigned()[:rbits], max_shift=max_right)
    left = x << (-s).as_unsigned()[:lbits]
    return Mux(s[-1], left, right)


def saturate(x, bits: int):
    """Golden ``fixed.saturate(x, bits)``: clamp a signed value to ``bits`` signed bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(x > hi, hi, Mux(x < lo, lo, x))[:bits].as_signed()


# --------------------------------------------------------------------------- divider

#: Widths of the three divisions of the SFU (numerator, denominator, quotient bits): the
#: quotient width must satisfy N < D * 2**quo_bits for every legal input.
DIVIDER_USES = {
    # softmax: r = 2**62 // Z, Z = sum(e) in [2**31, 2**51] (rows <= 2**20), r <= 2**31
    "softmax": (63, 52, 32),
    # rsqrt_norm: 2**62 // T', T' in [2**22, 2**24], quotient in [2**38, 2**40]
    "rsqrt": (63, 25, 41),
    # quant: 127 * 2**22 // m, m in [1, 256] (the 9-bit row mantissa), quotient < 2**29
    "quant": (29, 9, 29),
}


class UnsignedDivider(wiring.Component):
    """Iterative unsigned divider: ``q = floor(N / D)``, ``r = N - q * D``.

    Restoring division, ``bits_per_cycle`` (1 = radix 2, 2 = radix 4, ...) quotient bits per
    cycle: the start remainder is ``N >> quo_bits`` and the low ``quo_bits`` numerator bits
    shift in one per step. Correct whenever ``N < D * 2**quo_bits`` (i.e. the quotient fits);
    otherwise ``overflow`` is set with the (then meaningless) result, and ``D = 0`` always
    overflows. Widths of the SFU's uses: :data:`DIVIDER_USES` (softmax 63/52/32, rsqrt
    63/25/41, quant 29/9/29).

    Ports
    -----
    i : In(stream.Signature(StructLayout({"num": num_bits, "den": den_bits})))
    o : Out(stream.Signature(StructLayout({"quotient": quo_bits, "remainder": den_bits,
        "overflow": 1})))

    Latency ``self.latency = ceil(quo_bits / bits_per_cycle) + 1`` cycles from the cycle an input
    beat is accepted to the cycle ``o.valid`` rises (load, then one cycle per step); one
    division in flight; a new one is accepted in the cycle the result is taken, so back to back
    throughput is one division per ``latency`` cycles (softmax radix 4: 17, rsqrt: 22,
    quant: 16).
    """

    @quiet_rejection
    def __init__(self, num_bits: int, den_bits: int, quo_bits: int, bits_per_cycle: int = 2):
        self.num_bits = _check_int("num_bits", num_bits, 1, 128)
        self.den_bits = _check_int("den_bits", den_bits, 1, 128)
        self.quo_bits = _check_int("quo_bits", quo_bits, 1, 128)
        self.bits_per_cycle = _check_int("bits_per_cycle", bits_per_cycle, 1, 8)
        self.steps = -(-quo_bits // bits_per_cycle)
        # pad the quotient to a multiple of bits_per_cycle: N >> padded < D still holds
        self._q_bits = self.steps * bits_per_cycle
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"num": unsigned(num_bits),
                                                        "den": unsigned(den_bits)}))),
            "o": Out(stream.Signature(data.StructLayout({"quotient": unsigned(quo_bits),
                                                         "remainder": unsigned(den_bits),
                                                         "overflow": 1}))),
        })

    @property
    def latency(self) -> int:
        return self.steps + 1

    def elaborate(self, platform):
        m = Module()
        qb, db = self._q_bits, self.den_bits
        rem = Signal(db + 1)                    # partial remainder, < D between steps
        quo = Signal(qb)                        # numerator bits still to use, then quotient bits
        den = Signal(db)
        count = Signal(range(self.steps + 1))
        busy = Signal()
        done = Signal()
        overflow = Signal()
        take = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(~busy & (~done | self.o.ready))
        m.d.comb += [self.o.valid.eq(done), self.o.payload.quotient.eq(quo),
                     self.o.payload.remainder.eq(rem), self.o.payload.overflow.eq(overflow)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += done.eq(0)
        with m.If(take):
            num, d = self.i.payload.num, self.i.payload.den
            head = num >> qb if self.num_bits > qb else Const(0, 1)
            m.d.sync += [rem.eq(head), quo.eq(num[:qb] if self.num_bits >= qb else num),
                         den.eq(d), count.eq(self.steps), busy.eq(1),
                         # against the declared quotient width (the padded one is wider)
                         overflow.eq((num >> self.quo_bits) >= d)]
        with m.Elif(busy):
            r, q = rem, quo
            for _ in range(self.bits_per_cycle):
                shifted = Cat(q[qb - 1], r[:db])           # (r << 1) | next numerator bit
                fits = shifted >= den
                r = Mux(fits, shifted - den, shifted)[:db + 1]
                q = Cat(fits, q[:qb - 1])
            m.d.sync += [rem.eq(r), quo.eq(q), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), done.eq(1)]
        return m


# --------------------------------------------------------------------------- integer sqrt


class Isqrt(wiring.Component):
    """Iterative integer square root ``floor(sqrt(n))`` (golden ``fixed.isqrt``), digit by digit.

    ``n_bits`` (even; e.g. 62 for golden's full range, 42 for rsqrt's 41-bit quotients) gives a
    ``n_bits / 2``-bit root; ``bits_per_cycle`` root bits per cycle (combinationally unrolled
    steps: remainder ``(rem << 2) | next two bits`` minus ``4 * root + 1`` when it fits).

    Ports
    -----
    i : In(stream.Signature(unsigned(n_bits)))
    o : Out(stream.Signature(StructLayout({"root": n_bits // 2, "remainder": n_bits // 2 + 1})))
        ``remainder = n - root**2``.

    Latency ``ceil(n_bits / 2 / bits_per_cycle) + 1`` cycles (``self.latency``: load, then one
    cycle per step); one root in flight; back to back one per ``latency`` cycles.
    """

    @quiet_rejection
    def __init__(self, n_bits: int = 62, bits_per_cycle: int = 1):
        n_bits = _check_int("n_bits", n_bits, 2, 128)
        if n_bits % 2:
            raise SfuArithError(f"n_bits={n_bits} must be even (two input bits per root bit)")
        self.bits_per_cycle = _check_int("bits_per_cycle", bits_per_cycle, 1, 8)
        self.n_bits = n_bits
        self.root_bits = n_bits // 2
        self.steps = -(-self.root_bits // bits_per_cycle)
        self._n_bits = 2 * self.steps * bits_per_cycle          # padded with leading zeros
        super().__init__({
            "i": In(stream.Signature(unsigned(n_bits))),
            "o": Out(stream.Signature(data.StructLayout({
                "root": unsigned(self.root_bits), "remainder": unsigned(self.root_bits + 1)}))),
        })

    @property
    def latency(self) -> int:
        return self.steps + 1

    def elaborate(self, platform):
        m = Module()
        nb = self._n_bits
        rb = nb // 2
        rem = Signal(rb + 2)                     # rem <= 2 * root
        root = Signal(rb)
        rest = Signal(nb)
        count = Signal(range(self.steps + 1))
        busy, done = Signal(), Signal()
        take = self.i.valid & self.i.ready
        m.d.comb += [self.i.ready.eq(~busy & (~done | self.o.ready)), self.o.valid.eq(done),
                     self.o.payload.root.eq(root), self.o.payload.remainder.eq(rem)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += done.eq(0)
        with m.If(take):
            m.d.sync += [rem.eq(0), root.eq(0), rest.eq(self.i.payload), count.eq(self.steps),
                         busy.eq(1)]
        with m.Elif(busy):
            r, q, n = rem, root, rest
            for _ in range(self.bits_per_cycle):
                cur = Cat(n[nb - 2:nb], r)[:rb + 3]          # (rem << 2) | next two bits
                trial = Cat(Const(1, 2), q)[:rb + 3]          # 4 * root + 1
                fits = cur >= trial
                r = Mux(fits, cur - trial, cur)[:rb + 2]
                q = Cat(fits, q)[:rb]
                n = (n << 2)[:nb]
            m.d.sync += [rem.eq(r), root.eq(q), rest.eq(n), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), done.eq(1)]
        return m


# --------------------------------------------------------------------------- rsqrt_norm

_RSQRT_T_BITS = 62          # T = S + E < 2**62 (docs/sfu.md, RMSNorm step 3)
_RSQRT_R_BITS = 21          # R in [2**19, 2**20]
_RSQRT_U_SHAPE = signed(6)  # u = (bit_length(T) - 23) >> 1 in [-11, 19]


class RsqrtNorm(wiring.Component):
    """Golden ``sfu.rsqrt_norm(T) -> (R, u)``, the norms' once-per-row inverse square root.

    ``u = (bit_length(T) - 23) >> 1``; ``T' = round_shift(T, 2u)`` in [2**22, 2**24];
    ``R = isqrt(2**62 // T')`` in [2**19, 2**20] (``T = 0`` gives ``R = 0``), so
    ``1/sqrt(T) ~= R * 2**-(31+u)``. Built as normaliser (1 cycle) -> :class:`UnsignedDivider`
    63/25/41 -> :class:`Isqrt` of the 41-bit quotient (padded to 42 bits).
    Chosen over a table seed + Newton iterations: the divider and isqrt are LUT-only
    subtract-and-shift loops (no DSP48E2, a few hundred LUTs, see docs/benchmarks.md) and run
    once per row; Newton on 20-bit results needs 25 x 21-bit multiplies (DSPs) and a final +-1
    correction that costs one more multiply-compare.

    Ports
    -----
    i : In(stream.Signature(unsigned(62)))  -- T
    o : Out(stream.Signature(StructLayout({"r": unsigned(21), "u": signed(6)})))

    Latency ``self.latency = 1 + divider.latency + isqrt.latency`` (= 35 cycles with the default
    radix 4: 1 normalise, 22 divide, 12 isqrt; 66 with radix 2); one value in flight (``i.ready``
    is low from the accepted T until its result is taken: one T per ``latency + 1`` cycles).
    """

    @quiet_rejection
    def __init__(self, bits_per_cycle: int = 2):
        self.bits_per_cycle = _check_int("bits_per_cycle", bits_per_cycle, 1, 8)
        num, den, quo = DIVIDER_USES["rsqrt"]
        self.divider = UnsignedDivider(num, den, quo, bits_per_cycle)
        self.isqrt = Isqrt(42, bits_per_cycle)
        super().__init__({
            "i": In(stream.Signature(unsigned(_RSQRT_T_BITS))),
            "o": Out(stream.Signature(data.StructLayout({"r": unsigned(_RSQRT_R_BITS),
                                                         "u": _RSQRT_U_SHAPE}))),
        })

    @property
    def latency(self) -> int:
        # accept -> T registered, T' offered to the divider (1) -> divide -> isqrt -> root
        return 1 + self.divider.latency + self.isqrt.latency

    def elaborate(self, platform):
        m = Module()
        m.submodules.divider = div = self.divider
        m.submodules.isqrt = sq = self.isqrt
        busy = Signal()
        t = Signal(_RSQRT_T_BITS)
        u = Signal(_RSQRT_U_SHAPE)
        zero = Signal()
        pending = Signal()                                   # T' waits for the divider
        take = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(~busy)
        with m.If(take):
            tv = self.i.payload
            bl = bit_length(tv | (tv == 0))                 # golden: T = 0 counts as 1
            m.d.sync += [t.eq(tv), u.eq((Cat(bl, Const(0, 1)).as_signed() - 23) >> 1), zero.eq(tv == 0),
                         busy.eq(1), pending.eq(1)]
        # T' = round_shift(T, 2u): right shift with rounding for u >= 0, exact left shift else
        two_u = Signal(signed(7))
        m.d.comb += two_u.eq(u * 2)
        right = round_shift(t, two_u.as_unsigned()[:6], max_shift=38)
        left = t << (-two_u).as_unsigned()[:5]
        t_norm = Signal(25)
        m.d.comb += t_norm.eq(Mux(zero, 1 << 22, Mux(two_u >= 0, right, left)))
        m.d.comb += [div.i.valid.eq(pending), div.i.payload.num.eq(1 << 62),
                     div.i.payload.den.eq(t_norm)]
        with m.If(div.i.valid & div.i.ready):
            m.d.sync += pending.eq(0)
        m.d.comb += [sq.i.valid.eq(div.o.valid), sq.i.payload.eq(div.o.payload.quotient),
                     div.o.ready.eq(sq.i.ready)]
        m.d.comb += [self.o.valid.eq(sq.o.valid), sq.o.ready.eq(self.o.ready),
                     self.o.payload.r.eq(Mux(zero, 0, sq.o.payload.root)),
                     self.o.payload.u.eq(u)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += busy.eq(0)
        return m


# --------------------------------------------------------------------------- element units

#: Exp2Neg input: t = d * log2(e) with 20 fractional bits, t < 2**26 (docs/sfu.md softmax 2).
EXP_T_BITS = 26
#: Exp2Neg output: e in [0, 2**31] (2**31 = exp(0)): 32 bits unsigned.
EXP_OUT_BITS = 32
#: Sigmoid output: sig in [0, 2**24]: 25 bits unsigned.
SIG_OUT_BITS = golden_sfu.SIG_VALUE_BITS + 1


def _element_signature(in_name, in_shape, out_name, out_shape, lanes, tag_bits):
    def layout(name, shape):
        fields = {name: data.ArrayLayout(shape, lanes)}
        if tag_bits:
            fields["tag"] = unsigned(tag_bits)
        return data.StructLayout(fields)
    return {"i": In(stream.Signature(layout(in_name, in_shape))),
            "o": Out(stream.Signature(layout(out_name, out_shape)))}


class _TablePipeline(wiring.Component):
    """Common skeleton of the table + linear interpolation units: a 3-stage pipeline per lane
    (ROM read of T[j] and T[j+1] | interpolation multiply | combine and shift), all stages
    enabled by ``advance = ~o.valid | o.ready`` (a stalled output freezes the pipeline), and an
    optional ``tag`` travelling with each beat (e.g. the element itself, or count/first/last)."""

    LATENCY = 3

    @quiet_rejection
    def __init__(self, lanes, tag_bits, signature):
        self.lanes = _check_int("lanes", lanes, 1, 256)
        self.tag_bits = _check_int("tag_bits", tag_bits, 0, 4096)
        super().__init__(signature)

    @property
    def latency(self) -> int:
        return self.LATENCY

    def _rom(self, m, name, table):
        """A ROM of ``len(table) - 1`` entries with two synchronous read ports (T[j], T[j+1]);
        the last entry is only ever an upper neighbour, so it is a constant selected by
        ``j == depth - 1`` (docs/sfu.md, tables). ``ram_style = "block"`` asks for a block RAM
        (one RAMB36 in true dual port mode per lane): Yosys otherwise builds the 256-entry exp
        ROM from ~800 LUTs per lane (measured, docs/benchmarks.md)."""
        depth = len(table) - 1
        width = max(table).bit_length()
        mem = memory.Memory(shape=unsigned(width), depth=depth, init=list(table[:depth]),
                            attrs={"ram_style": "block", "rom_style": "block"})
        m.submodules[name] = mem
        return mem, mem.read_port(domain="sync"), mem.read_port(domain="sync"), table[depth]

    def _pipe(self, m, advance, sig, name):
        reg = Signal.like(sig, name=name)
        with m.If(advance):
            m.d.sync += reg.eq(sig)
        return reg

    def _pipeline_control(self, m):
        """``advance`` (drives ``i.ready`` and every stage), the valid bits of the LATENCY stages
        (the last one is ``o.valid``) and the tag carried alongside; returns (advance, valid)."""
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        valid = self._valid_pipe(m, advance)
        m.d.comb += self.o.valid.eq(valid[-1])
        if self.tag_bits:
            tag = self.i.payload.tag
            for q in range(self.LATENCY):
                tag = self._pipe(m, advance, tag, f"tag_{q + 1}")
            m.d.comb += self.o.payload.tag.eq(tag)
        return advance, valid

    def _valid_pipe(self, m, advance):
        valid = self.i.valid
        stages = []
        for q in range(self.LATENCY):
            valid = self._pipe(m, advance, valid, f"valid_{q + 1}")
            stages.append(valid)
        return stages


class Exp2Neg(_TablePipeline):
    """Golden ``sfu.exp2_neg``: ``e = 2**(-t / 2**20) * 2**31`` for ``0 <= t < 2**26``.

    Per lane: ``k = t >> 20``, ``j = (t >> 12) & 255``, ``w = t & 4095``;
    ``v = T[j] - round_shift((T[j] - T[j+1]) * w, 12)``; ``e = (((v << 9) >> k) + 1) >> 1``.
    One 256 x 23-bit ROM per lane (``amaranth.lib.memory.Memory``, two synchronous read ports
    for T[j] and T[j+1]; T[256] = 2**22 is a constant) and one 15 x 12-bit interpolation
    product per lane, a shift-and-add tree in the fabric (hw/sfu_mul.py ``shift_add_product``: the
    SFU's DSP48E2 are all in its shared multiplier bank; counts in docs/benchmarks.md).

    Ports
    -----
    i : In(stream.Signature(StructLayout({"t": ArrayLayout(unsigned(26), lanes)[, "tag": tag_bits]})))
    o : Out(stream.Signature(StructLayout({"e": ArrayLayout(unsigned(32), lanes)[, "tag": tag_bits]})))

    Latency 3 cycles (ROM read, multiply, combine); throughput one beat (``lanes`` elements)
    per cycle; ``i.ready = ~o.valid | o.ready``.
    """

    @quiet_rejection
    def __init__(self, lanes: int = 1, tag_bits: int = 0):
        super().__init__(lanes, tag_bits, _element_signature(
            "t", unsigned(EXP_T_BITS), "e", unsigned(EXP_OUT_BITS), lanes, tag_bits))

    def elaborate(self, platform):
        m = Module()
        advance, valid = self._pipeline_control(m)
        ib, fb = golden_sfu.EXP_INTERP_BITS, golden_sfu.EXP_FRAC
        table = golden_sfu.exp_table()
        for lane in range(self.lanes):
            t = self.i.payload.t[lane]
            k, j, w = t[fb:], t[ib:fb], t[:ib]
            _, lo, hi, last = self._rom(m, f"exp_rom_{lane}", table)
            m.d.comb += [lo.addr.eq(j), hi.addr.eq(j + 1), lo.en.eq(advance), hi.en.eq(advance)]
            k1 = self._pipe(m, advance, k, f"k1_{lane}")
            w1 = self._pipe(m, advance, w, f"w1_{lane}")
            top1 = self._pipe(m, advance, j == 255, f"top1_{lane}")
            t0 = lo.data
            t1 = Mux(top1, last, hi.data)
            diff = Signal(15, name=f"diff_{lane}")            # T[j] - T[j+1] < 2**15
            m.d.comb += diff.eq(t0 - t1)
            prod = self._pipe(m, advance, shift_add_product(m, diff, w1, name=f"interp_{lane}")[:27], f"prod2_{lane}")
            t0_2 = self._pipe(m, advance, t0, f"t0_2_{lane}")
            k2 = self._pipe(m, advance, k1, f"k2_{lane}")
            v = Signal(24, name=f"v_{lane}")                   # in [2**22, 2**23]
            m.d.comb += v.eq(t0_2 - ((prod + (1 << (ib - 1))) >> ib))
            scaled = Signal(33, name=f"scaled_{lane}")
            m.d.comb += scaled.eq((Cat(Const(0, golden_sfu.EXP_OUT_EXTRA_BITS + 1), v)) >> k2)
            e = self._pipe(m, advance, ((scaled + 1) >> 1)[:EXP_OUT_BITS], f"e3_{lane}")
            m.d.comb += self.o.payload.e[lane].eq(e)
        return m


class Sigmoid(_TablePipeline):
    """Golden ``sfu._sigmoid_q(x, frac_in)``: ``sigmoid(x) * 2**24`` (the factor SiLU uses).

    Per lane: ``a = round_shift(min(|x|, 16 * 2**frac_in), frac_in - 18)``, ``j = a >> 12``,
    ``w = a & 4095``; ``sig = T[j] + round_shift((T[j+1] - T[j]) * w, 12)`` for ``j < 1024``,
    else ``2**24``; ``x < 0``: ``2**24 - sig``. One 1024 x 24-bit ROM per lane (two synchronous
    read ports; T[1024] is a constant) and one 17 x 12-bit product per lane (a shift-and-add tree
    in the fabric, no DSP48E2: hw/sfu_mul.py ``shift_add_product``).

    Ports
    -----
    i : In(stream.Signature(StructLayout({"x": ArrayLayout(signed(32), lanes)[, "tag": tag_bits]})))
    o : Out(stream.Signature(StructLayout({"sig": ArrayLayout(unsigned(25), lanes)[, "tag": tag_bits]})))

    ``frac_in`` (0..30) is fixed at elaboration (docs/isa.md: all SFU formats are 16).
    Latency 3 cycles; throughput one beat per cycle; ``i.ready = ~o.valid | o.ready``.
    """

    @quiet_rejection
    def __init__(self, lanes: int = 1, frac_in: int = 16, tag_bits: int = 0):
        self.frac_in = _check_int("frac_in", frac_in, 0, 30)
        super().__init__(lanes, tag_bits, _element_signature(
            "x", signed(32), "sig", unsigned(SIG_OUT_BITS), lanes, tag_bits))

    def elaborate(self, platform):
        m = Module()
        advance, valid = self._pipeline_control(m)
        ib = golden_sfu.SIG_INTERP_BITS
        n = golden_sfu.SIG_RANGE << golden_sfu.SIG_STEP_BITS           # 1024
        one = 1 << golden_sfu.SIG_VALUE_BITS
        table = golden_sfu.sigmoid_table()
        limit = golden_sfu.SIG_RANGE << self.frac_in
        for lane in range(self.lanes):
            x = self.i.payload.x[lane]
            mag = Signal(33, name=f"mag_{lane}")
            m.d.comb += mag.eq(Mux(abs(x) > limit, limit, abs(x)))
            a = Signal(golden_sfu.SIG_FRAC + 5, name=f"a_{lane}")       # <= 16 * 2**18
            m.d.comb += a.eq(round_shift(mag, self.frac_in - golden_sfu.SIG_FRAC))
            j, w = a[ib:], a[:ib]
            inside = j < n
            jc = Signal(10, name=f"jc_{lane}")
            m.d.comb += jc.eq(Mux(inside, j, n - 1))
            _, lo, hi, last = self._rom(m, f"sig_rom_{lane}", table)
            m.d.comb += [lo.addr.eq(jc), hi.addr.eq(jc + 1), lo.en.eq(advance), hi.en.eq(advance)]
            w1 = self._pipe(m, advance, w, f"w1_{lane}")
            top1 = self._pipe(m, advance, jc == n - 1, f"top1_{lane}")
            in1 = self._pipe(m, advance, inside, f"in1_{lane}")
            neg1 = self._pipe(m, advance, x < 0, f"neg1_{lane}")
            t0 = lo.data
            t1 = Mux(top1, last, hi.data)
            diff = Signal(17, name=f"diff_{lane}")            # T[j+1] - T[j] < 2**17
            m.d.comb += diff.eq(t1 - t0)
            prod = self._pipe(m, advance, shift_add_product(m, diff, w1, name=f"interp_{lane}")[:29], f"prod2_{lane}")
            t0_2 = self._pipe(m, advance, t0, f"t0_2_{lane}")
            in2 = self._pipe(m, advance, in1, f"in2_{lane}")
            neg2 = self._pipe(m, advance, neg1, f"neg2_{lane}")
            v = Signal(SIG_OUT_BITS, name=f"v_{lane}")
            m.d.comb += v.eq(Mux(in2, t0_2 + ((prod + (1 << (ib - 1))) >> ib), one))
            sig = self._pipe(m, advance, Mux(neg2, one - v, v)[:SIG_OUT_BITS], f"sig3_{lane}")
            m.d.comb += self.o.payload.sig[lane].eq(sig)
        return m


# --------------------------------------------------------------------------- resource units


@register_unit("sfu_divider")
def _divider_unit(use: str = "softmax", bits_per_cycle: int = 2):
    """``olivine resources sfu_divider --use softmax|rsqrt|quant --bits_per_cycle 2``."""
    if use not in DIVIDER_USES:
        raise SfuArithError(f"use={use!r}: expected one of {sorted(DIVIDER_USES)}")
    return UnsignedDivider(*DIVIDER_USES[use], bits_per_cycle=int(bits_per_cycle)), \
        f"sfu_divider_{use}_r{1 << int(bits_per_cycle)}"


@register_unit("sfu_isqrt")
def _isqrt_unit(n_bits: int = 62, bits_per_cycle: int = 1):
    """``olivine resources sfu_isqrt --n_bits 62``."""
    return Isqrt(int(n_bits), int(bits_per_cycle)), f"sfu_isqrt_{n_bits}_b{bits_per_cycle}"


@register_unit("sfu_rsqrt")
def _rsqrt_unit(bits_per_cycle: int = 2):
    """``olivine resources sfu_rsqrt``."""
    return RsqrtNorm(int(bits_per_cycle)), f"sfu_rsqrt_b{bits_per_cycle}"


@register_unit("sfu_exp2")
def _exp2_unit(lanes: int = 1):
    """``olivine resources sfu_exp2 --lanes 1``."""
    return Exp2Neg(int(lanes)), f"sfu_exp2_l{lanes}"


@register_unit("sfu_sigmoid")
def _sigmoid_unit(lanes: int = 1):
    """``olivine resources sfu_sigmoid --lanes 1``."""
    return Sigmoid(int(lanes)), f"sfu_sigmoid_l{lanes}"


# --------------------------------------------------------------------------- row streams


def row_beat_layout(lanes: int) -> data.StructLayout:
    """The beat of the SFU's row-reduction op cores (the interface agreed with hw/sfu.py):
    ``data`` (``lanes`` int32 elements), ``count`` (valid lanes, 1..lanes; only a row's last
    beat may have fewer), ``first`` / ``last`` (a row's first / last beat), ``pass_`` (which
    pass over the row: the top streams each row ``core.passes`` times consecutively)."""
    return data.StructLayout({"data": data.ArrayLayout(signed(32), lanes),
                              "count": range(lanes + 1), "first": 1, "last": 1, "pass_": 2})


#: -Wall waiver of every SFU arithmetic top (the only one beyond hw.export's backend waivers).
LINT_WAIVERS = {
    "UNUSEDSIGNAL": "Amaranth's Verilog backend keeps a named wire for every named signal, view "
                    "field and submodule port and drives the logic from the underlying net, so "
                    "these aliases read as unused by construction.",
}
