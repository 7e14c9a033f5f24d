"""The hierarchy: branches → main grids → sub-grids, nested by construction.

Branches follow a layer of areas (districts by default). The number of main grids is
apportioned to branches by weight (largest remainder, at least one each) or given per
branch; each branch is partitioned into main grids, then each main grid into sub-grids.
Branches are independent problems, and so are main grids: they are solved in parallel
worker processes.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd

from territory.errors import InfeasibleError, InvalidInputError, PartialPlanError
from territory.graph import induced_subgraph, induced_subgraphs, join_components
from territory.optimize import OBJECTIVES, Partitioner
from territory.optimize.balance import (
    Shortfall,
    max_feasible_grids,
    parse_tolerances,
    precheck,
)
from territory.plan import Plan
from territory.progress import BRANCHES, MAIN_GRIDS, Progress, silent
from territory.staff_grids import branch_counts, count_range, staff_balance, sub_counts

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
    """How to build the hierarchy. Sizes (``main_size``, ``sub_size``) and the apportionment
    of main grids to branches are in ``size_measure`` (default: the first balance measure):
    e.g. a team member's monthly hours, so that the number of sub-grids follows the staff."""

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
    # False: a main grid whose load cannot be balanced over n_sub sub-grids gets fewer (the
    # most that work). True: keep n_sub; such a grid is kept flagged and the plan fails.
    strict: bool = False
    # True: a branch whose unit loads cannot be balanced over its main-grid count (a unit
    # heavier than a main grid may hold) gets the most main grids the pre-check allows
    # instead of a refusal (the demo, which picks counts from the customers alone)
    fit_main: bool = False
    size_measure: str | None = None
    # with sub_size (sub-grids follow the staff): the measure (workload) whose figure per
    # staff member (per sub-grid) every main grid keeps within ±staff_tolerance of the
    # city's; the counts are chosen by territory.staff_grids
    staff_measure: str | None = None
    staff_tolerance: float = 0.10

    @property
    def joint(self) -> bool:
        """Sub-grids follow the staff and each main grid's workload per staff is held."""
        return self.sub_size is not None and self.staff_measure is not None

    def sizing(self) -> str:
        """The unit column sizes are measured in."""
        return self.size_measure or next(iter(self.measures))

    def validate(self, *, centred: bool = False) -> None:
        """Check every parameter that needs no data, so that a bad value fails at once and
        not after the seconds of unit building (the pipeline calls this first, and so does
        the CLI before it reads any file). ``centred``: main grids will be centred on stores,
        which then set their number."""
        parse_tolerances(self.measures, 0.05)
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(
                f"`objective` {self.objective!r}: choose one of {list(OBJECTIVES)}"
            )
        if isinstance(self.n_main, dict):
            counts = list(self.n_main.items())
        else:
            counts = [] if self.n_main is None else [(None, self.n_main)]
        for branch, n in counts:
            if not _whole(n, 1):
                where = "" if branch is None else f" for branch {branch!r}"
                raise InvalidInputError(f"`n_main` {n!r}{where}: give a whole number >= 1")
        if self.n_main is None and self.main_size is None and not centred:
            raise InvalidInputError(
                "give the number of main grids, `n_main` (one for the city or one per "
                "branch), or their size, `main_size`"
            )
        if self.n_sub is not None and not _whole(self.n_sub, 1):
            raise InvalidInputError(f"`n_sub` {self.n_sub!r}: give a whole number >= 1")
        for name in ("main_size", "sub_size"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and 0 < value < math.inf):
                raise InvalidInputError(f"`{name}` {value!r}: give a load > 0")
        for name in ("time_limit_main", "time_limit_sub"):
            value = getattr(self, name)
            if not (_number(value) and value > 0):
                raise InvalidInputError(f"`{name}` {value!r}: give seconds > 0")
        if isinstance(self.staff_tolerance, bool) or not (
                _number(self.staff_tolerance) and 0 < self.staff_tolerance < 1):
            raise InvalidInputError(f"`staff_tolerance` {self.staff_tolerance!r}: give a "
                                    "fraction between 0 and 1 (0.1 = ±10 % of the city's "
                                    "workload per staff)")
        if not _whole(self.workers, 1):
            raise InvalidInputError(f"`workers` {self.workers!r}: give a whole number >= 1")


