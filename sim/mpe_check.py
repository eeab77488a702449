"""Check the RTL matrix engine (hw/mpe.py) against the functional simulator's MM / MV semantics.

Cases are random MM / MV instructions with their buffer contents (data space, weight, meta and bias
buffers); the expected data space is what ``FuncSim.do_mpe`` leaves (or, for an instruction it
rejects, the unchanged image and the engine's ``fault``). :func:`run_amaranth` executes cases on an
``MpeHarness`` in Amaranth simulation (optionally frozen by a random enable pattern) and reports
per case the fault, error code, cycles and the data-space bytes that differ.

(It lives in sim/, not hw/: hw never imports the simulators.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from olivine.hw import isa
from olivine.hw.config import BufferConfig, small
from olivine.hw.mpe import ACT_BYTES, MpeGeometry, MpeHarness

__all__ = ["Case", "test_config", "expected", "make_linear", "run_amaranth"]


def test_config(chains: int = 2):
    """The small configuration with ``chains`` chains and small buffers (fast simulation)."""
    return small().replace(chains_per_core=chains,
                           buffers=BufferConfig(weight_kib=8, activation_kib=4, global_kib=4, meta_kib=1, bias_kib=1))


@dataclass
class Case:
    fields: dict                    # MM fields (isa names)
    data: np.ndarray                # data space bytes before
    weight: np.ndarray
    meta: np.ndarray
    bias: np.ndarray
    label: str = ""
    want: np.ndarray | None = None  # data space after (None: the instruction faults, unchanged)
    why: str = ""                   # funcsim's error message when it rejects the instruction
    extra: dict = field(default_factory=dict)


def instruction(fields: dict) -> isa.Instruction:
    mnemonic = "MV" if fields.get("m", 1) == 1 and fields.get("_mv") else "MM"
    return isa.make(mnemonic, **{k: v for k, v in fields.items() if not k.startswith("_")})


def expected(config, case: Case) -> Case:
    """Fill ``case.want`` (or ``case.why``) by running FuncSim's MPE handler on the same buffers."""
    from olivine.sim.funcsim import FuncSim, SimError

    fs = FuncSim(config, [4096] * config.hbm_channels)
    fs.data[:] = case.data
    fs.buffers["weight"][:] = case.weight
    fs.buffers["meta"][:] = case.meta
    fs.buffers["bias"][:] = case.bias
    try:
        fs.do_mpe(instruction(case.fields))
        case.want = fs.data.copy()
    except SimError as exc:
        case.want, case.why = None, str(exc)
    return case


def _blank(config):
    g = MpeGeometry(config)
    return (np.zeros(g.space_bytes, np.uint8), np.zeros(g.weight_bytes, np.uint8), np.zeros(g.meta_bytes, np.uint8),
            np.zeros(g.bias_bytes, np.uint8))


def requant_data(rng, data: np.ndarray, bias: np.ndarray, tails: list[tuple[int, int]], bias_addr: int, entries: int,
                 bad: str | None = None) -> None:
    """Realistic requantization inputs: row exponents -6..6 and mantissas 1..256 of the INT8 blocks
    whose exponents start at each (address, rows) of ``tails``; entries with multipliers in
    [2**30, 2**31), shifts mostly 30..52 (some beyond -1..62) and small biases. ``bad``:
    "mantissa" (one mantissa 257..65535) or "multiplier" (one multiplier with bit 31 set)."""
    for addr, rows in tails:
        data[addr: addr + rows] = rng.integers(-6, 7, rows).astype(np.int8).view(np.uint8)
        mants = rng.integers(1, 257, rows).astype("<u2")
        mants[rng.random(rows) < 0.2] = 256
        data[addr + rows: addr + 3 * rows] = mants.view(np.uint8)
    if bad == "mantissa":
        addr, rows = tails[int(rng.integers(0, len(tails)))]
        r = int(rng.integers(0, rows))
        data[addr + rows + 2 * r: addr + rows + 2 * r + 2] = np.array([int(rng.integers(257, 65536))], "<u2").view(np.uint8)
    ent = np.zeros((entries, 4), dtype=np.int64)
    ent[:, 0] = rng.integers(-(1 << 20), 1 << 20, entries)
    ent[:, 1] = rng.integers(1 << 30, 1 << 31, entries)
    ent[:, 2] = rng.integers(30, 53, entries)
    wild = rng.random(entries) < 0.15
    ent[wild, 2] = rng.choice(np.array([-40, -1, 0, 1, 62, 63, 100, 1 << 30]), int(wild.sum()))
    if bad == "multiplier":
        ent[int(rng.integers(0, entries)), 1] |= 1 << 31
    bias[16 * bias_addr: 16 * (bias_addr + entries)] = (ent & 0xFFFFFFFF).astype("<u4").reshape(-1).view(np.uint8)


