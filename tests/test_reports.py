"""Each main grid's own analysis: figures that add up to the city's, pages that open offline
in a browser and show them rounded, PDFs of the right size, hostile ids, staff, the command
and the service.

One small plan for the module (a generated service area of 3 districts, 5 main grids); the
reports are written once through the command and inspected by the tests.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from territory.cli import app
from territory.filenames import safe_filename
from territory.hierarchy import HierarchySpec
from territory.mapdata import PlanLayers
from territory.pipeline import Inputs, UnitOptions, run
from territory.plan import Plan
from territory.printmaps import PAPER
from territory.reports import (
    KPIS,
    MAX_DECIMALS,
    grid_figures,
    grid_page,
    page_name,
    read_staff,
    write_pdf,
    write_reports,
)
from territory.synth import generate_city, write_city
from tests.conftest import random_areas
from tests.test_hostile_text import INERT_JS, NAMES, hostile  # noqa: F401 (a fixture)
from tests.test_maps import assert_offline_and_clean, opened

ROLES_PER_GRID = ("grid_manager", "key_account_manager")


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def areas():
    return random_areas(3, n_areas=3, span=0.06)


@pytest.fixture(scope="module")
def city(areas):
    return generate_city(areas.rename(columns={"district": "name"}), n_customers=3000, seed=2)


@pytest.fixture(scope="module")
def plan(areas, city):
    inputs = Inputs(areas, "district", city.customers, city.communities, city.stores,
                    city.key_accounts)
    spec = HierarchySpec(measures={"subscribers": 0.5}, n_main=5, n_sub=2,
                         time_limit_main=3, time_limit_sub=2, workers=1)
    return run(inputs, UnitOptions(resolution=9, target_per_unit=None), spec).plan


@pytest.fixture(scope="module")
def layers(plan):
    return PlanLayers(plan)


def roster(plan: Plan) -> pd.DataFrame:
    """A staff allocation as territory staff writes it: a grid manager and a key-account
    manager per main grid, a customer manager per sub-grid, and one person not placed."""
    mains = sorted(plan.units["main_grid_id"].unique())
    subs = plan.units.groupby("sub_grid_id")["main_grid_id"].first()
    rows = [{"person_id": f"P{i:03d}-{role}", "role": role, "main_grid_id": m,
             "sub_grid_id": None, "hours": 160.0, "workload_hours": 101.23456,
             "travel_km": 3.14159, "moved": False}
            for i, m in enumerate(mains) for role in ROLES_PER_GRID]
    rows += [{"person_id": f"Q{i:03d}", "role": "customer_manager", "main_grid_id": m,
              "sub_grid_id": s, "hours": 160.0, "workload_hours": 88.8888,
              "travel_km": 1.23456, "moved": i == 0} for i, (s, m) in enumerate(subs.items())]
    rows.append({"person_id": "R999", "role": "installer", "main_grid_id": None,
                 "sub_grid_id": None, "hours": 80.0, "workload_hours": 0.0, "travel_km": 0.0,
                 "moved": False})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def written(plan, city, tmp_path_factory) -> Path:
    """The reports written by ``territory report`` with every table and a staff file (the
    pages: a PDF is written by :func:`printed`)."""
    root = tmp_path_factory.mktemp("reports")
    plan.save(root / "plan.gpkg")
    write_city(city, root / "synthetic")
    (root / "staffing").mkdir()
    roster(plan).to_csv(root / "staffing" / "staff.csv", index=False)
    args = ["report", str(root / "plan.gpkg"), "--out", str(root / "out"),
            "--points-crs", "wgs84", "--staff", str(root / "staffing"), "--no-pdf"]
    for name in ("customers", "communities", "stores", "key_accounts"):
        args += [f"--{name.replace('_', '-')}", str(root / "synthetic" / f"{name}.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "out"


class Page(HTMLParser):
    """The text a reader sees (outside scripts and styles) and the KPI cells of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.kpis: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.title = ""
        self._in_title = False
        self._skip = 0
        self._kpi: str | None = None
        self._table: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        self._in_title = tag == "title"
        if tag == "td" and "data-kpi" in a:
            self._kpi = a["data-kpi"]
            self.kpis[self._kpi] = ""
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag in ("td", "th") and self._table:
            self.tables[self._table][-1].append("")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        if tag == "td":
            self._kpi = None
        if tag == "table":
            self._table = None
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._skip:
            return
        self.text.append(data)
        if self._kpi:
            self.kpis[self._kpi] += data.strip()
        if self._table and self.tables[self._table] and self.tables[self._table][-1]:
            self.tables[self._table][-1][-1] += data.strip()


