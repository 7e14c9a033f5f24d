"""Staff allocation: time and quality on the shipped city and on a 300-main-grid city.

Cases (both on the shipped Shenzhen districts, synthetic customers of the demo generator,
the shipped workload model, H3 resolution-8 units):

* ``shenzhen-100``: 300 000 customers, 100 main grids x 4 sub-grids (the demo's sizes);
* ``shenzhen-300``: 900 000 customers, 300 main grids x 4 sub-grids.

Allocation is what is measured, not partitioning, so the grids are drawn quickly: main grids
apportioned to the districts by workload (``territory.hierarchy.apportion``) and cut by
recursive coordinate bisection of the units' centres into parts of equal workload inside each
district, sub-grids likewise inside each main grid (not necessarily contiguous; the
allocation does not care). The roster is the
synthetic one (``territory.synth_roster``, seeded, 10 % of people currently in another grid,
half based at stores).

Figures per case: people, time of the whole ``StaffAllocator.solve`` (counts MIPs, people
MIPs, reports); per role the highest workload per person, the lower bound on it (the largest
of each branch's mean, and of each grid with its maximum team: no allocation can do better),
the exact optimum by an independent method (the smallest t with
sum_g max(low_g, ceil(W_g / t)) <= H over the candidates W_g / k, per branch), the mean and
the spread; people who change grid, and the mean distance from home base.

    python bench/staffing.py [--cases shenzhen-100,shenzhen-300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from territory.boundaries import load_city
from territory.hierarchy import apportion
from territory.pipeline import Inputs, UnitOptions, build_unit_table
from territory.plan import Plan
from territory.staffing import StaffAllocator, lower_bounds, read_roster
from territory.synth import generate_city
from territory.synth_roster import synthetic_roster
from territory.workload import load_model

CASES = {"shenzhen-100": (300_000, 100), "shenzhen-300": (900_000, 300)}
N_SUB = 4


def _bisect(xy: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Recursive coordinate bisection into ``k`` parts of about equal weight."""
    labels = np.zeros(len(xy), dtype=int)
    if k <= 1 or len(xy) <= 1:
        return labels
    k1 = k // 2
    axis = int(np.ptp(xy[:, 0]) < np.ptp(xy[:, 1]))
    order = np.argsort(xy[:, axis], kind="stable")
    cum = np.cumsum(w[order] + 1e-9)
    # each side keeps at least as many units as the parts it is cut into
    cut = max(k1, min(len(xy) - (k - k1), int(np.searchsorted(cum, cum[-1] * k1 / k))))
    left, right = order[:cut], order[cut:]
    labels[left] = _bisect(xy[left], w[left], k1)
    labels[right] = k1 + _bisect(xy[right], w[right], k - k1)
    return labels


def quick_plan(n_customers: int, n_main: int, seed: int = 0) -> tuple[Plan, pd.DataFrame]:
    areas = load_city("shenzhen")
    data = generate_city(areas, n_customers=n_customers, seed=seed)
    units, _ = build_unit_table(Inputs(areas, "adcode", data.customers, data.communities,
                                       data.stores, data.key_accounts), UnitOptions(8, None, 8))
    c = units.geometry.centroid
    units["x"], units["y"] = c.x * 102.0, c.y * 111.0  # km, about right at 22.6 N
    counts = apportion(units.groupby("branch_id")["workload"].sum(), n_main)
    main, sub = pd.Series(index=units.index, dtype=object), pd.Series(index=units.index,
                                                                       dtype=object)
    for b, idx in units.groupby("branch_id").groups.items():
        w = units.loc[idx, "workload"].to_numpy()
        lab = _bisect(units.loc[idx, ["x", "y"]].to_numpy(), w, int(counts[b]))
        for j in np.unique(lab):
            m_idx = idx[lab == j]
            mid = f"{b}-M{j + 1:02d}"
            main[m_idx] = mid
            s_lab = _bisect(units.loc[m_idx, ["x", "y"]].to_numpy(),
                            units.loc[m_idx, "workload"].to_numpy(), N_SUB)
            sub[m_idx] = [f"{mid}-S{s + 1}" for s in s_lab]
    units = units.drop(columns=["x", "y"]).assign(main_grid_id=main, sub_grid_id=sub)
    units.index.name = "unit_id"
    return Plan(units=units, measures=["workload"]), data.stores


def exact_max(W: np.ndarray, low: np.ndarray, hi: np.ndarray, H: int) -> float:
    """The optimal highest workload per person, by the counting criterion (no solver)."""
    cands = np.unique([w / k for w in W if w > 0 for k in range(1, int(hi.max()) + 1)])
    ok = [t for t in cands if (np.maximum(low, np.ceil(W / t - 1e-9)) <= hi).all()
          and np.maximum(low, np.ceil(W / t - 1e-9)).sum() <= H]
    return float(min(ok)) if ok else 0.0


def run_case(name: str, n_customers: int, n_main: int) -> list[dict]:
    t0 = time.perf_counter()
    plan, stores = quick_plan(n_customers, n_main)
    roster = read_roster(synthetic_roster(plan, stores=stores, seed=0))
    shops = stores.set_index(stores["store_id"].astype(str))[["lng", "lat"]]
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = StaffAllocator(time_limit=120).solve(plan, roster, stores=shops)
    took = time.perf_counter() - t0
    model = load_model()
    rows = []
    for role, load in a.load_.groupby("role", sort=False):
        r = model.roles[role]
        exact, bound = 0.0, 0.0
        for _, g in load.groupby("branch_id"):
            W = g["workload_hours"].to_numpy()
            low = lower_bounds(W, np.full(len(W), r.min_per_grid))
            hi = np.full(len(W), r.max_per_grid)
            H = int(g["staff"].sum())
            exact = max(exact, exact_max(W, low, hi, H))
            bound = max(bound, W.sum() / max(H, 1), (W / hi).max())
        staff = a.staff_[a.staff_["role"] == role]
        per = load.loc[load["staff"] > 0, "workload_per_staff"]
        rows.append({
            "case": name, "grids": len(load), "people": len(staff), "role": role,
            "max h": round(per.max(), 2), "exact max h": round(exact, 2),
            "bound h": round(bound, 2), "mean h": round(load["workload_hours"].sum()
                                                         / max(len(staff), 1), 2),
            "spread h": round(per[load.loc[per.index, "workload_hours"] > 0].max()
                              - per[load.loc[per.index, "workload_hours"] > 0].min(), 2),
            "moved": int(staff["moved"].sum()), "home km": round(staff["home_km"].mean(), 2),
            "solve s": round(took, 1), "build s": round(build, 1),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    rows = []
    for name in args.cases.split(","):
        rows += run_case(name, *CASES[name])
        print(pd.DataFrame(rows).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
