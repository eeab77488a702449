"""Output directories that never destroy what they did not write (a leaf: imports no room).

Every olivine command that writes a directory (``compile -o``, ``diagrams --out``, later ``hdl``,
``build``, ``dse``) writes it through :func:`output_directory`:

* the target may be new (missing parents are created), an empty directory, or an earlier output
  of the *same kind*, recognised by the marker file :data:`MARKER` that every output carries;
* anything else is refused with an :class:`OutputError` before anything is written: a non-empty
  directory without the marker (your data), an output of another kind, a regular file, a symbolic
  link, a device or FIFO, the current directory or one of its ancestors, a path below an existing
  file, a parent that cannot be written;
* the contents go to a temporary sibling directory that replaces the target only when complete
  (``os.replace``), so an interrupted write leaves the earlier output intact and no half-written
  one. The earlier output is moved aside, checked again for the marker (it could have changed since
  the first check), and only then deleted.

There is deliberately no "force": nothing here ever deletes a directory it cannot recognise as
its own output.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "olivine-output.json"
MARKER_MAX_BYTES = 4096


class OutputError(Exception):
    """An output path that olivine refuses to write: ``problem`` and what to do (``fix``)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


def _marker_kind(directory: Path) -> str | None:
    """The kind recorded in ``directory``'s marker, or None when there is no readable marker."""
    marker = directory / MARKER
    try:
        st = marker.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MARKER_MAX_BYTES:
            return None
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _is_own_output(directory: Path, kind: str, recognise: Callable[[Path], bool] | None) -> bool:
    return _marker_kind(directory) == kind or (recognise is not None and _marker_kind(directory) is None
                                               and recognise(directory))


def check_output_directory(path: str | os.PathLike, kind: str,
                           recognise: Callable[[Path], bool] | None = None) -> Path:
    """Check that ``path`` may receive an output of ``kind``; return it as a Path, else raise OutputError.

    ``recognise(directory)`` may accept outputs written before the marker existed (a directory
    without a marker that it recognises counts as an earlier output of this kind).
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputError("the output path is empty", "give a directory name")
    target = Path(text).expanduser()
    shown = f"'{text}'"
    absolute = Path(os.path.abspath(target))
    real = Path(os.path.realpath(target))

    def covers(place: Path) -> bool:  # the place itself or one of its parents, by name or through links
        return any(p == place or p in place.parents for p in (absolute, real))

    if covers(Path(os.getcwd())) or covers(Path(os.path.realpath(os.getcwd()))) or absolute == absolute.parent:
        raise OutputError(f"output directory {shown} is the current directory, one of its parents or the root",
                          "give a new directory, e.g. build/" + kind)
    if covers(Path.home()):
        raise OutputError(f"output directory {shown} is your home directory or one of its parents",
                          "give a new directory, e.g. build/" + kind)
    try:
        st = target.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:  # e.g. NotADirectoryError: a component of the path is a file
        st = exc
    if isinstance(st, OSError) or st is None:
        # Missing: its nearest existing ancestor must be a writable directory.
        ancestor = absolute.parent
        try:
            while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            is_dir = ancestor.is_dir()
        except OSError as exc:
            raise OutputError(f"cannot inspect output directory {shown}: {exc.strerror or exc}",
                              "choose a location you can write") from None
        if not is_dir:
            raise OutputError(f"output directory {shown} lies under {ancestor}, which is a file, not a directory",
                              "choose a path outside it")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create output directory {shown}: {ancestor} is not writable",
                              "choose a writable location")
        return target
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"output path {shown} is a symbolic link", "give the real directory, or a new path")
    if stat.S_ISREG(st.st_mode):
        raise OutputError(f"output path {shown} is an existing file, not a directory",
                          "choose another path (olivine never overwrites a file it did not write)")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"output path {shown} is not a directory (a device, FIFO or socket)", "choose another path")
    parent = absolute.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot replace output directory {shown}: {parent} is not writable",
                          "choose a writable location")
    try:
        entries = sorted(os.listdir(target))
    except OSError as exc:
        raise OutputError(f"cannot read output directory {shown}: {exc.strerror}", "choose another path") from None
    if not entries or _is_own_output(target, kind, recognise):
        return target
    other = _marker_kind(target)
    if other is not None:
        raise OutputError(f"output directory {shown} holds an olivine '{other}' output, not '{kind}'",
                          "choose another directory")
    listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise OutputError(f"output directory {shown} exists and is not an olivine '{kind}' output "
                      f"({len(entries)} entries: {listed})",
                      "choose a new or empty directory (olivine only replaces its own outputs)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def output_directory(path: str | os.PathLike, kind: str,
                     recognise: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Write an output directory atomically: ``with output_directory(p, "artifact") as tmp: <fill tmp>``.

    Checks ``path`` first (:func:`check_output_directory`), yields an empty temporary sibling to
    fill, then adds the marker and moves the result into place. An exception inside the block
    removes the temporary directory and leaves ``path`` as it was.
    """
    target = check_output_directory(path, kind, recognise)
    shown = f"'{os.fspath(path)}'"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise OutputError(f"cannot create output directory {shown}: {exc.strerror or exc}",
                          "choose a writable location") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the output the usual mode
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "written_by": "olivine"}) + "\n")
        _move_into_place(tmp, target, kind, recognise, shown)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, target: Path, kind: str, recognise, shown: str) -> None:
    try:
        os.replace(tmp, target)  # a new path or an empty directory: one atomic rename
        return
    except OSError as exc:
        if not target.is_dir() or target.is_symlink():
            raise OutputError(f"cannot write output directory {shown}: {exc.strerror or exc}",
                              "choose another path") from None
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    if not _is_own_output(old, kind, recognise):  # changed since the check: put it back untouched
        os.replace(old, target)
        raise OutputError(f"output directory {shown} changed while olivine was writing and is no longer an "
                          f"olivine '{kind}' output", "choose a new or empty directory")
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
