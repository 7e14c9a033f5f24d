"""A seeded SYNTHETIC roster sized from a plan's workload, for the demo, tests and benches.

No row describes a real person: names are "synthetic staff NNNN", every row has
``synthetic = True``. Per role and branch the headcount is what the workload needs at
``utilisation`` of the model's monthly hours (:func:`territory.staffing.people_needed`),
so the allocation is feasible with a little slack. Each person is given the grid they were
sized for as ``current_grid``, except a share ``drift`` of them who are given another grid
of the same branch (so a demo shows moves); half have a store as home base, the others a
point near their grid's centre, in WGS84.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyproj

from territory.atomic import atomic_path
from territory.plan import Plan
from territory.staffing import StaffAllocator, people_needed, read_roster, write_staffing
from territory.workload import WorkloadModel, load_model, plan_crs, role_workload


def synthetic_roster(plan: Plan, *, stores: pd.DataFrame | None = None,
                     model: WorkloadModel | None = None, seed: int = 0,
                     utilisation: float = 0.85, drift: float = 0.1) -> pd.DataFrame:
    """A roster (the columns :func:`territory.staffing.read_roster` reads) for ``plan``.

    ``stores`` (``store_id``, WGS84 ``lng``/``lat``) gives home bases at stores; without it
    every home base is a point.
    """
    rng = np.random.default_rng(seed)
    model = model or load_model()
    crs = plan_crs(plan.units)
    load = role_workload(plan.units, model, crs)
    hours = model.staff.monthly_hours
    to_wgs = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    rows = []
    for (role, branch), g in load.groupby(["role", "branch_id"], sort=True):
        r = model.roles[role]
        n = people_needed(g["workload_hours"].to_numpy(), np.full(len(g), r.min_per_grid),
                          hours * utilisation)
        n = np.minimum(n, r.max_per_grid)
        grid = np.repeat(g["grid_id"].to_numpy(object), n)
        cx = np.repeat(g["centre_x"].to_numpy(), n) + rng.normal(0, 2000, len(grid))
        cy = np.repeat(g["centre_y"].to_numpy(), n) + rng.normal(0, 2000, len(grid))
        lng, lat = to_wgs.transform(cx, cy)
        current = grid.copy()
        if role != "grid_manager" and len(grid) > 1:
            move = rng.random(len(grid)) < drift
            current[move] = rng.choice(g["grid_id"].to_numpy(object), int(move.sum()))
        for i in range(len(grid)):
            rows.append({"role": role, "branch_id": str(branch), "hours": hours,
                         "home_lng": round(float(lng[i]), 6), "home_lat": round(float(lat[i]), 6),
                         "current_grid": current[i]})
    roster = pd.DataFrame(rows)
    roster.insert(0, "person_id", [f"P{i + 1:05d}" for i in range(len(roster))])
    roster.insert(1, "name", [f"synthetic staff {i + 1:04d}" for i in range(len(roster))])
    roster["home_crs"] = "wgs84"
    roster["home_store_id"] = None
    if stores is not None and len(stores):
        at_store = rng.random(len(roster)) < 0.5
        sx, sy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
            stores["lng"].to_numpy(float), stores["lat"].to_numpy(float))
        hx, hy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
            roster["home_lng"].to_numpy(), roster["home_lat"].to_numpy())
        nearest = np.argmin(np.hypot(hx[:, None] - sx[None, :], hy[:, None] - sy[None, :]),
                            axis=1)
        ids = stores["store_id"].astype(str).to_numpy(object)[nearest]
        roster.loc[at_store, "home_store_id"] = ids[at_store]
        roster.loc[at_store, ["home_lng", "home_lat", "home_crs"]] = None
    roster["synthetic"] = True
    return roster


def demo_staffing(plan: Plan, stores: pd.DataFrame, out: str | Path, *, seed: int = 0
                  ) -> dict[str, Path]:
    """The demo's staffing: a synthetic roster in ``out/synthetic/roster.csv``, allocated to
    ``plan`` into ``out/staff/`` (see :func:`territory.staffing.write_staffing`)."""
    out = Path(out)
    roster = synthetic_roster(plan, stores=stores, seed=seed)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "synthetic" / "roster.csv") as tmp:
        roster.to_csv(tmp, index=False)
    shops = stores.set_index(stores["store_id"].astype(str))[["lng", "lat"]]
    result = StaffAllocator().solve(plan, read_roster(roster), stores=shops)
    return write_staffing(result, out / "staff")
