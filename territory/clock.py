"""How long the running command has taken: its time limit is a promise for the whole command.

``territory partition --time-limit 60`` must end within 60 s of wall time from the moment
the process started, imports (about 3 s of numba, pandas and geopandas) and reading the
graph included. The command therefore gives its search only what is left of the limit,
less a reserve for writing the result and leaving the interpreter.
"""

from __future__ import annotations

import os
import time

#: Seconds kept back from a command's time limit for writing its result and exiting: a
#: fixed part (the table, the CSV, the interpreter's exit: about 0.4 CPU s), times the
#: machine's slowdown (below), and a share of the limit (what the search needs after its
#: deadline to assemble the best plan it kept).
RESERVE_S = 0.7
RESERVE_SHARE = 0.02
#: On a machine shared with other work, a CPU second takes several seconds of wall: the
#: slowdown is the process's wall over CPU time so far (start-up is single-threaded),
#: 1 on an idle machine, at most this.
MAX_SLOWDOWN = 8.0


def process_age() -> float:
    """Seconds since this process started, interpreter start-up included.

    Linux gives the start in ``/proc/self/stat`` (clock ticks since boot, the clock of
    ``CLOCK_BOOTTIME``); elsewhere this is 0, i.e. the time counts from the call.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def process_started() -> float:
    """The :func:`time.monotonic` time at which this process started."""
    return time.monotonic() - process_age()


def time_left(time_limit: float, started: float) -> float:
    """Seconds a search may take so that a command started at ``started`` (monotonic) with
    ``time_limit`` ends within it, after the reserve (:data:`RESERVE_S` times the slowdown,
    plus :data:`RESERVE_SHARE` of the limit); may be 0 or less when the limit is spent."""
    spent = time.monotonic() - started
    slowdown = min(max(spent / max(time.process_time(), 1e-3), 1.0), MAX_SLOWDOWN)
    return time_limit - spent - RESERVE_S * slowdown - RESERVE_SHARE * time_limit
