"""Tests of golden/contract.py: exact integer identities, rounding, wrap, saturation, error bounds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from olivine.golden import contract as C
from olivine.golden import fixed

HYP = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------ primitives


def test_round_shift_ties_go_up_and_match_fixed():
    x = torch.tensor([3, -3, 5, -5, 1, -1, 2, -2, 0])
    assert C.round_shift(x, 1).tolist() == [2, -1, 3, -2, 1, 0, 1, -1, 0]
    r = torch.randint(-(2**40), 2**40, (2000,))
    for s in (0, 1, 2, 7, 16, 31, 40, 62):
        assert torch.equal(C.round_shift(r, s), fixed.round_shift(r, s))
    assert C.round_shift(torch.tensor([5]), -3).item() == 40


def test_quantize_multiplier_matches_fixed_and_is_accurate():
    reals = [1e-9, 3.3e-5, 0.001, 0.5, 0.75, 1.0, 1.999999999, 3.7, 1234.5]
    m = C.quantize_multiplier(torch.tensor(reals, dtype=torch.float64))
    for i, r in enumerate(reals):
        assert (int(m.mult[i]), int(m.shift[i])) == fixed.quantize_multiplier(r)
        assert 2**30 <= int(m.mult[i]) < 2**31
        assert abs(int(m.mult[i]) * 2.0 ** -int(m.shift[i]) / r - 1) <= 2.0**-31
    z = C.quantize_multiplier(torch.tensor([0.0]))
    assert z.mult.tolist() == [0] and z.shift.tolist() == [0]
    with pytest.raises(C.ContractError):
        C.quantize_multiplier(torch.tensor([-1.0]))
    with pytest.raises(C.ContractError):
        C.quantize_multiplier(torch.tensor([float("nan")]))


def test_wrap_int32_is_twos_complement():
    x = torch.tensor([2**31 - 1, 2**31, 2**32 + 5, -(2**31) - 1, -5])
    assert C.wrap_int32(x).tolist() == [2**31 - 1, -(2**31), 5, 2**31 - 1, -5]


def test_float_inputs_are_rejected():
    with pytest.raises(C.ContractTypeError):
        C.quantize_act_dynamic_int8(torch.zeros(2, 4), 16)
    with pytest.raises(C.ContractTypeError):
        C.int_matmul(torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int16))
    with pytest.raises(C.ContractError):
        C.int_matmul(torch.zeros(2, 4, dtype=torch.int8), torch.zeros(3, 5, dtype=torch.int8))


# ------------------------------------------------------------------ matmul


@HYP
@given(st.integers(1, 4), st.integers(1, 24), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_int_matmul_equals_exact_product_of_grids(t, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (t, k), generator=g, dtype=torch.int64).to(torch.int8)
    w = torch.randint(-192, 193, (n, k), generator=g, dtype=torch.int64).to(torch.int16)
    bias = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    acc = C.int_matmul(a, w, bias)
    assert acc.dtype == torch.int32
    for i in range(t):
        for j in range(n):
            exact = sum(int(a[i, q]) * int(w[j, q]) for q in range(k)) + int(bias[j])
            wrapped = (exact + 2**31) % 2**32 - 2**31
            assert int(acc[i, j]) == wrapped


def test_int_matmul_wraps_on_overflow():
    k = 140_000  # 127 * 127 * k > 2**31
    a = torch.full((1, k), 127, dtype=torch.int8)
    w = torch.full((1, k), 127, dtype=torch.int16)
    exact = 127 * 127 * k
    assert exact > 2**31
    assert int(C.int_matmul(a, w)[0, 0]) == exact - 2**32
    # negative overflow as well, and the int64 path (large values) wraps identically
    big = torch.full((1, 4), 2**30, dtype=torch.int64)
    one = torch.full((1, 4), 2**30, dtype=torch.int64)
    assert int(C.int_matmul(big, one)[0, 0]) == ((4 * 2**60 + 2**31) % 2**32) - 2**31
    assert int(C.int_matmul(-big, one)[0, 0]) == ((-4 * 2**60 + 2**31) % 2**32) - 2**31


def test_int_matmul_float64_and_int64_paths_agree():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (3, 50), generator=g)
    w = torch.randint(-127, 128, (4, 50), generator=g)
    ref = C.wrap_int32(a @ w.T)
    assert torch.equal(C.int_matmul(a, w), ref)
    # scale so the float64 bound fails and the int64 path is used
    a2, w2 = a * 2**20, w * 2**20
    assert torch.equal(C.int_matmul(a2, w2), C.wrap_int32(a2 @ w2.T))


def _random_ovp_grid(normal, shape, g):
    """Random OVP grid values obeying the victim rule."""
    from olivine.golden.ovp_format import get_format

    fmt = get_format(normal)
    normals = torch.tensor(fmt.normal_grid)
    outliers = torch.tensor(fmt.outlier_grid)
    v = normals[torch.randint(0, len(normals), shape, generator=g)]
    is_out = torch.rand(shape, generator=g) < 0.1
    v = torch.where(is_out, outliers[torch.randint(0, len(outliers), shape, generator=g)], v)
    return C.apply_victims(v, fmt.normal_max, "larger")


@pytest.mark.parametrize("normal", ["int4", "flint4"])
def test_operand_form_equals_grid_matmul(normal):
    """sum (a*i) << e (what an OVP PE computes) == the matmul of grid values."""
    g = torch.Generator().manual_seed(7)
    w = _random_ovp_grid(normal, (6, 32), g)
    we, wi = C.grid_to_operands(w, normal)
    assert torch.equal(wi.to(torch.int64) << we.to(torch.int64), w)
    assert int(wi.abs().max()) <= 7 and int(we.max()) <= 6
    a = torch.randint(-127, 128, (5, 32), generator=g)
    assert torch.equal(C.int_matmul_operands(torch.zeros_like(a), a, we, wi), C.int_matmul(a, w))
    # OVP x OVP (W4A4): exponents add
    x = _random_ovp_grid("int4", (5, 32), g)
    xe, xi = C.grid_to_operands(x, "int4")
    assert torch.equal(C.int_matmul_operands(xe, xi, we, wi), C.int_matmul(x, w))


def test_grid_to_operands_rejects_off_grid():
    with pytest.raises(C.ContractError):
        C.grid_to_operands(torch.tensor([[5, 9]]), "flint4")  # 5 is not a flint4 value


# ------------------------------------------------------------------ activation quantization


def test_dynamic_exponent_rule():
    amax = torch.tensor([0, 1, 127, 128, 254, 255, 256, 509, 510, 2**31 - 1, 2**31])
    e = C.dynamic_int8_exponent(amax)
    assert e.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 25, 25]
    r = torch.randint(0, 2**31, (5000,))
    e = C.dynamic_int8_exponent(r)
    assert (C.round_shift(r, e) <= 127).all()  # valid
    assert ((e == 0) | (C.round_shift(r, (e - 1).clamp(min=0)) > 127)).all()  # smallest


@HYP
@given(st.integers(1, 3), st.integers(1, 40), st.integers(0, 2**31 - 1), st.integers(0, 31))
def test_dynamic_int8_mantissa_rule(t, k, seed, mag_bits):
    g = torch.Generator().manual_seed(seed)
    hi = 2**mag_bits
    x = torch.randint(-hi, hi, (t, k), generator=g, dtype=torch.int64).clamp(-(2**31), 2**31 - 1).to(torch.int32)
    qa = C.quantize_act_dynamic_int8(x, 16)
    assert qa.kind == "int8" and qa.mantissa.shape == (t, 1)
    for i in range(t):
        amax = int(x[i].abs().max()) if k else 0
        e = max(0, amax.bit_length() - 8)
        mnt = max(1, -(-amax // 2**e))
        assert (int(qa.exponent[i, 0]), int(qa.mantissa[i, 0])) == (e, mnt)
        r = (127 << C.RECIP_BITS) // mnt
        for j in range(k):
            v = int(x[i, j]) * r
            s = C.RECIP_BITS + e
            assert int(qa.values[i, j]) == max(-127, min(127, (v + (1 << (s - 1))) >> s))
        # the real value is within half a code step (plus the reciprocal's tiny error)
        step = mnt * 2**e / 127
        err = (x[i].double() - qa.values[i].double() * step).abs().max()
        assert float(err) <= step * (0.5 + 2**-12)
        # the row maximum lands on 126 or 127 (scale = amax rounded up to 8 significant bits)
        if amax >= 1:
            assert int(qa.values[i].abs().max()) >= 126 or amax < 128


@HYP
@given(st.integers(1, 3), st.integers(1, 40), st.integers(0, 2**31 - 1), st.integers(0, 31))
def test_pow2_int8_error_bound(t, k, seed, mag_bits):
    g = torch.Generator().manual_seed(seed)
    hi = 2**mag_bits
    x = torch.randint(-hi, hi, (t, k), generator=g, dtype=torch.int64).clamp(-(2**31), 2**31 - 1).to(torch.int32)
    qa = C.quantize_act_pow2_int8(x, 16)
    assert qa.values.dtype == torch.int8 and qa.exponent.shape == (t, 1)
    assert int(qa.values.abs().max()) <= 127
    e = qa.exponent.to(torch.int64)
    recon = qa.values.to(torch.int64) << e
    # one rounding: |x - q * 2**e| <= 2**(e-1), no saturation needed
    assert ((x.to(torch.int64) - recon).abs() <= (torch.ones_like(e) << e) // 2).all()
    # the row maximum uses at least 64 levels unless the row is small (e == 0)
    amax_q = qa.values.to(torch.int64).abs().amax(-1, keepdim=True)
    assert ((e == 0) | (amax_q >= 64)).all()


def test_static_int8_matches_float_rule_and_saturates():
    x = torch.tensor([[0, 65536, -65536, 2**20, -(2**20), 98304]], dtype=torch.int32)  # 0, 1, -1, 16, -16, 1.5
    qa = C.quantize_act_static_int8(x, 16, scale=1.0 / 64)
    assert qa.values.tolist() == [[0, 64, -64, 127, -127, 96]]
    f = C.fake_quant_act_static_int8(C.from_fixed(x, 16), 1.0 / 64)
    assert torch.allclose(qa.dequantize(), f)
    with pytest.raises(C.ContractError):
        C.static_int8_scale(torch.zeros(4))


def test_ovp_activation_grid_rounding_and_victims():
    # alpha = 7 with int4 => scale 1: x in LSB units directly (frac_bits 16)
    lsb = [0.3, -2.6, 13.0, 1.7, -0.4, -30.0, 13.0, 50.0, 2.5, -2.5, 9.5, 0.6, 120.0, 3.1]
    x = C.to_fixed(torch.tensor([lsb]), 16)
    qa = C.quantize_act_ovp4(x, 16, alpha=7.0, normal="int4", victim="even")
    assert qa.values.tolist() == [[0, -3, 12, 0, 0, -32, 12, 0, 3, -2, 12, 0, 96, 0]]
    larger = C.quantize_act_ovp4(x, 16, alpha=7.0, normal="int4", victim="larger")
    assert larger.values[0, 6:8].tolist() == [0, 48]
    # flint4, scale 0.5 (alpha = 8)
    y = C.to_fixed(torch.tensor([[0.7, -5, 11, 0.2, 2.6, -9.9, 30, -0.9]]), 16)
    qy = C.quantize_act_ovp4(y, 16, alpha=8.0, normal="flint4")
    assert (qy.values.to(torch.float64) * 0.5).tolist() == [[0.5, -4, 12, 0, 3, -8, 32, 0]]
    with pytest.raises(C.ContractError):
        C.quantize_act_ovp4(torch.zeros(1, 3, dtype=torch.int32), 16, 7.0)


def test_ovp_activation_matches_float_quantizer():
    ovp = pytest.importorskip("olivine.golden.ovp")
    g = torch.Generator().manual_seed(3)
    xf = torch.randn(8, 64, generator=g) * 2
    xf[0, 5] = 40.0
    x = C.to_fixed(xf, 16)
    alpha = 5.0
    for normal in ("int4", "flint4"):
        qa = C.quantize_act_ovp4(x, 16, alpha, normal)
        ref = ovp.quantize(C.from_fixed(x, 16), bits=4, normal=normal, granularity="tensor", alpha=alpha)
        assert torch.equal(qa.values.to(torch.int32), ref.grid_values().to(torch.int32)), normal
        assert abs(qa.base_scale - float(ref.scale)) <= 1e-6 * qa.base_scale


# ------------------------------------------------------------------ requantization


def test_requantize_with_mantissa_is_one_exact_rounding():
    g = torch.Generator().manual_seed(11)
    acc = torch.randint(-(2**31), 2**31, (4, 6), generator=g, dtype=torch.int64).to(torch.int32)
    mant = torch.randint(1, 257, (4, 1), generator=g)
    e = torch.randint(0, 25, (4, 1), generator=g)
    m = C.quantize_multiplier(torch.rand(6, generator=g, dtype=torch.float64) * 1e-6 + 1e-9)
    y = C.requantize(acc, m, e, mantissa=mant)
    for i in range(4):
        for j in range(6):
            v = int(acc[i, j]) * int(mant[i, 0]) * int(m.mult[j])
            s = int(m.shift[j]) - int(e[i, 0])
            ref = (v + (1 << (s - 1))) >> s if s > 0 else v << -s
            assert int(y[i, j]) == max(-(2**31), min(2**31 - 1, ref))


def test_requantize_exact_rounding_tie_and_saturation():
    m = C.Multiplier(torch.tensor([2**30]), torch.tensor([32]))  # real 0.25
    acc = torch.tensor([[6, -6, 2, -2, 10]], dtype=torch.int32)  # 1.5, -1.5, 0.5, -0.5, 2.5
    assert C.requantize(acc, m).tolist() == [[2, -1, 1, 0, 3]]
    # the per-row exponent lowers the shift: real 0.25 * 2**3 = 2
    assert C.requantize(acc, m, torch.tensor([[3]])).tolist() == [[12, -12, 4, -4, 20]]
    big = torch.tensor([[2**31 - 1, -(2**31)]], dtype=torch.int32)
    assert C.requantize(big, m, torch.tensor([[10]])).tolist() == [[2**31 - 1, -(2**31)]]  # left shift saturates
    assert C.requantize(acc * 100, m, out="int8").tolist() == [[127, -127, 50, -50, 127]]
    one = C.Multiplier(torch.tensor([2**30]), torch.tensor([0]))  # 2**30: shift - e < -31
    assert C.requantize(torch.tensor([[1, -1, 0]]), one, torch.tensor([[40]])).tolist() == [[2**31 - 1, -(2**31), 0]]


def _py_round_shift(v: int, s: int) -> int:
    return (v + (1 << (s - 1))) >> s if s > 0 else v << -s


@HYP
@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 4), st.sampled_from(["int8", "int4"]), st.integers(0, 2**31 - 1))
def test_qlinear_equals_python_integer_reference(t, k, n, kind, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    x = C.to_fixed(torch.randn(t, k, generator=g) * 3, 16)
    lin = C.compile_linear(w, b, weights=kind, acts="int8", in_frac=16, out_frac=12)
    y = lin(x)
    qa = C.quantize_act_dynamic_int8(x, 16)
    for i in range(t):
        e, mnt = int(qa.exponent[i, 0]), int(qa.mantissa[i, 0])
        for j in range(n):
            acc = sum(int(qa.values[i, q]) * int(lin.weight.values[j, q]) for q in range(k))
            acc = (acc + 2**31) % 2**32 - 2**31
            ref = _py_round_shift(acc * mnt * int(lin.mult.mult[j]), int(lin.mult.shift[j]) - e)
            ref = max(-(2**31), min(2**31 - 1, ref))
            ref = max(-(2**31), min(2**31 - 1, ref + int(C.to_fixed(b[j : j + 1], 12)[0])))
            assert int(y[i, j]) == ref


# ------------------------------------------------------------------ weights and accuracy


def test_weight_quantization_grids():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 32, generator=g)
    for kind, qmax in (("int8", 127), ("int4", 7)):
        qw = C.quantize_weight(w, kind)
        assert qw.values.abs().amax(1).tolist() == [qmax] * 8  # absmax maps to qmax
        assert torch.allclose(qw.dequantize(), w, atol=float(qw.scale.max()) / 2 + 1e-6)
    with pytest.raises(C.ContractError):
        C.quantize_weight(w, "int3")


def test_ovp_weights_decode_to_grid():
    pytest.importorskip("olivine.golden.ovp")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    w[3, 10] = 12.0
    qw = C.quantize_weight(w, "ovp4")
    assert torch.equal(qw.integer.to(torch.int64) << qw.exponent.to(torch.int64), qw.values.to(torch.int64))
    mse_ovp = (qw.dequantize() - w).pow(2).mean()
    mse_int4 = (C.quantize_weight(w, "int4").dequantize() - w).pow(2).mean()
    assert mse_ovp < mse_int4


@pytest.mark.parametrize("weights,acts,tol", [("int8", "int8", 0.02), ("int8", "int8-pow2", 0.03), ("int4", "int8", 0.2), ("int8", "int8-static", 0.03)])
def test_qlinear_error_vs_float(weights, acts, tol):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 64, generator=g) / 8
    xf = torch.randn(16, 64, generator=g)
    lin = C.compile_linear(w, None, weights=weights, acts=acts, calib=xf)
    y = C.from_fixed(lin(C.to_fixed(xf, 16)), 16)
    ref = xf @ w.T
    rel = float((y - ref).norm() / ref.norm())
    assert rel < tol
    # the float counterpart (fake quantization) tracks the integer result closely
    fq = lin.forward_float(xf)
    assert float((y - fq).norm() / ref.norm()) < tol / 2 + 0.01


def test_qlinear_pads_odd_k_and_fp32_escape_hatch():
    g = torch.Generator().manual_seed(9)
    w = torch.randn(5, 7, generator=g)
    x = C.to_fixed(torch.randn(3, 7, generator=g), 16)
    lin = C.compile_linear(w, None, weights="int8", acts="int8")
    assert lin(x).shape == (3, 5)
    f32 = C.compile_linear(w, None, weights="fp32", acts="fp32")
    ref = C.to_fixed(C.from_fixed(x, 16).to(torch.float64) @ w.to(torch.float64).T, 16)
    assert torch.equal(f32(x), ref)
    with pytest.raises(C.ContractError):
        lin(C.to_fixed(torch.randn(3, 6), 16))
    with pytest.raises(C.ContractError):
        C.compile_linear(w, None, weights="int8", acts="int8-static")  # needs calib


def test_sparse_int8_dense_equals_sparse_reference():
    sp = pytest.importorskip("olivine.golden.sparsity")
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 64, generator=g)
    try:
        qw = C.quantize_weight(w, "int8", sparsity="8:16")
    except NotImplementedError:
        pytest.skip("golden.sparsity bodies not landed yet")
    kept = (qw.values != 0).reshape(32, 4, 16).sum(-1)
    assert (kept <= 8).all()
    a = torch.randint(-127, 128, (3, 64), generator=g)
    dense = C.int_matmul(a, qw.values)
    sparse = sp.sparse_matmul_reference(a, qw.sparse)
    assert torch.equal(C.wrap_int32(sparse), dense)


def test_sparse_ovp_weights_dense_equals_sparse_reference():
    sp = pytest.importorskip("olivine.golden.sparsity")
    pytest.importorskip("olivine.golden.ovp")
    g = torch.Generator().manual_seed(4)
    w = torch.randn(32, 64, generator=g)
    w[5, 7] = 9.0
    qw = C.quantize_weight(w, "ovp4", sparsity="4:16")
    assert qw.kind == "ovp4" and qw.block_n is not None
    kept = (qw.values != 0).reshape(32, 4, 16).sum(-1)
    assert (kept <= 4).all()
    assert torch.equal(qw.integer.to(torch.int64) << qw.exponent.to(torch.int64), qw.values.to(torch.int64))
    a = torch.randint(-127, 128, (3, 64), generator=g)
    sow = qw.sparse
    sw_int = sp.SparseWeight(sow.grid_values(), sow.sparse.indices, sow.sparse.block_n, sow.sparse.shape)
    assert torch.equal(C.wrap_int32(sp.sparse_matmul_reference(a, sw_int)), C.int_matmul(a, qw.values))


def test_sparse_ovp_linear_with_padding():
    """N and K not multiples of 16: zero-padded columns, cropped rows; output tracks the pruned float."""
    sp = pytest.importorskip("olivine.golden.sparsity")
    pytest.importorskip("olivine.golden.ovp")
    g = torch.Generator().manual_seed(6)
    w = torch.randn(20, 40, generator=g)
    xf = torch.randn(4, 40, generator=g)
    lin = C.compile_linear(w, None, weights="ovp4", acts="int8", sparsity="8:16")
    assert lin.weight.values.shape == (32, 48)
    y = C.from_fixed(lin(C.to_fixed(xf, 16)), 16)
    assert y.shape == (4, 20)
    wp = sp.prune_blocks(torch.nn.functional.pad(w, (0, 8, 0, 12)), lin.weight.block_n)[0][:20, :40]
    ref = xf @ wp.T
    assert float((y - ref).norm() / ref.norm()) < 0.15


# ---------------------------------------------------------------------------------------------
# Fast float paths equal the int64 reference (requantize, int_matmul tiers, dynamic INT8)
# ---------------------------------------------------------------------------------------------


def _edge_accumulators(g, shape):
    acc = torch.randint(-(2**31), 2**31, shape, generator=g, dtype=torch.int64)
    acc = acc >> torch.randint(0, 31, shape, generator=g)  # every magnitude class
    flat = acc.view(-1)
    flat[:6] = torch.tensor([C.INT32_MIN, C.INT32_MAX, 0, 1, -1, -(2**30)])
    return acc.to(torch.int32)


@pytest.mark.parametrize("seed", range(4))
def test_requantize_float_path_equals_int64_reference(seed):
    g = torch.Generator().manual_seed(seed)
    t, n = 9, 40
    acc = _edge_accumulators(g, (t, n))
    real = torch.rand(n, generator=g, dtype=torch.float64) * torch.pow(2.0, torch.randint(-44, 4, (n,), generator=g).double())
    e = torch.randint(0, 25, (t, 1), generator=g)
    mant = torch.randint(1, 257, (t, 1), generator=g).to(torch.int16)
    cases = [
        C.quantize_multiplier(real),
        # small shifts: exact ties (x * m / 2**s = k + 1/2) are frequent and must go up
        C.Multiplier(torch.full((n,), 1 << 30), torch.randint(28, 36, (n,), generator=g)),
        # shift - e outside [-1, 62]: apply_multiplier's clamp acts
        C.Multiplier(torch.full((n,), (1 << 31) - 1), torch.randint(-3, 75, (n,), generator=g)),
    ]
    for m in cases:
        for out in ("int32", "int8"):
            for ex, mt in ((0, None), (e, None), (e, mant)):
                fast = C.requantize(acc, m, ex, mantissa=mt, out=out)
                ref = C.requantize_reference(acc, m, ex, mantissa=mt, out=out)
                assert fast.dtype == ref.dtype and torch.equal(fast, ref), (out, ex is e, mt is not None)
    # factored exponent / mantissa (attention's query x key scales) equal their sum / product
    e2 = torch.randint(0, 25, (1, n), generator=g)
    m2 = torch.randint(1, 257, (1, n), generator=g).to(torch.int16)
    m = C.quantize_multiplier(torch.tensor(2.0**-40))
    fast = C.requantize(acc, m, (e, e2), mantissa=(mant, m2))
    ref = C.requantize_reference(acc, m, e + e2, mantissa=mant.long() * m2.long())
    assert torch.equal(fast, ref)


def test_int_matmul_tiers_equal_int64_reference():
    g = torch.Generator().manual_seed(5)
    for amax, wmax, k in ((127, 7, 300), (127, 127, 1536), (2**20, 2**20, 64)):  # float32, float64, int64
        a = torch.randint(-amax, amax + 1, (5, k), generator=g)
        w = torch.randint(-wmax, wmax + 1, (6, k), generator=g)
        a[0], w[0] = amax, wmax  # reach the bound (and wrap in the int64 tier)
        assert torch.equal(C.int_matmul(a, w), C.wrap_int32(a @ w.T))
        assert torch.equal(C.int_matmul(a, w, torch.full((6,), 2**31 - 1)), C.wrap_int32(a @ w.T + 2**31 - 1))
    # exact-integer float operands (attention's p.V)
    p = torch.randint(0, 2**16 + 1, (2, 3, 700), generator=g).double()
    v = torch.randint(-127, 128, (2, 4, 700), generator=g).double()
    ref = C.wrap_int32(p.long() @ v.long().transpose(-1, -2))
    assert torch.equal(C.int_matmul_exact_float(p, v), ref)
    big = torch.full((1, 2**15), 2**16, dtype=torch.float64)
    one = torch.full((1, 2**15), 127.0, dtype=torch.float64)
    assert int(C.int_matmul_exact_float(big, one)[0, 0]) == ((2**31 * 127 + 2**31) % 2**32) - 2**31


@pytest.mark.parametrize("seed", range(3))
def test_dynamic_int8_float_path_equals_int64_rule(seed):
    g = torch.Generator().manual_seed(seed)
    x = _edge_accumulators(g, (64, 48))
    x[5] = 0  # an all-zero row
    x[6] = torch.arange(48) * 2 - 47  # small values: exact ties of round_shift
    qa = C.quantize_act_dynamic_int8(x, 16)
    xi = x.to(torch.int64)
    amax = xi.abs().amax(-1, keepdim=True)
    e = (fixed.bit_length(amax) - 8).clamp(min=0)
    m = ((amax + (1 << e) - 1) >> e).clamp(min=1)
    r = (127 << C.RECIP_BITS) // m
    ref = C.round_shift(xi * r, C.RECIP_BITS + e).clamp(-127, 127)
    assert torch.equal(qa.values.long(), ref) and torch.equal(qa.exponent.long(), e) and torch.equal(qa.mantissa.long(), m)


# ------------------------------------------------------------------ per-group weight multipliers (2a)


def _py_grouped_acc(a_row, w_row, mults, group) -> int:
    """Python-integer form of docs/contract.md 2a: per-group partial sums x multiplier, summed, wrapped."""
    acc = 0
    for g, m in enumerate(mults):
        part = sum(int(a) * int(w) for a, w in zip(a_row[g * group:(g + 1) * group], w_row[g * group:(g + 1) * group]))
        acc += int(m) * part
    return (acc + 2**31) % 2**32 - 2**31


@pytest.mark.parametrize("kind,group", [("ovp4", 64), ("ovp4", 128), ("int4", 64), ("int4", 128)])
def test_grouped_qlinear_equals_python_integer_reference(kind, group):
    """A grouped layer (K = 200: a partial last group) against the per-group integer pipeline:
    dynamic INT8 codes, per-group partial sums x the 4-bit multiplier, the row multiplier."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(6, 200, generator=g) * torch.linspace(0.2, 3.0, 200)  # scale varies along K
    x = C.to_fixed(torch.randn(3, 200, generator=g) * 2, 16)
    lin = C.compile_linear(w, None, weights=kind, acts="int8", group=group)
    qw = lin.weight
    assert qw.group == group and qw.group_mult.shape == (6, -(-200 // group)) and qw.group_mult.dtype == torch.uint8
    assert 1 <= int(qw.group_mult.min()) and int(qw.group_mult.max()) <= 15
    assert len(set(qw.group_mult.reshape(-1).tolist())) > 1  # the groups did take different multipliers
    y = lin(x)
    qa = C.quantize_act_dynamic_int8(x, 16)
    for i in range(3):
        e, mnt = int(qa.exponent[i, 0]), int(qa.mantissa[i, 0])
        for j in range(6):
            acc = _py_grouped_acc(qa.values[i].tolist(), qw.values[j].tolist(), qw.group_mult[j].tolist(), group)
            ref = _py_round_shift(acc * mnt * int(lin.mult.mult[j]), int(lin.mult.shift[j]) - e)
            assert int(y[i, j]) == max(-(2**31), min(2**31 - 1, ref))
    # the scale of one unit of value x multiplier: real weight = values * m * scale
    real = qw.values.double() * C.expand_group_mult(qw.group_mult, group, 200).double() * qw.scale[:, None]
    assert torch.allclose(qw.dequantize().double(), real, rtol=1e-6)
    # finer scales lower the weight error against one scale per row
    row = C.quantize_weight(w, kind)
    assert float((qw.dequantize() - w).square().sum()) < float((row.dequantize() - w).square().sum())


def test_int_matmul_grouped_equals_flat_form_and_wraps():
    g = torch.Generator().manual_seed(12)
    values = torch.randint(-192, 193, (5, 256), generator=g).to(torch.int16)
    mults = torch.randint(1, 16, (5, 2), generator=g).to(torch.uint8)
    a = torch.randint(-127, 128, (4, 256), generator=g).to(torch.int8)
    ref = C.int_matmul_grouped(a, values, mults, 128)
    assert torch.equal(ref, C.int_matmul(a, C.grouped_values(values, mults, 128)))
    assert int(ref[1, 2]) == _py_grouped_acc(a[1].tolist(), values[2].tolist(), mults[2].tolist(), 128)
    # the INT32 register wraps: all-127 codes x 192 x 15 over K = 8192 exceeds 2**31
    big_a = torch.full((1, 8192), 127, dtype=torch.int8)
    big_w = torch.full((1, 8192), 192, dtype=torch.int16)
    big_m = torch.full((1, 64), 15, dtype=torch.uint8)
    exact = 127 * 192 * 15 * 8192
    assert exact > 2**31
    assert int(C.int_matmul_grouped(big_a, big_w, big_m, 128)[0, 0]) == (exact + 2**31) % 2**32 - 2**31


def test_group_scale_errors():
    w = torch.randn(4, 128)
    with pytest.raises(C.ContractError, match="group"):
        C.quantize_weight(w, "int8", group=128)
    with pytest.raises(C.ContractError, match="group"):
        C.quantize_weight(w, "ovp4", group=32)
    with pytest.raises(C.ContractError, match="group"):
        C.quantize_weight(torch.randn(16, 128), "ovp4", sparsity="8:16", group=128)
    values = torch.zeros(4, 128, dtype=torch.int16)
    with pytest.raises(C.ContractError, match="1..15"):
        C.grouped_values(values, torch.zeros(4, 1, dtype=torch.uint8), 128)
    with pytest.raises(C.ContractError, match="shape"):
        C.grouped_values(values, torch.ones(4, 2, dtype=torch.uint8), 128)
