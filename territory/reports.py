"""Each main grid's own analysis (建议针对每一个产生的网格,进行单独分析): a page per grid.

For every main grid :func:`write_reports` writes a self-contained HTML page (it opens
offline, like the maps: the grid's field map is embedded with Leaflet inlined, the charts
are PNG ``data:`` URIs) and a printable PDF (landscape A4: the printed grid map of
:mod:`territory.printmaps`, then the figures), and ``index.html``, the city's page that
links them all. Each page shows:

* the grid's KPIs (:data:`KPIS`): subscribers, households, penetration, revenue and ARPU,
  the value pyramid, key accounts by cluster-market type, stores, staff and workload per
  staff member, area and density, and the headroom to a target penetration;
* how it compares with its branch and the city: rank and z-score of :data:`COMPARED`, and a
  small chart of each;
* its communities ranked as the team should work them
  (:func:`territory.mapdata.ranked_communities`), the score explained;
* its staff, when a staff allocation (``staff.csv`` of ``territory staff``) is given.

Figures are computed once per city (:func:`grid_figures`) from the plan's units and the
point tables placed in the grids, so the grid pages add up to the city page: every
additive KPI of :func:`city_figures`, computed from the whole tables rather than from the
grids, equals the sum over the grid pages (points outside the plan are shown apart).
Numbers are rounded for people to the decimals :class:`Kpi` documents, with their units in
the labels. Every string from the data (grid ids, names) is escaped by the template
(Jinja2 with autoescape), and a grid id becomes a file name only through
:func:`territory.filenames.safe_filename`.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from territory.atomic import atomic_path, write_text
from territory.errors import InvalidInputError
from territory.filenames import safe_filename
from territory.mapdata import PlanLayers, Tables, as_text, ranked_communities
from territory.metrics import coverage
from territory.plan import Plan
from territory.printmaps import PAPER, grid_figure, print_style

log = logging.getLogger(__name__)

#: Penetration a grid is measured against when none is given: its headroom is the
#: subscribers it would need to reach it.
TARGET_PENETRATION = 0.6
#: Value pyramid tiers (价值金字塔), top first, as the customers' ``segment`` column names
#: them; other values are shown after these.
TIERS = ("big", "business", "ordinary")
#: Staff roles (``territory staff``), in page order; other roles are shown after these.
ROLES = ("grid_manager", "customer_manager", "key_account_manager", "installer")
#: Columns a staff file (``staff.csv`` of ``territory staff``) must have, and may have.
STAFF_REQUIRED = ("person_id", "role", "main_grid_id")
STAFF_OPTIONAL = ("name", "sub_grid_id", "hours", "workload_hours", "travel_km", "moved")
#: Communities listed on a printed page (the HTML page lists them all).
PRINTED_COMMUNITIES = 15
#: Staff rows on a printed page (the HTML page lists them all).
PRINTED_STAFF = 12
TEMPLATES = Path(__file__).parent / "assets" / "templates"


@dataclass(frozen=True)
class Kpi:
    """A figure of a grid: its column in :func:`grid_figures`, its label with the unit,
    the decimals shown, and whether it adds up over grids (else it is a ratio, recomputed
    from the city's totals)."""

    key: str
    label: str
    decimals: int = 0
    additive: bool = True
    percent: bool = False

    def text(self, value: object) -> str:
        """``value`` rounded for people: thousands separated, :attr:`decimals` places."""
        fmt = f",.{self.decimals}%" if self.percent else f",.{self.decimals}f"
        return as_text([value], fmt)[0]


#: The grid KPIs, in page order (tiers and key-account types are added per city, see
#: :func:`kpis_of`). The most decimals shown anywhere is 2.
KPIS = (
    Kpi("subscribers", "Subscribers"),
    Kpi("customers", "Customers"),
    Kpi("households", "Households"),
    Kpi("penetration", "Penetration (subscribers / households, %)", 1, False, True),
    Kpi("revenue_cny", "Revenue (CNY/month)"),
    Kpi("arpu_cny", "ARPU (CNY/month per customer)", 1, False),
    Kpi("communities", "Communities"),
    Kpi("key_accounts", "Key accounts"),
    Kpi("stores", "Stores"),
    Kpi("workload_h", "Workload (h/month)"),
    Kpi("staff", "Staff (people)"),
    Kpi("workload_per_staff_h", "Workload per staff member (h/month)", 1, False),
    Kpi("area_km2", "Area (km², local UTM)", 2),
    Kpi("density_per_km2", "Density (subscribers/km²)", 0, False),
    Kpi("headroom", "Headroom to target (subscribers)"),
)
#: KPIs ranked and scored against the branch and the city, with a chart each.
COMPARED = ("subscribers", "penetration", "arpu_cny", "revenue_cny",
            "workload_per_staff_h", "density_per_km2")
#: Most decimals any figure of a page is shown with (tests hold the pages to it).
MAX_DECIMALS = 2

#: How the community list is ordered, for the page (the score is computed by whoever made
#: the communities table; the demo's is :func:`territory.synth.community_value_score`).
SCORING = (
    "Communities are ranked by value score, highest first (by households when the table "
    "has no score). The score counts the households a team can win: households × "
    "composition × access, where composition = 0.4 + 0.6 × (0.6 × owner-occupied share + "
    "0.4 × newness), newness = (build year − 1985) / 39 between 0 and 1 (owner-occupiers "
    "and newer communities buy more, pay more and churn less), and access = 1 − 0.15 × "
    "(entry threshold − 1), from 1.0 for an open community (threshold 1) to 0.4 where the "
    "property manager keeps operators out (threshold 5). Headroom is households × target "
    "penetration − the community's subscribers (estimated from its penetration)."
)


# -- inputs --------------------------------------------------------------------------------
def read_staff(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A staff allocation: ``staff.csv`` of ``territory staff``, or the folder holding it.

    Raises:
        InvalidInputError: no such file, or a required column is missing.
    """
    if isinstance(source, pd.DataFrame):
        df = source.copy()
        where = "staff table"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "staff.csv"
        if not path.is_file():
            raise InvalidInputError(f"`staff`: {path} is not a file; give staff.csv written by "
                                    "territory staff, or its folder")
        df = pd.read_csv(path, dtype={c: str for c in (*STAFF_REQUIRED, "name", "sub_grid_id")},
                         keep_default_na=False, na_values=[""])
        where = str(path)
    missing = [c for c in STAFF_REQUIRED if c not in df.columns]
    if missing:
        raise InvalidInputError(f"`staff` {where}: columns {missing} are missing; a staff file "
                                f"has {list(STAFF_REQUIRED + STAFF_OPTIONAL)}")
    return df[[c for c in (*STAFF_REQUIRED, *STAFF_OPTIONAL) if c in df.columns]]


def _check_staff(staff: pd.DataFrame, mains: pd.Index) -> None:
    unknown = staff["main_grid_id"].notna() & ~staff["main_grid_id"].isin(mains)
    if unknown.any():
        rows = staff.loc[unknown, ["person_id", "main_grid_id"]].head(5).to_dict("records")
        raise InvalidInputError(
            f"`staff`: {int(unknown.sum())} people work in main grids this plan does not have, "
            f"e.g. {rows}; allocate the staff on this plan (territory staff PLAN ...)")


def _counts_by(table: pd.DataFrame, placed: pd.DataFrame | None, column: str,
               order: Iterable[str], grids: pd.Index) -> tuple[pd.DataFrame, pd.Series]:
    """Points of ``table`` counted by the values of ``column`` in each grid (``placed``:
    the same points placed, None when none) and in the whole table; every value the table
    holds is a column (those of ``order`` first), also one found only outside the grids."""
    whole = table[column].astype(str).value_counts()
    first = [v for v in order if v in whole.index]
    values = first + sorted(v for v in whole.index if v not in first)
    if placed is None:
        inside = pd.DataFrame(0, index=grids, columns=values)
    else:
        inside = pd.crosstab(placed["main_grid_id"], placed[column].astype(str))
        inside = inside.reindex(index=grids, columns=values, fill_value=0)
    return inside, whole[values]


# -- figures -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figures:
    """The KPIs of every main grid (``grids``, raw values, one row per grid id, with
    ``branch_id``) and of the city (``city``), and the KPIs in page order."""

    grids: pd.DataFrame
    city: pd.Series
    kpis: tuple[Kpi, ...]
    target_penetration: float


def _ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """The ratio KPIs from the additive ones, row by row; NaN where the denominator is 0
    or missing."""
    def ratio(num: str, den: str) -> pd.Series:
        d = frame[den].astype(float) if den in frame else pd.Series(np.nan, frame.index)
        n = frame[num].astype(float) if num in frame else pd.Series(np.nan, frame.index)
        return n / d.where(d > 0)

    out = frame.copy()
    out["penetration"] = ratio("subscribers", "households")
    out["arpu_cny"] = ratio("revenue_cny", "customers")
    out["workload_per_staff_h"] = ratio("workload_h", "staff")
    out["staff_workload_per_person_h"] = ratio("staff_workload_h", "staff")
    out["density_per_km2"] = ratio("subscribers", "area_km2")
    return out


def grid_figures(plan: Plan | PlanLayers, tables: Tables | None = None,
                 staff: pd.DataFrame | None = None, *,
                 target_penetration: float = TARGET_PENETRATION) -> Figures:
    """The KPIs of every main grid and of the city.

    Sums come from the plan's units (subscribers, customers, households, revenue, workload,
    counts of communities, stores and key accounts) and, where the point tables are given,
    from their points placed in the grids: customers by value tier (``segment``), key
    accounts by type (``kind``). The city's figures are computed from the whole unit and
    point tables, not from the grids, so the two can be checked against each other; points
    outside every grid are counted in the city's ``outside`` figures.

    Raises:
        InvalidInputError: ``target_penetration`` is not in (0, 1], or the staff file names
            main grids the plan does not have.
    """
    if not 0 < target_penetration <= 1:
        raise InvalidInputError(f"`target_penetration` {target_penetration}: give a share in "
                                "(0, 1], e.g. 0.6 for 60 %")
    layers = PlanLayers.of(plan)
    units = layers.plan.units
    kpis = layers.kpis("main_grid").set_index("grid_id")
    grids = pd.DataFrame({"branch_id": kpis["parent_id"].astype(str)}, index=kpis.index)
    city: dict[str, float] = {}
    for column, key in (("subscribers", "subscribers"), ("customers", "customers"),
                        ("households", "households"), ("revenue", "revenue_cny"),
                        ("communities", "communities"), ("key_accounts", "key_accounts"),
                        ("stores", "stores"), ("workload", "workload_h")):
        if column in units:
            grids[key] = kpis[column].astype(float)
            city[key] = float(units[column].sum())
    grids["area_km2"] = kpis["area_km2"]
    city["area_km2"] = coverage(layers.plan, "branch")["area_km2"]

    after: dict[str, list[Kpi]] = {}  # KPIs shown after the one they break down
    for name, column, order, label in (("customers", "segment", TIERS, "Customers, {} tier"),
                                       ("key_accounts", "kind", (), "Key accounts: {}")):
        table = (tables or {}).get(name)
        if table is None or column not in table:
            continue
        placed = layers.placed(tables, name)
        inside, whole = _counts_by(table, placed, column, order, grids.index)
        for value in whole.index:
            key = f"{name}_{column}_{value}"
            grids[key] = inside[value].astype(float)
            city[key] = float(whole[value])
            after.setdefault(name, []).append(Kpi(key, label.format(value.replace("_", " "))))
        placed_n = 0 if placed is None else int(placed["main_grid_id"].notna().sum())
        city[f"{name}_outside"] = float(len(table) - placed_n)

    if staff is not None:
        _check_staff(staff, grids.index)
        assigned = staff[staff["main_grid_id"].notna()]
        grids["staff"] = assigned.groupby("main_grid_id").size().reindex(
            grids.index, fill_value=0).astype(float)
        city["staff"] = float(len(assigned))
        city["staff_unassigned"] = float(len(staff) - len(assigned))
        by_role, whole = _counts_by(assigned, assigned, "role", ROLES, grids.index)
        for role in whole.index:
            grids[f"staff_role_{role}"] = by_role[role].astype(float)
            city[f"staff_role_{role}"] = float(whole[role])
            after.setdefault("staff", []).append(
                Kpi(f"staff_role_{role}", f"Staff: {role.replace('_', ' ')} (people)"))
        if "workload_hours" in assigned:
            # what the staffing gives its people: their share of the grid's hours plus the
            # roles' fixed hours and field travel (grids_staffing.csv's workload per staff),
            # beside the units' workload above, which has neither
            hours = pd.to_numeric(assigned["workload_hours"], errors="coerce")
            grids["staff_workload_h"] = hours.groupby(assigned["main_grid_id"]).sum().reindex(
                grids.index, fill_value=0.0)
            city["staff_workload_h"] = float(hours.sum())
            after.setdefault("staff", []).append(Kpi(
                "staff_workload_per_person_h", "Staff hours per person, with fixed hours and "
                "travel (h/month)", 1, False))

    if "households" in grids and "subscribers" in grids:
        grids["headroom"] = (target_penetration * grids["households"]
                             - grids["subscribers"]).clip(lower=0)
        # a grid above the target has no headroom: the city's is what every grid still needs
        city["headroom"] = float(grids["headroom"].sum())
    grids = _ratios(grids)
    city_row = _ratios(pd.DataFrame([city])).iloc[0]
    order = [kpi for base in KPIS if base.key in grids and grids[base.key].notna().any()
             for kpi in (base, *after.get(base.key, []))]
    return Figures(grids, city_row, tuple(order), target_penetration)


def comparisons(figures: Figures, grid_id: str) -> pd.DataFrame:
    """How one grid compares with the other main grids of its branch and of the city, for
    each of :data:`COMPARED`: the value, its rank (1 = highest) among ``n`` grids and its
    z-score (standard deviations from the mean; none when all are equal)."""
    grids = figures.grids
    branch = grids[grids["branch_id"] == grids.at[grid_id, "branch_id"]]
    rows = []
    for kpi in figures.kpis:
        if kpi.key not in COMPARED:
            continue
        row: dict[str, object] = {"kpi": kpi, "value": grids.at[grid_id, kpi.key]}
        for scope, frame in (("branch", branch), ("city", grids)):
            values = frame[kpi.key].astype(float)
            std = values.std(ddof=0)
            row[f"{scope}_rank"] = int(values.rank(ascending=False, method="min")[grid_id]) \
                if pd.notna(values[grid_id]) else None
            row[f"{scope}_n"] = int(values.notna().sum())
            row[f"{scope}_mean"] = values.mean()
            row[f"{scope}_z"] = (values[grid_id] - values.mean()) / std if std > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def community_targets(layers: PlanLayers, tables: Tables | None, grid_id: str,
                      target_penetration: float) -> pd.DataFrame | None:
    """The grid's communities in the order to work them (see :data:`SCORING`), with the
    households each still holds to win to the target penetration."""
    ranked = ranked_communities(layers, tables, "main_grid", grid_id)
    if ranked is None:
        return None
    hh = ranked["households"].astype(float)
    pen = ranked["penetration"].astype(float) if "penetration" in ranked else np.nan
    return ranked.assign(headroom=(target_penetration * hh - pen * hh).clip(lower=0))


# -- charts --------------------------------------------------------------------------------
HIGHLIGHT = "#c0392b"
BRANCH_COLOUR = "#1f4e79"
CITY_COLOUR = "#bdbdbd"


def draw_comparison(ax: Axes, figures: Figures, grid_id: str, kpi: Kpi) -> None:
    """One KPI of every main grid as dots on a line: the city grey, the branch blue, this
    grid red, so the page shows at a glance where the grid stands."""
    grids = figures.grids
    values = grids[kpi.key].astype(float)
    scale = 100.0 if kpi.percent else 1.0
    mine = grids["branch_id"] == grids.at[grid_id, "branch_id"]
    rng = np.random.default_rng(0)  # jitter only spreads the dots; same picture every run
    for mask, colour, y in ((~mine, CITY_COLOUR, 0.0), (mine, BRANCH_COLOUR, 1.0)):
        v = values[mask].dropna() * scale
        ax.scatter(v, y + rng.uniform(-0.15, 0.15, len(v)), s=12, color=colour, zorder=2)
    if pd.notna(values[grid_id]):
        ax.scatter([values[grid_id] * scale], [1.0], s=60, color=HIGHLIGHT, zorder=3,
                   edgecolor="black")
    ax.set_yticks([0, 1], ["other branches", "branch"], fontsize=7)
    ax.set_ylim(-0.6, 1.6)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(kpi.label, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def comparison_png(figures: Figures, grid_id: str) -> str:
    """The charts of :data:`COMPARED` as a PNG ``data:`` URI (the page stays one file)."""
    kpis = [k for k in figures.kpis if k.key in COMPARED]
    with print_style():
        fig = Figure(figsize=(9, 1.5 * ((len(kpis) + 1) // 2)), dpi=90)
        axes = fig.subplots((len(kpis) + 1) // 2, 2, squeeze=False).ravel()
        for ax, kpi in zip(axes, kpis, strict=False):
            draw_comparison(ax, figures, grid_id, kpi)
        for ax in axes[len(kpis):]:
            ax.set_axis_off()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# -- pages ---------------------------------------------------------------------------------
def page_name(grid_id: str, suffix: str) -> str:
    """The file name of a grid's page: its id made safe (no ``/``, ``..`` or control
    characters can leave the folder)."""
    return f"{safe_filename(grid_id)}.{suffix}"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def _kpi_rows(figures: Figures, grid_id: str) -> list[dict[str, str]]:
    grids, city = figures.grids, figures.city
    branch = grids[grids["branch_id"] == grids.at[grid_id, "branch_id"]]
    rows = []
    for kpi in figures.kpis:
        branch_value = (branch[kpi.key].sum() if kpi.additive
                        else _ratios(pd.DataFrame([branch.sum(numeric_only=True)])).iloc[0][
                            kpi.key])
        rows.append({"key": kpi.key, "label": kpi.label, "grid": kpi.text(grids.at[grid_id,
                     kpi.key]), "branch": kpi.text(branch_value),
                     "city": kpi.text(city.get(kpi.key, np.nan))})
    return rows


def _comparison_rows(figures: Figures, grid_id: str) -> list[dict[str, str]]:
    rows = []
    for r in comparisons(figures, grid_id).itertuples(index=False):
        rows.append({
            "label": r.kpi.label, "value": r.kpi.text(r.value),
            "branch_rank": "–" if r.branch_rank is None else f"{r.branch_rank} of {r.branch_n}",
            "branch_z": as_text([r.branch_z], "+.2f")[0],
            "city_rank": "–" if r.city_rank is None else f"{r.city_rank} of {r.city_n}",
            "city_z": as_text([r.city_z], "+.2f")[0],
        })
    return rows


#: Columns of the community list: (label with unit, column, format).
COMMUNITY_COLUMNS = (
    ("Rank", "rank", "d"), ("Community", "name", ""), ("Households", "households", ",.0f"),
    ("Owner-occupied (%)", "owner_occupied_share", ".0%"), ("Built (year)", "build_year", ""),
    ("Entry threshold (1-5)", "entry_threshold", ""), ("Value score (households)",
                                                       "value_score", ",.0f"),
    ("Penetration (%)", "penetration", ".0%"), ("Headroom (households)", "headroom", ",.0f"),
)
#: Columns of the staff table.
STAFF_COLUMNS = (
    ("Person", "person_id", ""), ("Name", "name", ""), ("Role", "role", ""),
    ("Sub-grid", "sub_grid_id", ""),
    ("Hours (h/month)", "hours", ",.0f"), ("Workload (h/month)", "workload_hours", ",.1f"),
    ("Travel (km)", "travel_km", ",.1f"), ("Moved", "moved", ""),
)


def _table(frame: pd.DataFrame | None, columns: tuple[tuple[str, str, str], ...]
           ) -> dict[str, list] | None:
    """``frame`` as header and rows of text (the columns it has), for page and print."""
    if frame is None:
        return None
    present = [(label, col, fmt) for label, col, fmt in columns if col in frame]
    rows = [list(r) for r in zip(*(as_text(frame[col], fmt) for _, col, fmt in present),
                                 strict=True)] if len(frame) else []
    return {"header": [label for label, _, _ in present], "rows": rows}


@dataclass(frozen=True)
class GridPage:
    """What one grid's page and print show, as text."""

    grid_id: str
    branch_id: str
    kpis: list[dict[str, str]]
    comparisons: list[dict[str, str]]
    communities: dict[str, list] | None
    staff: dict[str, list] | None


