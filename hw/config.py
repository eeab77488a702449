"""The one hardware configuration shared by ``hw/``, ``compiler/`` and ``sim/``.

An :class:`AcceleratorConfig` fixes everything the generators, the compiler and the simulators
must agree on: how many cores, how many sparse DSP chains of which length, the OVP array size,
the on-chip buffers, the HBM channels and the clock. It validates itself against a board from
``olivine.boards`` and rejects impossible combinations with the reason. Its :meth:`digest` keys
compiled artifacts to the hardware they were compiled for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from olivine.boards import Board, get_board

#: Bytes of user data in one UltraRAM (4096 x 72 bits) and one BRAM36 (512 x 72 bits).
URAM_BYTES = 4096 * 72 // 8
BRAM36_BYTES = 512 * 72 // 8

WEIGHT_FORMATS = ("int8", "int4", "ovp4")
ACT_FORMATS = ("int8", "ovp4")
SPARSE_N = (2, 4, 8, 16)  # N of N:16; 16 is dense
SPARSE_M = 16
#: Chain lengths the sparse DSP chain generator builds (its N-segments must tile the chain).
CHAIN_LENGTHS = (2, 4, 8, 16, 32, 48, 64)
#: AXI4 data widths of the HBM masters (bits); the LD/ST engines move one beat per cycle.
AXI_DATA_WIDTHS = (64, 128, 256, 512, 1024)


class ConfigError(ValueError):
    """A hardware configuration that cannot be built; the message says why and what to change."""


@dataclass(frozen=True)
class BufferConfig:
    """On-chip buffers of one core, in KiB, and the memory primitive each maps to."""

    weight_kib: int = 1024  # double-buffered weight tiles streamed from HBM (URAM)
    activation_kib: int = 1536  # activations kept on chip through a whole decode step (URAM)
    global_kib: int = 512  # KV tiles, softmax rows, residual (URAM)
    meta_kib: int = 128  # 4-bit sparse indices and per-block N (BRAM)
    bias_kib: int = 64  # INT32 bias and requantization multipliers (BRAM)

    def uram(self) -> int:
        return sum(-(-kib * 1024 // URAM_BYTES) for kib in (self.weight_kib, self.activation_kib, self.global_kib))

    def bram36(self) -> int:
        return sum(-(-kib * 1024 // BRAM36_BYTES) for kib in (self.meta_kib, self.bias_kib))


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one olivine accelerator instance.

    ``chains_per_core`` sparse DSP chains of ``chain_length`` DSP48E2 each form a core's matrix
    engine; each DSP performs two INT8 multiply-accumulates per cycle (WP486 packing).
    ``ovp_rows`` x ``ovp_cols`` is the OVP (W4A4) systolic array of each core; 0 disables it.
    The field defaults are the U280's default configuration (``for_board("u280")``, whose shape
    :data:`DEFAULT_SHAPES` explains).
    """

    board: str = "u280"
    cores: int = 3
    chains_per_core: int = 16
    chain_length: int = 16
    ovp_rows: int = 16
    ovp_cols: int = 16
    buffers: BufferConfig = field(default_factory=BufferConfig)
    hbm_channels: int = 32
    clock_mhz: float = 225.0
    weight_formats: tuple[str, ...] = WEIGHT_FORMATS
    act_formats: tuple[str, ...] = ACT_FORMATS
    sparse_n: tuple[int, ...] = SPARSE_N
    #: DSP48E2 per core for the special function unit (the SFU's budget, hw/sfu.py). Every DSP of the SFU
    #: is its shared multiplier bank (hw/sfu_mul.py): one signed 44 x 35 product per lane and cycle,
    #: 4 DSP48E2 each, so the SFU has ``sfu_lanes`` = the largest power of two <= ``sfu_dsp // 4``
    #: lanes and takes exactly ``4 * sfu_lanes <= sfu_dsp`` DSP48E2 (Yosys synth_xilinx on the whole
    #: SFU, docs/benchmarks.md; a budget between powers of two leaves the rest unused). At least 4.
    #: The default, 32 (8 lanes), is the U280's (:data:`DEFAULT_SHAPES`); ``small`` has 64 (16 lanes).
    sfu_dsp: int = 32
    #: AXI4 data width of the HBM masters (and the LD/ST beat) in bits; 512 matches the U280's HBM
    #: controllers, a smaller width makes RTL simulation of a small configuration faster.
    axi_data_width: int = 512

    def __post_init__(self):
        self.validate()

    # ---- derived figures -------------------------------------------------------------------
    @property
    def board_facts(self) -> Board:
        return get_board(self.board)

    @property
    def dsp_count(self) -> int:
        return self.cores * (self.chains_per_core * self.chain_length + self.sfu_dsp)

    @property
    def macs_per_cycle(self) -> int:
        """INT8 MACs per cycle of all sparse DSP chains (two per DSP)."""
        return 2 * self.cores * self.chains_per_core * self.chain_length

    @property
    def peak_tops(self) -> float:
        """Dense INT8 tera-operations per second (one MAC = two operations)."""
        return 2 * self.macs_per_cycle * self.clock_mhz * 1e6 / 1e12

    @property
    def hbm_gbps(self) -> float:
        return self.board_facts.memory.channel_gbps * self.hbm_channels

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        problems: list[str] = []
        try:
            board = get_board(self.board)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.cores < 1:
            problems.append(f"cores={self.cores}: need at least one core")
        if self.chains_per_core < 1:
            problems.append(f"chains_per_core={self.chains_per_core}: need at least one chain")
        if self.chain_length not in CHAIN_LENGTHS:
            problems.append(f"chain_length={self.chain_length}: the sparse DSP chain is built in lengths "
                            f"{', '.join(map(str, CHAIN_LENGTHS))} (DSP pairs whose N-segments tile the chain)")
        if (self.ovp_rows == 0) != (self.ovp_cols == 0) or self.ovp_rows < 0 or self.ovp_cols < 0:
            problems.append(f"OVP array {self.ovp_rows}x{self.ovp_cols}: both sizes positive, or both 0 to disable it")
        if "ovp4" in self.act_formats and self.ovp_rows == 0:
            problems.append("ovp4 activations need the OVP array (ovp_rows/ovp_cols > 0)")
        for fmt in self.weight_formats:
            if fmt not in WEIGHT_FORMATS:
                problems.append(f"weight format {fmt!r} unknown (supported: {', '.join(WEIGHT_FORMATS)})")
        for fmt in self.act_formats:
            if fmt not in ACT_FORMATS:
                problems.append(f"activation format {fmt!r} unknown (supported: {', '.join(ACT_FORMATS)})")
        for n in self.sparse_n:
            if n not in SPARSE_N:
                problems.append(f"sparse N={n} unsupported (N:16 with N in {SPARSE_N})")
        if 16 not in self.sparse_n:
            problems.append("sparse_n must include 16 (dense)")
        if not 1 <= self.hbm_channels <= board.memory.channels:
            problems.append(f"hbm_channels={self.hbm_channels}: {board.name} has {board.memory.channels} memory channels")
        if self.axi_data_width not in AXI_DATA_WIDTHS:
            problems.append(f"axi_data_width={self.axi_data_width}: AXI4 data widths are "
                            f"{', '.join(map(str, AXI_DATA_WIDTHS))} bits (512 matches the HBM controllers)")
        if self.sfu_dsp < 4:
            problems.append(f"sfu_dsp={self.sfu_dsp}: the SFU's multiplier bank takes 4 DSP48E2 per lane, "
                            "so it needs at least 4 (one lane)")
        if not 50 <= self.clock_mhz <= 500:
            problems.append(f"clock_mhz={self.clock_mhz}: outside 50-500 MHz")
        if board.slrs is not None and self.cores > board.slrs:
            problems.append(f"cores={self.cores}: {board.name} has {board.slrs} SLRs (one core per SLR)")
        if board.dsp48e2 is not None and self.dsp_count > board.dsp48e2:
            problems.append(
                f"{self.dsp_count} DSP48E2 needed ({self.cores} cores x ({self.chains_per_core} chains x "
                f"{self.chain_length} + {self.sfu_dsp} SFU)) but {board.name} has {board.dsp48e2}: "
                "use fewer or shorter chains")
        if board.uram is not None and self.cores * self.buffers.uram() > board.uram:
            problems.append(f"{self.cores * self.buffers.uram()} URAM needed for the buffers but {board.name} has "
                            f"{board.uram}: shrink weight/activation/global buffers")
        if board.bram36 is not None and self.cores * self.buffers.bram36() > board.bram36:
            problems.append(f"{self.cores * self.buffers.bram36()} BRAM36 needed but {board.name} has {board.bram36}")
        if problems:
            raise ConfigError(f"hardware configuration for {self.board} is not buildable:\n  - " + "\n  - ".join(problems))

    # ---- identity ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "configuration") -> "AcceleratorConfig":
        """A configuration from plain data (JSON): every field checked for name and type first.

        ``buffers`` is a nested object of :class:`BufferConfig` fields; lists become tuples. ``where``
        names the source (a file) in error messages.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object of AcceleratorConfig fields, got {type(data).__name__}")
        data = dict(data)
        _check_fields(cls, data, where)
        if "buffers" in data:
            buffers = data["buffers"]
            if isinstance(buffers, BufferConfig):
                pass
            elif isinstance(buffers, dict):
                _check_fields(BufferConfig, buffers, f"{where}: buffers")
                data["buffers"] = BufferConfig(**buffers)
            else:
                raise ConfigError(f"{where}: buffers must be an object of {_field_names(BufferConfig)}, "
                                  f"got {type(buffers).__name__}")
        for key in ("weight_formats", "act_formats", "sparse_n"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def digest(self) -> str:
        """A stable hash of every field: artifacts record it to detect a hardware mismatch."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes) -> "AcceleratorConfig":
        return dataclasses.replace(self, **changes)


