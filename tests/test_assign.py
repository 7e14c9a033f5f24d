"""Customer assignment: exact ownership, statuses, CRS, streaming files, geocoding, CLI."""

from __future__ import annotations

import io
from collections import namedtuple

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from territory.assign import (
    ADDRESS_COLUMNS,
    OUTPUT_COLUMNS,
    PLAN_COLUMNS,
    Columns,
    assign,
    assign_file,
    assign_frame,
    open_index,
)
from territory.assign_index import AssignmentIndex, IndexFormatError, index_path
from territory.cli import app
from territory.crs import from_wgs84, local_projected_crs
from territory.errors import InvalidInputError
from territory.geocode import Gazetteer, GeopyGeocoder, parse_address
from territory.plan import Plan
from territory.units import locate_points
from tests.conftest import customers

WGS = Columns(crs="wgs84")


def _edge_points(plan: Plan, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points at fraction t along every ring edge of every unit (t=0: the vertices)."""
    rings = shapely.get_rings(shapely.get_parts(plan.units.geometry.values))
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]
    a, b = xy[:-1][same], xy[1:][same]
    p = a[:, None, :] + t[None, :, None] * (b - a)[:, None, :]
    return p[..., 0].ravel(), p[..., 1].ravel()


# -- ownership -------------------------------------------------------------------------------
def test_every_vertex_and_edge_point_has_the_reference_owner(plan, index):
    x, y = _edge_points(plan, np.array([0.0, 0.5, 1 / 3, 1e-9]))
    assert len(x) > 10_000
    np.testing.assert_array_equal(index.locate(x, y), locate_points(plan.units, x, y))


def test_random_points_have_the_reference_owner(plan, index):
    rng = np.random.default_rng(7)
    b = plan.units.total_bounds
    x = rng.uniform(b[0] - 0.003, b[2] + 0.003, 200_000)
    y = rng.uniform(b[1] - 0.003, b[3] + 0.003, 200_000)
    got = index.locate(x, y)
    np.testing.assert_array_equal(got, locate_points(plan.units, x, y))
    assert 0.2 < (got >= 0).mean() < 0.9  # both inside and outside points were exercised


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_owner_per_point_property(plan, index, data):
    """Points on shared edges and vertices, near them, and anywhere: one owner, the same as
    the aggregation's rule (lowest unit_id among the units covering the point)."""
    geoms = plan.units.geometry.values
    n = data.draw(st.integers(1, 40))
    xs, ys = [], []
    for _ in range(n):
        kind = data.draw(st.sampled_from(["vertex", "edge", "near", "anywhere"]))
        if kind == "anywhere":
            b = plan.units.total_bounds
            xs.append(data.draw(st.floats(b[0], b[2])))
            ys.append(data.draw(st.floats(b[1], b[3])))
            continue
        ring = shapely.get_coordinates(
            shapely.get_exterior_ring(geoms[data.draw(st.integers(0, len(geoms) - 1))]))
        j = data.draw(st.integers(0, len(ring) - 2))
        t = 0.0 if kind == "vertex" else data.draw(st.floats(0, 1))
        p = ring[j] + t * (ring[j + 1] - ring[j])
        if kind == "near":
            p = p + np.array(data.draw(st.tuples(*[st.floats(-1e-7, 1e-7)] * 2)))
        xs.append(p[0])
        ys.append(p[1])
    x, y = np.array(xs), np.array(ys)
    got = index.locate(x, y)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, locate_points(plan.units, x, y))
    _assert_single_path_agrees(index, x, y)