def grid_page(layers: PlanLayers, figures: Figures, grid_id: str, tables: Tables | None,
              staff: pd.DataFrame | None) -> GridPage:
    """The text of one grid's page."""
    targets = community_targets(layers, tables, grid_id, figures.target_penetration)
    people = None
    if staff is not None:
        people = staff[staff["main_grid_id"] == grid_id].sort_values(["role", "person_id"])
        if "moved" in people:
            moved = people["moved"].astype(str).str.lower().isin(("true", "1", "yes"))
            people = people.assign(moved=moved.map({True: "yes", False: "no"}))
    return GridPage(grid_id, str(figures.grids.at[grid_id, "branch_id"]),
                    _kpi_rows(figures, grid_id), _comparison_rows(figures, grid_id),
                    _table(targets, COMMUNITY_COLUMNS), _table(people, STAFF_COLUMNS))


def grid_html(layers: PlanLayers, figures: Figures, page: GridPage, tables: Tables | None,
              *, online_tiles: bool = True, pdf: bool = True) -> str:
    """One grid's self-contained page: its field map embedded (``srcdoc``: Leaflet
    inlined, no request), its figures, comparisons, communities and staff."""
    from territory.maps import field_map  # folium: imported when a page is drawn
    from territory.offline import offline_html

    map_html = offline_html(field_map(layers, page.grid_id, tables, online_tiles=online_tiles))
    return _environment().get_template("grid.html.j2").render(
        page=page, plan=layers.plan, map_html=map_html, scoring=SCORING,
        target=f"{figures.target_penetration:.0%}", chart=comparison_png(figures, page.grid_id),
        pdf=quote(page_name(page.grid_id, "pdf")) if pdf else None)


