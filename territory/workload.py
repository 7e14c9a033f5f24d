"""The workload model: the monthly field hours customers, communities and key accounts ask.

The figures live in a TOML file; the defaults ship as ``territory/assets/workload.toml``,
which documents every figure. :func:`load_model` reads it (or the planner's copy), and:

* :meth:`WorkloadModel.row_hours` gives each row of a point table its monthly hours (by value
  tier for customers, by households and entry threshold for communities, by type and size
  for key accounts). :func:`annotate` puts them in a ``workload_hours`` column, which the
  pipeline sums into units as ``workload_customers`` / ``workload_communities`` /
  ``workload_key_accounts``; :func:`add_total` adds their sum, the ``workload`` measure that
  plans balance like any other.
* Travel is a property of a whole grid (its area and the spread of its customers), not of a
  unit, so it is never summed: :func:`grid_stats` measures the grids of a plan and
  :func:`role_workload` gives each grid and role its hours, travel and total.

Example
-------
>>> model = load_model()
>>> float(model.customers.hours_per_customer["big"])
1.5
"""

from __future__ import annotations

import logging
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from territory.crs import local_projected_crs
from territory.errors import InvalidInputError

log = logging.getLogger(__name__)

#: the point tables that carry workload, and the unit column their hours are summed into
PARTS = {"customers": "workload_customers", "communities": "workload_communities",
         "key_accounts": "workload_key_accounts"}
#: the unit column of the total (the balance measure)
TOTAL = "workload"
#: the unit column of a sub-grid team member's (customer manager's) hours, which sizes
#: sub-grids when they follow the staff (:func:`beat_size`)
BEAT = "customer_manager_hours"
#: the column :func:`annotate` writes on each point table
ROW_COLUMN = "workload_hours"
ROLES = ("grid_manager", "customer_manager", "key_account_manager", "installer")
LEVELS = ("main_grid", "sub_grid")
DEFAULT_PATH = files("territory") / "assets" / "workload.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerHours(_Section):
    tier_column: str = "segment"
    missing_tier: str = "ordinary"
    hours_column: str = ""
    hours_per_customer: dict[str, float]

    @model_validator(mode="after")
    def _tier_known(self) -> CustomerHours:
        if self.missing_tier not in self.hours_per_customer:
            raise ValueError(f"missing_tier {self.missing_tier!r} is not one of the tiers "
                             f"{sorted(self.hours_per_customer)}")
        return self


class CommunityHours(_Section):
    hours_per_community: float = Field(ge=0)
    hours_per_100_households: float = Field(ge=0)
    missing_threshold: int = Field(ge=1, le=5)
    threshold_factor: list[float] = Field(min_length=5, max_length=5)


class KeyAccountHours(_Section):
    size_column: str = "employees"
    fallback_size_column: str = "subscribers"
    type_column: str = "kind"
    default_type: str
    hours_per_account: dict[str, float]
    hours_per_1000_employees: dict[str, float]

    @model_validator(mode="after")
    def _types_match(self) -> KeyAccountHours:
        if set(self.hours_per_account) != set(self.hours_per_1000_employees):
            raise ValueError("hours_per_account and hours_per_1000_employees must name the "
                             "same key-account types")
        if self.default_type not in self.hours_per_account:
            raise ValueError(f"default_type {self.default_type!r} is not one of "
                             f"{sorted(self.hours_per_account)}")
        return self


class Travel(_Section):
    visit_hours: float = Field(gt=0)
    stops_per_trip: float = Field(gt=0)
    tour_constant: float = Field(ge=0)
    speed_kmh: float = Field(gt=0)


class Role(_Section):
    level: Literal["main_grid", "sub_grid"]
    fixed_hours: float = Field(ge=0)
    min_per_grid: int = Field(ge=0)
    max_per_grid: int = Field(ge=0)
    travels: bool
    shares: dict[Literal["customers", "communities", "key_accounts"], float]

    @model_validator(mode="after")
    def _bounds(self) -> Role:
        if self.min_per_grid > self.max_per_grid:
            raise ValueError(f"min_per_grid {self.min_per_grid} exceeds max_per_grid "
                             f"{self.max_per_grid}")
        return self


