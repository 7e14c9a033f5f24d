"""Address → grid against the synthetic truth: precision, recall, match levels, speed.

The city: Xiamen island (思明区, 湖里区) and the four districts across the water, synthetic
customers (:mod:`territory.synth`) and their synthetic addresses and gazetteer
(:mod:`territory.synth_addresses`: real district and street names, invented communities,
typos, abbreviations, missing parts, full-width and traditional text). A plan is built on
them once (``bench/out/addresses_plan.gpkg``). Each customer's truth is the sub-grid of its
true location (its building). Customers with an address and no coordinates are assigned
through the gazetteer (``territory.assign.assign_frame``), at several ``min_score``:

* precision: of the customers placed in a sub-grid, the share placed in the true one;
* recall: of all customers with an address only, the share placed in the true sub-grid;
* review: the share left ``needs_review`` (never placed), not_geocoded likewise.

    python bench/addresses.py [--customers 20000] [--scores 75 70 80 90] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from territory.assign import Columns, assign_frame, open_index
from territory.geocode import Gazetteer
from territory.synth_addresses import synthetic_addresses

OUT = Path(__file__).parent / "out"


def build(customers: int, seed: int):
    from territory.boundaries import load_city
    from territory.hierarchy import HierarchySpec
    from territory.pipeline import Inputs, UnitOptions, run
    from territory.synth import generate_city

    areas = load_city("xiamen")
    city = generate_city(areas, n_customers=customers, seed=seed)
    path = OUT / f"addresses_plan_{customers}_{seed}.gpkg"
    if not path.exists():
        result = run(Inputs(areas, "adcode", city.customers),
                     UnitOptions(resolution=9, target_per_unit=40, min_resolution=7),
                     HierarchySpec(measures={"subscribers": 0.5}, n_main=12, n_sub=3,
                                   time_limit_main=10, time_limit_sub=2, workers=1))
        result.plan.save(path)
    return areas, city, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--scores", type=float, nargs="+", default=[75, 70, 80, 90],
                    help="min_score values; the first also gets a table by address variant")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("territory").setLevel(logging.ERROR)
    areas, city, plan_path = build(args.customers, args.seed)
    index = open_index(plan_path)
    book = synthetic_addresses(city, areas, seed=args.seed)
    cust = book.customers
    truth = np.append(index.sub_grid_ids, None)[index.locate(cust["true_lng"].to_numpy(),
                                                             cust["true_lat"].to_numpy())]
    by_address = (cust["address"].notna() & cust["lng"].isna()).to_numpy()
    print(f"{len(cust):,} synthetic customers, {by_address.sum():,} with an address only; "
          f"gazetteer {len(book.gazetteer):,} entries")
    rows = cust[["customer_id", "address", "lng", "lat", "crs"]]
    for score in args.scores:
        t = time.perf_counter()
        gaz = Gazetteer(book.gazetteer, min_score=score)
        out = assign_frame(index, rows, geocoder=gaz,
                           columns=Columns(crs_column="crs", address_column="address"))
        secs = time.perf_counter() - t
        got = out["sub_grid_id"].to_numpy(dtype=object)
        placed = by_address & (out["status"] == "ok").to_numpy()
        right = placed & (got == truth)
        given = ~by_address & cust["lng"].notna().to_numpy()
        status = out.loc[by_address, "status"].value_counts(normalize=True)
        levels = out.loc[by_address, "match_level"].fillna("none").value_counts().to_dict()
        print(f"min_score {score:>4.0f}: precision {right.sum() / max(placed.sum(), 1):.4f}  "
              f"recall {right.sum() / by_address.sum():.4f}  "
              f"needs_review {status.get('needs_review', 0):.4f}  "
              f"not_geocoded {status.get('not_geocoded', 0):.4f}  levels {levels}  "
              f"coordinates (GCJ-02/BD-09) right "
              f"{(got[given] == truth[given]).mean():.4f}  "
              f"{secs:.1f} s ({by_address.sum() / secs:,.0f} addresses/s"
              + (", cold: loading jionlp, parsing)" if score == args.scores[0] else
                 ", parses cached by the first run)"))
        if score == args.scores[0]:
            v = pd.DataFrame({"variant": cust["variant"], "placed": placed,
                              "right": right})[by_address]
            print(v.groupby("variant")[["placed", "right"]].mean().round(4).to_string())


if __name__ == "__main__":
    main()
