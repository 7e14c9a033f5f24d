"""Rook adjacency with shared lengths in metres; islands; node-link JSON."""

from __future__ import annotations

import json

import geopandas as gpd
import networkx as nx
import pytest
import shapely

from territory.errors import InvalidInputError
from territory.graph import build_graph, contiguous_grids, read_graph_json, write_graph_json
from territory.units import units_from_polygons


def squares(n: int = 3, size: float = 0.001, x0: float = 114.0, y0: float = 22.5):
    geoms, ids = [], []
    for i in range(n):
        for j in range(n):
            geoms.append(shapely.box(x0 + i * size, y0 + j * size, x0 + (i + 1) * size,
                                     y0 + (j + 1) * size))
            ids.append(f"u{i}{j}")
    gdf = gpd.GeoDataFrame({"uid": ids, "subscribers": range(n * n)}, geometry=geoms,
                           crs="EPSG:4326")
    return units_from_polygons(gdf, id_column="uid")


def test_rook_adjacency_and_shared_lengths_in_metres():
    g = build_graph(squares())
    assert g.number_of_nodes() == 9
    assert g.number_of_edges() == 12  # rook: corners do not count (queen would give 20)
    assert not g.has_edge("u00", "u11")
    side_ns = g.edges["u00", "u01"]["length_m"]  # a horizontal edge: 0.001 deg of longitude
    side_ew = g.edges["u00", "u10"]["length_m"]  # a vertical edge: 0.001 deg of latitude
    assert side_ns == pytest.approx(102.9, rel=0.01)
    assert side_ew == pytest.approx(110.7, rel=0.01)
    assert g.nodes["u11"]["area_m2"] == pytest.approx(side_ns * side_ew, rel=0.01)
    assert not g.graph["islands"]


def test_islands_are_joined_and_reported():
    units = squares()
    far = gpd.GeoDataFrame({"uid": ["isle"], "subscribers": [1]},
                           geometry=[shapely.box(114.01, 22.5, 114.011, 22.501)],
                           crs="EPSG:4326")
    units = pd_concat(units, units_from_polygons(far, id_column="uid"))
    g = build_graph(units)
    assert nx.is_connected(g)
    (isl,) = g.graph["islands"]
    assert isl["units"] == ["isle"] and isl["distance_m"] > 700
    u, v = isl["joined"]
    assert g.edges[u, v]["bridge"] and g.edges[u, v]["length_m"] == 0
    # a grid made of the island alone is contiguous: only water separates it
    labels = {n: ("island" if n == "isle" else "land") for n in g.nodes}
    assert contiguous_grids(g, labels) == {"island": True, "land": True}
    # a grid split across land by another grid is not
    labels = {n: ("a" if n in ("u00", "u22") else "b") for n in g.nodes}
    assert contiguous_grids(g, labels)["a"] is False


def pd_concat(a, b):
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat([a, b]), crs=a.crs).sort_index()


def test_enclave_is_reported():
    ring = shapely.box(114.0, 22.5, 114.003, 22.503).difference(
        shapely.box(114.001, 22.501, 114.002, 22.502))
    hole = shapely.box(114.001, 22.501, 114.002, 22.502)
    gdf = gpd.GeoDataFrame({"uid": ["ring", "hole"], "subscribers": [5, 1]},
                           geometry=[ring, hole], crs="EPSG:4326")
    g = build_graph(units_from_polygons(gdf, id_column="uid"))
    assert g.graph["enclaves"] == [{"unit": "hole", "surrounded_by": "ring"}]


def test_json_round_trip_and_gerrychain_links(tmp_path):
    g = build_graph(squares())
    path = tmp_path / "g.json"
    write_graph_json(g, path)
    back = read_graph_json(path)
    assert set(back.nodes) == set(g.nodes) and back.number_of_edges() == g.number_of_edges()
    assert back.nodes["u11"]["x"] == pytest.approx(g.nodes["u11"]["x"])
    # GerryChain writes "links" and may name coordinates differently
    data = json.loads(path.read_text())
    data["links"] = data.pop("edges")
    for n in data["nodes"]:
        n["cx"], n["cy"] = n.pop("x"), n.pop("y")
    path.write_text(json.dumps(data))
    back = read_graph_json(path, xy=("cx", "cy"))
    assert back.graph["has_xy"] and back.nodes["u11"]["x"] == pytest.approx(g.nodes["u11"]["x"])


@pytest.mark.parametrize("text", ["not json", '{"nodes": [{"x": 1}]}', "[]"])
def test_malformed_graph_files(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match="bad.json"):
        read_graph_json(path)


def test_missing_graph_file(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        read_graph_json(tmp_path / "none.json")
