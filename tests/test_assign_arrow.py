"""The Arrow batch path (``assign_file``) against the pandas path (``assign_frame``) and the
exact lookup, row by row: every status, every input column, order, CSV and Parquet, GB18030,
hostile cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from territory.assign import OUTPUT_COLUMNS, PLAN_COLUMNS, Columns, assign_file, assign_frame
from territory.crs import from_wgs84, to_wgs84
from territory.errors import InvalidInputError
from territory.units import locate_points

WGS = Columns(crs="wgs84")


def _read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _same_results(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Output columns equal row by row (ids and reasons as text, blank for none)."""
    for name in OUTPUT_COLUMNS:
        if name == "distance_m":
            np.testing.assert_array_equal(pd.to_numeric(got[name]).to_numpy(float),
                                          pd.to_numeric(want[name]).to_numpy(float))
        else:
            a = got[name].astype(object).where(got[name].notna(), "").astype(str)
            b = want[name].astype(object).where(want[name].notna(), "").astype(str)
            assert a.tolist() == b.tolist(), name


@pytest.fixture(scope="module")
def every_status(plan, inside_points) -> pd.DataFrame:
    """Rows of every status and reason, as text cells, a per-row crs column among them."""
    x, y = inside_points
    gx, gy = from_wgs84(x[:3], y[:3], "gcj02")
    rows = [
        ("ok", str(x[0]), str(y[0]), ""), ("ok-gcj", str(gx[1]), str(gy[1]), "gcj02"),
        ("outside", "118.2", "24.3", ""), ("text", "abc", "24.5", ""),
        ("blank", "", "", ""), ("half", str(x[2]), "", ""), ("range", "200", "24.5", ""),
        ("badcrs", str(x[3]), str(y[3]), "mars"), ("inf", "inf", "24.5", ""),
        ("nan", "nan", "nan", "WGS84"), ("spaces", f" {x[4]} ", f" {y[4]}", " "),
        ("ok2", str(x[5]), str(y[5]), "wgs84"), ("far", "-70", "-40", ""),
    ]
    df = pd.DataFrame(rows, columns=["id", "lng", "lat", "sys"])
    df["名称"] = ["客户" + r for r in df["id"]]
    df["code"] = [f"{i:03d}" for i in range(len(df))]
    return df


def test_csv_path_equals_frame_path_and_exact_lookup(plan, index, every_status, tmp_path):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    every_status.to_csv(src, index=False)
    cols = Columns(crs="wgs84", crs_column="sys")
    counts = assign_file(index, src, dst, columns=cols, chunk_size=4)
    got = _read_csv(dst)
    assert list(got.columns) == [*every_status.columns, *OUTPUT_COLUMNS, *PLAN_COLUMNS]
    pd.testing.assert_frame_equal(got[every_status.columns], every_status)  # cells as given
    want = assign_frame(index, _read_csv(src), columns=cols)
    _same_results(got, want)
    status = dict(zip(got["id"], got["status"], strict=True))
    assert {status[k] for k in ("ok", "ok-gcj", "ok2", "spaces")} == {"ok"}
    assert {status[k] for k in ("outside", "far")} == {"outside"}
    assert {status[k] for k in ("text", "blank", "half", "range", "badcrs", "inf", "nan")} == {
        "invalid"}
    assert counts == got["status"].value_counts().reindex(list(counts), fill_value=0).to_dict()
    # the oracle: ok rows' sub-grids by the exact point-in-unit rule
    ok = got[got["status"] == "ok"]
    wx = pd.to_numeric(ok["lng"].str.strip()).to_numpy(copy=True)
    wy = pd.to_numeric(ok["lat"].str.strip()).to_numpy(copy=True)
    is_gcj = (ok["sys"] == "gcj02").to_numpy()
    wx[is_gcj], wy[is_gcj] = to_wgs84(wx[is_gcj], wy[is_gcj], "gcj02")
    unit = locate_points(plan.units, wx, wy)
    assert ok["sub_grid_id"].tolist() == plan.units["sub_grid_id"].to_numpy()[unit].tolist()


