"""Tests of golden/gptq.py (random layers) and its presets (glassllm)."""

from __future__ import annotations

import pytest
import torch

from olivine.golden import gptq, ovp
from olivine.golden.contract import quantize_weight
from olivine.golden.ovp_format import get_format
from olivine.golden.qconfig import LayerQuant, QuantConfig, QuantConfigError


def _layer(seed=0, n=48, k=192, m=384):
    """A weight with a few large entries and inputs with strongly correlated channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(k) + 3 * torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(m, k, generator=g) @ mix
    x[:, 3] *= 15  # one outlier channel, as LLM activations have
    w = torch.randn(n, k, generator=g) * 0.05
    w[torch.rand(n, k, generator=g) < 0.02] *= 8
    return w, x


def _out_err(x, w, deq):
    return float((x @ w.T - x @ deq.T).norm() / (x @ w.T).norm())


def _assert_valid_ovp(values, normal):
    fmt = get_format(normal)
    grid = set(fmt.normal_grid) | set(fmt.outlier_grid)
    assert set(values.unique().tolist()) <= grid
    pairs = values.reshape(values.shape[0], -1, 2)
    out = pairs.abs() > fmt.normal_max
    assert not bool((out[..., 0] & out[..., 1]).any())
    assert not bool((out[..., 0] & (pairs[..., 1] != 0)).any())
    assert not bool((out[..., 1] & (pairs[..., 0] != 0)).any())
    codes = ovp.encode(values, normal)  # raises on any violation
    assert torch.equal(ovp.unpack(codes, normal), values.to(torch.int32))


@pytest.mark.parametrize("pair_choice", gptq.PAIR_CHOICES)
@pytest.mark.parametrize("scale_mode", gptq.SCALE_MODES)
def test_gptq_ovp_valid_and_better_than_rtn(pair_choice, scale_mode):
    w, x = _layer()
    h = gptq.hessian(x)
    rtn = ovp.quantize(w, bits=4, normal="auto", granularity="row")
    g = gptq.gptq_ovp(w, h, pair_choice=pair_choice, scale_mode=scale_mode)
    _assert_valid_ovp(g.values, g.normal)
    if scale_mode == "rtn":  # same per-row scale and normal type as OVP's own search
        assert g.normal == rtn.normal
        assert torch.equal(g.scale, rtn.scale.reshape(-1))
    e_rtn, e_gptq = _out_err(x, w, rtn.dequantize()), _out_err(x, w, g.dequantize())
    assert e_gptq < 0.75 * e_rtn, (e_gptq, e_rtn)


def test_gptq_ovp_deterministic_and_qweight():
    w, x = _layer(seed=1)
    h = gptq.hessian(x)
    a, b = gptq.gptq_ovp(w, h), gptq.gptq_ovp(w.clone(), h.clone())
    assert torch.equal(a.values, b.values) and torch.equal(a.scale, b.scale)
    qw = gptq.to_qweight(a)
    assert qw.kind == "ovp4" and torch.equal(qw.values.to(torch.int32), a.values)
    assert torch.equal((qw.integer.to(torch.int32) << qw.exponent.to(torch.int32)), a.values)
    assert torch.equal(ovp.unpack(qw.codes, qw.normal), a.values)


def test_identity_hessian_is_round_to_nearest():
    """H = I: no input correlation, nothing to compensate; the rule choice equals OVP RTN."""
    w, _ = _layer(seed=2)
    g = gptq.gptq_ovp(w, torch.eye(w.shape[1], dtype=torch.float64), pair_choice="rule", act_order=False)
    rtn = ovp.quantize(w, bits=4, normal="auto", granularity="row")
    assert torch.equal(g.values, rtn.grid_values())


def test_rtn_helper_matches_golden_ovp():
    w, _ = _layer(seed=3)
    t = ovp.quantize(w, bits=4, normal="int4", granularity="row")
    assert torch.equal(gptq.rtn_ovp_values(w / t.scale, "int4").to(torch.int32), t.grid_values())


def test_gptq_int4():
    w, x = _layer(seed=4)
    g = gptq.gptq_int4(w, gptq.hessian(x))
    assert int(g.values.abs().max()) <= 7
    rtn = quantize_weight(w, "int4")
    assert torch.allclose(g.scale.double(), rtn.scale, rtol=1e-6)
    assert _out_err(x, w, g.dequantize()) < 0.75 * _out_err(x, w, rtn.dequantize())
    assert gptq.to_qweight(g).kind == "int4"


@pytest.mark.parametrize("kind", ["pow2", "mult4"])
def test_group_factors(kind):
    w, x = _layer(seed=5, k=256)
    h = gptq.hessian(x)
    plain = gptq.gptq_ovp(w, h)
    g = gptq.gptq_ovp(w, h, group=64, group_factors=kind)
    assert g.factors.shape == (w.shape[0], 4)
    assert set(g.factors.unique().tolist()) <= set(gptq.group_factor_candidates(kind).tolist())
    _assert_valid_ovp(g.values, g.normal)
    assert _out_err(x, w, g.dequantize()) < _out_err(x, w, plain.dequantize())
    if kind == "pow2":  # 2**s, s in -2..1, is a float measurement: 2.0 x 8 = 16 does not fit 4 bits
        with pytest.raises(gptq.GptqError, match="4-bit multipliers"):
            gptq.to_qweight(g)
        return
    qw = gptq.to_qweight(g)  # the contract's form: m = 8 x factor, row scale / 8
    assert qw.group == 64 and torch.equal(qw.group_mult.to(torch.float32), g.factors * 8)
    assert torch.allclose(qw.scale, g.scale.double() / 8)
    assert torch.allclose(qw.dequantize(), g.dequantize(), rtol=1e-6, atol=1e-9)
    assert torch.equal(ovp.unpack(qw.codes, qw.normal), g.values)


@pytest.mark.parametrize("kind", ["ovp4", "int4"])
def test_rtn_grouped_beats_row_scales(kind):
    """Round-to-nearest with group multipliers: valid grid values, every group's factor the
    candidate of least squared error, and a weight error no larger than one scale per row."""
    w, _ = _layer(seed=6, k=320)
    g = gptq.rtn_grouped(w, kind, 128, "mult4")
    assert g.factors.shape == (w.shape[0], 3)
    if kind == "ovp4":
        _assert_valid_ovp(g.values, g.normal)
    else:
        assert int(g.values.abs().max()) <= 7
    row = quantize_weight(w, kind)
    e_group, e_row = float((g.dequantize() - w).square().sum()), float((row.dequantize() - w).square().sum())
    assert e_group < e_row
    qw = quantize_weight(w, kind, group=128)  # the contract's entry point gives the same integers
    assert torch.equal(qw.values.to(torch.int32), g.values) and qw.group == 128
    assert torch.equal(qw.group_mult.to(torch.float32), g.factors * 8)
    # factor 1 (m = 8) is a candidate: the group's choice never does worse than the row scale alone there
    s = (g.scale.reshape(-1, 1) * g.factors.repeat_interleave(128, 1)[:, :320])
    assert torch.equal(g.values.float(), (gptq.rtn_ovp_values(w / s, g.normal) if kind == "ovp4"
                                          else torch.floor(w / s + 0.5).clamp(-7, 7)))


def test_errors():
    w, x = _layer()
    h = gptq.hessian(x)
    with pytest.raises(gptq.GptqError, match="Hessian shape"):
        gptq.gptq_ovp(w, h[:-2, :-2])
    with pytest.raises(gptq.GptqError, match="even K"):
        gptq.gptq_ovp(w[:, :-1], h[:-1, :-1])
    with pytest.raises(gptq.GptqError, match="pair_choice"):
        gptq.gptq_ovp(w, h, pair_choice="best")
    with pytest.raises(QuantConfigError, match="GPTQ"):
        LayerQuant("int8", "int8", method="gptq")
    with pytest.raises(QuantConfigError, match="method"):
        LayerQuant("ovp4", "int8", method="awq")
    with pytest.raises(QuantConfigError, match="group"):
        LayerQuant("int8", "int8", group=128)
    with pytest.raises(QuantConfigError, match="group"):
        LayerQuant("ovp4", "int8", group=96)
    with pytest.raises(QuantConfigError, match="group"):
        LayerQuant("ovp4", "int8", "8:16", group=128)
    assert LayerQuant("ovp4", "int8", method="gptq", group=128).describe() == "Wovp4/Aint8 gptq g128"


def test_gptq_presets_on_glassllm():
    from olivine.golden.accuracy import perplexity
    from olivine.golden.contract import ContractError
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    m = load_model("glassllm")
    text = ("The little dog ran to the park and played with a red ball. Then the sun went down and "
            "the children walked home, singing a song about the sea and the stars in the sky.")
    ids = torch.as_tensor(m.tokenizer.encode(text))
    calib, ev = ids[:24], ids[24:64]
    assert QuantConfig.preset("w4a8-ovp-gptq").needs_calibration()
    with pytest.raises(ContractError, match="GPTQ"):
        quantize_model(m.config, m.weights, "w4a8-ovp-gptq")
    q = quantize_model(m.config, m.weights, "w4a8-ovp-gptq", calib)
    rtn = quantize_model(m.config, m.weights, "w4a8-ovp")
    w = q.linears["layers.0.wq"].weight
    assert w.kind == "ovp4" and q.linears["lm_head"].weight.kind == "int8"
    assert torch.equal(ovp.unpack(w.codes, w.normal), w.values.to(torch.int32))
    assert not torch.equal(w.values, rtn.linears["layers.0.wq"].weight.values)  # GPTQ chose other values
    assert torch.equal(w.scale, rtn.linears["layers.0.wq"].weight.scale)  # on the same row scales
    assert torch.equal(q.forward_int(ev), q.forward_int(ev))
    fp = perplexity(quantize_model(m.config, m.weights, "fp32"), ev)
    assert abs(perplexity(q, ev) / fp - 1) < 0.2


def test_sequential_gptq_calibrates_on_the_quantized_models_inputs():
    """Each linear's Hessian is that of the INT8 fake-quantized inputs it gets when every earlier
    linear (earlier layers, earlier stages of its layer) runs with its quantized weights: rebuilt
    here by hand for layers.0.wq (float embedding -> norm) and layers.0.wo (after quantized q/k/v)."""
    from olivine.golden.contract import fake_quant_act_dynamic_int8
    from olivine.golden.loaders import load_model
    from olivine.golden.model import FloatLlama

    m = load_model("glassllm")
    cfg, wts = m.config, m.weights
    ids = torch.as_tensor(m.tokenizer.encode("The little dog ran to the park and played with a red ball "
                                             "while the children sang about the sea."))[:24]
    kinds = {n: "ovp4" for n in ("layers.0.wq", "layers.0.wk", "layers.0.wv", "layers.0.wo", "layers.1.wq")}
    seq = gptq.quantize_linears_sequential(cfg, wts, ids, kinds, groups={"layers.0.wo": 64})
    par = gptq.quantize_linears(cfg, wts, ids, kinds)

    deq = {n: q.dequantize() for n, q in seq.items()}
    seen = {}

    class ByHand(FloatLlama):
        def linear(self, name, x, weight):
            if name in deq:
                x = fake_quant_act_dynamic_int8(x)
                seen.setdefault(name, x.reshape(-1, x.shape[-1]).double())
                weight = deq[name]
            return torch.matmul(x, weight.t())

    ByHand(cfg, wts).forward(ids)
    for name, group in (("layers.0.wq", None), ("layers.0.wo", 64), ("layers.1.wq", None)):
        x = seen[name]
        h = x.T @ x / x.shape[0]
        opts = {"group": group, "group_factors": "mult4"} if group else {}
        want = gptq.gptq_ovp(wts.linear(name), h, **opts)
        assert torch.equal(seq[name].values, want.values.to(torch.int16)), name
        _assert_valid_ovp(seq[name].values, seq[name].normal)
    assert seq["layers.0.wo"].group == 64 and seq["layers.0.wq"].group is None
    # the first linear's input differs from the float model's only by the INT8 rounding, a later
    # layer's also by the quantized layers before it: GPTQ picks other values there
    assert not torch.equal(seq["layers.1.wq"].values, par["layers.1.wq"].values)
    with pytest.raises(gptq.GptqError, match="decoder linears"):
        gptq.quantize_linears_sequential(cfg, wts, ids, {"lm_head": "ovp4"})


def test_gptq_seq_method_and_preset():
    assert LayerQuant("ovp4", "int8", method="gptq-seq", group=128).describe() == "Wovp4/Aint8 gptq-seq g128"
    with pytest.raises(QuantConfigError, match="GPTQ"):
        LayerQuant("int8", "int8", method="gptq-seq")
    assert QuantConfig(LayerQuant("ovp4", "int8", method="gptq-seq")).needs_calibration()
    for name, kind in (("w4a8-ovp-gptqseq-g128", "ovp4"), ("w4a8-int4-gptqseq-g128", "int4")):
        cfg = QuantConfig.preset(name)
        assert cfg.default == LayerQuant(kind, "int8", method="gptq-seq", group=128)
        assert cfg.for_layer("lm_head") == LayerQuant("int8", "int8") and cfg.needs_calibration()



@pytest.mark.parametrize("kind", ["ovp", "int4"])
def test_rtndown_preset_is_gptq_but_w_down_round_to_nearest(kind):
    """w4a8-{ovp,int4}-gptq-g128-rtndown: w_down holds exactly w4a8-{kind}-g128's round-to-nearest
    grouped values, every other decoder linear exactly w4a8-{kind}-gptq-g128's GPTQ values."""
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    m = load_model("glassllm")
    calib = model_calibration_tokens(m)
    q = quantize_model(m.config, m.weights, f"w4a8-{kind}-gptq-g128-rtndown", calib, show_progress=False)
    g = quantize_model(m.config, m.weights, f"w4a8-{kind}-gptq-g128", calib, show_progress=False)
    r = quantize_model(m.config, m.weights, f"w4a8-{kind}-g128", show_progress=False)
    for name, lin in q.linears.items():
        ref = (r if name.endswith("w_down") else g).linears[name].weight
        assert lin.weight.kind == ref.kind == ("int8" if name == "lm_head" else "ovp4" if kind == "ovp" else "int4")
        assert torch.equal(lin.weight.values, ref.values), name
        if lin.weight.group_mult is not None:
            assert torch.equal(lin.weight.group_mult, ref.group_mult), name
    assert not torch.equal(q.linears["layers.0.w_down"].weight.values, g.linears["layers.0.w_down"].weight.values)


