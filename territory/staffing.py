"""Staff allocation: whole people per grid by role, then named people to grids.

"Staff follow workload": every main grid has exactly one grid manager (网格经理), every
sub-grid is a customer manager's beat, and key-account managers and installers are shared
out by workload. The workload of every (role, grid) comes from the workload model
(:func:`territory.workload.role_workload`: the role's share of the grid's hours, its fixed
hours and its travel in that grid).

Counts (one MIP per role and branch, PuLP + HiGHS). For the grids g of the role's level in the
branch, with workload W_g, headcount H and bounds lo_g..hi_g (lo_g >= 1 where W_g > 0: work
is never left without anyone)::

    y_gk in {0,1}: grid g gets k people, k in lo_g..min(hi_g, lo_g + H - sum lo)
    sum_k y_gk = 1;   sum_g sum_k k y_gk = H
    z >= sum_k (W_g / k) y_gk            (workload per person in g)
    1. minimise z                        -> z*
    2. z <= z*, w <= sum_k (W_g / k) y_gk for every g with W_g > 0; minimise z - w (spread)

People (one MIP per role and branch). Persons p (and vacancies, when the counts ask for more
people than the roster has) to grids g::

    x_pg in {0,1};  sum_g x_pg = 1;  sum_p x_pg = n_g;  sum_p hours_p x_pg >= W_g  (capacity)
    minimise  sum_pg (M moved_pg + km_pg) x_pg,   M = 1 + sum_p max_g km_pg

so the fewest people change grid, then the home bases are as near their grids as they can be
(km: straight-line distance from the home base to the grid's centre in the plan's local UTM
zone). A grid's workload is shared in proportion to its people's hours, so the capacity
constraint is exactly "nobody works more than their hours".

Impossible staffing (fewer people than the minimums or the hours need, a grid whose workload
needs more people than its maximum, grid managers not one per main grid, more people than
the grids can take) is refused with :class:`~territory.errors.InfeasibleError` naming the
role, the branch or grid, and the numbers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pulp
import pyproj
from scipy.optimize import linear_sum_assignment

from territory.atomic import atomic_path, write_text
from territory.crs import normalize_crs, to_wgs84
from territory.errors import InfeasibleError, InvalidInputError, NotSolvedError, SolverError
from territory.optimize.highs import checked_status, pulp_solver
from territory.plan import Plan
from territory.units import locate_points
from territory.workload import ROLES, WorkloadModel, load_model, plan_crs, role_workload

log = logging.getLogger(__name__)

ROSTER_COLUMNS = ("person_id", "name", "role", "hours", "home_store_id", "home_lng",
                  "home_lat", "home_crs", "current_grid", "branch_id", "synthetic")
VACANCY = "vacancy"


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def _read_table(source: str | Path | pd.DataFrame, what: str) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    path = Path(source)
    if not path.exists():
        raise InvalidInputError(f"{what}: {path} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InvalidInputError(f"{what}: cannot read {path} as CSV ({exc})") from None


def read_roster(source: str | Path | pd.DataFrame, *, default_hours: float = 160.0
                ) -> pd.DataFrame:
    """The roster, validated: one row per person.

    Columns: ``person_id`` (unique), ``role`` (one of :data:`~territory.workload.ROLES`),
    ``hours`` (monthly capacity; blank: ``default_hours``), a home base — ``home_store_id``
    or ``home_lng``/``home_lat`` with ``home_crs`` (wgs84, cgcs2000, gcj02, bd09 or EPSG:N) —
    and optionally ``name``, ``current_grid`` and ``branch_id``.
    """
    df = _read_table(source, "roster")
    missing = [c for c in ("person_id", "role") if c not in df]
    if missing:
        raise InvalidInputError(f"roster: columns {missing} are missing; a roster has "
                                f"{list(ROSTER_COLUMNS)} (columns found: {list(df.columns)})")
    unknown = [c for c in df.columns if c not in ROSTER_COLUMNS]
    if unknown:
        raise InvalidInputError(f"roster: unknown columns {unknown}; use {list(ROSTER_COLUMNS)}")
    df = df.reindex(columns=list(ROSTER_COLUMNS))
    df["person_id"] = df["person_id"].astype(str).str.strip()
    if (df["person_id"].isin(["", "nan"])).any():
        raise InvalidInputError(f"roster: rows {_rows(df['person_id'].isin(['', 'nan']))} have "
                                "no person_id")
    dup = df["person_id"].duplicated(keep=False)
    if dup.any():
        raise InvalidInputError(f"roster: person_id {sorted(set(df.loc[dup, 'person_id']))[:10]}"
                                " appear more than once; give every person one row")
    bad = ~df["role"].isin(ROLES)
    if bad.any():
        raise InvalidInputError(f"roster: rows {_rows(bad)} have roles "
                                f"{sorted(set(df.loc[bad, 'role'].astype(str)))[:5]}; use one of "
                                f"{list(ROLES)}")
    hours = pd.to_numeric(df["hours"], errors="coerce")
    hours = hours.where(df["hours"].notna(), default_hours)
    bad = ~np.isfinite(hours) | (hours <= 0)
    if bad.any():
        raise InvalidInputError(f"roster: column 'hours' must be a positive number of monthly "
                                f"hours; rows {_rows(bad)} are not")
    df["hours"] = hours.astype(float)
    has_store = df["home_store_id"].notna()
    has_xy = df["home_lng"].notna() & df["home_lat"].notna()
    none = ~has_store & ~has_xy
    if none.any():
        raise InvalidInputError(f"roster: rows {_rows(none)} have no home base; give "
                                "home_store_id or home_lng, home_lat and home_crs")
    no_crs = has_xy & ~has_store & df["home_crs"].isna()
    if no_crs.any():
        raise InvalidInputError(f"roster: rows {_rows(no_crs)} give home coordinates without "
                                "home_crs (wgs84, cgcs2000, gcj02, bd09 or EPSG:N)")
    df["name"] = df["name"].fillna("")
    for c in ("current_grid", "branch_id", "home_store_id"):
        df[c] = df[c].where(df[c].notna(), None)
    return df.set_index("person_id", drop=False).rename_axis(None)


def _rows(mask: pd.Series) -> list:
    """Row numbers (as in the file: 1 is the first data row) of a mask, the first ten."""
    return (np.flatnonzero(np.asarray(mask)) + 1).tolist()[:10]


def read_counts(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Headcount by role and branch: columns ``branch_id``, ``role``, ``headcount``."""
    df = _read_table(source, "counts")
    missing = [c for c in ("branch_id", "role", "headcount") if c not in df]
    if missing:
        raise InvalidInputError(f"counts: columns {missing} are missing; give branch_id, role, "
                                "headcount")
    bad = ~df["role"].isin(ROLES)
    if bad.any():
        raise InvalidInputError(f"counts: rows {_rows(bad)} name unknown roles; use one of "
                                f"{list(ROLES)}")
    n = pd.to_numeric(df["headcount"], errors="coerce")
    bad = n.isna() | (n < 0) | (n != n.round())
    if bad.any():
        raise InvalidInputError(f"counts: column 'headcount' must be a whole number >= 0; "
                                f"rows {_rows(bad)} are not")
    out = pd.DataFrame({"branch_id": df["branch_id"].astype(str), "role": df["role"],
                        "headcount": n.astype(int)})
    if out.duplicated(["branch_id", "role"]).any():
        raise InvalidInputError("counts: a (branch_id, role) pair appears twice; give one row "
                                "each")
    return out


