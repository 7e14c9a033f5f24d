"""Interactive maps of a plan (folium/Leaflet) for planners and field teams.

* :func:`overview_map`: the whole city. The grids of one level at a time are filled (a radio
  choice in the layer control, main grids first), each coloured so that no two neighbours
  share a colour; branch and main-grid boundaries are drawn on top (thicker for branches) so
  the hierarchy stays visible whichever level is filled. Hovering a grid shows its key
  figures. Stores, key accounts and communities are marker layers (clustered where
  many) and customers a heat layer.
* :func:`choropleth_map`: the same, the chosen level filled by a classed colour scale of one
  measure, balance deviation by default, so a planner sees at once which grids are heavy.
* :func:`field_map`: one grid for its team: its sub-grids, its neighbours in grey, its
  communities ranked by value, its key accounts and its store, zoomed to fit.

Every map works offline (:mod:`territory.offline` inlines Leaflet and the plugins); the
online base map is a layer that is off until the user ticks it, so a map opened without
internet shows everything it has. Grid geometry is simplified as a coverage for drawing
(:meth:`territory.mapdata.PlanLayers.display`), which keeps a city's overview small.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import folium
import geopandas as gpd
import mapclassify
import numpy as np
import pandas as pd
import shapely
from folium.map import Layer
from folium.plugins import FastMarkerCluster, HeatMap
from folium.template import Template
from matplotlib import colormaps
from matplotlib.colors import to_hex

from territory.crs import local_projected_crs
from territory.errors import InvalidInputError
from territory.filenames import safe_filename
from territory.mapdata import (
    COMMUNITY_COLOUR,
    DECIMALS,
    KEY_ACCOUNT_COLOUR,
    LEVEL_NAME,
    LINE_COLOUR,
    NEIGHBOUR_GREY,
    ONE_NAME,
    PlanLayers,
    Tables,
    as_text,
    key_figures,
    ranked_communities,
)
from territory.offline import leaflet_only, save_map
from territory.plan import LEVELS, Plan
from territory.printmaps import print_city

#: Boundary line weight (pixels) per level: the coarser the level, the thicker the line.
LINE_WEIGHT = {"branch": 4.0, "main_grid": 2.0, "sub_grid": 0.8}
#: Customers drawn in the heat layer at most (a random sample beyond): the heat shape is
#: the same and the page stays light.
MAX_HEAT_POINTS = 10_000
#: Clustering stops at this zoom level: street scale, where every point should be seen.
UNCLUSTER_ZOOM = 16
MAX_ZOOM = 19
#: A shop front drawn in SVG: no icon font or CJK glyph needed on the viewing device.
STORE_SVG = (
    '<svg width="20" height="20" viewBox="0 0 20 20"><rect x="1" y="1" width="18" height="18"'
    ' rx="3" fill="#c0392b" stroke="#fff" stroke-width="2"/>'
    '<path d="M5 9.5 10 5l5 4.5V15H5z" fill="#fff"/></svg>'
)
#: mapclassify schemes offered; Quantiles first because it is deterministic (NaturalBreaks
#: runs k-means from random starts) and shows how the grids spread.
CHOROPLETH_SCHEMES = ("Quantiles", "NaturalBreaks", "EqualInterval")
FIELD_TOLERANCE_M = 3.0

_CSS = """
<style>
.territory-box {position: fixed; z-index: 1000; background: rgba(255,255,255,0.93);
  padding: 8px 10px; border-radius: 4px; box-shadow: 0 1px 5px rgba(0,0,0,0.4);
  font: 12px/1.4 "Helvetica Neue", Arial, sans-serif; max-height: 45vh; overflow-y: auto;}
