"""Cost-sensitive losses of SEARNN (Leblond et al. 2018, section 4), pure functions.

Each loss scores one cell: ``scores`` (N, K) are the model's scores s_t for the K
candidate tokens of N cells, ``costs`` (N, K) their roll-out costs c_t, and
``valid`` (N, K) marks which candidates take part (False for duplicates and
padding). When K is the whole vocabulary these are the paper's LL, LLCAS and SHL;
when K is a sampled subset the softmax / max runs over the sampled tokens only,
which gives the sampled variants sLL and sLLCAS of section 5.

``target`` (N,) is the slot of a* = argmin c (see ``target_slots``). Every
function returns the per-cell losses (N,); the criterion sums them.

A valid candidate may have no cost: ``NO_COST`` (+inf) marks a token that was
not rolled out but still takes part in the softmax, as padding, BOS, UNK and
the dictionary fillers do in a whole-dictionary loss. It is never the target;
LL ignores costs; LLCAS and SHL give it the worst cost of its cell; KL gives it
no target mass (q = 0), while it stays in the normaliser of p.
"""

import math

import torch
from torch import Tensor
import torch.nn.functional as F

# How close two costs must be to count as tied for the minimum.
COST_TIE_TOLERANCE = 1e-6

# The cost of a candidate that takes part in the loss but was not rolled out.
NO_COST = math.inf


def target_slots(costs: Tensor, valid: Tensor, gold_slots: Tensor) -> Tensor:
    """a* = argmin_a c(a) per cell, as a slot index into the K candidates.

    When several tokens share the minimal cost (up to a cell where every cost
    is equal), the target is the ground truth if it is among them: that is the
    reference policy's choice, and the loss then reduces to MLE's. Other ties
    go to the lowest slot.
    """
    masked = costs.masked_fill(~valid, float("inf"))
    best = masked.min(dim=1, keepdim=True).values
    is_min = masked <= best + COST_TIE_TOLERANCE
    # argmax returns the first maximal index: the lowest tied slot.
    first_min = is_min.to(torch.uint8).argmax(dim=1)
    gold_is_min = is_min.gather(1, gold_slots.unsqueeze(1)).squeeze(1)
    return torch.where(gold_is_min, gold_slots, first_min)


def _masked_log_softmax(scores: Tensor, valid: Tensor) -> Tensor:
    return F.log_softmax(scores.float().masked_fill(~valid, float("-inf")), dim=1)


def _has_cost(costs: Tensor, valid: Tensor) -> Tensor:
    """Valid slots with a real (finite) cost, i.e. rolled out."""
    return valid & torch.isfinite(costs)


def _relative_costs(costs: Tensor, valid: Tensor) -> Tensor:
    """c - min c over valid slots (0 at the target, >= 0 elsewhere); a slot
    without a cost (``NO_COST``) takes the worst cost of its cell."""
    rolled = _has_cost(costs, valid)
    best = costs.masked_fill(~rolled, float("inf")).min(dim=1, keepdim=True).values
    worst = costs.masked_fill(~rolled, float("-inf")).max(dim=1, keepdim=True).values
    relative = torch.where(rolled, costs, worst) - best
    return relative.masked_fill(~valid | ~rolled.any(dim=1, keepdim=True), 0.0)


def _pick(values: Tensor, slots: Tensor) -> Tensor:
    return values.gather(1, slots.unsqueeze(1)).squeeze(1)


def log_loss(scores: Tensor, costs: Tensor, valid: Tensor, target: Tensor) -> Tensor:
    """LL (eq. 3): -log softmax(s)[a*]."""
    return -_pick(_masked_log_softmax(scores, valid), target)


def cost_augmented_log_loss(
    scores: Tensor, costs: Tensor, valid: Tensor, target: Tensor, cost_scale: float = 1.0
) -> Tensor:
    """LLCAS (eq. 4): -log softmax(s + c)[a*].

    Costs enter relative to the cell's minimum; softmax is shift-invariant, so
    this is exactly eq. 4 while keeping the exponent small.
    """
    augmented = scores.float() + cost_scale * _relative_costs(costs, valid)
    return -_pick(_masked_log_softmax(augmented, valid), target)


def structured_hinge_loss(
    scores: Tensor, costs: Tensor, valid: Tensor, target: Tensor, cost_scale: float = 1.0
) -> Tensor:
    """SHL (eq. 5): max_a (s(a) + c(a)) - s(a*), with c taken relative to min c.

    Eq. 5 as printed adds c(a*) to every term of the max; subtracting it leaves
    the gradient unchanged and makes the loss 0 once a* wins by the cost margins
    (the usual margin-rescaled structured hinge).
    """
    scores = scores.float()
    augmented = scores + cost_scale * _relative_costs(costs, valid)
    worst = augmented.masked_fill(~valid, float("-inf")).max(dim=1).values
    return worst - _pick(scores, target)


def soft_target_loss(
    scores: Tensor, costs: Tensor, valid: Tensor, target: Tensor, temperature: float = 1.0
) -> Tensor:
    """KL form used for LLCAS in the authors' code: -sum_a q(a) log p(a),

    with q = softmax(-(c - min c) / temperature) over the valid candidates that
    have a cost, and p = softmax(s) over all valid candidates: a token that was
    not rolled out (``NO_COST``) gets no target mass but is still trained down.
    It does not use ``target``: every low-cost token shares the mass.
    """
    rolled = _has_cost(costs, valid)
    relative = _relative_costs(costs, valid)
    q = F.softmax((-relative / temperature).masked_fill(~rolled, float("-inf")), dim=1)
    log_p = _masked_log_softmax(scores, valid).masked_fill(~valid, 0.0)
    return -(q * log_p).sum(dim=1)
