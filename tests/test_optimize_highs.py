"""The process-wide HiGHS policy: the exact MIP after an LP, silence unless verbose."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from territory.errors import SolverError
from territory.optimize.highs import checked_status, new_highs
from territory.optimize.lp import solve_balanced_lp

#: An LP first (it starts HiGHS' global scheduler), then the exact MIP, in one fresh process.
LP_THEN_EXACT = textwrap.dedent("""
    import logging, sys
    import numpy as np
    from territory.optimize import Partitioner
    from territory.optimize.lp import solve_balanced_lp
    from tests.conftest import lattice

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("territory.optimize").setLevel(getattr(logging, sys.argv[1]))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (60, 2))
    W = rng.uniform(1, 2, (60, 1))
    mu = W.sum() / 3
    res, sol = solve_balanced_lp(xy, np.ones(60), W, xy[:3], np.full((3, 1), 0.9 * mu),
                                 np.full((3, 1), 1.1 * mu), time_limit=10)
    assert sol["optimal"], res.status
    g = lattice(4, 4, seed=2)
    p = Partitioner(2, measures={"subscribers": 0.1}, objective="boundary", exact=True,
                    time_limit=60).solve(g)
    open(sys.argv[2], "w").write(p.status_)
""")


def _run(level: str, tmp_path) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "status.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", LP_THEN_EXACT, level, str(out)],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    return proc, out.read_text()


def test_exact_mip_proves_optimality_after_an_lp_in_the_same_process_and_is_silent(tmp_path):
    proc, status = _run("INFO", tmp_path)
    assert status == "optimal"
    # nothing on either stream: no banner at the first Highs(), no solver log
    assert proc.stdout == "" and proc.stderr == ""


def test_solver_log_appears_at_debug(tmp_path):
    proc, status = _run("DEBUG", tmp_path)
    assert status == "optimal"
    # the MIP's own log, not just the banner
    assert "Model status" in proc.stdout + proc.stderr


def _small_lp():
    import numpy as np

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1000, (40, 2))
    W = rng.uniform(1, 2, (40, 1))
    mu = W.sum() / 2
    return solve_balanced_lp(xy, np.ones(40), W, xy[:2], np.full((2, 1), 0.95 * mu),
                             np.full((2, 1), 1.05 * mu), time_limit=10)


def test_lp_prints_nothing_at_info_and_logs_at_debug(capfd):
    logger = logging.getLogger("territory.optimize")
    old = logger.level
    try:
        logger.setLevel(logging.INFO)
        _small_lp()
        quiet = capfd.readouterr()
        assert quiet.out == "" and quiet.err == ""
        logger.setLevel(logging.DEBUG)
        _small_lp()
        loud = capfd.readouterr()
        assert "Model status" in loud.out + loud.err
    finally:
        logger.setLevel(old)


def test_a_solve_that_did_not_run_raises():
    h = new_highs()  # no model passed and never run: status "Not Set"
    with pytest.raises(SolverError, match="Not Set"):
        checked_status(h, "test model")
