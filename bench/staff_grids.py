"""Joint planning's sub-grid counts (territory.staff_grids.sub_counts): time and quality.

Main grids of ``t_g`` people's months of workload each (``W_g = 100 h x t_g``, one
person's month = 100 h), seeded, in two shapes:

* ``balanced``: what the counts before the draw (``branch_counts``) ask of a branch: its main
  grids all of one whole team ``n_b`` (2..6 by branch, 10 main grids a branch) balanced to
  ±5 % of the branch mean, ``t_g = n_b x U(0.95, 1.05)``;
* ``arbitrary``: main grids of any size, ``t_g ~ U(3, 8)``: some fall between whole teams
  for every city figure, so the programme refuses (proven) where rounding misses silently.

The usual alternative is rounding each grid on its own, ``n_g = round(t_g)``: its
largest deviation of a main grid's workload per staff from the city's is printed beside the
integer programme's (which holds ±10 % or refuses), with the MIP's CPU and wall seconds
(HiGHS, one thread) and the people in all.

    python bench/staff_grids.py [--grids 30,300,1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from territory.errors import InfeasibleError
from territory.staff_grids import per_staff_deviation, sub_counts

TOLERANCE = 0.10


def run(shape: str, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if shape == "balanced":
        team = np.repeat(rng.integers(2, 7, -(-n // 10)), 10)[:n]
        t = team * rng.uniform(0.95, 1.05, n)
    else:
        t = rng.uniform(3, 8, n)
    t = pd.Series(t, index=[f"M{i:04d}" for i in range(n)])
    W = 100 * t
    rounded = t.round().clip(lower=1)
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        counts = sub_counts(W, t, pd.Series(500, index=t.index), TOLERANCE)
        mip = float(np.abs(per_staff_deviation(W.to_numpy(), counts.to_numpy())).max())
        people = int(counts.sum())
    except InfeasibleError as exc:
        mip, people = float("nan"), 0
        refused = "refused, not proven" if "not proven" in str(exc) else "refused, proven"
    else:
        refused = "-"
    return {"shape": shape, "main grids": n, "MIP": refused,
            "people (rounded)": int(rounded.sum()), "people (MIP)": people,
            "max dev rounded": round(float(np.abs(per_staff_deviation(
                W.to_numpy(), rounded.to_numpy())).max()), 4),
            "max dev MIP": round(mip, 4),
            "MIP CPU s": round(time.process_time() - cpu, 2),
            "MIP wall s": round(time.perf_counter() - wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", default="30,300,1000")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [run(shape, int(n), args.seed) for shape in ("balanced", "arbitrary")
            for n in args.grids.split(",")]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
