"""Olivine's OVP (outlier-victim pair) bit format, as plain tables: no torch needed.

This module is the single definition of the bit format (docs/ovp.md, helpers/OVP_FORMAT.md).
The torch quantizer (``ovp.py``) and the hardware generator (``olivine.hw``) both read it, so it
only uses the standard library and numpy.

All values are integers in units of one LSB of the normal type ("grid values").

4-bit OVP: one byte per pair of neighbours (x[2k], x[2k+1]) along the last dimension.
  LOW nibble (bits 3:0) = even element, HIGH nibble (bits 7:4) = odd element.
  The identifier nibble 0b1000 marks the victim; a pair is outlier-victim iff exactly one nibble
  is 0b1000 and the other nibble is then an abfloat outlier. 0x88, 0x08 and 0x80 (identifier
  next to identifier or next to the excluded abfloat code e = m = 0) are never produced; they
  decode as two zeros.
  - int4 normal: two's complement -7..7.
  - flint4 normal: sign-magnitude, bit3 = sign, bits 2:0 index into {0,1,2,3,4,6,8,16}.
  - abfloat outlier: bit3 = sign, bits 2:1 = e, bit0 = m; magnitude (2 + m) << (e + bias);
    e = m = 0 is excluded. bias 2 on int4, 3 on flint4.

8-bit OVP: one 16-bit word per pair (low byte = even element, high byte = odd element). Stored
  as uint8 [..., last] so bytes 2k, 2k+1 are the little-endian halves of word k.
  - int8 normal: two's complement -127..127; identifier byte 0x80.
  - abfloat E3M4 outlier: bit7 = sign, bits 6:4 = e, bits 3:0 = m; magnitude (16 + m) << (e + 3);
    e = m = 0 is excluded.

Decoded operand of one element: (exponent, integer) with value = integer << exponent (the
shift applies to the magnitude; the integer carries the sign), which is what a shift-and-add MAC
consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "NORMAL_TYPES",
    "NIBBLE_IDENTIFIER",
    "BYTE_IDENTIFIER",
    "OvpFormat",
    "FORMATS",
    "get_format",
    "decode_nibble",
    "decode_byte",
    "decode_word",
    "encode_pair",
    "PAIR_DECODE_TABLES",
    "OvpFormatError",
]


class OvpFormatError(ValueError):
    """A value or code that the OVP format cannot represent."""


#: Names of the normal data types, in the order they are documented.
NORMAL_TYPES: tuple[str, ...] = ("int4", "flint4", "int8")

#: 4-bit identifier (victim marker) nibble.
NIBBLE_IDENTIFIER = 0b1000
#: 8-bit identifier (victim marker) byte.
BYTE_IDENTIFIER = 0x80

_FLINT4_MAGNITUDES = (0, 1, 2, 3, 4, 6, 8, 16)
# flint4 magnitude -> (exponent, unsigned integer): the integer must fit 4-bit signed.
_FLINT4_OPERAND = {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (0, 3), 4: (0, 4), 6: (0, 6), 8: (1, 4), 16: (2, 4)}


def _signed(value: int, bits: int) -> int:
    """Two's-complement interpretation of an unsigned ``bits``-wide field."""
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


