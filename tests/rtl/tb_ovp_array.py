"""cocotb testbench of OvpSystolicArray (tests/test_hw_ovp_array.py runs it).

DUT ports (Amaranth stream naming): a__payload (rows pair codes of W bits, then `last`),
a__valid, a__ready; b__payload (cols codes), b__valid, b__ready; results__payload (cols signed
32-bit values, then `last`), results__valid, results__ready; a_flint/b_flint for
normal="runtime"; clk, rst. W = 8 (4-bit OVP) or 16 (8-bit OVP).

Vectors (computed by the pytest side from golden/ovp_format): a_pairs [T, rows], a_last [T],
b_pairs [T, cols], gaps [T] (idle cycles before transfer t is offered), ready [P] (results.ready
pattern, repeated), want [tiles, rows, cols] (int32 results), width, flint [2], max_cycles.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from olivine.sim.rtl import load_vectors


def _pack(values, width):
    word = 0
    for idx, value in enumerate(values):
        word |= (int(value) & ((1 << width) - 1)) << (idx * width)
    return word


async def _reset(dut):
    dut.a__valid.value = 0
    dut.b__valid.value = 0
    dut.results__ready.value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def array_matches_golden(dut):
    """Stream every tile with the given bubbles and backpressure; compare all results at the end."""
    vec = load_vectors()
    a_pairs, a_last, b_pairs = vec["a_pairs"], vec["a_last"], vec["b_pairs"]
    gaps, ready, want = vec["gaps"], vec["ready"], vec["want"]
    width = int(vec["width"])
    tiles, rows, cols = want.shape
    if hasattr(dut, "a_flint"):
        dut.a_flint.value = int(vec["flint"][0])
        dut.b_flint.value = int(vec["flint"][1])
    Clock(dut.clk, 10, unit="ns").start()
    await _reset(dut)

    a_words = [_pack(a_pairs[t], width) | (int(a_last[t]) << (rows * width)) for t in range(len(a_pairs))]
    b_words = [_pack(b_pairs[t], width) for t in range(len(b_pairs))]
    transfer, idle, cycle = 0, int(gaps[0]) if len(gaps) else 0, 0
    results = []
    mask = (1 << 32) - 1
    while len(results) < tiles * rows:
        if cycle > int(vec["max_cycles"]):
            raise AssertionError(f"timeout after {cycle} cycles: {transfer}/{len(a_words)} transfers "
                                 f"accepted, {len(results)}/{tiles * rows} result rows")
        offer = transfer < len(a_words) and idle == 0
        dut.a__valid.value = int(offer)
        dut.b__valid.value = int(offer)
        if offer:
            dut.a__payload.value = a_words[transfer]
            dut.b__payload.value = b_words[transfer]
        dut.results__ready.value = int(ready[cycle % len(ready)])
        await ReadOnly()
        if offer and dut.a__ready.value and dut.b__ready.value:
            transfer += 1
            idle = int(gaps[transfer]) if transfer < len(gaps) else 0
        elif not offer and idle:
            idle -= 1
        if dut.results__valid.value and dut.results__ready.value:
            word = dut.results__payload.value.to_unsigned()
            row = [(word >> (32 * j)) & mask for j in range(cols)]
            last = (word >> (32 * cols)) & 1
            results.append(([v - (1 << 32) if v >> 31 else v for v in row], last))
        await FallingEdge(dut.clk)
        cycle += 1

    got = [row for row, _ in results]
    lasts = [last for _, last in results]
    assert lasts == ([0] * (rows - 1) + [1]) * tiles, f"result `last` flags wrong: {lasts}"
    expected = [[int(v) for v in want[t, i]] for t in range(tiles) for i in range(rows)]
    bad = [(k // rows, k % rows, g, e) for k, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not bad, f"{len(bad)} result rows differ; first (tile, row, got, want): {bad[:3]}"
    dut._log.info(f"{tiles} tiles, {len(a_words)} transfers in {cycle} cycles")

