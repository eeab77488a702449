"""LD and ST engines: docs/isa.md's strided transfers between HBM (AXI4) and an on-chip buffer.

StoreEngine (ST): for ``i0 < n0`` the ``length`` bytes at ``buf_addr + i0*length`` of the source
buffer go to ``hbm_addr + i0*hbm_stride0``. The buffer is read word by word (a read port with one
cycle of latency) into a two-word window; each AXI beat takes the next bytes of the window,
rotated to their HBM lanes, with WSTRB marking the unaligned first and last beats. Bursts as for
LD; up to ``max_outstanding`` bursts await their B response. Ports: inst (unit_layout("st")),
done, fault (the source range exceeds ``buffer_bytes``: checked before anything is written; or
BRESP not OKAY), busy, axi (axi4_write_signature), buf (``addr`` Out, ``en`` Out, ``data`` In:
a synchronous read port, data valid the cycle after ``en``; ``source`` Out; ``busy`` In: the
read is refused this cycle and asked again, the core's way of giving the matrix engine the weight,
meta and bias ports first).
Latency: 3 cycles from the start to the first W beat; done when the last B response arrives.
Throughput: one beat per cycle.

LoadEngine (LD):

``for i2 < n2, i1 < n1, i0 < n0`` a segment of ``length`` bytes at ``hbm_addr + i2*hbm_stride2 +
i1*hbm_stride1 + i0*hbm_stride0`` is read; the segments land back to back from ``buf_addr``.
``zero_fill`` writes the same bytes as zeros without touching HBM.

Structure: a loop generator pushes segments (address, length) into two small queues; the AR side
turns each into beat-aligned INCR bursts (at most 256 beats, never across 4 KiB), up to
``max_outstanding`` in flight (hw.axi.BurstIssuer, as ST's AW and W sides and the program fetch); the R side walks the same segments, takes the valid bytes of each
beat (unaligned starts and ends), rotates them to their buffer lanes and merges them into a
pending buffer word that is written (with byte enables) once complete, so one buffer word is
written per beat at most and unaligned buffer addresses need no read-modify-write.

Ports:
  inst: In(stream) payload hw.controller.unit_layout("ld"): the handshake starts the instruction
        (ready while idle).
  done: Out(1) one-cycle pulse when every byte is in the buffer; fault: Out(1) pulse instead of
        done when a write falls outside the ``buffer_bytes`` of the target or RRESP is not OKAY
        (the bytes before it are written: the check is made as words are written).
  axi: Out(axi4_read_signature(addr_width, data_width, id_width)).
  buf: Out(buffer write port): ``addr`` (word index), ``data`` (data_width bits), ``en`` (one
       bit per byte), ``target`` (the instruction's target buffer, hw.isa.TARGET_BUFFERS).
  busy: Out(1).
Latency: AXI latency + 2 cycles from a beat to its buffer write; done 2 cycles after the last write.
Throughput: one beat (data_width / 8 bytes) per cycle when the memory streams.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .axi import RESP_OKAY, BurstIssuer, axi4_read_signature, axi4_write_signature, check_data_width
from .controller import unit_layout
from .decode import DEFAULT_OFFSET_BITS
from .resources import register_unit
from .bitops import rotate_left, shift_right

__all__ = ["LoadEngine", "StoreEngine", "buffer_write_signature", "buffer_read_signature"]

SEGMENT_LAYOUT = data.StructLayout({"addr": unsigned(64), "length": unsigned(24)})


def buffer_write_signature(data_width: int, addr_bits: int) -> wiring.Signature:
    return wiring.Signature({"addr": Out(addr_bits), "data": Out(data_width), "en": Out(data_width // 8),
                             "target": Out(3)})


def buffer_read_signature(data_width: int, addr_bits: int) -> wiring.Signature:
    """A synchronous read port: ``en`` requests word ``addr``, ``data`` follows a cycle later;
    ``busy`` (In) refuses the request this cycle (the port is another unit's: the engine asks again)."""
    return wiring.Signature({"addr": Out(addr_bits), "en": Out(1), "data": In(data_width), "source": Out(3),
                             "busy": In(1)})


def _rotate_bytes(m, value, amount, name: str):
    """Byte j of ``value`` moves to lane (j + amount) mod nbytes (a Signal: log-depth rotator)."""
    return rotate_left(m, value, amount, step=8, name=name)


class _Engine(wiring.Component):
    """What the LD and ST engines share: the beat geometry, the buffer's word address width and the
    signature (an instruction stream of ``unit``, done/fault/busy, an AXI4 port, a buffer port)."""

    def __init__(self, unit: str, axi_signature, buffer_signature, *, data_width: int, addr_width: int,
                 id_width: int, max_outstanding: int, buffer_bytes: int, offset_bits: int):
        self.beat_bytes = check_data_width(data_width)
        if buffer_bytes % self.beat_bytes:
            raise ValueError(f"buffer_bytes={buffer_bytes} must be a multiple of the beat ({self.beat_bytes} B)")
        self.data_width, self.addr_width, self.max_outstanding = data_width, addr_width, max_outstanding
        self.buffer_bytes = buffer_bytes
        self.word_bits = max((buffer_bytes // self.beat_bytes - 1).bit_length(), 1)
        super().__init__({
            "inst": In(stream.Signature(unit_layout(unit, offset_bits))),
            "done": Out(1), "fault": Out(1), "busy": Out(1),
            "axi": Out(axi_signature(addr_width, data_width, id_width)),
            "buf": Out(buffer_signature(data_width, self.word_bits)),
        })


class LoadEngine(_Engine):
    def __init__(self, *, data_width: int = 512, addr_width: int = 64, id_width: int = 1,
                 max_outstanding: int = 4, buffer_bytes: int = 1 << 20,
                 offset_bits: int = DEFAULT_OFFSET_BITS):
        super().__init__("ld", axi4_read_signature, buffer_write_signature, data_width=data_width, addr_width=addr_width,
                         id_width=id_width, max_outstanding=max_outstanding, buffer_bytes=buffer_bytes,
                         offset_bits=offset_bits)

    def elaborate(self, platform):
        m = Module()
        bb = self.beat_bytes
        sh = bb.bit_length() - 1
        axi = self.axi
        f = self.inst.p.fields

        # ---- instruction registers and the loop generator -----------------------------------
        active = Signal()
        zero = Signal()
        length = Signal(24)
        n0, n1, n2 = Signal(16), Signal(16), Signal(8)
        s0, s1, s2 = Signal(32), Signal(32), Signal(32)
        i0, i1, i2 = Signal(16), Signal(16), Signal(8)
        a0, a1, a2 = Signal(64), Signal(64), Signal(64)   # segment address, i1 base, i2 base
        generating = Signal()
        p = Signal(25 + 40)        # buffer byte address of the next byte (wide: no wrap-around)
        bad = Signal()             # a fault seen; finish quietly
        m.d.comb += self.inst.ready.eq(~active)
        with m.If(self.inst.valid & self.inst.ready):
            m.d.sync += [active.eq(1), generating.eq(1), zero.eq(f.zero_fill), length.eq(f.length),
                         n0.eq(f.n0), n1.eq(f.n1), n2.eq(f.n2), s0.eq(f.hbm_stride0), s1.eq(f.hbm_stride1),
                         s2.eq(f.hbm_stride2), i0.eq(0), i1.eq(0), i2.eq(0), a0.eq(f.hbm_addr),
                         a1.eq(f.hbm_addr), a2.eq(f.hbm_addr), p.eq(f.buf_addr), bad.eq(0),
                         self.buf.target.eq(f.target)]

        ar_q = fifo.SyncFIFO(width=SEGMENT_LAYOUT.size, depth=2)
        r_q = fifo.SyncFIFO(width=SEGMENT_LAYOUT.size, depth=max(2, self.max_outstanding))
        m.submodules.ar_q, m.submodules.r_q = ar_q, r_q
        seg = data.View(SEGMENT_LAYOUT, Signal(SEGMENT_LAYOUT.size))
        m.d.comb += [seg.addr.eq(a0), seg.length.eq(length), ar_q.w_data.eq(seg), r_q.w_data.eq(seg)]
        push = generating & r_q.w_rdy & (ar_q.w_rdy | zero)
        m.d.comb += [r_q.w_en.eq(push), ar_q.w_en.eq(push & ~zero)]
        with m.If(push):
            with m.If(i0 + 1 < n0):
                m.d.sync += [i0.eq(i0 + 1), a0.eq(a0 + s0)]
            with m.Elif(i1 + 1 < n1):
                m.d.sync += [i0.eq(0), i1.eq(i1 + 1), a0.eq(a1 + s1), a1.eq(a1 + s1)]
            with m.Elif(i2 + 1 < n2):
                m.d.sync += [i0.eq(0), i1.eq(0), i2.eq(i2 + 1), a0.eq(a2 + s2), a1.eq(a2 + s2), a2.eq(a2 + s2)]
            with m.Else():
                m.d.sync += generating.eq(0)

        # ---- AR side ------------------------------------------------------------------------
        ar_seg = data.View(SEGMENT_LAYOUT, ar_q.r_data)
        m.submodules.ar_bursts = ar = BurstIssuer(data_width=self.data_width, addr_width=64, bytes_bits=24,
                                                  max_outstanding=self.max_outstanding)
        m.d.comb += [ar_q.r_en.eq(ar.idle), ar.load.eq(ar_q.r_rdy & ar.idle), ar.addr.eq(ar_seg.addr),
                     ar.bytes.eq(ar_seg.length)]
        m.d.comb += [axi.arid.eq(0), axi.arsize.eq(sh), axi.arburst.eq(1), axi.arlock.eq(0),
                     axi.arcache.eq(0b0011), axi.arprot.eq(0), axi.arqos.eq(0),
                     axi.araddr.eq(ar.burst.p.addr), axi.arlen.eq(ar.burst.p.len),
                     axi.arvalid.eq(ar.burst.valid), ar.burst.ready.eq(axi.arready),
                     ar.burst_done.eq(axi.rvalid & axi.rready & axi.rlast)]
        outstanding = ar.outstanding

        # ---- R side: bytes of each beat -> buffer lanes ---------------------------------------
        r_seg = data.View(SEGMENT_LAYOUT, r_q.r_data)
        r_addr = Signal(64)
        r_left = Signal(25)          # bytes of the current segment still to take
        m.d.comb += r_q.r_en.eq(r_left == 0)
        with m.If(r_q.r_rdy & (r_left == 0)):
            m.d.sync += [r_addr.eq(r_seg.addr), r_left.eq(r_seg.length)]
        lo = r_addr[:sh]
        room = bb - lo
        take_n = Signal(range(bb + 1))
        m.d.comb += take_n.eq(Mux(r_left < room, r_left, room))
        beat_data = Mux(zero, 0, axi.rdata)
        beat = Signal()
        m.d.comb += [beat.eq((r_left != 0) & (zero | axi.rvalid)), axi.rready.eq((r_left != 0) & ~zero)]
        with m.If(axi.rvalid & axi.rready & (axi.rresp != RESP_OKAY)):
            m.d.sync += bad.eq(1)

        # the gearbox: pending word (lanes below q filled) + this beat's bytes rotated to lane q
        q = p[:sh]
        rot = (q - lo)[:sh] if sh else 0
        rotated = _rotate_bytes(m, beat_data, rot, "r_rotated") if sh else beat_data
        end = q + take_n              # one past the last lane written (may exceed bb)
        in_first = Signal(bb)         # lanes of this beat that belong to the pending word
        in_next = Signal(bb)          # lanes that spill into the next word
        for j in range(bb):
            at_or_after_q = (q <= j) if j < bb - 1 else 1  # every lane index is <= bb - 1
            m.d.comb += [in_first[j].eq(at_or_after_q & (j < end)), in_next[j].eq(j + bb < end)]
        pend_data = Signal(self.data_width)
        pend_en = Signal(bb)
        merged_data, merged_en = Signal(self.data_width), Signal(bb)   # signals: each is used twice
        m.d.comb += [merged_data.eq(Cat(*(Mux(in_first[j], rotated.word_select(j, 8), pend_data.word_select(j, 8))
                                          for j in range(bb)))),
                     merged_en.eq(pend_en | in_first)]
        wr = Signal()
        wr_addr = Signal(p.shape().width - sh)
        wr_data = Signal(self.data_width)
        wr_en = Signal(bb)
        m.d.sync += wr.eq(0)
        with m.If(beat):
            m.d.sync += [r_addr.eq(r_addr + take_n), r_left.eq(r_left - take_n), p.eq(p + take_n)]
            with m.If(end >= bb):  # the pending word is complete: write it, keep the spill
                m.d.sync += [wr.eq(1), wr_addr.eq(p[sh:]), wr_data.eq(merged_data), wr_en.eq(merged_en),
                             pend_en.eq(in_next), pend_data.eq(rotated)]
            with m.Else():
                m.d.sync += [pend_en.eq(merged_en), pend_data.eq(merged_data)]

        # finish: every segment generated and taken, nothing outstanding; flush the pending word
        finishing = Signal()
        all_taken = active & ~generating & ~r_q.r_rdy & (r_left == 0) & ~push & (outstanding == 0) \
            & ar.idle & ~ar_q.r_rdy
        with m.If(all_taken & ~wr & ~finishing):
            m.d.sync += finishing.eq(1)
            with m.If(pend_en != 0):
                m.d.sync += [wr.eq(1), wr_addr.eq(p[sh:]), wr_data.eq(pend_data), wr_en.eq(pend_en),
                             pend_en.eq(0)]
        words = self.buffer_bytes // bb
        out_of_range = wr & (wr_addr >= words)
        with m.If(out_of_range):
            m.d.sync += bad.eq(1)
        m.d.comb += [self.buf.addr.eq(wr_addr), self.buf.data.eq(wr_data),
                     self.buf.en.eq(Mux(wr & ~out_of_range & ~bad, wr_en, 0))]
        with m.If(finishing & ~wr):
            m.d.sync += [active.eq(0), finishing.eq(0), pend_en.eq(0)]
            m.d.comb += [self.done.eq(~bad & ~out_of_range), self.fault.eq(bad | out_of_range)]
        m.d.comb += self.busy.eq(active)
        return m


class StoreEngine(_Engine):
    def __init__(self, *, data_width: int = 512, addr_width: int = 64, id_width: int = 1,
                 max_outstanding: int = 4, buffer_bytes: int = 1 << 20,
                 offset_bits: int = DEFAULT_OFFSET_BITS):
        super().__init__("st", axi4_write_signature, buffer_read_signature, data_width=data_width, addr_width=addr_width,
                         id_width=id_width, max_outstanding=max_outstanding, buffer_bytes=buffer_bytes,
                         offset_bits=offset_bits)

    def elaborate(self, platform):
        m = Module()
        bb = self.beat_bytes
        sh = bb.bit_length() - 1
        axi = self.axi
        f = self.inst.p.fields
        words = self.buffer_bytes // bb

        active = Signal()
        length = Signal(24)
        n0 = Signal(8)
        s0 = Signal(32)
        # AW side: segment counter and address; W side: its own walk over the same segments
        aw_seg, aw_seg_addr = Signal(8), Signal(64)
        w_seg, w_seg_addr = Signal(8), Signal(64)
        w_addr, w_left = Signal(64), Signal(25)     # byte address / bytes left in the segment
        w_burst_left = Signal(9)                   # W beats of the current burst still to send
        aw_more, w_more = Signal(), Signal()       # segments still to start on each side
        bad = Signal()       # the source range exceeds the buffer: nothing is transferred
        resp_bad = Signal()  # a BRESP error, reported at the end (announced bursts still get their data)
        # source side: sequential word reads into a 4-entry queue, then a two-word window
        sp = Signal(24 + 9)                        # source byte position
        rd_next, rd_last = Signal(24 + 9 - sh), Signal(24 + 9 - sh)
        rd_more = Signal()
        m.submodules.words_q = wq = fifo.SyncFIFO(width=self.data_width, depth=4)
        inflight = Signal()
        cur, nxt = Signal(self.data_width), Signal(self.data_width)
        cur_ok, nxt_ok = Signal(), Signal()

        m.d.comb += self.inst.ready.eq(~active)
        total = Signal(24 + 8 + 1)
        m.d.comb += total.eq(f.buf_addr + f.length * f.n0)
        with m.If(self.inst.valid & self.inst.ready):
            m.d.sync += [active.eq(1), length.eq(f.length), n0.eq(f.n0), s0.eq(f.hbm_stride0),
                         aw_seg.eq(0), aw_seg_addr.eq(f.hbm_addr), aw_more.eq(1),
                         w_seg.eq(0), w_seg_addr.eq(f.hbm_addr), w_left.eq(0), w_more.eq(1),
                         w_burst_left.eq(0), sp.eq(f.buf_addr), rd_next.eq(f.buf_addr >> sh),
                         rd_last.eq((total - 1) >> sh), rd_more.eq(1), cur_ok.eq(0), nxt_ok.eq(0),
                         bad.eq(total > self.buffer_bytes), resp_bad.eq(0), self.buf.source.eq(f.source)]

        # ---- AW ----
        m.submodules.aw_bursts = aw = BurstIssuer(data_width=self.data_width, addr_width=64, bytes_bits=24,
                                                  max_outstanding=self.max_outstanding)
        aw_start = active & ~bad & aw_more & aw.idle
        m.d.comb += [aw.load.eq(aw_start), aw.addr.eq(aw_seg_addr), aw.bytes.eq(length)]
        with m.If(aw_start):
            m.d.sync += [aw_seg_addr.eq(aw_seg_addr + s0), aw_seg.eq(aw_seg + 1), aw_more.eq(aw_seg + 1 < n0)]
        m.d.comb += [axi.awid.eq(0), axi.awsize.eq(sh), axi.awburst.eq(1), axi.awlock.eq(0),
                     axi.awcache.eq(0b0011), axi.awprot.eq(0), axi.awqos.eq(0),
                     axi.awaddr.eq(aw.burst.p.addr), axi.awlen.eq(aw.burst.p.len),
                     axi.awvalid.eq(aw.burst.valid), aw.burst.ready.eq(axi.awready)]
        aw_go = axi.awvalid & axi.awready
        b_go = axi.bvalid & axi.bready
        m.d.comb += [axi.bready.eq(1), aw.burst_done.eq(b_go)]
        outstanding = aw.outstanding
        with m.If(b_go & (axi.bresp != RESP_OKAY)):
            m.d.sync += resp_bad.eq(1)

        # ---- buffer reads -> word queue -> window ----
        rd = active & ~bad & rd_more & (wq.level + inflight < 3)
        rd_go = rd & ~self.buf.busy
        m.d.comb += [self.buf.addr.eq(rd_next), self.buf.en.eq(rd)]
        m.d.sync += inflight.eq(rd_go)
        with m.If(rd_go):
            m.d.sync += [rd_next.eq(rd_next + 1), rd_more.eq(rd_next != rd_last)]
        m.d.comb += [wq.w_data.eq(self.buf.data), wq.w_en.eq(inflight)]

        # ---- W ----
        # the W side splits each segment into the same bursts as AW (its own issuer: W beats may run
        # ahead of their AW), for WLAST; a burst is "issued" by its last W beat
        m.submodules.w_bursts = wb = BurstIssuer(data_width=self.data_width, addr_width=64, bytes_bits=24,
                                                 max_outstanding=None)
        w_start = active & ~bad & w_more & (w_left == 0)
        m.d.comb += [wb.load.eq(w_start), wb.addr.eq(w_seg_addr), wb.bytes.eq(length)]
        with m.If(w_start):
            m.d.sync += [w_addr.eq(w_seg_addr), w_left.eq(length),
                         w_seg_addr.eq(w_seg_addr + s0), w_seg.eq(w_seg + 1), w_more.eq(w_seg + 1 < n0)]
        lo = w_addr[:sh]
        room = bb - lo
        take_n = Signal(range(bb + 1))
        m.d.comb += take_n.eq(Mux(w_left < room, w_left, room))
        sq = sp[:sh]
        spans = sq + take_n > bb                   # the beat's bytes reach into the next word
        window = Cat(cur, nxt)
        source_bytes = shift_right(m, window, sq, step=8, width=self.data_width, name="w_source")  # bytes sp..
        m.d.comb += axi.wdata.eq(_rotate_bytes(m, source_bytes, lo, "w_rotated") if sh else source_bytes)
        strb = Signal(bb)
        end = lo + take_n
        for j in range(bb):
            at_or_after_lo = (lo <= j) if j < bb - 1 else 1
            m.d.comb += strb[j].eq(at_or_after_lo & (j < end))
        burst_n = wb.burst.p.len + 1
        m.d.comb += [axi.wstrb.eq(strb),
                     axi.wlast.eq(Mux(w_burst_left == 0, burst_n, w_burst_left) == 1),
                     axi.wvalid.eq(active & ~bad & (w_left != 0) & cur_ok & (~spans | nxt_ok))]
        w_go = axi.wvalid & axi.wready
        m.d.comb += wb.burst.ready.eq(w_go & axi.wlast)
        consumed = w_go & (sq + take_n >= bb)      # the beat used the rest of the current word
        with m.If(w_go):
            m.d.sync += [w_addr.eq(w_addr + take_n), w_left.eq(w_left - take_n), sp.eq(sp + take_n),
                         w_burst_left.eq(Mux(w_burst_left == 0, burst_n, w_burst_left) - 1)]
        # window refill: cur <- nxt on consumption; empty slots fill from the queue
        take_q = Signal()
        with m.If(consumed):
            m.d.sync += [cur.eq(nxt), cur_ok.eq(nxt_ok), nxt_ok.eq(0)]
            with m.If(nxt_ok & wq.r_rdy):
                m.d.sync += [nxt.eq(wq.r_data), nxt_ok.eq(1)]
                m.d.comb += take_q.eq(1)
            with m.Elif(~nxt_ok & wq.r_rdy):
                m.d.sync += [cur.eq(wq.r_data), cur_ok.eq(1)]
                m.d.comb += take_q.eq(1)
        with m.Elif(wq.r_rdy & ~cur_ok):
            m.d.sync += [cur.eq(wq.r_data), cur_ok.eq(1)]
            m.d.comb += take_q.eq(1)
        with m.Elif(wq.r_rdy & ~nxt_ok):
            m.d.sync += [nxt.eq(wq.r_data), nxt_ok.eq(1)]
            m.d.comb += take_q.eq(1)
        m.d.comb += wq.r_en.eq(take_q)

        # ---- finish ----
        finished = active & (bad | ~aw_more & aw.idle & ~w_more & (w_left == 0)) & (outstanding == 0) \
            & ~aw_go
        drain = Signal()
        with m.If(finished & ~drain):
            m.d.sync += drain.eq(1)
        with m.If(drain):  # one cycle later: the queue and window are emptied for the next ST
            m.d.sync += [active.eq(0), drain.eq(0), cur_ok.eq(0), nxt_ok.eq(0)]
            m.d.comb += [self.done.eq(~bad & ~resp_bad), self.fault.eq(bad | resp_bad), wq.r_en.eq(1)]
        m.d.comb += self.busy.eq(active)
        return m


@register_unit("load_engine")
def _load_engine_unit(data_width: int = 512, max_outstanding: int = 4, buffer_bytes: int = 1 << 20):
    """The LD engine: AXI4 read master with the three-level strided loops, realignment and zero-fill."""
    return LoadEngine(data_width=data_width, max_outstanding=max_outstanding,
                      buffer_bytes=buffer_bytes), "olivine_load_engine"


@register_unit("store_engine")
def _store_engine_unit(data_width: int = 512, max_outstanding: int = 4, buffer_bytes: int = 1 << 20):
    """The ST engine: AXI4 write master with byte strobes, strided bursts split at 256 beats / 4 KiB."""
    return StoreEngine(data_width=data_width, max_outstanding=max_outstanding,
                       buffer_bytes=buffer_bytes), "olivine_store_engine"