@dataclass(frozen=True)
class OvpFormat:
    """One OVP element format: a normal type with its outlier type.

    Fields (all integers in LSB units of the normal type):
      name            normal type name ("int4", "flint4", "int8")
      bits            element width (4 or 8); a pair is 2 * bits wide
      normal_max      largest normal magnitude; scale = alpha / normal_max
      normal_grid     ascending signed normal values
      outlier_grid    ascending signed outlier values (magnitudes > normal_max)
      bias            abfloat exponent bias: magnitude = (mantissa_lead + m) << (e + bias)
      identifier      victim-marker code (0b1000 for 4-bit, 0x80 for 8-bit)
      normal_codes    {value: code} for normal values
      outlier_codes   {value: code} for outlier values
      normal_operands list indexed by code -> (exponent, integer) or None if not a normal code
      outlier_operands list indexed by code -> (exponent, integer) or None if not an outlier code
    """

    name: str
    bits: int
    normal_max: int
    normal_grid: tuple[int, ...]
    outlier_grid: tuple[int, ...]
    bias: int
    identifier: int
    normal_codes: dict[int, int] = field(repr=False)
    outlier_codes: dict[int, int] = field(repr=False)
    normal_operands: tuple[tuple[int, int] | None, ...] = field(repr=False)
    outlier_operands: tuple[tuple[int, int] | None, ...] = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"OvpFormat(name={self.name!r}, bits={self.bits}, normal_max={self.normal_max}, "
            f"outliers={self.outlier_min}..{self.outlier_max}, bias={self.bias}, identifier={self.identifier:#x})"
        )

    @property
    def outlier_max(self) -> int:
        """Largest outlier magnitude (saturation point)."""
        return self.outlier_grid[-1]

    @property
    def outlier_min(self) -> int:
        """Smallest outlier magnitude."""
        return min(v for v in self.outlier_grid if v > 0)

    @property
    def outlier_threshold(self) -> float:
        """Midpoint between the largest normal and smallest outlier (a tie goes to the outlier)."""
        return (self.normal_max + self.outlier_min) / 2

    @property
    def union_grid(self) -> tuple[int, ...]:
        """Ascending union of normal and outlier values: the rounding grid."""
        return tuple(sorted(set(self.normal_grid) | set(self.outlier_grid)))

    @property
    def code_mask(self) -> int:
        return (1 << self.bits) - 1

    def is_outlier_value(self, value: int) -> bool:
        return abs(int(value)) > self.normal_max

    def encode_normal(self, value: int) -> int:
        try:
            return self.normal_codes[int(value)]
        except KeyError:
            raise OvpFormatError(f"{value} is not a {self.name} normal value; valid: {self.normal_grid}") from None

    def encode_outlier(self, value: int) -> int:
        try:
            return self.outlier_codes[int(value)]
        except KeyError:
            raise OvpFormatError(
                f"{value} is not a {self.name} outlier value (bias {self.bias}); valid: {self.outlier_grid}"
            ) from None


def _twos_complement_normals(normal_max: int, bits: int):
    """Signed normals -normal_max..normal_max in two's complement (the most negative code is free)."""
    grid = tuple(range(-normal_max, normal_max + 1))
    codes = {v: v & ((1 << bits) - 1) for v in grid}
    ops: list = [None] * (1 << bits)
    for v, c in codes.items():
        ops[c] = (0, v)
    return grid, codes, ops


def _abfloat_outliers(bits: int, exp_bits: int, man_bits: int, bias: int):
    """abfloat codes: sign, exponent e, mantissa m; magnitude (2**man_bits + m) << (e + bias).

    The codes with e = 0, m = 0 (both signs) are excluded, so no outlier equals the identifier.
    """
    codes: dict[int, int] = {}
    ops: list = [None] * (1 << bits)
    for code in range(1 << bits):
        s, e, m = code >> (bits - 1), (code >> man_bits) & ((1 << exp_bits) - 1), code & ((1 << man_bits) - 1)
        if e == 0 and m == 0:
            continue
        integer = (1 << man_bits) + m
        mag = integer << (e + bias)
        codes[-mag if s else mag] = code
        ops[code] = (e + bias, -integer if s else integer)
    return codes, ops


def _format(name, bits, normal_max, normal_grid, normal_codes, normal_ops, *, exp_bits, man_bits, bias,
            identifier) -> OvpFormat:
    outlier_codes, outlier_ops = _abfloat_outliers(bits, exp_bits, man_bits, bias)
    return OvpFormat(
        name=name,
        bits=bits,
        normal_max=normal_max,
        normal_grid=tuple(normal_grid),
        outlier_grid=tuple(sorted(outlier_codes)),
        bias=bias,
        identifier=identifier,
        normal_codes=normal_codes,
        outlier_codes=outlier_codes,
        normal_operands=tuple(normal_ops),
        outlier_operands=tuple(outlier_ops),
    )


