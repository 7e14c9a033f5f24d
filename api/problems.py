"""Errors as RFC 9457 problem details, and the request-size guard that raises one.

Every error the service answers, whatever raised it (a route, FastAPI's validation, the core
library, a size limit), leaves as ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail`` and an ``errors`` list naming each offending field and its fix, so a
client needs one error parser. Unexpected exceptions become a bare 500 that says nothing about
the internals; they are logged with the request path.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import FieldError, Problem
from territory.errors import InfeasibleError, InvalidInputError, TerritoryError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:territory:problem:"


def problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    """An error answer in the OpenAPI document: a Problem, as ``application/problem+json``
    only (FastAPI's ``model=`` would also list it as ``application/json``)."""
    return {"description": description or HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


#: The error answers of the service's routes, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: problem_response(code) for code in (400, 401, 403, 404, 409, 413, 415, 422, 429)}


class ProblemError(HTTPException):
    """An HTTP error with a problem type and field errors; raise it anywhere in a request.

    It subclasses FastAPI's HTTPException so FastAPI re-raises it untouched even from inside
    body parsing (where any other exception would become a generic 400).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.body = make_problem(status, detail, kind=kind, title=title, errors=errors)

    @classmethod
    def of(cls, body: Problem) -> ProblemError:
        """Raise a problem already made (e.g. by :func:`territory_problem`)."""
        err = cls(body.status, body.detail)
        err.body = body
        return err


def make_problem(status: int, detail: str, *, kind: str | None = None,
                 title: str | None = None, errors: list[FieldError] | None = None) -> Problem:
    """A problem of type ``urn:territory:problem:<kind>`` (``about:blank`` without a kind)."""
    return Problem(type=f"{TYPE_PREFIX}{kind}" if kind else "about:blank",
                   title=title or HTTPStatus(status).phrase, status=status, detail=detail,
                   errors=errors or [])


def render(body: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=body.status, headers=headers,
                        media_type=PROBLEM_JSON)


#: The library's parameter names (named in backticks in its messages) as request fields.
API_FIELDS = {"crs": "boundaries_crs", "lng": "lng_column", "lat": "lat_column",
              "n_main": "main_grids", "n_sub": "sub_grids"}


def public_message(message: str, paths: Mapping[str, str] | None = None) -> str:
    """A library message as a client may read it: each server path in ``paths`` said by the
    name the client knows the file by, each parameter by this service's field name."""
    for path, name in sorted((paths or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    message = re.sub(r"`(\w+)`", lambda m: f"`{API_FIELDS.get(m[1], m[1])}`", message)
    # the pre-check's fixes say a count as ``n_main=3``
    return re.sub(r"\b(n_main|n_sub)=", lambda m: f"{API_FIELDS[m[1]]}=", message)


def shortfall_errors(exc: InfeasibleError, prefix: str = "parameters.") -> list[FieldError]:
    """The pre-check's refusals (``exc.shortfalls``) as field errors: the grid count of the
    level, with each fix said in request fields (``prefix`` is where the plan parameters
    are in the request)."""
    out = []
    for s in exc.shortfalls:
        f = s.shortfall
        count = "main_grids" if s.level == "branch" else "sub_grids"
        out.append(FieldError(
            field=f"{prefix}{count}", message=public_message(s.message()),
            fix=f"give at most {count}={f.max_grids}, or finer units (a smaller "
                f"{prefix}target_per_unit or a finer {prefix}resolution), or "
                f"{prefix}balance.{f.measure} of at least "
                f"{math.ceil(f.min_tolerance * 1e4) / 1e4:g}"))
    return out


def territory_problem(exc: TerritoryError, status: int = 422, *,
                      paths: Mapping[str, str] | None = None,
                      prefix: str = "parameters.") -> Problem:
    """The library's errors: infeasible balance targets and invalid input, with its message
    (server ``paths`` replaced by their public names, see :func:`public_message`); targets
    the pre-check refused name their fields (:func:`shortfall_errors`)."""
    detail = public_message(str(exc), paths)
    if isinstance(exc, InfeasibleError):
        return make_problem(status, detail, kind="infeasible",
                            title="Balance targets cannot be met",
                            errors=shortfall_errors(exc, prefix))
    if isinstance(exc, InvalidInputError):
        return make_problem(status, detail, kind="invalid-input", title="Invalid input")
    return make_problem(status, detail, kind="territory-error",
                        title="Cannot process the request")


def field_problem(field: str, message: str, fix: str, *, status: int = 422,
                  kind: str = "validation-error", title: str = "Invalid request",
                  headers: dict[str, str] | None = None) -> ProblemError:
    """A problem with one offending field: what is wrong with it and what to send instead."""
    return ProblemError(status, message, kind=kind, title=title, headers=headers,
                        errors=[FieldError(field=field, message=message, fix=fix)])


#: On an answer sent before the request's body was read to its end: the server closes the
#: connection instead of reading (and discarding) the rest of the upload.
CLOSE = {"Connection": "close"}


def too_large(detail: str, field: str, fix: str, *, unread: bool = False) -> ProblemError:
    """A 413 naming what was too large and how to split it; ``unread``: answered before the
    whole body was received."""
    return field_problem(field, detail, fix, status=413, kind="too-large",
                         title="Content too large", headers=CLOSE if unread else None)


def unsupported_file(field: str, message: str, fix: str) -> ProblemError:
    """A 415 for an upload of a type the endpoint does not read."""
    return field_problem(field, message, fix, status=415, kind="unsupported-file",
                         title="Unsupported file")


# -- FastAPI's validation errors -----------------------------------------------------------
_FIXES: dict[str, str] = {
    "missing": "add this field",
    "finite_number": "give a finite number (not NaN or Infinity)",
    "float_parsing": "give a number",
    "float_type": "give a number",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "bool_parsing": "give true or false",
    "date_from_datetime_parsing": "give a date as YYYY-MM-DD",
    "date_parsing": "give a date as YYYY-MM-DD",
    "json_invalid": "send valid JSON (NaN and Infinity are not JSON)",
    "extra_forbidden": "remove this field",
    "string_too_short": "give a non-empty value",
}
_BOUNDS = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
           "less_than_equal": "<= {le}", "too_long": "at most {max_length} items",
           "too_short": "at least {min_length} items", "string_too_long":
           "at most {max_length} characters"}


def _fix(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in _BOUNDS:
        return "give " + _BOUNDS[kind].format(**ctx)
    if kind in ("literal_error", "enum"):
        return f"use one of {ctx.get('expected', 'the allowed values')}"
    return _FIXES.get(kind, "correct this value")


def field_errors(errors: list[dict[str, Any]]) -> list[FieldError]:
    """pydantic error dicts → field errors; the location drops FastAPI's ``body`` prefix."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if len(loc) > 1 and loc[0] == "body":
            loc = loc[1:]
        out.append(FieldError(field=".".join(loc) or "body", message=err.get("msg", ""),
                              fix=_fix(err)))
    return out


# -- handlers ------------------------------------------------------------------------------
def _allowed_methods(request: Request, allow: str) -> str:
    """The methods of the documented path this request names. Starlette's own 405 lists
    only the methods of the first route whose path matched, and FastAPI has one route per
    method, so the OpenAPI paths are matched instead; the most literal ones win, as for
    ``/plans/effective`` against ``/plans/{plan_id}``."""
    matches: dict[int, set[str]] = {}
    for path, operations in request.app.openapi()["paths"].items():
        regex, _, convertors = compile_path(path)
        if regex.match(request.scope["path"]):
            matches.setdefault(len(convertors), set()).update(m.upper() for m in operations)
    methods = matches[min(matches)] if matches else {m.strip() for m in allow.split(",")}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return ", ".join(sorted(m for m in methods if m))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, ProblemError):
        return render(exc.body, exc.headers)
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}),
                   "Allow": _allowed_methods(request, (headers or {}).get("Allow", ""))}
    return render(make_problem(exc.status_code, str(exc.detail)), headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = field_errors(list(exc.errors()))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return render(make_problem(422, detail, kind="validation-error", title="Invalid request",
                               errors=errors))


async def _territory_error(request: Request, exc: TerritoryError) -> JSONResponse:
    return render(territory_problem(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return render(make_problem(500, "the service failed on this request; it has been logged",
                               kind="internal-error"))


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through the problem-details handlers."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TerritoryError, _territory_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by its Content-Length at once, else while streaming.

    Checking the declared length saves reading a huge upload only to refuse it; counting the
    streamed bytes catches chunked bodies that declare nothing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> ProblemError:
        return too_large(f"the request body is larger than {self.max_bytes} bytes",
                         "body", "split the data into smaller requests", unread=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await render(self._error().body, CLOSE)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._error()
            return message

        await self.app(scope, counted, send)
