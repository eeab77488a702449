"""Functional-simulator speed and bit-exactness on a real model (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_funcsim.py [--model smollm2] [--preset w4a8-int4] [--tokens 32]
    .venv/bin/python benchmarks/bench_funcsim.py --decode-only [--cache /tmp/olivine-bench]
    .venv/bin/python benchmarks/bench_funcsim.py --decode-only --artifact DIR   (an `olivine compile -o DIR`)
    .venv/bin/python benchmarks/bench_funcsim.py --decode-only --baseline OLD_FUNCSIM_PY [--baseline-runtime OLD_RUNTIME_PY]
    .venv/bin/python benchmarks/bench_funcsim.py --decode-only --freeze-gc  (Runtime.freeze_gc)
    .venv/bin/python benchmarks/bench_funcsim.py --decode-only --sample     (where a step's CPU goes)

Default: compiles the model, prefills a short prompt and decodes greedily on the simulator and on
golden's QLlama; prints tokens/s of the simulator, whether tokens and int32 logits are identical, and
the simulator's counts (instructions per unit, HBM bytes per step).

``--decode-only``: the simulator alone, from a compiled artifact cached under ``--cache`` (compiling
SmolLM2 takes about a minute); times the decode steps after the prefill, in wall-clock and in CPU
seconds of this process (the CPU figure is the one to compare on a shared machine), and checks the
tokens and int32 logits against the first run's, saved next to the artifact (``--reset`` redoes it).
With ``--artifact DIR`` the artifact is one written by ``olivine compile`` (e.g. the default compile,
``olivine compile --model smollm2 -o DIR``); the reference is kept in ``--cache`` under DIR's name.
``--baseline FILE`` runs a second simulator (the FuncSim of another funcsim.py) on the same artifact,
alternating decode steps with this one in one process: on a shared machine the load changes from one
run to the next, so the ratio of the two CPU figures is the comparable speed-up; ``--baseline-runtime FILE``
makes the baseline's Runtime that runtime.py's (its patching). The decode steps' cyclic garbage collections
and their CPU are printed too (a full collection walks every object of the process).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from olivine.sim.runtime import check_against_golden


def full_check(args) -> None:
    t0 = time.perf_counter()
    rep = check_against_golden(args.model, args.preset, prompt=args.prompt, max_new_tokens=args.tokens)
    st = rep["stats"]
    n = len(rep["tokens"])
    print(f"{args.model} {args.preset}: {n} tokens, simulator {rep['sim_tokens_per_s']:.2f} tokens/s "
          f"(prefill included), compile {rep['compile_seconds']:.1f} s, total {time.perf_counter() - t0:.1f} s")
    print(f"tokens equal: {rep['tokens_equal']}, logits equal: {rep['logits_equal']} "
          f"(max diff {rep['max_logit_diff']} LSB)")
    print(f"text: {args.prompt!r} -> {rep['text']!r}")
    print(f"instructions per unit: {st.instructions}; by mnemonic: {st.by_mnemonic}")
    print(f"HBM read {sum(st.hbm_read.values()) / 1e6:.1f} MB over {len(st.hbm_read)} channels, "
          f"written {sum(st.hbm_written.values()) / 1e3:.1f} kB")


def _artifact(args, folder: Path):
    """The compiled model (the same compile as check_against_golden), cached in ``folder``."""
    from olivine.compiler.artifact import read_artifact, write_artifact
    from olivine.compiler.compile import compile_model, to_artifact
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model
    from olivine.hw.config import for_board

    loaded = load_model(args.model)
    ids = loaded.tokenizer.encode(args.prompt) if loaded.tokenizer is not None else [1, 2, 3]
    if not (folder / "manifest.json").is_file():
        from olivine.compiler.compile import calibration_tokens
        from olivine.golden.qconfig import QuantConfig

        calib = calibration_tokens(loaded) if QuantConfig.preset(args.preset).needs_calibration() else None
        q = quantize_model(loaded.config, loaded.weights, args.preset, calib)
        ctx = min(loaded.config.max_seq_len, -(-(len(ids) + args.tokens) // 16) * 16)
        comp = compile_model(spec_from_qllama(q, args.model), for_board("u280"), max_context=ctx,
                             max_prompt=min(ctx, -(-len(ids) // 128) * 128), prefill_step=128, decode_step=16)
        write_artifact(folder, to_artifact(comp))
    return read_artifact(folder), ids


def decode_only(args) -> None:
    from olivine.sim import funcsim
    from olivine.sim.funcsim import Runtime

    print(f"simulator: {funcsim.__file__}")  # which one ran (a "before" tree may be first on PYTHONPATH)

    if args.artifact:
        from olivine.compiler.artifact import read_artifact
        from olivine.golden.loaders import load_tokenizer

        art = read_artifact(args.artifact)
        src = art.meta["model"].get("load") or art.meta["model"].get("source")
        ids = load_tokenizer(src).encode(args.prompt)
        folder = Path(args.cache) / f"artifact-{Path(args.artifact).resolve().name}-{args.tokens}"
        if args.reset and (folder / "reference.npz").exists():
            (folder / "reference.npz").unlink()
        folder.mkdir(parents=True, exist_ok=True)
        args.model, args.preset = art.meta["model"]["name"], art.meta["model"]["preset"]
    else:
        folder = Path(args.cache) / f"{args.model}-{args.preset}-{args.tokens}"
        if args.reset and folder.exists():
            shutil.rmtree(folder)
        art, ids = _artifact(args, folder / "artifact")
    rt = Runtime(art.config, art.meta, art.programs, art.weights)
    rt.freeze_gc = args.freeze_gc  # Runtime.freeze_gc (off by default, as for every runtime)
    if args.unfused_baseline:  # the same simulator with each kv group's attention executed step by step
        base = Runtime(art.config, art.meta, art.programs, art.weights)
        base.freeze_gc = args.freeze_gc
        base.sim.fuse_attention = False
        return interleaved(args, rt, base, ids)
    if args.baseline:
        return interleaved(args, rt, _baseline_runtime(args.baseline, art, args.baseline_runtime), ids)
    logits = rt.prefill(ids)
    tokens, all_logits = [], [logits]
    sampler = Sampler() if args.sample else None
    meter = GcMeter()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.tokens):
        tokens.append(int(torch.argmax(logits)))
        logits = rt.decode(tokens[-1])
        all_logits.append(logits)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    meter.report(args.tokens)
    if sampler is not None:
        sampler.report(cpu / args.tokens)
    print(f"{args.model} {args.preset}: {args.tokens} decode steps after a {len(ids)}-token prompt: "
          f"{args.tokens / wall:.2f} tokens/s wall ({wall:.2f} s), {args.tokens / cpu:.2f} tokens/s of CPU "
          f"({cpu / args.tokens * 1e3:.0f} ms CPU per step)")
    ref = folder / "reference.npz"
    got = np.stack([t.numpy() for t in all_logits])
    if ref.is_file():
        want = np.load(ref)
        print(f"tokens equal to the first run: {want['tokens'].tolist() == tokens}, "
              f"int32 logits equal: {np.array_equal(want['logits'], got)}")
    else:
        np.savez(ref, tokens=np.asarray(tokens), logits=got)
        print(f"reference tokens and logits saved to {ref}")


class GcMeter:
    """The cyclic garbage collector's collections during the decode steps (per generation) and the CPU they
    took (gc.callbacks): a full collection walks every object of the process, torch's included."""

    def __init__(self):
        import gc

        self.count, self.cpu, self._t = [0, 0, 0], 0.0, 0.0
        gc.callbacks.append(self._event)

    def _event(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.process_time()
        else:
            self.count[info["generation"]] += 1
            self.cpu += time.process_time() - self._t

    def report(self, steps: int) -> None:
        import gc

        gc.callbacks.remove(self._event)
        print(f"cyclic GC during the decode steps: {self.count[0]} / {self.count[1]} / {self.count[2]} collections "
              f"of generation 0 / 1 / 2, {self.cpu / steps * 1e3:.1f} ms CPU per step")


class Sampler:
    """A sampling profile of the decode steps: every 0.5 ms of CPU (SIGPROF) the Python stack is attributed
    to the simulator's handler on it (do_mpe / do_misc with the instruction's mode / op, an executed run
    with its kind, an attention chain, do_ld, do_st, the runtime's patching) or to the scheduler loop.
    Timing every handler call instead inflates the many small ones (the timer calls cost as much as a
    small instruction)."""

    HANDLERS = ("do_mpe", "do_misc", "do_ld", "do_st", "_execute_chain", "_execute_run", "_run_end", "_patched",
                "_run")

    def __init__(self, interval: float = 5e-4):
        import collections
        import signal

        self.counts = collections.Counter()
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, interval, interval)

    def _sample(self, signum, frame) -> None:
        f = frame
        while f is not None and f.f_code.co_name not in self.HANDLERS:
            f = f.f_back
        if f is None:
            self.counts["(outside the simulator)"] += 1
            return
        name, loc = f.f_code.co_name, f.f_locals
        inst = loc.get("insts", [None])[0] if name == "_execute_run" else loc.get("i")
        if name in ("do_mpe", "do_misc", "_execute_run") and inst is not None:
            name += " " + (inst.enum("op") if inst.fmt.mnemonic == "MISC" else inst.enum("mode"))
        self.counts["scheduler loop" if name == "_run" else name] += 1

    def report(self, cpu_per_step: float) -> None:
        import signal

        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        total = sum(self.counts.values())
        print(f"sampled profile ({total} samples):")
        for name, n in self.counts.most_common(20):
            print(f"  {name:28s} {100 * n / total:5.1f} %  {cpu_per_step * 1e3 * n / total:5.1f} ms per step")