def _build_int4() -> OvpFormat:
    grid, codes, ops = _twos_complement_normals(7, 4)
    return _format("int4", 4, 7, grid, codes, ops, exp_bits=2, man_bits=1, bias=2, identifier=NIBBLE_IDENTIFIER)


def _build_flint4() -> OvpFormat:
    normal_codes: dict[int, int] = {}
    normal_ops: list = [None] * 16
    for k, mag in enumerate(_FLINT4_MAGNITUDES):
        e, i = _FLINT4_OPERAND[mag]
        normal_codes[mag] = k
        normal_ops[k] = (e, i)
        if mag:
            normal_codes[-mag] = 0b1000 | k
            normal_ops[0b1000 | k] = (e, -i)
    normal_grid = tuple(sorted(normal_codes))
    return _format("flint4", 4, 16, normal_grid, normal_codes, normal_ops, exp_bits=2, man_bits=1, bias=3,
                   identifier=NIBBLE_IDENTIFIER)


def _build_int8() -> OvpFormat:
    # E3M4 outliers with bias 3: smallest 17 << 3 = 136 > 127 (docs/ovp.md, "8-bit OVP").
    grid, codes, ops = _twos_complement_normals(127, 8)
    return _format("int8", 8, 127, grid, codes, ops, exp_bits=3, man_bits=4, bias=3, identifier=BYTE_IDENTIFIER)


#: name -> OvpFormat for every normal type.
FORMATS: dict[str, OvpFormat] = {"int4": _build_int4(), "flint4": _build_flint4(), "int8": _build_int8()}


def get_format(normal: str) -> OvpFormat:
    """The OvpFormat of a normal type name; raises ValueError naming the valid names."""
    try:
        return FORMATS[normal]
    except (KeyError, TypeError):
        raise OvpFormatError(f"unknown OVP normal type {normal!r}; expected one of {NORMAL_TYPES}") from None


def decode_nibble(normal: str, nibble: int, *, outlier: bool = False) -> tuple[int, int]:
    """Decode one element code to its (exponent, integer) operand.

    ``outlier`` says how the code is read: False for a normal slot (a normal-normal pair, or the
    victim slot, which is the identifier and decodes to (0, 0)); True for the outlier slot of an
    outlier-victim pair. Use ``decode_byte``/``decode_word`` to decode a whole pair, which works
    out which slot is which. Works for 8-bit codes too (``normal="int8"``, code 0..255).
    """
    fmt = get_format(normal)
    if not 0 <= int(nibble) <= fmt.code_mask:
        raise OvpFormatError(f"code {nibble} does not fit {fmt.bits} bits")
    code = int(nibble)
    if outlier:
        op = fmt.outlier_operands[code]
        if op is None:
            raise OvpFormatError(f"code {code:#x} is not an abfloat outlier code of {normal}")
        return op
    if code == fmt.identifier:
        return (0, 0)
    op = fmt.normal_operands[code]
    assert op is not None  # every non-identifier code is a normal code
    return op


def _decode_pair(fmt: OvpFormat, low: int, high: int) -> tuple[tuple[int, int], tuple[int, int]]:
    ident = fmt.identifier
    if low == ident or high == ident:
        other = high if low == ident else low
        op = fmt.outlier_operands[other]
        if op is None:
            # identifier next to identifier or next to the excluded e = m = 0 code: never
            # produced by the encoder; defined as two zeros.
            return (0, 0), (0, 0)
        return ((0, 0), op) if low == ident else (op, (0, 0))
    return fmt.normal_operands[low], fmt.normal_operands[high]  # type: ignore[return-value]


