"""Service settings: environment variables (``TERRITORY_*``) over an optional config file.

The service reads nothing at import time; :func:`api.main.create_app` builds a
:class:`Settings` (or takes one from a test) and hands it to every dependency, so two apps
with different data directories can live in one process.

API keys come from ``TERRITORY_API_KEYS`` (``key1:planner,key2:operations+viewer``) or from
the ``api_keys`` table of the file named by ``TERRITORY_CONFIG`` (JSON or TOML)::

    data_dir = "/var/lib/territory"
    [api_keys]
    "k-3f9c..." = "planner"
    "k-77ab..." = ["operations", "viewer"]

Point coordinates have no default system: a request names its ``crs``, or the operator
configures one per service area (``TERRITORY_POINTS_CRS="xiamen:gcj02,shenzhen:wgs84"``, or a
``[points_crs]`` table in the file), used by that area's requests that give none.

Environment variables override the file; the file overrides the defaults.
"""

from __future__ import annotations

import json
import os
import tomllib
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


def parse_api_keys(value: object) -> dict[str, frozenset[Role]]:
    """``"k1:planner,k2:operations+viewer"`` or a mapping ``key -> role | [roles]``.

    A key given twice is refused rather than merged, because a typo in a long key list
    would otherwise silently widen someone's rights.
    """
    if isinstance(value, str):
        pairs = []
        for item in filter(None, (s.strip() for s in value.split(","))):
            key, sep, roles = item.rpartition(":")
            if not sep or not key:
                raise ValueError(f"API key entry {item!r}: write KEY:ROLE (ROLE one of "
                                 f"{[r.value for r in Role]}, several joined with '+')")
            pairs.append((key.strip(), roles.split("+")))
    elif isinstance(value, dict):
        pairs = [(k, [v] if isinstance(v, str) else list(v)) for k, v in value.items()]
    else:
        raise ValueError("api_keys: give 'KEY:ROLE,KEY:ROLE' or a table KEY = ROLE")
    out: dict[str, frozenset[Role]] = {}
    for key, roles in pairs:
        if key in out:
            raise ValueError(f"API key ending …{key[-4:]} is listed twice; list it once with "
                             "all its roles joined by '+'")
        try:
            out[key] = frozenset(Role(r.strip()) for r in roles)
        except ValueError:
            raise ValueError(f"API key ending …{key[-4:]}: roles {roles} must be among "
                             f"{[r.value for r in Role]}") from None
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
    api_keys: Annotated[dict[str, frozenset[Role]], NoDecode] = Field(
        default_factory=dict, repr=False,
        description="KEY:ROLE[+ROLE],... or a table in the config file")
    max_request_bytes: int = Field(256 * 2**20, gt=0, description="Largest request body")
    max_batch_points: int = Field(1_000_000, gt=0, description="Most points in one batch")
    max_running_jobs: int = Field(1, gt=0, description="Plan jobs solved at the same time")
    max_pending_jobs: int = Field(8, gt=0, description="Queued + running jobs before 429")
    solver_workers: int = Field(2, gt=0, description="Worker processes inside one plan job")
    index_cache_size: int = Field(8, gt=0, description="Assignment indexes kept in memory")
    timezone: str = Field("Asia/Shanghai", description="Zone of effective dates and `as_of`")
    points_crs: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Service area -> CRS of its point coordinates, for requests naming none")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> dict[str, frozenset[Role]]:
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
