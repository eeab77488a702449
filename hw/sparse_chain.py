"""FlightLLM's configurable sparse DSP chain (CSD-chain), built from DSP48E2 slices.

Structure (``length`` = L DSP48E2: 2, 4, 8, 16, 32, 48 or 64):

  activations x0[16], x1[16]  --+--> sparse MUX 16:1 (per DSP) --> skew k --> DSP k (A:x1, D:x0)
  weights (INT8 / INT4 / OVP4) -+--> weight decode -> integer ---> skew k --> DSP k (B)
                                       DSP 2g -PCOUT->PCIN- DSP 2g+1  (group g, fixed cascade)
                                       group g -PCOUT->PCIN (Z = PCIN or 0)-> group g+1
                                       tap g = P of DSP 2g+1 --> lane extraction --> reduction net

* Two INT8 MACs per DSP sharing one weight (WP486): A = x1 << 18, D = x0, INMODE = 00100,
  AMULTSEL = "AD", B = weight. P accumulates x1*w * 2^18 + x0*w; a tap extracts
  y0 = signext(P[17:0]) and y1 = (P >>> 18) + P[17] (the low lane's sign borrow returned).
* Sparse MUX: DSP d picks its activation pair out of the M = 16 candidates (x0[j], x1[j]) of the
  current K block by the 4-bit stored index of its kept weight. In dense mode (N = 16) the index
  input is ignored and DSP d takes candidate d mod 16 (golden stores no index for dense blocks);
  a chain shorter than 16 covers a dense group in 16 / L beats and takes candidate
  ``dense_slice * L + d``, ``dense_slice`` (log2(16 / L) bits, only when L < 16) numbering the beat.
* N in {2, 4, 8, 16} per beat (``n_code`` = log2(N) - 1): the chain splits into segments of
  S = min(N, L) DSPs; segment s holds the S kept weights of one output row's group (S = N) or a
  consecutive piece of it (N > L), and emits y0[s], y1[s] = the exact dot products of its kept
  weights with the selected activations. L / S outputs per lane and beat.
* Reduction nodes: at a group boundary the next group either continues the PCIN cascade (Z = 001)
  or breaks it (Z = 000, restart) while the ending group's P goes out through its tap.
* Overflow adjust (chains longer than the lane limit): a lane holds 18 signed bits, so a run of
  cascaded DSPs may only hold R products, R = the largest power of two <= the lane limit
  floor((2^17 - 1) / max product) (INT8: 16384 -> 7 -> R = 4; INT4: 127 -> 64; OVP4 int4
  normals: 96 * 128 -> 10 -> 8; flint4: 192 * 128 -> 5 -> 4; capped at L). The cascade is
  broken every min(S, R) DSPs; each break point's P is extracted into two lane values and the
  segment's sum is completed in fabric adders: the reduction net, log2(min(L, 16) / 2) pipelined
  stages of pairwise adds, each adding only taps of the same segment, ``segment_sum_bits`` wide
  (the largest possible segment sum: 20 bits for INT8 at L >= 16; outputs sign-extend to 32).
  Power-of-two runs keep every break aligned with the reduction net; the worst case (all
  -128 x -128, INT8) is tested.

Ports (``lib.stream``, valid/ready):
  i: payload ``x0``, ``x1``: ArrayLayout(signed(8), 16) (two activation vectors, e.g. two tokens,
     the K-block window); ``weights``: packed (hw.weight_decode.packed_weight_layout);
     ``index``: ArrayLayout(unsigned(4), L); ``n_code``: unsigned(2); ``flint`` (ovp4 runtime);
     ``dense_slice`` (L < 16 only, see above).
  o: payload ``y0``, ``y1``: ArrayLayout(signed(32), L // 2) (entries s >= L / S are 0);
     ``n_code``: the beat's code.
Latency: ``L + 5 + log2(min(L, 16) / 2)`` cycles from an accepted input beat to its output
beat (input skew + DSP pipeline 4 + tap deskew: L + 3; extraction 1; reduction stages; output
register 1). L = 2, 4, 8, 16, 32: 7, 10, 15, 24, 40 cycles.
  freeze: In(1) (default 0): holds the whole chain for the cycle, whatever o.valid / o.ready say
     (no input accepted, no output taken, every register and DSP held).
Throughput: one beat per cycle (2L multiply-accumulates per cycle; dense INT8 = 2 MACs per DSP
per cycle). Backpressure: a stalled output (valid & ~ready) freezes the whole pipeline through
the clock enables (DSP CE* pins included); ``advance`` = ``~freeze & (~o.valid | o.ready)``,
``i.ready`` = ``advance``. ``freeze`` exists for the core's stall (CORE_INTERFACE.md section 1):
``EnableInserter`` does not reach DSP48E2 primitives, and o.ready low alone lets a chain whose
output register is empty advance (bubbles collapse); driving ``freeze`` with the inverted enable
makes a primitive build stop exactly as the Amaranth model under ``EnableInserter`` does.
``primitive=True`` instantiates real DSP48E2 primitives (exactly L, PCOUT->PCIN linked).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import CHAIN_LENGTHS
from .dsp48e2 import DSP48E2, OPMODE_MUL, OPMODE_MUL_PCIN
from .weight_decode import (GRID_FORMAT, OVP_NORMALS, WEIGHT_FORMATS, WeightDecoder, packed_weight_layout,
                            reference_decode, weight_value_range)
from .resources import register_unit

__all__ = [
    "CANDIDATES", "N_VALUES", "LANE_BITS", "SparseChainError", "SparseDSPChain", "n_code",
    "lane_limit", "lane_run", "segment_sum_bits", "chain_input_layout", "chain_output_layout",
    "reference_chain", "reference_beat", "packed_lanes_decode",
]

#: M: candidates per sparse MUX (one K block).
CANDIDATES = 16
#: Supported N of N:16 (16 = dense), indexed by n_code.
N_VALUES = (2, 4, 8, 16)
#: Width of the low packed lane.
LANE_BITS = 18
ACT_RANGE = (-128, 127)
OUT_BITS = 32


class SparseChainError(ValueError):
    """Bad sparse-chain configuration or beat."""


def n_code(n: int) -> int:
    """The 2-bit code of N (log2(N) - 1)."""
    if n not in N_VALUES:
        raise SparseChainError(f"N = {n!r} is not supported; expected one of {N_VALUES}")
    return N_VALUES.index(n)


def _check_length(length):
    if isinstance(length, bool) or length not in CHAIN_LENGTHS:
        raise SparseChainError(
            f"length = {length!r}: the chain length must be 2, 4, 8 or a multiple of 16 up to 64 "
            f"(groups of two DSPs; segments of min(N, L) DSPs, N in {N_VALUES}, must tile it)")


def _product_range(weight_format: str, ovp_normal: str) -> tuple[int, int]:
    wlo, whi = weight_value_range(weight_format, ovp_normal)
    alo, ahi = ACT_RANGE
    corners = (alo * wlo, ahi * whi, alo * whi, ahi * wlo)
    return min(corners), max(corners)


def lane_limit(weight_format: str, ovp_normal: str = "int4") -> int:
    """How many INT8-activation products one 18-bit packed lane can sum without overflow."""
    least, most = _product_range(weight_format, ovp_normal)
    top = (1 << (LANE_BITS - 1)) - 1
    return min(top // most, (top + 1) // -least)


def segment_sum_bits(length: int, weight_format: str, ovp_normal: str = "int4") -> int:
    """Signed width that holds any segment sum (at most min(L, 16) products): the width of the
    extracted lanes and of the reduction net; outputs are sign-extended to 32 bits."""
    least, most = _product_range(weight_format, ovp_normal)
    products = min(length, CANDIDATES)
    return max((products * most).bit_length(), (-products * least - 1).bit_length()) + 1


def lane_run(weight_format: str, ovp_normal: str = "int4", length: int = 64) -> int:
    """Longest cascaded run (a power of two, capped at length) that cannot overflow a lane."""
    limit = lane_limit(weight_format, ovp_normal)
    run = 1 << (limit.bit_length() - 1)
    return max(2, min(run, length))


def chain_input_layout(length: int, weight_format: str, ovp_normal: str = "int4"):
    fields = {
        "x0": data.ArrayLayout(signed(8), CANDIDATES),
        "x1": data.ArrayLayout(signed(8), CANDIDATES),
        "weights": packed_weight_layout(weight_format, length),
        "index": data.ArrayLayout(unsigned(4), length),
        "n_code": unsigned(2),
    }
    if weight_format == "ovp4" and ovp_normal == "runtime":
        fields["flint"] = unsigned(1)
    if length < CANDIDATES:
        fields["dense_slice"] = unsigned(_dense_slice_bits(length))
    return data.StructLayout(fields)


def _dense_slice_bits(length: int) -> int:
    return max(1, (CANDIDATES // length).bit_length() - 1)


def chain_output_layout(length: int):
    return data.StructLayout({
        "y0": data.ArrayLayout(signed(OUT_BITS), length // 2),
        "y1": data.ArrayLayout(signed(OUT_BITS), length // 2),
        "n_code": unsigned(2),
    })


# -- behavioural model ------------------------------------------------------------------------


def _wrap32(v: int) -> int:
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def reference_chain(x0, x1, weights, index, n: int, length: int,
                    dense_slice: int = 0) -> tuple[list[int], list[int]]:
    """Exact integer model of one beat: per segment, sum of kept weight * selected activation.

    ``weights`` are decoded integers (one per DSP), ``index`` the 4-bit in-group indices
    (ignored when n = 16: DSP d then takes candidate (dense_slice * length + d) mod 16).
    Returns (y0, y1), each ``length // 2`` long with zeros beyond L / S.
    """
    if length < CANDIDATES and not 0 <= dense_slice < CANDIDATES // length:
        raise SparseChainError(f"dense_slice {dense_slice} is not in 0..{CANDIDATES // length - 1}")
    _check_length(length)
    n_code(n)
    if len(x0) != CANDIDATES or len(x1) != CANDIDATES:
        raise SparseChainError(f"x0 and x1 must hold {CANDIDATES} activations each")
    if len(weights) != length or len(index) != length:
        raise SparseChainError(f"weights and index must hold {length} entries each")
    seg = min(n, length)
    y0, y1 = [0] * (length // 2), [0] * (length // 2)
    for d in range(length):
        sel = (dense_slice * length + d) % CANDIDATES if n == 16 else int(index[d])
        if not 0 <= sel < CANDIDATES:
            raise SparseChainError(f"index {sel} of DSP {d} is not a 4-bit in-group position")
        y0[d // seg] += int(weights[d]) * int(x0[sel])
        y1[d // seg] += int(weights[d]) * int(x1[sel])
    return [_wrap32(v) for v in y0], [_wrap32(v) for v in y1]


def reference_beat(beat: dict, length: int, weight_format: str, ovp_normal: str = "int4"):
    """``reference_chain`` of a packed input beat (a dict shaped like chain_input_layout)."""
    weights = reference_decode(weight_format, beat["weights"], ovp_normal, bool(beat.get("flint", 0)))
    return reference_chain(beat["x0"], beat["x1"], weights, beat["index"], N_VALUES[beat["n_code"]], length,
                           int(beat.get("dense_slice", 0)))


def packed_lanes_decode(x0, x1, weights) -> tuple[int, int]:
    """Bit-level model of one cascaded run without overflow adjust: accumulate the WP486 packed
    products in a 48-bit P and extract the two lanes. Equals the exact sums only while the low
    lane's sum fits 18 signed bits (used to show the lane limit is real)."""
    p = 0
    for a_lo, a_hi, w in zip(x0, x1, weights):
        ad = ((a_hi << 18) + a_lo) & ((1 << 27) - 1)          # 27-bit pre-adder
        ad = ad - (1 << 27) if ad >> 26 else ad
        p = (p + ad * w) & ((1 << 48) - 1)
    low = p & ((1 << LANE_BITS) - 1)
    borrow = low >> (LANE_BITS - 1)
    ps = p - (1 << 48) if p >> 47 else p
    return low - (borrow << LANE_BITS), (ps >> LANE_BITS) + borrow


