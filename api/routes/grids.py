"""The grids of a plan as GeoJSON, at each level: branches, main grids, sub-grids.

Read straight from the plan's GeoPackage layers, which the library wrote already dissolved,
so serving a map costs a file read, not a geometry union.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from api.auth import Reader
from api.deps import PlanDep, StoreDep
from api.problems import ProblemError
from api.routes.plans import ERRORS

router = APIRouter(prefix="/plans/{plan_id}/grids", tags=["grids"])

GEOJSON = "application/geo+json"
Level = Literal["branch", "main_grid", "sub_grid"]
GEOJSON_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {GEOJSON: {"schema": {"type": "object"}}},
          "description": "GeoJSON in WGS84 lon/lat; properties grid_id, parent_id, n_units "
                         "and the plan's measures"},
    **ERRORS,
}


def _geojson(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, default=_plain), media_type=GEOJSON)


def _plain(value: Any) -> Any:
    """numpy scalars in feature properties → Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@router.get("/{level}", response_class=Response, responses=GEOJSON_RESPONSE,
            summary="All grids of one level as a FeatureCollection")
def grids(
    plan: PlanDep, level: Level, user: Reader, store: StoreDep,
    parent_id: Annotated[str | None, Query(description="Only the grids inside this parent, "
                                                       "e.g. the sub-grids of one main grid")]
    = None,
) -> Response:
    frame = store.read_grids(plan.plan_id, level, parent_id=parent_id)
    return _geojson({**frame.to_geo_dict(drop_id=True), "plan_id": plan.plan_id,
                     "level": level})


@router.get("/{level}/{grid_id}", response_class=Response, responses=GEOJSON_RESPONSE,
            summary="One grid as a Feature")
def grid(
    plan: PlanDep, level: Level, user: Reader, store: StoreDep,
    grid_id: Annotated[str, Path(max_length=200)],
) -> Response:
    frame = store.read_grids(plan.plan_id, level, grid_id=grid_id)
    if frame.empty:
        raise ProblemError(404, f"plan {plan.plan_id} has no {level} {grid_id!r}",
                           kind="not-found", title="Grid not found")
    return _geojson(frame.to_geo_dict(drop_id=True)["features"][0])
