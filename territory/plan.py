"""The Plan: a versioned, immutable grid map.

A Plan holds the unit table (one row per unit: geometry, attributes and its ``sub_grid_id``,
``main_grid_id`` and ``branch_id``), the parameters that produced it, a fingerprint of the
data it was computed on, and a version with its parent. It saves to one GeoPackage with the
layers ``branches``, ``main_grids``, ``sub_grids`` (polygons dissolved from the units, with
``grid_id`` and ``parent_id``), ``units``, and a ``territory_plan`` table with the metadata;
loading it gives back an equal Plan.

Grid ids are readable: a branch is its area id (a district's adcode), main grids are
``{branch}-M01``…, sub-grids ``{main}-S1``….
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import shapely

from territory.atomic import atomic_path
from territory.errors import InvalidInputError
from territory.units import GRID_SIZE_DEG

LEVELS = ("branch", "main_grid", "sub_grid")
LAYER = {"branch": "branches", "main_grid": "main_grids", "sub_grid": "sub_grids"}
PARENT = {"branch": None, "main_grid": "branch", "sub_grid": "main_grid"}
_META = "territory_plan"
#: The GeoPackage's name in a plan folder (``territory plan --out``, the service's store).
PLAN_FILE = "plan.gpkg"


def plan_file(path: str | Path) -> Path:
    """The GeoPackage of a plan given as its file or as its folder, links resolved.

    Resolving once, up front, pins one version of a plan folder: a plan published meanwhile
    (see :mod:`territory.plan_folder`) cannot mix its files into what a reader opened.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    return path.resolve()


