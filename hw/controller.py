"""The core's controller: program fetch over AXI4, decode, dispatch to the unit queues, tokens.

Structure::

  AXI4 read (HBM) -> ProgramFetch -> 32-bit words -> InstructionDecoder -> dispatcher
      dispatcher -> LD queue / ST queue / MPE queue (MM, MV) / SFU queue (MISC)   (SyncFIFO each)
                 -> SYS handled in place: barrier waits until every queue is empty and every unit
                    idle; end does the same, then the program is done
      queue head of unit u starts when u is idle and a token is available from every unit in its
      wait mask (one is consumed from each); when u reports done, one token is added to each
      (u, w) counter of its release mask. Tokens are counters per (sender, receiver) pair.

This is docs/isa.md "Units and tokens", and the same schedule as sim/funcsim.py: each unit runs
its instructions in order, one at a time; SYS instructions ignore their wait/release masks, as
the functional simulator does. A program also ends (done) when its last word has been decoded
and every unit has drained, with or without ``SYS end``.

Errors stop dispatch (instructions already running finish) and set ``status``:
  decode causes (hw.isa.DECODE_CAUSES, with the word offset and field), ``deadlock`` (no unit
  busy, none can start, dispatch waits at a SYS or at the program's end: a token pattern that
  cannot complete; the same verdict and stuck instructions as the functional simulator),
  ``queue_deadlock`` (as deadlock, but dispatch waits for room in a full queue: the program runs
  further ahead on one unit than ``queue_depth`` allows), ``watchdog`` (running, not deadlocked,
  no progress for ``watchdog_limit`` cycles: a unit or the memory hangs), ``token_overflow`` (a
  release would overflow a ``token_bits`` counter), ``fetch_bus`` (RRESP not OKAY),
  ``unit_fault`` (a unit raised ``fault``), ``prog_channel`` (``prog_error`` with ``start``: the
  program's channel does not exist; nothing is fetched). ``status.stuck[u]`` holds, for deadlocks
  and the watchdog, the word offset of the instruction unit u is on (the one in flight, else its
  queue head, else the SYS that dispatch holds), ``valid`` = 0 when u has nothing pending; a run
  that ends done leaves every ``stuck[u]`` 0 (valid and offset).

Ports (see :class:`Controller`):
  start: In(1) pulse, accepted when not running and nothing is in flight.
  prog_error: In(1) with an accepted start: the program's location is invalid (the core's
          ``prog_channel`` beyond its channels); the run ends at once, state error, cause prog_channel.
  prog_addr: In(addr_width) byte address of the program (4-byte aligned); prog_words: In(offset_bits).
  watchdog_limit: In(32) cycles without progress before the watchdog fires (0: never).
  status: Out(status_layout): state (0 idle, 1 running, 2 done, 3 error), cause
          (:data:`STATUS_CAUSES`), field (hw.isa.FIELD_NAMES), offset, stuck[4] (valid, offset).
  busy: Out(1) an AXI burst or a unit instruction is still in flight.
  unit_busy: Out(4) unit u has an instruction in flight; unit_waiting: Out(4) unit u is idle with
          an instruction at its queue head that waits for a token (the core's stall counters).
  fetch: Out(axi4_read_signature) the program's memory port.
  ld, st, mpe, sfu: Out(stream) payload :func:`unit_layout` of the unit (offset, opcode, the
         format's fields); valid only when the instruction may start (tokens present, unit idle);
         the handshake is the start.
  ld_done, ...: In(1) the unit finished its current instruction (one pulse).
  ld_fault, ...: In(1) the unit cannot execute its current instruction (one pulse, instead of done).

Latency: word -> decoded record 1 cycle, record -> queue 1 cycle, queue head -> unit start 0
cycles (``valid`` is combinational); a unit's ``done`` in cycle f makes the released tokens and the
unit itself available in cycle f + 1, so a dependent instruction (or the unit's next one) starts
in f + 1 at the earliest (measured: tests/test_hw_controller.py). Throughput: one program word
per cycle into the decoder, so one instruction per ``words`` cycles (LD 8, ST 5, MM/MV 7, MISC 6,
SYS 1); one instruction start per unit every latency + 1 cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .axi import RESP_OKAY, BurstIssuer, axi4_read_signature, check_data_width
from .decode import LINT_WAIVERS as DECODER_LINT_WAIVERS
from .decode import DEFAULT_OFFSET_BITS, FIELD_BITS, WORD_LAYOUT, InstructionDecoder, format_layout, unit_formats
from .resources import register_unit

__all__ = ["STATES", "STATUS_CAUSES", "UNIT_NAMES", "Controller", "ProgramFetch", "LINT_WAIVERS",
           "status_layout", "unit_layout", "reference_schedule"]

UNIT_NAMES = isa.UNITS  # ("ld", "st", "mpe", "sfu"): bit i of a mask is unit i
STATES = ("idle", "running", "done", "error")
STATUS_CAUSES = isa.DECODE_CAUSES + ("deadlock", "queue_deadlock", "watchdog", "token_overflow",
                                     "fetch_bus", "unit_fault", "prog_channel")
CAUSE_BITS = (len(STATUS_CAUSES) - 1).bit_length()

#: -Wall waivers of the controller's Verilog (the decoder's, plus hierarchy aliases).
LINT_WAIVERS: dict[str, str] = {
    **DECODER_LINT_WAIVERS,
    "UNUSEDSIGNAL": "Amaranth's Verilog backend keeps a named wire for every named signal, view "
                    "field and submodule port (the fetch's AXI ports, the FIFOs' level/data ports, "
                    "the status view's fields) and drives the logic from the underlying net, so "
                    "these aliases read as unused by construction (as for the sparse DSP chain).",
}


def unit_layout(unit: str, offset_bits: int = DEFAULT_OFFSET_BITS) -> data.StructLayout:
    """What unit ``unit`` receives per instruction: its word offset, opcode and format fields
    (MM and MV share one layout; the opcode tells them apart)."""
    fmt = unit_formats(unit)[0]
    return data.StructLayout({"offset": unsigned(offset_bits), "opcode": unsigned(4),
                              "fields": format_layout(fmt)})


def status_layout(offset_bits: int = DEFAULT_OFFSET_BITS) -> data.StructLayout:
    stuck = data.StructLayout({"valid": 1, "offset": unsigned(offset_bits)})
    return data.StructLayout({
        "state": unsigned(2), "cause": unsigned(CAUSE_BITS), "field": unsigned(FIELD_BITS),
        "offset": unsigned(offset_bits), "stuck": data.ArrayLayout(stuck, len(UNIT_NAMES)),
    })


class ProgramFetch(wiring.Component):
    """Reads ``words`` 32-bit words from ``addr`` over AXI4 and streams them out, ``last`` on the
    final one.

    Ports: start (In 1, pulse; loads addr/words), addr (In addr_width, 4-byte aligned), words
    (In offset_bits, >= 1), stop (In 1: issue no further bursts, discard data), axi (Out read
    signature), out (Out stream WORD_LAYOUT), busy (Out 1: bursts outstanding or words to
    deliver), delivered (Out 1: every word has been handed out since the last start), bus_error
    (Out 1, sticky: an RRESP other than OKAY).
    Bursts: beat-aligned INCR, split at ``max_burst`` (<= 256) beats and 4 KiB, up to
    ``max_outstanding`` in flight (hw.axi.BurstIssuer).
    Latency: memory latency + 1 cycle (the beat register) to the first word.
    Throughput: one word per cycle; a beat is accepted in the cycle its last word leaves, so a
    stream of beats runs without bubbles.
    """

    def __init__(self, *, data_width: int = 512, addr_width: int = 64, id_width: int = 1,
                 offset_bits: int = DEFAULT_OFFSET_BITS, max_outstanding: int = 4, max_burst: int = 256):
        self.beat_bytes = check_data_width(data_width)
        self.data_width, self.addr_width, self.offset_bits = data_width, addr_width, offset_bits
        self.max_outstanding = max_outstanding
        if not 1 <= max_burst <= 256:
            raise ValueError(f"max_burst={max_burst}: AXI4 bursts have 1..256 beats")
        self.max_burst = max_burst
        super().__init__({
            "start": In(1), "addr": In(addr_width), "words": In(offset_bits), "stop": In(1),
            "axi": Out(axi4_read_signature(addr_width, data_width, id_width)),
            "out": Out(stream.Signature(WORD_LAYOUT)),
            "busy": Out(1), "delivered": Out(1), "bus_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bb, ob = self.beat_bytes, self.offset_bits
        wpb = bb // 4
        shift = bb.bit_length() - 1
        axi = self.axi

        m.submodules.bursts = bursts = BurstIssuer(data_width=self.data_width, addr_width=self.addr_width,
                                                   bytes_bits=ob + 2, max_burst=self.max_burst,
                                                   max_outstanding=self.max_outstanding)
        aborted = Signal()
        left = Signal(ob + 1)                  # words still to deliver
        beat = Signal(self.data_width)
        have = Signal()
        idx = Signal(range(wpb))

        m.d.comb += [
            axi.arid.eq(0), axi.arsize.eq(shift), axi.arburst.eq(1), axi.arlock.eq(0),
            axi.arcache.eq(0b0011), axi.arprot.eq(0), axi.arqos.eq(0), axi.araddr.eq(bursts.burst.p.addr),
            axi.arlen.eq(bursts.burst.p.len), axi.arvalid.eq(bursts.burst.valid), bursts.burst.ready.eq(axi.arready),
            bursts.hold.eq(aborted), bursts.load.eq(self.start), bursts.addr.eq(self.addr),
            bursts.bytes.eq(self.words << 2),
        ]
        r_go = axi.rvalid & axi.rready
        m.d.comb += bursts.burst_done.eq(r_go & axi.rlast)
        with m.If(r_go & (axi.rresp != RESP_OKAY)):
            m.d.sync += self.bus_error.eq(1)

        # width-down conversion: one beat held, words leave from idx
        words = [beat[32 * i: 32 * (i + 1)] for i in range(wpb)]
        m.d.comb += [self.out.p.word.eq(Array(words)[idx]), self.out.p.last.eq(left == 1),
                     self.out.valid.eq(have & (left != 0) & ~aborted)]
        take = self.out.valid & self.out.ready
        beat_done = Signal()
        m.d.comb += beat_done.eq(aborted | (left == 0) | (take & ((idx == wpb - 1) | (left == 1))))
        m.d.comb += axi.rready.eq(~have | beat_done)
        with m.If(take):
            m.d.sync += [left.eq(left - 1), idx.eq(idx + 1)]
        with m.If(have & beat_done):
            m.d.sync += [have.eq(0), idx.eq(0)]
        with m.If(r_go):
            m.d.sync += [beat.eq(axi.rdata), have.eq(1)]
            # a beat replacing the one finishing starts at word 0 (the first beat's skip is set at start)
            with m.If(have):
                m.d.sync += idx.eq(0)

        m.d.comb += [self.busy.eq((bursts.outstanding != 0) | ~bursts.idle & ~aborted | have & ~aborted & (left != 0)),
                     self.delivered.eq(left == 0)]
        with m.If(self.stop):
            m.d.sync += aborted.eq(1)
        with m.If(self.start):
            first = self.addr[:shift] >> 2
            m.d.sync += [left.eq(self.words), aborted.eq(0), self.bus_error.eq(0), idx.eq(first if wpb > 1 else 0)]
        return m


class Controller(wiring.Component):
    """See the module docstring for behaviour, ports, latency and throughput.

    Parameters: data_width / addr_width / id_width / max_outstanding of the fetch port,
    offset_bits (word offsets: programs up to 2**offset_bits words), queue_depth (instructions
    per unit queue), token_bits (width of each of the 16 token counters).
    """

    def __init__(self, *, data_width: int = 512, addr_width: int = 64, id_width: int = 1,
                 offset_bits: int = DEFAULT_OFFSET_BITS, max_outstanding: int = 4,
                 queue_depth: int = 8, token_bits: int = 8, max_burst: int = 256):
        if queue_depth < 1:
            raise ValueError(f"queue_depth={queue_depth}: every unit needs a queue of at least 1")
        if token_bits < 1:
            raise ValueError(f"token_bits={token_bits} must be at least 1")
        self.fetch_params = dict(data_width=data_width, addr_width=addr_width, id_width=id_width,
                                 offset_bits=offset_bits, max_outstanding=max_outstanding, max_burst=max_burst)
        self.offset_bits, self.queue_depth, self.token_bits = offset_bits, queue_depth, token_bits
        members = {
            "start": In(1), "prog_error": In(1), "prog_addr": In(addr_width), "prog_words": In(offset_bits),
            "watchdog_limit": In(32), "status": Out(status_layout(offset_bits)), "busy": Out(1),
            "unit_busy": Out(len(UNIT_NAMES)), "unit_waiting": Out(len(UNIT_NAMES)),
            "fetch": Out(axi4_read_signature(addr_width, data_width, id_width)),
        }
        for u in UNIT_NAMES:
            members[u] = Out(stream.Signature(unit_layout(u, offset_bits)))
            members[f"{u}_done"] = In(1)
            members[f"{u}_fault"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ob, nu = self.offset_bits, len(UNIT_NAMES)
        m.submodules.fetch = fetch = ProgramFetch(**self.fetch_params)
        m.submodules.decoder = dec = InstructionDecoder(ob)
        wiring.connect(m, wiring.flipped(self.fetch), fetch.axi)
        wiring.connect(m, fetch.out, dec.words)

        status = self.status
        running = status.state == STATES.index("running")
        halt = Signal()  # an error stopped dispatch and starts

        queues = []
        for u in UNIT_NAMES:
            q = fifo.SyncFIFO(width=unit_layout(u, ob).size, depth=self.queue_depth)
            m.submodules[f"{u}_queue"] = q
            queues.append(q)
        heads = [data.View(unit_layout(u, ob), q.r_data) for u, q in zip(UNIT_NAMES, queues)]
        busy = Signal(nu)
        current = [Signal(ob, name=f"{u}_current") for u in UNIT_NAMES]     # offset in flight
        release = [Signal(nu, name=f"{u}_release") for u in UNIT_NAMES]    # its release mask
        tmax = (1 << self.token_bits) - 1
        tokens = [[Signal(self.token_bits, name=f"tok_{UNIT_NAMES[v]}_{UNIT_NAMES[u]}")
                   for u in range(nu)] for v in range(nu)]  # tokens[sender][receiver]

        done = Cat(*(getattr(self, f"{u}_done") for u in UNIT_NAMES))
        fault = Cat(*(getattr(self, f"{u}_fault") for u in UNIT_NAMES))
        ports = [getattr(self, u) for u in UNIT_NAMES]
        startable = Signal(nu)
        starts = Signal(nu)
        for u, (q, head, port) in enumerate(zip(queues, heads, ports)):
            wait = head.fields.wait
            ok = Cat(*(~wait[v] | (tokens[v][u] != 0) for v in range(nu))).all()
            m.d.comb += [startable[u].eq(q.r_rdy & ~busy[u] & ok & running & ~halt),
                         port.valid.eq(startable[u]), port.p.eq(head),
                         starts[u].eq(port.valid & port.ready),
                         q.r_en.eq(starts[u] | halt)]  # after an error the queues are emptied
            m.d.comb += self.unit_waiting[u].eq(q.r_rdy & ~busy[u] & ~ok & running & ~halt)
            with m.If(starts[u]):
                m.d.sync += [busy[u].eq(1), current[u].eq(head.offset), release[u].eq(head.fields.release)]
        for u in range(nu):
            with m.If(done[u] | fault[u]):
                m.d.sync += busy[u].eq(0)

        def fail(cause, offset=0, field=0):
            code = STATUS_CAUSES.index(cause) if isinstance(cause, str) else cause
            m.d.sync += [halt.eq(1), status.state.eq(STATES.index("error")),
                         status.cause.eq(code), status.offset.eq(offset),
                         status.field.eq(field)]

        # token counters: +1 when the sender finishes with the receiver in its release mask,
        # -1 when the receiver starts with the sender in its wait mask
        overflow = Signal()
        overflow_at = Signal(ob)
        for v in range(nu):
            for u in range(nu):
                t = tokens[v][u]
                inc = done[v] & release[v][u]
                use = starts[u] & heads[u].fields.wait[v]
                with m.If(inc & ~use):
                    with m.If(t == tmax):
                        m.d.comb += [overflow.eq(1), overflow_at.eq(current[v])]
                    with m.Else():
                        m.d.sync += t.eq(t + 1)
                with m.Elif(use & ~inc):
                    m.d.sync += t.eq(t - 1)

        # dispatch
        inst = dec.inst
        opcode = inst.p.opcode
        is_sys = opcode == isa.BY_MNEMONIC["SYS"].opcode
        target = Signal(nu)
        for u, name in enumerate(UNIT_NAMES):
            m.d.comb += target[u].eq(Cat(*(opcode == f.opcode for f in unit_formats(name))).any())
        all_empty = Cat(*(~q.r_rdy for q in queues)).all()
        drained = all_empty & ~busy.any()
        room = Cat(*(~target[u] | queues[u].w_rdy for u in range(nu))).all()
        dispatch_ok = running & ~halt
        for u, (name, q) in enumerate(zip(UNIT_NAMES, queues)):
            view = data.View(unit_layout(name, ob), q.w_data)
            m.d.comb += [view.offset.eq(inst.p.offset), view.opcode.eq(opcode),
                         view.fields.eq(inst.p.fields[unit_formats(name)[0].mnemonic].as_value()),
                         q.w_en.eq(inst.valid & target[u] & dispatch_ok)]
        sys_op = inst.p.fields.SYS.op
        end = Signal()
        m.d.comb += [inst.ready.eq(dispatch_ok & Mux(is_sys, drained, room)),
                     end.eq(inst.valid & inst.ready & is_sys & (sys_op == isa.SYS_OPS.index("end")))]
        program_over = fetch.delivered & ~dec.busy & ~inst.valid & ~dec.error.valid
        blocked_room = inst.valid & ~is_sys & ~room
        blocked = (inst.valid & is_sys & ~drained) | blocked_room | (program_over & ~drained)

        # watchdog: cycles since anything moved
        quiet = Signal(32)
        progress = starts.any() | done.any() | (dec.words.valid & dec.words.ready) | (inst.valid & inst.ready) \
            | (self.fetch.rvalid & self.fetch.rready)
        with m.If(progress | ~running):
            m.d.sync += quiet.eq(0)
        with m.Else():
            m.d.sync += quiet.eq(quiet + 1)

        # stuck instruction of each unit (in flight, else its queue head, else the SYS dispatch holds), sampled
        # while dispatch runs, so the cycle an error stops it leaves the snapshot in place
        with m.If(running & ~halt):
            for u in range(nu):
                with m.If(busy[u]):
                    m.d.sync += [status.stuck[u].valid.eq(1), status.stuck[u].offset.eq(current[u])]
                with m.Elif(queues[u].r_rdy):
                    m.d.sync += [status.stuck[u].valid.eq(1), status.stuck[u].offset.eq(heads[u].offset)]
                with m.Elif(inst.valid & is_sys):
                    m.d.sync += [status.stuck[u].valid.eq(1), status.stuck[u].offset.eq(inst.p.offset)]
                with m.Else():
                    m.d.sync += status.stuck[u].valid.eq(0)

        m.d.comb += fetch.stop.eq(halt | (status.state == STATES.index("done")))
        with m.If(running & ~halt):
            with m.If(dec.error.valid):
                fail(dec.error.cause, dec.error.offset, dec.error.field)
            with m.Elif(fetch.bus_error):
                fail("fetch_bus")
            with m.Elif(fault.any()):
                for u in reversed(range(nu)):  # the lowest faulting unit wins
                    with m.If(fault[u]):
                        fail("unit_fault", current[u])
            with m.Elif(overflow):
                fail("token_overflow", overflow_at)
            with m.Elif(~busy.any() & ~startable.any() & blocked):
                with m.If(blocked_room):
                    fail("queue_deadlock")
                with m.Else():
                    fail("deadlock")
            with m.Elif((self.watchdog_limit != 0) & (quiet >= self.watchdog_limit)):
                fail("watchdog")
            with m.Elif(end | program_over & drained):
                m.d.sync += status.state.eq(STATES.index("done"))
                m.d.sync += [status.stuck[u].eq(0) for u in range(nu)]  # nothing is stuck: the registers read 0

        in_flight = busy.any() | fetch.busy | ~all_empty
        m.d.comb += [self.busy.eq(in_flight), self.unit_busy.eq(busy)]
        with m.If(self.start & ~running & ~in_flight):
            m.d.sync += [status.cause.eq(0), status.offset.eq(0), status.field.eq(0), busy.eq(0)]
            m.d.sync += [status.stuck[u].valid.eq(0) for u in range(nu)]
            m.d.sync += [t.eq(0) for row in tokens for t in row]
            with m.If(self.prog_error):
                m.d.sync += [status.state.eq(STATES.index("error")), halt.eq(1),
                             status.cause.eq(STATUS_CAUSES.index("prog_channel"))]
            with m.Else():
                m.d.sync += [status.state.eq(STATES.index("running")), halt.eq(0)]
                m.d.comb += [fetch.start.eq(1), dec.restart.eq(1)]
        m.d.comb += [fetch.addr.eq(self.prog_addr), fetch.words.eq(self.prog_words)]
        return m


def reference_schedule(program: list[isa.Instruction], queue_depth: int | None = None) -> dict:
    """The controller's schedule in Python: the verdict and stuck instructions it must reach.

    Units run their queues in order, a head starting when a token from every unit of its wait
    mask is available; dispatch moves instructions in program order into queues of
    ``queue_depth`` entries (None: unbounded, the functional simulator's view) and holds a SYS
    until every queue is empty. Returns ``{"verdict": "done" | "deadlock" | "queue_deadlock",
    "stuck": [offset or None per unit], "executed": [offsets in one legal order]}``. The final
    state does not depend on timing (each token counter has one consumer), so any timing of the
    hardware must reach it.
    """
    offsets = isa.program_offsets(program)
    unit_of = {f.mnemonic: (isa.UNITS.index(f.unit) if f.unit != "all" else None) for f in isa.FORMATS}
    queues = [[] for _ in UNIT_NAMES]
    tokens = [[0] * 4 for _ in range(4)]
    pc, executed = 0, []
    while True:
        progress = False
        while pc < len(program):  # dispatch
            inst = program[pc]
            u = unit_of[inst.mnemonic]
            if u is None:
                if any(queues):
                    break
                progress = True
                pc += 1
                if inst.enum("op") == "end":
                    return {"verdict": "done", "stuck": [None] * 4, "executed": executed}
                continue
            if queue_depth is not None and len(queues[u]) >= queue_depth:
                break
            queues[u].append(pc)
            pc += 1
            progress = True
        for u in range(4):  # execute
            while queues[u]:
                inst = program[queues[u][0]]
                need = [v for v in range(4) if inst["wait"] >> v & 1]
                if any(tokens[v][u] < 1 for v in need):
                    break
                for v in need:
                    tokens[v][u] -= 1
                for w in range(4):
                    if inst["release"] >> w & 1:
                        tokens[u][w] += 1
                executed.append(offsets[queues[u].pop(0)])
                progress = True
        if pc >= len(program) and not any(queues):
            return {"verdict": "done", "stuck": [None] * 4, "executed": executed}
        if not progress:
            held_sys = pc < len(program) and unit_of[program[pc].mnemonic] is None
            stuck = [offsets[q[0]] if q else (offsets[pc] if held_sys else None) for q in queues]
            verdict = "deadlock" if held_sys or pc >= len(program) else "queue_deadlock"
            return {"verdict": verdict, "stuck": stuck, "executed": executed}


@register_unit("controller")
def _controller_unit(data_width: int = 512, queue_depth: int = 8, token_bits: int = 8,
                     offset_bits: int = DEFAULT_OFFSET_BITS):
    """The core controller: program fetch (AXI4 read), decoder, unit queues, token counters, watchdog."""
    return Controller(data_width=data_width, queue_depth=queue_depth, token_bits=token_bits,
                      offset_bits=offset_bits), "olivine_controller"
