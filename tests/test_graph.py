"""Rook adjacency with shared lengths in metres; islands; networkx JSON in both forms."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import gerrychain
import networkx as nx
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.readwrite import json_graph

from territory.errors import InvalidInputError
from territory.graph import (
    build_graph,
    contiguous_grids,
    induced_subgraph,
    induced_subgraphs,
    read_graph_json,
    write_graph_json,
)
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


DATA = Path(__file__).resolve().parent / "data"
#: The districting benchmark graphs, in ../shared beside the clone (where CI has it).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "districting" / "graphs"


@pytest.mark.parametrize("form", ["node-link", "adjacency"])
def test_json_round_trip_in_both_forms(tmp_path, form):
    g = build_graph(squares())
    path = tmp_path / "g.json"
    write_graph_json(g, path, form=form)
    assert ("adjacency" in json.loads(path.read_text())) == (form == "adjacency")
    back = read_graph_json(path)
    assert set(back.nodes) == set(g.nodes)
    assert {frozenset(e) for e in back.edges} == {frozenset(e) for e in g.edges}
    for n, d in g.nodes(data=True):
        assert back.nodes[n]["subscribers"] == d["subscribers"]
        assert back.nodes[n]["x"] == pytest.approx(d["x"])
    for u, v, d in g.edges(data=True):
        assert back.edges[u, v]["length_m"] == pytest.approx(d["length_m"])
    assert back.graph["has_xy"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(0, 30), seed=st.integers(0, 10_000),
       form=st.sampled_from(["node-link", "adjacency"]), ids=st.sampled_from([int, str]))
def test_round_trip_keeps_every_node_edge_and_attribute(tmp_path_factory, n, m, seed, form,
                                                        ids):
    g = nx.path_graph(n)  # connected, plus random chords
    g.add_edges_from(nx.gnm_random_graph(n, m, seed=seed).edges)
    g = nx.relabel_nodes(g, ids)
    rng = np.random.default_rng(seed)
    for node, d in g.nodes(data=True):
        d["population"], d["名称"] = int(rng.integers(0, 1000)), f"区{node}"
    for _, _, d in g.edges(data=True):
        d["length_m"] = float(rng.uniform(1, 100))
    path = tmp_path_factory.mktemp("g") / "g.json"
    write_graph_json(g, path, form=form)
    back = read_graph_json(path)
    assert dict(back.nodes(data=True)) == dict(g.nodes(data=True))
    assert {frozenset(e) for e in back.edges} == {frozenset(e) for e in g.edges}
    for u, v, d in g.edges(data=True):
        assert back.edges[u, v]["length_m"] == d["length_m"]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 25), m=st.integers(0, 60), seed=st.integers(0, 10_000),
       data=st.data())
def test_induced_subgraph_is_the_subgraph_in_the_graphs_order(n, m, seed, data):
    """The subgraph of a part (a branch, a main grid): its nodes and edges (self-loops
    included) in the whole graph's order, so a plan never depends on how the part's nodes
    were listed."""
    g = nx.gnm_random_graph(n, m, seed=seed)
    g = nx.relabel_nodes(g, {v: f"u{(v * 7) % n}" for v in g})  # ids not in g's order
    g.add_edges_from((v, v) for v in list(g)[::5])
    for u, v, d in g.edges(data=True):
        d["length_m"] = float(hash((u, v)) % 97)
    nodes = data.draw(st.lists(st.sampled_from(list(g)), unique=True))
    keep = set(nodes)
    sub = induced_subgraph(g, nodes[::-1])
    assert list(sub.nodes) == [v for v in g if v in keep]
    assert list(sub.edges(data=True)) == [(u, v, d) for u, v, d in g.edges(data=True)
                                         if u in keep and v in keep]


def test_node_link_links_key_and_named_coordinates(tmp_path):
    g = build_graph(squares())
    path = tmp_path / "g.json"
    write_graph_json(g, path)
    data = json.loads(path.read_text())
    data["links"] = data.pop("edges")  # older networkx and GerryChain releases write "links"
    for n in data["nodes"]:
        n["cx"], n["cy"] = n.pop("x"), n.pop("y")
    path.write_text(json.dumps(data))
    back = read_graph_json(path, xy=("cx", "cy"))
    assert back.graph["has_xy"] and back.nodes["u11"]["x"] == pytest.approx(g.nodes["u11"]["x"])
    assert back.number_of_edges() == g.number_of_edges()
    # without xy the graph has no coordinates: nothing is guessed from "cx"
    assert not read_graph_json(path).graph["has_xy"]


def test_census_coordinates_are_found_and_read_as_numbers(tmp_path):
    g = nx.path_graph(3)
    for n, d in g.nodes(data=True):
        d["INTPTLON20"], d["INTPTLAT20"] = f"-{120 + n}.5", f"+{40 + n}.25"  # Census text
    path = tmp_path / "g.json"
    write_graph_json(g, path, form="adjacency")
    back = read_graph_json(path)
    assert back.graph["has_xy"]
    assert (back.nodes[2]["x"], back.nodes[2]["y"]) == (-122.5, 42.25)


def test_gerrychain_reads_what_we_write(tmp_path):
    g = build_graph(squares())
    path = tmp_path / "g.json"
    write_graph_json(g, path, form="adjacency")
    theirs = gerrychain.Graph.from_json(str(path))
    assert set(theirs.nodes) == set(g.nodes) and len(theirs.edges) == g.number_of_edges()


def test_shipped_county_graph_matches_networkx():
    _same_as_networkx(DATA / "OR_county_graph.json")


@pytest.mark.parametrize(
    "path", sorted(SHARED.glob("*.json")) or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"{SHARED} is not beside this clone"))], ids=lambda p: getattr(p, "stem", "-"))
def test_benchmark_graphs_load(path):
    _same_as_networkx(path)


def _same_as_networkx(path: Path) -> None:
    """Nodes, edges and attributes as networkx's own reader sees them."""
    theirs = json_graph.adjacency_graph(json.loads(path.read_text()))
    ours = read_graph_json(path)
    assert ours.number_of_nodes() == theirs.number_of_nodes()
    assert {frozenset(e) for e in ours.edges} == {frozenset(e) for e in theirs.edges}
    for n, d in theirs.nodes(data=True):
        assert ours.nodes[n]["population"] == d["population"]
        assert (ours.nodes[n]["x"], ours.nodes[n]["y"]) == (d["x"], d["y"])
    assert ours.graph["has_xy"] and ours.graph["islands"] == []


