"""The whole core's Verilog conversion time and size, and its Yosys synth_xilinx resources by part.

    python benchmarks/bench_core.py convert [--config small|default] [--no-mpe]
    python benchmarks/bench_core.py resources [--config small] [--parts controller,ld,...] [--timeout S]
    python benchmarks/bench_core.py resources --config default --parts weight_buffer [--slice 64] [--primitive bram]
    python benchmarks/bench_core.py resources --config small --parts core --hierarchical [--report core.json]
    python benchmarks/bench_core.py engine --chains 8 [--config default] [--ffs] [--lint] [--out engine.v]

``convert`` times hw.export.verilog(hw.hdl.core_for(config)) (elaboration, netlist, RTLIL, Yosys
write_verilog) and prints seconds (wall and CPU) and the Verilog's size. ``resources`` synthesises
each part of the core as the core builds it (controller, LD, ST, the two transfer guards, the
buffers, the matrix engine with DSP48E2 primitives, the SFU) and the whole core, each with
hw.resources.synthesize (cached), and prints the cells with the fraction of one U280 SLR and of
the board (docs/benchmarks.md records the figures). Run it niced: Yosys takes long on the whole core.
``--hierarchical`` synthesises without ``-flatten`` (hw.resources.synthesize(flatten=False): one
module at a time, so the whole core fits YoWASP's 4 GiB) and prints one line per module (instances,
its subtree's and its own cells, largest first) before the total; ``--report`` keeps the JSON.
``engine`` converts the matrix engine alone (hw.mpe.MatrixEngine of the configuration with
``--chains`` chains, behavioural DSP models) and prints the conversion's seconds and size; ``--ffs``
counts the flip-flop bits the design declares (the WIDTH of every ``$dff`` cell of Amaranth's
RTLIL, each module instantiated once) and its memories' bits; ``--yosys`` counts them after a quick
generic Yosys pass (``proc; flatten; synth -run :fine``: coarse cells, memories kept as memories,
the widths of every flip-flop cell summed; slow at 8 chains under load); ``--lint`` runs
``verilator --lint-only -Wall`` with the engine's waivers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from olivine.boards import get_board
from olivine.hw.buffers import BufferBank
from olivine.hw.config import load_config
from olivine.hw.controller import Controller
from olivine.hw.core import FETCH_BURST, TransferGuard
from olivine.hw.decode import DEFAULT_OFFSET_BITS
from olivine.hw.export import verilog
from olivine.hw.hdl import core_for
from olivine.hw.ldst import LoadEngine, StoreEngine
from olivine.hw.resources import synthesize


class CoreBuffers(wiring.Component):
    """The core's buffer banks (hw.core.OlivineCore.buffer_geometry) with their ports on the top,
    so synthesis keeps every bank; ports ``<bank>_w_addr`` ... as hw.buffers.BufferBank."""

    def __init__(self, geometry: dict):
        self.banks = {}
        members = {}
        for name, (nbytes, word, banks, primitive) in geometry.items():
            for b in range(banks):
                bank = BufferBank(nbytes // banks, 8 * word, primitive)
                self.banks[f"{name}{b}"] = bank
                for port, member in bank.signature.members.items():
                    members[f"{name}{b}_{port}"] = member
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for key, bank in self.banks.items():
            m.submodules[key] = bank
            for port, member in bank.signature.members.items():
                outer, inner = getattr(self, f"{key}_{port}"), getattr(bank, port)
                m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        return m


class CoreBuffer(wiring.Component):
    """One buffer exactly as OlivineCore builds it (hw.core._Buffer: its banks of lib.memory with the
    primitive's ram_style, the word as wide as the widest unit port, e.g. the engine's 16 bytes per
    chain), each bank's ports on the top as ``b<bank>_w_addr`` ... (hw.buffers.BufferBank's names)."""

    def __init__(self, name: str, geometry: tuple[int, int, int, str]):
        self.name = name
        self.nbytes, self.word, self.nbanks, self.primitive = geometry
        depth = self.nbytes // (self.word * self.nbanks)
        ab = max(1, (depth - 1).bit_length())
        members = {}
        for b in range(self.nbanks):
            members.update({f"b{b}_w_addr": In(ab), f"b{b}_w_data": In(8 * self.word), f"b{b}_w_en": In(self.word),
                            f"b{b}_r_addr": In(ab), f"b{b}_r_en": In(1), f"b{b}_r_data": Out(8 * self.word)})
        super().__init__(members)

    def elaborate(self, platform):
        from olivine.hw.core import _Buffer

        m = Module()
        buf = _Buffer(m, self.name, self.nbytes, self.word, self.nbanks, self.primitive)
        for b in range(self.nbanks):
            wr, rd = buf.wr[b], buf.rd[b]
            m.d.comb += [wr.addr.eq(getattr(self, f"b{b}_w_addr")), wr.data.eq(getattr(self, f"b{b}_w_data")),
                         wr.en.eq(getattr(self, f"b{b}_w_en")), rd.addr.eq(getattr(self, f"b{b}_r_addr")),
                         rd.en.eq(getattr(self, f"b{b}_r_en")), getattr(self, f"b{b}_r_data").eq(rd.data)]
        return m


def parts(config, *, buffer_slice: int = 0, buffer_primitive: str = "") -> dict:
    """name -> factory of the component: the core's parts, built with the parameters the core gives
    them (``<buffer>_buffer``: one buffer as the core builds it, e.g. the engine's wide weight word;
    ``buffer_slice``: only that many bytes of its word, same depth and banks (Yosys cannot read the
    U280's 2 KiB-wide weight word); ``buffer_primitive``: "uram" / "bram" instead of the plan's)."""
    core = core_for(config, primitive=True)
    bb = core.beat_bytes
    largest = max(core.buffer_bytes.values())
    engine_bytes = -(-largest // bb) * bb
    geometry = core.buffer_geometry()
    out = {
        "controller": lambda: Controller(data_width=core.data_width, addr_width=64, id_width=1,
                                         offset_bits=DEFAULT_OFFSET_BITS, max_outstanding=core.max_outstanding,
                                         queue_depth=core.queue_depth, token_bits=core.token_bits,
                                         max_burst=FETCH_BURST),
        "ld": lambda: LoadEngine(data_width=core.data_width, max_outstanding=core.max_outstanding,
                                 buffer_bytes=engine_bytes),
        "st": lambda: StoreEngine(data_width=core.data_width, max_outstanding=core.max_outstanding,
                                  buffer_bytes=engine_bytes),
        "ld_guard": lambda: TransferGuard("ld", sizes=core._target_sizes(), channels=core.channels,
                                          channel_bytes=core.channel_bytes),
        "st_guard": lambda: TransferGuard("st", sizes=core._target_sizes(), channels=core.channels,
                                          channel_bytes=core.channel_bytes),
        "buffers": lambda: CoreBuffers(geometry),
        "sfu": lambda: core.sfu,
    }
    def one_buffer(name):
        nbytes, word, banks, primitive = geometry[name]
        if buffer_slice:
            nbytes, word = nbytes // word * buffer_slice, buffer_slice
        return CoreBuffer(name, (nbytes, word, banks, buffer_primitive or primitive))

    for name in geometry:
        out[f"{name}_buffer"] = lambda name=name: one_buffer(name)
    if core.mpe is not None:
        out["mpe"] = lambda: core.mpe
    out["core"] = lambda: core
    return out


KINDS = ("lut", "ff", "dsp", "bram36", "bram18", "uram", "carry", "lutram", "srl", "muxf")


def _row(name: str, report, board) -> dict:
    d = report.to_dict()
    row = {"part": name, **{k: d[k] for k in KINDS}, "seconds": d["seconds"], "cached": d["cached"]}
    slrs = board.slrs or 1
    for k, total in (("lut", board.luts), ("dsp", board.dsp48e2), ("bram36", board.bram36), ("uram", board.uram)):
        if total:
            row[f"{k}_board_pct"] = round(100 * row[k] / total, 2)
            row[f"{k}_slr_pct"] = round(100 * row[k] * slrs / total, 2)
    return row


_FF_COUNT_SCRIPT = """\
read_verilog -sv {source}
hierarchy -top {top}
proc
flatten
synth -top {top} -run :fine
tee -q -o {stat} stat -json -width
"""


def declared_state(rtlil_text: str) -> dict:
    """Flip-flop bits (``$dff`` cells' WIDTH) and memory bits (``memory`` WIDTH x SIZE) of an RTLIL
    text from Amaranth (one module per instance, so the sums are the design's)."""
    ffs = sum(int(w) for w in re.findall(r"cell \$a?dff \S+\n\s+parameter \\WIDTH (\d+)", rtlil_text))
    mems = re.findall(r"^\s*memory width (\d+) size (\d+)", rtlil_text, re.M)
    return {"ff_bits": ffs, "memories": len(mems), "memory_bits": sum(int(w) * int(n) for w, n in mems)}


def engine_flip_flops(text: str, top: str, timeout: float) -> dict:
    """Flip-flop bits and memory bits of the Verilog ``text`` after Yosys's coarse synthesis."""
    import tempfile
    from pathlib import Path

    from olivine.hw.resources import _run_yosys

    with tempfile.TemporaryDirectory(prefix="olivine-ffs-") as tmp:
        work = Path(tmp)
        (work / f"{top}.v").write_text(text)
        t0 = time.monotonic()
        _run_yosys(_FF_COUNT_SCRIPT.format(source=f"{top}.v", top=top, stat="stat.json"), work, timeout)
        seconds = time.monotonic() - t0
        stat = json.loads((work / "stat.json").read_text())
        # the flattened top's cells; `stat -width` names them "$dff_<width>"
        module = stat.get("design") or next(iter(stat["modules"].values()))
        cells = module.get("num_cells_by_type", {})
    ffs = 0
    for name, count in cells.items():
        hit = re.fullmatch(r"\$[a-z]*dff[a-z]*_(\d+)", name)
        if hit:
            ffs += int(hit.group(1)) * count
    mems = [int(x) for x in re.findall(r"\$mem_v2_(\d+)", " ".join(cells))]
    return {"ff_bits": ffs, "cells": {k: v for k, v in cells.items() if "mem" in k or "dff" in k},
            "memories": sum(cells.get(f"$mem_v2_{w}", 0) for w in set(mems)), "yosys_seconds": round(seconds, 1),
            "memory_bits": module.get("num_memory_bits")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("convert", "resources", "engine"))
    ap.add_argument("--chains", type=int, default=8, help="engine: chains_per_core")
    ap.add_argument("--ffs", action="store_true", help="engine: count the declared flip-flops and memory bits")
    ap.add_argument("--yosys", action="store_true", help="engine: count flip-flops after a quick Yosys pass")
    ap.add_argument("--lint", action="store_true", help="engine: verilator --lint-only -Wall")
    ap.add_argument("--out", default="", help="engine: write the Verilog here")
    ap.add_argument("--config", default="small")
    ap.add_argument("--board", default="u280")
    ap.add_argument("--no-mpe", action="store_true")
    ap.add_argument("--parts", default="", help="comma list (default: every part, then the whole core)")
    ap.add_argument("--timeout", type=float, default=6 * 3600)
    ap.add_argument("--slice", type=int, default=0, help="<buffer>_buffer parts: this many bytes of the word")
    ap.add_argument("--primitive", default="", choices=("", "uram", "bram"), help="<buffer>_buffer parts")
    ap.add_argument("--hierarchical", action="store_true",
                    help="resources: synth_xilinx without -flatten (per module; prints each module's counts)")
    ap.add_argument("--report", default="", help="resources --hierarchical: write the last report's JSON here")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.board)
    if args.what == "convert":
        wall, cpu = time.monotonic(), time.process_time()
        core = core_for(cfg, mpe=False if args.no_mpe else None)
        text = verilog(core, "olivine_core")
        print(json.dumps({"config": args.config, "digest": cfg.digest(), "matrix_engine": core.mpe is not None,
                          "engine_problem": core.mpe_problem, "wall_seconds": round(time.monotonic() - wall, 1),
                          "cpu_seconds": round(time.process_time() - cpu, 1),
                          "verilog_mb": round(len(text.encode()) / 1e6, 2), "lines": text.count("\n")}), flush=True)
        return 0
    if args.what == "engine":
        from amaranth.back import rtlil
        from amaranth.back import verilog as amaranth_verilog

        from olivine.hw.export import drop_zero_memory_init
        from olivine.hw.mpe import LINT_WAIVERS, MatrixEngine

        cfg = cfg.replace(chains_per_core=args.chains)
        # hw.export.verilog's two steps, timed together; the RTLIL also gives the declared state
        wall, cpu = time.monotonic(), time.process_time()
        rtlil_text = rtlil.convert(MatrixEngine(cfg), name="olivine_mpe", emit_src=False)
        text = amaranth_verilog._convert_rtlil_text(drop_zero_memory_init(rtlil_text))
        row = {"config": args.config, "chains": args.chains, "wall_seconds": round(time.monotonic() - wall, 1),
               "cpu_seconds": round(time.process_time() - cpu, 1), "verilog_mb": round(len(text.encode()) / 1e6, 2),
               "lines": text.count("\n")}
        if args.ffs:
            row.update(declared_state(rtlil_text))
        del rtlil_text
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text)
        if args.yosys:
            print(json.dumps({"chains": args.chains, **engine_flip_flops(text, "olivine_mpe", args.timeout)}),
                  flush=True)
        if args.lint:
            from olivine.hw.export import lint

            t0 = time.monotonic()
            lint(text, "olivine_mpe", waivers=LINT_WAIVERS)
            print(json.dumps({"chains": args.chains, "lint": "clean", "lint_seconds": round(time.monotonic() - t0, 1)}),
                  flush=True)
        return 0
    board = get_board(args.board)
    todo = parts(cfg, buffer_slice=args.slice, buffer_primitive=args.primitive)
    names = [p for p in args.parts.split(",") if p] or [p for p in todo if not p.endswith("_buffer")]
    for name in names:
        t0 = time.monotonic()
        tag = f"_s{args.slice}{args.primitive}" if args.slice or args.primitive else ""
        report = synthesize(todo[name](), f"olivine_{name}_{args.config}{tag}", timeout=args.timeout,
                            flatten=not args.hierarchical)
        row = _row(name, report, board)
        row["wall_seconds"] = round(time.monotonic() - t0, 1)
        if args.hierarchical:
            row["hierarchical"] = True
            if board.luts:  # UltraScale+ CLBs hold two flip-flops per LUT (U280: 2,607K FF)
                row["ff_board_pct"] = round(100 * row["ff"] / (2 * board.luts), 2)
                row["ff_slr_pct"] = round(100 * row["ff"] * (board.slrs or 1) / (2 * board.luts), 2)
            print_modules(report)
            if args.report:
                write_report(args.report, report)
        print(json.dumps(row), flush=True)
    return 0


def print_modules(report) -> None:
    """One JSON line per module of a hierarchical report, largest subtree (by LUT) first."""
    for module, data in sorted(report.modules.items(), key=lambda kv: -kv[1]["total"]["lut"]):
        print(json.dumps({"module": module, "instances": data["instances"], "total": data["total"],
                          "own": data["own"]}), flush=True)


def write_report(path: str, report) -> None:
    """The report's JSON, written atomically."""
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(report.to_json())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