def _out_fields(rng, out, bias_flag):
    out = int(rng.integers(0, 3)) if out is None else out
    b = (int(rng.integers(0, 2)) if bias_flag is None else bias_flag) if out == 1 else 0
    return out, b


def _draw_shape(rng, g, m=None, n=None, kb=None) -> tuple[int, int, int]:
    """(m, n, k_blocks) of a random case: the given ones kept, the others drawn (in this order)."""
    mm = int(rng.integers(1, 6)) if m is None else m
    nn = int(rng.integers(1, 3 * g.chains + 2)) if n is None else n
    kk = int(rng.integers(1, 2 * g.chains + 3)) if kb is None else kb
    return mm, nn, kk


def _draw_ldo(rng, n: int, ldo_extra=None) -> int:
    """An output row stride of at least ``n`` (``ldo_extra`` more, or 0-3 drawn)."""
    return n + (int(rng.integers(0, 4)) if ldo_extra is None else ldo_extra)


def make_linear(config, rng, *, m=None, n=None, kb=None, wfmt=None, normal=None, accumulate=None, ldo_extra=None,
                worst=False, label="", align=None, old_fill=None, out=0, bias_flag=None, bad=None, wgroup=0) -> Case:
    """A random dense linear int32 MM / MV that fits the buffers (addresses random, unaligned allowed).
    ``wgroup`` (1 g64, 2 g128; int4 / ovp4): random multipliers 1..15 after the values (``bad="group_mult"``:
    one of them 0)."""
    from olivine.compiler.spec import group_row_bytes, pack_group_mult
    g = MpeGeometry(config)
    data, weight, meta, bias = _blank(config)
    for _ in range(1000):
        mm, nn, kk = _draw_shape(rng, g, m, n, kb)
        wf = (int(rng.integers(1, 3)) if wgroup else int(rng.integers(0, 3))) if wfmt is None else wfmt
        K = 16 * kk
        gsize = isa.WEIGHT_GROUP_SIZE[isa.WEIGHT_GROUPS[wgroup]]
        g_bytes = nn * group_row_bytes(gsize, K)
        ldo = _draw_ldo(rng, nn, ldo_extra)
        a_bytes = mm * K + 3 * mm
        out_bytes = 4 * ((mm - 1) * ldo + nn) if out != 2 else (mm - 1) * ldo + nn
        w_bytes = nn * K if wf == 0 else nn * K // 2
        if a_bytes + out_bytes + 64 > g.space_bytes or w_bytes + g_bytes + 64 > g.weight_bytes:
            continue
        a_addr = int(rng.integers(0, g.space_bytes - a_bytes - out_bytes - 32))
        if align is not None:
            a_addr -= a_addr % align
        out_lo = a_addr + a_bytes
        out_addr = int(rng.integers(out_lo, g.space_bytes - out_bytes + 1))
        out_addr -= out_addr % 4 if out != 2 else 0
        if out_addr < out_lo:
            out_addr += 4
        if out_addr + out_bytes > g.space_bytes:
            continue
        if rng.integers(0, 2):  # output below the activations
            if out_bytes + 4 + a_bytes <= g.space_bytes:
                out_addr = int(rng.integers(0, 2)) * (4 if out != 2 else 3)
                a_addr = int(rng.integers(out_addr + out_bytes, g.space_bytes - a_bytes + 1))
        b_addr = int(rng.integers(0, g.weight_bytes - w_bytes - g_bytes + 1))
        if align is not None:
            b_addr -= b_addr % align
        break
    else:
        raise ValueError("no case fits the buffers")
    data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
    weight[:] = rng.integers(0, 256, weight.size, dtype=np.uint8)
    bias[:] = rng.integers(0, 256, bias.size, dtype=np.uint8)
    if worst:  # -128 x -128 everywhere: the largest INT8 product sums
        data[a_addr: a_addr + mm * K] = 0x80
        if wf == 0:
            weight[b_addr: b_addr + w_bytes] = 0x80
        elif wf == 1:
            weight[b_addr: b_addr + w_bytes] = 0x88
    if wgroup:
        groups = -(-K // gsize)
        gm = rng.integers(1, 16, (nn, groups), dtype=np.uint8)
        if worst:
            gm[:] = 15
        if bad == "group_mult":
            gm[rng.integers(0, nn), rng.integers(0, groups)] = 0
        weight[b_addr + w_bytes: b_addr + w_bytes + g_bytes] = pack_group_mult(gm).reshape(-1)
    if old_fill is not None:  # the accumulate input (e.g. 0x7f: near INT32_MAX, so the sum wraps)
        data[out_addr: out_addr + out_bytes] = old_fill
    acc = int(rng.integers(0, 2)) if accumulate is None else accumulate
    if acc and out == 2 and (out_addr % 4 or mm > 1):   # int32 accumulate input under int8 output (engine: m = 1)
        acc = 0
    nm = int(rng.integers(0, 2)) if (normal is None and wf == 2) else (normal or 0)
    out, bflag = _out_fields(rng, out, bias_flag)
    fields = dict(wfmt=wf, k_blocks=kk, m=mm, n=nn, ldo=0 if ldo == nn and rng.integers(0, 2) else ldo,
                  a_addr=a_addr, b_addr=b_addr, out_addr=out_addr, accumulate=acc, normal=nm if wf == 2 else 0,
                  bias_addr=int(rng.integers(0, g.bias_words - nn + 1)) if nn <= g.bias_words else 0,
                  out=out, bias=bflag, wgroup=wgroup)
    if out or bad not in (None, "group_mult"):
        requant_data(rng, data, bias, [(a_addr + mm * K, mm)], fields["bias_addr"], nn,
                     None if bad == "group_mult" else bad)
    return expected(config, Case(fields, data, weight, meta, bias,
                                 label or f"linear m={mm} n={nn} kb={kk} wfmt={wf} wgroup={wgroup}"))


def _words(arr: np.ndarray, nbytes: int) -> list[int]:
    return [int.from_bytes(arr[i: i + nbytes].tobytes(), "little") for i in range(0, arr.size, nbytes)]


def run_amaranth(config, cases: list[Case], *, stall: float = 0.0, seed: int = 0, max_cycles: int = 200_000,
                 **engine_kw) -> list[dict]:
    """Run the cases on an MpeHarness; ``stall`` = probability that a cycle is frozen; ``engine_kw``
    go to the MatrixEngine (e.g. ``ovp_token_pairs``).

    Returns per case {"fault", "error", "cycles" (enabled cycles from inst to done/fault),
    "mismatches" (data-space bytes differing from the expected image)}."""
    from amaranth.sim import Simulator

    dut = MpeHarness(config, stall=stall > 0, **engine_kw)
    g = dut.engine.geometry
    fields_layout = dut.engine._inst_layout["fields"].shape
    rng = np.random.default_rng(seed)
    results = []

    async def bench(ctx):
        state = {"act": None, "weight": None, "meta": None, "bias": None}
        for case in cases:
            for name, arr, width in (("act", case.data, ACT_BYTES), ("weight", case.weight, g.wword_bytes),
                                     ("meta", case.meta, ACT_BYTES), ("bias", case.bias, ACT_BYTES)):
                words = _words(arr, width)
                mem = getattr(dut, name)
                old = state[name]
                for i, w in enumerate(words):
                    if old is None or old[i] != w:
                        ctx.set(mem.data[i], w)
                state[name] = words
            payload = {k: 0 for k in fields_layout.members}
            payload.update({k: v for k, v in case.fields.items() if not k.startswith("_")})
            payload["opcode"] = 4 if case.fields.get("_mv") else 3
            ctx.set(dut.inst.payload.fields, payload)
            ctx.set(dut.inst.payload.opcode, payload["opcode"])
            ctx.set(dut.inst.valid, 1)
            cycles = 0
            accepted = False
            finished = None
            while finished is None:
                en = 1 if stall <= 0 else int(rng.random() >= stall)
                ctx.set(dut.en, en)
                if not accepted and ctx.get(dut.inst.ready):
                    accepted = True
                    await ctx.tick()
                    ctx.set(dut.inst.valid, 0)
                    continue
                if accepted and en:
                    cycles += 1
                if ctx.get(dut.done):
                    finished = "done"
                elif ctx.get(dut.fault):
                    finished = "fault"
                await ctx.tick()
                assert cycles < max_cycles, f"{case.label}: the engine did not finish"
            ctx.set(dut.en, 1)
            after = _words_to_bytes([ctx.get(dut.act.data[i]) for i in range(g.act_words)], ACT_BYTES)
            state["act"] = _words(after, ACT_BYTES)
            want = case.want if case.want is not None else case.data
            results.append({"fault": finished == "fault", "error": int(ctx.get(dut.error)), "cycles": cycles,
                            "mismatches": int((after != want).sum()), "after": after})

    # pysim compiles a memory write port's enable, replicated over the word, as one Python expression
    # of one term per bit: the weight word (16 bytes per chain) needs a deeper compiler recursion
    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 8 * g.wword_bytes + 1000))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def _words_to_bytes(words: list[int], nbytes: int) -> np.ndarray:
    return np.frombuffer(b"".join(int(w).to_bytes(nbytes, "little") for w in words), dtype=np.uint8).copy()


