"""Constrained cluster decoding and exact scoring.

- ``ClusterTrie``: prefix tree over the token ids of the valid clusters.
- ``ClusterConstraint``: a transformers ``LogitsProcessor`` that lets each row emit only trie
  continuations of what it generated so far (EOS only after a complete cluster).
- ``sample_clusters``: n constrained samples per prompt, familiar clusters banned per prompt.
- ``cluster_logprobs``: exact log-probability of every candidate cluster given each prompt.
- ``relevance_scores``: P(Yes) of the Relevance LLM.

Batches are left padded; position ids follow the attention mask, so a padded row scores exactly
as it would alone. Under an initialised torch.distributed process group (`pco-round` under
torchrun) the batches of the length order are dealt out (rank r takes batches r, r + world,
...) and the results gathered, so every rank returns the whole result, identical to one
process's: every rank must make the same calls. Importing this module loads torch and
transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from coea_cli import dist
from coea_cli.llm.vocab import cluster_token_ids

Cluster = tuple[int, ...]


class ClusterTrie:
    """Prefix tree over the token-id sequences of valid clusters (all of one length)."""

    def __init__(self, clusters: dict[Cluster, Sequence[int]]):
        """``clusters`` maps each cluster to its token ids, in the order clusters are listed."""
        if not clusters:
            raise ValueError("a cluster trie needs at least one cluster")
        self.ids = {tuple(c): tuple(int(i) for i in s) for c, s in clusters.items()}
        lengths = {len(s) for s in self.ids.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError("all clusters must have the same, non-zero number of levels")
        self.length = lengths.pop()
        self.by_ids: dict[tuple[int, ...], Cluster] = {}
        self.children: dict[tuple[int, ...], list[int]] = {}
        for c, s in self.ids.items():
            if s in self.by_ids:
                raise ValueError(f"clusters {self.by_ids[s]} and {c} share token ids")
            self.by_ids[s] = c
            for t in range(self.length):
                kids = self.children.setdefault(s[:t], [])
                if s[t] not in kids:
                    kids.append(s[t])

    @classmethod
    def from_clusters(cls, tokenizer, clusters: Iterable[Sequence[int]]) -> ClusterTrie:
        """Trie of ``clusters`` (tuples of codes) using the tokenizer's SID token ids."""
        table: dict[Cluster, list[int]] = {}
        for c in clusters:
            c = tuple(int(x) for x in c)
            if c in table:
                raise ValueError(f"cluster {c} listed twice")
            table[c] = cluster_token_ids(tokenizer, c)
        return cls(table)

    @property
    def clusters(self) -> list[Cluster]:
        return list(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Token ids that may follow ``prefix`` (empty if it is complete or not in the trie)."""
        return self.children.get(tuple(prefix), [])

    def cluster(self, ids: Sequence[int]) -> Cluster | None:
        """The cluster whose token ids are exactly ``ids``, else None."""
        return self.by_ids.get(tuple(ids))

    def without(self, banned: Iterable[Sequence[int]]) -> ClusterTrie | None:
        """The trie minus the ``banned`` clusters (tuples of codes); None if nothing is left."""
        banned = {tuple(b) for b in banned}
        kept = {c: s for c, s in self.ids.items() if c not in banned}
        if len(kept) == len(self.ids):
            return self
        return ClusterTrie(kept) if kept else None


class ClusterConstraint(LogitsProcessor):
    """Logits processor: row ``b`` may only continue along ``row_tries[b]``.

    ``prompt_len`` is the (padded) prompt width, so ``input_ids[b, prompt_len:]`` is what row
    ``b`` generated. Once a cluster is complete, or the row left the trie, only EOS is allowed.
    """

    def __init__(self, row_tries: Sequence[ClusterTrie], prompt_len: int, eos_token_id: int):
        self.row_tries = list(row_tries)
        self.prompt_len = prompt_len
        self.eos = int(eos_token_id)

    def __call__(self, input_ids, scores):
        rows, cols = [], []
        for b, prefix in enumerate(input_ids[:, self.prompt_len :].tolist()):
            allowed = self.row_tries[b].allowed(prefix) or [self.eos]
            rows.extend([b] * len(allowed))
            cols.extend(allowed)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.tensor(rows, device=keep.device), torch.tensor(cols, device=keep.device)] = True
        return scores.masked_fill(~keep, float("-inf"))


class Samples(NamedTuple):
    """Decoded clusters per prompt (n each, fewer if everything is banned) and the count of
    generated sequences that were not a valid, allowed cluster."""

    clusters: list[list[Cluster]]
    invalid: int


def model_device(model):
    """Device of the model's input embedding."""
    return model.get_input_embeddings().weight.device


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device):
    """Left-padded ``input_ids``, ``attention_mask`` and mask-following ``position_ids``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def length_batches(seqs: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Indices of ``seqs`` in batches of ``size``, longest first, so each batch pads little."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    return [order[s : s + size] for s in range(0, len(order), size)]


def score_batches(out: torch.Tensor, batches: list[list[int]], score, label: str | None = None):
    """``out[batch] = score(batch)`` for each batch of indices; returns ``out``.

    Under a torch.distributed process group each rank scores batches rank, rank + world, ...
    and the rows are gathered, so every rank ends with all of ``out``, each row computed in
    the same batch as one process would. ``label``: show progress (this rank's share) under it.
    """
    rank, world = dist.current()
    mine = batches[rank::world]
    done = []
    with _progress(label, sum(len(b) for b in mine), world) as advance:
        for batch in mine:
            out[batch] = score(batch)
            if world > 1:
                done.append((batch, out[batch]))
            advance(len(batch))
    for part in dist.gather(done, world) if world > 1 else ():
        for batch, rows in part:
            out[batch] = rows
    return out


def forward_tail(model, seqs: Sequence[Sequence[int]], keep: int, pad_id: int):
    """Logits at the last ``keep`` positions of each sequence: float32 ``[B, keep, V]``."""
    ids, mask, pos = left_pad(seqs, pad_id, model_device(model))
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False
    )
    return out.logits[:, -keep:].float()


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (with the tokenizer's own special tokens, e.g. a BOS)."""
    if not prompts:
        return []
    return [list(x) for x in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


class _EvalMode:
    """Eval mode and no grad inside, the previous training flag restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def generation_config(tokenizer, *, n: int, temperature: float, top_k, max_new_tokens: int):
    """Explicit sampling settings; every field that could change the distribution is neutral."""
    return GenerationConfig(
        do_sample=True,
        temperature=float(temperature),
        top_k=int(top_k) if top_k else 0,
        top_p=1.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        num_return_sequences=n,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        pad_token_id=_pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


def sample_clusters(
    model,
    tokenizer,
    prompts: Sequence[str],
    trie: ClusterTrie,
    banned_per_prompt: Sequence[Iterable[Cluster]] | None = None,
    n: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    max_batch: int = 64,
    seed: int | None = None,
    label: str | None = None,
) -> Samples:
    """Sample ``n`` clusters per prompt under the trie constraint.

    ``banned_per_prompt[i]`` are clusters prompt ``i`` may not produce (its familiar ones); a
    prompt with every cluster banned gets an empty list. At most ``max_batch`` sequences are
    generated per call to ``generate``. The model's own generation config is never used.
    ``label``: show progress under it.

    ``seed``: batch b of the length order draws from torch's global generator seeded with
    ``seed + b * 1_000_003`` (batch 0 with ``seed``), so a batch draws the same whichever
    process samples it; the generator is left as the last batch left it, on every rank.
    Without a seed the draws continue the global generator (one process only).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    rank, world = dist.current()
    if world > 1 and seed is None:
        raise ValueError("sampling shared among processes needs a seed")
    if seed is not None:
        torch.manual_seed(seed)
    banned_per_prompt = banned_per_prompt or [()] * len(prompts)
    if len(banned_per_prompt) != len(prompts):
        raise ValueError("banned_per_prompt needs one entry per prompt")
    cache: dict[frozenset, ClusterTrie | None] = {}
    tries = []
    for banned in banned_per_prompt:
        key = frozenset(tuple(b) for b in banned)
        if key not in cache:
            cache[key] = trie.without(key)
        tries.append(cache[key])

    ids = encode_prompts(tokenizer, prompts)
    todo = [i for i, t in enumerate(tries) if t is not None]
    out: list[list[Cluster]] = [[] for _ in prompts]
    invalid = 0
    eos, pad = tokenizer.eos_token_id, _pad_id(tokenizer)
    gc = generation_config(
        tokenizer, n=n, temperature=temperature, top_k=top_k, max_new_tokens=trie.length
    )
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = hf.generation_config
    hf.generation_config = GenerationConfig()
    per_call = max(1, max_batch // n)
    batches = length_batches([ids[i] for i in todo], per_call)
    mine = list(range(len(batches)))[rank::world]
    done = []  # (chunk, its prompts' clusters, invalid) of this rank's batches
    try:
        share = sum(len(batches[b]) for b in mine)
        with _EvalMode(model), _progress(label, share, world) as advance:
            for b in mine:
                chunk = [todo[i] for i in batches[b]]
                advance(len(chunk))
                if seed is not None:
                    torch.manual_seed(seed + b * 1_000_003)
                before = invalid
                input_ids, mask, _ = left_pad([ids[i] for i in chunk], pad, model_device(model))
                rows = [tries[i] for i in chunk for _ in range(n)]
                proc = ClusterConstraint(rows, input_ids.shape[1], eos)
                gen = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=gc,
                    logits_processor=LogitsProcessorList([proc]),
                )
                new = gen[:, input_ids.shape[1] :].tolist()
                for r, seq in enumerate(new):
                    seq = seq[: trie.length]
                    c = rows[r].cluster(seq)
                    if c is None:
                        invalid += 1
                    else:
                        out[chunk[r // n]].append(c)
                if world > 1:
                    done.append((chunk, [out[i] for i in chunk], invalid - before))
    finally:
        hf.generation_config = saved
    if world > 1:
        invalid = 0
        for part in dist.gather(done, world):
            for chunk, clusters, bad in part:
                for i, c in zip(chunk, clusters, strict=True):
                    out[i] = c
                invalid += bad
        if batches:
            dist.share_rng((len(batches) - 1) % world, world)
    return Samples(out, invalid)


class ClusterTable:
    """Index tensors for scoring every cluster of a trie.

    Clusters sharing all but their last token form a group; one sequence (prompt + group
    prefix) per group gives, at its last ``length`` positions, every token distribution the
    group's clusters need. ``vocab`` lists the token ids used by any cluster.
    """

    def __init__(self, trie: ClusterTrie):
        self.trie = trie
        self.length = trie.length
        seqs = [trie.ids[c] for c in trie.clusters]
        self.prefixes = list(dict.fromkeys(s[:-1] for s in seqs))
        group_of = {p: g for g, p in enumerate(self.prefixes)}
        self.vocab = sorted({t for s in seqs for t in s})
        col = {t: u for u, t in enumerate(self.vocab)}
        self.group = torch.tensor([group_of[s[:-1]] for s in seqs], dtype=torch.long)
        self.cols = torch.tensor([[col[t] for t in s] for s in seqs], dtype=torch.long)
        mask = torch.zeros(len(self.prefixes), self.length, len(self.vocab), dtype=torch.bool)
        for g, p in enumerate(self.prefixes):
            for t in range(self.length):
                mask[g, t, [col[x] for x in trie.allowed(p[:t])]] = True
        self.mask = mask

    def sequences(self, prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Prompt-major list of prompt + group prefix."""
        return [list(p) + list(g) for p in prompt_ids for g in self.prefixes]

    def score(self, logits, constrained: bool = True):
        """``logits`` ``[P * G, length, V]`` from ``sequences`` -> log-probs ``[P, C]``.

        Constrained: each step is normalised over the trie's allowed tokens, so the C values
        are a distribution over clusters. Otherwise: over the whole vocabulary.
        """
        dev = logits.device
        g = len(self.prefixes)
        logits = logits.view(-1, g, self.length, logits.shape[-1])
        sub = logits[..., torch.tensor(self.vocab, device=dev)]
        if constrained:
            sub = sub.masked_fill(~self.mask.to(dev), float("-inf"))
            logz = torch.logsumexp(sub, -1, keepdim=True)
        else:
            logz = torch.logsumexp(logits, -1, keepdim=True)
        lp = sub - logz  # [P, G, L, U]
        steps = torch.arange(self.length, device=dev)
        picked = lp[:, self.group.to(dev)[:, None], steps[None, :], self.cols.to(dev)]
        return picked.sum(-1)


def table_logprobs(model, prompt_ids, table: ClusterTable, pad_id: int, constrained: bool = True):
    """Differentiable ``[P, C]`` cluster log-probs for already-encoded prompts."""
    logits = forward_tail(model, table.sequences(prompt_ids), table.length, pad_id)
    return table.score(logits, constrained)


def cluster_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    clusters: Sequence[Cluster] | ClusterTrie,
    *,
    constrained: bool = True,
    batch_size: int = 32,
    label: str | None = None,
):
    """Exact log P(cluster | prompt) for every prompt and candidate: float32 ``[P, C]`` on CPU.

    Teacher-forced and batched. With ``constrained`` (default) each step is normalised over the
    tokens the trie of ``clusters`` allows, which is the distribution ``sample_clusters`` draws
    from, so each row sums to 1 in probability space. Otherwise the raw model probability.
    Columns follow the order of ``clusters``.
    """
    trie = (
        clusters
        if isinstance(clusters, ClusterTrie)
        else ClusterTrie.from_clusters(tokenizer, clusters)
    )
    table = ClusterTable(trie)
    ids = encode_prompts(tokenizer, prompts)
    per_call = max(1, batch_size // len(table.prefixes))
    pad = _pad_id(tokenizer)

    def score(batch):
        return table_logprobs(model, [ids[i] for i in batch], table, pad, constrained).float().cpu()

    with _EvalMode(model):
        return score_batches(
            torch.zeros(len(ids), len(trie)), length_batches(ids, per_call), score, label
        )


def relevance_logits(model, prompt_ids, yes_no: tuple[int, int], pad_id: int):
    """Differentiable ``[P, 2]`` logits of the (Yes, No) answer tokens after each prompt."""
    logits = forward_tail(model, prompt_ids, 1, pad_id)[:, 0]
    return logits[:, list(yes_no)]


def relevance_scores(
    model, tokenizer, prompts: Sequence[str], *, batch_size: int = 32, label: str | None = None
):
    """P(Yes) per prompt, float32 ``[P]`` on CPU (``label``: show progress under it).

    Normalised over the two answer tokens only: softmax([logit(Yes), logit(No)])[0], so the
    score is a probability even when the model puts mass on other tokens. Prompts that share
    their context are scored on one cached prefix (`coea_cli.llm.prefix`).
    """
    from coea_cli.llm.prefix import chunk_logits, prefix_chunks, supports_prefix
    from coea_cli.llm.prompts import answer_token_ids

    yes_no = answer_token_ids(tokenizer)
    ids = encode_prompts(tokenizer, prompts)
    pad = _pad_id(tokenizer)
    if supports_prefix(model) and all(len(x) > 1 for x in ids):  # shared contexts once
        chunks = {c[0][1][0]: c for c in prefix_chunks(ids, 2 * batch_size)}

        def score(batch):
            pair = chunk_logits(model, ids, chunks[batch[0]], pad, yes_no)
            return torch.softmax(pair, -1)[:, 0]

        batches = [[i for _, m in c for i in m] for c in chunks.values()]
    else:

        def score(batch):
            pair = relevance_logits(model, [ids[i] for i in batch], yes_no, pad)
            return torch.softmax(pair, -1)[:, 0].float().cpu()

        batches = length_batches(ids, batch_size)
    with _EvalMode(model):
        return score_batches(torch.zeros(len(ids)), batches, score, label)


def _progress(label: str | None, total: int, world: int = 1):
    """A progress bar over `total` prompts under `label` (this process's share of `world`);
    a no-op without a label."""
    from contextlib import nullcontext

    from coea_cli import console

    if label is None or total == 0:
        return nullcontext(lambda n=1, **fields: None)
    if world > 1:
        label = f"{label} (this process's share, of {world})"
    return console.progress(label, total, "prompts")
