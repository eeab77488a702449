"""Float LLaMA reference (golden/model.py) against an independent float64 NumPy model."""

import math

import numpy as np
import pytest
import torch

from olivine.golden.model import (
    LINEAR_NAMES,
    FloatLlama,
    KVCache,
    LayerWeights,
    LlamaConfig,
    LlamaWeights,
    interleaved_to_rotate_half,
)

TINY = dict(vocab_size=61, dim=24, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=40,
            norm_eps=1e-5, rope_theta=500.0, max_seq_len=32, tie_embeddings=False, name="tiny")


def random_weights(cfg: LlamaConfig, seed: int = 0) -> LlamaWeights:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    shapes = cfg.linear_shapes()
    layers = [LayerWeights(attn_norm=1 + r(cfg.dim, scale=0.1), ffn_norm=1 + r(cfg.dim, scale=0.1),
                           **{n: r(*shapes[n]) for n in LINEAR_NAMES}) for _ in range(cfg.n_layers)]
    embed = r(cfg.vocab_size, cfg.dim, scale=1.0)
    head = embed if cfg.tie_embeddings else r(cfg.vocab_size, cfg.dim)
    return LlamaWeights(embed=embed, layers=layers, final_norm=1 + r(cfg.dim, scale=0.1), lm_head=head)


@pytest.fixture(scope="module")
def tiny():
    cfg = LlamaConfig(**TINY)
    return FloatLlama(cfg, random_weights(cfg))


def numpy_reference(cfg: LlamaConfig, w: LlamaWeights, tokens) -> np.ndarray:
    """Float64, one head and one position at a time; RoPE as explicit 2x2 rotations of (i, i+hd/2)."""
    f = lambda t: t.detach().double().numpy()  # noqa: E731
    hd, half = cfg.head_dim, cfg.head_dim // 2
    x = f(w.embed)[np.asarray(tokens)]
    n = len(tokens)

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg.norm_eps) * f(g)

    def rot(vec, pos):
        out = vec.copy()
        for i in range(half):
            ang = pos * cfg.rope_theta ** (-2.0 * i / hd)
            a, b = vec[i], vec[i + half]
            out[i], out[i + half] = a * math.cos(ang) - b * math.sin(ang), a * math.sin(ang) + b * math.cos(ang)
        return out

    for layer in w.layers:
        h = norm(x, layer.attn_norm)
        q, k, v = h @ f(layer.wq).T, h @ f(layer.wk).T, h @ f(layer.wv).T
        att = np.zeros((n, cfg.n_heads * hd))
        for head in range(cfg.n_heads):
            kvh = head // (cfg.n_heads // cfg.n_kv_heads)
            qs = [rot(q[t, head * hd:(head + 1) * hd], t) for t in range(n)]
            ks = [rot(k[t, kvh * hd:(kvh + 1) * hd], t) for t in range(n)]
            for t in range(n):
                s = np.array([qs[t] @ ks[j] / math.sqrt(hd) for j in range(t + 1)])
                p = np.exp(s - s.max())
                p /= p.sum()
                att[t, head * hd:(head + 1) * hd] = p @ v[:t + 1, kvh * hd:(kvh + 1) * hd]
        x = x + att @ f(layer.wo).T
        h = norm(x, layer.ffn_norm)
        gate, up = h @ f(layer.w_gate).T, h @ f(layer.w_up).T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ f(layer.w_down).T
    return norm(x, w.final_norm) @ f(w.lm_head).T


def test_forward_matches_independent_numpy_model(tiny):
    tokens = [3, 17, 60, 0, 5, 5, 42, 11, 29, 7]
    ref = numpy_reference(tiny.config, tiny.weights, tokens)
    out = tiny.forward(tokens)
    assert out.dtype == torch.float32 and out.shape == (len(tokens), TINY["vocab_size"])
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_batch_rows_equal_single_sequences(tiny):
    batch = torch.tensor([[1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4], [1, 2, 3, 0, 0, 0]])
    out = tiny.forward(batch)
    assert out.shape == (3, 6, TINY["vocab_size"])
    for row in range(3):
        torch.testing.assert_close(out[row], tiny.forward(batch[row]), rtol=0, atol=1e-5)


