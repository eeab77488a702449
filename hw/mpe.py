"""The matrix engine (MPE): MM / MV instructions on ``chains_per_core`` sparse DSP chains.

Executes the decoded MM and MV instructions of docs/isa.md "MM / MV" exactly as
``sim.funcsim.FuncSim.do_mpe`` does (the executable specification; golden/contract.py the integer
contract; tests/test_hw_mpe.py compares the whole data space byte for byte). Built:
``mode=linear`` dense with INT8 / INT4 / OVP4 (int4 and flint4 normals) weights, ``mode=qk``,
``mode=pv``; INT8 activations; W4A4 (``afmt=ovp4`` with ovp4 weights, both normal types of
both operands) on OliVe's OVP systolic array (hw/mpe_ovp.py, in place of the chains, feeding the
same writer); ``wgroup`` g64 / g128 (per-group 4-bit weight multipliers, docs/contract.md 2a)
with dense int4 and ovp4 weights (all funcsim accepts: ``mode=linear``, ``sparse=0``, INT8
activations); ``out`` int32, fixed32 (``bias``) and int8 through the
requantizer (hw/requant.py); ``accumulate``; any m, n, k_blocks, ldo; every field rule and data
rule answered with ``fault`` and an :class:`MpeError`, nothing written; any power of two of
chains (the U280 default: 128). Not built yet (``fault`` with ``MpeError.NOT_BUILT``, nothing
written): ``out=int8`` with ``accumulate`` and m > 1 (see :meth:`MatrixEngine._check`).

Data flow (C = chains, each 16 DSPs = one K block of 16 per beat, dense N = 16; chain c on column
cb + c of a column group, the beat's x0 / x1 lanes = tokens 2tp, 2tp + 1, sharing the weights):
  for column group cg, token pair tp, chunk q (B = C K blocks int8, 2C int4 / ovp4), block j:
      beat = (A[2tp, kb], A[2tp+1, kb]) broadcast, chain c's weights W[cb + c, kb], kb = qB + j
  * Weight loader -> the chunk banks' next half (double buffer: loads chunk q+1 while chunk q's
    beats run; "Chunk storage" below):
    linear: one 16C-byte weight word per chain and chunk (a carry word per chain cuts the chunk
    out at any byte offset; a row's first chunk takes 2 reads; ``wgroup``: then the chunk's
    multipliers, NMAX = max(1, C/2) nibbles of the row's multiplier bytes (a chunk of 2C blocks is
    group-aligned or inside one group), 1 read, 2 when they straddle a word); qk: the K block rows
    from the data space, one 16-byte word per block; pv: V [K, n] row-major, two 16-byte reads per
    V row (C / 16 + 1 for C > 16: an unaligned C-byte slice) give the C columns' bytes of that row
    (a transposing gather). qk writes each block into its bank, pv each V row's byte lane into the
    banks of block j of every chain. When k_blocks fits one chunk, the chunk is loaded once per
    column group and reused by all its token pairs.
  * Chunk storage: C skewed banks (submodules ``wbank<b>``, lib.memory, 128 bits x 2C words, byte write
    enables; ``ram_style`` distributed up to 32 chains, block above:
    :meth:`MatrixEngine.memory_styles`). Unit u of chain c's chunk (16 bytes: one int8 K block, two int4
    / ovp4 blocks) lives in bank (u + c) mod C at address h * C + c, h the half: the issuer reads half
    ``cur_half``, the loader writes the other, and the swap flips the bit (no copy). A linear chunk (one
    16C-byte word per chain) is one write to every bank at address c, the chunk rotated by c units
    (placed by one shared byte rotator of the weight word, below); a beat, which needs unit u of every
    chain, reads bank b at (b - u) mod C and rotates the C outputs by u (a second rotator): chain c gets
    its unit from bank (u + c) mod C (int4 / ovp4: then the 64-bit half of the block). qk writes one
    bank per block (address c); pv one byte lane (the V row) in every bank, bank b for chain (b - j) mod
    C. The banks are read one cycle ahead, at the issuer's next block, so beats issue at the rate and on
    the cycles registers gave (mpe_cycles unchanged). The carry words are a second memory (``wcarry``:
    one 16C-byte word per chain, depth C; LUTRAM up to 64 chains, UltraRAM above), read with the chain's
    weight read and transparent to its write (a row's first chunk writes it at read 0 and reads it at
    read 1). Placing a chunk (bytes [off, off + W) of the chain's previous word and the one read now, W
    = 16C, rotated by 16c bytes into bank order): the word read is rotated by r = (16c - off) mod W
    bytes, the carry memory keeps that rotated word, and each byte of the chunk is the carry's or the
    new word's (a thermometer rotated by r; ``_chunk_in_bank_order``); r is constant along a chain's
    row. One W-byte rotator (log2 W stages) thus replaces a 2W -> W funnel in series with a unit
    rotator, and the sparse path's kept values use the same one (their first word in ``stash``,
    rotated). Why: in registers a chain's chunk would be
    held three times (next, current, carry: 384 C**2 flip-flops, 6.3 M at the U280's 128 chains
    where the board has 2.6 M) and selected by a C:1 mux of 128 bits per chain (C**2 logic, and a
    conversion of hours); the banks hold the 384 C**2 bits as RAM, with O(C log C) rotator logic.
    The skew is what makes both accesses single-cycle: unskewed per-unit banks (unit u of every
    chain in bank u) would need C reads of one bank per beat, per-chain memories C writes (one per
    unit) per chunk. Dropping the carry (two weight reads per chunk) would make an int8 chunk's
    load 2C + 2 cycles for its C beats. Still registers, small: the sparse indices (64 bits per
    chain) and the wgroup multipliers (2 x 2C bits per chain: 4 C**2, 64 Ki FFs at 128 chains).
  * Sparse: one K block per chunk; a column group of C > 16 chains spans C / 16 bands of 16 rows,
    each with its own N per block (per band: the table scan, the N read, the chains' N codes).
  * Activation fetcher -> 4-beat FIFO: one 16-byte data-space read per token and block (P' blocks:
    4), a carry word per row for an unaligned a_addr.
  * pv: P' is int32 but the chains take 8-bit activations, so each block is issued in 5 passes,
    digit d = bits [7d, 7d + 7) (unsigned, 0..127) for d < 4 and bits [28, 32) signed (-8..7) for
    d = 4: P = sum_d digit_d * 2**(7d) exactly. The collector adds each pass's exact chain sum
    shifted by 7d, mod 2**32, so the result is wrap32(P V) for every int32 P. Five passes because
    4 * 7 + 4 = 32 and four signed 8-bit digits cannot reach 2**31 - 1 (4 x 8 = 32 bits would need
    unsigned low digits, which the INT8 port cannot carry).
  * Collector: per chain two 32-bit accumulators (wrapping); the last block of a (cg, tp) pushes the
    2C sums into a 2-deep result FIFO (full: the chains freeze through ``o.ready``). ``wgroup``: each
    beat's block sum y (|y| < 2**19) is first multiplied by its group's multiplier m (carried with
    the beat's tag; hw/group_scale.py GroupScaler "mult4", combinational shift-and-add, no DSP):
    sum_blocks m_g(b) y_b = sum_g m_g P_g, so acc = wrap32(sum_g m[c, g] P[t, c, g]) exactly
    (funcsim's grouped values give the same integer). Pre-multiplying the weights instead would
    not fit the chains' 9-bit grid port for OVP (|W| <= 192, 192 * 15 needs 13 bits), and would
    cost 16C small multipliers where the collector needs 2C.
  * Writer: per result, the requantization parameters (per-row exponent / mantissa from the A
    block, qk also per-column ones from the K block; per-column entries from the bias buffer,
    held for the column group), then per (token, column): [``accumulate``: one read of the int32
    input] -> add -> int32 write, or -> Requantizer -> fixed32 / int8 write (one per cycle).
  * Data rules (out != int32): before anything runs, a prescan reads every row mantissa (A; qk: K)
    and every entry's multiplier; a mantissa > 256 or a multiplier with bit 31 faults. ``wgroup``
    (any out, first, funcsim's order): every multiplier, one weight word (16C bytes, all the rows'
    multipliers in it) per cycle through the weight port; a 0 multiplier (not the padding nibble of
    an odd group count) faults with ``GROUP_MULT``.

Ports (CORE_INTERFACE.md sections 1-3; every read port has one cycle of read latency):
  inst      In(stream.Signature(unit_layout("mpe")))  (MM / MV; the handshake starts it)
  done      Out(1)  pulse: the instruction finished, every write performed
  fault     Out(1)  pulse instead of done: refused (``error`` says why), nothing written
  busy      Out(1)
  error     Out(8)  :class:`MpeError` of the last instruction (0 after a good one)
  enable    In(1, init=1)  the core's enable of this unit (the one it gives ``EnableInserter``):
            also drives the chains' ``freeze`` (inverted), so DSP48E2 primitives, which
            EnableInserter does not reach, hold exactly as the Amaranth model does.
  act_rd    ReadPort, 128 bits: 16-byte words of the data space (operands, accumulate input,
            requantization row parameters)
  act_wr    WritePort, 128 bits, byte enables (16): the output (4 bytes or 1 byte per cycle)
  weight_rd ReadPort, 128 * C bits: 16C-byte words of the weight buffer (one chunk per chain read,
            so C chains are fed for int8 with C reads per C beats)
  meta_rd   ReadPort, 128 bits (16-byte units): reserved for the sparse tables (not read yet)
  bias_rd   ReadPort, 128 bits: one 16-byte requantization entry per read
  (no ``ovp`` port: the OVP array path, submodule ``ovp``, shares act_rd (below the writer),
  weight_rd, the writer and act_wr with the chains; CORE_INTERFACE.md's reserved slot is internal)
Latency / throughput: :func:`mpe_cycles` (cycles from the accepted ``inst`` to ``done``). A beat
carries 2 x 16 x C MACs; it issues at one per cycle for one token (MV) and one per two cycles for
a token pair (two data-space reads); a chunk that does not fit the reuse takes max(B + 1, C + 2)
cycles (``wgroup``: max(B + 1, 2C + 2), the multiplier reads; plus the prescan's one cycle per
weight word holding the n * ceil(groups / 2) multiplier bytes); the writer takes one cycle per value (two with accumulate). At the small configuration
(8 chains, 256 MACs per cycle), K = 512, n = 512: MV int8 30 %, MV int4 43 % (one token uses half
of each beat), MM m = 32 int8 / int4 50 % of the peak; qk 13 %, pv 10 % (the writer, the digit
passes: docs/benchmarks.md). W4A4: hw/mpe_ovp.ovp_cycles, 2C MACs per cycle (the 2 x C array;
docs/benchmarks.md).
Field and range faults answer 2 cycles after the handshake.
"""

from __future__ import annotations

import enum as py_enum

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig
from .controller import unit_layout
from .decode import DEFAULT_OFFSET_BITS
from .mpe_ovp import OvpMatrixPath, ovp_cycles
from .ovp_decoder import OvpPairDecoder
from .requant import REQUANT_LATENCY, Requantizer
from .bitops import rotate_left, shift_right
from .group_scale import GroupScaler
from .resources import register_unit
from .sparse_chain import SparseDSPChain, n_code
from .weight_decode import GRID_BITS, GRID_FORMAT

__all__ = ["LINT_WAIVERS", "MpeError", "MpeHarness", "MatrixEngine", "MpeGeometry", "mpe_cycles", "mpe_cycles_estimate",
           "ACT_BYTES", "CHAIN_LENGTH"]

#: bytes of one data-space / meta / bias word of the engine's ports
ACT_BYTES = 16
#: the chain length this engine is built for (one dense K block of 16 per beat)
CHAIN_LENGTH = 16
#: beats buffered between the activation fetcher and the chains
A_FIFO_DEPTH = 4
#: results (2C sums) buffered between the collector and the writer
RESULT_FIFO_DEPTH = 2
#: beat tags in flight in the chains (a chain holds at most its latency of beats)
TAG_FIFO_DEPTH = 32
#: pv: P' (int32) enters the chains' 8-bit activation port as 5 digits, 7 bits each with the top
#: (bits 28..31) signed: 4 * 7 + 4 = 32, and no fewer 8-bit signed digits cover every int32
PV_DIGITS = 5
#: bits of a chain's block sum (16 products of int8 x |W| <= 192: |y| < 2**19) the wgroup scaler takes
GROUP_SUM_BITS = 20
#: largest row mantissa of an INT8 block (docs/isa.md data rule: 9 bits)
MAX_MANTISSA = 256


#: Verilator -Wall findings of the generated engine that are not design problems.
LINT_WAIVERS: dict[str, str] = {
    "CASEINCOMPLETE": "Amaranth's Verilog backend writes every combinational signal as a default assignment "
                      "followed by a case statement that lists only the values that change it (m.Switch, "
                      "the FSM state, word_select writes); an unlisted value keeps the default, nothing latches",
    "UNUSEDSIGNAL": "Amaranth's Verilog backend keeps a named wire for every named signal, view field and "
                    "submodule port and drives the logic from the underlying net, so these aliases read as "
                    "unused by construction; the chains' DSP48E2 models leave ports unused as the silicon "
                    "does (hw/sparse_chain.py); meta_rd's data is read once sparse weights are built.",
}


