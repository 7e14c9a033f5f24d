"""A planner's edits to a plan, each one a new version or a refusal that says why.

Every edit returns a new :class:`~territory.plan.Plan` (``derive``: parent, author, message)
after checking the hard rules of a grid map on the result:

* one owner per unit at every level (no unit without a grid);
* nesting: a sub-grid lies in one main grid, a main grid in one branch;
* contiguity: every grid is one walkable piece (:func:`territory.graph.contiguous_grids`);
* balance: no grid leaves its band (±tolerance of its parent's mean), and a grid already
  outside its band gets no further out (an imported map may start unbalanced);
* locks: a locked unit never changes grid (``locked`` unit column).

A broken rule raises :class:`EditRefused`, whose message names the rule, the grids and
what would make the edit valid.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import shapely

from territory.errors import InvalidInputError
from territory.graph import contiguous_grids
from territory.hierarchy import part_graph
from territory.metrics import load_table, nesting_ok
from territory.optimize.partitioner import Partitioner
from territory.optimize.problem import problem_from_graph
from territory.optimize.search import repair_contiguity
from territory.plan import Plan
from territory.units import locate_points

DEFAULT_TOLERANCE = 0.05
LEVEL_OF = {"main_grid_id": "main_grid", "sub_grid_id": "sub_grid"}


class EditRefused(InvalidInputError):
    """The edit would break a hard rule; the message says which and what would work."""


def tolerances(plan: Plan) -> dict[str, float]:
    """The plan's balance tolerance per measure (``params["measures"]``)."""
    given = plan.params.get("measures") or {}
    given = given if isinstance(given, dict) else {}
    return {m: float(given.get(m) or DEFAULT_TOLERANCE) for m in plan.measures}


def locked(plan: Plan) -> pd.Series:
    """Whether each unit is locked (a plan without the column has none)."""
    if "locked" not in plan.units:
        return pd.Series(False, index=plan.units.index)
    return plan.units["locked"].fillna(False).astype(bool)


def violations(before: Plan, after: Plan, graph: nx.Graph) -> list[str]:
    """The hard rules ``after`` breaks that ``before`` kept (see module docstring)."""
    u = after.units
    out = []
    cols = ["branch_id", "main_grid_id", "sub_grid_id"]
    if u[cols].isna().any().any():
        out.append(f"units without a grid: {u.index[u[cols].isna().any(axis=1)][:5].tolist()}")
    if not nesting_ok(after):
        out.append("nesting: a sub-grid would span two main grids or a main grid two branches")
    was = locked(before)
    moved = (before.units[cols].astype(str) != u.reindex(before.units.index)[cols].astype(str)
             ).any(axis=1)
    if (moved & was).any():
        out.append(f"locked units would move: {u.index[moved & was][:5].tolist()}; unlock "
                   "them first")
    tol = tolerances(after)
    for level in ("main_grid", "sub_grid"):
        ok = contiguous_grids(graph, after.labels(level))
        broken = sorted(g for g, v in ok.items() if not v)
        ok_before = contiguous_grids(graph, before.labels(level))
        broken = [g for g in broken if ok_before.get(g, True)]
        if broken:
            out.append(f"contiguity: {level.replace('_', ' ')}s {broken[:5]} would fall into "
                       "pieces; move the cut-off units too, or a connected set")
        ta = load_table(after, level).set_index("grid_id")
        tb = load_table(before, level).set_index("grid_id")
        for m, t in tol.items():
            dev = ta[f"dev_{m}"].abs()
            prev = tb[f"dev_{m}"].abs().reindex(dev.index).fillna(0.0)
            bad = dev[(dev > t + 1e-9) & (dev > prev + 1e-9)]
            for g, d in bad.head(3).items():
                out.append(
                    f"balance: {level.replace('_', ' ')} {g} would hold {ta.at[g, m]:.6g} "
                    f"{m}, {d:.1%} from its parent's mean (tolerance ±{t:.0%}); move units "
                    f"of about {abs(ta.at[g, m] - ta.at[g, m] / (1 + ta.at[g, f'dev_{m}'])):.4g} "
                    f"{m} the other way, raise the tolerance, or run `territory rebalance`")
    return out


