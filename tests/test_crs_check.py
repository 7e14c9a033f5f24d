"""Coordinates are never assumed, and every batch is checked for a mistaken CRS.

The plan: Xiamen island (Siming, Huli) tiled by adaptive H3 units holding 5 000 synthetic
customers; each unit is its own sub-grid (the check looks at units, not at the hierarchy).
The batch: 2 000 more customers of the same synthetic city, true WGS84, converted to GCJ-02 or
BD-09 with territory.crs and then declared rightly or wrongly.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from api.assignment import write_index
from api.main import create_app
from api.settings import Settings
from api.store import PlanStore
from territory.assign import Columns, assign, assign_file, assign_frame
from territory.assign_index import AssignmentIndex
from territory.boundaries import load_city
from territory.cli import app
from territory.crs import from_wgs84, to_wgs84
from territory.crs_check import CANDIDATES, CrsMismatchWarning, Sample, populated_units
from territory.errors import InvalidInputError
from territory.pipeline import Inputs, UnitOptions, build_unit_table, read_points
from territory.plan import Plan
from territory.synth import generate_city
from territory.units import locate_points

N_PLAN, N_BATCH = 5_000, 2_000
KEY = "k-crs-check-ops"


@pytest.fixture(scope="module")
def city():
    logging.getLogger("territory").setLevel(logging.ERROR)
    areas = load_city("xiamen")
    areas = areas[areas["adcode"].isin(["350203", "350206"])].reset_index(drop=True)
    customers = generate_city(areas, n_customers=N_PLAN + N_BATCH, seed=1).customers
    units, _ = build_unit_table(Inputs(areas, "adcode", customers.iloc[:N_PLAN]),
                                UnitOptions(resolution=9, target_per_unit=40, min_resolution=7))
    units["main_grid_id"] = units["branch_id"] + "-M01"
    units["sub_grid_id"] = units.index.to_numpy()
    plan = Plan(units=units, measures=["subscribers"])
    batch = customers.iloc[N_PLAN:]
    return areas, plan, AssignmentIndex.build(plan), batch["lng"].to_numpy(), \
        batch["lat"].to_numpy()


@pytest.fixture(scope="module")
def plan_file(city, tmp_path_factory) -> Path:
    return city[1].save(tmp_path_factory.mktemp("crs") / "plan.gpkg")


def _said(result) -> str:
    return " ".join(result.output.split())


# -- the check ----------------------------------------------------------------------------
@pytest.mark.parametrize(("truth", "declared"), [("gcj02", "wgs84"), ("bd09", "wgs84"),
                                                 ("wgs84", "gcj02"), ("gcj02", "bd09")])
def test_a_mislabelled_batch_warns_naming_its_system(city, truth, declared):
    _, _, index, x, y = city
    tx, ty = from_wgs84(x, y, truth)
    with pytest.warns(CrsMismatchWarning, match=rf"declared {declared} fit better as {truth}:"
                                                r" \d+% vs \d+% of a 2,000-point sample") as w:
        result = assign(index, tx, ty, crs=declared)
    assert len(w) == 1 and "populated units" in str(w[0].message)
    # assigned as declared all the same: the check only reports
    wx, wy = to_wgs84(tx, ty, declared)
    np.testing.assert_array_equal(result.unit, index.locate(wx, wy))


@pytest.mark.parametrize("truth", CANDIDATES)
def test_a_correctly_declared_batch_does_not_warn(city, truth):
    _, _, index, x, y = city
    tx, ty = from_wgs84(x, y, truth)
    found: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CrsMismatchWarning)
        assign(index, tx, ty, crs=truth, on_warning=found.append)
        assign(index, tx, ty, crs=truth)  # no warning raised either
    assert found == []
    sample = Sample()
    sample.add(tx, ty, truth)
    (fit,) = sample.fits(populated_units(index))
    assert fit.likely is None and fit.message.startswith(f"points declared {truth} fit as "
                                                          "declared: ")
    # and the figures say why: the declared reading lands best (oracle: GEOS, not the index)
    shares = {c: float((locate_points(city[1].units, *to_wgs84(tx, ty, c)) >= 0).mean())
              for c in CANDIDATES}
    assert max(shares, key=shares.get) == truth


def test_single_points_and_small_batches_are_not_checked(city):
    _, _, index, x, y = city
    gx, gy = from_wgs84(x, y, "gcj02")
    found: list[str] = []
    for n in (1, 99):
        assign(index, gx[:n], gy[:n], crs="wgs84", on_warning=found.append)
    assert found == []


def test_a_file_is_sampled_across_its_chunks_and_warns_once(city, tmp_path):
    _, _, index, x, y = city
    gx, gy = from_wgs84(x, y, "gcj02")
    src = tmp_path / "in.csv"
    pd.DataFrame({"id": range(len(gx)), "lng": gx, "lat": gy}).to_csv(src, index=False)
    found: list[str] = []
    assign_file(index, src, tmp_path / "out.csv", columns=Columns(crs="wgs84"),
                chunk_size=300, on_warning=found.append)
    # one warning for the file, on a sample drawn from all seven chunks
    assert len(found) == 1 and "better as gcj02" in found[0]
    assert "2,000-point sample" in found[0]
    # per-row systems: rows declared gcj02 are fine, rows declared wgs84 are not
    df = pd.DataFrame({"lng": np.r_[gx[:1000], gx[1000:]], "lat": np.r_[gy[:1000], gy[1000:]],
                       "sys": ["gcj02"] * 1000 + ["wgs84"] * 1000})
    found.clear()
    assign_frame(index, df, columns=Columns(crs_column="sys"), on_warning=found.append)
    assert len(found) == 1 and found[0].startswith("points declared wgs84 fit better as gcj02")


def test_the_sample_is_uniform_over_chunks():
    """Bottom-k keys drawn only for each chunk's k smallest: a 1 000-row chunk after a 9 000-row
    one holds a tenth of the sample on average, and the sample is seeded."""
    shares = []
    for seed in range(40):
        s = Sample(size=500, seed=seed)
        s.add(np.zeros(9_000), np.zeros(9_000), "wgs84")
        s.add(np.ones(1_000), np.zeros(1_000), "wgs84")
        assert len(s._x) == 500
        shares.append(s._x.mean())
    assert abs(np.mean(shares) - 0.1) < 0.01
    a, b = Sample(seed=3), Sample(seed=3)
    for s in (a, b):
        s.add(np.arange(5_000.0), np.arange(5_000.0), "gcj02")
    np.testing.assert_array_equal(a._x, b._x)
    assert len(set(a._x.tolist())) == 2_000


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(truth=st.sampled_from(CANDIDATES), declared=st.sampled_from([*CANDIDATES, "cgcs2000"]),
       n=st.integers(100, 800), seed=st.integers(0, 2**16))
def test_the_check_never_changes_an_assignment(city, truth, declared, n, seed):
    """Whatever it concludes, assignment is the declared reading located by GEOS."""
    _, plan, index, x, y = city
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), n, replace=False)
    tx, ty = from_wgs84(x[rows], y[rows], truth)
    before = tx.copy(), ty.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CrsMismatchWarning)
        result = assign(index, tx, ty, crs=declared)
    np.testing.assert_array_equal(tx, before[0])
    np.testing.assert_array_equal(ty, before[1])
    np.testing.assert_array_equal(result.unit, locate_points(plan.units,
                                                             *to_wgs84(tx, ty, declared)))


def test_populated_units_fall_back_to_the_first_measure(city):
    _, plan, index, x, y = city
    units = plan.units.drop(columns="customers")
    units.loc[units.index[: len(units) // 2], "subscribers"] = 0
    other = Plan(units=units, measures=["subscribers"])
    ref = populated_units(AssignmentIndex.build(other))
    pos = index.locate(x, y)
    np.testing.assert_array_equal(ref.fits(x, y),
                                  (pos >= 0) & (units["subscribers"].to_numpy()[pos] > 0))


def test_read_points_checks_a_table_against_the_service_area(city, tmp_path):
    areas, _, _, x, y = city
    bx, by = from_wgs84(x, y, "bd09")
    pd.DataFrame({"lng": bx, "lat": by}).to_csv(tmp_path / "c.csv", index=False)
    found: list[str] = []
    read_points(tmp_path / "c.csv", crs="gcj02", name="customers", areas=areas,
                on_warning=found.append)
    assert len(found) == 1 and found[0].startswith("customers declared gcj02 fit better as "
                                                   "bd09") and "the service area" in found[0]
    found.clear()
    out = read_points(tmp_path / "c.csv", crs="bd09", name="customers", areas=areas,
                      on_warning=found.append)
    assert found == []
    np.testing.assert_allclose(out["lng"], x, atol=1e-6)


# -- no default CRS -----------------------------------------------------------------------
def test_the_library_refuses_points_without_a_crs(city, tmp_path):
    _, _, index, x, y = city
    with pytest.raises(InvalidInputError, match=r"crs .*wgs84.*gcj02.*bd09"):
        assign(index, x, y)
    df = pd.DataFrame({"lng": x[:5], "lat": y[:5]})
    with pytest.raises(InvalidInputError, match="crs is required"):
        assign_frame(index, df)
    df.to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(InvalidInputError, match="crs is required"):
        assign_file(index, tmp_path / "x.csv", tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(InvalidInputError, match="customers: crs is required"):
        read_points(tmp_path / "x.csv", name="customers")


def test_the_cli_refuses_points_without_a_crs(plan_file, city, tmp_path):
    runner = CliRunner()
    _, _, _, x, y = city
    gx, gy = from_wgs84(x, y, "gcj02")
    src = tmp_path / "in.csv"
    pd.DataFrame({"lng": gx, "lat": gy}).to_csv(src, index=False)
    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out",
                              str(tmp_path / "o.csv")])
    assert res.exit_code == 2 and "--crs" in _said(res) and "required" in _said(res)
    assert not (tmp_path / "o.csv").exists()
    res = runner.invoke(app, ["plan", str(tmp_path / "nowhere.geojson"), "--customers",
                              str(src), "--main-grids", "2"])
    assert res.exit_code == 2 and "--points-crs is required" in _said(res)
    # declared wrongly: assigned as declared, with a warning naming the likely system
    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out",
                              str(tmp_path / "o.csv"), "--crs", "wgs84"])
    assert res.exit_code == 0 and "warning:" in _said(res)
    assert "declared wgs84 fit better as gcj02" in _said(res)
    res = runner.invoke(app, ["assign", str(plan_file), str(src), "--out",
                              str(tmp_path / "o.csv"), "--crs", "gcj02"])
    assert res.exit_code == 0 and "warning" not in _said(res)


def test_map_and_export_need_the_points_crs(plan_file, tmp_path):
    runner = CliRunner()
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "customers.csv").write_text("lng,lat\n118.1,24.5\n")
    for args in (["map", str(plan_file), "--out", str(tmp_path / "m"), "--data", str(folder)],
                 ["export", str(plan_file), "--format", "csv", "--out", str(tmp_path / "e"),
                  "--customers", str(folder / "customers.csv")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "--points-crs is required" in _said(res), res.output
        assert "wgs84, cgcs2000, gcj02, bd09 or EPSG:N" in _said(res)
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()
    # plan-only runs need no CRS
    res = runner.invoke(app, ["export", str(plan_file), "--format", "csv", "--level", "branch",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output


def test_export_checks_customers_against_the_plan(plan_file, city, tmp_path):
    runner = CliRunner()
    _, plan, _, x, y = city
    gx, gy = from_wgs84(x, y, "gcj02")
    src = tmp_path / "c.csv"
    pd.DataFrame({"id": np.arange(len(gx)), "lng": gx, "lat": gy}).to_csv(src, index=False)
    args = ["export", str(plan_file), "--format", "csv", "--level", "branch", "--out",
            str(tmp_path / "e"), "--customers", str(src), "--points-crs"]
    res = runner.invoke(app, [*args, "wgs84"])
    assert res.exit_code == 0 and "warning:" in _said(res), res.output
    assert "customers declared wgs84 fit better as gcj02" in _said(res)
    res = runner.invoke(app, [*args, "gcj02"])
    assert res.exit_code == 0 and "warning" not in _said(res), res.output
    placed = pd.read_csv(tmp_path / "e" / "customers.csv", dtype={"sub_grid_id": str})
    expected = plan.units["sub_grid_id"].to_numpy()[locate_points(plan.units, x, y)]
    inside = placed["sub_grid_id"].notna().to_numpy()
    assert inside.mean() > 0.9
    assert (placed["sub_grid_id"].to_numpy()[inside] == expected[inside]).all()


def test_map_tables_are_checked_against_the_plan(city, tmp_path):
    from territory.cli_maps import read_tables

    _, plan, _, x, y = city
    bx, by = from_wgs84(x, y, "bd09")
    pd.DataFrame({"lng": bx, "lat": by}).to_csv(tmp_path / "customers.csv", index=False)
    found: list[str] = []
    tables = read_tables(tmp_path, "gcj02", areas=plan.units, on_warning=found.append)
    assert len(found) == 1 and found[0].startswith("customers declared gcj02 fit better as bd09")
    found.clear()
    tables = read_tables(tmp_path, "bd09", areas=plan.units, on_warning=found.append)
    assert found == []
    np.testing.assert_allclose(tables["customers"]["lng"], x, atol=1e-6)


def test_export_reads_customers_in_the_crm_encoding(plan_file, city, tmp_path):
    runner = CliRunner()
    _, _, _, x, y = city
    src = tmp_path / "c.csv"
    pd.DataFrame({"name": "思明区营业厅", "lng": x[:50], "lat": y[:50]}).to_csv(
        src, index=False, encoding="gb18030")
    args = ["export", str(plan_file), "--format", "csv", "--level", "branch", "--out",
            str(tmp_path / "e"), "--customers", str(src), "--points-crs", "wgs84"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--encoding" in _said(res) and "line 2" in _said(res)
    res = runner.invoke(app, [*args, "--encoding", "gb18030"])
    assert res.exit_code == 0, res.output
    placed = pd.read_csv(tmp_path / "e" / "customers.csv", encoding="utf-8")
    assert (placed["name"] == "思明区营业厅").all()


# -- the service --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(city, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crs-api")
    PlanStore(root).add_plan(city[1], service_area="xiamen", created_by="test",
                             index_writer=write_index)
    return root


def _client(data_dir: Path, **points_crs: str) -> TestClient:
    return TestClient(create_app(Settings(data_dir=data_dir, api_keys=f"{KEY}:operations",
                                          points_crs=points_crs, solver_workers=1)))


def test_the_service_needs_a_crs_unless_the_area_has_one(city, data_dir):
    _, plan, _, x, y = city
    gx, gy = from_wgs84(x, y, "gcj02")
    h = {"X-API-Key": KEY}
    with _client(data_dir) as client:
        plan_id = client.get("/plans", headers=h).json()["data"][0]["plan_id"]
        for r in (client.get(f"/plans/{plan_id}/assign", params={"lng": x[0], "lat": y[0]},
                             headers=h),
                  client.post(f"/plans/{plan_id}/assign", json=[{"lng": x[0], "lat": y[0]}],
                              headers=h),
                  client.post(f"/plans/{plan_id}/assign/file", headers=h,
                              files={"file": ("p.csv", "lng,lat\n118.1,24.5\n", "text/csv")})):
            assert r.status_code == 422, r.text
            err = r.json()["errors"][0]
            assert err["field"] == "query.crs" and "required" in err["message"]
            assert all(v in err["fix"] for v in ("wgs84", "cgcs2000", "gcj02", "bd09", "EPSG"))
            assert "--" not in r.text  # no CLI flag in an API message
    with _client(data_dir, xiamen="gcj02") as client:  # the operator's default for the area
        one = client.get(f"/plans/{plan_id}/assign", params={"lng": gx[0], "lat": gy[0]},
                         headers=h).json()
        assert one["sub_grid_id"] == plan.units["sub_grid_id"].iloc[
            int(locate_points(plan.units, x[:1], y[:1])[0])]
        points = [{"id": i, "lng": float(a), "lat": float(b)}
                  for i, (a, b) in enumerate(zip(gx, gy, strict=True))]
        batch = client.post(f"/plans/{plan_id}/assign", headers=h, json=points)
        assert batch.status_code == 200 and batch.json()["warnings"] == []
        # a request's own crs wins over the configured one
        wrong = client.post(f"/plans/{plan_id}/assign", params={"crs": "wgs84"}, headers=h,
                            json=points)
        (message,) = wrong.json()["warnings"]
        assert "declared wgs84 fit better as gcj02" in message
        csv = pd.DataFrame({"lng": gx, "lat": gy}).to_csv(index=False)
        f = client.post(f"/plans/{plan_id}/assign/file", params={"crs": "wgs84"}, headers=h,
                        files={"file": ("p.csv", csv, "text/csv")})
        assert f.status_code == 200
        assert "better as gcj02" in json.loads(f.headers["x-assign-warnings"])[0]
        ok = client.post(f"/plans/{plan_id}/assign/file", headers=h,
                         files={"file": ("p.csv", csv, "text/csv")})
        assert json.loads(ok.headers["x-assign-warnings"]) == []


def test_file_uploads_name_their_encoding(city, data_dir):
    _, plan, _, x, y = city
    csv = pd.DataFrame({"name": "思明区营业厅", "lng": x[:20], "lat": y[:20]}).to_csv(
        index=False).encode("gb18030")
    h = {"X-API-Key": KEY}
    with _client(data_dir) as client:
        plan_id = client.get("/plans", headers=h).json()["data"][0]["plan_id"]

        def upload(**params: str):
            return client.post(f"/plans/{plan_id}/assign/file", headers=h,
                               params={"crs": "wgs84", **params},
                               files={"file": ("crm.csv", csv, "text/csv")})

        r = upload()  # read as UTF-8
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "line 2" in detail and "`encoding`" in detail and "gb18030" in detail
        assert "the uploaded file" in detail and str(data_dir) not in detail
        assert "--" not in detail
        for encoding in ("gb18030", "gbk"):
            r = upload(encoding=encoding)
            assert r.status_code == 200, r.text
            out = pd.read_csv(io.BytesIO(r.content), dtype={"sub_grid_id": str})
            assert (out["name"] == "思明区营业厅").all() and len(out) == 20
            expected = plan.units["sub_grid_id"].to_numpy()[
                locate_points(plan.units, x[:20], y[:20])]
            assert list(out["sub_grid_id"]) == list(expected)
        bad = upload(encoding="latin-1")
        assert bad.status_code == 422, bad.text
        err = bad.json()["errors"][0]
        assert err["field"] == "query.encoding" and "gb18030" in err["fix"]


def test_plan_requests_need_points_crs_unless_configured(data_dir, city, tmp_path):
    keys = f"{KEY}:planner"
    datasets = data_dir / "datasets"
    datasets.mkdir(exist_ok=True)
    city[0].to_file(datasets / "b.geojson")
    pd.DataFrame({"lng": city[3], "lat": city[4], "subscribers": 1}).to_csv(
        datasets / "c.csv", index=False)  # the measures a plan balances by default
    request = {"source": {"kind": "datasets", "boundaries": "b.geojson", "customers": "c.csv"},
               "parameters": {"main_grids": 2}}
    h = {"X-API-Key": KEY}
    with TestClient(create_app(Settings(data_dir=data_dir, api_keys=keys))) as client:
        r = client.post("/plans", headers=h, json=request)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "source.points_crs"
        bad = client.post("/plans", headers=h, json={
            **request, "source": {**request["source"], "points_crs": "mars"}})
        assert bad.status_code == 422 and "not recognised" in bad.text
        upload = client.post("/plans/upload", headers=h, data={
            "request": json.dumps({"parameters": {"main_grids": 2}})}, files={
            "boundaries": ("b.geojson", (datasets / "b.geojson").read_bytes()),
            "customers": ("c.csv", (datasets / "c.csv").read_bytes(), "text/csv")})
        assert upload.status_code == 422, upload.text
        assert upload.json()["errors"][0]["field"] == "request.points_crs"
    configured = Settings(data_dir=data_dir, api_keys=keys, points_crs="b:wgs84",
                          max_running_jobs=1)
    with TestClient(create_app(configured)) as client:
        r = client.post("/plans", headers=h, json=request)
        assert r.status_code == 202, r.text
        job = PlanStore(data_dir).get_job(r.json()["job_id"])
        assert job.request["source"]["points_crs"] == "wgs84"


def test_a_plan_job_returns_its_crs_warnings(data_dir, city):
    from tests.test_api import headers, settings_for, wait_for_job

    _, _, _, x, y = city
    datasets = data_dir / "datasets"
    datasets.mkdir(exist_ok=True)
    city[0].to_file(datasets / "b.geojson")
    gx, gy = from_wgs84(x, y, "gcj02")
    pd.DataFrame({"lng": gx, "lat": gy}).to_csv(datasets / "gcj.csv", index=False)
    request = {"source": {"kind": "datasets", "boundaries": "b.geojson",
                          "customers": "gcj.csv", "points_crs": "wgs84"},
               "parameters": {"main_grids": 2, "sub_grids": 2, "resolution": 8,
                              "min_resolution": 7, "time_limit_main": 2,
                              "time_limit_sub": 1, "balance": {"customers": 0.5}}}
    h = headers("planner")
    with TestClient(create_app(settings_for(data_dir))) as client:
        r = client.post("/plans", headers=h, json=request)
        assert r.status_code == 202, r.text
        job = wait_for_job(client, r.headers["location"])
        assert job["status"] == "done", job["error"]
        (message,) = job["warnings"]
        assert message.startswith("customers declared wgs84 fit better as gcj02")
        assert str(data_dir) not in message and "--" not in message
        listed = client.get("/jobs", headers=h).json()["data"]
        assert next(j for j in listed if j["job_id"] == job["job_id"])["warnings"] == [message]


def test_settings_parse_points_crs(monkeypatch):
    monkeypatch.setenv("TERRITORY_POINTS_CRS", "xiamen:GCJ-02, shenzhen:EPSG:4547")
    assert Settings().points_crs == {"xiamen": "gcj02", "shenzhen": "EPSG:4547"}
    monkeypatch.setenv("TERRITORY_POINTS_CRS", "xiamen:mars")
    with pytest.raises(ValueError, match="xiamen"):
        Settings()
