"""olivine.sim.fastsim: the fast C++ harness and the debug handle, on the stand-in core.

The stand-in (tests/rtl/standin_core.py) has the core's ports and copies ``prog_words`` words
from channel ``prog_channel`` to the next channel with strictly serial AXI phases, so the HBM
model's parameters change its cycle count by amounts the model's definition predicts. Builds
are cached (content-addressed) in the shared olivine cache: one batch and one debug build of the
stand-in; of the RTL-test core (sim/core_rtl.py) one batch build (xdist group core_fast) and one
named debug build (group core_debug, fastsim.public_config: ~2.5-3 min cold on the 2-core machine).
"""

import re
import shutil

import numpy as np
import pytest

from olivine.hw import core_regs
from olivine.hw.export import verilog
from olivine.sim import fastsim
from olivine.sim.fastsim import CycleBudgetExceeded, DebugHandle, FastHarness, FastSimError, HbmParams
from tests.helpers import requires_verilator
from tests.rtl.standin_core import STANDIN_TOP, STROBE_MASK_OFFSET, StandInCore

pytestmark = [pytest.mark.rtl, requires_verilator]

BEAT = 8  # the stand-in's 64-bit AXI data
MAX_BURST = 16
CHANNEL = 1 << 16


@pytest.fixture(scope="module")
def standin_verilog():
    return verilog(StandInCore(channels=2, data_width=8 * BEAT, max_burst=MAX_BURST), STANDIN_TOP)


@pytest.fixture(scope="module")
def harness(standin_verilog):
    return FastHarness(standin_verilog)


def random_words(n, seed=3):
    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)


