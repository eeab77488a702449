"""N:M structured weight sparsity exactly as FlightLLM's sparse DSP chain reads it.

Conventions (docs/sparsity.md has the full description and a worked example):

- Weights are torch tensors in nn.Linear layout ``[out_features, in_features]``; the reduction
  dimension K = in_features is the last dim.
- A *group* is M = 16 consecutive elements of one row along K (group g covers K positions
  16g .. 16g+15); a group keeps N of its 16 values.
- A *block* is a 16 (rows) x 16 (K) tile; all 16 groups of one block keep the same
  N in {2, 4, 8, 16} (16 = dense). ``block_n`` is a ``[out/16, K/16]`` tensor of those N:
  block (b, c) covers rows 16b .. 16b+15 and group c.
- Plain 2:4 is a separate pattern (``prune(w, 2, 4)``). Its mask keeps exactly 8 of every 16,
  so it is stored as 8:16 blocks with ``compress(w, uniform_block_n(w, 8), mask=mask_2_4)``.
- Tie rule: among equal magnitudes the LOWER in-group index is kept (a stable sort by
  descending magnitude). +0.0 and -0.0 have equal magnitude.
- Canonical kept-value order: rows ascending; within a row, groups in K order; within a group,
  kept in-group positions ascending. This is row-major order of the dense positions that are kept.
- Every N is even and every row keeps a sum of N per block, so kept sequences pair up cleanly:
  value 2k and 2k+1 of a row (OVP pairs, packed index nibbles) never straddle a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

__all__ = [
    "GROUP_SIZE",
    "BLOCK_ROWS",
    "ALLOWED_N",
    "PATTERNS",
    "SparsityError",
    "SparsityTypeError",
    "parse_pattern",
    "pad_to_multiple",
    "prune",
    "prune_blocks",
    "uniform_block_n",
    "choose_block_n",
    "block_density",
    "pack_indices",
    "unpack_indices",
    "SparseBytes",
    "SparseWeight",
    "compress",
    "decompress",
    "sparse_matmul_reference",
    "SparseOvpWeight",
    "quantize_sparse_ovp",
    "decompress_ovp_values",
]

#: M: the group size along K that the sparse MUX selects from.
GROUP_SIZE = 16
#: Rows per block (output rows sharing one N per block column).
BLOCK_ROWS = 16
#: The N values the hardware supports per 16x16 block (16 = dense).
ALLOWED_N = (2, 4, 8, 16)
#: Every pattern accepted by parse_pattern, as (n, m).
PATTERNS = ((2, 16), (4, 16), (8, 16), (16, 16), (2, 4))

_PATTERN_NAMES = ", ".join(f"{n}:{m}" for n, m in PATTERNS)
_ENERGIES = ("l2", "l1")


class SparsityError(ValueError):
    """Bad value for a sparsity operation (pattern, shape, density, content)."""


class SparsityTypeError(TypeError):
    """Wrong type or dtype given to a sparsity operation."""


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_weight(w, name: str = "w") -> None:
    """A non-empty, finite, real 2-D torch tensor."""
    if not isinstance(w, torch.Tensor):
        raise SparsityTypeError(
            f"{name} must be a torch.Tensor [out_features, in_features], got {type(w).__name__}; "
            "convert with torch.as_tensor"
        )
    if w.dtype == torch.bool or w.is_complex():
        raise SparsityTypeError(
            f"{name} has dtype {w.dtype}; weights must be a real floating or integer dtype"
        )
    if w.dim() != 2:
        raise SparsityError(
            f"{name} must be 2-D [out_features, in_features] (nn.Linear layout), got shape "
            f"{tuple(w.shape)}; reshape it (e.g. w.reshape(out, -1)) first"
        )
    if w.numel() == 0:
        raise SparsityError(f"{name} is empty (shape {tuple(w.shape)}); nothing to sparsify")
    if w.is_floating_point():
        bad = ~torch.isfinite(w)
        if bool(bad.any()):
            r, c = (int(v) for v in bad.nonzero()[0])
            raise SparsityError(
                f"{name} has {int(bad.sum())} non-finite value(s) (NaN/Inf), first at [{r}, {c}] "
                f"= {w[r, c].item()}; clean the weight before pruning"
            )


def _check_blockable(w: torch.Tensor, name: str = "w") -> None:
    out, k = w.shape
    if out % BLOCK_ROWS or k % GROUP_SIZE:
        raise SparsityError(
            f"{name} shape {tuple(w.shape)} is not a multiple of the {BLOCK_ROWS}x{GROUP_SIZE} "
            f"sparse block in both dims; pad it with pad_to_multiple({name}, 16) (zeros) and "
            "slice the result back"
        )


def _check_block_n(block_n, shape: tuple[int, int], allowed=ALLOWED_N) -> torch.Tensor:
    """Validate a block_n map for a weight of ``shape``; returns it as a LongTensor."""
    if not isinstance(block_n, torch.Tensor):
        raise SparsityTypeError(
            f"block_n must be a torch.Tensor [out/16, K/16], got {type(block_n).__name__}"
        )
    if block_n.dtype == torch.bool or block_n.is_floating_point() or block_n.is_complex():
        raise SparsityTypeError(f"block_n must have an integer dtype, got {block_n.dtype}")
    expected = (shape[0] // BLOCK_ROWS, shape[1] // GROUP_SIZE)
    if tuple(block_n.shape) != expected:
        raise SparsityError(
            f"block_n has shape {tuple(block_n.shape)}, expected {expected} for a weight of shape "
            f"{tuple(shape)} (one N per 16x16 block)"
        )
    bn = block_n.to(torch.int64)
    ok = torch.zeros_like(bn, dtype=torch.bool)
    for n in allowed:
        ok |= bn == n
    if not bool(ok.all()):
        bad = sorted({int(v) for v in bn[~ok].unique()})
        raise SparsityError(f"block_n contains {bad}; every block's N must be one of {allowed}")
    return bn


# --------------------------------------------------------------------------------------------
# Patterns, padding, pruning
# --------------------------------------------------------------------------------------------


def parse_pattern(pattern) -> tuple[int, int]:
    """Parse ``"N:M"`` (or an ``(N, M)`` tuple) into ``(n, m)``; only PATTERNS are accepted.

    Accepted: 2:16, 4:16, 8:16, 16:16 (dense) and 2:4. Surrounding whitespace is ignored.
    Raises SparsityError naming the accepted patterns for anything else ("3:16", "8:15", "abc").
    """
    if isinstance(pattern, str):
        parts = pattern.strip().split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise SparsityError(
                f"sparsity pattern {pattern!r} is not of the form 'N:M'; use one of {_PATTERN_NAMES}"
            )
        n, m = int(parts[0]), int(parts[1])
    elif isinstance(pattern, tuple) and len(pattern) == 2 and all(_is_int(v) for v in pattern):
        n, m = pattern
    else:
        raise SparsityTypeError(
            f"sparsity pattern must be a string 'N:M' or a tuple (N, M) of ints, got {pattern!r}"
        )
    if (n, m) not in PATTERNS:
        raise SparsityError(
            f"unsupported sparsity pattern {n}:{m}; the hardware supports {_PATTERN_NAMES}"
        )
    return n, m


def pad_to_multiple(w: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Zero-pad a 2-D weight at the bottom/right so both dims are multiples of ``multiple``.

    Returns w itself (not a copy) when no padding is needed. Padded zeros are never kept in
    preference to a nonzero value of the same group (they have the smallest magnitude), so
    slicing ``[:out, :K]`` of a padded-and-pruned weight gives a valid pruned weight.
    """
    _check_weight(w)
    if not _is_int(multiple) or multiple < 1:
        raise SparsityError(f"multiple must be a positive int, got {multiple!r}")
    out, k = w.shape
    pad_rows = (-out) % multiple
    pad_cols = (-k) % multiple
    if pad_rows == 0 and pad_cols == 0:
        return w
    padded = torch.zeros((out + pad_rows, k + pad_cols), dtype=w.dtype, device=w.device)
    padded[:out, :k] = w
    return padded