def _assert_single_path_agrees(index: AssignmentIndex, x: np.ndarray, y: np.ndarray) -> None:
    """locate_one and nearest_one give the array path's answers to the bit, point by point
    (the service's single lookups take them)."""
    owner = index.locate(x, y)
    units, dist = index.nearest(x, y)
    for i, (xi, yi) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        assert index.locate_one(xi, yi) == owner[i], (xi, yi)
        if owner[i] < 0:  # nearest is asked of outside points only
            u, d = index.nearest_one(xi, yi)
            assert u == units[i] and (d == dist[i] or np.isnan(d) and np.isnan(dist[i])), (
                xi, yi, u, d, units[i], dist[i])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_single_point_path_equals_array_path_property(plan, index, data):
    """Near the service area's outer boundary (on it, ulps off it), beyond the raster's
    margin, on another continent, non-finite: the single-point path answers as the
    array path does."""
    b = plan.units.total_bounds
    outer = shapely.get_coordinates(shapely.get_exterior_ring(shapely.get_parts(
        shapely.union_all(plan.units.geometry.values))))
    xs, ys = [], []
    for _ in range(data.draw(st.integers(1, 20))):
        kind = data.draw(st.sampled_from(["boundary", "beyond", "margin", "globe", "odd"]))
        if kind == "boundary":
            j = data.draw(st.integers(0, len(outer) - 2))
            t = data.draw(st.just(0.0) | st.floats(0, 1))  # a vertex: nearest-segment ties
            p = outer[j] + t * (outer[j + 1] - outer[j])
            offset = st.sampled_from([0.0, 1e-12, -1e-9, 3e-6, 2e-4, -2e-4, 2e-3, -2e-3])
            p = p + np.array(data.draw(st.tuples(offset, offset)))
        elif kind == "beyond":  # off the raster, within the local projection's reach
            p = np.array([data.draw(st.floats(b[0] - 0.5, b[2] + 0.5)),
                          data.draw(st.floats(b[1] - 0.5, b[3] + 0.5))])
        elif kind == "margin":  # the raster's margin cells, and just past them
            p = np.array([data.draw(st.floats(b[0] - 0.006, b[0] + 0.001)),
                          data.draw(st.floats(b[1] - 0.006, b[3] + 0.006))])
        elif kind == "globe":  # beyond the local projection: the geodesic path
            p = np.array([data.draw(st.floats(-180, 180)), data.draw(st.floats(-90, 90))])
        else:
            p = np.array([data.draw(st.sampled_from([np.nan, np.inf, b[0]])),
                          data.draw(st.sampled_from([np.nan, -np.inf, b[1]]))])
        xs.append(float(p[0]))
        ys.append(float(p[1]))
    _assert_single_path_agrees(index, np.array(xs), np.array(ys))


def test_single_point_path_answers_as_the_array_path(plan, index, monkeypatch):
    """Random points over the plan's box and well beyond: inside, near boundaries (both
    kinds of ambiguous pixel), outside on and off the raster, all met."""
    rng = np.random.default_rng(9)
    b = plan.units.total_bounds
    x = rng.uniform(b[0] - 0.05, b[2] + 0.05, 6_000)
    y = rng.uniform(b[1] - 0.05, b[3] + 0.05, 6_000)
    resolved = []  # the ambiguous pixels met: an edge's (>= n_sets) or a candidate set's
    resolve = index._resolve_one
    monkeypatch.setattr(index, "_resolve_one",
                        lambda *a: resolved.append(a[2]) or resolve(*a))
    _assert_single_path_agrees(index, x, y)
    n_sets = len(index._a.amb_free)
    assert sum(e >= n_sets for e in resolved) > 20 and sum(e < n_sets for e in resolved) > 5
    inr = index._pixels(x, y)[0]
    owner = index.locate(x, y)
    assert (~inr).sum() > 500 and (inr & (owner < 0)).sum() > 500  # outside, off and on
    assert (owner >= 0).sum() > 1_000
    assert index.locate_one(float("nan"), 24.5) == -1
    unit, dist = index.nearest_one(float("nan"), 24.5)
    assert unit == -1 and np.isnan(dist)


# -- statuses and outside points -------------------------------------------------------------
def test_statuses_reasons_and_order(plan, index, inside_points):
    x0, y0 = inside_points[0][:3], inside_points[1][:3]
    lng = np.r_[x0[0], np.nan, 200.0, 118.3, x0[1], 118.0, x0[2]]
    lat = np.r_[y0[0], 24.5, 24.5, 95.0, y0[1], 24.0, y0[2]]
    res = assign(index, lng, lat, crs="wgs84")
    assert res.status.tolist() == ["ok", "invalid", "invalid", "invalid", "ok", "outside",
                                   "ok"]
    assert "lng is missing" in res.reason[1] and "out of range" in res.reason[2]
    assert "lat 95.0 is out of range" in res.reason[3]
    units = plan.units
    assert res.sub_grid_id[[0, 4, 6]].tolist() == units["sub_grid_id"].iloc[:3].tolist()
    assert res.main_grid_id[0] == units["main_grid_id"].iloc[0]
    assert res.branch_id[0] == str(units["branch_id"].iloc[0])
    assert res.sub_grid_id[5] is None and res.nearest_grid_id[5] is not None
    assert res.distance_m[0] == 0 and res.distance_m[5] > 1000
    assert np.isnan(res.distance_m[1])
    projected = assign(index, [np.nan, 6e5, np.inf], [2.7e6, 2.7e6, 2.7e6], crs="EPSG:32650")
    assert projected.status.tolist() == ["invalid", "outside", "invalid"]
    assert projected.reason[0] == projected.reason[2] == "lng is missing or not a number"


