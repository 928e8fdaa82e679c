"""Round 0 (initial training) and round k >= 1, each as its named steps.

    RoundZero: examples -> train_novelty -> train_relevance -> evaluate -> save
    RoundK:    setup -> generate -> verify -> finetune -> update_relevance -> reevaluate -> save

A round writes its adapters and its folder `out` (a temporary folder the caller swaps in);
the caller writes the track's state last, so a round only counts once it is complete. Under
torchrun every rank runs every step (the LLM passes are shared among them) and rank 0 alone
writes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from coea_cli import console, dist, store
from coea_cli.errors import BadInput
from coea_cli.llm.context import Prompter, World, cluster_popularity
from coea_cli.llm.models import LLMSpec, load_model
from coea_cli.options import Objective, PcoOptions
from coea_cli.pco import scoring
from coea_cli.pco.examples import period_users, relevance_labels, split_users, transitions
from coea_cli.workspace import Cluster, Track

ROUND0_CAP = 60  # round 0: most transitions taken per target cluster


def _progress(label: str):
    """A callable(step, total, loss) driving a progress bar, for the training loops."""
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


def _save(model, tok, folder: Path) -> None:
    """Save an adapter (rank 0 only under torchrun)."""
    from coea_cli.llm.backbone import save_adapter

    if dist.current()[0] == 0:
        save_adapter(model, folder, tok)


def _write(path: Path, table: pa.Table) -> None:
    """Write one of the round's tables (rank 0 only under torchrun)."""
    if dist.current()[0] == 0:
        store.write_parquet(path, table)


@dataclass
class RoundBase:
    world: World
    track: Track
    spec: LLMSpec
    opt: PcoOptions
    out: Path  # the round's (temporary) folder

    def __post_init__(self) -> None:
        self.clusters = self.world.clusters()
        self.prompter = Prompter(self.world, self.opt.template_dir, self.spec.backbone)
        self.seed = self.spec.seed
        self.t0 = time.time()


# ---------------------------------------------------------------- round 0


class RoundZero(RoundBase):
    """Initial Novelty and Relevance training on period 0."""

    def run(self) -> dict:
        self.examples()
        nov_fit = self.train_novelty()
        rel_fit = self.train_relevance()
        metrics = {
            "round": 0,
            "period": 0,
            "train_transitions": len(self.train),
            "heldout_transitions": len(self.held),
            **self.evaluate(),
            "novelty_fit": nov_fit,
            "relevance_fit": rel_fit,
            "seconds": round(time.time() - self.t0, 1),
        }
        self.save()
        return metrics

    def examples(self) -> None:
        """Novel transitions inside period-0 sequences, split by user into train and held out."""
        o = self.opt
        self.rng = np.random.default_rng(self.seed)
        trans = transitions(
            self.world,
            self.world.history.before(1),
            per_user=o.round0_per_user,
            cap_per_cluster=ROUND0_CAP,
            context=o.context(),
            rng=self.rng,
        )
        if len(trans) < 10:
            raise BadInput(f"period 0 has only {len(trans)} novel transitions: too few to train on")
        train_u, held_u = split_users(sorted({t.user for t in trans}), 0.1, self.seed)
        self.train = [t for t in trans if t.user in train_u]
        self.held = [t for t in trans if t.user in held_u]
        self.prompts = [self.prompter.novelty(t.context) for t in self.train]
        console.log(
            f"round 0: {len(self.train)} novel transitions from period 0 for training, "
            f"{len(self.held)} held out"
        )

    def train_novelty(self) -> dict:
        from coea_cli.llm.train import train_novelty

        o = self.opt
        self.novelty, self.tok = load_model(self.spec, None, True)
        fit = train_novelty(
            self.novelty,
            self.tok,
            list(zip(self.prompts, [t.target for t in self.train], strict=True)),
            epochs=o.round0_epochs,
            lr=o.lr,
            batch_size=o.batch_size,
            objective="sft",
            progress=_progress("round 0 novelty"),
            seed=self.seed,
        )
        _save(self.novelty, self.tok, self.track.adapter("novelty", 0))
        return fit

    def train_relevance(self) -> dict:
        from coea_cli.llm.train import train_relevance

        o = self.opt
        rows = relevance_labels(self.train, self.clusters, self.rng)
        prompts = [self.prompter.relevance(c, k) for c, k, _ in rows]
        self.relevance, self.rtok = load_model(self.spec, None, True)
        fit = train_relevance(
            self.relevance,
            self.rtok,
            list(zip(prompts, [y for _, _, y in rows], strict=True)),
            epochs=o.round0_epochs,
            lr=o.lr,
            batch_size=o.batch_size,
            progress=_progress("round 0 relevance"),
            seed=self.seed,
        )
        _save(self.relevance, self.rtok, self.track.adapter("relevance", 0))
        return fit

    def evaluate(self) -> dict:
        """Held-out users: Novelty HR@5 against the popularity of novel clusters; Relevance
        AUC."""
        from coea_cli.llm.decoding import ClusterTrie, relevance_scores, sample_clusters

        o, held = self.opt, self.held
        prompts = [self.prompter.novelty(t.context) for t in held]
        held_banned = [t.banned for t in held]
        truth = [{t.target} for t in held]
        exact = scoring.top_clusters(self.novelty, self.tok, prompts, held_banned, self.clusters, 5)
        trie = ClusterTrie.from_clusters(self.tok, self.clusters)
        n = max(o.n, 10)
        samples = sample_clusters(
            self.novelty, self.tok, prompts, trie, held_banned,
            n=n, temperature=o.temperature, seed=self.seed, label="held-out: Novelty sampling",
        )  # fmt: skip
        popular = scoring.popularity_top(Counter(t.target for t in self.train), held_banned, 5)
        rows = relevance_labels(held, self.clusters, self.rng)
        scores = relevance_scores(
            self.relevance, self.rtok, [self.prompter.relevance(c, k) for c, k, _ in rows],
            label="held-out: Relevance scoring",
        ).numpy()  # fmt: skip
        return {
            "novelty_hr@5": scoring.hit_rate(exact, truth),
            "novelty_sampled_hr@5": scoring.hit_rate(
                scoring.sampled_top(samples.clusters, 5), truth
            ),
            "popularity_hr@5": scoring.hit_rate(popular, truth),
            "invalid_rate": samples.invalid / max(1, len(held) * n),
            "relevance_auc": scoring.auc(np.array([y for *_, y in rows]), scores),
        }

    def save(self) -> None:
        table = _examples_table(self.prompts, [t.target for t in self.train], "round0")
        _write(self.track.round_file(0, "examples", self.out), table)