class Staff(_Section):
    monthly_hours: float = Field(gt=0)
    beat_share: float = Field(gt=0, le=1)


class WorkloadModel(_Section):
    """The parsed, validated TOML (see the shipped file for what every figure means)."""

    staff: Staff
    customers: CustomerHours
    communities: CommunityHours
    key_accounts: KeyAccountHours
    travel: Travel
    roles: dict[Literal["grid_manager", "customer_manager", "key_account_manager",
                        "installer"], Role]

    @model_validator(mode="after")
    def _roles(self) -> WorkloadModel:
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            raise ValueError(f"roles {missing} are missing; define all of {list(ROLES)}")
        gm = self.roles["grid_manager"]
        if gm.level != "main_grid" or gm.min_per_grid != 1 or gm.max_per_grid != 1:
            raise ValueError("roles.grid_manager must be level main_grid with exactly one "
                             "per grid (min_per_grid = max_per_grid = 1)")
        for kind in PARTS:
            total = sum(r.shares.get(kind, 0.0) for r in self.roles.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"the roles' shares of {kind} add up to {total:g}; make "
                                 "them add up to 1 so that every hour is served")
        return self

    # -- hours per row ----------------------------------------------------------------
    def row_hours(self, table: str, df: pd.DataFrame) -> np.ndarray:
        """Monthly hours of every row of point table ``table`` (one of :data:`PARTS`)."""
        if table == "customers":
            return self._customer_hours(df)
        if table == "communities":
            return self._community_hours(df)
        if table == "key_accounts":
            return self._key_account_hours(df)
        raise InvalidInputError(f"no workload for table {table!r}; choose one of {list(PARTS)}")

    def _customer_hours(self, df: pd.DataFrame) -> np.ndarray:
        c = self.customers
        if c.hours_column:
            return _numeric(df, c.hours_column, "customers", minimum=0.0)
        rates = c.hours_per_customer
        if c.tier_column not in df:
            log.info("customers have no %r column: every customer counted as %r",
                     c.tier_column, c.missing_tier)
            return np.full(len(df), rates[c.missing_tier], dtype=float)
        tiers = df[c.tier_column].fillna(c.missing_tier).astype(str)
        unknown = sorted(set(tiers) - set(rates))
        if unknown:  # counted, not refused: one odd value must not stop a city's plan
            log.warning("customers: column %r has tiers %s the workload model does not know; "
                        "they are counted as %r (add them to [customers.hours_per_customer])",
                        c.tier_column, unknown[:10], c.missing_tier)
            tiers = tiers.where(tiers.isin(list(rates)), c.missing_tier)
        return tiers.map(rates).to_numpy(dtype=float)

    def _community_hours(self, df: pd.DataFrame) -> np.ndarray:
        c = self.communities
        households = _numeric(df, "households", "communities", minimum=0.0)
        if "entry_threshold" in df:
            thr = _numeric(df, "entry_threshold", "communities", minimum=1.0, maximum=5.0)
        else:
            thr = np.full(len(df), float(c.missing_threshold))
        factor = np.asarray(c.threshold_factor)[np.round(thr).astype(int) - 1]
        return c.hours_per_community + c.hours_per_100_households * households / 100 * factor

    def _key_account_hours(self, df: pd.DataFrame) -> np.ndarray:
        k = self.key_accounts
        col = k.size_column if k.size_column in df else k.fallback_size_column
        size = _numeric(df, col, "key_accounts", minimum=0.0)
        if k.type_column in df:
            types = df[k.type_column].fillna(k.default_type).astype(str)
            unknown = sorted(set(types) - set(k.hours_per_account))
            if unknown:  # counted, not refused, as for customer tiers
                log.warning("key_accounts: column %r has types %s the workload model does not "
                            "know; they are counted as %r (add them to "
                            "[key_accounts.hours_per_account] and hours_per_1000_employees)",
                            k.type_column, unknown[:10], k.default_type)
                types = types.where(types.isin(list(k.hours_per_account)), k.default_type)
        else:
            types = pd.Series(k.default_type, index=df.index)
        base = types.map(k.hours_per_account).to_numpy(dtype=float)
        per = types.map(k.hours_per_1000_employees).to_numpy(dtype=float)
        return base + per * size / 1000

    # -- travel ---------------------------------------------------------------------------
    def travel_km(self, hours: np.ndarray, area_km2: np.ndarray, spread_km: np.ndarray
                  ) -> np.ndarray:
        """Monthly km driven to serve ``hours`` of visits in grids of that area and spread."""
        t = self.travel
        visits = np.asarray(hours, dtype=float) / t.visit_hours
        trips = np.ceil(visits / t.stops_per_trip)
        return trips * 2 * np.asarray(spread_km) + t.tour_constant * np.sqrt(
            visits * np.asarray(area_km2))


