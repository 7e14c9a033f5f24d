"""``territory serve``: the HTTP service (FastAPI on uvicorn) over a plan store.

The web stack is imported inside the command, so the core library and its other commands
never load it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Plan store folder (else "
                                                       "TERRITORY_DATA_DIR)")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON/TOML settings file with the API "
                                                     "keys (else TERRITORY_CONFIG)")] = None,
    workers: Annotated[int, typer.Option(help="Server processes")] = 1,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info, debug")]
    = "info",
) -> None:
    """Serve plans, grids and customer assignment over HTTP (docs at /docs)."""
    import uvicorn

    # the app factory reads its settings from the environment, in every worker process
    if data_dir is not None:
        os.environ["TERRITORY_DATA_DIR"] = str(data_dir.resolve())
    if config is not None:
        os.environ["TERRITORY_CONFIG"] = str(config.resolve())
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
