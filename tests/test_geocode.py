"""Chinese addresses → gazetteer entries: parsing, matching levels, review, no row lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from territory.crs import from_wgs84
from territory.geocode import MATCH_LEVELS, PLACED_LEVELS, Gazetteer, parse_address

# A small Shenzhen gazetteer: two "锦绣苑" in two districts, a science park and one of its
# buildings, a standard address, a village and a street. Coordinates given in GCJ-02 for some
# rows, as an operator exporting from a web map would.
WGS = {
    "科兴科学园": (113.9440, 22.5480), "科兴科学园A栋": (113.9445, 22.5483),
    "锦绣苑福田": (114.0550, 22.5400), "锦绣苑宝安": (113.8830, 22.5600),
    "科苑路15号": (113.9442, 22.5478), "白石洲村": (113.9650, 22.5390),
}


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    names = ["深圳市南山区粤海街道科兴科学园", "深圳市南山区粤海街道科兴科学园A栋",
             "深圳市福田区锦绣苑", "深圳市宝安区锦绣苑", "深圳市南山区科苑路15号",
             "深圳市南山区沙河街道白石洲村"]
    kinds = ["community", "building", "community", "community", "address", "village"]
    xy = np.array(list(WGS.values()))
    gx, gy = from_wgs84(xy[:, 0], xy[:, 1], "gcj02")
    table = pd.DataFrame({"address": names, "kind": kinds, "lng": gx, "lat": gy})
    return Gazetteer(table, crs="gcj02")


CASES = [
    # address, expected entry key in WGS (None: not placed), level, placed
    ("广东省深圳市南山区粤海街道科技园社区科苑路15号科兴科学园A栋1单元1201",
     "科兴科学园A栋", "building"),
    ("深圳市南山区科兴科学园Ｂ栋５０１", "科兴科学园", "community"),  # full-width, other building
    ("廣東省深圳市南山區粵海街道科興科學園A棟", "科兴科学园A栋", "building"),  # traditional
    ("深圳市南山区科兴科学圆", "科兴科学园", "community"),  # typo 园→圆
    ("深圳市 福田区 锦绣苑 3栋", "锦绣苑福田", "community"),  # spaces; same name, district 1
    ("宝安区锦绣苑12栋602", "锦绣苑宝安", "community"),  # same name, district 2
    ("南山区沙河街道白石洲村", "白石洲村", "community"),
    ("科兴科学园A栋", "科兴科学园A栋", "building"),  # missing district: unique name
]


@pytest.mark.parametrize(("text", "expected", "level"), CASES)
def test_real_looking_addresses_are_placed_at_their_level(gazetteer, text, expected, level):
    res = gazetteer.geocode([text])
    assert res.reason[0] is None, res.reason[0]
    assert res.level[0] == level and res.score[0] >= gazetteer.min_score
    np.testing.assert_allclose([res.lng[0], res.lat[0]], WGS[expected], atol=1e-5)  # GCJ-02 undone
    assert res.entry[0] in gazetteer.entries["name"].tolist()


def test_same_name_without_district_needs_review(gazetteer):
    res = gazetteer.geocode(["锦绣苑3栋"])
    assert np.isnan(res.lng[0]) and res.review[0] and res.level[0] is None
    assert "福田区" in res.candidates[0] and "宝安区" in res.candidates[0]


def test_district_only_is_never_placed(gazetteer):
    res = gazetteer.geocode(["深圳市南山区", "深圳市南山区不知名大院", "罗湖区锦绣苑"])
    assert np.isnan(res.lng).all() and res.review.all()
    assert res.level.tolist() == ["district"] * 3
    # 罗湖区 has no 锦绣苑: the two elsewhere are not borrowed
    assert res.candidates[2] is None


def test_street_restricts_candidates(gazetteer):
    # 白石洲村 is in 沙河街道; the same name asked in 粤海街道 is not that village
    res = gazetteer.geocode(["深圳市南山区粤海街道白石洲村"])
    assert np.isnan(res.lng[0])


def test_parse_address_splits_detail():
    p = parse_address("广东省深圳市南山区粤海街道科技园社区科苑路15号科兴科学园A栋1单元1201")
    assert (p.district, p.street, p.community) == ("南山区", "粤海街道", "科技园社区")
    assert (p.place, p.building, p.room) == ("科苑路15号科兴科学园", "a栋", "1单元1201")
    assert parse_address("ＡＢＣ　大厦").text == "abc大厦"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from([c[0] for c in CASES]),
                          st.none()), max_size=6))
def test_no_row_lost_or_forced(gazetteer, texts):
    """Any text: one answer per row; placed rows have coordinates, a placing level and a
    score at the threshold; unplaced ones have a reason and no coordinates."""
    res = gazetteer.geocode(texts)
    assert len(res.lng) == len(res.reason) == len(res.level) == len(texts)
    placed = np.isfinite(res.lng)
    for i in range(len(texts)):
        if placed[i]:
            assert res.level[i] in PLACED_LEVELS and res.score[i] >= gazetteer.min_score
            assert res.reason[i] is None and not res.review[i]
        else:
            assert res.reason[i] and res.level[i] in (*MATCH_LEVELS, None)
            assert res.level[i] != "building" and res.entry[i] is None


def test_no_district_cannot_prefer_a_building_over_a_namesake_elsewhere():
    """Without a district, "锦绣苑3栋" (listed in 福田) and "锦绣苑" (宝安, buildings not
    listed) are equally likely: review, not the more precise one."""
    table = pd.DataFrame({"address": ["深圳市福田区锦绣苑3栋", "深圳市宝安区锦绣苑"],
                          "lng": [114.055, 113.883], "lat": [22.54, 22.56]})
    gaz = Gazetteer(table, crs="wgs84")
    res = gaz.geocode(["锦绣苑3栋2单元", "福田区锦绣苑3栋", "宝安区锦绣苑3栋"])
    assert res.review[0] and np.isnan(res.lng[0])
    assert res.level.tolist()[1:] == ["building", "community"]
    assert res.lng[1] == 114.055 and res.lng[2] == 113.883
