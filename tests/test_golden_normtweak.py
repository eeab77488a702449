"""Norm tweaking (golden/normtweak.py, QuantConfig.norm_tweak) on glassllm: fast configurations
(round-to-nearest INT4 weights, 64 calibration tokens per corpus, a few Adam steps)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from olivine.golden import normtweak, qcache
from olivine.golden.contract import ContractError
from olivine.golden.data import model_calibration_tokens
from olivine.golden.fixed import GAMMA_FRAC, to_fixed
from olivine.golden.loaders import load_model
from olivine.golden.qconfig import LayerQuant, QuantConfig, QuantConfigError
from olivine.golden.qmodel import quantize_model

_W8 = LayerQuant("int8", "int8")
BASE = QuantConfig(LayerQuant("int4", "int8"), {"lm_head": _W8}, name="int4-rtn")
TWEAK = dataclasses.replace(BASE, name="int4-rtn-nt", norm_tweak=True, norm_tweak_tokens=64, norm_tweak_steps=6,
                            norm_tweak_lr=3e-3)
NORM_NAMES = [f"layers.{i}.{n}" for i in range(4) for n in ("attn_norm", "ffn_norm")]


@pytest.fixture(scope="module")
def glass():
    return load_model("glassllm")


@pytest.fixture(scope="module")
def calib(glass):
    return model_calibration_tokens(glass)


@pytest.fixture(scope="module")
def models(glass, calib):
    base = quantize_model(glass.config, glass.weights, BASE, calib, show_progress=False)
    tweaked = quantize_model(glass.config, glass.weights, TWEAK, calib, show_progress=False)
    return base, tweaked


def test_tweak_lowers_every_layers_integer_error(models):
    """Per layer: the integer layer's error against the float layer (same input) with the chosen
    gains is never above the untouched gains' error, and here every layer improves (kept)."""
    _, q = models
    report = q.norm_tweak_report
    assert [r.layer for r in report] == [0, 1, 2, 3]
    for r in report:
        assert r.loss_after <= r.loss_before and r.surrogate_best <= r.surrogate_before
        # the stand-in's loss at step 0 is close to the integer layer's own error
        assert abs(r.surrogate_before - r.loss_before) < 0.05 * r.loss_before, r
    assert all(r.kept and r.best_step > 0 and r.loss_after < 0.99 * r.loss_before for r in report), report


def test_gains_change_only_when_enabled_and_stay_on_the_fixed_point_grid(glass, models):
    base, q = models
    assert base.norm_gains == {} and base.norm_tweak_report == []
    for name in NORM_NAMES:  # untweaked model: the loaded gains
        layer, norm = int(name.split(".")[1]), name.split(".")[2]
        assert torch.equal(base.gamma[name], to_fixed(getattr(glass.weights.layers[layer], norm), GAMMA_FRAC))
    assert set(q.norm_gains) == set(NORM_NAMES)
    for name, g in q.norm_gains.items():
        layer, norm = int(name.split(".")[1]), name.split(".")[2]
        assert torch.equal(getattr(q.weights.layers[layer], norm), g)  # the model's weights carry them
        assert torch.equal(q.gamma[name], to_fixed(g, GAMMA_FRAC))
        assert torch.equal(g.to(torch.float64) * 2.0**GAMMA_FRAC, torch.round(g.to(torch.float64) * 2.0**GAMMA_FRAC))
        assert not torch.equal(q.gamma[name], base.gamma[name]), name
        assert float((g - getattr(glass.weights.layers[layer], norm)).abs().max()) < 0.1  # a tweak, not a refit
    assert torch.equal(q.gamma["final_norm"], base.gamma["final_norm"])
    for name, lin in base.linears.items():  # the quantized linears are untouched
        assert torch.equal(lin.weight.values, q.linears[name].weight.values), name


def test_tweak_is_deterministic_and_improves_the_models_fit(glass, calib, models):
    """The same configuration and tokens give the same gains bit for bit; and the integer model's
    logits on held-out text move towards fp32 (mean squared logit error drops)."""
    _, q = models
    again = quantize_model(glass.config, glass.weights, TWEAK, calib, show_progress=False)
    for name, g in q.norm_gains.items():
        assert torch.equal(again.norm_gains[name], g), name
    ev = torch.as_tensor(glass.tokenizer.encode("The little dog ran to the park and played with a red ball. "
                                                "Then the sun went down and the children walked home."))
    fp = quantize_model(glass.config, glass.weights, "fp32")(ev)
    err = [float((m(ev) - fp).pow(2).mean()) for m in models]
    assert err[1] < err[0], err


