"""train-dsie: masking, group token, local attention, splits, keys, resume, DDP, the command."""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli import store
from coea_cli.dsie import data as D
from coea_cli.dsie.baselines import masked_ranks, popularity_metrics
from coea_cli.dsie.infer import encode_histories, encode_users, load_model, scores
from coea_cli.dsie.model import DSIE, DSIEConfig, local_attention
from coea_cli.dsie.train import TrainConfig, Trainer
from coea_cli.options import DsieOptions
from coea_cli.workspace import History, SidLayout, UserSequences, Workspace, user_sequences
from tests.helpers import coea
from tests.test_groups import grouped, sids_workspace  # noqa: F401  (module fixture)

TINY = ["--hidden", 32, "--heads", 2, "--long-len", 20, "--short-len", 4, "--batch-size", 16]
TINY += ["--warmup", 2, "--device", "cpu"]
FRESH = shutil.ignore_patterns(
    "dsie", "dsie-loo", "checkpoints"
)  # copy a workspace before train-dsie


def tiny_model(seed=0, n_items=30, n_groups=3, **kw) -> DSIE:
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack(
        [torch.randint(0, 5, (n_items,), generator=g), torch.randint(0, 4, (n_items,), generator=g),
         torch.arange(n_items) % 3, torch.zeros(n_items, dtype=torch.long)], dim=1,
    )  # fmt: skip
    opts = DsieOptions(hidden=32, heads=2, long_len=16, short_len=4, dropout=0.0)
    cfg = DSIEConfig.from_options(opts, n_items, SidLayout((5, 4, 3, 1)), (n_groups, 8))
    cfg = DSIEConfig.from_dict({**cfg.to_dict(), **kw})
    torch.manual_seed(seed)
    return DSIE(cfg, codes, torch.randn(n_groups, 8, generator=g)).eval()


# ---------------------------------------------------------------- model


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 25), window=st.integers(1, 7))
def test_local_attention_matches_naive(seed, n, window):
    g = torch.Generator().manual_seed(seed)
    b, h, d = 3, 2, 16
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(h, window, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, n + 1, (b,), generator=g)
    valid = torch.arange(n)[None] >= (n - lengths)[:, None]
    out = local_attention(q, k, v, valid, bias)
    ref = torch.zeros_like(out)
    for r in range(b):
        for t in range(n):
            if not valid[r, t]:
                continue
            keys = [j for j in range(max(0, t - window + 1), t + 1) if valid[r, j]]
            for hh in range(h):
                s = torch.stack(
                    [q[r, hh, t] @ k[r, hh, j] / d**0.5 + bias[hh, t - j] for j in keys]
                )
                ref[r, hh, t] = sum(
                    a * v[r, hh, j] for a, j in zip(s.softmax(0), keys, strict=True)
                )
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(2, 16), data=st.data())
def test_no_future_leakage(seed, length, data):
    """Changing the items after position t never changes any state at positions <= t."""
    model = tiny_model(seed % 7)
    rng = np.random.default_rng(seed)
    t_len = 16
    items = torch.full((2, t_len), model.cfg.n_items)
    items[:, t_len - length :] = torch.as_tensor(rng.integers(0, 30, (2, length)))
    lengths = torch.tensor([length, length])
    groups = torch.tensor([0, 2])
    t = data.draw(st.integers(t_len - length, t_len - 2))
    changed = items.clone()
    changed[:, t + 1 :] = torch.as_tensor(rng.integers(0, 30, (2, t_len - t - 1)))
    with torch.no_grad():
        before, after = model.states(items, lengths, groups), model.states(changed, lengths, groups)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=0, rtol=0)
        if (changed[:, t + 1 :] != items[:, t + 1 :]).any():
            assert not torch.equal(a[:, t + 1 :], b[:, t + 1 :])


