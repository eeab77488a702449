"""Controller (hw/controller.py): fetch over AXI4 + decode + unit queues + tokens, in cocotb on
Verilator with cocotbext-axi's AxiRamRead as the program memory and stand-in units.

The reference is docs/isa.md "Units and tokens" twice over: sim/funcsim.py's own scheduler (run
with no-op instruction handlers) gives the verdict and stuck instructions with unbounded queues;
hw.controller.reference_schedule reproduces it (checked here) and adds the finite queues. The RTL
must reach the same verdict and stuck offsets, and its start/finish cycles must respect every
token, the per-unit order and every barrier.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olivine.hw import isa
from olivine.hw.controller import (LINT_WAIVERS, STATES, STATUS_CAUSES, Controller, ProgramFetch,
                                   reference_schedule)
from olivine.hw.export import lint, verilog
from tests.helpers import REDUCED, requires_verilator

RTL_DIR = Path(__file__).parent / "rtl"
QUEUE_DEPTH = 4
OFFSET_BITS = 16
DATA_WIDTH = 64  # two words per beat: exercises the first-beat skip and the width conversion
UNIT_MNEMONICS = {"ld": "LD", "st": "ST", "mpe": "MM", "sfu": "MISC"}


# ---- programs ------------------------------------------------------------------------------------

def token_program(draw_unit, draw_bits, draw_sys, n: int) -> list[isa.Instruction]:
    """n instructions with wait/release masks that mostly pair up (waits follow releases) and
    sometimes do not (a deadlock), plus SYS barriers; the other fields are arbitrary valid."""
    prog, owed = [], np.zeros((4, 4), dtype=int)  # owed[v, u]: tokens v has released to u
    for _ in range(n):
        s = draw_sys()
        if s == 1:
            prog.append(isa.make("SYS", op="barrier"))
            continue
        u = draw_unit()
        wait = 0
        for v in range(4):
            if (owed[v, u] > 0 and draw_bits() < 6) or (draw_bits() == 0 and draw_bits() < 2):  # 1/32: unpaired
                wait |= 1 << v
                owed[v, u] -= 1
        release = 0
        for w in range(4):
            if draw_bits() < 3:
                release |= 1 << w
                owed[u, w] += 1
        mn = UNIT_MNEMONICS[isa.UNITS[u]]
        extra = {"m": 1} if mn == "MV" else {}
        prog.append(isa.make(mn, wait=wait, release=release, **extra))
    # sim/funcsim.py reports a deadlock (naming no unit) when a program's last instruction is a
    # SYS barrier; such a program ends with SYS end here so the comparison tests the scheduling
    if draw_sys() < 4 or prog[-1].mnemonic == "SYS":
        prog.append(isa.make("SYS", op="end"))
    return prog


class _SchedulerOnly:
    """sim/funcsim.py's FuncSim with no-op instruction handlers: only its scheduler runs."""

    def __new__(cls):
        from olivine.hw.config import AcceleratorConfig, BufferConfig
        from olivine.sim.funcsim import FuncSim

        class Sched(FuncSim):
            def do_ld(self, i):
                pass

            do_st = do_mpe = do_misc = do_ld

        cfg = AcceleratorConfig(buffers=BufferConfig(weight_kib=1, activation_kib=1, global_kib=1,
                                                     meta_kib=1, bias_kib=1))
        return Sched(cfg, [16])


def funcsim_verdict(program) -> tuple[str, list]:
    """('done' | 'deadlock', stuck offset per unit or None) from the functional simulator."""
    from olivine.sim.funcsim import DeadlockError

    sim = _SchedulerOnly()
    try:
        sim.run(None, program=program)
    except DeadlockError as exc:
        stuck = [None] * 4
        for line in str(exc).splitlines()[1:]:
            unit, offset = re.match(r"\s+(\w+): instruction \d+ at word (\d+)", line).groups()
            stuck[isa.UNITS.index(unit)] = int(offset)
        return "deadlock", stuck
    return "done", [None] * 4


