"""Group statistics and personas: rendered from a template, or written by a Profile LLM.

The Profile LLM gets each group's statistics in a chat prompt and must answer with one JSON
object {"persona": "...", "interests": [...]}. Answers are parsed (also inside code fences or
surrounded by prose) and validated; a group whose answer fails is asked again with a stricter
instruction (sampling instead of greedy decoding), up to `attempts` times, and then gets the
template persona, marked `fallback` in the `source` column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PERSONA_CHARS = (20, 800)  # accepted length of the persona text
MAX_INTERESTS = 10
INTEREST_CHARS = 80
SYSTEM_PROMPT = (
    "You write short audience personas for a recommender system. "
    "You answer with one JSON object and nothing else."
)
Messages = list[dict[str, str]]
Generate = Callable[[list[Messages], int], list[str]]


@dataclass
class GroupStats:
    """What is known about one group, for its persona."""

    group: int
    size: int
    attributes: str
    top_clusters: list[int]
    cluster_shares: list[float]
    cluster_labels: list[str]  # short text per top cluster (description or SID prefix)
    representative_items: list[str]
    cell: str = ""


@dataclass
class Persona:
    text: str
    interests: list[str] = field(default_factory=list)
    source: str = "template"  # template | llm | fallback
    attempts: int = 0
    error: str = ""


# ---------------------------------------------------------------- statistics


def attribute_summary(attrs: dict[str, np.ndarray], members: np.ndarray) -> str:
    """The most common value of each attribute in the group and its share."""
    if not attrs:
        return "no user attributes"
    parts = []
    for name, labels in attrs.items():
        values, counts = np.unique(labels[members].astype(str), return_counts=True)
        order = np.lexsort((values, -counts))
        top = order[0]
        parts.append(f"{name} {values[top]} ({counts[top] / len(members):.0%})")
    return ", ".join(parts)


def group_statistics(
    labels: np.ndarray,
    attrs: dict[str, np.ndarray],
    hist: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    titles: list[str],
    cluster_text: dict[int, str],
    cells: list[str] | None = None,
    top_clusters: int = 3,
    top_items: int = 5,
) -> list[GroupStats]:
    """Per-group size, attribute summary, top interest clusters and most popular titles.

    `hist` [U, C] holds each user's cluster counts; `user_ids`/`item_ids` the interactions
    used for the statistics (before the test period).
    """
    n_groups = int(labels.max()) + 1
    n_items = len(titles)
    group_hist = np.zeros((n_groups, hist.shape[1]))
    np.add.at(group_hist, labels, hist)
    item_counts = np.bincount(
        labels[user_ids].astype(np.int64) * n_items + item_ids, minlength=n_groups * n_items
    ).reshape(n_groups, n_items)
    out = []
    for g in range(n_groups):
        members = np.flatnonzero(labels == g)
        total = group_hist[g].sum()
        order = np.lexsort((np.arange(hist.shape[1]), -group_hist[g]))
        clusters = [int(c) for c in order[:top_clusters] if group_hist[g, c] > 0]
        shares = [float(group_hist[g, c] / total) for c in clusters]
        items_order = np.lexsort((np.arange(n_items), -item_counts[g]))
        items = [titles[i] for i in items_order[:top_items] if item_counts[g, i] > 0]
        out.append(
            GroupStats(
                group=g,
                size=len(members),
                attributes=attribute_summary(attrs, members),
                top_clusters=clusters,
                cluster_shares=shares,
                cluster_labels=[cluster_text.get(c, f"cluster {c}") for c in clusters],
                representative_items=items,
                cell=cells[g] if cells else "",
            )
        )
    return out


# ---------------------------------------------------------------- template


def template_persona(s: GroupStats) -> str:
    """A persona rendered from the group's statistics (no language model)."""
    who = f"A group of {s.size} users"
    if s.cell:
        who += f" ({s.cell})"
    if s.attributes != "no user attributes":
        who += f"; typical profile: {s.attributes}"
    parts = [who + "."]
    if s.top_clusters:
        likes = [
            f"{label} ({share:.0%} of their interactions)"
            for label, share in zip(s.cluster_labels, s.cluster_shares, strict=True)
        ]
        parts.append("Their main interests are " + _join(likes) + ".")
    else:
        parts.append("They have no recorded interactions yet.")
    if s.representative_items:
        titles = [f'"{t}"' for t in s.representative_items]
        parts.append("Titles popular with them: " + ", ".join(titles) + ".")
    return " ".join(parts)


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return "; ".join(words[:-1]) + "; and " + words[-1]


# ---------------------------------------------------------------- prompts and parsing


