"""Batches of points: read as they stream in, worked on beside the event loop, bounded.

A JSON batch may hold a million points (tens of MB). Three rules keep one from hurting the
others:

* **Counted while it streams.** The body is fed to an incremental JSON parser (ijson) a
  piece at a time and each piece's points are validated and counted at once, so a batch over
  ``max_batch_points`` is refused (413) as soon as it passes the limit, not after the whole
  upload was read and parsed. Memory holds the points as arrays, never the whole text.
* **Off the event loop.** Parsing, assigning and serialising run in worker threads, in
  pieces short enough (:data:`PARSE_BYTES`, the index's lock per chunk, see
  :mod:`api.assignment`) that single lookups get the interpreter between them.
* **Bounded.** At most ``max_concurrent_batches`` batches (JSON or file) are worked on at
  once; the others wait for a slot, without their bodies being read, for up to
  ``batch_wait_seconds``, then get 503 with ``Retry-After``. Waiting first is friendlier to
  a nightly job than an immediate refusal; the bound keeps a flood from queueing forever.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
import ijson
import numpy as np
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from api.problems import CLOSE, ProblemError, field_problem, too_large
from api.schemas import PointIn
from territory.assign import Assignment

T = TypeVar("T")

#: Bytes of JSON handed to a worker thread at a time.
PARSE_BYTES = 256 * 1024
#: Bytes per parser call, and rows per serialiser call: each call of a C parser or of
#: pandas holds the interpreter until it returns, so single lookups wait at most for one
#: such call (milliseconds), not for a whole batch (seconds).
PARSE_SLICE = 32 * 1024
SERIALISE_ROWS = 2000
POINTS = TypeAdapter(list[PointIn])
#: The request body of the JSON batch routes, for the OpenAPI document (the routes read the
#: body themselves, so FastAPI cannot derive it).
POINTS_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "array", "items": TypeAdapter(PointIn).json_schema(),
                                    "description": "Points, answered in the same order"}}}}}
_JSON_SPACE = b" \t\r\n"


@dataclass(frozen=True)
class Points:
    """A validated batch as columns: ids as sent, coordinates as floats (null → NaN)."""

    ids: list[str | int | None]
    lng: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class _PointReader:
    """Feeds an incremental parser piece by piece; validates and counts each piece's points.

    It is also the parser's target (``send`` receives each array item).
    """

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.parser = ijson.items_coro(self, "item", use_float=True)
        self.parsed: list[Any] = []  # items of the current piece, not yet validated
        self.ids: list[str | int | None] = []
        self.lng: list[np.ndarray] = []
        self.lat: list[np.ndarray] = []
        self.started = False

    def send(self, item: Any) -> None:
        self.parsed.append(item)

    def feed(self, data: bytes, last: bool) -> None:
        if not self.started and data.lstrip(_JSON_SPACE):
            self.started = True
            if not data.lstrip(_JSON_SPACE).startswith(b"["):
                raise _not_json("the body is not a JSON array")
        try:
            for i in range(0, len(data), PARSE_SLICE):
                self.parser.send(data[i:i + PARSE_SLICE])
                self._take()
            if last:
                if not self.started:
                    raise _not_json("the body is empty")
                self.parser.close()
                self._take()
        except ijson.JSONError as exc:
            raise _not_json(f"the body is not valid JSON ({str(exc).splitlines()[0]})"
                            ) from None

    def _take(self) -> None:
        start = len(self.ids)
        if start + len(self.parsed) > self.max_points:
            raise too_large(f"more than {self.max_points} points; at most "
                            f"{self.max_points} per batch", "body",
                            f"send at most {self.max_points} points per request, or upload "
                            "a file to /assign/file", unread=True)
        try:
            points = POINTS.validate_python(self.parsed)
        except ValidationError as exc:
            raise RequestValidationError([
                {**e, "loc": ("body", start + e["loc"][0], *e["loc"][1:])}
                for e in exc.errors(include_url=False)]) from None
        self.parsed = []
        self.ids.extend(p.get("id") for p in points)
        for name, columns in (("lng", self.lng), ("lat", self.lat)):
            columns.append(np.array([p[name] for p in points], dtype=float))

    def points(self) -> Points:
        return Points(self.ids, np.concatenate([np.empty(0), *self.lng]),
                      np.concatenate([np.empty(0), *self.lat]))


def records_json(result: Assignment, ids: list[str | int | None]) -> str:
    """The batch's rows (``id`` then :data:`territory.assign.OUTPUT_COLUMNS`) as a JSON
    array, serialised by pandas :data:`SERIALISE_ROWS` rows at a time."""
    arrays = {f.name: getattr(result, f.name) for f in fields(result)
              if isinstance(getattr(result, f.name), np.ndarray)}
    parts = []
    for i in range(0, len(ids), SERIALISE_ROWS):
        rows = slice(i, i + SERIALISE_ROWS)
        frame = replace(result, **{k: a[rows] for k, a in arrays.items()}).frame()
        frame.insert(0, "id", ids[rows])
        parts.append(frame.to_json(orient="records", force_ascii=False)[1:-1])
    return f"[{','.join(parts)}]"


def _not_json(message: str) -> ProblemError:
    return field_problem("body", message, "send a JSON array of {id, lng, lat} objects "
                         "(NaN and Infinity are not JSON; null is)")


class BatchGate:
    """At most ``slots`` batches at once; a batch waits ``wait_s`` for a slot, then 503."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.wait_s = wait_s
        self._slots = anyio.Semaphore(slots)
        # its own threads: batches never take the pool that single lookups' index loads use
        self._threads = anyio.CapacityLimiter(slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        acquired = False
        with anyio.move_on_after(self.wait_s):
            await self._slots.acquire()
            acquired = True
        if not acquired:
            raise ProblemError(503, f"{self._threads.total_tokens:g} batches are being "
                                    f"worked on and none finished within {self.wait_s:g} s; "
                                    "retry later", kind="busy", title="Too many batches",
                               headers={"Retry-After": str(math.ceil(self.wait_s)), **CLOSE})
        try:
            yield
        finally:
            self._slots.release()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the batch threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)

    async def read_points(self, request: Request, max_points: int) -> Points:
        """The request's JSON array of points, parsed and counted piece by piece."""
        reader = _PointReader(max_points)
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= PARSE_BYTES:
                await self.run(reader.feed, bytes(pending), False)
                pending.clear()
        await self.run(reader.feed, bytes(pending), True)
        return reader.points()


async def get_gate(request: Request) -> BatchGate:
    return request.app.state.batches


GateDep = Annotated[BatchGate, Depends(get_gate)]
