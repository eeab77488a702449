"""olivine run --backend rtl (sim/rtl_backend.py): glassllm through the RTL core, bit for bit.

The core is the ``tiny`` configuration (hw/config.py) with the matrix engine and glassllm's RoPE
ROM; its Verilog conversion and Verilator build are cached on disk (~1.5 min + several minutes the
first time). Under CI (OLIVINE_REDUCED=1) the end-to-end case runs one preset, a short prompt and
few tokens; the full proof (4 presets and W4A4, 32 tokens) is ``slow``; so is w4a8-ovp-g128 (per-group
weight multipliers, ``wgroup``; reduced: 3 tokens). SmolLM2-135M cut to one decoder
layer (real shapes and head, its own core) runs its prefill and a decode step, unreduced only.
"""

import json

import numpy as np
import pytest

from olivine.hw import isa
from olivine.hw.config import load_config
from tests.helpers import REDUCED, TINY_CORE_GROUP, requires_verilator, tiny_core_harness


def rtl(fn):
    """An RTL test on the tiny core: in its xdist group (one worker builds the core, tests/helpers.py)."""
    return requires_verilator(pytest.mark.rtl(pytest.mark.xdist_group(TINY_CORE_GROUP)(fn)))


FULL_PRESETS = ("w4a8-ovp", "w4a8-int4", "w8a8", "w4a8-ovp-8:16")


@pytest.fixture(scope="module")
def harness():
    return tiny_core_harness()[1]


def _check(res):
    assert res["tokens_equal_isa"] and res["logits_equal_isa"], (res["first_diff_isa"], res["tokens"], res["isa_tokens"])
    assert res["tokens_equal_golden"] and res["logits_equal_golden"], (res["first_diff_golden"], res["tokens"],
                                                                        res["golden_tokens"])
    cyc = res["cycles"]
    assert cyc["prefill"] > 0 and len(cyc["decode"]) == res["max_new_tokens"] - 1 and all(c > 0 for c in cyc["decode"])
    # every unit did work, and its busy cycles fit in the run
    for unit, c in cyc["units"].items():
        assert c["instructions"] > 0 and 0 < c["busy"] <= cyc["total"], (unit, c)


@rtl
def test_glassllm_rtl_equals_isa_and_golden_reduced(harness):
    from olivine.sim.rtl_backend import check_rtl

    _check(check_rtl(preset="w8a8", prompt="Once", max_new_tokens=3))


@rtl
@pytest.mark.slow
@pytest.mark.parametrize("preset", FULL_PRESETS[:1] if REDUCED else FULL_PRESETS)
def test_glassllm_rtl_equals_isa_and_golden_32_tokens(harness, preset):
    from olivine.sim.rtl_backend import check_rtl

    _check(check_rtl(preset=preset, prompt="Once upon a time", max_new_tokens=4 if REDUCED else 32))


@rtl
@pytest.mark.slow
def test_glassllm_w4a4_rtl_equals_isa_and_golden(harness):
    """W4A4 (``w4a4-ovp``): every decoder linear's input OVP4-encoded by the SFU's quant op and
    multiplied with afmt=ovp4 on the matrix engine's OVP array (hw/mpe_ovp.py); lm_head W8A8. The
    same core as the other presets (glassllm's RoPE ROM). Its prefill is 3.2M cycles (the OVP
    array's schedule), so CI (reduced) generates 2 tokens, the full run 32."""
    from olivine.sim.rtl_backend import check_rtl

    res = check_rtl(preset="w4a4-ovp", prompt="Once upon a time", max_new_tokens=2 if REDUCED else 32)
    _check(res)
    assert res["cycles"]["units"]["mpe"]["instructions"] > 0


