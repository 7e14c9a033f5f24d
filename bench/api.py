"""Customer assignment over HTTP on loopback: the single lookup under load, beside the web
stack's ceiling; optionally batches.

Starts the service on 127.0.0.1 with ``--workers`` processes (default 2, one per core here)
through :func:`territory.cli_serve.run_server`, the settings ``territory serve`` uses, but on
a bench-only app factory (:func:`bench_app`): the service plus ``GET /bench/constant``, a bare
FastAPI route answering a constant, which exists only in this file. A small Xiamen plan is
computed through the API (a plan job) and put in force; then, each step ``--seconds`` long:

1. single assignment, ``GET /assign?lng=&lat=&crs=wgs84`` on the plan in force: an
   OPEN-LOOP ramp. Request ``i`` is due at ``i / rate`` whatever the answers do, and its
   latency is measured from that due time, so a request that waits for a free connection
   (the server is behind) counts its wait: coordinated omission is not hidden. p50, p90,
   p99 and max per rate; the highest rate held with p99 under 20 ms, no failed request and
   the rate really sent is reported (a failing step is tried once more before the ramp
   stops: other engineers' work shares these cores and pauses both sides);
2. the same ramp on the bare route, same server, same run, interleaved (each rate runs on
   one route, then at once on the other, so other work on the machine hits both alike):
   the stack's ceiling, and the ratio of the two held rates;
3. twice the held rate of the assignment route: every request must still be answered 200
   (slowly if need be: see the README on overload);
4. memory of each worker (RSS, PSS) and of the index files it maps: the shared mapping is
   counted once in PSS, whatever the number of workers.

``--batches`` adds the older sections: single lookups beside ``--clients`` processes uploading
JSON batches, and the wall time of a 100 000-point batch as JSON and as CSV.

The load generator is this process, not the server's: callbacks on raw sockets
(asyncio protocols, uvloop's loop when installed), about 40 µs of CPU per request, printed
per step beside the server's. Debian has no open-loop generator (``wrk`` and ``hey`` are
closed-loop: a slow answer delays the next request and hides its own queueing; neither
``wrk2`` nor ``vegeta`` is packaged), and a general client (httpx) spends as much CPU per
request as the server does, on the same two cores.

Every loop is bounded in count and time (about 5 minutes in all without ``--batches``), and
all traffic goes to 127.0.0.1. Client and server share this machine's cores, so the rates
are a floor for a server on its own host.

    python bench/api.py [--workers 2] [--seconds 3] [--customers 20000] [--batches]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import pandas as pd

KEY = "bench-key"
XIAMEN_BOX = (117.95, 24.40, 118.35, 24.75)  # lng/lat box: mostly land, some sea
P99_LIMIT_MS = 20.0
#: requests/s of the ramps, about x1.25 a step
#: up to where the bare route fails on two free cores (it held 20 000/s, the old top), so
#: that the ratio is taken against its ceiling, not a floor of it
RATES = (250, 400, 500, 630, 800, 1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000,
         10000, 12500, 16000, 20000, 25000, 31500, 40000)
RAMP_WALL_S = 240.0  # the ramps stop after this long, wherever they are
CONNECTIONS = 64  # the client's keep-alive pool: in flight at most, the rest queue
#: The client sends what is due at most every millisecond (a sooner timer fires at once
#: and would spin): a request leaves up to 1 ms late, and that counts in its latency.
TICK_S = 0.001
MAX_UPLOADS = 20  # per uploading process
ROOT = Path(__file__).resolve().parents[1]
BARE = "/bench/constant"
MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")


def bench_app() -> Any:
    """The service's app plus the bare route (uvicorn imports this in each worker)."""
    from api.main import create_app

    app = create_app()

    @app.get(BARE, include_in_schema=False)
    async def constant() -> dict[str, bool]:
        return {"ok": True}

    # first, as the service's GET /assign is (then second): routes are matched in
    # order, the ceiling pays for no other
    app.router.routes.insert(0, app.router.routes.pop())
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TERRITORY_API_KEYS": f"bench={KEY}:planner+operations",
           "TERRITORY_MAX_BATCH_POINTS": "1000000", "TERRITORY_DATA_DIR": str(data_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    code = ("from territory.cli_serve import run_server; "
            f"run_server('bench.api:bench_app', host='127.0.0.1', port={port}, "
            f"workers={workers}, log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def make_plan(http: httpx.Client, customers: int) -> str:
    """A Xiamen plan from a demo source, put in force today; returns its id. Small solver
    limits: the lookups' cost depends on the index, not on how well the plan balances."""
    request = {"service_area": "xiamen",
               "source": {"kind": "demo", "city": "xiamen", "customers": customers},
               "parameters": {"main_grids": 24, "sub_grids": 4, "resolution": 9,
                              "target_per_unit": 30, "min_resolution": 7,
                              "time_limit_main": 2, "time_limit_sub": 1,
                              "balance": {"subscribers": 0.25, "workload": 0.25}}}
    t0 = time.perf_counter()
    r = http.post("/plans", json=request)
    r.raise_for_status()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = http.get(r.headers["location"]).json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    if job["status"] != "done":
        raise SystemExit(f"plan job did not finish: {job}")
    plan = http.get(f"/plans/{job['plan_id']}").json()
    print(f"plan job: {time.perf_counter() - t0:.1f} s, {plan['n_units']} units, "
          f"{plan['n_grids']} grids")
    http.post(f"/plans/{plan['plan_id']}/activate").raise_for_status()
    return plan["plan_id"]


def points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = XIAMEN_BOX
    return rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)


def assign_targets(n: int, seed: int) -> list[str]:
    xs, ys = points(n, seed)
    return [f"/assign?lng={x:.6f}&lat={y:.6f}&crs=wgs84" for x, y in zip(xs, ys, strict=True)]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time, with the least client
    work per request: a prepared GET is written, the answer read by its Content-Length."""

    def __init__(self, load: _OpenLoop) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current = -1  # the request in flight, -1 none

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, i: int) -> None:
        self.current = i
        self.transport.write(self.load.requests[i])  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:head.find(b"\r\n", at) if b"\r\n" in head[at:] else None]
                     ) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[:end + 4 + length]
        i, self.current = self.current, -1
        self.load.answered(self, i, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current >= 0:
            self.load.answered(self, self.current, 0)  # status 0: failed, no answer
        self.load.lost(self)


class _OpenLoop:
    """Requests sent on a fixed schedule over a pool of connections (see the docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, requests: list[bytes], rate: float
                 ) -> None:
        self.loop, self.requests, self.rate = loop, requests, rate
        self.n = len(requests)
        self.latency_ms = np.full(self.n, np.nan)
        self.status = np.zeros(self.n, dtype=np.int16)
        self.free: list[_Connection] = []
        self.backlog: deque[int] = deque()
        self.next = 0  # the next request to fall due
        self.pending = self.n
        self.finished = loop.create_future()
        self.start = 0.0
        self.last_due = 0.0

    def due(self, i: int) -> float:
        """When request ``i`` is due, on :func:`time.perf_counter`'s clock (the event
        loop's, uvloop's at least, counts whole milliseconds)."""
        return self.start + i / self.rate

    def tick(self) -> None:
        """Hand every request now due to a free connection, or queue it; wake for the
        next one."""
        now = time.perf_counter()
        while self.next < self.n and self.due(self.next) <= now:
            if self.free:
                self.free.pop().send(self.next)
            else:
                self.backlog.append(self.next)
            self.next += 1
        if self.next < self.n:  # not sooner than TICK_S: the loop's timers count whole ms
            self.loop.call_later(max(self.due(self.next) - time.perf_counter(), TICK_S),
                                 self.tick)
        else:
            self.last_due = now

    def answered(self, conn: _Connection, i: int, status: int) -> None:
        self.latency_ms[i] = (time.perf_counter() - self.due(i)) * 1e3
        self.status[i] = status
        self.pending -= 1
        if self.pending == 0 and not self.finished.done():
            self.finished.set_result(None)
        elif self.backlog and status:
            conn.send(self.backlog.popleft())
        elif status:
            self.free.append(conn)

    def lost(self, conn: _Connection) -> None:
        if conn in self.free:
            self.free.remove(conn)


async def _run_open_loop(port: int, requests: list[bytes], rate: float, timeout: float
                         ) -> tuple[np.ndarray, np.ndarray, float, float]:
    loop = asyncio.get_running_loop()
    load = _OpenLoop(loop, requests, rate)
    conns = []
    for _ in range(CONNECTIONS):
        _, conn = await loop.create_connection(lambda: _Connection(load), "127.0.0.1", port)
        conns.append(conn)
    load.free = list(conns)
    load.start = time.perf_counter() + 0.05
    loop.call_later(0.05, load.tick)
    cpu = time.process_time()
    try:
        await asyncio.wait_for(load.finished, timeout)
    except TimeoutError:
        pass  # unanswered requests keep status 0: failures
    cpu = time.process_time() - cpu
    sent = load.n / max(load.last_due - load.start, 1e-9) if load.last_due else 0.0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return load.latency_ms, load.status, sent, cpu / load.n * 1e6


def _event_loop() -> Any:
    """uvloop's loop factory when installed (less client CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class Load(NamedTuple):
    """One open-loop run: latencies (ms, NaN when unanswered), requests failed (not 200,
    or no answer), the rate really sent, the client's CPU µs per request."""

    latency_ms: np.ndarray
    failed: int
    sent: float
    client_us: float


def open_loop(port: int, targets: list[str], rate: float, seconds: float | None = None
              ) -> Load:
    """Send the first ``rate * seconds`` of ``targets`` (all without ``seconds``) on
    schedule."""
    n = len(targets) if seconds is None else min(len(targets), int(rate * seconds))
    requests = [f"GET {t} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n\r\n".encode()
                for t in targets[:n]]
    timeout = n / rate + 30.0
    with asyncio.Runner(loop_factory=_event_loop()) as runner:
        latency, status, sent, cpu_us = runner.run(
            _run_open_loop(port, requests, rate, timeout))
    return Load(latency, int((status != 200).sum()), sent, cpu_us)


def _row(rate: float, sent: float, lat: np.ndarray, failed: int, client_us: float,
         server_us: float) -> str:
    answered = lat[np.isfinite(lat)]
    p50, p90, p99, top = (np.percentile(answered, [50, 90, 99, 100]) if len(answered)
                          else [np.nan] * 4)
    return (f"{rate:>8.0f} {sent:>8.0f} {p50:>8.2f} {p90:>8.2f} {p99:>8.2f} {top:>8.1f} "
            f"{failed:>7} {server_us:>9.0f} {client_us:>9.0f}")


HEADER = (f"{'rate/s':>8} {'sent/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'failed':>7} {'server µs':>9} {'client µs':>9}")
#: what the last two columns are
CPU_NOTE = "server µs, client µs: CPU time per request of all server processes, of the client"


class Server(NamedTuple):
    pid: int
    port: int


def server_cpu_s(server_pid: int) -> float:
    """CPU seconds used so far by the server and its worker processes."""
    total = 0
    for pid in [server_pid, *_children(server_pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def step(server: Server, targets: list[str], rate: float, seconds: float
         ) -> tuple[bool, str]:
    """One rate for ``seconds``: held or not, and the printed row."""
    cpu = server_cpu_s(server.pid)
    r = open_loop(server.port, targets, rate, seconds)
    server_us = (server_cpu_s(server.pid) - cpu) / len(r.latency_ms) * 1e6
    p99 = np.nanpercentile(r.latency_ms, 99) if np.isfinite(r.latency_ms).any() else np.inf
    held = p99 < P99_LIMIT_MS and r.failed == 0 and r.sent >= 0.95 * rate
    return held, _row(rate, r.sent, r.latency_ms, r.failed, r.client_us, server_us)


def ramps(server: Server, routes: dict[str, list[str]], seconds: float
          ) -> tuple[dict[str, int | None], set[str]]:
    """Rising rates for every route, each rate on one route right after the other (so a
    burst of other work on the machine hits both alike), until a route does not hold one
    twice in a row; the highest rate each held, and the routes that never failed (their
    ceiling was not reached)."""
    print(f"\n{' and '.join(routes)}, open loop, {seconds:g} s per rate, {CONNECTIONS} "
          "connections, the routes in turn at each rate")
    print(f"{'route':>8} {HEADER}")
    for targets in routes.values():
        open_loop(server.port, targets, 500, 1.0)  # warm-up: every worker opens the index
    best: dict[str, int | None] = dict.fromkeys(routes)
    going = set(routes)
    deadline = time.monotonic() + RAMP_WALL_S
    for rate in RATES:
        for name, targets in routes.items():
            if name not in going:
                continue
            for attempt in range(2):
                held, row = step(server, targets, rate, seconds)
                print(f"{name:>8} {row}" + ("" if held else "  not held")
                      + (" (again)" if attempt else ""))
                if held:
                    best[name] = rate
                    break
            else:
                going.discard(name)
        if not going or time.monotonic() > deadline:
            break
    if going:  # a route still holding: its ceiling is above what it held
        print(f"({', '.join(sorted(going))} still held when the ramps stopped "
              f"(after {RAMP_WALL_S:g} s or at the top rate): a ceiling at least that high)")
    for name, rate in best.items():
        print(f"{name}: highest rate held with p99 < {P99_LIMIT_MS:g} ms and no failure: "
              f"{rate or 'none'} requests/s")
    return best, going


def overload(server: Server, targets: list[str], rate: float, seconds: float) -> None:
    print(f"\nsingle assignment at twice the rate held, {rate:.0f}/s for {seconds:g} s: "
          "every request must be answered 200")
    print(HEADER)
    _, row = step(server, targets, rate, seconds)
    print(row)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _kib(text: str, field: str) -> int:
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(field))


def memory(server_pid: int) -> None:
    """RSS and PSS of each worker, and of the index files it maps (``/proc/PID/smaps``)."""
    print("\nmemory per worker (MiB): whole process, and the index files it maps")
    print(f"{'pid':>8} {'RSS':>7} {'PSS':>7} {'index RSS':>10} {'index PSS':>10}  process")
    for pid in _children(server_pid) or [server_pid]:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            smaps = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        index_rss = index_pss = 0
        mapping = ""
        for line in smaps.splitlines():
            if MAPPING.match(line):
                mapping = line  # a mapping's first line: address range, ..., path
            elif ".index/" in mapping and line.startswith("Rss:"):
                index_rss += int(line.split()[1])
            elif ".index/" in mapping and line.startswith("Pss:"):
                index_pss += int(line.split()[1])
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        role = ("multiprocessing's resource tracker" if b"resource_tracker" in command
                else "worker")
        print(f"{pid:>8} {_kib(rollup, 'Rss:') / 1024:>7.1f} {_kib(rollup, 'Pss:') / 1024:>7.1f} "
              f"{index_rss / 1024:>10.1f} {index_pss / 1024:>10.1f}  {role}")


def _upload_loop(url: str, body: bytes, stop: Any, results: Any) -> None:
    """One uploading client (a forked process, so its work does not slow the load
    generator): the same JSON batch, back to back, until ``stop`` is set or MAX_UPLOADS."""
    with httpx.Client(base_url=url, timeout=300, headers={
            "X-API-Key": KEY, "content-type": "application/json"}) as http:
        for _ in range(MAX_UPLOADS):
            if stop.is_set():
                break
            t0 = time.perf_counter()
            r = http.post("/assign", params={"crs": "wgs84"}, content=body)
            results.put((r.status_code, time.perf_counter() - t0))


def singles_beside_batches(url: str, port: int, seconds: float, clients: int, n: int,
                           rate: int) -> None:
    xs, ys = points(n, seed=11)
    body = json.dumps([{"id": i, "lng": x, "lat": y}
                       for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True))]
                      ).encode()
    print(f"\nsingle assignment at {rate}/s, idle and while {clients} clients upload "
          f"JSON batches of {n:,} points ({len(body) / 2**20:.1f} MiB) back to back, "
          f"{seconds:g} s each")
    print(f"{'load':>24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} "
          f"{'batches':>8} {'batch s':>8}")
    open_loop(port, assign_targets(rate, seed=98), rate)  # warm-up: the index into memory
    lat, errors, *_ = open_loop(port, assign_targets(int(rate * seconds), seed=21), rate)
    p50, p99 = np.nanpercentile(lat, [50, 99])
    print(f"{'idle':>24} {p50:>8.2f} {p99:>8.2f} {np.nanmax(lat):>8.1f} {errors:>7}")
    ctx = multiprocessing.get_context("fork")  # no re-import: the uploads start at once
    stop, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_upload_loop, args=(url, body, stop, results))
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(3)  # the uploads under way
    lat, errors, *_ = open_loop(port, assign_targets(int(rate * seconds), seed=22), rate)
    stop.set()
    done = []
    for proc in procs:  # each finishes the upload it is in
        proc.join(timeout=300)
    while not results.empty():
        done.append(results.get())
    statuses = sorted({code for code, _ in done})
    p50, p99 = np.nanpercentile(lat, [50, 99])
    batch_s = np.median([t for _, t in done]) if done else float("nan")
    print(f"{f'{clients} uploading clients':>24} {p50:>8.2f} {p99:>8.2f} {np.nanmax(lat):>8.1f} "
          f"{errors:>7} {len(done):>8} {batch_s:>8.2f}  (batch statuses {statuses})")