def test_short_branch_sees_only_its_window():
    model = tiny_model(1)
    items = torch.randint(0, 30, (1, 16))
    lengths = torch.tensor([16])
    changed = items.clone()
    changed[0, 5] = (items[0, 5] + 1) % 30
    with torch.no_grad():
        _, hs, _ = model.states(items, lengths, torch.tensor([0]))
        _, hs2, _ = model.states(changed, lengths, torch.tensor([0]))
    moved = (hs - hs2).abs().amax(-1)[0]
    assert (moved[5:9] > 0).all()  # window 4: positions 5..8 read item 5
    assert (moved[:5] == 0).all() and (moved[9:] == 0).all()


def test_group_token_changes_long_state_and_no_group_ignores_it():
    items = torch.randint(0, 30, (2, 10))
    lengths = torch.tensor([10, 6])
    groups = torch.tensor([1, 1])
    model = tiny_model(2)
    with torch.no_grad():
        before = model.encode(items, lengths, groups)
        model.persona[1] += 1.0
        after = model.encode(items, lengths, groups)
        other = model.encode(items, lengths, torch.tensor([0, 0]))
    assert not torch.allclose(before["long"], after["long"])
    assert not torch.allclose(before["long"], other["long"])
    torch.testing.assert_close(before["short"], after["short"])  # the short branch has no group
    plain = tiny_model(2, use_group=False)
    assert not hasattr(plain, "persona")
    with torch.no_grad():
        a = plain.encode(items, lengths, groups)
        b = plain.encode(items, lengths, torch.tensor([0, 2]))
    for key in ("long", "short", "fused"):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    # an empty history still gets a state from its group token
    empty = model.encode(torch.full((2, 3), 30), torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert not torch.allclose(empty["long"][0], empty["long"][1])


def test_triton_backend_matches_torch():
    """The long-term branch gives the same states through the Triton kernel (interpreted on
    CPU) as through the PyTorch reference, gradients included."""
    pytest.importorskip("triton", reason="triton is not installed (the CPU install leaves it out)")
    from coea_kernels import triton_attention

    if not torch.cuda.is_available() and not triton_attention.INTERPRET:
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    ref, tri = tiny_model(6), tiny_model(6)
    tri.load_state_dict(ref.state_dict())
    for block in tri.long_blocks:
        block.backend = "triton"
    items = torch.randint(0, 30, (2, 9))
    args = (items, torch.tensor([9, 4]), torch.tensor([0, 1]), torch.randint(0, 30, (2, 9)))
    a, b = ref(*args), tri(*args)
    torch.testing.assert_close(a["next"], b["next"], rtol=1e-4, atol=1e-4)
    a["next"].backward()
    b["next"].backward()
    torch.testing.assert_close(
        ref.long_blocks[0].qkv.weight.grad, tri.long_blocks[0].qkv.weight.grad, rtol=1e-3, atol=1e-5
    )


def test_sampled_softmax_with_every_item_equals_full_softmax():
    model = tiny_model(3)
    items = torch.randint(0, 30, (3, 8))
    targets = torch.randint(0, 30, (3, 8))
    targets[0, :3] = -1
    args = (items, torch.tensor([8, 8, 8]), torch.tensor([0, 1, 2]), targets)
    full = model(*args)
    sampled = model(*args, negatives=torch.arange(30))
    torch.testing.assert_close(full["next"], sampled["next"], rtol=1e-5, atol=1e-4)
    assert int(full["count"]) == 21
    few = model(*args, negatives=torch.tensor([0, 5, 9]))
    assert torch.isfinite(few["next"]) and few["next"] < full["next"]


def test_scores_are_fused_state_dot_item_tokens():
    model = tiny_model(4)
    states = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    s = scores(model, states)
    with torch.no_grad():
        ref = torch.as_tensor(states) @ model.item_table().t()
    np.testing.assert_allclose(s, ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores(model, states, [3, 7]), s[:, [3, 7]], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- data, splits, keys, ranking


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=8), long_len=st.integers(1, 12))
def test_training_windows_cover_every_target_once(lengths, long_len):
    seqs = [np.arange(n) + 1000 * u for u, n in enumerate(lengths)]
    w = D.training_windows(seqs, long_len)
    targets = np.concatenate([w.of(i)[1:] for i in range(len(w))]) if len(w) else np.zeros(0)
    expected = np.concatenate([s[1:] for s in seqs if len(s) > 1] or [np.zeros(0)])
    assert sorted(targets.tolist()) == sorted(expected.tolist())
    assert (w.lengths() <= long_len + 1).all()
    for i in range(len(w)):  # windows are contiguous runs of one user's sequence
        win = w.of(i)
        assert (np.diff(win) == 1).all() and (win // 1000 == w.user[i]).all()


def test_batches_are_left_padded_and_cover_the_epoch():
    seqs = [np.arange(n) for n in (5, 2, 9, 3)]
    w = D.training_windows(seqs, 20)
    order = D.batch_order(w.lengths(), 3, seed=1, epoch=0)
    assert sorted(np.concatenate(order).tolist()) == list(range(len(w)))
    assert [b.tolist() for b in order] == [b.tolist() for b in D.batch_order(w.lengths(), 3, 1, 0)]
    batch = D.train_batch(w, np.array([0, 1]), np.array([7, 8, 9, 6]), pad=99)
    assert batch["items"].tolist() == [[0, 1, 2, 3], [99, 99, 99, 0]]
    assert batch["targets"].tolist() == [[1, 2, 3, 4], [-1, -1, -1, 1]]
    assert batch["lengths"].tolist() == [4, 1] and batch["groups"].tolist() == [7, 8]


def test_splits():
    users = np.array([0, 0, 0, 0, 1, 1, 2])
    items = np.array([5, 6, 7, 8, 1, 2, 3])
    times = np.array([1, 2, 3, 4, 1, 2, 1])
    periods = np.array([0, 0, 1, 2, 0, 2, 0])
    h = History(users, items, times, periods, n_users=3, n_items=9, test_period=2)
    seqs = h.before(2)
    assert [seqs.of(u).tolist() for u in range(3)] == [[5, 6, 7], [1], [3]]
    p = D.pipeline_split(seqs)
    assert p.val.users.tolist() == [0] and p.val.target.tolist() == [7]
    assert [s.tolist() for s in p.train] == [[5, 6], [1], [3]]
    loo = D.loo_split(user_sequences(users, items, times, 3))
    assert loo.test.target.tolist() == [8] and loo.val.target.tolist() == [7]
    assert loo.test.history[0].tolist() == [5, 6, 7] and loo.train[0].tolist() == [5, 6]


def test_masked_ranks_and_popularity():
    s = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.2, 0.2, 0.9]])
    # user 0: item 0 seen -> removed; target 2 ranks behind item 3 -> rank 1
    # user 1: target 1 ties with item 2 (item 0 seen) and loses to 3 -> rank 2
    ranks = masked_ranks(s, [np.array([0]), np.array([0])], np.array([2, 1]))
    assert ranks.tolist() == [1, 2]
    ev = D.EvalSet(np.array([0, 1]), [np.array([3]), np.array([0, 1, 3])], np.array([1, 2]))
    m = popularity_metrics(np.array([5, 4, 3, 9]), ev)
    # user 0: item 3 seen, item 0 (5) beats the target (4): rank 1; user 1: 0, 1, 3 seen: rank 0
    assert m["hr@10"] == 1.0
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1) / 2, abs=1e-6)
    assert m["ndcg"] == m["ndcg@10"] and m["mrr"] == pytest.approx((1 / 2 + 1) / 2)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def trained(grouped):  # noqa: F811
    r = coea("train-dsie", "--work", grouped, "--epochs", 3, *TINY, "--json")
    assert r.code == 0, r.stderr
    return grouped, r


