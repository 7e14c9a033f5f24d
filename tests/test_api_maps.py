"""Maps and exports over the service: offline HTML maps, printable PNG/PDF, GeoJSON,
GeoPackage, KML and CSV of a stored plan, with auth, content types, file names and errors.

In-process on one app for the module (the routes only read, so tests cannot disturb each
other, and the app's layer cache is what a real service would have after a few requests);
one test runs the real server on 127.0.0.1. The plan is the session's Xiamen template from
:mod:`tests.test_api` (6 branches, 12 main grids, 24 sub-grids).
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyogrio
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from territory.crs import wgs84_to_gcj02
from territory.printmaps import DPI, PAPER
from tests.test_api import (
    KEYS,
    assert_problem,
    copy_template,
    headers,
    plans_by_version,
    settings_for,
)
from tests.test_api_server import Server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
V = headers("viewer")
LAYERS = {"branch": "branches", "main_grid": "main_grids", "sub_grid": "sub_grids"}
# an outside script or stylesheet: <script src=…>, <link … href="http…">, @import / url(http…)
_ONLINE_ASSET = re.compile(
    r"<script[^>]*\bsrc\s*=|<link[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//"
    r"|@import\s+(?:url\()?\s*[\"']?(?:https?:)?//|url\(\s*[\"']?(?:https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = copy_template(tmp_path_factory.mktemp("maps") / "data")
    with TestClient(create_app(settings_for(data))) as c:
        yield c


@pytest.fixture(scope="module")
def plan(client: TestClient) -> dict[str, Any]:
    return plans_by_version(client)[1]


@pytest.fixture(scope="module")
def main_id(client: TestClient, plan: dict[str, Any]) -> str:
    fc = client.get(f"/plans/{plan['plan_id']}/grids/main_grid", headers=V).json()
    return sorted(f["properties"]["grid_id"] for f in fc["features"])[0]


def assert_offline(page: str) -> None:
    """A whole page with every script and stylesheet inline: nothing fetched to show it."""
    assert page.lstrip().lower().startswith("<!doctype html>")
    found = _ONLINE_ASSET.search(page)
    assert found is None, page[max(found.start() - 80, 0): found.end() + 80]
    assert "L.map(" in page and "<style>" in page  # Leaflet inlined, and a map made


def assert_file(r: Any, media: str, filename: str, kind: str = "attachment") -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == media
    assert r.headers["content-disposition"] == f'{kind}; filename="{filename}"'


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- auth and errors -----------------------------------------------------------------------
ROUTES = ["maps/overview", "maps/choropleth", "maps/field/{main}", "prints/city.png",
          "prints/grids/{main}.pdf", "exports/geojson", "exports/gpkg", "exports/kml",
          "exports/csv"]


@pytest.mark.parametrize("route", ROUTES)
def test_no_key_is_401(client: TestClient, plan: dict, main_id: str, route: str) -> None:
    url = f"/plans/{plan['plan_id']}/{route.format(main=main_id)}"
    assert_problem(client.get(url), 401)
    assert_problem(client.get(url, headers={"X-API-Key": "nope"}), 401)


@pytest.mark.parametrize("role", list(KEYS))
def test_every_role_reads_maps_and_exports(client: TestClient, plan: dict, role: str) -> None:
    base = f"/plans/{plan['plan_id']}"
    assert client.get(f"{base}/maps/overview", headers=headers(role)).status_code == 200
    assert client.get(f"{base}/exports/csv", headers=headers(role)).status_code == 200


def test_unknown_plan_or_grid_is_404_naming_it(client: TestClient, plan: dict) -> None:
    for route in ROUTES:
        body = assert_problem(client.get(f"/plans/no-such-plan/{route.format(main='x')}",
                                         headers=V), 404)
        assert "'no-such-plan'" in body["detail"]
    base = f"/plans/{plan['plan_id']}"
    for route in ("maps/field/NO-GRID", "prints/grids/NO-GRID.png"):
        body = assert_problem(client.get(f"{base}/{route}", headers=V), 404)
        assert "'NO-GRID'" in body["detail"] and body["title"] == "Grid not found"


def _bad(client: TestClient, url: str, params: dict[str, Any], field: str,
         allowed: list[str]) -> None:
    """422 naming the field, its fix listing every allowed value."""
    body = assert_problem(client.get(url, params=params, headers=V), 422)
    fixes = {e["field"]: e["fix"] for e in body["errors"]}
    assert field in fixes, body
    for value in allowed:
        assert value in fixes[field], (value, body)


def test_bad_level_format_crs_measure_are_422(client: TestClient, plan: dict) -> None:
    base = f"/plans/{plan['plan_id']}"
    levels = ["branch", "main_grid", "sub_grid"]
    _bad(client, f"{base}/maps/choropleth", {"level": "district"}, "query.level", levels)
    _bad(client, f"{base}/maps/choropleth", {"measure": "colour"}, "query.measure",
         ["dev_subscribers", "penetration", "staff"])
    _bad(client, f"{base}/maps/choropleth", {"scheme": "Jenks"}, "query.scheme",
         ["Quantiles", "NaturalBreaks", "EqualInterval"])
    _bad(client, f"{base}/maps/choropleth", {"k": 1}, "query.k", [">= 2"])
    _bad(client, f"{base}/prints/city.svg", {}, "path.format", ["png", "pdf"])
    _bad(client, f"{base}/prints/city.png", {"paper": "A5"}, "query.paper", ["A4", "A3"])
    _bad(client, f"{base}/exports/shp", {}, "path.format", ["geojson", "gpkg", "kml", "csv"])
    _bad(client, f"{base}/exports/geojson", {"level": "district"}, "query.level",
         [*levels, "unit"])
    _bad(client, f"{base}/exports/kml", {"level": "unit"}, "query.level", levels)
    _bad(client, f"{base}/exports/geojson", {"crs": "bd09"}, "query.crs", ["wgs84", "gcj02"])
    _bad(client, f"{base}/exports/gpkg", {"crs": "gcj02"}, "query.crs", ["wgs84", "geojson"])


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/plans/{plan_id}/maps/overview", "/plans/{plan_id}/maps/choropleth",
            "/plans/{plan_id}/maps/field/{grid_id}", "/plans/{plan_id}/prints/city.{format}",
            "/plans/{plan_id}/prints/grids/{grid_id}.{format}",
            "/plans/{plan_id}/exports/{format}"} <= set(paths)


# -- HTML maps -----------------------------------------------------------------------------
def test_overview_is_offline_html(client: TestClient, plan: dict, main_id: str) -> None:
    url = f"/plans/{plan['plan_id']}/maps/overview"
    r = client.get(url, headers=V)
    assert_file(r, "text/html", "xiamen-v1-overview.html", "inline")
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert_offline(r.text)
    assert main_id in r.text and f"{main_id}-S2" in r.text  # main grids and sub-grids
    assert "tile.openstreetmap.org" in r.text  # the online base map, off until ticked…
    offline = client.get(url, params={"online_tiles": "false"}, headers=V).text
    assert "tile.openstreetmap.org" not in offline  # …or left out
    # the plan's layer tables were computed once and are kept for the next request
    cache = client.app.state.layers
    assert cache.layers(plan["plan_id"]) is cache.layers(plan["plan_id"])


def test_choropleth(client: TestClient, plan: dict) -> None:
    base = f"/plans/{plan['plan_id']}/maps/choropleth"
    r = client.get(base, headers=V)
    assert_file(r, "text/html", "xiamen-v1-choropleth-main_grid-dev_subscribers.html", "inline")
    assert_offline(r.text)
    assert "Main grids: dev_subscribers (Quantiles)" in r.text
    r = client.get(base, params={"measure": "penetration", "level": "sub_grid",
                                 "scheme": "EqualInterval", "k": 3}, headers=V)
    assert_file(r, "text/html", "xiamen-v1-choropleth-sub_grid-penetration.html", "inline")
    assert "Sub-grids: penetration (EqualInterval)" in r.text
    assert_offline(r.text)


@pytest.mark.parametrize("level", ["branch", "main_grid", "sub_grid"])
def test_field_map_of_a_grid(client: TestClient, plan: dict, main_id: str, level: str) -> None:
    grid_id = {"branch": main_id.split("-")[0], "main_grid": main_id,
               "sub_grid": f"{main_id}-S1"}[level]
    r = client.get(f"/plans/{plan['plan_id']}/maps/field/{grid_id}", headers=V)
    assert_file(r, "text/html", f"xiamen-v1-{grid_id}.html", "inline")
    assert_offline(r.text)
    assert grid_id in r.text and "Neighbouring grids" in r.text


# -- printable maps ------------------------------------------------------------------------
def test_printed_city_png_and_pdf(client: TestClient, plan: dict) -> None:
    base = f"/plans/{plan['plan_id']}/prints"
    png = client.get(f"{base}/city.png", headers=V)
    assert_file(png, "image/png", "xiamen-v1-city.png", "inline")
    width, height = png_size(png.content)
    assert abs(width - PAPER["A3"][0] * DPI) <= 1 and abs(height - PAPER["A3"][1] * DPI) <= 1
    pdf = client.get(f"{base}/city.pdf", headers=V)  # the same drawing, from memory
    assert_file(pdf, "application/pdf", "xiamen-v1-city.pdf", "inline")
    assert pdf.content.startswith(b"%PDF-") and b"%%EOF" in pdf.content[-32:]


def test_printed_grid_png_and_pdf(client: TestClient, plan: dict, main_id: str) -> None:
    base = f"/plans/{plan['plan_id']}/prints/grids/{main_id}"
    png = client.get(f"{base}.png", headers=V)
    assert_file(png, "image/png", f"xiamen-v1-{main_id}.png", "inline")
    width, height = png_size(png.content)
    assert abs(width - PAPER["A4"][0] * DPI) <= 1 and abs(height - PAPER["A4"][1] * DPI) <= 1
    pdf = client.get(f"{base}.pdf", headers=V)
    assert_file(pdf, "application/pdf", f"xiamen-v1-{main_id}.pdf", "inline")
    assert pdf.content.startswith(b"%PDF-")


# -- exports -------------------------------------------------------------------------------
def _first_xy(feature_collection: dict[str, Any]) -> np.ndarray:
    geometry = feature_collection["features"][0]["geometry"]
    ring = (geometry["coordinates"][0] if geometry["type"] == "Polygon"
            else geometry["coordinates"][0][0])
    return np.array(ring[:5], dtype=float)


def test_geojson_export(client: TestClient, plan: dict) -> None:
    base = f"/plans/{plan['plan_id']}/exports/geojson"
    r = client.get(base, headers=V)  # main grids by default
    assert_file(r, "application/geo+json", "xiamen-v1-main_grids.geojson")
    fc = r.json()
    assert len(fc["features"]) == plan["n_grids"]["main_grid"]
    assert {"grid_id", "parent_id", "subscribers", "dev_subscribers", "colour"} <= set(
        fc["features"][0]["properties"])
    for level, n in plan["n_grids"].items():
        fc = client.get(base, params={"level": level}, headers=V).json()
        assert len(fc["features"]) == n
    wgs = client.get(base, params={"level": "branch"}, headers=V).json()
    r = client.get(base, params={"level": "branch", "crs": "gcj02"}, headers=V)
    assert_file(r, "application/geo+json", "xiamen-v1-branches.gcj02.geojson")
    gcj = r.json()
    assert len(gcj["features"]) == len(wgs["features"])
    xy = _first_xy(wgs)
    expected = np.column_stack(wgs84_to_gcj02(xy[:, 0], xy[:, 1]))
    np.testing.assert_allclose(_first_xy(gcj), expected, atol=2e-7)
    assert np.abs(expected - xy).max() > 1e-3  # GCJ-02 is shifted by hundreds of metres


def test_geopackage_export_reads_back(client: TestClient, plan: dict, tmp_path: Path) -> None:
    base = f"/plans/{plan['plan_id']}/exports/gpkg"
    r = client.get(base, headers=V)
    assert_file(r, "application/geopackage+sqlite3", "xiamen-v1-grids.gpkg")
    path = tmp_path / "grids.gpkg"
    path.write_bytes(r.content)
    assert {name for name, _ in pyogrio.list_layers(path)} == set(LAYERS.values())
    for level, layer in LAYERS.items():
        frame = pyogrio.read_dataframe(path, layer=layer)
        assert len(frame) == plan["n_grids"][level] and frame.crs.to_epsg() == 4326
        assert frame["grid_id"].is_unique and frame.geometry.is_valid.all()
    r = client.get(base, params={"level": "sub_grid"}, headers=V)
    assert_file(r, "application/geopackage+sqlite3", "xiamen-v1-sub_grids.gpkg")
    path.write_bytes(r.content)
    assert [name for name, _ in pyogrio.list_layers(path)] == ["sub_grids"]
    assert pyogrio.read_info(path, layer="sub_grids")["features"] == plan["n_grids"]["sub_grid"]


@pytest.mark.parametrize("level", ["branch", "main_grid", "sub_grid"])
def test_kml_export_reads_back(client: TestClient, plan: dict, tmp_path: Path,
                               level: str) -> None:
    r = client.get(f"/plans/{plan['plan_id']}/exports/kml", params={"level": level},
                   headers=V)
    assert_file(r, "application/vnd.google-earth.kml+xml", f"xiamen-v1-{LAYERS[level]}.kml")
    path = tmp_path / f"{LAYERS[level]}.kml"
    path.write_bytes(r.content)
    frame = pyogrio.read_dataframe(path)
    assert len(frame) == plan["n_grids"][level] and frame["Name"].is_unique
    assert (frame["Name"] == frame["grid_id"]).all()
    assert frame["description"].str.contains("Subscribers: ").all()


def test_csv_exports(client: TestClient, plan: dict) -> None:
    base = f"/plans/{plan['plan_id']}/exports/csv"
    for level, n in plan["n_grids"].items():
        r = client.get(base, params={"level": level}, headers=V)
        assert_file(r, "text/csv", f"xiamen-v1-{LAYERS[level]}.csv")
        table = pd.read_csv(io.StringIO(r.text))
        assert len(table) == n and {"grid_id", "subscribers", "workload"} <= set(table)
    r = client.get(base, params={"level": "unit"}, headers=V)
    assert_file(r, "text/csv", "xiamen-v1-units.csv")
    units = pd.read_csv(io.StringIO(r.text))
    assert list(units.columns) == ["unit_id", "sub_grid_id", "main_grid_id", "branch_id"]
    assert len(units) == plan["n_units"] and units["unit_id"].is_unique
    assert units["sub_grid_id"].nunique() == plan["n_grids"]["sub_grid"]


# -- the real server -----------------------------------------------------------------------
def test_maps_and_exports_over_http(tmp_path: Path) -> None:
    config = tmp_path / "territory.toml"
    keys = "\n".join(f'"{key}" = "{role}"' for role, key in KEYS.items())
    config.write_text(f"solver_workers = 1\n[api_keys]\n{keys}\n", encoding="utf-8")
    server = Server(copy_template(tmp_path / "data"), config)
    server.start()
    try:
        with server.client() as http:
            plan = plans_by_version(http)[1]
            base = f"/plans/{plan['plan_id']}"
            assert_problem(http.get(f"{base}/maps/overview"), 401)
            r = http.get(f"{base}/maps/overview", headers=V)
            assert_file(r, "text/html", "xiamen-v1-overview.html", "inline")
            assert_offline(r.text)
            r = http.get(f"{base}/exports/gpkg", headers=V)
            assert_file(r, "application/geopackage+sqlite3", "xiamen-v1-grids.gpkg")
            path = tmp_path / "grids.gpkg"
            path.write_bytes(r.content)
            assert pyogrio.read_info(path, layer="main_grids")["features"] == 12
            main_id = pyogrio.read_dataframe(path, layer="main_grids")["grid_id"].iloc[0]
            r = http.get(f"{base}/prints/grids/{main_id}.pdf", headers=V)
            assert_file(r, "application/pdf", f"xiamen-v1-{main_id}.pdf", "inline")
            assert r.content.startswith(b"%PDF-")
            assert_problem(http.get(f"{base}/exports/kml", params={"crs": "gcj02"},
                                    headers=V), 422)
    finally:
        server.stop()
