"""HBM layout: the weight image per channel, the embedding rows, the KV cache and the I/O area.

Every linear is cut into tiles of ``n`` output rows (a multiple of 16) that fit half of the
weight buffer (the other half is loading the next tile) and half of the requantization table
area of the bias buffer. Each tile goes to the least-filled HBM channel (in program order), so consecutive tile loads
hit different channels and every channel holds about the same bytes; small models get tiles
of at most 1/(2C) of the weight bytes so that all C channels get a share. In its channel a
tile is ``n * row_bytes`` weight bytes followed by ``n`` 16-byte requantization entries
(int32 bias in the output format, uint32 multiplier, int32 shift, reserved), each part 64-byte aligned.
An N:16 sparse tile stores only its kept values (canonical order) as weight bytes, and after the
entries its meta bytes (block-N table padded to 16 bytes, then the packed 4-bit index stream of
the sparse blocks), loaded into the meta buffer (docs/isa.md "Semantics").

Above the weights, at addresses common to all channels:

* embedding rows: row ``r`` lives in channel ``r % C`` at ``embed_base + (r // C) * rec``; a
  record is ``pad16(dim)`` INT8 codes then (uint32 mult, int32 shift) padded to 16 bytes;
* the KV cache: region ``s = layer * Hkv + g`` in channel ``s % C`` at
  ``kv_base + (s // C) * kv_region``; a region holds K codes [capacity, hd] (hd: the padded head
  width, spec.head_pad; padded lanes hold zero codes), K exponents
  [capacity] (int8), K mantissas [capacity] (uint16), then the same for V (64-byte aligned parts);
* the I/O area in channel 0 at ``io_base``: the logits of the last program (int32 [vocab]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from olivine.hw.config import AcceleratorConfig

from .spec import CompileError, ModelSpec, pad16

ALIGN = 64
ENTRY = 16  # bytes of one requantization entry
BIAS_RESERVED = 2  # bias-buffer entries 0, 1: Q.K^T and P.V multipliers


ROPE_RECORD = 48  # bytes of the RoPE parameter record


def rope_record(c) -> np.ndarray:
    """theta float64, true head_dim uint32, scaling flag uint32 (1: LLaMA-3), then the LLaMA-3 factor,
    low_freq_factor, high_freq_factor and original_max_position_embeddings as float64 (0 if none)."""
    rec = np.zeros(ROPE_RECORD, dtype=np.uint8)
    rec[:8] = np.frombuffer(np.float64(c.rope_theta).tobytes(), dtype=np.uint8)
    rec[8:12] = np.frombuffer(np.uint32(c.head_dim).tobytes(), dtype=np.uint8)
    if c.rope_scaling is not None:
        rec[12:16] = np.frombuffer(np.uint32(1).tobytes(), dtype=np.uint8)
        rec[16:48] = np.frombuffer(np.asarray(c.rope_scaling, dtype="<f8").tobytes(), dtype=np.uint8)
    return rec


def align(x: int, a: int = ALIGN) -> int:
    return -(-x // a) * a


@dataclass
class Tile:
    n0: int
    n: int
    channel: int
    w_addr: int
    w_bytes: int
    b_addr: int
    m_addr: int = 0  # sparse tiles: HBM address and size of the meta bytes (0: dense)
    m_bytes: int = 0


@dataclass
class Layout:
    channels: int
    tiles: dict[str, list[Tile]]
    gamma_at: dict[str, tuple[int, int]]  # name -> (channel, addr); d int32 + (eps mult, shift) 16 B
    const_at: tuple[int, int]  # the RoPE record (ROPE_RECORD bytes) and the two attention entries
    weight_bytes: list[int]
    embed_base: int
    embed_rec: int
    kv_base: int
    kv_region: int
    kv_capacity: int
    kv_parts: tuple  # offsets of K codes, K exponents, K mantissas, V codes, V exponents, V mantissas
    io_base: int
    channel_bytes: list[int]  # total bytes used per channel (weights + embed + KV + I/O)
    weight_half: int
    bias_half_entries: int
    meta_half: int = 0
    image_parts: dict = field(default_factory=dict)  # bytes of weight values / meta / requant entries
    image: dict[int, bytearray] | None = field(default=None, repr=False)
    # OVP4-activation linears: name -> (channel, addr) of the SFU encoder's 16-byte parameter record
    act_at: dict[str, tuple[int, int]] = field(default_factory=dict)

    def kv_slot(self, layer: int, g: int, n_kv: int) -> tuple[int, int]:
        s = layer * n_kv + g
        return s % self.channels, self.kv_base + (s // self.channels) * self.kv_region

    def to_dict(self) -> dict:
        return {"channels": self.channels, "weight_bytes": self.weight_bytes, "embed_base": self.embed_base,
                "embed_rec": self.embed_rec, "kv_base": self.kv_base, "kv_region": self.kv_region,
                "kv_capacity": self.kv_capacity, "kv_parts": list(self.kv_parts), "io_base": self.io_base,
                "channel_bytes": self.channel_bytes, "image_parts": self.image_parts}


def tile_rows(config: AcceleratorConfig, row_bytes: int, n: int, cap_bytes: int | None = None,
              meta_row_bytes: int = 0) -> int:
    half = config.buffers.weight_kib * 1024 // 2
    if cap_bytes:
        half = max(16 * row_bytes, min(half, cap_bytes))
    half_entries = config.buffers.bias_kib * 1024 // ENTRY // 2 - BIAS_RESERVED
    rows = min(half // row_bytes, half_entries, n, 4080)
    if meta_row_bytes:
        # the meta half holds the tile's block-N table (padded to 16 B) and its index stream
        rows = min(rows, (config.buffers.meta_kib * 1024 // 2 - 16) // meta_row_bytes)
    rows = rows // 16 * 16
    if rows < 16:
        raise CompileError(f"a 16-row weight tile of {row_bytes} weight bytes (+ {meta_row_bytes} meta bytes) per row "
                           f"does not fit half the weight buffer ({half} bytes) / half the meta buffer; enlarge "
                           "BufferConfig.weight_kib / meta_kib")
    return rows


def plan_layout(spec: ModelSpec, config: AcceleratorConfig, kv_capacity: int, materialize: bool = True) -> Layout:
    c = spec.config
    C = config.hbm_channels
    used = [0] * C
    image = {ch: bytearray() for ch in range(C)} if materialize and spec.materialized else None

    def put(ch: int, data: np.ndarray | None, nbytes: int) -> int:
        addr = align(used[ch])
        used[ch] = addr + nbytes
        if image is not None:
            buf = image[ch]
            buf.extend(b"\0" * (addr - len(buf)))
            buf.extend(np.ascontiguousarray(data).view(np.uint8).tobytes())
        return addr

    # constants: the RoPE record (docs/isa.md) then the entries for Q.K^T and P.V
    const = np.zeros(ROPE_RECORD + 2 * ENTRY, dtype=np.uint8)
    const[:ROPE_RECORD] = rope_record(c)
    ent = np.zeros((2, 4), dtype=np.int64)
    ent[0, 1:3] = spec.score_mult
    ent[1, 1:3] = spec.pv_mult
    const[ROPE_RECORD:] = (ent & 0xFFFFFFFF).astype(np.uint32).view(np.uint8).reshape(-1)
    const_at = (0, put(0, const, const.size))
    tiles: dict[str, list[Tile]] = {}
    gamma_at = {}
    act_at: dict[str, tuple[int, int]] = {}
    em, es = spec.eps_mult
    order = []
    for i in range(c.n_layers):
        order += [("g", f"layers.{i}.attn_norm")] + [("w", f"layers.{i}.{n}") for n in ("wq", "wk", "wv", "wo")]
        order += [("g", f"layers.{i}.ffn_norm")] + [("w", f"layers.{i}.{n}") for n in ("w_gate", "w_up", "w_down")]
    order += [("g", "final_norm"), ("w", "lm_head")]
    total = sum(spec.linears[n].weight_bytes(0, spec.linears[n].n) for k, n in order if k == "w")
    image_parts = {"weight_values": 0, "meta": 0, "requant_entries": 0}
    cap = total // (2 * C)  # small models: cut tiles finer so every channel gets a share

    def least_loaded() -> int:
        return min(range(C), key=lambda ch: (used[ch], ch))

    for kind, name in order:
        if kind == "g":
            ch = least_loaded()
            data = None
            if image is not None:
                g = np.zeros(c.dim + 4, dtype=np.int64)
                g[: c.dim] = spec.gammas[name]
                g[c.dim: c.dim + 2] = (em, es)
                data = (g & 0xFFFFFFFF).astype(np.uint32)
            gamma_at[name] = (ch, put(ch, data, 4 * c.dim + 16))
            continue
        lin = spec.linears[name]
        if lin.act == "ovp4":  # the quant op's parameter record: uint32 mult, int32 shift, 8 reserved bytes
            ch = least_loaded()
            rec = None
            if image is not None:
                rec = np.zeros(4, dtype=np.int64)
                rec[:2] = lin.act_mult
                rec = (rec & 0xFFFFFFFF).astype(np.uint32)
            act_at[name] = (ch, put(ch, rec, 16))
        rows = tile_rows(config, lin.row_bytes, lin.n, cap, lin.meta_row_bytes())
        tl = []
        table = lin.requant_table() if image is not None else None
        for n0 in range(0, lin.n, rows):
            n = min(rows, lin.n - n0)
            ch = least_loaded()
            wb = lin.weight_bytes(n0, n)
            w_addr = put(ch, None if image is None else lin.tile_weight_bytes(n0, n), wb)
            b_addr = put(ch, None if image is None else table[n0:n0 + n], n * ENTRY)
            m_addr = mb = 0
            if lin.sparse:
                mb = lin.meta_bytes(n0, n)
                m_addr = put(ch, None if image is None else lin.tile_meta(n0, n), mb)
            image_parts["weight_values"] += wb
            image_parts["meta"] += mb
            image_parts["requant_entries"] += n * ENTRY
            tl.append(Tile(n0, n, ch, w_addr, wb, b_addr, m_addr, mb))
        tiles[name] = tl
    weight_bytes = list(used)
    rec = pad16(c.dim) + 16
    embed_base = align(max(used), 4096)
    per_ch = -(-c.vocab_size // C)
    if image is not None:
        recs = np.zeros((c.vocab_size, rec), dtype=np.uint8)
        recs[:, : c.dim] = spec.embed_codes.view(np.uint8)
        mm = np.zeros((c.vocab_size, 2), dtype=np.int64)
        mm[:, 0], mm[:, 1] = spec.embed_mult, spec.embed_shift
        recs[:, pad16(c.dim): pad16(c.dim) + 8] = (mm & 0xFFFFFFFF).astype(np.uint32).view(np.uint8).reshape(-1, 8)
        for ch in range(C):
            buf = image[ch]
            buf.extend(b"\0" * (embed_base - len(buf)))
            buf.extend(recs[ch::C].tobytes())
    kv_base = align(embed_base + per_ch * rec, 4096)
    hd = spec.head_pad
    half = align(kv_capacity * hd) + align(kv_capacity) + align(2 * kv_capacity)
    parts = (0, align(kv_capacity * hd), align(kv_capacity * hd) + align(kv_capacity),
             half, half + align(kv_capacity * hd), half + align(kv_capacity * hd) + align(kv_capacity))
    kv_region = align(2 * half, 4096)
    slots = -(-(c.n_layers * c.n_kv_heads) // C)
    io_base = kv_base + slots * kv_region
    channel_bytes = []
    n_slots = c.n_layers * c.n_kv_heads
    for ch in range(C):
        n_here = (n_slots - ch + C - 1) // C if ch < n_slots else 0
        channel_bytes.append(kv_base + n_here * kv_region)
    channel_bytes[0] = max(channel_bytes[0], io_base + align(4 * c.vocab_size))
    cap = config.board_facts.memory.channel_bytes
    if cap and max(channel_bytes) > cap:
        worst = max(range(C), key=lambda ch: channel_bytes[ch])
        raise CompileError(f"HBM channel {worst} needs {max(channel_bytes)} bytes (weights, embedding, KV cache of "
                           f"{kv_capacity} positions) but a channel of {config.board} holds {cap}; use a smaller "
                           "context or lower-precision weights")
    return Layout(C, tiles, gamma_at, const_at, weight_bytes, embed_base, rec, kv_base, kv_region, kv_capacity, parts,
                  io_base, channel_bytes, config.buffers.weight_kib * 1024 // 2,
                  config.buffers.bias_kib * 1024 // ENTRY // 2, meta_half=config.buffers.meta_kib * 1024 // 2,
                  image_parts=image_parts, image=image, act_at=act_at)
