"""The service's side of customer assignment: indexes on disk, in memory, and under a lock.

The engine is :mod:`territory.assign` (statuses, CRS conversion, file streaming) over
:class:`territory.assign_index.AssignmentIndex`. The service adds four things:

* the index is written beside the plan when the plan job stores it (``plan.gpkg.index``)
  and rebuilt, atomically, if a saved one cannot be read by this version;
* a bounded LRU of open indexes, so a request costs a lookup, not a file read; their arrays
  are memory-mapped, so the service's worker processes share one copy;
* the parts of a single lookup's answer made once per index (:meth:`LockedIndex.unit_json`);
* a lock per index around its queries: the index resolves points near unit boundaries with
  GEOS prepared geometries, which are not thread-safe (libgeos/geos#825), and the service
  answers from several threads. The lock is taken per :data:`LOCK_CHUNK` points, whatever
  the size of the batch, so a single lookup waits for at most one chunk of a long batch,
  not for the whole of it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from api.store import PLAN_FILE, PlanStore
from territory.assign_index import AssignmentIndex, index_path
from territory.errors import InvalidInputError
from territory.plan import Plan

log = logging.getLogger(__name__)


#: Points per hold of an index's lock: a few milliseconds of work.
LOCK_CHUNK = 8192
#: The members naming a point's owner, in the order of :class:`api.schemas.Assignment`.
UNIT_FIELDS = ("sub_grid_id", "main_grid_id", "branch_id")


class LockedIndex(AssignmentIndex):
    """An assignment index whose queries hold a lock, chunk by chunk (see the module
    docstring)."""

    def __init__(self, plan: Plan, arrays) -> None:
        super().__init__(plan, arrays)
        self._lock = threading.Lock()
        ids = [self.sub_grid_ids, self.main_grid_ids, self.branch_ids]
        #: per unit (and -1: none), its ids as JSON members, made once rather than per
        #: single lookup
        self._unit_json = [",".join(f'"{name}":{json.dumps(v, ensure_ascii=False)}'
                                    for name, v in zip(UNIT_FIELDS, row, strict=True))
                           for row in zip(*ids, strict=True)]
        self._unit_json.append(",".join(f'"{name}":null' for name in UNIT_FIELDS))
        self._sub_grid_ids = [*map(str, self.sub_grid_ids), None]

    def unit_json(self, unit: int) -> str:
        """``"sub_grid_id":…,"main_grid_id":…,"branch_id":…`` of a unit position (-1:
        nulls)."""
        return self._unit_json[unit]

    def sub_grid_id(self, unit: int) -> str | None:
        """The sub-grid id of a unit position (-1: None)."""
        return self._sub_grid_ids[unit]

    def _chunks(self, query, lng: np.ndarray, lat: np.ndarray) -> list:
        lng, lat = np.asarray(lng), np.asarray(lat)
        out = []
        for i in range(0, max(len(lng), 1), LOCK_CHUNK):
            with self._lock:
                out.append(query(lng[i:i + LOCK_CHUNK], lat[i:i + LOCK_CHUNK]))
        return out

    def locate(self, lng: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return np.concatenate(self._chunks(super().locate, lng, lat))

    def locate_one(self, lng: float, lat: float) -> int:
        with self._lock:
            return super().locate_one(lng, lat)

    def nearest_one(self, lng: float, lat: float) -> tuple[int, float]:
        with self._lock:
            return super().nearest_one(lng, lat)

    def nearest(self, lng: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        units, distances = zip(*self._chunks(super().nearest, lng, lat), strict=True)
        return np.concatenate(units), np.concatenate(distances)


def write_index(plan: Plan, folder: Path) -> Path:
    """Build the plan's index and save it beside ``folder/plan.gpkg`` (atomic save)."""
    return AssignmentIndex.build(plan).save(index_path(folder / PLAN_FILE))


def load_index(folder: Path) -> LockedIndex:
    """Open the index beside ``folder/plan.gpkg``; rebuild it if missing or unreadable."""
    plan_path = folder / PLAN_FILE
    plan = Plan.load(plan_path)
    path = index_path(plan_path)
    try:
        return LockedIndex.load(path, plan)
    except InvalidInputError as exc:
        log.warning("rebuilding the assignment index of %s: %s", plan_path, exc)
    index = LockedIndex.build(plan)
    index.save(path)
    return index


class Indexes:
    """Open indexes by plan id, the least recently used dropped beyond ``size``."""

    def __init__(self, store: PlanStore, size: int) -> None:
        self.store = store
        self.size = size
        self._open: OrderedDict[str, LockedIndex] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, plan_id: str) -> LockedIndex | None:
        with self._lock:
            index = self._open.get(plan_id)
            if index is not None:
                self._open.move_to_end(plan_id)
            return index

    def load(self, plan_id: str) -> LockedIndex:
        """The plan's index, opened from disk when not in memory (blocking)."""
        index = self.cached(plan_id)
        if index is not None:
            return index
        index = load_index(self.store.plan_dir(plan_id))
        with self._lock:
            self._open[plan_id] = index
            while len(self._open) > self.size:
                self._open.popitem(last=False)
        return index

    async def get(self, plan_id: str) -> LockedIndex:
        """For async routes: from memory at once, or opened in a worker thread."""
        return self.cached(plan_id) or await run_in_threadpool(self.load, plan_id)

    def forget(self, plan_id: str) -> None:
        with self._lock:
            self._open.pop(plan_id, None)
