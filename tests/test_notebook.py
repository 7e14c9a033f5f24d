"""The walkthrough notebook runs top to bottom (its code cells, in order)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_runs(tmp_path):
    matplotlib.use("Agg")
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for cell in cells:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), scope)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "xiamen_plan.gpkg").exists()
    assert scope["p"].contiguous_ and max(scope["p"].max_deviation_.values()) <= 0.02 + 1e-9
    assert scope["result"].metrics["sub_grid"]["all_contiguous"]
