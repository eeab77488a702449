"""Compiler: lowering, synchronisation, length buckets, patches, artifacts and unsupported models."""

import functools

import numpy as np
import pytest
import torch

from olivine.compiler import isa
from olivine.compiler.artifact import ArtifactError, read_artifact
from olivine.compiler.compile import (apply_patches, compile_main, compile_model, decode_bucket, prefill_bucket,
                                      storage_report)
from olivine.compiler.spec import CompileError, UnsupportedModelError, pad16, spec_from_qllama, spec_from_shapes
from olivine.golden.model import LlamaConfig
from olivine.hw.config import for_board
from olivine.sim.runtime import Runtime, golden_generate, run_main

CFG = for_board("u280")


@functools.lru_cache(maxsize=None)
def glass():
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    m = load_model("glassllm")
    return m, quantize_model(m.config, m.weights, "w4a8-int4")


@functools.lru_cache(maxsize=None)
def glass_compiled(prefill_step=32, max_context=80):
    m, q = glass()
    return compile_model(spec_from_qllama(q), CFG, max_context=max_context, max_prompt=64, prefill_step=prefill_step)


def test_bucket_rounding():
    assert [prefill_bucket(n, 128) for n in (1, 128, 129)] == [128, 128, 256]
    assert [decode_bucket(n, 16) for n in (1, 16, 17)] == [16, 16, 32]


def test_programs_per_bucket_and_always_on_chip_decode():
    comp = glass_compiled()
    c = comp.spec.config
    assert comp.prefill_buckets() == [32, 64] and comp.decode_buckets() == [16, 32, 48, 64, 80]
    for p in comp.programs.values():
        prog = isa.decode_program(p.words)  # every program decodes and re-encodes to the same words
        assert np.array_equal(isa.encode_program(prog), p.words)
        assert prog[-1].mnemonic == "SYS" and prog[-1].enum("op") == "end"
        counts = p.stats["counts"]
        if p.kind == "decode":
            # no activation leaves the chip: the only stores are the KV appends and the logits
            assert p.stats["st_activation"] == 0 and p.stats["st_output"] == 1
            assert p.stats["st_kv"] == counts["ST"] - 1 == 6 * c.n_layers * c.n_kv_heads
            assert "MM" not in counts and counts["MV"] > 0
        else:
            assert counts["MM"] > 0
    dec = [comp.programs[f"decode_{b:05d}"].stats["instructions"] for b in comp.decode_buckets()]
    assert len(set(dec)) == 1  # the decode structure does not depend on the context bucket


def test_double_buffered_weight_loads_overlap_compute():
    comp = glass_compiled()
    prog = isa.decode_program(comp.programs["decode_00016"].words)
    weight_lds = [k for k, i in enumerate(prog) if i.mnemonic == "LD" and i.enum("target") == "weight"]
    mvs = [k for k, i in enumerate(prog) if i.mnemonic == "MV" and i.enum("mode") == "linear"]
    halves = {prog[k]["buf_addr"] for k in weight_lds}
    assert len(halves) == 2  # two weight-buffer halves alternate
    # the load of tile t+1 does not wait for the MV of tile t, only for the one two tiles back
    waiting = [k for k in weight_lds if prog[k]["wait"] & 0b0100]
    assert len(waiting) <= len(weight_lds) - 2 and all(prog[k]["wait"] & 0b0001 for k in mvs)


def test_weight_image_balanced_over_channels():
    comp = glass_compiled()
    wb = comp.layout.weight_bytes
    used = [b for b in wb if b]
    assert len(used) == CFG.hbm_channels
    assert max(used) <= 1.25 * (sum(used) / len(used))


def test_prefill_true_length_inside_bucket_matches_golden():
    m, q = glass()
    comp = glass_compiled()
    rt = Runtime.from_compiled(comp)
    g = torch.Generator().manual_seed(0)
    for n in (5, 37):  # bucket 32 (one chunk), bucket 64 (the last token in the second chunk)
        ids = torch.randint(0, m.config.vocab_size, (n,), generator=g).tolist()
        got = rt.prefill(ids)
        want = q.forward_int(torch.tensor(ids))[-1]
        assert torch.equal(got, want), n
    # decode across the 16/32/48 context buckets continues bit-exactly
    toks, logits = rt.generate(ids[:9], 12)
    g_toks, g_logits = golden_generate(q, ids[:9], 12)
    assert toks == g_toks and all(torch.equal(a, b) for a, b in zip(logits, g_logits))


