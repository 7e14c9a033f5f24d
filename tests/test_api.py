"""The HTTP service in-process (FastAPI TestClient), each test on its own data directory.

One plan is computed once per test session through the real job machinery (``POST /plans``
→ a child process → the store), on Xiamen with 5 000 synthetic customers; a second version
of it, with its sub-grids renumbered, is stored beside it so that "as of" a day can be told
apart by the answer. Every test then works on a fresh copy of that data directory.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import sqlite3
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import fastapi.routing
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import territory.assign_index as assign_index
import territory.plan as plan_module
from api.assignment import LockedIndex, load_index, write_index
from api.batches import BatchGate
from api.main import create_app
from api.problems import PROBLEM_JSON, ProblemError, territory_problem
from api.settings import ApiKey, Role, Settings, parse_api_keys
from api.store import PLAN_FILE, PlanStore
from territory.assign_index import index_path
from territory.crs import wgs84_to_gcj02
from territory.errors import InfeasibleError, InvalidInputError
from territory.plan import Plan

KEYS = {"planner": "k-planner-0001", "operations": "k-ops-0002", "viewer": "k-viewer-0003"}
SMALL_PARAMETERS: dict[str, Any] = {
    "main_grids": 12, "sub_grids": 2, "resolution": 8, "target_per_unit": 30,
    "min_resolution": 6, "time_limit_main": 3, "time_limit_sub": 2,
    "balance": {"subscribers": 0.25, "workload": 0.25},
}
DEMO_REQUEST = {"service_area": "xiamen", "parameters": SMALL_PARAMETERS,
                "source": {"kind": "demo", "city": "xiamen", "customers": 5000, "seed": 0}}
INSIDE = (118.10, 24.50)  # Siming district, Xiamen island (WGS84)
OUTSIDE = (119.50, 24.50)  # the sea east of Xiamen
JOB_TIMEOUT_S = 120.0


def service_today() -> date:
    """The service's today: effective dates and ``as_of`` are in its time zone (Asia/Shanghai
    by default), where a UTC evening is already tomorrow."""
    return datetime.now(ZoneInfo(Settings.model_fields["timezone"].default)).date()


def headers(role: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[role]}


#: The operator's CRS of each test service area's points (requests here mostly name none).
POINTS_CRS = {"xiamen": "wgs84", "xiamen-copy": "wgs84", "districts": "wgs84", "areas": "wgs84"}


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    """Each key named after its role (``planner=k-planner-0001:planner``)."""
    keys = ",".join(f"{role}={key}:{role}" for role, key in KEYS.items())
    overrides.setdefault("points_crs", POINTS_CRS)
    return Settings(data_dir=data_dir, api_keys=keys, solver_workers=1, **overrides)


def wait_for_job(client: Any, location: str, role: str = "viewer") -> dict[str, Any]:
    """Poll a job until it is done or failed (``client``: TestClient or httpx.Client)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(location, headers=headers(role)).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {location} did not finish in {JOB_TIMEOUT_S} s: {job}")


def renumber_sub_grids(plan: Plan) -> Plan:
    """A next version with S1 and S2 swapped in every main grid: same units, same index."""
    units = plan.units.copy()
    units["sub_grid_id"] = units["sub_grid_id"].str.replace(
        r"S(\d)$", lambda m: f"S{3 - int(m[1])}", regex=True)
    return plan.derive(units)


@functools.cache
def template_dir() -> Path:
    """A data directory holding xiamen v1 (made by a plan job) and v2 (renumbered)."""
    root = Path(tempfile.mkdtemp(prefix="territory-api-"))
    atexit.register(shutil.rmtree, root, True)
    with TestClient(create_app(settings_for(root))) as client:
        r = client.post("/plans", json=DEMO_REQUEST, headers=headers("planner"))
        assert r.status_code == 202, r.text
        job = wait_for_job(client, r.headers["location"])
    assert job["status"] == "done", job
    store = PlanStore(root)
    v1 = Plan.load(store.plan_path(job["plan_id"]))
    v1_index = index_path(store.plan_path(v1.plan_id))
    store.add_plan(renumber_sub_grids(v1), service_area="xiamen", created_by="test",
                   index_writer=lambda p, folder: shutil.copytree(
                       v1_index, index_path(folder / PLAN_FILE)))
    return root


def copy_template(dest: Path) -> Path:
    shutil.copytree(template_dir(), dest)
    return dest


def plans_by_version(client: Any) -> dict[int, dict[str, Any]]:
    data = client.get("/plans", headers=headers("viewer")).json()["data"]
    return {p["version"]: p for p in data}


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with that status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(body)
    assert body["status"] == status
    for err in body["errors"]:
        assert err["field"] and err["message"] and err["fix"]
    return body


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return copy_template(tmp_path / "data")


@pytest.fixture
def client(data_dir: Path):
    with TestClient(create_app(settings_for(data_dir))) as c:
        yield c


@pytest.fixture
def versions(client: TestClient) -> dict[int, dict[str, Any]]:
    return plans_by_version(client)


# -- health, docs, auth --------------------------------------------------------------------
def test_health_and_docs_need_no_key(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["plans"] == 2
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/plans", "/plans/upload", "/jobs/{job_id}", "/assign", "/assign/file",
            "/plans/{plan_id}/grids/{level}", "/plans/{plan_id}/activate"} <= set(paths)