def read_stores(source: str | Path | pd.DataFrame, *, crs: str) -> pd.DataFrame:
    """Stores by ``store_id`` with WGS84 ``lng``/``lat`` (converted from ``crs``)."""
    df = _read_table(source, "stores")
    missing = [c for c in ("store_id", "lng", "lat") if c not in df]
    if missing:
        raise InvalidInputError(f"stores: columns {missing} are missing; give store_id, lng, lat")
    x, y = to_wgs84(pd.to_numeric(df["lng"], errors="coerce"),
                    pd.to_numeric(df["lat"], errors="coerce"), crs)
    return pd.DataFrame({"lng": x, "lat": y}, index=df["store_id"].astype(str))


# --------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------
def _solve(prob: pulp.LpProblem, what: str, time_limit: float) -> None:
    prob.solve(pulp_solver(time_limit))
    status = checked_status(prob.solverModel, what)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise SolverError(f"{what}: HiGHS found no solution (model status {status!r})")
    if status != "Optimal":
        log.warning("%s: stopped at %r; the allocation is the best found", what, status)


def lower_bounds(W: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Per grid the fewest people allowed: its minimum, and one wherever there is work."""
    return np.maximum(np.asarray(lo, int), (np.asarray(W, float) > 0).astype(int))


def people_needed(W: np.ndarray, lo: np.ndarray, per_person: float) -> np.ndarray:
    """Per grid the fewest people that keep everyone's workload <= ``per_person`` hours."""
    return np.maximum(lower_bounds(W, lo), np.ceil(np.asarray(W, float) / per_person - 1e-9)
                      .astype(int))


def min_max_counts(W: np.ndarray, lo: np.ndarray, hi: np.ndarray, H: int, *, what: str,
                   time_limit: float = 60.0) -> np.ndarray:
    """Whole people per grid, ``H`` in all within ``lo``..``hi``, minimising the highest
    workload per person, then the spread (highest minus lowest); see the module docstring.

    Raises :class:`InfeasibleError` when ``H`` is outside what the bounds allow.
    """
    W = np.asarray(W, float)
    low = lower_bounds(W, lo)
    hi = np.asarray(hi, int)
    stuck = np.flatnonzero(low > hi)
    if len(stuck):
        raise InfeasibleError(f"{what}: grid positions {stuck.tolist()[:5]} have work but a "
                              "maximum of 0 people; raise max_per_grid")
    if H < low.sum() or H > hi.sum():
        raise InfeasibleError(
            f"{what}: {H} people for {len(W)} grids; the grids need at least {int(low.sum())} "
            f"(one wherever there is work, and the minimums) and take at most {int(hi.sum())}")
    slack = H - int(low.sum())
    prob = pulp.LpProblem("counts", pulp.LpMinimize)
    y = {(g, k): prob.add_variable(f"y_{g}_{k}", cat="Binary")
         for g in range(len(W)) for k in range(low[g], min(hi[g], low[g] + slack) + 1)}
    by_grid: dict[int, list] = {}
    for (g, k), v in y.items():
        by_grid.setdefault(g, []).append((k, v))
    load = {g: pulp.lpSum((W[g] / k if k else 0.0) * v for k, v in kv)
            for g, kv in by_grid.items()}
    z = prob.add_variable("z", lowBound=0)
    for g, kv in by_grid.items():
        prob += pulp.lpSum(v for _, v in kv) == 1
        prob += z >= load[g]
    prob += pulp.lpSum(k * v for (_, k), v in y.items()) == H
    prob += z
    _solve(prob, what, time_limit)
    n = _chosen(y, len(W))
    work = [g for g in by_grid if W[g] > 0]
    if len(work) > 1:
        # the best maximum, from the whole-number solution (not z, which carries the solver's
        # tolerances), with a margin the solver's feasibility tolerance respects
        best = float(np.max(np.where(n > 0, W / np.maximum(n, 1), 0.0)))
        w = prob.add_variable("w", lowBound=0)
        prob += z <= best * (1 + 1e-7) + 1e-6
        for g in work:
            prob += w <= load[g]
        prob.setObjective(z - w)
        _solve(prob, f"{what} (spread)", time_limit)
        n = _chosen(y, len(W))
    return n


def _chosen(y: dict, n_grids: int) -> np.ndarray:
    """The people per grid a solved ``y_gk`` picks."""
    n = np.zeros(n_grids, dtype=int)
    for (g, k), v in y.items():
        if (v.value() or 0) > 0.5:
            n[g] = k
    return n


def headcount_within(W: np.ndarray, lo: np.ndarray, hi: np.ndarray, H: int, *,
                     other_work: float, other_staff: int, within: float) -> int | None:
    """The branch headcount that brings its highest workload per person within ``within``
    (a fraction) of the mean of the role's city (the branch's work plus ``other_work`` over
    its people plus ``other_staff``); None when the maxima per grid forbid it.

    Uses that the best highest workload is <= t exactly when sum_g max(low_g, ceil(W_g/t))
    people fit, so no solve is needed.
    """
    W = np.asarray(W, float)
    total = W.sum() + other_work
    for h in range(max(H, 1), int(np.sum(hi)) + 1):
        t = (1 + within) * total / (other_staff + h)
        need = people_needed(W, lo, t)
        if (need > hi).any():
            continue
        if need.sum() <= h:
            return h
    return None


# --------------------------------------------------------------------------------------
# The allocator
# --------------------------------------------------------------------------------------
class StaffAllocator:
    """Allocate staff to the grids of a plan: counts per grid, then named people.

    Parameters
    ----------
    model : the workload model (default: the shipped ``workload.toml``).
    within : the target band, as a fraction of the role's mean workload per person, used to
        report the headcount that would bring each branch's worst grid within it.
    time_limit : seconds per HiGHS solve.

    After :meth:`solve`: ``load_`` (one row per role and grid: workload, ``staff``,
    ``workload_per_staff``), ``staff_`` (one row per person or vacancy), ``grids_`` (one row
    per main grid and sub-grid) and ``summary_`` (per role: mean, worst grid, headcount).
    """

    def __init__(self, model: WorkloadModel | None = None, *, within: float = 0.10,
                 time_limit: float = 60.0) -> None:
        self.model = model
        self.within = within
        self.time_limit = time_limit

    def __getattr__(self, name: str):
        if name.endswith("_") and not name.startswith("_"):
            raise NotSolvedError(f"{name} is set by solve(); call solve() first")
        raise AttributeError(name)

    def solve(self, plan: Plan, roster: pd.DataFrame, *, counts: pd.DataFrame | None = None,
              stores: pd.DataFrame | None = None) -> StaffAllocator:
        """Allocate ``roster`` (see :func:`read_roster`) to ``plan``'s grids.

        ``counts`` (see :func:`read_counts`) sets the headcount per role and branch (default:
        the roster's); people short of it are filled with vacancies to hire. ``stores``
        (see :func:`read_stores`) locates the home bases given as store ids.
        """
        model = self.model or load_model()
        if not 0 <= self.within:
            raise InvalidInputError(f"within={self.within}: give a fraction >= 0 such as 0.1")
        units = plan.units
        crs = plan_crs(units)
        load = role_workload(units, model, crs)
        roster = roster.copy()
        roster["branch_id"] = _person_branches(roster, units, load, stores)
        heads = (roster.groupby(["branch_id", "role"]).size().rename("headcount").reset_index()
                 if counts is None else counts)
        heads = heads.set_index(["role", "branch_id"])["headcount"]
        extra = set(heads[heads > 0].index) - set(load.groupby(["role", "branch_id"]).groups)
        if extra:
            raise InvalidInputError(f"counts: headcount for (role, branch) {sorted(extra)[:5]} "
                                    "but the plan has no such branch; use the plan's "
                                    f"branches {sorted(set(load['branch_id']))[:20]}")
        load["staff"] = 0
        for (role, branch), idx in load.groupby(["role", "branch_id"]).groups.items():
            load.loc[idx, "staff"] = self._counts(model, role, str(branch), load.loc[idx],
                                                  int(heads.get((role, branch), 0)), roster)
        load["workload_per_staff"] = np.where(load["staff"] > 0,
                                              load["workload_hours"] / load["staff"].clip(1), 0)
        self.load_ = load
        self.staff_ = self._people(model, load, roster, crs, stores)
        self.grids_ = grid_table(load, self.staff_)
        self.summary_ = self._summary(load, model)
        return self

    # -- counts ---------------------------------------------------------------------------
    def _counts(self, model: WorkloadModel, role: str, branch: str, rows: pd.DataFrame,
                H: int, roster: pd.DataFrame) -> np.ndarray:
        r = model.roles[role]
        what = f"{role} in branch {branch}"
        W = rows["workload_hours"].to_numpy(float)
        lo = np.full(len(rows), r.min_per_grid)
        hi = np.full(len(rows), r.max_per_grid)
        if role == "grid_manager" and H != len(rows):
            raise InfeasibleError(f"{what}: {H} grid managers for {len(rows)} main grids; every "
                                  "main grid has exactly one, so give "
                                  f"{len(rows)} ({'add' if H < len(rows) else 'remove'} "
                                  f"{abs(len(rows) - H)})")
        mine = roster[(roster["role"] == role) & (roster["branch_id"] == branch)]
        cap = float(mine["hours"].mean()) if len(mine) else model.staff.monthly_hours
        over = np.flatnonzero(np.ceil(W / cap - 1e-9) > hi)
        if len(over):
            g = rows.index[over[0]]
            raise InfeasibleError(
                f"{what}: grid {rows.at[g, 'grid_id']} has {W[over[0]]:.0f} h of work a month, "
                f"more than its maximum of {r.max_per_grid} people at {cap:.0f} h can do "
                f"({len(over)} such grids); raise max_per_grid or plan smaller grids")
        need = int(people_needed(W, lo, cap).sum())
        if H < need:
            raise InfeasibleError(
                f"{what}: {H} people for {W.sum():.0f} h of work a month in {len(W)} grids; "
                f"at {cap:.0f} h each (and one wherever there is work, "
                f"{int(lower_bounds(W, lo).sum())} at least) it takes {need}: add {need - H}")
        return min_max_counts(W, lo, hi, H, what=what, time_limit=self.time_limit)

    # -- people ---------------------------------------------------------------------------
    def _people(self, model: WorkloadModel, load: pd.DataFrame, roster: pd.DataFrame,
                crs: pyproj.CRS, stores: pd.DataFrame | None) -> pd.DataFrame:
        hx, hy = _home_xy(roster, stores, crs)
        roster = roster.assign(home_x=hx, home_y=hy)
        frames = []
        for (role, branch), idx in load.groupby(["role", "branch_id"]).groups.items():
            rows = load.loc[idx]
            mine = roster[(roster["role"] == role) & (roster["branch_id"] == str(branch))]
            frames.append(self._assign(model, role, str(branch), rows, mine))
        return pd.concat(frames, ignore_index=True)

    def _assign(self, model: WorkloadModel, role: str, branch: str, rows: pd.DataFrame,
                people: pd.DataFrame) -> pd.DataFrame:
        what = f"{role} in branch {branch}"
        n = rows["staff"].to_numpy(int)
        if len(people) > n.sum():
            raise InfeasibleError(f"{what}: the roster has {len(people)} people but the counts "
                                  f"place {int(n.sum())}; raise the headcount or remove "
                                  f"{len(people) - int(n.sum())} from the roster")
        vac = int(n.sum()) - len(people)
        cap = float(people["hours"].mean()) if len(people) else model.staff.monthly_hours
        ids = [*people["person_id"], *(f"{VACANCY}-{role}-{branch}-{i + 1}" for i in range(vac))]
        hours = np.r_[people["hours"].to_numpy(float), np.full(vac, cap)]
        gx, gy = rows["centre_x"].to_numpy(), rows["centre_y"].to_numpy()
        km = np.zeros((len(ids), len(rows)))
        km[: len(people)] = np.hypot(people["home_x"].to_numpy()[:, None] - gx[None, :],
                                     people["home_y"].to_numpy()[:, None] - gy[None, :]) / 1000
        cur = np.r_[people["current_grid"].to_numpy(object), np.full(vac, None, dtype=object)]
        grid_ids = rows["grid_id"].to_numpy(object)
        has_cur = np.array([c is not None for c in cur], dtype=bool)
        moved = has_cur[:, None] & (cur[:, None] != grid_ids[None, :])
        W = rows["workload_hours"].to_numpy(float)
        big = 1.0 + km.max(axis=1).sum()
        if self._seats_cover(n, hours, W):
            # any n[g] people cover grid g's hours: the hours rows are implied, and what is
            # left is an assignment of people to the grids' seats, solved exactly at once
            # (the MIP over every person and grid of a branch ran out of time at 2 000 000
            # customers: 889 people x 889 grids)
            seat = np.repeat(np.arange(len(rows)), n)
            _, col = linear_sum_assignment((big * moved + km)[:, seat])
            at = seat[col]
        else:
            at = self._assign_mip(what, ids, hours, n, W, km, moved, big, grid_ids)
        out = pd.DataFrame({
            "person_id": ids, "name": [*people["name"], *([VACANCY] * vac)], "role": role,
            "branch_id": branch, "grid_id": grid_ids[at], "hours": hours,
            "home_km": km[np.arange(len(ids)), at], "current_grid": cur,
            "moved": moved[np.arange(len(ids)), at],
        })
        team_hours = out.groupby("grid_id")["hours"].transform("sum")
        share = out["hours"] / team_hours
        by_grid = rows.set_index("grid_id")
        out["workload_hours"] = share * out["grid_id"].map(by_grid["workload_hours"])
        out["travel_km"] = share * out["grid_id"].map(by_grid["travel_km"])
        out["reason"] = _reasons(out, by_grid, role)
        return out

    @staticmethod
    def _seats_cover(n: np.ndarray, hours: np.ndarray, W: np.ndarray) -> bool:
        """Whether any ``n[g]`` of these people cover grid ``g``'s hours ``W[g]``, for
        every grid (then who goes where is an assignment problem)."""
        return bool(len(hours)) and bool((n * hours.min() >= W - 1e-9).all())

    def _assign_mip(self, what: str, ids: list, hours: np.ndarray, n: np.ndarray,
                    W: np.ndarray, km: np.ndarray, moved: np.ndarray, big: float,
                    grid_ids: np.ndarray) -> np.ndarray:
        """Each person's grid (position) when people's hours differ so that which ones a
        grid gets decides whether its hours are covered: a MIP."""
        rows = range(len(grid_ids))
        prob = pulp.LpProblem("people", pulp.LpMinimize)
        x = {(p, g): prob.add_variable(f"x_{p}_{g}", cat="Binary")
             for p in range(len(ids)) for g in rows if n[g] > 0}
        for p in range(len(ids)):
            prob += pulp.lpSum(x[p, g] for g in rows if (p, g) in x) == 1
        for g in np.flatnonzero(n > 0):
            prob += pulp.lpSum(x[p, g] for p in range(len(ids))) == int(n[g])
            if W[g] > 0:
                prob += pulp.lpSum(hours[p] * x[p, g] for p in range(len(ids))) >= W[g]
        prob += pulp.lpSum((big * moved[p, g] + km[p, g]) * v for (p, g), v in x.items())
        try:
            _solve(prob, what, self.time_limit)
        except SolverError:
            status = checked_status(prob.solverModel, what)
            if status != "Infeasible":  # stopped short (a time limit): nothing proven
                raise SolverError(
                    f"{what}: HiGHS stopped at {status!r} before finding an assignment of "
                    f"these {len(ids)} people to grids, which does not prove there is none; "
                    f"allow it more than {self.time_limit:g} s a solve (time_limit, "
                    "--time-limit)") from None
            short = ", ".join(f"{grid_ids[g]}: {W[g]:.0f} h" for g in np.flatnonzero(n > 0)[:5])
            raise InfeasibleError(
                f"{what}: no assignment of these {len(ids)} people ({hours.sum():.0f} h) gives "
                f"every grid the hours it needs ({short}…); give people with more hours, or "
                "more people") from None
        at = np.full(len(ids), -1)
        for (p, g), v in x.items():
            if (v.value() or 0) > 0.5:
                at[p] = g
        return at

    # -- report ---------------------------------------------------------------------------
    def _summary(self, load: pd.DataFrame, model: WorkloadModel) -> dict:
        out = {}
        for role, rows in load.groupby("role", sort=False):
            staff = int(rows["staff"].sum())
            mean = rows["workload_hours"].sum() / staff if staff else None
            worst = rows.loc[rows["workload_per_staff"].idxmax()]
            b = worst["branch_id"]
            mine = rows[rows["branch_id"] == b]
            r = model.roles[role]
            target = None
            if role != "grid_manager":
                target = headcount_within(
                    mine["workload_hours"].to_numpy(), np.full(len(mine), r.min_per_grid),
                    np.full(len(mine), r.max_per_grid), int(mine["staff"].sum()),
                    other_work=float(rows["workload_hours"].sum() - mine["workload_hours"].sum()),
                    other_staff=staff - int(mine["staff"].sum()), within=self.within)
            out[role] = {
                "staff": staff, "workload_hours": round(float(rows["workload_hours"].sum()), 1),
                "mean_per_staff": None if mean is None else round(float(mean), 1),
                "max_per_staff": round(float(worst["workload_per_staff"]), 1),
                "min_per_staff": round(float(rows.loc[rows["staff"] > 0,
                                                      "workload_per_staff"].min()), 1)
                if staff else None,
                "worst_grid": worst["grid_id"], "worst_branch": b,
                "within": self.within,
                "branch_headcount": int(mine["staff"].sum()),
                "branch_headcount_within": target,
            }
        return out


def _person_branches(roster: pd.DataFrame, units: gpd.GeoDataFrame, load: pd.DataFrame,
                     stores: pd.DataFrame | None) -> pd.Series:
    """Each person's branch: ``branch_id`` if given, else their current grid's, else the
    branch holding their home base."""
    grid_branch = load.drop_duplicates("grid_id").set_index("grid_id")["branch_id"]
    out = roster["branch_id"].copy()
    todo = out.isna()
    out[todo] = roster.loc[todo, "current_grid"].map(grid_branch)
    todo = out.isna()
    if todo.any():
        lng, lat = _home_lnglat(roster[todo], stores)
        pos = locate_points(units, lng, lat)
        if (pos < 0).any():
            who = roster[todo].index[pos < 0].tolist()[:10]
            raise InvalidInputError(f"roster: persons {who} have a home base outside the plan "
                                    "and no branch_id or current_grid; give one of them")
        out[todo] = units["branch_id"].astype(str).to_numpy()[pos]
    known = set(load["branch_id"])
    bad = ~out.isin(known)
    if bad.any():
        raise InvalidInputError(f"roster: persons {out.index[bad].tolist()[:10]} are in "
                                f"branches {sorted(set(out[bad]))[:5]} that the plan does not "
                                f"have; use one of {sorted(known)[:20]}")
    return out.astype(str)


def _home_lnglat(roster: pd.DataFrame, stores: pd.DataFrame | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 home bases: a store's position, or the row's coordinates in its CRS."""
    lng = np.full(len(roster), np.nan)
    lat = np.full(len(roster), np.nan)
    at_store = roster["home_store_id"].notna().to_numpy()
    if at_store.any():
        if stores is None:
            raise InvalidInputError("roster: home bases are given as store ids; pass the "
                                    "stores table (--stores) to locate them")
        sid = roster.loc[at_store, "home_store_id"].astype(str)
        unknown = sorted(set(sid) - set(stores.index))
        if unknown:
            raise InvalidInputError(f"roster: home_store_id {unknown[:10]} are not in the "
                                    "stores table")
        lng[at_store] = stores.loc[sid, "lng"].to_numpy()
        lat[at_store] = stores.loc[sid, "lat"].to_numpy()
    rest = ~at_store
    for crs, idx in roster[rest].groupby("home_crs").groups.items():
        pos = roster.index.get_indexer(idx)
        x = pd.to_numeric(roster.loc[idx, "home_lng"], errors="coerce").to_numpy(float)
        y = pd.to_numeric(roster.loc[idx, "home_lat"], errors="coerce").to_numpy(float)
        try:
            lng[pos], lat[pos] = to_wgs84(x, y, normalize_crs(str(crs)))
        except InvalidInputError as exc:
            raise InvalidInputError(f"roster: home_crs of persons {list(idx)[:5]}: {exc}") from None
    bad = ~np.isfinite(lng) | ~np.isfinite(lat)
    if bad.any():
        raise InvalidInputError(f"roster: persons {roster.index[bad].tolist()[:10]} have home "
                                "coordinates that are not numbers")
    return lng, lat


def _home_xy(roster: pd.DataFrame, stores: pd.DataFrame | None, crs: pyproj.CRS
             ) -> tuple[np.ndarray, np.ndarray]:
    lng, lat = _home_lnglat(roster, stores)
    t = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return t.transform(lng, lat)


def _reasons(out: pd.DataFrame, by_grid: pd.DataFrame, role: str) -> list[str]:
    """Why each person is where they are, in a sentence."""
    had = out["current_grid"].value_counts()
    reasons = []
    for row in out.itertuples():
        cur = row.current_grid
        if row.person_id.startswith(VACANCY):
            reasons.append(f"to hire: {row.grid_id} is allotted more {role}s than the roster "
                           "has")
        elif cur is None:
            reasons.append("no current grid given")
        elif not row.moved:
            reasons.append("stays in their current grid")
        elif cur not in by_grid.index:
            reasons.append(f"current grid {cur} is not a grid of this plan for a {role}")
        elif had[cur] > by_grid.at[cur, "staff"]:
            reasons.append(f"{cur} is allotted {by_grid.at[cur, 'staff']} {role}(s) and had "
                           f"{had[cur]}; {row.grid_id} needs "
                           f"{by_grid.at[row.grid_id, 'workload_hours']:.0f} h of work")
        else:
            reasons.append(f"{row.grid_id} needs {by_grid.at[row.grid_id, 'workload_hours']:.0f}"
                           " h, more than its other staff's hours")
    return reasons


def grid_table(load: pd.DataFrame, staff: pd.DataFrame) -> pd.DataFrame:
    """Per main grid and sub-grid: staff by role, vacancies, workload, workload per staff.

    A main grid's row counts its sub-grids' staff and workload too, so that the main grids'
    rows add up to the city.
    """
    counts = load.pivot_table(index="grid_id", columns="role", values="staff", aggfunc="sum",
                              fill_value=0).reindex(columns=list(ROLES), fill_value=0)
    vac = staff[staff["person_id"].str.startswith(VACANCY)].groupby("grid_id").size()
    sums = load.groupby("grid_id")[["workload_hours", "travel_km", "travel_hours"]].sum()
    first = load.drop_duplicates("grid_id").set_index("grid_id")
    grids = first[["level", "main_grid_id", "branch_id"]].join(counts).join(sums)
    grids["vacancies"] = vac.reindex(grids.index, fill_value=0)
    subs = grids[grids["level"] == "sub_grid"]
    add = subs.groupby("main_grid_id")[[*ROLES, "workload_hours", "travel_km",
                                         "travel_hours", "vacancies"]].sum()
    main = grids["level"] == "main_grid"
    grids.loc[main, add.columns] = (grids.loc[main, add.columns]
                                    + add.reindex(grids.index[main], fill_value=0))
    grids["staff"] = grids[list(ROLES)].sum(axis=1)
    grids["workload_per_staff"] = grids["workload_hours"] / grids["staff"].where(
        grids["staff"] > 0)
    grids = grids.reset_index().sort_values(["level", "grid_id"], ignore_index=True)
    cols = ["level", "grid_id", "main_grid_id", "branch_id", *ROLES, "staff", "vacancies",
            "workload_hours", "travel_km", "travel_hours", "workload_per_staff"]
    return grids[cols]


def staff_csv(staff: pd.DataFrame, load: pd.DataFrame) -> pd.DataFrame:
    """``staff.csv``: person, role, main grid, sub-grid (roles that work one), hours,
    workload, field travel, distance from home, moved and why."""
    level = load.drop_duplicates("grid_id").set_index("grid_id")
    sub = level.loc[staff["grid_id"], "level"].to_numpy() == "sub_grid"
    return pd.DataFrame({
        "person_id": staff["person_id"], "name": staff["name"], "role": staff["role"],
        "branch_id": staff["branch_id"],
        "main_grid_id": level.loc[staff["grid_id"], "main_grid_id"].to_numpy(),
        "sub_grid_id": np.where(sub, staff["grid_id"], None),
        "hours": staff["hours"].round(1), "workload_hours": staff["workload_hours"].round(1),
        "travel_km": staff["travel_km"].round(1), "home_km": staff["home_km"].round(2),
        "moved": staff["moved"], "reason": staff["reason"],
    })


STAFF_COLUMNS = ("person_id", "name", "role", "branch_id", "main_grid_id", "sub_grid_id",
                 "hours", "workload_hours", "travel_km", "home_km", "moved", "reason")


def read_staff_table(path: str | Path) -> pd.DataFrame:
    """A ``staff.csv`` written by :func:`write_staffing` (for maps and exports)."""
    df = _read_table(path, "staff")
    missing = [c for c in STAFF_COLUMNS if c not in df]
    if missing:
        raise InvalidInputError(f"staff: {path} lacks columns {missing}; give the staff.csv "
                                "that territory staff wrote")
    for c in ("hours", "workload_hours", "travel_km", "home_km"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def round_for_people(df: pd.DataFrame) -> pd.DataFrame:
    """Floats to one decimal: hours and km are read by people."""
    return df.round({c: 1 for c in df.columns if pd.api.types.is_float_dtype(df[c])})


def write_staffing(result: StaffAllocator, out_dir: str | Path) -> dict[str, Path]:
    """Write ``staff.csv``, ``grids_staffing.csv``, ``roles_staffing.csv`` (per role and
    grid) and ``staffing.json`` (the summary per role) into ``out_dir``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roles = result.load_.drop(columns=["centre_x", "centre_y"])
    frames = {"staff": staff_csv(result.staff_, result.load_),
              "grids_staffing": round_for_people(result.grids_),
              "roles_staffing": round_for_people(roles)}
    paths = {}
    for name, df in frames.items():
        paths[name] = out / f"{name}.csv"
        with atomic_path(paths[name]) as tmp:
            df.to_csv(tmp, index=False)
    paths["summary"] = write_text(out / "staffing.json",
                                  json.dumps(result.summary_, ensure_ascii=False, indent=2))
    return paths
