"""The service refuses impossible plan requests before queueing a job (issue 12).

The pre-check builds the request's units off the event loop and refuses, 422 naming the
request fields and the fix, targets their loads cannot meet; a feasible request is queued
with the units handed to its job; past ``precheck_seconds`` the job's first stage fails the
job with the same problem.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import api.jobs
import territory.pipeline
from api.jobs import PREPARED, JobRunner, Prepared, run_job
from api.main import create_app
from api.store import PlanStore
from territory.boundaries import load_city
from territory.synth import generate_city
from tests.test_api import assert_problem, headers, settings_for, wait_for_job

#: 60 main grids on coarse units of Xiamen (resolution 7, ~400 customers a unit): a unit of
#: Siming is heavier than any of its main grids may be (see tests/test_precheck.py)
IMPOSSIBLE: dict[str, Any] = {
    "service_area": "xiamen",
    "source": {"kind": "demo", "city": "xiamen", "customers": 3000, "seed": 0},
    "parameters": {"main_grids": 60, "sub_grids": 4, "resolution": 7, "min_resolution": 7,
                   "target_per_unit": 400, "balance": {"subscribers": 0.05}},
}
FEASIBLE: dict[str, Any] = {
    **IMPOSSIBLE, "parameters": {**IMPOSSIBLE["parameters"], "main_grids": 6, "sub_grids": 2,
                                 "balance": {"subscribers": 0.5}, "time_limit_main": 2,
                                 "time_limit_sub": 1}}


def _jobs(client: TestClient) -> int:
    return client.get("/jobs", headers=headers("viewer")).json()["count"]


def _assert_fix_in_request_fields(problem: dict[str, Any], prefix: str,
                                  measure: str = "subscribers") -> None:
    assert problem["type"] == "urn:territory:problem:infeasible"
    assert "n_main" not in problem["detail"] and "main_grids=" in problem["detail"]
    errors = problem["errors"]
    assert errors and {e["field"] for e in errors} == {f"{prefix}main_grids"}
    for e in errors:
        assert "Proven from the unit loads" in e["message"] and "n_main" not in e["message"]
        # the largest workable count, finer units, or the tolerance that would do
        assert "main_grids=" in e["fix"] and f"{prefix}target_per_unit" in e["fix"]
        assert f"{prefix}balance.{measure} of at least" in e["fix"]


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Jobs are queued but not started: what the route left for the job stays to be seen."""
    ids: list[str] = []
    monkeypatch.setattr(JobRunner, "submit", lambda self, job_id: ids.append(job_id))
    return ids


def test_an_impossible_request_is_refused_before_any_job(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as client:
        before = _jobs(client)
        r = client.post("/plans", json=IMPOSSIBLE, headers=headers("planner"))
        _assert_fix_in_request_fields(assert_problem(r, 422), "parameters.")
        assert _jobs(client) == before == 0
    assert not any((tmp_path / "uploads").glob("*"))  # nothing left behind


def test_a_feasible_request_is_queued_with_its_units(
        tmp_path: Path, queued: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/plans", json=FEASIBLE, headers=headers("planner"))
        assert r.status_code == 202, r.text
        assert _jobs(client) == 1 and queued == [r.json()["job_id"]]
    with open(PlanStore(tmp_path).upload_dir(queued[0]) / PREPARED, "rb") as f:
        prepared = pickle.load(f)
    assert isinstance(prepared, Prepared)
    units, report = prepared.built
    assert len(units) > 1 and units["subscribers"].sum() > 0
    assert report["customers"]["inside"] == len(prepared.inputs.customers)
    # the job plans on what it was handed: neither reads the inputs nor builds units again
    for module, name in ((api.jobs, "_inputs"), (territory.pipeline, "build_unit_table")):
        monkeypatch.setattr(module, name, lambda *a, n=name, **k: pytest.fail(f"{n} called"))
    run_job(str(tmp_path), queued[0], 1)
    job = PlanStore(tmp_path).get_job(queued[0])
    assert job.status == "done", job.error
    assert not PlanStore(tmp_path).upload_dir(queued[0]).exists()


def test_an_impossible_upload_names_the_fields_of_its_request_part(tmp_path: Path) -> None:
    areas = load_city("xiamen")
    csv = generate_city(areas, n_customers=3000, seed=0).customers[["lng", "lat"]].to_csv(
        index=False).encode()
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/plans/upload", headers=headers("planner"), data={
            # a table of coordinates only: its customers are what can be balanced
            "request": json.dumps({"parameters": {**IMPOSSIBLE["parameters"],
                                                  "balance": {"customers": 0.05}}})}, files={
            "boundaries": ("areas.geojson", areas.to_json().encode(), "application/geo+json"),
            "customers": ("c.csv", csv, "text/csv")})
        _assert_fix_in_request_fields(assert_problem(r, 422), "request.parameters.",
                                      "customers")
        assert _jobs(client) == 0
    assert not any((tmp_path / "uploads").glob("*"))  # the uploaded files are removed


def test_a_measure_the_inputs_lack_is_refused_before_any_job(tmp_path: Path) -> None:
    """Checks that need the inputs but no search (a balance measure no table gives) answer
    422 at once too, with the library's message in request fields."""
    bad = {**FEASIBLE, "parameters": {**FEASIBLE["parameters"], "balance": {"nope": 0.1}}}
    with TestClient(create_app(settings_for(tmp_path))) as client:
        problem = assert_problem(client.post("/plans", json=bad, headers=headers("planner")),
                                 422)
        assert problem["type"] == "urn:territory:problem:invalid-input"
        assert "'nope'" in problem["detail"] and _jobs(client) == 0


def test_unreadable_files_are_still_reported_by_the_job(tmp_path: Path,
                                                         queued: list[str]) -> None:
    """The pre-check does not change how unusable files are answered (a failed job, 400):
    it hands nothing over and the job reads them again."""
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/plans/upload", headers=headers("planner"), data={
            "request": '{"parameters": {"main_grids": 2}}'}, files={
            "boundaries": ("areas.geojson", b"{not geojson", "application/geo+json"),
            "customers": ("c.csv", b"lng,lat\n118.1,24.5\n", "text/csv")})
        assert r.status_code == 202, r.text
    folder = PlanStore(tmp_path).upload_dir(queued[0])
    assert (folder / "boundaries.geojson").exists() and not (folder / PREPARED).exists()


def test_past_the_precheck_time_the_job_fails_with_the_same_problem(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path, precheck_seconds=0))) as client:
        r = client.post("/plans", json=IMPOSSIBLE, headers=headers("planner"))
        assert r.status_code == 202, r.text
        job = wait_for_job(client, r.headers["location"])
    assert job["status"] == "failed" and job["error"]["status"] == 422
    _assert_fix_in_request_fields(job["error"], "parameters.")
