"""Addresses → WGS84 coordinates, for customers a CRM holds without a location.

Two geocoders share one small interface, :class:`Geocoder` (a Protocol, so any object with a
matching ``geocode`` method works):

* :class:`Gazetteer` — the offline default: a table the operator supplies (address or
  community name → lng, lat, crs). No network, reproducible, and the operator's own names
  for communities (小区) usually beat a web service on exactly the places that matter.
* :class:`GeopyGeocoder` — an adapter for an external service through geopy. It is off
  unless configured explicitly (:func:`geopy_geocoder` or an injected geopy geocoder): an
  assignment run never sends customer addresses anywhere by default.

A geocoder answers a whole batch: coordinates in WGS84 (NaN where not found) and, for every
address it could not place, the reason. Nothing raises per address, so a batch is never lost
to one bad row.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from territory.crs import normalize_crs, to_wgs84
from territory.errors import InvalidInputError

#: Generic words a community name may or may not carry ("幸福花园" vs "幸福"): one is
#: removed from the end of a normalised name, longest first, so both spellings meet.
ADDRESS_SUFFIXES: tuple[str, ...] = (
    "居委会", "村委会", "小区", "花园", "社区", "大厦", "公寓", "家园", "新村", "大楼", "广场",
)
#: Building, unit and room details at the end of an address ("3栋2单元501室", "A座", "二期"):
#: removed repeatedly, since a community is located by its name, not by its flats.
ADDRESS_DETAIL = re.compile(
    r"(?:[0-9a-z一二三四五六七八九十百零〇甲乙丙丁#-]+(?:号楼|号院|号|栋|幢|座|单元|室|层|楼|户|期))+$"
)
_MIN_KEY = 2  # a name shorter than this (after normalisation) is too vague to match on


def normalize_address(text: object) -> str:
    """The key an address or community name is matched on.

    Steps: Unicode NFKC (full-width letters, digits and spaces become ASCII: "３栋" → "3栋"),
    lower case, remove whitespace and punctuation, remove trailing building/unit/room details
    (:data:`ADDRESS_DETAIL`), then one generic suffix (:data:`ADDRESS_SUFFIXES`) if a name of at
    least two characters remains. Missing values give "".
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    s = unicodedata.normalize("NFKC", str(text)).lower()
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith(("Z", "P", "C")))
    s = ADDRESS_DETAIL.sub("", s)
    for suffix in ADDRESS_SUFFIXES:
        if s.endswith(suffix) and len(s) - len(suffix) >= _MIN_KEY:
            return s[: -len(suffix)]
    return s


@dataclass(frozen=True)
class GeocodeResult:
    """A batch answer, aligned with the addresses asked.

    ``lng``/``lat``: WGS84, NaN where not found; ``reason``: None where found, else why not.
    """

    lng: np.ndarray
    lat: np.ndarray
    reason: np.ndarray

    @classmethod
    def empty(cls, n: int) -> GeocodeResult:
        return cls(np.full(n, np.nan), np.full(n, np.nan), np.full(n, None, dtype=object))


@runtime_checkable
class Geocoder(Protocol):
    """Anything that turns a batch of addresses into WGS84 coordinates."""

    def geocode(self, addresses: Sequence[object]) -> GeocodeResult:
        """One result per address, in order; never raises for an address it cannot place."""
        ...


