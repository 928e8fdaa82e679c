"""Fine-tuning loops of the Novelty and Relevance LLMs (LoRA, optionally on a 4-bit base).

Data in, metrics out: examples are already-rendered prompts (see ``prompts.py``) with their
target cluster, preference pair or 0/1 label. AdamW on the trainable parameters only, gradient
clipping, works on CPU and CUDA.

Under an initialised torch.distributed process group (`pco-round` under torchrun) every rank
draws the same batches and computes the loss of every world-th example of each, weighted by
its share of the batch; the gradients are summed over the ranks before clipping, so each
update is the one-process update (up to the order of float sums). Every loss here is a mean
over the batch's examples (the SFT loss is a mean over target tokens, and every target has
the same number), which is what makes the shares add up. LoRA dropout must stay 0 (the
default) for the ranks to match one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from coea_cli import dist
from coea_cli.llm.backbone import disable_cpu_bf16_repack
from coea_cli.llm.decoding import (
    ClusterTable,
    ClusterTrie,
    _EvalMode,
    _pad_id,
    encode_prompts,
    forward_tail,
    length_batches,
    relevance_logits,
    score_batches,
    table_logprobs,
)
from coea_cli.llm.losses import IGNORE, dpo_loss, kl_to_previous, relevance_loss, sft_loss
from coea_cli.llm.prompts import answer_token_ids
from coea_cli.llm.vocab import cluster_token_ids

Cluster = tuple[int, ...]
Progress = Callable[[int, int, float], None]
OBJECTIVES = ("sft", "sft_kl", "dpo")


def _optimizer(model, lr: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (wrap it with add_lora first)")
    return params, torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _batches(lengths: Sequence[int], batch_size: int, gen, pool: int = 32) -> list[list[int]]:
    """Shuffled batches of similar length: a random order is cut into pools of ``pool``
    batches, each pool sorted by length and cut into batches, and the batches shuffled (as
    transformers' group_by_length), so a batch pads little and the order stays random."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    size = batch_size * pool
    batches = []
    for s in range(0, len(order), size):
        chunk = sorted(order[s : s + size], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _loop(model, lengths, *, epochs, lr, batch_size, max_grad_norm, seed, progress, step_fn):
    """Shared loop over examples of token ``lengths``: ``step_fn(indices) -> (loss, stats)``,
    the loss a mean over the examples of ``indices`` and ``stats`` name -> (value, the number
    of examples it is a mean over); returns per-epoch means. Under a process group each rank
    steps on its share of every batch (``_shared_step``)."""
    rank, world = dist.current()
    n = len(lengths)
    if n == 0:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params, opt = _optimizer(model, lr)
    total = epochs * math.ceil(n / batch_size)
    was_training = model.training
    model.train()
    step, history, first = 0, [], None
    try:
        for _ in range(epochs):
            sums: dict[str, float] = {}
            count = 0
            for idx in _batches(lengths, batch_size, gen):
                if world == 1:
                    loss, stats = step_fn(idx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    value, stats = float(loss.detach()), {k: v for k, (v, _) in stats.items()}
                else:
                    opt.zero_grad(set_to_none=True)
                    value, stats = _shared_step(step_fn, idx, params, rank, world)
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
                step += 1
                first = value if first is None else first
                for k, v in {"loss": value, **stats}.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                count += len(idx)
                if progress is not None:
                    progress(step, total, value)
            history.append({k: v / count for k, v in sums.items()})
    finally:
        model.train(was_training)
    return step, first, history


def _shared_step(step_fn, idx, params, rank: int, world: int) -> tuple[float, dict]:
    """Gradients and statistics of batch ``idx`` from this rank's share, every world-th
    example: its mean loss times its share of the batch, the gradients summed over the ranks
    (the gradient of the batch mean), and each statistic the mean over the ranks weighted by
    the examples behind it. Returns (batch loss, statistics)."""
    mine = idx[rank::world]
    local = {}
    if mine:
        loss, stats = step_fn(mine)
        (loss * (len(mine) / len(idx))).backward()
        local = {"loss": (float(loss.detach()), len(mine)), **stats}
    _sum_grads(params, world)
    total: dict[str, tuple[float, int]] = {}
    for part in dist.gather(local, world):
        for k, (v, w) in part.items():
            if w:
                s, c = total.get(k, (0.0, 0))
                total[k] = (s + v * w, c + w)
    merged = {k: s / c for k, (s, c) in total.items()}
    return merged.pop("loss"), merged


def _sum_grads(params, world: int) -> None:
    """Sum the parameters' gradients over the ranks, one all-reduce per dtype. A gradient
    missing on this rank (an empty share) counts as zeros; one missing on every rank stays
    None, as in one process."""
    dev = params[0].device
    seen = torch.tensor([float(p.grad is not None) for p in params], device=dev)
    dist.all_sum(seen, world)
    groups: dict = {}
    for p, s in zip(params, seen.tolist(), strict=True):
        if s > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault(p.grad.dtype, []).append(p)
    for group in groups.values():
        flat = dist.all_sum(torch.cat([p.grad.reshape(-1) for p in group]), world)
        at = 0
        for p in group:
            p.grad.copy_(flat[at : at + p.grad.numel()].view_as(p.grad))
            at += p.grad.numel()


def _summary(kind, n, steps, first, history, t0) -> dict:
    out = {
        "objective": kind,
        "examples": n,
        "epochs": len(history),
        "steps": steps,
        "loss_first_step": first,
        "epoch_loss": [h["loss"] for h in history],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.update({k: v for k, v in history[-1].items() if k != "loss"})
    out["loss_last_epoch"] = history[-1]["loss"]
    return out


def _previous(ref_model, model, prompts, prompt_ids, table, pad):
    """``[N, C]`` previous-round cluster log-probs: given, from a callable, or from ``model``
    as it is now (the previous round's model when a round starts from it)."""
    if isinstance(ref_model, torch.Tensor):
        prev = ref_model
    elif callable(ref_model):
        prev = ref_model(list(prompts))
    else:

        def score(batch):
            return table_logprobs(model, [prompt_ids[i] for i in batch], table, pad).float().cpu()

        prev = torch.zeros(len(prompt_ids), len(table.trie))
        with _EvalMode(model):
            score_batches(prev, length_batches(prompt_ids, 16), score)
    prev = torch.as_tensor(prev, dtype=torch.float32).cpu()
    if prev.shape != (len(prompts), len(table.trie)):
        raise ValueError(
            f"previous log-probs have shape {tuple(prev.shape)}, "
            f"expected ({len(prompts)}, {len(table.trie)})"
        )
    return prev


def train_novelty(
    model,
    tokenizer,
    examples: Sequence[tuple[str, Cluster]],
    *,
    epochs: int = 1,
    lr: float = 2e-4,
    batch_size: int = 8,
    objective: str = "sft",
    kl_weight: float = 0.1,
    ref_model=None,
    valid_clusters: Sequence[Cluster] | None = None,
    dpo_pairs: Sequence[tuple[str, Cluster, Cluster]] | None = None,
    beta: float = 0.1,
    negatives: Sequence[tuple[str, Cluster]] = (),
    neg_weight: float = 0.0,
    max_grad_norm: float = 1.0,
    progress: Progress | None = None,
    seed: int = 0,
) -> dict:
    """Fine-tune the Novelty LLM; returns metrics. (One loop for the three objectives, a little
    over 80 lines: they share batching, clipping and logging and differ only in the loss.)

    - ``sft``: cross-entropy on the target cluster tokens of ``(prompt, target)`` examples,
      plus ``neg_weight`` times the unlikelihood ``-log(1 - p(c | prompt))`` of each
      ``(prompt, cluster)`` in ``negatives`` (p: the constrained distribution of
      ``valid_clusters``): proposals to push down.
    - ``sft_kl``: plus ``kl_weight * KL(new || previous)`` over the constrained distribution of
      ``valid_clusters`` given each prompt. ``ref_model`` supplies the previous distribution: a
      ``[N, C]`` tensor aligned with ``examples``, a callable ``prompts -> [N, C]``, or None to
      take it from ``model`` before the first update (exact when the round starts from the
      previous round's adapter).
    - ``dpo``: DPO on ``dpo_pairs`` ``(prompt, chosen, rejected)`` with the constrained cluster
      log-probs of ``valid_clusters``; the reference is ``ref_model`` as above (aligned with
      ``dpo_pairs``) or the model before the first update. ``examples`` is not used.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    t0 = time.perf_counter()
    disable_cpu_bf16_repack(model)
    pad = _pad_id(tokenizer)
    table = None
    negatives = list(negatives) if neg_weight > 0 else []
    if objective in ("sft_kl", "dpo") or negatives:
        if not valid_clusters:
            raise ValueError(f"objective {objective} with negatives needs valid_clusters")
        table = ClusterTable(ClusterTrie.from_clusters(tokenizer, valid_clusters))

    loop = dict(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_grad_norm=max_grad_norm,
        seed=seed,
        progress=progress,
    )
    if objective == "dpo":
        return _train_dpo(model, tokenizer, dpo_pairs, table, ref_model, beta, t0, loop)

    n_pos = len(examples)
    prompts = [p for p, _ in examples] + [p for p, _ in negatives]
    prompt_ids = encode_prompts(tokenizer, prompts)
    targets = [cluster_token_ids(tokenizer, c) for _, c in examples]
    if len({len(t) for t in targets}) > 1:
        raise ValueError("all target clusters must have the same number of levels")
    neg_col = _columns(table, [c for _, c in negatives]) if negatives else None
    prev = None
    if objective == "sft_kl":
        prev = _previous(ref_model, model, prompts, prompt_ids, table, pad)

    def step(idx):
        pos, neg = [i for i in idx if i < n_pos], [i for i in idx if i >= n_pos]
        loss, stats, new = 0.0, {}, []
        if pos:
            seqs = [prompt_ids[i] + targets[i] for i in pos]
            logits = forward_tail(model, seqs, len(targets[pos[0]]) + 1, pad)
            labels = torch.tensor([[IGNORE] + targets[i] for i in pos], device=logits.device)
            sft = sft_loss(logits, labels)
            loss, stats["sft"] = sft * len(pos) / len(idx), (float(sft.detach()), len(pos))
            if prev is not None:
                new.append(
                    _cluster_logprobs(model, logits, [prompt_ids[i] for i in pos], table, pad)
                )
        if neg:
            lp = table_logprobs(model, [prompt_ids[i] for i in neg], table, pad)
            cols = neg_col[torch.tensor(neg) - n_pos].to(lp.device)
            p = torch.log_softmax(lp.float(), -1).gather(1, cols[:, None])[:, 0].exp()
            ul = -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()
            loss = loss + neg_weight * ul * len(neg) / len(idx)
            stats["unlikelihood"] = (float(ul.detach()), len(neg))
            if prev is not None:
                new.append(lp)
        if prev is not None:
            kl = kl_to_previous(torch.cat(new), prev[pos + neg].to(new[0].device))
            loss, stats["kl"] = loss + kl_weight * kl, (float(kl.detach()), len(idx))
        return loss, stats

    steps, first, history = _loop(model, [len(p) for p in prompt_ids], step_fn=step, **loop)
    out = _summary(objective, n_pos, steps, first, history, t0)
    out["negatives"] = len(negatives)
    if objective == "sft_kl":
        out["kl_weight"] = kl_weight
    if negatives:
        out["neg_weight"] = neg_weight
    return out


def _cluster_logprobs(model, logits, prompt_ids, table, pad):
    """Cluster log-probs of a batch whose forward pass ended at the prompt (one-level
    clusters: read off the last prompt position), else a pass over the table."""
    if table.length == 1:
        return table.score(logits[:, :1])
    return table_logprobs(model, prompt_ids, table, pad)


def _columns(table: ClusterTable, clusters) -> torch.Tensor:
    col = {c: j for j, c in enumerate(table.trie.clusters)}
    try:
        return torch.tensor([col[tuple(c)] for c in clusters], dtype=torch.long)
    except KeyError as e:
        raise ValueError(f"negative cluster {e.args[0]} is not among valid_clusters") from e


def _train_dpo(model, tokenizer, pairs, table, ref_model, beta, t0, loop) -> dict:
    if not pairs:
        raise ValueError("objective dpo needs dpo_pairs")
    pad = _pad_id(tokenizer)
    prompts = [p for p, _, _ in pairs]
    prompt_ids = encode_prompts(tokenizer, prompts)
    col = {c: j for j, c in enumerate(table.trie.clusters)}
    try:
        chosen = torch.tensor([col[tuple(c)] for _, c, _ in pairs])
        rejected = torch.tensor([col[tuple(r)] for _, _, r in pairs])
    except KeyError as e:
        raise ValueError(f"preference cluster {e.args[0]} is not among valid_clusters") from e
    ref = _previous(ref_model, model, prompts, prompt_ids, table, pad)
    ref_c, ref_r = ref.gather(1, chosen[:, None])[:, 0], ref.gather(1, rejected[:, None])[:, 0]

    def step(idx):
        lp = table_logprobs(model, [prompt_ids[i] for i in idx], table, pad)
        rows = torch.arange(len(idx), device=lp.device)
        pc, pr = lp[rows, chosen[idx].to(lp.device)], lp[rows, rejected[idx].to(lp.device)]
        rc, rr = ref_c[idx].to(lp.device), ref_r[idx].to(lp.device)
        loss = dpo_loss(pc, pr, rc, rr, beta)
        acc = ((pc - rc) > (pr - rr)).float().mean()
        return loss, {"dpo_accuracy": (float(acc), len(idx))}

    steps, first, history = _loop(model, [len(p) for p in prompt_ids], step_fn=step, **loop)
    out = _summary("dpo", len(pairs), steps, first, history, t0)
    out["beta"] = beta
    return out


def train_relevance(
    model,
    tokenizer,
    examples: Sequence[tuple[str, int]],
    *,
    epochs: int = 1,
    lr: float = 2e-4,
    batch_size: int = 8,
    max_grad_norm: float = 1.0,
    progress: Progress | None = None,
    seed: int = 0,
) -> dict:
    """Fine-tune the Relevance LLM on ``(prompt, label)`` examples (label 1 = Yes); binary
    cross-entropy on the Yes/No answer logits. Returns metrics (accuracy of the last epoch)."""
    t0 = time.perf_counter()
    disable_cpu_bf16_repack(model)
    pad = _pad_id(tokenizer)
    yes_no = answer_token_ids(tokenizer)
    prompt_ids = encode_prompts(tokenizer, [p for p, _ in examples])
    labels = torch.tensor([int(y) for _, y in examples], dtype=torch.float32)
    if not set(labels.unique().tolist()) <= {0.0, 1.0}:
        raise ValueError("relevance labels must be 0 or 1")

    def step(idx):
        pair = relevance_logits(model, [prompt_ids[i] for i in idx], yes_no, pad)
        y = labels[idx].to(pair.device)
        loss = relevance_loss(pair, y)
        acc = (((pair[:, 0] > pair[:, 1]).float()) == y).float().mean()
        return loss, {"accuracy": (float(acc), len(idx))}

    steps, first, history = _loop(
        model,
        [len(p) for p in prompt_ids],
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_grad_norm=max_grad_norm,
        seed=seed,
        progress=progress,
        step_fn=step,
    )
    return _summary("relevance", len(examples), steps, first, history, t0)
