"""Maps of a plan: offline HTML (overview, choropleth, a grid's field map) and printable PNG/PDF.

The maps are the core library's (:mod:`territory.maps`, :mod:`territory.printmaps`); the
service adds a cache. Measuring, colouring and simplifying a city's grids takes seconds and
every map of a plan needs the same tables, so the :class:`~territory.mapdata.PlanLayers` of
the plans last asked about are kept in memory (plans are immutable: a cached table never goes
stale). A printed map is drawn once for both formats, so the PNG and PDF of one drawing are
kept too, within a byte budget: asking for ``city.pdf`` after ``city.png`` costs nothing.

Every HTML map is self-contained (:func:`territory.offline.offline_html`): Leaflet and its
plugins are inlined, so a page saved on a phone opens without coverage.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections import OrderedDict
from typing import Annotated, Any, Literal
from urllib.parse import quote

import folium
import pandas as pd
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse

from api.auth import Reader
from api.deps import PlanDep
from api.problems import ProblemError, field_problem
from api.routes.plans import ERRORS
from api.store import PlanRecord, PlanStore
from territory.errors import InvalidInputError
from territory.filenames import safe_filename
from territory.mapdata import LEVEL_NAME, PlanLayers
from territory.maps import CHOROPLETH_SCHEMES, choropleth_map, field_map, overview_map
from territory.offline import offline_html
from territory.plan import Plan
from territory.printmaps import print_city, print_grid

router = APIRouter(prefix="/plans/{plan_id}", tags=["maps"])

#: Plans whose layer tables stay in memory (a city's take some tens of MB).
LAYERS_CACHE_SIZE = 4
#: Bytes of printed maps (PNG + PDF of a drawing) kept in memory across plans.
PRINT_CACHE_BYTES = 64 * 2**20

HTML = "text/html"
PRINT_MEDIA = {"png": "image/png", "pdf": "application/pdf"}
Level = Literal["branch", "main_grid", "sub_grid"]
PrintFormat = Literal["png", "pdf"]
Paper = Literal["A4", "A3"]
Scheme = Literal[CHOROPLETH_SCHEMES]  # type: ignore[valid-type]

# The print lock: printed maps set matplotlib's (process-wide) rcParams while drawing, so two
# drawings at once could leave each other's fonts in place.
_PRINTING = threading.Lock()


class LayerCache:
    """The :class:`PlanLayers` of the plans last used (LRU) and their printed maps.

    Safe for the service's worker threads: a plan is loaded once even when several requests
    ask for it at the same time; the tables inside a PlanLayers are computed on first use
    (two threads may both compute one, and get equal tables).
    """

    def __init__(self, store: PlanStore, size: int = LAYERS_CACHE_SIZE,
                 print_bytes: int = PRINT_CACHE_BYTES) -> None:
        self.store = store
        self.size = size
        self.print_bytes = print_bytes
        self._layers: OrderedDict[str, PlanLayers] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._prints: OrderedDict[tuple[str, str | None, str], dict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, plan_id: str) -> PlanLayers | None:
        layers = self._layers.get(plan_id)
        if layers is not None:
            self._layers.move_to_end(plan_id)
        return layers

    def layers(self, plan_id: str) -> PlanLayers:
        """The plan's layers, loading the plan from the store when not in memory."""
        with self._lock:
            layers = self._cached(plan_id)
            if layers is not None:
                return layers
            gate = self._loading.setdefault(plan_id, threading.Lock())
        with gate:
            with self._lock:
                layers = self._cached(plan_id)
            if layers is not None:
                return layers
            try:
                path = self.store.plan_path(plan_id)
                if not path.exists():  # deleted since the route looked it up
                    raise _no_plan(plan_id)
                layers = PlanLayers(Plan.load(path))
                with self._lock:
                    self._layers[plan_id] = layers
                    while len(self._layers) > self.size:
                        self._layers.popitem(last=False)
            finally:
                with self._lock:
                    self._loading.pop(plan_id, None)
        return layers

    def printed(self, plan_id: str, grid_id: str | None, paper: str, fmt: str) -> bytes:
        """The printed map of the city (``grid_id`` None) or of a grid, as PNG or PDF."""
        key = (plan_id, grid_id, paper)
        with self._lock:
            hit = self._prints.get(key)
            if hit is not None:
                self._prints.move_to_end(key)
                return hit[fmt]
        layers = self.layers(plan_id)
        with _PRINTING:
            with self._lock:
                hit = self._prints.get(key)
            if hit is not None:
                return hit[fmt]
            folder = self.store.scratch_dir()
            try:
                stem = folder / "map"
                paths = (print_city(layers, stem, paper=paper) if grid_id is None
                         else print_grid(layers, grid_id, stem, paper=paper))
                files = {p.suffix[1:]: p.read_bytes() for p in paths}
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._prints[key] = files
            total = sum(len(b) for f in self._prints.values() for b in f.values())
            while total > self.print_bytes and len(self._prints) > 1:
                _, dropped = self._prints.popitem(last=False)
                total -= sum(len(b) for b in dropped.values())
        return files[fmt]


