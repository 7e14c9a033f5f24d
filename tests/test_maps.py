"""Maps and exports: colouring, offline HTML in a real browser, printable pages, files.

The interactive maps are opened in headless Chromium (Debian's ``chromium`` package)
driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, no websocket library needed). Every request the page makes and every
console error are recorded; host names resolve nowhere (``--host-resolver-rules``), so a
slip could not leak traffic either.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from territory.boundaries import load_city
from territory.colouring import PALETTE, adjacency_graph, conflicts, grid_colours
from territory.crs import wgs84_to_gcj02
from territory.exports import export_plan
from territory.hierarchy import HierarchySpec
from territory.mapdata import HOURS_PER_STAFF, PlanLayers, ranked_communities
from territory.maps import choropleth_map, classify, field_map, overview_map, write_demo_maps
from territory.offline import OfflineAssetError, inline_assets, save_map
from territory.pipeline import Inputs, UnitOptions, run
from territory.plan import LAYER, LEVELS
from territory.printmaps import PAPER, print_city, print_grid
from territory.synth import generate_city, write_city

CHROMIUM = shutil.which("chromium")


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def city():
    return generate_city(load_city("xiamen"), n_customers=10_000, seed=1)


@pytest.fixture(scope="module")
def plan(city):
    inputs = Inputs(load_city("xiamen"), "adcode", city.customers, city.communities,
                    city.stores, city.key_accounts)
    spec = HierarchySpec(measures={"subscribers": 0.1}, n_main=12, n_sub=3,
                         time_limit_main=5, time_limit_sub=2, workers=1)
    return run(inputs, UnitOptions(resolution=8, target_per_unit=None), spec).plan


@pytest.fixture(scope="module")
def layers(plan):
    return PlanLayers(plan)


@pytest.fixture(scope="module")
def tables(city):
    return city.tables()


@pytest.fixture(scope="module")
def busiest_main(layers, tables):
    """The main grid with the most communities (the richest field map)."""
    placed = layers.placed(tables, "communities")
    return placed["main_grid_id"].value_counts().index[0]


# -- a DevTools client ---------------------------------------------------------------------
class Chromium:
    """Headless Chromium and one page, over the DevTools protocol on fds 3 (in) / 4 (out)."""

    def __init__(self, user_dir: Path, width: int, height: int) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 and 4
            a = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={user_dir}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable", page=True)
        self.send("Emulation.setDeviceMetricsOverride", page=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._in], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, *, page: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if page:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._message(deadline))

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", page=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def errors(self) -> list[dict]:
        def bad(e: dict) -> bool:
            p = e.get("params", {})
            return (e.get("method") == "Runtime.exceptionThrown"
                    or (e.get("method") == "Runtime.consoleAPICalled"
                        and p["type"] in ("error", "assert"))
                    or (e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error"))
        return [e for e in self.events if bad(e)]

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", page=True,
                                                    format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, TimeoutError, EOFError, RuntimeError):
            self.proc.kill()
        self.proc.wait(30)
        os.close(self._in)
        os.close(self._out)


@contextmanager
def opened(html: Path, tmp: Path, width: int = 1280, height: int = 900) -> Iterator[Chromium]:
    """``html`` loaded in headless Chromium and settled (Leaflet has drawn)."""
    if CHROMIUM is None:
        message = "chromium is not installed: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    browser = Chromium(tmp / "profile", width, height)
    try:
        browser.send("Page.navigate", page=True, url=html.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        browser.eval("new Promise(r => setTimeout(r, 800))")
        yield browser
    finally:
        browser.close()


def distinct_colours(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)
    return len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))


def assert_offline_and_clean(browser: Chromium, html: Path) -> None:
    """The page fetched only itself and inline data, and logged no error."""
    outside = [u for u in browser.requests()
               if u != html.resolve().as_uri() and not u.startswith("data:")]
    assert outside == []
    assert browser.errors() == []


#: The page's Leaflet map and folium's GeoJSON layers, found by their global names.
MAP_JS = "window[Object.keys(window).find(k => /^map_[0-9a-f]+$/.test(k))]"
GEOJSON_JS = ("Object.keys(window).filter(k => /^geo_json_[0-9a-f]+$/.test(k))"
              ".map(k => window[k])")
LAYER_COUNTS_JS = f"""(() => {{
    const map = {MAP_JS};
    return {GEOJSON_JS}.map(l => ({{n: l.getLayers().length, shown: map.hasLayer(l)}}));
}})()"""


# -- colouring -----------------------------------------------------------------------------
def grown_regions(w: int, h: int, k: int, seed: int) -> np.ndarray:
    """A w x h lattice of cells split into k contiguous regions grown from random seeds."""
    rng = np.random.default_rng(seed)
    label = np.full((w, h), -1)
    frontier = []
    for r, cell in enumerate(rng.choice(w * h, size=k, replace=False)):
        label[divmod(int(cell), h)] = r
        frontier.append(divmod(int(cell), h))
    while frontier:
        x, y = frontier.pop(int(rng.integers(len(frontier))))
        for nx_, ny_ in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if 0 <= nx_ < w and 0 <= ny_ < h and label[nx_, ny_] < 0:
                label[nx_, ny_] = label[x, y]
                frontier.append((nx_, ny_))
    return label


@settings(max_examples=60, deadline=None)
@given(w=st.integers(2, 9), h=st.integers(2, 9), k=st.integers(2, 25),
       seed=st.integers(0, 2**32 - 1))
def test_neighbours_never_share_a_colour_on_lattices(w, h, k, seed):
    label = grown_regions(w, h, min(k, w * h), seed)
    ids = sorted(set(label.ravel().tolist()))
    geoms = [shapely.union_all([shapely.box(x, y, x + 1, y + 1)
                                for x, y in zip(*np.nonzero(label == r), strict=True)])
             for r in ids]
    # the oracle: regions are neighbours when two edge-sharing cells carry their labels
    truth = nx.Graph()
    truth.add_nodes_from(ids)
    truth.add_edges_from((a, b) for a, b in zip(label[:-1].ravel(), label[1:].ravel(),
                                                strict=True) if a != b)
    truth.add_edges_from((a, b) for a, b in zip(label[:, :-1].ravel(), label[:, 1:].ravel(),
                                                strict=True) if a != b)
    graph = adjacency_graph(ids, geoms)
    assert nx.utils.edges_equal(sorted(map(sorted, graph.edges)),
                                sorted(map(sorted, truth.edges)))  # corners do not count
    colours = grid_colours(ids, geoms)
    assert all(colours[a] != colours[b] for a, b in truth.edges)
    # contiguous regions form a planar graph: smallest-last greedy needs at most 6 colours
    assert set(colours.values()) <= set(PALETTE[:6])


def test_corner_contact_is_not_adjacency():
    geoms = [shapely.box(0, 0, 1, 1), shapely.box(1, 1, 2, 2), shapely.box(1, 0, 2, 1)]
    graph = adjacency_graph(["a", "b", "c"], geoms)
    assert not graph.has_edge("a", "b")
    assert graph.has_edge("a", "c") and graph.has_edge("b", "c")


@pytest.mark.parametrize("level", LEVELS)
def test_real_plan_colouring_is_proper_and_small(layers, level):
    table = layers.kpis(level)
    colours = dict(zip(table["grid_id"], table["colour"], strict=True))
    assert conflicts(table["grid_id"], table.geometry.values, colours) == []
    assert set(colours.values()) <= set(PALETTE)
    assert any(layers.neighbours(level).values())  # the check above had pairs to look at


# -- the data behind the maps --------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_grid_kpis_add_up(plan, layers, level):
    table = layers.kpis(level).set_index("grid_id")
    sums = plan.units.groupby(f"{level}_id")[["subscribers", "households", "workload"]].sum()
    pd.testing.assert_frame_equal(table[sums.columns], sums, check_names=False,
                                  check_dtype=False)
    with_households = sums["households"].where(sums["households"] > 0)  # none: no figure
    np.testing.assert_allclose(table["penetration"], sums["subscribers"] / with_households)
    np.testing.assert_allclose(table["staff"], sums["workload"] / HOURS_PER_STAFF)


@pytest.mark.parametrize("level", LEVELS)
def test_display_geometry_is_a_simplified_coverage(layers, level):
    exact = layers.kpis(level).geometry.values
    simple = layers.display(level).geometry.values
    assert shapely.is_valid(simple).all()
    assert shapely.coverage_is_valid(simple)  # shared edges still shared: no sliver
    assert shapely.get_num_coordinates(simple).sum() < shapely.get_num_coordinates(exact).sum()
    area_change = np.abs(shapely.area(simple) / shapely.area(exact) - 1)
    assert area_change.max() < 0.05
    coords = shapely.get_coordinates(simple)
    np.testing.assert_array_equal(coords, np.round(coords, 5))


def test_communities_ranked_by_value(layers, tables, busiest_main):
    ranked = ranked_communities(layers, tables, "main_grid", busiest_main)
    assert len(ranked) > 1
    assert (ranked["main_grid_id"] == busiest_main).all()
    assert ranked["value_score"].is_monotonic_decreasing
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))


def test_classify_bounds_every_value():
    values = pd.Series([0.3, -0.2, 0.1, np.nan, 0.05, -0.05, 0.2])
    classes, bins = classify(values, "Quantiles", k=3)
    assert len(bins) == 3 and classes[3] == -1
    ok = values.notna().to_numpy()
    assert (values[ok].to_numpy() <= np.array(bins)[classes[ok]]).all()
    assert classify(pd.Series([1.0, 1.0]))[1] == [1.0]


# -- offline HTML --------------------------------------------------------------------------
def test_inline_assets_refuses_outside_resources():
    with pytest.raises(OfflineAssetError, match="no vendored copy"):
        inline_assets('<script src="https://cdn.example.org/left-pad.js"></script>')
    with pytest.raises(OfflineAssetError, match="outside resource"):
        inline_assets('<img src="https://example.org/logo.png">')
    page = inline_assets('<link rel="stylesheet" href="https://x/leaflet@1.9.3/leaflet.css"/>')
    assert "url(images/" not in page and "data:image/png;base64," in page


@pytest.fixture(scope="module")
def overview_html(layers, tables, tmp_path_factory) -> Path:
    return save_map(overview_map(layers, tables), tmp_path_factory.mktemp("maps") / "o.html")


def test_overview_renders_offline_in_a_browser(layers, overview_html, tmp_path):
    html = overview_html.read_text(encoding="utf-8")
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["']?https?:""", html)
    with opened(overview_html, tmp_path) as browser:
        assert_offline_and_clean(browser, overview_html)
        counts = sorted((v["n"], v["shown"]) for v in browser.eval(LAYER_COUNTS_JS))
        n = {lv: len(layers.kpis(lv)) for lv in LEVELS}
        # the fills of the three levels, main grids shown (boundary overlays are not GeoJson)
        assert counts == sorted([(n["branch"], False), (n["main_grid"], True),
                                 (n["sub_grid"], False)])
        interactive = "document.querySelectorAll('path.leaflet-interactive').length"
        drawn = "document.querySelectorAll('.leaflet-overlay-pane path').length"
        assert browser.eval(drawn) >= 2 * n["main_grid"] + n["branch"]
        before = browser.eval(interactive)
        labels = browser.eval("Array.from(document.querySelectorAll("
                              "'.leaflet-control-layers label')).map(l => l.textContent.trim())")
        assert {"Branches", "Main grids", "Sub-grids", "Stores", "Key accounts",
                "Communities", "Customers (heat)", "Base map (online)"} <= set(labels)
        browser.eval("document.querySelectorAll('.leaflet-control-layers-base input')[2].click()")
        assert browser.eval(interactive) - before == n["sub_grid"] - n["main_grid"]
        browser.eval("""Array.from(document.querySelectorAll('.leaflet-control-layers label'))
            .filter(l => ['Stores', 'Key accounts', 'Communities'].includes(
                l.textContent.trim())).forEach(l => l.querySelector('input').click())""")
        inside = layers.display("sub_grid").geometry.iloc[0].representative_point()
        x, y = browser.eval(f"(() => {{ const p = {MAP_JS}.latLngToContainerPoint("
                            f"[{inside.y}, {inside.x}]); return [p.x, p.y]; }})()")
        browser.send("Input.dispatchMouseEvent", page=True, type="mouseMoved", x=x, y=y)
        tooltip = browser.eval("document.querySelector('.leaflet-tooltip').textContent")
        assert "Penetration" in tooltip and "Staff" in tooltip
        shot = browser.screenshot(tmp_path / "overview.png")
        assert_offline_and_clean(browser, overview_html)  # nothing fetched on interaction
    assert Image.open(shot).size == (1280, 900)
    assert distinct_colours(shot) > 50  # a drawn map, not a blank page


