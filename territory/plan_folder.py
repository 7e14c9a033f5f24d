"""A plan folder: the files of a plan, published as one set.

``territory plan --out DIR`` writes a plan as several files that must agree (the GeoPackage,
its metadata and metrics, its assignment index). Replacing them one by one would let a crash
leave the new GeoPackage beside the old metadata, so each plan is written whole into a
version folder of its own, flushed to disk, and then published by switching one link::

    DIR/versions/<plan_id>-v<version>/   plan.gpkg, plan.gpkg.index, plan.json,
                                         metrics.json
    DIR/current -> versions/<plan_id>-v<version>
    DIR/plan.gpkg -> current/plan.gpkg   (and plan.gpkg.index, plan.json, metrics.json)

The documented paths (``DIR/plan.gpkg`` …) stay readable for users and tools and always
show one plan, old or new. The last :data:`KEEP` versions are kept; the leftovers of killed
runs (temporary files, unfinished version folders) are swept when a plan is published or a
command starts on the folder.

A folder written by an earlier version (plain files, no ``current``) becomes a plan folder at
its first publication; that one switch replaces the files one by one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from territory.assign_index import AssignmentIndex, index_path
from territory.atomic import atomic_dir, replace_symlink, sweep, write_text
from territory.plan import PLAN_FILE, Plan

log = logging.getLogger(__name__)

VERSIONS = "versions"
CURRENT = "current"
META_FILE = "plan.json"
METRICS_FILE = "metrics.json"
#: the files of a plan, each also reachable as ``DIR/<name>`` through ``DIR/current``
FILES = (PLAN_FILE, index_path(PLAN_FILE).name, META_FILE, METRICS_FILE)
#: versions kept in ``DIR/versions`` (the current one and the ones published before it)
KEEP = 3


def _json(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, default=str)


def publish(plan: Plan, folder: str | Path) -> Path:
    """Write ``plan`` with its metadata, metrics and assignment index into ``folder`` as
    one set; returns the plan's documented path, ``folder/plan.gpkg``.

    Readers of ``folder`` see the previous plan until the new one is complete on disk, then
    the new one; a crash at any point leaves one of the two, whole.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_folder(folder)
    name = f"{plan.plan_id}-v{plan.version}"
    version = folder / VERSIONS / name
    if not version.exists():  # plan ids are fresh: an existing one is this very plan
        with atomic_dir(version) as tmp:
            gpkg = plan.save(tmp / PLAN_FILE)
            AssignmentIndex.build(plan).save(index_path(gpkg))
            write_text(tmp / META_FILE, _json(plan.meta()))
            write_text(tmp / METRICS_FILE, _json(plan.metrics))
    replace_symlink(folder / CURRENT, Path(VERSIONS) / name)
    for file in FILES:
        link = folder / file
        target = Path(CURRENT) / file
        if not (link.is_symlink() and Path(link.readlink()) == target):
            replace_symlink(link, target)
    _prune(folder)
    log.info("plan %s v%d published in %s", plan.plan_id, plan.version, version)
    return folder / PLAN_FILE


def sweep_folder(folder: str | Path) -> list[Path]:
    """Remove what killed runs left in a plan or output folder: temporary files and
    unfinished version folders whose writer is gone (see :func:`territory.atomic.sweep`)."""
    folder = Path(folder)
    return sweep(folder) + sweep(folder / VERSIONS)


def _prune(folder: Path) -> None:
    """Keep the current version and the :data:`KEEP` - 1 published most recently before it."""
    current = (folder / CURRENT).resolve()
    versions = [p for p in (folder / VERSIONS).iterdir()
                if p.is_dir() and not p.name.startswith(".") and p.resolve() != current]
    versions.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in versions[KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)
