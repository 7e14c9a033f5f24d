"""API keys and roles.

A key travels in ``X-API-Key`` or as ``Authorization: Bearer <key>``. Keys are compared as
SHA-256 digests with :func:`hmac.compare_digest` against every configured key, so the time an
answer takes says nothing about how much of a guess was right.

Roles: ``planner`` creates, activates and deletes plans; ``operations`` assigns customers;
``viewer`` reads. Planners and operations read too. A missing or unknown key is 401; a known
key without the role an endpoint needs is 403.

The key is checked by :class:`AuthMiddleware`, in front of the whole app, before anything
reads the request's body or looks up what its path names: an anonymous caller can neither
make the service parse a large upload nor learn which plan ids exist (401, never 404). The
routes then only check roles (:func:`require_role`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import CLOSE, ProblemError, render
from api.settings import Role, Settings

log = logging.getLogger(__name__)

READERS = (Role.viewer, Role.planner, Role.operations)

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                        description="An API key; or send it as `Authorization: Bearer <key>`")
_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's configured name (never the key) and its roles."""

    name: str
    roles: frozenset[Role]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys, kept only as digests once the app is built."""

    def __init__(self, settings: Settings) -> None:
        self._keys = [(_digest(k), Principal(name=spec.name, roles=spec.roles))
                      for k, spec in settings.api_keys.items()]
        unnamed = sorted({spec.name for spec in settings.api_keys.values() if not spec.named})
        if unnamed:
            log.warning("API keys without a name are shown as %s in created_by and "
                        "activated_by; give each a name (NAME=KEY:ROLE)", unnamed)

    def find(self, key: str) -> Principal | None:
        digest = _digest(key)
        found = None
        for known, principal in self._keys:
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, kind="unauthorized", title="Not authenticated",
                        headers={"WWW-Authenticate": 'Bearer, ApiKey header="X-API-Key"'})


def _request_key(headers: Headers) -> str | None:
    """The key in ``X-API-Key``, else in ``Authorization: Bearer``."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class AuthMiddleware:
    """401 for a request without a valid key, before the app reads its body or its path.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would buffer the body): the
    refusal is sent without receiving a byte of the body, with ``Connection: close`` so the
    server drops the rest of an upload instead of reading it. The caller found is left in
    ``scope["state"]["principal"]`` for :func:`current_user`.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing, open_paths: Collection[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        key = _request_key(Headers(scope=scope))
        principal = self.keys.find(key) if key else None
        if principal is None:
            error = _unauthorized(
                "the API key is not valid; ask the service's administrator" if key else
                "send an API key in the X-API-Key header or as 'Authorization: Bearer <key>'")
            await render(error.body, {**(error.headers or {}), **CLOSE})(
                scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def current_user(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller :class:`AuthMiddleware` found. ``api_key`` and ``bearer`` are not read
    again: they declare the two ways to send a key in the OpenAPI document."""
    return request.state.principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def check_role(user: Principal, roles: Collection[Role]) -> Principal:
    """``user`` if it holds any of ``roles``, else a 403 naming the role needed."""
    if user.roles.isdisjoint(roles):
        raise ProblemError(
            403, f"this needs the role {' or '.join(r.value for r in roles)}; the key has "
                 f"{sorted(r.value for r in user.roles)}",
            kind="forbidden", title="Not allowed")
    return user


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets through callers holding any of ``roles``, 403 for the others."""

    async def check(user: CurrentUser) -> Principal:
        return check_role(user, roles)

    return check


def operator(request: Request) -> Principal:
    """The caller, who must hold the ``operations`` role: :data:`Operator` without
    FastAPI's dependency solving, for the single-assignment hot path. Its route declares
    :data:`KEY_SECURITY` in the OpenAPI document instead."""
    return check_role(request.scope["state"]["principal"], (Role.operations,))


#: What :func:`current_user`'s two key dependencies declare on an operation.
KEY_SECURITY = {"security": [{_api_key.scheme_name: []}, {_bearer.scheme_name: []}]}


Reader = Annotated[Principal, Depends(require_role(*READERS))]
Planner = Annotated[Principal, Depends(require_role(Role.planner))]
Operator = Annotated[Principal, Depends(require_role(Role.operations))]
