"""A small shipped-city plan shared by the redraw tests (built once per test process)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import geopandas as gpd
import networkx as nx
import pandas as pd

from territory.boundaries import load_city
from territory.hierarchy import HierarchySpec
from territory.pipeline import Inputs, UnitOptions, run
from territory.plan import Plan
from territory.synth import generate_city

#: three Xiamen districts, coarse units: a real map in seconds
DISTRICTS = ["350203", "350205", "350206"]
MEASURES = {"subscribers": 0.15, "workload": 0.15}
OPTS = UnitOptions(resolution=8, target_per_unit=None)


@dataclass(frozen=True)
class City:
    areas: gpd.GeoDataFrame
    inputs: Inputs
    plan: Plan
    graph: nx.Graph
    customers: pd.DataFrame


@cache
def small_city() -> City:
    areas = load_city("xiamen")
    areas = areas[areas["adcode"].isin(DISTRICTS)].reset_index(drop=True)
    data = generate_city(areas, n_customers=4000, seed=1)
    inputs = Inputs(areas, "adcode", data.customers, data.communities, data.stores,
                    data.key_accounts)
    spec = HierarchySpec(measures=dict(MEASURES), n_main=5, n_sub=2, time_limit_main=2,
                         time_limit_sub=1, workers=1)
    result = run(inputs, OPTS, spec)
    return City(areas, inputs, result.plan, result.graph, data.customers)
