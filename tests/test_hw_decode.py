"""InstructionDecoder (hw/decode.py) against hw/isa.py's decoder: random valid programs and
mutated words give the same instructions and the same error (offset, cause, field)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from olivine.hw import isa
from olivine.hw.decode import LINT_WAIVERS, InstructionDecoder, format_layout, instruction_layout
from olivine.hw.export import lint, verilog
from tests.helpers import REDUCED, requires_verilator


def random_instruction(rng: np.random.Generator) -> isa.Instruction:
    """A valid instruction of a random format, every field drawn over its whole legal range."""
    fmt = isa.FORMATS[rng.integers(len(isa.FORMATS))]
    fields = {}
    for f in fmt.all_fields[1:]:
        if isinstance(f.kind, tuple):
            fields[f.name] = int(rng.integers(len(f.kind)))
        else:
            lo = 1 if f.kind == "count" else 0
            # small values often (zero / one corner cases), else anything
            fields[f.name] = int(rng.integers(lo, min(f.max, lo + 2) + 1) if rng.random() < 0.3
                                 else rng.integers(lo, f.max + 1, dtype=np.uint64))
    if fmt.mnemonic == "MV":
        fields["m"] = 1
    return isa.make(fmt.mnemonic, **fields)


def mutate(words: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip a few bits, zero a field-sized slice, or truncate: the stream may or may not still decode."""
    words = words.copy()
    kind = rng.integers(4)
    if kind == 0:  # flip one to three random bits
        for _ in range(rng.integers(1, 4)):
            words[rng.integers(len(words))] ^= np.uint32(1 << int(rng.integers(32)))
    elif kind == 1:  # zero a nibble or a byte (counts, opcodes)
        i, lsb = rng.integers(len(words)), int(rng.integers(0, 29))
        words[i] &= np.uint32(~(0xF << lsb) & 0xFFFFFFFF)
    elif kind == 2:  # set a high nibble (enums, reserved)
        i, lsb = rng.integers(len(words)), int(rng.integers(0, 29))
        words[i] |= np.uint32(0xF << lsb)
    else:
        words = words[: rng.integers(1, max(len(words), 2))]  # a one-word stream stays whole
    return words


def reference(words) -> tuple[list[tuple[int, isa.Instruction]], tuple[int, int, int] | None]:
    """hw/isa.py's view: the instructions decoded before the first error, and that error's
    (offset, cause code, field code)."""
    out, offset = [], 0
    while offset < len(words):
        try:
            inst = isa.decode_one(words, offset)
        except isa.IsaError as exc:
            return out, (exc.offset, *isa.error_code(exc))
        out.append((offset, inst))
        offset += inst.words
    return out, None


def run_decoder(programs: list[np.ndarray], stall_every: int = 0):
    """Stream every program through one simulated decoder (restart between programs); per
    program the (offset, opcode, field values) records and the error (offset, cause, field) or None."""
    dut = InstructionDecoder()
    results = []

    async def bench(ctx):
        cycle = 0
        for words in programs:
            ctx.set(dut.restart, 1)
            await ctx.tick()
            ctx.set(dut.restart, 0)
            got, i, idle = [], 0, 0
            while idle < 3:
                driving = i < len(words)
                ctx.set(dut.words.valid, driving)
                if driving:
                    ctx.set(dut.words.p.word, int(words[i]))
                    ctx.set(dut.words.p.last, i == len(words) - 1)
                out_ready = not (stall_every and cycle % stall_every == 0)
                ctx.set(dut.inst.ready, out_ready)
                accepted = driving and ctx.get(dut.words.ready)
                emitted = ctx.get(dut.inst.valid) and out_ready
                payload = ctx.get(dut.inst.p)
                await ctx.tick()
                cycle += 1
                if emitted:
                    fmt = isa.BY_OPCODE[payload.opcode]
                    rec = payload.fields[fmt.mnemonic]
                    got.append((payload.offset, payload.opcode,
                                {f.name: int(rec[f.name]) for f in fmt.all_fields}))
                i += bool(accepted)
                idle = idle + 1 if (not driving or ctx.get(dut.error.valid)) and not ctx.get(dut.inst.valid) else 0
            err = ctx.get(dut.error)
            results.append((got, (err.offset, err.cause, err.field) if err.valid else None))
        ctx.set(dut.words.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def _want(words):
    insts, error = reference(words)
    return [(off, inst.fmt.opcode, dict(inst.values)) for off, inst in insts], error


def test_layouts_come_from_the_table():
    ld = isa.BY_MNEMONIC["LD"]
    layout = format_layout(ld)
    assert list(layout.members) == [f.name for f in ld.all_fields]
    assert layout.size == sum(f.width for f in ld.all_fields)
    union = instruction_layout()["fields"].shape
    assert union.size == max(format_layout(f).size for f in isa.FORMATS)


@pytest.mark.parametrize("stall_every", [0, 3])
def test_random_and_mutated_programs_match_hw_isa(stall_every):
    rng = np.random.default_rng(9 + stall_every)
    programs = []
    for k in range(30 if REDUCED else 120):
        words = isa.encode_program([random_instruction(rng) for _ in range(rng.integers(1, 8))])
        programs.append(words if k % 3 == 0 else mutate(words, rng))
    results = run_decoder(programs, stall_every)
    causes = set()
    for words, (got, error) in zip(programs, results):
        want_insts, want_error = _want(words)
        assert error == want_error, f"words {[hex(w) for w in words]}: error {error}, want {want_error}"
        assert got == want_insts
        causes.add(isa.DECODE_CAUSES[want_error[1]] if want_error else "none")
    if not REDUCED:  # the reduced sample is too small to promise every cause (the next test does)
        assert {"none", "opcode", "reserved", "truncated"} <= causes, causes


def test_every_error_cause_with_its_offset():
    base = [isa.make("LD"), isa.make("MV"), isa.make("MISC", op="softmax"), isa.make("ST"), isa.make("SYS")]
    words = isa.encode_program(base)
    cases = []
    for at, value in [(8, 0), (8, 0xF), (8, int(words[8]) | 1 << 31), (9, 0),
                      (9, 1 | 2 << 12), (15, 5 | 15 << 12), (24, int(words[24]) & 0x00FFFFFF),
                      (2, 0), (0, 1 | 7 << 12)]:
        w = words.copy()
        w[at] = value
        cases.append(w)
    cases.append(words[:12])  # truncated MV
    results = run_decoder(cases)
    seen = set()
    for w, (got, error) in zip(cases, results):
        want_insts, want_error = _want(w)
        assert want_error is not None
        assert (got, error) == (want_insts, want_error)
        seen.add(isa.DECODE_CAUSES[want_error[1]])
    assert seen == set(isa.DECODE_CAUSES) - {"none"}


@requires_verilator
def test_decoder_verilog_is_lint_clean():
    lint(verilog(InstructionDecoder(), "olivine_decoder"), "olivine_decoder", waivers=LINT_WAIVERS)
