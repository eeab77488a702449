"""Tests for olivine.golden.sparsity: N:M patterns, block N choice, compressed form, sparse MUX."""

import itertools
import math

import pytest
import torch

from olivine.golden import sparsity as sp
from olivine.golden.sparsity import SparsityError, SparsityTypeError

# ------------------------------------------------------------------------------------------------
# Independent behavioural models (written without the module's sort-based code)
# ------------------------------------------------------------------------------------------------


def model_group_keep(group: list, n: int) -> list[bool]:
    """Keep element i iff fewer than n elements beat it: larger |.|, or equal |.| at lower index."""
    mags = [abs(float(v)) for v in group]
    keep = []
    for i, mi in enumerate(mags):
        beaten_by = sum(1 for j, mj in enumerate(mags) if mj > mi or (mj == mi and j < i))
        keep.append(beaten_by < n)
    return keep


def model_prune_mask(w: torch.Tensor, n_of_row_group) -> torch.Tensor:
    """Block pruning by the rank model; n_of_row_group(r, g) gives the N of row r, group g."""
    out, k = w.shape
    m = 16
    mask = torch.zeros(w.shape, dtype=torch.bool)
    for r in range(out):
        for g in range(k // m):
            n = n_of_row_group(r, g)
            mask[r, g * m : (g + 1) * m] = torch.tensor(
                model_group_keep(w[r, g * m : (g + 1) * m].tolist(), n)
            )
    return mask


def model_compress_lists(w: torch.Tensor, mask: torch.Tensor):
    """Canonical order by explicit loops: row, group in K order, kept position ascending."""
    values, indices = [], []
    out, k = w.shape
    for r in range(out):
        for g in range(k // 16):
            for i in range(16):
                if mask[r, g * 16 + i]:
                    values.append(w[r, g * 16 + i].item())
                    indices.append(i)
    return values, indices


def loss(w: torch.Tensor, bn: torch.Tensor, energy: str) -> float:
    pruned, _ = sp.prune_blocks(w, bn)
    d = (w - pruned).double().abs()
    return float((d * d).sum() if energy == "l2" else d.sum())


def rand_w(out, k, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # Row/column scales make blocks differ so that the per-block choice matters.
    w = torch.randn(out, k, generator=g) * torch.rand(out, 1, generator=g) * torch.rand(1, k, generator=g)
    return (w * 3).to(dtype)


def rand_int_w(out, k, seed, lo=-127, hi=128, dtype=torch.int8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (out, k), generator=g).to(dtype)


# ------------------------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [("2:16", (2, 16)), ("4:16", (4, 16)), ("8:16", (8, 16)), ("16:16", (16, 16)), ("2:4", (2, 4)),
     (" 8 : 16 ", (8, 16)), ((4, 16), (4, 16))],
)
def test_parse_pattern_accepts(text, expected):
    assert sp.parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["3:16", "8:15", "1:4", "4:4", "32:16", "0:16", "abc", "8", "8:16:1",
                                  "", "-2:4", "2.0:4", (3, 16)])
def test_parse_pattern_rejects(text):
    with pytest.raises(SparsityError, match="8:16|N:M"):
        sp.parse_pattern(text)


@pytest.mark.parametrize("bad", [8, None, (8.0, 16), [8, 16], (True, 16)])
def test_parse_pattern_rejects_types(bad):
    with pytest.raises(SparsityTypeError):
        sp.parse_pattern(bad)


# ------------------------------------------------------------------------------------------------
# Pruning
# ------------------------------------------------------------------------------------------------


def test_prune_hand_example_with_tie():
    # |-6| at index 8 ties with 6 at index 6: the lower index (6) is kept.
    group = [1, -9, 3, 0, 7, -2, 6, 4, -6, 2, 0, 8, -1, 3, 5, -4]
    w = torch.tensor([group], dtype=torch.float32)
    pruned, mask = sp.prune(w, 4, 16)
    assert mask[0].nonzero().flatten().tolist() == [1, 4, 6, 11]
    expected = [0.0] * 16
    for i in (1, 4, 6, 11):
        expected[i] = float(group[i])
    assert pruned[0].tolist() == expected