def test_missing_or_unknown_key_is_401(client: TestClient) -> None:
    body = assert_problem(client.get("/plans"), 401)
    assert "X-API-Key" in body["detail"]
    assert "WWW-Authenticate" in client.get("/plans").headers
    assert_problem(client.get("/plans", headers={"X-API-Key": "nope"}), 401)
    assert_problem(client.get("/plans", headers={"Authorization": "Bearer nope"}), 401)
    bearer = {"Authorization": f"Bearer {KEYS['viewer']}"}
    assert client.get("/plans", headers=bearer).status_code == 200


@pytest.mark.parametrize(("role", "action", "allowed"), [
    ("viewer", "read", True), ("viewer", "assign", False), ("viewer", "activate", False),
    ("viewer", "create", False),
    ("operations", "read", True), ("operations", "assign", True),
    ("operations", "activate", False), ("operations", "create", False),
    ("planner", "read", True), ("planner", "assign", False), ("planner", "activate", True),
    ("planner", "create", True),
])
def test_role_matrix(client: TestClient, versions: dict, role: str, action: str,
                     allowed: bool) -> None:
    plan_id = versions[1]["plan_id"]
    h = headers(role)
    call = {
        "read": lambda: client.get(f"/plans/{plan_id}", headers=h),
        "assign": lambda: client.get(f"/plans/{plan_id}/assign",
                                     params={"lng": INSIDE[0], "lat": INSIDE[1]}, headers=h),
        "activate": lambda: client.post(f"/plans/{plan_id}/activate", headers=h),
        # a request the role check refuses before any job is queued, or one that is invalid
        "create": lambda: client.post("/plans", json={"source": {}}, headers=h),
    }[action]
    r = call()
    if allowed:
        assert r.status_code in (200, 422), r.text  # 422: the deliberately empty create
    else:
        assert_problem(r, 403)


def test_a_key_is_checked_before_the_path_or_the_body(client: TestClient,
                                                     versions: dict) -> None:
    """Without a key an existing and a made-up plan id get the same 401 (no 404 telling
    which ids exist), and a body that is not even JSON is not looked at (401, not 422)."""
    real = versions[1]["plan_id"]
    for path in (f"/plans/{real}", "/plans/made-up", f"/plans/{real}/grids/branch",
                 "/jobs/made-up", "/no/such/route"):
        assert assert_problem(client.get(path), 401)["detail"] == assert_problem(
            client.get("/plans"), 401)["detail"]
    r = client.post(f"/plans/{real}/assign", content=b"{not json", headers={
        "X-API-Key": "wrong", "content-type": "application/json"})
    assert_problem(r, 401)
    assert r.headers["connection"] == "close"


def test_created_and_activated_by_show_the_key_name(client: TestClient,
                                                   versions: dict) -> None:
    p, v = headers("planner"), headers("viewer")
    plan_id = versions[1]["plan_id"]
    client.post(f"/plans/{plan_id}/activate", headers=p).raise_for_status()
    plan = client.get(f"/plans/{plan_id}", headers=v).json()
    job = client.get(f"/jobs/{plan['job_id']}", headers=v).json()
    assert plan["created_by"] == job["created_by"] == "planner"
    assert plan["windows"][0]["activated_by"] == "planner"
    text = json.dumps([plan, job])
    assert not any(key[-4:] in text for key in KEYS.values())


def test_openapi_declares_what_the_service_answers(client: TestClient) -> None:
    """Every error answer is a problem+json; a wrong method is 405 with every method of
    the path in ``Allow`` (Starlette alone names those of one route)."""
    doc = client.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    assert list(answer["content"]) == [PROBLEM_JSON], (method, path, status)
    assert "404" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]
    assert {"400", "413", "422"} <= set(doc["paths"]["/assign"]["post"]["responses"])
    r = client.put("/plans/some-id", headers=headers("viewer"))
    assert_problem(r, 405)
    assert r.headers["allow"] == "DELETE, GET, HEAD"
    r = client.options("/plans/effective", headers=headers("viewer"))  # not /plans/{plan_id}
    assert assert_problem(r, 405) and r.headers["allow"] == "GET, HEAD"
    assert_problem(client.get("/plans/effective", params={"as_of": "0"},
                              headers=headers("viewer")), 422)


def test_a_batch_waits_for_a_slot_then_gets_503() -> None:
    gate = BatchGate(slots=1, wait_s=0.2)

    async def main() -> ProblemError:
        async with gate.slot():
            try:
                async with gate.slot():
                    pass
            except ProblemError as exc:
                return exc
        raise AssertionError("a second batch got the only slot")

    exc = anyio.run(main)
    assert exc.status_code == 503 and exc.headers["Retry-After"] == "1"

    async def after() -> None:  # the slot was given back
        async with gate.slot():
            pass

    anyio.run(after)


# -- plans and jobs ------------------------------------------------------------------------
def test_plan_job_made_a_plan(client: TestClient, versions: dict) -> None:
    jobs = client.get("/jobs", headers=headers("viewer")).json()
    assert jobs["count"] == 1
    job = jobs["data"][0]
    assert job["status"] == "done" and job["progress"]["stage"] == "done"
    assert job["plan_id"] == versions[1]["plan_id"] and job["error"] is None
    plan = client.get(f"/plans/{job['plan_id']}", headers=headers("viewer")).json()
    assert plan["service_area"] == "xiamen" and plan["version"] == 1
    assert plan["state"] == "draft" and plan["windows"] == []
    assert plan["n_grids"] == {"branch": 6, "main_grid": 12, "sub_grid": 24}
    assert plan["parameters"]["main_grids"] == 12
    assert versions[2]["version"] == 2 and versions[2]["n_grids"] == plan["n_grids"]


