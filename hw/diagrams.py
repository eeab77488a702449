"""Generated pictures of the hardware, drawn from the generators' own parameters.

Nothing here is hand-placed per configuration: every box, break and node comes from the same
rules the generators use, so the pictures stay true when the parameters (or the rules) change.

* :func:`draw_sparse_chain` builds a :class:`~olivine.hw.sparse_chain.SparseDSPChain` (its
  validation rejects bad lengths / formats) and reads from it the cascade run per N
  (``_run_length``: min(N, L, lane run), where the DSP restarts with Z = 0), the taps per
  segment (``_segment_taps``) and ``lane_limit`` / ``lane_run`` of the weight format.
* :func:`draw_ovp_array` builds an :class:`~olivine.hw.ovp_array.OvpSystolicArray` and reads the
  physical PE grid, the border decoder count and the flush length from it.

Each function returns a :class:`Diagram` whose ``counts`` say how many elements of each kind were
actually drawn (counted where they are drawn), so tests can hold the picture to the generator.

Regenerate the documentation pictures::

    .venv/bin/python -m olivine.hw.diagrams --out docs/img

matplotlib only (Agg canvas, no pyplot state); files are written atomically, and ``main`` writes
its directory as one olivine output (``olivine/outputs.py``): it replaces only an earlier diagrams
output, never a directory of other files.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, Polygon, Rectangle

from .ovp_array import OvpSystolicArray
from .sparse_chain import CANDIDATES, LANE_BITS, SparseDSPChain, lane_limit, n_code

__all__ = ["Diagram", "DiagramError", "draw_sparse_chain", "draw_ovp_array", "chain_breaks", "main"]

#: Pixels per inch of the PNGs (figure sizes are in inches, so pictures scale with L, R, C).
DPI = 100
FORMATS = (".png", ".svg")

# palette (colour-blind friendly: Okabe-Ito)
INK = "#222222"
GREY = "#9a9a9a"
SEGMENT_BREAK = "#c0142b"   # red: segment ends, a reduction node emits an output
OVERFLOW_BREAK = "#e69f00"  # orange: cascade broken to keep the 18-bit lane exact
CONTINUE = "#009e73"        # green: Z = PCIN
ACT = "#0072b2"             # blue: activations
WEIGHT = "#cc79a7"          # purple: weights
SEGMENT_FILL = ("#eef4fb", "#fbf3e8")
DSP_FILL = "#fff7d6"
PE_FILL = "#e8f3ec"
DECODER_FILL = "#f3e6f7"
REG_FILL = "#d9d9d9"


class DiagramError(ValueError):
    """A picture was asked for with a parameter the drawing itself does not accept (the
    generators' own errors are raised unchanged for hardware parameters)."""


@dataclass
class Diagram:
    """What was drawn: ``counts`` per element kind, the image size in pixels, the figure (kept
    only when no ``path`` was given) and the written ``path``."""

    kind: str
    params: dict
    counts: dict[str, int]
    size_px: tuple[int, int]
    figure: Figure | None = field(default=None, repr=False)
    path: Path | None = None


# ---------------------------------------------------------------------------------------------
# drawing primitives (units are inches: one axes covers the figure with xlim = width)

class _Canvas:
    def __init__(self, width: float, height: float):
        self.width, self.height = width, height
        self.figure = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.ax = self.figure.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_axis_off()
        self.counts: Counter[str] = Counter()

    def count(self, kind: str, n: int = 1):
        self.counts[kind] += n

    def text(self, x, y, s, size=8, **kw):
        kw.setdefault("ha", "center")
        kw.setdefault("va", "center")
        kw.setdefault("color", INK)
        self.ax.text(x, y, s, fontsize=size, zorder=kw.pop("zorder", 5), **kw)

    def box(self, x0, y0, w, h, *, fill="white", edge=INK, lw=1.0, ls="-", z=2):
        self.ax.add_patch(Rectangle((x0, y0), w, h, facecolor=fill, edgecolor=edge, lw=lw, ls=ls, zorder=z))

    def line(self, xs, ys, color=INK, lw=1.0, ls="-", z=1):
        self.ax.plot(xs, ys, color=color, lw=lw, ls=ls, zorder=z, solid_capstyle="butt")

    def arrow(self, x0, y0, x1, y1, color=INK, lw=1.0, ls="-", z=3, head=7):
        self.ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=head,
                                          color=color, lw=lw, ls=ls, zorder=z, shrinkA=0, shrinkB=0))

    def dot(self, x, y, color=INK, r=0.025):
        self.ax.add_patch(Circle((x, y), r, color=color, zorder=4))

    def circle(self, x, y, r, fill="white", edge=INK, lw=1.2):
        self.ax.add_patch(Circle((x, y), r, facecolor=fill, edgecolor=edge, lw=lw, zorder=3))

    def trapezoid(self, xc, top, w_top, w_bottom, h, fill="white", edge=INK):
        pts = [(xc - w_top / 2, top), (xc + w_top / 2, top), (xc + w_bottom / 2, top - h), (xc - w_bottom / 2, top - h)]
        self.ax.add_patch(Polygon(pts, closed=True, facecolor=fill, edgecolor=edge, lw=1.0, zorder=2))

    def register(self, xc, yc, s=0.13):
        """A pipeline register: a small grey square with a clock wedge."""
        self.box(xc - s / 2, yc - s / 2, s, s, fill=REG_FILL, lw=0.8, z=4)
        self.ax.add_patch(Polygon([(xc - s / 2, yc - s / 2), (xc, yc - s / 2 + s * 0.35), (xc + s / 2, yc - s / 2)],
                                  closed=True, facecolor="none", edgecolor=INK, lw=0.5, zorder=5))


