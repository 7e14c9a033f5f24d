"""One plan request: every parameter of a plan, its default and its validation.

``territory plan`` builds a :class:`PlanRequest` from its options, the service's
``parameters`` (``POST /plans``, ``/plans/upload``) *is* one, and a library caller makes
one directly; each then asks it for the library's internal options (:meth:`PlanRequest.spec`,
:meth:`PlanRequest.unit_options`). Before it, the command, the service and the library each
had their own defaults (time limits 60/20 against 30/10 s, resolution 10 against 9), so the
same request gave different plans depending on where it was sent.

The internal dataclasses (:class:`~territory.hierarchy.HierarchySpec`,
:class:`~territory.pipeline.UnitOptions`) keep the same defaults for direct library use;
``tests/test_request.py`` holds all three entry points to them field by field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from territory.errors import InvalidInputError

if TYPE_CHECKING:  # the conversions import the library's modules only when used
    import geopandas as gpd

    from territory.hierarchy import HierarchySpec
    from territory.pipeline import UnitOptions
    from territory.workload import WorkloadModel

Tolerance = Annotated[float, Field(gt=0, lt=1)]
#: the balance a request asks for when it names none
DEFAULT_BALANCE = {"subscribers": 0.05, "workload": 0.05}


class _Request(BaseModel):
    """Unknown fields are refused: a misspelt parameter must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def build(cls, **values: Any) -> Self:
        """The request from keyword values, or :class:`InvalidInputError` naming each bad
        field in backticks (the command turns them into its options) and the fix."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise InvalidInputError("; ".join(_message(e) for e in exc.errors())) from None


class UnitRequest(_Request):
    """What the units are: H3 cells at a resolution, finer where customers are dense."""

    resolution: int = Field(10, ge=4, le=15, description="Finest H3 resolution of units")
    target_per_unit: float | None = Field(30.0, gt=0, description="Customers per unit "
                                                                  "(adaptive resolution); "
                                                                  "null: every unit at "
                                                                  "`resolution`")
    min_resolution: int = Field(7, ge=4, le=15, description="Coarsest adaptive resolution")

    @model_validator(mode="after")
    def _resolutions(self) -> UnitRequest:
        if self.min_resolution > self.resolution:
            raise ValueError(f"min_resolution {self.min_resolution} is finer than resolution "
                             f"{self.resolution}; make it at most {self.resolution}")
        return self

    def unit_options(self, layer: gpd.GeoDataFrame | None = None,
                     id_column: str | None = None) -> UnitOptions:
        """The unit options: H3 cells, or the planner's own polygons ``layer``."""
        from territory.pipeline import UnitOptions

        return UnitOptions(self.resolution, self.target_per_unit, self.min_resolution,
                           layer, id_column)


class BalanceRequest(UnitRequest):
    """What to balance, and how closely."""

    balance: dict[str, Tolerance | None] = Field(
        default_factory=lambda: dict(DEFAULT_BALANCE),
        description="Measure -> tolerance (0.05 = within ±5 % of the parent's mean; null: "
                    "`tolerance`); the first measure sizes the grids")
    tolerance: Tolerance = Field(0.05, description="Tolerance of a measure given without one "
                                                   "(and of the workload `staff_hours` adds)")

    @model_validator(mode="after")
    def _some_balance(self) -> BalanceRequest:
        if not self.balance:
            raise ValueError("balance needs at least one measure, e.g. {'subscribers': 0.05}")
        return self

    def measures(self) -> dict[str, float]:
        """Measure -> tolerance, with ``tolerance`` filled in."""
        return {m: self.tolerance if t is None else t for m, t in self.balance.items()}


class ImportRequest(BalanceRequest):
    """How to read a drawn grid map (``territory import``, ``POST /plans/import``) and the
    units it is snapped onto."""

    grid_column: str = Field(min_length=1, description="Column naming each grid")
    parent_column: str | None = Field(None, description="Column naming each grid's parent "
                                                        "(a main grid's branch)")
    grids_crs: str | None = Field(None, description="System of the grid layer's coordinates "
                                                    "(overrides the file's): wgs84, cgcs2000, "
                                                    "gcj02, bd09 or EPSG:N")
    sliver_width: float = Field(20.0, gt=0, description="Pieces thinner than this (m, mean "
                                                        "width) are slivers")


