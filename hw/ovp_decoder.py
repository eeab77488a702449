"""OVP pair decoder: one OVP pair code in, two (exponent, integer) MAC operands out.

The decoder is built from the tables in ``olivine.golden.ovp_format`` (the single definition of
the bit format): the 4-bit decoders are 16-entry lookups of ``normal_operands`` /
``outlier_operands`` per nibble, plus the pair rule (exactly one identifier nibble => the other
nibble is an abfloat outlier and the identifier is its zero victim). The 8-bit decoder uses the
int8 / E3M4 field layout directly (a 256-entry table would waste LUTs on what is an identity and
a shift); its constructor re-derives every entry of the golden table from that logic and refuses
to build if one disagrees.

Decoded operand: ``value = integer << exponent`` (the integer carries the sign), which is what a
shift-and-add MAC consumes: ``(i_a * i_b) << (e_a + e_b)``.

Reuse: :class:`OvpPairDecoder` is standalone (no clock unless ``registered=True``); a border of a
systolic array, or a weight-decode stage in front of a DSP chain, instantiates one per pair lane.
"""

from __future__ import annotations

import functools

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from olivine.golden import ovp_format

from .resources import register_unit

__all__ = [
    "DECODER_NORMALS",
    "OvpDecoderError",
    "operand_signature",
    "operand_widths",
    "OvpPairDecoder",
]

#: Accepted ``normal`` arguments: a fixed 4-bit normal type, "runtime" (4-bit, int4 or flint4
#: chosen per cycle by the ``flint`` input) or "int8" (the 8-bit format).
DECODER_NORMALS = ("int4", "flint4", "runtime", "int8")


class OvpDecoderError(ValueError):
    """An OVP decoder was asked for a configuration it does not support."""


def quiet_rejection(init):
    """Decorate a component's ``__init__``: when it rejects its arguments, silence Amaranth's
    "created but never used" warning for the half-built object (the error says enough)."""

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except (ValueError, TypeError):
            self._MustUse__silence = True  # amaranth's MustUse flag, read when the object is freed
            raise

    return checked_init


def operand_signature(exponent_bits: int, integer_bits: int) -> wiring.Signature:
    """Signature of one decoded operand: ``exponent`` (unsigned), ``integer`` (signed)."""
    return wiring.Signature({"exponent": Out(unsigned(exponent_bits)), "integer": Out(signed(integer_bits))})


def _formats_of(normal: str) -> tuple[ovp_format.OvpFormat, ...]:
    if normal not in DECODER_NORMALS:
        raise OvpDecoderError(f"unknown decoder normal type {normal!r}; expected one of {DECODER_NORMALS}")
    if normal == "runtime":
        return (ovp_format.get_format("int4"), ovp_format.get_format("flint4"))
    return (ovp_format.get_format(normal),)


def operand_widths(normal: str) -> tuple[int, int]:
    """(exponent bits, signed integer bits) needed by the decoded operands of ``normal``.

    Derived from the golden operand tables: int4/flint4/runtime -> (3, 4), int8 -> (4, 8).
    """
    max_exp, max_mag = 0, 0
    for fmt in _formats_of(normal):
        for op in (*fmt.normal_operands, *fmt.outlier_operands):
            if op is not None:
                max_exp = max(max_exp, op[0])
                max_mag = max(max_mag, abs(op[1]))
    return max(1, max_exp.bit_length()), max_mag.bit_length() + 1


def _lookup(m: Module, code, table, exp_bits: int, int_bits: int, *, with_valid: bool):
    """A constant lookup: ``code`` -> (exponent, integer[, valid]); None entries give zeros
    (and valid = 0). Every code has an explicit case, so the lookup is a full 16-entry table."""
    exponent, integer, valid = Signal(exp_bits), Signal(signed(int_bits)), Signal()
    with m.Switch(code):
        for c, op in enumerate(table):
            with m.Case(c):
                if op is not None:
                    m.d.comb += [exponent.eq(op[0]), integer.eq(op[1])]
                    if with_valid:
                        m.d.comb += valid.eq(1)
    return (exponent, integer, valid) if with_valid else (exponent, integer, None)


