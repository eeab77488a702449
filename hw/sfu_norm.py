"""RMSNorm and LayerNorm op cores of the SFU, bit-exact with golden ``sfu.rmsnorm`` /
``sfu.layernorm`` (docs/sfu.md, "RMSNorm" and "LayerNorm"; docs/isa.md MISC).

Three passes over each row (``passes = 3``), streamed by the SFU top level:

0. **reduce**: RMSNorm ``max|x|``; LayerNorm ``sum(x)``, ``max(x)``, ``min(x)`` (then
   ``max|c| = max(d*max - S, S - d*min)`` for ``c = d*x - S`` without a second look at the row);
   the alignment shifts ``sh`` (and ``sh2``) and the eps term ``E(sh)`` follow in 2 cycles.
1. **sum of squares** of ``cs = round_shift(c, sh)``; at the row's end ``T = S + E`` goes to
   :class:`~olivine.hw.sfu_arith.RsqrtNorm` (35 cycles), then ``G = round_shift(R * sqrt_mult,
   24)`` and the output shift are registered.
2. **normalise**: ``n = round_shift(round_shift(c, sh2) * G, shift - sh2)``,
   ``y = saturate32(round_shift(n * gamma (+ beta * 2**24), 24 + frac_gamma - frac_out))``;
   one output beat per input beat.

Products: every lane's products are on its multiplier of the SFU's shared bank (hw/sfu_mul.py,
``shared_mul=True``; a private bank otherwise): the squares and ``c * G`` from stage S3, ``n *
gamma`` from S4 in the next cycle, so a multiplying beat never enters right behind a pass-2 beat
(pass 2 takes a beat per two cycles, as its gains share the read port anyway); ``R * sqrt_mult``
once per row on lane 0 while no beat multiplies; ``d * eps_mult`` by shift-and-add.

Why three passes and not two: golden aligns each row to a 23-bit mantissa *before* squaring,
with a shift that depends on the row maximum, so the maximum must be known before the first
square; two passes would need either one squarer per possible shift (10 for int32 rows) per lane
or a NORM_MAX_DIM x 32-bit row buffer (512 Kib, 16 RAMB36) per core. The third pass costs one
more read of the row from the on-chip buffer.

Ports (the row-core interface shared with hw/sfu.py)
-----
i : In(stream.Signature(row_beat_layout(lanes)))   -- the row, ``passes`` times
g : In(stream.Signature(row_beat_layout(lanes)))   -- gamma in ``data`` (LayerNorm: and beta,
    see :data:`NORM_G_LAYOUT`), one beat per pass-2 input beat, consumed together with it
o : Out(stream.Signature(row_beat_layout(lanes)))  -- pass-2 beats only, same count/first/last
    (``pass_`` = 2); lanes >= count are 0
params : In(norm_params_layout())  -- ``cols`` (d), ``eps_mult``/``eps_shift``
    (``quantize_multiplier(eps)``, LayerNorm: of ``eps * d**2``), ``sqrt_mult``/``sqrt_shift``
    (``quantize_multiplier(sqrt(d))``); :func:`norm_params` computes them as golden does.
    Stable for the whole instruction.

Latency: a pass-2 beat leaves 7 cycles after it is accepted; pass-1 beats of a row wait 3
cycles after the row's last pass-0 beat was accepted (stats), pass-2 beats ``4 + 35 + 2``
cycles after the last pass-1 beat (squares, rsqrt, G). Throughput one beat (``lanes``
elements) per cycle in passes 0 and 1, one per two cycles in pass 2 (its two products per
lane); per row of ``d`` elements about ``4 * ceil(d / lanes) + 45`` cycles fed at full rate (the
SFU feeds pass 2 at a beat per two cycles anyway: its gains share the read port).
"""

from __future__ import annotations

import math

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olivine.golden import fixed_scalar as fixed
from olivine.golden import sfu_tables as golden_sfu

from .ovp_decoder import quiet_rejection
from .resources import register_unit
from .sfu_core import reduce_tree
from .sfu_mul import mul_signature, multiplier_port, shift_add_product
from .sfu_arith import (RsqrtNorm, SfuArithError, bit_length, round_shift, round_shift_signed,
                        row_beat_layout, saturate)

__all__ = ["RMSNorm", "LayerNorm", "norm_params", "norm_params_layout", "NORM_LATENCY"]

