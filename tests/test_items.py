"""tokenize-items: item text, sentence encoder, PPMI + SVD collaborative embedding."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli import store
from coea_cli.errors import BadInput
from coea_cli.items import collab, text
from tests.helpers import coea, prepared_workspace

# ---------------------------------------------------------------- text template


def _items(**cols):
    return pa.table(cols)


def test_render_default_template():
    t = _items(
        title=["Heat", "Up", "Nobody"],
        year=pa.array([1995, None, None], pa.int32()),
        categories=pa.array([["Action", "Crime"], ["Animation"], []], pa.list_(pa.string())),
    )
    assert text.render_texts(t, text.DEFAULT_TEMPLATE) == [
        "Action, Crime. Heat (1995).",
        "Animation. Up.",
        "Nobody.",
    ]
    tpl = "{title} ({year}). Genres: {categories}."
    assert text.render_texts(t, tpl) == [
        "Heat (1995). Genres: Action, Crime.",
        "Up. Genres: Animation.",
        "Nobody.",
    ]


def test_render_labels_lists_and_specs():
    row = {"title": "Alien", "year": 1979.0, "tags": ["space", None, " horror "], "plot": None}
    assert text.render("Title: {title}, Plot: {plot}, Tags: {tags}", row) == (
        "Title: Alien, Tags: space, horror"
    )
    assert text.render("{title} [{plot}] {year:d}", {**row, "year": 1979}) == "Alien 1979"
    assert text.render("{plot}. {title}", row) == "Alien"
    assert text.render("{title}. {plot}.", row) == "Alien."
    assert text.render("{year}", {"year": float("nan")}) == ""


def test_render_unknown_or_positional_field():
    t = _items(title=["x"])
    with pytest.raises(BadInput, match=r"unknown field\(s\) \{genre\}.*title"):
        text.render_texts(t, "{title} {genre}")
    with pytest.raises(BadInput, match="plain column name"):
        text.render_texts(t, "{title} {}")
    with pytest.raises(BadInput, match="not a valid format string"):
        text.render_texts(t, "{title")


_value = st.one_of(
    st.none(),
    st.just(""),
    st.text(alphabet="abcXYZ 09'-", max_size=12),
    st.integers(1900, 2030),
    st.lists(st.one_of(st.none(), st.text(alphabet="abc ", max_size=6)), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(title=_value, year=_value, cats=_value)
def test_render_never_leaks_missing_markers(title, year, cats):
    out = text.render(text.DEFAULT_TEMPLATE, {"title": title, "year": year, "categories": cats})
    out2 = text.render(
        "{title} ({year}). Genres: {categories}.",
        {"title": title, "year": year, "categories": cats},
    )
    for s in (out, out2):
        assert "\x00" not in s and "None" not in s
        assert "()" not in s and "  " not in s and ": ." not in s
        assert s == s.strip()
    if isinstance(year, int):
        assert str(year) in out


# ---------------------------------------------------------------- collaborative embedding


def _random_log(rng, n_users=30, n_items=25, n=400, periods=3):
    user = rng.integers(0, n_users, n)
    return pa.table(
        {
            "user_id": pa.array(user.astype(np.int32)),
            "item_id": pa.array(rng.integers(0, n_items, n).astype(np.int32)),
            "timestamp": pa.array(rng.permutation(n).astype(np.int64)),
            "period": pa.array(rng.integers(0, periods, n).astype(np.int16)),
        }
    )


def _brute_cooc(user, item, n_items, window):
    c = np.zeros((n_items, n_items))
    for u in np.unique(user):
        seq = item[user == u]
        if window == 0:
            s = np.unique(seq)
            for a in s:
                for b in s:
                    if a != b:
                        c[a, b] += 1
        else:
            for i in range(len(seq)):
                for j in range(i + 1, min(len(seq), i + window + 1)):
                    if seq[i] != seq[j]:
                        c[seq[i], seq[j]] += 1
                        c[seq[j], seq[i]] += 1
    return c


@pytest.mark.parametrize("window", [0, 1, 3])
def test_cooccurrence_matches_brute_force(window):
    rng = np.random.default_rng()
    log = _random_log(rng)
    user, item = collab.period_sequences(log, 0)
    got = collab.cooccurrence(user, item, 25, window).toarray()
    np.testing.assert_array_equal(got, _brute_cooc(user, item, 25, window))
    assert (np.diag(got) == 0).all() and (got == got.T).all()


def test_ppmi_matches_dense_formula():
    rng = np.random.default_rng()
    c = rng.integers(0, 4, (12, 12)).astype(float)
    c = c + c.T
    np.fill_diagonal(c, 0)
    alpha = 0.75
    row = c.sum(1)
    ctx = row**alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.log(c * ctx.sum() / (row[:, None] * ctx[None, :]))
    ref = np.where(c > 0, np.maximum(ref, 0), 0)
    np.testing.assert_allclose(collab.ppmi(c, alpha).toarray(), ref, rtol=1e-12, atol=1e-12)


def test_collab_uses_period_zero_only_and_flags_cold():
    rng = np.random.default_rng()
    log = _random_log(rng, n_items=40)
    emb, cold, _ = collab.collab_embedding(log, 40, dim=8, seed=3)
    # rewrite everything outside period 0: items, users and times
    p = log["period"].to_numpy()
    later = p > 0
    item = log["item_id"].to_numpy().copy()
    item[later] = rng.integers(0, 40, later.sum())
    ts = log["timestamp"].to_numpy().copy()
    ts[later] = rng.integers(0, 10**6, later.sum())
    changed = log.set_column(1, "item_id", pa.array(item.astype(np.int32)))
    changed = changed.set_column(2, "timestamp", pa.array(ts))
    emb2, cold2, _ = collab.collab_embedding(changed, 40, dim=8, seed=3)
    np.testing.assert_array_equal(emb, emb2)
    np.testing.assert_array_equal(cold, cold2)
    # cold = no period-0 co-occurrence; warm rows unit length
    seen = np.zeros(40, bool)
    seen[log["item_id"].to_numpy()[p == 0]] = True
    assert cold[~seen].all()
    np.testing.assert_allclose(np.linalg.norm(emb[~cold], axis=1), 1, atol=1e-5)
    assert (emb[cold] == 0).all()
    # a change inside period 0 does change it
    item0 = log["item_id"].to_numpy().copy()
    item0[p == 0] = rng.permutation(item0[p == 0])
    emb3, *_ = collab.collab_embedding(log.set_column(1, "item_id", pa.array(item0)), 40, dim=8)
    assert not np.allclose(emb, emb3)


def test_fold_in_gives_period_zero_items_their_own_vectors():
    """p V S^(-1/2) of a period-0 item's own PPMI row is its embedding U S^(1/2): exactly, with
    the exact truncated SVD (the randomised one's last components carry its own error)."""
    rng = np.random.default_rng()
    log = _random_log(rng, n_items=40)
    user, item = collab.period_sequences(log, 0)
    c0 = collab.cooccurrence(user, item, 40)
    u, s, vt = np.linalg.svd(collab.ppmi(c0).toarray())
    u, s, vt = u[:, :8], s[:8], vt[:8]
    assert s[-1] > 1e-6  # a rank-8 truncation exists
    warm = np.flatnonzero(np.asarray(c0.sum(axis=1)).ravel() > 0)
    got = collab.fold_in_rows(c0[warm], c0, vt, s, 0.75, 8)
    np.testing.assert_allclose(got[:, : len(s)], u[warm] * np.sqrt(s), atol=1e-5)
    # the randomised SVD the pipeline uses agrees on the leading components
    _, sr, _ = collab.svd_factors(collab.ppmi(c0), 8, seed=1)
    np.testing.assert_allclose(sr[:4], s[:4], rtol=1e-3)


def test_items_missing_from_period_zero_are_folded_in_from_later_periods():
    rng = np.random.default_rng()
    log = _random_log(rng, n_items=40, n=600)
    p, item = log["period"].to_numpy(), log["item_id"].to_numpy().copy()
    item[(p == 0) & (item >= 30)] = rng.integers(0, 30, ((p == 0) & (item >= 30)).sum())
    log = log.set_column(1, "item_id", pa.array(item.astype(np.int32)))  # 30-39: later only
    base, cold0, n0 = collab.collab_embedding(log, 40, dim=8, seed=2)
    emb, cold, n = collab.collab_embedding(log, 40, dim=8, seed=2, fold_before=2)
    assert n0 == 0 and cold0[30:].all()
    np.testing.assert_array_equal(emb[~cold0], base[~cold0])  # period-0 items never change
    seen1 = np.unique(item[p == 1])
    late = np.intersect1d(np.arange(30, 40), seen1)
    never = np.setdiff1d(np.arange(30, 40), seen1)
    # a late item is placed when it co-occurs above chance with a period-0 item; on a random
    # log that is most of them (a single viewer who saw nothing else places nothing)
    placed = late[~cold[late]]
    assert n == (cold0 & ~cold).sum()  # items period 0 does not place, late ones above all
    assert len(placed) >= max(1, len(late) // 2) and cold[never].all()
    np.testing.assert_allclose(np.linalg.norm(emb[placed], axis=1), 1, atol=1e-5)
    # the periods from fold_before on are never read
    later = p >= 2
    item[later] = rng.integers(0, 40, later.sum())
    other = log.set_column(1, "item_id", pa.array(item.astype(np.int32)))
    again, *_ = collab.collab_embedding(other, 40, dim=8, seed=2, fold_before=2)
    np.testing.assert_array_equal(again, emb)


def test_svd_embed_recovers_low_rank_structure():
    rng = np.random.default_rng()
    u = rng.normal(size=(30, 3))
    m = u @ u.T
    import scipy.sparse as sp

    e = collab.svd_embed(sp.csr_matrix(m), dim=5, seed=0)
    assert e.shape == (30, 5)
    np.testing.assert_allclose(e @ e.T, m, atol=1e-6 * np.abs(m).max())


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """One prepared synthetic workspace after tokenize-items (real sentence encoder)."""
    work = prepared_workspace(tmp_path_factory.mktemp("items"))
    r = coea("tokenize-items", "--work", work, "--json", "--collab-dim", 16)
    assert r.code == 0, r.stderr
    return work, r.json()


def test_tokenize_items_outputs(tokenized):
    from coea_cli.items.encoder import encode_texts, load_text_encoder

    work, res = tokenized
    items = pq.read_table(work / "data" / "items.parquet")
    n = items.num_rows
    assert res["status"] == "written" and res["items"] == n
    texts = pq.read_table(work / "items" / "item_text.parquet")
    assert texts.column_names == ["item_id", "text"]
    assert texts["text"].to_pylist() == text.render_texts(items, text.DEFAULT_TEMPLATE)
    arrays, meta = store.read_tensors(work / "items" / "item_emb.safetensors")
    assert arrays["item_id"].dtype == np.int32 and (arrays["item_id"] == np.arange(n)).all()
    assert arrays["content"].shape == (n, 384) and arrays["collab"].shape == (n, 16)
    assert arrays["cold"].dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(arrays["content"], axis=1), 1, atol=1e-5)
    w = meta["collab_weight"]
    assert w == 0.5 and meta["encoder"] == "all-MiniLM-L6-v2" and meta["fused_dim"] == 400
    np.testing.assert_array_equal(
        arrays["fused"], np.concatenate([arrays["content"], np.float32(w) * arrays["collab"]], 1)
    )
    # the shared encoder API gives the same vectors, batch order does not matter
    enc = load_text_encoder(None, "cpu")
    some = texts["text"].to_pylist()[:5]
    one = encode_texts(enc, some[::-1], batch_size=2, progress=False)[::-1]
    np.testing.assert_allclose(one, arrays["content"][:5], atol=1e-5)
    # the collaborative part: period 0, items it misses folded in from before the test
    inter = pq.read_table(work / "data" / "interactions.parquet")
    test = store.read_json(work / "data" / "dataset.json")["test_period"]
    ref, cold, folded = collab.collab_embedding(inter, n, dim=16, seed=0, fold_before=test)
    assert meta["folded_in"] == folded and meta["fold_before"] == test
    np.testing.assert_allclose(arrays["collab"], ref, atol=1e-6)
    assert (arrays["cold"] == cold).all()
    manifest = store.read_json(work / "items" / "manifest.json")
    assert manifest["command"] == "tokenize-items"


def test_tokenize_items_rerun_is_noop_and_later_periods_do_not_matter(tokenized, tmp_path):
    work, _ = tokenized
    before = (work / "items" / "manifest.json").read_bytes()
    r = coea("tokenize-items", "--work", work, "--json", "--collab-dim", 16)
    assert r.code == 0 and r.json()["status"] == "up to date"
    assert "up to date" in r.stderr
    assert (work / "items" / "manifest.json").read_bytes() == before
    # a copy whose test period is rewritten gets the same embeddings
    other = tmp_path / "w"
    shutil.copytree(work / "data", other / "data")
    path = other / "data" / "interactions.parquet"
    inter = pq.read_table(path)
    p = inter["period"].to_numpy()
    item = inter["item_id"].to_numpy().copy()
    n = pq.read_metadata(work / "data" / "items.parquet").num_rows
    test = store.read_json(work / "data" / "dataset.json")["test_period"]
    item[p == test] = np.random.default_rng().integers(0, n, (p == test).sum())
    store.write_parquet(path, inter.set_column(1, "item_id", pa.array(item.astype(np.int32))))
    r = coea("tokenize-items", "--work", other, "--collab-dim", 16)
    assert r.code == 0, r.stderr
    a, _ = store.read_tensors(work / "items" / "item_emb.safetensors")
    b, _ = store.read_tensors(other / "items" / "item_emb.safetensors")
    for key in ("content", "collab", "fused", "cold"):
        np.testing.assert_array_equal(a[key], b[key])


def _assert_nothing_written(r, work, match):
    assert r.code == 2, r.stderr
    assert match in r.stderr
    assert not (work / "items").exists()


def test_tokenize_items_bad_input(tmp_path):
    work = prepared_workspace(tmp_path)
    r = coea("tokenize-items", "--work", tmp_path / "nowhere")
    assert r.code == 2 and "run `coea prepare` first" in r.stderr
    r = coea("tokenize-items", "--work", work, "--text-template", "{title} {plot}")
    _assert_nothing_written(r, work, "unknown field(s) {plot}")
    r = coea("tokenize-items", "--work", work, "--text-encoder", tmp_path / "none")
    _assert_nothing_written(r, work, "--text-encoder")
    r = coea("tokenize-items", "--work", work, "--collab-weight", "nan")
    _assert_nothing_written(r, work, "--collab-weight")
    # an interaction pointing at an unknown item
    path = work / "data" / "interactions.parquet"
    inter = pq.read_table(path)
    item = inter["item_id"].to_numpy().copy()
    item[7] = 500
    store.write_parquet(path, inter.set_column(1, "item_id", pa.array(item.astype(np.int32))))
    r = coea("tokenize-items", "--work", work)
    _assert_nothing_written(r, work, "row 7: column item_id = 500 is outside")
    # items whose ids are not dense
    path = work / "data" / "items.parquet"
    items = pq.read_table(path)
    ids = items["item_id"].to_numpy().copy()
    ids[3] = 99
    store.write_parquet(path, items.set_column(0, "item_id", pa.array(ids.astype(np.int32))))
    r = coea("tokenize-items", "--work", work)
    _assert_nothing_written(r, work, "row 3: item_id is 99")


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_text_encoder_matches_sentence_transformers(tmp_path, pooling):
    """The encoder runs the folder's sentence-transformers pipeline with transformers: the
    vectors equal SentenceTransformer's on the bundled model and on the same weights with
    CLS or max pooling."""
    import json

    from sentence_transformers import SentenceTransformer

    from coea_cli.items.encoder import default_encoder_path, encode_texts, load_text_encoder

    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
    for key in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens"):
        cfg[key] = key.split("_")[2] == pooling
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(len(pooling))
    words = ["film", "noir", "comedy", "1995", "Toy", "Story", "drama", "war", "the", "of"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 40))) for _ in range(12)]
    texts.append("long " * 400)  # past the 256-token limit: truncated alike
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = encode_texts(load_text_encoder(str(folder), "cpu"), texts, batch_size=5, progress=False)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_text_encoder_refuses_an_unsupported_pipeline(tmp_path):
    import json

    from coea_cli.items.encoder import default_encoder_path, load_text_encoder

    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "9_Dense",
                       "type": "sentence_transformers.models.Dense"})  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(BadInput, match="Dense"):
        load_text_encoder(str(folder), "cpu")


def test_text_encoder_refuses_an_unsupported_pooling(tmp_path):
    import json

    from coea_cli.items.encoder import default_encoder_path, load_text_encoder

    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
    cfg["pooling_mode_mean_sqrt_len_tokens"] = True  # mean and sqrt-len at once
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="pooling must be exactly one"):
        load_text_encoder(str(folder), "cpu")
