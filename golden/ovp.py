"""OliVe outlier-victim pair (OVP) quantization: the golden model (torch, vectorized).

The bit format lives in ``ovp_format`` (no torch); this module quantizes float tensors onto it.
See docs/ovp.md for the full description. Summary:

- Elements are paired with their neighbour along the LAST dimension: (x[..., 2k], x[..., 2k+1]).
  The last dimension must be even (``pad_to_even`` pads with a zero).
- One LSB of the normal type is ``scale = alpha / normal_max`` (int4: 7, flint4: 16, int8: 127).
  ``x / scale`` is rounded to the nearest point of normal grid U outlier grid. Ties: inside a grid
  toward +inf; a tie between the largest normal and the smallest outlier (|v| = 9.5 on int4, 20 on
  flint4, 131.5 on int8) goes to the outlier on both signs; beyond the largest outlier the value
  saturates. This is what the released OliVe quantizer computes (ascending scan over
  normals-then-outliers keeping the last point at equal float32 distance).
- Victims: in a pair with an outlier the partner becomes 0 (the identifier code). Two outliers:
  ``victim="larger"`` keeps the larger quantized magnitude (equal magnitudes keep the even
  element); ``victim="even"`` always keeps the even element (the released code).
- alpha search: x_max = max(|mean + 3 sd|, |mean - 3 sd|) (Bessel sd), candidates
  ``x_max * (i * 0.01)`` for i = 75, 77, ..., 249; the first candidate with the smallest
  float32 MSE wins (strict <, starting from 1e10 with alpha = x_max). Per row for
  ``granularity="row"``, one for the whole tensor for ``"tensor"``. ``normal="auto"`` runs the
  search for int4 and flint4 and keeps the smaller summed best MSE (int4 on a tie).

All arithmetic that decides a rounding, a tie or an argmin is float32 and follows the released
code's operation order, so results agree with it element for element (docs/ovp.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from . import ovp_format as F
from .ovp_format import FORMATS, OvpFormat, OvpFormatError, get_format

__all__ = [
    "OvpError",
    "OvpTensor",
    "quantize",
    "quantize_reference",
    "fake_quant",
    "decode",
    "encode",
    "pack",
    "unpack",
    "pad_to_even",
    "pair_stats",
    "search_alpha",
    "ALPHA_STEPS",
    "GRANULARITIES",
    "VICTIM_RULES",
]


class OvpError(ValueError):
    """Bad input to the OVP quantizer (the message says what to change)."""


class OvpTypeError(TypeError):
    """An input of the wrong type or dtype."""


#: alpha candidates are x_max * (i * 0.01) for these i (88 candidates).
ALPHA_STEPS: tuple[int, ...] = tuple(range(75, 250, 2))
GRANULARITIES = ("row", "tensor")
VICTIM_RULES = ("larger", "even")
_NORMALS_BY_BITS = {4: ("auto", "int4", "flint4"), 8: ("auto", "int8")}
#: initial "best" score of the search (the released code's sentinel): a candidate must beat it.
_SCORE_SENTINEL = 1e10
#: |h| clamp before the int32 conversion (any value beyond the largest outlier saturates anyway)
_H_LIMIT = float(1 << 30)
#: elements per working chunk of the search ([candidates, rows, cols] block): below torch's
#: GRAIN_SIZE (32768), so each op runs serially on cache-resident data.
_CHUNK_ELEMENTS = 32767


# ---------------------------------------------------------------------------------------------
# Per-format torch constants
# ---------------------------------------------------------------------------------------------


class _Consts:
    """Torch constants of one format, in "h" units (h = 2 * x / scale, so every midpoint of the
    union grid is an integer in h: rounding needs only floor(h))."""

    def __init__(self, fmt: OvpFormat):
        self.fmt = fmt
        self.nmax = fmt.normal_max
        # |h| >= h_threshold <=> outlier (the normal/outlier tie goes to the outlier).
        self.h_threshold = float(fmt.normal_max + fmt.outlier_min)
        out = torch.tensor(fmt.outlier_grid, dtype=torch.float32)
        self.outlier_grid = out
        self.outlier_mids_h = out[:-1] + out[1:]  # 2 * midpoint, exact small integers
        # Normal rounding. int grids: round half up = floor((floor(h) + 1) / 2). flint4: a table
        # over floor(h) (each h-interval [k, k+1) maps to one grid point).
        self.uniform = fmt.name in ("int4", "int8")
        if not self.uniform:
            lo = -int(self.h_threshold)
            self.table_lo = lo
            grid = sorted(fmt.normal_grid)
            table = []
            for k in range(lo, -lo):
                v = k / 2  # representative point of [k/2, (k+1)/2); a tie goes up
                best = grid[0]
                for g in grid:  # ascending, keep the last at equal distance
                    if abs(v - g) <= abs(v - best):
                        best = g
                table.append(best)
            self.normal_table = torch.tensor(table, dtype=torch.float32)
        # Encode LUT over value + offset: code (normal or outlier), -1 where not on the grid.
        self.offset = fmt.outlier_max
        lut = torch.full((2 * fmt.outlier_max + 1,), -1, dtype=torch.int32)
        for v, c in fmt.normal_codes.items():
            lut[v + self.offset] = c
        for v, c in fmt.outlier_codes.items():
            lut[v + self.offset] = c
        self.code_lut = lut
        tables = F.PAIR_DECODE_TABLES[fmt.name]
        self.dec_exp = torch.from_numpy(tables["exponent"].copy())
        self.dec_int = torch.from_numpy(tables["integer"].copy())
        self.dec_val = torch.from_numpy(tables["value"].copy())


_CONSTS: dict[str, _Consts] = {}


def _consts(normal: str) -> _Consts:
    c = _CONSTS.get(normal)
    if c is None:
        c = _CONSTS[normal] = _Consts(get_format(normal))
    return c


# ---------------------------------------------------------------------------------------------
# The quantization core: float32 grid values after victims
# ---------------------------------------------------------------------------------------------


def _grid_values_f32(x: torch.Tensor, scale: torch.Tensor, c: _Consts, victim: str, stats: dict | None = None) -> torch.Tensor:
    """Grid values (float32, LSB units, victims applied) of x at ``scale`` (broadcasting).

    x: contiguous float32 [..., N] with N even; scale: float32 broadcastable to x (one LSB).
    The result has the broadcast shape and is contiguous. ``stats`` (a dict), if given, receives
    the number of pairs whose two elements were both outliers before the victim rule.
    """
    half = scale * 0.5
    if bool((half == 0).any()):  # an all-zero row (alpha = 0): everything rounds to 0
        half = torch.where(half == 0, torch.ones_like(half), half)
    h = x / half  # = 2 * (x / scale) exactly: doubling commutes with float rounding
    shape = h.shape
    h = h.view(-1)
    # floor(h) through int32 truncation (torch.floor goes through a finely threaded VML path
    # that is slow on a loaded machine); |h| stays far below 2**31 except on saturated
    # elements, which the clamp / outlier path below overrides anyway.
    fh = h.clamp(-_H_LIMIT, _H_LIMIT).to(torch.int32)
    fh -= (h < fh).to(torch.int32)
    if c.uniform:
        # round half up on the integer grid: floor((floor(2v) + 1) / 2)
        q = fh.add_(1).bitwise_right_shift_(1).clamp_(-c.nmax, c.nmax).to(torch.float32)
    else:
        lo = c.table_lo
        q = torch.index_select(c.normal_table, 0, fh.clamp_(lo, -lo - 1).sub_(lo))
    flat_mask = h.abs() >= c.h_threshold
    oi = flat_mask.nonzero().squeeze(1)
    if stats is not None:
        stats["outlier_outlier"] = 0
    if oi.numel() == 0:
        return q.view(shape)
    ov = c.outlier_grid[torch.bucketize(h[oi], c.outlier_mids_h, right=True)]
    both = _apply_victims(q, flat_mask, oi, ov, victim)
    if stats is not None:
        stats["outlier_outlier"] = both
    return q.view(shape)


def _apply_victims(qf: torch.Tensor, mask: torch.Tensor, oi: torch.Tensor, ov: torch.Tensor, victim: str) -> int:
    """Write the outliers ``ov`` at flat positions ``oi`` (ascending) into qf and zero victims.

    Returns the number of pairs holding two outliers (before the victim rule)."""
    partner = oi ^ 1
    partner_out = mask[partner]
    is_even = (oi & 1) == 0
    if victim == "even":
        keep = ~partner_out | is_even
    else:
        # the partner of an outlier that is itself an outlier sits next to it in oi
        k = torch.arange(oi.numel())
        pos = (k + torch.where(is_even, 1, -1)).clamp_(0, oi.numel() - 1)
        mine, theirs = ov.abs(), ov[pos].abs()
        keep = ~partner_out | (mine > theirs) | ((mine == theirs) & is_even)
    qf[oi] = torch.where(keep, ov, torch.zeros_like(ov))
    qf[partner[keep]] = 0.0
    return int(partner_out.sum()) // 2


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_input(x, granularity: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise OvpTypeError(f"OVP quantize expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise OvpTypeError(f"OVP quantize expects a floating-point tensor, got dtype {x.dtype}; convert with .float()")
    if x.dim() == 0:
        raise OvpError("OVP quantize needs at least one dimension (pairs run along the last dimension)")
    if x.numel() == 0:
        raise OvpError(f"cannot OVP-quantize an empty tensor (shape {tuple(x.shape)})")
    if x.shape[-1] % 2:
        raise OvpError(
            f"OVP pairs neighbours along the last dimension, which must be even; got shape {tuple(x.shape)}. "
            "Pad it with olivine.golden.ovp.pad_to_even(x) (adds a zero column)."
        )
    if granularity == "row" and x.dim() < 2:
        raise OvpError(
            f"granularity='row' needs a 2-D or larger weight (rows = x.shape[0]); got shape {tuple(x.shape)}. "
            "Use granularity='tensor' for a vector."
        )
    x = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
    # a float64 sum of float32 values cannot overflow, so it is finite iff every element is
    if not bool(torch.isfinite(x.sum(dtype=torch.float64))):
        raise OvpError("OVP quantize got NaN or Inf values; clean the tensor first")
    return x


def _check_names(bits, normal, granularity, victim) -> None:
    if bits not in _NORMALS_BY_BITS:
        raise OvpError(f"bits must be 4 or 8, got {bits!r}")
    if normal not in _NORMALS_BY_BITS[bits]:
        raise OvpError(f"normal type {normal!r} is not valid with bits={bits}; expected one of {_NORMALS_BY_BITS[bits]}")
    if granularity not in GRANULARITIES:
        raise OvpError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if victim not in VICTIM_RULES:
        raise OvpError(f"victim rule must be one of {VICTIM_RULES}, got {victim!r}")


def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """x with its last dimension padded by one zero column when it is odd (else x unchanged)."""
    if not isinstance(x, torch.Tensor):
        raise OvpTypeError(f"pad_to_even expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise OvpError("pad_to_even needs at least one dimension")
    if x.shape[-1] % 2 == 0:
        return x
    return torch.nn.functional.pad(x, (0, 1))


# ---------------------------------------------------------------------------------------------
# alpha search
# ---------------------------------------------------------------------------------------------


def _x_max_rows(x2: torch.Tensor) -> torch.Tensor:
    mean = x2.mean(dim=-1)
    std = x2.std(dim=-1)
    return torch.maximum((mean + 3 * std).abs(), (mean - 3 * std).abs()).unsqueeze(1)


def _x_max_tensor(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean()
    std = x.std()
    return torch.maximum((mean + 3 * std).abs(), (mean - 3 * std).abs())


def _candidates(x_max: torch.Tensor) -> torch.Tensor:
    """[C, *x_max.shape]: x_max * (i * 0.01), the same float32 products as the released code."""
    return torch.stack([x_max * (i * 0.01) for i in ALPHA_STEPS])


def _mse(x: torch.Tensor, alpha: torch.Tensor, c: _Consts, victim: str, dim) -> torch.Tensor:
    scale = alpha / c.nmax
    err = _grid_values_f32(x, scale, c, victim).mul_(scale).sub_(x).square_()
    return err.mean(dim=dim) if dim is not None else err.mean()


def _search_rows(x2: torch.Tensor, c: _Consts, victim: str, *, exhaustive: bool = False, st: _RowStats | None = None,
                 need_best: bool = True):
    """Per-row search on x2 [rows, N] (rows >= 2): (alpha [rows, 1], best MSE [rows, 1], exact [rows, 1]).

    The released code scores all 88 candidates of every row in float32. Here a float64 model of
    every candidate's MSE (_model_scores: one histogram per row over a boundary table shared by
    all rows, plus the victim corrections of the pairs that can hold an outlier) first discards
    candidates that cannot be the minimum; only rows left with two or more candidates are scored
    with the exact float32 arithmetic. The float32 and model MSEs differ by less than a rigorous
    bound, so every candidate that could be the float32 minimum survives, and the selected alpha
    (and, with ``need_best``, its score) is that of the exhaustive search (``exhaustive=True``,
    kept as the reference for tests). Without ``need_best`` a row with a single survivor gets
    the model's interval instead of its float32 score: ``best`` holds the lower end and the
    third result the upper end (equal to ``best`` where the score is exact).
    """
    x_max = st.x_max if st is not None else _x_max_rows(x2)
    cand = _candidates(x_max)  # [C, rows, 1]
    if exhaustive:
        alpha, best = _select(_exact_scores_all(x2, cand, c, victim), cand, x_max)
        return alpha, best, best
    st = st if st is not None else _RowStats(x2)
    approx, bound = _model_scores(st, cand, c, victim)  # [C, rows] float64 each
    lo, hi = approx - bound, approx + bound
    survive = lo <= hi.min(dim=0).values
    # rows the model does not cover (huge or tiny magnitudes, sentinel-sized scores): exhaustive
    odd = st.odd | (hi.min(dim=0).values >= _SCORE_SENTINEL / 4)
    survive[:, odd | ~survive.any(0)] = True  # (no survivor: a NaN model, never trusted)
    n_surv = survive.sum(0)
    single = n_surv == 1
    if need_best:
        scored = survive
    else:
        scored = survive & ~single.unsqueeze(0)
    scores = torch.full(approx.shape, float("inf"), dtype=torch.float32)
    cand_idx, row_idx = scored.nonzero(as_tuple=True)
    if cand_idx.numel():
        scores[cand_idx, row_idx] = _exact_scores_pairs(x2, cand, row_idx, cand_idx, c, victim)
    if not need_best:
        # single survivors: its model interval stands in for the score (argmin is settled)
        sc, sr = (survive & single.unsqueeze(0)).nonzero(as_tuple=True)
        scores[sc, sr] = 0.0
    alpha, best = _select(scores, cand, x_max)
    upper = best.clone()
    if not need_best:
        sc, sr = (survive & single.unsqueeze(0)).nonzero(as_tuple=True)
        best[sr, 0] = lo[sc, sr].clamp(min=0.0).to(torch.float32)
        upper[sr, 0] = hi[sc, sr].to(torch.float32)
        upper[sr, 0] = torch.nextafter(upper[sr, 0], torch.tensor(float("inf")))
        best[sr, 0] = torch.nextafter(best[sr, 0], torch.tensor(0.0))
    return alpha, best, upper


def _exact_scores_all(x2, cand, c, victim) -> torch.Tensor:
    rows, n = x2.shape
    n_cand = cand.shape[0]
    scores = torch.empty(n_cand, rows, dtype=torch.float32)
    # Chunk so a [cands, rows, N] block stays under torch's parallel grain size: each op then
    # runs on one thread (no waiting on a busy second core) on cache-resident data. Every
    # reduction call still has at least 2 outputs, so torch reduces each row serially, as in the
    # released code's call on the whole [rows, N] matrix: the float32 MSEs are bit-identical.
    per_row = n_cand * n
    r_step = max(1, _CHUNK_ELEMENTS // per_row)
    c_step = n_cand if r_step > 1 else min(n_cand, max(2, _CHUNK_ELEMENTS // n))
    for r0 in range(0, rows, r_step):
        r1 = min(rows, r0 + r_step)
        xr = x2[r0:r1]
        for c0 in range(0, n_cand, c_step):
            c1 = min(n_cand, c0 + c_step)
            scores[c0:c1, r0:r1] = _mse(xr, cand[c0:c1, r0:r1], c, victim, dim=-1)
    return scores


def _exact_scores_pairs(x2, cand, row_idx, cand_idx, c, victim) -> torch.Tensor:
    """float32 MSE of row row_idx[k] at candidate cand_idx[k], for every k (same arithmetic as
    the exhaustive search: each reduction call has >= 2 outputs, one row reduced serially)."""
    n_pairs = row_idx.numel()
    n = x2.shape[1]
    out = torch.empty(n_pairs, dtype=torch.float32)
    step = max(2, _CHUNK_ELEMENTS // n)
    alphas = cand[cand_idx, row_idx]  # [P, 1]
    for k0 in range(0, n_pairs, step):
        k1 = min(n_pairs, k0 + step)
        rows_k, alpha_k = row_idx[k0:k1], alphas[k0:k1]
        if k1 - k0 == 1:  # keep two outputs per reduction call (see above)
            rows_k, alpha_k = rows_k.repeat(2), alpha_k.repeat(2, 1)
        out[k0:k1] = _mse(x2[rows_k], alpha_k, c, victim, dim=-1)[: k1 - k0]
    return out


#: relative displacement (in units of the unit roundoff 2**-24) by which the model's bin of an
#: element can differ from the float32 rounding decision: the float32 candidate x_max * (i/100)
#: (2 roundings), its scale alpha / normal_max (1), h = x / (scale / 2) (1), and on the model's
#: side u = |x| / x_max (1) and the float32 boundary table (1)
_DISPLACEMENT = 6 * 2.0**-24


class _RowStats:
    """Type-independent statistics of x2 [rows, N] for _model_scores (computed once per quantize
    call and shared by the int4 and flint4 searches)."""

    def __init__(self, x2: torch.Tensor):
        rows, n = x2.shape
        self.x_max = _x_max_rows(x2)  # [rows, 1] float32, the search's own value
        ax = x2.abs()
        self.ax = ax
        safe = torch.where(self.x_max > 0, self.x_max, torch.ones_like(self.x_max))
        self.u = ax / safe  # |x| / x_max: the boundary table is shared by all rows in these units
        self.sum_abs = ax.sum(-1, dtype=torch.float64)
        self.sum_sq = torch.linalg.vector_norm(ax, dim=-1, dtype=torch.float64).square()  # rel. error ~1e-16
        self.pmax_u = self.u.view(rows, -1, 2).amax(-1)  # [rows, N/2]
        xm = self.x_max.squeeze(1)
        # magnitudes where float32 over/underflow would void the model's error bound
        self.odd = (xm > 2.0**60) | ((xm > 0) & (xm < 2.0**-60))
        self.n = n


class _Boundaries:
    """Row-independent model tables of one format: every candidate's rounding boundaries in
    units of x_max (midpoints m_j of the non-negative union grid times (i / 100) / normal_max),
    merged into one sorted table T, and a float32-bit-pattern lookup that bins |x| / x_max into
    T in a few operations per element (instead of a binary search)."""

    def __init__(self, c: _Consts):
        fmt = c.fmt
        gpos = torch.tensor(sorted({abs(v) for v in fmt.union_grid}), dtype=torch.float64)  # [K+1]
        mids = (gpos[:-1] + gpos[1:]) / 2  # [K]
        steps = torch.tensor([i * 0.01 for i in ALPHA_STEPS], dtype=torch.float64)
        table = (steps[:, None] * mids[None, :] / c.nmax).reshape(-1)
        t64, inverse = torch.unique(table, sorted=True, return_inverse=True)
        self.n_bounds = t64.numel()
        self.pos = inverse.view(len(ALPHA_STEPS), -1)  # [C, K] index of each boundary in T
        self.t32 = t64.to(torch.float32)
        self.gpos, self.mids = gpos, mids
        k = mids.numel()
        self.g_top = float(gpos[-1])
        cb = (gpos[1:] - gpos[:-1]) * mids  # gap * |midpoint| per boundary
        cross = torch.maximum(torch.cat([cb[:1], cb]), torch.cat([cb, cb[-1:]]))  # per interval [K+1]
        # summation by parts: sum_j w_j cnt_j = w_K n - sum_{j<K} (w_{j+1} - w_j) below_j
        self.w = torch.stack([gpos[1:] - gpos[:-1], gpos[1:] ** 2 - gpos[:-1] ** 2, cross[1:] - cross[:-1]], dim=1)  # [K, 3]
        self.cross_top = float(cross[-1])
        self.k = k
        self.thr = fmt.outlier_threshold * steps / c.nmax  # [C] outlier threshold in x_max units
        # interval[c, e]: grid index (into gpos) of an element in table bin e at candidate c
        bins = torch.arange(self.n_bounds + 1).expand(self.pos.shape[0], -1).contiguous()
        self.interval = torch.searchsorted(self.pos.contiguous(), bins)  # boundaries of c below bin e
        _, counts = torch.unique_consecutive(self.t32, return_counts=True)
        ends = counts.cumsum(0)
        self.dup_first = torch.repeat_interleave(ends - counts, counts)  # first index of equal float32 values
        self.dup_last = torch.repeat_interleave(ends - 1, counts)
        self._build_lookup()

    def near_bound(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """[..., 2] bool: u within twice the displacement of table value T[e-1] (below) / T[e] (above)."""
        tol = 2 * _DISPLACEMENT
        t = self.t32.double()
        lo_v = t[(e - 1).clamp(min=0)]
        hi_v = t[e.clamp(max=self.n_bounds - 1)]
        ud = u.double()
        near_lo = (e > 0) & (ud - lo_v <= tol * lo_v)
        near_hi = (e < self.n_bounds) & (hi_v - ud <= tol * hi_v)
        return torch.stack([near_lo, near_hi], dim=-1)

    def _build_lookup(self) -> None:
        """Bins of the float32 bit pattern of u (exponent and top mantissa bits), fine enough that
        each holds at most one distinct table value: bin_of is then two lookups and a compare."""
        t = self.t32
        values, counts = torch.unique_consecutive(t, return_counts=True)
        lo_bits = int(torch.tensor([float(t[0]) / 2], dtype=torch.float32).view(torch.int32)) & ~((1 << 23) - 1)
        hi_bits = int(torch.tensor([float(t[-1]) * 2], dtype=torch.float32).view(torch.int32))
        for fbits in range(8, 21):  # mantissa bits per octave
            sh = 23 - fbits
            n_keys = ((hi_bits - lo_bits) >> sh) + 1
            edges = ((torch.arange(n_keys + 1, dtype=torch.int64) << sh) + lo_bits).to(torch.int32).view(torch.float32)
            left = torch.searchsorted(values, edges)  # distinct values below each bin edge
            if int((left[1:] - left[:-1]).max()) <= 1:
                break
        else:  # pragma: no cover - the formats' tables separate by 20 bits
            raise AssertionError("OVP boundary table: values too close for the bit-pattern lookup")
        below = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])  # entries < values[i]
        has = (left[1:] - left[:-1]) == 1
        idx = left[:-1].clamp(max=values.numel() - 1)
        # row 0: below the table; row n_keys + 1: above it
        inf = torch.tensor([float("inf")])
        self.lut_val = torch.cat([inf, torch.where(has, values[idx], inf), inf])
        self.lut_lo = torch.cat([torch.zeros(1, dtype=torch.int64), below[left[:-1]], torch.tensor([self.n_bounds])])
        self.lut_hi = torch.cat([torch.zeros(1, dtype=torch.int64), below[(left[:-1] + 1).clamp(max=values.numel())],
                                 torch.tensor([self.n_bounds])])
        self.lut_shift, self.lut_bits0, self.lut_keys = sh, lo_bits, n_keys

    def bin_of(self, u: torch.Tensor) -> torch.Tensor:
        """For float32 u >= 0: the number of table entries <= u (torch.bucketize(u, T, right=True))."""
        key = ((u.view(torch.int32) - self.lut_bits0) >> self.lut_shift).add_(1).clamp_(0, self.lut_keys + 1)
        return torch.where(u >= self.lut_val[key], self.lut_hi[key], self.lut_lo[key])


_BOUNDARIES: dict[str, _Boundaries] = {}


def _boundaries(c: _Consts) -> _Boundaries:
    b = _BOUNDARIES.get(c.fmt.name)
    if b is None:
        b = _BOUNDARIES[c.fmt.name] = _Boundaries(c)
    return b


def _model_scores(st: _RowStats, cand: torch.Tensor, c: _Consts, victim: str):
    """float64 model of the MSE of every candidate and a bound on its distance to the float32
    MSE: ([C, rows], [C, rows]). Only used to prune candidates.

    Per row, one histogram of |x| / x_max over the shared boundary table T (counts and sums of
    |x|); its prefix sums at each candidate's own boundaries give the count and sum of every
    grid interval, so with s the candidate's scale and g_j its grid points
    sse = sum x^2 - 2 s sum_j g_j S1_j + s^2 sum_j g_j^2 n_j (exact in real arithmetic, ties
    included: a midpoint is equally far from both neighbours; the grid is symmetric, so |x| is
    enough). The victim rule's change comes from _model_victim_corrections.
    """
    bt = _boundaries(c)
    rows, n = st.u.shape
    n_cand = cand.shape[0]
    scale = cand.double().squeeze(-1) / c.nmax  # [C, rows]
    nb = bt.n_bounds + 1
    d1 = torch.empty(rows, n_cand, dtype=torch.float64)
    d2 = torch.empty_like(d1)
    cs = torch.empty_like(d1)
    pos = bt.pos.reshape(-1)
    step = max(1, min((1 << 21) // nb, (1 << 20) // n))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        nr = r1 - r0
        e = bt.bin_of(st.u[r0:r1])
        e += (torch.arange(nr) * nb).unsqueeze(1)
        e = e.view(-1)
        cnt = torch.bincount(e, minlength=nr * nb).view(nr, nb).to(torch.float64)
        s1 = torch.bincount(e, weights=st.ax[r0:r1].reshape(-1).double(), minlength=nr * nb).view(nr, nb)
        below0 = cnt.cumsum_(-1)[:, pos].view(nr, n_cand, bt.k)
        below1 = s1.cumsum_(-1)[:, pos].view(nr, n_cand, bt.k)
        w0 = below0 @ bt.w[:, 1:]  # [R, C, 2]: sum (g_{j+1}^2 - g_j^2) below0, sum dcross below0
        d1[r0:r1] = bt.g_top * st.sum_abs[r0:r1, None] - below1 @ bt.w[:, 0]
        d2[r0:r1] = bt.g_top**2 * n - w0[..., 0]
        cs[r0:r1] = bt.cross_top * n - w0[..., 1]
    d1, d2, cs = d1.t(), d2.t(), cs.t()  # [C, rows]
    ss = st.sum_sq.unsqueeze(0)
    sse = ss - 2 * scale * d1 + scale.square() * d2
    corr, unsure = _model_victim_corrections(st, scale, c, victim)
    sse = (sse + corr).clamp_(min=0.0)
    # Bound on n * |float32 MSE - model MSE| (u = 2**-24), doubled for safety:
    # - per element e = fl(fl(q s) - x): |e_f^2 - e^2| <= 4u |q s| |e| + 5u e^2; summed with
    #   Cauchy-Schwarz and sum (q s)^2 <= 2 sum x^2 + 2 sse;
    # - torch's float32 cascade summation (24u) and the division by n (u);
    # - an element within relative _DISPLACEMENT of a midpoint may round to the other neighbour:
    #   its squared error changes by <= 2 * d * gap * |m| * s^2 (cs counts gap*|m| per element);
    # - pairs where such an element can flip the victim rule: both squares (``unsure``);
    # - float64 cancellation in the model (2**-40 of the terms) and float32 underflow (n 2**-126).
    u = 2.0**-24
    arith = 4 * u * (sse * (2 * ss + 2 * sse)).sqrt() + 30 * u * sse
    crossing = 2 * _DISPLACEMENT * scale.square() * cs
    model64 = 2.0**-40 * (ss + 2 * scale * d1.abs() + scale.square() * d2)
    bound = 2 * (arith + crossing + unsure + model64) + n * 2.0**-126
    return sse / n, bound / n


def _model_victim_corrections(st: _RowStats, scale, c: _Consts, victim: str):
    """Change of the squared error from the victim rule and the uncertainty allowance of pairs
    whose victim decision the model cannot settle: ([C, rows], [C, rows]) float64.

    Only (pair, candidate) entries where the pair's larger |x| reaches the candidate's outlier
    threshold (less a margin) are visited: a ragged list, so rows with many outliers cost more
    and plain rows almost nothing. An element's grid point at candidate c comes from its bin in
    the shared table (bt.interval[c, bin]), the same assignment the histogram uses."""
    bt = _boundaries(c)
    n_cand, rows = scale.shape
    corr = torch.zeros(rows * n_cand, dtype=torch.float64)
    unsure = torch.zeros(rows * n_cand, dtype=torch.float64)
    lim = (bt.thr * (1 - 4 * _DISPLACEMENT)).to(torch.float32)
    hit_r, hit_p = (st.pmax_u >= lim[0]).nonzero(as_tuple=True)
    if hit_r.numel() == 0:
        return corr.view(rows, n_cand).t(), unsure.view(rows, n_cand).t()
    n_c = torch.searchsorted(lim, st.pmax_u[hit_r, hit_p], right=True)  # candidates 0..n_c-1 qualify
    # per pair: both elements' |x|, u and table bins; then dense [pairs, C] blocks (entries past
    # a pair's n_c are masked), summed into the pair's row
    ua, ub = st.u[hit_r, 2 * hit_p], st.u[hit_r, 2 * hit_p + 1]
    ea, eb = bt.bin_of(ua), bt.bin_of(ub)
    doubt_a, doubt_b = bt.near_bound(ua, ea), bt.near_bound(ub, eb)
    xa_all = st.ax[hit_r, 2 * hit_p].double()
    xb_all = st.ax[hit_r, 2 * hit_p + 1].double()
    scale_t = scale.t().contiguous()  # [rows, C]
    iv_t = bt.interval.t().contiguous()  # [bins, C]
    corr2, unsure2 = corr.view(rows, n_cand), unsure.view(rows, n_cand)
    cols = torch.arange(n_cand)
    nmax = c.nmax
    step = max(1, (1 << 18) // n_cand)
    for k0 in range(0, hit_r.numel(), step):
        k = slice(k0, min(hit_r.numel(), k0 + step))
        r = hit_r[k]
        s = scale_t.index_select(0, r)  # [P, C]
        qa = bt.gpos[iv_t.index_select(0, ea[k])]
        qb = bt.gpos[iv_t.index_select(0, eb[k])]
        xa, xb = xa_all[k, None], xb_all[k, None]
        valid = cols < n_c[k, None]
        oa, ob = (qa > nmax) & valid, (qb > nmax) & valid
        if victim == "even":
            keep_a = oa
        else:
            keep_a = oa & (~ob | (qa >= qb))
        zero_b, zero_a = keep_a, ob & ~keep_a
        # the zeroed element's squared error grows from (q s - x)^2 to x^2: by q s (2x - q s)
        qs_a, qs_b = qa * s, qb * s
        d = torch.where(zero_b, qs_b * (2 * xb - qs_b), 0.0) + torch.where(zero_a, qs_a * (2 * xa - qs_a), 0.0)
        corr2.index_add_(0, r, d)
    # pairs with an element within the displacement of one of a candidate's boundaries: the
    # victim decision may differ in float32; allow both squares at those candidates
    pd = (doubt_a.any(-1) | doubt_b.any(-1)).nonzero().squeeze(1)
    if pd.numel():
        dk = torch.zeros(pd.numel(), n_cand, dtype=torch.bool)
        for e_el, db in ((ea[pd], doubt_a[pd]), (eb[pd], doubt_b[pd])):
            lo_first = bt.dup_first[(e_el - 1).clamp(min=0)]
            hi_last = bt.dup_last[e_el.clamp(max=bt.n_bounds - 1)]
            # candidate c has a boundary among the table values equal to T[e-1] (resp. T[e])
            has_lo = iv_t[e_el] > iv_t[lo_first]
            has_hi = iv_t[(hi_last + 1).clamp(max=bt.n_bounds)] > iv_t[e_el]
            dk |= (db[:, :1] & has_lo) | (db[:, 1:] & has_hi)
        dk &= cols < n_c[pd, None]
        amount = (xa_all[pd].square() + xb_all[pd].square())[:, None]
        unsure2.index_add_(0, hit_r[pd], torch.where(dk, amount, 0.0))
    return corr.view(rows, n_cand).t(), unsure.view(rows, n_cand).t()


def _select(scores: torch.Tensor, cand: torch.Tensor, x_max: torch.Tensor):
    """First candidate with the smallest score below the sentinel (strict <), else x_max."""
    s = torch.nan_to_num(scores, nan=float("inf"))  # NaN never wins a "<"
    best, arg = s.min(dim=0)  # torch returns the first index of the minimum
    ok = best < _SCORE_SENTINEL
    chosen = torch.gather(cand.squeeze(-1), 0, arg.unsqueeze(0)).squeeze(0)
    alpha = torch.where(ok, chosen, x_max.squeeze(-1)).unsqueeze(-1)
    best = torch.where(ok, best, torch.full_like(best, _SCORE_SENTINEL)).unsqueeze(-1)
    return alpha, best


def _search_tensor(x: torch.Tensor, c: _Consts, victim: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One alpha for the whole tensor (also used for a single row): (alpha, best MSE), 0-d."""
    x_max = _x_max_tensor(x)
    best = torch.tensor(_SCORE_SENTINEL, dtype=torch.float32)
    alpha = x_max.clone()
    for i in ALPHA_STEPS:
        a = x_max * (i * 0.01)
        scale = a / c.nmax
        with _one_thread():  # elementwise work: thread-count independent (see _one_thread)
            err = _grid_values_f32(x, scale, c, victim).mul_(scale).sub_(x).square_()
        score = err.mean()  # torch's thread setting decides the reduction order, as released
        if score < best:
            best, alpha = score, a
    return alpha, best


