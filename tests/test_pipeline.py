"""The plan's up-front checks: parameters and tables refused before any unit is built."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given
from hypothesis import strategies as st

from territory.errors import InvalidInputError
from territory.hierarchy import HierarchySpec
from territory.pipeline import Inputs, UnitOptions, run, to_wgs84_columns, validate

AREAS = gpd.GeoDataFrame({"adcode": ["653101", "653121"]},  # Kashgar: longitudes below 90°
                         geometry=[shapely.box(75.9, 39.4, 76.0, 39.5),
                                   shapely.box(76.0, 39.4, 76.1, 39.5)], crs="EPSG:4326")


def customers(n: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"lng": rng.uniform(75.9, 76.1, n), "lat": rng.uniform(39.4, 39.5, n),
                         "subscribers": rng.integers(1, 5, n)})


@pytest.fixture
def no_unit_building(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("build_units was called before the input was checked")

    monkeypatch.setattr("territory.pipeline.build_units", refuse)


@pytest.mark.parametrize("spec, match", [
    (HierarchySpec({"subscribers": 0.0}, n_main=2), "between 0 and 1"),
    (HierarchySpec({"subscribers": 0.05}, n_main=0), "n_main"),
    (HierarchySpec({"subscribers": 0.05}, n_main=1), "each of 2 branches"),
    (HierarchySpec({"subscribers": 0.05}, n_main={"653101": 1}), "no count for branches"),
    (HierarchySpec({"subscribers": 0.05}), "number of main grids"),
    (HierarchySpec({"subscribers": 0.05}, n_main=2, n_sub=0), "n_sub"),
    (HierarchySpec({"subscribers": 0.05}, n_main=2, time_limit_sub=float("nan")),
     "time_limit_sub"),
    (HierarchySpec({"revenue": 0.05}, n_main=2), "balance measures ['revenue']"),
])
def test_run_checks_before_building_units(no_unit_building, spec, match):
    with pytest.raises(InvalidInputError, match=match.replace("[", r"\[").replace("]", r"\]")):
        run(Inputs(AREAS, "adcode", customers()), UnitOptions(), spec)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_tolerance_accepted_exactly_in_the_open_unit_interval(t):
    spec = HierarchySpec({"subscribers": t}, n_main=2)
    if 0 < t < 1:
        spec.validate()
    else:
        with pytest.raises(InvalidInputError, match="tolerance"):
            spec.validate()


def test_swapped_columns_inside_the_degree_ranges_are_caught_by_the_service_area():
    """At Kashgar both coordinates are below 90°: only the service area tells them apart."""
    swapped = customers().rename(columns={"lng": "lat", "lat": "lng"})
    to_wgs84_columns(swapped, crs="wgs84")  # plausible degrees: nothing to say yet
    with pytest.raises(InvalidInputError, match="looks like lat and lng are swapped"):
        validate(Inputs(AREAS, "adcode", swapped), UnitOptions(),
                 HierarchySpec({"subscribers": 0.05}, n_main=2))


def test_a_few_stray_rows_are_not_called_swapped():
    table = customers()
    table.loc[:4, ["lng", "lat"]] = table.loc[:4, ["lat", "lng"]].to_numpy()
    validate(Inputs(AREAS, "adcode", table), UnitOptions(),
             HierarchySpec({"subscribers": 0.05}, n_main=2))


def test_duplicate_branch_codes_are_refused_with_rows():
    areas = pd.concat([AREAS, AREAS.iloc[[0]]], ignore_index=True)
    with pytest.raises(InvalidInputError, match=r"'653101' in rows \[0, 2\]"):
        validate(Inputs(areas, "adcode", customers()), UnitOptions(),
                 HierarchySpec({"subscribers": 0.05}, n_main=2))
    validate(Inputs(areas, "adcode", customers(), dissolve_branches=True), UnitOptions(),
             HierarchySpec({"subscribers": 0.05}, n_main=2))


def test_empty_customer_frame():
    with pytest.raises(InvalidInputError, match="customers: the table is empty"):
        validate(Inputs(AREAS, "adcode", customers().iloc[:0]), UnitOptions(),
                 HierarchySpec({"subscribers": 0.05}, n_main=2))


def test_customers_all_outside_the_service_area(no_unit_building):
    elsewhere = customers().assign(lng=lambda d: d["lng"] + 40)  # in another country
    with pytest.raises(InvalidInputError, match="none of the 50 rows lies within"):
        run(Inputs(AREAS, "adcode", elsewhere), UnitOptions(),
            HierarchySpec({"subscribers": 0.05}, n_main=2))
