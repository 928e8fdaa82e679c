"""Round 0 (initial training) and round k >= 1 (verify, fine-tune, re-evaluate)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from coea_cli import console, store
from coea_cli.pco import scoring
from coea_cli.pco.context import Cluster, World, cluster_popularity
from coea_cli.pco.examples import (
    period_users,
    relevance_labels,
    split_users,
    transitions,
)
from coea_cli.pco.models import LLMOptions, load_model
from coea_cli.pco.state import Track


@dataclass(frozen=True)
class RoundOptions:
    n: int = 8  # Novelty samples per user
    temperature: float = 1.0
    top_m: int = 3  # clusters kept after Relevance best-of-n
    tau_pos: float = 0.5  # Relevance score needed to verify a positive
    tau_neg: float = 0.5  # Relevance score under which a rejection counts
    objective: str = "sft_kl"
    kl_weight: float = 0.5
    beta: float = 0.1
    replay: float = 0.3
    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 16
    update_relevance: bool = False
    holdout: float = 0.2
    epsilon: float = 0.02
    verify: bool = True
    kl: bool = True
    reeval: bool = True
    dsie: bool = True
    round0_epochs: int = 2
    round0_per_user: int = 3
    positives_per_user: int = 3
    round0_cap: int = 60
    template_dir: str | None = None


def _progress(label: str):
    """A callable(step, total, loss) driving a rich bar, for the training loops."""
    state = {}

    def update(step, total, loss):
        if "bar" not in state:
            state["cm"] = console.progress(label, total, "steps")
            state["bar"] = state["cm"].__enter__()
        state["bar"](1, loss=loss)
        if step >= total:
            state["cm"].__exit__(None, None, None)
            state.clear()

    return update


def _examples_table(prompts: list[str], targets: list[Cluster], kind: str) -> pa.Table:
    return pa.table(
        {
            "prompt": pa.array(prompts, pa.string()),
            "target": pa.array([list(t) for t in targets], pa.list_(pa.int32())),
            "kind": pa.array([kind] * len(prompts), pa.string()),
        }
    )


# ---------------------------------------------------------------- round 0


def round_zero(
    world: World,
    track: Track,
    backbone: Path,
    llm: LLMOptions,
    opt: RoundOptions,
    sid_tokens: list[str],
    out: Path,
) -> dict:
    """Initial Novelty and Relevance training on period 0; writes adapters and the round folder
    `out` (a temporary folder swapped in by the caller). Returns the round's metrics."""
    t0 = time.time()
    rng = np.random.default_rng(llm.seed)
    clusters = world.clusters()
    trans = transitions(
        world,
        world.sequences(1),
        per_user=opt.round0_per_user,
        cap_per_cluster=opt.round0_cap,
        use_dsie=opt.dsie,
        rng=rng,
    )
    if len(trans) < 10:
        from coea_cli.errors import BadInput

        raise BadInput(f"period 0 has only {len(trans)} novel transitions: too few to train on")
    train_u, held_u = split_users(sorted({t.user for t in trans}), 0.1, llm.seed)
    train = [t for t in trans if t.user in train_u]
    held = [t for t in trans if t.user in held_u]
    prompter = scoring.Prompter(world, opt.template_dir)
    console.log(
        f"round 0: {len(train)} novel transitions from period 0 for training, {len(held)} held out"
    )

    novelty, tok = load_model(backbone, llm, None, True, sid_tokens)
    from coea_cli.llm.train import train_novelty, train_relevance

    prompts = [prompter.novelty(t.context) for t in train]
    nov_fit = train_novelty(
        novelty,
        tok,
        list(zip(prompts, [t.target for t in train], strict=True)),
        epochs=opt.round0_epochs,
        lr=opt.lr,
        batch_size=opt.batch_size,
        objective="sft",
        progress=_progress("round 0 novelty"),
        seed=llm.seed,
    )
    novelty_dir = track.adapter("novelty", 0)
    _save(novelty, tok, novelty_dir)

    rel_rows = relevance_labels(train, clusters, rng)
    rel_prompts = [prompter.relevance(c, k) for c, k, _ in rel_rows]
    relevance, rtok = load_model(backbone, llm, None, True, sid_tokens)
    rel_fit = train_relevance(
        relevance,
        rtok,
        list(zip(rel_prompts, [y for _, _, y in rel_rows], strict=True)),
        epochs=opt.round0_epochs,
        lr=opt.lr,
        batch_size=opt.batch_size,
        progress=_progress("round 0 relevance"),
        seed=llm.seed,
    )
    relevance_dir = track.adapter("relevance", 0)
    _save(relevance, rtok, relevance_dir)

    # Held-out evaluation: Novelty HR@5 against the popularity of novel clusters; Relevance AUC.
    from coea_cli.llm.decoding import ClusterTrie, relevance_scores, sample_clusters

    held_prompts = [prompter.novelty(t.context) for t in held]
    held_banned = [t.banned for t in held]
    truth = [{t.target} for t in held]
    exact = scoring.top_clusters(novelty, tok, held_prompts, held_banned, clusters, 5)
    trie = ClusterTrie.from_clusters(tok, clusters)
    samples = sample_clusters(
        novelty,
        tok,
        held_prompts,
        trie,
        held_banned,
        n=max(opt.n, 10),
        temperature=opt.temperature,
        seed=llm.seed,
    )
    popular = scoring.popularity_top(Counter(t.target for t in train), held_banned, 5)
    held_rel = relevance_labels(held, clusters, rng)
    scores = relevance_scores(
        relevance, rtok, [prompter.relevance(c, k) for c, k, _ in held_rel]
    ).numpy()
    metrics = {
        "round": 0,
        "period": 0,
        "train_transitions": len(train),
        "heldout_transitions": len(held),
        "novelty_hr@5": scoring.hit_rate(exact, truth),
        "novelty_sampled_hr@5": scoring.hit_rate(scoring.sampled_top(samples.clusters, 5), truth),
        "popularity_hr@5": scoring.hit_rate(popular, truth),
        "invalid_rate": samples.invalid / max(1, len(held) * max(opt.n, 10)),
        "relevance_auc": scoring.auc(np.array([y for *_, y in held_rel]), scores),
        "novelty_fit": nov_fit,
        "relevance_fit": rel_fit,
        "seconds": round(time.time() - t0, 1),
    }
    store.write_parquet(
        out / "examples.parquet", _examples_table(prompts, [t.target for t in train], "round0")
    )
    return metrics


