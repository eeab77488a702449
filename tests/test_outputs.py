"""Output directories: created fresh or replacing an earlier output of the same kind, nothing else."""

import json
import os
import subprocess
import sys

import pytest

from olivine.outputs import MARKER, OutputError, check_output_directory, output_directory


def _write(path, kind="thing", content=b"new"):
    with output_directory(path, kind) as tmp:
        (tmp / "data.bin").write_bytes(content)
    return path


def test_fresh_directory_with_missing_parents_gets_marker_and_usual_mode(tmp_path):
    out = _write(tmp_path / "a" / "b" / "out")
    assert sorted(p.name for p in out.iterdir()) == ["data.bin", MARKER]
    assert json.loads((out / MARKER).read_text())["kind"] == "thing"
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700


def test_replaces_only_its_own_kind_and_leaves_no_temporaries(tmp_path):
    out = _write(tmp_path / "out", content=b"one")
    _write(out, content=b"two")
    assert (out / "data.bin").read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(OutputError, match="holds an olivine 'thing' output, not 'other'"):
        _write(out, kind="other")
    assert (out / "data.bin").read_bytes() == b"two"


def test_empty_directory_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty")
    assert (tmp_path / "empty" / MARKER).is_file()


def test_user_directory_is_never_touched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="exists and is not an olivine 'thing' output .*thesis.tex"):
        _write(mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_regular_file_symlink_fifo_are_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    with pytest.raises(OutputError, match="is an existing file"):
        _write(f)
    assert f.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "link").symlink_to(_write(tmp_path / "real"))
    with pytest.raises(OutputError, match="symbolic link"):
        _write(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="not a directory"):
        _write(tmp_path / "fifo")


def test_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="lies under .*file, which is a file"):
        _write(tmp_path / "file" / "sub" / "out")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("path", [".", "..", "", "  "])
def test_current_directory_parents_and_empty_are_refused(tmp_path, monkeypatch, path):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(OutputError) as err:
        _write(path)
    assert "current directory" in str(err.value) or "empty" in str(err.value)
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_home_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(OutputError, match="home directory"):
        check_output_directory("~", "thing")
    with pytest.raises(OutputError, match="home directory"):
        check_output_directory(str(home), "thing")


def test_read_only_parent_is_refused_before_writing():
    # root may write anywhere: run the check as an unprivileged user when we are root (in a
    # world-readable temporary directory: pytest's own is private to root)
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="olivine-ro-"))
    try:
        _check_read_only(base)
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


def _check_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code = ("import sys; from olivine.outputs import check_output_directory, OutputError\n"
            "try:\n check_output_directory(sys.argv[1], 'thing')\nexcept OutputError as e:\n print(e); sys.exit(3)\n")
    cmd = [sys.executable, "-c", code, str(ro / "out")]
    if os.geteuid() == 0:
        tmp_path.chmod(0o755)
        try:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            pytest.skip("running as root without setpriv")
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "is not writable; choose a writable location" in proc.stdout


def test_os_errors_while_creating_become_output_errors(tmp_path, monkeypatch):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(OutputError, match="cannot create output directory .*Permission denied"):
        _write(tmp_path / "out")


def test_interrupted_write_keeps_the_earlier_output(tmp_path):
    out = _write(tmp_path / "out", content=b"one")
    with pytest.raises(RuntimeError, match="disk full"):
        with output_directory(out, "thing") as tmp:
            (tmp / "data.bin").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert (out / "data.bin").read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_that_changed_during_the_write_is_put_back(tmp_path):
    out = _write(tmp_path / "out")
    with pytest.raises(OutputError, match="changed while olivine was writing"):
        with output_directory(out, "thing") as tmp:
            (tmp / "data.bin").write_bytes(b"new")
            (out / MARKER).unlink()  # someone else turns it into an ordinary directory meanwhile
    assert sorted(p.name for p in out.iterdir()) == ["data.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_legacy_outputs_can_be_recognised(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    with output_directory(old, "thing", recognise=lambda d: (d / "manifest.json").is_file()) as tmp:
        (tmp / "data.bin").write_bytes(b"x")
    assert sorted(p.name for p in old.iterdir()) == ["data.bin", MARKER]


def test_outputs_is_a_leaf():
    code = ("import sys, olivine.outputs; bad = sorted(m for m in sys.modules if m.startswith('olivine.') "
            "and m != 'olivine.outputs'); print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_current_directory_reached_through_a_link_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "alias").symlink_to(tmp_path)
    monkeypatch.chdir(work)
    with pytest.raises(OutputError, match="current directory"):
        check_output_directory(tmp_path / "alias" / "work", "thing")