def test_prune_2_4_hand_example():
    w = torch.tensor([[3.0, -1.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5, 5, 5, 5, -1, 2, 0.5, -2]])
    pruned, mask = sp.prune(w, 2, 4)
    assert mask.int().tolist() == [[1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1]]
    assert pruned.tolist() == [[3.0, 0, -3.0, 0, 0, 0, 0, 0, 5, 5, 0, 0, 0, 2, 0, -2]]


@pytest.mark.parametrize("n,m", [(2, 4), (2, 16), (4, 16), (8, 16), (16, 16)])
def test_prune_matches_rank_model_with_many_ties(n, m):
    # Small integer range -> many equal magnitudes, including +x/-x ties and zeros.
    w = rand_int_w(5, 64, seed=n * 100 + m, lo=-3, hi=4, dtype=torch.int16)
    pruned, mask = sp.prune(w, n, m)
    expected = torch.zeros_like(mask)
    for r in range(w.shape[0]):
        for g in range(w.shape[1] // m):
            expected[r, g * m : (g + 1) * m] = torch.tensor(
                model_group_keep(w[r, g * m : (g + 1) * m].tolist(), n)
            )
    assert torch.equal(mask, expected)
    assert torch.equal(pruned, torch.where(expected, w, torch.zeros_like(w)))
    assert pruned.dtype == w.dtype
    assert torch.equal(mask.reshape(5, -1, m).sum(-1), torch.full((5, 64 // m), n))


def test_prune_int8_minus_128_is_largest():
    w = torch.tensor([[-128, 127, 1, 2] + [0] * 12], dtype=torch.int8)
    _, mask = sp.prune(w, 2, 16)
    assert mask[0].nonzero().flatten().tolist() == [0, 1]


def test_prune_negative_zero_ties_with_zero():
    w = torch.tensor([[-0.0, 0.0, 0.0, -0.0]])
    _, mask = sp.prune(w, 2, 4)
    assert mask.tolist() == [[True, True, False, False]]


def test_prune_needs_k_multiple_of_m():
    with pytest.raises(SparsityError, match="pad_to_multiple"):
        sp.prune(torch.ones(4, 20), 8, 16)
    with pytest.raises(SparsityError, match="pad_to_multiple"):
        sp.prune(torch.ones(4, 6), 2, 4)


def test_pad_to_multiple():
    w = torch.arange(1.0, 1 + 17 * 33).reshape(17, 33)
    p = sp.pad_to_multiple(w, 16)
    assert p.shape == (32, 48) and p.dtype == w.dtype
    assert torch.equal(p[:17, :33], w)
    assert float(p[17:].abs().sum()) == 0 and float(p[:, 33:].abs().sum()) == 0
    same = torch.ones(16, 32)
    assert sp.pad_to_multiple(same) is same
    with pytest.raises(SparsityError):
        sp.pad_to_multiple(w, 0)
    # Padded, pruned, sliced back: still keeps the largest values of each real group.
    pruned, mask = sp.prune(p, 8, 16)
    assert torch.equal(pruned[:17, :32], sp.prune(w[:, :32], 8, 16)[0])


def test_prune_blocks_matches_model_per_block():
    w = rand_int_w(32, 48, seed=3, lo=-4, hi=5, dtype=torch.int32)
    bn = torch.tensor([[2, 16, 4], [8, 4, 2]])
    pruned, mask = sp.prune_blocks(w, bn)
    expected = model_prune_mask(w, lambda r, g: int(bn[r // 16, g]))
    assert torch.equal(mask, expected)
    assert torch.equal(pruned, torch.where(expected, w, torch.zeros_like(w)))


# ------------------------------------------------------------------------------------------------
# Choosing N per block
# ------------------------------------------------------------------------------------------------


def test_uniform_block_n():
    w = torch.randn(32, 64)
    bn = sp.uniform_block_n(w, 4)
    assert bn.dtype == torch.int64 and bn.shape == (2, 4) and bool((bn == 4).all())
    assert torch.equal(sp.uniform_block_n((32, 64), 4), bn)
    assert sp.block_density(bn) == 0.25
    with pytest.raises(SparsityError, match="one of"):
        sp.uniform_block_n(w, 6)
    with pytest.raises(SparsityError, match="pad_to_multiple"):
        sp.uniform_block_n((30, 64), 4)


@pytest.mark.parametrize("energy", ["l2", "l1"])
def test_choose_block_n_is_optimal_on_small_layers(energy):
    """Against brute force over every assignment of N to 4 blocks, for every reachable budget."""
    for seed in range(3):
        w = rand_w(32, 32, seed)
        configs = []
        for c in itertools.product(sp.ALLOWED_N, repeat=4):
            bn = torch.tensor(c).reshape(2, 2)
            configs.append((int(bn.sum()) * 16, loss(w, bn, energy)))
        for budget in sorted({k for k, _ in configs}):
            best = min(v for k, v in configs if k <= budget)
            bn = sp.choose_block_n(w, budget=budget, energy=energy)
            assert int(bn.sum()) * 16 <= budget
            assert loss(w, bn, energy) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_choose_block_n_density_target():
    w = rand_w(64, 128, seed=7)
    for density in (0.13, 0.25, 0.3, 0.5, 0.61, 0.9):
        bn = sp.choose_block_n(w, density)
        assert bn.shape == (4, 8) and bn.dtype == torch.int64
        assert set(bn.unique().tolist()) <= set(sp.ALLOWED_N)
        kept = int(bn.sum()) * 16
        assert kept <= math.floor(density * w.numel() + 1e-9)
    assert bool((sp.choose_block_n(w, 1.0) == 16).all())
    assert bool((sp.choose_block_n(w, 0.125) == 2).all())


def test_choose_block_n_big_block_wins():
    w = torch.full((16, 32), 0.01)
    w[:, 16:] = 1.0
    # density 0.5 -> at most 256 kept -> N0 + N1 <= 16: (8, 8) loses least.
    bn = sp.choose_block_n(w, 0.5)
    assert bn.tolist() == [[8, 8]]
    # 288 kept -> N0 + N1 <= 18: keep the big block dense, (2, 16).
    bn = sp.choose_block_n(w, budget=16 * 18)
    assert bn.tolist() == [[2, 16]]


def test_choose_block_n_allowed_subset_and_l1():
    w = rand_w(32, 64, seed=11)
    bn = sp.choose_block_n(w, 0.5, allowed=(4, 16))
    assert set(bn.unique().tolist()) <= {4, 16}
    assert int(bn.sum()) * 16 <= w.numel() // 2
    bn = sp.choose_block_n(w, 0.5, allowed=(8,))
    assert bool((bn == 8).all())
    with pytest.raises(SparsityError, match="smallest allowed"):
        sp.choose_block_n(w, 0.2, allowed=(4, 8, 16))


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), float("inf"), 0.05])
def test_choose_block_n_bad_density(density):
    with pytest.raises(SparsityError, match="density"):
        sp.choose_block_n(torch.randn(16, 16), density)


def test_choose_block_n_bad_arguments():
    w = torch.randn(16, 32)
    with pytest.raises(SparsityError, match="exactly one"):
        sp.choose_block_n(w)
    with pytest.raises(SparsityError, match="exactly one"):
        sp.choose_block_n(w, 0.5, budget=100)
    with pytest.raises(SparsityTypeError):
        sp.choose_block_n(w, "0.5")
    with pytest.raises(SparsityTypeError):
        sp.choose_block_n(w, True)
    with pytest.raises(SparsityTypeError):
        sp.choose_block_n(w, budget=100.0)
    with pytest.raises(SparsityError, match="positive"):
        sp.choose_block_n(w, budget=0)
    with pytest.raises(SparsityError, match="energy"):
        sp.choose_block_n(w, 0.5, energy="l3")
    with pytest.raises(SparsityError, match="allowed"):
        sp.choose_block_n(w, 0.5, allowed=(3, 16))
    with pytest.raises(SparsityError, match="allowed"):
        sp.choose_block_n(w, 0.5, allowed=())
    with pytest.raises(SparsityError, match="pad_to_multiple"):
        sp.choose_block_n(torch.randn(16, 40), 0.5)


# ------------------------------------------------------------------------------------------------
# Compressed form
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                   torch.int8, torch.int32])
def test_compress_round_trip_and_canonical_order(dtype):
    if dtype.is_floating_point:
        w = rand_w(32, 64, seed=5, dtype=dtype)
    else:
        w = rand_int_w(32, 64, seed=5, dtype=dtype)
    bn = torch.tensor([[2, 4, 8, 16], [16, 8, 2, 4]])
    sw = sp.compress(w, bn)
    pruned, mask = sp.prune_blocks(w, bn)
    dense = sp.decompress(sw)
    assert dense.dtype == dtype and torch.equal(dense, pruned)
    values, indices = model_compress_lists(w, mask)
    assert sw.values.dtype == dtype and sw.values.tolist() == values
    assert sw.indices.dtype == torch.uint8 and sw.indices.tolist() == indices
    assert sw.block_n.dtype == torch.uint8 and sw.block_n.tolist() == bn.tolist()
    assert sw.shape == (32, 64)
    assert sw.row_lengths().tolist() == [30] * 16 + [30] * 16
    assert sw.row_offsets().tolist() == list(range(0, 30 * 33, 30))
    assert sw.num_kept == 960 and sw.density == 960 / 2048
    # Compressing the pruned weight again gives the same thing (idempotent).
    sw2 = sp.compress(pruned, bn)
    assert torch.equal(sw2.values, sw.values) and torch.equal(sw2.indices, sw.indices)


def test_compress_mixed_bands_row_lengths_and_columns():
    w = rand_w(48, 32, seed=9)
    bn = torch.tensor([[2, 2], [16, 4], [8, 16]])
    sw = sp.compress(w, bn)
    assert sw.row_lengths().tolist() == [4] * 16 + [20] * 16 + [24] * 16
    cols = sw.columns()
    rows = sw.rows()
    _, mask = sp.prune_blocks(w, bn)
    nz = mask.nonzero()
    assert rows.tolist() == nz[:, 0].tolist() and cols.tolist() == nz[:, 1].tolist()


def test_block_accessor_matches_dense_blocks():
    w = rand_int_w(32, 48, seed=12, dtype=torch.int16)
    bn = torch.tensor([[2, 16, 4], [8, 4, 2]])
    sw = sp.compress(w, bn)
    pruned, mask = sp.prune_blocks(w, bn)
    for b in range(2):
        for c in range(3):
            vals, idx = sw.block(b, c)
            n = int(bn[b, c])
            assert vals.shape == (16, n) and idx.shape == (16, n) and idx.dtype == torch.uint8
            tile_mask = mask[16 * b : 16 * b + 16, 16 * c : 16 * c + 16]
            tile = w[16 * b : 16 * b + 16, 16 * c : 16 * c + 16]
            for i in range(16):
                kept = tile_mask[i].nonzero().flatten()
                assert idx[i].tolist() == kept.tolist()
                assert vals[i].tolist() == tile[i][kept].tolist()
    with pytest.raises(SparsityError, match="outside"):
        sw.block(2, 0)


def test_worked_example_from_docs():
    """The example of docs/sparsity.md: a 16x32 INT8 weight, block_n = [[4, 16]]."""
    group0 = [1, -9, 3, 0, 7, -2, 6, 4, -6, 2, 0, 8, -1, 3, 5, -4]
    group1 = list(range(-8, 8))
    w = rand_int_w(16, 32, seed=1)
    w[0] = torch.tensor(group0 + group1, dtype=torch.int8)
    sw = sp.compress(w, torch.tensor([[4, 16]]))
    assert sw.values[:20].tolist() == [-9, 7, 6, 8] + group1
    assert sw.indices[:20].tolist() == [1, 4, 6, 11] + list(range(16))
    packed = sw.packed_indices()
    assert packed[:2].tolist() == [0x41, 0xB6]
    assert packed.numel() == 32  # 16 rows x 4 indices / 2; the dense block stores none
    assert sw.nbytes(value_bits=8) == sp.SparseBytes(values=320, indices=32, block_n=2)
    assert sw.nbytes(value_bits=8).total == 354
    assert sw.nbytes(value_bits=4, block_n_bits=2) == sp.SparseBytes(160, 32, 1)


def test_compress_with_2_4_mask_as_8_16():
    w = rand_w(16, 64, seed=2)
    pruned24, mask24 = sp.prune(w, 2, 4)
    bn = sp.uniform_block_n(w, 8)
    sw = sp.compress(w, bn, mask=mask24)
    assert torch.equal(sp.decompress(sw), pruned24)
    quads = sw.indices.reshape(16, 4, 8) // 4  # two kept values in each quad of every group
    assert torch.equal(quads, torch.arange(4).repeat_interleave(2).expand(16, 4, 8))
    # The magnitude 8:16 choice differs from 2:4 in general (it may take 3 of one quad).
    assert not torch.equal(sp.compress(w, bn).indices, sw.indices)


def test_compress_mask_errors():
    w = torch.randn(16, 32)
    bn = sp.uniform_block_n(w, 8)
    _, mask = sp.prune(w, 4, 16)
    with pytest.raises(SparsityError, match="exactly its block's N"):
        sp.compress(w, bn, mask=mask)
    with pytest.raises(SparsityTypeError, match="bool"):
        sp.compress(w, bn, mask=mask.int())
    with pytest.raises(SparsityError, match="shape"):
        sp.compress(w, bn, mask=mask[:, :16])


def test_pack_unpack_indices_nibble_order():
    idx = torch.tensor([1, 4, 15, 0, 7], dtype=torch.uint8)
    packed = sp.pack_indices(idx)
    assert packed.dtype == torch.uint8 and packed.tolist() == [0x41, 0x0F, 0x07]
    assert sp.unpack_indices(packed, 5).tolist() == [1, 4, 15, 0, 7]
    assert sp.unpack_indices(packed, 6).tolist() == [1, 4, 15, 0, 7, 0]
    with pytest.raises(SparsityError, match="0..15"):
        sp.pack_indices(torch.tensor([16]))
    with pytest.raises(SparsityTypeError):
        sp.pack_indices(torch.tensor([1.0]))
    with pytest.raises(SparsityError):
        sp.unpack_indices(packed, 7)
    with pytest.raises(SparsityTypeError):
        sp.unpack_indices(packed.int(), 2)


def test_packed_indices_skip_dense_blocks_and_match_sparse_values():
    w = rand_w(32, 64, seed=4)
    bn = torch.tensor([[16, 2, 16, 8], [4, 16, 16, 16]])
    sw = sp.compress(w, bn)
    packed = sw.packed_indices()
    sparse_count = 16 * (2 + 8) + 16 * 4
    assert packed.numel() == sparse_count // 2
    expected = [i for i, n in zip(sw.indices.tolist(),
                                  torch.repeat_interleave(sw.group_counts().flatten(),
                                                          sw.group_counts().flatten()).tolist())
                if n < 16]
    assert sp.unpack_indices(packed, sparse_count).tolist() == expected
    assert sw.nbytes(value_bits=4) == sp.SparseBytes(
        values=(sw.num_kept * 4 + 7) // 8, indices=sparse_count // 2, block_n=8
    )
    assert sw.nbytes().values == sw.num_kept * 4  # float32 default width
    all_dense = sp.compress(w, sp.uniform_block_n(w, 16))
    assert all_dense.packed_indices().numel() == 0
    assert all_dense.nbytes(8) == sp.SparseBytes(2048, 0, 8)
    with pytest.raises(SparsityError, match="value_bits"):
        sw.nbytes(value_bits=0)


def test_decompress_rejects_malformed():
    w = rand_w(16, 32, seed=6)
    sw = sp.compress(w, torch.tensor([[4, 8]]))
    with pytest.raises(SparsityError, match="implies"):
        sp.decompress(sp.SparseWeight(sw.values[:-1], sw.indices[:-1], sw.block_n, sw.shape))
    bad_idx = sw.indices.clone()
    bad_idx[0], bad_idx[1] = bad_idx[1], bad_idx[0]
    with pytest.raises(SparsityError, match="ascending"):
        sp.decompress(sp.SparseWeight(sw.values, bad_idx, sw.block_n, sw.shape))
    with pytest.raises(SparsityTypeError, match="uint8"):
        sp.decompress(sp.SparseWeight(sw.values, sw.indices.long(), sw.block_n, sw.shape))
    with pytest.raises(SparsityError, match="block_n"):
        sp.decompress(sp.SparseWeight(sw.values, sw.indices, sw.block_n[:, :1], sw.shape))
    with pytest.raises(SparsityTypeError):
        sp.decompress(w)


# ------------------------------------------------------------------------------------------------
# Sparse MUX reference
# ------------------------------------------------------------------------------------------------


def test_sparse_matmul_reference_equals_dense_product():
    w = rand_int_w(48, 64, seed=8)
    bn = torch.tensor([[2, 4, 8, 16], [16, 16, 2, 2], [8, 4, 16, 2]])
    sw = sp.compress(w, bn)
    pruned = sp.decompress(sw).to(torch.int64)
    x = rand_int_w(5, 64, seed=9, lo=-128, hi=128)
    y = sp.sparse_matmul_reference(x, sw)
    assert y.dtype == torch.int64 and y.shape == (5, 48)
    assert torch.equal(y, x.to(torch.int64) @ pruned.T)
    y1 = sp.sparse_matmul_reference(x[2], sw)
    assert y1.shape == (48,) and torch.equal(y1, y[2])
    # Extreme int8 values: -128 * -128 summed over K stays exact.
    xe = torch.full((1, 64), -128, dtype=torch.int8)
    we = torch.full((48, 64), -128, dtype=torch.int8)
    swe = sp.compress(we, bn)
    assert torch.equal(sp.sparse_matmul_reference(xe, swe),
                       xe.long() @ sp.decompress(swe).long().T)


def test_sparse_matmul_reference_errors():
    w = rand_int_w(16, 32, seed=1)
    sw = sp.compress(w, torch.tensor([[4, 8]]))
    x = rand_int_w(2, 32, seed=2)
    with pytest.raises(SparsityTypeError, match="x_int"):
        sp.sparse_matmul_reference(x.float(), sw)
    with pytest.raises(SparsityTypeError, match="values"):
        sp.sparse_matmul_reference(x, sp.compress(w.float(), torch.tensor([[4, 8]])))
    with pytest.raises(SparsityError, match="x_int must be"):
        sp.sparse_matmul_reference(x[:, :16], sw)
    big = sp.compress(torch.full((16, 32), 2**40, dtype=torch.int64), torch.tensor([[4, 8]]))
    with pytest.raises(SparsityError, match="overflow"):
        sp.sparse_matmul_reference(torch.full((1, 32), 2**30, dtype=torch.int64), big)


# ------------------------------------------------------------------------------------------------
# Bad weights, shared by every entry point
# ------------------------------------------------------------------------------------------------

BN_16x32 = torch.tensor([[8, 8]])
ENTRY_POINTS = {
    "prune": lambda w: sp.prune(w, 8, 16),
    "prune_blocks": lambda w: sp.prune_blocks(w, BN_16x32),
    "choose_block_n": lambda w: sp.choose_block_n(w, 0.5),
    "compress": lambda w: sp.compress(w, BN_16x32),
    "pad_to_multiple": lambda w: sp.pad_to_multiple(w),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_weights(entry):
    call = ENTRY_POINTS[entry]
    nan = torch.randn(16, 32)
    nan[3, 5] = float("nan")
    with pytest.raises(SparsityError, match=r"NaN/Inf.*\[3, 5\]"):
        call(nan)
    inf = torch.randn(16, 32)
    inf[0, 1] = -float("inf")
    with pytest.raises(SparsityError, match="NaN/Inf"):
        call(inf)
    with pytest.raises(SparsityTypeError, match="bool"):
        call(torch.ones(16, 32, dtype=torch.bool))
    with pytest.raises(SparsityTypeError, match="complex"):
        call(torch.ones(16, 32, dtype=torch.complex64))
    with pytest.raises(SparsityTypeError, match="torch.Tensor"):
        call([[1.0] * 32] * 16)
    with pytest.raises(SparsityError, match="2-D"):
        call(torch.ones(512))
    with pytest.raises(SparsityError, match="2-D"):
        call(torch.ones(2, 16, 16))
    with pytest.raises(SparsityError, match="empty"):
        call(torch.ones(0, 32))


@pytest.mark.parametrize("entry", ["prune_blocks", "compress", "choose_block_n"])
def test_shapes_not_multiple_of_16(entry):
    call = {"prune_blocks": lambda w: sp.prune_blocks(w, torch.tensor([[8, 8]])),
            "compress": lambda w: sp.compress(w, torch.tensor([[8, 8]])),
            "choose_block_n": lambda w: sp.choose_block_n(w, 0.5)}[entry]
    for shape in [(15, 32), (16, 30), (17, 33)]:
        with pytest.raises(SparsityError, match="pad_to_multiple"):
            call(torch.randn(*shape))


def test_bad_block_n():
    w = torch.randn(16, 32)
    with pytest.raises(SparsityError, match="one of"):
        sp.compress(w, torch.tensor([[8, 6]]))
    with pytest.raises(SparsityError, match="shape"):
        sp.compress(w, torch.tensor([[8]]))
    with pytest.raises(SparsityTypeError, match="integer"):
        sp.compress(w, torch.tensor([[8.0, 8.0]]))
    with pytest.raises(SparsityTypeError):
        sp.compress(w, [[8, 8]])


# ------------------------------------------------------------------------------------------------
# Combination with OVP
# ------------------------------------------------------------------------------------------------

ovp = pytest.importorskip("olivine.golden.ovp")


def _row_alphas(q):
    if q.granularity == "tensor":
        return q.parts[0].alpha.reshape(1).expand(q.sparse.shape[0])
    return torch.cat([p.alpha.reshape(-1) for p in q.parts])


@pytest.mark.parametrize("kwargs", [{}, {"victim": "even"}, {"normal": "flint4"}, {"bits": 8}])
def test_sparse_ovp_uniform_n_equals_ovp_on_kept_matrix(kwargs):
    w = rand_w(32, 96, seed=21)
    w[5, 7] = 9.0  # an outlier
    bn = sp.uniform_block_n(w, 4)
    q = sp.quantize_sparse_ovp(w, bn, **kwargs)
    _, mask = sp.prune_blocks(w, bn)
    kept = w[mask].reshape(32, -1)  # row-major kept values: the canonical order
    ref = ovp.quantize(kept, **kwargs)
    assert q.normal == ref.normal and q.bits == ref.bits
    assert torch.equal(q.codes, ref.codes.reshape(-1))
    assert torch.equal(q.row_scales(), ref.scale.reshape(-1))
    assert torch.equal(q.grid_values(), ref.grid_values().reshape(-1))


@pytest.mark.parametrize("kwargs", [{}, {"normal": "int4", "victim": "even"}, {"bits": 8},
                                    {"granularity": "tensor"}])
def test_sparse_ovp_dense_equivalence_mixed_blocks(kwargs):
    """decompress(dequantized kept values) == per-row fake quant at the same alpha, at the kept
    positions, and zero elsewhere."""
    w = rand_w(48, 64, seed=22)
    w[20, 3] = -7.5
    w[40, 60] = 11.0
    bn = torch.tensor([[2, 4, 8, 16], [16, 2, 2, 8], [4, 4, 16, 2]])
    q = sp.quantize_sparse_ovp(w, bn, **kwargs)
    dense = q.to_dense()
    _, mask = sp.prune_blocks(w, bn)
    alphas = _row_alphas(q)
    scales = q.row_scales()
    expected = torch.zeros(48, 64)
    for r in range(48):
        kept = w[r][mask[r]].reshape(1, -1)
        one = ovp.quantize(kept, bits=q.bits, normal=q.normal, victim=kwargs.get("victim", "larger"),
                           granularity="row", alpha=float(alphas[r]))
        assert float(one.scale) == float(scales[r])
        expected[r][mask[r]] = one.dequantize().reshape(-1)
    assert torch.equal(dense, expected)
    assert bool((dense[~mask] == 0).all())
    # Kept values sit on the grid: grid value x row scale, bit for bit.
    sw_deq = q.dequantize()
    assert torch.equal(sw_deq.values, q.grid_values().float() * scales[sw_deq.rows()])
    assert torch.equal(ovp.unpack(q.codes, q.normal, bits=q.bits), q.grid_values())
    assert sw_deq.indices is q.sparse.indices and torch.equal(sw_deq.block_n, bn.to(torch.uint8))
    grid = sp.decompress_ovp_values(q)
    assert grid.dtype == torch.int32 and bool((grid[~mask] == 0).all())
    assert torch.equal(grid.float() * q.scale, dense)
    assert q.scale.shape == (48, 1)


def test_sparse_ovp_pairs_stay_inside_groups():
    w = torch.full((16, 32), 0.01)
    w[0, 3], w[0, 9] = 100.0, 1.0   # group 0 keeps (100, 1.0): one pair, 1.0 becomes the victim
    w[0, 16], w[0, 21] = 1.0, 1.2   # group 1 keeps (1.0, 1.2): its own pair, untouched
    bn = torch.tensor([[2, 2]])
    q = sp.quantize_sparse_ovp(w, bn, normal="int4", alpha=7.0)  # scale 1.0
    row0 = q.to_dense()[0]
    assert row0[3].item() == 96.0 and row0[9].item() == 0.0
    assert row0[16].item() == 1.0 and row0[21].item() == 1.0
    assert q.grid_values()[:4].tolist() == [96, 0, 1, 1]
    # int4 codes: pair 0 = outlier (low nibble, abfloat e=3 m=1 -> 0b0111) + identifier (high).
    assert q.codes[0].item() == 0x87
    assert q.codes[1].item() == 0x11


def test_sparse_ovp_auto_type_is_one_per_layer_and_the_better_one():
    # Band 0 lies on the int4 grid at alpha 7 (scale 1); band 1 on the flint4 grid at alpha 16
    # (scale 1) with large values. Alone, band 0 would pick int4; the layer picks flint4.
    g = torch.Generator().manual_seed(23)
    w = torch.zeros(32, 32)
    w[:16] = torch.randint(-7, 8, (16, 32), generator=g).float()
    flint = torch.tensor([0.0, 1, 2, 3, 4, 6, 8, 16, -1, -2, -3, -4, -6, -8, -16])
    w[16:] = flint[torch.randint(0, 15, (16, 32), generator=g)]
    alpha = torch.cat([torch.full((16,), 7.0), torch.full((16,), 16.0)])
    bn = torch.tensor([[16, 16], [8, 16]])
    q = sp.quantize_sparse_ovp(w, bn, alpha=alpha)
    assert ovp.quantize(q.sparse.band_values(0), alpha=7.0).normal == "int4"
    assert q.normal == "flint4" and {p.normal for p in q.parts} == {"flint4"}
    totals = {
        t: float(torch.cat([p.mse for p in sp.quantize_sparse_ovp(w, bn, normal=t, alpha=alpha).parts]).sum())
        for t in ("int4", "flint4")
    }
    assert totals["flint4"] < totals["int4"]
    assert float(q.parts[1].mse.sum()) == 0.0  # band 1 is exact on its grid
    # Searched alpha: still one type for the whole layer, and the one with the lower summed MSE.
    qs = sp.quantize_sparse_ovp(w, bn)
    assert {p.normal for p in qs.parts} == {qs.normal}


def test_sparse_ovp_alpha_and_sizes():
    w = rand_w(32, 64, seed=24)
    bn = torch.tensor([[2, 4, 8, 16], [4, 4, 4, 4]])
    per_row = torch.linspace(1.0, 4.0, 32)
    q = sp.quantize_sparse_ovp(w, bn, normal="int4", alpha=per_row)
    assert torch.equal(q.row_scales(), per_row / 7)
    q1 = sp.quantize_sparse_ovp(w, bn, normal="flint4", alpha=2.0)
    assert torch.equal(q1.row_scales(), torch.full((32,), 2.0 / 16))
    assert q.nbytes() == sp.SparseBytes(values=q.sparse.num_kept // 2,
                                        indices=(16 * 14 + 16 * 16) // 2, block_n=8)
    assert q.codes.numel() == q.sparse.num_kept // 2
    q8 = sp.quantize_sparse_ovp(w, bn, bits=8)
    assert q8.nbytes().values == q8.codes.numel() == q8.sparse.num_kept


def test_sparse_ovp_errors():
    w = rand_w(16, 32, seed=25)
    bn = torch.tensor([[4, 8]])
    with pytest.raises(SparsityTypeError, match="unexpected"):
        sp.quantize_sparse_ovp(w, bn, rows=3)
    with pytest.raises(SparsityTypeError, match="floating"):
        sp.quantize_sparse_ovp(rand_int_w(16, 32, seed=1), bn)
    with pytest.raises(SparsityError, match="granularity"):
        sp.quantize_sparse_ovp(w, bn, granularity="channel")
    with pytest.raises(SparsityError, match="one per output row"):
        sp.quantize_sparse_ovp(w, bn, alpha=torch.ones(5))
    with pytest.raises(ValueError):
        sp.quantize_sparse_ovp(w, bn, bits=3)
    with pytest.raises(SparsityError, match="NaN"):
        sp.quantize_sparse_ovp(torch.full((16, 32), float("nan")), bn)


def test_sparse_ovp_with_an_all_zero_row():
    w = torch.randn(32, 64)
    w[3] = 0
    sow = sp.quantize_sparse_ovp(w, sp.uniform_block_n(w, 8), normal="int4")
    dense = sow.to_dense()
    assert torch.equal(dense[3], torch.zeros(64))
    assert bool((dense[4] != 0).any())