def test_parquet_path_keeps_types_and_equals_frame_path(plan, index, tmp_path):
    n = 3000
    rng = np.random.default_rng(4)
    b = plan.units.total_bounds
    lng = rng.uniform(b[0] - 0.01, b[2] + 0.01, n)
    lat = rng.uniform(b[1] - 0.01, b[3] + 0.01, n)
    lng[::50], lat[::70], lng[::91] = np.nan, np.inf, 300.0
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "lng": pa.array(lng, mask=np.arange(n) % 37 == 0),  # nulls and NaN both
        "lat": pa.array(lat),
        "when": pa.array(pd.date_range("2026-01-01", periods=n, freq="min")),
        "tag": pa.array([["a", "b", None][i % 3] for i in range(n)]).dictionary_encode(),
    })
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, src, row_group_size=700)
    seen = []
    assign_file(index, src, dst, columns=WGS, chunk_size=1000,
                progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1000, n), (2000, n), (3000, n)]
    out = pq.read_table(dst)
    assert out.column_names == [*table.column_names, *OUTPUT_COLUMNS, *PLAN_COLUMNS]
    kept = out.select(table.column_names)
    assert kept.schema == table.schema  # every input column, of its type
    pd.testing.assert_frame_equal(kept.to_pandas(), table.to_pandas())  # NaN equals NaN
    assert pa.types.is_dictionary(out.schema.field("sub_grid_id").type)
    want = assign_frame(index, table.to_pandas(types_mapper=pd.ArrowDtype), columns=WGS)
    _same_results(out.to_pandas(), want)
    ok = out.column("status").to_numpy(zero_copy_only=False) == "ok"
    unit = locate_points(plan.units, lng[ok], lat[ok])
    assert (out.column("sub_grid_id").to_numpy(zero_copy_only=False)[ok]
            == plan.units["sub_grid_id"].to_numpy()[unit]).all()


def test_gb18030_csv_and_decode_errors(index, every_status, tmp_path):
    src = tmp_path / "gb.csv"
    every_status.to_csv(src, index=False, encoding="gb18030")
    cols = Columns(crs="wgs84", crs_column="sys")
    assign_file(index, src, tmp_path / "out.csv", columns=cols, encoding="gb18030")
    got = _read_csv(tmp_path / "out.csv")  # the output is UTF-8
    assert got["名称"].tolist() == every_status["名称"].tolist()
    want = assign_frame(index, every_status, columns=cols)
    _same_results(got, want)
    with pytest.raises(InvalidInputError, match=r"line 1 \(byte 15\).*gb18030"):
        assign_file(index, src, tmp_path / "o.csv", columns=cols)  # read as UTF-8
    assert not (tmp_path / "o.csv").exists()


def test_empty_and_header_only_inputs(index, tmp_path):
    head = tmp_path / "head.csv"
    head.write_text("id,lng,lat\n", encoding="utf-8")
    assert sum(assign_file(index, head, tmp_path / "o.parquet", columns=WGS).values()) == 0
    assert pq.read_schema(tmp_path / "o.parquet").names == ["id", "lng", "lat",
                                                            *OUTPUT_COLUMNS, *PLAN_COLUMNS]
    with pytest.raises(InvalidInputError, match="'lng'"):
        assign_file(index, head, tmp_path / "o.csv", columns=Columns(lng="x", crs="wgs84"))


_cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(113.9, 114.4), st.floats(22.3, 22.8),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "abc", "１１８", "0x10",
                     " 118.1 ", "118,1", "NULL", "\"", "24.5\n"]),
    st.none(),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_cell, _cell), min_size=1, max_size=12),
       chunk=st.integers(1, 5))