def search_alpha(x: torch.Tensor, normal: str, *, granularity: str = "row", victim: str = "larger"):
    """The MSE alpha search for one normal type: (alpha, best MSE).

    Row granularity: both [rows, 1] float32 (rows of x.reshape(x.shape[0], -1)). Tensor: 0-d.
    """
    bits = get_format(normal).bits if normal in FORMATS else 4
    _check_names(bits, normal, granularity, victim)
    if normal == "auto":
        raise OvpError("search_alpha needs a concrete normal type (int4, flint4 or int8), not 'auto'")
    x = _check_input(x, granularity)
    return _search(x, _consts(normal), granularity, victim)


def _search(x: torch.Tensor, c: _Consts, granularity: str, victim: str, cache: dict | None = None,
            need_best: bool = True):
    if granularity == "tensor":
        a, b = _search_tensor(x, c, victim)
        return (a, b) if need_best else (a, b, b)
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[0] == 1:
        # one row: the released code's row mean is then a single-output reduction; reproduce it
        a, b = _search_tensor_rowshape(x2, c, victim)
        return (a, b) if need_best else (a, b, b)
    cache = {} if cache is None else cache
    with _one_thread():
        if "row_stats" not in cache:
            cache["row_stats"] = _RowStats(x2)
        alpha, best, upper = _search_rows(x2, c, victim, st=cache["row_stats"], need_best=need_best)
    return (alpha, best) if need_best else (alpha, best, upper)


