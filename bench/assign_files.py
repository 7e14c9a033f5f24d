"""The nightly batch end to end, file to file: ``territory assign`` against geopandas.sjoin and
SedonaDB, in one command of bounded duration.

Every case is a child process timed from its start to its exit, from a customer file on disk
to an assigned file on disk, imports and plan loading included: what an operator's night job
costs. Its wall time, its CPU time (user + system, every thread) and its peak resident memory
come from the kernel (``wait4``). Cases:

* territory: the ``territory assign PLAN IN --out OUT --crs wgs84`` command (its assignment
  index already built beside the plan, as after the first run), every input row and column
  kept, statuses, nearest grid of outside points, the plan's id and version;
* sjoin: pandas reads the file, ``gpd.sjoin(points, sub_grids, predicate="intersects")`` on
  the plan's sub-grid polygons (read from a GeoParquet file prepared beforehand, with their
  main grid and branch), pandas writes the file. It does less (no nearest grid, a point on a
  shared edge comes out twice) and holds the whole file in memory: smaller sizes only;
* sedonadb, when the ``sedonadb`` package imports: the same point-in-polygon left join in
  SQL from the same files. Same limits as sjoin.

Points: half uniform over the plan's bounds, half clustered like its customers; columns
``customer_id`` (int64), ``lng``, ``lat`` (float64) and a text ``segment``. Files go to
``--tmp`` and are deleted at the end. Printed per case: rows/s of wall time, rows per
CPU-second, peak RSS, and for the alternatives their ratios to territory on the same file in
the same minute. On a shared machine compare CPU rates and ratios; the load average is
printed with every case. The default sizes show the memory is flat (CSV 2 M and 20 M rows,
Parquet 2 M and 50 M rows).

Duration: cases run in order until ``--budget`` seconds have passed (files written
included); a case still running then is stopped and reported as such, and the rest are
listed as skipped. About 5 minutes on an idle 2-core machine with the defaults (SedonaDB
installed), plus a few minutes once to build the bench plan when there is none.

    python bench/assign_files.py [--plan PLAN] [--budget 900]
    python bench/assign_files.py --small 5000000 --big-csv 0 --big-parquet 0   # one size
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assign import make_points, plan_path  # noqa: E402

from territory.plan import Plan  # noqa: E402

SEGMENTS = np.array(["家庭", "政企", "校园", "other"])

#: Prefixed to every child's code: its peak resident memory, VmHWM of /proc, written at exit.
#: Not ``ru_maxrss``: Linux carries the parent's peak over a fork into the child's.
HWM = """
import atexit, os
def _hwm():
    with open("/proc/self/status") as f, open(os.environ["BENCH_HWM"], "w") as out:
        out.write(next(l for l in f if l.startswith("VmHWM")).split()[1])
atexit.register(_hwm)
"""

TERRITORY = (HWM + "import sys; from territory.cli import app; sys.argv[0] = 'territory'; app()",
             "-q", "assign", "{plan}", "{src}", "--out", "{dst}", "--crs", "wgs84")

SJOIN = HWM + """
import sys
import geopandas as gpd, pandas as pd
grids, src, dst = sys.argv[1:4]
subs = gpd.read_parquet(grids)
df = pd.read_parquet(src) if src.endswith(".parquet") else pd.read_csv(src)
pts = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df["lng"], df["lat"]), crs=4326)
hit = gpd.sjoin(pts, subs, how="left", predicate="intersects")
out = pd.DataFrame(hit.drop(columns=["geometry", "index_right"]))
out.to_parquet(dst) if dst.endswith(".parquet") else out.to_csv(dst, index=False)
"""

SEDONA = HWM + """
import sys
import sedonadb
grids, src, dst = sys.argv[1:4]
sd = sedonadb.connect()
sd.read_parquet(grids).to_view("grids")
(sd.read_parquet(src) if src.endswith(".parquet") else sd.read(src)).to_view("points")
out = sd.sql("SELECT p.*, g.sub_grid_id, g.main_grid_id, g.branch_id FROM points p "
             "LEFT JOIN grids g ON ST_Intersects(ST_SetSRID(ST_Point(p.lng, p.lat), 4326), "
             "g.geometry)")