def test_list_is_bounded_and_paged(client: TestClient) -> None:
    h = headers("viewer")
    page = client.get("/plans", params={"limit": 1, "offset": 1}, headers=h).json()
    assert page["count"] == 2 and len(page["data"]) == 1
    assert client.get("/plans", params={"service_area": "nowhere"}, headers=h).json() == {
        "data": [], "count": 0}
    for bad in ({"limit": 0}, {"limit": 10_000}, {"offset": -1}):
        body = assert_problem(client.get("/plans", params=bad, headers=h), 422)
        assert body["errors"][0]["field"].startswith("query.")


def test_unknown_plan_and_job_are_404(client: TestClient) -> None:
    assert_problem(client.get("/plans/nope", headers=headers("viewer")), 404)
    assert_problem(client.get("/jobs/nope", headers=headers("viewer")), 404)


def test_grids_as_geojson(client: TestClient, versions: dict) -> None:
    plan_id = versions[1]["plan_id"]
    h = headers("viewer")
    for level, n in versions[1]["n_grids"].items():
        r = client.get(f"/plans/{plan_id}/grids/{level}", headers=h)
        assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
        fc = r.json()
        assert fc["type"] == "FeatureCollection" and len(fc["features"]) == n
        assert fc["plan_id"] == plan_id and fc["level"] == level
        props = fc["features"][0]["properties"]
        assert {"grid_id", "parent_id", "n_units", "subscribers", "workload"} <= set(props)
        assert fc["features"][0]["geometry"]["type"] in ("Polygon", "MultiPolygon")
    main = client.get(f"/plans/{plan_id}/grids/main_grid", headers=h).json()["features"][0]
    main_id = main["properties"]["grid_id"]
    subs = client.get(f"/plans/{plan_id}/grids/sub_grid", params={"parent_id": main_id},
                      headers=h).json()["features"]
    assert [f["properties"]["parent_id"] for f in subs] == [main_id, main_id]
    one = client.get(f"/plans/{plan_id}/grids/main_grid/{main_id}", headers=h).json()
    assert one["type"] == "Feature" and one["properties"]["grid_id"] == main_id
    assert_problem(client.get(f"/plans/{plan_id}/grids/main_grid/nope", headers=h), 404)
    assert_problem(client.get(f"/plans/{plan_id}/grids/district", headers=h), 422)


def test_metrics(client: TestClient, versions: dict) -> None:
    m = client.get(f"/plans/{versions[1]['plan_id']}/metrics", headers=headers("viewer")).json()
    assert m["measures"] == ["subscribers", "workload"]
    assert m["sub_grid"]["n_grids"] == 24 and m["sub_grid"]["all_contiguous"] is True
    assert m["branch"]["coverage"]["overlap_m2"] < 1.0


# -- effective plans -----------------------------------------------------------------------
def test_activation_dates_and_as_of(client: TestClient, versions: dict) -> None:
    v1, v2 = versions[1]["plan_id"], versions[2]["plan_id"]
    today = service_today()
    later = today + timedelta(days=30)
    p, o = headers("planner"), headers("operations")
    assert client.post(f"/plans/{v1}/activate", headers=p).json()["state"] == "in_force"
    body = client.post(f"/plans/{v2}/activate", json={"effective_from": later.isoformat()},
                       headers=p).json()
    assert body["state"] == "scheduled"
    assert body["windows"][0]["effective_from"] == later.isoformat()
    v1_now = client.get(f"/plans/{v1}", headers=p).json()
    assert v1_now["windows"][0]["effective_to"] == later.isoformat()

    def at(day: date) -> Any:
        return client.get("/assign", params={"lng": INSIDE[0], "lat": INSIDE[1],
                                             "as_of": day.isoformat()}, headers=o)

    now_answer, later_answer = at(today).json(), at(later + timedelta(days=5)).json()
    assert now_answer["plan"]["plan_id"] == v1 and now_answer["plan"]["version"] == 1
    assert later_answer["plan"]["plan_id"] == v2 and later_answer["plan"]["version"] == 2
    assert later_answer["plan"]["effective_from"] == later.isoformat()
    assert now_answer["main_grid_id"] == later_answer["main_grid_id"]
    assert now_answer["sub_grid_id"] != later_answer["sub_grid_id"]  # renumbered in v2
    assert at(later - timedelta(days=1)).json()["plan"]["plan_id"] == v1
    assert_problem(at(today - timedelta(days=1)), 404)  # nothing was in force yet
    effective = client.get("/plans/effective", headers=o).json()
    assert [pl["plan_id"] for pl in effective["data"]] == [v1]

    past = assert_problem(client.post(f"/plans/{v2}/activate", headers=p,
                                      json={"effective_from": "2000-01-01"}), 422)
    assert past["errors"][0]["field"] == "effective_from"
    assert_problem(client.delete(f"/plans/{v1}", headers=p), 409)  # in force: kept
    assert client.delete(f"/plans/{v2}", headers=p).status_code == 204  # cancels schedule
    assert at(later + timedelta(days=5)).json()["plan"]["plan_id"] == v1
    assert client.get(f"/plans/{v1}", headers=p).json()["windows"][0]["effective_to"] is None


