"""Tests for territory.boundaries: the shipped cities and reading a planner's own layer."""

from __future__ import annotations

from pathlib import Path

import geopandas
import numpy as np
import pyogrio
import pytest
import shapely

from territory import boundaries, crs
from territory.errors import InvalidInputError

REFERENCE = Path(__file__).resolve().parent / "data"

BOW_TIE = shapely.Polygon([(114.0, 22.5), (114.1, 22.6), (114.1, 22.5), (114.0, 22.6)])
SQUARE = shapely.box(114.0, 22.5, 114.05, 22.55)


def _write(gdf: geopandas.GeoDataFrame, path: Path, **kwargs) -> Path:
    pyogrio.write_dataframe(gdf, path, **kwargs)
    return path


def _area_km2(gdf: geopandas.GeoDataFrame) -> tuple[float, float]:
    """Sum of the polygon areas and area of their union, in km², in the local UTM zone."""
    bounds = gdf.total_bounds
    projected = gdf.to_crs(crs.local_projected_crs(bounds[[0, 2]], bounds[[1, 3]]))
    total = float(projected.area.sum()) / 1e6
    union = shapely.union_all(projected.geometry.values).area / 1e6
    return total, union


# ---- load_city -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shenzhen() -> geopandas.GeoDataFrame:
    return boundaries.load_city("shenzhen")


@pytest.fixture(scope="module")
def xiamen() -> geopandas.GeoDataFrame:
    return boundaries.load_city("xiamen")


def test_data_dir_holds_shipped_files() -> None:
    assert boundaries.DATA_DIR.is_dir()
    for city in boundaries.CITIES:
        assert (boundaries.DATA_DIR / f"{city}_districts_gcj02.geojson").is_file()
    assert (boundaries.DATA_DIR / "SOURCE.md").is_file()


@pytest.mark.parametrize(("city", "count"), [("shenzhen", 9), ("xiamen", 6)])
def test_load_city_shape(city: str, count: int, request: pytest.FixtureRequest) -> None:
    gdf = request.getfixturevalue(city)
    assert len(gdf) == count
    assert list(gdf.columns) == ["adcode", "name", "city", "province", "geometry"]
    assert gdf.crs.to_epsg() == 4326
    assert shapely.is_valid(gdf.geometry.values).all()
    assert set(gdf.geom_type) <= {"Polygon", "MultiPolygon"}
    assert gdf["adcode"].is_unique
    assert all(isinstance(a, str) and len(a) == 6 for a in gdf["adcode"])
    assert list(gdf.index) == list(range(count))


@pytest.mark.parametrize("city", ["shenzhen", "xiamen"])
def test_load_city_matches_wgs84_reference(city: str, request: pytest.FixtureRequest) -> None:
    gdf = request.getfixturevalue(city)
    ref = pyogrio.read_dataframe(REFERENCE / f"{city}_districts_wgs84.geojson")
    assert list(gdf["adcode"]) == list(ref["adcode"])
    got = shapely.get_coordinates(gdf.geometry.values)
    want = shapely.get_coordinates(ref.geometry.values)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("city", ["shenzhen", "xiamen"])
def test_districts_do_not_overlap(city: str, request: pytest.FixtureRequest) -> None:
    total, union = _area_km2(request.getfixturevalue(city))
    assert abs(total - union) / union < 1e-4


def test_city_areas(shenzhen: geopandas.GeoDataFrame, xiamen: geopandas.GeoDataFrame) -> None:
    sz_total, _ = _area_km2(shenzhen)
    xm_total, _ = _area_km2(xiamen)
    assert abs(sz_total - 2139.0) / 2139.0 < 0.02
    assert abs(xm_total - 1765.0) / 1765.0 < 0.02


