"""Addresses → WGS84 coordinates, for customers a CRM holds without a location.

Two geocoders share one small interface, :class:`Geocoder` (a Protocol, so any object with a
matching ``geocode`` method works):

* :class:`Gazetteer` — the offline default: a table the operator supplies (standard
  addresses, communities 小区, buildings, villages, key accounts, streets → lng, lat, crs).
  Addresses are parsed by jionlp (province … street, its data shipped in the package: no
  download at run time) and matched with rapidfuzz inside their own district and street.
  No network, reproducible, and the operator's own names for communities usually beat a web
  service on exactly the places that matter.
* :class:`GeopyGeocoder` — an adapter for an external service through geopy. It is off
  unless configured explicitly (:func:`geopy_geocoder` or an injected geopy geocoder): an
  assignment run never sends customer addresses anywhere by default.

A geocoder answers a whole batch: coordinates in WGS84 (NaN where not found) and, for every
address it could not place, the reason. Nothing raises per address, so a batch is never lost
to one bad row.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyproj

from territory.crs import normalize_crs, to_wgs84
from territory.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Levels of an address match, most precise first. A ``district`` answer only names the
#: district: it is never used to pick a grid.
MATCH_LEVELS: tuple[str, ...] = ("building", "community", "street", "district")
#: Gazetteer entry kinds and the level a match on each reaches.
KIND_LEVEL: dict[str, str] = {
    "building": "building", "address": "building", "community": "community",
    "village": "community", "key_account": "community", "street": "street",
}
#: Levels whose match places a customer in a grid.
PLACED_LEVELS: frozenset[str] = frozenset({"building", "community", "street"})
#: Building (栋/幢/座/号楼) and what follows it (unit, floor, room): split off the place name.
#: No address library splits these, so this one pattern does.
_BUILDING = re.compile(
    r"(?P<building>[0-9a-z一二三四五六七八九十甲乙丙丁]+(?:号楼|栋|幢|座))(?P<room>.*)$")
_ROOM = re.compile(r"(?P<room>(?:[0-9a-z一二三四五六七八九十-]+(?:单元|层|楼|室|户|房))+[0-9]*)$")
_MIN_KEY = 2  # a place name shorter than this is too vague to match on
DEFAULT_MIN_SCORE = 75.0
#: Two candidates whose scores are this close, at the same level and in different places,
#: make an address ambiguous (needs review), rather than one silently winning.
_TIE = 1.0
_TIE_METRES = 150.0
_N_CANDIDATES = 3
_GEOD = pyproj.Geod(ellps="WGS84")


@functools.cache
def _jionlp() -> Any:
    """jionlp, imported once on first use (it takes a second and prints a banner, which goes
    to the debug log: the library never prints)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        import jionlp
    log.debug("jionlp loaded: %s", buf.getvalue().strip())
    return jionlp


def normalize_text(text: object) -> str:
    """The form every address and gazetteer name is compared in.

    Unicode NFKC (full-width letters, digits and spaces become ASCII: "３栋" → "3栋"), lower
    case, whitespace, punctuation and control characters removed, traditional characters
    made simplified (jionlp's ``tra2sim``). Missing values give "".
    """
    if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
        return ""
    s = unicodedata.normalize("NFKC", str(text)).lower()
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith(("Z", "P", "C", "S")))
    return _jionlp().tra2sim(s, mode="char") if s else s


@dataclass(frozen=True)
class ParsedAddress:
    """An address taken apart: administrative levels by jionlp, then the place name and its
    building / unit-and-room detail. Empty strings where absent."""

    text: str  # normalised
    province: str = ""
    city: str = ""
    district: str = ""
    street: str = ""  # 街道 / 乡镇
    community: str = ""  # 社区 / 村 named in the address
    place: str = ""  # what remains: road and number, community or building name
    building: str = ""  # "a栋", "3号楼"
    room: str = ""  # "1单元1201"