def test_outside_points_nearest_grid_and_distance_match_geos(plan, index):
    """Nearest sub-grid and distance (metres, local UTM) against GEOS on the dissolved
    sub-grid polygons: sea and mainland points around the island."""
    rng = np.random.default_rng(3)
    b = plan.units.total_bounds
    x = rng.uniform(b[0] - 0.05, b[2] + 0.05, 20_000)
    y = rng.uniform(b[1] - 0.05, b[3] + 0.05, 20_000)
    res = assign(index, x, y, crs="wgs84")
    assert (res.status[res.status != "outside"] == "ok").all()
    assert_outside_matches_geos(plan, res, x, y)


def assert_outside_matches_geos(plan, res, x, y) -> None:
    """Nearest grid and distance of the outside points against GEOS on the sub-grids."""
    out = res.status == "outside"
    assert out.sum() > 5000
    b = plan.units.total_bounds
    grids = plan.grids("sub_grid")
    crs = local_projected_crs(b[[0, 2]], b[[1, 3]])
    polys = np.asarray(grids.to_crs(crs).geometry.values)
    pts = np.asarray(gpd.GeoSeries(gpd.points_from_xy(x[out], y[out]), crs=4326).to_crs(crs))
    d = shapely.distance(pts[:, None], polys[None, :])
    np.testing.assert_allclose(res.distance_m[out], d.min(axis=1), rtol=0, atol=1e-3)
    srt = np.sort(d, axis=1)
    clear = srt[:, 1] - srt[:, 0] > 1e-2  # no near-tie between two grids
    expected = grids["grid_id"].to_numpy()[d.argmin(axis=1)]
    np.testing.assert_array_equal(res.nearest_grid_id[out][clear], expected[clear])


def test_outside_points_near_the_coast_match_geos(plan, index):
    """Within metres of the service area's boundary, where several boundary segments compete
    (sub-cells of the outside lookup, bisectors between segments, vertices shared by grids):
    nearest grid and distance against GEOS."""
    rng = np.random.default_rng(11)
    coast = shapely.boundary(shapely.union_all(plan.units.geometry.values))
    at = shapely.line_interpolate_point(coast, rng.uniform(0, 1, 30_000), normalized=True)
    scale = rng.choice([1e-6, 3e-5, 3e-4, 3e-3], 30_000)  # 10 cm to 300 m
    x = shapely.get_x(at) + rng.normal(0, 1, 30_000) * scale
    y = shapely.get_y(at) + rng.normal(0, 1, 30_000) * scale
    assert_outside_matches_geos(plan, assign(index, x, y, crs="wgs84"), x, y)


@pytest.mark.parametrize("crs", ["gcj02", "bd09", "cgcs2000", "EPSG:32650", "EPSG:4547"])
def test_converted_points_land_in_the_same_grid(index, inside_points, crs):
    x, y = inside_points
    cx, cy = from_wgs84(x, y, crs)
    if crs in ("gcj02", "bd09"):
        assert np.abs(cx - x).max() > 1e-3  # hundreds of metres: conversion matters
    want = assign(index, x, y, crs="wgs84")
    got = assign(index, cx, cy, crs=crs)
    assert (want.status == "ok").all()
    np.testing.assert_array_equal(got.sub_grid_id, want.sub_grid_id)


# -- frames ------------------------------------------------------------------------------------
def test_frame_keeps_rows_order_index_and_columns(index, inside_points):
    x, y = inside_points
    gx, gy = from_wgs84(x[:2], y[:2], "gcj02")
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f", "g"],
        "lng": [str(x[0]), "abc", "", str(gx[0]), str(x[1]), "118.2", str(gx[1])],
        "lat": [str(y[0]), "24.5", "", str(gy[0]), "", "24.5", str(gy[1])],
        "sys": ["", "wgs84", "", "GCJ-02", "", "mars", "gcj02"],
    }, index=[70, 10, 50, 20, 60, 30, 40])
    out = assign_frame(index, df, columns=Columns(crs="wgs84", crs_column="sys"))
    assert list(out.index) == list(df.index)
    assert list(out.columns) == [*df.columns, *OUTPUT_COLUMNS]
    pd.testing.assert_frame_equal(out[df.columns], df)
    assert out["status"].tolist() == ["ok", "invalid", "invalid", "ok", "invalid", "invalid",
                                      "ok"]
    assert "'abc' is not a number" in out.loc[10, "reason"]
    assert "missing" in out.loc[50, "reason"]
    assert "only one of" in out.loc[60, "reason"]
    assert "sys" in out.loc[30, "reason"] and "mars" in out.loc[30, "reason"]
    assert out.loc[20, "sub_grid_id"] == assign(index, x[:1], y[:1], crs="wgs84").sub_grid_id[0]
    # without a default, a row whose crs cell is blank names no system: invalid, not WGS84
    own = assign_frame(index, df, columns=Columns(crs_column="sys"))
    assert own.loc[70, "status"] == "invalid" and "blank" in own.loc[70, "reason"]
    assert own["status"].drop(70).tolist() == out["status"].drop(70).tolist()


