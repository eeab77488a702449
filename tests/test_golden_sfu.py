"""Tests of golden/sfu.py: measured error against float64 within the documented bounds, exact
edge cases (masks, zero variance, saturation, symmetries), tables, and bad input."""

import math

import numpy as np
import pytest
import torch

from olivine.golden import sfu
from olivine.golden.fixed import (INT32_MAX, INT32_MIN, FixedPointTypeError, FixedPointValueError,
                                  from_fixed, round_shift, to_fixed)

F = 16
ONE = 1 << F


@pytest.fixture(scope="module")
def measured():
    return sfu.measure_errors(reduced=True)


# ----------------------------------------------------------------------------- error vs float

@pytest.mark.parametrize("name", sorted(sfu.ERROR_BOUNDS))
def test_error_within_documented_bound(measured, name):
    st = measured[name]
    assert st["bound_ok"], (name, st)
    assert st["n"] > 1000


def test_error_figures_are_tight(measured):
    # the figures docs/sfu.md reports: sub-LSB or about one LSB where the bound says so
    assert measured["softmax"]["max_abs_lsb"] <= 0.55
    assert measured["silu"]["max_abs_lsb"] <= 1.0
    assert measured["rmsnorm"]["max_abs_lsb"] <= 1.5
    assert measured["layernorm"]["max_abs_lsb"] <= 1.5
    assert measured["mul"]["max_abs_lsb"] <= 0.5
    assert measured["add"]["max_abs"] == 0.0
    # row sums: hard bound L/2; measured on random rows a small multiple of sqrt(L)
    assert measured["softmax"]["max_row_sum_err_per_sqrt_len"] < 3.0


# ----------------------------------------------------------------------------- tables

def test_exp_table_contents():
    t = sfu.exp_table()
    assert len(t) == 257 and all(type(v) is int for v in t)
    assert t[0] == 2**23 and t[128] == round(2**23 / math.sqrt(2)) and t[256] == 2**22
    assert all(a > b for a, b in zip(t, t[1:]))
    assert all(abs(v - 2**23 * 2 ** (-j / 256)) <= 0.5 for j, v in enumerate(t))


def test_sigmoid_table_contents():
    t = sfu.sigmoid_table()
    assert sfu.silu_table() == t
    assert len(t) == 1025 and all(type(v) is int for v in t)
    assert t[0] == 2**23 and max(t) < 2**24
    assert all(a <= b for a, b in zip(t, t[1:]))             # flat near 1 at 24 bits
    assert all(abs(v - 2**24 / (1 + math.exp(-j / 64))) <= 0.5 + 1e-6 for j, v in enumerate(t))


def test_rope_tables_contents():
    c, s = sfu.rope_tables(100, 64, 10000.0)
    assert isinstance(c, np.ndarray) and c.dtype == np.int64 and c.shape == (100, 32)
    assert (c[0] == ONE).all() and (s[0] == 0).all()
    p, i = 37, 5
    ang = p * 10000.0 ** (-2 * i / 64)
    assert c[p, i] == math.floor(math.cos(ang) * ONE + 0.5)
    assert s[p, i] == math.floor(math.sin(ang) * ONE + 0.5)
    assert np.abs(c).max() <= ONE and np.abs(s).max() <= ONE
    with pytest.raises(FixedPointValueError):
        sfu.rope_tables(10, 63, 1e4)
    with pytest.raises(FixedPointValueError):
        sfu.rope_tables(0, 64, 1e4)


# ----------------------------------------------------------------------------- softmax

