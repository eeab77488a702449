"""The runtime: runs a compiled artifact on a backend (isa = the functional simulator; rtl = the RTL
core in the fast Verilator harness, sim/rtl_backend.py; xrt later).

:class:`Runtime` picks the length bucket, patches the program's run-time fields, executes it and
reads the logits; :func:`run_main` is ``olivine run``: it checks the prompt and the number of new
tokens against the artifact's buckets before generating anything, streams the text as it is
generated, stops at the model's end-of-sequence token (``meta.model.eos_id``, recorded at compile
time) unless told to ignore it, and never discards what was generated when it stops early.
"""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
import torch

from olivine import progress
from olivine.compiler import isa

from .funcsim import FuncSim, SimError, SimStats

__all__ = ["Runtime", "RunError", "greedy_loop", "golden_generate", "check_against_golden", "run_main",
           "BACKENDS"]

#: Backends of ``olivine run`` provided today.
BACKENDS = ("isa", "rtl")


class RunError(ValueError):
    """A run that cannot start (options, prompt, lengths); the message names the limit and the fix."""


class Runtime:
    """Runs compiled programs on a :class:`FuncSim`: picks the bucket, patches, executes, reads logits.

    Build it from an in-memory ``olivine.compiler.compile.Compiled`` (:meth:`from_compiled`) or an
    artifact directory (:meth:`from_artifact`).
    """

    #: the backend's name (``olivine run --backend``)
    backend = "isa"
    #: move every object the process holds out of the cyclic garbage collector's view (``gc.freeze``) when
    #: a program is first decoded. The decoded programs, the machine and what the process held before them
    #: (torch's and numpy's objects, ~300k) live as long as the runtime, and the collector's full
    #: collections over them took ~160 ms of CPU once every ~16 SmolLM2 decode steps (each step leaves ~3k
    #: short-lived objects: its patched instructions). Process-wide, and frozen objects that later become
    #: cyclic garbage are never collected, so it is off unless the caller's process only generates.
    freeze_gc = False

    def __init__(self, config, meta: dict, programs: dict[str, np.ndarray], image: dict[int, bytes], **options):
        self.config, self.meta = config, meta
        lay = meta["layout"]
        self.channels = lay["channels"]
        self.io_base = lay["io_base"]
        self.vocab = meta["model"]["config"]["vocab_size"]
        self.programs = programs
        self.info = meta["programs"]
        self._decoded: dict[str, list] = {}  # program name -> decoded template (patched per run: _patched)
        self._by_encoding: dict[bytes, object] = {}  # an instruction's words -> its Instruction (_decode)
        self._idx: dict[str, tuple] = {}  # program name -> patch plan (offset -> index, fields, offsets)
        self._schedule_keys: dict[str, tuple | None] = {}  # program name -> FuncSim.run's schedule_key
        self.length = 0
        self.last_stats: SimStats | None = None
        self._start(image, **options)

    def _start(self, image: dict[int, bytes]) -> None:
        """The backend's machine, loaded with the weight image (isa: a FuncSim)."""
        self.sim = FuncSim(self.config, self.meta["layout"]["channel_bytes"], image)

    @classmethod
    def from_compiled(cls, comp, **options) -> "Runtime":
        from olivine.compiler.compile import to_artifact

        art = to_artifact(comp)
        return cls(art.config, art.meta, art.programs, art.weights, **options)

    @classmethod
    def from_artifact(cls, directory, expect_config=None, **options) -> "Runtime":
        from olivine.compiler.artifact import read_artifact

        art = read_artifact(directory, expect_config)
        return cls(art.config, art.meta, art.programs, art.weights, **options)

    def _buckets(self, kind: str) -> list[tuple[int, str]]:
        return sorted((v["bucket"], n) for n, v in self.info.items() if v["kind"] == kind)

    @property
    def max_prompt(self) -> int:
        """The longest prompt this artifact runs (its largest prefill bucket)."""
        return max((b for b, _ in self._buckets("prefill")), default=0)

    @property
    def max_context(self) -> int:
        """The longest context a decode step runs at (its largest decode bucket)."""
        return max((b for b, _ in self._buckets("decode")), default=0)

    @property
    def eos_id(self) -> int | None:
        """The model's end-of-sequence token recorded at compile time (None: unknown or none)."""
        eos = self.meta["model"].get("eos_id")
        return None if eos is None else int(eos)

    def max_new_tokens(self, prompt_tokens: int) -> int:
        """How many tokens can follow a prompt of this length (the last one needs no decode step)."""
        return max(0, self.max_context + 1 - prompt_tokens) if self._buckets("decode") else 1

    def _pick(self, kind: str, length: int) -> str:
        for b, name in self._buckets(kind):
            if b >= length:
                return name
        largest = self._buckets(kind)[-1][0] if self._buckets(kind) else 0
        option = "--max-prompt" if kind == "prefill" else "--max-context"
        raise SimError(f"no {kind} program for length {length} (largest bucket {largest}); recompile with "
                       f"{option} {length} or more")

    def _execute(self, name: str, env: dict) -> torch.Tensor:
        words = self.programs[name]
        patches = self.info[name]["patches"]
        if name not in self._decoded:
            self._decoded[name] = self._decode(words)
            if self.freeze_gc:
                gc.freeze()
        prog = self._patched(name, patches, env) if patches else self._decoded[name]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-instruction tensors are small: intra-op threads only add overhead
        try:
            self.last_stats = self.sim.run(None, prog, schedule_key=self._schedule_key(name, patches))
        finally:
            torch.set_num_threads(threads)
        raw = self.sim.hbm[0][self.io_base: self.io_base + 4 * self.vocab]
        return torch.from_numpy(raw.view("<i4").astype(np.int32).copy())

    def _decode(self, words) -> list:
        """``isa.decode_program(words)`` (the same instructions, the same errors), with one Instruction object
        per distinct encoding across this runtime's programs: the length buckets of a model repeat most of
        their instructions, and the simulator keeps what it prepares for an instruction on the object, so
        a bucket's first step reuses what the buckets before it prepared."""
        words = np.asarray(words, dtype=np.uint32)
        raw, n = words.tobytes(), len(words)
        prog, off = [], 0
        while off < n:
            fmt = isa.BY_OPCODE.get(int(words[off]) & 0xF)
            if fmt is None or off + fmt.words > n:
                isa.decode_one(words, off)  # raises the decoder's error
            key = raw[4 * off: 4 * (off + fmt.words)]
            inst = self._by_encoding.get(key)
            if inst is None:
                inst = self._by_encoding[key] = isa.decode_one(words, off)
            prog.append(inst)
            off += fmt.words
        return prog

    #: the fields that decide the order in which the units execute a program (FuncSim.run's schedule_key)
    _SCHEDULE_FIELDS = frozenset(("wait", "release", "opcode"))

    def _schedule_key(self, name: str, patches: list[dict]):
        """The program's name when no patch touches a schedule field (wait, release, a SYS instruction):
        then every patched program of it executes in the same order, worked out once; else None."""
        if name not in self._schedule_keys:
            self._schedule_keys[name] = None if any(p["field"] in self._SCHEDULE_FIELDS or p["mnemonic"] == "SYS"
                                                    for p in patches) else ("program", name)
        return self._schedule_keys[name]

    def _patched(self, name: str, patches: list[dict], env: dict) -> list:
        """The decoded program with its run-time fields set from ``env``: the decoded template's values
        patched in place of re-decoding the words (the result equals ``isa.decode_program`` of
        ``apply_patches(words, patches, env)``, and so do the errors: apply_patches' CompileError for a
        missing variable or a value that does not fit, then the decoder's IsaError of each patched
        instruction, in the same order).

        Every patched value is ``base + scale * env[var]`` and the decoder's rules of a patched field are
        a range (0..max, count >= 1, enum < its size), so the values of each variable for which every one
        of its patches passes form one interval, worked out once per program: a step whose variables lie
        in their intervals builds the instructions without checking each field (none can fail), any other
        step takes the checking path, which raises the exact error. Each patched instruction carries
        ``_sim_template`` = (the decoded template, the names of the patched fields): FuncSim keeps what
        it prepares for an instruction whose immediates change every step on the template."""
        plan = self._idx.get(name)
        if plan is None:
            plan = self._idx[name] = self._patch_plan(self._decoded[name], patches)
        index, fields, offsets, ranges, per_offset = plan
        if ranges is not None:
            try:
                x = {var: int(env[var]) for var in ranges}
            except (KeyError, TypeError, ValueError):
                x = None
            if x is not None and all(lo <= x[var] <= hi for var, (lo, hi) in ranges.items()):
                prog = list(self._decoded[name])
                for k, link, sets in per_offset:
                    template = link[0]
                    values = dict(template.values)
                    for field_name, var, base, scale in sets:
                        values[field_name] = base + scale * x[var]
                    inst = isa.Instruction(template.fmt, values)
                    object.__setattr__(inst, "_sim_template", link)
                    prog[k] = inst
                return prog
        from olivine.compiler.compile import patch_value

        prog = list(self._decoded[name])
        values: dict[int, dict] = {}
        for p, f in fields:  # apply_patches' loop, its checks and messages
            values.setdefault(p["offset"], {})[f.name] = patch_value(p, f, env)
        for off in offsets:  # the decoder's checks of each patched instruction
            k = index[off]
            template = prog[k]
            prog[k] = isa.with_fields(template, values[off], off)
            object.__setattr__(prog[k], "_sim_template", (template, frozenset(values[off])))
        return prog

    @staticmethod
    def _patch_plan(prog: list, patches: list[dict]) -> tuple:
        """(offset -> index, (patch, field) in order, patched offsets, per variable the interval of its
        values for which no patch can fail (None: some patch has no such interval, e.g. it patches the
        opcode or MV's row count, whose rules are not ranges), per patched instruction (index, (template,
        patched field names) for its ``_sim_template``, (field, var, base, scale) in patch order))."""
        index = {off: k for k, off in enumerate(isa.program_offsets(prog))}
        fields = [(p, isa.BY_MNEMONIC[p["mnemonic"]].field(p["field"])) for p in patches]
        offsets = list({p["offset"] for p in patches})
        ranges: dict | None = {}
        for p, f in fields:
            lo, hi = (1 if f.kind == "count" else 0), f.max
            if isinstance(f.kind, tuple):
                hi = min(hi, len(f.kind) - 1)
            base, scale = int(p["base"]), int(p["scale"])
            if f.name == "opcode" or (p["mnemonic"] == "MV" and f.name == "m") or p["offset"] not in index or \
                    prog[index[p["offset"]]].fmt.mnemonic != p["mnemonic"]:
                ranges = None
                break
            if scale == 0:
                x_lo, x_hi = (-(1 << 62), 1 << 62) if lo <= base <= hi else (1, 0)
            elif scale > 0:
                x_lo, x_hi = -((base - lo) // scale), (hi - base) // scale  # ceil((lo - base) / scale), floor
            else:
                x_lo, x_hi = -((hi - base) // -scale), (base - lo) // -scale
            r = ranges.get(p["var"])
            ranges[p["var"]] = (x_lo, x_hi) if r is None else (max(r[0], x_lo), min(r[1], x_hi))
        by_offset: dict[int, list] = {}
        for p, f in fields:
            by_offset.setdefault(p["offset"], []).append((f.name, p["var"], int(p["base"]), int(p["scale"])))
        per_offset = [] if ranges is None else \
            [(index[off], (prog[index[off]], frozenset(s[0] for s in by_offset[off])), tuple(by_offset[off]))
             for off in offsets]
        return index, fields, offsets, ranges, per_offset

    # ---- what olivine run prints of the backend (overridden by the rtl backend)
    def describe(self) -> str:
        return "isa functional simulator"

    def figures_dict(self) -> dict:
        """The backend's figures for ``--json``: isa counts instructions and HBM bytes (no cycles)."""
        st = self.sim.stats
        return {"instructions": dict(st.instructions), "hbm_read_bytes": {str(k): v for k, v in st.hbm_read.items()},
                "hbm_written_bytes": {str(k): v for k, v in st.hbm_written.items()}}

    def figures_text(self) -> str:
        st = self.sim.stats
        return (f"instructions {st.instructions}; HBM read {sum(st.hbm_read.values()) / 1e6:.2f} MB, "
                f"written {sum(st.hbm_written.values()) / 1e6:.3f} MB")

    def figures_detail(self) -> list[str]:
        return []

    def write_trace(self, path) -> list:
        raise RunError("the isa backend has no schedule to trace; use --backend rtl")

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

    def generate(self, tokens, max_new_tokens: int, stop=(), on_token=None) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy generation: returns the new tokens and the int32 logits that chose each (see
        :func:`greedy_loop` for ``stop`` and ``on_token``)."""
        return greedy_loop(self.prefill(tokens), self.decode, max_new_tokens, stop, on_token)


def greedy_loop(logits: torch.Tensor, decode, max_new_tokens: int, stop=(), on_token=None
                ) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding from the prefill's last logits; ``decode(token)`` returns the next logits.

    Returns the new tokens and the logits that chose each (no decode after the last token). A token
    in ``stop`` (the end-of-sequence id) ends generation; it is the last token returned.
    ``on_token(token)`` is called as each token is chosen (to stream it).
    """
    out, all_logits = [], [logits]
    for _ in range(max_new_tokens):
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if len(out) == max_new_tokens or nxt in stop:
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
    from olivine.compiler.compile import calibration_tokens, compile_model
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qconfig import QuantConfig
    from olivine.golden.qmodel import quantize_model
    from olivine.hw.config import for_board

    loaded = load_model(model)
    qcfg = QuantConfig.preset(preset)
    calib = calibration_tokens(loaded, qcfg)
    q = quantize_model(loaded.config, loaded.weights, preset, calib)
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
    with progress.track(f"simulating {loaded.config.name} on the isa backend", max_new_tokens, "token",
                        min_interval=2.0) as bar:
        toks, logits = rt.generate(ids, max_new_tokens, on_token=bar.advance)
    sim_s = time.perf_counter() - t0
    g_toks, g_logits = golden_generate(q, ids, max_new_tokens)
    diffs = [int((a.to(torch.int64) - b.to(torch.int64)).abs().max()) for a, b in zip(logits, g_logits)]
    return {"tokens_equal": toks == g_toks, "logits_equal": all(d == 0 for d in diffs) and len(logits) == len(g_logits),
            "max_logit_diff": max(diffs) if diffs else 0, "sim_tokens_per_s": len(toks) / sim_s if sim_s else 0.0,
            "compile_seconds": compile_s, "tokens": toks, "golden_tokens": g_toks,
            "text": loaded.tokenizer.decode(toks) if loaded.tokenizer is not None else None,
            "stats": rt.sim.stats, "activation_scales": rt.meta.get("activation_scales", {})}


def _check_run_options(prompt, max_new_tokens, backend) -> None:
    if backend not in BACKENDS:
        raise RunError(f"--backend {backend!r} is not available; choose one of {', '.join(BACKENDS)} "
                       "(isa: the functional simulator; rtl: the RTL core in the fast Verilator harness)")
    if not isinstance(prompt, str) or prompt == "":
        raise RunError("the prompt is empty; give the text to continue with --prompt \"...\"")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise RunError(f"--max-new-tokens {max_new_tokens}: must be at least 1")


def check_lengths(rt: Runtime, n_prompt: int, max_new_tokens: int, directory: str = "the artifact") -> None:
    """Refuse, before generating, a prompt or a token count beyond the artifact's buckets."""
    if n_prompt > rt.max_prompt:
        raise RunError(f"the prompt has {n_prompt} tokens but {directory} runs prompts of at most {rt.max_prompt} "
                       f"tokens; shorten the prompt or recompile with --max-prompt {n_prompt} (or more)")
    room = rt.max_new_tokens(n_prompt)
    if max_new_tokens > room:
        need = n_prompt + max_new_tokens - 1
        model_ctx = rt.meta["model"]["config"].get("max_seq_len")
        fix = f"recompile with --max-context {need} (or more)" if model_ctx is None or need <= model_ctx else \
            f"the model's own context is {model_ctx} tokens"
        raise RunError(f"--max-new-tokens {max_new_tokens} after a {n_prompt}-token prompt exceeds the context of "
                       f"{directory} ({rt.max_context} tokens): at most --max-new-tokens {room} fits; {fix}")


def _runtime_class(backend: str):
    if backend == "rtl":
        from .rtl_backend import RtlRuntime

        return RtlRuntime
    return Runtime


def _check_outputs(backend: str, trace, waves, budget) -> None:
    """Refuse, before any work, output options the backend cannot honour."""
    if trace is not None:
        if backend == "isa":
            raise RunError("--trace needs cycles, and the isa backend (the functional simulator) has no schedule: it "
                           "runs each unit ahead as far as its tokens allow, untimed; use --backend rtl for a "
                           "per-instruction timeline")
        if not str(trace).endswith(".json"):
            raise RunError(f"--trace {trace}: name the Chrome trace file .json (the timeline picture goes next to "
                           "it as .png)")
    if waves is not None:
        if backend != "rtl":
            raise RunError(f"--waves records the RTL's signals: it needs --backend rtl (not {backend})")
        if not str(waves).endswith((".fst", ".vcd")):
            raise RunError(f"--waves {waves}: name the file .fst or .vcd (the trace format)")
        if str(waves).endswith(".fst"):
            from . import fastsim

            if not fastsim.have_lz4_header():
                raise RunError(f"--waves {waves}: {fastsim.FST_NEEDS_LZ4}")
    if budget is not None and backend != "rtl":
        raise RunError(f"--budget is a cycle budget of the RTL backend; the {backend} backend counts no cycles")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise RunError(f"--budget {budget}: give a positive number of cycles")


def run_main(directory: str, prompt: str, max_new_tokens: int = 32, backend: str = "isa",
             ignore_eos: bool = False, as_json: bool = False, trace: str | None = None,
             waves: str | None = None, waves_step: int = 0, budget: int | None = None) -> int:
    """``olivine run DIR --backend isa|rtl --prompt ... --max-new-tokens N [--ignore-eos] [--json]
    [--trace FILE.json] [--waves FILE.fst|.vcd [--waves-step K]] [--budget CYCLES]``: generate text.

    The text is streamed to stdout as it is generated; if generation fails midway, what was generated
    stays printed and the error follows. Stops at the end-of-sequence token unless ``ignore_eos``.
    ``as_json``: nothing is streamed; one JSON object is printed at the end (``tokens``, ``text``,
    ``stopped``, ``seconds``, ``tokens_per_s`` and the backend's figures, ``cycles`` for rtl).
    rtl only: ``trace`` writes a per-instruction timeline (Chrome trace JSON + a PNG next to it),
    ``waves`` the signals of one program run (``waves_step`` 0: the prefill, k: decode step k),
    ``budget`` the cycles one program may take (sim/rtl_backend.py).
    """
    import json

    from olivine.golden.loaders import load_tokenizer

    _check_run_options(prompt, max_new_tokens, backend)
    _check_outputs(backend, trace, waves, budget)
    options = {}
    if backend == "rtl":
        options = {"budget": budget, "timeline": trace is not None, "waves": waves, "waves_step": waves_step}
    rt = _runtime_class(backend).from_artifact(directory, **options)
    src = rt.meta["model"].get("load") or rt.meta["model"].get("source")
    tok = load_tokenizer(src)
    if tok is None:
        raise RunError(f"the model {src!r} of {directory} has no tokenizer")
    ids = tok.encode(prompt)
    if not ids:
        raise RunError(f"the prompt {prompt!r} encodes to no tokens; give some text to continue")
    check_lengths(rt, len(ids), max_new_tokens, str(directory))
    eos = rt.eos_id if rt.eos_id is not None else tok.eos_id
    stop = () if ignore_eos or eos is None else (int(eos),)

    out: list[int] = []
    shown = [""]
    stream = not as_json

    def emit(token: int) -> None:
        out.append(token)
        if not stream:
            return
        text = tok.decode([t for t in out if t not in stop])
        # print only the new suffix, once it is whole (an incomplete UTF-8 byte piece decodes to U+FFFD)
        if text.startswith(shown[0]) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown[0]):])
            shown[0] = text
        sys.stdout.flush()

    if stream:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    t0 = time.perf_counter()
    try:
        rt.generate(ids, max_new_tokens, stop=stop, on_token=emit)
    except BaseException:
        if stream:
            rest = tok.decode([t for t in out if t not in stop])
            sys.stdout.write((rest[len(shown[0]):] if rest.startswith(shown[0]) else "") + "\n")
            sys.stdout.flush()
        print(f"olivine run: generation stopped after {len(out)} of {max_new_tokens} tokens:", file=sys.stderr)
        raise
    dt = time.perf_counter() - t0
    text = tok.decode([t for t in out if t not in stop])
    if stop and out and out[-1] in stop:
        reason = f"stopped at the end-of-sequence token {tok.decode([out[-1]])!r} (--ignore-eos to continue)"
        stopped = "eos"
    else:
        reason = f"stopped after --max-new-tokens {max_new_tokens}"
        stopped = "max_new_tokens"
    written = rt.write_trace(trace) if trace is not None else []
    if waves is not None:
        written.append(waves)
    if as_json:
        record = {"backend": rt.backend, "prompt": prompt, "prompt_tokens": ids, "tokens": out, "text": text,
                  "stopped": stopped, "seconds": round(dt, 3), "tokens_per_s": len(out) / dt if dt else 0.0,
                  **rt.figures_dict()}
        if written:
            record["trace_files"] = [str(p) for p in written]
        sys.stdout.write(json.dumps(record) + "\n")
        return 0
    if text.startswith(shown[0]):
        sys.stdout.write(text[len(shown[0]):])
    else:  # the decoded text was revised: print the final form
        sys.stdout.write("\n" + prompt + text)
    sys.stdout.write("\n")
    print(f"[{rt.describe()}] {len(out)} token{'s' if len(out) != 1 else ''} in {dt:.2f} s = "
          f"{len(out) / dt:.2f} tokens/s, {reason}; {rt.figures_text()}")
    for line in rt.figures_detail():
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0
