"""Cost-sensitive losses on hand-built scores and costs."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from searnn_fairseq import losses

SCORES = torch.tensor([[1.0, 2.0, 0.0]])
COSTS = torch.tensor([[0.0, 2.0, 1.0]])
ALL = torch.ones(1, 3, dtype=torch.bool)
GOLD = torch.tensor([0])


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def target():
    return losses.target_slots(COSTS, ALL, GOLD)


def test_log_loss_matches_hand_value():
    # a* = slot 0: -log(e^1 / (e^1 + e^2 + e^0))
    got = losses.log_loss(SCORES, COSTS, ALL, target())
    assert math.isclose(got.item(), lse(1, 2, 0) - 1, rel_tol=1e-6)


def test_llcas_matches_hand_value():
    # -log(e^(1+0) / (e^(1+0) + e^(2+2) + e^(0+1)))
    got = losses.cost_augmented_log_loss(SCORES, COSTS, ALL, target())
    assert math.isclose(got.item(), lse(1, 4, 1) - 1, rel_tol=1e-6)


def test_llcas_cost_scale_multiplies_costs():
    got = losses.cost_augmented_log_loss(SCORES, COSTS, ALL, target(), cost_scale=3.0)
    assert math.isclose(got.item(), lse(1, 2 + 6, 0 + 3) - 1, rel_tol=1e-6)


def test_llcas_ignores_a_constant_shift_of_costs():
    shifted = losses.cost_augmented_log_loss(SCORES, COSTS + 5, ALL, target())
    assert torch.allclose(shifted, losses.cost_augmented_log_loss(SCORES, COSTS, ALL, target()))


def test_structured_hinge_matches_hand_value():
    # max(1+0, 2+2, 0+1) - 1 = 3
    got = losses.structured_hinge_loss(SCORES, COSTS, ALL, target())
    assert math.isclose(got.item(), 3.0, rel_tol=1e-6)


def test_structured_hinge_is_zero_when_target_wins_by_the_margins():
    scores = torch.tensor([[5.0, 2.9, 3.9]])
    assert losses.structured_hinge_loss(scores, COSTS, ALL, target()).item() == 0.0


def test_soft_target_loss_matches_hand_value():
    # q = softmax(-(c - 0)/T) with T = 2: weights e^0, e^-1, e^-0.5
    got = losses.soft_target_loss(SCORES, COSTS, ALL, target(), temperature=2.0)
    weights = [1.0, math.exp(-1.0), math.exp(-0.5)]
    q = [w / sum(weights) for w in weights]
    log_p = [s - lse(1, 2, 0) for s in (1.0, 2.0, 0.0)]
    assert math.isclose(got.item(), -sum(a * b for a, b in zip(q, log_p)), rel_tol=1e-6)


def test_invalid_slots_are_left_out_of_the_softmax():
    valid = torch.tensor([[True, False, True]])
    got = losses.log_loss(SCORES, COSTS, valid, losses.target_slots(COSTS, valid, GOLD))
    assert math.isclose(got.item(), lse(1, 0) - 1, rel_tol=1e-6)


def test_target_is_the_minimum_cost_slot():
    costs = torch.tensor([[2.0, 0.5, 1.0]])
    assert losses.target_slots(costs, ALL, GOLD).item() == 1


def test_ties_go_to_the_ground_truth_then_the_lowest_slot():
    equal = torch.tensor([[1.0, 1.0, 1.0]])
    assert losses.target_slots(equal, ALL, torch.tensor([2])).item() == 2
    tied_without_gold = torch.tensor([[3.0, 1.0, 1.0]])
    assert losses.target_slots(tied_without_gold, ALL, torch.tensor([0])).item() == 1


def test_all_equal_costs_reduce_llcas_to_the_log_loss_of_the_ground_truth():
    equal = torch.full((1, 3), 2.0)
    t = losses.target_slots(equal, ALL, torch.tensor([1]))
    got = losses.cost_augmented_log_loss(SCORES, equal, ALL, t)
    assert math.isclose(got.item(), lse(1, 2, 0) - 2, rel_tol=1e-6)


cells = st.integers(min_value=2, max_value=6).flatmap(
    lambda k: st.tuples(
        st.lists(st.floats(-20, 20), min_size=k, max_size=k),
        st.lists(st.floats(0, 10), min_size=k, max_size=k),
    )
)


@settings(max_examples=80, deadline=None)
@given(cells)
def test_every_loss_is_finite_and_non_negative(cell):
    scores = torch.tensor([cell[0]])
    costs = torch.tensor([cell[1]])
    valid = torch.ones_like(scores, dtype=torch.bool)
    t = losses.target_slots(costs, valid, torch.tensor([0]))
    for value in (
        losses.log_loss(scores, costs, valid, t),
        losses.cost_augmented_log_loss(scores, costs, valid, t),
        losses.structured_hinge_loss(scores, costs, valid, t),
        losses.soft_target_loss(scores, costs, valid, t),
    ):
        assert torch.isfinite(value).all()
        assert value.item() >= -1e-6


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=2, max_size=6))
def test_log_loss_vanishes_when_all_mass_is_on_the_min_cost_token(costs_list):
    costs = torch.tensor([costs_list])
    valid = torch.ones_like(costs, dtype=torch.bool)
    t = losses.target_slots(costs, valid, torch.tensor([0]))
    scores = torch.full_like(costs, -1e4)
    scores[0, t] = 1e4
    assert losses.log_loss(scores, costs, valid, t).item() < 1e-6


# A whole-dictionary cell: slot 3 takes part in the softmax but was never rolled out.
ROLLED = torch.tensor([[0.0, 2.0, 1.0, losses.NO_COST]])
WORST_FILLED = torch.tensor([[0.0, 2.0, 1.0, 2.0]])
SCORES4 = torch.tensor([[1.0, 2.0, 0.0, 0.5]])
ALL4 = torch.ones(1, 4, dtype=torch.bool)


def test_a_token_without_cost_gets_no_target_mass_in_the_soft_target():
    got = losses.soft_target_loss(SCORES4, ROLLED, ALL4, GOLD, temperature=2.0)
    # q over the rolled-out slots only, p over all four
    weights = [1.0, math.exp(-1.0), math.exp(-0.5)]
    q = [w / sum(weights) for w in weights]
    log_p = [s - lse(1, 2, 0, 0.5) for s in (1.0, 2.0, 0.0)]
    assert math.isclose(got.item(), -sum(a * b for a, b in zip(q, log_p)), rel_tol=1e-6)
    # the worst cost instead would give slot 3 the weight e^-1
    filled = losses.soft_target_loss(SCORES4, WORST_FILLED, ALL4, GOLD, temperature=2.0)
    assert abs(filled.item() - got.item()) > 0.05


def test_a_token_without_cost_takes_the_worst_cost_in_llcas_and_shl_and_is_never_the_target():
    t = losses.target_slots(ROLLED, ALL4, torch.tensor([3]))  # even named as the gold
    assert t.item() == 0
    llcas = losses.cost_augmented_log_loss(SCORES4, ROLLED, ALL4, t, cost_scale=1.5)
    assert math.isclose(llcas.item(), lse(1, 2 + 3, 0 + 1.5, 0.5 + 3) - 1, rel_tol=1e-6)
    assert torch.equal(llcas, losses.cost_augmented_log_loss(SCORES4, WORST_FILLED, ALL4, t, cost_scale=1.5))
    shl = losses.structured_hinge_loss(SCORES4, ROLLED, ALL4, t)
    assert math.isclose(shl.item(), max(1, 4, 1, 2.5) - 1, rel_tol=1e-6)
    assert torch.equal(shl, losses.structured_hinge_loss(SCORES4, WORST_FILLED, ALL4, t))
    assert losses.log_loss(SCORES4, ROLLED, ALL4, t).item() == losses.log_loss(SCORES4, WORST_FILLED, ALL4, t).item()