def _number(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _whole(v: object, minimum: int) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= minimum


def _branch_counts(units: pd.DataFrame, spec: HierarchySpec) -> pd.Series:
    first = spec.sizing()
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
    branch, and every island is joined again relative to this part (logged at DEBUG: the
    city's graph has warned of it already)."""
    sub = induced_subgraph(graph, nodes)
    return _own_bridges(sub, _mainland(graph, sub))


def part_graphs(graph: nx.Graph, labels: pd.Series) -> dict:
    """:func:`part_graph` of every part ``labels`` (unit -> part) names, in one pass."""
    lab = labels.to_dict()
    border: dict = {}  # part -> a unit of it with land contact with another part
    for u, v, d in graph.edges(data=True):
        lu, lv = lab.get(u), lab.get(v)
        if lu != lv and not d.get("bridge"):
            border.setdefault(lu, u)
            border.setdefault(lv, v)
    return {k: _own_bridges(sub, border.get(k))
            for k, sub in induced_subgraphs(graph, lab).items()}


def _mainland(graph: nx.Graph, sub: nx.Graph) -> object:
    """A unit of the part ``sub`` with land contact outside it, or None."""
    for u in sub:
        if any(v not in sub and not d.get("bridge") for v, d in graph.adj[u].items()):
            return u
    return None


def _own_bridges(sub: nx.Graph, mainland=None) -> nx.Graph:
    """Drop the city's bridges and join the part's islands to its mainland: the piece
    holding ``mainland`` (a unit touching the rest of the city by land), else the largest.
    A district's piece of the island city can be smaller than an islet it holds
    (Siming's Gulangyu); it is still the land its islands hang off."""
    sub.remove_edges_from([(u, v) for u, v, d in sub.edges(data=True) if d.get("bridge")])
    sub.graph["islands"] = join_components(sub, level=logging.DEBUG, main=mainland)
    return sub


def _solve(job: dict) -> dict:
    """Worker: one partition problem into ``k`` grids, or fewer down to ``min_k`` while the
    targets cannot be met. Returns labels and figures, or the error text with the best
    labels found (when the solver got that far)."""
    g = job["graph"]
    tried: list[dict] = []
    k = job["k"]
    while True:
        try:
            p = Partitioner(k, **job["params"]).solve(g)
        except InfeasibleError as exc:
            tried.append({"k": k, "error": str(exc)})
            if k > job["min_k"]:
                k -= 1
                continue
            best = getattr(exc, "partitioner", None)
            out = {"key": job["key"], "k": k, "error": str(exc), "tried": tried}
            if best is not None:
                out["labels"] = best.labels_.to_dict()
            return out
        return {
            "key": job["key"], "k": k, "tried": tried,
            "labels": p.labels_.to_dict(),
            "figures": {
                "objective": p.objective_, "bound": p.bound_, "gap": p.gap_,
                "status": p.status_, "time_s": p.time_, "max_deviation": p.max_deviation_,
            },
        }


def _run(jobs: list[dict], workers: int, stage: str, progress: Progress) -> list[dict]:
    """Solve every job, reporting ``stage`` as it starts and after each job."""
    done: dict[int, dict] = {}

    def step() -> None:
        progress(stage, len(done), len(jobs))

    step()
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            done[i] = _solve(job)
            step()
    else:
        # largest first, so that no core is left with the largest job alone at the end
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["graph"].number_of_nodes())
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
            futures = {ex.submit(_solve, jobs[i]): i for i in order}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                step()
    return [done[i] for i in range(len(jobs))]


def _labels(res: dict, job: dict) -> dict:
    """A job's labels: the solver's, or its best try when it failed, or one grid for all."""
    return res.get("labels") or dict.fromkeys(job["graph"].nodes, 0)


def _failure(level: str, res: dict, job: dict) -> dict:
    return {"level": level, "grid": str(res["key"]), "grids_requested": int(job["k"]),
            "error": res["error"]}


def _flag(units: pd.DataFrame, mask, text: str) -> None:
    """Mark units of a grid that failed (``flag`` joins the reasons of both levels)."""
    if "flag" not in units:
        units["flag"] = ""
    old = units.loc[mask, "flag"]
    units.loc[mask, "flag"] = old.where(old == "", old + "; ") + text


def build_plan(
    units: gpd.GeoDataFrame,
    graph: nx.Graph,
    spec: HierarchySpec,
    *,
    progress: Progress | None = None,
    params: dict | None = None,
) -> Plan:
    """Partition ``units`` (with a ``branch_id`` column) into the three-level plan.

    ``progress`` receives the branches, then the main grids, as done out of total.
    A grid that fails never discards the others: every branch and main grid is solved, and
    the failures are reported together at the end. A main grid whose load cannot be balanced
    over ``spec.n_sub`` sub-grids (a district of a few customers) gets the most sub-grids
    that can (down to one), recorded in the plan's ``params["sub_grids_reduced"]``; with
    ``spec.strict`` it keeps the count asked for instead. A grid still failing (a branch
    that cannot be split into its main grids, or, when strict, such a main grid) is kept
    with the best partition the solver found, or whole, its units marked in a ``flag``
    column, and :class:`PartialPlanError` is raised carrying that plan.
    """
    if "branch_id" not in units.columns:
        raise InvalidInputError("units need a branch_id column (the branch of every unit)")
    units = units.copy()
    counts = _branch_counts(units, spec)
    # ---- pre-check: refuse, before any search, targets the unit loads cannot meet ----
    # (not a main grid's sub-grid count: by default it gets the most sub-grids its load
    # allows; when strict the grid is kept flagged in the saved plan, below)
    main_reduced, short = _fit_main_counts(units, spec, counts) if spec.fit_main else ({}, None)
    staff_counts = _staff_branch_counts(units, spec, counts) if spec.joint else {}
    refuse_infeasible(units, spec, counts, None if staff_counts else short)  # counts changed
    # ---------------------------------------------------------------------------------
    # many jobs: the annealing stops after 3 epochs without a plan better by half a
    # percent instead of spending every job's whole time limit polishing
    base = {"measures": spec.measures, "objective": spec.objective,
            "random_state": spec.random_state, "patience": 3, "min_gain": 0.005}
    locks = _locks_by_branch(units, spec.locked, counts)
    groups = _groups_by(units["branch_id"], spec.together)
    jobs = []
    islands: dict = {}
    branch_graphs = part_graphs(graph, units["branch_id"])
    for b, k in counts.items():
        nodes = units.index[units["branch_id"] == b]
        sub = branch_graphs[b]
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
            "key": b, "graph": sub, "k": k_total, "min_k": k_total,
            "params": {**base, "time_limit": spec.time_limit_main,
                       "locked": locks.get(b), "together": groups.get(b),
                       "own_grids": own or None,
                       "centres": spec.centres.get(b) if spec.centres else None},
        })
    main_results = _run(jobs, spec.workers, BRANCHES, progress or silent)
    main_id = {}
    figures = {"branch": {}, "main_grid": {}}
    failures = []
    island_grids = set()
    for res, job in zip(main_results, jobs, strict=True):
        b = res["key"]
        if "error" in res:
            failures.append(_failure("branch", res, job))
            _flag(units, units["branch_id"] == b, "main grids not balanced")
        else:
            figures["branch"][str(b)] = res["figures"]
        for u, j in _labels(res, job).items():
            main_id[u] = f"{b}-M{j + 1:02d}"
        n_own = len(job["params"]["own_grids"] or [])
        island_grids |= {f"{b}-M{j + 1:02d}" for j in range(job["k"] - n_own, job["k"])}
    units["main_grid_id"] = pd.Series(main_id)
    sub_jobs = []
    first = spec.sizing()
    joint = _staff_sub_counts(units, spec, island_grids) if spec.joint else None
    main_graphs = part_graphs(graph, units["main_grid_id"])
    main_groups = _groups_by(units["main_grid_id"], spec.together)
    for mg, nodes in units.groupby("main_grid_id").groups.items():
        n_sub = spec.n_sub
        if spec.sub_size:
            n_sub = max(1, round(units.loc[nodes, first].sum() / spec.sub_size))
        n_sub = max(1, min(int(n_sub or 1), len(nodes)))
        if joint is not None and mg in joint.index:
            n_sub = int(joint[mg])  # whole people, within the staff tolerance: kept
        if mg in island_grids:
            n_sub = 1  # an island is one beat
        sub_jobs.append({
            "key": mg, "graph": main_graphs[mg], "k": n_sub,
            "min_k": n_sub if spec.strict or joint is not None else 1,
            "params": {**base, "time_limit": spec.time_limit_sub,
                       "together": main_groups.get(mg)},
        })
    sub_results = _run(sub_jobs, spec.workers, MAIN_GRIDS, progress or silent)
    sub_id = {}
    reduced = {}
    for res, job in zip(sub_results, sub_jobs, strict=True):
        mg = str(res["key"])
        if "error" in res:
            failures.append(_failure("main_grid", res, job))
            _flag(units, units["main_grid_id"] == mg, "sub-grids not balanced")
        else:
            figures["main_grid"][mg] = res["figures"]
            if res["k"] < job["k"]:
                reduced[mg] = {"requested": int(job["k"]), "used": int(res["k"]),
                               "reason": res["tried"][0]["error"]}
                log.warning("main grid %s: %d sub-grids instead of %d (%s)", mg, res["k"],
                            job["k"], res["tried"][0]["error"])
        for u, j in _labels(res, job).items():
            sub_id[u] = f"{mg}-S{j + 1}"
    units["sub_grid_id"] = pd.Series(sub_id)
    units.index.name = "unit_id"
    p = dict(params or {})
    p.update({
        "measures": spec.measures, "objective": spec.objective, "strict": spec.strict,
        "main_grids_per_branch": {str(b): int(k) for b, k in counts.items()},
        "own_grid_islands": {str(b): n for b, n in islands.items() if n},
        "main_grids_reduced": main_reduced,
        "sub_grids_reduced": reduced,
        "failures": failures,
        "balance_exempt_grids": sorted(island_grids),
        "solver_figures": figures,
    })
    if joint is not None:
        p["staff_balance"] = staff_balance(
            units.groupby("main_grid_id")[spec.staff_measure].sum().loc[joint.index], joint,
            spec.staff_tolerance)
        p["main_grids_for_staff"] = staff_counts
    plan = Plan(units=units, measures=list(spec.measures), params=p)
    if failures:
        raise PartialPlanError(_failure_message(failures, spec.strict), plan, failures)
    return plan


