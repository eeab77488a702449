"""The special function unit (SFU): executes decoded MISC instructions on the core's data space.

:class:`Sfu` takes one decoded MISC instruction at a time on ``instr`` (op, mask, src0, src1, dst,
rows, cols, imm and the instruction's word offset in the program), streams its rows from the data
space through the read port into the op core, and writes the core's results back through the write
port. Semantics are docs/isa.md "MISC", bit-exact with golden/sfu.py (what sim/funcsim.py runs).

Data space ports (the activation + global buffer of docs/isa.md, ``(activation_kib + global_kib)
KiB``): a read port and a write port of ``lanes`` x 32 bits, addressed in words of ``4 * lanes``
bytes, with the signatures of ``amaranth.lib.memory`` ports (``rd``: ``addr``/``en`` out, ``data``
in, one cycle read latency; ``wr``: ``addr``/``data``/``en`` out with one enable per byte), so a
``Memory`` connects directly (:class:`SfuHarness` does that for tests).

Lanes and the DSP budget: ``sfu_lanes(config)`` = the largest power of two <= ``config.sfu_dsp //
4``: 8 lanes at the U280 default's 32 SFU DSPs (hw/config.py DEFAULT_SHAPES), 16 at the ``small``
configuration's 64. Every DSP48E2 of the
unit is its shared multiplier bank (hw/sfu_mul.py :class:`~olivine.hw.sfu_mul.MultiplierBank`): one
signed 44 x 35 product per lane and cycle (4 DSP48E2), used by the op core of the running
instruction (``sel`` from the op code); every other product (the geometry's rows x cols, the norm's
d x eps, softmax's d x log2(e), the table interpolations) is shift-and-add in the fabric. So the SFU
takes ``4 * lanes <= sfu_dsp`` DSP48E2 (measured, docs/benchmarks.md). Ops with two products per
element (swiglu, rmsnorm's last pass, rope) make them in consecutive cycles on the lane's multiplier,
at the beat per two cycles their two operand streams already take on the one read port.

Row streaming, no row buffer: every row is read from the data space once per pass of its op core
(``passes``: 1 for element-wise ops, 2-3 for row reductions), each pass at full rate through an
aligner (any 4-byte aligned row start; the aligner rotates each read word by the row's lane offset
and joins it with the previous word). The cost is one extra read slot per row and pass, and
``passes`` x the row's reads for reductions; the gain is no row buffer at all (a 16384-element norm
row or a long softmax row would need 64 KiB or more per buffer). Two-operand ops (add, mul, swiglu)
interleave src0 and src1 reads on the single read port. Writes go through a second aligner with
byte enables; a row whose end straddles a word costs one extra write cycle.

Ports
-----
instr : In(stream.Signature(INSTR_LAYOUT))
    Accepted only when the unit is idle (``ready`` high).
rd : In(ReadPort.Signature(addr_width, unsigned(32 * lanes)))
wr : In(WritePort.Signature(addr_width, unsigned(32 * lanes), granularity=8))
status : Out(STATUS_LAYOUT)
    ``busy``; ``done`` (one cycle when an instruction finishes, with or without error); ``error``,
    ``code`` (:class:`SfuError`), ``offset`` (the failing instruction's word offset), held until
    the next instruction finishes; ``cycles`` of the last instruction (accept to done).

Bad input (a defined response, never a hang): a reserved op (layernorm, argmax, codes 13-15), an op
not built into this instance, zero rows or cols, a row longer than the op's limit, an unaligned
address or an operand/result outside the data space finish the instruction in 3 cycles with
``error`` set, the code and the offset latched, and nothing written (quant's group count and INT8
block range, ``BAD_GROUPS`` / ``OUT_OF_RANGE``, after its 10-cycle setup; dequant's short record
stride ``BAD_RECORD`` in 3; quant's field rules, rope's odd ``cols`` and the query position of
vshift and of softmax with ``mask = 1`` ``BAD_FIELD`` in 3; the overlap rule (``dst`` partly over
``src0``, or over ``src1`` of add / mul / swiglu, other than exactly in place; any overlap for quant,
dequant, vshift: :data:`IN_PLACE_OPS`) ``OVERLAP`` in 3, quant's after its 10-cycle setup (its block
size is known there); the OVP4 quant record's multiplier ``BAD_MULTIPLIER`` after the record read
(``status.cycles`` = 14); rope's record ``BAD_DATA`` / ``ROPE_ROM`` after its 14-cycle check; vshift's
V mantissa above 256 ``BAD_DATA`` at the end of the instruction, whose writes are all suppressed;
the data rules of docs/isa.md MISC, checked before any write: a
dequant record multiplier with bit 31 set answers ``BAD_MULTIPLIER`` after the multiplier scan
(one read per record, ``rows + 2`` cycles, also paid by a good instruction: :data:`OP_TIMING`);
rmsnorm's eps multiplier >= 2**31, eps shift outside 0..62 or ``d * eps * 2**32 >= 2**61``
answer ``BAD_EPS`` at the end of its parameter setup (the product ``d * eps_mult`` is a
shift-and-add beside the sqrt(cols) root: no DSP, no cycle).

Latency and throughput per op: :data:`OP_TIMING` (:class:`OpTiming`: cycles per row =
``((passes - 1) * reads + last_reads) * (beats + 1) + row_gap``, ``beats = ceil(cols / lanes)``;
element-wise ops at ``lanes`` (one operand) or ``lanes / 2`` (two) elements per cycle, rmsnorm
``lanes / 4``, softmax ``lanes / 3`` plus their per-row divider/rsqrt wait), equal to
``status.cycles`` of the RTL on every test case (tests/test_hw_sfu.py, sim/sfu_check.py);
``START_CYCLES`` = 3 at instruction start (accept, rows x cols, checks), then the core's pipeline
latency + 2 at the end.

Ops of this revision: add, mul, copy, silu, swiglu (hw/sfu_eltwise.py), rmsnorm
(hw/sfu_norm.py), softmax (hw/sfu_softmax.py) and quant (hw/sfu_quant.py; its INT8 block goes
through a byte writer, :meth:`Sfu._quant_writer`, with per-row exponent/mantissa bytes: ``tail``
cycles after the last row) and dequant (hw/sfu_dequant.py; the reader streams each record's
words, ``record_words(cols)``, at stride ``imm``), rope (hw/sfu_rope.py; built only with a cos/sin
ROM, ``Sfu(config, rope=RopeRom(...))``: the row's halves stream as two operands in both of its
passes, each pass one writer row of ``cols / 2``; :class:`~olivine.hw.sfu_rope.RopeSetup` checks the
48-byte record against the ROM in the ``ROPE_SETUP`` state, ``setup`` = 14 cycles) and vshift
(hw/sfu_vshift.py; the first row's passes 0 and 1 stream the words covering V's exponents and
mantissas, each pass with its own start and length, into the core's buffers, later rows skip them;
after each row's words its ``e_ref`` byte, one byte-enabled write). quant's OVP4 mode (``imm[17]``) runs on its own core, hw/sfu_ovp_quant.py (one pass, the parameter
record at ``src1`` read in ``Q_PARAM``, pair-code bytes through the same byte writer; timing
:data:`OVP_QUANT_TIMING`, :func:`op_timing`); a 1-lane SFU has none (``NOT_BUILT``). Only the reserved
layernorm and argmax are not built.
"""

from __future__ import annotations

import enum as py_enum
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, fifo, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig
from .resources import register_unit
from .sfu_core import beat_layout
from .sfu_arith import LINT_WAIVERS as ARITH_LINT_WAIVERS
from .sfu_arith import Isqrt, UnsignedDivider, bit_length
from .sfu_eltwise import AddCore, CopyCore, MulCore, SiluCore, SwigluCore
from .sfu_norm import NORM_LATENCY, RMSNorm
from .sfu_quant import QUANT_LATENCY, QuantCore
from .sfu_ovp_quant import OVP_QUANT_LATENCY, OvpQuantCore
from .requant import MULT_BITS, SHIFT_BITS, clamp_shift
from .sfu_dequant import DEQUANT_LATENCY, DequantCore, record_words
from .sfu_softmax import SOFTMAX_LATENCY, Softmax
from .sfu_rope import ROPE_LATENCY, ROPE_MAX_COLS, ROPE_SETUP_CYCLES, RopeCore, RopeRom, RopeSetup
from .sfu_vshift import VSHIFT_LATENCY, VSHIFT_MAX_COLS, VshiftCore
from .sfu_mul import DSP_PER_LANE, MultiplierBank, shift_add_product

NORM_MAX_DIM = 1 << 14           # golden sfu.NORM_MAX_DIM (checked by the tests)
SOFTMAX_MAX_LEN = 1 << 20        # golden sfu.SOFTMAX_MAX_LEN

__all__ = ["INSTR_LAYOUT", "MISC_OPS", "OP_CORES", "OP_TIMING", "OVP_QUANT_TIMING", "op_timing", "START_CYCLES", "STATUS_LAYOUT",
           "FULL_LINT_WAIVERS", "LINT_WAIVERS", "VERILATOR_BUILD_ARGS", "Sfu", "SfuError", "SfuHarness", "OpTiming", "sfu_lanes", "sqrt_multiplier"]

#: MISC op names in code order (docs/isa.md; tests check it equals compiler.isa.MISC_OPS).
MISC_OPS = ("add", "mul", "softmax", "layernorm", "rmsnorm", "silu", "swiglu", "rope",
            "quant", "dequant", "copy", "argmax", "vshift")
#: Ops the ISA reserves (not emitted by the compiler; the simulator rejects them).
RESERVED_OPS = ("layernorm", "argmax")
#: docs/isa.md Validity, overlap: these ops may write over src0 exactly in place (dst = src0, same
#: layout, every element read before it is written; sim/funcsim.py _MISC_IN_PLACE); for the others
#: dst's range must be disjoint from src0's, and from src1's for the two-matrix ops (or equal to it)
IN_PLACE_OPS = ("add", "mul", "swiglu", "silu", "copy", "rmsnorm", "rope", "softmax")
SRC1_MATRIX_OPS = ("add", "mul", "swiglu")


