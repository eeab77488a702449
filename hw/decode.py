"""Instruction decoder: 32-bit program words in, one decoded record per instruction out.

Everything format-specific comes from the table in hw/isa.py: the record layouts
(:func:`format_layout`, one ``StructLayout`` per format with a member per field, header first),
the word slices each field is cut from, the count / enum / reserved-bit checks and their order.
It rejects exactly what ``hw.isa.decode_one`` rejects, with the same absolute word offset, cause
(:data:`hw.isa.DECODE_CAUSES`) and field (:data:`hw.isa.FIELD_NAMES`), checked in the same order:
opcode, truncation, every field's count/enum check in table order, reserved bits word by word,
the MV row count.

Ports:
  restart: In(1)   pulse: forget the current instruction and any error, next word is offset 0.
  words: In(stream) payload ``word`` (32) and ``last`` (the program's final word).
  inst: Out(stream) payload :func:`instruction_layout`: ``offset`` (word offset of the
        instruction's first word), ``opcode``, ``fields`` (a union with one member per mnemonic,
        e.g. ``inst.p.fields.LD.hbm_addr``).
  error: Out(:data:`ERROR_LAYOUT`) ``valid`` (sticky until restart), ``offset``, ``cause``,
        ``field``. After an error the decoder accepts no more words.
  busy: Out(1) part of an instruction has been received.

Latency: the record is valid one cycle after its last word is accepted (an output register).
Throughput: one word per cycle (an N-word instruction every N cycles); ``words.ready`` =
``~error.valid & (~inst.valid | inst.ready)``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .resources import register_unit

__all__ = ["LINT_WAIVERS", "WORD_LAYOUT", "ERROR_LAYOUT", "InstructionDecoder", "format_layout", "instruction_layout",
           "unit_formats"]

#: Lint waivers of the generated Verilog (hw.export.lint) for this decoder and the controller.
LINT_WAIVERS: dict[str, str] = {
    "CASEINCOMPLETE": "Amaranth lowers Array element writes and m.Switch/m.If chains to Verilog "
                      "'casez' statements that list only the values with an assignment; an "
                      "unlisted value keeps the register's previous value, which is exactly the "
                      "Amaranth semantics (checked in Amaranth simulation).",
    "UNUSEDSIGNAL:*__payload*": "Amaranth debug alias of a stream payload view field: the logic "
                                "reads the underlying net; the alias name is never read.",
    "UNUSEDSIGNAL:error.*": "the same alias for the fields of the error port's view.",
}

WORD_LAYOUT = data.StructLayout({"word": 32, "last": 1})
CAUSE_BITS = (len(isa.DECODE_CAUSES) - 1).bit_length()
FIELD_BITS = (len(isa.FIELD_NAMES) - 1).bit_length()
DEFAULT_OFFSET_BITS = 24  # programs up to 16 Mi words (64 MiB)


def format_layout(fmt: isa.Format) -> data.StructLayout:
    """The record of one format: a member per field of the table, in table order (header first)."""
    return data.StructLayout({f.name: unsigned(f.width) for f in fmt.all_fields})


def instruction_layout(offset_bits: int = DEFAULT_OFFSET_BITS) -> data.StructLayout:
    """What the decoder emits per instruction (see the module docstring)."""
    return data.StructLayout({
        "offset": unsigned(offset_bits),
        "opcode": unsigned(4),
        "fields": data.UnionLayout({fmt.mnemonic: format_layout(fmt) for fmt in isa.FORMATS}),
    })


def error_layout(offset_bits: int = DEFAULT_OFFSET_BITS) -> data.StructLayout:
    return data.StructLayout({"valid": 1, "offset": unsigned(offset_bits),
                              "cause": unsigned(CAUSE_BITS), "field": unsigned(FIELD_BITS)})


ERROR_LAYOUT = error_layout()


def unit_formats(unit: str) -> tuple[isa.Format, ...]:
    """The formats a unit executes (MM and MV for the MPE)."""
    return tuple(f for f in isa.FORMATS if f.unit == unit)


def _checks(fmt: isa.Format):
    """(condition builder, word index, cause, field) in hw/isa.decode_one's order, opcode and
    truncation excluded (the decoder handles those while words arrive)."""
    out = []
    for f in fmt.all_fields[1:]:
        if f.kind == "count":
            out.append((lambda w, f=f: w[f.word][f.lsb:f.lsb + f.width] == 0, f.word, "count", f.name))
        elif isinstance(f.kind, tuple) and len(f.kind) < (1 << f.width):
            out.append((lambda w, f=f: w[f.word][f.lsb:f.lsb + f.width] >= len(f.kind), f.word, "enum", f.name))
    for i, reserved in enumerate(fmt._reserved):
        if reserved:
            out.append((lambda w, i=i, r=reserved: (w[i] & r) != 0, i, "reserved", "reserved"))
    if fmt.mnemonic == "MV":
        m = fmt.field("m")
        out.append((lambda w, m=m: w[m.word][m.lsb:m.lsb + m.width] != 1, 0, "mv_rows", "m"))
    return out


class InstructionDecoder(wiring.Component):
    def __init__(self, offset_bits: int = DEFAULT_OFFSET_BITS):
        self.offset_bits = offset_bits
        self.latency = 1
        super().__init__({
            "restart": In(1),
            "words": In(stream.Signature(WORD_LAYOUT)),
            "inst": Out(stream.Signature(instruction_layout(offset_bits))),
            "error": Out(error_layout(offset_bits)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        ob = self.offset_bits
        nmax = isa.MAX_WORDS
        buf = Array(Signal(32, name=f"buf{i}") for i in range(nmax))
        count = Signal(range(nmax))       # words of the current instruction already held
        opcode = Signal(4)                # of the current instruction (valid when count > 0)
        start = Signal(ob)                # its first word's offset
        offset = Signal(ob)               # offset of the next word to arrive
        m.d.comb += self.busy.eq(count != 0)

        word, last = self.words.p.word, self.words.p.last
        take = self.words.valid & self.words.ready
        m.d.comb += self.words.ready.eq(~self.error.valid & (~self.inst.valid | self.inst.ready))
        with m.If(self.inst.ready):
            m.d.sync += self.inst.valid.eq(0)

        cur_opcode = Mux(count == 0, word[:4], opcode)
        cur_start = Mux(count == 0, offset, start)
        # the instruction's words as they stand after this one: held words, then the arriving one
        full = [Mux(count == i, word, buf[i]) for i in range(nmax)]

        def fail(at, cause, field):
            m.d.sync += [self.error.valid.eq(1), self.error.offset.eq(at),
                         self.error.cause.eq(isa.DECODE_CAUSES.index(cause)),
                         self.error.field.eq(isa.FIELD_NAMES.index(field))]

        with m.If(take):
            m.d.sync += [buf[count].eq(word), offset.eq(offset + 1)]
            with m.If(count == 0):
                m.d.sync += [opcode.eq(word[:4]), start.eq(offset)]
            with m.Switch(cur_opcode):
                for fmt in isa.FORMATS:
                    with m.Case(fmt.opcode):
                        with m.If(count == fmt.words - 1):  # the instruction is complete
                            m.d.sync += count.eq(0)
                            checks = _checks(fmt)
                            for k, (cond, w, cause, field) in enumerate(checks):
                                with (m.If if k == 0 else m.Elif)(cond(full)):
                                    fail(cur_start + w, cause, field)
                            assert checks  # every format has reserved bits or counts
                            with m.Else():
                                m.d.sync += [self.inst.valid.eq(1), self.inst.p.offset.eq(cur_start),
                                             self.inst.p.opcode.eq(fmt.opcode)]
                                rec = self.inst.p.fields[fmt.mnemonic]
                                for f in fmt.all_fields:
                                    m.d.sync += rec[f.name].eq(full[f.word][f.lsb:f.lsb + f.width])
                        with m.Elif(last):
                            fail(cur_start, "truncated", "length")
                        with m.Else():
                            m.d.sync += count.eq(count + 1)
                with m.Default():
                    fail(offset, "opcode", "opcode")

        with m.If(self.restart):
            m.d.sync += [count.eq(0), offset.eq(0), self.error.valid.eq(0), self.inst.valid.eq(0)]
        return m


@register_unit("decoder")
def _decoder_unit(offset_bits: int = DEFAULT_OFFSET_BITS):
    """The instruction decoder generated from hw/isa.py's format table (1 word per cycle)."""
    return InstructionDecoder(offset_bits), "olivine_decoder"
