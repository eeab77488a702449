"""Error-compensating (GPTQ-style, second-order) weight quantization onto the OVP4 and INT4 grids.

Round-to-nearest (RTN) quantizes every weight on its own. GPTQ (Frantar et al., 2022) quantizes
the columns of W [N, K] one after another and, after each, moves the not-yet-quantized columns
so that the layer OUTPUT on calibration inputs X [n, K] changes as little as possible. With
H = X^T X (+ damping) and U the upper Cholesky factor of H^-1 (H^-1 = U^T U), fixing column j at
q_j costs ((w_j - q_j) / U_jj)^2 (per row, in the H-metric) and the optimal compensation is
``W[:, j+1:] -= ((w_j - q_j) / U_jj) * U[j, j+1:]``. Columns are processed in blocks of 128 with
lazy updates of the columns beyond the block (same arithmetic, fewer large matmuls).

OVP pairs as the unit: OVP encodes the adjacent weights (2p, 2p+1) along K together: either two
normals, or one outlier and a 0 victim. So the GPTQ step here quantizes one PAIR: three
candidate pairs are built sequentially (the odd column sees the compensation of the even
column's error before it is rounded)

    A  (normal, normal)      B  (outlier, 0)      C  (0, outlier)

and per row the pair is chosen either by OVP's own rule (``pair_choice="rule"``: the structure
round-to-nearest on the union grid with the "larger" victim rule would give) or by the smallest
second-order cost e0^2 + e1^2 (``pair_choice="error"``). Both errors are then propagated. Every
chosen pair is a valid OVP pair, so the result encodes with ``golden.ovp.encode`` and the whole
integer stack below (compiler, simulator, RTL) is unchanged: GPTQ only changes which grid values
are chosen. The per-row alpha (scale) and the normal type come from OVP's RTN search on W
(``scale_mode="rtn"``) or from repeating that search on the compensated weights GPTQ actually
rounded and running GPTQ again (``"refit"``).

``act_order=True`` processes pairs by decreasing H diagonal (the pair's two columns stay
adjacent), the usual GPTQ ordering that quantizes the most sensitive inputs first.

Sequential calibration (:func:`quantize_linears_sequential`, method ``"gptq-seq"``): the layers
are quantized in order and each linear's Hessian is built from the INT8 fake-quantized inputs the
already-quantized model (earlier layers, earlier stages of its own layer) feeds it, instead of
the float model's inputs (:func:`quantize_linears`, method ``"gptq"``).

Group scales (``group_factors``): an [N, K/g] factor per row and K-group multiplies the row scale.
"mult4" (m / 8, m = 1..15) has an integer form (:func:`to_qweight`: the contract's group
multipliers, docs/contract.md 2a); "pow2" and "mult8" are float measurements only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from olivine import progress

from .model import FloatLlama, LlamaConfig, LlamaWeights
from .ovp_format import get_format

__all__ = ["GptqError", "GptqWeight", "hessian", "collect_hessians", "CALIBRATION_WINDOW", "gptq_ovp", "gptq_int4", "to_qweight",
           "quantize_linears", "quantize_linears_sequential", "smoothing_scales", "smooth_down_inputs",
           "rescale_linears", "head_tied_smoothing_scales", "kv_rows_of",
           "norm_smoothing_scales", "fold_norm_scales",
           "rtn_ovp_values", "rtn_grouped", "group_factor_candidates", "choose_group_factors", "PAIR_CHOICES",
           "SCALE_MODES"]

PAIR_CHOICES = ("rule", "error")
SCALE_MODES = ("rtn", "refit")
#: relative damping: lambda = DAMP * mean(diag(H)) is added to the diagonal (GPTQ's default)
DAMP = 0.01
_BLOCK = 128


class GptqError(ValueError):
    """Bad input to the GPTQ quantizer (the message says what to change)."""


@dataclass
class GptqWeight:
    """GPTQ result. values: int32 [N, K] grid values; scale: float32 [N] row scale (one LSB);
    factors: float32 [N, K/g] group factors or None; normal: OVP normal type (None for int4)."""

    kind: str
    values: torch.Tensor
    scale: torch.Tensor
    normal: str | None
    factors: torch.Tensor | None = None
    group: int | None = None

    def scale_full(self) -> torch.Tensor:
        """float32 [N, K]: the scale of every element."""
        n, k = self.values.shape
        s = self.scale.reshape(n, 1).expand(n, k)
        if self.factors is not None:
            s = s * self.factors.repeat_interleave(self.group, dim=1)[:, :k]
        return s

    def dequantize(self) -> torch.Tensor:
        return self.values.to(torch.float32) * self.scale_full()


# ---------------------------------------------------------------------------------------------
# Hessians from calibration inputs
# ---------------------------------------------------------------------------------------------


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = X^T X / n (float64 [K, K]) of inputs x [..., K]."""
    x = x.reshape(-1, x.shape[-1]).to(torch.float64)
    if x.shape[0] == 0:
        raise GptqError("no calibration rows: pass calibration tokens")
    return x.T @ x / x.shape[0]


