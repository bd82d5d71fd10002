"""Search-side sampling: which cells get cost vectors and which tokens are rolled out.

Section 5 of the paper: cells are sampled uniformly; tokens by one of several
strategies. The ground-truth token is always in the sampled set, in slot 0, so
the loss can always fall back on the reference policy's choice.

All draws use torch's global generator, which fairseq reseeds at every update
(seed + update number): a resumed run draws the same tokens and cells.
"""

import logging
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

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
    *,
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


def unigram_log_weights(dictionary, num_targets: Optional[int], split: str = "train") -> Tensor:
    """log(count + 1) of each token among the training targets (add-one smoothing: an unseen
    token can still be drawn). The counts are the target dictionary's, except EOS: fairseq's
    dict.txt does not list it, so it loads with count 1 although every target ends with one,
    and it would almost never be drawn as a competitor (sLL then never learns when not to
    stop). EOS gets ``num_targets``, the number of training targets, when the split is loaded."""
    counts = torch.tensor(dictionary.count, dtype=torch.float)
    eos = dictionary.eos()
    if num_targets is not None:
        counts[eos] = max(float(counts[eos]), float(num_targets))
    else:
        logger.warning(
            f"unigram token sampling: no '{split}' split loaded, so EOS keeps its dictionary "
            f"count ({int(counts[eos])}) and is rarely sampled"
        )
    return torch.log(counts + 1.0)


class TokenChooser:
    """The tokens rolled out at each cell (the engine's ``choose_actions``): every
    action, or ``num_tokens`` of them drawn by ``strategy``. Slot 0 is the ground
    truth; slots repeating an earlier token are not valid."""

    def __init__(
        self,
        strategy: str,
        num_tokens: int,
        action_mask: Tensor,
        biased_temperature: float = 2.0,
        unigram_log_weights: Optional[Callable[[], Tensor]] = None,
    ):
        self.strategy = strategy
        self.num_tokens = num_tokens
        self.action_mask = action_mask
        self.actions = action_mask.nonzero().squeeze(1)
        self.biased_temperature = biased_temperature
        # a callable: the statistics need the train split, which loads after the criterion is built
        self.unigram_log_weights = unigram_log_weights

    def __call__(self, policy_logits: Tensor, gold: Tensor) -> Tuple[Tensor, Tensor]:
        if self.strategy == "all":
            actions = self.actions.to(gold.device)
            tokens = torch.cat([gold.unsqueeze(1), actions.unsqueeze(0).expand(gold.size(0), -1)], dim=1)
        else:
            tokens = sample_tokens(
                self.strategy,
                self.num_tokens,
                gold,
                self.action_mask.to(gold.device),
                policy_logits=policy_logits,
                unigram_log_weights=self.unigram_log_weights() if self.strategy == "unigram" else None,
                biased_temperature=self.biased_temperature,
            )
        return tokens, ~mark_duplicates(tokens)