@contextlib.contextmanager
def _one_thread():
    """Run the per-row search on one torch thread, then restore the setting.

    Its results do not depend on the thread count (every reduction has >= 2 outputs and torch
    then reduces each row serially), and on a shared 2-core machine torch's OpenMP workers
    spent more time waiting for the busy second core than computing (2-3x slower, see
    docs/benchmarks.md). The tensor-granularity search keeps torch's setting: its whole-tensor
    means are reduced in a thread-count-dependent order, as in the released code.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _search_tensor_rowshape(x2: torch.Tensor, c: _Consts, victim: str):
    """Single-row search with the reductions shaped like the released code's ([1, N] -> [1])."""
    x_max = _x_max_rows(x2)  # [1, 1]
    best = torch.full_like(x_max, _SCORE_SENTINEL)
    alpha = x_max.clone()
    for i in ALPHA_STEPS:
        a = x_max * (i * 0.01)
        score = _mse(x2, a, c, victim, dim=-1).unsqueeze(1)
        better = score < best
        alpha[better] = a[better]
        best[better] = score[better]
    return alpha, best


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OvpTensor:
    """An OVP-quantized tensor.

    codes:   uint8. 4-bit: one byte per pair, shape [..., last/2] (low nibble = even element).
             8-bit: shape [..., last], bytes (2k, 2k+1) = low/high byte of pair word k.
    scale:   float32, one LSB in real units: [rows, 1] (granularity "row") or 0-d ("tensor").
    alpha:   float32 clipping value(s) (scale * normal_max), same shape as scale.
    normal:  the normal type used ("int4", "flint4", "int8"); bits: 4 or 8.
    shape:   shape of the original tensor; victim: the victim rule used; granularity.
    mse:     float32 mean squared error of dequantize() against the input (per row or 0-d).
    outlier_outlier_pairs: pairs whose two elements were both outliers (one became the victim).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    alpha: torch.Tensor
    normal: str
    bits: int
    shape: torch.Size
    victim: str
    granularity: str
    mse: torch.Tensor = field(repr=False)
    outlier_outlier_pairs: int = 0

    @property
    def format(self) -> OvpFormat:
        return get_format(self.normal)

    def decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(exponent, integer), both int8 of ``shape``: value = integer << exponent."""
        return decode(self.codes, self.normal, bits=self.bits)

    def grid_values(self) -> torch.Tensor:
        """Integer grid values (LSB units, victims applied) as int32 of ``shape``."""
        return unpack(self.codes, self.normal, bits=self.bits)

    def dequantize(self) -> torch.Tensor:
        """float32 values: grid_values * scale (per row or per tensor)."""
        v = self.grid_values().to(torch.float32)
        if self.granularity == "row":
            return (v.reshape(self.shape[0], -1) * self.scale).reshape(self.shape)
        return v * self.scale