INSTR_LAYOUT = data.StructLayout({
    "op": 4, "mask": 1, "src0": 24, "src1": 24, "dst": 24, "rows": 12, "cols": 20, "imm": 32,
    "offset": 24,
})

STATUS_LAYOUT = data.StructLayout({
    "busy": 1, "done": 1, "error": 1, "code": 4, "offset": 24, "cycles": 32,
})


class _State(enum.Enum, shape=4):
    IDLE = 0
    GEOMETRY = 1
    CHECK = 2
    PARAM_READ = 3     # norm: read the eps multiplier / shift after the gains
    PARAM_SQRT = 4     # norm: quantize_multiplier(sqrt(cols)) on the integer square root
    RUN = 5
    Q_DIV = 6          # quant: rows / G on the small divider
    Q_GEOM = 7         # quant: block size of the grouped layout
    Q_CHECK = 8        # quant: group count and output range
    ROPE_SETUP = 9     # rope: read and check the parameter record (hw/sfu_rope.py RopeSetup)
    D_SCAN = 10        # dequant: every record's multiplier word, bit 31 clear (before any write)
    Q_PARAM = 11       # quant, OVP4 mode: read the parameter record (multiplier, shift) at src1


class SfuError(py_enum.IntEnum):
    """``status.code`` values."""

    NONE = 0
    RESERVED_OP = 1      # layernorm / argmax / op codes 13-15
    NOT_BUILT = 2        # a valid op this SFU instance was built without
    ZERO_SHAPE = 3       # rows == 0 or cols == 0
    ROW_TOO_LONG = 4     # cols beyond the op's limit
    UNALIGNED = 5        # a fixed32 address not a multiple of 4
    OUT_OF_RANGE = 6     # an operand or the result beyond the data space
    BAD_GROUPS = 7       # quant: G = imm[15:0] > 1 does not divide rows
    BAD_RECORD = 8       # dequant: record stride imm not a multiple of 16 or below pad16(cols) + 16
    BAD_FIELD = 9        # an op's field rule: rope with odd cols; vshift query position imm[15:0] + min(rows, period) - 1 >= cols;
                         # quant: imm[31:19] set, imm[18] without imm[17]; OVP4 mode: imm[16] or imm[15:0] set,
                         # odd cols, or the parameter record overlapping the result
    BAD_DATA = 10        # a value read breaks a data rule: the RoPE record (theta, hd, flag, LLaMA-3 parameters), a V mantissa > 256
    ROPE_ROM = 11        # a valid RoPE record this instance's ROM does not hold (theta, hd, scaling) or a position beyond it
    BAD_MULTIPLIER = 12  # a multiplier with bit 31 set: the quant OVP4 record's, a dequant record's
    BAD_EPS = 13         # rmsnorm: eps multiplier >= 2**31, eps shift outside 0..62 or d * eps * 2**32 >= 2**61
    OVERLAP = 14         # dst's range meets src0's (or add / mul / swiglu's src1) other than exactly in place


@dataclass(frozen=True)
class OpCore:
    """How the top drives an op core: its class, ``operands`` (2: a second stream on ``g``),
    whether ``src1`` advances per row (a second operand matrix) or stays (a parameter table, read
    in the last pass only), ``src1_extra`` elements after a table's ``cols`` (the norm table's eps
    multiplier and shift), the longest row it accepts, its pipeline ``latency`` and ``row_gap``:
    the cycles a row reduction waits between passes (divider / rsqrt), measured on the RTL."""

    cls: type
    operands: int = 1
    src1_per_row: bool = True
    src1_extra: int = 0
    max_cols: int = (1 << 20) - 1
    latency: int = 1
    row_gap: int = 0
    short_row: int = 0
    setup: int = 0
    tail: int = 0
    paced: int = 0

    @property
    def passes(self) -> int:
        return self.cls.passes


#: quant: cycles between its passes (e/m and the reciprocal ROM), before the first row (rows / G on
#: the divider, the grouped-layout geometry and range check), and after the last result beat (the
#: row's exponent byte and two mantissa bytes); measured on the RTL.
QUANT_ROW_GAP = 0
QUANT_SETUP = 10
QUANT_TAIL = 3
#: dequant's multiplier scan: one read per record, then the last word's check and the decision.
DEQUANT_SCAN_EXTRA = 2

#: vshift: cycles per row beyond its read slots (the e_ref lookup and byte write, partly hidden in
#: the aligner's extra slot) and before the first row (the two load passes' last-chunk writes);
#: measured on the RTL (the load passes' read slots themselves: OpTiming.instruction_cycles)
VSHIFT_ROW_GAP = 1
VSHIFT_SETUP = 2

#: Beats buffered per operand stream between the read aligner and the core (the read credit; 4
#: covers the read round trip at full rate): :class:`Sfu`'s default ``fifo_depth``.
READ_FIFO_DEPTH = 4

#: The op cores of this revision, by MISC op name.
OP_CORES: dict[str, OpCore] = {
    "add": OpCore(AddCore, operands=2, latency=AddCore.latency),
    "mul": OpCore(MulCore, operands=2, latency=MulCore.latency),
    "copy": OpCore(CopyCore, latency=CopyCore.latency),
    "silu": OpCore(SiluCore, latency=SiluCore.latency),
    "swiglu": OpCore(SwigluCore, operands=2, latency=SwigluCore.latency),
    # rmsnorm: its last pass takes a beat per two cycles (two bank products per lane), so the beats
    # the reader prefetched during the rsqrt wait (up to the FIFO depth) are no longer drained at once
    "rmsnorm": OpCore(RMSNorm, operands=2, src1_per_row=False, src1_extra=2, max_cols=NORM_MAX_DIM,
                      latency=NORM_LATENCY, row_gap=35, short_row=5, setup=21, paced=READ_FIFO_DEPTH),
    "softmax": OpCore(Softmax, max_cols=SOFTMAX_MAX_LEN - 1, latency=SOFTMAX_LATENCY, row_gap=24, setup=1),
    "dequant": OpCore(DequantCore, latency=DEQUANT_LATENCY),
    "quant": OpCore(QuantCore, latency=QUANT_LATENCY, row_gap=QUANT_ROW_GAP, setup=QUANT_SETUP, tail=QUANT_TAIL),
    # rope: both halves of the row as two operands in both passes (hw/sfu_rope.py); the record check before the rows
    "rope": OpCore(RopeCore, operands=2, max_cols=ROPE_MAX_COLS, latency=ROPE_LATENCY, setup=ROPE_SETUP_CYCLES),
    # vshift: passes 0/1 load V's exponents and mantissas once (first row), pass 2 streams each row (hw/sfu_vshift.py)
    "vshift": OpCore(VshiftCore, max_cols=VSHIFT_MAX_COLS, latency=VSHIFT_LATENCY, row_gap=VSHIFT_ROW_GAP,
                     setup=VSHIFT_SETUP),
}

#: Cycles from an accepted instruction to the first row read (decode, shape and range checks).
START_CYCLES = 3


