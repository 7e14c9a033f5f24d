"""Key accounts hold the units of their footprint in one grid, as far as a balanced plan can."""

from __future__ import annotations

import pandas as pd
import pytest

from territory.hierarchy import HierarchySpec
from territory.key_accounts import key_account_groups
from territory.pipeline import Inputs, UnitOptions, _unit_constraints, build_unit_table
from tests.test_pipeline import AREAS, customers

#: a park of 4 km radius (about a quarter of the customers) and a building of 300 m
KEY_ACCOUNTS = pd.DataFrame({"lng": [75.95, 76.05], "lat": [39.45, 39.45],
                             "footprint_m": [4000.0, 300.0], "subscribers": [900, 200]})


@pytest.fixture(scope="module")
def units():
    inputs = Inputs(AREAS, "adcode", customers(2_000, seed=1), key_accounts=KEY_ACCOUNTS)
    return build_unit_table(inputs, UnitOptions(resolution=9))[0], inputs


@pytest.mark.parametrize("fit", [False, True])
def test_a_key_account_heavier_than_a_sub_grid_is_released_only_when_fitting(units, fit):
    """The demo (``fit_main``) sizes its grids from the customers alone: a key account whose
    footprint holds more than a mean sub-grid cannot be kept in one grid of a balanced plan,
    so it is let go and reported (the 2 000 000-customer demo: parks of 7 500 subscribers
    for main grids of 3 100). A planner's own plan keeps every group (and the pre-check
    refuses what cannot balance)."""
    units, inputs = units
    groups = key_account_groups(units, KEY_ACCOUNTS)
    big, small = sorted(groups, key=len, reverse=True)
    spec = HierarchySpec(measures={"subscribers": 0.05}, n_main=2, n_sub=4, fit_main=fit)
    released = _unit_constraints(units, inputs, spec, stores_as_centres=False)
    cap = units["subscribers"].sum() / 8
    assert units.loc[big, "subscribers"].sum() > cap > units.loc[small, "subscribers"].sum()
    if not fit:
        assert released == [] and sorted(spec.together) == sorted(groups)
        return
    assert spec.together == [small]
    assert released == [{"units": [str(u) for u in big], "measure": "subscribers",
                         "load": float(units.loc[big, "subscribers"].sum()),
                         "cap": pytest.approx(cap)}]
