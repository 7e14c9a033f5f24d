"""Key accounts' footprints, and the units each one holds together.

A key account (a commercial building, an industrial park) is served by one grid: the units
its footprint (a circle of ``footprint_m`` around its site) spans must stay in one grid.
The plan's pipeline uses this for any key-account table with a ``footprint_m`` column; the
synthetic demo generator (:mod:`territory.synth`) makes such tables. Both use this module,
so the core does not depend on the demo generator.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from territory.crs import local_projected_crs
from territory.errors import InvalidInputError


def check_wgs84(frame: gpd.GeoDataFrame, param: str) -> None:
    """Refuse a frame that is not in EPSG:4326, naming ``param`` and the fix."""
    if frame.crs is None:
        raise InvalidInputError(
            f"{param} has no CRS; if its coordinates are WGS84 longitude/latitude, "
            f"call {param}.set_crs(4326), otherwise {param}.to_crs(4326)"
        )
    if not pyproj.CRS(frame.crs).equals(pyproj.CRS(4326), ignore_axis_order=True):
        raise InvalidInputError(
            f"{param} must be in EPSG:4326 (WGS84), got {frame.crs.to_string()}; "
            f"reproject with {param}.to_crs(4326) (GCJ-02/BD-09 data must be converted first)"
        )


def key_account_footprints(key_accounts: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Circles of radius ``footprint_m`` around each key account, in EPSG:4326.

    The buffer is computed in the UTM zone of the accounts (metres, scale error at most
    about 0.1 % within a zone) because a buffer in degrees would be an ellipse of the wrong
    size. The circles are not clipped; the caller clips them to its own boundaries.

    Raises:
        InvalidInputError: ``key_accounts`` lacks ``footprint_m``, has negative radii or points
            that are not in EPSG:4326.
    """
    if not isinstance(key_accounts, gpd.GeoDataFrame):
        raise InvalidInputError(
            "key_accounts must be a GeoDataFrame (the key_accounts table of generate_city), "
            f"got {type(key_accounts).__name__}"
        )
    if "footprint_m" not in key_accounts.columns:
        raise InvalidInputError(
            "key_accounts has no 'footprint_m' column; add the footprint radius in metres"
        )
    check_wgs84(key_accounts, "key_accounts")
    radius = key_accounts["footprint_m"].to_numpy(dtype=float)
    if np.any(~np.isfinite(radius)) or np.any(radius < 0):
        raise InvalidInputError(
            "key_accounts.footprint_m must be finite and >= 0 metres; fix or drop those rows"
        )
    out = key_accounts.copy()
    if len(out) == 0:
        return out
    xy = shapely.get_coordinates(out.geometry.values)
    utm = local_projected_crs(xy[:, 0], xy[:, 1])
    circles = out.geometry.to_crs(utm).buffer(radius, quad_segs=32)
    return out.set_geometry(circles.to_crs(4326))


def key_account_groups(units: gpd.GeoDataFrame, key_accounts: pd.DataFrame | None) -> list[list]:
    """Units a key account's footprint spans (WGS84 ``lng``/``lat`` and ``footprint_m``
    columns): they must stay in one grid. Accounts spanning one unit give no group."""
    if key_accounts is None or "footprint_m" not in key_accounts:
        return []
    ka = gpd.GeoDataFrame(
        key_accounts, geometry=gpd.points_from_xy(key_accounts["lng"], key_accounts["lat"]),
        crs="EPSG:4326",
    )
    foot = key_account_footprints(ka)
    hits = gpd.sjoin(units[["geometry"]], foot[["geometry"]], predicate="intersects")
    groups = hits.groupby("index_right").apply(lambda d: sorted(d.index.unique()))
    return [g for g in groups if len(g) > 1]


def split_heavy_groups(units: pd.DataFrame, groups: list[list],
                       caps: dict[str, float]) -> tuple[list[list], list[dict]]:
    """The groups whose load fits ``caps`` (measure -> most one group may hold), and a
    report of the others (``units``, ``measure``, ``load``, ``cap``), which are not kept
    together: an account heavier than a grid may hold cannot be in one grid of a balanced
    plan (the demo at 2 000 000 customers: an industrial park of 500 m radius spans ~7 500
    residential subscribers, more than two main grids hold)."""
    kept, released = [], []
    for grp in groups:
        load = units.loc[grp, list(caps)].sum()
        over = [m for m in caps if load[m] > caps[m]]
        if over:
            m = over[0]
            released.append({"units": [str(u) for u in grp], "measure": m,
                             "load": float(load[m]), "cap": float(caps[m])})
        else:
            kept.append(grp)
    return kept, released
