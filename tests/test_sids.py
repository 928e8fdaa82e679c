"""build-sids: k-means, RQ-VAE, collisions, the SID layout and the command."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli import store
from coea_cli.errors import ArtifactError
from coea_cli.options import SidOptions
from coea_cli.sids import clusters, collisions, kmeans
from coea_cli.sids.extend import extend as collisions_extend
from coea_cli.sids.rqvae import RQConfig, rq_kmeans, train_rqvae
from coea_cli.sids.run import auto_codebook_size, build_codes
from coea_cli.workspace import SidLayout, Workspace, cluster_token
from tests.helpers import coea, prepared_workspace

TINY = ["--hidden", "32", "--latent-dim", "8", "--epochs", "15", "--batch-size", "32"]


def _mixture(rng, n=200, dims=12, k=6, noise=0.3):
    centers = rng.normal(0, 1, (k, dims))
    label = rng.integers(0, k, n)
    return (centers[label] + rng.normal(0, noise, (n, dims))).astype(np.float32), label


# ---------------------------------------------------------------- k-means


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 20), dup=st.integers(0, 40))
def test_kmeans_has_no_empty_clusters(seed, k, dup):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    x = np.concatenate([x, np.repeat(x[:1], dup, axis=0)])  # a heavy duplicate point
    centers, labels = kmeans.kmeans(x, k, seed=seed)
    assert centers.shape == (k, 4)
    assert (np.bincount(labels, minlength=k) > 0).all()
    # labels are the nearest centres
    np.testing.assert_array_equal(labels, kmeans.assign(x, centers)[0])


def test_kmeans_converges_to_a_fixed_point_and_is_deterministic():
    rng = np.random.default_rng()
    x, _ = _mixture(rng, n=300)
    seed = int(rng.integers(1 << 30))
    c1, l1 = kmeans.kmeans(x, 6, seed=seed, iters=200, tol=0)
    c2, l2 = kmeans.kmeans(x, 6, seed=seed, iters=200, tol=0)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(l1, l2)
    for j in range(6):
        np.testing.assert_allclose(c1[j], x[l1 == j].mean(0), atol=1e-5)
    with pytest.raises(ValueError):
        kmeans.kmeans(x[:3], 4)


# ---------------------------------------------------------------- RQ-VAE and residual k-means


@pytest.fixture(scope="module")
def mixture():
    return _mixture(np.random.default_rng(7), n=240, dims=16, k=8)


def _cfg(levels, **kw):
    base = RQConfig.from_options(SidOptions(), (8,) * levels, n_items=240)
    small = dict(latent=8, hidden=(32,), epochs=60, batch_size=64, lr=3e-3)
    return replace(base, **{**small, **kw})


def test_rqvae_invariants(mixture):
    x, _ = mixture
    q = train_rqvae(x, _cfg(3), seed=1, progress=False)
    assert q.codes.shape == (240, 3)
    assert q.codes.min() >= 0 and q.codes.max() < 8
    # k-means initialisation filled every code of every level
    assert q.info["init_nonempty_clusters"] == [8, 8, 8]
    # quantisation error shrinks level by level
    err = q.error_by_level
    assert err[0] > err[1] > err[2]
    assert 0 < q.recon_relative < 1
    # the saved weights hold the encoder, decoder and one codebook per level
    assert {"codebooks.0", "codebooks.1", "codebooks.2"} <= set(q.tensors)
    assert q.tensors["codebooks.2"].shape == (8, 8)
    # no level collapsed
    for level in range(3):
        assert len(np.unique(q.codes[:, level])) >= 6


def test_reconstruction_improves_with_levels(mixture):
    x, _ = mixture
    one = train_rqvae(x, _cfg(1), seed=2, progress=False)
    three = train_rqvae(x, _cfg(3), seed=2, progress=False)
    assert three.recon_mse < one.recon_mse
    rk = [rq_kmeans(x, (8,) * levels, seed=2, progress=False) for levels in (1, 2, 3)]
    errs = [r.recon_mse for r in rk]
    assert errs[0] > errs[1] > errs[2]
    # rq-kmeans error is exactly the residual after summing the chosen centroids
    r = rk[2]
    recon = sum(r.codebooks[lvl][r.codes[:, lvl]] for lvl in range(3))
    np.testing.assert_allclose(((x - recon) ** 2).sum(1).mean(), r.recon_mse, rtol=1e-4)


def test_rqvae_is_deterministic(mixture):
    x, _ = mixture
    a = train_rqvae(x, _cfg(2, epochs=10), seed=5, progress=False)
    b = train_rqvae(x, _cfg(2, epochs=10), seed=5, progress=False)
    np.testing.assert_array_equal(a.codes, b.codes)
    for key in a.tensors:
        np.testing.assert_array_equal(a.tensors[key], b.tensors[key])


# ---------------------------------------------------------------- collisions


@pytest.mark.parametrize("method", ["rqvae", "rq-kmeans"])
def test_identical_vectors_still_get_unique_sids(method):
    rng = np.random.default_rng()
    x, _ = _mixture(rng, n=150, dims=10)
    x[:50] = x[0]  # 50 identical vectors
    sizes = (4, 4)
    cfg = _cfg(2, sizes=sizes, epochs=10)
    b = build_codes(x, method=method, sizes=sizes, cfg=cfg, seed=0, progress=False)
    assert b.codes.shape == (150, 3)
    assert len(np.unique(b.codes, axis=0)) == 150
    # identical inputs share level 1; their prefix group is spread over the last level with
    # at most ceil(m / K) items per code, the dedup level separates the rest
    c1 = b.codes[0, 0]
    assert (b.codes[:50, 0] == c1).all()
    group = b.codes[b.codes[:, 0] == c1]
    cap = -(-len(group) // 4)
    assert np.bincount(group[:, 1], minlength=4).max() <= cap
    assert b.sizes[-1] == b.codes[:, 2].max() + 1 >= 13  # at least ceil(50 / 4)
    assert b.after["rate"] <= b.before["rate"]


def test_rebalance_only_touches_colliding_groups():
    rng = np.random.default_rng()
    codebook = rng.normal(size=(6, 3))
    residual = rng.normal(size=(40, 3))
    codes = np.stack([rng.integers(0, 3, 40), kmeans.assign(residual, codebook)[0]], 1)
    new, moved = collisions.rebalance_last_level(codes, residual, codebook, candidates=6)
    np.testing.assert_array_equal(new[:, 0], codes[:, 0])
    assert moved == int((new != codes).any(1).sum())
    for p in range(3):
        grp = codes[:, 0] == p
        cap = -(-grp.sum() // 6)
        assert np.bincount(new[grp, 1], minlength=6).max() <= cap
        if len(np.unique(codes[grp, 1])) == grp.sum():  # no collision: untouched
            np.testing.assert_array_equal(new[grp], codes[grp])


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 6), k=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_balanced_assign_is_optimal(m, k, seed):
    cost = np.random.default_rng(seed).random((m, k))
    cap = -(-m // k)
    got = collisions.balanced_assign(cost)
    assert np.bincount(got, minlength=k).max() <= cap
    slots = [c for c in range(k) for _ in range(cap)]
    best = min(sum(cost[i, s] for i, s in enumerate(p)) for p in itertools.permutations(slots, m))
    assert cost[np.arange(m), got].sum() == pytest.approx(best)
    greedy = collisions._greedy_assign(cost, cap)
    assert np.bincount(greedy, minlength=k).max() <= cap


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=40))
def test_dedup_level_makes_codes_unique(rows):
    codes = np.array(rows)
    rng = np.random.default_rng(len(rows))
    residual, codebook = rng.normal(size=(len(rows), 2)), rng.normal(size=(3, 2))
    dup = collisions.dedup_level(codes, residual, codebook)
    full = np.concatenate([codes, dup[:, None]], 1)
    assert len(np.unique(full, axis=0)) == len(rows)
    _, size = collisions.bucket_ids(codes)
    assert (dup < size).all() and (dup[size == 1] == 0).all()
    stats = collisions.collision_stats(codes)
    assert stats["rate"] == pytest.approx(1 - len({tuple(r) for r in rows}) / len(rows))
    assert stats["largest_bucket"] == size.max()


# ---------------------------------------------------------------- statistics


def test_level_usage_and_genre_coherence_examples():
    u = clusters.level_usage(np.array([0, 0, 1, 1]), 4)
    assert u["utilisation"] == 0.5 and u["perplexity"] == pytest.approx(2.0)
    g = clusters.genre_coherence(np.array([0, 0, 1, 1]), [["A"], ["A"], ["B"], ["A"]])
    assert g["same_cluster"] == 0.5 and g["random"] == 0.5 and g["ratio"] == 1.0


def test_genre_coherence_sampled_matches_exact():
    rng = np.random.default_rng()
    n = 600
    labels = rng.integers(0, 5, n)
    names = list("ABCDEFG")
    cats = [[names[lab], names[rng.integers(7)]] if rng.random() < 0.5 else [names[lab]]
            for lab in labels]  # fmt: skip
    exact = clusters.genre_coherence(labels, cats)
    sampled = clusters.genre_coherence(labels, cats, seed=1, exact_limit=100, samples=100_000)
    assert exact["method"] == "exact" and sampled["method"] == "sampled"
    assert sampled["same_cluster"] == pytest.approx(exact["same_cluster"], abs=0.01)
    assert sampled["random"] == pytest.approx(exact["random"], abs=0.01)
    assert exact["ratio"] > 2


def test_auto_rules():
    assert [auto_codebook_size(n) for n in (2, 80, 1349, 1682, 10_000, 100_000, 10**7)] == [
        2, 8, 32, 32, 128, 256, 256,
    ]  # fmt: skip
    assert [SidOptions().max_epochs(n) for n in (80, 1349, 100_000)] == [200, 112, 10]
    assert SidOptions(epochs="7").max_epochs(100) == 7
    assert cluster_token((12, 7)) == "<a_12><b_7>"
    assert SidLayout((4, 3, 2)).strings(np.array([[3, 1, 0], [0, 2, 1]])) == [
        "<a_3><b_1><c_0>",
        "<a_0><b_2><c_1>",
    ]


# ---------------------------------------------------------------- the command


def _embed_workspace(work, seed=0, dims=24):
    """Synthetic fused vectors that follow each item's first genre (no text encoder)."""
    items = pq.read_table(work / "data" / "items.parquet")
    cats = items["categories"].to_pylist()
    names = sorted({c for cs in cats for c in cs})
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (len(names), dims))
    x = np.stack([centers[[names.index(c) for c in cs]].mean(0) for cs in cats])
    x = (x + rng.normal(0, 0.2, x.shape)).astype(np.float32)
    n = len(x)
    path = work / "items" / "item_emb.safetensors"
    path.parent.mkdir(exist_ok=True)
    store.write_tensors(
        path, {"item_id": np.arange(n, dtype=np.int32), "fused": x, "content": x}, {}
    )
    return x


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = prepared_workspace(tmp_path_factory.mktemp("sids"))
    _embed_workspace(work)
    r = coea("build-sids", "--work", work, "--json", *TINY)
    assert r.code == 0, r.stderr
    return work, r.json()


