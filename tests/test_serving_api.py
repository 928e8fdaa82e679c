"""The reader API for serving processes (coea_cli.serving) and the stored lists' layout
(coea_cli.workspace.recs): every lookup is checked against the lists written, on fresh random
stores; a rewrite swapped in by another process is noticed and served."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

from coea_cli import store
from coea_cli.errors import ArtifactError
from coea_cli.serving import Reader
from coea_cli.workspace import recs as layout

ROOT = Path(__file__).resolve().parents[1]


def random_lists(seed: int, n_users: int = 400, n_items: int = 300, item_base: int = 0):
    """Random lists (some users absent, some empty, lengths 0..12) and original ids that are
    not the dense ids (shuffled strings, some non-ASCII)."""
    rng = np.random.default_rng(seed)
    lists = {}
    for u in rng.choice(n_users, n_users * 3 // 4, replace=False):
        k = int(rng.integers(0, 13))
        r = np.zeros(k, layout.RECORD)
        r["item"] = rng.choice(n_items, k, replace=False)
        r["score"] = rng.normal(size=k)
        r["cluster"] = rng.integers(0, 40, k)
        r["source"] = rng.integers(0, len(layout.SOURCES), k)
        lists[int(u)] = r
    users = [f"user-{x}" for x in rng.permutation(n_users * 10)[:n_users]]
    users[0] = "Zoë é"  # UTF-8 keys
    items = [f"it{x + item_base}" for x in rng.permutation(n_items * 10)[:n_items]]
    return lists, users, items


def write_version(folder: Path, seed: int, item_base: int = 0, **meta) -> dict:
    """Write a random store into `folder` (a recs/ folder), swapped in whole as recommend
    does; return its meta."""
    lists, users, items = random_lists(seed, item_base=item_base)
    m = layout.new_meta(round=seed % 7, **meta)
    with store.atomic_dir(folder) as tmp:
        layout.write(tmp, layout.Lists.from_dict(lists), users, items, m)
    return m


def expected(lists, users, items, u: int):
    r = lists[u]
    return (
        [items[i] for i in r["item"]],
        r["score"].tolist(),
        r["cluster"].tolist(),
        [layout.SOURCES[s] for s in r["source"]],
    )


@pytest.mark.parametrize("preload", [False, True])
def test_every_lookup_returns_the_list_written(tmp_path, preload):
    seed = secrets.randbits(32)
    lists, users, items = random_lists(seed)
    meta = layout.new_meta(track="main", round=3, novelty="llm/novelty/round-003")
    with store.atomic_dir(tmp_path / "recs") as tmp:
        layout.write(tmp, layout.Lists.from_dict(lists), users, items, meta)
    with Reader(tmp_path, preload=preload) as reader:  # a workspace folder
        if preload:  # every stored user in memory, the meta and items entries not
            assert set(reader._memo) == {users[u] for u in lists}
        assert reader.version["generation"] == meta["generation"]
        assert reader.version["round"] == 3 and reader.version["users"] == len(lists)
        for u, name in enumerate(users):
            got = reader.get(name)
            if u not in lists:
                assert got is None and name not in reader, seed
                with pytest.raises(KeyError):
                    reader[name]
                continue
            want = expected(lists, users, items, u)
            assert len(got) == len(lists[u]), seed
            assert list(got.items) == want[0], seed
            assert list(got.scores) == pytest.approx(want[1], rel=0, abs=0), seed
            assert list(got.clusters) == want[2] and list(got.sources) == want[3], seed
            assert list(got.item_ids) == lists[u]["item"].tolist()
            assert got.version["generation"] == meta["generation"]
            d = got.to_dict()
            assert [r["item"] for r in d["recommendations"]] == want[0]
            assert [r["rank"] for r in d["recommendations"]] == list(range(1, len(want[0]) + 1))
        # a batch in the order asked, unknown users as None
        ask = [users[u] for u in np.random.default_rng(seed).permutation(len(users))[:50]]
        ask.append("no-such-user")
        batch = reader.get_many(ask)
        assert len(batch) == len(ask) and batch[-1] is None
        for name, got in zip(ask, batch, strict=True):
            single = reader.get(name)
            assert (got is None) == (single is None)
            if got is not None:
                assert got.items == single.items and got.user == name
        table = reader.table(ask)
        rows = [(x.user, i) for x in batch if x is not None for i in x.items]
        assert list(zip(table["user"].to_pylist(), table["item"].to_pylist(), strict=True)) == rows


def test_int_ids_and_paths(tmp_path):
    lists = {0: np.zeros(2, layout.RECORD), 1: np.zeros(1, layout.RECORD)}
    lists[0]["item"] = [1, 0]
    with store.atomic_dir(tmp_path / "recs") as tmp:
        layout.write(tmp, layout.Lists.from_dict(lists), ["196", "22"], ["a", "b"], {})
    for path in (tmp_path, tmp_path / "recs", tmp_path / "recs" / "recs.lmdb"):
        with Reader(path) as r:
            assert r.get(196).items == ("b", "a") and r.get("22").items == ("a",)
    with pytest.raises(ArtifactError, match="coea recommend"):
        Reader(tmp_path / "nowhere")


def test_parquet_holds_the_same_lists_with_original_ids(tmp_path):
    seed = secrets.randbits(32)
    lists, users, items = random_lists(seed)
    old = layout.ROWS_PER_GROUP
    layout.ROWS_PER_GROUP = 97  # several row groups, a user's rows may straddle two
    try:
        layout.write(tmp_path, layout.Lists.from_dict(lists), users, items, {})
    finally:
        layout.ROWS_PER_GROUP = old
    t = store.read_parquet(tmp_path / "recs.parquet")
    assert t.column_names == [
        "user_id", "user", "rank", "item_id", "item", "score", "cluster", "source",
    ]  # fmt: skip
    back = layout.lists_of_table(t).to_dict()
    assert set(back) == {u for u, r in lists.items() if len(r)}, seed
    for u, r in back.items():
        np.testing.assert_array_equal(r, lists[u])
    for row in t.to_pylist()[:: max(1, t.num_rows // 50)]:
        u, rank = row["user_id"], row["rank"]
        assert row["user"] == users[u] and row["item"] == items[row["item_id"]], seed
        assert row["item_id"] == lists[u]["item"][rank - 1]
        assert row["source"] == layout.SOURCES[lists[u]["source"][rank - 1]]


@pytest.mark.parametrize("preload", [False, True])
def test_a_swapped_in_version_is_noticed(tmp_path, preload):
    recs = tmp_path / "recs"
    seed = secrets.randbits(31)
    m1 = write_version(recs, seed)
    reader = Reader(tmp_path, check_every=3600, preload=preload)
    lists1, users, items1 = random_lists(seed)
    u = next(iter(lists1))
    before = reader.get(users[u])
    m2 = write_version(recs, seed + 1, item_base=10_000)
    assert reader.version["generation"] == m1["generation"]  # not checked yet
    assert reader.refresh() and reader.reopened == 1
    assert reader.version["generation"] == m2["generation"]
    assert not reader.refresh()  # nothing newer
    lists2, users2, items2 = random_lists(seed + 1, item_base=10_000)
    for j, name in enumerate(users2):
        got = reader.get(name)
        assert (got is None) == (j not in lists2)
        if got is not None:
            assert list(got.items) == expected(lists2, users2, items2, j)[0]
    # a list returned before the swap keeps its content and version
    assert list(before.items) == expected(lists1, users, items1, u)[0]
    assert before.version["generation"] == m1["generation"]
    # check_every=0: the next lookup notices on its own
    fast = Reader(tmp_path, check_every=0, preload=preload)
    m3 = write_version(recs, seed + 2)
    fast.get("anyone")
    assert fast.version["generation"] == m3["generation"]
    # half a swap (the folder moved away): the open version keeps serving
    os.replace(recs, tmp_path / "elsewhere")
    assert not fast.refresh()
    assert fast.version["generation"] == m3["generation"]
    name = random_lists(seed + 2)[1][next(iter(random_lists(seed + 2)[0]))]
    assert fast.get(name) is not None
    reader.close()
    fast.close()


def test_concurrent_rewrite_by_another_process(tmp_path):
    """Another process swaps a new version in while this one serves lookups: every lookup
    returns a whole list of the old or of the new version, and the new one is served after."""
    recs = tmp_path / "recs"
    seed = secrets.randbits(30)
    write_version(recs, seed)
    old = random_lists(seed)
    new = random_lists(seed + 1, item_base=10_000)
    reader = Reader(recs, check_every=0.01)
    code = (
        "import sys; from pathlib import Path; from tests.test_serving_api import write_version;"
        f"m = write_version(Path(sys.argv[1]), {seed + 1}, item_base=10_000);"
        "print(m['generation'])"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(recs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    rng = np.random.default_rng(seed)
    seen = {"old": 0, "new": 0}
    done_at = None
    while done_at is None or time.monotonic() < done_at + 0.1:
        if done_at is None and child.poll() is not None:
            done_at = time.monotonic()
        j = int(rng.integers(len(old[1])))
        got = reader.get(old[1][j])
        got_new = reader.get(new[1][j])
        for got_, (lists, users, items), tag in ((got, old, "old"), (got_new, new, "new")):
            if got_ is not None and j in lists:
                if list(got_.items) == expected(lists, users, items, j)[0]:
                    seen[tag] += 1
                else:  # a user id present in both versions: the other version's list
                    other = new if tag == "old" else old
                    k = other[1].index(got_.user)
                    assert list(got_.items) == expected(*other, k)[0]
    assert seen["old"] > 0 and seen["new"] > 0, seen
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert reader.version["generation"] == out.strip()
    assert reader.reopened >= 1
    for j in list(new[0])[:50]:
        assert list(reader.get(new[1][j]).items) == expected(*new, j)[0]
    reader.close()


def test_a_store_without_meta_names_the_fix(tmp_path):
    store.write_lmdb(tmp_path / "recs" / "recs.lmdb", [(b"o:1", b"1")])
    with pytest.raises(ArtifactError, match=r"older coea.*recommend --force"):
        Reader(tmp_path)


def test_lmdb_map_grows_past_its_initial_size(tmp_path):
    rng = np.random.default_rng(secrets.randbits(32))
    values = {b"k%07d" % i: rng.bytes(int(rng.integers(100, 3000))) for i in range(4000)}
    total = sum(map(len, values.values()))
    assert total > 4 * (1 << 20)
    n = store.write_lmdb(tmp_path / "db", sorted(values.items()), map_size=1 << 20, append=True,
                         batch=500)  # fmt: skip
    assert n == len(values)
    env = store.open_lmdb(tmp_path / "db")
    with env.begin() as txn:
        assert all(txn.get(k) == v for k, v in values.items())
    env.close()
    with pytest.raises(lmdb.MapFullError):  # what the growth replaces
        env = lmdb.open(str(tmp_path / "fixed"), map_size=1 << 20)
        with env.begin(write=True) as txn:
            for k, v in values.items():
                txn.put(k, v)
    with pytest.raises(ValueError, match="out of order"):
        store.write_lmdb(tmp_path / "db2", [(b"b", b"1"), (b"a", b"2")], append=True)


def test_lists_padded_and_checked():
    rec = np.zeros(3, layout.RECORD)
    rec["item"] = [5, 6, 7]
    lists = layout.Lists(np.array([1, 4]), np.array([0, 2, 3]), rec)
    full = lists.padded(6).to_dict()
    assert sorted(full) == list(range(6))
    assert [len(full[u]) for u in range(6)] == [0, 2, 0, 0, 1, 0]
    assert full[1]["item"].tolist() == [5, 6] and full[4]["item"].tolist() == [7]
    with pytest.raises(ValueError):
        layout.Lists(np.array([4, 1]), np.array([0, 2, 3]), rec)


def test_the_reader_imports_no_model_library():
    code = (
        "import sys, coea_cli.serving;"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
