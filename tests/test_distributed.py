"""Assignment of a partitioned Parquet dataset on a local multi-process Dask cluster equals
the single-process result, row by row and part by part."""

from __future__ import annotations

import distributed
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from territory.assign import OUTPUT_COLUMNS, PLAN_COLUMNS, Columns, assign_file
from territory.cli import app
from territory.distributed import assign_dataset, dataset_parts
from territory.errors import InvalidInputError

WGS = Columns(crs="wgs84")


@pytest.fixture(scope="module")
def client():
    with (distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                   host="127.0.0.1", dashboard_address=None) as cluster,
          distributed.Client(cluster) as c):
        yield c


@pytest.fixture
def dataset(plan, tmp_path):
    """Four parts of uneven sizes, two in a Hive-style sub-folder, and files that are not
    parts (``_SUCCESS``, a hidden temporary)."""
    rng = np.random.default_rng(9)
    b = plan.units.total_bounds
    src = tmp_path / "customers"
    sizes = {"part-0.parquet": 1500, "part-1.parquet": 10, "day=2/part-0.parquet": 2200,
             "day=2/part-1.parquet": 0}
    start = 0
    for name, n in sizes.items():
        lng = rng.uniform(b[0] - 0.01, b[2] + 0.01, n)
        lng[::41] = np.nan
        table = pa.table({"cid": pa.array(np.arange(start, start + n)),
                          "lng": lng, "lat": rng.uniform(b[1] - 0.01, b[3] + 0.01, n),
                          "note": [f"客户{i}" for i in range(n)]})
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, src / name, row_group_size=500)
        start += n
    (src / "_SUCCESS").write_text("")
    (src / ".part-9.parquet.tmp").write_text("half a file")
    return src


def _frame(path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def test_dask_equals_single_process_row_by_row(plan_file, index, dataset, client, tmp_path):
    parts = dataset_parts(dataset)
    assert [str(p) for p in parts] == ["day=2/part-0.parquet", "day=2/part-1.parquet",
                                       "part-0.parquet", "part-1.parquet"]
    seen = []
    counts = assign_dataset(plan_file, dataset, tmp_path / "out", columns=WGS, client=client,
                            chunk_size=700, progress=lambda d, t: seen.append((d, t)))
    alone = assign_dataset(plan_file, dataset, tmp_path / "alone", columns=WGS,
                           chunk_size=700)
    assert counts == alone and sum(counts.values()) == 3710
    assert counts["invalid"] > 0 and counts["outside"] > 0 and counts["ok"] > 0
    assert seen[-1] == (3710, 3710) and len(seen) == 4
    written = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*")
                     if p.is_file())
    assert written == parts  # one output part per input part, same names, nothing else
    for part in parts:
        got = _frame(tmp_path / "out" / part)
        pd.testing.assert_frame_equal(got, _frame(tmp_path / "alone" / part))
        assign_file(index, dataset / part, tmp_path / "one.parquet", columns=WGS)
        pd.testing.assert_frame_equal(got, _frame(tmp_path / "one.parquet"))
        assert list(got.columns) == ["cid", "lng", "lat", "note", *OUTPUT_COLUMNS,
                                     *PLAN_COLUMNS]
        pd.testing.assert_frame_equal(got[["cid", "lng", "lat", "note"]],
                                      _frame(dataset / part))


def test_cli_on_a_scheduler_and_refusals(plan_file, dataset, client, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["assign", str(plan_file), str(dataset), "--out", str(out),
                              "--crs", "wgs84", "--scheduler", client.scheduler.address])
    assert res.exit_code == 0, res.output
    assert "3,710 rows" in res.output
    assert sum(pq.read_table(out / p).num_rows for p in dataset_parts(out)) == 3710
    res = runner.invoke(app, ["assign", str(plan_file), str(dataset / "part-0.parquet"),
                              "--out", str(out), "--crs", "wgs84", "--scheduler",
                              client.scheduler.address])
    assert res.exit_code == 2 and "not a folder" in res.output
    res = runner.invoke(app, ["assign", str(plan_file), str(dataset), "--out", str(out),
                              "--scheduler", client.scheduler.address])
    assert res.exit_code == 2 and "--crs" in res.output
    with pytest.raises(InvalidInputError, match="inside the input"):
        assign_dataset(plan_file, dataset, dataset / "out", columns=WGS, client=client)
    with pytest.raises(InvalidInputError, match="'x'"):
        assign_dataset(plan_file, dataset, tmp_path / "bad", columns=Columns(lng="x",
                                                                             crs="wgs84"),
                       client=client)
    assert not (tmp_path / "bad").exists()  # no half-written dataset
