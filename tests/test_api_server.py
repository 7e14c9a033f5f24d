"""The real service: ``territory serve`` in a subprocess on 127.0.0.1, spoken to over HTTP.

What only a real server shows: the command line starts it, the config file is read, uploads
travel as multipart over a socket, a plan job runs beside a serving process, size limits hold
on the wire, and a stopped and restarted process finds its plans again. Traffic goes to the
loopback address only; every wait is bounded.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from territory.boundaries import load_city
from territory.reports import page_name
from territory.synth import generate_city
from tests.test_api import (
    INSIDE,
    KEYS,
    OUTSIDE,
    SMALL_PARAMETERS,
    assert_problem,
    copy_template,
    headers,
    plans_by_version,
    service_today,
    wait_for_job,
)

XIAMEN_WGS84 = Path(__file__).parent / "data" / "xiamen_districts_wgs84.geojson"
MAX_REQUEST_BYTES = 2_000_000
START_TIMEOUT_S = 60.0


class Server:
    """``territory serve`` on a free loopback port, restartable on the same data dir."""

    def __init__(self, data_dir: Path, config: Path) -> None:
        self.data_dir, self.config = data_dir, config
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the server exited while starting"
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not answer /health in {START_TIMEOUT_S} s")

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", "from territory.cli import main; main()", "serve",
                "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(self.data_dir),
                "--config", str(self.config), "--log-level", "warning"]

    def stop(self) -> None:
        """Stop as an operator would (SIGTERM: uvicorn's graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (starting one costs seconds); the tests below leave it in
    a state the next ones accept: they add plans and activations, never remove them."""
    tmp_path = tmp_path_factory.mktemp("server")
    config = tmp_path / "territory.toml"
    keys = "\n".join(f'"{key}" = "{role}"' for role, key in KEYS.items())
    config.write_text(f"max_request_bytes = {MAX_REQUEST_BYTES}\nmax_batch_points = 200000\n"
                      f"solver_workers = 1\n[api_keys]\n{keys}\n"
                      '[points_crs]\nxiamen = "wgs84"\n', encoding="utf-8")
    srv = Server(copy_template(tmp_path / "data"), config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_auth_over_http(server: Server) -> None:
    with server.client() as http:
        assert http.get("/health").json()["plans"] >= 2
        assert http.get("/docs").status_code == 200
        assert_problem(http.get("/plans"), 401)
        assert_problem(http.get("/plans", headers={"X-API-Key": "wrong"}), 401)
        assert_problem(http.get("/assign", params={"lng": 1, "lat": 1},
                                headers=headers("viewer")), 403)
        assert http.get("/plans", headers={"Authorization": f"Bearer {KEYS['viewer']}"}
                        ).json()["count"] >= 2


def _customers_csv(tmp_path: Path) -> Path:
    path = tmp_path / "customers.csv"
    city = generate_city(load_city("xiamen"), n_customers=5000, seed=1)
    pd.DataFrame(city.customers.drop(columns="geometry")).to_csv(path, index=False)
    return path


def test_upload_job_then_serve_the_plan(server: Server, tmp_path: Path) -> None:
    """Upload → job → grids, metrics → activate with dates → assign single, JSON, CSV."""
    p, o, v = headers("planner"), headers("operations"), headers("viewer")
    customers = _customers_csv(tmp_path)
    with server.client() as http:
        versions = plans_by_version(http)
        request = json.dumps({"service_area": "xiamen", "parameters": SMALL_PARAMETERS})
        r = http.post("/plans/upload", headers=p, data={"request": request},
                                files={"boundaries": (XIAMEN_WGS84.name, XIAMEN_WGS84.read_bytes(),
                                            "application/geo+json"),
                             "customers": ("customers.csv", customers.read_bytes(),
                                           "text/csv")})
        assert r.status_code == 202, r.text
        job = wait_for_job(http, r.headers["location"])
        assert job["status"] == "done", job
        plan = http.get(f"/plans/{job['plan_id']}", headers=v).json()
        assert plan["service_area"] == "xiamen" and plan["version"] == 3

        fc = http.get(f"/plans/{plan['plan_id']}/grids/sub_grid", headers=v)
        assert fc.headers["content-type"] == "application/geo+json"
        assert len(fc.json()["features"]) == plan["n_grids"]["sub_grid"]
        metrics = http.get(f"/plans/{plan['plan_id']}/metrics", headers=v).json()
        assert metrics["main_grid"]["n_grids"] == 12

        # v1 in force now, the uploaded plan from next month
        today = service_today()
        later = today + timedelta(days=31)
        http.post(f"/plans/{versions[1]['plan_id']}/activate", headers=p).raise_for_status()
        http.post(f"/plans/{plan['plan_id']}/activate", headers=p,
                  json={"effective_from": later.isoformat()}).raise_for_status()
        point = {"lng": INSIDE[0], "lat": INSIDE[1]}
        now = http.get("/assign", params={**point, "as_of": today.isoformat()}, headers=o)
        then = http.get("/assign", params={**point, "as_of": later.isoformat()}, headers=o)
        assert now.json()["plan"]["version"] == 1 and then.json()["plan"]["version"] == 3
        assert then.json()["status"] == "ok"

        batch = http.post("/assign", headers=o, params={"as_of": later.isoformat()}, json=[
            {"id": 1, **point}, {"id": 2, "lng": OUTSIDE[0], "lat": OUTSIDE[1]}]).json()
        assert [r["status"] for r in batch["data"]] == ["ok", "outside"]
        assert batch["data"][0]["sub_grid_id"] == then.json()["sub_grid_id"]

        r = http.post("/assign/file", headers=o, params={"as_of": later.isoformat()},
                      files={"file": ("customers.csv", customers.read_bytes(), "text/csv")})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        out = pd.read_csv(io.StringIO(r.text))
        assert len(out) == 5000 and (out["status"] == "ok").all()  # they made the plan


def test_limits_and_bad_input_over_http(server: Server) -> None:
    o = headers("operations")
    with server.client() as http:
        plan_id = plans_by_version(http)[1]["plan_id"]
        oversize = b"[" + b" " * (MAX_REQUEST_BYTES + 10) + b"]"
        r = http.post(f"/plans/{plan_id}/assign", content=oversize,
                      headers={**o, "content-type": "application/json"})
        assert_problem(r, 413)
        for params in ({"lng": "nan", "lat": 24.5}, {"lng": 118.1, "lat": 95},
                       {"lng": 118.1, "lat": "Infinity"}):
            assert_problem(http.get(f"/plans/{plan_id}/assign", params=params, headers=o),
                           422)
        body = assert_problem(http.post("/plans", json={"source": {"kind": "demo"}},
                                        headers=headers("planner")), 422)
        assert body["type"] == "urn:territory:problem:validation-error"


def test_restart_keeps_plans_and_schedule(server: Server) -> None:
    point = {"lng": INSIDE[0], "lat": INSIDE[1]}
    with server.client() as http:
        versions = plans_by_version(http)
        http.post(f"/plans/{versions[2]['plan_id']}/activate",
                  headers=headers("planner")).raise_for_status()
        before = http.get("/assign", params=point, headers=headers("operations")).json()
    server.stop()
    server.start()
    with server.client() as http:
        assert plans_by_version(http).keys() == versions.keys()
        after = http.get("/assign", params=point, headers=headers("operations")).json()
    assert after == before and after["plan"]["plan_id"] == versions[2]["plan_id"]


def test_report_pages_show_tiers_communities_and_staff(server: Server) -> None:
    """A plan job keeps the point tables it read beside the plan, so its grid pages are the
    command's: value tiers, key accounts by type, the ranked community list; and the staff
    of its latest staffing job once one has run. The same figures as write_reports draws
    from the same tables and staff."""
    from territory.mapdata import PlanLayers
    from territory.plan import Plan
    from territory.reports import grid_figures, grid_page, read_staff
    from territory.synth_roster import synthetic_roster
    from tests.test_reports import Page

    with server.client() as http:
        data = http.get("/plans", params={"service_area": "xiamen"},
                        headers=headers("viewer")).json()["data"]
        plan_id = next(p["plan_id"] for p in data if p["version"] == 1)  # made by a job
        base = f"/plans/{plan_id}/reports"
        plan = Plan.load(server.data_dir / "plans" / plan_id / "plan.gpkg")
        grid_id = sorted(plan.units["main_grid_id"].unique())[0]
        name = page_name(grid_id, "html")

        def page() -> tuple[str, Page]:
            r = http.get(f"{base}/{name}", headers=headers("viewer"))
            assert r.status_code == 200, r.text
            return r.text, Page(r.text)

        _, before = page()
        assert {f"customers_segment_{t}" for t in ("big", "business", "ordinary")} <= set(
            before.kpis)
        assert any(k.startswith("key_accounts_kind_") for k in before.kpis)
        assert len(before.tables["communities"]) > 1  # header and ranked rows
        assert "staff" not in before.tables
        roster = synthetic_roster(plan, seed=5)
        boss = roster.loc[roster["role"] == "grid_manager", "name"].iloc[0]
        roster.loc[roster["role"] == "grid_manager", "name"] = [
            f"<i>{n}</i>" for n in roster.loc[roster["role"] == "grid_manager", "name"]]
        r = http.post(f"/plans/{plan_id}/staffing", headers=headers("planner"), files={
            "roster": ("roster.csv", roster.to_csv(index=False).encode(), "text/csv")})
        assert r.status_code == 202, r.text
        job = wait_for_job(http, r.headers["location"])
        assert job["status"] == "done", job
        html, after = page()
        staff = read_staff(server.data_dir / "plans" / plan_id / "staffing" / job["job_id"])
        mine = staff[staff["main_grid_id"] == grid_id]
        rows = after.tables["staff"][1:]
        assert sorted(r[0] for r in rows) == sorted(mine["person_id"])
        assert any(f"<i>{boss}</i>" in cell for r in rows for cell in r)  # shown as text
        assert f"&lt;i&gt;{boss}" in html and f"<i>{boss}" not in html  # never markup
        # the command's page from the job's source tables (DEMO_REQUEST's synthetic city)
        # and the same staff: the same figures and lists
        layers = PlanLayers(plan)
        tables = generate_city(load_city("xiamen"), n_customers=5000, seed=0).tables()
        figures = grid_figures(layers, tables, staff)
        expected = grid_page(layers, figures, grid_id, tables, staff)
        assert after.kpis == {row["key"]: row["grid"] for row in expected.kpis}
        assert after.tables["communities"][1:] == expected.communities["rows"]
        assert after.tables["staff"][1:] == expected.staff["rows"]