@pytest.mark.parametrize("text, match", [
    ("not json", "not JSON"),
    ('{"nodes": [{"x": 1}]}', "'adjacency'"),
    ('{"nodes": [{"x": 1}], "links": []}', "needs an 'id'"),
    ("[]", "node-link"),
    ('{"nodes": [{"id": 1}], "adjacency": [[{"id": 2}]]}', "does not list"),
    ('{"nodes": [{"id": 1}, {"id": 2}], "adjacency": [[{"id": 2}]]}', "one list per node"),
    ('{"nodes": [{"id": 1}, {"id": 2}], "edges": [{"source": 1, "target": 3}]}',
     "does not list"),
])
def test_malformed_graph_files(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match="bad.json") as err:
        read_graph_json(path)
    assert match in str(err.value)


def test_separate_parts_without_coordinates_are_refused(tmp_path):
    g = nx.Graph([(0, 1), (1, 4), (2, 3)])
    path = tmp_path / "g.json"
    write_graph_json(g, path, form="adjacency")
    with pytest.raises(InvalidInputError, match="2 separate parts") as err:
        read_graph_json(path)
    assert "[2, 3]" in str(err.value) and "`xy`" in str(err.value)
    # with coordinates the smaller part is joined at the closest pair of nodes
    for n, x in {0: 0.0, 1: 1.0, 4: 2.0, 2: 10.0, 3: 11.0}.items():
        g.nodes[n]["x"], g.nodes[n]["y"] = x, 0.0
    write_graph_json(g, path, form="adjacency")
    back = read_graph_json(path)
    assert back.has_edge(2, 4) and back.edges[2, 4]["bridge"]
    assert back.number_of_edges() == g.number_of_edges() + 1


def test_partial_coordinates_are_refused(tmp_path):
    g = nx.path_graph(3)
    for n in (0, 1):
        g.nodes[n]["x"], g.nodes[n]["y"] = float(n), 0.0
    path = tmp_path / "g.json"
    write_graph_json(g, path)
    with pytest.raises(InvalidInputError, match=r"nodes \[2\] have no attributes 'x', 'y'"):
        read_graph_json(path, xy=("x", "y"))


def test_unknown_write_form(tmp_path):
    with pytest.raises(InvalidInputError, match="node-link"):
        write_graph_json(nx.path_graph(2), tmp_path / "g.json", form="gml")


def test_missing_graph_file(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        read_graph_json(tmp_path / "none.json")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(0, 120), k=st.integers(1, 5),
       seed=st.integers(0, 10_000))
def test_induced_subgraphs_in_one_pass_equal_one_call_per_part(n, m, k, seed):
    """The hierarchy cuts the city graph into every main grid's at once; each part must be
    the graph induced_subgraph gives (same node and edge order, same attributes: plans
    must not change), and unlabelled nodes belong to none."""
    g = nx.gnm_random_graph(n, m, seed=seed)
    rng = np.random.default_rng(seed)
    nx.set_node_attributes(g, {v: {"w": float(rng.random())} for v in g})
    nx.set_edge_attributes(g, {e: {"length_m": float(rng.random())} for e in g.edges})
    labels = {v: int(rng.integers(k)) for v in g if rng.random() < 0.9}
    parts = induced_subgraphs(g, labels)
    assert set(parts) == set(labels.values())
    for label, sub in parts.items():
        ref = induced_subgraph(g, [v for v in g if labels.get(v) == label])
        assert list(sub.nodes(data=True)) == list(ref.nodes(data=True))
        assert list(sub.edges(data=True)) == list(ref.edges(data=True))
