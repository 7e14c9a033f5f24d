"""Customer assignment (用户归属): every customer to exactly one sub-grid, main grid, branch.

Operations attach customers to grids in batch every night and one by one at the counter; the
answer must never drop a row and never force one. So every input row comes out, in input
order, with a ``status``:

* ``ok`` — inside a unit: ``sub_grid_id``, ``main_grid_id``, ``branch_id`` are set;
* ``outside`` — outside the service area: ``nearest_grid_id`` and ``distance_m`` (metres);
* ``invalid`` — coordinates missing, not numbers, out of range or not convertible;
* ``not_geocoded`` — no coordinates and nothing in the address was recognised;
* ``needs_review`` — no coordinates and the address was recognised only in part (its
  district, gazetteer entries below the score threshold, or equally good entries in different
  places): never placed by a guess, the best ``candidates`` are given for a person to choose;

and ``reason`` says why for the last three. When an address column is given, the output also
has :data:`ADDRESS_COLUMNS`: the ``match_level`` reached (building, community, street,
district), the ``match_score`` (0–100), the ``matched_entry`` of the gazetteer and the
``candidates``. A point on a boundary has one owner, always the
same one: the lowest ``unit_id`` among the units covering it, the rule the plan's own
aggregation uses (see :mod:`territory.assign_index`).

Coordinates may come in WGS84, CGCS2000, GCJ-02, BD-09 or any EPSG CRS (one ``crs`` for all
rows, or a column naming each row's), and are converted with :mod:`territory.crs`. The system
is never assumed: a call without one is refused. Every batch of at least
:data:`territory.crs_check.MIN_POINTS` points is checked (on a sample) against the plan's
populated units, and a batch that fits clearly better in another system is reported through
``on_warning`` (else a :class:`~territory.crs_check.CrsMismatchWarning`); the check never
changes a result. Rows without coordinates may carry an address for a
:class:`territory.geocode.Geocoder`.

Files (CSV or Parquet, by suffix) are streamed through Arrow in chunks of record batches, so
a file larger than memory works at millions of rows a second: CSV parsed by Arrow's
reader, coordinates read as numpy arrays, the result columns appended to the input's batches
(grid ids dictionary-encoded), no pandas frame built; reading, assigning and writing overlap
on three threads. Every row of a file output also names the plan that assigned it
(:data:`PLAN_COLUMNS`). The output is written to a temporary file and renamed at the end
(atomic). The library reports progress through an optional callback and never prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from territory.assign_index import AssignmentIndex, IndexFormatError, index_path
from territory.atomic import atomic_path
from territory.crs import normalize_crs, to_wgs84
from territory.crs_check import MIN_POINTS, Sample, Warn, populated_units, report
from territory.errors import InvalidInputError
from territory.geocode import Geocoder
from territory.plan import Plan, plan_file
from territory.tables import (
    CHUNK_ROWS,
    DEFAULT_ENCODING,
    STREAM_BLOCK_BYTES,
    codec,
    csv_options,
    decode_error,
)

log = logging.getLogger(__name__)

STATUSES = ("ok", "outside", "invalid", "not_geocoded", "needs_review")
# status codes while a batch is worked on (strings only at the end)
_UNSET, _OK, _OUTSIDE, _INVALID, _NOT_GEOCODED, _NEEDS_REVIEW = -1, 0, 1, 2, 3, 4
_STATUS_NAMES = np.array(STATUSES, dtype=object)
#: Columns added to every input row, in this order.
OUTPUT_COLUMNS = ("sub_grid_id", "main_grid_id", "branch_id", "status", "nearest_grid_id",
                  "distance_m", "reason")
#: Columns added after those when an address column is given (see the module docstring).
ADDRESS_COLUMNS = ("match_level", "match_score", "matched_entry", "candidates")
#: Columns a file output ends with: the plan that assigned the rows (its id and version), so
#: that the nightly change report knows a new plan from a move (:mod:`territory.changes`).
PLAN_COLUMNS = ("plan_id", "plan_version")
_STATUS_DICTIONARY = pa.array(STATUSES, type=pa.string())
_GEOGRAPHIC = ("wgs84", "cgcs2000", "gcj02", "bd09")
#: Systems whose coordinates are used as WGS84 without conversion (CGCS2000 is within
#: centimetres of it)
AS_WGS84 = ("wgs84", "cgcs2000")
FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}

Progress = Callable[[int, int | None], None]


def open_index(plan_path: str | Path, *, rebuild: bool = False) -> AssignmentIndex:
    """The index of a saved plan: read from ``<plan>.index``, or built and saved there
    when absent, of an older format (or when ``rebuild``). A sidecar built for another plan
    is refused. ``plan_path`` may be the plan's folder."""
    plan_path = plan_file(plan_path)
    plan = Plan.load(plan_path)
    path = index_path(plan_path)
    if path.exists() and not rebuild:
        try:
            return AssignmentIndex.load(path, plan)
        except IndexFormatError as exc:
            log.info("%s; rebuilding it", exc)
    index = AssignmentIndex.build(plan)
    index.save(path)
    log.info("assignment index of %s written to %s", plan_path, path)
    return index