def test_build_sids_outputs(built):
    work, res = built
    n = pq.read_metadata(work / "data" / "items.parquet").num_rows
    assert res["status"] == "written" and res["items"] == n and res["unique_sids"] == n
    t = pq.read_table(work / "sids" / "sids.parquet")
    assert t.column_names == ["item_id", "c1", "c2", "c3", "dup", "sid"]
    assert all(t.schema.field(c).type == "int32" for c in ("item_id", "c1", "c2", "c3", "dup"))
    rows = t.to_pylist()
    assert len({r["sid"] for r in rows}) == n
    for r in rows[:10]:
        assert r["sid"] == f"<a_{r['c1']}><b_{r['c2']}><c_{r['c3']}><d_{r['dup']}>"
    report = store.read_json(work / "sids" / "report.json")
    assert report["codebook_sizes"][:3] == [8, 8, 8]  # auto: ~80 items -> 8
    assert report["letters"] == ["a", "b", "c", "d"] and report["dedup_letter"] == "d"
    assert report["all_unique"] and report["levels"] == 3
    lv1 = report["level_stats"][0]
    assert lv1["utilisation"] == len({r["c1"] for r in rows}) / 8
    assert report["collisions"]["rate_before_dedup"] <= report["collisions"]["rate_from_quantiser"]
    coh = report["genre_coherence"]
    assert coh["method"] == "exact" and coh["ratio"] > 1.5  # genre-driven vectors
    # what other stages read, through the workspace layer
    loaded = Workspace(work).sids()
    codes = loaded.codes
    assert codes.shape == (n, 4) and codes.dtype == np.int64
    assert list(loaded.layout.sizes) == report["codebook_sizes"]
    assert loaded.layout.meta()["letters"] == report["letters"]
    np.testing.assert_array_equal(codes[:, 0], t["c1"].to_numpy())
    np.testing.assert_array_equal(loaded.cluster_of_items(), codes[:, 0])
    assert loaded.strings() == t["sid"].to_pylist()
    desc = loaded.descriptions
    cl = pq.read_table(work / "sids" / "clusters.parquet").to_pylist()
    assert [c["cluster"] for c in cl] == list(range(8)) and len(desc) == 8
    for c in cl:
        assert c["prefix"] == f"<a_{c['cluster']}>"
        assert c["size"] == int((codes[:, 0] == c["cluster"]).sum())
        if c["size"]:
            assert desc[c["cluster"]].startswith(", ".join(c["top_categories"]) + ": ")
    assert not (work / "sids" / "sid_index.lmdb").exists()  # nothing reads an index
    _, tmeta = store.read_tensors(work / "sids" / "rqvae.safetensors")
    assert tmeta["method"] == "rqvae" and tmeta["config"]["hidden"] == [32]


