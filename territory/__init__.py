"""territory: balanced, gap-free, contiguous grid maps for telecom operators.

The public names, re-exported; each lives in a module named for what it does. They are
imported on first use (PEP 562): ``territory assign`` or the service import only the modules
they run, not the optimiser, the graph builders and their numba kernels (a second of CPU and
about 100 MB at every start of the command).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from territory.errors import (
        InfeasibleError,
        InvalidInputError,
        NotSolvedError,
        TerritoryError,
    )
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
#: public name -> the module defining it
_HOME = {name: module for module, names in {
    "territory.errors": ("InfeasibleError", "InvalidInputError", "NotSolvedError",
                         "TerritoryError"),
    "territory.graph": ("build_graph", "read_graph_json", "write_graph_json"),
    "territory.hierarchy": ("HierarchySpec", "build_plan"),
    "territory.optimize": ("Partitioner",),
    "territory.plan": ("Plan",),
    "territory.units": ("aggregate_points", "build_units", "units_from_polygons"),
}.items() for name in names}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'territory' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