class _HessianRecorder(FloatLlama):
    def __init__(self, config, weights, wanted):
        super().__init__(config, weights)
        self.wanted = set(wanted)
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self._last: tuple | None = None  # wq/wk/wv (w_gate/w_up) share one input: one X^T X

    def linear(self, name, x, weight):
        if name in self.wanted:
            x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            if self._last is not None and self._last[0] is x:
                xtx = self._last[1]
            else:
                xtx = x2.T @ x2
                self._last = (x, xtx)
            self.sums[name] = self.sums.get(name, 0) + xtx
            self.rows[name] = self.rows.get(name, 0) + x2.shape[0]
        return super().linear(name, x, weight)


#: calibration text runs in windows of at most this many tokens: the Hessians are sums over
#: windows, so memory stays flat however much calibration text there is (attention of one
#: 4,096-token window of SmolLM2 alone is 0.6 GB per layer in float32)
CALIBRATION_WINDOW = 1024


def collect_hessians(config: LlamaConfig, weights: LlamaWeights, tokens, names,
                     window: int = CALIBRATION_WINDOW) -> dict[str, torch.Tensor]:
    """H = X^T X / n per named linear, X its input when the FLOAT model runs ``tokens`` ([T] or
    [B, T]; cut into windows of min(window, max_seq_len) tokens, X^T X summed over them). Float
    inputs for every layer (one pass, not GPTQ's layer-by-layer quantized inputs)."""
    rec = _HessianRecorder(config, weights, names)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if window < 1:
        raise GptqError(f"calibration window must be >= 1 token, got {window}")
    step = min(window, config.max_seq_len)
    layers = [int(n.split(".")[1]) for n in names if n.startswith("layers.")]
    last = max(layers, default=-1)  # no need to run the layers after the last wanted one
    with torch.no_grad():
        for row in tokens:
            for start in range(0, row.numel(), step):
                rec._last = None
                if "lm_head" in rec.wanted:
                    rec.forward(row[start : start + step])
                    continue
                x = rec.embed(rec.check_tokens(row[start : start + step])[0])
                for layer in range(last + 1):
                    x = rec.ffn_block(layer, rec.attn_block(layer, x, None, 0))
    missing = [n for n in names if n not in rec.sums]
    if missing:
        raise GptqError(f"no calibration inputs reached {missing[:3]}; check the linear names")
    return {n: rec.sums[n] / rec.rows[n] for n in names}


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U upper with H^-1 = U^T U, dead-column mask) of the damped H (float64)."""
    h = h.to(torch.float64).clone()
    diag = torch.diagonal(h)
    dead = diag <= 0
    diag[dead] = 1.0
    diag += damp * float(diag.mean())
    lower = torch.linalg.cholesky(h)
    hinv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(hinv, upper=True), dead


def _check(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise GptqError(f"weights must be a float [N, K] tensor, got {getattr(w, 'shape', type(w))}")
    k = w.shape[1]
    if tuple(h.shape) != (k, k):
        raise GptqError(f"Hessian shape {tuple(h.shape)} does not match K={k} of the weight")
    if not bool(torch.isfinite(w).all()) or not bool(torch.isfinite(h).all()):
        raise GptqError("weights or Hessian hold NaN/Inf")
    return w.detach().to(torch.float32)


# ---------------------------------------------------------------------------------------------
# OVP grid helpers (LSB units)
# ---------------------------------------------------------------------------------------------


class _Grid:
    def __init__(self, normal: str):
        f = get_format(normal)
        self.normal_max, self.outlier_min = f.normal_max, f.outlier_min
        self.threshold = (f.normal_max + f.outlier_min) / 2  # |x| >= it: RTN picks an outlier
        self.normals = torch.tensor(sorted(f.normal_grid), dtype=torch.float32)
        self.outliers = torch.tensor(sorted(f.outlier_grid), dtype=torch.float32)
        self._nm = (self.normals[1:] + self.normals[:-1]) / 2
        self._om = (self.outliers[1:] + self.outliers[:-1]) / 2
        self._normal_lut = _HalfStepLookup(self.normals, self._nm)
        self._outlier_lut = _HalfStepLookup(self.outliers, self._om)

    def nearest_normal(self, x):
        return self._normal_lut(x)

    def nearest_outlier(self, x):
        return self._outlier_lut(x)


class _HalfStepLookup:
    """Nearest grid value, ties to the lower one: ``grid[bucketize(x, mids)]``, computed by a table
    lookup of ceil(2x). Exact because every midpoint m is a multiple of 1/2 (integer grids):
    x <= m  <=>  ceil(2x) <= 2m. Several times faster than torch.bucketize (GPTQ's group-factor
    search rounds every weight 15 times)."""

    def __init__(self, grid: torch.Tensor, mids: torch.Tensor):
        twice = mids * 2
        if not torch.equal(twice, torch.round(twice)):
            raise GptqError("grid midpoints must be multiples of 1/2 for the lookup")
        self.lo, hi = int(twice[0]), int(twice[-1])
        steps = torch.arange(self.lo, hi + 2, dtype=torch.float32) / 2  # ceil(2x)/2 in range, one past
        self.table = grid[torch.bucketize(steps, mids)]  # below lo/2: grid[0] as at lo/2
        self.top = hi - self.lo + 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.ceil(x * 2).sub_(self.lo).clamp_(0, self.top).to(torch.int64)
        return self.table[idx]


def _rule_structure(x0, x1, g: _Grid) -> torch.Tensor:
    """OVP's RTN pair structure: 0 = two normals, 1 = (outlier, victim), 2 = (victim, outlier)."""
    o0, o1 = x0.abs() >= g.threshold, x1.abs() >= g.threshold
    m0, m1 = g.nearest_outlier(x0).abs(), g.nearest_outlier(x1).abs()
    keep0 = o0 & (~o1 | (m0 >= m1))  # "larger" rule, equal magnitudes keep the even element
    keep1 = o1 & ~keep0
    return keep0.to(torch.int64) + 2 * keep1.to(torch.int64)


