"""A plan's stores (owned channels) and the edits that open, move and close them.

A plan made with a stores table keeps the stores it was made with in ``params["stores"]``:
one record per store (id, name, WGS84 position, the unit and main grid holding it, whether
it is open, and whether its main grid was centred on it, ``territory plan
--stores-as-centres``). The units' ``stores`` column counts the open stores in each unit, so
the per-grid reports count them, and :func:`open_stores` is the table the field maps and
reports draw (:mod:`territory.cli_maps`, :mod:`territory.cli_report`).

A store edit is a new version (author, message, parent) like every edit of
:mod:`territory.edits`; it changes no grid. Closing (or moving away) the store a main grid
is centred on leaves the grid with its units and flags them ``without a store``: the grid
is still valid, but nobody serves it from inside until a store opens or the planner
redraws (``territory rebalance``, ``edit merge``); :func:`store_changes` lists what changed
for the diff.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from territory.crs import normalize_crs, to_wgs84
from territory.errors import InvalidInputError
from territory.plan import Plan
from territory.units import locate_points

#: the fields of a store record in ``params["stores"]``
FIELDS = ("store_id", "name", "lng", "lat", "unit_id", "main_grid_id", "open", "centre")
WITHOUT_STORE = "without a store"


def store_records(units: pd.DataFrame, stores: pd.DataFrame, *, centred: bool) -> list[dict]:
    """The records of a stores table (WGS84 ``lng``/``lat``, ``store_id``, ``name`` when
    present) over a plan's units; stores outside the units are left out (they are counted
    outside by the aggregation report)."""
    pos = locate_points(units, stores["lng"].to_numpy(float), stores["lat"].to_numpy(float))
    ids = stores["store_id"].astype(str) if "store_id" in stores else \
        pd.Series([f"S{i + 1:04d}" for i in range(len(stores))], index=stores.index)
    names = stores["name"].astype(str) if "name" in stores else ids
    out = []
    for i in np.flatnonzero(pos >= 0):
        uid = units.index[pos[i]]
        out.append({"store_id": ids.iloc[i], "name": names.iloc[i],
                    "lng": float(stores["lng"].iloc[i]), "lat": float(stores["lat"].iloc[i]),
                    "unit_id": str(uid), "main_grid_id": str(units.at[uid, "main_grid_id"]),
                    "open": True, "centre": centred})
    return out


def registry(plan: Plan) -> pd.DataFrame:
    """The plan's store records, one row per store (none: an empty table)."""
    return pd.DataFrame(plan.params.get("stores") or [], columns=list(FIELDS))


def open_stores(plan: Plan) -> pd.DataFrame | None:
    """The open stores as a point table (``store_id``, ``name``, WGS84 ``lng``/``lat``), or
    None when the plan keeps no stores (a map or report then takes a stores file)."""
    if "stores" not in plan.params:
        return None
    reg = registry(plan)
    return reg.loc[reg["open"].astype(bool), ["store_id", "name", "lng", "lat"]] \
        .reset_index(drop=True)


def _locate(plan: Plan, store_id: str, lng: float, lat: float, crs: str) -> tuple[float,
                                                                                   float, str]:
    """The WGS84 position and unit of a store given in ``crs``; refused outside the plan."""
    if not (math.isfinite(lng) and math.isfinite(lat)):
        raise InvalidInputError(f"store {store_id}: give finite coordinates `lng` and `lat`")
    x, y = to_wgs84(np.array([lng]), np.array([lat]), normalize_crs(crs))
    pos = locate_points(plan.units, x, y)
    if pos[0] < 0:
        raise InvalidInputError(
            f"store {store_id} at ({lng}, {lat}) in {crs} lies outside the plan's units; "
            "check the coordinates, their order (`lng` first) and their system (`crs`)")
    return float(x[0]), float(y[0]), str(plan.units.index[pos[0]])


def _derive(plan: Plan, reg: pd.DataFrame, *, author: str, message: str,
            without: dict[str, str] | None = None) -> Plan:
    """The next version with the registry ``reg``: the units' ``stores`` counts follow the
    open stores, and the main grids in ``without`` (grid -> why) are flagged."""
    units = plan.units.copy()
    opened = reg[reg["open"].astype(bool)]
    units["stores"] = opened.groupby("unit_id").size().reindex(units.index.astype(str)) \
        .fillna(0).to_numpy(dtype=float)
    for grid, why in (without or {}).items():
        rows = units["main_grid_id"] == grid
        if "flag" not in units:
            units["flag"] = ""
        old = units.loc[rows, "flag"].fillna("")
        units.loc[rows, "flag"] = old.where(old == "", old + "; ") + f"{WITHOUT_STORE} ({why})"
    records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
               for r in reg.to_dict(orient="records")]
    return plan.derive(units, author=author, message=message, stores=records)


def _row(reg: pd.DataFrame, store_id: str) -> int:
    hit = np.flatnonzero(reg["store_id"].astype(str).to_numpy() == str(store_id))
    if not len(hit):
        known = reg["store_id"].astype(str).tolist()
        raise InvalidInputError(
            f"store {store_id!r} is not among the plan's stores ({known[:10]}"
            f"{' …' if len(known) > 10 else ''}); add it first (`territory edit store add`)")
    return int(hit[0])


