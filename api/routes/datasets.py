"""Datasets a plan request can name: the shipped demo cities and files in ``datasets/``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Reader
from api.deps import StoreDep
from api.problems import ERRORS
from api.routes.plans import BOUNDARY_SUFFIXES, POINT_SUFFIXES
from api.schemas import MAX_LIMIT, DatasetFile, DatasetsPublic
from territory.boundaries import CITIES

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("", response_model=DatasetsPublic, responses=ERRORS,
            summary="Data a plan can be computed from")
def list_datasets(
    user: Reader, store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DatasetsPublic:
    """Files are put in ``datasets/`` by whoever runs the service; uploads go elsewhere."""
    root = store.datasets_dir
    kinds = {s: "boundaries" for s in BOUNDARY_SUFFIXES} | {s: "points" for s in POINT_SUFFIXES}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in kinds)
    return DatasetsPublic(
        demo_cities=list(CITIES),
        data=[DatasetFile(name=p.relative_to(root).as_posix(), kind=kinds[p.suffix.lower()],
                          size_bytes=p.stat().st_size) for p in files[offset:offset + limit]],
        count=len(files),
    )