# ---------------------------------------------------------------- round k


class RoundK(RoundBase):
    """One PCO round on period k, from the track's current adapters."""

    def __init__(self, world, track, spec, opt, out, k: int, state: dict):
        super().__init__(world, track, spec, opt, out)
        self.k = k
        self.state = state
        self.seed_k = self.seed + k
        self.times: dict[str, float] = {}

    def run(self) -> dict:
        self.setup()
        self._timed("generate", self.generate)
        self._timed("verify", self.verify)
        self._timed("finetune", self.finetune)
        if self.opt.update_relevance and len(self.rows):
            self._timed("relevance", self.update_relevance)
        self._timed("reeval", self.reevaluate)
        self.save()
        return self.metrics()

    def _timed(self, name: str, step) -> None:
        s = time.time()
        step()
        self.times[name] = time.time() - s

    def setup(self) -> None:
        """Period k's active users, split into verification and held-out users; the current
        adapters loaded."""
        o, k = self.opt, self.k
        self.users = period_users(self.world, k, context=o.context())
        with_novel = [u for u in self.users if u.novel]
        train_ids, held_ids = split_users(
            [u.context.user for u in with_novel], o.holdout, self.seed_k
        )
        self.train = [u for u in self.users if u.context.user in train_ids or not u.novel]
        self.held = [u for u in with_novel if u.context.user in held_ids]
        console.log(
            f"round {k}: period {k} has {len(self.users)} active users ({len(with_novel)} engaged "
            f"a new cluster); {len(self.train)} for verification, {len(self.held)} held out for "
            "re-evaluation"
        )
        cur, root = self.state["current"], Path(self.track.root)
        self.novelty, self.tok = load_model(self.spec, root / cur["novelty"], True)
        self.relevance, self.rtok = load_model(
            self.spec, root / cur["relevance"], o.update_relevance
        )

    def generate(self) -> None:
        """n constrained, novelty-filtered samples per user from Novelty_(k-1)."""
        from coea_cli.llm.decoding import ClusterTrie, sample_clusters

        self.prompts = [self.prompter.novelty(u.context) for u in self.train]
        trie = ClusterTrie.from_clusters(self.tok, self.clusters)
        self.samples = sample_clusters(
            self.novelty, self.tok, self.prompts, trie, [u.banned for u in self.train],
            n=self.opt.n, temperature=self.opt.temperature, seed=self.seed_k,
            label=f"round {self.k}: Novelty LLM sampling",
        )  # fmt: skip

    def verify(self) -> None:
        """Relevance_(k-1) scores sampled and observed novel clusters; data gives the truth.
        Also the previous Novelty's proposals for the held-out users (judged later)."""
        from coea_cli.llm.decoding import relevance_scores

        o, train = self.opt, self.train
        rng = np.random.default_rng(self.seed_k + 2)
        rows = []  # (train index, cluster, source)
        self.unjudged = 0
        for j, (u, cand) in enumerate(zip(train, self.samples.clusters, strict=True)):
            for c in dict.fromkeys(cand):
                rows.append((j, c, "sampled"))
            observed = u.novel - set(cand)
            kept = at_most(observed, o.observed_per_user, rng)
            self.unjudged += len(observed) - len(kept)
            rows.extend((j, c, "observed") for c in kept)
        self.rows = rows
        self.rel_prompts = [self.prompter.relevance(train[j].context, c) for j, c, _ in rows]
        self.score = (
            relevance_scores(
                self.relevance,
                self.rtok,
                self.rel_prompts,
                label=f"round {self.k}: Relevance LLM verifying",
            ).numpy()
            if rows
            else np.zeros(0)
        )
        self.engaged = np.array([c in train[j].novel for j, c, _ in rows], dtype=bool)
        self.sampled = np.array([src == "sampled" for *_, src in rows], dtype=bool)
        self.pos, self.neg = partition(
            self.engaged, self.sampled, self.score, o.tau_pos, o.tau_neg, o.verify
        )
        proposed, observed = self.sampled, ~self.sampled
        self.counts = {
            "candidates": int(proposed.sum()),
            "candidate_hits": int((proposed & self.engaged).sum()),
            "observed_novel": int(observed.sum()),
            "observed_novel_unjudged": self.unjudged,
            "verified_positive": int(self.pos.sum()),
            "verified_positive_proposed": int((self.pos & proposed).sum()),
            "verified_negative": int(self.neg.sum()),
            "uncertain": int((proposed & ~self.pos & ~self.neg).sum()),
            "relevance_auc_period": (
                scoring.auc(self.engaged, self.score) if len(rows) else float("nan")
            ),
        }
        c = self.counts
        console.log(
            f"round {self.k}: {c['candidates']} proposals ({c['candidate_hits']} engaged); "
            f"verified {c['verified_positive']} positives ({c['verified_positive_proposed']} "
            f"proposed), {c['verified_negative']} negative proposals, {c['uncertain']} "
            "uncertain dropped"
        )
        self.held_prompts = [self.prompter.novelty(u.context) for u in self.held]
        self.held_banned = [u.banned for u in self.held]
        self.prev_cands = scoring.top_clusters(
            self.novelty, self.tok, self.held_prompts, self.held_banned, self.clusters, o.n
        )
        self.held_auc = {"before": self._held_auc()}

    def _held_auc(self) -> float:
        """The Relevance LLM's AUC on the held-out users: their engaged new clusters against
        the other clusters the previous Novelty proposed to them."""
        from coea_cli.llm.decoding import relevance_scores

        rng = np.random.default_rng(self.seed_k + 3)
        cap = self.opt.observed_per_user
        rows = [
            (u.context, c, c in u.novel)
            for u, cands in zip(self.held, self.prev_cands, strict=True)
            for c in dict.fromkeys([*cands, *at_most(u.novel - set(cands), cap, rng)])
        ]
        if not rows:
            return float("nan")
        prompts = [self.prompter.relevance(x, c) for x, c, _ in rows]
        label = f"round {self.k}: Relevance LLM on held-out users"
        score = relevance_scores(self.relevance, self.rtok, prompts, label=label).numpy()
        return scoring.auc(np.array([y for *_, y in rows]), score)

    def finetune(self) -> None:
        """Novelty fine-tuned from round k-1 on the verified positives (plus replay), pushing
        down the verified negative proposals (unlikelihood, --neg-weight), or on verified
        pairs with DPO."""
        from coea_cli.llm.train import train_novelty

        o = self.opt
        self.objective = o.objective if (o.kl or o.objective != Objective.sft_kl) else "sft"
        pos_rows = _cap_per_user(self.rows, self.pos, o.positives_per_user, self.seed_k)
        self.new_prompts = [self.prompts[j] for j, _, _ in pos_rows]
        self.new_targets = [c for _, c, _ in pos_rows]
        neg_rows = _cap_per_user(self.rows, self.neg, o.positives_per_user, self.seed_k + 1)
        negatives = [(self.prompts[j], c) for j, c, _ in neg_rows]
        self.replay_p, replay_t = _replay(
            self.track, self.state, len(self.new_prompts), o.replay, self.seed_k
        )
        common = dict(
            valid_clusters=self.clusters, epochs=o.epochs, lr=o.lr, batch_size=o.batch_size,
            progress=_progress(f"round {self.k} novelty ({self.objective})"), seed=self.seed_k,
        )  # fmt: skip
        self.fit = {"skipped": "no verified positives"}
        if self.objective == Objective.dpo:
            pairs = _dpo_pairs(self.rows, self.pos, self.neg, self.prompts)
            if pairs:
                self.fit = train_novelty(
                    self.novelty, self.tok, [], objective="dpo", dpo_pairs=pairs, beta=o.beta,
                    **common,
                )  # fmt: skip
        elif self.new_prompts:
            examples = list(
                zip(self.new_prompts + self.replay_p, self.new_targets + replay_t, strict=True)
            )
            self.fit = train_novelty(
                self.novelty, self.tok, examples, objective=str(self.objective),
                kl_weight=o.kl_weight, negatives=negatives, neg_weight=o.neg_weight, **common,
            )  # fmt: skip

    def update_relevance(self) -> None:
        """Continual update of Relevance on period k's labels (--update-relevance)."""
        from coea_cli.llm.train import train_relevance

        o = self.opt
        labelled = [
            (self.rel_prompts[i], int(self.engaged[i]))
            for i in range(len(self.rows))
            if self.engaged[i] or self.sampled[i]
        ]
        self.rel_fit = train_relevance(
            self.relevance, self.rtok, labelled, epochs=o.epochs, lr=o.lr,
            batch_size=o.batch_size, progress=_progress(f"round {self.k} relevance"),
            seed=self.seed_k,
        )  # fmt: skip

    def reevaluate(self) -> None:
        """Held-out users: the previous and the new Novelty's candidates, ranked by Relevance;
        the round is rejected when precision drops by more than epsilon."""
        from coea_cli.llm.decoding import relevance_scores

        o, held = self.opt, self.held
        new_cands = scoring.top_clusters(
            self.novelty, self.tok, self.held_prompts, self.held_banned, self.clusters, o.n
        )
        truth = [u.novel for u in held]
        pop = cluster_popularity(self.world, self.k)
        self.quality = {}
        for name, cands in (("previous", self.prev_cands), ("new", new_cands)):
            flat = [(held[j].context, c) for j, row in enumerate(cands) for c in row]
            prompts = [self.prompter.relevance(x, c) for x, c in flat]
            label = f"round {self.k}: re-evaluating the {name} Novelty LLM"
            sc = relevance_scores(self.relevance, self.rtok, prompts, label=label).numpy()
            best = scoring.rerank(cands, sc, o.top_m)
            novelty = scoring.cluster_novelty(best, pop, self.world.n_users, self.world.index)
            self.quality[name] = {
                f"novelty_hr@{o.top_m}": scoring.hit_rate([r[: o.top_m] for r in cands], truth),
                f"coea_hr@{o.top_m}": scoring.hit_rate(best, truth),
                f"coea_precision@{o.top_m}": scoring.precision(best, truth, o.top_m),
                **{f"cluster_{a}": b for a, b in novelty.items()},
            }
        if o.update_relevance:
            self.held_auc["after"] = self._held_auc()
        key = f"coea_precision@{o.top_m}"  # hit rates saturate: users try many new clusters
        self.accepted = True
        if o.reeval and len(held):
            q = self.quality
            self.accepted = not (q["new"][key] < q["previous"][key] - o.epsilon)

    def save(self) -> None:
        """Adapters of round k and the round's tables."""
        k, track = self.k, self.track
        _save(self.novelty, self.tok, track.adapter("novelty", k))
        self.relevance_path = self.state["current"]["relevance"]
        if self.opt.update_relevance:
            _save(self.relevance, self.rtok, track.adapter("relevance", k))
            self.relevance_path = track.relative(track.adapter("relevance", k))
        rows = self.rows
        cand = pa.table(
            {
                "user_id": pa.array([self.train[j].context.user for j, _, _ in rows], pa.int32()),
                "cluster": pa.array([self.world.index(c) for _, c, _ in rows], pa.int32()),
                "source": pa.array([src for *_, src in rows], pa.string()),
                "relevance": pa.array(self.score.astype(np.float32)),
                "engaged": pa.array(self.engaged),
            }
        )
        _write(track.round_file(k, "candidates", self.out), cand)
        keep = self.pos | self.neg
        labels = pa.array(self.pos[keep].astype(np.int8))
        _write(
            track.round_file(k, "verified", self.out),
            cand.filter(pa.array(keep)).append_column("label", labels),
        )
        table = _examples_table(self.new_prompts, self.new_targets, f"round{k}")
        _write(track.round_file(k, "examples", self.out), table)

    def metrics(self) -> dict:
        return {
            "round": self.k,
            "period": self.k,
            "track": self.track.name,
            "objective": str(self.objective),
            "users": len(self.users),
            "train_users": len(self.train),
            "heldout_users": len(self.held),
            **self.counts,
            "replayed": len(self.replay_p),
            "novelty_fit": self.fit,
            "relevance_fit": getattr(self, "rel_fit", None),
            "reeval": self.quality,
            "relevance_auc_heldout": self.held_auc,
            "accepted": self.accepted,
            "invalid_samples": self.samples.invalid,
            "options": self.opt.recorded(),
            "seconds": {
                **{a: round(b, 1) for a, b in self.times.items()},
                "total": round(time.time() - self.t0, 1),
            },
            "novelty_path": self.track.relative(self.track.adapter("novelty", self.k)),
            "relevance_path": self.relevance_path,
        }


