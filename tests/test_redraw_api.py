"""Service routes for redrawing: history, diff, edits (409 on a stale base); the rebalance
and import jobs are tested over real HTTP in test_redraw_service."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.assignment import write_index
from api.main import create_app
from api.store import PlanStore

from .redraw_lattice import lattice_plan
from .test_api import headers, settings_for


@pytest.fixture
def client(tmp_path: Path):
    plan, _ = lattice_plan(3, tolerance=0.9)
    store = PlanStore(tmp_path)
    record = store.add_plan(plan, service_area="lattice", created_by="test",
                            index_writer=write_index)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        c.base = record.plan_id
        yield c


def test_edits_are_versions_and_a_stale_base_is_409(client):
    base = client.base
    move = {"base": base, "kind": "move", "units": ["u3_0"], "to": "B1-M02",
            "message": "estate"}
    assert client.post(f"/plans/{base}/edits", json=move,
                       headers=headers("viewer")).status_code == 403
    r = client.post(f"/plans/{base}/edits", json=move, headers=headers("planner"))
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["parent"] == base and v2["version"] == 2
    # a second planner still on the first version
    r = client.post(f"/plans/{base}/edits", json={**move, "units": ["u3_1"]},
                    headers=headers("planner"))
    assert r.status_code == 409, r.text
    assert r.headers["x-current-version"] == v2["plan_id"]
    assert v2["plan_id"] in r.json()["detail"]
    # a refused edit says why
    r = client.post(f"/plans/{v2['plan_id']}/edits",
                    json={**move, "base": v2["plan_id"], "units": ["u0_0"]},
                    headers=headers("planner"))
    assert r.status_code == 422 and "do not touch" in r.json()["detail"]
    hist = client.get(f"/plans/{v2['plan_id']}/history", headers=headers("viewer")).json()
    assert [h["plan_id"] for h in hist] == [base, v2["plan_id"]]
    assert hist[-1]["message"] == "estate"
    d = client.get(f"/plans/{base}/diff/{v2['plan_id']}", headers=headers("viewer")).json()
    assert d["count"] == 1 and d["changes"][0]["unit_id"] == "u3_0"
