"""The nightly batch end to end, file to file: ``territory assign`` against geopandas.sjoin.

Each run is a child process (so its peak resident memory is its own), from a customer file
on disk to an assigned file on disk:

* territory: :func:`territory.assign.assign_file` (Arrow: read, assign, append the columns,
  write), every input row and column kept, statuses, nearest grid of outside points;
* sjoin: pandas reads the file, ``gpd.sjoin(points, sub_grids, predicate="intersects")``,
  main grid and branch by the sub-grid's parents, pandas writes the file. It does less (no
  nearest grid, a point on a shared edge comes out twice) and holds the whole file in memory,
  so it is run on the smaller sizes only.
* SedonaDB, when the ``sedonadb`` package imports: the same point-in-polygon join in SQL.

Points: half uniform over the plan's bounds, half clustered like its customers; columns
``customer_id`` (int64), ``lng``, ``lat`` (float64) and a text ``segment``. Files go to
``--tmp`` and are deleted at the end. Rates are rows per second of wall time and per second of
CPU time (all threads of the run); the machine is shared, so the CPU rates and the ratios
(measured in the same minute) are the figures to compare.

    python bench/assign_files.py --plan PLAN [--sizes 2000000 5000000] [--big 50000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assign import make_points, plan_path  # noqa: E402

from territory.plan import Plan  # noqa: E402

SEGMENTS = np.array(["家庭", "政企", "校园", "other"])

TERRITORY = """
import json, resource, sys, time, logging
logging.getLogger("territory").setLevel(logging.ERROR)
from territory.assign import Columns, assign_file, open_index
index = open_index(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
counts = assign_file(index, sys.argv[2], sys.argv[3], columns=Columns(crs="wgs84"))
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cpu = time.process_time() - c
print(json.dumps({"wall": wall, "cpu": cpu, "rss_mb": rss, "rows": sum(counts.values())}))
"""

SJOIN = """
import json, resource, sys, time
import geopandas as gpd, pandas as pd
from territory.plan import Plan
plan = Plan.load(sys.argv[1])
subs = plan.grids("sub_grid")[["grid_id", "parent_id", "geometry"]]
mains = plan.grids("main_grid")
main_of = dict(zip(subs["grid_id"], subs["parent_id"]))
branch_of = dict(zip(mains["grid_id"], mains["parent_id"]))
src, dst = sys.argv[2], sys.argv[3]
t, c = time.perf_counter(), time.process_time()
df = pd.read_parquet(src) if src.endswith(".parquet") else pd.read_csv(src)
pts = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df["lng"], df["lat"]), crs=4326)
hit = gpd.sjoin(pts, subs[["grid_id", "geometry"]], how="left", predicate="intersects")
hit["main_grid_id"] = hit["grid_id"].map(main_of)
hit["branch_id"] = hit["main_grid_id"].map(branch_of)
out = pd.DataFrame(hit.drop(columns=["geometry", "index_right"]))
out.to_parquet(dst) if dst.endswith(".parquet") else out.to_csv(dst, index=False)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "cpu": time.process_time() - c, "rss_mb": rss, "rows": len(df)}))
"""

SEDONA = """
import json, resource, sys, time
import sedonadb
from territory.plan import Plan
plan = Plan.load(sys.argv[1])
subs = plan.grids("sub_grid")[["grid_id", "parent_id", "geometry"]]
sd = sedonadb.connect()
sd.create_data_frame(subs).to_view("grids")
src, dst = sys.argv[2], sys.argv[3]
t, c = time.perf_counter(), time.process_time()
if src.endswith(".parquet"):
    sd.read_parquet(src).to_view("points")
else:
    import pyarrow.csv as pacsv
    sd.create_data_frame(pacsv.read_csv(src)).to_view("points")
out = sd.sql("SELECT p.*, g.grid_id AS sub_grid_id, g.parent_id AS main_grid_id "
             "FROM points p LEFT JOIN grids g "
             "ON ST_Intersects(ST_SetSRID(ST_Point(p.lng, p.lat), 4326), g.geometry)")