def _check_int8_against_golden(fmt: ovp_format.OvpFormat) -> None:
    """The 8-bit field logic below must reproduce every golden table entry (else refuse to build)."""
    for code in range(256):
        normal = None if code == fmt.identifier else (0, code - 256 if code & 0x80 else code)
        s, e, mant = code >> 7, (code >> 4) & 0b111, code & 0xF
        outlier = None if (e == 0 and mant == 0) else (e + fmt.bias, -(16 + mant) if s else 16 + mant)
        if normal != fmt.normal_operands[code] or outlier != fmt.outlier_operands[code]:
            raise OvpDecoderError(
                f"the 8-bit decoder logic disagrees with golden/ovp_format at code {code:#04x}: "
                f"logic normal={normal} outlier={outlier}, golden normal={fmt.normal_operands[code]} "
                f"outlier={fmt.outlier_operands[code]}; update hw/ovp_decoder.py to the new format"
            )


class OvpPairDecoder(wiring.Component):
    """Decode one OVP pair (a byte for 4-bit, a 16-bit word for 8-bit) into two MAC operands.

    Parameters
    ----------
    normal : "int4" | "flint4" | "runtime" | "int8"
        Normal data type of the tensor. "runtime" builds both 4-bit decoders and selects per cycle
        with the ``flint`` input (OliVe picks int4 or flint4 per tensor, so an accelerator whose
        operand type is not fixed at build time uses this; it costs a 2:1 mux per output bit).
        "int8" is the 8-bit format (int8 normals, E3M4 outliers).
    registered : bool
        False: purely combinational (latency 0). True: one output register stage in the ``sync``
        domain, updated every cycle (latency 1 cycle, no enable: hold the input to hold it).

    Ports
    -----
    pair : In(8) for 4-bit, In(16) for 8-bit
        LOW half = even element x[2k], HIGH half = odd element x[2k+1].
    flint : In(1), only when ``normal == "runtime"``
        1 = the pair is flint4-coded, 0 = int4-coded.
    even, odd : Out(operand_signature(E, I))
        ``exponent`` (unsigned E bits) and ``integer`` (signed I bits), value = integer << exponent.
        (E, I) = (3, 4) for 4-bit formats, (4, 8) for int8 (see :func:`operand_widths`).
        The victim of an outlier-victim pair decodes to (0, 0); so do the never-produced codes
        (identifier next to identifier or next to the excluded abfloat code e = m = 0).

    Latency 0 (combinational) or 1 cycle (``registered``); throughput one pair per cycle.
    """

    @quiet_rejection
    def __init__(self, normal: str = "int4", *, registered: bool = False):
        self._formats = _formats_of(normal)
        if not isinstance(registered, bool):
            raise OvpDecoderError(f"registered must be a bool, got {registered!r}")
        self.normal = normal
        self.registered = registered
        self.element_bits = self._formats[0].bits
        self.exponent_bits, self.integer_bits = operand_widths(normal)
        if normal == "int8":
            _check_int8_against_golden(self._formats[0])
        operand = operand_signature(self.exponent_bits, self.integer_bits)
        members = {"pair": In(2 * self.element_bits)}
        if normal == "runtime":
            members["flint"] = In(1)
        members.update({"even": Out(operand), "odd": Out(operand)})
        super().__init__(members)

    @property
    def latency(self) -> int:
        """Cycles from ``pair`` to the operands (0 or 1)."""
        return 1 if self.registered else 0

    # -- element decoders: code -> (exponent, integer, is_code_of_that_kind) -------------------

    def _decode_element_4bit(self, m: Module, code, fmt):
        e_bits, i_bits = self.exponent_bits, self.integer_bits
        # a normal lookup needs no valid: identifier codes never take the normal path
        normal = _lookup(m, code, fmt.normal_operands, e_bits, i_bits, with_valid=False)
        outlier = _lookup(m, code, fmt.outlier_operands, e_bits, i_bits, with_valid=True)
        return normal, outlier

    def _decode_element_int8(self, m: Module, code, fmt):
        e_bits, i_bits = self.exponent_bits, self.integer_bits
        normal = (Signal(e_bits), Signal(signed(i_bits)), Signal())
        m.d.comb += [normal[0].eq(0), normal[1].eq(code.as_signed()), normal[2].eq(code != fmt.identifier)]
        sign, exp_field, mantissa = code[7], code[4:7], code[0:4]
        magnitude = Cat(mantissa, Const(1, 1), Const(0, 1))  # 16 + m (hidden leading one), 6 bits
        outlier = (Signal(e_bits), Signal(signed(i_bits)), Signal())
        m.d.comb += [
            outlier[0].eq(exp_field + fmt.bias),
            outlier[1].eq(Mux(sign, -magnitude.as_signed(), magnitude.as_signed())),
            outlier[2].eq(code[0:7] != 0),  # e = m = 0 is excluded (both signs)
        ]
        return normal, outlier

    def _decode_pair(self, m: Module, low, high, fmt):
        """Pair rule of golden.ovp_format._decode_pair, on one format: -> (even, odd) operands."""
        element = self._decode_element_int8 if fmt.bits == 8 else self._decode_element_4bit
        low_normal, low_outlier = element(m, low, fmt)
        high_normal, high_outlier = element(m, high, fmt)
        low_is_id, high_is_id = low == fmt.identifier, high == fmt.identifier
        # outlier in the HIGH slot, victim (identifier) in the LOW slot, and vice versa
        victim_low = Signal()
        victim_high = Signal()
        both_normal = Signal()
        m.d.comb += [
            victim_low.eq(low_is_id & high_outlier[2]),
            victim_high.eq(high_is_id & ~low_is_id & low_outlier[2]),
            both_normal.eq(~low_is_id & ~high_is_id),
        ]
        even = (Signal(self.exponent_bits), Signal(signed(self.integer_bits)))
        odd = (Signal(self.exponent_bits), Signal(signed(self.integer_bits)))
        with m.If(both_normal):
            m.d.comb += [even[0].eq(low_normal[0]), even[1].eq(low_normal[1])]
            m.d.comb += [odd[0].eq(high_normal[0]), odd[1].eq(high_normal[1])]
        with m.Elif(victim_high):
            m.d.comb += [even[0].eq(low_outlier[0]), even[1].eq(low_outlier[1])]
        with m.Elif(victim_low):
            m.d.comb += [odd[0].eq(high_outlier[0]), odd[1].eq(high_outlier[1])]
        # else: never-produced codes -> both (0, 0) (the comb default)
        return even, odd

    def elaborate(self, platform):
        m = Module()
        bits = self.element_bits
        low, high = self.pair[0:bits], self.pair[bits : 2 * bits]
        decoded = [self._decode_pair(m, low, high, fmt) for fmt in self._formats]
        if self.normal == "runtime":
            (int4_even, int4_odd), (flint_even, flint_odd) = decoded
            even = [Mux(self.flint, f, i) for f, i in zip(flint_even, int4_even)]
            odd = [Mux(self.flint, f, i) for f, i in zip(flint_odd, int4_odd)]
        else:
            even, odd = decoded[0]
        domain = m.d.sync if self.registered else m.d.comb
        domain += [
            self.even.exponent.eq(even[0]),
            self.even.integer.eq(even[1]),
            self.odd.exponent.eq(odd[0]),
            self.odd.integer.eq(odd[1]),
        ]
        return m