def _print_table(ax: Axes, title: str, header: list[str], rows: list[list[str]],
                 font: float = 7.0) -> None:
    ax.set_axis_off()
    ax.set_title(title, fontsize=10, fontweight="bold", loc="left")
    if not rows:
        ax.text(0, 0.9, "none", fontsize=font, transform=ax.transAxes)
        return
    table = ax.table(cellText=rows, colLabels=header, loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(font)
    table.auto_set_column_width(list(range(len(header))))


def write_pdf(layers: PlanLayers, figures: Figures, page: GridPage, tables: Tables | None,
              path: Path) -> Path:
    """The grid's printable analysis (landscape A4): its map page, then its figures and
    comparisons, then its communities and staff. Written atomically."""
    with print_style(), atomic_path(path) as tmp, PdfPages(tmp) as pdf:
        pdf.savefig(grid_figure(layers, page.grid_id, tables, paper="A4"))
        fig = Figure(figsize=PAPER["A4"])
        fig.suptitle(f"Main grid {page.grid_id} · branch {page.branch_id}: figures",
                     fontsize=13, fontweight="bold", x=0.02, ha="left")
        left = fig.add_axes((0.02, 0.05, 0.45, 0.85))
        _print_table(left, "Key figures", ["Figure", "This grid", "Branch", "City"],
                     [[r["label"], r["grid"], r["branch"], r["city"]] for r in page.kpis])
        right = fig.add_axes((0.52, 0.55, 0.46, 0.35))
        _print_table(right, "Compared with the branch and the city",
                     ["Figure", "Value", "Rank in branch", "z", "Rank in city", "z"],
                     [[r["label"].split(" (")[0], r["value"], r["branch_rank"], r["branch_z"],
                       r["city_rank"], r["city_z"]] for r in page.comparisons], 6.5)
        compared = [k for k in figures.kpis if k.key in COMPARED][:4]
        for i, kpi in enumerate(compared):
            ax = fig.add_axes((0.55 + 0.23 * (i % 2), 0.08 + 0.2 * (1 - i // 2), 0.18, 0.12))
            draw_comparison(ax, figures, page.grid_id, kpi)
        pdf.savefig(fig)
        if page.communities is not None or page.staff is not None:
            fig = Figure(figsize=PAPER["A4"])
            fig.suptitle(f"Main grid {page.grid_id}: communities and staff", fontsize=13,
                         fontweight="bold", x=0.02, ha="left")
            for table, title, limit, box in (
                (page.communities, "Communities by value", PRINTED_COMMUNITIES,
                 (0.02, 0.47, 0.96, 0.43)),
                (page.staff, "Staff", PRINTED_STAFF, (0.02, 0.03, 0.96, 0.36)),
            ):
                if table is not None:
                    more = len(table["rows"]) - limit
                    _print_table(fig.add_axes(box), title + (
                        f" (first {limit}; {more} more on the HTML page)" if more > 0 else ""),
                        table["header"], table["rows"][:limit], 6.5)
            pdf.savefig(fig)
    return path


def write_reports(plan: Plan | PlanLayers, out_dir: str | Path, tables: Tables | None = None,
                  staff: pd.DataFrame | None = None, *,
                  target_penetration: float = TARGET_PENETRATION, online_tiles: bool = True,
                  pdf: bool = True, progress: Callable[[int, int], None] | None = None
                  ) -> list[Path]:
    """Write every main grid's page (``<id>.html``) and, with ``pdf``, its print
    (``<id>.pdf``; embedding the Chinese font makes it the slow part) and the city's
    ``index.html`` into ``out_dir``; return the files written (index last).

    ``tables`` are the point tables (WGS84 ``lng``/``lat``) by name, ``staff`` a staff
    allocation (:func:`read_staff`). ``progress(done, total)`` is told after each grid.
    """
    layers = PlanLayers.of(plan)
    figures = grid_figures(layers, tables, staff, target_penetration=target_penetration)
    out = Path(out_dir)
    written: list[Path] = []
    ids = list(figures.grids.index)
    for done, grid_id in enumerate(ids, 1):
        page = grid_page(layers, figures, grid_id, tables, staff)
        html = grid_html(layers, figures, page, tables, online_tiles=online_tiles, pdf=pdf)
        written.append(write_text(out / page_name(grid_id, "html"), html))
        if pdf:
            written.append(write_pdf(layers, figures, page, tables,
                                     out / page_name(grid_id, "pdf")))
        log.debug("report of main grid %s written", grid_id)
        if progress is not None:
            progress(done, len(ids))
    written.append(write_text(out / "index.html", index_html(layers, figures, pdf=pdf)))
    return written


#: KPIs the city page lists for every grid (the grid pages have them all).
INDEX_KPIS = ("subscribers", "households", "penetration", "revenue_cny", "arpu_cny", "staff",
              "workload_per_staff_h", "area_km2", "headroom")


def index_html(layers: PlanLayers, figures: Figures, *, pdf: bool = True) -> str:
    """The city's page: its figures and every main grid's, each linked to its page (and
    to its PDF, with ``pdf``)."""
    kpis = [k for k in figures.kpis if k.key in INDEX_KPIS]
    grids = [{"id": gid, "href": quote(page_name(gid, "html")),
              "pdf": quote(page_name(gid, "pdf")) if pdf else None, "branch": row["branch_id"],
              "values": [k.text(row[k.key]) for k in kpis]}
             for gid, row in figures.grids.iterrows()]
    city = [{"key": k.key, "label": k.label, "value": k.text(figures.city.get(k.key, np.nan))}
            for k in figures.kpis]
    outside = {key.replace("_", " "): f"{figures.city[key]:,.0f}"
               for key in ("customers_outside", "key_accounts_outside", "staff_unassigned")
               if key in figures.city and figures.city[key] > 0}
    return _environment().get_template("index.html.j2").render(
        plan=layers.plan, kpis=kpis, grids=grids, city=city, outside=outside,
        target=f"{figures.target_penetration:.0%}")
