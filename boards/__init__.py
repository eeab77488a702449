"""Board facts for the Alveo-class cards olivine targets (a leaf: imports nothing of olivine).

Figures come from AMD data sheets (DS963 U280, DS965 U50, UG1120, UG1393) as collected in the
project's reference notes. ``None`` means "not verified": code that needs such a figure must say so
rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemorySpec:
    """Off-chip memory: ``channels`` independent channels of ``channel_bytes`` each."""

    kind: str
    channels: int
    channel_bytes: int
    total_gbps: float  # GB/s (1e9 bytes per second), peak

    @property
    def channel_gbps(self) -> float:
        return self.total_gbps / self.channels

    @property
    def total_bytes(self) -> int:
        return self.channels * self.channel_bytes


@dataclass(frozen=True)
class Board:
    name: str
    part: str | None
    family: str  # Yosys synth_xilinx family, or "" where Yosys has none
    luts: int | None
    dsp48e2: int | None
    bram36: int | None
    uram: int | None
    slrs: int | None
    memory: MemorySpec
    platform: str | None = None  # Vitis platform name for v++ linking
    default_clock_mhz: float = 225.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: LUTs left to the kernel under the board's Vitis shell (None: not verified; code then uses
    #: ``luts``): hw/fit.py's LUT budget is a share of these.
    user_luts: int | None = None

    def peak_decode_tokens_per_s(self, bytes_per_token: float) -> float:
        """Upper bound for batch-1 decode: memory bandwidth / bytes read per token."""
        if bytes_per_token <= 0:
            raise ValueError("bytes_per_token must be positive")
        return self.memory.total_gbps * 1e9 / bytes_per_token


MiB = 1 << 20

BOARDS: dict[str, Board] = {
    "u280": Board(
        "u280", "xcu280-fsvh2892-2L-e", "xcup", 1_304_000, 9_024, 2_016, 960, 3,
        MemorySpec("HBM2", 32, 256 * MiB, 460.0),
        platform="xilinx_u280_gen3x16_xdma_1_202211_1",
        notes=("also 32 GB DDR4 (38 GB/s)",
               "user region under the XDMA shell: 1,131K LUT, 8,304 DSP, 1,776 BRAM36, 960 URAM",
               "FlightLLM closed timing at 225 MHz"),
        user_luts=1_131_000,
    ),
    "u55c": Board(
        "u55c", "xcu55c-fsvh2892-2L-e", "xcup", 1_304_000, 9_024, 2_016, 960, 3,
        MemorySpec("HBM2", 32, 512 * MiB, 460.0),
        platform="xilinx_u55c_gen3x16_xdma_3_202210_1",
    ),
    "u50": Board(
        "u50", "xcu50-fsvh2104-2-e", "xcup", 872_000, 5_952, 1_344, 640, 2,
        MemorySpec("HBM2", 32, 256 * MiB, 316.0),
        platform="xilinx_u50_gen3x16_xdma_5_202210_1",
    ),
    "u250": Board(
        "u250", "xcu250-figd2104-2L-e", "xcup", 1_728_000, 12_288, 2_688, 1_280, 4,
        MemorySpec("DDR4", 4, 16 * 1024 * MiB, 77.0),
    ),
    "vhk158": Board(
        "vhk158", None, "", None, None, None, None, None,
        MemorySpec("HBM2e", 32, 1024 * MiB, 819.0),
        notes=("Versal HBM: DSP58 rather than DSP48E2; Yosys synth_xilinx has no Versal family",
               "logic and DSP counts not verified; channel split of the 32 GB not verified"),
    ),
}


def get_board(name: str) -> Board:
    """Look up a board by its exact (lower-case) name; the error lists the known boards.

    Names are matched exactly, like every name olivine defines (models, presets, corpora, units):
    one rule, and a spelling that differs only in case gets a "did you mean".
    """
    if name not in BOARDS:
        hint = f"did you mean {name.strip().lower()!r}? " if name.strip().lower() in BOARDS else ""
        raise ValueError(f"unknown board {name!r}; {hint}known boards (lower-case): {', '.join(sorted(BOARDS))}")
    return BOARDS[name]