def _save(model, tok, folder: Path) -> None:
    from coea_cli.llm.backbone import save_adapter

    save_adapter(model, folder, tok)


# ---------------------------------------------------------------- round k


def round_k(
    world: World,
    track: Track,
    k: int,
    state: dict,
    backbone: Path,
    llm: LLMOptions,
    opt: RoundOptions,
    sid_tokens: list[str],
    out: Path,
) -> dict:
    """One PCO round on period k. Writes adapters for round k and the round folder `out`;
    returns metrics including whether the round was accepted."""
    from coea_cli.llm.decoding import ClusterTrie, relevance_scores, sample_clusters
    from coea_cli.llm.train import train_novelty, train_relevance

    t0 = time.time()
    times = {}
    clusters = world.clusters()
    prompter = scoring.Prompter(world, opt.template_dir)
    users = period_users(world, k, use_dsie=opt.dsie)
    with_novel = [u for u in users if u.novel]
    train_ids, held_ids = split_users(
        [u.context.user for u in with_novel], opt.holdout, llm.seed + k
    )
    train = [u for u in users if u.context.user in train_ids or not u.novel]
    held = [u for u in with_novel if u.context.user in held_ids]
    console.log(
        f"round {k}: period {k} has {len(users)} active users ({len(with_novel)} engaged a new "
        f"cluster); {len(train)} for verification, {len(held)} held out for re-evaluation"
    )
    cur = state["current"]
    work = Path(track.work)
    novelty, tok = load_model(backbone, llm, work / cur["novelty"], True, sid_tokens)
    relevance, rtok = load_model(
        backbone, llm, work / cur["relevance"], opt.update_relevance, sid_tokens
    )

    # 2. Generate: n constrained, novelty-filtered samples per user from Novelty_(k-1).
    s = time.time()
    prompts = [prompter.novelty(u.context) for u in train]
    trie = ClusterTrie.from_clusters(tok, clusters)
    samples = sample_clusters(
        novelty,
        tok,
        prompts,
        trie,
        [u.banned for u in train],
        n=opt.n,
        temperature=opt.temperature,
        seed=llm.seed + k,
    )
    times["generate"] = time.time() - s

    # 3. Verify: Relevance_(k-1) scores sampled and observed novel clusters; data gives truth.
    s = time.time()
    rows = []  # (train index, cluster, source)
    for j, (u, cand) in enumerate(zip(train, samples.clusters, strict=True)):
        for c in dict.fromkeys(cand):
            rows.append((j, c, "sampled"))
        for c in sorted(u.novel - set(cand)):
            rows.append((j, c, "observed"))
    rel_prompts = [prompter.relevance(train[j].context, c) for j, c, _ in rows]
    score = relevance_scores(relevance, rtok, rel_prompts).numpy() if rows else np.zeros(0)
    engaged = np.array([c in train[j].novel for j, c, _ in rows], dtype=bool)
    sampled = np.array([src == "sampled" for *_, src in rows], dtype=bool)
    if opt.verify:
        pos = engaged & (score >= opt.tau_pos)
        neg = sampled & ~engaged & (score < opt.tau_neg)
    else:
        pos = engaged.copy()
        neg = sampled & ~engaged
    times["verify"] = time.time() - s
    counts = {
        "candidates": int(sampled.sum()),
        "candidate_hits": int((sampled & engaged).sum()),
        "observed_novel": int((~sampled).sum()),
        "verified_positive": int(pos.sum()),
        "verified_negative": int(neg.sum()),
        "relevance_auc_period": scoring.auc(engaged, score) if len(rows) else float("nan"),
    }
    console.log(
        f"round {k}: {counts['candidates']} candidates ({counts['candidate_hits']} engaged), "
        f"{counts['verified_positive']} verified positives, "
        f"{counts['verified_negative']} verified negatives"
    )

    # Previous Novelty's proposals for the held-out users (scored after any Relevance update).
    held_prompts = [prompter.novelty(u.context) for u in held]
    held_banned = [u.banned for u in held]
    prev_cands = scoring.top_clusters(novelty, tok, held_prompts, held_banned, clusters, opt.n)

    # 4. Fine-tune Novelty from round k-1.
    s = time.time()
    objective = opt.objective if (opt.kl or opt.objective != "sft_kl") else "sft"
    pos_rows = _cap_per_user(rows, pos, opt.positives_per_user, llm.seed + k)
    new_prompts = [prompts[j] for j, _, _ in pos_rows]
    new_targets = [c for _, c, _ in pos_rows]
    replay_p, replay_t = _replay(track, k, len(new_prompts), opt.replay, llm.seed + k)
    fit = {"skipped": "no verified positives"}
    if objective == "dpo":
        pairs = _dpo_pairs(rows, pos, neg, prompts)
        if pairs:
            fit = train_novelty(
                novelty,
                tok,
                [],
                objective="dpo",
                dpo_pairs=pairs,
                valid_clusters=clusters,
                beta=opt.beta,
                epochs=opt.epochs,
                lr=opt.lr,
                batch_size=opt.batch_size,
                progress=_progress(f"round {k} novelty (dpo)"),
                seed=llm.seed + k,
            )
    elif new_prompts:
        examples = list(zip(new_prompts + replay_p, new_targets + replay_t, strict=True))
        fit = train_novelty(
            novelty,
            tok,
            examples,
            objective=objective,
            kl_weight=opt.kl_weight,
            valid_clusters=clusters,
            epochs=opt.epochs,
            lr=opt.lr,
            batch_size=opt.batch_size,
            progress=_progress(f"round {k} novelty ({objective})"),
            seed=llm.seed + k,
        )
    times["finetune"] = time.time() - s

    # 5. Optional continual update of Relevance on period-k labels.
    rel_fit = None
    if opt.update_relevance and len(rows):
        s = time.time()
        labelled = [
            (rel_prompts[i], int(engaged[i])) for i in range(len(rows)) if engaged[i] or sampled[i]
        ]
        rel_fit = train_relevance(
            relevance,
            rtok,
            labelled,
            epochs=opt.epochs,
            lr=opt.lr,
            batch_size=opt.batch_size,
            progress=_progress(f"round {k} relevance"),
            seed=llm.seed + k,
        )
        times["relevance"] = time.time() - s

    # 6. Re-evaluate on held-out users: the new Novelty's candidates, ranked by Relevance.
    s = time.time()
    new_cands = scoring.top_clusters(novelty, tok, held_prompts, held_banned, clusters, opt.n)
    truth = [u.novel for u in held]
    pop = cluster_popularity(world, k)
    quality = {}
    for name, cands in (("previous", prev_cands), ("new", new_cands)):
        flat = [(held[j].context, c) for j, row in enumerate(cands) for c in row]
        sc = relevance_scores(relevance, rtok, [prompter.relevance(x, c) for x, c in flat]).numpy()
        best = scoring.rerank(cands, sc, opt.top_m)
        quality[name] = {
            f"novelty_hr@{opt.top_m}": scoring.hit_rate([r[: opt.top_m] for r in cands], truth),
            f"coea_hr@{opt.top_m}": scoring.hit_rate(best, truth),
            f"coea_precision@{opt.top_m}": scoring.precision(best, truth, opt.top_m),
            **{
                f"cluster_{a}": b
                for a, b in scoring.cluster_novelty(best, pop, world.n_users).items()
            },
        }
    key = f"coea_precision@{opt.top_m}"  # hit rates saturate: users try many new clusters
    accepted = True
    if opt.reeval and len(held):
        accepted = not (quality["new"][key] < quality["previous"][key] - opt.epsilon)
    times["reeval"] = time.time() - s

    # 7. Save adapters and the round's tables (the caller swaps the folder in, state last).
    _save(novelty, tok, track.adapter("novelty", k))
    relevance_path = cur["relevance"]
    if opt.update_relevance:
        _save(relevance, rtok, track.adapter("relevance", k))
        relevance_path = str(track.adapter("relevance", k).relative_to(work))
    cand = pa.table(
        {
            "user_id": pa.array([train[j].context.user for j, _, _ in rows], pa.int32()),
            "cluster": pa.array([c[0] for _, c, _ in rows], pa.int32()),
            "source": pa.array([src for *_, src in rows], pa.string()),
            "relevance": pa.array(score.astype(np.float32)),
            "engaged": pa.array(engaged),
        }
    )
    store.write_parquet(out / "candidates.parquet", cand)
    keep = pos | neg
    store.write_parquet(
        out / "verified.parquet",
        cand.filter(pa.array(keep)).append_column("label", pa.array(pos[keep].astype(np.int8))),
    )
    store.write_parquet(
        out / "examples.parquet", _examples_table(new_prompts, new_targets, f"round{k}")
    )
    metrics = {
        "round": k,
        "period": k,
        "track": track.name,
        "objective": objective,
        "users": len(users),
        "train_users": len(train),
        "heldout_users": len(held),
        **counts,
        "replayed": len(replay_p),
        "novelty_fit": fit,
        "relevance_fit": rel_fit,
        "reeval": quality,
        "accepted": accepted,
        "invalid_samples": samples.invalid,
        "options": asdict(opt),
        "seconds": {
            **{a: round(b, 1) for a, b in times.items()},
            "total": round(time.time() - t0, 1),
        },
        "novelty_path": str(track.adapter("novelty", k).relative_to(work)),
        "relevance_path": relevance_path,
    }
    return metrics