def test_build_sids_rerun_is_noop_and_deterministic(built, tmp_path):
    work, _ = built
    before = (work / "sids" / "manifest.json").read_bytes()
    r = coea("build-sids", "--work", work, "--json", *TINY)
    assert r.code == 0 and r.json()["status"] == "up to date"
    assert (work / "sids" / "manifest.json").read_bytes() == before
    other = tmp_path / "w"
    shutil.copytree(work / "data", other / "data")
    shutil.copytree(work / "items", other / "items")
    r = coea("build-sids", "--work", other, *TINY)
    assert r.code == 0, r.stderr
    a = pq.read_table(work / "sids" / "sids.parquet")
    b = pq.read_table(other / "sids" / "sids.parquet")
    assert a.equals(b)
    # another seed would make another SID version: only on --rebuild, which trains it
    before = (other / "sids" / "sids.parquet").read_bytes()
    r = coea("build-sids", "--work", other, "--seed", 1, *TINY)
    assert r.code == 2 and "built with seed=0" in r.stderr and "--rebuild" in r.stderr
    assert (other / "sids" / "sids.parquet").read_bytes() == before
    r = coea("build-sids", "--work", other, "--seed", 1, "--rebuild", "--json", *TINY)
    assert r.code == 0 and r.json()["status"] == "written"
    assert Workspace(other).sids().version != Workspace(work).sids().version


