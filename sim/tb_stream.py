"""Shared cocotb pieces of the testbenches (tests/rtl/, sim/tb_*.py): clock and reset, and the
valid/ready stream driver of the single-stream units (requantizer, sparse chain, SFU row cores).

Every testbench drives inputs after the falling edge and samples the handshake in ``ReadOnly``
before the rising edge, so a handshake seen here is the one the coming edge performs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

__all__ = ["StreamRun", "check_stream", "clock_and_reset", "drive_stream"]


async def clock_and_reset(dut, idle: dict[str, int] | None = None, cycles: int = 2) -> None:
    """Start a 10 ns clock on ``dut.clk``, set ``idle`` inputs (name -> value), hold ``rst`` high for
    ``cycles`` rising edges and release it after a falling edge."""
    Clock(dut.clk, 10, unit="ns").start()
    for name, value in (idle or {}).items():
        getattr(dut, name).value = value
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@dataclass
class StreamRun:
    """What a stream run saw: the taken outputs and the cycles of every accept and emit."""

    got: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    emitted_at: list[int] = field(default_factory=list)


async def drive_stream(dut, items: list[int], n_out: int, valid: list[int], ready: list[int], *,
                       side=None, check_hold: bool = False) -> StreamRun:
    """Offer ``items`` on ``i`` and take outputs from ``o`` following the per-cycle ``valid`` /
    ``ready`` patterns until ``n_out`` outputs were taken or the patterns end.

    ``side(k, offering)`` (optional) drives the unit's other inputs for item ``k`` each cycle, before
    the handshake settles. ``check_hold`` asserts the stream rule that an offered, untaken output
    stays valid with the same payload.
    """
    run, k, held = StreamRun(), 0, None
    for cycle, (offer, take) in enumerate(zip(valid, ready)):
        if len(run.got) == n_out:
            break
        offering = bool(offer) and k < len(items)
        dut.i__valid.value = int(offering)
        if offering:
            dut.i__payload.value = items[k]
        if side is not None:
            side(k, offering)
        dut.o__ready.value = int(take)
        await ReadOnly()
        if offering and int(dut.i__ready.value):
            run.accepted_at.append(cycle)
            k += 1
        out_valid = int(dut.o__valid.value)
        if check_hold and held is not None:
            assert out_valid and int(dut.o__payload.value) == held, f"cycle {cycle}: a stalled output changed"
        held = None
        if out_valid:
            if take:
                run.got.append(int(dut.o__payload.value))
                run.emitted_at.append(cycle)
            elif check_hold:
                held = int(dut.o__payload.value)
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
    return run


def check_stream(run: StreamRun, want: list[int], cycles: int, latency: int, what: str = "results",
                 truth: str = "the model") -> None:
    """Assert every expected output came, equal to ``want``, and (``latency`` >= 0) that the first
    output left ``latency`` cycles after the first accept (the patterns start unstalled)."""
    assert len(run.got) == len(want), f"{len(run.got)} of {len(want)} {what} within {cycles} cycles"
    bad = [(n, hex(g), hex(w)) for n, (g, w) in enumerate(zip(run.got, want)) if g != w]
    assert not bad, f"{len(bad)} of {len(want)} {what} differ from {truth}; first (n, got, want): {bad[:3]}"
    if latency >= 0:
        assert run.emitted_at[0] - run.accepted_at[0] == latency, (run.accepted_at[:3], run.emitted_at[:3], latency)
