"""Text assembly for olivine programs: an assembler and a disassembler that round-trip.

One instruction per line: a mnemonic, then ``field=value`` pairs in any order. Omitted fields are
0 (counts 1). Enum fields take their names (``wfmt=ovp4``), unit masks a comma-separated list or
``-`` (``wait=ld,mpe``), numbers decimal or 0x-hex. ``#`` starts a comment. Example::

    LD target=weight channel=3 hbm_addr=0x4000 length=4096 release=mpe
    MV wait=ld wfmt=ovp4 k_blocks=36 n=576 b_addr=0x0 out_addr=0x800 out=fixed32
    SYS op=end
"""

from __future__ import annotations

from typing import Iterable

from olivine.hw.isa import BY_MNEMONIC, UNITS, Instruction, IsaError, make


class AsmError(IsaError):
    """A line of assembly that does not parse; the message names the line."""


def _parse_value(text: str, kind) -> object:
    if kind == "mask":
        return [] if text in ("-", "") else text.split(",")
    if isinstance(kind, tuple) and not text[:1].isdigit():
        return text
    return int(text, 0)


def assemble(source: str) -> list[Instruction]:
    """Parse assembly text into instructions."""
    program = []
    for lineno, raw in enumerate(source.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        mnemonic, *pairs = line.split()
        fmt = BY_MNEMONIC.get(mnemonic.upper())
        if fmt is None:
            raise AsmError(f"line {lineno}: unknown instruction {mnemonic!r} (known: {', '.join(BY_MNEMONIC)})")
        fields = {}
        for pair in pairs:
            name, sep, text = pair.partition("=")
            if not sep:
                raise AsmError(f"line {lineno}: expected field=value, got {pair!r}")
            try:
                f = fmt.field(name)
                if name in fields:
                    raise AsmError(f"field {name!r} given twice")
                fields[name] = _parse_value(text, f.kind)
            except ValueError as exc:
                raise AsmError(f"line {lineno}: {exc}") from None
        if "opcode" in fields:
            raise AsmError(f"line {lineno}: the opcode comes from the mnemonic; do not set it")
        try:
            program.append(make(fmt.mnemonic, **fields))
        except IsaError as exc:
            raise AsmError(f"line {lineno}: {exc}") from None
    return program


def _format_value(f, value: int) -> str:
    if isinstance(f.kind, tuple):
        return f.kind[value]
    if f.kind == "mask":
        return ",".join(u for i, u in enumerate(UNITS) if value >> i & 1) or "-"
    if "addr" in f.name or "stride" in f.name:
        return hex(value)
    return str(value)


def disassemble_one(inst: Instruction) -> str:
    parts = [inst.mnemonic]
    for f in inst.fmt.all_fields[1:]:
        value = inst.values[f.name]
        if value != (1 if f.kind == "count" else 0):
            parts.append(f"{f.name}={_format_value(f, value)}")
    return " ".join(parts)


def disassemble(program: Iterable[Instruction], *, offsets: bool = False) -> str:
    """Instructions to assembly text (optionally with each instruction's word offset as a comment)."""
    lines, offset = [], 0
    for inst in program:
        text = disassemble_one(inst)
        lines.append(f"{text}  # @{offset}" if offsets else text)
        offset += inst.fmt.words
    return "\n".join(lines) + ("\n" if lines else "")