def test_several_areas_need_a_service_area(client: TestClient, data_dir: Path,
                                           versions: dict) -> None:
    store = PlanStore(data_dir)
    v1 = Plan.load(store.plan_path(versions[1]["plan_id"]))
    src = index_path(store.plan_path(v1.plan_id))
    other = v1.derive(v1.units)
    store.add_plan(other, service_area="xiamen-copy", created_by="test",
                   index_writer=lambda p, f: shutil.copytree(src, index_path(f / PLAN_FILE)))
    for plan_id in (versions[1]["plan_id"], other.plan_id):
        client.post(f"/plans/{plan_id}/activate", headers=headers("planner"))
    point = {"lng": INSIDE[0], "lat": INSIDE[1]}
    body = assert_problem(client.get("/assign", params=point, headers=headers("operations")),
                          422)
    assert body["errors"][0]["field"] == "query.service_area"
    answer = client.get("/assign", params={**point, "service_area": "xiamen-copy"},
                        headers=headers("operations")).json()
    assert answer["plan"]["plan_id"] == other.plan_id


# -- assignment ----------------------------------------------------------------------------
def test_the_single_lookup_fast_path_answers_as_the_route(client: TestClient, data_dir: Path,
                                                         versions: dict, monkeypatch) -> None:
    """``GET /assign`` is answered before FastAPI's routing when it can be
    (:class:`api.routes.assign.SingleAssignFastPath`); every answer, 200 or problem, is the
    one the route gives alone (a twin app on the same store without the fast path)."""
    from api.routes.assign import SingleAssignFastPath

    plan_id = versions[1]["plan_id"]
    client.post(f"/plans/{plan_id}/activate", headers=headers("planner"))
    twin_app = create_app(settings_for(data_dir))
    twin_app.user_middleware = [m for m in twin_app.user_middleware
                                if m.cls is not SingleAssignFastPath]
    tomorrow = (service_today() + timedelta(days=1)).isoformat()
    hostile = "<script>alert(1)</script>'; DROP TABLE plans;--"
    queries = [
        {"lng": INSIDE[0], "lat": INSIDE[1]},  # inside a unit
        {"lng": OUTSIDE[0], "lat": OUTSIDE[1], "crs": "wgs84"},  # the sea: nearest grid
        {"lng": 100.0, "lat": 10.0, "crs": "EPSG:4326"},  # off the raster
        {"lng": INSIDE[0], "lat": INSIDE[1], "crs": "gcj02", "as_of": tomorrow},
        {"lng": INSIDE[0], "lat": INSIDE[1], "service_area": "xiamen", "extra": "x"},
        {"lng": 181, "lat": 24.5}, {"lng": "NaN", "lat": 24.5}, {"lng": 118.1},
        {"lng": "east", "lat": 24.5}, {"lng": INSIDE[0], "lat": INSIDE[1], "crs": hostile},
        {"lng": INSIDE[0], "lat": INSIDE[1], "as_of": "2000-01-01"},  # nothing in force
        {"lng": INSIDE[0], "lat": INSIDE[1], "as_of": "yesterday"},
        {"lng": INSIDE[0], "lat": INSIDE[1], "service_area": hostile},
    ]
    solved = []  # FastAPI's request handling runs only for the requests the route answers
    solve = fastapi.routing.solve_dependencies
    monkeypatch.setattr(fastapi.routing, "solve_dependencies",
                        lambda *a, **k: solved.append(1) or solve(*a, **k))
    with TestClient(twin_app) as twin:
        for role in ("operations", "viewer"):
            for q in queries:
                fast = client.get("/assign", params=q, headers=headers(role))
                n = len(solved)
                alone = twin.get("/assign", params=q, headers=headers(role))
                assert len(solved) > n  # the twin went through the route
                assert (fast.status_code, fast.headers["content-type"], fast.json()) == (
                    alone.status_code, alone.headers["content-type"], alone.json()), q
                if fast.status_code == 200:
                    assert fast.json()["plan"]["plan_id"] == plan_id
        solved.clear()
        ok = client.get("/assign", params=queries[0], headers=headers("operations"))
        assert ok.status_code == 200 and not solved  # answered by the fast path
        assert_problem(client.get("/assign", params=queries[0]), 401)


def test_single_assignment_statuses_and_crs(client: TestClient, versions: dict) -> None:
    plan_id = versions[1]["plan_id"]
    o = headers("operations")
    inside = client.get(f"/plans/{plan_id}/assign", params=dict(zip(("lng", "lat"), INSIDE,
                                                                    strict=True)),
                        headers=o).json()
    assert inside["status"] == "ok" and inside["branch_id"] == "350203"
    assert inside["sub_grid_id"].startswith(inside["main_grid_id"])
    assert inside["distance_m"] == 0.0 and inside["plan"]["plan_id"] == plan_id
    gx, gy = wgs84_to_gcj02(np.array([INSIDE[0]]), np.array([INSIDE[1]]))
    same = client.get(f"/plans/{plan_id}/assign",
                      params={"lng": gx[0], "lat": gy[0], "crs": "GCJ-02"}, headers=o).json()
    assert same["sub_grid_id"] == inside["sub_grid_id"]
    out = client.get(f"/plans/{plan_id}/assign", params={"lng": OUTSIDE[0], "lat": OUTSIDE[1]},
                     headers=o).json()
    assert out["status"] == "outside" and out["sub_grid_id"] is None
    assert out["nearest_grid_id"] and out["distance_m"] > 10_000


