"""olivine's instruction set: a declarative table of formats drives encoding, decoding and docs.

Every instruction is a whole number of 32-bit little-endian words. Word 0 of every instruction
starts with the same header::

    [3:0]  opcode      (0 is never valid, so a zeroed word is rejected)
    [7:4]  wait mask   one bit per unit: wait for a token released by that unit
    [11:8] release     one bit per unit: release a token to that unit when done

The four units run as decoupled queues synchronised by these tokens, as in FlightLLM:
bit 0 LD (loads from HBM), bit 1 ST (stores to HBM), bit 2 MPE (matrix engine: MM, MV),
bit 3 SFU (special functions: MISC). SYS instructions are executed by every unit in order.

Each format lists its fields as (name, word, lsb, width, kind). ``kind`` is ``"u"`` (unsigned),
``"count"`` (unsigned, at least 1), an enum tuple (the value is the index), or ``"mask"``.
Bits not covered by a field are reserved and must be zero; the decoder rejects a word that sets
one, naming the instruction's word offset and the field.

This table is the hardware's contract: it lives in ``hw/`` so that the RTL decoder
(hw/decode.py) generates its record layouts and checks from it, while the compiler
(``olivine.compiler.isa`` re-exports this module), the assembler and the simulators import it
from here. It needs numpy only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

UNITS = ("ld", "st", "mpe", "sfu")

TARGET_BUFFERS = ("weight", "meta", "bias", "act", "global", "kv")
WEIGHT_FORMATS = ("int8", "int4", "ovp4")
ACT_FORMATS = ("int8", "ovp4")
OUT_FORMATS = ("int32", "fixed32", "int8")
MISC_OPS = ("add", "mul", "softmax", "layernorm", "rmsnorm", "silu", "swiglu", "rope",
            "quant", "dequant", "copy", "argmax", "vshift")
MPE_MODES = ("linear", "qk", "pv")
OVP_NORMALS = ("int4", "flint4")
#: MM/MV ``wgroup``: per-group weight multipliers (docs/isa.md "Semantics"): none, or one unsigned 4-bit
#: multiplier per 64 / 128 weights of a row along K, packed after the tile's weight values
WEIGHT_GROUPS = ("none", "g64", "g128")
WEIGHT_GROUP_SIZE = {"none": None, "g64": 64, "g128": 128}
#: MISC quant ``imm`` bits above the head-block count imm[15:0] (docs/isa.md "MISC"): power-of-two INT8
#: scale, OVP4 mode (the static OVP activation encoder, parameter record at src1), its flint4 normal type
QUANT_POW2, QUANT_OVP4, QUANT_FLINT4 = 1 << 16, 1 << 17, 1 << 18
SYS_OPS = ("barrier", "end")


#: Why a word stream does not decode; the hardware decoder reports the index of the cause (0: none).
DECODE_CAUSES = ("none", "opcode", "truncated", "count", "enum", "reserved", "mv_rows")


class IsaError(ValueError):
    """A malformed instruction word or an invalid field value; says where and which field.

    ``cause`` is one of :data:`DECODE_CAUSES` when the decoder rejected a word stream (None for
    encoder-side errors such as an unknown mnemonic).
    """

    def __init__(self, message: str, *, offset: int | None = None, field: str | None = None,
                 cause: str | None = None):
        where = f"word {offset}" if offset is not None else ""
        what = f"field '{field}'" if field else ""
        prefix = ", ".join(p for p in (where, what) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.offset = offset
        self.field = field
        self.cause = cause


@dataclass(frozen=True)
class Field:
    name: str
    word: int
    lsb: int
    width: int
    kind: object = "u"  # "u", "count", "mask", or a tuple of enum names
    doc: str = ""

    @property
    def max(self) -> int:
        return (1 << self.width) - 1

    def describe_kind(self) -> str:
        if isinstance(self.kind, tuple):
            return " / ".join(f"{i}={n}" for i, n in enumerate(self.kind))
        return {"u": "unsigned", "count": "count >= 1", "mask": "unit mask"}[self.kind]


HEADER = (
    Field("opcode", 0, 0, 4, "u", "instruction kind"),
    Field("wait", 0, 4, 4, "mask", "units whose token must arrive before this starts"),
    Field("release", 0, 8, 4, "mask", "units that receive a token when this finishes"),
)


@dataclass(frozen=True)
class Format:
    mnemonic: str
    opcode: int
    words: int
    unit: str  # the unit that executes it ("all" for SYS)
    fields: tuple[Field, ...]
    doc: str = ""
    all_fields: tuple[Field, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "all_fields", HEADER + self.fields)
        used = [0] * self.words
        for f in self.all_fields:
            assert f.word < self.words and f.lsb + f.width <= 32, f
            bits = f.max << f.lsb
            assert not used[f.word] & bits, f"overlapping field {f.name} in {self.mnemonic}"
            used[f.word] |= bits
        object.__setattr__(self, "_reserved", tuple(~u & 0xFFFFFFFF for u in used))
        object.__setattr__(self, "_by_name", {f.name: f for f in self.all_fields})  # field() per executed instruction

    def field(self, name: str) -> Field:
        f = self._by_name.get(name)
        if f is not None:
            return f
        raise IsaError(f"{self.mnemonic} has no field {name!r}; fields: "
                       f"{', '.join(f.name for f in self.fields)}", field=name)


F = Field
FORMATS: tuple[Format, ...] = (
    Format("LD", 1, 8, "ld", (
        F("target", 0, 12, 3, TARGET_BUFFERS, "on-chip buffer written"),
        F("channel", 0, 15, 6, "u", "HBM pseudo-channel read"),
        F("zero_fill", 0, 21, 1, "u", "write zeros instead of reading HBM"),
        F("hbm_addr", 1, 0, 32, "u", "byte address inside the channel"),
        F("buf_addr", 2, 0, 24, "u", "byte address inside the target buffer"),
        F("n2", 2, 24, 8, "count", "outer loop count"),
        F("length", 3, 0, 24, "count", "bytes of one contiguous burst"),
        F("n0", 4, 0, 16, "count", "inner loop count"),
        F("n1", 4, 16, 16, "count", "middle loop count"),
        F("hbm_stride0", 5, 0, 32, "u", "HBM byte stride of the inner loop"),
        F("hbm_stride1", 6, 0, 32, "u", "HBM byte stride of the middle loop"),
        F("hbm_stride2", 7, 0, 32, "u", "HBM byte stride of the outer loop"),
    ), "Load n2 x n1 x n0 bursts of `length` bytes from HBM; bursts land contiguously in the buffer."),
    Format("ST", 2, 5, "st", (
        F("source", 0, 12, 3, TARGET_BUFFERS, "on-chip buffer read"),
        F("channel", 0, 15, 6, "u", "HBM pseudo-channel written"),
        F("hbm_addr", 1, 0, 32, "u", "byte address inside the channel"),
        F("buf_addr", 2, 0, 24, "u", "byte address inside the source buffer"),
        F("length", 3, 0, 24, "count", "bytes of one contiguous burst"),
        F("n0", 3, 24, 8, "count", "loop count"),
        F("hbm_stride0", 4, 0, 32, "u", "HBM byte stride of the loop"),
    ), "Store n0 bursts of `length` contiguous buffer bytes to HBM with a stride."),
    *(Format(mn, op, 7, "mpe", (
        F("wfmt", 0, 12, 2, WEIGHT_FORMATS, "weight precision"),
        F("afmt", 0, 14, 1, ACT_FORMATS, "activation precision"),
        F("sparse", 0, 15, 1, "u", "N:16 block-sparse weights with metadata at meta_addr"),
        F("bias", 0, 16, 1, "u", "add the INT32 bias at bias_addr"),
        F("accumulate", 0, 17, 1, "u", "add into the INT32 partial sums already at out_addr"),
        F("out", 0, 18, 2, OUT_FORMATS, "output: raw INT32, requantized fixed32, or INT8"),
        F("mode", 0, 20, 2, MPE_MODES, "operands: linear (weights), qk (Q.K^T from the data space), pv (P'.V)"),
        F("normal", 0, 22, 1, OVP_NORMALS, "OVP normal type of ovp4 weights"),
        F("anormal", 0, 23, 1, OVP_NORMALS, "OVP normal type of ovp4 activations"),
        F("k_blocks", 1, 0, 12, "count", "reduction length in blocks of 16"),
        F("m", 1, 12, 12, "count", "rows (tokens); MV requires 1"),
        F("n", 2, 0, 16, "count", "output columns"),
        F("ldo", 2, 16, 16, "u", "output row pitch in elements (0: n)"),
        F("a_addr", 3, 0, 24, "u", "activation buffer byte address"),
        F("b_addr", 4, 0, 24, "u", "weight buffer byte address"),
        F("out_addr", 5, 0, 24, "u", "output buffer byte address"),
        F("meta_addr", 6, 0, 16, "u", "meta buffer address of sparse indices / block N (16-byte units)"),
        F("bias_addr", 6, 16, 16, "u", "bias buffer address of bias and requant parameters (16-byte units)"),
        F("wgroup", 0, 24, 2, WEIGHT_GROUPS, "per-group 4-bit weight multipliers after the weight values"),
    ), doc) for mn, op, doc in (
        ("MM", 3, "Matrix-matrix product (prefill): out[m, n] = A[m, K] x W[n, K]^T."),
        ("MV", 4, "Matrix-vector product (decode): as MM with m = 1."),
    )),
    Format("MISC", 5, 6, "sfu", (
        F("op", 0, 12, 4, MISC_OPS, "special function"),
        F("mask", 0, 16, 1, "u", "apply the causal mask (softmax)"),
        F("src0", 1, 0, 24, "u", "first operand buffer byte address"),
        F("src1", 2, 0, 24, "u", "second operand / parameter table byte address"),
        F("dst", 3, 0, 24, "u", "destination buffer byte address"),
        F("rows", 4, 0, 12, "count", "rows processed"),
        F("cols", 4, 12, 20, "count", "elements per row"),
        F("imm", 5, 0, 32, "u", "op parameter (e.g. RoPE start position, softmax valid length)"),
    ), "Special function unit operation on rows x cols elements."),
    Format("SYS", 6, 1, "all", (
        F("op", 0, 12, 4, SYS_OPS, "barrier: every unit drains; end: program ends"),
    ), "Synchronisation and program end."),
)

BY_MNEMONIC = {f.mnemonic: f for f in FORMATS}
BY_OPCODE = {f.opcode: f for f in FORMATS}
#: Every field name of the table once (first-seen order), then the pseudo-field "reserved": the
#: hardware decoder reports the index of the field at fault in this tuple.
FIELD_NAMES: tuple[str, ...] = tuple(dict.fromkeys(
    [f.name for fmt in FORMATS for f in fmt.all_fields] + ["reserved"]))
MAX_WORDS = max(f.words for f in FORMATS)


def error_code(exc: IsaError) -> tuple[int, int]:
    """(cause index in DECODE_CAUSES, field index in FIELD_NAMES) of a decoder error: what the
    hardware decoder's error output carries."""
    if exc.cause is None:
        raise ValueError(f"not a decoder error (no cause): {exc}")
    return DECODE_CAUSES.index(exc.cause), FIELD_NAMES.index(exc.field)


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: its format and every field's integer value."""

    fmt: Format
    values: dict

    @property
    def mnemonic(self) -> str:
        return self.fmt.mnemonic

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def enum(self, name: str) -> str:
        """The name of an enum field's value (e.g. ``wfmt`` -> ``"ovp4"``)."""
        f = self.fmt._by_name.get(name)
        if f is not None and type(f.kind) is tuple:  # the simulators call this per executed instruction
            return f.kind[self.values[name]]
        f = self.fmt.field(name)
        if not isinstance(f.kind, tuple):
            raise IsaError(f"{self.mnemonic}.{name} is not an enum field", field=name)
        return f.kind[self.values[name]]

    @property
    def words(self) -> int:
        return self.fmt.words


