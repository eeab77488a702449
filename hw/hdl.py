"""``olivine hdl``: the whole core's Verilog for a configuration, with a manifest, written atomically.

:func:`core_for` is the one place the whole core is put together (this command, the RTL backend of
sim/ and the resource reports call it): hw.core.OlivineCore with the matrix engine
(hw.mpe.MatrixEngine) and, for a compiled model, the SFU's RoPE cos/sin ROM
(hw.sfu_rope.RopeRom.from_model_config, sized to the positions the model's programs reach).

The output directory (olivine/outputs.py, kind ``hdl``) holds:

* ``olivine_core.v``: the core (top ``olivine_core``, clock ``clk``, synchronous active-high
  ``rst``; docs/hw.md "The core's top");
* ``manifest.json``: the configuration (its fields and digest), what was built (matrix engine,
  RoPE ROM, SFU ops), the top's name, its ports (Verilog name, direction, width), the register map
  of hw/core_regs.py, the bytes per HBM channel the LD/ST range checks use, the Verilator flags for
  building it, the conversion time, the Verilog's size and its SHA-256.

``--artifact DIR`` takes the accelerator configuration and the model (for the RoPE ROM) from a
compiled artifact (``olivine compile``). Its manifest.json is read as plain JSON here (hw/ does
not import compiler/): the configuration must parse and match its recorded digest, and the model
config must name rope_theta, head_dim and max_seq_len.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from olivine.boards import get_board
from olivine.outputs import check_output_directory, output_directory

from . import core_regs
from .config import AcceleratorConfig, ConfigError, load_config

__all__ = ["OUTPUT_KIND", "TOP", "ArtifactConfigError", "core_for", "engine_problem", "read_artifact_facts",
           "write_hdl", "hdl_main"]

OUTPUT_KIND = "hdl"
TOP = "olivine_core"
#: Upper bound on an artifact's manifest.json read here (compiler/artifact.py's own bound).
MAX_MANIFEST_BYTES = 256 << 20


class ArtifactConfigError(ValueError):
    """An artifact directory whose manifest does not give a usable configuration and model."""


def engine_problem(config: AcceleratorConfig) -> str | None:
    """Why hw.mpe.MatrixEngine cannot be built for ``config`` (None: it can)."""
    from .mpe import MpeGeometry   # the engine's checks, without building an elaboratable

    try:
        MpeGeometry(config)
    except ValueError as exc:
        return str(exc)
    return None


def core_for(config: AcceleratorConfig, model_config=None, positions: int | None = None, *,
             mpe: bool | None = None, primitive: bool = False, **kw):
    """The whole core (hw.core.OlivineCore) for ``config``.

    ``model_config``: the compiled model's config (artifact ``meta["model"]["config"]`` or a
    LlamaConfig): the SFU gets the RoPE ROM of ``RopeRom.from_model_config(model_config,
    positions)`` (``positions``: the longest context the programs run; default the model's
    max_seq_len). Without it the SFU has no rope op (``SfuError.NOT_BUILT``).
    ``mpe``: True builds hw.mpe.MatrixEngine(config) and raises its reason when it cannot be
    built; None (default) builds it when it can and otherwise leaves the slot empty (MM / MV fault
    with MPE_NOT_BUILT; ``core.mpe_problem`` says why); False leaves it empty.
    ``primitive``: the engine's chains as DSP48E2 primitives (synthesis; simulation needs False).
    ``kw``: OlivineCore's keyword parameters (sfu_ops, hbm_channel_bytes, data_banks, ...).
    """
    from .core import OlivineCore
    from .mpe import MatrixEngine
    from .sfu_rope import RopeRom

    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
    if mpe is False:
        problem = "not requested"
    else:
        problem = engine_problem(config)
        if problem is not None and mpe is True:
            raise ConfigError(f"the matrix engine cannot be built for this configuration: {problem}")
    rope = None
    if model_config is not None:
        rope = RopeRom.from_model_config(model_config, positions)
    elif positions is not None:
        raise ValueError("positions= sizes the RoPE ROM of a model: give model_config= too")
    core = OlivineCore(config, MatrixEngine(config, primitive=primitive) if problem is None else None, rope=rope, **kw)
    core.mpe_problem = problem
    return core


def _positions_of(meta: dict) -> int:
    """The longest context the artifact's programs run: its largest prefill or decode bucket."""
    buckets = [int(p["bucket"]) for p in meta["programs"].values()
               if isinstance(p, dict) and isinstance(p.get("bucket"), int) and not isinstance(p["bucket"], bool)]
    if not buckets:
        raise ArtifactConfigError("its meta.programs records no program buckets (the context to size the RoPE ROM)")
    return max(buckets)