def test_frame_rejects_bad_columns(index):
    df = pd.DataFrame({"x": [1.0], "lat": [2.0]})
    with pytest.raises(InvalidInputError, match="'lng'"):
        assign_frame(index, df, columns=WGS)
    with pytest.raises(InvalidInputError, match="status"):
        assign_frame(index, pd.DataFrame({"lng": [1.0], "lat": [2.0], "status": ["x"]}),
                     columns=WGS)
    with pytest.raises(InvalidInputError, match="geocoder"):
        assign_frame(index, df, columns=Columns(crs="wgs84", address_column="x"))
    with pytest.raises(InvalidInputError, match="not recognised"):
        assign_frame(index, pd.DataFrame({"lng": [1.0], "lat": [2.0]}),
                     columns=Columns(crs="mars"))


# -- files -------------------------------------------------------------------------------------
def test_csv_streaming_equals_in_memory(plan, index, tmp_path):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    customers(plan, 2500).to_csv(src, index=False)
    seen = []
    counts = assign_file(index, src, dst, columns=WGS, chunk_size=700,
                         progress=lambda done, total: seen.append((done, total)))
    assert seen == [(700, None), (1400, None), (2100, None), (2500, None)]
    whole = assign_frame(index, pd.read_csv(src, dtype=str, keep_default_na=False),
                         columns=WGS)
    got = pd.read_csv(dst, dtype=str, keep_default_na=False)
    expected = pd.read_csv(io.StringIO(whole.to_csv(index=False)), dtype=str,
                           keep_default_na=False)
    # every row carries the plan that assigned it
    assert set(got["plan_id"]) == {plan.plan_id}
    assert set(got["plan_version"]) == {str(plan.version)}
    # Arrow writes 0.0 as "0": the distances are compared as the numbers they are
    pd.testing.assert_frame_equal(got.drop(columns=["distance_m", *PLAN_COLUMNS]),
                                  expected.drop(columns="distance_m"))
    np.testing.assert_array_equal(pd.to_numeric(got["distance_m"]),
                                  pd.to_numeric(expected["distance_m"]))
    assert got["code"].iloc[1] == "001"  # text columns pass through untouched
    assert sum(counts.values()) == 2500 and counts["invalid"] > 0 and counts["outside"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_parquet_round_trip_keeps_types(plan, index, tmp_path):
    df = customers(plan, 1200, seed=1)
    df["lng"] = pd.to_numeric(df["lng"], errors="coerce")
    df["lat"] = pd.to_numeric(df["lat"], errors="coerce")
    df["visits"] = pd.array([i if i % 5 else None for i in range(1200)], dtype="Int64")
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    df.to_parquet(src, index=False)
    seen = []
    assign_file(index, src, dst, columns=WGS, chunk_size=500,
                progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (1200, 1200)
    out = pq.read_table(dst)
    schema_in = pq.read_schema(src)
    assert out.column_names == [*schema_in.names, *OUTPUT_COLUMNS, *PLAN_COLUMNS]
    for name in schema_in.names:
        assert out.schema.field(name).type == schema_in.field(name).type
        assert out.column(name).equals(pq.read_table(src).column(name))
    assert out.schema.field("distance_m").type == pa.float64()
    mem = assign_frame(index, df, columns=WGS)
    assert out.column("status").to_pylist() == mem["status"].tolist()
    assert out.column("sub_grid_id").to_pylist() == [
        None if pd.isna(v) else v for v in mem["sub_grid_id"]]


def test_csv_to_parquet_and_bad_files(plan, index, tmp_path):
    src = tmp_path / "in.csv"
    customers(plan, 50).to_csv(src, index=False)
    assign_file(index, src, tmp_path / "out.parquet", columns=WGS)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 50
    with pytest.raises(InvalidInputError, match="unknown file type"):
        assign_file(index, src, tmp_path / "out.xlsx", columns=WGS)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match="cannot read"):
        assign_file(index, bad, tmp_path / "o.csv", columns=WGS)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InvalidInputError, match="cannot read"):
        assign_file(index, empty, tmp_path / "o.csv", columns=WGS)
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(InvalidInputError, match="chunk_size"):
        assign_file(index, src, tmp_path / "o.csv", columns=WGS, chunk_size=0)


