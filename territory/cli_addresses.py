"""The demo's address step: synthetic addresses matched to the demo's gazetteer, by level."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import geopandas as gpd

from territory.cli_common import console, err_console, warn, write_csv
from territory.cli_output import stage
from territory.synth import SyntheticCity

#: Customers whose synthetic addresses the demo matches: the parse takes milliseconds an
#: address, so the demo shows the step on a sample rather than on every customer.
DEMO_SAMPLE = 5_000


def demo_addresses(areas: gpd.GeoDataFrame, data: SyntheticCity, out: Path, *, seed: int
                   ) -> None:
    """Write ``out/synthetic/addresses.csv`` and ``gazetteer.csv`` (a sample of customers),
    assign them through the gazetteer and print how many matched at each level."""
    import pandas as pd

    from territory.assign import Columns, assign_frame, open_index
    from territory.geocode import Gazetteer
    from territory.synth_addresses import synthetic_addresses

    n = min(DEMO_SAMPLE, len(data.customers))
    sample = replace(data, customers=data.customers.sample(n, random_state=seed))
    with stage(err_console, f"{n:,} synthetic addresses matched"):
        book = synthetic_addresses(sample, areas, seed=seed)
        write_csv(book.customers, out / "synthetic" / "addresses.csv")
        write_csv(book.gazetteer, out / "synthetic" / "gazetteer.csv")
        rows = book.customers[["customer_id", "address", "lng", "lat", "crs"]]
        assigned = assign_frame(open_index(out / "plan.gpkg"), rows,
                                columns=Columns(crs_column="crs", address_column="address"),
                                geocoder=Gazetteer(book.gazetteer), on_warning=warn)
        write_csv(assigned, out / "addresses_assigned.csv")
    from_address = assigned["address"].notna() & assigned["lng"].isna()
    levels = (assigned.loc[from_address, "match_level"].fillna("none").value_counts()
              .reindex(["building", "community", "street", "district", "none"], fill_value=0))
    status = assigned.loc[from_address, "status"].value_counts().to_dict()
    console.print(f"{int(from_address.sum()):,} customers by address → "
                  f"{out / 'addresses_assigned.csv'}: match levels "
                  f"{pd.Series(levels).to_dict()}; statuses {status}")
