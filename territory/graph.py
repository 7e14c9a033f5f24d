"""The adjacency graph of units.

Rook adjacency: two units are neighbours when they share a boundary of positive length
(touching at a corner is not enough for a team to walk across). Edges carry ``length_m``,
the shared boundary in metres. Nodes carry ``x``/``y`` (projected centroid, metres),
``lng``/``lat``, ``area_m2``, ``perimeter_m`` and every unit attribute.

Islands (a group of units with no land neighbour in the rest, such as Gulangyu) are joined
to the nearest unit of the main component by an explicit edge marked ``bridge=True`` with
``length_m=0``, and reported in ``graph.graph["islands"]``; enclaves (a unit wholly
surrounded by one other unit) are reported in ``graph.graph["enclaves"]``.

Graphs read from and written to networkx node-link JSON (the format GerryChain uses), so
planners can bring units built elsewhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import shapely

from territory.atomic import write_text
from territory.errors import InvalidInputError
from territory.units import projected

log = logging.getLogger(__name__)

#: Overlay precision in metres for shared-boundary lengths (robust to float noise).
_GRID_M = 0.01
#: Shared boundaries shorter than this (metres) count as corner contact, not rook adjacency.
MIN_SHARED_M = 0.5


def shared_boundaries(geoms, grid_size: float | None = None):
    """Pairs ``(a, b)``, ``a < b``, of intersecting polygons and the length of boundary they
    share (in the geometries' units; 0 where they only touch at corners).

    ``grid_size`` runs the overlay on that precision grid: robust where two neighbours'
    copies of an edge differ by float noise.
    """
    geoms = np.asarray(geoms, dtype=object)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    shared = shapely.length(shapely.intersection(
        shapely.boundary(geoms[a]), shapely.boundary(geoms[b]), grid_size=grid_size))
    return a, b, shared


def build_graph(units: gpd.GeoDataFrame, *, join_islands: bool = True) -> nx.Graph:
    """Rook adjacency graph of ``units`` (indexed by unit id) with shared lengths in metres."""
    if len(units) == 0:
        raise InvalidInputError("units: no units to build a graph from")
    proj = projected(units)
    geoms = proj.geometry.values
    ids = units.index.to_numpy()
    a, b, shared = shared_boundaries(geoms, grid_size=_GRID_M)
    rook = shared >= MIN_SHARED_M
    cent = shapely.centroid(geoms)
    wgs_cent = gpd.GeoSeries(cent, crs=proj.crs).to_crs(4326)
    nodes = units.drop(columns="geometry").assign(
        x=shapely.get_x(cent),
        y=shapely.get_y(cent),
        lng=wgs_cent.x.to_numpy(),
        lat=wgs_cent.y.to_numpy(),
        area_m2=shapely.area(geoms),
        perimeter_m=shapely.length(geoms),
    )
    g = nx.Graph()
    g.add_nodes_from(
        (uid, {k: _plain(v) for k, v in row.items()})
        for uid, row in zip(ids, nodes.to_dict("records"), strict=True)
    )
    for i, j, s in zip(a[rook], b[rook], shared[rook], strict=True):
        g.add_edge(ids[i], ids[j], length_m=float(s), bridge=False)
    g.graph["crs"] = proj.crs.to_string()
    g.graph["enclaves"] = _enclaves(g)
    g.graph["islands"] = join_components(g) if join_islands else []
    return g


def _plain(v):
    """JSON-friendly scalar (numpy types to Python)."""
    return v.item() if isinstance(v, np.generic) else v


def _enclaves(g: nx.Graph) -> list:
    """Units whose whole boundary is shared with one single other unit."""
    out = []
    for n in g.nodes:
        nb = list(g.adj[n])
        if len(nb) == 1:
            shared = g.edges[n, nb[0]]["length_m"]
            if shared >= 0.99 * g.nodes[n]["perimeter_m"]:
                out.append({"unit": n, "surrounded_by": nb[0]})
    return out


def induced_subgraph(g: nx.Graph, nodes) -> nx.Graph:
    """A copy of the subgraph on ``nodes``, in ``g``'s node order.

    ``nx.Graph.subgraph`` may iterate its nodes in set order, which changes with Python's
    hash seed; plans must not depend on it (same inputs and seed, same plan).
    """
    keep = set(nodes)
    sub = nx.Graph()
    sub.add_nodes_from((n, d) for n, d in g.nodes(data=True) if n in keep)
    sub.add_edges_from(
        (u, v, d) for u, v, d in g.edges(data=True) if u in keep and v in keep
    )
    return sub


def join_components(g: nx.Graph, level: int = logging.WARNING) -> list[dict]:
    """Join every component but the largest to its nearest unit elsewhere; report the joins.

    Nearest means the closest pair of centroids between the component and the rest, in
    metres. The added edge carries ``bridge=True`` and ``length_m=0`` so compactness
    measures do not count it as a shared boundary. Each join is logged at ``level``: a
    warning for the city's graph, where the planner learns of it once; parts of it that
    re-join the same islands for their own solve log at DEBUG.
    """
    comps = sorted(nx.connected_components(g), key=len, reverse=True)
    joins: list[dict] = []
    if len(comps) <= 1:
        return joins
    nodes = list(g.nodes)
    xy = np.array([(g.nodes[n]["x"], g.nodes[n]["y"]) for n in nodes])
    pos = {n: i for i, n in enumerate(nodes)}
    main = set(comps[0])
    for comp in comps[1:]:
        ci = np.sort([pos[n] for n in comp])
        oi = np.sort([pos[n] for n in main])
        tree = shapely.STRtree(shapely.points(xy[oi]))
        idx, dist = tree.query_nearest(shapely.points(xy[ci]), return_distance=True)
        k = int(np.argmin(dist))
        u, v = nodes[ci[idx[0][k]]], nodes[oi[idx[1][k]]]
        g.add_edge(u, v, length_m=0.0, bridge=True)
        joins.append({"units": sorted(map(str, comp)), "joined": [u, v],
                      "distance_m": float(dist[k])})
        log.log(level, "island of %d units joined to %s (%.0f m)", len(comp), v, dist[k])
        main |= comp
    return joins


def contiguous_grids(g: nx.Graph, labels) -> dict:
    """Per grid label, whether the grid is one walkable piece.

    Components are taken over rook edges only (bridges excluded). A component with no rook
    edge leaving it is an island of the service area itself (Gulangyu): it is separated from
    the rest by water or by the edge of the area, never by another grid, and does not break
    contiguity. A grid is contiguous when at most one of its components touches other units.
    """
    lab = {n: labels[n] for n in g.nodes}
    rook = nx.Graph()
    rook.add_nodes_from(g.nodes)
    rook.add_edges_from((u, v) for u, v, d in g.edges(data=True)
                        if not d.get("bridge") and lab[u] == lab[v])
    touching: dict = {}
    for comp in nx.connected_components(rook):
        first = next(iter(comp))
        land = any(
            not d.get("bridge") and v not in comp for u in comp for v, d in g.adj[u].items()
        )
        touching.setdefault(lab[first], 0)
        touching[lab[first]] += int(land)
    return {grid: count <= 1 for grid, count in touching.items()}


def write_graph_json(g: nx.Graph, path: str | Path) -> None:
    """Write node-link JSON atomically (GerryChain's ``Graph.to_json`` format)."""
    data = nx.node_link_data(g, edges="edges")
    write_text(path, json.dumps(data, ensure_ascii=False, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_graph_json(path: str | Path, *, xy: tuple[str, str] = ("x", "y")) -> nx.Graph:
    """Read a networkx / GerryChain adjacency JSON file.

    Node attributes named by ``xy`` hold coordinates (if there are any); they are copied to
    ``x``/``y``. Edges without ``length_m`` count as length 1 (one cut edge each).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "nodes" not in data:
            raise KeyError("nodes")
        key = "edges" if "edges" in data else "links"
        g = nx.node_link_graph(data, edges=key)
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError, nx.NetworkXError) as exc:
        raise InvalidInputError(
            f"{path}: not a node-link adjacency JSON graph ({exc}); expected "
            '{"nodes": [{"id": ...}, ...], "edges" or "links": [{"source":..,"target":..}]}'
        ) from None
    if g.is_directed() or g.is_multigraph():
        g = nx.Graph(g)
    if g.number_of_nodes() == 0:
        raise InvalidInputError(f"{path}: the graph has no nodes")
    xname, yname = xy
    has_xy = all(xname in d and yname in d for _, d in g.nodes(data=True))
    for _, d in g.nodes(data=True):
        if has_xy:
            d["x"], d["y"] = float(d[xname]), float(d[yname])
    g.graph["has_xy"] = has_xy
    for _, _, d in g.edges(data=True):
        d.setdefault("length_m", 1.0)
        d.setdefault("bridge", False)
    g.graph.setdefault("islands", join_components(g))
    return g
