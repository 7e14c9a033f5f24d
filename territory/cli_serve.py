"""``territory serve``: the HTTP service (FastAPI on uvicorn) over a plan store.

The web stack is imported inside the command, so the core library and its other commands
never load it.

Several worker processes (``--workers N``) answer on one port: the kernel hands each new
connection to one of them. They share the plan store (SQLite in WAL mode, files replaced
atomically) and, through the page cache, the assignment indexes, which each worker
memory-maps rather than reads (:meth:`territory.assign_index.AssignmentIndex.load`): N
workers hold one copy of the index arrays, not N. Each worker runs its own plan-job queue
(``max_running_jobs`` each). uvicorn's standard extras (uvloop's event loop, httptools'
parser) are used when installed, as ``pip install territory`` installs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

#: The service's application factory, as uvicorn imports it in each worker process.
APP = "api.main:create_app"


def run_server(app: str = APP, *, host: str, port: int, workers: int, log_level: str,
               access_log: bool = True) -> None:
    """uvicorn on the factory ``app`` with the service's server settings (``bench/api.py``
    starts its own factory through here, so both are measured on the same settings)."""
    import uvicorn

    # "auto": uvloop and httptools when installed (uvicorn[standard]), else asyncio and h11
    uvicorn.run(app, factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log, loop="auto", http="auto")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Plan store folder (else "
                                                       "TERRITORY_DATA_DIR)")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON/TOML settings file with the API "
                                                     "keys (else TERRITORY_CONFIG)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes; one per core is "
                                                     "the usual choice")] = 1,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info, debug")]
    = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request (at level info)")]
    = True,
) -> None:
    """Serve plans, grids and customer assignment over HTTP (docs at /docs)."""
    # the app factory reads its settings from the environment, in every worker process
    if data_dir is not None:
        os.environ["TERRITORY_DATA_DIR"] = str(data_dir.resolve())
    if config is not None:
        os.environ["TERRITORY_CONFIG"] = str(config.resolve())
    run_server(host=host, port=port, workers=workers, log_level=log_level,
               access_log=access_log)
