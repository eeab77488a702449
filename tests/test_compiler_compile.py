"""compile_main / plan_lengths: every option and the lengths are checked before any quantization."""

import json
import re

import pytest
import torch

from olivine.compiler import compile as cc
from olivine.compiler.compile import compile_main, compile_model, plan_lengths
from olivine.compiler.spec import CompileError, spec_from_shapes
from olivine.golden import loaders
from olivine.golden.model import LlamaConfig
from olivine.hw.config import ConfigError, for_board, small

# SmolLM2-135M's shape (its config.json), so these tests need neither the GGUF file nor transformers
SMOLLM2_SHAPE = LlamaConfig(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                            ffn_dim=1536, norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192,
                            tie_embeddings=True, name="smollm2-shape")


def _shape_compile(context: int, prompt: int = 128):
    spec = spec_from_shapes(SMOLLM2_SHAPE, "ovp4")
    return compile_model(spec, for_board("u280"), max_context=context, max_prompt=prompt,
                         decode_buckets=[context], prefill_buckets=[prompt], materialize=False)


def test_default_context_of_a_long_model_is_the_largest_bucket_that_fits():
    # before: the default was the model's 8192 and compilation failed with "not even one token fits"
    spec = spec_from_shapes(SMOLLM2_SHAPE, "ovp4")
    plan = plan_lengths(spec, for_board("u280"))
    assert 16 <= plan.max_context < SMOLLM2_SHAPE.max_seq_len and plan.max_context % 16 == 0
    assert plan.max_prompt == min(plan.max_context, cc.DEFAULT_MAX_PROMPT)
    assert any(f"max context: {plan.max_context} tokens" in n for n in plan.notes)
    # it is the largest: a decode program at that context compiles, one bucket more does not
    _shape_compile(plan.max_context)
    with pytest.raises(CompileError):
        _shape_compile(plan.max_context + 16)


def test_a_context_that_does_not_fit_names_max_context_and_the_largest_that_fits():
    spec = spec_from_shapes(SMOLLM2_SHAPE, "ovp4")
    largest = plan_lengths(spec, for_board("u280")).max_context
    with pytest.raises(CompileError, match=f"--max-context {largest}") as err:
        plan_lengths(spec, for_board("u280"), max_context=8192)
    assert "--config" in str(err.value)
    with pytest.raises(CompileError, match="--max-context"):
        compile_model(spec, for_board("u280"), max_context=8192, materialize=False)


def test_the_models_own_context_is_the_default_when_it_fits():
    plan = plan_lengths(spec_from_shapes(loaders.load_model_config("glassllm"), "ovp4"), for_board("u280"))
    assert (plan.max_prompt, plan.max_context) == (128, 128)


@pytest.mark.parametrize("opts", [{"max_context": -1}, {"max_context": 0}, {"max_prompt": 0},
                                  {"max_prompt": -5}])
def test_non_positive_lengths_are_refused(opts):
    # before: --max-context -1 compiled two programs and succeeded
    spec = spec_from_shapes(loaders.load_model_config("glassllm"), "ovp4")
    with pytest.raises(CompileError, match="positive"):
        plan_lengths(spec, for_board("u280"), **opts)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if compile_main reaches the slow part (loading or quantizing the model)."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")
    monkeypatch.setattr(loaders, "_CACHE", {})  # a cached model must not hide a load
    monkeypatch.setattr(loaders, "load_model", refuse)
    monkeypatch.setattr("olivine.golden.qmodel.quantize_model", refuse)