out.to_parquet(dst) if dst.endswith(".parquet") else out.to_csv(dst)
"""


@dataclass(frozen=True)
class Run:
    """One finished child: seconds of wall and CPU, peak RSS in MB; ``None`` if stopped."""

    wall: float
    cpu: float
    rss_mb: float
    error: str | None = None


def child(argv: list[str], deadline: float) -> Run:
    """Run ``argv`` (its code prefixed with :data:`HWM`) to its end or to ``deadline``
    (``time.monotonic``), measured by the kernel: wall, user + system CPU of all its
    threads, peak resident memory."""
    hwm = Path(tempfile.mkstemp(prefix="bench-hwm-")[1])
    env = {**os.environ, "BENCH_HWM": str(hwm), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while True:  # wait4, not Popen.wait: the kernel's account of the child's resources
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                return Run(time.monotonic() - start, 0, 0, "stopped: out of --budget")
            time.sleep(0.05)
        wall = time.monotonic() - start
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here: Popen must not wait for it again
        if code:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
            return Run(wall, 0, 0, f"failed ({code}): {text[-300:]}")
    rss_mb = int(hwm.read_text()) / 1024
    hwm.unlink()
    return Run(wall, usage.ru_utime + usage.ru_stime, rss_mb)


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


def write_grids(plan: Plan, path: Path) -> None:
    """The sub-grid polygons with their main grid and branch, as GeoParquet: what sjoin and
    SedonaDB join the points to (prepared once, like territory's index)."""
    subs = plan.grids("sub_grid")
    branch = plan.grids("main_grid").set_index("grid_id")["parent_id"]
    subs = subs.assign(sub_grid_id=subs["grid_id"], main_grid_id=subs["parent_id"],
                       branch_id=subs["parent_id"].map(branch).astype(str))
    subs[["sub_grid_id", "main_grid_id", "branch_id", "geometry"]].to_parquet(path)


def sedona_imports() -> bool:
    """Whether ``sedonadb`` imports in the runs' environment."""
    res = subprocess.run([sys.executable, "-c", "import sedonadb"], capture_output=True,
                         check=False)
    return res.returncode == 0


def line(n: int, fmt: str, name: str, r: Run, base: Run | None) -> None:
    load = f"load {os.getloadavg()[0]:4.1f}"
    if r.error:
        print(f"{n:>11,} {fmt:>8} {name:>10}   {r.error}   {load}", flush=True)
        return
    text = (f"{n:>11,} {fmt:>8} {name:>10} {r.wall:8.2f} {n / r.wall / 1e6:8.2f} "
            f"{r.cpu:7.2f} {n / r.cpu / 1e6:8.2f} {r.rss_mb:9.0f}   {load}")
    if base is not None and not base.error:
        text += (f"   = territory x {r.wall / base.wall:.2f} wall, x {r.cpu / base.cpu:.2f} "
                 f"CPU, x {r.rss_mb / base.rss_mb:.2f} memory")
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--small", type=int, default=2_000_000,
                    help="rows of the files every method runs on")
    ap.add_argument("--big-csv", type=int, default=20_000_000,
                    help="rows of the CSV territory alone runs on (0: none)")
    ap.add_argument("--big-parquet", type=int, default=50_000_000,
                    help="rows of the Parquet file territory alone runs on (0: none)")
    ap.add_argument("--no-alternatives", action="store_true",
                    help="territory alone, even on the small files")
    ap.add_argument("--budget", type=float, default=900.0,
                    help="seconds for the whole run, files written included")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/territory-bench-files"))
    args = ap.parse_args()
    deadline = time.monotonic() + args.budget
    path = plan_path(args.plan)
    plan = Plan.load(path)
    from territory.assign import open_index

    open_index(path)  # the sidecar, so the runs time the batch as every night after the first
    print(f"plan {path}: {len(plan.units)} units, "
          f"{plan.units['sub_grid_id'].nunique()} sub-grids; {os.cpu_count()} CPUs")
    args.tmp.mkdir(parents=True, exist_ok=True)
    grids = args.tmp / "sub_grids.parquet"
    sedona = sedona_imports()
    print("SedonaDB: " + ("imports, compared" if sedona else "not installed, left out"))
    methods = [] if args.no_alternatives else [("sjoin", SJOIN)] + (
        [("sedonadb", SEDONA)] if sedona else [])
    cases = [(args.small, "parquet", methods), (args.small, "csv", methods)]
    cases += [(n, fmt, []) for n, fmt in ((args.big_csv, "csv"), (args.big_parquet, "parquet"))
              if n]
    rng = np.random.default_rng(0)
    print(f"{'rows':>11} {'fmt':>8} {'method':>10} {'wall s':>8} {'Mrows/s':>8} "
          f"{'cpu s':>7} {'Mrows/cpu-s':>8} {'peak MB':>9}")
    try:
        if methods:
            write_grids(plan, grids)
        for i, (n, fmt, others) in enumerate(cases):
            if time.monotonic() > deadline:
                for m, f, _ in cases[i:]:
                    print(f"{m:>11,} {f:>8}   skipped: out of --budget", flush=True)
                break
            src, dst = args.tmp / f"in-{n}.{fmt}", args.tmp / f"out-{n}.{fmt}"
            write_points(plan, n, src, rng)
            argv = [sys.executable, "-c", *(a.format(plan=path, src=src, dst=dst)
                                            for a in TERRITORY)]
            base = child(argv, deadline)
            line(n, fmt, "territory", base, None)
            for name, script in others:
                dst.unlink(missing_ok=True)
                run = child([sys.executable, "-c", script, str(grids), str(src), str(dst)],
                            deadline)
                line(n, fmt, name, run, base)
            src.unlink()
            if dst.is_dir():
                shutil.rmtree(dst)
            dst.unlink(missing_ok=True)
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