def _place(rng, space: int, regions: list[tuple[int, int]]) -> list[int] | None:
    """Random disjoint placement of (bytes, alignment) regions in [0, space), in random order."""
    order = rng.permutation(len(regions))
    total = sum(b + a for b, a in regions)
    if total > space:
        return None
    slack = space - total
    addrs = [0] * len(regions)
    pos = 0
    for idx in order:
        size, align = regions[idx]
        pos += int(rng.integers(0, slack // len(regions) + 1))
        pos += -pos % align
        addrs[idx] = pos
        pos += size
    return addrs if pos <= space else None


def make_attention(config, rng, mode: str, *, m=None, n=None, kb=None, accumulate=None, ldo_extra=None,
                   p_kind="random", label="", out=0, bad=None) -> Case:
    """A random qk (Q K^T) or pv (P' V) MM with int32 output; ``p_kind`` "edges" puts INT32_MIN/MAX and
    other extremes into P'."""
    g = MpeGeometry(config)
    data, weight, meta, bias = _blank(config)
    for _ in range(1000):
        mm, nn, kk = _draw_shape(rng, g, m, n, kb)
        K = 16 * kk
        ldo = _draw_ldo(rng, nn, ldo_extra)
        a_bytes = mm * K + 3 * mm if mode == "qk" else 4 * mm * K + mm
        b_bytes = nn * K + 3 * nn if mode == "qk" else K * nn
        out_bytes = 4 * ((mm - 1) * ldo + nn) if out != 2 else (mm - 1) * ldo + nn
        addrs = _place(rng, g.space_bytes, [(a_bytes, 1 if mode == "qk" else 4), (b_bytes, 1),
                                            (out_bytes, 4 if out != 2 else 1)])
        if addrs is not None:
            break
    else:
        raise ValueError("no case fits the buffers")
    a_addr, b_addr, out_addr = addrs
    data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
    bias[:] = rng.integers(0, 256, bias.size, dtype=np.uint8)
    if mode == "pv" and p_kind == "edges":
        pool = np.array([-(1 << 31), (1 << 31) - 1, -1, 0, 1, 127, 128, -128, 1 << 28, -(1 << 28), (1 << 28) - 1],
                        dtype=np.int64)
        vals = rng.choice(pool, mm * K).astype("<i4")
        data[a_addr: a_addr + 4 * mm * K] = vals.view(np.uint8)
        data[b_addr: b_addr + K * nn] = rng.choice(np.array([0x80, 0x7F, 0x00, 0xFF], np.uint8), K * nn)
    acc = int(rng.integers(0, 2)) if accumulate is None else accumulate
    if acc and (out_addr % 4 or (out == 2 and mm > 1)):   # int32 accumulate input under int8 output
        acc = 0
    fields = dict(mode=1 if mode == "qk" else 2, k_blocks=kk, m=mm, n=nn,
                  ldo=0 if ldo == nn and rng.integers(0, 2) else ldo, a_addr=a_addr, b_addr=b_addr,
                  out_addr=out_addr, accumulate=acc, bias_addr=int(rng.integers(0, g.bias_words)), out=out)
    if out or bad:
        tails = [(a_addr + mm * K, mm), (b_addr + nn * K, nn)] if mode == "qk" else []
        requant_data(rng, data, bias, tails, fields["bias_addr"], 1, bad)
        if mode == "pv":
            data[a_addr + 4 * mm * K: a_addr + 4 * mm * K + mm] = rng.integers(-6, 7, mm).astype(np.int8).view(np.uint8)
    return expected(config, Case(fields, data, weight, meta, bias, label or f"{mode} m={mm} n={nn} kb={kk}"))


def cocotb_vectors(config, cases: list[Case], enable: list[int]) -> dict:
    """The vectors of tests/rtl/tb_mpe.py for ``cases`` (loads: only the words that change)."""
    g = MpeGeometry(config)
    dwords = 4 * g.chains  # 32-bit words of the widest (weight) memory word
    loads, ptr, insts, wants, faults = [], [0], [], [], []
    state = {k: None for k in ("act", "weight", "meta", "bias")}
    from olivine.hw.controller import unit_layout

    flayout = unit_layout("mpe")
    for case in cases:
        for k, (name, arr, width) in enumerate((("act", case.data, ACT_BYTES), ("weight", case.weight, g.wword_bytes),
                                                ("meta", case.meta, ACT_BYTES), ("bias", case.bias, ACT_BYTES))):
            words = _words(arr, width)
            for i, w in enumerate(words):
                if state[name] is None or state[name][i] != w:
                    loads.append([k, i] + [(w >> (32 * j)) & 0xFFFFFFFF for j in range(dwords)])
            state[name] = words
        want = case.want if case.want is not None else case.data
        state["act"] = _words(want, ACT_BYTES)
        ptr.append(len(loads))
        payload = 0
        fields = {k: v for k, v in case.fields.items() if not k.startswith("_")}
        opcode = 4 if case.fields.get("_mv") else 3
        fl = flayout["fields"].shape
        fields["opcode"] = opcode
        for name, value in fields.items():
            payload |= int(value) << (fl[name].offset + flayout["fields"].offset)
        payload |= opcode << flayout["opcode"].offset
        nwords = -(-flayout.size // 32)
        insts.append([(payload >> (32 * j)) & 0xFFFFFFFF for j in range(nwords)])
        wants.append(want.view("<u4").astype(np.uint32))
        faults.append(int(case.want is None))
    return {"loads": np.array(loads, dtype=np.uint32), "load_ptr": np.array(ptr, dtype=np.uint32),
            "inst": np.array(insts, dtype=np.uint32), "want": np.array(wants, dtype=np.uint32),
            "want_fault": np.array(faults, dtype=np.uint32), "enable": np.array(enable, dtype=np.uint32)}


def make_sparse(config, rng, *, m=None, n=None, kb=None, wfmt=None, out=0, accumulate=None, bad_n=False,
                label="") -> Case:
    """A random N:16 sparse linear MM / MV: block-N table and index stream in the meta buffer,
    kept values in canonical order in the weight buffer (docs/isa.md "Sparse weight tile")."""
    g = MpeGeometry(config)
    for _ in range(1000):
        mm = int(rng.integers(1, 5)) if m is None else m
        nn = 16 * int(rng.integers(1, 3)) if n is None else n
        kk = int(rng.integers(1, 5)) if kb is None else kb
        wf = int(rng.integers(0, 3)) if wfmt is None else wfmt
        K = 16 * kk
        table = rng.choice(np.array([2, 4, 8, 16]), (nn // 16, kk))
        kept = int(table.sum()) * 16
        sparse_kept = int(np.where(table < 16, table, 0).sum()) * 16
        vbytes = kept if wf == 0 else kept // 2
        tbytes = -(-table.size // 16) * 16
        mbytes = tbytes + sparse_kept // 2
        a_bytes, out_bytes = mm * K + 3 * mm, 4 * ((mm - 1) * nn + nn)
        if vbytes + 16 <= g.weight_bytes and mbytes + 16 <= g.meta_bytes and a_bytes + out_bytes + 64 <= g.space_bytes:
            break
    else:
        raise ValueError("no sparse case fits the buffers")
    data, weight, meta, bias = _blank(config)
    data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
    weight[:] = rng.integers(0, 256, weight.size, dtype=np.uint8)
    bias[:] = rng.integers(0, 256, bias.size, dtype=np.uint8)
    meta[:] = rng.integers(0, 256, meta.size, dtype=np.uint8)
    meta_addr = int(rng.integers(0, (g.meta_bytes - mbytes) // 16 + 1))
    b_addr = int(rng.integers(0, g.weight_bytes - vbytes + 1))
    base = 16 * meta_addr
    if bad_n:
        table.reshape(-1)[int(rng.integers(0, table.size))] = int(rng.choice([0, 1, 3, 6, 12, 32]))
    meta[base: base + table.size] = table.reshape(-1).astype(np.uint8)
    meta[base + table.size: base + tbytes] = 0
    nibbles = []
    for r in range(nn):
        for c in range(kk):
            nv = int(table[r // 16, c])
            if nv < 16 and nv in (2, 4, 8):
                nibbles += sorted(rng.choice(16, nv, replace=False).tolist())
    nib = np.array(nibbles, dtype=np.uint8)
    if nib.size:
        meta[base + tbytes: base + tbytes + nib.size // 2] = nib[0::2] | (nib[1::2] << 4)
    addrs = _place(rng, g.space_bytes, [(a_bytes, 1), (out_bytes, 4)])
    a_addr, out_addr = addrs
    acc = int(rng.integers(0, 2)) if accumulate is None else accumulate
    if out == 2 and mm > 1:
        acc = 0
    fields = dict(wfmt=wf, sparse=1, k_blocks=kk, m=mm, n=nn, ldo=0, a_addr=a_addr, b_addr=b_addr, out_addr=out_addr,
                  accumulate=acc, meta_addr=meta_addr, normal=int(rng.integers(0, 2)) if wf == 2 else 0,
                  bias_addr=int(rng.integers(0, g.bias_words - nn + 1)), out=out)
    if out:
        requant_data(rng, data, bias, [(a_addr + mm * K, mm)], fields["bias_addr"], nn)
    return expected(config, Case(fields, data, weight, meta, bias, label or f"sparse m={mm} n={nn} kb={kk} wfmt={wf}"))


def ovp_codes(rng, rows: int, cols: int, normal: int, outliers: float = 0.3, raw: bool = False) -> np.ndarray:
    """OVP4 pair codes [rows, cols / 2] of random grid values (a fraction ``outliers`` of them
    outliers, the "larger" victim rule applied, golden.ovp.encode), or (``raw``) random bytes, which
    include the never-produced codes (they decode to 0 in golden and in the decoders)."""
    import torch

    from olivine.golden import contract, ovp
    from olivine.golden.ovp_format import get_format

    if raw:
        return rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    fmt = get_format(("int4", "flint4")[normal])
    normals = np.array(fmt.normal_grid)
    outl = np.array(fmt.outlier_grid)
    v = np.where(rng.random((rows, cols)) < outliers, rng.choice(outl, (rows, cols)), rng.choice(normals, (rows, cols)))
    v = contract.apply_victims(torch.from_numpy(v.astype(np.int64)), fmt.normal_max, "larger")
    return ovp.encode(v, fmt.name).numpy().astype(np.uint8)


def make_linear_ovp(config, rng, *, m=None, n=None, kb=None, normal=None, anormal=None, accumulate=None, ldo_extra=None,
                    out=0, bias_flag=None, outliers=None, raw=False, worst=False, old_fill=None, bad=None,
                    label="") -> Case:
    """A random W4A4 MM / MV (afmt=ovp4, wfmt=ovp4): OVP4 activation pair codes at any byte address,
    ovp4 weights at any byte address, requantization entries when ``out`` != int32. ``worst``: every
    pair the largest outlier (|acc| = K/2 * max**2)."""
    from olivine.golden.ovp_format import get_format

    g = MpeGeometry(config)
    data, weight, meta, bias = _blank(config)
    for _ in range(1000):
        mm, nn, kk = _draw_shape(rng, g, m, n, kb)
        K = 16 * kk
        ldo = _draw_ldo(rng, nn, ldo_extra)
        a_bytes = mm * K // 2
        out_bytes = 4 * ((mm - 1) * ldo + nn) if out != 2 else (mm - 1) * ldo + nn
        w_bytes = nn * K // 2
        if w_bytes + 16 > g.weight_bytes:
            continue
        addrs = _place(rng, g.space_bytes, [(a_bytes, 1), (out_bytes, 4 if out != 2 else 1)])
        if addrs is not None:
            break
    else:
        raise ValueError("no W4A4 case fits the buffers")
    a_addr, out_addr = addrs
    b_addr = int(rng.integers(0, g.weight_bytes - w_bytes + 1))
    nm = int(rng.integers(0, 2)) if normal is None else normal
    an = int(rng.integers(0, 2)) if anormal is None else anormal
    frac = float(rng.choice([0.05, 0.3, 0.6])) if outliers is None else outliers
    data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
    weight[:] = rng.integers(0, 256, weight.size, dtype=np.uint8)
    bias[:] = rng.integers(0, 256, bias.size, dtype=np.uint8)
    if worst:
        def top(nrm, rows):   # (largest-magnitude outlier, its victim) in every pair
            import torch

            from olivine.golden import ovp

            fmt = get_format(("int4", "flint4")[nrm])
            code = ovp.encode(torch.tensor([[max(fmt.outlier_grid, key=abs), 0]]), fmt.name).numpy()[0, 0]
            return np.full((rows, K // 2), code, np.uint8)
        acodes, wcodes = top(an, mm), top(nm, nn)
    else:
        acodes = ovp_codes(rng, mm, K, an, frac, raw)
        wcodes = ovp_codes(rng, nn, K, nm, frac, raw)
    data[a_addr: a_addr + a_bytes] = acodes.reshape(-1)
    weight[b_addr: b_addr + w_bytes] = wcodes.reshape(-1)
    if old_fill is not None:
        data[out_addr: out_addr + out_bytes] = old_fill
    acc = int(rng.integers(0, 2)) if accumulate is None else accumulate
    if acc and (out_addr % 4 or (out == 2 and mm > 1)):
        acc = 0
    out, bflag = _out_fields(rng, out, bias_flag)
    fields = dict(wfmt=2, afmt=1, k_blocks=kk, m=mm, n=nn, ldo=0 if ldo == nn and rng.integers(0, 2) else ldo,
                  a_addr=a_addr, b_addr=b_addr, out_addr=out_addr, accumulate=acc, normal=nm, anormal=an,
                  bias_addr=int(rng.integers(0, g.bias_words - nn + 1)) if nn <= g.bias_words else 0,
                  out=out, bias=bflag, _mv=int(mm == 1 and rng.integers(0, 2)))
    if out or bad:
        requant_data(rng, data, bias, [], fields["bias_addr"], nn, bad)
    return expected(config, Case(fields, data, weight, meta, bias,
                                 label or f"w4a4 m={mm} n={nn} kb={kk} normal={nm} anormal={an} out={out} acc={acc}"))


def compiled_w4a4_mms(directory, tokens=(5, 17, 99)) -> list[dict]:
    """The afmt=ovp4 MM / MV instructions a compiled artifact's prefill of ``tokens`` executes on
    FuncSim, each with its operands as FuncSim held them just before: ``fields`` (isa names),
    ``a`` (the m x K/2 activation pair codes the SFU's OVP4 encoder wrote), ``w`` (the n x K/2 ovp4
    weight tile), ``entries`` (the n 16-byte requantization entries)."""
    from olivine.sim.runtime import Runtime

    rt = Runtime.from_artifact(directory)
    sim, caps = rt.sim, []
    run_mpe = sim.do_mpe

    def capture(i):
        if i.enum("afmt") == "ovp4":
            v = dict(i.values)
            half_k = 8 * v["k_blocks"]
            sim._flush_weight()   # LD's weight copies are deferred until a reader needs them
            caps.append({"fields": v, "a": sim.data[v["a_addr"]: v["a_addr"] + v["m"] * half_k].copy(),
                         "w": sim.buffers["weight"][v["b_addr"]: v["b_addr"] + v["n"] * half_k].copy(),
                         "entries": sim.buffers["bias"][16 * v["bias_addr"]: 16 * (v["bias_addr"] + v["n"])].copy()})
        return run_mpe(i)

    sim.do_mpe = capture
    rt.prefill(list(tokens))
    return caps