def number(text: str) -> float:
    """A page's number back: ``12,345`` → 12345, ``61.3%`` → 0.613, ``–`` → NaN."""
    if text == "–":
        return np.nan
    if text.endswith("%"):
        return float(text[:-1].replace(",", "")) / 100
    return float(text.replace(",", ""))


def pages(written: Path, layers: PlanLayers) -> dict[str, Page]:
    return {g: Page((written / page_name(g, "html")).read_text(encoding="utf-8"))
            for g in layers.kpis("main_grid")["grid_id"]}


# -- the figures ---------------------------------------------------------------------------
def test_grid_figures_add_up_to_the_city(layers, city):
    figures = grid_figures(layers, city.tables(), roster(layers.plan))
    additive = [k.key for k in figures.kpis if k.additive]
    # every kind of KPI is there: sums of units, tiers, key-account types, staff, area
    assert {"subscribers", "revenue_cny", "customers_segment_big", "staff", "area_km2",
            "headroom"} <= set(additive)
    assert any(k.startswith("key_accounts_kind_") for k in additive)
    assert (figures.grids["staff_role_grid_manager"] == 1).all()  # staff by role
    assert figures.city["staff_role_customer_manager"] == layers.plan.units[
        "sub_grid_id"].nunique()
    keys = [k.key for k in figures.kpis]
    assert keys.index("staff_role_grid_manager") == keys.index("staff") + 1
    for key in additive:
        np.testing.assert_allclose(figures.grids[key].sum(), figures.city[key], rtol=1e-9,
                                   err_msg=key)
    # ratios are the ratio of the totals, not a mean of the grids'
    c = figures.city
    assert c["penetration"] == pytest.approx(c["subscribers"] / c["households"])
    assert c["workload_per_staff_h"] == pytest.approx(c["workload_h"] / c["staff"])
    assert c["staff_unassigned"] == 1
    assert c["customers_outside"] == 0  # the generator puts every point inside


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), share=st.floats(0.05, 1.0))
def test_totals_hold_for_any_sample_of_the_tables(layers, city, seed, share):
    """Whatever points the tables hold (a random sample, some moved outside the plan), the
    grids' tier and type counts plus those outside add up to the whole tables'."""
    rng = np.random.default_rng(seed)
    tables = {}
    for name in ("customers", "key_accounts"):
        t = city.tables()[name]
        t = t.iloc[rng.random(len(t)) < share].copy()
        away = rng.random(len(t)) < 0.1
        t.loc[away, "lng"] += 5.0  # far outside the service area
        tables[name] = t
    figures = grid_figures(layers, tables)
    for name, column in (("customers", "segment"), ("key_accounts", "kind")):
        keys = [k.key for k in figures.kpis if k.key.startswith(f"{name}_{column}_")]
        inside = sum(figures.grids[k].sum() for k in keys)
        assert inside + figures.city[f"{name}_outside"] == len(tables[name])
        assert sum(figures.city[k] for k in keys) == len(tables[name])


def test_target_penetration_is_checked(layers):
    with pytest.raises(ValueError, match="target_penetration"):
        grid_figures(layers, target_penetration=1.5)