# -- index storage -----------------------------------------------------------------------------
def test_index_save_load_round_trip_and_refusals(plan, plan_file, index, tmp_path):
    assert index_path(plan_file).exists()  # open_index saved the sidecar
    path = index.save(tmp_path / "x.index")
    again = AssignmentIndex.load(path, plan)
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        mapped = maps.read()
    assert str(path / "cell_entry.npy") in mapped  # memory-mapped, not read
    rng = np.random.default_rng(5)
    b = plan.units.total_bounds
    x, y = rng.uniform(b[0], b[2], 50_000), rng.uniform(b[1], b[3], 50_000)
    np.testing.assert_array_equal(again.locate(x, y), index.locate(x, y))
    other = plan.derive(plan.units.assign(subscribers=plan.units["subscribers"] + 1))
    with pytest.raises(InvalidInputError, match="another plan"):
        AssignmentIndex.load(path, other)
    junk = tmp_path / "junk.index"
    junk.write_bytes(b"junk")
    with pytest.raises(InvalidInputError, match="not a territory assignment index"):
        AssignmentIndex.load(junk, plan)
    with pytest.raises(InvalidInputError, match="no such index"):
        AssignmentIndex.load(tmp_path / "none.index", plan)


def test_an_index_of_another_format_is_refused_and_rebuilt(plan, index, tmp_path):
    plan_path = plan.save(tmp_path / "p.gpkg")
    side = index.save(index_path(plan_path))
    meta = np.load(side / "meta_i.npy")
    meta[0] -= 1
    np.save(side / "meta_i.npy", meta)
    with pytest.raises(IndexFormatError, match="index format"):
        AssignmentIndex.load(side, plan)
    again = open_index(plan_path)  # an old cache: rebuilt, not refused
    x, y = _edge_points(plan, np.array([0.5]))
    np.testing.assert_array_equal(again.locate(x, y), index.locate(x, y))
    assert AssignmentIndex.load(side, plan).nbytes == index.nbytes


def test_open_index_refuses_a_stale_sidecar(plan, tmp_path):
    other = plan.derive(plan.units.assign(subscribers=plan.units["subscribers"] * 2))
    a, b = plan.save(tmp_path / "a.gpkg"), other.save(tmp_path / "b.gpkg")
    AssignmentIndex.build(plan).save(index_path(b))  # wrong plan's index beside b
    with pytest.raises(InvalidInputError, match="another plan"):
        open_index(b)
    assert open_index(b, rebuild=True).plan.fingerprint == other.fingerprint
    assert open_index(b).plan.fingerprint == other.fingerprint
    assert open_index(a).plan.fingerprint == plan.fingerprint


# -- geocoding ---------------------------------------------------------------------------------
def test_address_place_names():
    def place(text):
        return parse_address(text).place

    assert place("幸福花园３栋２单元５０１室") == "幸福花园"
    assert place(" 幸福 花园 ") == "幸福花园"
    assert place("ＡＢＣ大厦Ａ座") == "abc大厦"
    assert place("海景社区（二期）") == place("海景社区二期")
    assert place(None) == place(np.nan) == ""


@pytest.mark.parametrize("text, place, district, building", [
    # a place named like a county, its short form first: the name is the place
    ("福田花园", "福田花园", "", ""),
    ("和平苑1栋", "和平苑", "", "1栋"),  # not Heyuan's 和平县
    ("深圳龙华苑3栋1单元1201", "龙华苑", "", "3栋"),
    # a county's short form before a real place name, or a county written out: a county
    ("深圳南山科技园", "科技园", "南山区", ""),
    ("广东省深圳市罗湖区和平苑2栋", "和平苑", "罗湖区", "2栋"),
])
def test_a_place_named_like_a_county_keeps_its_name(text, place, district, building):
    parsed = parse_address(text, frozenset({"广东省"}))
    assert (parsed.place, parsed.district, parsed.building) == (place, district, building)


