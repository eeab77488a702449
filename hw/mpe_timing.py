"""The matrix engine's cycle count, exactly: a cycle-by-cycle model of hw/mpe.py's control path.

:func:`engine_cycles` steps the engine's control registers (the FSM and prescan, the activation
fetcher, the weight loader with its linear / qk / pv / sparse paths, the issuer, the chains'
pipeline with backpressure, the collector, the writer with its parameter reads and the
requantizer) exactly as the RTL updates them, without the data: timing in this engine depends
only on the instruction's fields (shapes, modes, formats and the byte offsets of ``a_addr``,
``b_addr`` and the sparse table row), never on the values. ``hw.mpe.mpe_cycles`` returns it;
tests/test_hw_mpe.py asserts equality with the RTL's cycles on every case it runs.

Cost: one Python step per engine cycle (about 15 us) until the state relative to the column group
repeats, then the repeating column groups are skipped (exact: the control path depends on a
group's base only through comparisons with n; sparse instructions, whose band walk depends on the
absolute group, step every cycle): an MV of n = 2048, K = 2048 at 8 chains takes 0.06 s instead of
0.7 s. Results are cached per (fields, geometry). tests/test_hw_mpe_timing.py checks the
fast-forward against stepping every cycle. ``wgroup`` instructions are stepped every cycle too
(whether a chunk's multipliers straddle two weight words depends on the absolute row).
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

__all__ = ["engine_cycles"]


def engine_cycles(fields: dict, chains: int, *, chain_latency: int, requant_latency: int, a_fifo_depth: int,
                  result_fifo_depth: int, tag_fifo_depth: int, pv_digits: int, fast: bool = True) -> int:
    """Cycles from the accepted ``inst`` to the cycle in which ``done`` is high, for a valid
    instruction (the fields of docs/isa.md "MM / MV", isa names, absent ones 0). ``fast``:
    skip repeating column groups (exact; see the fast-forward in the loop); False steps every
    cycle (the tests compare both)."""
    keys = ("mode", "m", "n", "k_blocks", "out", "accumulate", "wfmt", "sparse", "afmt", "a_addr", "b_addr",
            "meta_addr", "wgroup")
    key = tuple(int(fields.get(k, 0)) for k in keys)
    return _cycles(key, chains, chain_latency, requant_latency, a_fifo_depth, result_fifo_depth, tag_fifo_depth,
                   pv_digits, bool(fast))


@lru_cache(maxsize=4096)
def _cycles(key, C, D, RQ, A_DEPTH, R_DEPTH, T_DEPTH, DIGITS, fast) -> int:
    mode, m, n, kb, out, acc, wfmt, sparse, afmt, a_addr, b_addr, meta_addr, wgroup = key
    linear, qk, pv = mode == 0, mode == 1, mode == 2
    requant_on = out != 0
    blocks = 1 if sparse else (C if wfmt == 0 else 2 * C)
    reuse = kb <= blocks
    wpb = 4 if pv else 1
    a_off, b_off = a_addr % 16, b_addr % 16
    entries = n if linear else 1
    fast = fast and not sparse       # sparse: the band walk depends on the absolute column group
    # wgroup: a group is 2**gs K blocks; row r's multipliers (gbytes) start at mult_base + r * gbytes; a
    # chain's chunk reads them after its values, 1 word or 2 when its NMAX nibbles straddle a word (which
    # depends on the absolute row: no fast-forward)
    gs = 2 if wgroup == 1 else 3
    groups = -(-kb // (1 << gs))
    gbytes = (groups + 1) >> 1
    mult_base = b_addr + (n * kb * 16 if wfmt == 0 else n * kb * 8)
    NMAX, MNIB = max(1, C // 2), 32 * C
    mult_words = (mult_base + n * gbytes - 1) // (16 * C) - mult_base // (16 * C) + 1   # the prescan's reads
    fast = fast and not wgroup

    def mult_reads(row: int, qb: int) -> int:
        off = (2 * (mult_base + row * gbytes) + (qb >> gs)) % MNIB
        return 1 + (off > MNIB - NMAX)
    pv_reads = C // 16 + 1 if C > 16 else 2   # data-space reads per V row (pv)
    slots = max(1, C // 16)          # sparse: 16-row bands per column group

    # ---- CHECK (cycle 1), then the prescan of the data rules / the sparse table
    start = 1
    if out or sparse or wgroup:
        phase, i, hi = (4 if sparse else 6 if wgroup else 0), 0, 0
        pend = pend_bias = pend_meta = pend_g = 0
        table_bytes = (n >> 4) * kb
        t = 2
        while not (phase == 3 and not pend and not pend_bias and not pend_meta and not pend_g):
            npend = npb = npm = npg = 0
            if phase == 6:   # the multipliers, one weight word per cycle
                if i == mult_words:
                    phase, i, hi = (0 if out else 3), 0, 0
                else:
                    npg, i = 1, i + 1
            elif phase in (0, 1):
                skip = (phase == 0 and (pv or afmt)) or (phase == 1 and not qk)
                if skip or i == (m if phase == 0 else n):
                    phase, i, hi = phase + 1, 0, 0
                else:
                    npend = 1
                    if hi:
                        i += 1
                    hi ^= 1
            elif phase == 2:
                if i == entries:
                    phase = 3
                else:
                    npb, i = 1, i + 1
            elif phase == 4:
                if (i << 4) >= table_bytes:
                    phase = 5
                else:
                    npm, i = 1, i + 1
            elif phase == 5:
                if not pend_meta:
                    phase, i = (0 if out else 3), 0
            pend, pend_bias, pend_meta, pend_g = npend, npb, npm, npg
            t += 1
        start = t

    # ---- RUN: the units' registers as ``start`` leaves them
    af_busy, af_cb, af_t0, af_kb, af_w, af_ph = 1, 0, 0, 0, 0, (0 if a_off else 2)
    pend_owner, pend_kind, pend_pair, pend_w = 0, 0, 0, 0
    afifo = 0
    wl_busy, wl_wait, wl_r, wl_i, wl_j, wl_c, wl_cb, wl_t0, wl_qb = 1, 0, 0, 0, 0, 0, 0, 0, 0
    next_full, wp_valid, wp_last = 0, 0, 0
    sp_valid, sp_st, sp_w, sp_half, sp_band, sp_pend, sp_s = 0, 0, 0, 0, -1, 0, 0
    sp_pend_half, sp_pend_c = 0, 0
    is_busy, is_cur, is_j, is_kb, is_cb, is_t0, is_d = 1, 0, 0, 0, 0, 0, 0
    pipe = deque([0] * D)            # pipe[-1]: the chains' output register (o.valid)
    tags: deque = deque()            # the in-flight beats' "last" flags
    results: deque = deque()         # (cb, t0) of the finished (column group, token pair) records
    wr_busy = wr_ph = wr_params = wr_l = wr_c = 0
    wr_cb = wr_t0 = 0
    col_cb = 1 << 17
    p_phase = p_idx = p_sub = 0
    pr_valid = pr_bias = 0
    rq_out: deque = deque()          # cycles at which the requantizer's values come out
    meta_base = meta_addr << 4
    order = [0, 0]                   # (cb, t0) of the next result record, in issue order

    t = start + 1
    seen: dict = {}                  # fast-forward: relative state at column-group starts -> (t, cb)
    last_cb = 0
    while True:
        # ---- done: every unit idle (the FSM's idle_all), seen in the next cycle
        while rq_out and rq_out[0] < t:
            rq_out.popleft()
        if not (af_busy or wl_busy or is_busy or tags or results or wr_busy or rq_out):
            return t + 1

        # ---- fast-forward. The control path depends on a column group's base only through
        #   comparisons with n (and, sparse, through its band): when the whole state relative to
        #   the issuer's column group repeats at two column-group starts, every following group
        #   repeats it too, until some unit comes within reach of n; jump over those groups.
        if fast and is_cb != last_cb:
            last_cb = is_cb
            cbs = (af_cb, wl_cb, wr_cb, order[0], col_cb)
            snap = (tuple(c - is_cb for c in cbs), af_busy, af_t0, af_kb, af_w, af_ph, pend_owner, pend_kind,
                    pend_pair, pend_w, afifo, wl_busy, wl_wait, wl_r, wl_i, wl_j, wl_c, wl_t0, wl_qb, next_full,
                    wp_valid, wp_last, is_busy, is_cur, is_j, is_kb, is_t0, is_d, tuple(pipe), tuple(tags),
                    len(results), wr_busy, wr_ph, wr_params, wr_l, wr_c, wr_t0, order[1], p_phase, p_idx, p_sub,
                    pr_valid, pr_bias, tuple(x - t for x in rq_out))
            if snap in seen:
                t0_, cb0 = seen.pop(snap)
                period, step = t - t0_, is_cb - cb0
                # groups that keep every unit (ahead by at most the loader's next group) clear of n
                groups = (n - 2 * C - step - max(cbs + (is_cb,)) - 1) // step
                if groups > 0:
                    shift, dt = groups * step, groups * period
                    af_cb, wl_cb, wr_cb, col_cb, is_cb = af_cb + shift, wl_cb + shift, wr_cb + shift, \
                        col_cb + shift, is_cb + shift
                    order[0] += shift
                    last_cb = is_cb
                    rq_out = deque(x + dt for x in rq_out)
                    t += dt
                    seen.clear()
            else:
                seen[snap] = (t, is_cb)

        # ---- combinational requests of this cycle
        wr_rd_req = False
        skip_cols = False
        if wr_busy and wr_params:
            if p_phase == 0:
                wr_rd_req = wr_t0 + (p_idx & 1) < m
            elif p_phase == 1:
                skip_cols = (not linear and not qk) or col_cb == wr_cb or wr_cb + p_idx >= n
                wr_rd_req = not skip_cols and not linear
        elif wr_busy:
            ok = wr_t0 + wr_l < m and wr_cb + wr_c < n
            wr_rd_req = bool(not wr_ph and ok and acc)
        loading = wl_busy and not wl_wait
        row_ok = wl_cb + wl_c < n
        ld_rd_req = False
        if loading and not sparse:
            if qk and row_ok:
                ld_rd_req = True
            if pv and not wr_rd_req:
                ld_rd_req = True
        af_req = af_busy and afifo <= A_DEPTH - 2 and not wr_rd_req and not ld_rd_req
        last_digit = not pv or is_d == DIGITS - 1
        can_issue = is_busy and is_cur and afifo > 0 and len(tags) < T_DEPTH
        o_valid = pipe[-1]
        res_w_rdy = len(results) < R_DEPTH
        res_r_rdy = len(results) > 0     # the writer sees the FIFO as it was at the cycle's start
        advance = (not o_valid) or res_w_rdy
        fire = can_issue and advance
        take = o_valid and res_w_rdy
        chunk_blocks = min(blocks, kb - wl_qb)

        # ---- fetcher
        n_pend_owner = 2 if wr_rd_req else 3 if ld_rd_req else 1 if af_req else 0
        a_write = False
        if pend_owner == 1:
            last_w = pend_w == wpb - 1
            a_write = (pend_kind == 2 and last_w and not pend_pair) or (pend_kind == 3 and last_w)
        if af_req:
            af_pair = af_t0 + 1 < m
            pend_kind, pend_pair, pend_w = af_ph, af_pair, af_w
            first_ph = 0 if a_off else 2
            block_end = af_w == wpb - 1
            n_af = dict(ph=af_ph, w=af_w, kb=af_kb, t0=af_t0, cb=af_cb, busy=af_busy)

            def next_beat():
                if af_kb == kb - 1:
                    n_af["kb"] = 0
                    if af_t0 + 2 >= m:
                        n_af.update(t0=0, cb=af_cb + C, ph=first_ph)
                        if af_cb + C >= n:
                            n_af["busy"] = 0
                    else:
                        n_af.update(t0=af_t0 + 2, ph=first_ph)
                else:
                    n_af.update(kb=af_kb + 1, ph=2)

            if af_ph == 0:
                n_af["ph"] = 1 if af_pair else 2
            elif af_ph == 1:
                n_af["ph"] = 2
            else:
                n_af["w"] = 0 if block_end else af_w + 1
                if block_end:
                    if af_ph == 2 and af_pair:
                        n_af["ph"] = 3
                    else:
                        next_beat()
            af_ph, af_w, af_kb, af_t0, af_cb, af_busy = (n_af[k] for k in ("ph", "w", "kb", "t0", "cb", "busy"))
        pend_owner = n_pend_owner
        afifo += (1 if a_write and afifo != A_DEPTH else 0) - (1 if fire and last_digit else 0)

        # ---- weight loader
        n_next_full = next_full
        if wp_valid and wp_last and not sparse:
            n_next_full = 1
        if sp_pend == 3 and sp_pend_half and sp_pend_c == C - 1:
            n_next_full = 1
        n_wp_valid, n_sp_pend = 0, 0
        n_wl = dict(r=wl_r, c=wl_c, wait=wl_wait, i=wl_i, j=wl_j)
        if loading and not pv and not sparse:
            reads = (chunk_blocks + (1 if b_off else 0)) if qk else (2 if wl_qb == 0 else 1)
            if wgroup and row_ok:
                reads += mult_reads(wl_cb + wl_c, wl_qb)
            wp_last = (wl_c == C - 1) and (not row_ok or wl_r == reads - 1)

            def next_chain():
                n_wl["r"] = 0
                if wl_c == C - 1:
                    n_wl.update(c=0, wait=1)
                else:
                    n_wl["c"] = wl_c + 1

            if not row_ok:
                n_wp_valid = 1
                next_chain()
            elif not qk or not wr_rd_req:
                n_wp_valid = 1
                n_wl["r"] = wl_r + 1
                if wl_r == reads - 1:
                    next_chain()
        if loading and pv and not wr_rd_req:
            n_wp_valid = 1
            row_end = wl_r == pv_reads - 1
            wp_last = row_end and wl_i == 15 and wl_j == chunk_blocks - 1
            n_wl["r"] = 0 if row_end else wl_r + 1
            if row_end:
                n_wl["i"] = (wl_i + 1) & 15
                if wl_i == 15:
                    n_wl["j"] = wl_j + 1
                    if wl_j == chunk_blocks - 1:
                        n_wl.update(j=0, wait=1)
        n_sp = dict(st=sp_st, w=sp_w, half=sp_half, band=sp_band, valid=sp_valid, s=sp_s)
        if loading and sparse:
            band0 = wl_cb >> 4
            live_last = min(slots - 1, (n >> 4) - band0 - 1)
            row_addr = meta_base + (band0 + sp_s) * kb
            if sp_st == 0:
                if sp_valid and band0 == sp_band:
                    n_sp["st"] = 1
                elif sp_w == 0:
                    if sp_pend == 0:
                        n_sp["w"] = 1
                else:
                    word = (row_addr >> 4) + sp_w - 1
                    n_sp_pend = 1
                    if (word + 1) << 4 >= row_addr + kb:
                        n_sp["w"] = 0
                        if sp_s == live_last:
                            n_sp.update(st=1, band=band0, valid=1, s=0)
                        else:
                            n_sp["s"] = sp_s + 1
                    else:
                        n_sp["w"] = sp_w + 1
            elif sp_st == 1:
                if sp_pend != 1:
                    n_sp_pend = 2
                    if sp_s == live_last:
                        n_sp.update(st=2, s=0)
                    else:
                        n_sp["s"] = sp_s + 1
            elif sp_pend != 2:
                n_sp_pend = 3
                sp_pend_half, sp_pend_c = sp_half, wl_c
                n_sp["half"] = sp_half ^ 1
                if sp_half:
                    if wl_c == C - 1:
                        n_wl.update(c=0, wait=1)
                        n_sp["st"] = 0
                    else:
                        n_wl["c"] = wl_c + 1
        # the chunk is handed over: the next one
        n_wl_busy, n_cb, n_t0, n_qb = wl_busy, wl_cb, wl_t0, wl_qb
        if wl_busy and wl_wait and not next_full and not wp_valid and sp_pend == 0:
            n_wl["wait"] = 0
            if wl_qb + blocks >= kb:
                n_qb = 0
                if wl_t0 + 2 >= m or reuse:
                    n_t0, n_cb = 0, wl_cb + C
                    if wl_cb + C >= n:
                        n_wl_busy = 0
                else:
                    n_t0 = wl_t0 + 2
            else:
                n_qb = wl_qb + blocks
        wl_r, wl_c, wl_wait, wl_i, wl_j = (n_wl[k] for k in ("r", "c", "wait", "i", "j"))
        sp_st, sp_w, sp_half, sp_band, sp_valid, sp_s = (n_sp[k] for k in ("st", "w", "half", "band", "valid", "s"))
        wl_busy, wl_cb, wl_t0, wl_qb = n_wl_busy, n_cb, n_t0, n_qb
        wp_valid, sp_pend = n_wp_valid, n_sp_pend

        # ---- issuer
        if not is_cur and next_full:
            is_cur, n_next_full = 1, 0
        elif fire:
            tags.append((is_kb == kb - 1) and last_digit)
            if not last_digit:
                is_d += 1
            elif is_kb == kb - 1:
                is_kb, is_j, is_d = 0, 0, 0
                if is_t0 + 2 >= m:
                    if is_cb + C >= n:
                        is_busy = 0
                    is_t0, is_cb, is_cur = 0, is_cb + C, 0
                else:
                    is_t0, is_cur = is_t0 + 2, int(reuse)
            else:
                is_kb, is_d = is_kb + 1, 0
                if is_j == blocks - 1:
                    is_j, is_cur = 0, 0
                else:
                    is_j += 1
        next_full = n_next_full

        # ---- chains and collector
        if take:
            if tags.popleft():
                results.append(None)
        if advance:
            pipe.pop()
            pipe.appendleft(1 if can_issue else 0)

        # ---- writer
        if not wr_busy:
            if res_r_rdy:
                results.popleft()
                # the record's column group and token pair, in the issue order
                wr_cb, wr_t0 = order
                order = [wr_cb + C, 0] if wr_t0 + 2 >= m else [wr_cb, wr_t0 + 2]
                wr_busy, wr_l, wr_c, wr_ph, wr_params, p_phase, p_idx, p_sub = 1, 0, 0, 0, int(requant_on), 0, 0, 0
            pr_valid = pr_bias = 0
        elif wr_params:
            n_pr_valid = n_pr_bias = 0

            def next_item(count):
                """(p_sub, p_idx, p_phase) after an item of a phase of ``count`` items."""
                return (0, 0, p_phase + 1) if p_idx == count - 1 else (0, p_idx + 1, p_phase)

            if p_phase == 0:
                if wr_t0 + (p_idx & 1) >= m:
                    p_phase, p_idx, p_sub = 1, 0, 0
                else:
                    n_pr_valid = 1
                    if p_sub == 2 or pv:
                        p_sub, p_idx, p_phase = next_item(2)
                    else:
                        p_sub += 1
            elif p_phase == 1:
                if skip_cols:
                    p_phase, p_idx, p_sub = 2, 0, 0
                elif linear:
                    n_pr_bias = 1
                    p_sub, p_idx, p_phase = next_item(C)
                else:
                    n_pr_valid = 1
                    if p_sub == 2:
                        p_sub, p_idx, p_phase = next_item(C)
                    else:
                        p_sub += 1
            elif p_phase == 2:
                n_pr_bias = 0 if linear else 1
                p_phase = 3
            elif not pr_valid and not pr_bias:
                wr_params, col_cb = 0, wr_cb
            pr_valid, pr_bias = n_pr_valid, n_pr_bias
        else:
            ok = wr_t0 + wr_l < m and wr_cb + wr_c < n
            emit = False
            step = True
            if not wr_ph:
                if not ok:
                    pass
                elif acc:
                    wr_ph, step = 1, False
                else:
                    emit = True
            else:
                emit = True
            if emit and requant_on:
                rq_out.append(t + RQ)
            if step:
                wr_ph = 0
                if wr_c == C - 1:
                    if wr_l:
                        wr_busy = 0
                    wr_c, wr_l = 0, 1
                else:
                    wr_c += 1
            pr_valid = pr_bias = 0
        t += 1