def partition(engaged, proposed, score, tau_pos: float, tau_neg: float, verify: bool = True):
    """(positives, negatives) among candidate rows. Verified positive: engaged and judged
    relevant (score >= tau_pos), whether proposed or only observed. Verified negative: a
    proposal the user ignored that the Relevance LLM also rejects (score < tau_neg). Everything
    else is uncertain and dropped. Without `verify` the data alone decides.

    Example: engaged [1, 1, 0, 0], proposed [1, 0, 1, 1], score [.9, .5, .2, .5], taus .6/.4
    -> positives [1, 0, 0, 0], negatives [0, 0, 1, 0] (row 1 and row 3 uncertain).
    """
    engaged, proposed = np.asarray(engaged, bool), np.asarray(proposed, bool)
    score = np.asarray(score, dtype=np.float64)
    if not verify:
        return engaged.copy(), proposed & ~engaged
    return engaged & (score >= tau_pos), proposed & ~engaged & (score < tau_neg)


def at_most(clusters: set, cap: int, rng: np.random.Generator) -> list:
    """At most `cap` of `clusters` chosen at random, ascending; 0 keeps all."""
    ordered = sorted(clusters)
    if cap <= 0 or len(ordered) <= cap:
        return ordered
    return sorted(ordered[int(i)] for i in rng.permutation(len(ordered))[:cap])


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


