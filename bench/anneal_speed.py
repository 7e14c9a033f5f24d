#!/usr/bin/env python
"""The annealing kernel's speed on fixed work: proposals per CPU second.

The districting suite's runs are anytime (they stop at the time limit), so their CPU
seconds measure the machine's load, not the kernel. Here the Partitioner runs a fixed
number of annealing epochs (``max_epochs``, a time limit far away) on each tract graph of
``bench/districting/`` (±0.5 % population, boundary objective, seed 0): the same seed and
epochs give the same walk on any machine, so the CPU seconds spent inside the kernel
(``anneal_chunk``, timed with ``time.process_time``) compare two versions of the code, and
equal cut edges and moves show that the walk itself did not change.

    PYTHONPATH=$PWD .venv/bin/python bench/anneal_speed.py [--epochs 11]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from networkx.readwrite import json_graph

import territory.optimize.anneal as kernel
from territory.optimize import Partitioner

ROOT = Path(__file__).resolve().parent / "districting"
GRAPHS = {"CT_tract": 5, "KY_tract": 6, "OR_tract": 5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=11)
    a = ap.parse_args()
    inner = kernel.anneal_chunk
    for name, k in GRAPHS.items():
        g = json_graph.adjacency_graph(json.loads((ROOT / "graphs" / f"{name}.json")
                                                  .read_text()))
        spent = {"cpu": 0.0, "proposals": 0}

        def timed(*args, spent=spent):
            c = time.process_time()
            out = inner(*args)
            spent["cpu"] += time.process_time() - c
            spent["proposals"] += int(args[13])  # n_iter
            return out

        kernel.anneal_chunk = timed
        p = Partitioner(k, measures={"population": 0.005}, objective="boundary",
                        time_limit=900, max_epochs=a.epochs, random_state=0).solve(g)
        kernel.anneal_chunk = inner
        rate = spent["proposals"] / max(spent["cpu"], 1e-9) / 1e6
        print(f"{name}: cut {p.objective_:.0f}, epochs {p.epochs_}, moves {p.moves_}, "
              f"{spent['proposals'] / 1e6:.1f} M proposals in {spent['cpu']:.2f} CPU s "
              f"({rate:.1f} M/CPU s)")


if __name__ == "__main__":
    main()
