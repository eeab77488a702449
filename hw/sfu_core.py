"""The op-core interface of the special function unit (SFU) and the shared pipeline skeleton.

Every SFU op core is a ``wiring.Component`` with a parameter ``lanes`` and

* ``i: In(stream.Signature(beat_layout(lanes)))``: the row being processed, ``lanes`` elements a beat;
* ``o: Out(stream.Signature(beat_layout(lanes)))``: the result, one output beat per input beat of
  the core's last pass, with the same ``count``/``first``/``last``;
* optionally ``g: In(stream.Signature(beat_layout(lanes)))``: a second operand (the ``src1`` row
  of add/mul/swiglu, the gains of a norm), aligned beat for beat with ``i`` in the last pass;
* optionally ``params: In(<StructLayout>)``: per-instruction scalars, held stable by the SFU top
  for the whole instruction.

A beat (:func:`beat_layout`) is ``data`` (``lanes`` x signed 32), ``count`` (valid lanes; only the
last beat of a row may have fewer than ``lanes``; lanes at and above ``count`` are zero), ``first``
and ``last`` (a row's first and last beat) and ``pass_`` (which pass over the row this is). A core
declares ``passes``: the SFU top streams each row that many times in a row (pass 0, 1, ...), re-read
from the data space each time (no row buffer, see hw/sfu.py).

:class:`PipelinedElementwise` is the skeleton of the one-pass element-wise cores: a fixed-depth
pipeline of ``latency`` register stages that all advance together when the output is free
(``advance = ~o.valid | o.ready``), so a core takes one beat per cycle and stalls as a whole under
backpressure.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["INT32_MAX", "INT32_MIN", "PipelinedElementwise", "beat_layout", "op_core_members", "reduce_tree",
           "round_shift", "saturate", "beat_signature"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def beat_layout(lanes: int) -> data.StructLayout:
    """The beat of every SFU stream (see the module docstring)."""
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
    return data.StructLayout({"data": data.ArrayLayout(signed(32), lanes), "count": range(lanes + 1),
                              "first": 1, "last": 1, "pass_": 2})


def beat_signature(lanes: int) -> stream.Signature:
    return stream.Signature(beat_layout(lanes))


def saturate(value, bits: int = 32):
    """Clamp a signed value to ``bits`` bits (the SFU's int32 saturation: nothing wraps)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


def round_shift(value, shift: int):
    """``floor((value + 2**(shift-1)) / 2**shift)`` for a constant ``shift >= 0`` (golden's rule:
    round half up, one adder and an arithmetic shift)."""
    if shift <= 0:
        return value << -shift
    return (value + (1 << (shift - 1))) >> shift


def reduce_tree(m: Module, values, pick, shape, name: str):
    """Reduce ``values`` pairwise by ``pick(a, b)`` (e.g. the larger) in a balanced tree whose
    every node is a named ``shape`` signal: log2(n) levels. Why not a running chain ``acc =
    Mux(x > acc, x, acc)``: Amaranth does not share repeated sub-expressions, so a chain that reads
    its running value twice per step is written out 2**n times (a 16-lane softmax's row maximum
    gave 9 MiB of Verilog and the whole U280 SFU's export passed 14 GB)."""
    level = list(values)
    depth = 0
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level) - 1, 2):
            node = Signal(shape, name=f"{name}_{depth}_{k // 2}")
            m.d.comb += node.eq(pick(level[k], level[k + 1]))
            nxt.append(node)
        if len(level) % 2:
            nxt.append(level[-1])
        level, depth = nxt, depth + 1
    return level[0]


def op_core_members(lanes: int, operands: int) -> dict:
    """The ports of a one-pass op core: ``i`` and ``o`` beats, and ``g`` for a second operand."""
    members = {"i": In(beat_signature(lanes)), "o": Out(beat_signature(lanes))}
    if operands == 2:
        members["g"] = In(beat_signature(lanes))
    return members


class PipelinedElementwise(wiring.Component):
    """Skeleton of a one-pass element-wise op core (subclasses define :meth:`lane`).

    Ports: ``i`` (and ``g`` when ``operands == 2``), ``o`` as in the module docstring. ``i`` and
    ``g`` are joined: a beat is taken when both are valid.

    Latency: ``latency`` cycles from an accepted input beat to its output beat (the number of
    register stages the subclass builds, declared by it). Throughput: one beat (``lanes``
    elements) per cycle while ``o.ready`` is high. ``passes`` = 1.
    """

    passes = 1
    operands = 1
    latency = 1
    #: the core multiplies on the SFU's multiplier bank (hw/sfu_mul.py): ``self.products`` in :meth:`lane`
    uses_mul = False

    def __init__(self, lanes: int, *, shared_mul: bool = False):
        from .sfu_mul import mul_signature
        self.lanes, self.shared_mul = lanes, shared_mul and self.uses_mul
        members = op_core_members(lanes, self.operands)
        if self.shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    def lane(self, m: Module, index: int, a, b, enable):
        """Build lane ``index``: ``a`` (and ``b``) are the signed 32-bit inputs, ``enable`` advances the
        pipeline; return the signed 32-bit output after exactly ``self.latency`` register stages
        (each register gated by ``enable``). A core with ``uses_mul`` multiplies on
        ``self.products`` (hw/sfu_mul.py's bank port: drive ``a[index]``, ``b[index]``, read ``p[index]``)."""
        raise NotImplementedError

    def elaborate(self, platform):
        from .sfu_mul import multiplier_port
        m = Module()
        self.products = multiplier_port(m, self, self.lanes) if self.uses_mul else None
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        take = Signal()
        if self.operands == 2:
            m.d.comb += [take.eq(self.i.valid & self.g.valid & advance),
                         self.i.ready.eq(self.g.valid & advance),
                         self.g.ready.eq(self.i.valid & advance)]
        else:
            m.d.comb += [take.eq(self.i.valid & advance), self.i.ready.eq(advance)]
        # control: valid bit and the beat's bookkeeping travel alongside the data
        meta_layout = data.StructLayout({"count": range(self.lanes + 1), "first": 1, "last": 1, "pass_": 2})
        valid, meta = Signal(), Signal(meta_layout)
        m.d.comb += [valid.eq(take), meta.count.eq(self.i.p.count), meta.first.eq(self.i.p.first),
                     meta.last.eq(self.i.p.last), meta.pass_.eq(self.i.p.pass_)]
        for stage in range(self.latency):
            v_next, meta_next = Signal(name=f"valid_s{stage}"), Signal(meta_layout, name=f"meta_s{stage}")
            with m.If(advance):
                m.d.sync += [v_next.eq(valid), meta_next.eq(meta)]
            valid, meta = v_next, meta_next
        m.d.comb += [self.o.valid.eq(valid), self.o.p.count.eq(meta.count), self.o.p.first.eq(meta.first),
                     self.o.p.last.eq(meta.last), self.o.p.pass_.eq(meta.pass_)]
        for lane in range(self.lanes):
            b = self.g.p.data[lane] if self.operands == 2 else None
            y = self.lane(m, lane, self.i.p.data[lane], b, advance)
            # lanes at and above count stay zero (the beat contract)
            m.d.comb += self.o.p.data[lane].eq(Mux(lane < meta.count, y, 0))
        return m
