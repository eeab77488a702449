"""RMSNorm / LayerNorm op cores (hw/sfu_norm.py) against golden sfu.rmsnorm / sfu.layernorm.

The test drives the three passes itself, as the SFU top level does (each row streamed
``core.passes`` times, gamma/beta beats aligned with the last pass), on random rows, all-equal
rows, zero rows, INT32_MIN / INT32_MAX, the SmolLM2 attention-sink magnitude, partial last beats
and long rows (a few thousand elements; reduced under CI), with output back-pressure.
"""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from olivine.golden import fixed, sfu
from olivine.hw.sfu_arith import SfuArithError
from olivine.hw.sfu_norm import NORM_LATENCY, LayerNorm, RMSNorm, norm_params
from tests.helpers import REDUCED, requires_verilator

F = 16


def row_beats(row, lanes, pass_):
    beats = []
    n = len(row)
    for k in range(0, n, lanes):
        chunk = list(row[k:k + lanes])
        beats.append({"data": chunk + [0] * (lanes - len(chunk)), "count": len(chunk),
                      "first": int(k == 0), "last": int(k + lanes >= n), "pass_": pass_})
    return beats


def run_row_core(dut, rows, params, *, g_rows=None, g_fields=None, ready_pattern=None,
                 valid_pattern=None, max_cycles=2_000_000, row_param=False):
    """Stream every row ``dut.passes`` times into ``dut.i`` (and ``g_rows[r]`` beats on ``dut.g``
    with the last pass); return (output rows, stats) with stats = per-row cycle counts and the
    latency of the first output beat after its input beat. ``row_param``: set ``params.row`` to
    the row index while the row's beats are offered."""
    lanes, passes = dut.lanes, dut.passes
    items, g_items = [], []
    for r, row in enumerate(rows):
        for p in range(passes):
            beats = row_beats(row, lanes, p)
            items += [(r, b) for b in beats]
            if p == passes - 1 and g_rows is not None:
                g_items += row_beats(g_rows[r], lanes, p) if g_fields is None else \
                    _struct_beats(g_rows[r], lanes, p, g_fields)
    want_beats = sum(-(-len(row) // lanes) for row in rows)
    ready_pattern = ready_pattern or (lambda c: True)
    valid_pattern = valid_pattern or (lambda c: True)
    out = []
    accepted, emitted, row_done = [], [], []

    def set_beat(ctx, port, beat):
        p = port.payload
        for key in ("count", "first", "last", "pass_"):
            ctx.set(getattr(p, key), beat[key])
        for l, v in enumerate(beat["data"]):
            if isinstance(v, dict):
                for f, fv in v.items():
                    ctx.set(getattr(p.data[l], f), fv)
            else:
                ctx.set(p.data[l], v)

    async def bench(ctx):
        for key, value in params.items():
            ctx.set(getattr(dut.params, key), value)
        cycle, k, gk = 0, 0, 0
        while len(out) < want_beats and cycle < max_cycles:
            offer = k < len(items) and valid_pattern(cycle)
            ctx.set(dut.i.valid, int(offer))
            g_offer = False
            if offer:
                set_beat(ctx, dut.i, items[k][1])
                if row_param:
                    ctx.set(dut.params.row, items[k][0])
                if items[k][1]["pass_"] == passes - 1 and g_rows is not None:
                    g_offer = True
                    set_beat(ctx, dut.g, g_items[gk])
            ctx.set(dut.g.valid, int(g_offer))
            take = ready_pattern(cycle)
            ctx.set(dut.o.ready, int(take))
            fire = offer and ctx.get(dut.i.ready)
            g_fire = g_offer and ctx.get(dut.g.ready)
            assert fire == g_fire or not g_offer, f"cycle {cycle}: i and g must move together"
            got = None
            if take and ctx.get(dut.o.valid):
                p = dut.o.payload
                got = ([ctx.get(p.data[l]) for l in range(lanes)], ctx.get(p.count),
                       ctx.get(p.first), ctx.get(p.last), ctx.get(p.pass_))
            await ctx.tick()
            if fire:
                accepted.append((cycle, items[k][1]["pass_"]))
                k += 1
                gk += int(g_fire)
            if got is not None:
                out.append(got)
                emitted.append(cycle)
                if got[3]:
                    row_done.append(cycle)
            cycle += 1
        assert len(out) == want_beats, f"{len(out)} of {want_beats} beats after {cycle} cycles"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # reassemble rows; check the beat metadata
    results, pos = [], 0
    for row in rows:
        nb = -(-len(row) // lanes)
        beats = out[pos:pos + nb]
        pos += nb
        vals = []
        for b, (data, count, first, last, pass_) in enumerate(beats):
            assert (first, last, pass_) == (int(b == 0), int(b == nb - 1), passes - 1)
            assert count == min(lanes, len(row) - b * lanes)
            assert all(v == 0 for v in data[count:]), "lanes beyond count must be 0"
            vals += data[:count]
        results.append(vals)
    first_last_pass = next(c for c, p in accepted if p == passes - 1)
    stats = {"latency": emitted[0] - first_last_pass, "row_cycles": row_done,
             "cycles": row_done[-1] + 1}
    return results, stats


def _struct_beats(row, lanes, pass_, fields):
    beats = row_beats(list(range(len(row))), lanes, pass_)
    for b in beats:
        b["data"] = [{f: row[i][j] for j, f in enumerate(fields)} if b["count"] > k else
                     {f: 0 for f in fields} for k, i in enumerate(b["data"])]
    return beats


def norm_rows(rng, d, n_random=3):
    """Edge rows plus random rows of length d (int32 codes, F = 16)."""
    rows = [[0] * d, [7 << F] * d, [fixed.INT32_MIN] * d, [fixed.INT32_MAX] * d,
            [rng.choice((fixed.INT32_MIN, fixed.INT32_MAX)) for _ in range(d)]]
    sink = [int(rng.gauss(0, 1) * 2**F) for _ in range(d)]
    sink[d // 3] = 24900 << F                                           # attention sink
    rows.append(sink)
    rows.append([rng.randint(-3, 3) for _ in range(d)])                 # tiny values (u < 0)
    for k in range(n_random):
        scale = 10 ** rng.uniform(-3, 3)
        rows.append([max(fixed.INT32_MIN, min(fixed.INT32_MAX, int(rng.gauss(0, scale) * 2**F)))
                     for _ in range(d)])
    return rows


def _golden_rms(rows, gamma, eps):
    x = torch.tensor(rows, dtype=torch.int32)
    return sfu.rmsnorm(x, F, torch.tensor(gamma, dtype=torch.int32), F, eps, F).tolist()


def _golden_ln(rows, gamma, beta, eps):
    x = torch.tensor(rows, dtype=torch.int32)
    return sfu.layernorm(x, F, torch.tensor(gamma, dtype=torch.int32),
                         torch.tensor(beta, dtype=torch.int32), F, eps, F).tolist()


def _eps_of(params):
    return fixed.multiplier_value(params["eps_mult"], params["eps_shift"])


@pytest.mark.parametrize("lanes,d,eps", [(4, 37, 1e-5), (1, 5, 1e-5), (4, 64, 0.0), (8, 19, 0.25)])
def test_rmsnorm_matches_golden(lanes, d, eps):
    rng = random.Random(d)
    dut = RMSNorm(lanes)
    params = norm_params(d, eps)
    rows = norm_rows(rng, d)
    gamma = [int(rng.gauss(1, 0.3) * 2**F) for _ in range(d)]
    gamma[0] = fixed.INT32_MIN
    got, stats = run_row_core(dut, rows, params, g_rows=[gamma] * len(rows))
    assert got == _golden_rms(rows, gamma, _eps_of(params))
    assert stats["latency"] == NORM_LATENCY


def test_rmsnorm_backpressure_and_gaps():
    rng = random.Random(11)
    d = 23
    dut = RMSNorm(4)
    params = norm_params(d, 1e-5)
    rows = norm_rows(rng, d, n_random=2)
    gamma = [int(rng.gauss(1, 0.3) * 2**F) for _ in range(d)]
    got, _ = run_row_core(dut, rows, params, g_rows=[gamma] * len(rows),
                          ready_pattern=lambda c: c % 5 < 3, valid_pattern=lambda c: c % 7 != 3)
    assert got == _golden_rms(rows, gamma, _eps_of(params))


@pytest.mark.parametrize("lanes,d,eps", [(4, 37, 1e-5), (2, 8, 0.0), (4, 16, 3.0)])
def test_layernorm_matches_golden(lanes, d, eps):
    rng = random.Random(100 + d)
    dut = LayerNorm(lanes)
    params = norm_params(d, eps, centered=True)
    rows = norm_rows(rng, d)
    rows.append([int((150 + rng.gauss(0, 1)) * 2**F) for _ in range(d)])   # large mean
    gamma = [int(rng.gauss(1, 0.3) * 2**F) for _ in range(d)]
    beta = [int(rng.gauss(0, 0.2) * 2**F) for _ in range(d)]
    beta[-1] = fixed.INT32_MAX
    pairs = list(zip(gamma, beta))
    got, stats = run_row_core(dut, rows, params, g_rows=[pairs] * len(rows),
                              g_fields=("gamma", "beta"), ready_pattern=lambda c: c % 4 != 1)
    eps_eff = _eps_of(params) / (d * d)
    want = _golden_ln(rows, gamma, beta, eps_eff)
    # golden re-derives quantize_multiplier(eps * d * d): the test's eps must round-trip
    assert fixed.quantize_multiplier(eps_eff * d * d) == (params["eps_mult"], params["eps_shift"])
    assert got == want
    assert got[1] == beta                           # a constant row gives exactly beta


@pytest.mark.slow
def test_rmsnorm_long_rows():
    """Rows of a few thousand elements (SmolLM2's 576 under CI): one beat per cycle in passes 0 and 1,
    one per two cycles in pass 2 (its two products per lane share the lane's multiplier bank)."""
    rng = random.Random(12)
    d = 576 if REDUCED else 4096
    lanes = 16
    dut = RMSNorm(lanes)
    params = norm_params(d, 1e-5)
    rows = [norm_rows(rng, d, 1)[k] for k in (5, 7)]
    gamma = [int(rng.gauss(1, 0.3) * 2**F) for _ in range(d)]
    got, stats = run_row_core(dut, rows, params, g_rows=[gamma] * len(rows))
    assert got == _golden_rms(rows, gamma, _eps_of(params))
    beats = d // lanes
    per_row = stats["row_cycles"][1] - stats["row_cycles"][0]
    # 1 + 1 + 2 cycles per beat over the three passes plus the fixed row overhead (stats + rsqrt + pipeline)
    assert 4 * beats <= per_row <= 4 * beats + 60, per_row


def test_bad_configuration():
    with pytest.raises(SfuArithError, match="lanes=0"):
        RMSNorm(0)
    with pytest.raises(SfuArithError, match="cols=0"):
        norm_params(0, 1e-5)
    with pytest.raises(SfuArithError, match="output left shift"):
        RMSNorm(4, frac_gamma=0, frac_out=30)


def cocotb_row_core(dut, top, rows, params, want_rows, *, g_rows=None, g_fields=None,
                    row_param=False):
    """Run the row core on Verilator (tests/rtl/tb_sfu_arith.py): every row ``dut.passes`` times,
    g beats with the last pass, expected output beats from golden ``want_rows``."""
    from tests.test_hw_sfu_arith import run_cocotb_stream

    lanes, passes = dut.lanes, dut.passes
    items, g_items, g_with, p_items, expected = [], [], [], [], []
    for r, row in enumerate(rows):
        for p in range(passes):
            beats = row_beats(row, lanes, p)
            items += beats
            p_items += [dict(params, row=r) if row_param else params] * len(beats)
            g_with += [int(p == passes - 1 and g_rows is not None)] * len(beats)
            if p == passes - 1 and g_rows is not None:
                g_items += row_beats(g_rows[r], lanes, p) if g_fields is None else \
                    _struct_beats(g_rows[r], lanes, p, g_fields)
        for b in row_beats(want_rows[r], lanes, passes - 1):
            expected.append(b)
    return run_cocotb_stream(dut, top, items, expected, g_items=g_items if g_rows is not None else None,
                             g_with=g_with if g_rows is not None else None, params=p_items,
                             cycles=len(items) * 3 + 100 * len(rows) + 400)


@pytest.mark.rtl
@requires_verilator
@pytest.mark.parametrize("centered", [False, True])
def test_norm_cocotb_verilator(centered):
    rng = random.Random(30)
    d, lanes = 45, 4
    params = norm_params(d, 1e-5, centered=centered)
    rows = norm_rows(rng, d, n_random=2 if REDUCED else 8)
    gamma = [int(rng.gauss(1, 0.3) * 2**F) for _ in range(d)]
    if centered:
        beta = [int(rng.gauss(0, 0.2) * 2**F) for _ in range(d)]
        want = _golden_ln(rows, gamma, beta, _eps_of(params) / (d * d))
        cocotb_row_core(LayerNorm(lanes), "sfu_layernorm_l4", rows, params, want,
                        g_rows=[list(zip(gamma, beta))] * len(rows), g_fields=("gamma", "beta"))
    else:
        want = _golden_rms(rows, gamma, _eps_of(params))
        cocotb_row_core(RMSNorm(lanes), "sfu_rmsnorm_l4", rows, params, want,
                        g_rows=[gamma] * len(rows))


@pytest.mark.rtl
@requires_verilator
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_norm_verilog_lints_clean(kind):
    from olivine.hw.export import lint, verilog
    from olivine.hw.resources import build_unit
    from olivine.hw.sfu_arith import LINT_WAIVERS

    dut, top = build_unit(f"sfu_{kind}", {"lanes": 2})
    lint(verilog(dut, top), top, waivers=LINT_WAIVERS)
