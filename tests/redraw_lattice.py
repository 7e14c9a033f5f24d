"""A tiny lattice plan (8 x 8 square units near Shenzhen) for fast edit/rebalance tests."""

from __future__ import annotations

import geopandas as gpd
import networkx as nx
import numpy as np
import shapely

from territory.graph import build_graph
from territory.plan import Plan

SIZE = 0.002  # degrees, ~200 m


def lattice_plan(seed: int = 0, n: int = 8, tolerance: float = 0.1) -> tuple[Plan, nx.Graph]:
    """Two branches (west, east), each two main grids (south, north) of two sub-grids."""
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n * n), n)
    xs, ys = 114.0 + np.arange(n + 1) * SIZE, 22.6 + np.arange(n + 1) * SIZE
    geoms = shapely.box(xs[cols], ys[rows], xs[cols + 1], ys[rows + 1])  # shared edges exact
    half = n // 2
    branch = np.where(cols < half, "B1", "B2")
    main = np.char.add(np.char.add(branch, "-M0"), np.where(rows < half, "1", "2"))
    sub = np.char.add(np.char.add(main, "-S"), np.where(cols % half < half // 2, "1", "2"))
    customers = rng.integers(0, 30, n * n)
    units = gpd.GeoDataFrame({
        "branch_id": branch, "main_grid_id": main, "sub_grid_id": sub,
        "customers": customers, "subscribers": customers * 1.5 + rng.integers(0, 5, n * n),
        "households": rng.integers(0, 100, n * n),
    }, geometry=geoms, crs="EPSG:4326", index=[f"u{r}_{c}" for r, c in zip(rows, cols,
                                                                          strict=True)])
    units.index.name = "unit_id"
    plan = Plan(units=units, measures=["subscribers"],
                params={"measures": {"subscribers": tolerance}})
    return plan, build_graph(units)
