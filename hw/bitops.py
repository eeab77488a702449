"""Log-depth shifters and rotators built of 2:1 multiplexer stages, bound to named signals; a
balanced popcount.

Why not ``value << amount`` / ``value.word_select(amount, w)`` on wide data: Amaranth's netlist
treats every output bit of a variable shift or part-select as depending on every input bit, so
the combinational-cycle check and the netlist passes walk ``width_out x width_in`` edges per
cell (about 2 million for a 512-bit beat); and an expression used in several statements is
rebuilt once per statement by the domain transforms. A stage per amount bit (``Mux(amount[k],
v.rotate_left(step << k), v)``, each a constant rewiring) has ``width`` edges per stage, and
binding each stage to a Signal makes the result shareable. Synthesis maps both forms to the same
barrel shifter (``log2(width / step)`` levels of 2:1 muxes).

Every function takes the Module ``m`` the stages are added to (``comb`` domain), the ``value``
(unsigned), a variable ``amount`` (unsigned) and the ``step`` in bits of one amount unit (8 for
bytes), and returns the Signal of the last stage. Latency 0 (combinational).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, Value

__all__ = ["popcount", "rotate_left", "shift_right"]


def rotate_left(m, value, amount, *, step: int = 1, name: str = "rot"):
    """``value`` rotated left (towards the MSB) by ``amount * step`` bits, modulo ``len(value)``."""
    value, amount = Value.cast(value), Value.cast(amount)
    width = len(value)
    stage = value
    for k in range(len(amount)):
        bits = (step << k) % width
        if bits == 0:
            continue   # a whole number of turns
        nxt = Signal(width, name=f"{name}_{k}")
        m.d.comb += nxt.eq(Mux(amount[k], stage.rotate_left(bits), stage))
        stage = nxt
    if stage is value:
        out = Signal(width, name=name)
        m.d.comb += out.eq(value)
        stage = out
    return stage


def shift_right(m, value, amount, *, step: int = 1, width: int | None = None, name: str = "shr"):
    """The low ``width`` bits (default ``len(value)``) of ``value >> (amount * step)`` (logical:
    zeros shift in). Stage k only keeps the bits later stages can still bring into the result."""
    value, amount = Value.cast(value), Value.cast(amount)
    width = len(value) if width is None else width
    n = len(amount)
    stage = value
    for k in range(n):
        bits = step << k
        # bits still reachable after this stage: the output plus the largest remaining shift
        keep = min(len(value), width + sum(step << j for j in range(k + 1, n)))
        shifted = stage[bits:] if bits < len(stage) else Const(0, 1)
        nxt = Signal(keep, name=f"{name}_{k}")
        m.d.comb += nxt.eq(Mux(amount[k], shifted, stage))
        stage = nxt
    out = Signal(width, name=name)
    m.d.comb += out.eq(stage[:width] if len(stage) >= width else stage)
    return out


def popcount(m, bits, *, name: str = "ones"):
    """The number of set bits of ``bits`` as a Signal of ``len(bits).bit_length()`` bits, summed as
    a balanced tree (a running ``sum()`` widens by a bit per term: quadratic in adder bits)."""
    bits = Value.cast(bits)
    terms = [bits[i] for i in range(len(bits))] or [Const(0, 1)]
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    out = Signal(max(len(bits).bit_length(), 1), name=name)
    m.d.comb += out.eq(terms[0])
    return out