def test_causal_mask_hides_future_tokens(tiny):
    a = tiny.forward([4, 8, 15, 16, 23, 42])
    b = tiny.forward([4, 8, 15, 16, 1, 2])
    torch.testing.assert_close(a[:4], b[:4], rtol=0, atol=1e-5)
    assert (a[4] - b[4]).abs().max() > 1e-2


def test_kv_cache_decode_equals_full_forward(tiny):
    tokens = torch.tensor([[5, 1, 33, 20, 7, 59, 2, 2, 40, 12, 3, 8]])
    full = tiny.forward(tokens)
    logits, cache = tiny.prefill(tokens[:, :5])
    torch.testing.assert_close(logits, full[:, :5], rtol=0, atol=1e-5)
    logits = tiny.forward(tokens[:, 5:8], cache=cache, start_pos=5)  # chunked prefill
    torch.testing.assert_close(logits, full[:, 5:8], rtol=0, atol=1e-5)
    assert cache.length == 8
    for t in range(8, 12):
        step = tiny.decode(tokens[:, t], cache)
        assert step.shape == (1, TINY["vocab_size"])
        torch.testing.assert_close(step[0], full[0, t], rtol=0, atol=1e-5)
    assert cache.length == 12


def test_kv_cache_rejects_wrong_position_and_overflow(tiny):
    _, cache = tiny.prefill([1, 2, 3], capacity=4)
    with pytest.raises(ValueError, match="start_pos=cache.length"):
        tiny.forward([4], cache=cache, start_pos=1)
    tiny.decode(4, cache)
    with pytest.raises(ValueError, match="capacity 4 exceeded"):
        tiny.decode(5, cache)


def test_generate_greedy_equals_argmax_loop_without_cache(tiny):
    prompt = [7, 3, 9]
    new = tiny.generate(prompt, 10)
    seq = list(prompt)
    for _ in range(10):
        seq.append(int(tiny.forward(seq)[-1].argmax()))
    assert new == seq[3:]
    stop = new.index(new[2]) + 1  # generation stops after the first occurrence of eos
    assert tiny.generate(prompt, 10, eos_id=new[2]) == new[:stop]
    sampled = tiny.generate(prompt, 10, greedy=False, temperature=0.7, seed=1)
    assert sampled == tiny.generate(prompt, 10, greedy=False, temperature=0.7, seed=1)
    assert all(0 <= t < TINY["vocab_size"] for t in sampled)


def test_generate_rejects_too_long(tiny):
    with pytest.raises(ValueError, match="max_seq_len=32"):
        tiny.generate(list(range(30)), 5)
    with pytest.raises(ValueError, match="empty"):
        tiny.generate([], 3)


@pytest.mark.parametrize("tokens, err, msg", [
    ([1.5, 2.0], TypeError, "integer ids"),
    ([[]], ValueError, "T >= 1"),
    ([1, 61], ValueError, "0..60"),
    ([-1, 3], ValueError, "0..60"),
    (list(range(33)), ValueError, "max_seq_len=32"),
])
def test_forward_rejects_bad_tokens(tiny, tokens, err, msg):
    with pytest.raises(err, match=msg):
        tiny.forward(tokens)


