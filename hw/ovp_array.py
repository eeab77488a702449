"""Output-stationary OVP systolic array (OliVe's W4A4 array, and its 8-bit mode).

Computes one output tile ``C[i, j] = sum_k A[i, k] * B[j, k]`` (A: rows x K activations, B:
cols x K weights, both OVP-coded with pairs along K, as a linear layer stores them), wrapped to
int32, exactly as the integer matmul of the OVP grid values.

Decoders sit only on the borders: one :class:`~olivine.hw.ovp_decoder.OvpPairDecoder` per row of
A and per column of B (rows + cols decoders). Each decoder sees one pair code every two cycles and
feeds its two operands (even, then odd element) into the array on consecutive cycles.

8-bit mode (``bits=8``): every 8-bit operand (exponent e, integer x, x in -127..127 or +-16..31)
is split into two nibble operands, high = (e + 4, x >> 4) with an arithmetic shift (-8..7) and
low = (e, x & 15) (unsigned 0..15). x == (x >> 4) * 16 + (x & 15) holds for every two's-complement
x, so the split is exact for negative values. A physical array of 2 rows x 2 cols PEs per logical
output computes the four nibble products; a nibble PE shifts its product by the SUM of its two
nibble exponents (so high x high products get + 8, mixed ones + 4); the four accumulators of a
logical output are added (modulo 2**32) when the tile is drained. The nibble PEs need 5-bit signed
multiplier inputs (the low nibble is unsigned) and 4-bit exponents (up to 10 + 4).
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from olivine.golden.ovp_format import get_format

from .ovp_decoder import DECODER_NORMALS, OvpPairDecoder, operand_widths, quiet_rejection, unit_normal
from .ovp_pe import OvpProcessingElement
from .resources import register_unit

__all__ = ["OvpArrayError", "OvpSystolicArray", "ARRAY_NORMALS", "LINT_WAIVERS"]

#: ``normal`` values the array accepts (as for the decoder).
ARRAY_NORMALS = DECODER_NORMALS


#: Verilator ``-Wall`` warnings of the generated array that are not design problems, for
#: ``olivine.hw.export.lint(text, top, waivers=LINT_WAIVERS)``. The decoder and the PE lint
#: clean on their own; everything below is naming left behind by Amaranth's hierarchical Verilog
#: (a net keeps one name; the other names become assigned-but-unread alias wires) or the
#: inherently unconnected forwarding registers at the array's far edges.
_ALIAS = ("Amaranth debug alias: the parent declares a second name for a net (a payload view "
          "field, a held-register element, a skew register or a submodule port) and drives the "
          "logic from the first name; the alias itself is never read")
LINT_WAIVERS: dict[str, str] = {
    "UNUSEDSIGNAL:*__payload*": _ALIAS,
    "UNUSEDSIGNAL:held_*": _ALIAS,
    "UNUSEDSIGNAL:*_skew*": _ALIAS,
    "UNUSEDSIGNAL:pair": _ALIAS,
    "UNUSEDSIGNAL:flint": _ALIAS,
    "UNUSEDSIGNAL:clear_pending": _ALIAS,
    "UNUSEDSIGNAL:step_in__*": _ALIAS,
    "UNUSEDSIGNAL:a_in__*": _ALIAS,
    "UNUSEDSIGNAL:b_in__*": _ALIAS,
    "UNUSEDSIGNAL:a_out__*": "PEs of the last column forward A to no neighbour (and the last row "
                             "forwards B to none): those registers are dead by construction and "
                             "synthesis removes them; keeping one PE design is worth it",
    "UNUSEDSIGNAL:b_out__*": "as a_out__*: the last row's forwarded B has no neighbour",
    "UNUSEDSIGNAL:step_out__*": "as a_out__*: the last column's forwarded step control",
}


class _Phase(enum.Enum, shape=2):
    COMPUTE = 0
    FLUSH = 1
    DRAIN = 2


class OvpArrayError(ValueError):
    """An OVP systolic array was asked for an unsupported configuration."""


class OvpSystolicArray(wiring.Component):
    """R x C output-stationary systolic array of OVP shift-MAC PEs with border decoders.

    Parameters
    ----------
    rows, cols : int
        Output tile shape (logical; in 8-bit mode the PE grid is 2*rows x 2*cols).
    normal : "int4" | "flint4" | "runtime" | "int8"
        Normal type of both operands. "runtime" adds ``a_flint``/``b_flint`` inputs selecting
        int4 (0) or flint4 (1) per operand tensor. "int8" is the 8-bit mode.
    bits : 4 | 8 | None
        Element width; None derives it from ``normal`` (8 only with "int8").
    acc_bits : int
        Accumulator width (32).

    Ports
    -----
    a : In(stream.Signature(StructLayout({"pairs": ArrayLayout(unsigned(2*bits), rows),
                                          "last": 1})))
        One pair code per row of A per transfer (elements 2k, 2k+1 of every row); ``last`` marks
        the final pair of the tile (K = 2 * number of transfers; K is even by construction).
    b : In(stream.Signature(ArrayLayout(unsigned(2*bits), cols)))
        One pair code per column (row of B, i.e. weight output channel) per transfer. ``a`` and
        ``b`` transfer together (a join: each one's ready waits for the other's valid).
    results : Out(stream.Signature(StructLayout({"values": ArrayLayout(signed(32), cols),
                                                 "last": 1})))
        After the tile, ``rows`` transfers, row 0 first; ``last`` marks the final row.
    a_flint, b_flint : In(1), only with ``normal="runtime"``; hold them for the whole tile.

    Skew is handled inside: physical row r (column c) is delayed by r (c) registers after its
    decoder, so callers stream plain, unskewed pair vectors.

    Latency and throughput: a pair transfer is accepted at most every 2 cycles (1 K step per
    cycle, full rate when both streams are always valid). After the ``last`` transfer the array
    flushes for PR + PC - 1 cycles (PR x PC physical PEs), then drains ``rows`` result transfers
    (one per cycle when ``results.ready`` is high) and accepts the next tile. One tile of depth K
    takes K + PR + PC + rows cycles at full rate; compute and drain do not overlap.
    """

    @quiet_rejection
    def __init__(self, rows: int, cols: int, *, normal: str = "int4", bits: int | None = None, acc_bits: int = 32):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OvpArrayError(f"{name} must be a positive integer, got {value!r}")
        if normal not in ARRAY_NORMALS:
            raise OvpArrayError(f"unknown normal type {normal!r}; expected one of {ARRAY_NORMALS}")
        natural_bits = 8 if normal == "int8" else 4
        if bits is None:
            bits = natural_bits
        if bits != natural_bits:
            raise OvpArrayError(
                f"bits={bits!r} does not match normal={normal!r}: 4-bit arrays take int4/flint4/runtime, "
                f"the 8-bit array takes normal='int8'"
            )
        if not isinstance(acc_bits, int) or acc_bits < 8:
            raise OvpArrayError(f"acc_bits must be an integer >= 8, got {acc_bits!r}")
        self.rows, self.cols, self.normal, self.bits, self.acc_bits = rows, cols, normal, bits, acc_bits
        self.split = 2 if bits == 8 else 1  # nibble PEs per logical operand
        self.pe_rows, self.pe_cols = rows * self.split, cols * self.split
        exp_bits, int_bits = operand_widths(normal)
        if bits == 8:  # nibble operands: exponent + 4 (high nibble), unsigned low nibble needs a sign bit
            largest_exponent = max(op[0] for op in get_format("int8").outlier_operands if op is not None)
            exp_bits, int_bits = (largest_exponent + 4).bit_length(), 5
        self.pe_exponent_bits, self.pe_integer_bits = exp_bits, int_bits
        self.flush_cycles = self.pe_rows + self.pe_cols - 1
        a_layout = data.StructLayout({"pairs": data.ArrayLayout(unsigned(2 * bits), rows), "last": 1})
        b_layout = data.ArrayLayout(unsigned(2 * bits), cols)
        result_layout = data.StructLayout({"values": data.ArrayLayout(signed(acc_bits), cols), "last": 1})
        members = {
            "a": In(stream.Signature(a_layout)),
            "b": In(stream.Signature(b_layout)),
            "results": Out(stream.Signature(result_layout)),
        }
        if normal == "runtime":
            members.update({"a_flint": In(1), "b_flint": In(1)})
        super().__init__(members)

    @property
    def decoder_count(self) -> int:
        """Border decoders: rows + cols."""
        return self.rows + self.cols

    def _nibble_operands(self, m: Module, exponent, integer):
        """Split one 8-bit operand into (high, low) nibble operands (see the module docstring)."""
        eb, ib = self.pe_exponent_bits, self.pe_integer_bits
        high = (Signal(eb), Signal(signed(ib)))
        low = (Signal(eb), Signal(signed(ib)))
        m.d.comb += [
            high[0].eq(exponent + 4),
            high[1].eq(integer >> 4),  # arithmetic shift: -8..7
            low[0].eq(exponent),
            low[1].eq(integer[0:4]),  # zero-extended: 0..15
        ]
        return [high, low]

    def elaborate(self, platform):
        m = Module()
        rows, cols, pr, pc = self.rows, self.cols, self.pe_rows, self.pe_cols
        eb, ib = self.pe_exponent_bits, self.pe_integer_bits

        # ---- input join and pair holding register ------------------------------------------
        held_a = Signal(data.ArrayLayout(unsigned(2 * self.bits), rows))
        held_b = Signal(data.ArrayLayout(unsigned(2 * self.bits), cols))
        held_valid = Signal()
        held_last = Signal()
        odd_phase = Signal()  # 0: feed the even elements of the held pairs, 1: the odd ones
        clear_pending = Signal(init=1)  # the next fed step starts a new tile
        computing = Signal()
        room = Signal()
        accept = Signal()
        m.d.comb += [
            room.eq(computing & (~held_valid | (odd_phase & ~held_last))),
            self.a.ready.eq(room & self.b.valid),
            self.b.ready.eq(room & self.a.valid),
            accept.eq(room & self.a.valid & self.b.valid),
        ]
        with m.If(held_valid):
            m.d.sync += [odd_phase.eq(~odd_phase), clear_pending.eq(0)]
            with m.If(odd_phase):
                m.d.sync += [held_valid.eq(0), held_last.eq(0)]
        with m.If(accept):
            m.d.sync += [
                held_a.eq(self.a.payload.pairs),
                held_b.eq(self.b.payload),
                held_last.eq(self.a.payload.last),
                held_valid.eq(1),
                odd_phase.eq(0),
            ]

        # ---- border decoders: rows + cols ----------------------------------------------------
        def border(name, held, count, flint):
            operands = []
            for idx in range(count):
                dec = OvpPairDecoder(self.normal)
                m.submodules[f"{name}_decoder{idx}"] = dec
                m.d.comb += dec.pair.eq(held[idx])
                if flint is not None:
                    m.d.comb += dec.flint.eq(flint)
                exponent = Mux(odd_phase, dec.odd.exponent, dec.even.exponent)
                integer = Mux(odd_phase, dec.odd.integer, dec.even.integer)
                if self.bits == 8:
                    operands += self._nibble_operands(m, exponent, integer)
                else:
                    operands.append((exponent, integer))
            return operands

        runtime = self.normal == "runtime"
        a_ops = border("a", held_a, rows, self.a_flint if runtime else None)
        b_ops = border("b", held_b, cols, self.b_flint if runtime else None)

        # ---- skew: physical row r / column c delayed by r / c registers ---------------------
        def delayed(values, shapes, count, name):
            for stage in range(count):
                regs = [Signal(shape, name=f"{name}_skew{stage}_{k}") for k, shape in enumerate(shapes)]
                m.d.sync += [reg.eq(v) for reg, v in zip(regs, values)]
                values = regs
            return values

        operand_shapes = [unsigned(eb), signed(ib)]
        a_rows = [
            delayed([e, i, held_valid, clear_pending], [*operand_shapes, 1, 1], r, f"a{r}")
            for r, (e, i) in enumerate(a_ops)
        ]
        b_cols = [delayed([e, i], operand_shapes, c, f"b{c}") for c, (e, i) in enumerate(b_ops)]

        # ---- PE grid ---------------------------------------------------------------------------
        pes = [[OvpProcessingElement(exponent_bits=eb, integer_bits=ib, acc_bits=self.acc_bits) for _ in range(pc)]
               for _ in range(pr)]
        for r in range(pr):
            for c in range(pc):
                pe = pes[r][c]
                m.submodules[f"pe_{r}_{c}"] = pe
                if c == 0:
                    e, i, valid, first = a_rows[r]
                    m.d.comb += [pe.a_in.exponent.eq(e), pe.a_in.integer.eq(i),
                                 pe.step_in.valid.eq(valid), pe.step_in.first.eq(first)]
                else:
                    left = pes[r][c - 1]
                    m.d.comb += [pe.a_in.exponent.eq(left.a_out.exponent), pe.a_in.integer.eq(left.a_out.integer),
                                 pe.step_in.valid.eq(left.step_out.valid), pe.step_in.first.eq(left.step_out.first)]
                if r == 0:
                    e, i = b_cols[c]
                    m.d.comb += [pe.b_in.exponent.eq(e), pe.b_in.integer.eq(i)]
                else:
                    up = pes[r - 1][c]
                    m.d.comb += [pe.b_in.exponent.eq(up.b_out.exponent), pe.b_in.integer.eq(up.b_out.integer)]

        # ---- drain: one logical row per transfer -------------------------------------------------
        drain_row = Signal(range(max(rows, 2)))
        for j in range(cols):
            total = 0
            for dr in range(self.split):
                for dc in range(self.split):
                    column = [pes[i * self.split + dr][j * self.split + dc].acc for i in range(rows)]
                    total = total + (Array(column)[drain_row] if rows > 1 else column[0])
            m.d.comb += self.results.payload.values[j].eq(total[: self.acc_bits].as_signed() if self.split > 1 else total)
        m.d.comb += self.results.payload.last.eq(drain_row == rows - 1)

        # ---- control (If/Elif on a state register, not m.FSM: a 3-state FSM leaves an unused
        # encoding that Verilator -Wall reports as an incomplete case) -------------------------
        flush_left = Signal(range(self.flush_cycles + 1))
        state = Signal(_Phase)
        draining = Signal()
        m.d.comb += [computing.eq(state == _Phase.COMPUTE), draining.eq(state == _Phase.DRAIN)]
        with m.If(computing):
            with m.If(held_valid & odd_phase & held_last):
                m.d.sync += [flush_left.eq(self.flush_cycles - 1), state.eq(_Phase.FLUSH)]
        with m.Elif(draining):
            m.d.comb += self.results.valid.eq(1)
            with m.If(self.results.ready):
                m.d.sync += drain_row.eq(drain_row + 1)
                with m.If(drain_row == rows - 1):
                    m.d.sync += [drain_row.eq(0), clear_pending.eq(1), state.eq(_Phase.COMPUTE)]
        with m.Else():  # FLUSH: the last step reaches PE (PR-1, PC-1) PR + PC - 2 cycles after it is fed
            m.d.sync += flush_left.eq(flush_left - 1)
            with m.If(flush_left == 0):
                m.d.sync += [drain_row.eq(0), state.eq(_Phase.DRAIN)]
        return m


@register_unit("ovp_array")
def _resource_unit(rows=4, cols=4, normal: str = "int4", bits=None):
    """An R x C array (``olivine resources ovp_array --rows 8 --cols 8 --normal flint4``)."""
    normal = unit_normal(normal, bits)
    rows, cols = int(rows), int(cols)
    return OvpSystolicArray(rows, cols, normal=normal), f"ovp_array_{rows}x{cols}_{normal}"
