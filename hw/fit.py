"""Logic of one core (LUT, FF, SRL, LUTRAM), estimated from Yosys measurements, and the logic fit check.

hw.buffers.check_fit counts block and Ultra RAM; this module counts the fabric. Every figure comes
from ONE table, :data:`MEASURED`: per part of the core, the Yosys ``synth_xilinx -family xcup``
counts at two (or more) configurations, each with the run it comes from (docs/benchmarks.md).
A part's estimate is a straight line in one unit of the configuration (the engine's chains, the
SFU's lanes, the AXI beat's bytes, ...), least squares through its points (one point: proportional
to the unit; a part without a unit: the mean), plus, for the matrix engine, two structural terms
that are not linear in the chains and are therefore counted from the design, not fitted:

* the weight-word data path, ``LUT = k x mux bits`` with ``k`` fitted (through zero) to the
  data-path runs of :data:`MEASURED` ``datapath``: on the engine's weight word of W = 16C bytes,
  the write side's byte rotator is ``8W log2 W`` mux bits plus its ``W log2 W``-bit mask rotator and
  its ``8W``-bit byte select, the read side's unit rotator ``8W log2 C`` (hw/mpe.py
  ``_chunk_in_bank_order``; docs/benchmarks.md "Matrix engine: fit at 128 chains");
* the chunk banks and carry memory when they are LUTRAM (``MatrixEngine.memory_styles``:
  ``wbank`` C banks of 2C x 128 bits with byte enables up to 32 chains, ``wcarry`` C x 128C bits up
  to 64): RAM32M16 (32 x 14 bits, one write enable) or RAM64M8 (64 x 7 bits) cells, a byte-enabled
  byte taking one or two cells, as Yosys maps them (measured: 148 RAM64M8 per 64-byte column of the
  128-deep carry, the same doc).

The engine's points are fitted net of both terms, so what is fitted is the per-chain logic.

The budget: a LUT site holds a LUT, an SRL, or an eighth of a RAM32M16 / RAM64M8 (a SLICEM's eight
LUTs), so a part's ``sites`` are ``lut + srl + 8 x lutram``. :func:`check_logic` refuses a
configuration whose sites on ``config.cores`` cores exceed :data:`LUT_CAP` of the LUTs left to the
kernel (``Board.user_luts``, the region under the Vitis shell, else all of them), or whose one core
exceeds the cap of one SLR's share (one core per SLR), naming every part's share. Flip-flops are
checked the same way against the FFs (two per LUT site on UltraScale+).

Why 70 %: the engine is a dense DSP design with wide buses (the 16C-byte weight word fans out to
every chain), which needs routing headroom; AMD's UltraFast methodology (UG949, "SLR Utilization
Considerations") warns that a resource at 70 % overall already causes timing-closure trouble once
one SLR goes past 85 %. With one core per SLR a core is an SLR's whole load, so 70 % of an SLR
leaves ~15 points for the model's error (below) before that mark. It is also the share of the DSPs
the project's sizing already aims at (hw.config.DSP_BUDGET, FlightLLM's 70 %).

Error on the points measured (docs/benchmarks.md "Fit: LUT budget and the U280 default"): the
engine's per-chain line and the other parts pass through their own points by construction (two
points each); the data-path factor is within 5 % of four data-path runs and 40 % above the fifth,
the 16-chain read rotator (ABC packs two of its stages into one LUT6); the whole tiny and small cores (hierarchical runs, an
upper bound: no optimisation across modules) are 6 % above the model, which is the hierarchical
engine's excess over the flattened one the model is built on (27,899 vs 23,014 LUT at 2 chains).
The extrapolation to 32-128 chains rests on the engine's two points (2, 4 chains) and is the
model's weakest part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import AcceleratorConfig, ConfigError

__all__ = ["KINDS", "LUT_CAP", "MEASURED", "Point", "Part", "PartEstimate", "estimate", "check_logic",
           "datapath_mux_bits", "engine_lutram_cells", "lut_sites", "fit_table", "available_luts"]

#: Resources estimated per part: LUT (logic LUTs), FF, SRL (SRL16E / SRLC32E), LUTRAM (cells).
KINDS = ("lut", "ff", "srl", "lutram")
#: Share of the kernel's LUT sites (and flip-flops) a configuration may fill (module docstring).
LUT_CAP = 0.70
#: LUT sites of one LUTRAM cell (RAM32M16 and RAM64M8 fill a SLICEM's eight LUTs).
LUTRAM_SITES = 8


@dataclass(frozen=True)
class Point:
    """One Yosys measurement of a part at ``x`` of its unit; None: not recorded."""

    x: float
    lut: int | None
    ff: int | None
    srl: int | None
    lutram: int | None
    source: str


@dataclass(frozen=True)
class Part:
    """A part of the core: its label, the unit its resources grow with, its measured points."""

    label: str
    unit: str
    points: tuple[Point, ...]


_EF7 = "docs/benchmarks.md 'Matrix engine: fit at 128 chains (engine-fit7 branch)'"
_FIT8 = "docs/benchmarks.md 'Fit: LUT budget and the U280 default (fit-model8)'"
_HIER = "docs/benchmarks.md 'Whole core, hierarchical (core-yosys7)'"
_TINY = (f"{_HIER}: tiny core, `nice -n 5 .venv/bin/python benchmarks/bench_core.py resources --config tiny "
         "--parts core --hierarchical --report core_tiny.json`")
_SMALL = (f"{_HIER}: small core, `nice -n 19 .venv/bin/python benchmarks/bench_core.py resources --config small "
          "--parts core --hierarchical --report core_small.json`")

#: THE table: every coefficient of the model is fitted from these points. To update the model from
#: a new measurement, add (or replace) a Point here with its figures and its command; nothing else
#: holds a coefficient. Units: engine chains_per_core; datapath mux bits (datapath_mux_bits);
#: sfu SFU lanes (hw.sfu.sfu_lanes); ld / st / controller the AXI beat in bytes; top HBM channels x
#: beat bytes; guards none (a constant).
MEASURED: dict[str, Part] = {
    "engine": Part("matrix engine (chains, OVP array, requantizer)", "chains", (
        Point(2, 23_014, 7_999, 1_239, 184, f"{_EF7}: the whole engine of for_board('u280') with 2 chains, DSP48E2 "
              "primitives, flattened: `nice -n 5 .venv/bin/python benchmarks/engine_fit.py engine --chains 2`"),
        Point(4, 35_706, 11_720, 2_347, 261, f"{_EF7}: the same with 4 chains: `... engine_fit.py engine --chains 4`"),
        Point(8, 63_531, 19_317, 4_563, 418, f"{_FIT8}: the same with 8 chains: `... engine_fit.py engine --chains 8`"),
    )),
    "datapath": Part("engine weight-word data path (in the engine's figure)", "mux bits", (
        Point(1_696, 1_451, None, None, None,
              f"{_EF7}: byte rotator, 2 chains: `nice -n 5 .venv/bin/python benchmarks/engine_fit.py datapath "
              "--chains 2 --variant rotator`"),
        Point(9_088, 7_826, None, None, None, f"{_EF7}: byte rotator, 8 chains (`... --chains 8 --variant rotator`)"),
        Point(20_480, 17_718, None, None, None, f"{_EF7}: byte rotator, 16 chains (`... --chains 16 --variant rotator`)"),
        Point(3_072, 2_560, None, None, None, f"{_EF7}: read unit rotator, 8 chains (`... --chains 8 --variant read`)"),
        Point(8_192, 4_880, None, None, None, f"{_EF7}: read unit rotator, 16 chains (`... --chains 16 --variant read`)"),
    )),
    "sfu": Part("SFU (every op)", "SFU lanes", (
        Point(4, 40_048, 12_023, 588, 20, f"{_TINY} (SRL: the core's 2,018 less the engine chains' 2 x 715, by "
              "difference)"),
        Point(16, 138_735, 39_051, 1_824, 80, _SMALL),
    )),
    "ld": Part("LD engine", "AXI beat bytes", (
        Point(16, 1_608, 940, 0, 14, _TINY),
        Point(64, 4_434, 1_802, 0, 14, _SMALL),
    )),
    "st": Part("ST engine", "AXI beat bytes", (
        Point(16, 1_779, 751, 0, 10, _TINY),
        Point(64, 6_949, 1_515, 0, 37, _SMALL),
    )),
    "controller": Part("controller (+ fetch buffer)", "AXI beat bytes", (
        Point(16, 2_917, 1_278, 0, 61, _TINY),
        Point(64, 3_117, 1_676, 0, 98, _SMALL),
    )),
    "guards": Part("LD / ST transfer guards", "", (
        Point(1, 576 + 210, 473 + 250, 0, 0, f"{_TINY}; the same at small"),
    )),
    "top": Part("top (buffers' ports, arbitration, AXI channels)", "HBM channels x beat bytes", (
        Point(2 * 16, 4_966, 2_276, 0, 0, f"{_TINY} (the top module's own cells)"),
        Point(4 * 64, 12_634, 5_082, 0, 0, f"{_SMALL} (the core less its parts, by difference)"),
        Point(4 * 64, 11_129, 3_600, 0, 0, f"{_FIT8}: the top's own cells at 4 channels, no engine (its ~1.5k LUT "
              "of engine ports missing): `nice -n 5 .venv/bin/python benchmarks/fit_top_channels.py 4`"),
        Point(32 * 64, 33_284, 5_283, 0, 0, f"{_FIT8}: the same at 32 channels: `... fit_top_channels.py 32`"),
    )),
}


def _units(name: str, config: AcceleratorConfig) -> float:
    """The unit of part ``name`` at ``config``."""
    beat = config.axi_data_width // 8
    if name == "engine":
        return config.chains_per_core
    if name == "datapath":
        return datapath_mux_bits(config.chains_per_core)
    if name == "sfu":
        from .sfu import sfu_lanes

        return sfu_lanes(config)
    if name in ("ld", "st", "controller"):
        return beat
    if name == "top":
        return config.hbm_channels * beat
    return 1


def datapath_mux_bits(chains: int) -> int:
    """2:1-mux bits of the engine's weight-word data path at ``chains`` chains (W = 16C bytes):
    the byte rotator ``8W log2 W``, its mask rotator ``W log2 W`` and byte select ``8W``, and the
    read unit rotator ``8W log2 C`` (module docstring)."""
    W = 16 * chains
    lw, lc = math.ceil(math.log2(W)), math.ceil(math.log2(chains)) if chains > 1 else 0
    return 8 * W * lw + W * lw + 8 * W + 8 * W * lc


def _lutram_cells(depth: int, width_bits: int, byte_enables: bool) -> tuple[int, int]:
    """(LUTRAM cells, read-mux LUTs) of one memory as Yosys maps it to RAM32M16 / RAM64M8."""
    per_cell, rows = (14, 32) if depth <= 32 else (7, 64)
    if byte_enables:
        columns = (width_bits // 8) * math.ceil(8 / per_cell)
    else:
        columns = math.ceil(width_bits / per_cell)
    segments = math.ceil(depth / rows)
    return segments * columns, (segments - 1) * width_bits


def _memory_styles(chains: int) -> dict[str, str]:
    """hw.mpe.MatrixEngine.memory_styles at ``chains`` (it reads only the chain count), without
    building an engine (whose buffers a configuration under estimate may not suit)."""
    from types import SimpleNamespace

    from .mpe import MatrixEngine

    return MatrixEngine.memory_styles(SimpleNamespace(chains=chains))


def engine_lutram_cells(chains: int) -> tuple[int, int]:
    """(LUTRAM cells, read-mux LUTs) of the engine's chunk banks and carry memory where they are
    LUTRAM (``MatrixEngine.memory_styles``; the shapes of hw/mpe.py's ``memory_primitives``)."""
    C = chains
    styles = _memory_styles(C)
    cells = luts = 0
    for name, (depth, width, copies, be) in {"wbank": (2 * C, 128, C, True), "wcarry": (C, 128 * C, 1, False)}.items():
        if styles.get(name) == "distributed":
            c, m = _lutram_cells(depth, width, be)
            cells, luts = cells + copies * c, luts + copies * m
    return cells, luts


def _line(pairs: list[tuple[float, float]], through_zero: bool = False) -> tuple[float, float]:
    """(base, slope) of the least-squares line through ``pairs``; one point: through zero."""
    if not pairs:
        return 0.0, 0.0
    if through_zero or len(pairs) == 1 or len({x for x, _ in pairs}) == 1:
        sxx = sum(x * x for x, _ in pairs)
        return 0.0, sum(x * y for x, y in pairs) / sxx
    n = len(pairs)
    mx, my = sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n
    slope = sum((x - mx) * (y - my) for x, y in pairs) / sum((x - mx) ** 2 for x, _ in pairs)
    return my - slope * mx, slope


def _engine_structure(chains: int) -> dict[str, float]:
    """The engine's structural terms at ``chains`` (the data path's LUTs, the LUTRAM memories)."""
    cells, mux = engine_lutram_cells(chains)
    return {"lut": datapath_lut_per_bit() * datapath_mux_bits(chains) + mux, "lutram": cells}


def datapath_lut_per_bit() -> float:
    """LUTs per mux bit of the weight-word data path, fitted through zero to MEASURED['datapath']."""
    return _line([(p.x, p.lut) for p in MEASURED["datapath"].points], through_zero=True)[1]


def _coefficients() -> dict[str, dict[str, tuple[float, float]]]:
    """part -> kind -> (base, slope) fitted from MEASURED (the engine's net of its structure)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, part in MEASURED.items():
        if name == "datapath":
            continue
        out[name] = {}
        for kind in KINDS:
            pairs = []
            for p in part.points:
                y = getattr(p, kind)
                if y is None:
                    continue
                if name == "engine":
                    y -= _engine_structure(int(p.x)).get(kind, 0)
                pairs.append((p.x, y))
            if not part.unit and pairs:
                out[name][kind] = (sum(y for _, y in pairs) / len(pairs), 0.0)
            else:
                out[name][kind] = _line(pairs)
    return out


@dataclass(frozen=True)
class PartEstimate:
    """One part of one core: its estimated cells."""

    name: str
    label: str
    lut: int
    ff: int
    srl: int
    lutram: int

    @property
    def sites(self) -> int:
        """LUT sites: logic LUTs + SRLs + 8 per LUTRAM cell."""
        return lut_sites(self.lut, self.srl, self.lutram)


def lut_sites(lut: int, srl: int, lutram: int) -> int:
    return lut + srl + LUTRAM_SITES * lutram


def estimate(config: AcceleratorConfig, *, engine: bool = True) -> list[PartEstimate]:
    """The estimated logic of ONE core of ``config``, per part (``engine=False``: a core built
    without the matrix engine)."""
    coef = _coefficients()
    out = []
    for name, kinds in coef.items():
        if name == "engine" and not engine:
            continue
        x = _units(name, config)
        values = {k: b + s * x for k, (b, s) in kinds.items()}
        if name == "engine":
            for k, v in _engine_structure(config.chains_per_core).items():
                values[k] += v
        out.append(PartEstimate(name, MEASURED[name].label, *(max(0, round(values[k])) for k in KINDS)))
    return out


def available_luts(board) -> int | None:
    """LUTs left to the kernel: the board's user region under the shell where known, else all."""
    return getattr(board, "user_luts", None) or board.luts


def check_logic(config: AcceleratorConfig, *, engine: bool = True, cap: float = LUT_CAP) -> list[PartEstimate]:
    """The estimate (returned) against the board: ConfigError when the LUT sites (or FFs) of
    ``config.cores`` cores exceed ``cap`` of the kernel's LUTs, or one core exceeds ``cap`` of one
    SLR's share, naming each part's share and what to change."""
    parts = estimate(config, engine=engine)
    board = config.board_facts
    have = available_luts(board)
    if have is None:
        return parts
    per_core = sum(p.sites for p in parts)
    ff_core = sum(p.ff for p in parts)
    slrs = board.slrs or 1
    problems = []
    if config.cores * per_core > cap * have:
        problems.append(f"{config.cores} cores x {per_core:,} = {config.cores * per_core:,} LUTs, over "
                        f"{cap:.0%} of the {have:,} LUTs {board.name} leaves to the kernel ({cap * have:,.0f})")
    if slrs > 1 and per_core > cap * have / slrs:
        problems.append(f"one core's {per_core:,} LUTs are over {cap:.0%} of one SLR's {have // slrs:,} "
                        f"({cap * have / slrs:,.0f}; one core per SLR)")
    if config.cores * ff_core > cap * 2 * have:
        problems.append(f"{config.cores * ff_core:,} flip-flops, over {cap:.0%} of {2 * have:,}")
    if problems:
        shares = ", ".join(f"{p.label} {p.sites:,} ({100 * p.sites / per_core:.0f} %)" for p in parts)
        raise ConfigError(
            f"the logic does not fit the board (estimated from Yosys measurements, hw/fit.py): "
            + "; ".join(problems) + f". Per core: {shares}. Use fewer chains (chains_per_core="
            f"{config.chains_per_core}), fewer SFU lanes (sfu_dsp={config.sfu_dsp}) or fewer cores "
            f"(cores={config.cores}); `olivine fit --board {board.name}` prints the estimate")
    return parts


def fit_table(config: AcceleratorConfig, *, engine: bool = True) -> dict:
    """The estimate and both checks as plain data (``olivine fit``): per part and per core, the
    board's totals and caps, the memory totals and whether each check passes."""
    from .buffers import bank_plan, check_fit

    parts = estimate(config, engine=engine)
    board = config.board_facts
    have = available_luts(board)
    rows = [{"part": p.name, "label": p.label, "lut": p.lut, "ff": p.ff, "srl": p.srl, "lutram": p.lutram,
             "sites": p.sites} for p in parts]
    core = {k: sum(r[k] for r in rows) for k in ("lut", "ff", "srl", "lutram", "sites")}
    out = {"config": config.to_dict(), "digest": config.digest(), "cores": config.cores, "parts": rows,
           "core": core, "total": {k: config.cores * v for k, v in core.items()},
           "board_luts": board.luts, "kernel_luts": have, "cap": LUT_CAP, "dsp": config.dsp_count}
    try:
        check_logic(config, engine=engine)
        out["logic"] = "fits"
    except ConfigError as exc:
        out["logic"] = str(exc)
    try:
        words = memory_words(config)
        mem = check_fit(bank_plan(config.buffers, 2, words), board, config.cores,
                        engine_memories(config) if engine else None)
        out["memory"], out["memory_totals"] = "fits", mem
    except (ConfigError, ValueError) as exc:
        out["memory"] = str(exc)
    return out


def memory_words(config: AcceleratorConfig) -> dict[str, int]:
    """The word of each buffer as OlivineCore builds it with the matrix engine: the widest port on
    it (AXI beat; the SFU's 4 x lanes bytes; the engine's 16 C-byte weight port and 16-byte others);
    tests/test_hw_fit.py checks it against OlivineCore.buffer_geometry."""
    from .mpe import ACT_BYTES, MpeGeometry
    from .sfu import sfu_lanes

    beat = config.axi_data_width // 8
    g = MpeGeometry(config)
    return {"weight": max(beat, g.wword_bytes), "meta": max(beat, ACT_BYTES), "bias": max(beat, ACT_BYTES),
            "data": max(beat, 4 * sfu_lanes(config), ACT_BYTES)}


def engine_memories(config: AcceleratorConfig) -> dict[str, tuple[str, int]]:
    """The matrix engine's block / Ultra RAMs (hw.mpe.MatrixEngine.memory_primitives)."""
    from .mpe import MatrixEngine

    return MatrixEngine(config).memory_primitives()


#: SFU lanes the default search considers: from the smallest SFU measured (4 lanes, tiny's) to the
#: SFU budget of the old default (64 DSP48E2, 16 lanes); below 4 the table has no measurement.
SEARCH_LANES = (4, 8, 16)


def fits(config: AcceleratorConfig) -> bool:
    """Whether ``config`` (with the matrix engine) passes both checks: the logic (check_logic) and
    the memories (hw.buffers.check_fit of the bank plan OlivineCore builds, with the engine's)."""
    from .buffers import bank_plan, check_fit

    try:
        check_logic(config)
        check_fit(bank_plan(config.buffers, 2, memory_words(config)), config.board_facts, config.cores,
                  engine_memories(config))
    except ValueError:   # ConfigError, or buffers the engine's words do not tile
        return False
    return True


def largest_fitting(board: str, *, max_cores: int = 3, lanes: tuple[int, ...] = SEARCH_LANES,
                    **fixed) -> tuple[int, int, int] | None:
    """(cores, chains_per_core, sfu_dsp) of the configuration with the most DSP48E2 (ties: more of
    them in the chains, then fewer cores) among up to ``max_cores`` cores (one per SLR), a power of
    two of chains of 16 and ``lanes`` SFU lanes (4 DSP48E2 each) that passes :func:`fits`, with
    every other field as for_board gives it (``fixed``: overrides); None when nothing fits. This is
    how hw.config.DEFAULT_SHAPES was chosen (tests/test_hw_fit.py keeps them equal)."""
    from olivine.boards import get_board

    from .config import for_board

    facts = get_board(board)
    best, best_key = None, None
    for cores in range(1, min(max_cores, facts.slrs or 1) + 1):
        for lane in lanes:
            chains = 1
            while True:
                try:
                    cfg = for_board(board, cores=cores, chains_per_core=chains, sfu_dsp=4 * lane, **fixed)
                except ConfigError:   # e.g. more DSP48E2 than the board has: more chains will not do
                    break
                if not fits(cfg):
                    break            # the estimate grows with the chains: the next will not fit either
                key = (cfg.dsp_count, cores * chains, -cores)
                if best_key is None or key > best_key:
                    best, best_key = (cores, chains, 4 * lane), key
                chains *= 2
    return best


def format_fit(table: dict) -> str:
    """``olivine fit``'s text: one row per part of one core, the core and the board's totals, both checks."""
    cfg = table["config"]
    lines = [f"{cfg['board']}: {table['cores']} cores x {cfg['chains_per_core']} chains of {cfg['chain_length']}, "
             f"sfu_dsp {cfg['sfu_dsp']}, {cfg['axi_data_width']}-bit AXI, {cfg['hbm_channels']} HBM channels "
             f"({table['dsp']:,} DSP48E2); config digest {table['digest']}",
             "estimated per core (hw/fit.py, from Yosys synth_xilinx measurements; sites = LUT + SRL + 8 x LUTRAM):",
             f"  {'part':<50} {'LUT':>9} {'FF':>9} {'SRL':>7} {'LUTRAM':>7} {'sites':>9} {'share':>6}"]
    core = table["core"]
    for r in table["parts"]:
        lines.append(f"  {r['label']:<50} {r['lut']:>9,} {r['ff']:>9,} {r['srl']:>7,} {r['lutram']:>7,} "
                     f"{r['sites']:>9,} {100 * r['sites'] / core['sites']:>5.1f}%")
    lines.append(f"  {'one core':<50} {core['lut']:>9,} {core['ff']:>9,} {core['srl']:>7,} {core['lutram']:>7,} "
                 f"{core['sites']:>9,}")
    total, have = table["total"], table["kernel_luts"]
    if have:
        lines.append(f"  {str(table['cores']) + ' cores':<50} {total['lut']:>9,} "
                     f"{total['ff']:>9,} {total['srl']:>7,} {total['lutram']:>7,} {total['sites']:>9,}")
        lines.append(f"LUT sites: {total['sites']:,} = {100 * total['sites'] / have:.1f} % of the {have:,} LUTs left "
                     f"to the kernel (cap {table['cap']:.0%}: {table['cap'] * have:,.0f}); board {table['board_luts']:,}")
    lines.append(f"logic: {table['logic']}")
    mem = table.get("memory_totals")
    lines.append(f"memory: {table['memory']}" + (f" ({mem['bram']} RAMB36, {mem['uram']} URAM288)" if mem else ""))
    return "\n".join(lines)


def fit_main(board: str | None = None, config: str | None = None, as_json: bool = False) -> int:
    """``olivine fit``: print the estimate of a configuration (default: the board's); exit status 1
    when it does not fit."""
    import json

    from .config import load_config

    cfg = load_config(config, board)
    table = fit_table(cfg)
    print(json.dumps(table, indent=2) if as_json else format_fit(table))
    return 0 if table["logic"] == "fits" and table["memory"] == "fits" else 1
