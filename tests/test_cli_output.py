"""What the command writes besides its results: progress without a terminal, log lines.

The plan runs go through a real pipe (a child process whose stderr is not a terminal), as
under cron or CI; the heartbeat is tested on the renderer with an injected clock.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time
import warnings
from datetime import datetime, timedelta

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from rich.console import Console

from territory import cli_output
from territory.cli_output import PlainProgress, configure, progress
from territory.progress import BRANCHES, GRAPH, MAIN_GRIDS, UNITS

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


@pytest.fixture(autouse=True)
def _default_output():
    """Every test leaves the process' logging and verbosity as a plain run sets them."""
    yield
    configure()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def plain(interval: float = 10.0):
    clock, out = FakeClock(), io.StringIO()
    start = datetime(2026, 11, 28, 10, 42, 3)
    renderer = PlainProgress("plan", out, interval=interval, clock=clock,
                             now=lambda: start + timedelta(seconds=clock.t))
    return renderer, clock, out


def test_plain_lines_at_start_end_and_at_most_one_per_interval_between():
    show, clock, out = plain()
    show(MAIN_GRIDS, 0, 100)
    for done in range(1, 100):
        clock.t += 0.5  # a step every half second: 49.5 s in all
        show(MAIN_GRIDS, done, 100)
    clock.t += 0.5
    show(MAIN_GRIDS, 100, 100)
    lines = out.getvalue().splitlines()
    assert lines[0] == "2026-11-28T10:42:03 [plan] main grids → sub-grids 0/100 started"
    assert lines[-1] == "2026-11-28T10:42:53 [plan] main grids → sub-grids 100/100 done (0:00:50)"
    between = lines[1:-1]
    assert len(between) == 4  # at 10, 20, 30, 40 s: one per interval, not one per step
    assert between[0] == "2026-11-28T10:42:13 [plan] main grids → sub-grids 20/100 (0:00:10)"


def test_heartbeat_reports_a_silent_stage_once_per_interval():
    show, clock, out = plain(interval=10.0)
    assert show.next_beat() == 10.0  # nothing runs: the thread just waits
    show(UNITS, 0, None)
    clock.t = 4.0
    assert show.next_beat() == 6.0  # the thread wakes exactly when a line is due
    clock.t = 0.0
    for _ in range(25):  # 25 s without a step, the heartbeat asked every second
        clock.t += 1.0
        show.tick()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("[plan] units built started")
    assert [line.split("] ")[1] for line in lines[1:]] == [
        "units built 0/? (0:00:10)", "units built 0/? (0:00:20)"]
    show(UNITS, 5000, 5000)
    clock.t += 30.0
    show.tick()  # an ended stage is silent
    assert show.next_beat() == 10.0
    assert out.getvalue().splitlines()[-1].endswith("units built 5000/5000 done (0:00:25)")
    assert len(out.getvalue().splitlines()) == 4


def test_heartbeat_thread_runs_while_the_block_runs():
    out = io.StringIO()
    show = PlainProgress("demo", out, interval=0.05)
    with show.running():
        show("maps written", 0, 1)
        time.sleep(0.6)
        show("maps written", 1, 1)
    n = len(out.getvalue().splitlines())
    time.sleep(0.2)
    lines = out.getvalue().splitlines()
    assert len(lines) == n  # the thread has stopped with the block
    beats = [line for line in lines if re.search(r"maps written 0/1 \(", line)]
    assert len(beats) >= 2, lines
    assert all(re.match(STAMP + r" \[demo\] maps written ", line) for line in lines)


def test_progress_is_rich_bars_on_a_terminal_and_nothing_when_quiet():
    term = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress(term) as show:
        show(BRANCHES, 0, 2)
        show(BRANCHES, 2, 2)
    assert isinstance(show, cli_output.RichProgress)
    assert "branches → main grids" in term.file.getvalue()
    configure(quiet=True)
    quiet = Console(file=io.StringIO(), force_terminal=False)
    with progress(quiet) as show:
        show(BRANCHES, 0, 2)
        show(BRANCHES, 2, 2)
    assert quiet.file.getvalue() == ""