#: The default configuration's shape per board: (cores, chains_per_core, sfu_dsp). Each is the
#: configuration with the most DSP48E2 among up to 3 cores (one per SLR), a power of two of chains of
#: 16 and 4, 8 or 16 SFU lanes (4 DSP48E2 each) that passes both fit checks OlivineCore applies: the
#: buffers' and the engine's block / Ultra RAM (hw.buffers.check_fit) and the logic, estimated from
#: Yosys measurements, within 70 % of the kernel's LUTs and of one SLR's share per core
#: (hw/fit.py check_logic; found by hw.fit.largest_fitting, which tests/test_hw_fit.py keeps this
#: table equal to). Why so few chains: by the measurements a chain of 16 DSP48E2 costs ~5.1k LUT of
#: fabric beside its DSPs plus its share of the C log C weight-word data path, and the SFU ~8.2k per
#: lane, so one SLR's 70 % holds about 16 chains and 8 lanes with the U280's 32 AXI channels per
#: core (docs/benchmarks.md "Fit: LUT budget and the U280 default (fit-model8)"); the old default of
#: 3 x 128 chains (6,336 DSP48E2) is estimated at several times the board's LUTs and is refused.
#: Boards not listed keep the AcceleratorConfig field defaults.
DEFAULT_SHAPES: dict[str, tuple[int, int, int]] = {
    "u280": (3, 16, 32),
    "u55c": (3, 16, 32),
    "u50": (2, 16, 32),
    "u250": (3, 16, 32),
}