@rtl
@pytest.mark.slow
def test_glassllm_per_group_multipliers_rtl_equals_isa_and_golden(harness):
    """w4a8-ovp-g128 (one 4-bit multiplier per 128 weights of a row, docs/contract.md 2a): the
    compiled MM / MV carry ``wgroup=g128`` (the down projection's K = 341 ends in a partial group)
    and the RTL core's matrix engine scales each block sum by its group's multiplier; tokens and
    every int32 logit equal the functional simulator's and golden's. Same tiny core as the other
    glassllm cases (no extra build); under CI a short prompt and 3 tokens."""
    from olivine.compiler.compile import compile_model
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qcache import quantize_cached
    from olivine.sim.rtl_backend import check_rtl

    preset = "w4a8-ovp-g128"
    comp = compile_model(spec_from_qllama(quantize_cached(load_model("glassllm"), preset), "glassllm"),
                         load_config("tiny"), max_context=48, max_prompt=16, prefill_step=16)
    grouped = [i for prog in comp.programs.values() for i in isa.decode_program(prog.words)
               if i.mnemonic in ("MM", "MV") and i.enum("wgroup") == "g128"]
    assert grouped, "the preset's linears must compile to wgroup=g128 MM / MV"
    res = check_rtl(preset=preset, prompt="Once" if REDUCED else "Once upon a time",
                    max_new_tokens=3 if REDUCED else 16)
    _check(res)


@rtl
@pytest.mark.models
@pytest.mark.slow
def test_smollm2_one_layer_prefill_and_decode_rtl_equals_isa_and_golden():
    """SmolLM2-135M cut to its first decoder layer (its real shapes: dim 576, FFN 1536, 9 query / 3
    KV heads of 64, the tied 49,152-word head), w4a8-ovp, compiled for ``tiny``: the 5-token prefill
    and one decode step through the RTL core give golden's and the functional simulator's tokens and
    every int32 logit (7.1M cycles; 1.7-2.3 min on the loaded 2-core machine, most of it the RTL).
It needs its own core (SmolLM2's RoPE ROM, 32 positions): about 6 min of Verilator build the first
time, cached in ~/.cache/olivine; so CI (reduced) skips it."""
    if REDUCED:  # before the imports: transformers alone takes 5-40 s to import
        pytest.skip("reduced run: the SmolLM2 core's first Verilator build (~6 min) plus the ~2 min run exceed "
                    "CI's budget; run with OLIVINE_REDUCED=0")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from olivine.sim.rtl_backend import check_rtl

    res = check_rtl(model="smollm2", layers=1, preset="w4a8-ovp", prompt="The capital of France is",
                    max_new_tokens=2, max_context=32)
    assert res["n_layers"] == 1 and res["prompt_tokens"] == 5
    _check(res)


def _fault_program():
    M = isa.make
    return [M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=64, release=0b1000),
            M("MISC", op="add", src0=2, src1=0, dst=512, rows=1, cols=4, wait=0b0001),
            M("SYS", op="end")]


@rtl
def test_fault_reports_the_functional_simulators_instruction(harness):
    from olivine.sim.fastsim import sim
    from olivine.sim.funcsim import FuncSim, SimError
    from olivine.sim.rtl_backend import fault_message

    prog = _fault_program()
    words = isa.encode_program(prog)
    rng = np.random.default_rng(3)
    image = {k: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for k in range(2)}
    with pytest.raises(SimError) as want:
        FuncSim(load_config("tiny"), [4096, 4096], image).run(words)
    run = sim(harness, words, image, used_bytes=[4096, 4096], io_base=0, vocab=16, budget=100_000)
    got = fault_message(run.result.registers, isa.decode_program(words))
    where = str(want.value).split("): ")[0] + ")"
    assert where.startswith("instruction 1 at word ") and got.startswith(where + ": "), (got, str(want.value))
    assert "SFU unit faulted with error 5 (UNALIGNED)" in got


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """glassllm w8a8 for the tiny core, prefill buckets of 16 tokens (olivine compile's are 128: the
    RTL runs a whole bucket, 8.7M cycles), context 32."""
    from olivine.compiler.artifact import write_artifact
    from olivine.compiler.compile import compile_model, to_artifact
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qcache import quantize_cached

    loaded = load_model("glassllm")
    comp = compile_model(spec_from_qllama(quantize_cached(loaded, "w8a8"), "glassllm"), load_config("tiny"),
                         max_context=32, max_prompt=16, prefill_step=16)
    art = to_artifact(comp)
    art.meta["model"]["load"] = "glassllm"
    art.meta["model"]["eos_id"] = int(loaded.tokenizer.eos_id)
    out = tmp_path_factory.mktemp("rtl") / "glass"
    write_artifact(str(out), art)
    return str(out)