@dataclass(frozen=True)
class OpTiming:
    """Latency and throughput of one op (read by the performance model).

    ``cycles_per_row(cols, lanes)`` = ``(passes - 1) * reads + last_reads`` read slots of
    ``ceil(cols / lanes) + 1`` cycles each (the +1 is the aligner's extra slot; ``reads`` is 2
    when two operand rows share the read port, ``last_reads`` likewise for the last pass, where a
    norm also streams its gains) plus ``row_gap``: the cycles a row reduction waits between passes
    for its divider / rsqrt, plus ``max(0, short_row - beats)`` on rows too short for the read
    credit to overlap that wait (measured on the RTL; tests/test_hw_sfu.py checks the model).
    ``setup``: cycles before the first row (the norm's table read and sqrt(cols) multiplier).
    ``latency`` = the core's pipeline depth in cycles.
    """

    passes: int
    reads: int
    last_reads: int
    latency: int
    row_gap: int = 0
    short_row: int = 0
    setup: int = 0
    tail: int = 0
    byte_out: bool = False
    record_in: bool = False
    pair_out: bool = False   # quant's OVP4 mode: cols / 2 code bytes per row, rows back to back
    halves: bool = False      # rope: each pass streams the row's two halves (cols / 2 elements each)
    table_in: bool = False    # vshift: the first row's passes 0 / 1 load V (words covering 3 * cols bytes at src1)
    paced: int = 0            # rmsnorm: + min(beats - 1, paced) per row (its last pass at a beat per two cycles
                              # takes the beats prefetched during the row gap, up to the FIFO depth, no faster)

    def _record_core_cycles(self, cols: int, lanes: int) -> int:
        """dequant: the core's cycles per record: pass 0 takes its ``ib`` input beats, pass 1
        ``ceil(cols / lanes)`` output beats plus the beats past the codes (taken without output)."""
        in_beats = -(-record_words(cols) // lanes)
        return in_beats + -(-cols // lanes) + in_beats - -(-cols // (4 * lanes))

    def cycles_per_row(self, cols: int, lanes: int) -> int:
        if self.record_in:  # steady state: the reader's 2 passes or the core's output, whichever is longer
            in_beats = -(-record_words(cols) // lanes)
            return max(2 * (in_beats + 1), self._record_core_cycles(cols, lanes))
        if self.table_in:  # vshift: the rows' pass only (the load passes: instruction_cycles)
            return -(-cols // lanes) + 1 + self.row_gap
        beats = -(-(cols // 2 if self.halves else cols) // lanes)
        return (((self.passes - 1) * self.reads + self.last_reads) * (beats + 1) + self.row_gap
                + max(0, self.short_row - beats) + min(beats - 1, self.paced))

    def elements_per_cycle(self, cols: int, lanes: int) -> float:
        return cols / self.cycles_per_row(cols, lanes)

    def instruction_cycles(self, rows: int, cols: int, lanes: int, dst: int = 0, imm: int = 0, *, src1: int = 0) -> int:
        """Cycles of a whole instruction (``status.cycles``): start, setup, the rows, the core's
        latency, the read and write pipeline (2), and 1 more when the last row's end straddles a
        destination word (its flush write; earlier rows' flushes hide in the next row's free read
        slot). quant (``byte_out``): the straddle is of the INT8 bytes of the last input row, and a
        one-beat row (``cols <= lanes``) straddling a word costs +1 wherever it is (writer-bound:
        5 writes against 4 read slots). Exact on every case (tests/test_hw_sfu.py, Amaranth;
        sim/sfu_check.py, Verilator)."""
        last_start = dst // 4 + (rows - 1) * cols + (cols // 2 if self.halves else 0)
        seg = cols // 2 if self.halves else cols
        offset, last_count = last_start % lanes, (seg - 1) % lanes + 1
        flush = int(offset != 0 and last_count > lanes - offset)
        row_cycles = rows * self.cycles_per_row(cols, lanes)
        if self.pair_out:  # OVP4 block (quant, OVP4 mode): only the last row's overhang is its own write
            last_beat = dst + (rows - 1) * (cols // 2) + (-(-cols // lanes) - 1) * (lanes // 2)
            flush = int(last_beat % (4 * lanes) + last_count // 2 > 4 * lanes)
        elif self.byte_out:  # INT8 block output (quant): byte addresses, the grouped layout of imm
            groups, wbytes = max(1, imm & 0xFFFF), 4 * lanes
            t_rows = rows // groups
            blk = -(-(t_rows * (cols + 3)) // 64) * 64

            def straddles(r: int) -> bool:  # input row r = t*G + h: row t of block h; its last beat's bytes
                start = dst + (r % groups) * blk + (r // groups) * cols
                return (start + (-(-cols // lanes) - 1) * lanes) % wbytes + last_count > wbytes

            flush = int(straddles(rows - 1))
            if cols <= lanes:
                # a one-beat row has 4 read slots and 4 writer cycles (codes, exponent, 2 mantissa
                # bytes); its codes straddling a word add a 5th (the overhang), which no read slot
                # hides: +1 per such row before the last (the last one's is the flush above)
                row_cycles += sum(straddles(r) for r in range(rows - 1))
        if self.table_in:  # the first row's load passes: the words covering V's exponents, then its mantissas
            words_v, words_m = (src1 % 4 + cols + 3) // 4, ((src1 + cols) % 4 + 2 * cols + 3) // 4
            row_cycles += -(-words_v // lanes) + 1 + -(-words_m // lanes) + 1
        if self.record_in:  # the last record: pass 0, its outputs, 2 (its words past the codes drain unseen)
            in_beats = -(-record_words(cols) // lanes)
            row_cycles += in_beats + -(-cols // lanes) + 2 - self.cycles_per_row(cols, lanes)
            row_cycles += rows + DEQUANT_SCAN_EXTRA  # the multiplier scan before the first row (D_SCAN)
        return START_CYCLES + self.setup + row_cycles + self.latency + 2 + flush + self.tail


def _timing(core: OpCore) -> OpTiming:
    two = core.operands == 2
    return OpTiming(passes=core.passes, reads=2 if two and core.src1_per_row else 1, last_reads=2 if two else 1,
                    latency=core.latency, row_gap=core.row_gap, short_row=core.short_row, setup=core.setup,
                    tail=core.tail, byte_out=core.cls is QuantCore, record_in=core.cls is DequantCore,
                    halves=core.cls is RopeCore, table_in=core.cls is VshiftCore, paced=core.paced)


#: Measured-against-RTL timing table per op (tests/test_hw_sfu.py checks it on the Amaranth model
#: and the check command reports the Verilator measurement next to it).
OP_TIMING: dict[str, OpTiming] = {op: _timing(core) for op, core in OP_CORES.items()}
#: quant in OVP4 mode (imm[17]): cycles before the first row: the divider, geometry and range states
#: it shares with the INT8 mode (9) and the record read (3); measured on the RTL
QUANT_OVP_SETUP = 12
#: quant in OVP4 mode: one pass at full rate (lanes elements a cycle), the core's 11-cycle pipeline
OVP_QUANT_TIMING = OpTiming(passes=OvpQuantCore.passes, reads=1, last_reads=1, latency=OVP_QUANT_LATENCY,
                            setup=QUANT_OVP_SETUP, pair_out=True)


def op_timing(op: str, imm: int = 0) -> OpTiming:
    """The timing of a MISC op with its ``imm``: :data:`OP_TIMING`, or :data:`OVP_QUANT_TIMING` for
    quant in OVP4 mode."""
    return OVP_QUANT_TIMING if op == "quant" and imm >> 17 & 1 else OP_TIMING[op]
_CASE_REASON = ("Amaranth's Verilog backend writes every combinational signal as a default assignment "
                "followed by a case statement that lists only the values that change it (m.Switch / the "
                "state and op decoders); an unlisted value keeps the default, so nothing is latched")
_ALIAS = ("Amaranth debug alias: the backend keeps a second name for a net (a field of a struct "
          "signal, an array element, a named intermediate, a port read under the parent's name) and "
          "drives the logic from the first name; the alias itself is never read")
_FIFO = ("amaranth.lib.fifo.SyncFIFO internals and its level outputs: the SFU's read credit bounds "
         "the occupancy, so it reads no level; the library's own names for its memory ports are aliases")
#: Verilator flags for building the SFU's model (the cocotb runs): the one warning a Verilator
#: build treats as fatal that Amaranth's case idiom triggers.
VERILATOR_BUILD_ARGS = ("-Wno-CASEINCOMPLETE",)

#: Verilator -Wall findings of the generated SFU that are not design problems.
LINT_WAIVERS: dict[str, str] = {
    "CASEINCOMPLETE": _CASE_REASON,
    "UNUSEDSIGNAL:*.*": _ALIAS,          # fields of struct-typed signals (meta.count, ins.cols, ...)
    "UNUSEDSIGNAL:*]": _ALIAS,           # elements of array-typed signals (carry[0], ...)
    "UNUSEDSIGNAL:e_*": _ALIAS,          # element addresses: the backend inlines src >> 2
    "UNUSEDSIGNAL:word": _ALIAS,
    "UNUSEDSIGNAL:w_off": _ALIAS,
    "UNUSEDSIGNAL:valid_s*": _ALIAS,     # a core's last pipeline stage is also its o.valid
    "UNUSEDSIGNAL:i__ready": _ALIAS,
    "UNUSEDSIGNAL:r_data": _ALIAS,       # FIFO ports, read under the parent's names
    "UNUSEDSIGNAL:r_en": _ALIAS,
    "UNUSEDSIGNAL:w_data": _ALIAS,
    "UNUSEDSIGNAL:mul__*": _ALIAS,       # a core's multiplier-bank port, read under the bank's names
    "UNUSEDSIGNAL:u*__p": _ALIAS,
    "UNUSEDSIGNAL:bank_*": _ALIAS,       # the bank's operand / product nets (hw/sfu_mul.py)
    "UNUSEDSIGNAL:consume": _FIFO,
    "UNUSEDSIGNAL:produce": _FIFO,
    "UNUSEDSIGNAL:r_port__data": _FIFO,
    "UNUSEDSIGNAL:r_level": _FIFO,
    "UNUSEDSIGNAL:w_level": _FIFO,
}


#: Waivers of an SFU that includes the sfu-arith blocks (Sigmoid, norm and softmax cores): those
#: modules waive UNUSEDSIGNAL as a whole for Amaranth's alias wires (hw/sfu_arith.py LINT_WAIVERS,
#: with its reason); the framework and the element-wise cores lint with LINT_WAIVERS alone
#: (tests/test_hw_sfu.py lints an add/mul/copy instance that way).
FULL_LINT_WAIVERS: dict[str, str] = {**LINT_WAIVERS, **ARITH_LINT_WAIVERS}


def sqrt_multiplier(cols: int) -> tuple[int, int]:
    """The norm's ``quantize_multiplier(sqrt(cols))`` as the RTL computes it, in integers:
    ``e = ceil(bit_length(cols) / 2)`` (frexp exponent of sqrt(cols)), ``r, rem = isqrt(cols <<
    (62 - 2e))``, ``m = r + (rem > r)`` (round half up), a carry to 2**31 giving (2**30, 30 - e),
    else (m, 31 - e). Equal to golden's float64 rule for every cols in 1..NORM_MAX_DIM (tested)."""
    import math

    e = (cols.bit_length() + 1) // 2
    n = cols << (62 - 2 * e)
    r = math.isqrt(n)
    m = r + (n - r * r > r)
    return (1 << 30, 30 - e) if m == 1 << 31 else (m, 31 - e)


def sfu_lanes(config: AcceleratorConfig) -> int:
    """Elements per cycle of the SFU: the largest power of two <= sfu_dsp // DSP_PER_LANE (>= 1)."""
    lanes = max(1, config.sfu_dsp // DSP_PER_LANE)
    return 1 << (lanes.bit_length() - 1)


def data_space_bytes(config: AcceleratorConfig) -> int:
    return (config.buffers.activation_kib + config.buffers.global_kib) * 1024


def _op_in(op, names) -> object:
    """``op`` (the 4-bit MISC code) is one of the ops ``names``."""
    hit = Const(0, 1)
    for name in names:
        hit = hit | (op == MISC_OPS.index(name))
    return hit


def _overlaps(a_start, a_len, b_start, b_len):
    """Byte ranges ``[a_start, a_start + a_len)`` and ``[b_start, b_start + b_len)`` share a byte
    (sim/funcsim.py ``_overlap``)."""
    return (a_start < b_start + b_len) & (b_start < a_start + a_len)


def _lane_index(value, lane_bits: int):
    """``value mod lanes`` as exactly ``lane_bits`` bits, so a lane multiplexer's case statement
    covers every index."""
    return value.as_unsigned()[:lane_bits]


class Sfu(wiring.Component):
    """The SFU top level (see the module docstring for ports, latency and throughput).

    Parameters
    ----------
    config : AcceleratorConfig
        Gives the lanes (``sfu_dsp``) and the data space size (``buffers``).
    ops : tuple of str, optional
        The MISC ops to build (default: every op of :data:`OP_CORES`); the others answer
        ``SfuError.NOT_BUILT``. Small instances keep tests and resource reports per op.
    fifo_depth : int
        Beats buffered between the read aligner and the core (the read credit; 4 covers the
        read round trip at full rate). :data:`OP_TIMING` is exact at the default
        (:data:`READ_FIFO_DEPTH`: rmsnorm's paced last pass depends on it).
    rope : RopeRom, optional
        The cos/sin ROM of the rope op (hw/sfu_rope.py; ``RopeRom.from_model_config`` for a
        compiled model). ``None``: rope is not built (``SfuError.NOT_BUILT``).
    """

    def __init__(self, config: AcceleratorConfig, *, ops: tuple[str, ...] | None = None, fifo_depth: int = READ_FIFO_DEPTH,
                 rope: RopeRom | None = None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
        if rope is not None and not isinstance(rope, RopeRom):
            raise TypeError(f"rope must be a RopeRom (hw/sfu_rope.py) or None, got {type(rope).__name__}")
        ops = tuple(op for op in OP_CORES if op != "rope" or rope is not None) if ops is None else tuple(ops)
        for op in ops:
            if op not in OP_CORES:
                raise ValueError(f"op {op!r} has no SFU core in this revision; built: {', '.join(OP_CORES)}")
        if "rope" in ops and rope is None:
            raise ValueError("op 'rope' needs its cos/sin ROM: pass rope=RopeRom(theta, head_dim, positions, scaling) "
                             "or RopeRom.from_model_config(config)")
        if not ops:
            raise ValueError("an SFU needs at least one op")
        self.config, self.ops, self.fifo_depth, self.rope = config, ops, fifo_depth, rope
        self.lanes = sfu_lanes(config)
        self.lane_bits = self.lanes.bit_length() - 1
        self.space_bytes = data_space_bytes(config)
        if self.space_bytes % (4 * self.lanes):
            raise ValueError(f"data space of {self.space_bytes} bytes is not a whole number of "
                             f"{4 * self.lanes}-byte words")
        self.words = self.space_bytes // (4 * self.lanes)
        self.addr_width = max(1, (self.words - 1).bit_length())
        word = unsigned(32 * self.lanes)
        super().__init__({
            "instr": In(stream.Signature(INSTR_LAYOUT)),
            "rd": In(ReadPort.Signature(addr_width=self.addr_width, shape=word)),
            "wr": In(WritePort.Signature(addr_width=self.addr_width, shape=word, granularity=8)),
            "status": Out(STATUS_LAYOUT),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, lb, mask = self.lanes, self.lane_bits, self.lanes - 1
        blayout = beat_layout(lanes)
        cores = {}
        for op in self.ops:
            cls = OP_CORES[op].cls
            core = cls(lanes, self.rope, shared_mul=True) if op == "rope" else cls(lanes, shared_mul=True)
            cores[op] = core
            m.submodules[f"core_{op}"] = core
        # quant's OVP4 mode (imm[17]): its own core beside QuantCore; pairs need two lanes a beat
        ovp_core = OvpQuantCore(lanes, shared_mul=True) if "quant" in self.ops and lanes >= 2 else None
        if ovp_core is not None:
            m.submodules.core_quant_ovp4 = ovp_core
        # every multiply of the unit: one 44 x 35 product per lane (hw/sfu_mul.py), the running op's
        mul_users = [(op, core) for op, core in cores.items() if getattr(core, "shared_mul", False)]
        if ovp_core is not None:
            mul_users.append(("quant_ovp4", ovp_core))
        if mul_users:
            m.submodules.mul_bank = mul_bank = MultiplierBank(lanes, len(mul_users))
            for k, (_, core) in enumerate(mul_users):
                wiring.connect(m, core.mul, mul_bank.port(k))

        ins = Signal(INSTR_LAYOUT)
        elems_total = self.space_bytes // 4
        ea_bits = 34

        # ---- per-op static facts, decoded from the latched op code
        op_built, op_reserved = Signal(), Signal()
        op_passes, op_two, op_src1_rows = Signal(2), Signal(), Signal()
        op_max_cols = Signal(21)
        op_src1_extra, op_norm = Signal(2), Signal()
        has_quant = "quant" in self.ops
        op_quant, op_dequant = Signal(), Signal()
        op_rope, op_vshift = Signal(), Signal()
        with m.Switch(ins.op):
            for op in self.ops:
                spec = OP_CORES[op]
                with m.Case(MISC_OPS.index(op)):
                    m.d.comb += [op_built.eq(1), op_passes.eq(spec.passes),
                                 op_two.eq(spec.operands == 2), op_src1_rows.eq(spec.src1_per_row),
                                 op_max_cols.eq(spec.max_cols), op_src1_extra.eq(spec.src1_extra),
                                 op_norm.eq(op == "rmsnorm"), op_quant.eq(op == "quant"),
                                 op_dequant.eq(op == "dequant"), op_rope.eq(op == "rope"),
                                 op_vshift.eq(op == "vshift")]
            with m.Case(*[MISC_OPS.index(op) for op in RESERVED_OPS], 13, 14, 15):
                m.d.comb += op_reserved.eq(1)
            with m.Default():  # valid ops not built into this instance (every case listed: lint)
                m.d.comb += [op_built.eq(0), op_passes.eq(1), op_two.eq(0), op_src1_rows.eq(0), op_max_cols.eq(0)]
        # quant in OVP4 mode: one pass, the record at src1, pair codes out
        q_ovp = Signal() if has_quant else Const(0, 1)
        if has_quant:
            m.d.comb += q_ovp.eq(op_quant & ins.imm[17])
            with m.If(q_ovp):
                m.d.comb += op_passes.eq(OvpQuantCore.passes)

        if len(mul_users) > 1:
            with m.Switch(ins.op):
                for k, (op, _) in enumerate(mul_users):
                    if op in MISC_OPS:
                        with m.Case(MISC_OPS.index(op)):
                            m.d.comb += mul_bank.sel.eq(k)
            for k, (op, _) in enumerate(mul_users):
                if op == "quant_ovp4":
                    with m.If(q_ovp):
                        m.d.comb += mul_bank.sel.eq(k)

        # ---- geometry of the instruction
        n_elems = Signal(32)          # rows * cols
        beats = Signal(21)            # beats per row = ceil(cols / lanes)
        last_count = Signal(range(lanes + 1))
        e_src0, e_src1, e_dst = (Signal(22, name=n) for n in ("e_src0", "e_src1", "e_dst"))
        m.d.comb += [e_src0.eq(ins.src0 >> 2), e_src1.eq(ins.src1 >> 2), e_dst.eq(ins.dst >> 2)]

        cycles = Signal(32)
        status = Signal(STATUS_LAYOUT)
        m.d.comb += self.status.eq(status)
        m.d.sync += status.done.eq(0)

        # ---- reader state
        r_row, r_pass, r_slot, r_op1, r_done = Signal(12), Signal(2), Signal(21), Signal(), Signal()
        ra0, ra1 = Signal(ea_bits), Signal(ea_bits)
        depth = self.fifo_depth
        outstanding = Signal(range(depth + 2))
        # one FIFO per operand stream; the second only when a built core takes two operands
        streams = 2 if any(OP_CORES[op].operands == 2 for op in cores) else 1
        fifos = [fifo.SyncFIFO(width=blayout.size, depth=depth) for _ in range(streams)]
        for k, f in enumerate(fifos):
            m.submodules[f"fifo{k}"] = f
        # ---- writer state
        w_row, w_beat, wa = Signal(13), Signal(21), Signal(ea_bits)
        carry = Signal(data.ArrayLayout(unsigned(32), lanes))
        flush, flush_addr, flush_en = Signal(), Signal(self.addr_width), Signal(lanes)

        # ---- per-instruction parameters of the norm (read from its table) and the softmax row
        c_row = Signal(16)            # rows whose last pass the core has taken (softmax's row index)
        pr_step = Signal(2)
        eps_mult, eps_shift = Signal(32), Signal(32)
        sqrt_mult, sqrt_shift = Signal(31), Signal(8)
        sqrt_e = Signal(4)            # frexp exponent of sqrt(cols): ceil(bit_length(cols) / 2)
        need_sqrt = "rmsnorm" in self.ops
        if need_sqrt:
            m.submodules.sqrt = sqrt_unit = Isqrt(n_bits=62, bits_per_cycle=2)
            # docs/isa.md data rule d * eps * 2**32 < 2**61, i.e. E(0) = round_shift(d * eps_mult,
            # eps_shift - 32) < 2**61: d * eps_mult by shift-and-add, one bit of d per cycle while
            # the sqrt(cols) root is computed (no DSP, no extra cycle: the root takes longer)
            eps_acc, eps_mc, eps_mp = Signal(46), Signal(46), Signal(15)
            assert sqrt_unit.latency > len(eps_mp), "the eps product must finish before the root"
            m.d.comb += [sqrt_e.eq((bit_length(ins.cols[:15]) + 1) >> 1),
                         sqrt_unit.i.payload.eq(ins.cols[:15] << (62 - 2 * sqrt_e).as_unsigned()[:6]), sqrt_unit.o.ready.eq(1)]
        m.d.comb += self.rd.en.eq(0)

        # ---- quant: INT8 block geometry (byte addresses) and its writer state
        if has_quant:
            m.submodules.q_div = q_div = UnsignedDivider(num_bits=12, den_bits=16, quo_bits=12, bits_per_cycle=2)
            q_groups = Signal(16)
            m.d.comb += [q_groups.eq(Mux(ins.imm[:16] > 1, ins.imm[:16], 1)), q_div.i.payload.num.eq(ins.rows),
                         q_div.i.payload.den.eq(q_groups), q_div.o.ready.eq(1)]
            q_trows, q_bad = Signal(12), Signal()
            q_tc, q_blk, q_base, q_acode, q_tcols = (Signal(32, name=n) for n in ("q_tc", "q_blk", "q_base", "q_acode", "q_tcols"))
            q_h, q_t = Signal(16), Signal(12)
            q_phase, q_carry = Signal(3), Signal()
            q_e, q_m = Signal(8), Signal(16)
            q_row_e, q_row_m = Signal(8), Signal(16)
            q_hi_data, q_hi_en, q_hi_addr = Signal(32 * lanes), Signal(4 * lanes), Signal(self.addr_width)
            q_ovp_mult, q_ovp_shift, q_ovp_s = Signal(32), Signal(32), Signal(signed(SHIFT_BITS))

        # ---- rope: the parameter record check; vshift: its e_ref byte writer and data-rule flag
        has_rope = "rope" in self.ops
        if has_rope:
            m.submodules.rope_setup = rope_setup = RopeSetup(lanes, self.rope, bad_data=SfuError.BAD_DATA,
                                                             rom_code=SfuError.ROPE_ROM, addr_width=self.addr_width)
            m.d.comb += [rope_setup.src1.eq(e_src1), rope_setup.cols.eq(ins.cols), rope_setup.rows.eq(ins.rows),
                         rope_setup.imm.eq(ins.imm), rope_setup.rd_data.eq(self.rd.data)]
        has_vshift = "vshift" in self.ops
        if has_vshift:
            vs_phase, vs_error = Signal(), Signal()
            vs_e, vs_row_e = Signal(8), Signal(8)
        else:
            vs_phase = vs_error = Const(0, 1)

        # ---- dequant: the multiplier scan (docs/isa.md data rule: every record's multiplier < 2**31,
        # checked over all records before the first row is written)
        has_dequant = "dequant" in self.ops
        if has_dequant:
            scan_addr, scan_left = Signal(ea_bits), Signal(13)
            scan_valid, scan_bad, scan_lane = Signal(), Signal(), Signal(range(lanes))

        # ---- what the reader streams per row: cols elements, or a dequant record's words
        rd_cols, rd_stride, n_src0 = Signal(22), Signal(32), Signal(44)
        m.d.comb += [rd_cols.eq(Mux(op_dequant, (((ins.cols + 15) >> 4) << 2) + 2, Mux(op_rope, ins.cols >> 1, ins.cols))),
                     rd_stride.eq(Mux(op_dequant, ins.imm >> 2, ins.cols))]
        # vshift's first row: pass 0 streams the words covering V's exponents, pass 1 its mantissas
        vs_off_v, vs_off_m = Signal(2), Signal(2)
        vs_words_v, vs_words_m, vs_elem_m = Signal(22), Signal(22), Signal(23)
        if has_vshift:
            m.d.comb += [vs_off_v.eq(ins.src1[:2]), vs_off_m.eq((ins.src1 + ins.cols)[:2]),
                         vs_words_v.eq((vs_off_v + ins.cols + 3) >> 2), vs_words_m.eq((vs_off_m + (ins.cols << 1) + 3) >> 2),
                         vs_elem_m.eq((ins.src1 + ins.cols) >> 2)]

        # ---- control FSM
        def finish_with_error(code):
            """The instruction ends here with ``code`` latched (nothing of it is written)."""
            return [status.error.eq(1), status.code.eq(code), status.offset.eq(ins.offset), status.busy.eq(0),
                    status.done.eq(1), status.cycles.eq(cycles)]

        running = Signal()
        err_code = Signal(4)
        # state register with an explicit default branch (RUN), so every case statement the
        # Verilog backend emits is complete (no latch-like CASEINCOMPLETE)
        state = Signal(_State)
        with m.Switch(state):
            with m.Case(_State.IDLE):
                m.d.comb += self.instr.ready.eq(1)
                with m.If(self.instr.valid):
                    m.d.sync += [ins.eq(self.instr.payload), cycles.eq(1), status.busy.eq(1)]
                    m.d.sync += state.eq(_State.GEOMETRY)
            with m.Case(_State.GEOMETRY):
                # rows x cols and rows x stride by shift-and-add (the DSP48E2 are the bank's)
                m.d.sync += [n_elems.eq(shift_add_product(m, ins.cols, ins.rows, name="n_elems")),
                             beats.eq((rd_cols + mask) >> lb), last_count.eq(((rd_cols - 1) & mask) + 1),
                             n_src0.eq(shift_add_product(m, rd_stride, ins.rows, name="n_src0"))]
                m.d.sync += state.eq(_State.CHECK)
            with m.Case(_State.CHECK):
                src1_elems = Mux(op_rope, 12, Mux(op_src1_rows, n_elems, ins.cols + op_src1_extra))
                # quant writes an INT8 block (bytes, any alignment): checked in Q_CHECK
                bad_range = ((e_src0 + n_src0 > elems_total) | (~op_quant & (e_dst + n_elems > elems_total))
                             | (op_two & (e_src1 + src1_elems > elems_total)))
                unaligned = (((ins.src0 | Mux(op_quant, 0, ins.dst)) & 3).any() | (op_two & (ins.src1 & 3).any())
                             | (q_ovp & (ins.src1 & 3).any()) | (op_rope & ins.src1[2]))  # the RoPE record (float64) is 8-byte aligned
                # quant's imm rules (docs/isa.md Validity) and the OVP4 record: 16 bytes in range, off the result
                ovp_rec_end, ovp_dst_end = ins.src1 + 16, ins.dst + (n_elems >> 1)
                bad_range = bad_range | (q_ovp & (ovp_rec_end > self.space_bytes))
                quant_field = op_quant & (ins.imm[19:].any() | (ins.imm[18] & ~ins.imm[17])
                                          | (q_ovp & (ins.imm[:17].any() | ins.cols[0]
                                                      | ((ins.src1 < ovp_dst_end) & (ins.dst < ovp_rec_end)))))
                # vshift: 3 * cols bytes of V at src1 (any byte), the P' block's e_ref bytes after dst's int32s
                # (shifts and adds: no multiplier for the constant factors)
                bad_range = bad_range | (op_vshift & ((ins.src1 + (ins.cols << 1) + ins.cols > self.space_bytes)
                                                      | (ins.dst + (n_elems << 2) + ins.rows > self.space_bytes)))
                vs_period = Mux(ins.imm[16:] == 0, 1, ins.imm[16:])
                # the query position rule of vshift and of softmax with mask = 1 (docs/isa.md Validity)
                qpos_beyond = ins.imm[:16] + Mux(ins.rows < vs_period, ins.rows, vs_period) - 1 >= ins.cols
                op_softmax = ins.op == MISC_OPS.index("softmax")
                bad_field = (quant_field | (op_rope & ins.cols[0])
                             | ((op_vshift | (op_softmax & ins.mask)) & qpos_beyond))
                # overlap (docs/isa.md Validity): dst against src0 (and src1 of add / mul / swiglu), byte
                # ranges; quant's INT8 block size is known in Q_CHECK, where its overlap is checked
                dst_bytes = Mux(op_vshift, (n_elems << 2) + ins.rows, n_elems << 2)
                in_place = _op_in(ins.op, IN_PLACE_OPS) & (ins.src0 == ins.dst)
                bad_overlap = ~op_quant & (
                    (_overlaps(ins.src0, n_src0 << 2, ins.dst, dst_bytes) & ~in_place)
                    | (_op_in(ins.op, SRC1_MATRIX_OPS) & _overlaps(ins.src1, n_elems << 2, ins.dst, dst_bytes)
                       & (ins.src1 != ins.dst)))
                with m.If(op_reserved):
                    m.d.comb += err_code.eq(SfuError.RESERVED_OP)
                with m.Elif(~op_built | (q_ovp & (ovp_core is None))):
                    m.d.comb += err_code.eq(SfuError.NOT_BUILT)
                with m.Elif((ins.rows == 0) | (ins.cols == 0)):
                    m.d.comb += err_code.eq(SfuError.ZERO_SHAPE)
                with m.Elif(ins.cols > op_max_cols):
                    m.d.comb += err_code.eq(SfuError.ROW_TOO_LONG)
                with m.Elif(bad_field):
                    m.d.comb += err_code.eq(SfuError.BAD_FIELD)
                with m.Elif(unaligned):
                    m.d.comb += err_code.eq(SfuError.UNALIGNED)
                # docs/isa.md Validity: the stride is a multiple of 16 and holds pad16(cols) codes + 16
                with m.Elif(op_dequant & (ins.imm[:4].any() | (ins.imm[4:] < (ins.cols + 15)[4:] + 1))):
                    m.d.comb += err_code.eq(SfuError.BAD_RECORD)
                with m.Elif(bad_range):
                    m.d.comb += err_code.eq(SfuError.OUT_OF_RANGE)
                with m.Elif(bad_overlap):
                    m.d.comb += err_code.eq(SfuError.OVERLAP)
                with m.If(err_code != 0):
                    m.d.sync += finish_with_error(err_code)
                    m.d.sync += state.eq(_State.IDLE)
                with m.Else():
                    m.d.sync += [r_row.eq(0), r_pass.eq(0), r_slot.eq(0), r_op1.eq(0), r_done.eq(0),
                                 ra0.eq(e_src0), ra1.eq(Mux(op_rope, e_src0 + (ins.cols >> 1), e_src1)), w_row.eq(0),
                                 w_beat.eq(0), wa.eq(e_dst), c_row.eq(0), pr_step.eq(0)]
                    if has_dequant:  # the multiplier word of record 0: element pad16(cols) / 4 of it
                        m.d.sync += [scan_addr.eq(e_src0 + (((ins.cols + 15) >> 4) << 2)), scan_left.eq(ins.rows),
                                     scan_valid.eq(0), scan_bad.eq(0)]
                    m.d.sync += state.eq(Mux(op_norm, _State.PARAM_READ, Mux(op_quant, _State.Q_DIV,
                                             Mux(op_rope, _State.ROPE_SETUP, Mux(op_dequant, _State.D_SCAN, _State.RUN)))))
                    if has_rope:
                        m.d.comb += rope_setup.start.eq(op_rope)
            if need_sqrt:  # only an instance with a norm has the parameter states
                with m.Case(_State.PARAM_READ):
                    # two reads: the words holding elements src1/4 + cols and + cols + 1 (eps
                    # multiplier and shift); the data arrives one cycle after each read
                    table = e_src1 + ins.cols
                    m.d.comb += [self.rd.addr.eq((table >> lb) + pr_step[0]), self.rd.en.eq(~pr_step[1])]
                    with m.If(pr_step != 2):
                        m.d.sync += pr_step.eq(pr_step + 1)
                    word_lanes = Array(self.rd.data[32 * j: 32 * (j + 1)] for j in range(lanes))
                    off = _lane_index(table, lb) if lb else Const(0, 1)
                    with m.If(pr_step == 1):
                        m.d.sync += eps_mult.eq(word_lanes[off] if lb else word_lanes[0])
                        if lanes > 1:
                            with m.If(off != mask):
                                m.d.sync += eps_shift.eq(word_lanes[_lane_index(table + 1, lb)])
                    with m.If(pr_step == 2):
                        m.d.sync += [eps_acc.eq(0), eps_mc.eq(eps_mult[:31]), eps_mp.eq(ins.cols[:15])]
                        if lanes > 1:
                            with m.If(off == mask):
                                m.d.sync += eps_shift.eq(word_lanes[0])
                        else:
                            m.d.sync += eps_shift.eq(word_lanes[0])
                        m.d.comb += sqrt_unit.i.valid.eq(1)
                        with m.If(sqrt_unit.i.ready):
                            m.d.sync += state.eq(_State.PARAM_SQRT)
                with m.Case(_State.PARAM_SQRT):
                    with m.If(eps_mp != 0):
                        m.d.sync += [eps_acc.eq(eps_acc + Mux(eps_mp[0], eps_mc, 0)), eps_mc.eq(eps_mc << 1),
                                     eps_mp.eq(eps_mp >> 1)]
                    # E(0) >= 2**61 only for a left shift (eps_shift < 32): d * eps_mult >= 2**(29 + shift)
                    e0_big = (eps_shift < 32) & ((eps_acc >> (eps_shift[:5] + 29)) != 0)
                    bad_eps = eps_mult[31] | (eps_shift > 62) | e0_big   # (a negative int32 shift is > 62 unsigned)
                    with m.If(sqrt_unit.o.valid & bad_eps):
                        m.d.sync += finish_with_error(SfuError.BAD_EPS)
                        m.d.sync += state.eq(_State.IDLE)
                    with m.Elif(sqrt_unit.o.valid):
                        root, rem = sqrt_unit.o.p.root, sqrt_unit.o.p.remainder
                        rounded = root + (rem > root)           # round half up of sqrt(cols << 2k)
                        with m.If(rounded[31]):                  # carry to 2**31: (2**30, shift - 1)
                            m.d.sync += [sqrt_mult.eq(1 << 30), sqrt_shift.eq(30 - sqrt_e)]
                        with m.Else():
                            m.d.sync += [sqrt_mult.eq(rounded), sqrt_shift.eq(31 - sqrt_e)]
                        m.d.sync += state.eq(_State.RUN)
            if has_dequant:
                with m.Case(_State.D_SCAN):
                    # one multiplier word read per cycle (rows + 2 cycles), bit 31 checked as it arrives
                    scan_issue = scan_left != 0
                    m.d.comb += [self.rd.addr.eq(scan_addr >> lb), self.rd.en.eq(scan_issue)]
                    m.d.sync += [scan_valid.eq(scan_issue), scan_lane.eq(_lane_index(scan_addr, lb) if lb else 0)]
                    with m.If(scan_issue):
                        m.d.sync += [scan_addr.eq(scan_addr + rd_stride), scan_left.eq(scan_left - 1)]
                    scan_words = Array(self.rd.data[32 * j + 31] for j in range(lanes))
                    with m.If(scan_valid & (scan_words[scan_lane] if lb else scan_words[0])):
                        m.d.sync += scan_bad.eq(1)
                    with m.If(~scan_issue & ~scan_valid):
                        with m.If(scan_bad):
                            m.d.sync += finish_with_error(SfuError.BAD_MULTIPLIER)
                            m.d.sync += state.eq(_State.IDLE)
                        with m.Else():
                            m.d.sync += state.eq(_State.RUN)
            if has_quant:
                with m.Case(_State.Q_DIV):
                    m.d.comb += q_div.i.valid.eq(1)
                    with m.If(q_div.i.ready):
                        m.d.sync += state.eq(_State.Q_GEOM)
                with m.Case(_State.Q_GEOM):
                    with m.If(q_div.o.valid):
                        t_rows = q_div.o.p.quotient
                        m.d.sync += [q_trows.eq(t_rows), q_tc.eq(shift_add_product(m, ins.cols, t_rows, name="q_tc")),
                                     q_blk.eq((shift_add_product(m, ins.cols + 3, t_rows, name="q_blk") + 63) & ~63),
                                     q_bad.eq((q_div.o.p.remainder != 0) | q_div.o.p.overflow)]
                        m.d.sync += state.eq(_State.Q_CHECK)
                with m.Case(_State.Q_CHECK):
                    total = Mux(q_ovp, n_elems >> 1, Mux(q_groups > 1, shift_add_product(m, q_blk, q_groups, name="q_total"),
                                                         n_elems + (ins.rows << 1) + ins.rows))
                    q_range = ins.dst + total > self.space_bytes
                    q_overlap = _overlaps(ins.src0, n_elems << 2, ins.dst, total)   # src0: rows x cols int32
                    with m.If(q_bad | q_range | q_overlap):
                        m.d.sync += finish_with_error(Mux(q_bad, SfuError.BAD_GROUPS,
                                                          Mux(q_range, SfuError.OUT_OF_RANGE, SfuError.OVERLAP)))
                        m.d.sync += state.eq(_State.IDLE)
                    with m.Else():
                        m.d.sync += [q_base.eq(ins.dst), q_acode.eq(ins.dst), q_h.eq(0), q_t.eq(0), q_tcols.eq(0),
                                     q_phase.eq(0), q_carry.eq(0), pr_step.eq(0)]
                        m.d.sync += state.eq(Mux(q_ovp, _State.Q_PARAM, _State.RUN))
                with m.Case(_State.Q_PARAM):
                    # the OVP4 record's multiplier and shift: the words holding elements src1/4 and
                    # src1/4 + 1 (two reads when they straddle a word); the data rule on the multiplier
                    rec = e_src1
                    m.d.comb += [self.rd.addr.eq((rec >> lb) + pr_step[0]), self.rd.en.eq(~pr_step[1])]
                    rec_lanes = Array(self.rd.data[32 * j: 32 * (j + 1)] for j in range(lanes))
                    rec_off = _lane_index(rec, lb) if lb else Const(0, 1)
                    shift_word = Mux(rec_off == mask, rec_lanes[0], q_ovp_shift) if lanes > 1 else rec_lanes[0]
                    with m.If(pr_step == 1):
                        m.d.sync += [q_ovp_mult.eq(rec_lanes[rec_off]), pr_step.eq(2)]
                        if lanes > 1:
                            m.d.sync += q_ovp_shift.eq(rec_lanes[_lane_index(rec + 1, lb)])
                    with m.Elif(pr_step == 2):
                        m.d.sync += q_ovp_s.eq(clamp_shift(shift_word.as_signed()))
                        with m.If(q_ovp_mult[MULT_BITS]):
                            m.d.sync += finish_with_error(SfuError.BAD_MULTIPLIER)
                            m.d.sync += state.eq(_State.IDLE)
                        with m.Else():
                            m.d.sync += state.eq(_State.RUN)
                    with m.Else():
                        m.d.sync += pr_step.eq(1)
            if has_rope:
                with m.Case(_State.ROPE_SETUP):
                    m.d.comb += [self.rd.addr.eq(rope_setup.rd_addr), self.rd.en.eq(rope_setup.rd_en)]
                    with m.If(rope_setup.done):
                        with m.If(rope_setup.code != 0):
                            m.d.sync += finish_with_error(rope_setup.code)
                            m.d.sync += state.eq(_State.IDLE)
                        with m.Else():
                            m.d.sync += state.eq(_State.RUN)
            with m.Default():  # RUN
                m.d.comb += running.eq(1)
                # every read beat consumed (dequant takes a record's words past its codes without
                # output: none may be left in the FIFO for the next instruction)
                # (rope writes each row as two halves: one writer row per pass)
                with m.If(r_done & (w_row == Mux(op_rope, ins.rows << 1, ins.rows)) & ~flush & (outstanding == 0)):
                    m.d.sync += [status.error.eq(vs_error), status.code.eq(Mux(vs_error, SfuError.BAD_DATA, 0)),
                                 status.offset.eq(ins.offset),
                                 status.busy.eq(0), status.done.eq(1), status.cycles.eq(cycles)]
                    m.d.sync += state.eq(_State.IDLE)
        with m.If(status.busy):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- reader: one read slot per cycle
        last_pass = Signal()
        m.d.comb += last_pass.eq(r_pass == op_passes - 1)
        two_now = Signal()
        m.d.comb += two_now.eq(op_two & (last_pass | op_rope))     # rope: both halves in both passes
        # vshift's load passes: their own segment (start, length) per pass
        if has_vshift:
            vs_load_v, vs_load_m = op_vshift & (r_pass == 0), op_vshift & (r_pass == 1)
            seg_cols = Signal(22)
            m.d.comb += seg_cols.eq(Mux(vs_load_v, vs_words_v, Mux(vs_load_m, vs_words_m, rd_cols)))
            seg_beats, seg_last = Signal(21), Signal(range(lanes + 1))
            m.d.comb += [seg_beats.eq(Mux(op_vshift, (seg_cols + mask) >> lb, beats)),
                         seg_last.eq(Mux(op_vshift, ((seg_cols - 1) & mask) + 1, last_count))]
            ra = Mux(r_op1, ra1, Mux(vs_load_v, e_src1, Mux(vs_load_m, vs_elem_m, ra0)))
        else:
            seg_cols, seg_beats, seg_last = rd_cols, beats, last_count
            ra = Mux(r_op1, ra1, ra0)
        word_first = ra >> lb
        word_last = (ra + seg_cols - 1) >> lb
        word = Signal(ea_bits)
        m.d.comb += word.eq(word_first + r_slot)
        produce = r_slot != 0
        issue = Signal()
        m.d.comb += issue.eq(running & ~r_done & (r_op1 | ~produce | (outstanding < depth)))
        with m.If(running):
            m.d.comb += [self.rd.addr.eq(word), self.rd.en.eq(issue & (word <= word_last))]
        # the slot's bookkeeping, aligned with the read data one cycle later
        p_valid, p_op1, p_produce, p_first, p_last = Signal(), Signal(), Signal(), Signal(), Signal()
        p_count, p_pass, p_off = Signal(range(lanes + 1)), Signal(2), Signal(range(lanes))
        m.d.sync += [p_valid.eq(issue), p_op1.eq(r_op1), p_produce.eq(produce), p_first.eq(r_slot == 1),
                     p_last.eq(r_slot == seg_beats), p_count.eq(Mux(r_slot == seg_beats, seg_last, lanes)),
                     p_pass.eq(r_pass), p_off.eq(ra & mask)]
        with m.If(issue):
            with m.If(two_now & ~r_op1):
                m.d.sync += r_op1.eq(1)
            with m.Else():
                m.d.sync += r_op1.eq(0)
                with m.If(r_slot == seg_beats):
                    m.d.sync += r_slot.eq(0)
                    with m.If(last_pass):   # (vshift loads V in the first row's passes 0 and 1 only)
                        m.d.sync += [r_pass.eq(Mux(op_vshift, 2, 0)), r_row.eq(r_row + 1), ra0.eq(ra0 + rd_stride),
                                     ra1.eq(Mux(op_src1_rows, ra1 + ins.cols, ra1))]
                        with m.If(r_row == ins.rows - 1):
                            m.d.sync += r_done.eq(1)
                    with m.Else():
                        m.d.sync += r_pass.eq(r_pass + 1)
                with m.Else():
                    m.d.sync += r_slot.eq(r_slot + 1)

        # read aligner: rotate the word by the row's lane offset, join with the previous word
        words_in = Array(self.rd.data[32 * j: 32 * (j + 1)] for j in range(lanes))
        rotated = [Signal(32, name=f"rd_rot{j}") for j in range(lanes)]
        for j in range(lanes):
            m.d.comb += rotated[j].eq(words_in[_lane_index(j + p_off, lb)] if lb else words_in[0])
        prev = [Signal(data.ArrayLayout(unsigned(32), lanes), name=f"rd_prev{k}") for k in range(streams)]
        for k in range(streams):
            beat = Signal(blayout, name=f"rd_beat{k}")
            for j in range(lanes):
                joined = Mux(j < lanes - p_off, prev[k][j], rotated[j])
                m.d.comb += beat.data[j].eq(Mux(j < p_count, joined, 0))
            m.d.comb += [beat.count.eq(p_count), beat.first.eq(p_first), beat.last.eq(p_last),
                         beat.pass_.eq(p_pass)]
            mine = p_valid & (p_op1 == k)
            with m.If(mine):
                m.d.sync += prev[k].eq(Cat(*rotated))
            m.d.comb += [fifos[k].w_data.eq(beat), fifos[k].w_en.eq(mine & p_produce)]

        # ---- route the FIFOs into the selected core and its output to the writer
        in_beats = [data.View(blayout, fifos[k].r_data) for k in range(streams)]
        out_valid, out_ready = Signal(), Signal()
        out_beat = Signal(blayout)
        take0, take1 = Signal(), (Signal() if streams == 2 else None)
        routes = list(cores.items()) + ([("quant_ovp4", ovp_core)] if ovp_core is not None else [])
        for op, core in routes:
            misc_op = "quant" if op == "quant_ovp4" else op
            spec = OP_CORES[misc_op]
            sel = running & (ins.op == MISC_OPS.index(misc_op))
            if misc_op == "quant":  # the mode bit picks QuantCore or the OVP4 encoder
                sel = sel & (q_ovp if op == "quant_ovp4" else ~q_ovp)
            m.d.comb += [core.i.payload.eq(in_beats[0]), core.i.valid.eq(sel & fifos[0].r_rdy)]
            with m.If(sel):
                m.d.comb += [take0.eq(core.i.valid & core.i.ready), out_valid.eq(core.o.valid),
                             out_beat.eq(core.o.payload), core.o.ready.eq(out_ready)]
            if spec.operands == 2:
                m.d.comb += [core.g.payload.eq(in_beats[1]), core.g.valid.eq(sel & fifos[1].r_rdy)]
                with m.If(sel):
                    m.d.comb += take1.eq(core.g.valid & core.g.ready)
            elif "g" in core.signature.members:
                m.d.comb += core.g.valid.eq(0)      # a core with an unused second input
            if op == "rmsnorm":
                m.d.comb += [core.params.cols.eq(ins.cols), core.params.eps_mult.eq(eps_mult),
                             core.params.eps_shift.eq(eps_shift), core.params.sqrt_mult.eq(sqrt_mult),
                             core.params.sqrt_shift.eq(sqrt_shift)]
            elif op == "dequant":
                m.d.comb += core.params.cols.eq(ins.cols)
            elif op == "quant":
                m.d.comb += [core.params.pow2.eq(ins.imm[16])]
                with m.If(~q_ovp):
                    m.d.comb += [q_row_e.eq(core.row_exp), q_row_m.eq(core.row_mant)]
            elif op == "quant_ovp4":
                m.d.comb += [core.params.mult.eq(q_ovp_mult[:MULT_BITS]), core.params.s.eq(q_ovp_s),
                             core.params.flint4.eq(ins.imm[18])]
            elif op == "softmax":
                m.d.comb += [core.params.mask.eq(ins.mask), core.params.qpos_base.eq(ins.imm[:16]),
                             core.params.qpos_period.eq(ins.imm[16:]), core.params.row.eq(c_row)]
            elif op == "rope":
                m.d.comb += [core.params.pos_base.eq(ins.imm[:16]), core.params.per.eq(ins.imm[16:]),
                             core.params.row.eq(c_row)]
            elif op == "vshift":
                m.d.comb += [core.params.qpos_base.eq(ins.imm[:16]), core.params.qpos_period.eq(ins.imm[16:]),
                             core.params.row.eq(c_row), core.params.cols.eq(ins.cols), core.params.off_v.eq(vs_off_v),
                             core.params.off_m.eq(vs_off_m), vs_row_e.eq(core.row_exp), vs_error.eq(core.error)]
        with m.If(take0 & in_beats[0].last & (in_beats[0].pass_ == op_passes - 1)):
            m.d.sync += c_row.eq(c_row + 1)
        m.d.comb += fifos[0].r_en.eq(take0)
        if streams == 2:
            m.d.comb += fifos[1].r_en.eq(take1)
        m.d.sync += outstanding.eq(outstanding + (issue & produce & ~r_op1) - take0)

        # ---- writer: rotate each result beat to the destination offset, carry the overhang
        if has_quant:
            m.d.comb += out_ready.eq(running & Mux(op_quant, q_phase == 0, ~flush & ~vs_phase))
        else:
            m.d.comb += out_ready.eq(running & ~flush & ~vs_phase)
        w_off = Signal(range(lanes))
        m.d.comb += w_off.eq(wa & mask)
        w_base = wa >> lb
        beat_lanes = Array(out_beat.data[j] for j in range(lanes))
        wrot = [Signal(32, name=f"wr_rot{j}") for j in range(lanes)]
        for j in range(lanes):
            m.d.comb += wrot[j].eq(beat_lanes[_lane_index(j - w_off, lb)] if lb else beat_lanes[0])
        lane_en = Signal(lanes)
        word_out = Signal(32 * lanes)
        for j in range(lanes):
            mine = (w_off <= j) if j < lanes - 1 else Const(1)   # (the last lane: always)
            m.d.comb += [word_out[32 * j: 32 * (j + 1)].eq(Mux(mine, wrot[j], carry[j])),
                         lane_en[j].eq(Mux(mine, ((j - w_off) & mask) < out_beat.count, ~out_beat.first))]
        accept = out_valid & out_ready
        with m.If(~op_quant):
            with m.If(flush):
                m.d.comb += [self.wr.addr.eq(flush_addr), self.wr.data.eq(carry),
                             self.wr.en.eq(Cat(*[Mux(flush_en[j], 0xF, 0) for j in range(lanes)]))]
                m.d.sync += flush.eq(0)
            with m.Elif(accept):
                m.d.comb += [self.wr.addr.eq(w_base + w_beat), self.wr.data.eq(word_out),
                             self.wr.en.eq(Cat(*[Mux(lane_en[j], 0xF, 0) for j in range(lanes)]))]
                m.d.sync += carry.eq(Cat(*wrot))
                with m.If(out_beat.last):   # (rope: a row's halves are two writer rows; vshift counts at its e_ref byte)
                    m.d.sync += [w_beat.eq(0), wa.eq(wa + Mux(op_rope, ins.cols >> 1, ins.cols)),
                                 w_row.eq(w_row + ~op_vshift)]
                    if has_vshift:
                        m.d.sync += [vs_phase.eq(op_vshift), vs_e.eq(vs_row_e)]
                    with m.If((w_off != 0) & (out_beat.count > lanes - w_off)):
                        m.d.sync += [flush.eq(1), flush_addr.eq(w_base + w_beat + 1),
                                     flush_en.eq(Cat(*[((j < w_off) & (j + lanes - w_off < out_beat.count))
                                                       if j < lanes - 1 else Const(0)  # lane L-1: never
                                                       for j in range(lanes)]))]
                with m.Else():
                    m.d.sync += w_beat.eq(w_beat + 1)
        if has_vshift:  # the row's e_ref byte after the P' block's int32s, once the row's words are out
            wb = lb + 2
            e_addr = Signal(32)
            m.d.comb += e_addr.eq(ins.dst + (n_elems << 2) + w_row)
            with m.If(vs_phase & ~flush):
                m.d.comb += [self.wr.addr.eq(e_addr >> wb), self.wr.data.eq(Cat(*[vs_e] * (4 * lanes))),
                             self.wr.en.eq(Const(1, 4 * lanes) << e_addr[:wb])]
                m.d.sync += [vs_phase.eq(0), w_row.eq(w_row + 1)]
            with m.If(vs_error):   # a V mantissa above 256 (loaded before any row): nothing is written
                m.d.comb += self.wr.en.eq(0)
        if has_quant:
            self._quant_writer(m, op_quant, accept, out_beat, ins, q_row_e, q_row_m, q_phase, q_carry, q_e, q_m,
                               q_hi_data, q_hi_en, q_hi_addr, q_acode, q_base, q_tc, q_trows, q_tcols, q_blk, q_h,
                               q_t, q_groups, w_row, q_ovp)
        return m

    def _quant_writer(self, m, op_quant, accept, out_beat, ins, row_e, row_m, q_phase, q_carry, q_e, q_m,
                      q_hi_data, q_hi_en, q_hi_addr, q_acode, q_base, q_tc, q_trows, q_tcols, q_blk, q_h, q_t,
                      q_groups, w_row, ovp):
        """The INT8 block writer of quant: each beat's ``count`` code bytes at byte address
        ``q_acode`` through a 2-word byte window (a second write when they straddle a word), then
        per row the exponent byte and the two mantissa bytes (byte-enabled single writes).
        In OVP4 mode (``ovp``) the rows' pair-code bytes follow each other with no row data in
        between: an overhang carries into the next row's first write, only the last row's is
        written on its own."""
        lanes, lb = self.lanes, self.lane_bits
        wbytes, wb = 4 * lanes, lb + 2
        off = Signal(wb)
        m.d.comb += off.eq(q_acode[:wb])
        codes = Array(out_beat.data[j][:8] for j in range(lanes))
        win = [Signal(8, name=f"q_win{k}") for k in range(2 * wbytes)]
        win_en = Signal(2 * wbytes)
        for k in range(2 * wbytes):
            rel = Signal(wb + 1, name=f"q_rel{k}")
            m.d.comb += rel.eq(k - off)
            at_or_after = (k >= off) if k < wbytes - 1 else Const(1)  # (k >= every offset: no constant compare)
            m.d.comb += [win_en[k].eq(at_or_after & (rel < out_beat.count)),
                         win[k].eq(Mux(win_en[k], codes[rel[:lb]] if lb else codes[0], 0))]
        e_addr = Signal(32)
        m_addr = Signal(32)
        m.d.comb += [e_addr.eq(q_base + q_tc + q_t), m_addr.eq(q_base + q_tc + q_trows + (q_t << 1))]

        def byte_write(addr, value):
            m.d.comb += [self.wr.addr.eq(addr >> wb), self.wr.data.eq(Cat(*[value[:8]] * wbytes)),
                         self.wr.en.eq(Const(1, wbytes) << addr[:wb])]

        with m.If(op_quant):
            with m.Switch(q_phase):
                with m.Case(0):
                    with m.If(accept):
                        # the previous beat's overhang (bytes below off of this same word) joins in
                        carry_en = Mux(q_carry, q_hi_en, 0)
                        m.d.comb += [self.wr.addr.eq(q_acode >> wb),
                                     self.wr.data.eq(Cat(*win[:wbytes]) | Mux(q_carry, q_hi_data, 0)),
                                     self.wr.en.eq(win_en[:wbytes] | carry_en)]
                        m.d.sync += [q_acode.eq(q_acode + out_beat.count), q_carry.eq(win_en[wbytes:].any()),
                                     q_hi_data.eq(Cat(*win[wbytes:])), q_hi_en.eq(win_en[wbytes:]),
                                     q_hi_addr.eq((q_acode >> wb) + 1)]
                        with m.If(out_beat.last & ovp):
                            last_row = w_row == ins.rows - 1
                            with m.If(last_row & win_en[wbytes:].any()):
                                m.d.sync += q_phase.eq(1)
                            with m.Else():
                                m.d.sync += w_row.eq(w_row + 1)
                        with m.Elif(out_beat.last):
                            m.d.sync += [q_e.eq(row_e), q_m.eq(row_m),
                                         q_phase.eq(Mux(win_en[wbytes:].any(), 1, 2))]
                with m.Case(1):  # a row's last overhang: its own write
                    m.d.comb += [self.wr.addr.eq(q_hi_addr), self.wr.data.eq(q_hi_data), self.wr.en.eq(q_hi_en)]
                    m.d.sync += [q_phase.eq(Mux(ovp, 0, 2)), q_carry.eq(0)]
                    with m.If(ovp):
                        m.d.sync += w_row.eq(w_row + 1)
                with m.Case(2):
                    byte_write(e_addr, q_e)
                    m.d.sync += q_phase.eq(3)
                with m.Case(3):
                    byte_write(m_addr, q_m[:8])
                    m.d.sync += q_phase.eq(4)
                with m.Default():
                    byte_write(m_addr + 1, q_m[8:])
                    m.d.sync += [q_phase.eq(0), w_row.eq(w_row + 1)]
                    # the next input row t*G + h: block h + 1, or row t + 1 of block 0
                    with m.If(q_h + 1 >= q_groups):
                        m.d.sync += [q_h.eq(0), q_t.eq(q_t + 1), q_base.eq(ins.dst), q_tcols.eq(q_tcols + ins.cols),
                                     q_acode.eq(ins.dst + q_tcols + ins.cols)]
                    with m.Else():
                        m.d.sync += [q_h.eq(q_h + 1), q_base.eq(q_base + q_blk),
                                     q_acode.eq(q_base + q_blk + q_tcols)]


class SfuHarness(wiring.Component):
    """An :class:`Sfu` on a ``Memory`` standing for the data space, with a host port (for tests,
    the check command and cocotb).

    Ports: ``instr`` and ``status`` as the SFU's; ``host_wr_addr``/``host_wr_data``/``host_wr_en``
    (byte enables) write the memory when the SFU does not (the SFU's write wins); ``host_rd_addr``
    -> ``host_rd_data`` one cycle later (a second read port). Word = ``4 * lanes`` bytes.
    """

    def __init__(self, config: AcceleratorConfig, *, ops: tuple[str, ...] | None = None, rope: RopeRom | None = None):
        self.sfu = Sfu(config, ops=ops, rope=rope)
        self.lanes, self.words, aw = self.sfu.lanes, self.sfu.words, self.sfu.addr_width
        width = 32 * self.lanes
        self.memory = Memory(shape=unsigned(width), depth=self.words, init=[])
        super().__init__({
            "instr": In(stream.Signature(INSTR_LAYOUT)),
            "status": Out(STATUS_LAYOUT),
            "host_wr_addr": In(aw), "host_wr_data": In(width), "host_wr_en": In(width // 8),
            "host_rd_addr": In(aw), "host_rd_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.sfu = sfu = self.sfu
        m.submodules.memory = mem = self.memory
        rd = mem.read_port()
        wr = mem.write_port(granularity=8)
        host_rd = mem.read_port()
        wiring.connect(m, wiring.flipped(self.instr), sfu.instr)
        m.d.comb += [self.status.eq(sfu.status),
                     rd.addr.eq(sfu.rd.addr), rd.en.eq(sfu.rd.en), sfu.rd.data.eq(rd.data),
                     host_rd.addr.eq(self.host_rd_addr), self.host_rd_data.eq(host_rd.data)]
        with m.If(sfu.wr.en.any()):
            m.d.comb += [wr.addr.eq(sfu.wr.addr), wr.data.eq(sfu.wr.data), wr.en.eq(sfu.wr.en)]
        with m.Else():
            m.d.comb += [wr.addr.eq(self.host_wr_addr), wr.data.eq(self.host_wr_data), wr.en.eq(self.host_wr_en)]
        return m


def small_config(**overrides) -> AcceleratorConfig:
    """A small test configuration: 4 lanes (sfu_dsp 16), a 16 KiB data space."""
    from .config import BufferConfig

    params = dict(board="u280", cores=1, chains_per_core=1, chain_length=2, sfu_dsp=16,
                  buffers=BufferConfig(weight_kib=4, activation_kib=8, global_kib=8, meta_kib=4, bias_kib=4))
    params.update(overrides)
    return AcceleratorConfig(**params)


@register_unit("sfu")
def _resource_unit(config: str = "small", ops: str = "", sfu_dsp: int = 0, rope: str = ""):
    """The SFU (``olivine resources sfu --config u280 [--ops add,mul] [--sfu_dsp 64] [--rope smollm2]``).

    ``config``: "small" (the SFU tests' configuration: 4 lanes, 16 KiB data space) or a board name (its default configuration);
    ``rope``: a RoPE ROM preset (hw/sfu_rope.py ROM_PRESETS; none: rope is not built).
    """
    from .sfu_rope import preset_rom

    from .config import for_board

    cfg = small_config() if config == "small" else for_board(config)
    if int(sfu_dsp):
        cfg = cfg.replace(sfu_dsp=int(sfu_dsp))
    op_list = tuple(o for o in str(ops).split(",") if o) or None
    dut = Sfu(cfg, ops=op_list, rope=preset_rom(str(rope)) if rope else None)
    tag = ("_".join(op_list) if op_list else "all") + (f"_{rope}" if rope else "")
    return dut, f"sfu_{config}_{dut.lanes}l_{tag}"