def test_patches_change_only_declared_fields():
    comp = glass_compiled()
    p = comp.programs["decode_00032"]
    env = {"pos": 20, "tok_ch.0": 3, "tok_row.0": 2}
    a = apply_patches(p.words, p.patches, env)
    changed = set(np.nonzero(a != p.words)[0].tolist())
    allowed = set()
    for pt in p.patches:
        allowed.add(pt["offset"] + isa.BY_MNEMONIC[pt["mnemonic"]].field(pt["field"]).word)
    assert changed and changed <= allowed
    kinds = {(pt["mnemonic"], pt["field"]) for pt in p.patches}
    assert kinds == {("LD", "channel"), ("LD", "hbm_addr"), ("MISC", "imm"), ("ST", "hbm_addr")}
    with pytest.raises(ValueError, match="needs 'pos'"):
        apply_patches(p.words, p.patches, {"tok_ch.0": 0, "tok_row.0": 0})


def test_artifact_round_trip_run_and_errors(tmp_path, capsys):
    out = tmp_path / "glass"
    assert compile_main("glassllm", "u280", preset="w4a8-int4", out=str(out), max_context=48, quiet=True) == 0
    rt = Runtime.from_artifact(out, for_board("u280"))
    m, q = glass()
    ids = m.tokenizer.encode("Once upon a time")
    toks, _ = rt.generate(ids, 6)
    assert toks == golden_generate(q, ids, 6)[0]
    assert run_main(str(out), "Once upon a time", 6) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Once upon a time" + m.tokenizer.decode(toks)) and "tokens/s" in printed
    # a corrupted weight image and a mismatched configuration are named
    ch = out / "weights" / "ch03.bin"
    data = bytearray(ch.read_bytes())
    data[10] ^= 0xFF
    ch.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="ch03.bin: corrupt"):
        read_artifact(out)
    with pytest.raises(ArtifactError, match="recompile"):
        Runtime.from_artifact(out, for_board("u280", hbm_channels=16))


def test_unsupported_shapes_are_named():
    base = dict(vocab_size=256, dim=72, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=18, ffn_dim=256)
    with pytest.raises(UnsupportedModelError, match="hidden_size=72 is not a multiple of 16.*RMSNorm"):
        spec_from_shapes(LlamaConfig(**base))


# ---- any LLaMA shape: exact zero padding of the vocabulary, the FFN width and head_dim ------------

def random_llama(config: LlamaConfig, seed: int = 0):
    """Random float weights with unit-scale activations (norm gains around 1, linears ~ 1/sqrt(k))."""
    from olivine.golden.model import LayerWeights, LlamaWeights

    g = torch.Generator().manual_seed(seed)

    def lin(n, k):
        return torch.randn(n, k, generator=g) / k ** 0.5

    def gain():
        return 0.5 + torch.rand(config.dim, generator=g)

    shapes = config.linear_shapes()
    layers = [LayerWeights(attn_norm=gain(), ffn_norm=gain(), **{n: lin(*shapes[n]) for n in shapes})
              for _ in range(config.n_layers)]
    embed = torch.randn(config.vocab_size, config.dim, generator=g)
    head = embed if config.tie_embeddings else lin(config.vocab_size, config.dim)
    return LlamaWeights(embed=embed, layers=layers, final_norm=gain(), lm_head=head)


def assert_compiled_matches_golden(config, weights, preset="w4a8-int4", prompt=(3, 7, 1, 9, 20, 5, 11), new=6):
    """Compile, run on the functional simulator, and compare tokens and int32 logits with golden."""
    from olivine.golden.qmodel import quantize_model

    q = quantize_model(config, weights, preset)
    spec = spec_from_qllama(q)
    comp = compile_model(spec, CFG, max_context=48, max_prompt=32, prefill_step=16)
    toks, logits = Runtime.from_compiled(comp).generate(list(prompt), new)
    g_toks, g_logits = golden_generate(q, list(prompt), new)
    assert toks == g_toks
    assert all(torch.equal(a, b) for a, b in zip(logits, g_logits))
    assert all(a.shape == (config.vocab_size,) for a in logits)  # the padded vocabulary never shows
    return spec


ANY_SHAPES = {  # name: (changes to the base config, preset)
    "vocab101-untied": (dict(vocab_size=101, tie_embeddings=False), "w4a8-int4"),
    "vocab32001-tied": (dict(vocab_size=32001), "w4a8-int4"),
    "ffn1000-gqa2": (dict(ffn_dim=1000, n_kv_heads=2), "w4a8-ovp"),
    "hd8-gqa4": (dict(dim=64, n_heads=8, n_kv_heads=2, head_dim=8), "w4a8-int4"),
    "hd24-mha": (dict(dim=96, n_heads=4, n_kv_heads=4, head_dim=24), "w8a8"),
    "hd40-gqa2-ovp": (dict(dim=80, n_heads=2, n_kv_heads=1, head_dim=40), "w4a8-ovp"),
    "hd48-gqa3": (dict(dim=96, n_heads=6, n_kv_heads=2, head_dim=48), "w4a8-int4"),
    "hd80-mha": (dict(dim=160, n_heads=2, n_kv_heads=2, head_dim=80, ffn_dim=341), "w4a8-int4"),
    "hd96-gqa2": (dict(dim=192, n_heads=2, n_kv_heads=1, head_dim=96), "w4a8-int4"),
}


