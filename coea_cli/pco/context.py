"""What the LLMs see about a user: group persona, recent and familiar interest clusters.

Everything is computed from interactions strictly before a cutoff (a period start, or a
position inside a user's sequence), so no prompt ever contains the future it is judged on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coea_cli import store
from coea_cli.clusters import distinct_last, recent_distinct
from coea_cli.errors import BadInput, MissingArtifact

Cluster = tuple[int, ...]


@dataclass
class World:
    """The workspace tables the rounds need, loaded once."""

    users: np.ndarray  # interaction user ids, time-sorted
    items: np.ndarray
    periods: np.ndarray
    item_cluster: np.ndarray  # level-1 cluster per item
    n_clusters: int
    describe: dict[Cluster, str]
    group_of: dict[int, int]
    persona: dict[int, str]
    test_period: int
    n_users: int
    n_items: int
    titles: list[str] = field(default_factory=list)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def clusters(self) -> list[Cluster]:
        present = np.unique(self.item_cluster)
        return [(int(c),) for c in present]

    def sequences(
        self, before_period: int, only_period: int | None = None
    ) -> dict[int, np.ndarray]:
        """Each user's items (time order) in periods < before_period, or in one period."""
        if only_period is not None:
            mask = self.periods == only_period
        else:
            mask = self.periods < before_period
        u, i = self.users[mask], self.items[mask]
        order = np.argsort(u, kind="stable")
        u, i = u[order], i[order]
        cuts = np.flatnonzero(np.diff(u)) + 1
        return {
            int(us[0]): it
            for us, it in zip(np.split(u, cuts), np.split(i, cuts), strict=True)
            if len(us)
        }


def load_world(work: Path) -> World:
    work = Path(work)
    inter = store.read_parquet(work / "data" / "interactions.parquet")
    meta = store.read_json(work / "data" / "dataset.json")
    sids_path = work / "sids" / "sids.parquet"
    sids = store.read_parquet(sids_path, command="build-sids").sort_by("item_id")
    n_items = int(meta["items"])
    if sids.num_rows != n_items:
        raise BadInput(f"{sids_path}: {sids.num_rows} items, data/items.parquet has {n_items}")
    item_cluster = sids["c1"].to_numpy().astype(np.int64)
    describe = {}
    clusters_path = work / "sids" / "clusters.parquet"
    if clusters_path.exists():
        t = store.read_parquet(clusters_path)
        describe = {
            (int(c),): str(d)
            for c, d in zip(t["cluster"].to_pylist(), t["description"].to_pylist(), strict=True)
        }
    groups_path = work / "groups" / "groups.parquet"
    if not groups_path.exists():
        raise MissingArtifact(groups_path, "profile-groups")
    g = store.read_parquet(groups_path)
    p = store.read_parquet(work / "groups" / "personas.parquet", command="profile-groups")
    items = store.read_parquet(work / "data" / "items.parquet", columns=["title"])
    return World(
        users=inter["user_id"].to_numpy().astype(np.int64),
        items=inter["item_id"].to_numpy().astype(np.int64),
        periods=inter["period"].to_numpy().astype(np.int64),
        item_cluster=item_cluster,
        n_clusters=int(item_cluster.max()) + 1,
        describe=describe,
        group_of=dict(zip(g["user_id"].to_pylist(), g["group"].to_pylist(), strict=True)),
        persona=dict(zip(p["group"].to_pylist(), p["persona"].to_pylist(), strict=True)),
        test_period=int(meta["test_period"]),
        n_users=int(meta["users"]),
        n_items=n_items,
        titles=[t or "" for t in items["title"].to_pylist()],
        times=inter["timestamp"].to_numpy(),
    )


@dataclass
class Context:
    user: int
    persona: str
    recent: list[Cluster]  # most recent last
    familiar: list[Cluster]  # every cluster seen, most recent last


def context_of(
    world: World,
    user: int,
    history: np.ndarray,
    *,
    recent: int = 5,
    short_window: int = 10,
    use_dsie: bool = True,
) -> Context:
    """Context from a user's item history (time order).

    With `use_dsie` the prompt carries the group persona and the whole history's clusters
    (long-term identity); without it only the short-term window is shown (the `--no-dsie`
    ablation), though decoding still bans every cluster the user has seen.
    """
    clusters = world.item_cluster[history] if len(history) else np.zeros(0, dtype=np.int64)
    familiar = distinct_last(clusters)
    window = clusters[max(0, len(clusters) - short_window) :] if not use_dsie else clusters
    shown_recent = recent_distinct(window, recent)
    persona = ""
    if use_dsie:
        g = world.group_of.get(int(user))
        persona = world.persona.get(g, "") if g is not None else ""
    shown_familiar = familiar if use_dsie else distinct_last(window)
    return Context(
        user=int(user),
        persona=persona,
        recent=[(int(c),) for c in shown_recent],
        familiar=[(int(c),) for c in shown_familiar],
    )


def banned(world: World, history: np.ndarray) -> set[Cluster]:
    """Every cluster in the history: the Novelty LLM must not propose it."""
    if not len(history):
        return set()
    return {(int(c),) for c in np.unique(world.item_cluster[history])}


def cluster_popularity(world: World, before_period: int) -> np.ndarray:
    """Number of distinct users engaging each cluster before a period."""
    mask = world.periods < before_period
    pairs = np.unique(np.stack([world.users[mask], world.item_cluster[world.items[mask]]]), axis=1)
    return np.bincount(pairs[1], minlength=world.n_clusters)
