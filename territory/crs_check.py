"""Do a batch's coordinates fit the plan better in another system than the one declared?

GCJ-02 and BD-09 coordinates look exactly like WGS84 ones (lon/lat degrees, a few hundred
metres apart), so a batch declared in the wrong system is assigned without any error: on the
demo plan, GCJ-02 customers read as WGS84 moved half of them to another sub-grid while only
2 % fell outside the service area. Nothing in one point can tell; a batch can.

The check reads a seeded sample of the batch (at most :data:`SAMPLE_SIZE` points) once in
each candidate system (:data:`CANDIDATES`), converts each reading to WGS84 with
:mod:`territory.crs`, and measures the share of the sample landing where the plan's customers
are (a :class:`Reference`: the plan's populated units, or the service area when no plan exists
yet). The declared reading is flagged when another one fits clearly better:

* by at least :data:`MARGIN` (one percentage point of the sample), and
* beyond chance: of the sample points the two readings disagree on, those only the other
  reading places well (``b``) outnumber those only the declared one does (``c``) by
  ``b - c >= Z * sqrt(b + c)`` (McNemar's sign test at about 3e-5, one-sided). A correctly
  declared batch fits best as declared, so no other reading leads it.

The evidence is where the readings land differently: near the edge of the service area (a
coast, the city limits) and in units without customers (water, parks, industry). A batch
whose points all lie deep inside uniformly populated units shows little and is not flagged:
the check errs towards silence, never towards a false alarm. On synthetic Xiamen and Shenzhen
batches every wrong declaration among WGS84, GCJ-02 and BD-09 was named and no correct one
was flagged.

Batches of fewer than :data:`MIN_POINTS` usable points are not checked, and single lookups
never are: one point says nothing about a batch's system. The check is a few thousand
conversions and point lookups whatever the batch size, and it never changes an assignment:
it only reports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from territory.crs import normalize_crs, to_wgs84
from territory.units import locate_points

if TYPE_CHECKING:
    import geopandas as gpd

    from territory.assign_index import AssignmentIndex

__all__ = ["CANDIDATES", "CrsFit", "CrsMismatchWarning", "Reference", "Sample", "Warn",
           "fit_crs", "populated_units", "report", "service_area"]

#: The systems a batch is read in: the ones whose coordinates look alike (lon/lat degrees).
CANDIDATES = ("wgs84", "gcj02", "bd09")
SAMPLE_SIZE = 2_000
MIN_POINTS = 100
#: Smallest lead (share of the sample) of another reading over the declared one.
MARGIN = 0.01
#: One-sided z of the sign test on the points the two readings disagree on.
Z = 4.0

#: Where a message goes: a front end's printer or a list; ``None`` means ``warnings.warn``.
Warn = Callable[[str], None]


class CrsMismatchWarning(UserWarning):
    """A batch's coordinates fit the plan better in another system than the declared one."""


@dataclass(frozen=True)
class Reference:
    """Where a batch's points are expected: ``fits(lng, lat)`` (WGS84 arrays) is True for a
    point that lands there; ``where`` names it in messages."""

    where: str
    fits: Callable[[np.ndarray, np.ndarray], np.ndarray]


def populated_units(index: AssignmentIndex) -> Reference:
    """The plan's units that hold customers (its ``customers`` count, else its first measure
    with a value), through the assignment index. Nothing is computed until a batch large
    enough to check asks, so a single lookup pays nothing."""

    def fits(lng: np.ndarray, lat: np.ndarray) -> np.ndarray:
        units = index.plan.units
        column = "customers" if "customers" in units else next(iter(index.plan.measures), None)
        if column is None:
            populated = np.ones(len(units), dtype=bool)
        else:
            populated = units[column].fillna(0).to_numpy(dtype=float) > 0
        # position -1 (outside the service area) picks the trailing False
        return np.append(populated, False)[index.locate(lng, lat)]

    return Reference("the plan's populated units", fits)


def service_area(areas: gpd.GeoDataFrame) -> Reference:
    """The boundary layer's areas (EPSG:4326): the reference before any plan exists."""
    return Reference("the service area", lambda x, y: locate_points(areas, x, y) >= 0)