def _coerce(fmt: Format, f: Field, value) -> int:
    if isinstance(f.kind, tuple) and isinstance(value, str):
        if value not in f.kind:
            raise IsaError(f"{fmt.mnemonic}: {value!r} is not one of {', '.join(f.kind)}", field=f.name)
        return f.kind.index(value)
    if f.kind == "mask" and not isinstance(value, int):
        names = [value] if isinstance(value, str) else list(value)
        bits = 0
        for unit in names:
            if unit not in UNITS:
                raise IsaError(f"{fmt.mnemonic}: unknown unit {unit!r} (units: {', '.join(UNITS)})", field=f.name)
            bits |= 1 << UNITS.index(unit)
        return bits
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise IsaError(f"{fmt.mnemonic}: value {value!r} is not an integer", field=f.name)
    return int(value)


def _check(fmt: Format, f: Field, value: int, offset: int | None = None) -> None:
    if not 0 <= value <= f.max:
        raise IsaError(f"{fmt.mnemonic}: value {value} does not fit {f.width} bits", offset=offset, field=f.name)
    if f.kind == "count" and value == 0:
        raise IsaError(f"{fmt.mnemonic}: a count must be at least 1", offset=offset, field=f.name,
                       cause="count")
    if isinstance(f.kind, tuple) and value >= len(f.kind):
        raise IsaError(f"{fmt.mnemonic}: enum value {value} out of range (0..{len(f.kind) - 1}: "
                       f"{', '.join(f.kind)})", offset=offset, field=f.name, cause="enum")