async def get_layer_cache(request: Request) -> LayerCache:
    return request.app.state.layers


LayerCacheDep = Annotated[LayerCache, Depends(get_layer_cache)]
GridId = Annotated[str, Path(max_length=200, description="A grid id of any level, e.g. "
                                                         "350203-M01")]
OnlineTiles = Annotated[bool, Query(description="Offer an online base map layer (off until "
                                                "the user ticks it; the map works without)")]
PaperQuery = Annotated[Paper | None, Query(description="Landscape paper size (default A3 for "
                                                       "the city, A4 for a grid)")]


def _no_plan(plan_id: str) -> ProblemError:
    return ProblemError(404, f"no plan {plan_id!r}; GET /plans lists the stored plans",
                        kind="not-found", title="Plan not found")


# -- responses -----------------------------------------------------------------------------
def file_stem(plan: PlanRecord) -> str:
    """``<service area>-v<version>``, safe as a file name on any system."""
    return f"{safe_filename(plan.service_area)}-v{plan.version}"


def content_disposition(filename: str, kind: str = "attachment") -> str:
    """A Content-Disposition header; non-ASCII names go in ``filename*`` (RFC 6266) with an
    ASCII fallback for clients that ignore it."""
    quoted = quote(filename, safe="")
    if quoted == filename:
        return f'{kind}; filename="{filename}"'
    fallback = re.sub(r"[^\x20-\x7e]|[\"\\]", "_", filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


def _html(m: folium.Map, filename: str) -> HTMLResponse:
    return HTMLResponse(offline_html(m),
                        headers={"Content-Disposition": content_disposition(filename, "inline")})


def _responses(media: dict[str, str]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {m: {} for m in media}, "description": "; ".join(
        f"{m}: {d}" for m, d in media.items())}, **ERRORS}


HTML_RESPONSES = _responses({HTML: "a self-contained page (scripts and styles inlined: "
                                   "it works offline)"})
PRINT_RESPONSES = _responses({PRINT_MEDIA["png"]: "a landscape page at 200 dpi",
                              PRINT_MEDIA["pdf"]: "the same page as PDF"})


def grid_level(layers: PlanLayers, plan_id: str, grid_id: str) -> str:
    """The level of ``grid_id`` in the plan, or a 404 that names it."""
    try:
        return layers.level_of(grid_id)
    except InvalidInputError:
        examples = sorted(layers.plan.units["main_grid_id"].unique())[:3]
        raise ProblemError(404, f"plan {plan_id} has no grid {grid_id!r} at any level; its "
                                f"main grids are e.g. {examples} (GET /plans/{plan_id}/grids/"
                                "main_grid lists them)", kind="not-found",
                           title="Grid not found") from None


def _measure(layers: PlanLayers, level: str, measure: str | None) -> str:
    """The choropleth measure: default the deviation of the first balanced measure; a 422
    listing the numeric grid figures when it is not one."""
    if measure is None:
        return f"dev_{layers.plan.measures[0]}"
    table = layers.kpis(level)
    numeric = [c for c in table.columns if c != table.geometry.name
               and pd.api.types.is_numeric_dtype(table[c])
               and not pd.api.types.is_bool_dtype(table[c])]
    if measure not in numeric:
        raise field_problem("query.measure", f"measure {measure!r} is not a numeric figure of "
                            f"the {LEVEL_NAME[level].lower()}", f"use one of {numeric}")
    return measure