def _magnitude(w: torch.Tensor) -> torch.Tensor:
    """|w| without integer overflow (|int8 -128| = 128) and exact for every float dtype."""
    if w.is_floating_point():
        return w.to(torch.float64).abs()
    return w.to(torch.int64).abs()


def _group_ranks(w: torch.Tensor, m: int) -> torch.Tensor:
    """Rank of each element inside its group of m along K: 0 = largest |w|; ties -> lower index."""
    out, k = w.shape
    mag = _magnitude(w).reshape(out, k // m, m)
    order = torch.sort(mag, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(m).expand_as(order).contiguous())
    return ranks.reshape(out, k)


def prune(w: torch.Tensor, n: int = 8, m: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude-prune every group of m consecutive elements along K to its n largest |w|.

    (n, m) must be one of PATTERNS. Returns ``(pruned_w, mask)``: pruned_w has w's dtype with
    zeros where dropped; mask is bool, True where kept (exactly n per group). Ties keep the lower
    index. K must be a multiple of m (else SparsityError; use pad_to_multiple). The row count is
    free here; block storage (compress) also needs rows in multiples of 16.
    """
    n, m = parse_pattern((n, m))
    _check_weight(w)
    if w.shape[1] % m:
        raise SparsityError(
            f"in_features = {w.shape[1]} is not a multiple of the group size {m}; pad with "
            f"pad_to_multiple(w, {GROUP_SIZE})"
        )
    mask = _group_ranks(w, m) < n
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype)), mask


def uniform_block_n(w, n: int) -> torch.Tensor:
    """block_n (LongTensor ``[out/16, K/16]``) with every block at N = n.

    ``w`` is the weight (checked like everywhere else) or its shape ``(out, K)``.
    """
    if isinstance(w, torch.Tensor):
        _check_weight(w)
        shape = tuple(w.shape)
    elif isinstance(w, (tuple, list, torch.Size)) and len(w) == 2 and all(_is_int(v) for v in w):
        shape = tuple(w)
        if shape[0] <= 0 or shape[1] <= 0:
            raise SparsityError(f"shape {shape} must be positive")
    else:
        raise SparsityTypeError(f"w must be a weight tensor or an (out, K) shape, got {w!r}")
    if not _is_int(n) or n not in ALLOWED_N:
        raise SparsityError(f"N = {n!r} is not supported; use one of {ALLOWED_N}")
    if shape[0] % BLOCK_ROWS or shape[1] % GROUP_SIZE:
        raise SparsityError(
            f"shape {shape} is not a multiple of 16 in both dims; pad with pad_to_multiple(w, 16)"
        )
    return torch.full((shape[0] // BLOCK_ROWS, shape[1] // GROUP_SIZE), n, dtype=torch.int64)


def block_density(block_n: torch.Tensor) -> float:
    """Fraction of weights kept by a block_n map: mean(block_n) / 16."""
    if not isinstance(block_n, torch.Tensor) or block_n.numel() == 0:
        raise SparsityError("block_n must be a non-empty tensor")
    return float(block_n.to(torch.float64).mean()) / GROUP_SIZE


def _group_n(bn: torch.Tensor) -> torch.Tensor:
    """Per (row, group) N [out, K/16] from a block map [out/16, K/16]."""
    return bn.repeat_interleave(BLOCK_ROWS, dim=0)


def prune_blocks(w: torch.Tensor, block_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude-prune each 16x16 block to its block's N per group. Returns (pruned_w, mask).

    Same tie rule as prune(); a block with N = 16 is left dense.
    """
    _check_weight(w)
    _check_blockable(w)
    bn = _check_block_n(block_n, tuple(w.shape))
    n_per_elem = _group_n(bn).repeat_interleave(GROUP_SIZE, dim=1)
    mask = _group_ranks(w, GROUP_SIZE) < n_per_elem
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype)), mask