@rtl
def test_budget_overrun_stops_with_a_clear_message(harness, artifact):
    from olivine.sim.funcsim import SimError
    from olivine.sim.rtl_backend import RtlRuntime

    rt = RtlRuntime.from_artifact(artifact, budget=5_000, harness=harness)
    with pytest.raises(SimError, match=r"program prefill_\d+ did not finish within the cycle budget of 5,000 "
                                       r"cycles on the RTL core .*--budget CYCLES"):
        rt.prefill([1, 2, 3])


@rtl
def test_cli_json_and_trace(harness, artifact, tmp_path, capsys):
    from olivine.cli import main

    assert main(["run", artifact, "--prompt", "Once", "--max-new-tokens", "2", "--json"]) == 0
    isa_run = json.loads(capsys.readouterr().out)
    trace = tmp_path / "run.json"
    assert main(["run", artifact, "--backend", "rtl", "--prompt", "Once", "--max-new-tokens", "2", "--json",
                 "--trace", str(trace)]) == 0
    rtl_run = json.loads(capsys.readouterr().out)
    assert rtl_run["tokens"] == isa_run["tokens"] and len(rtl_run["tokens"]) == 2
    assert rtl_run["text"] == isa_run["text"] and "cycles" in rtl_run and "cycles" not in isa_run
    cyc = rtl_run["cycles"]
    assert cyc["total"] == cyc["prefill"] + sum(cyc["decode"]) and len(cyc["decode"]) == 1
    assert cyc["tokens_per_s_at_clock"] == pytest.approx(2 / (cyc["total"] / 225e6))
    events = json.loads(trace.read_text())["traceEvents"]
    assert (tmp_path / "run.png").stat().st_size > 1000
    spans = [e for e in events if e.get("ph") == "X" and e["cat"] in isa.UNITS]
    for unit in isa.UNITS:  # one span per instruction the core counted, inside the run
        mine = [e for e in spans if e["cat"] == unit]
        assert len(mine) == cyc["units"][unit]["instructions"], unit
        assert all(0 <= e["args"]["start_cycle"] < e["args"]["end_cycle"] for e in mine)
        # a unit is busy from the handshake to its done pulse: the spans' cycles are its busy counter
        assert sum(e["args"]["cycles"] for e in mine) == pytest.approx(cyc["units"][unit]["busy"],
                                                                         abs=len(mine)), unit


def test_trace_is_refused_on_isa(artifact):
    from olivine.sim.runtime import RunError, run_main

    with pytest.raises(RunError, match="has no schedule"):
        run_main(artifact, "Once", 2, trace="t.json")


def test_probed_top_passes_ports_through_and_adds_probes():
    from olivine.sim.fastsim import discover_ports, parse_timeline, port_binding
    from olivine.sim.rtl_backend import PROBED_TOP, UNIT_PROBES, probed_top
    from tests.rtl.standin_core import STANDIN_TOP, StandInCore
    from olivine.hw.export import verilog

    core = verilog(StandInCore(), STANDIN_TOP)
    inner, outer = discover_ports(core, STANDIN_TOP), discover_ports(probed_top(core, STANDIN_TOP), PROBED_TOP)
    assert outer.probe_units == list(UNIT_PROBES) and inner.probe_units == []
    assert {k: v for k, v in outer.ports.items() if not k.startswith("probe_")} == dict(inner.ports)
    assert outer.ports["probe_mpe_offset"] == ("output", 24)
    binding = port_binding(outer)
    assert "#define OLIVINE_PROBES 4" in binding and "probes[3].end = Pin{(void*)&top->probe_sfu_end, 1};" in binding
    # each unit's ends pair with its starts in order; one still running has no end
    got = parse_timeline("S mpe 10 7\nS ld 11 3\nE ld 20\nS ld 21 5\nE mpe 30\n")
    assert got == [("mpe", 7, 10, 30), ("ld", 3, 11, 20), ("ld", 5, 21, None)]


# ---- the core's arbitration and registers, on the backend's core (hw/core.py, hw/controller.py) -----