def _staff_branch_counts(units: pd.DataFrame, spec: HierarchySpec, counts: pd.Series
                         ) -> dict:
    """Joint planning, before the draw: where the main-grid counts are ours to choose (not
    given per branch, not one per store), change them, in place, to counts whose balanced
    main grids can each hold a whole number of people within the staff tolerance (the city
    total of ``n_main`` kept). Returns ``{branch: {requested, used, reason}}`` changed."""
    if spec.centres or isinstance(spec.n_main, dict):
        return {}
    m = spec.staff_measure
    tol = dict(spec.measures)
    loads = _contracted_loads(units, list(tol), spec.together)
    most = {}
    for b, k in counts.items():
        Wb = loads[loads["branch_id"] == b][list(tol)].to_numpy(dtype=float)
        top = count_range(int(k))[-1]
        most[b] = min([len(Wb), *(max_feasible_grids(Wb[:, t], top, tol[x])
                                  for t, x in enumerate(tol))])
    by_branch = units.groupby("branch_id")
    chosen = branch_counts(
        by_branch[m].sum(), by_branch[spec.sizing()].sum() / spec.sub_size, counts.copy(),
        pd.Series(most), tolerance=spec.staff_tolerance,
        main_tolerance=tol.get(m, math.inf),
        city_total=int(counts.sum()) if spec.n_main is not None else None)
    out = {}
    for b in counts.index:
        if chosen[b] != counts[b]:
            out[str(b)] = {"requested": int(counts[b]), "used": int(chosen[b]),
                           "reason": f"{chosen[b]} main grids hold whole teams within "
                                     f"±{spec.staff_tolerance:.0%} of the city's {m} per "
                                     "staff"}
            log.info("branch %s: %d main grids instead of %d (%s)", b, chosen[b], counts[b],
                     out[str(b)]["reason"])
            counts[b] = chosen[b]
    return out


