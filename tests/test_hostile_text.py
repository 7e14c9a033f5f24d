"""Hostile text: markup in ids and names never runs, a quote never reaches SQL, an id never
leaves its folder.

The plan here is made by the real pipeline from a boundary layer whose district codes are
XSS payloads (so branch, main-grid and sub-grid ids all carry them), with communities,
stores and key accounts named the same way and a balance measure whose name is one. Its
maps are opened in headless Chromium with the harness of :mod:`tests.test_maps`; every
payload sets ``window.__xss`` or ``document.title`` if it ever runs.
"""

from __future__ import annotations

import html
import re
import sqlite3
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from api.main import create_app
from api.store import PlanStore
from territory.errors import InvalidInputError
from territory.exports import export_plan, kml_description, kml_text
from territory.filenames import safe_filename
from territory.hierarchy import HierarchySpec
from territory.mapdata import PlanLayers
from territory.maps import (
    _legend,
    _point_rows,
    choropleth_map,
    field_map,
    html_figures,
    overview_map,
    write_demo_maps,
)
from territory.offline import save_map
from territory.pipeline import Inputs, UnitOptions, run
from territory.plan import LAYER, LEVELS, Plan, read_grids
from tests.conftest import random_areas
from tests.test_api import headers, settings_for
from tests.test_maps import MAP_JS, opened

#: District codes of the boundary layer: each becomes a branch id and the stem of its main
#: and sub-grid ids. Between them: an event handler, a Jinja expression (the maps are
#: rendered by Jinja on the server), an attribute break-out, a script end tag, a JavaScript
#: template-literal break-out, a SQL quote, mathtext (``$…$``: the printed maps), path
#: separators and ``..``.
BRANCHES = [
    '<img src=x onerror="window.__xss=1"> {{ 7*7 }}{%',
    "\"'><svg onload=\"window.__xss=2\"> $\\notacommand{x}$",
    "</script><script>window.__xss=3</script>/../..",
    "${window.__xss=4}`\\ O'Brien' OR '1'='1",
]
NAMES = [
    '<a href="javascript:window.__xss=5">tap</a>',
    "<img src=x onerror=\"document.title='pwned'\">",
    "${window.__xss=6}`",
    "A&B <b>bold</b> &amp; $\\notacommand{x}$",
    "</script><script>window.__xss=7</script>",
    "{{ cycler.__init__.__globals__ }}{% if %}",
    "src=//evil.example/x.js",
]
MEASURE = '<img src=x onerror="window.__xss=8">load'
#: Anything that would show a payload ran.
INERT_JS = """(() => {
    const handlers = Array.from(document.querySelectorAll('*')).filter(e =>
        Array.from(e.attributes).some(a => /^on/i.test(a.name)
                                           || /^\\s*javascript:/i.test(a.value)));
    return {xss: window.__xss === undefined ? null : window.__xss, title: document.title,
            handlers: handlers.map(e => e.outerHTML.slice(0, 120))};
})()"""


