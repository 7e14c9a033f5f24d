"""The hierarchy: branches → main grids → sub-grids, nested by construction.

Branches follow a layer of areas (districts by default). The number of main grids is
apportioned to branches by weight (largest remainder, at least one each) or given per
branch; each branch is partitioned into main grids, then each main grid into sub-grids.
Branches are independent problems, and so are main grids: they are solved in parallel
worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd

from territory.errors import InfeasibleError, InvalidInputError
from territory.graph import induced_subgraph, join_components
from territory.optimize import Partitioner
from territory.optimize.balance import Shortfall, precheck
from territory.plan import Plan

log = logging.getLogger(__name__)


def apportion(weights: pd.Series, total: int, minimum: int = 1) -> pd.Series:
    """Split ``total`` seats among ``weights`` by largest remainder, ``minimum`` each."""
    n = len(weights)
    if total < minimum * n:
        raise InvalidInputError(
            f"{total} grids cannot give each of {n} branches at least {minimum}; "
            f"use at least {minimum * n}"
        )
    w = weights.clip(lower=0).astype(float)
    w = w / w.sum() if w.sum() > 0 else pd.Series(1.0 / n, index=weights.index)
    free = total - minimum * n
    quota = w * free
    seats = np.floor(quota).astype(int)
    rest = free - int(seats.sum())
    order = (quota - seats).sort_values(ascending=False, kind="stable").index[:rest]
    seats[order] += 1
    return seats + minimum


@dataclass
class HierarchySpec:
    """How to build the hierarchy. Sizes are in the first balance measure's units."""

    measures: dict[str, float]
    n_main: int | dict | None = None
    main_size: float | None = None
    n_sub: int | None = 4
    sub_size: float | None = None
    objective: str = "distance"
    time_limit_main: float = 60.0
    time_limit_sub: float = 20.0
    locked: dict = field(default_factory=dict)  # unit_id -> main_grid_id
    together: list[list] = field(default_factory=list)
    own_grid_islands: bool = False
    island_min_units: int = 5  # smaller islets join a grid over their bridge
    centres: dict = field(default_factory=dict)  # branch -> list of unit ids (stores)
    workers: int = 2
    random_state: int = 0


def _branch_counts(units: pd.DataFrame, spec: HierarchySpec) -> pd.Series:
    first = next(iter(spec.measures))
    load = units.groupby("branch_id")[first].sum()
    if spec.centres:
        counts = pd.Series({b: len(c) for b, c in spec.centres.items()}).reindex(load.index)
        if counts.isna().any():
            missing = counts.index[counts.isna()].tolist()
            raise InvalidInputError(f"centres: branches {missing} have no store to centre on")
        return counts.astype(int)
    if isinstance(spec.n_main, dict):
        counts = pd.Series(spec.n_main).reindex(load.index)
        if counts.isna().any():
            raise InvalidInputError(
                f"n_main: no count for branches {counts.index[counts.isna()].tolist()}"
            )
        return counts.astype(int)
    if spec.n_main is not None:
        return apportion(load, int(spec.n_main))
    if spec.main_size:
        return (load / spec.main_size).round().clip(lower=1).astype(int)
    raise InvalidInputError("give n_main (a number or one per branch) or main_size")


def part_graph(graph: nx.Graph, nodes) -> nx.Graph:
    """The units' graph with its own island bridges: city-level bridges may lead to another
    branch, and every island is reported again relative to this part."""
    sub = induced_subgraph(graph, nodes)
    sub.remove_edges_from([(u, v) for u, v, d in sub.edges(data=True) if d.get("bridge")])
    sub.graph["islands"] = join_components(sub)
    return sub


def _solve(job: dict) -> dict:
    """Worker: one partition problem. Returns labels or the error text."""
    g = job["graph"]
    try:
        p = Partitioner(job["k"], **job["params"]).solve(g)
    except InfeasibleError as exc:
        return {"key": job["key"], "error": str(exc)}
    return {
        "key": job["key"],
        "labels": p.labels_.to_dict(),
        "figures": {
            "objective": p.objective_, "bound": p.bound_, "gap": p.gap_,
            "status": p.status_, "time_s": p.time_, "max_deviation": p.max_deviation_,
        },
    }


def _run(jobs: list[dict], workers: int, progress: Callable[[str], None] | None) -> list[dict]:
    results = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_solve(job))
            if progress:
                progress(str(job["key"]))
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
        for res in ex.map(_solve, jobs):
            results.append(res)
            if progress:
                progress(str(res["key"]))
    return results


