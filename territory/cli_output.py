"""What the ``territory`` command writes besides its results: progress and log lines.

Progress (:class:`territory.progress.Progress`) is drawn as rich bars when stderr is a
terminal, as plain timestamped lines on stderr otherwise (a file, a pipe, cron, CI), so a
long run never looks like a hang, and not at all with ``--quiet``. Log records go to stderr
as one concise line each (WARNING and up; ERROR with ``--quiet``; everything of the
``territory`` logger with ``--verbose``, which per the project's contract also lets the
solvers print their own logs).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichBars

from territory.progress import Progress, silent

HEARTBEAT_S = 10.0
"""Longest silence of the plain renderer while a stage runs."""

_quiet = False
_command = "territory"


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (test runners swap it)."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class _Concise(logging.Formatter):
    """``warning: message`` on one line: the traceback only with ``--verbose``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


_handler = _StderrHandler()


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.warn`` of the library and its dependencies, as one log line."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


def configure(*, verbose: bool = False, quiet: bool = False,
              command: str = "territory") -> None:
    """Set the verbosity of a run of ``command`` (from the global ``--verbose``/``--quiet``)."""
    global _quiet, _command
    _quiet, _command = quiet, command
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)
    _handler.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s",
                                            datefmt="%Y-%m-%dT%H:%M:%S")
                          if verbose else _Concise())
    warnings.showwarning = _show_warning
    logging.getLogger("territory").setLevel(logging.DEBUG if verbose else logging.NOTSET)


def _elapsed(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class PlainProgress:
    """Timestamped lines for a stream that is not a terminal.

    One line when a stage starts, one when it ends, and while it runs at most one line per
    ``interval`` seconds: from a step, or from :meth:`tick` when no step came (the
    heartbeat thread of :meth:`running` calls it), so a stage that is busy for minutes
    still shows it is alive. ``clock`` and ``now`` are injectable for tests.
    """

    def __init__(self, command: str, stream: TextIO, *, interval: float = HEARTBEAT_S,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = datetime.now) -> None:
        self.command, self.stream, self.interval = command, stream, interval
        self.clock, self.now = clock, now
        self._lock = threading.Lock()
        self._stage: str | None = None
        self._done, self._total = 0, None
        self._started = self._last = 0.0
        self._running = False

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        with self._lock:
            t = self.clock()
            if stage != self._stage:
                self._stage, self._started, self._running = stage, t, True
                self._done, self._total = done, total
                self._write("started" if not total else f"{done}/{total} started", t)
                if total is None or done < total:
                    return
            self._done, self._total = done, total
            if total is not None and done >= total:
                if self._running:
                    self._running = False
                    self._write(f"{done}/{total} done ({_elapsed(t - self._started)})", t)
            elif t - self._last >= self.interval:
                self._write(self._count(t), t)

    def next_beat(self) -> float:
        """Seconds until the running stage is due a heartbeat line (``interval`` if none)."""
        with self._lock:
            if not self._running:
                return self.interval
            return max(self._last + self.interval - self.clock(), 0.01)

    def tick(self) -> None:
        """The heartbeat: a line if the running stage has been silent ``interval`` s."""
        with self._lock:
            t = self.clock()
            if self._running and t - self._last >= self.interval:
                self._write(self._count(t), t)

    def _count(self, t: float) -> str:
        total = "?" if self._total is None else self._total
        return f"{self._done}/{total} ({_elapsed(t - self._started)})"

    def _write(self, text: str, t: float) -> None:
        stamp = self.now().isoformat(timespec="seconds")
        self.stream.write(f"{stamp} [{self.command}] {self._stage} {text}\n")
        self.stream.flush()
        self._last = t

    @contextmanager
    def running(self) -> Iterator[PlainProgress]:
        """Run the heartbeat in a daemon thread for the duration of the block."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.next_beat()):
                self.tick()

        thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


class RichProgress:
    """Rich bars on a terminal: one per stage, its clock running from the stage's start."""

    def __init__(self, bars: RichBars) -> None:
        self.bars = bars
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            for task in self.bars.tasks:  # stages run in order: a new one ends the others
                if not task.finished:
                    self.bars.update(task.id, total=task.completed)
                    self.bars.stop_task(task.id)
            self.tasks[stage] = self.bars.add_task(stage, total=total)
        self.bars.update(self.tasks[stage], completed=done, total=total)
        if total is not None and done >= total:
            self.bars.stop_task(self.tasks[stage])


@contextmanager
def progress(console: Console) -> Iterator[Progress]:
    """The progress display for this command's work, drawn on ``console`` (stderr)."""
    if _quiet:
        yield silent
        return
    if console.is_terminal:
        with RichBars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bars:
            yield RichProgress(bars)
        return
    with PlainProgress(_command, console.file).running() as plain:
        yield plain


@contextmanager
def stage(console: Console, description: str) -> Iterator[None]:
    """A stage of one step (what a spinner used to show): its start and end are reported."""
    with progress(console) as show:
        show(description, 0, 1)
        yield
        show(description, 1, 1)