def test_shape_only_spec_pads_like_the_weights():
    cfg = LlamaConfig(vocab_size=32001, dim=128, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=40, ffn_dim=341)
    spec = spec_from_shapes(cfg)
    assert (spec.linears["lm_head"].n, spec.linears["layers.0.wk"].n, spec.linears["layers.0.wo"].k,
            spec.linears["layers.0.w_down"].k) == (32016, 2 * 48, 4 * 48, 352)
    comp = compile_model(spec, CFG, materialize=False, max_context=64)
    assert comp.layout.kv_parts[1] >= 64 * 48  # a KV region holds padded heads


@pytest.mark.parametrize("case", list(ANY_SHAPES))
def test_any_llama_shape_compiles_bit_exact(case):
    changes, preset = ANY_SHAPES[case]
    base = dict(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, ffn_dim=96,
                max_seq_len=64, rope_theta=5e5, tie_embeddings=True)
    config = LlamaConfig(**{**base, **changes})
    spec = assert_compiled_matches_golden(config, random_llama(config), preset)
    c, hp = config, pad16(config.head_dim)
    assert spec.linears["lm_head"].n == pad16(c.vocab_size) and spec.linears["lm_head"].n_true == c.vocab_size
    assert spec.linears["layers.0.w_down"].k == pad16(c.ffn_dim)
    assert (spec.linears["layers.0.wq"].n, spec.linears["layers.1.wo"].k) == (c.n_heads * hp, c.n_heads * hp)
    for name in ("lm_head", "layers.1.w_gate", "layers.1.w_up"):  # trailing padded rows requantize to zero
        lin = spec.linears[name]
        assert not lin.mult[lin.n_true:].any() and lin.mult[:lin.n_true].all()
    if hp != c.head_dim:  # inside every head the second RoPE half starts at hp/2; the rest are zero rows
        wq = spec.linears["layers.0.wq"]
        dead = np.ones(wq.n, dtype=bool)
        from olivine.compiler.spec import head_index
        dead[head_index(c.n_heads, c.head_dim)] = False
        assert not wq.mult[dead].any() and wq.mult[~dead].all() and not wq.rows[dead].any()


def test_head_padding_with_sparsity_is_refused():
    from olivine.golden.qmodel import quantize_model

    config = LlamaConfig(vocab_size=64, dim=64, n_layers=1, n_heads=8, n_kv_heads=8, head_dim=8, ffn_dim=64)
    q = quantize_model(config, random_llama(config), "w4a8-ovp-8:16")
    with pytest.raises(UnsupportedModelError, match=r"layers\.0\.wq: N:16 sparsity with head_dim not a multiple"):
        spec_from_qllama(q)


def test_llama3_rope_scaling_compiles_bit_exact():
    import dataclasses

    from olivine.golden.qmodel import quantize_model

    config = LlamaConfig(vocab_size=96, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=32, ffn_dim=96,
                         max_seq_len=64, rope_theta=500.0, rope_scaling=(8.0, 1.0, 4.0, 16))
    weights = random_llama(config, seed=4)
    prompt = torch.randint(0, 96, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    assert_compiled_matches_golden(config, weights, prompt=prompt, new=12)  # decodes up to position 41
    plain = quantize_model(dataclasses.replace(config, rope_scaling=None), weights, "w4a8-int4")
    scaled = quantize_model(config, weights, "w4a8-int4")
    tokens = torch.tensor(prompt)
    assert not torch.equal(plain.forward_int(tokens)[-1], scaled.forward_int(tokens)[-1])  # the scaling is used


@pytest.mark.models
@pytest.mark.parametrize("hf_changes", [
    dict(vocab_size=32001, intermediate_size=1000, tie_word_embeddings=False),
    dict(vocab_size=101, hidden_size=96, num_attention_heads=4, num_key_value_heads=1, head_dim=24,
         tie_word_embeddings=True, rope_theta=1e6),
], ids=["vocab32001-ffn1000-untied", "hd24-gqa4-tied"])
def test_hf_checkpoint_directory_compiles_bit_exact(tmp_path, hf_changes):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from olivine.golden.loaders import load_model

    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**base, **hf_changes})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.rand_like(p))
    hf.save_pretrained(tmp_path)
    m = load_model(tmp_path, use_cache=False)
    assert m.config.rope_theta == hf_changes.get("rope_theta", 10000.0)
    ids = torch.tensor([[5, 90, 3, 42, 7, 7, 0, 63]])
    with torch.no_grad():  # the float reference is the checkpoint, within the loaders' tolerance
        torch.testing.assert_close(m.float_model().forward(ids), hf(ids).logits, rtol=0, atol=1e-5)
    assert_compiled_matches_golden(m.config, m.weights)


