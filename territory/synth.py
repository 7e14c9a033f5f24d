"""Seeded generator of SYNTHETIC demo tables: customers, communities, stores, key accounts.

Everything this module produces is **synthetic**. No row describes a real customer, residential
community (小区), store (营业厅) or enterprise; names are assembled from generic word lists, every
number is drawn from a random generator, and every table carries a column ``synthetic = True``
so that a demo table can never be mistaken for operator data once it has left this module. The
only real input is the administrative boundary layer the caller passes in, which gives the
tables a believable shape: customers where people live, parks where factories are.

Why synthetic data at all: the engine's demos, notebooks, benchmarks and tests need city-sized
tables with the statistical shape of the real thing (dense cores, sparse outskirts, a value
pyramid, whole key accounts), and real CRM extracts may not leave an operator.

How the points are generated
----------------------------
Every location is drawn from one spatial model of the city, built once per call from the seed:

* **Core mixture** (share ``core_share`` of the points). Each district gets 2-6 Gaussian clusters
  (its urban cores) with centres drawn uniformly inside the district, a standard deviation of
  0.5-3 km (capped at a third of the square root of the district's area, so tiny districts keep
  their points) and Dirichlet weights. A district's share of the core points is proportional to
  ``relative density x area``, the relative density coming from :data:`RELATIVE_DENSITY`. Points
  are drawn per district and points falling outside *that district* are rejected and redrawn,
  so a district keeps its share (multinomial counts) and clusters do not leak into the sea or
  across the border.
* **Background** (share ``1 - core_share``): uniform in longitude/latitude over the union of the
  districts (at city scale, under 1 degree, this is uniform in area to within a fraction of a
  percent), again by rejection against the union.

Rejection uses vectorised :func:`shapely.contains_xy` on prepared geometries and repeats until the
requested count is reached exactly, so every point lies strictly inside the boundary layer.
Distances inside the model use a local equirectangular approximation (1 degree of latitude =
110.574 km, 1 degree of longitude = 111.320 km x cos(latitude)), accurate to well under 1 % over
a city; areas are computed in the local UTM zone, never in degrees.

Why these densities
-------------------
:data:`RELATIVE_DENSITY` approximates the 2020 census resident density of the Shenzhen and
Xiamen districts (Futian about 19,700 people per km², Luohu 14,500, Nanshan 9,600, Yantian
2,900, Pingshan 3,300; Siming 12,600, Tong'an 1,300), sharpened towards the commercial cores
because the demo is about telecom *value* (ARPU, business lines, stores), which concentrates
there more than head counts do. The result in Shenzhen: Futian 福田, Luohu 罗湖 and Nanshan 南山
hold about half of the core customers (over 40 % of all customers) on a sixth of the area, and
Futian has five to seven times the customers per km² of the sparsest districts (Yantian,
Pingshan). In Xiamen, Siming 思明 is the densest district, followed by Huli 湖里. Names not
in the table get :data:`DEFAULT_RELATIVE_DENSITY`, so any boundary layer works; a layer whose
names are all unknown simply spreads the cores in proportion to district area.

The tables
----------
* ``customers``: the value pyramid (价值金字塔): ~2 % big, ~13 % business, ~85 % ordinary
  customers. ARPU (monthly spend, CNY) is lognormal per segment with medians 45 / 300 / 1,500,
  so the top 15 % of customers bring about two thirds of the revenue (the 80/20 rule).
  ``subscribers`` is 1 plus a Poisson number of extra lines (means 0.15 / 2 / 8); ``workload``
  (field-visit hours a month) has means 0.05 / 0.3 / 1.5 times lognormal noise of mean 1.
* ``communities``: one per ~150 customers, from the same spatial model, so they sit where the
  customers are. Build year is newer away from the cores; newer communities are more often
  owner-occupied and harder to enter (stricter property management). ``value_score`` combines
  the three measures planners use (see :func:`community_value_score`).
* ``stores``: the operator's own channels (自有渠道), one per main grid of the demo's sizing
  (:func:`territory.sizing.demo_sizing`: about one per 2,000 customers) and at least one
  per district, split over the districts by customers. Within a district they stand at the
  k-means centres of its customers (moved onto the nearest customer), so each serves about
  as many customers as the next and the network is densest in the urban cores; the busiest
  quarter are business halls (``business_hall``, 营业厅), the rest owned stores
  (``owned_store``, 自营店).
* ``key_accounts``: commercial buildings (商务楼宇, footprint radius 30-80 m) drawn from the core
  mixture, industrial parks (工业园区, 150-500 m) drawn from the background, thinned near dense
  cores so they land on the outskirts. Their subscribers are a separate measure, not rows of
  ``customers``. :func:`territory.key_accounts.key_account_footprints` turns them into
  circles.

Same seed, same boundaries and same parameters give identical tables; only
``numpy.random.default_rng(seed)`` is used, never global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

from territory.atomic import atomic_path
from territory.errors import InvalidInputError
from territory.key_accounts import check_wgs84
from territory.sizing import demo_sizing

__all__ = [
    "DEFAULT_RELATIVE_DENSITY",
    "RELATIVE_DENSITY",
    "SEGMENT_SHARES",
    "SyntheticCity",
    "community_value_score",
    "relative_density",
    "generate_city",
    "write_city",
]

# --------------------------------------------------------------------------------------------
# Documented model constants
# --------------------------------------------------------------------------------------------

#: Relative customer density (per km², unitless) of a district's urban cores, keyed by the
#: normalised district name (Chinese without the 区/县/新区 suffix, or lower-case pinyin).
#: See the module docstring for the rationale.
# fmt: off
RELATIVE_DENSITY: dict[str, float] = {
    # Shenzhen 深圳
    "福田": 20.0, "futian": 20.0,
    "罗湖": 15.0, "luohu": 15.0,
    "南山": 14.0, "nanshan": 14.0,
    "龙华": 5.0, "longhua": 5.0,
    "宝安": 4.0, "baoan": 4.0,
    "光明": 2.5, "guangming": 2.5,
    "龙岗": 2.0, "longgang": 2.0,
    "坪山": 1.2, "pingshan": 1.2,
    "盐田": 1.2, "yantian": 1.2,
    "大鹏": 0.5, "dapeng": 0.5,
    # Xiamen 厦门
    "思明": 20.0, "siming": 20.0,
    "湖里": 14.0, "huli": 14.0,
    "集美": 4.0, "jimei": 4.0,
    "海沧": 3.0, "haicang": 3.0,
    "翔安": 1.5, "xiangan": 1.5,
    "同安": 1.5, "tongan": 1.5,
}
# fmt: on

#: Relative density for district names not in :data:`RELATIVE_DENSITY` (a suburban district).
DEFAULT_RELATIVE_DENSITY: float = 3.0

#: Target shares of the value pyramid.
SEGMENT_SHARES: dict[str, float] = {"big": 0.02, "business": 0.13, "ordinary": 0.85}

# Per segment: lognormal ARPU median (CNY/month) and sigma; mean extra lines; workload mean (h).
_ARPU_MEDIAN = {"big": 1500.0, "business": 300.0, "ordinary": 45.0}
_ARPU_SIGMA = {"big": 0.8, "business": 0.6, "ordinary": 0.5}
_EXTRA_LINES = {"big": 8.0, "business": 2.0, "ordinary": 0.15}
_WORKLOAD = {"big": 1.5, "business": 0.3, "ordinary": 0.05}
_WORKLOAD_SIGMA = 0.3

_CLUSTERS_PER_DISTRICT = (2, 6)
_CLUSTER_SIGMA_KM = (0.5, 3.0)
_CUSTOMERS_PER_COMMUNITY = 150
_KMEANS_SAMPLE = 50_000
_CUSTOMERS_PER_BUILDING = 2_500
_CUSTOMERS_PER_PARK = 7_500
_BUILDING_RADIUS_M = (30.0, 80.0)
_PARK_RADIUS_M = (150.0, 500.0)
_HOUSEHOLDS = (200, 5000)
_BUILD_YEARS = (1985, 2024)

_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LNG_EQUATOR = 111.320
_MAX_REJECTION_ROUNDS = 10_000

_NAME_PREFIXES: tuple[str, ...] = tuple(
    (
        "锦绣 碧海 翠竹 金桂 银湖 华景 龙腾 凤凰 丽晶 怡景 "
        "海韵 书香 枫林 松涛 蓝湾 星河 明珠 嘉园 富华 东方 "
        "南国 阳光 春华 秋实 玉兰 紫荆 云帆 鹏程 天润 瑞丰 "
        "恒福 宏盛 景泰 和平 新城 绿洲 水岸 山语 清风 朗悦"
    ).split()
)
_COMMUNITY_SUFFIXES = ("花园", "苑", "家园", "雅居", "新村", "名苑", "公寓", "山庄", "华庭")
_BUILDING_SUFFIXES = ("大厦", "中心", "广场", "商务中心", "国际大厦", "金融大厦")
_PARK_SUFFIXES = ("工业园", "科技园", "产业园", "物流园", "智造园")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticCity:
    """The four synthetic tables of one city.

    Every table is a GeoDataFrame of EPSG:4326 points with float ``lng``/``lat`` columns equal to
    the geometry's coordinates and a ``synthetic`` column that is always ``True``.
    """

    customers: gpd.GeoDataFrame
    communities: gpd.GeoDataFrame
    stores: gpd.GeoDataFrame
    key_accounts: gpd.GeoDataFrame

    def tables(self) -> dict[str, gpd.GeoDataFrame]:
        """The tables by name, in a fixed order (the file names :func:`write_city` uses)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def generate_city(
    boundaries: gpd.GeoDataFrame,
    *,
    n_customers: int = 300_000,
    seed: int = 0,
    core_share: float = 0.7,
    n_stores: int | None = None,
) -> SyntheticCity:
    """Generate the synthetic customers, communities, stores and key accounts of a city.

    Args:
        boundaries: district polygons in EPSG:4326, one row per district. A ``name`` column, if
            present, selects the district's relative density from :data:`RELATIVE_DENSITY`
            (unknown or missing names get :data:`DEFAULT_RELATIVE_DENSITY`).
        n_customers: exact number of customer rows; the other tables scale with it
            (communities ~ n/150, key accounts ~ n/2,500 + n/7,500).
        seed: seed of ``numpy.random.default_rng``; the same seed gives identical tables.
        core_share: share of points drawn from the district cores; the rest are spread
            uniformly over the whole area.
        n_stores: stores in the city (at least one per district); by default one per main
            grid of the demo's sizing (:func:`territory.sizing.demo_sizing`), about one per
            2,000 customers.

    Returns:
        A :class:`SyntheticCity`. See the module docstring for the columns and the model.

    Raises:
        InvalidInputError: a parameter is out of range, or ``boundaries`` is empty, has no
            polygons, or is not in EPSG:4326.
    """
    _check_params(n_customers=n_customers, seed=seed, core_share=core_share)
    names, geoms = _check_boundaries(boundaries)
    rng = np.random.default_rng(seed)
    model = _SpatialModel.build(names, geoms, core_share=core_share, rng=rng)

    customers = _make_customers(model, n_customers, rng)
    communities = _make_communities(
        model, max(1, round(n_customers / _CUSTOMERS_PER_COMMUNITY)), rng
    )
    if n_stores is not None and n_stores < 1:
        raise InvalidInputError(f"n_stores={n_stores}: give at least one store per district")
    if n_stores is None:
        n_stores = demo_sizing(n_customers, len(names)).n_stores
    stores = _make_stores(model, customers, max(n_stores, len(names)), rng)
    key_accounts = _make_key_accounts(model, n_customers, rng)
    return SyntheticCity(
        customers=customers, communities=communities, stores=stores, key_accounts=key_accounts
    )