def test_a_gazetteer_of_places_named_like_counties_matches_them():
    """The demo's Shenzhen gazetteer held 和平苑 (和平县 is a county of Guangdong): it was
    refused as a name too short once the county was read off it."""
    table = pd.DataFrame({"address": ["和平苑", "和平苑1栋", "福田花园", "南山花园"],
                          "lng": [114.05, 114.05, 114.06, 113.93],
                          "lat": [22.55, 22.55, 22.54, 22.52],
                          "district": ["罗湖区", "罗湖区", "福田区", "南山区"]})
    g = Gazetteer(table, crs="wgs84")
    res = g.geocode(["广东省深圳市罗湖区和平苑1栋2单元301", "深圳市福田区福田花园",
                     "南山区南山花园"])
    assert list(res.entry) == ["和平苑1栋", "福田花园", "南山花园"]


def test_gazetteer_matching_and_reasons(inside_points):
    x, y = inside_points
    gx, gy = from_wgs84(x[:1], y[:1], "gcj02")
    table = pd.DataFrame({
        "address": ["幸福花园", "海景小区", "海景小区", "明珠大厦"],
        "district": ["思明区", "思明区", "湖里区", "思明区"],
        "lng": [x[1], x[2], x[3], gx[0]], "lat": [y[1], y[2], y[3], gy[0]],
        "crs": ["", "wgs84", "wgs84", "gcj02"],
    })
    gaz = Gazetteer(table, crs="wgs84")
    res = gaz.geocode(["福建省厦门市思明区幸福花园3栋", "明珠大厦", "海景小区", "qwerty", "",
                       "不存在小区"])
    assert res.lng[0] == x[1] and res.lat[0] == y[1] and res.level[0] == "community"
    np.testing.assert_allclose([res.lng[1], res.lat[1]], [x[0], y[0]], atol=1e-7)
    assert "different places" in res.reason[2] and res.review[2] and np.isnan(res.lng[2])
    assert "no gazetteer entry" in res.reason[3] and res.reason[4] == "empty address"
    assert res.reason[0] is None and np.isnan(res.lng[3]) and not res.review[3]
    assert res.review[5] and res.score[5] < 75 and "< 75" in res.reason[5]  # not placed
    with pytest.raises(InvalidInputError, match="lat"):
        Gazetteer(table.drop(columns="lat"), crs="wgs84")
    with pytest.raises(InvalidInputError, match="CRS of its coordinates is required"):
        Gazetteer(table)


def test_geopy_adapter_with_a_fake_service(inside_points):
    from geopy.exc import GeocoderServiceError

    x, y = inside_points
    bx, by = from_wgs84(x[:1], y[:1], "bd09")
    Location = namedtuple("Location", "longitude latitude")
    calls = []

    class FakeBaidu:
        def geocode(self, query, exactly_one=True):
            calls.append(query)
            if query == "boom":
                raise GeocoderServiceError("quota exceeded")
            return Location(bx[0], by[0]) if query.startswith("厦门") else None

    geo = GeopyGeocoder(FakeBaidu(), crs="bd09")
    res = geo.geocode(["厦门市幸福路1号", "nowhere", "厦门市幸福路1号", "boom", None])
    assert calls == ["厦门市幸福路1号", "nowhere", "boom"]  # one request per distinct address
    np.testing.assert_allclose([res.lng[0], res.lat[0]], [x[0], y[0]], atol=1e-7)
    assert res.lng[2] == res.lng[0]
    assert "found no match" in res.reason[1] and "quota exceeded" in res.reason[3]
    assert res.reason[4] == "empty address"


def test_frame_geocodes_rows_without_coordinates(index, inside_points):
    x, y = inside_points
    gaz = Gazetteer(pd.DataFrame({"address": ["思明区幸福花园", "湖里区幸福花园"],
                                  "lng": [x[5], x[9]], "lat": [y[5], y[9]]}), crs="wgs84")
    df = pd.DataFrame({"addr": ["思明区幸福花园1栋", "nowhere", "", "思明区幸福花园", "幸福花园",
                                "思明区"],
                       "lng": [x[0], *[None] * 5], "lat": [y[0], *[None] * 5]})
    out = assign_frame(index, df, columns=Columns(crs="wgs84", address_column="addr"),
                       geocoder=gaz)
    assert list(out.columns) == [*df.columns, *OUTPUT_COLUMNS, *ADDRESS_COLUMNS]
    assert out["status"].tolist() == ["ok", "not_geocoded", "not_geocoded", "ok",
                                      "needs_review", "needs_review"]
    assert out["match_level"].tolist() == [None, None, None, "community", None, "district"]
    assert out["sub_grid_id"].iloc[4:].isna().all()  # a tie or a district picks no grid
    assert "湖里区" in out["candidates"].iloc[4]
    assert out["matched_entry"].iloc[3] == "思明区幸福花园"
    df = df.iloc[:4]
    ref = assign(index, x[[0, 5]], y[[0, 5]], crs="wgs84").sub_grid_id
    assert out["sub_grid_id"].iloc[[0, 3]].tolist() == ref.tolist()
    assert out["reason"].iloc[2] == "empty address"
    only = assign_frame(index, df[["addr"]], columns=Columns(address_column="addr"),
                        geocoder=gaz)
    assert only["status"].tolist() == ["ok", "not_geocoded", "not_geocoded", "ok"]


