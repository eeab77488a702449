"""Weight decode at the sparse DSP chain input: INT8 / INT4 / OVP4 codes -> B-port integers.

The DSP48E2 B port is 18 bits, so every weight format is turned into one plain signed integer
per DSP before the multiplier: the weight's value on its integer grid. For OVP4 the pair decoder
(``olivine.hw.ovp_decoder.OvpPairDecoder``, built from golden/ovp_format's tables) yields
``(exponent, integer)`` with ``value = integer << exponent``; the shift is applied here, into the
wider B operand (|integer| <= 7, exponent <= 6, so |value| <= 192 < 2^8: 9 signed bits). The DSP
then multiplies the INT8 activation by the shifted weight, which is exactly ``(a * i) << e``.

Formats and packed input (``weights`` port):
  "int8": L signed bytes, weight d = bits [8d, 8d+8).
  "int4": L signed nibbles, weight d = bits [4d, 4d+4) (two's complement -8..7).
  "grid": L signed 9-bit integers already on their grid (any of the above decoded upstream, e.g. by
          the matrix engine, which picks the format per instruction): passed through unchanged.
  "ovp4": L/2 OVP pair bytes; byte p decodes to weight 2p (low nibble, even element) and weight
          2p+1 (high nibble, odd element), as golden pairs kept values 2k, 2k+1 of a row.
          ``ovp_normal`` picks the normal type: "int4", "flint4", or "runtime" (then the
          ``flint`` input selects flint4 = 1 / int4 = 0 per cycle).

Ports: in ``weights`` (packed, see above), in ``flint`` (runtime only);
       out ``values``: ArrayLayout(signed(value_bits), L).
Latency: 0 cycles (combinational). Throughput: L weights per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from olivine.golden import ovp_format

__all__ = ["WEIGHT_FORMATS", "GRID_FORMAT", "GRID_BITS", "OVP_NORMALS", "WeightDecodeError", "WeightDecoder",
           "weight_value_range", "packed_weight_layout", "reference_decode"]

WEIGHT_FORMATS = ("int8", "int4", "ovp4")
#: pre-decoded grid values of any format (range: the union of int8 and both OVP4 normals)
GRID_FORMAT = "grid"
GRID_BITS = 9
OVP_NORMALS = ("int4", "flint4", "runtime")


class WeightDecodeError(ValueError):
    """Bad weight-decoder configuration or packed weights."""


def _ovp_formats(normal: str):
    return [ovp_format.get_format(n) for n in (("int4", "flint4") if normal == "runtime" else (normal,))]


def weight_value_range(weight_format: str, ovp_normal: str = "int4") -> tuple[int, int]:
    """(min, max) integer a decoded weight of this format can take (from golden's tables)."""
    if weight_format == "int8":
        return (-128, 127)
    if weight_format == "int4":
        return (-8, 7)
    if weight_format == GRID_FORMAT:
        lo, hi = weight_value_range("ovp4", "runtime")
        return (min(lo, -128), max(hi, 127))
    if weight_format == "ovp4":
        _check_normal(ovp_normal)
        values = set()
        for fmt in _ovp_formats(ovp_normal):
            for op in (*fmt.normal_operands, *fmt.outlier_operands):
                if op is not None:
                    values.add(op[1] << op[0])
        return (min(values), max(values))
    raise WeightDecodeError(f"unknown weight format {weight_format!r}; expected one of {WEIGHT_FORMATS}")


def _check_normal(ovp_normal):
    if ovp_normal not in OVP_NORMALS:
        raise WeightDecodeError(f"unknown OVP normal type {ovp_normal!r}; expected one of {OVP_NORMALS}")


def _value_bits(weight_format: str, ovp_normal: str) -> int:
    lo, hi = weight_value_range(weight_format, ovp_normal)
    return max((-lo - 1).bit_length(), hi.bit_length()) + 1


def packed_weight_layout(weight_format: str, length: int):
    """Shape of the packed ``weights`` input for ``length`` DSPs."""
    if weight_format == "int8":
        return data.ArrayLayout(signed(8), length)
    if weight_format == "int4":
        return data.ArrayLayout(signed(4), length)
    if weight_format == GRID_FORMAT:
        return data.ArrayLayout(signed(GRID_BITS), length)
    if weight_format == "ovp4":
        if length % 2:
            raise WeightDecodeError(f"ovp4 weights come in pairs: length {length} must be even")
        return data.ArrayLayout(unsigned(8), length // 2)
    raise WeightDecodeError(f"unknown weight format {weight_format!r}; expected one of {WEIGHT_FORMATS}")


def reference_decode(weight_format: str, packed, ovp_normal: str = "int4", flint: bool = False) -> list[int]:
    """Python model: the packed codes (a list of ints as in ``packed_weight_layout``, i.e. signed
    bytes / signed nibbles / unsigned pair bytes) -> the integer weights, via golden's tables."""
    if weight_format in ("int8", "int4", GRID_FORMAT):
        lo, hi = weight_value_range(weight_format)
        out = [int(v) for v in packed]
        if any(not lo <= v <= hi for v in out):
            raise WeightDecodeError(f"{weight_format} weights must be in {lo}..{hi}")
        return out
    if weight_format == "ovp4":
        _check_normal(ovp_normal)
        normal = ("flint4" if flint else "int4") if ovp_normal == "runtime" else ovp_normal
        table = ovp_format.PAIR_DECODE_TABLES[normal]["value"]
        out = []
        for byte in packed:
            if not 0 <= int(byte) <= 0xFF:
                raise WeightDecodeError(f"OVP pair byte {byte} is not in 0..255")
            out.extend(int(v) for v in table[int(byte)])
        return out
    raise WeightDecodeError(f"unknown weight format {weight_format!r}; expected one of {WEIGHT_FORMATS}")


class WeightDecoder(wiring.Component):
    """Packed weights of one chain beat -> one signed integer per DSP (see module docstring).

    Ports: ``weights`` In(packed_weight_layout), ``flint`` In(1) (ovp4 runtime only),
    ``values`` Out(ArrayLayout(signed(value_bits), length)).
    Latency 0 (combinational); throughput ``length`` weights per cycle.
    """

    def __init__(self, weight_format: str = "int8", length: int = 2, *, ovp_normal: str = "int4"):
        if not isinstance(length, int) or length < 1:
            raise WeightDecodeError(f"length must be a positive int, got {length!r}")
        if weight_format == "ovp4":
            _check_normal(ovp_normal)
        self.weight_format = weight_format
        self.length = length
        self.ovp_normal = ovp_normal
        self.value_bits = _value_bits(weight_format, ovp_normal)
        members = {"weights": In(packed_weight_layout(weight_format, length))}
        if weight_format == "ovp4" and ovp_normal == "runtime":
            members["flint"] = In(1)
        members["values"] = Out(data.ArrayLayout(signed(self.value_bits), length))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        if self.weight_format in ("int8", "int4", GRID_FORMAT):
            for d in range(self.length):
                m.d.comb += self.values[d].eq(self.weights[d])
            return m
        from .ovp_decoder import OvpPairDecoder

        for p in range(self.length // 2):
            dec = OvpPairDecoder(self.ovp_normal)
            m.submodules[f"pair{p}"] = dec
            m.d.comb += dec.pair.eq(self.weights[p])
            if self.ovp_normal == "runtime":
                m.d.comb += dec.flint.eq(self.flint)
            for d, operand in ((2 * p, dec.even), (2 * p + 1, dec.odd)):
                # value = integer << exponent, into the wider B operand
                m.d.comb += self.values[d].eq(operand.integer << operand.exponent)
        return m
