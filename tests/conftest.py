"""Shared fixtures: tiny lattices and generated service areas."""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pytest
import shapely

from territory.assign import open_index
from territory.assign_index import AssignmentIndex
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
# -- a real plan for the assignment tests (built once per session) --------------------------
@pytest.fixture(scope="session")
def plan_file(tmp_path_factory) -> Path:
    """A real plan, built once: Xiamen island (Siming, Huli), H3 resolution 7-9 clipped to
    the districts, 3 main grids of 2 sub-grids."""
    from territory.boundaries import load_city
    from territory.hierarchy import HierarchySpec
    from territory.pipeline import Inputs, UnitOptions, run
    from territory.synth import generate_city

    logging.getLogger("territory").setLevel(logging.ERROR)
    areas = load_city("xiamen")
    areas = areas[areas["adcode"].isin(["350203", "350206"])].reset_index(drop=True)
    data = generate_city(areas, n_customers=5000, seed=1)
    result = run(
        Inputs(areas, "adcode", data.customers),
        UnitOptions(resolution=9, target_per_unit=40, min_resolution=7),
        HierarchySpec(measures={"subscribers": 0.5}, n_main=3, n_sub=2, time_limit_main=3,
                      time_limit_sub=1, workers=1),
    )
    return result.plan.save(tmp_path_factory.mktemp("plan") / "plan.gpkg")


@pytest.fixture(scope="session")
def plan(plan_file) -> Plan:
    return Plan.load(plan_file)


@pytest.fixture(scope="session")
def index(plan_file) -> AssignmentIndex:
    return open_index(plan_file)


@pytest.fixture(scope="session")
def inside_points(plan) -> tuple[np.ndarray, np.ndarray]:
    """One point well inside every unit (far from any boundary)."""
    pts = shapely.point_on_surface(plan.units.geometry.values)
    return shapely.get_x(pts), shapely.get_y(pts)


def customers(plan: Plan, n: int, seed: int = 0) -> pd.DataFrame:
    """Customers around the plan (some outside), text coordinates with gaps and words."""
    rng = np.random.default_rng(seed)
    b = plan.units.total_bounds
    lng = rng.uniform(b[0] - 0.01, b[2] + 0.01, n).round(7).astype(object)
    lat = rng.uniform(b[1] - 0.01, b[3] + 0.01, n).round(7).astype(object)
    lng[::97] = None
    lat[::89] = "n/a"
    return pd.DataFrame({"customer": [f"C{i:06d}" for i in range(n)], "lng": lng, "lat": lat,
                         "code": [f"{i % 13:03d}" for i in range(n)]})
