"""OVP units (hw/ovp_decoder.py, hw/ovp_pe.py, hw/ovp_array.py): resources and simulation speed.

    .venv/bin/python benchmarks/bench_ovp_units.py --synth --shape 4x4 8x8 --normal int4
    .venv/bin/python benchmarks/bench_ovp_units.py --synth --shape 4x4 --normal int8
    .venv/bin/python benchmarks/bench_ovp_units.py --sim --shape 8x8 --normal int4

--synth runs Yosys ``synth_xilinx -family xcup`` (through olivine.hw.resources.synthesize) on one
pair decoder, one PE and each R x C array, and prints LUT / FF / carry / DSP48E2 counts plus the
border-decoder share of the array's LUTs: (R + C) x LUTs of a standalone decoder / array LUTs.
(Yosys flattens the array, so the share uses the standalone decoder count; the even/odd operand
mux after each decoder is counted as array, not decoder.)
--sim builds the array with a plain Verilator C++ harness (no Python in the loop): both input
streams offer a new pseudo-random pair vector every cycle (a tile every --pairs transfers), the
results are always ready; it prints simulated cycles per CPU second (and per wall second) and
useful MACs per CPU second.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.hdl import Shape

HARNESS = r"""
#include "Vtop.h"
#include "verilated.h"
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <ctime>

static uint64_t lfsr = 0x9E3779B97F4A7C15ull;
static uint32_t next32() { lfsr ^= lfsr << 13; lfsr ^= lfsr >> 7; lfsr ^= lfsr << 17; return (uint32_t)lfsr; }