def test_field_map_shows_its_grid(layers, tables, busiest_main, tmp_path):
    path = save_map(field_map(layers, busiest_main, tables), tmp_path / "field.html")
    ranked = ranked_communities(layers, tables, "main_grid", busiest_main)
    subs = layers.kpis("sub_grid")
    with opened(path, tmp_path) as browser:
        assert_offline_and_clean(browser, path)
        counts = sorted(v["n"] for v in browser.eval(LAYER_COUNTS_JS))
        neighbours = layers.neighbours("main_grid")[busiest_main]
        assert counts == sorted([len(neighbours), int((subs["parent_id"] == busiest_main).sum())])
        ranks = browser.eval("Array.from(document.querySelectorAll("
                             "'.leaflet-marker-pane .territory-rank')).map(e => +e.textContent)")
        assert sorted(ranks) == list(range(1, len(ranked) + 1))
        grid = layers.kpis("main_grid").set_index("grid_id").loc[busiest_main, "geometry"]
        minx, miny, maxx, maxy = grid.bounds
        view = browser.eval(f"""(() => {{
            const b = {MAP_JS}.getBounds();
            return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
        }})()""")
        slack = 0.02 * max(maxx - minx, maxy - miny)
        assert view[0] <= minx + slack and view[1] <= miny + slack
        assert view[2] >= maxx - slack and view[3] >= maxy - slack
        assert (view[2] - view[0]) < 4 * (maxx - minx) + 0.05  # zoomed to the grid
        browser.screenshot(tmp_path / "field.png")
        info = browser.eval("document.querySelector('.territory-info').textContent")
        assert busiest_main in info and "Top communities by value" in info


