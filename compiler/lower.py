"""Lowering of decoder forwards into olivine instruction streams (docs/compiler.md).

A program is built as a list of operations, each with the buffer ranges it reads and writes.
:func:`synchronise` then derives the wait/release masks: an operation waits for the latest
earlier operation of another unit it conflicts with (read-after-write, write-after-read,
write-after-write on any buffer byte or KV-cache region), unless an earlier wait of the same
unit already covers it. Because both sides consume tokens in program order, each wait pairs with
exactly the release the analysis intended. Weight tiles alternate between the two halves of the
weight buffer, so the load of tile i+1 overlaps the matrix product of tile i (double buffering)
without any hand-written synchronisation.

Run-time patches (length adaptivity): some fields depend on the true length, the position or the
token ids. Each is recorded as ``value = base + scale * var`` with ``var`` one of ``pos`` (decode
position), ``tok_ch.k`` / ``tok_row.k`` (channel and row of prompt token k's embedding record),
``last_row.c`` and ``is_last.c`` (prefill: which row of chunk c is the last real token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from olivine.hw.config import AcceleratorConfig

from . import isa
from .layout import ALIGN, BIAS_RESERVED, ENTRY, ROPE_RECORD, Layout, align
from .spec import CompileError, ModelSpec, pad16

UNIT_INDEX = {u: i for i, u in enumerate(isa.UNITS)}
GRAIN = 64  # bytes per dependency-tracking cell


@dataclass
class Op:
    mnemonic: str
    fields: dict
    reads: list = field(default_factory=list)  # (space, start, end)
    writes: list = field(default_factory=list)
    patches: list = field(default_factory=list)  # (field, base, scale, var)
    tag: str = ""

    @property
    def unit(self) -> int:
        u = isa.BY_MNEMONIC[self.mnemonic].unit
        return -1 if u == "all" else UNIT_INDEX[u]


def synchronise(ops: list[Op], spaces: dict[str, int]) -> None:
    """Fill every op's ``wait``/``release`` from its read/write ranges (see module docstring)."""
    lastw = {s: np.full((4, -(-n // GRAIN) + 1), -1, dtype=np.int64) for s, n in spaces.items()}
    lastr = {s: np.full_like(a, -1) for s, a in lastw.items()}
    waited = np.full((4, 4), -1, dtype=np.int64)  # [producer unit, consumer unit]
    for op in ops:
        op.fields.setdefault("wait", 0)
        op.fields.setdefault("release", 0)
    for i, op in enumerate(ops):
        u = op.unit
        if u < 0:
            continue
        dep = np.full(4, -1, dtype=np.int64)
        cells = []
        for space, s, e in op.reads:
            a, b = s // GRAIN, -(-e // GRAIN)
            dep = np.maximum(dep, lastw[space][:, a:b].max(axis=1, initial=-1))
            cells.append((lastr[space], a, b))
        for space, s, e in op.writes:
            a, b = s // GRAIN, -(-e // GRAIN)
            dep = np.maximum(dep, lastw[space][:, a:b].max(axis=1, initial=-1))
            dep = np.maximum(dep, lastr[space][:, a:b].max(axis=1, initial=-1))
            cells.append((lastw[space], a, b))
        for v in range(4):
            if v != u and dep[v] > waited[v, u]:
                op.fields["wait"] |= 1 << v
                ops[dep[v]].fields["release"] |= 1 << u
                waited[v, u] = dep[v]
        for arr, a, b in cells:
            arr[u, a:b] = i


class Allocator:
    """Bump allocator of one on-chip byte space with marks (phases reuse the same bytes)."""

    def __init__(self, name: str, size: int):
        self.name, self.size, self.top, self.peak = name, size, 0, 0

    def alloc(self, nbytes: int, what: str) -> int:
        addr = align(self.top, ALIGN)
        self.top = addr + max(nbytes, 1)
        self.peak = max(self.peak, self.top)
        if self.top > self.size:
            raise CompileError(f"{what}: the {self.name} space needs {self.top} bytes but has {self.size}")
        return addr


def qblock_bytes(rows: int, cols: int) -> int:
    """INT8 codes [rows, cols], then one int8 exponent per row, then one uint16 mantissa per row."""
    return rows * cols + 3 * rows


def _act_rule(lin) -> tuple:
    """What determines a linear's quantized input: the activation kind and, for static OVP4, its encoder."""
    return (lin.act, lin.act_mult, lin.act_normal) if lin.act == "ovp4" else (lin.act,)


class Lowering:
    """Emits the operations of prefill chunks and decode steps for one model and configuration."""

    def __init__(self, spec: ModelSpec, config: AcceleratorConfig, layout: Layout):
        self.spec, self.config, self.layout = spec, config, layout
        self.c = spec.config
        self.data_size = (config.buffers.activation_kib + config.buffers.global_kib) * 1024
        self.spaces = {"data": self.data_size, "weight": config.buffers.weight_kib * 1024,
                       "bias": config.buffers.bias_kib * 1024, "meta": config.buffers.meta_kib * 1024,
                       "kv": self.c.n_layers * self.c.n_kv_heads * 4 * GRAIN, "io": GRAIN}
        self.ops: list[Op] = []
        self.tile_count = 0
        self.gamma_count = 0
        self.act_count = 0
        self.last_quant = None

    # ---- primitive emitters ------------------------------------------------------------------
    def op(self, mn, reads=(), writes=(), patches=(), tag="", **fields) -> Op:
        o = Op(mn, fields, list(reads), list(writes), list(patches), tag)
        self.ops.append(o)
        return o

    def ld(self, target, buf_addr, channel, hbm_addr, length, space, tag="", patches=(), kv=None):
        reads = [("kv", kv * GRAIN, kv * GRAIN + GRAIN)] if kv is not None else []
        self.op("LD", reads, [(space, buf_addr, buf_addr + length)], patches, tag, target=target, channel=channel,
                hbm_addr=hbm_addr, buf_addr=buf_addr, length=length)

    def st(self, buf_addr, channel, hbm_addr, length, tag, kv=None, patches=()):
        writes = [("kv", kv * GRAIN, kv * GRAIN + GRAIN)] if kv is not None else [("io", 0, GRAIN)]
        self.op("ST", [("data", buf_addr, buf_addr + length)], writes, patches, tag, source="act", channel=channel,
                hbm_addr=hbm_addr, buf_addr=buf_addr, length=length)

    def misc(self, op, src0, src0_len, dst, dst_len, rows, cols, src1=0, src1_len=0, imm=0, mask=0, patches=(),
             tag=""):
        reads = [("data", src0, src0 + src0_len)]
        if src1_len:
            reads.append(("data", src1, src1 + src1_len))
        self.op("MISC", reads, [("data", dst, dst + dst_len)], patches, tag or op, op=op, src0=src0, src1=src1,
                dst=dst, rows=rows, cols=cols, imm=imm, mask=mask)

    # ---- layers ------------------------------------------------------------------------------
    def linear(self, name: str, a: int, m: int, out: int, ldo: int):
        lin = self.spec.linears[name]
        mn = "MV" if m == 1 else "MM"
        half_w = self.layout.weight_half
        half_b = self.layout.bias_half_entries
        ovp_act = lin.act == "ovp4"
        a_len = m * lin.k // 2 if ovp_act else qblock_bytes(m, lin.k)
        afmt = {"afmt": "ovp4", "anormal": lin.act_normal} if ovp_act else {}
        for t in self.layout.tiles[name]:
            slot = self.tile_count % 2
            self.tile_count += 1
            wbuf = slot * half_w
            bent = BIAS_RESERVED + slot * half_b
            self.ld("weight", wbuf, t.channel, t.w_addr, t.w_bytes, "weight", tag=f"{name}.w")
            self.ld("bias", bent * ENTRY, t.channel, t.b_addr, t.n * ENTRY, "bias", tag=f"{name}.b")
            reads = [("data", a, a + a_len), ("weight", wbuf, wbuf + t.w_bytes),
                     ("bias", bent * ENTRY, (bent + t.n) * ENTRY)]
            sparse = {}
            if t.m_bytes:
                mbuf = slot * self.layout.meta_half  # a multiple of 16: meta_addr counts 16-byte units
                self.ld("meta", mbuf, t.channel, t.m_addr, t.m_bytes, "meta", tag=f"{name}.m")
                reads.append(("meta", mbuf, mbuf + t.m_bytes))
                sparse = {"sparse": 1, "meta_addr": mbuf // 16}
            out_a = out + 4 * t.n0
            self.op(mn, reads, [("data", out_a, out_a + 4 * ((m - 1) * ldo + t.n))], (), name,
                    mode="linear", wfmt=lin.wfmt, normal=lin.normal if lin.wfmt == "ovp4" else "int4",
                    out="fixed32", k_blocks=lin.k // 16, m=m, n=t.n, ldo=ldo, a_addr=a, b_addr=wbuf,
                    out_addr=out_a, bias_addr=bent, wgroup=lin.wgroup, **sparse, **afmt)

    def rmsnorm(self, name, x, rows, dst):
        d = self.c.dim
        gslot = self.gamma_slots[self.gamma_count % 2]
        self.gamma_count += 1
        ch, addr = self.layout.gamma_at[name]
        self.ld("act", gslot, ch, addr, 4 * d + 16, "data", tag=name)
        self.misc("rmsnorm", x, 4 * rows * d, dst, 4 * rows * d, rows, d, src1=gslot, src1_len=4 * d + 16)

    def quant(self, src, rows, cols, dst, groups=1, pow2=False):
        blk = align(qblock_bytes(rows // groups, cols)) if groups > 1 else qblock_bytes(rows, cols)
        self.misc("quant", src, 4 * rows * cols, dst, groups * blk, rows, cols, imm=groups | (int(pow2) << 16))
        return blk

    def quant_for(self, name, src, rows, cols, dst):
        """Quantize the input of linear ``name`` with its activation rule (OVP4: the static encoder, its
        parameter record loaded from HBM into one of two slots)."""
        lin = self.spec.linears[name]
        self.last_quant = _act_rule(lin)
        if lin.act != "ovp4":
            return self.quant(src, rows, cols, dst, pow2=lin.act == "int8-pow2")
        slot = self.act_slots[self.act_count % 2]
        self.act_count += 1
        ch, addr = self.layout.act_at[name]
        self.ld("act", slot, ch, addr, 16, "data", tag=f"{name}.act")
        imm = isa.QUANT_OVP4 | (isa.QUANT_FLINT4 if lin.act_normal == "flint4" else 0)
        self.misc("quant", src, 4 * rows * cols, dst, rows * cols // 2, rows, cols, src1=slot, src1_len=16, imm=imm)
        return rows * cols // 2

    def quant_shared(self, name, src, rows, cols, dst):
        """Linears reading the same input (wq/wk/wv, w_gate/w_up) share its quantization unless their
        static activation parameters differ (each OVP4 linear has its own calibrated alpha)."""
        if self.last_quant != _act_rule(self.spec.linears[name]):
            self.quant_for(name, src, rows, cols, dst)

    # ---- one forward over R rows (a prefill chunk or a decode step) --------------------------
    def forward(self, R: int, S: int, S_alloc: int, pos0: int | None, tok_base: int, decode: bool,
                alloc_only: bool = False):
        """Emit one forward of R tokens at positions pos0.. (None: patched 'pos'), keys 0..S-1."""
        c, L, sp = self.c, self.layout, self.spec
        # hd: the stored (padded) head width; the RoPE record carries the true head_dim
        d, hd, Hq, Hkv, rep, Fp = c.dim, sp.head_pad, c.n_heads, c.n_kv_heads, c.n_rep, sp.ffn_pad
        if S % 16 or S > S_alloc or S > L.kv_capacity:
            raise CompileError(f"key length {S} must be a multiple of 16 within the KV capacity {L.kv_capacity}")
        A = Allocator("data", self.data_size)
        A.top = self.persist_top
        x = self.x_addr
        emb = A.alloc(R * L.embed_rec, "embedding records")
        h = A.alloc(4 * R * d, "norm output")
        hq = A.alloc(qblock_bytes(R, max(d, Fp, Hq * hd)), "quantized activations")
        phase = A.top
        q = A.alloc(4 * R * Hq * hd, "q")
        k = A.alloc(4 * R * Hkv * hd, "k")
        v = A.alloc(4 * R * Hkv * hd, "v")
        qb = align(qblock_bytes(R, hd))
        qq = A.alloc(Hq * qb, "q blocks")
        kq = A.alloc(Hkv * qb, "k blocks")
        vq = A.alloc(Hkv * qb, "v blocks")
        kvb = align(qblock_bytes(S_alloc, hd))
        kbuf = [A.alloc(kvb, "K tile"), A.alloc(kvb, "K tile")]
        vbuf = [A.alloc(kvb, "V tile"), A.alloc(kvb, "V tile")]
        sc = A.alloc(4 * rep * R * S_alloc, "scores")
        pblk = align(4 * R * S_alloc + R)
        pb = A.alloc(rep * pblk, "shifted probabilities")
        att = A.alloc(4 * R * Hq * hd, "attention output")
        o = A.alloc(4 * R * d, "linear output")
        top_attn = A.top
        A.top = phase
        g = A.alloc(4 * R * Fp, "gate")
        u = A.alloc(4 * R * Fp, "up")
        A.top = max(A.top, top_attn)
        self.peak = max(getattr(self, "peak", 0), A.peak)
        if alloc_only:
            return
        pos_patch = pos0 is None
        p0 = 0 if pos_patch else pos0

        def pp(fieldname, base, scale=1):
            return [(fieldname, base, scale, "pos")] if pos_patch else []

        # embedding lookup: one record per token (channel and address patched with the token id)
        for r in range(R):
            kk = tok_base + r
            self.ld("act", emb + r * L.embed_rec, 0, L.embed_base, L.embed_rec, "data", tag="embed",
                    patches=[("channel", 0, 1, f"tok_ch.{kk}"), ("hbm_addr", L.embed_base, L.embed_rec, f"tok_row.{kk}")])
        self.misc("dequant", emb, R * L.embed_rec, x, 4 * R * d, R, d, imm=L.embed_rec)
        for layer in range(c.n_layers):
            pre = f"layers.{layer}."
            self.rmsnorm(pre + "attn_norm", x, R, h)
            self.quant_for(pre + "wq", h, R, d, hq)
            self.linear(pre + "wq", hq, R, q, Hq * hd)
            self.quant_shared(pre + "wk", h, R, d, hq)
            self.linear(pre + "wk", hq, R, k, Hkv * hd)
            self.quant_shared(pre + "wv", h, R, d, hq)
            self.linear(pre + "wv", hq, R, v, Hkv * hd)
            # RoPE in place (docs/isa.md allows dst = src0: the SFU holds pass 0's first-half results
            # until pass 1 has read the first half, hw/sfu_rope.py)
            for src, heads in ((q, Hq), (k, Hkv)):
                self.misc("rope", src, 4 * R * heads * hd, src, 4 * R * heads * hd, R * heads, hd,
                          src1=self.rope_rec, src1_len=ROPE_RECORD, imm=p0 | (heads << 16),
                          patches=pp("imm", heads << 16))
            self.quant(q, R * Hq, hd, qq, Hq)
            self.quant(k, R * Hkv, hd, kq, Hkv)
            self.quant(v, R * Hkv, hd, vq, Hkv)
            kp = L.kv_parts
            for gi in range(Hkv):
                slot = layer * Hkv + gi
                ch, base = L.kv_slot(layer, gi, Hkv)
                for blk, (pc, pe, pm) in ((kq, kp[0:3]), (vq, kp[3:6])):
                    b0 = blk + gi * qb
                    self.st(b0, ch, base + pc + p0 * hd, R * hd, "kv_append", kv=slot,
                            patches=pp("hbm_addr", base + pc, hd))
                    self.st(b0 + R * hd, ch, base + pe + p0, R, "kv_append", kv=slot,
                            patches=pp("hbm_addr", base + pe, 1))
                    self.st(b0 + R * hd + R, ch, base + pm + 2 * p0, 2 * R, "kv_append", kv=slot,
                            patches=pp("hbm_addr", base + pm, 2))
            for gi in range(Hkv):
                slot = layer * Hkv + gi
                ch, base = L.kv_slot(layer, gi, Hkv)
                kb, vb = kbuf[gi % 2], vbuf[gi % 2]
                for buf, (pc, pe, pm) in ((kb, kp[0:3]), (vb, kp[3:6])):
                    self.ld("global", buf, ch, base + pc, S * hd, "data", tag="kv_load", kv=slot)
                    self.ld("global", buf + S * hd, ch, base + pe, S, "data", tag="kv_load", kv=slot)
                    self.ld("global", buf + S * hd + S, ch, base + pm, 2 * S, "data", tag="kv_load", kv=slot)
                for j in range(rep):
                    hh = gi * rep + j
                    a0 = qq + hh * qb
                    o0 = sc + j * 4 * R * S
                    self.op("MV" if R == 1 else "MM", [("data", a0, a0 + qblock_bytes(R, hd)),
                                                       ("data", kb, kb + qblock_bytes(S, hd)), ("bias", 0, ENTRY)],
                            [("data", o0, o0 + 4 * R * S)], (), "qk", mode="qk", out="fixed32",
                            k_blocks=hd // 16, m=R, n=S, ldo=S, a_addr=a0, b_addr=kb, out_addr=o0, bias_addr=0)
                self.misc("softmax", sc, 4 * rep * R * S, sc, 4 * rep * R * S, rep * R, S, mask=1,
                          imm=p0 | (R << 16), patches=pp("imm", R << 16))
                for j in range(rep):
                    hh = gi * rep + j
                    s0 = sc + j * 4 * R * S
                    p_ = pb + j * pblk
                    self.misc("vshift", s0, 4 * R * S, p_, 4 * R * S + R, R, S, src1=vb + S * hd, src1_len=3 * S,
                              imm=p0 | (R << 16), patches=pp("imm", R << 16))
                    o0 = att + 4 * hh * hd
                    self.op("MV" if R == 1 else "MM", [("data", p_, p_ + 4 * R * S + R),
                                                       ("data", vb, vb + qblock_bytes(S, hd)),
                                                       ("bias", ENTRY, 2 * ENTRY)],
                            [("data", o0, o0 + 4 * ((R - 1) * Hq * hd + hd))], (), "pv", mode="pv", out="fixed32",
                            k_blocks=S // 16, m=R, n=hd, ldo=Hq * hd, a_addr=p_, b_addr=vb, out_addr=o0,
                            bias_addr=1)
            self.quant_for(pre + "wo", att, R, Hq * hd, hq)
            self.linear(pre + "wo", hq, R, o, d)
            self.misc("add", x, 4 * R * d, x, 4 * R * d, R, d, src1=o, src1_len=4 * R * d)
            self.rmsnorm(pre + "ffn_norm", x, R, h)
            self.quant_for(pre + "w_gate", h, R, d, hq)
            self.linear(pre + "w_gate", hq, R, g, Fp)
            self.quant_shared(pre + "w_up", h, R, d, hq)
            self.linear(pre + "w_up", hq, R, u, Fp)
            self.misc("swiglu", g, 4 * R * Fp, g, 4 * R * Fp, R, Fp, src1=u, src1_len=4 * R * Fp)
            self.quant_for(pre + "w_down", g, R, Fp, hq)
            self.linear(pre + "w_down", hq, R, o, d)
            self.misc("add", x, 4 * R * d, x, 4 * R * d, R, d, src1=o, src1_len=4 * R * d)

    def setup(self, R: int, emit_constants: bool = True):
        """Persistent regions: residual, constants, gamma slots, final row, logits."""
        c = self.c
        A = Allocator("data", self.data_size)
        self.rope_rec = A.alloc(ROPE_RECORD + 2 * ENTRY, "constants")
        self.gamma_slots = [A.alloc(4 * c.dim + 16, "gamma"), A.alloc(4 * c.dim + 16, "gamma")]
        self.act_slots = [A.alloc(16, "OVP4 quant parameters"), A.alloc(16, "OVP4 quant parameters")]
        self.x_addr = A.alloc(4 * R * c.dim, "residual")
        self.final_row = A.alloc(4 * c.dim, "final row")
        self.scratch_row = A.alloc(4 * c.dim, "scratch row")
        self.final_h = A.alloc(4 * c.dim, "final norm")
        self.final_q = A.alloc(qblock_bytes(1, c.dim), "final quant")
        self.logits = A.alloc(4 * self.spec.linears["lm_head"].n, "logits")  # padded rows compute zeros
        self.persist_top = A.top
        if not emit_constants:
            return
        ch, addr = self.layout.const_at
        self.ld("act", self.rope_rec, ch, addr, ROPE_RECORD + 2 * ENTRY, "data", tag="constants")
        # the two attention multiplier entries go to bias-buffer entries 0 and 1
        self.ld("bias", 0, ch, addr + ROPE_RECORD, 2 * ENTRY, "bias", tag="constants")

    def head(self, row: int):
        """Final RMSNorm and lm_head on one row; logits stored to the I/O area (the program output)."""
        c = self.c
        self.rmsnorm("final_norm", row, 1, self.final_h)
        self.quant_for("lm_head", self.final_h, 1, c.dim, self.final_q)
        self.linear("lm_head", self.final_q, 1, self.logits, self.spec.linears["lm_head"].n)
        # only the true vocabulary leaves the chip: the padded rows' zero logits are never stored
        self.st(self.logits, 0, self.layout.io_base, 4 * c.vocab_size, "output")

    def finish(self, sys_op: str = "end") -> tuple[np.ndarray, list[dict]]:
        """Synchronise, then encode every op (range-checked like isa.make) into one word array."""
        self.op("SYS", op=sys_op)
        synchronise(self.ops, self.spaces)
        words: list[int] = []
        patches = []
        for o in self.ops:
            offset = len(words)
            words.extend(fast_encode(o.mnemonic, o.fields))
            for fieldname, base, scale, var in o.patches:
                patches.append({"offset": offset, "mnemonic": o.mnemonic, "field": fieldname, "base": int(base),
                                "scale": int(scale), "var": var})
        return np.asarray(words, dtype=np.uint32), patches


def _encoder_tables():
    tables = {}
    for fmt in isa.FORMATS:
        rows = []
        for f in fmt.all_fields:
            enum = {n: k for k, n in enumerate(f.kind)} if isinstance(f.kind, tuple) else None
            rows.append((f.name, f.word, f.lsb, f.max, enum, f.kind == "count"))
        tables[fmt.mnemonic] = (fmt.opcode, fmt.words, rows)
    return tables


_TABLES = _encoder_tables()


def fast_encode(mnemonic: str, fields: dict) -> list[int]:
    """The words of one instruction; same checks as isa.make (range, counts >= 1, enum names)."""
    opcode, n_words, rows = _TABLES[mnemonic]
    words = [0] * n_words
    words[0] = opcode
    used = 1
    for name, word, lsb, vmax, enum, count in rows[1:]:
        if name in fields:
            used += 1
            v = fields[name]
            if enum is not None and isinstance(v, str):
                if v not in enum:
                    raise isa.IsaError(f"{mnemonic}: {v!r} is not one of {', '.join(enum)}", field=name)
                v = enum[v]
            v = int(v)
        else:
            v = 1 if count else 0
        if not 0 <= v <= vmax or (count and v == 0):
            raise isa.IsaError(f"{mnemonic}: value {v} does not fit field {name} (max {vmax})", field=name)
        words[word] |= v << lsb
    if used - 1 != len(fields):
        unknown = set(fields) - {r[0] for r in rows}
        raise isa.IsaError(f"{mnemonic} has no field(s) {', '.join(sorted(unknown))}")
    if mnemonic == "MV" and fields.get("m", 1) != 1:
        raise isa.IsaError("MV computes one row: m must be 1 (use MM)", field="m")
    return words


def choose_prefill_rows(spec: ModelSpec, config: AcceleratorConfig, layout: Layout, s_alloc: int,
                        max_rows: int = 128) -> int:
    """Largest chunk (tokens per pass, a power of two <= 128) whose buffers fit the data space."""
    r = max_rows
    while r >= 1:
        try:
            lw = Lowering(spec, config, layout)
            lw.setup(r)
            lw.forward(r, pad16(r), max(s_alloc, pad16(r)), 0, 0, False, alloc_only=True)
            return r
        except CompileError:
            r //= 2
    raise CompileError(f"not even one token with {s_alloc} keys fits the on-chip data space "
                       f"({config.buffers.activation_kib} + {config.buffers.global_kib} KiB); lower --max-prompt / "
                       "--max-context, or give --config with larger activation_kib / global_kib buffers")
