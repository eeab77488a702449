"""Progress of long steps: a rich progress bar in a terminal, one line per step otherwise.

A leaf module (it imports no olivine room), so golden/, compiler/, hw/ and sim/ may all use it::

    with track("quantizing smollm2", total=211, unit="linear") as t:
        for name in names:
            ...
            t.advance(name)

    with step("loading smollm2"):   # one long step without a count
        ...

When stderr is a terminal a rich bar shows label, count and elapsed time; several trackers alive at
once (an accuracy run over presets, each quantizing layer by layer) share one live display. When
stderr is not a terminal (a log file, CI) each advance prints one line with the count and the elapsed
seconds. Nothing is shown for steps that finish within ``delay`` seconds (default 1 s, or
``OLIVINE_PROGRESS_DELAY``), so fast models stay quiet. ``OLIVINE_PROGRESS=0`` silences all
progress, ``OLIVINE_PROGRESS=lines`` forces lines even in a terminal.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TextIO, TypeVar

__all__ = ["Tracker", "track", "step", "iterate", "mode", "DEFAULT_DELAY"]

T = TypeVar("T")

#: Seconds a step may run before progress is shown (``OLIVINE_PROGRESS_DELAY`` overrides it).
DEFAULT_DELAY = 1.0

_live = None  # the shared rich Progress while any terminal tracker is visible
_live_users = 0


def mode(stream: TextIO | None = None) -> str:
    """``"off"``, ``"bar"`` (rich, terminal) or ``"lines"`` (one line per step)."""
    setting = os.environ.get("OLIVINE_PROGRESS", "").strip().lower()
    if setting in ("0", "off", "no", "false"):
        return "off"
    if setting == "lines":
        return "lines"
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _delay(delay: float | None) -> float:
    """The given delay, else ``OLIVINE_PROGRESS_DELAY``, else :data:`DEFAULT_DELAY`; an explicit
    infinite delay (progress disabled by the caller) stays infinite."""
    env = os.environ.get("OLIVINE_PROGRESS_DELAY")
    if delay is not None and (delay == float("inf") or env is None):
        return delay
    if env is not None:
        try:
            return max(0.0, float(env))
        except ValueError:
            pass
    return DEFAULT_DELAY if delay is None else delay


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {s % 60:02.0f} s"


class Tracker:
    """Progress of one long step of ``total`` parts (``None``: unknown count)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "step", *, delay: float | None = None,
                 min_interval: float = 0.0, stream: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.delay, self.min_interval = _delay(delay), min_interval
        self.stream = stream
        self.mode = mode(stream)
        self.done = 0
        self.detail = ""
        self.t0 = time.perf_counter()
        self._shown = False
        self._last_line = -1e9
        self._task = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"

    def _line(self, final: bool = False) -> None:
        head = f"{self.label}: "
        if final and self.total is None and self.done == 0:  # a step without parts
            text = f"{head}done in {_fmt_seconds(self.elapsed)}"
        elif final:
            text = f"{head}done, {self._count()} {self.unit}s in {_fmt_seconds(self.elapsed)}"
        else:
            text = f"{head}{self._count()} {self.unit}s" + (f" ({self.detail})" if self.detail else "") + \
                f", {_fmt_seconds(self.elapsed)}"
        print(text, file=self._out(), flush=True)
        self._last_line = time.perf_counter()

    def _start_bar(self) -> None:
        global _live, _live_users
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if _live is None:
            _live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                             console=Console(file=self._out()), transient=False)
            _live.start()
        _live_users += 1
        self._task = _live.add_task(self.label, total=self.total, completed=self.done, detail=self.detail)

    def _show(self) -> None:
        if self.mode == "off":
            return
        if not self._shown:
            if self.elapsed < self.delay:
                return
            self._shown = True
            if self.mode == "bar":
                self._start_bar()
                return
        if self.mode == "bar":
            _live.update(self._task, completed=self.done, detail=self.detail)
        elif time.perf_counter() - self._last_line >= self.min_interval or self.done == self.total:
            self._line()

    def advance(self, detail: str = "", n: int = 1) -> None:
        """``n`` more parts done; ``detail`` names the last one (a layer, a bucket, a preset)."""
        self.done += n
        self.detail = str(detail)
        self._show()

    def close(self) -> None:
        global _live, _live_users
        if self.mode == "lines" and not self._shown and self.elapsed >= self.delay:
            self._line(final=True)  # finished without an advance after the delay: still say how long it took
            return
        if self.mode == "off" or not self._shown:
            return
        if self.mode == "bar":
            _live.update(self._task, completed=self.done, detail=self.detail)
            _live_users -= 1
            if _live_users > 0:  # a nested step (one preset's quantization): make room for the next
                _live.remove_task(self._task)
            else:
                _live.stop()
                _live = None
        else:
            self._line(final=True)
        self._shown = False

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(label: str, total: int | None = None, unit: str = "step", **kwargs) -> Tracker:
    """A :class:`Tracker` (use it as a context manager)."""
    return Tracker(label, total, unit, **kwargs)


def iterate(items: Iterable[T], label: str, total: int | None = None, unit: str = "step",
            describe=str, **kwargs) -> Iterator[T]:
    """Yield ``items``, advancing a tracker after each (its detail: ``describe(item)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Tracker(label, total, unit, **kwargs) as t:
        for item in items:
            yield item
            t.advance(describe(item))


@contextmanager
def step(label: str, *, delay: float | None = None, stream: TextIO | None = None) -> Iterator[None]:
    """One long step without parts: a line when it starts (after ``delay``) is not possible without a
    thread, so it prints ``label ...`` up front when not in a terminal, and ``label: done in X s`` at the
    end if it took longer than ``delay``; in a terminal a rich spinner shows while it runs."""
    m = mode(stream)
    delay = _delay(delay)
    out = stream if stream is not None else sys.stderr
    t0 = time.perf_counter()
    if m == "off":
        yield
        return
    if m == "bar":
        from rich.console import Console

        with Console(file=out).status(label + " ..."):
            yield
    else:
        print(f"{label} ...", file=out, flush=True)
        yield
    dt = time.perf_counter() - t0
    if dt >= delay or m == "lines":
        print(f"{label}: done in {_fmt_seconds(dt)}", file=out, flush=True)
