"""vshift op core of the SFU (docs/isa.md MISC ``vshift``), bit-exact with sim/funcsim.py.

``v`` = ``cols`` int8 V exponents at ``src1`` (any byte address), ``mv`` = ``cols`` uint16 V
mantissas right after them; per row ``e_ref = max(v[0..qpos])`` (``qpos = imm[15:0] + r mod
imm[31:16]``, period 0 = 1, as softmax's mask) and::

    dst[r, j] = round_shift(src0[r, j] * mv[j], max(8 + e_ref - v[j], 8))     (0 for shifts > 62)

then the rows' ``e_ref`` bytes (the P' block of docs/isa.md). ``|src0 * mv| < 2**39``, so every
shift >= 40 gives 0 as golden's > 62 rule does: the shifter stops at 40.

Three passes (``passes = 3``); passes 0 and 1 are streamed for the first row only (the SFU top
skips them for later rows):

0. the words covering ``v`` (``ceil((src1 % 4 + cols) / 4)`` words from ``src1 // 4``): a 0-3
   byte realignment (the top's aligner does the word rotation) joins each beat with the previous
   one into chunks of ``4 * lanes`` exponents, written to ``vbuf``; the running maximum at each
   chunk's end goes to ``pmax``;
1. the words covering ``mv`` likewise, chunks of ``2 * lanes`` mantissas to ``mbuf`` (9 bits); a
   mantissa above 256 sets ``error`` (the data rule; the top then writes nothing);
2. the row ``src0[r]``: at the row's first beat ``e_ref`` = max(``pmax[c - 1]``, the ``vbuf[c]``
   entries up to ``qpos``), ``c = qpos // (4 * lanes)`` (2 cycles), then one beat per cycle.

Why buffers (``vbuf``, ``mbuf``: ``max_cols`` x 17 bits, ``pmax``: ``max_cols / (4 lanes)`` x 8
bits): ``v`` and ``mv`` are the same for every row, and streaming them with each row would need a
byte-granular aligner on a third stream and cost 1.75x the row's reads; loaded once per
instruction they cost ``3 * cols`` bytes of reads per instruction and the rows stream at full
rate (``lanes`` elements per cycle). ``max_cols`` is an elaboration parameter (default
``VSHIFT_MAX_COLS`` = 8192, SmolLM2's context).

Ports
-----
i : In(beat stream)   pass 0: v words, pass 1: mv words (32-bit lanes of bytes), pass 2: the row
o : Out(beat stream)  the P' values of each pass-2 beat
row_exp : Out(signed(8))  the row's ``e_ref``, valid with every ``o`` beat of the row
error : Out(1)  a V mantissa above 256 was loaded (held until the next instruction's first beat)
params : In(vshift_params_layout()) ``qpos_base``, ``qpos_period`` (imm), ``row`` (the row being
    streamed), ``cols``, ``off_v = src1 % 4``, ``off_m = (src1 + cols) % 4``

Latency: ``VSHIFT_LATENCY`` = 3 cycles from a pass-2 beat to its output; 1 cycle after each load
pass (the last chunk's write), 2 cycles before each row (``e_ref``). Throughput: one beat per cycle.
Multipliers: one 32 x 9 product per lane (``_product``, the one place it is built).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .resources import register_unit
from .sfu_mul import mul_signature, multiplier_port
from .sfu_core import beat_signature

__all__ = ["VSHIFT_LATENCY", "VSHIFT_MAX_COLS", "VSHIFT_MAX_MANTISSA", "VshiftCore", "vshift_params_layout"]

VSHIFT_LATENCY = 3
VSHIFT_MAX_COLS = 8192
VSHIFT_MAX_MANTISSA = 256         # docs/isa.md data rule (golden contract MAX_MANTISSA)
_SHIFT_CAP = 40                   # |p * mv| < 2**39: shifts >= 40 round to 0


def vshift_params_layout() -> data.StructLayout:
    return data.StructLayout({"qpos_base": unsigned(16), "qpos_period": unsigned(16), "row": unsigned(16),
                              "cols": unsigned(20), "off_v": 2, "off_m": 2})


def _max_tree(m, values, name):
    level = list(values)
    n = 0
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level) - 1, 2):
            s = Signal(signed(8), name=f"{name}{n}")
            n += 1
            m.d.comb += s.eq(Mux(level[k] > level[k + 1], level[k], level[k + 1]))
            nxt.append(s)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class VshiftCore(wiring.Component):
    """vshift op core; see the module docstring for passes, ports, latency and buffers."""

    passes = 3
    operands = 1
    latency = VSHIFT_LATENCY

    def __init__(self, lanes: int, max_cols: int = VSHIFT_MAX_COLS, *, shared_mul: bool = False):
        if isinstance(max_cols, bool) or not isinstance(max_cols, int) or max_cols < 1:
            raise ValueError(f"max_cols={max_cols!r} must be a positive int")
        self.lanes, self.max_cols, self.shared_mul = lanes, max_cols, shared_mul
        members = {"i": In(beat_signature(lanes)), "o": Out(beat_signature(lanes)),
                   "row_exp": Out(signed(8)), "error": Out(1), "params": In(vshift_params_layout())}
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    def _product(self, m, p, mv, enable, lane):
        """---- the product of the core: ``p * mv`` (32 x 9 bits) on lane ``lane`` of the SFU's
        multiplier bank (hw/sfu_mul.py), registered when ``enable`` ----"""
        prod = Signal(signed(42), name=f"prod{lane}")
        m.d.comb += [self._bank.a[lane].eq(p), self._bank.b[lane].eq(mv)]
        with m.If(enable):
            m.d.sync += prod.eq(self._bank.p[lane][:42])
        return prod

    def elaborate(self, platform):
        m = Module()
        self._bank = multiplier_port(m, self, self.lanes)
        L, P = self.lanes, self.params
        lb = L.bit_length() - 1
        cw = 4 * L                                   # bytes per beat = exponents per vbuf chunk
        v_depth = -(-self.max_cols // cw)            # (a load pass's last beat may only hold bytes past cols:
        m_depth = -(-self.max_cols // (2 * L))       #  chunks at or past cols are not written)
        m.submodules.vbuf = vbuf = Memory(shape=unsigned(8 * cw), depth=v_depth, init=[])
        m.submodules.mbuf = mbuf = Memory(shape=unsigned(9 * 2 * L), depth=m_depth, init=[])
        m.submodules.pmax = pmax = Memory(shape=signed(8), depth=v_depth, init=[])
        v_wr, v_rd = vbuf.write_port(), vbuf.read_port()
        m_wr, m_rd = mbuf.write_port(), mbuf.read_port()
        p_wr, p_rd = pmax.write_port(), pmax.read_port()

        ib = self.i.p
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        # ---- load passes 0 / 1: byte realignment, chunk writes, the mantissa rule
        flushing = Signal()                          # the cycle after a load pass's last beat
        fl_pass = Signal()
        carry = Signal(8 * cw)
        chunk = Signal(range(max(v_depth, m_depth) + 1))
        run_max = Signal(signed(8))
        err = Signal()
        m.d.comb += self.error.eq(err)
        load = self.i.valid & (ib.pass_ != 2) & ~flushing
        in_bytes = Cat(*[ib.data[j].as_unsigned() for j in range(L)])
        off = Mux(ib.pass_ == 0, P.off_v, P.off_m)
        rot = Signal(8 * cw)                         # R[t] = B[(t + off) mod 4L]
        with m.Switch(Mux(flushing, 0, off)):
            for o in range(4):
                with m.Case(o):
                    m.d.comb += rot.eq(in_bytes.rotate_right(8 * o))
        joined = Signal(8 * cw)                      # chunk - 1: carry bytes below 4L - off, then R
        keep = Signal(range(cw + 1))
        m.d.comb += keep.eq(cw - off)
        for t in range(cw):
            m.d.comb += joined[8 * t: 8 * t + 8].eq(Mux(flushing | (t < keep), carry[8 * t: 8 * t + 8], rot[8 * t: 8 * t + 8]))
        write_chunk = Signal()
        w_index = Signal.like(chunk)
        with m.If(flushing):
            m.d.comb += [write_chunk.eq(1), w_index.eq(chunk)]
            m.d.sync += [flushing.eq(0), chunk.eq(0)]
        with m.Elif(load):
            m.d.sync += carry.eq(rot)
            with m.If(ib.first & (ib.pass_ == 0)):   # a new instruction
                m.d.sync += [run_max.eq(-128), err.eq(0)]
            with m.If(~ib.first):
                m.d.comb += [write_chunk.eq(1), w_index.eq(chunk)]
                m.d.sync += chunk.eq(chunk + 1)
            with m.Else():
                m.d.sync += chunk.eq(0)
            with m.If(ib.last):
                m.d.sync += [flushing.eq(1), fl_pass.eq(ib.pass_[0])]
        is_mv = Mux(flushing, fl_pass, ib.pass_[0])

        # exponents: chunk entries below cols count for the running maximum
        base_index = w_index << (lb + 2)
        tree_in = []
        er_state = Signal(2)                         # 0: row needs e_ref, 1: reads done, 2: e_ref valid
        q_lo = Signal(lb + 2)
        q_first = Signal()
        for t in range(cw):
            load_byte = Mux(base_index + t < P.cols, joined[8 * t: 8 * t + 8].as_signed(), -128)
            row_byte = Mux((t <= q_lo) if t else Const(1), v_rd.data[8 * t: 8 * t + 8].as_signed(), -128)  # (t = 0: always)
            tree_in.append(Mux(er_state == 1, row_byte, load_byte))
        chunk_max = _max_tree(m, tree_in, "vmax")
        new_max = Mux(chunk_max > run_max, chunk_max, run_max)
        v_in = Signal()
        m.d.comb += v_in.eq(base_index < P.cols)
        m.d.comb += [v_wr.addr.eq(w_index), v_wr.data.eq(joined), v_wr.en.eq(write_chunk & ~is_mv & v_in),
                     p_wr.addr.eq(w_index), p_wr.data.eq(new_max), p_wr.en.eq(write_chunk & ~is_mv & v_in)]
        with m.If(write_chunk & ~is_mv):
            m.d.sync += run_max.eq(new_max)
        # mantissas: 2L little-endian uint16 per chunk, kept as 9 bits; > 256 breaks the data rule
        mant = [joined[16 * u: 16 * u + 16] for u in range(2 * L)]
        m_base = w_index << (lb + 1)
        too_big = Cat(*[(m_base + u < P.cols) & (mant[u] > VSHIFT_MAX_MANTISSA) for u in range(2 * L)]).any()
        m.d.comb += [m_wr.addr.eq(w_index), m_wr.data.eq(Cat(*[x[:9] for x in mant])), m_wr.en.eq(write_chunk & is_mv & (m_base < P.cols))]
        with m.If(write_chunk & is_mv & too_big):
            m.d.sync += err.eq(1)

        # ---- pass 2: e_ref at the row's start, then one beat per cycle
        phase, period = Signal(16), Signal(17)
        m.d.comb += period.eq(Mux(P.qpos_period == 0, 1, P.qpos_period))
        phase_now = Signal(16)
        m.d.comb += phase_now.eq(Mux(P.row == 0, 0, Mux(phase + 1 >= period, 0, phase + 1)))
        qpos = Signal(17)
        m.d.comb += qpos.eq(P.qpos_base + phase_now)
        e_ref = Signal(signed(8))
        row_head = self.i.valid & (ib.pass_ == 2) & ib.first & ~flushing
        k = Signal(range(self.max_cols // L + 2))
        k_now = Signal.like(k)
        m.d.comb += k_now.eq(Mux(ib.first, 0, k))
        c_of_q = qpos >> (lb + 2)
        start_er = row_head & (er_state == 0) & advance
        m.d.comb += [v_rd.addr.eq(Mux(er_state == 0, c_of_q, k_now >> 2)), v_rd.en.eq(advance),
                     p_rd.addr.eq(c_of_q - 1), p_rd.en.eq(start_er),
                     m_rd.addr.eq(k_now >> 1), m_rd.en.eq(advance)]
        with m.If(start_er):
            m.d.sync += [er_state.eq(1), phase.eq(phase_now), q_lo.eq(qpos[:lb + 2]), q_first.eq(c_of_q == 0)]
        with m.If(er_state == 1):
            m.d.sync += [e_ref.eq(Mux(q_first | (chunk_max > p_rd.data), chunk_max, p_rd.data)), er_state.eq(2)]
        m.d.comb += self.i.ready.eq(~flushing & Mux(ib.pass_ != 2, 1, advance & ((er_state == 2) | ~ib.first)))
        take = self.i.valid & self.i.ready & (ib.pass_ == 2)
        with m.If(take):
            m.d.sync += k.eq(k_now + 1)
            with m.If(ib.last):
                m.d.sync += er_state.eq(0)

        # stages: 1 operands + buffer words, 2 products and shifts, 3 rounded results
        meta_layout = data.StructLayout({"count": range(L + 1), "first": 1, "last": 1, "e": signed(8)})
        v1, v2, v3 = Signal(), Signal(), Signal()
        meta1, meta2, meta3 = Signal(meta_layout), Signal(meta_layout), Signal(meta_layout)
        qsel1, hsel1 = Signal(2), Signal()
        p1 = [Signal(signed(32), name=f"p1_{l}") for l in range(L)]
        with m.If(advance):
            m.d.sync += [v1.eq(take), meta1.count.eq(ib.count), meta1.first.eq(ib.first), meta1.last.eq(ib.last),
                         meta1.e.eq(e_ref), qsel1.eq(k_now[:2]), hsel1.eq(k_now[0]),
                         v2.eq(v1), meta2.eq(meta1), v3.eq(v2), meta3.eq(meta2)]
            m.d.sync += [p1[l].eq(ib.data[l]) for l in range(L)]
        vq = [Signal(8 * L, name=f"vq{q}") for q in range(4)]
        for q in range(4):
            m.d.comb += vq[q].eq(v_rd.data[8 * L * q: 8 * L * (q + 1)])
        v_word = Signal(8 * L)
        with m.Switch(qsel1):
            for q in range(4):
                with m.Case(q):
                    m.d.comb += v_word.eq(vq[q])
        m_word = Mux(hsel1, m_rd.data[9 * L:], m_rd.data[:9 * L])
        outs = []
        for l in range(L):
            v = v_word[8 * l: 8 * l + 8].as_signed()
            mv = m_word[9 * l: 9 * l + 9]
            d = Signal(signed(10), name=f"d{l}")
            m.d.comb += d.eq(meta1.e - v)
            sh2 = Signal(range(_SHIFT_CAP + 1), name=f"sh{l}")
            with m.If(advance):   # max(8 + e_ref - v, 8), capped at 40
                m.d.sync += sh2.eq(Mux(d <= 0, 8, Mux(d >= _SHIFT_CAP - 8, _SHIFT_CAP, 8 + d)))
            prod = self._product(m, p1[l], mv, advance, l)
            half = Signal(signed(42), name=f"half{l}")
            m.d.comb += half.eq(Const(1, 42) << (sh2 - 1).as_unsigned()[:6])
            y = Signal(signed(32), name=f"vs{l}")
            with m.If(advance):
                m.d.sync += y.eq(((prod + half) >> sh2)[:32])
            outs.append(y)
        m.d.comb += [self.o.valid.eq(v3), self.o.p.count.eq(meta3.count), self.o.p.first.eq(meta3.first),
                     self.o.p.last.eq(meta3.last), self.o.p.pass_.eq(2), self.row_exp.eq(meta3.e)]
        for l in range(L):
            m.d.comb += self.o.p.data[l].eq(Mux(l < meta3.count, outs[l], 0))
        return m


@register_unit("sfu_vshift")
def _vshift_unit(lanes: int = 4, max_cols: int = VSHIFT_MAX_COLS):
    """``olivine resources sfu_vshift --lanes 16 --max_cols 8192``."""
    return VshiftCore(int(lanes), int(max_cols)), f"sfu_vshift_l{lanes}_c{max_cols}"
