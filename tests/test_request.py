"""One plan request: the command, the service and the library run the same parameters.

Each entry point is driven as a user drives it (``territory plan`` options, a ``POST /plans``
body, a :class:`PlanRequest` in Python) and what reaches the library is compared field by
field: with only the required values given (the defaults), and with every value set.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.jobs import JobRunner, plan_spec
from api.main import create_app
from api.schemas import PlanParameters
from api.store import PlanStore
from territory.cli import app
from territory.errors import InvalidInputError
from territory.hierarchy import HierarchySpec
from territory.pipeline import UnitOptions
from territory.request import PlanRequest

from .test_api import headers, settings_for
from .test_cli import small_city

#: every parameter set away from its default, as each entry point spells it
SET = {"main_grids": 3, "sub_grids": 2, "sub_size": None, "main_size": None,
       "balance": {"customers": 0.2, "subscribers": None}, "tolerance": 0.3,
       "objective": "boundary", "resolution": 9, "target_per_unit": 20.0,
       "min_resolution": 8, "time_limit_main": 7.0, "time_limit_sub": 3.0,
       "locks": {"8931a2a1b1bffff": "440305-M01"}, "own_grid_islands": True,
       "strict": True, "seed": 4}
CLI_SET = ["--main-grids", "3", "--sub-grids", "2", "--balance", "customers=0.2",
           "--balance", "subscribers", "--tolerance", "0.3", "--objective", "boundary",
           "--resolution", "9", "--target-per-unit", "20", "--min-resolution", "8",
           "--time-limit-main", "7", "--time-limit-sub", "3", "--own-grid-islands",
           "--strict", "--seed", "4"]


def via_library(values: dict[str, Any]) -> dict[str, Any]:
    return PlanRequest(**values).effective(workers=1)


def via_cli(tmp_path: Path, monkeypatch, args: list[str]) -> dict[str, Any]:
    """Run ``territory plan`` up to the plan job and return what it would run with."""
    seen = {}

    def capture(inputs, opts: UnitOptions, spec: HierarchySpec, out, stores_as_centres):
        seen.update({f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)},
                    **{f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)},
                    stores_as_centres=stores_as_centres)

    monkeypatch.setattr("territory.cli._plan_job", capture)
    tmp_path.mkdir(parents=True, exist_ok=True)
    src, cust = small_city(tmp_path, n=50)
    cust.to_csv(tmp_path / "c.csv", index=False)
    res = CliRunner().invoke(app, ["plan", str(src), "--customers", str(tmp_path / "c.csv"),
                                   "--points-crs", "wgs84", "--workers", "1",
                                   "--out", str(tmp_path / "p"), *args])
    assert res.exit_code == 0, res.output
    return {k: seen[k] for k in via_library({"main_grids": 1})}


def via_service(tmp_path: Path, monkeypatch, parameters: dict[str, Any]) -> dict[str, Any]:
    """``POST /plans`` as a client sends it; the queued job's parameters, converted as the
    job converts them."""
    monkeypatch.setattr(JobRunner, "submit", lambda self, job_id: None)  # stays queued
    monkeypatch.setattr(JobRunner, "precheck", lambda self, *a, **k: None)
    body = {"source": {"kind": "demo", "city": "xiamen", "customers": 100},
            "parameters": parameters}
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/plans", json=body, headers=headers("planner"))
        assert r.status_code == 202, r.text
        job = PlanStore(tmp_path).get_job(r.json()["job_id"])
    p = PlanParameters.model_validate(job.request["parameters"])
    spec = plan_spec(p, 1)
    opts = p.unit_options()
    out = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    out |= {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    return {k: out.get(k, p.stores_as_centres) for k in via_library({"main_grids": 1})}


def test_defaults_are_one_set(tmp_path, monkeypatch):
    lib = via_library({"main_grids": 3})
    cli = via_cli(tmp_path / "cli", monkeypatch, ["--main-grids", "3"])
    api = via_service(tmp_path / "api", monkeypatch, {"main_grids": 3})
    for name, value in lib.items():
        assert cli[name] == value, f"the command's default {name} differs"
        assert api[name] == value, f"the service's default {name} differs"
    # the internal dataclasses, used directly, have the request's defaults too
    spec, opts = HierarchySpec(measures=lib["measures"], n_main=3), UnitOptions()
    for name, value in lib.items():
        if name != "stores_as_centres":
            assert getattr(spec if hasattr(spec, name) else opts, name) == value, name
    assert lib["time_limit_main"] == 60 and lib["resolution"] == 10


def test_every_parameter_reaches_the_library_alike(tmp_path, monkeypatch):
    lib = via_library(SET)
    lock = tmp_path / "lock.csv"
    lock.write_text("unit_id,main_grid_id\n8931a2a1b1bffff,440305-M01\n")
    cli = via_cli(tmp_path / "cli", monkeypatch, [*CLI_SET, "--lock", str(lock)])
    api = via_service(tmp_path / "api", monkeypatch, SET)
    assert cli == lib and api == lib
    assert lib["measures"] == {"customers": 0.2, "subscribers": 0.3}
    assert lib["locked"] == SET["locks"] and lib["random_state"] == 4


@pytest.mark.parametrize("values, field", [
    ({}, "main_grids"),
    ({"main_grids": 2, "branch_grids": {"A": 1}}, "not both"),
    ({"main_grids": 2, "balance": {"subscribers": 1.5}}, "`balance`['subscribers'] 1.5"),
    ({"main_grids": 2, "resolution": 8, "min_resolution": 9}, "min_resolution 9"),
    ({"main_grids": 2, "staff_hours": 160, "sub_size": 10}, "staff_hours or sub_size"),
    ({"main_grids": 2, "time_limits": 5}, "`time_limits`"),
])
def test_bad_requests_name_the_field(values, field):
    with pytest.raises(InvalidInputError, match=re.escape(field)):
        PlanRequest.build(**values)


def test_service_refuses_what_the_library_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(JobRunner, "submit", lambda self, job_id: None)
    body = {"source": {"kind": "demo", "city": "xiamen", "customers": 100},
            "parameters": {"main_grids": 2, "staff_hours": 160, "sub_size": 10}}
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.post("/plans", json=body, headers=headers("planner"))
    assert r.status_code == 422 and "staff_hours or sub_size" in r.text