def load_model(path: str | Path | None = None) -> WorkloadModel:
    """The model in ``path`` (a TOML file), or the shipped defaults when ``path`` is None."""
    source = DEFAULT_PATH if path is None else Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"--workload {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"--workload {source}: not valid TOML ({exc})") from None
    try:
        return WorkloadModel.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}"
                         for e in exc.errors()[:5])
        raise InvalidInputError(f"workload model {source}: {errs}") from None


def _numeric(df: pd.DataFrame, column: str, table: str, *, minimum: float,
             maximum: float | None = None) -> np.ndarray:
    """A numeric column; missing, non-numeric or out-of-range values name the rows."""
    if column not in df:
        raise InvalidInputError(f"{table}: the workload model needs column {column!r} "
                                f"(columns: {list(df.columns)[:20]})")
    v = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(v) | (v < minimum) | (v > (np.inf if maximum is None else maximum))
    if bad.any():
        rows = df.index[bad].tolist()[:10]
        rng = f"{minimum:g}..{maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise InvalidInputError(f"{table}: column {column!r} must be a number {rng}; rows "
                                f"{rows} are not ({int(bad.sum())} rows in all)")
    return v


def annotate(tables: dict[str, pd.DataFrame], model: WorkloadModel) -> dict[str, pd.DataFrame]:
    """Copies of the point tables with a ``workload_hours`` column where the model has one."""
    return {name: t.assign(**{ROW_COLUMN: model.row_hours(name, t)}) if name in PARTS else t
            for name, t in tables.items()}


def add_total(units: pd.DataFrame, model: WorkloadModel) -> pd.DataFrame:
    """``units`` with ``workload`` = the sum of the workload parts present (0 if none) and
    ``customer_manager_hours``, the sub-grid team member's share of them."""
    parts = {k: units[c].fillna(0) if c in units else pd.Series(0.0, index=units.index)
             for k, c in PARTS.items()}
    shares = model.roles["customer_manager"].shares
    return units.assign(**{TOTAL: sum(parts.values()),
                           BEAT: sum(shares.get(k, 0.0) * v for k, v in parts.items())})


def beat_size(model: WorkloadModel, staff_hours: float) -> float:
    """Customer-manager hours per sub-grid so that a sub-grid is one person's month:
    ``staff_hours`` less the role's fixed hours, times ``beat_share`` (the rest is travel)."""
    if staff_hours <= 0:
        raise InvalidInputError(f"staff hours {staff_hours}: give a person's monthly hours, "
                                "e.g. 160")
    size = (staff_hours - model.roles["customer_manager"].fixed_hours) * model.staff.beat_share
    if size <= 0:
        raise InvalidInputError(f"staff hours {staff_hours} leave no time for visits after "
                                "the customer manager's fixed hours; give more")
    return size


def plan_crs(units: gpd.GeoDataFrame) -> pyproj.CRS:
    """The local UTM zone of a plan's units (EPSG:4326), where distances are measured."""
    b = units.total_bounds
    return local_projected_crs([b[0], b[2]], [b[1], b[3]])