def quantize(
    x: torch.Tensor,
    *,
    bits: int = 4,
    normal: str = "auto",
    granularity: str = "row",
    victim: str = "larger",
    alpha=None,
) -> OvpTensor:
    """OVP-quantize x; pairs are neighbours along the last dimension (which must be even).

    bits 4: normal "auto" (int4 or flint4, whichever has the lower summed best MSE; int4 on a
    tie), "int4" or "flint4". bits 8: "int8" (or "auto" = "int8").
    granularity "row": one alpha per row of x.reshape(x.shape[0], -1) (weights); "tensor": one
    alpha (activations). alpha: skip the search and use this clipping value (a positive scalar,
    or one per row for "row"); with normal="auto" the type with the lower MSE at it is kept.
    victim: "larger" (default) or "even" (the released code; bit-exact with it).
    """
    _check_names(bits, normal, granularity, victim)
    x = _check_input(x, granularity)
    types = ("int4", "flint4") if (bits == 4 and normal == "auto") else ("int8",) if bits == 8 else (normal,)
    rows = x.shape[0]
    if alpha is not None:
        alpha_t = _check_alpha(alpha, granularity, rows)
        _check_zero_alpha(x, alpha_t, granularity)
    best_type, best_alpha, best_total = None, None, None
    cache: dict = {}
    if alpha is None and len(types) == 1:
        best_type = types[0]
        best_alpha = _search(x, _consts(best_type), granularity, victim, cache, need_best=False)[0]
    elif alpha is None:
        best_type, best_alpha = _choose_type(x, types, granularity, victim, cache)
    else:
        for name in types:
            c = _consts(name)
            total = _final_mse(x, alpha_t, c, granularity, victim).sum().item()
            if best_total is None or total < best_total:  # strict: the earlier type (int4) wins ties
                best_type, best_alpha, best_total = name, alpha_t, total
    with _one_thread() if (granularity == "row" and x.shape[0] > 1) else contextlib.nullcontext():
        return _quantize_at(x, best_type, best_alpha, bits, granularity, victim)