def rtn_ovp_values(x: torch.Tensor, normal: str) -> torch.Tensor:
    """Round-to-nearest OVP grid values (victim rule "larger") of x [N, K] in LSB units."""
    g = _Grid(normal)
    x0, x1 = x[:, 0::2], x[:, 1::2]
    s = _rule_structure(x0, x1, g)
    q0 = torch.where(s == 1, g.nearest_outlier(x0), torch.where(s == 2, 0.0, g.nearest_normal(x0)))
    q1 = torch.where(s == 2, g.nearest_outlier(x1), torch.where(s == 1, 0.0, g.nearest_normal(x1)))
    return torch.stack([q0, q1], -1).reshape(x.shape)


def _ovp_pair_step(x0, x1, d0, d1, c, g: _Grid, pair_choice: str):
    """One GPTQ step on a pair (LSB units, per row). d0 = U_jj, d1 = U_j+1,j+1, c = U_j,j+1.
    Returns q0, q1, e0, e1 (e = scaled errors to propagate), x1c (odd value actually rounded)."""
    # A: two normals; B: (outlier, 0); C: (0, outlier) -- the odd element sees e0's compensation
    qa0 = g.nearest_normal(x0)
    qb0 = g.nearest_outlier(x0)
    qc0 = torch.zeros_like(x0)
    q0s = torch.stack([qa0, qb0, qc0])
    e0s = (x0 - q0s) / d0
    x1s = x1 - e0s * c
    q1s = torch.stack([g.nearest_normal(x1s[0]), torch.zeros_like(x1), g.nearest_outlier(x1s[2])])
    e1s = (x1s - q1s) / d1
    if pair_choice == "error":
        pick = (e0s.square() + e1s.square()).argmin(0)  # first minimum: A, then B, then C
    else:
        pick = _rule_structure(x0, x1, g)
    sel = pick.unsqueeze(0)
    take = lambda t: t.gather(0, sel).squeeze(0)  # noqa: E731
    return take(q0s), take(q1s), take(e0s), take(e1s), take(x1s)


# ---------------------------------------------------------------------------------------------
# The column loop
# ---------------------------------------------------------------------------------------------


