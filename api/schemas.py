"""Request and response models of the HTTP API, kept apart from the library's domain types.

The library's ``Plan`` is a GeoDataFrame with parameters; a client sees a ``PlanPublic``
summary, a job it can poll, GeoJSON and assignment rows. Keeping the wire format here means a
change inside the library does not change the API by accident.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from typing_extensions import TypedDict

from territory.request import PlanRequest

MAX_LIMIT = 200
"""Largest page a list endpoint returns: a bounded answer whatever the store holds."""

SERVICE_AREA = Field(
    None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f/\\]+$",
    description="Name of the area the plan covers (defaults to the city or the boundary "
                "file's name); one plan is in force per service area",
    examples=["xiamen"],
)


def _iso_day(value: Any) -> Any:
    """Only ``YYYY-MM-DD`` (or a date): pydantic alone would also read ``0`` as 1970-01-01."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("give a date as YYYY-MM-DD")
    if not isinstance(value, str | date):
        raise ValueError("give a date as YYYY-MM-DD")
    return value


#: A calendar day, written ``YYYY-MM-DD``, in a query or a body.
Day = Annotated[date, BeforeValidator(_iso_day)]


class Strict(BaseModel):
    """Unknown fields are refused: a misspelt parameter must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# -- problems ------------------------------------------------------------------------------
class FieldError(BaseModel):
    field: str = Field(description="Dotted location of the offending value, e.g. query.lat")
    message: str
    fix: str = Field(description="What to send instead")


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


# -- plan creation -------------------------------------------------------------------------
class PlanParameters(PlanRequest):
    """The options of ``territory plan``: how many grids, what to balance, how long to try.

    The library's :class:`~territory.request.PlanRequest` itself (same fields, defaults and
    checks), so the service plans exactly what the command would."""


class TableOptions(Strict):
    """How to read a planner's boundary layer and point tables."""

    boundaries_crs: str | None = Field(None, description="CRS of the boundaries if the file "
                                                         "has none or is GCJ-02/BD-09")
    branch_column: str = Field("adcode", description="Boundary column naming each branch")
    points_crs: str | None = Field(None, description="System of the points' coordinates: "
                                   "wgs84, cgcs2000, gcj02, bd09 or EPSG:N; required unless "
                                   "the service area has one configured")
    lng_column: str = "lng"
    lat_column: str = "lat"
    encoding: str = Field("utf-8", description="Text encoding of CSV point tables, e.g. "
                                               "gb18030 or gbk")
    repair: bool = Field(False, description="Make invalid (self-intersecting) boundary "
                                            "polygons valid instead of refusing them")
    dissolve_branches: bool = Field(False, description="Merge boundary rows that share a "
                                                       "branch code into one branch")


class DemoSource(Strict):
    """A shipped city with seeded synthetic customers: the quickest way to try the service."""

    kind: Literal["demo"] = "demo"
    city: Literal["shenzhen", "xiamen"]
    customers: int = Field(300_000, ge=100, le=2_000_000, description="Synthetic customers")
    seed: int = Field(0, ge=0)


class DatasetSource(TableOptions):
    """Files already in the data directory's ``datasets/`` folder, named relative to it."""

    kind: Literal["datasets"] = "datasets"
    boundaries: str = Field(description="Polygon layer (GeoPackage, GeoJSON, zipped Shapefile)")
    customers: str = Field(description="CSV or Parquet with lng/lat")
    communities: str | None = None
    stores: str | None = None
    key_accounts: str | None = None


class PlanCreate(Strict):
    """A plan job on named data (``POST /plans``)."""

    service_area: str | None = SERVICE_AREA
    source: Annotated[DemoSource | DatasetSource, Field(discriminator="kind")]
    parameters: PlanParameters


class PlanUpload(TableOptions):
    """The ``request`` part of a multipart plan upload: everything but the files."""

    service_area: str | None = SERVICE_AREA
    parameters: PlanParameters