def test_no_row_lost_on_hostile_cells(index, tmp_path_factory, rows, chunk):
    """Text CSV and float Parquet with NaN, inf, words and blanks in the coordinates: every
    row comes out once, in order, with the pandas path's status and reason."""
    folder = tmp_path_factory.mktemp("hostile")
    text = pd.DataFrame({"n": [str(i) for i in range(len(rows))],
                         "lng": ["" if a is None else str(a) for a, _ in rows],
                         "lat": ["" if b is None else str(b) for _, b in rows]})
    text.to_csv(folder / "in.csv", index=False)
    assign_file(index, folder / "in.csv", folder / "out.csv", columns=WGS, chunk_size=chunk)
    got = _read_csv(folder / "out.csv")
    want = assign_frame(index, _read_csv(folder / "in.csv"), columns=WGS)
    assert got["n"].tolist() == text["n"].tolist()
    _same_results(got, want)
    floats = pa.table({"n": pa.array(range(len(rows))),
                       "lng": pa.array([a if isinstance(a, float) else None for a, _ in rows],
                                       type=pa.float64()),
                       "lat": pa.array([b if isinstance(b, float) else None for _, b in rows],
                                       type=pa.float64())})
    pq.write_table(floats, folder / "in.parquet")
    assign_file(index, folder / "in.parquet", folder / "out.parquet", columns=WGS,
                chunk_size=chunk)
    out = pq.read_table(folder / "out.parquet")
    assert out.column("n").to_pylist() == list(range(len(rows)))
    _same_results(out.to_pandas(),
                  assign_frame(index, floats.to_pandas(types_mapper=pd.ArrowDtype),
                               columns=WGS))


def test_points_on_another_continent_are_outside_with_a_nearest_grid(plan, index):
    """Beyond the plan's UTM zone the local projection gives inf: the nearest grid and the
    geodesic distance come from the nearest boundary vertex (brute force here, pyproj.Geod
    over every vertex of the service area's boundary)."""
    import pyproj
    import shapely

    from territory.assign import assign

    x, y = np.array([18.0, -70.0, 0.0]), np.array([0.0, -40.0, 0.0])
    res = assign(index, x, y, crs="wgs84")
    assert res.status.tolist() == ["outside"] * 3
    coast = shapely.get_coordinates(shapely.boundary(shapely.union_all(
        plan.units.geometry.values)))
    geod = pyproj.Geod(ellps="WGS84")
    for i in range(3):
        d = geod.inv(np.full(len(coast), x[i]), np.full(len(coast), y[i]),
                     coast[:, 0], coast[:, 1])[2]
        assert res.distance_m[i] == pytest.approx(d.min(), rel=1e-4)
        assert res.nearest_grid_id[i] is not None