def test_staff_file_naming_unknown_grids_is_refused(layers, tmp_path):
    staff = roster(layers.plan)
    staff.loc[0, "main_grid_id"] = "no-such-grid"
    with pytest.raises(ValueError, match="no-such-grid"):
        grid_figures(layers, staff=staff)
    with pytest.raises(ValueError, match="role"):
        read_staff(staff.drop(columns="role"))
    with pytest.raises(ValueError, match="staff.csv"):
        read_staff(tmp_path)


# -- the pages -----------------------------------------------------------------------------
def test_every_page_is_written_and_linked(written, layers):
    mains = list(layers.kpis("main_grid")["grid_id"])
    names = {p.name for p in written.iterdir()}
    assert names == {"index.html", *(page_name(g, "html") for g in mains)}
    html = (written / "index.html").read_text(encoding="utf-8")
    assert [row[0] for row in Page(html).tables["grids"][1:]] == mains
    assert ".pdf" not in html  # --no-pdf: no link to a print that is not there


def test_grid_pages_add_up_to_the_city_page(written, layers):
    """The property of the issue, read off the pages as people see them: every additive
    KPI summed over the grid pages is the city's, to the rounding of the figures."""
    city = Page((written / "index.html").read_text(encoding="utf-8")).kpis
    grids = pages(written, layers)
    assert all(set(p.kpis) == set(city) for p in grids.values())
    for kpi in KPIS:
        if kpi.key not in city:
            continue
        values = [number(p.kpis[kpi.key]) for p in grids.values()]
        assert not np.isnan(values).all(), kpi.key
        if kpi.additive:
            slack = len(values) * 0.5 * 10.0**-kpi.decimals
            assert abs(np.nansum(values) - number(city[kpi.key])) <= slack, kpi.key
    tiers = [k for k in city if k.startswith("customers_segment_")]
    assert tiers and sum(number(city[k]) for k in tiers) == number(city["customers"])


def test_numbers_are_rounded_for_people(written, layers):
    for path in [written / "index.html", *(written / page_name(g, "html")
                                           for g in layers.kpis("main_grid")["grid_id"])]:
        text = " ".join(Page(path.read_text(encoding="utf-8")).text)
        assert not re.search(rf"\d\.\d{{{MAX_DECIMALS + 1},}}", text), path.name
        assert "3.14159" not in text and "101.23456" not in text
    assert "km²" in text and "CNY/month" in text  # units in the labels


def test_staff_table_and_workload_per_staff(written, layers):
    staff = roster(layers.plan)
    for grid_id, page in pages(written, layers).items():
        mine = staff[staff["main_grid_id"] == grid_id]
        table = page.tables["staff"]
        assert table[0][:3] == ["Person", "Role", "Sub-grid"]
        assert sorted(r[0] for r in table[1:]) == sorted(mine["person_id"])
        assert number(page.kpis["staff"]) == len(mine)
        workload = layers.kpis("main_grid").set_index("grid_id").at[grid_id, "workload"]
        assert number(page.kpis["workload_per_staff_h"]) == pytest.approx(
            workload / len(mine), abs=0.05)
        # the staffing's own figure (fixed hours and travel included), as grids_staffing.csv
        assert number(page.kpis["staff_workload_per_person_h"]) == pytest.approx(
            mine["workload_hours"].mean(), abs=0.05)


def test_community_list_is_ranked_and_explained(written, layers, city):
    placed = layers.placed(city.tables(), "communities")
    for grid_id, page in pages(written, layers).items():
        rows = page.tables["communities"]
        header, body = rows[0], rows[1:]
        assert header[:3] == ["Rank", "Community", "Households"]
        assert len(body) == int((placed["main_grid_id"] == grid_id).sum())
        scores = [number(r[header.index("Value score (households)")]) for r in body]
        assert scores == sorted(scores, reverse=True)
        assert "entry threshold" in " ".join(page.text)