def test_unsupported_quantization_is_named():
    from olivine.golden.qmodel import quantize_model

    m, _ = glass()
    with pytest.raises(UnsupportedModelError, match="fp32"):
        spec_from_qllama(quantize_model(m.config, m.weights, "fp32"))


def test_activation_formats_the_compiler_refuses_are_named():
    """OVP4 activations only with dense OVP4 weights (the OVP array's W4A4); static INT8 not at all."""
    from olivine.compiler.spec import _linear_from_qlinear
    from olivine.golden import contract

    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    calib = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    for weights, acts, sparsity, message in (("int4", "ovp4", None, "dense OVP4 weights only, not int4"),
                                             ("ovp4", "ovp4", "8:16", "not sparse ovp4"),
                                             ("int8", "int8-static", None, "'int8-static' are not supported")):
        lin = contract.compile_linear(w, weights=weights, acts=acts, calib=calib, sparsity=sparsity, name="x.wq")
        with pytest.raises(UnsupportedModelError, match=f"x.wq: .*{message}"):
            _linear_from_qlinear("x.wq", lin, 32, 32)


def test_compile_main_w4a4_calibrates_records_alphas_and_runs_bit_exact(tmp_path):
    """olivine compile --preset w4a4-ovp: calibration tokens as golden.accuracy takes them, the calibrated
    alphas in the artifact (equal to golden's), the programs on the OVP encoder / array, generation equal
    to golden's W4A4 model."""
    from olivine.compiler.compile import calibration_tokens
    from olivine.golden.qmodel import quantize_model

    out = tmp_path / "w4a4"
    assert compile_main("glassllm", "u280", preset="w4a4-ovp", out=str(out), max_context=32, quiet=True) == 0
    art = read_artifact(out)
    m, _ = glass()
    q = quantize_model(m.config, m.weights, "w4a4-ovp", calibration_tokens(m))
    scales = art.meta["activation_scales"]
    want = {n: (lin.act_alpha, lin.act_normal) for n, lin in q.linears.items() if lin.act == "ovp4"}
    assert {n: (v["alpha"], v["normal"]) for n, v in scales.items()} == want and len(want) == 7 * m.config.n_layers
    prog = isa.decode_program(art.programs[next(n for n, v in art.meta["programs"].items() if v["kind"] == "decode")])
    ovp_mv = [i for i in prog if i.mnemonic == "MV" and i.enum("afmt") == "ovp4"]
    encoders = [i for i in prog if i.mnemonic == "MISC" and i.enum("op") == "quant" and i["imm"] >> 17 & 1]
    assert ovp_mv and all(i.enum("wfmt") == "ovp4" for i in ovp_mv)
    # one encoder per distinct input: wq/wk/wv and w_gate/w_up share theirs when their alphas agree
    per_layer = [len({(scales[f"layers.{i}.{n}"]["alpha"], scales[f"layers.{i}.{n}"]["normal"]) for n in group})
                 for i in range(m.config.n_layers) for group in (("wq", "wk", "wv"), ("wo",), ("w_gate", "w_up"),
                                                                ("w_down",))]
    assert len(encoders) == sum(per_layer)
    rt = Runtime.from_artifact(out, for_board("u280"))
    ids = m.tokenizer.encode("Once upon a time")
    assert rt.generate(ids, 4)[0] == golden_generate(q, ids, 4)[0]


@pytest.mark.models
def test_hf_module_errors_name_the_layer():
    transformers = pytest.importorskip("transformers")
    from olivine.compiler.spec import check_hf_module

    cfg = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=4)
    ok = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    check_hf_module(ok)
    with pytest.raises(UnsupportedModelError, match="not SiLU"):
        check_hf_module(transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, hidden_act="gelu")))
    with pytest.raises(UnsupportedModelError, match=r"model\.layers\.0\.self_attn\.q_proj: a bias"):
        check_hf_module(transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attention_bias=True)))
    # head_dim=8 is padded by the compiler (test_any_llama_shape_compiles_bit_exact), not refused
    check_hf_module(transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**cfg, "num_attention_heads": 8,
                                                                               "num_key_value_heads": 8})))


