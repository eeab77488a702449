"""golden/ovp.py: OVP quantization against a slow behavioural model written from ovp.md."""

import itertools

import pytest
import torch

from olivine.golden import ovp
from olivine.golden.ovp_format import FORMATS

# ---------------------------------------------------------------------------------------------
# Behavioural model: the rules of docs/ovp.md, element by element, no shortcuts
# ---------------------------------------------------------------------------------------------


def model_round(v: torch.Tensor, normal: str) -> torch.Tensor:
    """Nearest point scanning normals (ascending) then outliers (ascending), float32 distances,
    keeping the LAST point at equal distance (the released quantizer's scan)."""
    fmt = FORMATS[normal]
    v = v.to(torch.float32)
    best_d = torch.full_like(v, float("inf"))
    best = torch.zeros_like(v)
    for g in list(fmt.normal_grid) + list(fmt.outlier_grid):
        d = (v - torch.tensor(float(g))).abs()
        take = d <= best_d
        best_d = torch.where(take, d, best_d)
        best = torch.where(take, torch.tensor(float(g)), best)
    return best


def model_victims(q: torch.Tensor, normal: str, victim: str) -> torch.Tensor:
    nmax = FORMATS[normal].normal_max
    q = q.clone()
    flat = q.view(-1, q.shape[-1])
    for row in flat:
        for k in range(0, row.numel(), 2):
            a, b = float(row[k]), float(row[k + 1])
            oa, ob = abs(a) > nmax, abs(b) > nmax
            if oa and ob:
                keep_even = victim == "even" or abs(a) >= abs(b)
                row[k + 1 if keep_even else k] = 0.0
            elif oa:
                row[k + 1] = 0.0
            elif ob:
                row[k] = 0.0
    return q


def model_quantize_at(x2: torch.Tensor, alpha: torch.Tensor, normal: str, victim: str):
    """(grid values, dequantized) of x2 [rows, N] at alpha ([rows, 1] or 0-d)."""
    scale = alpha / FORMATS[normal].normal_max
    q = model_victims(model_round(x2 / scale, normal), normal, victim)
    return q, q * scale


def model_search_rows(x2: torch.Tensor, normal: str, victim: str):
    mean, std = x2.mean(-1), x2.std(-1)
    x_max = torch.maximum((mean + 3 * std).abs(), (mean - 3 * std).abs()).unsqueeze(1)
    best = torch.full_like(x_max, 1e10)
    alpha = x_max.clone()
    for i in range(75, 250, 2):
        a = x_max * (i * 0.01)
        _, deq = model_quantize_at(x2, a, normal, victim)
        score = (deq - x2).pow(2).mean(-1, keepdim=True)
        better = score < best
        alpha[better], best[better] = a[better], score[better]
    return alpha, best