# -- HTML maps -----------------------------------------------------------------------------
@router.get("/maps/overview", response_class=HTMLResponse, responses=HTML_RESPONSES,
            summary="The city: every level, neighbours coloured apart, key figures on hover")
def overview(user: Reader, plan: PlanDep, cache: LayerCacheDep,
             online_tiles: OnlineTiles = True) -> HTMLResponse:
    """Branches, main grids and sub-grids (one level filled at a time, a choice in the layer
    control) with their boundaries on top. Open in a browser; works offline."""
    layers = cache.layers(plan.plan_id)
    return _html(overview_map(layers, online_tiles=online_tiles),
                 f"{file_stem(plan)}-overview.html")


@router.get("/maps/choropleth", response_class=HTMLResponse, responses=HTML_RESPONSES,
            summary="The grids of one level filled by classes of a measure")
def choropleth(
    user: Reader, plan: PlanDep, cache: LayerCacheDep,
    measure: Annotated[str | None, Query(max_length=100, description="A numeric grid figure, "
                                         "e.g. dev_subscribers, penetration, staff (default: "
                                         "deviation of the first balanced measure)")] = None,
    level: Annotated[Level, Query(description="The level filled")] = "main_grid",
    scheme: Annotated[Scheme, Query(description="How values are classed")] = "Quantiles",
    k: Annotated[int, Query(ge=2, le=9, description="Number of classes")] = 5,
    online_tiles: OnlineTiles = True,
) -> HTMLResponse:
    layers = cache.layers(plan.plan_id)
    measure = _measure(layers, level, measure)
    m = choropleth_map(layers, measure, level=level, scheme=scheme, k=k,
                       online_tiles=online_tiles)
    return _html(m, f"{file_stem(plan)}-choropleth-{level}-{safe_filename(measure)}.html")


@router.get("/maps/field/{grid_id}", response_class=HTMLResponse, responses=HTML_RESPONSES,
            summary="The field map of one grid, for its team")
def field(user: Reader, plan: PlanDep, cache: LayerCacheDep, grid_id: GridId,
          online_tiles: OnlineTiles = True) -> HTMLResponse:
    """The grid (any level) with its child grids coloured and labelled, its neighbours in
    grey and its key figures, fitted to the grid."""
    layers = cache.layers(plan.plan_id)
    grid_level(layers, plan.plan_id, grid_id)
    return _html(field_map(layers, grid_id, online_tiles=online_tiles),
                 f"{file_stem(plan)}-{safe_filename(grid_id)}.html")


# -- printable maps ------------------------------------------------------------------------
def _print(cache: LayerCache, plan: PlanRecord, grid_id: str | None, paper: str,
           fmt: str) -> Response:
    name = f"{file_stem(plan)}-{safe_filename(grid_id or 'city')}.{fmt}"
    return Response(cache.printed(plan.plan_id, grid_id, paper, fmt),
                    media_type=PRINT_MEDIA[fmt],
                    headers={"Content-Disposition": content_disposition(name, "inline")})


@router.get("/prints/city.{format}", response_class=Response, responses=PRINT_RESPONSES,
            summary="The printable city map (main grids, every boundary, key figures)")
def print_city_map(user: Reader, plan: PlanDep, cache: LayerCacheDep, format: PrintFormat,
                   paper: PaperQuery = None) -> Response:
    """``city.png`` or ``city.pdf``: landscape, with title, scale bar, north arrow and
    legend. Both formats come from one drawing: the second is served from memory."""
    return _print(cache, plan, None, paper or "A3", format)


@router.get("/prints/grids/{grid_id}.{format}", response_class=Response,
            responses=PRINT_RESPONSES, summary="The printable map of one grid")
def print_grid_map(user: Reader, plan: PlanDep, cache: LayerCacheDep, grid_id: GridId,
                   format: PrintFormat, paper: PaperQuery = None) -> Response:
    """The grid (any level) with its child grids, neighbours, key figures; ``.png`` or
    ``.pdf``."""
    grid_level(cache.layers(plan.plan_id), plan.plan_id, grid_id)
    return _print(cache, plan, grid_id, paper or "A4", format)