@pytest.mark.parametrize("normal", ["int4", "flint4"])
def test_grid_lookup_is_bucketize_with_ties_to_the_lower_value(normal):
    """The table lookup of ceil(2x) picks what grid[bucketize(x, midpoints)] picks, midpoints and
    values beyond the grid included."""
    g = gptq._Grid(normal)
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(20000, generator=gen) * 40, torch.arange(-300.0, 300.0, 0.25),
                   torch.arange(-300.0, 300.0, 0.5) + 1e-4, torch.tensor([1e9, -1e9, 0.0, -0.0])])
    for grid, mids, nearest in ((g.normals, g._nm, g.nearest_normal), (g.outliers, g._om, g.nearest_outlier)):
        assert torch.equal(nearest(x), grid[torch.bucketize(x, mids)])
        assert torch.equal(nearest(mids), grid[:-1])  # a tie keeps the lower value


def test_hessians_sum_over_calibration_windows():
    """collect_hessians cuts long calibration rows into windows and averages X^T X over all of
    them: the same as each window run alone through the float model."""
    from olivine.golden.loaders import load_model
    from olivine.golden.model import FloatLlama

    m = load_model("glassllm")
    ids = torch.as_tensor(m.tokenizer.encode("The little dog ran to the park and played with a red ball. "
                                             "Then the sun went down and the children walked home.") * 2)[:60]
    names = ["layers.0.wq", "layers.1.w_down"]
    hs = gptq.collect_hessians(m.config, m.weights, ids.reshape(2, 30), names, window=16)
    seen = {n: [] for n in names}

    class Inputs(FloatLlama):
        def linear(self, name, x, weight):
            if name in seen:
                seen[name].append(x.reshape(-1, x.shape[-1]).double())
            return super().linear(name, x, weight)

    rec = Inputs(m.config, m.weights)
    for row in ids.reshape(2, 30):
        for start in (0, 16):
            rec.forward(row[start : start + 16])
    for n in names:
        x = torch.cat(seen[n])
        assert x.shape[0] == 60
        assert torch.allclose(hs[n], x.T @ x / 60, rtol=1e-12, atol=1e-12), n
    with pytest.raises(gptq.GptqError, match="window"):
        gptq.collect_hessians(m.config, m.weights, ids, names, window=0)