# --------------------------------------------------------------------------------------------
# Choosing N per block
# --------------------------------------------------------------------------------------------


def _check_allowed(allowed) -> tuple[int, ...]:
    try:
        values = tuple(allowed)
    except TypeError:
        raise SparsityTypeError(f"allowed must be a tuple of N values, got {allowed!r}") from None
    if not values or not all(_is_int(v) and v in ALLOWED_N for v in values):
        raise SparsityError(f"allowed = {allowed!r}: every entry must be one of {ALLOWED_N}")
    if len(set(values)) != len(values):
        raise SparsityError(f"allowed = {allowed!r} has duplicates")
    return tuple(sorted(values, reverse=True))


def _best_two(values: torch.Tensor, *, largest: bool) -> list[tuple[int, float]]:
    """Up to two (index, value) with the largest (or smallest) finite values; the first
    extreme wins ties (lowest index), as argmax/argmin do."""
    found = []
    vals = values.clone()
    fill = -math.inf if largest else math.inf
    for _ in range(2):
        i = int(torch.argmax(vals) if largest else torch.argmin(vals))
        v = float(vals[i])
        if not math.isfinite(v):
            break
        found.append((i, v))
        vals[i] = fill
    return found


def _improve_block_steps(
    steps_taken: torch.Tensor,
    step_energy: torch.Tensor,
    removed: torch.Tensor,
    kept: int,
    target: int,
) -> torch.Tensor:
    """Local search after the greedy prefix: repeatedly apply the single best move that keeps
    kept <= target and lowers the energy lost, until none does.

    Moves: "up" (undo a block's last step: restores its energy, adds its values back) and
    "exchange" (one block a takes its next step down while another block b undoes its last one).
    Candidates are searched per step-size class (at most a handful), so one pass is O(blocks).
    Ties: larger gain first, then lower block index (down block first, then up block).
    """
    nblocks, nsteps = step_energy.shape
    steps = steps_taken.clone()
    arange = torch.arange(nblocks)
    sizes = sorted({int(v) for v in removed})
    scale = float(step_energy.sum())
    tiny = 1e-12 * scale if scale > 0 else 0.0
    inf = torch.tensor(math.inf, dtype=torch.float64)
    for _ in range(4 * nblocks * nsteps + 1):  # each move strictly lowers the loss; a safety cap
        slack = target - kept
        can_up = steps > 0
        up_idx = (steps - 1).clamp(min=0)
        up_size = torch.where(can_up, removed[up_idx], 0)
        up_gain = torch.where(can_up, step_energy[arange, up_idx], -inf)
        can_down = steps < nsteps
        down_idx = steps.clamp(max=nsteps - 1)
        down_size = torch.where(can_down, removed[down_idx], 0)
        down_cost = torch.where(can_down, step_energy[arange, down_idx], inf)
        best = (tiny, None, None)  # (gain, down block, up block)
        for u in sizes:
            ups = _best_two(torch.where(can_up & (up_size == u), up_gain, -inf), largest=True)
            if not ups:
                continue
            if u <= slack and ups[0][1] > best[0]:  # plain "up" move
                best = (ups[0][1], None, ups[0][0])
            for d in sizes:
                if u - d > slack:
                    continue
                downs = _best_two(
                    torch.where(can_down & (down_size == d), down_cost, inf), largest=False
                )
                for da, dc in downs:  # the best a != b pair is among the top two of each
                    for ub, ug in ups:
                        if ub != da and ug - dc > best[0]:
                            best = (ug - dc, da, ub)
        gain, a, b = best
        if b is None:
            break
        kept += int(removed[steps[b] - 1])
        steps[b] -= 1
        if a is not None:
            kept -= int(removed[steps[a]])
            steps[a] += 1
    return steps