def _semantic_check(inst_fmt: Format, values: dict, offset: int | None = None) -> None:
    if inst_fmt.mnemonic == "MV" and values.get("m", 1) != 1:
        raise IsaError("MV computes one row: m must be 1 (use MM)", offset=offset, field="m", cause="mv_rows")


def make(mnemonic: str, **fields) -> Instruction:
    """Build an instruction; unspecified fields are 0 (counts 1). Values are range-checked."""
    fmt = BY_MNEMONIC.get(mnemonic.upper())
    if fmt is None:
        raise IsaError(f"unknown instruction {mnemonic!r} (known: {', '.join(BY_MNEMONIC)})")
    values = {}
    for f in fmt.all_fields:
        if f.name == "opcode":
            values[f.name] = fmt.opcode
            continue
        value = _coerce(fmt, f, fields.pop(f.name)) if f.name in fields else (1 if f.kind == "count" else 0)
        _check(fmt, f, value)
        values[f.name] = value
    if fields:
        raise IsaError(f"{fmt.mnemonic} has no field(s) {', '.join(sorted(fields))}; fields: "
                       f"{', '.join(f.name for f in fmt.all_fields[1:])}")
    _semantic_check(fmt, values)
    return Instruction(fmt, values)


def encode(inst: Instruction) -> list[int]:
    words = [0] * inst.fmt.words
    for f in inst.fmt.all_fields:
        value = inst.values[f.name]
        _check(inst.fmt, f, value)
        words[f.word] |= value << f.lsb
    return words


