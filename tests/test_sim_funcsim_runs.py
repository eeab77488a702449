"""Runs of independent same-kind instructions executed together (sim/funcsim.py ``FuncSim._execute_run``).

The scheduler hands a run of Q.K^T / P'.V MVs sharing their K or V block, of V shifts, RoPEs or INT8
quants to one numpy pass. Every test runs the same program from the same state twice: with runs
(``run_together = True``, the default) and strictly one by one; the buffers, the HBM, the statistics
and any error must be identical. A spy on ``_execute_run`` shows that the run path (or its refusal)
was really taken.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
import torch

from olivine.compiler import isa
from olivine.compiler.asm import assemble
from olivine.golden import contract, fixed
from olivine.hw.config import for_board
from olivine.sim.funcsim import FuncSim, SimError

CFG = for_board("u280")

# ---- a decode step's attention for one kv group, as the compiler emits it --------------------
HD, S, POS = 64, 32, 20  # head width, keys, the query's position
QB = 128  # stride of the per-head Q blocks
RQ, RK, QQ, KQ = 0x1000, 0x1400, 0x2000, 0x2400  # q rows, k row, Q blocks, k block
KB, VB = 0x4000, 0x6000  # K and V blocks (codes, then exponents and mantissas)
SC, PB, AT, REC = 0x8000, 0x9000, 0xA000, 0xB000  # scores, shifted P' blocks, attention out, RoPE record
PBLK = 4 * S + 64  # stride of the P' blocks
IMM = POS | (1 << 16)

ATTENTION = [
    ("rope_q", f"MISC op=rope src0={RQ} dst={RQ} rows=3 cols={HD} src1={REC} imm={POS | (3 << 16)}"),
    ("rope_k", f"MISC op=rope src0={RK} dst={RK} rows=1 cols={HD} src1={REC} imm={IMM}"),
    ("quant_q", f"MISC op=quant src0={RQ} dst={QQ} rows=3 cols={HD} imm=3 release=mpe"),
    ("quant_k", f"MISC op=quant src0={RK} dst={KQ} rows=1 cols={HD} imm=1"),
    *[(f"qk{j}", f"MV mode=qk out=fixed32 k_blocks={HD // 16} n={S} ldo={S} a_addr={QQ + j * QB} b_addr={KB} "
                 f"out_addr={SC + 4 * j * S} bias_addr=0" + (" wait=sfu" if j == 0 else "")
                 + (" release=sfu" if j == 2 else "")) for j in range(3)],
    ("softmax", f"MISC op=softmax wait=mpe mask=1 src0={SC} dst={SC} rows=3 cols={S} imm={IMM}"),
    *[(f"vshift{j}", f"MISC op=vshift release=mpe src0={SC + 4 * j * S} src1={VB + S * HD} dst={PB + j * PBLK} "
                     f"rows=1 cols={S} imm={IMM}") for j in range(3)],
    *[(f"pv{j}", f"MV mode=pv wait=sfu out=fixed32 k_blocks={S // 16} n={HD} ldo={3 * HD} a_addr={PB + j * PBLK} "
                 f"b_addr={VB} out_addr={AT + 4 * j * HD} bias_addr=1") for j in range(3)],
]


def program(lines, **changes) -> np.ndarray:
    """The words of ``lines`` ([(name, text)]) with fields changed: ``name={"field": value}``."""
    out = []
    for name, text in lines:
        for f, val in changes.get(name, {}).items():
            text, hit = re.subn(rf"\b{f}=\S+", f"{f}={val}", text)
            if not hit:
                text += f" {f}={val}"
        out.append(text)
    return isa.encode_program(assemble("\n".join(out) + "\nSYS op=end"))


def _fixed(shape, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return fixed.to_fixed(torch.randn(*shape, generator=g, dtype=torch.float64) * scale, 16)


def attention_sim(seed: int = 0) -> FuncSim:
    """A core holding the q and k rows, the K and V blocks, the RoPE record and the two multipliers."""
    s = FuncSim(CFG, [1 << 12])
    s.put_i32(RQ, _fixed((3, HD), 2.0, seed))
    s.put_i32(RK, _fixed((1, HD), 2.0, seed + 1))
    for addr, sd in ((KB, seed + 2), (VB, seed + 3)):
        qa = contract.quantize_act_dynamic_int8(_fixed((S, HD), 2.0, sd), 16)
        s.put_qblock(addr, qa.values, qa.exponent, qa.mantissa)
    rec = np.zeros(6, dtype="<f8")
    rec[0] = 10000.0
    s.data[REC: REC + 48] = rec.view(np.uint8)  # theta, head_dim 0 (= cols), no scaling
    ent = np.zeros((2, 4), dtype=np.int64)
    for r, scale in enumerate((2.0 ** -16 / math.sqrt(HD) / 127**2, 2.0 ** (8 - 16) / 127)):
        m = contract.quantize_multiplier(torch.tensor(scale))
        ent[r, 1:3] = int(m.mult), int(m.shift)
    s.buffers["bias"][:32] = (ent & 0xFFFFFFFF).astype(np.uint32).view(np.uint8).reshape(-1)
    return s


def _state(s: FuncSim):
    return (s.data.copy(), {k: b.copy() for k, b in s.buffers.items()}, [h.copy() for h in s.hbm],
            dict(s.stats.instructions), dict(s.stats.by_mnemonic), dict(s.stats.hbm_read), dict(s.stats.hbm_written))


def _assert_same_state(a, b):
    assert np.array_equal(a[0], b[0]), "data space differs"
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1]), "a buffer differs"
    assert all(np.array_equal(x, y) for x, y in zip(a[2], b[2])), "HBM differs"
    assert a[3:] == b[3:], "statistics differ"


def _run_side_by_side(s, prog, ref, ref_prog):
    """``prog`` on ``s`` (scheduled as "attention") and ``ref_prog`` on ``ref``: the same error (or none)
    and the same state afterwards; returns the error message or None."""
    errors = []
    for core, p in ((s, prog), (ref, ref_prog)):
        try:
            core.run(None, p, schedule_key="attention" if core is s else None)
            errors.append(None)
        except SimError as exc:
            errors.append(str(exc))
    assert errors[0] == errors[1]
    _assert_same_state(_state(s), _state(ref))
    return errors[0]


def both_ways(make_sim, words, fuse=False):
    """Run ``words`` with runs and one by one from equal states: (error text or None, state, runs taken
    [(first instruction's key, length, executed together)]). ``fuse``: attention chains executed as one
    too (FuncSim.fuse_attention; the chains taken are then in the list as ("chain", steps, executed))."""
    results = []
    for together in (True, False):
        s = make_sim()
        s.run_together = together
        s.fuse_attention = fuse
        taken = []
        inner, inner_chain = s._execute_run, s._execute_chain

        def spy(insts, inner=inner, taken=taken, s=s):
            ok = inner(insts)
            taken.append((s._run_key(insts[0])[:2], len(insts), ok))
            return ok

        def spy_chain(groups, inner=inner_chain, taken=taken):
            ok = inner(groups)
            taken.append(("chain", len(groups), ok))
            return ok

        s._execute_run, s._execute_chain = spy, spy_chain
        err = None
        try:
            s.run(words)
        except SimError as exc:
            err = str(exc)
        results.append((err, _state(s), taken))
    (err_t, st_t, taken), (err_1, st_1, taken_1) = results
    assert taken_1 == []  # one by one: no run is attempted
    assert err_t == err_1
    _assert_same_state(st_t, st_1)
    return err_t, st_t, taken


def test_attention_runs_equal_one_by_one_and_are_taken():
    err, st, taken = both_ways(attention_sim, program(ATTENTION))
    assert err is None
    kinds = {(k, n) for k, n, ok in taken if ok}
    # Q.K^T and P'.V (MV, modes 1 and 2), the three V shifts, the two RoPEs, the q and k quants
    assert kinds == {(("MV", 1), 3), (("MV", 2), 3), (("vshift", 1), 3), (("rope", HD), 2), (("quant", HD), 2)}, kinds
    data = st[0]
    assert data[AT: AT + 4 * 3 * HD].any() and data[PB: PB + 3 * PBLK].any()  # the results are not empty


def test_a_qk_run_equals_golden():
    """The run path against golden directly (not only against the one-by-one path)."""
    s = attention_sim(3)
    q = _fixed((3, HD), 2.0, 40)
    qa = contract.quantize_act_dynamic_int8(q, 16)
    for j in range(3):
        s.put_qblock(QQ + j * QB, qa.values[j:j + 1], qa.exponent[j:j + 1], qa.mantissa[j:j + 1])
    s.run(program([(n, t.replace(" wait=sfu", "")) for n, t in ATTENTION[4:7]]))
    codes, ek, mk = s.qblock(KB, S, HD)
    acc = contract.int_matmul(qa.values, codes)
    mult = contract.Multiplier(torch.from_numpy(s.entries(0, 1)[:, 1].astype(np.int64)),
                               torch.from_numpy(s.entries(0, 1)[:, 2].astype(np.int64)))
    want = contract.requantize(acc, mult, qa.exponent.to(torch.int64) + ek.to(torch.int64).reshape(1, S),
                               mantissa=qa.mantissa.to(torch.int64) * mk.reshape(1, S))
    assert torch.equal(s.i32(SC, 3, S), want.to(torch.int32))


BIG = (CFG.buffers.activation_kib + CFG.buffers.global_kib) * 1024  # the first byte past the data space


BAD_Q = 0xC000  # a Q block with a mantissa of 300 (beyond what the quant writes)


def _bad_q_mantissa(s):
    s.data[BAD_Q + HD + 1: BAD_Q + HD + 3] = np.array([300], dtype="<u2").view(np.uint8)


def _bad_v_mantissa(s):
    s.data[VB + S * HD + S + 6: VB + S * HD + S + 8] = np.array([257], dtype="<u2").view(np.uint8)


def _bad_multiplier(s):
    s.buffers["bias"][4:8] = np.array([1 << 31], dtype="<u4").view(np.uint8)


def _bad_theta(s):
    s.data[REC: REC + 8] = np.array([0.5], dtype="<f8").view(np.uint8)


# (what, field changes, data change, expected error text, or "refused" / "together": no fault expected)
FAULTS = [
    ("2nd Q block beyond the data space", {"qk1": {"a_addr": BIG - 8}}, None, "outside a buffer"),
    ("2nd Q block mantissa 300", {"qk1": {"a_addr": BAD_Q}}, _bad_q_mantissa, "a row mantissa is 300"),
    ("shared multiplier with bit 31", {}, _bad_multiplier, "bit 31 set"),
    ("3rd P'.V output misaligned", {"pv2": {"out_addr": AT + 4 * 2 * HD + 2}}, None, "unaligned address"),
    ("2nd P'.V with a bias", {"pv1": {"bias": 1}}, None, "bias must be 0 in mode=pv"),
    ("3rd P'.V output beyond the data space", {"pv2": {"out_addr": BIG - 64}}, None, "outside a buffer"),
    ("shared V mantissa 257", {}, _bad_v_mantissa, "mantissa is 257"),
    ("2nd V shift beyond the data space", {"vshift1": {"dst": BIG - 4 * S}}, None, "outside a buffer"),
    ("3rd V shift input misaligned", {"vshift2": {"src0": SC + 4 * 2 * S + 2}}, None, "unaligned address"),
    ("bad RoPE theta", {}, _bad_theta, "theta"),
    ("2nd RoPE output misaligned", {"rope_k": {"dst": RK + 2, "src0": RK + 2}}, None, "unaligned address"),
    ("2nd quant rows not divisible", {"quant_k": {"rows": 3, "imm": 2}}, None, "divisible"),
    ("2nd quant beyond the data space", {"quant_k": {"dst": BIG - 16}}, None, "outside a buffer"),
    # not a fault: the 2nd Q.K^T reads the scores the 1st writes, so the run is not independent
    ("2nd Q.K^T reads the 1st's output", {"qk1": {"a_addr": SC}}, None, "refused"),
    # the 2nd P'.V overwrites part of the 1st's output: independent (the writes keep their order)
    ("P'.V outputs overlap", {"pv1": {"out_addr": AT + 4 * 8}}, None, "together"),
]


@pytest.mark.parametrize("what,changes,damage,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_faulting_or_dependent_run_gives_the_one_by_one_result(what, changes, damage, message):
    def make():
        s = attention_sim(7)
        if damage is not None:
            damage(s)
        return s

    err, _, taken = both_ways(make, program(ATTENTION, **changes))
    if message == "together":
        assert err is None and all(ok for _, _, ok in taken) and len(taken) == 5
        return
    assert any(not ok for _, _, ok in taken), "the run was not refused"
    if message != "refused":
        assert err is not None and message in err, err
        assert re.match(r"instruction \d+ at word \d+ \(", err)


def test_a_run_stops_where_a_token_is_missing():
    # the 2nd Q.K^T waits for a token the SFU gives only after the 1st Q.K^T's token reached it
    qk = [t.replace(" wait=sfu", "").replace(" release=sfu", "") for n, t in ATTENTION if n.startswith("qk")]
    quant_q = dict(ATTENTION)["quant_q"]
    lines = [("quant_q", quant_q), ("qk0", qk[0] + " release=sfu"),
             ("copy", f"MISC op=copy wait=mpe release=mpe src0={RQ} dst={RQ + 0x200} rows=1 cols=4"),
             ("qk1", qk[1] + " wait=sfu"), ("qk2", qk[2])]
    err, _, taken = both_ways(attention_sim, program(lines))
    assert err is None
    assert taken == [(("MV", 1), 2, True)]  # qk1 with qk2 once the token is there, never qk0 with qk1


def test_a_run_counts_the_tokens_its_instructions_take():
    # one SFU token is there when the MPE reaches qk0; qk1 needs a second one, which the SFU gives only
    # after rewriting qk1's Q block: qk1 must read the rewritten block
    qk = [t.replace(" wait=sfu", "").replace(" release=sfu", "") for n, t in ATTENTION if n.startswith("qk")]
    lines = [("quant_q", dict(ATTENTION)["quant_q"]), ("qk0", qk[0] + " wait=sfu release=sfu"),
             ("copy", f"MISC op=copy wait=mpe release=mpe src0={SC + 0x400} dst={QQ + QB} rows=1 cols=16"),
             ("qk1", qk[1] + " wait=sfu"), ("qk2", qk[2])]

    def make():
        s = attention_sim(5)
        s.data[SC + 0x400: SC + 0x440] = 0  # a zero Q block (exponent 0, mantissa 0): zero scores
        return s

    err, st, taken = both_ways(make, program(lines))
    assert err is None and (("MV", 1), 2, True) in taken
    scores = st[0][SC: SC + 4 * 3 * S].view("<i4").reshape(3, S)
    assert scores[0].any() and not scores[1].any() and scores[2].any()


# ---- random runs on random memory -------------------------------------------------------------
SLOT = 0x200


def _random_sim(seed: int) -> FuncSim:
    """A core whose data space holds, in slots of 512 bytes, valid blocks of every kind the runs read
    (Q rows, K / V blocks of 16 x 16, score rows, P' rows, int32 rows), with a few damaged values."""
    rng = np.random.default_rng(seed)
    s = FuncSim(CFG, [1 << 12])
    for j in range(48):
        base = j * SLOT
        kind = j % 4
        if kind == 0:  # an INT8 block of 16 rows x 16 (K or V; Q when read as one row)
            codes = rng.integers(-127, 128, (16, 16))
            exps = rng.integers(-3, 8, 16)
            mants = rng.integers(1, 257 + (rng.random() < 0.1) * 100, 16)
            s.put_qblock(base, torch.from_numpy(codes).to(torch.int8), torch.from_numpy(exps).to(torch.int8),
                         torch.from_numpy(mants))
            one = base + 304
            s.put_qblock(one, torch.from_numpy(codes[:1]).to(torch.int8), torch.from_numpy(exps[:1]).to(torch.int8),
                         torch.from_numpy(mants[:1]))
        elif kind == 1:  # probabilities / shifted P' rows, then exponents
            s.put_i32(base, rng.integers(0, 1 << 16, (4, 16)).astype(np.int32))
            s.data[base + 256: base + 260] = rng.integers(-3, 8, 4).astype(np.int8).view(np.uint8)
        else:  # int32 fixed-point rows (scores, RoPE / quant inputs), some at the int32 extremes
            hi = (1 << 31) - 1 if rng.random() < 0.2 else 1 << 20
            s.put_i32(base, rng.integers(-hi, hi, (SLOT // 64, 16)).astype(np.int32))
    rec = np.zeros(6, dtype="<f8")
    rec[0] = 10000.0 if seed % 7 else 0.9
    s.data[0x7F00: 0x7F30] = rec.view(np.uint8)
    ent = np.zeros((3, 4), dtype=np.int64)
    ent[0, 1:3] = 1 << 30, 40 + seed % 5
    ent[1, 1:3] = 1 << 30, 38
    ent[2, 1:3] = (1 << 31) + 5, 30  # bit 31: a faulting entry
    s.buffers["bias"][:48] = (ent & 0xFFFFFFFF).astype(np.uint32).view(np.uint8).reshape(-1)
    return s


def _random_run(rng: random.Random) -> list[str]:
    """1..4 instructions of one kind sharing what a run shares, with likely (and some unlikely) operands."""
    slot = lambda kind=None: (rng.choice(range(kind, 48, 4)) if kind is not None and rng.random() < 0.9
                              else rng.randrange(48)) * SLOT
    kind = rng.choice(["qk", "pv", "vshift", "rope", "quant"])
    n = rng.randint(1, 4)
    out, kb, bias = [], slot(0), rng.choice([0, 0, 0, 1, 1, 2])
    rows, imm = rng.choice([1, 1, 2, 4]), rng.choice([0, 3, 15, 16, 3 | (2 << 16)])
    for _ in range(n):
        o = slot(rng.choice([1, 2, 3])) + rng.choice([0] * 8 + [64, 2])
        if kind == "qk":
            out.append(f"MV mode=qk out={rng.choice(['fixed32', 'fixed32', 'int8', 'int32'])} k_blocks=1 n=16 "
                       f"a_addr={slot(0) + 304} b_addr={kb} out_addr={o} bias_addr={bias}")
        elif kind == "pv":
            out.append(f"MV mode=pv out=fixed32 k_blocks=1 n=16 ldo={rng.choice([0, 16, 32])} "
                       f"a_addr={slot(1) + rng.choice([0, 0, 64])} b_addr={kb} out_addr={o} bias_addr={bias}")
        elif kind == "vshift":
            out.append(f"MISC op=vshift src0={slot(1)} src1={kb + 256} dst={o} rows={rows} cols=16 "
                       f"imm={imm if imm < 16 else 0}")
        elif kind == "rope":
            out.append(f"MISC op=rope src0={(s0 := slot(2))} dst={rng.choice([s0, o])} rows={rng.choice([1, 2, 4])} "
                       f"cols=16 src1={0x7F00} imm={rng.randrange(100) | (rng.choice([0, 1, 2]) << 16)}")
        else:
            g = rng.choice([1, 1, 2])
            out.append(f"MISC op=quant src0={slot(2)} dst={o} rows={g * rng.choice([1, 2])} cols=16 "
                       f"imm={g | (rng.random() < 0.3) << 16}")
    return out


def test_random_runs_equal_one_by_one():
    rng = random.Random(1)
    together = refused = faults = 0
    for case in range(80):
        text = [line for _ in range(rng.randint(1, 3)) for line in _random_run(rng)]
        words = isa.encode_program(assemble("\n".join(text) + "\nSYS op=end"))
        err, _, taken = both_ways(lambda: _random_sim(case), words)
        together += sum(ok for _, _, ok in taken)
        refused += sum(not ok for _, _, ok in taken)
        faults += err is not None
    # the campaign reaches both paths and both outcomes
    assert together >= 40 and refused >= 10 and 15 <= faults <= 60, (together, refused, faults)


# ---- a run executed again: its prepared pass (views made once) reads each execution's operands ------

def _attention_operands(s: FuncSim, seed: int, k_mantissa: int | None = None) -> None:
    """New q / k rows and K / V blocks, as a decode step's loads bring them (optionally one K mantissa)."""
    s.put_i32(RQ, _fixed((3, HD), 2.0, seed))
    s.put_i32(RK, _fixed((1, HD), 2.0, seed + 1))
    for addr, sd in ((KB, seed + 2), (VB, seed + 3)):
        qa = contract.quantize_act_dynamic_int8(_fixed((S, HD), 2.0, sd), 16)
        s.put_qblock(addr, qa.values, qa.exponent, qa.mantissa)
    if k_mantissa is not None:
        s.data[KB + S * HD + S + 6: KB + S * HD + S + 8] = np.array([k_mantissa], dtype="<u2").view(np.uint8)


def test_a_run_executed_again_reads_the_new_operands_and_finds_their_faults():
    """The same decoded program (its instruction objects, so the prepared Q.K^T / P'.V passes and the
    cached plan) runs four times on one core with new operands each time; a core that decodes the
    program afresh every time and executes one by one gives the same bytes, statistics and errors."""
    words = program(ATTENTION)
    prog = isa.decode_program(words)
    qk0 = next(i for i in prog if i.fmt.mnemonic == "MV" and i.enum("mode") == "qk")
    pv0 = next(i for i in prog if i.fmt.mnemonic == "MV" and i.enum("mode") == "pv")
    s, ref = attention_sim(0), attention_sim(0)
    s.fuse_attention = False  # the run path (the chain's: test_an_attention_chain_executed_again_...)
    ref.run_together = False
    done = []
    for step, (seed, mant) in enumerate(((0, None), (10, None), (20, None), (30, 300))):
        if step:
            _attention_operands(s, seed, mant)
            _attention_operands(ref, seed, mant)
        error = _run_side_by_side(s, prog, ref, isa.decode_program(words))
        if step == 0:  # wrap the prepared passes (made at the first execution) to see them taken
            for first in (qk0, pv0):
                core, others, independent, prepared = first.__dict__["_sim_run_prepared"]
                assert core is s and independent and prepared is not None

                def counted(insts, prepared=prepared, first=first):
                    ok = prepared(insts)
                    done.append((first.enum("mode"), ok))
                    return ok

                object.__setattr__(first, "_sim_run_prepared", (core, others, independent, counted))
        if step == 1:
            assert not np.array_equal(s.data[AT: AT + 4 * 3 * HD], attention_sim(0).data[AT: AT + 4 * 3 * HD])
    assert error is not None and "K block: a row mantissa is 300" in error
    # steps 1 and 2 took both prepared passes; step 3's Q.K^T pass refused the mantissa (nothing written)
    assert done == [("qk", True), ("pv", True)] * 2 + [("qk", False)], done


def test_programs_sharing_a_schedule_key_differ_in_other_fields():
    """The runtime's patched programs share one execution order (schedule_key): a second program with other
    immediates (one V shift at another query position, so its run key no longer matches its partners')
    executes with the first one's plan exactly as a core without the key executes it one by one."""
    a, b = program(ATTENTION), program(ATTENTION, vshift1={"imm": (POS + 1) | (1 << 16)},
                                        softmax={"imm": (POS + 1) | (1 << 16)})
    s, ref = attention_sim(4), attention_sim(4)
    s.fuse_attention = False
    ref.run_together = False
    taken = []
    inner = s._execute_run
    s._execute_run = lambda insts: taken.append(len(insts)) or inner(insts)
    for words in (a, b, a):
        taken.clear()
        s.run(None, isa.decode_program(words), schedule_key="step")
        ref.run(words)
        _assert_same_state(_state(s), _state(ref))
        # program b: the three V shifts no longer share a key, so their planned run is not attempted
        assert sorted(taken) == ([2, 2, 3, 3] if words is b else [2, 2, 3, 3, 3]), taken
    assert len(s._plans) == 1


def test_statistics_after_a_fault_count_the_instructions_executed_before_it():
    """The instruction counts are added per replay from the plan's totals, or up to the faulting
    instruction: a program whose fourth instruction (the second of a run of V shifts) faults counts the
    three before it, for the run executed together, one by one and again on the same decoded program."""
    words = isa.encode_program(assemble("\n".join([
        f"LD target=act length=64 buf_addr={SC} release=sfu",
        f"MISC wait=ld op=copy src0={SC} dst={SC + 0x100} cols=16",
        f"MISC op=vshift src0={SC} src1={KB} dst={PB} cols={S} imm={IMM}",
        f"MISC op=vshift src0={SC} src1={KB} dst={PB + PBLK} cols={S} imm={IMM + S}",  # position beyond the keys
        f"MISC op=vshift src0={SC} src1={KB} dst={PB + 2 * PBLK} cols={S} imm={IMM}",
        "SYS op=end"])))
    prog = isa.decode_program(words)
    for together in (True, False):
        s = FuncSim(CFG, [1 << 20])
        s.run_together = together
        for _ in range(2):
            before = dict(s.stats.instructions), dict(s.stats.by_mnemonic)
            with pytest.raises(SimError, match="instruction 3 at word .* query position"):
                s.run(None, prog, schedule_key="faulting")
            assert {k: v - before[0].get(k, 0) for k, v in s.stats.instructions.items()} == \
                {"ld": 1, "st": 0, "mpe": 0, "sfu": 2}
            assert {k: v - before[1].get(k, 0) for k, v in s.stats.by_mnemonic.items() if v - before[1].get(k, 0)} \
                == {"LD": 1, "MISC": 2}


# ---- a kv group's attention executed as one chain (FuncSim._execute_chain) ----------------------

def test_an_attention_chain_equals_the_steps_one_by_one_and_is_taken():
    err, st, taken = both_ways(attention_sim, program(ATTENTION), fuse=True)
    assert err is None
    assert ("chain", 4, True) in taken
    # the Q.K^T, softmax, V-shift and P'.V steps no longer go through the run path: RoPE and quant runs do
    assert {(k, n) for k, n, ok in taken if ok and k != "chain"} == {(("rope", HD), 2), (("quant", HD), 2)}
    _, st_runs, _ = both_ways(attention_sim, program(ATTENTION))  # runs, no chain: the same machine
    _assert_same_state(st, st_runs)
    data = st[0]
    assert data[AT: AT + 4 * 3 * HD].any() and data[PB: PB + 3 * PBLK].any() and data[SC: SC + 12 * S].any()


@pytest.mark.parametrize("what,changes,damage,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_faulting_attention_chain_gives_the_one_by_one_result(what, changes, damage, message):
    """Every fault of the run tests with the chain on: the same error and machine as one by one; a fault in
    one of the chain's steps makes the chain refuse (nothing written), which then executes step by step."""
    def make():
        s = attention_sim(7)
        if damage is not None:
            damage(s)
        return s

    err, _, taken = both_ways(make, program(ATTENTION, **changes), fuse=True)
    chains = [(n, ok) for k, n, ok in taken if k == "chain"]
    if message == "together":
        assert err is None and chains == [(4, True)]
    elif any(w in what for w in ("RoPE", "quant")):  # before the attention: no chain reached
        assert chains == []
    elif "P'.V" in what:  # the chain without its P'.V step executes, then the P'.V step faults
        assert chains == [(4, False), (3, True)], chains
    else:
        assert chains and not any(ok for _, ok in chains), chains
    if message not in ("refused", "together"):
        assert err is not None and message in err, err


SC2 = SC + 0x400  # a second score area (the softmax not in place)

# (what, field changes, the chains attempted and whether each was executed)
CHAIN_SHAPES = [
    ("softmax not in place", {"softmax": {"dst": SC2}, **{f"vshift{j}": {"src0": SC2 + 4 * j * S} for j in range(3)}},
     [(4, True)]),
    ("softmax rows beside the scores", {"softmax": {"src0": SC + 4 * S, "dst": SC + 4 * S},
                                        **{f"vshift{j}": {"src0": SC + 4 * (j + 1) * S} for j in range(3)}},
     [(4, False), (3, False)]),
    ("V shifts in reverse order", {f"vshift{j}": {"src0": SC + 4 * (2 - j) * S} for j in range(3)}, [(4, True)]),
    # (the scores read as V mantissas are above 256: the V shift faults, at its instruction)
    ("V exponents in the scores", {f"vshift{j}": {"src1": SC} for j in range(3)}, [(4, False), (3, False)]),
    ("a P' block not a V shift's output", {"pv1": {"a_addr": PB + 3 * PBLK}}, [(4, False), (3, True)]),
    ("the V block over a V shift's output", {f"pv{j}": {"b_addr": PB} for j in range(3)}, [(4, False), (3, True)]),
    ("two P'.V of one V shift", {"pv2": {"a_addr": PB}}, [(4, True)]),
    ("V shift outputs overlap", {"vshift1": {"dst": PB + 8}}, [(4, False), (3, False)]),
]


@pytest.mark.parametrize("what,changes,chains", CHAIN_SHAPES, ids=[c[0] for c in CHAIN_SHAPES])
def test_an_attention_chain_is_taken_only_where_its_data_flow_holds(what, changes, chains):
    """Programs with the chain's step kinds whose operands do (or do not) connect as the chain needs: the
    chain executes exactly where each step reads what the one before wrote and nothing else it reads is
    written inside the chain; every program gives the one-by-one machine."""
    err, _, taken = both_ways(lambda: attention_sim(5), program(ATTENTION, **changes), fuse=True)
    assert err is None or (what == "V exponents in the scores" and "V mantissas: a row mantissa" in err), err
    assert [(n, ok) for k, n, ok in taken if k == "chain"] == chains


def _patched_attention(prog, imms: dict) -> tuple:
    """(words, instructions) of ATTENTION with the imm of each named instruction in ``imms``, decoded as the
    runtime patches: new objects for the patched softmax / V shifts, with their template in ``prog``."""
    words = program(ATTENTION, **{name: {"imm": imm} for name, imm in imms.items()})
    patched = isa.decode_program(words)
    for j, (i, t) in enumerate(zip(patched, prog)):
        if i.fmt.mnemonic == "MISC" and i.enum("op") in ("softmax", "vshift"):
            object.__setattr__(i, "_sim_template", (t, frozenset({"imm"})))
        else:
            patched[j] = t
    return words, patched


def _watched_chain_pair(seed):
    """(core, reference core executing one by one, list of the core's chain outcomes as they happen,
    the decoded attention program)."""
    s, ref = attention_sim(seed), attention_sim(seed)
    ref.run_together = False
    taken = []
    inner = s._execute_chain
    s._execute_chain = lambda groups: taken.append(inner(groups)) or taken[-1]
    return s, ref, taken, isa.decode_program(program(ATTENTION))


def test_an_attention_chain_refuses_v_shifts_patched_to_different_positions():
    """The chain is prepared on the templates while its V shifts share one position; an execution whose
    patch gives one V shift another position (no longer one run key) refuses the chain and equals a
    fresh core one by one; the next execution with one position takes it again."""
    s, ref, taken, prog = _watched_chain_pair(2)
    for other in (IMM, (POS - 3) | (1 << 16), IMM):
        words, patched = _patched_attention(prog, {"softmax": IMM, "vshift0": IMM, "vshift1": other, "vshift2": IMM})
        s.run(None, patched, schedule_key="attention")
        ref.run(words)
        _assert_same_state(_state(s), _state(ref))
    assert taken == [True, False, False, True], taken  # the refused 4-step chain is retried without P'.V


def test_an_attention_chain_executed_again_reads_the_new_operands_and_finds_their_faults():
    """One decoded program four times on one core with new operands each time (its patched form: a new
    query position each time, so the softmax and V shifts take the position per execution), the last with
    a K mantissa of 300: the same bytes, statistics and errors as a core decoding afresh and executing one
    by one; the prepared chain is seen taken three times, then refusing."""
    s, ref, taken, prog = _watched_chain_pair(0)
    for step, (seed, mant) in enumerate(((0, None), (10, None), (20, None), (30, 300))):
        imm = (POS - step) | (1 << 16)
        words, patched = _patched_attention(prog, {"softmax": imm, **{f"vshift{j}": imm for j in range(3)}})
        if step:
            _attention_operands(s, seed, mant)
            _attention_operands(ref, seed, mant)
        error = _run_side_by_side(s, patched, ref, isa.decode_program(words))
    assert error is not None and "K block: a row mantissa is 300" in error
    assert taken[:3] == [True] * 3 and not any(taken[3:]), taken