def test_load_city_other_crs_and_aliases(xiamen: geopandas.GeoDataFrame) -> None:
    gcj = boundaries.load_city("Xiamen", crs="GCJ-02")
    raw = pyogrio.read_dataframe(boundaries.DATA_DIR / "xiamen_districts_gcj02.geojson")
    np.testing.assert_allclose(
        shapely.get_coordinates(gcj.geometry.values),
        shapely.get_coordinates(raw.geometry.values),
        atol=1e-9,
    )
    gk = boundaries.load_city("厦门市", crs="EPSG:4547")
    assert gk.crs.to_epsg() == 4547
    # Projected areas agree with the UTM areas of the WGS84 version within 0.5%.
    assert abs(gk.area.sum() / 1e6 - _area_km2(xiamen)[0]) / _area_km2(xiamen)[0] < 0.005


def test_load_city_unknown_city_lists_cities() -> None:
    with pytest.raises(InvalidInputError) as info:
        boundaries.load_city("beijing")
    for city in boundaries.CITIES:
        assert city in str(info.value)
    with pytest.raises(InvalidInputError, match="crs"):
        boundaries.load_city("shenzhen", crs="mercator")


# ---- read_boundaries: good files -----------------------------------------------------------------


def test_read_boundaries_gcj02_geojson_needs_crs_override(
    tmp_path: Path, shenzhen: geopandas.GeoDataFrame
) -> None:
    raw = pyogrio.read_dataframe(boundaries.DATA_DIR / "shenzhen_districts_gcj02.geojson")
    path = _write(raw, tmp_path / "sz.geojson")
    out = boundaries.read_boundaries(path, crs="gcj02", id_column="adcode")
    assert out.crs.to_epsg() == 4326
    assert list(out["adcode"]) == list(shenzhen["adcode"])
    np.testing.assert_allclose(
        shapely.get_coordinates(out.geometry.values),
        shapely.get_coordinates(shenzhen.geometry.values),
        atol=1e-9,
    )
    # Without the override the file's label (EPSG:4326) is taken at its word: unchanged.
    as_labelled = boundaries.read_boundaries(path)
    np.testing.assert_allclose(
        shapely.get_coordinates(as_labelled.geometry.values),
        shapely.get_coordinates(raw.geometry.values),
    )