def _cap_per_user(rows, pos, cap: int, seed: int) -> list:
    """Verified positives, at most `cap` per user (chosen at random) so that users who try many
    new clusters in a period do not dominate the round; 0 keeps all."""
    idx = np.flatnonzero(pos)
    if cap <= 0:
        return [rows[i] for i in idx]
    rng = np.random.default_rng(seed)
    by_user: dict[int, list[int]] = {}
    for i in rng.permutation(idx):
        by_user.setdefault(rows[i][0], []).append(int(i))
    keep = sorted(i for picks in by_user.values() for i in picks[:cap])
    return [rows[i] for i in keep]


def _replay(track: Track, k: int, n_new: int, share: float, seed: int):
    """A `share` of the round's examples drawn from earlier rounds' training data."""
    if share <= 0 or n_new == 0:
        return [], []
    tables = []
    for j in range(k):
        path = track.round_dir(j) / "examples.parquet"
        if path.exists():
            tables.append(store.read_parquet(path))
    if not tables:
        return [], []
    t = pa.concat_tables(tables)
    want = min(t.num_rows, round(n_new * share / (1 - share)))
    idx = np.random.default_rng(seed).permutation(t.num_rows)[:want]
    t = t.take(pa.array(idx))
    return t["prompt"].to_pylist(), [tuple(x) for x in t["target"].to_pylist()]


