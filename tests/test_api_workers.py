"""``territory serve --workers 2``: two uvicorn worker processes on one port, answering
single assignments from one memory-mapped index.

A real server on 127.0.0.1 (as in ``test_api_server``), whose answers are compared with the
library's own lookup on the same plan, point by point; each worker's ``/proc/PID/maps``
shows the index files mapped, not read into its heap. Every wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.assignment import load_index
from api.schemas import SingleAssignment
from api.store import PlanStore
from territory.assign import OUTPUT_COLUMNS, assign
from territory.assign_index import index_path
from territory.plan import PLAN_FILE, Plan
from tests.test_api import INSIDE, OUTSIDE, assert_problem, copy_template
from tests.test_api_server import Server

N_POINTS = 300
CONNECTIONS = 8
MAX_EXTRA_REQUESTS = 400  # bounded: until both workers have answered


class WorkersServer(Server):
    """:class:`Server` with ``--workers 2``."""

    def __init__(self, data_dir: Path, config: Path, workers: int) -> None:
        super().__init__(data_dir, config)
        self.workers = workers

    def command(self, port: int) -> list[str]:
        return [*super().command(port), "--workers", str(self.workers)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkersServer]:
    tmp_path = tmp_path_factory.mktemp("workers")
    config = tmp_path / "territory.toml"
    config.write_text('[api_keys]\n"k-ops" = {name = "ops", roles = ["operations", '
                      '"planner"]}\n', encoding="utf-8")
    srv = WorkersServer(copy_template(tmp_path / "data"), config, workers=2)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


KEY = {"X-API-Key": "k-ops"}


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _mapped(pid: int, folder: Path) -> set[str]:
    """Names of the files under ``folder`` that process ``pid`` has memory-mapped."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).name for line in lines
            if line.split()[-1].startswith(str(folder))}


def _get(url: str, params: dict) -> httpx.Response:
    """One request on a connection of its own, so the kernel hands it to either worker."""
    with httpx.Client(base_url=url, timeout=30.0, headers=KEY) as http:
        return http.get("/assign", params=params)


def test_two_workers_answer_from_one_mapped_index(server: WorkersServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30.0, headers=KEY) as http:
        plan_id = next(p["plan_id"] for p in http.get("/plans").json()["data"]
                       if p["version"] == 1)
        assert http.post(f"/plans/{plan_id}/activate").status_code == 200
    folder = PlanStore(server.data_dir).plan_dir(plan_id)
    expected = assign(load_index(folder), *_points(folder), crs="wgs84")
    x, y = _points(folder)
    local = threading.local()

    def ask(point: tuple[float, float]) -> httpx.Response:
        """On this thread's keep-alive connection: several connections, both workers."""
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=server.url, timeout=30.0, headers=KEY)
            clients.append(local.http)
        return local.http.get("/assign", params={"lng": point[0], "lat": point[1],
                                                 "crs": "wgs84"})

    clients: list[httpx.Client] = []
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        answers = list(pool.map(ask, zip(x.tolist(), y.tolist(), strict=True)))
    for http in clients:
        http.close()
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        body = SingleAssignment.model_validate(r.json()).model_dump()  # the documented shape
        for column in OUTPUT_COLUMNS:
            want = getattr(expected, column)[i]
            if column == "distance_m":
                assert body[column] == (None if np.isnan(want) else want)  # to the bit
            else:
                assert body[column] == want, (i, column, body)
        assert body["plan"]["plan_id"] == plan_id
    assert {r.json()["status"] for r in answers} == {"ok", "outside"}

    index_dir = index_path(folder / PLAN_FILE)
    workers = _children(server.proc.pid)
    for _ in range(MAX_EXTRA_REQUESTS):  # a worker that got no request has mapped nothing
        mapped = {pid: _mapped(pid, index_dir) for pid in workers}
        if sum(bool(m) for m in mapped.values()) >= 2:
            break
        _get(server.url, {"lng": INSIDE[0], "lat": INSIDE[1], "crs": "wgs84"})
    answering = [pid for pid, m in mapped.items() if m]
    assert len(answering) == 2, mapped
    for pid in answering:  # the arrays are maps of the index's files
        assert {"cell_entry.npy", "pixels.npy", "palette.npy"} <= mapped[pid]


def test_the_fast_route_still_checks_who_and_what(server: WorkersServer) -> None:
    point = {"lng": INSIDE[0], "lat": INSIDE[1], "crs": "wgs84"}
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        assert_problem(http.get("/assign", params=point), 401)
        for params, field in (({**point, "lng": "nan"}, "query.lng"),
                              ({**point, "lat": "north"}, "query.lat"),
                              ({"lng": INSIDE[0], "crs": "wgs84"}, "query.lat"),
                              ({**point, "crs": "mars2000"}, "query.crs"),
                              ({**point, "as_of": "yesterday"}, "query.as_of"),
                              ({**point, "lng": 181}, "query.lng")):
            body = assert_problem(http.get("/assign", params=params, headers=KEY), 422)
            assert body["errors"][0]["field"] == field, body
        far = http.get("/assign", params={**point, "lng": OUTSIDE[0]}, headers=KEY).json()
        assert far["status"] == "outside" and far["nearest_grid_id"]


def _points(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points over the plan's bounds and a margin: inside, near boundaries and outside."""
    b = Plan.load(folder / PLAN_FILE).units.total_bounds
    rng = np.random.default_rng(11)
    return (rng.uniform(b[0] - 0.05, b[2] + 0.05, N_POINTS),
            rng.uniform(b[1] - 0.05, b[3] + 0.05, N_POINTS))
