"""The instruction set: encoding, decoding, assembly round trips and malformed-word errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from olivine.compiler.asm import AsmError, assemble, disassemble
from olivine.compiler.isa import (BY_MNEMONIC, FORMATS, IsaError, decode_one, decode_program, encode,
                                  encode_program, make, program_offsets)


@st.composite
def instructions(draw):
    fmt = draw(st.sampled_from(FORMATS))
    fields = {}
    for f in fmt.all_fields[1:]:
        if isinstance(f.kind, tuple):
            fields[f.name] = draw(st.integers(0, len(f.kind) - 1))
        elif f.kind == "count":
            fields[f.name] = draw(st.integers(1, f.max))
        else:
            fields[f.name] = draw(st.integers(0, f.max))
    if fmt.mnemonic == "MV":
        fields["m"] = 1
    return make(fmt.mnemonic, **fields)


@settings(max_examples=300, deadline=None)
@given(st.lists(instructions(), max_size=12))
def test_random_programs_round_trip_binary_and_text(program):
    words = encode_program(program)
    assert words.dtype == np.uint32
    decoded = decode_program(words)
    assert [(i.mnemonic, i.values) for i in decoded] == [(i.mnemonic, i.values) for i in program]
    text = disassemble(decoded)
    again = assemble(text)
    assert np.array_equal(encode_program(again), words)


def test_field_placement_matches_the_documented_layout():
    inst = make("MM", wait=["ld"], release=["sfu", "st"], wfmt="ovp4", sparse=1, k_blocks=3, m=128, n=16)
    w = encode(inst)
    assert w[0] & 0xF == BY_MNEMONIC["MM"].opcode
    assert (w[0] >> 4) & 0xF == 0b0001  # wait on LD
    assert (w[0] >> 8) & 0xF == 0b1010  # release ST and SFU
    assert (w[0] >> 12) & 0x3 == 2  # ovp4
    assert (w[0] >> 15) & 1 == 1
    assert w[1] == 3 | (128 << 12)
    assert inst.enum("wfmt") == "ovp4"


def test_offsets_and_sizes():
    program = [make("LD"), make("MV"), make("MISC", op="softmax"), make("SYS", op="end")]
    assert program_offsets(program) == [0, 8, 15, 21]
    assert len(encode_program(program)) == 22


@pytest.mark.parametrize("corrupt, offset, field", [
    (lambda w: w.__setitem__(8, 0), 8, "opcode"),                   # zeroed word where MV starts
    (lambda w: w.__setitem__(8, w[8] | 0xF), 8, "opcode"),          # opcode 15
    (lambda w: w.__setitem__(8, w[8] | (1 << 31)), 8, "reserved"),  # reserved bit of MV word 0
    (lambda w: w.__setitem__(9, int(w[9]) & ~0xFFF), 9, "k_blocks"),     # count of zero
    (lambda w: w.__setitem__(9, (int(w[9]) & ~(0xFFF << 12)) | (2 << 12)), 8, "m"),  # MV with m = 2
    (lambda w: w.__setitem__(15, w[15] | (15 << 12)), 15, "op"),    # MISC op out of range
])
def test_malformed_words_are_rejected_with_offset_and_field(corrupt, offset, field):
    program = [make("LD"), make("MV"), make("MISC", op="softmax"), make("SYS", op="end")]
    words = encode_program(program).copy()
    corrupt(words)
    with pytest.raises(IsaError) as info:
        decode_program(words)
    assert info.value.offset == offset and info.value.field == field
    assert f"word {offset}" in str(info.value) and field in str(info.value)


def test_truncated_stream():
    words = encode_program([make("LD")])[:5]
    with pytest.raises(IsaError, match="needs 8 words"):
        decode_one(words, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "at least 1"),
    ({"channel": 64}, "does not fit 6 bits"),
    ({"target": "dram"}, "not one of"),
    ({"wait": ["gpu"]}, "unknown unit"),
    ({"warp": 1}, "no field"),
])
def test_make_rejects_bad_values(kwargs, message):
    with pytest.raises(IsaError, match=message):
        make("LD", **kwargs)


@pytest.mark.parametrize("text, message", [
    ("FOO x=1", "line 1: unknown instruction"),
    ("LD\nLD target", "line 2: expected field=value"),
    ("LD length=0", "line 1: .*at least 1"),
    ("LD length=1 length=2", "given twice"),
    ("SYS opcode=3", "opcode comes from the mnemonic"),
    ("MM wfmt=fp8", "not one of"),
])
def test_assembler_errors_name_the_line(text, message):
    with pytest.raises(AsmError, match=message):
        assemble(text)


def test_assembly_accepts_comments_hex_and_masks():
    program = assemble("""
        # load a tile
        LD target=weight channel=0x1f hbm_addr=0x100 length=64 release=mpe,sfu
        SYS op=end   # done
    """)
    assert program[0]["channel"] == 31 and program[0]["release"] == 0b1100
    assert program[1].enum("op") == "end"


def test_docs_isa_matches_the_format_table():
    from pathlib import Path

    from olivine.compiler.isa import reference_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "isa.md").read_text()
    assert reference_markdown() in doc, "docs/isa.md is stale: regenerate its format tables from hw/isa.py"


# ---- fuzzing: arbitrary words and arbitrary text ------------------------------------------------

@st.composite
def word_streams(draw):
    """Word streams that often start instructions with a valid opcode (so the field checks are reached)."""
    words = []
    for _ in range(draw(st.integers(0, 6))):
        fmt = draw(st.sampled_from(FORMATS))
        body = draw(st.lists(st.integers(0, 0xFFFFFFFF), min_size=fmt.words, max_size=fmt.words))
        if draw(st.booleans()):  # clear the reserved bits, keep the opcode
            body = [w & ~r & 0xFFFFFFFF for w, r in zip(body, fmt._reserved)]
            body[0] = (body[0] & ~0xF) | fmt.opcode
        words += body[:draw(st.integers(1, fmt.words))] if draw(st.integers(0, 9)) == 0 else body
    return np.asarray(words, dtype=np.uint32)


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(word_streams())
def test_decoder_accepts_only_streams_that_round_trip(words):
    """Any word stream either raises IsaError or decodes to instructions that re-encode to the same words
    and survive the text form."""
    try:
        program = decode_program(words)
    except IsaError:
        return
    assert np.array_equal(encode_program(program), words)
    assert np.array_equal(encode_program(assemble(disassemble(program))), words)


_TOKENS = st.sampled_from(["LD", "ST", "MM", "MV", "MISC", "SYS", "ld", "op=end", "op=quant", "op=bogus", "wait=ld,mpe",
                           "wait=-", "release=sfu,xx", "n=0", "n=65536", "n=0x10", "m=2", "k_blocks=-1", "imm=1e3",
                           "wfmt=ovp4", "wfmt=3", "mode=qk", "=", "x=", "=5", "#", "opcode=3", "length=1",
                           "hbm_addr=0xFFFFFFFF", "hbm_addr=0x100000000", "cols=1_000", "target=kv", "\t"])


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(_TOKENS | st.text(max_size=6), max_size=6).map(" ".join), max_size=5).map("\n".join))
def test_assembler_accepts_only_text_that_round_trips(text):
    """Any text either raises AsmError naming the line or assembles to a program whose binary and text
    forms round-trip."""
    try:
        program = assemble(text)
    except AsmError as exc:
        assert str(exc).startswith("line "), exc
        return
    words = encode_program(program)
    assert np.array_equal(encode_program(decode_program(words)), words)
    assert np.array_equal(encode_program(assemble(disassemble(program))), words)