def _raise_errors(results: list[dict], what: str) -> None:
    errors = [f"{what} {r['key']}: {r['error']}" for r in results if "error" in r]
    if errors:
        raise InfeasibleError("; ".join(errors))


def build_plan(
    units: gpd.GeoDataFrame,
    graph: nx.Graph,
    spec: HierarchySpec,
    *,
    progress: Callable[[str, str], None] | None = None,
    params: dict | None = None,
) -> Plan:
    """Partition ``units`` (with a ``branch_id`` column) into the three-level plan.

    ``progress(stage, key)`` is called after every solved branch or main grid.
    """
    if "branch_id" not in units.columns:
        raise InvalidInputError("units need a branch_id column (the branch of every unit)")
    units = units.copy()
    counts = _branch_counts(units, spec)
    # ---- pre-check: refuse, before any search, targets the unit loads cannot meet ----
    short = precheck_plan(units, spec, counts)
    if short:
        raise InfeasibleError("; ".join(s.message() for s in short))
    # ---------------------------------------------------------------------------------
    base = {"measures": spec.measures, "objective": spec.objective,
            "random_state": spec.random_state}
    locks = _locks_by_branch(units, spec.locked, counts)
    groups = _groups_by(units["branch_id"], spec.together)
    jobs = []
    islands: dict = {}
    for b, k in counts.items():
        nodes = units.index[units["branch_id"] == b]
        sub = part_graph(graph, nodes)
        own = [isl["units"] for isl in sub.graph["islands"]
               if len(isl["units"]) >= spec.island_min_units] if spec.own_grid_islands else []
        islands[b] = len(own)
        k_total = int(k) + len(own)
        if k_total > len(nodes):
            raise InvalidInputError(
                f"branch {b}: {k_total} main grids for {len(nodes)} units; use fewer grids "
                "or finer units"
            )
        jobs.append({
            "key": b, "graph": sub, "k": k_total,
            "params": {**base, "time_limit": spec.time_limit_main,
                       "locked": locks.get(b), "together": groups.get(b),
                       "own_grids": own or None,
                       "centres": spec.centres.get(b) if spec.centres else None},
        })
    main_results = _run(jobs, spec.workers, (lambda key: progress("branch", key))
                        if progress else None)
    _raise_errors(main_results, "branch")
    main_id = {}
    figures = {"branch": {}, "main_grid": {}}
    island_grids = set()
    for res, job in zip(main_results, jobs, strict=True):
        b = res["key"]
        figures["branch"][str(b)] = res["figures"]
        for u, j in res["labels"].items():
            main_id[u] = f"{b}-M{j + 1:02d}"
        n_own = len(job["params"]["own_grids"] or [])
        island_grids |= {f"{b}-M{j + 1:02d}" for j in range(job["k"] - n_own, job["k"])}
    units["main_grid_id"] = pd.Series(main_id)
    sub_jobs = []
    first = next(iter(spec.measures))
    for mg, nodes in units.groupby("main_grid_id").groups.items():
        n_sub = spec.n_sub
        if spec.sub_size:
            n_sub = max(1, round(units.loc[nodes, first].sum() / spec.sub_size))
        n_sub = max(1, min(int(n_sub or 1), len(nodes)))
        if mg in island_grids:
            n_sub = 1  # an island is one beat
        sub_jobs.append({
            "key": mg, "graph": part_graph(graph, nodes), "k": n_sub,
            "params": {**base, "time_limit": spec.time_limit_sub,
                       "together": _groups_by(units.loc[nodes, "main_grid_id"],
                                              spec.together).get(mg)},
        })
    sub_results = _run(sub_jobs, spec.workers, (lambda key: progress("main_grid", key))
                       if progress else None)
    _raise_errors(sub_results, "main grid")
    sub_id = {}
    for res in sub_results:
        figures["main_grid"][str(res["key"])] = res["figures"]
        for u, j in res["labels"].items():
            sub_id[u] = f"{res['key']}-S{j + 1}"
    units["sub_grid_id"] = pd.Series(sub_id)
    units.index.name = "unit_id"
    p = dict(params or {})
    p.update({
        "measures": spec.measures, "objective": spec.objective,
        "main_grids_per_branch": {str(b): int(k) for b, k in counts.items()},
        "own_grid_islands": {str(b): n for b, n in islands.items() if n},
        "balance_exempt_grids": sorted(island_grids),
        "solver_figures": figures,
    })
    return Plan(units=units, measures=list(spec.measures), params=p)