def test_linear_hook_sees_every_linear_in_data_flow_order(tiny):
    seen = []

    class Recording(FloatLlama):
        def linear(self, name, x, weight):
            seen.append(name)
            assert weight is tiny.weights.linear(name)
            return super().linear(name, x, weight)

    out = Recording(tiny.config, tiny.weights).forward([1, 2, 3])
    torch.testing.assert_close(out, tiny.forward([1, 2, 3]), rtol=0, atol=0)
    expected = [n for n, _ in tiny.weights.named_linears(include_lm_head=True)]
    assert seen == expected
    assert expected[:3] == ["layers.0.wq", "layers.0.wk", "layers.0.wv"] and expected[-1] == "lm_head"
    assert len(expected) == 7 * TINY["n_layers"] + 1


def test_weights_linear_lookup_errors(tiny):
    with pytest.raises(KeyError, match="unknown linear"):
        tiny.weights.linear("layers.0.q_proj")
    with pytest.raises(KeyError, match="only 2 layers"):
        tiny.weights.linear("layers.2.wq")


@pytest.mark.parametrize("change, msg", [
    (dict(n_kv_heads=4), "not a multiple"),
    (dict(head_dim=7), "even"),
    (dict(dim=0), "positive integer"),
    (dict(n_layers=2.0), "positive integer"),
])
def test_config_validation(change, msg):
    with pytest.raises(ValueError, match=msg):
        LlamaConfig(**{**TINY, **change})


def test_weights_validation_names_the_bad_tensor():
    cfg = LlamaConfig(**TINY)
    w = random_weights(cfg)
    w.layers[1].wk = w.layers[1].wk[:, :-1]
    with pytest.raises(ValueError, match=r"layers\.1\.wk has shape \(16, 23\)"):
        FloatLlama(cfg, w)
    w = random_weights(cfg)
    w.final_norm = w.final_norm.double()
    with pytest.raises(ValueError, match="final_norm is torch.float64"):
        FloatLlama(cfg, w)


def test_config_counts():
    cfg = LlamaConfig(**TINY)
    assert (cfg.q_dim, cfg.kv_dim, cfg.n_rep) == (48, 16, 3)
    w = random_weights(cfg)
    assert cfg.n_params() == sum(t.numel() for t in w.state_dict().values())


def test_interleaved_to_rotate_half_permutation():
    w = torch.arange(16.0).reshape(8, 2)  # 2 heads x head_dim 4; row r holds (2r, 2r+1)
    p = interleaved_to_rotate_half(w, n_heads=2, head_dim=4)
    assert p[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]
    with pytest.raises(ValueError, match="expected n_heads"):
        interleaved_to_rotate_half(w, n_heads=3, head_dim=4)


def test_interleaved_rope_equals_rotate_half_after_permutation():
    """Interleaved RoPE on (q, k) and rotate-half RoPE on permuted (q, k) give the same scores."""
    hd, theta = 8, 10000.0
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(5, hd, generator=g, dtype=torch.float64), torch.randn(5, hd, generator=g, dtype=torch.float64)
    ang = torch.arange(5.0, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, hd, 2) / hd)

    def interleaved(x):
        out = x.clone()
        out[:, 0::2] = x[:, 0::2] * ang.cos() - x[:, 1::2] * ang.sin()
        out[:, 1::2] = x[:, 0::2] * ang.sin() + x[:, 1::2] * ang.cos()
        return out

    from olivine.golden.model import apply_rope, rope_tables
    cos, sin = rope_tables(hd, theta, 5)
    perm = lambda x: interleaved_to_rotate_half(x.T, 1, hd).T  # noqa: E731
    s_ref = interleaved(q) @ interleaved(k).T
    s_new = apply_rope(perm(q).float(), cos, sin) @ apply_rope(perm(k).float(), cos, sin).T
    torch.testing.assert_close(s_new.double(), s_ref, rtol=0, atol=1e-5)


def test_kvcache_shapes():
    cfg = LlamaConfig(**TINY)
    cache = KVCache(cfg, batch=2, capacity=10)
    assert cache.k[0].shape == (2, 2, 10, 8) and len(cache.v) == 2
    with pytest.raises(ValueError, match="capacity 40"):
        KVCache(cfg, capacity=40)
