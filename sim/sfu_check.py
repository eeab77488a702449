"""Check the RTL special function unit (hw/sfu.py) against the functional simulator's MISC semantics.

``python -m olivine.sim.sfu_check [--reduced] [--ops add,mul]`` builds a small SFU (4 lanes,
16 KiB data space; rope with the LLaMA-3-scaled ROM ``CHECK_ROPE``) in Verilator (cocotb, cached
builds), executes every built op on random cases
(saturation edges, INT32_MIN, all-equal rows, unaligned row starts, the longest rows the data space
holds) and bad-input cases (reserved op, zero rows, out of range, unaligned), compares every result
word with what ``sim/funcsim.py`` (golden/sfu.py) writes for the same instruction, and prints a
table: op, cases, mismatches, cycles per row measured (longest case), the OP_TIMING model's,
elements per cycle, and whether OP_TIMING equals the measured cycles of every case. Exit status 1
on any mismatch (values, status code, or the timing model).

(The command lives in sim/, not hw/: hw never imports the simulators, and the expected results
come from ``FuncSim.do_misc``.)

The same cases run in Amaranth simulation (:func:`run_amaranth`), which the unit tests use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from olivine.hw.sfu import (INSTR_LAYOUT, STATUS_LAYOUT, MISC_OPS, OP_CORES, OP_TIMING, Sfu, SfuError, SfuHarness, VERILATOR_BUILD_ARGS,
                            op_timing, sfu_lanes,
                            small_config)
from olivine.hw.sfu_rope import RopeRom

#: The RoPE ROM of the check instance: LLaMA-3 scaling (one band of each rule: kept, smoothed,
#: divided), a head of 12 (2 ROM beats at 4 lanes; rows of 16 and more are padded heads), 64 positions.
CHECK_ROPE = RopeRom(500000.0, 12, 64, (8.0, 1.0, 4.0, 64.0))

__all__ = ["Case", "make_cases", "expected_image", "run_amaranth", "run_verilator", "main"]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
TB_DIR = Path(__file__).parent
INSTR_FIELDS = tuple(INSTR_LAYOUT.members)


@dataclass
class Case:
    """One MISC instruction with its data space before (``image``) and the expected words after."""

    op: str
    fields: dict                       # INSTR_LAYOUT fields
    image: np.ndarray                  # data space bytes before the instruction (uint8)
    want: np.ndarray | None = None     # data space bytes after (None: unchanged)
    want_code: int = 0
    label: str = ""
    cycles: int = field(default=-1)    # measured by a run


def _values(rng, n: int, kind: str) -> np.ndarray:
    if kind == "edges":
        pool = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX, INT32_MAX - 1, 1 << 16, -(1 << 16),
                         1 << 30, -(1 << 30), 46341, -46341, (1 << 31) - (1 << 16)], dtype=np.int64)
        return rng.choice(pool, n)
    if kind == "equal":
        return np.full(n, int(rng.integers(INT32_MIN, INT32_MAX)), dtype=np.int64)
    if kind == "small":
        return rng.integers(-(1 << 20), 1 << 20, n)
    if kind == "scores":  # attention-like scores (std 5) with a SmolLM2 attention-sink magnitude
        v = np.round(rng.standard_normal(n) * 5 * 65536).astype(np.int64)
        v[rng.integers(0, n)] = 24900 << 16
        return v
    if kind == "zero":
        return np.zeros(n, dtype=np.int64)
    return rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)


#: the OVP4 mode's cases (quant, imm[17]): kind -> what the values and the record exercise
OVP_KINDS = ("ovp-int4", "ovp-flint4", "ovp-ties", "ovp-sat", "ovp-zero")


def _ovp_case(rng, image: np.ndarray, src0: int, src1: int, rows: int, cols: int, kind: str) -> int:
    """Fill src0 and the OVP4 parameter record at src1 for an OVP4-mode quant case; returns imm.

    ovp-int4 / ovp-flint4: heavy-tailed activations (Student t, 3 degrees of freedom) with a
    multiplier that puts the bulk on the normals and the tail on the outliers; ovp-ties: t = x
    (mult 2**30, shift 30) on the midpoints, one off them and the grid points themselves, both signs;
    ovp-sat: int32 extremes with small or negative shifts (and an out-of-range shift); ovp-zero: zeros."""
    from olivine.golden.contract import OVP_ACT_GUARD_BITS
    from olivine.golden.ovp_format import get_format

    n = rows * cols
    normal = "flint4" if kind == "ovp-flint4" or (kind != "ovp-int4" and rng.integers(0, 2)) else "int4"
    if kind in ("ovp-int4", "ovp-flint4"):
        x = np.clip(np.round(rng.standard_t(3, n) * (1 << 16)), INT32_MIN, INT32_MAX).astype(np.int64)
        # the bulk near the normals (int4's reach 7, flint4's 16), the tail on the outliers
        mult, shift = int(rng.integers(1 << 30, 1 << 31)), int(rng.integers(34, 37)) + int(normal == "int4")
    elif kind == "ovp-ties":
        grid = np.array(get_format(normal).union_grid, dtype=np.int64)
        mids = (grid[:-1] + grid[1:]) << (OVP_ACT_GUARD_BITS - 1)
        pool = np.concatenate([mids, mids - 1, mids + 1, grid << OVP_ACT_GUARD_BITS, [0, 1, -1]])
        x = rng.choice(pool, n)
        mult, shift = 1 << 30, 30
    elif kind == "ovp-sat":
        x = _values(rng, n, "edges")
        mult = int(rng.choice([0, 1, 1 << 30, (1 << 31) - 1]))
        shift = int(rng.choice([-40, -1, 0, 3, 12, INT32_MIN, INT32_MAX]))
    else:
        x = np.zeros(n, dtype=np.int64)
        mult, shift = int(rng.integers(1 << 30, 1 << 31)), int(rng.integers(0, 40))
    image[src0: src0 + 4 * n] = x.astype("<i4").view(np.uint8)
    image[src1: src1 + 16] = np.array([mult, shift & 0xFFFFFFFF, 0, 0], dtype="<u4").view(np.uint8)
    return (1 << 17) | (int(normal == "flint4") << 18)


def expected_image(config, image: np.ndarray, fields: dict) -> np.ndarray:
    """Run the instruction through FuncSim.do_misc (docs/isa.md MISC semantics) on a copy."""
    from olivine.compiler import isa
    from olivine.sim.funcsim import FuncSim

    sim = FuncSim(config, [16])
    sim.data[:] = image
    inst = isa.make("MISC", **{k: fields[k] for k in ("op", "mask", "src0", "src1", "dst", "rows", "cols", "imm")})
    sim.do_misc(inst)
    return sim.data.copy()


def _fixed_case(config, rng, op: str, rows: int, cols: int, kind: str, lanes: int, label: str) -> Case:
    space = (config.buffers.activation_kib + config.buffers.global_kib) * 1024
    image = np.zeros(space, dtype=np.uint8)
    n = rows * cols
    # operand regions at random 4-byte aligned (often lane-unaligned) starts, not overlapping
    starts, pos = [], 0
    # dequant: records of codes padded to 16 bytes, multiplier, shift, 8 bytes padding, and a random spare
    record = (-(-cols // 16) * 16 + 16 + 16 * int(rng.integers(0, 3))) if op == "dequant" else 0
    for k in range(3):
        pos += 4 * int(rng.integers(0, 2 * lanes))
        starts.append(pos)
        pos += rows * record if k == 0 and record else 4 * max(n, cols + 4) + (4 * (rows // 4 + 2) if op == "vshift" else 0)
    if pos > space:
        raise ValueError(f"case {label}: {rows}x{cols} does not fit the {space}-byte data space")
    src0, src1, dst = starts
    imm, mask = 0, 0
    if op == "vshift":
        src1 += int(rng.integers(0, 4))  # V's exponents and mantissas: any byte address
    if op == "rope":
        src1 += src1 % 8  # the RoPE record (float64) is 8-byte aligned (the region has room: 4 spare bytes)
    if record:
        imm = record
        for r in range(rows):
            rec = image[src0 + r * record: src0 + (r + 1) * record]
            codes = rng.choice([-128, -127, -1, 0, 1, 127], cols) if kind == "edges" else rng.integers(-128, 128, cols)
            rec[:cols] = codes.astype(np.int8).view(np.uint8)
            if kind == "edges":
                mult, shift = int(rng.choice([0, 1, (1 << 31) - 1, 1 << 30])), int(rng.choice([-1, 0, 1, 3, 4, 5, 62]))
            else:
                mult, shift = int(rng.integers(1 << 30, 1 << 31)), int(rng.integers(-1, 48))
            off = -(-cols // 16) * 16
            rec[off: off + 8] = np.array([mult & 0xFFFFFFFF, shift & 0xFFFFFFFF], dtype="<u4").view(np.uint8)
    else:
        image[src0: src0 + 4 * n] = _values(rng, n, kind).astype("<i4").view(np.uint8)
    if op == "rmsnorm":  # norm parameter table: gains, eps multiplier and shift, 8 bytes padding
        from olivine.golden.fixed import quantize_multiplier

        gains = np.round((1.0 + 0.3 * rng.standard_normal(cols)) * 65536).astype(np.int64)
        if kind == "edges":
            gains[: 2] = [INT32_MAX, INT32_MIN][: cols]
        em, es = quantize_multiplier(float(rng.choice([1e-5, 1e-6, 0.0, 0.5])))
        table = np.concatenate([gains, [em, es, 0, 0]]).astype(np.int64)
        image[src1: src1 + 4 * (cols + 4)] = (table & 0xFFFFFFFF).astype("<u4").view(np.uint8)
    elif op == "softmax":
        mask = int(rng.integers(0, 2)) if kind != "masked" else 1
        if kind == "masked":
            imm = 0 | (1 << 16)  # query position 0: only key 0 visible
        elif mask:  # a valid query position (docs/isa.md Validity): base + min(rows, period) - 1 < cols
            period = int(rng.integers(0, 4))
            if min(rows, max(1, period)) > cols:
                period = 0
            base = int(rng.integers(0, cols - min(rows, max(1, period)) + 1))
            imm = base | (period << 16)
        # without the mask imm stays 0: softmax takes no parameter then
    elif op == "quant" and kind.startswith("ovp"):  # OVP4 mode: the parameter record at src1
        imm = _ovp_case(rng, image, src0, src1, rows, cols, kind)
        dst += int(rng.integers(0, 4))  # pair-code bytes: any start
    elif op == "rope":  # the ROM's record (hd 0 = cols when the head fills the row), positions within the ROM
        rom = CHECK_ROPE
        words = rom.record_words()
        if cols == rom.head_dim and rng.integers(0, 2):
            words[2] = 0
        image[src1: src1 + 48] = np.array(words, dtype="<u4").view(np.uint8)
        per = int(rng.integers(0, 4))
        last = (rows - 1) // max(1, per)
        imm = int(rng.integers(0, rom.positions - last)) | (per << 16)
    elif op == "vshift":  # int8 exponents, uint16 mantissas <= 256, a valid query position
        ev = rng.integers(-128, 128, cols)
        mv = rng.integers(0, 257, cols)
        if kind == "edges":
            ev = rng.choice([-128, -127, -1, 0, 1, 30, 31, 32, 33, 126, 127], cols)
            mv = rng.choice([0, 1, 255, 256], cols)
        elif kind == "small":  # exponents close together: shifts 8..16, the common case
            ev = rng.integers(-4, 5, cols)
        image[src1: src1 + cols] = ev.astype(np.int8).view(np.uint8)
        image[src1 + cols: src1 + 3 * cols] = mv.astype("<u2").view(np.uint8)
        period = int(rng.integers(0, 4))
        if min(rows, max(1, period)) > cols:
            period = 0
        base = int(rng.integers(0, cols - min(rows, max(1, period)) + 1))
        imm = base | (period << 16)
    elif op == "quant":  # per-token INT8: a random rule (imm[16]) and group count G dividing rows
        divisors = [g for g in range(1, rows + 1) if rows % g == 0]
        imm = int(rng.choice(divisors)) | (int(rng.integers(0, 2)) << 16)
        if kind == "edges" and rows > 1:
            imm = rows
        dst += int(rng.integers(0, 4))  # the INT8 block is bytes: any start
    else:
        image[src1: src1 + 4 * n] = _values(rng, n, kind).astype("<i4").view(np.uint8)
    # something recognisable around the destination: nothing outside it may change
    image[dst: dst + 4 * n] = 0xA5
    if op not in ("add", "mul", "swiglu", "rmsnorm", "rope", "vshift") and not kind.startswith("ovp"):
        src1 = 0  # an op without a second operand names none (docs/isa.md Validity)
    fields = dict(op=MISC_OPS.index(op), mask=mask, src0=src0, src1=src1, dst=dst, rows=rows, cols=cols, imm=imm,
                  offset=int(rng.integers(0, 1 << 20)))
    case = Case(op, fields, image, label=label)
    case.want = expected_image(config, image, fields)
    return case


def make_cases(config, ops, *, reduced: bool = False, seed: int = 0) -> list[Case]:
    """Random, edge-value, all-equal, unaligned and longest-row cases per op, then error cases."""
    rng = np.random.default_rng(seed)
    lanes = sfu_lanes(config)
    space_words = (config.buffers.activation_kib + config.buffers.global_kib) * 256
    cases = []
    for op in ops:
        longest = min(OP_CORES[op].max_cols, (space_words - 8 * lanes) // 3 - 8)
        shapes = [(3, 7, "random"), (2, 1, "random"), (4, lanes, "edges"), (3, 2 * lanes + 1, "edges"),
                  (2, 5, "equal"), (5, 3 * lanes - 1, "small")]
        if op == "rope":  # even rows, the ROM's head (12) or padded to more
            hd = CHECK_ROPE.head_dim
            shapes = [(3, hd, "random"), (4, hd, "edges"), (2, hd + 4, "random"), (5, hd + 8, "small"),
                      (6, hd, "equal"), (3, 2 * hd + 2, "edges")]
        shapes.append((1, longest if not reduced else min(longest, 300), "random"))
        if op in ("rmsnorm", "softmax"):
            shapes += [(3, 2 * lanes + 3, "scores"), (2, 6, "zero")]
        if op == "softmax":
            shapes += [(4, 9, "masked")]
        if op == "quant" and lanes >= 2:  # the OVP4 mode (even cols)
            shapes += [(3, 8, "ovp-int4"), (2, 2 * lanes + 2, "ovp-flint4"), (4, 6, "ovp-ties"),
                       (2, 2 * lanes + 6, "ovp-ties"), (2, 10, "ovp-sat"), (2, 4, "ovp-zero"),
                       (1, (longest if not reduced else min(longest, 300)) & ~1, "ovp-int4")]
            if not reduced:
                shapes += [(7, 2, "ovp-flint4"), (5, 3 * lanes + 2, "ovp-int4"), (3, 12, "ovp-sat")]
        if op == "quant":  # one-beat rows, some straddling a destination word (the writer-bound rows)
            shapes += [(6, 3, "random"), (4, lanes - 1, "small")]
        if not reduced:
            shapes += ([(9, 13, "random"), (1, 1, "edges"), (16, 2, "edges")] if op != "rope"
                       else [(9, CHECK_ROPE.head_dim, "random"), (16, 2 * CHECK_ROPE.head_dim, "edges")])
        for rows, cols, kind in shapes:
            cases.append(_fixed_case(config, rng, op, rows, cols, kind, lanes, f"{op} {rows}x{cols} {kind}"))
        if op == "rope":  # in place over many rows (issue 8: pass 1 read back pass 0's a' once a half is
            # longer than the write latency, 4+ beats: the padded rows here; tests/test_hw_sfu_rope.py: hd 32, 64)
            hd = CHECK_ROPE.head_dim
            for rows, cols, kind in [(16, hd, "random"), (5, 4 * hd, "edges"), (4, 4 * hd + 6, "random")]:
                case = _fixed_case(config, rng, op, rows, cols, kind, lanes, f"{op} {rows}x{cols} {kind}, dst at src0")
                case.fields["dst"] = case.fields["src0"]
                case.want = expected_image(config, case.image, case.fields)
                cases.append(case)
    # bad input: a defined error, nothing written
    base = cases[0]
    op0 = MISC_OPS.index(ops[0])
    space = (config.buffers.activation_kib + config.buffers.global_kib) * 1024
    bad = [("reserved layernorm", dict(op=MISC_OPS.index("layernorm")), SfuError.RESERVED_OP),
           ("reserved argmax", dict(op=MISC_OPS.index("argmax")), SfuError.RESERVED_OP),
           ("op code 15", dict(op=15), SfuError.RESERVED_OP),
           ("zero rows", dict(op=op0, rows=0), SfuError.ZERO_SHAPE),
           ("zero cols", dict(op=op0, cols=0), SfuError.ZERO_SHAPE),
           ("unaligned dst", dict(op=op0, dst=base.fields["dst"] + 2), SfuError.UNALIGNED),
           ("dst out of range", dict(op=op0, dst=space - 8), SfuError.OUT_OF_RANGE),
           ("src0 out of range", dict(op=op0, src0=space), SfuError.OUT_OF_RANGE),
           ("huge rows x cols", dict(op=op0, rows=4095, cols=min(OP_CORES[ops[0]].max_cols, (1 << 20) - 1)),
            SfuError.OUT_OF_RANGE)]
    for op in ops:
        if OP_CORES[op].max_cols < (1 << 20) - 1:
            bad.append((f"{op} row too long", dict(op=MISC_OPS.index(op), rows=1, cols=OP_CORES[op].max_cols + 1),
                        SfuError.ROW_TOO_LONG))
    if "quant" in ops and lanes >= 2:  # the OVP4 mode's field and data rules
        ovp = next(c for c in cases if c.op == "quant" and c.fields["imm"] >> 17 & 1)
        f = ovp.fields
        rec = f["src1"]
        bad_mult = ovp.image.copy()
        bad_mult[rec: rec + 4] = np.array([(1 << 31) | (1 << 30)], dtype="<u4").view(np.uint8)
        for label, change, code, image in [
                ("quant ovp4 odd cols", dict(cols=f["cols"] - 1), SfuError.BAD_FIELD, None),
                ("quant ovp4 with imm[16]", dict(imm=f["imm"] | (1 << 16)), SfuError.BAD_FIELD, None),
                ("quant ovp4 with head blocks", dict(imm=f["imm"] | 2), SfuError.BAD_FIELD, None),
                ("quant imm[18] without imm[17]", dict(imm=1 << 18), SfuError.BAD_FIELD, None),
                ("quant imm[19] set", dict(imm=f["imm"] | (1 << 19)), SfuError.BAD_FIELD, None),
                ("quant ovp4 record on the result", dict(src1=(f["dst"] + 4) & ~3), SfuError.BAD_FIELD, None),
                ("quant ovp4 record unaligned", dict(src1=rec + 2), SfuError.UNALIGNED, None),
                ("quant ovp4 record out of range", dict(src1=space - 12), SfuError.OUT_OF_RANGE, None),
                ("quant ovp4 multiplier bit 31", {}, SfuError.BAD_MULTIPLIER, bad_mult)]:
            cases.append(Case("quant", dict(f, **change, offset=int(rng.integers(0, 1 << 20))),
                              ovp.image if image is None else image, want=None if image is None else image,
                              want_code=int(code), label=label))
    not_built = [op for op in MISC_OPS if op not in ops and op not in ("layernorm", "argmax")]
    if not_built:
        bad.append((f"{not_built[0]} not built", dict(op=MISC_OPS.index(not_built[0])), SfuError.NOT_BUILT))
    for label, change, code in bad:
        fields = dict(base.fields, **change, offset=int(rng.integers(0, 1 << 20)))
        cases.append(Case(MISC_OPS[fields["op"]] if fields["op"] < len(MISC_OPS) else "op15", fields,
                          base.image, want=None, want_code=int(code), label=label))
    cases += _data_rule_cases(config, cases, rng)
    cases += _overlap_cases(config, cases, rng)
    return cases


def _overlap_cases(config, cases: list[Case], rng) -> list[Case]:
    """docs/isa.md MISC Validity, overlap and softmax's query position: per op, dst partly over
    src0 (OVERLAP), dst = src0 where the op changes the layout (quant, dequant, vshift: OVERLAP) or
    runs in place (bit-exact), dst partly over / equal to src1 of add, mul, swiglu; softmax with
    mask = 1 and the query position at cols (BAD_FIELD). funcsim rejects the same instructions."""
    from olivine.hw.sfu import IN_PLACE_OPS, SRC1_MATRIX_OPS

    out = []
    seen = set()
    for case in cases:
        if case.want_code or case.op in seen or case.fields["rows"] * case.fields["cols"] > 64:
            continue
        seen.add(case.op)
        f = case.fields

        def add(label, code, **change):
            fields = dict(f, **change, offset=int(rng.integers(0, 1 << 20)))
            new = Case(case.op, fields, case.image, want_code=int(code), label=f"{case.op} {label}")
            new.want = expected_image(config, case.image, fields) if code == 0 else None
            out.append(new)

        add("dst 4 bytes past src0", SfuError.OVERLAP, dst=f["src0"] + 4)
        if case.op in IN_PLACE_OPS:
            add("in place (dst = src0)", 0, dst=f["src0"])
        else:
            add("dst = src0", SfuError.OVERLAP, dst=f["src0"])
        if case.op in SRC1_MATRIX_OPS:
            add("dst 4 bytes past src1", SfuError.OVERLAP, dst=f["src1"] + 4)
            add("in place over src1 (dst = src1)", 0, dst=f["src1"])
        if case.op == "softmax":
            add("mask query position at cols", SfuError.BAD_FIELD, mask=1, imm=f["cols"])
    return out


def _data_rule_cases(config, cases: list[Case], rng) -> list[Case]:
    """docs/isa.md MISC data rules: values in the operands (not the fields) that answer an error
    with nothing written, and the largest valid value next to each bound."""
    out = []

    def variant(case, label, code, edit):
        image = case.image.copy()
        edit(image)
        fields = dict(case.fields, offset=int(rng.integers(0, 1 << 20)))
        new = Case(case.op, fields, image, want_code=int(code), label=label)
        new.want = expected_image(config, image, fields) if code == 0 else None
        out.append(new)

    norm = next((c for c in cases if c.op == "rmsnorm" and c.want_code == 0), None)
    if norm is not None:  # the eps multiplier and shift follow the gains in the parameter table
        f = norm.fields
        at = f["src1"] + 4 * f["cols"]
        limit = -(-(1 << 29) // f["cols"])  # d * eps_mult >= 2**29 with eps_shift 0: d * eps * 2**32 >= 2**61

        def eps(mult, shift):
            def edit(image):
                image[at: at + 8] = np.array([mult & 0xFFFFFFFF, shift & 0xFFFFFFFF], dtype="<u4").view(np.uint8)
            return edit

        variant(norm, "rmsnorm eps multiplier bit 31", SfuError.BAD_EPS, eps(1 << 31, 20))
        variant(norm, "rmsnorm eps shift 63", SfuError.BAD_EPS, eps(1 << 30, 63))
        variant(norm, "rmsnorm eps shift -1", SfuError.BAD_EPS, eps(1 << 30, -1))
        variant(norm, "rmsnorm d * eps * 2**32 = 2**61", SfuError.BAD_EPS, eps(limit, 0))
        variant(norm, "rmsnorm d * eps * 2**32 just below 2**61", 0, eps(limit - 1, 0))
    deq = next((c for c in cases if c.op == "dequant" and c.want_code == 0 and c.fields["rows"] > 1), None)
    if deq is not None:  # a later record's multiplier: the scan must catch it before row 0 is written
        f = deq.fields
        at = f["src0"] + f["imm"] * (f["rows"] - 1) + -(-f["cols"] // 16) * 16

        def mult_bit31(image):
            image[at + 3] |= 0x80

        variant(deq, "dequant last record's multiplier bit 31", SfuError.BAD_MULTIPLIER, mult_bit31)
    return out


# ---------------------------------------------------------------------------------------------
# image <-> words

def image_words(image: np.ndarray, lanes: int) -> np.ndarray:
    """Data space bytes -> [words, lanes] uint32 (as int64)."""
    return image.view("<u4").astype(np.int64).reshape(-1, lanes)


def pack_word(lanes_u32) -> int:
    return sum(int(v) << (32 * j) for j, v in enumerate(lanes_u32))


def unpack_word(value: int, lanes: int) -> list[int]:
    return [(value >> (32 * j)) & 0xFFFFFFFF for j in range(lanes)]


# ---------------------------------------------------------------------------------------------
# Amaranth simulation

def run_amaranth(config, ops, cases: list[Case], max_cycles: int = 200_000, rope: RopeRom | None = None) -> list[dict]:
    """Execute the cases on an SfuHarness in Amaranth simulation; returns per case
    {"code", "mismatches", "cycles"} (memory loaded and read directly, no host-port cycles)."""
    from amaranth.sim import Simulator

    dut = SfuHarness(config, ops=tuple(ops), rope=rope if rope is not None or "rope" not in ops else CHECK_ROPE)
    lanes = dut.lanes
    results = []

    async def bench(ctx):
        current = None
        for case in cases:
            words = image_words(case.image, lanes)
            if current is None or not np.array_equal(words, current):
                for w in range(words.shape[0]):
                    if current is None or not np.array_equal(words[w], current[w]):
                        ctx.set(dut.memory.data[w], pack_word(words[w]))
            ctx.set(dut.instr.payload, {k: int(case.fields[k]) for k in INSTR_FIELDS})
            ctx.set(dut.instr.valid, 1)
            await ctx.tick().until(dut.instr.ready)
            ctx.set(dut.instr.valid, 0)
            cycles = 0
            while not ctx.get(dut.status.done):
                await ctx.tick()
                cycles += 1
                assert cycles < max_cycles, f"{case.label}: the SFU did not finish"
            code = ctx.get(dut.status.code)
            after = np.array([unpack_word(ctx.get(dut.memory.data[w]), lanes) for w in range(words.shape[0])],
                             dtype=np.int64)
            want = image_words(case.want if case.want is not None else case.image, lanes)
            mism = int((after != want).sum())
            results.append({"code": int(code), "mismatches": mism, "cycles": int(ctx.get(dut.status.cycles)),
                            "error": int(ctx.get(dut.status.error)), "offset": int(ctx.get(dut.status.offset))})
            current = after

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


# ---------------------------------------------------------------------------------------------
# Verilator (cocotb)

def harness_verilog(config, ops) -> tuple[str, str]:
    from olivine.hw.export import verilog

    dut = SfuHarness(config, ops=tuple(ops), rope=CHECK_ROPE if "rope" in ops else None)
    top = f"sfu_harness_{dut.lanes}l_{'_'.join(ops)}"
    return verilog(dut, top), top


def cocotb_vectors(cases: list[Case], lanes: int) -> dict:
    """Per case: the words that differ from the previous case's final state (loaded through the
    host port), the instruction, the words to read back (the destination's neighbourhood) and the
    expected values and status code."""
    load_idx, load_val, load_ptr = [], [], [0]
    chk_idx, chk_val, chk_ptr = [], [], [0]
    state = None
    for case in cases:
        words = image_words(case.image, lanes)
        diff = np.arange(words.shape[0]) if state is None else np.nonzero((words != state).any(axis=1))[0]
        load_idx.extend(diff.tolist())
        load_val.extend(words[diff].tolist())
        load_ptr.append(len(load_idx))
        want = image_words(case.want if case.want is not None else case.image, lanes)
        f = case.fields
        span = 4 * lanes
        lo = max(0, min(f["dst"], f["src0"]) // span - 1)
        hi = min(words.shape[0], (f["dst"] + 4 * f["rows"] * f["cols"]) // span + 2) if f["rows"] * f["cols"] < (1 << 22) else lo + 4
        idx = np.arange(lo, max(hi, lo + 1))
        chk_idx.extend(idx.tolist())
        chk_val.extend(want[idx].tolist())
        chk_ptr.append(len(chk_idx))
        state = want
    instr = np.array([[int(c.fields[k]) for k in INSTR_FIELDS] for c in cases], dtype=np.int64)
    return {"load_idx": np.array(load_idx, dtype=np.int64), "load_val": np.array(load_val, dtype=np.int64).reshape(-1, lanes),
            "load_ptr": np.array(load_ptr), "chk_idx": np.array(chk_idx, dtype=np.int64),
            "chk_val": np.array(chk_val, dtype=np.int64).reshape(-1, lanes), "chk_ptr": np.array(chk_ptr),
            "instr": instr, "want_code": np.array([c.want_code for c in cases]),
            "field_offsets": np.array([INSTR_LAYOUT[k].offset for k in INSTR_FIELDS]),
            "status_offsets": np.array([STATUS_LAYOUT[k].offset for k in ("done", "code", "cycles")]),
            "lanes": np.array(lanes)}


def run_verilator(config, ops, cases: list[Case]) -> list[dict]:
    """Run the cases on the Verilator model of the harness; returns per case results as
    :func:`run_amaranth` (a failing comparison still returns the results, then raises)."""
    from olivine.sim.rtl import RtlTestFailure, run_cocotb

    text, top = harness_verilog(config, ops)
    lanes = sfu_lanes(config)
    vectors = cocotb_vectors(cases, lanes)
    with tempfile.TemporaryDirectory(prefix="olivine-sfu-check-") as tmp:
        out = Path(tmp) / "results.npz"
        failure = None
        # The check runs a few thousand cycles: compile time dominates, so the model is built at
        # -O0 unless OLIVINE_VERILATOR_OPT says otherwise (the full SFU at -Os took > 25 min of
        # g++ on the loaded 2-core machine).
        try:
            run_cocotb(text, top, "tb_sfu", test_dir=TB_DIR, vectors=vectors, build_args=VERILATOR_BUILD_ARGS,
                       extra_env={"OLIVINE_SFU_RESULTS": str(out)}, opt="-O0")
        except RtlTestFailure as exc:
            failure = exc
        if not out.is_file():
            raise failure or RuntimeError("the SFU testbench wrote no results")
        with np.load(out) as res:
            results = [{"code": int(c), "mismatches": int(mm), "cycles": int(cy)}
                       for c, mm, cy in zip(res["code"], res["mismatches"], res["cycles"])]
    return results


# ---------------------------------------------------------------------------------------------
# the report

def summarize(config, ops, cases, results) -> tuple[list[dict], int]:
    lanes = sfu_lanes(config)
    rows, bad_total = [], 0
    by_op: dict[str, dict] = {}
    for case, res in zip(cases, results):
        wrong = res["mismatches"] + int(res["code"] != case.want_code)
        bad_total += wrong
        f = case.fields
        t = op_timing(case.op, f["imm"]) if case.want_code == 0 else None
        key = (case.op + ("/ovp4" if t is not OP_TIMING[case.op] else "")) if case.want_code == 0 else "errors"
        entry = by_op.setdefault(key, {"op": key, "cases": 0, "mismatches": 0, "cpr": [], "model": [], "timing": t,
                                       "misc_op": case.op})
        entry["cases"] += 1
        entry["mismatches"] += wrong
        if case.want_code == 0:
            entry["cpr"].append((res["cycles"], f["rows"], f["cols"], f["dst"], f["imm"], f["src1"]))
            entry["model"].append(t.instruction_cycles(f["rows"], f["cols"], lanes, f["dst"], f["imm"], src1=f["src1"]))
    for entry in by_op.values():
        if entry["cpr"]:
            t = entry["timing"]
            # the longest case; its per-row cost = measured cycles minus the model's fixed part
            cyc, r, c, dst, imm, src1 = max(entry["cpr"], key=lambda x: x[1] * x[2])
            fixed = t.instruction_cycles(r, c, lanes, dst, imm, src1=src1) - r * t.cycles_per_row(c, lanes)
            entry["cycles_per_row"] = (cyc - fixed) / r
            entry["elems_per_cycle"] = c / entry["cycles_per_row"]
            entry["model_cycles_per_row"] = t.cycles_per_row(c, lanes)
            entry["cols"] = c
            entry["timing_ok"] = all(x[0] == mo for x, mo in zip(entry["cpr"], entry["model"]))
        rows.append(entry)
    return rows, bad_total


def print_table(rows, lanes: int, backend: str) -> None:
    print(f"SFU RTL check ({backend}, {lanes} lanes) against sim/funcsim.py MISC semantics")
    print(f"{'op':8s} {'cases':>5s} {'mismatches':>10s} {'row len':>7s} {'cycles/row':>10s} "
          f"{'model':>6s} {'elem/cycle':>10s} {'OP_TIMING':>9s}")
    for e in rows:
        if "cycles_per_row" in e:
            print(f"{e['op']:8s} {e['cases']:5d} {e['mismatches']:10d} {e['cols']:7d} {e['cycles_per_row']:10.1f} "
                  f"{e['model_cycles_per_row']:6d} {e['elems_per_cycle']:10.2f} "
                  f"{'exact' if e['timing_ok'] else 'DIFFERS':>9s}")
        else:
            print(f"{e['op']:8s} {e['cases']:5d} {e['mismatches']:10d} {'-':>7s} {'-':>10s} {'-':>6s} {'-':>10s} {'-':>9s}")
    print("cycles/row: the longest case, measured status.cycles minus the model's fixed part (start, "
          "setup, drain); OP_TIMING: the model equals status.cycles on every case")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m olivine.sim.sfu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="fewer and shorter cases (CI)")
    parser.add_argument("--ops", default="", help="comma-separated ops (default: every op built)")
    parser.add_argument("--amaranth", action="store_true", help="Amaranth simulation instead of Verilator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ops = tuple(o for o in args.ops.split(",") if o) or tuple(OP_CORES)
    unknown = [o for o in ops if o not in OP_CORES]
    if unknown:
        parser.error(f"ops {unknown} have no SFU core; built: {', '.join(OP_CORES)}")
    config = small_config()
    cases = make_cases(config, ops, reduced=args.reduced, seed=args.seed)
    results = (run_amaranth if args.amaranth else run_verilator)(config, ops, cases)
    rows, bad = summarize(config, ops, cases, results)
    print_table(rows, sfu_lanes(config), "Amaranth" if args.amaranth else "Verilator")
    bad += sum(not e.get("timing_ok", True) for e in rows)
    if bad:
        for case, res in zip(cases, results):
            if res["mismatches"] or res["code"] != case.want_code:
                print(f"  MISMATCH {case.label}: {res['mismatches']} words, code {res['code']} "
                      f"(want {case.want_code})")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
