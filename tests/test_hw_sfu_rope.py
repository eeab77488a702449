"""The SFU's rope op (hw/sfu_rope.py in hw/sfu.py): bit-exact with sim/funcsim.py (golden sfu.rope,
"half" style, padded heads), the ROM is golden's tables, the record check answers defined errors.

Expected values come from ``FuncSim.do_misc`` on the same data space (sim/sfu_check.py); every
case compares the whole data space afterwards, so a write outside the destination is caught.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from olivine.golden import sfu as golden_sfu
from olivine.hw.sfu import MISC_OPS, OP_TIMING, Sfu, SfuError, SfuHarness, small_config
from olivine.hw.sfu_rope import ROPE_MAX_COLS, RopeRom
from olivine.sim import sfu_check
from olivine.sim.funcsim import SimError

CONFIG = small_config()
PLAIN = RopeRom(10000.0, 8, 40)          # no scaling; hd/2 = 4 = one ROM beat at 4 lanes


def _rope_case(rng, rom, rows, cols, kind, *, per=0, base=None, words=None, label=""):
    """A rope case on ``rom``'s record (or ``words``), its expected image from funcsim (None: funcsim
    rejects the record, so the RTL must answer an error)."""
    saved = sfu_check.CHECK_ROPE
    sfu_check.CHECK_ROPE = rom
    try:
        case = sfu_check._fixed_case(CONFIG, rng, "rope", rows, cols, kind, 4, label or f"rope {rows}x{cols} {kind}")
    finally:
        sfu_check.CHECK_ROPE = saved
    f = case.fields
    if base is None:
        base = int(rng.integers(0, rom.positions - (rows - 1) // max(1, per)))
    f["imm"] = base | per << 16
    if words is not None:
        case.image[f["src1"]: f["src1"] + 48] = np.array(words, dtype="<u4").view(np.uint8)
    try:
        case.want = sfu_check.expected_image(CONFIG, case.image, f)
    except SimError:
        case.want = None
    return case


def _run(rom, cases):
    return sfu_check.run_amaranth(CONFIG, ("rope",), cases, rope=rom)


def _assert_exact(cases, results):
    for case, res in zip(cases, results):
        f = case.fields
        assert res["mismatches"] == 0, f"{case.label}: {res['mismatches']} lanes differ from funcsim"
        assert res["code"] == 0 and res["error"] == 0, case.label
        assert res["cycles"] == OP_TIMING["rope"].instruction_cycles(f["rows"], f["cols"], 4, f["dst"], f["imm"]), case.label


def test_rom_words_are_goldens_tables():
    rom = sfu_check.CHECK_ROPE
    cos, sin = golden_sfu.rope_tables(rom.positions, rom.head_dim, rom.theta, 16, rom.scaling)
    lanes, half = 4, rom.head_dim // 2
    words = rom.words(lanes)
    assert len(words) == rom.positions * rom.beats(lanes) and rom.beats(lanes) == 2
    for p in (0, 1, 17, rom.positions - 1):
        for i in range(half):
            word = words[p * rom.beats(lanes) + i // lanes]
            c = (word >> (18 * (i % lanes))) & 0x3FFFF
            s = (word >> (18 * (lanes + i % lanes))) & 0x3FFFF
            assert c - (c >> 17 << 18) == cos[p, i] and s - (s >> 17 << 18) == sin[p, i]
    assert rom.bits == rom.positions * half * 2 * 18
    # the entries golden's rope itself uses (its table is longer: the same rows)
    x = np.zeros((1, rom.head_dim), dtype=np.int32)
    x[0, 0] = 1 << 16
    import torch
    y = golden_sfu.rope(torch.from_numpy(x), [33], 16, rom.theta, rom.head_dim, "half", scaling=rom.scaling)
    assert int(y[0, 0]) == cos[33, 0] and int(y[0, half]) == sin[33, 0]


def test_plain_rope_bit_exact_padded_heads_rows_per_position():
    """No scaling; the head fills the row or is padded (hd < cols), 1-3 rows per position, edges."""
    rng = np.random.default_rng(21)
    cases = [_rope_case(rng, PLAIN, rows, cols, kind, per=per)
             for rows, cols, kind, per in [(3, 8, "random", 0), (4, 8, "edges", 1), (6, 12, "random", 2),
                                           (5, 16, "edges", 3), (2, 10, "equal", 0), (7, 8, "small", 7),
                                           (1, 2 * ROPE_MAX_COLS // 2, "random", 0)]]
    assert all(c.want is not None for c in cases)
    assert any(np.any(c.want != c.image) for c in cases)
    _assert_exact(cases, _run(PLAIN, cases))


def test_llama3_scaled_rom_bit_exact_and_last_position():
    """The check command's LLaMA-3 ROM, a row at its last position (the whole range is used)."""
    rom = sfu_check.CHECK_ROPE
    rng = np.random.default_rng(22)
    cases = [_rope_case(rng, rom, 4, 12, "edges", per=2, base=rom.positions - 2),
             _rope_case(rng, rom, 3, 20, "random", per=0, base=rom.positions - 3),
             _rope_case(rng, rom, 2, 12, "random", per=0, base=0)]
    _assert_exact(cases, _run(rom, cases))


