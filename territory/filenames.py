"""File names made from data: a grid id or a service area is hostile text like any other.

Grid ids come from the operator's boundary file (a branch is its district code) and a
service area from an upload's name: either can hold ``../``, ``/`` or a NUL byte. Every map,
print and export file named from one goes through :func:`safe_filename`, so no id can write
outside the folder it is given, and the ordinary ids (``350203-M01``) keep their names.
"""

from __future__ import annotations

import hashlib
import re

#: Characters kept in a file name: letters and digits of any script (Chinese names stay
#: readable), ``_``, ``-`` and ``.``; every other run becomes one ``_``.
_UNSAFE_RUN = re.compile(r"[^\w.-]+")
#: Names Windows reserves whatever the extension (a plan folder is often zipped for it).
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                       *(f"LPT{i}" for i in range(1, 10))})
#: Characters of a sanitised name kept before its hash (file systems allow 255 bytes, and
#: a CJK character takes 3 in UTF-8).
MAX_STEM = 60


def safe_filename(name: object) -> str:
    """``name`` (a grid id, a service area) as one file name component, unchanged when it is
    already safe (``350203-M01`` stays ``350203-M01``).

    Anything else (a path separator, ``..``, a control character, a leading dot, a reserved
    Windows name, excessive length) is replaced by ``_`` and a short hash of the original is
    appended, so two ids that differ only in such characters (``a/b`` and ``a_b``) still get
    two files, and no name can leave the folder it is written in.
    """
    text = str(name)
    cleaned = _UNSAFE_RUN.sub("_", text).strip("._")[:MAX_STEM].rstrip("._")
    if cleaned and cleaned == text and cleaned.upper().split(".")[0] not in _RESERVED:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else digest
