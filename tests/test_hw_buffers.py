"""hw/buffers.py: the bank plan from BufferConfig, a bank's ports in Amaranth simulation, and
(synth) the memory primitive Yosys infers."""

import dataclasses

import numpy as np
import pytest
from amaranth.sim import Simulator

from olivine.boards import get_board
from olivine.hw.buffers import (BufferBank, bank_plan, buffer_sizes, check_fit, choose_primitive, plan_geometry,
                                primitive_count)
from olivine.hw.config import BufferConfig, ConfigError, for_board


def test_bank_plan_covers_every_buffer():
    cfg = BufferConfig()
    plan = {b.name: b for b in bank_plan(cfg, data_banks=2)}
    assert plan["weight"].bytes == cfg.weight_kib * 1024  # one memory: the halves are by address
    assert plan["data0"].bytes + plan["data1"].bytes == (cfg.activation_kib + cfg.global_kib) * 1024
    # 64-byte words: weight 16,384 deep, data banks 16,384, meta 2,048, bias 1,024
    assert (plan["meta"].primitive, plan["bias"].primitive, plan["weight"].primitive) == ("bram", "bram", "uram")
    # the plan's geometry per buffer: the banks' bytes add up to the buffer's, words and primitive shared
    geometry = plan_geometry(list(plan.values()))
    assert {name: g[0] for name, g in geometry.items()} == buffer_sizes(cfg)
    assert geometry["data"] == (plan["data0"].bytes * 2, 64, 2, plan["data0"].primitive)
    assert geometry["weight"] == (cfg.weight_kib * 1024, 64, 1, "uram")
    with pytest.raises(ValueError, match="double-buffered"):
        bank_plan(BufferConfig(weight_kib=3))
    with pytest.raises(ValueError, match="unknown buffers"):
        bank_plan(cfg, word_bytes={"weights": 64})


def test_primitive_follows_the_shape():
    """URAM from 4,096 words (one URAM288's depth) on, BRAM below; the counts Yosys synth_xilinx
    gives (docs/benchmarks.md "Buffers at the U280 sizes"): URAM288 4K x 9 byte lanes, RAMB36
    32 Kib of byte-enabled data."""
    assert choose_primitive(4095, 512) == "bram" and choose_primitive(4096, 64) == "uram"
    assert primitive_count(512, 16384, "bram") == 256      # 2 KiB word: 32 x the 8 RAMB36 of a 64-byte slice
    assert primitive_count(512, 16384, "uram") == 228      # ... or 228 9-byte URAM288 columns filled to 1/8
    assert primitive_count(2048, 512, "bram") == 32        # 2K x 512 = 1 Mib (measured: 32)
    assert primitive_count(16384, 512, "uram") == 29       # 7 columns x 4 deep + 1 for the 64th bytes (measured: 2 x 29)
    assert primitive_count(16384, 256, "uram") == 15       # 3 x 4 + 3 (measured: 2 x 15)
    assert primitive_count(16384, 64, "uram") == 4         # (measured: 2 x 4)
    assert primitive_count(64, 128, "bram") == 2           # shallow: one RAMB36 per 64-bit column
    assert primitive_count(576, 1024, "bram") == 32        # small's weight buffer: 1K x 32 aspect (measured: 32)
    assert primitive_count(1536, 64, "bram") == 3          # three 512 x 64 deep beats two 1K x 32 x 2
    with pytest.raises(ValueError, match="choose one of"):
        primitive_count(512, 64, "lutram")