def _choose_type(x, types, granularity, victim, cache):
    """(type, alpha) of normal="auto": the type with the smaller summed best float32 MSE (the
    first, int4, on a tie). The model's per-row intervals usually settle the comparison without
    the float32 scores; when they overlap the exact scores decide."""
    found = {name: _search(x, _consts(name), granularity, victim, cache, need_best=False) for name in types}
    rows = found[types[0]][1].numel()
    slack = 2 * (rows + 24) * 2.0**-24  # float32 summation of the per-row scores
    lo = {n: float(f[1].double().sum()) * (1 - slack) for n, f in found.items()}
    hi = {n: float(f[2].double().sum()) * (1 + slack) for n, f in found.items()}
    first, second = types
    if lo[second] >= hi[first]:
        return first, found[first][0]
    if hi[second] < lo[first]:
        return second, found[second][0]
    best_type, best_alpha, best_total = None, None, None
    for name in types:
        a, score = _search(x, _consts(name), granularity, victim, cache)
        total = score.sum().item()
        if best_total is None or total < best_total:  # strict: the earlier type (int4) wins ties
            best_type, best_alpha, best_total = name, a, total
    return best_type, best_alpha


def _quantize_at(x, best_type, best_alpha, bits, granularity, victim) -> OvpTensor:
    rows = x.shape[0]
    c = _consts(best_type)
    scale = best_alpha / c.nmax
    xv = x.reshape(rows, -1) if granularity == "row" else x
    stats: dict = {}
    q = _grid_values_f32(xv, scale, c, victim, stats).reshape(x.shape)
    values = q.to(torch.int32)
    codes = _encode_values(values, c, check=False)
    deq = (q.reshape(rows, -1) * scale).reshape(x.shape) if granularity == "row" else q * scale
    err = (deq - x).square()
    mse = err.reshape(rows, -1).mean(-1, keepdim=True) if granularity == "row" else err.mean()
    return OvpTensor(
        codes=codes,
        scale=scale.to(torch.float32),
        alpha=best_alpha.to(torch.float32),
        normal=best_type,
        bits=bits,
        shape=x.shape,
        victim=victim,
        granularity=granularity,
        mse=mse,
        outlier_outlier_pairs=stats["outlier_outlier"],
    )


