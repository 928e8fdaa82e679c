"""The simple rules evaluated beside CoEA, on a hand-built world whose answers follow on paper.

    item:     0    1    2    3    4    5    6    7    8    9
    cluster:  0    0    0    1    1    1    2    2    3    3
    log before the cutoff (period 0): user 0: 0 1; user 1: 3 6 0; user 2: 6 7 8
    cluster popularity (distinct users): c0 {0, 1} = 2, c1 {1} = 1, c2 {1, 2} = 2, c3 {2} = 1
    DSIE scores (all users): items by score 9 > 8 > 7 > ... > 0 (score = item id)

The engine is a real `Engine` whose DSIE scoring is replaced by the fixed scores above (this
isolates the list construction; DSIE itself is tested in test_dsie).
"""

from __future__ import annotations

import numpy as np
import pytest

from coea_cli.evaluation import systems
from coea_cli.llm.context import World
from coea_cli.recs.engine import Engine
from coea_cli.recs.lists import DRAW, FILL, SOURCES, clusters_to_items
from coea_cli.workspace import History

ITEM_CLUSTER = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
LOG = [(0, 0), (0, 1), (1, 3), (1, 6), (1, 0), (2, 6), (2, 7), (2, 8)]


def engine() -> Engine:
    users = np.array([u for u, _ in LOG] + [0], dtype=np.int64)
    items = np.array([i for _, i in LOG] + [9], dtype=np.int64)
    periods = np.array([0] * len(LOG) + [1], dtype=np.int64)  # one test-period event
    history = History(users, items, np.arange(len(users)), periods, 3, 10, test_period=1)
    world = World(history, ITEM_CLUSTER, 4, {}, np.zeros(3, np.int64), {})
    e = Engine.__new__(Engine)
    e.world, e.before = world, 1
    e.history = history.before(1)
    e.items_of = clusters_to_items(ITEM_CLUSTER)
    e.popularity = np.log1p(history.item_counts(1)).astype(np.float32)
    e.dsie_scores = lambda us: np.tile(np.arange(10, dtype=np.float32), (len(us), 1))
    return e


USERS = np.array([0, 1, 2])


def items(lists, u):
    return lists[u]["item"].tolist()


def test_dsie_unexplored_is_dsie_over_new_clusters():
    out = systems.unexplored(engine(), USERS, 4)
    # user 0 knows c0: best of c1..c3 = 9 8 7 6; user 1 knows c0 c1 c2: c3 = 9 8, then fill
    assert items(out, 0) == [9, 8, 7, 6]
    assert items(out, 1) == [9, 8, 7, 5]  # 7 (c2, unseen) and 5 (c1) fill: c3 has only 8, 9
    assert out[1]["source"].tolist() == [DRAW, DRAW, FILL, FILL]
    assert items(out, 2) == [5, 4, 3, 2]  # knows c2, c3: c0 and c1 minus nothing seen


def test_popular_unexplored_takes_the_most_engaged_new_clusters():
    out = systems.popular_unexplored(engine(), USERS, 3, top_m=1, explore_ratio=1.0)
    # user 0 (knows c0): c2 (2 users) beats c1 and c3 (1 each) -> items 7 6, then fill 9
    assert items(out, 0) == [7, 6, 9]
    # user 2 (knows c2 c3): c0 (2 users) beats c1 (1): items 2 1 0 by score
    assert items(out, 2) == [2, 1, 0]


def test_random_unexplored_draws_only_new_clusters_and_is_seeded():
    e = engine()
    a = systems.random_unexplored(e, USERS, 2, top_m=1, explore_ratio=1.0, seed=3)
    b = systems.random_unexplored(e, USERS, 2, top_m=1, explore_ratio=1.0, seed=3)
    assert all(items(a, u) == items(b, u) for u in USERS)
    # user 1 knows c0 c1 c2: the only new cluster is c3, whatever the draw
    for seed in range(5):
        out = systems.random_unexplored(e, USERS, 2, top_m=1, explore_ratio=1.0, seed=seed)
        assert items(out, 1) == [9, 8]
        assert set(ITEM_CLUSTER[items(out, 0)]) <= {1, 2, 3}
    seen = {tuple(items(systems.random_unexplored(e, USERS, 2, 1, 1.0, s), 0)) for s in range(20)}
    assert len(seen) > 1  # the draw does vary for a user with several new clusters


def test_slot_shares():
    out = systems.unexplored(engine(), USERS, 4)
    shares = systems.slot_shares(out, USERS, 4)
    # 12 slots: user 1 has 2 fills, the rest are draws
    assert shares == {
        f"share_{SOURCES[0]}@4": pytest.approx(10 / 12),
        f"share_{SOURCES[1]}@4": 0.0,
        f"share_{SOURCES[2]}@4": pytest.approx(2 / 12),
    }


def test_mixed_unexplored_moves_from_dsie_to_popularity():
    """The rule without LLMs (`Weights(0, 0, mix)`): mix 0 is DSIE over every new cluster,
    mix 1 popularity over them, and a mix in between ranks by the mixed standardised scores."""
    e = engine()

    def mixed(mix, k=6):
        return systems.mixed_unexplored(e, USERS, k, mix)

    dsie, pop = systems.unexplored(e, USERS, 6), systems.unexplored(e, USERS, 6, "popularity")
    assert all(items(mixed(0.0), u) == items(dsie, u) for u in USERS)
    assert all(items(mixed(1.0), u) == items(pop, u) for u in USERS)
    # user 2 knows c2 and c3: items 0..5 are new; counts before period 1: item 0 two users,
    # items 1 and 3 one each, 2 4 5 none; popularity ranks 0, then 1 and 3, then 2 4 5
    assert items(mixed(1.0), 2) == [0, 1, 3, 2, 4, 5]
    assert items(mixed(0.0), 2) == [5, 4, 3, 2, 1, 0]
    ids = np.arange(10.0)
    pop_log = np.log1p(np.array([2, 1, 0, 1, 0, 0, 2, 1, 1, 0.0]))
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    half = 0.5 * z(ids) + 0.5 * z(pop_log)
    want = sorted(range(6), key=lambda i: -half[i])
    assert items(mixed(0.5), 2) == want
    assert want != items(mixed(0.0), 2) and want != items(mixed(1.0), 2)


def test_claims_are_measured_against_the_leading_simple_rules():
    """`strongest` keeps every simple rule that leads on a headline metric, in SIMPLE order;
    CoEA rows never count, and a rule that leads nowhere is left out."""
    from coea_cli.evaluation.suite import SIMPLE, strongest

    rows = {
        SIMPLE[0]: {"hr@10": 0.30, "novel_hr@10": 0.40, "serendipity@10": 0.04},
        SIMPLE[1]: {"hr@10": 0.25, "novel_hr@10": 0.60, "serendipity@10": 0.07},
        SIMPLE[2]: {"hr@10": 0.28, "novel_hr@10": 0.55, "serendipity@10": 0.08},
        SIMPLE[3]: {"hr@10": 0.10, "novel_hr@10": 0.10, "serendipity@10": 0.01},
        "CoEA (full)": {"hr@10": 0.9, "novel_hr@10": 0.9, "serendipity@10": 0.9},
    }

    class Pooled:
        def pooled(self):
            return rows

    assert strongest(Pooled()) == [SIMPLE[0], SIMPLE[1], SIMPLE[2]]
    rows[SIMPLE[0]]["hr@10"] = 0.2
    assert strongest(Pooled()) == [SIMPLE[1], SIMPLE[2]]
