"""SYNTHETIC customer addresses and the gazetteer that matches them, for demos and benchmarks.

Everything here is synthetic, like :mod:`territory.synth` whose city it dresses: every row
carries ``synthetic = True``. Only the administrative names are real: provinces, cities and
districts from the boundary layer, streets (街道/镇) from jionlp's own gazetteer of China, so
the parser meets the names it would meet in a CRM. Which street a community is put in is
drawn at random.

* The gazetteer: every community (小区) with its district and street, buildings (栋) around
  a share of them (20-80 m from the community's point), and the key accounts. A share of its
  coordinates is given in GCJ-02, as an operator exporting from a web map would.
* The customers: each lives in a building of the community nearest to its synthetic
  location; the building's point is its true location (``true_lng``/``true_lat``, WGS84).
  Most have an address, written in one of :data:`VARIANTS` (full, without province and city,
  without district, a typo, an abbreviation, full-width digits and traditional characters, no
  building); a share has coordinates instead or as well, in GCJ-02 or BD-09.

Same city, same seed: same tables (``numpy.random.default_rng(seed)`` only).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from territory.crs import from_wgs84
from territory.geocode import _jionlp
from territory.synth import SyntheticCity

#: How customer addresses are written, with their shares.
VARIANTS: dict[str, float] = {
    "full": 0.40, "no_province": 0.15, "no_district": 0.10, "typo": 0.10, "abbreviated": 0.10,
    "fullwidth_traditional": 0.10, "no_building": 0.05,
}
ADDRESS_SHARE = 0.9  # customers with an address; the others have coordinates
COORDINATE_SHARE = 0.2  # customers with an address who also have coordinates
BUILDING_SHARE = 0.7  # communities whose buildings the gazetteer lists
#: Characters a typist swaps for the intended one (look-alikes and homophones).
_TYPOS = dict(zip("园苑花庭景华居山新家", "圆院化亭井化局三心佳", strict=True))
_GENERIC = ("花园", "家园", "雅居", "新村", "名苑", "公寓", "山庄", "华庭", "苑")
_PHASE = "〇一二三四五六七八九十"
_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@dataclass(frozen=True)
class SyntheticAddresses:
    """``customers``: customer_id, address, lng, lat, crs, true_lng, true_lat, true_entry,
    variant, synthetic. ``gazetteer``: address, kind, district, street, lng, lat, crs,
    synthetic (a table :class:`territory.geocode.Gazetteer` reads as is)."""

    customers: pd.DataFrame
    gazetteer: pd.DataFrame


@functools.cache
def _china() -> dict:
    return _jionlp().china_location_loader(detail=True)


def _streets(province: str, city: str, district: str) -> list[str]:
    """Real street (街道/镇) names of a district, from jionlp's gazetteer ([] if unknown)."""
    node = _china().get(province, {}).get(city, {}).get(district, {})
    return sorted(k for k in node if not k.startswith("_"))


def synthetic_addresses(city: SyntheticCity, boundaries: gpd.GeoDataFrame, *, seed: int = 0
                        ) -> SyntheticAddresses:
    """Addresses for ``city``'s customers and a gazetteer of its communities, buildings and
    key accounts; ``boundaries`` is the layer the city was generated on (columns name, city,
    province: the districts' names)."""
    rng = np.random.default_rng(seed)
    comm = city.communities.reset_index(drop=True)
    cx, cy = comm["lng"].to_numpy(), comm["lat"].to_numpy()
    admin = _admin(boundaries, cx, cy)
    comm["name"] = _plain_names(comm["name"], [a[2] for a in admin])
    streets = {key: _streets(*key) for key in set(admin)}
    street = [rng.choice(s) if (s := streets[a]) else "" for a in admin]
    # buildings: 2-7 per community, 20-80 m from its point
    n_b = rng.integers(2, 8, len(comm))
    owner = np.repeat(np.arange(len(comm)), n_b)
    number = np.concatenate([np.arange(1, k + 1) for k in n_b])
    dist = rng.uniform(20, 80, len(owner)) / 111_320.0
    ang = rng.uniform(0, 2 * np.pi, len(owner))
    bx = cx[owner] + dist * np.cos(ang) / np.cos(np.radians(cy[owner]))
    by = cy[owner] + dist * np.sin(ang)
    listed = rng.random(len(comm)) < BUILDING_SHARE
    gaz = _gazetteer(city, comm, admin, street, owner, number, bx, by, listed, boundaries, rng)
    # customers: a building of the nearest community
    cust = city.customers.reset_index(drop=True)
    tree = shapely.STRtree(shapely.points(cx, cy))
    home = tree.query_nearest(shapely.points(cust["lng"].to_numpy(), cust["lat"].to_numpy()),
                              all_matches=False)[1]
    first = np.concatenate([[0], np.cumsum(n_b)[:-1]])
    b = first[home] + (rng.random(len(cust)) * n_b[home]).astype(int)
    tx, ty = bx[b], by[b]
    has_address = rng.random(len(cust)) < ADDRESS_SHARE
    has_xy = ~has_address | (rng.random(len(cust)) < COORDINATE_SHARE)
    variant = np.where(has_address, rng.choice(list(VARIANTS), len(cust),
                                               p=list(VARIANTS.values())), None)
    text = [_write(v, admin[home[i]], street[home[i]], comm.at[home[i], "name"], number[b[i]],
                   rng) if v is not None else None for i, v in enumerate(variant)]
    crs = np.where(rng.random(len(cust)) < 0.5, "gcj02", "bd09")
    lng, lat = np.full(len(cust), np.nan), np.full(len(cust), np.nan)
    for name in ("gcj02", "bd09"):
        rows = has_xy & (crs == name)
        lng[rows], lat[rows] = from_wgs84(tx[rows], ty[rows], name)
    building_listed = listed[home]
    customers = pd.DataFrame({
        "customer_id": cust["customer_id"], "address": text, "lng": lng, "lat": lat,
        "crs": np.where(has_xy, crs, None), "true_lng": tx, "true_lat": ty,
        "true_entry": [f"{comm.at[h, 'name']}{number[k]}栋" if building_listed[i]
                       else comm.at[h, "name"] for i, (h, k) in enumerate(zip(home, b,
                                                                              strict=True))],
        "variant": variant, "synthetic": True,
    })
    return SyntheticAddresses(customers, gaz)


