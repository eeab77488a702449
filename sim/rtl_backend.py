"""``olivine run --backend rtl``: compiled programs on the RTL core in the fast Verilator harness.

:func:`backend_verilog` is the one place that decides which core runs an artifact (hw/core.py
OlivineCore with the matrix engine hw/mpe.py and the SFU's RoPE ROM for the artifact's model);
:func:`probed_top` wraps it in a thin Verilog top that brings each unit's instruction handshake and
done / fault pulse out as ports, so the C++ harness can record a per-instruction timeline with no
Python per cycle. :class:`RtlRuntime` is sim/runtime.py's Runtime with its program execution on
:func:`olivine.sim.fastsim.sim`: the HBM state (weights, KV cache, I/O area) carries over from run to
run, and every run's cycles, per-unit counters and HBM bytes are kept (:class:`ProgramFigures`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from olivine.compiler.compile import apply_patches
from olivine.hw import core_regs, isa
from olivine.hw.buffers import buffer_sizes

from .funcsim import SimError
from .runtime import RunError, Runtime

__all__ = ["backend_verilog", "backend_harness", "probed_top", "PROBED_TOP", "RtlRuntime", "ProgramFigures",
           "DEFAULT_BUDGET", "PROBED_RESET_LATENCY", "fault_message", "locate_divergence", "check_rtl", "UNIT_PROBES"]

#: Top module of the probed wrapper.
PROBED_TOP = "olivine_core_probed"
#: Cycle budget of one program run unless the user gives one (glassllm's prefill takes a few million).
DEFAULT_BUDGET = 50_000_000
#: Units whose instructions the probes time, in hw.isa.UNITS order.
UNIT_PROBES = tuple(isa.UNITS)
#: Cycles the probed wrapper delays ``rst`` into the core (it registers it; see probed_top): the fast
#: harness steps them after a reset before it talks to the core.
PROBED_RESET_LATENCY = 1


def backend_verilog(config, model_config: dict | None = None) -> str:
    """The Verilog of the core that runs artifacts compiled for ``config`` (top ``olivine_core``):
    ``hw.hdl.core_for(config, model_config, mpe=True)`` (the core ``olivine hdl`` writes), i.e.
    OlivineCore with hw.mpe.MatrixEngine and, given the artifact's ``meta.model.config``, the
    SFU's RoPE ROM for its rope_theta / head_dim / max_seq_len. Cached on disk by the hw sources
    and these parameters (sim/core_rtl.core_verilog)."""
    from .core_rtl import core_verilog

    return core_verilog(config, model_config, mpe=True)


def _offset_slice(unit: str) -> tuple[int, int]:
    """(low bit, width) of the ``offset`` field in the controller's payload of ``unit``."""
    from olivine.hw.controller import unit_layout
    from olivine.hw.decode import DEFAULT_OFFSET_BITS

    layout = unit_layout(unit, DEFAULT_OFFSET_BITS)
    fld = layout["offset"]
    return fld.offset, fld.width


