"""Printable maps (PNG and PDF, landscape A4/A3 at 200 dpi) of the city and of one grid.

A grid manager pins the map of the grid on the office wall and hands a copy to each team
member; a planner takes the city map to the meeting where the plan is approved. Paper needs
what a screen does not: a title, a scale bar, a north arrow, a legend and the grid's key
figures printed beside the map. Maps are drawn in the local UTM zone
(:func:`territory.crs.local_projected_crs`) so that the scale bar is true in metres; in a
city-sized area UTM grid north is within about a degree of true north, which is what the
north arrow shows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import matplotlib.patheffects as pe
import numpy as np
import pandas as pd
import pyproj
import shapely
from matplotlib import font_manager, rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from territory.atomic import atomic_path
from territory.crs import local_projected_crs
from territory.errors import InvalidInputError
from territory.mapdata import (
    COMMUNITY_COLOUR,
    KEY_ACCOUNT_COLOUR,
    LEVEL_NAME,
    LINE_COLOUR,
    NEIGHBOUR_GREY,
    ONE_NAME,
    STORE_COLOUR,
    PlanLayers,
    Tables,
    as_text,
    key_figures,
    ranked_communities,
)
from territory.plan import LEVELS, Plan

#: Landscape page sizes in inches (ISO 216: A4 297 x 210 mm, A3 420 x 297 mm).
PAPER = {"A4": (297 / 25.4, 210 / 25.4), "A3": (420 / 25.4, 297 / 25.4)}
DPI = 200
#: Fonts tried for Chinese names, in order, when installed (matplotlib falls back glyph by
#: glyph from DejaVu Sans to these).
CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC")
#: Line width (points on paper) of each level's boundaries.
PRINT_LINE = {"branch": 2.2, "main_grid": 1.1, "sub_grid": 0.4}
_HALO = [pe.withStroke(linewidth=2.5, foreground="white")]
_TOP_COMMUNITIES = 10


def _fonts() -> list[str]:
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[f for f in CJK_FONTS if f in installed]]


def _printable(text: object, fallback: object) -> str:
    """``text``, or ``fallback`` when it needs glyphs no installed font has (Chinese names on
    a machine without a CJK font print as empty boxes otherwise)."""
    s = str(text)
    return s if s.isascii() or len(_fonts()) > 1 else str(fallback)


def _page(paper: str, dpi: int) -> tuple[Figure, Axes, Axes, float]:
    """A landscape page: the map on the left, a panel for legend and figures on the right;
    and the font scale (1 on A4)."""
    if paper not in PAPER:
        raise InvalidInputError(f"paper={paper!r}: choose one of {list(PAPER)}")
    size = PAPER[paper]
    scale = size[0] / PAPER["A4"][0]
    fig = Figure(figsize=size, dpi=dpi)
    fig.set_layout_engine(None)
    map_ax = fig.add_axes((0.02, 0.04, 0.68, 0.84))
    panel = fig.add_axes((0.72, 0.04, 0.26, 0.84))
    panel.set_axis_off()
    for ax in (map_ax, panel):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, map_ax, panel, scale


def _nice_length(span_m: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^n metres) near a fifth of the map width."""
    target = span_m / 5
    base = 10 ** math.floor(math.log10(target))
    return max(m * base for m in (1, 2, 5) if m * base <= target)


def scale_bar(ax: Axes, scale: float) -> float:
    """A four-segment black and white scale bar in the lower left of a map drawn in metres;
    returns its length in metres."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    length = _nice_length(x1 - x0)
    left, bottom, height = x0 + 0.04 * (x1 - x0), y0 + 0.04 * (y1 - y0), 0.008 * (y1 - y0)
    for i in range(4):
        ax.add_patch(Rectangle((left + i * length / 4, bottom), length / 4, height,
                               facecolor="black" if i % 2 == 0 else "white",
                               edgecolor="black", linewidth=0.6, zorder=10))
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    for x, text in ((left, "0"), (left + length, label)):
        ax.text(x, bottom + 1.8 * height, text, ha="center", va="bottom", zorder=10,
                fontsize=7 * scale, path_effects=_HALO)
    return length


def north_arrow(ax: Axes, scale: float) -> None:
    """An arrow pointing up (UTM grid north) with an N, in the map's upper right."""
    ax.annotate("N", xy=(0.95, 0.96), xytext=(0.95, 0.86), xycoords="axes fraction",
                ha="center", va="center", fontsize=11 * scale, fontweight="bold", zorder=10,
                arrowprops={"facecolor": "black", "width": 3 * scale, "headwidth": 10 * scale,
                            "headlength": 10 * scale}, path_effects=_HALO)