def heavy(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.1
    spikes = torch.rand(shape, generator=g) < 0.03
    return torch.where(spikes, torch.randn(shape, generator=g) * 2.0, x)


# ---------------------------------------------------------------------------------------------
# Worked examples (ovp.md), ties, saturation
# ---------------------------------------------------------------------------------------------


def test_worked_example_a_int4():
    x = torch.tensor([0.3, -2.6, 13, 1.7, -0.4, -30, 13, 50, 2.5, -2.5, 9.5, 0.6, 120, 3.1])
    t = ovp.quantize(x, normal="int4", granularity="tensor", victim="even", alpha=7.0)
    expect = [0, -3, 12, 0, 0, -32, 12, 0, 3, -2, 12, 0, 96, 0]
    assert t.grid_values().tolist() == expect
    assert t.dequantize().tolist() == [float(v) for v in expect]
    assert float(t.scale) == 1.0 and t.normal == "int4"
    stats = ovp.pair_stats(t)
    assert stats["pairs"] == 7 and stats["outlier_victim"] == 5 / 7 and stats["outlier_outlier"] == 1 / 7
    assert stats["normal_normal"] == 2 / 7
    # "larger" keeps 50 -> 48 instead of 13 -> 12 in the (13, 50) pair, and nothing else changes
    t2 = ovp.quantize(x, normal="int4", granularity="tensor", victim="larger", alpha=7.0)
    expect[6:8] = [0, 48]
    assert t2.grid_values().tolist() == expect


def test_worked_example_b_flint4():
    y = torch.tensor([0.7, -5, 11, 0.2, 2.6, -9.9, 30, -0.9])
    t = ovp.quantize(y, normal="flint4", granularity="tensor", victim="even", alpha=8.0)
    assert float(t.scale) == 0.5
    assert t.dequantize().tolist() == [0.5, -4, 12, 0, 3, -8, 32, 0]
    assert t.grid_values().tolist() == [1, -8, 24, 0, 6, -16, 64, 0]


@pytest.mark.parametrize(
    "normal,value,expect",
    [
        ("int4", 2.5, 3), ("int4", -2.5, -2), ("int4", 0.5, 1), ("int4", -0.5, 0), ("int4", 6.5, 7),
        ("int4", 9.5, 12), ("int4", -9.5, -12), ("int4", 9.49, 7), ("int4", -9.49, -7), ("int4", 8.0, 7),
        ("int4", 14, 16), ("int4", -14, -12), ("int4", 80, 96), ("int4", -80, -64), ("int4", 1e6, 96),
        ("int4", -1e6, -96), ("int4", 0.49999997, 0), ("int4", -0.50000006, -1),
        ("flint4", 4.5, 4), ("flint4", 5, 6), ("flint4", -5, -4), ("flint4", 7, 8), ("flint4", -7, -6),
        ("flint4", 12, 16), ("flint4", -12, -8), ("flint4", 19.99, 16), ("flint4", 20, 24),
        ("flint4", -20, -24), ("flint4", -19.99, -16), ("flint4", 160, 192), ("flint4", -160, -128),
        ("flint4", 5000, 192),
        ("int8", 126.5, 127), ("int8", -126.5, -126), ("int8", 131.5, 136), ("int8", -131.5, -136),
        ("int8", 252, 256), ("int8", -252, -248), ("int8", 1e9, 31744),
    ],
)
def test_tie_rules_and_saturation(normal, value, expect):
    bits = 8 if normal == "int8" else 4
    nmax = FORMATS[normal].normal_max
    # the element sits in the even slot next to a zero, so victims never touch it
    x = torch.tensor([value, 0.0], dtype=torch.float32)
    t = ovp.quantize(x, bits=bits, normal=normal, granularity="tensor", alpha=float(nmax))
    assert t.grid_values().tolist() == [expect, 0]
    assert model_round(x, normal).tolist() == [float(expect), 0.0]


@pytest.mark.parametrize("normal", ["int4", "flint4", "int8"])
def test_rounding_matches_model_on_ties_and_random(normal):
    fmt = FORMATS[normal]
    grid = torch.tensor(fmt.union_grid, dtype=torch.float32)
    mids = (grid[:-1] + grid[1:]) / 2
    near = torch.cat([mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1), grid])
    rnd = torch.randn(4000) * fmt.outlier_max / 3
    v = torch.cat([near, rnd, torch.tensor([0.0])])
    v = v[: v.numel() // 2 * 2]
    # put every value in the even slot of its own pair (odd slot 0) to test rounding alone
    x = torch.stack([v, torch.zeros_like(v)], dim=-1).reshape(-1)
    bits = 8 if normal == "int8" else 4
    t = ovp.quantize(x, bits=bits, normal=normal, granularity="tensor", alpha=float(fmt.normal_max))
    assert torch.equal(t.grid_values()[0::2].float(), model_round(v, normal))


# ---------------------------------------------------------------------------------------------
# Invariants: codes, decode, dequantize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normal,bits", [("int4", 4), ("flint4", 4), ("auto", 4), ("int8", 8)])
def test_codes_decode_and_dequantize_invariants(normal, bits):
    x = heavy((24, 64), seed=3)
    t = ovp.quantize(x, bits=bits, normal=normal)
    values = t.grid_values()
    assert values.dtype == torch.int32 and values.shape == x.shape
    exp, integer = t.decode()
    assert exp.dtype == torch.int8 and integer.dtype == torch.int8
    assert torch.equal(integer.to(torch.int32) * (1 << exp.to(torch.int32)), values)
    lim = 7 if bits == 4 else 127
    assert int(integer.abs().max()) <= lim
    assert torch.equal(t.dequantize(), values.float() * t.scale)
    assert t.scale.shape == (24, 1) and t.scale.dtype == torch.float32
    assert torch.equal(t.alpha / FORMATS[t.normal].normal_max, t.scale)
    if bits == 4:
        assert t.codes.shape == (24, 32) and t.codes.dtype == torch.uint8
    else:
        assert t.codes.shape == (24, 64)
    assert torch.equal(ovp.encode(values, t.normal), t.codes)
    assert torch.equal(ovp.unpack(t.codes, t.normal), values)
    # victims: every pair holds at most one outlier and its partner is 0
    nmax = FORMATS[t.normal].normal_max
    pairs = values.view(24, 32, 2)
    out = pairs.abs() > nmax
    assert not bool((out[..., 0] & out[..., 1]).any())
    assert not bool((out[..., 0] & (pairs[..., 1] != 0)).any())
    assert bool(out.any())  # the heavy-tailed tensor does produce outliers
    assert torch.equal(ovp.fake_quant(x, bits=bits, normal=normal), t.dequantize())
    mse = (t.dequantize() - x).pow(2).mean(-1, keepdim=True)
    assert torch.equal(mse, t.mse)


@pytest.mark.parametrize("normal", ["int4", "flint4"])
def test_pack_unpack_every_encodable_pair(normal):
    fmt = FORMATS[normal]
    pairs = list(itertools.product(fmt.normal_grid, fmt.normal_grid))
    pairs += [(o, 0) for o in fmt.outlier_grid] + [(0, o) for o in fmt.outlier_grid]
    values = torch.tensor(pairs, dtype=torch.int32).reshape(1, -1)
    codes = ovp.pack(values, normal)
    assert codes.shape == (1, len(pairs))
    assert len(set(codes.view(-1).tolist())) == len(pairs) == 253
    assert torch.equal(ovp.unpack(codes, normal), values)
    exp, integer = ovp.decode(codes, normal, bits=4)
    assert torch.equal(integer.int() * (1 << exp.int()), values)
    # every byte: unpack then pack gives the byte back, except the never-produced ones
    all_bytes = torch.arange(256, dtype=torch.uint8).reshape(1, -1)
    back = ovp.pack(ovp.unpack(all_bytes, normal), normal)
    differ = (back != all_bytes).nonzero()[:, 1].tolist()
    assert differ == [0x08, 0x80, 0x88]


def test_int8_word_layout():
    x = torch.tensor([[1.0, -2.0, 136.0, 3.0, 0.0, -31744.0]])
    t = ovp.quantize(x, bits=8, normal="int8", granularity="tensor", alpha=127.0)
    assert t.grid_values().tolist() == [[1, -2, 136, 0, 0, -31744]]
    assert t.codes.tolist() == [[0x01, 0xFE, 0x01, 0x80, 0x80, 0xFF]]
    assert ovp.decode(t.codes, "int8")[0].tolist() == [[0, 0, 3, 0, 0, 10]]


# ---------------------------------------------------------------------------------------------
# Victim rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normal", ["int4", "flint4"])
def test_victim_rules_differ_only_on_outlier_pairs(normal):
    x = heavy((16, 128), seed=5) * 3
    alpha = torch.full((16, 1), 0.5)
    a = ovp.quantize(x, normal=normal, victim="larger", alpha=alpha)
    b = ovp.quantize(x, normal=normal, victim="even", alpha=alpha)
    va, vb = a.grid_values().view(16, 64, 2), b.grid_values().view(16, 64, 2)
    # pre-victim rounding shows which pairs hold two outliers
    pre = model_round(x / (alpha / FORMATS[normal].normal_max), normal).view(16, 64, 2)
    nmax = FORMATS[normal].normal_max
    both = (pre.abs() > nmax).all(-1)
    assert a.outlier_outlier_pairs == b.outlier_outlier_pairs == int(both.sum()) > 0
    assert torch.equal(va[~both], vb[~both])
    # even rule keeps the even one; larger keeps the larger magnitude (even on equal)
    assert torch.equal(vb[both][:, 0].float(), pre[both][:, 0]) and bool((vb[both][:, 1] == 0).all())
    keep_even = pre[both][:, 0].abs() >= pre[both][:, 1].abs()
    expect = torch.where(keep_even.unsqueeze(-1), pre[both] * torch.tensor([1.0, 0.0]), pre[both] * torch.tensor([0.0, 1.0]))
    assert torch.equal(va[both].float(), expect)
    assert torch.equal(va.float(), model_victims(pre, normal, "larger").view(16, 64, 2))


# ---------------------------------------------------------------------------------------------
# Search and type choice against the model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normal", ["int4", "flint4"])
@pytest.mark.parametrize("victim", ["even", "larger"])
def test_search_matches_slow_model(normal, victim):
    x = torch.cat([heavy((6, 32), seed=7), torch.randint(-3, 4, (2, 32)).float()])  # integer rows tie
    t = ovp.quantize(x, normal=normal, victim=victim)
    alpha, best = model_search_rows(x, normal, victim)
    assert torch.equal(t.alpha, alpha)
    q, deq = model_quantize_at(x, alpha, normal, victim)
    assert torch.equal(t.grid_values().float(), q)
    assert torch.equal(t.dequantize(), deq)
    assert torch.equal(t.mse, best)
    a2, b2 = ovp.search_alpha(x, normal, victim=victim)
    assert torch.equal(a2, alpha) and torch.equal(b2, best)


def test_search_argmin_over_candidates():
    x = heavy((5, 48), seed=11)
    alpha, _ = ovp.search_alpha(x, "int4")
    mean, std = x.mean(-1), x.std(-1)
    x_max = torch.maximum((mean + 3 * std).abs(), (mean - 3 * std).abs()).unsqueeze(1)
    scores = []
    for i in range(75, 250, 2):
        _, deq = model_quantize_at(x, x_max * (i * 0.01), "int4", "larger")
        scores.append((deq - x).pow(2).mean(-1))
    scores = torch.stack(scores)
    first_min = torch.argmin(scores, dim=0)  # first index of the minimum
    expect = torch.tensor([x_max[r, 0] * ((75 + 2 * int(first_min[r])) * 0.01) for r in range(5)]).unsqueeze(1)
    assert torch.equal(alpha, expect)


def test_tensor_granularity_matches_model():
    x = heavy((3, 5, 16), seed=13)
    t = ovp.quantize(x, normal="flint4", granularity="tensor", victim="even")
    mean, std = x.mean(), x.std()
    x_max = torch.maximum((mean + 3 * std).abs(), (mean - 3 * std).abs())
    best, alpha = 1e10, x_max
    for i in range(75, 250, 2):
        a = x_max * (i * 0.01)
        _, deq = model_quantize_at(x.reshape(-1, 16), a, "flint4", "even")
        score = (deq.reshape(x.shape) - x).pow(2).mean()
        if score < best:
            best, alpha = score, a
    assert t.scale.shape == () and torch.equal(t.alpha, alpha)
    assert torch.equal(t.dequantize(), model_quantize_at(x.reshape(-1, 16), alpha, "flint4", "even")[1].reshape(x.shape))


def test_auto_picks_lower_summed_mse():
    picked = set()
    g = torch.Generator().manual_seed(0)
    ramp = (torch.rand(8, 64, generator=g) * 2 - 1) * torch.linspace(1, 3, 64)  # int4 wins here
    for x in [heavy((8, 64), seed=17), torch.randn(8, 64, generator=g), ramp]:
        ti, tf = ovp.quantize(x, normal="int4"), ovp.quantize(x, normal="flint4")
        ta = ovp.quantize(x, normal="auto")
        si, sf = ti.mse.sum().item(), tf.mse.sum().item()
        assert ta.normal == ("int4" if si <= sf else "flint4")
        ref = ti if ta.normal == "int4" else tf
        assert torch.equal(ta.codes, ref.codes) and torch.equal(ta.scale, ref.scale)
        picked.add(ta.normal)
    assert picked == {"int4", "flint4"}  # both outcomes exercised


def test_given_alpha_reproduces_search():
    x = heavy((8, 32), seed=19)
    t = ovp.quantize(x, normal="int4")
    t2 = ovp.quantize(x, normal="int4", alpha=t.alpha)
    assert torch.equal(t.codes, t2.codes)
    scalar = ovp.quantize(x, normal="int4", alpha=0.3)
    assert torch.equal(scalar.scale, torch.full((8, 1), 0.3) / 7)


def test_row_granularity_on_3d_and_zero_rows():
    x = heavy((4, 3, 8), seed=23)
    x[1] = 0.0
    t = ovp.quantize(x)
    assert t.scale.shape == (4, 1) and t.shape == x.shape
    assert float(t.scale[1]) == 0.0 and bool((t.dequantize()[1] == 0).all())
    assert bool(torch.isfinite(t.dequantize()).all())
    q, deq = model_quantize_at(x.reshape(4, -1)[[0, 2, 3]], t.alpha[[0, 2, 3]], t.normal, "larger")
    assert torch.equal(t.dequantize().reshape(4, -1)[[0, 2, 3]], deq)


def test_half_precision_input_is_upcast():
    x = heavy((4, 16), seed=29)
    assert torch.equal(ovp.quantize(x.half()).codes, ovp.quantize(x.half().float()).codes)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_errors():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="pad_to_even"):
        ovp.quantize(torch.randn(4, 7))
    assert ovp.pad_to_even(torch.ones(2, 7)).shape == (2, 8) and float(ovp.pad_to_even(torch.ones(2, 7))[0, 7]) == 0
    with pytest.raises(ValueError, match="NaN or Inf"):
        ovp.quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        ovp.quantize(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="empty"):
        ovp.quantize(torch.zeros(0, 4))
    with pytest.raises(TypeError, match="floating-point"):
        ovp.quantize(torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ovp.quantize([[1.0, 2.0]])
    with pytest.raises(ValueError, match="normal type 'int5'"):
        ovp.quantize(x, normal="int5")
    with pytest.raises(ValueError, match="not valid with bits=4"):
        ovp.quantize(x, normal="int8")
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        ovp.quantize(x, bits=6)
    with pytest.raises(ValueError, match="granularity"):
        ovp.quantize(x, granularity="channel")
    with pytest.raises(ValueError, match="victim rule"):
        ovp.quantize(x, victim="odd")
    with pytest.raises(ValueError, match="needs a 2-D"):
        ovp.quantize(torch.randn(8))
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        ovp.quantize(x, alpha=-1.0)
    with pytest.raises(ValueError, match="one per row"):
        ovp.quantize(x, alpha=torch.ones(3))
    with pytest.raises(ValueError, match="two outliers"):
        ovp.encode(torch.tensor([12, 16]), "int4")
    with pytest.raises(ValueError, match="not a value of the flint4"):
        ovp.encode(torch.tensor([5, 0]), "flint4")
    with pytest.raises(TypeError, match="uint8"):
        ovp.decode(torch.zeros(2, dtype=torch.int32), "int4")
    with pytest.raises(ValueError, match="is 4-bit, but bits=8"):
        ovp.decode(torch.zeros(2, dtype=torch.uint8), "int4", bits=8)
    with pytest.raises(ValueError, match="odd"):
        ovp.decode(torch.zeros(3, dtype=torch.uint8), "int8")


@pytest.mark.parametrize("normal", ["int4", "flint4", "int8"])
def test_pruned_search_equals_exhaustive(normal):
    """The float64 pre-filter never drops the float32 argmin (ties, integer rows, zero rows)."""
    g = torch.Generator().manual_seed(31)
    x = torch.cat(
        [
            heavy((4, 128), seed=37),
            torch.empty(4, 128).cauchy_(generator=g) * 0.1,
            torch.randint(-3, 4, (4, 128), generator=g).float(),
            torch.randint(-20, 21, (4, 128), generator=g).float() / 2,
            torch.zeros(2, 128),
            torch.full((2, 128), 0.25),
        ]
    )
    from olivine.golden.ovp import _consts, _search_rows

    c = _consts(normal)
    for victim in ("even", "larger"):
        fast = _search_rows(x, c, victim)[:2]
        slow = _search_rows(x, c, victim, exhaustive=True)[:2]
        assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_explicit_zero_alpha_only_for_all_zero_rows():
    x = torch.randn(3, 8)
    x[1] = 0
    searched = ovp.quantize(x, normal="int4")
    assert float(searched.alpha.reshape(-1)[1]) == 0.0  # what the search gives an all-zero row
    again = ovp.quantize(x, normal="int4", alpha=searched.alpha)  # and it is accepted back
    assert torch.equal(again.codes, searched.codes)
    assert torch.equal(again.dequantize()[1], torch.zeros(8))
    with pytest.raises(ValueError, match=r"row 0\); alpha = 0 is only valid for an all-zero row"):
        ovp.quantize(x, normal="int4", alpha=torch.tensor([0.0, 0.0, 1.0]))


def _fast_path_cases():
    g = torch.Generator().manual_seed(101)
    weightlike = torch.randn(24, 96, generator=g) * 0.02
    spikes = torch.rand(24, 96, generator=g) < 0.01
    return {
        "normal": torch.randn(16, 64, generator=g),
        "weight_spikes": torch.where(spikes, weightlike * 40, weightlike),
        "outlier_heavy": heavy((16, 128), seed=103),
        "cauchy": torch.empty(12, 80).cauchy_(generator=g),
        "paired_outliers": torch.where(torch.rand(10, 64, generator=g) < 0.2,
                                       torch.randn(10, 64, generator=g) * 30, torch.randn(10, 64, generator=g)),
        "integer_ties": torch.randint(-6, 7, (8, 32), generator=g).float() / 2,
        "zero_and_constant": torch.cat([torch.zeros(2, 32), torch.full((2, 32), -0.75), torch.randn(2, 32, generator=g)]),
        "one_row": torch.randn(1, 40, generator=g),
    }


@pytest.mark.parametrize("case", list(_fast_path_cases()))
@pytest.mark.parametrize("victim", ["larger", "even"])
def test_fast_quantize_equals_reference_path(case, victim):
    """quantize (binned model + pruning + model-settled type choice) == the exhaustive float32
    search of the released code, field by field, for every normal type and the 8-bit format."""
    x = _fast_path_cases()[case]
    for bits, normal in ((4, "int4"), (4, "flint4"), (4, "auto"), (8, "int8")):
        fast = ovp.quantize(x, bits=bits, normal=normal, victim=victim)
        ref = ovp.quantize_reference(x, bits=bits, normal=normal, victim=victim)
        assert fast.normal == ref.normal, (bits, normal)
        for name in ("codes", "scale", "alpha", "mse"):
            assert torch.equal(getattr(fast, name), getattr(ref, name)), (bits, normal, name)
        assert fast.outlier_outlier_pairs == ref.outlier_outlier_pairs
        a_fast, s_fast = ovp.search_alpha(x, ref.normal, victim=victim)
        assert torch.equal(a_fast, ref.alpha) and torch.equal(s_fast, ref.mse)


def test_model_doubt_allowance_on_boundary_elements():
    """An outlier-pair element sitting on a candidate's outlier threshold (where float32 may round
    either way) gets the both-squares allowance at that candidate, and only where it can matter."""
    from olivine.golden.ovp import _boundaries, _candidates, _consts, _model_victim_corrections, _RowStats

    x = heavy((3, 64), seed=41)
    st = _RowStats(x)
    c = _consts("int4")
    bt = _boundaries(c)
    c0 = 40
    u_edge = bt.thr[c0].to(torch.float32)  # threshold of candidate c0 in x_max units
    row = 1
    st.u[row, 10], st.u[row, 11] = u_edge, 0.0
    st.ax[row, 10], st.ax[row, 11] = u_edge * st.x_max[row, 0], 0.0
    st.pmax_u[row, 5] = u_edge
    scale = _candidates(st.x_max).double().squeeze(-1) / c.nmax
    _, unsure = _model_victim_corrections(st, scale, c, "larger")
    assert unsure[c0, row] > 0
    assert unsure[c0 + 5:, row].eq(0).all()  # beyond its threshold the pair holds no outlier
    _, clean = _model_victim_corrections(_RowStats(x), scale, c, "larger")
    assert clean[:, row].eq(0).all()