def _mm_with_st_program(source: str):
    """LD weights / meta / bias / INT8 activations, then an MM (4 x 16, K = 64) and, at the same
    time (both wait only for the LDs), an ST of the ``source`` buffer; the MM's output stored last."""
    M = isa.make
    LDU, STU, MPE = 0b0001, 0b0010, 0b0100
    m, n, kb = 4, 16, 4
    k = 16 * kb
    rng = np.random.default_rng(5)
    img = {c: bytearray(rng.integers(-100, 100, 65536).astype(np.int8).tobytes()) for c in (0, 1)}
    act = np.zeros(m * k + 3 * m, np.uint8)  # INT8 block: codes, exponents 0, mantissas 0
    act[:m * k] = rng.integers(-100, 100, m * k).astype(np.int8).view(np.uint8)
    img[1][:act.size] = act.tobytes()
    length = n * k if source == "weight" else 256
    prog = [M("LD", target="weight", channel=0, hbm_addr=0, buf_addr=0, length=n * k),
            M("LD", target="meta", channel=0, hbm_addr=4096, buf_addr=0, length=256),
            M("LD", target="bias", channel=0, hbm_addr=8192, buf_addr=0, length=256),
            M("LD", target="act", channel=1, hbm_addr=0, buf_addr=0, length=act.size, release=MPE | STU),
            M("MM", wfmt="int8", afmt="int8", out="int32", k_blocks=kb, m=m, n=n, a_addr=0, b_addr=0,
              out_addr=8192, wait=LDU, release=STU),
            M("ST", source=source, channel=1, hbm_addr=20000, buf_addr=0, length=length, wait=LDU),
            M("ST", source="act", channel=1, hbm_addr=30000, buf_addr=8192, length=4 * m * n, wait=MPE),
            M("SYS", op="end")]
    return prog, {c: bytes(b) for c, b in img.items()}


@rtl
@pytest.mark.parametrize("source", ["weight", "bias"])
def test_st_of_the_weight_or_bias_buffer_leaves_the_matrix_engine_running(harness, source):
    """CORE_INTERFACE.md: the engine's weight / meta / bias reads are never frozen. An ST reading
    that buffer while an MM streams its weights waits for the port instead (StoreEngine buf.busy);
    before, the engine lost a cycle per ST word (64 for the 1 KiB weight store). Every HBM byte
    equals FuncSim's, and the state and stuck registers say done, nothing stuck."""
    from olivine.hw.controller import STATES
    from olivine.sim.fastsim import sim
    from olivine.sim.funcsim import FuncSim

    prog, img = _mm_with_st_program(source)
    words = isa.encode_program(prog)
    fs = FuncSim(load_config("tiny"), [65536, 65536], img)
    fs.run(words)
    run = sim(harness, words, img, used_bytes=[65536, 65536], io_base=0, vocab=16, budget=200_000)
    regs = run.result.registers
    assert regs["state"] == STATES.index("done") and regs["mpe_instructions"] == 1 and regs["st_instructions"] == 2
    assert regs["mpe_stall_memory"] == 0, regs["mpe_stall_memory"]
    for c in (0, 1):
        assert np.array_equal(run.hbm[c], fs.hbm[c][:65536]), c
    # a run that ends done reports no stuck instruction: bit 31 (valid) clear; it read the SYS end's
    # offset as valid before (0x80000031); the offset bits keep the last instruction sampled
    assert not any(regs[f"stuck_{u}"] >> 31 for u in isa.UNITS), {u: hex(regs[f"stuck_{u}"]) for u in isa.UNITS}