def _figures_text(panel: Axes, top: float, rows: list[tuple[str, str]], title: str,
                  scale: float) -> float:
    """Label/value rows under a heading from ``top`` (axes fraction); returns the y below."""
    step = 0.028 * scale ** -0.3
    panel.text(0, top, title, fontsize=10 * scale, fontweight="bold", va="top")
    y = top - 1.3 * step
    for label, value in rows:
        panel.text(0, y, label, fontsize=7.5 * scale, va="top")
        panel.text(1, y, value, fontsize=7.5 * scale, va="top", ha="right", fontweight="bold")
        y -= step
    return y - 0.5 * step


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf, each through a temporary file and a rename."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=fig.dpi)
        written.append(path)
    return written


def _fit(ax: Axes, bounds: np.ndarray, margin: float = 0.06) -> None:
    """Show ``bounds`` (projected) with a margin, at the aspect of the axes box."""
    minx, miny, maxx, maxy = bounds
    w, h = (maxx - minx) * (1 + 2 * margin), (maxy - miny) * (1 + 2 * margin)
    box = ax.get_position()
    fig_w, fig_h = ax.figure.get_size_inches()
    aspect = (box.width * fig_w) / (box.height * fig_h)
    w, h = max(w, h * aspect), max(h, w / aspect)
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    ax.set_xlim(cx - w / 2, cx + w / 2)
    ax.set_ylim(cy - h / 2, cy + h / 2)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("")
    ax.set_ylabel("")


def _labels(ax: Axes, table: gpd.GeoDataFrame, size: float) -> None:
    for gid, geom in zip(table["grid_id"], table.geometry, strict=True):
        p = geom.representative_point()
        ax.text(p.x, p.y, gid, ha="center", va="center", fontsize=size, zorder=6,
                path_effects=_HALO)


def _header(fig: Figure, title: str, plan: Plan, utm: str, scale: float) -> None:
    fig.text(0.02, 0.965, title, fontsize=16 * scale, fontweight="bold", va="top")
    fig.text(0.02, 0.915, f"plan {plan.plan_id} v{plan.version} · {plan.created} · "
             f"drawn in {utm}", fontsize=8 * scale, va="top", color="#444444")


def _city_figures(layers: PlanLayers) -> list[tuple[str, str]]:
    plan = layers.plan
    rows = [(LEVEL_NAME[lv], f"{len(layers.kpis(lv)):,}") for lv in LEVELS]
    branches = layers.kpis("branch")
    totals = branches.sum(numeric_only=True)
    for label, col, fmt in (("Subscribers", "subscribers", ",.0f"),
                            ("Households", "households", ",.0f"),
                            ("Workload (h/month)", "workload", ",.0f"),
                            ("Staff", "staff", ",.1f")):
        if col in totals:
            rows.append((label, format(totals[col], fmt)))
    if {"subscribers", "households"} <= set(totals.index) and totals["households"] > 0:
        rows.append(("Penetration", f"{totals['subscribers'] / totals['households']:.1%}"))
    for lv in ("main_grid", "sub_grid"):
        table = layers.kpis(lv)
        for m in plan.measures:
            rows.append((f"Max |dev| {m}, {LEVEL_NAME[lv].lower()}",
                         f"{table[f'dev_{m}'].abs().max():.1%}"))
    return rows


def _projected(frame: pd.DataFrame, crs: pyproj.CRS) -> gpd.GeoSeries:
    return gpd.GeoSeries(gpd.points_from_xy(frame["lng"], frame["lat"]), crs=4326).to_crs(crs)


