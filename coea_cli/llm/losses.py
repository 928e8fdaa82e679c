"""Training objectives of the Novelty and Relevance LLMs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the labelled tokens only (mean over them).

    ``logits`` ``[B, T, V]`` and ``labels`` ``[B, T]`` are aligned with the input ids; position
    ``t`` predicts ``labels[:, t + 1]``. Prompt and padding positions carry ``-100``.
    """
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(pred, labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def relevance_loss(pair_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of P(Yes) = sigmoid(logit(Yes) - logit(No)) against 0/1 labels.

    ``pair_logits`` is ``[B, 2]``: the (Yes, No) answer-token logits; the same as softmax
    cross-entropy over the two tokens.
    """
    margin = (pair_logits[:, 0] - pair_logits[:, 1]).float()
    return F.binary_cross_entropy_with_logits(margin, labels.float())


def kl_to_previous(new_logp: torch.Tensor, prev_logp: torch.Tensor) -> torch.Tensor:
    """KL(new || prev) over the valid clusters, mean over rows.

    Inputs are ``[B, C]`` log-probabilities over the C valid clusters; each row is renormalised
    first. KL = sum_c p_new(c) * (log p_new(c) - log p_prev(c)).
    Example: new = (0.5, 0.5), prev = (0.25, 0.75): 0.5 ln 2 + 0.5 ln(2/3) = 0.1438.
    """
    new = torch.log_softmax(new_logp.float(), -1)
    prev = torch.log_softmax(prev_logp.float(), -1)
    return (new.exp() * (new - prev)).sum(-1).mean()


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Direct Preference Optimization loss, mean over pairs.

    -log sigmoid(beta * ((pc - rc) - (pr - rr))) with sequence log-probs of the chosen (c) and
    rejected (r) answers under the policy (p) and the frozen reference (r).
    Example: pc=-1, pr=-2, rc=-1.5, rr=-1.5, beta=1: margin 1, -log sigmoid(1) = 0.3133.
    """
    margin = (policy_chosen_logp - ref_chosen_logp) - (policy_rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * margin.float()).mean()
