"""hw/ stands on its own: no module of it imports compiler/, sim/ or torch (../shared/architecture.md;
the SFU's ROMs come from golden's torch-free golden/sfu_tables.py and golden/fixed_scalar.py)."""

import pkgutil
import subprocess
import sys

import olivine.hw

FORBIDDEN = ("olivine.compiler", "olivine.sim", "torch")


def test_no_hw_module_imports_compiler_sim_or_torch():
    modules = sorted(f"olivine.hw.{m.name}" for m in pkgutil.iter_modules(olivine.hw.__path__))
    assert "olivine.hw.sfu" in modules and "olivine.hw.core" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
            "    if bad:\n"
            "        print(name, 'pulls in', bad[:5]); sys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout.strip() + proc.stderr[-800:]


def test_golden_tables_are_the_sfu_modules_own():
    from olivine.golden import fixed, fixed_scalar, sfu, sfu_tables

    assert sfu.rope_tables is sfu_tables.rope_tables and sfu.exp_table is sfu_tables.exp_table
    assert fixed.FixedPointValueError is fixed_scalar.FixedPointValueError
    assert fixed.quantize_multiplier is fixed_scalar.quantize_multiplier
