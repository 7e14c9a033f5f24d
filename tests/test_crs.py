"""Tests for territory.crs: GCJ-02/BD-09 formulas, pyproj paths, geometry conversion."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas
import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from territory import crs
from territory.errors import InvalidInputError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "boundaries"
REFERENCE = Path(__file__).resolve().parent / "data"

# Inside the GCJ-02 box with a margin larger than the offset, so a round trip never crosses it.
china_lng = st.floats(min_value=72.1, max_value=137.7, allow_nan=False)
china_lat = st.floats(min_value=0.93, max_value=55.7, allow_nan=False)

SHENZHEN = (114.0579, 22.5431)  # Futian
OUTSIDE = [(0.0, 0.0), (-0.1276, 51.5072), (-74.006, 40.7128), (139.6917, 35.6895), (72.0, 30.0)]

ALL_FUNCS = [
    crs.wgs84_to_gcj02,
    crs.gcj02_to_wgs84,
    crs.gcj02_to_bd09,
    crs.bd09_to_gcj02,
    crs.wgs84_to_bd09,
    crs.bd09_to_wgs84,
]


# ---- textbook transcription of the public GCJ-02 formula (scalar, math module) -------------


def _textbook_wgs84_to_gcj02(lng: float, lat: float) -> tuple[float, float]:
    a, ee, pi = 6378245.0, 0.00669342162296594323, math.pi
    x, y = lng - 105.0, lat - 35.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlat += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
    dlat += (160.0 * math.sin(y / 12.0 * pi) + 320 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
    dlng = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlng += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlng += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
    dlng += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
    radlat = lat / 180.0 * pi
    magic = 1 - ee * math.sin(radlat) ** 2
    sqrtmagic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((a * (1 - ee)) / (magic * sqrtmagic) * pi)
    dlng = (dlng * 180.0) / (a / sqrtmagic * math.cos(radlat) * pi)
    return lng + dlng, lat + dlat


def _textbook_gcj02_to_bd09(lng: float, lat: float) -> tuple[float, float]:
    x_pi = math.pi * 3000.0 / 180.0
    z = math.sqrt(lng * lng + lat * lat) + 0.00002 * math.sin(lat * x_pi)
    theta = math.atan2(lat, lng) + 0.000003 * math.cos(lng * x_pi)
    return z * math.cos(theta) + 0.0065, z * math.sin(theta) + 0.006


def test_forward_formulas_match_textbook_transcription() -> None:
    rng = np.random.default_rng(7)
    lng = rng.uniform(72.01, 137.83, 2000)
    lat = rng.uniform(0.83, 55.82, 2000)
    gx, gy = crs.wgs84_to_gcj02(lng, lat)
    ref = np.array([_textbook_wgs84_to_gcj02(a, b) for a, b in zip(lng, lat, strict=True)])
    np.testing.assert_allclose(gx, ref[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(gy, ref[:, 1], rtol=0, atol=1e-12)
    bx, by = crs.gcj02_to_bd09(gx, gy)
    ref_bd = np.array([_textbook_gcj02_to_bd09(a, b) for a, b in zip(gx, gy, strict=True)])
    np.testing.assert_allclose(bx, ref_bd[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(by, ref_bd[:, 1], rtol=0, atol=1e-12)


# ---- the shipped districts against the independent WGS84 reference -------------------------


@pytest.mark.parametrize("city", ["shenzhen", "xiamen"])
def test_shipped_gcj02_districts_convert_to_reference_wgs84(city: str) -> None:
    gcj = pyogrio.read_dataframe(SHIPPED / f"{city}_districts_gcj02.geojson")
    ref = pyogrio.read_dataframe(REFERENCE / f"{city}_districts_wgs84.geojson")
    assert list(gcj["adcode"]) == list(ref["adcode"])
    converted = crs.transform_geometries(gcj.geometry.values, "gcj02", "wgs84")
    got = shapely.get_coordinates(np.asarray(converted))
    want = shapely.get_coordinates(ref.geometry.values)
    assert got.shape == want.shape
    # The reference is rounded to 1e-6 degrees, so the difference is at most ~5e-7.
    assert np.abs(got - want).max() < 1e-6
    # The conversion moved every vertex by hundreds of metres, far more than the tolerance.
    original = shapely.get_coordinates(gcj.geometry.values)
    assert np.abs(original - want).max() > 1e-3


# ---- round trips -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(lng=china_lng, lat=china_lat)
def test_round_trip_wgs84_gcj02(lng: float, lat: float) -> None:
    gx, gy = crs.wgs84_to_gcj02(lng, lat)
    wx, wy = crs.gcj02_to_wgs84(gx, gy)
    assert abs(float(wx) - lng) < 1e-6
    assert abs(float(wy) - lat) < 1e-6


@settings(max_examples=300, deadline=None)
@given(lng=china_lng, lat=china_lat)
def test_round_trip_wgs84_bd09(lng: float, lat: float) -> None:
    bx, by = crs.wgs84_to_bd09(lng, lat)
    wx, wy = crs.bd09_to_wgs84(bx, by)
    assert abs(float(wx) - lng) < 1e-6
    assert abs(float(wy) - lat) < 1e-6


@settings(max_examples=50, deadline=None)
@given(
    points=st.lists(st.tuples(china_lng, china_lat), min_size=1, max_size=200),
)
def test_round_trip_vectorised(points: list[tuple[float, float]]) -> None:
    lng = np.array([p[0] for p in points])
    lat = np.array([p[1] for p in points])
    for name in ("gcj02", "bd09"):
        x, y = crs.from_wgs84(lng, lat, name)
        wx, wy = crs.to_wgs84(x, y, name)
        assert np.abs(wx - lng).max() < 1e-6
        assert np.abs(wy - lat).max() < 1e-6


def test_round_trip_tightness_and_chunked_path() -> None:
    # More points than one chunk, so the threaded chunk path is exercised.
    n = 2 * crs._CHUNK + 17
    rng = np.random.default_rng(3)
    lng = rng.uniform(73.0, 135.0, n).reshape(-1, 1)
    lat = rng.uniform(18.0, 53.0, n).reshape(-1, 1)
    gx, gy = crs.wgs84_to_gcj02(lng, lat)
    assert gx.shape == lng.shape
    wx, wy = crs.gcj02_to_wgs84(gx, gy)
    assert np.abs(wx - lng).max() < 1e-7
    assert np.abs(wy - lat).max() < 1e-7
    # Chunked result equals an unchunked evaluation.
    small_x, small_y = crs.wgs84_to_gcj02(lng[:1000], lat[:1000])
    np.testing.assert_array_equal(small_x, gx[:1000])
    np.testing.assert_array_equal(small_y, gy[:1000])


def test_gcj02_bd09_direct_round_trip() -> None:
    rng = np.random.default_rng(11)
    lng = rng.uniform(73.0, 135.0, 10_000)
    lat = rng.uniform(18.0, 53.0, 10_000)
    bx, by = crs.gcj02_to_bd09(lng, lat)
    gx, gy = crs.bd09_to_gcj02(bx, by)
    assert np.abs(gx - lng).max() < 1e-7
    assert np.abs(gy - lat).max() < 1e-7
    cx, cy = crs.convert(lng, lat, "gcj02", "bd09")
    np.testing.assert_array_equal(cx, bx)
    np.testing.assert_array_equal(cy, by)


# ---- known offsets, out of China, NaN -----------------------------------------------------------


def test_shenzhen_gcj02_offset_magnitude() -> None:
    lng, lat = SHENZHEN
    gx, gy = crs.wgs84_to_gcj02(lng, lat)
    metres_per_deg_lat = 110_574.0
    metres_per_deg_lng = 111_320.0 * math.cos(math.radians(lat))
    east = (float(gx) - lng) * metres_per_deg_lng
    north = (float(gy) - lat) * metres_per_deg_lat
    assert 350.0 < east < 550.0
    assert -350.0 < north < -150.0
    assert 400.0 < math.hypot(east, north) < 650.0
    # BD-09 is offset again, by roughly another kilometre.
    bx, by = crs.gcj02_to_bd09(gx, gy)
    extra = math.hypot(
        (float(bx) - float(gx)) * metres_per_deg_lng, (float(by) - float(gy)) * metres_per_deg_lat
    )
    assert 500.0 < extra < 1500.0


@pytest.mark.parametrize("func", ALL_FUNCS, ids=lambda f: f.__name__)
def test_out_of_china_points_unchanged(func) -> None:
    lng = np.array([p[0] for p in OUTSIDE])
    lat = np.array([p[1] for p in OUTSIDE])
    x, y = func(lng, lat)
    np.testing.assert_array_equal(x, lng)
    np.testing.assert_array_equal(y, lat)


@pytest.mark.parametrize("func", ALL_FUNCS, ids=lambda f: f.__name__)
def test_nan_passes_through(func) -> None:
    lng = np.array([np.nan, SHENZHEN[0], 114.0, np.nan])
    lat = np.array([22.5, SHENZHEN[1], np.nan, np.nan])
    x, y = func(lng, lat)
    # A point with one NaN coordinate comes back NaN in both.
    assert np.isnan(x[[0, 2, 3]]).all() and np.isnan(y[[0, 2, 3]]).all()
    assert np.isfinite(x[1]) and np.isfinite(y[1])
    assert x[1] != lng[1]


@pytest.mark.parametrize("name", ["wgs84", "cgcs2000", "gcj02", "bd09", "EPSG:4547"])
def test_nan_passes_through_generic(name: str) -> None:
    lng = [np.nan, SHENZHEN[0], None]
    lat = [np.nan, SHENZHEN[1], 22.0]
    x, y = crs.from_wgs84(lng, lat, name)
    assert np.isnan(x[0]) and np.isnan(y[0]) and np.isnan(x[2])
    bx, by = crs.to_wgs84(x, y, name)
    assert np.isnan(bx[0]) and np.isnan(by[0])
    assert abs(bx[1] - SHENZHEN[0]) < 1e-6 and abs(by[1] - SHENZHEN[1]) < 1e-6


def test_scalar_and_shape_handling() -> None:
    x, y = crs.wgs84_to_gcj02(114.0, 22.5)
    assert isinstance(x, np.ndarray) and x.shape == ()
    with pytest.raises(InvalidInputError, match="same shape"):
        crs.wgs84_to_gcj02([114.0, 114.1], [22.5])
    with pytest.raises(InvalidInputError, match="lng"):
        crs.wgs84_to_gcj02(["abc"], [22.5])


# ---- pyproj paths --------------------------------------------------------------------------------


def test_epsg_4547_round_trip_through_pyproj() -> None:
    rng = np.random.default_rng(5)
    lng = rng.uniform(112.6, 115.4, 1000)
    lat = rng.uniform(21.0, 25.0, 1000)
    east, north = crs.from_wgs84(lng, lat, "EPSG:4547")
    # CGCS2000 3-degree Gauss-Kruger, central meridian 114E, false easting 500 km, no zone
    # prefix: eastings near 500 km and northings ~2,300-2,800 km.
    assert np.all((east > 200_000) & (east < 800_000))
    assert np.all((north > 2_300_000) & (north < 2_800_000))
    ref_e, ref_n = pyproj.Transformer.from_crs(4326, 4547, always_xy=True).transform(lng, lat)
    np.testing.assert_allclose(east, ref_e, atol=1e-6)
    np.testing.assert_allclose(north, ref_n, atol=1e-6)
    back_lng, back_lat = crs.to_wgs84(east, north, "epsg:4547")
    assert np.abs(back_lng - lng).max() < 1e-9
    assert np.abs(back_lat - lat).max() < 1e-9
    # Central meridian maps to the false easting.
    e0, _ = crs.from_wgs84(114.0, 22.5, "EPSG:4547")
    assert abs(float(e0) - 500_000.0) < 1e-3


def test_cgcs2000_is_identity() -> None:
    x, y = crs.to_wgs84([114.0], [22.5], "EPSG:4490")
    assert x[0] == 114.0 and y[0] == 22.5


# ---- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("WGS84", "wgs84"),
        ("wgs-84", "wgs84"),
        ("EPSG:4326", "wgs84"),
        ("epsg:4326", "wgs84"),
        (" cgcs2000 ", "cgcs2000"),
        ("EPSG:4490", "cgcs2000"),
        ("GCJ02", "gcj02"),
        ("gcj-02", "gcj02"),
        ("bd09", "bd09"),
        ("BD-09", "bd09"),
        ("EPSG:4547", "EPSG:4547"),
        ("epsg:32650", "EPSG:32650"),
    ],
)
def test_normalize_crs(name: str, expected: str) -> None:
    assert crs.normalize_crs(name) == expected


@pytest.mark.parametrize("name", ["mercator", "gcj03", "", "EPSG:999999"])
def test_unknown_crs_raises_listing_allowed(name: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        crs.normalize_crs(name)
    message = str(info.value)
    for allowed in crs.CRS_NAMES:
        assert allowed in message
    assert "EPSG" in message
    with pytest.raises(ValueError):  # InvalidInputError is a ValueError
        crs.to_wgs84([1.0], [1.0], name)


# ---- geometries and frames ------------------------------------------------------------


def test_transform_geometries_points_and_polygons() -> None:
    point = shapely.Point(*SHENZHEN)
    poly = shapely.box(114.0, 22.5, 114.1, 22.6)
    out = crs.transform_geometries(np.array([point, poly]), "wgs84", "gcj02")
    gx, gy = crs.wgs84_to_gcj02(*SHENZHEN)
    assert out[0].equals_exact(shapely.Point(float(gx), float(gy)), 1e-12)
    np.testing.assert_allclose(
        shapely.get_coordinates(out[1]),
        np.column_stack(crs.wgs84_to_gcj02(*shapely.get_coordinates(poly).T)),
    )
    back = crs.transform_geometries(out, "gcj02", "wgs84")
    moved = shapely.get_coordinates(back) - shapely.get_coordinates([point, poly])
    assert np.abs(moved).max() < 1e-7


def test_transform_geometries_geoseries_keeps_index_and_labels_crs() -> None:
    series = geopandas.GeoSeries(
        [shapely.Point(114.0, 22.5), shapely.Point(118.1, 24.5)], index=[10, 20], crs=4326
    )
    out = crs.transform_geometries(series, "gcj02", "EPSG:4547")
    assert list(out.index) == [10, 20]
    assert out.crs.to_epsg() == 4547
    bd = crs.transform_geometries(series, "gcj02", "bd09")
    assert bd.crs.to_epsg() == 4326


def test_to_crs_frame() -> None:
    gdf = geopandas.GeoDataFrame(
        {"id": [1, 2]},
        geometry=[shapely.Point(114.0, 22.5), shapely.Point(114.1, 22.6)],
        crs="EPSG:4326",
    )
    out = crs.to_crs_frame(gdf, "gcj02", "wgs84")
    assert out is not gdf and list(out["id"]) == [1, 2]
    assert out.crs.to_epsg() == 4326
    wx, wy = crs.gcj02_to_wgs84([114.0, 114.1], [22.5, 22.6])
    np.testing.assert_allclose(out.geometry.x, wx)
    np.testing.assert_allclose(out.geometry.y, wy)
    # The input is untouched.
    assert gdf.geometry.x.tolist() == [114.0, 114.1]
    assert crs.to_crs_frame(gdf, "wgs84", "cgcs2000").crs.to_epsg() == 4490


# ---- local projected CRS ------------------------------------------------------------


def test_local_projected_crs() -> None:
    assert crs.local_projected_crs([113.7, 114.6], [22.4, 22.9]).to_epsg() == 32650
    assert crs.local_projected_crs(118.1, 24.5).to_epsg() == 32650
    assert crs.local_projected_crs(116.4, 39.9).to_epsg() == 32650
    assert crs.local_projected_crs(121.47, 31.23).to_epsg() == 32651
    assert crs.local_projected_crs(151.2, -33.9).to_epsg() == 32756
    assert crs.local_projected_crs([np.nan, 114.0], [np.nan, 22.5]).to_epsg() == 32650
    with pytest.raises(InvalidInputError, match="finite"):
        crs.local_projected_crs([np.nan], [np.nan])
    with pytest.raises(InvalidInputError, match="to_wgs84"):
        crs.local_projected_crs([500_000.0], [2_500_000.0])