def commit(before: Plan, units: pd.DataFrame, graph: nx.Graph, *, author: str, message: str,
           **params) -> Plan:
    """The new version over ``units``, or :class:`EditRefused` with every broken rule."""
    after = before.derive(units, author=author, message=message, **params)
    problems = violations(before, after, graph)
    if problems:
        raise EditRefused(f"edit refused ({message or 'no message'}): " + "; ".join(problems))
    return after


def _check_units(plan: Plan, unit_ids) -> list:
    ids = list(dict.fromkeys(unit_ids))
    missing = [u for u in ids if u not in plan.units.index]
    if missing:
        raise InvalidInputError(f"unit ids {missing[:5]} are not in the plan")
    if not ids:
        raise InvalidInputError("no units to move: give unit ids or a polygon that holds some")
    return ids


def _grid_level(plan: Plan, grid_id: str) -> str:
    for col in ("sub_grid_id", "main_grid_id"):
        if (plan.units[col] == grid_id).any():
            return col
    raise InvalidInputError(f"grid {grid_id!r} is not in the plan; choose a main grid or "
                            "sub-grid id of it")


def move_units(plan: Plan, graph: nx.Graph, unit_ids, to_grid: str, *, author: str = "",
               message: str = "") -> Plan:
    """Move units to a sub-grid, or to a main grid (joining the sub-grid of it they share
    most boundary with)."""
    ids = _check_units(plan, unit_ids)
    col = _grid_level(plan, to_grid)
    units = plan.units.copy()
    if col == "sub_grid_id":
        sub = to_grid
        main = units.loc[units["sub_grid_id"] == sub, "main_grid_id"].iloc[0]
    else:
        main = to_grid
        sub = _adjacent_sub(units, graph, ids, main)
    branch = units.loc[units["main_grid_id"] == main, "branch_id"].iloc[0]
    other = [u for u in ids if units.at[u, "branch_id"] != branch]
    if other:
        raise EditRefused(f"units {other[:5]} lie in another branch than {to_grid} "
                          f"({branch}); a grid never crosses a branch line: move them to a "
                          "grid of their own branch")
    units.loc[ids, ["main_grid_id", "sub_grid_id"]] = [main, sub]
    return commit(plan, units, graph, author=author, message=message or
                  f"move {len(ids)} units to {to_grid}")


def _adjacent_sub(units: pd.DataFrame, graph: nx.Graph, ids: list, main: str) -> str:
    """The sub-grid of ``main`` sharing most boundary with the moved units."""
    moving = set(ids)
    length: dict = {}
    for u in ids:
        for v, d in graph.adj[u].items():
            if v not in moving and units.at[v, "main_grid_id"] == main:
                s = units.at[v, "sub_grid_id"]
                length[s] = length.get(s, 0.0) + float(d.get("length_m", 1.0))
    if not length:
        raise EditRefused(f"the units do not touch main grid {main}; a grid must stay one "
                          "piece: move units adjacent to it (or a connected set reaching it)")
    return max(sorted(length), key=length.get)


def units_in_polygon(plan: Plan, polygon: shapely.Geometry) -> list:
    """Units whose representative point lies in a drawn polygon (WGS84)."""
    pts = plan.units.geometry.representative_point().values
    return plan.units.index[shapely.contains(polygon, pts)].tolist()


def units_of_points(plan: Plan, points: pd.DataFrame, ids, *, id_column: str) -> list:
    """The units holding the given communities or key accounts (WGS84 ``lng``/``lat``)."""
    if id_column not in points.columns:
        raise InvalidInputError(f"no column {id_column!r} in the points table")
    rows = points[points[id_column].astype(str).isin([str(i) for i in ids])]
    missing = sorted(set(map(str, ids)) - set(rows[id_column].astype(str)))
    if missing:
        raise InvalidInputError(f"{id_column} {missing[:5]} not found in the points table")
    pos = locate_points(plan.units, rows["lng"].to_numpy(float), rows["lat"].to_numpy(float))
    if (pos < 0).any():
        raise InvalidInputError(f"{id_column} {rows[id_column][pos < 0].tolist()[:5]} lie "
                                "outside the plan's units")
    return list(dict.fromkeys(plan.units.index[pos]))