def choose_block_n(
    w: torch.Tensor,
    density: float | None = None,
    *,
    budget: int | None = None,
    allowed: tuple[int, ...] = ALLOWED_N,
    energy: str = "l2",
) -> torch.Tensor:
    """Choose N per 16x16 block so that kept values <= target, minimising the pruned energy.

    Give exactly one of ``density`` (fraction of weights kept, 0 < density <= 1; the target is
    floor(density * numel)) or ``budget`` (max number of kept weights in the layer). ``energy`` is
    "l2" (sum of w^2 lost) or "l1" (sum of |w| lost); magnitudes use the same ranking and tie rule
    as prune().

    Algorithm (deterministic):
    1. Every block starts at max(allowed). A "step" moves one block to its next lower allowed N;
       its cost is the energy it drops divided by the number of values it drops (16 * dN).
       Within one block the costs never decrease from one step to the next (the values dropped
       later are ranked higher in every group), so the sequential greedy "always take the
       cheapest next step" equals taking steps in ascending cost order (ties: lower block index,
       row-major, then the block's earlier step), which is what is done, until kept <= target.
    2. Local search (the last greedy step may overshoot the target): repeatedly apply the move
       that lowers the lost energy most while keeping kept <= target: either undo one block's
       last step, or exchange (block a takes its next step down while block b undoes its last
       step). Stops when no move helps. Ties: first found (smaller step sizes, lower indices).
    When the target falls on a step boundary this is the exact optimum (the per-block loss is
    convex in the number of values dropped); otherwise it is a good greedy.

    Raises SparsityError if the target is below what min(allowed) can reach.
    Returns a LongTensor ``[out/16, K/16]`` with values in ``allowed``.
    """
    _check_weight(w)
    _check_blockable(w)
    levels = _check_allowed(allowed)  # descending
    if energy not in _ENERGIES:
        raise SparsityError(f"energy = {energy!r}; use one of {_ENERGIES}")
    numel = w.numel()
    if (density is None) == (budget is None):
        raise SparsityError("give exactly one of density= (fraction kept) or budget= (count kept)")
    if density is not None:
        if not isinstance(density, (int, float)) or isinstance(density, bool):
            raise SparsityTypeError(f"density must be a number, got {type(density).__name__}")
        if not math.isfinite(density) or not 0.0 < density <= 1.0:
            raise SparsityError(
                f"density = {density!r} is the fraction of weights kept; it must be in (0, 1]"
            )
        target = math.floor(density * numel + 1e-9)
        what = f"density {density}"
    else:
        if not _is_int(budget):
            raise SparsityTypeError(f"budget must be an int (kept weights), got {budget!r}")
        if budget <= 0:
            raise SparsityError(f"budget = {budget} kept weights; it must be positive")
        target = budget
        what = f"budget {budget}"
    lowest = levels[-1] * numel // GROUP_SIZE
    if target < lowest:
        raise SparsityError(
            f"{what} asks for at most {target} kept weights, but the smallest allowed N "
            f"({levels[-1]}:16) keeps {lowest} ({levels[-1] / GROUP_SIZE:g} density); raise the "
            "target or allow a smaller N"
        )

    out, k = w.shape
    bands, cols = out // BLOCK_ROWS, k // GROUP_SIZE
    nblocks = bands * cols
    mag = _magnitude(w).to(torch.float64).reshape(out, cols, GROUP_SIZE)
    sorted_mag = torch.sort(mag, dim=-1, descending=True, stable=True).values
    e = sorted_mag * sorted_mag if energy == "l2" else sorted_mag
    # Energy per block for each rank: [bands, cols, 16]
    e_block = e.reshape(bands, BLOCK_ROWS, cols, GROUP_SIZE).sum(dim=1).reshape(nblocks, -1)
    nsteps = len(levels) - 1
    kept = levels[0] * numel // GROUP_SIZE
    steps_taken = torch.zeros(nblocks, dtype=torch.int64)
    if nsteps > 0 and kept > target:
        removed = torch.tensor(
            [BLOCK_ROWS * (levels[s] - levels[s + 1]) for s in range(nsteps)], dtype=torch.int64
        )
        step_energy = torch.stack(
            [e_block[:, levels[s + 1] : levels[s]].sum(dim=1) for s in range(nsteps)], dim=1
        )
        cost = step_energy / removed.to(torch.float64)
        cost = torch.cummax(cost, dim=1).values  # guards the (exact-math) monotonicity vs rounding
        flat_cost = cost.reshape(-1)  # order: block-major, then step: the tie order
        order = torch.sort(flat_cost, stable=True).indices
        removed_sorted = removed.repeat(nblocks)[order]
        kept_after = kept - torch.cumsum(removed_sorted, dim=0)
        stop = int(torch.nonzero(kept_after <= target)[0])  # exists: lowest level meets target
        taken_blocks = order[: stop + 1] // nsteps
        steps_taken = torch.bincount(taken_blocks, minlength=nblocks)
        kept = int(kept_after[stop])
        steps_taken = _improve_block_steps(steps_taken, step_energy, removed, kept, target)
    level_table = torch.tensor(levels, dtype=torch.int64)
    return level_table[steps_taken].reshape(bands, cols)


# --------------------------------------------------------------------------------------------
# Compressed form
# --------------------------------------------------------------------------------------------


def pack_indices(indices: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit indices two per byte: LOW nibble (bits 3:0) = first (even position), HIGH
    nibble (bits 7:4) = second (odd position). An odd count gets a zero high nibble last.
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
        raise SparsityTypeError("indices must be a 1-D torch.Tensor")
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise SparsityTypeError(f"indices must have an integer dtype, got {indices.dtype}")
    idx = indices.to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > 15):
        raise SparsityError("indices must be in 0..15 (4-bit in-group positions)")
    if idx.numel() % 2:
        idx = torch.cat([idx, idx.new_zeros(1)])
    return (idx[0::2] | (idx[1::2] << 4)).to(torch.uint8)


