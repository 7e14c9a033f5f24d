"""territory: balanced, gap-free, contiguous grid maps for telecom operators.

The public names, re-exported; each lives in a module named for what it does.
"""

from territory.errors import InfeasibleError, InvalidInputError, NotSolvedError, TerritoryError
from territory.graph import build_graph, read_graph_json, write_graph_json
from territory.hierarchy import HierarchySpec, build_plan
from territory.optimize import Partitioner
from territory.plan import Plan
from territory.units import aggregate_points, build_units, units_from_polygons

__all__ = [
    "HierarchySpec",
    "InfeasibleError",
    "InvalidInputError",
    "NotSolvedError",
    "Partitioner",
    "Plan",
    "TerritoryError",
    "aggregate_points",
    "build_graph",
    "build_plan",
    "build_units",
    "read_graph_json",
    "units_from_polygons",
    "write_graph_json",
]