def test_page_opens_offline_in_a_browser(written, layers, tmp_path):
    grid_id = layers.kpis("main_grid")["grid_id"].iloc[0]
    path = written / page_name(grid_id, "html")
    with opened(path, tmp_path) as browser:
        assert_offline_and_clean(browser, path)
        kpis = browser.eval("Array.from(document.querySelectorAll('[data-kpi]'))"
                            ".map(e => [e.dataset.kpi, e.textContent])")
        assert dict(kpis)["subscribers"] == Page(path.read_text(encoding="utf-8")).kpis[
            "subscribers"]
        assert browser.eval("document.querySelector('img.chart').naturalWidth") > 100
        assert browser.eval("document.getElementById('grid-id').textContent") == grid_id
        # the embedded field map drew its grid
        drawn = browser.eval("document.querySelector('iframe.map').contentDocument"
                             ".querySelectorAll('.leaflet-overlay-pane path').length")
        assert drawn >= 2
    index = written / "index.html"
    with opened(index, tmp_path / "index") as browser:
        assert_offline_and_clean(browser, index)
        links = browser.eval("Array.from(document.querySelectorAll('#grids a'))"
                             ".map(a => a.getAttribute('href'))")
        assert page_name(grid_id, "html") in links


def pdf_page_sizes(path: Path) -> list[tuple[float, float]]:
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", path.read_bytes())
    return [(float(w), float(h)) for w, h in boxes]


def test_pdf_pages_are_landscape_a4(layers, city, tmp_path):
    grid_id = layers.kpis("main_grid")["grid_id"].iloc[0]
    staff = roster(layers.plan)
    figures = grid_figures(layers, city.tables(), staff)
    page = grid_page(layers, figures, grid_id, city.tables(), staff)
    pdf = write_pdf(layers, figures, page, city.tables(), tmp_path / "grid.pdf")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.pdf"]  # no temporary file left
    sizes = pdf_page_sizes(pdf)
    w, h = PAPER["A4"]
    assert len(sizes) == 3  # the map, the figures, communities and staff
    assert all(abs(pw - w * 72) < 0.5 and abs(ph - h * 72) < 0.5 for pw, ph in sizes)


# -- hostile ids ---------------------------------------------------------------------------
HOSTILE = '<i>M&"x\'</i>/../../evil{{7*7}}$x$'


def test_hostile_grid_id_is_escaped_and_its_file_name_safe(plan, city, tmp_path):
    first = sorted(plan.units["main_grid_id"].unique())[0]
    units = plan.units.copy()
    units["main_grid_id"] = units["main_grid_id"].replace(first, HOSTILE)
    layers = PlanLayers(Plan(units=units, measures=plan.measures))
    figures = grid_figures(layers, city.tables())
    page = grid_page(layers, figures, HOSTILE, city.tables(), None)
    out = tmp_path / "out"
    pdf = write_pdf(layers, figures, page, city.tables(), out / page_name(HOSTILE, "pdf"))
    assert pdf.name == f"{safe_filename(HOSTILE)}.pdf" and not pdf.name.startswith(".")
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("out"),
                                                                       Path("out", pdf.name)]
    from territory.reports import grid_html, index_html

    html = grid_html(layers, figures, page, city.tables())
    assert "<i>M" not in html.split("<iframe")[0]
    assert "&lt;i&gt;M&amp;&#34;x&#39;&lt;/i&gt;/../../evil{{7*7}}$x$" in html
    assert "evil49" not in html  # no template ever evaluated the id
    assert Page(html).tables["kpis"]  # still a page
    index = index_html(layers, figures)
    assert "<i>M" not in index
    link = re.search(r'<a href="([^"]+)">&lt;i&gt;', index).group(1)
    assert link == page_name(HOSTILE, "html") and "/" not in link