# -- CLI ---------------------------------------------------------------------------------------
def _said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_cli_assign(plan, plan_file, tmp_path):
    runner = CliRunner()
    src = tmp_path / "in.csv"
    customers(plan, 300).rename(columns={"lng": "x", "lat": "y"}).to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out", str(out),
                              "--lng-column", "x", "--lat-column", "y", "--chunk-size", "100",
                              "--crs", "wgs84"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.column_names == ["customer", "x", "y", "code", *OUTPUT_COLUMNS,
                                  *PLAN_COLUMNS]
    assert table.num_rows == 300

    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out", str(out),
                              "--crs", "wgs84"])
    assert res.exit_code == 2 and "'lng'" in _said(res) and "Traceback" not in _said(res)
    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out", str(out),
                              "--lng-column", "x", "--lat-column", "y", "--crs", "mars"])
    assert res.exit_code == 2 and "not recognised" in _said(res)
    res = runner.invoke(app, ["assign", str(src), str(src), "--out", str(out), "--crs", "wgs84"])
    assert res.exit_code == 2 and "not a territory plan" in _said(res)
    gaz = tmp_path / "gaz.csv"
    gaz.write_text("name,lng\n", encoding="utf-8")
    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out", str(out),
                              "--gazetteer", str(gaz), "--address-column", "code"])
    assert res.exit_code == 2 and "gazetteer" in _said(res)