def community_value_score(
    households: np.ndarray | pd.Series,
    build_year: np.ndarray | pd.Series,
    owner_occupied_share: np.ndarray | pd.Series,
    entry_threshold: np.ndarray | pd.Series,
) -> np.ndarray:
    """Value of a residential community as "winnable households" (the planners' three measures).

    ``value_score = households x composition x access`` where

    * ``composition = 0.4 + 0.6 x (0.6 x owner_occupied_share + 0.4 x newness)`` with
      ``newness = (build_year - 1985) / 39`` clipped to [0, 1]: owner-occupiers and residents
      of newer communities buy more, pay higher tariffs and churn less (resident composition);
    * ``access = 1 - 0.15 x (entry_threshold - 1)``: 1.0 for an open community (threshold 1)
      down to 0.4 for a property manager who keeps operators out (threshold 5);
    * ``households`` is the total number of households (总住户数).

    The score is in households, so it adds up over a grid and can be balanced like any other
    measure; it never exceeds ``households``.
    """
    hh = np.asarray(households, dtype=float)
    year = np.asarray(build_year, dtype=float)
    owner = np.clip(np.asarray(owner_occupied_share, dtype=float), 0.0, 1.0)
    threshold = np.clip(np.asarray(entry_threshold, dtype=float), 1.0, 5.0)
    lo, hi = _BUILD_YEARS
    newness = np.clip((year - lo) / (hi - lo), 0.0, 1.0)
    composition = 0.4 + 0.6 * (0.6 * owner + 0.4 * newness)
    access = 1.0 - 0.15 * (threshold - 1.0)
    return np.round(hh * composition * access, 1)