.territory-legend {bottom: 24px; right: 10px;}
.territory-info {bottom: 56px; left: 10px; max-width: 320px;}
.territory-box h4 {margin: 4px 0; font-size: 13px;}
.territory-box table {border-collapse: collapse;}
.territory-box td {padding: 0 6px 0 0; vertical-align: top;}
.territory-swatch {display: inline-block; width: 18px; height: 12px; margin-right: 6px;
  vertical-align: middle; border: 1px solid #555;}
.territory-line {display: inline-block; width: 22px; margin-right: 6px;
  vertical-align: middle; border-top-style: solid; border-color: #222;}
.territory-dot {display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin: 0 10px 0 4px; vertical-align: middle;}
.territory-box summary {font-weight: bold; font-size: 13px; cursor: pointer;}
.territory-rank {background: #6a3d9a; color: #fff; border: 1px solid #fff;
  border-radius: 50%; font: bold 10px/18px Arial, sans-serif; text-align: center;
  box-shadow: 0 0 2px #000;}
.territory-label {font: bold 12px Arial, sans-serif; color: #111; white-space: nowrap;
  text-shadow: 0 0 3px #fff, 0 0 3px #fff;}
</style>
"""


# -- building blocks ---------------------------------------------------------------------
def _base_map(bounds: Sequence[float], online_tiles: bool) -> folium.Map:
    """An empty map fitted to ``bounds`` (minx, miny, maxx, maxy) with offline assets only."""
    # markercluster needs the map's maxZoom, which a tile layer would otherwise give
    m = leaflet_only(folium.Map(tiles=None, control_scale=True, maxZoom=MAX_ZOOM))
    m.fit_bounds([[bounds[1], bounds[0]], [bounds[3], bounds[2]]])
    m.get_root().header.add_child(folium.Element(_CSS), name="territory_css")
    if online_tiles:
        folium.TileLayer("OpenStreetMap", name="Base map (online)", overlay=True,
                         show=False).add_to(m)
    return m


#: Characters escaped on top of ``html.escape``'s: see :func:`html_text`.
_MORE = str.maketrans({"{": "&#123;", "}": "&#125;", "/": "&#47;"})


def html_text(value: object) -> str:
    """``value`` as text in a map page; every name, id and label the operator supplied
    enters the page through here (or as a number).

    HTML's ``&<>"'`` are escaped, so Leaflet's ``innerHTML`` (tooltips, popups, the layer
    control) shows markup as text. So are ``{`` and ``}``: folium compiles each element's
    rendered script once more as a Jinja template (branca's ``MacroElement.render``), where
    a name holding ``{{ … }}`` would be evaluated on the server. And ``/``, as OWASP's
    HTML-escaping rule has it: a name then never reads as an outside URL (``src=//host``)
    to :func:`territory.offline.inline_assets`, which refuses such pages.
    """
    return html.escape(str(value)).translate(_MORE)


def _features(table: gpd.GeoDataFrame, properties: pd.DataFrame) -> dict:
    """A FeatureCollection of ``table``'s geometry with the given (already escaped) text
    properties. Feature ids are row positions: an id is written into the page's scripts
    as it is, so a grid id, the operator's text, cannot be one."""
    frame = gpd.GeoDataFrame(properties.astype(str), geometry=table.geometry.values,
                             crs=table.crs)
    return frame.reset_index(drop=True).to_geo_dict(drop_id=False)


def html_figures(figures: pd.DataFrame) -> pd.DataFrame:
    """``figures`` with every label and value as :func:`html_text`: folium's
    ``GeoJsonTooltip`` writes both into the page with ``innerHTML``, and grid ids, parent
    ids and measure names are the operator's text."""
    out = figures.astype(str).map(html_text)
    out.columns = [html_text(c) for c in figures.columns]
    return out


def _grid_layer(table: gpd.GeoDataFrame, level: str, measures: list[str], *, name: str,
                fill: dict[str, str], show: bool, overlay: bool = False) -> folium.GeoJson:
    """Filled grids with a key-figures tooltip; ``fill`` maps grid id -> colour."""
    figures = html_figures(key_figures(table, level, measures))
    colours = table["grid_id"].map(fill).tolist()  # by feature id, the row position
    weight = LINE_WEIGHT[level]
    return folium.GeoJson(
        _features(table, figures),
        name=name, overlay=overlay, show=show,
        style_function=lambda f: {"fillColor": colours[int(f["id"])], "fillOpacity": 0.6,
                                  "color": LINE_COLOUR, "weight": weight},
        highlight_function=lambda f: {"fillOpacity": 0.85, "weight": weight + 1.5},
        tooltip=folium.GeoJsonTooltip(fields=list(figures.columns), sticky=True),
    )


class _BoundaryLayer(Layer):
    """Grid boundaries as lines, not interactive, so the filled level underneath keeps its
    tooltips. Drawn from the features of a fill layer already on the page when there is
    one (``source``), which saves sending a level's geometry twice."""

    _template = Template("""
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = L.geoJson({{ this.data }}, {interactive: false,
            style: {fill: false, color: {{ this.colour|tojson }}, weight: {{ this.weight }}}});
        {% endmacro %}
    """)

    def __init__(self, level: str, *, source: folium.GeoJson | None = None,
                 table: gpd.GeoDataFrame | None = None, weight: float | None = None) -> None:
        super().__init__(name=f"{LEVEL_NAME[level]}: boundaries", overlay=True, show=True)
        self._name = "BoundaryLayer"
        self.data = (f"{source.get_name()}.toGeoJSON({DECIMALS})" if source is not None
                     else json.dumps(_features(table, table[[]])))
        self.colour = LINE_COLOUR
        self.weight = LINE_WEIGHT[level] if weight is None else weight


class _Markup(folium.Element):
    """Finished HTML, put in the page as it is. A branca ``Element`` compiles its first
    argument as a Jinja template, so a grid id or a name holding ``{{ … }}`` in it would
    be evaluated on the server; here the markup is a value the template only prints."""

    def __init__(self, markup: str) -> None:
        super().__init__("{{ this.markup }}")
        self.markup = markup


def _html_box(m: folium.Map, css_class: str, title: str, body: str) -> None:
    """A box fixed over the map that folds away (a phone screen is small)."""
    m.get_root().html.add_child(_Markup(
        f'<details open class="territory-box {css_class}"><summary>{html_text(title)}'
        f"</summary>{body}</details>"))


def _legend(m: folium.Map, title: str, rows: Iterable[tuple[str, str]]) -> None:
    """A fixed legend box; ``rows`` are (symbol HTML, label)."""
    body = "".join(f"<tr><td>{sym}</td><td>{html_text(label)}</td></tr>" for sym, label in rows)
    _html_box(m, "territory-legend", title, f"<table>{body}</table>")


def _swatch(colour: str) -> str:
    return f'<span class="territory-swatch" style="background:{colour}"></span>'


def _line(level: str) -> str:
    return f'<span class="territory-line" style="border-top-width:{LINE_WEIGHT[level]}px"></span>'


def _dot(colour: str) -> str:
    return f'<span class="territory-dot" style="background:{colour}"></span>'


def _line_rows(levels: Iterable[str]) -> list[tuple[str, str]]:
    return [(_line(lv), f"{ONE_NAME[lv]} boundary") for lv in levels]


def _text(values: Iterable[object], fmt: str = "") -> list[str]:
    """Popup text: formatted and escaped (:func:`html_text`; names are the operator's)."""
    return [html_text(t) for t in as_text(values, fmt)]


class _PointLayer(Layer):
    """Points made in the browser by a JavaScript ``callback(row)`` from compact rows.

    folium's own ``Popup`` builds its content with jQuery, which offline maps do not carry,
    so point popups are bound here in plain Leaflet; and a row of a few values is much
    lighter than a folium marker per point.
    """

    _template = Template("""
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = (function () {
            var callback = {{ this.callback }};
            var data = {{ this.data|tojson }};
            var group = L.featureGroup();
            for (var i = 0; i < data.length; i++) { callback(data[i]).addTo(group); }
            return group;
        })();
        {% endmacro %}
    """)

    def __init__(self, data: list[list], callback: str, name: str, show: bool) -> None:
        super().__init__(name=name, overlay=True, control=True, show=show)
        self._name = "PointLayer"
        self.data = data
        self.callback = callback


def _point_rows(points: pd.DataFrame, fields: dict[str, tuple[str, str]],
                badge: Sequence[object] | None = None) -> list[list]:
    """``[lat, lng, badge, title, value…]`` per point, values as popup text."""
    title = points["name"] if "name" in points else pd.Series(points.index, index=points.index)
    columns = [points["lat"].round(6).tolist(), points["lng"].round(6).tolist(),
               _text(badge if badge is not None else [""] * len(points)), _text(title)]
    columns += [_text(points[col], fmt) if col in points else ["–"] * len(points)
                for col, fmt in fields.values()]
    return [list(row) for row in zip(*columns, strict=True)]


def _callback(fields: dict[str, tuple[str, str]], marker: str) -> str:
    """A callback building the marker (JS expression ``marker`` over ``ll`` and ``row``)
    and binding a popup of the title and labelled values."""
    labels = json.dumps(list(fields), ensure_ascii=False)
    return f"""function (row) {{
        var labels = {labels};
        var text = '<b>' + row[3] + '</b>';
        for (var i = 0; i < labels.length; i++) {{
            text += '<br>' + labels[i] + ': ' + row[i + 4];
        }}
        var ll = new L.LatLng(row[0], row[1]);
        return ({marker}).bindPopup(text);
    }}"""


def _circle_js(colour: str) -> str:
    return (f"L.circleMarker(ll, {{radius: 5, weight: 1, color: '#ffffff', "
            f"fillColor: '{colour}', fillOpacity: 0.9}})")


#: A marker showing ``row[2]`` (a rank) in a purple disc.
_RANK_JS = ("L.marker(ll, {icon: L.divIcon({className: 'territory-rank-icon', iconSize: [18, 18],"
            " iconAnchor: [9, 9], html: '<div class=\"territory-rank\">' + row[2] + '</div>'})})")


def _cluster(points: pd.DataFrame, *, name: str, fields: dict[str, tuple[str, str]],
             colour: str, show: bool) -> FastMarkerCluster:
    """Circle markers clustered in the browser (a city has thousands of communities)."""
    return FastMarkerCluster(_point_rows(points, fields), callback=_callback(fields,
                             _circle_js(colour)), name=name, show=show,
                             disableClusteringAtZoom=UNCLUSTER_ZOOM, chunkedLoading=True)


COMMUNITY_FIELDS = {"Households": ("households", ",.0f"), "Value score": ("value_score", ",.0f"),
                    "Penetration": ("penetration", ".1%"), "Built": ("build_year", "")}
KEY_ACCOUNT_FIELDS = {"Kind": ("kind", ""), "Employees": ("employees", ",.0f"),
                      "Subscribers": ("subscribers", ",.0f")}


class _Tooltip(folium.Tooltip):
    """A tooltip of plain text. folium's own puts its text in a JavaScript template literal,
    where ``${…}``, a backtick or a backslash in a store's name would run or break the
    script; this one escapes the text (:func:`html_text`) and hands it to Leaflet as a
    JSON string."""

    _template = Template("""
        {% macro script(this, kwargs) %}
        {{ this._parent.get_name() }}.bindTooltip({{ this.text|tojson }},
            {{ this.options|tojavascript }});
        {% endmacro %}
    """)

    def __init__(self, text: str) -> None:
        super().__init__(html_text(text))


def _store_marker(row: pd.Series, note: str = "") -> folium.Marker:
    label = str(row.get("name", row.get("store_id", "store")))
    kind = str(row.get("kind", "store")).replace("_", " ")
    return folium.Marker(
        [row["lat"], row["lng"]],
        icon=folium.DivIcon(html=STORE_SVG, icon_size=(20, 20),
                            icon_anchor=(10, 10), class_name="territory-store-icon"),
        tooltip=_Tooltip(f"{label} ({kind}){note}"),
    )


def _add_points(m: folium.Map, layers: PlanLayers, tables: Tables | None) -> list[tuple]:
    """Store, key-account, community and customer layers; returns their legend rows."""
    rows = []
    stores = layers.placed(tables, "stores")
    if stores is not None:
        group = folium.FeatureGroup(name="Stores", show=True)
        for _, row in stores.iterrows():
            _store_marker(row).add_to(group)
        group.add_to(m)
        rows.append((STORE_SVG, "Store"))
    key_accounts = layers.placed(tables, "key_accounts")
    if key_accounts is not None:
        _cluster(key_accounts, name="Key accounts", fields=KEY_ACCOUNT_FIELDS,
                 colour=KEY_ACCOUNT_COLOUR, show=True).add_to(m)
        rows.append((_dot(KEY_ACCOUNT_COLOUR), "Key account"))
    communities = layers.placed(tables, "communities")
    if communities is not None:
        _cluster(communities, name="Communities", fields=COMMUNITY_FIELDS,
                 colour=COMMUNITY_COLOUR, show=True).add_to(m)
        rows.append((_dot(COMMUNITY_COLOUR), "Community"))
    customers = (tables or {}).get("customers")
    if customers is not None and len(customers):
        pts = customers[["lat", "lng"]].dropna()
        if len(pts) > MAX_HEAT_POINTS:
            pts = pts.sample(MAX_HEAT_POINTS, random_state=0)
        HeatMap(pts.round(4).to_numpy().tolist(), name="Customers (heat)", show=False,
                radius=12, blur=15, min_opacity=0.3).add_to(m)
        rows.append(("", f"Customers: heat layer ({len(pts):,} shown)"))
    return rows


# -- the maps -----------------------------------------------------------------------------
def overview_map(plan: Plan | PlanLayers, tables: Tables | None = None, *,
                 online_tiles: bool = True) -> folium.Map:
    """The city: each level a choice of fill coloured so neighbours differ, boundaries of
    branches and main grids on top, key figures on hover, point layers from ``tables``
    (``stores``, ``key_accounts``, ``communities``, ``customers``; WGS84 ``lng``/``lat``)."""
    layers = PlanLayers.of(plan)
    measures = layers.plan.measures
    m = _base_map(layers.display("branch").total_bounds, online_tiles)
    fills = {}
    for level in LEVELS:
        table = layers.display(level)
        fill = dict(zip(table["grid_id"], table["colour"], strict=True))
        fills[level] = _grid_layer(table, level, measures, name=LEVEL_NAME[level], fill=fill,
                                   show=level == "main_grid").add_to(m)
    for level in ("main_grid", "branch"):
        _BoundaryLayer(level, source=fills[level]).add_to(m)
    rows = _add_points(m, layers, tables)
    folium.LayerControl(collapsed=False).add_to(m)
    _legend(m, f"Plan {layers.plan.plan_id} v{layers.plan.version}", [
        ("", "Fill: neighbouring grids never share a colour"), *_line_rows(LEVELS), *rows])
    return m


def classify(values: pd.Series, scheme: str = "Quantiles", k: int = 5
             ) -> tuple[np.ndarray, list[float]]:
    """Class of each value (-1 for NaN) and the classes' upper bounds by a mapclassify
    scheme, with at most as many classes as distinct values."""
    if scheme not in CHOROPLETH_SCHEMES:
        raise InvalidInputError(f"scheme={scheme!r}: choose one of {list(CHOROPLETH_SCHEMES)}")
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(v)
    classes = np.full(len(v), -1)
    distinct = np.unique(v[ok])
    if len(distinct) <= 1:
        classes[ok] = 0
        return classes, [float(b) for b in distinct]
    classifier = getattr(mapclassify, scheme)(v[ok], k=min(k, len(distinct)))
    classes[ok] = classifier.yb
    return classes, [float(b) for b in classifier.bins]


def class_colours(lows: list[float], highs: list[float], diverging: bool) -> list[str]:
    """A colour per class ``lows[i]..highs[i]``. Sequential measures step evenly through
    YlOrRd; deviations take the RdBu colour of the class's middle on a scale symmetric
    about 0, so the grids near balance are pale and the sign of a deviation is its hue."""
    if not highs:
        return []
    if not diverging:
        return [to_hex(c) for c in colormaps["YlOrRd"](np.linspace(0.1, 0.9, len(highs)))]
    mids = (np.array(lows) + np.array(highs)) / 2
    extent = max(abs(lows[0]), abs(highs[-1])) or 1.0
    return [to_hex(c) for c in colormaps["RdBu_r"](0.5 + 0.45 * mids / extent)]


def choropleth_map(plan: Plan | PlanLayers, measure: str | None = None, *,
                   level: str = "main_grid", scheme: str = "Quantiles", k: int = 5,
                   tables: Tables | None = None, online_tiles: bool = True) -> folium.Map:
    """Grids of ``level`` filled by classes of ``measure`` (any numeric grid column, e.g.
    ``dev_subscribers``, ``penetration``, ``staff``; default the deviation of the plan's
    first balanced measure from its parent's mean), with a classed legend."""
    layers = PlanLayers.of(plan)
    measure = measure or f"dev_{layers.plan.measures[0]}"
    table = layers.display(level)
    if measure not in table or not pd.api.types.is_numeric_dtype(table[measure]):
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        raise InvalidInputError(f"measure {measure!r} is not a numeric grid figure; choose one "
                                f"of {numeric}")
    classes, bins = classify(table[measure], scheme, k)
    lows = [float(np.nanmin(table[measure])), *bins[:-1]] if bins else []
    diverging = measure.startswith("dev_")
    colours = class_colours(lows, bins, diverging)
    fill = {g: colours[c] if c >= 0 else "#ffffff"
            for g, c in zip(table["grid_id"], classes, strict=True)}
    m = _base_map(table.total_bounds, online_tiles)
    # Leaflet's layer control writes layer names with innerHTML
    _grid_layer(table, level, layers.plan.measures,
                name=html_text(f"{LEVEL_NAME[level]}: {measure}"), fill=fill, show=True,
                overlay=True).add_to(m)
    coarser = list(LEVELS[: LEVELS.index(level)])
    for lv in coarser:
        _BoundaryLayer(lv, table=layers.display(lv)).add_to(m)
    rows = _add_points(m, layers, tables)
    folium.LayerControl(collapsed=False).add_to(m)
    fmt = "+.1%" if diverging else ",.3g"
    classes_rows = [(_swatch(c), f"{format(lo, fmt)} to {format(hi, fmt)}")
                    for c, lo, hi in zip(colours, lows, bins, strict=True)]
    _legend(m, f"{LEVEL_NAME[level]}: {measure} ({scheme})",
            [*classes_rows, *_line_rows([*coarser, level]), *rows])
    return m


def _nearest(points: pd.DataFrame, geom: shapely.Geometry) -> pd.DataFrame:
    """The point nearest to ``geom``, measured in metres (local UTM)."""
    crs = local_projected_crs(points["lng"].to_numpy(), points["lat"].to_numpy())
    pts = gpd.GeoSeries(gpd.points_from_xy(points["lng"], points["lat"]), crs=4326).to_crs(crs)
    target = gpd.GeoSeries([geom], crs=4326).to_crs(crs).iloc[0]
    return points.iloc[[int(np.argmin(pts.distance(target).to_numpy()))]]


def _community_markers(m: folium.Map, ranked: pd.DataFrame) -> list[str]:
    """Communities numbered by value rank (see :func:`ranked_communities`); returns the
    top-10 rows of the info box."""
    fields = {**COMMUNITY_FIELDS, "Entry threshold (1-5)": ("entry_threshold", "")}
    _PointLayer(_point_rows(ranked, fields, badge=ranked["rank"]), _callback(fields, _RANK_JS),
                name="Communities (by value)", show=True).add_to(m)
    top = ranked.head(10)
    return [f"<tr><td>{r}</td><td>{n}</td><td>{h} hh</td><td>{p}</td></tr>" for r, n, h, p in
            zip(top["rank"], _text(top["name"] if "name" in top else top.index),
                _text(top["households"], ",.0f"), _text(top["penetration"], ".0%"),
                strict=True)]


def _staff_rows(staff: pd.DataFrame, level: str, grid_id: str, limit: int = 30) -> str:
    """The grid's staff (``staff.csv`` of ``territory staff``) as info-box rows: role, name,
    sub-grid, monthly hours and workload; every value escaped."""
    mine = staff[staff[f"{level}_id"].astype(str) == grid_id] if f"{level}_id" in staff \
        else staff.iloc[0:0]
    mine = mine.sort_values(["role", "person_id"])
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in (
            str(r.role), str(r.name), "" if pd.isna(r.sub_grid_id) else str(r.sub_grid_id),
            f"{r.workload_hours:,.0f} / {r.hours:,.0f} h")) + "</tr>"
        for r in mine.head(limit).itertuples())
    more = f"<tr><td colspan=4>… and {len(mine) - limit} more</td></tr>" \
        if len(mine) > limit else ""
    return (f"<tr><td colspan=2><h4>Staff ({len(mine)})</h4></td></tr>"
            f"<tr><td colspan=2><table>{rows or '<tr><td>none</td></tr>'}{more}</table>"
            "</td></tr>")


def field_map(plan: Plan | PlanLayers, grid_id: str, tables: Tables | None = None, *,
              online_tiles: bool = True) -> folium.Map:
    """The map a grid's team takes to the street: the grid (any level) with its child grids
    coloured and labelled, neighbouring grids in grey, communities ranked by value, key
    accounts with their footprint, and its store (or the nearest one), fitted to the grid.
    With ``tables["staff"]`` (``staff.csv`` of ``territory staff``), the info box lists the
    grid's staff."""
    layers = PlanLayers.of(plan)
    level = layers.level_of(grid_id)
    measures = layers.plan.measures
    table = layers.display(level, FIELD_TOLERANCE_M)
    grid = table[table["grid_id"] == grid_id]
    geom = grid.geometry.iloc[0]
    m = _base_map(grid.total_bounds, online_tiles)

    neighbours = table[table["grid_id"].isin(layers.neighbours(level)[grid_id])]
    if len(neighbours):
        grey = dict.fromkeys(neighbours["grid_id"], NEIGHBOUR_GREY)
        _grid_layer(neighbours, level, measures, name="Neighbouring grids", fill=grey,
                    show=True, overlay=True).add_to(m)
    child = LEVELS[LEVELS.index(level) + 1] if level != LEVELS[-1] else None
    if child:
        kids = layers.display(child, FIELD_TOLERANCE_M)
        kids = kids[kids["parent_id"] == grid_id]
        fill = dict(zip(kids["grid_id"], kids["colour"], strict=True))
        _grid_layer(kids, child, measures, name=LEVEL_NAME[child], fill=fill, show=True,
                    overlay=True).add_to(m)
        labels = folium.FeatureGroup(name=f"{LEVEL_NAME[child]}: labels", show=True)
        for gid, g in zip(kids["grid_id"], kids.geometry, strict=True):
            p = g.point_on_surface()
            folium.Marker([p.y, p.x], icon=folium.DivIcon(
                html=f'<div class="territory-label">{html_text(gid)}</div>',
                icon_size=(120, 16), icon_anchor=(0, 8), class_name="territory-label-icon"),
            ).add_to(labels)
        labels.add_to(m)
    else:
        _grid_layer(grid, level, measures, name=LEVEL_NAME[level],
                    fill={grid_id: grid["colour"].iloc[0]}, show=True, overlay=True).add_to(m)
    _BoundaryLayer(level, table=grid, weight=LINE_WEIGHT["branch"]).add_to(m)

    legend_rows = [(_swatch(NEIGHBOUR_GREY), "Neighbouring grid"),
                   (_line("branch"), f"{ONE_NAME[level]} boundary")]
    if child:
        legend_rows.append((_line(child), f"{ONE_NAME[child]} boundary"))
    top: list[str] = []
    communities = ranked_communities(layers, tables, level, grid_id)
    if communities is not None:
        top = _community_markers(m, communities)
        legend_rows.append(('<span class="territory-rank" style="padding:0 5px">1</span>',
                            "Community, numbered by value rank"))
    key_accounts = layers.placed(tables, "key_accounts")
    if key_accounts is not None:
        inside = key_accounts[key_accounts[f"{level}_id"] == grid_id]
        if "footprint_m" in inside:
            footprints = folium.FeatureGroup(name="Key accounts: footprints", show=True)
            for lat, lng, r in inside[["lat", "lng", "footprint_m"]].dropna().itertuples(
                    index=False):
                folium.Circle([lat, lng], radius=float(r), color=KEY_ACCOUNT_COLOUR, weight=1,
                              fill=True, fill_opacity=0.15, interactive=False).add_to(footprints)
            footprints.add_to(m)
        _PointLayer(_point_rows(inside, KEY_ACCOUNT_FIELDS),
                    _callback(KEY_ACCOUNT_FIELDS, _circle_js(KEY_ACCOUNT_COLOUR)),
                    name="Key accounts", show=True).add_to(m)
        legend_rows.append((_dot(KEY_ACCOUNT_COLOUR), "Key account (circle: footprint)"))
    stores = layers.placed(tables, "stores")
    if stores is not None:
        inside = stores[stores[f"{level}_id"] == grid_id]
        note = ""
        if inside.empty:
            inside, note = _nearest(stores, geom), " (nearest, outside the grid)"
        group = folium.FeatureGroup(name="Store", show=True)
        for _, row in inside.iterrows():
            _store_marker(row, note).add_to(group)
        group.add_to(m)
        legend_rows.append((STORE_SVG, f"Store{note}"))
    folium.LayerControl(collapsed=True).add_to(m)
    _legend(m, "Legend", legend_rows)

    figures = key_figures(grid, level, measures).iloc[0]
    body = "".join(f"<tr><td>{html_text(k)}</td><td><b>{html_text(v)}</b></td></tr>"
                   for k, v in figures.items())
    if top:
        body += "<tr><td colspan=2><h4>Top communities by value</h4></td></tr>"
        body += f"<tr><td colspan=2><table>{''.join(top)}</table></td></tr>"
    staff = (tables or {}).get("staff")
    if staff is not None:
        body += _staff_rows(staff, level, grid_id)
    _html_box(m, "territory-info",
              f"{ONE_NAME[level]} {grid_id}", f"<table>{body}</table>")
    return m


def write_demo_maps(plan: Plan | PlanLayers, out_dir: str | Path,
                    tables: Tables | None = None) -> list[Path]:
    """Everything a demo hands out, into ``out_dir``: ``overview.html``,
    ``choropleth.html`` (balance of the first measure), ``field/<main grid>.html`` for every
    main grid (the id made a safe file name by :func:`territory.filenames.safe_filename`)
    and the printable city map ``city.png``/``city.pdf``. Returns the files."""
    layers = PlanLayers.of(plan)
    out = Path(out_dir)
    written = [save_map(overview_map(layers, tables), out / "overview.html"),
               save_map(choropleth_map(layers, tables=tables), out / "choropleth.html")]
    written += [save_map(field_map(layers, gid, tables),
                         out / "field" / f"{safe_filename(gid)}.html")
                for gid in layers.kpis("main_grid")["grid_id"]]
    return written + print_city(layers, out / "city", tables)