def test_choropleth_legend_has_a_row_per_class(layers, tmp_path):
    m = choropleth_map(layers, "penetration", level="sub_grid", k=4)
    path = save_map(m, tmp_path / "choropleth.html")
    with opened(path, tmp_path) as browser:
        assert_offline_and_clean(browser, path)
        swatches = browser.eval("document.querySelectorAll('.territory-legend "
                                ".territory-swatch').length")
        classes, bins = classify(layers.kpis("sub_grid")["penetration"], k=4)
        assert swatches == len(bins)
        fills = browser.eval("new Set(Array.from(document.querySelectorAll("
                             "'path.leaflet-interactive')).map(p => p.getAttribute('fill')))"
                             ".size")
        assert fills == len(set(classes.tolist()))  # one colour per class


# -- printable maps ------------------------------------------------------------------------
def pdf_page_size(path: Path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", path.read_bytes())
    return float(box.group(1)), float(box.group(2))


@pytest.mark.parametrize(("what", "paper"), [("grid", "A4"), ("city", "A3"), ("city", "A4")])
def test_printable_pages_have_the_paper_size(layers, tables, busiest_main, tmp_path, what,
                                             paper):
    png, pdf = (print_grid(layers, busiest_main, tmp_path / what, tables, paper=paper)
                if what == "grid" else print_city(layers, tmp_path / what, tables, paper=paper))
    assert (png.name, pdf.name) == (f"{what}.png", f"{what}.pdf")
    w_in, h_in = PAPER[paper]
    width, height = Image.open(png).size
    assert abs(width - w_in * 200) <= 1 and abs(height - h_in * 200) <= 1
    w_pt, h_pt = pdf_page_size(pdf)
    assert abs(w_pt - w_in * 72) < 0.5 and abs(h_pt - h_in * 72) < 0.5
    assert distinct_colours(png) > 50


# -- exports -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(layers, city, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    for fmt in ("geojson", "gpkg", "kml"):
        export_plan(layers, fmt, out)
    export_plan(layers, "geojson", out, levels=["main_grid"], crs="gcj02")
    export_plan(layers, "csv", out, customers=city.customers)
    return out


@pytest.mark.parametrize("level", LEVELS)
def test_kml_and_gpkg_read_back(layers, exported, level):
    expected = layers.kpis(level)
    kml = pyogrio.read_dataframe(exported / f"{LAYER[level]}.kml")
    gpkg = pyogrio.read_dataframe(exported / "grids.gpkg", layer=LAYER[level])
    for frame, ids in ((kml, "Name"), (gpkg, "grid_id")):
        assert len(frame) == len(expected)
        assert sorted(frame[ids]) == sorted(expected["grid_id"])
        assert shapely.is_valid(frame.geometry.values).all()
    assert kml["description"].str.contains("Subscribers: ").all()
    assert (kml["OGR_STYLE"].str.slice(9, 16).to_numpy()
            == expected.set_index("grid_id").loc[kml["Name"], "colour"].to_numpy()).all()
    merged = gpkg.set_index("grid_id").loc[expected["grid_id"]]
    np.testing.assert_allclose(merged["subscribers"], expected["subscribers"])
    area = gpd.GeoSeries(merged.geometry.values, crs=4326).to_crs(32650).area.to_numpy()
    np.testing.assert_allclose(area / 1e6, expected["area_km2"], rtol=1e-6)


def test_geojson_wgs84_and_gcj02(layers, exported):
    wgs = gpd.read_file(exported / "main_grids.geojson")
    gcj = gpd.read_file(exported / "main_grids.gcj02.geojson")
    assert list(wgs["grid_id"]) == list(gcj["grid_id"]) == list(layers.kpis("main_grid")
                                                                 ["grid_id"])
    x, y = shapely.get_coordinates(wgs.geometry.values).T
    expected = np.column_stack(wgs84_to_gcj02(x, y))
    np.testing.assert_allclose(shapely.get_coordinates(gcj.geometry.values), expected,
                               atol=2e-7)  # the GCJ-02 offset, written at 1e-7 degrees
    shift_m = np.hypot(*(expected - np.column_stack([x, y])).T) * 1.0e5
    assert 100 < np.median(shift_m) < 1000


def test_csv_assigns_units_and_customers(plan, city, exported):
    units = pd.read_csv(exported / "units.csv", dtype=str)
    assert units["unit_id"].is_unique and len(units) == len(plan.units)
    pd.testing.assert_series_equal(units.set_index("unit_id")["main_grid_id"],
                                   plan.units["main_grid_id"].astype(str),
                                   check_names=False, check_index_type=False)
    customers = pd.read_csv(exported / "customers.csv", dtype={"unit_id": str})
    assert len(customers) == len(city.customers)
    assert customers["main_grid_id"].notna().all()
    owner = plan.units["main_grid_id"].reindex(customers["unit_id"]).to_numpy()
    assert (customers["main_grid_id"].to_numpy() == owner).all()
    for level in LEVELS:
        assert len(pd.read_csv(exported / f"{LAYER[level]}.csv")) == plan.labels(level).nunique()


def test_a_failed_export_leaves_the_previous_file(layers, tmp_path, monkeypatch):
    (path,) = export_plan(layers, "kml", tmp_path, levels=["branch"])
    before = path.read_bytes()

    def broken(*args, **kwargs):
        Path(args[1]).write_text("half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pyogrio, "write_dataframe", broken)
    with pytest.raises(OSError, match="disk full"):
        export_plan(layers, "kml", tmp_path, levels=["branch"])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branches.kml"]


# -- commands and the demo -----------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(plan, city, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved")
    plan.save(out / "plan.gpkg")
    write_city(city, out / "synthetic")
    return out


def test_map_and_export_commands(saved, busiest_main, tmp_path):
    from territory.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["map", str(saved / "plan.gpkg"), "--out", str(tmp_path),
                                 "--grid", busiest_main, "--data", str(saved / "synthetic"),
                                 "--points-crs", "wgs84"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} >= {f"{busiest_main}.{e}"
                                                    for e in ("html", "png", "pdf")}
    result = runner.invoke(app, ["export", str(saved / "plan.gpkg"), "--format", "csv",
                                 "--level", "sub_grid", "--out", str(tmp_path / "csv"),
                                 "--customers", str(saved / "synthetic" / "customers.csv"),
                                 "--points-crs", "wgs84"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "csv").iterdir()} == {"units.csv", "sub_grids.csv",
                                                              "customers.csv"}
    bad = runner.invoke(app, ["export", str(saved / "plan.gpkg"), "--format", "kml",
                              "--crs", "gcj02", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "wgs84" in bad.output
    bad = runner.invoke(app, ["map", str(saved / "plan.gpkg"), "--out", str(tmp_path),
                              "--grid", "no-such-grid"])
    assert bad.exit_code == 2 and "no-such-grid" in bad.output


def test_write_demo_maps(layers, tables, tmp_path):
    written = write_demo_maps(layers, tmp_path, tables)
    mains = layers.kpis("main_grid")["grid_id"]
    expected = {"overview.html", "choropleth.html", "city.png", "city.pdf",
                *(f"field/{g}.html" for g in mains)}
    assert {p.relative_to(tmp_path).as_posix() for p in written} == expected
    assert all(p.stat().st_size > 0 for p in written)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp left
