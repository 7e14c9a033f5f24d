"""Point tables in the encodings CRMs export: GB18030 read as asked, decode errors located."""

from __future__ import annotations

import pandas as pd
import pytest

from territory.errors import InvalidInputError
from territory.pipeline import read_points
from territory.tables import codec, read_point_table

ROWS = pd.DataFrame({
    "customer_id": ["C1", "C2", "C3"],
    "address": ["Keji Road 1", "深圳市南山区科技园", "厦门市思明区鼓浪屿"],
    "lng": [113.95, 113.96, 118.07],
    "lat": [22.54, 22.55, 24.45],
})


@pytest.mark.parametrize("encoding", ["gb18030", "gbk", "utf-8"])
def test_csv_in_its_encoding_reads_back_the_same_text(tmp_path, encoding):
    path = tmp_path / "c.csv"
    ROWS.to_csv(path, index=False, encoding=encoding)
    got = read_points(path, crs="wgs84", encoding=encoding, name="customers")
    assert got["address"].tolist() == ROWS["address"].tolist()
    assert got["lng"].tolist() == ROWS["lng"].tolist()


def test_utf8_with_byte_order_mark(tmp_path):
    path = tmp_path / "c.csv"
    ROWS.to_csv(path, index=False, encoding="utf-8-sig")
    assert list(read_point_table(path).columns) == list(ROWS.columns)


def test_decode_error_names_line_byte_and_the_parameter(tmp_path):
    path = tmp_path / "c.csv"
    ROWS.to_csv(path, index=False, encoding="gb18030")
    data = path.read_bytes()
    with pytest.raises(UnicodeDecodeError) as oracle:  # where Python's own decoder stops
        data.decode("utf-8")
    line = data[:oracle.value.start].count(b"\n") + 1
    with pytest.raises(InvalidInputError) as err:
        read_point_table(path, name="customers")
    message = str(err.value)
    assert f"line {line} (byte {oracle.value.start})" in message
    assert "`encoding`" in message and "gb18030" in message and "--" not in message


def test_unknown_encoding_is_refused_before_reading(tmp_path):
    with pytest.raises(InvalidInputError, match="'klingon' is not a known text encoding"):
        read_point_table(tmp_path / "absent.csv", encoding="klingon")
    assert codec("UTF8") == "utf-8-sig" and codec("GB18030") == "gb18030"


@pytest.mark.parametrize("content", [b"", b"customer_id,lng,lat\n"])
def test_empty_table_says_so(tmp_path, content):
    path = tmp_path / "c.csv"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="c.csv is empty"):
        read_point_table(path, name="customers")
