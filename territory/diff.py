"""What changed between two versions of a plan: units, customers, grids, balance.

Every customer who changes grid costs a relationship with a grid manager, so a redraw is
handed over as a diff: the units that changed grid (from → to, with what they hold), the
customers for the CRM (customer id, old grid, new grid, effective date), the grids created,
removed or reshaped, the balance before and after, and a map of the changed areas.
Both plans must stand on the same units (the same unit ids): a diff is unit by unit.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import date

import folium
import geopandas as gpd
import numpy as np
import pandas as pd

from territory.errors import InvalidInputError
from territory.maps import _base_map
from territory.metrics import level_summary, load_table
from territory.plan import Plan
from territory.stores import store_changes
from territory.units import GRID_SIZE_DEG, locate_points

LEVEL_COLS = ("sub_grid_id", "main_grid_id")
#: unit columns carried into the change table when present (besides the plan's measures)
HELD = ("customers", "subscribers", "households", "workload", "communities", "key_accounts")


@dataclass(frozen=True)
class PlanDiff:
    """The differences of ``after`` against ``before`` (see module docstring)."""

    before: Plan
    after: Plan
    #: one row per unit that changed sub-grid or main grid
    changes: pd.DataFrame
    #: one row per grid created, removed or reshaped, per level
    grids: pd.DataFrame
    #: per level and measure, max |deviation| and CV before and after
    balance: pd.DataFrame
    #: stores opened, moved or closed, and the main grids left without a store
    stores: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.changes.empty and self.grids.empty and self.stores.empty

    def customers(self, customers: pd.DataFrame, *, id_column: str = "customer_id",
                  effective: date | str | None = None) -> pd.DataFrame:
        """The points (WGS84 ``lng``/``lat``: customers, communities, key accounts) whose
        grid changes: a table a CRM loads.

        Each point is located in the units once (one owner per point); those in a changed
        unit get a row: id (as ``customer_id`` for customers, else the table's id column),
        old and new sub-grid and main grid, effective date.
        """
        if id_column not in customers.columns:
            raise InvalidInputError(f"customers: no column {id_column!r}; name the id column "
                                    f"(columns: {list(customers.columns)[:20]})")
        units = self.before.units
        pos = locate_points(units, customers["lng"].to_numpy(float),
                            customers["lat"].to_numpy(float))
        uid = pd.Series(np.where(pos >= 0, units.index.to_numpy()[np.maximum(pos, 0)], None))
        moved = uid.isin(self.changes["unit_id"]).to_numpy()
        ch = self.changes.set_index("unit_id")
        name = "customer_id" if id_column == "customer_id" else id_column
        out = pd.DataFrame({name: customers[id_column].to_numpy()[moved]})
        cols = ["from_sub_grid_id", "to_sub_grid_id", "from_main_grid_id", "to_main_grid_id"]
        for c in cols:
            out[c] = ch[c].reindex(uid[moved]).to_numpy()
        out["effective_date"] = str(effective or date.today().isoformat())
        return out


def diff_plans(before: Plan, after: Plan) -> PlanDiff:
    """Compare two plans over the same units."""
    a, b = before.units, after.units
    if not a.index.sort_values().equals(b.index.sort_values()):
        only = sorted(set(a.index) ^ set(b.index))[:5]
        raise InvalidInputError(
            f"the plans stand on different units (e.g. {only}); a diff compares two versions "
            "over the same units: import or rebalance from the same unit table")
    b = b.reindex(a.index)
    changed = np.zeros(len(a), dtype=bool)
    for c in LEVEL_COLS:
        changed |= (a[c].astype(str) != b[c].astype(str)).to_numpy()
    held = [c for c in dict.fromkeys([*before.measures, *HELD]) if c in a.columns]
    changes = pd.DataFrame({
        "unit_id": a.index[changed],
        "from_sub_grid_id": a["sub_grid_id"].to_numpy()[changed],
        "to_sub_grid_id": b["sub_grid_id"].to_numpy()[changed],
        "from_main_grid_id": a["main_grid_id"].to_numpy()[changed],
        "to_main_grid_id": b["main_grid_id"].to_numpy()[changed],
    })
    for c in held:
        changes[c] = a[c].to_numpy()[changed]
    return PlanDiff(before, after, changes, _grid_changes(before, after),
                    _balance(before, after), store_changes(before, after))


def _members(plan: Plan, col: str) -> pd.Series:
    return plan.units.groupby(col).apply(lambda d: frozenset(d.index))


def _grid_changes(before: Plan, after: Plan) -> pd.DataFrame:
    rows = []
    for level, col in (("main_grid", "main_grid_id"), ("sub_grid", "sub_grid_id")):
        ma, mb = _members(before, col), _members(after, col)
        ids = sorted(set(ma.index) | set(mb.index))
        touched = [g for g in ids if ma.get(g) != mb.get(g)]
        if not touched:
            continue
        area_a = _areas(before, col, touched)
        area_b = _areas(after, col, touched)
        for g in touched:
            status = ("created" if g not in ma.index else "removed" if g not in mb.index
                      else "reshaped")
            aa, ab = float(area_a.get(g, 0.0)), float(area_b.get(g, 0.0))
            rows.append({"level": level, "grid_id": g, "status": status,
                         "area_before_m2": aa, "area_after_m2": ab,
                         "area_change_m2": ab - aa,
                         "units_before": len(ma.get(g, ())), "units_after": len(mb.get(g, ()))})
    return pd.DataFrame(rows, columns=["level", "grid_id", "status", "area_before_m2",
                                       "area_after_m2", "area_change_m2", "units_before",
                                       "units_after"])


def _areas(plan: Plan, col: str, grids: list) -> pd.Series:
    """Area (m², local UTM zone) of the given grids, dissolved from their units only."""
    units = plan.units.loc[plan.units[col].isin(grids), [col, "geometry"]]
    g = units.dissolve(by=col, grid_size=GRID_SIZE_DEG)
    return pd.Series(g.to_crs(g.estimate_utm_crs()).area.to_numpy(), index=g.index)


def _balance(before: Plan, after: Plan) -> pd.DataFrame:
    """Balance figures from the loads alone (:func:`territory.metrics.load_table`)."""
    rows = []
    for level in ("main_grid", "sub_grid"):
        sa = level_summary(load_table(before, level), before.measures)
        sb = level_summary(load_table(after, level), before.measures)
        for m in before.measures:
            rows.append({"level": level, "measure": m,
                         "max_abs_deviation_before": sa[m]["max_abs_deviation"],
                         "max_abs_deviation_after": sb[m]["max_abs_deviation"],
                         "cv_before": sa[m]["cv"], "cv_after": sb[m]["cv"]})
    return pd.DataFrame(rows)


def changed_areas(d: PlanDiff) -> gpd.GeoDataFrame:
    """The changed units dissolved by (from, to) main and sub-grid: the diff's map layer."""
    units = d.before.units.loc[d.changes["unit_id"], ["geometry"]]
    frame = gpd.GeoDataFrame(d.changes.drop(columns="unit_id").reset_index(drop=True),
                             geometry=units.geometry.to_numpy(), crs=d.before.units.crs)
    keys = list(d.changes.columns[1:5])
    held = [c for c in frame.columns if c not in keys and c != "geometry"]
    agg = {c: "sum" for c in held}
    out = frame.assign(units=1).dissolve(by=keys, aggfunc={**agg, "units": "sum"})
    return out.reset_index()


def change_map(d: PlanDiff) -> folium.Map:
    """An offline map: the changed areas (from → to) beside the before and after lines."""
    layer = changed_areas(d)
    bounds = d.before.units.total_bounds
    m = _base_map(bounds, online_tiles=False)
    for plan, name, style in ((d.before, "before: main grids", {"color": "#888",
                                                                "dashArray": "6 4"}),
                              (d.after, "after: main grids", {"color": "#111"})):
        grids = plan.grids("main_grid")[["grid_id", "geometry"]]
        folium.GeoJson(grids.to_geo_dict(), name=name,
                       style_function=lambda f, s=style: {**s, "fill": False, "weight": 2},
                       ).add_to(m)
    if len(layer):
        props = layer.drop(columns="geometry").astype(str).map(html.escape)
        shown = gpd.GeoDataFrame(props, geometry=layer.geometry.values, crs=layer.crs)
        folium.GeoJson(
            shown.to_geo_dict(), name="changed areas",
            style_function=lambda f: {"fillColor": "#e6550d", "fillOpacity": 0.6,
                                      "color": "#a63603", "weight": 1},
            tooltip=folium.GeoJsonTooltip(fields=list(props.columns), sticky=True),
        ).add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    return m
