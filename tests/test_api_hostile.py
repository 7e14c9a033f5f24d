"""A real ``territory serve`` against callers who send too much: anonymous uploads, batches
over the limit, bulk work beside single lookups, and a schema fuzzer.

One server for the module, on 127.0.0.1, with the default request-size cap (256 MiB), so a
body the service does not read is one it could have read. Every wait is bounded; timing
bounds are generous (the machine is shared), and what is asserted is what the service did:
how much of a body it took in, how much memory it grew by, what status it answered.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_api import INSIDE, KEYS, assert_problem, copy_template, headers, plans_by_version
from tests.test_api_server import Server

MAX_BATCH_POINTS = 20_000
MIB = 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("hostile")
    config = tmp_path / "territory.toml"
    keys = "\n".join(f'"{key}" = {{name = "{role}", roles = ["{role}"]}}'
                     for role, key in KEYS.items())
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
    """Ten times the point limit, streamed: refused once the limit is passed, long before
    the end (before: read whole, parsed whole, then refused)."""
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