@pytest.mark.parametrize("opts, message", [
    ({"board": "nosuch"}, "unknown board"),
    ({"preset": "nosuch"}, "unknown quantization preset"),
    ({"preset": "fp32"}, "no integer form"),
    ({"preset": "w4a4-ovp", "weights": "int4"}, "dense OVP4 weights only"),
    ({"weights": "int3"}, "--weights"),
    ({"sparsity": "half"}, "--sparsity"),
    ({"sparsity": "3:16"}, "sparsity"),
    ({"max_context": -1}, "positive"),
    ({"max_prompt": 0}, "positive"),
    ({"config": "nosuch"}, "named configuration"),
    ({"model": "no/such/model"}, "neither a built-in name"),
    ({"model": ""}, "the model name is empty"),
])
def test_compile_main_checks_every_option_before_loading(no_loading, tmp_path, opts, message):
    # before: a bad --board was reported only after the model had been quantized
    kwargs = {"model": "glassllm", "out": str(tmp_path / "x"), "quiet": True, **opts}
    with pytest.raises(ValueError, match=message):
        compile_main(**kwargs)
    assert not (tmp_path / "x").exists()


def test_compile_main_refuses_a_context_that_does_not_fit_before_loading(no_loading, tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "load_model_config", lambda name: SMOLLM2_SHAPE)
    with pytest.raises(CompileError, match="--max-context [0-9]+"):
        compile_main("smollm2", out=str(tmp_path / "x"), max_context=8192, quiet=True)


def test_clamped_lengths_are_said_on_stderr(tmp_path, capsys):
    # before: --max-prompt 512 --max-context 512 on glassllm silently became 128
    out = tmp_path / "g"
    assert compile_main("glassllm", preset="w8a8", out=str(out), max_prompt=512, max_context=512) == 0
    err = capsys.readouterr().err
    assert "--max-context 512 exceeds glassllm-en's context of 128 tokens: using 128" in err
    assert "--max-prompt 512 exceeds the context of 128 tokens: using 128" in err
    meta = json.loads((out / "manifest.json").read_text())["meta"]
    assert max(p["bucket"] for p in meta["programs"].values()) == 128


def test_artifact_records_the_end_of_sequence_token(tmp_path):
    out = tmp_path / "g"
    assert compile_main("glassllm", preset="w8a8", out=str(out), max_context=32, quiet=True) == 0
    meta = json.loads((out / "manifest.json").read_text())["meta"]
    eos = loaders.load_model("glassllm").tokenizer.inner.token_to_id["<eos>"]
    assert meta["model"]["eos_id"] == eos


def test_compile_with_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "hw.json"
    cfg.write_text(json.dumps({"cores": 1, "chains_per_core": 8, "hbm_channels": 4,
                               "buffers": {"activation_kib": 180, "global_kib": 72}}))
    out = tmp_path / "g"
    assert compile_main("glassllm", preset="w8a8", out=str(out), max_context=32, config=str(cfg), quiet=True) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["cores"] == 1 and manifest["config"]["buffers"]["activation_kib"] == 180
    assert manifest["config"]["buffers"]["weight_kib"] == for_board("u280").buffers.weight_kib
    assert manifest["meta"]["layout"]["channels"] == 4


def test_a_config_too_small_for_the_model_is_refused_with_the_fix(no_loading, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"buffers": {"activation_kib": 16, "global_kib": 8}}))
    with pytest.raises(CompileError, match="activation_kib"):
        compile_main("glassllm", out=str(tmp_path / "x"), config=str(cfg), quiet=True)


def test_small_config_compiles_glassllm_bit_exact():
    """The named 'small' configuration holds glassllm at its full context, bit-exact with golden."""
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.qmodel import quantize_model
    from olivine.sim.runtime import Runtime, golden_generate

    loaded = loaders.load_model("glassllm")
    q = quantize_model(loaded.config, loaded.weights, "w4a8-int4")
    comp = compile_model(spec_from_qllama(q), small())
    assert comp.decode_buckets()[-1] == 128 and comp.prefill_buckets() == [128]
    assert comp.prefill_rows == 32  # the chunk its 252 KiB data space holds at 128 keys
    ids = loaded.tokenizer.encode("Once upon a time")
    got, got_logits = Runtime.from_compiled(comp).generate(ids, 3)
    want, want_logits = golden_generate(q, ids, 3)
    assert got == want
    assert all((a == b).all() for a, b in zip(got_logits, want_logits))


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        compile_main("glassllm", config="/no/such/file.json", quiet=True)


