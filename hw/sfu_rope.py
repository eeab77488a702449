"""RoPE op core of the SFU (docs/isa.md MISC ``rope``), bit-exact with golden ``sfu.rope`` ("half"
style) on a head of ``hd`` padded to ``cols`` (sim/funcsim.py ``rope_padded``).

Row ``r`` (position ``p = imm[15:0] + r // per``, ``per = max(1, imm[31:16])``) holds the halves
``a = x[0, cols/2)`` and ``b = x[cols/2, cols)``; for ``i < hd/2`` and ``c, s = cos[p, i], sin[p, i]``
(golden ``rope_tables``, 16 fractional bits, ``|c|, |s| <= 2**16``: 18-bit signed)::

    a'[i] = sat32(round_shift(a[i] * c - b[i] * s, 16))      (pass 0)
    b'[i] = sat32(round_shift(b[i] * c + a[i] * s, 16))      (pass 1)

and lanes ``i >= hd/2`` of each half become 0.

The cos/sin ROM (:class:`RopeRom`) is an elaboration parameter: golden's float64 ``rope_tables``
for one (theta, head_dim, positions, LLaMA-3 scaling) are generated into the bitstream. Size:
``positions x hd/2 x 2`` entries of 18 bits (glassllm 128 x 16 x 2 x 18 = 72 Kbit; SmolLM2-135M 8192 x
32 x 2 x 18 = 9.0 Mbit), stored as ``positions x pow2(ceil(hd/2 / lanes))`` words of ``lanes``
cos + ``lanes`` sin entries (the word address is ``Cat(beat, position)``: no multiplier; heads
whose half is not a power-of-two multiple of ``lanes`` waste the difference). It is block RAM
(``ram_style = "block"``): UltraRAM has no initial contents, so a ROM cannot live there without a
load path (measured counts in docs/benchmarks.md).

Why two passes over the row instead of a row buffer: the SFU top streams the halves ``a`` and
``b`` as two operands (``i`` = ``a``, ``g`` = ``b``, ``cols/2`` elements each, interleaved on the
read port) and the core writes ``a'`` in pass 0 and ``b'`` in pass 1, which land contiguously at
the row's destination; the cost is reading the row twice (``lanes / 2`` elements per cycle, as a two-operand op), the
gain no row buffer and no output reordering. RoPE is a small part of a layer (Q and K heads only).

In place (``dst = src0``, docs/isa.md) pass 0 has written ``a'`` over ``a`` before pass 1 reads the
first half again (issue 8), so pass 1 ignores the ``a`` it reads and takes pass 0's input beats
from a hold buffer (``a_hold``: ``rom_beats`` words of ``lanes`` x 32 bits, the head's half only,
since lanes past ``hd/2`` become 0; glassllm 4 x 128 bits at 4 lanes, SmolLM2 2 x 512 at 16). The
reads, the timing and every out-of-place result are unchanged.

Ports
-----
i : In(beat stream)   the first half ``a`` of the row, twice (pass 0; pass 1, whose data is not used)
g : In(beat stream)   the second half ``b``, beat for beat with ``i``
o : Out(beat stream)  ``a'`` beats (pass 0) then ``b'`` beats (pass 1), ``count``/``first``/``last`` of the input
params : In(rope_params_layout()) ``pos_base`` (imm[15:0]), ``per`` (imm[31:16]), ``row``: the index
    of the row being streamed (rows come in order), sampled with the row's first pass-0 beat

Latency: ``ROPE_LATENCY`` = 3 cycles from an accepted beat to its output (input and ROM read,
``x * c``, ``z * s`` with rounding and saturation). Throughput: one beat (``lanes`` results) per two
cycles (both products of a lane on its one bank multiplier), the rate at which the SFU top feeds it
(``i`` and ``g`` share the read port).

Products: two 32 x 18 signed products per lane (``_products``), both on the lane's multiplier of the
SFU's shared bank (hw/sfu_mul.py, 4 DSP48E2 per lane): ``x * c`` from stage 1, ``z * s`` from stage 2
in the next cycle, so the core takes a beat only into an empty stage 1 (one per two cycles, the rate
of its two operand streams on the shared read port).

:class:`RopeSetup` reads and checks the 48-byte RoPE parameter record before the first row (ports
in its docstring; 14 cycles).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden import sfu_tables as golden_sfu
from ..golden.fixed_scalar import ROPE_TABLE_FRAC, FixedPointValueError
from .resources import register_unit
from .sfu_mul import mul_signature, multiplier_port
from .sfu_core import beat_signature, saturate

__all__ = ["ROM_PRESETS", "ROPE_LATENCY", "ROPE_MAX_COLS", "ROPE_SETUP_CYCLES", "RopeCore", "RopeRom", "RopeSetup",
           "preset_rom", "rope_params_layout"]

ROPE_LATENCY = 3
#: docs/isa.md Validity: rope rows are at most 256 elements (the ROM's head dimension)
ROPE_MAX_COLS = 256
#: RopeSetup: 12 record word reads, one more for the last word's data, one for the checks
ROPE_SETUP_CYCLES = 14
_F64_ONE = 0x3FF0_0000_0000_0000
_F64_INF = 0x7FF0_0000_0000_0000
_ENTRY_BITS = ROPE_TABLE_FRAC + 2        # |cos|, |sin| <= 2**16: 18-bit signed


def _f64_bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(value)))[0]


@dataclass(frozen=True)
class RopeRom:
    """The parameters of the SFU's RoPE cos/sin ROM (an elaboration parameter of :class:`~olivine.hw.sfu.Sfu`).

    ``theta`` (finite, > 1), ``head_dim`` (even, <= 256), ``positions`` (1..65536: the longest
    sequence), ``scaling``: ``None`` or LLaMA-3 ``(factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings)`` (golden ``check_rope_scaling``). The tables are golden's
    ``rope_tables(positions, head_dim, theta, 16, scaling)``.
    """

    theta: float
    head_dim: int
    positions: int
    scaling: tuple | None = None

    def __post_init__(self):
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or not 2 <= self.head_dim <= ROPE_MAX_COLS \
                or self.head_dim % 2:
            raise ValueError(f"RopeRom head_dim={self.head_dim!r} must be an even int in 2..{ROPE_MAX_COLS}")
        if isinstance(self.positions, bool) or not isinstance(self.positions, int) or not 1 <= self.positions <= 1 << 16:
            raise ValueError(f"RopeRom positions={self.positions!r} must be an int in 1..65536 (16-bit positions)")
        if not (isinstance(self.theta, (int, float)) and math.isfinite(self.theta) and self.theta > 1):
            raise ValueError(f"RopeRom theta={self.theta!r} must be a finite number > 1")
        try:
            scaling = golden_sfu.check_rope_scaling(self.scaling)
        except FixedPointValueError as err:
            raise ValueError(f"RopeRom scaling: {err}") from None
        object.__setattr__(self, "theta", float(self.theta))
        object.__setattr__(self, "scaling", scaling)

    @classmethod
    def from_model_config(cls, config, positions: int | None = None) -> "RopeRom":
        """The ROM for a model config as the compiler records it (artifact ``meta["model"]["config"]``,
        or a ``LlamaConfig``): ``rope_theta``, ``head_dim``, ``max_seq_len`` and, if present,
        ``rope_scaling``. ``positions``: fewer positions than ``max_seq_len`` (the longest context
        the compiled programs use), so the ROM is no larger than the deployment needs."""
        if not isinstance(config, dict):
            config = {k: getattr(config, k) for k in ("rope_theta", "head_dim", "max_seq_len", "rope_scaling")
                      if hasattr(config, k)}
        missing = [k for k in ("rope_theta", "head_dim", "max_seq_len") if k not in config]
        if missing:
            raise ValueError(f"model config lacks {', '.join(missing)}: a RoPE ROM needs rope_theta, head_dim and "
                             "max_seq_len (and rope_scaling for LLaMA-3 scaling)")
        scaling = config.get("rope_scaling")
        return cls(float(config["rope_theta"]), int(config["head_dim"]),
                   int(config["max_seq_len"]) if positions is None else int(positions),
                   tuple(scaling) if scaling is not None else None)

    @property
    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """golden's cos, sin [positions, head_dim // 2]."""
        return golden_sfu.rope_tables(self.positions, self.head_dim, self.theta, ROPE_TABLE_FRAC, self.scaling)

    @property
    def bits(self) -> int:
        """Table contents: positions x hd/2 x 2 entries of 18 bits."""
        return self.positions * (self.head_dim // 2) * 2 * _ENTRY_BITS

    def beats(self, lanes: int) -> int:
        """ROM words per position: ceil(hd/2 / lanes) rounded up to a power of two."""
        n = -(-(self.head_dim // 2) // lanes)
        return 1 << (n - 1).bit_length()

    def words(self, lanes: int) -> list[int]:
        """ROM words: position p, beat k at ``p * beats + k``: ``lanes`` cos then ``lanes`` sin
        entries (18-bit two's complement, lane 0 lowest); entries past hd/2 are 0."""
        cos, sin = self.tables
        half, nb = self.head_dim // 2, self.beats(lanes)
        mask = (1 << _ENTRY_BITS) - 1
        out = []
        for p in range(self.positions):
            for k in range(nb):
                word = 0
                for lane in range(lanes):
                    i = k * lanes + lane
                    if i < half:
                        word |= (int(cos[p, i]) & mask) << (_ENTRY_BITS * lane)
                        word |= (int(sin[p, i]) & mask) << (_ENTRY_BITS * (lanes + lane))
                out.append(word)
        return out

    def record_words(self) -> list[int]:
        """The 12 little-endian 32-bit words of the docs/isa.md RoPE parameter record this ROM holds."""
        scal = self.scaling or (0.0, 0.0, 0.0, 0.0)
        raw = struct.pack("<dII4d", self.theta, self.head_dim, int(self.scaling is not None), *scal)
        return list(struct.unpack("<12I", raw))


def rope_params_layout() -> data.StructLayout:
    return data.StructLayout({"pos_base": unsigned(16), "per": unsigned(16), "row": unsigned(16)})


class RopeCore(wiring.Component):
    """RoPE op core; see the module docstring for ports, latency, throughput and the ROM."""

    passes = 2
    operands = 2
    latency = ROPE_LATENCY

    def __init__(self, lanes: int, rom: RopeRom, *, shared_mul: bool = False):
        if not isinstance(rom, RopeRom):
            raise TypeError(f"rom must be a RopeRom, got {type(rom).__name__}")
        self.lanes, self.rom, self.shared_mul = lanes, rom, shared_mul
        self.rom_beats = rom.beats(lanes)
        members = {"i": In(beat_signature(lanes)), "g": In(beat_signature(lanes)),
                   "o": Out(beat_signature(lanes)), "params": In(rope_params_layout())}
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    def _products(self, m, lane, x, z, c, s, enable, second):
        """---- the products of the core, on lane ``lane`` of the SFU's multiplier bank (hw/sfu_mul.py) ----
        ``x * c`` from stage 1 (registered into stage 2 when ``enable``) and ``z * s`` from stage 2
        (``z``, ``s`` registered beside it), the second while ``second`` (stage 2 holds a beat).
        Returns ``(pc, ps)``: ``pc`` registered, ``ps`` combinational, both of stage 2."""
        bank = self._bank
        pc = Signal(signed(50), name=f"pc{lane}")
        z2, s2 = Signal(signed(32), name=f"z2_{lane}"), Signal(signed(18), name=f"s2_{lane}")
        ps = Signal(signed(50), name=f"ps{lane}")
        with m.If(second):
            m.d.comb += [bank.a[lane].eq(z2), bank.b[lane].eq(s2)]
        with m.Else():
            m.d.comb += [bank.a[lane].eq(x), bank.b[lane].eq(c)]
        m.d.comb += ps.eq(bank.p[lane][:50])
        with m.If(enable):
            m.d.sync += [pc.eq(bank.p[lane][:50]), z2.eq(z), s2.eq(s)]
        return pc, ps

    def elaborate(self, platform):
        m = Module()
        L, P, rom = self.lanes, self.params, self.rom
        self._bank = multiplier_port(m, self, L)
        words = rom.words(L)
        m.submodules.rom = mem = Memory(shape=unsigned(2 * L * _ENTRY_BITS), depth=len(words), init=words,
                                        attrs={"ram_style": "block", "rom_style": "block"})
        rd = mem.read_port()

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        take = Signal()
        # one bank product per lane and cycle: a beat's x * c (stage 1) and z * s (stage 2) come in
        # consecutive cycles, so a beat is taken only into an empty stage 1 (one per two cycles, the
        # rate at which the two halves arrive on the shared read port anyway)
        v1 = Signal()
        room = advance & ~v1
        m.d.comb += [take.eq(self.i.valid & self.g.valid & room),
                     self.i.ready.eq(self.g.valid & room), self.g.ready.eq(self.i.valid & room)]
        ib = self.i.p

        # position of the row: base + r // per, kept incrementally (phase = r mod per)
        pos, phase = Signal(16), Signal(16)
        per = Signal(17)
        m.d.comb += per.eq(Mux(P.per == 0, 1, P.per))
        pos_now = Signal(16)
        row_start = take & (ib.pass_ == 0) & ib.first
        m.d.comb += pos_now.eq(pos)
        with m.If(row_start):
            with m.If(P.row == 0):
                m.d.comb += pos_now.eq(P.pos_base)
                m.d.sync += [pos.eq(P.pos_base), phase.eq(0)]
            with m.Elif(phase + 1 >= per):
                m.d.comb += pos_now.eq(pos + 1)
                m.d.sync += [pos.eq(pos + 1), phase.eq(0)]
            with m.Else():
                m.d.sync += phase.eq(phase + 1)
        # beat index within the pass
        kb = max(1, (ROPE_MAX_COLS // 2 // L).bit_length() + 1)
        k, k_now = Signal(kb), Signal(kb)
        m.d.comb += k_now.eq(Mux(ib.first, 0, k))
        with m.If(take):
            m.d.sync += k.eq(k_now + 1)
        rb = (self.rom_beats - 1).bit_length()
        addr = Cat(k_now[:rb], pos_now) if rb else pos_now
        m.d.comb += [rd.addr.eq(addr), rd.en.eq(advance)]

        # stage 1: operands and bookkeeping (the ROM word arrives with them)
        meta_layout = data.StructLayout({"count": range(L + 1), "first": 1, "last": 1, "pass_": 2})
        v2, v3 = Signal(), Signal()
        meta1, meta2, meta3 = Signal(meta_layout), Signal(meta_layout), Signal(meta_layout)
        half = rom.head_dim // 2
        a1 = [Signal(signed(32), name=f"a1_{l}") for l in range(L)]
        b1 = [Signal(signed(32), name=f"b1_{l}") for l in range(L)]
        hd1, hd2 = Signal(L), Signal(L)     # lane index < hd/2 and < count
        with m.If(advance):
            m.d.sync += [v1.eq(take), meta1.count.eq(ib.count), meta1.first.eq(ib.first), meta1.last.eq(ib.last),
                         meta1.pass_.eq(ib.pass_), v2.eq(v1), meta2.eq(meta1), v3.eq(v2), meta3.eq(meta2),
                         hd2.eq(hd1)]
            for l in range(L):
                m.d.sync += [a1[l].eq(ib.data[l]), b1[l].eq(self.g.p.data[l]),
                             hd1[l].eq((k_now * L + l < half) & (l < ib.count))]
        # the first half's input beats of pass 0, for pass 1: in place (dst = src0) pass 0 has
        # written a' over a by the time pass 1 reads it (issue 8), so pass 1 takes a from here and
        # ignores the a it reads. Only the beats of the head's half (the ROM's beats) are kept: the
        # lanes past hd/2 become 0 anyway. Read like the ROM: address with the input beat, data in stage 1.
        m.submodules.a_hold = hold = Memory(shape=unsigned(32 * L), depth=self.rom_beats, init=[])
        hold_wr, hold_rd = hold.write_port(), hold.read_port()
        hold_addr = k_now[:rb] if rb else Const(0, 1)
        m.d.comb += [hold_wr.addr.eq(hold_addr), hold_wr.data.eq(ib.data.as_value()),
                     hold_wr.en.eq(take & (ib.pass_ == 0) & ((k_now >> rb) == 0)),
                     hold_rd.addr.eq(hold_addr), hold_rd.en.eq(advance)]
        p0_1 = meta1.pass_ == 0
        p0_2 = meta2.pass_ == 0
        outs = []
        for l in range(L):
            c = rd.data[_ENTRY_BITS * l: _ENTRY_BITS * (l + 1)].as_signed()
            s = rd.data[_ENTRY_BITS * (L + l): _ENTRY_BITS * (L + l + 1)].as_signed()
            a = Mux(p0_1, a1[l], hold_rd.data[32 * l: 32 * (l + 1)].as_signed())
            # pass 0: a*c - b*s; pass 1: b*c + a*s (the sign on the sum: -b never overflows)
            pc, ps = self._products(m, l, Mux(p0_1, a, b1[l]), Mux(p0_1, b1[l], a), c, s, advance, v2)
            total = Mux(p0_2, pc - ps, pc + ps)
            y = Signal(signed(32), name=f"rope{l}")
            with m.If(advance):
                m.d.sync += y.eq(Mux(hd2[l], saturate((total + (1 << (ROPE_TABLE_FRAC - 1))) >> ROPE_TABLE_FRAC), 0))
            outs.append(y)
        m.d.comb += [self.o.valid.eq(v3), self.o.p.count.eq(meta3.count), self.o.p.first.eq(meta3.first),
                     self.o.p.last.eq(meta3.last), self.o.p.pass_.eq(meta3.pass_)]
        for l in range(L):
            m.d.comb += self.o.p.data[l].eq(outs[l])
        return m


class RopeSetup(wiring.Component):
    """Reads the 48-byte RoPE parameter record and checks it against the ROM (docs/isa.md Validity).

    Ports: ``start`` (In, one cycle), ``src1`` (In: element address of the record, ``src1 / 4``),
    ``cols``, ``rows``, ``imm`` (In, stable from ``start`` to ``done``), ``rd_addr`` (Out, a word
    address of ``addr_width`` bits) / ``rd_en`` (Out) and ``rd_data`` (In, one cycle after the read) on the data space read port, ``done``
    (Out, one cycle) with ``code`` (Out): 0, ``bad_data`` (theta not finite > 1, hd odd or > cols,
    flag not 0/1, a LLaMA-3 parameter not finite > 0), ``rom_code`` (a valid record with other
    theta / hd / scaling than the ROM, or the last row's position ``imm[15:0] + (rows - 1) // per``
    beyond the ROM's positions). Latency ``ROPE_SETUP_CYCLES`` = 14 cycles from ``start`` to ``done``
    (12 word reads; the position bound ``rows - 1 < (P - base) * per`` is a 12-step shift-add
    during the reads, no multiplier).
    """

    def __init__(self, lanes: int, rom: RopeRom, *, bad_data: int, rom_code: int, addr_width: int = 20):
        self.lanes, self.rom = lanes, rom
        self.lane_bits = lanes.bit_length() - 1
        self.bad_data, self.rom_code = bad_data, rom_code
        super().__init__({"start": In(1), "src1": In(22), "cols": In(20), "rows": In(12), "imm": In(32),
                          "rd_addr": Out(addr_width), "rd_en": Out(1), "rd_data": In(32 * lanes),
                          "done": Out(1), "code": Out(4)})

    def elaborate(self, platform):
        m = Module()
        L, lb, rom = self.lanes, self.lane_bits, self.rom
        step = Signal(5)            # 0: idle; 1..12 reading word step-1; 13: last data; 14: checks
        rec = [Signal(32, name=f"rec{t}") for t in range(12)]
        with m.If(self.start):
            m.d.sync += step.eq(1)
        with m.Elif(step != 0):
            m.d.sync += step.eq(Mux(step == 14, 0, step + 1))
        elem = Signal(22)
        m.d.comb += elem.eq(self.src1 + step - 1)
        m.d.comb += [self.rd_addr.eq(elem >> lb), self.rd_en.eq((step >= 1) & (step <= 12))]
        lane = Signal(max(1, lb))
        m.d.sync += lane.eq(elem[:lb] if lb else 0)
        lanes_in = [self.rd_data[32 * j: 32 * (j + 1)] for j in range(L)]
        word = Signal(32)
        with m.Switch(lane):
            for j in range(L):
                with m.Case(j):
                    m.d.comb += word.eq(lanes_in[j])
        for t in range(12):
            with m.If(step == t + 2):
                m.d.sync += rec[t].eq(word)
        # position bound: (rows - 1) // per < P - base  <=>  base < P and (per >= rows or rows - 1 < (P - base) * per)
        base = self.imm[:16]
        per = Signal(16)
        m.d.comb += per.eq(Mux(self.imm[16:] == 0, 1, self.imm[16:]))
        span = Signal(18)
        m.d.comb += span.eq(rom.positions - base)
        prod, addend, bits = Signal(30), Signal(30), Signal(12)
        with m.If(self.start):
            m.d.sync += [prod.eq(0), addend.eq(span), bits.eq(per[:12])]
        with m.Elif((step >= 1) & (step <= 12)):
            m.d.sync += [prod.eq(prod + Mux(bits[0], addend, 0)), addend.eq(addend << 1), bits.eq(bits >> 1)]
        pos_ok = (base < rom.positions) & ((per >= self.rows) | (self.rows - 1 < prod))

        theta = Cat(rec[0], rec[1])
        hd = Signal(32)
        m.d.comb += hd.eq(Mux(rec[2] == 0, self.cols, rec[2]))
        flag = rec[3]
        scal = [Cat(rec[4 + 2 * q], rec[5 + 2 * q]) for q in range(4)]
        bad = ((theta <= _F64_ONE) | (theta >= _F64_INF) | hd[0] | (hd > self.cols) | (flag > 1)
               | ((flag == 1) & Cat(*[(v == 0) | (v >= _F64_INF) for v in scal]).any()))
        want = rom.record_words()
        differ = ((theta != Cat(Const(want[0], 32), Const(want[1], 32))) | (hd != rom.head_dim)
                  | (flag != want[3]))
        if rom.scaling is not None:
            differ = differ | Cat(*[rec[4 + t] != want[4 + t] for t in range(8)]).any()
        with m.If(step == 14):
            m.d.comb += [self.done.eq(1),
                         self.code.eq(Mux(bad, self.bad_data, Mux(differ | ~pos_ok, self.rom_code, 0)))]
        return m


#: The ROMs of the models olivine compiles (golden/loaders.py configs: glassllm theta 1e4, hd 32,
#: context 128; SmolLM2-135M theta 1e5, hd 64, context 8192; tests check them against the loaders),
#: for resource reports: ``olivine resources sfu --ops rope --rope smollm2``.
ROM_PRESETS = {"glassllm": dict(theta=10000.0, head_dim=32, positions=128),
               "smollm2": dict(theta=100000.0, head_dim=64, positions=8192)}


def preset_rom(name: str) -> RopeRom:
    if name not in ROM_PRESETS:
        raise ValueError(f"no RoPE ROM preset {name!r}; presets: {', '.join(ROM_PRESETS)}")
    return RopeRom(**ROM_PRESETS[name])


@register_unit("sfu_rope")
def _rope_unit(lanes: int = 4, model: str = "glassllm", positions: int = 0):
    """``olivine resources sfu_rope --lanes 16 --model smollm2 [--positions 1024]``: the core with a
    preset model's ROM (``positions``: fewer than the model's context; 0 = all of it)."""
    rom = preset_rom(str(model))
    if int(positions):
        rom = RopeRom(rom.theta, rom.head_dim, int(positions), rom.scaling)
    return RopeCore(int(lanes), rom), f"sfu_rope_{model}_p{rom.positions}_l{lanes}"
