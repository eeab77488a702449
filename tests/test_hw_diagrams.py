"""Generated hardware pictures (hw/diagrams.py): what is drawn is what the generators build.

The drawing functions count every element where they draw it; these tests hold those counts to
rules computed independently of the drawing code: the chain's public lane/segment helpers and its
exact behavioural model (which DSP feeds which output), and the systolic array's elaborated
netlist (its decoder and PE submodules).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from olivine.hw import diagrams
from olivine.hw.diagrams import DiagramError, chain_breaks, draw_ovp_array, draw_sparse_chain
from olivine.hw.ovp_array import OvpArrayError, OvpSystolicArray
from olivine.hw.sparse_chain import (CANDIDATES, SparseChainError, lane_limit, lane_run,
                                     packed_lanes_decode, reference_chain)
from olivine.outputs import MARKER, OutputError

DOCS = Path(__file__).resolve().parent.parent / "docs"
MAX_PNG_BYTES = 200_000


def _png_ok(path: Path, size_px):
    image = imread(path)
    assert image.shape[:2] == (size_px[1], size_px[0])          # (height, width)
    assert np.asarray(image).std() > 0.05                         # not blank
    assert 10_000 < path.stat().st_size < MAX_PNG_BYTES


# ---------------------------------------------------------------------------------------------
# sparse DSP chain

def _segment_of_each_dsp(length: int, n: int) -> list[int]:
    """Which output entry each DSP feeds, read off the exact behavioural model (one weight and
    one activation set to 1, everything else 0)."""
    owner = []
    x = [1] * CANDIDATES
    for d in range(length):
        weights = [int(k == d) for k in range(length)]
        y0, y1 = reference_chain(x, x, weights, [d % CANDIDATES] * length, n, length)
        assert y0 == y1 and sum(y0) == 1
        owner.append(y0.index(1))
    return owner


CHAIN_CASES = [(16, 16, "int8"), (16, 8, "int8"), (16, 4, "int8"), (16, 2, "int8"), (2, 2, "int8"),
               (4, 16, "int8"), (8, 8, "int4"), (32, 8, "ovp4"), (64, 16, "ovp4")]


@pytest.mark.parametrize("length, n, weight_format", CHAIN_CASES)
def test_chain_counts_follow_the_generator(length, n, weight_format):
    drawn = draw_sparse_chain(length, n, weight_format=weight_format, ovp_normal="flint4")
    counts = drawn.counts
    seg = min(n, length)
    run = min(seg, lane_run(weight_format, "flint4", length))
    owner = _segment_of_each_dsp(length, n)
    segments = max(owner) + 1
    assert owner == [d // seg for d in range(length)]             # segments are contiguous, S each
    assert counts["dsp"] == counts["mux"] == counts["skew"] == length
    assert counts.get("index", 0) == (length if n < 16 else 0)
    assert counts.get("dense_select", 0) == (length if n == 16 else 0)
    assert counts["group"] == counts["fixed_link"] == length // 2
    assert counts["segment"] == counts["reduction_node"] == counts["output"] == segments
    assert counts.get("segment_break", 0) == segments - 1
    assert counts.get("overflow_break", 0) == length // run - segments
    assert counts["restart"] == length // run
    assert counts["tap"] == length // run
    assert counts.get("idle_tap", 0) == length // 2 - length // run
    boundaries = counts.get("configurable_link", 0) + counts.get("overflow_break", 0) + counts.get("segment_break", 0)
    assert boundaries == length // 2 - 1
    plt_figure = drawn.figure
    assert plt_figure is not None and drawn.path is None
    assert tuple(round(v * diagrams.DPI) for v in plt_figure.get_size_inches()) == drawn.size_px


def test_chain_breaks_are_the_lane_limit_rule():
    """The overflow-adjust breaks: INT8 runs of 4 DSPs (limit 7), and a run of that length is
    exact in the packed lanes at the worst case while a run of the next power of two is not."""
    info = chain_breaks(16, 16, "int8")
    assert info["lane_limit"] == lane_limit("int8") == 7 and info["run"] == 4
    assert info["overflow_breaks"] == [4, 8, 12] and info["segment_breaks"] == []
    assert [k for k, r in enumerate(info["restart"]) if r] == [0, 4, 8, 12]
    worst = [-128] * 2 * info["run"]
    assert packed_lanes_decode(worst[: info["run"]], worst[: info["run"]], worst[: info["run"]]) == (
        info["run"] * 128 * 128, info["run"] * 128 * 128)
    assert packed_lanes_decode(worst, worst, worst) != (len(worst) * 128 * 128,) * 2
    info = chain_breaks(16, 4, "int8")
    assert info["segment_breaks"] == [4, 8, 12] and info["overflow_breaks"] == []
    assert info["segments"] == [[1], [3], [5], [7]]                # one active tap per segment
    info = chain_breaks(16, 16, "int4")                             # INT4: limit 127, no break in 16
    assert info["overflow_breaks"] == [] and info["active_taps"] == [7]


@pytest.mark.parametrize("bad, error", [
    (dict(length=6), "chain length"),
    (dict(length=True), "chain length"),
    (dict(n=3), "N = 3"),
    (dict(weight_format="fp8"), "weight_format"),
    (dict(weight_format="ovp4", ovp_normal="e2m1"), "ovp_normal"),
])
def test_chain_bad_parameters_raise_the_generators_error(bad, error):
    with pytest.raises(SparseChainError, match=error):
        draw_sparse_chain(**bad)


# ---------------------------------------------------------------------------------------------
# OVP systolic array

@pytest.mark.parametrize("rows, cols, normal", [(1, 1, "int4"), (2, 3, "flint4"), (4, 4, "int4"),
                                                (3, 2, "int8"), (2, 2, "runtime")])
def test_array_counts_follow_the_generator(rows, cols, normal):
    counts = draw_ovp_array(rows, cols, normal=normal).counts
    array = OvpSystolicArray(rows, cols, normal=normal)
    names = list(array.elaborate(None)._named_submodules)           # what the generator instantiates
    decoders = [n for n in names if "decoder" in n]
    pes = [n for n in names if n.startswith("pe_")]
    pr, pc = array.pe_rows, array.pe_cols
    assert counts["decoder"] == len(decoders) == rows + cols == array.decoder_count
    assert counts["a_decoder"] == rows and counts["b_decoder"] == cols
    assert counts["pe"] == len(pes) == pr * pc
    assert counts.get("a_forward", 0) == pr * (pc - 1) and counts.get("b_forward", 0) == (pr - 1) * pc
    assert counts.get("skew_register", 0) == pr * (pr - 1) // 2 + pc * (pc - 1) // 2
    assert counts["drain_mux"] == cols
    assert counts.get("logical_output", 0) == (rows * cols if normal == "int8" else 0)


@pytest.mark.parametrize("bad, error", [
    (dict(rows=0), "rows must be a positive integer"),
    (dict(cols=2.5), "cols must be a positive integer"),
    (dict(normal="bf16"), "unknown normal type"),
])
def test_array_bad_parameters_raise_the_generators_error(bad, error):
    with pytest.raises(OvpArrayError, match=error):
        draw_ovp_array(**bad)


# ---------------------------------------------------------------------------------------------
# files

def test_main_writes_the_doc_pictures(tmp_path):
    written = diagrams.main(["--out", str(tmp_path / "img")])
    names = [name for name, _, _ in diagrams.DOC_PICTURES]
    assert [drawn.path.name for drawn in written] == names
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == sorted(names + [MARKER])   # no temp files
    mask = os.umask(0)
    os.umask(mask)
    for drawn in written:
        _png_ok(drawn.path, drawn.size_px)
        assert drawn.path.stat().st_mode & 0o777 == 0o666 & ~mask   # not mkstemp's 0600


def test_main_replaces_its_own_output_and_nothing_else(tmp_path, monkeypatch):
    out = tmp_path / "img"
    first = {d.path.name: d.path.read_bytes() for d in diagrams.main(["--out", str(out)])}
    again = {d.path.name: d.path.read_bytes() for d in diagrams.main(["--out", str(out)])}  # re-run onto itself
    assert first == again and sorted(p.name for p in tmp_path.iterdir()) == ["img"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="not an olivine 'diagrams' output"):
        diagrams.main(["--out", str(mine)])
    assert [p.name for p in mine.iterdir()] == ["photo.png"]
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="existing file"):
        diagrams.main(["--out", str(tmp_path / "file.png")])
    # no default: nothing is written relative to the current directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        diagrams.main([])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.png", "img", "mine"]


def test_docs_img_is_a_diagrams_output():
    # so that `--out docs/img` regenerates it in place (and would refuse if it held other files)
    assert json.loads((DOCS / "img" / MARKER).read_text())["kind"] == diagrams.OUTPUT_KIND
    assert sorted(p.name for p in (DOCS / "img").iterdir()) == sorted(
        [name for name, _, _ in diagrams.DOC_PICTURES] + [MARKER])


def test_pictures_are_byte_stable_and_svg_works(tmp_path):
    first = draw_ovp_array(1, 1, path=tmp_path / "a.png")
    draw_ovp_array(1, 1, path=tmp_path / "b.png")
    assert first.figure is None and first.path == tmp_path / "a.png"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    svg = draw_sparse_chain(4, 2, path=tmp_path / "c.svg")
    assert svg.path.read_text().lstrip().startswith("<?xml") and "<svg" in svg.path.read_text()


def test_bad_paths(tmp_path):
    with pytest.raises(DiagramError, match="suffix"):
        draw_ovp_array(1, 1, path=tmp_path / "x.jpg")
    with pytest.raises(DiagramError, match="does not exist"):
        draw_ovp_array(1, 1, path=tmp_path / "missing" / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_docs_embed_the_generated_pictures():
    text = (DOCS / "hw.md").read_text()
    assert "python -m olivine.hw.diagrams --out docs/img" in text
    for name, _, _ in diagrams.DOC_PICTURES:
        assert f"img/{name}" in text, f"docs/hw.md does not embed {name}"
        path = DOCS / "img" / name
        assert path.exists(), f"{path} missing: run python -m olivine.hw.diagrams --out docs/img"
        assert path.stat().st_size < MAX_PNG_BYTES