def unpack_indices(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of pack_indices: the first ``count`` nibbles, low nibble first, as uint8."""
    if not isinstance(packed, torch.Tensor) or packed.dim() != 1 or packed.dtype != torch.uint8:
        raise SparsityTypeError("packed must be a 1-D uint8 torch.Tensor")
    if not _is_int(count) or count < 0 or count > 2 * packed.numel():
        raise SparsityError(f"count = {count!r} must be in 0..{2 * packed.numel()}")
    p = packed.to(torch.int64)
    nibbles = torch.stack([p & 0xF, p >> 4], dim=1).reshape(-1)
    return nibbles[:count].to(torch.uint8)


class SparseBytes(NamedTuple):
    """Byte sizes of a compressed weight as stored for the hardware (each rounded up)."""

    values: int
    indices: int
    block_n: int

    @property
    def total(self) -> int:
        return self.values + self.indices + self.block_n


@dataclass(frozen=True)
class SparseWeight:
    """A weight in the compressed form the sparse DSP chain reads.

    Attributes:
        values: 1-D, the kept values in the canonical order (row, then group in K order, then
            kept in-group position ascending); dense blocks contribute all 16 values per group.
            dtype of the source weight.
        indices: 1-D uint8 aligned with values: each value's in-group position 0..15 (dense
            blocks have 0..15 here for convenience; they are NOT stored for the hardware,
            see packed_indices).
        block_n: uint8 ``[out/16, K/16]``.
        shape: (out_features, in_features) of the dense weight.

    Views for the hardware's walk: block(b, c) gives one 16x16 block's [16, N] values and
    indices; band_values(b) one 16-row band's [16, L] values; packed_indices() the index stream.
    """

    values: torch.Tensor
    indices: torch.Tensor
    block_n: torch.Tensor
    shape: tuple[int, int]

    # -- layout helpers ------------------------------------------------------------------------

    def group_counts(self) -> torch.Tensor:
        """LongTensor [out, K/16]: kept values of each (row, group)."""
        return _group_n(self.block_n.to(torch.int64))

    def row_lengths(self) -> torch.Tensor:
        """LongTensor [out]: number of kept values per row (sum of its band's block N)."""
        return self.group_counts().sum(dim=1)

    def row_offsets(self) -> torch.Tensor:
        """LongTensor [out+1]: start of each row in values (exclusive prefix sum)."""
        return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self.row_lengths(), 0)])

    def band_values(self, band: int) -> torch.Tensor:
        """Kept values of the 16-row band ``band`` as a rectangular ``[16, L]`` view (the rows of
        one band keep the same count L = sum of the band's block N)."""
        bands = self.shape[0] // BLOCK_ROWS
        if not _is_int(band) or not 0 <= band < bands:
            raise SparsityError(f"band must be an int in 0..{bands - 1}, got {band!r}")
        length = int(self.block_n[band].to(torch.int64).sum())
        start = int(self.row_offsets()[band * BLOCK_ROWS])
        return self.values[start : start + BLOCK_ROWS * length].view(BLOCK_ROWS, length)

    @cached_property
    def _group_starts(self) -> torch.Tensor:
        """LongTensor [out, K/16]: position in values of each (row, group)'s first kept value."""
        counts = self.group_counts()
        return torch.cumsum(counts.reshape(-1), 0).reshape(counts.shape) - counts

    def block(self, band: int, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) of block (band, col) as ``[16, N]`` tensors: row i of the result is
        output row 16*band + i; its N kept weights of group col and their in-group indices."""
        bands, cols = self.block_n.shape
        if not (_is_int(band) and _is_int(col) and 0 <= band < bands and 0 <= col < cols):
            raise SparsityError(f"block ({band!r}, {col!r}) is outside the {bands}x{cols} block grid")
        n = int(self.block_n[band, col])
        rows = slice(band * BLOCK_ROWS, (band + 1) * BLOCK_ROWS)
        pos = self._group_starts[rows, col].unsqueeze(1) + torch.arange(n)
        return self.values[pos], self.indices[pos]

    def _value_groups(self) -> torch.Tensor:
        """LongTensor aligned with values: flat (row * K/16 + group) of each kept value."""
        counts = self.group_counts().reshape(-1)
        return torch.repeat_interleave(torch.arange(counts.numel()), counts)

    def rows(self) -> torch.Tensor:
        """LongTensor aligned with values: output row of each kept value."""
        return self._value_groups() // (self.shape[1] // GROUP_SIZE)

    def columns(self) -> torch.Tensor:
        """LongTensor aligned with values: absolute K position of each kept value."""
        group = self._value_groups() % (self.shape[1] // GROUP_SIZE)
        return group * GROUP_SIZE + self.indices.to(torch.int64)

    def sparse_value_mask(self) -> torch.Tensor:
        """Bool aligned with values: True for values of sparse blocks (N < 16)."""
        counts = self.group_counts().reshape(-1)
        return torch.repeat_interleave(counts, counts) < GROUP_SIZE

    def packed_indices(self) -> torch.Tensor:
        """The index stream the hardware reads: in-group indices of the kept values of SPARSE
        blocks only (N < 16), in value order, packed by pack_indices (low nibble first).

        Dense blocks need no index (their positions are 0..15 in order), so they are skipped.
        Each sparse group holds an even number of indices, so no byte straddles two groups.
        """
        return pack_indices(self.indices[self.sparse_value_mask()])

    def nbytes(self, value_bits: int | None = None, block_n_bits: int = 8) -> SparseBytes:
        """Stored size split into values / indices / block_n (bytes, each rounded up).

        values = ceil(num_kept * value_bits / 8); value_bits defaults to the values dtype's
        width (pass 8 for INT8, 4 for 4-bit OVP). indices = len(packed_indices()) =
        ceil(kept values in sparse blocks / 2). block_n = ceil(blocks * block_n_bits / 8);
        8 (one uint8 per block, as stored here) by default, 2 suffices for a log2(N)-1 code.
        """
        if value_bits is None:
            value_bits = self.values.element_size() * 8
        for name, bits in (("value_bits", value_bits), ("block_n_bits", block_n_bits)):
            if not _is_int(bits) or bits < 1:
                raise SparsityError(f"{name} must be a positive int, got {bits!r}")
        sparse_count = int(self.sparse_value_mask().sum())
        return SparseBytes(
            values=-(-self.num_kept * value_bits // 8),
            indices=-(-sparse_count // 2),
            block_n=-(-self.block_n.numel() * block_n_bits // 8),
        )

    @property
    def num_kept(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """Fraction of the dense weight's elements that are stored."""
        return self.num_kept / (self.shape[0] * self.shape[1])

    def validate(self) -> None:
        """Check internal consistency; raises SparsityError/SparsityTypeError if malformed."""
        if not (isinstance(self.shape, tuple) and len(self.shape) == 2):
            raise SparsityError(f"shape must be an (out, K) tuple, got {self.shape!r}")
        out, k = self.shape
        if out <= 0 or k <= 0 or out % BLOCK_ROWS or k % GROUP_SIZE:
            raise SparsityError(f"shape {self.shape} must be positive multiples of 16")
        _check_block_n(self.block_n, self.shape)
        for name, t in (("values", self.values), ("indices", self.indices)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise SparsityTypeError(f"SparseWeight.{name} must be a 1-D tensor")
        if self.indices.dtype != torch.uint8:
            raise SparsityTypeError(f"SparseWeight.indices must be uint8, got {self.indices.dtype}")
        expected = int(self.group_counts().sum())
        if self.values.numel() != expected or self.indices.numel() != expected:
            raise SparsityError(
                f"SparseWeight has {self.values.numel()} values and {self.indices.numel()} "
                f"indices; its block_n implies {expected}"
            )
        idx = self.indices.to(torch.int64)
        if expected and int(idx.max()) > 15:
            raise SparsityError("SparseWeight.indices must be in 0..15")
        # Within a group the positions must be strictly ascending (canonical order).
        same_group = self._value_groups()
        if expected > 1:
            step_inside = same_group[1:] == same_group[:-1]
            if bool((idx[1:][step_inside] <= idx[:-1][step_inside]).any()):
                raise SparsityError(
                    "SparseWeight.indices are not strictly ascending within a group"
                )


def compress(
    w: torch.Tensor, block_n: torch.Tensor, *, mask: torch.Tensor | None = None
) -> SparseWeight:
    """Prune w with block_n (magnitude, lower-index ties) and return its compressed form.

    With ``mask`` the kept positions are taken from it instead; it must keep exactly the
    block's N in every group (e.g. a 2:4 mask from prune(w, 2, 4) with block_n all 8).
    decompress(compress(w, bn)) == prune_blocks(w, bn)[0] exactly (and == w when w is already
    pruned to bn). Kept values that happen to be zero are stored like any other.
    """
    _check_weight(w)
    _check_blockable(w)
    bn = _check_block_n(block_n, tuple(w.shape))
    if mask is None:
        _, mask = prune_blocks(w, bn)
    else:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise SparsityTypeError("mask must be a bool torch.Tensor (True = kept)")
        if mask.shape != w.shape:
            raise SparsityError(f"mask shape {tuple(mask.shape)} differs from w {tuple(w.shape)}")
        out, k = w.shape
        counts = mask.reshape(out, k // GROUP_SIZE, GROUP_SIZE).sum(dim=-1)
        want = _group_n(bn)
        if not torch.equal(counts, want):
            r, g = (int(v) for v in (counts != want).nonzero()[0])
            raise SparsityError(
                f"mask keeps {int(counts[r, g])} values in row {r}, group {g} but its block's "
                f"N is {int(want[r, g])}; every group must keep exactly its block's N"
            )
    k_pos = torch.arange(w.shape[1]).expand(w.shape)
    return SparseWeight(
        values=w[mask],  # boolean indexing copies in row-major order: the canonical order
        indices=(k_pos[mask] % GROUP_SIZE).to(torch.uint8),
        block_n=bn.to(torch.uint8),
        shape=(int(w.shape[0]), int(w.shape[1])),
    )


def decompress(sw: SparseWeight) -> torch.Tensor:
    """Dense ``[out, K]`` tensor with the kept values at their positions and zeros elsewhere."""
    if not isinstance(sw, SparseWeight):
        raise SparsityTypeError(f"expected a SparseWeight, got {type(sw).__name__}")
    sw.validate()
    dense = torch.zeros(sw.shape, dtype=sw.values.dtype)
    dense[sw.rows(), sw.columns()] = sw.values
    return dense


# --------------------------------------------------------------------------------------------
# What the sparse MUX + DSP chain computes
# --------------------------------------------------------------------------------------------


def sparse_matmul_reference(x_int: torch.Tensor, sw_int: SparseWeight) -> torch.Tensor:
    """Integer y = x @ W^T as the sparse MUX + DSP chain computes it; int64, exact.

    x_int: integer ``[T, K]`` (or ``[K]``); sw_int: SparseWeight with integer values.
    Walks block by block, as the hardware steps K in blocks of 16: for block (b, c) with N kept
    per group, every output row r of band b takes its N kept weights; the sparse MUX in front of
    each DSP selects, out of the 16 activations x[:, 16c .. 16c+15], the one at the weight's
    stored in-group index; the N products are summed (one chain group) and accumulated into
    y[:, r] in int64. Readable rather than fast (a Python loop over blocks): use it on small
    layers. Raises SparsityError if int64 could overflow.
    """
    if not isinstance(sw_int, SparseWeight):
        raise SparsityTypeError(f"sw_int must be a SparseWeight, got {type(sw_int).__name__}")
    sw_int.validate()
    if not isinstance(x_int, torch.Tensor):
        raise SparsityTypeError(f"x_int must be a torch.Tensor, got {type(x_int).__name__}")
    for name, t in (("x_int", x_int), ("sw_int.values", sw_int.values)):
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise SparsityTypeError(f"{name} must have an integer dtype, got {t.dtype}")
    squeeze = x_int.dim() == 1
    x = x_int.unsqueeze(0) if squeeze else x_int
    out, k = sw_int.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise SparsityError(f"x_int must be [T, {k}] or [{k}], got shape {tuple(x_int.shape)}")
    x = x.to(torch.int64)
    max_x = int(x.abs().max()) if x.numel() else 0
    max_w = int(sw_int.values.to(torch.int64).abs().max()) if sw_int.values.numel() else 0
    if max_x * max_w * k >= 2**63:
        raise SparsityError(
            f"|x| <= {max_x}, |w| <= {max_w}, K = {k} could overflow the int64 accumulator"
        )
    y = torch.zeros((x.shape[0], out), dtype=torch.int64)
    for b in range(out // BLOCK_ROWS):
        rows = slice(b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)
        for c in range(k // GROUP_SIZE):
            weights, mux_select = sw_int.block(b, c)  # [16 rows, N] each
            candidates = x[:, c * GROUP_SIZE : (c + 1) * GROUP_SIZE]  # [T, 16] activations
            selected = candidates[:, mux_select.to(torch.int64)]  # [T, 16, N]: the MUX outputs
            y[:, rows] += (selected * weights.to(torch.int64)).sum(dim=-1)
    return y.squeeze(0) if squeeze else y


# --------------------------------------------------------------------------------------------
# Combination with OVP quantization
# --------------------------------------------------------------------------------------------


_OVP_KWARGS = ("bits", "normal", "granularity", "victim", "alpha")


@dataclass(frozen=True, eq=False)
class SparseOvpWeight:
    """A sparse weight whose kept values are OVP-quantized (see quantize_sparse_ovp).

    Attributes:
        sparse: the SparseWeight of the pruned (not yet quantized) weight: its indices, block_n
            and shape are the structure; its values are the float inputs of the quantizer.
        parts: the OvpTensor of each 16-row band (granularity "row": parts[b] holds the band's
            [16, L_b] kept-values matrix) or a single OvpTensor of all kept values as one
            [1, num_kept] row (granularity "tensor").
        normal, bits, granularity: as chosen/used by the quantizer (one normal type per layer).
    """

    sparse: SparseWeight
    parts: tuple
    normal: str
    bits: int
    granularity: str

    @property
    def codes(self) -> torch.Tensor:
        """uint8 OVP codes of the kept values in canonical order: 4-bit, one byte per pair
        (low nibble = even kept value); 8-bit, two bytes per pair word (low byte first)."""
        return torch.cat([p.codes.reshape(-1) for p in self.parts])

    @property
    def scale(self) -> torch.Tensor:
        """float32 [out, 1]: the LSB of each output row (the OvpTensor row-scale shape)."""
        return self.row_scales().reshape(-1, 1)

    def row_scales(self) -> torch.Tensor:
        """float32 [out]: the LSB (scale) that applies to each output row."""
        if self.granularity == "tensor":
            return self.parts[0].scale.reshape(1).expand(self.sparse.shape[0]).clone()
        return torch.cat([p.scale.reshape(-1) for p in self.parts])

    def grid_values(self) -> torch.Tensor:
        """int32 grid values (LSB units, victims applied), aligned with sparse.values."""
        return torch.cat([p.grid_values().reshape(-1) for p in self.parts])

    def dense_grid_values(self) -> torch.Tensor:
        """int32 [out, K]: grid values at the kept positions, 0 elsewhere (times row_scales()
        per row gives to_dense())."""
        sw = self.sparse
        return decompress(SparseWeight(self.grid_values(), sw.indices, sw.block_n, sw.shape))

    def dequantized_values(self) -> torch.Tensor:
        """float32 dequantized kept values, aligned with sparse.values."""
        return torch.cat([p.dequantize().reshape(-1) for p in self.parts])

    def dequantize(self) -> SparseWeight:
        """The SparseWeight with the dequantized (float32) values in place of the originals."""
        sw = self.sparse
        return SparseWeight(self.dequantized_values(), sw.indices, sw.block_n, sw.shape)

    def to_dense(self) -> torch.Tensor:
        """Dense float32 [out, K]: dequantized kept values at their positions, zeros elsewhere."""
        return decompress(self.dequantize())

    def nbytes(self, block_n_bits: int = 8) -> SparseBytes:
        """Stored size: values = OVP code bytes (bits/8 per kept value), indices and block_n as
        in SparseWeight.nbytes. The per-row scales (out x float32) are not included."""
        return self.sparse.nbytes(value_bits=self.bits, block_n_bits=block_n_bits)


def decompress_ovp_values(sow: SparseOvpWeight) -> torch.Tensor:
    """int32 [out, K] OVP grid values of a SparseOvpWeight at the kept positions, 0 elsewhere."""
    if not isinstance(sow, SparseOvpWeight):
        raise SparsityTypeError(f"expected a SparseOvpWeight, got {type(sow).__name__}")
    return sow.dense_grid_values()


def quantize_sparse_ovp(
    w: torch.Tensor, block_n: torch.Tensor, *, mask: torch.Tensor | None = None, **ovp_kwargs
) -> SparseOvpWeight:
    """Compress w with block_n (or ``mask``), then OVP-quantize the kept values with
    olivine.golden.ovp.quantize (``ovp_kwargs``: bits, normal, granularity, victim, alpha).

    OVP pairs are formed among kept values in the canonical order (value 2k and 2k+1 of a row's
    kept sequence), so an N:16 group gives N/2 whole pairs and no pair straddles two groups (every
    N is even). The pruned zeros take no part in the quantization (not in the pairs, not in the
    alpha statistics).

    Rows of different 16-row bands may keep different counts, so:
    - granularity "row" (default; one alpha per output row): each band's kept values form a
      rectangular [16, L_b] matrix, quantized on its own. ``normal="auto"`` is decided for the
      whole layer as ovp.quantize does it: the per-row best MSEs of each type (from
      ovp.search_alpha, or at the given alpha) are summed over ALL rows in float32 and the smaller
      wins (int4 on a tie); every band then uses that type. ``alpha`` may be one value or one
      per output row.
    - granularity "tensor" (one alpha): all kept values in canonical order as one [1, num_kept]
      row (each row's count is even, so pairs still stay inside rows and groups).
    For a uniform N every band has the same length and the result equals ovp.quantize on the
    [out, L] kept-values matrix.
    """
    from . import ovp  # imported on use: the rest of this module does not depend on OVP

    unknown = sorted(set(ovp_kwargs) - set(_OVP_KWARGS))
    if unknown:
        raise SparsityTypeError(
            f"quantize_sparse_ovp got unexpected argument(s) {unknown}; OVP takes {_OVP_KWARGS}"
        )
    _check_weight(w)
    if not w.is_floating_point():
        raise SparsityTypeError(
            f"OVP quantizes floating-point weights, got dtype {w.dtype}; convert with .float()"
        )
    sw = compress(w, block_n, mask=mask)
    kw = dict(ovp_kwargs)
    granularity = kw.get("granularity", "row")
    if granularity not in ovp.GRANULARITIES:
        raise SparsityError(f"granularity must be one of {ovp.GRANULARITIES}, got {granularity!r}")
    if granularity == "tensor":
        q = ovp.quantize(sw.values.reshape(1, -1), **kw)
        return SparseOvpWeight(sw, (q,), q.normal, q.bits, "tensor")

    out = sw.shape[0]
    bands = [sw.band_values(b) for b in range(out // BLOCK_ROWS)]
    alpha = kw.pop("alpha", None)
    band_alpha = [None] * len(bands)
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        if a.numel() == out:
            band_alpha = [a[b * BLOCK_ROWS : (b + 1) * BLOCK_ROWS] for b in range(len(bands))]
        elif a.numel() == 1:
            band_alpha = [a] * len(bands)
        else:
            raise SparsityError(
                f"alpha must be one value or one per output row ({out}), got {a.numel()} values"
            )
    bits = kw.get("bits", 4)
    normal = kw.get("normal", "auto")
    victim = kw.get("victim", "larger")
    if bits == 4 and normal == "auto":
        best = None
        for name in ("int4", "flint4"):
            if alpha is None:
                found = [
                    ovp.search_alpha(band, name, granularity="row", victim=victim)
                    for band in bands
                ]
                alphas = [f[0] for f in found]
                scores = torch.cat([f[1] for f in found])
            else:
                alphas = band_alpha
                scores = torch.cat(
                    [
                        ovp.quantize(band, **{**kw, "normal": name, "alpha": a}).mse
                        for band, a in zip(bands, alphas)
                    ]
                )
            total = scores.sum().item()
            if best is None or total < best[0]:  # strict: int4 wins a tie, as in ovp.quantize
                best = (total, name, alphas)
        _, normal, band_alpha = best
        kw["normal"] = normal
    parts = tuple(
        ovp.quantize(band, **kw) if a is None else ovp.quantize(band, **{**kw, "alpha": a})
        for band, a in zip(bands, band_alpha)
    )
    return SparseOvpWeight(sw, parts, parts[0].normal, parts[0].bits, "row")