@pytest.mark.parametrize(("params", "field"), [
    ({"lng": "nan", "lat": 24.5}, "query.lng"),
    ({"lng": 118.1, "lat": "NaN"}, "query.lat"),
    ({"lng": "inf", "lat": 24.5}, "query.lng"),
    ({"lng": 118.1, "lat": 91}, "query.lat"),
    ({"lng": -181, "lat": 24.5}, "query.lng"),
    ({"lng": "east", "lat": 24.5}, "query.lng"),
    ({"lng": 118.1}, "query.lat"),
    ({"lng": 118.1, "lat": 24.5, "crs": "mars2000"}, "query.crs"),
])
def test_bad_coordinates_are_422(client: TestClient, versions: dict, params: dict,
                                 field: str) -> None:
    o = headers("operations")
    client.post(f"/plans/{versions[1]['plan_id']}/activate", headers=headers("planner"))
    for path in (f"/plans/{versions[1]['plan_id']}/assign", "/assign"):
        body = assert_problem(client.get(path, params=params, headers=o), 422)
        assert body["errors"][0]["field"] == field


def test_json_batch(client: TestClient, versions: dict) -> None:
    plan_id = versions[1]["plan_id"]
    o = headers("operations")
    points = [{"id": "a", "lng": INSIDE[0], "lat": INSIDE[1]},
              {"id": 2, "lng": OUTSIDE[0], "lat": OUTSIDE[1]},
              {"id": "no-coords", "lng": None, "lat": None},
              {"lng": 500, "lat": 24.5}]
    body = client.post(f"/plans/{plan_id}/assign", json=points, headers=o).json()
    assert body["count"] == 4 and body["plan"]["plan_id"] == plan_id
    assert body["counts"] == {"ok": 1, "outside": 1, "invalid": 2, "not_geocoded": 0,
                              "needs_review": 0}
    rows = body["data"]
    assert [r["id"] for r in rows] == ["a", 2, "no-coords", None]
    assert [r["status"] for r in rows] == ["ok", "outside", "invalid", "invalid"]
    assert "out of range" in rows[3]["reason"] and rows[3]["distance_m"] is None
    single = client.get(f"/plans/{plan_id}/assign", params={"lng": INSIDE[0],
                                                            "lat": INSIDE[1]},
                        headers=o).json()
    assert rows[0]["sub_grid_id"] == single["sub_grid_id"]
    nan = client.post(f"/plans/{plan_id}/assign", content=b'[{"lng": NaN, "lat": 1}]',
                      headers={**o, "content-type": "application/json"})
    assert_problem(nan, 422)
    assert_problem(client.post(f"/plans/{plan_id}/assign", json=[{"lat": 1}], headers=o),
                   422)
    assert client.post(f"/plans/{plan_id}/assign", json=[], headers=o).json()["count"] == 0


def _points_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n)],
                         "lng": rng.uniform(117.9, 118.4, n), "lat": rng.uniform(24.4, 24.8, n)})