@settings(max_examples=60 if REDUCED else 300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_reference_schedule_equals_the_functional_simulator(data):
    n = data.draw(st.integers(1, 20))
    prog = token_program(lambda: data.draw(st.integers(0, 3)), lambda: data.draw(st.integers(0, 7)),
                         lambda: data.draw(st.integers(0, 9)), n)
    ref = reference_schedule(prog, None)
    assert (ref["verdict"], ref["stuck"]) == funcsim_verdict(prog)


# ---- RTL -----------------------------------------------------------------------------------------

def _controller():
    return Controller(data_width=DATA_WIDTH, offset_bits=OFFSET_BITS, queue_depth=QUEUE_DEPTH,
                      token_bits=8, max_outstanding=2)


@requires_verilator
def test_controller_verilog_is_lint_clean():
    lint(verilog(_controller(), "olivine_controller"), "olivine_controller", waivers=LINT_WAIVERS)
    lint(verilog(ProgramFetch(data_width=512), "olivine_fetch"), "olivine_fetch", waivers=LINT_WAIVERS)


def run_rtl(programs, latencies, tmp_path, *, watchdog=0, max_cycles=20000, seed=0):
    """Run every (words, per-word latency) on one Verilated controller; -> list of result dicts."""
    from olivine.sim.rtl import run_cocotb

    words, lat, first, lens, addrs = [], [], [], [], []
    addr = 0x40
    for k, (w, l) in enumerate(zip(programs, latencies)):
        first.append(len(words))
        words.extend(int(x) for x in w)
        lat.extend(int(x) for x in l)
        lens.append(len(w))
        addr += 4 * (k % 3)  # word-aligned, not beat-aligned: the fetch skips leading words
        addrs.append(addr)
        addr = (addr + 4 * len(w) + 0x3FF) & ~0x3FF
    # a program that straddles a 4 KiB boundary is included whenever the memory layout gets there
    out = tmp_path / "controller.npz"
    run_cocotb(verilog(_controller(), "olivine_controller"), "olivine_controller", "tb_controller",
               test_dir=RTL_DIR, extra_env={"CONTROLLER_TB_OUT": str(out)},
               # the Verilator build treats warnings as fatal: CASEINCOMPLETE is waived for the
               # reason given in hw.decode.LINT_WAIVERS (Amaranth's partial casez idiom)
               build_args=["-Wno-CASEINCOMPLETE"],
               vectors={"words": np.asarray(words, dtype=np.uint32).astype(np.int64),
                        "latency": np.asarray(lat, dtype=np.int64), "prog_first": first, "prog_len": lens,
                        "prog_addr": addrs, "watchdog": watchdog, "max_cycles": max_cycles,
                        "offset_bits": OFFSET_BITS, "seed": seed})
    r = dict(np.load(out))
    results = []
    for p in range(len(programs)):
        sel = r["event_prog"] == p
        events = {int(o): (int(u), int(s), int(f)) for u, o, s, f in
                  zip(r["event_unit"][sel], r["event_offset"][sel], r["event_start"][sel], r["event_finish"][sel])}
        results.append({"state": STATES[r["state"][p]], "cause": STATUS_CAUSES[r["cause"][p]],
                        "field": int(r["field"][p]), "offset": int(r["offset"][p]),
                        "stuck": [int(o) if v else None for v, o in zip(r["stuck_valid"][p], r["stuck_offset"][p])],
                        "stuck_raw": [(int(v), int(o)) for v, o in zip(r["stuck_valid"][p], r["stuck_offset"][p])],
                        "cycles": int(r["cycles"][p]), "events": events})
    return results


def check_order(program, events):
    """The RTL's start/finish cycles obey docs/isa.md: in order per unit and one at a time, the
    k-th wait of u on v after the k-th release of v to u has finished (tokens pair in each unit's
    program order, whatever the program order between units), nothing across a barrier early."""
    offsets = isa.program_offsets(program)
    releases = {}  # (v, u) -> finish cycles of v's releasing instructions, in v's order
    for off, inst in zip(offsets, program):
        if off in events:
            for w in range(4):
                if inst["release"] >> w & 1:
                    releases.setdefault((isa.UNITS.index(inst.fmt.unit), w), []).append(events[off][2])
    last_finish = [-1] * 4
    used = {}
    gaps = []  # cycles from a done pulse to the start it enables
    barrier_finish, started_since = -1, []
    for off, inst in zip(offsets, program):
        if inst.mnemonic == "SYS":
            barrier_finish = max([events[o][2] for o in started_since], default=barrier_finish)
            started_since = []
            if inst.enum("op") == "end":
                break
            continue
        if off not in events:
            continue
        u, start, finish = events[off]
        assert u == isa.UNITS.index(inst.fmt.unit)
        assert start > last_finish[u], f"@{off}: unit {isa.UNITS[u]} started before its previous instruction ended"
        assert start > barrier_finish, f"@{off} started before the barrier drained"
        for v in range(4):
            if inst["wait"] >> v & 1:
                k = used.get((v, u), 0)
                fins = releases.get((v, u), [])
                assert k < len(fins) and start > fins[k], f"@{off} started without token {isa.UNITS[v]}->{isa.UNITS[u]}"
                gaps.append(start - fins[k])
                used[(v, u)] = k + 1
        last_finish[u] = finish
        started_since.append(off)
    return gaps


@requires_verilator
@pytest.mark.rtl
def test_random_token_programs_match_the_reference(tmp_path):
    rng = np.random.default_rng(3)
    programs, insts, lats = [], [], []
    for k in range(25 if REDUCED else 120):
        prog = token_program(lambda: int(rng.integers(4)), lambda: int(rng.integers(8)),
                             lambda: int(rng.integers(10)), int(rng.integers(1, 24)))
        words = isa.encode_program(prog)
        lat = np.zeros(len(words), dtype=np.int64)
        for off in isa.program_offsets(prog):
            lat[off] = rng.integers(1, 12)
        insts.append(prog)
        programs.append(words)
        lats.append(lat)
    results = run_rtl(programs, lats, tmp_path)
    verdicts, gaps = set(), []
    for prog, res in zip(insts, results):
        ref = reference_schedule(prog, QUEUE_DEPTH)
        got = res["state"] if res["state"] == "done" else res["cause"]
        assert got == ref["verdict"], (got, ref, res)
        assert res["stuck"] == ref["stuck"]  # a done run: nothing stuck (None each), not the SYS end's offset
        assert set(res["events"]) == set(ref["executed"])
        gaps += check_order(prog, res["events"])
        if ref["verdict"] != "queue_deadlock":  # then the hardware agrees with the functional simulator
            assert (got, res["stuck"]) == funcsim_verdict(prog)
        verdicts.add(ref["verdict"])
    assert {"done", "deadlock"} | (set() if REDUCED else {"queue_deadlock"}) <= verdicts, verdicts
    assert min(gaps) == 1  # a released token is usable the cycle after the done pulse
    print(f"done -> dependent start: min {min(gaps)} cycles, median {int(np.median(gaps))}")


@requires_verilator
@pytest.mark.rtl
def test_errors_watchdog_overflow_and_throughput(tmp_path):
    bad = isa.encode_program([isa.make("LD"), isa.make("MM", k_blocks=2), isa.make("SYS", op="end")]).copy()
    bad[9] = int(bad[9]) & 0xFFFFF000  # k_blocks = 0
    hang = isa.encode_program([isa.make("LD", release="mpe"), isa.make("MM", wait="ld"), isa.make("SYS", op="end")])
    overflow = isa.encode_program([isa.make("MISC", release="st")] * 257)
    stream = isa.encode_program([isa.make(m) for m in ("LD", "MISC", "MM", "ST")] * 16 + [isa.make("SYS", op="end")])
    # five MMs wait for an LD that comes after them: the fifth finds the 4-deep MPE queue full
    ahead = isa.encode_program([isa.make("MM", wait="ld")] * 5 + [isa.make("LD", release="mpe")])
    progs = [bad, hang, overflow, stream, ahead]
    lats = [np.ones(len(p), dtype=np.int64) for p in progs]
    lats[1][8] = 0  # the MM of `hang` never finishes
    res = run_rtl(progs, lats, tmp_path, watchdog=200)
    with pytest.raises(isa.IsaError) as info:
        isa.decode_program(bad)
    cause, field = isa.error_code(info.value)
    assert (res[0]["state"], res[0]["cause"], res[0]["offset"], res[0]["field"]) == \
        ("error", STATUS_CAUSES[cause], 9, field)
    assert set(res[0]["events"]) <= {0}  # the LD before the bad word may have run
    assert (res[1]["state"], res[1]["cause"]) == ("error", "watchdog")
    assert res[1]["stuck"][isa.UNITS.index("mpe")] == 8  # the hung MM
    assert (res[2]["state"], res[2]["cause"]) == ("error", "token_overflow")
    assert res[2]["offset"] == 255 * 6  # the 256th release finds the 8-bit counter full
    assert res[3]["state"] == "done" and len(res[3]["events"]) == 64
    assert res[3]["stuck_raw"] == [(0, 0)] * 4  # after done: no stale offset (the SYS end's) behind valid = 0
    assert (res[4]["state"], res[4]["cause"], res[4]["stuck"]) == ("error", "queue_deadlock", [None, None, 0, None])
    starts = sorted(s for _, s, _ in res[3]["events"].values())
    print(f"64 independent 1-cycle instructions (4 units): first start {starts[0]}, last start "
          f"{starts[-1]}, total {res[3]['cycles']} cycles")