def _staff_sub_counts(units: pd.DataFrame, spec: HierarchySpec, island_grids: set
                      ) -> pd.Series:
    """Joint planning, after the draw: each balanced main grid's sub-grids (people), every
    one within the staff tolerance of the city's workload per staff (or a refusal)."""
    g = units[~units["main_grid_id"].isin(island_grids)].groupby("main_grid_id")
    return sub_counts(g[spec.staff_measure].sum(), g[spec.sizing()].sum() / spec.sub_size,
                      g.size(), spec.staff_tolerance)


def _failure_message(failures: list[dict], strict: bool) -> str:
    what = {"branch": "branch {grid} into {grids_requested} main grids",
            "main_grid": "main grid {grid} into {grids_requested} sub-grids"}
    lines = [f"{what[f['level']].format(**f)}: {f['error']}" for f in failures]
    hint = (" Without `strict`, a main grid takes the most sub-grids its load allows."
            if strict and any(f["level"] == "main_grid" for f in failures) else "")
    return (f"balance targets not met in {len(failures)} grid(s); the plan keeps them "
            f"flagged, every other grid is complete: " + "; ".join(lines) + "." + hint)


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


def refuse_infeasible(units: pd.DataFrame, spec: HierarchySpec,
                      counts: pd.Series | None = None,
                      shortfalls: list[LevelShortfall] | None = None) -> None:
    """Raise :class:`InfeasibleError` for the branch-level shortfalls of
    :func:`precheck_plan` (``shortfalls``: its result for these ``counts`` when the caller
    has it already), kept on the error as ``shortfalls`` so that a caller (the service) can
    name the parameter of each fix. A main grid's sub-grid shortfall is not refused: by
    default it gets the most sub-grids its load allows (see :func:`build_plan`)."""
    if shortfalls is None:
        shortfalls = precheck_plan(units, spec, counts)
    short = [s for s in shortfalls if s.level == "branch"]
    if short:
        err = InfeasibleError("; ".join(s.message() for s in short))
        err.shortfalls = short
        raise err


def _fit_main_counts(units: pd.DataFrame, spec: HierarchySpec,
                     counts: pd.Series) -> tuple[dict, list[LevelShortfall]]:
    """Lower, in place, each branch's main-grid count to the most its unit loads allow (the
    pre-check's ``max_grids``, over every measure); returns ``{branch: {requested, used,
    reason}}`` for the branches changed, and the pre-check of the final counts (for
    :func:`refuse_infeasible`, so it is not run again)."""
    out: dict = {}
    while True:
        checked = precheck_plan(units, spec, counts)
        short = [s for s in checked if s.level == "branch"]
        lower = {s.key: s.shortfall.max_grids for s in short
                 if 1 <= s.shortfall.max_grids < counts[s.key]}
        if not lower:
            return out, checked
        for b, k in lower.items():
            reason = next(s.shortfall.reason for s in short if s.key == b)
            out.setdefault(str(b), {"requested": int(counts[b]), "reason": reason})
            out[str(b)]["used"] = int(k)
            log.warning("branch %s: %d main grids instead of %d (%s)", b, k, counts[b], reason)
            counts[b] = k


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