def test_smoothing_scales_are_rms_powers_with_unit_geometric_mean():
    """s_j = rms_j**alpha rescaled to geometric mean 1 over the live channels; a channel the
    calibration never excites keeps s = 1 (rather than a huge 1/s in w_up's row)."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * torch.tensor(
        [1.0, 4.0, 0.25, 9.0, 1.0, 0.0], dtype=torch.float64)
    h = x.T @ x / x.shape[0]
    s = gptq.smoothing_scales(h, 0.5)
    rms = torch.diagonal(h)[:5].sqrt()
    want = rms.pow(0.5) / rms.pow(0.5).log().mean().exp()
    assert torch.allclose(s[:5].double(), want, rtol=1e-6) and float(s[5]) == 1.0
    assert abs(float(s[:5].double().log().mean())) < 1e-6
    assert float(s[3]) > float(s[0]) > float(s[2])  # outlier channels get the largest scales


def test_smooth_down_inputs_is_exact_in_float():
    """w_up's rows x 1/s and w_down's columns x s leave the float model's function unchanged
    (SwiGLU is linear in u), so the smoothing is a weight re-parametrization only."""
    import dataclasses

    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.model import FloatLlama

    m = load_model("glassllm")
    downs = [f"layers.{i}.w_down" for i in range(m.config.n_layers)]
    hs = gptq.collect_hessians(m.config, m.weights, model_calibration_tokens(m)[:, :128], downs)
    new_w, new_h = gptq.smooth_down_inputs(m.weights, hs, 0.5, range(m.config.n_layers))
    s = gptq.smoothing_scales(hs["layers.0.w_down"], 0.5)
    assert float(s.max() / s.min()) > 2  # a real rescaling, not ~1
    assert torch.allclose(new_h["layers.0.w_down"], hs["layers.0.w_down"] / torch.outer(s, s).double())
    layers = [dataclasses.replace(lw, w_up=new_w[f"layers.{i}.w_up"], w_down=new_w[f"layers.{i}.w_down"])
              for i, lw in enumerate(m.weights.layers)]
    ids = torch.as_tensor(m.tokenizer.encode("Once upon a time there was a little girl who"))
    ref = FloatLlama(m.config, m.weights)(ids)
    out = FloatLlama(m.config, dataclasses.replace(m.weights, layers=layers))(ids)
    assert not torch.equal(new_w["layers.0.w_up"], m.weights.linear("layers.0.w_up").float())
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_fold_norm_scales_is_exact_in_float():
    """gamma_j / s_j in attn_norm / ffn_norm and column j x s_j in the linears each feeds
    (wq/wk/wv, w_gate/w_up) leave the float model's function unchanged: W diag(s) (h / s) = W h."""
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.model import FloatLlama

    m = load_model("glassllm")
    firsts = [f"layers.{i}.{n}" for i in range(m.config.n_layers) for n in ("wq", "w_gate")]
    hs = gptq.collect_hessians(m.config, m.weights, model_calibration_tokens(m)[:, :128], firsts)
    scales = gptq.norm_smoothing_scales(hs, 0.5, range(m.config.n_layers))
    assert sorted(scales) == sorted(f"layers.{i}.{n}" for i in range(m.config.n_layers) for n in ("attn_norm", "ffn_norm"))
    sa = scales["layers.1.attn_norm"]
    assert torch.equal(sa, gptq.smoothing_scales(hs["layers.1.wq"], 0.5))
    assert float(sa.max() / sa.min()) > 1.3  # a real rescaling (glassllm's norm outputs are fairly even)
    folded = gptq.fold_norm_scales(m.weights, scales)
    lw, fw = m.weights.layers[1], folded.layers[1]
    assert torch.allclose(fw.attn_norm * sa, lw.attn_norm, rtol=1e-6)
    assert torch.allclose(fw.wk / sa, lw.wk, rtol=1e-6) and torch.equal(fw.wo, lw.wo) and torch.equal(fw.w_down, lw.w_down)
    assert not torch.equal(fw.w_up, lw.w_up) and torch.equal(folded.final_norm, m.weights.final_norm)
    ids = torch.as_tensor(m.tokenizer.encode("Once upon a time there was a little girl who"))
    ref = FloatLlama(m.config, m.weights)(ids)
    out = FloatLlama(m.config, folded)(ids)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    with pytest.raises(gptq.GptqError, match="layers.0.w_gate"):
        gptq.norm_smoothing_scales({"layers.0.wq": hs["layers.0.wq"]}, 0.5, [0])
    with pytest.raises(gptq.GptqError, match="layers.99.attn_norm"):
        gptq.fold_norm_scales(m.weights, {"layers.99.attn_norm": sa})