def _plain_names(names: pd.Series, district: list[str]) -> list[str]:
    """Names as people write them: without the generator's serial number, so that the same
    name recurs in other districts (as "锦绣苑" does); a repeat within one district becomes a
    later phase (二期, 三期, …) of it."""
    base = [re.sub(r"\d+$", "", str(n)) for n in names]
    seen = pd.Series(1, index=pd.MultiIndex.from_arrays([district, base])).groupby(level=[0, 1]
                                                                                  ).cumsum()
    return [b if k == 1 else f"{b}{_PHASE[k] if k < len(_PHASE) else k}期"
            for b, k in zip(base, seen.to_numpy(), strict=True)]


def _admin(boundaries: gpd.GeoDataFrame, x: np.ndarray, y: np.ndarray
           ) -> list[tuple[str, str, str]]:
    """(province, city, district) of each point: the district containing it, else nearest."""
    geoms = boundaries.geometry.values
    pts = shapely.points(x, y)
    pos = shapely.STRtree(geoms).query_nearest(pts, all_matches=False)[1]
    rows = boundaries[["province", "city", "name"]].astype(str).to_numpy()
    return [tuple(rows[p]) for p in pos]


def _gazetteer(city, comm, admin, street, owner, number, bx, by, listed, boundaries, rng
               ) -> pd.DataFrame:
    """Communities, the listed ones' buildings, key accounts; a third in GCJ-02."""
    names = comm["name"].astype(str).to_numpy()
    keep = listed[owner]
    ka = city.key_accounts.reset_index(drop=True)
    ka_admin = _admin(boundaries, ka["lng"].to_numpy(), ka["lat"].to_numpy())
    table = pd.DataFrame({
        "address": [*names, *[f"{names[o]}{k}栋" for o, k in zip(owner[keep], number[keep],
                                                                 strict=True)],
                    *ka["name"].astype(str)],
        "kind": ["community"] * len(comm) + ["building"] * int(keep.sum())
        + ["key_account"] * len(ka),
        "district": [a[2] for a in admin] + [admin[o][2] for o in owner[keep]]
        + [a[2] for a in ka_admin],
        "street": [*street, *[street[o] for o in owner[keep]], *[""] * len(ka)],
        "lng": [*comm["lng"], *bx[keep], *ka["lng"]],
        "lat": [*comm["lat"], *by[keep], *ka["lat"]],
    })
    gcj = rng.random(len(table)) < 1 / 3
    x, y = table["lng"].to_numpy(float, copy=True), table["lat"].to_numpy(float, copy=True)
    x[gcj], y[gcj] = from_wgs84(x[gcj], y[gcj], "gcj02")
    return table.assign(lng=x, lat=y, crs=np.where(gcj, "gcj02", "wgs84"), synthetic=True)


def _write(variant: str, admin: tuple[str, str, str], street: str, name: str, building: int,
           rng: np.random.Generator) -> str:
    """One customer's address in the given variant."""
    province, city, district = admin
    unit, room = rng.integers(1, 5), rng.integers(1, 33) * 100 + rng.integers(1, 5)
    detail = f"{building}栋{unit}单元{room}"
    if variant == "typo":
        spots = [i for i, ch in enumerate(name) if ch in _TYPOS]
        if spots:
            i = int(rng.choice(spots))
            name = name[:i] + _TYPOS[name[i]] + name[i + 1:]
    elif variant == "abbreviated":
        for g in _GENERIC:
            if g in name:
                name = name.replace(g, "", 1)
                break
        city = city.removesuffix("市")
    head = {"no_province": f"{city}{district}", "no_district": "",
            }.get(variant, f"{province}{city}{district}")
    text = f"{head}{street}{name}" + ("" if variant == "no_building" else detail)
    if variant == "fullwidth_traditional":
        text = _jionlp().sim2tra(text, mode="char").translate(_FULLWIDTH)
    return text
