"""A rebalance of a saved plan as one job with its stages reported: what ``territory
rebalance`` and the service's rebalance job both run (:func:`rebalance_plan`).

The least-churn model itself is :func:`territory.rebalance.rebalance`; this module only
builds what it needs (the unit graph, the locks, the budget) and reports each stage through
:mod:`territory.progress`, so the command's bars and the service's job row say the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import networkx as nx
import pandas as pd

from territory.graph import build_graph
from territory.plan import Plan
from territory.progress import GRAPH, REBALANCE, Progress, silent
from territory.rebalance import Budget, Result, rebalance


@dataclass
class Rebalanced:
    """The rebalance's result, with the budget as parsed and the graph it was solved on."""

    result: Result
    budget: Budget
    graph: nx.Graph
    #: the plan the budget was applied to (the given one, with the new locks)
    base: Plan
    #: with a headcount change: the units that change sub-grid, and the sub-grids made/gone
    moves: pd.DataFrame | None = None
    created: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def figures(self) -> dict:
        """What the command writes to ``rebalance.json`` and the service keeps with the
        new version."""
        r, b = self.result, self.budget
        return {"feasible": r.feasible, "budget": {b.measure: b.value},
                "moved": {b.measure: r.moved_budget, "units": r.moved_units},
                "worst_excess": r.worst_excess, "max_deviation": r.max_deviation,
                "smallest_budget": r.smallest_budget, "message": r.message,
                # infinite: proven that no plan with these grids meets the bands
                "lower_bound": r.lower_bound if math.isfinite(r.lower_bound) else None,
                # the same for plans whose grids are each one piece (higher or equal)
                "lower_bound_contiguous": (r.lower_bound_contiguous
                                           if math.isfinite(r.lower_bound_contiguous)
                                           else None),
                "sub_deviation": r.sub_deviation,
                "plan_id": r.plan.plan_id if r.plan else None, "parent": self.base.plan_id}


def rebalance_plan(plan: Plan, budget: str, *, tolerance: float | None = None,
                   depth: int | None = None, time_limit: float = 30.0,
                   lock: Iterable[str] = (), together: list[list] | None = None,
                   headcount: dict[str, int] | None = None, author: str = "",
                   message: str = "", progress: Progress | None = None) -> Rebalanced:
    """Build the unit graph, lock the units ``lock`` (kept locked in the result, whose
    parent is ``plan``), parse the budget (``MEASURE=VALUE[%]``) and rebalance, reporting
    each stage. ``together``: groups of unit ids that never part (key accounts);
    ``headcount``: branch -> more (fewer) team members, each a sub-grid split (merged)
    before the rebalance (:func:`territory.headcount.change_headcount`)."""
    from territory.edits import locked, set_lock

    progress = progress or silent
    progress(GRAPH, 0, None)
    graph = build_graph(plan.units)
    progress(GRAPH, graph.number_of_edges(), graph.number_of_edges())
    held = [u for u in dict.fromkeys(lock) if not locked(plan).get(u, False)]
    if held:  # held in the result, which stays a child of ``plan`` (no version between)
        with_locks = set_lock(plan, graph, unit_ids=held, author=author, message="")
        plan = replace(plan, units=with_locks.units)
    parsed = Budget.parse(budget, plan)
    progress(REBALANCE, 0, 1)
    if headcount:
        from territory.headcount import change_headcount

        hc = change_headcount(plan, graph, headcount, parsed, tolerance=tolerance,
                              time_limit=time_limit, together=together, author=author,
                              message=message)
        progress(REBALANCE, 1, 1)
        return Rebalanced(hc.result, parsed, graph, plan, hc.moves, tuple(hc.created),
                          tuple(hc.removed))
    res = rebalance(plan, graph, parsed, tolerance=tolerance, depth=depth,
                    time_limit=time_limit, together=together, author=author,
                    message=message)
    progress(REBALANCE, 1, 1)
    return Rebalanced(res, parsed, graph, plan)