def _load_module(name: str, path: str):
    """The module at ``path`` imported as olivine.sim.``name`` (its relative imports resolve to this olivine)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"olivine.sim.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _baseline_runtime(path: str, art, runtime_path: str | None = None):
    """A Runtime whose simulator is the FuncSim of the funcsim.py at ``path`` (another tree's, e.g. a
    ``git show REV:sim/funcsim.py``), imported next to this olivine's (its relative imports resolve here);
    with ``runtime_path`` the Runtime class too is that runtime.py's (its patching)."""
    import inspect

    from olivine.sim.funcsim import Runtime

    module = _load_module("_baseline_funcsim", path)
    if runtime_path:
        Runtime = _load_module("_baseline_runtime", runtime_path).Runtime  # noqa: N806
    rt = Runtime(art.config, art.meta, art.programs, art.weights)
    rt.sim = module.FuncSim(art.config, art.meta["layout"]["channel_bytes"], art.weights)
    if "schedule_key" not in inspect.signature(rt.sim.run).parameters:  # a simulator from before the key
        run = rt.sim.run
        rt.sim.run = lambda words, program=None, schedule_key=None: run(words, program)
    return rt


def interleaved(args, rt, base, ids) -> None:
    """Decode steps of this simulator and of the baseline, alternately in one process (which runs first
    alternates too), so that both see the same machine load; CPU seconds per step of each, and the int32
    logits compared at every step."""
    logits, logits_b = rt.prefill(ids), base.prefill(ids)
    equal = torch.equal(logits, logits_b)
    cpu = {"this": [], "baseline": []}
    for step in range(args.tokens):
        token = int(torch.argmax(logits))
        for who in (("this", "baseline") if step % 2 == 0 else ("baseline", "this")):
            t = time.process_time()
            if who == "this":
                logits = rt.decode(token)
            else:
                logits_b = base.decode(token)
            cpu[who].append(time.process_time() - t)
        equal = equal and torch.equal(logits, logits_b)
    for who, times in cpu.items():
        print(f"{who:8s}: {args.tokens / sum(times):.2f} tokens/s of CPU ({sum(times) / len(times) * 1e3:.0f} ms CPU "
              f"per step; median {sorted(times)[len(times) // 2] * 1e3:.0f} ms, fastest {min(times) * 1e3:.0f} ms)")
    ratio = [b / t for t, b in zip(cpu["this"], cpu["baseline"])]
    print(f"CPU per step, baseline / this: {sum(cpu['baseline']) / sum(cpu['this']):.2f} in total, median of the "
          f"step pairs {sorted(ratio)[len(ratio) // 2]:.2f}; int32 logits equal at every step: {equal}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--preset", default="w4a8-int4")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--decode-only", action="store_true", help="time decode steps from a cached artifact")
    ap.add_argument("--cache", default="/tmp/olivine-bench", help="where --decode-only keeps the artifact")
    ap.add_argument("--artifact", default=None, help="--decode-only on this compiled artifact directory "
                    "(olivine compile -o DIR) instead of compiling --model / --preset")
    ap.add_argument("--baseline", default=None, help="--decode-only: also run the FuncSim of this funcsim.py "
                    "(e.g. git show REV:sim/funcsim.py > FILE), step for step in the same process")
    ap.add_argument("--baseline-runtime", default=None, help="--baseline: the baseline's Runtime from this "
                    "runtime.py (e.g. git show REV:sim/runtime.py > FILE), so its patching is the old one too")
    ap.add_argument("--unfused-baseline", action="store_true", help="--decode-only: the baseline is this "
                    "simulator with FuncSim.fuse_attention off (interleaved as --baseline)")
    ap.add_argument("--freeze-gc", action="store_true", help="--decode-only: the runtime freezes the process's "
                    "long-lived objects out of the cyclic garbage collector's view (Runtime.freeze_gc)")
    ap.add_argument("--sample", action="store_true", help="--decode-only: print a sampled profile of the decode steps")
    ap.add_argument("--reset", action="store_true", help="recompile and re-save the reference (--decode-only)")
    args = ap.parse_args()
    (decode_only if args.decode_only else full_check)(args)


if __name__ == "__main__":
    main()
