"""Scoring prompts that share a prefix once per prefix.

The Relevance LLM judges several clusters for one user's context: the prompts differ only in
their last lines. Prompts are grouped by their shared leading tokens; each group's prefix runs
once with a key/value cache, the cache is copied to the group's members, and each member's
own tokens run on it. The logits equal those of the prompts run whole, to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MIN_SHARED = 8  # shorter shared prefixes are not worth a group
CACHED_ATTENTION = ("sdpa", "eager")  # attention implementations known to take a cache


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(seqs: Sequence[Sequence[int]], min_shared: int = MIN_SHARED) -> list:
    """[(shared length, member indices)]: prompts in token order; a prompt joins the group
    before it when it shares at least half its tokens (and `min_shared`) with every member,
    so a group is one context, not one persona; the shared part leaves every member at least
    one token of its own. Every index appears once."""
    groups: list[tuple[int, list[int]]] = []
    longest = 0  # of the last group's members
    for i in sorted(range(len(seqs)), key=lambda j: list(seqs[j])):
        s = seqs[i]
        if groups:
            n, members = groups[-1]
            shared = min(n, _common(seqs[members[0]], s), len(s) - 1)
            if shared >= max(min_shared, max(longest, len(s)) / 2):
                groups[-1] = (shared, [*members, i])
                longest = max(longest, len(s))
                continue
        groups.append((max(len(s) - 1, 0), [i]))
        longest = len(s)
    return groups


def supports_prefix(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in CACHED_ATTENTION


def prefix_chunks(seqs: Sequence[Sequence[int]], size: int) -> list[list]:
    """The groups of `prefix_groups`, longest prefix first, in chunks of at most `size`
    prompts (a larger group split, its prefix run once per piece, so that the cache copied
    to the members stays bounded): the batches of `chunk_logits`."""
    whole = sorted(prefix_groups(seqs), key=lambda g: -g[0])
    groups = [(n, m[i : i + size]) for n, m in whole for i in range(0, len(m), size)]
    chunks: list[list] = []
    members = 0
    for g in groups:
        if not chunks or members + len(g[1]) > size:
            chunks.append([])
            members = 0
        chunks[-1].append(g)
        members += len(g[1])
    return chunks


def chunk_logits(
    model, seqs: Sequence[Sequence[int]], chunk: list, pad_id: int, columns: Sequence[int]
) -> torch.Tensor:
    """float32 ``[M, len(columns)]`` on CPU: the logits of `columns` after the last token of
    each member of the chunk's groups, in member order: each group's prefix once, with its
    key/value cache copied to the members, then each member's own tokens on it."""
    from coea_cli.llm.decoding import left_pad, model_device

    device = model_device(model)
    ids, mask, pos = left_pad([seqs[m[0]][:n] for n, m in chunk], pad_id, device)
    first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                  logits_to_keep=1)  # fmt: skip
    cache = first.get("cache", first.get("past_key_values"))
    rows = torch.as_tensor([g for g, (_, m) in enumerate(chunk) for _ in m], device=device)
    cache.batch_select_indices(rows)
    rest = [seqs[i][n:] for n, m in chunk for i in m]
    sids, smask, _ = left_pad(rest, pad_id, device)
    start = mask.sum(-1)[rows].unsqueeze(-1)
    spos = (start + smask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=sids, attention_mask=torch.cat([mask[rows], smask], -1), position_ids=spos,
        use_cache=False, logits_to_keep=1, **{_cache_name(model): cache},
    ).logits[:, -1]  # fmt: skip
    return logits[:, list(columns)].float().cpu()


def _cache_name(model) -> str:
    """The forward argument that takes a cache: `cache` (newer transformers) or
    `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