class Gazetteer:
    """Offline geocoder over an operator-supplied table of names and coordinates.

    Matching: the normalised address (:func:`normalize_address`) equals a normalised name, or
    else the longest name that ends the address ("广东省深圳市南山区幸福花园3栋" finds
    "幸福花园"). Names that normalise alike but point to different places are ambiguous and
    match nothing (the reason says so) rather than a guess.

    Parameters
    ----------
    table : DataFrame
        Columns ``address`` (name), ``lng``, ``lat`` and optionally ``crs`` per row (wgs84,
        cgcs2000, gcj02, bd09 or EPSG:N; ``default_crs`` where absent or blank).
    """

    def __init__(self, table: pd.DataFrame, *, default_crs: str = "wgs84") -> None:
        missing = [c for c in ("address", "lng", "lat") if c not in table.columns]
        if missing:
            raise InvalidInputError(
                f"gazetteer: no column(s) {missing}; it needs address, lng, lat and optionally "
                f"crs (columns found: {list(table.columns)[:20]})"
            )
        x = pd.to_numeric(table["lng"], errors="coerce").to_numpy(dtype=float)
        y = pd.to_numeric(table["lat"], errors="coerce").to_numpy(dtype=float)
        crs = (table["crs"].astype(object).where(table["crs"].notna(), "")
               if "crs" in table.columns else pd.Series("", index=table.index))
        crs = crs.map(lambda c: str(c).strip() or default_crs).to_numpy(dtype=object)
        lng, lat = np.full(len(x), np.nan), np.full(len(x), np.nan)
        for name in pd.unique(crs):
            rows = crs == name
            try:
                canonical = normalize_crs(name)
            except InvalidInputError as exc:
                raise InvalidInputError(f"gazetteer: column crs: {exc}") from None
            lng[rows], lat[rows] = to_wgs84(x[rows], y[rows], canonical)
        bad = ~(np.isfinite(lng) & np.isfinite(lat))
        if bad.any():
            rows = table.index[bad].tolist()[:10]
            raise InvalidInputError(
                f"gazetteer: rows {rows} have missing or non-numeric lng/lat; fix or drop them"
            )
        keys = table["address"].map(normalize_address)
        short = (keys.str.len() < _MIN_KEY).to_numpy()
        if short.any():
            raise InvalidInputError(
                f"gazetteer: names {table['address'][short].tolist()[:10]} are empty or too "
                "short once normalised; give full community names"
            )
        self._entries: dict[str, tuple[float, float] | list[str]] = {}
        for key, name, px, py in zip(keys, table["address"], lng, lat, strict=True):
            seen = self._entries.get(key)
            if seen is None:
                self._entries[key] = (px, py)
            elif isinstance(seen, tuple) and seen != (px, py):
                self._entries[key] = [str(name)]  # ambiguous from now on
            elif isinstance(seen, list):
                seen.append(str(name))
        self._longest = max(len(k) for k in self._entries) if self._entries else 0

    @classmethod
    def from_csv(cls, path: str | Path, *, default_crs: str = "wgs84") -> Gazetteer:
        """Read a gazetteer CSV (UTF-8; columns address, lng, lat[, crs])."""
        path = Path(path)
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except FileNotFoundError:
            raise InvalidInputError(f"`gazetteer` {path}: no such file") from None
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"`gazetteer` {path}: not a readable UTF-8 CSV ({exc})"
                                    ) from None
        return cls(table, default_crs=default_crs)

    def __len__(self) -> int:
        return len(self._entries)

    def _match(self, key: str) -> tuple[float, float] | str:
        """Coordinates, or the reason there are none."""
        if len(key) < _MIN_KEY:
            return "empty address"
        hit = self._entries.get(key)
        for start in range(max(1, len(key) - self._longest), len(key) - _MIN_KEY + 1):
            if hit is not None:
                break
            hit = self._entries.get(key[start:])
        if hit is None:
            return "no gazetteer entry matches the address"
        if isinstance(hit, list):
            return f"address matches several gazetteer entries at different places: {hit[:5]}"
        return hit

    def geocode(self, addresses: Sequence[object]) -> GeocodeResult:
        out = GeocodeResult.empty(len(addresses))
        for i, text in enumerate(addresses):
            hit = self._match(normalize_address(text))
            if isinstance(hit, str):
                out.reason[i] = hit
            else:
                out.lng[i], out.lat[i] = hit
        return out


class GeopyGeocoder:
    """Adapter for a geopy geocoder (Nominatim, Baidu, ArcGIS, …): one request per distinct
    address, a service error becomes that row's reason.

    Parameters
    ----------
    geocoder : object with ``geocode(query, exactly_one=True)`` returning a location with
        ``longitude``/``latitude`` or None, i.e. any geopy geocoder (tests inject a fake).
    crs : the system the service answers in (Baidu: ``bd09``; AMap/Tencent: ``gcj02``).
    min_delay_seconds : wait between requests (services' rate limits), through geopy's
        ``RateLimiter``.
    """

    def __init__(self, geocoder: Any, *, crs: str = "wgs84", min_delay_seconds: float = 0.0
                 ) -> None:
        self.crs = normalize_crs(crs)
        call: Callable[..., Any] = geocoder.geocode
        if min_delay_seconds > 0:
            from geopy.extra.rate_limiter import RateLimiter

            call = RateLimiter(call, min_delay_seconds=min_delay_seconds, swallow_exceptions=False)
        self._call = call

    def geocode(self, addresses: Sequence[object]) -> GeocodeResult:
        from geopy.exc import GeopyError

        out = GeocodeResult.empty(len(addresses))
        answers: dict[str, tuple[float, float] | str] = {}
        for i, text in enumerate(addresses):
            query = "" if text is None or pd.isna(text) else str(text).strip()
            if query not in answers:
                if not query:
                    answers[query] = "empty address"
                else:
                    try:
                        loc = self._call(query, exactly_one=True)
                    except GeopyError as exc:
                        answers[query] = f"geocoding service failed: {exc}"
                    else:
                        answers[query] = ((float(loc.longitude), float(loc.latitude))
                                          if loc is not None else "the geocoding service "
                                          "found no match")
            ans = answers[query]
            if isinstance(ans, str):
                out.reason[i] = ans
            else:
                out.lng[i], out.lat[i] = ans
        found = np.isfinite(out.lng)
        out.lng[found], out.lat[found] = to_wgs84(out.lng[found], out.lat[found], self.crs)
        return out


def geopy_geocoder(service: str, *, crs: str = "wgs84", min_delay_seconds: float = 1.0,
                   **options: Any) -> GeopyGeocoder:
    """A :class:`GeopyGeocoder` for a geopy service by name ("nominatim", "baiduv3", …);
    ``options`` go to the geopy class (``user_agent``, ``api_key``, ``timeout``, …)."""
    from geopy.exc import GeocoderNotFound
    from geopy.geocoders import get_geocoder_for_service

    try:
        cls = get_geocoder_for_service(service)
    except GeocoderNotFound as exc:
        raise InvalidInputError(f"geocoder service {service!r}: {exc}") from None
    try:
        return GeopyGeocoder(cls(**options), crs=crs, min_delay_seconds=min_delay_seconds)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"geocoder service {service!r}: bad options ({exc})") from None
