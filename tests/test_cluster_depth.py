"""Interest clusters of one or two SID levels: the index <-> codes mapping, the layout's
record of it, and a depth-2 workspace through pco-round and recommend."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli import store
from coea_cli.workspace import ClusterSpace, SidLayout, Workspace
from coea_cli.workspace.sids import version_of
from tests.helpers import coea
from tests.pco_fixtures import TINY, UPSTREAM, tiny_workspace


def test_cluster_space_hand():
    space = ClusterSpace((32, 8))
    assert space.index((3, 5)) == 29 and space.code(29) == (3, 5)
    assert space.size == 256 and space.depth == 2
    codes = np.array([[3, 5, 1, 0], [0, 7, 2, 1], [31, 0, 0, 0]])
    assert space.of_codes(codes).tolist() == [29, 7, 248]
    assert ClusterSpace((32,)).of_codes(codes).tolist() == [3, 0, 31]  # depth 1: the code
    with pytest.raises(ValueError, match="does not have 2 level"):
        space.index((3,))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    data=st.data(),
)
def test_cluster_space_round_trip(sizes, data):
    space = ClusterSpace(sizes)
    index = data.draw(st.integers(0, space.size - 1))
    codes = space.code(index)
    assert len(codes) == len(sizes) and all(0 <= c < k for c, k in zip(codes, sizes, strict=True))
    assert space.index(codes) == index
    # the index orders clusters as their codes do, level 1 first
    if index + 1 < space.size:
        assert space.code(index + 1) > codes


def test_layout_records_depth():
    rng = np.random.default_rng()
    codes = np.stack([rng.integers(0, k, 50) for k in (6, 4, 3)], 1)
    flat = SidLayout((6, 4, 3))
    deep = SidLayout((6, 4, 3), depth=2)
    assert "cluster_depth" not in flat.meta()  # level-1 builds keep their versions
    assert SidLayout.from_meta(deep.meta()) == deep and SidLayout.from_meta(flat.meta()) == flat
    assert version_of(codes, deep) != version_of(codes, flat)
    assert deep.clusters == ClusterSpace((6, 4)) and flat.clusters == ClusterSpace((6,))
    with pytest.raises(ValueError, match=r"cluster depth 3 outside 1\.\.2"):
        SidLayout((6, 4, 3), depth=3)


def test_build_sids_refuses_a_depth_beyond_the_levels(tmp_path):
    r = coea("build-sids", "--levels", 2, "--cluster-depth", 3, "--work", tmp_path / "w")
    assert r.code == 2 and "--cluster-depth 3 exceeds --levels 2" in r.stderr
    assert not (tmp_path / "w" / "sids").exists()


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A tiny workspace whose clusters are the first two SID levels (genre, then one of 4)."""
    work = tiny_workspace(tmp_path_factory.mktemp("deep"), depth=2)
    shutil.rmtree(work / "groups")  # the real command: histograms over two-level clusters
    for args in (
        *UPSTREAM,
        ("pco-round", *TINY, "--rounds", 2),
        ("recommend", "--k", 10, "--n", 4),
    ):
        r = coea(*args, "--work", work)
        assert r.code == 0, (args, r.stderr)
    return work


def test_depth_two_through_pco_and_recommend(deep):
    ws = Workspace(deep)
    sids = ws.sids()
    assert sids.layout.depth == 2
    index = sids.codes[:, 0] * 4 + sids.codes[:, 1]
    np.testing.assert_array_equal(sids.cluster_of_items(), index)
    valid = set(index.tolist())
    assert len(valid) > len(set(sids.codes[:, 0].tolist()))  # finer than level 1

    # the Novelty LLM decodes two-level clusters under the trie: never an invalid one
    zero = store.read_json(deep / "pco" / "round-000" / "metrics.json")
    assert zero["invalid_rate"] == 0.0
    one = store.read_json(deep / "pco" / "round-001" / "metrics.json")
    assert one["invalid_samples"] == 0
    cand = store.read_parquet(deep / "pco" / "round-001" / "candidates.parquet")
    assert set(cand["cluster"].to_pylist()) <= valid and cand.num_rows > 0

    # the lists: each item's cluster is its two-level index; explore slots sit in clusters
    # new to the user at that depth
    recs = store.read_parquet(deep / "recs" / "recs.parquet")
    items = recs["item_id"].to_numpy()
    assert (recs["cluster"].to_numpy() == index[items]).all()
    inter = store.read_parquet(deep / "data" / "interactions.parquet")
    test = store.read_json(deep / "data" / "dataset.json")["test_period"]
    train = inter.filter(pc.less(inter["period"], test))
    known: dict[int, set[int]] = {}
    for u, i in zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True):
        known.setdefault(u, set()).add(int(index[i]))
    explore = recs.filter(pc.not_equal(recs["source"].cast(pa.string()), "fill"))
    assert explore.num_rows > 0
    for u, c in zip(explore["user_id"].to_pylist(), explore["cluster"].to_pylist(), strict=True):
        assert c not in known.get(u, set())


def test_depth_two_prompts_show_two_level_clusters(deep):
    from coea_cli.llm.context import Prompter, World, context_of

    world = World.load(Workspace(deep))
    assert world.clusters() and all(len(c) == 2 for c in world.clusters())
    hist = world.history.before(world.test_period)
    user = next(u for u in hist.users().tolist() if len(hist.of(u)))
    ctx = context_of(world, user, hist.of(user))
    assert all(len(c) == 2 for c in ctx.familiar)
    text = Prompter(world).novelty(ctx)
    first = ctx.familiar[-1]
    assert f"<a_{first[0]}><b_{first[1]}>" in text