def _finish(canvas: _Canvas, kind: str, params: dict, path) -> Diagram:
    size = (round(canvas.width * DPI), round(canvas.height * DPI))
    counts = dict(sorted(canvas.counts.items()))
    if path is None:
        return Diagram(kind, params, counts, size, figure=canvas.figure)
    written = _save_atomically(canvas.figure, path)
    return Diagram(kind, params, counts, size, path=written)


def _save_atomically(figure: Figure, path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DiagramError(f"cannot write {path}: the picture format is taken from the suffix, "
                           f"which must be one of {FORMATS}")
    if not path.parent.is_dir():
        raise DiagramError(f"cannot write {path}: directory {path.parent} does not exist (create it first)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            # metadata without a date keeps regenerated files byte-stable when nothing changed
            metadata = {"Software": None} if suffix == ".png" else {"Date": None}
            figure.savefig(handle, format=suffix[1:], dpi=DPI, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inspect(component):
    """Mark a generator built only to be read (never elaborated) so Amaranth does not warn that
    it was created but never used."""
    component._MustUse__silence = True
    return component


# ---------------------------------------------------------------------------------------------
# sparse DSP chain

def chain_breaks(length: int, n: int, weight_format: str = "int8", ovp_normal: str = "int4") -> dict:
    """The chain's structure for one N, read from the generator: which DSPs restart the cascade
    (Z = 0), which group boundaries end a segment, which only break the cascade (overflow
    adjust), which taps carry a value and which taps every segment collects."""
    chain = _inspect(SparseDSPChain(length, weight_format, ovp_normal=ovp_normal))
    code = n_code(n)
    run = chain._run_length(code)                 # DSPs per cascaded run: min(N, L, lane run)
    segment_dsps = 2 * chain._segment_taps(code)  # S = min(N, L)
    restart = [k % run == 0 for k in range(length)]
    segment_ends = [k for k in range(2, length, 2) if k % segment_dsps == 0]
    overflow_breaks = [k for k in range(2, length, 2) if restart[k] and k % segment_dsps != 0]
    active_taps = [g for g in range(length // 2) if (2 * g + 2) % run == 0]
    segments = [[g for g in active_taps if (2 * g) // segment_dsps == s] for s in range(length // segment_dsps)]
    return {
        "chain": chain, "run": run, "segment_dsps": segment_dsps, "restart": restart,
        "segment_breaks": segment_ends, "overflow_breaks": overflow_breaks,
        "active_taps": active_taps, "segments": segments,
        "lane_limit": lane_limit(weight_format, ovp_normal),
    }


_FORMAT_NAMES = {"int8": "INT8", "int4": "INT4", "ovp4": "OVP4"}


def draw_sparse_chain(length: int = 16, n: int = 8, path=None, *, weight_format: str = "int8",
                      ovp_normal: str = "int4") -> Diagram:
    """Draw the configurable sparse DSP chain of ``length`` DSP48E2 running N:16 blocks.

    Shows the candidate bus and a 16:1 sparse multiplexer per DSP (select = the stored 4-bit
    index, or the fixed dense position when N = 16), the weight decode, the input skew, the
    groups of two DSPs with their fixed PCOUT->PCIN link, every group boundary as the generator
    configures it for N (continue, overflow-adjust break, segment break), the active taps with
    their lane extraction, one reduction node per segment with its outputs, and the WP486
    packing of one DSP. Bad ``length`` / ``n`` / formats raise the chain's ``SparseChainError``.
    """
    info = chain_breaks(length, n, weight_format, ovp_normal)
    chain, run, seg = info["chain"], info["run"], info["segment_dsps"]
    L = length
    pitch, left, right = 1.05, 1.75, 0.35
    width = left + L * pitch + right
    height = 9.6
    cv = _Canvas(max(width, 16.0), height)
    xs = [left + (k + 0.5) * pitch for k in range(L)]
    fmt = _FORMAT_NAMES[weight_format] + (f" ({ovp_normal} normals)" if weight_format == "ovp4" else "")

    # heights (inches from the bottom)
    y_title = height - 0.3
    y_wbar = height - 0.7
    y_bus1, y_bus0 = height - 1.4, height - 1.55
    y_mux_top, mux_h = height - 1.8, 0.45
    y_skew = height - 2.6
    y_dsp_top, dsp_h = height - 2.9, 0.95
    y_dsp_bot = y_dsp_top - dsp_h
    y_dsp_mid = y_dsp_top - dsp_h / 2
    y_split_top, split_h = y_dsp_bot - 0.5, 0.42
    y_node = y_split_top - split_h - 0.65
    y_out = y_node - 0.5
    y_band_top, y_band_bot = y_mux_top + 0.12, y_out - 0.25

    dense = n == 16
    title = (f"Sparse DSP chain: L = {L} DSP48E2, N = {n} ({'dense' if dense else f'{n}:16 sparse'}), "
             f"{fmt} weights.  Segments of S = min(N, L) = {seg} DSPs;  lane limit {info['lane_limit']} "
             f"products -> cascade runs of min(S, {chain.run}) = {run} DSPs")
    cv.text(cv.width / 2, y_title, title, size=11, weight="bold")

    # segment bands
    for s in range(L // seg):
        x0 = left + s * seg * pitch
        cv.box(x0 + 0.03, y_band_bot, seg * pitch - 0.06, y_band_top - y_band_bot,
               fill=SEGMENT_FILL[s % 2], edge="none", z=0)
        cv.text(x0 + 0.1, y_band_bot + 0.12, f"segment {s}", size=7.5, ha="left", color="#555555")
        cv.count("segment")

    # row labels in the left margin
    labels = [(y_wbar - 0.15, "weights"), ((y_bus1 + y_bus0) / 2 - 0.05, "candidates\nx1[0..15]\nx0[0..15]"),
              (y_mux_top - mux_h / 2, "sparse MUX"), (y_skew, "input skew"), (y_dsp_mid, "DSP48E2"),
              (y_split_top - split_h / 2, "taps, lane\nextraction"), (y_node, "reduction\nnodes"),
              (y_out, "outputs")]
    for y, s in labels:
        cv.text(0.12, y, s, size=8, ha="left", color="#444444", weight="bold")

    # weight decode bar and the candidate bus
    cv.box(xs[0] - 0.45, y_wbar - 0.3, xs[-1] - xs[0] + 0.9, 0.3, fill="#f7eaf3", edge=WEIGHT)
    decode_note = ("OvpPairDecoder per pair byte, B = integer << exponent" if weight_format == "ovp4"
                   else "sign-extend to the 18-bit B port")
    decode_text = f"weight decode: {fmt} codes -> one integer w[k] per DSP ({decode_note})"
    if len(decode_text) * 0.065 > xs[-1] - xs[0] + 0.8:  # short chains: the short form fits
        decode_text = f"weight decode: {_FORMAT_NAMES[weight_format]} -> w[k]"
    cv.text((xs[0] + xs[-1]) / 2, y_wbar - 0.15, decode_text, size=8)
    bus_x0, bus_x1 = xs[0] - 0.5, xs[-1] + 0.3
    for y, name in ((y_bus1, "x1"), (y_bus0, "x0")):
        cv.line([bus_x0, bus_x1], [y, y], color=ACT, lw=2.2)

    for k, x in enumerate(xs):
        xa, xw = x - 0.17, x + 0.28   # activation and weight lanes of column k
        # sparse multiplexer fed by the candidate bus
        for y in (y_bus1, y_bus0):
            cv.dot(xa, y, color=ACT)
        cv.line([xa, xa], [y_bus1, y_mux_top], color=ACT, lw=2.0)
        cv.trapezoid(xa, y_mux_top, 0.5, 0.28, mux_h, fill="#eaf2fa", edge=ACT)
        cv.text(xa, y_mux_top - 0.17, "16:1", size=7)
        cv.count("mux")
        if dense:
            sel = str(k % CANDIDATES) if L >= CANDIDATES else f"{L}s+{k}"
            cv.text(xa - 0.05, y_mux_top - mux_h - 0.04, f"sel {sel}", size=6.5, color="#555555", va="top",
                    ha="right")
            cv.count("dense_select")
        else:
            cv.text(xa - 0.05, y_mux_top - mux_h - 0.04, f"idx[{k}]", size=6.5, color=ACT, va="top", ha="right")
            cv.count("index")
        # weight lane passes the candidate bus (a crossing, no junction)
        cv.line([xw, xw], [y_wbar - 0.3, y_skew], color=WEIGHT, lw=1.2)
        cv.arrow(xw, y_skew, xw, y_dsp_top, color=WEIGHT, lw=1.2)
        cv.line([xa, xa], [y_mux_top - mux_h, y_skew], color=ACT, lw=2.0)
        cv.arrow(xa, y_skew, xa, y_dsp_top, color=ACT, lw=2.0)
        # skew: DSP k's operands are delayed k cycles (systolic wavefront of the cascade)
        cv.box(x - 0.4, y_skew - 0.11, 0.8, 0.22, fill=REG_FILL, lw=0.8, z=4)
        cv.text(x, y_skew, f"skew {k}" if k else "skew 0", size=6.5)
        cv.count("skew")
        # the DSP: restart (Z = 0) or cascade (Z = PCIN), as the generator's OPMODE rule says
        restart = info["restart"][k]
        cv.box(x - 0.4, y_dsp_bot, 0.8, dsp_h, fill=DSP_FILL, lw=1.3)
        cv.text(x - 0.3, y_dsp_top - 0.1, "A D", size=6, ha="left", color=ACT)
        cv.text(x + 0.33, y_dsp_top - 0.1, "B", size=6, ha="right", color=WEIGHT)
        cv.text(x, y_dsp_mid + 0.08, f"DSP {k}", size=8.5, weight="bold")
        zcol = SEGMENT_BREAK if (restart and k % seg == 0) else OVERFLOW_BREAK if restart else CONTINUE
        cv.text(x, y_dsp_mid - 0.2, "Z = 0" if restart else "Z = PCIN", size=7, color=zcol, weight="bold")
        cv.count("dsp")
        cv.count("restart" if restart else "cascade_in")

    # groups and PCOUT -> PCIN links
    for g in range(L // 2):
        x0 = xs[2 * g] - 0.47
        cv.box(x0, y_dsp_bot - 0.07, xs[2 * g + 1] - xs[2 * g] + 0.94, dsp_h + 0.14,
               fill="none", edge="#666666", lw=0.8, ls="--", z=1)
        cv.count("group")
    for k in range(L - 1):
        xa, xb = xs[k] + 0.4, xs[k + 1] - 0.4
        boundary = k + 1
        if boundary % 2:  # inside a group: the fixed cascade
            cv.arrow(xa, y_dsp_mid, xb, y_dsp_mid, color=INK, lw=1.4)
            cv.count("fixed_link")
        elif boundary in info["segment_breaks"]:
            cv.line([xa, xb], [y_dsp_mid, y_dsp_mid], color=GREY, lw=0.8, ls=":")
            xm = (xa + xb) / 2
            cv.line([xm, xm], [y_band_top, y_split_top + 0.05], color=SEGMENT_BREAK, lw=2.0, ls="--", z=4)
            cv.count("segment_break")
        elif boundary in info["overflow_breaks"]:
            cv.line([xa, xb], [y_dsp_mid, y_dsp_mid], color=GREY, lw=0.8, ls=":")
            xm = (xa + xb) / 2
            cv.line([xm, xm], [y_dsp_top + 0.05, y_dsp_bot - 0.05], color=OVERFLOW_BREAK, lw=2.0, ls="--", z=4)
            cv.count("overflow_break")
        else:
            cv.arrow(xa, y_dsp_mid, xb, y_dsp_mid, color=CONTINUE, lw=1.4)
            cv.count("configurable_link")

    # taps (P of the last DSP of a group) and lane extraction; idle taps are gated to 0
    split_at = {}
    for g in range(L // 2):
        x = xs[2 * g + 1]
        if g in info["active_taps"]:
            cv.arrow(x, y_dsp_bot, x, y_split_top, color=INK, lw=1.2)
            cv.box(x - 0.42, y_split_top - split_h, 0.84, split_h, fill="white", lw=1.0)
            cv.text(x, y_split_top - 0.12, "P[17:0] ->y0", size=6.5)
            cv.text(x, y_split_top - 0.3, "P>>>18 ->y1", size=6.5)
            split_at[g] = x
            cv.count("tap")
        else:
            cv.line([x, x], [y_dsp_bot, y_dsp_bot - 0.18], color=GREY, lw=0.8)
            cv.text(x, y_dsp_bot - 0.27, "tap = 0", size=6, color=GREY)
            cv.count("idle_tap")

    # reduction nodes: one per segment, summing that segment's taps (the reduction net)
    for s, taps in enumerate(info["segments"]):
        xc = left + (s + 0.5) * seg * pitch
        for g in taps:
            cv.line([split_at[g], split_at[g], xc], [y_split_top - split_h, y_node + 0.3, y_node + 0.22],
                    color=INK, lw=1.0)
        cv.circle(xc, y_node, 0.2, fill="#fde9dc", edge=SEGMENT_BREAK)
        cv.text(xc, y_node, "Σ", size=11, weight="bold")
        cv.count("reduction_node")
        cv.arrow(xc, y_node - 0.2, xc, y_out + 0.12, color=INK)
        cv.text(xc, y_out, f"y0[{s}], y1[{s}]", size=8, weight="bold", va="top")
        cv.count("output")

    _draw_wp486(cv, 0.25, 0.25, y_band_bot - 0.45, info, chain)
    return _finish(cv, "sparse_chain", {"length": L, "n": n, "weight_format": weight_format,
                                        "ovp_normal": ovp_normal}, path)


def _draw_wp486(cv: _Canvas, x0: float, y0: float, top: float, info: dict, chain: SparseDSPChain):
    """Bottom panel: one DSP's WP486 packing, and the legend of the link kinds."""
    h = top - y0
    cv.box(x0, y0, 9.6, h, fill="#fafafa", edge="#bbbbbb", lw=0.8, z=0)
    cv.text(x0 + 0.12, top - 0.18, "One DSP48E2 (WP486 packing: two INT8 MACs share one weight)",
            size=8.5, ha="left", weight="bold")
    yc = y0 + h / 2 - 0.15
    # ports
    cv.text(x0 + 0.15, yc + 0.45, "D = x0[sel]", size=8, ha="left", color=ACT)
    cv.text(x0 + 0.15, yc + 0.05, "A = x1[sel] << 18", size=8, ha="left", color=ACT)
    cv.text(x0 + 0.15, yc - 0.55, "B = w[k]", size=8, ha="left", color=WEIGHT)
    cv.arrow(x0 + 1.05, yc + 0.45, x0 + 1.75, yc + 0.3, color=ACT)
    cv.arrow(x0 + 1.45, yc + 0.05, x0 + 1.75, yc + 0.2, color=ACT)
    cv.circle(x0 + 1.95, yc + 0.25, 0.2)
    cv.text(x0 + 1.95, yc + 0.25, "+", size=11, weight="bold")
    cv.text(x0 + 1.95, yc + 0.62, "pre-adder AD\nINMODE 00100", size=6.5)
    cv.arrow(x0 + 2.15, yc + 0.25, x0 + 2.75, yc + 0.05, color=ACT)
    cv.arrow(x0 + 0.85, yc - 0.55, x0 + 2.75, yc - 0.1, color=WEIGHT)
    cv.circle(x0 + 2.95, yc, 0.2)
    cv.text(x0 + 2.95, yc, "×", size=11, weight="bold")
    cv.text(x0 + 2.95, yc - 0.38, "AMULTSEL=AD\n27 x 18", size=6.5, va="top")
    cv.arrow(x0 + 3.15, yc, x0 + 3.75, yc)
    cv.text(x0 + 3.45, yc + 0.12, "M", size=7)
    cv.circle(x0 + 3.95, yc, 0.2)
    cv.text(x0 + 3.95, yc, "+", size=11, weight="bold")
    cv.text(x0 + 3.95, yc + 0.55, "Z = PCIN (cascade)\nor 0 (restart)", size=6.5)
    cv.arrow(x0 + 3.95, yc + 0.38, x0 + 3.95, yc + 0.2, color=CONTINUE)
    cv.arrow(x0 + 4.15, yc, x0 + 4.55, yc)
    cv.box(x0 + 4.55, yc - 0.2, 0.55, 0.4, fill=DSP_FILL)
    cv.text(x0 + 4.825, yc, "P 48b", size=7.5)
    cv.text(x0 + 4.825, yc - 0.33, "-> PCOUT", size=6.5)
    # P layout
    px, pw = x0 + 5.4, 4.0
    hi_w = pw * 30 / 48
    cv.box(px, yc - 0.2, hi_w, 0.4, fill="#e3eef8", edge=ACT)
    cv.box(px + hi_w, yc - 0.2, pw - hi_w, 0.4, fill="#eef7ee", edge=CONTINUE)
    cv.text(px + hi_w / 2, yc, "P[47:18]: x1·w (+ borrow)", size=7.5)
    cv.text(px + hi_w + (pw - hi_w) / 2, yc, f"P[{LANE_BITS - 1}:0]: x0·w", size=7.5)
    cv.text(px + pw / 2, yc + 0.45, "P = x1·w·2^18 + x0·w  (summed over a cascaded run)", size=7.5)
    cv.text(px + pw / 2, yc - 0.42,
            f"y0 = signext(P[17:0]),  y1 = (P >>> 18) + P[17];  a run holds <= lane limit "
            f"{info['lane_limit']} products", size=7, va="top")
    # legend
    lx, ly = x0 + 10.0, top - 0.2
    entries = [
        (INK, "-", "fixed PCOUT->PCIN inside a group of two DSPs"),
        (CONTINUE, "-", "group boundary, continue: next group Z = PCIN"),
        (OVERFLOW_BREAK, "--", f"overflow-adjust break: Z = 0 every {info['run']} DSPs, tap summed in fabric"),
        (SEGMENT_BREAK, "--", "segment break: reduction node emits y0[s], y1[s]; next Z = 0"),
        (GREY, ":", "PCOUT->PCIN wire present but ignored (Z = 0)"),
        (ACT, "-", "16:1 sparse MUX select: stored 4-bit idx[k] (N < 16), fixed position (dense)"),
    ]
    for i, (color, ls, label) in enumerate(entries):
        y = ly - i * 0.27
        cv.line([lx, lx + 0.45], [y, y], color=color, lw=2.0, ls=ls)
        cv.text(lx + 0.55, y, label, size=7.5, ha="left")
    seg = info["segment_dsps"]
    cv.text(lx, ly - len(entries) * 0.27 - 0.05,
            f"reduction net: {chain.reduction_stages} pipelined add stages, {chain.sum_bits} bits; outputs "
            f"s >= L/S = {chain.length // seg} are 0; sign-extended to INT32", size=7.5, ha="left", color="#444444")
    cv.text(lx, ly - len(entries) * 0.27 - 0.32,
            f"latency L + 5 + log2(min(L, 16)/2) = {chain.latency} cycles; one beat (2L = {2 * chain.length} MACs) "
            f"per cycle", size=7.5, ha="left", color="#444444")


# ---------------------------------------------------------------------------------------------
# OVP systolic array

def draw_ovp_array(rows: int = 4, cols: int = 4, path=None, *, normal: str = "int4") -> Diagram:
    """Draw the output-stationary OVP systolic array of ``rows`` x ``cols`` outputs.

    Shows the two input streams and the holding register, the ``rows + cols`` border pair
    decoders (even then odd element; in 8-bit mode each operand split into high/low nibble
    operands for two physical rows / columns), the skew registers (physical row r delayed r
    registers, column c by c), the PE grid with A moving right and B moving down through one
    register per PE, each PE's shift-MAC into its INT32 accumulator, and the drain (one result
    row per cycle, 2 x 2 nibble accumulators summed in 8-bit mode). Bad sizes raise the array's
    ``OvpArrayError``.
    """
    array = _inspect(OvpSystolicArray(rows, cols, normal=normal))
    pr, pc, split = array.pe_rows, array.pe_cols, array.split
    pe_w, pe_h, px, py = 1.7, 1.05, 2.25, 1.6
    max_skew_c = pc - 1
    grid_left = 3.4 + 0.17 * (pr - 1)          # room for the row skew registers
    grid_top_gap = 1.35 + 0.17 * max_skew_c    # room for the column skew registers
    detail_w = 5.2
    width = grid_left + pc * px + 0.4 + detail_w
    header = 0.75 + 1.25
    height = header + grid_top_gap + pr * py + 1.9
    cv = _Canvas(width, max(height, 8.5))
    height = cv.height
    top_of_grid = height - header - grid_top_gap
    xs = [grid_left + c * px + pe_w / 2 for c in range(pc)]
    ys = [top_of_grid - r * py - pe_h / 2 for r in range(pr)]
    kind = "8-bit mode: int8 normals, E3M4 outliers" if split == 2 else f"{normal} normals"
    cv.text(width / 2, height - 0.3,
            f"OVP output-stationary systolic array: {rows} x {cols} outputs ({kind}); {array.decoder_count} "
            f"border decoders, {pr} x {pc} PEs", size=11, weight="bold")

    # streams and holding register
    y_streams = height - 0.85
    cv.box(0.2, y_streams - 0.22, 1.4, 0.44, fill="white", edge=ACT)
    cv.text(0.9, y_streams, f"a stream:\n{rows} pairs + last", size=7.5)
    cv.box(1.75, y_streams - 0.22, 1.4, 0.44, fill="white", edge=WEIGHT)
    cv.text(2.45, y_streams, f"b stream:\n{cols} pairs", size=7.5)
    y_hold = y_streams - 0.8   # centre of the holding register
    cv.arrow(0.9, y_streams - 0.22, 0.9, y_hold + 0.2, color=ACT)
    cv.arrow(2.45, y_streams - 0.22, 2.45, y_hold + 0.2, color=WEIGHT)
    cv.box(0.2, y_hold - 0.2, 2.95, 0.4, fill=REG_FILL)
    cv.text(1.675, y_hold, "join + pair holding register", size=8)
    cv.text(1.3, y_hold - 0.3, "one pair transfer per 2 cycles;\neach decoder feeds even, then odd",
            size=7, ha="left", va="top", color="#555555")

    # column (B) decoders on the top border
    y_dec_b = height - header - 0.1
    for j in range(cols):
        phys = [j * split + d for d in range(split)]
        xc = sum(xs[p] for p in phys) / len(phys)
        cv.box(xc - 0.6, y_dec_b - 0.42, 1.2, 0.42, fill=DECODER_FILL, edge=WEIGHT)
        cv.text(xc, y_dec_b - 0.21, f"OVP decoder b{j}", size=7.5)
        cv.line([xc, xc], [y_dec_b + 0.3, y_dec_b], color=WEIGHT, lw=1.0)
        cv.count("decoder")
        cv.count("b_decoder")
        if split == 2:  # fork: one nibble operand per physical column
            y_fork = y_dec_b - 0.55
            cv.line([xc, xc], [y_dec_b - 0.42, y_fork], color=WEIGHT)
            cv.line([xs[phys[0]], xs[phys[-1]]], [y_fork, y_fork], color=WEIGHT)
        for d, p in enumerate(phys):
            x = xs[p]
            y = y_dec_b - 0.42
            if split == 2:
                y = y_dec_b - 0.55
                cv.text(x + 0.05, y - 0.1, "hi (e+4, x>>4)" if d == 0 else "lo (e, x&15)", size=6.5,
                        ha="left", color=WEIGHT)
            regs = p
            top_pe = ys[0] + pe_h / 2
            span = y - top_pe
            for s in range(regs):
                cv.register(x, y - span * (s + 1) / (regs + 1))
                cv.count("skew_register")
            cv.arrow(x, y, x, top_pe, color=WEIGHT, lw=1.2)
    cv.line([xs[0] - 0.6, xs[-1] + 0.6], [y_dec_b + 0.3, y_dec_b + 0.3], color=WEIGHT, lw=1.6)
    cv.line([3.15, xs[0] - 0.6], [y_hold, y_hold], color=WEIGHT, lw=1.6)
    cv.line([xs[0] - 0.6, xs[0] - 0.6], [y_hold, y_dec_b + 0.3], color=WEIGHT, lw=1.6)

    # row (A) decoders on the left border
    x_dec_a = 2.05
    for i in range(rows):
        phys = [i * split + d for d in range(split)]
        yc = sum(ys[p] for p in phys) / len(phys)
        cv.box(x_dec_a - 0.75, yc - 0.24, 1.2, 0.48, fill=DECODER_FILL, edge=ACT)
        cv.text(x_dec_a - 0.15, yc, f"OVP decoder\na{i}", size=7.5)
        cv.line([0.75, x_dec_a - 0.75], [yc, yc], color=ACT, lw=1.0)
        cv.count("decoder")
        cv.count("a_decoder")
        if split == 2:  # fork: one nibble operand per physical row
            cv.line([x_dec_a + 0.45, x_dec_a + 0.6], [yc, yc], color=ACT)
            cv.line([x_dec_a + 0.6, x_dec_a + 0.6], [ys[phys[0]], ys[phys[-1]]], color=ACT)
        for d, p in enumerate(phys):
            y = ys[p]
            x = x_dec_a + 0.45
            cv.line([x, x + 0.15], [y, y], color=ACT)
            if split == 2:
                cv.text(x + 0.05, y + 0.1, "hi" if d == 0 else "lo", size=6.5, ha="left", color=ACT)
            x += 0.15
            left_pe = xs[0] - pe_w / 2
            span = left_pe - x
            for s in range(p):
                cv.register(x + span * (s + 1) / (p + 1), y)
                cv.count("skew_register")
            cv.arrow(x, y, left_pe, y, color=ACT, lw=1.2)
    cv.line([0.75, 0.75], [y_hold - 0.2, ys[split * (rows - 1)]], color=ACT, lw=1.6)
    cv.text(x_dec_a + 0.55, ys[0] + pe_h / 2 + 0.1, "skew: row r,\nr registers", size=6.5, ha="left",
            va="bottom", color="#555555")
    cv.text(xs[0] - 0.15, (y_dec_b - 0.7 + ys[0] + pe_h / 2) / 2, "skew: column c,\nc registers", size=6.5,
            ha="right", color="#555555")

    # PEs, forwarding registers, accumulator buses
    for r in range(pr):
        for c in range(pc):
            x, y = xs[c], ys[r]
            cv.box(x - pe_w / 2, y - pe_h / 2, pe_w, pe_h, fill=PE_FILL, lw=1.2)
            cv.text(x, y + 0.3, f"PE {r},{c}", size=8, weight="bold")
            cv.text(x, y + 0.04, "(i_a·i_b) << (e_a+e_b)", size=7)
            cv.text(x, y - 0.22, f"into acc (INT{array.acc_bits})", size=7)
            cv.count("pe")
            if c + 1 < pc:  # A (with valid/first) to the right through a_out's register
                xr = x + pe_w / 2
                cv.register(xr + 0.12, y)
                cv.arrow(xr + 0.19, y, xs[c + 1] - pe_w / 2, y, color=ACT, lw=1.2)
                cv.line([xr, xr + 0.05], [y, y], color=ACT, lw=1.2)
                cv.count("a_forward")
            if r + 1 < pr:  # B downward through b_out's register
                yb = y - pe_h / 2
                cv.register(x, yb - 0.12)
                cv.arrow(x, yb - 0.19, x, ys[r + 1] + pe_h / 2, color=WEIGHT, lw=1.2)
                cv.line([x, x], [yb, yb - 0.05], color=WEIGHT, lw=1.2)
                cv.count("b_forward")
            # accumulator read-out: a stub to the column's acc bus (right of the column)
            xb = x + pe_w / 2 + 0.3
            cv.line([x + pe_w / 2, xb], [y - 0.38, y - 0.38], color=GREY, lw=0.9)
            cv.dot(xb, y - 0.38, color=GREY, r=0.02)
    # drain: per logical column a row-select mux over the accumulators (and the 2x2 sum)
    y_bottom = ys[-1] - pe_h / 2
    y_mux = y_bottom - 0.5
    for j in range(cols):
        phys = [j * split + d for d in range(split)]
        for p in phys:
            xb = xs[p] + pe_w / 2 + 0.3
            cv.line([xb, xb], [ys[0] - 0.38, y_mux], color=GREY, lw=1.4)
        xm = xs[phys[-1]] + pe_w / 2 + 0.3 - (0.0 if split == 1 else px / 2)
        for p in phys:  # buses of the 2 x 2 nibble columns join the drain adder's top edge
            xb = xs[p] + pe_w / 2 + 0.3
            if abs(xb - xm) > 0.4:
                cv.line([xb, xm + (0.35 if xb > xm else -0.35)], [y_mux, y_mux], color=GREY, lw=1.4)
        cv.trapezoid(xm, y_mux, 0.9, 0.5, 0.35, fill="#f2f2f2", edge=INK)
        cv.text(xm, y_mux - 0.17, "row sel" if split == 1 else "Σ 2x2, row sel", size=6.5)
        cv.count("drain_mux")
        cv.arrow(xm, y_mux - 0.35, xm, y_mux - 0.75)
        cv.text(xm, y_mux - 0.82, f"values[{j}]", size=7.5, va="top")
    cv.text(xs[0] - pe_w / 2, y_mux - 1.25,
            f"drain: results stream, {rows} transfers of {cols} x INT{array.acc_bits} (row 0 first, "
            f"'last' on row {rows - 1}), one per cycle; grey = accumulator read-out buses",
            size=7.5, ha="left", va="top", color="#444444")
    if split == 2:
        for i in range(rows):
            for j in range(cols):
                x0 = xs[2 * j] - pe_w / 2 - 0.12
                y0 = ys[2 * i + 1] - pe_h / 2 - 0.12
                cv.box(x0, y0, px + pe_w + 0.24, py + pe_h + 0.24, fill="none", edge="#777777", lw=0.8, ls="--", z=1)
                cv.count("logical_output")
    _draw_pe_detail(cv, width - detail_w + 0.1, height - header - 0.1, array)
    return _finish(cv, "ovp_array", {"rows": rows, "cols": cols, "normal": normal}, path)


def _draw_pe_detail(cv: _Canvas, x0: float, top: float, array: OvpSystolicArray):
    """Right panel: one PE's shift-MAC, and the array's control/timing."""
    w, h = 4.9, 4.6
    cv.box(x0, top - h, w, h, fill="#fafafa", edge="#bbbbbb", lw=0.8, z=0)
    cv.text(x0 + 0.12, top - 0.2, "One PE (shift-MAC, latency 1, one MAC per cycle)", size=8.5,
            ha="left", weight="bold")
    eb, ib = array.pe_exponent_bits, array.pe_integer_bits
    y = top - 0.6
    cv.text(x0 + 0.15, y, f"a_in: e_a ({eb} b), i_a ({ib} b signed)", size=7.5, ha="left", color=ACT)
    cv.text(x0 + 0.15, y - 0.3, f"b_in: e_b ({eb} b), i_b ({ib} b signed)", size=7.5, ha="left", color=WEIGHT)
    cv.text(x0 + 0.15, y - 0.6, "step_in: valid, first (travel with A)", size=7.5, ha="left", color=ACT)
    yc = y - 1.65
    cv.circle(x0 + 0.6, yc + 0.25, 0.2)
    cv.text(x0 + 0.6, yc + 0.25, "×", size=11, weight="bold")
    cv.text(x0 + 0.6, yc + 0.6, "i_a·i_b", size=7)
    cv.circle(x0 + 0.6, yc - 0.35, 0.2)
    cv.text(x0 + 0.6, yc - 0.35, "+", size=11, weight="bold")
    cv.text(x0 + 0.6, yc - 0.7, "e_a+e_b", size=7)
    cv.box(x0 + 1.2, yc - 0.3, 0.65, 0.6, fill="white")
    cv.text(x0 + 1.525, yc, "<<", size=10, weight="bold")
    cv.arrow(x0 + 0.8, yc + 0.25, x0 + 1.2, yc + 0.15)
    cv.arrow(x0 + 0.8, yc - 0.35, x0 + 1.2, yc - 0.15)
    cv.arrow(x0 + 1.85, yc, x0 + 2.3, yc)
    cv.circle(x0 + 2.5, yc, 0.2)
    cv.text(x0 + 2.5, yc, "+", size=11, weight="bold")
    cv.arrow(x0 + 2.7, yc, x0 + 3.1, yc)
    cv.box(x0 + 3.1, yc - 0.25, 1.2, 0.5, fill=PE_FILL, lw=1.2)
    cv.text(x0 + 3.7, yc, f"acc INT{array.acc_bits}", size=7.5, weight="bold")
    cv.text(x0 + 3.7, yc - 0.38, "enable = valid", size=6.5)
    cv.line([x0 + 3.7, x0 + 3.7, x0 + 2.5], [yc + 0.25, yc + 0.6, yc + 0.6], color=INK)
    cv.arrow(x0 + 2.5, yc + 0.6, x0 + 2.5, yc + 0.2)
    cv.text(x0 + 2.55, yc + 0.72, "first ? 0 : acc", size=6.5, ha="left")
    y2 = yc - 1.0
    for i, s in enumerate([
        "a_out, step_out -> right; b_out -> down (one register each)",
        f"wraps modulo 2^{array.acc_bits} (bits shifted out are dropped)",
        "control: COMPUTE -> FLUSH -> DRAIN",
        f"flush PR + PC - 1 = {array.flush_cycles} cycles after the last step;",
        f"tile: K + PR + PC + rows = K + {array.pe_rows + array.pe_cols + array.rows} cycles at full rate",
    ]):
        cv.text(x0 + 0.15, y2 - i * 0.26, s, size=7.5, ha="left")


# ---------------------------------------------------------------------------------------------
# command line

#: The pictures in docs/hw.md: (file name, function, keyword arguments).
DOC_PICTURES = (
    ("sparse_chain_l16_n16.png", draw_sparse_chain, {"length": 16, "n": 16}),
    ("sparse_chain_l16_n4.png", draw_sparse_chain, {"length": 16, "n": 4}),
    ("ovp_array_4x4.png", draw_ovp_array, {"rows": 4, "cols": 4}),
)


#: ``kind`` of the output directory (olivine.outputs): a later run may replace only its own output.
OUTPUT_KIND = "diagrams"


def main(argv=None) -> list[Diagram]:
    """Regenerate the documentation pictures (``python -m olivine.hw.diagrams --out docs/img``).

    ``--out`` is required (no default relative to the current directory) and is written as one
    output directory: atomically, with the marker of :mod:`olivine.outputs`, replacing only an
    earlier diagrams output (an empty or new directory is fine; anything else is refused).
    """
    from olivine.outputs import output_directory

    parser = argparse.ArgumentParser(prog="python -m olivine.hw.diagrams", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: new, empty, or an earlier diagrams output (replaced whole)")
    args = parser.parse_args(argv)
    drawn_all = []
    with output_directory(args.out, OUTPUT_KIND) as tmp:
        for name, draw, kwargs in DOC_PICTURES:
            drawn_all.append(draw(**kwargs, path=tmp / name))
    written = []
    for drawn in drawn_all:
        drawn.path = args.out / drawn.path.name
        written.append(drawn)
        print(f"{drawn.path}  {drawn.size_px[0]}x{drawn.size_px[1]} px  {drawn.path.stat().st_size // 1024} KiB  "
              + ", ".join(f"{k} {v}" for k, v in drawn.counts.items()))
    return written


if __name__ == "__main__":
    import sys

    from olivine.outputs import OutputError

    try:
        main()
    except OutputError as exc:
        sys.exit(f"python -m olivine.hw.diagrams: {exc}")