def bursts_of(address, beats):
    """The stand-in's bursts: at most MAX_BURST beats, never across 4 KiB."""
    count = 0
    while beats:
        n = min(beats, MAX_BURST, (4096 - address % 4096) // BEAT)
        count, beats, address = count + 1, beats - n, address + n * BEAT
    return count


def test_ports_are_discovered_from_the_verilog(standin_verilog):
    ports = fastsim.discover_ports(standin_verilog, STANDIN_TOP)
    assert ports.channels == 2 and ports.beat_bytes == BEAT and ports.has_interrupt
    assert ports.ports["s_axi_control__araddr"] == ("input", core_regs.ADDRESS_BITS)
    assert ports.ports["m_axi_hbm1__wstrb"] == ("output", BEAT)
    broken = standin_verilog.replace("m_axi_hbm1__rvalid", "m_axi_hbm1__rvalidx")
    with pytest.raises(FastSimError, match=r"m_axi_hbm1__rvalid\b"):
        fastsim.discover_ports(broken, STANDIN_TOP).check()
    with pytest.raises(FastSimError, match="does not define top module 'other'"):
        fastsim.discover_ports(standin_verilog, "other")
    # the manifest form (olivine hdl): ports listed as name, dir, width
    import hashlib

    manifest = {"top": STANDIN_TOP, "verilog_sha256": hashlib.sha256(standin_verilog.encode()).hexdigest(),
                "ports": [{"name": n, "dir": d[:-3] if d == "output" else "in", "width": w}
                          for n, (d, w) in ports.ports.items()]}
    assert dict(fastsim.ports_from_manifest(manifest, standin_verilog).ports) == dict(ports.ports)
    with pytest.raises(FastSimError, match="does not match its manifest"):
        fastsim.ports_from_manifest(manifest, standin_verilog + "\n")


def test_program_copied_counters_equal_bytes_moved(harness):
    words = random_words(1001)  # 4004 bytes: 501 beats, the last one half program
    image = {0: bytes(range(256)) * 20, 1: bytes(range(100))}  # channel 0 uses 5120 bytes
    address = fastsim.program_address(image, 0)
    assert address == 8192
    beats = -(-words.size * 4 // BEAT)
    result = harness.run_program(words, image, prog_channel=0, budget=200_000,
                                 hbm=HbmParams(channel_bytes=CHANNEL),
                                 dumps={"copy": (1, address, words.size * 4), "image1": (1, 0, 100),
                                        "source": (0, 0, len(image[0]))})
    assert result.status == "ok" and result.registers["state"] == 2  # done
    assert np.array_equal(result.dumps["copy"].view("<u4"), words)
    assert result.dumps["image1"].tobytes() == image[1]  # the copy wrote only its own range
    assert result.dumps["source"].tobytes() == image[0]
    assert result.registers["prog_addr"] == address
    moved = beats * BEAT
    assert result.hbm[0] == {"read_bytes": moved, "write_bytes": 0, "read_bursts": bursts_of(address, beats),
                             "write_bursts": 0, "slverr_beats": 0}
    assert result.hbm[1] == {"read_bytes": 0, "write_bytes": moved, "read_bursts": 0,
                             "write_bursts": bursts_of(address, beats), "slverr_beats": 0}
    # the core's own counters (read over AXI4-Lite) agree with the model's
    assert result.registers["hbm0_read_bytes"] == moved and result.registers["hbm1_write_bytes"] == moved
    # waiting on the interrupt pin: the harness' run cycles are the core's cycle count (+ the
    # cycle in which the write of ap_start completes)
    assert result.cycles in (result.run_cycles, result.run_cycles + 1)


def test_latency_and_bandwidth_change_cycles_as_the_model_says(harness):
    words = random_words(700)  # 350 beats from address 0: 22 bursts (21 x 16 + 14)
    beats, bursts = 350, bursts_of(0, 350)

    def cycles(**params):
        return harness.run_program(words, prog_channel=1, budget=100_000,
                                   hbm=HbmParams(channel_bytes=CHANNEL, **params)).cycles

    base = cycles(read_latency=4)
    # read latency: every burst's first R beat comes (L2 - L1) cycles later; nothing overlaps
    assert cycles(read_latency=15) - base == bursts * 11
    # half a beat per cycle: every beat after a burst's first waits one more cycle, R and W alike
    assert cycles(read_latency=4, bytes_per_cycle=BEAT // 2) - base == 2 * (beats - bursts)
    # a quarter: three more cycles per such beat
    assert cycles(read_latency=4, bytes_per_cycle=BEAT // 4) - base == 2 * 3 * (beats - bursts)
    # more than a beat per cycle streams at one beat per cycle, the bus' own limit
    assert cycles(read_latency=4, bytes_per_cycle=4 * BEAT) == base


def test_random_pauses_slow_the_run_but_move_the_same_bytes(harness):
    """HbmParams.pause: every AXI channel paused at random (the cocotb AxiRam's backpressure), the
    same seed giving the same run; the copy and the counters unchanged."""
    words = random_words(700)
    image = {0: bytes(range(256)) * 8}

    def run(**params):
        return harness.run_program(words, image, prog_channel=0, budget=200_000,
                                   hbm=HbmParams(channel_bytes=CHANNEL, read_latency=4, **params),
                                   dumps={"copy": (1, 4096, words.size * 4)})

    base, paused, again, other = run(), run(pause=0.3, seed=5), run(pause=0.3, seed=5), run(pause=0.3, seed=6)
    for r in (base, paused, other):
        assert r.registers["state"] == 2 and np.array_equal(r.dumps["copy"].view("<u4"), words)
        assert r.hbm == base.hbm  # the same bursts, beats and bytes, only later
    beats = -(-words.size * 4 // BEAT)
    # each R and W handshake waits for a valid / ready not paused (p = 0.3: ~0.4 cycles a beat)
    assert paused.cycles > base.cycles + beats // 5, (base.cycles, paused.cycles)
    assert again.cycles == paused.cycles and other.cycles != paused.cycles
    with pytest.raises(ValueError, match="pause is a probability below 1"):
        HbmParams(pause=1.0)


def test_cycle_budget_stops_a_hung_run_with_a_clear_message(harness):
    # prog_words = 0 makes the stand-in run forever
    with pytest.raises(CycleBudgetExceeded, match=r"cycle budget of 5,000 cycles") as info:
        harness.run(writes=[(core_regs.offset("prog_words"), 0)], budget=5000,
                    reads=[("state", core_regs.offset("state"))], hbm=HbmParams(channel_bytes=CHANNEL))
    assert info.value.result.status == "budget_exceeded"
    assert info.value.result.run_cycles == 5000
    assert info.value.result.registers["state"] == 1  # still running: the status was read afterwards


def test_access_outside_the_channel_answers_slverr(harness):
    start = CHANNEL - 8 * BEAT  # 8 beats inside channel 0, the next burst entirely outside
    source = random_words(16).tobytes()
    result = harness.run(
        loads=[(0, start, source)],
        writes=[(core_regs.offset("prog_addr_lo"), start), (core_regs.offset("prog_words"), 64),
                (core_regs.offset("prog_channel"), 0)],
        budget=10_000, reads=[("state", core_regs.offset("state"))],
        dumps={"copied": (1, start, 8 * BEAT)}, hbm=HbmParams(channel_bytes=CHANNEL))
    assert result.registers["state"] == 3  # error: the stand-in saw RRESP/BRESP = SLVERR
    assert result.hbm[0]["slverr_beats"] == MAX_BURST and result.hbm[1]["slverr_beats"] == MAX_BURST
    assert result.dumps["copied"].tobytes() == source  # the beats inside were copied


def test_wstrb_selects_the_bytes_written_and_counted(harness):
    source = random_words(64, seed=4).tobytes()  # 32 beats
    old = random_words(64, seed=5).tobytes()
    result = harness.run(
        loads=[(0, 0, source), (1, 0, old)],
        writes=[(core_regs.offset("prog_words"), 64), (STROBE_MASK_OFFSET, 0xF0)],  # low 4 lanes only
        budget=10_000, dumps={"after": (1, 0, len(old))}, hbm=HbmParams(channel_bytes=CHANNEL))
    after = result.dumps["after"].reshape(-1, BEAT)
    assert np.array_equal(after[:, :4], np.frombuffer(source, np.uint8).reshape(-1, BEAT)[:, :4])
    assert np.array_equal(after[:, 4:], np.frombuffer(old, np.uint8).reshape(-1, BEAT)[:, 4:])
    assert result.hbm[1]["write_bytes"] == 32 * 4  # the WSTRB bytes, as the core counts them
    assert result.hbm[0]["read_bytes"] == 32 * BEAT


def test_bad_requests_are_named(harness):
    with pytest.raises(FastSimError, match="channel 2 does not exist"):
        harness.run(loads=[(2, 0, b"x")], budget=10)
    with pytest.raises(FastSimError, match="lie outside the channel's 65536 bytes"):
        harness.run(dumps={"x": (0, CHANNEL - 4, 8)}, budget=10, hbm=HbmParams(channel_bytes=CHANNEL))
    with pytest.raises(ValueError, match="read_latency must be >= 1"):
        HbmParams(read_latency=0)
    with pytest.raises(FastSimError, match="name it .fst or .vcd"):
        harness.run(budget=10, waves="x.wav")


def test_build_is_cached(standin_verilog, harness):
    harness.executable  # built (or found) by the fixture's first use
    again = FastHarness(standin_verilog)
    assert again.executable == harness.executable and again.build_seconds == 0.0


def _build_dir(standin_verilog, options):
    """Where a build with ``options`` would be cached (computed, nothing built)."""
    calls = []
    real = fastsim.cached_build
    try:
        fastsim.cached_build = lambda build_dir, make, record=None: calls.append((build_dir, record)) or 0.0
        fastsim.build(standin_verilog, STANDIN_TOP, "batch", options=options)
    finally:
        fastsim.cached_build = real
    return calls[0]


def test_every_build_option_enters_the_build_hash(standin_verilog, monkeypatch, tmp_path):
    BuildOptions = fastsim.BuildOptions
    default_dir, _ = _build_dir(standin_verilog, BuildOptions())
    assert _build_dir(standin_verilog, None)[0] == default_dir == _build_dir(standin_verilog, fastsim.default_build_options())[0]
    assert _build_dir(standin_verilog, BuildOptions(cxx_opt=fastsim.DEFAULT_OPT))[0] == default_dir
    variants = [BuildOptions(cxx_opt="-O1"), BuildOptions(verilator_flags=("--x-initial", "fast")),
                BuildOptions(verilator_flags=("--output-split", "5000")), BuildOptions(cxx_flags=("-march=native",)),
                BuildOptions(profile_generate=True)]
    dirs = {default_dir} | {_build_dir(standin_verilog, o)[0] for o in variants}
    assert len(dirs) == 1 + len(variants)
    # -march=native is hashed as what it resolves to on this machine: another CPU, another model
    native = BuildOptions(cxx_flags=("-march=native",))
    here, record = _build_dir(standin_verilog, native)
    assert record["options"]["native_target"] == fastsim.native_target()
    monkeypatch.setattr(fastsim, "native_target", lambda: "another cpu")
    assert _build_dir(standin_verilog, native)[0] != here
    # a profile is hashed by content
    (tmp_path / "harness.gcda").write_bytes(b"one")
    first = _build_dir(standin_verilog, BuildOptions(profile_use=str(tmp_path)))[0]
    (tmp_path / "harness.gcda").write_bytes(b"two")
    assert _build_dir(standin_verilog, BuildOptions(profile_use=str(tmp_path)))[0] not in (first, default_dir)
    with pytest.raises(ValueError, match="choose -O1, -O2 or -O3"):
        BuildOptions(cxx_opt="-Ofast")
    with pytest.raises(FastSimError, match="holds no .gcda profile"):
        BuildOptions(profile_use=str(tmp_path / "none"))


def test_profile_guided_build_round_trip(standin_verilog):
    """An instrumented build writes its profile where its build lives; a build using that profile
    finds every object's profile (gcc names none missing) and copies the same bytes in the same cycles."""
    words = random_words(300)
    plain = FastHarness(standin_verilog).run_program(words, budget=100_000, hbm=HbmParams(channel_bytes=CHANNEL),
                                                     dumps={"copy": (1, 0, words.size * 4)})
    trained = FastHarness(standin_verilog, options=fastsim.BuildOptions(profile_generate=True))
    profile = trained.executable.parent / "profile"
    shutil.rmtree(profile, ignore_errors=True)  # one training run, not every earlier one's counts too
    trained.run_program(words, budget=100_000, hbm=HbmParams(channel_bytes=CHANNEL))
    assert sorted(p.name for p in profile.glob("*.gcda"))  # one per object, named relative to obj/
    tuned = FastHarness(standin_verilog, options=fastsim.BuildOptions(profile_use=str(profile)))
    got = tuned.run_program(words, budget=100_000, hbm=HbmParams(channel_bytes=CHANNEL),
                            dumps={"copy": (1, 0, words.size * 4)})
    log = (tuned.executable.parent / "build.log").read_text()
    assert "-fprofile-use=" in log and "profile count data file not found" not in log
    assert got.cycles == plain.cycles and np.array_equal(got.dumps["copy"].view("<u4"), words)


def test_debug_handle_step_peek_poke_and_buffers(standin_verilog):
    words = random_words(40)  # 20 beats: bursts of 16 and 4
    with DebugHandle(standin_verilog, hbm=HbmParams(channel_bytes=CHANNEL, read_latency=5)) as dbg:
        dbg.reset()
        assert dbg.peek("state") == 0
        before = dbg.cycle
        dbg.step(7)
        assert dbg.cycle == before + 7
        dbg.hbm_write(0, 0x1000, words.tobytes())
        dbg.write_register(core_regs.offset("prog_addr_lo"), 0x1000)
        dbg.write_register(core_regs.offset("prog_words"), 99)
        assert dbg.peek("prog_words") == 99
        dbg.poke("prog_words", words.size)  # the register block reads back the poked value
        assert dbg.read_register(core_regs.offset("prog_words")) == words.size
        assert dbg.read_register(core_regs.offset("magic")) == core_regs.MAGIC
        dbg.start()
        dbg.run_until({"m_axi_hbm0__arvalid": 1}, limit=100)
        assert dbg.peek("m_axi_hbm0__araddr") == 0x1000 and dbg.peek("m_axi_hbm0__arlen") == MAX_BURST - 1
        assert dbg.peek("state") == 1
        # through the AR handshake; the first R beat comes read_latency cycles after it
        assert dbg.run_to_handshake("m_axi_hbm0__arvalid", "m_axi_hbm0__arready", limit=100) == 1
        waited = dbg.run_until({"m_axi_hbm0__rvalid": 1}, limit=100)
        assert waited == 5
        dbg.wait_done(budget=10_000)
        assert dbg.peek("state") == 2
        assert np.array_equal(dbg.hbm_read(1, 0x1000, words.size * 4).view("<u4"), words)
        # the copy buffer holds the last burst (4 beats) over the first burst's tail
        buffer = dbg.read_memory("buffer")
        as_beats = [int(x) for x in words.view("<u8")]
        assert buffer == as_beats[16:20] + as_beats[4:16]
        assert dbg.read_memory("buffer", 2, 3) == as_beats[18:20] + as_beats[4:5]
        assert dbg.hbm_counters(0)["read_bytes"] == words.size * 4
        signals = dbg.signals()
        assert signals["TOP.olivine_core.beats_left"] == 32 and signals["TOP.olivine_core.buffer"] == -MAX_BURST
        assert not any("$" in name for name in signals)
        with pytest.raises(FastSimError, match="no public signal named 'TOP.olivine_core.nope'"):
            dbg.peek("nope")
        with pytest.raises(FastSimError, match=r"did not hold within 20 cycles"):
            dbg.run_until({"state": 3}, limit=20)
        with pytest.raises(ValueError, match="has 2 bits"):
            dbg.poke("state", 4)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["vcd", "fst"])
def test_waves_are_recorded_without_changing_timing(harness, tmp_path, fmt):
    words = random_words(64)
    plain = harness.run_program(words, budget=10_000, hbm=HbmParams(channel_bytes=CHANNEL))
    path = tmp_path / f"copy.{fmt}"
    try:
        result = harness.run_program(words, budget=10_000, hbm=HbmParams(channel_bytes=CHANNEL), waves=path,
                                     dumps={"copy": (1, 0, 256)})
    except fastsim.RtlBuildError as exc:
        if "liblz4-dev" in str(exc):
            pytest.skip(str(exc))
        raise
    assert result.cycles == plain.cycles  # tracing observes, it does not change timing
    assert np.array_equal(result.dumps["copy"].view("<u4"), words)
    head = path.read_bytes()[:4096]
    if fmt == "vcd":
        assert b"$var" in head and b"m_axi_hbm0__araddr" in head
    else:
        assert path.stat().st_size > 1000 and head[0] == 0  # FST starts with its header block (type 0)


# ---- the core (hw/core.py), once merged ---------------------------------------------------------

CORE_CHANNEL_BYTES = 1 << 16
CORE_SFU_OPS = ("add", "mul", "copy", "silu")


@pytest.fixture(scope="module")
def core_harness():
    core_rtl = pytest.importorskip("olivine.sim.core_rtl", reason="the core (hw/core.py) is not merged")
    config = core_rtl.rtl_test_config()
    text = core_rtl.core_verilog(config, sfu_ops=CORE_SFU_OPS, hbm_channel_bytes=CORE_CHANNEL_BYTES)
    return config, FastHarness(text)


@pytest.mark.xdist_group("core_fast")  # one worker builds the core (tests/conftest.py)
def test_core_programs_match_funcsim_on_the_fast_harness(core_harness):
    from olivine.hw.controller import STATES
    from olivine.sim.core_rtl import CoreJob, compare, funcsim_jobs
    from tests.test_hw_core import _image, _programs

    config, harness = core_harness
    rng = np.random.default_rng(9)
    progs = _programs()
    jobs = [CoreJob(p, {0: _image(rng), 1: _image(rng)}, prog_channel=1 if name == "no_end" else 0)
            for name, p in progs.items()]
    want = funcsim_jobs(config, jobs, channel_bytes=CORE_CHANNEL_BYTES)
    problems = []
    for name, job, w in zip(progs, jobs, want):
        result = harness.run_program(job.words(), job.image, prog_channel=job.prog_channel, budget=200_000,
                                     hbm=HbmParams(channel_bytes=CORE_CHANNEL_BYTES, read_latency=12),
                                     dumps={f"hbm{k}": (k, 0, CORE_CHANNEL_BYTES) for k in range(config.hbm_channels)})
        got = {"regs": result.registers, "timeout": False, "hbm": [result.dumps[f"hbm{k}"] for k in range(config.hbm_channels)]}
        problems += [f"{name}: {p}" for p in compare(got, w, data=False)]
        for k in range(config.hbm_channels):
            if not np.array_equal(got["hbm"][k], w["hbm"][k]):
                problems.append(f"{name}: HBM channel {k} differs from the functional simulator")
            # the model's counters and the core's own agree (reads include the program fetch)
            assert result.hbm[k]["read_bytes"] == result.registers[f"hbm{k}_read_bytes"], (name, k)
            assert result.hbm[k]["write_bytes"] == result.registers[f"hbm{k}_write_bytes"] == w["hbm_written"][k], (name, k)
        assert result.registers["state"] == STATES.index("done"), name
    assert not problems, "\n".join(problems)


@pytest.mark.xdist_group("core_fast")  # one worker builds the core (tests/conftest.py)
def test_unit_streams_name_the_cores_instruction_handshakes(core_harness):
    # DebugHandle.next_instruction runs to these valid/ready pairs: the controller's streams, wires
    # of the core's top module (the probed top of sim/rtl_backend.py times the same handshakes)
    config, harness = core_harness
    text = harness.verilog_text
    start = re.search(r"^module olivine_core\(", text, re.M)
    body = text[start.start():text.index("endmodule", start.start())]
    for unit, pair in fastsim.UNIT_STREAMS.items():
        for name in pair:
            assert re.search(rf"^\s*wire (\[\d+:0\] )?{name};", body, re.M), (unit, name)


@pytest.mark.xdist_group("core_fast")  # one worker builds the core (tests/conftest.py)
def test_core_error_and_budget_on_the_fast_harness(core_harness):
    from olivine.hw import isa
    from olivine.hw.controller import STATES, STATUS_CAUSES

    _, harness = core_harness
    copy = isa.encode_program([isa.make("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=4096,
                                        release=0b0010),
                               isa.make("ST", source="act", channel=1, hbm_addr=0, buf_addr=0, length=4096,
                                        wait=0b0001), isa.make("SYS", op="end")])
    with pytest.raises(CycleBudgetExceeded, match="cycle budget of 100 cycles") as info:
        harness.run_program(copy, budget=100, hbm=HbmParams(channel_bytes=CORE_CHANNEL_BYTES))
    assert info.value.result.registers["state"] == STATES.index("running")
    # a token wait nobody releases: the core stops with an error instead of hanging
    stuck = isa.encode_program([isa.make("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=64,
                                         wait=0b1000), isa.make("SYS", op="end")])
    result = harness.run_program(stuck, budget=50_000, watchdog=2000, hbm=HbmParams(channel_bytes=CORE_CHANNEL_BYTES))
    assert result.registers["state"] == STATES.index("error")
    assert STATUS_CAUSES[result.registers["cause"]] in ("deadlock", "queue_deadlock", "watchdog")


# ---- the debug handle on the core (a named debug build: fastsim.public_config) ------------------

CORE_DEBUG_GROUP = "core_debug"  # one worker builds the core's debug library (tests/conftest.py)


def _build_dir_of(text, variant, **kw):
    """Where ``fastsim.build(text, ..., variant, **kw)`` would be cached (computed, nothing built)."""
    calls = []
    real = fastsim.cached_build
    try:
        fastsim.cached_build = lambda build_dir, make, record=None: calls.append(build_dir) or 0.0
        fastsim.build(text, "olivine_core", variant, **kw)
    finally:
        fastsim.cached_build = real
    return calls[0]


def test_public_mode_enters_the_debug_build_hash(standin_verilog):
    named = _build_dir_of(standin_verilog, "debug")
    assert named == _build_dir_of(standin_verilog, "debug", public="named") and "-debug-named-" in named.name
    everything = _build_dir_of(standin_verilog, "debug", public="all")
    extra = _build_dir_of(standin_verilog, "debug", extra_public=("olivine_core:*",))
    assert len({named, everything, extra}) == 3 and "-debug-named-" not in everything.name
    # the batch build has no public signals: the option does not change it
    assert _build_dir_of(standin_verilog, "batch", public="all") == _build_dir_of(standin_verilog, "batch")
    with pytest.raises(ValueError, match="choose one of named, all"):
        _build_dir_of(standin_verilog, "debug", public="some")
    with pytest.raises(ValueError, match=r'write it as "module:var"'):
        fastsim.public_config(standin_verilog, extra=("no_colon",))


@pytest.mark.xdist_group("core_fast")  # shares the core's Verilog (no build) with the fast-harness tests
def test_public_config_of_the_core_names_what_the_handle_needs(core_harness):
    """The named build's configuration: the top's ports, registers and buffer memories, the unit
    streams with their payloads, the controller's registers and the status / error registers;
    not the units' internals."""
    _, harness = core_harness
    text = fastsim.public_config(harness.verilog_text)
    lines = text.splitlines()
    assert lines[0] == "`verilator_config"
    entries = {tuple(re.fullmatch(r'public_flat_rw -module "([^"]+)" -var "([^"]+)"', line).groups())
               for line in lines[2:]}
    top = "olivine_core"
    for name in ("clk", "s_axi_control__araddr", "m_axi_hbm1__wdata", "weight0", "meta0", "bias0", "data0",
                 "data1", "unit_error", "watchdog_limit", "cycles", *[n for pair in fastsim.UNIT_STREAMS.values()
                                                                      for n in pair],
                 *[f"{u}__payload" for u in ("ld", "st", "sfu")]):  # (this core has no matrix engine)
        assert (top, name) in entries, name
    for name in ("status", "ld_current", "tok_ld_sfu", "quiet"):
        assert (f"{top}.controller", name) in entries, name
    assert (f"{top}.controller.decoder", "error") in entries and (f"{top}.ld_guard", "error") in entries
    assert not any("$" in v or re.fullmatch(r"_\d+_", v) for _, v in entries)
    # a unit's internals are not public unless asked for
    assert not any(m == f"{top}.ld.ar_q" for m, _ in entries)
    assert (f"{top}.ld.ar_q", "*") in {tuple(re.fullmatch(r'public_flat_rw -module "([^"]+)" -var "([^"]+)"', l).groups())
                                         for l in fastsim.public_config(harness.verilog_text, extra=(f"{top}.ld.ar_q:*",)).splitlines()[2:]}
    assert len(entries) < 300  # of the 6,495 a --public-flat-rw build of this core makes public


@pytest.fixture(scope="module")
def core_debug(core_harness):
    """A named debug build of the RTL-test core (built once, cached; ~2.5 min cold on the 2-core machine)."""
    config, harness = core_harness
    with DebugHandle(harness.verilog_text, hbm=HbmParams(channel_bytes=CORE_CHANNEL_BYTES, read_latency=12)) as dbg:
        yield config, dbg


def _fresh(config, dbg, image):
    """Reset the core, zero its on-chip buffers (a fresh FuncSim's are zero) and load ``image`` into
    HBM (the rest of every channel zero), so each test starts as the functional simulator does."""
    dbg.reset()
    for name, depth in dbg.signals().items():
        if depth < 0:  # the buffer memories
            dbg.write_memory(name, 0, [0] * -depth)
    for k in range(config.hbm_channels):
        payload = bytes(image.get(k, b""))
        dbg.hbm_write(k, 0, payload + bytes(CORE_CHANNEL_BYTES - len(payload)))


def _buffers(config, dbg):
    """The core's on-chip buffers read through the handle, in FuncSim's form: name -> bytes (the
    data space interleaved by word over data0, data1, ..., hw/buffers.py)."""
    def as_bytes(words, width):
        return np.frombuffer(b"".join(int(w).to_bytes(width, "little") for w in words), np.uint8)

    sig = dbg.signals()
    width = config.axi_data_width // 8
    out = {b: as_bytes(dbg.read_memory(f"{b}0"), width) for b in ("weight", "meta", "bias")}
    banks = [dbg.read_memory(f"data{k}") for k in range(sum(1 for n in sig if re.fullmatch(r".*\.data\d+", n)))]
    out["data"] = as_bytes([banks[w % len(banks)][w // len(banks)] for w in range(len(banks) * len(banks[0]))], width)
    return out


@pytest.mark.xdist_group(CORE_DEBUG_GROUP)
def test_debug_handle_on_the_core_runs_to_each_units_instructions_in_order(core_debug):
    from olivine.hw import isa
    from olivine.hw.controller import STATES
    from olivine.sim.core_rtl import CoreJob, funcsim_jobs
    from tests.test_hw_core import _image, _programs

    config, dbg = core_debug
    program = _programs()["ld_sfu_st"]  # LD, LD, SFU add, SFU copy, ST (a token chain), SYS end
    rng = np.random.default_rng(9)
    image = {0: _image(rng), 1: _image(rng)}
    _fresh(config, dbg, image)
    dbg.load_program(isa.encode_program(program), image)
    assert dbg.peek("controller.status") & 3 == STATES.index("idle")  # the status word's state field
    dbg.start()
    start = dbg.cycle
    offsets = isa.program_offsets(program)
    last = -1
    for k, inst in enumerate(program[:-1]):
        unit = inst.fmt.unit
        got = dbg.next_instruction(unit, limit=20_000)
        # the controller hands the instructions over in program order (the tokens chain the units),
        # the word offset and opcode in the stream's payload
        assert (got.unit, got.offset, got.opcode) == (unit, offsets[k], inst.fmt.opcode), (k, got)
        assert got.cycle > last and got.since_start == got.cycle - start
        assert dbg.cycle == got.cycle + 1  # stopped right after the handshake's clock edge
        last = got.cycle
        assert dbg.peek("TOP.olivine_core.controller.status") & 3 == STATES.index("running")
    dbg.wait_done(budget=50_000)
    assert dbg.peek("controller.status") & 3 == STATES.index("done")
    assert dbg.read_register(core_regs.offset("state")) == STATES.index("done")
    with pytest.raises(FastSimError, match=r"no handshake of ld__valid / ld__ready within 500 cycles"):
        dbg.next_instruction("ld", limit=500)  # the program has no further LD
    # the on-chip buffers equal the functional simulator's after the same program
    want = funcsim_jobs(config, [CoreJob(program, image)], channel_bytes=CORE_CHANNEL_BYTES)[0]
    got = _buffers(config, dbg)
    for name in ("data", "weight", "meta", "bias"):
        assert np.array_equal(got[name], want["buffers"][name]), name
    assert got["data"].any()
    assert np.array_equal(dbg.hbm_read(1, 0, CORE_CHANNEL_BYTES), want["hbm"][1])


@pytest.mark.xdist_group(CORE_DEBUG_GROUP)
def test_debug_handle_reads_every_core_buffer_as_funcsim_has_it(core_debug):
    """read_memory of the weight, meta, bias and data banks after the concurrent program (strided
    LDs into every buffer, SFU ops, zero fill) equals the functional simulator's buffers."""
    from olivine.hw import isa
    from olivine.sim.core_rtl import CoreJob, funcsim_jobs
    from tests.test_hw_core import _image, _programs

    config, dbg = core_debug
    program = _programs()["concurrent"]
    rng = np.random.default_rng(5)
    image = {0: _image(rng), 1: _image(rng)}
    _fresh(config, dbg, image)
    dbg.load_program(isa.encode_program(program), image)
    dbg.start()
    dbg.wait_done(budget=200_000)
    want = funcsim_jobs(config, [CoreJob(program, image)], channel_bytes=CORE_CHANNEL_BYTES)[0]
    got = _buffers(config, dbg)
    for name in ("data", "weight", "meta", "bias"):
        assert got[name].any() and np.array_equal(got[name], want["buffers"][name]), name
    assert dbg.read_memory("weight0", 3, 2) == [int.from_bytes(want["buffers"]["weight"][16 * w:16 * w + 16], "little")
                                                 for w in (3, 4)]


@pytest.mark.xdist_group(CORE_DEBUG_GROUP)
def test_debug_handle_pokes_a_buffer_and_a_register_of_the_core(core_debug):
    """Stopped at the ST's handshake (after the LD filled the buffer), a word poked into the buffer
    is what the ST writes to HBM; a register poked is what the register block reads back."""
    from olivine.hw import isa

    config, dbg = core_debug
    M = isa.make
    program = [M("LD", target="act", channel=0, hbm_addr=0, buf_addr=0, length=1024, release=0b0010),
               M("ST", source="act", channel=1, hbm_addr=0, buf_addr=0, length=1024, wait=0b0001),
               M("SYS", op="end")]
    source = random_words(256, seed=8).tobytes()
    _fresh(config, dbg, {0: source})
    dbg.load_program(isa.encode_program(program), {0: source})
    dbg.start()
    dbg.next_instruction("st", limit=20_000)
    word = (1 << 128) - 12345
    dbg.write_memory("data1", 2, [word])  # data-space word 5 (words interleave over data0, data1)
    assert dbg.read_memory("data1", 2, 1) == [word]
    dbg.wait_done(budget=50_000)
    out = dbg.hbm_read(1, 0, 1024).tobytes()
    want = bytearray(source)
    want[5 * 16:6 * 16] = word.to_bytes(16, "little")
    assert out == bytes(want)
    # a register: the watchdog limit the register block holds
    dbg.poke("watchdog_limit", 777)
    assert dbg.read_register(core_regs.offset("watchdog")) == 777
    dbg.poke("watchdog_limit", 0)


@pytest.mark.xdist_group(CORE_DEBUG_GROUP)
def test_debug_handle_on_the_core_names_bad_requests(core_debug):
    config, dbg = core_debug
    with pytest.raises(FastSimError, match=r"no public signal named 'TOP.olivine_core.nope'.*extra_public"):
        dbg.peek("nope")
    # a signal that exists but is not public in the named build: the same message, with the remedy
    with pytest.raises(FastSimError, match=r"'TOP.olivine_core.ld.ar_q.level'.*public='all'"):
        dbg.peek("ld.ar_q.level")
    with pytest.raises(FastSimError, match=r"no public signal named 'TOP.olivine_core.nope'"):
        dbg.run_until({"nope": 1}, limit=10)
    with pytest.raises(FastSimError, match="'TOP.olivine_core.ld__valid' is not a memory"):
        dbg.read_memory("ld__valid")
    with pytest.raises(ValueError, match="the memory has 256 words"):
        dbg.read_memory("weight0", 250, 10)
    with pytest.raises(ValueError, match="unknown unit 'dma'; choose one of ld, st, mpe, sfu"):
        dbg.next_instruction("dma")
    with pytest.raises(ValueError, match="has 1 bits"):
        dbg.poke("ld__valid", 2)