def _run(w: torch.Tensor, h: torch.Tensor, scale_full: torch.Tensor, step, unit: int, act_order: bool,
         damp: float):
    """Quantize w [N, K] (float32) column-unit by column-unit. ``step(x_cols [N, unit], u_block)``
    quantizes one unit in LSB units. Returns (values [N, K], rounded inputs [N, K] in real units)."""
    n, k = w.shape
    w = w.clone()
    h = h.to(torch.float64)
    perm = None
    if act_order:
        d = torch.diagonal(h).reshape(-1, unit).sum(1)
        units = torch.argsort(d, descending=True, stable=True)
        perm = (units.unsqueeze(1) * unit + torch.arange(unit)).reshape(-1)
        w, h, scale_full = w[:, perm], h[perm][:, perm], scale_full[:, perm]
    u, dead = _inverse_cholesky(h, damp)
    u = u.to(torch.float32)
    w[:, dead] = 0.0
    values = torch.zeros_like(w)
    rounded = torch.zeros_like(w)
    for b0 in range(0, k, _BLOCK):
        b1 = min(b0 + _BLOCK, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for j in range(0, b1 - b0, unit):
            s = scale_full[:, b0 + j : b0 + j + unit]
            x = wb[:, j : j + unit] / s
            q, e, xr = step(x, ub[j : j + unit, j : j + unit])
            values[:, b0 + j : b0 + j + unit] = q
            rounded[:, b0 + j : b0 + j + unit] = xr * s
            e = e * s  # real units
            err[:, j : j + unit] = e
            wb[:, j + unit :] -= e @ ub[j : j + unit, j + unit :]
        w[:, b1:] -= err @ u[b0:b1, b1:]
    if perm is not None:
        inv = torch.argsort(perm)
        values, rounded = values[:, inv], rounded[:, inv]
    return values, rounded


def _ovp_step(g: _Grid, pair_choice: str):
    def step(x, ub):
        q0, q1, e0, e1, x1c = _ovp_pair_step(x[:, 0], x[:, 1], ub[0, 0], ub[1, 1], ub[0, 1], g, pair_choice)
        return torch.stack([q0, q1], 1), torch.stack([e0, e1], 1), torch.stack([x[:, 0], x1c], 1)
    return step


def _int_step(qmax: int):
    def step(x, ub):
        q = torch.floor(x + 0.5).clamp(-qmax, qmax)
        return q, (x - q) / ub[0, 0], x
    return step


def _expand(scale: torch.Tensor, factors, group, n, k) -> torch.Tensor:
    s = scale.reshape(n, 1).to(torch.float32).expand(n, k)
    if factors is not None:
        s = s * factors.to(torch.float32).repeat_interleave(group, dim=1)[:, :k]
    return s.contiguous()


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def gptq_ovp(w: torch.Tensor, h: torch.Tensor, *, normal: str = "auto", pair_choice: str = "error",
             scale_mode: str = "rtn", act_order: bool = True, damp: float = DAMP,
             group: int | None = None, group_factors: str | None = None, rtn=None) -> GptqWeight:
    """GPTQ onto the OVP4 grid (pairs along K as the unit). w [N, K] float (K even), h [K, K].

    The row alpha and normal type come from golden.ovp's RTN search (``scale_mode="rtn"``) or
    from that search on the compensated weights of a first GPTQ pass (``"refit"``, two passes).
    ``group``/``group_factors`` ("pow2" or "mult4"/"mult8") add per-group scale factors (float
    measurement; see choose_group_factors). ``rtn``: golden.ovp.quantize(w, bits=4,
    normal=normal, granularity="row") if already computed (its search is reused)."""
    from . import ovp

    w = _check(w, h)
    if w.shape[1] % 2:
        raise GptqError(f"OVP pairs need an even K, got K={w.shape[1]}; pad with golden.ovp.pad_to_even")
    if pair_choice not in PAIR_CHOICES:
        raise GptqError(f"pair_choice must be one of {PAIR_CHOICES}, got {pair_choice!r}")
    if scale_mode not in SCALE_MODES:
        raise GptqError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    if group is not None and (group % 2 or group <= 0):
        raise GptqError(f"group size must be a positive even number (pairs stay in one group), got {group}")
    n, k = w.shape
    target = w
    for i in range(2 if scale_mode == "refit" else 1):
        if i == 0 and rtn is not None:
            if tuple(rtn.shape) != tuple(w.shape):
                raise GptqError(f"rtn= is an OVP tensor of shape {tuple(rtn.shape)}, the weight is {tuple(w.shape)}")
            t = rtn
        else:
            t = ovp.quantize(target, bits=4, normal=normal, granularity="row")
        scale = _safe(t.scale.reshape(n).to(torch.float32))
        factors = None
        if group_factors is not None:
            factors = choose_group_factors(w, scale, group, group_factors, t.normal)
        g = _Grid(t.normal)
        values, rounded = _run(w, h, _expand(scale, factors, group, n, k), _ovp_step(g, pair_choice), 2,
                               act_order, damp)
        target = rounded
    return GptqWeight("ovp4", values.to(torch.int32), scale, t.normal, factors, group)


def gptq_int4(w: torch.Tensor, h: torch.Tensor, *, act_order: bool = True, damp: float = DAMP,
              group: int | None = None, group_factors: str | None = None) -> GptqWeight:
    """GPTQ onto symmetric INT4 (-7..7) with the RTN per-row absmax scale (golden.contract)."""
    w = _check(w, h)
    n, k = w.shape
    scale = _safe(w.abs().amax(1) / 7)
    factors = choose_group_factors(w, scale, group, group_factors, None) if group_factors else None
    values, _ = _run(w, h, _expand(scale, factors, group, n, k), _int_step(7), 1, act_order, damp)
    return GptqWeight("int4", values.to(torch.int32), scale, None, factors, group)


# ---------------------------------------------------------------------------------------------
# Finer scales: per-group factors on the row scale (float measurement)
# ---------------------------------------------------------------------------------------------


def group_factor_candidates(kind: str) -> torch.Tensor:
    """Factors a K group may apply to its row scale: "pow2" = 2**s, s in -2..1 (a 2-bit shift,
    right by up to 2 or left by 1); "mult4"/"mult8" = m / 2**(b-1), m = 1..2**b - 1 (an unsigned
    b-bit multiplier followed by a fixed shift: range up to ~2x the row scale)."""
    if kind == "pow2":
        return torch.tensor([0.25, 0.5, 1.0, 2.0])
    if kind in ("mult4", "mult8"):
        b = int(kind[4:])
        return torch.arange(1, 2**b, dtype=torch.float32) / 2 ** (b - 1)
    raise GptqError(f"group factor kind must be 'pow2', 'mult4' or 'mult8', got {kind!r}")


def choose_group_factors(w: torch.Tensor, scale: torch.Tensor, group: int | None, kind: str,
                         normal: str | None) -> torch.Tensor:
    """Per (row, K group) factor [N, ceil(K/group)] minimizing the group's RTN MSE at
    scale * factor (OVP grid with victims when ``normal`` is given, else INT4)."""
    if group is None or group <= 0:
        raise GptqError("group factors need a group size (e.g. 64 or 128)")
    n, k = w.shape
    ng = -(-k // group)
    pad = ng * group - k
    wp = torch.nn.functional.pad(w, (0, pad)).reshape(n, ng, group)
    best_err = torch.full((n, ng), float("inf"))
    best = torch.ones(n, ng)
    for f in group_factor_candidates(kind).tolist():
        s = scale.reshape(n, 1, 1) * f
        x = (wp / s).reshape(n, ng * group)
        q = rtn_ovp_values(x, normal) if normal else torch.floor(x + 0.5).clamp(-7, 7)
        err = ((q.reshape(n, ng, group) * s - wp) ** 2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, f), best)
    return best


def rtn_grouped(w: torch.Tensor, kind: str, group: int, group_factors: str, *, normal: str = "auto",
                rtn=None) -> GptqWeight:
    """Round-to-nearest with per-group factors (no second-order compensation): the row scale of
    golden.ovp's RTN search (``kind="ovp4"``; ``rtn`` reuses a computed search) or the INT4 absmax
    scale (``"int4"``), the group factors of :func:`choose_group_factors`, then every weight
    rounded to the nearest grid value at its group's scale."""
    from . import ovp

    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise GptqError(f"weights must be a float [N, K] tensor, got {getattr(w, 'shape', type(w))}")
    w = w.detach().to(torch.float32)
    n, k = w.shape
    if kind == "ovp4":
        t = rtn if rtn is not None else ovp.quantize(w, bits=4, normal=normal, granularity="row")
        scale, norm = _safe(t.scale.reshape(n).to(torch.float32)), t.normal
    elif kind == "int4":
        scale, norm = _safe(w.abs().amax(1) / 7), None
    else:
        raise GptqError(f"rtn_grouped quantizes 'ovp4' or 'int4', not {kind!r}")
    factors = choose_group_factors(w, scale, group, group_factors, norm)
    x = w / _expand(scale, factors, group, n, k)
    values = rtn_ovp_values(x, norm) if norm else torch.floor(x + 0.5).clamp(-7, 7)
    return GptqWeight(kind, values.to(torch.int32), scale, norm, factors, group)


# ---------------------------------------------------------------------------------------------
# Onto the integer contract
# ---------------------------------------------------------------------------------------------


def to_qweight(gw: GptqWeight):
    """The contract's QWeight of a GPTQ result (row scales only). OVP values are encoded with
    golden.ovp.encode (which rejects anything off the grid or breaking the pair rule)."""
    from . import ovp
    from .contract import QWeight, grid_to_operands

    from .contract import GROUP_MULT_BITS, GROUP_MULT_SHIFT, GROUP_SIZES

    values = gw.values.to(torch.int16)
    scale = gw.scale.to(torch.float64)
    group = group_mult = None
    if gw.factors is not None:
        # only the 4-bit multiplier m / 2**3 (kind "mult4") is in the contract; check it is one
        m = gw.factors.to(torch.float64) * 2**GROUP_MULT_SHIFT
        mi = torch.floor(m + 0.5)
        if gw.group not in GROUP_SIZES or not torch.equal(m, mi) or float(mi.min()) < 1 \
                or float(mi.max()) > 2**GROUP_MULT_BITS - 1:
            raise GptqError(f"group factors (group {gw.group}) are not the contract's 4-bit multipliers m/8, "
                            f"m = 1..15, in groups of {GROUP_SIZES}; use group_factors='mult4'")
        group, group_mult = gw.group, mi.to(torch.uint8)
        scale = scale / 2**GROUP_MULT_SHIFT  # the scale of one unit of value x multiplier
    if gw.kind == "int4":
        return QWeight("int4", values, scale, torch.zeros_like(values, dtype=torch.int8), values.to(torch.int8),
                       group=group, group_mult=group_mult)
    codes = ovp.encode(gw.values, gw.normal)
    exp, integer = grid_to_operands(values, gw.normal)
    return QWeight("ovp4", values, scale, exp, integer, normal=gw.normal, codes=codes, group=group,
                   group_mult=group_mult)


def _quantize_one(name: str, kind: str, w: torch.Tensor, h: torch.Tensor, group: int | None, options: dict):
    """The contract's QWeight of one linear by GPTQ (``group``: 4-bit multipliers per group)."""
    w = w.detach().to(torch.float32)
    opts = dict(options, group=group, group_factors="mult4") if group else options
    if kind == "ovp4":
        if w.shape[1] % 2:  # the zero column compile_linear adds; its input is dead in H
            w = torch.nn.functional.pad(w, (0, 1))
            h = torch.nn.functional.pad(h, (0, 1, 0, 1))
        return to_qweight(gptq_ovp(w, h, **opts))
    if kind == "int4":
        return to_qweight(gptq_int4(w, h, **opts))
    raise GptqError(f"{name}: GPTQ quantizes ovp4 or int4 weights, not {kind!r}")


def quantize_linears(config: LlamaConfig, weights: LlamaWeights, calib_tokens, kinds: dict[str, str],
                     groups: dict[str, int | None] | None = None, *, hessians: dict[str, torch.Tensor] | None = None,
                     float_weights: dict[str, torch.Tensor] | None = None, **options):
    """QWeight per linear name in ``kinds`` (name -> "ovp4" | "int4"), chosen by GPTQ with the
    Hessians of ``calib_tokens`` (float-model inputs). ``groups``: name -> group size for the
    contract's 4-bit group multipliers (absent / None: row scales only). ``hessians``: name -> H
    already collected (then ``calib_tokens`` is not run); ``float_weights``: name -> the float
    weight to quantize instead of ``weights.linear(name)`` (a re-parametrized one, e.g.
    :func:`smooth_down_inputs`). ``options`` go to gptq_ovp / gptq_int4."""
    hs = hessians if hessians is not None else collect_hessians(config, weights, calib_tokens, list(kinds))
    fw = float_weights or {}
    return {name: _quantize_one(name, kind, fw.get(name, weights.linear(name)), hs[name], (groups or {}).get(name), options)
            for name, kind in kinds.items()}


def smoothing_scales(h: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel scales s_j = rms_j**alpha (float32 [K], geometric mean 1 over the live
    channels; a channel with no calibration energy keeps s = 1), rms_j = sqrt(H_jj) of the
    calibration Hessian H = X^T X / n. Multiplying a linear's column j by s_j and its input by 1/s_j
    leaves the product unchanged and moves the input's outlier channels into the weight."""
    d = torch.diagonal(h).to(torch.float64)
    live = d > 0
    s = torch.ones_like(d)
    if bool(live.any()):
        s[live] = d[live].sqrt().pow(alpha)
        s[live] = s[live] / s[live].log().mean().exp()
    return s.to(torch.float32)


def head_tied_smoothing_scales(h: torch.Tensor, alpha: float, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Per-input-channel scales of wo's input (the concatenated query heads' attention outputs,
    channel c = head * head_dim + d), tied over the query heads that read one key-value head:
    s_(h, d) = g_(kv(h), d)**alpha with g the geometric mean of rms_(h', d) = sqrt(H_cc) over the
    query heads h' of that group (channels with no energy count as rms 1), normalized to geometric
    mean 1 over all channels. Tied because the attention output of head h is a convex combination
    of kv head kv(h)'s value rows, so dividing wv's row (kv, d) by g**alpha divides channel (h, d)
    of every head of the group by the same number: wo's columns x s and wv's rows x 1/s is exact."""
    k = h.shape[0]
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads or k % n_heads:
        raise GptqError(f"head-tied smoothing: wo's {k} inputs do not split into {n_heads} query heads "
                        f"over {n_kv_heads} key-value heads")
    hd, rep = k // n_heads, n_heads // n_kv_heads
    d = torch.diagonal(h).to(torch.float64)
    lg = torch.where(d > 0, d.clamp_min(1e-300).sqrt().log(), torch.zeros_like(d))
    tied = lg.view(n_kv_heads, rep, hd).mean(dim=1, keepdim=True).expand(n_kv_heads, rep, hd).reshape(k)
    ls = alpha * tied
    return (ls - ls.mean()).exp().to(torch.float32)


def kv_rows_of(s: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The [n_kv_heads * head_dim] scales of wv's rows behind a head-tied scale of wo's input
    (:func:`head_tied_smoothing_scales`): the first query head of each group."""
    hd, rep = s.shape[0] // n_heads, n_heads // n_kv_heads
    return s.view(n_kv_heads, rep, hd)[:, 0, :].reshape(-1)


def rescale_linears(weights: LlamaWeights, col_scales: dict[str, torch.Tensor],
                    row_scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name -> the re-parametrized float32 weight of every linear in ``col_scales`` (column j x
    s_j) or ``row_scales`` (row i x 1/r_i), in that order of operations; what quantize_model
    quantizes for the smoothing options and what golden.qcache rebuilds on load (the same
    float operations, so the same float32 values)."""
    out = {}
    for name in dict.fromkeys([*col_scales, *row_scales]):
        w = weights.linear(name).to(torch.float32)
        if name in col_scales:
            w = w * col_scales[name]
        if name in row_scales:
            w = w / row_scales[name].reshape(-1, 1)
        out[name] = w
    return out


def smooth_down_inputs(weights: LlamaWeights, hessians: dict[str, torch.Tensor], alpha: float, layers) -> tuple[dict, dict]:
    """Weight re-parametrization of every listed decoder layer's FFN, exact in float: w_up's row j
    x 1/s_j and w_down's column j x s_j (s = :func:`smoothing_scales` of w_down's Hessian), since
    w_down (silu(g) * u) = (w_down diag(s)) (silu(g) * u / s). Returns (name -> rescaled float
    weight, name -> w_down's Hessian of the rescaled input, H / (s s^T)); ``hessians`` must hold
    each layer's ``layers.<i>.w_down``."""
    new_w, new_h = {}, {}
    for i in layers:
        down, up = f"layers.{i}.w_down", f"layers.{i}.w_up"
        if down not in hessians:
            raise GptqError(f"smoothing w_down's input needs its calibration Hessian; {down} has none")
        s = smoothing_scales(hessians[down], alpha)
        new_w.update(rescale_linears(weights, {down: s}, {up: s}))
        sd = s.to(torch.float64)
        new_h[down] = hessians[down].to(torch.float64) / sd.reshape(-1, 1) / sd.reshape(1, -1)
    return new_w, new_h


#: each decoder layer's RMSNorm and the linears its output feeds (they share one input)
NORM_LINEARS = {"attn_norm": ("wq", "wk", "wv"), "ffn_norm": ("w_gate", "w_up")}


def norm_smoothing_scales(hessians: dict[str, torch.Tensor], alpha: float, layers) -> dict[str, torch.Tensor]:
    """``"layers.<i>.attn_norm"`` / ``"layers.<i>.ffn_norm"`` -> s (:func:`smoothing_scales` of the
    calibration Hessian of that norm's output, read from its first linear: ``hessians`` must hold
    each listed layer's ``layers.<i>.wq`` and ``layers.<i>.w_gate``)."""
    scales = {}
    for i in layers:
        for norm, feeds in NORM_LINEARS.items():
            first = f"layers.{i}.{feeds[0]}"
            if first not in hessians:
                raise GptqError(f"smoothing {norm}'s output needs the calibration Hessian of {first}; it has none")
            scales[f"layers.{i}.{norm}"] = smoothing_scales(hessians[first], alpha)
    return scales


def fold_norm_scales(weights: LlamaWeights, scales: dict[str, torch.Tensor]) -> LlamaWeights:
    """LlamaWeights with each scaled RMSNorm's gamma_j / s_j and column j of the linears it feeds
    x s_j (``scales`` from :func:`norm_smoothing_scales`), exact in float: the norm's output is
    h / s and each linear computes (W diag(s)) (h / s) = W h. The INT8 per-token quantization of
    the norm output then sees its outlier channels divided down; the weights' grid absorbs them."""
    layers = []
    for i, lw in enumerate(weights.layers):
        changes = {}
        for norm, feeds in NORM_LINEARS.items():
            s = scales.get(f"layers.{i}.{norm}")
            if s is None:
                continue
            changes[norm] = getattr(lw, norm) / s
            changes.update({n: getattr(lw, n) * s for n in feeds})
        layers.append(replace(lw, **changes))
    unknown = set(scales) - {f"layers.{i}.{n}" for i in range(len(weights.layers)) for n in NORM_LINEARS}
    if unknown:
        raise GptqError(f"norm scales for {sorted(unknown)}: not a decoder layer's attn_norm / ffn_norm of this model")
    return replace(weights, layers=layers)


# ---------------------------------------------------------------------------------------------
# Sequential GPTQ: each layer calibrated on the inputs the already-quantized layers produce
# ---------------------------------------------------------------------------------------------

#: the order of the linears inside a decoder layer: each stage's input depends on the earlier stages
_STAGES = (("wq", "wk", "wv"), ("wo",), ("w_gate", "w_up"), ("w_down",))


class _SequentialRecorder(FloatLlama):
    """FloatLlama whose quantized linears (``self.quantized``: name -> dequantized weight [N, K])
    take per-token INT8 fake-quantized inputs (what the integer matmul multiplies, to within the
    contract's 8-bit-mantissa row scale) and whose ``recording`` linears accumulate X^T X of those
    same quantized inputs."""

    def __init__(self, config, weights, act_quant):
        super().__init__(config, weights)
        self.act_quant = act_quant
        self.quantized: dict[str, torch.Tensor] = {}
        self.recording: set[str] = set()
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self._last: tuple | None = None

    def linear(self, name, x, weight):
        from .contract import fake_quant_act_dynamic_int8

        if name not in self.quantized and name not in self.recording:
            return super().linear(name, x, weight)
        if self._last is None or self._last[0] is not x:  # wq/wk/wv (w_gate/w_up) share one input
            self._last = [x, fake_quant_act_dynamic_int8(x) if self.act_quant(name) else x, None]
        xq = self._last[1]
        if name in self.recording:
            x2 = xq.reshape(-1, xq.shape[-1]).to(torch.float64)
            if self._last[2] is None:
                self._last[2] = x2.T @ x2
            self.sums[name] = self.sums.get(name, 0) + self._last[2]
            self.rows[name] = self.rows.get(name, 0) + x2.shape[0]
        return torch.matmul(xq, self.quantized.get(name, weight).t())


def _calibration_windows(config: LlamaConfig, tokens) -> list[torch.Tensor]:
    """``tokens`` ([T] or [B, T]) as batches [b, t] of equal-length windows of <= min(max_seq_len,
    CALIBRATION_WINDOW) tokens."""
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    step = min(CALIBRATION_WINDOW, config.max_seq_len)
    by_len: dict[int, list[torch.Tensor]] = {}
    for row in tokens:
        for start in range(0, row.numel(), step):
            w = row[start : start + step]
            by_len.setdefault(w.numel(), []).append(w)
    return [torch.stack(ws) for ws in by_len.values()]


def quantize_linears_sequential(config: LlamaConfig, weights: LlamaWeights, calib_tokens, kinds: dict[str, str],
                                groups: dict[str, int | None] | None = None, act_quant=None,
                                fixed: dict[str, torch.Tensor] | None = None, show_progress: bool = False,
                                **options):
    """As :func:`quantize_linears`, but sequential: the decoder layers are quantized in order and
    each linear's Hessian comes from the inputs it receives when every linear before it (earlier
    layers, and the earlier stages of its own layer: q/k/v, then o, then gate/up, then down) runs
    with its quantized weights and per-token INT8 fake-quantized inputs, as the integer model
    sees them. GPTQ then compensates the error the quantized network actually feeds it, not the
    float network's.

    act_quant: name -> bool, whether that linear's inputs are INT8-quantized (default: all).
    fixed: name -> dequantized weight of linears quantized by another method (RTN, INT8), used as
    such when the calibration reaches them; linears in neither dict run float."""
    act_quant = act_quant or (lambda name: True)
    rec = _SequentialRecorder(config, weights, act_quant)
    rec.quantized.update({n: w.to(torch.float32) for n, w in (fixed or {}).items()})
    names = list(kinds)
    unknown = [n for n in names if not n.startswith("layers.") or n.split(".")[-1] not in sum(_STAGES, ())]
    if unknown:
        raise GptqError(f"sequential GPTQ quantizes decoder linears (layers.<i>.<linear>), not {unknown[:3]}")
    out = {}
    batches = _calibration_windows(config, calib_tokens)
    with torch.no_grad():
        xs = [rec.embed(b) for b in batches]
        with progress.track(f"sequential GPTQ ({config.name})", config.n_layers, "layer",
                            delay=None if show_progress else float("inf")) as bar:
            for layer in range(config.n_layers):
                hs = [None] * len(xs)  # residual after the attention sub-block, once its linears are final
                for stage in _STAGES:
                    wanted = [f"layers.{layer}.{s}" for s in stage if f"layers.{layer}.{s}" in kinds]
                    if not wanted:
                        continue
                    rec.recording, rec.sums, rec.rows = set(wanted), {}, {}
                    for i, x in enumerate(xs):
                        rec._last = None
                        if stage[0] in ("wq", "wo"):
                            rec.attn_block(layer, x, None, 0)
                        else:
                            if hs[i] is None:
                                hs[i] = rec.attn_block(layer, x, None, 0)
                            rec.ffn_block(layer, hs[i])
                    rec.recording = set()
                    for n in wanted:
                        q = _quantize_one(n, kinds[n], weights.linear(n), rec.sums[n] / rec.rows[n],
                                          (groups or {}).get(n), options)
                        out[n] = q
                        rec.quantized[n] = q.dequantize()[:, : weights.linear(n).shape[1]]
                    if stage[0] in ("wq", "wk", "wv", "wo"):
                        hs = [None] * len(xs)
                for i, x in enumerate(xs):
                    rec._last = None
                    h = hs[i] if hs[i] is not None else rec.attn_block(layer, x, None, 0)
                    xs[i] = rec.ffn_block(layer, h)
                bar.advance(f"layers.{layer}")
    return out
