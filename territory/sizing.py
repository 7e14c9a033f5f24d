"""How big the demo's grids, units and time limits are for a given number of customers.

``territory demo --customers N`` must give a valid plan for any N from 5 000 to 2 000 000.
A fixed grid count cannot: 100 main grids x 4 sub-grids is right for 300 000 customers and
leaves 50 customers per sub-grid at 20 000, fewer than two units of 30 — a request that can
never balance at ±5 %. So every size follows the customers, in this one function, with rules
a planner would recognise (the synthetic demo has about 1.55 subscribers per customer):

* **Main grid** (主网格): about :data:`CUSTOMERS_PER_MAIN` = 2 000 customers (≈ 3 100
  subscribers, "a few thousand"), and at least one per branch (district), since every
  branch is partitioned on its own: ``n_main = max(n_branches, round(N / 2000))``.
* **Sub-grid** (子网格): about :data:`CUSTOMERS_PER_SUB` = 500 customers (≈ 780 subscribers,
  "a few hundred"): ``n_sub = round(N / n_main / 500)``, clipped to 2..6 so that a typical
  main grid is split and a sub-grid stays a walkable beat. Unless ``--sub-grids`` is given,
  this is an average: each main grid gets ``round(its subscribers / mean sub-grid
  subscribers)`` sub-grids, at least one, because the one main grid of a sparse district
  (Yantian with 5 000 customers in Shenzhen holds about 50) cannot be cut into balanced
  crumbs.
* **Unit** (基础单元): about 25 units per sub-grid (:data:`UNITS_PER_SUB`), so that the local
  search has enough small pieces to reach ±5 % on two measures at once:
  ``target_per_unit = N / (n_main x n_sub) / 25``, clipped to 5..40 customers ("a few
  tens"). Units stay coarser where customers are sparse (adaptive H3, coarsest resolution 7).
* **Resolution**: the finest H3 resolution is the coarsest of 9, 10, 11 (≈ 0.1, 0.015,
  0.002 km² a cell) at which the densest cell of the synthetic cities holds at most a third
  of a sub-grid (so that a sub-grid can still be balanced around it) and at most 8 units'
  worth of customers; :data:`PEAK_SHARE` is that cell's share of all customers, measured on
  both shipped cities. A finer resolution costs time (clipping 7 x more cells: Xiamen takes
  ~3 s at 9, ~20 s at 10), so small cities stay coarse: 9 up to about 64 000 customers, 10
  up to about 355 000, 11 above (the finest the rule picks; at 2 000 000 customers the
  densest resolution-11 cell, ~200 customers, is a little over that cap of 160).
* **Time limits** (the optimizer's budget, seconds): per branch ``units per branch / 30``
  clipped to 5..60; per main grid ``units per main grid / 20`` clipped to 5..20, the units
  being estimated as ``N / 20`` (the typical unit size, or ``N / target_per_unit`` when one
  is given), so that more customers never get less time. A 5 000-customer city gets 5 s
  per branch, not the 50-60 s a 300 000-customer one needs.
* **Stores** (自有渠道): one per main grid (:attr:`DemoSizing.n_stores`), so that
  ``--stores-as-centres`` gives the same number of main grids as the default plan.

Every value can be overridden on ``territory demo`` (``--main-grids``, ``--sub-grids``,
``--target-per-unit``, ``--resolution``); an override feeds the rules after it (fewer main
grids → more customers per sub-grid → larger units).
"""

from __future__ import annotations

from dataclasses import dataclass

from territory.errors import InvalidInputError

#: Customers per main grid (≈ 3 100 subscribers in the synthetic demo).
CUSTOMERS_PER_MAIN = 2_000
#: Customers per sub-grid (≈ 780 subscribers).
CUSTOMERS_PER_SUB = 500
#: Units a sub-grid should be made of, for balance to be reachable.
UNITS_PER_SUB = 25
#: Share of all customers in the densest cell of the synthetic cities, by H3 resolution
#: (200 000 customers, seeds 0 and 1: 294-727 at resolution 9, 53-123 at 10, 14-26 at 11).
PEAK_SHARE = {9: 2.5e-3, 10: 4.5e-4, 11: 1.0e-4}
#: The densest unit may hold at most this many units' worth of customers.
PEAK_UNITS = 8
SUB_GRIDS_RANGE = (2, 6)
TARGET_PER_UNIT_RANGE = (5.0, 40.0)
TIME_LIMIT_MAIN_RANGE = (5.0, 60.0)
TIME_LIMIT_SUB_RANGE = (5.0, 20.0)
MIN_RESOLUTION = 7


