"""The SFU's shared multiplier bank, and the fabric products that keep everything else off the DSPs.

Every DSP48E2 of the special function unit is in :class:`MultiplierBank`: one signed
``MUL_A_BITS`` x ``MUL_B_BITS`` (44 x 35) product per lane, which Yosys ``synth_xilinx`` builds
from 4 DSP48E2 (27 x 18 slices; measured, docs/benchmarks.md). The SFU runs one instruction at a
time, so its op cores take turns: each core built with ``shared_mul=True`` has a ``mul`` port
(:func:`mul_signature`: ``a`` and ``b`` out, ``p`` in, ``lanes`` each) and the SFU top connects the
core of the running op to the bank (``sel``). A core built alone (``shared_mul=False``, the unit
tests and per-core resource reports) gets a one-user bank of its own: the same product, so a
core's logic is the same in both cases (:func:`multiplier_port`).

One product per lane and cycle: a core with two products per element (swiglu's ``x * sig`` and
``silu * up``, rmsnorm's ``c * G`` and ``n * gamma``, rope's ``x * c`` and ``z * s``) computes them
in adjacent pipeline stages and never holds beats in both at once; those ops take a beat every two
cycles anyway (their two operand streams share the data-space read port), so the rate is the same.

Everything else that multiplies is in the fabric: :func:`shift_add_product` (a variable operand
of a few bits: the 12-bit interpolation weights of the sigmoid and exp2 tables) and
:func:`const_product` (a constant: softmax's ``d * log2(e)``, in canonical signed digits).

The bank is combinational (``p = a * b`` in the same cycle): the cores keep their own pipeline
registers around it, as they had around their own multipliers.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .resources import register_unit
from .sfu_core import reduce_tree

__all__ = ["DSP_PER_LANE", "MUL_A_BITS", "MUL_B_BITS", "MUL_P_BITS", "MultiplierBank", "const_product",
           "csd_digits", "mul_signature", "multiplier_port", "shift_add_product"]

#: operand widths of one lane of the bank (signed): 44 x 35 is the widest product Yosys builds from
#: 4 DSP48E2 (26 + 18 bits of A by 17 + 18 bits of B; 45 x 35 takes 6)
MUL_A_BITS, MUL_B_BITS = 44, 35
MUL_P_BITS = MUL_A_BITS + MUL_B_BITS
#: DSP48E2 per lane of the bank (Yosys synth_xilinx on a 44 x 35 signed product)
DSP_PER_LANE = 4


def mul_signature(lanes: int) -> wiring.Signature:
    """A core's side of the bank: ``a``, ``b`` (per lane, signed 44 / 35 bits) out, ``p`` in."""
    return wiring.Signature({
        "a": Out(data.ArrayLayout(signed(MUL_A_BITS), lanes)),
        "b": Out(data.ArrayLayout(signed(MUL_B_BITS), lanes)),
        "p": In(data.ArrayLayout(signed(MUL_P_BITS), lanes)),
    })


class MultiplierBank(wiring.Component):
    """``lanes`` signed 44 x 35 multipliers shared by ``users`` request ports.

    Ports: ``u0`` .. ``u{users-1}``: ``In(mul_signature(lanes))`` (``a``, ``b`` in, ``p`` out; every
    user sees the product of the selected user's operands); ``sel`` (only with ``users > 1``): In,
    the user whose operands reach the multipliers. Latency 0 (combinational); one product per lane and cycle.
    DSP48E2: ``DSP_PER_LANE * lanes``.
    """

    def __init__(self, lanes: int, users: int = 1):
        if users < 1:
            raise ValueError(f"a multiplier bank needs at least one user, got {users}")
        self.lanes, self.users = lanes, users
        members = {f"u{k}": In(mul_signature(lanes)) for k in range(users)}
        if users > 1:
            members["sel"] = In(range(users))
        super().__init__(members)

    def port(self, k: int):
        return getattr(self, f"u{k}")

    def elaborate(self, platform):
        m = Module()
        for lane in range(self.lanes):
            a, b = Signal(signed(MUL_A_BITS), name=f"bank_a{lane}"), Signal(signed(MUL_B_BITS), name=f"bank_b{lane}")
            if self.users == 1:
                m.d.comb += [a.eq(self.u0.a[lane]), b.eq(self.u0.b[lane])]
            else:
                with m.Switch(self.sel):
                    for k in range(self.users):
                        with m.Case(k):
                            m.d.comb += [a.eq(self.port(k).a[lane]), b.eq(self.port(k).b[lane])]
            p = Signal(signed(MUL_P_BITS), name=f"bank_p{lane}")
            m.d.comb += p.eq(a * b)
            for k in range(self.users):
                m.d.comb += self.port(k).p[lane].eq(p)
        return m


def multiplier_port(m: Module, core, lanes: int):
    """The bank port a core drives: its own ``mul`` port when ``core.shared_mul``, else the port of
    a private one-user :class:`MultiplierBank` added to ``m`` (the standalone core)."""
    if getattr(core, "shared_mul", False):
        return core.mul
    m.submodules.multipliers = bank = MultiplierBank(lanes, 1)
    return bank.u0


def shift_add_product(m: Module, a, b, *, name: str):
    """``a * b`` for an unsigned ``b`` of a few bits, as a balanced adder tree of ``a << i`` terms
    (LUTs and carry chains, no DSP). Exact; the result is signed when ``a`` is."""
    # exactly the product's width (no unused bits on the named nodes)
    shape = signed(len(a) + len(b)) if a.shape().signed else unsigned(len(a) + len(b))
    terms = []
    for i in range(len(b)):
        t = Signal(shape, name=f"{name}_t{i}")
        m.d.comb += t.eq(Mux(b[i], a << i, 0))
        terms.append(t)
    return reduce_tree(m, terms, lambda a, b: a + b, shape, f"{name}_s")


def csd_digits(c: int) -> list[tuple[int, int]]:
    """The canonical signed-digit form of ``c >= 0``: ``[(shift, +-1), ...]`` with ``sum(d << s) ==
    c`` and no two adjacent nonzero digits (the fewest adders for a constant product)."""
    if c < 0:
        raise ValueError(f"csd_digits: c must be >= 0, got {c}")
    digits, shift = [], 0
    while c:
        if c & 1:
            d = 2 - (c & 3)          # +1 when c = ...01, -1 when c = ...11
            digits.append((shift, d))
            c -= d
        c >>= 1
        shift += 1
    return digits


def const_product(m: Module, x, c: int, *, name: str):
    """``x * c`` for a constant ``c >= 0`` as shifted adds and subtracts of ``x`` (its CSD digits:
    :func:`csd_digits`), a balanced tree in the fabric, no DSP. Exact."""
    digits = csd_digits(c)
    if not digits:
        return Const(0, 1)
    shape = signed(len(x) + c.bit_length() + 2)
    terms = []
    for k, (s, d) in enumerate(digits):
        t = Signal(shape, name=f"{name}_t{k}")
        m.d.comb += t.eq((x << s) if d > 0 else -(x << s))
        terms.append(t)
    return reduce_tree(m, terms, lambda a, b: a + b, shape, f"{name}_s")


@register_unit("sfu_mul_bank")
def _bank_unit(lanes: int = 4, users: int = 1):
    """``olivine resources sfu_mul_bank --lanes 4 --users 1``."""
    return MultiplierBank(int(lanes), int(users)), f"sfu_mul_bank_l{lanes}_u{users}"
