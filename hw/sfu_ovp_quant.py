"""OVP4 activation encoder of the SFU: the MISC quant op's OVP4 mode (docs/isa.md, ``imm[17] = 1``).

Golden: ``contract.quantize_act_ovp4`` from its integer multiplier M = (mult, shift) (what
``sim.funcsim.quantize_rows_ovp4`` runs), per element pair (2k, 2k+1) of a row:

1. ``t = apply_multiplier(x, M)`` clamped to +-2**40: hw/requant.py's :class:`ApplyMultiplier` (the
   requantizer's multiply / round / saturate piece) with ``out_bits = 18``. Saturating at +-2**17
   instead of +-2**40 gives the same grid point: every midpoint lies below 2**16 (the largest,
   flint4's (128 + 192) * 2**7, is 40960), so any |t| >= 2**17 lands on the outermost point either way.
2. nearest union-grid point by midpoint comparators, ties to the larger point: with the positive
   half of the grid p_0 = 0 < p_1 < ... < p_14 and its midpoints c_i = (p_i + p_{i+1}) * 2**(G-1),
   the magnitude index is ``#{c_i <= t}`` for t >= 0 and ``#{c_i < |t|}`` for t < 0 (a negative tie
   goes to the larger value, the smaller magnitude); both are read off 28 constant comparators on t
   (``t >= c_i`` and ``t < -c_i``), no absolute value. Beyond the grid the index saturates at 14.
3. victim rule "larger": a pair with an outlier (index >= 8: both normal types have 8 non-negative
   normals) keeps the outlier of the larger magnitude (equal: the even one) and zeroes the other;
4. the pair's code byte (golden/ovp_format.py tables, generated at elaboration: normal codes of
   (sign, index < 8), abfloat outlier codes of (sign, index >= 8), the identifier 0b1000 on the
   victim; low nibble the even element).

Ports
-----
i : In(beat stream)   the row, ``lanes`` int32 elements a beat (one pass; ``count`` even)
o : Out(beat stream)  the codes: byte ``j`` of pair ``j`` in ``data[j][:8]``, ``count`` = input
                      count / 2 (bytes), ``first`` / ``last`` as the input beat's
params : In  ``mult`` (31 bits, the record's multiplier below 2**31), ``s`` (the record's shift
             clamped to [-1, 62], hw.requant.clamp_shift), ``flint4`` (normal type, ``imm[18]``)

Latency: ``OVP_QUANT_LATENCY`` = 11 cycles from an accepted beat to its output beat
(ApplyMultiplier 9, comparators 1, victims and codes 1). Throughput: one beat (``lanes`` elements,
``lanes / 2`` code bytes) per cycle; the whole core stalls under output backpressure through one
clock enable. Needs ``lanes >= 2`` (a pair inside one beat). DSP48E2: none of its own; its 32 x 31-bit
products are the lanes of the SFU's multiplier bank (hw/sfu_mul.py, 4 DSP48E2 per lane).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, EnableInserter, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..golden.contract_constants import OVP_ACT_GUARD_BITS
from ..golden.ovp_format import NIBBLE_IDENTIFIER, get_format
from .requant import MULT_BITS, SHIFT_BITS, ApplyMultiplier, apply_latency
from .sfu_mul import mul_signature, multiplier_port
from .resources import register_unit
from .sfu_core import beat_signature

__all__ = ["OVP_NORMALS", "OVP_QUANT_LATENCY", "OvpQuantCore", "OvpQuantTables", "ovp_quant_tables"]

#: the normal types of the OVP4 mode, in ``imm[18]`` order
OVP_NORMALS = ("int4", "flint4")
#: ApplyMultiplier's saturation width: wider than every midpoint (see the module docstring)
T_BITS = 18
OVP_QUANT_LATENCY = apply_latency(32) + 2


class OvpQuantTables:
    """One normal type's encoder constants, from golden/ovp_format.py.

    ``positives``: the non-negative union-grid points p_0..p_n; ``mids``: c_i = (p_i + p_{i+1}) *
    2**(G-1); ``normals``: how many p_i are normals; ``normal_code[sign][k]`` (k < normals) and
    ``outlier_code[sign][k - normals]`` (k >= normals): the nibble of value (-1)**sign * p_k.
    """

    def __init__(self, normal: str, guard_bits: int = OVP_ACT_GUARD_BITS):
        fmt = get_format(normal)
        if fmt.bits != 4:
            raise ValueError(f"the OVP4 encoder takes a 4-bit normal type, not {normal!r}")
        self.normal = normal
        self.positives = [v for v in fmt.union_grid if v >= 0]
        if [-v for v in reversed(self.positives)] + self.positives[1:] != list(fmt.union_grid):
            raise ValueError(f"the {normal} union grid is not symmetric; the comparators assume it is")
        self.mids = [(a + b) << (guard_bits - 1) for a, b in zip(self.positives, self.positives[1:])]
        self.normals = sum(1 for v in self.positives if v <= fmt.normal_max)
        self.normal_code = [[fmt.normal_codes[-p if sign else p] for p in self.positives[:self.normals]]
                            for sign in (0, 1)]
        self.outlier_code = [[fmt.outlier_codes[-p if sign else p] for p in self.positives[self.normals:]]
                             for sign in (0, 1)]


def ovp_quant_tables() -> dict[str, OvpQuantTables]:
    return {n: OvpQuantTables(n) for n in OVP_NORMALS}


class OvpQuantCore(wiring.Component):
    """int32 rows -> OVP4 pair codes (see the module docstring for ports, latency, throughput)."""

    passes = 1
    operands = 1
    latency = OVP_QUANT_LATENCY

    def __init__(self, lanes: int, *, shared_mul: bool = False):
        if lanes < 2 or lanes % 2:
            raise ValueError(f"the OVP4 encoder pairs lanes (2k, 2k+1) of a beat: lanes must be even, got {lanes}")
        self.lanes = lanes
        self.tables = ovp_quant_tables()
        if max(max(t.mids) for t in self.tables.values()) >= 1 << (T_BITS - 1):
            raise ValueError(f"a midpoint reaches the {T_BITS}-bit saturation of t: widen T_BITS")
        if len({(len(t.positives), t.normals) for t in self.tables.values()}) != 1:
            raise ValueError("int4 and flint4 grids differ in size; one comparator set cannot serve both")
        self.shared_mul = shared_mul
        members = {
            "i": In(beat_signature(lanes)), "o": Out(beat_signature(lanes)),
            "params": In(data.StructLayout({"mult": MULT_BITS, "s": signed(SHIFT_BITS), "flint4": 1})),
        }
        if shared_mul:
            members["mul"] = Out(mul_signature(lanes))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        tabs = [self.tables[n] for n in OVP_NORMALS]
        n_points, n_normal = len(tabs[0].positives), tabs[0].normals
        k_bits = (n_points - 1).bit_length()

        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        dp = Module()  # the datapath: every register moves only when the pipeline advances
        m.submodules.datapath = EnableInserter(advance)(dp)

        flint = self.params.flint4
        # code tables of both normal types, flat, indexed by (flint4, sign, k) with k padded to a
        # power of two
        n_out = n_points - n_normal
        nb, ob = (n_normal - 1).bit_length(), max(1, (n_out - 1).bit_length())

        def flat(rows, bits):
            return Array([(rows[f][s] + [0] * (1 << bits))[i] for f in (0, 1) for s in (0, 1) for i in range(1 << bits)])

        normal_code = flat([t.normal_code for t in tabs], nb)
        outlier_code = flat([t.outlier_code for t in tabs], ob)

        bank = multiplier_port(m, self, lanes)
        signs, indices = [], []
        for j in range(lanes):
            am = ApplyMultiplier(32, T_BITS, external_product=True)   # x * mult on the bank
            dp.submodules[f"apply{j}"] = am
            dp.d.comb += [am.x.eq(self.i.p.data[j]), am.mult.eq(self.params.mult), am.s.eq(self.params.s),
                          bank.a[j].eq(am.pa), bank.b[j].eq(am.pb), am.pp.eq(bank.p[j])]
            t = am.y
            # comparators: t >= c_i (t >= 0) and t < -c_i (t < 0), a thermometer code each
            # constant comparators per normal type, the type selected after them
            up = Mux(flint, Cat(*[t >= c for c in tabs[1].mids]), Cat(*[t >= c for c in tabs[0].mids]))
            down = Mux(flint, Cat(*[t < -c for c in tabs[1].mids]), Cat(*[t < -c for c in tabs[0].mids]))
            sign = Signal(name=f"sign{j}", reset_less=True)
            therm = Signal(n_points - 1, name=f"therm{j}", reset_less=True)
            dp.d.sync += [sign.eq(t < 0), therm.eq(up | down)]
            k = Signal(k_bits, name=f"index{j}")
            m.d.comb += k.eq(sum(therm[i] for i in range(n_points - 1)))
            signs.append(sign)
            indices.append(k)

        codes = []
        for p in range(lanes // 2):
            (se, ke), (so, ko) = (signs[2 * p], indices[2 * p]), (signs[2 * p + 1], indices[2 * p + 1])
            out_e, out_o = ke >= n_normal, ko >= n_normal
            keep_even = out_e & (~out_o | (ke >= ko))
            keep_odd = out_o & ~keep_even

            def nib(s, k, outlier):
                if outlier:
                    return outlier_code[Cat((k - n_normal)[:ob], s, flint)]
                return normal_code[Cat(k[:nb], s, flint)]

            low = Mux(keep_odd, NIBBLE_IDENTIFIER, Mux(keep_even, nib(se, ke, True), nib(se, ke, False)))
            high = Mux(keep_even, NIBBLE_IDENTIFIER, Mux(keep_odd, nib(so, ko, True), nib(so, ko, False)))
            byte = Signal(8, name=f"code{p}", reset_less=True)
            dp.d.sync += byte.eq(Cat(low[:4], high[:4]))
            codes.append(byte)

        meta_layout = data.StructLayout({"count": range(lanes + 1), "first": 1, "last": 1, "pass_": 2})
        valid, meta = Signal(), Signal(meta_layout)
        m.d.comb += [valid.eq(self.i.valid & advance), meta.count.eq(self.i.p.count >> 1),
                     meta.first.eq(self.i.p.first), meta.last.eq(self.i.p.last), meta.pass_.eq(self.i.p.pass_)]
        for stage in range(self.latency):
            v_next, meta_next = Signal(name=f"valid_s{stage}"), Signal(meta_layout, name=f"meta_s{stage}")
            with m.If(advance):
                m.d.sync += [v_next.eq(valid), meta_next.eq(meta)]
            valid, meta = v_next, meta_next
        m.d.comb += [self.o.valid.eq(valid), self.o.p.count.eq(meta.count), self.o.p.first.eq(meta.first),
                     self.o.p.last.eq(meta.last), self.o.p.pass_.eq(meta.pass_)]
        for j in range(lanes):
            if j < lanes // 2:
                m.d.comb += self.o.p.data[j].eq(Mux(j < meta.count, codes[j], 0))
            else:
                m.d.comb += self.o.p.data[j].eq(0)
        return m


@register_unit("sfu_ovp_quant")
def _resource_unit(lanes: int = 4):
    """The SFU's OVP4 activation encoder alone (``olivine resources sfu_ovp_quant --lanes 16``)."""
    return OvpQuantCore(int(lanes)), f"sfu_ovp_quant_l{int(lanes)}"