def probed_top(core_text: str, top: str = "olivine_core") -> str:
    """``core_text`` plus a wrapper module :data:`PROBED_TOP` with the core's ports passed through
    and, per unit u, ``probe_<u>_start`` (the controller hands u an instruction this cycle),
    ``probe_<u>_offset`` (its word offset) and ``probe_<u>_end`` (u's done or fault pulse), taken by
    hierarchical reference from the controller's streams in the core's top (hw/core.py).

    The wrapper registers ``rst`` (the core sees it :data:`PROBED_RESET_LATENCY` cycle later; it
    starts in reset). The core's synchronous reset feeds nearly every register's next-state logic,
    so with ``rst`` a top-level input Verilator re-evaluated all of that logic in its input region at
    both evaluations of every cycle (24 % of the simulation time of ``tiny``); from a register it is
    evaluated once per cycle after the clock edge. The cycles after reset are the same."""
    from .fastsim import discover_ports

    ports = discover_ports(core_text, top)
    lines = [f"module {PROBED_TOP} ("]
    names = list(ports.ports) + [f"probe_{u}_{s}" for u in UNIT_PROBES for s in ("start", "end", "offset")]
    lines.append("  " + ", ".join(names))
    lines.append(");")
    for name, (direction, bits) in ports.ports.items():
        width = f"[{bits - 1}:0] " if bits > 1 else ""
        lines.append(f"  {direction} {width}{name};")
    for u in UNIT_PROBES:
        lo, width = _offset_slice(u)
        lines.append(f"  output probe_{u}_start;")
        lines.append(f"  output probe_{u}_end;")
        lines.append(f"  output [{width - 1}:0] probe_{u}_offset;")
        lines.append(f"  assign probe_{u}_start = core.{u}__valid & core.{u}__ready;")
        lines.append(f"  assign probe_{u}_end = core.{u}_done | core.{u}_fault;")
        lines.append(f"  assign probe_{u}_offset = core.{u}__payload[{lo + width - 1}:{lo}];")
    lines.append("  reg rst_q = 1'b1;")
    lines.append("  always @(posedge clk) rst_q <= rst;")
    conns = ", ".join(f".{n}({'rst_q' if n == 'rst' else n})" for n in ports.ports)
    lines.append(f"  {top} core ({conns});")
    lines.append("endmodule")
    return core_text.rstrip() + "\n\n" + "\n".join(lines) + "\n"


_PROBED_HARNESSES: dict = {}


def backend_harness(config, model_config: dict | None = None):
    """The fast harness of the probed core for ``config`` (built once per process; Verilator builds
    are cached on disk by sim/fastsim.py)."""
    from .fastsim import FastHarness

    from olivine import progress

    key = (config.digest(), repr(sorted((model_config or {}).items())))
    if key not in _PROBED_HARNESSES:
        label = (f"the RTL core for this configuration ({config.chains_per_core} chains, {config.hbm_channels} HBM "
                 f"channels, {config.axi_data_width}-bit AXI; cached after the first time, 'tiny' converts in about "
                 "1.5 min, larger ones take far longer)")
        with progress.step(f"converting {label}"):
            text = backend_verilog(config, model_config)
        _PROBED_HARNESSES[key] = FastHarness(probed_top(text), PROBED_TOP, reset_latency=PROBED_RESET_LATENCY)
    return _PROBED_HARNESSES[key]


def _unit_error_name(unit: str, code: int) -> str:
    from olivine.hw.core import MPE_NOT_BUILT, UnitError
    from olivine.hw.mpe import MpeError
    from olivine.hw.sfu import SfuError

    enum = {"ld": UnitError, "st": UnitError, "mpe": MpeError, "sfu": SfuError}[unit]
    if unit == "mpe" and code == MPE_NOT_BUILT:
        return "MPE_NOT_BUILT"
    try:
        return enum(code).name
    except ValueError:
        return "unknown"


def fault_message(regs: dict, program: list) -> str:
    """What the status registers (hw/core_regs.py) of an ended-in-error run say, in the functional
    simulator's form: ``instruction I at word W (disassembly): reason`` for a unit fault or a decode
    error, the stuck instruction of each unit for a deadlock or the watchdog."""
    from olivine.compiler.asm import disassemble_one
    from olivine.hw.controller import STATUS_CAUSES

    offsets = isa.program_offsets(program)

    def where(offset: int) -> str:
        if offset in offsets:
            k = offsets.index(offset)
            return f"instruction {k} at word {offset} ({disassemble_one(program[k])})"
        return f"the instruction at word {offset}"

    cause_k = regs.get("cause", 0)
    cause = STATUS_CAUSES[cause_k] if cause_k < len(STATUS_CAUSES) else f"cause {cause_k}"
    if cause == "unit_fault":
        unit = isa.UNITS[regs["unit_error"] & 0xF]
        code = regs["unit_error"] >> 8 & 0xFF
        return (f"{where(regs['offset'])}: the {unit.upper()} unit faulted with error {code} "
                f"({_unit_error_name(unit, code)}) [RTL: state error, cause unit_fault, offset {regs['offset']}]")
    if cause == "prog_channel":
        return ("the program's channel (register prog_channel) is not one of the core's HBM channels: "
                "nothing ran; place the program in a channel below hbm_channels [RTL: state error, cause prog_channel]")
    if cause in isa.DECODE_CAUSES:
        fld = isa.FIELD_NAMES[regs["field"]] if regs.get("field", 0) < len(isa.FIELD_NAMES) else regs.get("field")
        return f"{where(regs['offset'])}: decode error {cause} in field {fld} [RTL: state error, offset {regs['offset']}]"
    stuck = []
    for u in isa.UNITS:
        value = regs.get(f"stuck_{u}", 0)
        if value >> 31:
            stuck.append(f"  {u}: {where(value & 0xFFFFFF)}")
    head = "deadlock: no unit can proceed" if cause in ("deadlock", "queue_deadlock") else f"{cause}"
    return f"{head} [RTL: state error, cause {cause}]" + ("\n" + "\n".join(stuck) if stuck else "")


