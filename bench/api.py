"""Customer assignment over HTTP on loopback: single-point latency under load, batch time.

Starts ``territory serve`` on 127.0.0.1 with a fresh data directory, computes a Xiamen plan
through the API (a plan job) and puts it in force, then:

1. single assignment, ``GET /assign?lng=&lat=`` on the plan in force: an open-loop load
   generator (asyncio, 32 keep-alive connections) sends requests on a fixed schedule, so a
   slow answer cannot slow the sender down and hide its own queueing; latency is measured
   from each request's scheduled time. p50/p99 at 200 requests/s, then rising rates until
   p99 passes 20 ms or the rate cannot be sent; the highest rate held with p99 under 20 ms
   is reported;
2. single assignment beside bulk work: p50/p99 of single lookups at a fixed rate
   (``--beside-rate``, 100/s),
   first idle, then while ``--clients`` other processes (default 4) upload batches of
   ``--batch`` points to ``POST /assign`` back to back (each at most ``MAX_UPLOADS``);
3. a batch of 100 000 points: as a JSON array (``POST /assign``) and as a CSV upload
   (``POST /assign/file``), total wall time per request.

Every loop is bounded in count and time, and all traffic goes to 127.0.0.1. Client and
server share this machine's cores, so the rates are a floor for a server on its own host.

    python bench/api.py [--customers 20000] [--seconds 5] [--clients 4] [--batch 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

KEY = "bench-key"
XIAMEN_BOX = (117.95, 24.40, 118.35, 24.75)  # lng/lat box: mostly land, some sea
P99_LIMIT_MS = 20.0
RATES = (200, 300, 400, 500, 600, 800, 1000, 1250, 1500, 2000)
MAX_WALL_S = 600.0
MAX_UPLOADS = 20  # per uploading process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TERRITORY_API_KEYS": f"bench={KEY}:planner+operations",
           "TERRITORY_MAX_BATCH_POINTS": "1000000"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from territory.cli import main; main()", "serve",
         "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
         "--log-level", "warning"], env=env, stdin=subprocess.DEVNULL)
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
    """A Xiamen plan from a demo source, put in force today; returns its id."""
    request = {"service_area": "xiamen",
               "source": {"kind": "demo", "city": "xiamen", "customers": customers},
               "parameters": {"main_grids": 24, "sub_grids": 4, "resolution": 9,
                              "target_per_unit": 30, "min_resolution": 7,
                              "time_limit_main": 5, "time_limit_sub": 2,
                              "balance": {"subscribers": 0.1, "workload": 0.1}}}
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


class Connection:
    """One keep-alive HTTP/1.1 connection with the least client work per request.

    A general client (httpx) spends about as much CPU per request as the server does, and
    it runs on the same cores: it would measure itself. This one writes a GET and reads the
    response by its Content-Length, nothing more.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, target: str) -> int:
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"X-API-Key: {KEY}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


async def open_loop(port: int, rate: int, seconds: float, seed: int, connections: int = 32
                    ) -> tuple[np.ndarray, int, float]:
    """Send ``rate*seconds`` requests on schedule; latencies (ms), errors, achieved rate.

    Request ``i`` is due at ``i / rate``; it waits in a queue for a free connection when all
    are busy, and that wait counts in its latency, as it would for a real caller.
    """
    n = int(rate * seconds)
    xs, ys = points(n, seed)
    targets = [f"/assign?lng={x:.6f}&lat={y:.6f}&crs=wgs84"
               for x, y in zip(xs, ys, strict=True)]
    lat_ms = np.full(n, np.nan)
    status = np.zeros(n, dtype=int)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    pool = [await Connection.open(port) for _ in range(connections)]
    start = loop.time() + 0.05

    async def work(conn: Connection) -> None:
        while (i := await queue.get()) is not None:
            status[i] = await conn.get(targets[i])
            lat_ms[i] = (loop.time() - (start + i / rate)) * 1e3

    workers = [asyncio.create_task(work(c)) for c in pool]
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        queue.put_nowait(i)
    sent = n / (loop.time() - start)
    for _ in pool:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=seconds + 30)
    for conn in pool:
        conn.close()
    return lat_ms, int((status != 200).sum()), sent


def single_latency(port: int, seconds: float) -> None:
    print(f"\nsingle assignment, GET /assign (plan in force), open loop, {seconds:g} s per "
          "rate")
    print(f"{'rate/s':>8} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>7}")
    asyncio.run(open_loop(port, 200, 1.0, seed=99))  # warm-up: the index into memory
    best = None
    deadline = time.monotonic() + MAX_WALL_S / 2
    for k, rate in enumerate(RATES):
        lat, errors, sent = asyncio.run(open_loop(port, rate, seconds, seed=k))
        p50, p99 = np.nanpercentile(lat, [50, 99])
        print(f"{rate:>8} {sent:>8.0f} {p50:>8.2f} {p99:>8.2f} {np.nanmax(lat):>8.1f} "
              f"{errors:>7}")
        if p99 >= P99_LIMIT_MS or errors or sent < 0.95 * rate:
            break
        best = rate
        if time.monotonic() > deadline:
            break
    print(f"highest rate held with p99 < {P99_LIMIT_MS:g} ms: "
          f"{best if best else 'none'} requests/s")


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
    asyncio.run(open_loop(port, rate, 1.0, seed=98))  # warm-up: the index into memory
    lat, errors, _ = asyncio.run(open_loop(port, rate, seconds, seed=21))
    p50, p99 = np.nanpercentile(lat, [50, 99])
    print(f"{'idle':>24} {p50:>8.2f} {p99:>8.2f} {np.nanmax(lat):>8.1f} {errors:>7}")
    ctx = multiprocessing.get_context("fork")  # no re-import: the uploads start at once
    stop, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_upload_loop, args=(url, body, stop, results))
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(3)  # the uploads under way
    lat, errors, _ = asyncio.run(open_loop(port, rate, seconds, seed=22))
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
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load step")
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4, help="uploading clients beside "
                                                                 "the single lookups")
    parser.add_argument("--beside-rate", type=int, default=100,
                        help="single lookups per second beside the batches")
    parser.add_argument("--only-beside", action="store_true",
                        help="measure only single lookups beside batches")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="territory-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other work on this "
          "machine competes with client and server)")
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as http:
            make_plan(http, args.customers)
            if not args.only_beside:
                single_latency(port, args.seconds)
            singles_beside_batches(url, port, args.seconds, args.clients, args.batch,
                                   args.beside_rate)
            if not args.only_beside:
                batch_time(http, args.batch)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