def test_csv_and_parquet_files_come_back_in_kind(client: TestClient, versions: dict) -> None:
    plan_id = versions[1]["plan_id"]
    client.post(f"/plans/{plan_id}/activate", headers=headers("planner"))
    frame = _points_frame(500)
    o = headers("operations")
    r = client.post("/assign/file", headers=o, files={
        "file": ("customers.csv", frame.to_csv(index=False), "text/csv")})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="customers.assigned.csv"' in r.headers["content-disposition"]
    assert r.headers["x-plan-id"] == plan_id
    out = pd.read_csv(io.StringIO(r.text), dtype={"branch_id": str})
    assert list(out.columns[:3]) == ["customer_id", "lng", "lat"]
    assert out["customer_id"].tolist() == frame["customer_id"].tolist()
    assert set(out["status"]) <= {"ok", "outside"}
    counts = json.loads(r.headers["x-assign-counts"])
    assert counts["ok"] == int((out["status"] == "ok").sum())

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    r = client.post(f"/plans/{plan_id}/assign/file", headers=o,
                    files={"file": ("customers.parquet", buf.getvalue(), "application/x-parquet")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    back = pd.read_parquet(io.BytesIO(r.content))
    assert isinstance(back["sub_grid_id"].dtype, pd.CategoricalDtype)  # dictionary-encoded
    assert (back["sub_grid_id"].astype(object).fillna("").tolist()
            == out["sub_grid_id"].fillna("").tolist())

    junk = client.post("/assign/file", headers=o, files={
        "file": ("c.parquet", b"not parquet at all", "application/x-parquet")})
    assert assert_problem(junk, 400)["errors"][0]["field"] == "file"
    assert_problem(client.post("/assign/file", headers=o,
                               files={"file": ("c.xlsx", b"PK..", "application/zip")}), 415)
    no_column = client.post("/assign/file", params={"lng_column": "x"}, headers=o,
                            files={"file": ("c.csv", frame.to_csv(index=False), "text/csv")})
    detail = assert_problem(no_column, 422)["detail"]
    assert "no column" in detail and "`lng_column`" in detail and "--" not in detail


# -- limits and errors ---------------------------------------------------------------------
def test_size_limits_are_413(data_dir: Path, versions: dict) -> None:
    settings = settings_for(data_dir, max_request_bytes=20_000, max_batch_points=50)
    plan_id = versions[1]["plan_id"]
    o = headers("operations")
    with TestClient(create_app(settings)) as client:
        big = [{"lng": INSIDE[0], "lat": INSIDE[1]}] * 1000  # ~40 kB
        body = assert_problem(client.post(f"/plans/{plan_id}/assign", json=big, headers=o), 413)
        assert body["errors"][0]["field"] == "body"

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(30):
                yield b" " * 1000

        assert_problem(client.post(f"/plans/{plan_id}/assign", content=chunks(),
                                   headers={**o, "content-type": "application/json"}), 413)
        many = [{"lng": INSIDE[0], "lat": INSIDE[1]}] * 51
        assert_problem(client.post(f"/plans/{plan_id}/assign", json=many, headers=o), 413)
        csv = _points_frame(60).to_csv(index=False)
        r = client.post(f"/plans/{plan_id}/assign/file", headers=o,
                        files={"file": ("c.csv", csv, "text/csv")})
        assert assert_problem(r, 413)["errors"][0]["field"] == "file"
        assert not any((data_dir / "scratch").iterdir())  # nothing left behind
        ok = client.post(f"/plans/{plan_id}/assign", json=many[:50], headers=o)
        assert ok.status_code == 200


def test_plan_request_validation_is_problem_details(client: TestClient) -> None:
    p = headers("planner")
    bad = {"source": {"kind": "demo", "city": "atlantis"},
           "parameters": {"main_grids": 0, "balance": {"subscribers": 2}, "typo": 1}}
    body = assert_problem(client.post("/plans", json=bad, headers=p), 422)
    fields = {e["field"] for e in body["errors"]}
    assert {"source.demo.city", "parameters.main_grids", "parameters.balance.subscribers",
            "parameters.typo"} <= fields
    fixes = {e["field"]: e["fix"] for e in body["errors"]}
    assert fixes["parameters.main_grids"] == "give >= 1"
    assert fixes["parameters.typo"] == "remove this field"
    neither = {"source": {"kind": "demo", "city": "xiamen"}, "parameters": {}}
    assert "main_grids" in assert_problem(client.post("/plans", json=neither, headers=p),
                                          422)["detail"]
    for name, message in (("../catalogue.sqlite", "outside"), ("missing.geojson", "not exist")):
        req = {"source": {"kind": "datasets", "boundaries": name, "customers": "c.csv"},
               "parameters": SMALL_PARAMETERS}
        err = assert_problem(client.post("/plans", json=req, headers=p), 422)["errors"][0]
        assert err["field"] == "source.boundaries" and message in err["message"]
    assert client.get("/jobs", headers=p).json()["count"] == 1  # none queued by these


def test_datasets_are_listed_named_and_jobs_bounded(data_dir: Path) -> None:
    datasets = data_dir / "datasets" / "city"
    datasets.mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "xiamen_districts_wgs84.geojson",
                datasets / "districts.geojson")
    _points_frame(100).to_csv(datasets / "customers.csv", index=False)
    p = headers("planner")
    # no pre-check: the job must be queued (its tables lack the balance measures, which the
    # pre-check would refuse with 422, see test_api_precheck)
    with TestClient(create_app(settings_for(data_dir, max_pending_jobs=1,
                                            precheck_seconds=0))) as client:
        listed = client.get("/datasets", headers=headers("viewer")).json()
        assert listed["demo_cities"] == ["shenzhen", "xiamen"]
        assert {(d["name"], d["kind"]) for d in listed["data"]} == {
            ("city/districts.geojson", "boundaries"), ("city/customers.csv", "points")}
        request = {"source": {"kind": "datasets", "boundaries": "city/districts.geojson",
                              "customers": "city/customers.csv"},
                   "parameters": SMALL_PARAMETERS}
        r = client.post("/plans", json=request, headers=p)
        assert r.status_code == 202 and r.json()["service_area"] == "districts"
        job = PlanStore(data_dir).get_job(r.json()["job_id"])
        assert job.request["source"]["boundaries"] == str(
            (datasets / "districts.geojson").resolve())
        busy = assert_problem(client.post("/plans", json=request, headers=p), 429)
        assert "queued or running" in busy["detail"]
    # leaving the client stopped the service: its running job is failed, not left hanging
    assert PlanStore(data_dir).get_job(job.job_id).status == "failed"


def test_upload_checks_file_types_then_reports_a_failed_job(client: TestClient) -> None:
    p = headers("planner")
    request = json.dumps({"parameters": SMALL_PARAMETERS})
    wrong = client.post("/plans/upload", headers=p, data={"request": request}, files={
        "boundaries": ("areas.xlsx", b"PK", "application/zip"),
        "customers": ("c.csv", b"lng,lat\n", "text/csv")})
    assert assert_problem(wrong, 415)["errors"][0]["field"] == "boundaries"
    bad_request = client.post("/plans/upload", headers=p, data={"request": "{}"}, files={
        "boundaries": ("areas.geojson", b"{}", "application/geo+json"),
        "customers": ("c.csv", b"lng,lat\n", "text/csv")})
    assert assert_problem(bad_request, 422)["errors"][0]["field"].startswith("request.")
    r = client.post("/plans/upload", headers=p, data={"request": request}, files={
        "boundaries": ("areas.geojson", b"{not geojson", "application/geo+json"),
        "customers": ("c.csv", b"lng,lat\n118.1,24.5\n", "text/csv")})
    assert r.status_code == 202 and r.headers["location"].startswith("/jobs/")
    job = wait_for_job(client, r.headers["location"])
    assert job["status"] == "failed" and job["service_area"] == "areas"
    assert job["error"]["status"] == 400 and "could not be read" in job["error"]["detail"]


@pytest.mark.parametrize("kind, match", [("gb18030", "`encoding`"), ("bow-tie", "`repair`")])
def test_upload_errors_name_request_fields_not_flags_or_server_paths(
        client: TestClient, data_dir: Path, kind: str, match: str) -> None:
    areas = (Path(__file__).parent / "data" / "xiamen_districts_wgs84.geojson").read_bytes()
    customers = "customer_id,address,lng,lat\nC1,厦门市思明区,118.1,24.5\n".encode()
    if kind == "gb18030":  # a CRM export read as UTF-8
        customers = customers.decode().encode("gb18030")
    else:
        bow_tie = {"type": "Polygon", "coordinates": [[[118.0, 24.4], [118.1, 24.5],
                                                       [118.1, 24.4], [118.0, 24.5],
                                                       [118.0, 24.4]]]}
        areas = json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"adcode": "350203"}, "geometry": bow_tie}]}
        ).encode()
    r = client.post("/plans/upload", headers=headers("planner"),
                    data={"request": json.dumps({"parameters": SMALL_PARAMETERS})},
                    files={"boundaries": ("areas.geojson", areas, "application/geo+json"),
                           "customers": ("c.csv", customers, "text/csv")})
    job = wait_for_job(client, r.headers["location"])
    detail = job["error"]["detail"]
    assert job["status"] == "failed" and job["error"]["status"] == 400
    assert match in detail and "the uploaded" in detail
    assert "--" not in detail and str(data_dir) not in detail and "/" not in detail