def test_softmax_masked_positions_exact_zero_and_fully_masked_row():
    gen = torch.Generator().manual_seed(0)
    sc = to_fixed(torch.randn(2, 5, 300, generator=gen) * 4, F)
    mask = torch.rand(5, 300, generator=gen) > 0.3
    mask[4] = False
    p = sfu.softmax(sc, F, mask)
    assert p.dtype == torch.int32
    assert (p[:, ~mask] == 0).all()
    assert (p[:, 4] == 0).all()
    sums = p.to(torch.int64).sum(-1)[:, :4]
    assert ((sums - ONE).abs() <= 300 // 2 + 1).all()


def test_softmax_all_equal_row_exact_value():
    for n in (1, 2, 7, 1793, 2048):
        p = sfu.softmax(torch.full((n,), 12345, dtype=torch.int32), F)
        # e = 2**31 each, Z = n * 2**31, r = 2**62 // Z, p = round_shift(e * r, 62 - F)
        expect = round_shift((2**31) * ((1 << 62) // (n * 2**31)), 62 - F)
        assert (p == expect).all()
        assert abs(int(p.to(torch.int64).sum()) - ONE) <= n // 2 + 1
    assert sfu.softmax(torch.zeros(1, dtype=torch.int32), F).item() == ONE


def test_softmax_shift_invariance_and_int32_extremes():
    gen = torch.Generator().manual_seed(1)
    sc = to_fixed(torch.randn(4, 2048, generator=gen) * 3, F)
    p0 = sfu.softmax(sc, F)
    p1 = sfu.softmax(sc + 1000 * ONE, F)
    assert torch.equal(p0, p1)                       # only differences enter (exactly)
    assert torch.equal(p0, sfu.softmax(sc, F))       # deterministic
    row = torch.tensor([INT32_MIN, INT32_MAX, 0, INT32_MAX - ONE], dtype=torch.int32)
    p = sfu.softmax(row, F)
    ref = sfu.softmax_float(from_fixed(row, F))
    assert (from_fixed(p, F) - ref).abs().max() <= 0.5 * 2.0**-F + 1e-12
    assert p[0] == 0 and p[1] > p[3] > 0


def test_softmax_long_context_causal_prefill():
    L = 2048
    gen = torch.Generator().manual_seed(2)
    q = torch.arange(L - 16, L)                      # last 16 query rows of a 2048 prefill
    sc = to_fixed(torch.randn(3, 16, L, generator=gen) * 8, F)
    mask = torch.arange(L)[None, :] <= q[:, None]
    p = sfu.softmax(sc, F, mask)
    ref = sfu.softmax_float(from_fixed(sc, F), mask)
    assert (from_fixed(p, F) - ref).abs().max() <= 0.5 * 2.0**-F + 2.0**-18 + 1e-12
    assert (p[..., ~mask] == 0).all()


def test_softmax_frac_out_and_one_hot():
    sc = torch.tensor([[0, 300 * ONE, 5]], dtype=torch.int32)
    for fo in (8, 16, 30):
        p = sfu.softmax(sc, F, frac_out=fo)
        assert p.tolist() == [[0, 1 << fo, 0]]


# ----------------------------------------------------------------------------- norms

def test_rmsnorm_zero_variance_uses_eps_and_zero_row():
    g = to_fixed(torch.ones(576), F)
    z = torch.zeros(2, 576, dtype=torch.int32)
    assert (sfu.rmsnorm(z, F, g, F, 1e-5, F) == 0).all()
    assert (sfu.rmsnorm(z, F, g, F, 0.0, F) == 0).all()    # eps = 0: defined as 0, no div by 0
    c = torch.full((1, 576), 3 * ONE // 1000, dtype=torch.int32)  # tiny constant: eps matters
    xr = from_fixed(c, F)
    y = sfu.rmsnorm(c, F, g, F, 1e-5, F)
    ref = sfu.rmsnorm_float(xr, from_fixed(g, F), 1e-5)
    assert (from_fixed(y, F) - ref).abs().max() <= 2.0**-F + 2.0**-18 * ref.abs().max()
    assert float(ref[0, 0]) < 0.7                            # eps visibly reduces the output


def test_rmsnorm_int32_extremes_and_sink_row():
    d = 576
    g = to_fixed(torch.linspace(0.5, 2.0, d), F)
    x = torch.zeros(3, d, dtype=torch.int32)
    x[0, :] = INT32_MAX
    x[1, ::2] = INT32_MIN
    x[1, 1::2] = INT32_MAX
    x[2] = to_fixed(torch.randn(d), F)
    x[2, 7] = to_fixed(torch.tensor([24900.0]), F)
    y = sfu.rmsnorm(x, F, g, F, 1e-5, F)
    ref = sfu.rmsnorm_float(from_fixed(x, F), from_fixed(g, F), 1e-5)
    assert ((from_fixed(y, F) - ref).abs() <= 2.0**-F + 2.0**-18 * ref.abs()).all()


def test_rmsnorm_saturates_output_instead_of_wrapping():
    d = 4
    x = torch.tensor([[ONE, 0, 0, 0]], dtype=torch.int32)     # x/rms = 2 at channel 0
    g = torch.tensor([INT32_MAX, 1, 1, 1], dtype=torch.int32)
    y = sfu.rmsnorm(x, F, g, 0, 1e-5, F)                      # 2 * (2**31 - 1) -> saturate
    assert y[0, 0].item() == INT32_MAX
    y = sfu.rmsnorm(-x, F, g, 0, 1e-5, F)
    assert y[0, 0].item() == INT32_MIN


def test_layernorm_constant_row_gives_beta_exactly():
    d = 64
    g = to_fixed(torch.randn(d), F)
    b = to_fixed(torch.randn(d), F)
    x = torch.full((3, d), 5 * ONE, dtype=torch.int32)
    assert torch.equal(sfu.layernorm(x, F, g, b, F, 1e-5, F), b.expand(3, d))


def test_layernorm_matches_rmsnorm_on_zero_mean_rows():
    gen = torch.Generator().manual_seed(3)
    x = to_fixed(torch.randn(8, 32, generator=gen) * 10, F)
    x = torch.cat([x, -x], dim=-1)                            # exact zero mean
    g = to_fixed(torch.ones(64), F)
    b = torch.zeros(64, dtype=torch.int32)
    y_ln = sfu.layernorm(x, F, g, b, F, 1e-5, F)
    y_rms = sfu.rmsnorm(x, F, g, F, 1e-5, F)
    assert (y_ln.to(torch.int64) - y_rms.to(torch.int64)).abs().max() <= 1


# ----------------------------------------------------------------------------- SiLU / SwiGLU

def test_silu_exact_properties():
    x = to_fixed(torch.linspace(-40, 40, 4001), F)
    y = sfu.silu(x, F, F).to(torch.int64)
    y_neg = sfu.silu(-x, F, F).to(torch.int64)
    assert torch.equal(y - y_neg, x.to(torch.int64))           # silu(x) - silu(-x) == x exactly
    assert sfu.silu(torch.tensor([0], dtype=torch.int32), F, F).item() == 0
    big = torch.tensor([16 * ONE, 25000 * ONE, -16 * ONE, -25000 * ONE], dtype=torch.int32)
    assert sfu.silu(big, F, F).tolist() == [16 * ONE, 25000 * ONE, 0, 0]


def test_silu_saturates_and_changes_format():
    x = torch.tensor([INT32_MAX, INT32_MIN], dtype=torch.int32)
    assert sfu.silu(x, F, F + 4).tolist() == [INT32_MAX, 0]
    x = to_fixed(torch.tensor([1.0, -2.0, 3.5]), 12)
    y = sfu.silu(x, 12, 20)
    ref = sfu.silu_float(from_fixed(x, 12))
    assert ((from_fixed(y, 20) - ref).abs() <= 0.5 * 2.0**-20 + 2.0**-17 * 3.5).all()


def test_swiglu_is_silu_times_up():
    gen = torch.Generator().manual_seed(4)
    gate = to_fixed(torch.randn(1000, generator=gen) * 4, F)
    up = to_fixed(torch.randn(1000, generator=gen) * 4, 14)
    got = sfu.swiglu(gate, up, F, 14, F)
    assert torch.equal(got, sfu.mul(sfu.silu(gate, F, F), up, F, 14, F))
    got24 = sfu.swiglu(gate, up, F, 14, F, frac_mid=24)
    ref = sfu.swiglu_float(from_fixed(gate, F), from_fixed(up, 14))
    err16 = (from_fixed(got, F) - ref).abs().max()
    err24 = (from_fixed(got24, F) - ref).abs().max()
    assert err24 < err16 and err24 <= 0.5 * 2.0**-F + 2.0**-17 * 20


# ----------------------------------------------------------------------------- RoPE

def test_rope_position_zero_is_identity_and_styles_agree():
    gen = torch.Generator().manual_seed(5)
    x = to_fixed(torch.randn(3, 40, 64, generator=gen) * 5, F)
    pos = torch.arange(40)
    y0 = sfu.rope(x, torch.zeros(40, dtype=torch.int64), F, 1e4, 64)
    assert torch.equal(y0, x)
    # interleaved layout = half layout after permuting (2i, 2i+1) <-> (i, i + d/2)
    perm = torch.cat([torch.arange(0, 64, 2), torch.arange(1, 64, 2)])
    inv = torch.argsort(perm)
    y_half = sfu.rope(x[..., perm], pos, F, 1e4, 64, "half")
    y_int = sfu.rope(x, pos, F, 1e4, 64, "interleaved")
    assert torch.equal(y_half[..., inv], y_int)


def test_rope_long_positions_and_broadcast():
    gen = torch.Generator().manual_seed(6)
    x = to_fixed(torch.randn(2, 3, 5, 64, generator=gen) * 5, F)
    pos = torch.tensor([0, 1, 2047, 5000, 9999])
    y = sfu.rope(x, pos, F, 1e5, 64)
    ref = sfu.rope_float(from_fixed(x, F), pos, 1e5, 64)
    assert (from_fixed(y, F) - ref).abs().max() <= 0.5 * 2.0**-F + 2.0**-16 * 30
    # per-row positions (decode with different lengths per batch element)
    pos2 = torch.tensor([[7], [9]]).expand(2, 5)[:, None, :]
    y2 = sfu.rope(x, pos2, F, 1e5, 64)
    assert torch.equal(y2[0], sfu.rope(x[0], torch.full((5,), 7), F, 1e5, 64))


def test_rope_saturates():
    x = torch.full((1, 2), INT32_MAX, dtype=torch.int32)
    y = sfu.rope(x, torch.tensor([1]), F, 1.0e4, 2)            # 1 rad rotation of (M, M)
    a = from_fixed(x, F)[0, 0].item()
    assert y[0, 1].item() == INT32_MAX                        # M*(cos1 + sin1) > M
    assert abs(y[0, 0].item() - a * (math.cos(1) - math.sin(1)) * ONE) < 2**31 * 2e-5


# ----------------------------------------------------------------------------- element-wise

def test_add_mul_saturate_and_round():
    a = torch.tensor([INT32_MAX, INT32_MIN, 5, -7], dtype=torch.int32)
    b = torch.tensor([1, -1, 6, 2], dtype=torch.int32)
    assert sfu.add(a, b).tolist() == [INT32_MAX, INT32_MIN, 11, -5]
    assert sfu.mul(a, torch.tensor(2, dtype=torch.int32), F, 0, F).tolist()[:2] == \
        [INT32_MAX, INT32_MIN]
    x = torch.tensor([3 * ONE // 2, -ONE // 2], dtype=torch.int32)     # 1.5, -0.5
    y = torch.tensor([ONE // 2, ONE // 2], dtype=torch.int32)          # 0.5
    assert sfu.mul(x, y, F, F, F).tolist() == [3 * ONE // 4, -ONE // 4]
    assert sfu.mul(torch.tensor([1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32),
                   0, 0, 20).item() == 1 << 20                          # negative shift
    assert sfu.mul(torch.tensor([3], dtype=torch.int32), torch.tensor([1], dtype=torch.int32),
                   1, 0, 0).item() == 2                                 # 1.5 rounds up
    assert sfu.requantize(torch.tensor([3, -3], dtype=torch.int32), 1, 0).tolist() == [2, -1]
    assert sfu.requantize(torch.tensor([INT32_MAX], dtype=torch.int32), 0, 4).item() == INT32_MAX


# ----------------------------------------------------------------------------- bad input

def test_bad_input_errors():
    xf = torch.randn(4, 8)
    xi = torch.zeros(4, 8, dtype=torch.int32)
    g = torch.zeros(8, dtype=torch.int32)
    with pytest.raises(FixedPointTypeError, match="to_fixed"):
        sfu.rmsnorm(xf, F, g, F)
    with pytest.raises(FixedPointTypeError):
        sfu.softmax(xf, F)
    with pytest.raises(FixedPointTypeError):
        sfu.silu(xf, F)
    with pytest.raises(FixedPointTypeError):
        sfu.rope(xf, torch.arange(4), F, 1e4, 8)
    with pytest.raises(FixedPointTypeError):
        sfu.add(xi, xf)
    with pytest.raises(FixedPointValueError, match="frac_in"):
        sfu.rmsnorm(xi, 31, g, F)
    with pytest.raises(FixedPointValueError, match="frac_out"):
        sfu.softmax(xi, F, frac_out=-1)
    with pytest.raises(FixedPointValueError, match="gamma_q"):
        sfu.rmsnorm(xi, F, torch.zeros(7, dtype=torch.int32), F)
    with pytest.raises(FixedPointValueError, match="beta_q"):
        sfu.layernorm(xi, F, g, torch.zeros(9, dtype=torch.int32), F)
    with pytest.raises(FixedPointValueError, match="eps"):
        sfu.rmsnorm(xi, F, g, F, eps=-1.0)
    with pytest.raises(FixedPointTypeError, match="mask"):
        sfu.softmax(xi, F, mask=torch.ones(4, 8, dtype=torch.int32))
    with pytest.raises(FixedPointValueError, match="mask"):
        sfu.softmax(xi, F, mask=torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(FixedPointValueError, match="head_dim"):
        sfu.rope(xi, torch.arange(4), F, 1e4, 6)
    with pytest.raises(FixedPointValueError, match="style"):
        sfu.rope(xi, torch.arange(4), F, 1e4, 8, style="other")
    with pytest.raises(FixedPointValueError, match="positions"):
        sfu.rope(xi, torch.tensor([0, 1, -1, 2]), F, 1e4, 8)
    with pytest.raises(FixedPointValueError, match="positions"):
        sfu.rope(xi, torch.arange(5), F, 1e4, 8)
    with pytest.raises(FixedPointValueError, match="broadcast"):
        sfu.mul(xi, torch.zeros(3, dtype=torch.int32), F, F, F)
    with pytest.raises(FixedPointValueError, match="int32"):
        sfu.silu(torch.tensor([2**40]), F)


# ----------------------------------------------------------------------------- model conventions

def test_rope_interleaved_matches_glassllm_convention():
    from glassllm.autograd import _rotate
    from glassllm.nn import rope_angles
    gen = torch.Generator().manual_seed(7)
    x = to_fixed(torch.randn(2, 128, 32, generator=gen) * 3, F)
    cos, sin = rope_angles(32, 128, 10000.0)
    ref = torch.from_numpy(_rotate(from_fixed(x, F).numpy(), cos, sin))
    y = sfu.rope(x, torch.arange(128), F, 10000.0, 32, style="interleaved")
    pair = sfu._pair_norm(from_fixed(x, F), "interleaved")
    assert ((from_fixed(y, F) - ref).abs() <= 0.5 * 2.0**-F + 2.0**-16 * pair + 1e-12).all()


@pytest.mark.models
def test_rope_half_matches_hugging_face_llama():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    gen = torch.Generator().manual_seed(8)
    seq, d, theta = 64, 64, 100000.0
    x = to_fixed(torch.randn(1, 3, seq, d, generator=gen) * 3, F)
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    emb = torch.cat([torch.outer(torch.arange(seq, dtype=torch.float64), inv)] * 2, dim=-1)
    xr = from_fixed(x, F)
    q_ref, _ = llama.apply_rotary_pos_emb(xr, xr, emb.cos()[None], emb.sin()[None])
    y = sfu.rope(x, torch.arange(seq), F, theta, d, style="half")
    pair = sfu._pair_norm(xr, "half")
    assert ((from_fixed(y, F) - q_ref).abs() <= 0.5 * 2.0**-F + 2.0**-16 * pair + 1e-12).all()


@pytest.mark.parametrize("frac_in,std", [(0, 10.0), (4, 5.0), (24, 3.0), (30, 0.5)])
def test_softmax_bound_holds_across_formats(frac_in, std):
    gen = torch.Generator().manual_seed(frac_in)
    s = to_fixed(torch.randn(20, 333, generator=gen) * std, frac_in)
    ref = sfu.softmax_float(from_fixed(s, frac_in))
    b = sfu.ERROR_BOUNDS["softmax"]
    for fo in (8, 16, 30):
        p = sfu.softmax(s, frac_in, frac_out=fo)
        err = (from_fixed(p, fo) - ref).abs()
        assert (err <= b["abs_lsb"] * 2.0**-fo + b["abs"] + b["rel"] * ref + 1e-15).all()


@pytest.mark.parametrize("frac_in,scale", [(0, 1000.0), (8, 100.0), (24, 10.0), (30, 0.3)])
def test_norm_bounds_hold_across_formats(frac_in, scale):
    gen = torch.Generator().manual_seed(10 + frac_in)
    x = to_fixed(torch.randn(24, 200, generator=gen) * scale
                 * torch.logspace(-2, 0, 24)[:, None], frac_in)
    xr = from_fixed(x, frac_in)
    for fg in (8, 16, 30):
        gq = to_fixed(0.5 + torch.rand(200, generator=gen), fg)
        bq = to_fixed(torch.rand(200, generator=gen) - 0.5, fg)
        gr, br = from_fixed(gq, fg), from_fixed(bq, fg)
        for fo in (8, 16, 27):
            y = from_fixed(sfu.rmsnorm(x, frac_in, gq, fg, 1e-5, fo), fo)
            ref = sfu.rmsnorm_float(xr, gr, 1e-5)
            assert ((y - ref).abs() <= sfu.error_bound("rmsnorm", ref, fo, gamma=gr)).all()
            y = from_fixed(sfu.layernorm(x, frac_in, gq, bq, fg, 1e-5, fo), fo)
            ref = sfu.layernorm_float(xr, gr, br, 1e-5)
            bound = sfu.error_bound("layernorm", ref, fo, (ref - br).abs(), gamma=gr)
            assert ((y - ref).abs() <= bound).all()


def test_rsqrt_norm_is_the_exact_floor():
    gen = torch.Generator().manual_seed(11)
    t = torch.cat([torch.randint(1, 2**62, (3000,), generator=gen),
                   torch.randint(1, 2**24, (3000,), generator=gen),
                   torch.tensor([0, 1, 2, 3, 2**22, 2**24 - 1, 2**24, 2**61])])
    r, u = sfu.rsqrt_norm(t)
    tn = round_shift(t, 2 * u)                   # the normalized argument t'
    live = t > 0
    assert (r[~live] == 0).all()
    r, tn = r[live], tn[live]
    assert ((tn >= 2**22) & (tn <= 2**24)).all()
    # R = floor(2**31 / sqrt(t')): R**2 * t' <= 2**62 < (R + 1)**2 * t' (checked in Python ints)
    for rv, tv in zip(r.tolist()[::7], tn.tolist()[::7]):
        assert rv * rv * tv <= 2**62 < (rv + 1) * (rv + 1) * tv


def test_llama3_rope_scaling_bands():
    # theta 5e5, hd 64, original context 64: wavelengths below 16 are kept, above 64 divided by 8,
    # in between interpolated (LLaMA-3's rule)
    hd, theta, scaling = 64, 5e5, (8.0, 1.0, 4.0, 64)
    base = theta ** (-(2.0 * np.arange(hd // 2)) / hd)
    inv = sfu.llama3_inv_freq(base, scaling)
    wavelen = 2 * np.pi / base
    high, low = wavelen < 16, wavelen > 64
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_array_equal(inv[high], base[high])
    np.testing.assert_allclose(inv[low], base[low] / 8, rtol=1e-15)
    mid = ~high & ~low
    assert np.all(inv[mid] < base[mid]) and np.all(inv[mid] > base[mid] / 8)
    cos, sin = sfu.rope_tables(100, hd, theta, scaling=scaling)
    cos0, _ = sfu.rope_tables(100, hd, theta)
    np.testing.assert_array_equal(cos[:, high], cos0[:, high])
    assert not np.array_equal(cos[:, low], cos0[:, low])
    want = np.floor(np.cos(np.arange(100)[:, None] * inv[None, :]) * 65536 + 0.5)
    np.testing.assert_array_equal(cos, want)
    with pytest.raises(ValueError, match="factor >= 1"):
        sfu.rope_tables(8, hd, theta, scaling=(0.5, 1.0, 4.0, 64))
