"""The core's top module at N HBM channels (docs/benchmarks.md "Fit: LUT budget and the U280 default (fit-model8)"):
small() with hbm_channels=N, the engine left out, the SFU with one op (its own module, not counted
in the top's own cells), hierarchical synth_xilinx (hw.resources.synthesize flatten=False)."""
import json, sys, time
from olivine.hw.config import small
from olivine.hw.hdl import core_for
from olivine.hw.resources import synthesize

n = int(sys.argv[1])
cfg = small().replace(hbm_channels=n)
t0 = time.monotonic()
core = core_for(cfg, sfu_ops=("add",), mpe=False, primitive=True)
rep = synthesize(core, f"olivine_core_top_ch{n}", flatten=False, timeout=4 * 3600)
top = [m for m in rep.modules if rep.modules[m]["instances"] == 1 and m.startswith("olivine_core")]
print(json.dumps({"channels": n, "wall": round(time.monotonic() - t0, 1), "lut": rep.lut, "ff": rep.ff,
                  "srl": rep.srl, "lutram": rep.lutram, "cells": rep.cells_by_type}), flush=True)
for m, d in sorted(rep.modules.items(), key=lambda kv: -kv[1]["total"]["lut"]):
    print(json.dumps({"module": m, "instances": d["instances"], "own": d["own"], "total": d["total"]}), flush=True)
