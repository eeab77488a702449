"""Front ends: turn a quantized LLaMA into a :class:`ModelSpec`, the compiler's only input.

A ModelSpec holds, for every linear, its padded shape, weight precision and the bytes the weight
image stores (or nothing for a shape-only spec), plus the per-channel requantization multipliers,
the norm gains, the embedding table and the attention multipliers: exactly the integers
golden/qmodel.py's QLlama computes with. Three front ends build one:

* :func:`spec_from_qllama` - the golden quantized model (``golden.qmodel.quantize_model``);
* :func:`spec_from_hf` - a Hugging Face ``LlamaForCausalLM`` module (checked layer by layer,
  converted with golden.loaders, then quantized);
* :func:`spec_from_shapes` - shapes only (no weights materialized): for size studies such as
  LLaMA2-7B, where only instruction counts and image sizes matter.

N:16 block-sparse linears keep golden's compressed form: ``block_n``, the kept values' bytes and the
packed index stream (docs/isa.md "Semantics", "Sparse weight tile").

Dimensions are zero-padded to multiples of 16 (MM/MV reduce in blocks of 16): a zero weight row
gives a zero output column (its requantization multiplier is 0) and a zero activation column
changes neither a sum nor a per-token maximum, so padding is bit-exact. Padded: the FFN width
(rows of w_gate/w_up, columns of w_down), the vocabulary (rows of lm_head; only the true logits
are stored) and ``head_dim``. A head of ``hd`` is stored as ``hd_p = pad16(hd)`` with its two RoPE
halves at ``[0, hd/2)`` and ``[hd_p/2, hd_p/2 + hd/2)`` (:func:`head_index`), so the rotate-half
pairs (i, i + hd_p/2) are the true pairs (i, i + hd/2) and the added pairs rotate zeros; the RoPE
record carries the true ``hd`` for the angles. The hidden size is not padded (RMSNorm divides by
it) and must be a multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from olivine.golden import fixed
from olivine.golden.model import LINEAR_NAMES, LlamaConfig

__all__ = ["CompileError", "UnsupportedModelError", "LinearSpec", "ModelSpec", "spec_from_qllama",
           "spec_from_shapes", "spec_from_hf", "pad16", "QuantFacts", "QUANT_RULES", "quant_refusal", "head_padding", "head_pad", "head_index", "weight_row_bytes", "sparse_n_of",
           "group_row_bytes", "pack_group_mult", "unpack_group_mult"]


class CompileError(ValueError):
    """The model or the options cannot be compiled for this hardware; the message says why."""


class UnsupportedModelError(CompileError):
    """A layer, module or shape the olivine instruction set cannot express (named in the message)."""


def pad16(n: int) -> int:
    return -(-n // 16) * 16


def head_pad(head_dim: int) -> int:
    """Stored width of one attention head (a multiple of 16)."""
    return pad16(head_dim)


def head_index(n_heads: int, head_dim: int) -> np.ndarray | None:
    """Padded position of each of the ``n_heads * head_dim`` true q/k/v rows (None: no padding).

    Each RoPE half of a head starts a half of the padded head, keeping the pairs (i, i + hd/2).
    """
    hp = head_pad(head_dim)
    if hp == head_dim:
        return None
    half, i = head_dim // 2, np.arange(head_dim)
    in_head = np.where(i < half, i, i - half + hp // 2)
    return (np.arange(n_heads)[:, None] * hp + in_head[None, :]).reshape(-1)


def weight_row_bytes(wfmt: str, k: int) -> int:
    return k if wfmt == "int8" else k // 2


def group_row_bytes(group: int | None, k: int) -> int:
    """Bytes of one row's packed 4-bit group multipliers (ceil(K / group) nibbles; 0 without groups)."""
    return 0 if not group else -(-(-(-k // group)) // 2)


def pack_group_mult(group_mult: np.ndarray) -> np.ndarray:
    """uint8 [n, groups] multipliers (1..15) -> [n, group_row_bytes] bytes: group 2j in the low nibble
    of byte j, group 2j+1 in the high nibble (the INT4 packing order); an odd count leaves a 0 nibble."""
    gm = np.asarray(group_mult, dtype=np.uint8)
    if gm.shape[1] % 2:
        gm = np.pad(gm, ((0, 0), (0, 1)))
    return (gm[:, 0::2] | (gm[:, 1::2] << 4)).astype(np.uint8)


def unpack_group_mult(packed: np.ndarray, groups: int) -> np.ndarray:
    """Inverse of :func:`pack_group_mult`: [n, bytes] -> uint8 [n, groups]."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty((p.shape[0], 2 * p.shape[1]), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = p & 0xF, p >> 4
    return out[:, :groups]


def align16(x: int) -> int:
    return -(-x // 16) * 16


def sparse_n_of(sparsity) -> int | None:
    """N of a uniform N:16 sparsity option ("8:16", "4:16", "2:16", "2:4" is stored as 8:16); None: dense."""
    if sparsity is None:
        return None
    from olivine.golden import sparsity as sp

    n, m = sp.parse_pattern(sparsity)
    return 8 if m == 4 else (None if n == 16 else n)


@dataclass
class LinearSpec:
    """One linear as the accelerator stores it: W [n, k] (padded) + a 16-byte requant entry per row."""

    name: str
    n: int
    k: int
    n_true: int
    k_true: int
    wfmt: str  # int8 | int4 | ovp4
    normal: str = "int4"  # OVP normal type (ovp4 only)
    rows: np.ndarray | None = None  # uint8 [n, row_bytes] weight bytes (None: shape-only)
    mult: np.ndarray | None = None  # int64 [n]
    shift: np.ndarray | None = None  # int64 [n]
    act: str = "int8"  # int8 (per-token mantissa + exponent scale) | int8-pow2 (exponent only) | ovp4 (static)
    # ovp4 activations (static per-tensor, calibrated): alpha and normal type from golden's calibration and the
    # SFU encoder's multiplier M = quantize_multiplier(2**(G - 16) / (alpha / normal_max)) (docs/isa.md quant)
    act_alpha: float | None = None
    act_normal: str = "int4"
    act_mult: tuple[int, int] | None = None
    # N:16 block sparsity (docs/isa.md "Semantics"): block_n uint8 [n/16, k/16]; values = the kept values'
    # bytes in canonical order (int8 / packed int4 / OVP pair codes); indices = the packed 4-bit in-group
    # index stream of the sparse blocks (golden.sparsity.SparseWeight.packed_indices)
    block_n: np.ndarray | None = None
    values: np.ndarray | None = None
    indices: np.ndarray | None = None
    # per-group weight multipliers (golden.contract 2a; dense int4/ovp4): group size along K (64 / 128) and
    # the packed 4-bit multipliers uint8 [n, group_row_bytes] (pack_group_mult), stored after the tile's values
    group: int | None = None
    group_bytes: np.ndarray | None = None

    @property
    def sparse(self) -> bool:
        return self.block_n is not None

    @property
    def wgroup(self) -> str:
        """The MM/MV ``wgroup`` field of this linear."""
        return "none" if not self.group else f"g{self.group}"

    @property
    def row_bytes(self) -> int:
        """Weight bytes of the longest row (dense: every row, values then its group multipliers)."""
        if not self.sparse:
            return weight_row_bytes(self.wfmt, self.k) + group_row_bytes(self.group, self.k)
        return int(self.block_n.astype(np.int64).sum(axis=1).max()) * self.value_bits // 8

    @property
    def value_bits(self) -> int:
        return 8 if self.wfmt == "int8" else 4

    def _band_sums(self):
        bn = self.block_n.astype(np.int64)
        kept = bn.sum(axis=1) * 16  # kept values per 16-row band
        sparse = np.where(bn < 16, bn, 0).sum(axis=1) * 16  # of which in sparse blocks (indexed)
        zero = np.zeros(1, dtype=np.int64)
        return (np.concatenate([zero, np.cumsum(kept * self.value_bits // 8)]),
                np.concatenate([zero, np.cumsum(sparse // 2)]))

    def weight_bytes(self, n0: int, n: int) -> int:
        """Bytes of rows n0 .. n0+n-1 in the weight buffer (n0, n multiples of 16 when sparse)."""
        if not self.sparse:
            return n * self.row_bytes
        w, _ = self._band_sums()
        return int(w[(n0 + n) // 16] - w[n0 // 16])

    def meta_bytes(self, n0: int, n: int) -> int:
        """Meta-buffer bytes of a sparse tile: the block-N table padded to 16 bytes, then the indices."""
        if not self.sparse:
            return 0
        _, ix = self._band_sums()
        return align16(n // 16 * (self.k // 16)) + int(ix[(n0 + n) // 16] - ix[n0 // 16])

    def meta_row_bytes(self) -> int:
        """Upper bound of meta bytes per row (for tile sizing)."""
        if not self.sparse:
            return 0
        bn = self.block_n.astype(np.int64)
        return -(-(self.k // 16) // 16) + int(np.where(bn < 16, bn, 0).sum(axis=1).max()) // 2

    def tile_weight_bytes(self, n0: int, n: int) -> np.ndarray:
        """The weight-buffer bytes of rows n0 .. n0+n-1 (materialized specs)."""
        if not self.sparse:
            if self.group:  # the n rows' values, then the n rows' packed group multipliers
                return np.concatenate([self.rows[n0:n0 + n].reshape(-1), self.group_bytes[n0:n0 + n].reshape(-1)])
            return self.rows[n0:n0 + n]
        w, _ = self._band_sums()
        return self.values[w[n0 // 16]: w[(n0 + n) // 16]]

    def tile_meta(self, n0: int, n: int) -> np.ndarray:
        """The meta-buffer bytes of a sparse tile (block-N table, zero padding, index stream)."""
        _, ix = self._band_sums()
        table = self.block_n[n0 // 16:(n0 + n) // 16].reshape(-1)
        out = np.zeros(self.meta_bytes(n0, n), dtype=np.uint8)
        out[:table.size] = table
        out[align16(table.size):] = self.indices[ix[n0 // 16]: ix[(n0 + n) // 16]]
        return out

    def requant_table(self) -> np.ndarray:
        """[n, 4] int32 entries (bias, mult, shift, reserved) as stored in HBM and the bias buffer."""
        t = np.zeros((self.n, 4), dtype=np.int64)
        if self.mult is not None:
            t[:, 1] = self.mult
            t[:, 2] = self.shift
        return (t & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


@dataclass
class ModelSpec:
    config: LlamaConfig
    linears: dict[str, LinearSpec]
    gammas: dict[str, np.ndarray | None]  # int32 [dim] (GAMMA_FRAC), keys layers.i.attn_norm ... final_norm
    eps_mult: tuple[int, int]
    embed_codes: np.ndarray | None  # int8 [V, dim]
    embed_mult: np.ndarray | None  # int64 [V]
    embed_shift: np.ndarray | None
    score_mult: tuple[int, int]
    pv_mult: tuple[int, int]
    preset: str = "custom"
    source: str = ""
    materialized: bool = True
    facts: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def ffn_pad(self) -> int:
        return pad16(self.config.ffn_dim)

    @property
    def head_pad(self) -> int:
        """Stored width of one attention head (see :func:`head_index`)."""
        return head_pad(self.config.head_dim)


def check_config(config: LlamaConfig) -> None:
    """Shapes the instruction set can express, with the layer named on failure."""
    if config.dim % 16:
        raise UnsupportedModelError(f"{config.name}: hidden_size={config.dim} is not a multiple of 16; the residual "
                                    "stream cannot be zero-padded (RMSNorm averages over it and the embedding and "
                                    "norm records hold exactly hidden_size values), so this model cannot be compiled")
    if config.max_seq_len > 65535:
        raise UnsupportedModelError(f"{config.name}: max_seq_len={config.max_seq_len} exceeds the 16-bit position field")
    if fixed.RESIDUAL_FRAC != 16 or fixed.ACT_FRAC != 16:
        raise CompileError("the SFU instruction semantics assume 16 fractional bits everywhere")


def padded_linear_shapes(c: LlamaConfig) -> dict[str, tuple[int, int]]:
    """``[n, k]`` of each decoder linear as stored (FFN width and heads padded to multiples of 16)."""
    fp, qp, kvp = pad16(c.ffn_dim), c.n_heads * head_pad(c.head_dim), c.n_kv_heads * head_pad(c.head_dim)
    return {"wq": (qp, c.dim), "wk": (kvp, c.dim), "wv": (kvp, c.dim), "wo": (c.dim, qp),
            "w_gate": (fp, c.dim), "w_up": (fp, c.dim), "w_down": (c.dim, fp)}


def _pack_int4(values: torch.Tensor) -> np.ndarray:
    v = values.to(torch.int64).numpy() & 0xF
    return (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)


def _scatter(values: torch.Tensor, n_pad: int, k_pad: int, rows, cols) -> torch.Tensor:
    """``values`` [n, k] placed in a zero [n_pad, k_pad] grid at row/column positions (None: leading)."""
    out = torch.zeros(n_pad, k_pad, dtype=values.dtype)
    r = torch.arange(values.shape[0]) if rows is None else torch.as_tensor(rows)
    c = torch.arange(values.shape[1]) if cols is None else torch.as_tensor(cols)
    out[r[:, None], c[None, :]] = values
    return out


#: What the compiler can express of one linear's quantization: one table that both the check before
#: quantization (compile._check_quant_compilable, from the QuantConfig) and the conversion after it
#: (_linear_from_qlinear, from golden's QLinear) read. Each rule: (refuses(q), reason); q is a
#: :class:`QuantFacts`. The first rule that refuses names the reason.
@dataclass(frozen=True)
class QuantFacts:
    weights: str  # int8 | int4 | ovp4 | fp32
    acts: str  # int8 | int8-pow2 | int8-static | ovp4 | fp32
    sparse: bool = False
    rows_padded: bool = False  # output rows padded inside each head (wq/wk/wv with head_dim % 16)
    cols_padded: bool = False  # input columns padded inside each head (wo with head_dim % 16)
    grouped: bool = False  # per-group weight multipliers (LayerQuant.group)


QUANT_RULES: tuple[tuple, ...] = (
    (lambda q: q.weights == "fp32" or q.acts == "fp32",
     "float (fp32) layers have no integer form; choose an integer preset (e.g. w4a8-ovp)"),
    (lambda q: q.acts not in ("int8", "int8-pow2", "ovp4"),
     "activations {acts!r} are not supported by the compiler yet (per-token dynamic INT8 or static OVP4); "
     "use a w*a8 or w4a4-ovp preset"),
    (lambda q: q.acts == "ovp4" and (q.weights != "ovp4" or q.sparse),
     "OVP4 activations run on the OVP array with dense OVP4 weights only, not {sparse}{weights} weights; use "
     "INT8 activations for this layer"),
    (lambda q: q.acts == "ovp4" and q.cols_padded,
     "OVP4 activations with a head_dim that is not a multiple of 16 are not supported (the zero padding inside "
     "each head would shift the outlier-victim pairs); use INT8 activations (a w*a8 preset) for this model"),
    (lambda q: q.sparse and (q.rows_padded or q.cols_padded),
     "N:16 sparsity with head_dim not a multiple of 16 is not supported (padding inside each head would split "
     "the 16-wide sparsity groups); compile this model dense"),
    (lambda q: q.grouped and (q.acts != "int8" and q.acts != "int8-pow2" or q.weights not in ("int4", "ovp4")),
     "per-group weight multipliers are compiled for {weights} weights with per-token INT8 activations only, not "
     "activations {acts!r}; drop the group or use a w4a8 preset"),
    (lambda q: q.grouped and q.cols_padded,
     "per-group weight multipliers with a head_dim that is not a multiple of 16 are not supported (the zero "
     "padding inside each head would move the K groups); use a preset without groups for this model"),
)


def quant_refusal(facts: QuantFacts) -> str | None:
    """The reason the compiler refuses a linear quantized as ``facts`` (None: it compiles)."""
    for refuses, reason in QUANT_RULES:
        if refuses(facts):
            return reason.format(acts=facts.acts, weights=facts.weights, sparse="sparse " if facts.sparse else "")
    return None


def head_padding(config: LlamaConfig, short: str) -> tuple[bool, bool]:
    """(rows_padded, cols_padded) of decoder linear ``short`` ("wq", ...) for this config."""
    padded = head_pad(config.head_dim) != config.head_dim
    return padded and short in ("wq", "wk", "wv"), padded and short == "wo"


def _linear_from_qlinear(name: str, lin, n_pad: int, k_pad: int, rows=None, cols=None) -> LinearSpec:
    """``rows``/``cols``: padded positions of the true output rows / input columns (None: leading)."""
    from olivine.golden import ovp

    w = lin.weight
    is_float = w is None or lin.act == "fp32" or lin.mult is None
    facts = QuantFacts("fp32" if is_float else w.kind, lin.act, not is_float and w.block_n is not None,
                       rows is not None, cols is not None, not is_float and w.group_mult is not None)
    reason = quant_refusal(facts)
    if reason is not None:
        raise UnsupportedModelError(f"{name}: {reason}")
    if getattr(lin, "bias_q", None) is not None or getattr(lin, "bias_int", None) is not None:
        raise UnsupportedModelError(f"{name}: a bias in a linear is not supported (LLaMA linears have none)")
    n_true, k_true = lin.out_features, lin.in_features
    if w.block_n is not None:
        return _sparse_linear(name, lin, n_pad, k_pad)
    vals = _scatter(w.values.to(torch.int64)[:n_true, :k_true], n_pad, k_pad, rows, cols)
    if w.kind == "int8":
        rows_bytes = vals.to(torch.int8).numpy().view(np.uint8).copy()
    elif w.kind == "int4":
        rows_bytes = _pack_int4(vals)
    elif w.kind == "ovp4":
        rows_bytes = ovp.encode(vals.to(torch.int32), w.normal).numpy().astype(np.uint8)
        if not torch.equal(ovp.unpack(torch.from_numpy(rows_bytes), w.normal).to(torch.int64), vals):
            raise CompileError(f"{name}: OVP re-encoding of the padded weights is not lossless")
    else:
        raise UnsupportedModelError(f"{name}: weight kind {w.kind!r} unsupported")
    mult, shift = _multipliers(lin, n_pad, rows)
    spec = LinearSpec(name, n_pad, k_pad, n_true, k_true, w.kind, w.normal or "int4", rows_bytes,
                      mult.numpy(), shift.numpy(), lin.act)
    if w.group_mult is not None:
        groups = -(-k_pad // w.group)
        if groups != w.group_mult.shape[1]:  # cannot happen: the group is a multiple of 16 (contract.GROUP_SIZES)
            raise CompileError(f"{name}: {w.group_mult.shape[1]} weight groups in golden, {groups} after padding")
        # padded rows: multiplier 1 on zero weights (any value in 1..15 gives the same zero sums)
        gm = _scatter(w.group_mult.to(torch.int64)[:n_true], n_pad, groups, rows, None)
        if rows is not None or n_pad > n_true:
            filled = torch.zeros(n_pad, dtype=torch.bool)
            filled[torch.arange(n_true) if rows is None else torch.as_tensor(rows)] = True
            gm[~filled] = 1
        spec.group, spec.group_bytes = w.group, pack_group_mult(gm.numpy().astype(np.uint8))
    if lin.act == "ovp4":
        _ovp_activation(spec, lin)
    return spec


def _ovp_activation(spec: LinearSpec, lin) -> None:
    """The OVP4 encoder's parameters of a static-activation linear, folded as golden.contract does."""
    from olivine.golden import contract
    from olivine.golden.ovp_format import get_format

    if lin.act_alpha is None or lin.act_normal not in ("int4", "flint4"):
        raise CompileError(f"{spec.name}: OVP4 activations without a calibrated alpha / normal type")
    scale = float(lin.act_alpha) / get_format(lin.act_normal).normal_max
    m = contract.quantize_multiplier(2.0 ** (contract.OVP_ACT_GUARD_BITS - lin.in_frac) / scale)
    spec.act_alpha, spec.act_normal = float(lin.act_alpha), lin.act_normal
    spec.act_mult = (int(m.mult), int(m.shift))


def _multipliers(lin, n_pad: int, rows=None):
    """Per-row (mult, shift) padded to n_pad; rows beyond out_features get 0 so they output exactly 0
    (golden pads sparse OVP weights with rows of 1.0 and crops their outputs; the compiled model keeps
    the padded output columns, which must stay zero for the next per-token quantization)."""
    n_true = lin.out_features or n_pad
    mult = torch.zeros(n_pad, dtype=torch.int64)
    shift = torch.zeros(n_pad, dtype=torch.int64)
    m = lin.mult.mult.reshape(-1).to(torch.int64)[:n_true]
    s = lin.mult.shift.reshape(-1).to(torch.int64)[:n_true]
    at = torch.arange(m.numel()) if rows is None else torch.as_tensor(rows)
    mult[at] = m
    shift[at] = s
    return mult, shift


def _sparse_linear(name: str, lin, n_pad: int, k_pad: int) -> LinearSpec:
    """A golden N:16 sparse weight as stored: kept values, packed indices, block N (exactly golden's bytes)."""
    from olivine.golden import ovp
    from olivine.golden import sparsity as sp

    w = lin.weight
    if tuple(w.values.shape) != (n_pad, k_pad):
        raise CompileError(f"{name}: sparse weight shape {tuple(w.values.shape)} differs from the padded "
                           f"shape {(n_pad, k_pad)}")
    if isinstance(w.sparse, sp.SparseOvpWeight):
        sw = w.sparse.sparse
        if w.sparse.bits != 4:
            raise UnsupportedModelError(f"{name}: sparse OVP weights of {w.sparse.bits} bits are not supported")
        values = w.sparse.codes.numpy().astype(np.uint8)
        grid = ovp.unpack(w.sparse.codes, w.sparse.normal).to(torch.int64)
    elif isinstance(w.sparse, sp.SparseWeight):
        sw = w.sparse
        grid = sw.values.to(torch.int64)
        if w.kind == "int8":
            values = grid.to(torch.int8).numpy().view(np.uint8).copy()
        else:
            v = grid.numpy() & 0xF
            values = (v[0::2] | (v[1::2] << 4)).astype(np.uint8)
    else:
        raise CompileError(f"{name}: a sparse weight without its golden compressed form")
    dense = torch.zeros(n_pad, k_pad, dtype=torch.int64)
    dense[sw.rows(), sw.columns()] = grid
    if not torch.equal(dense, w.values.to(torch.int64)):
        raise CompileError(f"{name}: the stored sparse weight does not decode to golden's grid values")
    mult, shift = _multipliers(lin, n_pad)
    return LinearSpec(name, n_pad, k_pad, lin.out_features, lin.in_features, w.kind, w.normal or "int4", None,
                      mult.numpy(), shift.numpy(), lin.act, block_n=sw.block_n.numpy().astype(np.uint8),
                      values=values, indices=sw.packed_indices().numpy().astype(np.uint8))


def spec_from_qllama(q, source: str = "") -> ModelSpec:
    """The compiler's view of a golden ``QLlama`` (from ``golden.qmodel.quantize_model``)."""
    from olivine.golden.qmodel import QLlama

    if not isinstance(q, QLlama):
        raise TypeError(f"spec_from_qllama expects a golden QLlama, got {type(q).__name__}")
    if q.is_float:
        raise UnsupportedModelError("the fp32 preset has no integer form; choose an integer preset (e.g. w4a8-ovp)")
    c = q.config
    check_config(c)
    dims = padded_linear_shapes(c)
    qi, kvi = head_index(c.n_heads, c.head_dim), head_index(c.n_kv_heads, c.head_dim)
    maps = {"wq": (qi, None), "wk": (kvi, None), "wv": (kvi, None), "wo": (None, qi)}
    linears = {}
    for i in range(c.n_layers):
        for n in LINEAR_NAMES:
            name = f"layers.{i}.{n}"
            linears[name] = _linear_from_qlinear(name, q.linears[name], *dims[n], *maps.get(n, (None, None)))
    linears["lm_head"] = _linear_from_qlinear("lm_head", q.linears["lm_head"], pad16(c.vocab_size), c.dim)
    em = fixed.quantize_multiplier(c.norm_eps)
    emb = q.embed_q
    if emb.kind != "int8":
        raise UnsupportedModelError(f"embedding table kind {emb.kind!r}: the embedding must be an INT8 table")
    gammas = {k: v.numpy().astype(np.int32) for k, v in q.gamma.items()}
    return ModelSpec(c, linears, gammas, em, emb.values.to(torch.int8).numpy(), q.embed_mult.mult.numpy().astype(np.int64),
                     q.embed_mult.shift.numpy().astype(np.int64),
                     (int(q.score_mult.mult), int(q.score_mult.shift)), (int(q.pv_mult.mult), int(q.pv_mult.shift)),
                     preset=q.qcfg.name, source=source)


def spec_from_shapes(config: LlamaConfig, weights: str = "ovp4", head: str = "int8", preset: str = "shapes",
                     sparsity=None, group: int | None = None) -> ModelSpec:
    """A spec with shapes and precisions only (nothing materialized): for instruction counts and sizes.

    ``sparsity`` ("8:16", "4:16", "2:16", "2:4"): uniform N:16 on every decoder linear (lm_head dense).
    ``group`` (64 / 128): per-group weight multipliers on every dense int4/ovp4 decoder linear.
    """
    n_sp = sparse_n_of(sparsity)
    check_config(config)
    c = config
    dims = padded_linear_shapes(c)
    true = c.linear_shapes()
    linears = {}
    for i in range(c.n_layers):
        for n in LINEAR_NAMES:
            name = f"layers.{i}.{n}"
            linears[name] = LinearSpec(name, *dims[n], *true[n], weights)
            if group and n_sp is None and weights in ("int4", "ovp4"):
                linears[name].group = group
            if n_sp is not None:
                linears[name].block_n = np.full((dims[n][0] // 16, dims[n][1] // 16), n_sp, dtype=np.uint8)
    linears["lm_head"] = LinearSpec("lm_head", pad16(c.vocab_size), c.dim, c.vocab_size, c.dim, head)
    gammas = {f"layers.{i}.{n}": None for i in range(c.n_layers) for n in ("attn_norm", "ffn_norm")}
    gammas["final_norm"] = None
    sm = fixed.quantize_multiplier(2.0 ** (fixed.SCORE_FRAC - 2 * fixed.ACT_FRAC) / math.sqrt(c.head_dim) / 127**2)
    return ModelSpec(c, linears, gammas, fixed.quantize_multiplier(c.norm_eps), None, None, None, sm,
                     fixed.quantize_multiplier(2.0 ** (8 - fixed.PROB_FRAC) / 127), preset=preset, source="shapes",
                     materialized=False)


# ---- Hugging Face front end -------------------------------------------------------------------

_HF_LEAF_OK = ("Embedding", "Linear", "LlamaRMSNorm", "LlamaRotaryEmbedding", "SiLU", "SiLUActivation",
               "Identity", "Dropout")
_HF_CONTAINERS = ("LlamaForCausalLM", "LlamaModel", "LlamaDecoderLayer", "LlamaAttention", "LlamaSdpaAttention",
                  "LlamaFlashAttention2", "LlamaMLP", "ModuleList")


def check_hf_module(model) -> None:
    """Walk a Hugging Face LlamaForCausalLM's module tree; raise naming the first unsupported layer.

    A graph builder over the module tree is used instead of torch.fx / torch.export: a LLaMA
    decoder is a fixed composition, so what must be checked is each module's type, shape and
    options (a bias, the activation, head_dim), which the tree states directly, while tracing
    would also record cache/mask plumbing that the compiler replaces anyway.
    """
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ("llama",):
        raise UnsupportedModelError(f"model type {getattr(cfg, 'model_type', type(model).__name__)!r}: only "
                                    "LlamaForCausalLM is supported")
    act = getattr(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"model.layers.*.mlp.act_fn: activation {act!r} is not SiLU; the SFU implements "
                                    "SiLU/SwiGLU only")
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind in _HF_CONTAINERS or name == "":
            continue
        if kind not in _HF_LEAF_OK:
            if any(True for _ in mod.children()):
                continue
            raise UnsupportedModelError(f"{name}: module type {kind} is not supported by the olivine compiler")
        if kind == "Linear" and mod.bias is not None:
            raise UnsupportedModelError(f"{name}: a bias in a linear is not supported")
        if kind == "SiLU" or kind == "SiLUActivation":
            continue


def spec_from_hf(model, preset: str = "w4a8-ovp", calib_tokens=None) -> ModelSpec:
    """Check, convert (golden.loaders) and quantize a Hugging Face LlamaForCausalLM module."""
    from olivine.golden.loaders import config_from_hf, weights_from_hf_state_dict
    from olivine.golden.qmodel import quantize_model

    check_hf_module(model)
    config = config_from_hf(model.config.to_dict(), name=getattr(model.config, "name_or_path", "hf") or "hf")
    weights = weights_from_hf_state_dict(config, {k: v.detach().float() for k, v in model.state_dict().items()})
    return spec_from_qllama(quantize_model(config, weights, preset, calib_tokens), source="hf")
