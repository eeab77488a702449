"""Fast-harness build options (sim/fastsim.py BuildOptions) measured on a replayed `olivine run --backend rtl`.

Three steps; DIR holds a capture (the probed core's Verilog and every harness run of one
``check_rtl``: the host script, its HBM images and, from the default build, its outputs):

    .venv/bin/python benchmarks/bench_fast_build.py capture DIR [--preset w8a8] [--prompt "Once upon a time"] [--tokens 32]
    .venv/bin/python benchmarks/bench_fast_build.py build DIR --options O2,O3,... [--train TRAIN_DIR]
    .venv/bin/python benchmarks/bench_fast_build.py replay DIR --options O2,O3,... [--reps 3] [--runs N]

``build`` (the same DIR as ``replay``: a PGO profile is kept there) builds the core once per named option set (cached by hash in ~/.cache/olivine/fast) and
prints its CPU time (user + system of Verilator, make and g++); ``pgo`` first builds the
instrumented model, trains it on the runs of TRAIN_DIR (a different capture, so the measured
replay is not its own training set) and then builds with the profile. ``replay`` runs every
captured run through each build, interleaved (option sets in turn, ``--reps`` rounds), sums the
harness processes' user CPU time and cycles, and checks that every HBM dump, status register and
counter is byte-for-byte the capture's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

#: The option sets this benchmark knows (sim/fastsim.py BuildOptions fields).
OPTION_SETS = {
    "default": {},
    "O2": {"cxx_opt": "-O2"},
    "O3": {"cxx_opt": "-O3"},
    "O1": {"cxx_opt": "-O1"},
    "xinit-fast": {"verilator_flags": ("--x-initial", "fast")},
    "split-5k": {"verilator_flags": ("--output-split", "5000")},
    "split-100k": {"verilator_flags": ("--output-split", "100000")},
    "native": {"cxx_flags": ("-march=native",)},
    "pgo": {},  # built by build_pgo: the instrumented model, a training replay, then profile_use
}
PLACEHOLDER = "@RUN@"


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def capture(args) -> int:
    """Run check_rtl with every fast-harness invocation recorded into DIR/runs/NNNN."""
    from olivine.sim import fastsim, rtl_backend

    out = Path(args.dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    real = subprocess.run
    count = [0]

    def recording_run(cmd, *a, **kw):
        if isinstance(cmd, list) and len(cmd) == 2 and str(cmd[1]).endswith("script.txt"):
            script = Path(cmd[1])
            run_dir = out / "runs" / f"{count[0]:04d}"
            count[0] += 1
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir()
            text = script.read_text()
            for f in script.parent.iterdir():  # the inputs (loads, follow-up programs)
                if f.suffix == ".bin":
                    shutil.copy(f, run_dir / f.name)
            (run_dir / "script.txt").write_text(text.replace(str(script.parent), PLACEHOLDER))
            proc = real(cmd, *a, **kw)
            ref = run_dir / "reference"
            ref.mkdir()
            for f in script.parent.iterdir():
                if f.name == "result.json" or (f.suffix in (".bin", ".txt") and not (run_dir / f.name).exists()):
                    shutil.copy(f, ref / f.name)
            return proc
        return real(cmd, *a, **kw)

    fastsim.subprocess = types.SimpleNamespace(run=recording_run, PIPE=subprocess.PIPE)
    try:
        res = rtl_backend.check_rtl(preset=args.preset, prompt=args.prompt, max_new_tokens=args.tokens)
    finally:
        fastsim.subprocess = subprocess
    harness = next(iter(rtl_backend._PROBED_HARNESSES.values()))
    (out / "top.v").write_text(harness.verilog_text)
    same = all(res[k] for k in ("tokens_equal_isa", "logits_equal_isa", "tokens_equal_golden", "logits_equal_golden"))
    (out / "meta.json").write_text(json.dumps({"top": harness.top, "reset_latency": harness.reset_latency,
                                               "preset": args.preset, "prompt": args.prompt, "tokens": args.tokens,
                                               "runs": count[0], "equal_isa_and_golden": same}, indent=1))
    print(f"captured {count[0]} harness runs into {out} (tokens and logits identical to isa and golden: {same})")
    return 0 if same else 1


def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def _build(folder: Path, options) -> tuple[Path, float, float]:
    from olivine.sim import fastsim

    meta = _meta(folder)
    cpu0, t0 = _cpu_children(), time.monotonic()
    exe, seconds = fastsim.build((folder / "top.v").read_text(), meta["top"], "batch",
                                 reset_latency=meta["reset_latency"], options=options)
    return exe, (_cpu_children() - cpu0) if seconds else 0.0, seconds


def _replay_all(folder: Path, exe: Path, check: bool = True, runs: int | None = None) -> tuple[float, int, list[str]]:
    """The captured runs (the first ``runs``; None: all) through ``exe``; (user CPU s, cycles, mismatches)."""
    cpu, cycles, bad = 0.0, 0, []
    for run_dir in sorted((folder / "runs").iterdir())[:runs]:
        with tempfile.TemporaryDirectory(prefix="olivine-replay-") as tmp:
            tmp = Path(tmp)
            for f in run_dir.glob("*.bin"):
                os.symlink(f.resolve(), tmp / f.name)
            (tmp / "script.txt").write_text((run_dir / "script.txt").read_text().replace(PLACEHOLDER, str(tmp)))
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            subprocess.run([str(exe), str(tmp / "script.txt")], capture_output=True, check=False)
            cpu += resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
            got = json.loads((tmp / "result.json").read_text())
            cycles += int(got["cycles_total"])
            if not check:
                continue
            want = json.loads((run_dir / "reference" / "result.json").read_text())
            for k in ("status", "run_cycles", "cycles_total", "registers", "hbm"):
                if got[k] != want[k]:
                    bad.append(f"{run_dir.name}: {k} differs")
            for ref in (run_dir / "reference").iterdir():
                if ref.name != "result.json" and (tmp / ref.name).read_bytes() != ref.read_bytes():
                    bad.append(f"{run_dir.name}: {ref.name} differs")
    return cpu, cycles, bad


def _options(name: str, folder: Path | None = None):
    from olivine.sim.fastsim import BuildOptions

    if name not in OPTION_SETS:
        raise SystemExit(f"unknown option set {name!r}; choose from {', '.join(OPTION_SETS)}")
    if name == "pgo":
        profile = (folder / "pgo-profile") if folder else None
        if profile is None or not profile.is_dir():
            raise SystemExit(f"no PGO profile in {folder}: run `build {folder} --options pgo --train TRAIN_DIR` first")
        return BuildOptions(profile_use=str(profile))
    return BuildOptions(**OPTION_SETS[name])


def build_pgo(folder: Path, train: Path) -> None:
    from olivine.sim.fastsim import BuildOptions

    exe, cpu_gen, wall_gen = _build(folder, BuildOptions(profile_generate=True))
    profile_dir = exe.parent / "profile"
    shutil.rmtree(profile_dir, ignore_errors=True)
    cpu_train, cycles, _ = _replay_all(train, exe, check=False)
    keep = folder / "pgo-profile"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(profile_dir, keep)
    print(f"  pgo instrumented build: CPU {cpu_gen:.0f} s (wall {wall_gen:.0f} s; 0 = cached); "
          f"training on {train}: {cycles:,} cycles, {cpu_train:.1f} s CPU ({cycles / cpu_train / 1e3:.1f}k cycles/CPU-s)")
    exe, cpu, wall = _build(folder, _options("pgo", folder))
    print(f"  pgo: build CPU {cpu:.0f} s (wall {wall:.0f} s); total with the instrumented build and the "
          f"training: {cpu_gen + cpu_train + cpu:.0f} s CPU")


def build_cmd(args) -> int:
    folder = Path(args.dir)
    for name in args.options.split(","):
        if name == "pgo":
            if not args.train:
                raise SystemExit("pgo needs --train TRAIN_DIR (a capture of another run)")
            build_pgo(folder, Path(args.train))
            continue
        exe, cpu, wall = _build(folder, _options(name))
        print(f"  {name}: build CPU {cpu:.0f} s (wall {wall:.0f} s; 0 = cached), {exe}, "
              f"load average {os.getloadavg()[0]:.1f}")
        sys.stdout.flush()
    return 0


def replay_cmd(args) -> int:
    folder = Path(args.dir)
    names = args.options.split(",")
    exes = {n: _build(folder, _options(n, folder))[0] for n in names}
    totals = {n: [0.0, 0] for n in names}
    ok = True
    for rep in range(args.reps):
        for n in names:
            load = os.getloadavg()[0]
            cpu, cycles, bad = _replay_all(folder, exes[n], check=True, runs=args.runs)
            totals[n][0] += cpu
            totals[n][1] += cycles
            ok &= not bad
            print(f"  round {rep + 1} {n:>10}: {cycles:,} cycles in {cpu:.2f} s user CPU = "
                  f"{cycles / cpu / 1e3:.1f}k cycles/CPU-s (load {load:.1f}); "
                  f"{'outputs identical to the capture' if not bad else 'DIFFERS: ' + '; '.join(bad[:5])}")
            sys.stdout.flush()
    base = totals[names[0]][1] / totals[names[0]][0]
    print(f"\n| option set | cycles / CPU-second (sum of {args.reps} rounds) | vs {names[0]} |")
    print("|---|---|---|")
    for n in names:
        speed = totals[n][1] / totals[n][0]
        print(f"| {n} | {speed / 1e3:.1f}k | {speed / base:.3f}x |")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("dir")
    c.add_argument("--preset", default="w8a8")
    c.add_argument("--prompt", default="Once upon a time")
    c.add_argument("--tokens", type=int, default=32)
    b = sub.add_parser("build")
    b.add_argument("dir")
    b.add_argument("--options", default="default")
    b.add_argument("--train", default=None)
    r = sub.add_parser("replay")
    r.add_argument("dir")
    r.add_argument("--options", default="default")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--runs", type=int, default=None, help="replay only the first N runs (the prefill, then decode steps)")
    args = ap.parse_args(argv)
    return {"capture": capture, "build": build_cmd, "replay": replay_cmd}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