def quantize_reference(x: torch.Tensor, *, bits: int = 4, normal: str = "auto", granularity: str = "row",
                       victim: str = "larger") -> OvpTensor:
    """:func:`quantize` with the exhaustive float32 search of the released code (every candidate
    of every row scored, the type chosen from the exact summed scores). Slow: the reference the
    pruned search is tested against."""
    _check_names(bits, normal, granularity, victim)
    x = _check_input(x, granularity)
    types = ("int4", "flint4") if (bits == 4 and normal == "auto") else ("int8",) if bits == 8 else (normal,)
    best_type, best_alpha, best_total = None, None, None
    for name in types:
        c = _consts(name)
        x2 = x.reshape(x.shape[0], -1)
        if granularity == "row" and x2.shape[0] > 1:
            with _one_thread():
                a, score = _search_rows(x2, c, victim, exhaustive=True)[:2]
        else:
            a, score = _search(x, c, granularity, victim)
        total = score.sum().item()
        if best_total is None or total < best_total:
            best_type, best_alpha, best_total = name, a, total
    with _one_thread() if (granularity == "row" and x.shape[0] > 1) else contextlib.nullcontext():
        return _quantize_at(x, best_type, best_alpha, bits, granularity, victim)


def _check_alpha(alpha, granularity: str, rows: int) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float32).detach().cpu()
    if granularity == "tensor":
        if a.numel() != 1:
            raise OvpError(f"granularity='tensor' takes one alpha, got {a.numel()} values")
        a = a.reshape(())
    else:
        if a.numel() == 1:
            a = a.reshape(1, 1).expand(rows, 1).clone()
        elif a.numel() == rows:
            a = a.reshape(rows, 1).clone()
        else:
            raise OvpError(f"granularity='row' takes one alpha or one per row ({rows}), got {a.numel()} values")
    if not bool(torch.isfinite(a).all()) or not bool((a >= 0).all()):
        raise OvpError("alpha must be finite and > 0 (0 only for an all-zero row)")
    return a