# -- jobs ----------------------------------------------------------------------------------
class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class JobProgress(BaseModel):
    stage: str = Field(description="What the job is doing now")
    done: int = Field(0, description="Steps finished in this stage")
    total: int | None = Field(None, description="Steps in this stage, when known")


class JobPublic(BaseModel):
    job_id: str
    status: JobStatus
    progress: JobProgress
    service_area: str
    plan_id: str | None = Field(None, description="The plan made, once done")
    error: Problem | None = Field(None, description="Why it failed")
    warnings: list[str] = Field(default_factory=list, description=(
        "What the inputs' checks found without stopping the job, e.g. points that fit the "
        "service area better in another coordinate system than the one declared"))
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    created_by: str


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# -- plans ---------------------------------------------------------------------------------
class PlanState(StrEnum):
    in_force = "in_force"
    scheduled = "scheduled"
    retired = "retired"
    draft = "draft"


class Window(BaseModel):
    """A period in which one plan is the service area's effective plan."""

    service_area: str
    plan_id: str
    version: int
    effective_from: date
    effective_to: date | None = Field(None, description="Exclusive; open when none")
    activated_at: datetime
    activated_by: str


class PlanPublic(BaseModel):
    plan_id: str
    service_area: str
    version: int = Field(description="1, 2, … in the order plans of the area were stored")
    state: PlanState
    created: datetime
    created_by: str
    job_id: str | None
    measures: list[str]
    parameters: dict[str, Any]
    n_units: int
    n_grids: dict[str, int] = Field(description="Grids per level")
    windows: list[Window] = Field(description="When this plan is or was in force")


class PlansPublic(BaseModel):
    data: list[PlanPublic]
    count: int = Field(description="Plans matching, over all pages")


class Activate(Strict):
    effective_from: Day | None = Field(
        None, description="First day in force (the service's time zone); today when omitted. "
                          "Never in the past: history already answered stays as it was")


# -- assignment ----------------------------------------------------------------------------
# A TypedDict, not a model: a batch holds up to a million points, and validating into plain
# dicts costs a third of building model instances.
class PointIn(TypedDict):
    """One point of a JSON batch."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    id: NotRequired[Annotated[str | int | None, Field(description="Your key, echoed back")]]
    lng: Annotated[float | None, Field(allow_inf_nan=False,
                                       description="Longitude (or easting in a projected "
                                                   "crs); null when the customer has no "
                                                   "coordinates")]
    lat: Annotated[float | None, Field(allow_inf_nan=False,
                                       description="Latitude (or northing in a projected crs)")]


AssignStatus = Literal["ok", "outside", "invalid", "not_geocoded", "needs_review"]


class Assignment(BaseModel):
    id: str | int | None = None
    sub_grid_id: str | None
    main_grid_id: str | None
    branch_id: str | None
    status: AssignStatus
    nearest_grid_id: str | None = Field(description="For a point outside: the closest sub-grid")
    distance_m: float | None = Field(description="Metres to that sub-grid; 0 inside")
    reason: str | None = None


class PlanRef(BaseModel):
    """Which plan answered, and the period it is in force (when it is)."""

    plan_id: str
    service_area: str
    version: int
    effective_from: date | None = None
    effective_to: date | None = None


class SingleAssignment(Assignment):
    plan: PlanRef


class BatchAssignment(BaseModel):
    plan: PlanRef
    count: int
    counts: dict[str, int] = Field(description="Rows per status")
    warnings: list[str] = Field(default_factory=list, description="Doubts about the batch, "
                                "e.g. points that fit the plan better in another crs")
    data: list[Assignment]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    plans: int


class DatasetFile(BaseModel):
    name: str = Field(description="Path relative to datasets/, as a plan request names it")
    kind: Literal["boundaries", "points"]
    size_bytes: int


class DatasetsPublic(BaseModel):
    demo_cities: list[str] = Field(description="Cities a `demo` source can use")
    data: list[DatasetFile]
    count: int
