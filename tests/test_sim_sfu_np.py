"""sim/sfu_np.py equals golden/sfu.py bit for bit: random rows at every scale, the int32 extremes,
zero rows, masks (fully masked rows, single survivors), eps edge cases, and the error messages."""

import math

import numpy as np
import pytest
import torch

from olivine.golden import sfu
from olivine.golden.fixed import INT32_MAX, INT32_MIN, FixedPointValueError, quantize_multiplier
from olivine.sim import sfu_np

F = 16


def _rows(rng, rows, cols):
    """int32 rows at scales from a few LSB to the whole int32 range, plus extreme rows."""
    scale = 2.0 ** rng.uniform(0, 31, size=(rows, 1))
    x = np.clip(np.rint(rng.standard_normal((rows, cols)) * scale), INT32_MIN, INT32_MAX).astype(np.int32)
    x[0] = 0
    x[1] = INT32_MAX
    x[2] = INT32_MIN
    x[3, ::2], x[3, 1::2] = INT32_MIN, INT32_MAX
    x[4] = rng.integers(-3, 4, size=cols)
    x[5] = 7
    x[6, :] = 0
    x[6, cols // 2] = INT32_MIN  # one spike: the attention-sink pattern
    return x


def _eq(got: np.ndarray, want: torch.Tensor):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("cols", [1, 2, 64, 576, 1536])
@pytest.mark.parametrize("eps", [0.0, 1e-5, 1e-6, 2.0**-63, 3.0])
def test_rmsnorm_equals_golden(cols, eps):
    rng = np.random.default_rng(cols + int(eps * 1e6))
    x = _rows(rng, 24, cols)
    for gamma in (_rows(rng, 8, cols)[7], np.full(cols, INT32_MAX, np.int32), np.full(cols, INT32_MIN, np.int32),
                  np.full(cols, 1 << F, np.int32)):
        want = sfu.rmsnorm(torch.from_numpy(x), F, torch.from_numpy(gamma), F, eps, F)
        _eq(sfu_np.rmsnorm(x, F, gamma, F, eps, F), want)  # all rows at once (the vector path)
        for r in range(0, 24, 3):  # row by row and in small groups (the Python-scalar path)
            _eq(sfu_np.rmsnorm(x[r:r + 1], F, gamma, F, eps, F), want[r:r + 1])
            _eq(sfu_np.rmsnorm(x[r:r + 3], F, gamma, F, eps, F), want[r:r + 3])


def test_rmsnorm_eps_errors_are_goldens():
    x = np.ones((2, 8), np.int32)
    g = np.ones(8, np.int32)
    for eps in (1e30, 2.0**-70):
        with pytest.raises(FixedPointValueError) as want:
            sfu.rmsnorm(torch.from_numpy(x), F, torch.from_numpy(g), F, eps, F)
        for rows in (x, np.ones((12, 8), np.int32)):  # the row-by-row and the vector path
            with pytest.raises(FixedPointValueError) as got:
                sfu_np.rmsnorm(rows, F, g, F, eps, F)
            assert str(got.value) == str(want.value)


def test_rmsnorm_of_rows_with_different_alignments_uses_each_rows_eps_term():
    # rows whose maxima give different alignment shifts sh in one call (the eps term per sh)
    x = np.zeros((4, 16), np.int32)
    x[0, 0], x[1, 0], x[2, 0], x[3, 0] = 3, 1 << 23, 1 << 27, INT32_MIN
    g = np.full(16, 1 << F, np.int32)
    em, es = quantize_multiplier(1e-5)
    eps = math.ldexp(float(em), -es)  # what the simulator passes (the record's multiplier and shift)
    want = sfu.rmsnorm(torch.from_numpy(x), F, torch.from_numpy(g), F, eps, F)
    _eq(sfu_np.rmsnorm(x, F, g, F, eps, F), want)
    _eq(sfu_np.rmsnorm(np.repeat(x, 3, axis=0), F, g, F, eps, F), want.repeat_interleave(3, dim=0))


@pytest.mark.parametrize("cols", [1, 3, 64, 577, 2048])
def test_softmax_equals_golden_with_and_without_masks(cols):
    rng = np.random.default_rng(cols)
    s = _rows(rng, 16, cols)
    s[7] = rng.integers(-(40 << F), 40 << F, size=cols)  # differences around the clamp at 40
    s[8] = s[8] // (1 << 12)  # realistic score ranges
    _eq(sfu_np.softmax(s, F, None, F), sfu.softmax(torch.from_numpy(s), F, None, F))
    mask = rng.random((16, cols)) < 0.6
    mask[0] = False  # a fully masked row gives zeros
    mask[1] = False
    mask[1, -1] = True  # one survivor
    mask[2] = True
    _eq(sfu_np.softmax(s, F, mask, F), sfu.softmax(torch.from_numpy(s), F, torch.from_numpy(mask), F))
    causal = np.arange(cols)[None, :] <= (np.arange(16) % cols)[:, None]
    _eq(sfu_np.softmax(s, F, causal, F), sfu.softmax(torch.from_numpy(s), F, torch.from_numpy(causal), F))


def test_exp_table_interpolation_covers_every_index():
    t = np.arange(0, (40 << 20) + 4096, 4093, dtype=np.int64)
    np.testing.assert_array_equal(sfu_np._exp2_neg(t), sfu.exp2_neg(torch.from_numpy(t)).numpy())


def test_elementwise_ops_equal_golden():
    rng = np.random.default_rng(5)
    a, b = _rows(rng, 12, 1536), _rows(rng, 12, 1536)[::-1].copy()
    # every sigmoid table segment and the saturation at |x| = 16
    a[9] = np.linspace(-17 << F, 17 << F, 1536).astype(np.int32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    _eq(sfu_np.add(a, b), sfu.add(ta, tb))
    _eq(sfu_np.mul(a, b, F, F, F), sfu.mul(ta, tb, F, F, F))
    _eq(sfu_np.silu(a, F, F), sfu.silu(ta, F, F))
    _eq(sfu_np.swiglu(a, b, F, F, F), sfu.swiglu(ta, tb, F, F, F))
    _eq(sfu_np.swiglu(b, a, F, F, F), sfu.swiglu(tb, ta, F, F, F))


@pytest.mark.parametrize("head_dim", [2, 64, 128])
@pytest.mark.parametrize("scaling", [None, (8.0, 1.0, 4.0, 8192.0)])
def test_rope_half_equals_golden(head_dim, scaling):
    rng = np.random.default_rng(head_dim)
    x = _rows(rng, 20, head_dim)
    pos = np.concatenate([[0, 1, 2047, 2048, 65535], rng.integers(0, 9000, size=15)]).astype(np.int64)
    for theta in (10000.0, 1e5, 1.5):
        want = sfu.rope(torch.from_numpy(x), torch.from_numpy(pos), F, theta, head_dim, "half", scaling=scaling)
        _eq(sfu_np.rope_half(x, pos, F, theta, head_dim, scaling), want)