def _check_zero_alpha(x: torch.Tensor, alpha: torch.Tensor, granularity: str) -> None:
    """alpha = 0 is what the search itself gives an all-zero row; anywhere else it is an error."""
    zero = alpha == 0
    if not bool(zero.any()):
        return
    xv = x.reshape(1, -1) if granularity == "tensor" else x.reshape(x.shape[0], -1)
    nonzero_rows = (xv != 0).any(dim=1)
    bad = nonzero_rows & zero.reshape(-1).expand_as(nonzero_rows)
    if bool(bad.any()):
        raise OvpError(f"alpha must be > 0 for a row with non-zero values (row {int(bad.nonzero()[0])}); "
                       "alpha = 0 is only valid for an all-zero row")


def _final_mse(x, alpha, c, granularity, victim):
    if granularity == "tensor":
        return _mse(x, alpha, c, victim, dim=None)
    x2 = x.reshape(x.shape[0], -1)
    return _mse(x2, alpha, c, victim, dim=-1).unsqueeze(1)


def fake_quant(x: torch.Tensor, **kwargs) -> torch.Tensor:
    """quantize(x, **kwargs).dequantize(): the float32 OVP quantize-dequantize of x."""
    return quantize(x, **kwargs).dequantize()


# ---------------------------------------------------------------------------------------------
# Codes <-> grid values <-> operands
# ---------------------------------------------------------------------------------------------