def test_sixteen_lanes_glassllm_rom():
    """The U280 lane count with glassllm's ROM (theta 1e4, hd 32, 128 positions): one ROM beat per position."""
    config = small_config(sfu_dsp=64)
    rom = RopeRom.from_model_config({"rope_theta": 10000.0, "head_dim": 32, "max_seq_len": 128})
    rng = np.random.default_rng(23)
    cases = []
    for rows, cols, per in [(4, 32, 4), (3, 48, 0), (2, 32, 1)]:
        words = rom.record_words()
        case = sfu_check._fixed_case(config, rng, "copy", rows, cols, "edges", 16, f"rope16 {rows}x{cols}")
        f = dict(case.fields, op=MISC_OPS.index("rope"), src1=(case.fields["dst"] + 4 * rows * cols + 64) // 8 * 8,
                 imm=int(rng.integers(0, 100)) | per << 16)
        case.image[f["src1"]: f["src1"] + 48] = np.array(words, dtype="<u4").view(np.uint8)
        case.fields, case.op = f, "rope"
        case.want = sfu_check.expected_image(config, case.image, f)
        cases.append(case)
    results = sfu_check.run_amaranth(config, ("rope",), cases, rope=rom)
    for case, res in zip(cases, results):
        f = case.fields
        assert res["mismatches"] == 0 and res["code"] == 0, case.label
        assert res["cycles"] == OP_TIMING["rope"].instruction_cycles(f["rows"], f["cols"], 16, f["dst"], f["imm"])


def _f64_words(v: float) -> list[int]:
    return list(struct.unpack("<2I", struct.pack("<d", v)))