@dataclass(frozen=True)
class DemoSizing:
    """The demo's sizes for one city; see the module docstring for the rules."""

    n_customers: int
    n_branches: int
    n_main: int
    n_sub: int
    target_per_unit: float
    resolution: int
    min_resolution: int
    time_limit_main: float
    time_limit_sub: float

    @property
    def n_stores(self) -> int:
        """One store (business hall or owned store) per main grid."""
        return self.n_main

    def describe(self) -> str:
        """One line for the demo's output."""
        return (f"{self.n_main} main grids x {self.n_sub} sub-grids, units of about "
                f"{self.target_per_unit:g} customers (H3 {self.min_resolution}-"
                f"{self.resolution}), time limits {self.time_limit_main:g} s per branch, "
                f"{self.time_limit_sub:g} s per main grid")


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


def demo_sizing(
    n_customers: int,
    n_branches: int,
    *,
    main_grids: int | None = None,
    sub_grids: int | None = None,
    target_per_unit: float | None = None,
    resolution: int | None = None,
) -> DemoSizing:
    """Grid counts, unit size, H3 resolution and time limits for ``n_customers``.

    Parameters
    ----------
    n_customers : int
        Customers in the city (> 0).
    n_branches : int
        Branches (districts) the city is split into first; each gets at least one main grid.
    main_grids, sub_grids, target_per_unit, resolution : optional
        Overrides; the rules that follow use them.

    Examples
    --------
    >>> s = demo_sizing(20_000, 6)
    >>> (s.n_main, s.n_sub, s.target_per_unit, s.resolution)
    (10, 4, 20.0, 9)
    """
    if n_customers <= 0:
        raise InvalidInputError(f"customers={n_customers}: give a positive number of customers")
    if n_branches <= 0:
        raise InvalidInputError(f"n_branches={n_branches}: the city has no branch")
    if main_grids is not None and main_grids < n_branches:
        raise InvalidInputError(
            f"--main-grids {main_grids}: every one of the {n_branches} branches needs a main "
            f"grid; use at least {n_branches}"
        )
    if sub_grids is not None and sub_grids < 1:
        raise InvalidInputError(f"--sub-grids {sub_grids}: use at least 1")
    if target_per_unit is not None and not target_per_unit > 0:
        raise InvalidInputError(f"--target-per-unit {target_per_unit}: must be > 0")
    if resolution is not None and not MIN_RESOLUTION <= resolution <= 15:
        raise InvalidInputError(
            f"--resolution {resolution}: use an H3 resolution from {MIN_RESOLUTION} to 15"
        )
    n_main = main_grids or max(n_branches, round(n_customers / CUSTOMERS_PER_MAIN))
    per_main = n_customers / n_main
    n_sub = sub_grids or int(_clip(round(per_main / CUSTOMERS_PER_SUB), SUB_GRIDS_RANGE))
    per_sub = per_main / n_sub
    tpu = target_per_unit or float(_clip(per_sub // UNITS_PER_SUB, TARGET_PER_UNIT_RANGE))
    if resolution is None:
        cap = min(per_sub / 3, PEAK_UNITS * tpu)
        resolution = next((r for r, share in PEAK_SHARE.items() if n_customers * share <= cap),
                          max(PEAK_SHARE))
    # the time limits follow the customers, not the rounding of the unit size: an estimate
    # of the units at the typical size (or the one given), so more customers never get less
    n_units = n_customers / (target_per_unit or _clip(CUSTOMERS_PER_SUB / UNITS_PER_SUB,
                                                      TARGET_PER_UNIT_RANGE))
    return DemoSizing(
        n_customers=n_customers, n_branches=n_branches, n_main=n_main, n_sub=n_sub,
        target_per_unit=tpu, resolution=resolution,
        min_resolution=min(MIN_RESOLUTION, resolution),
        time_limit_main=round(_clip(n_units / n_branches / 30, TIME_LIMIT_MAIN_RANGE), 1),
        time_limit_sub=round(_clip(n_units / n_main / 20, TIME_LIMIT_SUB_RANGE), 1),
    )