# -- hardware --------------------------------------------------------------------------------


class SparseDSPChain(wiring.Component):
    """Configurable sparse DSP chain of ``length`` DSP48E2 (see the module docstring).

    Parameters: ``length`` (2, 4, 8 or a multiple of 16 up to 64), ``weight_format``
    ("int8", "int4", "ovp4", or "grid": signed 9-bit values decoded upstream),
    ``ovp_normal`` ("int4", "flint4", "runtime"; ovp4 only), ``primitive`` (real DSP48E2).
    Ports: ``i`` = In(stream.Signature(chain_input_layout)), ``o`` =
    Out(stream.Signature(chain_output_layout)), ``freeze`` = In(1) (holds the chain for the cycle).
    Latency ``self.latency`` = :meth:`latency_of` ``(L)`` =
    L + 5 + log2(min(L, 16) / 2) cycles; throughput one beat (2L MACs) per cycle.
    """

    def __init__(self, length: int = 16, weight_format: str = "int8", *, ovp_normal: str = "int4",
                 primitive: bool = False):
        _check_length(length)
        if weight_format not in WEIGHT_FORMATS + (GRID_FORMAT,):
            raise SparseChainError(f"weight_format {weight_format!r} is not one of {WEIGHT_FORMATS + (GRID_FORMAT,)}")
        if weight_format == "ovp4" and ovp_normal not in OVP_NORMALS:
            raise SparseChainError(f"ovp_normal {ovp_normal!r} is not one of {OVP_NORMALS}")
        self.length = length
        self.weight_format = weight_format
        self.ovp_normal = ovp_normal
        self.primitive = bool(primitive)
        self.run = lane_run(weight_format, ovp_normal, length)
        self.reduction_stages = self._reduction_stages(length)
        self.sum_bits = segment_sum_bits(length, weight_format, ovp_normal)
        self.latency = self.latency_of(length)
        super().__init__({
            "i": In(stream.Signature(chain_input_layout(length, weight_format, ovp_normal))),
            "o": Out(stream.Signature(chain_output_layout(length))),
            "freeze": In(1),
        })

    @staticmethod
    def _reduction_stages(length: int) -> int:
        # the longest segment is min(L, 16) DSPs = min(L, 16) / 2 taps
        return (min(length, CANDIDATES) // 2).bit_length() - 1

    @classmethod
    def latency_of(cls, length: int) -> int:
        """The latency in cycles of a chain of ``length`` DSPs (any weight format) without building
        one (an unelaborated chain draws Amaranth's UnusedElaboratable warning): L + 5 + the
        reduction stages, log2(min(L, 16) / 2). The chain's pipeline is this deep (``self.latency``)."""
        _check_length(length)
        return length + 5 + cls._reduction_stages(length)

    def _run_length(self, code: int) -> int:
        """DSPs per cascaded run for n_code: min(N, L, lane run)."""
        return min(N_VALUES[code], self.length, self.run)

    def elaborate(self, platform):
        m = Module()
        L = self.length
        depth = self.latency
        beat = self.i.payload

        advance = Signal()
        m.d.comb += [advance.eq(~self.freeze & (~self.o.valid | self.o.ready)), self.i.ready.eq(advance)]

        def delay(value, stages, name):
            """``stages`` pipeline registers (clock-enabled by advance, no reset: SRL-friendly)."""
            for s in range(stages):
                q = Signal.like(value, name=f"{name}_d{s + 1}", reset_less=True)
                with m.If(advance):
                    m.d.sync += q.eq(value)
                value = q
            return value

        # Beat metadata: valid and n_code travel with the beat; n_pipe[q] = the code of the beat
        # that was accepted q edges ago.
        valid_pipe, n_pipe = [self.i.valid], [beat.n_code]
        for q in range(1, depth + 1):
            v = Signal(name=f"valid_{q}")
            n = Signal(2, name=f"n_code_{q}", reset_less=True)
            with m.If(advance):
                m.d.sync += [v.eq(valid_pipe[-1]), n.eq(n_pipe[-1])]
            valid_pipe.append(v)
            n_pipe.append(n)

        def per_code(bits, code):
            """A constant per n_code, selected by the runtime code."""
            return Cat(*[Const(int(b), 1) for b in bits]).bit_select(code, 1)

        # Weight decode.
        m.submodules.decode = decode = WeightDecoder(self.weight_format, L, ovp_normal=self.ovp_normal)
        m.d.comb += decode.weights.eq(beat.weights)
        if self.weight_format == "ovp4" and self.ovp_normal == "runtime":
            m.d.comb += decode.flint.eq(beat.flint)

        dsps = []
        for k in range(L):
            # Sparse MUX: dense blocks carry no index (DSP k takes candidate k mod 16, or
            # dense_slice * L + k on a chain shorter than a group).
            sel = Signal(4, name=f"sel_{k}")
            dense_sel = (beat.dense_slice * L + k) if L < CANDIDATES else k % CANDIDATES
            m.d.comb += sel.eq(Mux(beat.n_code == n_code(16), dense_sel, beat.index[k]))
            act0 = Signal(signed(8), name=f"act0_{k}")
            act1 = Signal(signed(8), name=f"act1_{k}")
            m.d.comb += [act0.eq(beat.x0[sel]), act1.eq(beat.x1[sel])]
            # Skew DSP k by k cycles: the systolic wavefront of the PCIN cascade.
            act0 = delay(act0, k, f"act0_{k}")
            act1 = delay(act1, k, f"act1_{k}")
            weight = delay(decode.values[k], k, f"weight_{k}")

            dsp = DSP48E2(AREG=1, BREG=2, DREG=1, ADREG=1, MREG=1, PREG=1, AMULTSEL="AD",
                          primitive=self.primitive)
            m.submodules[f"dsp{k}"] = dsp
            dsps.append(dsp)
            # Break the cascade (Z = 0) at the start of every run. OPMODE is registered and acts
            # on the ALU stage: the beat reaches it k + 2 edges after acceptance.
            restart = per_code([k % self._run_length(c) == 0 for c in range(4)], n_pipe[k + 2])
            m.d.comb += [
                dsp.A.eq(act1 << 18),
                dsp.D.eq(act0),
                dsp.B.eq(weight),
                dsp.INMODE.eq(0b00100),
                dsp.OPMODE.eq(Mux(restart, OPMODE_MUL, OPMODE_MUL_PCIN)),
            ]
            for ce in ("CEA1", "CEA2", "CEB1", "CEB2", "CED", "CEAD", "CEM", "CEP", "CECTRL",
                       "CEINMODE", "CEALUMODE", "CEC", "CECARRYIN"):
                m.d.comb += getattr(dsp, ce).eq(advance)
            if k:
                m.d.comb += dsp.PCIN.eq(dsps[k - 1].PCOUT)

        # Taps: P of the last DSP of every group, deskewed to the last group's timing.
        stage = []
        tap_code = n_pipe[L + 3]
        for g in range(L // 2):
            p = delay(dsps[2 * g + 1].P, L - 2 - 2 * g, f"tap_{g}")
            active = per_code([(2 * g + 2) % self._run_length(c) == 0 for c in range(4)], tap_code)
            low = Signal(signed(LANE_BITS), name=f"tap{g}_lane0")
            borrow = p[LANE_BITS - 1]
            # A run holds at most lane_limit products, so both lanes' true sums fit 18 signed
            # bits and (P >>> 18) + P[17] loses nothing when cut to sum_bits (>= 18).
            high = Signal(signed(self.sum_bits), name=f"tap{g}_lane1")
            m.d.comb += [low.eq(p[:LANE_BITS]), high.eq(p[LANE_BITS:].as_signed() + borrow)]
            lanes = []
            for lane, value in (("y0", low), ("y1", high)):
                q = Signal(signed(self.sum_bits), name=f"v0_{g}_{lane}", reset_less=True)
                with m.If(advance):
                    m.d.sync += q.eq(Mux(active, value, 0))
                lanes.append(q)
            stage.append(lanes)

        # Reduction net: stage j adds taps 2^j apart when they belong to one segment.
        for j in range(self.reduction_stages):
            code = n_pipe[L + 4 + j]
            nxt = []
            for i in range(L // 2):
                combine = i % (2 << j) == 0 and i + (1 << j) < L // 2
                lanes = []
                for lane in range(2):
                    q = Signal(signed(self.sum_bits), name=f"v{j + 1}_{i}_y{lane}", reset_less=True)
                    value = stage[i][lane]
                    if combine:
                        joins = per_code([self._segment_taps(c) > (1 << j) for c in range(4)], code)
                        # gate the addend, not the sum: the AND folds into the adder's LUTs
                        value = stage[i][lane] + Mux(joins, stage[i + (1 << j)][lane], 0)
                    with m.If(advance):
                        m.d.sync += q.eq(value)
                    lanes.append(q)
                nxt.append(lanes)
            stage = nxt

        # Output: segment s of size S sits at position s * S / 2.
        code = n_pipe[depth - 1]
        for s in range(L // 2):
            for lane, port in ((0, self.o.payload.y0), (1, self.o.payload.y1)):
                q = Signal(signed(self.sum_bits), name=f"out_{s}_y{lane}", reset_less=True)
                with m.Switch(code):
                    for c in range(4):   # all four codes: the switch is complete
                        seg = min(N_VALUES[c], L)
                        with m.Case(c):
                            if s < L // seg:
                                with m.If(advance):
                                    m.d.sync += q.eq(stage[s * seg // 2][lane])
                            else:
                                with m.If(advance):
                                    m.d.sync += q.eq(0)
                m.d.comb += port[s].eq(q)
        m.d.comb += [self.o.valid.eq(valid_pipe[depth]), self.o.payload.n_code.eq(n_pipe[depth])]
        return m

    def _segment_taps(self, code: int) -> int:
        """Taps (groups) per output segment for n_code."""
        return min(N_VALUES[code], self.length) // 2


@register_unit("sparse_chain")
def _resource_unit(length: int = 16, weight_format: str = "int8", primitive: bool = True,
                   ovp_normal: str = "int4"):
    """The chain as a resource unit (``olivine resources sparse_chain --length 16 ...``)."""
    chain = SparseDSPChain(int(length), weight_format, ovp_normal=ovp_normal, primitive=bool(primitive))
    return chain, f"sparse_chain_{weight_format}_l{int(length)}"