@dataclass
class ProgramFigures:
    """One program run on the RTL core: its kind (prefill / decode), the core's cycle counter, the
    per-unit counters (unit -> busy, stall_token, stall_memory, instructions), the HBM bytes per
    channel (the core's counters), the harness' wall time, and (with a timeline) each instruction's
    (unit, word offset, start, end) in cycles from the program's start."""

    name: str
    kind: str
    cycles: int
    units: dict
    hbm: dict
    seconds: float
    timeline: list | None = None
    origin: int = 0  # cycles of the earlier programs of the run (the timeline's offset)
    cpu_seconds: float = 0.0  # user CPU seconds of the harness process


class RtlRuntime(Runtime):
    """sim/runtime.py's Runtime on the RTL core: each program's patched words run on
    :func:`olivine.sim.fastsim.sim` from the HBM state the previous run left (weights, KV cache).

    Options: ``budget`` (cycles per program, default :data:`DEFAULT_BUDGET`), ``timeline``
    (record each instruction's cycles for :meth:`write_trace`), ``waves`` (a .fst / .vcd file)
    with ``waves_step`` (0: the prefill, k: the k-th decode step), ``hbm``
    (fastsim.HbmParams: read latency, bandwidth; default its defaults sized to the layout).
    """

    backend = "rtl"

    def _start(self, image, budget=None, timeline=False, waves=None, waves_step=0, hbm=None, harness=None):
        self.budget = int(budget or DEFAULT_BUDGET)
        self.record_timeline, self.waves, self.waves_step, self.hbm_params = timeline, waves, waves_step, hbm
        self.state = {int(k): bytes(v) for k, v in image.items()}
        self._harness = harness
        self.runs: list[ProgramFigures] = []

    @property
    def harness(self):
        if self._harness is None:
            self._harness = backend_harness(self.config, self.meta["model"].get("config"))
        return self._harness

    def _execute(self, name: str, env: dict):
        import torch

        from .fastsim import CycleBudgetExceeded, sim

        info = self.info[name]
        words = self.programs[name]
        if info["patches"]:
            words = apply_patches(words, info["patches"], env)
        step = len(self.runs)
        waves = self.waves if self.waves is not None and step == self.waves_step else None
        lay = self.meta["layout"]
        try:
            run = sim(self.harness, words, self.state, used_bytes=lay["channel_bytes"], io_base=self.io_base,
                      vocab=self.vocab, budget=self.budget, hbm=self.hbm_params, waves=waves,
                      timeline=self.record_timeline)
        except CycleBudgetExceeded as exc:
            regs = exc.result.registers
            raise SimError(f"program {name} did not finish within the cycle budget of {self.budget:,} cycles "
                           f"on the RTL core (state register {regs.get('state')}, "
                           f"{regs.get('mpe_instructions', 0)} MM/MV, {regs.get('sfu_instructions', 0)} SFU, "
                           f"{regs.get('ld_instructions', 0)} LD instructions done); raise it with --budget "
                           f"CYCLES if the program is long") from None
        regs = run.result.registers
        from olivine.hw.controller import STATES

        if regs["state"] != STATES.index("done"):
            raise SimError(fault_message(regs, isa.decode_program(words)))
        units = {u: {c: regs[f"{u}_{c}"] for c in core_regs.UNIT_COUNTERS} for u in isa.UNITS}
        hbm = {k: {c: regs[f"hbm{k}_{c}"] for c in core_regs.HBM_COUNTERS} for k in range(self.channels)}
        origin = sum(r.cycles for r in self.runs)
        self.runs.append(ProgramFigures(name, info["kind"], run.cycles, units, hbm, run.result.run_seconds,
                                        run.result.timeline, origin, run.result.cpu_seconds))
        self.state = {k: v.tobytes() for k, v in run.hbm.items()}
        return torch.from_numpy(run.logits.astype(np.int32).copy())

    # ---- figures
    def describe(self) -> str:
        c = self.config
        return (f"rtl core ({c.chains_per_core} chains x {c.chain_length}, {c.axi_data_width}-bit AXI, "
                f"{c.hbm_channels} HBM channels) at {c.clock_mhz:g} MHz")

    def cycle_figures(self) -> dict:
        prefill = [r.cycles for r in self.runs if r.kind == "prefill"]
        decode = [r.cycles for r in self.runs if r.kind == "decode"]
        total = sum(prefill) + sum(decode)
        seconds = total / (self.config.clock_mhz * 1e6)
        tokens = len(prefill) + len(decode)  # each run chose one token
        units = {u: {c: sum(r.units[u][c] for r in self.runs) for c in core_regs.UNIT_COUNTERS} for u in isa.UNITS}
        hbm = {str(k): {c: sum(r.hbm[k][c] for r in self.runs) for c in core_regs.HBM_COUNTERS}
               for k in range(self.channels)}
        return {"prefill": sum(prefill), "decode": decode, "total": total, "clock_mhz": self.config.clock_mhz,
                "seconds_at_clock": seconds, "tokens_per_s_at_clock": tokens / seconds if seconds else 0.0,
                "decode_tokens_per_s_at_clock": (len(decode) / (sum(decode) / (self.config.clock_mhz * 1e6))
                                                 if decode else 0.0),
                "units": units, "hbm_bytes": hbm,
                "simulated_cycles_per_s": total / sum(r.seconds for r in self.runs) if self.runs else 0.0,
                "simulated_cycles_per_cpu_s": (total / cpu if (cpu := sum(r.cpu_seconds for r in self.runs)) > 0
                                               else 0.0)}

    def figures_dict(self) -> dict:
        return {"cycles": self.cycle_figures()}

    def figures_text(self) -> str:
        f = self.cycle_figures()
        dec = f["decode"]
        per = f"{sum(dec) / len(dec):,.0f} per decode step (min {min(dec):,}, max {max(dec):,})" if dec else \
            "no decode step"
        return (f"cycles: prefill {f['prefill']:,}, {per}, total {f['total']:,} = "
                f"{f['tokens_per_s_at_clock']:.1f} tokens/s at {f['clock_mhz']:g} MHz "
                f"(decode {f['decode_tokens_per_s_at_clock']:.1f}); simulated at "
                f"{f['simulated_cycles_per_s'] / 1e3:,.0f}k cycles/s")

    def figures_detail(self) -> list[str]:
        f = self.cycle_figures()
        lines = ["  unit  instructions        busy  stalled on token  stalled on memory  (cycles, all programs)"]
        for u, c in f["units"].items():
            lines.append(f"  {u:<4} {c['instructions']:>13,} {c['busy']:>11,} {c['stall_token']:>17,} "
                         f"{c['stall_memory']:>18,}")
        lines.append("  HBM bytes per channel: " + ", ".join(
            f"{k}: read {v['read_bytes'] / 1e6:.2f} MB, written {v['write_bytes'] / 1e3:.1f} kB"
            for k, v in f["hbm_bytes"].items()))
        return lines

    def write_trace(self, path) -> list:
        from .rtl_trace import write_trace

        if not self.record_timeline:
            raise RunError("this run recorded no timeline (RtlRuntime(timeline=True))")
        return write_trace(self, path)


