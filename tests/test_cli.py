"""The territory command: real files in, real files out, clear errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import geopandas as gpd
import gerrychain
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from typer.testing import CliRunner

from territory.cli import app
from territory.graph import write_graph_json
from territory.plan import Plan
from tests.conftest import lattice

runner = CliRunner()


def square_layer(tmp_path, n=8, bad=False):
    rows, geoms = [], []
    for i in range(n):
        for j in range(n):
            x, y = 114.0 + i * 0.002, 22.5 + j * 0.002
            geoms.append(shapely.box(x, y, x + 0.002, y + 0.002))
            rows.append({"uid": f"u{i:02d}{j:02d}", "subscribers": 100 + (i * j) % 7,
                         "workload": 5 + (i + j) % 3})
    if bad:
        geoms[0] = shapely.Polygon([(114, 22.5), (114.002, 22.502), (114.002, 22.5),
                                    (114, 22.502)])
    gdf = gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4326")
    path = tmp_path / "units.geojson"
    pyogrio.write_dataframe(gdf, path)
    return path


def test_partition_polygon_layer(tmp_path):
    src = square_layer(tmp_path)
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["partition", str(src), "--grids", "4", "--id-column", "uid",
                              "--balance", "subscribers=0.02", "--balance", "workload=0.05",
                              "--out", str(out), "--time-limit", "10"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df.columns) == ["unit_id", "grid_id"]
    assert len(df) == 64 and df["unit_id"].is_unique and set(df["grid_id"]) == {0, 1, 2, 3}
    assert "max deviation subscribers" in res.output


def test_partition_graph_json_boundary_objective(tmp_path):
    g = lattice(6, 6)
    for _, d in g.nodes(data=True):
        d["cx"], d["cy"] = d.pop("x"), d.pop("y")
    src = tmp_path / "g.json"
    write_graph_json(g, src)
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["partition", str(src), "-k", "3", "--balance", "subscribers=0.1",
                              "--objective", "boundary", "--xy", "cx,cy", "--exact",
                              "--time-limit", "6", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out)) == 36
    assert "status" in res.output


def test_partition_time_limit_holds_for_the_whole_command(tmp_path):
    """--time-limit promises the whole command's wall time, start-up, imports and reading
    included (the process's start is its own, so no tolerance is needed); the search, which
    would use every second it is given, gets what is left. 5 s, or more on a machine so
    busy that starting the command (``--help``) takes over 1.5 s."""
    src = tmp_path / "g.json"
    write_graph_json(lattice(30, 30), src)
    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-c", "from territory.cli import main; main()"]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--help"], capture_output=True, check=True, timeout=120)
    limit = max(5.0, 2 * (time.perf_counter() - t0) + 2)
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, "partition", str(src), "-k", "6", "--balance",
                          "subscribers=0.01", "--objective", "boundary", "--time-limit",
                          f"{limit:.1f}", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert len(pd.read_csv(out)) == 900
    assert wall < float(f"{limit:.1f}"), f"{wall:.2f} s of wall for --time-limit {limit:.1f}"


def test_partition_graph_written_by_gerrychain(tmp_path):
    """GerryChain's own Graph.to_json file (adjacency JSON, C_X/C_Y centroids) is read."""
    gdf = gpd.read_file(square_layer(tmp_path, n=5)).to_crs(32650)
    gdf["C_X"], gdf["C_Y"] = gdf.centroid.x, gdf.centroid.y
    gdf["population"] = gdf["subscribers"] * 10
    src = tmp_path / "gerrychain.json"
    gerrychain.Graph.from_geodataframe(gdf.set_index("uid")).to_json(str(src))
    assert {"nodes", "adjacency"} <= set(json.loads(src.read_text()))
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["partition", str(src), "-k", "3", "--balance", "population=0.1",
                              "--time-limit", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert sorted(df["unit_id"]) == sorted(gdf["uid"]) and set(df["grid_id"]) == {0, 1, 2}
    # every grid within ±10 % of the mean population, checked here from the file
    load = df.merge(gdf[["uid", "population"]], left_on="unit_id", right_on="uid").groupby(
        "grid_id")["population"].sum()
    assert (abs(load / load.mean() - 1) <= 0.1 + 1e-9).all()


def test_partition_infeasible_exits_3_with_explanation(tmp_path):
    src = square_layer(tmp_path, n=3)
    res = runner.invoke(app, ["partition", str(src), "--grids", "9", "--id-column", "uid",
                              "--balance", "subscribers=0.001", "--out",
                              str(tmp_path / "o.csv"), "--time-limit", "5"])
    assert res.exit_code == 3
    assert "subscribers" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("args, match", [
    (["--balance", "subscribers=abc"], "fraction"),
    (["--balance", "nope=0.1"], "not a unit attribute"),
    (["--grids", "100"], "larger than the number of units"),
])
def test_partition_bad_arguments_exit_2(tmp_path, args, match):
    src = square_layer(tmp_path, n=3)
    base = ["partition", str(src), "--id-column", "uid", "--out", str(tmp_path / "o.csv")]
    if "--grids" not in args:
        base += ["--grids", "2"]
    if "--balance" not in args:
        base += ["--balance", "subscribers=0.1"]
    res = runner.invoke(app, base + args)
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output


def test_partition_self_intersecting_polygon_exit_2(tmp_path):
    src = square_layer(tmp_path, n=3, bad=True)
    args = ["partition", str(src), "--grids", "2", "--id-column", "uid", "--balance",
            "subscribers=0.3", "--time-limit", "5", "--out", str(tmp_path / "o.csv")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--repair" in res.output and "repair=True" not in res.output
    res = runner.invoke(app, [*args, "--repair"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "o.csv")) == 9


def test_partition_malformed_file_exit_2(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{ not geojson")
    res = runner.invoke(app, ["partition", str(bad), "--grids", "2", "--id-column", "uid",
                              "--balance", "subscribers", "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 2 and "bad.geojson" in res.output


def test_demo_and_plan_commands(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--city", "xiamen", "--customers", "8000",
                              "--main-grids", "8", "--sub-grids", "2", "--out", str(out),
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    plan = Plan.load(out / "plan.gpkg")
    assert plan.units["main_grid_id"].nunique() == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["main_grid"]["subscribers"]["max_abs_deviation"] <= 0.05 + 1e-9
    assert metrics["sub_grid"]["all_contiguous"]
    # every customer assigned, in input order, to the sub-grid of the unit holding it
    assigned = pd.read_csv(out / "customers_assigned.csv", dtype={"branch_id": str})
    synthetic = pd.read_csv(out / "synthetic" / "customers.csv")
    assert list(assigned["customer_id"]) == list(synthetic["customer_id"])
    assert (assigned["status"] == "ok").all()
    per_grid = assigned.groupby("sub_grid_id").size()
    units = plan.units.groupby("sub_grid_id")["customers"].sum()
    assert per_grid.reindex(units.index, fill_value=0).equals(units.astype(per_grid.dtype))
    assert (out / "maps" / "overview.html").exists() and (out / "maps" / "city.pdf").exists()
    assert len(list((out / "maps" / "field").glob("*.html"))) == 8
    assert list((out / "reports").glob("*.csv")) and list((out / "exports").glob("*.kml"))
    assert len(list((out / "reports" / "grids").glob("*.pdf"))) == 8  # each grid's analysis
    assert (out / "reports" / "grids" / "index.html").exists()
    # the synthetic addresses step: every sampled customer comes back, most placed by address
    by_address = pd.read_csv(out / "addresses_assigned.csv")
    assert len(by_address) == len(pd.read_csv(out / "synthetic" / "addresses.csv"))
    assert (by_address["status"] == "ok").mean() > 0.9
    assert set(by_address["match_level"].dropna()) <= {"building", "community", "district"}
    # territory plan on the demo's own files, with customers given in GCJ-02
    cust = pd.read_csv(out / "synthetic" / "customers.csv")
    from territory.crs import wgs84_to_gcj02

    cust["lng"], cust["lat"] = wgs84_to_gcj02(cust["lng"], cust["lat"])
    cust.to_csv(tmp_path / "cust_gcj.csv", index=False)
    from territory.boundaries import DATA_DIR

    counts = {"350203": 2, "350205": 1, "350206": 2, "350211": 1, "350212": 1, "350213": 1}
    pd.DataFrame({"branch_id": list(counts), "main_grids": list(counts.values())}).to_csv(
        tmp_path / "counts.csv", index=False)
    res = runner.invoke(app, [
        "plan", str(DATA_DIR / "xiamen_districts_gcj02.geojson"), "--boundaries-crs", "gcj02",
        "--customers", str(tmp_path / "cust_gcj.csv"), "--points-crs", "gcj02",
        "--resolution", "8", "--branch-grids", str(tmp_path / "counts.csv"),
        "--sub-grids", "2", "--balance",
        "customers=0.1", "--out", str(tmp_path / "p"), "--workers", "1",
        "--time-limit-main", "5", "--time-limit-sub", "2",
    ])
    assert res.exit_code == 0, res.output
    plan2 = Plan.load(tmp_path / "p" / "plan.gpkg")
    assert plan2.units["customers"].sum() == len(cust)
    got = plan2.units.groupby("branch_id")["main_grid_id"].nunique().to_dict()
    assert got == counts


def test_plan_missing_customer_columns_exit_2(tmp_path):
    (tmp_path / "c.csv").write_text("x,y\n1,2\n")
    from territory.boundaries import DATA_DIR

    res = runner.invoke(app, ["plan", str(DATA_DIR / "xiamen_districts_gcj02.geojson"),
                              "--boundaries-crs", "gcj02", "--customers",
                              str(tmp_path / "c.csv"), "--main-grids", "6",
                              "--points-crs", "wgs84"])
    assert res.exit_code == 2 and "lng" in res.output


def test_plan_on_planner_supplied_units(tmp_path):
    """Villages or communities as units: any polygon layer tiling the area."""
    from territory.boundaries import load_city
    from territory.synth import generate_city, write_city
    from territory.units import build_units

    areas = load_city("xiamen")
    villages = build_units(areas, area_column="adcode", resolution=7).reset_index()
    villages["village"] = [f"V{i:04d}" for i in range(len(villages))]
    pyogrio.write_dataframe(villages[["village", "geometry"]], tmp_path / "villages.gpkg")
    pyogrio.write_dataframe(areas, tmp_path / "districts.gpkg")
    write_city(generate_city(areas, n_customers=5000, seed=2), tmp_path / "data")
    res = runner.invoke(app, [
        "plan", str(tmp_path / "districts.gpkg"), "--customers",
        str(tmp_path / "data" / "customers.csv"), "--units", str(tmp_path / "villages.gpkg"),
        "--unit-id-column", "village", "--main-grids", "6", "--sub-grids", "1",
        "--points-crs", "wgs84",
        "--balance", "customers=0.25", "--out", str(tmp_path / "p"), "--workers", "1",
        "--time-limit-main", "5",
    ])
    assert res.exit_code == 0, res.output
    plan = Plan.load(tmp_path / "p" / "plan.gpkg")
    assert set(plan.units.index) == set(villages["village"])
    assert plan.units["customers"].sum() == 5000


# -- formats people bring, and cheap checks first ------------------------------------------
def small_city(tmp_path, *, codes=("440305", "440306"), n=400, seed=0):
    """Two districts side by side near Shenzhen and ``n`` customers with Chinese addresses."""
    boxes = [shapely.box(113.90 + 0.03 * i, 22.50, 113.93 + 0.03 * i, 22.53)
             for i in range(len(codes))]
    areas = gpd.GeoDataFrame({"adcode": list(codes), "name": ["南山区", "宝安区", "福田区"][
        :len(codes)]}, geometry=boxes, crs="EPSG:4326")
    path = tmp_path / "districts.geojson"
    pyogrio.write_dataframe(areas, path)
    rng = np.random.default_rng(seed)
    cust = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "address": [f"深圳市南山区科技园{i}号" for i in range(n)],
        "lng": rng.uniform(113.90, 113.90 + 0.03 * len(codes), n),
        "lat": rng.uniform(22.50, 22.53, n),
        "subscribers": rng.integers(1, 4, n),
    })
    return path, cust


def plan_args(boundaries, customers, out, *extra):
    return ["plan", str(boundaries), "--customers", str(customers), "--points-crs", "wgs84",
            "--main-grids", "2",
            "--sub-grids", "1", "--resolution", "8", "--balance", "customers=0.3",
            "--workers", "1", "--time-limit-main", "5", "--out", str(out), *extra]


def test_plan_reads_gb18030_customers(tmp_path):
    src, cust = small_city(tmp_path)
    csv = tmp_path / "customers.csv"
    cust.to_csv(csv, index=False, encoding="gb18030")  # what a Chinese CRM exports
    res = runner.invoke(app, plan_args(src, csv, tmp_path / "p"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "--encoding" in text and "line 2" in text and "gb18030" in text
    res = runner.invoke(app, plan_args(src, csv, tmp_path / "p", "--encoding", "gb18030"))
    assert res.exit_code == 0, res.output
    assert Plan.load(tmp_path / "p" / "plan.gpkg").units["customers"].sum() == len(cust)


@pytest.fixture
def no_unit_building(monkeypatch):
    """Unit building fails the test if reached: the checks under test must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("build_units was called before the input was checked")

    monkeypatch.setattr("territory.pipeline.build_units", refuse)


@pytest.mark.parametrize("args, match", [
    (["--tolerance", "2", "--balance", "customers"], "--tolerance 2.0: give a fraction"),
    (["--balance", "customers=1.5"], "between 0 and 1"),
    (["--main-grids", "0"], "--main-grids 0"),
    (["--main-grids", "1"], "each of 2 branches"),
    (["--sub-grids", "0"], "--sub-grids 0"),
    (["--time-limit-main", "0"], "--time-limit-main 0"),
    (["--objective", "round"], "--objective 'round'"),
    (["--balance", "revenue"], "the tables given provide ['customer_manager_hours', "
                               "'customers', 'subscribers', 'workload', 'workload_customers']"),
])
def test_plan_cheap_checks_fail_before_building_units(tmp_path, no_unit_building, args, match):
    src, cust = small_city(tmp_path)
    cust.to_csv(tmp_path / "c.csv", index=False)
    base = plan_args(src, tmp_path / "c.csv", tmp_path / "p")
    for opt in ("--tolerance", "--main-grids", "--sub-grids", "--time-limit-main",
                "--objective", "--balance"):
        if opt in args and opt in base:
            i = base.index(opt)
            del base[i:i + 2]
    res = runner.invoke(app, base + args)
    assert res.exit_code == 2, res.output
    assert match in " ".join(res.output.split()) and "Traceback" not in res.output


def test_plan_refuses_duplicate_branch_codes_unless_dissolved(tmp_path):
    src, cust = small_city(tmp_path, codes=("440305", "440306", "440305"))
    cust.to_csv(tmp_path / "c.csv", index=False)
    res = runner.invoke(app, plan_args(src, tmp_path / "c.csv", tmp_path / "p"))
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "'440305' in rows [0, 2]" in text
    assert "--dissolve-branches" in text
    res = runner.invoke(app, plan_args(src, tmp_path / "c.csv", tmp_path / "p",
                                       "--dissolve-branches"))
    assert res.exit_code == 0, res.output
    units = Plan.load(tmp_path / "p" / "plan.gpkg").units
    assert sorted(units["branch_id"].unique()) == ["440305", "440306"]
    assert units["customers"].sum() == len(cust)


def test_plan_says_lat_and_lng_are_swapped(tmp_path, no_unit_building):
    src, cust = small_city(tmp_path)
    cust.rename(columns={"lng": "lat", "lat": "lng"}).to_csv(tmp_path / "c.csv", index=False)
    res = runner.invoke(app, plan_args(src, tmp_path / "c.csv", tmp_path / "p"))
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "looks like lat and lng are swapped" in text
    assert "'lng'" in text and "'lat'" in text and "--lng-column" in text


@pytest.mark.parametrize("content", ["", "customer_id,lng,lat,subscribers\n"])
def test_plan_says_the_customer_file_is_empty(tmp_path, no_unit_building, content):
    src, _ = small_city(tmp_path)
    (tmp_path / "c.csv").write_text(content)
    res = runner.invoke(app, plan_args(src, tmp_path / "c.csv", tmp_path / "p"))
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "c.csv is empty" in text and "sums to 0" not in text


def test_local_cs_boundaries_name_the_option_of_each_command(tmp_path):
    from tests.test_boundaries import local_shapefile

    src = local_shapefile(tmp_path)
    _, cust = small_city(tmp_path)
    cust.to_csv(tmp_path / "c.csv", index=False)
    res = runner.invoke(app, plan_args(src, tmp_path / "c.csv", tmp_path / "p"))
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "'Site grid'" in text and "--boundaries-crs" in text
    res = runner.invoke(app, ["partition", str(src), "-k", "2", "--id-column", "adcode",
                              "--balance", "area_m2", "--out", str(tmp_path / "o.csv")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "pass --crs" in text and "Traceback" not in text


@pytest.mark.parametrize("args, match", [
    (["-k", "0"], "--grids 0"),
    (["--time-limit", "0"], "--time-limit 0"),
    (["--balance", "subscribers=2"], "between 0 and 1"),
    (["--objective", "round"], "--objective 'round'"),
])
def test_partition_checks_parameters_before_reading_units(tmp_path, monkeypatch, args, match):
    def refuse(*a, **kw):
        raise AssertionError("the units were read before the parameters were checked")

    monkeypatch.setattr("territory.partition_io.read_boundaries", refuse)
    base = {"-k": "2", "--time-limit": "5", "--balance": "subscribers=0.1",
            "--objective": "distance"} | dict(zip(args[::2], args[1::2], strict=True))
    res = runner.invoke(app, ["partition", str(square_layer(tmp_path, n=3)), "--id-column",
                              "uid", "--out", str(tmp_path / "o.csv"),
                              *[x for kv in base.items() for x in kv]])
    assert res.exit_code == 2, res.output
    assert match in " ".join(res.output.split())