def test_build_sids_rq_kmeans(built, tmp_path):
    work, _ = built
    other = tmp_path / "w"
    shutil.copytree(work / "data", other / "data")
    shutil.copytree(work / "items", other / "items")
    r = coea("build-sids", "--work", other, "--method", "rq-kmeans", "--levels", 2,
             "--codebook-size", "6,4", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    loaded = Workspace(other).sids()
    codes, layout = loaded.codes, loaded.layout
    assert layout.sizes[:2] == (6, 4) and layout.method == "rq-kmeans"
    assert len(np.unique(codes, axis=0)) == len(codes)
    assert codes[:, 0].max() < 6 and codes[:, 1].max() < 4


def _fresh(tmp_path):
    work = prepared_workspace(tmp_path)
    _embed_workspace(work)
    return work


def _expect_bad(work, match, *args):
    r = coea("build-sids", "--work", work, *TINY, *args)
    assert r.code == 2, r.stderr
    assert match in r.stderr, r.stderr
    assert not (work / "sids").exists()


def test_build_sids_bad_input(tmp_path):
    work = prepared_workspace(tmp_path)
    _expect_bad(work, "item_emb.safetensors: missing; run `coea tokenize-items` first")
    _expect_bad(tmp_path / "empty", "run `coea prepare` first")
    x = _embed_workspace(work)
    n = len(x)
    _expect_bad(work, "larger than the catalogue allows", "--codebook-size", n + 1)
    _expect_bad(work, "--codebook-size", "--codebook-size", "8,8")
    _expect_bad(work, "--method", "--method", "pq")
    path = work / "items" / "item_emb.safetensors"
    bad = x.copy()
    bad[5, 3] = np.nan
    bad[9, 0] = np.inf
    store.write_tensors(path, {"item_id": np.arange(n, dtype=np.int32), "fused": bad})
    _expect_bad(work, "'fused' has NaN/Inf in row 5 (item 5)")
    ids = np.arange(n, dtype=np.int32)
    ids[[4, 6]] = ids[[6, 4]]
    store.write_tensors(path, {"item_id": ids, "fused": x})
    _expect_bad(work, "row 4 has item_id 6")
    store.write_tensors(path, {"item_id": np.arange(n - 1, dtype=np.int32), "fused": x[:-1]})
    _expect_bad(work, f"{n - 1} rows, but data/items.parquet has {n} items")
    store.write_tensors(path, {"item_id": np.arange(n, dtype=np.int32), "content": x})
    _expect_bad(work, "no tensor 'fused'")


def test_sids_without_layout_metadata_are_refused(built, tmp_path):
    """The layout is read from the artifact, never re-derived from column names."""
    work, _ = built
    other = tmp_path / "w"
    shutil.copytree(work, other)
    path = other / "sids" / "sids.parquet"
    pq.write_table(pq.read_table(path).replace_schema_metadata({}), path)
    with pytest.raises(ArtifactError, match="no valid SID layout metadata; run `coea build-sids`"):
        Workspace(other).sids()


# ---------------------------------------------------------------- items added later


def test_extend_keeps_rows_and_takes_the_next_free_dup():
    existing = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0]])
    codes, collided = collisions_extend(existing, np.array([[1, 2], [0, 0], [1, 2], [0, 0]]))
    np.testing.assert_array_equal(codes[:3], existing)
    np.testing.assert_array_equal(codes[3:], [[1, 2, 2], [0, 0, 0], [1, 2, 3], [0, 0, 1]])
    assert collided.tolist() == [True, False, True, True]
    assert len(np.unique(codes, axis=0)) == len(codes)


