"""One HiGHS policy for the whole process: threads, verbosity and status checks.

HiGHS keeps one global task scheduler per process, started by the first model that runs
with the thread count that model asked for; a later model asking for another count is
refused ("the scheduler has already been initialized"), and its status stays "Not Set".
Every HiGHS model in territory is therefore created here, with the same :data:`THREADS`.
One thread, because parallelism lives one level up (the hierarchy solves branches and main
grids in worker processes, and the exact MIP runs in a forked child): a forked child of a
process whose scheduler runs worker threads would inherit a scheduler without its threads.

Verbosity follows the project's contract: solver output only when
``logging.getLogger("territory.optimize")`` is enabled for DEBUG (the CLI's ``--verbose``).
HiGHS prints its banner when the first model of a process is constructed, before any option
can be set, so that construction runs with the standard streams pointed at ``/dev/null``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator

import highspy
import numpy as np
import pulp

from territory.errors import SolverError

#: Threads of every HiGHS model in the process (see the module docstring).
THREADS = 1

#: Model statuses after which a solve produced nothing usable and says so.
_FAILED = {"Not Set", "Load error", "Model error", "Presolve error", "Solve error",
           "Postsolve error", "Memory limit reached"}

_log = logging.getLogger("territory.optimize")
_lock = threading.Lock()
_banner_done = False


def verbose() -> bool:
    """Whether solver logs are wanted (the shared verbosity contract)."""
    return _log.isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def _silenced_fds() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null (C code writes there, not to sys.stdout)."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    libc = ctypes.CDLL(None)
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        libc.fflush(None)  # C stdio buffers would otherwise reach the restored streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _construct() -> highspy.Highs:
    global _banner_done
    with _lock:
        if not _banner_done and not verbose():
            with _silenced_fds():
                h = highspy.Highs()
        else:
            h = highspy.Highs()
        _banner_done = True
    return h


def new_highs() -> highspy.Highs:
    """A HiGHS model with the process's thread policy and verbosity applied."""
    h = _construct()
    loud = verbose()
    h.setOptionValue("output_flag", loud)
    h.setOptionValue("log_to_console", loud)
    h.setOptionValue("threads", THREADS)
    return h


class _WarmHiGHS(pulp.HiGHS):
    """PuLP's HiGHS with a (partial) starting solution handed to HiGHS before it runs:
    HiGHS completes it and starts its branch and bound from that incumbent."""

    def __init__(self, start: dict[pulp.LpVariable, float] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.start = start or {}

    def callSolver(self, lp) -> None:  # noqa: N802 (PuLP's name)
        if self.start:
            idx = np.array([v.index for v in self.start], dtype=np.int32)
            val = np.array(list(self.start.values()), dtype=float)
            lp.solverModel.setSolution(len(idx), idx, val)
        super().callSolver(lp)


def pulp_solver(time_limit: float,
                start: dict[pulp.LpVariable, float] | None = None) -> pulp.HiGHS:
    """PuLP's HiGHS interface under the same policy (its models are built by PuLP);
    ``start`` warm-starts the MIP from known variable values."""
    _construct().clear()  # the banner, if any, is spent here while the streams are muted
    return _WarmHiGHS(start, msg=verbose(), timeLimit=time_limit, threads=THREADS)


def checked_status(h: highspy.Highs, what: str) -> str:
    """The model status as text; raise :class:`SolverError` when the solve did not run.

    A status such as "Not Set" means HiGHS refused or failed the solve (an option clash, a
    model error): passing it on silently would make an exact run prove nothing.
    """
    status = h.modelStatusToString(h.getModelStatus())
    if status in _FAILED:
        raise SolverError(
            f"{what}: HiGHS ended with model status {status!r}; run with verbose logging "
            "(the territory.optimize logger at DEBUG) to see the solver's own messages"
        )
    return status
