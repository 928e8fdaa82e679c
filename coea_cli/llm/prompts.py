"""Novelty and Relevance prompts, rendered from text templates.

Templates are ``coea_cli/prompts/{novelty,relevance}.txt`` (``str.format`` placeholders); a user
folder holding files of the same names overrides them. A Novelty prompt ends right before the
cluster tokens; a Relevance prompt ends right before the answer, whose first token is " Yes" or
" No" (see ``answer_token_ids``). Token ids are always appended to the encoded prompt, never
joined as text, so tokenization at the boundary is the same in training and inference.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coea_cli.errors import BadInput
from coea_cli.workspace.sids import cluster_token as cluster_to_text

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "prompts"
FIELDS = {
    "novelty": {"persona", "recent", "familiar"},
    "relevance": {"persona", "recent", "familiar", "candidate"},
}
ANSWER_PROBE = "Answer:"

Cluster = tuple[int, ...]
Describe = Mapping[Cluster, str] | Callable[[Cluster], str]


@dataclass(frozen=True)
class PromptLimits:
    """Truncation that keeps prompts short (the scratch model's context is small)."""

    max_recent: int = 5  # most recent clusters shown, with descriptions
    max_familiar: int = 16  # familiar clusters listed (tokens only)
    max_desc_chars: int = 60
    max_persona_chars: int = 200


def load_templates(override_dir=None) -> dict[str, str]:
    """``{"novelty": ..., "relevance": ...}`` from the package, overridden by ``override_dir``.

    Each template must use exactly its known placeholders; a bad one raises ``BadInput`` naming
    the file.
    """
    out = {}
    for name, fields in FIELDS.items():
        path = TEMPLATE_DIR / f"{name}.txt"
        if override_dir is not None and (Path(override_dir) / f"{name}.txt").is_file():
            path = Path(override_dir) / f"{name}.txt"
        text = path.read_text(encoding="utf-8").rstrip()
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as e:
            raise BadInput(f"{path}: bad template: {e}") from e
        if used != fields:
            raise BadInput(f"{path}: placeholders must be {sorted(fields)}, found {sorted(used)}")
        out[name] = text
    return out


def _describe(describe: Describe, cluster: Cluster) -> str:
    if callable(describe):
        return describe(cluster) or ""
    return describe.get(tuple(cluster), "")


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: max(n - 3, 0)].rstrip() + "..."


def _line(cluster: Cluster, describe: Describe, limits: PromptLimits) -> str:
    desc = _short(_describe(describe, cluster), limits.max_desc_chars)
    return f"{cluster_to_text(cluster)} {desc}".rstrip()


def _fields(persona, recent, familiar, describe, limits) -> dict[str, str]:
    recent = list(recent)[-limits.max_recent :] if limits.max_recent > 0 else []
    familiar = list(familiar)[-limits.max_familiar :] if limits.max_familiar > 0 else []
    return {
        "persona": _short(persona or "", limits.max_persona_chars) or "unknown",
        "recent": "\n".join(_line(c, describe, limits) for c in recent) or "none",
        "familiar": " ".join(cluster_to_text(c) for c in familiar) or "none",
    }


def novelty_prompt(
    persona: str,
    recent: Sequence[Cluster],
    familiar: Sequence[Cluster],
    describe: Describe,
    *,
    templates: Mapping[str, str] | None = None,
    limits: PromptLimits = PromptLimits(),
) -> str:
    """Prompt for the Novelty LLM: persona, recent clusters (most recent last, the last
    ``max_recent`` with descriptions) and familiar clusters to avoid; the answer is one cluster."""
    templates = templates or load_templates()
    return templates["novelty"].format(**_fields(persona, recent, familiar, describe, limits))


def relevance_prompt(
    persona: str,
    recent: Sequence[Cluster],
    familiar: Sequence[Cluster],
    candidate: Cluster,
    describe: Describe,
    *,
    templates: Mapping[str, str] | None = None,
    limits: PromptLimits = PromptLimits(),
) -> str:
    """Prompt for the Relevance LLM: the Novelty context plus one candidate cluster; it ends
    right before the Yes/No answer."""
    templates = templates or load_templates()
    fields = _fields(persona, recent, familiar, describe, limits)
    fields["candidate"] = _line(tuple(candidate), describe, limits)
    return templates["relevance"].format(**fields)


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of the first tokens of the answers " Yes" and " No" right after a prompt.

    Found by encoding ``"Answer: Yes"`` and ``"Answer: No"`` and taking the first token where they
    differ, which must come right after the tokens of ``"Answer:"``.
    """
    base = tokenizer.encode(ANSWER_PROBE, add_special_tokens=False)
    yes = tokenizer.encode(ANSWER_PROBE + " Yes", add_special_tokens=False)
    no = tokenizer.encode(ANSWER_PROBE + " No", add_special_tokens=False)
    k = 0
    while k < min(len(yes), len(no)) and yes[k] == no[k]:
        k += 1
    if k >= min(len(yes), len(no)) or yes[:k] != base:
        raise ValueError("the tokenizer does not give distinct first tokens for ' Yes' and ' No'")
    return yes[k], no[k]
