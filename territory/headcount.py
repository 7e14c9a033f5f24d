"""A headcount change: a branch gains or loses team members, so its sub-grids follow.

Each sub-grid is one team member's beat, so N more people in a branch is N more sub-grids
(N fewer: N fewer). :func:`change_headcount` splits or merges the fewest sub-grids — one
per person — where the load per person is highest (a new person) or lowest (one fewer):

* ``+1``: in the branch's main grid with the most load per sub-grid, its heaviest sub-grid
  is split in two contiguous halves (the partitioner's job); the new half is the new
  person's beat;
* ``-1``: in the main grid with the least load per sub-grid (of those with two or more),
  its lightest sub-grid is merged into its lightest neighbouring sub-grid;

then :func:`~territory.rebalance.rebalance` brings the sub-grids of those main grids within
tolerance moving at most the budget (main grids do not change: their balance does not
depend on the headcount). Who moves is the split or merge plus the rebalance, reported
together against the plan in force.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd

from territory.edits import tolerances
from territory.errors import InvalidInputError
from territory.hierarchy import part_graph
from territory.optimize.partitioner import Partitioner
from territory.plan import Plan
from territory.rebalance import Budget, Result, rebalance

_CHANGE = re.compile(r"^\s*(?P<branch>[^=]+?)\s*=\s*(?P<n>[+-]?\d+)\s*$")


def parse_headcount(texts: list[str]) -> dict[str, int]:
    """``["350203=+2", "350205=-1"]`` -> ``{"350203": 2, "350205": -1}``."""
    out: dict[str, int] = {}
    for text in texts:
        m = _CHANGE.match(text)
        if m is None:
            raise InvalidInputError(f"--headcount {text!r}: write BRANCH=+N or BRANCH=-N, e.g. "
                                    "350203=+2 (two more team members in branch 350203)")
        out[m["branch"]] = out.get(m["branch"], 0) + int(m["n"])
    return out


@dataclass
class HeadcountResult:
    """The rebalance after the change, and who moved against the plan in force."""

    result: Result
    #: per unit whose sub-grid changed: its old and new sub-grid
    moves: pd.DataFrame
    #: the sub-grids created (split) and removed (merged)
    created: list[str]
    removed: list[str]


def change_headcount(plan: Plan, graph: nx.Graph, changes: dict[str, int], budget: Budget,
                     *, tolerance: float | dict[str, float] | None = None,
                     time_limit: float = 30.0, together: list[list] | None = None,
                     author: str = "", message: str = "") -> HeadcountResult:
    """Give each branch ``changes[branch]`` more (or fewer) sub-grids, then rebalance the
    sub-grids of the main grids that changed within ``budget`` (see the module docstring)."""
    units = plan.units.copy()
    branches = set(units["branch_id"].astype(str))
    for b in changes:
        if b not in branches:
            raise InvalidInputError(f"`headcount`: branch {b!r} is not in the plan; choose one "
                                    f"of {sorted(branches)}")
    tol = tolerances(plan)
    lead = list(tol)
    created: list[str] = []
    removed: list[str] = []
    for b, n in changes.items():
        for _ in range(abs(n)):
            mine = units[units["branch_id"].astype(str) == b]
            per = _load_per_person(mine, lead)
            if n > 0:  # the main grid with most load per person that can take one more
                done = _first(lambda g, mine=mine: _split_heaviest(
                    units, graph, mine, g, lead, tol, together), per.sort_values(
                        ascending=False, kind="stable").index)
            else:  # the one with least load per person that can give one up
                many = mine.groupby("main_grid_id")["sub_grid_id"].nunique()
                done = _first(lambda g, mine=mine: _merge_lightest(units, graph, mine, g, lead),
                              per[many.reindex(per.index) > 1].sort_values(kind="stable").index)
            if done is None:
                raise InvalidInputError(
                    f"`headcount` {b}={n:+d}: no main grid of {b} can "
                    + ("take one more sub-grid (each is one unit, or its locked units would be "
                       "parted)" if n > 0 else "give up a sub-grid (one sub-grid left, or "
                       "every other holds locked units)")
                    + "; unlock some units, use finer units, or change another branch")
            (created if n > 0 else removed).append(done)
    touched = set(plan.units.loc[units["sub_grid_id"] != plan.units["sub_grid_id"],
                                 "main_grid_id"])
    changed = plan.derive(units, author=author, message="headcount " + ", ".join(
        f"{b}={n:+d}" for b, n in changes.items()))
    res = rebalance(changed, graph, budget, tolerance=tolerance, time_limit=time_limit,
                    together=together, sub_grids_of=touched, author=author,
                    message=message or changed.message)
    new = res.plan.units
    moved = new.index[new["sub_grid_id"] != plan.units["sub_grid_id"]]
    moves = pd.DataFrame({"unit_id": moved,
                          "from_sub_grid_id": plan.units.loc[moved, "sub_grid_id"].to_numpy(),
                          "to_sub_grid_id": new.loc[moved, "sub_grid_id"].to_numpy(),
                          **{m: plan.units.loc[moved, m].to_numpy() for m in dict.fromkeys(
                              ["customers", "households", *plan.measures]) if m in plan.units}})
    return HeadcountResult(res, moves, created, removed)


def _first(attempt, grids) -> str | None:
    """The first of ``attempt(grid)`` over ``grids`` that is not None."""
    for g in grids:
        out = attempt(g)
        if out is not None:
            return out
    return None


def _locked(units: pd.DataFrame) -> np.ndarray:
    """Whether each unit is locked (:func:`territory.edits.locked` on a unit table)."""
    if "locked" not in units:
        return np.zeros(len(units), dtype=bool)
    return units["locked"].fillna(False).astype(bool).to_numpy()


def _load_per_person(units: pd.DataFrame, measures: list[str]) -> pd.Series:
    """Per main grid, its load per sub-grid, in shares of the branch's mean (worst measure)."""
    g = units.groupby("main_grid_id")
    per = g[measures].sum().div(g["sub_grid_id"].nunique(), axis=0)
    return (per / per.mean().replace(0, 1)).max(axis=1)