def test_shape_only_storage_report():
    cfg = LlamaConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=688,
                      max_seq_len=256)
    comp = compile_model(spec_from_shapes(cfg), CFG, materialize=False)
    rep = storage_report(comp)
    assert sorted(rep["prefill"]) == [128, 256] and len(rep["decode"]) == 16
    assert rep["saved_factor"] > 10 and rep["total_bytes"] == sum(p.stats["bytes"] for p in comp.programs.values())
    assert comp.affine == {"prefill": True, "decode": True}
    # the prefill program of 256 tokens is the prologue, twice the chunks of 128 and the head
    assert rep["prefill"][256]["instructions"] > rep["prefill"][128]["instructions"]


def test_affine_bucket_generation_equals_direct_compilation():
    m, q = glass()
    comp = compile_model(spec_from_qllama(q), CFG, max_context=128, max_prompt=128, prefill_step=32,
                         verify_all=True)
    # every member of both families was also compiled directly and matched word for word
    assert comp.affine == {"prefill": True, "decode": True}
    assert comp.prefill_rows == 32 and len(comp.decode_buckets()) == 8


def test_small_prefill_chunks_residue_families_bit_exact():
    m, q = glass()
    comp = compile_model(spec_from_qllama(q), CFG, max_context=64, max_prompt=64, prefill_step=32, prefill_rows=8,
                         verify_all=True)
    assert comp.prefill_rows == 8 and comp.affine["prefill"] is True
    ids = torch.randint(0, m.config.vocab_size, (21,), generator=torch.Generator().manual_seed(5)).tolist()
    rt = Runtime.from_compiled(comp)
    assert torch.equal(rt.prefill(ids), q.forward_int(torch.tensor(ids))[-1])


# ---- N:16 block-sparse weights --------------------------------------------------------------------

def _ld_bytes(words, targets):
    total = 0
    for i in isa.decode_program(words):
        if i.mnemonic == "LD" and i.enum("target") in targets:
            total += i["length"] * i["n0"] * i["n1"] * i["n2"]
    return total


def test_compile_main_sparsity_artifact_bit_exact_and_image_shrinks(tmp_path, capsys):
    from olivine.golden.qconfig import LayerQuant, QuantConfig
    from olivine.golden.qmodel import quantize_model

    out = tmp_path / "glass816"
    assert compile_main("glassllm", "u280", preset="w8a8", sparsity="8:16", out=str(out), max_context=48) == 0
    assert "sparse meta" in capsys.readouterr().out
    rt = Runtime.from_artifact(out, for_board("u280"))
    m, _ = glass()
    base = QuantConfig.preset("w8a8")
    q = quantize_model(m.config, m.weights, QuantConfig(LayerQuant("int8", "int8", "8:16"), dict(base.overrides)))
    ids = m.tokenizer.encode("Once upon a time")
    toks, logits = rt.generate(ids, 6)
    g_toks, g_logits = golden_generate(q, ids, 6)
    assert toks == g_toks and all(torch.equal(a, b) for a, b in zip(logits, g_logits))
    # the programs use sparse MM/MV with meta loads; lm_head (the dense W8A8 override) does not
    prog = isa.decode_program(rt.programs["decode_00016"])
    lin = [i for i in prog if i.mnemonic == "MV" and i.enum("mode") == "linear"]
    sparse = [i for i in lin if i["sparse"]]
    metas = [i for i in prog if i.mnemonic == "LD" and i.enum("target") == "meta"]
    assert len(sparse) == len(metas) > 0
    assert sum(i["n"] for i in lin if not i["sparse"]) == m.config.vocab_size  # only lm_head's tiles are dense
    # storage: 8 kept INT8 values + 8 four-bit indices per 16 weights: the image shrinks by a quarter
    parts = rt.meta["layout"]["image_parts"]
    c = m.config
    dec = c.n_layers * (c.dim * (c.q_dim + 2 * c.kv_dim) + c.q_dim * c.dim + 3 * c.dim * pad16(c.ffn_dim))
    head = c.vocab_size * c.dim  # int8 lm_head
    assert parts["weight_values"] == dec // 2 + head
    # one N byte per 16x16 block (each tile's table padded to 16 bytes) + one 4-bit index per kept value
    assert dec // 256 + dec // 4 <= parts["meta"] <= dec // 256 + dec // 4 + 16 * 100
    assert parts["requant_entries"] == 16 * (c.n_layers * (c.q_dim + 2 * c.kv_dim + 2 * c.dim + 2 * pad16(c.ffn_dim))
                                             + c.vocab_size)
    dense_total = dec + head + parts["requant_entries"]
    assert sum(parts.values()) < 0.85 * dense_total
    # every bucket's streamed weight bytes, as recorded, are what its LD instructions load
    for name, info in rt.meta["programs"].items():
        assert info["stats"]["weight_load_bytes"] == _ld_bytes(rt.programs[name], ("weight", "meta", "bias")) - 32
        if info["kind"] == "decode":
            assert info["stats"]["weight_load_bytes"] == sum(parts.values())
    with pytest.raises(ValueError, match="neither a pattern"):
        compile_main("glassllm", "u280", sparsity="half", out=str(tmp_path / "x"), quiet=True)