@rtl
@pytest.mark.parametrize("channel", [2, 3, 7])
def test_prog_channel_beyond_the_channels_is_an_error_not_its_low_bits(harness, channel):
    """prog_channel names the program's HBM channel; one the core does not have ends the run at
    once (state error, cause prog_channel, nothing fetched), where the low bits of 2 and 3 named
    channels 0 and 1 before (the program in channel 0 ran)."""
    from olivine.hw import core_regs
    from olivine.hw.controller import STATES, STATUS_CAUSES
    from olivine.sim.fastsim import STATUS_REGISTERS
    from olivine.sim.rtl_backend import fault_message

    prog = [isa.make("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=64), isa.make("SYS", op="end")]
    words = isa.encode_program(prog).astype("<u4").tobytes()
    R = core_regs.offset
    writes = [(R("prog_addr_lo"), 4096), (R("prog_addr_hi"), 0), (R("prog_words"), len(words) // 4),
              (R("prog_channel"), channel), (R("watchdog"), 0)]
    reads = [(n, R(n)) for n in STATUS_REGISTERS] + [("ld_instructions", core_regs.unit_offset(0, "instructions")),
                                                       ("hbm0_read_bytes", core_regs.hbm_offset(0, "read_bytes"))]
    res = harness.run(loads=[(0, 4096, words), (1, 4096, words)], writes=writes, reads=reads, budget=20_000)
    regs = res.registers
    assert regs["state"] == STATES.index("error") and regs["cause"] == STATUS_CAUSES.index("prog_channel"), regs
    assert regs["ld_instructions"] == 0 and regs["hbm0_read_bytes"] == 0
    assert "not one of the core's HBM channels" in fault_message(regs, prog)
    # the same program from a channel the core has runs
    ok = harness.run(loads=[(1, 4096, words)], writes=writes[:3] + [(R("prog_channel"), 1), (R("watchdog"), 0)],
                     reads=reads, budget=20_000).registers
    assert ok["state"] == STATES.index("done") and ok["ld_instructions"] == 1, ok


# ---- waves as FST (sim/fastsim.py's fst variant: Verilator --trace-fst) ----------------------------

def test_fst_waves_without_the_lz4_headers_are_refused_before_any_build(monkeypatch, artifact):
    from olivine.sim import fastsim
    from olivine.sim.rtl import RtlBuildError
    from olivine.sim.runtime import RunError, run_main

    monkeypatch.setattr(fastsim, "have_lz4_header", lambda: False)
    with pytest.raises(RunError, match=r"--waves w\.fst: FST waves need the lz4 headers.*liblz4-dev.*\.vcd"):
        run_main(artifact, "Once", 2, backend="rtl", waves="w.fst")
    with pytest.raises(RtlBuildError, match="liblz4-dev"):  # refused before Verilator runs
        fastsim.build("module x(input clk); endmodule\n", "x", "fst")


def _fst_header(path) -> dict:
    """The FST header block (block type 0): start / end time and the counts of scopes and vars."""
    import struct

    raw = path.read_bytes()
    kind, _length, start, end, _endian, _memory, scopes, hier_vars, variables, blocks = struct.unpack(">BQQQdQQQQQ",
                                                                                                   raw[:73])
    return {"kind": kind, "start": start, "end": end, "scopes": scopes, "vars": variables, "blocks": blocks}


@rtl
@pytest.mark.slow
def test_fst_waves_of_the_core_record_the_whole_run(harness, tmp_path):
    """The probed core traced as FST (a separate Verilator build with --trace-fst, several minutes
    the first time; cached): the run's cycles are those of the untraced build, and the file holds
    the core's scopes and signals over the whole run (its header's end time covers every cycle)."""
    from olivine.sim import fastsim
    from olivine.sim.fastsim import HbmParams

    if not fastsim.have_lz4_header():
        pytest.skip(fastsim.FST_NEEDS_LZ4)
    if REDUCED:
        pytest.skip("reduced run: the core's FST build takes ~15 min the first time; run with OLIVINE_REDUCED=0")
    prog, img = _mm_with_st_program("weight")
    words = isa.encode_program(prog)
    hbm = HbmParams(channel_bytes=1 << 17)
    plain = harness.run_program(words, img, budget=100_000, hbm=hbm)
    path = tmp_path / "mm.fst"
    traced = harness.run_program(words, img, budget=100_000, hbm=hbm, waves=path)
    assert traced.cycles == plain.cycles and traced.registers["state"] == plain.registers["state"]
    head = _fst_header(path)
    assert head["kind"] == 0 and head["start"] == 0 and head["end"] >= traced.cycles, head
    assert head["scopes"] > 20 and head["vars"] > 1000, head
