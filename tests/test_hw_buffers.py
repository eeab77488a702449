"""hw/buffers.py: the bank plan from BufferConfig, a bank's ports in Amaranth simulation, and
(synth) the memory primitive Yosys infers."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from olivine.hw.buffers import BufferBank, bank_plan
from olivine.hw.config import BufferConfig


def test_bank_plan_covers_every_buffer():
    cfg = BufferConfig()
    plan = {b.name: b for b in bank_plan(cfg, data_banks=2)}
    assert plan["weight0"].bytes + plan["weight1"].bytes == cfg.weight_kib * 1024
    assert plan["data0"].bytes + plan["data1"].bytes == (cfg.activation_kib + cfg.global_kib) * 1024
    assert (plan["meta"].primitive, plan["bias"].primitive, plan["weight0"].primitive) == ("bram", "bram", "uram")
    with pytest.raises(ValueError, match="double-buffered"):
        bank_plan(BufferConfig(weight_kib=3))


def test_bank_byte_enables_and_read_latency():
    bank = BufferBank(256, data_width=64, primitive="bram")
    rng = np.random.default_rng(0)
    model = np.zeros(256, dtype=np.uint8)
    ops = [(int(rng.integers(32)), int(rng.integers(1 << 62)), int(rng.integers(256))) for _ in range(200)]
    got, want = [], []

    async def bench(ctx):
        for addr, value, en in ops:
            ctx.set(bank.w_addr, addr)
            ctx.set(bank.w_data, value)
            ctx.set(bank.w_en, en)
            ctx.set(bank.r_addr, (addr * 7) % 32)
            ctx.set(bank.r_en, 1)
            await ctx.tick()
            got.append(ctx.get(bank.r_data))  # the word as it was before this cycle's write
            want.append(int.from_bytes(model[8 * ((addr * 7) % 32): 8 * ((addr * 7) % 32) + 8].tobytes(), "little"))
            for j in range(8):
                if en >> j & 1:
                    model[8 * addr + j] = (value >> (8 * j)) & 0xFF

    sim = Simulator(bank)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


@pytest.mark.synth
def test_bank_infers_uram():
    """One URAM288 (4096 x 64 bits); without ram_style Yosys picks 8 RAMB36 (docs/hw.md)."""
    from olivine.hw.resources import synthesize

    report = synthesize(BufferBank(32 * 1024, data_width=64, primitive="uram"), "olivine_bank")
    assert (report.uram, report.bram36, report.lutram, report.ff) == (1, 0, 0, 0), report
