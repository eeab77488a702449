"""Fuzzing the functional simulator: every stream the decoder accepts either executes or raises SimError.

Two campaigns (issue 7, "Robustness found by fuzzing"): single-field mutations of a compiled
glassllm program (every field within its encodable range), and random whole instructions on
random memory, biased towards sizes and addresses that fit the buffers so that execution (not
only the range checks) is reached. Any other exception is a bug: either the instruction is valid
(docs/isa.md "Semantics") and must execute, or a "Validity" rule rejects it with SimError.
The slow forms run thousands of cases (reduced under CI, tests/helpers.py REDUCED).
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olivine.compiler import isa
from olivine.compiler.asm import assemble
from olivine.hw.config import for_board
from olivine.sim.funcsim import QUANT_FLINT4, QUANT_OVP4, FuncSim, SimError
from tests.helpers import REDUCED

CFG = for_board("u280")
OVP4, FLINT4 = QUANT_OVP4, QUANT_FLINT4  # quant imm bits of the OVP4 encoder
#: small buffers: random sizes and addresses hit both the edges and the interior
SMALL_CFG = dataclasses.replace(CFG, buffers=dataclasses.replace(
    CFG.buffers, weight_kib=16, activation_kib=24, global_kib=8, meta_kib=4, bias_kib=4))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True, database=None)

# plausible values per field (chosen most of the time), so that execution is reached
_LIKELY = {
    "k_blocks": [1, 2, 4], "m": [1, 2, 3, 8], "n": [1, 8, 16, 32, 48], "ldo": [0, 0, 0, 8, 64],
    "rows": [1, 2, 4, 8, 16], "cols": [1, 2, 15, 16, 32, 64],
    "imm": [0, 0, 1, 2, 3, 4, 16, 48, 80, 1 << 16, 2 << 16, (1 << 16) | 2, (3 << 16) | 1,
            OVP4, OVP4, OVP4 | FLINT4, OVP4 | 2, OVP4 | (1 << 16), FLINT4, 1 << 19],
    "length": [1, 4, 64, 256], "n0": [1, 2, 3], "n1": [1, 2], "n2": [1, 2], "channel": [0, 1, 2, 3, 5],
    "meta_addr": [0, 0, 1, 4], "bias_addr": [0, 1, 2], "hbm_stride0": [0, 16, 1000],
    "hbm_stride1": [0, 64], "hbm_stride2": [0, 4096],
    "zero_fill": [0], "mask": [0], "sparse": [0], "bias": [0], "accumulate": [0], "afmt": [0, 0, 1],
    "anormal": [0, 0, 1],
}


def random_instruction(rng: random.Random) -> isa.Instruction:
    """A random instruction the decoder accepts (any field may take any encodable value)."""
    fmt = rng.choice([f for f in isa.FORMATS if f.mnemonic != "SYS"])
    vals = {}
    for f in fmt.fields:
        if f.name in _LIKELY and rng.random() < 0.8:
            v = rng.choice(_LIKELY[f.name])
        elif (f.name.endswith("addr") or f.name in ("src0", "src1", "dst")) and rng.random() < 0.8:
            v = rng.randrange(0, 8192, rng.choice([1, 4, 16, 64]))
        elif isinstance(f.kind, tuple):
            v = rng.randrange(len(f.kind))
        else:
            v = rng.choice([0, 1, rng.randrange(1 << min(f.width, 12)), rng.randrange(f.max + 1)])
        vals[f.name] = max(v, 1) if f.kind == "count" else min(v, f.max)
    if fmt.mnemonic == "MV":
        vals["m"] = 1
    if fmt.mnemonic in ("MM", "MV") and rng.random() < 0.8:  # the fields each mode uses
        if vals["mode"]:
            vals.update(wfmt=0, normal=0, meta_addr=0, afmt=0, anormal=0)
        else:
            if vals["afmt"]:  # W4A4 on the OVP array: dense OVP weights
                vals.update(wfmt=2, sparse=0)
            else:
                vals["sparse"] = int(rng.random() < 0.3)
                vals["anormal"] = 0
            vals["normal"] = vals["normal"] if vals["wfmt"] == 2 else 0
            vals["meta_addr"] = vals["meta_addr"] if vals["sparse"] else 0
    if fmt.mnemonic == "MISC" and rng.random() < 0.8:  # the parameter fields the op uses
        op = isa.MISC_OPS[vals["op"]]
        vals["mask"] = int(op == "softmax" and rng.random() < 0.7)
        if op == "quant" and rng.random() < 0.5:  # the OVP4 encoder: a record at src1, pairs along rows
            vals.update(imm=rng.choice([OVP4, OVP4 | FLINT4]), src1=rng.randrange(0, 8192, 16),
                        cols=rng.choice([2, 16, 32, 64]))
        if op in ("silu", "copy", "softmax", "dequant") or (op == "quant" and not vals["imm"] & OVP4):
            vals["src1"] = 0
        if op in ("add", "mul", "silu", "swiglu", "copy", "rmsnorm") or (op == "softmax" and not vals["mask"]):
            vals["imm"] = 0
        if op == "dequant":
            vals["imm"] = rng.choice([16, 32, 48, 80, 96, 8])
    return isa.make(fmt.mnemonic, **vals)


def random_memory(s: FuncSim, seed: int) -> None:
    """Random bytes (30 % zeros) in every buffer and channel. The data space holds, by turns, random
    bytes, small int32 words (so mantissas, eps shifts and exponents are in range and norm, vshift
    and requantization execute) or float64 RoPE thetas."""
    g = np.random.default_rng(seed)
    for arr in (s.data, *s.buffers.values(), *s.hbm):
        arr[:] = g.integers(0, 256, arr.size, dtype=np.uint8) * (g.random(arr.size) < 0.7)
    kind = g.integers(3)
    if kind == 1:
        s.data.view("<i4")[:] = g.integers(0, 63, s.data.size // 4)
    elif kind == 2:
        s.data.view("<f8")[:] = g.choice([10000.0, 500000.0, 0.5], s.data.size // 8)
    if g.random() < 0.5:  # plausible requantization entries: multiplier in [2**30, 2**31), moderate shift
        ent = s.buffers["bias"].view("<i4").reshape(-1, 4)
        ent[:, 1] = g.integers(1 << 30, 1 << 31, len(ent))
        ent[:, 2] = g.integers(20, 50, len(ent))


def run_or_simerror(s: FuncSim, words) -> str:
    """Run; return "ok" or "SimError" (any other exception propagates and fails the test)."""
    try:
        s.run(words)
    except SimError:
        return "SimError"
    return "ok"


def _random_instruction_case(rng: random.Random) -> str:
    inst = random_instruction(rng)
    s = FuncSim(SMALL_CFG, [1 << 16] * 4)
    random_memory(s, rng.randrange(1 << 30))
    return run_or_simerror(s, isa.encode_program([inst, isa.make("SYS", op="end")]))


@fuzz_settings(300)
@given(st.randoms(use_true_random=False))
def test_random_instructions_execute_or_raise_simerror(rng):
    _random_instruction_case(rng)


@pytest.mark.slow
def test_random_instructions_campaign_reaches_execution():
    """Thousands of random instructions: no undocumented exception, and many execute (not all rejected)."""
    n = 1500 if REDUCED else 20000
    outcomes = [_random_instruction_case(random.Random(seed)) for seed in range(n)]
    assert outcomes.count("ok") > n // 10, outcomes.count("ok")


# ---- single-field mutations of a compiled glassllm program --------------------------------------

@functools.lru_cache(maxsize=None)
def _glassllm_programs(preset: str = "w4a8-int4"):
    """The compiled glassllm (``preset``, 16-token context): the artifact and its patched programs."""
    from olivine.compiler.compile import (apply_patches, calibration_tokens, compile_model, patch_env_decode,
                                          patch_env_prefill, to_artifact)
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qconfig import QuantConfig
    from olivine.golden.qmodel import quantize_model

    loaded = load_model("glassllm")
    calib = calibration_tokens(loaded) if QuantConfig.preset(preset).needs_calibration() else None
    q = quantize_model(loaded.config, loaded.weights, preset, calib)
    comp = compile_model(spec_from_qllama(q, "glassllm"), CFG, max_context=16, max_prompt=16, prefill_step=16,
                         decode_step=16)
    art = to_artifact(comp)
    lay = art.meta["layout"]
    progs = {}
    for name, info in art.meta["programs"].items():
        env = (patch_env_decode(5, 3, lay["channels"]) if info["kind"] == "decode"
               else patch_env_prefill([1, 2, 3], info["bucket"], art.meta["prefill_rows"], lay["channels"]))
        words = apply_patches(art.programs[name], info["patches"], env)
        prog = isa.decode_program(words)
        progs[name] = (words, prog, isa.program_offsets(prog))
    return art, progs


def mutate_one_field(words: np.ndarray, prog, offsets, rng: random.Random) -> np.ndarray:
    """Set one field of one (non-SYS) instruction to another encodable value."""
    k = rng.choice([j for j, inst in enumerate(prog) if inst.mnemonic != "SYS"])
    inst = prog[k]
    f = rng.choice(inst.fmt.fields)
    old = inst[f.name]
    pick = rng.random()
    if pick < 0.3:
        v = rng.randrange(f.max + 1)
    elif pick < 0.6:
        v = old ^ (1 << rng.randrange(f.width))
    else:
        v = old + rng.choice([-64, -16, -4, -1, 1, 4, 16, 64])
    v = min(max(v, 0), f.max)
    if isinstance(f.kind, tuple):
        v %= len(f.kind)
    if f.kind == "count":
        v = max(v, 1)
    out = words.copy()
    o = offsets[k] + f.word
    out[o] = (int(out[o]) & ~(f.max << f.lsb) & 0xFFFFFFFF) | (v << f.lsb)
    return out


def _mutation_case(rng: random.Random, preset: str = "w4a8-int4") -> str:
    art, progs = _glassllm_programs(preset)
    words, prog, offsets = progs[rng.choice(sorted(progs))]
    mutated = mutate_one_field(words, prog, offsets, rng)
    try:
        isa.decode_program(mutated)
    except isa.IsaError:  # e.g. MV with m != 1: the decoder's own rule
        return "IsaError"
    s = FuncSim(art.config, art.meta["layout"]["channel_bytes"], art.weights)
    return run_or_simerror(s, mutated)


@pytest.mark.parametrize("preset", ["w4a8-int4", "w4a4-ovp"])
def test_compiled_programs_are_valid(preset):
    """The unmutated programs pass every validity rule (the rules do not reject what the compiler emits)."""
    art, progs = _glassllm_programs(preset)
    for words, _, _ in progs.values():
        s = FuncSim(art.config, art.meta["layout"]["channel_bytes"], art.weights)
        s.run(words)
    if preset == "w4a4-ovp":  # the W4A4 program uses the OVP encoder and the OVP array's MM
        insts = [i for _, prog, _ in progs.values() for i in prog]
        assert any(i.mnemonic == "MISC" and i.enum("op") == "quant" and i["imm"] & OVP4 for i in insts)
        assert any(i.mnemonic in ("MM", "MV") and i.enum("afmt") == "ovp4" for i in insts)


@fuzz_settings(15)
@given(st.randoms(use_true_random=False))
def test_field_mutations_of_glassllm_w4a4_execute_or_raise_simerror(rng):
    _mutation_case(rng, "w4a4-ovp")


@fuzz_settings(25)
@given(st.randoms(use_true_random=False))
def test_field_mutations_of_glassllm_execute_or_raise_simerror(rng):
    _mutation_case(rng)


@pytest.mark.slow
def test_field_mutation_campaign():
    n = 200 if REDUCED else 2500
    outcomes = [_mutation_case(random.Random(seed)) for seed in range(n)]
    assert outcomes.count("SimError") > 0 and outcomes.count("ok") > 0


# ---- the reproducers of issue 7 ------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("MISC op=quant src0=0 dst=4096 rows=1 cols=16 imm=2", "rows \\(1\\) divisible by 2"),
    ("MV out=fixed32 mode=qk k_blocks=1 n=16 ldo=8 a_addr=0 b_addr=1024 out_addr=4096", "ldo=8 is smaller"),
    ("MISC op=dequant src0=0 dst=4096 rows=2 cols=16 imm=8", "stride imm=8 must be a multiple of 16 and at least"),
    ("MISC op=rmsnorm src0=0 src1=1024 dst=4096 rows=1 cols=16", "shift -5000"),
    ("MISC op=softmax mask=1 src0=0 dst=0 rows=2 cols=16 imm=16", "query position 16"),
    ("MISC op=rope src0=0 src1=1024 dst=0 rows=1 cols=15", "must be even"),
    ("MISC op=copy src0=0 dst=8 rows=1 cols=16", "partly overlaps src0"),
    ("MM k_blocks=1 m=2 n=16 a_addr=0 out_addr=16", "overlaps the activations"),
    ("MM bias=1 out=int32 k_blocks=1 n=16 a_addr=0 out_addr=8192", "bias=1 needs out=fixed32"),
    ("MM mode=pv bias=1 out=fixed32 k_blocks=1 n=16 a_addr=0 b_addr=4096 out_addr=8192", "bias must be 0 in mode=pv"),
    ("LD target=act channel=0 hbm_addr=65300 length=256 n0=4 hbm_stride0=16", "LD reads bytes up to 65604"),
    # the OVP4 encoder and the W4A4 MM
    (f"MISC op=quant src0=0 src1=2048 dst=4096 rows=2 cols=16 imm={OVP4 | 2}", "takes no head blocks"),
    (f"MISC op=quant src0=0 src1=2048 dst=4096 rows=2 cols=16 imm={OVP4 | (1 << 16)}", "no power-of-two"),
    (f"MISC op=quant src0=0 src1=2048 dst=4096 rows=2 cols=15 imm={OVP4}", "cols=15 must be even"),
    (f"MISC op=quant src0=0 src1=2050 dst=4096 rows=2 cols=16 imm={OVP4}", "unaligned address 2050"),
    (f"MISC op=quant src0=0 src1=4100 dst=4096 rows=2 cols=16 imm={OVP4}", "overlaps the OVP4 quant parameter"),
    (f"MISC op=quant src0=0 dst=4096 rows=2 cols=16 imm={FLINT4}", "needs the OVP4 mode"),
    ("MISC op=quant src0=0 src1=2048 dst=4096 rows=2 cols=16", "src1 must be 0"),
    (f"MISC op=quant src0=0 dst=4096 rows=2 cols=16 imm={1 << 19}", "bits \\[31:19\\] are reserved"),
    (f"MISC op=quant src0=0 src1=3072 dst=4096 rows=2 cols=16 imm={OVP4}", "has bit 31 set"),
    ("MM afmt=ovp4 wfmt=int8 out=int32 k_blocks=1 n=16 a_addr=0 out_addr=8192", "needs mode=linear, wfmt=ovp4"),
    ("MM afmt=ovp4 wfmt=ovp4 sparse=1 out=int32 k_blocks=1 n=16 a_addr=0 out_addr=8192", "and sparse=0"),
    ("MM afmt=ovp4 mode=qk out=int32 k_blocks=1 n=16 a_addr=0 b_addr=1024 out_addr=8192", "needs mode=linear"),
    ("MM anormal=flint4 wfmt=ovp4 out=int32 k_blocks=1 n=16 a_addr=0 out_addr=8192", "applies to afmt=ovp4"),
    ("MM afmt=ovp4 wfmt=ovp4 k_blocks=2 m=2 n=16 a_addr=0 out_addr=16", "overlaps the activations"),
    ("ST source=act channel=1 hbm_addr=65500 length=16 n0=3 hbm_stride0=16", "ST writes bytes up to 65548"),
])
def test_issue7_reproducers_raise_simerror_naming_the_instruction(text, message):
    s = FuncSim(CFG, [1 << 16] * 2)
    tab = s.data[1024:1024 + 4 * 16 + 16].view("<i4")
    tab[16], tab[17] = 1 << 30, -5000  # an eps shift of -5000 (the rmsnorm case)
    s.data[3072:3076] = 0xFF  # an OVP4 quant record whose multiplier has bit 31 set
    mnemonic = text.split()[0]
    with pytest.raises(SimError, match=rf"instruction 0 at word 0 \({mnemonic} .*\): .*{message}"):
        s.run(isa.encode_program(assemble(text + "\nSYS op=end")))


def test_st_out_of_range_writes_nothing():
    s = FuncSim(CFG, [1 << 16] * 2)
    s.data[:64] = 7
    with pytest.raises(SimError):
        s.run(isa.encode_program(assemble("ST source=act channel=1 hbm_addr=65500 length=16 n0=3 hbm_stride0=16\n"
                                          "SYS op=end")))
    assert not s.hbm[1].any()


def test_zero_fill_of_a_weight_tile_is_not_served_from_the_cache():
    """A zero-filled weight buffer must not reuse the tile decoded from its previous HBM contents."""
    s = FuncSim(CFG, [1 << 16] * 2)
    g = torch.Generator().manual_seed(5)
    w = torch.randint(-127, 128, (16, 16), generator=g, dtype=torch.int64)
    s.hbm[0][:256] = w.to(torch.int8).numpy().view(np.uint8).reshape(-1)
    a = torch.randint(-127, 128, (1, 16), generator=g, dtype=torch.int64)
    s.put_qblock(4096, a.to(torch.int8), torch.zeros(1, 1, dtype=torch.int8), None)
    mv = "MV wfmt=int8 out=int32 k_blocks=1 n=16 a_addr=4096 b_addr=0 out_addr=8192"
    s.run(isa.encode_program(assemble(f"LD target=weight length=256 release=mpe\n{mv} wait=ld\nSYS op=end")))
    from olivine.golden import contract
    assert torch.equal(s.i32(8192, 1, 16), contract.int_matmul(a, w))
    s.run(isa.encode_program(assemble(f"LD target=weight zero_fill=1 length=256 release=mpe\n{mv} wait=ld\n"
                                      "SYS op=end")))
    assert not s.i32(8192, 1, 16).any()


# ---- the simulator's fast exact paths equal golden's ---------------------------------------------

@fuzz_settings(400)
@given(st.integers(1, 4), st.integers(1, 6), st.sampled_from(["int32", "int8"]), st.booleans(),
       st.randoms(use_true_random=False))
def test_requantize_exact_equals_contract_requantize(m, n, out, with_mantissa, rng):
    """requantize_exact (numpy) gives contract.requantize's integers over the whole input domain:
    any int32 accumulator, 9-bit (qk: 18-bit) mantissas, multipliers below 2**31, any int32 shift,
    int8 exponents."""
    from olivine.golden import contract
    from olivine.sim.funcsim import requantize_exact

    def ints(lo, hi, shape):
        edge = [v for v in (lo, hi, 0, 1, -1) if lo <= v <= hi]  # the domain only: a negative multiplier is no input
        return torch.tensor([rng.choice(edge) if rng.random() < 0.2 else rng.randint(lo, hi)
                             for _ in range(int(np.prod(shape)))], dtype=torch.int64).reshape(shape)

    acc = ints(contract.INT32_MIN, contract.INT32_MAX, (m, n)).to(torch.int32)
    mult = ints(0, (1 << 31) - 1, (n,))
    shift = torch.where(torch.rand(n) < 0.7, ints(-40, 90, (n,)), ints(-(1 << 31), (1 << 31) - 1, (n,)))
    exp = ints(-128, 127, (m, 1))
    mant = ints(0, 1 << 16, (m, n)) if with_mantissa else None
    want = contract.requantize(acc, contract.Multiplier(mult, shift), exp, mantissa=mant, out=out)
    lo, hi = (contract.INT32_MIN, contract.INT32_MAX) if out == "int32" else (-127, 127)
    got = requantize_exact(acc.numpy(), mult.numpy(), shift.numpy(), exp.numpy(),
                           None if mant is None else mant.numpy(), lo, hi)
    assert np.array_equal(got, want.to(torch.int64).numpy())


@pytest.mark.parametrize("q, k", [(127, 64), (127, 65520), (8, 4096), (1000, 64), (1000, 4096)])
def test_dense_tile_paths_equal_int_matmul(q, k):
    """Every DenseTile path (int8 GEMM, float32, contract fallback for large OVP values) equals
    int_matmul, at the extremes: all-127 weights, activations of -128 (raw INT8 codes can hold it)."""
    from olivine.golden import contract
    from olivine.sim.funcsim import DenseTile

    g = torch.Generator().manual_seed(k)
    w = torch.randint(-q, q + 1, (24, k), generator=g, dtype=torch.int64)
    w[0, :], w[1, :] = q, -q
    a = torch.randint(-128, 128, (3, k), generator=g, dtype=torch.int64)
    a[0, :] = -128
    tile = DenseTile(w)
    assert torch.equal(tile.matmul(a.to(torch.int8)).to(torch.int64), contract.int_matmul(a, w).to(torch.int64))


@pytest.mark.parametrize("q, k", [(8, 1536), (64, 1024), (65, 576), (127, 576), (127, 1536), (1024, 512)])
def test_fbgemm_products_equal_int_matmul_at_the_extremes(q, k):
    """sim/int8_gemv.py's FBGEMM products (one tile up to |w| = 64, a Split beyond) equal int_matmul where
    an unsplit product would saturate its int16 pair sums (|w| = 65..127 next to codes of 127, which FBGEMM
    sees as 255) and at the float32 limit (|w| = 64, K = 1024): DenseTile.matmul and the one-row Gemv of
    the prepared linear MV, for rows of -128, of 127, alternating and random."""
    from olivine.golden import contract
    from olivine.sim import int8_gemv
    from olivine.sim.funcsim import DenseTile

    if not int8_gemv.available():
        pytest.skip("this torch has no exact FBGEMM dynamic linear")
    g = torch.Generator().manual_seed(q * k)
    w = torch.randint(-q, q + 1, (40, k), generator=g, dtype=torch.int64)
    w[0, :], w[1, :], w[2, :] = q, -q, torch.where(torch.arange(k) % 2 == 0, q, -q)
    a = torch.randint(-128, 128, (4, k), generator=g, dtype=torch.int64)
    a[0, :], a[1, :], a[2, :] = -128, 127, torch.where(torch.arange(k) % 2 == 0, 127, -128)
    tile = DenseTile(w)
    assert tile.packed is not None and (type(tile.packed) is int8_gemv.Split) == (q > int8_gemv.MAX_WEIGHT)
    want = contract.int_matmul(a, w).to(torch.int64)
    assert torch.equal(tile.matmul(a.to(torch.int8)).to(torch.int64), want)
    gemv = int8_gemv.Gemv(k)
    for r in range(a.shape[0]):
        gemv.row[:] = a[r].numpy()
        assert torch.equal(gemv.run(tile.packed).to(torch.int64)[0], want[r])


def test_fbgemm_packing_refuses_what_it_cannot_compute_exactly():
    """int8_gemv.pack declines weights whose product could leave float32's exact integers or wrap, and an
    unsplit product above |w| = 64 really saturates (so the limit is needed, not only cautious)."""
    from olivine.sim import int8_gemv

    if not int8_gemv.available():
        pytest.skip("this torch has no exact FBGEMM dynamic linear")
    assert int8_gemv.pack(torch.ones(4, 1030, dtype=torch.int64) * 64, 64) is None  # 255 * 64 * 1032 >= 2**24
    assert int8_gemv.pack(torch.ones(4, 64, dtype=torch.int64) * 1100, 1100) is None  # |hi| = 69 > 64
    w = torch.full((2, 64), 127, dtype=torch.int64)
    raw = int8_gemv._raw_product(int8_gemv._prepack(w), torch.full((1, 64), 127.0))
    assert int(raw[0, 0]) != 127 * 127 * 64  # saturated pair sums: why pack splits such tiles


@fuzz_settings(300)
@given(st.integers(1, 5), st.integers(1, 40), st.booleans(), st.randoms(use_true_random=False))
def test_quantize_rows_exact_equals_contract(rows, cols, pow2, rng):
    """quantize_rows_exact gives golden's codes, exponents and mantissas (rows of zeros, of INT32_MIN,
    of one huge element, of small values)."""
    from olivine.golden import contract
    from olivine.sim.funcsim import quantize_rows_exact

    scale = rng.choice([0, 1, 100, 1 << 16, 1 << 24, 1 << 31])
    x = torch.tensor([[max(-(1 << 31), min((1 << 31) - 1, rng.randint(-scale, scale))) for _ in range(cols)]
                      for _ in range(rows)], dtype=torch.int32)
    if rng.random() < 0.2:
        x[0, rng.randrange(cols)] = rng.choice([-(1 << 31), (1 << 31) - 1, 127, 128, 255, 256, -32767])
    qa = (contract.quantize_act_pow2_int8 if pow2 else contract.quantize_act_dynamic_int8)(x, 16)
    codes, exps, mants = quantize_rows_exact(x.numpy(), pow2)
    assert np.array_equal(codes, qa.values.numpy()) and np.array_equal(exps, qa.exponent.numpy().reshape(-1))
    want_m = np.ones(rows) if qa.mantissa is None else qa.mantissa.numpy().reshape(-1)
    assert np.array_equal(mants.astype(np.int64), want_m.astype(np.int64))


@fuzz_settings(300)
@given(st.integers(1, 4), st.integers(1, 20), st.sampled_from(["int4", "flint4"]), st.randoms(use_true_random=False))
def test_quantize_rows_ovp4_equals_contract(rows, pairs, normal, rng):
    """The simulator's OVP4 encoder (from the folded multiplier) gives golden.ovp.encode of
    contract.quantize_act_ovp4's grid values: any int32 input (saturating beyond the grid, zeros, ties),
    alphas from tiny to huge."""
    from olivine.golden import contract, ovp
    from olivine.golden.ovp_format import get_format
    from olivine.sim.funcsim import quantize_rows_ovp4

    cols = 2 * pairs
    scale = rng.choice([0, 1, 100, 1 << 16, 1 << 24, 1 << 31])
    x = torch.tensor([[max(-(1 << 31), min((1 << 31) - 1, rng.randint(-scale, scale))) for _ in range(cols)]
                      for _ in range(rows)], dtype=torch.int32)
    if rng.random() < 0.3:
        x[0, rng.randrange(cols)] = rng.choice([-(1 << 31), (1 << 31) - 1, 1 << 20, -(1 << 20)])
    alpha = rng.choice([1e-6, 0.01, 0.5, 3.0, 100.0, 3e4, rng.uniform(0.001, 1000.0)])
    fmt = get_format(normal)
    m = contract.quantize_multiplier(2.0 ** (contract.OVP_ACT_GUARD_BITS - 16) / (alpha / fmt.normal_max))
    got = quantize_rows_ovp4(x.numpy(), int(m.mult), int(m.shift), normal)
    want = ovp.encode(contract.quantize_act_ovp4(x, 16, alpha, normal).values, normal).numpy()
    assert np.array_equal(got, want)


@fuzz_settings(200)
@given(st.integers(1, 4), st.integers(1, 64), st.sampled_from(["int32", "int8"]), st.booleans(),
       st.randoms(use_true_random=False))
def test_requantize_direct_path_equals_contract_requantize(m, n, out, with_mantissa, rng):
    """The one-product path of requantize_exact (taken for the magnitudes a model produces: shifts
    s = shift - e in [0, 62], |acc * mantissa| * mult < 2**62) gives contract.requantize's integers,
    up to the limits of its conditions (rounding ties included: multipliers and shifts that make them)."""
    from olivine.golden import contract
    from olivine.sim.funcsim import _requantize_direct, requantize_exact

    bits = rng.choice([4, 12, 20, 31])
    acc = torch.tensor([rng.randint(-(1 << bits), (1 << bits) - 1) for _ in range(m * n)],
                       dtype=torch.int64).reshape(m, n).clamp(contract.INT32_MIN, contract.INT32_MAX).to(torch.int32)
    mult = torch.tensor([rng.choice([1 << 30, (1 << 31) - 1, 0, 1, rng.randint(1 << 30, (1 << 31) - 1)])
                         for _ in range(n)], dtype=torch.int64)
    shift = torch.tensor([rng.randint(20, 62) for _ in range(n)], dtype=torch.int64)
    exp = torch.tensor([[rng.randint(-8, 12)] for _ in range(m)], dtype=torch.int64)
    mant = torch.tensor([rng.randint(1, 256) for _ in range(m * n)], dtype=torch.int64).reshape(m, n) \
        if with_mantissa else None
    want = contract.requantize(acc, contract.Multiplier(mult, shift), exp, mantissa=mant, out=out)
    lo, hi = (contract.INT32_MIN, contract.INT32_MAX) if out == "int32" else (-127, 127)
    x = acc.numpy().astype(np.int64) * (1 if mant is None else mant.numpy())
    direct = _requantize_direct(x, mult.numpy(), shift.numpy(), exp.numpy(), lo, hi)
    got = requantize_exact(acc.numpy(), mult.numpy(), shift.numpy(), exp.numpy(),
                           None if mant is None else mant.numpy(), lo, hi)
    assert np.array_equal(got, want.to(torch.int64).numpy())
    if direct is not None:
        assert np.array_equal(direct, want.to(torch.int64).numpy())
    s = shift.numpy() - exp.numpy()
    amax = int(np.abs(x).max())
    if s.min() >= 0 and s.max() <= 62 and amax <= 1 << min(int(s.min()) + 2, 61) and amax * int(mult.max()) < 1 << 62:
        assert direct is not None  # the fast path is the one taken


def test_requantize_direct_path_is_taken_with_ties():
    """Exact ties (x * mult = (2k + 1) * 2**(s-1)) round half up on the direct path as in the contract."""
    from olivine.golden import contract
    from olivine.sim.funcsim import _requantize_direct

    acc = torch.tensor([[3, -3, 5, -5, 1, -1, 0, 7]], dtype=torch.int32)
    mult = torch.full((8,), 1 << 30, dtype=torch.int64)
    shift = torch.full((8,), 31, dtype=torch.int64)  # x * 2**30 / 2**31 = x / 2: every odd x is a tie
    exp = torch.zeros((1, 1), dtype=torch.int64)
    want = contract.requantize(acc, contract.Multiplier(mult, shift), exp).to(torch.int64).numpy()
    got = _requantize_direct(acc.numpy().astype(np.int64), mult.numpy(), shift.numpy(), exp.numpy(),
                             contract.INT32_MIN, contract.INT32_MAX)
    assert got is not None and np.array_equal(got, want)
    assert want.tolist() == [[2, -1, 3, -2, 1, 0, 0, 4]]


@fuzz_settings(300)
@given(st.integers(1, 64), st.sampled_from(["fixed32", "int8"]), st.booleans(), st.booleans(),
       st.randoms(use_true_random=False))
def test_requantize_row_from_cached_entries_equals_contract(n, out, with_mantissa, with_bias, rng):
    """One linear output row requantized from its cached entries (funcsim._requantize_row: the output
    and bias clamps skipped where a bound shows they cannot act) gives contract.requantize's integers
    plus the saturating bias, or declines (None) where the one-product rule does not hold; results at
    the saturation limits included."""
    from olivine.golden import contract
    from olivine.sim.funcsim import LinearEntries, _requantize_row

    bits = rng.choice([4, 12, 20, 31])
    acc = torch.tensor([[rng.randint(-(1 << bits), (1 << bits) - 1) for _ in range(n)]],
                       dtype=torch.int64).clamp(contract.INT32_MIN, contract.INT32_MAX).to(torch.int32)
    mult = torch.tensor([rng.choice([1 << 30, (1 << 31) - 1, 0, 1, rng.randint(1 << 30, (1 << 31) - 1)])
                         for _ in range(n)], dtype=torch.int64)
    shift = torch.tensor([rng.randint(rng.choice([0, 20, 30]), 62) for _ in range(n)], dtype=torch.int64)
    big = rng.random() < 0.3
    bias = torch.tensor([rng.choice([contract.INT32_MAX, contract.INT32_MIN, 0]) if big and rng.random() < 0.5
                         else rng.randint(-(1 << 20), 1 << 20) for _ in range(n)], dtype=torch.int64)
    e = rng.randint(-8, 12)
    mt = rng.randint(1, 256) if with_mantissa else None
    want = contract.requantize(acc, contract.Multiplier(mult, shift), torch.tensor([[e]]),
                               mantissa=None if mt is None else torch.tensor([[mt]]),
                               out="int8" if out == "int8" else "int32").to(torch.int64)
    with_bias = with_bias and out == "fixed32"
    if with_bias:
        want = (want + bias).clamp(contract.INT32_MIN, contract.INT32_MAX)
    p = LinearEntries(mult.numpy(), shift.numpy(), bias.numpy(), int(shift.min()), int(shift.max()),
                      int(mult.max()), int(bias.abs().max()), {})
    # the second call reuses the (shift - exponent, half) cached for e; FBGEMM products arrive as float32
    # integers (below 2**24), the third call takes them in that form
    forms = [acc.numpy(), acc.numpy()] + ([acc.numpy().astype(np.float32)] if bits <= 20 else [])
    for form in forms:
        got = _requantize_row(form, p, e, mt, out == "int8", with_bias)
        x = acc.numpy().astype(np.int64) * (1 if mt is None else mt)
        amax, s_lo = int(np.abs(x).max()), int(shift.min()) - e
        applies = s_lo >= 0 and int(shift.max()) - e <= 62 and amax <= 1 << min(s_lo + 2, 61) \
            and amax * int(mult.max()) < 1 << 62
        assert (got is not None) == applies
        if got is not None:
            assert got.dtype == (np.int8 if out == "int8" else np.int32)
            assert np.array_equal(got.astype(np.int64), want.numpy())


@fuzz_settings(300)
@given(st.integers(1, 4), st.integers(1, 48), st.sampled_from(["fixed32", "int8"]), st.booleans(),
       st.randoms(use_true_random=False))
def test_requantize_with_one_entry_equals_contract(m, n, out, qk, rng):
    """An attention product requantized with its one entry (funcsim._requantize_one_entry: the entry as Python
    ints, per-element exponents and mantissas as Q.K^T has them, per-row exponents as P'.V; the output clamp
    skipped where a bound shows it cannot act) gives contract.requantize's integers, or declines (None)
    exactly where the one-product rule does not hold or the multiplier has bit 31; limits and ties included."""
    from olivine.golden import contract
    from olivine.sim.funcsim import _requantize_one_entry

    bits = rng.choice([4, 12, 20, 31])
    acc = torch.tensor([rng.choice([contract.INT32_MAX, contract.INT32_MIN]) if rng.random() < 0.05
                        else rng.randint(-(1 << bits), (1 << bits) - 1) for _ in range(m * n)],
                       dtype=torch.int64).reshape(m, n).clamp(contract.INT32_MIN, contract.INT32_MAX).to(torch.int32)
    mult = rng.choice([1 << 30, (1 << 31) - 1, 0, 1, 1 << 31, rng.randint(1 << 30, (1 << 31) - 1)])
    shift = rng.randint(rng.choice([-3, 0, 20, 30]), rng.choice([40, 62, 70]))
    exp = torch.tensor([rng.randint(-8, 12) for _ in range(m * (n if qk else 1))],
                       dtype=torch.int64).reshape(m, n if qk else 1)
    mant = torch.tensor([rng.randint(1, 256) * rng.randint(1, 256) for _ in range(m * n)],
                        dtype=torch.int64).reshape(m, n) if qk else None
    ent = np.array([[0, mult if mult < 1 << 31 else mult - (1 << 32), shift, 0]], dtype=np.int32)
    got = _requantize_one_entry(acc.numpy(), ent, exp.numpy(), None if mant is None else mant.numpy(), out == "int8")
    x = acc.numpy().astype(np.int64) * (1 if mant is None else mant.numpy())
    s = shift - exp.numpy()
    amax = int(np.abs(x).max())
    applies = mult < 1 << 31 and s.min() >= 0 and s.max() <= 62 and amax <= 1 << min(int(s.min()) + 2, 61) \
        and amax * mult < 1 << 62
    assert (got is not None) == applies
    if got is not None:
        want = contract.requantize(acc, contract.Multiplier(torch.tensor([mult]), torch.tensor([shift])), exp,
                                   mantissa=mant, out="int8" if out == "int8" else "int32")
        assert got.dtype == (np.int8 if out == "int8" else np.int32)
        assert np.array_equal(got.astype(np.int64), want.to(torch.int64).numpy())


def test_requantize_row_saturates_one_past_the_limit():
    """Results one past int32's / int8's limit (4 * 2**30 >> 1 = 2**31; 254 * 2**30 >> 31 = 127 rounds
    up to 128) are clamped by the cached-entries path exactly as by the contract."""
    from olivine.golden import contract
    from olivine.sim.funcsim import LinearEntries, _requantize_row

    for acc, shift, int8, want in (([4, -4, 3], 1, False, [contract.INT32_MAX, -(1 << 31), 3 << 29]),
                                   ([255, -255, 253], 31, True, [127, -127, 127])):
        a = np.array([acc], dtype=np.int32)
        mult = np.full(3, 1 << 30, dtype=np.int64)
        sh = np.full(3, shift, dtype=np.int64)
        p = LinearEntries(mult, sh, np.zeros(3, dtype=np.int64), shift, shift, 1 << 30, 0, {})
        got = _requantize_row(a, p, 0, None, int8, False)
        ref = contract.requantize(torch.from_numpy(a), contract.Multiplier(torch.from_numpy(mult), torch.from_numpy(sh)),
                                  torch.zeros(1, 1, dtype=torch.int64), out="int8" if int8 else "int32")
        assert got.tolist() == [want] == ref.tolist()
