"""Synthetic addresses: seeded, labelled, in every variant, matched back to their truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from territory.boundaries import load_city
from territory.crs import to_wgs84
from territory.geocode import Gazetteer
from territory.synth import generate_city
from territory.synth_addresses import VARIANTS, synthetic_addresses


@pytest.fixture(scope="module")
def city():
    areas = load_city("xiamen")
    return areas, generate_city(areas, n_customers=3000, seed=3)


def test_seeded_and_labelled(city):
    areas, data = city
    a = synthetic_addresses(data, areas, seed=5)
    b = synthetic_addresses(data, areas, seed=5)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    pd.testing.assert_frame_equal(a.gazetteer, b.gazetteer)
    assert a.customers["synthetic"].all() and a.gazetteer["synthetic"].all()
    c = a.customers
    assert len(c) == len(data.customers)
    # every customer has an address or coordinates; most have an address
    assert (c["address"].notna() | c["lng"].notna()).all()
    assert 0.85 < c["address"].notna().mean() < 0.95
    assert set(c["variant"].dropna()) == set(VARIANTS)
    assert set(c["crs"].dropna()) == {"gcj02", "bd09"}
    for crs in ("gcj02", "bd09"):  # coordinates are the truth, offset as a web map gives it
        rows = c[c["crs"] == crs]
        x, y = to_wgs84(rows["lng"].to_numpy(), rows["lat"].to_numpy(), crs)
        np.testing.assert_allclose(x, rows["true_lng"], atol=2e-5)
        np.testing.assert_allclose(y, rows["true_lat"], atol=2e-5)
    assert set(a.gazetteer["kind"]) == {"community", "building", "key_account"}


def test_clean_addresses_find_their_true_entry(city):
    areas, data = city
    book = synthetic_addresses(data, areas, seed=5)
    c = book.customers[book.customers["variant"].isin(["full", "no_province"])].head(300)
    res = Gazetteer(book.gazetteer).geocode(c["address"].tolist())
    placed = np.isfinite(res.lng)
    assert placed.mean() > 0.95
    # placed on the customer's own building or community, within a community's reach
    assert (res.entry[placed] == c["true_entry"].to_numpy()[placed]).mean() > 0.95
    d = np.hypot(res.lng[placed] - c["true_lng"].to_numpy()[placed],
                 res.lat[placed] - c["true_lat"].to_numpy()[placed])
    assert (d < 0.001).all()  # about 100 m: the building, or its community's point