def persona_messages(s: GroupStats, error: str | None = None) -> Messages:
    """Chat messages asking for one group's persona; `error` makes the instruction stricter."""
    lines = [
        "Describe this group of users of a recommendation service as a persona.",
        f"Group size: {s.size} users.",
        f"Attributes: {s.attributes}.",
    ]
    if s.cell:
        lines.append(f"Demographic cell: {s.cell}.")
    if s.top_clusters:
        lines.append("Main interest clusters (share of their interactions):")
        lines += [
            f"- {label} ({share:.0%})"
            for label, share in zip(s.cluster_labels, s.cluster_shares, strict=True)
        ]
    if s.representative_items:
        lines.append("Popular titles: " + "; ".join(s.representative_items) + ".")
    lines.append(
        'Answer with JSON: {"persona": "<two or three sentences about who they are and what '
        'they enjoy>", "interests": ["<short phrase>", "..."]}'
    )
    if error:
        lines.append(
            f"Your previous answer could not be used ({error}). Reply with exactly one JSON "
            'object with the keys "persona" (a string of one to three sentences) and '
            '"interests" (a list of one to five short strings), and no other text.'
        )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> dict | None:
    """The first JSON object in `text`: inside a code fence if there is one, else anywhere."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        for start in (i for i, ch in enumerate(chunk) if ch == "{"):
            try:
                value, _ = decoder.raw_decode(chunk[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def parse_persona(text: str) -> tuple[dict | None, str]:
    """Parse and validate a Profile-LLM answer: ({"persona", "interests"}, "") or (None, why)."""
    data = extract_json(text or "")
    if data is None:
        return None, "no JSON object found"
    persona = data.get("persona")
    if not isinstance(persona, str) or not persona.strip():
        return None, 'missing or empty "persona" string'
    persona = " ".join(persona.split())
    lo, hi = PERSONA_CHARS
    if not lo <= len(persona) <= hi:
        return None, f'"persona" has {len(persona)} characters (allowed {lo}..{hi})'
    interests = data.get("interests", [])
    if not isinstance(interests, list) or not all(isinstance(x, str) for x in interests):
        return None, '"interests" must be a list of strings'
    interests = [" ".join(x.split()) for x in interests if x.strip()]
    if len(interests) > MAX_INTERESTS or any(len(x) > INTEREST_CHARS for x in interests):
        return None, f'"interests": at most {MAX_INTERESTS} strings of {INTEREST_CHARS} characters'
    return {"persona": persona, "interests": interests}, ""


def generate_personas(stats: list[GroupStats], generate: Generate, attempts: int) -> list[Persona]:
    """Ask `generate(messages_batch, attempt) -> answers` for every group, retrying the groups
    whose answer fails with a stricter instruction; the rest fall back to the template."""
    results: dict[int, Persona] = {}
    errors: dict[int, str] = {}
    pending = list(range(len(stats)))
    for attempt in range(attempts):
        if not pending:
            break
        answers = generate([persona_messages(stats[i], errors.get(i)) for i in pending], attempt)
        if len(answers) != len(pending):
            raise RuntimeError(f"generator returned {len(answers)} answers for {len(pending)}")
        still = []
        for i, answer in zip(pending, answers, strict=True):
            parsed, error = parse_persona(answer)
            if parsed is None:
                errors[i] = error
                still.append(i)
            else:
                results[i] = Persona(parsed["persona"], parsed["interests"], "llm", attempt + 1)
        pending = still
    for i in pending:
        results[i] = Persona(template_persona(stats[i]), [], "fallback", attempts, errors[i])
    return [results[i] for i in range(len(stats))]


def embedding_text(p: Persona) -> str:
    """The text that is embedded for a persona (its interests appended when there are any)."""
    if p.interests:
        return f"{p.text} Interests: {', '.join(p.interests)}."
    return p.text


# ---------------------------------------------------------------- Hugging Face generator


class ChatGenerator:
    """Batched chat generation with a local instruction-tuned causal LM.

    Loads through coea_cli.llm.backbone (4-bit NF4 with double quantization on CUDA, full
    precision on CPU; no remote code). The first attempt decodes greedily, retries sample
    (temperature 0.7, top-p 0.9) from a seed fixed per attempt.
    """

    def __init__(
        self,
        path: str,
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 256,
        seed: int = 0,
    ):
        from coea_cli.errors import BadInput
        from coea_cli.llm.backbone import load_backbone

        self.model, self.tokenizer = load_backbone(path, device=device)
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadInput(
                f"{path}: the tokenizer has no chat template; give an instruction-tuned model "
                "or --profile-model template"
            )
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def config(self, attempt: int):
        from transformers import GenerationConfig

        tok = self.tokenizer
        common = dict(
            max_new_tokens=self.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if attempt == 0:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, **common)

    def render(self, messages: Messages) -> str:
        """The prompt text from the chat template; templates without a system role get the
        system text at the start of the user turn."""
        apply = self.tokenizer.apply_chat_template
        try:
            return apply(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # e.g. jinja2 TemplateError: "System role not supported"
            merged = [
                {
                    "role": "user",
                    "content": messages[0]["content"] + "\n\n" + messages[1]["content"],
                }
            ]
            return apply(merged, tokenize=False, add_generation_prompt=True)

    def __call__(self, batch: list[Messages], attempt: int) -> list[str]:
        import torch

        from coea_cli import console

        torch.manual_seed(self.seed + attempt)
        prompts = [self.render(m) for m in batch]
        device = next(self.model.parameters()).device
        answers: list[str] = []
        n_batches = (len(prompts) + self.batch_size - 1) // self.batch_size
        with console.progress(f"personas (attempt {attempt + 1})", n_batches, "batches") as step:
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = self.tokenizer(
                    chunk, return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)
                with torch.no_grad():
                    out = self.model.generate(**enc, generation_config=self.config(attempt))
                new = out[:, enc["input_ids"].shape[1] :]
                answers += self.tokenizer.batch_decode(new, skip_special_tokens=True)
                step()
        return answers
