"""Softmax op core of the SFU, bit-exact with golden ``sfu.softmax`` (docs/sfu.md "Softmax")
with the causal mask and valid length of docs/isa.md MISC: with ``mask = 1``, key ``j`` of row
``r`` is visible iff ``j <= qpos_base + (r mod qpos_period)`` (period 0 = 1).

Three passes over each row (``passes = 3``), streamed by the SFU top level:

0. **max** of the visible scores (masked scores count as -2**40);
1. **sum of exponentials** ``Z = sum(e)``, ``e = exp2_neg(round_shift(min(m - s, 40 * 2**16) *
   log2e_M, 26))``; at the row's end ``r = 2**62 // Z`` on an
   :class:`~olivine.hw.sfu_arith.UnsignedDivider` (63/52/32 bits, radix 4, 17 cycles); a fully
   masked row gets ``r = 0``;
2. **normalise**: ``e`` is recomputed and ``p = round_shift(e * r, 46)``; one output beat per
   input beat.

Why three passes: recomputing ``e`` in pass 2 costs one more row read and no storage; two passes
would need the row's ``e`` values buffered (``SOFTMAX_MAX_LEN`` x 32 bits, or at least the
longest row the compiler emits) between the sum and the normalisation.

Ports (the row-core interface shared with hw/sfu.py)
-----
i : In(stream.Signature(row_beat_layout(lanes)))   -- scores (int32, ``frac_in`` bits)
g : In(stream.Signature(row_beat_layout(lanes)))   -- unused by softmax (``g.ready`` is 0)
o : Out(stream.Signature(row_beat_layout(lanes)))  -- probabilities (``frac_out`` bits) of the
    pass-2 beats; lanes >= count are 0
params : In(softmax_params_layout()) -- ``mask``, ``qpos_base``, ``qpos_period`` (imm[15:0],
    imm[31:16]), stable for the instruction, and ``row``: the index of the row being streamed
    (0 for the instruction's first row), sampled with the row's first pass-0 beat; the core
    keeps ``r mod qpos_period`` itself (rows must come in order).

Latency: a pass-2 beat leaves ``self.latency`` = 7 cycles after it is accepted (3 front
stages, Exp2Neg 3, output multiply 1); pass-1 beats wait 1 cycle after the row's last pass-0
beat left the first stage, pass-2 beats ``7 + 17 + 1`` cycles after the last pass-1 beat.
Throughput one beat (``lanes`` elements) per cycle inside a pass; a row of ``L`` scores takes
about ``3 * ceil(L / lanes) + 30`` cycles (measured in tests/test_hw_sfu_softmax.py).
Products per lane: ``e * r`` (32 x 32) on the SFU's multiplier bank (hw/sfu_mul.py, 4 DSP48E2 per
lane shared by every op); ``d * log2e_M`` (22 bits x the 31-bit constant) as shifted adds of the
constant's signed digits and the Exp2Neg interpolation (15 x 12) as shift-and-add, in the fabric;
counts in docs/benchmarks.md.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olivine.golden import sfu_tables as golden_sfu

from .ovp_decoder import quiet_rejection
from .resources import register_unit
from .sfu_arith import DIVIDER_USES, Exp2Neg, SfuArithError, UnsignedDivider, row_beat_layout
from .sfu_core import reduce_tree
from .sfu_mul import const_product, mul_signature, multiplier_port

__all__ = ["Softmax", "softmax_params_layout", "SOFTMAX_LATENCY"]

SOFTMAX_LATENCY = 7
_MASKED = golden_sfu._MASKED                      # -2**40
_MAX_DIFF = golden_sfu._EXP_MAX_DIFF              # 40


def softmax_params_layout() -> data.StructLayout:
    return data.StructLayout({"mask": 1, "qpos_base": unsigned(16), "qpos_period": unsigned(16),
                              "row": unsigned(16)})


class Softmax(wiring.Component):
    """Softmax op core; see the module docstring for passes, ports, latency and throughput."""

    passes = 3

    @quiet_rejection
    def __init__(self, lanes: int = 4, frac_in: int = 16, frac_out: int = 16, *, shared_mul: bool = False):
        if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 256:
            raise SfuArithError(f"lanes={lanes!r} must be an int in [1, 256]")
        for name, f in (("frac_in", frac_in), ("frac_out", frac_out)):
            if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= 30:
                raise SfuArithError(f"{name}={f!r} must be an int in [0, 30]")
        self.t_shift = golden_sfu._LOG2E_S + frac_in - golden_sfu.EXP_FRAC
        if (_MAX_DIFF << frac_in) * golden_sfu._LOG2E_M >= 1 << 62 or self.t_shift < 1:
            raise SfuArithError(f"frac_in={frac_in}: golden's split multiply path is not built "
                                f"in hardware (frac_in must give 1 <= shift and d*M < 2**62)")
        self.lanes, self.frac_in, self.frac_out = lanes, frac_in, frac_out
        self.d_bits = (_MAX_DIFF << frac_in).bit_length()
        self.count_bits = (lanes).bit_length()
        self.tag_bits = 2 + self.count_bits + 2 + lanes + 32
        self.exp = Exp2Neg(lanes, tag_bits=self.tag_bits)
        self.divider = UnsignedDivider(*DIVIDER_USES["softmax"], bits_per_cycle=2)
        beat = row_beat_layout(lanes)
        self.shared_mul = shared_mul
        members = {
            "i": In(stream.Signature(beat)),
            "g": In(stream.Signature(beat)),
            "o": Out(stream.Signature(beat)),
            "params": In(softmax_params_layout()),
        }
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    @property
    def latency(self) -> int:
        return SOFTMAX_LATENCY

    def elaborate(self, platform):
        m = Module()
        m.submodules.exp = exp = self.exp
        m.submodules.divider = div = self.divider
        L, P = self.lanes, self.params
        last_pass = self.passes - 1
        bank = multiplier_port(m, self, L)
        m.d.comb += self.g.ready.eq(0)

        advance = Signal()                          # front stages S1..S3
        m_ok, r_ok = Signal(), Signal()
        ib = self.i.payload
        allowed = Mux(ib.pass_ == 0, 1, Mux(ib.pass_ == 1, m_ok, r_ok))
        m.d.comb += self.i.ready.eq(advance & allowed)
        accept = self.i.valid & self.i.ready
        row_start = accept & (ib.pass_ == 0) & ib.first
        with m.If(row_start):
            m.d.sync += [m_ok.eq(0), r_ok.eq(0)]

        # causal mask: phase = r mod period (kept incrementally), column counter per pass
        phase = Signal(16)
        period = Signal(17)
        m.d.comb += period.eq(Mux(P.qpos_period == 0, 1, P.qpos_period))
        phase_now = Signal(16)
        with m.If(row_start):
            nxt = phase + 1
            m.d.comb += phase_now.eq(Mux(P.row == 0, 0, Mux(nxt >= period, 0, nxt)))
            m.d.sync += phase.eq(phase_now)
        with m.Else():
            m.d.comb += phase_now.eq(phase)
        qpos = Signal(17)
        m.d.comb += qpos.eq(P.qpos_base + phase_now)
        col = Signal(range(golden_sfu.SOFTMAX_MAX_LEN + L + 1))
        col_now = Mux(ib.first, 0, col)
        with m.If(accept):
            m.d.sync += col.eq(col_now + L)

        row_m = Signal(signed(41))
        row_r = Signal(32)

        def stage(value, name, enable=advance):
            reg = Signal.like(value, name=name)
            with m.If(enable):
                m.d.sync += reg.eq(value)
            return reg

        # S1: scores, visibility, captured row scalars
        v1 = stage(accept, "v1")
        meta1 = {k: stage(getattr(ib, k), f"{k}1") for k in ("pass_", "count", "first", "last")}
        inrow1 = [stage(ib.count > l, f"inrow1_{l}") for l in range(L)]
        s1 = []
        for l in range(L):
            visible = (ib.count > l) & (~P.mask | (col_now + l <= qpos))
            s1.append(stage(Mux(visible, ib.data[l], _MASKED).as_signed()[:41].as_signed(),
                            f"s1_{l}"))
        m1, r1 = stage(row_m, "m1"), stage(row_r, "r1")

        # pass-0 reduction from S1 (lanes beyond count hold -2**40: they never win)
        acc_m = Signal(signed(41))
        beat_m = reduce_tree(m, s1, lambda a, b: Mux(a > b, a, b), signed(41), "beat_m")
        m_go = Signal()
        m.d.sync += m_go.eq(0)
        with m.If(advance & v1 & (meta1["pass_"] == 0)):
            m.d.sync += [acc_m.eq(Mux(meta1["first"] | (beat_m > acc_m), beat_m, acc_m)),
                         m_go.eq(meta1["last"])]
        with m.If(m_go):
            m.d.sync += [row_m.eq(acc_m), m_ok.eq(1)]

        # S2: d = min(m - s, 40 * 2**frac_in)
        v2 = stage(v1, "v2")
        meta2 = {k: stage(v, f"{k}2") for k, v in meta1.items()}
        inrow2 = [stage(v, f"inrow2_{l}") for l, v in enumerate(inrow1)]
        limit = _MAX_DIFF << self.frac_in
        d2 = []
        for l in range(L):
            diff = m1 - s1[l]
            d2.append(stage(Mux(diff > limit, limit, diff)[:self.d_bits], f"d2_{l}"))
        r2 = stage(r1, "r2")

        # S3: t = round_shift(d * log2e_M, 30 + frac_in - 20)
        v3 = stage(v2, "v3")
        meta3 = {k: stage(v, f"{k}3") for k, v in meta2.items()}
        inrow3 = [stage(v, f"inrow3_{l}") for l, v in enumerate(inrow2)]
        # d * log2e_M by the constant's signed digits in the fabric (hw/sfu_mul.py const_product):
        # the bank's one product per lane is e * r below, so both passes keep one beat per cycle
        t3 = [stage(((const_product(m, d2[l], golden_sfu._LOG2E_M, name=f"dlog2e_{l}") + (1 << (self.t_shift - 1)))
                     >> self.t_shift)[:golden_sfu.EXP_FRAC + 6], f"t3_{l}") for l in range(L)]
        r3 = stage(r2, "r3")
        m.d.comb += advance.eq(~v3 | exp.i.ready)

        # Exp2Neg (3 stages) with the beat's metadata as its tag
        tag_in = Signal(self.tag_bits)
        m.d.comb += tag_in.eq(Cat_(meta3["pass_"], meta3["count"], meta3["first"], meta3["last"],
                                   *inrow3, r3, widths=(2, self.count_bits, 1, 1) + (1,) * L + (32,)))
        m.d.comb += [exp.i.valid.eq(v3), exp.i.payload.tag.eq(tag_in)]
        for l in range(L):
            m.d.comb += exp.i.payload.t[l].eq(t3[l])
        tag = exp.o.payload.tag
        pos = 0
        fields = {}
        for name, w in (("pass_", 2), ("count", self.count_bits), ("first", 1), ("last", 1)):
            fields[name] = tag[pos:pos + w]
            pos += w
        inrow_e = [tag[pos + l] for l in range(L)]
        pos += L
        r_e = tag[pos:pos + 32]

        # output stage: pass-1 sums, pass-2 probabilities
        out_advance = Signal()
        m.d.comb += exp.o.ready.eq(out_advance)
        fire_e = exp.o.valid & exp.o.ready
        vo = stage(fire_e, "vo", out_advance)
        meta_o = {k: stage(v, f"{k}_o", out_advance) for k, v in fields.items()}
        sh = 62 - self.frac_out
        for l in range(L):
            m.d.comb += [bank.a[l].eq(exp.o.payload.e[l]), bank.b[l].eq(r_e)]   # e * r on the bank
        p_o = [stage(Mux(inrow_e[l], (bank.p[l][:64].as_unsigned() + (1 << (sh - 1))) >> sh, 0)[:32],
                     f"p_o_{l}", out_advance) for l in range(L)]
        m.d.comb += [
            self.o.valid.eq(vo & (meta_o["pass_"] == last_pass)),
            out_advance.eq(~self.o.valid | self.o.ready),
            self.o.payload.count.eq(meta_o["count"]), self.o.payload.first.eq(meta_o["first"]),
            self.o.payload.last.eq(meta_o["last"]), self.o.payload.pass_.eq(meta_o["pass_"]),
        ]
        for l in range(L):
            m.d.comb += self.o.payload.data[l].eq(p_o[l])

        # Z = sum(e) over the row's lanes, then r = 2**62 // Z on the divider
        acc_z = Signal(52)
        beat_z = sum((Mux(inrow_e[l], exp.o.payload.e[l], 0) for l in range(L)), Const(0, 52))
        z_go = Signal()
        z_pending = Signal()
        m.d.sync += z_go.eq(0)
        with m.If(fire_e & (fields["pass_"] == 1)):
            m.d.sync += [acc_z.eq(Mux(fields["first"], beat_z, acc_z + beat_z)),
                         z_go.eq(fields["last"])]
        with m.If(z_go):
            m.d.sync += z_pending.eq(1)
        m.d.comb += [div.i.valid.eq(z_pending), div.i.payload.num.eq(1 << 62),
                     div.i.payload.den.eq(acc_z), div.o.ready.eq(1)]
        with m.If(div.i.valid & div.i.ready):
            m.d.sync += z_pending.eq(0)
        with m.If(div.o.valid):
            m.d.sync += [row_r.eq(Mux(row_m > _MASKED, div.o.payload.quotient, 0)), r_ok.eq(1)]
        return m


def Cat_(*parts, widths):
    """Concatenate ``parts`` (LSB first), each truncated / zero-extended to its width."""
    from amaranth.hdl import Cat
    return Cat(*(p.as_unsigned()[:w] if len(p) >= w else Cat(p, Const(0, w - len(p)))
                 for p, w in zip(parts, widths)))


@register_unit("sfu_softmax")
def _softmax_unit(lanes: int = 4):
    """``olivine resources sfu_softmax --lanes 4``."""
    return Softmax(int(lanes)), f"sfu_softmax_l{lanes}"