def unit_bool(value) -> bool:
    """A boolean unit parameter that may arrive as a string from the command line."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no"):
            raise OvpDecoderError(f"expected a boolean (true/false/1/0), got {value!r}")
        return text in ("1", "true", "yes")
    return bool(value)


def unit_normal(normal: str, bits) -> str:
    """Resolve (normal, bits) unit parameters: bits=8 means normal 'int8'."""
    bits = None if bits is None else int(bits)
    if bits not in (None, 4, 8):
        raise OvpDecoderError(f"bits must be 4 or 8, got {bits!r}")
    if bits == 8:
        if normal not in ("int8", "int4"):  # "int4" is the default of the 4-bit units
            raise OvpDecoderError(f"bits=8 takes normal='int8', got normal={normal!r}")
        return "int8"
    if bits == 4 and normal == "int8":
        raise OvpDecoderError("normal='int8' is the 8-bit format; use bits=8")
    return normal


@register_unit("ovp_decoder")
def _resource_unit(normal: str = "int4", bits=None, registered=False):
    """One pair decoder (``olivine resources ovp_decoder --normal flint4``)."""
    normal = unit_normal(normal, bits)
    registered = unit_bool(registered)
    return OvpPairDecoder(normal, registered=registered), f"ovp_decoder_{normal}{'_reg' if registered else ''}"