def test_head_tied_wo_smoothing_is_exact_in_float():
    """wv's row (kv, d) x 1/g and wo's column (h, d) x g for every query head h reading kv head kv
    (golden.gptq.head_tied_smoothing_scales, tied over the group) leave the float model's function
    unchanged: each head's attention output is a convex combination of its kv head's value rows."""
    import dataclasses

    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.model import FloatLlama

    m = load_model("glassllm")
    cfg = m.config
    outs = [f"layers.{i}.wo" for i in range(cfg.n_layers)]
    hs = gptq.collect_hessians(cfg, m.weights, model_calibration_tokens(m)[:, :128], outs)
    cols, rows = {}, {}
    for wo in outs:
        s = gptq.head_tied_smoothing_scales(hs[wo], 0.5, cfg.n_heads, cfg.n_kv_heads)
        cols[wo], rows[wo.replace("wo", "wv")] = s, gptq.kv_rows_of(s, cfg.n_heads, cfg.n_kv_heads)
    s, hd, rep = cols["layers.1.wo"], cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    assert s.shape == (cfg.n_heads * hd,) and float(s.max() / s.min()) > 1.3  # a real rescaling
    assert abs(float(s.double().log().mean())) < 1e-6  # geometric mean 1
    tied = s.view(cfg.n_kv_heads, rep, hd)
    assert torch.equal(tied, tied[:, :1].expand_as(tied))  # one scale per (kv head, d)
    d = torch.diagonal(hs["layers.1.wo"]).double().sqrt().log().view(cfg.n_kv_heads, rep, hd).mean(1)
    ref_s = (0.5 * d - (0.5 * d).mean()).exp().float()
    assert torch.allclose(tied[:, 0], ref_s, rtol=1e-5)
    new = gptq.rescale_linears(m.weights, cols, rows)
    layers = [dataclasses.replace(lw, wo=new[f"layers.{i}.wo"], wv=new[f"layers.{i}.wv"]) for i, lw in enumerate(m.weights.layers)]
    ids = torch.as_tensor(m.tokenizer.encode("Once upon a time there was a little girl who"))
    ref = FloatLlama(cfg, m.weights)(ids)
    out = FloatLlama(cfg, dataclasses.replace(m.weights, layers=layers))(ids)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # untied (per query head) scales would not be exact: the check can fail
    bad = dict(cols, **{"layers.1.wo": gptq.smoothing_scales(hs["layers.1.wo"], 0.5)})
    new_bad = gptq.rescale_linears(m.weights, bad, rows)
    layers_bad = [dataclasses.replace(lw, wo=new_bad[f"layers.{i}.wo"], wv=new_bad[f"layers.{i}.wv"])
                  for i, lw in enumerate(m.weights.layers)]
    out_bad = FloatLlama(cfg, dataclasses.replace(m.weights, layers=layers_bad))(ids)
    assert not torch.allclose(out_bad, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    with pytest.raises(gptq.GptqError, match="query heads"):
        gptq.head_tied_smoothing_scales(hs["layers.1.wo"], 0.5, cfg.n_heads + 1, cfg.n_kv_heads)


def test_cal4k_nsmooth_preset_folds_the_norms_into_the_integer_model():
    """w4a8-ovp-gptq-g128-cal4k-nsmooth: -cal4k-smooth plus smooth_norm = 0.5; the integer model's
    gammas (what compiler.spec takes) are the folded ones, computed from the GPTQ calibration
    tokens; the same fold on plain W8A8 keeps glassllm's integer perplexity near fp32."""
    import dataclasses

    from olivine.golden import qcache
    from olivine.golden.accuracy import perplexity
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.fixed import GAMMA_FRAC, to_fixed
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    for name, kind in (("w4a8-ovp-gptq-g128-cal4k-nsmooth", "ovp4"), ("w4a8-int4-gptq-g128-cal4k-nsmooth", "int4")):
        cfg = QuantConfig.preset(name)
        assert (cfg.gptq_tokens, cfg.smooth_down, cfg.smooth_norm) == (4096, 0.5, 0.5)
        assert cfg.default == LayerQuant(kind, "int8", method="gptq", group=128) and cfg.needs_calibration()
        assert "RMSNorm" in cfg.describe_options()
        smooth = name.replace("nsmooth", "smooth")
        assert dataclasses.replace(cfg, smooth_norm=0.0, name=smooth) == QuantConfig.preset(smooth)
    with pytest.raises(QuantConfigError, match="smooth_norm"):
        QuantConfig(smooth_norm=-0.1)
    m = load_model("glassllm")
    short = model_calibration_tokens(m)
    w8 = LayerQuant("int8", "int8")
    ncfg = QuantConfig(w8, {"lm_head": w8}, smooth_norm=0.5)
    q = quantize_model(m.config, m.weights, ncfg, short, show_progress=False)
    hs = gptq.collect_hessians(m.config, m.weights, short, ["layers.2.w_gate"])
    s = gptq.smoothing_scales(hs["layers.2.w_gate"], 0.5)
    assert torch.equal(q.norm_scales["layers.2.ffn_norm"], s)
    assert torch.equal(q.gamma["layers.2.ffn_norm"], to_fixed(m.weights.layers[2].ffn_norm / s, GAMMA_FRAC))
    assert torch.equal(q.gamma["final_norm"], to_fixed(m.weights.final_norm, GAMMA_FRAC))
    assert qcache.cache_key(m, ncfg, short) != qcache.cache_key(m, dataclasses.replace(ncfg, smooth_norm=0.0), short)
    ev = torch.as_tensor(m.tokenizer.encode("The little dog ran to the park and played with a red ball. "
                                            "Then the sun went down and the children walked home."))
    fp = perplexity(quantize_model(m.config, m.weights, "fp32"), ev)
    w8p = perplexity(quantize_model(m.config, m.weights, "w8a8"), ev)
    w8n = perplexity(q, ev)
    assert abs(w8n / fp - 1) < max(0.02, 2 * abs(w8p / fp - 1)), (fp, w8p, w8n)


def test_cal4k_smooth_preset_gptq_tokens_and_smoothing():
    """w4a8-ovp-gptq-g128-cal4k-smooth: GPTQ's Hessians from the first 4,096 calibration tokens
    per corpus (more given are ignored, fewer refused), the linears the smoothing leaves alone
    exactly w4a8-ovp-gptq-g128's on those tokens, w_up / w_down other values; the integer model
    of the same smoothing on W8A8 stays as close to fp32 as W8A8 itself."""
    import dataclasses

    from olivine.golden import qcache
    from olivine.golden.accuracy import perplexity
    from olivine.golden.contract import ContractError
    from olivine.golden.data import model_calibration_tokens
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    m = load_model("glassllm")
    name = "w4a8-ovp-gptq-g128-cal4k-smooth"
    cfg = QuantConfig.preset(name)
    assert (cfg.gptq_tokens, cfg.smooth_down, cfg.calibration_length(1024)) == (4096, 0.5, 4096)
    assert cfg.default == LayerQuant("ovp4", "int8", method="gptq", group=128)
    short = model_calibration_tokens(m)
    with pytest.raises(ContractError, match="n_tokens=4096"):
        quantize_model(m.config, m.weights, name, short, show_progress=False)
    long = model_calibration_tokens(m, n_tokens=4200)
    assert torch.equal(long[:, :1024], short)
    q = quantize_model(m.config, m.weights, name, long, show_progress=False)
    g = quantize_model(m.config, m.weights, "w4a8-ovp-gptq-g128", long[:, :4096], show_progress=False)
    for n in ("layers.0.wq", "layers.1.wo", "layers.2.w_gate"):
        assert torch.equal(q.linears[n].weight.values, g.linears[n].weight.values), n
    # w_up's rows x 1/s: the same grid values, row scales x 1/s (scale-invariant search); w_down new values
    up_q, up_g = q.linears["layers.0.w_up"].weight, g.linears["layers.0.w_up"].weight
    hs = gptq.collect_hessians(m.config, m.weights, long[:, :4096], ["layers.0.w_down"])
    s = gptq.smoothing_scales(hs["layers.0.w_down"], 0.5).double()
    assert torch.equal(up_q.values, up_g.values)
    assert torch.allclose(up_q.scale.reshape(-1) * s, up_g.scale.reshape(-1), rtol=1e-5)
    assert not torch.equal(q.linears["layers.0.w_down"].weight.values, g.linears["layers.0.w_down"].weight.values)
    assert qcache.cache_key(m, cfg, long) != qcache.cache_key(m, dataclasses.replace(cfg, gptq_tokens=2048), long)
    assert qcache.cache_key(m, cfg, long) != qcache.cache_key(m, dataclasses.replace(cfg, smooth_down=0.25), long)
    with pytest.raises(QuantConfigError, match="smooth_down"):
        QuantConfig(smooth_down=2.0)
    with pytest.raises(QuantConfigError, match="gptq_tokens"):
        QuantConfig(gptq_tokens=4)
    # the integer path: w_up's per-row scale absorbs 1/s; SwiGLU and w_down's INT8 input run as before
    ev = torch.as_tensor(m.tokenizer.encode("The little dog ran to the park and played with a red ball. "
                                            "Then the sun went down and the children walked home."))
    fp = perplexity(quantize_model(m.config, m.weights, "fp32"), ev)
    w8 = perplexity(quantize_model(m.config, m.weights, "w8a8"), ev)
    sm = QuantConfig(LayerQuant("int8", "int8"), {"lm_head": LayerQuant("int8", "int8")}, smooth_down=0.5)
    w8s = perplexity(quantize_model(m.config, m.weights, sm, short, show_progress=False), ev)
    assert abs(w8s / fp - 1) < max(0.02, 2 * abs(w8 / fp - 1)), (fp, w8, w8s)
