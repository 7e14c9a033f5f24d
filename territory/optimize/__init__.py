"""The balancing optimizer: LP, local search and the exact MIP."""

from territory.optimize.partitioner import OBJECTIVES, Partitioner

__all__ = ["OBJECTIVES", "Partitioner"]