def test_library_errors_map_to_422() -> None:
    infeasible = territory_problem(InfeasibleError("workload ±1 % cannot be met in M03"))
    assert (infeasible.status, infeasible.type) == (422, "urn:territory:problem:infeasible")
    assert "M03" in infeasible.detail
    invalid = territory_problem(InvalidInputError("bad column"), status=400)
    assert invalid.status == 400 and invalid.title == "Invalid input"


def test_unexpected_errors_are_500_without_internals(data_dir: Path) -> None:
    app = create_app(settings_for(data_dir))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/boom", headers=headers("viewer")), 500)
    assert "secret" not in body["detail"]


# -- persistence and atomicity -------------------------------------------------------------
def test_plans_survive_a_restart(data_dir: Path, versions: dict) -> None:
    plan_id = versions[1]["plan_id"]
    point = {"lng": INSIDE[0], "lat": INSIDE[1]}
    with TestClient(create_app(settings_for(data_dir))) as first:
        first.post(f"/plans/{plan_id}/activate", headers=headers("planner"))
        before = first.get("/assign", params=point, headers=headers("operations")).json()
    with TestClient(create_app(settings_for(data_dir))) as second:
        assert plans_by_version(second).keys() == {1, 2}
        after = second.get("/assign", params=point, headers=headers("operations")).json()
    assert after == before and after["plan"]["plan_id"] == plan_id


def test_unfinished_jobs_of_a_dead_service_fail_on_restart(data_dir: Path) -> None:
    store = PlanStore(data_dir)
    job = store.create_job(service_area="x", request={}, created_by="t", runner="999999999:gone")
    with TestClient(create_app(settings_for(data_dir))) as client:
        seen = client.get(f"/jobs/{job.job_id}", headers=headers("viewer")).json()
    assert seen["status"] == "failed" and seen["error"]["status"] == 503