def batch_time(http: httpx.Client, n: int, repeats: int = 3) -> None:
    xs, ys = points(n, seed=7)
    body = [{"id": i, "lng": float(x), "lat": float(y)}
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    csv = pd.DataFrame({"id": np.arange(n), "lng": xs, "lat": ys}).to_csv(index=False)
    print(f"\nbatch of {n:,} points (best and median of {repeats})")
    for name, send in (
        ("JSON array, POST /assign",
         lambda: http.post("/assign", params={"crs": "wgs84"}, json=body)),
        ("CSV upload, POST /assign/file",
         lambda: http.post("/assign/file", params={"crs": "wgs84"},
                           files={"file": ("p.csv", csv, "text/csv")})),
    ):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = send()
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
        rows = (len(r.json()["data"]) if r.headers["content-type"].startswith("application/json")
                else len(pd.read_csv(io.StringIO(r.text))))
        assert rows == n, rows
        print(f"  {name:<32} best {min(times):6.2f} s   median {np.median(times):6.2f} s   "
              f"({n / min(times):,.0f} points/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--seconds", type=float, default=3.0, help="per load step")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--data-dir", type=Path, help="keep the plan store here and reuse "
                        "its plan in force on the next run (default: a temporary folder)")
    parser.add_argument("--batches", action="store_true",
                        help="also single lookups beside batch uploads, and batch times")
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4, help="uploading clients beside "
                                                                 "the single lookups")
    parser.add_argument("--beside-rate", type=int, default=100,
                        help="single lookups per second beside the batches")
    args = parser.parse_args()
    t0 = time.monotonic()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="territory-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data_dir, port, args.workers)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other work on this "
          f"machine competes with client and server); {args.workers} server workers; "
          f"client loop {'uvloop' if _event_loop() else 'asyncio'}")
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as http:
            if not http.get("/plans/effective").json()["count"]:
                make_plan(http, args.customers)
            n = int(max(RATES) * args.seconds)
            server = Server(proc.pid, port)
            print(CPU_NOTE)
            best, unsaturated = ramps(server, {"assign": assign_targets(n, seed=1),
                                               "bare": [BARE] * n}, args.seconds)
            held, bare = best["assign"], best["bare"]
            if held and bare:
                print(f"\nassignment / bare route held rates: {held} / {bare} = "
                      f"{held / bare:.2f}" + (" (an upper bound: the bare route never failed)"
                                              if "bare" in unsaturated else ""))
            if held:
                overload(server, assign_targets(n, seed=2), 2 * held, args.seconds)
            memory(proc.pid)
            if args.batches:
                singles_beside_batches(url, port, args.seconds, args.clients, args.batch,
                                       args.beside_rate)
                batch_time(http, args.batch)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\nbench wall time {time.monotonic() - t0:.0f} s; load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
