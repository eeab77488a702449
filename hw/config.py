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
    """

    board: str = "u280"
    cores: int = 3
    chains_per_core: int = 128
    chain_length: int = 16
    ovp_rows: int = 16
    ovp_cols: int = 16
    buffers: BufferConfig = field(default_factory=BufferConfig)
    hbm_channels: int = 32
    clock_mhz: float = 225.0
    weight_formats: tuple[str, ...] = WEIGHT_FORMATS
    act_formats: tuple[str, ...] = ACT_FORMATS
    sparse_n: tuple[int, ...] = SPARSE_N
    sfu_dsp: int = 64  # DSP48E2 per core in the special function unit

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
    def from_dict(cls, data: dict) -> "AcceleratorConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration fields {unknown}; known: {sorted(known)}")
        if isinstance(data.get("buffers"), dict):
            data["buffers"] = BufferConfig(**data["buffers"])
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


def for_board(name: str, **overrides) -> AcceleratorConfig:
    """The default configuration for a board, sized to fit it (overrides are validated)."""
    board = get_board(name)
    defaults: dict = {"board": board.name}
    if board.slrs is not None:
        defaults["cores"] = min(3, board.slrs)
    if board.dsp48e2 is not None:
        # About 70% of the DSPs in chains, as FlightLLM does on the U280 (6,345 of 9,024).
        per_core = int(0.70 * board.dsp48e2 / defaults.get("cores", 1)) - 64
        defaults["chains_per_core"] = max(1, per_core // 16)
    if board.memory.channels:
        defaults["hbm_channels"] = board.memory.channels
    defaults.update(overrides)
    return AcceleratorConfig(**defaults)
