"""`coea pco-round`: round 0, a round k, cron safety (lock, crash, nothing to do), rollback."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil

import pytest

from coea_cli import store
from tests.helpers import coea
from tests.pco_fixtures import TINY, tiny_workspace


@pytest.fixture(scope="module")
def after_round0(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pco")
    work = tiny_workspace(tmp)
    r = coea("pco-round", *TINY, "--work", work, "--json")
    assert r.code == 0, r.stderr
    return work


@pytest.fixture
def work(after_round0, tmp_path):
    dst = tmp_path / "work"
    shutil.copytree(after_round0, dst)
    return dst


def _state(work):
    return store.read_json(work / "pco" / "state.json")


def _snapshot(work):
    """Every file under pco/ and llm/ (name -> bytes), to compare before and after a crash."""
    return {
        str(p.relative_to(work)): p.read_bytes()
        for root in ("pco", "llm")
        for p in sorted((work / root).rglob("*"))
        if p.is_file()
    }


def test_round0_writes_adapters_metrics_state(after_round0):
    work = after_round0
    state = _state(work)
    assert state["round"] == 0 and state["current"]["novelty"] == "llm/novelty/round-000"
    for role in ("novelty", "relevance"):
        assert (work / "llm" / role / "round-000" / "adapter_model.safetensors").exists()
    m = json.loads((work / "pco" / "round-000" / "metrics.json").read_text())
    assert m["invalid_rate"] == 0.0
    for key in ("novelty_hr@5", "popularity_hr@5", "relevance_auc", "test"):
        assert key in m
    assert 0.0 <= m["novelty_hr@5"] <= 1.0
    assert (work / "llm" / "backbone" / "config.json").exists()
    assert (work / "pco" / "round-000" / "manifest.json").exists()


def test_round_one_end_to_end_then_nothing_to_do(work):
    r = coea("pco-round", *TINY, "--work", work, "--json")
    assert r.code == 0, r.stderr
    out = r.json()
    assert out["rounds"] == [1]
    state = _state(work)
    assert state["round"] == 1 and [h["round"] for h in state["history"]] == [0, 1]
    folder = work / "pco" / "round-001"
    for name in ("candidates.parquet", "verified.parquet", "metrics.json", "manifest.json"):
        assert (folder / name).exists(), name
    m = json.loads((folder / "metrics.json").read_text())
    assert m["candidates"] > 0 and m["invalid_samples"] == 0
    assert set(m["reeval"]) == {"previous", "new"}
    cand = store.read_parquet(folder / "candidates.parquet")
    assert set(cand["source"].to_pylist()) <= {"sampled", "observed"}
    scores = cand["relevance"].to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    manifest = store.read_json(folder / "manifest.json")
    assert manifest["options"]["objective"] == "sft_kl" and manifest["options"]["round"] == 1
    # periods 0,1 trained; period 2 is the test period: nothing left to do
    r = coea("pco-round", *TINY, "--work", work, "--json")
    assert r.code == 0 and r.json()["status"] == "nothing to do"


def test_dry_run_writes_nothing(work):
    before = _snapshot(work)
    r = coea("pco-round", *TINY, "--work", work, "--dry-run")
    assert r.code == 0 and "would run round 1" in r.stderr
    assert _snapshot(work) == before


def test_rejection_keeps_previous_adapters(work):
    # epsilon -1: the new round must beat the previous one by more than 1, so it is rejected
    r = coea("pco-round", *TINY, "--epsilon", -1, "--work", work, "--json")
    assert r.code == 0, r.stderr
    state = _state(work)
    assert state["round"] == 1
    assert state["history"][-1]["accepted"] is False
    assert state["current"]["novelty"] == "llm/novelty/round-000"
    m = json.loads((work / "pco" / "round-001" / "metrics.json").read_text())
    assert m["accepted"] is False


def _hold(work, ready, release):
    with store.workspace_lock(work, "another pco-round"):
        ready.set()
        release.wait(30)


def test_lock_contention_exits_75(work):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(work, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        r = coea("pco-round", *TINY, "--work", work)
        assert r.code == 75 and "locked" in r.stderr
    finally:
        release.set()
        p.join(30)


CRASH_POINTS = [
    "coea_cli.llm.decoding.sample_clusters",  # generate
    "coea_cli.llm.decoding.relevance_scores",  # verify
    "coea_cli.llm.train.train_novelty",  # fine-tune
    "coea_cli.pco.rounds._save",  # saving adapters
    "coea_cli.workspace.tracks.Track.save_state",  # the very last step (pco.advance)
]


@pytest.mark.parametrize("target", CRASH_POINTS)
def test_crash_then_clean_rerun(work, target, monkeypatch):
    before_state = _state(work)

    def boom(*a, **k):
        raise RuntimeError("injected crash")

    monkeypatch.setattr(target, boom)
    # every engaged cluster verified whatever the tiny Relevance LLM says: every step must run
    verify_all = ("--tau-pos", 0.0, "--tau-neg", 0.0)
    r = coea("pco-round", *TINY, *verify_all, "--work", work)
    assert r.code == 1
    assert _state(work) == before_state  # the last completed round is intact
    monkeypatch.undo()
    r = coea("pco-round", *TINY, *verify_all, "--work", work, "--json")
    assert r.code == 0, r.stderr
    state = _state(work)
    assert state["round"] == 1 and [h["round"] for h in state["history"]] == [0, 1]
    rounds = sorted(p.name for p in (work / "pco").iterdir() if p.name.startswith("round"))
    assert rounds == ["round-000", "round-001"]  # nothing duplicated, no temporary leftovers
    leftovers = [p for p in work.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    assert not leftovers
    m = json.loads((work / "pco" / "round-001" / "metrics.json").read_text())
    assert m["novelty_path"] == "llm/novelty/round-001"


def test_no_kl_track_branches_from_round0(work):
    r = coea("pco-round", *TINY, "--track", "nokl", "--no-kl", "--work", work, "--json")
    assert r.code == 0, r.stderr
    assert r.json()["track"] == "nokl"
    track_state = store.read_json(work / "pco" / "tracks" / "nokl" / "state.json")
    assert track_state["round"] == 1
    assert (work / "llm" / "tracks" / "nokl" / "novelty" / "round-001").exists()
    m = json.loads((work / "pco" / "tracks" / "nokl" / "round-001" / "metrics.json").read_text())
    assert m["objective"] == "sft"
    assert _state(work)["round"] == 0  # the main track did not move


def test_missing_upstream_artifact(tmp_path):
    work = tiny_workspace(tmp_path)
    shutil.rmtree(work / "groups")
    r = coea("pco-round", *TINY, "--work", work)
    assert r.code == 2 and "profile-groups" in r.stderr


def test_state_records_what_serving_needs(after_round0):
    from coea_cli.workspace import Workspace
    from coea_cli.workspace.tracks import fingerprint

    serving = _state(after_round0)["serving"]
    ws = Workspace(after_round0)
    assert serving["base_model"] == "scratch" and serving["backbone"] == "llm/backbone"
    assert serving["backbone_fingerprint"] == fingerprint(after_round0 / "llm" / "backbone")
    assert serving["sid_version"] == ws.sids().version
    assert (serving["quant"], serving["attn"], serving["lora_r"]) == ("auto", "sdpa", 4)
    inputs = store.read_json(after_round0 / "pco" / "round-000" / "manifest.json")["inputs"]
    assert {"data/interactions.parquet", "sids/sids.parquet", "llm/backbone"} <= set(inputs)


def test_a_track_continues_only_with_its_training_settings(work):
    pairs = dict(zip(TINY[::2], TINY[1::2], strict=True))
    pairs["--lora-r"] = 8
    r = coea("pco-round", *[x for kv in pairs.items() for x in kv], "--work", work)
    assert r.code == 2 and "lora_r: 4 -> 8" in r.stderr and "--round 0" in r.stderr
    assert _state(work)["round"] == 0


def test_observed_per_user_bounds_the_judged_clusters(tmp_path):
    """The cap takes a random subset of each user's observed new clusters; the proposals, drawn
    before verification, are the same with and without it."""
    # a short period 0 and two-level clusters: users meet several new clusters in period 1
    work = tiny_workspace(tmp_path, periods="0.2,0.4,0.4", depth=2)
    r = coea("pco-round", *TINY, "--work", work)
    assert r.code == 0, r.stderr
    capped = tmp_path / "capped"
    shutil.copytree(work, capped)
    runs = {}
    for folder, cap in ((work, 0), (capped, 1)):
        # one proposal per user leaves observed clusters to cap
        r = coea("pco-round", *TINY, "--n", 1, "--observed-per-user", cap, "--work", folder)
        assert r.code == 0, r.stderr
        cand = store.read_parquet(folder / "pco" / "round-001" / "candidates.parquet")
        m = json.loads((folder / "pco" / "round-001" / "metrics.json").read_text())
        rows = {}
        columns = (cand[k].to_pylist() for k in ("user_id", "cluster", "source"))
        for u, c, src in zip(*columns, strict=True):
            rows.setdefault((u, src), set()).add(c)
        runs[cap] = rows, m
    (full, m_full), (one, m_one) = runs[0], runs[1]
    assert {k: v for k, v in full.items() if k[1] == "sampled"} == {
        k: v for k, v in one.items() if k[1] == "sampled"
    }
    observed = {k: v for k, v in full.items() if k[1] == "observed"}
    assert any(len(v) > 1 for v in observed.values())  # the cap has something to cut
    for key, clusters in observed.items():
        kept = one.get(key, set())
        assert len(kept) == 1 and kept <= clusters
    assert m_full["observed_novel_unjudged"] == 0
    assert m_one["observed_novel"] == len(observed)
    assert m_one["observed_novel"] + m_one["observed_novel_unjudged"] == m_full["observed_novel"]
