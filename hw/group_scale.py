"""Per-group weight scaling of partial sums (docs/contract.md 2a): the block that turns a row's
per-K-group partial sum P into m * P before it enters the accumulator.

Two kinds, the candidates of the per-group scale study (docs/benchmarks.md, "Per-group scales"):

* ``"mult4"`` (the contract's choice): m unsigned 4-bit, 1..15 (factor m / 8 of the row scale);
  built as shift-and-add in the fabric (m = sum_i b_i 2**i: three adders), no DSP48E2;
  ``"mult4-dsp"``: the same product written as a multiplication (Yosys maps it to one DSP48E2 per lane).
* ``"pow2"`` (the cheaper alternative, not in the contract): a 2-bit shift s, factor 2**s / 4
  (s in 0..3: 1/4, 1/2, 1, 2 of the row scale): a 4:1 multiplexer per bit.

:class:`GroupScaler` scales ``lanes`` partial sums per cycle, one group multiplier (or shift) per
lane (each lane is one output row of the engine).

Ports (flat vectors, lane i at bits [i*w, (i+1)*w); outputs registered unless ``registered=False``):
    psum  In  lanes x width           the group partial sums P, two's complement
    mult  In  lanes x 4               ("mult4") the multipliers m, unsigned; ("pow2") bits [1:0] the shift s
    valid In  1                       the inputs hold a group's sums this cycle
    out   Out lanes x (width + 4)     m * P (mult4) or P << s (pow2), exact, two's complement
    out_valid Out 1
(flat rather than ArrayLayout ports: Yosys 0.49's ABC9 reintegration asserts on the per-element
``out[i]`` aliases Amaranth writes for array ports)

Latency 1 cycle (registered; 0 with ``registered=False``, combinational), throughput one set of
``lanes`` partial sums per cycle. In the matrix engine a group of G weights spans G / 16 K blocks,
so each lane needs the scaler once every G / 16 beats and one scaler could be shared by G / 16 lanes.

Wired into hw/mpe.py's collector (``wgroup`` MM / MV): ``GroupScaler(2C, 20, "mult4",
registered=False)`` scales every beat's block sum of the 2C lanes by its group's multiplier before
the accumulator (no added latency, so the engine's cycle model is unchanged by it; per beat rather
than per group, which needs no per-group partial registers and no sharing multiplexers).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .resources import register_unit

__all__ = ["GroupScaler", "GROUP_SCALE_KINDS", "reference"]

GROUP_SCALE_KINDS = ("mult4", "mult4-dsp", "pow2")


def reference(kind: str, psum: int, mult: int) -> int:
    """The exact integer a lane outputs (Python form, for tests)."""
    if kind.startswith("mult4"):
        return psum * mult
    return psum << (mult & 3)


class GroupScaler(wiring.Component):
    """``lanes`` group partial sums times their 4-bit multiplier (or power-of-two shift) per cycle;
    see the module docstring for ports, latency (1 cycle) and throughput (1 beat per cycle)."""

    def __init__(self, lanes: int = 16, width: int = 23, kind: str = "mult4", *, registered: bool = True):
        if kind not in GROUP_SCALE_KINDS:
            raise ValueError(f"kind must be one of {GROUP_SCALE_KINDS}, got {kind!r}")
        if lanes < 1 or width < 2:
            raise ValueError(f"lanes ({lanes}) must be >= 1 and width ({width}) >= 2")
        self.lanes, self.width, self.kind = lanes, width, kind
        self.registered = bool(registered)
        self.latency = 1 if self.registered else 0
        super().__init__({
            "psum": In(lanes * width),
            "mult": In(lanes * 4),
            "valid": In(1),
            "out": Out(lanes * (width + 4)),
            "out_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        dom = m.d.sync if self.registered else m.d.comb
        for i in range(self.lanes):
            wi, wo = self.width, self.width + 4
            p = self.psum[i * wi:(i + 1) * wi].as_signed()
            k = self.mult[4 * i:4 * i + 4]
            o = self.out[i * wo:(i + 1) * wo]
            if self.kind == "mult4-dsp":
                dom += o.eq(p * k)
            elif self.kind == "mult4":
                # shift-and-add: the sum of P << j over the set bits j of m (fabric adders, no DSP)
                t = [Mux(k[j], p << j, 0) for j in range(4)]
                dom += o.eq((t[0] + t[1]) + (t[2] + t[3]))
            else:
                dom += o.eq(Mux(k[1], Mux(k[0], p << 3, p << 2), Mux(k[0], p << 1, p)))
        dom += self.out_valid.eq(self.valid)
        return m


@register_unit("group_scaler")
def _resource_unit(lanes: int = 16, width: int = 23, kind: str = "mult4"):
    """Per-group weight scaling of the engine's partial sums (lanes x width-bit sums, mult4 or pow2)."""
    return GroupScaler(lanes, width, kind), f"group_scaler_{kind.replace('-', '_')}"
