"""The core's top (hw/core.py OlivineCore) against sim/funcsim.py: the same image and program run on
the RTL and on FuncSim; every HBM byte and every buffer byte (through the core's own ST) compared
afterwards, and the status registers against what the functional simulator reports for bad programs.

Two RTL hosts (sim/core_rtl.py): the hand-written and error-path programs run in cocotb + Verilator
(cocotbext-axi HBM and AXI4-Lite models with random pauses, an HBM model independent of the C++
one); the matrix-engine programs (modes, W4A4, random differential) run on the fast C++ harness
(sim/fastsim.py, its HBM model pausing every AXI channel at random the same way) on the ``tiny``
core that ``olivine run --backend rtl`` runs glassllm on (tests/helpers.py tiny_core_harness):
one Verilator build shared with tests/test_sim_rtl_backend.py, and jobs about 10x cheaper than in cocotb.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from olivine.hw import core_regs, isa
from olivine.hw.controller import STATES, STATUS_CAUSES
from olivine.sim.core_rtl import CoreJob, compare, funcsim_jobs, rtl_test_config, run_jobs, run_jobs_fast
from tests.helpers import REDUCED, TINY_CORE_GROUP, requires_verilator, tiny_core_harness

CHANNEL_BYTES = 1 << 16
SFU_OPS = ("add", "mul", "copy", "silu")
DATA = 16 * 1024          # the test configuration's data space
IMAGE_BYTES = 40 * 1024   # image bytes per channel (the programs go above, the clear/dump programs at the top)


def _config():
    return rtl_test_config()


def _image(rng, n=IMAGE_BYTES) -> bytes:
    """fixed32 values of moderate size (|x| < 2**20), so SFU ops work on realistic activations."""
    return rng.integers(-(1 << 20), 1 << 20, n // 4, dtype=np.int32).tobytes()


def _run(jobs, **kw):
    cfg = _config()
    got = run_jobs(cfg, jobs, channel_bytes=CHANNEL_BYTES, sfu_ops=SFU_OPS, **kw)
    want = funcsim_jobs(cfg, jobs, channel_bytes=CHANNEL_BYTES)
    return got, want


#: xdist group of the tests on the cocotb core (rtl_test_config(), SFU_OPS): one worker builds it
COCOTB_CORE_GROUP = "core_cocotb"


def on_cocotb_core(fn):
    return requires_verilator(pytest.mark.rtl(pytest.mark.xdist_group(COCOTB_CORE_GROUP)(fn)))


#: HBM bytes per channel of the matrix-engine jobs (the tiny core's data space is 252 KiB)
MPE_CHANNEL_BYTES = 1 << 19


def on_tiny_core(fn):
    """A matrix-engine test on the tiny core's fast harness (in the xdist group that builds it)."""
    return requires_verilator(pytest.mark.rtl(pytest.mark.xdist_group(TINY_CORE_GROUP)(fn)))


@pytest.fixture(scope="module")
def tiny_core():
    return tiny_core_harness()


def _run_mpe(tiny_core, jobs, *, pause=0.2, seed=0):
    """The jobs on the tiny core (fast harness, random AXI pauses) and on FuncSim."""
    config, harness = tiny_core
    got = run_jobs_fast(harness, config, jobs, channel_bytes=MPE_CHANNEL_BYTES, pause=pause, seed=seed)
    want = funcsim_jobs(config, jobs, channel_bytes=MPE_CHANNEL_BYTES)
    return got, want


def _check(jobs, got, want, names, *, data=True):
    problems = []
    for name, job, g, w in zip(names, jobs, got, want):
        for p in compare(g, w, data=data):
            problems.append(f"{name}: {p}")
    assert not problems, "\n".join(problems)


# ---- hand-written programs --------------------------------------------------------------------------

def _programs():
    M = isa.make
    LDU, STU, SFU = 0b0001, 0b0010, 0b1000
    progs = {}
    # LD -> SFU add -> copy -> ST, with tokens both ways
    progs["ld_sfu_st"] = [
        M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=256),
        M("LD", target="global", channel=1, hbm_addr=512, buf_addr=1024, length=256, release=SFU),
        M("MISC", op="add", src0=0, src1=1024, dst=2048, rows=4, cols=16, wait=LDU),
        M("MISC", op="copy", src0=2048, dst=4096, rows=4, cols=16, release=STU),
        M("ST", source="act", channel=1, hbm_addr=1000, buf_addr=4096, length=256, wait=SFU),
        M("SYS", op="end"),
    ]
    # concurrency: LD and ST on both channels at once, strided loops, the SFU working while LD writes
    # the data space (bank conflicts), a barrier, then unaligned transfers into every buffer
    progs["concurrent"] = [
        M("LD", target="act", channel=0, hbm_addr=64, buf_addr=0, length=48, n0=4, n1=2, n2=2,
          hbm_stride0=100, hbm_stride1=1000, hbm_stride2=3000),
        M("LD", target="act", channel=1, hbm_addr=0, buf_addr=768, length=768, release=SFU),
        M("MISC", op="mul", src0=0, src1=768, dst=1536, rows=3, cols=64, wait=LDU, release=STU),
        M("LD", target="kv", channel=0, hbm_addr=5000, buf_addr=8192, length=4000),
        M("MISC", op="silu", src0=768, dst=4096, rows=2, cols=96, release=STU),
        M("ST", source="act", channel=0, hbm_addr=20003, buf_addr=1536, length=100, n0=5, hbm_stride0=333, wait=SFU),
        M("ST", source="global", channel=1, hbm_addr=30001, buf_addr=4096, length=768, wait=SFU),
        M("SYS", op="barrier"),
        M("LD", target="weight", channel=1, hbm_addr=7, buf_addr=3, length=2000, n0=2, hbm_stride0=4001),
        M("LD", target="meta", channel=0, hbm_addr=11, buf_addr=1, length=1000),
        M("LD", target="bias", channel=1, hbm_addr=13, buf_addr=0, length=1024),
        M("LD", target="act", zero_fill=1, buf_addr=9000, length=333, release=SFU | STU),
        M("MISC", op="add", src0=8192, src1=8192, dst=12288, rows=8, cols=100, wait=LDU),
        M("ST", source="weight", channel=0, hbm_addr=36000, buf_addr=100, length=1500, wait=LDU),
        M("SYS", op="end"),
    ]
    # a program that ends without SYS end, read from channel 1
    progs["no_end"] = [
        M("LD", target="act", channel=1, hbm_addr=4, buf_addr=4, length=4092, release=STU),
        M("ST", source="act", channel=0, hbm_addr=8, buf_addr=0, length=4096, wait=LDU),
    ]
    return progs