def grid_stats(units: gpd.GeoDataFrame, level: str, crs: pyproj.CRS | None = None
               ) -> pd.DataFrame:
    """Per grid of ``level``: workload parts (hours), area (km²), customer spread (km) and
    centre (``centre_x``/``centre_y``, metres in ``crs``).

    The centre is the customer-weighted mean of the units' centroids (units weighted equally
    where a grid has no customers) and the spread the weighted root-mean-square distance from
    it, measured in ``crs`` (default: the plan's local UTM zone).
    """
    col = f"{level}_id"
    proj = units.to_crs(crs or plan_crs(units))
    c = proj.geometry.centroid
    w = units["customers"].to_numpy(float) if "customers" in units else np.ones(len(units))
    df = pd.DataFrame({"grid_id": units[col].to_numpy(), "x": c.x.to_numpy(),
                       "y": c.y.to_numpy(), "w": w, "area": proj.geometry.area.to_numpy()})
    for kind, part in PARTS.items():
        df[kind] = units[part].fillna(0).to_numpy(float) if part in units else 0.0
    df["w"] = df["w"].where(df.groupby("grid_id")["w"].transform("sum") > 0, 1.0)
    g = df.groupby("grid_id", sort=True)
    sw = g["w"].transform("sum")
    mx = (df["x"] * df["w"]).groupby(df["grid_id"]).transform("sum") / sw
    my = (df["y"] * df["w"]).groupby(df["grid_id"]).transform("sum") / sw
    d2 = ((df["x"] - mx) ** 2 + (df["y"] - my) ** 2) * df["w"]
    out = pd.DataFrame({
        "area_km2": g["area"].sum() / 1e6,
        "spread_km": np.sqrt(d2.groupby(df["grid_id"]).sum() / g["w"].sum()) / 1000,
        "centre_x": mx.groupby(df["grid_id"]).first(),
        "centre_y": my.groupby(df["grid_id"]).first(),
        **{k: g[k].sum() for k in PARTS},
    })
    if level == "sub_grid":
        out["main_grid_id"] = units.groupby("sub_grid_id")["main_grid_id"].first()
    out["branch_id"] = units.groupby(col)["branch_id"].first().astype(str)
    out.index.name = "grid_id"
    return out


def role_workload(units: gpd.GeoDataFrame, model: WorkloadModel,
                  crs: pyproj.CRS | None = None) -> pd.DataFrame:
    """Monthly hours of every (role, grid) of the plan in ``units``.

    Columns: ``role``, ``level``, ``grid_id``, ``main_grid_id``, ``branch_id``,
    ``hours`` (the role's share of the grid's customer, community and key-account hours plus
    its fixed hours), ``travel_km``, ``travel_hours`` (zero for roles that do not travel),
    ``workload_hours`` (their sum: what the role's staff in the grid share) and the grid's
    ``centre_x``/``centre_y`` in ``crs`` (default: the plan's local UTM zone).
    """
    crs = crs or plan_crs(units)
    stats = {lv: grid_stats(units, lv, crs) for lv in LEVELS}
    frames = []
    for name, role in model.roles.items():
        s = stats[role.level]
        hours = role.fixed_hours + sum(role.shares.get(k, 0.0) * s[k] for k in PARTS)
        km = (model.travel_km((hours - role.fixed_hours).to_numpy(), s["area_km2"].to_numpy(),
                              s["spread_km"].to_numpy())
              if role.travels else np.zeros(len(s)))
        frames.append(pd.DataFrame({
            "role": name, "level": role.level, "grid_id": s.index,
            "main_grid_id": s["main_grid_id"] if role.level == "sub_grid" else s.index,
            "branch_id": s["branch_id"], "hours": hours.to_numpy(), "travel_km": km,
            "travel_hours": km / model.travel.speed_kmh,
            "centre_x": s["centre_x"], "centre_y": s["centre_y"],
        }))
    out = pd.concat(frames, ignore_index=True)
    out["workload_hours"] = out["hours"] + out["travel_hours"]
    return out