@pytest.mark.filterwarnings("ignore:.*created but never used")  # the refused core's parts
def test_u280_buffers_fit_and_a_larger_weight_buffer_is_refused():
    """The U280's buffers at 3 cores of 128 chains (the old default: 2 KiB weight words) fit: per core
    256 + 32 + 16 RAMB36 (weight, meta, bias) and 2 x 29 URAM288 (data banks); 4 MiB of weights per
    core would need 3 x 1,024 RAMB36 and is refused by name, by the config's core (the memory check
    comes before the logic check, which refuses 128 chains on its own: tests/test_hw_fit.py)."""
    cfg = for_board("u280", chains_per_core=128, sfu_dsp=64)
    words = {"weight": 16 * cfg.chains_per_core, "meta": 64, "bias": 64, "data": 64}
    plan = bank_plan(cfg.buffers, 2, words)
    assert check_fit(plan, get_board("u280"), cfg.cores) == {"uram": 3 * 58, "bram": 3 * (256 + 32 + 16)}
    big = cfg.replace(buffers=dataclasses.replace(cfg.buffers, weight_kib=4096))
    with pytest.raises(ConfigError, match=r"3216 RAMB36 .* u280 has 2016; per core: weight 1024 \(2048 x 16384 bits\)"):
        check_fit(bank_plan(big.buffers, 2, words), get_board("u280"), big.cores)
    from olivine.hw.hdl import core_for
    from olivine.hw.mpe import MatrixEngine

    with pytest.raises(ConfigError, match="weight 1024"):
        core_for(big)
    # the core counts its matrix engine's memories too: per core 256 RAMB36 of chunk banks (128 banks of
    # 256 x 128 bits) and 228 URAM288 of carry (128 x 16,384 bits): 3 x (304 + 256), 3 x (58 + 228)
    engine = MatrixEngine(cfg).memory_primitives()
    assert check_fit(plan, get_board("u280"), cfg.cores, engine) == {"uram": 3 * (58 + 228), "bram": 3 * (304 + 256)}
    # the default (16 chains: 256-byte weight words, 4,096 deep, so URAM): weight 28 + 1 URAM288 (2,048
    # bits = 28 x 72 + 32), data 58; meta 32 and bias 16 RAMB36; the engine's memories are LUTRAM
    assert core_for(for_board("u280")).buffer_primitives == {"uram": 3 * (29 + 58), "bram": 3 * (32 + 16)}


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_the_engines_memories_count_in_the_fit():
    """hw.mpe.MatrixEngine.memory_primitives: the chunk banks in BRAM above 32 chains, the carry in
    URAM above 64 (docs/benchmarks.md "Matrix engine: fit at 128 chains"); with them four U280 cores of
    128 chains need 4 x 560 RAMB36 (the buffers alone: 4 x 304, which would pass) and are refused,
    naming the engine's banks."""
    from olivine.hw.mpe import MatrixEngine

    cfg = for_board("u280", chains_per_core=128)
    assert MatrixEngine(cfg.replace(chains_per_core=32)).memory_primitives() == {}
    assert MatrixEngine(cfg.replace(chains_per_core=64)).memory_primitives() == {"wbank": ("bram", 128)}
    engine = MatrixEngine(cfg).memory_primitives()
    assert engine == {"wbank": ("bram", 256), "wcarry": ("uram", 228)}
    words = {"weight": 16 * cfg.chains_per_core, "meta": 64, "bias": 64, "data": 64}
    plan = bank_plan(cfg.buffers, 2, words)
    assert check_fit(plan, get_board("u280"), 4) == {"uram": 4 * 58, "bram": 4 * 304}
    with pytest.raises(ConfigError, match=r"2240 RAMB36 for the buffers and the matrix engine's memories of 4 cores "
                                          r"but u280 has 2016; .*matrix engine wbank 256"):
        check_fit(plan, get_board("u280"), 4, engine)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_olivine_hdl_refuses_buffers_beyond_the_board(tmp_path, capsys):
    import json

    from olivine.cli import main

    bad = tmp_path / "big.json"
    # 4 MiB of weights at 128 chains (2 KiB words): 3 x 1,024 RAMB36 (the memory check, before the logic's)
    bad.write_text(json.dumps({"chains_per_core": 128, "buffers": {"weight_kib": 4096}}))
    assert main(["hdl", "--config", str(bad), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("olivine hdl: ") and "RAMB36" in err and "weight 1024" in err, err
    assert not (tmp_path / "o").exists()


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


@pytest.mark.synth
def test_u280_bram_column_maps_as_counted():
    """One 8-byte column of the U280 meta bank (2,048 words, BRAM): Yosys gives the RAMB36 that
    primitive_count counts and no LUTRAM or FF (the whole banks: docs/benchmarks.md)."""
    from olivine.hw.resources import synthesize

    report = synthesize(BufferBank(2048 * 8, data_width=64, primitive="bram"), "olivine_meta_column")
    assert (report.bram36, report.uram, report.lutram, report.ff) == (primitive_count(2048, 64, "bram"), 0, 0, 0), report
