"""Fit the matrix engine's Yosys cells against the chain count and extrapolate (docs/benchmarks.md,
"Matrix engine: fit at 128 chains").

    python benchmarks/engine_fit.py LOG [LOG ...] [--to 128]
    python benchmarks/engine_fit.py datapath --chains 128 --variant funnel|rotator|read|carry
    python benchmarks/engine_fit.py engine --chains 4

Each LOG holds the JSON line of ``engine_fit.py engine --chains C`` (the line with "total"). For every resource the figures at the measured chain counts are
fitted exactly (least squares when there are more points than terms) by a + b C + c C log2 C (the
engine's word-wide rotators and funnels: 16C bytes, log2(16C) stages) and, for comparison, by
a + b C + c C**2; then both are evaluated at ``--to`` chains. Prints one JSON line per resource and
the per-module table of the largest chain count when the logs have one.

``datapath`` synthesises (hw.resources.synthesize, flattened, cached) the engine's weight-word data
path alone at any chain count, built from the same functions hw/mpe.py uses, so the widest logic is
measured at 128 chains without the whole engine: ``funnel`` = the previous one (hw/mpe._funnel,
2W -> W bytes at the row offset, then hw.bitops.rotate_left by the chain, 16-byte units; the
previous engine had two such funnels, linear and sparse); ``rotator`` = the current one
(hw/mpe._chunk_in_bank_order: one W-byte rotator, the thermometer mask, a byte select);
``read`` = the issuer's unit rotator of the C banks' outputs (unchanged; hw/mpe.py ``chain_units``);
``carry`` = the carry memory (``wcarry``: C words, a write port and a read port transparent to it)
as a ``--slice``-byte column of its 16C-byte word with ``--ram-style`` (Yosys maps a wide memory
by independent columns, so the full word is 16C / slice times the column).
Inputs and outputs are ports, so nothing is trimmed away.

``engine`` synthesises the whole hw.mpe.MatrixEngine of the U280 default with ``--chains`` chains and
DSP48E2 primitives, flattened (hw.resources.synthesize, as ``olivine resources``), and prints the
cells. (A hierarchical run, synth_xilinx without -flatten on the same Verilog, stopped in YoWASP
0.70 with ``Assert count_id(wire->name) == 0`` in ABC_OPS_REINTEGRATE on the chains' decode module
after 30 min at 2 chains, hence the data path measured alone above.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

KINDS = ("lut", "ff", "carry", "lutram", "srl", "muxf", "dsp", "bram36", "bram18", "uram")


def load(paths):
    runs = {}
    for path in paths:
        for line in open(path):
            line = line.strip()
            if line.startswith("{") and '"total"' in line:
                row = json.loads(line)
                runs[row["chains"]] = row
    return dict(sorted(runs.items()))


def fit(cs, ys, basis):
    a = np.array([[f(c) for f in basis] for c in cs], dtype=float)
    coef, *_ = np.linalg.lstsq(a, np.array(ys, dtype=float), rcond=None)
    return coef


CLOGC = (lambda c: 1.0, lambda c: c, lambda c: c * math.log2(c))
QUAD = (lambda c: 1.0, lambda c: c, lambda c: c * c)


def datapath(chains: int, variant: str, slice_bytes: int = 64, ram_style: str = "distributed"):
    """(component, top) of one weight-word data path of the engine at ``chains`` chains."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from amaranth.lib.memory import Memory

    from olivine.hw.bitops import rotate_left
    from olivine.hw.mpe import _chunk_in_bank_order, _funnel

    W = 16 * chains
    cl = max(1, (chains - 1).bit_length())

    class DataPath(wiring.Component):
        def __init__(self):
            super().__init__({"word": In(8 * W), "lo": In(8 * W), "chain": In(cl), "off": In(max(1, (W - 1).bit_length())),
                              "units": Out(8 * W), "rot": Out(8 * W)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.fm = fm = Module()
            if variant == "carry":
                m.submodules.mem = mem = Memory(shape=8 * slice_bytes, depth=chains, init=[],
                                                attrs={"ram_style": ram_style})
                wr = mem.write_port()
                rd = mem.read_port(transparent_for=(wr,))
                m.d.comb += [wr.addr.eq(self.chain), wr.data.eq(self.word), wr.en.eq(self.off[0]),
                             rd.addr.eq(self.lo), self.units.eq(rd.data), self.rot.eq(0)]
            elif variant == "funnel":
                chunk = _funnel(fm, self.lo, self.word, self.off, W, "w_funnel")
                units = rotate_left(fm, chunk, self.chain, step=128, name="bw_rot_units")
                m.d.comb += [self.units.eq(units), self.rot.eq(0)]
            elif variant == "rotator":
                rot, chunk = _chunk_in_bank_order(fm, self.word, self.lo, self.chain, self.off, W)
                m.d.comb += [self.units.eq(chunk), self.rot.eq(rot)]
            else:
                units = rotate_left(fm, self.word, self.chain, step=128, name="chain_units")
                m.d.comb += [self.units.eq(units), self.rot.eq(0)]
            return m

    tag = f"_s{slice_bytes}{ram_style}" if variant == "carry" else ""
    return DataPath(), f"mpe_datapath_{variant}_c{chains}{tag}"


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "engine":
        import time

        from olivine.hw.config import load_config
        from olivine.hw.mpe import MatrixEngine
        from olivine.hw.resources import synthesize

        ep = argparse.ArgumentParser(description="the matrix engine with DSP48E2 primitives, synthesised")
        ep.add_argument("--chains", type=int, default=4)
        ep.add_argument("--timeout", type=float, default=6 * 3600)
        opts = ep.parse_args(argv[1:])
        t0 = time.monotonic()
        config = load_config("default", "u280").replace(chains_per_core=opts.chains)
        report = synthesize(MatrixEngine(config, primitive=True), f"olivine_mpe_u280_c{opts.chains}",
                            timeout=opts.timeout).to_dict()
        print(json.dumps({"chains": opts.chains, "wall_seconds": round(time.monotonic() - t0, 1),
                          "total": {k: report[k] for k in KINDS}, "modules": {},
                          "yosys_seconds": report["seconds"], "cached": report["cached"],
                          "other": report["other_cells"]}))
        return 0
    if argv and argv[0] == "datapath":
        import time

        from olivine.hw.resources import synthesize

        dp = argparse.ArgumentParser(description="one weight-word data path of the engine, synthesised")
        dp.add_argument("--chains", type=int, default=8)
        dp.add_argument("--variant", choices=("funnel", "rotator", "read", "carry"), default="rotator")
        dp.add_argument("--slice", type=int, default=64, help="carry: bytes of the word's column")
        dp.add_argument("--ram-style", default="distributed", choices=("distributed", "block", "ultra"))
        dp.add_argument("--timeout", type=float, default=4 * 3600)
        opts = dp.parse_args(argv[1:])
        t0 = time.monotonic()
        component, top = datapath(opts.chains, opts.variant, opts.slice, opts.ram_style)
        report = synthesize(component, top, timeout=opts.timeout).to_dict()
        print(json.dumps({"chains": opts.chains, "variant": opts.variant,
                          **({"slice": opts.slice, "ram_style": opts.ram_style} if opts.variant == "carry" else {}), "wall_seconds": round(time.monotonic() - t0, 1),
                          **{k: report[k] for k in KINDS}, "yosys_seconds": report["seconds"], "cached": report["cached"]}))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--to", type=int, default=128)
    args = ap.parse_args(argv)
    runs = load(args.logs)
    if len(runs) < 2:
        print(f"need at least two chain counts, got {sorted(runs)}", file=sys.stderr)
        return 2
    cs = list(runs)
    for kind in KINDS:
        ys = [runs[c]["total"].get(kind, 0) for c in cs]
        if not any(ys):
            continue
        row = {"resource": kind, "measured": dict(zip(cs, ys))}
        for name, basis in (("c_log_c", CLOGC), ("quadratic", QUAD)):
            terms = basis[:len(cs)]
            coef = fit(cs, ys, terms)
            row[name] = {"coef": [round(float(x), 2) for x in coef],
                         f"at_{args.to}": round(float(sum(k * f(args.to) for k, f in zip(coef, terms))))}
        print(json.dumps(row))
    top = runs[cs[-1]]
    print(f"modules at {cs[-1]} chains (cells of one instance):")
    for name, cells in sorted(top["modules"].items(), key=lambda kv: -kv[1].get("lut", 0)):
        if cells.get("lut", 0) >= 50 or cells.get("ff", 0) >= 200:
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in cells.items() if k != "other"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