def read_artifact_facts(directory: str | os.PathLike) -> tuple[AcceleratorConfig, dict, int]:
    """(accelerator config, model config, positions) of a compiled artifact directory.

    Reads ``manifest.json`` as JSON (hw/ does not import compiler/); refuses, naming the problem,
    a missing or oversized manifest, bad JSON, a configuration that does not parse or does not
    match its ``config_digest``, and a model config without the RoPE fields."""
    where = Path(directory)
    path = where / "manifest.json"

    def bad(problem: str) -> ArtifactConfigError:
        return ArtifactConfigError(f"--artifact {directory}: {problem}; give a directory written by "
                                   f"`olivine compile` (or use --config)")

    if not where.is_dir():
        raise bad("is not a directory")
    if not path.is_file():
        raise bad("has no manifest.json")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise bad(f"manifest.json is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"manifest.json is not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise bad("manifest.json has no configuration object ('config')")
    meta = manifest.get("meta")
    model = meta.get("model") if isinstance(meta, dict) else None
    model_config = model.get("config") if isinstance(model, dict) else None
    if not isinstance(model_config, dict):
        raise bad("manifest.json has no model config (meta.model.config)")
    if not isinstance(meta.get("programs"), dict):
        raise bad("manifest.json has no meta.programs")
    try:
        config = AcceleratorConfig.from_dict(manifest["config"], f"{path} config")
    except ConfigError as exc:
        raise bad(f"its configuration is invalid: {exc}") from None
    if manifest.get("config_digest") != config.digest():
        raise bad(f"its config_digest {manifest.get('config_digest')!r} is not the digest of its configuration "
                  f"({config.digest()}): the manifest was edited or damaged")
    missing = [k for k in ("rope_theta", "head_dim", "max_seq_len") if k not in model_config]
    if missing:
        raise bad(f"its model config lacks {', '.join(missing)}")
    try:
        positions = _positions_of(meta)
    except ArtifactConfigError as exc:
        raise bad(str(exc)) from None
    return config, model_config, min(positions, int(model_config["max_seq_len"]))


def write_hdl(config: AcceleratorConfig, out: str | Path, *, lint: bool = False, model_config=None,
              positions: int | None = None, source: str | None = None) -> dict:
    """Write the whole core's Verilog and manifest for ``config`` into ``out``; returns the manifest.

    ``model_config`` / ``positions``: as :func:`core_for` (the RoPE ROM); ``source``: where the
    configuration came from (recorded)."""
    from .core import LINT_WAIVERS, VERILATOR_BUILD_ARGS, core_ports
    from .export import lint as run_lint
    from .export import verilog

    check_output_directory(out, OUTPUT_KIND)  # refuse a bad path before the conversion (minutes at U280 size)
    t0 = time.monotonic()
    core = core_for(config, model_config, positions)
    if core.mpe is not None and config.chains_per_core > 16:
        # the engine's conversion grows about linearly with its chains (docs/benchmarks.md, "The chains'
        # chunks in skewed RAM banks"): say so before a conversion that runs for a long time
        print(f"converting the core with its {config.chains_per_core}-chain matrix engine: the conversion grows "
              f"with the chains (the engine alone: about 2 min of CPU at 32 chains, minutes more at 128)",
              file=sys.stderr, flush=True)
    text = verilog(core, TOP)
    seconds = time.monotonic() - t0
    if lint:
        run_lint(text, TOP, waivers=LINT_WAIVERS)
    rope = core.sfu.rope
    manifest = {
        "top": TOP, "clock": "clk", "reset": "rst (synchronous, active high)",
        "config": config.to_dict(), "config_digest": config.digest(), "config_source": source,
        "matrix_engine": {"built": core.mpe is not None, "problem": core.mpe_problem},
        "sfu_ops": list(core.sfu.ops),
        "rope_rom": None if rope is None else {"theta": rope.theta, "head_dim": rope.head_dim,
                                               "positions": rope.positions,
                                               "scaling": None if rope.scaling is None else list(rope.scaling)},
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
        "verilog_bytes": len(text.encode()),
        "conversion_seconds": round(seconds, 1), "linted": lint,
    }
    with output_directory(out, OUTPUT_KIND) as tmp:
        (tmp / f"{TOP}.v").write_text(text)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def hdl_main(*, board: str | None, config: str | None, out: str, lint: bool = False,
             artifact: str | None = None) -> int:
    if artifact is not None:
        if config is not None:
            raise ConfigError("give --artifact or --config, not both: the artifact names its own configuration")
        cfg, model_config, positions = read_artifact_facts(artifact)
        if board is not None and cfg.board != get_board(board).name:
            raise ConfigError(f"--artifact {artifact} was compiled for board {cfg.board!r}, not --board {board!r}; "
                              f"drop --board or recompile")
        manifest = write_hdl(cfg, out, lint=lint, model_config=model_config, positions=positions,
                             source=f"artifact {artifact}")
    else:
        cfg = load_config(config, board)
        manifest = write_hdl(cfg, out, lint=lint, source=config or "default")
    engine = manifest["matrix_engine"]
    built = "matrix engine" if engine["built"] else f"NO matrix engine ({engine['problem']})"
    rope = manifest["rope_rom"]
    rom = f"RoPE ROM {rope['positions']} positions" if rope else "no RoPE ROM"
    print(f"wrote {out}/{TOP}.v ({manifest['verilog_bytes'] / 1e6:.1f} MB, {len(manifest['ports'])} ports, config "
          f"{manifest['config_digest']}, {built}, {rom}, {manifest['conversion_seconds']} s)"
          f"{' lint-clean' if lint else ''}")
    return 0
