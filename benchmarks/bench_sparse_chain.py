"""Sparse DSP chain figures: Verilator simulation speed and Yosys synth_xilinx resources.

    .venv/bin/python benchmarks/bench_sparse_chain.py --sim --length 16
    .venv/bin/python benchmarks/bench_sparse_chain.py --synth --length 2 4 8 16

--sim builds the behavioural chain (hw/sparse_chain.py, primitive=False) with a plain Verilator
C++ harness (no Python in the loop): the input stream offers a new pseudo-random beat every cycle,
the output is always ready, so the chain runs at full throughput (2L MACs per cycle); it prints
simulated cycles per second and beats (and MACs) per second.
--synth runs Yosys ``synth_xilinx -family xcup`` on the primitive chain (primitive=True) through
olivine.hw.resources.synthesize and prints DSP48E2 / PCOUT->PCIN links / LUT / FF / SRL / carry.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.hdl import Shape

# Verilator escapes the double underscore of Amaranth's stream port names as ___05F.
HARNESS = r"""
#include "Vtop.h"
#include "verilated.h"
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>

int main(int argc, char** argv) {
    const long cycles = std::atol(argv[1]);
    Verilated::commandArgs(argc, argv);
    Vtop* top = new Vtop;
    top->rst = 1; top->clk = 0; top->eval(); top->clk = 1; top->eval(); top->clk = 0;
    top->rst = 0; top->i___05Fvalid = 1; top->o___05Fready = 1; top->eval();
    uint64_t lfsr = 0x9E3779B97F4A7C15ull, check = 0, outputs = 0;
    auto start = std::chrono::steady_clock::now();
    for (long c = 0; c < cycles; ++c) {
        for (int w = 0; w < IN_WORDS; ++w) {       // a new random beat every cycle
            lfsr ^= lfsr << 13; lfsr ^= lfsr >> 7; lfsr ^= lfsr << 17;
            top->i___05Fpayload[w] = (uint32_t)lfsr;
        }
        top->clk = 1; top->eval();
        if (top->o___05Fvalid) { ++outputs; check ^= top->o___05Fpayload[0]; }
        top->clk = 0; top->eval();
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%ld %llu %.6f %llu\n", cycles, (unsigned long long)outputs, s, (unsigned long long)check);
    top->final(); delete top;
    return 0;
}
"""


def simulation_speed(length: int, weight_format: str, cycles: int) -> dict:
    from olivine.hw.export import verilator_env, verilog
    from olivine.hw.sparse_chain import SparseDSPChain, chain_input_layout

    dut = SparseDSPChain(length, weight_format)
    in_bits = Shape.cast(chain_input_layout(length, weight_format)).width
    if in_bits <= 64:
        raise SystemExit("the harness assumes a wide (>64-bit) payload port")
    text = verilog(dut, "top")
    env = verilator_env()
    with tempfile.TemporaryDirectory(prefix="bench_chain_") as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(text)
        (tmp / "main.cpp").write_text(HARNESS.replace("IN_WORDS", str((in_bits + 31) // 32)))
        start = time.monotonic()
        build = subprocess.run(
            ["verilator", "--cc", "--exe", "--build", "-j", "2", "-O3", "--top-module", "top",
             "-Wno-fatal", "-Wno-lint", "-Wno-style", "-CFLAGS", "-O2", "--prefix", "Vtop",
             "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++20",
             "top.v", "main.cpp", "-o", "bench"],
            cwd=tmp, env=env, capture_output=True, text=True)
        if build.returncode:
            raise SystemExit(f"verilator build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
        build_s = time.monotonic() - start
        out = subprocess.run([str(tmp / "obj_dir" / "bench"), str(cycles)], check=True,
                             capture_output=True, text=True).stdout.split()
    ran, outputs, seconds = int(out[0]), int(out[1]), float(out[2])
    return {"length": length, "format": weight_format, "build_s": round(build_s, 1),
            "cycles": ran, "outputs": outputs, "cycles_per_s": round(ran / seconds),
            "macs_per_s": round(2 * length * outputs / seconds)}


def resources(length: int, weight_format: str) -> dict:
    from olivine.hw.resources import build_unit, synthesize

    component, top = build_unit("sparse_chain", {"length": length, "weight_format": weight_format,
                                                 "primitive": True})
    report = synthesize(component, top)
    d = report.to_dict() if hasattr(report, "to_dict") else vars(report)
    d["macs_per_dsp_per_cycle"] = 2 * length / max(1, report.dsp48e2)
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", action="store_true", help="Verilator cycles per second")
    ap.add_argument("--synth", action="store_true", help="Yosys synth_xilinx resources")
    ap.add_argument("--length", type=int, nargs="+", default=[16])
    ap.add_argument("--format", default="int8", choices=["int8", "int4", "ovp4"])
    ap.add_argument("--cycles", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    if not (args.sim or args.synth):
        ap.error("choose --sim and/or --synth")
    for length in args.length:
        if args.sim:
            print(simulation_speed(length, args.format, args.cycles), flush=True)
        if args.synth:
            print(resources(length, args.format), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