def encode_program(program: Iterable[Instruction]) -> np.ndarray:
    """Encode instructions into one uint32 word array."""
    out: list[int] = []
    for inst in program:
        out.extend(encode(inst))
    return np.asarray(out, dtype=np.uint32)


def decode_one(words, offset: int = 0) -> Instruction:
    """Decode the instruction starting at ``words[offset]``; errors give the absolute word offset."""
    n = len(words)
    if offset >= n:
        raise IsaError("no instruction here: the stream has ended", offset=offset)
    w0 = int(words[offset])
    opcode = w0 & 0xF
    fmt = BY_OPCODE.get(opcode)
    if fmt is None:
        raise IsaError(f"invalid opcode {opcode} (word 0x{w0:08x}); valid: "
                       f"{', '.join(f'{f.opcode}={f.mnemonic}' for f in FORMATS)}", offset=offset, field="opcode",
                       cause="opcode")
    if offset + fmt.words > n:
        raise IsaError(f"{fmt.mnemonic} needs {fmt.words} words but the stream ends after {n - offset}",
                       offset=offset, field="length", cause="truncated")
    values = {}
    for f in fmt.all_fields:
        value = (int(words[offset + f.word]) >> f.lsb) & f.max
        if f.name != "opcode":
            _check(fmt, f, value, offset + f.word)
        values[f.name] = value
    for i, reserved in enumerate(fmt._reserved):
        bad = int(words[offset + i]) & reserved
        if bad:
            raise IsaError(f"{fmt.mnemonic}: reserved bits 0x{bad:08x} are set in word {i} of the instruction",
                           offset=offset + i, field="reserved", cause="reserved")
    _semantic_check(fmt, values, offset)
    return Instruction(fmt, values)


def with_fields(inst: Instruction, values: dict, offset: int = 0) -> Instruction:
    """What :func:`decode_one` returns once ``values`` (field name -> int) are written into the words of
    ``inst`` (a decoded instruction at word ``offset``): the same range / count / enum checks of the
    written fields, in field order, with the same :class:`IsaError` messages, and the same semantic rule.
    The run time patches a few fields of a decoded program this way instead of re-decoding it."""
    fmt = inst.fmt
    merged = dict(inst.values)
    merged.update(values)
    for f in fmt.all_fields:
        if f.name in values and f.name != "opcode":
            _check(fmt, f, merged[f.name], offset + f.word)
    _semantic_check(fmt, merged, offset)
    return Instruction(fmt, merged)


def decode_program(words) -> list[Instruction]:
    """Decode a whole word array; a malformed word raises :class:`IsaError` with its offset."""
    words = np.asarray(words, dtype=np.uint32)
    program, offset = [], 0
    while offset < len(words):
        inst = decode_one(words, offset)
        program.append(inst)
        offset += inst.fmt.words
    return program


def program_offsets(program: Iterable[Instruction]) -> list[int]:
    """Word offset of each instruction of ``program`` in its encoding."""
    offsets, offset = [], 0
    for inst in program:
        offsets.append(offset)
        offset += inst.fmt.words
    return offsets


def reference_markdown() -> str:
    """The field tables of every format, as written in docs/isa.md (a test keeps them in sync)."""
    out = []
    for fmt in FORMATS:
        out.append(f"### {fmt.mnemonic} (opcode {fmt.opcode}, {fmt.words} word{'s' * (fmt.words > 1)}, unit {fmt.unit})\n")
        out.append(f"{fmt.doc}\n")
        out.append("| field | word | bits | values | meaning |")
        out.append("|---|---|---|---|---|")
        for f in fmt.all_fields:
            bits = f"[{f.lsb + f.width - 1}:{f.lsb}]" if f.width > 1 else f"[{f.lsb}]"
            out.append(f"| {f.name} | {f.word} | {bits} | {f.describe_kind()} | {f.doc} |")
        out.append("")
    return "\n".join(out)