@on_cocotb_core
def test_programs_match_funcsim():
    rng = np.random.default_rng(9)
    progs = _programs()
    jobs = [CoreJob(p, {0: _image(rng), 1: _image(rng)}, prog_channel=1 if name == "no_end" else 0)
            for name, p in progs.items()]
    got, want = _run(jobs, pause=0.3, seed=3)
    _check(jobs, got, want, list(progs))
    for name, g, w in zip(progs, got, want):
        regs = g["regs"]
        assert regs["magic"] == core_regs.MAGIC and regs["version"] == 1
        assert regs["config_digest"] == int(_config().digest(), 16) & 0xFFFFFFFF
        assert regs["state"] == STATES.index("done")
        cycles = regs["cycles_lo"] | regs["cycles_hi"] << 32
        # the core counts from the cycle the CTRL write lands, the harness from its B response
        assert 0 < cycles <= g["harness_cycles"] + 4, (name, cycles, g["harness_cycles"])
        for unit in isa.UNITS:
            assert regs[f"{unit}_instructions"] == w["instructions"][unit], (name, unit)
            assert (regs[f"{unit}_busy"] > 0) == (w["instructions"][unit] > 0), (name, unit)
        for k in range(_config().hbm_channels):
            # writes count strobed bytes (exact); reads whole beats, the program fetch included
            assert regs[f"hbm{k}_write_bytes"] == w["hbm_written"][k], (name, k)
            assert regs[f"hbm{k}_read_bytes"] >= w["hbm_read"][k], (name, k)
    # the SFU waited for its LD tokens in the first program and LD/ST moved data concurrently
    assert got[0]["regs"]["sfu_stall_token"] > 0
    assert got[1]["regs"]["sfu_stall_memory"] > 0, "no bank conflict between LD and the SFU was exercised"


# ---- the matrix engine in the core ----------------------------------------------------------------

def _mpe_programs():
    """LD weights and INT8 activation blocks, MM / MV on the engine (int32 out: no data rules on the
    random exponent/mantissa bytes), ST the results; tokens LD -> MPE -> ST."""
    M = isa.make
    LDU, STU, MPE = 0b0001, 0b0010, 0b0100
    return {
        "mm_int8": [
            M("LD", target="weight", channel=0, hbm_addr=0, buf_addr=0, length=4 * 32),
            M("LD", target="act", channel=1, hbm_addr=64, buf_addr=0, length=3 * 32 + 9, release=MPE),
            M("MM", wfmt="int8", out="int32", k_blocks=2, m=3, n=4, a_addr=0, b_addr=0, out_addr=2048,
              wait=LDU, release=STU),
            M("ST", source="act", channel=1, hbm_addr=30000, buf_addr=2048, length=48, wait=MPE),
            M("SYS", op="end"),
        ],
        "mv_int4_accumulate": [
            M("LD", target="weight", channel=1, hbm_addr=100, buf_addr=512, length=8 * 32),
            M("LD", target="act", channel=0, hbm_addr=300, buf_addr=1024, length=64 + 3),
            M("LD", target="act", channel=0, hbm_addr=2000, buf_addr=4096, length=32, release=MPE),
            M("MV", wfmt="int4", out="int32", accumulate=1, k_blocks=4, m=1, n=8, a_addr=1024, b_addr=512,
              out_addr=4096, wait=LDU, release=STU),
            M("ST", source="act", channel=0, hbm_addr=31000, buf_addr=4096, length=32, wait=MPE),
            M("SYS", op="end"),
        ],
    }


@on_tiny_core
def test_matrix_engine_programs_match_funcsim(tiny_core):
    rng = np.random.default_rng(21)
    progs = _mpe_programs()
    jobs = [CoreJob(p, {0: _image(rng), 1: _image(rng)}) for p in progs.values()]
    got, want = _run_mpe(tiny_core, jobs, seed=1)
    _check(jobs, got, want, list(progs))
    for name, g in zip(progs, got):
        assert g["regs"]["state"] == STATES.index("done"), (name, g["regs"])
        assert g["regs"]["mpe_instructions"] == 1 and g["regs"]["mpe_busy"] > 0, name


def _weight_st_jobs(config, rng) -> dict[str, CoreJob]:
    """An MM reading half 0 of the weight buffer and an ST of the weight buffer (half 1, or half 0),
    issued while the engine reads (both wait for the LDs only) or after it (the ST waits for the MM).
    The weight buffer has one read port and the engine's reads are never frozen (hw/core.py
    "Arbitration"), so the concurrent ST's reads wait whichever half it reads."""
    M = isa.make
    LDU, STU, MPE = 0b0001, 0b0010, 0b0100
    half = config.buffers.weight_kib * 1024 // 2
    kb, m, n = 16, 4, 32
    w_bytes, st_bytes = n * kb * 16, 4096

    def job(st_half: int, after_mm: bool) -> CoreJob:
        prog = [
            M("LD", target="weight", channel=1, hbm_addr=0, buf_addr=0, length=w_bytes),
            M("LD", target="weight", channel=1, hbm_addr=w_bytes, buf_addr=half, length=st_bytes),
            M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=m * kb * 16, release=MPE | STU),
            M("MM", wfmt="int8", out="int32", k_blocks=kb, m=m, n=n, a_addr=0, b_addr=0, out_addr=8192, wait=LDU,
              release=STU),
            M("ST", source="weight", channel=0, hbm_addr=20000, buf_addr=st_half * half + 64, length=st_bytes - 64,
              wait=LDU | (MPE if after_mm else 0)),
            M("ST", source="act", channel=0, hbm_addr=30000, buf_addr=8192, length=4 * m * n,
              wait=0 if after_mm else MPE),  # STs run in order: after the MM either way
            M("SYS", op="end"),
        ]
        return CoreJob(prog, {0: _image(rng), 1: _image(rng)})

    return {"other half, during the MM": job(1, False), "other half, after the MM": job(1, True),
            "same half, during the MM": job(0, False), "same half, after the MM": job(0, True)}


