"""Service settings: environment variables (``TERRITORY_*``) over an optional config file.

The service reads nothing at import time; :func:`api.main.create_app` builds a
:class:`Settings` (or takes one from a test) and hands it to every dependency, so two apps
with different data directories can live in one process.

API keys come from ``TERRITORY_API_KEYS`` (``NAME=KEY:ROLE[+ROLE],...``, e.g.
``alice=k-3f9c...:planner,crm-nightly=k-77ab...:operations+viewer``) or from the ``api_keys``
table of the file named by ``TERRITORY_CONFIG`` (JSON or TOML)::

    data_dir = "/var/lib/territory"
    [api_keys]
    "k-3f9c..." = {name = "alice", roles = ["planner"]}
    "k-77ab..." = {name = "crm-nightly", roles = ["operations", "viewer"]}

A key's NAME is what readers see in ``created_by`` and ``activated_by``; the key itself, or
any part of it, is never shown. The older unnamed forms (``KEY:ROLE``, ``"KEY" = "ROLE"``,
``"KEY" = ["ROLE", ...]``) still work: such a key is shown as ``unnamed-<roles>`` and the
service logs a warning at start-up. A key containing ``=`` must be written with a name.

Point coordinates have no default system: a request names its ``crs``, or the operator
configures one per service area (``TERRITORY_POINTS_CRS="xiamen:gcj02,shenzhen:wgs84"``, or a
``[points_crs]`` table in the file), used by that area's requests that give none.

Environment variables override the file; the file overrides the defaults.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from territory.crs import normalize_crs
from territory.errors import InvalidInputError

ENV_PREFIX = "TERRITORY_"


class Role(StrEnum):
    """What a key may do: planners change plans, operations assign customers, viewers read."""

    planner = "planner"
    operations = "operations"
    viewer = "viewer"


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@dataclass(frozen=True)
class ApiKey:
    """What one configured key is called and what it may do."""

    name: str
    roles: frozenset[Role]
    named: bool = True


def _roles_help() -> str:
    return f"ROLE one of {[r.value for r in Role]}, several joined with '+'"


def _api_key(key: str, name: str | None, roles: list[str]) -> ApiKey:
    """Check one entry; messages show the name (or a key's last 4 characters, to the
    administrator only), never the whole key."""
    label = f"API key {name!r}" if name else f"API key ending …{key[-4:]}"
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{label}: a name is 1-64 letters, digits or '_.@-', starting with "
                         "a letter or digit")
    try:
        parsed = frozenset(Role(r.strip()) for r in roles)
    except ValueError:
        raise ValueError(f"{label}: roles {roles} must be among {[r.value for r in Role]}"
                         ) from None
    if not parsed:
        raise ValueError(f"{label} has no role; {_roles_help()}")
    if name is None:
        return ApiKey(name="unnamed-" + "+".join(sorted(r.value for r in parsed)),
                      roles=parsed, named=False)
    return ApiKey(name=name, roles=parsed)


def _split_name(item: str) -> tuple[str | None, str]:
    """``NAME=KEY`` → (NAME, KEY); a bare key (which may end in base64 ``=`` padding) →
    (None, KEY)."""
    name, sep, key = item.partition("=")
    if sep and name and key and not key.startswith("="):
        return name.strip(), key.strip()
    return None, item


def parse_api_keys(value: object) -> dict[str, ApiKey]:
    """``"alice=k1:planner,crm=k2:operations+viewer"`` (names optional), or a mapping
    ``key -> role | [roles] | {name, roles}``.

    A key or a name given twice is refused rather than merged, because a typo in a long
    key list would otherwise silently widen someone's rights or blur who did what.
    """
    entries: list[tuple[str, str | None, list[str]]] = []
    if isinstance(value, str):
        for item in filter(None, (s.strip() for s in value.split(","))):
            head, sep, roles = item.rpartition(":")
            name, key = _split_name(head.strip())
            if not sep or not key:
                raise ValueError(f"API key entry {item!r}: write NAME=KEY:ROLE ({_roles_help()})")
            entries.append((key, name, roles.split("+")))
    elif isinstance(value, dict):
        for key, spec in value.items():
            if isinstance(spec, ApiKey):
                entries.append((key, spec.name if spec.named else None,
                                [r.value for r in spec.roles]))
            elif isinstance(spec, str):
                entries.append((key, None, [spec]))
            elif isinstance(spec, list):
                entries.append((key, None, spec))
            elif isinstance(spec, dict) and set(spec) <= {"name", "roles"} and "roles" in spec:
                roles = spec["roles"]
                entries.append((key, spec.get("name"), [roles] if isinstance(roles, str)
                                else list(roles)))
            else:
                raise ValueError(f"API key ending …{key[-4:]}: give a role, a list of roles "
                                 "or {name = \"...\", roles = [\"...\"]}")
    else:
        raise ValueError("api_keys: give 'NAME=KEY:ROLE,...' or a table KEY = {name, roles}")
    out: dict[str, ApiKey] = {}
    names: set[str] = set()
    for key, name, roles in entries:
        if key in out:
            raise ValueError(f"API key ending …{key[-4:]} is listed twice; list it once with "
                             "all its roles joined by '+'")
        out[key] = spec = _api_key(key, name, roles)
        if spec.named and spec.name in names:
            raise ValueError(f"API key name {spec.name!r} is used twice; give each key its "
                             "own name")
        names.add(spec.name)
    return out


def parse_points_crs(value: object) -> dict[str, str]:
    """``"area:crs,area:crs"`` or a mapping ``area -> crs``; each crs checked and made
    canonical, so a typo fails at start-up rather than on the first request."""
    if isinstance(value, str):
        pairs = []
        for item in filter(None, (s.strip() for s in value.split(","))):
            area, sep, crs = item.partition(":")  # the crs may hold one: xiamen:EPSG:4547
            if not sep or not area.strip():
                raise ValueError(f"points_crs entry {item!r}: write SERVICE_AREA:CRS (an area "
                                 "whose name holds ':' goes in the config file's table)")
            pairs.append((area.strip(), crs.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ValueError("points_crs: give 'AREA:CRS,AREA:CRS' or a table AREA = CRS")
    out: dict[str, str] = {}
    for area, crs in pairs:
        try:
            out[str(area)] = normalize_crs(crs)
        except InvalidInputError as exc:
            raise ValueError(f"points_crs of service area {area!r}: {exc}") from None
    return out


class ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the JSON or TOML file named by ``config`` (init) or ``TERRITORY_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path or os.environ.get(f"{ENV_PREFIX}CONFIG")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        if not self.path:
            return {}
        path = Path(self.path)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise ValueError(f"TERRITORY_CONFIG {path}: cannot read it as "
                             f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({exc})"
                             ) from None
        return {k: v for k, v in data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Everything the service can be told; limits are there so one client cannot starve others."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(Path("territory-data"), description="Plan store folder")
    config: Path | None = Field(None, description="JSON or TOML file with more settings")
    api_keys: Annotated[dict[str, ApiKey], NoDecode] = Field(
        default_factory=dict, repr=False,
        description="NAME=KEY:ROLE[+ROLE],... or a table in the config file")
    max_request_bytes: int = Field(256 * 2**20, gt=0, description="Largest request body")
    max_batch_points: int = Field(1_000_000, gt=0, description="Most points in one batch")
    max_grid_layer_bytes: int = Field(64 * 2**20, gt=0, description="Largest drawn grid "
                                                                    "layer an import takes")
    max_concurrent_batches: int = Field(
        2, gt=0, description="Batches (JSON or file) assigned at the same time; the others "
                             "wait for a slot")
    batch_wait_seconds: float = Field(
        60.0, gt=0, description="How long a batch waits for a slot before a 503 with "
                                "Retry-After")
    max_running_jobs: int = Field(1, gt=0, description="Plan jobs solved at the same time")
    max_pending_jobs: int = Field(8, gt=0, description="Queued + running jobs before 429")
    solver_workers: int = Field(2, gt=0, description="Worker processes inside one plan job")
    precheck_seconds: float = Field(
        20.0, ge=0, description="How long a plan request waits for its inputs' units to be "
                                "built and checked (422 at once for impossible targets); "
                                "longer, or 0, and the job's first stage checks them")
    precheck_max_customers: int = Field(
        500_000, ge=0, description="Demo requests with more synthetic customers skip the "
                                   "check before queueing (their job checks them)")
    index_cache_size: int = Field(8, gt=0, description="Assignment indexes kept in memory")
    timezone: str = Field("Asia/Shanghai", description="Zone of effective dates and `as_of`")
    points_crs: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Service area -> CRS of its point coordinates, for requests naming none")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> dict[str, ApiKey]:
        return parse_api_keys({} if value is None else value)

    @field_validator("points_crs", mode="before")
    @classmethod
    def _parse_points_crs(cls, value: object) -> dict[str, str]:
        return parse_points_crs({} if value is None else value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs, then the environment, then the config file, then the defaults."""
        path = getattr(init_settings, "init_kwargs", {}).get("config")
        return init_settings, env_settings, ConfigFileSource(settings_cls, path)