# -- the command and the service -----------------------------------------------------------
def test_command_needs_the_points_crs(written, tmp_path):
    plan_path = written.parent / "plan.gpkg"
    result = CliRunner().invoke(app, ["report", str(plan_path), "--out", str(tmp_path),
                                      "--communities", str(written.parent / "synthetic" /
                                                           "communities.csv")])
    assert result.exit_code == 2 and "--points-crs" in result.output
    assert not list(tmp_path.iterdir())


def test_write_reports_without_tables(layers, tmp_path):
    """A plan alone (what the service has): sums of the units, no tiers or lists."""
    grid_id = layers.kpis("main_grid")["grid_id"].iloc[0]
    figures = grid_figures(layers)
    assert not [k for k in figures.kpis if k.key.startswith("customers_segment")]
    page = grid_page(layers, figures, grid_id, None, None)
    assert page.communities is None and page.staff is None
    assert {r["key"] for r in page.kpis} >= {"subscribers", "households", "penetration",
                                             "revenue_cny", "arpu_cny", "area_km2"}


def test_service_serves_the_pages(plan, tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.store import PlanStore
    from tests.test_api import headers, settings_for

    record = PlanStore(tmp_path).add_plan(plan, service_area="areas", created_by="test",
                                          index_writer=lambda plan, folder: None)
    base = f"/plans/{record.plan_id}/reports"
    grid_id = sorted(plan.units["main_grid_id"].unique())[0]
    with TestClient(create_app(settings_for(tmp_path))) as client:
        index = client.get(f"{base}/index.html", headers=headers("viewer"))
        assert index.status_code == 200, index.text
        assert index.headers["content-type"].startswith("text/html")
        assert f'href="{page_name(grid_id, "html")}"' in index.text
        city = Page(index.text).kpis
        page = client.get(f"{base}/{page_name(grid_id, 'html')}", headers=headers("planner"))
        assert page.status_code == 200 and Page(page.text).kpis.keys() == city.keys()
        assert "L.map(" in page.text  # the field map is embedded
        pdf = client.get(f"{base}/{page_name(grid_id, 'pdf')}", headers=headers("viewer"))
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert pdf.headers["content-type"] == "application/pdf"
        assert client.get(f"{base}/index.html",
                          headers=headers("operations")).status_code == 403
        missing = client.get(f"{base}/no-such-grid.html", headers=headers("viewer"))
        assert missing.status_code == 404 and "no-such-grid" in missing.json()["detail"]


def test_hostile_plan_pages_stay_inert_in_a_browser(hostile, tmp_path):  # noqa: F811
    """The hostile plan of :mod:`tests.test_hostile_text` (payloads in every id, community,
    store and key-account name and type): every file stays in its folder, the PDF prints
    mathtext ids as text, and no payload runs on the pages or in the embedded map."""
    plan, tables = hostile
    layers = PlanLayers(plan)
    out = tmp_path / "out"
    written = write_reports(layers, out, tables, pdf=False)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    grid_id = layers.kpis("main_grid")["grid_id"].iloc[0]
    figures = grid_figures(layers, tables)
    pdf = write_pdf(layers, figures, grid_page(layers, figures, grid_id, tables, None), tables,
                    out / page_name(grid_id, "pdf"))
    assert pdf.read_bytes().startswith(b"%PDF")
    for path in (out / "index.html", out / page_name(grid_id, "html")):
        with opened(path, tmp_path / path.stem) as browser:
            state = browser.eval(INERT_JS)
            assert state["xss"] is None and state["handlers"] == [], state
            assert browser.eval("document.title") == Page(path.read_text(
                encoding="utf-8")).title
            frame = browser.eval("(() => { const f = document.querySelector('iframe.map');"
                                 " return f ? [f.contentWindow.__xss === undefined,"
                                 " f.contentDocument.title] : null; })()")
            assert frame is None or frame[0] is True
    page = Page((out / page_name(grid_id, "html")).read_text(encoding="utf-8"))
    assert page.tables["communities"][1:] and any(
        name in " ".join(page.text) for name in NAMES)  # names shown as text