def test_train_dsie_outputs(trained):
    work, r = trained
    d = work / "dsie"
    assert r.json()["protocol"] == "pipeline" and r.json()["evaluated_on"] == "val"
    for name in ("dsie.safetensors", "config.json", "user_states.safetensors", "report.json"):
        assert (d / name).exists()
    assert not (d / "user_keys.parquet").exists()  # serving keys are made by recommend
    report = json.loads((d / "report.json").read_text())
    assert "Nothing from the test period on is read" in report["protocol"]
    losses = [h["loss"] for h in report["training"]["history"]]
    assert losses[-1] < losses[0]
    ws = Workspace(work)
    h = ws.history()
    states, meta = store.read_tensors(d / "user_states.safetensors")
    assert states["fused"].shape == (h.n_users, 32) and states["user_id"].dtype == np.int32
    assert meta["before_period"] == h.test_period and meta["interactions"] == len(h.users)
    model = load_model(ws)
    again = encode_users(model, h, ws.groups().of_user, before_period=h.test_period)
    for key in ("long", "short", "fused"):
        np.testing.assert_allclose(again[key], states[key], rtol=1e-5, atol=1e-5)
    # states at an earlier cutoff read only the earlier periods (checked against a naive
    # filter of the interactions table, one user at a time)
    groups = ws.groups().of_user
    early = encode_users(model, h, groups, before_period=1)
    rows = pq.read_table(work / "data" / "interactions.parquet").to_pylist()
    for u in sorted({r["user_id"] for r in rows if r["period"] >= 1})[:5]:
        mine = sorted((r["timestamp"], i, r["item_id"]) for i, r in enumerate(rows))
        naive = [item for t, i, item in mine if rows[i]["user_id"] == u and rows[i]["period"] < 1]
        one = encode_histories(model, [np.array(naive, np.int64)], np.array([u]), groups)
        np.testing.assert_allclose(early["fused"][u], one["fused"][0], atol=1e-5)
    assert json.loads((d / "config.json").read_text())["sid_version"] == ws.sids().version
    rerun = coea("train-dsie", "--work", work, "--epochs", 3, *TINY)
    assert rerun.code == 0 and "up to date" in rerun.stderr


