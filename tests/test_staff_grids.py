"""Joint planning's sub-grid counts: every main grid's workload per staff within tolerance of
the city's, checked against brute force on small cases (territory.staff_grids)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from territory.errors import InfeasibleError
from territory.staff_grids import branch_counts, per_staff_deviation, staff_range, sub_counts


def _brute(W, t, most, tol):
    """The least sum |n - t| over every count vector that meets the tolerance, or None."""
    lo, hi = staff_range(float(sum(t)), tol)
    best = None
    for n in itertools.product(*(range(1, m + 1) for m in most)):
        if not lo <= sum(n) <= hi:
            continue
        if np.abs(per_staff_deviation(W, np.array(n))).max() <= tol * (1 - 1e-5):
            cost = float(np.abs(np.array(n) - t).sum())
            best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.3, 5.0), min_size=2, max_size=4),
       st.floats(0.5, 1.5), st.sampled_from([0.05, 0.1, 0.2]), st.integers(3, 6))
def test_counts_hold_the_tolerance_and_are_optimal(people, hours, tol, most):
    """Whatever the main grids' workloads: counts are returned exactly when some whole counts
    meet the tolerance (brute force), they meet it, and no counts are closer to the beats."""
    t = np.array(people)
    W = pd.Series(t * 100 * hours, index=[f"M{i}" for i in range(len(t))])
    beats, cap = pd.Series(t, index=W.index), pd.Series(most, index=W.index)
    best = _brute(W.to_numpy(), t, [most] * len(t), tol)
    if best is None:
        with pytest.raises(InfeasibleError, match="M0: "):
            sub_counts(W, beats, cap, tol)
        return
    n = sub_counts(W, beats, cap, tol)
    assert (n >= 1).all() and (n <= most).all()
    assert np.abs(per_staff_deviation(W.to_numpy(), n.to_numpy())).max() <= tol
    lo, hi = staff_range(float(t.sum()), tol)
    assert lo <= n.sum() <= hi
    assert abs(float(np.abs(n.to_numpy() - t).sum()) - best) < 1e-6


def test_rounding_alone_misses_and_the_counts_do_not():
    """2.6, 5.3 and 7.9 people's months rounded to 3, 5, 8 people leave the second grid 12 %
    over the city's workload per staff; 3, 6, 8 hold ±10 %."""
    W = pd.Series([260.0, 530.0, 790.0], index=["A", "B", "C"])
    beats = W / 100
    rounded = beats.round().clip(lower=1)
    assert np.abs(per_staff_deviation(W.to_numpy(), rounded.to_numpy())).max() > 0.1
    n = sub_counts(W, beats, pd.Series(10, index=W.index), 0.1)
    assert n.tolist() == [3, 6, 8]
    assert np.abs(per_staff_deviation(W.to_numpy(), n.to_numpy())).max() <= 0.1


def test_impossible_is_refused_with_the_numbers():
    """Two main grids of 1 and 1.5 people's months: 1:1 or 1:2 people are 20 % or 25 % off."""
    W = pd.Series([100.0, 150.0], index=["North", "South"])
    with pytest.raises(InfeasibleError) as err:
        sub_counts(W, W / 100, pd.Series(10, index=W.index), 0.1)
    text = str(err.value)
    assert "North: 100 h, 1.00 people's months" in text and "South: 150 h" in text
    assert "±10%" in text and "2..2 people" in text and "`staff_tolerance`" in text


def _branches_fit(W: pd.Series, k: pd.Series, room: float) -> bool:
    """Whether some whole team per branch puts every branch's main grids (each its branch's
    mean) within ``room`` of the city's workload per staff, with the city's headcount in its
    range (one person's month = 100 h; brute force over teams 1..12)."""
    lo, hi = staff_range(float(W.sum()) / 100, 0.10)
    for teams in itertools.product(range(1, 13), repeat=len(W)):
        n = k.to_numpy() * np.array(teams)
        dev = np.abs(per_staff_deviation(W.to_numpy(), n)).max()
        if lo <= n.sum() <= hi and dev <= room + 1e-9:
            return True
    return False


def test_branch_counts_make_whole_teams_before_the_draw():
    """Branches of 5 and 3 people's months asked for two main grids each (2.5 and 1.5 people
    a main grid: no whole teams come within the band): with the city's four main grids kept,
    1 and 3 main grids of 5 and 1 people; where the units allow B only two, nothing fits and
    the asked counts stay (the counts after the draw then decide or refuse)."""
    W = pd.Series({"A": 500.0, "B": 300.0})
    asked = pd.Series({"A": 2, "B": 2})
    room = 1.10 / 1.05 - 1  # what ±10 % per staff leaves main grids balanced to ±5 %
    assert not _branches_fit(W, asked, room)
    k = branch_counts(W, W / 100, asked, pd.Series({"A": 50, "B": 50}), tolerance=0.10,
                      main_tolerance=0.05, city_total=4)
    assert k.to_dict() == {"A": 1, "B": 3} and _branches_fit(W, k, room)
    free = branch_counts(W, W / 100, asked, pd.Series({"A": 50, "B": 50}), tolerance=0.10,
                         main_tolerance=0.05, city_total=None)
    assert _branches_fit(W, free, room)
    stuck = branch_counts(W, W / 100, asked, pd.Series({"A": 50, "B": 2}), tolerance=0.10,
                          main_tolerance=0.05, city_total=4)
    assert stuck.to_dict() == asked.to_dict()
