"""Element-wise SFU op cores (hw/sfu_eltwise.py) on their own: random bubbles and backpressure,
saturation edges and INT32_MIN, partial last beats; results equal golden/sfu.py bit for bit and
the latency equals the declared ``latency``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from olivine.golden import sfu as golden
from olivine.hw.sfu_eltwise import AddCore, CopyCore, MulCore, SiluCore, SwigluCore

EDGES = np.array([-(1 << 31), -(1 << 31) + 1, -1, 0, 1, (1 << 31) - 1, 1 << 16, -(1 << 16), 16 << 16,
                  -(16 << 16), (16 << 16) - 1, 46341, (1 << 31) - (1 << 16), 3, -3], dtype=np.int64)

GOLDEN = {
    AddCore: lambda a, b: golden.add(a, b),
    MulCore: lambda a, b: golden.mul(a, b, 16, 16, 16),
    CopyCore: lambda a, b: a,
    SiluCore: lambda a, b: golden.silu(a, 16, 16),
    SwigluCore: lambda a, b: golden.swiglu(a, b, 16, 16, 16),
}


def stream_core(core, a_rows, b_rows, *, offer=1.0, ready=1.0, seed=0, every=1, taken=None):
    """Feed rows (lists of int arrays) beat by beat; return the output rows, the beats' flags and
    the cycles between an input beat's acceptance and its output (full-rate runs)."""
    lanes = core.lanes
    rng = np.random.default_rng(seed)
    beats = []
    for r, (a, b) in enumerate(zip(a_rows, b_rows)):
        n = len(a)
        for s in range(0, n, lanes):
            cnt = min(lanes, n - s)
            beats.append((list(a[s:s + cnt]) + [0] * (lanes - cnt), list(b[s:s + cnt]) + [0] * (lanes - cnt),
                          cnt, s == 0, s + lanes >= n))
    out, flags, out_at = [], [], []
    taken_at = [] if taken is None else taken

    async def bench(ctx):
        k, cycle = 0, 0
        while len(out) < len(beats):
            give = k < len(beats) and rng.random() < offer and cycle % every == 0
            ctx.set(core.i.valid, give)
            if core.operands == 2:
                ctx.set(core.g.valid, give)
            if give:
                a, b, cnt, first, last = beats[k]
                ctx.set(core.i.payload, {"data": a, "count": cnt, "first": first, "last": last, "pass_": 0})
                if core.operands == 2:
                    ctx.set(core.g.payload, {"data": b, "count": cnt, "first": first, "last": last, "pass_": 0})
            rd = rng.random() < ready
            ctx.set(core.o.ready, rd)
            _, _, i_ready, o_valid, o_payload = await ctx.tick().sample(core.i.ready, core.o.valid, core.o.payload)
            if give and i_ready:
                taken_at.append(cycle)
                k += 1
            if o_valid and rd:
                out.append([int(v) for v in o_payload.data])
                flags.append((int(o_payload.count), int(o_payload.first), int(o_payload.last)))
                out_at.append(cycle)
            cycle += 1
            assert cycle < 20 * len(beats) + 100, "the core stopped"
            ctx.set(core.i.valid, 0)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, flags, [o - t for t, o in zip(taken_at, out_at)], beats


def check(cls, rows, lanes=3, **kw):
    rng = np.random.default_rng(1)
    a_rows, b_rows = [], []
    for n, kind in rows:
        if kind == "edges":
            a, b = rng.choice(EDGES, n), rng.choice(EDGES, n)
        elif kind == "act":
            a, b = rng.integers(-(20 << 16), 20 << 16, n), rng.integers(-(8 << 16), 8 << 16, n)
        else:
            a, b = rng.integers(-(1 << 31), 1 << 31, n), rng.integers(-(1 << 31), 1 << 31, n)
        a_rows.append(a)
        b_rows.append(b)
    core = cls(lanes)
    out, flags, lat, beats = stream_core(core, a_rows, b_rows, **kw)
    got = [v for beat, f in zip(out, flags) for v in beat[: f[0]]]
    for beat, f in zip(out, flags):
        assert all(v == 0 for v in beat[f[0]:]), "lanes above count must be zero"
    want = torch.cat([GOLDEN[cls](torch.tensor(a), torch.tensor(b)).reshape(-1) for a, b in zip(a_rows, b_rows)])
    assert got == want.tolist()
    assert flags == [(cnt, int(first), int(last)) for _, _, cnt, first, last in beats]
    return lat


@pytest.mark.parametrize("cls", list(GOLDEN))
def test_core_bit_exact_with_golden_under_backpressure(cls):
    check(cls, [(7, "random"), (3, "edges"), (11, "act"), (1, "edges"), (9, "edges")], offer=0.7, ready=0.6)


@pytest.mark.parametrize("cls", list(GOLDEN))
def test_core_latency_and_full_rate(cls):
    """Fed one beat every ``beat_interval`` cycles (1; SwiGLU 2: its two products per lane share the
    lane's bank multiplier), every beat leaves exactly ``latency`` cycles after it was taken."""
    lat = check(cls, [(30, "act"), (12, "edges")], lanes=4, every=getattr(cls, "beat_interval", 1))
    assert set(lat) == {cls.latency}


def test_swiglu_takes_a_beat_every_two_cycles():
    """Offered a beat every cycle, SwiGLU takes one every other cycle (never two products of a lane
    in one cycle) and stays bit-exact."""
    core = SwigluCore(4)
    rng = np.random.default_rng(5)
    a, b = rng.integers(-(20 << 16), 20 << 16, 64), rng.integers(-(8 << 16), 8 << 16, 64)
    taken = []
    out, flags, lat, beats = stream_core(core, [a], [b], taken=taken)
    assert [v for beat, f in zip(out, flags) for v in beat[:f[0]]] == golden.swiglu(
        torch.tensor(a), torch.tensor(b), 16, 16, 16).tolist()
    # the Sigmoid pipeline takes its first beats back to back, then one every two cycles
    assert len(taken) == 16 and set(np.diff(taken)[4:]) == {2}


def test_silu_covers_the_table_and_its_symmetry():
    """Every sigmoid interval end and midpoint, positive and negative: silu(x) - silu(-x) == x."""
    xs = np.arange(-1100, 1101, dtype=np.int64) << 10          # |x| up to ~17, steps of 1/64
    check(SiluCore, [(len(xs), "act")], lanes=4)
    core = SiluCore(4)
    out, flags, _, _ = stream_core(core, [xs], [xs])
    got = np.array([v for beat, f in zip(out, flags) for v in beat[: f[0]]])
    assert np.array_equal(got, golden.silu(torch.tensor(xs), 16, 16).numpy())
    pos, neg = got[len(xs) // 2:], got[len(xs) // 2::-1]
    assert np.array_equal(pos - neg, xs[len(xs) // 2:])
