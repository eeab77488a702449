"""Functional simulator of the olivine accelerator: executes instruction streams on byte buffers.

The machine: HBM channels (byte arrays), the on-chip buffers of one core (the data space =
activation buffer followed by the global buffer, the weight, bias and meta buffers) and four
in-order unit queues (LD, ST, MPE, SFU) synchronised by wait/release tokens. Every instruction
does exactly what docs/isa.md "Semantics" says; MM/MV use golden/contract.py's integer ops and
MISC golden/sfu.py's, so a compiled model is bit-exact with golden/qmodel.py.

Scheduling: each unit runs ahead as far as its tokens allow (LD first), which exposes a missing
token as a wrong result or a deadlock; a deadlock raises :class:`DeadlockError` naming the
instruction each unit is stuck on. Statistics: instructions per unit and mnemonic, bytes read
and written per HBM channel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from olivine.hw import isa
from olivine.compiler.asm import disassemble_one
from olivine.golden import contract, fixed, ovp, sfu

__all__ = ["FuncSim", "SimError", "DeadlockError", "SimStats", "Runtime", "run_main", "check_against_golden"]

F = 16  # fractional bits of every fixed-point activation (golden/fixed.py)


class SimError(RuntimeError):
    """An instruction that cannot execute (out-of-range address, unsupported operation)."""


class DeadlockError(SimError):
    """No unit can proceed but the program has not ended."""


@dataclass
class SimStats:
    instructions: dict = field(default_factory=lambda: {u: 0 for u in isa.UNITS})
    by_mnemonic: dict = field(default_factory=dict)
    hbm_read: dict = field(default_factory=dict)
    hbm_written: dict = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, other: "SimStats") -> None:
        for k, v in other.instructions.items():
            self.instructions[k] = self.instructions.get(k, 0) + v
        for d, o in ((self.by_mnemonic, other.by_mnemonic), (self.hbm_read, other.hbm_read),
                     (self.hbm_written, other.hbm_written)):
            for k, v in o.items():
                d[k] = d.get(k, 0) + v
        self.seconds += other.seconds


def _u32(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32).astype(np.int64)


@dataclass
class SparseTile:
    """A decoded N:16 sparse weight tile: row r multiplies ``vals[r, j]`` with the activation at column
    ``cols[r, j]`` (its group's base + the stored in-group index); unused slots point at column K, an
    appended zero activation (rows of different 16-row bands keep different counts)."""

    cols: torch.Tensor  # int64 [n, L]
    vals: torch.Tensor  # int64 [n, L]
    vmax: int

    def matmul(self, a: torch.Tensor) -> torch.Tensor:
        """acc[t, r] = wrap32(sum_j a[t, cols[r, j]] * vals[r, j]): the sparse MUX selects the activation
        of each kept weight; the products are summed exactly (float64 when every partial sum is an
        exactly representable integer, else int64), as ``contract.int_matmul`` sums the dense form."""
        a_ext = torch.cat([a.to(torch.int64), torch.zeros(a.shape[0], 1, dtype=torch.int64)], dim=1)
        amax = int(a_ext.abs().max()) if a_ext.numel() else 0
        selected = a_ext[:, self.cols]  # [m, n, L]: the MUX outputs
        if amax * self.vmax * max(self.cols.shape[1], 1) < 2**53:
            acc = torch.round((selected.to(torch.float64) * self.vals.to(torch.float64)).sum(-1)).to(torch.int64)
        else:
            acc = (selected * self.vals).sum(-1)
        return contract.wrap_int32(acc)


class FuncSim:
    """One accelerator core with its HBM. ``channel_bytes`` sizes each channel; ``image`` preloads them."""

    def __init__(self, config, channel_bytes: list[int], image: dict[int, bytes] | None = None):
        self.config = config
        b = config.buffers
        self.hbm = [np.zeros(int(n), dtype=np.uint8) for n in channel_bytes]
        for ch, data in (image or {}).items():
            if len(data) > len(self.hbm[ch]):
                raise SimError(f"weight image of channel {ch} ({len(data)} B) exceeds the channel size")
            self.hbm[ch][: len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.data = np.zeros((b.activation_kib + b.global_kib) * 1024, dtype=np.uint8)
        self.buffers = {"weight": np.zeros(b.weight_kib * 1024, dtype=np.uint8),
                        "meta": np.zeros(b.meta_kib * 1024, dtype=np.uint8),
                        "bias": np.zeros(b.bias_kib * 1024, dtype=np.uint8)}
        self.stats = SimStats()
        # ((channel, hbm address, bytes) of the weights, same of the meta or None, format, normal, n, k)
        #   -> decoded tile (dense: (grid, float64 grid, max); sparse: SparseTile)
        self._wcache: dict = {}
        # per buffer: buffer address -> (channel, hbm address, bytes) of its last LD
        self._src: dict = {"weight": {}, "meta": {}}

    # ---- memory helpers ----------------------------------------------------------------------
    def _space(self, target: str) -> np.ndarray:
        return self.data if target in ("act", "global", "kv") else self.buffers[target]

    def _slice(self, arr: np.ndarray, addr: int, n: int, what: str) -> np.ndarray:
        if addr < 0 or addr + n > len(arr):
            raise SimError(f"{what}: bytes [{addr}, {addr + n}) outside a buffer of {len(arr)} bytes")
        return arr[addr: addr + n]

    def i32(self, addr: int, rows: int, cols: int, pitch: int | None = None, what="operand") -> torch.Tensor:
        pitch = cols if pitch is None else pitch
        if addr % 4:
            raise SimError(f"{what}: int32 data at unaligned address {addr}")
        n = 4 * ((rows - 1) * pitch + cols)
        raw = self._slice(self.data, addr, n, what)
        flat = np.frombuffer(raw.tobytes(), dtype="<i4")
        if pitch == cols:
            return torch.from_numpy(flat.reshape(rows, cols).copy())
        return torch.from_numpy(np.lib.stride_tricks.as_strided(flat, (rows, cols), (4 * pitch, 4)).copy())

    def put_i32(self, addr: int, t: torch.Tensor, pitch: int | None = None, what="result") -> None:
        rows, cols = t.shape
        pitch = cols if pitch is None else pitch
        arr = t.to(torch.int32).numpy().astype("<i4")
        if addr % 4:
            raise SimError(f"{what}: int32 data at unaligned address {addr}")
        n = 4 * ((rows - 1) * pitch + cols)
        self._slice(self.data, addr, n, what)
        view = self.data[addr: addr + 4 * rows * pitch] if addr + 4 * rows * pitch <= len(self.data) else None
        if pitch == cols or view is None:
            for r in range(rows):
                o = addr + 4 * r * pitch
                self.data[o: o + 4 * cols] = arr[r].view(np.uint8)
            return
        v32 = view.view("<i4").reshape(rows, pitch)
        v32[:, :cols] = arr

    def qblock(self, addr: int, rows: int, cols: int, what="INT8 block"):
        """(codes int8 [rows, cols], exponents int8 [rows, 1], mantissas int64 [rows, 1])."""
        raw = self._slice(self.data, addr, rows * cols + 3 * rows, what)
        n = rows * cols
        codes = torch.from_numpy(raw[:n].view(np.int8).reshape(rows, cols).copy())
        exps = torch.from_numpy(raw[n: n + rows].view(np.int8).copy()).reshape(rows, 1)
        mants = torch.from_numpy(np.frombuffer(raw[n + rows:].tobytes(), dtype="<u2").astype(np.int64)).reshape(rows, 1)
        return codes, exps, mants

    def put_qblock(self, addr: int, codes: torch.Tensor, exps: torch.Tensor, mants: torch.Tensor | None) -> None:
        rows, cols = codes.shape
        n = rows * cols
        dst = self._slice(self.data, addr, n + 3 * rows, "quant result")
        dst[:n] = codes.to(torch.int8).numpy().reshape(-1).view(np.uint8)
        dst[n: n + rows] = exps.to(torch.int8).numpy().reshape(-1).view(np.uint8)
        m = np.ones(rows, dtype="<u2") if mants is None else mants.to(torch.int64).numpy().reshape(-1).astype("<u2")
        dst[n + rows:] = m.view(np.uint8)

    def entries(self, index: int, n: int) -> np.ndarray:
        raw = self._slice(self.buffers["bias"], 16 * index, 16 * n, "requantization entries")
        return raw.view("<i4").reshape(n, 4)

    # ---- instructions ----------------------------------------------------------------------------
    def _hbm(self, ch: int) -> np.ndarray:
        if ch >= len(self.hbm):
            raise SimError(f"HBM channel {ch} does not exist ({len(self.hbm)} channels)")
        return self.hbm[ch]

    def _bursts(self, i: isa.Instruction) -> np.ndarray:
        n0, n1, n2 = i["n0"], i.get("n1", 1), i.get("n2", 1)
        i2, i1, i0 = np.meshgrid(np.arange(n2), np.arange(n1), np.arange(n0), indexing="ij")
        s1, s2 = i.get("hbm_stride1", 0), i.get("hbm_stride2", 0)
        return (i["hbm_addr"] + i2 * s2 + i1 * s1 + i0 * i["hbm_stride0"]).reshape(-1)

    def do_ld(self, i):
        target = i.enum("target")
        length = i["length"]
        starts = self._bursts(i)
        total = length * len(starts)
        dst = self._slice(self._space(target), i["buf_addr"], total, f"LD into {target}")
        if i["zero_fill"]:
            dst[:] = 0
            return
        ch = i["channel"]
        mem = self._hbm(ch)
        if starts.min() < 0 or starts.max() + length > len(mem):
            raise SimError(f"LD reads beyond HBM channel {ch} ({len(mem)} bytes)")
        if target in self._src:
            # remember where the weight / meta bytes came from: decoded tiles are cached per HBM source
            src = self._src[target]
            src[i["buf_addr"]] = (ch, int(starts[0]), total) if len(starts) == 1 else None
            for a in [a for a in src if a != i["buf_addr"] and a < i["buf_addr"] + total
                      and a + (src[a][2] if src[a] else 0) > i["buf_addr"]]:
                del src[a]
        if len(starts) == 1:
            dst[:] = mem[starts[0]: starts[0] + length]
        else:
            idx = (starts[:, None] + np.arange(length)[None, :]).reshape(-1)
            dst[:] = mem[idx]
        self.stats.hbm_read[ch] = self.stats.hbm_read.get(ch, 0) + total

    def do_st(self, i):
        source = i.enum("source")
        length, n0 = i["length"], i["n0"]
        src = self._slice(self._space(source), i["buf_addr"], length * n0, f"ST from {source}")
        ch = i["channel"]
        mem = self._hbm(ch)
        for k in range(n0):
            a = i["hbm_addr"] + k * i["hbm_stride0"]
            if a + length > len(mem):
                raise SimError(f"ST writes beyond HBM channel {ch} ({len(mem)} bytes)")
            mem[a: a + length] = src[k * length: (k + 1) * length]
            if any(hs is not None and hs[0] == ch and hs[1] < a + length and a < hs[1] + hs[2]
                   for key in self._wcache for hs in key[:2]):  # a cached tile's weights or meta changed
                self._wcache.clear()
        self.stats.hbm_written[ch] = self.stats.hbm_written.get(ch, 0) + length * n0

    def sparse_weights(self, i, n: int, k: int) -> "SparseTile":
        """Decode an N:16 sparse tile: block-N table and index stream from the meta buffer at
        16 * meta_addr, kept values from the weight buffer at b_addr (docs/isa.md "Semantics")."""
        if n % 16:
            raise SimError(f"a sparse tile has n={n} rows, not a multiple of 16 (one N per 16x16 block)")
        wfmt = i.enum("wfmt")
        meta = self.buffers["meta"]
        base = 16 * i["meta_addr"]
        bands, groups = n // 16, k // 16
        bn = self._slice(meta, base, bands * groups, "sparse block-N table").astype(np.int64).reshape(bands, groups)
        bad = ~np.isin(bn, (2, 4, 8, 16))
        if bad.any():
            b, c = (int(v) for v in np.argwhere(bad)[0])
            raise SimError(f"block ({b}, {c}) of the sparse tile has N={int(bn[b, c])}; N must be 2, 4, 8 or 16")
        counts = np.repeat(bn, 16, axis=0)  # [n, groups] kept per (row, group)
        kept = int(counts.sum())
        n_idx = int(np.where(counts < 16, counts, 0).sum())
        ibase = base + -(-bands * groups // 16) * 16
        packed = self._slice(meta, ibase, n_idx // 2, "sparse index stream")
        nib = np.empty(n_idx, dtype=np.int64)
        nib[0::2], nib[1::2] = packed & 0xF, packed >> 4
        vbytes = kept if wfmt == "int8" else kept // 2
        raw = self._slice(self.buffers["weight"], i["b_addr"], vbytes, "MM sparse weights")
        if wfmt == "int8":
            vals = raw.view(np.int8).astype(np.int64)
        elif wfmt == "int4":
            vals = np.empty(kept, dtype=np.int64)
            lo, hi = (raw & 0xF).astype(np.int64), (raw >> 4).astype(np.int64)
            vals[0::2], vals[1::2] = np.where(lo > 7, lo - 16, lo), np.where(hi > 7, hi - 16, hi)
        else:
            vals = ovp.unpack(torch.from_numpy(raw.copy()), i.enum("normal")).to(torch.int64).numpy().reshape(-1)
        # in-group index of every kept value: dense groups 0..15 in order, sparse groups from the stream
        flat = counts.reshape(-1)
        grp = np.repeat(np.arange(flat.size), flat)  # (row * groups + group) of each kept value
        pos = np.arange(kept) - np.repeat(np.cumsum(flat) - flat, flat)  # rank inside its group
        is_sparse = np.repeat(flat < 16, flat)
        idx = pos.copy()
        idx[is_sparse] = nib
        rows = grp // groups
        cols = (grp % groups) * 16 + idx
        lengths = counts.sum(axis=1)
        width = int(lengths.max())
        slot = np.arange(kept) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        col_m = np.full((n, width), k, dtype=np.int64)  # column k: an appended zero activation
        val_m = np.zeros((n, width), dtype=np.int64)
        col_m[rows, slot], val_m[rows, slot] = cols, vals
        return SparseTile(torch.from_numpy(col_m), torch.from_numpy(val_m), int(np.abs(vals).max()) if kept else 0)

    def weights(self, i, n: int, k: int) -> torch.Tensor:
        """Decode the weight tile at b_addr into integer grid values [n, k] (int16)."""
        wfmt = i.enum("wfmt")
        row = k if wfmt == "int8" else k // 2
        raw = self._slice(self.buffers["weight"], i["b_addr"], n * row, "MM weights")
        if wfmt == "int8":
            return torch.from_numpy(raw.view(np.int8).reshape(n, k).astype(np.int16))
        b = raw.reshape(n, row)
        if wfmt == "int4":
            lo = (b & 0xF).astype(np.int16)
            hi = (b >> 4).astype(np.int16)
            v = np.empty((n, k), dtype=np.int16)
            v[:, 0::2] = np.where(lo > 7, lo - 16, lo)
            v[:, 1::2] = np.where(hi > 7, hi - 16, hi)
            return torch.from_numpy(v)
        return ovp.unpack(torch.from_numpy(b.copy()), i.enum("normal")).to(torch.int16)

    def do_mpe(self, i):
        mode = i.enum("mode")
        m, n, k = i["m"], i["n"], 16 * i["k_blocks"]
        ldo = i["ldo"] or n
        out_fmt = i.enum("out")
        if i["sparse"] and mode != "linear":
            raise SimError(f"sparse=1 applies to weights (mode=linear), not to mode={mode}")
        if mode == "linear":
            a, e, mant = self.qblock(i["a_addr"], m, k, "MM activations")
            row = k if i.enum("wfmt") == "int8" else k // 2
            src = self._src["weight"].get(i["b_addr"])
            msrc = self._src["meta"].get(16 * i["meta_addr"]) if i["sparse"] else None
            key = None if src is None or (i["sparse"] and msrc is None) or (not i["sparse"] and src[2] < n * row) \
                else (src, msrc, i.enum("wfmt"), i.enum("normal"), n, k)
            if key is not None and key in self._wcache:
                tile = self._wcache[key]
            else:
                if i["sparse"]:
                    tile = self.sparse_weights(i, n, k)
                else:
                    w = self.weights(i, n, k)
                    tile = (w, w.to(torch.float64), int(w.abs().max()) if w.numel() else 0)
                if key is not None:
                    self._wcache[key] = tile
            ent = self.entries(i["bias_addr"], n)
            bias = torch.from_numpy(ent[:, 0].astype(np.int64)) if i["bias"] else None
            if i["sparse"]:
                acc = tile.matmul(a)
            else:
                w, wf, wmax = tile
                acc = contract.int_matmul(a, w, w_f64=wf, w_max=wmax)
            mult = contract.Multiplier(torch.from_numpy(_u32(ent[:, 1])), torch.from_numpy(ent[:, 2].astype(np.int64)))
            exp = e.to(torch.int64)
        elif mode == "qk":
            a, ea, ma = self.qblock(i["a_addr"], m, k, "Q block")
            b, eb, mb = self.qblock(i["b_addr"], n, k, "K block")
            acc = contract.int_matmul(a, b)
            bias = None
            mant = ma * mb.reshape(1, n)
            ent = self.entries(i["bias_addr"], 1)
            mult = contract.Multiplier(torch.tensor(int(_u32(ent[:, 1])[0])), torch.tensor(int(ent[0, 2])))
            exp = ea.to(torch.int64) + eb.to(torch.int64).reshape(1, n)
        else:  # pv
            p = self.i32(i["a_addr"], m, k, what="P' block")
            raw = self._slice(self.data, i["a_addr"] + 4 * m * k, m, "P' exponents")
            e_ref = torch.from_numpy(raw.view(np.int8).astype(np.int64)).reshape(m, 1)
            vraw = self._slice(self.data, i["b_addr"], k * n, "V block")
            vq = torch.from_numpy(vraw.view(np.int8).reshape(k, n).copy())
            acc = contract.int_matmul(p, vq.transpose(0, 1))
            bias, mant = None, None
            ent = self.entries(i["bias_addr"], 1)
            mult = contract.Multiplier(torch.tensor(int(_u32(ent[:, 1])[0])), torch.tensor(int(ent[0, 2])))
            exp = e_ref
        if i["accumulate"]:
            acc = contract.wrap_int32(acc.to(torch.int64) + self.i32(i["out_addr"], m, n, ldo).to(torch.int64))
        if out_fmt == "int32":
            y = acc
        elif out_fmt == "fixed32":
            y = contract.requantize(acc, mult, exp, mantissa=mant)
            if bias is not None:  # the bias is in the output format, added with saturation
                y = (y.to(torch.int64) + bias).clamp(contract.INT32_MIN, contract.INT32_MAX).to(torch.int32)
        else:
            y = contract.requantize(acc, mult, exp, mantissa=mant, out="int8")
            dst = self._slice(self.data, i["out_addr"], (m - 1) * ldo + n, "MM int8 output")
            for r in range(m):
                dst[r * ldo: r * ldo + n] = y[r].numpy().view(np.uint8)
            return
        self.put_i32(i["out_addr"], y, ldo, "MM output")

    def do_misc(self, i):
        op = i.enum("op")
        rows, cols, imm = i["rows"], i["cols"], i["imm"]
        s0, s1, dst = i["src0"], i["src1"], i["dst"]
        if op in ("add", "mul", "swiglu"):
            a, b = self.i32(s0, rows, cols), self.i32(s1, rows, cols)
            y = {"add": lambda: sfu.add(a, b), "mul": lambda: sfu.mul(a, b, F, F, F),
                 "swiglu": lambda: sfu.swiglu(a, b, F, F, F)}[op]()
            self.put_i32(dst, y)
        elif op == "silu":
            self.put_i32(dst, sfu.silu(self.i32(s0, rows, cols), F, F))
        elif op == "copy":
            self.put_i32(dst, self.i32(s0, rows, cols))
        elif op == "rmsnorm":
            x = self.i32(s0, rows, cols)
            tab = self._slice(self.data, s1, 4 * cols + 16, "norm parameters").view("<i4")
            gamma = torch.from_numpy(tab[:cols].astype(np.int32))
            em, es = int(tab[cols:cols + 1].view(np.uint32)[0]), int(tab[cols + 1])
            eps = math.ldexp(float(em), -es) if em else 0.0
            self.put_i32(dst, sfu.rmsnorm(x, F, gamma, F, eps, F))
        elif op == "rope":
            x = self.i32(s0, rows, cols)
            theta = float(self._slice(self.data, s1, 8, "RoPE parameters").view("<f8")[0])
            per = max(1, imm >> 16)
            pos = (imm & 0xFFFF) + torch.arange(rows) // per
            self.put_i32(dst, sfu.rope(x, pos, F, theta, cols, style="half"))
        elif op == "softmax":
            s = self.i32(s0, rows, cols)
            mask = None
            if i["mask"]:
                per = max(1, imm >> 16)
                qpos = (imm & 0xFFFF) + torch.arange(rows) % per
                mask = torch.arange(cols)[None, :] <= qpos[:, None]
            self.put_i32(dst, sfu.softmax(s, F, mask, F))
        elif op == "vshift":
            p = self.i32(s0, rows, cols).to(torch.int64)
            raw = self._slice(self.data, s1, 3 * cols, "V exponents and mantissas")
            ev = torch.from_numpy(raw[:cols].view(np.int8).astype(np.int64))
            mv = torch.from_numpy(np.frombuffer(raw[cols:].tobytes(), dtype="<u2").astype(np.int64))
            per = max(1, imm >> 16)
            qpos = (imm & 0xFFFF) + torch.arange(rows) % per
            run = torch.cummax(ev, dim=0).values
            e_ref = run[qpos.clamp(max=cols - 1)].reshape(rows, 1)
            shift = (8 + e_ref - ev.reshape(1, cols)).clamp(min=8)
            p_sh = contract.round_shift(p * mv.reshape(1, cols), shift)
            self.put_i32(dst, p_sh.to(torch.int32))
            out = self._slice(self.data, dst + 4 * rows * cols, rows, "vshift exponents")
            out[:] = e_ref.reshape(-1).to(torch.int8).numpy().view(np.uint8)
        elif op == "quant":
            x = self.i32(s0, rows, cols)
            qa = (contract.quantize_act_pow2_int8 if imm >> 16 & 1 else contract.quantize_act_dynamic_int8)(x, F)
            groups = max(1, imm & 0xFFFF)
            if groups == 1:
                self.put_qblock(dst, qa.values, qa.exponent, qa.mantissa)
            else:
                t = rows // groups
                blk = -(-(t * cols + 3 * t) // 64) * 64
                codes = qa.values.reshape(t, groups, cols)
                exps = qa.exponent.reshape(t, groups, 1)
                mants = None if qa.mantissa is None else qa.mantissa.reshape(t, groups, 1)
                for g in range(groups):
                    self.put_qblock(dst + g * blk, codes[:, g], exps[:, g], None if mants is None else mants[:, g])
        elif op == "dequant":
            rec = imm
            raw = self._slice(self.data, s0, rows * rec, "embedding records").reshape(rows, rec)
            codes = torch.from_numpy(raw[:, :cols].view(np.int8).astype(np.int64))
            off = -(-cols // 16) * 16
            mm = raw[:, off: off + 8].copy().view("<i4")
            mult = torch.from_numpy(mm[:, 0].view(np.uint32).astype(np.int64)).reshape(rows, 1)
            shift = torch.from_numpy(mm[:, 1].astype(np.int64)).reshape(rows, 1)
            self.put_i32(dst, contract.apply_multiplier(codes, contract.Multiplier(mult, shift)).to(torch.int32))
        else:
            raise SimError(f"MISC op {op!r} is not implemented by the functional simulator")

    # ---- the unit queues ---------------------------------------------------------------------
    def run(self, words, program: list | None = None) -> SimStats:
        """Execute a whole program (uint32 words); returns this run's statistics."""
        t0 = time.perf_counter()
        before = SimStats()
        before.add(self.stats)
        prog = program if program is not None else isa.decode_program(words)
        offsets = isa.program_offsets(prog)
        queues = [[], [], [], []]
        for idx, inst in enumerate(prog):
            if inst.fmt.unit == "all":
                for q in queues:
                    q.append(idx)
            else:
                queues[isa.UNITS.index(inst.fmt.unit)].append(idx)
        head = [0, 0, 0, 0]
        done = [False] * 4
        tokens = np.zeros((4, 4), dtype=np.int64)  # [from, to]
        handlers = {"LD": self.do_ld, "ST": self.do_st, "MM": self.do_mpe, "MV": self.do_mpe, "MISC": self.do_misc}
        while not all(done):
            progress = False
            for u in range(4):
                while not done[u] and head[u] < len(queues[u]):
                    idx = queues[u][head[u]]
                    inst = prog[idx]
                    if inst.mnemonic == "SYS":
                        break
                    wait = inst["wait"]
                    need = [v for v in range(4) if wait >> v & 1]
                    if any(tokens[v, u] < 1 for v in need):
                        break
                    for v in need:
                        tokens[v, u] -= 1
                    try:
                        handlers[inst.mnemonic](inst)
                    except (SimError, contract.ContractError, fixed.FixedPointValueError) as exc:
                        raise SimError(f"instruction {idx} at word {offsets[idx]} ({disassemble_one(inst)}): {exc}") \
                            from None
                    rel = inst["release"]
                    for w in range(4):
                        if rel >> w & 1:
                            tokens[u, w] += 1
                    self.stats.instructions[isa.UNITS[u]] += 1
                    self.stats.by_mnemonic[inst.mnemonic] = self.stats.by_mnemonic.get(inst.mnemonic, 0) + 1
                    head[u] += 1
                    progress = True
                if head[u] >= len(queues[u]):
                    done[u] = True
            # SYS: every unit that is not done must sit on the same SYS instruction
            at = [queues[u][head[u]] if not done[u] else None for u in range(4)]
            live = [a for a in at if a is not None]
            if live and all(a is not None for a in at) and len(set(live)) == 1 and prog[live[0]].mnemonic == "SYS":
                sys_inst = prog[live[0]]
                self.stats.by_mnemonic["SYS"] = self.stats.by_mnemonic.get("SYS", 0) + 1
                if sys_inst.enum("op") == "end":
                    break
                for u in range(4):
                    head[u] += 1
                progress = True
            if not progress:
                lines = []
                for u in range(4):
                    if done[u]:
                        continue
                    idx = queues[u][head[u]]
                    inst = prog[idx]
                    waiting = [isa.UNITS[v] for v in range(4) if inst["wait"] >> v & 1 and tokens[v, u] < 1]
                    why = f"waits for a token from {', '.join(waiting)}" if waiting else "waits at SYS for the other units"
                    lines.append(f"  {isa.UNITS[u]}: instruction {idx} at word {offsets[idx]} "
                                 f"({disassemble_one(inst)}) {why}")
                raise DeadlockError("deadlock: no unit can proceed\n" + "\n".join(lines))
        run = SimStats()
        for k in self.stats.instructions:
            run.instructions[k] = self.stats.instructions[k] - before.instructions.get(k, 0)
        for k, v in self.stats.by_mnemonic.items():
            run.by_mnemonic[k] = v - before.by_mnemonic.get(k, 0)
        for d, b, o in ((run.hbm_read, before.hbm_read, self.stats.hbm_read),
                        (run.hbm_written, before.hbm_written, self.stats.hbm_written)):
            for k, v in o.items():
                if v - b.get(k, 0):
                    d[k] = v - b.get(k, 0)
        run.seconds = time.perf_counter() - t0
        self.stats.seconds += run.seconds
        return run


# ---- run time: bucket choice, patching, prefill/decode loops --------------------------------------

class Runtime:
    """Runs compiled programs on a :class:`FuncSim`: picks the bucket, patches, executes, reads logits.

    Build it from an in-memory ``olivine.compiler.compile.Compiled`` (:meth:`from_compiled`) or an
    artifact directory (:meth:`from_artifact`).
    """

    def __init__(self, config, meta: dict, programs: dict[str, np.ndarray], image: dict[int, bytes]):
        self.config, self.meta = config, meta
        lay = meta["layout"]
        self.channels = lay["channels"]
        self.io_base = lay["io_base"]
        self.vocab = meta["model"]["config"]["vocab_size"]
        self.programs = programs
        self.info = meta["programs"]
        self.sim = FuncSim(config, lay["channel_bytes"], image)
        self._decoded: dict[str, list] = {}  # program name -> decoded template (patched entries re-decoded)
        self._idx: dict[str, dict] = {}  # program name -> word offset -> instruction index
        self.length = 0
        self.last_stats: SimStats | None = None

    @classmethod
    def from_compiled(cls, comp) -> "Runtime":
        from olivine.compiler.compile import to_artifact

        art = to_artifact(comp)
        return cls(art.config, art.meta, art.programs, art.weights)

    @classmethod
    def from_artifact(cls, directory, expect_config=None) -> "Runtime":
        from olivine.compiler.artifact import read_artifact

        art = read_artifact(directory, expect_config)
        return cls(art.config, art.meta, art.programs, art.weights)

    def _buckets(self, kind: str) -> list[tuple[int, str]]:
        return sorted((v["bucket"], n) for n, v in self.info.items() if v["kind"] == kind)

    def _pick(self, kind: str, length: int) -> str:
        for b, name in self._buckets(kind):
            if b >= length:
                return name
        largest = self._buckets(kind)[-1][0] if self._buckets(kind) else 0
        raise SimError(f"no {kind} program for length {length} (largest bucket {largest}); recompile with a longer "
                       "context")

    def _execute(self, name: str, env: dict) -> torch.Tensor:
        from olivine.compiler.compile import apply_patches

        words = self.programs[name]
        patches = self.info[name]["patches"]
        if name not in self._decoded:
            self._decoded[name] = isa.decode_program(words)
        prog = list(self._decoded[name])
        patched = apply_patches(words, patches, env)
        if patches:
            if name not in self._idx:
                self._idx[name] = {off: k for k, off in enumerate(isa.program_offsets(prog))}
            index = self._idx[name]
            for off in {p["offset"] for p in patches}:
                prog[index[off]] = isa.decode_one(patched, off)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-instruction tensors are small: intra-op threads only add overhead
        try:
            self.last_stats = self.sim.run(patched, prog)
        finally:
            torch.set_num_threads(threads)
        raw = self.sim.hbm[0][self.io_base: self.io_base + 4 * self.vocab]
        return torch.from_numpy(raw.view("<i4").astype(np.int32).copy())

    def prefill(self, tokens) -> torch.Tensor:
        """Run the prompt (fresh cache); int32 logits (16 fractional bits) of its last token."""
        from olivine.compiler.compile import patch_env_prefill

        tokens = [int(t) for t in tokens]
        name = self._pick("prefill", len(tokens))
        env = patch_env_prefill(tokens, self.info[name]["bucket"], self.meta["prefill_rows"], self.channels)
        logits = self._execute(name, env)
        self.length = len(tokens)
        return logits

    def decode(self, token: int) -> torch.Tensor:
        """One decode step at position ``self.length``; int32 logits."""
        from olivine.compiler.compile import patch_env_decode

        name = self._pick("decode", self.length + 1)
        logits = self._execute(name, patch_env_decode(int(token), self.length, self.channels))
        self.length += 1
        return logits

    def generate(self, tokens, max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy generation: returns the new tokens and the int32 logits that chose each."""
        return greedy_loop(self.prefill(tokens), self.decode, max_new_tokens)


def greedy_loop(logits: torch.Tensor, decode, max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding from the prefill's last logits; ``decode(token)`` returns the next logits.

    Returns the new tokens and the logits that chose each (no decode after the last token).
    """
    out, all_logits = [], [logits]
    for _ in range(max_new_tokens):
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        if len(out) == max_new_tokens:
            break
        logits = decode(nxt)
        all_logits.append(logits)
    return out, all_logits


def golden_generate(q, tokens, max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """The same greedy loop on golden's QLlama (int32 logits)."""
    cache = q.new_cache()
    logits = q.forward_int(torch.as_tensor(list(tokens)), cache, 0)[-1]
    return greedy_loop(logits, lambda t: q.forward_int(torch.tensor([t]), cache, cache.length)[-1],
                       max_new_tokens)


def check_against_golden(model: str = "glassllm", preset: str = "w4a8-int4", prompt: str = "Once upon a time",
                         max_new_tokens: int = 32, board: str = "u280", max_context: int | None = None,
                         prefill_step: int = 128, decode_step: int = 16) -> dict:
    """Compile ``model``, run prompt + greedy decode on the functional simulator and on golden's QLlama.

    Returns {"tokens_equal", "logits_equal", "max_logit_diff" (in LSB of 2**-16), "sim_tokens_per_s",
    "compile_seconds", "tokens", "golden_tokens", "stats"}.
    """
    from olivine.compiler.compile import compile_model
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model
    from olivine.hw.config import for_board

    loaded = load_model(model)
    q = quantize_model(loaded.config, loaded.weights, preset)
    ids = loaded.tokenizer.encode(prompt) if loaded.tokenizer is not None else [1, 2, 3]
    need = len(ids) + max_new_tokens
    ctx = max_context or min(loaded.config.max_seq_len, -(-need // decode_step) * decode_step)
    t0 = time.perf_counter()
    comp = compile_model(spec_from_qllama(q, model), for_board(board), max_context=ctx,
                         max_prompt=min(ctx, -(-len(ids) // prefill_step) * prefill_step),
                         prefill_step=prefill_step, decode_step=decode_step)
    compile_s = time.perf_counter() - t0
    rt = Runtime.from_compiled(comp)
    t0 = time.perf_counter()
    toks, logits = rt.generate(ids, max_new_tokens)
    sim_s = time.perf_counter() - t0
    g_toks, g_logits = golden_generate(q, ids, max_new_tokens)
    diffs = [int((a.to(torch.int64) - b.to(torch.int64)).abs().max()) for a, b in zip(logits, g_logits)]
    return {"tokens_equal": toks == g_toks, "logits_equal": all(d == 0 for d in diffs) and len(logits) == len(g_logits),
            "max_logit_diff": max(diffs) if diffs else 0, "sim_tokens_per_s": len(toks) / sim_s if sim_s else 0.0,
            "compile_seconds": compile_s, "tokens": toks, "golden_tokens": g_toks,
            "text": loaded.tokenizer.decode(toks) if loaded.tokenizer is not None else None,
            "stats": rt.sim.stats}


def run_main(directory: str, prompt: str, max_new_tokens: int = 32, backend: str = "isa") -> int:
    """``olivine run --backend isa DIR --prompt ... --max-new-tokens N``: generate text on the simulator."""
    if backend != "isa":
        raise ValueError(f"backend {backend!r} is not provided by the functional simulator (use 'isa')")
    from olivine.golden.loaders import load_model

    rt = Runtime.from_artifact(directory)
    src = rt.meta["model"].get("load") or rt.meta["model"].get("source")
    tok = load_model(src).tokenizer
    if tok is None:
        raise ValueError(f"the model {src!r} of {directory} has no tokenizer")
    ids = tok.encode(prompt)
    t0 = time.perf_counter()
    out, _ = rt.generate(ids, max_new_tokens)
    dt = time.perf_counter() - t0
    print(prompt + tok.decode(out))
    st = rt.sim.stats
    print(f"[isa functional simulator] {len(out)} tokens in {dt:.2f} s = {len(out) / dt:.2f} tokens/s; "
          f"instructions {st.instructions}; HBM read {sum(st.hbm_read.values()) / 1e6:.2f} MB, "
          f"written {sum(st.hbm_written.values()) / 1e6:.3f} MB")
    return 0