def test_command_line_takes_the_config_and_reports_the_chosen_context(tmp_path, capsys):
    from olivine import cli

    out = tmp_path / "g"
    assert cli.main(["compile", "--model", "glassllm", "--preset", "w8a8", "--config", "small", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "max context: 128 tokens (the model's context" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == small().to_dict() | {"weight_formats": list(small().weight_formats),
                                                      "act_formats": list(small().act_formats),
                                                      "sparse_n": list(small().sparse_n)}


@pytest.mark.models
def test_smollm2_default_lengths_fit_the_u280_default():
    """The real SmolLM2 shape (from its GGUF header): the default compile no longer asks for 8192 tokens."""
    shape = loaders.load_model_config("smollm2")
    assert shape.max_seq_len == 8192
    plan = plan_lengths(spec_from_shapes(shape, "ovp4"), for_board("u280"))
    assert plan.max_context < 8192 and plan.max_prompt == cc.DEFAULT_MAX_PROMPT
    assert plan == plan_lengths(spec_from_shapes(SMOLLM2_SHAPE, "ovp4"), for_board("u280"))


_RULE_CASES = {  # name: (head_dim, override of layers.0.wq or .wo, reason fragment)
    "fp32": (16, ("wq", dict(weights="fp32", acts="fp32")), "float (fp32) layers have no integer form"),
    "static-int8": (16, ("wq", dict(weights="int8", acts="int8-static")), "activations 'int8-static' are not supported"),
    "ovp4-acts-int4": (16, ("wq", dict(weights="int4", acts="ovp4")), "dense OVP4 weights only, not int4 weights"),
    "ovp4-acts-sparse": (16, ("wq", dict(weights="ovp4", acts="ovp4", sparsity="8:16")), "not sparse ovp4 weights"),
    "ovp4-acts-head-pad": (8, ("wo", dict(weights="ovp4", acts="ovp4")), "OVP4 activations with a head_dim"),
    "sparse-head-pad": (8, ("wq", dict(weights="int8", acts="int8", sparsity="8:16")), "N:16 sparsity with head_dim"),
}


@pytest.mark.parametrize("case", list(_RULE_CASES))
def test_quantization_refusals_come_from_one_table_before_and_after_quantizing(case):
    """compile._check_quant_compilable (before quantizing, from the QuantConfig) and spec_from_qllama (after,
    from golden's linears) refuse the same layer for the same reason: both read spec.QUANT_RULES."""
    from olivine.compiler.compile import _check_quant_compilable
    from olivine.compiler.spec import UnsupportedModelError, spec_from_qllama
    from olivine.golden.model import LlamaConfig
    from olivine.golden.qconfig import LayerQuant, QuantConfig
    from olivine.golden.qmodel import quantize_model
    from tests.test_compiler_lower import random_llama

    hd, (linear, lq), reason = _RULE_CASES[case]
    config = LlamaConfig(vocab_size=64, dim=64, n_layers=1, n_heads=64 // hd, n_kv_heads=64 // hd, head_dim=hd,
                         ffn_dim=64)
    qcfg = QuantConfig(LayerQuant("int8", "int8"), {f"layers.0.{linear}": LayerQuant(**lq)}, name=case)
    with pytest.raises(CompileError, match=rf"layers\.0\.{linear} .*{re.escape(reason)}"):
        _check_quant_compilable(qcfg, config)
    weights = random_llama(config)
    q = quantize_model(config, weights, qcfg, torch.randint(0, 64, (32,)), show_progress=False)
    with pytest.raises(UnsupportedModelError, match=rf"layers\.0\.{linear}: .*{re.escape(reason)}"):
        spec_from_qllama(q)