@dataclass(frozen=True)
class CrsFit:
    """How a sample of a batch fits under each reading."""

    declared: str
    shares: dict[str, float]  # reading -> share of the sample fitting the reference
    sample: int
    where: str
    likely: str | None  # a reading fitting clearly better than the declared one
    what: str = "points"

    @property
    def message(self) -> str:
        """The warning (for a mismatch) or the figures, in words."""
        own = "wgs84" if self.declared == "cgcs2000" else self.declared
        if self.likely is None:
            return (f"{self.what} declared {self.declared} fit as declared: "
                    f"{self.shares[own]:.0%} of a {self.sample:,}-point sample land in "
                    f"{self.where}")
        return (f"{self.what} declared {self.declared} fit better as {self.likely}: "
                f"{self.shares[self.likely]:.0%} vs {self.shares[own]:.0%} of a "
                f"{self.sample:,}-point sample land in {self.where}; check the CRS declared "
                "for these coordinates")


def fit_crs(lng: np.ndarray, lat: np.ndarray, crs: str, reference: Reference, *,
            what: str = "points") -> CrsFit | None:
    """Compare the declared reading of the points with the other :data:`CANDIDATES`.

    ``lng``/``lat`` are the coordinates as given (already a sample: see :class:`Sample`);
    rows that are not finite are left out. Returns None below :data:`MIN_POINTS` points.
    """
    declared = normalize_crs(crs)
    x = np.asarray(lng, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < MIN_POINTS:
        return None
    own = "wgs84" if declared == "cgcs2000" else declared
    readings = dict.fromkeys((own, *CANDIDATES))
    hits = {name: reference.fits(*to_wgs84(x, y, name)) for name in readings}
    shares = {name: float(h.mean()) for name, h in hits.items()}
    likely = None
    best = max((n for n in hits if n != own), key=lambda n: shares[n])
    b = int(np.count_nonzero(hits[best] & ~hits[own]))
    c = int(np.count_nonzero(hits[own] & ~hits[best]))
    if shares[best] - shares[own] >= MARGIN and b - c >= Z * math.sqrt(b + c):
        likely = best
    return CrsFit(declared, shares, len(x), reference.where, likely, what)


class Sample:
    """A seeded uniform sample of at most ``size`` points of a batch arriving in chunks.

    Each point draws a random key and the ``size`` smallest keys are kept (a bottom-k
    reservoir), so a file streamed in chunks is sampled as a whole, not by its first rows.
    """

    def __init__(self, size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._key = np.empty(0)
        self._x = np.empty(0)
        self._y = np.empty(0)
        self._crs = np.empty(0, dtype=object)

    def add(self, lng: np.ndarray, lat: np.ndarray, crs: str | np.ndarray) -> None:
        """Offer the points: coordinates as given, in ``crs`` (one name, or one per row).

        Only the chunk's ``size`` smallest keys can enter, so only they are drawn: the k
        smallest of n uniform keys are the partial sums of k exponentials over that sum plus
        a Gamma(n + 1 - k) remainder, given to a random k-subset. O(size) per chunk.
        """
        n = len(lng)
        k = min(n, self.size)
        if k == 0:
            return
        rows = self._rng.choice(n, k, replace=False) if k < n else np.arange(n)
        sums = np.cumsum(self._rng.exponential(size=k))
        keys = sums / (sums[-1] + self._rng.gamma(n + 1 - k))
        key = np.concatenate([self._key, keys])
        x = np.concatenate([self._x, np.asarray(lng, dtype=np.float64)[rows]])
        y = np.concatenate([self._y, np.asarray(lat, dtype=np.float64)[rows]])
        names = (np.full(k, crs, dtype=object) if isinstance(crs, str)
                 else np.asarray(crs, dtype=object)[rows])
        names = np.concatenate([self._crs, names])
        if len(key) > self.size:
            keep = np.argpartition(key, self.size)[:self.size]
            key, x, y, names = key[keep], x[keep], y[keep], names[keep]
        self._key, self._x, self._y, self._crs = key, x, y, names

    def fits(self, reference: Reference, *, what: str = "points") -> list[CrsFit]:
        """One fit per declared system with enough points in the sample (``what`` names
        the points in messages)."""
        out = []
        for name in sorted(set(self._crs.tolist())):
            rows = self._crs == name
            fit = fit_crs(self._x[rows], self._y[rows], name, reference, what=what)
            if fit is not None:
                out.append(fit)
        return out


def report(fits: list[CrsFit], on_warning: Warn | None = None) -> None:
    """Send each mismatch to ``on_warning``, or warn with :class:`CrsMismatchWarning`."""
    for fit in fits:
        if fit.likely is None:
            continue
        if on_warning is None:
            warnings.warn(fit.message, CrsMismatchWarning, stacklevel=3)
        else:
            on_warning(fit.message)