def test_a_failed_index_write_leaves_the_previous_index(data_dir: Path, versions: dict,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = PlanStore(data_dir).plan_dir(versions[1]["plan_id"])
    path = index_path(folder / PLAN_FILE)
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    index = load_index(folder)
    real_save = assign_index.np.save

    def crash_midway(file: Any, array: Any, **kw: Any) -> None:
        if Path(file).name == "pixels.npy":
            Path(file).write_bytes(b"\x93NUMPY half an array")
            raise OSError("disk full")
        real_save(file, array, **kw)

    monkeypatch.setattr(assign_index.np, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    # nothing half-written is left beside the plan, its index and its source tables
    assert sorted(p.name for p in folder.iterdir()) == [PLAN_FILE, path.name, "tables"]
    assert isinstance(load_index(folder), LockedIndex)


def test_a_failed_plan_write_lists_nothing(data_dir: Path, versions: dict,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = PlanStore(data_dir)
    v1 = Plan.load(store.plan_path(versions[1]["plan_id"]))
    calls = []
    real_write = plan_module.pyogrio.write_dataframe

    def crash_on_units(frame: Any, path: Any, layer: str, **kw: Any) -> None:
        calls.append(layer)
        if layer == "units":
            raise OSError("killed mid-write")
        real_write(frame, path, layer=layer, **kw)

    monkeypatch.setattr(plan_module.pyogrio, "write_dataframe", crash_on_units)
    new = v1.derive(v1.units)
    with pytest.raises(OSError, match="killed"):
        store.add_plan(new, service_area="xiamen", created_by="t", index_writer=write_index)
    monkeypatch.undo()
    assert calls[-1] == "units"
    assert store.get_plan(new.plan_id) is None and not store.plan_dir(new.plan_id).exists()
    assert store.list_plans(service_area=None, limit=10, offset=0)[1] == 2
    assert Plan.load(store.plan_path(v1.plan_id)).fingerprint == v1.fingerprint
    with sqlite3.connect(data_dir / "catalogue.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_an_unreadable_index_is_rebuilt(data_dir: Path, versions: dict,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = PlanStore(data_dir).plan_dir(versions[1]["plan_id"])
    path = index_path(folder / PLAN_FILE)
    good = shutil.copytree(path, data_dir / "good.index")
    (path / "meta_i.npy").write_bytes(b"garbage")
    built = []

    def build(cls: type, plan: Plan) -> LockedIndex:  # the real build takes seconds
        built.append(plan.plan_id)
        return LockedIndex.load(good, plan)

    monkeypatch.setattr(LockedIndex, "build", classmethod(build))
    index = load_index(folder)
    assert built == [versions[1]["plan_id"]]
    assert index.locate(np.array([INSIDE[0]]), np.array([INSIDE[1]]))[0] >= 0
    assert LockedIndex.load(path, index.plan) is not None  # saved back in place


# -- settings ------------------------------------------------------------------------------
def test_api_keys_from_env_and_config_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_api_keys("a:planner, alice=b:operations+viewer, c==:viewer") == {
        "a": ApiKey("unnamed-planner", frozenset({Role.planner}), named=False),
        "b": ApiKey("alice", frozenset({Role.operations, Role.viewer})),
        "c==": ApiKey("unnamed-viewer", frozenset({Role.viewer}), named=False)}
    for bad in ("a:boss", "nokey", "a:viewer,a:planner", "x=a:viewer,x=b:planner",
                "bad name=a:viewer"):
        with pytest.raises(ValueError):
            parse_api_keys(bad)
    config = tmp_path / "territory.toml"
    config.write_text('max_batch_points = 7\n[api_keys]\n"k1" = ["planner", "viewer"]\n'
                      '"k2" = {name = "crm-nightly", roles = ["operations"]}\n')
    monkeypatch.setenv("TERRITORY_CONFIG", str(config))
    monkeypatch.setenv("TERRITORY_DATA_DIR", str(tmp_path / "d"))
    settings = Settings()
    assert settings.api_keys == {
        "k1": ApiKey("unnamed-planner+viewer", frozenset({Role.planner, Role.viewer}), False),
        "k2": ApiKey("crm-nightly", frozenset({Role.operations}))}
    assert settings.max_batch_points == 7 and settings.data_dir == tmp_path / "d"
    assert "k1" not in repr(settings)
    monkeypatch.setenv("TERRITORY_MAX_BATCH_POINTS", "9")  # the environment wins
    assert Settings().max_batch_points == 9
    (tmp_path / "c.json").write_text(json.dumps({"api_keys": {"j": "viewer"}}))
    assert Settings(config=tmp_path / "c.json").api_keys["j"].roles == {Role.viewer}


def test_job_progress_has_the_stages_and_counts_of_the_command(tmp_path: Path) -> None:
    """The job's row goes through the pipeline's stages with their done/total counts."""
    import geopandas as gpd
    import shapely

    from api.jobs import _Progress
    from territory.hierarchy import HierarchySpec
    from territory.pipeline import Inputs, UnitOptions, run
    from territory.progress import BRANCHES, GRAPH, MAIN_GRIDS, METRICS, UNITS

    class Recording(PlanStore):
        def update_job(self, job_id: str, **fields: Any) -> None:
            super().update_job(job_id, **fields)
            seen.append((fields["stage"], fields["done"], fields["total"]))

    seen: list[tuple[str, int, int | None]] = []
    store = Recording(tmp_path)
    job = store.create_job(service_area="x", request={}, created_by="t", runner="1:t")
    areas = gpd.GeoDataFrame({"adcode": ["A", "B"]}, crs="EPSG:4326", geometry=[
        shapely.box(114.00, 22.50, 114.06, 22.55), shapely.box(114.06, 22.50, 114.12, 22.55)])
    rng = np.random.default_rng(5)
    customers = pd.DataFrame({"lng": rng.uniform(114.0, 114.12, 1500),
                              "lat": rng.uniform(22.5, 22.55, 1500)})
    spec = HierarchySpec(measures={"customers": 0.3}, n_main=4, n_sub=2, workers=1,
                         time_limit_main=5, time_limit_sub=3)
    result = run(Inputs(areas, "adcode", customers), UnitOptions(8, None, 8), spec,
                 progress=_Progress(store, job.job_id))
    n_units, n_edges = len(result.units), result.graph.number_of_edges()
    assert seen == [(UNITS, 0, None), (UNITS, n_units, n_units), (GRAPH, 0, None),
                    (GRAPH, n_edges, n_edges), (BRANCHES, 0, 2), (BRANCHES, 1, 2),
                    (BRANCHES, 2, 2), *[(MAIN_GRIDS, i, 4) for i in range(5)],
                    (METRICS, 0, 1), (METRICS, 1, 1)]
    last = store.get_job(job.job_id)
    assert last is not None and (last.stage, last.done, last.total) == (METRICS, 1, 1)
