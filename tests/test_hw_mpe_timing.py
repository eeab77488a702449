"""hw/mpe_timing.py: the matrix engine's exact cycle model. Its equality with the RTL is asserted in
tests/test_hw_mpe.py on every engine case; here the fast-forward over repeating column groups
against stepping every cycle, on random shapes larger than the RTL tests can simulate."""

from __future__ import annotations

import random

from olivine.hw.config import small
from olivine.hw.mpe import mpe_cycles
from olivine.hw.mpe_timing import engine_cycles
from tests.helpers import REDUCED

PARAMS = dict(chain_latency=24, requant_latency=14, a_fifo_depth=4, result_fifo_depth=2, tag_fifo_depth=32,
              pv_digits=5)


def test_fast_forward_is_exact():
    rng = random.Random(12)
    for _ in range(20 if REDUCED else 40):
        chains = rng.choice([2, 4, 8])
        mode = rng.choice([0, 0, 1, 2])
        fields = dict(mode=mode, m=rng.randint(1, 9), n=rng.randint(1, 300), k_blocks=rng.randint(1, 24),
                      out=rng.randint(0, 2), accumulate=rng.randint(0, 1), wfmt=rng.randint(0, 2) if mode == 0 else 0,
                      a_addr=rng.randint(0, 63), b_addr=rng.randint(0, 63))
        fast = engine_cycles(fields, chains, fast=True, **PARAMS)
        assert fast == engine_cycles(fields, chains, fast=False, **PARAMS), (chains, fields)


def test_large_shapes_are_cheap_and_grow_with_the_work():
    cfg = small()
    mv = dict(mode=0, m=1, n=4096, k_blocks=256, out=1)
    cycles = mpe_cycles(mv, cfg)
    # 512 column groups of 8 chains, 256 beats each: the chains alone need 131,072 cycles
    assert 4096 // 8 * 256 <= cycles < 2 * 4096 // 8 * 256
    assert mpe_cycles(dict(mv, n=2048), cfg) < cycles