# -- the hostile plan ----------------------------------------------------------------------
def _points(areas, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` random points inside the areas (sampled from their interior)."""
    b = areas.total_bounds
    outline = areas.union_all()
    lng, lat = rng.uniform(b[0], b[2], 20 * n), rng.uniform(b[1], b[3], 20 * n)
    inside = shapely.contains_xy(outline, lng, lat)
    return pd.DataFrame({"lng": lng[inside][:n], "lat": lat[inside][:n]})


@pytest.fixture(scope="module")
def hostile():
    """(plan, point tables) with payloads in every id, name and the second measure."""
    rng = np.random.default_rng(7)
    areas = random_areas(3, n_areas=len(BRANCHES))
    assert len(areas) == len(BRANCHES)
    areas["code"] = BRANCHES
    customers = _points(areas, 3000, rng)
    customers = customers.assign(subscribers=rng.integers(1, 4, len(customers)),
                                 workload=rng.uniform(0, 2, len(customers)))
    k = len(NAMES) * 4
    communities = _points(areas, k, rng).assign(
        name=[NAMES[i % len(NAMES)] for i in range(k)], households=rng.integers(50, 900, k),
        value_score=rng.uniform(0, 100, k), build_year=2001, entry_threshold=2)
    stores = _points(areas, k, rng).assign(
        name=[NAMES[i % len(NAMES)] for i in range(k)], kind="business_hall")
    key_accounts = _points(areas, k, rng).assign(
        name=[NAMES[i % len(NAMES)] for i in range(k)], kind=NAMES[2], employees=120,
        subscribers=40)
    spec = HierarchySpec(measures={"subscribers": 0.25}, n_main=5, n_sub=2, time_limit_main=2,
                         time_limit_sub=1, workers=1)
    inputs = Inputs(areas, "code", customers, communities, stores, key_accounts)
    plan = run(inputs, UnitOptions(resolution=8), spec).plan
    units = plan.units.assign(**{MEASURE: plan.units["subscribers"] * 2.0})
    plan = Plan(units=units, measures=[*plan.measures, MEASURE], plan_id=plan.plan_id)
    tables = {"customers": customers, "communities": communities, "stores": stores,
              "key_accounts": key_accounts}
    return plan, tables


@pytest.fixture(scope="module")
def layers(hostile):
    return PlanLayers(hostile[0])


@pytest.fixture(scope="module")
def tables(hostile):
    return hostile[1]


def test_the_payloads_reached_the_plan(layers):
    """Guard: the pipeline kept the ids as given, so the tests below test something."""
    branches = set(layers.kpis("branch")["grid_id"])
    assert branches == set(BRANCHES)
    mains = layers.kpis("main_grid")["grid_id"]
    assert all(any(m.startswith(f"{b}-M") for b in BRANCHES) for m in mains)


# -- in a browser --------------------------------------------------------------------------
#: Every filled grid of every GeoJSON layer put on the map and its tooltip opened; returns
#: the text of each tooltip's header and data cells.
ALL_TOOLTIPS_JS = f"""(() => {{
    const map = {MAP_JS};
    const texts = [];
    Object.keys(window).filter(k => /^geo_json_[0-9a-f]+$/.test(k)).forEach(k => {{
        const layer = window[k];
        map.addLayer(layer);
        layer.eachLayer(f => {{  // the tooltip is the layer's, its content per feature
            f.fire('mouseover', {{latlng: f.getBounds().getCenter()}}, true);
            const cells = s => Array.from(layer.getTooltip().getElement().querySelectorAll(s))
                .map(c => c.textContent);
            texts.push({{th: cells('th'), td: cells('td')}});
            f.fire('mouseout', {{}}, true);
        }});
    }});
    return texts;
}})()"""
#: Every point's popup and tooltip opened, clustered ones put on the map first; returns the
#: text shown.
ALL_POINTS_JS = f"""(() => {{
    const map = {MAP_JS};
    const markers = new Set();
    map.eachLayer(l => {{
        if (l.getLayers) {{ l.getLayers().forEach(m => markers.add(m)); }}
        markers.add(l);
    }});
    const texts = [];
    Array.from(markers).filter(m => !(m instanceof L.LayerGroup)).forEach(m => {{
        if (!map.hasLayer(m)) {{ m.addTo(map); }}
        for (const [get, open] of [['getPopup', 'openPopup'], ['getTooltip', 'openTooltip']]) {{
            if (m[get] && m[get]()) {{
                m[open]();
                texts.push(m[get]().getElement().textContent);
            }}
        }}
    }});
    return texts;
}})()"""


def assert_inert(browser) -> None:
    state = browser.eval(INERT_JS)
    assert state == {"xss": None, "title": "", "handlers": []}
    assert browser.errors() == []


def _grid_text(layers: PlanLayers, level: str) -> set[str]:
    return set(layers.kpis(level)["grid_id"])


def test_overview_shows_payloads_as_text(layers, tables, tmp_path):
    path = save_map(overview_map(layers, tables, online_tiles=False), tmp_path / "o.html")
    with opened(path, tmp_path) as browser:
        assert_inert(browser)
        # a real hover first, as a planner would
        inside = layers.display("main_grid").geometry.iloc[0].representative_point()
        x, y = browser.eval(f"(() => {{ const p = {MAP_JS}.latLngToContainerPoint("
                            f"[{inside.y}, {inside.x}]); return [p.x, p.y]; }})()")
        browser.send("Input.dispatchMouseEvent", page=True, type="mouseMoved", x=x, y=y)
        hovered = browser.eval("document.querySelector('.leaflet-tooltip').textContent")
        assert layers.display("main_grid")["grid_id"].iloc[0] in hovered
        texts = browser.eval(ALL_TOOLTIPS_JS)
        assert sorted(t["td"][0] for t in texts) == sorted(
            g for lv in LEVELS for g in _grid_text(layers, lv))
        label = MEASURE.replace("_", " ").capitalize()
        assert all(any(h.startswith(f"{label} vs ") for h in t["th"]) for t in texts)
        points = browser.eval(ALL_POINTS_JS)
        n = len(tables["communities"]) + len(tables["stores"]) + len(tables["key_accounts"])
        assert len(points) == n
        for name in NAMES:
            assert any(name in t for t in points), name
        assert_inert(browser)


def test_choropleth_of_a_hostile_measure(layers, tables, tmp_path):
    m = choropleth_map(layers, MEASURE, level="sub_grid", tables=tables, online_tiles=False)
    path = save_map(m, tmp_path / "c.html")
    with opened(path, tmp_path) as browser:
        assert_inert(browser)
        labels = browser.eval("Array.from(document.querySelectorAll("
                              "'.leaflet-control-layers label')).map(l => l.textContent.trim())")
        assert f"Sub-grids: {MEASURE}" in labels
        legend = browser.eval("document.querySelector('.territory-legend summary').textContent")
        assert MEASURE in legend
        texts = browser.eval(ALL_TOOLTIPS_JS)
        assert {t["td"][0] for t in texts} == _grid_text(layers, "sub_grid")
        browser.eval(ALL_POINTS_JS)
        assert_inert(browser)


def test_field_map_of_a_hostile_grid(layers, tables, tmp_path):
    placed = layers.placed(tables, "communities")
    main = placed["main_grid_id"].value_counts().index[0]
    path = save_map(field_map(layers, main, tables, online_tiles=False), tmp_path / "f.html")
    with opened(path, tmp_path) as browser:
        assert_inert(browser)
        info = browser.eval("document.querySelector('.territory-info summary').textContent")
        assert info == f"Main grid {main}"  # a Jinja expression in it was not evaluated
        kids = layers.kpis("sub_grid")
        kids = set(kids.loc[kids["parent_id"] == main, "grid_id"])
        labels = browser.eval("Array.from(document.querySelectorAll('.territory-label'))"
                              ".map(e => e.textContent)")
        assert set(labels) == kids
        texts = browser.eval(ALL_TOOLTIPS_JS)
        neighbours = set(layers.neighbours("main_grid")[main])
        assert {t["td"][0] for t in texts} == kids | neighbours
        points = browser.eval(ALL_POINTS_JS)
        inside = placed[placed["main_grid_id"] == main]
        for name in set(inside["name"]):
            assert any(name in t for t in points), name
        assert_inert(browser)


def test_the_pages_hold_no_payload_verbatim(layers, tables):
    """Outside a browser too: no payload appears raw anywhere in a page (script data is
    JSON with ``<`` escaped, markup is HTML-escaped)."""
    from territory.offline import offline_html

    main = layers.kpis("main_grid")["grid_id"].iloc[0]
    for m in (overview_map(layers, tables), choropleth_map(layers, MEASURE, tables=tables),
              field_map(layers, main, tables)):
        page = offline_html(m)
        for payload in [*BRANCHES, *NAMES, MEASURE]:
            assert payload not in page, payload
        assert "window.__xss" in page  # the payloads are there, escaped


# -- KML -----------------------------------------------------------------------------------
class Markup(HTMLParser):
    """The elements and text of an HTML fragment (anything else is noted as ``other``)."""

    def __init__(self, fragment: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.other: list[str] = []
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.other.append(f"comment {data}")

    def handle_decl(self, decl):
        self.other.append(f"decl {decl}")

    def handle_pi(self, data):
        self.other.append(f"pi {data}")

    def unknown_decl(self, data):
        self.other.append(f"decl {data}")


def test_kml_balloons_hold_escaped_text(layers, tmp_path):
    files = export_plan(layers, "kml", tmp_path)
    assert len(files) == len(LEVELS)
    for level, path in zip(LEVELS, files, strict=True):
        expected = layers.kpis(level).set_index("grid_id")
        root = ET.parse(path).getroot()  # well-formed XML
        marks = [e for e in root.iter() if e.tag.endswith("Placemark")]
        assert len(marks) == len(expected)
        for mark in marks:
            fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in mark}
            grid = html.unescape(fields["name"])
            assert grid in expected.index
            # the name is HTML text: no element in it, its text the id itself
            name = Markup(fields["name"])
            assert (name.tags, name.other, "".join(name.text)) == ([], [], grid)
            description = Markup(fields["description"])
            assert set(description.tags) <= {"br"} and description.other == []
            assert f"Grid: {grid}" in "".join(description.text)
            for data in (e for e in mark.iter() if e.tag.endswith("SimpleData")):
                assert Markup(data.text or "").tags == []
        # a reader that unescapes gets the ids back
        kml = pyogrio.read_dataframe(path)
        assert sorted(kml["Name"].map(html.unescape)) == sorted(expected.index)


# -- the HTML helpers, on any text ---------------------------------------------------------
TEXT = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(TEXT, min_size=1, max_size=4, unique=True),
       values=st.lists(TEXT, min_size=4, max_size=4))
def test_tooltip_figures_are_text_in_the_tooltip_table(labels, values):
    """folium's GeoJsonTooltip builds ``<table><tr><th>label</th><td>value</td></tr>…``
    from property names and values; with :func:`html_figures` that table holds only its
    own elements and shows the text as given."""
    frame = html_figures(pd.DataFrame([values[: len(labels)]], columns=labels))
    page = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>"
                               for k, v in frame.iloc[0].items()) + "</table>"
    parsed = Markup(page)
    assert parsed.tags == ["table", *["tr", "th", "td"] * len(labels)]
    assert parsed.other == []
    assert "".join(parsed.text) == "".join(k + v for k, v in zip(labels, values, strict=False))


@settings(max_examples=200, deadline=None)
@given(figures=st.dictionaries(TEXT, TEXT, min_size=1, max_size=5))
def test_kml_description_is_lines_of_text(figures):
    parsed = Markup(kml_description(pd.Series(figures, dtype=object)))
    assert parsed.tags == ["br"] * (len(figures) - 1) and parsed.other == []
    assert "".join(parsed.text) == "".join(f"{k}: {v}" for k, v in figures.items())


@settings(max_examples=100, deadline=None)
@given(values=st.lists(TEXT, min_size=1, max_size=3))
def test_kml_text_escapes_every_text_value_and_name(values):
    table = gpd.GeoDataFrame({"grid_id": values, values[0]: 1.5},
                             geometry=[shapely.Point(0, 0)] * len(values), crs=4326)
    out = kml_text(table)
    assert [Markup(v).tags for v in out["grid_id"]] == [[]] * len(values)
    assert out["grid_id"].map(html.unescape).tolist() == values
    assert html.escape(values[0]) in out.columns and out.geometry.name == "geometry"


@settings(max_examples=100, deadline=None)
@given(title=TEXT, labels=st.lists(TEXT, min_size=1, max_size=3))
def test_legend_box_shows_text(title, labels):
    m = folium.Map(tiles=None)
    _legend(m, title, [("", label) for label in labels])
    (box,) = [e.render() for e in m.get_root().html._children.values()
              if "territory-legend" in e.render()]
    parsed = Markup(box)
    assert parsed.tags == ["details", "summary", "table", *["tr", "td", "td"] * len(labels)]
    assert "".join(parsed.text) == title + "".join(labels)


@settings(max_examples=100, deadline=None)
@given(name=TEXT, kind=TEXT)
def test_point_popup_text_is_escaped(name, kind):
    """The popup the point callback builds (``<b>title</b><br>label: value``)."""
    rows = _point_rows(pd.DataFrame({"lat": [22.5], "lng": [114.0], "name": [name],
                                     "kind": [kind]}), {"Kind": ("kind", "")})
    (row,) = rows
    parsed = Markup(f"<b>{row[3]}</b><br>Kind: {row[4]}")
    assert parsed.tags == ["b", "br"] and parsed.other == []
    assert "".join(parsed.text) == f"{name}Kind: {kind}"


# -- file names ----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=300), other=st.text(max_size=30))
def test_safe_filename_stays_in_its_folder(tmp_path, name, other):
    safe = safe_filename(name)
    assert safe and safe not in (".", "..") and not safe.startswith(".")
    assert "/" not in safe and "\\" not in safe and "\0" not in safe
    assert len(safe.encode()) <= 255
    path = tmp_path / safe
    path.write_text("x")  # the file system takes it
    assert path.resolve().parent == tmp_path.resolve()
    path.unlink()
    if name != other:
        assert safe_filename(other) != safe
    assert safe_filename(safe) == safe  # a safe name is its own


def test_safe_filename_keeps_ordinary_ids():
    for name in ("350203-M01", "350203-M01-S2", "xiamen", "思明区", "main_grids.v2"):
        assert safe_filename(name) == name
    assert safe_filename("../../etc/passwd").startswith("etc_passwd-")
    assert safe_filename("CON") != "CON" and safe_filename("..") not in ("", "..")


def test_demo_maps_and_prints_stay_in_their_folder(layers, tables, tmp_path):
    out = tmp_path / "out"
    written = write_demo_maps(layers, out, tables)
    mains = layers.kpis("main_grid")["grid_id"]
    assert len([p for p in written if p.parent.name == "field"]) == len(mains)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.iterdir()) == ["out"]
    # the city print labels main grids: ids with $…$ were drawn as text, not mathtext
    assert {p.name for p in written if p.suffix in (".png", ".pdf")} == {"city.png", "city.pdf"}


def test_map_command_names_files_safely(saved, tmp_path):
    from territory.cli import app

    main = next(g for g in Plan.load(saved).units["main_grid_id"] if "/" in g)
    out = tmp_path / "maps"
    result = CliRunner().invoke(app, ["map", str(saved), "--out", str(out), "--grid", main])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]
    stem = safe_filename(main)
    assert {p.name for p in out.iterdir()} == {f"{stem}.{e}" for e in ("html", "png", "pdf")}


#: Cells a spreadsheet runs as formulas (CSV injection), as ids and names of a CRM table.
FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
            "\tTAB", "\rCR"]


def test_csv_export_keeps_data_exact_unless_made_excel_safe(layers, tables, tmp_path):
    customers = tables["customers"].iloc[:len(FORMULAS)].assign(
        id=FORMULAS, name=FORMULAS[::-1], plain="O'Brien", debt=-5.5)
    export_plan(layers, "csv", tmp_path / "exact", levels=["branch"], customers=customers)
    export_plan(layers, "csv", tmp_path / "safe", levels=["branch"], customers=customers,
                excel_safe=True)

    def read(folder: str) -> pd.DataFrame:
        return pd.read_csv(tmp_path / folder / "customers.csv", dtype=str,
                           keep_default_na=False)

    exact, safe = read("exact"), read("safe")
    assert list(exact["id"]) == FORMULAS and list(exact["name"]) == FORMULAS[::-1]
    assert list(safe["id"]) == ["'" + f for f in FORMULAS]
    assert list(safe["name"]) == ["'" + f for f in FORMULAS[::-1]]
    for column in ("plain", "debt", "lng", "sub_grid_id"):  # numbers and harmless text stay
        assert list(safe[column]) == list(exact[column])
    with pytest.raises(InvalidInputError, match="excel_safe"):
        export_plan(layers, "kml", tmp_path / "k", excel_safe=True)


# -- grid filters never become SQL ---------------------------------------------------------
@pytest.fixture(scope="module")
def saved(hostile, tmp_path_factory) -> Path:
    return hostile[0].save(tmp_path_factory.mktemp("hostile") / "plan.gpkg")


SQL_TAILS = ["' OR 1=1 --", "' OR '1'='1", "'--", "%", "_", "*", "\0", "\0' OR 1=1 --",
             '" OR ""="', "'); DROP TABLE sub_grids; --", "区", "\u202e"]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), level=st.sampled_from(LEVELS), column=st.sampled_from(
    ["grid_id", "parent_id"]))
def test_read_grids_matches_exactly(saved, data, level, column):
    layer = pyogrio.read_dataframe(saved, layer=LAYER[level])
    ids = sorted(set(layer[column].dropna()))
    value = data.draw(st.one_of(
        st.text(max_size=20),
        st.sampled_from(ids) if ids else st.text(max_size=5),
        st.builds(lambda i, t: i + t, st.sampled_from(ids or [""]), st.sampled_from(SQL_TAILS)),
        st.sampled_from(SQL_TAILS),
    ))
    got = read_grids(saved, level, **{column: value})
    expected = layer[layer[column] == value]
    assert got["grid_id"].tolist() == expected["grid_id"].tolist()
    assert len(got) <= 1 or column == "parent_id"


def test_read_grids_leaves_the_file_alone(saved):
    before = saved.read_bytes()
    read_grids(saved, "sub_grid", grid_id="'); DROP TABLE sub_grids; --")
    assert saved.read_bytes() == before
    with sqlite3.connect(saved) as con:
        assert con.execute("SELECT COUNT(*) FROM sub_grids").fetchone()[0] > 0
    con.close()


# -- over the service ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(hostile, tmp_path_factory):
    data = tmp_path_factory.mktemp("api") / "data"
    PlanStore(data).add_plan(hostile[0], service_area=BRANCHES[2], created_by="test",
                             index_writer=lambda plan, folder: None)
    with TestClient(create_app(settings_for(data)), raise_server_exceptions=False) as c:
        yield c


def _problem(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()


BAD_IDS = ["\0", "a\0b", "' OR 1=1 --", "' OR '1'='1", "%", "%%", "_", "区'--", "\u202e'",
           "'); DROP TABLE main_grids; --"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_service_answers_hostile_ids_without_500(client, hostile, bad):
    v = headers("viewer")
    plan_id = hostile[0].plan_id
    base = f"/plans/{plan_id}"
    seg = quote(bad, safe="")
    for level in LEVELS:
        body = _problem(client.get(f"{base}/grids/{level}/{seg}", headers=v), 404)
        assert body["title"] == "Grid not found"
        r = client.get(f"{base}/grids/{level}", params={"parent_id": bad}, headers=v)
        assert r.status_code == 200 and r.json()["features"] == []  # never widened
    for route in (f"maps/field/{seg}", f"prints/grids/{seg}.png"):
        _problem(client.get(f"{base}/{route}", headers=v), 404)
    _problem(client.get(f"/plans/{seg}/grids/branch", headers=v), 404)


def test_service_serves_hostile_ids_exactly(client, hostile, layers):
    v = headers("viewer")
    base = f"/plans/{hostile[0].plan_id}"
    mains = layers.kpis("main_grid")
    for branch in BRANCHES:
        if "/" not in branch:  # a path segment cannot carry one, even as %2F
            r = client.get(f"{base}/grids/branch/{quote(branch, safe='')}", headers=v)
            assert r.status_code == 200, r.text
            assert r.json()["properties"]["grid_id"] == branch
        r = client.get(f"{base}/grids/main_grid", params={"parent_id": branch}, headers=v)
        got = sorted(f["properties"]["grid_id"] for f in r.json()["features"])
        assert got == sorted(mains.loc[mains["parent_id"] == branch, "grid_id"])
    main = next(g for g in mains["grid_id"] if "/" not in g)
    r = client.get(f"{base}/maps/field/{quote(main, safe='')}", headers=v)
    assert r.status_code == 200
    for payload in BRANCHES:
        assert payload not in r.text
    disposition = r.headers["content-disposition"]
    names = re.findall(r'filename="([^"]*)"', disposition)
    assert names and all("/" not in n and ".." not in n for n in names)
    assert "%2F" not in disposition  # no separator in the UTF-8 name either


@pytest.mark.parametrize("field", ["boundaries", "customers"])
def test_dataset_names_with_nul_bytes_are_422(client, field):
    city = client.app.state.store.datasets_dir / "city"
    city.mkdir(parents=True, exist_ok=True)
    (city / "districts.geojson").touch()  # so a NUL in the customers' name is what fails
    source = {"kind": "datasets", "boundaries": "city/districts.geojson",
              "customers": "city/customers.csv", field: "city/a\0b.csv"}
    r = client.post("/plans", json={"source": source, "parameters": {"main_grids": 2}},
                    headers=headers("planner"))
    body = _problem(r, 422)
    assert body["errors"][0]["field"] == f"source.{field}" and "NUL" in body["detail"]
