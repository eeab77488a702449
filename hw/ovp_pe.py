"""OVP shift-MAC processing element for an output-stationary systolic array.

Each cycle a valid step computes ``acc <- (first ? 0 : acc) + ((i_a * i_b) << (e_a + e_b))``
in ``acc_bits``-wide two's complement (wrapping, like int32 accumulation in C), and forwards the
A operand (with the step's ``valid``/``first`` control) to the right and the B operand downward
through one register each.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .ovp_decoder import operand_signature, quiet_rejection
from .resources import register_unit

__all__ = ["OvpPeError", "step_signature", "OvpProcessingElement"]


class OvpPeError(ValueError):
    """An OVP processing element was asked for an unsupported configuration."""


def step_signature() -> wiring.Signature:
    """Control that travels with the A operand: ``valid`` (accumulate this step) and ``first``
    (this step starts a new output tile: the accumulator restarts from zero)."""
    return wiring.Signature({"valid": Out(1), "first": Out(1)})


class OvpProcessingElement(wiring.Component):
    """Shift-MAC PE: multiplier, shifter and adder into an accumulator (OliVe's PE).

    Parameters
    ----------
    exponent_bits, integer_bits : int
        Operand widths: 4-bit OVP operands are (3, 4); the nibble operands of the 8-bit mode are
        (4, 5) (an unsigned low nibble 0..15 needs a fifth, sign bit; exponents reach 14).
    acc_bits : int
        Accumulator width (32 = OliVe's int32 accumulation).

    Ports
    -----
    a_in, b_in : In(operand_signature(exponent_bits, integer_bits))
        Operands arriving from the left (A) and from above (B).
    step_in : In(step_signature())
        ``valid``/``first`` of the step that A carries.
    a_out, b_out, step_out : Out(...)
        The same, registered once, to the right (A, step) and downward (B) neighbours.
    acc : Out(signed(acc_bits))
        The accumulator register (output-stationary result).

    Latency: 1 cycle from operands in to ``acc`` updated and to operands out.
    Throughput: one multiply-accumulate per cycle. The whole step (multiply, shift, add) is one
    combinational path; there is no internal pipeline.
    """

    @quiet_rejection
    def __init__(self, *, exponent_bits: int = 3, integer_bits: int = 4, acc_bits: int = 32):
        for name, value, low in (("exponent_bits", exponent_bits, 1), ("integer_bits", integer_bits, 2),
                                 ("acc_bits", acc_bits, 2)):
            if not isinstance(value, int) or value < low:
                raise OvpPeError(f"{name} must be an integer >= {low}, got {value!r}")
        self.exponent_bits, self.integer_bits, self.acc_bits = exponent_bits, integer_bits, acc_bits
        operand = operand_signature(exponent_bits, integer_bits)
        super().__init__({
            "a_in": In(operand),
            "b_in": In(operand),
            "step_in": In(step_signature()),
            "a_out": Out(operand),
            "b_out": Out(operand),
            "step_out": Out(step_signature()),
            "acc": Out(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        product = Signal(signed(2 * self.integer_bits))
        shift = Signal(self.exponent_bits + 1)
        m.d.comb += [
            product.eq(self.a_in.integer * self.b_in.integer),
            shift.eq(self.a_in.exponent + self.b_in.exponent),
        ]
        # bits shifted beyond acc_bits are dropped: exact modulo 2**acc_bits, as the wrap wants
        shifted = (product << shift)[: self.acc_bits].as_signed()
        with m.If(self.step_in.valid):
            base = Mux(self.step_in.first, 0, self.acc)
            m.d.sync += self.acc.eq((base + shifted)[: self.acc_bits].as_signed())
        m.d.sync += [
            self.a_out.exponent.eq(self.a_in.exponent),
            self.a_out.integer.eq(self.a_in.integer),
            self.b_out.exponent.eq(self.b_in.exponent),
            self.b_out.integer.eq(self.b_in.integer),
            self.step_out.valid.eq(self.step_in.valid),
            self.step_out.first.eq(self.step_in.first),
        ]
        return m


@register_unit("ovp_pe")
def _resource_unit(bits=4, acc_bits=32):
    """One PE as the array instantiates it: bits=4 -> (3, 4) operands, bits=8 -> the nibble PE
    of the 8-bit array, (4, 5) operands."""
    bits = int(bits)
    if bits not in (4, 8):
        raise OvpPeError(f"bits must be 4 or 8, got {bits!r}")
    exponent_bits, integer_bits = (3, 4) if bits == 4 else (4, 5)
    pe = OvpProcessingElement(exponent_bits=exponent_bits, integer_bits=integer_bits, acc_bits=int(acc_bits))
    return pe, f"ovp_pe_{bits}bit"