class PlanRequest(BalanceRequest):
    """How many grids, what to balance and how closely, what units, how long to search."""

    main_grids: int | None = Field(None, ge=1, le=10_000, description="Main grids in the area")
    branch_grids: dict[str, Annotated[int, Field(ge=1, le=10_000)]] | None = Field(
        None, description="Or: the number of main grids per branch (branch id -> count)")
    main_size: float | None = Field(None, gt=0, description="Or: target load per main grid "
                                                            "(in the first balance measure)")
    sub_grids: int = Field(4, ge=1, le=100, description="Sub-grids per main grid")
    sub_size: float | None = Field(None, gt=0, description="Or: target load per sub-grid")
    staff_hours: float | None = Field(
        None, gt=0, le=744, description="Or: a team member's monthly hours: each sub-grid is "
        "sized to one person's workload and the workload is balanced")
    staff_tolerance: Tolerance = Field(
        0.10, description="With staff_hours: every main grid's workload per staff member "
        "(per sub-grid) within this share of the city's")
    objective: Literal["distance", "boundary"] = "distance"
    time_limit_main: float = Field(60.0, gt=0, le=3600, description="Seconds per branch")
    time_limit_sub: float = Field(20.0, gt=0, le=3600, description="Seconds per main grid")
    locks: dict[str, str] = Field(default_factory=dict, description="Unit id -> main grid id "
                                                                    "it must stay in")
    stores_as_centres: bool = Field(False, description="One main grid per store, centred on it")
    own_grid_islands: bool = Field(False, description="Islands become main grids of their own")
    strict: bool = Field(False, description="Keep `sub_grids` in every main grid: one that "
                                            "cannot be balanced is kept flagged and the plan "
                                            "fails (default: it gets fewer)")
    seed: int = Field(0, ge=0, description="Random seed of the search")

    @model_validator(mode="after")
    def _consistent(self) -> PlanRequest:
        if self.main_grids is not None and self.branch_grids is not None:
            raise ValueError("give main_grids (for the area) or branch_grids (per branch), "
                             "not both")
        if (self.main_grids is None and self.branch_grids is None and self.main_size is None
                and not self.stores_as_centres):
            raise ValueError("give main_grids (a number), branch_grids (one per branch), "
                             "main_size (a load per main grid) or stores_as_centres")
        if self.staff_hours is not None and self.sub_size is not None:
            raise ValueError("give staff_hours or sub_size, not both")
        return self

    # -- the library's options --------------------------------------------------------------
    def measures(self) -> dict[str, float]:
        """Measure -> tolerance, with ``tolerance`` filled in (and the workload total when
        the sub-grids are sized by staff hours)."""
        from territory.workload import TOTAL

        out = super().measures()
        if self.staff_hours is not None:
            out.setdefault(TOTAL, self.tolerance)
        return out

    def spec(self, *, workers: int = 2, workload: WorkloadModel | None = None,
             **extra: Any) -> HierarchySpec:
        """The hierarchy options; ``workers`` is where the search runs, not what it asks;
        ``extra`` sets internal options no request carries (the demo's ``fit_main``)."""
        from territory.hierarchy import HierarchySpec
        from territory.workload import BEAT, TOTAL, beat_size, load_model

        sub_size, size_measure = self.sub_size, None
        if self.staff_hours is not None:
            sub_size = beat_size(workload or load_model(), self.staff_hours)
            size_measure = BEAT
        return HierarchySpec(
            measures=self.measures(), size_measure=size_measure,
            n_main=dict(self.branch_grids) if self.branch_grids else self.main_grids,
            main_size=self.main_size, n_sub=self.sub_grids, sub_size=sub_size,
            staff_measure=TOTAL if self.staff_hours is not None else None,
            staff_tolerance=self.staff_tolerance, objective=self.objective,
            time_limit_main=self.time_limit_main, time_limit_sub=self.time_limit_sub,
            locked=dict(self.locks),
            own_grid_islands=self.own_grid_islands, workers=workers,
            random_state=self.seed, strict=self.strict, **extra)

    def effective(self, *, workers: int = 2) -> dict[str, Any]:
        """Every option the library will run with, as plain values: what two entry points
        given the same request must agree on."""
        spec = self.spec(workers=workers)
        opts = self.unit_options()
        keep = ("measures", "size_measure", "n_main", "main_size", "n_sub", "sub_size",
                "staff_measure", "staff_tolerance", "objective", "time_limit_main",
                "time_limit_sub", "locked",
                "own_grid_islands", "random_state", "strict")
        return {**{k: getattr(spec, k) for k in keep},
                "resolution": opts.resolution, "target_per_unit": opts.target_per_unit,
                "min_resolution": opts.min_resolution,
                "stores_as_centres": self.stores_as_centres}


def default(name: str, model: type[BaseModel] = PlanRequest) -> Any:
    """A field's default, for an entry point that declares the option itself (typer)."""
    return model.model_fields[name].get_default(call_default_factory=True)


#: what to give instead, for the fields whose fix the validator's own words do not say
_FIXES = {"balance": "give a fraction between 0 and 1 (0.05 = ±5 % of the mean)",
          "tolerance": "give a fraction between 0 and 1 (0.05 = ±5 % of the mean)"}


def _message(error: Any) -> str:
    """One validation error as the library words it: the field in backticks, the value, the
    fix."""
    loc = [str(p) for p in error["loc"]]
    text = error["msg"].removeprefix("Value error, ")
    if not loc:
        return text
    if error["type"] != "missing" and loc[0] in _FIXES:
        text = _FIXES[loc[0]]
    where = "".join(f"[{p!r}]" for p in loc[1:])
    return f"`{loc[0]}`{where} {error.get('input')!r}: {text}"
