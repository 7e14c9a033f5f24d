"""An import of a drawn grid map as one job with its stages reported: what ``territory
import`` and the service's import job (``POST /plans/import``) both run.

:func:`import_map` builds the units from the inputs, snaps the drawn grids onto them
(:func:`territory.importer.snap_to_units`), audits the drawing
(:func:`territory.diagnose.diagnose`) and computes the snapped plan's metrics; each stage is
reported through :mod:`territory.progress`.
"""

from __future__ import annotations

from dataclasses import dataclass

from territory.diagnose import Diagnosis, diagnose
from territory.graph import build_graph
from territory.importer import GridLayer, snap_to_units
from territory.key_accounts import key_account_groups
from territory.metrics import plan_metrics
from territory.pipeline import Inputs, build_unit_table
from territory.plan import Plan
from territory.progress import DIAGNOSIS, GRAPH, METRICS, SNAP, UNITS, Progress, silent
from territory.request import ImportRequest
from territory.stores import store_records


@dataclass
class Imported:
    """The snapped plan (with its metrics) and the audit of the map as drawn."""

    plan: Plan
    diagnosis: Diagnosis


def import_map(inputs: Inputs, main: GridLayer, sub: GridLayer | None,
               request: ImportRequest, *, source: str, author: str = "",
               message: str = "imported from the drawn map",
               progress: Progress | None = None) -> Imported:
    """Snap the drawn ``main`` grids (and ``sub``-grids) onto units built from ``inputs``
    as ``request`` says, audit the drawing and return both; ``source`` names the drawn
    layer in the plan's parameters (``imported_from``)."""
    progress = progress or silent
    progress(UNITS, 0, None)
    units, report = build_unit_table(inputs, request.unit_options())
    progress(UNITS, len(units), len(units))
    progress(GRAPH, 0, None)
    graph = build_graph(units)
    progress(GRAPH, graph.number_of_edges(), graph.number_of_edges())
    progress(SNAP, 0, 1)
    together = key_account_groups(units, inputs.key_accounts)
    params = {"resolution": request.resolution, "target_per_unit": request.target_per_unit,
              "min_resolution": request.min_resolution, "branch_column": inputs.branch_column,
              "aggregation": report, "imported_from": source}
    plan, _ = snap_to_units(units, graph, main, sub, request.measures(), together=together,
                            params=params)
    progress(SNAP, 1, 1)
    progress(DIAGNOSIS, 0, 1)
    diag = diagnose(inputs.areas, inputs.branch_column, main, sub, plan, inputs.customers,
                    sliver_width_m=request.sliver_width)
    progress(DIAGNOSIS, 1, 1)
    progress(METRICS, 0, 1)
    metrics = plan_metrics(plan, graph, inputs.areas)
    progress(METRICS, 1, 1)
    if inputs.stores is not None:  # the stores as they stand (store edits)
        plan.params["stores"] = store_records(plan.units, inputs.stores, centred=False)
    plan = Plan(**{**plan.__dict__, "metrics": metrics, "author": author, "message": message})
    return Imported(plan, diag)
