"""Batch customer assignment: territory's raster index against geopandas.sjoin.

Both run in this process, on one core, on the same Shenzhen plan and the same points, end to
end from WGS84 lng/lat arrays to sub-grid, main-grid and branch ids:

* territory: ``territory.assign.assign`` on an :class:`AssignmentIndex` (exact ownership,
  lowest unit_id on shared edges; outside points also get their nearest sub-grid and the
  distance in metres), in chunks of 1 M points as a file run processes them;
* sjoin: points → ``gpd.sjoin(points, sub_grids, predicate="intersects", how="left")`` on the
  plan's dissolved sub-grid polygons, then main grid and branch by the sub-grid's parents.
  It does less: no nearest grid for outside points, and a point on a shared edge comes out
  twice (kept here as sjoin gives it).

Points: a share uniform over the plan's bounding box (sea, Hong Kong and Dongguan included,
so many are outside) and the rest clustered like customers (a unit drawn by the plan's
customer count, a point in it, 50 m of Gaussian jitter). 1 M and 10 M points; sjoin in
chunks of 1 M to keep memory within a few GB. Times are wall clock and CPU time of this
process: on a shared machine the CPU time is the fairer "one core" figure, and the ratio
uses it.

The plan: ``out/plan.gpkg`` if present (``territory demo``), else ``bench/out/assign_plan.gpkg``,
built on first use from the Shenzhen demo pipeline (300 000 synthetic customers, H3 res 7-10,
40 main grids x 3 sub-grids; the balance tolerance is loose, only the map matters here).

    python bench/assign.py [--plan PATH] [--sizes 1000000 10000000] [--uniform-share 0.5]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np

from territory.assign import STATUSES, assign
from territory.assign_index import AssignmentIndex
from territory.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1_000_000


def plan_path(given: Path | None) -> Path:
    """The plan to benchmark on, building the bench plan once when there is none."""
    for path in (given, ROOT / "out" / "plan.gpkg", ROOT / "bench" / "out" / "assign_plan.gpkg"):
        if path is not None and path.exists():
            return path
    from territory.boundaries import load_city
    from territory.hierarchy import HierarchySpec
    from territory.pipeline import Inputs, UnitOptions, run
    from territory.synth import generate_city

    path = ROOT / "bench" / "out" / "assign_plan.gpkg"
    print(f"building the Shenzhen bench plan into {path} (a few minutes, once)")
    areas = load_city("shenzhen")
    data = generate_city(areas, n_customers=300_000, seed=0)
    spec = HierarchySpec(measures={"subscribers": 0.99}, n_main=40, n_sub=3,
                         time_limit_main=5, time_limit_sub=2, workers=2)
    run(Inputs(areas, "adcode", data.customers), UnitOptions(10, 30.0, 7), spec).plan.save(path)
    return path


def make_points(plan: Plan, n: int, uniform_share: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A share uniform over the plan's bounds, the rest clustered like its customers: a
    unit drawn by its customer count, a point in it, 50 m of Gaussian jitter."""
    import shapely

    b = plan.units.total_bounds
    n_uniform = int(n * uniform_share)
    units = plan.units
    weight = units["customers"].fillna(0).to_numpy(float) if "customers" in units else None
    centre = shapely.point_on_surface(units.geometry.values)
    cx, cy = shapely.get_x(centre), shapely.get_y(centre)
    p = None if weight is None or weight.sum() == 0 else weight / weight.sum()
    pick = rng.choice(len(units), n - n_uniform, p=p)
    jitter = 50.0 / 111_000.0  # 50 m in degrees, about
    x = np.r_[rng.uniform(b[0], b[2], n_uniform), cx[pick] + rng.normal(0, jitter, len(pick))]
    y = np.r_[rng.uniform(b[1], b[3], n_uniform), cy[pick] + rng.normal(0, jitter, len(pick))]
    order = rng.permutation(n)
    return x[order], y[order]


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_territory(index: AssignmentIndex, x: np.ndarray, y: np.ndarray) -> dict[str, int]:
    counts = np.zeros(len(STATUSES), dtype=np.int64)
    for lo in range(0, len(x), CHUNK):
        res = assign(index, x[lo:lo + CHUNK], y[lo:lo + CHUNK], crs="wgs84")
        res.sub_grid_id, res.main_grid_id, res.branch_id  # noqa: B018 - the ids are the output
        counts += np.bincount(res.code, minlength=len(STATUSES))
    return dict(zip(STATUSES, counts.tolist(), strict=True))


def run_sjoin(sub: gpd.GeoDataFrame, parents: dict, x: np.ndarray, y: np.ndarray) -> int:
    rows = 0
    for lo in range(0, len(x), CHUNK):
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x[lo:lo + CHUNK], y[lo:lo + CHUNK]),
                               crs="EPSG:4326")
        hit = gpd.sjoin(pts, sub, how="left", predicate="intersects")
        main = hit["grid_id"].map(parents["main"])
        hit["main_grid_id"], hit["branch_id"] = main, main.map(parents["branch"])
        rows += len(hit)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--uniform-share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("territory").setLevel(logging.ERROR)

    path = plan_path(args.plan)
    plan = Plan.load(path)
    print(f"plan {path}: {len(plan.units)} units, "
          f"{plan.units['sub_grid_id'].nunique()} sub-grids")
    index, wall, _ = timed(lambda: AssignmentIndex.build(plan))
    print(f"index build      {wall:7.2f} s   ({index.nbytes / 1e6:.0f} MB of arrays)")
    side = Path("/tmp") / f"bench-assign-{plan.fingerprint[:12]}.index"
    _, wall, _ = timed(lambda: index.save(side))
    size = sum(f.stat().st_size for f in side.iterdir())
    print(f"index save       {wall:7.2f} s   ({size / 1e6:.0f} MB of files)")
    index, wall, _ = timed(lambda: AssignmentIndex.load(side, plan))
    print(f"index load       {wall:7.2f} s")
    shutil.rmtree(side)

    subs = plan.grids("sub_grid")[["grid_id", "parent_id", "geometry"]]
    mains = plan.grids("main_grid")
    parents = {"main": dict(zip(subs["grid_id"], subs["parent_id"], strict=True)),
               "branch": dict(zip(mains["grid_id"], mains["parent_id"], strict=True))}
    sub = subs[["grid_id", "geometry"]]
    rng = np.random.default_rng(args.seed)
    print(f"points: {args.uniform_share:.0%} uniform in the plan's bounds, the rest clustered "
          "like customers")
    print(f"{'points':>11} {'method':>10} {'wall s':>8} {'cpu s':>8} {'Mpts/s cpu':>11} "
          f"{'Mpts/s wall':>12}")
    for n in args.sizes:
        x, y = make_points(plan, n, args.uniform_share, rng)
        counts, t_wall, t_cpu = timed(lambda x=x, y=y: run_territory(index, x, y))
        rows, s_wall, s_cpu = timed(lambda x=x, y=y: run_sjoin(sub, parents, x, y))
        for name, wall, cpu in (("territory", t_wall, t_cpu), ("sjoin", s_wall, s_cpu)):
            print(f"{n:>11,} {name:>10} {wall:8.2f} {cpu:8.2f} {n / cpu / 1e6:11.2f} "
                  f"{n / wall / 1e6:12.2f}")
        share = {k: f"{v / n:.1%}" for k, v in sorted(counts.items())}
        print(f"{'':>11} territory/sjoin speed-up (cpu) {s_cpu / t_cpu:.1f}x, (wall) "
              f"{s_wall / t_wall:.1f}x; statuses {share}; sjoin rows {rows:,}")


if __name__ == "__main__":
    main()