def test_log_lines_are_concise_and_follow_the_verbosity(capsys):
    log = logging.getLogger("territory.somewhere")
    configure()
    try:
        raise ValueError("inner detail")
    except ValueError:
        log.warning("island joined to the mainland", exc_info=True)
    log.info("not shown by default")
    warnings.warn("Not enough unique values", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == ("warning: island joined to the mainland\n"
                   "warning: UserWarning: Not enough unique values\n")
    assert not logging.getLogger("territory.optimize").isEnabledFor(logging.DEBUG)
    configure(quiet=True)
    log.warning("hidden by --quiet")
    log.error("errors still show")
    assert capsys.readouterr().err == "error: errors still show\n"
    configure(verbose=True)
    log.debug("solver detail")
    assert "solver detail" in capsys.readouterr().err
    assert logging.getLogger("territory.optimize").isEnabledFor(logging.DEBUG)


# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_city(tmp_path_factory):
    """Two districts of 8 × 6 km and 3 000 customers: a plan of a few seconds."""
    d = tmp_path_factory.mktemp("city")
    areas = gpd.GeoDataFrame(
        {"adcode": ["A", "B"]},
        geometry=[shapely.box(114.00, 22.50, 114.08, 22.56),
                  shapely.box(114.08, 22.50, 114.16, 22.56)], crs="EPSG:4326")
    pyogrio.write_dataframe(areas, d / "districts.geojson")
    rng = np.random.default_rng(3)
    n = 3000
    pd.DataFrame({"customer_id": np.arange(n), "lng": rng.uniform(114.0, 114.16, n),
                  "lat": rng.uniform(22.5, 22.56, n)}).to_csv(d / "customers.csv", index=False)
    return d


def run_plan(city, out, *flags):
    args = [sys.executable, "-c", "from territory.cli import main; main()", *flags, "plan",
            str(city / "districts.geojson"), "--customers", str(city / "customers.csv"),
            "--points-crs", "wgs84", "--resolution", "8", "--min-resolution", "8",
            "--main-grids", "4", "--sub-grids", "2", "--balance", "customers=0.25",
            "--workers", "1", "--time-limit-main", "5", "--time-limit-sub", "3",
            "--out", str(out)]
    return subprocess.run(args, capture_output=True, text=True,  # pipes: no terminal
                          timeout=600, check=False)


def test_plan_through_a_pipe_prints_timestamped_stage_lines(small_city, tmp_path):
    res = run_plan(small_city, tmp_path / "p")
    assert res.returncode == 0, res.stderr
    err = res.stderr
    for stage in (UNITS, GRAPH, BRANCHES, MAIN_GRIDS):
        assert re.search(rf"^{STAMP} \[plan\] {stage} .*started$", err, re.M), err
    assert re.search(rf"^{STAMP} \[plan\] {UNITS} (\d+)/\1 done \(0:\d\d:\d\d\)$", err, re.M)
    assert re.search(rf"^{STAMP} \[plan\] {BRANCHES} 2/2 done", err, re.M), err
    assert re.search(rf"^{STAMP} \[plan\] {MAIN_GRIDS} 4/4 done", err, re.M), err
    assert "plan " in res.stdout and "units; customers 3000 inside" in res.stdout
    # the same plan's customers, assigned in chunks
    assigned = subprocess.run(
        [sys.executable, "-c", "from territory.cli import main; main()", "assign",
         str(tmp_path / "p" / "plan.gpkg"), str(small_city / "customers.csv"), "--crs",
         "wgs84", "--chunk-size", "1000", "--out", str(tmp_path / "a.csv")],
        capture_output=True, text=True, timeout=600, check=False)
    assert assigned.returncode == 0, assigned.stderr
    assert re.search(rf"^{STAMP} \[assign\] customers assigned started$", assigned.stderr, re.M)
    assert re.search(rf"^{STAMP} \[assign\] customers assigned 3000/3000 done",
                     assigned.stderr, re.M), assigned.stderr
    # the solvers keep quiet unless --verbose asks for their logs
    assert "HiGHS" not in res.stdout + res.stderr


def test_quiet_plan_prints_only_the_summary(small_city, tmp_path):
    res = run_plan(small_city, tmp_path / "p", "--quiet")
    assert res.returncode == 0, res.stderr
    assert not re.search(STAMP, res.stderr), res.stderr
    assert "units; customers 3000 inside" in res.stdout
    assert "HiGHS" not in res.stdout + res.stderr
