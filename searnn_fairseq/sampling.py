"""Search-side sampling: which cells get cost vectors and which tokens are rolled out.

Section 5 of the paper: cells are sampled uniformly; tokens by one of several
strategies. The ground-truth token is always in the sampled set, in slot 0, so
the loss can always fall back on the reference policy's choice.

All draws use torch's global generator, which fairseq reseeds at every update
(seed + update number): a resumed run draws the same tokens and cells.
"""

from typing import Optional

import torch
from torch import Tensor

TOKEN_SAMPLING_CHOICES = ("all", "uniform", "unigram", "policy", "biased", "topk")


def sample_cells(lengths: Tensor, width: int, per_sequence: int) -> Tensor:
    """(B, width) bool mask with ``per_sequence`` cells drawn uniformly without
    replacement among the first ``lengths[b]`` cells of each row (0 = all cells)."""
    positions = torch.arange(width, device=lengths.device).unsqueeze(0)
    inside = positions < lengths.unsqueeze(1)
    if per_sequence <= 0:
        return inside
    keys = torch.rand(lengths.size(0), width, device=lengths.device)
    keys = keys.masked_fill(~inside, 2.0)  # cells past the end rank last
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return inside & (ranks < per_sequence)


def _gumbel_top_k(log_weights: Tensor, k: int) -> Tensor:
    """k distinct indices per row, drawn without replacement with probability
    proportional to exp(log_weights) (the Gumbel-top-k trick)."""
    uniform = torch.rand_like(log_weights).clamp_(min=1e-20, max=1.0 - 1e-7)
    keys = log_weights - torch.log(-torch.log(uniform))
    return keys.topk(k, dim=1).indices


def mark_duplicates(tokens: Tensor) -> Tensor:
    """(N, K) bool, True where a token already appears in an earlier slot."""
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)
    earlier = torch.ones(tokens.size(1), tokens.size(1), dtype=torch.bool, device=tokens.device)
    earlier = earlier.tril(diagonal=-1)
    return (same & earlier).any(dim=2)


def sample_tokens(
    strategy: str,
    num_tokens: int,
    gold: Tensor,
    action_mask: Tensor,
    policy_logits: Optional[Tensor] = None,
    unigram_log_weights: Optional[Tensor] = None,
    biased_temperature: float = 2.0,
) -> Tensor:
    """Tokens to roll out at N cells: (N, num_tokens) ids, ground truth in slot 0.

    gold: (N,) ground-truth token of each cell. action_mask: (V,) bool, the
    tokens that are real actions (never padding, BOS, UNK or dictionary
    fillers). policy_logits: (N, V) the model's roll-in scores at these cells.
    Strategies:
      uniform  every other action equally likely
      unigram  training-set target frequencies (the dictionary's counts)
      policy   the model's current distribution
      biased   the model's distribution flattened by ``biased_temperature``
               (p^(1/T)), which boosts low-probability tokens
      topk     the num_tokens - 1 highest-scoring other actions
    "all" is not a sampler: the criterion rolls out every action instead.
    """
    n, vocab = gold.size(0), action_mask.size(0)
    others = num_tokens - 1
    if strategy == "uniform":
        log_weights = torch.zeros(n, vocab, device=gold.device)
    elif strategy == "unigram":
        log_weights = unigram_log_weights.to(gold.device).unsqueeze(0).expand(n, vocab)
    elif strategy in ("policy", "biased", "topk"):
        temperature = biased_temperature if strategy == "biased" else 1.0
        log_weights = torch.log_softmax(policy_logits.float() / temperature, dim=1)
    else:
        raise ValueError(
            f"unknown token sampling {strategy!r}; valid choices: {', '.join(TOKEN_SAMPLING_CHOICES)}"
        )
    excluded = (~action_mask).unsqueeze(0).expand(n, vocab).clone()
    excluded.scatter_(1, gold.unsqueeze(1), True)
    log_weights = log_weights.masked_fill(excluded, float("-inf"))
    if others == 0:
        picked = gold.new_zeros(n, 0)
    elif strategy == "topk":
        picked = log_weights.topk(others, dim=1).indices
    else:
        picked = _gumbel_top_k(log_weights, others)
    return torch.cat([gold.unsqueeze(1), picked], dim=1)
