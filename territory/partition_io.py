"""``territory partition``: one flat partition of a polygon layer or an adjacency graph."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pandas as pd

from territory.boundaries import read_boundaries
from territory.errors import InvalidInputError
from territory.graph import build_graph, read_graph_json
from territory.optimize import Partitioner
from territory.units import units_from_polygons


def load_units_graph(path: Path, *, id_column: str | None, xy: str | None = None,
                     crs: str | None = None, repair: bool = False) -> nx.Graph:
    """A unit graph from a networkx JSON graph (node-link or adjacency) or a polygon layer.

    ``xy`` is "XNAME,YNAME", the coordinate attributes of a JSON graph's nodes (by default
    the first known pair every node carries, see :data:`territory.graph.XY_CANDIDATES`).
    """
    if path.suffix.lower() == ".json":
        names = None
        if xy is not None:
            names = tuple(s.strip() for s in xy.split(","))
            if len(names) != 2 or not all(names):
                raise InvalidInputError(f"`xy` {xy!r}: give two attribute names, e.g. x,y")
        return read_graph_json(path, xy=names)  # type: ignore[arg-type]
    if id_column is None:
        raise InvalidInputError("`id_column` is required for a polygon layer: name the unit id")
    layer = read_boundaries(path, crs=crs, id_column=id_column, repair=repair)
    return build_graph(units_from_polygons(layer, id_column=id_column))


def run_partition(graph: nx.Graph, partitioner: Partitioner) -> tuple[pd.Series, dict]:
    """Solve and return unit -> grid labels and the figures the command prints."""
    p = partitioner.solve(graph)
    tolerances = p.check_parameters()
    figures = {
        "units": graph.number_of_nodes(),
        "objective": f"{p.objective_:.6g}" + (" m (weighted mean distance to centre)"
                                            if p.objective == "distance" else " (boundary)"),
        "lower bound": (f"none ({p.bound_kind_ or 'not computed'})" if p.bound_ is None
                        else f"{p.bound_:.6g} ({p.bound_kind_})"),
        "gap": "n/a" if p.gap_ is None else f"{p.gap_:.2%}",
        "status": p.status_ + (" (proven optimal)" if p.status_ == "optimal" else ""),
        "contiguous": p.contiguous_,
        "time": f"{p.time_:.1f} s",
    }
    for m, dev in p.max_deviation_.items():
        figures[f"max deviation {m}"] = f"{dev:.3%} (tolerance ±{tolerances[m]:.2%})"
    return p.labels_, figures