@dataclass(frozen=True)
class Assignment:
    """Arrays of one batch, one entry per input row (positions, not labels)."""

    index: AssignmentIndex
    unit: np.ndarray  # int64 position in plan.units, -1 unless ok
    code: np.ndarray  # int8: position of the status in STATUSES
    nearest_unit: np.ndarray  # int64, -1 unless outside
    distance_m: np.ndarray  # float64: 0 when ok, metres when outside, NaN otherwise
    reason: np.ndarray  # object: None unless invalid, not_geocoded or needs_review
    #: with an address column: ADDRESS_COLUMNS -> arrays (None/NaN where not geocoded)
    matches: dict[str, np.ndarray] | None = None

    def _ids(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return np.append(ids, None)[pos]  # position -1 picks the trailing None

    @property
    def sub_grid_id(self) -> np.ndarray:
        return self._ids(self.index.sub_grid_ids, self.unit)

    @property
    def main_grid_id(self) -> np.ndarray:
        return self._ids(self.index.main_grid_ids, self.unit)

    @property
    def branch_id(self) -> np.ndarray:
        return self._ids(self.index.branch_ids, self.unit)

    @property
    def status(self) -> np.ndarray:
        return _STATUS_NAMES[self.code]

    @property
    def nearest_grid_id(self) -> np.ndarray:
        return self._ids(self.index.sub_grid_ids, self.nearest_unit)

    def frame(self, index: pd.Index | None = None) -> pd.DataFrame:
        """The :data:`OUTPUT_COLUMNS` (and :data:`ADDRESS_COLUMNS` when matched) as a
        DataFrame (``index`` defaults to a RangeIndex)."""
        df = pd.DataFrame({
            "sub_grid_id": self.sub_grid_id, "main_grid_id": self.main_grid_id,
            "branch_id": self.branch_id, "status": self.status,
            "nearest_grid_id": self.nearest_grid_id, "distance_m": self.distance_m,
            "reason": self.reason,
        }, index=index)
        for name, values in (self.matches or {}).items():  # None stays None, not NaN
            df[name] = pd.Series(values, index=df.index, dtype=values.dtype)
        return df


def _assign_wgs84(index: AssignmentIndex, x: np.ndarray, y: np.ndarray, status: np.ndarray,
                  reason: np.ndarray) -> Assignment:
    """Assign rows whose status is still unset from WGS84 ``x``/``y``."""
    n = len(x)
    todo = np.flatnonzero(status == _UNSET)
    every = len(todo) == n  # the usual case: whole arrays, no gathers and scatters
    tx, ty = (x, y) if every else (x[todo], y[todo])
    found = index.locate(tx, ty)  # -1 where outside, as unit wants
    inside = found >= 0
    if every:
        unit = found
        status[:] = np.where(inside, np.int8(_OK), np.int8(_OUTSIDE))
        dist = np.where(inside, 0.0, np.nan)
    else:
        unit = np.full(n, -1, dtype=np.int64)
        unit[todo] = found
        status[todo] = np.where(inside, np.int8(_OK), np.int8(_OUTSIDE))
        dist = np.full(n, np.nan)
        dist[todo] = np.where(inside, 0.0, np.nan)
    nearest = np.full(n, -1, dtype=np.int64)
    out = np.flatnonzero(~inside)
    if len(out):
        rows = out if every else todo[out]
        nearest[rows], dist[rows] = index.nearest(tx[out], ty[out])
    return Assignment(index, unit, status, nearest, dist, reason)


def assign(index: AssignmentIndex, lng: np.ndarray, lat: np.ndarray, *, crs: str | None = None,
           on_warning: Warn | None = None) -> Assignment:
    """Assign coordinate arrays in ``crs`` (required: any system
    :func:`territory.crs.normalize_crs` accepts).

    Non-finite or out-of-range coordinates are ``invalid`` (with the reason); nothing raises
    per row. Returns arrays aligned with the input. A batch is checked for a mistaken
    ``crs`` (see :mod:`territory.crs_check`; a single point is not).
    """
    crs = normalize_crs(crs)
    x = np.asarray(lng, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidInputError(f"lng and lat must be 1-d arrays of one length, got shapes "
                                f"{x.shape} and {y.shape}")
    if len(x) >= MIN_POINTS:  # fewer cannot be checked: a single lookup skips the sample
        check = Sample()
        check.add(x, y, crs)
        report(check.fits(populated_units(index)), on_warning)
    status = np.full(len(x), _UNSET, dtype=np.int8)
    reason = np.full(len(x), None, dtype=object)
    x, y = _to_wgs84_checked(x, y, crs, np.arange(len(x)), status, reason)
    return _assign_wgs84(index, x, y, status, reason)


def _to_wgs84_checked(x: np.ndarray, y: np.ndarray, crs: str, rows: np.ndarray,
                      status: np.ndarray, reason: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert ``rows`` of x/y from ``crs``; flag the ones that cannot be used as invalid."""
    geographic = crs in _GEOGRAPHIC
    every = len(rows) == len(x)  # then rows is every row in order: no gathers
    for vals, name, limit in ((x if every else x[rows], "lng", 180),
                              (y if every else y[rows], "lat", 90)):
        if geographic:
            bad = np.flatnonzero(~(np.abs(vals) <= limit))  # NaN fails the test too
        else:
            bad = np.flatnonzero(~np.isfinite(vals))
        for r, v in zip(rows[bad], vals[bad], strict=True):
            if status[r] == _UNSET:
                status[r] = _INVALID
                reason[r] = (f"{name} is missing or not a number" if not np.isfinite(v) else
                             f"{name} {float(v)!r} is out of range [-{limit}, {limit}]")
    if crs in AS_WGS84 and len(rows) == len(x):
        return x, y
    x, y = x.copy(), y.copy()
    x[rows], y[rows] = to_wgs84(x[rows], y[rows], crs)
    failed = rows[~(np.isfinite(x[rows]) & np.isfinite(y[rows]))]
    for r in failed:
        if status[r] == _UNSET:
            status[r] = _INVALID
            reason[r] = f"coordinates cannot be converted from {crs} to WGS84"
    return x, y


@dataclass(frozen=True)
class Columns:
    """Which input columns hold what (the names a caller or the CLI gives).

    ``crs`` is the system of every row, or of the rows whose ``crs_column`` cell is blank;
    given coordinates need one of the two (checked with the input's columns): they are never
    assumed to be WGS84.
    """

    lng: str = "lng"
    lat: str = "lat"
    crs: str | None = None
    crs_column: str | None = None
    address_column: str | None = None

    def __post_init__(self) -> None:
        if self.crs is not None:
            normalize_crs(self.crs)  # an unknown system fails before any row is read


def _check_columns(names: list[str], cols: Columns, geocoder: Geocoder | None) -> None:
    added = OUTPUT_COLUMNS + (ADDRESS_COLUMNS if cols.address_column else ())
    clash = [c for c in added if c in names]
    if clash:
        raise InvalidInputError(
            f"input already has column(s) {clash} that assignment adds; rename them first"
        )
    need = [c for c in (cols.crs_column, cols.address_column) if c]
    if cols.address_column is None:
        need += [cols.lng, cols.lat]
    elif geocoder is None:
        raise InvalidInputError(
            f"address column {cols.address_column!r} needs a geocoder: give a gazetteer "
            "(`gazetteer`) or configure a geocoding service"
        )
    missing = [c for c in need if c not in names]
    if missing:
        raise InvalidInputError(
            f"input has no column(s) {missing}; name them with `lng`, `lat`, `crs_column` "
            f"or `address_column` (columns found: {names[:20]})"
        )
    if cols.address_column is not None and (cols.lng in names) != (cols.lat in names):
        raise InvalidInputError(
            f"input has only one of the coordinate columns {cols.lng!r}, {cols.lat!r}; "
            "give both or neither"
        )
    if cols.crs is None and cols.crs_column is None and cols.lng in names:
        raise InvalidInputError(
            f"crs is required for the coordinates in {cols.lng!r}/{cols.lat!r}: name their "
            "system (wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>) with crs, or each row's with "
            "crs_column; it is never assumed"
        )


def _numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Floats (NaN where missing or not a number) and the mask of non-blank entries."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan,
                                                          copy=True)
    if pd.api.types.is_numeric_dtype(values.dtype):
        present = values.notna().to_numpy(dtype=bool)
    else:
        present = values.astype("string").str.strip().fillna("").ne("").to_numpy(dtype=bool)
    return num, present


def _labels(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Per row, the position of its stripped text among the distinct ones (blank: "")."""
    raw = values.astype(object).where(values.notna(), "").map(lambda v: str(v).strip())
    codes, uniques = pd.factorize(raw.to_numpy(dtype=object))
    return codes, list(uniques)


class _Chunk(Protocol):
    """One chunk of input as the assignment reads it, whether pandas or Arrow holds it: the
    two paths share every rule of :func:`_assign_chunk` and differ only in how cells are
    read."""

    names: list[str]
    n: int

    def numbers(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Floats (NaN where missing or not a number) and the mask of non-blank cells."""

    def cells(self, name: str, rows: np.ndarray) -> list[object]:
        """The cells of ``rows`` as Python objects (for reasons and the geocoder)."""

    def labels(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Per row, the position of its stripped text among the distinct ones."""


class _FrameChunk:
    """A DataFrame as a :class:`_Chunk`."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df, self.names, self.n = df, [str(c) for c in df.columns], len(df)

    def numbers(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _numbers(self.df[name])

    def cells(self, name: str, rows: np.ndarray) -> list[object]:
        return self.df[name].iloc[rows].tolist()

    def labels(self, name: str) -> tuple[np.ndarray, list[str]]:
        return _labels(self.df[name])


class _ArrowChunk:
    """An Arrow table as a :class:`_Chunk`: numeric columns are read as numpy views, text
    columns parsed by Arrow; a text column Arrow cannot parse whole (a stray word, spaces
    around a number) is read cell by cell the pandas way, so both paths agree on every
    cell."""

    def __init__(self, table: pa.Table) -> None:
        self.table, self.names, self.n = table, table.column_names, table.num_rows

    def numbers(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        col = self.table.column(name)
        kind = col.type
        if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind):
            return (col.cast(pa.float64()).to_numpy().astype(np.float64, copy=True),
                    col.is_valid().to_numpy())
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            blank = pc.fill_null(pc.equal(col, ""), True)
            try:
                num = pc.cast(pc.if_else(blank, None, col), pa.float64())
            except pa.ArrowInvalid:
                pass  # some cell is not a plain number: the pandas reading below
            else:
                return num.to_numpy().astype(np.float64, copy=True), ~blank.to_numpy()
        return _numbers(col.to_pandas())

    def cells(self, name: str, rows: np.ndarray) -> list[object]:
        return self.table.column(name).take(rows).to_pylist()

    def labels(self, name: str) -> tuple[np.ndarray, list[str]]:
        col = self.table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return _labels(col.to_pandas())
        text = pc.utf8_trim_whitespace(pc.fill_null(col, "")).combine_chunks()
        coded = text.dictionary_encode()
        return coded.indices.to_numpy(zero_copy_only=False), coded.dictionary.to_pylist()


def assign_frame(index: AssignmentIndex, df: pd.DataFrame, *, columns: Columns = Columns(),
                 geocoder: Geocoder | None = None, on_warning: Warn | None = None
                 ) -> pd.DataFrame:
    """``df`` with :data:`OUTPUT_COLUMNS` added: same rows, same order, same index.

    Coordinates are read from ``columns.lng``/``columns.lat`` in ``columns.crs``, or per row
    in the system named by ``columns.crs_column`` (blank: ``columns.crs``). Rows without
    coordinates are geocoded from ``columns.address_column`` when one is given. Given
    coordinates need ``columns.crs`` or ``columns.crs_column`` (never assumed); the batch is
    checked for a mistaken one.
    """
    check = Sample()
    res = _assign_chunk(index, _FrameChunk(df), columns, geocoder, check)
    report(check.fits(populated_units(index)), on_warning)
    return pd.concat([df, res.frame(index=df.index)], axis=1)


def _assign_chunk(index: AssignmentIndex, chunk: _Chunk, columns: Columns,
                  geocoder: Geocoder | None, check: Sample) -> Assignment:
    """Assign one chunk; its given coordinates are offered to ``check``."""
    _check_columns(chunk.names, columns, geocoder)
    n = chunk.n
    status = np.full(n, _UNSET, dtype=np.int8)
    reason = np.full(n, None, dtype=object)
    if columns.lng in chunk.names:
        x, has_x = chunk.numbers(columns.lng)
        y, has_y = chunk.numbers(columns.lat)
    else:
        x, y = np.full(n, np.nan), np.full(n, np.nan)
        has_x = has_y = np.zeros(n, dtype=bool)
    for name, has, val in ((columns.lng, has_x, x), (columns.lat, has_y, y)):
        bad = np.flatnonzero(has & np.isnan(val))
        status[bad] = _INVALID
        for r, cell in zip(bad, chunk.cells(name, bad) if len(bad) else [], strict=True):
            if reason[r] is None:
                reason[r] = f"{name} {cell!r} is not a number"
    geocoded = np.zeros(n, dtype=bool)
    matches = None
    if columns.address_column is not None:
        geocoded = ~has_x & ~has_y & (status == _UNSET)
        rows = np.flatnonzero(geocoded)
        matches = {c: np.full(n, np.nan if c == "match_score" else None,
                              dtype=float if c == "match_score" else object)
                   for c in ADDRESS_COLUMNS}
        if len(rows):
            res = geocoder.geocode(chunk.cells(columns.address_column, rows))
            x[rows], y[rows] = res.lng, res.lat
            lost = ~np.isfinite(res.lng)
            status[rows[lost]] = np.where(res.review[lost], _NEEDS_REVIEW, _NOT_GEOCODED)
            reason[rows[lost]] = res.reason[lost]
            for col, val in (("match_level", res.level), ("match_score", res.score),
                             ("matched_entry", res.entry), ("candidates", res.candidates)):
                matches[col][rows] = val
    half = (has_x != has_y) & (status == _UNSET)
    status[half] = _INVALID
    reason[half] = f"only one of {columns.lng}/{columns.lat} is given"
    if columns.address_column is None:
        missing = ~has_x & ~has_y & (status == _UNSET)
        status[missing] = _INVALID
        reason[missing] = f"{columns.lng}/{columns.lat} missing"
    if columns.crs_column is None and columns.crs is not None and not geocoded.any():
        # one system for every row: no per-row names to build and group
        rows = np.flatnonzero(status == _UNSET)
        check.add(x[rows], y[rows], normalize_crs(columns.crs))
        x, y = _to_wgs84_checked(x, y, normalize_crs(columns.crs), rows, status, reason)
        return replace(_assign_wgs84(index, x, y, status, reason), matches=matches)
    # geocoders answer in WGS84; given coordinates are in the row's system
    crs = _row_crs(chunk, columns, status, reason, geocoded)
    crs[geocoded] = "wgs84"
    given = np.flatnonzero((status == _UNSET) & ~geocoded)
    check.add(x[given], y[given], crs[given])
    for name in pd.unique(crs[status == _UNSET]):
        rows = np.flatnonzero((crs == name) & (status == _UNSET))
        x, y = _to_wgs84_checked(x, y, name, rows, status, reason)
    return replace(_assign_wgs84(index, x, y, status, reason), matches=matches)


def _row_crs(chunk: _Chunk, columns: Columns, status: np.ndarray, reason: np.ndarray,
             geocoded: np.ndarray) -> np.ndarray:
    """Canonical CRS name per row; rows naming an unknown system, or none when there is no
    default, become invalid (unless their coordinates came from the geocoder, which answers
    in WGS84)."""
    default = None if columns.crs is None else normalize_crs(columns.crs)
    out = np.full(chunk.n, default, dtype=object)
    if columns.crs_column is None:
        return out
    codes, names = chunk.labels(columns.crs_column)
    for code, name in enumerate(names):
        rows = codes == code
        if not name:
            if default is None:
                sel = rows & (status == _UNSET) & ~geocoded
                status[sel] = _INVALID
                reason[sel] = (f"{columns.crs_column} is blank and no default crs is given; "
                               "name the row's system")
            continue
        try:
            out[rows] = normalize_crs(name)
        except InvalidInputError as exc:
            sel = rows & (status == _UNSET) & ~geocoded
            status[sel] = _INVALID
            reason[sel] = f"{columns.crs_column}: {exc}"
    return out


# -------------------------------------------------------------------------------------------
# Files: Arrow from end to end
# -------------------------------------------------------------------------------------------


def _format(path: Path, what: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(
            f"{what} {path}: unknown file type {path.suffix!r}; use .csv or .parquet"
        )
    return fmt


def _read_chunks(path: Path, chunk_size: int, encoding: str
                 ) -> tuple[Iterator[pa.Table], pa.Schema, int | None]:
    """Tables of ``chunk_size`` rows (the last one shorter; an empty input gives one empty
    table, so its schema still reaches the output), their schema, and the row count when
    the format knows it up front."""
    if _format(path, "input") == "csv":
        read, convert = csv_options(path, encoding, STREAM_BLOCK_BYTES)
        reader = pacsv.open_csv(path, read_options=read, convert_options=convert)
        return _rebatch(reader, reader.schema, chunk_size), reader.schema, None
    # without pre-buffering: with it Arrow holds far more of the file than the chunk it
    # reads (peak memory grew with the file: 1.5 GB at 50 M rows)
    pf = pq.ParquetFile(path, pre_buffer=False)
    batches = pf.iter_batches(batch_size=chunk_size)
    schema = pf.schema_arrow
    return _rebatch(batches, schema, chunk_size), schema, pf.metadata.num_rows


def _rebatch(batches: Iterable[pa.RecordBatch], schema: pa.Schema, size: int
             ) -> Iterator[pa.Table]:
    """Record batches regrouped into tables of exactly ``size`` rows (the last shorter),
    without copying: tables are slices over the readers' buffers."""
    pending: list[pa.RecordBatch] = []
    rows, sent = 0, False
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, size)
            sent = True
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows or not sent:
        yield pa.Table.from_batches(pending, schema)


def _read_ahead(chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``chunks``, the next one read on a thread of its own while the caller assigns the
    current one (Arrow parses and decodes without the GIL, so the two share the cores). One
    chunk ahead, no more: memory stays flat. Errors of the reader come out of ``next``."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="territory-read") as pool:
        ahead = pool.submit(next, chunks, None)
        while (chunk := ahead.result()) is not None:
            ahead = pool.submit(next, chunks, None)
            yield chunk


def _bitmap(valid: np.ndarray) -> pa.Buffer | None:
    """An Arrow validity bitmap of a boolean mask (None: every entry valid)."""
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


@dataclass(frozen=True)
class _GridCodes:
    """Unit position → code in a dictionary of distinct ids, per id column: the output's
    grid ids are dictionary-encoded, a few bytes a row and no string built per row; and the
    plan that assigned the rows (:data:`PLAN_COLUMNS`)."""

    codes: dict[str, tuple[np.ndarray, pa.Array]]
    plan_id: str
    plan_version: int

    @classmethod
    def of(cls, index: AssignmentIndex) -> _GridCodes:
        codes = {}
        for name, ids in (("sub_grid_id", index.sub_grid_ids),
                          ("main_grid_id", index.main_grid_ids),
                          ("branch_id", index.branch_ids)):
            code, distinct = pd.factorize(ids)
            # position -1 (no unit) picks the trailing 0: a valid index under a null slot
            codes[name] = (np.append(code.astype(np.int32), np.int32(0)),
                           pa.array(list(distinct), type=pa.string()))
        return cls(codes, str(index.plan.plan_id), int(index.plan.version))

    def ids(self, name: str, unit: np.ndarray, valid: pa.Buffer | None) -> pa.DictionaryArray:
        """The ids of ``name`` at unit positions ``unit``, null where ``valid`` says (where
        ``unit`` is -1)."""
        code, dictionary = self.codes[name]
        pos = code[unit]
        indices = pa.Array.from_buffers(pa.int32(), len(pos), [valid, pa.py_buffer(pos)])
        return pa.DictionaryArray.from_arrays(indices, dictionary)

    def metadata(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` with the plan named in its metadata too (Parquet keeps it), beside
        whatever metadata the input had."""
        return schema.with_metadata({**(schema.metadata or {}),
                                     b"territory.plan_id": self.plan_id.encode(),
                                     b"territory.plan_version": str(self.plan_version).encode()})

    def append(self, table: pa.Table, res: Assignment) -> pa.Table:
        """``table`` with the :data:`OUTPUT_COLUMNS` of ``res`` appended, then the
        :data:`ADDRESS_COLUMNS` when matched and the :data:`PLAN_COLUMNS`."""
        n = table.num_rows
        placed = _bitmap(res.unit >= 0)
        reasons = res.code >= _INVALID  # the only rows with a reason
        added = {
            "sub_grid_id": self.ids("sub_grid_id", res.unit, placed),
            "main_grid_id": self.ids("main_grid_id", res.unit, placed),
            "branch_id": self.ids("branch_id", res.unit, placed),
            "status": pa.DictionaryArray.from_arrays(pa.array(res.code), _STATUS_DICTIONARY),
            "nearest_grid_id": self.ids("sub_grid_id", res.nearest_unit,
                                        _bitmap(res.nearest_unit >= 0)),
            "distance_m": pa.array(res.distance_m, from_pandas=True),  # NaN: null
            "reason": (pa.array(res.reason, type=pa.string()) if reasons.any()
                       else pa.nulls(n, pa.string())),
        }
        columns = [*table.columns, *(added[name] for name in OUTPUT_COLUMNS)]
        names = [*table.column_names, *OUTPUT_COLUMNS]
        for name, values in (res.matches or {}).items():
            kind = pa.float64() if name == "match_score" else pa.string()
            columns.append(pa.array(values, type=kind, from_pandas=True))
            names.append(name)
        columns += [pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)),
                                                   pa.array([self.plan_id])),
                    pa.array(np.full(n, self.plan_version, dtype=np.int32))]
        names += PLAN_COLUMNS
        return pa.Table.from_arrays(columns, names=names, metadata=table.schema.metadata)


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """Parquet dictionary pages for text (grid ids, statuses, reasons) and the plan version
    (one value), plain encoding and min/max statistics for the rest: string statistics and
    dictionary attempts on floats would double the cost of writing."""
    coded = [f.name for f in schema if pa.types.is_dictionary(f.type)
             or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
             or f.name in PLAN_COLUMNS]
    rest = [f.name for f in schema if f.name not in coded]
    return pq.ParquetWriter(path, schema, use_dictionary=coded, write_statistics=rest)


#: Arrow formats CSV rows in batches of 1 024 by default; 65 536 costs 20 % less CPU.
_CSV_WRITE = pacsv.WriteOptions(batch_size=1 << 16)


class _Writer:
    """Appends tables to a CSV or a Parquet file (schema fixed at the start) on a thread of
    its own: Arrow encodes and writes without the GIL, so chunk k is written while chunk
    k + 1 is assigned; at most one table waits, so memory stays flat."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.path = path
        self._out = (pacsv.CSVWriter(path, schema, write_options=_CSV_WRITE) if fmt == "csv"
                     else _parquet_writer(path, schema))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="territory-write")
        self._pending: Future[None] | None = None

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except pa.ArrowException as exc:  # not the input's fault: say so
                raise OSError(f"output {self.path}: cannot write it ({exc})") from None

    def write(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._pool.submit(self._out.write_table, table)

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            self._out.close()


def assign_file(index: AssignmentIndex, src: str | Path, dst: str | Path, *,
                columns: Columns = Columns(), geocoder: Geocoder | None = None,
                chunk_size: int = CHUNK_ROWS, progress: Progress | None = None,
                on_warning: Warn | None = None,
                encoding: str = DEFAULT_ENCODING) -> dict[str, int]:
    """Stream ``src`` (CSV, text in ``encoding``, or Parquet) into ``dst`` with Arrow.

    Every row and column of the input comes out, in order and of its own type (a CSV's
    cells as their text), with :data:`OUTPUT_COLUMNS` added (and :data:`ADDRESS_COLUMNS`
    with an address column): grid ids and ``status`` dictionary-encoded, ``distance_m``
    float64, ``reason`` text; then :data:`PLAN_COLUMNS`, the plan that assigned the rows,
    which a Parquet output also names in its schema metadata (``territory.plan_id``,
    ``territory.plan_version``). The rules are those of :func:`assign_frame`, without a
    pandas round trip: coordinates are read as numpy arrays of the Arrow columns and the
    results appended to the input's record batches. Three stages overlap, each on a thread
    of its own: reading chunk k + 1, assigning chunk k, writing chunk k - 1; memory holds a
    few chunks whatever the file's size; ``dst`` appears only once complete.
    ``progress(rows_done, total_or_None)`` is called after each chunk. Returns the number
    of rows per status. The whole file is checked for a mistaken ``columns.crs``, on a
    sample drawn across every chunk.
    """
    check = Sample()
    src, dst = Path(src), Path(dst)
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size={chunk_size}: give a positive number of rows")
    if not src.exists():
        raise InvalidInputError(f"input {src}: no such file")
    codec(encoding)  # an unknown encoding fails before any output is started
    out_fmt = _format(dst, "output")
    counts = np.zeros(len(STATUSES), dtype=np.int64)
    grids = _GridCodes.of(index)
    done = 0
    try:
        chunks, schema, total = _read_chunks(src, chunk_size, encoding)
        clash = [c for c in PLAN_COLUMNS if c in schema.names]
        if clash:
            raise InvalidInputError(f"input {src} already has column(s) {clash} that "
                                    "assignment adds; rename them first")
        with atomic_path(dst) as tmp, closing(_read_ahead(chunks)) as ahead:
            writer: _Writer | None = None
            try:
                for chunk in ahead:
                    res = _assign_chunk(index, _ArrowChunk(chunk), columns, geocoder, check)
                    table = grids.append(chunk, res)
                    if writer is None:
                        writer = _Writer(tmp, out_fmt, grids.metadata(table.schema))
                    writer.write(table)
                    counts += np.bincount(res.code, minlength=len(STATUSES))
                    done += chunk.num_rows
                    if progress is not None:
                        progress(done, total)
            finally:
                if writer is not None:
                    writer.close()
    except UnicodeDecodeError:
        raise decode_error(src, encoding, "input") from None
    except pa.ArrowException as exc:
        if "UTF8" in str(exc) or "UTF-8" in str(exc):
            raise decode_error(src, encoding, "input") from None
        raise InvalidInputError(
            f"input {src}: cannot read it as {_format(src, 'input')} after row {done} "
            f"({exc}); check the file is complete and well formed"
        ) from None
    report(check.fits(populated_units(index)), on_warning)
    return dict(zip(STATUSES, counts.tolist(), strict=True))
