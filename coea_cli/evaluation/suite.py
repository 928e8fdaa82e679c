"""The systems scored side by side: the simple rules (no LLM) and the CoEA rows."""

from __future__ import annotations

import numpy as np

from coea_cli.evaluation import systems
from coea_cli.evaluation.table import HEADLINE, Events, Scores
from coea_cli.options import ServeOptions
from coea_cli.recs.engine import Engine

RANDOM_DRAWS = 10  # the random baseline is averaged over this many draws

STRONG = "DSIE unexplored"  # the reference rule: its rows count the events
# The simple rules CoEA's cluster choice competes with (no LLM); claims are measured against
# the strongest of them on each headline metric (`strongest`).
MIXED = "Mixed unexplored"
SIMPLE = (STRONG, "Popularity unexplored", MIXED, "Popular unexplored", "Random unexplored")
# The ablation tracks and the pco-round flag each one is trained with.
ABLATION_FLAGS = {"nokl": "--no-kl", "nodsie": "--no-dsie", "nopersona": "--no-persona"}


def baselines(
    scores: Scores, engine: Engine, ev: Events, serve: ServeOptions, k: int, seed: int,
    mmr_lambda: float, rule=None,
) -> None:  # fmt: skip
    """Every system without an LLM, each with what it isolates. `rule`: the `Weights` without
    the LLMs chosen on the validation period (recs.tune; None: DSIE alone)."""
    u, m, r = ev.users, serve.top_m, serve.explore_ratio
    scores.add("Popularity", ev, systems.popularity(engine, u, k),
               "most popular unseen items: no personalisation")  # fmt: skip
    draws = [systems.random_novel(engine, u, k, seed + d) for d in range(RANDOM_DRAWS)]
    scores.add("Random novel", ev, draws,
               f"random unseen items of clusters new to the user (mean of {RANDOM_DRAWS} draws): "
               "novelty with no relevance")  # fmt: skip
    scores.add("DSIE top-K", ev, systems.dsie_top(engine, u, k), "DSIE's ranking: relevance only")
    scores.add("DSIE + MMR", ev, systems.dsie_mmr(engine, u, k, scores.item_emb, mmr_lambda),
               f"DSIE re-ranked by MMR (lambda {mmr_lambda}) over its top 100: diversity "
               "without the user's history")  # fmt: skip
    lists = systems.unexplored(engine, u, k)
    scores.add(STRONG, ev, systems.from_lists(lists, u, k),
               "DSIE's top K over every cluster new to the user: the rule with no LLM", lists)  # fmt: skip
    lists = systems.unexplored(engine, u, k, inside="popularity")
    scores.add("Popularity unexplored", ev, systems.from_lists(lists, u, k),
               "the K most popular unseen items of clusters new to the user: the rule without "
               "DSIE", lists)  # fmt: skip
    lists = systems.mixed_unexplored(engine, u, k, rule.popularity if rule is not None else 0.0)
    scores.add(MIXED, ev, systems.from_lists(lists, u, k),
               "every cluster new to the user, items by DSIE and popularity mixed (popularity's "
               "share chosen on the validation period with the LLM weights at 0; DSIE alone "
               "without one): the tuned rule with no LLM", lists)  # fmt: skip
    lists = systems.popular_unexplored(engine, u, k, m, r)
    scores.add("Popular unexplored", ev, systems.from_lists(lists, u, k),
               f"the {m} unexplored clusters most users engaged, DSIE inside: cluster choice "
               "by popularity", lists)  # fmt: skip
    draws = [systems.random_unexplored(engine, u, k, m, r, seed + d) for d in range(RANDOM_DRAWS)]
    scores.add("Random unexplored", ev, [systems.from_lists(x, u, k) for x in draws],
               f"{m} random unexplored clusters, DSIE inside (mean of {RANDOM_DRAWS} draws): "
               "cluster choice at random")  # fmt: skip


def coea_rows(scores: Scores, engine: Engine, ev: Events, variants, serve, k: int, seed: int,
              weights=None):  # fmt: skip
    """Each CoEA variant's lists for the events, ranked with `weights` (see recs.lists)."""
    for name, variant, note in variants:
        if variant is None:
            scores.note(name, note)
            continue
        lists = engine.recommend(ev.users, variant, serve, k, seed, weights)["lists"]
        scores.add(name, ev, systems.from_lists(lists, ev.users, k), note, lists)


def strongest(scores: Scores) -> list[str]:
    """The simple rules that lead on at least one headline metric (pooled), in SIMPLE order."""
    pooled = scores.pooled()
    present = [n for n in SIMPLE if n in pooled]
    best = {max(present, key=lambda n: pooled[n].get(col, -np.inf)) for _, col, _ in HEADLINE}
    return [n for n in present if n in best]


def comparisons(scores: Scores, seed: int) -> dict:
    """Every CoEA row against the strongest simple rules (`strongest`); full CoEA against
    each simple rule and each ablation (what the ablated part adds). Ratios of per-event
    means with 95% paired-bootstrap intervals."""
    out = {}
    coea = [n for n in scores.rows if n.startswith("CoEA") or n.startswith("Novelty")]
    strong = strongest(scores)
    for base in strong:
        for name in coea:
            out[f"{name} vs {base}"] = scores.compare(name, base, seed)
    if "CoEA (full)" in scores.rows:
        for base in SIMPLE:
            if base not in strong and base in scores.rows:
                out[f"CoEA (full) vs {base}"] = scores.compare("CoEA (full)", base, seed)
        for base in coea:
            if base != "CoEA (full)":
                out[f"CoEA (full) vs {base}"] = scores.compare("CoEA (full)", base, seed)
    return out


def events_at(engine: Engine, period: int) -> Events:
    """Users active in `period` with a history before it, their items in the period, and the
    popularity the novelty metrics use (distinct users per item before the period)."""
    during = engine.world.history.during(period)
    users = np.array([u for u in during.users().tolist() if len(engine.seen(u))], np.int64)
    h = engine.world.history
    before = h.periods < period
    pairs = np.unique(np.stack([h.users[before], h.items[before]]), axis=1)
    return Events(
        period=period,
        users=users,
        truth=[np.unique(during.of(int(u))) for u in users],
        history=[engine.seen(u) for u in users],
        item_pop=np.bincount(pairs[1], minlength=h.n_items),
        n_train_users=len(np.unique(h.users[before])),
        item_cluster=engine.world.item_cluster,
        n_items=h.n_items,
    )