def check_rtl(model: str = "glassllm", preset: str = "w4a8-ovp", prompt: str = "Once upon a time",
              max_new_tokens: int = 32, config: str = "tiny", max_context: int = 48, max_prompt: int = 16,
              prefill_step: int = 16, budget: int | None = None, golden: bool = True,
              layers: int | None = None) -> dict:
    """Compile ``model`` for the named configuration (prefill buckets of ``prefill_step`` tokens:
    the RTL runs a whole bucket), generate greedily on the isa backend, the rtl
    backend and (``golden``) golden's QLlama, and compare: ``tokens_equal`` / ``logits_equal``
    (rtl against isa and golden, every int32 logit of every step), ``first_diff`` (the first step
    whose logits differ, with the number of differing logits), the tokens, the rtl cycle figures and
    the wall times of each side.

    ``layers``: keep only the model's first ``layers`` decoder layers (its real shapes, embedding
    and head), with ``max_seq_len`` cut to ``max_context`` so the core's RoPE ROM holds only the
    positions the programs use (the table values per position are unchanged); quantized without
    the on-disk cache (its key is the whole model's)."""
    import dataclasses
    import time

    import torch

    from olivine.compiler.compile import calibration_tokens, compile_model
    from olivine.compiler.spec import spec_from_qllama
    from olivine.golden.loaders import load_model
    from olivine.golden.qcache import quantize_cached
    from olivine.golden.qconfig import QuantConfig
    from olivine.hw.config import load_config

    from .runtime import golden_generate

    loaded = load_model(model)
    qcfg = QuantConfig.preset(preset)
    calib = calibration_tokens(loaded, qcfg)
    if layers is None:
        q = quantize_cached(loaded, qcfg, calib)
    else:
        from olivine.golden.qmodel import quantize_model

        if not 1 <= layers <= loaded.config.n_layers:
            raise ValueError(f"layers={layers}: {model} has {loaded.config.n_layers} decoder layers")
        cut = dataclasses.replace(loaded.config, n_layers=layers,
                                  max_seq_len=min(max_context, loaded.config.max_seq_len),
                                  name=f"{loaded.config.name}-{layers}layer{'s' if layers > 1 else ''}")
        q = quantize_model(cut, dataclasses.replace(loaded.weights, layers=loaded.weights.layers[:layers]), qcfg, calib,
                           show_progress=False)
    comp = compile_model(spec_from_qllama(q, model), load_config(config), max_context=max_context,
                         max_prompt=max_prompt, prefill_step=prefill_step)
    ids = loaded.tokenizer.encode(prompt)
    out: dict = {"preset": preset, "prompt_tokens": len(ids), "max_new_tokens": max_new_tokens,
                 "n_layers": q.config.n_layers}
    t0 = time.perf_counter()
    isa_toks, isa_logits = Runtime.from_compiled(comp).generate(ids, max_new_tokens)
    out["isa_seconds"] = time.perf_counter() - t0
    rt = RtlRuntime.from_compiled(comp, budget=budget)
    t0 = time.perf_counter()
    rtl_toks, rtl_logits = rt.generate(ids, max_new_tokens)
    out["rtl_seconds"] = time.perf_counter() - t0
    out["build_seconds"] = rt.harness.build_seconds

    def diff(a, b):
        for step, (x, y) in enumerate(zip(a, b)):
            bad = int((x.to(torch.int64) != y.to(torch.int64)).sum())
            if bad:
                return {"step": step, "logits_differing": bad,
                        "max_abs_diff": int((x.to(torch.int64) - y.to(torch.int64)).abs().max())}
        return None if len(a) == len(b) else {"step": min(len(a), len(b)), "length": (len(a), len(b))}

    out.update(tokens=rtl_toks, isa_tokens=isa_toks, tokens_equal_isa=rtl_toks == isa_toks,
               first_diff_isa=diff(rtl_logits, isa_logits))
    out["logits_equal_isa"] = out["first_diff_isa"] is None
    if golden:
        g_toks, g_logits = golden_generate(q, ids, max_new_tokens)
        out.update(golden_tokens=g_toks, tokens_equal_golden=rtl_toks == g_toks,
                   first_diff_golden=diff(rtl_logits, g_logits))
        out["logits_equal_golden"] = out["first_diff_golden"] is None
    out["cycles"] = rt.cycle_figures()
    out["text"] = loaded.tokenizer.decode(rtl_toks)
    return out


