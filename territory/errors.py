"""Exception hierarchy.

Every error the library raises derives from :class:`TerritoryError`; each subclass also
inherits the builtin it refines, so callers can catch ``ValueError`` as usual. Messages name
the offending field (column, parameter, row) and say how to fix it.

A message names a parameter of the library in backticks (```encoding```, ```repair```) and
never a front end's spelling of it: the CLI says it as its flag (``--encoding``), the
service as its request field, each translating the names it knows.
"""

from __future__ import annotations


class TerritoryError(Exception):
    """Root of all territory errors."""


class InvalidInputError(TerritoryError, ValueError):
    """Input data or parameters are invalid; the message names the field and the fix."""


class InfeasibleError(TerritoryError, ValueError):
    """Balance targets cannot be met; says which measure, which grid and what would work.

    ``shortfalls``: when the pre-check proved it from the unit loads, the
    :class:`territory.hierarchy.LevelShortfall` of each level and branch (else empty)."""

    shortfalls: list = []


class NotSolvedError(TerritoryError, AttributeError):
    """A result attribute was read before ``solve()`` was called."""


class PartialPlanError(InfeasibleError):
    """Some grids of a plan could not meet their targets; nothing else was given up.

    ``plan`` is the whole plan, every unit placed, with the units of the failing grids marked
    in a ``flag`` column; ``failures`` lists them (level, grid, requested count, reason). A
    caller can save the plan for inspection and report the failures together.
    """

    def __init__(self, message: str, plan, failures: list[dict]) -> None:
        super().__init__(message)
        self.plan = plan
        self.failures = failures


class SolverError(TerritoryError, RuntimeError):
    """The LP/MIP solver failed to run (not: found no plan); the message says where."""
