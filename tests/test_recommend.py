"""`coea recommend` and `coea evaluate` on a tiny workspace trained end to end."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from coea_cli import store
from coea_cli.recs.tune import named
from coea_cli.serving import Reader
from tests.helpers import coea
from tests.pco_fixtures import TINY, UPSTREAM, tiny_workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tiny_workspace(tmp_path_factory.mktemp("recs"))
    shutil.rmtree(work / "groups")  # the real command, with persona embeddings
    for args in (
        *UPSTREAM,
        ("pco-round", *TINY, "--rounds", 2),
        ("pco-round", *TINY, "--track", "nokl", "--no-kl"),
        ("pco-round", *TINY, "--track", "nodsie", "--no-dsie", "--rounds", 2),
        ("pco-round", *TINY, "--track", "nopersona", "--no-persona", "--rounds", 2),
        ("recommend", "--k", 10, "--n", 4),
    ):
        r = coea(*args, "--work", work)
        assert r.code == 0, (args, r.stderr)
    return work


def _recs(folder) -> pa.Table:
    return store.read_parquet(folder / "recs.parquet")


def test_lists_exclude_seen_and_hold_valid_items(trained):
    t = _recs(trained / "recs")
    inter = store.read_parquet(trained / "data" / "interactions.parquet")
    meta = store.read_json(trained / "data" / "dataset.json")
    n_items = meta["items"]
    items = t["item_id"].to_numpy()
    assert ((items >= 0) & (items < n_items)).all()
    train = inter.filter(pc.less(inter["period"], meta["test_period"]))
    seen = set(zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True))
    pairs = list(zip(t["user_id"].to_pylist(), items.tolist(), strict=True))
    assert not seen & set(pairs)
    assert len(set(pairs)) == len(pairs)  # no duplicates within a list
    per_user = np.bincount(t["user_id"].to_numpy())
    assert per_user.max() == 10 and t.num_rows > 0
    sids = store.read_parquet(trained / "sids" / "sids.parquet").sort_by("item_id")
    assert (sids["c1"].to_numpy()[items] == t["cluster"].to_numpy()).all()
    report = store.read_json(trained / "recs" / "report.json")
    assert report["users"] == len(per_user) and report["weights"]


def test_coea_items_come_from_clusters_new_to_the_user(trained):
    t = _recs(trained / "recs")
    inter = store.read_parquet(trained / "data" / "interactions.parquet")
    meta = store.read_json(trained / "data" / "dataset.json")
    sids = store.read_parquet(trained / "sids" / "sids.parquet").sort_by("item_id")
    c1 = sids["c1"].to_numpy()
    train = inter.filter(pc.less(inter["period"], meta["test_period"]))
    familiar: dict[int, set] = {}
    for u, i in zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True):
        familiar.setdefault(u, set()).add(int(c1[i]))
    coea_rows = t.filter(pc.invert(pc.equal(t["source"], "fill")))
    assert coea_rows.num_rows > 0
    for u, c in zip(
        coea_rows["user_id"].to_pylist(), coea_rows["cluster"].to_pylist(), strict=True
    ):
        assert c not in familiar.get(u, set())


def test_shards_union_equals_full_run(trained):
    for i in range(2):
        r = coea("recommend", "--k", 10, "--n", 4, "--shard", f"{i}/2", "--work", trained)
        assert r.code == 0, r.stderr
    full = _recs(trained / "recs")
    parts = [_recs(trained / "recs" / "shards" / f"{i}-of-2") for i in range(2)]
    union = pa.concat_tables(parts).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    full = full.sort_by([("user_id", "ascending"), ("rank", "ascending")])
    for col in ("user_id", "rank", "item_id", "cluster", "source"):
        assert union[col].to_pylist() == full[col].to_pylist(), col
    np.testing.assert_allclose(union["score"].to_numpy(), full["score"].to_numpy(), rtol=1e-5)


def test_lmdb_round_trip_and_lookup(trained):
    t = _recs(trained / "recs")
    users = store.read_parquet(trained / "data" / "users.parquet")["original_id"].to_pylist()
    items = store.read_parquet(trained / "data" / "items.parquet")["original_id"].to_pylist()
    assert t["user"].to_pylist() == [users[u] for u in t["user_id"].to_pylist()]
    assert t["item"].to_pylist() == [items[i] for i in t["item_id"].to_pylist()]
    with Reader(trained) as reader:
        for u in range(len(users)):
            rows = t.filter(pc.equal(t["user_id"], u)).sort_by("rank")
            got = reader.get(users[u])
            assert list(got.items) == [items[i] for i in rows["item_id"].to_pylist()]
            assert list(got.item_ids) == rows["item_id"].to_pylist()
            assert list(got.sources) == rows["source"].to_pylist()
            assert list(got.clusters) == rows["cluster"].to_pylist()
            np.testing.assert_array_equal(np.float32(got.scores), rows["score"].to_numpy())
    u = int(t["user_id"][0].as_py())
    r = coea("recommend", "--user", users[u], "--work", trained, "--json")
    assert r.code == 0, r.stderr
    out = r.json()
    report = store.read_json(trained / "recs" / "report.json")
    assert out["round"] == report["round"] and out["generation"] == report["generation"]
    out = out["recommendations"]
    first = t.filter(pc.equal(t["user_id"], u)).sort_by("rank")["item_id"].to_pylist()
    assert [x["item"] for x in out] == [items[i] for i in first]
    # without --json: one aligned row per recommendation under a header
    r = coea("recommend", "--user", users[u], "--work", trained)
    lines = r.stdout.splitlines()
    head = lines.index("recommendations:") + 1
    assert lines[head].split() == ["rank", "item", "title", "score", "cluster", "source"]
    rows = lines[head + 1 :]
    assert len(rows) == len(out)
    assert [int(line.split()[0]) for line in rows] == list(range(1, len(out) + 1))
    assert all(line.split()[-1] in ("draw", "reserve", "fill") for line in rows)


def test_lists_carry_the_round_and_models_that_made_them(trained):
    report = store.read_json(trained / "recs" / "report.json")
    manifest = store.read_json(trained / "recs" / "manifest.json")
    state = store.read_json(trained / "pco" / "state.json")
    made = [h["round"] for h in state["history"] if h["novelty"] == state["current"]["novelty"]]
    assert report["track"] == "main" and report["round"] == made[-1] == 1
    assert report["novelty"] == state["current"]["novelty"]
    models = report["models"]
    for role in ("novelty", "relevance"):
        assert models[role] == manifest["inputs"][state["current"][role]]
    assert models["dsie"] == manifest["inputs"]["dsie/dsie.safetensors"]
    assert models["sid_version"] == manifest["lineage"]["sid_version"]
    assert models["backbone"] == state["serving"]["backbone_fingerprint"]
    with Reader(trained) as reader:
        meta = reader.version
    assert meta["generation"] == report["generation"] and meta["format"] == 1
    for key in ("track", "round", "novelty", "relevance", "models", "weights", "before_period"):
        assert meta[key] == report[key], key
    assert meta["users"] == report["users"] and meta["k"] == 10


def test_merged_shards_equal_the_full_run(trained, tmp_path):
    w = _copy(trained, tmp_path / "merge")
    full = _recs(w / "recs")
    full_report = store.read_json(w / "recs" / "report.json")
    full_options = store.read_json(w / "recs" / "manifest.json")["options"]
    shutil.rmtree(w / "recs")
    args = ("recommend", "--k", 10, "--n", 4, "--work", w)
    for i in range(3):
        r = coea(*args, "--shard", f"{i}/3")
        assert r.code == 0, r.stderr
        # progress of each LLM phase (a plain line at the end when stderr is not a terminal)
        assert re.search(r"Novelty LLM: cluster probabilities: (\d+)/\1 prompts", r.stderr)
        assert re.search(r"Relevance LLM: judging the draws: (\d+)/\1 prompts", r.stderr)
    r = coea(*args, "--merge-shards", 4)
    assert r.code == 2 and "run `coea recommend --shard 0/4` first" in r.stderr
    r = coea("recommend", "--k", 5, "--n", 4, "--merge-shards", 3, "--work", w)
    assert r.code == 2 and "--k 10" in r.stderr
    r = coea(*args, "--merge-shards", 3, "--json")
    assert r.code == 0, r.stderr
    assert r.json()["merged_shards"] == 3 and r.json()["users"] == full_report["users"]
    merged = _recs(w / "recs")
    for col in ("user_id", "user", "rank", "item_id", "item", "cluster", "source"):
        assert merged[col].to_pylist() == full[col].to_pylist(), col
    np.testing.assert_allclose(merged["score"].to_numpy(), full["score"].to_numpy(), rtol=1e-5)
    report = store.read_json(w / "recs" / "report.json")
    for key in ("round", "novelty", "relevance", "models", "weights", "before_period"):
        assert report[key] == full_report[key], key
    assert store.read_json(w / "recs" / "manifest.json")["options"] == full_options
    users = store.read_parquet(w / "data" / "users.parquet")["original_id"].to_pylist()
    with Reader(w) as reader:
        assert reader.version["generation"] == report["generation"]
        for u, name in enumerate(users):
            rows = merged.filter(pc.equal(merged["user_id"], u)).sort_by("rank")
            assert list(reader.get(name).items) == rows["item"].to_pylist()
    # the merge is what one run writes: recommend and the merge again are no-ops
    for extra in ((), ("--merge-shards", 3)):
        r = coea(*args, *extra, "--json")
        assert r.code == 0 and r.json()["status"] == "up to date", (extra, r.stderr)
    assert (w / "recs" / "shards" / "2-of-3" / "recs.parquet").exists()
    # a shard made from other inputs than the current ones is refused
    _edit_json(
        w / "recs" / "shards" / "1-of-3" / "manifest.json",
        lambda m: m["inputs"].update({"dsie/dsie.safetensors": "0" * 64}),
    )
    r = coea(*args, "--merge-shards", 3, "--force")
    assert r.code == 2 and "1-of-3" in r.stderr and "--shard 1/3 --force" in r.stderr


def test_unknown_user_is_bad_input(trained):
    r = coea("recommend", "--user", "no-such-user", "--work", trained)
    assert r.code == 2 and "unknown user" in r.stderr


def test_bad_shard_and_ratio(trained):
    assert coea("recommend", "--shard", "3/2", "--work", trained).code == 2
    assert coea("recommend", "--explore-ratio", 1.5, "--work", trained).code == 2


def test_bad_list_options(trained):
    before = sorted(p.name for p in trained.iterdir())
    for opt, value in (("--n", 0), ("--top-m", 0), ("--temperature", 0), ("--key-recent", -1)):
        r = coea("recommend", opt, value, "--work", trained)
        assert r.code == 2 and opt in r.stderr, (opt, r.stderr)
    r = coea("recommend", "--k", 0, "--work", trained)
    assert r.code == 2 and "--k" in r.stderr
    assert sorted(p.name for p in trained.iterdir()) == before


def test_rerun_is_a_noop(trained):
    before = (trained / "recs" / "recs.parquet").stat().st_mtime_ns
    r = coea("recommend", "--k", 10, "--n", 4, "--work", trained, "--json")
    assert r.code == 0 and r.json()["status"] == "up to date"
    assert (trained / "recs" / "recs.parquet").stat().st_mtime_ns == before


def test_evaluate_reports_every_system(trained):
    r = coea("evaluate", "--ks", "5,10,20", "--work", trained)
    assert r.code == 2 and "the lists hold 10 items, --ks needs 20" in r.stderr
    assert "run `coea recommend --k 20` first" in r.stderr
    r = coea("evaluate", "--ks", "5,10", "--work", trained, "--json")
    assert r.code == 0, r.stderr
    report = r.json()
    assert report["protocol"].startswith("Protocol: full ranking")
    simple = {"Popularity", "Random novel", "DSIE top-K", "DSIE + MMR", "DSIE unexplored",
              "Popularity unexplored", "Mixed unexplored", "Popular unexplored",
              "Random unexplored"}  # fmt: skip
    ablations = {"CoEA round 0 (w/o PCO)", "CoEA w/o KL", "CoEA w/o DSIE", "Novelty LLM alone",
            "CoEA w/o reserve", "CoEA (full)", "CoEA, popularity inside",
            "CoEA recent context", "CoEA w/o group identity"}  # fmt: skip
    assert set(report["systems"]) == simple | ablations
    assert set(report["notes"]) == simple | ablations  # each says what it isolates
    for row in report["systems"].values():
        for key in ("hr@10", "ndcg@10", "unexpectedness@10", "serendipity@10", "coverage@10"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0
    rows = report["systems"]
    assert rows["Random novel"]["unexpectedness@10"] == 1.0
    assert rows["DSIE unexplored"]["unexpectedness@10"] == pytest.approx(
        rows["CoEA (full)"]["unexpectedness@10"], abs=0.2
    )
    for name in ablations:  # every slot of a CoEA list says where it came from
        shares = [rows[name][f"share_{s}@10"] for s in ("draw", "reserve", "fill")]
        assert sum(shares) == pytest.approx(1.0)
    assert rows["CoEA w/o reserve"]["share_reserve@10"] == 0.0
    assert "track nodsie, round 1" in report["notes"]["CoEA w/o DSIE"]
    assert "track nopersona, round 1" in report["notes"]["CoEA w/o group identity"]
    assert report["notes"]["Random novel"].startswith("random unseen items")
    assert [r["round"] for r in report["rounds"]["main"]] == [0, 1]
    assert [r["round"] for r in report["rounds"]["nokl"]] == [0, 1]
    assert [r["round"] for r in report["rounds"]["nodsie"]] == [0, 1]
    assert [r["round"] for r in report["rounds"]["nopersona"]] == [0, 1]
    for name in ("report.md", "report.json", "rounds.png", "tradeoff.png"):
        assert (trained / "eval" / name).exists()
    assert (trained / "eval" / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (trained / "eval" / "report.md").read_text()
    assert "| CoEA (full) |" in md and "95% paired bootstrap" in md
    # every CoEA row is compared with the strongest simple rules, with an interval
    from coea_cli.evaluation.suite import SIMPLE

    lead = {
        max(SIMPLE, key=lambda n: rows[n][col] if rows[n][col] is not None else -1)
        for col in ("hr@10", "novel_hr@10", "serendipity@10")
    }
    assert set(report["comparisons"]) >= {f"{n} vs {b}" for n in ablations for b in lead}
    assert set(report["comparisons"]) >= {f"CoEA (full) vs {b}" for b in SIMPLE}
    # and against each ablation: what the ablated part adds, with its interval
    assert set(report["comparisons"]) >= {
        f"CoEA (full) vs {n}" for n in ablations if n != "CoEA (full)"
    }
    for cmp in report["comparisons"].values():
        for c in cmp.values():
            lo, hi = c["ci95"]
            if c["ratio"] is not None and lo is not None and hi is not None:
                assert lo <= c["ratio"] <= hi
                assert c["verdict"] == (
                    "better" if lo > 1 else "worse" if hi < 1 else "no difference shown"
                )


def test_evaluate_ks():
    from coea_cli.options import EvaluateOptions

    assert EvaluateOptions(ks="5,10,20").cutoffs() == (5, 10, 20)
    assert EvaluateOptions(ks="20,5").cutoffs() == (5, 10, 20)  # @10 is always computed
    assert EvaluateOptions(ks="3, 3,").cutoffs() == (3, 10)


def test_evaluate_bad_ks_is_bad_input(trained):
    for spec in ("a,b", "0,10", "-5"):
        r = coea("evaluate", "--ks", spec, "--work", trained)
        assert r.code == 2 and "--ks" in r.stderr, (spec, r.stderr)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, edit):
    data = store.read_json(path)
    edit(data)
    store.write_json(path, data)


def test_serving_refuses_other_sids_backbone_or_track(trained, tmp_path):
    args = ("recommend", "--k", 10, "--n", 4, "--force")
    w = _copy(trained, tmp_path / "sid")
    _edit_json(w / "pco" / "state.json", lambda s: s["serving"].update(sid_version="0" * 16))
    r = coea(*args, "--work", w)
    assert r.code == 2 and "trained on SID version 0000000000000000" in r.stderr
    assert "run `coea pco-round --round 0` first" in r.stderr
    w = _copy(trained, tmp_path / "backbone")
    (w / "llm" / "backbone" / "extra.txt").write_text("a changed backbone")
    r = coea(*args, "--work", w)
    assert r.code == 2 and "changed since track main was trained" in r.stderr
    w = _copy(trained, tmp_path / "dsie")
    _edit_json(w / "dsie" / "config.json", lambda c: c.update(sid_version="1" * 16))
    r = coea(*args, "--work", w)
    assert r.code == 2 and "run `coea train-dsie` first" in r.stderr
    r = coea(*args, "--track", "nope", "--work", trained)
    assert r.code == 2 and "no track 'nope' (tracks: main, nodsie, nokl, nopersona)" in r.stderr
    r = coea(*args, "--track", "../x", "--work", trained)
    assert r.code == 2 and "--track" in r.stderr


def test_serving_refuses_models_of_an_older_log(trained, tmp_path):
    """A DSIE or adapters that have not caught up with the log are never served silently."""
    args = ("recommend", "--k", 10, "--n", 4, "--force")
    w = _copy(trained, tmp_path / "items")
    _edit_json(w / "dsie" / "config.json", lambda c: c["model"].update(n_items=7))
    r = coea(*args, "--work", w)
    assert r.code == 2 and "DSIE covers 7 items" in r.stderr
    assert "run `coea train-dsie --init-from dsie` first" in r.stderr
    w = _copy(trained, tmp_path / "cutoff")
    _edit_json(w / "dsie" / "config.json", lambda c: c.update(cutoff=1))
    r = coea(*args, "--work", w)
    assert r.code == 2 and "trained on the periods before 1" in r.stderr
    assert "run `coea train-dsie` first" in r.stderr
    w = _copy(trained, tmp_path / "rounds")

    def back_to_round_zero(s):
        s["round"], s["history"] = 0, s["history"][:1]
        s["current"] = {k: s["history"][0][k] for k in ("novelty", "relevance")}

    _edit_json(w / "pco" / "state.json", back_to_round_zero)
    r = coea(*args, "--work", w)
    assert r.code == 2 and "has run rounds up to 0" in r.stderr and "needs round 1" in r.stderr
    assert "run `coea pco-round` first" in r.stderr
    r = coea(*args, "--round", 0, "--work", w)  # an older round, asked for by name
    assert r.code == 0, r.stderr
    manifest = store.read_json(w / "recs" / "manifest.json")
    sids = store.read_parquet(w / "sids" / "sids.parquet")
    assert (
        manifest["lineage"]["sid_version"]
        == json.loads(sids.schema.metadata[b"coea.sids"])["version"]
    )
    assert manifest["lineage"]["data"]["test_period"] == 2


def test_copied_workspace_is_up_to_date(trained, tmp_path):
    w = _copy(trained, tmp_path / "copy")
    r = coea("recommend", "--k", 10, "--n", 4, "--work", w, "--json")
    assert r.code == 0 and r.json()["status"] == "up to date", r.stderr


def test_evaluate_refuses_lists_of_other_adapters(trained, tmp_path):
    w = _copy(trained, tmp_path / "stale")
    zero = "llm/novelty/round-000"
    _edit_json(w / "pco" / "state.json", lambda s: s["current"].update(novelty=zero))
    r = coea("evaluate", "--ks", "5,10", "--work", w)
    assert r.code == 2 and f"the main track now serves {zero}" in r.stderr
    assert "run `coea recommend` first" in r.stderr


def test_rolling_evaluation_uses_the_models_of_each_period(trained, tmp_path):
    w = _copy(trained, tmp_path / "rolling")
    shutil.rmtree(w / "dsie-before-1")
    shutil.rmtree(w / "pco" / "tracks" / "nokl")  # a missing track: its row says how to train it
    r = coea("evaluate", "--rolling", "--ks", "5,10", "--work", w)
    assert r.code == 2 and "run `coea train-dsie --cutoff 1` first" in r.stderr
    r = coea("train-dsie", "--cutoff", 1, "--epochs", 1, "--hidden", 32, "--heads", 2, "--work", w)
    assert r.code == 0, r.stderr
    r = coea("evaluate", "--rolling", "--ks", "5,10", "--work", w, "--json")
    assert r.code == 0, r.stderr
    report = r.json()
    assert report["periods"] == [1, 2]
    inter = store.read_parquet(w / "data" / "interactions.parquet")
    active = {
        k: len(set(inter.filter(pc.equal(inter["period"], k))["user_id"].to_pylist()))
        for k in (1, 2)
    }
    assert 0 < report["events"] <= sum(active.values())
    rows = report["per_period"]["DSIE unexplored"]
    assert [row["period"] for row in rows] == [1, 2]
    assert sum(row["users"] for row in rows) == report["events"]
    # period 1 is served by round 0 (trained on period 0), period 2 by round 1 when accepted
    served = report["novelty_adapters"]
    assert served["1"]["CoEA (full)"] == "llm/novelty/round-000"
    state = store.read_json(w / "pco" / "state.json")
    assert served["2"]["CoEA (full)"] == state["current"]["novelty"]
    assert served["1"]["CoEA w/o DSIE"] == "llm/tracks/nodsie/novelty/round-000"
    # the group-identity ablation trains its own round 0, without the persona
    assert served["1"]["CoEA w/o group identity"] == "llm/tracks/nopersona/novelty/round-000"
    bare = store.read_json(w / "pco" / "tracks" / "nopersona" / "state.json")
    assert bare["serving"]["context"] == "no-persona"
    assert set(report["comparisons"]) >= {"CoEA (full) vs DSIE unexplored"}
    assert report["notes"]["CoEA w/o KL"] == "not run: `coea pco-round --track nokl --no-kl`"
    # the weights of period 2 are chosen on period 1; period 1 has no validation period
    assert report["weights"]["1"] == "top-m" and report["validation"]["2"]["period"] == 1
    md = (w / "eval-rolling" / "report.md").read_text()
    assert "Rolling:" in md and "| CoEA (full) |" in md
    assert (w / "eval-rolling" / "periods.png").read_bytes()[:4] == b"\x89PNG"
    again = coea("evaluate", "--rolling", "--ks", "5,10", "--work", w)
    assert again.code == 0 and "up to date" in again.stderr


def test_weights_are_chosen_on_the_validation_period(trained):
    report = store.read_json(trained / "recs" / "report.json")
    v = report["validation"]
    assert v["period"] == 1 and v["users"] > 0
    assert {"validation", "llm", "lists", "write", "total"} <= set(report["seconds"])
    assert report["weights"] == v["chosen"] and v["chosen"] in v["scores"]
    best = v["scores"][v["chosen"]]["serendipity@10"]
    assert all(row["serendipity@10"] <= best + 1e-12 for row in v["scores"].values())
    assert "top-m" in v["scores"] and len(v["scores"]) == 61  # top-m and the 4 x 3 x 5 grid
    rule = named(v["rule"])  # the best setting without the LLMs, reported beside
    assert rule.novelty == rule.relevance == 0 and v["rule"] in v["scores"]
    no_llm = [
        n for n in v["scores"] if n != "top-m" and named(n).novelty == named(n).relevance == 0
    ]
    assert len(no_llm) == 5
    assert all(v["scores"][n]["serendipity@10"] <= v["scores"][v["rule"]]["serendipity@10"]
               for n in no_llm)  # fmt: skip
    manifest = store.read_json(trained / "recs" / "manifest.json")
    assert "dsie-before-1/dsie.safetensors" in manifest["inputs"]  # validated as of period 1
    r = coea("recommend", "--weights", "1,x", "--work", trained)
    assert r.code == 2 and "--weights" in r.stderr


def _truth_and_history(work):
    inter = store.read_parquet(work / "data" / "interactions.parquet")
    test = store.read_json(work / "data" / "dataset.json")["test_period"]
    users = inter["user_id"].to_numpy()
    items = inter["item_id"].to_numpy()
    period = inter["period"].to_numpy()
    hist = {u: set(items[(users == u) & (period < test)].tolist()) for u in np.unique(users)}
    truth = {u: set(items[(users == u) & (period == test)].tolist()) for u in np.unique(users)}
    events = [u for u in sorted(truth) if truth[u] and hist[u]]
    return events, truth, hist


def test_evaluate_scores_another_systems_lists(trained, tmp_path):
    import secrets

    import pyarrow.csv as pacsv

    w = _copy(trained, tmp_path / "ext")
    # CoEA's own stored lists given as a file: the row equals CoEA (full), metric for metric
    own = _recs(w / "recs").select(["user", "item", "rank"])
    store.write_parquet(tmp_path / "own.parquet", own)
    r = coea("evaluate", "--recs", tmp_path / "own.parquet", "--ks", "5,10", "--work", w, "--json")
    assert r.code == 0, r.stderr
    rep = r.json()
    mine, full = rep["systems"]["own"], rep["systems"]["CoEA (full)"]
    for key, value in full.items():
        if not key.startswith("share_"):
            assert mine[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert rep["comparisons"]["own vs CoEA (full)"]["HR@10"]["ratio"] in (1.0, None)
    assert {"own vs DSIE unexplored", "own vs Popular unexplored"} <= set(rep["comparisons"])
    assert {"DSIE unexplored", "Popularity", "DSIE top-K"} <= set(rep["systems"])
    assert (w / "eval-own" / "report.md").exists() and (w / "eval-own" / "tradeoff.png").exists()
    again = coea("evaluate", "--recs", tmp_path / "own.parquet", "--ks", "5,10", "--work", w)
    assert again.code == 0 and "up to date" in again.stderr
    # fresh random lists as CSV, some users left out: HR@10 and NDCG@10 by hand
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    users = store.read_parquet(w / "data" / "users.parquet")["original_id"].to_pylist()
    items = store.read_parquet(w / "data" / "items.parquet")["original_id"].to_pylist()
    listed = rng.choice(len(users), len(users) * 2 // 3, replace=False)
    lists = {int(u): rng.choice(len(items), 12, replace=False) for u in listed}
    rows = [(users[u], items[i], r + 1) for u, x in lists.items() for r, i in enumerate(x)]
    rows = [rows[j] for j in rng.permutation(len(rows))]  # any row order
    t = pa.table({"user": [a for a, _, _ in rows], "item": [b for _, b, _ in rows],
                  "rank": [c for _, _, c in rows]})  # fmt: skip
    pacsv.write_csv(t, tmp_path / "prod.csv")
    r = coea("evaluate", "--recs", tmp_path / "prod.csv", "--ks", "10", "--work", w, "--json")
    assert r.code == 0, r.stderr
    row = r.json()["systems"]["prod"]
    events, truth, _ = _truth_and_history(w)
    hr, ndcg = [], []
    for u in events:
        top = lists.get(u, np.zeros(0, int))[:10]
        rel = [int(i) in truth[u] for i in top]
        hr.append(float(any(rel)))
        dcg = sum(1 / np.log2(j + 2) for j, x in enumerate(rel) if x)
        ndcg.append(dcg / sum(1 / np.log2(j + 2) for j in range(min(10, len(truth[u])))))
    assert r.json()["users"] == len(events)
    assert row["hr@10"] == pytest.approx(np.mean(hr), abs=1e-9), seed
    assert row["ndcg@10"] == pytest.approx(np.mean(ndcg), abs=1e-9), seed
    assert (
        f"{len(lists) and sum(u in lists for u in events)} of the {len(events)}"
        in (r.json()["notes"]["prod"])
    )


def test_evaluate_recs_bad_files_name_row_and_column(trained, tmp_path):
    users = store.read_parquet(trained / "data" / "users.parquet")["original_id"].to_pylist()
    items = store.read_parquet(trained / "data" / "items.parquet")["original_id"].to_pylist()
    cases = {
        "no_rank": ({"user": [users[0]], "item": [items[0]]}, "no column(s) ['rank']"),
        "unknown_item": (
            {"user": [users[0]] * 2, "item": [items[0], "nope"], "rank": [1, 2]},
            "row 2: item 'nope' is not in data/items.parquet",
        ),
        "unknown_user": (
            {"user": [users[0], "ghost"], "item": [items[0]] * 2, "rank": [1, 1]},
            "row 2: user 'ghost' is not in data/users.parquet",
        ),
        "twice": (
            {"user": [users[0]] * 2, "item": [items[0], items[1]], "rank": [1, 1]},
            "row 2: the user has this rank twice",
        ),
        "rank0": ({"user": [users[0]], "item": [items[0]], "rank": [0]}, "row 1: column rank"),
    }
    before = sorted(p.name for p in trained.iterdir())
    for name, (cols, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        store.write_parquet(path, pa.table(cols))
        r = coea("evaluate", "--recs", path, "--work", trained)
        assert r.code == 2 and message in r.stderr, (name, r.stderr)
    assert sorted(p.name for p in trained.iterdir()) == before
    r = coea("evaluate", "--recs", tmp_path / "missing.csv", "--work", trained)
    assert r.code == 2 and "file not found" in r.stderr
    r = coea("evaluate", "--name", "x", "--work", trained)
    assert r.code == 2 and "--recs" in r.stderr


def test_evaluate_is_a_noop_when_up_to_date_and_reruns_with_force(trained, tmp_path):
    w = _copy(trained, tmp_path / "make")
    r = coea("evaluate", "--ks", "5,10", "--work", w)
    assert r.code == 0, r.stderr
    report = w / "eval" / "report.json"
    before = report.stat().st_mtime_ns
    r = coea("evaluate", "--ks", "5,10", "--work", w)
    assert r.code == 0 and "eval is up to date" in r.stderr
    assert report.stat().st_mtime_ns == before
    assert "| CoEA (full) |" in r.stdout  # the stored table is printed again
    r = coea("evaluate", "--ks", "5,10", "--work", w, "--force", "--verbose")
    assert r.code == 0 and "eval: running (--force)" in r.stderr
    assert report.stat().st_mtime_ns != before
    r = coea("evaluate", "--ks", "5,10", "--mmr-lambda", 0.3, "--work", w, "--verbose")
    assert r.code == 0 and "eval: running (options changed: mmr_lambda)" in r.stderr


def _serve(work: str, port: int) -> dict:
    """recommend then evaluate in this process (a rank under torchrun)."""
    import os

    out = {}
    for i, cmd in enumerate(("recommend", "evaluate")):
        os.environ["MASTER_PORT"] = str(port + i)  # each command joins its own group
        r = coea(cmd, "--force", "--json", "--work", work)
        if r.code != 0:  # exit non-zero: spawn then stops the other rank
            raise RuntimeError(f"{cmd}: exit {r.code}\n{r.stderr}")
        out[cmd] = r.stdout
    return out


def test_recommend_and_evaluate_under_torchrun_match_one_process(trained, tmp_path):
    """Two gloo processes share the LLM passes of recommend and evaluate: the lists and the
    report equal one process's; rank 0 alone writes and prints."""
    import socket

    from tests.test_pco_dist import _two

    one, two = _copy(trained, tmp_path / "one"), _copy(trained, tmp_path / "two")
    for cmd in ("recommend", "evaluate"):
        r = coea(cmd, "--force", "--work", one)
        assert r.code == 0, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = _two(tmp_path, _serve, str(two), port + 1, join=False)
    assert runs[1] == {"recommend": "", "evaluate": ""}  # rank 1 prints nothing
    a, b = _recs(one / "recs"), _recs(two / "recs")
    for col in ("user_id", "rank", "item_id", "cluster", "source"):
        assert a[col].to_pylist() == b[col].to_pylist(), col
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5)
    ra, rb = (store.read_json(w / "eval" / "report.json") for w in (one, two))
    assert ra["systems"].keys() == rb["systems"].keys()
    for name, row in ra["systems"].items():
        for key, value in row.items():
            if isinstance(value, float):
                assert rb["systems"][name][key] == pytest.approx(value, rel=1e-6), (name, key)
    assert json.loads(runs[0]["evaluate"])["comparisons"].keys() == ra["comparisons"].keys()