class MpeError(py_enum.IntEnum):
    """``error`` values: why an MM / MV instruction was refused (docs/isa.md "Validity (MM / MV)")."""

    NONE = 0
    PITCH = 1            # ldo < n (after ldo = ldo or n): output rows would overlap
    ANORMAL = 2          # anormal = flint4 without afmt = ovp4
    OVP_OPERANDS = 3     # afmt = ovp4 without mode = linear, wfmt = ovp4, sparse = 0
    BIAS_OUT = 4         # bias = 1 without out = fixed32
    SPARSE_ROWS = 5      # sparse = 1 with n not a multiple of 16
    META_ADDR = 6        # sparse = 0 with meta_addr != 0
    NORMAL = 7           # normal = flint4 without wfmt = ovp4
    MODE_FIELDS = 8      # qk / pv with sparse, bias, wfmt, normal or meta_addr set
    OVERLAP = 9          # the output overlaps the A operand or (qk, pv) the b_addr operand
    ZERO_SHAPE = 10      # m, n or k_blocks = 0 (the decoder rejects these; never a hang)
    NOT_BUILT = 11       # a valid instruction this revision does not execute (int8 out + accumulate, m > 1)
    OUT_OF_RANGE = 12    # an operand, entry or the output beyond its buffer
    UNALIGNED = 13       # an int32 operand / output not 4-byte aligned
    MANTISSA = 14        # a row mantissa above 256 (data rule)
    MULTIPLIER = 15      # a requantization multiplier with bit 31 set (data rule)
    BLOCK_N = 16         # a sparse block N not in {2, 4, 8, 16} (data rule)
    GROUP_MULT = 17      # a per-group weight multiplier (wgroup) of 0 (data rule)
    WGROUP_FIELDS = 18   # wgroup without mode = linear, sparse = 0, afmt = int8, wfmt = int4 / ovp4


class MpeGeometry:
    """The engine's port geometry for a configuration (shared by the RTL, tests and cycle model)."""

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
        if config.chains_per_core & (config.chains_per_core - 1):
            raise ValueError(f"chains_per_core={config.chains_per_core}: the matrix engine needs a power of two "
                             f"(its weight word is 16 bytes per chain)")
        if config.chain_length != CHAIN_LENGTH:
            raise ValueError(f"the matrix engine is built for chains of {CHAIN_LENGTH} DSPs (one dense K block "
                             f"per beat); chain_length={config.chain_length} is not supported yet")
        b = config.buffers
        self.chains = config.chains_per_core
        self.space_bytes = (b.activation_kib + b.global_kib) * 1024
        self.weight_bytes = b.weight_kib * 1024
        self.meta_bytes = b.meta_kib * 1024
        self.bias_bytes = b.bias_kib * 1024
        self.wword_bytes = 16 * self.chains
        for what, size, word in (("data space", self.space_bytes, ACT_BYTES), ("weight buffer", self.weight_bytes,
                                  self.wword_bytes), ("meta buffer", self.meta_bytes, ACT_BYTES),
                                 ("bias buffer", self.bias_bytes, ACT_BYTES)):
            if size % word or size == 0:
                raise ValueError(f"the {what} of {size} bytes is not a whole number of the engine's "
                                 f"{word}-byte words; size it in multiples of {word} bytes")
        self.act_words = self.space_bytes // ACT_BYTES
        self.weight_words = self.weight_bytes // self.wword_bytes
        self.meta_words = self.meta_bytes // ACT_BYTES
        self.bias_words = self.bias_bytes // ACT_BYTES

    @staticmethod
    def addr_bits(words: int) -> int:
        return max(1, (words - 1).bit_length())


def mpe_cycles(fields: dict, config: AcceleratorConfig, *, ovp_token_pairs: int = 1) -> int:
    """Cycles from the accepted ``inst`` to ``done`` of a valid instruction, exactly: the
    cycle-by-cycle model of the engine's control path in hw/mpe_timing.py (tests/test_hw_mpe.py
    asserts equality with the RTL on every case it runs, stalled or not: a frozen cycle does not
    count). ``afmt=ovp4`` (W4A4 on the OVP array, hw/mpe_ovp.py) gets its own model, ``ovp_cycles``
    (within 2 % of the RTL on the tests' cases).
    """
    if fields.get("afmt"):
        return ovp_cycles(fields, MpeGeometry(config).chains, REQUANT_LATENCY, ovp_token_pairs)
    from .mpe_timing import engine_cycles

    g = MpeGeometry(config)
    return engine_cycles(fields, g.chains, chain_latency=SparseDSPChain.latency_of(CHAIN_LENGTH),
                         requant_latency=REQUANT_LATENCY, a_fifo_depth=A_FIFO_DEPTH,
                         result_fifo_depth=RESULT_FIFO_DEPTH, tag_fifo_depth=TAG_FIFO_DEPTH, pv_digits=PV_DIGITS)


