"""Shared fixtures: tiny lattices and generated service areas."""

from __future__ import annotations

import geopandas as gpd
import networkx as nx
import numpy as np
import pytest
import shapely

from territory.plan import Plan
from territory.units import build_units


def lattice(
    w: int, h: int, *, seed: int = 0, size_m: float = 100.0, low: int = 50, high: int = 150
) -> nx.Graph:
    """A w x h grid of square units with random subscribers and workload."""
    rng = np.random.default_rng(seed)
    g = nx.grid_2d_graph(w, h)
    g = nx.convert_node_labels_to_integers(g, label_attribute="pos", ordering="sorted")
    for _, d in g.nodes(data=True):
        px, py = d.pop("pos")
        d["x"], d["y"] = float(px * size_m), float(py * size_m)
        d["area_m2"] = size_m**2
        d["subscribers"] = float(rng.integers(low, high))
        d["workload"] = float(rng.integers(1, 20))
    for _, _, d in g.edges(data=True):
        d["length_m"] = size_m
        d["bridge"] = False
    return g


def random_areas(seed: int, n_areas: int = 4, span: float = 0.08) -> gpd.GeoDataFrame:
    """A service area near Shenzhen cut into Voronoi districts, EPSG:4326."""
    rng = np.random.default_rng(seed)
    x0, y0 = 114.0 + rng.uniform(0, 0.1), 22.6 + rng.uniform(0, 0.1)
    # an irregular outline: a convex hull of random points
    pts = shapely.points(x0 + rng.uniform(0, span, 12), y0 + rng.uniform(0, span * 0.8, 12))
    outline = shapely.convex_hull(shapely.multipoints(pts))
    seeds = shapely.multipoints(
        np.column_stack([x0 + rng.uniform(0, span, n_areas), y0 + rng.uniform(0, span, n_areas)])
    )
    cells = shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=outline.buffer(0.1)))
    parts = [shapely.intersection(c, outline) for c in cells]
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    return gpd.GeoDataFrame(
        {"district": [f"D{i}" for i in range(len(parts))]}, geometry=parts, crs="EPSG:4326"
    )


@pytest.fixture
def grid_graph() -> nx.Graph:
    return lattice(10, 10)


@pytest.fixture(scope="session")
def tiny_units() -> gpd.GeoDataFrame:
    """A few dozen H3 units over two small districts, with subscribers and a branch each."""
    units = build_units(random_areas(0, n_areas=2, span=0.02), area_column="district",
                        resolution=9)
    units["subscribers"] = np.random.default_rng(1).integers(0, 100, len(units)).astype(float)
    units["branch_id"] = units["area_id"]
    return units


def make_plan(units: gpd.GeoDataFrame, seed: int) -> Plan:
    """A plan over ``units`` with its own labels and metrics, made without a solver (for
    tests of storage: each seed gives another plan)."""
    rng = np.random.default_rng(seed)
    units = units.copy()
    units["main_grid_id"] = units["branch_id"] + "-M01"
    units["sub_grid_id"] = units["main_grid_id"] + "-S" + rng.integers(1, 3, len(units)).astype(str)
    counts = units.groupby("sub_grid_id")["subscribers"].sum().to_dict()
    return Plan(units=units, measures=["subscribers"], params={"seed": seed},
                metrics={"subscribers_per_sub_grid": counts})
