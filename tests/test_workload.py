"""The workload model: shipped defaults, hours per row, sums into units, travel per grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from territory.errors import InvalidInputError
from territory.workload import DEFAULT_PATH, PARTS, add_total, load_model


def test_shipped_model_loads_and_prices_rows():
    m = load_model()
    cust = pd.DataFrame({"segment": ["big", "business", "ordinary", None]})
    np.testing.assert_allclose(m.row_hours("customers", cust), [1.5, 0.3, 0.05, 0.05])
    com = pd.DataFrame({"households": [1000, 1000], "entry_threshold": [1, 5]})
    # 0.5 h per community + 0.12 h per 100 households x threshold factor (1.0 and 1.7)
    np.testing.assert_allclose(m.row_hours("communities", com), [0.5 + 1.2, 0.5 + 1.2 * 1.7])
    ka = pd.DataFrame({"kind": ["industrial_park"], "employees": [5000]})
    np.testing.assert_allclose(m.row_hours("key_accounts", ka), [6 + 1.0 * 5])


def test_unknown_tier_is_counted_as_the_default_and_named(caplog):
    m = load_model()
    c = m.customers
    with caplog.at_level("WARNING", logger="territory.workload"):
        hours = m.row_hours("customers", pd.DataFrame({c.tier_column: ["platinum", "big"]}))
    assert "'platinum'" in caplog.text and repr(c.missing_tier) in caplog.text
    assert hours[0] == c.hours_per_customer[c.missing_tier]
    assert hours[1] == c.hours_per_customer["big"]


def test_bad_values_are_named():
    m = load_model()
    with pytest.raises(InvalidInputError, match="households.*rows \\[1\\]"):
        m.row_hours("communities", pd.DataFrame({"households": [10, -3]}))


def test_a_planners_copy_is_validated(tmp_path):
    text = DEFAULT_PATH.read_text(encoding="utf-8")
    bad = tmp_path / "w.toml"
    bad.write_text(text.replace("customers = 0.30, communities", "customers = 0.50, communities"))
    with pytest.raises(InvalidInputError, match="shares of customers add up to 1.2"):
        load_model(bad)
    good = tmp_path / "g.toml"
    good.write_text(text.replace("big = 1.5", "big = 3.0"))
    assert load_model(good).customers.hours_per_customer["big"] == 3.0
    with pytest.raises(InvalidInputError, match="no such file"):
        load_model(tmp_path / "none.toml")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=1, max_size=8),
       st.lists(st.floats(0, 100), min_size=1, max_size=8))
def test_travel_grows_with_area_and_spread(area, spread):
    m = load_model()
    a, s = np.sort(area), np.sort(spread)
    n = min(len(a), len(s))
    km = m.travel_km(np.full(n, 40.0), a[:n], s[:n])
    assert (np.diff(km) >= -1e-9).all() and (km >= 0).all()


def test_total_is_the_sum_of_parts():
    units = pd.DataFrame({PARTS["customers"]: [1.0, 2.0], PARTS["communities"]: [np.nan, 3.0]})
    out = add_total(units, load_model())
    assert out["workload"].tolist() == [1.0, 5.0]
    # the customer manager serves 65 % of customer hours and 70 % of community hours
    np.testing.assert_allclose(out["customer_manager_hours"], [0.65, 0.65 * 2 + 0.7 * 3])


def test_pipeline_sums_model_hours_into_units():
    """Every row's hours land in exactly one unit: unit totals equal the tables' totals."""
    from territory.boundaries import load_city
    from territory.pipeline import Inputs, UnitOptions, build_unit_table
    from territory.synth import generate_city

    areas = load_city("xiamen")
    d = generate_city(areas, n_customers=3000, seed=1)
    m = load_model()
    units, _ = build_unit_table(
        Inputs(areas, "adcode", d.customers, d.communities, d.stores, d.key_accounts),
        UnitOptions(7, None, 7))
    for name, col in PARTS.items():
        table = getattr(d, name)
        assert units[col].sum() == pytest.approx(m.row_hours(name, table).sum())
    assert units["workload"].sum() == pytest.approx(units[list(PARTS.values())].sum().sum())
