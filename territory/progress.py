"""Progress of long work, reported as ``progress(stage, done, total)``.

The library reports and never renders: the CLI draws rich bars on a terminal and timestamped
lines elsewhere (:mod:`territory.cli_output`), the service writes the job's row. Every stage
is reported when it starts (``done=0``) and after each step; it has ended when ``done``
reaches ``total``. ``total`` is None while the number of steps is not known yet.
"""

from __future__ import annotations

from typing import Protocol

UNITS = "units built"
GRAPH = "adjacency graph edges"
BRANCHES = "branches → main grids"
MAIN_GRIDS = "main grids → sub-grids"
METRICS = "plan metrics"


class Progress(Protocol):
    """Receives ``done`` steps of ``stage`` out of ``total`` (None: not known yet)."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


def silent(stage: str, done: int, total: int | None) -> None:
    """The progress of a caller that wants none."""
POINTS = "new points loaded onto the units"
REBALANCE = "rebalance within the budget"
SWEEP = "budgets swept"
SNAP = "drawn grids snapped onto the units"
DIAGNOSIS = "drawn map audited"