def _split_heaviest(units: pd.DataFrame, graph: nx.Graph, mine: pd.DataFrame, main: str,
                    measures: list[str], tol: dict[str, float],
                    together: list[list] | None) -> str | None:
    """Split ``main``'s heaviest sub-grid that can be split in two (in place): locked units
    keep their sub-grid (all in the old half) and key-account groups stay whole. Return the
    new sub-grid's id, or None when no sub-grid of ``main`` can be split."""
    inside = mine[mine["main_grid_id"] == main]
    loads = inside.groupby("sub_grid_id")[measures].sum()
    taken = set(units["sub_grid_id"].astype(str))
    new = next(f"{main}-S{j}" for j in range(2, len(taken) + 3) if f"{main}-S{j}" not in taken)
    for heavy in (loads / loads.mean().replace(0, 1)).max(axis=1).sort_values(
            ascending=False, kind="stable").index:
        nodes = inside.index[inside["sub_grid_id"] == heavy]
        if len(nodes) < 2:
            continue
        held = _locked(units.loc[nodes])
        inner = [[u for u in g if u in set(nodes)] for g in together or []]
        p = Partitioner(2, measures={m: max(t, 0.3) for m, t in tol.items()}, time_limit=1.0,
                        objective="boundary", max_epochs=2,
                        locked={u: 0 for u in nodes[held]} or None,
                        together=[g for g in inner if len(g) > 1] or None,
                        ).solve(part_graph(graph, nodes))
        lab = p.labels_.reindex(nodes).to_numpy()
        halves = set(lab[held].tolist())
        if len(halves) > 1:
            continue  # its locked units would be parted: try the next heaviest
        # the half holding less of the old beat's load becomes the new person's; with
        # locks, the half without them
        half = 1 - halves.pop() if halves else int(np.argmin(
            [inside.loc[nodes[lab == j], measures[0]].sum() for j in (0, 1)]))
        units.loc[nodes[lab == half], "sub_grid_id"] = new
        return new
    return None


def _merge_lightest(units: pd.DataFrame, graph: nx.Graph, mine: pd.DataFrame, main: str,
                    measures: list[str]) -> str | None:
    """Merge ``main``'s lightest sub-grid without locked units into its lightest
    neighbour (in place); return the removed sub-grid's id (None: every one holds locks)."""
    inside = mine[mine["main_grid_id"] == main]
    loads = inside.groupby("sub_grid_id")[measures].sum()
    share = (loads / loads.mean().replace(0, 1)).max(axis=1)
    held = set(inside.loc[_locked(inside), "sub_grid_id"])
    free = share.drop(list(held))
    if free.empty:
        return None
    light = free.idxmin()
    ids = inside.index[inside["sub_grid_id"] == light]
    nbrs = {inside.at[v, "sub_grid_id"] for u in ids for v in graph.adj[u]
            if v in inside.index and inside.at[v, "sub_grid_id"] != light}
    into = min(sorted(nbrs), key=share.__getitem__)
    units.loc[ids, "sub_grid_id"] = into
    return light