def print_city(plan: Plan | PlanLayers, stem: str | Path, tables: Tables | None = None, *,
               paper: str = "A3", dpi: int = DPI) -> list[Path]:
    """The city on one landscape page: main grids coloured (neighbours differ) and labelled,
    sub-grid, main-grid and branch boundaries by weight, stores when ``tables`` has them,
    and the plan's key figures. Writes ``stem.png`` and ``stem.pdf``."""
    layers = PlanLayers.of(plan)
    with _rc():
        fig, ax, panel, scale = _page(paper, dpi)
        mains = layers.kpis("main_grid")
        b = mains.total_bounds
        utm = local_projected_crs([b[0], b[2]], [b[1], b[3]])
        mains = mains.to_crs(utm)
        mains.plot(ax=ax, color=mains["colour"], linewidth=0, alpha=0.75)
        for lv in ("sub_grid", "main_grid", "branch"):
            layers.kpis(lv).to_crs(utm).boundary.plot(ax=ax, color=LINE_COLOUR,
                                                      linewidth=PRINT_LINE[lv])
        _fit(ax, mains.total_bounds, 0.03)
        _labels(ax, mains, 4.5 * scale)
        handles = [Line2D([], [], color=LINE_COLOUR, linewidth=PRINT_LINE[lv],
                          label=f"{ONE_NAME[lv]} boundary") for lv in LEVELS]
        stores = layers.placed(tables, "stores")
        if stores is not None:
            pts = _projected(stores, utm)
            ax.scatter(pts.x, pts.y, marker="s", s=30 * scale, color=STORE_COLOUR,
                       edgecolor="white", linewidth=0.8, zorder=7)
            handles.append(Line2D([], [], marker="s", linestyle="", color=STORE_COLOUR,
                                  label="Store"))
        scale_bar(ax, scale)
        north_arrow(ax, scale)
        _header(fig, "Grid plan: main grids", layers.plan, utm.name, scale)
        panel.legend(handles=handles, loc="upper left", frameon=False, fontsize=8 * scale,
                     title="Legend", title_fontproperties={"weight": "bold",
                                                           "size": 10 * scale})
        _figures_text(panel, 0.72, _city_figures(layers), "Key figures", scale)
        panel.text(0, 0.0, "Fill colours only separate neighbouring main grids.",
                   fontsize=7 * scale, color="#444444", va="bottom")
        return _save(fig, Path(stem))


def print_grid(plan: Plan | PlanLayers, grid_id: str, stem: str | Path,
               tables: Tables | None = None, *, paper: str = "A4", dpi: int = DPI
               ) -> list[Path]:
    """One grid on a landscape page for its team (see :func:`grid_figure`). Writes
    ``stem.png`` and ``stem.pdf``."""
    with _rc():
        return _save(grid_figure(plan, grid_id, tables, paper=paper, dpi=dpi), Path(stem))


def grid_figure(plan: Plan | PlanLayers, grid_id: str, tables: Tables | None = None, *,
                paper: str = "A4", dpi: int = DPI) -> Figure:
    """The page of :func:`print_grid`: the grid with its child grids coloured and labelled,
    neighbours grey, communities numbered by value rank, key accounts and stores, the key
    figures and the top communities. Draw and save it inside :func:`print_style` (the
    fonts are chosen when the text is made, the PDF font type when it is saved)."""
    layers = PlanLayers.of(plan)
    level = layers.level_of(grid_id)
    fig, ax, panel, scale = _page(paper, dpi)
    table = layers.kpis(level)
    grid = table[table["grid_id"] == grid_id]
    b = grid.total_bounds
    utm = local_projected_crs([b[0], b[2]], [b[1], b[3]])
    grid_utm = grid.to_crs(utm)
    neighbours = table[table["grid_id"].isin(layers.neighbours(level)[grid_id])].to_crs(utm)
    if len(neighbours):
        neighbours.plot(ax=ax, color=NEIGHBOUR_GREY, edgecolor="white", linewidth=0.8)
    child = LEVELS[LEVELS.index(level) + 1] if level != LEVELS[-1] else None
    if child:
        kids = layers.kpis(child)
        kids = kids[kids["parent_id"] == grid_id].to_crs(utm)
        kids.plot(ax=ax, color=kids["colour"], edgecolor=LINE_COLOUR,
                  linewidth=PRINT_LINE[child], alpha=0.8)
    else:
        grid_utm.plot(ax=ax, color=grid_utm["colour"], alpha=0.8)
    grid_utm.boundary.plot(ax=ax, color=LINE_COLOUR, linewidth=PRINT_LINE["branch"])
    _fit(ax, grid_utm.total_bounds)
    if len(neighbours):
        _labels(ax, neighbours.set_geometry(neighbours.geometry.intersection(
            _view_box(ax))), 6 * scale)
    if child:
        _labels(ax, kids, 8 * scale)
    handles = [Patch(facecolor=NEIGHBOUR_GREY, label="Neighbouring grid"),
               Line2D([], [], color=LINE_COLOUR, linewidth=PRINT_LINE["branch"],
                      label=f"{ONE_NAME[level]} boundary")]
    if child:
        handles.append(Line2D([], [], color=LINE_COLOUR, linewidth=PRINT_LINE[child],
                              label=f"{ONE_NAME[child]} boundary"))
    handles += _grid_points(ax, layers, tables, level, grid_id, utm, scale)
    scale_bar(ax, scale)
    north_arrow(ax, scale)
    _header(fig, f"{ONE_NAME[level]} {grid_id}", layers.plan, utm.name, scale)
    panel.legend(handles=handles, loc="upper left", frameon=False, fontsize=8 * scale,
                 title="Legend", title_fontproperties={"weight": "bold",
                                                       "size": 10 * scale})
    figures = key_figures(grid, level, layers.plan.measures).iloc[0]
    y = _figures_text(panel, 0.68, list(figures.items())[1:], "Key figures", scale)
    communities = ranked_communities(layers, tables, level, grid_id)
    if communities is not None and len(communities):
        top = communities.head(_TOP_COMMUNITIES)
        names = top["name"] if "name" in top else top.index
        ids = top["community_id"] if "community_id" in top else top.index
        rows = [(f"{rank}. {_printable(name, cid)}", f"{hh} hh · {pen}")
                for rank, name, cid, hh, pen in zip(
                    top["rank"], names, ids, as_text(top["households"], ",.0f"),
                    as_text(top["penetration"], ".0%"), strict=True)]
        _figures_text(panel, y, rows, "Top communities by value", scale)
    return fig


