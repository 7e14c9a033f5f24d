"""Contiguity repair and the local search that balances and compacts a partition.

The search moves one boundary unit at a time to a neighbouring grid. A move is allowed only
when the unit is not locked, its grid keeps at least one unit and stays connected. Candidate
moves are scored all at once with numpy; the best non-conflicting ones (no two touching the
same grid in one round) are applied, then all scores are recomputed. Two phases build the
start that the annealing (:mod:`.anneal`) then improves for the rest of the time budget:

1. **balance** — minimise sum over grids and measures of ((load - mean) / mean)^2 plus a
   small share of the compactness objective, until every measure is within tolerance;
2. **compact** — moves that lower the compactness objective and keep every grid within
   tolerance.

The balance model's move constraints (:mod:`.constraints`: nesting, a disruption budget)
are kept by every move: their cost joins each score, and a move they do not allow is
skipped. :meth:`LocalSearch.settle` then takes back moves the constraints' cost no longer
needs (a rebalance's least churn).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from territory.optimize.balance import BalanceModel
from territory.optimize.constraints import leaves_connected, movable_mask
from territory.optimize.problem import Problem


def grid_components(P: Problem, labels: np.ndarray, land_only: bool = False) -> np.ndarray:
    """Component id of every node within its own grid (edges joining equal labels only;
    ``land_only``: island bridges left out)."""
    A = P.adjacency(land_only).tocoo()
    same = labels[A.row] == labels[A.col]
    B = sp.csr_matrix((np.ones(same.sum()), (A.row[same], A.col[same])), shape=(P.n, P.n))
    return connected_components(B, directed=False)[1]


def is_contiguous(P: Problem, labels: np.ndarray,
                  mainland: np.ndarray | None = None) -> np.ndarray:
    """Per grid label (0..k-1) whether the grid is one connected piece, judged as
    :func:`territory.graph.contiguous_grids` judges a plan: besides being connected (over
    bridges too), at most one of its land pieces touches another grid by land, so a grid
    may hold whole islands beside its land but not part of an island across a bridge.
    ``mainland`` (booleans): units not on an island, whose pieces count as touching in
    any case (a main grid's land touches the city's other grids, which ``P`` lacks)."""
    comp = grid_components(P, labels)
    k = int(labels.max()) + 1
    pieces = pd.Series(comp).groupby(labels).nunique().reindex(range(k), fill_value=0)
    land = grid_components(P, labels, land_only=True)
    A = P.adjacency(land_only=True).tocoo()
    out = A.row[labels[A.row] != labels[A.col]]  # land contacts with another grid
    if mainland is not None:
        out = np.concatenate([out, np.flatnonzero(mainland)])
    touching = pd.Series(land[out]).groupby(labels[out]).nunique()
    touching = touching.reindex(range(k), fill_value=0).to_numpy()
    return (pieces.to_numpy() == 1) & (touching <= 1)


def repair_contiguity(
    P: Problem, labels: np.ndarray, k: int, keep_nodes: np.ndarray | None = None
) -> np.ndarray:
    """Make every grid one piece: keep one component per grid, hand the rest to neighbours.

    The kept component is the one holding the grid's anchor (``keep_nodes[j]``, e.g. its
    centre or a locked unit) or else the one with most presence. Orphans join, wave by wave,
    the adjacent grid they share most boundary with, so every grid stays connected.
    """
    labels = labels.copy()
    comp = grid_components(P, labels)
    df = pd.DataFrame({"g": labels, "c": comp, "p": P.presence})
    best = df.groupby(["g", "c"])["p"].sum().reset_index().sort_values("p", ascending=False)
    keep = dict(best.drop_duplicates("g")[["g", "c"]].itertuples(index=False, name=None))
    if keep_nodes is not None:
        for j, node in enumerate(keep_nodes):
            if node >= 0 and labels[node] == j:
                keep[j] = comp[node]
    kept = np.array([keep.get(g, -1) == c for g, c in zip(labels, comp, strict=True)])
    labels[~kept] = -1
    A = P.adjacency().tocoo()
    mu = P.W.sum(axis=0) / k
    while (labels < 0).any():
        lab_r, lab_c = labels[A.row], labels[A.col]
        sel = (lab_r < 0) & (lab_c >= 0)
        if not sel.any():  # nodes cut off from every grid (a disconnected input graph)
            raise RuntimeError("graph is not connected; join its components first")
        # an orphan joins the lightest adjacent grid (ties: the longest shared boundary), so
        # the repair does not undo the balance the LP reached
        load = np.zeros((k, P.W.shape[1]))
        np.add.at(load, labels[labels >= 0], P.W[labels >= 0])
        rel = (load / mu).mean(axis=1)
        e = pd.DataFrame({"i": A.row[sel], "g": lab_c[sel], "w": A.data[sel]})
        pick = e.groupby(["i", "g"])["w"].sum().reset_index()
        pick["rel"] = rel[pick["g"].to_numpy()]
        pick = pick.sort_values(["i", "rel", "w"], ascending=[True, True, False])
        pick = pick.drop_duplicates("i")
        labels[pick["i"].to_numpy()] = pick["g"].to_numpy()
    return labels


@dataclass
class SearchStats:
    moves: int = 0
    rounds: int = 0
    phase1_rounds: int = 0


class LocalSearch:
    """Boundary-move local search over a contiguous labelling (see module docstring).

    ``balance`` gives the k x m load bounds and judges moves (see :mod:`.balance`);
    ``objective`` is ``"distance"`` (presence-weighted distance to the grid centre, centres
    ``centres`` fixed or re-centred on each grid's medoid) or ``"boundary"`` (total shared
    boundary length between different grids).
    """

    def __init__(
        self,
        P: Problem,
        labels: np.ndarray,
        balance: BalanceModel,
        *,
        objective: str,
        movable: np.ndarray | None = None,
        centres: np.ndarray | None = None,
        fixed_centres: bool = False,
        rng: np.random.Generator,
    ) -> None:
        self.P, self.k, self.model = P, balance.n_grids, balance
        self.lo, self.hi = balance.bounds()
        k = self.k
        self.objective = objective
        self.constraints = balance.constraints
        self.movable = movable_mask(self.constraints, P.n)
        if movable is not None:
            self.movable &= movable
        self.rng = rng
        self.labels = labels.astype(np.int64).copy()
        self.lab = self.labels.tolist()
        self.nbrs = [P.indices[P.indptr[i] : P.indptr[i + 1]].tolist() for i in range(P.n)]
        self.mu = balance.scale
        self.loads = np.zeros((k, P.W.shape[1]))
        np.add.at(self.loads, self.labels, P.W)
        self.size = np.bincount(self.labels, minlength=k)
        self.fixed_centres = fixed_centres
        self.centres = centres
        if objective == "distance" and not fixed_centres:
            self.recentre()
        A = P.adjacency().tocoo()
        self.er, self.ec, self.ew = A.row, A.col, A.data
        self.stats = SearchStats()

    # -- objective pieces -------------------------------------------------------------
    def recentre(self) -> None:
        """Centre of each grid := its presence-weighted medoid (the unit minimising the
        weighted distance of the grid's units to it)."""
        xy, p = self.P.xy, self.P.presence
        cents = np.zeros((self.k, 2))
        # one sort instead of k scans of the labels
        order = np.argsort(self.labels, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(self.labels, minlength=self.k))[:-1])
        for j, idx in enumerate(members):
            w = p[idx] + 1e-12
            c = (xy[idx] * w[:, None]).sum(axis=0) / w.sum()
            # the exact medoid for grids of up to 400 units, else among 64 near the centroid
            near = idx if len(idx) <= 400 else idx[np.argsort(np.hypot(*(xy[idx] - c).T))[:64]]
            cost = (np.hypot(xy[idx, 0][:, None] - xy[near, 0], xy[idx, 1][:, None] - xy[near, 1])
                    * w[:, None]).sum(axis=0)
            cents[j] = xy[near[np.argmin(cost)]]
        self.centres = cents

    def compactness(self) -> float:
        if self.objective == "distance":
            d = np.hypot(*(self.P.xy - self.centres[self.labels]).T)
            return float((self.P.presence * d).sum())
        cut = self.labels[self.er] != self.labels[self.ec]
        return float(self.ew[cut].sum() / 2)

    def violation(self) -> float:
        return float(self.model.excess(self.loads).sum())

    # -- candidate moves --------------------------------------------------------------
    def _candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lab = self.labels
        sel = (lab[self.er] != lab[self.ec]) & self.movable[self.er]
        i, b = self.er[sel], lab[self.ec[sel]]
        key = np.unique(i * self.k + b)
        i, b = key // self.k, key % self.k
        return i, lab[i], b

    def _delta_compact(self, i, a, b) -> np.ndarray:
        if self.objective == "distance":
            xy, c = self.P.xy, self.centres
            return self.P.presence[i] * (
                np.hypot(*(xy[i] - c[b]).T) - np.hypot(*(xy[i] - c[a]).T)
            )
        lab = self.labels
        S = sp.csr_matrix(
            (self.ew, (self.er, lab[self.ec])), shape=(self.P.n, self.k)
        )  # boundary length from each node to each grid
        return np.asarray(S[i, a]).ravel() - np.asarray(S[i, b]).ravel()

    def _delta_balance(self, w, a, b) -> np.ndarray:
        """Change of the quadratic balance score when loads ``w`` (rows) move from a to b."""
        La, Lb = self.loads[a], self.loads[b]
        fa, fb = np.isfinite(self.hi[a]), np.isfinite(self.hi[b])
        mu2 = self.mu**2
        da = np.where(fa, ((La - w - self.mu) ** 2 - (La - self.mu) ** 2) / mu2, 0)
        db = np.where(fb, ((Lb + w - self.mu) ** 2 - (Lb - self.mu) ** 2) / mu2, 0)
        return (da + db).sum(axis=1)

    def _viol(self, L, j) -> np.ndarray:
        return self.model.excess(L, j)

    def _delta_violation(self, w, a, b) -> np.ndarray:
        """Change of the total tolerance violation when loads ``w`` move from a to b."""
        return self.model.move_delta(self.loads, w, a, b)

    def _cost(self, i, a, b) -> np.ndarray:
        """The move constraints' cost of each move (0 without constraints)."""
        out = np.zeros(len(i))
        for c in self.constraints:
            out = out + c.cost(i, a, b)
        return out

    def _allowed(self, i: int, a: int, b: int) -> bool:
        return all(c.allows(i, a, b) for c in self.constraints)

    def _keeps_feasible(self, i, a, b) -> np.ndarray:
        return self.model.admissible(self.loads, self.P.W[i], a, b)

    def _feasible_compact(self, i, a, b) -> np.ndarray:
        """Compactness change of each move; +inf where it would break a tolerance."""
        return np.where(self._keeps_feasible(i, a, b), self._delta_compact(i, a, b), np.inf)

    def _balance_score(self, w, a, b, compact: np.ndarray | float = 0.0) -> np.ndarray:
        """Lexicographic in effect: less violation first, then the quadratic, then shape."""
        return 1e3 * self._delta_violation(w, a, b) + self._delta_balance(w, a, b) + compact

    # -- applying moves ---------------------------------------------------------------
    def _stays_connected(self, i: int, a: int) -> bool:
        return leaves_connected(i, self.nbrs, self.lab, a)

    def _move(self, i: int, a: int, b: int) -> None:
        w = self.P.W[i]
        self.loads[a] -= w
        self.loads[b] += w
        self.size[a] -= 1
        self.size[b] += 1
        self.labels[i] = b
        self.lab[i] = b
        self.stats.moves += 1
        for c in self.constraints:
            c.moved(i, a, b)

    def _undo(self, moves: list[tuple[int, int, int]], marks: list) -> None:
        """Take back tentative ``moves`` (last first) and the constraints' state."""
        for i, a, b in reversed(moves):
            self._move(i, b, a)
            self.stats.moves -= 2
        for c, mk in zip(self.constraints, marks, strict=True):
            c.restore(mk)

    def _round(self, score: np.ndarray, i, a, b, limit: float = 0.0, rescore=None,
               deadline: float = np.inf) -> int:
        """Apply the best moves with score < limit, best first; return how many.

        With ``rescore`` every move is scored again against the current loads just before it
        is applied, so one grid can take part in many moves of a round; without it, a grid
        takes part in one move per round (the precomputed scores stay exact).
        """
        order = np.argsort(score, kind="stable")
        order = order[score[order] < limit]
        touched: set[int] = set()
        applied = 0
        for n_seen, t in enumerate(order.tolist()):
            if n_seen % 256 == 255 and time.monotonic() > deadline:
                break  # a round over 50 000 units can outlast the phase's share of time
            ai, bi, ii = int(a[t]), int(b[t]), int(i[t])
            if self.lab[ii] != ai or not any(self.lab[v] == bi for v in self.nbrs[ii]):
                continue  # an earlier move of this round changed the unit's surroundings
            if rescore is None:
                if ai in touched or bi in touched:
                    continue
            elif rescore(np.array([ii]), np.array([ai]), np.array([bi]))[0] >= limit:
                continue
            if not self._stays_connected(ii, ai) or not self._allowed(ii, ai, bi):
                continue
            self._move(ii, ai, bi)
            touched.add(ai)
            touched.add(bi)
            applied += 1
        self.stats.rounds += 1
        return applied

    # -- phases -----------------------------------------------------------------------
    def balance(self, deadline: float, compact_weight: float = 0.01) -> bool:
        """Phase 1; return whether every grid is within tolerance."""
        scale = max(self.compactness(), 1e-9) / self.k
        stall = 0
        while time.monotonic() < deadline and self.violation() > 0:
            before = self.violation()
            i, a, b = self._candidates()
            if len(i) == 0:
                break
            def score_of(i, a, b):
                comp = compact_weight * self._delta_compact(i, a, b) / scale
                return self._balance_score(self.P.W[i], a, b, comp + self._cost(i, a, b))

            moved = self._round(score_of(i, a, b), i, a, b, limit=-1e-12, rescore=score_of,
                                deadline=deadline)
            moved += self._swap_round(deadline)
            if moved == 0:
                moved = self._chain_round(deadline)
            self.stats.phase1_rounds += 1
            stall = stall + 1 if self.violation() >= before - 1e-12 else 0
            if moved == 0 or stall > 30:
                break
        return self.violation() <= 1e-12

    def _swap_round(self, deadline: float, per_side: int = 12) -> int:
        """Exchange two units across the border of grids that violate the tolerance.

        A swap moves the difference of two units' loads, which fixes grids that are high in
        one measure and low in another, where every single move makes something worse.
        """
        over = np.flatnonzero(self._viol(self.loads, np.arange(self.k)) > 1e-12)
        if len(over) == 0:
            return 0
        i, a, b = self._candidates()
        sel = np.isin(a, over) | np.isin(b, over)
        i, a, b = i[sel], a[sel], b[sel]
        pairs = pd.DataFrame({"i": i, "a": a, "b": b})
        touched: set[int] = set()
        applied = 0
        for (ga, gb), grp in pairs.groupby(["a", "b"]):
            if time.monotonic() > deadline:
                break
            if ga > gb or ga in touched or gb in touched:
                continue
            back = pairs[(pairs.a == gb) & (pairs.b == ga)]
            if back.empty:
                continue
            ui = grp["i"].to_numpy()[:per_side * 4]
            uj = back["i"].to_numpy()[:per_side * 4]
            gi, gj = np.meshgrid(ui, uj, indexing="ij")
            gi, gj = gi.ravel(), gj.ravel()
            w = self.P.W[gi] - self.P.W[gj]
            fa, fb = np.full(len(gi), ga), np.full(len(gi), gb)
            score = self._balance_score(w, fa, fb, self._cost(gi, fa, fb)
                                        + self._cost(gj, fb, fa))
            for t in np.argsort(score)[:8]:
                if score[t] >= -1e-12:
                    break
                if self._try_swap(int(gi[t]), int(gj[t]), int(ga), int(gb)):
                    touched.update((int(ga), int(gb)))
                    applied += 1
                    break
        return applied

    def _chain_round(self, deadline: float, first: int = 40, second: int = 120) -> int:
        """Two moves in a row, u: A -> B then v: B -> C, for grids A that still violate.

        Where every single move and swap leaves a grid stuck at its bound (its neighbours
        are full too), passing a unit on through a neighbour reaches a grid with room.
        """
        viol = self._viol(self.loads, np.arange(self.k))
        applied = 0
        i_all, a_all, b_all = self._candidates()
        for A in np.argsort(-viol):
            if viol[A] <= 1e-12 or time.monotonic() > deadline:
                break
            # chains leaving A (A over) and chains entering A (A under) are both tried
            for out in (True, False):
                sel = a_all == A if out else b_all == A
                f_i, f_a, f_b = i_all[sel][:first], a_all[sel][:first], b_all[sel][:first]
                best = (-1e-12, None)
                for u, fa, fb in zip(f_i.tolist(), f_a.tolist(), f_b.tolist(), strict=True):
                    mid = fb if out else fa  # the grid the chain passes through
                    nxt = (a_all == mid) & (b_all != A) if out else (b_all == mid) & (a_all != A)
                    s_i = i_all[nxt][:second]
                    if len(s_i) == 0:
                        continue
                    s_a, s_b = a_all[nxt][:second], b_all[nxt][:second]
                    d = self._chain_delta(u, fa, fb, s_i, s_a, s_b) + self._cost(
                        s_i, s_a, s_b) + self._cost(np.array([u]), np.array([fa]),
                                                    np.array([fb]))
                    t = int(np.argmin(d))
                    if d[t] < best[0]:
                        best = (d[t], (u, fa, fb, int(s_i[t]), int(s_a[t]), int(s_b[t]), out))
                if best[1] is not None and self._try_chain(*best[1]):
                    applied += 1
                    break
            if applied:
                i_all, a_all, b_all = self._candidates()
                viol = self._viol(self.loads, np.arange(self.k))
        return applied

    def _chain_delta(self, u, fa, fb, s_i, s_a, s_b) -> np.ndarray:
        """Score of move u: fa -> fb followed by each move s_i: s_a -> s_b."""
        W, L = self.P.W, self.loads
        grids = np.stack([np.full(len(s_i), fa), np.full(len(s_i), fb), s_a, s_b], axis=1)
        delta = np.zeros((len(s_i), 4, W.shape[1]))
        delta[:, 0] -= W[u]
        delta[:, 1] += W[u]
        delta[:, 2] -= W[s_i]
        delta[:, 3] += W[s_i]
        total = np.zeros(len(s_i))
        for r in range(len(s_i)):  # merge repeated grids (fb == s_a always)
            g, inv = np.unique(grids[r], return_inverse=True)
            d = np.zeros((len(g), W.shape[1]))
            np.add.at(d, inv, delta[r])
            before = L[g]
            after = before + d
            fin = np.isfinite(self.hi[g])
            quad = np.where(fin, ((after - self.mu) ** 2 - (before - self.mu) ** 2), 0)
            total[r] = 1e3 * (self._viol(after, g) - self._viol(before, g)).sum() + (
                quad / self.mu**2).sum()
        return total

    def _try_chain(self, u, fa, fb, v, sa, sb, out) -> bool:
        first, then = ((u, fa, fb), (v, sa, sb)) if out else ((v, sa, sb), (u, fa, fb))
        if (self.lab[first[0]] != first[1] or not self._stays_connected(first[0], first[1])
                or not self._allowed(*first)):
            return False
        marks = [c.mark() for c in self.constraints]
        self._move(*first)
        ok = (self.lab[then[0]] == then[1]
              and any(self.lab[x] == then[2] for x in self.nbrs[then[0]])
              and self._stays_connected(then[0], then[1]) and self._allowed(*then))
        if ok:
            self._move(*then)
            return True
        self._undo([first], marks)
        return False

    def _try_swap(self, i: int, j: int, a: int, b: int) -> bool:
        if not self._stays_connected(i, a) or not self._allowed(i, a, b):
            return False
        marks = [c.mark() for c in self.constraints]
        self._move(i, a, b)
        if (any(self.lab[v] == a for v in self.nbrs[j]) and self._stays_connected(j, b)
                and self._allowed(j, b, a)):
            self._move(j, b, a)
            return True
        self._undo([(i, a, b)], marks)
        return False

    def settle(self, deadline: float) -> int:
        """Moves that lower the constraints' cost without adding to the balance excess
        (a rebalance takes back the moves its budget no longer needs); return how many."""
        total = 0
        while time.monotonic() < deadline:
            i, a, b = self._candidates()
            if len(i) == 0:
                break

            def score_of(i, a, b):
                dv = self._delta_violation(self.P.W[i], a, b)
                return np.where(dv <= 1e-12, self._cost(i, a, b), np.inf)

            moved = self._round(score_of(i, a, b), i, a, b, limit=-1e-12, rescore=score_of,
                                deadline=deadline)
            total += moved
            if moved == 0:
                break
        return total

    def follow(self, target: np.ndarray, deadline: float,
               valid: Callable[[LocalSearch], bool] | None = None, partial: bool = True
               ) -> int:
        """Walk towards ``target`` labels (a guide: :mod:`.churn_guide`); return how many
        units moved.

        First all at once, when ``valid`` says the end state keeps every rule: a unit
        that must leave with the ones behind it (a strip that would be cut off from its
        grid if it left first, and cannot join before the unit between it and its new grid
        has) moves in no order that one-at-a-time checks allow. The units are moved in
        waves, each unit once it is beside its new grid, so that the constraints follow
        (a unit joins the sub-grid it is beside). Otherwise, or if ``valid`` refuses,
        boundary moves that every rule allows, in rounds until none is left (unless not
        ``partial``)."""
        jumped = self._jump(target, valid) if valid is not None else None
        if jumped is not None:
            return jumped
        total = 0
        if not partial:
            return total

        def score_of(i, a, b):
            return np.where(target[i] == b, -1.0, np.inf)

        while time.monotonic() < deadline:
            i, a, b = self._candidates()
            moved = self._round(score_of(i, a, b), i, a, b, limit=-0.5, rescore=score_of,
                                deadline=deadline)
            total += moved
            if moved == 0:
                break
        return total

    def _jump(self, target: np.ndarray, valid: Callable[[LocalSearch], bool]) -> int | None:
        """All of ``target`` at once (see :meth:`follow`): how many units moved, or None
        (undone) unless ``valid``."""
        before = self.labels.copy()
        marks = [c.mark() for c in self.constraints]
        done: list[tuple[int, int, int]] = []
        todo = np.flatnonzero((target != self.labels) & self.movable)
        while len(todo):
            beside = [i for i in todo.tolist()
                      if any(self.lab[j] == target[i] for j in self.nbrs[i])]
            if not beside:
                break
            for i in beside:
                done.append((i, self.lab[i], int(target[i])))
                self._move(*done[-1])
            todo = todo[target[todo] != self.labels[todo]]
        if len(todo) == 0 and valid(self):
            return int((self.labels != before).sum())
        self._undo(done, marks)
        return None

    def compact(self, deadline: float) -> None:
        """Phase 2: strictly improving, feasibility-keeping moves."""
        eps = 1e-9 * max(self.compactness(), 1.0) / self.k
        while time.monotonic() < deadline:
            if self.objective == "distance" and not self.fixed_centres:
                self.recentre()
            i, a, b = self._candidates()
            if len(i) == 0:
                return
            if self._round(self._feasible_compact(i, a, b), i, a, b, limit=-eps,
                           rescore=self._feasible_compact, deadline=deadline) == 0:
                return

    def clone(self) -> LocalSearch:
        """An independent copy of the mutable state (labels, loads, centres) sharing the
        read-only problem arrays: one per parallel annealing walk."""
        other = copy.copy(self)
        other.labels = self.labels.copy()
        other.lab = list(self.lab)
        other.loads = self.loads.copy()
        other.size = self.size.copy()
        other.centres = None if self.centres is None else np.array(self.centres, copy=True)
        other.stats = SearchStats()
        return other

    def set_labels(self, labels: np.ndarray) -> None:
        self.labels = labels.copy()
        self.lab = self.labels.tolist()
        self.loads[:] = 0
        np.add.at(self.loads, self.labels, self.P.W)
        self.size = np.bincount(self.labels, minlength=self.k)
        if self.objective == "distance" and not self.fixed_centres:
            self.recentre()
