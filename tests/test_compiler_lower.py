"""Compiler: lowering, synchronisation, length buckets, patches, artifacts and unsupported models."""

import functools

import numpy as np
import pytest
import torch

from olivine.compiler import isa
from olivine.compiler.artifact import ArtifactError, read_artifact
from olivine.compiler.compile import (apply_patches, compile_main, compile_model, decode_bucket, prefill_bucket,
                                      storage_report)
from olivine.compiler.spec import UnsupportedModelError, pad16, spec_from_qllama, spec_from_shapes
from olivine.golden.model import LlamaConfig
from olivine.hw.config import for_board
from olivine.sim.funcsim import Runtime, golden_generate, run_main

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
    base = dict(vocab_size=256, dim=128, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=24, ffn_dim=256)
    with pytest.raises(UnsupportedModelError, match="head_dim=24 is not a multiple of 16"):
        spec_from_shapes(LlamaConfig(**base))
    with pytest.raises(UnsupportedModelError, match="vocab_size=250"):
        spec_from_shapes(LlamaConfig(**{**base, "head_dim": 32, "vocab_size": 250}))


def test_unsupported_quantization_is_named():
    from olivine.golden.qmodel import quantize_model

    m, _ = glass()
    with pytest.raises(UnsupportedModelError, match="fp32"):
        spec_from_qllama(quantize_model(m.config, m.weights, "fp32"))


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
    with pytest.raises(UnsupportedModelError, match="head_dim=8"):
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
