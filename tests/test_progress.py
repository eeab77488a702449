"""olivine/progress.py: a line per step with elapsed time off a terminal, a rich bar on one, quiet when fast."""

import io
import re

import pytest

from olivine import progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("OLIVINE_PROGRESS", raising=False)
    monkeypatch.delenv("OLIVINE_PROGRESS_DELAY", raising=False)


def test_lines_when_not_a_terminal():
    out = io.StringIO()
    with progress.track("quantizing m", 3, "layer", delay=0, stream=out) as t:
        for name in ("layers.0", "layers.1", "lm_head"):
            t.advance(name)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"quantizing m: 1/3 layers \(layers\.0\), \d+\.\d s", lines[0])
    assert re.fullmatch(r"quantizing m: done, 3/3 layers in \d+\.\d s", lines[3])


def test_fast_steps_stay_quiet():
    out = io.StringIO()
    with progress.track("fast", 100, delay=60, stream=out) as t:
        for i in range(100):
            t.advance(i)
    assert out.getvalue() == ""


def test_min_interval_throttles_lines_but_keeps_the_last():
    out = io.StringIO()
    with progress.track("compiling", 50, "program", delay=0, min_interval=3600, stream=out) as t:
        for i in range(50):
            t.advance(f"p{i}")
    lines = out.getvalue().splitlines()
    assert [ln.split(":")[1].split()[0] for ln in lines] == ["1/50", "50/50", "done,"]


def test_rich_bar_in_a_terminal_and_nesting_shares_one_display():
    out = FakeTerminal()
    with progress.track("outer", 2, delay=0, stream=out) as outer:
        outer.advance("a")
        with progress.track("inner", 3, delay=0, stream=out) as inner:
            for _ in range(3):
                inner.advance("x")
            assert [t.description for t in progress._live.tasks] == ["outer", "inner"]
        assert [t.description for t in progress._live.tasks] == ["outer"]  # a finished nested step leaves
        outer.advance("b")
    text = out.getvalue()
    assert "outer" in text and "2/2" in text and "\x1b[" in text  # rendered by rich, with terminal codes
    assert progress._live is None  # the live display stopped with the last tracker


def test_environment_switches(monkeypatch):
    out = FakeTerminal()
    monkeypatch.setenv("OLIVINE_PROGRESS", "lines")
    with progress.track("forced", 1, delay=0, stream=out) as t:
        t.advance()
    assert out.getvalue().startswith("forced: 1/1 steps")
    monkeypatch.setenv("OLIVINE_PROGRESS", "0")
    quiet = io.StringIO()
    with progress.track("off", 1, delay=0, stream=quiet) as t:
        t.advance()
    with progress.step("off step", stream=quiet):
        pass
    assert quiet.getvalue() == ""
    monkeypatch.setenv("OLIVINE_PROGRESS", "")
    monkeypatch.setenv("OLIVINE_PROGRESS_DELAY", "0")
    shown = io.StringIO()
    with progress.track("env delay", 1, stream=shown) as t:
        t.advance()
    assert "env delay: 1/1" in shown.getvalue()


def test_step_prints_start_and_elapsed_off_a_terminal():
    out = io.StringIO()
    with progress.step("loading x", stream=out):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "loading x ..." and re.fullmatch(r"loading x: done in \d+\.\d s", lines[1])


def test_quantize_model_reports_each_layer(monkeypatch, capsys):
    from olivine.golden.loaders import load_model
    from olivine.golden.qmodel import quantize_model

    monkeypatch.setenv("OLIVINE_PROGRESS_DELAY", "0")
    m = load_model("glassllm")
    quantize_model(m.config, m.weights, "w8a8")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("quantizing")]
    n = m.config.n_layers + 1
    assert [ln.split(": ")[1].split()[0] for ln in lines[:n]] == [f"{k}/{n}" for k in range(1, n + 1)]
    assert "(lm_head)" in lines[n - 1] and "done" in lines[n]


def test_progress_is_a_leaf_module():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(progress))
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "olivine" not in imported and imported <= {"__future__", "os", "sys", "time", "contextlib", "typing",
                                                       "rich"}


def test_a_slow_step_without_parts_says_how_long_it_took():
    out = io.StringIO()
    with progress.track("writing x", delay=0, stream=out):
        pass
    assert re.fullmatch(r"writing x: done in \d+\.\d s\n", out.getvalue())
    quiet = io.StringIO()
    with progress.track("writing y", delay=60, stream=quiet):
        pass
    assert quiet.getvalue() == ""