def _replay(track: Track, state: dict, n_new: int, share: float, seed: int):
    """A `share` of the round's examples drawn from earlier rounds' training data (the rounds
    of the state's history, whatever track wrote them)."""
    if share <= 0 or n_new == 0:
        return [], []
    tables = []
    for entry in state["history"]:
        folder = Path(track.root) / Path(entry["metrics"]).parent
        path = track.round_file(entry["round"], "examples", folder)
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


def report_on_test_period(
    world: World, model, tok, prompter, context: str = "full", ks: tuple[int, ...] = (5, 10)
) -> dict:
    """Evaluation only (never used to accept a round): the Novelty LLM's top-k novel clusters
    for users of the test period, with context as of its start, at each k of `ks` (10 is the
    evaluation table's cut-off; the k = 5 keys carry no suffix on the novelty figures, as
    before). `first` counts a hit only on the first new cluster each user engages in the
    period; `any` on any of them."""
    test = world.test_period
    users = [u for u in period_users(world, test, context=context) if u.novel]
    during = world.history.during(test)
    first = []
    for u in users:
        clusters = world.item_cluster[during.of(u.context.user)]
        first.append({next(world.code(c) for c in clusters if world.code(c) not in u.banned)})
    prompts = [prompter.novelty(u.context) for u in users]
    banned = [u.banned for u in users]
    top = scoring.top_clusters(model, tok, prompts, banned, world.clusters(), max(ks))
    pop = cluster_popularity(world, test)
    out: dict = {}
    for k in ks:
        head = [row[:k] for row in top]
        suffix = "" if k == 5 else f"@{k}"
        out[f"test_first_novel_hr@{k}"] = scoring.hit_rate(head, first)
        out[f"test_novelty_hr@{k}"] = scoring.hit_rate(head, [u.novel for u in users])
        for a, b in scoring.cluster_novelty(head, pop, world.n_users, world.index).items():
            out[f"test_cluster_{a}{suffix}"] = b
    return {**out, "test_users": len(users)}
