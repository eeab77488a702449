"""The matrix engine's W4A4 path: MM / MV with ``afmt=ovp4`` on OliVe's OVP systolic array.

Computes the accumulators ``acc = wrap32(A W^T)`` of a ``mode=linear``, ``wfmt=ovp4``, ``afmt=ovp4``
instruction (docs/isa.md "MM / MV": A = OVP4 block ``[m, K]`` of pair codes at ``a_addr``, normal
``anormal``; W = the ovp4 weight tile ``[n, K]`` at ``b_addr``, normal ``normal``) and hands them to
the matrix engine's writer as the same records the DSP chains' collector produces (2 tokens x C
columns of int32 sums), so ``out`` (int32 / fixed32 / int8), ``bias`` and ``accumulate`` are the
engine's own writer and requantizer (hw/mpe.py), bit-exact with ``FuncSim.do_mpe`` by construction of
the shared back end.

Why the array and not an OVP decoder in front of the chains: decoded OVP4 activations reach +-192
(9 bits) but the chains' activation port packs two signed 8-bit tokens per DSP (x1 << 18 + x0, 18-bit
lanes sized for |a| <= 128); feeding them would need two passes per block or a chain with other
lane arithmetic. The OVP array (hw/ovp_array.py, verified standalone against the golden integer
matmul) multiplies the decoded (exponent, 4-bit integer) operands as OliVe's shift-MAC PEs do, in
fabric, with decoders only on its borders, so the W4A4 product costs no DSP and no change to the
chains. Its output tile is ``2 * token_pairs`` rows x C columns, i.e. whole writer records.

Data flow, per column group cg (columns cb = C cg .. cb + C - 1), per token tile (2P tokens from t0),
per segment s of 16 pair codes (32 elements of K; the last one 8 pairs when k_blocks is odd):
  * Segment loader: per token two 16-byte data-space reads (the 16 pair codes at any byte offset,
    through ``act_req`` / ``act_grant``: the engine's writer has priority on the port), per column
    two weight-word reads (its 16 bytes at any offset); A and W reads run in parallel; the segment
    goes into a 2-deep FIFO (loading overlaps the array's use of the previous one).
  * Feeder: one pair transfer per array step (the array takes one every 2 cycles): pair j of every
    token row and every column; ``last`` on the final pair of the tile; the tile's (cb, t0) into a
    tag FIFO.
  * Drainer: the array's 2P result rows; rows (2p, 2p + 1) form record {y[0..C) = token t0 + 2p,
    y[C..2C) = token t0 + 2p + 1, cb, t0 + 2p}; a record whose first token is >= m is dropped.
Columns >= n and tokens >= m are computed from clamped addresses and never written (the writer
skips them).

Ports (the engine connects all of them; everything is one clock domain and correct under the
core's ``EnableInserter`` freeze: no state moves in a frozen cycle, and the engine holds granted
read data until its next enabled cycle):
  start      In(1)   pulse: begin the instruction in ``fields`` (held by the engine while busy)
  fields     In(the MM / MV field layout of hw/controller.unit_layout("mpe"))
  busy       Out(1)  a segment, tile or record is still in flight
  act_req    Out(1), act_addr Out(aw): a data-space word read request
  act_grant  In(1)   the request is performed this cycle (its data comes one cycle later)
  act_data   In(128) the data of the read granted in the previous (enabled) cycle
  weight_rd  ReadPort(weight words, 16C bytes): the path is its only user during afmt=ovp4
  record     Out(stream.Signature(record_layout)): the engine's result record (y, cb, t0)
Latency / throughput: a tile of depth K takes K + (2P + C - 1) + 2P + 2 cycles in the array
(one K element per cycle per PE, 2 cycles per pair transfer), i.e. 2P x C multiply-accumulates per
cycle; the first segment of an instruction arrives max(4P, 2C) + 3 cycles after ``start``; a
segment's reads (4P data-space words, 2C weight words, in parallel) hide behind the array's 32
cycles for it while C <= 8; from C = 16 the weight reads set the pace (2C + 2 per segment).
:func:`ovp_cycles` is the model (hw.mpe.mpe_cycles uses it).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from .ovp_array import LINT_WAIVERS as ARRAY_LINT_WAIVERS
from .ovp_array import OvpSystolicArray
from .ovp_decoder import quiet_rejection
from .resources import register_unit

__all__ = ["LINT_WAIVERS", "OvpMatrixPath", "ovp_cycles", "SEGMENT_PAIRS"]

_ALIAS = ("Amaranth debug alias: a second name (a view field, a stream payload, a FIFO port, a submodule "
          "port) for a net the logic reads under its first name; the alias itself is never read")
#: Verilator -Wall findings of the standalone path (``lint(verilog(path), top, waivers=LINT_WAIVERS)``);
#: inside the engine, hw.mpe.LINT_WAIVERS covers the same aliases.
LINT_WAIVERS: dict[str, str] = {
    **ARRAY_LINT_WAIVERS,
    "UNUSEDSIGNAL:fields*": "the path takes the engine's whole latched instruction and reads only m, n, k_blocks, "
                            "a_addr, b_addr, normal and anormal; the other fields are unused inputs by design",
    **{f"UNUSEDSIGNAL:{name}": _ALIAS for name in (
        "seg*", "head*", "rec*", "otag*", "record__payload*", "results__payload*", "a__payload*", "b__payload*",
        "r_data", "w_data", "row_bytes", "a_word", "w_word", "a_flint", "b_flint", "tag*", "t0p", "y_even*",
        "consume", "produce", "b__ready", "r_level", "w_level", "r_port__data")},
}

#: pair codes of one segment: one 16-byte data-space word per token row
SEGMENT_PAIRS = 16
#: segments buffered between the loader and the feeder
SEGMENT_FIFO_DEPTH = 2


def _funnel16(lo, hi, offset):
    """Bytes [offset, offset + 16) of the 32-byte little-endian string lo ++ hi (offset 0..15)."""
    return (Cat(lo, hi) >> Cat(Const(0, 3), offset))[:128]


def ovp_cycles(fields: dict, chains: int, requant_latency: int, token_pairs: int = 1) -> int:
    """Cycles from the accepted ``inst`` to ``done`` of a valid afmt=ovp4 MM / MV (the part of
    hw.mpe.mpe_cycles for this path; tests/test_hw_mpe_ovp.py checks it against the RTL).

    2 check cycles; with ``out`` != int32 the prescan of the n multipliers (n + 2); the first
    segment's reads (max(4P, 2C) + 3); per (column group, token tile) the slower of the array's
    tile (K cycles of pair steps, the flush 2P + C - 1, the 2P drain rows, 2 of hand-over; or its
    segments' reads, max(4P, 2C) + 2 each, when longer) and the
    writer's P records (each 2C value slots, + one read per value with ``accumulate``, its
    parameters); then the last tile's writer and the requantizer's latency.
    """
    P, C = token_pairs, chains
    m, n, kb = fields["m"], fields["n"], fields["k_blocks"]
    out, accumulate = fields.get("out", 0), fields.get("accumulate", 0)
    # the array's tile, or the segment loads when the 2C weight reads outlast its 32 cycles per segment
    tile = max(16 * kb + (2 * P + C - 1) + 2 * P + 2, ((kb + 1) // 2) * (max(4 * P, 2 * C) + 2))
    total = 2 + (n + 2 if out else 0) + max(4 * P, 2 * C) + 3
    writer = 0
    for cg in range(-(-n // C)):
        cols = min(C, n - cg * C)
        for base in range(0, m, 2 * P):      # a tile: its P records (those with a token < m)
            writer = 0
            for t0 in range(base, min(m, base + 2 * P), 2):
                tokens = min(2, m - t0)
                writer += 2 * C + (tokens * cols if accumulate else 0) + ((3 + (cols if t0 == 0 else 0)) if out else 0)
            total += max(tile, writer)
    return total + writer + (requant_latency if out else 0)


class OvpMatrixPath(wiring.Component):
    """The afmt=ovp4 path of the matrix engine (ports, latency and throughput: module docstring).

    Parameters: ``chains`` (C, a power of two: the array's columns and the record's columns),
    ``fields_layout`` (the engine's latched instruction fields), ``record_layout`` (the engine's
    result record: ``y`` 2C x unsigned(32), ``cb``, ``t0``), the data-space and weight-buffer
    geometry (``act_words``, ``weight_words``, ``weight_word_bytes`` = 16C), ``token_pairs`` (P:
    the array has 2P rows).
    """

    @quiet_rejection
    def __init__(self, *, chains: int, fields_layout, record_layout, act_words: int, weight_words: int,
                 weight_word_bytes: int, token_pairs: int = 1):
        if chains < 1 or chains & (chains - 1):
            raise ValueError(f"chains={chains}: the OVP path needs a power of two (one array column per chain)")
        if weight_word_bytes != 16 * chains:
            raise ValueError(f"the weight word must be 16 bytes per chain ({16 * chains}), not {weight_word_bytes}")
        if not isinstance(token_pairs, int) or token_pairs < 1:
            raise ValueError(f"token_pairs must be a positive integer, got {token_pairs!r}")
        self.chains, self.token_pairs = chains, token_pairs
        self.act_words, self.weight_words, self.wword_bytes = act_words, weight_words, weight_word_bytes
        self.record_layout = record_layout
        aw = max(1, (act_words - 1).bit_length())
        wwa = max(1, (weight_words - 1).bit_length())
        super().__init__({
            "start": In(1), "fields": In(fields_layout), "busy": Out(1),
            "act_req": Out(1), "act_addr": Out(aw), "act_grant": In(1), "act_data": In(128),
            "weight_rd": In(ReadPort.Signature(addr_width=wwa, shape=unsigned(8 * weight_word_bytes))),
            "record": Out(stream.Signature(record_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        C, P = self.chains, self.token_pairs
        T = 2 * P                                   # token rows of the array
        W = self.wword_bytes
        wlog = (W - 1).bit_length()
        f = self.fields
        row_bytes = Signal(16)                      # K / 2: pair codes per row (A and W)
        segments = Signal(12)                       # segments per row: ceil(k_blocks / 2)
        m.d.comb += [row_bytes.eq(f.k_blocks << 3), segments.eq((f.k_blocks + 1) >> 1)]

        seg_layout = data.StructLayout({
            "a": data.ArrayLayout(unsigned(128), T), "b": data.ArrayLayout(unsigned(128), C),
            "half": 1, "last": 1, "cb": 16, "t0": 12})
        m.submodules.segs = segs = fifo.SyncFIFO(width=seg_layout.size, depth=SEGMENT_FIFO_DEPTH)
        tag_layout = data.StructLayout({"cb": 16, "t0": 12})
        m.submodules.tags = tags = fifo.SyncFIFO(width=tag_layout.size, depth=2)
        m.submodules.array = array = OvpSystolicArray(T, C, normal="runtime")
        m.d.comb += [array.a_flint.eq(f.anormal), array.b_flint.eq(f.normal)]

        # ---- segment loader
        ld_busy, ld_push = Signal(), Signal()       # loading; the segment is assembled, pushing it
        ld_cb, ld_t0, ld_s = Signal(16), Signal(12), Signal(12)
        a_i = Signal(range(2 * T + 1))              # A read: token a_i >> 1, half a_i & 1
        w_i = Signal(range(2 * C + 1))              # W read: column w_i >> 1, half w_i & 1
        a_tile = Signal(32)                         # byte of token t0's row start
        a_ptr = Signal(32)                          # byte of the current token's segment
        w_group = Signal(32)                        # byte of column cb's row start (weight buffer)
        w_ptr = Signal(32)                          # byte of the current column's segment
        asm_a = [Signal(128, name=f"seg_a{t}") for t in range(T)]
        asm_b = [Signal(128, name=f"seg_b{c}") for c in range(C)]
        a_lo = Signal(128)
        b_lo, b_nx = Signal(128), Signal(128)
        a_pend, a_pend_half, a_pend_off = Signal(), Signal(), Signal(4)
        a_pend_t = Signal(range(T))
        w_pend, w_pend_half, w_pend_off, w_pend_lane = Signal(), Signal(), Signal(4), Signal(range(C))
        w_pend_c = Signal(range(C))
        m.d.sync += [a_pend.eq(0), w_pend.eq(0)]
        loading = ld_busy & ~ld_push
        last_word = self.act_words - 1

        # A: the 16 pair codes at byte a_ptr: words a_ptr >> 4 and the next one
        a_word = Signal(32)
        m.d.comb += a_word.eq((a_ptr >> 4) + a_i[0])
        with m.If(loading & (a_i != 2 * T)):
            m.d.comb += [self.act_req.eq(1), self.act_addr.eq(Mux(a_word <= last_word, a_word, last_word))]
            with m.If(self.act_grant):
                m.d.sync += [a_pend.eq(1), a_pend_half.eq(a_i[0]), a_pend_off.eq(a_ptr[:4]),
                             a_pend_t.eq(a_i >> 1), a_i.eq(a_i + 1)]
                with m.If(a_i[0]):
                    m.d.sync += a_ptr.eq(a_ptr + row_bytes)
        with m.If(a_pend):
            with m.If(~a_pend_half):
                m.d.sync += a_lo.eq(self.act_data)
            with m.Else():
                for t in range(T):
                    with m.If(a_pend_t == t):
                        m.d.sync += asm_a[t].eq(_funnel16(a_lo, self.act_data, a_pend_off))

        # W: the 16 bytes at byte w_ptr of the weight buffer: lane L = (w_ptr % W) >> 4 of word
        # w_ptr // W and the following 16-byte lane (lane L + 1, or lane 0 of the next word)
        w_word = Signal(32)
        m.d.comb += [w_word.eq((w_ptr >> wlog) + w_i[0]),
                     self.weight_rd.en.eq(0)]   # (a ReadPort's en resets to 1: idle unless reading)
        with m.If(loading & (w_i != 2 * C)):
            m.d.comb += [self.weight_rd.en.eq(1),
                         self.weight_rd.addr.eq(Mux(w_word < self.weight_words, w_word, self.weight_words - 1))]
            m.d.sync += [w_pend.eq(1), w_pend_half.eq(w_i[0]), w_pend_off.eq(w_ptr[:4]),
                         w_pend_lane.eq(w_ptr[4:wlog] if C > 1 else 0), w_pend_c.eq(w_i >> 1), w_i.eq(w_i + 1)]
            with m.If(w_i[0]):
                m.d.sync += w_ptr.eq(w_ptr + row_bytes)
        wdata = self.weight_rd.data
        with m.If(w_pend):
            with m.If(~w_pend_half):
                m.d.sync += [b_lo.eq(wdata.word_select(w_pend_lane, 128)),
                             b_nx.eq(wdata.word_select((w_pend_lane + 1)[:max(1, wlog - 4)], 128) if C > 1 else 0)]
            with m.Else():
                hi = Mux(w_pend_lane == C - 1, wdata[:128], b_nx)
                for c in range(C):
                    with m.If(w_pend_c == c):
                        m.d.sync += asm_b[c].eq(_funnel16(b_lo, hi, w_pend_off))

        seg = Signal(seg_layout)
        last_seg = ld_s == segments - 1
        m.d.comb += [seg.half.eq(last_seg & f.k_blocks[0]), seg.last.eq(last_seg), seg.cb.eq(ld_cb),
                     seg.t0.eq(ld_t0), segs.w_data.eq(seg)]
        for t in range(T):
            m.d.comb += seg.a[t].eq(asm_a[t])
        for c in range(C):
            m.d.comb += seg.b[c].eq(asm_b[c])
        with m.If(loading & (a_i == 2 * T) & (w_i == 2 * C) & ~a_pend & ~w_pend):
            m.d.sync += ld_push.eq(1)
        with m.If(ld_busy & ld_push & segs.w_rdy):
            m.d.comb += segs.w_en.eq(1)
            m.d.sync += [ld_push.eq(0), a_i.eq(0), w_i.eq(0)]
            with m.If(~last_seg):
                m.d.sync += [ld_s.eq(ld_s + 1), a_ptr.eq(a_tile + ((ld_s + 1) << 4)),
                             w_ptr.eq(w_group + ((ld_s + 1) << 4))]
            with m.Else():
                m.d.sync += ld_s.eq(0)
                nt = a_tile + row_bytes * T
                with m.If(ld_t0 + T < f.m):
                    m.d.sync += [ld_t0.eq(ld_t0 + T), a_tile.eq(nt), a_ptr.eq(nt), w_ptr.eq(w_group)]
                with m.Else():
                    ng = w_group + row_bytes * C
                    m.d.sync += [ld_t0.eq(0), ld_cb.eq(ld_cb + C), a_tile.eq(f.a_addr), a_ptr.eq(f.a_addr),
                                 w_group.eq(ng), w_ptr.eq(ng)]
                    with m.If(ld_cb + C >= f.n):
                        m.d.sync += ld_busy.eq(0)
        with m.If(self.start):
            m.d.sync += [ld_busy.eq(1), ld_push.eq(0), ld_cb.eq(0), ld_t0.eq(0), ld_s.eq(0), a_i.eq(0), w_i.eq(0),
                         a_tile.eq(f.a_addr), a_ptr.eq(f.a_addr), w_group.eq(f.b_addr), w_ptr.eq(f.b_addr)]

        # ---- feeder: pair j of the head segment to every row and column of the array
        head = Signal(seg_layout)
        m.d.comb += head.eq(segs.r_data)
        fd_j = Signal(4)
        end_j = Mux(head.half, SEGMENT_PAIRS // 2 - 1, SEGMENT_PAIRS - 1)
        final = fd_j == end_j
        tile_end = final & head.last
        for t in range(T):
            m.d.comb += array.a.payload.pairs[t].eq(head.a[t].word_select(fd_j, 8))
        for c in range(C):
            m.d.comb += array.b.payload[c].eq(head.b[c].word_select(fd_j, 8))
        tag = Signal(tag_layout)
        m.d.comb += [tag.cb.eq(head.cb), tag.t0.eq(head.t0), tags.w_data.eq(tag)]
        # a tile's last pair waits for a free tag slot (so its records always find their tag)
        go = segs.r_rdy & (~tile_end | tags.w_rdy)
        m.d.comb += [array.a.payload.last.eq(tile_end), array.a.valid.eq(go), array.b.valid.eq(go)]
        with m.If(array.a.valid & array.a.ready):
            m.d.sync += fd_j.eq(Mux(final, 0, fd_j + 1))
            m.d.comb += [segs.r_en.eq(final), tags.w_en.eq(tile_end)]

        # ---- drainer: result rows (2p, 2p + 1) -> one record
        dr_row = Signal(range(T))
        y_even = Signal(data.ArrayLayout(unsigned(32), C))
        otag = Signal(tag_layout)
        m.d.comb += otag.eq(tags.r_data)
        rec = Signal(self.record_layout)
        t0p = Signal(13)
        m.d.comb += t0p.eq(otag.t0 + (dr_row & ~1))
        for c in range(C):
            m.d.comb += [rec.y[c].eq(y_even[c]), rec.y[C + c].eq(array.results.payload.values[c])]
        m.d.comb += [rec.cb.eq(otag.cb), rec.t0.eq(t0p), self.record.payload.eq(rec)]
        odd = dr_row[0]
        keep = t0p < f.m
        m.d.comb += [self.record.valid.eq(array.results.valid & odd & keep),
                     array.results.ready.eq(~odd | ~keep | self.record.ready)]
        with m.If(array.results.valid & array.results.ready):
            with m.If(~odd):
                for c in range(C):
                    m.d.sync += y_even[c].eq(array.results.payload.values[c])
            m.d.sync += dr_row.eq(Mux(dr_row == T - 1, 0, dr_row + 1))
            m.d.comb += tags.r_en.eq(dr_row == T - 1)

        m.d.comb += self.busy.eq(ld_busy | segs.r_rdy | tags.r_rdy)
        return m


@register_unit("mpe_ovp")
def _resource_unit(chains: int = 2, token_pairs: int = 1):
    """The matrix engine's afmt=ovp4 path alone (array 2P x C, decoders, loader, FIFOs) at the small
    configuration's buffers with ``chains`` chains (``olivine resources mpe_ovp --chains 8``)."""
    from .config import small
    from .controller import unit_layout
    from .mpe import MpeGeometry

    chains, token_pairs = int(chains), int(token_pairs)
    g = MpeGeometry(small().replace(chains_per_core=chains))
    record = data.StructLayout({"y": data.ArrayLayout(unsigned(32), 2 * chains), "cb": 17, "t0": 13})
    path = OvpMatrixPath(chains=chains, fields_layout=unit_layout("mpe")["fields"].shape, record_layout=record,
                         act_words=g.act_words, weight_words=g.weight_words, weight_word_bytes=g.wword_bytes,
                         token_pairs=token_pairs)
    return path, f"mpe_ovp_c{chains}_p{token_pairs}"
