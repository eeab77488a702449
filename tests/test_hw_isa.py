"""hw/isa.py, the format table's home: layering, the compiler's re-export, decoder cause codes."""

import subprocess
import sys

import pytest

from olivine.hw import isa


def test_hw_isa_needs_neither_compiler_sim_nor_torch():
    code = ("import sys; import olivine.hw.isa; "
            "bad = [m for m in sys.modules if m.startswith(('olivine.compiler', 'olivine.sim', 'torch'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"hw/isa.py pulls in {proc.stdout.strip()} {proc.stderr[-500:]}"


def test_compiler_isa_is_the_same_table():
    from olivine.compiler import asm
    from olivine.compiler import isa as cisa
    from olivine.sim import funcsim

    assert cisa.FORMATS is isa.FORMATS and cisa.IsaError is isa.IsaError and cisa.make is isa.make
    assert issubclass(asm.AsmError, isa.IsaError)
    assert funcsim.isa is isa


def test_field_names_cover_every_field_once():
    names = [f.name for fmt in isa.FORMATS for f in fmt.all_fields]
    assert set(isa.FIELD_NAMES) == set(names) | {"reserved"}
    assert len(isa.FIELD_NAMES) == len(set(isa.FIELD_NAMES))
    assert isa.MAX_WORDS == 8  # LD


def _program_words():
    program = [isa.make("LD"), isa.make("MV"), isa.make("MISC", op="softmax"), isa.make("SYS", op="end")]
    return isa.encode_program(program).copy()


@pytest.mark.parametrize("word, value, offset, cause, field", [
    (8, 0, 8, "opcode", "opcode"),
    (8, None, 8, "reserved", "reserved"),  # bit 31 of MV word 0
    (9, 0, 9, "count", "k_blocks"),
    (9, 1 | (2 << 12), 8, "mv_rows", "m"),  # the semantic check names the instruction's start
    (15, 5 | (15 << 12), 15, "enum", "op"),
])
def test_decoder_errors_carry_cause_and_field_codes(word, value, offset, cause, field):
    words = _program_words()
    words[word] = (int(words[word]) | 1 << 31) if value is None else value
    with pytest.raises(isa.IsaError) as info:
        isa.decode_program(words)
    exc = info.value
    assert (exc.offset, exc.cause, exc.field) == (offset, cause, field)
    assert isa.error_code(exc) == (isa.DECODE_CAUSES.index(cause), isa.FIELD_NAMES.index(field))


def test_truncation_cause():
    with pytest.raises(isa.IsaError) as info:
        isa.decode_program(_program_words()[:20])
    assert info.value.cause == "truncated" and info.value.offset == 15


def test_encoder_errors_have_no_decoder_code():
    with pytest.raises(isa.IsaError) as info:
        isa.make("LDX")
    with pytest.raises(ValueError, match="not a decoder error"):
        isa.error_code(info.value)


def test_with_fields_equals_decoding_the_written_words():
    words = _program_words()
    prog = isa.decode_program(words)
    offsets = isa.program_offsets(prog)
    mv = prog[1]
    for values in ({"n": 77, "k_blocks": 3}, {"a_addr": 1234, "out_addr": 99, "wait": 5}):
        w = words.copy()
        for name, v in values.items():
            f = mv.fmt.field(name)
            w[offsets[1] + f.word] = (int(w[offsets[1] + f.word]) & ~(f.max << f.lsb) & 0xFFFFFFFF) | (v << f.lsb)
        want = isa.decode_one(w, offsets[1])
        got = isa.with_fields(mv, values, offsets[1])
        assert got.values == want.values and got.fmt is want.fmt
    for values, cause, field in (({"k_blocks": 0}, "count", "k_blocks"), ({"m": 2}, "mv_rows", "m")):
        with pytest.raises(isa.IsaError) as info:
            isa.with_fields(mv, values, offsets[1])
        w = words.copy()
        f = mv.fmt.field(field)
        w[offsets[1] + f.word] &= ~(f.max << f.lsb) & 0xFFFFFFFF
        w[offsets[1] + f.word] |= values[field] << f.lsb
        with pytest.raises(isa.IsaError) as want:
            isa.decode_one(w, offsets[1])
        assert (str(info.value), info.value.cause, info.value.field) == (str(want.value), cause, field)
    sm = prog[2]
    with pytest.raises(isa.IsaError, match="enum value 15 out of range"):
        isa.with_fields(sm, {"op": 15}, offsets[2])
