"""The arrays a partition is computed on, built once from a unit graph.

The optimizer works on plain numpy arrays (CSR adjacency, a weight matrix, coordinates) so
its inner loops stay vectorised; networkx is the interchange format at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from territory.errors import InvalidInputError

_BRIDGE_LEN = 1e-6


@dataclass
class Problem:
    """A partition problem: ``n`` nodes, ``m`` balance measures.

    ``indptr``/``indices``/``elen`` are the symmetric CSR adjacency with shared boundary
    lengths (metres; 1 per edge for graphs without geometry; 0 on island bridges).
    ``xy`` holds projected coordinates in metres, or ``None`` when the graph has none.
    ``presence`` weighs each node in the distance objective.
    """

    ids: np.ndarray
    W: np.ndarray
    measures: list[str]
    indptr: np.ndarray
    indices: np.ndarray
    elen: np.ndarray
    xy: np.ndarray | None
    presence: np.ndarray
    #: how many original units each node stands for (must-stay-together groups contracted)
    group_size: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def neighbours(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def adjacency(self, land_only: bool = False) -> sp.csr_matrix:
        """The weighted adjacency; ``land_only``: without the island bridges (length 0),
        the land contacts :func:`territory.graph.contiguous_grids` judges grids by."""
        if not land_only:
            return sp.csr_matrix((self.elen, self.indices, self.indptr),
                                 shape=(self.n, self.n))
        land = self.elen > _BRIDGE_LEN
        A = sp.csr_matrix((np.where(land, self.elen, 0.0), self.indices, self.indptr),
                          shape=(self.n, self.n), copy=True)  # pruned below: not ours
        A.eliminate_zeros()
        return A

    def land_components(self) -> np.ndarray:
        """Component id of every node over land contacts alone: the mainland and islands."""
        return connected_components(self.adjacency(land_only=True), directed=False)[1]

    def subproblem(self, nodes: np.ndarray) -> Problem:
        """The problem restricted to ``nodes`` (positions), renumbered."""
        A = self.adjacency()[nodes][:, nodes].tocsr()
        A.sort_indices()
        return Problem(
            ids=self.ids[nodes],
            W=self.W[nodes],
            measures=self.measures,
            indptr=A.indptr,
            indices=A.indices,
            elen=A.data,
            xy=None if self.xy is None else self.xy[nodes],
            presence=self.presence[nodes],
        )


def problem_from_graph(g: nx.Graph, measures: list[str], allow_zero: bool = False) -> Problem:
    """Build a :class:`Problem` from a unit graph; measures must be numeric node attributes.

    A measure summing to zero has no mean to balance around; it is refused unless
    ``allow_zero`` (a single grid, where there is nothing to balance)."""
    if g.number_of_nodes() == 0:
        raise InvalidInputError("graph: no units")
    nodes = list(g.nodes)
    frame = pd.DataFrame.from_dict(dict(g.nodes(data=True)), orient="index").reindex(nodes)
    for m in measures:
        if m not in frame.columns:
            raise InvalidInputError(
                f"balance measure {m!r} is not a unit attribute; available: "
                f"{sorted(c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]))}"
            )
    W = frame[list(measures)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if W.size and not np.isfinite(W).all():
        rows = [nodes[i] for i in np.flatnonzero(~np.isfinite(W).all(axis=1))[:10]]
        raise InvalidInputError(
            f"balance measures {measures} have NaN or non-numeric values on units {rows}; "
            "fill them (e.g. with 0) before partitioning"
        )
    if (W < 0).any():
        rows = [nodes[i] for i in np.flatnonzero((W < 0).any(axis=1))[:10]]
        raise InvalidInputError(f"balance measures must be >= 0; negative on units {rows}")
    for j, m in enumerate(measures):
        if W[:, j].sum() <= 0 and not allow_zero:
            raise InvalidInputError(f"balance measure {m!r} sums to 0: nothing to balance")
    pos = {n: i for i, n in enumerate(nodes)}
    rows, cols, lens = [], [], []
    for u, v, d in g.edges(data=True):
        if u == v:
            continue
        # bridges have length 0; a tiny positive value keeps them in the sparse structure
        length = max(float(d.get("length_m", 1.0)), _BRIDGE_LEN)
        rows += [pos[u], pos[v]]
        cols += [pos[v], pos[u]]
        lens += [length, length]
    A = sp.csr_matrix((lens, (rows, cols)), shape=(len(nodes), len(nodes)))
    A.sort_indices()
    has_xy = "x" in frame.columns and "y" in frame.columns and frame[["x", "y"]].notna().all().all()
    xy = frame[["x", "y"]].to_numpy(dtype=float) if has_xy else None
    area = frame["area_m2"].to_numpy(dtype=float) if "area_m2" in frame.columns else None
    share = (W / np.maximum(W.sum(axis=0), 1e-12)).mean(axis=1)
    if area is not None and area.sum() > 0:
        share = 0.8 * share + 0.2 * area / area.sum()
    presence = share * len(nodes)
    return Problem(
        ids=np.asarray(nodes, dtype=object),
        W=W,
        measures=list(measures),
        indptr=A.indptr,
        indices=A.indices,
        elen=A.data,
        xy=xy,
        presence=presence,
    )