def test_records_that_break_the_data_rules_or_differ_from_the_rom_write_nothing():
    rom = sfu_check.CHECK_ROPE
    good = rom.record_words()
    rng = np.random.default_rng(24)

    def with_(**kw):
        w = list(good)
        for k, v in kw.items():
            if k == "theta":
                w[0:2] = _f64_words(v)
            elif k == "hd":
                w[2] = v
            elif k == "flag":
                w[3] = v
            else:  # scaling parameter q
                q = int(k[1])
                w[4 + 2 * q: 6 + 2 * q] = _f64_words(v)
        return w

    bad_data = [with_(theta=float("nan")), with_(theta=1.0), with_(theta=-5e5), with_(theta=float("inf")),
                with_(hd=11), with_(hd=14), with_(flag=2), with_(s0=0.0), with_(s1=-1.0), with_(s3=float("inf"))]
    other = [with_(theta=500000.5), with_(hd=10), with_(s2=4.5), with_(flag=0, s0=0.0, s1=0.0, s2=0.0, s3=0.0)]
    cases = []
    for w in bad_data:
        c = _rope_case(rng, rom, 3, 12, "random", words=w, label=f"bad record {w[:4]}")
        assert c.want is None, "funcsim must reject the record as well"
        c.want_code = int(SfuError.BAD_DATA)
        cases.append(c)
    for w in other:  # valid for funcsim, but not what this ROM holds
        c = _rope_case(rng, rom, 3, 12, "random", words=w, label=f"other record {w[:4]}")
        assert c.want is not None
        c.want, c.want_code = None, int(SfuError.ROPE_ROM)
        cases.append(c)
    # positions: the last row beyond the ROM (funcsim's table is 65536 long, so it computes one)
    for rows, per, base in [(1, 0, rom.positions), (3, 1, rom.positions - 2), (9, 4, rom.positions - 2),
                            (4, 4095, rom.positions)]:
        c = _rope_case(rng, rom, rows, 12, "random", per=per, base=base, label=f"position {base}+{rows - 1}//{per}")
        c.want, c.want_code = None, int(SfuError.ROPE_ROM)
        cases.append(c)
    base = _rope_case(rng, rom, 3, 12, "random")
    for change, code in [(dict(cols=13), SfuError.BAD_FIELD), (dict(src1=base.fields["src1"] + 4), SfuError.UNALIGNED),
                         (dict(cols=ROPE_MAX_COLS + 2, rows=1), SfuError.ROW_TOO_LONG),
                         (dict(src1=len(base.image) - 40), SfuError.OUT_OF_RANGE)]:
        cases.append(sfu_check.Case("rope", dict(base.fields, **change), base.image, want_code=int(code),
                                    label=str(change)))
    # the last good case: within the ROM exactly
    ok = _rope_case(rng, rom, 9, 12, "random", per=4, base=rom.positions - 3)
    results = _run(rom, cases + [ok])
    for case, res in zip(cases, results):
        assert res["code"] == case.want_code and res["error"] == 1, case.label
        assert res["mismatches"] == 0, f"{case.label}: the data space changed"
    assert results[-1]["code"] == 0 and results[-1]["mismatches"] == 0


def test_without_a_rom_rope_is_not_built():
    s = Sfu(CONFIG)
    assert "rope" not in s.ops and "vshift" in s.ops
    case = _rope_case(np.random.default_rng(25), PLAIN, 2, 8, "random")
    case.want, case.want_code = None, int(SfuError.NOT_BUILT)
    (res,) = sfu_check.run_amaranth(CONFIG, ("copy",), [case])
    assert res["code"] == SfuError.NOT_BUILT and res["mismatches"] == 0
    with pytest.raises(ValueError, match="needs its cos/sin ROM"):
        Sfu(CONFIG, ops=("rope",))
    with pytest.raises(TypeError, match="RopeRom"):
        SfuHarness(CONFIG, ops=("rope",), rope=(10000.0, 8, 40))


def test_rom_parameters_and_model_configs():
    with pytest.raises(ValueError, match="head_dim"):
        RopeRom(10000.0, 7, 16)
    with pytest.raises(ValueError, match="positions"):
        RopeRom(10000.0, 8, 1 << 17)
    with pytest.raises(ValueError, match="theta"):
        RopeRom(1.0, 8, 16)
    with pytest.raises(ValueError, match="scaling"):
        RopeRom(10000.0, 8, 16, (8.0, 4.0, 1.0, 8192))
    with pytest.raises(ValueError, match="lacks max_seq_len"):
        RopeRom.from_model_config({"rope_theta": 1e4, "head_dim": 64})
    smol = RopeRom.from_model_config({"rope_theta": 100000.0, "head_dim": 64, "max_seq_len": 8192, "rope_scaling": None})
    assert smol.bits == 8192 * 32 * 2 * 18
    short = RopeRom.from_model_config({"rope_theta": 100000.0, "head_dim": 64, "max_seq_len": 8192}, positions=2048)
    assert short.positions == 2048 and short.bits == smol.bits // 4
    llama3 = RopeRom.from_model_config({"rope_theta": 500000.0, "head_dim": 64, "max_seq_len": 256,
                                        "rope_scaling": [8.0, 1.0, 4.0, 8192]})
    assert llama3.scaling == (8.0, 1.0, 4.0, 8192.0)
    # the record the compiler writes for a model is the record the ROM accepts
    from olivine.compiler.layout import rope_record
    from olivine.golden.model import LlamaConfig

    cfg = LlamaConfig(vocab_size=32, dim=128, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=64, ffn_dim=64,
                      rope_theta=500000.0, max_seq_len=256, rope_scaling=(8.0, 1.0, 4.0, 8192))
    rom = RopeRom.from_model_config(cfg)
    assert rom == llama3
    assert list(rope_record(cfg).view("<u4")) == rom.record_words()