def _encode_values(values: torch.Tensor, c: _Consts, check: bool = True) -> torch.Tensor:
    """Codes of grid values; ``check=False`` skips the validation for values quantize itself
    produced (on the grid, victims applied)."""
    fmt = c.fmt
    if values.shape[-1] % 2:
        raise OvpError(f"OVP codes need an even last dimension, got shape {tuple(values.shape)}")
    v = values.to(torch.int64) if check else values.to(torch.int32)
    if check and bool((v.abs() > fmt.outlier_max).any()):
        raise OvpFormatError(f"grid values beyond +-{fmt.outlier_max} are not {fmt.name} OVP values")
    code = c.code_lut[(v + c.offset).long()]
    if check and bool((code < 0).any()):
        bad = v[code < 0][0].item()
        raise OvpFormatError(f"{bad} is not a value of the {fmt.name} OVP grid (normals and outliers)")
    pairs = v.reshape(*v.shape[:-1], v.shape[-1] // 2, 2)
    cp = code.reshape(pairs.shape)
    out = pairs.abs() > fmt.normal_max
    out_e, out_o = out[..., 0], out[..., 1]
    if check:
        if bool((out_e & out_o).any()):
            raise OvpFormatError("a pair holds two outliers: apply a victim rule first (quantize does)")
        if bool((out_e & (pairs[..., 1] != 0)).any()) or bool((out_o & (pairs[..., 0] != 0)).any()):
            raise OvpFormatError("an outlier's partner (its victim) must be 0")
    ident = torch.tensor(fmt.identifier, dtype=cp.dtype)
    even = torch.where(out_o, ident, cp[..., 0])  # an outlier's partner holds the identifier
    odd = torch.where(out_e, ident, cp[..., 1])
    if fmt.bits == 4:
        return (even | (odd << 4)).to(torch.uint8)
    return torch.stack([even, odd], dim=-1).reshape(values.shape).to(torch.uint8)


def encode(values: torch.Tensor, normal: str) -> torch.Tensor:
    """Codes (uint8) of integer grid values (victims applied) along the last dimension.

    4-bit normals: [..., last/2], one byte per pair (low nibble = even element). int8: [..., last],
    the little-endian bytes of each pair word. Raises for values that are not on the grid, two
    outliers in a pair, or an outlier whose partner is not 0.
    """
    if not isinstance(values, torch.Tensor):
        raise OvpTypeError(f"encode expects a torch.Tensor of grid values, got {type(values).__name__}")
    if values.is_floating_point():
        if not bool((values == values.round()).all()):
            raise OvpFormatError("grid values must be integers")
    elif values.dtype == torch.bool or values.is_complex():
        raise OvpTypeError(f"grid values must be integers, got dtype {values.dtype}")
    if values.dim() == 0:
        raise OvpError("encode needs at least one dimension")
    return _encode_values(values.cpu(), _consts(_check_normal(normal)))


#: ``pack`` is ``encode`` (grid values -> packed codes).
pack = encode


def _check_normal(normal: str) -> str:
    get_format(normal)  # raises with the valid names
    return normal


def _pair_index(codes: torch.Tensor, normal: str, bits) -> tuple[torch.Tensor, _Consts, tuple]:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise OvpTypeError("OVP codes must be a torch.uint8 tensor")
    c = _consts(_check_normal(normal))
    if bits is not None and bits != c.fmt.bits:
        raise OvpError(f"normal type {normal!r} is {c.fmt.bits}-bit, but bits={bits}")
    if codes.dim() == 0:
        raise OvpError("OVP codes need at least one dimension")
    lead = tuple(codes.shape[:-1])
    if c.fmt.bits == 4:
        idx = codes.to(torch.long)
        shape = lead + (codes.shape[-1] * 2,)
    else:
        if codes.shape[-1] % 2:
            raise OvpError(f"8-bit OVP codes hold two bytes per pair; last dimension {codes.shape[-1]} is odd")
        b = codes.to(torch.long).reshape(*lead, codes.shape[-1] // 2, 2)
        idx = b[..., 0] | (b[..., 1] << 8)
        shape = lead + (codes.shape[-1],)
    return idx, c, shape


def decode(codes: torch.Tensor, normal: str, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(exponent, integer) int8 operands of every element: value = integer << exponent."""
    idx, c, shape = _pair_index(codes, normal, bits)
    return c.dec_exp[idx].reshape(shape), c.dec_int[idx].reshape(shape)


def unpack(codes: torch.Tensor, normal: str, bits: int | None = None) -> torch.Tensor:
    """Integer grid values (int32) of the codes (the inverse of ``encode``)."""
    idx, c, shape = _pair_index(codes, normal, bits)
    return c.dec_val[idx].reshape(shape)


def pair_stats(t: OvpTensor) -> dict[str, float]:
    """Pair statistics of a quantized tensor.

    Returns {"pairs": count, "normal_normal": fraction, "outlier_victim": fraction,
    "outlier_outlier": fraction}. ``outlier_victim`` counts the stored outlier-victim pairs
    (read from the codes); ``outlier_outlier`` counts the pairs among them whose two elements
    were both outliers before the victim rule (a collision: one outlier was lost).
    """
    if not isinstance(t, OvpTensor):
        raise OvpTypeError(f"pair_stats expects an OvpTensor, got {type(t).__name__}")
    ident = t.format.identifier
    if t.bits == 4:
        lo, hi = t.codes & 0xF, t.codes >> 4
    else:
        b = t.codes.reshape(*t.codes.shape[:-1], -1, 2)
        lo, hi = b[..., 0], b[..., 1]
    ov = (lo == ident) ^ (hi == ident)
    total = ov.numel()
    n_ov = int(ov.sum())
    return {
        "pairs": total,
        "normal_normal": (total - n_ov) / total,
        "outlier_victim": n_ov / total,
        "outlier_outlier": t.outlier_outlier_pairs / total,
    }