out.to_parquet(dst) if dst.endswith(".parquet") else out.to_csv(dst)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "cpu": time.process_time() - c, "rss_mb": rss, "rows": 0}))
"""


def sedona_imports() -> bool:
    """Whether ``sedonadb`` imports in the runs' environment (PYTHONPATH included)."""
    res = subprocess.run([sys.executable, "-c", "import sedonadb"], capture_output=True,
                         check=False)
    return res.returncode == 0


def write_points(plan: Plan, n: int, path: Path, rng: np.random.Generator) -> None:
    """``n`` customers to Parquet or CSV, a million at a time (flat memory at 50 M)."""
    writer = None
    step = 1_000_000
    try:
        for lo in range(0, n, step):
            m = min(step, n - lo)
            x, y = make_points(plan, m, 0.5, rng)
            table = pa.table({"customer_id": np.arange(lo, lo + m, dtype=np.int64),
                              "lng": x.round(7), "lat": y.round(7),
                              "segment": SEGMENTS[rng.integers(0, 4, m)]})
            if writer is None:
                writer = (pq.ParquetWriter(path, table.schema) if path.suffix == ".parquet"
                          else pacsv.CSVWriter(path, table.schema))
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def run(script: str, plan: Path, src: Path, dst: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", script, str(plan), str(src), str(dst)],
                         capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    if dst.is_dir():
        shutil.rmtree(dst)
    dst.unlink(missing_ok=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def line(n: int, fmt: str, name: str, r: dict, base: dict | None) -> None:
    text = (f"{n:>11,} {fmt:>8} {name:>10} {r['wall']:8.2f} {n / r['wall'] / 1e6:8.2f} "
            f"{r['cpu']:7.2f} {n / r['cpu'] / 1e6:8.2f} {r['rss_mb']:12.0f}")
    if base is not None:
        text += (f"   territory {r['wall'] / base['wall']:.1f}x faster (wall), "
                 f"{r['cpu'] / base['cpu']:.1f}x (cpu), "
                 f"{r['rss_mb'] / base['rss_mb']:.1f}x less memory")
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 5_000_000])
    ap.add_argument("--big", type=int, default=0, help="also territory alone on this many "
                                                       "rows (memory flatness)")
    ap.add_argument("--sjoin-max", type=int, default=2_000_000)
    ap.add_argument("--formats", nargs="+", default=["parquet", "csv"])
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/territory-bench-files"))
    args = ap.parse_args()
    path = plan_path(args.plan)
    plan = Plan.load(path)
    from territory.assign import open_index

    open_index(path)  # the sidecar, so the runs time only the batch
    print(f"plan {path}: {len(plan.units)} units, "
          f"{plan.units['sub_grid_id'].nunique()} sub-grids")
    args.tmp.mkdir(parents=True, exist_ok=True)
    sedona = sedona_imports()
    print("SedonaDB: " + ("imports, compared" if sedona else "not installed, left out"))
    rng = np.random.default_rng(0)
    print(f"{'rows':>11} {'fmt':>8} {'method':>10} {'wall s':>8} {'Mrows/s':>8} "
          f"{'cpu s':>7} {'Mrows/cpu-s':>8} {'peak RSS MB':>12}")
    try:
        for n in [*args.sizes, *([args.big] if args.big else [])]:
            for fmt in args.formats:
                src = args.tmp / f"in-{n}.{fmt}"
                write_points(plan, n, src, rng)
                out = args.tmp / f"out-{n}.{fmt}"
                t = run(TERRITORY, path, src, out)
                line(n, fmt, "territory", t, None)
                if n <= args.sjoin_max:
                    line(n, fmt, "sjoin", run(SJOIN, path, src, out), t)
                    if sedona:
                        line(n, fmt, "sedonadb", run(SEDONA, path, src, out), t)
                src.unlink()
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