def test_resume_equals_uninterrupted_training(tmp_path, grouped):  # noqa: F811
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(grouped, a, ignore=FRESH)
    shutil.copytree(grouped, b, ignore=FRESH)
    opts = [*TINY, "--patience", 10, "--force"]
    assert coea("train-dsie", "--work", a, "--epochs", 3, *opts).code == 0
    assert coea("train-dsie", "--work", b, "--epochs", 1, *opts).code == 0
    state = json.loads((b / "checkpoints" / "dsie" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] > 0
    r = coea("train-dsie", "--work", b, "--epochs", 3, "--resume", *opts)
    assert r.code == 0, r.stderr
    assert "resumed from" in r.stderr
    wa, _ = store.read_tensors(a / "dsie" / "dsie.safetensors")
    wb, _ = store.read_tensors(b / "dsie" / "dsie.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    ha = json.loads((a / "dsie" / "report.json").read_text())["training"]["history"]
    hb = json.loads((b / "dsie" / "report.json").read_text())["training"]["history"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    # a checkpoint from other model options is refused
    r = coea("train-dsie", "--work", b, "--epochs", 4, "--resume", *opts, "--hidden", 64)
    assert r.code == 2 and "--resume" in r.stderr


def test_loo_compare_report(tmp_path, grouped):  # noqa: F811
    work = tmp_path / "w"
    shutil.copytree(grouped, work, ignore=FRESH)
    r = coea(
        "train-dsie",
        "--work",
        work,
        "--protocol",
        "loo",
        "--compare",
        "--epochs",
        2,
        *TINY,
        "--json",
    )
    assert r.code == 0, r.stderr
    assert not (work / "dsie").exists()
    report = json.loads((work / "dsie-loo" / "report.json").read_text())
    assert report["protocol"].startswith("Leave-one-out")
    rows = report["compare"]
    assert list(rows) == [
        "popularity",
        "short-only (SASRec, last short-len items)",
        "long-only, no group (SASRec, last long-len items)",
        "DSIE --no-group",
        "DSIE (these options)",
    ]
    for row in rows.values():
        assert 0 <= row["test"]["ndcg@10"] <= row["test"]["hr@10"] <= 1
        assert row["test"]["users"] == r.json()["users"]
    table = r.stderr[r.stderr.index("Protocol: Leave-one-out") :]  # the protocol comes first
    assert "HR@10" in table and all(name in table for name in rows)


def test_train_dsie_bad_inputs(tmp_path, grouped):  # noqa: F811
    work = sids_workspace(tmp_path / "nogroups")
    r = coea("train-dsie", "--work", work, *TINY)
    assert r.code == 2 and "run `coea profile-groups` first" in r.stderr
    shutil.rmtree(work / "sids")
    r = coea("train-dsie", "--work", work, *TINY)
    assert r.code == 2 and "run `coea build-sids` first" in r.stderr
    bad = tmp_path / "bad"
    shutil.copytree(grouped, bad, ignore=FRESH)
    groups = pq.read_table(bad / "groups" / "groups.parquet")
    pq.write_table(groups.slice(1), bad / "groups" / "groups.parquet")
    r = coea("train-dsie", "--work", bad, *TINY)
    assert r.code == 2 and "1 users have no group (first user_id 0)" in r.stderr
    assert not (bad / "dsie").exists()
    r = coea("train-dsie", "--work", grouped, "--branches", "three", *TINY)
    assert r.code == 2 and "--branches" in r.stderr
    r = coea("train-dsie", "--work", grouped, "--resume", "--out", "fresh", *TINY)
    assert r.code == 2 and "no checkpoint" in r.stderr


# ---------------------------------------------------------------- DDP


def _toy_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 30, rng.integers(3, 14)) for _ in range(24)]
    split = D.pipeline_split(
        UserSequences(np.cumsum([0] + [len(s) for s in seqs]), np.concatenate(seqs))
    )
    return split, D.training_windows(split.train, 16), rng.integers(0, 3, 24)


def _train_losses(rank: int, world: int) -> tuple[list[float], float]:
    """Per-step losses and a checksum of the final weights of a short training run."""
    _, windows, groups = _toy_problem()
    model = tiny_model(5)
    base = TrainConfig.from_options(DsieOptions(), seed=0)
    cfg = replace(base, epochs=2, batch_size=8, lr=3e-3, warmup=2)
    evals = []

    def improving(m):  # every epoch is "better": the final weights are kept
        evals.append(1)
        return {"ndcg": float(len(evals)), "ndcg@10": 0.0, "hr@10": 0.0}

    trainer = Trainer(model.train(), windows, groups, cfg, improving, rank=rank, world=world)
    trainer.fit()
    return trainer.step_losses, float(sum(p.detach().double().sum() for p in model.parameters()))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses, weight_sum = _train_losses(rank, world)
        Path(f"{out}.{rank}").write_text(json.dumps({"losses": losses, "weights": weight_sum}))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    single, single_w = _train_losses(0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    runs = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert runs[0] == runs[1]  # ranks end with identical weights and logs
    np.testing.assert_allclose(runs[0]["losses"], single, rtol=1e-4)
    assert runs[0]["weights"] == pytest.approx(single_w, rel=1e-4)
    assert len(single) == 6 and single[-1] < single[0]


def test_cutoff_trains_on_earlier_periods_only(tmp_path, grouped):  # noqa: F811
    """--cutoff K writes dsie-before-K/ with states as of period K's start, and nothing from
    period K on changes the model: a copy whose later items are scrambled trains the same."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(grouped, a, ignore=FRESH)
    shutil.copytree(grouped, b, ignore=FRESH)
    path = b / "data" / "interactions.parquet"
    inter = pq.read_table(path)
    items = inter["item_id"].to_numpy().copy()
    later = inter["period"].to_numpy() >= 2
    items[later] = np.random.default_rng().permutation(items[later])
    store.write_parquet(path, inter.set_column(1, "item_id", pa.array(items)))
    for work in (a, b):
        r = coea("train-dsie", "--work", work, "--cutoff", 2, "--epochs", 2, *TINY)
        assert r.code == 0, r.stderr
        assert "Nothing from period 2 on is read" in r.stderr
    wa, _ = store.read_tensors(a / "dsie-before-2" / "dsie.safetensors")
    wb, _ = store.read_tensors(b / "dsie-before-2" / "dsie.safetensors")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    _, meta = store.read_tensors(a / "dsie-before-2" / "user_states.safetensors")
    assert meta["before_period"] == 2
    assert json.loads((a / "dsie-before-2" / "config.json").read_text())["cutoff"] == 2
    assert not (a / "dsie").exists()
    r = coea("train-dsie", "--work", a, "--cutoff", 99, *TINY)
    assert r.code == 2 and "--cutoff 99" in r.stderr


def test_group_loss_separates_groups():
    """The group-consistency loss is the cross-entropy of each target position's group under a
    softmax over cos(long state, every group's centroid) / 0.1 (checked against a naive
    computation), so it falls when a state moves away from the other groups' centroids."""
    import torch.nn.functional as F

    from coea_cli.dsie.model import GROUP_TEMPERATURE

    model = tiny_model(3).train()
    g = torch.Generator().manual_seed(1)
    items = torch.randint(0, 30, (4, 6), generator=g)
    lengths = torch.tensor([6, 4, 5, 2])
    targets = torch.randint(0, 30, (4, 6), generator=g)
    targets[torch.arange(6)[None] < (6 - lengths)[:, None]] = -1
    groups = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    out = model(items, lengths, groups, targets)
    model.eval()
    with torch.no_grad():
        tok = model._tokens(model.item_table(), items)
        hl = model.long_states(tok, lengths, groups)[:, 1:]
        centres = model.centroid_proj(model.persona)
    expected = 0.0
    for r in range(4):
        for t in range(6):
            if targets[r, t] < 0:
                continue
            sims = F.cosine_similarity(hl[r, t][None], centres, dim=-1) / GROUP_TEMPERATURE
            expected += -torch.log_softmax(sims, 0)[groups[r]]
    model.train()
    assert model.cfg.dropout == 0.0  # so the train-mode loss equals the eval-mode states
    assert float(out["group"]) == pytest.approx(float(expected), rel=1e-4)


# ---------------------------------------------------------------- items added later


@pytest.mark.parametrize("item_embedding", [True, False])
def test_grow_keeps_what_the_old_model_knew(item_embedding):
    """A DSIE grown to more items encodes every old history and scores every old item exactly
    as the model it grew from; a new item's own row starts at zero."""
    from coea_cli.dsie.infer import grow

    old = tiny_model(seed=int(np.random.default_rng().integers(1000)), n_items=30,
                     item_embedding=item_embedding)  # fmt: skip
    cfg = DSIEConfig.from_dict({**old.cfg.to_dict(), "n_items": 36})
    g = torch.Generator().manual_seed(5)
    extra = torch.stack([torch.randint(0, k, (6,), generator=g) for k in cfg.code_sizes], 1)
    new = DSIE(cfg, torch.cat([old.codes, extra]), old.persona)
    grow(old.state_dict(), new).eval()
    if item_embedding:
        np.testing.assert_array_equal(new.item_emb.weight[30:].detach(), 0)
    rng = np.random.default_rng()
    histories = [rng.integers(0, 30, rng.integers(1, 12)) for _ in range(5)]
    users, groups = np.arange(5), rng.integers(0, 3, 5)
    a = encode_histories(old, histories, users, groups)
    b = encode_histories(new, histories, users, groups)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        s_old = scores(old, torch.as_tensor(a["fused"]))
        s_new = scores(new, torch.as_tensor(b["fused"]))
    np.testing.assert_allclose(s_old.numpy(), s_new[:, :30].numpy(), rtol=1e-5, atol=1e-5)
