"""What the LLMs see about a user: group persona, recent and familiar interest clusters.

Everything is computed from interactions strictly before a cutoff (a period start, or a
position inside a user's sequence), so no prompt ever contains the future it is judged on.
`World` is the workspace as the LLM steps (PCO rounds, serving, evaluation) read it, loaded
once through the workspace layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coea_cli.workspace import Cluster, ClusterSpace, History, Workspace
from coea_cli.workspace.history import distinct_last, recent_distinct


@dataclass
class World:
    """The history plus the prompt vocabulary: each item's cluster, cluster descriptions,
    each user's group and each group's persona."""

    history: History
    item_cluster: np.ndarray  # [N] cluster index per item
    n_clusters: int
    describe: dict[Cluster, str]
    group_of: np.ndarray  # [U] group of each user at the test period's start
    persona: dict[int, str]
    by_period: dict[int, np.ndarray] = field(default_factory=dict)  # period start -> groups
    space: ClusterSpace | None = None  # index <-> codes (None: level 1, n_clusters codes)

    @classmethod
    def load(cls, ws: Workspace) -> World:
        sids = ws.sids()
        groups = ws.groups()
        space = sids.layout.clusters
        return cls(
            history=ws.history(),
            item_cluster=sids.cluster_of_items(),
            n_clusters=space.size,
            describe={space.code(c): d for c, d in sids.descriptions.items()},
            group_of=groups.of_user,
            persona=groups.persona_text,
            by_period=groups.by_period,
            space=space,
        )

    @property
    def n_users(self) -> int:
        return self.history.n_users

    @property
    def n_items(self) -> int:
        return self.history.n_items

    @property
    def test_period(self) -> int:
        return self.history.test_period

    def clusters(self) -> list[Cluster]:
        """Every cluster that holds an item, ascending."""
        return [self.code(c) for c in np.unique(self.item_cluster)]

    def code(self, index: int) -> Cluster:
        """The codes of the cluster with this index: (12,) at depth 1, (12, 7) at depth 2."""
        return self._space().code(index)

    def index(self, cluster: Cluster) -> int:
        return self._space().index(cluster)

    def _space(self) -> ClusterSpace:
        return self.space or ClusterSpace((self.n_clusters,))

    def group_at(self, period: int | None) -> np.ndarray:
        """Each user's group at the start of `period` (the test period's for None)."""
        return self.by_period.get(period, self.group_of) if period is not None else self.group_of

    def persona_of(self, user: int, period: int | None = None) -> str:
        """The persona of the user's group at `period` ("" for a user without a group)."""
        groups = self.group_at(period)
        if not 0 <= user < len(groups):
            return ""
        return self.persona.get(int(groups[user]), "")


@dataclass
class Context:
    user: int
    persona: str
    recent: list[Cluster]  # most recent last
    familiar: list[Cluster]  # every cluster seen, most recent last


CONTEXTS = {
    "full": "group persona and the whole history",
    "no-persona": "the whole history, no persona (--no-persona: the group-identity ablation)",
    "recent": "the recent window only, no persona (--no-dsie)",
}


def context_of(
    world: World,
    user: int,
    history: np.ndarray,
    *,
    recent: int = 5,
    short_window: int = 10,
    context: str = "full",
    period: int | None = None,
) -> Context:
    """Context from a user's item history (time order) before `period` (whose start decides
    the user's group; None: the test period), of one of the `CONTEXTS`.

    "full" carries the group persona and the whole history's clusters (long-term identity);
    "no-persona" the same clusters without the persona; "recent" only the short-term window
    (the `--no-dsie` ablation), though decoding still bans every cluster the user has seen.
    """
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}; expected one of {sorted(CONTEXTS)}")
    clusters = world.item_cluster[history] if len(history) else np.zeros(0, dtype=np.int64)
    familiar = distinct_last(clusters)
    long_term = context != "recent"
    window = clusters if long_term else clusters[max(0, len(clusters) - short_window) :]
    shown_recent = recent_distinct(window, recent)
    persona = world.persona_of(user, period) if context == "full" else ""
    shown_familiar = familiar if long_term else distinct_last(window)
    return Context(
        user=int(user),
        persona=persona,
        recent=[world.code(c) for c in shown_recent],
        familiar=[world.code(c) for c in shown_familiar],
    )


def banned(world: World, history: np.ndarray) -> set[Cluster]:
    """Every cluster in the history: the Novelty LLM must not propose it."""
    if not len(history):
        return set()
    return {world.code(c) for c in np.unique(world.item_cluster[history])}


def cluster_popularity(world: World, before_period: int) -> np.ndarray:
    """Number of distinct users engaging each cluster before a period."""
    h = world.history
    mask = h.periods < before_period
    pairs = np.unique(np.stack([h.users[mask], world.item_cluster[h.items[mask]]]), axis=1)
    return np.bincount(pairs[1], minlength=world.n_clusters)


class Prompter:
    """Renders Novelty and Relevance prompts with the workspace's cluster descriptions.

    Prompts are kept near 130 tokens (persona and descriptions truncated): on CPU the cost of
    every round is proportional to prompt length. With the backbone folder of a tokenizer that
    has a chat template (an instruction-tuned `--base-model`), each prompt becomes a user turn
    (every line but the last) and the start of the assistant's turn (the last line, such as
    "Answer:"), so the answer tokens follow exactly as in a plain prompt.
    """

    def __init__(self, world: World, template_dir=None, backbone=None):
        from coea_cli.llm.prompts import PromptLimits, load_templates

        self.world = world
        self.templates = load_templates(template_dir)
        self.limits = PromptLimits(
            max_recent=4, max_familiar=16, max_desc_chars=40, max_persona_chars=120
        )
        self.chat = _chat_template(backbone)

    def _wrap(self, text: str) -> str:
        if self.chat is None:
            return text
        head, _, last = text.rpartition("\n")
        return self.chat(head) + last

    def novelty(self, ctx: Context) -> str:
        from coea_cli.llm.prompts import novelty_prompt

        return self._wrap(
            novelty_prompt(
                ctx.persona,
                ctx.recent,
                ctx.familiar,
                self.world.describe,
                templates=self.templates,
                limits=self.limits,
            )
        )

    def relevance(self, ctx: Context, cluster: Cluster) -> str:
        from coea_cli.llm.prompts import relevance_prompt

        return self._wrap(
            relevance_prompt(
                ctx.persona,
                ctx.recent,
                ctx.familiar,
                cluster,
                self.world.describe,
                templates=self.templates,
                limits=self.limits,
            )
        )


def _chat_template(backbone):
    """A function user text -> chat-formatted text up to the assistant's turn, when the
    backbone's tokenizer has a chat template; else None."""
    if backbone is None:
        return None
    from pathlib import Path

    path = Path(backbone)
    if not (path / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if not getattr(tok, "chat_template", None):
        return None

    def chat(text: str) -> str:
        return tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    return chat