@functools.cache
def _parser(provinces: frozenset[str]) -> Any:
    """jionlp's location parser, its table of counties cut to ``provinces`` when given.

    Scanning that table (3,500 counties of China, pure Python) is most of a parse: about
    20 ms an address for all of China, a few ms for one province. An operator's customers
    live in its own province, so a :class:`Gazetteer` parses against the provinces of its
    entries; an address elsewhere then finds no district and is matched, or reviewed, on
    its name alone.
    """
    _jionlp()
    from jionlp.gadget.location_parser import LocationParser

    parser = LocationParser()
    parser("北京市", town_village=True)  # loads its tables
    if provinces:
        parser.administrative_map_list = [a for a in parser.administrative_map_list
                                          if a[1][0] in provinces]
    return parser


def parse_address(text: object, provinces: frozenset[str] = frozenset()) -> ParsedAddress:
    """Parse one address (see :class:`ParsedAddress`), against the counties of
    ``provinces`` (full names, e.g. 广东省; empty: all of China); never raises."""
    return _parse(normalize_text(text), provinces)


@functools.lru_cache(maxsize=200_000)
def _parse(s: str, provinces: frozenset[str]) -> ParsedAddress:
    if not s:
        return ParsedAddress(s)
    loc = _parser(provinces)(s, town_village=True, change2new=True)
    province, city, district, street, community = (
        loc.get(k) or "" for k in ("province", "city", "county", "town", "village"))
    detail = loc.get("detail") or ""
    rest = detail
    for part in (street, community):  # jionlp names them but leaves them in the detail
        if part and rest.startswith(part):
            rest = rest[len(part):]
    rest, building, room = _split_building(rest)
    if district and district not in s and (len(rest) < _MIN_KEY or rest in _GENERIC_PLACES):
        # jionlp read the start of a place's name as a county's short form ("福田花园":
        # 福田区 and 花园; "和平苑": Heyuan's 和平县 and 苑): the name is the place, and the
        # county, with the city and province it implied, is dropped unless written out
        start = len(s) - len(detail)
        short = next((k for k in range(min(start, len(district)), 0, -1)
                      if s[start - k:start] == district[:k]), 0)
        if short:
            before = s[:start - short]

            def written(name: str) -> bool:  # in full, or without its 市/省
                return bool(name) and (name in before or name[:-1] in before)

            city = city if written(city) else ""
            if not (city or written(province)):
                province = ""
            district = street = community = ""
            rest, building, room = _split_building(s[start - short:])
    return ParsedAddress(s, province, city, district, street, community, rest, building, room)


#: Place names that say what a place is, not which: left alone after a county's short form
#: they mean jionlp took the start of the name for the county (see :func:`_parse`).
_GENERIC_PLACES = frozenset({
    "苑", "园", "花园", "小区", "大厦", "广场", "公寓", "新村", "家园", "山庄", "中心", "村",
    "城", "府", "居", "阁", "庭", "湾", "轩", "雅苑", "名苑", "大楼", "楼", "花苑", "华庭",
    "新城", "社区", "街", "路"})


def _split_building(rest: str) -> tuple[str, str, str]:
    """``rest`` as (place, building, room): the building (栋/幢/座/号楼) and what follows it,
    or the room alone, split off the end."""
    if m := _BUILDING.search(rest):
        return rest[: m.start()], m["building"], m["room"]
    if m := _ROOM.search(rest):
        return rest[: m.start()], "", m["room"]
    return rest, "", ""


