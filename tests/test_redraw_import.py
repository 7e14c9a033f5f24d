"""Import of a drawn grid map: read any format, audit it, snap it back onto units."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from typer.testing import CliRunner

from territory.cli import app
from territory.diagnose import diagnose
from territory.graph import build_graph, contiguous_grids
from territory.importer import read_grids, snap_to_units
from territory.metrics import nesting_ok
from territory.pipeline import build_unit_table
from territory.plan import Plan

from .redraw_city import MEASURES, OPTS, small_city

AMP, FREQ = 3e-5, 2 * np.pi / 0.01  # ~3 m smooth wobble: every seam becomes a sliver


@pytest.fixture(scope="module")
def city():
    return small_city()


@pytest.fixture(scope="module")
def units(city):
    units, _ = build_unit_table(city.inputs, OPTS)
    return units, build_graph(units)


def _warp(geom, phase: float):
    """A smooth displacement (valid in, valid out) that differs per grid."""
    return shapely.transform(geom, lambda c: c + AMP * np.column_stack(
        [np.sin(c[:, 1] * FREQ + phase), np.cos(c[:, 0] * FREQ + phase)]))


def _own_grids(plan, folder):
    """The plan's own main grids and sub-grids, written as GeoPackages and read back as a
    drawn map."""
    layers = []
    for level, name in (("main_grid", "main.gpkg"), ("sub_grid", "sub.gpkg")):
        plan.grids(level).to_file(folder / name)
        layers.append(read_grids(folder / name, grid_column="grid_id",
                                 parent_column="parent_id"))
    return layers


def test_import_of_a_plans_own_grids_gives_back_the_same_plan(city, units, tmp_path):
    units, graph = units
    main, sub = _own_grids(city.plan, tmp_path)
    plan, _ = snap_to_units(units, graph, main, sub, MEASURES)
    cols = ["branch_id", "main_grid_id", "sub_grid_id"]
    assert plan.units.index.equals(city.plan.units.index)
    assert (plan.units[cols] == city.plan.units[cols]).all().all()
    diag = diagnose(city.areas, "adcode", main, sub, plan, city.customers)
    for key in ("overlaps", "gaps", "crossing_branches", "sub_outside", "invalid"):
        assert diag.tables[key].empty, key
    snap = diag.tables["snapping"]
    assert (snap[["customers_gained", "customers_lost"]] == 0).all().all()


@pytest.fixture(scope="module")
def drawn(city, tmp_path_factory):
    """A hand-drawn map from the plan: wobbled lines, one grid dropped, one grid drawn
    over its neighbour, one grid invalid (a part drawn twice); written as KML, SHP, TAB."""
    mains = city.plan.grids("main_grid")
    geoms = {g: _warp(geom, 1.7 * i) for i, (g, geom) in
             enumerate(zip(mains["grid_id"], mains.geometry, strict=True))}
    branch = dict(zip(mains["grid_id"], mains["parent_id"], strict=True))
    by_branch = mains.groupby("parent_id")["grid_id"].apply(list)
    a, b = next((x, y) for ids in by_branch for x in ids for y in ids
                if x < y and geoms[x].intersects(geoms[y]))
    dropped = next(g for ids in by_branch if len(ids) > 1 for g in ids
                   if branch[g] != branch[a])
    invalid = next(g for g in geoms if g not in (a, b, dropped))
    extra = geoms[b].intersection(geoms[a].buffer(0.004))
    overlap = extra.difference(geoms[a])
    geoms[a] = geoms[a].union(extra)
    parts = list(shapely.get_parts(geoms[invalid]))
    geoms[invalid] = shapely.MultiPolygon([*parts, parts[0]])
    assert not geoms[invalid].is_valid
    dropped_geom = geoms.pop(dropped)
    frame = gpd.GeoDataFrame({"grid_id": list(geoms), "parent_id": [branch[g] for g in geoms]},
                             geometry=list(geoms.values()), crs="EPSG:4326")
    folder = tmp_path_factory.mktemp("drawn")
    paths = {}
    for ext, driver in (("kml", "KML"), ("shp", "ESRI Shapefile"), ("tab", "MapInfo File")):
        paths[ext] = folder / f"grids.{ext}"
        pyogrio.write_dataframe(frame, paths[ext], driver=driver)
    return {"paths": paths, "a": a, "b": b, "dropped": dropped, "invalid": invalid,
            "overlap": overlap, "dropped_geom": dropped_geom}


def _customers_in(city, geom) -> int:
    pts = shapely.points(city.customers["lng"].to_numpy(), city.customers["lat"].to_numpy())
    return int(shapely.contains(geom, pts).sum())


@pytest.mark.parametrize("ext", ["shp", "tab"])
def test_every_format_reads_the_same_grids(drawn, ext):
    ref = read_grids(drawn["paths"]["kml"], grid_column="grid_id", parent_column="parent_id")
    got = read_grids(drawn["paths"][ext], grid_column="grid_id", parent_column="parent_id")
    assert got.grids["grid_id"].tolist() == ref.grids["grid_id"].tolist()
    sym = shapely.symmetric_difference(got.grids.geometry.values, ref.grids.geometry.values)
    assert (shapely.area(sym) < 1e-4 * shapely.area(ref.grids.geometry.values)).all()
    assert got.invalid["grid_id"].tolist() == [drawn["invalid"]]


def test_diagnosis_finds_exactly_what_was_done_to_the_map(city, units, drawn, tmp_path):
    units, graph = units
    main = read_grids(drawn["paths"]["kml"], grid_column="grid_id", parent_column="parent_id")
    plan, _ = snap_to_units(units, graph, main, None, MEASURES)
    diag = diagnose(city.areas, "adcode", main, None, plan, city.customers)
    t = diag.tables
    # one overlap, the pair drawn over each other, with its area and customers
    assert t["overlaps"][["grid_a", "grid_b"]].values.tolist() == [[drawn["a"], drawn["b"]]]
    ref = gpd.GeoSeries([drawn["overlap"]], crs="EPSG:4326")
    area = float(ref.to_crs(ref.estimate_utm_crs()).area.iloc[0])
    assert t["overlaps"]["area_m2"].iloc[0] == pytest.approx(area, rel=0.03)
    assert abs(t["overlaps"]["customers"].iloc[0] - _customers_in(city, drawn["overlap"])) <= 3
    # one gap, where the dropped grid was
    assert len(t["gaps"]) == 1
    ref = gpd.GeoSeries([drawn["dropped_geom"]], crs="EPSG:4326")
    area = float(ref.to_crs(ref.estimate_utm_crs()).area.iloc[0])
    assert t["gaps"]["area_m2"].iloc[0] == pytest.approx(area, rel=0.03)
    assert abs(t["gaps"]["customers"].iloc[0] - _customers_in(city, drawn["dropped_geom"])) <= 3
    # the wobbled seams are slivers, never gaps or overlaps; nothing crosses a district line
    assert len(t["slivers"]) > 0 and (t["slivers"]["width_m"] < 20).all()
    assert t["crossing_branches"].empty
    assert t["invalid"]["grid_id"].tolist() == [drawn["invalid"]]
    # the snapped plan is valid: every unit one grid, contiguous, nested; the dropped
    # grid's units went to a neighbour of their own branch
    assert plan.units["main_grid_id"].notna().all()
    assert nesting_ok(plan)
    assert all(contiguous_grids(graph, plan.labels("main_grid")).values())
    assert drawn["dropped"] not in set(plan.units["main_grid_id"])
    lost = city.plan.units.index[city.plan.units["main_grid_id"] == drawn["dropped"]]
    assert (plan.units.loc[lost, "branch_id"] == city.plan.units.loc[lost, "branch_id"]).all()
    snap = t["snapping"].set_index("grid_id")
    assert snap["customers_gained"].sum() >= t["gaps"]["customers"].iloc[0] - 3
    out = json.loads(json.dumps(diag.to_json()))
    assert {"overlaps", "gaps", "multipart", "crossing_branches", "invalid", "balance",
            "snapping"} <= set(out)
    diag.write_layers(tmp_path / "diagnosis.gpkg")
    assert "gaps" in pyogrio.list_layers(tmp_path / "diagnosis.gpkg")[:, 0]


def test_cli_import_writes_the_plan_and_the_diagnosis(city, tmp_path):
    city.areas.to_file(tmp_path / "areas.geojson")
    city.customers.drop(columns="geometry").to_csv(tmp_path / "customers.csv", index=False)
    city.plan.grids("main_grid").to_file(tmp_path / "main.gpkg")
    subs = city.plan.grids("sub_grid")
    spill = subs["grid_id"].iloc[0]  # drawn 300 m past its main grid's line
    subs.loc[0, "geometry"] = subs.geometry.iloc[0].buffer(0.003).intersection(
        shapely.union_all(city.areas.geometry.values))
    subs.to_file(tmp_path / "sub.gpkg")
    res = CliRunner().invoke(app, [
        "import", str(tmp_path / "areas.geojson"), str(tmp_path / "main.gpkg"),
        "--grid-column", "grid_id", "--parent-column", "parent_id",
        "--sub-grids", str(tmp_path / "sub.gpkg"), "--grids-crs", "wgs84",
        "--customers", str(tmp_path / "customers.csv"), "--points-crs", "wgs84",
        "--resolution", "8", "--min-resolution", "8", "--target-per-unit", "1e9",
        "--balance", "subscribers=0.15", "--author", "ann", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    diag = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert {"overlaps", "gaps", "multipart", "crossing_branches", "invalid", "balance",
            "snapping"} <= set(diag)
    assert diag["overlaps"] == [] and diag["gaps"] == []
    assert [s["grid_id"] for s in diag["sub_outside"]] == [spill]
    assert diag["sub_outside"][0]["area_m2"] > 1e5
    plan = Plan.load(tmp_path / "out" / "plan.gpkg")
    assert plan.author == "ann" and plan.measures == ["subscribers"]
    assert set(plan.units["main_grid_id"]) == set(city.plan.units["main_grid_id"])
    assert nesting_ok(plan)


def test_snapping_keeps_each_key_account_in_one_grid(city, units, tmp_path):
    units, graph = units
    main, sub = _own_grids(city.plan, tmp_path)
    # key accounts whose footprints straddle a drawn main-grid line: two touching units each
    u = city.plan.units
    groups, used = [], set()
    for a, b in sorted(graph.edges()):
        if (u.at[a, "branch_id"] == u.at[b, "branch_id"]
                and u.at[a, "main_grid_id"] != u.at[b, "main_grid_id"]
                and not {a, b} & used):
            groups.append([a, b])
            used |= {a, b}
        if len(groups) == 4:
            break
    assert len(groups) == 4
    plan, _ = snap_to_units(units, graph, main, sub, MEASURES, together=groups)
    for grp in groups:
        assert plan.units.loc[grp, "main_grid_id"].nunique() == 1, grp
        assert plan.units.loc[grp, "sub_grid_id"].nunique() == 1, grp
    assert nesting_ok(plan)
    for level in ("main_grid", "sub_grid"):
        assert all(contiguous_grids(graph, plan.labels(level)).values()), level
    # everything else follows the drawn lines
    rest = plan.units.index.difference(sorted(used))
    assert (plan.units.loc[rest, "main_grid_id"] == u.loc[rest, "main_grid_id"]).mean() > 0.98