def write_city(city: SyntheticCity, directory: Path) -> dict[str, Path]:
    """Write each table as ``<directory>/<table>.csv`` (UTF-8, with lng/lat, no geometry).

    Each file is written to a temporary file in the same directory and moved into place with
    :func:`os.replace`, so a reader never sees a half-written table and a crash leaves the
    previous version intact. The directory is created if needed.

    Returns:
        The path of each written file by table name.
    """
    if not isinstance(city, SyntheticCity):
        raise InvalidInputError(
            f"city must be a SyntheticCity from generate_city, got {type(city).__name__}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, table in city.tables().items():
        frame = pd.DataFrame(table.drop(columns=table.geometry.name))
        target = directory / f"{name}.csv"
        with atomic_path(target) as tmp:
            frame.to_csv(tmp, index=False, encoding="utf-8")
        written[name] = target
    return written


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_params(*, n_customers: object, seed: object, core_share: object) -> None:
    if not _is_int(n_customers) or int(n_customers) < 1:  # type: ignore[call-overload]
        raise InvalidInputError(
            f"n_customers must be an integer >= 1, got {n_customers!r}; pass e.g. 300_000"
        )
    if not _is_int(seed) or int(seed) < 0:  # type: ignore[call-overload]
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    if (
        isinstance(core_share, bool)
        or not isinstance(core_share, int | float | np.floating | np.integer)
        or not 0.0 <= float(core_share) <= 1.0
    ):
        raise InvalidInputError(
            f"core_share must be a number between 0 and 1, got {core_share!r}; default is 0.7"
        )


def _check_boundaries(boundaries: object) -> tuple[list[str], list[shapely.Geometry]]:
    """Validate the boundary layer; return district names and valid polygonal geometries."""
    if isinstance(boundaries, gpd.GeoSeries):
        boundaries = gpd.GeoDataFrame(geometry=boundaries)
    if not isinstance(boundaries, gpd.GeoDataFrame):
        raise InvalidInputError(
            "boundaries must be a GeoDataFrame of district polygons in EPSG:4326, "
            f"got {type(boundaries).__name__}"
        )
    if len(boundaries) == 0:
        raise InvalidInputError(
            "boundaries is empty; pass at least one district polygon "
            "(e.g. geopandas.read_file('shenzhen_districts_wgs84.geojson'))"
        )
    check_wgs84(boundaries, "boundaries")
    names: list[str] = []
    geoms: list[shapely.Geometry] = []
    has_names = "name" in boundaries.columns
    for position, (label, geom) in enumerate(boundaries.geometry.items()):
        polygonal = _polygonal(geom)
        if polygonal is None:
            raise InvalidInputError(
                f"boundaries row {label!r} has no polygon area (geometry "
                f"{getattr(geom, 'geom_type', None)}); drop it or give it a polygon"
            )
        raw = boundaries["name"].iloc[position] if has_names else None
        names.append(str(raw) if raw is not None and not pd.isna(raw) else f"district {label}")
        geoms.append(polygonal)
    return names, geoms


def _polygonal(geom: object) -> shapely.Geometry | None:
    """The polygonal part of ``geom`` made valid, or None if it has no area."""
    if geom is None or not isinstance(geom, shapely.Geometry) or geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon) and p.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