# -- the warehouse cell table ----------------------------------------------------------------
def test_cell_table_join_agrees_with_the_exact_lookup(plan, plan_file, index, tmp_path):
    """A warehouse's way: join customers to the table on their H3 cell, take the sub-grid of
    interior cells, send boundary cells to the exact lookup, and call cells not in the table
    outside. On 2 M random points this gives exactly the exact lookup's answer."""
    import h3

    out = tmp_path / "cells.parquet"
    res = CliRunner().invoke(app, ["cells", str(plan_file), "--resolution", "9", "--out",
                                   str(out)])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.schema.metadata[b"territory.plan_id"].decode() == plan.plan_id
    cell = table["h3_cell"].to_numpy()
    interior = table["interior"].to_numpy()
    sub = np.array(table["sub_grid_id"].to_pylist(), dtype=object)
    assert (np.diff(cell) > 0).all() and 0.5 < interior.mean() < 1

    rng = np.random.default_rng(11)
    b = plan.units.total_bounds
    n = 2_000_000
    x = rng.uniform(b[0] - 0.005, b[2] + 0.005, n)
    y = rng.uniform(b[1] - 0.005, b[3] + 0.005, n)
    to_cell = h3.api.basic_int.latlng_to_cell
    pc = np.fromiter((to_cell(lat, lng, 9) for lng, lat in zip(x.tolist(), y.tolist(),
                                                                 strict=True)),
                     dtype=np.int64, count=n)
    pos = np.minimum(np.searchsorted(cell, pc), len(cell) - 1)
    listed = cell[pos] == pc
    inner = listed & interior[pos]
    got = np.full(n, None, dtype=object)
    got[inner] = sub[pos[inner]]
    refine = np.flatnonzero(listed & ~inner)
    unit = index.locate(x[refine], y[refine])
    got[refine] = np.append(index.sub_grid_ids, None)[unit]
    exact = np.append(index.sub_grid_ids, None)[index.locate(x, y)]
    np.testing.assert_array_equal(got, exact)
    assert inner.mean() > 0.3 and (exact[~listed] == None).all()  # noqa: E711
    # a boundary cell's candidates hold the sub-grid its points get
    cands = table["candidate_sub_grids"].to_pylist()
    inside = refine[unit >= 0]
    assert all(exact[i] in cands[pos[i]] for i in inside[:: max(1, len(inside) // 5000)])
    res = CliRunner().invoke(app, ["cells", str(plan_file), "--resolution", "3", "--out",
                                   str(out)])
    assert res.exit_code == 2 and "--resolution" in _said(res)


def test_cli_assign_by_address(plan_file, inside_points, tmp_path):
    x, y = inside_points
    gaz = tmp_path / "gazetteer.csv"
    pd.DataFrame({"address": ["思明区幸福花园", "湖里区幸福花园"], "lng": [x[5], x[9]],
                  "lat": [y[5], y[9]]}).to_csv(gaz, index=False)
    src = tmp_path / "in.csv"
    addr = ["厦门市思明区幸福花园2栋", "幸福花园", "思明区幸福花圆"]
    pd.DataFrame({"id": [1, 2, 3], "addr": addr}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    args = ["assign", str(plan_file), str(src), "--out", str(out), "--address-column", "addr",
            "--gazetteer", str(gaz)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "CRS of its coordinates is required" in _said(res)
    res = CliRunner().invoke(app, [*args, "--gazetteer-crs", "wgs84", "--min-score", "90"])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    assert got["status"].tolist() == ["ok", "needs_review", "needs_review"]  # typo < 90
    assert got["match_level"].tolist()[:1] == ["community"] and got["match_score"][2] < 90
    res = CliRunner().invoke(app, [*args, "--gazetteer-crs", "wgs84", "--min-score", "75"])
    assert pd.read_csv(out)["status"].tolist() == ["ok", "needs_review", "ok"]


def test_cli_geocoding_service_needs_its_crs(plan_file, tmp_path):
    """AMap answers in GCJ-02 and Baidu in BD-09: the service's system is never assumed."""
    src = tmp_path / "addr.csv"
    pd.DataFrame({"address": ["深圳市南山区科苑路15号"]}).to_csv(src, index=False)
    res = CliRunner().invoke(app, ["assign", str(plan_file), str(src), "--out",
                                   str(tmp_path / "o.csv"), "--address-column", "address",
                                   "--geocoder-service", "nominatim"])
    assert res.exit_code == 2 and "--geocoder-crs is required" in " ".join(res.output.split())
    assert not (tmp_path / "o.csv").exists()


def test_outside_points_off_a_corner_two_units_share(plan, index):
    """A point 10 cm off a convex corner of the service area where two units' outer edges
    meet is as near to both as arithmetic can tell (the same vertex, reached along two
    segments): both paths name the same one of the two, at the distance to the corner, so
    the counter and the nightly batch agree on these near-ties."""
    geoms = plan.units.geometry.values
    tree = shapely.STRtree(geoms)
    box = plan.units.total_bounds
    utm = local_projected_crs(box[[0, 2]], box[[1, 3]])
    to_utm = pyproj.Transformer.from_crs(4326, utm, always_xy=True).transform
    to_wgs = pyproj.Transformer.from_crs(utm, 4326, always_xy=True).transform
    checked = 0
    for ring in shapely.get_exterior_ring(shapely.get_parts(shapely.union_all(geoms))):
        lnglat = shapely.get_coordinates(ring)[:-1]
        xy = np.column_stack(to_utm(lnglat[:, 0], lnglat[:, 1]))  # angles in metres
        sign = 1.0 if shapely.is_ccw(ring) else -1.0
        for j in range(len(xy)):
            v, a, b = xy[j], xy[j - 1], xy[(j + 1) % len(xy)]
            (ux, uy), (wx, wy) = v - a, b - v
            if sign * (ux * wy - uy * wx) <= 0:
                continue  # a reflex corner: its nearest points lie on the edges
            normals = [sign * np.array([e[1], -e[0]]) / np.hypot(*e) for e in (v - a, b - v)]
            out = normals[0] + normals[1]
            x, y = map(float, to_wgs(*(v + 0.1 * out / np.hypot(*out))))
            # the units owning the two outer edges that meet there
            owners = [tree.query(shapely.Point((lnglat[j] + lnglat[k]) / 2),
                                 predicate="intersects") for k in (j - 1, (j + 1) % len(xy))]
            touching = tree.query(shapely.Point(lnglat[j]), predicate="intersects")
            near = tree.query(shapely.Point(x, y).buffer(3e-6), predicate="intersects")
            if (any(len(o) != 1 for o in owners) or owners[0][0] == owners[1][0]
                    or set(near) - set(touching)):
                continue  # one unit's corner, or another unit too near to judge by eye
            assert index.locate_one(x, y) == -1
            units, dist = index.nearest(np.array([x]), np.array([y]))
            assert index.nearest_one(x, y) == (int(units[0]), float(dist[0]))
            assert units[0] in (owners[0][0], owners[1][0]), (x, y, owners)
            assert dist[0] == pytest.approx(0.1, rel=1e-3), (x, y)
            checked += 1
    assert checked >= 10
