"""golden.mixed: storage bytes, the sensitivity proxy against true NLL, the knapsack, the cache."""

import functools
import itertools

import pytest
import torch

from olivine.golden import mixed
from olivine.golden.model import FloatLlama, LlamaConfig
from olivine.golden.qconfig import LayerQuant


@functools.lru_cache(maxsize=None)
def glass():
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model

    m = load_model("glassllm")
    return m, model_calibration_tokens(m)


@functools.lru_cache(maxsize=None)
def glass_sensitivity():
    m, cal = glass()
    return mixed.model_sensitivity(m)


def test_storage_bytes_count_values_entries_and_sparse_meta():
    # dense: K bytes (INT8) or K/2 (4-bit) per row + one 16-byte requantization entry per row
    assert mixed.storage_bytes(32, 64, LayerQuant("int8")) == 32 * (64 + 16)
    assert mixed.storage_bytes(32, 64, LayerQuant("ovp4")) == 32 * (32 + 16)
    assert mixed.storage_bytes(30, 62, LayerQuant("int4")) == 32 * (32 + 16)  # padded to 16 like the compiler
    # 8:16 INT8 on 32x64: 8 blocks of 16x16, 8 of 16 kept per row and block: values 8*16*8 bytes, indices
    # half a byte per kept value, the block-N table 8 bytes padded to 16, entries 32*16
    assert mixed.storage_bytes(32, 64, LayerQuant("int8", sparsity="8:16")) == 1024 + 512 + 16 + 512
    assert mixed.storage_bytes(32, 64, LayerQuant("ovp4", sparsity="4:16")) == 256 + 256 + 16 + 512


def test_storage_bytes_equal_the_compiler_image():
    """The budget counts exactly what the compiler lays out per linear (one tile per linear here)."""
    from olivine.compiler.layout import ENTRY
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.qmodel import quantize_model

    config = LlamaConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96)
    from tests.test_compiler_lower import random_llama

    weights = random_llama(config)
    shapes = mixed.decoder_linear_shapes(config)
    choices = ["int8", "int8-8:16", "ovp4", "int4", "int8-4:16", "ovp4-4:16", "ovp4"]
    a = mixed.Assignment(dict(zip(shapes, choices)), 8.0, 0, 0.0, 0.0)
    spec = spec_from_qllama(quantize_model(config, weights, mixed.budget_config(a)))
    for name, choice in a.choice.items():
        lin = spec.linears[name]
        assert lin.wfmt == mixed.CHOICES[choice].weights and lin.sparse == (mixed.CHOICES[choice].sparsity is not None)
        laid_out = lin.weight_bytes(0, lin.n) + lin.meta_bytes(0, lin.n) + ENTRY * lin.n
        assert mixed.storage_bytes(*shapes[name], mixed.CHOICES[choice]) == laid_out, name