def set_lock(plan: Plan, graph: nx.Graph, *, unit_ids=(), grids=(), lock: bool = True,
             author: str = "", message: str = "") -> Plan:
    """Lock (or unlock) units and every unit of whole grids."""
    units = plan.units.copy()
    units["locked"] = locked(plan)
    ids = list(unit_ids)
    for g in grids:
        ids += units.index[units[_grid_level(plan, g)] == g].tolist()
    ids = _check_units(plan, ids)
    units.loc[ids, "locked"] = lock
    return commit(plan, units, graph, author=author,
                  message=message or f"{'lock' if lock else 'unlock'} {len(ids)} units")


def merge_grids(plan: Plan, graph: nx.Graph, keep: str, absorb: str, *, author: str = "",
                message: str = "") -> Plan:
    """Merge grid ``absorb`` into its neighbour ``keep`` (same level and parent)."""
    col = _grid_level(plan, keep)
    if _grid_level(plan, absorb) != col:
        raise EditRefused(f"{keep} and {absorb} are not of one level; merge two main grids "
                          "or two sub-grids")
    units = plan.units.copy()
    parent = "branch_id" if col == "main_grid_id" else "main_grid_id"
    pk = units.loc[units[col] == keep, parent].iloc[0]
    pa = units.loc[units[col] == absorb, parent].iloc[0]
    if pk != pa:
        raise EditRefused(f"{keep} lies in {pk}, {absorb} in {pa}: only grids of one parent "
                          "merge")
    rows = units[col] == absorb
    if col == "main_grid_id":  # the absorbed sub-grids are numbered after keep's own
        n = units.loc[units[col] == keep, "sub_grid_id"].nunique()
        old = sorted(units.loc[rows, "sub_grid_id"].unique())
        units.loc[rows, "sub_grid_id"] = units.loc[rows, "sub_grid_id"].map(
            {s: f"{keep}-S{n + 1 + j}" for j, s in enumerate(old)})
    units.loc[rows, col] = keep
    return commit(plan, units, graph, author=author,
                  message=message or f"merge {absorb} into {keep}")


def split_grid(plan: Plan, graph: nx.Graph, grid_id: str, *, parts: int = 2,
               new_ids: list[str] | None = None, time_limit: float = 10.0,
               author: str = "", message: str = "") -> Plan:
    """Split a grid into ``parts`` balanced, contiguous grids (the partitioner's job)."""
    col = _grid_level(plan, grid_id)
    units = plan.units.copy()
    nodes = units.index[units[col] == grid_id]
    if len(nodes) < parts:
        raise EditRefused(f"{grid_id} has {len(nodes)} units: it cannot be split in {parts}")
    tol = tolerances(plan)
    p = Partitioner(parts, measures=tol, time_limit=time_limit,
                    locked=None).solve(part_graph(graph, nodes))
    ids = new_ids or [grid_id] + [f"{grid_id}-{chr(ord('a') + j)}" for j in range(1, parts)]
    if len(ids) != parts or any((units[col] == g).any() for g in ids[1:]):
        raise InvalidInputError(f"new grid ids {ids}: give {parts} ids not used in the plan")
    lab = p.labels_.reindex(nodes).to_numpy()
    units.loc[nodes, col] = np.asarray(ids, dtype=object)[lab]
    if col == "main_grid_id":
        units.loc[nodes, "sub_grid_id"] = units.loc[nodes, col] + "-S1"
    return commit(plan, units, graph, author=author,
                  message=message or f"split {grid_id} into {ids}")


def add_grid(plan: Plan, graph: nx.Graph, branch: str, *, time_limit: float = 10.0,
             author: str = "", message: str = "") -> Plan:
    """One more main grid in ``branch`` (a new staff member): its heaviest main grid, on the
    first measure, is split in two."""
    units = plan.units[plan.units["branch_id"].astype(str) == str(branch)]
    if units.empty:
        raise InvalidInputError(f"branch {branch!r} is not in the plan; choose one of "
                                f"{sorted(plan.units['branch_id'].astype(str).unique())}")
    heaviest = units.groupby("main_grid_id")[plan.measures[0]].sum().idxmax()
    return split_grid(plan, graph, heaviest, time_limit=time_limit, author=author,
                      message=message or f"add a main grid in {branch} (split {heaviest})")