@pytest.mark.models
@pytest.mark.parametrize("name", ["glassllm", "smollm2"])
def test_rom_presets_are_the_models_configs(name):
    """The resource presets (hw/sfu_rope.py ROM_PRESETS) are the ROMs of the real models' configs."""
    from olivine.golden.loaders import load_model_config
    from olivine.hw.sfu_rope import preset_rom

    assert preset_rom(name) == RopeRom.from_model_config(load_model_config(name))


def _in_place_case(rng, rom, rows, cols, per, src0, kind="random"):
    """rope with dst = src0 (docs/isa.md allows it) on ``rows`` heads of ``cols`` (the ROM's head, or
    padded to ``cols``), the record after the rows; expected image from funcsim."""
    space = (CONFIG.buffers.activation_kib + CONFIG.buffers.global_kib) * 1024
    image = np.zeros(space, dtype=np.uint8)
    n = rows * cols
    image[src0: src0 + 4 * n] = sfu_check._values(rng, n, kind).astype("<i4").view(np.uint8)
    src1 = (src0 + 4 * n + 64) // 8 * 8
    words = rom.record_words()
    if cols == rom.head_dim:
        words[2] = 0      # hd 0: the head fills the row
    image[src1: src1 + 48] = np.array(words, dtype="<u4").view(np.uint8)
    base = int(rng.integers(0, rom.positions - (rows - 1) // max(1, per)))
    f = dict(op=MISC_OPS.index("rope"), mask=0, src0=src0, src1=src1, dst=src0, rows=rows, cols=cols,
             imm=base | per << 16, offset=int(rng.integers(0, 1 << 20)))
    case = sfu_check.Case("rope", f, image, label=f"rope in place {rows}x{cols} hd {rom.head_dim} per {per} @{src0}")
    case.want = sfu_check.expected_image(CONFIG, image, f)
    assert np.any(case.want != image)
    return case


@pytest.mark.parametrize("head_dim", [32, 64])
def test_in_place_rope_many_rows_bit_exact(head_dim):
    """Issue 8: rope with dst = src0 over many rows (the compiler's Q/K heads: ``rows = R * heads``
    at ``per = heads`` rows a position, or one row a position), the head filling the row or padded
    (hd 24 / 48 in rows of 32 / 64), lane-aligned and not: every row exact, the timing of out of place."""
    rng = np.random.default_rng(26 + head_dim)
    full = RopeRom(10000.0, head_dim, 128)
    padded = RopeRom(10000.0, head_dim * 3 // 4, 128)
    rows = 2048 // head_dim        # 64 rows of 32 (glassllm's failing instruction) or 32 of 64
    cases = [_in_place_case(rng, full, rows, head_dim, 4, 0), _in_place_case(rng, full, rows // 2, head_dim, 0, 4, "edges")]
    _assert_exact(cases, _run(full, cases))
    cases = [_in_place_case(rng, padded, rows, head_dim, 2, 8)]
    _assert_exact(cases, _run(padded, cases))
