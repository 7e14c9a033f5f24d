"""API keys and roles.

A key travels in ``X-API-Key`` or as ``Authorization: Bearer <key>``. Keys are compared as
SHA-256 digests with :func:`hmac.compare_digest` against every configured key, so the time an
answer takes says nothing about how much of a guess was right.

Roles: ``planner`` creates, activates and deletes plans; ``operations`` assigns customers;
``viewer`` reads. Planners and operations read too. A missing or unknown key is 401; a known
key without the role an endpoint needs is 403.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.problems import ProblemError
from api.settings import Role, Settings

READERS = (Role.viewer, Role.planner, Role.operations)

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                        description="An API key; or send it as `Authorization: Bearer <key>`")
_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's short name (never the key) and its roles."""

    name: str
    roles: frozenset[Role]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys, kept only as digests once the app is built."""

    def __init__(self, settings: Settings) -> None:
        self._keys = [(_digest(k), Principal(name=f"key…{k[-4:]}", roles=r))
                      for k, r in settings.api_keys.items()]

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


async def current_user(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller named by the request's key; 401 when there is none or it is unknown."""
    key = api_key or (bearer.credentials if bearer else None)
    if not key:
        raise _unauthorized("send an API key in the X-API-Key header or as "
                            "'Authorization: Bearer <key>'")
    principal = request.app.state.keys.find(key)
    if principal is None:
        raise _unauthorized("the API key is not valid; ask the service's administrator")
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets through callers holding any of ``roles``, 403 for the others."""

    async def check(user: CurrentUser) -> Principal:
        if user.roles.isdisjoint(roles):
            raise ProblemError(
                403, f"this needs the role {' or '.join(r.value for r in roles)}; the key has "
                     f"{sorted(r.value for r in user.roles)}",
                kind="forbidden", title="Not allowed")
        return user

    return check


Reader = Annotated[Principal, Depends(require_role(*READERS))]
Planner = Annotated[Principal, Depends(require_role(Role.planner))]
Operator = Annotated[Principal, Depends(require_role(Role.operations))]