def remove_grid(plan: Plan, graph: nx.Graph, grid_id: str, *, author: str = "",
                message: str = "") -> Plan:
    """Hand a grid's units to its neighbours of the same parent: each joins, wave by wave,
    the lightest adjacent grid (the repair rule of the optimizer)."""
    col = _grid_level(plan, grid_id)
    parent = "branch_id" if col == "main_grid_id" else "main_grid_id"
    units = plan.units.copy()
    home = units.loc[units[col] == grid_id, parent].iloc[0]
    nodes = units.index[units[parent] == home]
    names = sorted(set(units.loc[nodes, col]) - {grid_id})
    if not names:
        raise EditRefused(f"{grid_id} is the only grid of {home}: a parent keeps one grid")
    P = problem_from_graph(part_graph(graph, nodes), plan.measures, allow_zero=True)
    code = {g: j for j, g in enumerate(names)}
    arr = units.loc[P.ids, col].map(code).fillna(-1).to_numpy(dtype=np.int64)
    arr = repair_contiguity(P, arr, len(names))
    units.loc[P.ids, col] = np.asarray(names, dtype=object)[arr]
    if col == "main_grid_id":  # each handed-over piece joins its new grid's nearest beat
        gone = (plan.units["main_grid_id"] == grid_id).to_numpy()
        for main, ids in units[gone].groupby("main_grid_id").groups.items():
            units.loc[ids, "sub_grid_id"] = _adjacent_sub(units, graph, list(ids), main)
    return commit(plan, units, graph, author=author, message=message or f"remove {grid_id}")


def set_tolerance(plan: Plan, graph: nx.Graph, measure: str, tolerance: float, *,
                  author: str = "", message: str = "") -> Plan:
    """Change a measure's tolerance; refused when the plan does not meet the new one."""
    if measure not in plan.measures:
        raise InvalidInputError(f"measure {measure!r} is not balanced by this plan; choose "
                                f"one of {plan.measures}")
    if not 0 < tolerance < 1:
        raise InvalidInputError(f"tolerance {tolerance}: give a fraction, e.g. 0.05 (±5 %)")
    tol = {**tolerances(plan), measure: float(tolerance)}
    after = plan.derive(plan.units, author=author, measures=tol,
                        message=message or f"tolerance of {measure} → ±{tolerance:.0%}")
    worst = max(load_table(after, lv)[f"dev_{measure}"].abs().max()
                for lv in ("main_grid", "sub_grid"))
    if worst > tolerance + 1e-9:
        raise EditRefused(f"the plan is {worst:.1%} from the mean on {measure}, outside "
                          f"±{tolerance:.0%}; run `territory rebalance --tolerance "
                          f"{tolerance}` first, or choose a tolerance of at least "
                          f"{np.ceil(worst * 1000) / 1000:.1%}")
    return after


def load_points(plan: Plan, table: str, points: pd.DataFrame, *, author: str = "",
                message: str = "") -> tuple[Plan, dict]:
    """New point data (``customers``, ``communities``, ...) summed onto the same units, as
    ``territory plan`` sums them (:data:`territory.pipeline.SUMS`); grids are unchanged.
    Returns the new version and the aggregation report (rows inside, outside, invalid).

    Not refused when balance suffers: new customers are a fact, not a choice; the answer
    to them is ``territory rebalance``.
    """
    from territory.pipeline import COUNTS, SUMS
    from territory.units import aggregate_points

    if table not in COUNTS:
        raise InvalidInputError(f"table {table!r}: choose one of {list(COUNTS)}")
    sums = {col: out for (t, col), out in SUMS.items() if t == table and col in points}
    agg, rep = aggregate_points(plan.units, points, sums=list(sums), count_name=COUNTS[table])
    units = plan.units.copy()
    agg = agg.rename(columns=sums)
    units[list(agg.columns)] = agg
    new = plan.derive(units, author=author, message=message or f"new {table} loaded")
    return new, {"rows": rep.n_rows, "inside": rep.n_inside, "outside": rep.n_outside,
                 "invalid": rep.n_invalid}