def test_tweak_api_checks(glass, calib, models):
    base, _ = models
    tokens = normtweak.norm_tweak_tokens(calib, 256, glass.config.max_seq_len)
    assert tokens.shape == (2 * 256 // glass.config.max_seq_len, glass.config.max_seq_len)
    assert torch.equal(tokens[1], calib[0, glass.config.max_seq_len: 2 * glass.config.max_seq_len])
    with pytest.raises(ContractError, match="norm_tweak_tokens"):
        normtweak.norm_tweak_tokens(calib, calib.shape[-1] + 1, glass.config.max_seq_len)
    with pytest.raises(ContractError, match="steps"):
        normtweak.tweak_norm_gains(base, tokens, steps=0)
    with pytest.raises(ContractError, match="quantized model"):
        normtweak.tweak_norm_gains(quantize_model(glass.config, glass.weights, "fp32"), tokens)
    with pytest.raises(ContractError, match="layers.9.attn_norm"):
        normtweak.apply_gains(glass.weights, {"layers.9.attn_norm": torch.ones(glass.config.dim)})


@pytest.mark.parametrize("kwargs, match", [
    ({"norm_tweak": 1}, "norm_tweak=1"),
    ({"norm_tweak_lr": 0.0}, "norm_tweak_lr"),
    ({"norm_tweak_lr": float("nan")}, "norm_tweak_lr"),
    ({"norm_tweak_tokens": 8}, "norm_tweak_tokens"),
    ({"norm_tweak_tokens": 64.0}, "norm_tweak_tokens"),
    ({"norm_tweak_steps": 0}, "norm_tweak_steps"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(QuantConfigError, match=match):
        dataclasses.replace(BASE, **kwargs)


def test_config_errors_for_float_models_and_short_calibration(glass, calib):
    with pytest.raises(QuantConfigError, match="fp32"):
        QuantConfig(LayerQuant("fp32", "fp32"), norm_tweak=True)
    cfg = dataclasses.replace(TWEAK, norm_tweak_tokens=512)
    assert cfg.needs_calibration() and cfg.calibration_length(256) == 512 and BASE.calibration_length(256) == 256
    assert "RMSNorm gains tweaked (6 Adam steps" in cfg.describe_options()
    with pytest.raises(ContractError, match="512 calibration tokens per corpus but calib_tokens holds 256"):
        quantize_model(glass.config, glass.weights, cfg, calib[:, :256], show_progress=False)
    with pytest.raises(ContractError, match="calib_tokens"):
        quantize_model(glass.config, glass.weights, TWEAK, None, show_progress=False)
    plus = TWEAK.with_overrides({"layers.0.wq": _W8})
    assert (plus.norm_tweak, plus.norm_tweak_tokens, plus.norm_tweak_steps) == (True, 64, 6)


def test_presets():
    for kind in ("ovp", "int4"):
        name = f"w4a8-{kind}-gptq-g128-cal4k-nsmooth-nt"
        cfg = QuantConfig.preset(name)
        base = QuantConfig.preset(name[:-3])
        assert cfg.norm_tweak and (cfg.norm_tweak_steps, cfg.norm_tweak_lr, cfg.norm_tweak_tokens) == (20, 3e-3, 512)
        assert dataclasses.replace(cfg, norm_tweak=False, name=base.name) == base
        assert cfg.calibration_length(1024) == 4096
    assert not QuantConfig.preset("w4a8-ovp-gptq-g128-cal4k-nsmooth").norm_tweak


def test_cache_key_and_cache_round_trip(glass, calib, tmp_path, monkeypatch):
    """normtweak.py is in the cache's code version; norm_tweak and its settings are in the key;
    a tweaked model loaded from the cache has the same gains, gammas and integer logits."""
    assert "normtweak.py" in qcache._SOURCES
    keys = {qcache.cache_key(glass, c, calib) for c in (BASE, TWEAK, dataclasses.replace(TWEAK, norm_tweak_lr=1e-3),
                                                       dataclasses.replace(TWEAK, norm_tweak_tokens=128),
                                                       dataclasses.replace(TWEAK, norm_tweak_steps=7))}
    assert len(keys) == 5
    version = qcache.code_version()
    real = qcache.Path.read_bytes

    def edited(path):  # an edit of normtweak.py changes the code version
        data = real(path)
        return data + b"\n# edit\n" if path.name == "normtweak.py" else data

    monkeypatch.setattr(qcache.Path, "read_bytes", edited)
    assert qcache.code_version() != version
    monkeypatch.undo()
    monkeypatch.setenv("OLIVINE_CACHE", str(tmp_path))
    monkeypatch.delenv("OLIVINE_NO_CACHE", raising=False)
    first = qcache.quantize_cached(glass, TWEAK, calib)
    second = qcache.quantize_cached(glass, TWEAK, calib)
    assert len(list((tmp_path / "qmodels").glob("*.qmodel"))) == 1
    assert set(second.norm_gains) == set(first.norm_gains) == set(NORM_NAMES)
    for name in [*NORM_NAMES, "final_norm"]:
        assert torch.equal(second.gamma[name], first.gamma[name]), name
    ids = torch.as_tensor(glass.tokenizer.encode("Once upon a time there was"))
    assert torch.equal(second.forward_int(ids), first.forward_int(ids))
