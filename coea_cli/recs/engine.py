"""Recommendation lists for a set of users as of a period start, for one system variant."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coea_cli import console
from coea_cli.dsie.infer import encode_users, scores
from coea_cli.dsie.infer import load_model as load_dsie
from coea_cli.errors import BadInput
from coea_cli.llm.context import Prompter, World, context_of
from coea_cli.llm.models import LLMSpec, load_model, serving_spec
from coea_cli.options import ServeOptions
from coea_cli.recs.candidates import user_candidates
from coea_cli.recs.lists import Weights, clusters_to_items, user_list
from coea_cli.workspace import Track, Workspace
from coea_cli.workspace.tracks import serving_before


@dataclass
class Variant:
    """Which adapters generate and judge clusters, and how items inside clusters are ranked."""

    name: str
    novelty: Path
    relevance: Path
    spec: LLMSpec
    context: str = "full"  # the prompts' context, one of llm.context.CONTEXTS
    inside: str = "dsie"  # how items inside a cluster are ranked: "dsie" or "popularity"
    judge: bool = True  # Relevance best-of-n over the draws (off: the Novelty LLM alone)
    reserve: bool = True  # follow the draws with every other allowed cluster
    template_dir: str | None = None  # the prompt templates the track was trained with
    round: int | None = None  # the round whose Novelty adapter this is


def track_variant(
    ws: Workspace, track: Track, device: str, seed: int, round_: int | None = None,
    name: str | None = None, judge: bool = True, reserve: bool = True, before: int | None = None,
    inside: str | None = None,
) -> Variant:  # fmt: skip
    """A track's current adapters (or a given round's), served as they were trained: the same
    backbone and LoRA shape, and the same context (a track trained with --no-dsie gets prompts
    without persona or long-term history, one trained with --no-persona no persona). Items
    inside clusters are ranked by `inside` (default: DSIE, popularity for a --no-dsie track)."""
    state = track.require_state()
    spec = serving_spec(ws, track, state, device, seed)
    context = state["serving"]["context"]
    inside = inside or ("popularity" if context == "recent" else "dsie")
    if before is not None:
        entry = serving_before(state, before)
        label = f"{track.name}@{entry['round']}"
    elif round_ is None:
        entry, label = state["current"], track.name
    else:
        entry = next((h for h in state["history"] if h["round"] == round_), None)
        if entry is None:
            raise BadInput(f"--round {round_}: track {track.name} has no round {round_}")
        label = f"{track.name}@{round_}"
    novelty = track.recorded_adapter(entry["novelty"])
    relevance = track.recorded_adapter(entry["relevance"])
    templates = state["serving"].get("template_dir")
    made = [h["round"] for h in state["history"] if h["novelty"] == entry["novelty"]]
    round_ = entry.get("round", made[-1] if made else None)
    return Variant(
        name or label, novelty, relevance, spec, context, inside, judge, reserve, templates, round_
    )


def _check_cutoff(ws: Workspace, name: str, before: int, test: int) -> None:
    """Serving as of `before` needs the DSIE trained on every period before min(before, test)
    (the newest period is its validation): a DSIE of an older log is stale."""
    from coea_cli.errors import ArtifactError

    cutoff, want = ws.dsie_config(name).get("cutoff"), min(before, test)
    if cutoff is not None and int(cutoff) != want:
        folder = ws.dsie(name)
        raise ArtifactError(
            folder.file("config"),
            folder.producer,
            f"DSIE was trained on the periods before {cutoff}; serving as of period {before} "
            f"needs the one trained on the periods before {want} (the log has grown)",
        )


class Engine:
    """Holds the workspace tables, DSIE and per-user item scores at one cutoff."""

    def __init__(
        self, ws: Workspace, before_period: int, device: str, world: World | None = None,
        dsie=None,
    ):  # fmt: skip
        """`dsie`: a DSIE model to serve instead of the workspace's for this cutoff (the
        simulator's, fine-tuned in memory); its user states are then encoded here."""
        self.ws = ws
        self.world = world or World.load(ws)
        self.before = before_period
        self.history = self.world.history.before(before_period)
        if dsie is None:
            self.dsie_name = ws.dsie_name(before_period)
            _check_cutoff(ws, self.dsie_name, before_period, self.world.test_period)
            self.dsie = load_dsie(ws, self.dsie_name, device=device)
            self.states = self._states()
        else:
            self.dsie = dsie
            groups = self.world.group_at(before_period)
            self.states = encode_users(dsie, self.world.history, groups, before_period)["fused"]
        self.items_of = clusters_to_items(self.world.item_cluster)
        counts = self.world.history.item_counts(before_period)
        self.popularity = np.log1p(counts).astype(np.float32)

    def _states(self) -> np.ndarray:
        """Fused DSIE states as of the cutoff: the ones train-dsie stored when they are for
        this cutoff and this log, else encoded now."""
        h = self.world.history
        arrays, meta = self.ws.user_states(self.dsie_name)
        if meta.get("before_period") == self.before and meta.get("interactions") == len(h.users):
            return arrays["fused"]
        return encode_users(self.dsie, h, self.world.group_at(self.before), self.before)["fused"]

    def seen(self, user: int) -> np.ndarray:
        return self.history.of(int(user))

    def dsie_scores(self, users: np.ndarray) -> np.ndarray:
        return scores(self.dsie, self.states[users])

    def familiar(self, user: int) -> np.ndarray:
        """Clusters in the user's history, ascending."""
        return np.unique(self.world.item_cluster[self.seen(user)])

    def rank_inside(
        self, users, candidates_of, k: int, top_m: int, explore_ratio: float, inside="dsie",
        weights: Weights | None = None,
    ) -> dict:  # fmt: skip
        """{user: RECORD list}: the user's first `top_m` unfamiliar candidate clusters
        (`candidates_of(user)`), items inside ranked by `inside` (DSIE's scores or
        popularity), the rest of the K slots filled by that ranking. With `weights`, items of
        every unfamiliar candidate ranked as `Weights` says (popularity mixed into DSIE's
        standardised scores)."""
        if inside not in ("dsie", "popularity"):
            raise ValueError(f"inside: {inside!r}")
        w, lists = self.world, {}
        for start in range(0, len(users), 1024):
            chunk = np.asarray(users[start : start + 1024], dtype=np.int64)
            if inside == "popularity":
                pop = self.popularity if weights is None else standardised(self.popularity)
                block = np.broadcast_to(pop, (len(chunk), w.n_items))
            elif weights is None:
                block = self.dsie_scores(chunk)
            else:
                mix = weights.popularity
                block = (1 - mix) * standardised(self.dsie_scores(chunk)) + mix * standardised(
                    self.popularity
                )
            for row, u in zip(block, chunk, strict=True):
                fam = set(self.familiar(u).tolist())
                lists[int(u)] = user_list(
                    row, self.seen(u), fam, candidates_of(int(u)), self.items_of,
                    w.item_cluster, k=k, top_m=top_m, explore_ratio=explore_ratio,
                    weights=weights,
                )  # fmt: skip
        return lists

    def candidates(self, users, variant: Variant, opt: ServeOptions, seed: int) -> dict:
        """{user: candidates}: each user's own context (as in training), draws without the
        clusters the user knows, judged by the Relevance LLM; and the number of distinct
        Novelty prompts."""
        w = self.world
        ctx = {
            int(u): context_of(w, u, self.seen(u), context=variant.context, period=self.before)
            for u in users
        }
        familiar = {int(u): {w.code(c) for c in self.familiar(u)} for u in users}
        novelty = load_model(variant.spec, variant.novelty, False)
        relevance = load_model(variant.spec, variant.relevance, False) if variant.judge else None
        console.log(f"{variant.name}: {len(users)} users, {opt.n} Novelty draws each")
        prompter = Prompter(w, variant.template_dir, variant.spec.backbone)
        cands = user_candidates(
            w, ctx, familiar, novelty, relevance, prompter, n=opt.n,
            temperature=opt.temperature, seed=seed, judge=variant.judge, reserve=variant.reserve,
        )  # fmt: skip
        return cands

    def recommend(
        self, users: np.ndarray, variant: Variant, opt: ServeOptions, k: int, seed: int,
        weights: Weights | None = None,
    ) -> dict:  # fmt: skip
        """{"lists": {user: RECORD array}, "seconds": per stage}."""
        t0 = time.time()
        cands = self.candidates(users, variant, opt, seed)
        t1 = time.time()
        lists = self.rank_inside(
            users, lambda u: cands[u], k, opt.top_m, opt.explore_ratio, variant.inside, weights
        )
        t2 = time.time()
        return {"lists": lists, "candidates": cands, "seconds": {"llm": t1 - t0, "lists": t2 - t1}}


def standardised(x: np.ndarray) -> np.ndarray:
    """Standardised along the last axis (items)."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=-1, keepdims=True)
    return (x - x.mean(axis=-1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
