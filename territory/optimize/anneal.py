"""Simulated annealing over boundary moves: the anytime part of the partitioner.

A move takes one unit to the grid of one of its neighbours. The energy is the compactness
objective plus a balance penalty, ``objective + penalty * excess``, where ``excess`` is the
summed relative distance of the grids' loads outside their bands (:mod:`.balance`). The
penalty starts soft, so the walk can cross plans that are briefly out of balance, and
tightens geometrically to hard while the temperature falls; only plans within every band
are recorded as the best. Contiguity is a hard rule: a unit leaves its grid only if the
grid stays connected, checked by a breadth-first search from one of the unit's same-grid
neighbours that stops as soon as it has reached the others (a few steps for most moves).

Every move also keeps the balance model's move constraints (:mod:`.constraints`), which
reach the kernel in their array forms (:func:`~territory.optimize.constraints.kernel_form`):
units that may not move, grids that neither lose nor gain, sub-grid nesting (the unit's
sub-grid stays one piece and it joins one of the new grid's sub-grids) and a disruption
budget's cap. A constraint without an array form is refused before the walk starts.

The kernel is compiled by numba with a fixed signature when this module is imported, and
cached on disk, so a solve's time limit never pays for compilation. It draws from numba's
own generator, seeded per call: the same seed and the same number of calls give the same
walk; how many calls fit in a time limit depends on the machine.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from territory.optimize.constraints import KernelForm, kernel_form, resume
from territory.optimize.recom import recombine

BOUNDARY, DISTANCE = 0, 1

# The schedule, in units of a typical move's objective change (temperature) and of the
# objective per typical unit share of a grid (penalty); proposals per epoch = SWEEPS * n.
# Tuned on the districting benchmark's tract graphs (../shared/benchmarks/districting).
SWEEPS = 1000
T_START, T_END = 2.0, 0.1
PEN_START, PEN_END = 0.3, 50.0
#: starting temperature of epoch e, as a share of T_START
REHEAT = (1.0,)
#: each epoch is GROWTH times longer than the one before (up to MAX_GROWTH times the first)
GROWTH, MAX_GROWTH = 1.6, 1000.0
#: proposals per kernel call: the deadline is checked between calls
CHUNK = 200_000
#: a plan within this share of a proven lower bound is optimal (the LP's and the MIP's own
#: tolerances are of this order)
PROVEN_RTOL = 1e-7

@nb.njit(cache=True, nogil=True)
def _leaves_connected(i, lab, indptr, indices, same, mark, queue, stamp):
    """Whether unit ``i`` can leave its part (``lab[i]``) with the part still one piece:
    a breadth-first search from one same-part neighbour that stops once it has reached
    the others (``constraints.leaves_connected``, on arrays: ``mark`` entries equal to
    ``stamp`` or ``-stamp`` are this call's, so the arrays are reused without clearing)."""
    a = lab[i]
    ns = 0
    for p in range(indptr[i], indptr[i + 1]):
        u = indices[p]
        if lab[u] == a:
            same[ns] = u
            ns += 1
    if ns == 0:
        return False  # the unit is its part's last one
    if ns == 1:
        return True
    mark[i] = stamp
    mark[same[0]] = stamp
    need = 0
    # the other neighbours are targets, marked -stamp so reaching one is O(1)
    for s in range(1, ns):
        if mark[same[s]] != -stamp and mark[same[s]] != stamp:
            mark[same[s]] = -stamp
            need += 1
    head = 0
    tail = 1
    queue[0] = same[0]
    while head < tail and need > 0:
        u = queue[head]
        head += 1
        for p in range(indptr[u], indptr[u + 1]):
            x = indices[p]
            if lab[x] == a and mark[x] != stamp:
                if mark[x] == -stamp:
                    need -= 1
                mark[x] = stamp
                queue[tail] = x
                tail += 1
    return need == 0


@nb.njit(cache=True, nogil=True)
def _sub_target(i, b, indptr, indices, elen, sub, sub_main, home, cand_s, cand_len):
    """The sub-grid of main grid ``b`` unit ``i`` would join (``SubGrids.target``): its
    home when adjacent, else the one sharing most boundary (ties: the lowest code); -1
    when none is adjacent."""
    nc = 0
    for p in range(indptr[i], indptr[i + 1]):
        s = sub[indices[p]]
        if sub_main[s] != b:
            continue
        if s == home[i]:
            return s
        for c in range(nc + 1):
            if c == nc:
                cand_s[nc] = s
                cand_len[nc] = elen[p]
                nc += 1
                break
            if cand_s[c] == s:
                cand_len[c] += elen[p]
                break
    t = -1
    for c in range(nc):
        if t < 0 or cand_len[c] > cand_len[t] or (
                cand_len[c] == cand_len[t] and cand_s[c] < cand_s[t]):
            t = c
    return -1 if t < 0 else cand_s[t]


_SIG = nb.types.Tuple((nb.float64, nb.float64, nb.int64))(
    nb.int64[::1], nb.int64[::1], nb.float64[::1],        # indptr, indices, elen
    nb.float64[:, ::1], nb.float64[:, ::1], nb.float64[:, ::1], nb.float64[::1],  # W lo hi sc
    nb.uint8[::1], nb.int64[::1],                          # movable, labels (updated)
    nb.float64[:, ::1], nb.float64[::1], nb.float64[:, ::1],  # xy, presence, centres
    nb.int64, nb.int64,                                    # objective, iterations
    nb.float64, nb.float64, nb.float64, nb.float64,        # T0, T1, penalty0, penalty1
    nb.int64, nb.int64[::1],                               # seed, best labels (out)
    # the constraints' forms (constraints.KernelForm): closed grids; nesting: sub-grids
    # (updated), main grid per sub-grid, home sub-grid, best sub-grids (out); budget:
    # weight, original labels, limit, spent before, counted on sub-grids, peak (in/out)
    nb.uint8[::1], nb.int64[::1], nb.int64[::1], nb.int64[::1], nb.int64[::1],
    nb.float64[::1], nb.int64[::1], nb.float64, nb.float64, nb.int64, nb.float64[::1],
)


@nb.njit(_SIG, cache=True, nogil=True)
def anneal_chunk(indptr, indices, elen, W, lo, hi, scale, movable, labels, xy, presence,
                 centres, objective, n_iter, T0, T1, pen0, pen1, seed, best,
                 closed, sub, sub_main, home, best_sub,
                 bweight, borig, blimit, bspent, on_sub, bpeak):
    """Run ``n_iter`` proposals from ``labels`` (updated in place); the best labelling
    within every band is written to ``best`` (and its sub-grids to ``best_sub``). Returns
    (best value or inf, the current objective, accepted moves).

    A move keeps every constraint form: the unit is movable, neither grid is closed; with
    nesting, the unit's sub-grid stays one piece without it and it joins a sub-grid of the
    new grid it touches (its home first, else the most shared boundary, ties to the lowest
    code); with a budget, the weight on moved units stays within the limit."""
    np.random.seed(seed)
    n = labels.shape[0]
    k, m = lo.shape
    nested = sub.shape[0] == n
    any_closed = False
    for j in range(closed.shape[0]):
        any_closed = any_closed or closed[j] != 0
    budgeted = bweight.shape[0] == n
    spent = bspent
    is_moved = np.zeros(n if budgeted else 0, np.bool_)
    if budgeted:
        for i in range(n):
            is_moved[i] = (sub[i] if on_sub else labels[i]) != borig[i]
            if is_moved[i]:
                spent += bweight[i]
        bpeak[0] = max(bpeak[0], spent)
    loads = np.zeros((k, m))
    size = np.zeros(k, np.int64)
    for i in range(n):
        size[labels[i]] += 1
        for t in range(m):
            loads[labels[i], t] += W[i, t]
    exc = np.zeros(k)
    n_bad = 0
    for j in range(k):
        e = 0.0
        for t in range(m):
            if loads[j, t] > hi[j, t]:
                e += (loads[j, t] - hi[j, t]) / scale[t]
            elif loads[j, t] < lo[j, t]:
                e += (lo[j, t] - loads[j, t]) / scale[t]
        exc[j] = e
        if e > 1e-12:
            n_bad += 1
    # current objective
    cur = 0.0
    for i in range(n):
        if objective == BOUNDARY:
            for p in range(indptr[i], indptr[i + 1]):
                if labels[indices[p]] != labels[i]:
                    cur += 0.5 * elen[p]
        else:
            c = labels[i]
            cur += presence[i] * np.hypot(xy[i, 0] - centres[c, 0], xy[i, 1] - centres[c, 1])
    best_val = np.inf
    if n_bad == 0:
        best_val = cur
        best[:] = labels
        if nested:
            best_sub[:] = sub
    mark = np.zeros(n, np.int64)
    stamp = 0
    queue = np.empty(n, np.int64)
    max_deg = 1
    for i in range(n):
        max_deg = max(max_deg, indptr[i + 1] - indptr[i])
    same = np.empty(max_deg, np.int64)
    cand_s = np.empty(max_deg, np.int64)
    cand_len = np.empty(max_deg)
    la = np.empty(m)
    lb = np.empty(m)
    fT = (T1 / T0) ** (1.0 / max(n_iter, 1))
    fP = (pen1 / pen0) ** (1.0 / max(n_iter, 1))
    T, pen = T0, pen0
    accepted = 0
    for _ in range(n_iter):
        T *= fT
        pen *= fP
        i = np.random.randint(0, n)
        if movable[i] == 0:
            continue
        deg = indptr[i + 1] - indptr[i]
        if deg == 0:
            continue
        v = indices[indptr[i] + np.random.randint(0, deg)]
        a = labels[i]
        b = labels[v]
        if a == b or size[a] <= 1:
            continue
        # objective change
        if objective == BOUNDARY:
            d_obj = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                lv = labels[indices[p]]
                if lv == a:
                    d_obj += elen[p]
                elif lv == b:
                    d_obj -= elen[p]
        else:
            d_obj = presence[i] * (
                np.hypot(xy[i, 0] - centres[b, 0], xy[i, 1] - centres[b, 1])
                - np.hypot(xy[i, 0] - centres[a, 0], xy[i, 1] - centres[a, 1]))
        # balance change
        ea = 0.0
        eb = 0.0
        for t in range(m):
            la[t] = loads[a, t] - W[i, t]
            lb[t] = loads[b, t] + W[i, t]
            if la[t] > hi[a, t]:
                ea += (la[t] - hi[a, t]) / scale[t]
            elif la[t] < lo[a, t]:
                ea += (lo[a, t] - la[t]) / scale[t]
            if lb[t] > hi[b, t]:
                eb += (lb[t] - hi[b, t]) / scale[t]
            elif lb[t] < lo[b, t]:
                eb += (lo[b, t] - lb[t]) / scale[t]
        d_exc = ea + eb - exc[a] - exc[b]
        dE = d_obj + pen * d_exc
        if dE > 0 and np.random.random() >= np.exp(-dE / T):
            continue
        if any_closed and (closed[a] != 0 or closed[b] != 0):
            continue
        t_sub = -1
        if nested:  # the unit's sub-grid stays one piece; it joins one of b's
            t_sub = _sub_target(i, b, indptr, indices, elen, sub, sub_main, home, cand_s,
                                cand_len)
            stamp += 1
            if t_sub < 0 or not _leaves_connected(i, sub, indptr, indices, same, mark,
                                                  queue, stamp):
                continue
        d_spent = 0.0
        now_moved = False
        if budgeted:  # returning to the original refunds; a unit already away costs 0
            now_moved = (t_sub if on_sub else b) != borig[i]
            if now_moved and not is_moved[i]:
                d_spent = bweight[i]
            elif is_moved[i] and not now_moved:
                d_spent = -bweight[i]
            if spent + d_spent > blimit + 1e-6:
                continue
        # contiguity of a without i: BFS from one same-grid neighbour to the others
        stamp += 1
        if not _leaves_connected(i, labels, indptr, indices, same, mark, queue, stamp):
            continue
        # apply
        labels[i] = b
        if nested:
            sub[i] = t_sub
        if budgeted:
            is_moved[i] = now_moved
            spent += d_spent
            bpeak[0] = max(bpeak[0], spent)
        size[a] -= 1
        size[b] += 1
        for t in range(m):
            loads[a, t] = la[t]
            loads[b, t] = lb[t]
        if exc[a] > 1e-12:
            n_bad -= 1
        if exc[b] > 1e-12:
            n_bad -= 1
        exc[a] = ea
        exc[b] = eb
        if ea > 1e-12:
            n_bad += 1
        if eb > 1e-12:
            n_bad += 1
        cur += d_obj
        accepted += 1
        if n_bad == 0 and cur < best_val - 1e-9:
            best_val = cur
            best[:] = labels
            if nested:
                best_sub[:] = sub
    return best_val, cur, accepted


def _arrays(P, model, objective, centres, form):
    """The kernel's arguments that stay fixed through a walk (``form``: the constraints'
    array forms, :func:`~territory.optimize.constraints.kernel_form`)."""
    lo, hi = model.bounds()
    k = model.n_grids
    xy = np.zeros((P.n, 2)) if P.xy is None else np.ascontiguousarray(P.xy, dtype=np.float64)
    cen = np.zeros((k, 2)) if centres is None else np.ascontiguousarray(centres, np.float64)
    return dict(
        indptr=np.ascontiguousarray(P.indptr, np.int64),
        indices=np.ascontiguousarray(P.indices, np.int64),
        elen=np.ascontiguousarray(P.elen, np.float64),
        W=np.ascontiguousarray(P.W, np.float64),
        lo=np.array(lo, np.float64), hi=np.array(hi, np.float64),  # writable: one kernel type
        scale=np.ascontiguousarray(model.scale, np.float64),
        movable=np.ascontiguousarray(form.movable, np.uint8),
        xy=xy, presence=np.ascontiguousarray(P.presence, np.float64), centres=cen,
        objective=np.int64(DISTANCE if objective == "distance" else BOUNDARY),
        closed=np.ascontiguousarray(form.closed, np.uint8),
        sub_main=np.ascontiguousarray(form.sub_main, np.int64),
        home=np.ascontiguousarray(form.home, np.int64),
        bweight=np.ascontiguousarray(form.weight, np.float64),
        borig=np.ascontiguousarray(form.original, np.int64),
        blimit=float(form.limit), bspent=float(form.spent), on_sub=np.int64(form.on_sub),
    )


def typical_delta(P, objective: str) -> float:
    """The size of a typical move's objective change: the temperature's unit."""
    if objective == "boundary":
        return float(np.median(P.elen)) if len(P.elen) else 1.0
    rows = np.repeat(np.arange(P.n), np.diff(P.indptr))
    step = np.hypot(*(P.xy[rows] - P.xy[P.indices]).T)
    return float(np.median(step) * np.median(P.presence)) if len(step) else 1.0


def epoch_iterations(n: int, epoch: int) -> int:
    """Proposals in annealing epoch ``epoch``: SWEEPS sweeps of the graph (at least a
    million, capped for a city), growing by GROWTH per epoch up to MAX_GROWTH, so a long
    budget becomes one slow anneal without the schedule depending on the clock."""
    base = np.clip(SWEEPS * n, 1_000_000, 5_000_000)
    return int(base * min(GROWTH**epoch, MAX_GROWTH))


def anneal(search, deadline: float, seed: int, *, segments: int = 10,
           max_epochs: int | None = None, patience: int | None = None,
           min_gain: float = 0.0, n_walks: int = 1, stop_at: float = -np.inf) -> int:
    """Anneal ``n_walks`` independent walks in parallel threads (the kernel releases the
    GIL) and keep the best plan; walk w is seeded ``seed + 7919 w``, so walk 0 is the
    single walk and more walks never give a worse plan. Returns the epochs of walk 0.

    Every move keeps the model's constraints (``search.constraints``), lowered to the
    kernel's array forms (:func:`~territory.optimize.constraints.kernel_form`: a rule
    without one is refused with :class:`~territory.optimize.constraints.NotLowered`);
    their state follows the plan kept. A walk stops once its plan's objective reaches
    ``stop_at`` (a proven lower bound: nothing better exists)."""
    # refuse a constraint the kernel cannot keep before any walk starts
    kernel_form(search.constraints, search.P.n, search.k, search.movable)
    if n_walks <= 1:
        epochs, form = _walk(search, deadline, seed, segments, max_epochs, patience,
                             min_gain, stop_at)
        resume(search.constraints, search.labels, form)
        return epochs
    from concurrent.futures import ThreadPoolExecutor

    walkers = [search.clone() for _ in range(n_walks)]
    with ThreadPoolExecutor(n_walks) as ex:
        runs = list(ex.map(
            lambda w: _walk(walkers[w], deadline, seed + 7919 * w, segments, max_epochs,
                            patience, min_gain, stop_at),
            range(n_walks)))

    def rank(w):  # within every band first, then the objective; else the least excess
        v = walkers[w].violation()
        return (v > 1e-12, v if v > 1e-12 else walkers[w].compactness())

    best = min(range(n_walks), key=rank)
    search.set_labels(walkers[best].labels)
    resume(search.constraints, search.labels, runs[best][1])
    search.stats.moves += sum(w.stats.moves for w in walkers)
    return runs[0][0]


def _walk(search, deadline: float, seed: int, segments: int, max_epochs: int | None,
          patience: int | None, min_gain: float = 0.0, stop_at: float = -np.inf
          ) -> tuple[int, KernelForm]:
    """Anneal from ``search.labels`` until ``deadline``; leave the best plan within every
    band in ``search`` (or the start, when no such plan was seen). Returns the epochs run
    and the constraints' form holding the kept plan's state (sub-grids, budget peak), for
    :func:`~territory.optimize.constraints.resume`; the constraint objects are not touched
    (parallel walks share them).

    ``patience`` stops the walk after that many epochs without a gain: an epoch whose best
    plan betters the one it started from by more than ``min_gain`` (a share of its value;
    0: any better plan), so that the hierarchy's many small jobs stop once good enough.
    The walk also stops when the best plan's objective reaches ``stop_at``.

    Epoch e starts from the best plan so far (the start for e = 0) at twice a typical
    move's change and cools to a tenth of it while the balance penalty hardens; epochs
    grow geometrically, so a long budget ends in one slow anneal. An epoch has ``segments``
    segments (the distance objective re-centres its grids between them), each run in
    kernel calls of at most CHUNK proposals, so the deadline is checked every few tens of
    milliseconds. Call j of segment s of epoch e is seeded from (seed, e, s, j): the walk
    does not depend on the clock, only how far along it gets does. For the boundary
    objective an epoch e > 0 starts from the best plan with two grids recombined
    (:mod:`.recom`, seeded from (seed, e)) when the constraints allow it
    (:attr:`~territory.optimize.constraints.KernelForm.recombinable`), a jump out of the
    best plan's basin.
    """
    import time

    P, model = search.P, search.model
    distance = search.objective == "distance"
    form = kernel_form(search.constraints, P.n, model.n_grids, search.movable)
    recombine_starts = not distance and form.recombinable  # split chosen by boundary
    recentre = distance and not search.fixed_centres
    arr = _arrays(P, model, search.objective, search.centres, form)
    peak = np.array([form.peak])
    typ = max(typical_delta(P, search.objective), 1e-12)
    per_unit = P.n / max(model.n_grids, 1)  # 1 / (a typical unit's share of a grid)
    T_hi, T_lo = T_START * typ, T_END * typ
    P_lo, P_hi = PEN_START * typ * per_unit, PEN_END * typ * per_unit
    start, start_viol = search.labels.copy(), search.violation()
    start_sub = np.ascontiguousarray(form.sub, np.int64)
    best = start.copy() if start_viol <= 1e-12 else None
    best_sub = start_sub.copy()
    best_val = search.compactness() if best is not None else np.inf
    cur, cur_sub = search.labels.copy(), start_sub.copy()
    out = np.empty(P.n, np.int64)
    out_sub = np.empty(len(start_sub), np.int64)
    epoch = 0
    last_gain = 0  # the epoch after the last improvement

    def proven() -> bool:
        return best_val <= stop_at + PROVEN_RTOL * max(1.0, abs(stop_at))

    timed_out = proven()
    while not timed_out and (max_epochs is None or epoch < max_epochs) and (
            patience is None or best is None or epoch - last_gain < patience):
        epoch_val = best_val  # the gain of this epoch is judged against it
        if best is not None:
            cur, cur_sub = best.copy(), best_sub.copy()
            if recombine_starts and epoch > 0:
                # a later epoch starts from the best plan with two grids recombined: a
                # jump single moves would need a long detour out of balance to make
                jump = recombine(P, cur, model, form.movable,
                                 np.random.default_rng(seed + 7 * epoch))
                if jump is not None:
                    cur = jump
        t0 = T_hi * REHEAT[epoch % len(REHEAT)]
        seg_iters = max(epoch_iterations(P.n, epoch) // segments, 1)
        calls = -(-seg_iters // CHUNK)
        for sgm in range(segments):
            if recentre:
                search.set_labels(cur)
                arr["centres"] = np.ascontiguousarray(search.centres, np.float64)
            seg_val, seg_best, seg_sub = np.inf, None, None
            for j in range(calls):
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                f0 = (sgm + j / calls) / segments
                f1 = (sgm + (j + 1) / calls) / segments
                val, _, moved = anneal_chunk(
                    arr["indptr"], arr["indices"], arr["elen"], arr["W"], arr["lo"],
                    arr["hi"], arr["scale"], arr["movable"], cur, arr["xy"],
                    arr["presence"], arr["centres"], arr["objective"],
                    -(-seg_iters // calls),
                    t0 * (T_lo / t0) ** f0, t0 * (T_lo / t0) ** f1,
                    P_lo * (P_hi / P_lo) ** f0, P_lo * (P_hi / P_lo) ** f1,
                    seed + 1_000_003 * epoch + 1009 * sgm + j, out,
                    arr["closed"], cur_sub, arr["sub_main"], arr["home"], out_sub,
                    arr["bweight"], arr["borig"], arr["blimit"], arr["bspent"],
                    arr["on_sub"], peak)
                search.stats.moves += moved
                if val < seg_val:  # same centres within a segment: values compare
                    seg_val, seg_best, seg_sub = val, out.copy(), out_sub.copy()
            if seg_best is not None:
                if distance:  # score on the plan's own centres
                    search.set_labels(seg_best)
                    seg_val = search.compactness()
                if seg_val < best_val - 1e-9 * max(1.0, abs(best_val)):
                    best, best_sub, best_val = seg_best, seg_sub, seg_val
                    if epoch_val == np.inf or best_val < epoch_val - min_gain * abs(epoch_val):
                        last_gain = epoch + 1
                    if proven():
                        timed_out = True  # nothing better exists
            if timed_out:
                break
        epoch += 1
    if best is not None:
        search.set_labels(best)
        form.sub = best_sub
    else:
        search.set_labels(cur)
        form.sub = cur_sub
        if search.violation() > start_viol:
            search.set_labels(start)  # keep the least unbalanced plan for the explanation
            form.sub = start_sub
    form.peak = float(peak[0])
    return epoch, form
