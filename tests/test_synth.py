"""Tests of the synthetic demo-data generator (territory.synth).

The boundary files are read directly with geopandas so these tests do not depend on
territory.boundaries. Cities are generated with ~20k customers to keep the module fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from territory.errors import InvalidInputError
from territory.key_accounts import key_account_footprints
from territory.sizing import demo_sizing
from territory.synth import (
    SEGMENT_SHARES,
    SyntheticCity,
    community_value_score,
    generate_city,
    relative_density,
    write_city,
)

DATA = Path("/work/shared/data/boundaries")
N = 20_000
UTM_50N = 32650  # Shenzhen (114 E) and Xiamen (118 E) are both in UTM zone 50N.
URBAN_SHENZHEN = {"福田区", "罗湖区", "南山区"}
TABLE_COLUMNS = {
    "customers": ["customer_id", "segment", "arpu", "subscribers", "workload"],
    "communities": [
        "community_id",
        "name",
        "households",
        "build_year",
        "owner_occupied_share",
        "entry_threshold",
        "value_score",
    ],
    "stores": ["store_id", "name", "kind"],
    "key_accounts": [
        "key_account_id",
        "name",
        "kind",
        "employees",
        "subscribers",
        "footprint_m",
    ],
}


@pytest.fixture(scope="module")
def shenzhen() -> gpd.GeoDataFrame:
    return gpd.read_file(DATA / "shenzhen_districts_wgs84.geojson")


@pytest.fixture(scope="module")
def xiamen() -> gpd.GeoDataFrame:
    return gpd.read_file(DATA / "xiamen_districts_wgs84.geojson")


@pytest.fixture(scope="module")
def city(shenzhen: gpd.GeoDataFrame) -> SyntheticCity:
    return generate_city(shenzhen, n_customers=N, seed=7)


def _district_of(table: gpd.GeoDataFrame, boundaries: gpd.GeoDataFrame) -> pd.Series:
    """District name of each point, by point-in-polygon (independent of the generator)."""
    out = pd.Series(pd.NA, index=table.index, dtype=object)
    x, y = table["lng"].to_numpy(), table["lat"].to_numpy()
    for name, geom in zip(boundaries["name"], boundaries.geometry, strict=True):
        out[shapely.contains_xy(geom, x, y)] = name
    return out


# ---------------------------------------------------------------------------- shape of tables


def test_tables_have_documented_columns_and_types(city: SyntheticCity) -> None:
    for name, table in city.tables().items():
        assert isinstance(table, gpd.GeoDataFrame)
        assert table.crs.to_epsg() == 4326
        assert (table.geometry.geom_type == "Point").all()
        for column in [*TABLE_COLUMNS[name], "lng", "lat", "synthetic"]:
            assert column in table.columns, (name, column)
        assert table["synthetic"].all()
        assert table["lng"].dtype == float and table["lat"].dtype == float
        np.testing.assert_array_equal(table["lng"].to_numpy(), table.geometry.x.to_numpy())
        np.testing.assert_array_equal(table["lat"].to_numpy(), table.geometry.y.to_numpy())
        id_column = TABLE_COLUMNS[name][0]
        assert table[id_column].is_unique


def test_exact_customer_count_and_ids(city: SyntheticCity) -> None:
    assert len(city.customers) == N
    assert city.customers["customer_id"].iloc[0] == "C0000001"
    assert city.customers["customer_id"].iloc[-1] == f"C{N:07d}"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=1, max_value=3_000),
    core_share=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_exact_count_any_parameters(
    xiamen: gpd.GeoDataFrame, n: int, core_share: float, seed: int
) -> None:
    city = generate_city(xiamen, n_customers=n, seed=seed, core_share=core_share)
    assert len(city.customers) == n
    assert len(city.communities) == max(1, round(n / 150))
    union = shapely.union_all(xiamen.geometry.values)
    for table in city.tables().values():
        assert shapely.contains_xy(union, table["lng"], table["lat"]).all()


def test_all_points_inside_boundaries(city: SyntheticCity, shenzhen: gpd.GeoDataFrame) -> None:
    union = shapely.union_all(shenzhen.geometry.values)
    for name, table in city.tables().items():
        inside = shapely.contains_xy(union, table["lng"].to_numpy(), table["lat"].to_numpy())
        assert inside.all(), f"{name}: {(~inside).sum()} points outside"


def test_frozen(city: SyntheticCity) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        city.customers = city.stores  # type: ignore[misc]


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_tables(shenzhen: gpd.GeoDataFrame) -> None:
    a = generate_city(shenzhen, n_customers=5_000, seed=3)
    b = generate_city(shenzhen, n_customers=5_000, seed=3)
    for name in TABLE_COLUMNS:
        pd.testing.assert_frame_equal(
            pd.DataFrame(a.tables()[name]), pd.DataFrame(b.tables()[name])
        )


def test_different_seed_different_tables(shenzhen: gpd.GeoDataFrame) -> None:
    a = generate_city(shenzhen, n_customers=5_000, seed=3)
    b = generate_city(shenzhen, n_customers=5_000, seed=4)
    assert not np.array_equal(a.customers["lng"], b.customers["lng"])
    assert not np.array_equal(a.communities["lng"], b.communities["lng"])
    assert not a.customers["arpu"].equals(b.customers["arpu"])


def test_no_global_random_state(shenzhen: gpd.GeoDataFrame) -> None:
    state = np.random.get_state()[1].copy()
    generate_city(shenzhen, n_customers=1_000, seed=1)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


# ---------------------------------------------------------------------------- customers


def test_segment_shares_follow_value_pyramid(city: SyntheticCity) -> None:
    shares = city.customers["segment"].value_counts(normalize=True)
    assert set(shares.index) == set(SEGMENT_SHARES)
    for segment, target in SEGMENT_SHARES.items():
        assert abs(shares[segment] - target) < 0.015, (segment, shares[segment])


def test_value_ordering_between_segments(city: SyntheticCity) -> None:
    by = city.customers.groupby("segment")
    arpu = by["arpu"].median()
    assert arpu["big"] > 3 * arpu["business"] > 3 * 3 * arpu["ordinary"]
    workload = by["workload"].mean()
    assert workload["big"] > workload["business"] > workload["ordinary"] > 0
    subscribers = by["subscribers"].mean()
    assert subscribers["big"] > subscribers["business"] > subscribers["ordinary"] >= 1
    assert (city.customers["subscribers"] >= 1).all()
    ordinary = city.customers["segment"] == "ordinary"
    assert (city.customers.loc[ordinary, "subscribers"] == 1).mean() > 0.8
    # The 80/20 rule: the top 15 % (big + business) bring most of the revenue.
    revenue = by["arpu"].sum() / city.customers["arpu"].sum()
    assert revenue["big"] + revenue["business"] > 0.55


def test_urban_core_denser_than_sparsest_district(
    city: SyntheticCity, shenzhen: gpd.GeoDataFrame
) -> None:
    district = _district_of(city.customers, shenzhen)
    counts = district.value_counts()
    area_km2 = pd.Series(shenzhen.to_crs(UTM_50N).area.to_numpy() / 1e6, index=shenzhen["name"])
    density = counts.reindex(area_km2.index, fill_value=0) / area_km2
    assert density["福田区"] >= 5 * density.min(), density.sort_values()
    # The urban districts (a sixth of the area) hold a large share of the customers.
    assert counts[list(URBAN_SHENZHEN)].sum() / len(city.customers) > 0.35


def test_xiamen_siming_densest(xiamen: gpd.GeoDataFrame) -> None:
    city = generate_city(xiamen, n_customers=N, seed=2)
    counts = _district_of(city.customers, xiamen).value_counts()
    area_km2 = pd.Series(xiamen.to_crs(UTM_50N).area.to_numpy() / 1e6, index=xiamen["name"])
    density = counts.reindex(area_km2.index, fill_value=0) / area_km2
    assert density.idxmax() == "思明区"
    assert density["思明区"] >= 5 * density.min()


def test_density_table_lookup() -> None:
    assert relative_density("福田区") == relative_density("Futian") == relative_density("futian")
    assert relative_density("福田区") > relative_density("盐田区")
    assert relative_density("Atlantis") > 0  # unknown names get the default


def test_unknown_names_still_work(shenzhen: gpd.GeoDataFrame) -> None:
    anonymous = shenzhen[["geometry"]].copy()
    city = generate_city(anonymous, n_customers=2_000, seed=0)
    assert len(city.customers) == 2_000
    assert len(city.stores) == len(anonymous)


# ---------------------------------------------------------------------------- communities


def test_communities(city: SyntheticCity, shenzhen: gpd.GeoDataFrame) -> None:
    com = city.communities
    assert len(com) == round(N / 150)
    assert com["households"].between(200, 5000).all()
    assert com["build_year"].between(1985, 2024).all()
    assert com["owner_occupied_share"].between(0, 1).all()
    assert set(com["entry_threshold"].unique()) <= {1, 2, 3, 4, 5}
    assert (com["value_score"] > 0).all()
    assert (com["value_score"] <= com["households"]).all()
    expected = community_value_score(
        com["households"], com["build_year"], com["owner_occupied_share"], com["entry_threshold"]
    )
    np.testing.assert_allclose(com["value_score"], expected)
    # Newer in the outskirts.
    urban = _district_of(com, shenzhen).isin(URBAN_SHENZHEN)
    assert com.loc[urban, "build_year"].mean() < com.loc[~urban, "build_year"].mean() - 3


def test_value_score_monotone() -> None:
    base = community_value_score(1000, 2010, 0.5, 3)
    assert community_value_score(2000, 2010, 0.5, 3) > base  # more households
    assert community_value_score(1000, 2020, 0.5, 3) > base  # newer
    assert community_value_score(1000, 2010, 0.9, 3) > base  # more owner-occupied
    assert community_value_score(1000, 2010, 0.5, 5) < base  # harder to enter


# ---------------------------------------------------------------------------- stores


def test_store_in_every_district(city: SyntheticCity, shenzhen: gpd.GeoDataFrame) -> None:
    district = _district_of(city.stores, shenzhen)
    assert district.notna().all()
    assert set(district) == set(shenzhen["name"])
    assert set(city.stores["kind"]) <= {"business_hall", "owned_store"}
    halls = district[city.stores["kind"] == "business_hall"]
    assert set(halls) == set(shenzhen["name"])  # every district has its business hall
    assert (city.stores["kind"] == "owned_store").any()


def test_one_store_per_main_grid_of_the_demo(city: SyntheticCity,
                                              shenzhen: gpd.GeoDataFrame) -> None:
    assert len(city.stores) == demo_sizing(N, len(shenzhen)).n_stores
    again = generate_city(shenzhen, n_customers=N, seed=7, n_stores=40)
    assert len(again.stores) == 40
    with pytest.raises(InvalidInputError, match="n_stores"):
        generate_city(shenzhen, n_customers=N, seed=7, n_stores=0)


def test_stores_stand_where_the_customers_are(shenzhen: gpd.GeoDataFrame) -> None:
    city = generate_city(shenzhen, n_customers=N, seed=5, n_stores=100)
    # each store stands on a customer's location (never in the sea between two cores)
    at = set(zip(city.customers["lng"], city.customers["lat"], strict=True))
    assert all(p in at for p in zip(city.stores["lng"], city.stores["lat"], strict=True))
    # denser in the urban cores, where the customers are
    area_km2 = pd.Series(shenzhen.to_crs(UTM_50N).area.to_numpy() / 1e6, index=shenzhen["name"])
    stores = _district_of(city.stores, shenzhen).value_counts().reindex(area_km2.index)
    customers = _district_of(city.customers, shenzhen).value_counts().reindex(area_km2.index)
    urban = area_km2.index.isin(URBAN_SHENZHEN)
    density = stores[urban].sum() / area_km2[urban].sum()
    assert density > 3 * stores[~urban].sum() / area_km2[~urban].sum()
    # one store per district, the others split by customers (as the demo's main grids are)
    quota = (100 - len(shenzhen)) * customers / customers.sum()
    assert ((stores - 1 - quota).abs() < 1).all()


# ---------------------------------------------------------------------------- key accounts


def test_key_accounts(city: SyntheticCity, shenzhen: gpd.GeoDataFrame) -> None:
    ka = city.key_accounts
    assert set(ka["kind"]) == {"industrial_park", "commercial_building"}
    parks = ka["kind"] == "industrial_park"
    assert ka.loc[parks, "footprint_m"].between(150, 500).all()
    assert ka.loc[~parks, "footprint_m"].between(30, 80).all()
    assert (ka["employees"] > 0).all()
    assert (ka["subscribers"] <= ka["employees"]).all()
    # Parks on the outskirts, buildings in the cores.
    urban = _district_of(ka, shenzhen).isin(URBAN_SHENZHEN)
    assert urban[~parks].mean() > urban[parks].mean()


def test_key_account_footprints_radii(city: SyntheticCity) -> None:
    fp = key_account_footprints(city.key_accounts)
    assert fp.crs.to_epsg() == 4326
    assert len(fp) == len(city.key_accounts)
    assert (fp.geometry.geom_type == "Polygon").all()
    geod = Geod(ellps="WGS84")
    areas = np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in fp.geometry])
    expected = np.pi * fp["footprint_m"].to_numpy() ** 2
    np.testing.assert_allclose(areas, expected, rtol=0.02)
    # Each circle is centred on its account.
    assert shapely.contains(fp.geometry.values, city.key_accounts.geometry.values).all()


def test_key_account_footprints_validation(city: SyntheticCity) -> None:
    with pytest.raises(InvalidInputError, match="footprint_m"):
        key_account_footprints(city.key_accounts.drop(columns="footprint_m"))
    with pytest.raises(InvalidInputError, match="key_accounts"):
        key_account_footprints(city.key_accounts.to_crs(3857))


# ---------------------------------------------------------------------------- CSV


def test_write_city_round_trip(city: SyntheticCity, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    paths = write_city(city, out)
    assert set(paths) == set(TABLE_COLUMNS)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.csv" for n in TABLE_COLUMNS)
    for name, path in paths.items():
        table = city.tables()[name]
        back = pd.read_csv(path)
        assert len(back) == len(table)
        assert list(back.columns) == [c for c in table.columns if c != "geometry"]
        np.testing.assert_allclose(back["lng"], table["lng"], rtol=0, atol=1e-12)
        assert back[TABLE_COLUMNS[name][0]].tolist() == table[TABLE_COLUMNS[name][0]].tolist()
    # Rewriting replaces the files in place.
    assert write_city(city, out) == paths


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("n", [0, -5, 1.5, True, "100"])
def test_invalid_n_customers(shenzhen: gpd.GeoDataFrame, n: object) -> None:
    with pytest.raises(InvalidInputError, match="n_customers"):
        generate_city(shenzhen, n_customers=n)  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), "0.5"])
def test_invalid_core_share(shenzhen: gpd.GeoDataFrame, share: object) -> None:
    with pytest.raises(InvalidInputError, match="core_share"):
        generate_city(shenzhen, n_customers=100, core_share=share)  # type: ignore[arg-type]


def test_invalid_seed(shenzhen: gpd.GeoDataFrame) -> None:
    with pytest.raises(InvalidInputError, match="seed"):
        generate_city(shenzhen, n_customers=100, seed=-1)


def test_invalid_boundaries(shenzhen: gpd.GeoDataFrame) -> None:
    with pytest.raises(InvalidInputError, match="boundaries"):
        generate_city(shenzhen.iloc[0:0], n_customers=100)
    with pytest.raises(InvalidInputError, match=r"boundaries.*EPSG:4326"):
        generate_city(shenzhen.to_crs(UTM_50N), n_customers=100)
    with pytest.raises(InvalidInputError, match="boundaries"):
        generate_city(shenzhen.set_crs(None, allow_override=True), n_customers=100)
    with pytest.raises(InvalidInputError, match="boundaries"):
        generate_city(pd.DataFrame({"a": [1]}), n_customers=100)  # type: ignore[arg-type]
    lines = shenzhen.copy()
    lines.geometry = lines.geometry.boundary
    with pytest.raises(InvalidInputError, match="boundaries"):
        generate_city(lines, n_customers=100)


def test_invalid_errors_are_value_errors(shenzhen: gpd.GeoDataFrame) -> None:
    with pytest.raises(ValueError):
        generate_city(shenzhen, n_customers=0)


def test_write_city_rejects_other_objects(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="city"):
        write_city({"customers": None}, tmp_path)  # type: ignore[arg-type]