def for_board(name: str, **overrides) -> AcceleratorConfig:
    """The default configuration for a board, sized to fit it (overrides are validated): the
    cores, chains of 16 per core and SFU DSPs of :data:`DEFAULT_SHAPES` (the largest power-of-two
    configuration whose memories and estimated logic fit the board), every HBM channel."""
    board = get_board(name)
    defaults: dict = {"board": board.name}
    if board.name in DEFAULT_SHAPES:
        cores, chains, sfu_dsp = DEFAULT_SHAPES[board.name]
        defaults.update(cores=cores, chains_per_core=chains, sfu_dsp=sfu_dsp)
    elif board.slrs is not None:
        defaults["cores"] = min(3, board.slrs)
    if board.memory.channels:
        defaults["hbm_channels"] = board.memory.channels
    defaults.update(overrides)
    return AcceleratorConfig(**defaults)


# ---- strict parsing of plain data ----------------------------------------------------------------

_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,)}


def _field_names(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _check_fields(cls, data: dict, where: str) -> None:
    """Unknown names and wrong types, all reported at once (bool is not an int here)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    unknown = sorted(set(data) - set(fields))
    if unknown:
        problems.append(f"unknown configuration fields {unknown}")
    for key, value in data.items():
        if key not in fields or key == "buffers":
            continue
        kind = str(fields[key].type)
        if kind.startswith("tuple["):
            item = kind[len("tuple["):].split(",")[0].strip()
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, _FIELD_TYPES[item]) and not isinstance(v, bool) for v in value)
            expect = f"a list of {item}"
        else:
            ok = isinstance(value, _FIELD_TYPES[kind]) and not isinstance(value, bool)
            expect = {"int": "an integer", "float": "a number", "str": "a string"}[kind]
        if not ok:
            problems.append(f"{key} must be {expect}, got {value!r}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems) + f" (fields: {_field_names(cls)})")


# ---- named configurations ------------------------------------------------------------------------

def small(board: str = "u280") -> AcceleratorConfig:
    """A small core for RTL simulation: 1 core, 8 chains of 16 DSPs, 16 SFU lanes (64 DSPs), buffers sized for glassllm.

    The data space (activation 180 KiB + global 72 KiB, 5 + 2 UltraRAMs) holds glassllm's prefill in
    chunks of 32 tokens at its full context of 128; the 72 KiB weight buffer holds two 16-row tiles of
    its widest row. Four HBM channels spread glassllm's tiles while keeping a testbench's memory models few.
    """
    return AcceleratorConfig(board=get_board(board).name, cores=1, chains_per_core=8, chain_length=16, sfu_dsp=64,
                             buffers=BufferConfig(weight_kib=72, activation_kib=180, global_kib=72, meta_kib=16,
                                                  bias_kib=8),
                             hbm_channels=4)


def tiny(board: str = "u280") -> AcceleratorConfig:
    """The smallest core that runs glassllm end to end in RTL simulation (``olivine run --backend rtl``).

    :func:`small`'s buffers (glassllm's prefill in chunks of 32 tokens at its full context of 128)
    with the datapath cut down so the Verilog converts and Verilator builds in minutes: 2 chains of
    16, 4 SFU lanes (16 DSP48E2), 128-bit AXI, 2 HBM channels. The compiled programs depend on the
    buffers and channels only, so they run on this core as on any core with the same buffers.
    """
    return small(board).replace(chains_per_core=2, sfu_dsp=16, axi_data_width=128, hbm_channels=2)


#: Named configurations: name -> (builder taking the board name, one-line description).
CONFIGS = {
    "default": (for_board, "sized to the board: the largest power-of-two shape whose logic (estimated from "
                "Yosys measurements, hw/fit.py) and memories fit (U280: 3 cores x 16 chains of 16, 4 SFU lanes), "
                "all HBM channels, 1 MiB weight + 1.5 MiB activation + 512 KiB global buffer per core"),
    "small": (small, "1 core, 8 chains of 16, buffers sized for glassllm, 4 HBM channels (for RTL simulation)"),
    "tiny": (tiny, "small's buffers, 2 chains of 16, 4 SFU lanes, 128-bit AXI, 2 HBM channels (fast RTL "
             "simulation: olivine run --backend rtl)"),
}


def load_config(name_or_path: str | None, board: str | None = None) -> AcceleratorConfig:
    """A named configuration (:data:`CONFIGS`) or a JSON file of :class:`AcceleratorConfig` fields.

    ``board`` is the target board (default: the file's ``board`` field, else u280); a file naming a
    different board than ``board`` is refused. Missing fields of a file take the board's defaults
    (:func:`for_board`); a ``buffers`` object may give only some buffers.
    """
    import os

    if name_or_path is None or name_or_path == "":
        name_or_path = "default"
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path][0](get_board(board or "u280").name)
    if not (name_or_path.endswith(".json") or os.sep in name_or_path or os.path.exists(name_or_path)):
        raise ConfigError(f"--config {name_or_path!r} is neither a named configuration "
                          f"({', '.join(CONFIGS)}) nor a .json file of AcceleratorConfig fields")
    if not os.path.isfile(name_or_path):
        raise ConfigError(f"configuration file {name_or_path} does not exist (or is not a regular file); "
                          f"give a .json file or one of {', '.join(CONFIGS)}")
    try:
        with open(name_or_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"configuration file {name_or_path} is not readable JSON: {exc}") from None
    where = f"configuration file {name_or_path}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of AcceleratorConfig fields, got {type(data).__name__}")
    _check_fields(AcceleratorConfig, data, where)
    file_board = data.get("board")
    if board is not None and file_board is not None and get_board(board).name != get_board(file_board).name:
        raise ConfigError(f"{where} is for board {file_board!r} but --board is {board!r}; drop one of them")
    name = get_board(file_board or board or "u280").name
    base = for_board(name).to_dict()
    buffers = data.get("buffers", {})
    if isinstance(buffers, dict):
        _check_fields(BufferConfig, buffers, f"{where}: buffers")
        data = {**data, "buffers": {**base["buffers"], **buffers}}
    try:
        return AcceleratorConfig.from_dict({**base, **data, "board": name}, where)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