def _view_box(ax: Axes) -> shapely.Polygon:
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    return shapely.box(x0, y0, x1, y1)


def _grid_points(ax: Axes, layers: PlanLayers, tables: Tables | None, level: str,
                 grid_id: str, utm: pyproj.CRS, scale: float) -> list[Line2D]:
    """Draw the grid's communities, key accounts and stores; return their legend handles."""
    handles = []
    communities = ranked_communities(layers, tables, level, grid_id)
    if communities is not None and len(communities):
        pts = _projected(communities, utm)
        ax.scatter(pts.x, pts.y, s=70 * scale, color=COMMUNITY_COLOUR, edgecolor="white",
                   linewidth=0.6, zorder=8)
        for x, y, rank in zip(pts.x, pts.y, communities["rank"], strict=True):
            ax.text(x, y, str(rank), color="white", fontsize=5 * scale, ha="center",
                    va="center", fontweight="bold", zorder=9)
        handles.append(Line2D([], [], marker="o", linestyle="", color=COMMUNITY_COLOUR,
                              label="Community (number: value rank)"))
    for name, marker, colour, label in (
        ("key_accounts", "D", KEY_ACCOUNT_COLOUR, "Key account"),
        ("stores", "s", STORE_COLOUR, "Store"),
    ):
        points = layers.placed(tables, name)
        if points is None:
            continue
        inside = points[points[f"{level}_id"] == grid_id]
        if len(inside):
            pts = _projected(inside, utm)
            ax.scatter(pts.x, pts.y, marker=marker, s=45 * scale, color=colour,
                       edgecolor="white", linewidth=0.8, zorder=8)
            handles.append(Line2D([], [], marker=marker, linestyle="", color=colour,
                                  label=label))
    return handles


def _quiet_weight_fallback(record: logging.LogRecord) -> bool:
    return "Failed to find font weight" not in record.getMessage()


@contextmanager
def _rc() -> Iterator[None]:
    """Fonts with Chinese glyph fallback (embedded as TrueType in PDFs) and no mathtext
    (``$`` in a grid id or a name is text, not a formula that fails to parse), for this
    drawing only: a library must not change the caller's matplotlib settings. CJK fonts often come
    in one weight (WenQuanYi Zen Hei: 500); matplotlib's warning that it used that weight
    for normal or bold text is dropped meanwhile, as the library does not print."""
    log = logging.getLogger("matplotlib.font_manager")
    log.addFilter(_quiet_weight_fallback)
    try:
        with rc_context({"font.family": _fonts(), "pdf.fonttype": 42,
                         "text.parse_math": False}):
            yield
    finally:
        log.removeFilter(_quiet_weight_fallback)


#: The drawing context of every printed page (fonts with Chinese glyphs, TrueType in PDFs),
#: for pages other modules draw (:mod:`territory.reports`): enter it before the figure is
#: made and stay in it until it is saved.
print_style = _rc