@on_tiny_core
def test_weight_st_waits_for_the_engines_weight_reads_in_either_half(tiny_core):
    """An ST of the weight buffer while the engine reads it: bit-exact with FuncSim (so the two never
    shared the read port in one cycle) and the ST took longer than the same ST after the MM (it waited)."""
    config = tiny_core[0]
    jobs = _weight_st_jobs(config, np.random.default_rng(41))
    got, want = _run_mpe(tiny_core, list(jobs.values()), pause=0.0)   # no AXI pauses: cycle counts repeat
    _check(list(jobs.values()), got, want, list(jobs))
    regs = dict(zip(jobs, (g["regs"] for g in got)))
    for name, r in regs.items():
        assert r["state"] == STATES.index("done") and r["mpe_instructions"] == 1 and r["st_instructions"] == 2, name
    for where in ("other half", "same half"):
        during, after = regs[f"{where}, during the MM"], regs[f"{where}, after the MM"]
        # ST busy cycles: both STs of the job; the second (the MM's output) is the same in both jobs
        assert during["st_busy"] > after["st_busy"] + 64, (where, during["st_busy"], after["st_busy"])


def _case_job(case) -> CoreJob:
    """A program of the compiler's shape around one engine case (sim/mpe_check.py: its buffers and
    MM fields): LD the data space from channel 0, LD the weight tile, the meta tables and the
    requantization entries from channel 1 (the last releases MPE), MM / MV waiting for LD and
    releasing ST, ST of the output rows to channel 1, SYS end. Every byte of every buffer and
    channel is then compared with FuncSim."""
    M = isa.make
    LDU, STU, MPE = 0b0001, 0b0010, 0b0100
    f = {k: v for k, v in case.fields.items() if not k.startswith("_")}
    ldo = f.get("ldo") or f["n"]
    elem = 1 if f.get("out") == 2 else 4
    out_bytes = elem * ((f["m"] - 1) * ldo + f["n"])
    weight, meta, bias = case.weight.tobytes(), case.meta.tobytes(), case.bias.tobytes()
    prog = [
        M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=case.data.size),
        M("LD", target="weight", channel=1, hbm_addr=0, buf_addr=0, length=len(weight)),
        M("LD", target="meta", channel=1, hbm_addr=len(weight), buf_addr=0, length=len(meta)),
        M("LD", target="bias", channel=1, hbm_addr=len(weight) + len(meta), buf_addr=0, length=len(bias),
          release=MPE),
        M("MV" if f["m"] == 1 else "MM", **f, wait=LDU, release=STU),
        M("ST", source="act", channel=1, hbm_addr=len(weight + meta + bias) + 4096 - 7, buf_addr=f["out_addr"],
          length=out_bytes, wait=MPE),
        M("SYS", op="end"),
    ]
    return CoreJob(prog, {0: case.data.tobytes(), 1: weight + meta + bias})


def _mode_cases(rng, config):
    """Every engine mode the compiler emits (and the rest), at the core's configuration."""
    from olivine.sim import mpe_check as mc

    lin, att, sp = mc.make_linear, mc.make_attention, mc.make_sparse
    cases = [
        lin(config, rng, m=1, n=5, kb=4, wfmt=0, out=1, bias_flag=1, accumulate=0, label="MV int8 fixed32 + bias"),
        lin(config, rng, m=3, n=6, kb=5, wfmt=0, out=1, bias_flag=0, accumulate=1, label="MM int8 fixed32 accumulate"),
        lin(config, rng, m=4, n=5, kb=3, wfmt=1, out=2, accumulate=0, label="MM int4 int8 out"),
        lin(config, rng, m=1, n=7, kb=6, wfmt=1, out=2, accumulate=1, label="MV int4 int8 out accumulate"),
        lin(config, rng, m=2, n=5, kb=4, wfmt=2, normal=0, out=1, bias_flag=1, label="MM ovp4 (int4 normals) fixed32"),
        lin(config, rng, m=1, n=4, kb=2, wfmt=2, normal=1, out=0, accumulate=0, label="MV ovp4 (flint4 normals) int32"),
        lin(config, rng, m=3, n=3, kb=2, wfmt=0, out=0, ldo_extra=5, accumulate=1, worst=True,
            label="MM int8 -128 x -128, ldo > n, accumulate"),
        att(config, rng, "qk", m=2, n=16, kb=2, out=1, accumulate=0, ldo_extra=0, label="qk fixed32 (R=2, S=16)"),
        att(config, rng, "qk", m=3, n=5, kb=3, out=2, label="qk int8 out"),
        att(config, rng, "pv", m=2, n=16, kb=1, out=1, ldo_extra=16, p_kind="edges",
            label="pv fixed32, ldo = 2 n, INT32 extremes in P'"),
        att(config, rng, "pv", m=1, n=5, kb=2, out=0, accumulate=1, label="pv MV int32 accumulate"),
        sp(config, rng, wfmt=0, out=1, label="sparse N:16 int8 fixed32"),
        sp(config, rng, wfmt=1, out=0, label="sparse N:16 int4 int32"),
        sp(config, rng, wfmt=2, out=2, m=1, label="sparse N:16 ovp4 int8 out"),
        lin(config, rng, m=2, n=3, kb=2, out=1, bad="multiplier", label="data rule: multiplier bit 31"),
    ]
    if REDUCED:
        cases = cases[0::2] + [cases[-1]]
    return cases


@on_tiny_core
def test_matrix_engine_modes_match_funcsim(tiny_core):
    """qk, pv, fixed32 / int8 requantized outputs, bias, accumulate, N:16 sparse, OVP4 / INT4 / INT8
    weights, MV and MM, a data-rule fault: each case a whole program through the core."""
    from olivine.hw.mpe import MpeError

    cfg = tiny_core[0]
    rng = np.random.default_rng(31)
    cases = _mode_cases(rng, cfg)
    for case in cases:
        assert (case.want is None) == (case.label.startswith("data rule")), f"{case.label}: {case.why}"
    jobs = [_case_job(c) for c in cases]
    got, want = _run_mpe(tiny_core, jobs, seed=8)
    problems = []
    for case, job, g, w in zip(cases, jobs, got, want):
        problems += [f"{case.label}: {p}" for p in compare(g, w)]
        if case.want is None:
            assert w["state"] == STATES.index("error"), case.label
            assert g["regs"]["unit_error"] == isa.UNITS.index("mpe") | MpeError.MULTIPLIER << 8, case.label
        else:
            assert w["state"] == STATES.index("done"), (case.label, w["message"])
            # the engine's output equals the standalone funcsim image (sim/mpe_check.py) too
            assert np.array_equal(g["buffers"]["data"], case.want), case.label
    assert not problems, "\n".join(problems)