def _many(plan, n: int, seed: int) -> pa.Table:
    """``n`` customers over the plan's bounds (the sea and the mainland around the island
    outside it; a few without coordinates), numbered in file order."""
    rng = np.random.default_rng(seed)
    b = plan.units.total_bounds
    lng = rng.uniform(b[0], b[2], n)
    lat = rng.uniform(b[1], b[3], n)
    lng[rng.integers(0, n, n // 1000)] = np.nan
    return pa.table({"cid": np.arange(n, dtype=np.int64), "lng": lng, "lat": lat,
                     "note": pa.array(np.where(np.arange(n) % 3 == 0, "家庭", "政企"))})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_large_file_in_many_chunks_equals_the_exact_lookup(plan, index, tmp_path, fmt):
    """200 000 rows in 16 chunks, read ahead and written behind on threads of their own:
    every row once, in input order, each with the in-process assignment of its coordinates
    (statuses, nearest grids and distances) and the exact point-in-unit owner."""
    from territory.assign import assign

    n = 200_000
    table = _many(plan, n, seed=7)
    src, dst = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, src, row_group_size=50_000)
    else:
        pacsv.write_csv(table, src)
    counts = assign_file(index, src, dst, columns=WGS, chunk_size=13_331)
    out = (pq.read_table(dst) if fmt == "parquet"
           else pacsv.read_csv(dst, convert_options=pacsv.ConvertOptions(
               column_types={"sub_grid_id": pa.string(), "nearest_grid_id": pa.string()},
               strings_can_be_null=True)))
    assert out.num_rows == n and sum(counts.values()) == n
    assert out.column("cid").to_pylist() == list(range(n))  # none lost, none reordered
    x = table.column("lng").to_numpy()
    y = table.column("lat").to_numpy()
    want = assign(index, x, y, crs="wgs84")
    assert out.column("status").to_pylist() == want.status.tolist()
    assert out.column("sub_grid_id").to_pylist() == want.sub_grid_id.tolist()
    assert out.column("nearest_grid_id").to_pylist() == want.nearest_grid_id.tolist()
    np.testing.assert_array_equal(out.column("distance_m").to_numpy(zero_copy_only=False),
                                  want.distance_m)
    exact = locate_points(plan.units, x, y)
    owner = np.append(plan.units["sub_grid_id"].to_numpy(dtype=object), None)[exact]
    assert out.column("sub_grid_id").to_pylist() == owner.tolist()
    assert counts["invalid"] == int(np.isnan(x).sum()) and counts["outside"] > n // 20


def test_the_plan_that_assigned_is_in_every_row_and_the_parquet_metadata(plan, index,
                                                                         every_status,
                                                                         tmp_path):
    src = tmp_path / "in.csv"
    every_status.to_csv(src, index=False)
    cols = Columns(crs="wgs84", crs_column="sys")
    assign_file(index, src, tmp_path / "out.parquet", columns=cols, chunk_size=5)
    assign_file(index, src, tmp_path / "out.csv", columns=cols, chunk_size=5)
    table = pq.read_table(tmp_path / "out.parquet")
    meta = table.schema.metadata
    assert meta[b"territory.plan_id"].decode() == plan.plan_id
    assert meta[b"territory.plan_version"].decode() == str(plan.version)
    assert set(table.column("plan_id").to_pylist()) == {plan.plan_id}
    assert set(table.column("plan_version").to_pylist()) == {plan.version}
    assert pa.types.is_integer(table.schema.field("plan_version").type)
    text = _read_csv(tmp_path / "out.csv")  # invalid rows too: every row says which plan
    assert text["plan_id"].tolist() == [plan.plan_id] * len(every_status)
    assert text["plan_version"].tolist() == [str(plan.version)] * len(every_status)
    # a Parquet input's own metadata is kept beside the plan's
    pq.write_table(pa.table({"lng": [118.1], "lat": [24.5]},
                            metadata={"source": "crm-export"}), tmp_path / "m.parquet")
    assign_file(index, tmp_path / "m.parquet", tmp_path / "m-out.parquet", columns=WGS)
    meta = pq.read_schema(tmp_path / "m-out.parquet").metadata
    assert meta[b"source"] == b"crm-export" and b"territory.plan_id" in meta
    # an input that already says a plan is refused, not overwritten
    again = tmp_path / "again.csv"
    text.drop(columns=list(OUTPUT_COLUMNS)).to_csv(again, index=False)
    with pytest.raises(InvalidInputError, match=r"\['plan_id', 'plan_version'\].*rename"):
        assign_file(index, again, tmp_path / "x.csv", columns=cols)
    assert not (tmp_path / "x.csv").exists()


def test_a_late_error_stops_the_run_cleanly(plan, index, tmp_path):
    """A malformed row far into the file, met by the read-ahead thread, and a failing
    progress callback both end the run with the error, leave no output and no thread."""
    import threading

    src = tmp_path / "in.csv"
    good = "\n".join(f"{i},118.1,24.5" for i in range(60_000))
    src.write_text(f"cid,lng,lat\n{good}\n60000,118.1,24.5,extra\n", encoding="utf-8")
    before = threading.active_count()
    with pytest.raises(InvalidInputError, match=r"after row \d+.*well formed"):
        assign_file(index, src, tmp_path / "out.csv", columns=WGS, chunk_size=7000)

    def stop(done: int, total: int | None) -> None:
        if done >= 14_000:
            raise KeyboardInterrupt

    src.write_text(f"cid,lng,lat\n{good}\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        assign_file(index, src, tmp_path / "out.parquet", columns=WGS, chunk_size=7000,
                    progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert threading.active_count() == before