def fingerprint(units: gpd.GeoDataFrame, measures: list[str]) -> str:
    """SHA-256 over unit ids, geometries (WKB) and measure values: what the plan stands on."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, units.index)).encode())
    for wkb in shapely.to_wkb(units.geometry.values):
        h.update(wkb)
    if measures:
        h.update(pd.util.hash_pandas_object(units[measures], index=False).values.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """A three-level grid plan over units. Immutable: an edit returns a new Plan."""

    units: gpd.GeoDataFrame
    measures: list[str]
    params: dict = field(default_factory=dict)
    plan_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    version: int = 1
    parent: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    author: str = ""
    message: str = ""
    #: the ancestors' version records, oldest first (append-only: see :meth:`derive`)
    history: tuple = ()

    def __post_init__(self) -> None:
        missing = [c for c in ("sub_grid_id", "main_grid_id", "branch_id") if c not in self.units]
        if missing:
            raise InvalidInputError(f"plan units lack columns {missing}")
        if self.units.index.name != "unit_id" or not self.units.index.is_unique:
            raise InvalidInputError("plan units must be indexed by unique unit_id")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.units, self.measures))

    # -- views ----------------------------------------------------------------------------
    def column(self, level: str) -> str:
        if level not in LEVELS:
            raise InvalidInputError(f"level={level!r}: choose one of {list(LEVELS)}")
        return f"{level}_id"

    def grids(self, level: str, *, finer: gpd.GeoDataFrame | None = None) -> gpd.GeoDataFrame:
        """Polygons of one level dissolved from units, with ``grid_id``, ``parent_id``, loads.

        ``finer``: this plan's grids of the level below (what ``grids`` gives for it), to
        dissolve from instead of the units: the same land and loads in far fewer pieces (a
        200 000-unit city's main grids from its few hundred sub-grids, in a tenth of the
        time). :meth:`all_grids` gives every level so.
        """
        col = self.column(level)
        parent = PARENT[level]
        keys = [col] + ([f"{parent}_id"] if parent else [])
        agg = {m: "sum" for m in self.measures}
        agg["n_units"] = "sum"
        # a plan kept despite failing grids marks their units (see hierarchy.build_plan)
        flags = ["flag"] if "flag" in self.units else []
        if flags:
            agg["flag"] = _joined
        if finer is None:
            frame = self.units[keys + self.measures + flags + ["geometry"]].assign(n_units=1)
        else:
            # a finer grid's parent is a grid of this level, whose own parent the units know
            frame = finer.rename(columns={"parent_id": col})[
                [col, *self.measures, "n_units", *flags, "geometry"]]
            if parent:
                up = self.units.groupby(col)[f"{parent}_id"].first()
                frame = frame.assign(**{f"{parent}_id": frame[col].map(up).to_numpy()})
        # units carry vertices snapped to GRID_SIZE_DEG; a union on that grid is exact and
        # robust where clipped pieces meet whole cells mid-edge
        out = frame.dissolve(by=keys, aggfunc=agg, grid_size=GRID_SIZE_DEG).reset_index()
        out = out.rename(columns={col: "grid_id"})
        out["parent_id"] = out[f"{parent}_id"] if parent else None
        if parent:
            out = out.drop(columns=f"{parent}_id")
        cols = ["grid_id", "parent_id", "n_units", *self.measures, *flags, "geometry"]
        return out[cols].sort_values("grid_id").reset_index(drop=True)

    def all_grids(self) -> dict[str, gpd.GeoDataFrame]:
        """Every level's :meth:`grids`, each dissolved from the level below it."""
        out: dict[str, gpd.GeoDataFrame] = {}
        finer = None
        for level in reversed(LEVELS):
            out[level] = finer = self.grids(level, finer=finer)
        return {level: out[level] for level in LEVELS}

    def labels(self, level: str) -> pd.Series:
        return self.units[self.column(level)]

    def derive(self, units: gpd.GeoDataFrame, *, author: str = "", message: str = "",
               **params) -> Plan:
        """A new version of this plan over edited units (the parent is this plan).

        The parent's version record is appended to ``history``: the lineage travels with
        every file and is never rewritten.
        """
        return replace(
            self, units=units, params={**self.params, **params}, parent=self.plan_id,
            version=self.version + 1, plan_id=uuid.uuid4().hex[:12], fingerprint="",
            created=datetime.now(UTC).isoformat(timespec="seconds"), metrics={},
            author=author, message=message, history=(*self.history, self.record()),
        )

    def record(self) -> dict:
        """This version's entry in a history: who, when, why, from what."""
        return {"plan_id": self.plan_id, "version": self.version, "parent": self.parent,
                "created": self.created, "author": self.author, "message": self.message,
                "fingerprint": self.fingerprint}

    def meta(self) -> dict:
        return {
            "plan_id": self.plan_id, "version": self.version, "parent": self.parent,
            "created": self.created, "fingerprint": self.fingerprint,
            "measures": self.measures, "params": self.params, "metrics": self.metrics,
            "author": self.author, "message": self.message, "history": list(self.history),
        }

    # -- storage --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the GeoPackage atomically: a crash leaves any previous file intact."""
        path = Path(path)
        with atomic_path(path) as tmp:
            for level, grids in self.all_grids().items():
                pyogrio.write_dataframe(grids, tmp, layer=LAYER[level], driver="GPKG")
            pyogrio.write_dataframe(self.units.reset_index(), tmp, layer="units", driver="GPKG")
            with sqlite3.connect(tmp) as con:
                con.execute(f"CREATE TABLE {_META} (key TEXT PRIMARY KEY, value TEXT)")
                con.executemany(
                    f"INSERT INTO {_META} VALUES (?, ?)",
                    [(k, json.dumps(v, ensure_ascii=False, default=_json)) for k, v in
                     self.meta().items()],
                )
            con.close()
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan from its GeoPackage or from its folder (``territory plan --out``)."""
        if not Path(path).exists():
            raise InvalidInputError(f"{path}: no such plan file or folder")
        path = plan_file(path)
        if not path.exists():
            raise InvalidInputError(f"{path}: no such plan file")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
                meta = {k: json.loads(v) for k, v in con.execute(f"SELECT key, value FROM {_META}")}
            con.close()
            units = pyogrio.read_dataframe(path, layer="units")
        except (sqlite3.DatabaseError, pyogrio.errors.DataSourceError,
                pyogrio.errors.DataLayerError) as exc:
            raise InvalidInputError(f"{path}: not a territory plan GeoPackage ({exc})") from None
        units = units.set_index("unit_id")
        return cls(
            units=units, measures=meta["measures"], params=meta["params"],
            plan_id=meta["plan_id"], version=meta["version"], parent=meta["parent"],
            created=meta["created"], fingerprint=meta["fingerprint"], metrics=meta["metrics"],
            author=meta.get("author", ""), message=meta.get("message", ""),
            history=tuple(meta.get("history", ())),
        )


def _joined(flags: pd.Series) -> str:
    """The distinct non-empty flags of a grid's units (or of its finer grids, whose flags
    are joined already), in order."""
    return "; ".join(dict.fromkeys(part for f in flags if f for part in f.split("; ")))


def _json(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_grids(path: str | Path, level: str, *, parent_id: str | None = None,
               grid_id: str | None = None) -> gpd.GeoDataFrame:
    """One level's grids from a saved plan's GeoPackage, as written (no dissolve), in layer
    order; only those with the given ``parent_id`` and/or ``grid_id`` when given.

    The values never become SQL text: OGR's attribute filter (``where=``) is a string, so
    a value would have to be quoted into it, and a quote, a NUL byte or a ``%`` in a grid id
    would change or break the query. The GeoPackage is an SQLite database, so SQLite picks
    the matching feature ids with bound ``?`` parameters and OGR then reads only those
    features: a lookup decodes one grid's geometry, not the whole layer's.
    """
    if level not in LEVELS:
        raise InvalidInputError(f"level={level!r}: choose one of {list(LEVELS)}")
    layer = LAYER[level]
    filters = [(c, v) for c, v in (("parent_id", parent_id), ("grid_id", grid_id))
               if v is not None]
    if not filters:
        return pyogrio.read_dataframe(path, layer=layer)
    # column and layer names are this module's constants; only the values are the caller's
    where = " AND ".join(f"{column} = ?" for column, _ in filters)
    with sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True) as con:
        fids = [fid for (fid,) in con.execute(
            f'SELECT rowid FROM "{layer}" WHERE {where} ORDER BY rowid',
            [str(value) for _, value in filters])]
    con.close()
    return pyogrio.read_dataframe(path, layer=layer, fids=fids)
