# amaranth: UnusedElaboratable=no
"""hw/axi.py: the burst split rule and BurstIssuer (the program fetch's, LD's and ST's bursts) in
Amaranth simulation against a Python model of AXI4's rules (A3.4.1: at most 256 beats, no burst
across 4 KiB), with random ready / burst-done timing."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from olivine.hw.axi import BOUNDARY_BYTES, BurstIssuer


def expected_bursts(addr: int, nbytes: int, beat: int, max_burst: int) -> list[tuple[int, int]]:
    """(address, beats) of each burst: the beats holding bytes addr .. addr + nbytes - 1, cut at
    max_burst beats and at every 4 KiB boundary (written from the rule, not from burst_beats)."""
    first, last = addr // beat, (addr + nbytes - 1) // beat
    out, b = [], first
    while b <= last:
        page_end = (b * beat // BOUNDARY_BYTES + 1) * BOUNDARY_BYTES // beat   # first beat of the next page
        n = min(last + 1 - b, max_burst, page_end - b)
        out.append((b * beat, n))
        b += n
    return out


def run(issuer: BurstIssuer, transfers, *, seed: int, ready_p: float, done_p: float, hold_p: float = 0.0):
    """Load each transfer once the previous is issued; -> (bursts per transfer, cycles from load to
    first valid, max outstanding seen, cycles per transfer)."""
    rng = np.random.default_rng(seed)
    got, first_valid, peak, spans = [], [], [0], []

    async def bench(ctx):
        pending = 0  # bursts issued, not yet done
        for addr, nbytes in transfers:
            ctx.set(issuer.load, 1)
            ctx.set(issuer.addr, addr)
            ctx.set(issuer.bytes, nbytes)
            ctx.set(issuer.burst.ready, 0)
            ctx.set(issuer.burst_done, 0)
            await ctx.tick()
            ctx.set(issuer.load, 0)
            bursts, cycle, seen_valid = [], 0, None
            while not (ctx.get(issuer.idle) and cycle > 0):
                hold = int(rng.random() < hold_p)
                ready = int(rng.random() < ready_p)
                done = int(pending > 0 and rng.random() < done_p)
                ctx.set(issuer.hold, hold)
                ctx.set(issuer.burst.ready, ready)
                ctx.set(issuer.burst_done, done)
                valid = ctx.get(issuer.burst.valid)
                out = ctx.get(issuer.outstanding)
                if issuer.max_outstanding is not None:
                    assert out == pending
                    assert not valid or out < issuer.max_outstanding  # never beyond max_outstanding
                assert not (hold and valid)
                if valid and seen_valid is None:
                    seen_valid = cycle
                if valid and ready:
                    bursts.append((ctx.get(issuer.burst.p.addr), ctx.get(issuer.burst.p.len) + 1))
                    pending += 1
                pending -= done
                peak[0] = max(peak[0], pending)
                await ctx.tick()
                cycle += 1
                assert cycle < 5000
            got.append(bursts)
            first_valid.append(seen_valid)
            spans.append(cycle)
        ctx.set(issuer.burst.ready, 0)

    sim = Simulator(issuer)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, first_valid, peak[0], spans


@pytest.mark.parametrize("data_width, max_burst, max_outstanding", [(64, 256, 2), (512, 16, 4), (128, 256, None)])
def test_bursts_follow_the_axi_rules(data_width, max_burst, max_outstanding):
    beat = data_width // 8
    rng = np.random.default_rng(data_width + max_burst)
    transfers = [(int(rng.integers(0, 1 << 16)), int(rng.integers(1, 6000))) for _ in range(30)]
    transfers += [(BOUNDARY_BYTES - 3, 10), (0, 256 * beat + 1), (5, 1)]  # across a page, one past 256, a byte
    issuer = BurstIssuer(data_width=data_width, addr_width=32, bytes_bits=16, max_burst=max_burst,
                         max_outstanding=max_outstanding)
    got, _, peak, _ = run(issuer, transfers, seed=1, ready_p=0.6, done_p=0.3, hold_p=0.1)
    for (addr, nbytes), bursts in zip(transfers, got):
        assert bursts == expected_bursts(addr, nbytes, beat, max_burst), (addr, nbytes)
    if max_outstanding is not None:
        assert peak == max_outstanding  # the limit is reached (slow done) and never passed (asserted per cycle)


def test_latency_and_one_burst_per_cycle():
    """First burst offered the cycle after load; with AR always ready and bursts done at once,
    n bursts take n cycles."""
    issuer = BurstIssuer(data_width=64, addr_width=32, bytes_bits=16, max_burst=4, max_outstanding=2)
    transfers = [(0, 8 * 4 * 5), (4096 - 16, 32)]  # 5 bursts of 4 beats; 2 + 2 beats across the page
    got, first_valid, _, spans = run(issuer, transfers, seed=0, ready_p=1.0, done_p=1.0)
    assert [len(b) for b in got] == [5, 2]
    assert first_valid == [0, 0]
    assert spans == [5, 2]


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="1..256 beats"):
        BurstIssuer(max_burst=257)
    with pytest.raises(ValueError, match="at least one burst"):
        BurstIssuer(max_outstanding=0)
