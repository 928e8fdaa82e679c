"""Semantic-ID tokens in a model: their ids, adding them and growing the embeddings.

The token format (``<a_12><b_7>``) is defined once, in `coea_cli.workspace.sids`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coea_cli.workspace.sids import token

EMBED_MULTIPLE = 64


def cluster_token_ids(tokenizer, cluster: Sequence[int]) -> list[int]:
    """Token ids of a cluster's SID tokens (one id per level)."""
    toks = [token(lvl, c) for lvl, c in enumerate(cluster)]
    ids = tokenizer.convert_tokens_to_ids(toks)
    unk = getattr(tokenizer, "unk_token_id", None)
    for t, i in zip(toks, ids, strict=True):
        if i is None or (unk is not None and i == unk):
            raise KeyError(f"token {t} is not in the tokenizer vocabulary")
    return list(ids)


def add_sid_tokens(model, tokenizer, tokens: Iterable[str], *, seed: int = 0) -> list[int]:
    """Add SID tokens to ``tokenizer`` and grow ``model``'s embeddings to match.

    Tokens already present are kept. Embeddings are resized to a multiple of 64 rows; every new row
    (input and, when untied, output) is the mean of the existing rows plus small seeded noise, so
    the same base, tokens and seed always give the same matrix. A new token that lands on a spare
    row the matrix already had (Qwen2.5 has 151,936 rows for 151,665 tokens) gets the same
    initialisation from the rows of the real vocabulary. Returns the ids of ``tokens``.
    """
    from tokenizers import AddedToken

    tokens = list(tokens)
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    n_vocab = len(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if missing:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
    resize_embeddings(model, len(tokenizer), seed=seed)
    spare = [i for i in tokenizer.convert_tokens_to_ids(missing) if i < rows]
    if spare:
        _init_rows(model, spare, n_vocab, seed)
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _init_rows(model, ids: list[int], n_vocab: int, seed: int) -> None:
    """Rows `ids` (input and untied output) = mean + N(0, (0.1 std)^2) of rows [0, n_vocab)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    targets = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not targets[0]:
        targets.append(out.weight)
    index = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        for w in targets:
            base = w[:n_vocab].float()
            noise = torch.randn(len(ids), w.shape[1], generator=gen).to(w.device)
            w[index.to(w.device)] = (base.mean(0) + noise * 0.1 * base.std(0)).to(w.dtype)


def resize_embeddings(model, n_tokens: int, *, seed: int = 0) -> int:
    """Resize to at least ``n_tokens`` rows, padded to a multiple of 64; returns the new row count.

    Rows past the old size are set to mean(old rows) + N(0, (0.1 * std(old rows))^2), drawn from a
    generator seeded with ``seed``.
    """
    import torch

    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    new = -(-max(n_tokens, old) // EMBED_MULTIPLE) * EMBED_MULTIPLE
    model.coea_resize_seed = seed
    if new == old:
        return old
    model.resize_token_embeddings(new, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    targets = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not targets[0]:
        targets.append(out.weight)
    with torch.no_grad():
        for w in targets:
            base = w[:old].float()
            noise = torch.randn(new - old, w.shape[1], generator=gen).to(w.device)
            w[old:] = (base.mean(0) + noise * 0.1 * base.std(0)).to(w.dtype)
    return new
