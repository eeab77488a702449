"""Per-instruction timelines of RTL runs: Chrome trace JSON (Perfetto, chrome://tracing) and a PNG.

The cycles come from the RTL: the probed top of sim/rtl_backend.py brings each unit's instruction
handshake (start) and done / fault pulse (end) out as ports, and the fast harness records them
(sim/fast_harness.cpp ``timeline``). Programs of a run follow one another on one time axis (each
program's cycles start where the previous one's ended); timestamps are microseconds at the
configuration's clock, and every event's ``args`` carry the raw cycles, the program, the word
offset and the disassembly.
"""

from __future__ import annotations

import json
from pathlib import Path

from olivine.hw import isa

__all__ = ["trace_events", "write_trace"]

#: Chrome trace thread ids: one track per unit, one for the programs.
_TRACKS = {"program": 0, **{u: k + 1 for k, u in enumerate(isa.UNITS)}}


def trace_events(runs, programs: dict, clock_mhz: float) -> list[dict]:
    """Chrome trace events ("X" complete events) of ``runs`` (rtl_backend.ProgramFigures with
    timelines); ``programs``: name -> words (to disassemble each instruction)."""
    from olivine.compiler.asm import disassemble_one

    us = 1.0 / clock_mhz  # microseconds per cycle
    events = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"olivine core @ {clock_mhz:g} MHz"}}]
    for name, tid in _TRACKS.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
    decoded: dict[str, dict[int, str]] = {}
    for k, run in enumerate(runs):
        if run.name not in decoded:
            prog = isa.decode_program(programs[run.name])
            decoded[run.name] = {off: disassemble_one(i) for off, i in zip(isa.program_offsets(prog), prog)}
        text = decoded[run.name]
        label = f"{run.name} (run {k})"
        events.append({"name": label, "cat": run.kind, "ph": "X", "pid": 1, "tid": 0, "ts": run.origin * us,
                       "dur": run.cycles * us, "args": {"start_cycle": run.origin, "cycles": run.cycles}})
        for unit, offset, start, end in run.timeline or []:
            end = run.cycles if end is None else end
            asm = text.get(offset, f"word {offset}")
            events.append({"name": asm.split()[0] if asm else unit, "cat": unit, "ph": "X", "pid": 1,
                           "tid": _TRACKS[unit], "ts": (run.origin + start) * us, "dur": max(end - start, 1) * us,
                           "args": {"program": label, "word": offset, "instruction": asm, "start_cycle": start,
                                    "end_cycle": end, "cycles": end - start}})
    return events


def _plot(runs, path: Path, clock_mhz: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ld": "tab:blue", "st": "tab:orange", "mpe": "tab:green", "sfu": "tab:red"}
    fig, ax = plt.subplots(figsize=(14, 3.2))
    for row, unit in enumerate(isa.UNITS):
        spans = [(r.origin + s, max((r.cycles if e is None else e) - s, 1)) for r in runs
                 for u, _, s, e in (r.timeline or []) if u == unit]
        if spans:
            ax.broken_barh(spans, (row - 0.4, 0.8), color=colors[unit], linewidth=0)
    for r in runs:
        ax.axvline(r.origin, color="0.6", linewidth=0.5)
    ax.set_yticks(range(len(isa.UNITS)), [u.upper() for u in isa.UNITS])
    ax.set_ylim(-0.6, len(isa.UNITS) - 0.4)
    total = sum(r.cycles for r in runs)
    ax.set_xlim(0, max(total, 1))
    ax.invert_yaxis()
    ax.set_xlabel(f"cycle (grey lines: program starts; {total:,} cycles = {total / clock_mhz / 1e3:.2f} ms "
                  f"at {clock_mhz:g} MHz)")
    ax.set_title(f"instructions per unit on the RTL core: {len(runs)} programs "
                 f"({', '.join(sorted({r.kind for r in runs}))})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_trace(rt, path) -> list[Path]:
    """Write ``path`` (Chrome trace JSON) and ``path`` with .png (the timeline) for an RtlRuntime's
    runs; both atomically (written beside, then renamed). Returns the paths written."""
    import os

    path = Path(path)
    events = trace_events(rt.runs, rt.programs, rt.config.clock_mhz)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns",
                               "otherData": {"backend": "rtl", "clock_mhz": rt.config.clock_mhz}}))
    os.replace(tmp, path)
    png = path.with_suffix(".png")
    tmp_png = png.with_name(png.stem + ".partial.png")
    _plot(rt.runs, tmp_png, rt.config.clock_mhz)
    os.replace(tmp_png, png)
    return [path, png]
