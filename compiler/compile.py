"""Length-adaptive compilation: programs per length bucket, run-time patches, artifacts, CLI entry.

``compile_model(spec, config, ...)`` returns a :class:`Compiled`: one prefill program per prompt
bucket (multiples of ``prefill_step``, default 128) and one decode program per context bucket
(multiples of ``decode_step``, default 16), each with its patch list, plus the HBM layout and
weight image. ``to_artifact`` / ``compile_main`` write it as an artifact directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from olivine.hw.config import AcceleratorConfig, for_board

from . import isa
from .artifact import Artifact, check_destination, write_artifact
from .layout import Layout, plan_layout
from .lower import Lowering, choose_prefill_rows
from .spec import CompileError, ModelSpec, pad16

__all__ = ["Compiled", "ProgramInfo", "compile_model", "apply_patches", "patch_env_prefill", "patch_env_decode",
           "program_stats", "compile_main", "prefill_bucket", "decode_bucket", "to_artifact"]


@dataclass
class ProgramInfo:
    name: str
    kind: str  # prefill | decode
    bucket: int
    words: np.ndarray
    patches: list[dict]
    stats: dict = field(default_factory=dict)


@dataclass
class Compiled:
    spec: ModelSpec
    config: AcceleratorConfig
    layout: Layout
    programs: dict[str, ProgramInfo]
    prefill_rows: int
    prefill_step: int
    decode_step: int
    compile_seconds: float = 0.0
    affine: dict = field(default_factory=dict)  # which families were generated affinely (and verified)

    def prefill_buckets(self) -> list[int]:
        return sorted(p.bucket for p in self.programs.values() if p.kind == "prefill")

    def decode_buckets(self) -> list[int]:
        return sorted(p.bucket for p in self.programs.values() if p.kind == "decode")


def prefill_bucket(n_tokens: int, step: int) -> int:
    return max(step, -(-n_tokens // step) * step)


def decode_bucket(context: int, step: int) -> int:
    return max(step, -(-context // step) * step)


def program_stats(words: np.ndarray, tags: list[str] | None = None) -> dict:
    """Instruction counts per mnemonic and unit and bytes of a program (decoded from its words)."""
    prog = isa.decode_program(words)
    counts: dict[str, int] = {}
    for inst in prog:
        counts[inst.mnemonic] = counts.get(inst.mnemonic, 0) + 1
    return {"instructions": len(prog), "bytes": int(4 * len(words)), "counts": counts}


@dataclass
class Segment:
    words: np.ndarray
    patches: list[dict]
    tags: list[str]
    program: list | None = None


def _segment(spec, config, layout, rows: int, emit, sys_op: str = "barrier") -> Segment:
    """One self-contained piece of program: every token it releases is consumed inside it."""
    lw = Lowering(spec, config, layout)
    lw.setup(rows, emit_constants=False)
    emit(lw)
    words, patches = lw.finish(sys_op)
    return Segment(words, patches, [o.tag for o in lw.ops])


def _prologue(spec, config, layout, rows):
    def emit(lw):
        lw.setup(rows, emit_constants=True)
    return _segment(spec, config, layout, rows, emit)


def _chunk(spec, config, layout, rows, ci, s_alloc):
    """Prefill chunk ci (tokens ci*rows ...); token and chunk variables are written relative to the chunk."""
    d = spec.config.dim

    def emit(lw):
        lw.forward(rows, pad16((ci + 1) * rows), s_alloc, ci * rows, 0, decode=False)
        x = lw.x_addr
        lo = min(lw.final_row, lw.scratch_row)
        lw.misc("copy", x, 4 * rows * d, lo, 4 * d + abs(lw.final_row - lw.scratch_row), 1, d,
                patches=[("src0", x, 4 * d, "last_row.0"),
                         ("dst", lw.scratch_row, lw.final_row - lw.scratch_row, "is_last.0")], tag="last_row")
    return _segment(spec, config, layout, rows, emit)


def _decode_step(spec, config, layout, bucket, s_alloc):
    def emit(lw):
        lw.forward(1, bucket, s_alloc, None, 0, decode=True)
    return _segment(spec, config, layout, 1, emit)


def _head(spec, config, layout, rows, prefill: bool):
    def emit(lw):
        lw.head(lw.final_row if prefill else lw.x_addr)
    return _segment(spec, config, layout, rows, emit, sys_op="end")


AFFINE_USED: dict = {}


class _Family:
    """Members build(0..count-1) of a segment family; words affine in the index are generated lazily."""

    def __init__(self, build, count: int, verify_all: bool, key: str):
        self.build, self.count = build, count
        self.first = build(0)
        self.members: dict[int, Segment] = {0: self.first}
        self.affine = False
        if count > 1:
            second = build(1)
            self.members[1] = second
            if len(self.first.words) == len(second.words) and self.first.patches == second.patches:
                self.w0 = self.first.words.astype(np.int64)
                self.dw = second.words.astype(np.int64) - self.w0
                self.affine = True
                checks = range(2, count) if verify_all else ([count - 1] if count > 2 else [])
                for k in checks:
                    direct = build(k)
                    w = self._extrapolate(k)
                    if w is None or not np.array_equal(direct.words, w):
                        self.affine = False
                        break
                    self.members[k] = direct
        AFFINE_USED[key] = self.affine if count > 1 else None  # None: a single member

    def _extrapolate(self, k: int) -> np.ndarray | None:
        w = self.w0 + k * self.dw
        if (w < 0).any() or (w >= 1 << 32).any():
            return None
        return w.astype(np.uint32)

    def shape_of(self, k: int) -> Segment:
        """A member with the same instructions as member k (for counts): no words generated."""
        return self.first if self.affine else self[k]

    def __getitem__(self, k: int) -> Segment:
        if k not in self.members:
            if self.affine:
                return Segment(self._extrapolate(k), self.first.patches, self.first.tags)
            self.members[k] = self.build(k)
        return self.members[k]


class _Chunks:
    """Chunk ci of the prefill: member ci // period of the family of residue ci % period."""

    def __init__(self, fams, period):
        self.fams, self.period = fams, period

    def __getitem__(self, ci):
        return self.fams[ci % self.period][ci // self.period]

    def shape_of(self, ci):
        return self.fams[ci % self.period].shape_of(ci // self.period)


AFFINE_USED: dict = {}


def _combine_stats(stats: list[dict]) -> dict:
    out = {"instructions": 0, "bytes": 0, "counts": {}, "st_kv": 0, "st_output": 0, "st_activation": 0}
    for st in stats:
        for k in ("instructions", "bytes", "st_kv", "st_output", "st_activation"):
            out[k] += st[k]
        for mn, n in st["counts"].items():
            out["counts"][mn] = out["counts"].get(mn, 0) + n
    return out


def _rename(patches: list[dict], offset: int, tok_base: int, chunk: int) -> list[dict]:
    out = []
    for p in patches:
        var = p["var"]
        if var.startswith("tok_"):
            name, k = var.split(".")
            var = f"{name}.{int(k) + tok_base}"
        elif var.startswith(("last_row.", "is_last.")):
            var = f"{var.split('.')[0]}.{chunk}"
        out.append({**p, "offset": p["offset"] + offset, "var": var})
    return out


def _concat(segments: list[tuple[Segment, int, int]]) -> tuple[np.ndarray, list[dict], list[str]]:
    words, patches, tags, offset = [], [], [], 0
    for seg, tok_base, chunk in segments:
        words.append(seg.words)
        patches += _rename(seg.patches, offset, tok_base, chunk)
        tags += seg.tags
        offset += len(seg.words)
    return np.concatenate(words).astype(np.uint32), patches, tags


def _tag_stats(words: np.ndarray, tags: list[str]) -> dict:
    """Counts per mnemonic (from the opcodes of the words) and stores by purpose (from the op tags)."""
    prog_ops = []
    off = 0
    w = np.asarray(words)
    while off < len(w):
        fmt = isa.BY_OPCODE[int(w[off]) & 0xF]
        prog_ops.append(fmt.mnemonic)
        off += fmt.words
    st = {"instructions": len(prog_ops), "bytes": int(4 * len(w)), "counts": {}, "st_kv": 0, "st_output": 0,
          "st_activation": 0}
    for mn, tag in zip(prog_ops, tags):
        st["counts"][mn] = st["counts"].get(mn, 0) + 1
        if mn == "ST":
            key = {"kv_append": "st_kv", "output": "st_output"}.get(tag, "st_activation")
            st[key] += 1
    return st


#: Default largest prompt bucket. Prefill programs grow with the prompt (all buckets together with its
#: square), decode programs do not, so the default context may be much longer than the default prompt.
DEFAULT_MAX_PROMPT = 1024


@dataclass
class LengthPlan:
    """The length buckets a compilation will build, checked against the on-chip data space."""

    max_prompt: int
    max_context: int
    largest_context: int  # the largest context whose decode step fits the data space (0: none)
    data_bytes: int  # activation + global buffer bytes of one core
    notes: list[str] = field(default_factory=list)  # what was clamped or chosen, for the user


def bucket_lists(max_prompt: int, max_context: int, prefill_step: int, decode_step: int) -> tuple[list, list]:
    """The prefill buckets (multiples of prefill_step) and decode buckets (multiples of decode_step)."""
    pre = list(range(prefill_step, prefill_bucket(max_prompt, prefill_step) + 1, prefill_step))
    dec = list(range(decode_step, decode_bucket(max_context, decode_step) + 1, decode_step))
    return pre, dec


def data_bytes_needed(spec: ModelSpec, config: AcceleratorConfig, keys: int, layout: Layout | None = None) -> int:
    """Bytes of the data space one token's forward needs with ``keys`` KV rows on chip (shapes only).

    A prefill chunk of R >= 1 tokens needs at least this, so a compilation whose longest bucket is
    ``keys`` fits if and only if this fits (the prefill then picks the largest chunk that fits).
    """
    if layout is None or layout.kv_capacity < keys:
        layout = plan_layout(spec, config, keys, materialize=False)
    lw = Lowering(spec, config, layout)
    lw.data_size = 1 << 62  # measure, do not fail
    lw.setup(1, emit_constants=False)
    lw.forward(1, 16, keys, 0, 0, False, alloc_only=True)
    return int(lw.peak)


def plan_lengths(spec: ModelSpec, config: AcceleratorConfig, *, max_prompt: int | None = None,
                 max_context: int | None = None, prefill_step: int = 128, decode_step: int = 16) -> LengthPlan:
    """Check the lengths before any work: refuse what cannot be compiled, clamp what exceeds the model
    (with a note) and choose defaults that fit.

    Default context: the largest decode bucket whose forward fits the data space, capped by the
    model's context. Default prompt: the context, at most :data:`DEFAULT_MAX_PROMPT`.
    """
    model_ctx = spec.config.max_seq_len
    name = spec.config.name
    for opt, v in (("--max-context", max_context), ("--max-prompt", max_prompt)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise CompileError(f"{opt} {v}: must be a positive number of tokens (or leave it out for the "
                               "largest that fits)")
    if decode_step % 16 or decode_step <= 0:
        raise CompileError(f"decode_step={decode_step} must be a positive multiple of 16 (keys are reduced in 16s)")
    if prefill_step % 16 or prefill_step <= 0:
        raise CompileError(f"prefill_step={prefill_step} must be a positive multiple of 16")
    data = (config.buffers.activation_kib + config.buffers.global_kib) * 1024
    layout = plan_layout(spec, config, max(model_ctx, max_context or 0, max_prompt or 0, prefill_step),
                         materialize=False)

    def capacity(prompt: int, context: int) -> int:
        pre, dec = bucket_lists(min(prompt, context), context, prefill_step, decode_step)
        return max(pre[-1], dec[-1])

    def fits(prompt: int, context: int) -> bool:
        return data_bytes_needed(spec, config, capacity(prompt, context), layout) <= data

    # the largest context (a multiple of decode_step, capped by the model) whose buckets fit
    lo, hi = 0, -(-model_ctx // decode_step)
    prompt_for_search = max_prompt or DEFAULT_MAX_PROMPT
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(prompt_for_search, min(model_ctx, mid * decode_step)):
            lo = mid
        else:
            hi = mid - 1
    largest = min(model_ctx, lo * decode_step)
    notes: list[str] = []
    kib = data // 1024
    where = (f"the on-chip data space of this configuration ({config.buffers.activation_kib} KiB activation + "
             f"{config.buffers.global_kib} KiB global buffer)")
    if max_context is None:
        if largest == 0:
            need = data_bytes_needed(spec, config, capacity(1, decode_step), layout)
            raise CompileError(f"{name}: not even one token of context fits {where}: a forward needs "
                               f"{-(-need // 1024)} KiB of {kib} KiB; give --config with larger activation_kib / "
                               "global_kib buffers")
        context = largest
        why = "the model's context" if largest == model_ctx else \
            f"the largest that fits {kib} KiB of on-chip data space; the model allows {model_ctx}"
        notes.append(f"max context: {context} tokens ({why}; set --max-context to change)")
    else:
        context = max_context
        if context > model_ctx:
            notes.append(f"--max-context {context} exceeds {name}'s context of {model_ctx} tokens: using {model_ctx}")
            context = model_ctx
    if max_prompt is None:
        prompt = min(context, DEFAULT_MAX_PROMPT)
        if prompt < context:
            notes.append(f"max prompt: {prompt} tokens (prefill programs grow with the prompt; set --max-prompt "
                         "for longer prompts)")
    else:
        prompt = max_prompt
        if prompt > context:
            notes.append(f"--max-prompt {prompt} exceeds the context of {context} tokens: using {context}")
            prompt = context
    if not fits(prompt, context):
        cap = capacity(prompt, context)
        need = data_bytes_needed(spec, config, cap, layout)
        if data_bytes_needed(spec, config, decode_bucket(context, decode_step), layout) > data:
            fix = f"the largest context that fits is --max-context {largest}" if largest else \
                "not even one token of context fits"
        else:  # the context fits: the prompt buckets are too long
            best = max((p for p in range(prefill_step, prompt + 1, prefill_step) if fits(p, context)), default=0)
            fix = f"the largest prompt that fits is --max-prompt {best}" if best else \
                f"not even the smallest prompt bucket ({prefill_step} tokens) fits"
        raise CompileError(f"--max-context {context} with --max-prompt {prompt} (buckets up to {cap} keys) does not "
                           f"fit {where}: a forward needs {-(-need // 1024)} KiB of {kib} KiB; {fix}, or give "
                           "--config with larger activation_kib / global_kib buffers")
    return LengthPlan(prompt, context, largest, data, notes)


def compile_model(spec: ModelSpec, config: AcceleratorConfig, *, max_prompt: int | None = None,
                  max_context: int | None = None, prefill_step: int = 128, decode_step: int = 16,
                  prefill_buckets=None, decode_buckets=None, materialize: bool = True, progress=None,
                  verify_all: bool = False, prefill_rows: int | None = None) -> Compiled:
    """Compile prefill and decode programs for every length bucket (or the listed ones)."""
    t0 = time.perf_counter()
    if prefill_buckets is None or decode_buckets is None:
        plan = plan_lengths(spec, config, max_prompt=max_prompt, max_context=max_context, prefill_step=prefill_step,
                            decode_step=decode_step)
        pre, dec = bucket_lists(plan.max_prompt, plan.max_context, prefill_step, decode_step)
        prefill_buckets = pre if prefill_buckets is None else prefill_buckets
        decode_buckets = dec if decode_buckets is None else decode_buckets
    capacity = max(max(prefill_buckets, default=0), max(decode_buckets, default=0))
    layout = plan_layout(spec, config, capacity, materialize)
    rows = choose_prefill_rows(spec, config, layout, max(prefill_buckets)) if prefill_buckets else 1
    if prefill_rows is not None:
        if prefill_rows < 1 or prefill_rows & (prefill_rows - 1) or prefill_rows > rows:
            raise CompileError(f"prefill_rows={prefill_rows} must be a power of two <= {rows} (what fits on chip)")
        rows = prefill_rows
    rows = min(rows, prefill_step)
    while prefill_step % rows:
        rows //= 2
    programs = {}
    AFFINE_USED.clear()
    keep = materialize and spec.materialized  # a shape-only study needs sizes and counts, not the words
    pro = _prologue(spec, config, layout, rows)

    tile_bytes = {name: sum(t.w_bytes + t.m_bytes + 16 * t.n for t in tl) for name, tl in layout.tiles.items()}
    head_bytes = tile_bytes.get("lm_head", 0)
    decoder_bytes = sum(tile_bytes.values()) - head_bytes

    from olivine import progress as _progress

    bar = _progress.track(f"compiling {spec.config.name}", len(prefill_buckets) + len(decode_buckets), "program",
                          min_interval=2.0)

    def add(name, kind, bucket, parts):
        bar.advance(name)
        if keep:
            words, patches, tags = _concat(parts)
            programs[name] = ProgramInfo(name, kind, bucket, words, patches, _tag_stats(words, tags))
        else:
            st = _combine_stats([seg_stats(seg) for seg, _, _ in parts])
            programs[name] = ProgramInfo(name, kind, bucket, np.zeros(0, dtype=np.uint32), [], st)
        # weight-image bytes this program streams from HBM (values, sparse meta, requant entries): every
        # forward (a prefill chunk or a decode step) loads every decoder tile once, the head lm_head once
        forwards = bucket // rows if kind == "prefill" else 1
        programs[name].stats = {**programs[name].stats, "weight_load_bytes": forwards * decoder_bytes + head_bytes}

    cache: dict = {}

    def seg_stats(seg):
        key = id(seg)
        if key not in cache:
            cache[key] = _tag_stats(seg.words, seg.tags)
        return cache[key]

    if prefill_buckets:
        s_alloc = max(prefill_buckets)
        n_chunks = s_alloc // rows
        if progress:
            progress(f"prefill: {n_chunks} chunks of {rows} tokens")
        # keys of chunk ci are pad16((ci + 1) * rows): affine in ci for rows >= 16, and within each residue
        # class of ci modulo 16 / rows otherwise, so there is one family per residue class
        period = max(1, 16 // rows)
        fams = [_Family(lambda k, r=r: _chunk(spec, config, layout, rows, r + period * k, s_alloc),
                        len(range(r, n_chunks, period)), verify_all, f"prefill.{r}") for r in range(period)]
        chunks = _Chunks(fams, period)
        AFFINE_USED["prefill"] = all(AFFINE_USED.pop(f"prefill.{r}") is not False for r in range(period))
        head = _head(spec, config, layout, rows, True)
        for b in prefill_buckets:
            get = chunks.__getitem__ if keep else chunks.shape_of
            parts = [(pro, 0, 0)] + [(get(ci), ci * rows, ci) for ci in range(b // rows)] + [(head, 0, 0)]
            add(f"prefill_{b:05d}", "prefill", b, parts)
    if decode_buckets:
        s_alloc = max(decode_buckets)
        step = decode_buckets[1] - decode_buckets[0] if len(decode_buckets) > 1 else 0
        regular = all(decode_buckets[i] == decode_buckets[0] + i * step for i in range(len(decode_buckets)))
        if progress:
            progress(f"decode: {len(decode_buckets)} context buckets")
        build = (lambda k: _decode_step(spec, config, layout, decode_buckets[k], s_alloc))
        steps = _Family(build, len(decode_buckets) if regular else 1, verify_all, "decode") if regular else None
        head = _head(spec, config, layout, 1, False)
        pro1 = _prologue(spec, config, layout, 1)
        for k, b in enumerate(decode_buckets):
            seg = (steps[k] if keep else steps.shape_of(k)) if regular else \
                _decode_step(spec, config, layout, b, s_alloc)
            add(f"decode_{b:05d}", "decode", b, [(pro1, 0, 0), (seg, 0, 0), (head, 0, 0)])
    bar.close()
    return Compiled(spec, config, layout, programs, rows, prefill_step, decode_step, time.perf_counter() - t0,
                    dict(AFFINE_USED))


# ---- run-time patching -----------------------------------------------------------------------

def patch_value(p: dict, f, env: dict) -> int:
    """The value of patch ``p`` (field ``f``) for the run-time values ``env``: ``base + scale * env[var]``,
    checked to fit the field."""
    try:
        value = p["base"] + p["scale"] * int(env[p["var"]])
    except KeyError:
        raise CompileError(f"patch of {p['mnemonic']}.{p['field']} at word {p['offset']} needs {p['var']!r}, "
                           "which the run time did not provide") from None
    if not 0 <= value <= f.max:
        raise CompileError(f"patched {p['mnemonic']}.{p['field']} = {value} does not fit {f.width} bits "
                           f"(word {p['offset']})")
    return value


def apply_patches(words: np.ndarray, patches: list[dict], env: dict) -> np.ndarray:
    """A copy of ``words`` with every patched field set to ``base + scale * env[var]``."""
    out = np.array(words, dtype=np.uint32, copy=True)
    for p in patches:
        f = isa.BY_MNEMONIC[p["mnemonic"]].field(p["field"])
        value = patch_value(p, f, env)
        w = p["offset"] + f.word
        out[w] = (int(out[w]) & ~(f.max << f.lsb) & 0xFFFFFFFF) | (value << f.lsb)
    return out


def _token_env(env: dict, tokens, channels: int) -> None:
    for k, t in enumerate(tokens):
        env[f"tok_ch.{k}"] = int(t) % channels
        env[f"tok_row.{k}"] = int(t) // channels


def patch_env_prefill(tokens, bucket: int, rows: int, channels: int, pad_token: int = 0) -> dict:
    n = len(tokens)
    if not 1 <= n <= bucket:
        raise CompileError(f"a prompt of {n} tokens does not fit the prefill bucket {bucket}")
    env: dict = {}
    _token_env(env, list(tokens) + [pad_token] * (bucket - n), channels)
    last = n - 1
    for c in range(bucket // rows):
        env[f"last_row.{c}"] = min(max(last - c * rows, 0), rows - 1)
        env[f"is_last.{c}"] = int(c == last // rows)
    return env


def patch_env_decode(token: int, pos: int, channels: int) -> dict:
    env = {"pos": int(pos)}
    _token_env(env, [token], channels)
    return env


# ---- artifacts and the CLI ---------------------------------------------------------------------

def to_artifact(comp: Compiled) -> Artifact:
    if comp.layout.image is None:
        raise CompileError("a shape-only compile has no weight image to write")
    sp = comp.spec
    meta = {
        "model": {"name": sp.config.name, "source": sp.source, "preset": sp.preset,
                  "config": {k: getattr(sp.config, k) for k in ("vocab_size", "dim", "n_layers", "n_heads",
                                                                 "n_kv_heads", "head_dim", "ffn_dim", "norm_eps",
                                                                 "rope_theta", "max_seq_len", "tie_embeddings",
                                                                 "name", "rope_scaling")}},
        "layout": comp.layout.to_dict(),
        "prefill_rows": comp.prefill_rows, "prefill_step": comp.prefill_step, "decode_step": comp.decode_step,
        "programs": {n: {"kind": p.kind, "bucket": p.bucket, "patches": p.patches, "stats": p.stats}
                     for n, p in comp.programs.items()},
        "compile_seconds": comp.compile_seconds,
        # static activation scales calibrated at compile time (reproducible runs; docs/isa.md quant OVP4 mode)
        "activation_scales": {n: {"act": lin.act, "alpha": lin.act_alpha, "normal": lin.act_normal,
                                  "encoder_mult": list(lin.act_mult)}
                              for n, lin in sp.linears.items() if lin.act == "ovp4"},
    }
    weights = {ch: bytes(b) for ch, b in comp.layout.image.items()}
    return Artifact(comp.config, {n: p.words for n, p in comp.programs.items()}, weights, meta)


def storage_report(comp: Compiled) -> dict:
    pre = {p.bucket: p.stats for p in comp.programs.values() if p.kind == "prefill"}
    dec = {p.bucket: p.stats for p in comp.programs.values() if p.kind == "decode"}
    total = sum(s["bytes"] for s in pre.values()) + sum(s["bytes"] for s in dec.values())

    def per_length(d: dict, step: int) -> int:
        # one program per exact length: each bucket program stands for `step` lengths of about its size
        return sum(s["bytes"] * step for s in d.values())

    naive = per_length(pre, comp.prefill_step) + per_length(dec, comp.decode_step)
    return {"prefill": pre, "decode": dec, "total_bytes": total, "per_length_bytes": naive,
            "saved_factor": naive / total if total else 0.0, "compile_seconds": comp.compile_seconds,
            "weight_bytes_per_channel": comp.layout.weight_bytes,
            "weight_image": {**comp.layout.image_parts, "total": sum(comp.layout.image_parts.values())}}


def calibration_tokens(loaded, qcfg=None):
    """The calibration token ids of ``loaded`` (a golden.loaders model): golden.data's one rule
    (Lee + Tiny Shakespeare after the default evaluation tokens), the tokens golden.accuracy
    calibrates with at its default length, so a compiled model equals the one it measures.
    ``qcfg``: the QuantConfig they are for (its GPTQ may take more tokens per corpus); None when
    it needs no calibration."""
    from olivine.golden.data import CALIBRATION_TOKENS, model_calibration_tokens

    if qcfg is not None and not qcfg.needs_calibration():
        return None
    n = CALIBRATION_TOKENS if qcfg is None else qcfg.calibration_length(CALIBRATION_TOKENS)
    try:
        return model_calibration_tokens(loaded, n_tokens=n)
    except ValueError as err:
        raise CompileError(str(err)) from None


def _validate_quant(preset: str | None, weights: str | None, sparsity):
    """The QuantConfig of the options, refusing what the compiler cannot express (before any loading)."""
    from olivine.golden.qconfig import LayerQuant, QuantConfig

    if preset is None:
        preset = "w4a8-ovp"
    qcfg = QuantConfig.preset(preset)
    if weights is not None and weights not in ("ovp4", "int4", "int8"):
        raise CompileError(f"--weights {weights!r}: choose ovp4, int4 or int8")
    if isinstance(sparsity, str) and ":" not in sparsity:
        try:  # a density ("0.5"): N chosen per 16x16 block by golden.sparsity.choose_block_n
            sparsity = float(sparsity)
        except ValueError:
            raise CompileError(f"--sparsity {sparsity!r} is neither a pattern N:16 / 2:4 nor a density in (0, 1]") \
                from None
    if weights is not None or sparsity is not None:
        w_kind = weights or qcfg.default.weights
        sp = sparsity if sparsity is not None else qcfg.default.sparsity
        # GPTQ stays on when it still applies (dense ovp4/int4), else the override rounds to nearest
        method = qcfg.default.method if (w_kind in ("ovp4", "int4") and sp is None) else "rtn"
        default = LayerQuant(w_kind, qcfg.default.acts, sp, method=method)
        qcfg = QuantConfig(default, dict(qcfg.overrides), name=f"{preset}+{weights or ''}{sparsity or ''}")
    return qcfg


def _check_quant_compilable(qcfg, config) -> None:
    """What spec_from_qllama would refuse after quantizing, refused before it: the same table of rules
    (spec.QUANT_RULES) read from the QuantConfig instead of the quantized linears."""
    from olivine.golden.model import LINEAR_NAMES

    from .spec import QuantFacts, head_padding, quant_refusal

    if qcfg.is_float:
        raise CompileError(f"preset {qcfg.name!r} is float (fp32) and has no integer form; choose an integer preset "
                           "(e.g. w4a8-ovp)")
    names = [f"layers.{i}.{n}" for i in range(config.n_layers) for n in LINEAR_NAMES] + ["lm_head"]
    for name, lq in qcfg.resolve(names).items():
        short = name.rsplit(".", 1)[-1]
        rows_padded, cols_padded = head_padding(config, short) if name != "lm_head" else (False, False)
        reason = quant_refusal(QuantFacts(lq.weights, lq.acts, lq.sparsity is not None, rows_padded, cols_padded,
                                          lq.group is not None))
        if reason is not None:
            raise CompileError(f"{name} ({qcfg.name!r}: {lq.describe()}): {reason}")


def budget_choices(shape) -> tuple[str, ...]:
    """The mixed-precision choices (golden.mixed.CHOICES) the compiler can express for this model
    (N:16 ones are dropped when head_dim is not a multiple of 16: spec.QUANT_RULES)."""
    from olivine.golden import mixed
    from olivine.golden.qconfig import QuantConfig

    ok = []
    for c in mixed.DEFAULT_CHOICES:
        try:
            _check_quant_compilable(QuantConfig(mixed.CHOICES[c], {}, name=c), shape)
        except CompileError:
            continue
        ok.append(c)
    return tuple(ok)


def check_budget_options(budget_bits, preset, weights, sparsity, shape) -> float | None:
    """``--budget-bits``: alone (no --preset/--weights/--sparsity) and no lower than the cheapest
    assignment of this model's shape (checked before any loading)."""
    if budget_bits is None:
        return None
    from olivine.golden import mixed

    clash = [opt for opt, v in (("--preset", preset), ("--weights", weights), ("--sparsity", sparsity)) if v is not None]
    if clash:
        raise CompileError(f"--budget-bits chooses every linear's precision itself; drop {', '.join(clash)} (or drop "
                           "--budget-bits to use a uniform preset)")
    try:
        budget = mixed._check_budget(budget_bits)
        mixed._refuse_budget(budget, mixed.min_budget_bits(shape, budget_choices(shape)), f"for {shape.name}")
    except mixed.MixedPrecisionError as err:
        raise CompileError(str(err)) from None
    return budget


def compile_main(model: str = "glassllm", board: str | None = None, weights: str | None = None,
                 sparsity: str | None = None, preset: str | None = None, out: str = "build/olivine",
                 max_context: int | None = None, max_prompt: int | None = None, quiet: bool = False,
                 config: str | None = None, budget_bits: float | None = None, prefill_step: int = 128,
                 decode_step: int = 16) -> int:
    """``olivine compile``: quantize ``model``, compile all buckets, write the artifact to ``out``.

    ``prefill_step`` / ``decode_step``: the bucket widths (multiples of 16). A prompt runs the whole
    prefill bucket it falls in, so small steps mean less padding (fewer cycles in RTL) and more programs.

    ``budget_bits``: mixed precision instead of a preset: golden.mixed measures every linear's
    sensitivity (cached), assigns each its choice under that average of weight bits and the
    artifact's meta records the assignment (``mixed_precision``).

    Every option is checked first, and the lengths against the hardware configuration from the
    model's shape alone (:func:`plan_lengths`), so nothing is refused after minutes of quantization.
    ``config`` is a named configuration or a JSON file of AcceleratorConfig fields
    (``olivine.hw.config.load_config``); ``board`` defaults to the configuration's board, else u280.
    Notes on what was chosen or clamped go to stderr.
    """
    import sys

    from olivine import progress
    from olivine.golden.loaders import load_model, load_model_config
    from olivine.golden.qcache import quantize_cached
    from olivine.hw.config import load_config

    from .spec import spec_from_qllama, spec_from_shapes, sparse_n_of

    t0 = time.perf_counter()
    # ---- every option, before anything slow
    check_destination(out)  # refuse a file or a foreign directory before minutes of quantization
    hw = load_config(config, board=board)
    shape = load_model_config(model)
    budget = check_budget_options(budget_bits, preset, weights, sparsity, shape)
    if budget is None:
        qcfg = _validate_quant(preset, weights, sparsity)
        _check_quant_compilable(qcfg, shape)
        pattern = qcfg.default.sparsity if isinstance(qcfg.default.sparsity, str) else None
        wfmt = qcfg.default.weights if qcfg.default.weights in ("ovp4", "int4", "int8") else "int8"
    else:  # the lengths depend on the shapes only; plan them with the widest (dense INT8) tiles
        qcfg, pattern, wfmt = None, None, "int8"
    sparse_n_of(pattern)
    plan = plan_lengths(spec_from_shapes(shape, wfmt, sparsity=pattern), hw, max_prompt=max_prompt,
                        max_context=max_context, prefill_step=prefill_step, decode_step=decode_step)
    for note in plan.notes:
        print(f"olivine compile: {note}", file=sys.stderr)
    # ---- the slow part
    loaded = load_model(model)
    assignment = None
    if budget is not None:
        from olivine.golden import mixed

        calib = calibration_tokens(loaded)
        say = None if quiet else (lambda msg: print(f"olivine compile: {msg}", file=sys.stderr))
        try:
            sens = mixed.model_sensitivity(loaded, budget_choices(shape), progress=say)
        except ValueError as err:  # no tokenizer, too little text
            raise CompileError(str(err)) from None
        assignment = mixed.assign(sens, budget)
        qcfg = mixed.budget_config(assignment)
        _check_quant_compilable(qcfg, shape)
        if not quiet:
            print(f"olivine compile: budget {budget:g} bits -> {assignment.average_bits:.3f} bits per weight "
                  f"({', '.join(f'{c} x{n}' for c, n in assignment.counts.items())})", file=sys.stderr)
    else:  # static activation scales, GPTQ Hessians: golden's one rule (None when the preset needs none)
        calib = calibration_tokens(loaded, qcfg)
    q = quantize_cached(loaded, qcfg, calib)  # golden's quantize_model, kept on disk between runs
    spec = spec_from_qllama(q, source=str(model))
    comp = compile_model(spec, hw, max_context=plan.max_context, max_prompt=plan.max_prompt,
                         prefill_step=prefill_step, decode_step=decode_step)
    art = to_artifact(comp)
    art.meta["model"]["load"] = str(model)
    if assignment is not None:  # which format every linear got, and what it was predicted to cost
        art.meta["mixed_precision"] = {**assignment.to_dict(), "calib_tokens": sens.calib_tokens,
                                       "choices": list(sens.choices)}
    tok = loaded.tokenizer
    art.meta["model"]["eos_id"] = None if tok is None or tok.eos_id is None else int(tok.eos_id)
    with progress.track(f"writing {out}"):  # says how long it took if that was over a second
        write_artifact(out, art)
    if not quiet:
        rep = storage_report(comp)
        print(f"compiled {model} ({spec.preset}) for {hw.board} in {time.perf_counter() - t0:.1f} s "
              f"(programs {comp.compile_seconds:.1f} s): {len(comp.programs)} programs "
              f"(prompts up to {plan.max_prompt}, context up to {plan.max_context} tokens), "
              f"{rep['total_bytes'] / 1e6:.2f} MB of instructions, weight image "
              f"{sum(comp.layout.weight_bytes) / 1e6:.2f} MB over {comp.layout.channels} channels "
              f"(values {rep['weight_image']['weight_values'] / 1e6:.3f} MB, sparse meta "
              f"{rep['weight_image']['meta'] / 1e6:.3f} MB) -> {out}")
    return 0