# --------------------------------------------------------------------------------------------
# Spatial model
# --------------------------------------------------------------------------------------------


def _normalise_name(name: str) -> str:
    key = name.strip().lower()
    for suffix in (" district", "district", "新区", "区", "县"):
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
            break
    return key.replace(" ", "").replace("-", "").replace("'", "").replace("’", "")


def relative_density(name: str) -> float:
    """Relative core density of a district by name (see :data:`RELATIVE_DENSITY`)."""
    return RELATIVE_DENSITY.get(_normalise_name(name), DEFAULT_RELATIVE_DENSITY)


def _utm_crs(lng: float, lat: float) -> pyproj.CRS:
    """The WGS84 UTM zone containing (lng, lat): metres, scale error <= ~0.1 % in the zone."""
    zone = int(math.floor((lng + 180.0) / 6.0)) % 60 + 1
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _rejection_sample(
    n: int,
    propose: Callable[[int], tuple[np.ndarray, np.ndarray]],
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Draw exactly ``n`` proposals that ``accept`` keeps, in proposal order.

    The batch size follows the observed acceptance rate so that typical calls finish in one or
    two rounds; a hard round limit turns a degenerate geometry into an error, not a hang.
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    remaining = n
    rate = 0.5
    for _ in range(_MAX_REJECTION_ROUNDS):
        if remaining <= 0:
            break
        batch = int(min(max(remaining / rate * 1.2 + 16, 64), 4_000_000))
        x, y = propose(batch)
        keep = accept(x, y)
        rate = max(float(keep.mean()), 1e-4)
        x, y = x[keep][:remaining], y[keep][:remaining]
        xs.append(x)
        ys.append(y)
        remaining -= len(x)
    else:
        raise InvalidInputError(
            "boundaries: could not place points inside a district (area too small or "
            "degenerate); drop sliver polygons from boundaries"
        )
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


@dataclass(frozen=True)
class _District:
    name: str
    geom: shapely.Geometry  # prepared
    area_km2: float
    density: float  # relative density from the table
    centres: np.ndarray  # (k, 2) lng, lat
    sigma_km: np.ndarray  # (k,)
    weights: np.ndarray  # (k,), sums to 1


@dataclass(frozen=True)
class _SpatialModel:
    """Core mixture per district plus a uniform background over the union."""

    districts: tuple[_District, ...]
    union: shapely.Geometry  # prepared
    bounds: tuple[float, float, float, float]
    core_share: float
    core_weights: np.ndarray  # share of core points per district
    km_per_deg_lng: float

    @classmethod
    def build(
        cls,
        names: list[str],
        geoms: list[shapely.Geometry],
        *,
        core_share: float,
        rng: np.random.Generator,
    ) -> _SpatialModel:
        union = shapely.union_all(geoms)
        shapely.prepare(union)
        centroid = union.centroid
        km_per_deg_lng = _KM_PER_DEG_LNG_EQUATOR * math.cos(math.radians(centroid.y))
        areas = (
            gpd.GeoSeries(geoms, crs=4326).to_crs(_utm_crs(centroid.x, centroid.y)).area / 1e6
        ).to_numpy()
        districts = []
        for name, geom, area in zip(names, geoms, areas, strict=True):
            shapely.prepare(geom)
            k = int(rng.integers(_CLUSTERS_PER_DISTRICT[0], _CLUSTERS_PER_DISTRICT[1] + 1))
            cx, cy = _uniform_in(geom, k, rng)
            sigma = rng.uniform(*_CLUSTER_SIGMA_KM, size=k)
            # A cluster wider than the district would mostly be rejected: cap it.
            sigma = np.minimum(sigma, max(math.sqrt(area) / 3.0, 0.01))
            districts.append(
                _District(
                    name=name,
                    geom=geom,
                    area_km2=float(area),
                    density=relative_density(name),
                    centres=np.column_stack([cx, cy]),
                    sigma_km=sigma,
                    weights=rng.dirichlet(np.full(k, 2.0)),
                )
            )
        mass = np.array([d.density * d.area_km2 for d in districts])
        core_weights = mass / mass.sum() if mass.sum() > 0 else np.full(len(mass), 1 / len(mass))
        return cls(
            districts=tuple(districts),
            union=union,
            bounds=tuple(union.bounds),
            core_share=float(core_share),
            core_weights=core_weights,
            km_per_deg_lng=km_per_deg_lng,
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` points from the full model, shuffled; also a flag telling core points."""
        n_core = int(rng.binomial(n, self.core_share))
        cx, cy = self.sample_core(n_core, rng)
        bx, by = self.sample_background(n - n_core, rng)
        x = np.concatenate([cx, bx])
        y = np.concatenate([cy, by])
        is_core = np.concatenate([np.ones(len(cx), bool), np.zeros(len(bx), bool)])
        order = rng.permutation(n)
        return x[order], y[order], is_core[order]

    def sample_core(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points of the core mixture, each inside the district its cluster belongs to."""
        counts = rng.multinomial(n, self.core_weights)
        xs, ys = [], []
        for district, m in zip(self.districts, counts, strict=True):
            x, y = self._sample_district(district, int(m), rng)
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    def _sample_district(
        self, d: _District, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        sx = d.sigma_km / self.km_per_deg_lng
        sy = d.sigma_km / _KM_PER_DEG_LAT

        def propose(batch: int) -> tuple[np.ndarray, np.ndarray]:
            comp = rng.choice(len(d.weights), size=batch, p=d.weights)
            noise = rng.standard_normal((2, batch))
            x = d.centres[comp, 0] + noise[0] * sx[comp]
            y = d.centres[comp, 1] + noise[1] * sy[comp]
            return x, y

        return _rejection_sample(n, propose, lambda x, y: shapely.contains_xy(d.geom, x, y))

    def sample_background(
        self, n: int, rng: np.random.Generator, thin: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniform over the union; with ``thin``, rarer near dense cores."""
        x0, y0, x1, y1 = self.bounds

        def propose(batch: int) -> tuple[np.ndarray, np.ndarray]:
            return rng.uniform(x0, x1, batch), rng.uniform(y0, y1, batch)

        def accept(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            inside = shapely.contains_xy(self.union, x, y)
            if thin:
                # Keep with probability (1 - urbanity)^2, urbanity measured with kernels twice
                # as wide as the clusters: nothing at the dense cores, nearly all outside.
                keep_p = (1.0 - self.urbanity(x, y, widen=2.0)) ** 2
                inside &= rng.random(len(x)) < keep_p
            return inside

        return _rejection_sample(n, propose, accept)

    def urbanity(self, x: np.ndarray, y: np.ndarray, widen: float = 1.0) -> np.ndarray:
        """0 (outskirts) .. 1 (centre of the densest district's cluster) for each point.

        The maximum over all clusters of the Gaussian kernel (standard deviation ``widen``
        times the cluster's) times the district's density relative to the densest district.
        """
        top = max(d.density for d in self.districts) or 1.0
        u = np.zeros(len(x))
        for d in self.districts:
            dx = (x[:, None] - d.centres[None, :, 0]) * self.km_per_deg_lng
            dy = (y[:, None] - d.centres[None, :, 1]) * _KM_PER_DEG_LAT
            kernel = np.exp(-0.5 * (dx**2 + dy**2) / (widen * d.sigma_km[None, :]) ** 2)
            u = np.maximum(u, kernel.max(axis=1) * d.density / top)
        return u


def _uniform_in(
    geom: shapely.Geometry, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = geom.bounds

    def propose(batch: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(x0, x1, batch), rng.uniform(y0, y1, batch)

    return _rejection_sample(n, propose, lambda x, y: shapely.contains_xy(geom, x, y))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    width = max(width, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _frame(columns: dict[str, object], x: np.ndarray, y: np.ndarray) -> gpd.GeoDataFrame:
    data = dict(columns)
    data["lng"] = np.asarray(x, dtype=float)
    data["lat"] = np.asarray(y, dtype=float)
    data["synthetic"] = np.ones(len(x), dtype=bool)
    return gpd.GeoDataFrame(data, geometry=gpd.points_from_xy(x, y), crs=4326)


def _names(
    rng: np.random.Generator, n: int, suffixes: tuple[str, ...], numbered: bool = True
) -> np.ndarray:
    prefix = np.array(_NAME_PREFIXES, dtype=object)[rng.integers(len(_NAME_PREFIXES), size=n)]
    suffix = np.array(suffixes, dtype=object)[rng.integers(len(suffixes), size=n)]
    base = prefix + suffix
    if not numbered:
        return base
    return base + np.array([str(i) for i in range(1, n + 1)], dtype=object)


def _lognormal_mean_one(rng: np.random.Generator, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(-0.5 * sigma**2, sigma, n)


def _make_customers(model: _SpatialModel, n: int, rng: np.random.Generator) -> gpd.GeoDataFrame:
    x, y, _ = model.sample(n, rng)
    labels = list(SEGMENT_SHARES)
    codes = rng.choice(len(labels), size=n, p=list(SEGMENT_SHARES.values()))
    segment = np.array(labels, dtype=object)[codes]

    def per_segment(table: dict[str, float]) -> np.ndarray:
        return np.array([table[s] for s in labels])[codes]

    arpu = rng.lognormal(np.log(per_segment(_ARPU_MEDIAN)), per_segment(_ARPU_SIGMA))
    subscribers = 1 + rng.poisson(per_segment(_EXTRA_LINES))
    workload = per_segment(_WORKLOAD) * _lognormal_mean_one(rng, _WORKLOAD_SIGMA, n)
    columns = {
        "customer_id": _ids("C", n, 7),
        "segment": segment,
        "arpu": np.round(arpu, 2),
        "subscribers": subscribers.astype(np.int64),
        "workload": np.round(workload, 4),
    }
    return _frame(columns, x, y)


def _make_communities(model: _SpatialModel, n: int, rng: np.random.Generator) -> gpd.GeoDataFrame:
    x, y, _ = model.sample(n, rng)
    u = model.urbanity(x, y)
    lo_year, hi_year = _BUILD_YEARS
    # Old towns at the cores (~1995), new estates on the outskirts (~2021).
    year = np.clip(np.round(2021 - 26 * u + rng.normal(0, 5, n)), lo_year, hi_year)
    newness = (year - lo_year) / (hi_year - lo_year)
    # Newer commercial housing is more owner-occupied; old urban stock is let to tenants.
    owner_mean = 0.35 + 0.45 * newness
    owner = np.clip(rng.beta(owner_mean * 8, (1 - owner_mean) * 8), 0.0, 1.0)
    # Newer, gated estates have stricter property management (物业) -> harder to enter.
    threshold = np.clip(np.round(1.5 + 2.5 * newness + rng.normal(0, 0.8, n)), 1, 5)
    households = np.clip(np.round(rng.lognormal(np.log(800 + 800 * u), 0.6)), *_HOUSEHOLDS)
    columns = {
        "community_id": _ids("R", n, 6),
        "name": _names(rng, n, _COMMUNITY_SUFFIXES),
        "households": households.astype(np.int64),
        "build_year": year.astype(np.int64),
        "owner_occupied_share": np.round(owner, 3),
        "entry_threshold": threshold.astype(np.int64),
    }
    columns["value_score"] = community_value_score(
        columns["households"],
        columns["build_year"],
        columns["owner_occupied_share"],
        columns["entry_threshold"],
    )
    return _frame(columns, x, y)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=int)
    quota = weights / weights.sum() * total
    base = np.floor(quota).astype(int)
    order = np.argsort(-(quota - base), kind="stable")
    base[order[: total - base.sum()]] += 1
    return base


def _make_stores(
    model: _SpatialModel, customers: gpd.GeoDataFrame, n_stores: int, rng: np.random.Generator
) -> gpd.GeoDataFrame:
    """A store network: ``n_stores`` split over the districts by customers (at least one
    each), placed at the k-means centres of each district's customers, so that every store
    serves about as many customers as the next and the network is densest where they are.

    Each centre is moved onto the district customer nearest to it (a store stands where
    people are, inside its district, never in the sea between two clusters). The quarter of
    a district's stores with the most customers around them are business halls (营业厅), the
    rest owned stores (自营店).
    """
    cx = customers["lng"].to_numpy()
    cy = customers["lat"].to_numpy()
    members = [np.flatnonzero(shapely.contains_xy(d.geom, cx, cy)) for d in model.districts]
    counts = np.array([len(m) for m in members], dtype=float)
    per_district = 1 + _largest_remainder(n_stores - len(model.districts), counts)
    xs, ys, kinds, names = [], [], [], []
    for d, k, idx in zip(model.districts, per_district, members, strict=True):
        if len(idx) == 0:  # a district without customers still gets its hall
            px, py = _uniform_in(d.geom, 1, rng)
            sites, served = np.column_stack([px, py]), np.ones(1)
        else:
            sites, served = _store_sites(cx[idx], cy[idx], int(k), model.km_per_deg_lng, rng)
        short = d.name.removesuffix("区") if d.name.endswith("区") and len(d.name) > 1 else d.name
        halls = max(1, math.ceil(len(sites) / 4))
        for rank, j in enumerate(np.argsort(-served, kind="stable")):
            xs.append(sites[j, 0])
            ys.append(sites[j, 1])
            hall = rank < halls
            kinds.append("business_hall" if hall else "owned_store")
            names.append(f"{short}第{rank + 1}营业厅" if hall
                         else f"{short}第{rank + 1 - halls}自营店")
    columns = {
        "store_id": _ids("S", len(xs), 4),
        "name": np.array(names, dtype=object),
        "kind": np.array(kinds, dtype=object),
    }
    return _frame(columns, np.array(xs), np.array(ys))


def _store_sites(
    x: np.ndarray, y: np.ndarray, k: int, km_per_deg_lng: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` distinct customer locations near the k-means centres of ``(x, y)``, and the
    customers each centre's cluster holds. At most :data:`_KMEANS_SAMPLE` customers are
    clustered (a sample is plenty to place a few hundred stores)."""
    k = min(k, len(x))
    pick = rng.choice(len(x), size=min(len(x), _KMEANS_SAMPLE), replace=False)
    km = np.column_stack([x[pick] * km_per_deg_lng, y[pick] * _KM_PER_DEG_LAT])
    centres, label = kmeans2(km, k, minit="++", seed=rng)
    served = np.bincount(label, minlength=k).astype(float)
    # nearest distinct customers: ask for a few neighbours and take the first one unused
    tree = cKDTree(np.column_stack([x * km_per_deg_lng, y * _KM_PER_DEG_LAT]))
    _, near = tree.query(centres, k=min(len(x), k + 1))
    near = np.asarray(near).reshape(k, -1)
    used: set[int] = set()
    site = np.empty(k, dtype=int)
    for j in range(k):
        site[j] = next(int(i) for i in near[j] if int(i) not in used)
        used.add(int(site[j]))
    return np.column_stack([x[site], y[site]]), served


def _make_key_accounts(
    model: _SpatialModel, n_customers: int, rng: np.random.Generator
) -> gpd.GeoDataFrame:
    n_build = max(1, round(n_customers / _CUSTOMERS_PER_BUILDING))
    n_park = max(1, round(n_customers / _CUSTOMERS_PER_PARK))
    bx, by = model.sample_core(n_build, rng)
    px, py = model.sample_background(n_park, rng, thin=True)

    # Buildings: employees follow floor area (footprint x floors x staff per m²).
    b_r = rng.uniform(*_BUILDING_RADIUS_M, n_build)
    floors = rng.integers(8, 61, n_build)
    b_emp = np.clip(np.pi * b_r**2 * floors * rng.uniform(0.005, 0.02, n_build), 100, 30_000)
    # Parks: employees follow site area (2,000-8,000 staff per km²).
    p_r = rng.uniform(*_PARK_RADIUS_M, n_park)
    p_emp = np.pi * p_r**2 / 1e6 * rng.uniform(2_000, 8_000, n_park)

    employees = np.round(np.concatenate([b_emp, p_emp])).astype(np.int64)
    # The operator's take-up among the staff: 30-80 % of employees hold one of its lines.
    subscribers = rng.binomial(employees, rng.uniform(0.3, 0.8, len(employees)))
    n = n_build + n_park
    columns = {
        "key_account_id": _ids("K", n, 5),
        "name": np.concatenate(
            [_names(rng, n_build, _BUILDING_SUFFIXES), _names(rng, n_park, _PARK_SUFFIXES)]
        ),
        "kind": np.array(["commercial_building"] * n_build + ["industrial_park"] * n_park),
        "employees": employees,
        "subscribers": subscribers.astype(np.int64),
        "footprint_m": np.round(np.concatenate([b_r, p_r]), 1),
    }
    columns["kind"] = columns["kind"].astype(object)
    return _frame(columns, np.concatenate([bx, px]), np.concatenate([by, py]))
