#!/usr/bin/env python
"""``territory demo --customers N`` on both shipped cities: time and validity by size.

Each run is the real command (a child process, one at a time, the sizes chosen by
``territory.sizing.demo_sizing``), timed from start to exit in wall time (which depends on
what else runs on the machine) and CPU time (the command's and its workers', which depends
much less); the plan it writes is then checked with the project's own validators:
``metrics.json`` (every branch, main grid and sub-grid contiguous on the unit graph, every
measure within ±5 % of the parent's mean, no overlap, no gap beyond
``territory.metrics.GAP_TOLERANCE_M2``) and
``territory.metrics.nesting_ok`` on the saved plan.

    .venv/bin/python bench/demo_sizes.py                       # 5 000 ... 2 000 000, both cities
    .venv/bin/python bench/demo_sizes.py --sizes 5000,20000 --cities xiamen
    .venv/bin/python bench/demo_sizes.py --plan-only          # skip assignment, reports, maps
    .venv/bin/python bench/demo_sizes.py --sizes 2000000 --keep /tmp/runs   # keep the output

``--plan-only`` times the plan alone (``territory.demo.demo_job`` then the pipeline, as the
command runs them) and skips the customer assignment, reports and maps the command writes
after it; useful at 2 000 000 customers (1 000 field maps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from territory.demo import DEMO_BALANCE, demo_areas, demo_job
from territory.metrics import GAP_TOLERANCE_M2, nesting_ok
from territory.plan import Plan
from territory.sizing import demo_sizing

SIZES = (5_000, 20_000, 200_000, 2_000_000)
CITIES = ("shenzhen", "xiamen")


def failed_checks(metrics: dict, plan: Plan) -> list[str]:
    """The plan checks that fail (empty: the plan is valid)."""
    bad = [] if nesting_ok(plan) else ["nesting"]
    for level in ("branch", "main_grid", "sub_grid"):
        m = metrics[level]
        if not m["all_contiguous"]:
            bad.append(f"{level} contiguity")
        cov = m["coverage"]
        if cov["overlap_m2"] > 1.0:
            bad.append(f"{level} overlap {cov['overlap_m2']:.0f} m²")
        if cov.get("gap_m2", 0.0) > GAP_TOLERANCE_M2:
            bad.append(f"{level} gap {cov['gap_m2']:.0f} m²")
    for level in ("main_grid", "sub_grid"):
        for measure, tol in DEMO_BALANCE.items():
            dev = metrics[level][measure]["max_abs_deviation"]
            if dev > tol + 1e-9:
                bad.append(f"{level} {measure} {dev:.2%}")
    return bad


def adapted(params: dict) -> str:
    """What the demo changed where the loads left no choice (see the README)."""
    said = [f"{len(params.get(key) or ())} {what}" for key, what in (
        ("main_grids_reduced", "branches with fewer main grids"),
        ("sub_grids_reduced", "main grids with fewer sub-grids"),
        ("key_account_groups_released", "key accounts let go")) if params.get(key)]
    return f"; {', '.join(said)}" if said else ""


def _peak_rss_mb() -> float:
    """The largest resident set so far of this process or any child it waited for (the
    command, or the plan's worker processes), MB: a run's peak when each size and city
    runs in its own invocation."""
    return max(resource.getrusage(who).ru_maxrss
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_command(city: str, n: int, out: Path, workers: int) -> tuple[float, float, str]:
    """``territory demo`` as a user runs it; wall and CPU seconds (the command and its
    workers: what the run would take on an idle machine, give or take the parallel share),
    and the error text (if any)."""
    exe = Path(sys.executable).parent / "territory"
    cmd = [str(exe), "demo", "--city", city, "--customers", str(n), "--out", str(out),
           "--workers", str(workers)]
    t0, c0 = time.perf_counter(), _cpu_children()
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    dt, cpu = time.perf_counter() - t0, _cpu_children() - c0
    # the error is the last thing the command says (progress lines come first)
    return dt, cpu, "" if res.returncode == 0 else " ".join(res.stderr.split())[-600:]


def run_plan_only(city: str, n: int, out: Path, workers: int) -> tuple[float, float, str]:
    """The plan alone, in this process: the same two steps the command runs first."""
    from territory.errors import PartialPlanError, TerritoryError
    from territory.pipeline import run

    t0, c0 = time.perf_counter(), time.process_time() + _cpu_children()
    error = ""
    try:
        job = demo_job(city, n, workers=workers)
        result = run(job.inputs, job.units, job.spec)
    except PartialPlanError as exc:  # the plan with its failing grids flagged: kept too
        result, error = exc.result, str(exc)[:400]
    except TerritoryError as exc:
        cpu = time.process_time() + _cpu_children() - c0
        return time.perf_counter() - t0, cpu, str(exc)[:400]
    dt = time.perf_counter() - t0
    cpu = time.process_time() + _cpu_children() - c0
    out.mkdir(parents=True, exist_ok=True)
    result.plan.save(out / "plan.gpkg")
    (out / "metrics.json").write_text(json.dumps(result.metrics, default=str))
    return dt, cpu, error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--cities", default=",".join(CITIES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--plan-only", action="store_true")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep each run's output in KEEP/CITY-N (to inspect a failing plan)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cities = args.cities.split(",")
    runner = run_plan_only if args.plan_only else run_command
    head = (f"{'city':>9} {'customers':>9} {'branches':>8} {'main x sub':>10} {'unit':>5} "
            f"{'res':>3} {'units':>6} {'wall s':>7} {'CPU s':>7} {'peak MB':>7}  valid")
    print(head, flush=True)
    for n in sizes:
        for city in cities:
            size = demo_sizing(n, len(demo_areas(city)))
            with tempfile.TemporaryDirectory(prefix=f"demo-{city}-{n}-") as tmp:
                out = args.keep / f"{city}-{n}" if args.keep else Path(tmp)
                dt, cpu, error = runner(city, n, out, args.workers)
                units, verdict = "—", f"FAILED: {error}"
                if not error:
                    plan = Plan.load(out / "plan.gpkg")
                    metrics = json.loads((out / "metrics.json").read_text())
                    bad = failed_checks(metrics, plan)
                    units = str(len(plan.units))
                    dev = max(metrics[lv][m]["max_abs_deviation"]
                              for lv in ("main_grid", "sub_grid") for m in DEMO_BALANCE)
                    verdict = (f"yes (max dev {dev:.2%})" if not bad
                               else "NO: " + "; ".join(bad)) + adapted(plan.params)
            print(f"{city:>9} {n:>9} {size.n_branches:>8} "
                  f"{f'{size.n_main} x {size.n_sub}':>10} {size.target_per_unit:>5g} "
                  f"{size.resolution:>3} {units:>6} {dt:>7.1f} {cpu:>7.1f} "
                  f"{_peak_rss_mb():>7.0f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
