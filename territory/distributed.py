"""Assignment past one machine: a partitioned Parquet dataset, one task per part, on Dask.

A night's table that outgrows one machine comes as a folder of Parquet parts (``part-0000
.parquet``..., Hive-style sub-folders such as ``day=2026-11-28/`` included). Every part is
assigned by :func:`territory.assign.assign_file` in a task of its own, on the workers of a
``dask.distributed`` cluster, and written to the same relative path under the output folder:
one output part per input part, same names, every row in its part's order. The output folder
appears whole or not at all (:func:`territory.atomic.atomic_dir`).

The index is shipped once per worker process, not once per task: the driver makes sure the
plan's ``<plan>.index`` sidecar is current, and each worker opens it with the plan from
the shared path the first time a task needs it and keeps it (a few tens of MB) for the next
tasks. The plan, its sidecar, the input and the output folder must therefore be on storage
every worker sees at the same path (NFS, a cluster file system); a worker that sees another
plan there is refused by the plan's fingerprint.

Without a client the same tasks run one after another in this process: the single-process
result a cluster run must equal row by row.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from territory.assign import STATUSES, Columns, Progress, assign_file, open_index
from territory.assign_index import AssignmentIndex, index_path
from territory.atomic import atomic_dir
from territory.crs_check import CrsMismatchWarning, Warn
from territory.errors import InvalidInputError
from territory.plan import Plan
from territory.tables import CHUNK_ROWS

if TYPE_CHECKING:
    from distributed import Client

_PARQUET = (".parquet", ".pq")


def dataset_parts(src: str | Path) -> list[Path]:
    """The Parquet parts of a dataset folder, relative to it, in name order; files whose
    name starts with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``, temporaries) are not
    parts, as for Arrow's dataset reader."""
    src = Path(src)
    if not src.is_dir():
        raise InvalidInputError(f"input {src}: not a folder; a distributed run reads a "
                                "partitioned Parquet dataset (a folder of .parquet parts)")
    parts = sorted(
        p.relative_to(src) for p in src.rglob("*")
        if p.is_file() and p.suffix.lower() in _PARQUET
        and not any(s.startswith((".", "_")) for s in p.relative_to(src).parts)
    )
    if not parts:
        raise InvalidInputError(f"input {src}: no .parquet parts in the folder")
    return parts


@functools.lru_cache(maxsize=2)
def _worker_index(plan_path: str, fingerprint: str) -> AssignmentIndex:
    """The index of ``plan_path``, opened once per worker process and kept."""
    plan = Plan.load(plan_path)
    if plan.fingerprint != fingerprint:
        raise InvalidInputError(
            f"plan {plan_path} on this worker is another plan (fingerprint "
            f"{plan.fingerprint[:12]}…, the driver's {fingerprint[:12]}…); put the plan on "
            "storage every worker sees at the same path"
        )
    return AssignmentIndex.load(index_path(plan_path), plan)


@dataclass(frozen=True)
class _Done:
    """What a task sends back: counts per status and the CRS warnings of its part."""

    counts: np.ndarray
    warnings: tuple[str, ...]


def _assign_part(plan_path: str, fingerprint: str, src: str, dst: str, columns: Columns,
                 chunk_size: int) -> _Done:
    said: list[str] = []
    counts = assign_file(_worker_index(plan_path, fingerprint), src, dst, columns=columns,
                         chunk_size=chunk_size, on_warning=said.append)
    return _Done(np.array([counts[s] for s in STATUSES]), tuple(said))


def assign_dataset(plan_path: str | Path, src: str | Path, dst: str | Path, *,
                   columns: Columns | None = None, client: Client | None = None,
                   chunk_size: int = CHUNK_ROWS, progress: Progress | None = None,
                   on_warning: Warn | None = None) -> dict[str, int]:
    """Assign every part of the Parquet dataset ``src`` into the dataset ``dst``.

    One task per part on ``client``'s cluster (in this process, in order, when ``client``
    is None); each output part has its input part's relative path, rows and columns, with
    :data:`territory.assign.OUTPUT_COLUMNS` added. ``progress(rows_done, total)`` is called
    as parts finish. Returns the number of rows per status. CRS warnings of the parts are
    reported once each through ``on_warning`` (else as :class:`CrsMismatchWarning`).
    """
    columns = Columns() if columns is None else columns
    plan_path, src, dst = Path(plan_path).resolve(), Path(src).resolve(), Path(dst).resolve()
    parts = dataset_parts(src)
    if dst == src or src in dst.parents:
        raise InvalidInputError(f"output {dst}: inside the input dataset; write elsewhere")
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size={chunk_size}: give a positive number of rows")
    fingerprint = open_index(plan_path).plan.fingerprint  # the sidecar is current
    total = sum(pq.read_metadata(src / p).num_rows for p in parts)
    counts = np.zeros(len(STATUSES), dtype=np.int64)
    said: dict[str, None] = {}
    done = 0

    def finish(res: _Done) -> None:
        nonlocal done, counts
        counts += res.counts
        said.update(dict.fromkeys(res.warnings))
        done += int(res.counts.sum())
        if progress is not None:
            progress(done, total)

    with atomic_dir(dst, replace=True) as tmp:
        args = [(str(plan_path), fingerprint, str(src / p), str(tmp / p), columns, chunk_size)
                for p in parts]
        if client is None:
            for a in args:
                finish(_assign_part(*a))
        else:
            _run(client, args, finish)
    warn: Callable[[str], None] = on_warning or (
        lambda m: warnings.warn(m, CrsMismatchWarning, stacklevel=3))
    for message in said:
        warn(message)
    return dict(zip(STATUSES, counts.tolist(), strict=True))


def _run(client: Client, args: list[tuple], finish: Callable[[_Done], None]) -> None:
    """Every part as a task on the cluster, finished as they complete; the first failure
    cancels the rest and is raised as the task raised it."""
    from distributed import as_completed

    futures = [client.submit(_assign_part, *a, pure=False) for a in args]
    try:
        for future in as_completed(futures):
            finish(future.result())
    finally:
        client.cancel(futures)


@contextmanager
def cluster_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler`` (``tcp://host:8786``), or of a local
    cluster of ``workers`` processes on 127.0.0.1 (one thread each, no dashboard), closed
    (with the local cluster) at the end of the block."""
    if (scheduler is None) == (workers is None):
        raise InvalidInputError("give --scheduler ADDRESS or --workers N (not both)")
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers {workers}: give at least 1")
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with (LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                       host="127.0.0.1", dashboard_address=None) as cluster,
          Client(cluster) as client):
        yield client