def test_sensitivity_orders_choices_and_predicts_true_nll():
    m, cal = glass()
    sens = glass_sensitivity()
    assert len(sens.names) == 7 * m.config.n_layers
    assert sens.calib_tokens == cal.numel() - cal.numel() // m.config.max_seq_len  # one target fewer per window
    for name in sens.names:
        d = sens.delta_nll[name]
        assert 0 <= d["int8"] < d["ovp4"] and d["ovp4-gptq"] <= d["ovp4"] * 1.05, name
        assert d["int4-gptq"] <= d["int4"] * 1.05 and d["ovp4"] < d["ovp4-4:16"], name
    # the prediction against the true NLL increase of single-linear substitutions (evaluation text,
    # 2048 Lee tokens in the model's 128-token windows)
    from olivine.golden.data import corpus_tokens

    ids = corpus_tokens("lee", m.tokenizer, 2048)
    ranked = sorted(sens.names, key=lambda n: sens.delta_nll[n]["ovp4-4:16"])
    pairs = [(ranked[-1], "ovp4-4:16"), (ranked[len(ranked) // 2], "ovp4-4:16"), (ranked[0], "ovp4-4:16")]
    rows = mixed.validate_sensitivity(m.config, m.weights, sens, ids, pairs)
    top = rows[0]
    # the most sensitive linear is measured the most sensitive, within the proxy's accuracy on this weak
    # model (glassllm: fp32 perplexity ~270; the proxy overestimates its largest effects 2-5x)
    assert top["measured"] > max(r["measured"] for r in rows[1:]) and top["measured"] > 0
    assert 1 / 10 < top["predicted"] / top["measured"] < 10, top


def test_assignment_meets_the_budget_and_is_optimal_on_a_small_case():
    sens = glass_sensitivity()
    lo = mixed.min_budget_bits(glass()[0].config)
    previous = None
    for b in (lo + 0.01, 4.0, 4.5, 5.0, 6.0, 8.0):
        a = mixed.assign(sens, b)
        assert a.average_bits <= b and a.nbytes == sum(sens.nbytes[n][c] for n, c in a.choice.items())
        assert a == mixed.assign(sens, b)  # deterministic
        if previous is not None:
            assert a.predicted_delta_nll <= previous.predicted_delta_nll  # more bits never predict worse
        previous = a
    # exhaustive check on 4 linears x 3 choices
    small = mixed.Sensitivity("t", ("int8", "ovp4", "ovp4-4:16"), {n: sens.delta_nll[n] for n in sens.names[:4]},
                              {n: sens.nbytes[n] for n in sens.names[:4]}, {n: sens.weights[n] for n in sens.names[:4]},
                              1)
    n_w = sum(small.weights.values())
    small_lo = 8 * sum(min(small.nbytes[n].values()) for n in small.names) / n_w
    for b in (small_lo + 0.01, 4.2, 5.5, 7.0):
        best = min((sum(small.delta_nll[n][c] for n, c in zip(small.names, combo)), combo)
                   for combo in itertools.product(small.choices, repeat=4)
                   if 8 * sum(small.nbytes[n][c] for n, c in zip(small.names, combo)) <= b * n_w)
        a = mixed.assign(small, b)
        assert a.predicted_delta_nll == pytest.approx(best[0], rel=1e-12)


def test_infeasible_budget_names_the_smallest():
    sens = glass_sensitivity()
    lo = mixed.min_budget_bits(glass()[0].config)
    with pytest.raises(mixed.MixedPrecisionError, match=rf"smallest feasible budget for glassllm\S* is {lo:.4f} bits"):
        mixed.assign(sens, lo - 0.05)
    with pytest.raises(mixed.MixedPrecisionError, match="positive number"):
        mixed.assign(sens, 0)


def test_budget_config_quantizes_each_linear_with_its_choice():
    from olivine.golden.qmodel import quantize_model

    m, cal = glass()
    a = mixed.assign(glass_sensitivity(), 4.5)
    qcfg = mixed.budget_config(a)
    assert qcfg.name == "budget-4.5" and qcfg.for_layer("lm_head") == LayerQuant("int8", "int8")
    assert mixed.assignment_of(qcfg, m.config) == a.choice
    q = quantize_model(m.config, m.weights, qcfg, cal, show_progress=False)
    for name, c in a.choice.items():
        lin, lq = q.linears[name], mixed.CHOICES[c]
        assert lin.weight.kind == lq.weights and (lin.weight.block_n is not None) == (lq.sparsity is not None)


def test_sensitivity_cache_round_trip_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OLIVINE_CACHE", str(tmp_path))
    monkeypatch.delenv("OLIVINE_NO_CACHE", raising=False)
    m, cal = glass()
    choices = ("int8", "ovp4")
    first = mixed.sensitivity_cached(m, cal, choices)
    files = list((tmp_path / "sensitivity").glob("*.json"))
    assert len(files) == 1
    said = []
    again = mixed.sensitivity_cached(m, cal, choices, progress=said.append)
    assert again.delta_nll == first.delta_nll and "loaded from the cache" in said[0]
    mixed.sensitivity_cached(m, cal[:, :512], choices)  # other calibration tokens: another entry
    assert len(list((tmp_path / "sensitivity").glob("*.json"))) == 2
    files[0].write_text("{broken")
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = mixed.sensitivity_cached(m, cal, choices)
    assert rebuilt.delta_nll == first.delta_nll


def test_too_little_calibration_is_refused():
    m, _ = glass()
    with pytest.raises(mixed.MixedPrecisionError, match="too few"):
        mixed.measure_sensitivity(m.config, m.weights, torch.arange(8), ("int8",))


def test_storage_bytes_count_group_multipliers_like_the_compiler():
    """Per-group multipliers add ceil(ceil(K/g)/2) bytes per row, as the compiler's image lays them out."""
    from olivine.compiler.layout import ENTRY
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.qconfig import QuantConfig
    from olivine.golden.qmodel import quantize_model

    assert mixed.storage_bytes(32, 576, LayerQuant("ovp4", group=128)) == 32 * (288 + 3 + 16)  # 5 groups
    assert mixed.storage_bytes(32, 1536, LayerQuant("int4", group=64)) == 32 * (768 + 12 + 16)  # 24 groups
    config = LlamaConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=200)
    from tests.test_compiler_lower import random_llama

    lq = {"layers.0.w_down": LayerQuant("ovp4", "int8", group=64), "layers.0.w_up": LayerQuant("int4", "int8", group=128)}
    q = quantize_model(config, random_llama(config), QuantConfig(LayerQuant("ovp4", "int8", group=128), lq))
    spec = spec_from_qllama(q)
    shapes = mixed.decoder_linear_shapes(config)
    for name in shapes:
        lin = spec.linears[name]
        assert lin.group == (64 if name.endswith("w_down") else 128)
        want = mixed.storage_bytes(*shapes[name], lq.get(name, LayerQuant("ovp4", "int8", group=128)))
        assert lin.weight_bytes(0, lin.n) + ENTRY * lin.n == want, name
