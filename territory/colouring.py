"""Colours for grid maps: neighbouring grids never share a colour.

A map where two adjacent grids have the same fill reads as one grid, and the boundary
between two teams is exactly what a grid map must make clear. So grids are coloured by
graph colouring of their rook adjacency (a shared boundary of positive length; touching at a
corner does not count, as in :mod:`territory.graph`), with a small palette so that a colour
keeps no meaning of its own.

networkx's greedy colouring is tried with strategies that stay small on map-like graphs:
``smallest_last`` colours any planar graph with at most 6 colours (its degeneracy is at most
5), ``DSATUR`` usually with 4-5, and ``largest_first`` with Kempe-chain interchange; the
colouring with the fewest colours wins (ties by the order listed, so the result is
deterministic). A plan's grids can form a non-planar graph (a grid in several parts, an
island bridged to two neighbours), so :func:`palette` hands out as many distinct colours as
the colouring needs rather than ever reusing one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import networkx as nx
import numpy as np
import shapely
from matplotlib import colormaps
from matplotlib.colors import to_hex
from numpy.typing import NDArray

from territory.graph import shared_boundaries

#: Soft qualitative colours that keep dark boundary lines and labels readable on top.
PALETTE: tuple[str, ...] = (
    "#8dd3c7", "#fdb462", "#bebada", "#fb8072", "#80b1d3", "#b3de69", "#fccde5", "#ffed6f",
)

_STRATEGIES: tuple[tuple[str, bool], ...] = (
    ("smallest_last", False),
    ("DSATUR", False),
    ("largest_first", True),
)


def rook_pairs(geoms: Sequence[shapely.Geometry] | NDArray[np.object_]) -> NDArray[np.int64]:
    """Index pairs ``(i, j)``, ``i < j``, of polygons that share a boundary of positive length.

    Lengths are measured in the geometries' own units; any positive length counts, so the
    polygons must be edge-matched (as a plan's grids are: dissolved from snapped units).
    """
    if len(geoms) < 2:
        return np.empty((0, 2), dtype=np.int64)
    a, b, shared = shared_boundaries(geoms)
    rook = shared > 0
    return np.column_stack([a[rook], b[rook]]).astype(np.int64)


def adjacency_graph(ids: Sequence[Hashable],
                    geoms: Sequence[shapely.Geometry] | NDArray[np.object_]) -> nx.Graph:
    """Rook adjacency of polygons as a graph on ``ids`` (every id a node, isolated or not)."""
    ids = list(ids)
    g = nx.Graph()
    g.add_nodes_from(ids)
    g.add_edges_from((ids[i], ids[j]) for i, j in rook_pairs(geoms))
    return g


def colour_graph(graph: nx.Graph) -> dict[Hashable, int]:
    """A proper colouring (adjacent nodes differ) with few colours: node -> colour index."""
    best: dict[Hashable, int] = {}
    for strategy, interchange in _STRATEGIES:
        colours = nx.greedy_color(graph, strategy=strategy, interchange=interchange)
        if not best or max(colours.values(), default=-1) < max(best.values(), default=-1):
            best = colours
    return best


def palette(n: int) -> list[str]:
    """``n`` distinct hex colours: :data:`PALETTE` first, then tab20's as needed."""
    extra = [to_hex(c) for c in colormaps["tab20"].colors]
    colours = list(dict.fromkeys([*PALETTE, *extra]))
    if n > len(colours):
        hues = colormaps["hsv"](np.linspace(0, 1, n - len(colours), endpoint=False))
        colours += [to_hex(c) for c in hues]
    return colours[:n]


def grid_colours(ids: Sequence[Hashable],
                 geoms: Sequence[shapely.Geometry] | NDArray[np.object_]) -> dict[Hashable, str]:
    """Fill colour of each polygon such that rook neighbours never share one."""
    indices = colour_graph(adjacency_graph(ids, geoms))
    colours = palette(max(indices.values(), default=-1) + 1)
    return {k: colours[i] for k, i in indices.items()}


def conflicts(ids: Sequence[Hashable], geoms: Sequence[shapely.Geometry] | NDArray[np.object_],
              colours: dict[Hashable, str]) -> list[tuple[Hashable, Hashable]]:
    """Pairs of rook neighbours that share a colour (empty for a proper colouring)."""
    ids = list(ids)
    return [(ids[i], ids[j]) for i, j in rook_pairs(geoms) if colours[ids[i]] == colours[ids[j]]]