def test_shape_only_sparsity_sizes():
    cfg = LlamaConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=688,
                      max_seq_len=256)
    dec = cfg.n_layers * (cfg.dim * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * cfg.dim
                          + 3 * cfg.dim * pad16(cfg.ffn_dim))
    head = cfg.vocab_size * cfg.dim
    for wfmt, bits in (("ovp4", 4), ("int8", 8)):
        sizes = {}
        for sp_ in (None, "8:16", "4:16", "2:4"):
            comp = compile_model(spec_from_shapes(cfg, weights=wfmt, sparsity=sp_), CFG, materialize=False)
            sizes[sp_] = storage_report(comp)["weight_image"]
        assert sizes[None]["weight_values"] == dec * bits // 8 + head and sizes[None]["meta"] == 0
        for sp_, n in (("8:16", 8), ("4:16", 4), ("2:4", 8)):
            assert sizes[sp_]["weight_values"] == dec * n // 16 * bits // 8 + head
            # one N byte per 16x16 block (each tile's table padded to 16 bytes) + a 4-bit index per kept value
            assert dec // 256 + dec * n // 32 <= sizes[sp_]["meta"] <= dec // 256 + dec * n // 32 + 16 * 64
        assert sizes["4:16"]["total"] < sizes["8:16"]["total"]
        if bits == 4:  # 8 kept 4-bit values + 8 4-bit indices: no smaller than 16 dense 4-bit values
            assert sizes["8:16"]["total"] >= sizes[None]["total"] > sizes["4:16"]["total"]
        else:
            assert sizes["8:16"]["total"] < sizes[None]["total"]


def test_compile_main_gptq_preset_runs_bit_exact(tmp_path):
    """A GPTQ preset compiles with golden's default calibration text; the simulator reproduces
    golden's integer model on it (GPTQ only changes which grid values the weights hold)."""
    from olivine.golden.data import calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    out = tmp_path / "gptq"
    assert compile_main("glassllm", "u280", preset="w4a8-ovp-gptq", out=str(out), max_context=48, quiet=True) == 0
    m = load_model("glassllm")
    q = quantize_model(m.config, m.weights, "w4a8-ovp-gptq", calibration_tokens(m.tokenizer))
    rt = Runtime.from_artifact(out, for_board("u280"))
    ids = m.tokenizer.encode("Once upon a time")
    toks, _ = rt.generate(ids, 6)
    assert toks == golden_generate(q, ids, 6)[0]


@pytest.mark.parametrize("preset", ["w4a8-ovp-gptqseq-g128", "w4a8-ovp-gptq-g128-rtndown",
                                    "w4a8-int4-gptq-g128-rtndown", "w4a8-ovp-gptq-g128-cal4k-smooth",
                                    "w4a8-int4-gptq-g128-cal4k-smooth", "w4a8-ovp-gptq-g128-cal4k-nsmooth",
                                    "w4a8-int4-gptq-g128-cal4k-nsmooth", "w4a8-ovp-gptq-g128-cal4k-nsmooth-vo",
                                    "w4a8-ovp-gptq-g128-cal4k-nsmooth-nt", "w4a8-int4-gptq-g128-cal4k-nsmooth-nt"])
