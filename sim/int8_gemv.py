"""Exact int8 x int8 -> integer products through torch's FBGEMM dynamic linear (the functional simulator's
linear MVs on CPUs without VNNI, where ``torch._int_mm`` runs a slow generic kernel: 0.7 ms for a 576 x 1536
GEMV on an AVX2 EPYC against 0.06 ms here).

``quantized::linear_dynamic`` quantizes its float activations per tensor from their minimum and maximum
(unsigned 8 bits: scale = (max - min) / 255, zero point = -min / scale), multiplies the uint8 codes with the
int8 weights in int32 (AVX2: ``vpmaddubsw`` sums two uint8 x int8 products in int16 with saturation, then
``vpmaddwd`` widens to int32) and returns ``scale * w_scale * (acc - zero_point * column_sums)`` in float32.
Made exact here:
- every activation row gets two extra columns, -128 and 127, whose weights are 0: min and max are then
  always -128 and 127, so scale = 255 / 255 = 1 and zero point = 128, and the codes are a + 128 in [0, 255]
  exactly (INT8 codes are integers in [-128, 127]); the weights are int8 with scale 1 and zero point 0;
- no int16 pair sum saturates: |(a + 128) * w| summed over two columns is at most 2 * 255 * max|w| <= 32767
  for max|w| <= 64 (int4 tiles have max|w| <= 8; larger weights, int8 tiles, are split in two products,
  :class:`Split`);
- every integer on the way is below 2**24 and so exact in float32: the raw sum is at most 255 * max|w| * K,
  the zero-point term 128 * max|w| * K, the result 128 * max|w| * K (``pack`` refuses larger K * max|w|).
The result is therefore ``a @ w.T`` exactly, as float32 integers. ``available()`` checks the ops exist and
answer a known product with extreme operands once per process; where it fails, ``pack`` returns None and the
simulator keeps its other exact paths.
"""

from __future__ import annotations

import warnings

import torch

#: the largest |w| whose int16 pair sums cannot saturate: 2 * 255 * 64 = 32640 <= 32767
MAX_WEIGHT = 64
_EXACT_F32 = 1 << 24

_STATE: dict = {}


def _prepack(w: torch.Tensor):
    """FBGEMM's packed form of int8 weights ``w`` [n, k] (scale 1, zero point 0) with two zero columns appended."""
    ext = torch.cat([w.to(torch.int8), torch.zeros(w.shape[0], 2, dtype=torch.int8)], dim=1).contiguous()
    prev = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch 2.13 (still supported)
        try:
            torch.backends.quantized.engine = "fbgemm"
            return torch.ops.quantized.linear_prepack(torch._make_per_tensor_quantized_tensor(ext, 1.0, 0), None)
        finally:
            torch.backends.quantized.engine = prev


def _raw_product(packed, a: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    x = torch.empty(m, k + 2, dtype=torch.float32)
    x[:, :k] = a
    x[:, k] = -128.0
    x[:, k + 1] = 127.0
    return _STATE["op"](x, packed, False)


def available() -> bool:
    """Whether this torch has FBGEMM's dynamic linear and it answers a known product exactly (checked once)."""
    ok = _STATE.get("ok")
    if ok is None:
        ok = False
        try:
            if "fbgemm" in torch.backends.quantized.supported_engines:
                _STATE["op"] = torch.ops.quantized.linear_dynamic.default  # the overload: no per-call resolution
                g = torch.Generator().manual_seed(7)
                k = 1024
                w = torch.randint(-MAX_WEIGHT, MAX_WEIGHT + 1, (40, k), generator=g, dtype=torch.int64)
                w[0], w[1], w[2] = MAX_WEIGHT, -MAX_WEIGHT, torch.where(torch.arange(k) % 2 == 0, MAX_WEIGHT, -MAX_WEIGHT)
                a = torch.randint(-128, 128, (4, k), generator=g, dtype=torch.int64)
                a[0], a[1] = -128, 127
                got = _raw_product(_prepack(w), a.to(torch.float32))
                ok = bool(torch.equal(got.to(torch.int64), a @ w.T))
        except (RuntimeError, AttributeError, NotImplementedError):
            ok = False
        _STATE["ok"] = ok
    return ok


class Split:
    """Weights with max|w| above 64 packed as one tile of 2n rows [hi; lo]: w = 16 * hi + lo, lo = w mod 16
    in [0, 15], hi = floor(w / 16) (|hi| <= 64 while |w| <= 1024); the product is 16 * (a @ hi.T) + a @ lo.T,
    each exact, summed in int32 (no wrap: 128 * (max|w| + 16) * K < 2**31 bounds 16 * |a @ hi.T| and the
    sum; ``pack`` checks it). One call of the dynamic linear for both halves (its fixed cost is ~25 us)."""

    def __init__(self, packed, n: int):
        self.packed, self.n = packed, n

    def combine(self, raw: torch.Tensor) -> torch.Tensor:
        r = raw.to(torch.int32)
        return r[:, : self.n].mul(16).add_(r[:, self.n:])


def pack(w: torch.Tensor, vmax: int):
    """The packed form of integer weights ``w`` [n, k] with max|w| = ``vmax`` (a :class:`Split` above 64), or
    None where the product would not be exact (K * max|part| too large for float32, ``vmax`` above 1024) or
    FBGEMM is not available."""
    k = w.shape[1]
    part = vmax if vmax <= MAX_WEIGHT else max(15, (vmax + 15) // 16)
    if part > MAX_WEIGHT or 255 * part * (k + 2) >= _EXACT_F32 or 128 * (vmax + 16) * k >= 1 << 31 or k == 0 \
            or not available():
        return None
    if vmax <= MAX_WEIGHT:
        return _prepack(w)
    w = w.to(torch.int64)
    return Split(_prepack(torch.cat([w >> 4, w & 15])), w.shape[0])


class Gemv:
    """A reusable one-row product with a packed tile: ``x`` (float32 [1, k + 2], the two range columns set
    once) takes the INT8 codes, ``run()`` returns ``codes @ w.T`` as float32 [1, n] integers."""

    def __init__(self, k: int):
        self.x = torch.zeros(1, k + 2, dtype=torch.float32)
        self.x[0, k] = -128.0
        self.x[0, k + 1] = 127.0
        self.row = self.x.numpy()[0, :k]  # write the codes here

    def run(self, packed) -> torch.Tensor:
        """float32 (one tile, |result| < 2**24) or int32 (a :class:`Split`) [1, n]: the exact product."""
        if type(packed) is Split:
            return packed.combine(_STATE["op"](self.x, packed.packed, False))
        return _STATE["op"](self.x, packed, False)


def matmul(packed, a: torch.Tensor) -> torch.Tensor:
    """``a @ w.T`` exactly (int32 [m, n]) for INT8 codes ``a`` [m, k] and ``packed`` = ``pack(w, ...)``."""
    x = a.to(torch.float32)
    if type(packed) is Split:
        return packed.combine(_raw_product(packed.packed, x))
    return _raw_product(packed, x).to(torch.int32)