@dataclass(frozen=True)
class GeocodeResult:
    """A batch answer, aligned with the addresses asked.

    ``lng``/``lat``: WGS84, NaN where not placed; ``reason``: None where placed, else why
    not. Gazetteer answers also carry, per address, the ``level`` reached (one of
    :data:`MATCH_LEVELS` or None), the ``score`` (0–100) of the best entry, the ``entry``
    placed on, the best ``candidates`` (text) and ``review``: True where the address was
    recognised in part (a district, entries below the threshold, a tie) and a person should
    place it, False where nothing at all was found.
    """

    lng: np.ndarray
    lat: np.ndarray
    reason: np.ndarray
    level: np.ndarray = field(default=None)  # type: ignore[assignment]
    score: np.ndarray = field(default=None)  # type: ignore[assignment]
    entry: np.ndarray = field(default=None)  # type: ignore[assignment]
    candidates: np.ndarray = field(default=None)  # type: ignore[assignment]
    review: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.lng)
        for name in ("level", "entry", "candidates"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(n, None, dtype=object))
        if self.score is None:
            object.__setattr__(self, "score", np.full(n, np.nan))
        if self.review is None:
            object.__setattr__(self, "review", np.zeros(n, dtype=bool))

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
    """Offline geocoder over an operator-supplied table of places and their coordinates.

    Entries are standard addresses, communities (小区), buildings, villages, key-account
    sites and streets. An address is parsed (:func:`parse_address`), then fuzzy-matched
    (rapidfuzz ``partial_ratio`` on the place name) against the entries of its own district
    and street only, so that two "锦绣苑" in two districts never collide; a building entry
    counts only when the building agrees. The best entry at or above ``min_score`` places the
    address, at the level of its kind (:data:`KIND_LEVEL`). Otherwise — no entry good
    enough, two equally good entries in different places, or only the district recognised —
    the address is left for review with its best candidates: never placed by a guess.

    Parameters
    ----------
    table : DataFrame
        ``address`` (the entry's name or full address), ``lng``, ``lat``; optionally ``crs``
        per row (blank: ``crs``), ``kind`` (one of :data:`KIND_LEVEL`; default building when
        the name ends in a building, else community), ``district`` and ``street`` (default:
        parsed from ``address``).
    crs : the system of the coordinates (wgs84, cgcs2000, gcj02, bd09 or EPSG:N), required
        unless every row names its own in a ``crs`` column: never assumed.
    min_score : the score (0–100) an entry needs to place an address.
    """

    def __init__(self, table: pd.DataFrame, *, crs: str | None = None,
                 min_score: float = DEFAULT_MIN_SCORE) -> None:
        if not 0 <= min_score <= 100:
            raise InvalidInputError(f"`min_score` {min_score}: give a score from 0 to 100")
        self.min_score = float(min_score)
        missing = [c for c in ("address", "lng", "lat") if c not in table.columns]
        if missing:
            raise InvalidInputError(
                f"gazetteer: no column(s) {missing}; it needs address, lng, lat and optionally "
                f"crs, kind, district, street (columns found: {list(table.columns)[:20]})"
            )
        table = table.reset_index(drop=True)
        x = pd.to_numeric(table["lng"], errors="coerce").to_numpy(dtype=float)
        y = pd.to_numeric(table["lat"], errors="coerce").to_numpy(dtype=float)
        default = None if crs is None else normalize_crs(crs)
        names = (table["crs"].astype(object).where(table["crs"].notna(), "")
                 .map(lambda c: str(c).strip()).to_numpy(dtype=object)
                 if "crs" in table.columns else np.full(len(table), "", dtype=object))
        if default is None and (names == "").any():
            raise InvalidInputError(
                "gazetteer: the CRS of its coordinates is required: name it (the gazetteer's "
                "crs: wgs84, cgcs2000, gcj02, bd09 or EPSG:N) or give a crs column naming every "
                "row's; it is never assumed")
        lng, lat = np.full(len(x), np.nan), np.full(len(x), np.nan)
        for name in pd.unique(names):
            rows = names == name
            try:
                canonical = normalize_crs(name) if name else default
            except InvalidInputError as exc:
                raise InvalidInputError(f"gazetteer: column crs: {exc}") from None
            lng[rows], lat[rows] = to_wgs84(x[rows], y[rows], canonical)
        bad = ~(np.isfinite(lng) & np.isfinite(lat))
        if bad.any():
            raise InvalidInputError(
                f"gazetteer: rows {np.flatnonzero(bad).tolist()[:10]} have missing, non-numeric "
                "or unconvertible lng/lat; fix or drop them")
        self.provinces = _provinces(table)
        parsed = [parse_address(a, self.provinces) for a in table["address"]]
        kinds = self._kinds(table, parsed)
        keys = [p.place or p.community or (p.street if k == "street" else "")
                for p, k in zip(parsed, kinds, strict=True)]
        short = [str(a) for a, k in zip(table["address"], keys, strict=True) if len(k) < _MIN_KEY]
        if short:
            raise InvalidInputError(f"gazetteer: names {short[:10]} are empty or too short once "
                                    "normalised; give full names")
        given = {c: table[c].map(normalize_text) if c in table.columns else None
                 for c in ("district", "street")}
        self.entries = pd.DataFrame({
            "name": table["address"].astype(str),
            "key": keys,
            "building": [p.building for p in parsed],
            "kind": kinds,
            "level": [KIND_LEVEL[k] for k in kinds],
            "district": (given["district"] if given["district"] is not None
                         else [p.district for p in parsed]),
            "street": (given["street"] if given["street"] is not None
                       else [p.street for p in parsed]),
            "lng": lng, "lat": lat,
        })
        self._by_district = {d: g.index.to_numpy() for d, g in self.entries.groupby("district")}
        # plain arrays for the per-address work (DataFrame access costs more than the match)
        self._c = {c: self.entries[c].to_numpy(dtype=float if c in ("lng", "lat") else object)
                   for c in self.entries.columns}
        self._rank = np.array([MATCH_LEVELS.index(v) for v in self._c["level"]])
        self._keylen = np.array([len(k) for k in self._c["key"]])

    @staticmethod
    def _kinds(table: pd.DataFrame, parsed: list[ParsedAddress]) -> list[str]:
        if "kind" not in table.columns:
            return ["building" if p.building else "community" for p in parsed]
        kinds = table["kind"].astype(object).where(table["kind"].notna(), "")
        kinds = kinds.map(lambda k: str(k).strip().lower())
        bad = sorted(set(kinds) - set(KIND_LEVEL) - {""})
        if bad:
            raise InvalidInputError(f"gazetteer: column kind has {bad[:5]}; use one of "
                                    f"{sorted(KIND_LEVEL)} (or leave it blank)")
        return [k or ("building" if p.building else "community")
                for k, p in zip(kinds, parsed, strict=True)]

    @classmethod
    def from_csv(cls, path: str | Path, *, crs: str | None = None,
                 min_score: float = DEFAULT_MIN_SCORE) -> Gazetteer:
        """Read a gazetteer CSV (UTF-8; columns as for the constructor)."""
        path = Path(path)
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except FileNotFoundError:
            raise InvalidInputError(f"`gazetteer` {path}: no such file") from None
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"`gazetteer` {path}: not a readable UTF-8 CSV ({exc})"
                                    ) from None
        return cls(table, crs=crs, min_score=min_score)

    def __len__(self) -> int:
        return len(self.entries)

    def _pool(self, p: ParsedAddress) -> np.ndarray:
        """Entry positions an address may match: its district's (every entry when the
        address names none), narrowed to its street where both name one."""
        c = self._c
        pool = (self._by_district.get(p.district, np.empty(0, dtype=np.int64)) if p.district
                else np.arange(len(self.entries)))
        if p.street:
            street = c["street"][pool]
            pool = pool[(street == p.street) | (street == "")]
        return pool

    def _match(self, p: ParsedAddress) -> dict[str, Any]:
        """One address's answer: lng/lat, level, score, entry, candidates, reason, review."""
        from rapidfuzz import fuzz, process

        c = self._c
        district_only = {"level": "district", "review": True} if p.district else {}
        if not p.text:
            return {"reason": "empty address"}
        pool = self._pool(p)
        query = p.place or p.community
        streets = pool[(c["level"][pool] == "street")]
        pool = pool[c["level"][pool] != "street"]
        scores = np.zeros(len(pool))
        if query and len(pool):
            scores = process.cdist([query], c["key"][pool], scorer=fuzz.partial_ratio,
                                   workers=1)[0].astype(float)
            # a building entry is that building only: another building of it is no match
            b = c["building"][pool]
            scores[(b != "") & (b != p.building)] = 0.0
        if not len(pool) or scores.max() < self.min_score:
            street = [i for i in streets if c["key"][i] == p.street] if p.street else []
            if street:
                return self._answer(street[0], 100.0)
            best = pool[np.argsort(-scores, kind="stable")[:_N_CANDIDATES]] if query else []
            cands = [(i, s) for i, s in zip(best, np.sort(scores)[::-1], strict=False) if s > 0]
            if not cands and not district_only:
                return {"reason": "no gazetteer entry matches the address"
                        + ("" if p.district else " (no district recognised in it)")}
            return {**district_only, "review": True,
                    "candidates": self._text(cands) if cands else None,
                    "score": cands[0][1] if cands else np.nan,
                    "reason": (f"best gazetteer match scores {cands[0][1]:.0f} < "
                               f"{self.min_score:.0f}" if cands else
                               "only the district is recognised")}
        # most precise level first, then the building named in both, then score, then the
        # longest (most specific) name
        level = self._rank[pool]
        same_building = (c["building"][pool] != "") & bool(p.building)
        keylen = self._keylen[pool]
        ok = scores >= self.min_score
        order = np.lexsort((-keylen, -scores, ~same_building, level, ~ok))
        i, s = pool[order[0]], scores[order[0]]  # ok, since the best score is
        # a rival scores as well, is not merely a part of the winner's name ("锦绣" in
        # "锦绣苑"), and is in another district (at any level: an address naming no district
        # cannot tell "华景雅居2栋" here from "华景雅居" there) or, as precise, elsewhere
        rivals = [(j, t) for j, t in zip(pool[order], scores[order], strict=True)
                  if j != i and t >= max(s - _TIE, self.min_score)
                  and not (c["key"][j] in c["key"][i] != c["key"][j])
                  and (c["district"][j] != c["district"][i]
                       or (c["level"][j] == c["level"][i] and self._apart(i, j)))]
        if rivals:
            return {**district_only, "review": True, "score": s,
                    "candidates": self._text([(i, s), *rivals[: _N_CANDIDATES - 1]]),
                    "reason": "several gazetteer entries in different places match equally"}
        return self._answer(i, s)

    def _apart(self, i: int, j: int) -> bool:
        """Whether two entries are further apart than a tie may be resolved by either."""
        c = self._c
        _, _, metres = _GEOD.inv(c["lng"][i], c["lat"][i], c["lng"][j], c["lat"][j])
        return bool(metres > _TIE_METRES)

    def _answer(self, i: int, score: float) -> dict[str, Any]:
        c = self._c
        return {"lng": c["lng"][i], "lat": c["lat"][i], "level": c["level"][i],
                "score": float(score), "entry": c["name"][i]}

    def _text(self, cands: list) -> str:
        c = self._c
        return "; ".join(f"{c['name'][i]} ({c['district'][i] or '?'}, {s:.0f})"
                         for i, s in cands)

    def geocode(self, addresses: Sequence[object]) -> GeocodeResult:
        out = GeocodeResult.empty(len(addresses))
        answers: dict[str, dict[str, Any]] = {}
        for i, text in enumerate(addresses):
            key = normalize_text(text)
            if key not in answers:
                answers[key] = self._match(_parse(key, self.provinces))
            ans = answers[key]
            out.lng[i], out.lat[i] = ans.get("lng", np.nan), ans.get("lat", np.nan)
            out.reason[i], out.level[i] = ans.get("reason"), ans.get("level")
            out.score[i], out.entry[i] = ans.get("score", np.nan), ans.get("entry")
            out.candidates[i], out.review[i] = ans.get("candidates"), ans.get("review", False)
        return out


def _provinces(table: pd.DataFrame, sample: int = 50) -> frozenset[str]:
    """The provinces a gazetteer covers, read (all of China) from a sample of its distinct
    district names, or of its addresses when it has no district column."""
    col = "district" if "district" in table.columns else "address"
    names = pd.unique(table[col].astype(str))[:sample]
    return frozenset(p.province for p in map(parse_address, names) if p.province)


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
