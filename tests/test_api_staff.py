"""The service's staffing jobs: a roster allocated to a stored plan in the background."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.store import PlanStore
from territory.plan import Plan
from territory.synth_roster import synthetic_roster
from tests.test_api import (
    assert_problem,
    copy_template,
    headers,
    plans_by_version,
    settings_for,
    wait_for_job,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return copy_template(tmp_path / "data")


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(data_dir))) as c:
        yield c


@pytest.fixture
def versions(client: TestClient) -> dict[int, dict[str, Any]]:
    return plans_by_version(client)


def _roster_csv(data_dir, plan_id: str, drop_managers: int = 0) -> bytes:
    plan = Plan.load(PlanStore(data_dir).plan_path(plan_id))
    roster = synthetic_roster(plan, seed=4)
    roster = roster.drop(roster.index[roster["role"] == "grid_manager"][:drop_managers])
    return roster.to_csv(index=False).encode()


def test_staffing_job_writes_the_tables(client: TestClient, data_dir, versions) -> None:
    plan_id = versions[1]["plan_id"]
    files = {"roster": ("roster.csv", _roster_csv(data_dir, plan_id), "text/csv")}
    r = client.post(f"/plans/{plan_id}/staffing", files=files, headers=headers("viewer"))
    assert_problem(r, 403)
    r = client.post(f"/plans/{plan_id}/staffing", files=files, data={"within": "0.2"},
                    headers=headers("planner"))
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.headers["location"])
    assert job["status"] == "done", job
    assert job["plan_id"] == plan_id
    summary = client.get(f"/plans/{plan_id}/staffing/{job['job_id']}",
                         headers=headers("viewer")).json()
    assert summary["grid_manager"]["staff"] == versions[1]["n_grids"]["main_grid"]
    assert summary["customer_manager"]["within"] == 0.2
    r = client.get(f"/plans/{plan_id}/staffing/{job['job_id']}/staff",
                   headers=headers("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    staff = pd.read_csv(io.BytesIO(r.content))
    assert (staff["workload_hours"] <= staff["hours"] + 0.05).all()
    r = client.get(f"/plans/{plan_id}/staffing/nope/staff", headers=headers("viewer"))
    assert_problem(r, 404)


def test_staffing_refusals(client: TestClient, data_dir, versions) -> None:
    plan_id = versions[1]["plan_id"]
    csv = _roster_csv(data_dir, plan_id, drop_managers=1)
    r = client.post(f"/plans/{plan_id}/staffing", headers=headers("planner"),
                    files={"roster": ("roster.csv", csv, "text/csv"),
                           "stores": ("stores.csv", b"store_id,lng,lat\n", "text/csv")})
    body = assert_problem(r, 422)
    assert "stores_crs" in str(body)
    r = client.post(f"/plans/{plan_id}/staffing", headers=headers("planner"),
                    files={"roster": ("roster.csv", csv, "text/csv")})
    job = wait_for_job(client, r.headers["location"])
    assert job["status"] == "failed"
    assert "grid managers for" in job["error"]["detail"] and "add 1" in job["error"]["detail"]
