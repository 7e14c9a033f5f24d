"""A real ``territory serve`` against callers who send too much: anonymous uploads, batches
over the limit, bulk work beside single lookups, and a schema fuzzer.

One server for the module, on 127.0.0.1, with the default request-size cap (256 MiB), so a
body the service does not read is one it could have read. Every wait is bounded; timing
bounds are generous (the machine is shared), and what is asserted is what the service did:
how much of a body it took in, how much memory it grew by, what status it answered.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.test_api import INSIDE, KEYS, assert_problem, copy_template, headers, plans_by_version
from tests.test_api_server import Server

MAX_BATCH_POINTS = 100_000
FUZZ_KEY = "k-fuzz-0004"  # operations + viewer: the fuzzer may read and assign, not plan
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
MIB = 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("hostile")
    config = tmp_path / "territory.toml"
    keys = "\n".join(f'"{key}" = {{name = "{role}", roles = ["{role}"]}}'
                     for role, key in KEYS.items())
    keys += f'\n"{FUZZ_KEY}" = {{name = "fuzzer", roles = ["operations", "viewer"]}}'
    config.write_text(f"max_batch_points = {MAX_BATCH_POINTS}\nsolver_workers = 1\n"
                      f"[api_keys]\n{keys}\n", encoding="utf-8")
    srv = Server(copy_template(tmp_path / "data"), config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)[1])


class Body:
    """A streamed body (no Content-Length) that counts how much of it was taken."""

    def __init__(self, head: bytes, filler: bytes, size: int, tail: bytes) -> None:
        self.head, self.filler, self.size, self.tail = head, filler, size, tail
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        chunk = self.filler * (MIB // len(self.filler))
        while self.sent < self.size:
            self.sent += len(chunk)
            yield chunk
        yield self.tail


def test_an_anonymous_large_body_is_refused_unread(server: Server) -> None:
    """128 MiB to POST /assign without a key: 401, and the server's peak memory barely
    moves (before: the whole body was read, then parsed, then the key checked)."""
    pid = server.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    before = _status_kib(pid, "VmHWM")
    body = Body(b"[", b" ", 128 * MIB, b"]")
    t0 = time.monotonic()
    with server.client() as http:
        r = http.post("/assign", params={"crs": "wgs84"}, content=iter(body),
                      headers={"content-type": "application/json"})
    assert_problem(r, 401)
    assert time.monotonic() - t0 < 60
    grown = (_status_kib(pid, "VmHWM") - before) * 1024
    assert grown < body.size / 8, f"the server grew by {grown / MIB:.0f} MiB"
    assert body.sent < body.size / 2, f"{body.sent / MIB:.0f} MiB were taken"


def test_an_unknown_plan_is_401_without_a_key(server: Server) -> None:
    with server.client() as http:
        real = plans_by_version(http)[1]["plan_id"]
        for plan_id in (real, "no-such-plan"):
            assert_problem(http.get(f"/plans/{plan_id}"), 401)
            assert_problem(http.post(f"/plans/{plan_id}/assign", json=[]), 401)
        assert_problem(http.get("/plans/no-such-plan", headers=headers("viewer")), 404)


def test_a_batch_over_the_limit_is_413_before_it_is_read(server: Server) -> None:
    """Ten times the point limit (~50 MB), streamed: refused once the limit is passed,
    long before the end (before: read whole, parsed whole, then refused)."""
    point = b'{"id": 12345678, "lng": %.5f, "lat": %.5f},' % INSIDE
    body = Body(b"[", point, 10 * MAX_BATCH_POINTS * len(point), point[:-1] + b"]")
    with server.client() as http:
        plan_id = plans_by_version(http)[1]["plan_id"]
        r = http.post(f"/plans/{plan_id}/assign", params={"crs": "wgs84"},
                      content=iter(body),
                      headers={**headers("operations"), "content-type": "application/json"})
    problem = assert_problem(r, 413)
    assert str(MAX_BATCH_POINTS) in problem["detail"]
    assert body.sent < body.size / 2, f"{body.sent / MIB:.0f} of {body.size / MIB:.0f} MiB"


def test_single_lookups_answer_while_batches_run(server: Server) -> None:
    """Two clients each send two batches at the point limit while two others look points
    up one at a time. Every lookup is answered, and nine in ten within a twentieth of a
    batch's time. Measured against the batches, not the clock, so a busy machine slows both
    sides alike (before: a batch's JSON was parsed on the event loop and a lookup arriving
    meanwhile waited for the whole parse; the 90th percentile was 1/8 to 1/5 of a batch,
    after about 1/60)."""
    o = headers("operations")
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(117.95, 118.35, MAX_BATCH_POINTS), rng.uniform(24.4, 24.75,
                                                                      MAX_BATCH_POINTS)
    body = json.dumps([{"id": i, "lng": x, "lat": y}
                       for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True))])
    batch_s: list[float] = []
    single_s: list[float] = []
    statuses: list[int] = []
    running = threading.Event()
    with server.client() as http:
        plan_id = plans_by_version(http)[1]["plan_id"]

    def batches() -> None:
        with server.client() as http:
            for _ in range(2):
                t0 = time.monotonic()
                r = http.post(f"/plans/{plan_id}/assign", params={"crs": "wgs84"},
                              content=body, headers={**o, "content-type": "application/json"})
                batch_s.append(time.monotonic() - t0)
                statuses.append(r.status_code)

    def singles() -> None:
        with server.client() as http:
            while running.is_set():
                t0 = time.monotonic()
                r = http.get(f"/plans/{plan_id}/assign", headers=o, params={
                    "lng": INSIDE[0], "lat": INSIDE[1], "crs": "wgs84"})
                single_s.append(time.monotonic() - t0)
                statuses.append(r.status_code)
                time.sleep(0.01)

    running.set()
    lookers = [threading.Thread(target=singles) for _ in range(2)]
    senders = [threading.Thread(target=batches) for _ in range(2)]
    for t in lookers + senders:
        t.start()
    for t in senders:
        t.join(timeout=300)
    running.clear()
    for t in lookers:
        t.join(timeout=60)
    assert set(statuses) == {200} and len(batch_s) == 4
    assert len(single_s) >= 10
    typical = statistics.quantiles(single_s, n=10)[8]  # the 90th percentile
    assert typical < statistics.median(batch_s) / 20, (typical, batch_s)


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    """Every schemathesis check (``--checks all``) on every operation but DELETE, a few
    examples each, with a valid key: no 5xx, no answer outside the OpenAPI document."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG),
           "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "3",
           "--exclude-method", "DELETE", "--header", f"X-API-Key: {FUZZ_KEY}",
           "--generation-database", "none", "--seed", "7", "--request-timeout", "30",
           "--workers", "1", "--max-response-time", "60", "--no-color"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
