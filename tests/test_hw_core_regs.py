"""The control register map: unique, aligned, Vitis' ap_ctrl block first, counter blocks disjoint."""

import pytest

from olivine.hw import core_regs as regs
from olivine.hw import isa


def test_offsets_unique_aligned_and_inside_the_space():
    offsets = [r.offset for r in regs.REGISTERS]
    assert len(set(offsets)) == len(offsets)
    assert all(o % 4 == 0 and o < 1 << regs.ADDRESS_BITS for o in offsets)
    assert regs.offset("ctrl") == 0 and regs.offset("prog_addr_lo") == 0x10  # ap_ctrl_hs, first argument
    assert {r.access for r in regs.REGISTERS} <= {"rw", "ro", "cor", "w1c"}


def test_counter_blocks_do_not_overlap_named_registers():
    named = {r.offset for r in regs.REGISTERS}
    units = {regs.unit_offset(u, c) for u in range(len(isa.UNITS)) for c in regs.UNIT_COUNTERS}
    hbm = {regs.hbm_offset(k, c) for k in range(32) for c in regs.HBM_COUNTERS}
    assert len(units) == 16 and len(hbm) == 64
    assert not (named & units) and not (named & hbm) and not (units & hbm)
    assert max(hbm) < 1 << regs.ADDRESS_BITS


def test_unknown_names_are_refused_by_name():
    with pytest.raises(KeyError, match="no register named 'stat'"):
        regs.offset("stat")
    with pytest.raises(ValueError, match="channel 32"):
        regs.hbm_offset(32, "read_bytes")
