"""The adjacency graph of units.

Rook adjacency: two units are neighbours when they share a boundary of positive length
(touching at a corner is not enough for a team to walk across). Edges carry ``length_m``,
the shared boundary in metres. Nodes carry ``x``/``y`` (projected centroid, metres),
``lng``/``lat``, ``area_m2``, ``perimeter_m`` and every unit attribute.

Islands (a group of units with no land neighbour in the rest, such as Gulangyu) are joined
to the nearest unit of the main component by an explicit edge marked ``bridge=True`` with
``length_m=0``, and reported in ``graph.graph["islands"]``; enclaves (a unit wholly
surrounded by one other unit) are reported in ``graph.graph["enclaves"]``.

Graphs are read from and written to both networkx JSON forms, node-link and adjacency (the
one GerryChain's ``Graph.to_json`` writes), so planners can bring units built elsewhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import shapely
from networkx.readwrite import json_graph

from territory.atomic import write_text
from territory.errors import InvalidInputError
from territory.units import projected

log = logging.getLogger(__name__)

#: Overlay precision in metres for shared-boundary lengths (robust to float noise).
_GRID_M = 0.01
#: Shared boundaries shorter than this (metres) count as corner contact, not rook adjacency.
MIN_SHARED_M = 0.5


def shared_boundaries(geoms, grid_size: float | None = None, among=None, exact=None):
    """Pairs ``(a, b)``, ``a < b``, of intersecting polygons and the length of boundary they
    share (in the geometries' units; 0 where they only touch at corners).

    ``grid_size`` runs the overlay on that precision grid: robust where two neighbours'
    copies of an edge differ by float noise. ``among`` (positions) restricts ``a`` to those
    polygons, ``b`` being any other (a pair of two of them then comes in both orders).
    ``exact`` (booleans, one per polygon) marks polygons whose edges are exact copies of
    their neighbours' (whole H3 cells, snapped): a pair of two is overlaid plainly, five
    times faster than on the grid, and on the grid only when that finds no shared line
    (float noise in a copy; hexagons never meet at a corner alone).
    """
    geoms = np.asarray(geoms, dtype=object)
    if among is None:
        a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
        keep = a < b
    else:
        among = np.asarray(among, dtype=np.int64)
        a, b = shapely.STRtree(geoms).query(geoms[among], predicate="intersects")
        a = among[a]
        keep = a != b
    a, b = a[keep], b[keep]
    ba, bb = shapely.boundary(geoms[a]), shapely.boundary(geoms[b])
    shared = np.zeros(len(a))
    redo = np.ones(len(a), dtype=bool)
    if exact is not None and grid_size is not None:
        exact = np.asarray(exact, dtype=bool)
        plain = np.flatnonzero(exact[a] & exact[b])
        shared[plain] = shapely.length(shapely.intersection(ba[plain], bb[plain]))
        redo[plain] = shared[plain] <= 0
    shared[redo] = shapely.length(shapely.intersection(ba[redo], bb[redo], grid_size=grid_size))
    return a, b, shared


def build_graph(units: gpd.GeoDataFrame, *, join_islands: bool = True) -> nx.Graph:
    """Rook adjacency graph of ``units`` (indexed by unit id) with shared lengths in metres."""
    if len(units) == 0:
        raise InvalidInputError("units: no units to build a graph from")
    proj = projected(units)
    geoms = proj.geometry.values
    ids = units.index.to_numpy()
    # H3 units (build_units) say which are whole cells, whose edges are exact copies
    h3_units = {"cell", "whole"} <= set(units.columns)
    whole = units["whole"].to_numpy(dtype=bool) if h3_units else None
    a, b, shared = shared_boundaries(geoms, grid_size=_GRID_M, exact=whole)
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
    order = [n for n in g if n in keep]
    sub = nx.Graph()
    sub.add_nodes_from((n, g.nodes[n]) for n in order)
    # the edges in the order g.edges gives them, found from the kept nodes' own adjacency
    # (a main grid of a 200 000-unit city is not worth a pass over all its edges)
    seen: set = set()
    adj = g.adj
    for u in order:
        sub.add_edges_from((u, v, d) for v, d in adj[u].items() if v in keep and v not in seen)
        seen.add(u)
    return sub


def induced_subgraphs(g: nx.Graph, labels: Mapping) -> dict:
    """``{label: induced_subgraph(g, nodes with that label)}`` for every label, in one pass
    over ``g`` (nodes without a label are left out). A city of 600 000 units cut into a
    thousand main grids: one :func:`induced_subgraph` call per grid scans the whole graph
    each time, about an hour of CPU; this is a second."""
    nodes: dict = {}
    edges: dict = {}
    for n, d in g.nodes(data=True):
        if n in labels:
            nodes.setdefault(labels[n], []).append((n, d))
    for u, v, d in g.edges(data=True):
        lu = labels.get(u)
        if lu is not None and lu == labels.get(v):
            edges.setdefault(lu, []).append((u, v, d))
    out = {}
    for label, members in nodes.items():
        sub = nx.Graph()
        sub.add_nodes_from(members)
        sub.add_edges_from(edges.get(label, ()))
        out[label] = sub
    return out


def join_components(g: nx.Graph, level: int = logging.WARNING, main=None) -> list[dict]:
    """Join every component but the main one to its nearest unit in the main one; report
    the joins.

    The main component is the largest, or the one holding node ``main`` (a part of the
    city whose largest piece is an island: the piece touching the rest of the city by land
    is its mainland). Nearest means the closest pair of centroids between the component
    and the main one, in metres. Every island is joined to the main component itself, never
    to another island: a planner holding each island whole puts it with a grid of the main
    land, never in one grid with the island it would hang off. The added edge carries
    ``bridge=True`` and ``length_m=0`` so compactness measures do not count it as a shared
    boundary. Each join is logged at ``level``: a warning for the city's graph, where the
    planner learns of it once; parts of it that re-join the same islands for their own
    solve log at DEBUG.
    """
    comps = sorted(nx.connected_components(g), key=len, reverse=True)
    joins: list[dict] = []
    if len(comps) <= 1:
        return joins
    if main is not None:
        comps.sort(key=lambda c: main not in c)  # stable: the rest stay largest first
    nodes = list(g.nodes)
    xy = np.array([(g.nodes[n]["x"], g.nodes[n]["y"]) for n in nodes])
    pos = {n: i for i, n in enumerate(nodes)}
    oi = np.array([pos[n] for n in comps[0]])
    tree = shapely.STRtree(shapely.points(xy[oi]))
    for comp in comps[1:]:
        ci = np.array([pos[n] for n in comp])
        idx, dist = tree.query_nearest(shapely.points(xy[ci]), return_distance=True)
        k = int(np.argmin(dist))
        u, v = nodes[ci[idx[0][k]]], nodes[oi[idx[1][k]]]
        g.add_edge(u, v, length_m=0.0, bridge=True)
        joins.append({"units": sorted(map(str, comp)), "joined": [u, v],
                      "distance_m": float(dist[k])})
        log.log(level, "island of %d units joined to %s (%.0f m)", len(comp), v, dist[k])
    return joins


def contiguous_grids(g: nx.Graph, labels) -> dict:
    """Per grid label, whether the grid is one walkable piece.

    Components are taken over rook edges only (bridges excluded). A component with no rook
    edge leaving it is an island of the service area itself (Gulangyu): it is separated from
    the rest by water or by the edge of the area, never by another grid, and does not break
    contiguity. A grid is contiguous when at most one of its components touches other units.
    """
    given = dict(labels.items())  # a Series looked up row by row costs ~10 µs a unit
    lab = {n: given[n] for n in g.nodes}
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


#: The two JSON forms networkx writes, by the key that holds the edges.
GRAPH_FORMS = ("node-link", "adjacency")

#: Coordinate attribute pairs found in districting graphs, tried in order when the caller
#: names none: ours, GerryChain's centroids, and the Census internal points.
XY_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("x", "y"), ("C_X", "C_Y"), ("INTPTLON20", "INTPTLAT20"), ("INTPTLON10", "INTPTLAT10"),
    ("INTPTLON", "INTPTLAT"),
)

_EXPECTED = ("expected networkx JSON: node-link (keys 'nodes' and 'edges' or 'links') or "
             "adjacency (keys 'nodes' and 'adjacency', what GerryChain's Graph.to_json writes)")


def write_graph_json(g: nx.Graph, path: str | Path, *, form: str = "node-link") -> None:
    """Write ``g`` atomically as networkx JSON of ``form``.

    ``"node-link"`` (edges under ``edges``) is what networkx writes by default;
    ``"adjacency"`` is what GerryChain's ``Graph.to_json`` writes and reads. Both are made by
    networkx's own :mod:`networkx.readwrite.json_graph`, so either tool reads them back.
    """
    if form == "node-link":
        data = json_graph.node_link_data(g, edges="edges")
    elif form == "adjacency":
        data = json_graph.adjacency_data(g)
    else:
        raise InvalidInputError(f"form {form!r}: use one of {list(GRAPH_FORMS)}")
    write_text(path, json.dumps(data, ensure_ascii=False, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def graph_form(data: object) -> str:
    """Which networkx JSON form ``data`` (a parsed document) is; raises for anything else."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        if isinstance(data.get("adjacency"), list):
            return "adjacency"
        if isinstance(data.get("edges", data.get("links")), list):
            return "node-link"
    keys = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
    raise InvalidInputError(f"not a networkx JSON graph (found {keys}); {_EXPECTED}")


def _from_json_data(data: dict) -> nx.Graph:
    """The graph in ``data`` (either form); an edge to a node that is not listed is refused
    (networkx would add it silently, without attributes)."""
    form = graph_form(data)
    listed = {d["id"] for d in data["nodes"]}
    if form == "adjacency":
        if len(data["adjacency"]) != len(data["nodes"]):
            raise InvalidInputError(
                f"'adjacency' has {len(data['adjacency'])} lists for {len(data['nodes'])} "
                "nodes; it needs one list per node, in the order of 'nodes'"
            )
        ends = [d["id"] for nbrs in data["adjacency"] for d in nbrs]
    else:
        edges = "edges" if "edges" in data else "links"
        ends = [d[k] for d in data[edges] for k in ("source", "target")]
    unknown = list(dict.fromkeys(n for n in ends if n not in listed))
    if unknown:
        raise InvalidInputError(
            f"edges lead to nodes {unknown[:10]} that 'nodes' does not list; list every node "
            "with its attributes"
        )
    if form == "adjacency":
        return json_graph.adjacency_graph(data)
    return json_graph.node_link_graph(data, edges=edges)


def read_graph_json(path: str | Path, *, xy: tuple[str, str] | None = None) -> nx.Graph:
    """Read a networkx JSON graph in either form (node-link or adjacency), GerryChain's too.

    ``xy`` names the node attributes holding coordinates; they are copied to ``x``/``y``.
    When not given, the first pair of :data:`XY_CANDIDATES` that every node carries is used
    (none: the graph has no coordinates, ``graph.graph["has_xy"]`` is False). Every other
    node attribute is kept. Edges without ``length_m`` count as length 1 (one cut edge each).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not JSON ({exc}); {_EXPECTED}") from None
    try:
        g = _from_json_data(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None
    except (KeyError, TypeError, IndexError, nx.NetworkXError) as exc:
        raise InvalidInputError(
            f"{path}: malformed networkx JSON graph ({type(exc).__name__}: {exc}); every node "
            f"needs an 'id'; {_EXPECTED}"
        ) from None
    if g.is_directed() or g.is_multigraph():
        g = nx.Graph(g)
    if g.number_of_nodes() == 0:
        raise InvalidInputError(f"{path}: the graph has no nodes")
    g.graph["has_xy"] = _copy_xy(g, xy, path)
    for _, _, d in g.edges(data=True):
        d.setdefault("length_m", 1.0)
        d.setdefault("bridge", False)
    if not g.graph["has_xy"] and not nx.is_connected(g):
        parts = sorted(nx.connected_components(g), key=len)
        raise InvalidInputError(
            f"{path}: the graph has {len(parts)} separate parts (the smallest: nodes "
            f"{sorted(parts[0], key=str)[:10]}) and no coordinates to join them by; add the "
            "edges that connect them, or name the nodes' coordinate attributes with `xy`"
        )
    g.graph.setdefault("islands", join_components(g))
    return g


def _copy_xy(g: nx.Graph, xy: tuple[str, str] | None, path: Path) -> bool:
    """Copy the coordinate attributes to ``x``/``y``; whether the graph has coordinates."""
    nodes = g.nodes(data=True)
    if xy is None:
        xy = next((p for p in XY_CANDIDATES if all(p[0] in d and p[1] in d for _, d in nodes)),
                  None)
        if xy is None:
            return False
        log.info("%s: coordinates read from node attributes %s, %s", path, *xy)
    xname, yname = xy
    lacking = [n for n, d in nodes if xname not in d or yname not in d]
    if lacking:
        raise InvalidInputError(
            f"{path}: nodes {lacking[:10]} have no attributes {xname!r}, {yname!r}; name the "
            "coordinate attributes every node carries with `xy`"
        )
    for n, d in nodes:
        try:
            x, y = float(d[xname]), float(d[yname])
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{path}: node {n!r} has coordinates {d[xname]!r}, {d[yname]!r}, not numbers"
            ) from None
        d["x"], d["y"] = x, y
    return True
