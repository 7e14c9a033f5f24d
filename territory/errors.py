"""Exception hierarchy.

Every error the library raises derives from :class:`TerritoryError`; each subclass also
inherits the builtin it refines, so callers can catch ``ValueError`` as usual. Messages name
the offending field (column, parameter, row) and say how to fix it.
"""

from __future__ import annotations


class TerritoryError(Exception):
    """Root of all territory errors."""


class InvalidInputError(TerritoryError, ValueError):
    """Input data or parameters are invalid; the message names the field and the fix."""


class InfeasibleError(TerritoryError, ValueError):
    """Balance targets cannot be met; says which measure, which grid and what would work."""


class NotSolvedError(TerritoryError, AttributeError):
    """A result attribute was read before ``solve()`` was called."""


class SolverError(TerritoryError, RuntimeError):
    """The LP/MIP solver failed to run (not: found no plan); the message says where."""