@dataclass(frozen=True)
class LevelShortfall:
    """A level's balance target that no plan can meet, found before any search.

    ``level`` is "branch" (its main grids) or "main_grid" (the sub-grids of every main grid
    of branch ``key``); ``shortfall.max_grids`` is the largest count the check accepts.
    """

    level: str
    key: object
    shortfall: Shortfall

    def message(self) -> str:
        if self.level == "branch":
            return self.shortfall.message(f"branch {self.key}: main grids", "n_main")
        return self.shortfall.message(f"branch {self.key}: sub-grids of each main grid",
                                      "n_sub")


def precheck_plan(units: pd.DataFrame, spec: HierarchySpec,
                  counts: pd.Series | None = None) -> list[LevelShortfall]:
    """Bin-packing pre-check of both levels from the unit loads alone (seconds, no search).

    Branch level: each branch's units (must-stay-together groups summed into one load) into
    its main-grid count. Sub-grid level, before any main grid exists: a main grid's load is
    at most (1 + tol_main) times its branch mean, so no sub-grid may hold more than
    (1 + tol_sub)(1 + tol_main) * branch mean / n_sub; a heavier unit is refused with the
    largest workable n_sub. Branches with own-grid islands get the branch-level check inside
    the partitioner (their exempt load is known only after the islands are found).
    """
    counts = _branch_counts(units, spec) if counts is None else counts
    tol = dict(spec.measures)
    W = _contracted_loads(units, list(tol), spec.together)
    out = []
    for b, k in counts.items():
        Wb = W[W["branch_id"] == b][list(tol)].to_numpy(dtype=float)
        k = int(k)
        if not spec.own_grid_islands:
            out += [LevelShortfall("branch", b, s) for s in precheck(Wb, k, tol)]
        if spec.n_sub and not spec.sub_size and int(spec.n_sub) > 1 and k >= 1:
            for t, m in enumerate(tol):
                mean_b = Wb[:, t].sum() / k
                cap = (1 + tol[m]) * (1 + tol[m]) * mean_b
                w_max = Wb[:, t].max(initial=0.0)
                if w_max > cap / int(spec.n_sub) + 1e-9:
                    n_ok = max(1, int(cap // w_max))
                    out.append(LevelShortfall("main_grid", b, Shortfall(
                        m, int(spec.n_sub), tol[m], mean_b / int(spec.n_sub),
                        f"one unit holds {w_max:.6g}, more than any sub-grid may hold "
                        f"({cap / int(spec.n_sub):.6g}, even in a main grid at the top of its "
                        "band)", w_max * int(spec.n_sub) / (mean_b * (1 + tol[m])) - 1, n_ok)))
    return out


def _contracted_loads(units: pd.DataFrame, measures: list[str], together) -> pd.DataFrame:
    """Unit loads with every must-stay-together group (within a branch) summed into one."""
    uf = nx.utils.UnionFind(units.index)
    for members in _groups_by(units["branch_id"], together).values():
        for grp in members:
            uf.union(*grp)
    root = pd.Series({u: uf[u] for u in units.index})
    frame = units[measures].astype(float).assign(branch_id=units["branch_id"])
    return frame.groupby([frame["branch_id"], root.reindex(units.index).to_numpy()]).sum(
        numeric_only=True).reset_index(level=0)


def _locks_by_branch(units: pd.DataFrame, locked: dict, counts: pd.Series) -> dict:
    """``unit -> "{branch}-Mnn"`` into per-branch ``unit -> grid index``."""
    out: dict = {}
    for u, gid in (locked or {}).items():
        if u not in units.index:
            raise InvalidInputError(f"locked: unknown unit {u!r}")
        b = units.at[u, "branch_id"]
        prefix = f"{b}-M"
        if not str(gid).startswith(prefix) or not str(gid)[len(prefix):].isdigit():
            raise InvalidInputError(
                f"locked: unit {u!r} is in branch {b}; lock it to a main grid id like "
                f"{prefix}01, not {gid!r}"
            )
        j = int(str(gid)[len(prefix):]) - 1
        if not 0 <= j < counts[b]:
            raise InvalidInputError(
                f"locked: {gid!r} does not exist; branch {b} has {counts[b]} main grids"
            )
        out.setdefault(b, {})[u] = j
    return out


def _groups_by(key: pd.Series, together: list[list]) -> dict:
    """Must-stay-together groups split by ``key`` (a group cannot cross a branch line)."""
    out: dict = {}
    for grp in together or []:
        members = [u for u in grp if u in key.index]
        for k, part in pd.Series(members, dtype=object).groupby(
            key.reindex(members).to_numpy()
        ):
            if len(part) > 1:
                out.setdefault(k, []).append(part.tolist())
    return out
