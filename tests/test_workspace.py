"""The workspace layer: each loader returns what was written (checked against the raw files),
refuses corrupt artifacts naming the file and the command that rebuilds them, and manifests
stay valid for a copied or differently spelled workspace."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coea_cli import store
from coea_cli.errors import ArtifactError
from coea_cli.workspace import SidLayout, Workspace, sids_table
from coea_cli.workspace.sids import parse_cluster, version_of
from tests.helpers import coea, prepared_workspace
from tests.test_groups import write_sids


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """prepare, SIDs (written in their schema) and the real profile-groups."""
    work = prepared_workspace(tmp_path_factory.mktemp("ws"))
    write_sids(work)
    r = coea("profile-groups", "--work", work, "--groups", 3)
    assert r.code == 0, r.stderr
    return work


def test_history_matches_the_interactions_table(grouped):
    ws = Workspace(grouped)
    h = ws.history()
    rows = pq.read_table(grouped / "data" / "interactions.parquet").to_pylist()
    meta = json.loads((grouped / "data" / "dataset.json").read_text())
    assert (h.n_users, h.n_items, h.test_period) == (
        meta["users"],
        meta["items"],
        meta["test_period"],
    )
    for k in (1, h.test_period, None):
        seqs = h.before(k)
        for u in range(h.n_users):
            naive = [
                r["item_id"]
                for j, r in sorted(enumerate(rows), key=lambda x: (x[1]["timestamp"], x[0]))
                if r["user_id"] == u and (k is None or r["period"] < k)
            ]
            assert seqs.of(u).tolist() == naive
    during = h.during(1)
    assert sorted(during.users().tolist()) == sorted(
        {r["user_id"] for r in rows if r["period"] == 1}
    )
    assert ws.history() is h  # loaded once


def test_sids_round_trip(tmp_path):
    rng = np.random.default_rng()
    work = prepared_workspace(tmp_path)
    n = pq.read_metadata(work / "data" / "items.parquet").num_rows
    layout = SidLayout((7, 5, 3), method="test")
    codes = np.stack([rng.integers(0, 7, n), rng.integers(0, 5, n), rng.integers(0, 3, n)], 1)
    folder = work / "sids"
    folder.mkdir()
    store.write_parquet(folder / "sids.parquet", sids_table(codes, layout))
    desc = {c: f"cluster {c} text" for c in range(7)}
    store.write_parquet(
        folder / "clusters.parquet",
        pa.table({"cluster": pa.array(list(desc), pa.int32()), "description": list(desc.values())}),
    )
    sids = Workspace(work).sids()
    np.testing.assert_array_equal(sids.codes, codes)
    assert sids.layout == layout and sids.descriptions == desc
    assert sids.version == version_of(codes, layout) and len(sids.version) == 16
    strings = pq.read_table(folder / "sids.parquet")["sid"].to_pylist()
    assert strings == sids.strings()
    assert [parse_cluster(s.split(">")[0] + ">") for s in strings] == [
        (int(c),) for c in codes[:, 0]
    ]
    assert sids.layout.tokens()[:2] == ["<a_0>", "<a_1>"] and len(sids.layout.tokens()) == 15
    # one code changed anywhere is another SID version
    changed = codes.copy()
    changed[0, 2] = (changed[0, 2] + 1) % 3
    assert version_of(changed, layout) != sids.version


def test_groups_and_personas(grouped):
    ws = Workspace(grouped)
    g = ws.groups()
    rows = pq.read_table(grouped / "groups" / "groups.parquet").to_pylist()
    test = ws.dataset()["test_period"]
    for p in range(1, test + 1):
        part = sorted((r for r in rows if r["period"] == p), key=lambda r: r["user_id"])
        assert g.at(p).tolist() == [r["group"] for r in part]
    assert np.array_equal(g.of_user, g.at(test)) and np.array_equal(g.at(None), g.of_user)
    p = pq.read_table(grouped / "groups" / "personas.parquet").to_pylist()
    assert g.persona_text == {r["group"]: r["persona"] for r in p}
    arrays, _ = store.read_tensors(grouped / "groups" / "group_emb.safetensors")
    np.testing.assert_array_equal(ws.persona_embeddings(), arrays["persona"])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("relpath", "producer", "damage"),
    [
        ("sids/sids.parquet", "build-sids", "truncate"),
        ("data/interactions.parquet", "prepare", "garbage"),
        ("data/dataset.json", "prepare", "garbage"),
        ("groups/groups.parquet", "profile-groups", "truncate"),
        ("groups/group_emb.safetensors", "profile-groups", "garbage"),
    ],
)
def test_corrupt_artifacts_name_file_and_producer(grouped, tmp_path, relpath, producer, damage):
    work = _copy(grouped, tmp_path / "w")
    path = work / relpath
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage{" * 9)
    ws = Workspace(work)
    with pytest.raises(ArtifactError) as e:
        ws.history(), ws.sids(), ws.groups(), ws.persona_embeddings()
    assert str(path) in str(e.value) and f"run `coea {producer}` first" in str(e.value)


def test_pco_state_is_validated(tmp_path):
    ws = Workspace(tmp_path)
    track = ws.track()
    assert track.state() is None
    track.pco.mkdir(parents=True)
    track.state_path().write_text("{not json")
    with pytest.raises(ArtifactError, match=r"state\.json: not readable JSON .*pco-round"):
        track.state()
    track.state_path().write_text(json.dumps({"round": 1}))
    with pytest.raises(ArtifactError, match="not a PCO state"):
        track.state()
    with pytest.raises(ArtifactError, match="--track"):
        ws.track("../escape")


def test_sweep_removes_rounds_newer_than_the_state(tmp_path):
    """A pco-round killed after writing adapters but before its state: the next command
    removes them, unless a command holds the workspace lock (a round is running)."""
    state = {"round": 1, "history": [], "current": {"novelty": "n", "relevance": "r"}}
    (tmp_path / "pco").mkdir()
    (tmp_path / "pco" / "state.json").write_text(json.dumps(state))
    kept = ["llm/novelty/round-000", "llm/novelty/round-001", "llm/relevance/round-001",
            "pco/round-001"]  # fmt: skip
    gone = ["llm/novelty/round-002", "llm/relevance/round-002", "pco/round-002",
            "llm/tracks/x/novelty/round-001"]  # fmt: skip
    for rel in kept + gone:
        (tmp_path / rel).mkdir(parents=True)
    ws = Workspace(tmp_path)
    with store.workspace_lock(tmp_path, "pco-round"):
        assert ws.sweep() == []
    assert sorted(p.relative_to(tmp_path).as_posix() for p in ws.sweep()) == sorted(gone)
    assert all((tmp_path / rel).is_dir() for rel in kept)
    assert not any((tmp_path / rel).exists() for rel in gone)
    (tmp_path / "pco" / "state.json").write_text("{broken")
    (tmp_path / "llm/novelty/round-005").mkdir()
    assert ws.sweep() == []  # an unreadable state: nothing is removed


def test_copied_and_respelled_workspace_stays_up_to_date(grouped, tmp_path):
    copy = _copy(grouped, tmp_path / "copy")
    r = coea("profile-groups", "--work", copy, "--groups", 3, "--json")
    assert r.code == 0 and r.json()["status"] == "up to date", r.stderr
    manifest = json.loads((copy / "groups" / "manifest.json").read_text())
    assert "sids/sids.parquet" in manifest["inputs"]  # keyed relative to the workspace
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        respelled = "./copy/../copy"
        r = coea("profile-groups", "--work", respelled, "--groups", 3, "--json")
        assert r.code == 0 and r.json()["status"] == "up to date", r.stderr
    finally:
        os.chdir(cwd)


def test_manifest_seconds_cover_the_whole_command(grouped, tmp_path, monkeypatch):
    """`seconds` times the command from its start, not only the final write: a step made
    0.4 s slower shows in it."""
    import time

    from coea_cli.groups import run

    work = _copy(grouped, tmp_path / "slow")
    real = run.compute_groups

    def slow(ctx):
        time.sleep(0.4)
        return real(ctx)

    monkeypatch.setattr(run, "compute_groups", slow)
    r = coea("profile-groups", "--work", work, "--groups", 3, "--force")
    assert r.code == 0, r.stderr
    m = json.loads((work / "groups" / "manifest.json").read_text())
    assert m["seconds"] >= 0.4