int main(int argc, char** argv) {
    const long cycles = std::atol(argv[1]);
    const long pairs = std::atol(argv[2]);
    Verilated::commandArgs(argc, argv);
    Vtop* top = new Vtop;
    top->rst = 1; top->clk = 0; top->eval(); top->clk = 1; top->eval(); top->clk = 0;
    top->rst = 0; top->a__valid = 1; top->b__valid = 1; top->results__ready = 1;
    long sent = 0, result_rows = 0; uint64_t check = 0;
    SET_A
    SET_B
    top->eval();
    auto start = std::chrono::steady_clock::now();
    std::clock_t cpu_start = std::clock();
    for (long c = 0; c < cycles; ++c) {
        bool fire = top->a__ready && top->a__valid;
        if (top->results__valid) { ++result_rows; check ^= GET_R; }
        top->clk = 1; top->eval();
        if (fire) { ++sent; SET_A SET_B }
        top->clk = 0; top->eval();
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double cpu = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    std::printf("%ld %ld %ld %.6f %llu %.6f\n", cycles, sent, result_rows, s, (unsigned long long)check, cpu);
    top->final(); delete top;
    return 0;
}
"""


def _set_port(name: str, width: int, last_bit: str | None = None) -> str:
    """C++ that fills a Verilator port of ``width`` bits with random bits (and a `last` flag)."""
    if width <= 64:
        code = f"top->{name} = ((uint64_t)next32() << 32 | next32()) & {hex((1 << width) - 1)}ull;"
    else:
        words = (width + 31) // 32
        code = f"for (int w = 0; w < {words}; ++w) top->{name}[w] = next32();"
        code += f" top->{name}[{words - 1}] &= (1u << {width - 32 * (words - 1)}) - 1u;" if width % 32 else ""
    if last_bit is not None:  # clear, then set the last flag every `pairs` transfers
        bit = width - 1
        if width <= 64:
            code += f" top->{name} &= ~(1ull << {bit}); if ({last_bit}) top->{name} |= 1ull << {bit};"
        else:
            code += (f" top->{name}[{bit // 32}] &= ~(1u << {bit % 32});"
                     f" if ({last_bit}) top->{name}[{bit // 32}] |= 1u << {bit % 32};")
    return code


def simulation_speed(rows: int, cols: int, normal: str, cycles: int, pairs: int) -> dict:
    from olivine.hw.export import verilator_env, verilog
    from olivine.hw.ovp_array import OvpSystolicArray

    dut = OvpSystolicArray(rows, cols, normal=normal)
    widths = {name: Shape.cast(getattr(dut, name).payload.shape()).width for name in ("a", "b", "results")}
    result_get = "top->results__payload" if widths["results"] <= 64 else "top->results__payload[0]"
    source = (HARNESS.replace("SET_A", _set_port("a__payload", widths["a"], f"(sent % pairs) == pairs - 1"))
              .replace("SET_B", _set_port("b__payload", widths["b"])).replace("GET_R", result_get))
    # Verilator escapes "__" in port names as "___05F" in the C++ model
    source = re.sub(r"top->(\w+)", lambda m: "top->" + m.group(1).replace("__", "___05F"), source)
    env = verilator_env()
    with tempfile.TemporaryDirectory(prefix="bench_ovp_array_") as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(verilog(dut, "top"))
        (tmp / "main.cpp").write_text(source)
        start = time.monotonic()
        subprocess.run(
            ["verilator", "--cc", "--exe", "--build", "-j", "2", "-O3", "--top-module", "top",
             "-Wno-fatal", "-Wno-lint", "-Wno-style", "-CFLAGS", "-O2", "--prefix", "Vtop",
             "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++20",
             "top.v", "main.cpp", "-o", "bench"],
            cwd=tmp, env=env, check=True, capture_output=True, text=True)
        build_s = time.monotonic() - start
        out = subprocess.run([str(tmp / "obj_dir" / "bench"), str(cycles), str(pairs)], check=True,
                             capture_output=True, text=True).stdout.split()
    ran, sent, result_rows, seconds, cpu = int(out[0]), int(out[1]), int(out[2]), float(out[3]), float(out[5])
    tiles = result_rows // rows
    # rates per CPU second of the simulation loop (robust on a shared machine); wall time too
    return {"shape": f"{rows}x{cols}", "normal": normal, "build_s": round(build_s, 1), "cycles": ran,
            "transfers": sent, "tiles": tiles, "cycles_per_cpu_s": round(ran / cpu),
            "cycles_per_wall_s": round(ran / seconds),
            "macs_per_cpu_s": round(tiles * rows * cols * 2 * pairs / cpu),
            "cycles_per_tile": round(ran / max(tiles, 1), 1)}


def _report(unit: str, **params) -> dict:
    from olivine.hw.resources import UNITS, synthesize

    component, top = UNITS[unit](**params)
    report = synthesize(component, top)
    d = report.to_dict() if hasattr(report, "to_dict") else dict(vars(report))
    return {"top": top, "lut": d["lut"], "ff": d["ff"], "carry": d["carry"], "dsp48e2": d["dsp48e2"],
            "muxf": d.get("muxf", 0)}


def resources(shapes: list[tuple[int, int]], normal: str) -> list[dict]:
    import olivine.hw.ovp_array  # noqa: F401  (registers the ovp_* units)

    bits = 8 if normal == "int8" else 4
    decoder = _report("ovp_decoder", normal=normal)
    pe = _report("ovp_pe", bits=bits)
    rows_out = [decoder, pe]
    for rows, cols in shapes:
        array = _report("ovp_array", rows=rows, cols=cols, normal=normal)
        pes = rows * cols * (4 if bits == 8 else 1)
        array["decoders"] = rows + cols
        array["decoder_lut_share"] = round((rows + cols) * decoder["lut"] / array["lut"], 4)
        array["pe_lut_share"] = round(pes * pe["lut"] / array["lut"], 4)
        rows_out.append(array)
    return rows_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", action="store_true", help="Verilator cycles per second")
    ap.add_argument("--synth", action="store_true", help="Yosys synth_xilinx resources")
    ap.add_argument("--shape", nargs="+", default=["4x4"], help="array shapes RxC")
    ap.add_argument("--normal", default="int4", choices=["int4", "flint4", "runtime", "int8"])
    ap.add_argument("--cycles", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=64, help="pair transfers per tile (K = 2 * pairs)")
    args = ap.parse_args(argv)
    if not (args.sim or args.synth):
        ap.error("choose --sim and/or --synth")
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shape]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        ap.error(f"--shape takes RxC with positive integers, e.g. 4x4; got {args.shape}")
    if args.synth:
        for row in resources(shapes, args.normal):
            print(row, flush=True)
    if args.sim:
        for rows, cols in shapes:
            print(simulation_speed(rows, cols, args.normal, args.cycles, args.pairs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
