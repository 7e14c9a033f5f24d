"""The demo's job: a shipped city, synthetic customers, and a plan request sized for them.

``territory demo`` runs :func:`demo_job` and then :func:`territory.pipeline.run`; tests and
``bench/demo_sizes.py`` run exactly the same two steps, so what they check is what the
command does. The sizes come from :func:`territory.sizing.demo_sizing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import pandas as pd

from territory.boundaries import load_city
from territory.hierarchy import HierarchySpec
from territory.pipeline import Inputs, UnitOptions
from territory.request import PlanRequest
from territory.sizing import DemoSizing, demo_sizing
from territory.synth import SyntheticCity, generate_city
from territory.units import locate_points, projected

#: The demo balances both of these within ±5 % of the parent's mean.
DEMO_BALANCE = {"subscribers": 0.05, "workload": 0.05}
#: A part of a district at least this share of its area is a branch of its own.
EXCLAVE_SHARE = 0.1


def demo_areas(city: str) -> gpd.GeoDataFrame:
    """The shipped districts of ``city`` with a ``branch`` column: the district's adcode,
    except that a large separate part of a district (at least :data:`EXCLAVE_SHARE` of its
    area: Shenzhen's Longgang comes in two halves, the eastern one beyond Pingshan) is a
    branch of its own, ``{adcode}-2``. The operators' rule: a geographically separate area
    gets its own branch or area (相对独立的地理区域 … 设立独立的分公司或片区). A main grid
    can then never be asked to span two pieces of land. Islets stay with their district.
    """
    areas = load_city(city)
    parts = areas.explode(index_parts=False).reset_index(drop=True)
    area = projected(parts).area
    share = area / area.groupby(parts["adcode"]).transform("sum")
    rank = share.groupby(parts["adcode"]).rank(ascending=False, method="first").astype(int)
    large = (share >= EXCLAVE_SHARE) & (rank > 1)
    parts["branch"] = parts["adcode"].where(~large, parts["adcode"] + "-" + rank.astype(str))
    out = parts.dissolve(by="branch", as_index=False, sort=True)
    return out[["branch", *areas.columns]]


@dataclass
class DemoJob:
    """What :func:`territory.pipeline.run` needs for the demo, and what it was made from."""

    size: DemoSizing
    data: SyntheticCity
    inputs: Inputs
    units: UnitOptions
    spec: HierarchySpec
    #: the plan request the sizes make (what ``spec`` and ``units`` are derived from)
    request: PlanRequest


def demo_job(
    city: str,
    customers: int,
    *,
    seed: int = 0,
    workers: int = 2,
    main_grids: int | None = None,
    sub_grids: int | None = None,
    target_per_unit: float | None = None,
    resolution: int | None = None,
) -> DemoJob:
    """Generate ``customers`` synthetic customers (and stores, communities, key accounts) on
    the shipped ``city`` and size the plan request for them; overrides as in
    :func:`~territory.sizing.demo_sizing`."""
    areas = demo_areas(city)
    size = demo_sizing(customers, len(areas), main_grids=main_grids,
                       sub_grids=sub_grids, target_per_unit=target_per_unit,
                       resolution=resolution)
    data = generate_city(areas, n_customers=customers, seed=seed, n_stores=size.n_stores)
    # the synthetic tables are generated in WGS84 lng/lat, which is what Inputs holds
    inputs = Inputs(areas, "branch", data.customers, data.communities, data.stores,
                    data.key_accounts)
    # Unless the sub-grid count is given, it is an average: each main grid gets as many as
    # its subscribers hold mean sub-grids (at least one), so the main grid of a sparse
    # district (one per branch, whatever its size) is not cut into crumbs it cannot balance.
    sub_size = None
    if sub_grids is None:
        sub_size = float(data.customers["subscribers"].sum()) / (size.n_main * size.n_sub)
    request = PlanRequest.build(
        balance=dict(DEMO_BALANCE), main_grids=size.n_main, sub_grids=size.n_sub,
        sub_size=sub_size, resolution=size.resolution, target_per_unit=size.target_per_unit,
        min_resolution=size.min_resolution, time_limit_main=size.time_limit_main,
        time_limit_sub=size.time_limit_sub, seed=seed)
    spec = request.spec(workers=workers, fit_main=main_grids is None)
    return DemoJob(size, data, inputs, request.unit_options(), spec, request)


def store_units_by_main_grid(units: gpd.GeoDataFrame, stores: pd.DataFrame) -> pd.Series:
    """For each main grid of a plan's units, how many distinct units holding a store it has
    (0 for a grid without a store)."""
    pos = locate_points(units, stores["lng"].to_numpy(float), stores["lat"].to_numpy(float))
    held = units.iloc[sorted(set(pos[pos >= 0].tolist()))]
    counts = held.groupby("main_grid_id").size()
    return counts.reindex(units["main_grid_id"].unique(), fill_value=0).sort_index()
