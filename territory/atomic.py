"""Atomic writes: every file the library writes appears whole or not at all.

A file is written under a temporary name in its own folder and renamed over the target
(``os.replace`` is atomic on POSIX), so a reader never sees half a file and a crash leaves
the previous version intact. The data is flushed to disk (``fsync``) before the rename and
the folder after it, so a power cut cannot reorder them either.

A set of files that belong together (a plan: its GeoPackage, metadata, metrics and index) is
written into a temporary folder that is renamed into place once complete (:func:`atomic_dir`);
a symbolic link can then be switched to it in one step (:func:`replace_symlink`).

Temporary names carry the writer's process id, ``.{name}.{pid}-{token}.tmp{suffix}``, so
that :func:`sweep` can tell the leftovers of a killed run (their writer is gone) from the
files of a run in progress, and never touches a file that is not ours by name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: When this process started using the module: legacy temporary names (no pid) older than
#: this belong to runs that are over.
STARTED = time.time()

# .{name}.{pid}-{token}.tmp{suffix}, plus SQLite's side files of a GeoPackage being written
_OURS = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?P<suffix>\.[^.]+?)?"
                   r"(?:-journal|-wal|-shm)?", re.DOTALL)  # any character: names are free
# what earlier versions left (tempfile.mkstemp: 8 characters of [a-z0-9_])
_LEGACY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]+?)?"
                     r"(?:-journal|-wal|-shm)?", re.DOTALL)


def _reserve(folder: Path, name: str, suffix: str) -> tuple[Path, int]:
    """A fresh temporary path in ``folder`` and the mode a new file gets there.

    The name is reserved by creating the file with mode 0666 (what ``open`` asks for):
    the mode it gets is the umask's answer (0644 under the usual 022), read back without
    touching the process umask, which other threads share.
    """
    while True:
        tmp = folder / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def fsync_path(path: str | Path) -> None:
    """Flush one file, or one folder's entries (not the files below it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush a folder written from scratch: every file and folder below it, then itself."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            _fsync_tree(child)
        elif child.is_file() and not child.is_symlink():
            fsync_path(child)
    fsync_path(folder)


@contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds.

    The temporary name keeps the extension (GDAL picks its behaviour by it: LIBKML writes a
    folder for a name without ``.kml``) and does not exist yet (GDAL drivers refuse to open
    an existing empty file). The file gets ``mode``, by default the one any new file gets
    (0666 less the umask: 0644 usually), whatever the writer used; it is flushed to disk,
    renamed over ``path``, and the folder flushed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, usual = _reserve(path.parent, path.name, path.suffix)
    os.unlink(tmp)
    try:
        yield tmp
        os.chmod(tmp, usual if mode is None else mode)
        if tmp.is_dir():  # some GDAL drivers write a folder
            _fsync_tree(tmp)
        else:
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` that becomes ``path`` when the block succeeds.

    For files that must appear together: write them all into the yielded folder (with
    :func:`atomic_path` or directly); everything is flushed, then the folder is renamed into
    place in one step. ``path`` must not exist yet (a folder cannot replace another one
    atomically; publish a new name and switch a link to it instead), unless ``replace``: then
    an existing folder is first moved aside, so that for an instant neither is at ``path``
    (fine for a dataset written anew each night, not for a plan). On failure the temporary
    folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = _reserve(path.parent, path.name, "")
    os.unlink(tmp)
    os.mkdir(tmp, 0o777)  # the umask applies, as to any folder
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if replace and os.path.lexists(path):
            old, _ = _reserve(path.parent, path.name, "")
            os.unlink(old)
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_path(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def replace_symlink(link: str | Path, target: str | Path) -> Path:
    """Point ``link`` at ``target`` in one step (a new link renamed over the old one or over
    a file of that name); readers see the old target or the new one, never none."""
    link = Path(link)
    tmp, _ = _reserve(link.parent, link.name, "")
    os.unlink(tmp)
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_path(link.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return link


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: object) -> Path:
    """``data`` as indented UTF-8 JSON (non-JSON values as text), written atomically."""
    return write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_leftover(path: Path) -> bool:
    """Whether ``path`` is a temporary file or folder of ours whose writer is gone.

    Ours by name only (see the module docstring); gone means its process no longer runs,
    or, for the names of earlier versions that carry no process id, that it is older than
    this process. A file of a live writer, this process included, is never a leftover.
    """
    match = _OURS.fullmatch(path.name) or _LEGACY.fullmatch(path.name)
    if match is None or (match["suffix"] and match["suffix"] != Path(match["name"]).suffix):
        return False
    if match.re is _OURS:
        pid = int(match["pid"])
        return pid != os.getpid() and not _alive(pid)
    try:
        return path.lstat().st_mtime < STARTED
    except FileNotFoundError:
        return False


def sweep(folder: str | Path) -> list[Path]:
    """Remove the leftovers of killed runs from ``folder`` (not below it); returns them.

    Only temporary names of ours whose writer is gone (:func:`is_leftover`) are removed: a
    user's file, or a file another running process is writing, is left alone.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:
        if not is_leftover(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to force: say so and go on
            log.warning("could not remove the leftover %s: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        log.info("removed %d leftovers of killed runs in %s", len(removed), folder)
    return removed