def _dpo_pairs(rows, pos, neg, prompts):
    """(prompt, chosen, rejected) for users with both a verified positive and negative."""
    by_user: dict[int, tuple[list, list]] = {}
    for i, (j, c, _) in enumerate(rows):
        if pos[i]:
            by_user.setdefault(j, ([], []))[0].append(c)
        elif neg[i]:
            by_user.setdefault(j, ([], []))[1].append(c)
    return [(prompts[j], p, n) for j, (ps, ns) in by_user.items() for p in ps for n in ns]


def report_on_test_period(world: World, model, tok, prompter, k: int = 5) -> dict:
    """Evaluation only (never used to accept a round): the Novelty LLM's top-k novel clusters
    for users of the test period, with context as of its start. `first` counts a hit only on
    the first new cluster each user engages in the period; `any` on any of them."""
    users = [u for u in period_users(world, world.test_period) if u.novel]
    during = world.sequences(world.test_period, only_period=world.test_period)
    first = []
    for u in users:
        clusters = world.item_cluster[during[u.context.user]]
        first.append({next((int(c),) for c in clusters if (int(c),) not in u.banned)})
    prompts = [prompter.novelty(u.context) for u in users]
    top = scoring.top_clusters(model, tok, prompts, [u.banned for u in users], world.clusters(), k)
    pop = cluster_popularity(world, world.test_period)
    return {
        f"test_first_novel_hr@{k}": scoring.hit_rate(top, first),
        f"test_novelty_hr@{k}": scoring.hit_rate(top, [u.novel for u in users]),
        **{
            f"test_cluster_{a}": b
            for a, b in scoring.cluster_novelty(top, pop, world.n_users).items()
        },
        "test_users": len(users),
    }