def decode_byte(normal: str, byte: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Decode a 4-bit OVP pair byte to ((exp_even, int_even), (exp_odd, int_odd))."""
    fmt = get_format(normal)
    if fmt.bits != 4:
        raise OvpFormatError(f"decode_byte is for 4-bit formats; {normal} is {fmt.bits}-bit (use decode_word)")
    if not 0 <= int(byte) <= 0xFF:
        raise OvpFormatError(f"byte {byte} out of range 0..255")
    return _decode_pair(fmt, int(byte) & 0xF, int(byte) >> 4)


def decode_word(word: int, normal: str = "int8") -> tuple[tuple[int, int], tuple[int, int]]:
    """Decode an 8-bit OVP pair word (low byte = even element) to two (exponent, integer)."""
    fmt = get_format(normal)
    if fmt.bits != 8:
        raise OvpFormatError(f"decode_word is for 8-bit formats; {normal} is {fmt.bits}-bit (use decode_byte)")
    if not 0 <= int(word) <= 0xFFFF:
        raise OvpFormatError(f"word {word} out of range 0..65535")
    return _decode_pair(fmt, int(word) & 0xFF, int(word) >> 8)


def encode_pair(normal: str, even: int, odd: int) -> int:
    """Encode a pair of grid values (after victims) to its byte (4-bit) or word (8-bit).

    Valid pairs: two normal values; an outlier with a 0 partner (the victim). Anything else
    (two outliers, an outlier next to a non-zero normal, off-grid values) raises OvpFormatError.
    """
    fmt = get_format(normal)
    even, odd = int(even), int(odd)
    out_even, out_odd = fmt.is_outlier_value(even), fmt.is_outlier_value(odd)
    if out_even and out_odd:
        raise OvpFormatError(f"pair ({even}, {odd}): two outliers cannot share a pair; apply the victim rule first")
    if out_even:
        if odd != 0:
            raise OvpFormatError(f"pair ({even}, {odd}): the victim of an outlier must be 0")
        low, high = fmt.encode_outlier(even), fmt.identifier
    elif out_odd:
        if even != 0:
            raise OvpFormatError(f"pair ({even}, {odd}): the victim of an outlier must be 0")
        low, high = fmt.identifier, fmt.encode_outlier(odd)
    else:
        low, high = fmt.encode_normal(even), fmt.encode_normal(odd)
    return low | (high << fmt.bits)


def _pair_decode_arrays(fmt: OvpFormat) -> dict[str, np.ndarray]:
    """The pair rule of ``_decode_pair`` evaluated for every byte/word at once (numpy)."""
    n_codes = 1 << fmt.bits
    norm = np.array([op if op is not None else (0, 0) for op in fmt.normal_operands], dtype=np.int8)
    outl = np.array([op if op is not None else (0, 0) for op in fmt.outlier_operands], dtype=np.int8)
    out_ok = np.array([op is not None for op in fmt.outlier_operands])
    word = np.arange(n_codes * n_codes)
    low, high = word & (n_codes - 1), word >> fmt.bits
    id_low, id_high = low == fmt.identifier, high == fmt.identifier
    ops = np.stack([norm[low], norm[high]], axis=1)  # [words, 2 (even, odd), 2 (exp, int)]
    zero = np.zeros(2, dtype=np.int8)
    victim_low = id_low & ~id_high & out_ok[high]  # (identifier, outlier)
    victim_high = id_high & ~id_low & out_ok[low]  # (outlier, identifier)
    ops[victim_low, 0] = zero
    ops[victim_low, 1] = outl[high[victim_low]]
    ops[victim_high, 0] = outl[low[victim_high]]
    ops[victim_high, 1] = zero
    ops[(id_low | id_high) & ~victim_low & ~victim_high] = 0  # never produced: two zeros
    exp = np.ascontiguousarray(ops[..., 0])
    integer = np.ascontiguousarray(ops[..., 1])
    value = integer.astype(np.int32) << exp.astype(np.int32)
    return {"exponent": exp, "integer": integer, "value": value}


#: normal name -> {"exponent", "integer", "value"}: arrays [2**(2*bits), 2] indexed by the pair
#: byte (4-bit) or word (8-bit); column 0 = even element, column 1 = odd element.
PAIR_DECODE_TABLES: dict[str, dict[str, np.ndarray]] = {name: _pair_decode_arrays(f) for name, f in FORMATS.items()}