@pytest.mark.parametrize("method", ["rqvae", "rq-kmeans"])
def test_encode_gives_the_training_codes(built, tmp_path, method):
    """The saved quantiser encodes the training vectors to the codes training gave them."""
    from coea_cli.sids.extend import encode

    work, _ = built
    other = tmp_path / "w"
    shutil.copytree(work / "data", other / "data")
    shutil.copytree(work / "items", other / "items")
    r = coea("build-sids", "--work", other, "--method", method, "--no-rebalance", *TINY)
    assert r.code == 0, r.stderr
    tensors, meta = store.read_tensors(other / "sids" / "rqvae.safetensors")
    x = store.read_tensors(other / "items" / "item_emb.safetensors")[0]["fused"]
    np.testing.assert_array_equal(encode(x, tensors, meta), Workspace(other).sids().codes[:, :-1])


def test_build_sids_adds_new_items_and_keeps_every_sid(built, tmp_path):
    from coea_cli.sids.extend import encode

    work, _ = built
    other = tmp_path / "w"
    shutil.copytree(work, other)
    old = pq.read_table(other / "sids" / "sids.parquet")
    old_sids = Workspace(other).sids()
    n = old.num_rows
    new = tmp_path / "week.csv"
    last = int(pq.read_table(other / "data" / "interactions.parquet")["timestamp"].to_numpy().max())
    rows = [f"u1,new{k},{last + 10 + k}" for k in range(6)] + [f"brandnew,i3,{last + 20}"]
    new.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    r = coea("prepare", "--append", new, "--format", "table", "--work", other)
    assert r.code == 0, r.stderr
    # vectors: old rows unchanged; new ones near existing items, one an exact copy of item 7
    emb = other / "items" / "item_emb.safetensors"
    tensors = store.read_tensors(emb)[0]
    x = tensors["fused"]
    rng = np.random.default_rng()
    extra = x[rng.integers(0, n, 6)] + rng.normal(0, 0.05, (6, x.shape[1])).astype(np.float32)
    tensors_q, meta_q = store.read_tensors(other / "sids" / "rqvae.safetensors")
    same = (encode(x, tensors_q, meta_q) == old_sids.codes[:, :-1]).all(1)
    j = int(np.flatnonzero(same)[0])  # an item the rebalancer did not move
    extra[0] = x[j]
    x = np.concatenate([x, extra]).astype(np.float32)
    store.write_tensors(emb, {"item_id": np.arange(n + 6, dtype=np.int32), "fused": x}, {})

    r = coea("build-sids", "--work", other, "--json", *TINY)
    assert r.code == 0, r.stderr
    t = pq.read_table(other / "sids" / "sids.parquet")
    assert t.num_rows == n + 6
    assert t.slice(0, n).equals(old)  # every existing SID, byte for byte
    sids = t["sid"].to_pylist()
    assert len(set(sids)) == n + 6  # each new item one SID of its own
    loaded = Workspace(other).sids()
    assert loaded.version == old_sids.version and loaded.revision == 1
    c = loaded.codes
    np.testing.assert_array_equal(c[n, :-1], c[j, :-1])  # the copy collides with item j ...
    assert c[n, -1] != c[j, -1]  # ... and is told apart at the dedup level
    report = store.read_json(other / "sids" / "report.json")
    added = report["additions"][-1]
    assert added["items"] == 6 and added["revision"] == 1
    assert 1 / 6 <= added["collision_rate_before_dedup"] <= 1
    assert report["items"] == n + 6 and report["codebook_sizes"][-1] > c[:, -1].max()
    sizes = pq.read_table(other / "sids" / "clusters.parquet")["size"].to_numpy()
    np.testing.assert_array_equal(sizes, np.bincount(c[:, 0], minlength=len(sizes)))
    # again: nothing to add; --rebuild starts a new version
    r = coea("build-sids", "--work", other, "--json", *TINY)
    assert r.code == 0 and r.json()["status"] == "up to date"
    r = coea("build-sids", "--work", other, "--json", "--rebuild", *TINY)
    assert r.code == 0 and r.json()["status"] == "written", r.stderr
    assert Workspace(other).sids().revision == 0
