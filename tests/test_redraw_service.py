"""The redraw service over real HTTP (``territory serve`` on 127.0.0.1): rebalance and import
as background jobs, store edits, and what each refuses.

Two service areas are stored before the server starts: ``lattice`` (a tiny plan edits and
rebalances take milliseconds on) and nothing else; the import test makes ``xiamen-3`` from a
drawn map of three Xiamen districts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely

from api.assignment import write_index
from api.jobs import run_job
from api.routes.redraw import run_redraw
from api.store import PlanStore
from territory.plan import Plan
from territory.progress import GRAPH, REBALANCE
from tests.test_api import KEYS, assert_problem, headers, wait_for_job
from tests.test_api_server import Server

from .redraw_city import small_city
from .redraw_lattice import lattice_plan

MAX_GRID_BYTES = 400_000
DIAGNOSIS_KEYS = {"overlaps", "gaps", "multipart", "crossing_branches", "invalid", "balance",
                  "snapping"}


def _store_lattice(root: Path) -> str:
    plan, _ = lattice_plan(3, tolerance=0.9)
    return PlanStore(root).add_plan(plan, service_area="lattice", created_by="test",
                                    index_writer=write_index).plan_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("redraw-server")
    config = tmp / "territory.toml"
    keys = "\n".join(f'"{key}" = "{role}"' for role, key in KEYS.items())
    config.write_text(f"max_grid_layer_bytes = {MAX_GRID_BYTES}\nsolver_workers = 1\n"
                      f"[api_keys]\n{keys}\n[points_crs]\nxiamen-3 = \"wgs84\"\n",
                      encoding="utf-8")
    _store_lattice(tmp / "data")
    srv = Server(tmp / "data", config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _current(http, area: str) -> dict:
    plans = http.get("/plans", params={"service_area": area}, headers=headers("viewer"))
    return max(plans.json()["data"], key=lambda p: p["version"])


def test_rebalance_is_a_job_whose_result_is_a_child_version(server: Server) -> None:
    p = headers("planner")
    with server.client() as http:
        base = _current(http, "lattice")["plan_id"]
        body = {"base": base, "budget": "customers=5%", "tolerance": 0.05, "time_limit": 10}
        assert_problem(http.post(f"/plans/{base}/rebalance", json=body,
                                 headers=headers("viewer")), 403)
        bad = assert_problem(http.post(f"/plans/{base}/rebalance", headers=p,
                                       json={**body, "budget": "staff=3"}), 422)
        assert bad["errors"][0]["field"] == "budget"
        r = http.post(f"/plans/{base}/rebalance", json=body, headers=p)
        assert r.status_code == 202, r.text
        job = wait_for_job(http, r.headers["location"])
        assert job["status"] == "done", job
        new = http.get(f"/plans/{job['plan_id']}", headers=p).json()
        figures = new["parameters"]["rebalance"]
        assert new["parameters"]["parent"] == base and new["version"] == 2
        total = lattice_plan(3)[0].units["customers"].sum()
        assert 0 < figures["moved"]["customers"] <= 0.05 * total + 1e-6
        history = http.get(f"/plans/{job['plan_id']}/history", headers=p).json()
        assert [h["plan_id"] for h in history] == [base, job["plan_id"]]
        # the base is stale now: refused before any job, naming the current version
        stale = http.post(f"/plans/{base}/rebalance", json=body, headers=p)
        assert_problem(stale, 409)
        assert stale.headers["x-current-version"] == job["plan_id"]
        # a headcount change: B1's team grows by one, so B1 gets one more sub-grid
        v2 = job["plan_id"]
        subs = http.get(f"/plans/{v2}", headers=p).json()["n_grids"]["sub_grid"]
        more = {**body, "base": v2, "budget": "customers=50%", "tolerance": 0.9,
                "headcount": {"B1": 1}}
        job = wait_for_job(http, http.post(f"/plans/{v2}/rebalance", json=more,
                                           headers=p).headers["location"])
        assert job["status"] == "done", job
        v3 = http.get(f"/plans/{job['plan_id']}", headers=p).json()
        assert v3["parameters"]["parent"] == v2 and v3["n_grids"]["sub_grid"] == subs + 1
        # a branch the plan does not have: the job fails, naming the field
        r = http.post(f"/plans/{v3['plan_id']}/rebalance", headers=p,
                      json={**more, "base": v3["plan_id"], "headcount": {"B9": 1}})
        failed = wait_for_job(http, r.headers["location"])
        assert failed["status"] == "failed", failed
        assert "`headcount`: branch 'B9' is not in the plan" in failed["error"]["detail"]


def test_the_rebalance_job_reports_its_stages_and_never_saves_over_a_newer_version(
        tmp_path: Path) -> None:
    base = _store_lattice(tmp_path)
    store = PlanStore(tmp_path)
    request = {"kind": "rebalance", "plan_id": base, "base": base, "budget": "customers=5%",
               "tolerance": 0.05, "depth": 2, "time_limit": 10.0, "lock": ["u0_0"],
               "message": "estate"}
    job = store.create_job(service_area="lattice", request=request, created_by="ann",
                           runner="test")
    stages: list[str] = []
    new_id = run_redraw(store, job, lambda stage, done=0, total=None: stages.append(stage),
                        stages.append)
    assert list(dict.fromkeys(stages))[:2] == [GRAPH, REBALANCE]
    new = Plan.load(store.plan_path(new_id))
    assert (new.parent, new.author, new.message) == (base, "ann", "estate")
    assert bool(new.units.at["u0_0", "locked"])
    # a second job on the same base, finished after the first one saved: 409, not saved
    late = store.create_job(service_area="lattice", request=request, created_by="bob",
                            runner="test")
    run_job(str(tmp_path), late.job_id, 1)
    failed = store.get_job(late.job_id)
    assert failed.status == "failed" and failed.error["status"] == 409
    assert new_id in failed.error["detail"]
    assert store.count_plans() == 2  # v1 and the first rebalance


def _drawn_files(tmp: Path) -> dict[str, Path]:
    city = small_city()
    files = {"boundaries": tmp / "areas.geojson", "grids": tmp / "grids.geojson",
             "customers": tmp / "customers.csv"}
    city.areas.to_file(files["boundaries"])
    grids = city.plan.grids("main_grid")
    # the hand-drawn map: one grid drawn 300 m over its neighbour
    grids.loc[0, "geometry"] = grids.geometry.iloc[0].buffer(0.003).intersection(
        shapely.union_all(city.areas.geometry.values))
    grids[["grid_id", "parent_id", "geometry"]].to_file(files["grids"])
    city.customers.drop(columns="geometry").to_csv(files["customers"], index=False)
    return files


def _upload(files: dict[str, Path], **replace: tuple[str, bytes]) -> dict:
    out = {name: (path.name, path.read_bytes()) for name, path in files.items()}
    return out | replace


def test_import_route_audits_and_snaps_a_drawn_map(server: Server, tmp_path: Path) -> None:
    files = _drawn_files(tmp_path)
    p = headers("planner")
    request = {"service_area": "xiamen-3", "parameters": {
        "grid_column": "grid_id", "parent_column": "parent_id", "resolution": 8,
        "min_resolution": 8, "target_per_unit": None, "balance": {"subscribers": 0.15}}}
    form = {"request": json.dumps(request)}
    with server.client() as http:
        jobs = http.get("/jobs", headers=p).json()["count"]
        assert_problem(http.post("/plans/import", files=_upload(files), data=form), 401)
        assert_problem(http.post("/plans/import", files=_upload(files), data=form,
                                 headers=headers("viewer")), 403)
        bad = assert_problem(http.post("/plans/import", headers=p, data=form, files=_upload(
            files, grids=("grids.geojson", b'{"type": "FeatureCollection", "feat'))), 400)
        assert bad["errors"][0]["field"] == "grids"
        assert_problem(http.post("/plans/import", headers=p, data=form, files=_upload(
            files, grids=("grids.shp", b"\0" * 100))), 415)
        big = b'{"type": "FeatureCollection", "features": []}' + b" " * MAX_GRID_BYTES
        assert_problem(http.post("/plans/import", headers=p, data=form, files=_upload(
            files, grids=("grids.geojson", big))), 413)
        wrong = {**request, "parameters": {**request["parameters"], "grid_column": "name"}}
        body = assert_problem(http.post("/plans/import", headers=p, files=_upload(files),
                                        data={"request": json.dumps(wrong)}), 422)
        assert "`grid_column` 'name' is not a column of the grids file" in body["detail"]
        assert http.get("/jobs", headers=p).json()["count"] == jobs  # none queued by these

        r = http.post("/plans/import", headers=p, files=_upload(files), data=form)
        assert r.status_code == 202, r.text
        job = wait_for_job(http, r.headers["location"])
        assert job["status"] == "done", job
        plan = http.get(f"/plans/{job['plan_id']}", headers=p).json()
        assert plan["service_area"] == "xiamen-3"
        assert plan["n_grids"]["main_grid"] == small_city().plan.units["main_grid_id"].nunique()
        diag = http.get(f"/plans/{job['plan_id']}/diagnosis", headers=headers("viewer"))
        assert DIAGNOSIS_KEYS <= set(diag.json())
        overlaps = diag.json()["overlaps"]
        assert overlaps and all(o["area_m2"] > 0 for o in overlaps)
        lattice = _current(http, "lattice")["plan_id"]
        assert_problem(http.get(f"/plans/{lattice}/diagnosis", headers=p), 404)


def test_store_edits_over_http(server: Server) -> None:
    p = headers("planner")
    with server.client() as http:
        base = _current(http, "lattice")["plan_id"]
        add = {"base": base, "kind": "add_store", "store_id": "N1", "name": "Hall",
               "lng": 114.005, "lat": 22.605, "crs": "wgs84", "message": "new hall"}
        missing = assert_problem(http.post(f"/plans/{base}/edits", headers=p, json={
            "base": base, "kind": "add_store", "store_id": "N1"}), 422)
        assert {e["field"] for e in missing["errors"]} == {"lng", "lat", "crs"}
        r = http.post(f"/plans/{base}/edits", json=add, headers=p)
        assert r.status_code == 201, r.text
        v2 = r.json()
        assert v2["parent"] == base and v2["message"] == "new hall"
        refused = assert_problem(http.post(f"/plans/{v2['plan_id']}/edits", headers=p, json={
            **add, "base": v2["plan_id"], "store_id": "N2", "lng": 0.0, "lat": 0.0}), 422)
        assert "outside the plan's units" in refused["detail"]
        r = http.post(f"/plans/{v2['plan_id']}/edits", headers=p,
                      json={"base": v2["plan_id"], "kind": "close_store", "store_id": "N1"})
        assert r.status_code == 201, r.text
        d = http.get(f"/plans/{base}/diff/{r.json()['plan_id']}", headers=p).json()
        assert d["count"] == 0 and d["stores"] == []  # opened then closed: nothing left
        d = http.get(f"/plans/{base}/diff/{v2['plan_id']}", headers=p).json()
        assert [(s["store_id"], s["change"]) for s in d["stores"]] == [("N1", "opened")]