def mpe_cycles_estimate(fields: dict, config: AcceleratorConfig, *, ovp_token_pairs: int = 1) -> int:
    """The closed-form estimate of :func:`mpe_cycles` (within 15 % + 16 cycles of the RTL on the
    tests' cases and on tests/test_hw_mpe.py's random cases at 2 and 8 chains; cheap for any shape).
    Its terms say where the time goes:

    Per (column group, token pair) the slowest of three resources sets the pace:
    * the data-space read port: ``tokens * (k_blocks * words + prime)`` operand reads (words =
      4 for a P' block, else 1; prime = 1 per token when a_addr is not 16-byte aligned), plus the
      writer's reads (one per value with ``accumulate``; requantization parameters 3 per token,
      pv 1, qk 3 per column), plus the loader's (qk: K blocks; pv: 2 per V row, C / 16 + 1 for
      C > 16);
    * the chains: ``k_blocks`` beats (pv: 5 per block);
    * the writer: one cycle per value (+1 with ``accumulate``) plus its parameter reads (qk: at
      least 2C + 1, the collector takes each token pair's record of all C chains);
    a linear column group after the first that fits the reuse waits for its 2C weight reads; and,
    when a row needs several chunks, per chunk ``max(B + 1, C + 2)`` (its beats and the swap,
    or the next chunk's C weight reads, 2C for a row's first, which start when it is swapped in).
    Sparse: per group 2C + 5 + C / 16 (each band's N, then 2 weight + 2 meta reads per chain),
    plus the bands' table scans and the block-N prescan; with one K block the group's kept weights
    are loaded once and serve all its token pairs, whose records (writer + 1 each, a lone token's
    as long as a pair's) overlap that load. Plus the check cycles, the prescan of the
    data rules (out != int32: 2 per mantissa, 1 per entry), the first chunk's load and the
    pipeline drain (chain latency + requantizer).
    """
    g = MpeGeometry(config)
    if fields.get("afmt"):   # W4A4 on the OVP array (hw/mpe_ovp.py)
        return ovp_cycles(fields, g.chains, REQUANT_LATENCY, ovp_token_pairs)
    C = g.chains
    mode = fields.get("mode", 0)
    m, n, kb = fields["m"], fields["n"], fields["k_blocks"]
    out, accumulate = fields.get("out", 0), fields.get("accumulate", 0)
    wfmt = fields.get("wfmt", 0)
    blocks = C if wfmt == 0 else 2 * C
    chunks = -(-kb // blocks)
    reuse = chunks == 1
    words = 4 if mode == 2 else 1
    prime = 1 if fields.get("a_addr", 0) % 16 else 0
    digits = PV_DIGITS if mode == 2 else 1
    wgroup = fields.get("wgroup", 0)
    mreads = C if wgroup else 0          # wgroup: one multiplier word per chain and chunk (2 if straddling)
    if mode == 0:
        load = C * (chunks + 1) + mreads * chunks
    elif mode == 1:
        load = min(C, n) * (kb + (1 if fields.get("b_addr", 0) % 16 else 0))   # K rows: live chains only
    else:
        load = (C // 16 + 1 if C > 16 else 2) * 16 * kb   # the V rows, C // 16 + 1 reads each (2 for C <= 16)
    slots = max(1, C // 16)     # sparse: bands per column group
    total = 2
    if fields.get("sparse"):   # the block-N table prescan
        total += -(-(n // 16 * kb) // 16) + 3
        load = 2 * C + 4
    if wgroup:   # the multiplier prescan: one weight word per cycle
        gbytes = (-(-kb // (4 if wgroup == 1 else 8)) + 1) >> 1
        mult_base = fields.get("b_addr", 0) + n * kb * (16 if wfmt == 0 else 8)
        total += (mult_base + n * gbytes - 1) // g.wword_bytes - mult_base // g.wword_bytes + 1 + (0 if out else 2)
    if out:
        mants = (m if mode != 2 else 0) + (n if mode == 1 else 0)
        total += 2 * mants + (n if mode == 0 else 1) + 2
    total += load
    sparse_reuse = fields.get("sparse") and kb == 1   # one K block: a column group's kept weights serve every token pair
    for cg in range(-(-n // C)):
        cols = min(C, n - cg * C)
        group_load = group_rest = 0
        for tp in range(-(-m // 2)):
            tokens = min(2, m - 2 * tp)
            vals = tokens * cols
            params = 0
            if out:
                params = tokens * (1 if mode == 2 else 3) + 3
                if tp == 0:     # the column group's parameters, held for its other token pairs
                    params += cols if mode == 0 else (3 * cols + 1 if mode == 1 else 1)
                elif mode != 0:  # the one entry of qk / pv, read per record
                    params += 1
            act = tokens * (kb * words + prime) + (vals if accumulate else 0) + (params if out else 0)
            if mode != 0 and not (reuse and tp):
                act += (load if mode == 2 else cols * (load // min(C, n))) if (cg or tp) else 0
            writer = vals * (1 + accumulate) + params
            if mode == 1:   # qk: the collector takes a token pair's record of all C chains, live or not
                writer = max(writer, 2 * C + 1)
            if fields.get("sparse"):   # per group: each band's N, then 2 weight + 2 meta reads per chain
                beats = kb * (2 * C + 5 + slots) + (slots * (3 + kb // 16) - 1
                                                    if cg % max(1, 16 // C) == 0 and tp == 0 else 0)
                if sparse_reuse:   # the group's load once, overlapped by its token pairs' records (a lone
                    group_load = max(group_load, beats)       # token's takes a pair's time)
                    group_rest += max(act, writer + 1 + (cols * (1 + accumulate) if tokens == 1 else 0))
                    continue
            elif reuse:   # a linear column group after the first waits for its rows' 2C weight reads
                beats = kb * digits + (0 if tp else 1)
                if mode == 0 and cg and not tp:
                    beats = max(beats, 2 * C + mreads + 2)
            else:   # a chunk's beats, or its load (which starts when the previous chunk starts)
                beats = 0
                for q in range(chunks):
                    bq = min(blocks, kb - q * blocks)
                    beats += max(bq * digits + 1, (2 * C if q == 0 else C) + mreads + 2)
            total += max(act, beats, writer)
        total += max(group_load, group_rest)
    # the last record's writer overlaps nothing (earlier ones overlap the next group's loads and
    # beats): it shows with many columns per group, e.g. pv / qk at 32 chains
    total += writer if C > 16 else 0
    latency = CHAIN_LENGTH + 5 + 3 + 4
    total += latency + (REQUANT_LATENCY if out else 0)
    return total


def _highest_set(value):
    """The index of the highest set bit of ``value`` (0 when none), as a log-depth tree of muxes."""
    if len(value) == 1:
        return Const(0, 1)
    half = 1 << ((len(value) - 1).bit_length() - 1)
    lo, hi = value[:half], value[half:]
    return Mux(hi.any(), half + _highest_set(hi), _highest_set(lo))


def _funnel(fm, lo, hi, offset, nbytes: int, name: str):
    """Bytes [offset, offset + nbytes) of the little-endian byte string lo ++ hi: a log-depth shifter
    (hw/bitops.py) whose stages go into ``fm``, a submodule without conditions (call sites sit in
    m.If blocks; the stages must not)."""
    return shift_right(fm, Cat(lo, hi), offset, step=8, width=8 * nbytes, name=name)


def _chunk_in_bank_order(fm, word, lo, chain, off, W: int):
    """A chunk cut out of two weight words and placed in bank order in one step (no funnel and unit
    rotator in series): ``rot`` = ``word`` rotated left by r = (16 chain - off) mod W bytes, and the
    chunk ``lo[off:] ++ word[:off]`` rotated by the chain's 16 chain bytes is, byte by byte, ``lo``
    where the chunk byte comes from the first word and ``rot`` elsewhere, provided ``lo`` is the
    chain's previous word rotated by the same r (W = 16C, the weight word's bytes; the carry memory
    and the sparse stash hold ``rot``; r is constant for a chain's row). Byte i is ``lo``'s when ((i
    - r) mod W) >= off: the thermometer (j >= off) rotated by r. One byte rotator of log2(W) stages
    replaces a 2W -> W funnel (log2(W) stages of up to 2W bytes) plus a unit rotator (log2(C) stages
    of W bytes)."""
    wlog = (W - 1).bit_length()
    amount = Signal(wlog, name="w_rot_amount")
    fm.d.comb += amount.eq((chain << 4) - off)
    rot = rotate_left(fm, word, amount, step=8, name="w_rot")
    thermo = Signal(W, name="w_lo_thermo")
    fm.d.comb += thermo.eq(Cat(*[off <= j for j in range(W - 1)], Const(1, 1)))   # off <= W - 1 always
    from_lo = rotate_left(fm, thermo, amount, step=1, name="w_lo_mask")
    chunk = Signal(8 * W, name="w_chunk")
    fm.d.comb += chunk.eq(Cat(*[Mux(from_lo[i], lo[8 * i: 8 * i + 8], rot[8 * i: 8 * i + 8]) for i in range(W)]))
    return rot, chunk


class MatrixEngine(wiring.Component):
    """The matrix engine of one core (see the module docstring for ports, latency, throughput).

    Parameters: ``config`` (an :class:`AcceleratorConfig`; chains_per_core chains of length 16),
    ``offset_bits`` (the instruction word-offset width of the controller), ``primitive`` (real
    DSP48E2 in the chains).
    """

    def __init__(self, config: AcceleratorConfig, *, offset_bits: int = DEFAULT_OFFSET_BITS,
                 primitive: bool = False, ovp_token_pairs: int = 1):
        self.ovp_token_pairs = ovp_token_pairs   # the W4A4 array has 2 x ovp_token_pairs rows (hw/mpe_ovp.py)
        self.geometry = g = MpeGeometry(config)
        self.config = config
        self.chains = g.chains
        self.primitive = bool(primitive)
        self._inst_layout = unit_layout("mpe", offset_bits)
        ab = MpeGeometry.addr_bits
        super().__init__({
            "inst": In(stream.Signature(self._inst_layout)),
            "done": Out(1), "fault": Out(1), "busy": Out(1), "error": Out(8),
            "enable": In(1, init=1),
            "act_rd": In(ReadPort.Signature(addr_width=ab(g.act_words), shape=unsigned(8 * ACT_BYTES))),
            "act_wr": In(WritePort.Signature(addr_width=ab(g.act_words), shape=unsigned(8 * ACT_BYTES),
                                             granularity=8)),
            "weight_rd": In(ReadPort.Signature(addr_width=ab(g.weight_words), shape=unsigned(8 * g.wword_bytes))),
            "meta_rd": In(ReadPort.Signature(addr_width=ab(g.meta_words), shape=unsigned(8 * ACT_BYTES))),
            "bias_rd": In(ReadPort.Signature(addr_width=ab(g.bias_words), shape=unsigned(8 * ACT_BYTES))),
        })

    def memory_styles(self) -> dict[str, str]:
        """``ram_style`` of the engine's two large memories (docs/benchmarks.md "Matrix engine: fit
        at 128 chains", measured with Yosys): the C chunk banks ``wbank`` (2C x 128 bits, byte
        enables) in LUTRAM up to 32 chains, in block RAM above (2 RAMB36 per bank; as LUTRAM a
        256-deep bank would cost about 1,000 LUTs); the carry memory ``wcarry`` (C x 16C bytes) in
        LUTRAM up to 64 chains, in UltraRAM above: it is width-bound (C words of 128C bits), 228
        RAMB36 or URAM288 at 128 chains, or about 54 k LUTs as LUTRAM, and the URAM is what the
        board has spare (the buffers take 58 of the 320 per SLR), where three cores' buffers and
        chunk banks already take 1,680 of the 2,016 RAMB36."""
        C = self.chains
        return {"wbank": "distributed" if C <= 32 else "block", "wcarry": "distributed" if C <= 64 else "ultra"}

    def memory_primitives(self) -> dict[str, tuple[str, int]]:
        """name -> (primitive, count) of the engine's memories that map to block RAM or UltraRAM
        (hw.buffers.primitive_count's rule; for hw.buffers.check_fit): ``wbank`` the C chunk banks,
        ``wcarry`` the carry memory; LUTRAM ones are left out."""
        from .buffers import primitive_count

        C = self.chains
        kinds = {"block": "bram", "ultra": "uram"}
        out = {}
        for name, (depth, width, copies) in {"wbank": (2 * C, 128, C), "wcarry": (C, 128 * C, 1)}.items():
            style = self.memory_styles()[name]
            if style in kinds:
                out[name] = (kinds[style], copies * primitive_count(depth, width, kinds[style]))
        return out

    # ---- the field and range rules -----------------------------------------------------------
    def _check(self, m, f, code, w_bytes):
        """Drive ``code`` with the first broken rule of the latched fields ``f`` (funcsim's order);
        ``w_bytes``: the linear weight tile's bytes (values, then the wgroup multipliers)."""
        g = self.geometry
        K = Signal(17)
        ldo = Signal(17)
        m.d.comb += [K.eq(f.k_blocks << 4), ldo.eq(Mux(f.ldo == 0, f.n, f.ldo))]
        linear, qk, pv = f.mode == 0, f.mode == 1, f.mode == 2
        out_i8 = f.out == 2
        rows_m = Signal(48)
        m.d.comb += rows_m.eq(f.m * K)
        a_bytes = Signal(48)
        m.d.comb += a_bytes.eq(Mux(pv, (rows_m << 2) + f.m, Mux(linear & f.afmt, rows_m >> 1, rows_m + 3 * f.m)))
        b_bytes = Signal(48)
        m.d.comb += b_bytes.eq(Mux(qk, f.n * K + 3 * f.n, f.n * K))
        elems = Signal(48)
        m.d.comb += elems.eq((f.m - 1) * ldo + f.n)
        out_bytes = Signal(48)
        m.d.comb += out_bytes.eq(Mux(out_i8, elems, elems << 2))
        entries = Signal(17)
        m.d.comb += entries.eq(Mux(linear, f.n, 1))

        def overlap(a0, a1, b0, b1):
            return (a0 < b0 + b1) & (b0 < a0 + a1)

        out_a = overlap(f.out_addr, out_bytes, f.a_addr, a_bytes)
        out_b = overlap(f.out_addr, out_bytes, f.b_addr, b_bytes)
        rules = [
            ((f.m == 0) | (f.n == 0) | (f.k_blocks == 0), MpeError.ZERO_SHAPE),
            (ldo < f.n, MpeError.PITCH),
            (f.anormal & ~f.afmt, MpeError.ANORMAL),
            (f.afmt & (~linear | (f.wfmt != 2) | f.sparse), MpeError.OVP_OPERANDS),
            (f.bias & (f.out != 1), MpeError.BIAS_OUT),
            ((f.wgroup != 0) & (~linear | f.sparse | f.afmt | (f.wfmt == 0)), MpeError.WGROUP_FIELDS),
            (linear & f.sparse & (f.n[:4] != 0), MpeError.SPARSE_ROWS),
            (linear & ~f.sparse & (f.meta_addr != 0), MpeError.META_ADDR),
            (linear & f.normal & (f.wfmt != 2), MpeError.NORMAL),
            (~linear & (f.sparse | f.bias | (f.wfmt != 0) | f.normal | (f.meta_addr != 0)), MpeError.MODE_FIELDS),
            (out_a | (~linear & out_b), MpeError.OVERLAP),
            # int8 output over an int32 accumulate input with m > 1: funcsim reads every input before
            # it writes; the engine writes column group by column group, so a later row's int8 bytes
            # could land on an earlier row's input not read yet: refused rather than wrong
            (out_i8 & f.accumulate & (f.m > 1),
             MpeError.NOT_BUILT),
            ((f.a_addr + a_bytes > g.space_bytes) | (linear & ~f.sparse & (f.b_addr + w_bytes > g.weight_bytes))
             | (f.sparse & ((f.meta_addr << 4) + (f.n >> 4) * f.k_blocks > g.meta_bytes))
             | (~linear & (f.b_addr + b_bytes > g.space_bytes))
             | (((f.bias_addr + entries) << 4) > g.bias_bytes)
             | (f.out_addr + out_bytes > g.space_bytes)
             | (f.accumulate & (f.out_addr + (elems << 2) > g.space_bytes)), MpeError.OUT_OF_RANGE),
            (((~out_i8 | f.accumulate) & (f.out_addr[:2] != 0)) | (pv & (f.a_addr[:2] != 0)), MpeError.UNALIGNED),
        ]
        with m.If(rules[0][0]):
            m.d.comb += code.eq(rules[0][1])
        for cond, err in rules[1:]:
            with m.Elif(cond):
                m.d.comb += code.eq(err)
        with m.Else():
            m.d.comb += code.eq(0)

    def _ovp_path(self, m, f, start, wr_rd_req, rdata, results, res_layout):
        """afmt=ovp4: the OVP array path (hw/mpe_ovp.py) in place of the chains: its A reads below the
        writer's on act_rd, the weight port (idle otherwise), its records into the result FIFO."""
        g = self.geometry
        m.submodules.ovp = ovp = OvpMatrixPath(
            chains=self.chains, fields_layout=self._inst_layout["fields"].shape, record_layout=res_layout,
            act_words=g.act_words, weight_words=g.weight_words, weight_word_bytes=g.wword_bytes,
            token_pairs=self.ovp_token_pairs)
        grant = ovp.act_req & ~wr_rd_req
        m.d.comb += [ovp.start.eq(start & f.afmt), ovp.fields.eq(f), ovp.act_grant.eq(grant),
                     ovp.act_data.eq(rdata), ovp.weight_rd.data.eq(self.weight_rd.data),
                     ovp.record.ready.eq(results.w_rdy)]
        with m.If(grant):
            m.d.comb += [self.act_rd.addr.eq(ovp.act_addr), self.act_rd.en.eq(1)]
        with m.If(ovp.weight_rd.en):
            m.d.comb += [self.weight_rd.addr.eq(ovp.weight_rd.addr), self.weight_rd.en.eq(1)]
        with m.If(f.afmt):
            m.d.comb += [results.w_data.eq(ovp.record.payload), results.w_en.eq(ovp.record.valid)]
        return ovp

    def elaborate(self, platform):
        m = Module()
        # A ReadPort's en starts at 1: idle ports must say so, or the core would count an idle engine's
        # ports as requests and freeze the SFU on every bank conflict with them.
        m.d.comb += [p.en.eq(0) for p in (self.act_rd, self.weight_rd, self.meta_rd, self.bias_rd)]
        m.submodules.funnels = fm = Module()   # the byte funnels and block selects (unconditional)
        g = self.geometry
        C = self.chains
        W = g.wword_bytes
        wlog = (W - 1).bit_length() if W & (W - 1) == 0 else None
        flayout = self._inst_layout["fields"].shape
        f = Signal(flayout)
        K16 = f.k_blocks                      # 16-byte words per A row (K bytes)
        rb = Signal(17)                       # weight row bytes
        blocks = Signal(range(2 * C + 1))     # K blocks per weight chunk
        m.d.comb += [rb.eq(Mux(f.wfmt == 0, f.k_blocks << 4, f.k_blocks << 3)),
                     blocks.eq(Mux(f.sparse, 1, Mux(f.wfmt == 0, C, 2 * C)))]

        start = Signal()
        chain_start = Signal()                # the chains' units start; afmt=ovp4 runs on the OVP path
        m.d.comb += chain_start.eq(start & ~f.afmt)
        # wgroup (docs/contract.md 2a): G / 16 = 2**gs K blocks per group; the n rows of packed
        # multipliers (gbytes each, group 2j in the low nibble of byte j) follow the n rows of values
        wg_on = Signal()
        gs = Signal(2)
        g_groups = Signal(13)
        gbytes = Signal(12)
        v_bytes = Signal(48)                  # the tile's value bytes (= the multipliers' offset)
        w_bytes = Signal(48)
        mult_base = Signal(32)
        m.d.comb += [wg_on.eq(f.wgroup != 0), gs.eq(Mux(f.wgroup == 1, 2, 3)),
                     g_groups.eq((f.k_blocks + Mux(f.wgroup == 1, 3, 7)) >> gs), gbytes.eq((g_groups + 1) >> 1),
                     v_bytes.eq(Mux(f.wfmt == 0, f.n * (f.k_blocks << 4), (f.n * (f.k_blocks << 4)) >> 1)),
                     w_bytes.eq(v_bytes + Mux(wg_on, f.n * gbytes, 0)), mult_base.eq(f.b_addr + v_bytes)]
        code = Signal(8)
        self._check(m, f, code, w_bytes)
        m.d.sync += [self.done.eq(0), self.fault.eq(0)]

        # ---- chains
        chains = []
        for c in range(C):
            ch = SparseDSPChain(CHAIN_LENGTH, GRID_FORMAT, primitive=self.primitive)
            m.submodules[f"chain{c}"] = ch
            chains.append(ch)

        # ---- modes and geometry of the latched instruction
        linear, qk, pv = f.mode == 0, f.mode == 1, f.mode == 2
        entries = Signal(17)                  # requantization entries read: n (linear) or 1
        m.d.comb += entries.eq(Mux(linear, f.n, 1))
        reuse = Signal()                      # one chunk covers K: load it once per column group
        m.d.comb += reuse.eq(f.k_blocks <= blocks)
        wpb = Mux(pv, 4, 1)                   # data-space words per A block (P' blocks are int32)
        row_words = Signal(18)                # data-space words per A row
        m.d.comb += row_words.eq(Mux(pv, f.k_blocks << 2, f.k_blocks))
        aw = MpeGeometry.addr_bits(g.act_words)
        last_word = g.act_words - 1

        # act_rd arbitration: writer > loader (qk / pv operands) > fetcher; the owner of the read
        # returning this cycle is ``pend_owner`` (1 fetcher, 2 writer, 3 loader)
        pend_owner = Signal(2)
        wr_rd_req, ld_rd_req = Signal(), Signal()
        wr_rd_addr, ld_rd_addr = Signal(aw), Signal(aw)
        rdata = self.act_rd.data
        m.d.sync += pend_owner.eq(0)

        # ---- activation fetcher -> afifo (the beat's A blocks of rows 2tp, 2tp+1)
        m.submodules.afifo = afifo = fifo.SyncFIFO(width=1024, depth=A_FIFO_DEPTH)
        af_busy = Signal()
        af_cb = Signal(17)
        af_t0 = Signal(13)
        af_kb = Signal(12)
        af_ph = Signal(2)               # 0 prime row 0, 1 prime row 1, 2 read row 0, 3 read row 1
        af_w = Signal(2)                # word of the block (P' blocks: 4 words)
        af_p0, af_p1, af_base = Signal(aw + 2), Signal(aw + 2), Signal(aw + 2)
        a_off = f.a_addr[:4]
        af_pair = (af_t0 + 1) < f.m
        carry0, carry1 = Signal(128), Signal(128)
        blk0, blk1 = Signal(512), Signal(512)
        pend_kind, pend_pair, pend_w = Signal(2), Signal(), Signal(2)

        af_req = af_busy & (afifo.level <= A_FIFO_DEPTH - 2) & ~wr_rd_req & ~ld_rd_req
        with m.If(wr_rd_req):
            m.d.comb += [self.act_rd.addr.eq(wr_rd_addr), self.act_rd.en.eq(1)]
            m.d.sync += pend_owner.eq(2)
        with m.Elif(ld_rd_req):
            m.d.comb += [self.act_rd.addr.eq(ld_rd_addr), self.act_rd.en.eq(1)]
            m.d.sync += pend_owner.eq(3)
        with m.Elif(af_req):
            m.d.comb += [self.act_rd.addr.eq(Mux(af_ph[0], af_p1, af_p0)), self.act_rd.en.eq(1)]
            m.d.sync += [pend_owner.eq(1), pend_kind.eq(af_ph), pend_pair.eq(af_pair), pend_w.eq(af_w)]
            first_ph = Mux(a_off != 0, 0, 2)

            def next_beat():
                with m.If(af_kb == f.k_blocks - 1):
                    m.d.sync += af_kb.eq(0)
                    with m.If(af_t0 + 2 >= f.m):
                        m.d.sync += [af_t0.eq(0), af_cb.eq(af_cb + C), af_base.eq(f.a_addr >> 4),
                                     af_p0.eq(f.a_addr >> 4), af_p1.eq((f.a_addr >> 4) + row_words),
                                     af_ph.eq(first_ph)]
                        with m.If(af_cb + C >= f.n):
                            m.d.sync += af_busy.eq(0)
                    with m.Else():
                        nb = af_base + (row_words << 1)
                        m.d.sync += [af_t0.eq(af_t0 + 2), af_base.eq(nb), af_p0.eq(nb), af_p1.eq(nb + row_words),
                                     af_ph.eq(first_ph)]
                with m.Else():
                    m.d.sync += [af_kb.eq(af_kb + 1), af_ph.eq(2)]

            block_end = af_w == wpb - 1
            with m.Switch(af_ph):
                with m.Case(0):
                    m.d.sync += [af_p0.eq(af_p0 + 1), af_ph.eq(Mux(af_pair, 1, 2))]
                with m.Case(1):
                    m.d.sync += [af_p1.eq(af_p1 + 1), af_ph.eq(2)]
                with m.Case(2):
                    m.d.sync += [af_p0.eq(af_p0 + 1), af_w.eq(Mux(block_end, 0, af_w + 1))]
                    with m.If(block_end):
                        with m.If(af_pair):
                            m.d.sync += af_ph.eq(3)
                        with m.Else():
                            next_beat()
                with m.Case(3):
                    m.d.sync += [af_p1.eq(af_p1 + 1), af_w.eq(Mux(block_end, 0, af_w + 1))]
                    with m.If(block_end):
                        next_beat()
        with m.If(pend_owner == 1):
            last_w = pend_w == wpb - 1
            with m.Switch(pend_kind):
                with m.Case(0):
                    m.d.sync += carry0.eq(rdata)
                with m.Case(1):
                    m.d.sync += carry1.eq(rdata)
                with m.Case(2):
                    word = Mux(a_off == 0, rdata, _funnel(fm, carry0, rdata, a_off, 16, "a_funnel0"))
                    m.d.sync += carry0.eq(rdata)
                    full = Signal(512)
                    m.d.comb += full.eq(blk0)
                    m.d.comb += full.word_select(pend_w, 128).eq(word)
                    m.d.sync += blk0.eq(full)
                    with m.If(last_w & ~pend_pair):
                        m.d.comb += [afifo.w_data.eq(Cat(full, Const(0, 512))), afifo.w_en.eq(1)]
                with m.Case(3):
                    word = Mux(a_off == 0, rdata, _funnel(fm, carry1, rdata, a_off, 16, "a_funnel1"))
                    m.d.sync += carry1.eq(rdata)
                    full = Signal(512)
                    m.d.comb += full.eq(blk1)
                    m.d.comb += full.word_select(pend_w, 128).eq(word)
                    m.d.sync += blk1.eq(full)
                    with m.If(last_w):
                        m.d.comb += [afifo.w_data.eq(Cat(blk0, full)), afifo.w_en.eq(1)]
        with m.If(chain_start):
            m.d.sync += [af_busy.eq(1), af_cb.eq(0), af_t0.eq(0), af_kb.eq(0), af_w.eq(0),
                         af_ph.eq(Mux(a_off != 0, 0, 2)), af_base.eq(f.a_addr >> 4), af_p0.eq(f.a_addr >> 4),
                         af_p1.eq((f.a_addr >> 4) + row_words)]

        # ---- weight loader -> the next half of the chunk banks (one chunk per chain), double-buffered
        #   linear: weight port, one word per chain and chunk (a carry word per chain; 2 for chunk 0)
        #   qk: the K block rows from the data space, one 16-byte word per block (+1 prime if unaligned)
        #   pv: the V rows from the data space, PV_READS 16-byte words per V row give C columns' bytes
        #   Storage (module docstring, "Chunk storage"): C banks of 2C x 128 bits; unit u (16 bytes:
        #   an int8 block, two int4 blocks) of chain c's chunk in bank (u + c) mod C at address
        #   half * C + c. A write's data come in bank order; its byte enables are rotated by ``bw_rot``.
        PV_READS = C // 16 + 1 if C > 16 else 2
        cl = (C - 1).bit_length()               # bits of a chain / unit / bank index
        styles = self.memory_styles()
        banks = [Memory(shape=unsigned(128), depth=2 * C, init=[], attrs={"ram_style": styles["wbank"]})
                 for _ in range(C)]
        bank_wr = [bk.write_port(granularity=8) for bk in banks]
        bank_rd = [bk.read_port() for bk in banks]
        for b, bk in enumerate(banks):
            m.submodules[f"wbank{b}"] = bk
        cur_half, cur_half_n = Signal(), Signal()   # the issuer's half; the loader writes the other
        m.d.comb += cur_half_n.eq(cur_half)
        m.d.sync += cur_half.eq(cur_half_n)
        # chain c's row word read last, rotated as _chunk_in_bank_order gives it (the chunk's low
        # part), one memory word per chain: written with the chunk, read when the chain's next word
        # is requested
        carry_mem = Memory(shape=unsigned(8 * W), depth=C, init=[], attrs={"ram_style": styles["wcarry"]})
        m.submodules.wcarry = carry_mem
        carry_wr = carry_mem.write_port()
        carry_rd = carry_mem.read_port(transparent_for=(carry_wr,))   # a row's first chunk: read r=0, then r=1
        bw_we = Signal()                        # a bank write this cycle
        bw_units = Signal(8 * W)                # the C units in bank order (unit b to bank b)
        bw_en = Signal(16 * C)                  # their byte enables
        bw_rot = Signal(max(1, cl))             # the rotation (a chunk write: the chain; pv: the block)
        bw_chain = Signal(max(1, cl))           # the address in the half (pv: per bank, see below)
        bw_pv, bw_pv_j = Signal(), Signal(max(1, cl))
        # the data arrive in bank order (the weight word's byte rotator below places a chunk's bytes, pv
        # rotates its 16-byte V row); only the byte enables (qk's one unit, pv's lane) are rotated here
        rot_en = rotate_left(fm, bw_en, bw_rot[:cl], step=16, name="bw_rot_en") if cl else bw_en
        for b in range(C):
            pv_addr = Const(b, max(1, cl)) - bw_pv_j   # pv: bank b holds chain (b - j) mod C's block j
            row = Mux(bw_pv, pv_addr[:cl], bw_chain[:cl]) if cl else Const(0, 1)
            m.d.comb += [bank_wr[b].addr.eq(Cat(row[:cl], ~cur_half) if cl else ~cur_half),
                         bank_wr[b].data.eq(bw_units[128 * b: 128 * b + 128]),
                         bank_wr[b].en.eq(Mux(bw_we, rot_en[16 * b: 16 * b + 16], 0))]
        # wgroup: a chunk's multipliers per chain (at most NMAX groups: 2C K blocks of 2**gs), read after
        #   its values (1 word, 2 when they straddle a word) and handed over with them
        NMAX = max(1, C // 2)
        MNIB = 2 * W                            # nibbles per weight word
        mnext = [Signal(4 * NMAX, name=f"mnext{c}") for c in range(C)]
        mcur = [Signal(4 * NMAX, name=f"mcur{c}") for c in range(C)]
        mstash = Signal(4 * NMAX)               # the first word's top NMAX nibbles (straddling)
        wl_mcg, wl_maddr = Signal(32), Signal(32)   # multiplier bytes of the column group / of the chain's row
        next_full = Signal()
        wl_busy, wl_wait = Signal(), Signal()
        wl_c = Signal(range(C))
        wl_r = Signal(range(2 * C + 4))         # read of the chain (qk: block; linear: 0 prime, 1; multipliers)
        wl_i = Signal(4)                        # pv: V row of the block
        wl_j = Signal(range(2 * C))             # pv: block of the chunk
        wl_cb = Signal(17)
        wl_t0 = Signal(13)
        wl_qb = Signal(13)
        wl_cgbase, wl_chunk0, wl_addr = Signal(32), Signal(32), Signal(32)
        wl_reads = Signal(range(2 * C + 4))     # reads per chain in this chunk
        chunk_blocks = Signal(range(2 * C + 1))
        m.d.comb += chunk_blocks.eq(Mux(f.k_blocks - wl_qb < blocks, f.k_blocks - wl_qb, blocks))
        b_off = f.b_addr[:4]
        wp_valid, wp_zero, wp_last = Signal(), Signal(), Signal()
        wp_r = Signal(range(2 * C + 4))
        wp_c = Signal(range(C))
        wp_off = Signal(range(W))
        wp_i, wp_j = Signal(4), Signal(max(1, cl))   # pv: the V row and the block of the read
        m.d.comb += carry_rd.addr.eq(wl_c)      # with the chain's weight read: returns with its data
        stash = Signal(8 * W)
        # ONE byte rotator places a chunk cut out of two weight words in bank order, for both paths
        # that need it (they never run together: f.sparse is latched): linear, the chain's carry word
        # and the word read now at the row's offset; sparse, the group's first word (``stash``) and its
        # second at the kept values' offset. It is log2(16C) stages of 128C muxes, the largest
        # shared logic of the engine, so a second copy would cost as much again.
        wf_lo = Signal(8 * W)
        wf_off = Signal(range(W))
        wf_chain = Signal(max(1, cl))
        w_rot, w_chunk = _chunk_in_bank_order(fm, self.weight_rd.data, wf_lo, wf_chain, wf_off, W)
        kcarry = Signal(128)
        wwa = MpeGeometry.addr_bits(g.weight_words)
        rowb = Signal(18)                       # byte pitch between the rows of the chains
        m.d.comb += rowb.eq(Mux(qk, f.k_blocks << 4, Mux(pv, f.n, rb)))
        wl_vreads = Mux(wl_qb == 0, 2, 1)     # linear: the value reads of a chain's chunk
        m_nib = Signal(33)                      # the chunk's first multiplier nibble of the chain's row
        m_off = Signal(range(MNIB))
        m_str = Signal()                        # its NMAX nibbles straddle two words
        m.d.comb += [m_nib.eq((wl_maddr << 1) + (wl_qb >> gs)), m_off.eq(m_nib % MNIB),
                     m_str.eq(m_off > MNIB - NMAX if NMAX > 1 else 0)]   # one nibble never straddles
        m.d.comb += wl_reads.eq(Mux(qk, chunk_blocks + (b_off != 0), wl_vreads + Mux(wg_on, 1 + m_str, 0)))
        wp_moff = Signal(range(MNIB))
        wp_mstr = Signal()
        m.d.sync += wp_valid.eq(0)
        loading = wl_busy & ~wl_wait
        with m.If(loading & ~pv & ~f.sparse):
            row_ok = (wl_cb + wl_c) < f.n
            m.d.sync += [wp_c.eq(wl_c), wp_r.eq(wl_r), wp_zero.eq(~row_ok), wp_off.eq(wl_addr % W),
                         wp_last.eq((wl_c == C - 1) & (~row_ok | (wl_r == wl_reads - 1))),
                         wp_moff.eq(m_off), wp_mstr.eq(m_str)]

            def next_chain():
                m.d.sync += wl_r.eq(0)
                with m.If(wl_c == C - 1):
                    m.d.sync += [wl_c.eq(0), wl_wait.eq(1)]
                with m.Else():
                    m.d.sync += [wl_c.eq(wl_c + 1), wl_addr.eq(wl_addr + rowb), wl_maddr.eq(wl_maddr + gbytes)]

            with m.If(~row_ok):
                m.d.sync += wp_valid.eq(1)
                next_chain()
            with m.Elif(qk):
                # the prime read (unaligned b_addr) is word 0, block j then word j + 1
                m.d.comb += [ld_rd_req.eq(1), ld_rd_addr.eq((wl_addr >> 4) + wl_r)]
                with m.If(~wr_rd_req):
                    m.d.sync += [wp_valid.eq(1), wl_r.eq(wl_r + 1)]
                    with m.If(wl_r == wl_reads - 1):
                        next_chain()
            with m.Else():
                w_word = Signal(33)
                m.d.comb += w_word.eq(Mux(wl_r >= wl_vreads, (m_nib // MNIB) + (wl_r - wl_vreads),
                                          (wl_addr // W) + Mux(wl_qb == 0, wl_r, 1)))
                m.d.comb += [self.weight_rd.en.eq(1),
                             self.weight_rd.addr.eq(Mux(w_word < g.weight_words, w_word, g.weight_words - 1)[:wwa])]
                m.d.sync += [wp_valid.eq(1), wl_r.eq(wl_r + 1)]
                with m.If(wl_r == wl_reads - 1):
                    next_chain()
        with m.If(loading & pv & ~wr_rd_req):
            word = Signal(32)
            m.d.comb += word.eq((wl_addr >> 4) + wl_r)
            m.d.comb += [ld_rd_req.eq(1), ld_rd_addr.eq(Mux(word <= last_word, word, last_word))]
            row_end = wl_r == PV_READS - 1
            m.d.sync += [wp_valid.eq(1), wp_zero.eq(0), wp_r.eq(wl_r), wp_i.eq(wl_i), wp_j.eq(wl_j),
                         wp_off.eq(wl_addr[:4]),
                         wp_last.eq(row_end & (wl_i == 15) & (wl_j == chunk_blocks - 1)),
                         wl_r.eq(Mux(row_end, 0, wl_r + 1))]
            with m.If(row_end):
                m.d.sync += [wl_addr.eq(wl_addr + f.n), wl_i.eq(wl_i + 1)]
                with m.If(wl_i == 15):
                    m.d.sync += wl_j.eq(wl_j + 1)
                    with m.If(wl_j == chunk_blocks - 1):
                        m.d.sync += [wl_j.eq(0), wl_wait.eq(1)]
        # sparse (N:16, one group per chunk): a column group of C <= 16 chains lies in one 16-row band;
        #   of C > 16 chains it spans SL = C / 16 bands, one per slot (chains 16s .. 16s + 15), each with
        #   its own N per K block. At a column group's first chunk (C < 16: a band's), scan each live
        #   slot's row of the block-N table for R = sum N and S = sum of the sparse N (its rows' kept
        #   values and stored indices); per group read each live slot's N, then per chain two weight
        #   words (its N kept values) and two meta words (its N indices, N < 16). A slot past the
        #   last band (n not a multiple of C) is neither scanned nor read: its columns are not written.
        SL = max(1, C // 16)
        sp_band = Signal(13)
        sp_valid = Signal()
        sp_s = Signal(range(max(2, SL)))                # the slot being scanned / whose N is read
        sp_R = [Signal(17, name=f"sp_R{i}") for i in range(SL)]
        sp_S = [Signal(17, name=f"sp_S{i}") for i in range(SL)]
        sp_vband = [Signal(32, name=f"sp_vband{i}") for i in range(SL)]  # kept values / indices before the band
        sp_iband = [Signal(32, name=f"sp_iband{i}") for i in range(SL)]
        sp_pv = [Signal(17, name=f"sp_pv{i}") for i in range(SL)]  # kept values / indices before the group (row)
        sp_pi = [Signal(17, name=f"sp_pi{i}") for i in range(SL)]
        sp_st = Signal(2)                               # 0 scan, 1 read N, 2 chains
        sp_w = Signal(13)
        sp_n = [Signal(5, name=f"sp_n{i}") for i in range(SL)]
        sp_code_next = [Signal(2, name=f"sp_code_next{i}") for i in range(SL)]
        sp_code_cur = [Signal(2, name=f"sp_code{i}") for i in range(SL)]
        sp_n_next = [Signal(5, name=f"sp_n_next{i}") for i in range(SL)]
        sp_n_cur = [Signal(5, name=f"sp_n_cur{i}") for i in range(SL)]
        widx_next = [Signal(64, name=f"widx_next{c}") for c in range(C)]
        widx_cur = [Signal(64, name=f"widx{c}") for c in range(C)]
        meta_base = Signal(22)
        m.d.comb += meta_base.eq(f.meta_addr << 4)
        table_bytes = Signal(28)
        m.d.comb += table_bytes.eq((f.n >> 4) * f.k_blocks)
        idx_base = Signal(30)
        m.d.comb += idx_base.eq(meta_base + (((table_bytes + 15) >> 4) << 4))
        band0 = wl_cb >> 4                              # the column group's first band
        band = Signal(13)                               # slot sp_s's band
        m.d.comb += band.eq(band0 + sp_s)
        row_addr = Signal(30)                           # its table row
        m.d.comb += row_addr.eq(meta_base + band * f.k_blocks)
        live_last = Signal(range(max(2, SL)))           # the last slot with rows below n
        bands_left = Signal(13)
        m.d.comb += [bands_left.eq((f.n >> 4) - band0),
                     live_last.eq(Mux(bands_left >= SL, SL - 1, bands_left - 1))]
        mwa = MpeGeometry.addr_bits(g.meta_words)
        sp_pend = Signal(2)                             # 1 scan word, 2 N word, 3 chain read
        sp_pend_half, sp_pend_c = Signal(), Signal(range(C))
        sp_pend_voff, sp_pend_ioff = Signal(range(W)), Signal(4)
        sp_pend_w = Signal(13)
        sp_pend_s = Signal(range(max(2, SL)))
        sp_pend_row = Signal(30)
        sp_half = Signal()
        m.d.sync += sp_pend.eq(0)
        rr = (wl_cb[:4] + wl_c)[:4]
        lslot = wl_c >> 4 if C > 16 else Const(0, 1)    # the loading chain's slot
        vptr = Signal(32)
        m.d.comb += vptr.eq(Array(sp_vband)[lslot] + rr * Array(sp_R)[lslot] + Array(sp_pv)[lslot])
        vbyte = Signal(32)
        m.d.comb += vbyte.eq(f.b_addr + Mux(f.wfmt == 0, vptr, vptr >> 1))
        iptr = Signal(32)
        m.d.comb += iptr.eq(Array(sp_iband)[lslot] + rr * Array(sp_S)[lslot] + Array(sp_pi)[lslot])
        ibyte = Signal(32)
        m.d.comb += ibyte.eq(idx_base + (iptr >> 1))
        with m.If(loading & f.sparse):
            with m.If((wl_qb == 0) & (wl_c == 0) & (sp_st == 0) & ~sp_half & (sp_w == 0)):
                m.d.sync += [r.eq(0) for r in sp_pv + sp_pi]
            with m.Switch(sp_st):
                with m.Case(0):
                    with m.If(sp_valid & (band0 == sp_band)):
                        m.d.sync += sp_st.eq(1)
                    with m.Elif(sp_w == 0):
                        # a new band: the previous band's totals (the previous slot's, complete once its
                        # last scan word is in) move into the bases
                        with m.If(sp_pend == 0):
                            for i in range(SL):
                                with m.If(sp_s == i):
                                    if i == 0:
                                        pv_base = Mux(sp_valid, sp_vband[SL - 1] + (sp_R[SL - 1] << 4), 0)
                                        pi_base = Mux(sp_valid, sp_iband[SL - 1] + (sp_S[SL - 1] << 4), 0)
                                    else:
                                        pv_base = sp_vband[i - 1] + (sp_R[i - 1] << 4)
                                        pi_base = sp_iband[i - 1] + (sp_S[i - 1] << 4)
                                    m.d.sync += [sp_vband[i].eq(pv_base), sp_iband[i].eq(pi_base), sp_R[i].eq(0),
                                                 sp_S[i].eq(0), sp_pv[i].eq(0), sp_pi[i].eq(0)]
                            m.d.sync += sp_w.eq(1)
                    with m.Else():
                        word = (row_addr >> 4) + sp_w - 1
                        m.d.comb += [self.meta_rd.en.eq(1), self.meta_rd.addr.eq(word[:mwa])]
                        m.d.sync += [sp_pend.eq(1), sp_pend_w.eq(word), sp_pend_s.eq(sp_s), sp_pend_row.eq(row_addr)]
                        with m.If(((word + 1) << 4) >= row_addr + f.k_blocks):
                            m.d.sync += sp_w.eq(0)
                            with m.If(sp_s == live_last):
                                m.d.sync += [sp_st.eq(1), sp_band.eq(band0), sp_valid.eq(1), sp_s.eq(0)]
                            with m.Else():
                                m.d.sync += sp_s.eq(sp_s + 1)
                        with m.Else():
                            m.d.sync += sp_w.eq(sp_w + 1)
                with m.Case(1):
                    with m.If(sp_pend != 1):
                        nb = row_addr + wl_qb
                        m.d.comb += [self.meta_rd.en.eq(1), self.meta_rd.addr.eq((nb >> 4)[:mwa])]
                        m.d.sync += [sp_pend.eq(2), sp_pend_ioff.eq(nb[:4]), sp_pend_s.eq(sp_s)]
                        with m.If(sp_s == live_last):
                            m.d.sync += [sp_st.eq(2), sp_s.eq(0)]
                        with m.Else():
                            m.d.sync += sp_s.eq(sp_s + 1)
                with m.Case(2):
                    with m.If(sp_pend != 2):
                        wword = (vbyte // W) + sp_half
                        iword = (ibyte >> 4) + sp_half
                        m.d.comb += [self.weight_rd.en.eq(1),
                                     self.weight_rd.addr.eq(Mux(wword < g.weight_words, wword, g.weight_words - 1)[:wwa]),
                                     self.meta_rd.en.eq(1),
                                     self.meta_rd.addr.eq(Mux(iword < g.meta_words, iword, g.meta_words - 1)[:mwa])]
                        m.d.sync += [sp_pend.eq(3), sp_pend_half.eq(sp_half), sp_pend_c.eq(wl_c),
                                     sp_pend_voff.eq(vbyte % W), sp_pend_ioff.eq(ibyte[:4]), sp_half.eq(~sp_half)]
                        with m.If(sp_half):
                            with m.If(wl_c == C - 1):
                                m.d.sync += [wl_c.eq(0), wl_wait.eq(1), sp_st.eq(0)]
                                for i in range(SL):
                                    m.d.sync += [sp_pv[i].eq(sp_pv[i] + sp_n[i]),
                                                 sp_pi[i].eq(sp_pi[i] + Mux(sp_n[i] == 16, 0, sp_n[i]))]
                            with m.Else():
                                m.d.sync += wl_c.eq(wl_c + 1)
        m.d.comb += [wf_lo.eq(Mux(f.sparse, stash, carry_rd.data)), wf_off.eq(Mux(f.sparse, sp_pend_voff, wp_off)),
                     wf_chain.eq(Mux(f.sparse, sp_pend_c, wp_c))]
        mdata = self.meta_rd.data
        with m.If(sp_pend == 1):   # scan: add the N of the band's row bytes in this word
            adds_r, adds_s = [], []
            for e in range(16):
                addr_e = (sp_pend_w << 4) + e
                inside = (addr_e >= sp_pend_row) & (addr_e < sp_pend_row + f.k_blocks)
                nv = mdata[8 * e: 8 * e + 8]
                adds_r.append(Mux(inside, nv, 0))
                adds_s.append(Mux(inside & (nv != 16), nv, 0))
            for i in range(SL):
                with m.If(sp_pend_s == i):
                    m.d.sync += [sp_R[i].eq(sp_R[i] + sum(adds_r)), sp_S[i].eq(sp_S[i] + sum(adds_s))]
        with m.If(sp_pend == 2):
            nv = mdata.word_select(sp_pend_ioff, 8)
            for i in range(SL):
                with m.If(sp_pend_s == i):
                    m.d.sync += [sp_n[i].eq(nv), sp_n_next[i].eq(nv),
                                 sp_code_next[i].eq(Mux(nv == 2, 0, Mux(nv == 4, 1, Mux(nv == 8, 2, 3))))]
        with m.If(sp_pend == 3):
            with m.If(~sp_pend_half):
                m.d.sync += [stash.eq(w_rot), kcarry.eq(mdata)]
            with m.Else():
                vals = w_chunk
                idx = _funnel(fm, kcarry, mdata, sp_pend_ioff, 16, "sp_idx")[:64]
                m.d.comb += [bw_we.eq(1), bw_units.eq(vals), bw_en.eq(Const(-1, 16 * C)),
                             bw_rot.eq(sp_pend_c), bw_chain.eq(sp_pend_c)]
                for c in range(C):
                    with m.If(sp_pend_c == c):
                        m.d.sync += widx_next[c].eq(idx)
                with m.If(sp_pend_c == C - 1):
                    m.d.sync += next_full.eq(1)
        with m.If(chain_start):
            m.d.sync += [sp_valid.eq(0), sp_st.eq(0), sp_w.eq(0), sp_half.eq(0), sp_s.eq(0)]
            m.d.sync += [r.eq(0) for r in sp_pv + sp_pi + sp_vband + sp_iband + sp_R + sp_S]

        # the chunk is loaded and handed over: the next one (the next column group when reused)
        with m.If(wl_busy & wl_wait & ~next_full & ~wp_valid & (sp_pend == 0)):
            m.d.sync += wl_wait.eq(0)
            pv_start = Signal(32)
            with m.If((wl_qb + blocks >= f.k_blocks)):
                m.d.sync += wl_qb.eq(0)
                with m.If((wl_t0 + 2 >= f.m) | reuse):
                    nb = wl_cgbase + Mux(pv, C, rowb * C)
                    nm = wl_mcg + gbytes * C
                    m.d.sync += [wl_t0.eq(0), wl_cb.eq(wl_cb + C), wl_cgbase.eq(nb), wl_chunk0.eq(nb),
                                 wl_addr.eq(nb), wl_mcg.eq(nm), wl_maddr.eq(nm)]
                    with m.If(wl_cb + C >= f.n):
                        m.d.sync += wl_busy.eq(0)
                with m.Else():
                    m.d.sync += [wl_t0.eq(wl_t0 + 2), wl_chunk0.eq(wl_cgbase), wl_addr.eq(wl_cgbase),
                                 wl_maddr.eq(wl_mcg)]
            with m.Else():
                step = Mux(qk, blocks << 4, Mux(pv, (f.n * blocks) << 4, W))
                m.d.sync += [wl_qb.eq(wl_qb + blocks), wl_chunk0.eq(wl_chunk0 + step), wl_addr.eq(wl_chunk0 + step),
                             wl_maddr.eq(wl_mcg)]
            del pv_start
        with m.If(wp_valid & ~pv & ~f.sparse):
            wdata = self.weight_rd.data
            lin_first = ~qk & (wl_qb == 0) & (wp_r == 0)
            m.d.comb += [bw_rot.eq(wp_c), bw_chain.eq(wp_c)]
            with m.If(wp_zero):
                m.d.comb += [bw_we.eq(1), bw_units.eq(0), bw_en.eq(Const(-1, 16 * C))]
            with m.Elif(qk):
                with m.If((b_off != 0) & (wp_r == 0)):
                    m.d.sync += kcarry.eq(rdata)
                with m.Else():
                    blk = Mux(b_off == 0, rdata, _funnel(fm, kcarry, rdata, b_off, 16, "k_funnel"))
                    m.d.sync += kcarry.eq(rdata)
                    # block wp_r - prime of the chunk: its unit alone (bank (unit + chain) mod C)
                    unit = (wp_r - (b_off != 0))[:max(1, cl)]
                    m.d.comb += [bw_we.eq(1), bw_units.eq(Cat(*[blk] * C)),
                                 bw_en.eq(Cat(*[Mux(unit[:cl] == u, 0xFFFF, 0) for u in range(C)])
                                          if cl else 0xFFFF)]
            with m.Elif(~qk & wg_on & (wp_r >= wl_vreads)):
                # the chunk's multipliers: NMAX nibbles from nibble wp_moff (of this word, or of the
                # previous word's top NMAX nibbles and this one's low NMAX when they straddle)
                with m.If(wp_mstr & (wp_r == wl_vreads)):
                    m.d.sync += mstash.eq(wdata[8 * W - 4 * NMAX:])
                with m.Else():
                    one = shift_right(fm, wdata, wp_moff, step=4, width=4 * NMAX, name="m_funnel")
                    if NMAX > 1:
                        two = shift_right(fm, Cat(mstash, wdata[:4 * NMAX]), (wp_moff - (MNIB - NMAX))[:len(wp_moff)],
                                          step=4, width=4 * NMAX, name="m_funnel2")
                        sel = Mux(wp_mstr, two, one)
                    else:
                        sel = one
                    for c in range(C):
                        with m.If(wp_c == c):
                            m.d.sync += mnext[c].eq(sel)
            with m.Elif(lin_first):
                m.d.comb += [carry_wr.addr.eq(wp_c), carry_wr.data.eq(w_rot), carry_wr.en.eq(1)]
            with m.Else():
                # the chain's carry word (read with its weight word) and the word, in bank order
                chunk = w_chunk
                m.d.comb += [bw_we.eq(1), bw_units.eq(chunk), bw_en.eq(Const(-1, 16 * C)),
                             carry_wr.addr.eq(wp_c), carry_wr.data.eq(w_rot), carry_wr.en.eq(1)]
            with m.If(wp_last):
                m.d.sync += next_full.eq(1)
        with m.If(wp_valid & pv):
            m.d.sync += kcarry.eq(rdata)
            with m.If(wp_r != 0):
                # read r >= 1 of a V row (row wp_i of block wp_j): its bytes 16(r - 1) .. 16r - 1 are
                # byte wp_i of block wp_j of chains 16(r - 1) + e: one byte lane in each of their banks
                vrow = _funnel(fm, kcarry, rdata, wp_off, 16, "v_funnel")
                # in bank order: bank b holds chain (b - j) mod C's block j, whose byte is V-row byte
                # ((b - j) mod C) mod 16 = the row's first vp = min(C, 16) bytes rotated by j, at b mod vp
                vp = min(C, 16)
                vl = (vp - 1).bit_length()
                vbank = rotate_left(fm, vrow[:8 * vp], wp_j[:vl], step=8, name="v_bank") if vl else vrow[:8]
                lane = Signal(16 * C)
                for c in range(C):
                    on = (wp_r == c // 16 + 1) if C > 16 else Const(1, 1)
                    m.d.comb += lane[16 * c: 16 * c + 16].eq(Mux(on, Const(1, 16) << wp_i, 0))
                m.d.comb += [bw_we.eq(1), bw_pv.eq(1), bw_pv_j.eq(wp_j), bw_rot.eq(wp_j), bw_en.eq(lane),
                             bw_units.eq(Cat(*[Cat(*[vbank[8 * (b % vp): 8 * (b % vp) + 8]] * 16)
                                              for b in range(C)]))]
            with m.If(wp_last):
                m.d.sync += next_full.eq(1)
        with m.If(chain_start):
            m.d.sync += [wl_busy.eq(1), wl_wait.eq(0), wl_r.eq(0), wl_i.eq(0), wl_j.eq(0), wl_c.eq(0), wl_cb.eq(0),
                         wl_t0.eq(0), wl_qb.eq(0), wl_cgbase.eq(f.b_addr), wl_chunk0.eq(f.b_addr),
                         wl_addr.eq(f.b_addr), next_full.eq(0), wl_mcg.eq(mult_base), wl_maddr.eq(mult_base)]

        # ---- issuer: one beat to every chain (pv: 5 beats per block, one per digit of P)
        is_busy, is_cur = Signal(), Signal()
        is_j = Signal(range(2 * C))           # the beat's block of the chunk
        is_j_n = Signal.like(is_j)            # its next value: the banks are read a cycle ahead
        m.d.comb += is_j_n.eq(is_j)
        m.d.sync += is_j.eq(is_j_n)
        is_kb = Signal(12)
        is_cb = Signal(17)
        is_t0 = Signal(13)
        is_d = Signal(3)
        tag_layout = data.StructLayout({"first": 1, "last": 1, "digit": 3, "cb": 17, "t0": 13, "mult": 4 * C})
        m.submodules.tags = tags = fifo.SyncFIFO(width=tag_layout.size, depth=TAG_FIFO_DEPTH)
        with m.If(~is_cur & next_full):
            m.d.sync += is_cur.eq(1), next_full.eq(0)
            m.d.comb += cur_half_n.eq(~cur_half)   # the loaded half becomes the issuer's
            m.d.sync += [cur.eq(nxt) for cur, nxt in zip(sp_code_cur + sp_n_cur, sp_code_next + sp_n_next)]
            for c in range(C):
                m.d.sync += [widx_cur[c].eq(widx_next[c]), mcur[c].eq(mnext[c])]
        can_issue = is_busy & is_cur & afifo.r_rdy & tags.w_rdy
        fire = can_issue & chains[0].i.ready
        last_digit = ~pv | (is_d == PV_DIGITS - 1)
        tag = Signal(tag_layout)
        m.d.comb += [tag.first.eq((is_kb == 0) & (is_d == 0)), tag.last.eq((is_kb == f.k_blocks - 1) & last_digit),
                     tag.digit.eq(is_d), tag.cb.eq(is_cb), tag.t0.eq(is_t0), tags.w_data.eq(tag),
                     # wgroup: each chain's multiplier of block is_j's group (the chunk is group aligned,
                     # or lies in one group); 1 otherwise
                     tag.mult.eq(Cat(*[Mux(wg_on, mcur[c] if NMAX == 1 else mcur[c].word_select(
                         Mux(f.wgroup == 1, is_j >> 2, is_j >> 3)[:(NMAX - 1).bit_length()], 4), 1)
                         for c in range(C)])),
                     tags.w_en.eq(fire), afifo.r_en.eq(fire & last_digit)]
        # the beat's activations: INT8 codes, or digit is_d of the P' values (7-bit digits, the top signed)
        xs = []
        for lane in range(2):
            x = Signal(data.ArrayLayout(signed(8), 16), name=f"x{lane}")
            for e in range(16):
                code8 = afifo.r_data[512 * lane + 8 * e: 512 * lane + 8 * e + 8]
                p = afifo.r_data[512 * lane + 32 * e: 512 * lane + 32 * e + 32]
                digit = Signal(signed(8), name=f"digit{lane}_{e}")
                with m.Switch(is_d):
                    for d in range(PV_DIGITS - 1):
                        with m.Case(d):
                            m.d.comb += digit.eq(p[7 * d: 7 * d + 7])
                    with m.Default():
                        m.d.comb += digit.eq(p[7 * (PV_DIGITS - 1):].as_signed())
                m.d.comb += x[e].eq(Mux(pv, digit, code8.as_signed()))
            xs.append(x)
        # the chunk banks, read a cycle ahead: bank b at (half, (b - u) mod C) for the next beat's unit
        # u, so the registered outputs rotated by the beat's u give chain c its unit u (bank (u + c) mod C)
        four = f.wfmt != 0
        u_n = Mux(four, is_j_n >> 1, is_j_n)
        u_now = Mux(four, is_j >> 1, is_j)
        for b in range(C):
            row = (Const(b, max(1, cl)) - u_n)[:cl] if cl else Const(0, 1)
            m.d.comb += bank_rd[b].addr.eq(Cat(row[:cl], cur_half_n) if cl else cur_half_n)
        bank_out = Cat(*[rd.data for rd in bank_rd])
        chain_units = (rotate_left(fm, bank_out, (Const(0, cl) - u_now)[:cl], step=128, name="chain_units")
                       if cl else bank_out)
        for c, ch in enumerate(chains):
            blk8 = chain_units[128 * c: 128 * c + 128]
            blk4 = Mux(is_j[0], blk8[64:], blk8[:64])
            values = Signal(data.ArrayLayout(signed(GRID_BITS), 16), name=f"wvals{c}")
            for p in range(8):
                dec = OvpPairDecoder("runtime")
                m.submodules[f"ovp{c}_{p}"] = dec
                m.d.comb += [dec.pair.eq(blk4[8 * p: 8 * p + 8]), dec.flint.eq(f.normal)]
                for d, operand in ((2 * p, dec.even), (2 * p + 1, dec.odd)):
                    with m.Switch(f.wfmt):
                        with m.Case(0):
                            m.d.comb += values[d].eq(blk8[8 * d: 8 * d + 8].as_signed())
                        with m.Case(1):
                            m.d.comb += values[d].eq(blk4[4 * d: 4 * d + 4].as_signed())
                        with m.Default():
                            m.d.comb += values[d].eq(operand.integer << operand.exponent)
            masked = Signal(data.ArrayLayout(signed(GRID_BITS), 16), name=f"wmasked{c}")
            slot = c // 16 if C > 16 else 0   # the chain's band in its column group (sparse)
            for d in range(16):   # sparse: DSPs beyond the group's N kept weights get 0
                m.d.comb += masked[d].eq(Mux(~f.sparse | (d < sp_n_cur[slot]), values[d], 0))
            m.d.comb += [ch.i.valid.eq(can_issue), ch.i.payload.x0.eq(xs[0]), ch.i.payload.x1.eq(xs[1]),
                         ch.i.payload.weights.eq(masked), ch.i.payload.index.eq(widx_cur[c]),
                         ch.i.payload.n_code.eq(Mux(f.sparse, sp_code_cur[slot], n_code(16)))]
        with m.If(fire):
            with m.If(~last_digit):
                m.d.sync += is_d.eq(is_d + 1)
            with m.Elif(is_kb == f.k_blocks - 1):
                m.d.sync += [is_kb.eq(0), is_d.eq(0)]
                m.d.comb += is_j_n.eq(0)
                with m.If(is_t0 + 2 >= f.m):
                    m.d.sync += [is_t0.eq(0), is_cb.eq(is_cb + C), is_cur.eq(0)]
                    with m.If(is_cb + C >= f.n):
                        m.d.sync += is_busy.eq(0)
                with m.Else():
                    m.d.sync += [is_t0.eq(is_t0 + 2), is_cur.eq(reuse)]
            with m.Else():
                m.d.sync += [is_kb.eq(is_kb + 1), is_d.eq(0)]
                with m.If(is_j == blocks - 1):
                    m.d.sync += is_cur.eq(0)
                    m.d.comb += is_j_n.eq(0)
                with m.Else():
                    m.d.comb += is_j_n.eq(is_j + 1)
        with m.If(chain_start):
            m.d.sync += [is_busy.eq(1), is_cur.eq(0), is_kb.eq(0), is_cb.eq(0), is_t0.eq(0), is_d.eq(0)]
            m.d.comb += is_j_n.eq(0)

        # ---- collector: per-chain accumulators; a (cg, tp) result into the result FIFO
        res_layout = data.StructLayout({"y": data.ArrayLayout(unsigned(32), 2 * C), "cb": 17, "t0": 13})
        m.submodules.results = results = fifo.SyncFIFO(width=res_layout.size, depth=RESULT_FIFO_DEPTH)
        otag = Signal(tag_layout)
        m.d.comb += otag.eq(tags.r_data)
        take = Signal()
        ready = results.w_rdy & self.enable
        m.d.comb += take.eq(chains[0].o.valid & ready)
        res = Signal(res_layout)
        # wgroup: each beat's block sum times its group's multiplier (shift-and-add, hw/group_scale.py,
        # combinational): sum_b m_g(b) y_b = sum_g m_g P_g exactly, mod 2**32 as the accumulators
        m.submodules.group_scale = gsc = GroupScaler(2 * C, GROUP_SUM_BITS, "mult4", registered=False)
        gw = GROUP_SUM_BITS + 4
        for c, ch in enumerate(chains):
            # freeze: a primitive build's DSP48E2 do not see the core's EnableInserter
            m.d.comb += [ch.o.ready.eq(ready), ch.freeze.eq(~self.enable)]
            for lane, y in ((0, ch.o.payload.y0[0]), (1, ch.o.payload.y1[0])):
                acc = Signal(32, name=f"acc{c}_{lane}")
                s = Signal(32, name=f"sum{c}_{lane}")
                yv = Signal(signed(32), name=f"ys{c}_{lane}")
                i = lane * C + c
                m.d.comb += [gsc.psum[i * GROUP_SUM_BITS:(i + 1) * GROUP_SUM_BITS].eq(y[:GROUP_SUM_BITS]),
                             gsc.mult[4 * i:4 * i + 4].eq(otag.mult[4 * c:4 * c + 4]),
                             yv.eq(Mux(wg_on, gsc.out[i * gw:(i + 1) * gw].as_signed(), y))]
                # pv: digit d weighs 2**(7d); every sum is mod 2**32, so the total is wrap32(P V)
                m.d.comb += [s.eq(Mux(otag.first, 0, acc) + (yv.as_unsigned() << (otag.digit * 7))[:32]),
                             res.y[lane * C + c].eq(s)]
                with m.If(take):
                    m.d.sync += acc.eq(s)
        m.d.comb += [res.cb.eq(otag.cb), res.t0.eq(otag.t0), tags.r_en.eq(take),
                     results.w_data.eq(res), results.w_en.eq(take & otag.last)]

        # ---- writer: per result record, the requantization parameters, then per (token, column)
        #   [accumulate read] -> add -> int32 write, or -> requantizer -> fixed32 / int8 write
        requant_on = f.out != 0
        wr_busy, wr_ph, wr_params = Signal(), Signal(), Signal()
        wr_l = Signal()
        wr_c = Signal(range(C))
        wr = Signal(res_layout)
        col_cb = Signal(18)                 # column group whose parameters are held (bit 17: none)
        a_tail = Signal(32)                 # the A block's exponents (then mantissas)
        k_tail = Signal(32)                 # qk: the K block's exponents (then mantissas)
        m.d.comb += [a_tail.eq(f.a_addr + Mux(pv, (f.m * f.k_blocks) << 6, (f.m * f.k_blocks) << 4)),
                     k_tail.eq(f.b_addr + ((f.n * f.k_blocks) << 4))]
        tok_e = [Signal(signed(8), name=f"tok_e{i}") for i in range(2)]
        tok_m = [Signal(16, name=f"tok_m{i}") for i in range(2)]
        col_e = [Signal(signed(8), name=f"col_e{i}") for i in range(C)]
        col_m = [Signal(16, name=f"col_m{i}") for i in range(C)]
        ent_layout = data.StructLayout({"bias": signed(32), "mult": unsigned(32), "shift": signed(32)})
        ents = [Signal(ent_layout, name=f"entry{i}") for i in range(C)]
        # parameter sequence: phase 0 the two tokens (exponent, mantissa low / high byte words),
        # phase 1 the columns (qk: K exponent and mantissa; linear: its entry), phase 2 (qk, pv)
        # the one entry; one read per cycle, captured in the next
        p_phase = Signal(2)
        p_idx = Signal(range(max(C, 2)))
        p_sub = Signal(2)
        pr_valid, pr_bias = Signal(), Signal()
        pr_kind = Signal(2)                 # 0 exponent, 1 mantissa low byte, 2 mantissa high byte
        pr_col = Signal()
        pr_idx = Signal(range(C))
        pr_lane = Signal(4)
        m.d.sync += [pr_valid.eq(0), pr_bias.eq(0)]
        m.d.comb += results.r_en.eq(~wr_busy)
        with m.If(~wr_busy & results.r_rdy):
            m.d.sync += [wr.eq(results.r_data), wr_busy.eq(1), wr_l.eq(0), wr_c.eq(0), wr_ph.eq(0),
                         wr_params.eq(requant_on), p_phase.eq(0), p_idx.eq(0), p_sub.eq(0)]
        with m.If(wr_busy & wr_params):
            tok = wr.t0 + p_idx[0]
            colp = wr.cb + p_idx
            ebyte = Mux(p_phase == 0, a_tail + tok, k_tail + colp)
            mbase = Mux(p_phase == 0, a_tail + f.m + (tok << 1), k_tail + f.n + (colp << 1))
            paddr = Signal(32)
            m.d.comb += paddr.eq(Mux(p_sub == 0, ebyte, mbase + (p_sub == 2)))

            def next_item(count):
                m.d.sync += p_sub.eq(0)
                with m.If(p_idx == count - 1):
                    m.d.sync += [p_idx.eq(0), p_phase.eq(p_phase + 1)]
                with m.Else():
                    m.d.sync += p_idx.eq(p_idx + 1)

            with m.Switch(p_phase):
                with m.Case(0):
                    with m.If((tok >= f.m) | f.afmt):   # OVP4 blocks: exponent 0, mantissa 1
                        m.d.sync += [p_phase.eq(1), p_idx.eq(0), p_sub.eq(0)]
                    with m.Else():
                        m.d.comb += [wr_rd_req.eq(1), wr_rd_addr.eq(paddr >> 4)]
                        m.d.sync += [pr_valid.eq(1), pr_kind.eq(p_sub), pr_col.eq(0), pr_idx.eq(p_idx),
                                     pr_lane.eq(paddr[:4])]
                        with m.If((p_sub == 2) | pv):
                            next_item(2)
                        with m.Else():
                            m.d.sync += p_sub.eq(p_sub + 1)
                with m.Case(1):
                    with m.If(~linear & ~qk | (col_cb == wr.cb) | (colp >= f.n)):
                        m.d.sync += [p_phase.eq(2), p_idx.eq(0), p_sub.eq(0)]
                    with m.Elif(linear):
                        m.d.comb += [self.bias_rd.en.eq(1), self.bias_rd.addr.eq(f.bias_addr + colp)]
                        m.d.sync += [pr_bias.eq(1), pr_idx.eq(p_idx)]
                        next_item(C)
                    with m.Else():
                        m.d.comb += [wr_rd_req.eq(1), wr_rd_addr.eq(paddr >> 4)]
                        m.d.sync += [pr_valid.eq(1), pr_kind.eq(p_sub), pr_col.eq(1), pr_idx.eq(p_idx),
                                     pr_lane.eq(paddr[:4])]
                        with m.If(p_sub == 2):
                            next_item(C)
                        with m.Else():
                            m.d.sync += p_sub.eq(p_sub + 1)
                with m.Case(2):
                    with m.If(~linear):
                        m.d.comb += [self.bias_rd.en.eq(1), self.bias_rd.addr.eq(f.bias_addr)]
                        m.d.sync += [pr_bias.eq(1), pr_idx.eq(0)]
                    m.d.sync += p_phase.eq(3)
                with m.Default():   # wait for the last capture
                    with m.If(~pr_valid & ~pr_bias):
                        m.d.sync += [wr_params.eq(0), col_cb.eq(wr.cb)]
        with m.If(pr_valid):
            byte = rdata.word_select(pr_lane, 8)
            for i in range(2):
                with m.If(~pr_col & (pr_idx == i)):
                    with m.Switch(pr_kind):
                        with m.Case(0):
                            m.d.sync += tok_e[i].eq(byte)
                        with m.Case(1):
                            m.d.sync += tok_m[i][:8].eq(byte)
                        with m.Case(2):
                            m.d.sync += tok_m[i][8:].eq(byte)
            for i in range(C):
                with m.If(pr_col & (pr_idx == i)):
                    with m.Switch(pr_kind):
                        with m.Case(0):
                            m.d.sync += col_e[i].eq(byte)
                        with m.Case(1):
                            m.d.sync += col_m[i][:8].eq(byte)
                        with m.Case(2):
                            m.d.sync += col_m[i][8:].eq(byte)
        with m.If(pr_bias):
            for i in range(C):
                with m.If(pr_idx == i):
                    m.d.sync += ents[i].eq(self.bias_rd.data[:96])
        with m.If(start):
            m.d.sync += col_cb.eq(1 << 17)

        t = wr.t0 + wr_l
        col = wr.cb + wr_c
        elem = Signal(32)
        m.d.comb += elem.eq(t * Mux(f.ldo == 0, f.n, f.ldo) + col)
        addr = Signal(32)                    # where the value goes (int8: one byte per element)
        acc_addr = Signal(32)                # the accumulate input: always an int32 matrix (funcsim)
        m.d.comb += [addr.eq(f.out_addr + Mux(f.out == 2, elem, elem << 2)), acc_addr.eq(f.out_addr + (elem << 2))]
        vsel = Signal(32)
        m.d.comb += vsel.eq(Mux(wr_l, Cat(*[wr.y[C + i] for i in range(C)]).word_select(wr_c, 32),
                                Cat(*[wr.y[i] for i in range(C)]).word_select(wr_c, 32)))
        ok = (t < f.m) & (col < f.n)
        wval = Signal(32)
        do_write = Signal()
        m.submodules.requant = rq = Requantizer()
        side = data.StructLayout({"addr": 32})
        m.submodules.rq_addr = rq_addr = fifo.SyncFIFO(width=side.size, depth=32)
        emit = Signal()                      # the value wval leaves the add stage this cycle
        can_emit = ~requant_on | (rq.i.ready & rq_addr.w_rdy)

        def advance():
            m.d.sync += wr_ph.eq(0)
            with m.If(wr_c == C - 1):
                m.d.sync += [wr_c.eq(0), wr_l.eq(1)]
                with m.If(wr_l):
                    m.d.sync += wr_busy.eq(0)
            with m.Else():
                m.d.sync += wr_c.eq(wr_c + 1)

        with m.If(wr_busy & ~wr_params):
            with m.If(~wr_ph):
                with m.If(~ok):
                    advance()
                with m.Elif(f.accumulate):
                    m.d.comb += [wr_rd_req.eq(1), wr_rd_addr.eq(acc_addr >> 4)]
                    m.d.sync += wr_ph.eq(1)
                with m.Elif(can_emit):
                    m.d.comb += [wval.eq(vsel), emit.eq(1)]
                    advance()
            with m.Else():
                # the old value is in rdata only in the cycle after its read: hold it if stalled
                old = Signal(32)
                m.d.comb += wval.eq(vsel + old)
                with m.If(can_emit):
                    m.d.comb += emit.eq(1)
                    advance()
        hold_old, old_valid = Signal(32), Signal()
        if True:
            old_now = rdata.word_select(acc_addr[2:4], 32)
            with m.If(wr_busy & ~wr_params & wr_ph):
                m.d.comb += old.eq(Mux(old_valid, hold_old, old_now))
                m.d.sync += [hold_old.eq(old), old_valid.eq(~emit)]
        # per-value requantization inputs
        csel = Signal(range(C))
        m.d.comb += csel.eq(Mux(linear, wr_c, 0))
        ent = Signal(ent_layout)
        cm, ce = Signal(16), Signal(signed(8))
        for i in range(C):
            with m.If(csel == i):
                m.d.comb += ent.eq(ents[i])
            with m.If(wr_c == i):
                m.d.comb += [cm.eq(col_m[i]), ce.eq(col_e[i])]
        te = Mux(f.afmt, 0, Mux(wr_l, tok_e[1], tok_e[0]))
        tm = Mux(f.afmt, 1, Mux(wr_l, tok_m[1], tok_m[0]))
        rin = rq.i.payload
        m.d.comb += [rin.acc.eq(wval), rin.mantissa.eq(Mux(pv, 1, Mux(qk, tm * cm, tm))),
                     rin.exponent.eq(Mux(qk, te + ce, te)), rin.mult.eq(ent.mult), rin.shift.eq(ent.shift),
                     rin.bias.eq(ent.bias), rin.add_bias.eq(f.bias), rin.int8.eq(f.out == 2),
                     rq.i.valid.eq(emit & requant_on), rq_addr.w_en.eq(emit & requant_on),
                     rq_addr.w_data.eq(addr), rq.o.ready.eq(1), rq_addr.r_en.eq(rq.o.valid)]
        waddr = Signal(32)
        m.d.comb += waddr.eq(Mux(requant_on, rq_addr.r_data, addr))
        m.d.comb += do_write.eq(Mux(requant_on, rq.o.valid, emit))
        value = Signal(32)                   # (a Mux of signed and unsigned would be 33 bits wide)
        m.d.comb += value.eq(Mux(requant_on, rq.o.payload.value, wval))
        with m.If(do_write):
            with m.If(f.out == 2):
                m.d.comb += [self.act_wr.addr.eq(waddr >> 4), self.act_wr.data.eq(value[:8].replicate(16)),
                             self.act_wr.en.eq(Const(1, 16) << waddr[:4])]
            with m.Else():
                m.d.comb += [self.act_wr.addr.eq(waddr >> 4), self.act_wr.data.eq(value.replicate(4)),
                             self.act_wr.en.eq(Const(0xF, 16) << Cat(Const(0, 2), waddr[2:4]))]

        # ---- the data rules, checked before anything is written (out != int32 only): the row
        #   mantissas of A (and of K for qk) at most 256, then the multipliers' bit 31
        ps_phase = Signal(3)                 # 0 A mantissas, 1 K mantissas, 2 entries, 3 drain, 4 table, 6 wgroup
        ps_i = Signal(17)
        ps_hi = Signal()
        ps_lo = Signal(8)
        ps_pend, ps_pend_hi, ps_pend_bias = Signal(), Signal(), Signal()
        ps_lane = Signal(4)
        ps_bad = Signal(8)
        ps_run = Signal()
        ps_pend_meta = Signal()
        # wgroup: the multipliers (bytes [mult_base, mult_end) of the weight buffer), one weight word per
        # cycle through the weight port: every nibble of the word's bytes inside that range must be
        # non-zero, except each row's last high nibble when the group count is odd (padding). The row
        # ends in a word are the lanes e0, e0 + gbytes, ... (e0: the first row end at or after the
        # word's lane 0): ``g_period`` (bit j: gbytes divides j) shifted up by e0; the next word's e0
        # follows from the word's last row end (a log-depth priority encoder), or e0 - W without one.
        ps_gaddr = Signal(33)                # the next byte to check (word aligned after the first word)
        ps_g_e0 = Signal(range(W + (1 << 12)))
        ps_pend_g = Signal()
        ps_g_lo_ok, ps_g_hi_ok = Signal(W), Signal(W)   # per lane of the word read: check its low / high nibble
        m.d.sync += ps_pend_g.eq(0)
        mult_end = Signal(49)
        g_period = Signal(W)
        g_eq = [None] + [gbytes == d for d in range(1, W)]
        m.d.comb += [mult_end.eq(f.b_addr + w_bytes),
                     g_period.eq(Cat(Const(1, 1), *[Cat(*[g_eq[d] for d in range(1, j + 1) if j % d == 0]).any()
                                                    for j in range(1, W)]))]
        ps_mword = Signal(17)
        ps_kept, ps_sparse = Signal(28), Signal(28)    # sums of the table's N (all / N < 16)
        m.d.sync += [ps_pend.eq(0), ps_pend_bias.eq(0), ps_pend_meta.eq(0)]
        ps_addr = Signal(32)
        m.d.comb += ps_addr.eq(Mux(ps_phase == 0, a_tail + f.m, k_tail + f.n) + (ps_i << 1) + ps_hi)
        ps_count = Mux(ps_phase == 0, f.m, Mux(ps_phase == 1, f.n, entries))
        # the word at ps_gaddr: its lanes inside [ps_gaddr, mult_end), its row ends, the next word's e0
        g_lane0 = ps_gaddr % W
        g_left = mult_end - (ps_gaddr - g_lane0)            # bytes from the word's lane 0 to the end
        g_inside = Signal(W)
        g_ends = Signal(W)
        g_near = ps_g_e0 < W
        m.d.comb += [g_inside.eq((Const((1 << W) - 1, W) << g_lane0)[:W] &
                                 Mux(g_left >= W, Const((1 << W) - 1, W), (Const(1, W + 1) << g_left[:(W).bit_length()]) - 1)),
                     g_ends.eq(Mux(g_near, (g_period << ps_g_e0[:max(1, (W - 1).bit_length())])[:W], 0))]
        g_pad = Mux(g_groups[0], g_ends, 0)
        g_e0_next = Mux(g_near, _highest_set(g_ends) + gbytes - W, ps_g_e0 - W)
        with m.If(ps_run & (ps_bad == 0)):
            with m.Switch(ps_phase):
                with m.Case(0, 1):
                    skip = (ps_phase == 0) & (pv | f.afmt) | (ps_phase == 1) & ~qk
                    with m.If(skip | (ps_i == ps_count)):
                        m.d.sync += [ps_phase.eq(ps_phase + 1), ps_i.eq(0), ps_hi.eq(0)]
                    with m.Else():
                        m.d.comb += [wr_rd_req.eq(1), wr_rd_addr.eq(ps_addr >> 4)]
                        m.d.sync += [ps_pend.eq(1), ps_pend_hi.eq(ps_hi), ps_lane.eq(ps_addr[:4]),
                                     ps_hi.eq(~ps_hi)]
                        with m.If(ps_hi):
                            m.d.sync += ps_i.eq(ps_i + 1)
                with m.Case(2):
                    with m.If(ps_i == entries):
                        m.d.sync += ps_phase.eq(3)
                    with m.Else():
                        m.d.comb += [self.bias_rd.en.eq(1), self.bias_rd.addr.eq(f.bias_addr + ps_i)]
                        m.d.sync += [ps_pend_bias.eq(1), ps_i.eq(ps_i + 1)]
                with m.Case(6):   # wgroup: the multipliers, one weight word per cycle
                    with m.If(ps_gaddr >= mult_end):
                        m.d.sync += [ps_phase.eq(Mux(f.out != 0, 0, 3)), ps_i.eq(0), ps_hi.eq(0)]
                    with m.Else():
                        gword = ps_gaddr // W
                        m.d.comb += [self.weight_rd.en.eq(1),
                                     self.weight_rd.addr.eq(Mux(gword < g.weight_words, gword, g.weight_words - 1)[:wwa])]
                        m.d.sync += [ps_pend_g.eq(1), ps_g_lo_ok.eq(g_inside), ps_g_hi_ok.eq(g_inside & ~g_pad),
                                     ps_gaddr.eq((gword + 1) * W), ps_g_e0.eq(g_e0_next)]
                with m.Case(4):   # sparse: the block-N table, 16 entries per meta word
                    with m.If((ps_i << 4) >= table_bytes):
                        m.d.sync += ps_phase.eq(5)
                    with m.Else():
                        m.d.comb += [self.meta_rd.en.eq(1), self.meta_rd.addr.eq((f.meta_addr + ps_i)[:mwa])]
                        m.d.sync += [ps_pend_meta.eq(1), ps_mword.eq(ps_i), ps_i.eq(ps_i + 1)]
                with m.Case(5):   # the kept values and the index stream they imply lie in their buffers
                    with m.If(~ps_pend_meta):
                        vbytes = Mux(f.wfmt == 0, ps_kept << 4, ps_kept << 3)
                        with m.If((f.b_addr + vbytes > g.weight_bytes) | (idx_base + (ps_sparse << 3) > g.meta_bytes)):
                            m.d.sync += ps_bad.eq(MpeError.OUT_OF_RANGE)
                        m.d.sync += [ps_phase.eq(Mux(f.out != 0, 0, 3)), ps_i.eq(0)]
        with m.If(ps_pend):
            byte = rdata.word_select(ps_lane, 8)
            with m.If(~ps_pend_hi):
                m.d.sync += ps_lo.eq(byte)
            with m.Elif(Cat(ps_lo, byte) > MAX_MANTISSA):
                m.d.sync += ps_bad.eq(MpeError.MANTISSA)
        with m.If(ps_pend_meta):
            adds_k, adds_s, bad_n = [], [], []
            for e in range(16):
                inside = ((ps_mword << 4) + e) < table_bytes
                nv = mdata[8 * e: 8 * e + 8]
                bad_n.append(inside & (nv != 2) & (nv != 4) & (nv != 8) & (nv != 16))
                adds_k.append(Mux(inside, nv, 0))
                adds_s.append(Mux(inside & (nv != 16), nv, 0))
            m.d.sync += [ps_kept.eq(ps_kept + sum(adds_k)), ps_sparse.eq(ps_sparse + sum(adds_s))]
            with m.If(Cat(*bad_n).any()):
                m.d.sync += ps_bad.eq(MpeError.BLOCK_N)
        wdata = self.weight_rd.data
        with m.If(ps_pend_g & Cat(*[ps_g_lo_ok[l] & (wdata[8 * l: 8 * l + 4] == 0) |
                                    ps_g_hi_ok[l] & (wdata[8 * l + 4: 8 * l + 8] == 0) for l in range(W)]).any()):
            m.d.sync += ps_bad.eq(MpeError.GROUP_MULT)
        with m.If(ps_pend_bias & self.bias_rd.data[63]):
            m.d.sync += ps_bad.eq(MpeError.MULTIPLIER)
        ps_done = ps_run & ((ps_bad != 0) | (ps_phase == 3)) & ~ps_pend & ~ps_pend_bias & ~ps_pend_meta & ~ps_pend_g

        # ---- control
        ovp = self._ovp_path(m, f, start, wr_rd_req, rdata, results, res_layout)
        idle_all = (~af_busy & ~wl_busy & ~is_busy & ~tags.r_rdy & ~results.r_rdy & ~wr_busy & ~rq_addr.r_rdy
                    & ~ovp.busy)
        m.d.comb += self.busy.eq(1)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.inst.ready.eq(1), self.busy.eq(0)]
                with m.If(self.inst.valid):
                    m.d.sync += f.eq(self.inst.payload.fields)
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(code != 0):
                    m.d.sync += [self.error.eq(code), self.fault.eq(1)]
                    m.next = "IDLE"
                with m.Elif((f.out != 0) | f.sparse | wg_on):
                    m.d.sync += [ps_run.eq(1), ps_phase.eq(Mux(f.sparse, 4, Mux(wg_on, 6, 0))), ps_i.eq(0), ps_hi.eq(0),
                                 ps_bad.eq(0), ps_kept.eq(0), ps_sparse.eq(0), ps_gaddr.eq(mult_base),
                                 ps_g_e0.eq((mult_base % W) + gbytes - 1)]
                    m.next = "PRESCAN"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.next = "RUN"
            with m.State("PRESCAN"):
                with m.If(ps_done):
                    m.d.sync += ps_run.eq(0)
                    with m.If(ps_bad != 0):
                        m.d.sync += [self.error.eq(ps_bad), self.fault.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += start.eq(1)
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(idle_all):
                    m.d.sync += [self.error.eq(0), self.done.eq(1)]
                    m.next = "IDLE"
        return m


@register_unit("mpe")
def _resource_unit(chains: int = 2, primitive: bool = True):
    """The matrix engine at the small configuration with ``chains`` chains
    (``olivine resources mpe --chains 2``)."""
    from .config import small

    return MatrixEngine(small().replace(chains_per_core=int(chains)), primitive=bool(primitive)), \
        f"mpe_c{int(chains)}"


class MpeHarness(wiring.Component):
    """The engine with its four buffers as ``Memory`` (for simulation): the data space, weight,
    meta and bias buffers at the engine's port widths. ``stall=True`` freezes the engine with
    ``EnableInserter(en)`` as the core does (section 1 of CORE_INTERFACE.md): a frozen cycle
    performs none of its requests, granted read data is held until the next enabled cycle.

    Ports: ``inst`` (as the engine's, taken only in enabled cycles), ``done``, ``fault``, ``busy``,
    ``error``, ``en`` (In 1, init 1: the enable). Memories: ``act``, ``weight``, ``meta``, ``bias``.
    Host port (testbenches without memory access, e.g. cocotb): ``host_we`` writes ``host_data``
    (the low bits) to word ``host_addr`` of memory ``host_mem`` (0 act, 1 weight, 2 meta, 3 bias);
    ``host_rd`` reads data-space word ``host_addr`` into ``host_q`` one cycle later. Use it only
    while the engine is idle.
    """

    def __init__(self, config: AcceleratorConfig, *, stall: bool = False, **engine_kw):
        self.engine = MatrixEngine(config, **engine_kw)
        self.stall = stall
        g = self.engine.geometry
        from amaranth.lib.memory import Memory

        self.act = Memory(shape=unsigned(8 * ACT_BYTES), depth=g.act_words, init=[])
        self.weight = Memory(shape=unsigned(8 * g.wword_bytes), depth=g.weight_words, init=[])
        self.meta = Memory(shape=unsigned(8 * ACT_BYTES), depth=g.meta_words, init=[])
        self.bias = Memory(shape=unsigned(8 * ACT_BYTES), depth=g.bias_words, init=[])
        super().__init__({
            "inst": In(stream.Signature(self.engine._inst_layout)),
            "done": Out(1), "fault": Out(1), "busy": Out(1), "error": Out(8), "en": In(1, init=1),
            "host_mem": In(2), "host_addr": In(16), "host_data": In(8 * g.wword_bytes), "host_we": In(1),
            "host_rd": In(1), "host_q": Out(8 * ACT_BYTES),
        })

    def elaborate(self, platform):
        from amaranth.hdl import EnableInserter

        m = Module()
        eng = self.engine
        en = self.en if self.stall else Const(1, 1)
        m.submodules.engine = EnableInserter(en)(eng) if self.stall else eng
        for name in ("act", "weight", "meta", "bias"):
            m.submodules[name] = getattr(self, name)
        m.d.comb += [eng.enable.eq(en), eng.inst.payload.eq(self.inst.payload),
                     eng.inst.valid.eq(self.inst.valid & en), self.inst.ready.eq(eng.inst.ready & en),
                     self.done.eq(eng.done & en), self.fault.eq(eng.fault & en), self.busy.eq(eng.busy),
                     self.error.eq(eng.error)]
        for name, port in (("act", eng.act_rd), ("weight", eng.weight_rd), ("meta", eng.meta_rd),
                           ("bias", eng.bias_rd)):
            rp = getattr(self, name).read_port()
            m.d.comb += [rp.addr.eq(port.addr), rp.en.eq(port.en & en), port.data.eq(rp.data)]
        wp = self.act.write_port(granularity=8)
        m.d.comb += [wp.addr.eq(eng.act_wr.addr), wp.data.eq(eng.act_wr.data),
                     wp.en.eq(eng.act_wr.en & en.replicate(ACT_BYTES))]
        for k, name in enumerate(("act", "weight", "meta", "bias")):
            hp = getattr(self, name).write_port()
            m.d.comb += [hp.addr.eq(self.host_addr), hp.data.eq(self.host_data),
                         hp.en.eq(self.host_we & (self.host_mem == k))]
        hr = self.act.read_port()
        m.d.comb += [hr.addr.eq(self.host_addr), hr.en.eq(self.host_rd), self.host_q.eq(hr.data)]
        return m
