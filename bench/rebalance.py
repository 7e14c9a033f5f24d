#!/usr/bin/env python
"""Rebalance with least churn against re-planning from scratch, on the shipped city.

A plan of the shipped Xiamen (synthetic customers, the demo's generator) is changed the way
cities change, then brought back within its tolerances two ways:

* ``rebalance``: :func:`territory.rebalance.rebalance` from the plan in force, with a budget
  of 10 % of the customers (the goal: balance restored moving under a tenth of what a fresh
  plan moves, in under 30 s);
* ``fresh``: :func:`territory.hierarchy.build_plan` from scratch on the changed units (same
  spec as the original), its grids matched to the old ones by most shared customers
  (:func:`scipy.optimize.linear_sum_assignment` per branch) before counting who moved.

Scenarios: ``estate`` (a new estate adds 10 % to one branch's subscribers, workload and
customers, all inside one main grid: the units within 3 hops of that grid's densest unit),
``store-closed`` (the grid centred on a store is removed: its units join their neighbours,
:func:`territory.edits.remove_grid`), ``workload+30%`` (the workload of the grid with most
units rises by 30 %: new stores or key accounts in it) and ``workload×2`` (the issue's
literal case: that grid's workload doubles).

Why ``workload+30%`` beside ``workload×2``. Doubling a whole grid's workload (the grid of a
5-grid branch that borders only 2 of the other 4) leaves its units with 1.68 times the
branch's workload per subscriber and every other grid 0.81..0.84 times; a grid meets both
±8 % bands only if its ratio lies within 0.92/1.08..1.08/0.92 = 0.85..1.17 of the branch's,
so all four must be reshaped, two of them through grids that border the doubled one. The
MIP bound below shows that some assignment of units meets the bands (at least 516
customers moved, contiguity aside; 782 if the two far grids take none of the doubled
grid's units), so the case is not proven infeasible, and contiguous plans that meet them
are rare: rebalance with no budget at all stops 11-13 % from the mean, re-planning from
scratch 8.7-10.4 % in most runs (the city is planned anew each run; one run reached 8.00 %
moving 4602 customers), and a MIP with flow contiguity over that branch's 776 units found
no plan in 240 s of HiGHS (its bound rose to 548 customers; the lazily cut
``bound_whole`` reaches 588 in 60 s). A plausible change (+30 %: a new mall's stores, a
key account's growth) keeps the branch balanceable, and that is what the goal below is measured on.

How the columns count. ``main_moved``: customers whose main grid changes (for the fresh
plan after matching its grids to the old ones by most shared customers, per branch); the
goal compares these. ``budget_used``: customers whose sub-grid changes (a main-grid move
changes it too), what the rebalance's budget counts. ``target``: the fresh plan's
``main_moved`` / 10. ``bound``: a proven lower bound of ``main_moved`` for any plan that
meets the bands with these grids, rebalanced or fresh
(:func:`territory.rebalance.churn_bound`: a MIP that assigns units to the grids of their
branch, every grid within its band, locks held, contiguity and nesting dropped, minimising
the customers that change grid; every real plan is a solution of it, and a fresh plan
relabelled by the matching is one too, as a branch's grids share one band; HiGHS's dual
bound is valid even if cut short). ``bound_whole``: the same MIP with contiguity cuts
added lazily (``churn_bound(..., contiguous=True)``: a set of units too light to be a
grid alone holds a unit of the grid only if one of its neighbours is in it too; every
plan whose main grids are each one piece keeps them, fresh ones included), 60 s, its CPU
seconds beside it: ``>=`` when cut short (its dual bound, still a bound). ``goal``:
``unattainable`` when the larger bound exceeds ``target`` (proven: no plan meets the bands
moving under a tenth of the fresh plan's customers), else ``met`` or ``missed`` by the
rebalance.

The fresh plan is drawn by the same partitioner with the same settings as the plan in
force, from the changed loads: it mostly redraws the old lines (about 4.5 % of the
customers change main grid, against the ~100 % a plan drawn with other settings or by
hand would move), so ``target`` is the strictest fair reading of the goal: a tenth of the
least a fresh plan is seen to move. The partitioner takes no seed to draw another.

The rebalance (``rb_*``) runs the plain least-churn search, then the search guided by
least-churn MIPs with contiguity rows (:mod:`territory.optimize.churn_guide`), and keeps the
plan that moves fewer customers across main-grid lines; both within ``--time-limit``
(30 s, ``territory rebalance``'s default and the goal's limit: the guided run gets up to
80 % of it; a balanced scenario took 14 s of wall, an infeasible one up to 1.4 times the
limit, as :func:`territory.rebalance.rebalance` documents). At 20 s the guide's second,
wider joining rule (:mod:`territory.optimize.churn_guide`) had no time left to run.

    .venv/bin/python bench/rebalance.py            # about 6 min on 2 busy cores
    .venv/bin/python bench/rebalance.py --customers 100000 --main-grids 40 --depth 4
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import networkx as nx
import pandas as pd
from scipy.optimize import linear_sum_assignment

from territory.boundaries import load_city
from territory.edits import remove_grid
from territory.errors import PartialPlanError
from territory.hierarchy import HierarchySpec, build_plan
from territory.metrics import load_table
from territory.pipeline import Inputs, UnitOptions, run
from territory.plan import Plan
from territory.rebalance import Budget, churn_bound, rebalance
from territory.synth import generate_city

TOL = 0.08


def worst(plan: Plan) -> float:
    t = load_table(plan, "main_grid")
    t = t[~t["balance_exempt"]]
    return float(max(t[f"dev_{m}"].abs().max() for m in plan.measures))


def moved_customers(before: Plan, after: Plan) -> int:
    """Customers whose main grid changes, grids matched by most shared customers."""
    a, b = before.units, after.units.reindex(before.units.index)
    moved = 0
    for _, idx in a.groupby("branch_id").groups.items():
        table = pd.crosstab(a.loc[idx, "main_grid_id"], b.loc[idx, "main_grid_id"],
                            values=a.loc[idx, "customers"], aggfunc="sum").fillna(0)
        r, c = linear_sum_assignment(-table.to_numpy())
        kept = table.to_numpy()[r, c].sum()
        moved += int(a.loc[idx, "customers"].sum() - kept)
    return moved


def scenarios(plan: Plan, graph: nx.Graph) -> dict[str, Plan]:
    u = plan.units.copy()
    u[["subscribers", "workload"]] = u[["subscribers", "workload"]].astype(float)
    out = {}
    # a new estate: +10 % of one branch's subscribers (and workload, customers) spread over
    # the units within 3 hops of one spot (a neighbourhood, not one block), all in the
    # spot's main grid: spread over several grids, as a first version of this bench did, the
    # estate barely unbalanced anything (8.00 % before and after)
    branch = u.groupby("branch_id")["subscribers"].sum().idxmax()
    # in the densest spot (an islet picked at random would hold it all in one unit: no plan,
    # fresh or not, could balance that)
    spot = u.loc[u["branch_id"] == branch, "customers"].idxmax()
    home = u.at[spot, "main_grid_id"]
    ring = [v for v in nx.ego_graph(graph, spot, radius=3) if u.at[v, "main_grid_id"] == home]
    est = u.copy()
    extra = 0.10 * est.loc[est["branch_id"] == branch, "subscribers"].sum()
    share = extra / len(ring)
    est.loc[ring, "subscribers"] += share
    est.loc[ring, "workload"] += share * est["workload"].sum() / est["subscribers"].sum()
    est.loc[ring, "customers"] += int(round(share))
    out["estate"] = plan.derive(est, message="new estate")
    # a store closes: the grid centred on it goes, its units join the neighbours
    counts = u.groupby("branch_id")["main_grid_id"].nunique()
    big = counts.idxmax()
    grid = sorted(u.loc[u["branch_id"] == big, "main_grid_id"].unique())[0]
    loose = Plan(units=u, measures=plan.measures, params={**plan.params,
                                                          "measures": {m: 0.99 for m in
                                                                       plan.measures}})
    closed = remove_grid(loose, graph, grid, message="store closed")
    out["store-closed"] = Plan(units=closed.units, measures=plan.measures, params=plan.params)
    # the workload of the grid with most units rises (see the module docstring)
    g = u["main_grid_id"].value_counts().index[0]
    for name, factor in (("workload+30%", 1.3), ("workload×2", 2.0)):
        wl = u.copy()
        wl.loc[wl["main_grid_id"] == g, "workload"] *= factor
        out[name] = plan.derive(wl, message=name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=40_000)
    ap.add_argument("--main-grids", type=int, default=24)
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--budget", default="customers=10%")
    ap.add_argument("--depth", type=int, default=None, help="hops from a grid line a unit "
                    "may move (rebalance; default: any)")
    ap.add_argument("--save", type=Path, default=None, help="write each changed plan to "
                    "DIR/SCENARIO.gpkg (the plan is drawn anew each run: to replay a scenario "
                    "with `territory rebalance`)")
    args = ap.parse_args()
    logging.getLogger("territory").setLevel(logging.ERROR)
    areas = load_city("xiamen")
    city = generate_city(areas, n_customers=args.customers, seed=0)
    spec = HierarchySpec(measures={"subscribers": TOL, "workload": TOL},
                         n_main=args.main_grids, n_sub=3, time_limit_main=args.time_limit,
                         time_limit_sub=5, workers=2)
    t = time.perf_counter()
    res = run(Inputs(areas, "adcode", city.customers, city.communities, city.stores,
                     city.key_accounts), UnitOptions(9, 40.0, 7), spec)
    print(f"plan: {len(res.units)} units, {args.main_grids} main grids, "
          f"{time.perf_counter() - t:.0f} s; worst main-grid deviation {worst(res.plan):.2%}")
    rows = []
    for name, changed in scenarios(res.plan, res.graph).items():
        before = worst(changed)
        if args.save:
            changed.save(args.save / f"{name}.gpkg")
        t, c = time.perf_counter(), time.process_time()
        r = rebalance(changed, res.graph, Budget.parse(args.budget, changed),
                      time_limit=args.time_limit, depth=args.depth)
        t_rb, c_rb = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        per_branch = changed.units.groupby("branch_id")["main_grid_id"].nunique()
        # the partitioner reads the loads from the graph's nodes: give it the changed ones
        # (a first version of this bench re-planned the old loads)
        graph = res.graph.copy()
        nx.set_node_attributes(graph, changed.units[changed.measures].astype(float)
                               .to_dict("index"))
        try:
            fresh = build_plan(changed.units.drop(columns=["main_grid_id", "sub_grid_id"]),
                               graph, HierarchySpec(**{**spec.__dict__,
                                                       "n_main": per_branch.to_dict()}))
        except PartialPlanError as e:  # grids it could not balance: its plan all the same
            fresh = e.plan
        t_fresh = time.perf_counter() - t
        bound = churn_bound(changed, res.graph, "customers", time_limit=60)
        t = time.process_time()
        whole = churn_bound(changed, res.graph, "customers", time_limit=60, contiguous=True)
        c_whole = time.process_time() - t
        fresh_moved = moved_customers(changed, fresh)
        main_moved = moved_customers(changed, r.plan)
        target = fresh_moved / 10
        rows.append({
            "scenario": name, "dev_before": f"{before:.2%}",
            "rb_dev": f"{worst(r.plan):.2%}", "rb_feasible": r.feasible,
            "rb_main_moved": main_moved, "rb_budget_used": int(r.moved_budget),
            "rb_s": round(t_rb, 1), "rb_cpu_s": round(c_rb, 1),
            "rb_sub_dev": f"{max(r.sub_deviation.values(), default=0):.2%}",
            "smallest_budget": r.smallest_budget,
            "fresh_dev": f"{worst(fresh):.2%}", "fresh_main_moved": fresh_moved,
            "fresh_s": round(t_fresh, 1), "target": round(target, 1),
            "bound": bound.value if bound.exact else f">={bound.value:g}",
            "bound_whole": whole.value if whole.exact else f">={whole.value:g}",
            "bound_whole_cpu_s": round(c_whole, 1),
            "goal": ("unattainable" if max(bound.value, whole.value) > target else
                     "met" if r.feasible and main_moved < target else "missed"),
        })
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