def test_read_boundaries_uses_file_crs(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame(
        {"grid": ["a", "b"]}, geometry=[SQUARE, shapely.box(114.05, 22.5, 114.1, 22.55)], crs=4326
    )
    path = _write(gdf.to_crs(4547), tmp_path / "gk.gpkg")
    out = boundaries.read_boundaries(path, id_column="grid")
    assert out.crs.to_epsg() == 4326
    assert list(out["grid"]) == ["a", "b"]
    assert (
        np.abs(
            shapely.get_coordinates(out.geometry.values)
            - shapely.get_coordinates(gdf.geometry.values)
        ).max()
        < 1e-8
    )


def test_read_boundaries_layer_choice(tmp_path: Path) -> None:
    path = tmp_path / "two.gpkg"
    one = geopandas.GeoDataFrame({"id": [1]}, geometry=[SQUARE], crs=4326)
    _write(one, path, layer="grids")
    _write(one, path, layer="other", append=False)
    with pytest.raises(InvalidInputError, match="`layer`") as info:
        boundaries.read_boundaries(path)
    assert "grids" in str(info.value) and "other" in str(info.value)
    assert len(boundaries.read_boundaries(path, layer="grids")) == 1
    with pytest.raises(InvalidInputError, match="missing"):
        boundaries.read_boundaries(path, layer="missing")


# ---- read_boundaries: bad files ------------------------------------------------------------------


def test_bow_tie_is_refused_with_row_ids(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame({"grid": ["ok", "bad"]}, geometry=[SQUARE, BOW_TIE], crs=4326)
    path = _write(gdf, tmp_path / "bowtie.geojson")
    with pytest.raises(InvalidInputError) as info:
        boundaries.read_boundaries(path)
    message = str(info.value)
    assert "rows [1]" in message
    assert "self-intersecting" in message
    assert "`repair`" in message and "--" not in message  # the parameter, not a CLI flag
    with pytest.raises(InvalidInputError, match=r"rows with grid \['bad'\]"):
        boundaries.read_boundaries(path, id_column="grid")


def test_repair_fixes_bow_tie(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame({"grid": ["ok", "bad"]}, geometry=[SQUARE, BOW_TIE], crs=4326)
    path = _write(gdf, tmp_path / "bowtie.gpkg")
    out = boundaries.read_boundaries(path, repair=True)
    assert shapely.is_valid(out.geometry.values).all()
    assert set(out.geom_type) <= {"Polygon", "MultiPolygon"}
    fixed = out.geometry.iloc[1]
    # The bow-tie becomes its two triangles: a quarter of the bounding box each.
    assert fixed.geom_type == "MultiPolygon" and len(fixed.geoms) == 2
    assert fixed.area == pytest.approx(0.1 * 0.1 / 2)
    assert out.geometry.iloc[0].equals(SQUARE)


def test_repair_polygons_keeps_only_polygonal_parts() -> None:
    spike = shapely.Polygon([(0, 0), (2, 0), (2, 2), (0, 2), (0, 0), (-1, -1), (0, 0)])
    line_like = shapely.Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])
    out = boundaries.repair_polygons([BOW_TIE, spike, line_like, SQUARE])
    assert shapely.is_valid(out).all()
    assert set(shapely.get_type_id(out[:2])) <= {3, 6}
    assert out[1].area == pytest.approx(4.0)
    assert out[2].is_empty
    assert out[3].equals(SQUARE)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    path.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty") as info:
        boundaries.read_boundaries(path)
    assert str(path) in str(info.value)


def test_file_without_features(tmp_path: Path) -> None:
    path = tmp_path / "nofeatures.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InvalidInputError, match="no features") as info:
        boundaries.read_boundaries(path)
    assert str(path) in str(info.value)


def test_point_geometry_refused(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame(
        {"id": [1, 2, 3]}, geometry=[SQUARE, shapely.Point(114.0, 22.5), SQUARE], crs=4326
    )
    path = _write(gdf, tmp_path / "mixed.geojson")
    with pytest.raises(InvalidInputError) as info:
        boundaries.read_boundaries(path)
    message = str(info.value)
    assert "rows [1]" in message and "Point" in message and "Polygon" in message


def test_empty_geometry_refused(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame({"id": [1, 2]}, geometry=[SQUARE, shapely.Polygon()], crs=4326)
    path = _write(gdf, tmp_path / "emptygeom.gpkg")
    with pytest.raises(InvalidInputError, match=r"rows \[1\].*(empty|no geometry)"):
        boundaries.read_boundaries(path)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.gpkg"
    with pytest.raises(InvalidInputError, match="does not exist") as info:
        boundaries.read_boundaries(path)
    assert str(path) in str(info.value)


def test_malformed_geojson(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text("this is not { json at all")
    with pytest.raises(InvalidInputError) as info:
        boundaries.read_boundaries(path)
    assert str(path) in str(info.value)
    assert "could not be read" in str(info.value)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_file_without_crs_needs_crs_option(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame({"id": [1]}, geometry=[SQUARE])
    path = _write(gdf, tmp_path / "nocrs.gpkg")
    with pytest.raises(InvalidInputError, match="`crs`"):
        boundaries.read_boundaries(path)
    out = boundaries.read_boundaries(path, crs="bd09")
    assert out.crs.to_epsg() == 4326
    wx, wy = crs.bd09_to_wgs84(*shapely.get_coordinates(SQUARE).T)
    np.testing.assert_allclose(shapely.get_coordinates(out.geometry.values), np.c_[wx, wy])


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_projected_data_declared_as_wgs84_refused(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame({"id": [1]}, geometry=[SQUARE], crs=4326).to_crs(4547)
    path = _write(gdf.set_crs(None, allow_override=True), tmp_path / "gk_nocrs.gpkg")
    with pytest.raises(InvalidInputError, match="EPSG:4547|projected"):
        boundaries.read_boundaries(path, crs="wgs84")
    out = boundaries.read_boundaries(path, crs="EPSG:4547")
    assert out.geometry.iloc[0].equals_exact(SQUARE, 1e-8)


def test_id_column_checks(tmp_path: Path) -> None:
    gdf = geopandas.GeoDataFrame({"grid": ["a", "a", "b"]}, geometry=[SQUARE] * 3, crs=4326)
    path = _write(gdf, tmp_path / "dup.gpkg")
    with pytest.raises(InvalidInputError, match="duplicate.*'a'"):
        boundaries.read_boundaries(path, id_column="grid")
    with pytest.raises(InvalidInputError, match="id_column 'nope'.*grid"):
        boundaries.read_boundaries(path, id_column="nope")


# ---- read_boundaries: coordinate systems that cannot be trusted ---------------------------------

LOCAL_CS = ('LOCAL_CS["Site grid",LOCAL_DATUM["Site",0],UNIT["metre",1],AXIS["X",EAST],'
            'AXIS["Y",NORTH]]')


def local_shapefile(tmp_path: Path) -> Path:
    """A Shapefile in a site grid: its .prj is a LOCAL_CS, with no EPSG code."""
    gdf = geopandas.GeoDataFrame({"adcode": ["1", "2"]}, geometry=[
        shapely.box(0, 0, 100, 100), shapely.box(100, 0, 200, 100)])
    path = tmp_path / "site.shp"
    with pytest.warns(UserWarning, match="crs"):
        pyogrio.write_dataframe(gdf, path)
    path.with_suffix(".prj").write_text(LOCAL_CS)
    return path


def test_local_cs_shapefile_says_which_file_and_what_to_pass(tmp_path: Path) -> None:
    path = local_shapefile(tmp_path)
    with pytest.raises(InvalidInputError) as info:
        boundaries.read_boundaries(path)
    message = str(info.value)
    assert str(path) in message and "'Site grid'" in message and "`crs`" in message
    # the planner knows the grid is UTM 50N: then it reads, the origin at the zone's false
    # easting, 500 km west of 117°E on the equator
    out = boundaries.read_boundaries(path, crs="EPSG:32650")
    assert out.crs.to_epsg() == 4326
    west = np.degrees(500_000 / (0.9996 * 6_378_137))  # scale factor, equatorial radius
    assert out.total_bounds[[0, 1]] == pytest.approx([117 - west, 0.0], abs=0.01)


def geojson_with_crs(tmp_path: Path, member: dict | None) -> Path:
    import json

    doc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"adcode": "440305"},
        "geometry": shapely.geometry.mapping(SQUARE)}]}
    if member is not None:
        doc["crs"] = member
    path = tmp_path / "labelled.geojson"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("label", ["urn:ogc:def:crs:EPSG::999999", "garbage name"])
def test_unknown_geojson_crs_label_is_not_read_as_wgs84(tmp_path: Path, label: str) -> None:
    path = geojson_with_crs(tmp_path, {"type": "name", "properties": {"name": label}})
    with pytest.raises(InvalidInputError, match="not one pyproj knows") as info:
        boundaries.read_boundaries(path)
    assert label in str(info.value) and "`crs`" in str(info.value)
    # the planner says what the coordinates are: the label is overridden
    assert len(boundaries.read_boundaries(path, crs="wgs84")) == 1


@pytest.mark.parametrize("member, epsg", [
    (None, 4326),
    ({"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}, 4326),
    ({"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::4490"}}, 4326),
    ({"type": "name", "properties": {"name": "EPSG:4326"}}, 4326),
])
def test_known_geojson_crs_labels_are_read(tmp_path: Path, member, epsg) -> None:
    out = boundaries.read_boundaries(geojson_with_crs(tmp_path, member))
    assert out.crs.to_epsg() == epsg
    assert shapely.equals_exact(out.geometry.iloc[0], SQUARE, tolerance=1e-6)
