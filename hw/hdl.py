"""``olivine hdl``: the core's Verilog for a configuration, with a manifest, written atomically.

The output directory (olivine/outputs.py, kind ``hdl``) holds:

* ``olivine_core.v``: hw.core.OlivineCore for the configuration (top ``olivine_core``, clock
  ``clk``, synchronous active-high ``rst``; docs/hw.md "The core's top");
* ``manifest.json``: the configuration (its fields and digest), the top's name, its ports
  (Verilog name, direction, width), the register map of hw/core_regs.py, the bytes per HBM channel
  the LD/ST range checks use, the Verilator flags for building it, and the SHA-256 of the Verilog.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from olivine.outputs import check_output_directory, output_directory

from . import core_regs
from .config import AcceleratorConfig, load_config

__all__ = ["OUTPUT_KIND", "TOP", "write_hdl", "hdl_main"]

OUTPUT_KIND = "hdl"
TOP = "olivine_core"


def write_hdl(config: AcceleratorConfig, out: str | Path, *, lint: bool = False) -> dict:
    """Write the core's Verilog and manifest for ``config`` into ``out``; returns the manifest."""
    from .core import LINT_WAIVERS, VERILATOR_BUILD_ARGS, OlivineCore, core_ports
    from .export import lint as run_lint
    from .export import verilog

    check_output_directory(out, OUTPUT_KIND)  # refuse a bad path before the conversion (minutes at U280 size)
    t0 = time.monotonic()
    core = OlivineCore(config)
    text = verilog(core, TOP)
    seconds = time.monotonic() - t0
    if lint:
        run_lint(text, TOP, waivers=LINT_WAIVERS)
    manifest = {
        "top": TOP, "clock": "clk", "reset": "rst (synchronous, active high)",
        "config": config.to_dict(), "config_digest": config.digest(),
        "hbm_channel_bytes": core.channel_bytes, "axi_data_width": config.axi_data_width,
        "ports": core_ports(core),
        "registers": [{"name": r.name, "offset": r.offset, "access": r.access, "doc": r.doc}
                      for r in core_regs.REGISTERS],
        "unit_counters": {"base": core_regs.UNIT_BASE, "stride": core_regs.UNIT_STRIDE,
                          "counters": list(core_regs.UNIT_COUNTERS)},
        "hbm_counters": {"base": core_regs.HBM_BASE, "stride": core_regs.HBM_STRIDE,
                         "counters": list(core_regs.HBM_COUNTERS)},
        "verilator_build_args": list(VERILATOR_BUILD_ARGS),
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "conversion_seconds": round(seconds, 1), "linted": lint,
    }
    with output_directory(out, OUTPUT_KIND) as tmp:
        (tmp / f"{TOP}.v").write_text(text)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def hdl_main(*, board: str, config: str | None, out: str, lint: bool = False) -> int:
    cfg = load_config(config, board)
    manifest = write_hdl(cfg, out, lint=lint)
    print(f"wrote {out}/{TOP}.v ({len(manifest['ports'])} ports, config {manifest['config_digest']}, "
          f"{manifest['conversion_seconds']} s){' lint-clean' if lint else ''}")
    return 0