def locate_divergence(config, harness, words, state: dict, used_bytes, *, budget: int = DEFAULT_BUDGET,
                      buffers: tuple[str, ...] = ("data",)) -> dict | None:
    """The first instruction after which the RTL core's on-chip buffers differ from the functional
    simulator's, for one (patched) program run from the HBM ``state``.

    A prefix of the program (its first k instructions) is followed by a barrier and an ST of each
    buffer in ``buffers`` ("data" = the data space, "weight", "bias", "meta") into HBM after the
    used bytes, and run on both; a bisection finds the smallest k whose buffers differ (the
    program's tokens point forward, so every prefix runs as it does inside the whole program).
    Returns None when the whole program's buffers agree, else {"index", "offset", "instruction"
    (disassembly), "buffer", "first_byte", "bytes_differing", "rtl", "isa" (16 bytes around the
    first difference)}."""
    from olivine.compiler.asm import disassemble_one

    from .fastsim import HbmParams
    from .funcsim import FuncSim

    prog = isa.decode_program(words)
    sizes = buffer_sizes(config.buffers)
    source = {"data": "act", "weight": "weight", "bias": "bias", "meta": "meta"}
    used = [int(u) for u in used_bytes]
    scratch = -(-used[0] // 4096) * 4096
    dump_at, at = {}, scratch
    for name in buffers:
        dump_at[name] = at
        at += sizes[name]
    channel_bytes = -(-(at + 4 * len(words) + 8192) // 4096) * 4096

    def run_both(k: int):
        head = list(prog[:k]) + [isa.make("SYS", op="barrier")]
        head += [isa.make("ST", source=source[n], channel=0, hbm_addr=dump_at[n], buf_addr=0, length=sizes[n])
                 for n in buffers]
        head.append(isa.make("SYS", op="end"))
        w = isa.encode_program(head)
        image = {c: bytes(state.get(c, b""))[:used[c]] for c in range(len(used))}
        fs = FuncSim(config, [channel_bytes] * config.hbm_channels, image)
        fs.run(w)
        want = {n: (fs.data if n == "data" else fs.buffers[n]).copy() for n in buffers}
        res = harness.run_program(w, image, budget=budget, hbm=HbmParams(channel_bytes=channel_bytes),
                                  used_bytes=at, dumps={n: (0, dump_at[n], sizes[n]) for n in buffers})
        got = {n: res.dumps[n] for n in buffers}
        return got, want

    def differs(k: int):
        got, want = run_both(k)
        for n in buffers:
            bad = np.nonzero(got[n] != want[n])[0]
            if bad.size:
                lo = max(0, int(bad[0]) - 4)
                return {"buffer": n, "first_byte": int(bad[0]), "bytes_differing": int(bad.size),
                        "rtl": got[n][lo:lo + 16].tolist(), "isa": want[n][lo:lo + 16].tolist()}
        return None

    n = sum(1 for i in prog if i.mnemonic != "SYS" or i.enum("op") != "end")
    if differs(n) is None:
        return None
    lo, hi = 0, n  # prefix lo agrees (the empty prefix does), prefix hi differs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if differs(mid) is None:
            lo = mid
        else:
            hi = mid
    found = differs(hi)
    inst = prog[hi - 1]
    return {"index": hi - 1, "offset": isa.program_offsets(prog)[hi - 1], "instruction": disassemble_one(inst),
            **found}
