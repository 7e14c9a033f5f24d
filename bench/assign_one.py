"""Single-point assignment: the index's plain-Python path against its array path, per point.

A service answers one point per request (``GET /assign``). The array path
(:meth:`AssignmentIndex.locate` then :meth:`AssignmentIndex.nearest` on one-element arrays)
pays numpy's per-call overhead twenty times and more; the single-point path
(:meth:`AssignmentIndex.locate_one`, :meth:`AssignmentIndex.nearest_one`) walks the same
arrays in Python arithmetic, with the same answers to the bit (checked here on every point
timed). CPU microseconds per point in this process, by kind of point:

* inside: in a pixel no boundary crosses (the raster alone answers);
* near a boundary: in a pixel a boundary crosses (an orientation test, or point-in-polygon
  tests among the pixel's candidate units);
* outside, on the raster: the nearest grid among the raster cell's candidate segments;
* outside, off the raster: one nearest-neighbour query on the boundary segments.

Points are uniform over the plan's bounding box grown by ``--margin`` degrees on each side
(so that all four kinds occur), as bench/api.py's are over a box around its plan.

    python bench/assign_one.py [--plan PATH] [--points 20000] [--margin 0.03]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.assign import plan_path
from territory.assign import open_index

KINDS = ("inside", "near a boundary", "outside, on the raster", "outside, off the raster")


def kinds(index, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The kind of each point (a position in KINDS)."""
    inr, gx, gy = index._pixels(x, y)
    owner = index.locate(x, y)
    resolved = []  # the points whose pixel a boundary crosses
    resolve = index._resolve_one
    index._resolve_one = lambda *a: resolved.append((a[0], a[1])) or resolve(*a)
    try:
        for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
            index.locate_one(xi, yi)
    finally:
        del index._resolve_one
    near = np.zeros(len(x), dtype=bool)
    where = {p: i for i, p in enumerate(zip(x.tolist(), y.tolist(), strict=True))}
    near[[where[p] for p in resolved]] = True
    return np.select([near, owner >= 0, inr], [1, 0, 2], default=3)


def per_point(fn: Callable[[float, float], object], x: np.ndarray, y: np.ndarray
              ) -> tuple[list, float]:
    """Answers and CPU µs per point of ``fn`` called once per point."""
    xs, ys = x.tolist(), y.tolist()
    t0 = time.process_time()
    out = [fn(xi, yi) for xi, yi in zip(xs, ys, strict=True)]
    return out, (time.process_time() - t0) / max(len(xs), 1) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--margin", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    index = open_index(plan_path(args.plan))
    b = index.plan.units.total_bounds
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(b[0] - args.margin, b[2] + args.margin, args.points)
    y = rng.uniform(b[1] - args.margin, b[3] + args.margin, args.points)
    kind = kinds(index, x, y)
    index.nearest_one(float(b[0]) - 1, float(b[1]))  # the STRtree is built on first use
    # as the service does (api/main.py): the libraries' objects out of the collector's walks,
    # which would otherwise land, 100 ms at a time, in whichever path is being timed
    gc.collect()
    gc.freeze()

    def array_path(xi: float, yi: float) -> tuple[int, int, float]:
        unit = int(index.locate(np.array([xi]), np.array([yi]))[0])
        if unit >= 0:
            return unit, -1, 0.0
        near, dist = index.nearest(np.array([xi]), np.array([yi]))
        return unit, int(near[0]), float(dist[0])

    def single_path(xi: float, yi: float) -> tuple[int, int, float]:
        unit = index.locate_one(xi, yi)
        return (unit, -1, 0.0) if unit >= 0 else (unit, *index.nearest_one(xi, yi))

    print(f"{len(index.plan.units)} units; {args.points} points over the plan's box "
          f"+ {args.margin}°; CPU µs per point, one call per point")
    print(f"{'points':<26} {'share':>6} {'array path':>11} {'single':>8} {'ratio':>6}")
    total = {"array": 0.0, "single": 0.0}
    for k, name in enumerate(KINDS):
        sel = np.flatnonzero(kind == k)
        want, array_us = per_point(array_path, x[sel], y[sel])
        got, single_us = per_point(single_path, x[sel], y[sel])
        assert got == want, name  # the same answers, distances to the bit
        share = len(sel) / len(x)
        total["array"] += share * array_us
        total["single"] += share * single_us
        print(f"{name:<26} {share:>6.1%} {array_us:>11.1f} {single_us:>8.1f} "
              f"{array_us / max(single_us, 1e-9):>5.0f}x")
    print(f"{'all (weighted)':<26} {1:>6.0%} {total['array']:>11.1f} {total['single']:>8.1f} "
          f"{total['array'] / total['single']:>5.0f}x")


if __name__ == "__main__":
    main()