def test_compile_main_gptq_variant_presets_run_bit_exact(tmp_path, preset):
    """w4a8-ovp-gptqseq-g128 (sequential GPTQ), w4a8-ovp-gptq-g128-rtndown (GPTQ but w_down
    round-to-nearest), w4a8-ovp-gptq-g128-cal4k-smooth (GPTQ on 4,096 calibration tokens per
    corpus, w_down's input smoothed into w_up's rows), -cal4k-nsmooth (the same with the RMSNorm
    outputs smoothed, 1/s folded into the gammas the spec carries), -cal4k-nsmooth-nt (those gammas
    then tuned by norm tweaking, golden/normtweak.py) and their INT4 counterparts, group
    multipliers, on glassllm: other w_down grid values than the one-pass GPTQ preset of the same
    grid, still valid OVP codes (INT4 in -7..7), and the functional simulator reproduces golden's
    integer model bit for bit (tokens and every logit)."""
    from olivine.golden import gptq, ovp
    from olivine.golden.data import CALIBRATION_TOKENS, model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qconfig import QuantConfig
    from olivine.golden.qmodel import quantize_model

    m = load_model("glassllm")
    calib = model_calibration_tokens(m, n_tokens=QuantConfig.preset(preset).calibration_length(CALIBRATION_TOKENS))
    q = quantize_model(m.config, m.weights, preset, calib, show_progress=False)
    kind = "int4" if "int4" in preset else "ovp4"
    one_pass = "w4a8-int4-gptq-g128" if kind == "int4" else "w4a8-ovp-gptq-g128"
    one = quantize_model(m.config, m.weights, one_pass, calib[:, :CALIBRATION_TOKENS], show_progress=False)
    w = q.linears["layers.3.w_down"].weight
    assert w.kind == kind and w.group == 128 and q.linears["lm_head"].weight.kind == "int8"
    if kind == "ovp4":
        assert torch.equal(ovp.unpack(w.codes, w.normal), w.values.to(torch.int32))
    else:
        assert int(w.values.abs().max()) <= 7
    assert not torch.equal(w.values, one.linears["layers.3.w_down"].weight.values)
    if QuantConfig.preset(preset).smooth_norm:  # the integer model runs on the folded gammas
        from olivine.golden.fixed import GAMMA_FRAC, to_fixed

        folded = {f"layers.{i}.{n}": to_fixed(getattr(m.weights.layers[i], n) / q.norm_scales[f"layers.{i}.{n}"], GAMMA_FRAC)
                  for i in range(m.config.n_layers) for n in ("attn_norm", "ffn_norm")}
        assert not torch.equal(q.gamma["layers.3.attn_norm"], to_fixed(m.weights.layers[3].attn_norm, GAMMA_FRAC))
        assert bool(q.norm_gains) == QuantConfig.preset(preset).norm_tweak
        for name, g in folded.items():  # the tweaked gains where norm tweaking kept some, else the folded ones
            assert torch.equal(q.gamma[name], to_fixed(q.norm_gains[name], GAMMA_FRAC) if name in q.norm_gains else g)
            assert (name in q.norm_gains) == (not torch.equal(q.gamma[name], g))
    if QuantConfig.preset(preset).smooth_o:  # wv's rows x 1/s, wo's columns x s (head-tied s)
        so = q.col_scales["layers.3.wo"]
        assert torch.equal(q.row_scales["layers.3.wv"], gptq.kv_rows_of(so, m.config.n_heads, m.config.n_kv_heads))
        assert torch.equal(q.linears["layers.3.wo"].w_float, m.weights.linear("layers.3.wo").float() * so)
        assert not torch.equal(q.linears["layers.3.wo"].weight.values, one.linears["layers.3.wo"].weight.values)
    out = tmp_path / "seq"
    assert compile_main("glassllm", "u280", preset=preset, out=str(out), max_context=48, quiet=True) == 0
    ids = m.tokenizer.encode("Once upon a time")
    toks, logits = Runtime.from_artifact(out, for_board("u280")).generate(ids, 4)
    g_toks, g_logits = golden_generate(q, ids, 4)
    assert toks == g_toks and all(torch.equal(a, b) for a, b in zip(logits, g_logits))


def test_mixed_precision_every_choice_compiles_bit_exact():
    """One model holding every mixed-precision choice (INT8, 4-bit grids with RTN and GPTQ, N:16 INT8 and
    OVP4): each MM/MV takes its linear's format and the simulator reproduces golden's integer model."""
    from olivine.golden import mixed
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.qmodel import quantize_model

    m, _ = glass()
    names = list(mixed.decoder_linear_shapes(m.config))
    choice = {n: mixed.DEFAULT_CHOICES[i % len(mixed.DEFAULT_CHOICES)] for i, n in enumerate(names)}
    qcfg = mixed.budget_config(mixed.Assignment(choice, 8.0, 0, 0.0, 0.0))
    q = quantize_model(m.config, m.weights, qcfg, model_calibration_tokens(m), show_progress=False)
    spec = spec_from_qllama(q)
    for n, c in choice.items():
        assert (spec.linears[n].wfmt, spec.linears[n].sparse) == (mixed.CHOICES[c].weights,
                                                                  mixed.CHOICES[c].sparsity is not None)
    comp = compile_model(spec, CFG, max_context=48, max_prompt=32, prefill_step=16)
    prog = isa.decode_program(comp.programs["decode_00048"].words)
    formats = {(i.enum("wfmt"), i["sparse"]) for i in prog if i.mnemonic == "MV" and i.enum("mode") == "linear"}
    assert formats == {("int8", 0), ("int8", 1), ("int4", 0), ("ovp4", 0), ("ovp4", 1)}
    ids = m.tokenizer.encode("Once upon a time")
    toks, logits = Runtime.from_compiled(comp).generate(ids, 6)
    g_toks, g_logits = golden_generate(q, ids, 6)
    assert toks == g_toks and all(torch.equal(a, b) for a, b in zip(logits, g_logits))


