"""The nightly change report: whose grid changed since the previous run, and why.

Operations re-assign every customer each night; the CRM needs only the customers whose grid
changed, appeared or disappeared, each with a reason it can act on:

* ``new_customer`` / ``customer_gone`` — the id is only in tonight's / last night's file;
* ``newly_geocoded`` — last night the row could not be placed (``invalid`` or
  ``not_geocoded``), tonight it is (``ok`` or ``outside``);
* ``no_longer_geocoded`` — the reverse;
* ``moved`` — the coordinates or the address changed, and with them the grid;
* ``plan_changed`` — same coordinates and address, another grid, and another plan assigned
  it: the plan id or version recorded in the row (:data:`territory.assign.PLAN_COLUMNS`)
  differs between the two runs;
* ``input_changed`` — same coordinates and address, another grid, yet the same plan: what
  else the assignment read changed (the row's CRS, or the gazetteer that geocoded it).

The two files are assigned outputs (:func:`territory.assign.assign_file`, CSV or Parquet,
either in any combination) joined on a customer id column. Only the columns the report needs
are read, with Arrow; the join is one vectorised pandas merge. Outputs written before the
plan was recorded in them have no plan columns: between two such files, or one and a newer
file, a change in place is taken for ``plan_changed``, the only cause the report could infer
then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from territory.assign import PLAN_COLUMNS
from territory.atomic import atomic_path
from territory.errors import InvalidInputError
from territory.tables import DEFAULT_ENCODING, codec, csv_options, decode_error

#: The reasons, in the order a CRM loader is told them.
REASONS = ("new_customer", "customer_gone", "newly_geocoded", "no_longer_geocoded", "moved",
           "plan_changed", "input_changed")
_GRID = ("sub_grid_id", "main_grid_id", "branch_id", "status")
_PLACED = ("ok", "outside")  # the row had usable coordinates


@dataclass(frozen=True)
class ChangeColumns:
    """Which columns identify a customer and locate it (the assign run's input columns)."""

    id: str = "customer_id"
    lng: str = "lng"
    lat: str = "lat"
    address: str | None = None


def _read(path: Path, columns: list[str], encoding: str, what: str,
          optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Only ``columns`` (and those of ``optional`` the file has) of an assigned CSV or
    Parquet file, every cell as text (a CSV's cells as written, a Parquet's cast), nulls as
    None."""
    wanted = [*columns, *optional]
    if not path.exists():
        raise InvalidInputError(f"{what} {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            read, convert = csv_options(path, encoding)
            have = convert.column_types
            names = [c for c in wanted if c in have]
            convert.include_columns = names
            table = pacsv.read_csv(path, read_options=read, convert_options=convert)
        elif suffix in (".parquet", ".pq"):
            have = pq.read_schema(path).names
            table = pq.read_table(path, columns=[c for c in wanted if c in have])
        else:
            raise InvalidInputError(f"{what} {path}: unknown file type {suffix!r}; use .csv "
                                    "or .parquet")
    except UnicodeDecodeError:
        raise decode_error(path, encoding, what) from None
    except pa.ArrowException as exc:
        if "UTF8" in str(exc):
            raise decode_error(path, encoding, what) from None
        raise InvalidInputError(f"{what} {path}: cannot read it ({exc})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InvalidInputError(
            f"{what} {path} has no column(s) {missing}: it must be an assigned file "
            f"(territory assign output); name the id with `id_column` (columns found: "
            f"{list(have)[:20]})"
        )
    cells = {}
    for c in table.column_names:
        col = table.column(c)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cells[c] = pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)
    return pd.DataFrame(cells)


def _unique_ids(df: pd.DataFrame, id_column: str, what: str, path: Path) -> None:
    blank = df[id_column].isna() | (df[id_column].str.strip() == "")
    if blank.any():
        rows = np.flatnonzero(blank.to_numpy())[:5].tolist()
        raise InvalidInputError(f"{what} {path}: {int(blank.sum())} row(s) without a "
                                f"{id_column!r} (rows {rows}); every customer needs an id")
    dup = df[id_column].duplicated(keep=False)
    if dup.any():
        ids = pd.unique(df[id_column][dup])[:5].tolist()
        raise InvalidInputError(f"{what} {path}: {id_column!r} is not unique ({ids} appear "
                                "more than once); give the column that identifies a customer")


def _same_place(a: pd.Series, b: pd.Series, numeric: bool) -> np.ndarray:
    """Cell-wise "unchanged": numbers compared as numbers (114.10 is 114.1, blank is
    blank), text after stripping spaces."""
    if numeric:
        x = pd.to_numeric(a, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        y = pd.to_numeric(b, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        # two different words both read as NaN: compare their text
        text = np.isnan(x) & np.isnan(y)
        same[text] = (a.fillna("").str.strip() == b.fillna("").str.strip()).to_numpy()[text]
        return same
    return (a.fillna("").str.strip() == b.fillna("").str.strip()).to_numpy()


def changes(previous: str | Path, current: str | Path, *,
            columns: ChangeColumns = ChangeColumns(),
            encoding: str = DEFAULT_ENCODING) -> pd.DataFrame:
    """The customers whose sub-grid changed between two assigned files, with the reason.

    Returns one row per changed customer: ``change`` (``changed``, ``appeared``,
    ``disappeared``), ``reason`` (one of :data:`REASONS`), the id, and the previous and
    current ``sub_grid_id``, ``main_grid_id``, ``branch_id``, ``status``, ``plan_id`` and
    ``plan_version`` (``prev_`` for last night's; the plan blank where a file does not
    record it). Rows come in tonight's file order, the customers gone after them in last
    night's order. CSV inputs are read in ``encoding``.
    """
    previous, current = Path(previous), Path(current)
    codec(encoding)
    place = [columns.lng, columns.lat] + ([columns.address] if columns.address else [])
    need = [columns.id, *place, *_GRID]
    prev = _read(previous, need, encoding, "previous", PLAN_COLUMNS)
    cur = _read(current, need, encoding, "current", PLAN_COLUMNS)
    recorded = all(c in df for df in (prev, cur) for c in PLAN_COLUMNS)
    for df in (prev, cur):
        for c in PLAN_COLUMNS:
            if c not in df:
                df[c] = None
    _unique_ids(prev, columns.id, "previous", previous)
    _unique_ids(cur, columns.id, "current", current)
    prev["_order"] = np.arange(len(prev))
    cur["_order"] = np.arange(len(cur))
    both = cur.merge(prev, on=columns.id, how="outer", suffixes=("", "_prev"), indicator=True,
                     sort=False)
    side = both.pop("_merge").to_numpy()
    appeared, gone = side == "left_only", side == "right_only"
    grid_now = both["sub_grid_id"].fillna("").to_numpy()
    grid_then = both["sub_grid_id_prev"].fillna("").to_numpy()
    placed_now = both["status"].isin(_PLACED).to_numpy()
    placed_then = both["status_prev"].isin(_PLACED).to_numpy()
    same_place = np.ones(len(both), dtype=bool)
    for name in place:
        same_place &= _same_place(both[name], both[f"{name}_prev"], name != columns.address)
    changed = ~appeared & ~gone & (grid_now != grid_then)
    new_plan = np.ones(len(both), dtype=bool)  # not recorded: the only cause left
    if recorded:
        new_plan = np.zeros(len(both), dtype=bool)
        for c in PLAN_COLUMNS:
            new_plan |= both[c].fillna("").to_numpy() != both[f"{c}_prev"].fillna("").to_numpy()
    reason = np.select(
        [appeared, gone, changed & placed_now & ~placed_then,
         changed & ~placed_now & placed_then, changed & ~same_place, changed & new_plan,
         changed],
        list(REASONS), default="")
    keep = reason != ""
    out = both[keep]
    order = np.where(gone[keep], len(cur) + out["_order_prev"].to_numpy(dtype=float),
                     out["_order"].to_numpy(dtype=float))
    report = pd.DataFrame({
        columns.id: out[columns.id].to_numpy(),
        "change": np.select([appeared[keep], gone[keep]], ["appeared", "disappeared"],
                            default="changed"),
        "reason": reason[keep],
        **{f"prev_{c}": out[f"{c}_prev"].to_numpy() for c in (*_GRID, *PLAN_COLUMNS)},
        **{c: out[c].to_numpy() for c in (*_GRID, *PLAN_COLUMNS)},
    })
    return report.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def write_changes(report: pd.DataFrame, path: str | Path) -> Path:
    """Write the report as a UTF-8 CSV (with a byte-order mark, which CRM loaders and
    spreadsheet tools read as UTF-8), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        report.to_csv(tmp, index=False, encoding="utf-8-sig")
    return path