def _left_without(reg: pd.DataFrame, i: int) -> str | None:
    """The main grid that has no open centre store once store ``i`` leaves it (None when
    the store was no centre, or another centre store remains in its grid)."""
    if not bool(reg.at[i, "centre"]):
        return None
    grid = reg.at[i, "main_grid_id"]
    others = reg.drop(index=i)
    if (others["open"].astype(bool) & others["centre"].astype(bool)
            & (others["main_grid_id"] == grid)).any():
        return None
    return str(grid)


def add_store(plan: Plan, store_id: str, lng: float, lat: float, *, crs: str,
              name: str = "", author: str = "", message: str = "") -> Plan:
    """A new store at (``lng``, ``lat``) in ``crs``; refused for an id already used."""
    reg = registry(plan)
    if str(store_id) in set(reg["store_id"].astype(str)):
        raise InvalidInputError(f"store {store_id!r} is already in the plan; move it "
                                "(`territory edit store move`) or choose a new id")
    x, y, uid = _locate(plan, store_id, lng, lat, crs)
    grid = str(plan.units.at[uid, "main_grid_id"])
    row = {"store_id": str(store_id), "name": name or str(store_id), "lng": x, "lat": y,
           "unit_id": uid, "main_grid_id": grid, "open": True, "centre": False}
    reg = pd.concat([reg, pd.DataFrame([row])], ignore_index=True)
    return _derive(plan, reg, author=author,
                   message=message or f"open store {store_id} in {grid}")


def move_store(plan: Plan, store_id: str, lng: float, lat: float, *, crs: str,
               author: str = "", message: str = "") -> Plan:
    """Move a store; a centre store moved out of its main grid leaves that grid flagged
    ``without a store`` (its units stay)."""
    reg = registry(plan)
    i = _row(reg, store_id)
    x, y, uid = _locate(plan, store_id, lng, lat, crs)
    grid = str(plan.units.at[uid, "main_grid_id"])
    old = str(reg.at[i, "main_grid_id"])
    without = {}
    if grid != old and (g := _left_without(reg, i)):
        without[g] = f"store {store_id} moved to {grid}"
        reg.at[i, "centre"] = False  # the grid it now stands in was not drawn around it
    reg.loc[i, ["lng", "lat", "unit_id", "main_grid_id", "open"]] = [x, y, uid, grid, True]
    return _derive(plan, reg, author=author, without=without,
                   message=message or f"move store {store_id} from {old} to {grid}")


def close_store(plan: Plan, store_id: str, *, author: str = "", message: str = "") -> Plan:
    """Close a store. When its main grid was centred on it (and on no other open store), the
    grid keeps its units and is flagged ``without a store``: the message says so."""
    reg = registry(plan)
    i = _row(reg, store_id)
    if not bool(reg.at[i, "open"]):
        raise InvalidInputError(f"store {store_id!r} is already closed")
    grid = _left_without(reg, i)
    reg.at[i, "open"] = False
    what = f"close store {store_id}"
    if grid:
        what += (f"; main grid {grid} was centred on it: it keeps its units and is flagged "
                 f"'{WITHOUT_STORE}' until a store opens in it or it is redrawn")
    return _derive(plan, reg, author=author, message=message or what,
                   without={grid: f"store {store_id} closed"} if grid else None)


def store_changes(before: Plan, after: Plan) -> pd.DataFrame:
    """Stores opened, moved or closed from ``before`` to ``after``, with the main grid each
    was and is in and the main grids left without a store."""
    a = registry(before).set_index("store_id")
    b = registry(after).set_index("store_id")
    flagged = _without(after) - _without(before)
    rows = []
    for sid in sorted(set(a.index) | set(b.index), key=str):
        was = a.loc[sid] if sid in a.index else None
        now = b.loc[sid] if sid in b.index else None
        was_open = was is not None and bool(was["open"])
        is_open = now is not None and bool(now["open"])
        if was_open and not is_open:
            change = "closed"
        elif is_open and not was_open:
            change = "opened"
        elif is_open and (was["lng"], was["lat"]) != (now["lng"], now["lat"]):
            change = "moved"
        else:
            continue
        src = None if was is None else was["main_grid_id"]
        dst = None if now is None or not is_open else now["main_grid_id"]
        rows.append({"store_id": sid, "change": change, "from_main_grid_id": src,
                     "to_main_grid_id": dst,
                     "grid_left_without_store": src if src in flagged else None})
    return pd.DataFrame(rows, columns=["store_id", "change", "from_main_grid_id",
                                       "to_main_grid_id", "grid_left_without_store"])


def _without(plan: Plan) -> set[str]:
    """The main grids flagged without a store."""
    if "flag" not in plan.units:
        return set()
    rows = plan.units["flag"].fillna("").str.contains(WITHOUT_STORE, regex=False)
    return set(plan.units.loc[rows, "main_grid_id"].astype(str))


def with_plan_stores(plan: Plan, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``tables`` with the plan's open stores as ``stores`` when the plan keeps them: after a
    store edit a stores file is out of date and the plan is not (maps and reports draw
    these)."""
    stores = open_stores(plan)
    return tables if stores is None else {**tables, "stores": stores}