#: cycles from an accepted pass-2 beat to its output beat
NORM_LATENCY = 7
_MAX_DIM = golden_sfu.NORM_MAX_DIM


def norm_params_layout() -> data.StructLayout:
    return data.StructLayout({
        "cols": range(_MAX_DIM + 1),
        "eps_mult": unsigned(31), "eps_shift": signed(8),
        "sqrt_mult": unsigned(31), "sqrt_shift": signed(8),
    })


def norm_params(cols: int, eps: float, *, centered: bool = False) -> dict:
    """The ``params`` values golden uses for a row of ``cols`` elements (plain ints):
    ``quantize_multiplier(eps)`` (LayerNorm: ``eps * cols**2``) and ``quantize_multiplier(sqrt(cols))``."""
    if isinstance(cols, bool) or not isinstance(cols, int) or not 1 <= cols <= _MAX_DIM:
        raise SfuArithError(f"cols={cols!r} must be an int in [1, {_MAX_DIM}]")
    em, es = fixed.quantize_multiplier(eps * cols * cols if centered else eps)
    sm, ss = fixed.quantize_multiplier(math.sqrt(cols))
    return {"cols": cols, "eps_mult": em, "eps_shift": es, "sqrt_mult": sm, "sqrt_shift": ss}


class _NormCore(wiring.Component):
    passes = 3
    centered = False

    @quiet_rejection
    def __init__(self, lanes: int = 4, frac_in: int = 16, frac_gamma: int = 16,
                 frac_out: int = 16, *, shared_mul: bool = False):
        if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 256:
            raise SfuArithError(f"lanes={lanes!r} must be an int in [1, 256]")
        for name, f in (("frac_in", frac_in), ("frac_gamma", frac_gamma), ("frac_out", frac_out)):
            if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= 30:
                raise SfuArithError(f"{name}={f!r} must be an int in [0, 30]")
        self.out_shift = golden_sfu.NORM_FRAC + frac_gamma - frac_out
        if self.out_shift < 0:
            raise SfuArithError(f"frac_out={frac_out} > 24 + frac_gamma={frac_gamma}: the output "
                                f"left shift is not supported in hardware")
        self.lanes, self.frac_in, self.frac_gamma, self.frac_out = lanes, frac_in, frac_gamma, frac_out
        self.rsqrt = RsqrtNorm()
        beat = row_beat_layout(lanes)
        g_layout = beat if not self.centered else data.StructLayout({
            "data": data.ArrayLayout(data.StructLayout({"gamma": signed(32), "beta": signed(32)}), lanes),
            "count": range(lanes + 1), "first": 1, "last": 1, "pass_": 2})
        self.shared_mul = shared_mul
        members = {
            "i": In(stream.Signature(beat)),
            "g": In(stream.Signature(g_layout)),
            "o": Out(stream.Signature(beat)),
            "params": In(norm_params_layout()),
        }
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    @property
    def latency(self) -> int:
        return NORM_LATENCY

    def elaborate(self, platform):
        m = Module()
        m.submodules.rsqrt = rsqrt = self.rsqrt
        L, P = self.lanes, self.params
        bank = multiplier_port(m, self, L)
        last_pass = self.passes - 1
        c_bits = 48 if self.centered else 32

        # ---------------------------------------------------------------- handshake
        advance = Signal()
        stats_ok, norm_ok = Signal(), Signal()
        behind_norm = Signal()
        ib = self.i.payload
        is_norm_beat = ib.pass_ == last_pass
        allowed = Mux(ib.pass_ == 0, 1, Mux(ib.pass_ == 1, stats_ok, norm_ok & self.g.valid))
        # one bank product per lane and cycle: a pass-2 beat multiplies in S3 -> S4 and S4 -> S5, so a
        # multiplying beat (pass 1 or 2) never enters right behind a pass-2 beat (set after S1 below;
        # pass-2 beats come every other cycle anyway: the gains share the read port)
        allowed = allowed & ~(behind_norm & (ib.pass_ != 0))
        m.d.comb += [
            self.i.ready.eq(advance & allowed),
            self.g.ready.eq(advance & self.i.valid & is_norm_beat & norm_ok & ~behind_norm),
        ]
        accept = self.i.valid & self.i.ready
        with m.If(accept & (ib.pass_ == 0) & ib.first):
            m.d.sync += [stats_ok.eq(0), norm_ok.eq(0)]

        # row scalars (set by the stats / rsqrt sequencers, captured by each beat at entry)
        row_sh = Signal(5)
        row_sh2 = Signal(4)
        row_sum = Signal(signed(47))
        row_e = Signal(62)
        row_g = Signal(28)
        row_shift = Signal(signed(8))

        def stage(value, name):
            reg = Signal.like(value, name=name)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        # ---------------------------------------------------------------- S1: input registers
        v1 = stage(accept, "v1")
        meta1 = {k: stage(getattr(ib, k), f"{k}1") for k in ("pass_", "count", "first", "last")}
        m.d.comb += behind_norm.eq(v1 & (meta1["pass_"] == last_pass))
        x1 = [stage(ib.data[l], f"x1_{l}") for l in range(L)]
        mask1 = [stage(ib.count > l, f"mask1_{l}") for l in range(L)]
        if self.centered:
            gam1 = [stage(self.g.payload.data[l].gamma, f"gamma1_{l}") for l in range(L)]
            bet1 = [stage(self.g.payload.data[l].beta, f"beta1_{l}") for l in range(L)]
        else:
            gam1 = [stage(self.g.payload.data[l], f"gamma1_{l}") for l in range(L)]
            bet1 = None
        sh1, sh2_1 = stage(row_sh, "sh1"), stage(row_sh2, "sh2_1")
        sum1, g1, shift1 = stage(row_sum, "sum1"), stage(row_g, "g1"), stage(row_shift, "shift1")

        # pass-0 reduction from S1
        stats_go = Signal()
        red0 = advance & v1 & (meta1["pass_"] == 0)
        m.d.sync += stats_go.eq(0)
        d = P.cols
        if self.centered:
            acc_sum = Signal(signed(47))
            acc_max = Signal(signed(32))
            acc_min = Signal(signed(32))
            beat_sum = sum((Mux(mask1[l], x1[l], 0) for l in range(L)), Const(0, signed(47)))
            # lanes past count take lane 0's value (always valid): the same max and min
            valid_x = [x1[0]] + [Mux(mask1[l], x1[l], x1[0]) for l in range(1, L)]
            beat_max = reduce_tree(m, valid_x, lambda a, b: Mux(a > b, a, b), signed(32), "beat_max")
            beat_min = reduce_tree(m, valid_x, lambda a, b: Mux(a < b, a, b), signed(32), "beat_min")
            with m.If(red0):
                with m.If(meta1["first"]):
                    m.d.sync += [acc_sum.eq(beat_sum), acc_max.eq(beat_max), acc_min.eq(beat_min)]
                with m.Else():
                    m.d.sync += [acc_sum.eq(acc_sum + beat_sum),
                                 acc_max.eq(Mux(beat_max > acc_max, beat_max, acc_max)),
                                 acc_min.eq(Mux(beat_min < acc_min, beat_min, acc_min))]
                m.d.sync += stats_go.eq(meta1["last"])
            hi = d * acc_max - acc_sum
            lo = acc_sum - d * acc_min
            max_c = Signal(47)
            m.d.comb += max_c.eq(Mux(hi > lo, hi, lo))
        else:
            acc_max = Signal(32)
            mags = [Mux(mask1[l], abs(x1[l]), 0) for l in range(L)]
            beat_max = reduce_tree(m, mags, lambda a, b: Mux(a > b, a, b), unsigned(32), "beat_max")
            with m.If(red0):
                m.d.sync += acc_max.eq(Mux(meta1["first"] | (beat_max > acc_max), beat_max, acc_max))
                m.d.sync += stats_go.eq(meta1["last"])
            max_c = acc_max

        # stats sequencer: cycle 1 shifts, cycle 2 the eps term E(sh)
        stats_e = Signal()
        m.d.sync += stats_e.eq(0)
        with m.If(stats_go):
            bl = Signal(6)
            m.d.comb += bl.eq(bit_length(max_c))
            m.d.sync += [row_sh.eq(Mux(bl > golden_sfu.NORM_MANT_BITS, bl - golden_sfu.NORM_MANT_BITS, 0)),
                         row_sh2.eq(Mux(bl > 32, bl - 32, 0)), stats_e.eq(1)]
            if self.centered:
                m.d.sync += row_sum.eq(acc_sum)
        with m.If(stats_e):
            e_shift = Signal(signed(9))
            m.d.comb += e_shift.eq(P.eps_shift - 2 * self.frac_in + 2 * row_sh)
            dm = Signal(46)
            # once per row, on the fabric (the bank's lanes may still hold the last row's beats)
            m.d.comb += dm.eq(shift_add_product(m, P.eps_mult, d, name="eps_d"))
            clamped = Signal(signed(9))
            m.d.comb += clamped.eq(Mux(e_shift > 63, 63, e_shift))
            m.d.sync += [row_e.eq(round_shift_signed(dm, clamped, max_right=63, max_left=63)),
                         stats_ok.eq(1)]

        # ---------------------------------------------------------------- S2: c
        v2 = stage(v1, "v2")
        meta2 = {k: stage(v, f"{k}2") for k, v in meta1.items()}
        mask2 = [stage(v, f"mask2_{l}") for l, v in enumerate(mask1)]
        if self.centered:
            c2 = [stage((d * x1[l] - sum1)[:c_bits].as_signed(), f"c2_{l}") for l in range(L)]
        else:
            c2 = [stage(x1[l], f"c2_{l}") for l in range(L)]
        gam2 = [stage(v, f"gamma2_{l}") for l, v in enumerate(gam1)]
        bet2 = [stage(v, f"beta2_{l}") for l, v in enumerate(bet1)] if bet1 else None
        sh2, sh2_2, g2, shift2 = (stage(sh1, "sh_2"), stage(sh2_1, "sh2_2"), stage(g1, "g_2"),
                                  stage(shift1, "shift_2"))

        # ---------------------------------------------------------------- S3: aligned operands
        v3 = stage(v2, "v3")
        meta3 = {k: stage(v, f"{k}3") for k, v in meta2.items()}
        mask3 = [stage(v, f"mask3_{l}") for l, v in enumerate(mask2)]
        squaring = meta2["pass_"] == 1
        op_a, op_b = [], []
        for l in range(L):
            cs = round_shift(c2[l], sh2, max_shift=31)[:25].as_signed()      # |cs| <= 2**23
            cn = round_shift(c2[l], sh2_2, max_shift=15)[:34].as_signed()    # |c2| <= 2**32
            op_a.append(stage(Mux(squaring, cs, cn), f"a3_{l}"))
            op_b.append(stage(Mux(squaring, cs, g2.as_signed()), f"b3_{l}"))
        gam3 = [stage(v, f"gamma3_{l}") for l, v in enumerate(gam2)]
        bet3 = [stage(v, f"beta3_{l}") for l, v in enumerate(bet2)] if bet2 else None
        shift3 = stage(shift2, "shift_3")

        # ---------------------------------------------------------------- S4: one multiply
        v4 = stage(v3, "v4")
        meta4 = {k: stage(v, f"{k}4") for k, v in meta3.items()}
        mask4 = [stage(v, f"mask4_{l}") for l, v in enumerate(mask3)]
        # product 1 on the bank, from the S3 operands (squares in pass 1, c * G in pass 2)
        prod4 = [stage(bank.p[l][:62].as_signed(), f"p4_{l}") for l in range(L)]
        gam4 = [stage(v, f"gamma4_{l}") for l, v in enumerate(gam3)]
        bet4 = [stage(v, f"beta4_{l}") for l, v in enumerate(bet3)] if bet3 else None
        shift4 = stage(shift3, "shift_4")

        # pass-1 reduction from S4: sum of squares, then T = S + E -> rsqrt
        acc_sq = Signal(61)
        sq_beat = sum((Mux(mask4[l], prod4[l].as_unsigned()[:47], 0) for l in range(L)),
                      Const(0, 61))
        t_pending = Signal()
        sq_done = Signal()
        m.d.sync += sq_done.eq(0)
        with m.If(advance & v4 & (meta4["pass_"] == 1)):
            m.d.sync += [acc_sq.eq(Mux(meta4["first"], sq_beat, acc_sq + sq_beat)),
                         sq_done.eq(meta4["last"])]
        with m.If(sq_done):
            m.d.sync += t_pending.eq(1)
        m.d.comb += [rsqrt.i.valid.eq(t_pending), rsqrt.i.payload.eq(acc_sq + row_e)]
        with m.If(rsqrt.i.valid & rsqrt.i.ready):
            m.d.sync += t_pending.eq(0)
        m.d.comb += rsqrt.o.ready.eq(1)
        with m.If(rsqrt.o.valid):
            r, u = rsqrt.o.payload.r, rsqrt.o.payload.u
            shift = P.sqrt_shift + 31 + u + row_sh - golden_sfu._G_SHIFT - golden_sfu.NORM_FRAC
            # R * sqrt_mult on lane 0 of the bank: no beat of the core multiplies now (the row's
            # squares are summed, its pass 2 and the next row wait for norm_ok)
            m.d.sync += [row_g.eq(round_shift(bank.p[0][:52].as_unsigned(), golden_sfu._G_SHIFT)),
                         row_shift.eq(shift - row_sh2), norm_ok.eq(1)]

        # ---------------------------------------------------------------- S5: n * gamma (+ beta)
        # n = round_shift(p, shift) and product 2 on the bank from the S4 values (the beat behind a
        # pass-2 beat never multiplies, see behind_norm)
        v5 = stage(v4, "v5")
        meta5 = {k: stage(v, f"{k}5") for k, v in meta4.items()}
        mask5 = [stage(v, f"mask5_{l}") for l, v in enumerate(mask4)]
        second = v4 & (meta4["pass_"] == last_pass)
        q5 = []
        for l in range(L):
            n4 = Signal(signed(40), name=f"n4_{l}")
            m.d.comb += n4.eq(round_shift_signed(prod4[l], shift4, max_right=63, max_left=31)[:40].as_signed())
            with m.If(second):
                m.d.comb += [bank.a[l].eq(n4), bank.b[l].eq(gam4[l])]
            with m.Else():
                m.d.comb += [bank.a[l].eq(op_a[l]), bank.b[l].eq(op_b[l])]
            q = bank.p[l][:66].as_signed()
            if bet4:
                q = q + (bet4[l] << golden_sfu.NORM_FRAC)
            q5.append(stage(q[:66].as_signed(), f"q5_{l}"))
        with m.If(rsqrt.o.valid):
            m.d.comb += [bank.a[0].eq(rsqrt.o.payload.r), bank.b[0].eq(P.sqrt_mult)]

        # ---------------------------------------------------------------- S6: a register (the latency)
        v6 = stage(v5, "v6")
        meta6 = {k: stage(v, f"{k}6") for k, v in meta5.items()}
        mask6 = [stage(v, f"mask6_{l}") for l, v in enumerate(mask5)]
        q6 = [stage(v, f"q6_{l}") for l, v in enumerate(q5)]

        # ---------------------------------------------------------------- S7: output
        v7 = stage(v6, "v7")
        meta7 = {k: stage(v, f"{k}7") for k, v in meta6.items()}
        y7 = [stage(Mux(mask6[l], saturate(round_shift(q6[l], self.out_shift), 32), 0), f"y7_{l}")
              for l in range(L)]
        m.d.comb += [
            self.o.valid.eq(v7 & (meta7["pass_"] == last_pass)),
            advance.eq(~self.o.valid | self.o.ready),
            self.o.payload.count.eq(meta7["count"]), self.o.payload.first.eq(meta7["first"]),
            self.o.payload.last.eq(meta7["last"]), self.o.payload.pass_.eq(meta7["pass_"]),
        ]
        for l in range(L):
            m.d.comb += self.o.payload.data[l].eq(y7[l])
        return m


class RMSNorm(_NormCore):
    """RMSNorm op core (golden ``sfu.rmsnorm``); see the module docstring for passes, ports,
    latency and throughput. ``g`` carries gamma (int32, ``frac_gamma`` bits) in ``data``."""

    centered = False


class LayerNorm(_NormCore):
    """LayerNorm op core (golden ``sfu.layernorm``, exact centering ``c = d*x - sum(x)``); see
    the module docstring. ``g.data[l]`` is a struct ``{gamma, beta}`` (int32 each)."""

    centered = True


@register_unit("sfu_rmsnorm")
def _rmsnorm_unit(lanes: int = 4):
    """``olivine resources sfu_rmsnorm --lanes 4``."""
    return RMSNorm(int(lanes)), f"sfu_rmsnorm_l{lanes}"


@register_unit("sfu_layernorm")
def _layernorm_unit(lanes: int = 4):
    """``olivine resources sfu_layernorm --lanes 4``."""
    return LayerNorm(int(lanes)), f"sfu_layernorm_l{lanes}"