# ---- error paths ----------------------------------------------------------------------------------

@on_cocotb_core
def test_error_paths_report_what_funcsim_reports():
    M = isa.make
    rng = np.random.default_rng(4)
    good = [M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=64, release=0b1000),
            M("MISC", op="copy", src0=0, dst=256, rows=1, cols=16, wait=0b0001, release=0b0011)]
    after = 0b1000  # the failing LD / ST waits for the copy, so both simulators have run it
    words = list(isa.encode_program(good))
    malformed = words + [0xF0000000]                       # opcode 15: no such instruction
    cases = {
        "malformed": malformed,
        "ld_hbm_range": good + [M("LD", target="act", channel=1, hbm_addr=CHANNEL_BYTES - 10, buf_addr=0, length=20,
                                   wait=after)],
        "ld_buffer_range": good + [M("LD", target="global", channel=0, buf_addr=DATA - 8, length=100, wait=after)],
        "ld_channel": good + [M("LD", target="act", channel=5, buf_addr=0, length=16, wait=after)],
        "st_hbm_range": good + [M("ST", source="act", channel=0, hbm_addr=100, buf_addr=0, length=64, n0=3,
                                  hbm_stride0=CHANNEL_BYTES // 2, wait=after)],
        "deadlock": [M("LD", target="act", channel=0, buf_addr=0, length=64, wait=0b1000),
                     M("MISC", op="copy", src0=0, dst=256, rows=1, cols=16, wait=0b0001), M("SYS", op="end")],
        "sfu_unaligned": good + [M("MISC", op="add", src0=2, src1=0, dst=512, rows=1, cols=4)],
        "mm_without_engine": good + [M("MM", wfmt="int8", k_blocks=1, m=1, n=16, a_addr=0, b_addr=0,
                                       out_addr=1024)],
    }
    jobs = [CoreJob(p, {0: _image(rng), 1: _image(rng)}) for p in cases.values()]
    got, want = _run(jobs, pause=0.2, seed=5, max_cycles=50_000)
    for name, g, w in zip(cases, got, want):
        if name == "mm_without_engine":  # the functional simulator has a matrix engine: the RTL slot is empty
            offset = isa.program_offsets(isa.decode_program(isa.encode_program(cases[name])))[-1]
            w = dict(w, state=STATES.index("error"), cause=STATUS_CAUSES.index("unit_fault"), offset=offset,
                     message="MM without a matrix engine")
            assert g["regs"]["unit_error"] == (isa.UNITS.index("mpe") | 0xFF << 8)
        assert w["state"] == STATES.index("error"), (name, w["message"])
        assert not compare(g, w, data=False), (name, compare(g, w, data=False))
    assert got[list(cases).index("ld_channel")]["regs"]["unit_error"] == 0x200   # LD, UnitError.CHANNEL
    assert got[list(cases).index("ld_hbm_range")]["regs"]["unit_error"] == 0x300
    # a failing LD / ST moves nothing: the bytes of every buffer and channel equal the simulator's
    for name in ("ld_hbm_range", "ld_buffer_range", "ld_channel", "st_hbm_range"):
        k = list(cases).index(name)
        assert not compare(got[k], want[k]), (name, compare(got[k], want[k]))


# ---- differential: random programs ---------------------------------------------------------------

#: Parameter area at the top of every channel's image (random_jobs writes it; ST never writes it):
#: row exponents, mantissas (valid: 1..256) and requantization entries (multipliers below 2**31),
#: which an MM / MV with out != int32 loads into its tails and the bias buffer first, as the
#: compiler's programs do (the data rules hold, so the engine computes instead of faulting).
PARAM_BASE = IMAGE_BYTES - 4096
PARAM_EXP, PARAM_MANT, PARAM_ENT = PARAM_BASE, PARAM_BASE + 1024, PARAM_BASE + 3072


def _param_area(rng) -> bytes:
    exps = rng.integers(-6, 7, 1024).astype(np.int8).view(np.uint8)
    mants = rng.integers(1, 257, 1024).astype("<u2").view(np.uint8)
    ent = np.zeros((64, 4), dtype=np.int64)
    ent[:, 0] = rng.integers(-(1 << 20), 1 << 20, 64)
    ent[:, 1] = rng.integers(1 << 30, 1 << 31, 64)
    ent[:, 2] = rng.integers(30, 53, 64)
    ent[rng.random(64) < 0.15, 2] = int(rng.choice([-3, 0, 63, 100]))
    entries = (ent & 0xFFFFFFFF).astype("<u4").view(np.uint8)
    return exps.tobytes() + mants.tobytes() + entries.tobytes()


class _Gen:
    """Random valid programs: LD / ST / MISC / SYS (and, with ``mpe``, MM / MV) with operands
    inside the buffers and tokens
    derived from the data dependencies (every conflicting pair of instructions on different units is
    ordered by a token path or a barrier; releases pair with waits in program order, so no
    deadlock), plus random extra orderings."""

    BUFS = {"weight": 4096, "meta": 1024, "bias": 1024, "data": DATA}

    def __init__(self, rng, mpe: bool = False):
        self.rng = rng
        self.mpe = mpe
        self.prog, self.units, self.access, self.before = [], [], [], []

    def _range(self, size, n):
        return int(self.rng.integers(0, size - n + 1))

    def ld(self):
        r = self.rng
        target = str(r.choice(["act", "global", "kv", "weight", "meta", "bias"]))
        buf = "data" if target in ("act", "global", "kv") else target
        length = int(r.integers(1, 600))
        n0, n1, n2 = (int(r.integers(1, 4)), int(r.integers(1, 3)), int(r.integers(1, 3))) if r.random() < 0.4 \
            else (1, 1, 1)
        total = length * n0 * n1 * n2
        if total > self.BUFS[buf]:
            n0 = n1 = n2 = 1
            total = length
        s = [int(r.integers(0, 400)) for _ in range(3)]
        span = length + (n0 - 1) * s[0] + (n1 - 1) * s[1] + (n2 - 1) * s[2]
        ch = int(r.integers(0, 2))
        hbm = self._range(IMAGE_BYTES, span)
        zero = int(r.random() < 0.15)
        buf_addr = self._range(self.BUFS[buf], total)
        inst = isa.make("LD", target=target, channel=ch, hbm_addr=hbm, buf_addr=buf_addr, length=length, n0=n0,
                        n1=n1, n2=n2, hbm_stride0=s[0], hbm_stride1=s[1], hbm_stride2=s[2], zero_fill=zero)
        reads = [] if zero else [(("hbm", ch), hbm, hbm + span)]
        return "ld", inst, reads, [(buf, buf_addr, buf_addr + total)]

    def st(self):
        r = self.rng
        source = str(r.choice(["act", "global", "weight", "bias"]))
        buf = "data" if source in ("act", "global") else source
        length = int(r.integers(1, 500))
        n0 = int(r.integers(1, 4))
        stride = int(r.integers(0, 700))
        total = length * n0
        if total > self.BUFS[buf]:
            n0, total = 1, length
        ch = int(r.integers(0, 2))
        span = length + (n0 - 1) * stride
        hbm = self._range(PARAM_BASE if self.mpe else IMAGE_BYTES, span)
        buf_addr = self._range(self.BUFS[buf], total)
        inst = isa.make("ST", source=source, channel=ch, hbm_addr=hbm, buf_addr=buf_addr, length=length, n0=n0,
                        hbm_stride0=stride)
        return "st", inst, [(buf, buf_addr, buf_addr + total)], [(("hbm", ch), hbm, hbm + span)]

    def misc(self):
        r = self.rng
        op = str(r.choice(SFU_OPS))
        rows, cols = int(r.integers(1, 5)), int(r.integers(1, 70))
        n = 4 * rows * cols
        while True:
            src0, src1, dst = (4 * self._range(DATA // 4, n // 4) for _ in range(3))
            srcs = [src0] + ([src1] if op in ("add", "mul") else [])
            if all(dst + n <= s or s + n <= dst for s in srcs):
                break
        fields = dict(op=op, src0=src0, dst=dst, rows=rows, cols=cols)
        if op in ("add", "mul"):
            fields["src1"] = src1
        reads = [("data", s, s + n) for s in srcs]
        return "sfu", isa.make("MISC", **fields), reads, [("data", dst, dst + n)]

    def _param_ld(self, target, buf_addr, src, length, align=1):
        """An LD of ``length`` bytes of the parameter area at ``src`` + a random offset."""
        r = self.rng
        span = {PARAM_EXP: 1024, PARAM_MANT: 2048, PARAM_ENT: 1024}[src]
        offset = int(r.integers(0, (span - length) // align + 1)) * align
        ch = int(r.integers(0, 2))
        buf = "data" if target == "act" else target
        inst = isa.make("LD", target=target, channel=ch, hbm_addr=src + offset, buf_addr=buf_addr, length=length)
        return "ld", inst, [(("hbm", ch), src + offset, src + offset + length)], [(buf, buf_addr, buf_addr + length)]

    def mm(self) -> list:
        """An MM / MV of a random mode (linear INT8 / INT4 / OVP4, qk, pv), output (int32, fixed32
        with or without bias, int8), accumulate, shape and addresses; with out != int32 preceded
        by the LDs of its row parameters and entries from the parameter area. Returns the items."""
        r = self.rng
        while True:
            mode = int(r.choice([0, 0, 0, 1, 2]))
            m, n, kb = int(r.integers(1, 5)), int(r.integers(1, 11)), int(r.integers(1, 5))
            K = 16 * kb
            out = int(r.integers(0, 3))
            acc = int(r.random() < 0.3) if not (out == 2 and m > 1) else 0
            ldo = n + int(r.integers(0, 4)) if r.random() < 0.4 else n
            elems = (m - 1) * ldo + n
            out_bytes = elems if out == 2 else 4 * elems
            a_bytes = {0: m * K + 3 * m, 1: m * K + 3 * m, 2: 4 * m * K + m}[mode]
            a_addr = self._range(DATA, a_bytes)
            if mode == 2:
                a_addr -= a_addr % 4
            out_align = 4 if out != 2 or acc else 1
            out_addr = self._range(DATA, max(out_bytes, 4 * elems if acc else 0))
            out_addr -= out_addr % out_align
            reads = [("data", a_addr, a_addr + a_bytes)]
            if acc:
                reads.append(("data", out_addr, out_addr + 4 * elems))
            fields = dict(mode=mode, m=m, n=n, k_blocks=kb, ldo=ldo if ldo != n or r.random() < 0.5 else 0,
                          a_addr=a_addr, out_addr=out_addr, out=out, accumulate=acc)
            if mode == 0:
                wfmt = int(r.integers(0, 3))
                w_bytes = n * K if wfmt == 0 else n * K // 2
                fields.update(wfmt=wfmt, b_addr=self._range(self.BUFS["weight"], w_bytes),
                              normal=int(r.integers(0, 2)) if wfmt == 2 else 0, bias=int(out == 1 and r.random() < 0.5))
                reads.append(("weight", fields["b_addr"], fields["b_addr"] + w_bytes))
                b_range = None
            else:
                b_bytes = n * K + 3 * n if mode == 1 else K * n
                fields["b_addr"] = self._range(DATA, b_bytes)
                b_range = ("data", fields["b_addr"], fields["b_addr"] + b_bytes)
                reads.append(b_range)
            entries = n if mode == 0 else 1
            fields["bias_addr"] = int(r.integers(0, 64 - entries + 1))
            reads.append(("bias", 16 * fields["bias_addr"], 16 * (fields["bias_addr"] + entries)))
            write = ("data", out_addr, out_addr + out_bytes)
            if any(x[0] == write[0] and x[1] < write[2] and write[1] < x[2] for x in (reads[0], b_range) if x):
                continue   # the output may overlap neither operand (the OVERLAP rule)
            break
        items = []
        if out:
            tails = [] if mode == 2 else [(a_addr + m * K, m)]
            if mode == 1:
                tails.append((fields["b_addr"] + n * K, n))
            for base, rows in tails:
                items.append(self._param_ld("act", base, PARAM_EXP, rows))
                items.append(self._param_ld("act", base + rows, PARAM_MANT, 2 * rows, align=2))
            if mode == 2:
                items.append(self._param_ld("act", a_addr + 4 * m * K, PARAM_EXP, m))
            items.append(self._param_ld("bias", 16 * fields["bias_addr"], PARAM_ENT, 16 * entries, align=16))
        items.append(("mpe", isa.make("MV" if m == 1 else "MM", **fields), reads, [write]))
        return items

    @staticmethod
    def _conflict(a, b):
        (ra, wa), (rb, wb) = a, b
        for x in wa:
            for y in rb + wb:
                if x[0] == y[0] and x[1] < y[2] and y[1] < x[2]:
                    return True
        for x in ra:
            for y in wb:
                if x[0] == y[0] and x[1] < y[2] and y[1] < x[2]:
                    return True
        return False

    def build(self, n: int) -> list:
        """``n`` entries; per entry: unit, instruction, accesses, the set of entries ordered before it."""
        unit_index = {u: i for i, u in enumerate(isa.UNITS)}
        entries = []   # dicts: unit, inst, access, before, wait, release
        for _ in range(n):
            r = self.rng.random()
            j = len(entries)
            if r < 0.07 and entries:
                entries.append(dict(unit="sys", inst=None, access=([], []), before=set(range(j))))
                continue
            if self.mpe and r > 0.72:
                items = self.mm()
            else:
                st_below = 0.62 if self.mpe else 0.7
                items = [self.ld() if r < 0.45 else self.st() if r < st_below else self.misc()]
            for item in items:
                self._append(entries, unit_index, *item)
        return self._program(entries)

    def _append(self, entries, unit_index, unit, inst, reads, writes):
        """Append an instruction, ordered after every earlier one it conflicts with (tokens)."""
        last_sys = max([i for i, e in enumerate(entries) if e["unit"] == "sys"], default=-1)
        before = set(range(last_sys + 1))
        for i, e in enumerate(entries):
            if e["unit"] == unit:
                before |= {i} | e["before"]
        wait = 0
        for v in ("ld", "st", "mpe", "sfu"):
            mine = [i for i, e in enumerate(entries) if e["unit"] == v and i > last_sys]
            if v == unit or not mine:
                continue
            need = any(i not in before and self._conflict(entries[i]["access"], (reads, writes)) for i in mine)
            latest = mine[-1]
            if latest in before or not (need or self.rng.random() < 0.2):
                continue
            # the latest instruction of v releases no token to this unit yet: a release it made
            # earlier paired with an earlier instruction of this unit, which would order it before us
            assert not entries[latest]["release"] >> unit_index[unit] & 1
            entries[latest]["release"] |= 1 << unit_index[unit]
            wait |= 1 << unit_index[v]
            before |= {latest} | entries[latest]["before"]
        entries.append(dict(unit=unit, inst=inst, access=(reads, writes), before=before, wait=wait, release=0))

    def _program(self, entries) -> list:
        prog = [isa.make("SYS", op="barrier") if e["unit"] == "sys" else
                isa.make(e["inst"].mnemonic, **{**{k: v for k, v in e["inst"].values.items() if k != "opcode"},
                                                  "wait": e["wait"], "release": e["release"]})
                for e in entries]
        if self.rng.random() < 0.5:
            prog.append(isa.make("SYS", op="end"))
        return prog


def random_jobs(seed: int, count: int, length: int = 8, *, mpe: bool = False) -> list[CoreJob]:
    """``count`` random programs with their images; ``mpe``: MM / MV among them (the images then
    carry the parameter area at PARAM_BASE)."""
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(count):
        prog = _Gen(rng, mpe).build(int(rng.integers(2, length + 1)))
        images = {}
        for ch in (0, 1):
            image = _image(rng)
            images[ch] = image[:PARAM_BASE] + _param_area(rng) if mpe else image
        jobs.append(CoreJob(prog, images))
    return jobs


def _differential(tiny_core, seed: int, count: int):
    """Random programs with MM / MV through the core with the matrix engine, against FuncSim."""
    jobs = random_jobs(seed, count, mpe=True)
    got, want = _run_mpe(tiny_core, jobs, pause=0.25, seed=seed)
    names = [f"random program {k} (seed {seed}): " + "; ".join(isa.disassemble(j.program)) if hasattr(isa, "disassemble")
             else f"random program {k} (seed {seed})" for k, j in enumerate(jobs)]
    for w, j in zip(want, jobs):
        assert w["state"] == STATES.index("done"), f"the generator made an invalid program: {w['message']}"
    _check(jobs, got, want, names)


@on_tiny_core
def test_random_programs_match_funcsim(tiny_core):
    """Hypothesis draws the seeds; every example's programs run in one simulation (one build)."""
    from hypothesis import given, settings, strategies as st

    seeds = []

    @settings(max_examples=3 if REDUCED else 6, deadline=None, database=None)
    @given(st.integers(0, 2**31 - 1))
    def collect(seed):
        seeds.append(seed)

    collect()
    for seed in seeds:
        _differential(tiny_core, seed, 4 if REDUCED else 8)


@on_tiny_core
@pytest.mark.slow
def test_random_programs_match_funcsim_long(tiny_core):
    for seed in range(2 if REDUCED else 10):
        _differential(tiny_core, 1000 + seed, 10 if REDUCED else 25)


# ---- olivine hdl ------------------------------------------------------------------------------------

def test_hdl_writes_verilog_and_manifest(tmp_path):
    from olivine.cli import main
    from olivine.hw.config import AcceleratorConfig

    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(_config().to_dict()))
    out = tmp_path / "hdl"
    assert main(["hdl", "--board", "u280", "--config", str(cfg_file), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["top"] == "olivine_core"
    assert AcceleratorConfig.from_dict(manifest["config"]) == _config()
    assert manifest["config_digest"] == _config().digest()
    text = (out / "olivine_core.v").read_text()
    names = {p["name"] for p in manifest["ports"]}
    for port in ("clk", "rst", "interrupt", "s_axi_control__awaddr", "s_axi_control__rdata", "m_axi_hbm0__araddr",
                 "m_axi_hbm1__wstrb", "m_axi_hbm1__bid"):
        assert port in names and port in text
    assert {r["name"] for r in manifest["registers"]} == {r.name for r in core_regs.REGISTERS}
    # a foreign directory is refused (before the conversion)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    assert main(["hdl", "--config", str(cfg_file), "-o", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "x"


def test_hdl_bad_config_is_a_usage_message(tmp_path, capsys):
    from olivine.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"axi_data_width": 100}))
    assert main(["hdl", "--config", str(bad), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("olivine hdl: ") and "axi_data_width=100" in err
    assert not (tmp_path / "o").exists()


@requires_verilator
@pytest.mark.xdist_group(COCOTB_CORE_GROUP)
def test_core_verilog_is_lint_clean():
    from olivine.hw.core import LINT_WAIVERS
    from olivine.hw.export import lint
    from olivine.sim.core_rtl import core_verilog

    lint(core_verilog(_config(), sfu_ops=SFU_OPS, hbm_channel_bytes=CHANNEL_BYTES), "olivine_core",
         waivers=LINT_WAIVERS)


# ---- W4A4 (afmt=ovp4) on the matrix engine's OVP array, through the core ------------------------

def _w4a4_image(rng, specs) -> dict[int, bytes]:
    """Random fixed32 images with, per (channel, address, rows, cols, normal), OVP4 pair codes
    (outlier-heavy, golden's encoder) and per (channel, address, entries) requantization entries
    with multipliers below 2**31 (the engine's data rule)."""
    from olivine.sim import mpe_check as mc

    img = {ch: bytearray(_image(rng)) for ch in (0, 1)}
    for kind, ch, addr, *rest in specs:
        if kind == "codes":
            rows, cols, normal = rest
            block = mc.ovp_codes(rng, rows, cols, normal, outliers=0.4).tobytes()
        else:
            (entries,) = rest
            ent = np.zeros((entries, 4), np.int64)
            ent[:, 0] = rng.integers(-(1 << 20), 1 << 20, entries)
            ent[:, 1] = rng.integers(1 << 30, 1 << 31, entries)
            ent[:, 2] = rng.integers(30, 46, entries)
            block = (ent & 0xFFFFFFFF).astype("<u4").tobytes()
        img[ch][addr: addr + len(block)] = block
    return {ch: bytes(b) for ch, b in img.items()}


def _w4a4_programs(rng):
    """(program, image) pairs: MM with fixed32 + bias (the compiler's form), MV with int32 accumulate,
    MM with int8 out; codes at unaligned buffer addresses; both normal types on both operands."""
    M = isa.make
    LDU, STU, MPE = 0b0001, 0b0010, 0b0100
    progs = {}
    # m=3, n=5, K=48: A 3 x 24 B, W 5 x 24 B
    progs["mm_w4a4_fixed32_bias"] = ([
        M("LD", target="weight", channel=0, hbm_addr=0, buf_addr=7, length=5 * 24),
        M("LD", target="bias", channel=0, hbm_addr=1024, buf_addr=32, length=5 * 16),
        M("LD", target="act", channel=1, hbm_addr=64, buf_addr=101, length=3 * 24, release=MPE),
        M("MM", wfmt="ovp4", normal="int4", afmt="ovp4", anormal="flint4", out="fixed32", bias=1, k_blocks=3, m=3,
          n=5, a_addr=101, b_addr=7, out_addr=2048, bias_addr=2, wait=LDU, release=STU),
        M("ST", source="act", channel=1, hbm_addr=30000, buf_addr=2048, length=60, wait=MPE),
        M("SYS", op="end"),
    ], [("codes", 0, 0, 5, 48, 0), ("entries", 0, 1024, 5), ("codes", 1, 64, 3, 48, 1)])
    # MV m=1, n=6, K=64, accumulate onto a fixed32 vector
    progs["mv_w4a4_accumulate"] = ([
        M("LD", target="weight", channel=1, hbm_addr=100, buf_addr=512, length=6 * 32),
        M("LD", target="act", channel=0, hbm_addr=300, buf_addr=1030, length=32),
        M("LD", target="act", channel=0, hbm_addr=2000, buf_addr=4096, length=24, release=MPE),
        M("MV", wfmt="ovp4", normal="flint4", afmt="ovp4", anormal="int4", out="int32", accumulate=1, k_blocks=4,
          m=1, n=6, a_addr=1030, b_addr=512, out_addr=4096, wait=LDU, release=STU),
        M("ST", source="act", channel=0, hbm_addr=31000, buf_addr=4096, length=24, wait=MPE),
        M("SYS", op="end"),
    ], [("codes", 1, 100, 6, 64, 1), ("codes", 0, 300, 1, 64, 0)])
    # MM m=4, n=3, K=16 (one block: a half segment), int8 out
    progs["mm_w4a4_int8"] = ([
        M("LD", target="weight", channel=0, hbm_addr=40, buf_addr=0, length=3 * 8),
        M("LD", target="bias", channel=1, hbm_addr=4000, buf_addr=0, length=3 * 16),
        M("LD", target="act", channel=1, hbm_addr=200, buf_addr=333, length=4 * 8, release=MPE),
        M("MM", wfmt="ovp4", normal="flint4", afmt="ovp4", anormal="flint4", out="int8", k_blocks=1, m=4, n=3,
          a_addr=333, b_addr=0, out_addr=3001, bias_addr=0, wait=LDU, release=STU),
        M("ST", source="act", channel=0, hbm_addr=32000, buf_addr=3001, length=12, wait=MPE),
        M("SYS", op="end"),
    ], [("codes", 0, 40, 3, 16, 1), ("entries", 1, 4000, 3), ("codes", 1, 200, 4, 16, 1)])
    return {name: CoreJob(p, _w4a4_image(rng, specs)) for name, (p, specs) in progs.items()}


@on_tiny_core
def test_w4a4_programs_match_funcsim(tiny_core):
    """afmt=ovp4 MM / MV on the matrix engine's OVP array path in the whole core (LD, the engine
    frozen by the core's arbitration, ST), every HBM and buffer byte against FuncSim."""
    rng = np.random.default_rng(31)
    jobs = _w4a4_programs(rng)
    got, want = _run_mpe(tiny_core, list(jobs.values()), seed=2)
    _check(list(jobs.values()), got, want, list(jobs))
    for name, g in zip(jobs, got):
        assert g["regs"]["state"] == STATES.index("done"), (name, g["regs"])
        assert g["regs"]["mpe_instructions"] == 1 and g["regs"]["unit_error"] == 0, name


def _compiled_w4a4_job(cap, rows: int) -> CoreJob:
    """One compiled W4A4 MM with its real operands (calibrated OVP4 activation codes, ovp4 weights,
    folded requantization multipliers), cut to its first ``rows`` output columns to fit the test
    configuration's buffers: LD weights / entries / codes, the MM with the compiled fields (addresses
    moved, ldo = rows), ST of the fixed32 output."""
    M = isa.make
    LDU, STU, MPE = 0b0001, 0b0010, 0b0100
    f = cap["fields"]
    half_k, m = 8 * f["k_blocks"], f["m"]
    w, ent, a = cap["w"][: rows * half_k], cap["entries"][: 16 * rows], cap["a"]
    img0 = bytearray(8192 + len(ent))
    img0[: len(w)] = w.tobytes()
    img0[8192:] = ent.tobytes()
    fields = {k: f[k] for k in ("wfmt", "afmt", "normal", "anormal", "out", "bias", "accumulate", "k_blocks", "m",
                                "mode", "sparse")}
    prog = [
        M("LD", target="weight", channel=0, hbm_addr=0, buf_addr=0, length=len(w)),
        M("LD", target="bias", channel=0, hbm_addr=8192, buf_addr=0, length=len(ent)),
        M("LD", target="act", channel=1, hbm_addr=0, buf_addr=0, length=len(a), release=MPE),
        M("MM", **fields, n=rows, ldo=rows, a_addr=0, b_addr=0, out_addr=8192, bias_addr=0, wait=LDU, release=STU),
        M("ST", source="act", channel=1, hbm_addr=20000, buf_addr=8192, length=4 * m * rows, wait=MPE),
        M("SYS", op="end"),
    ]
    return CoreJob(prog, {0: bytes(img0), 1: a.tobytes()})


@on_tiny_core
@pytest.mark.slow
def test_compiled_glassllm_w4a4_mms_match_funcsim(tiny_core, tmp_path):
    """MMs of a compiled glassllm W4A4 program (``olivine compile --preset w4a4-ovp``): their
    operands as the compiled prefill left them in FuncSim (real calibrated activation codes of both
    normal types, real ovp4 weights and multipliers), run through the whole core on the OVP array
    path; every HBM and buffer byte equal to FuncSim's."""
    from olivine.compiler.compile import compile_main
    from olivine.sim.mpe_check import compiled_w4a4_mms

    out = tmp_path / "w4a4"
    assert compile_main("glassllm", "u280", preset="w4a4-ovp", out=str(out), config="small", max_context=16,
                        max_prompt=8, quiet=True) == 0
    caps = compiled_w4a4_mms(out)
    assert caps and all(c["fields"]["out"] == 1 for c in caps)  # the compiler's form: fixed32
    picks = [next(c for c in caps if c["fields"]["anormal"] == 1 and c["fields"]["k_blocks"] == 8),
             next(c for c in caps if c["fields"]["anormal"] == 0 and c["fields"]["k_blocks"] == 8)]
    longest = max(caps, key=lambda c: c["fields"]["k_blocks"])
    rows = 8 if REDUCED else 32   # output columns of each MM kept (reduced: one in four)
    jobs = [_compiled_w4a4_job(c, rows) for c in picks] + [_compiled_w4a4_job(longest, rows // 2)]
    got, want = _run_mpe(tiny_core, jobs, seed=3)
    names = ["flint4 acts K=128", "int4 acts K=128", f"K={16 * longest['fields']['k_blocks']}"]
    _check(jobs, got, want, names)
    for name, g, w in zip(names, got, want):
        assert g["regs"]["state"] == STATES.index("done") and g["regs"]["unit_error"] == 0, (name, g["regs"])
        out_bytes = w["hbm"][1][20000: 20000 + 4 * 32 * rows // 2]
        assert np.any(out_bytes != 0), f"{name}: the MM wrote zeros only"


# ---- the cocotb HBM model's read latency and SLVERR windows (sim/tb_core.py HbmChannel) -----------

@on_cocotb_core
def test_axi_slverr_faults_the_ld_or_st_with_the_bus_code_and_read_latency_holds():
    """An SLVERR window in channel 1 (sim/tb_core.py HbmChannel): an LD reading it and an ST writing
    it fault with UnitError.BUS (unit_error = unit | 4 << 8, cause unit_fault, offset = the
    instruction's word), the other jobs of the run unaffected; with a read latency of 40 cycles an
    LD of one beat is busy at least 40 cycles and loads what FuncSim loads."""
    from olivine.hw.core import UnitError

    M = isa.make
    rng = np.random.default_rng(11)
    window = (1, 36864, 36864 + 256)
    jobs = {
        "ld_slverr": CoreJob([M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=64),
                              M("LD", target="act", channel=1, hbm_addr=36800, buf_addr=256, length=128),
                              M("SYS", op="end")], {0: _image(rng), 1: _image(rng)}),
        "st_slverr": CoreJob([M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=64, release=0b0010),
                              M("ST", source="act", channel=1, hbm_addr=36900, buf_addr=0, length=64, wait=0b0001),
                              M("SYS", op="end")], {0: _image(rng), 1: _image(rng)}),
        "latency": CoreJob([M("LD", target="act", channel=1, hbm_addr=48, buf_addr=32, length=16),
                            M("SYS", op="end")], {0: _image(rng), 1: _image(rng)}),
    }
    got = run_jobs(_config(), list(jobs.values()), channel_bytes=CHANNEL_BYTES, sfu_ops=SFU_OPS,
                   read_latency=40, slverr=(window,))
    res = dict(zip(jobs, got))
    for name, unit, k in (("ld_slverr", "ld", 1), ("st_slverr", "st", 1)):
        regs = res[name]["regs"]
        offset = isa.program_offsets(jobs[name].program)[k]
        assert regs["state"] == STATES.index("error") and regs["cause"] == STATUS_CAUSES.index("unit_fault"), (name, regs)
        assert regs["unit_error"] == isa.UNITS.index(unit) | UnitError.BUS << 8 and regs["offset"] == offset, (name, regs)
    want = funcsim_jobs(_config(), [jobs["latency"]], channel_bytes=CHANNEL_BYTES)
    _check([jobs["latency"]], [res["latency"]], want, ["latency"])
    assert res["latency"]["regs"]["ld_busy"] >= 40, res["latency"]["regs"]["ld_busy"]