def test_compile_main_budget_bits_records_the_assignment_and_runs_bit_exact(tmp_path, capsys):
    from olivine.golden import mixed
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.qmodel import quantize_model

    out = tmp_path / "mixed"
    assert compile_main("glassllm", "u280", out=str(out), max_context=48, budget_bits=4.5) == 0
    assert "budget 4.5 bits -> " in capsys.readouterr().err
    art = read_artifact(out)
    mp = art.meta["mixed_precision"]
    m, _ = glass()
    want = mixed.assign(mixed.model_sensitivity(m, mixed.DEFAULT_CHOICES), 4.5)
    assert mp["choice"] == want.choice and mp["average_bits"] == want.average_bits <= 4.5
    assert len(set(want.choice.values())) > 1 and art.meta["model"]["preset"] == "budget-4.5"
    q = quantize_model(m.config, m.weights, mixed.budget_config(want), model_calibration_tokens(m),
                       show_progress=False)
    rt = Runtime.from_artifact(out, for_board("u280"))
    ids = m.tokenizer.encode("Once upon a time")
    assert rt.generate(ids, 6)[0] == golden_generate(q, ids, 6)[0]
    with pytest.raises(CompileError, match="smallest feasible budget for glassllm-en is 2.94"):
        compile_main("glassllm", "u280", out=str(tmp_path / "x"), budget_bits=2.5)
    with pytest.raises(CompileError, match="drop --preset"):
        compile_main("glassllm", "u280", out=str(tmp_path / "x"), preset="w8a8", budget_bits=4.5)


def test_group_scale_presets_compile_and_run_bit_exact(tmp_path):
    """Per-group weight multipliers: the w4a8-ovp-g128 preset through compile_main, and one model mixing
    OVP4 / INT4 at groups of 64 and 128 (one GPTQ linear) with ungrouped linears: every MV of a grouped
    linear carries its wgroup, its tiles hold the packed multipliers after the values, and the simulator
    gives golden's tokens and int32 logits."""
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qconfig import LayerQuant, QuantConfig
    from olivine.golden.qmodel import quantize_model

    out = tmp_path / "g128"
    assert compile_main("glassllm", "u280", preset="w4a8-ovp-g128", out=str(out), max_context=48, quiet=True) == 0
    m = load_model("glassllm")
    q = quantize_model(m.config, m.weights, "w4a8-ovp-g128")
    rt = Runtime.from_artifact(out, for_board("u280"))
    ids = m.tokenizer.encode("Once upon a time")
    toks, logits = rt.generate(ids, 4)
    g_toks, g_logits = golden_generate(q, ids, 4)
    assert toks == g_toks and all(torch.equal(a, b) for a, b in zip(logits, g_logits))

    w8 = LayerQuant("int8", "int8")
    qcfg = QuantConfig(LayerQuant("ovp4", "int8", group=64), {
        "layers.*.w_up": LayerQuant("int4", "int8", group=128), "layers.2.wq": LayerQuant("int4", "int8", group=64),
        "layers.1.w_down": LayerQuant("ovp4", "int8", method="gptq", group=128),
        "layers.3.wk": LayerQuant("ovp4", "int8"), "lm_head": w8}, name="groups")
    q = quantize_model(m.config, m.weights, qcfg, model_calibration_tokens(m), show_progress=False)
    spec = spec_from_qllama(q)
    assert spec.linears["layers.1.w_down"].group == 128 and spec.linears["layers.3.wk"].group is None
    d = spec.linears["layers.0.w_down"]  # K = 352 after padding: 6 groups of 64, 3 bytes per row
    assert d.k == 352 and d.row_bytes == 176 + 3
    comp = compile_model(spec, CFG, max_context=48, max_prompt=32, prefill_step=16)
    prog = isa.decode_program(comp.programs["decode_00048"].words)
    formats = {(i.enum("wfmt"), i.enum("wgroup")) for i in prog if i.mnemonic == "MV" and i.enum("mode") == "linear"}
    assert formats == {("ovp4", "g64"), ("ovp4", "g128"), ("int4", "g64"), ("int4", "g128"), ("ovp4", "none"),
                       ("int8", "none")}
    toks, logits = Runtime.from_compiled(comp).generate(ids, 4)
    g_toks, g_logits = golden_generate(q, ids, 4)
    assert toks == g_toks and all(torch.equal(a, b) for a, b in zip(logits, g_logits))


def test_group_scales_refused_where_not_compiled():
    from olivine.compiler.spec import QuantFacts, quant_refusal

    assert quant_refusal(QuantFacts("ovp4", "int8", grouped=True)) is None
    assert "per-group" in quant_refusal(QuantFacts("ovp4", "ovp4", grouped=True))
    assert "head_dim" in quant_refusal(QuantFacts("ovp4", "int8", cols_padded=True, grouped=True))
