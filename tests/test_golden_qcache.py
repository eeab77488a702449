"""golden/qcache.py: the on-disk cache of quantized models (glassllm, a temporary cache dir)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from olivine.golden import qcache, qmodel
from olivine.golden.loaders import load_model
from olivine.golden.qconfig import LayerQuant, QuantConfig


@pytest.fixture(scope="module")
def glass():
    return load_model("glassllm")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OLIVINE_CACHE", str(tmp_path))
    monkeypatch.delenv("OLIVINE_NO_CACHE", raising=False)
    return tmp_path / "qmodels"


@pytest.fixture
def builds(monkeypatch):
    calls = []
    real = qmodel.quantize_model

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(qmodel, "quantize_model", counting)
    return calls


TOKENS = torch.arange(3, 40)


def _same(a, b):
    assert torch.equal(a.forward_int(TOKENS), b.forward_int(TOKENS))
    for name, lin in a.linears.items():
        other = b.linears[name]
        assert torch.equal(lin.w_float, other.w_float), name
        for f in ("values", "exponent", "integer", "scale"):
            assert torch.equal(getattr(lin.weight, f), getattr(other.weight, f)), (name, f)
        assert lin.weight.group == other.weight.group, name
        if lin.weight.group_mult is not None:
            assert torch.equal(lin.weight.group_mult, other.weight.group_mult), name


@pytest.mark.parametrize("preset", ["w4a8-ovp", "w8a8", "w4a8-ovp-8:16", "w4a8-int4-g128"])
def test_second_call_loads_the_same_model(glass, cache_dir, builds, preset):
    first = qcache.quantize_cached(glass, preset)
    assert len(builds) == 1 and len(list(cache_dir.glob("*.qmodel"))) == 1
    second = qcache.quantize_cached(glass, preset)
    assert len(builds) == 1  # loaded, not rebuilt
    _same(first, second)
    assert second.embed_q is second.linears["lm_head"].weight or not glass.config.tie_embeddings


def test_key_follows_preset_weights_calibration_and_code(glass, cache_dir, monkeypatch):
    base = qcache.cache_key(glass, QuantConfig.preset("w4a8-ovp"))
    assert base == qcache.cache_key(glass, QuantConfig.preset("w4a8-ovp"))
    assert base != qcache.cache_key(glass, QuantConfig.preset("w8a8"))
    over = QuantConfig.preset("w4a8-ovp").with_overrides({"layers.0.wq": LayerQuant("int8", "int8")})
    assert base != qcache.cache_key(glass, over)
    assert base != qcache.cache_key(glass, QuantConfig.preset("w4a8-ovp"), calib_tokens=TOKENS)
    w2 = dataclasses.replace(glass.weights, final_norm=glass.weights.final_norm + 1e-3)
    assert base != qcache.cache_key(dataclasses.replace(glass, weights=w2), QuantConfig.preset("w4a8-ovp"))
    monkeypatch.setattr(qcache, "code_version", lambda: "another version")
    assert base != qcache.cache_key(glass, QuantConfig.preset("w4a8-ovp"))


def test_file_models_are_keyed_by_size_and_mtime(glass, tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"x" * 10)
    fake = dataclasses.replace(glass, source=str(src))
    k1 = qcache.cache_key(fake, "w8a8")
    src.write_bytes(b"y" * 11)
    assert qcache.cache_key(fake, "w8a8") != k1


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_entry_is_rebuilt_never_trusted(glass, cache_dir, builds, damage):
    good = qcache.quantize_cached(glass, "w4a8-ovp")
    (path,) = cache_dir.glob("*.qmodel")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data = bytearray(b"not a cache entry")
    path.write_bytes(bytes(data))
    with pytest.warns(qcache.CacheWarning, match="unusable"):
        rebuilt = qcache.quantize_cached(glass, "w4a8-ovp")
    assert len(builds) == 2
    _same(good, rebuilt)
    again = qcache.quantize_cached(glass, "w4a8-ovp")  # the rewritten entry is valid again
    assert len(builds) == 2
    _same(good, again)


def test_no_cache_bypasses_reading_and_writing(glass, cache_dir, builds, monkeypatch):
    monkeypatch.setenv("OLIVINE_NO_CACHE", "1")
    qcache.quantize_cached(glass, "w8a8")
    qcache.quantize_cached(glass, "w8a8")
    assert len(builds) == 2 and not cache_dir.exists()
    assert not list(cache_dir.parent.glob("**/*.tmp"))


def test_newer_entry_replaces_older_of_same_model_and_preset(glass, cache_dir, builds, monkeypatch):
    qcache.quantize_cached(glass, "w8a8")
    qcache.quantize_cached(glass, "w4a8-ovp")
    qcache.quantize_cached(glass, "w4a8-ovp-8:16")  # a preset whose name extends another's
    assert len(list(cache_dir.glob("*.qmodel"))) == 3
    monkeypatch.setattr(qcache, "code_version", lambda: "next version")
    qcache.quantize_cached(glass, "w8a8")
    qcache.quantize_cached(glass, "w4a8-ovp")
    names = sorted(p.name for p in cache_dir.glob("*.qmodel"))
    assert len(names) == 3 and len(builds) == 5
    assert sum(n.startswith("glassllm-en-w8a8-") for n in names) == 1


def test_norm_smoothing_survives_the_cache(glass, cache_dir, builds):
    """QuantConfig.smooth_norm folds 1/s into the RMSNorm gammas inside quantize_model; a model
    loaded from the cache carries the same folded gammas (the compiler's spec reads them) and
    the same integer logits, and the option is part of the key."""
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.fixed import GAMMA_FRAC, to_fixed

    calib = model_calibration_tokens(glass)[:, :128]
    w8 = LayerQuant("int8", "int8")
    cfg = QuantConfig(w8, {"lm_head": w8}, name="w8a8-nsmooth", smooth_norm=0.5)
    first = qcache.quantize_cached(glass, cfg, calib)
    second = qcache.quantize_cached(glass, cfg, calib)
    assert len(builds) == 1
    _same(first, second)
    assert set(second.norm_scales) == {f"layers.{i}.{n}" for i in range(glass.config.n_layers)
                                      for n in ("attn_norm", "ffn_norm")}
    for name, s in first.norm_scales.items():
        assert torch.equal(second.norm_scales[name], s)
        assert torch.equal(second.gamma[name], first.gamma[name]), name
        layer = glass.weights.layers[int(name.split(".")[1])]
        unfolded = to_fixed(getattr(layer, name.split(".")[2]), GAMMA_FRAC)
        assert torch.equal(second.gamma[name], to_fixed(getattr(layer, name.split(".")[2]) / s, GAMMA_FRAC))
        assert not torch.equal(second.gamma[name], unfolded), name
    assert qcache.cache_key(glass, cfg, calib) != qcache.cache_key(glass, dataclasses.replace(cfg, smooth_norm=0.0), calib)
    assert qcache.cache_key(glass, cfg, calib) != qcache.cache_key(glass, dataclasses.replace(cfg, smooth_norm=0.25), calib)


def test_smoothed_linears_keep_their_float_weights_through_the_cache(glass, cache_dir, builds):
    """smooth_down / smooth_o re-parametrize w_up / w_down (and wv / wo) before quantizing them;
    a model loaded from the cache carries those rescaled float weights (QLinear.w_float) and the
    scales, not the loaded model's unsmoothed ones."""
    from olivine.golden import gptq
    from olivine.golden.data import model_calibration_tokens

    calib = model_calibration_tokens(glass)[:, :128]
    w8 = LayerQuant("int8", "int8")
    cfg = QuantConfig(w8, {"lm_head": w8}, name="w8a8-dsmooth-osmooth", smooth_down=0.5, smooth_o=0.5)
    first = qcache.quantize_cached(glass, cfg, calib)
    second = qcache.quantize_cached(glass, cfg, calib)
    assert len(builds) == 1
    _same(first, second)  # w_float of every linear included
    assert sorted(second.col_scales) == sorted(f"layers.{i}.{n}" for i in range(glass.config.n_layers)
                                               for n in ("w_down", "wo"))
    assert sorted(second.row_scales) == sorted(f"layers.{i}.{n}" for i in range(glass.config.n_layers)
                                               for n in ("w_up", "wv"))
    s = second.col_scales["layers.1.w_down"]
    assert torch.equal(s, second.row_scales["layers.1.w_up"]) and float(s.max() / s.min()) > 2
    assert torch.equal(second.linears["layers.1.w_down"].w_float, glass.weights.linear("layers.1.w_down").float() * s)
    assert torch.equal(second.linears["layers.1.w_up"].w_float, glass.weights.linear("layers.1.w_up").float() / s[:, None])
    so = second.col_scales["layers.2.wo"]
    assert torch.equal(second.row_scales["layers.2.wv"], gptq.kv_rows_of(so, glass.config.n_heads, glass.config.n_kv_heads))
    assert torch.equal(second.linears["layers.2.wo"].w_float, glass.weights.linear("layers.2.wo").float() * so)
    assert qcache.cache_key(glass, cfg, calib) != qcache.cache_key(glass, dataclasses.replace(cfg, smooth_o=0.25), calib)
