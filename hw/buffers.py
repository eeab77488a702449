"""On-chip buffers of one core: the bank plan, the memory primitive of each bank, the fit check.

From ``BufferConfig`` (KiB per buffer, hw/config.py) and each buffer's word width (the widest unit
port on it: the AXI beat, the SFU's ``4 * lanes`` bytes, the matrix engine's ports, e.g. its weight
port of 16 bytes per chain):

* weight: ONE memory of ``weight_kib`` (double buffering is by address: LD fills one half while
  the matrix engine reads the other, one write and one read port per cycle, which one simple-dual-
  port memory serves; two half-depth memories would waste half of every primitive's depth);
* meta (sparse indices, block N) and bias (bias and requantization entries): one bank each;
* data space (activation buffer followed by the global buffer, one byte address space):
  ``data_banks`` banks interleaved by word (word w in bank w mod data_banks), so that the
  matrix engine and the SFU reading consecutive words hit different banks every cycle.

The primitive of a bank follows from its shape, :func:`choose_primitive` (depth x width):

* A URAM288 is 4,096 words x 72 bits (9 bytes, a write enable each) and has no other aspect
  ratio, so a memory shallower than 4,096 words leaves part of every URAM288 of it empty (the
  U280's weight buffer, 512 words of 2 KiB, would fill 1/8 of 228 URAM288).
* A RAMB36 is 512 x 72 at its widest (and 1K x 36, 2K x 18, 4K x 9), with a write enable per 9
  bits (a byte and its parity bit), so it holds 32 Kib of byte-enabled data and a depth of 512,
  1K, 2K or 4K words fills it (a depth in between does not: 576 words take the primitives of 1K).
* So: URAM when the bank is at least 4,096 words deep (then it fills whole URAM288, each holding
  the data of 9 RAMB36, and keeps the BRAM for the shallow buffers), else BRAM.

:func:`primitive_count` counts the primitives of a bank as Yosys synth_xilinx maps it (measured,
docs/benchmarks.md "Buffers at the U280 sizes"): BRAM the fewest RAMB36 of one aspect (512 x 64
... 4K x 8 data bits) tiling depth x width, which is ``ceil(depth x width / 32 Kib)`` only when the
depth is a power of two of at least 512 (at least one per 64-bit column); URAM 9-byte columns,
``ceil(depth / 4096)`` deep, with the bytes left over (width mod 72 bits) of all the depth segments packed into shared URAM288. :func:`check_fit`
refuses a configuration whose buffers, on all its cores, need more URAM or BRAM than the board has,
naming each buffer's share.

Each bank is a :class:`BufferBank` (or, inside the core, hw/core.py's ``_Buffer``): one write port
with byte enables and one synchronous read port, the primitive forced with Vivado's and Yosys's
``ram_style`` attribute ("ultra" for URAM, "block" for BRAM: without it Yosys maps even large
memories to BRAM, measured).

Ports of BufferBank: w_addr, w_data, w_en (one bit per byte) in; r_addr, r_en in; r_data out.
Latency: read data 1 cycle after r_en; a write is visible to a read of the next cycle.
Throughput: one read and one write per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .axi import check_data_width
from .config import BufferConfig, ConfigError
from .resources import register_unit

__all__ = ["BankSpec", "BufferBank", "bank_plan", "buffer_sizes", "plan_geometry", "choose_primitive", "primitive_count", "check_fit",
           "RAM_STYLES", "URAM_DEPTH", "URAM_COLUMN_BITS", "BRAM36_BITS"]

RAM_STYLES = {"uram": "ultra", "bram": "block"}

#: URAM288: 4,096 words of 72 bits, 9 byte lanes with a write enable each.
URAM_DEPTH = 4096
URAM_COLUMN_BITS = 72
#: RAMB36 data bits (32 Kib; the parity bits carry no data here: byte enables need 8 + 1 per byte).
BRAM36_BITS = 32 * 1024
#: The widest RAMB36 aspect (512 x 72, 64 data bits with byte enables).
BRAM36_MIN_DEPTH = 512
#: RAMB36 aspects with byte write enables (depth, data bits): 512 x 72, 1K x 36, 2K x 18, 4K x 9.
BRAM36_ASPECTS = ((512, 64), (1024, 32), (2048, 16), (4096, 8))


def choose_primitive(depth: int, width_bits: int) -> str:
    """"uram" when a bank of ``depth`` words is deep enough to fill URAM288 columns (at least
    URAM_DEPTH words), else "bram" (see the module docstring for the reasoning)."""
    if depth < 1 or width_bits < 1:
        raise ValueError(f"a bank of {depth} words x {width_bits} bits: both must be positive")
    return "uram" if depth >= URAM_DEPTH else "bram"


def primitive_count(depth: int, width_bits: int, primitive: str) -> int:
    """URAM288 or RAMB36 of one bank of ``depth`` words of ``width_bits`` (a whole number of bytes)
    with byte write enables, as Yosys synth_xilinx maps it (module docstring; measured):
    URAM ``(width // 72) x segments + ceil((width mod 72) x segments / 72)`` with ``segments =
    ceil(depth / 4096)`` (e.g. 16K x 512 bits: 7 x 4 + 1 = 29); BRAM ``ceil(width / 64)`` up to 512
    words, else the fewest over the aspects 512 x 64, 1K x 32, 2K x 16, 4K x 8 data bits of
    ``ceil(depth / aspect depth) x ceil(width / aspect width)`` (a depth between two aspects fills
    no primitive: 576 x 1024 bits takes 32, not 18, measured)."""
    if width_bits % 8:
        raise ValueError(f"a bank {width_bits} bits wide: byte write enables need whole bytes")
    if primitive == "uram":
        segments = -(-depth // URAM_DEPTH)
        full, rest = divmod(width_bits, URAM_COLUMN_BITS)
        return full * segments + -(-rest * segments // URAM_COLUMN_BITS)
    if primitive == "bram":
        return min(-(-depth // rows) * -(-width_bits // bits) for rows, bits in BRAM36_ASPECTS)
    raise ValueError(f"primitive {primitive!r}: choose one of {', '.join(RAM_STYLES)}")


@dataclass(frozen=True)
class BankSpec:
    """One memory of a buffer: ``bytes`` in words of ``word_bytes``, on ``primitive``."""

    name: str
    bytes: int
    word_bytes: int
    primitive: str  # "uram" or "bram"

    @property
    def depth(self) -> int:
        return self.bytes // self.word_bytes

    @property
    def buffer(self) -> str:
        """The buffer the bank belongs to ("data" for data0, data1, ...)."""
        return self.name.rstrip("0123456789")

    @property
    def count(self) -> int:
        """URAM288 or RAMB36 of the bank (:func:`primitive_count`)."""
        return primitive_count(self.depth, 8 * self.word_bytes, self.primitive)


#: The buffers of a core, in plan order.
BUFFER_NAMES = ("weight", "meta", "bias", "data")


def buffer_sizes(buffers: BufferConfig) -> dict[str, int]:
    """Bytes of each buffer, in :data:`BUFFER_NAMES` order: weight, meta, bias and the data space
    (activation + global), from ``BufferConfig``'s KiB."""
    return {"weight": buffers.weight_kib * 1024, "meta": buffers.meta_kib * 1024, "bias": buffers.bias_kib * 1024,
            "data": (buffers.activation_kib + buffers.global_kib) * 1024}


def bank_plan(buffers: BufferConfig, data_banks: int = 2, word_bytes: dict[str, int] | None = None) -> list[BankSpec]:
    """The banks of one core's buffers (see the module docstring). ``word_bytes``: buffer name ->
    its word in bytes (the widest unit port on it; hw/core.py OlivineCore.buffer_geometry gives
    the core's), default 64 (the U280's 512-bit AXI beat) for any buffer not named."""
    words = {name: 64 for name in BUFFER_NAMES}
    if word_bytes:
        unknown = sorted(set(word_bytes) - set(words))
        if unknown:
            raise ValueError(f"word_bytes names unknown buffers {unknown}; the buffers are {', '.join(BUFFER_NAMES)}")
        words.update(word_bytes)
    if buffers.weight_kib % 2:
        raise ValueError(f"weight_kib={buffers.weight_kib} must be even: the weight buffer is double-buffered")
    sizes = buffer_sizes(buffers)
    data_bytes = sizes.pop("data")
    if data_bytes % data_banks:
        raise ValueError(f"the data space ({data_bytes} B) does not split into {data_banks} equal banks")
    banks = [(name, name, size) for name, size in sizes.items()]
    banks += [(f"data{i}", "data", data_bytes // data_banks) for i in range(data_banks)]
    plan = []
    for name, buf, size in banks:
        word = words[buf]
        if word < 1 or size % word:
            raise ValueError(f"the {buf} buffer's bank {name} of {size} B is not a whole number of its "
                             f"{word}-byte words")
        plan.append(BankSpec(name, size, word, choose_primitive(size // word, 8 * word)))
    return plan


def plan_geometry(plan: list[BankSpec]) -> dict[str, tuple[int, int, int, str]]:
    """Buffer name -> (bytes, word bytes, banks, primitive) of a plan, in plan order (the banks of
    one buffer share their word and primitive)."""
    geometry = {}
    for bank in plan:
        nbytes, word, banks, primitive = geometry.get(bank.buffer, (0, bank.word_bytes, 0, bank.primitive))
        geometry[bank.buffer] = (nbytes + bank.bytes, word, banks + 1, primitive)
    return geometry


def plan_totals(plan: list[BankSpec]) -> dict[str, int]:
    """URAM288 and RAMB36 of one core's plan: {"uram": n, "bram": n}."""
    totals = {"uram": 0, "bram": 0}
    for bank in plan:
        totals[bank.primitive] += bank.count
    return totals


def check_fit(plan: list[BankSpec], board, cores: int, engine: dict[str, tuple[str, int]] | None = None) -> dict[str, int]:
    """The plan's URAM288 and RAMB36 on ``cores`` cores (returned) against ``board``
    (olivine.boards.Board); ConfigError naming every buffer's share when they do not fit.
    ``engine``: the matrix engine's own block / Ultra RAMs per core (hw.mpe.MatrixEngine.
    memory_primitives: name -> (primitive, count), e.g. its chunk banks and carry memory), counted
    with the buffers. FIFOs and ROMs come on top."""
    per_core = plan_totals(plan)
    for kind, count in (engine or {}).values():
        per_core[kind] += count
    totals = {k: cores * v for k, v in per_core.items()}
    have = {"uram": board.uram, "bram": board.bram36}
    label = {"uram": "URAM288", "bram": "RAMB36"}
    problems = []
    for kind in ("uram", "bram"):
        if have[kind] is not None and totals[kind] > have[kind]:
            shares = ", ".join([f"{b.name} {b.count} ({b.depth} x {8 * b.word_bytes} bits)"
                                for b in plan if b.primitive == kind] +
                               [f"matrix engine {name} {count}" for name, (k, count) in (engine or {}).items()
                                if k == kind])
            what = "the buffers and the matrix engine's memories" if engine else "the buffers"
            problems.append(f"{totals[kind]} {label[kind]} for {what} of {cores} cores but {board.name} has "
                            f"{have[kind]}; per core: {shares}")
    if problems:
        raise ConfigError("the on-chip buffers do not fit the board: " + "; ".join(problems) +
                          ". Shrink the buffers named (BufferConfig), use fewer cores or fewer chains "
                          "(the weight word is 16 bytes per chain)")
    return totals


class BufferBank(wiring.Component):
    def __init__(self, nbytes: int, data_width: int = 512, primitive: str = "uram"):
        beat = check_data_width(data_width)
        if nbytes % beat:
            raise ValueError(f"a bank of {nbytes} B is not a whole number of {beat}-byte words")
        if primitive not in RAM_STYLES:
            raise ValueError(f"primitive {primitive!r}: choose one of {', '.join(RAM_STYLES)}")
        self.depth, self.data_width, self.primitive = nbytes // beat, data_width, primitive
        ab = max((self.depth - 1).bit_length(), 1)
        super().__init__({"w_addr": In(ab), "w_data": In(data_width), "w_en": In(beat),
                          "r_addr": In(ab), "r_en": In(1), "r_data": Out(data_width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self.data_width, depth=self.depth, init=[],
                                               attrs={"ram_style": RAM_STYLES[self.primitive]})
        w = mem.write_port(granularity=8)
        r = mem.read_port()
        m.d.comb += [w.addr.eq(self.w_addr), w.data.eq(self.w_data), w.en.eq(self.w_en),
                     r.addr.eq(self.r_addr), r.en.eq(self.r_en), self.r_data.eq(r.data)]
        return m


@register_unit("buffer_bank")
def _buffer_bank_unit(kib: int = 64, data_width: int = 512, primitive: str = "uram"):
    """One on-chip buffer bank of ``kib`` KiB, ``data_width`` bits wide, forced to URAM or BRAM."""
    return BufferBank(kib * 1024, data_width, primitive), "olivine_buffer_bank"
