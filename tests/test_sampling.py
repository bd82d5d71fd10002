"""Cell and token sampling strategies."""

import pytest
import torch

from searnn_fairseq.sampling import mark_duplicates, sample_cells, sample_tokens

V = 12
ACTIONS = torch.ones(V, dtype=torch.bool)
ACTIONS[[0, 1, 3]] = False  # bos, pad, unk are never rolled out


def draw(strategy, k, gold, **kwargs):
    n = gold.size(0)
    logits = kwargs.pop("logits", torch.randn(n, V))
    return sample_tokens(strategy, k, gold, ACTIONS, policy_logits=logits,
                         unigram_log_weights=kwargs.pop("unigram", torch.zeros(V)), **kwargs)


@pytest.mark.parametrize("strategy", ["uniform", "unigram", "policy", "biased", "topk"])
def test_the_ground_truth_is_always_sampled_and_tokens_are_distinct_actions(strategy):
    torch.manual_seed(0)
    gold = torch.randint(4, V, (200,))
    tokens = draw(strategy, 4, gold)
    assert tokens.shape == (200, 4)
    assert torch.equal(tokens[:, 0], gold)
    assert ACTIONS[tokens].all()
    assert not mark_duplicates(tokens).any()


def test_topk_picks_the_best_other_tokens():
    logits = torch.arange(V, dtype=torch.float).unsqueeze(0).repeat(2, 1)
    gold = torch.tensor([11, 5])
    tokens = draw("topk", 3, gold, logits=logits)
    assert tokens[0].tolist() == [11, 10, 9]
    assert tokens[1].tolist() == [5, 11, 10]


def test_unigram_sampling_follows_the_counts():
    torch.manual_seed(0)
    counts = torch.zeros(V)
    counts[4:] = torch.tensor([1.0, 2, 4, 8, 16, 32, 64, 128])
    gold = torch.full((40000,), 4)
    tokens = draw("unigram", 2, gold, unigram=counts.log())
    freq = torch.bincount(tokens[:, 1], minlength=V).float() / gold.size(0)
    expected = counts.clone()
    expected[4] = 0  # the ground truth is never drawn again
    expected /= expected.sum()
    assert torch.allclose(freq, expected, atol=0.01)


def test_biased_policy_sampling_is_flatter_than_the_policy():
    torch.manual_seed(0)
    logits = torch.zeros(30000, V)
    logits[:, 4] = 4.0  # the favourite, not the ground truth
    gold = torch.full((30000,), 11)
    share_policy = (draw("policy", 2, gold, logits=logits)[:, 1] == 4).float().mean()
    share_biased = (draw("biased", 2, gold, logits=logits, biased_temperature=2.0)[:, 1] == 4).float().mean()
    # policy: e^4 / (e^4 + 7) = 0.8863 among the 8 actions other than the gold
    assert abs(share_policy - 0.8863) < 0.02 and share_biased < share_policy - 0.2


def test_duplicates_are_marked_after_their_first_slot():
    tokens = torch.tensor([[5, 6, 5, 7, 6]])
    assert mark_duplicates(tokens).tolist() == [[False, False, True, False, True]]


def test_cell_sampling_draws_n_distinct_cells_inside_each_target():
    torch.manual_seed(0)
    lengths = torch.tensor([1, 3, 7, 10])
    mask = sample_cells(lengths, 10, 3)
    assert mask.sum(dim=1).tolist() == [1, 3, 3, 3]
    positions = torch.arange(10).unsqueeze(0)
    assert not (mask & (positions >= lengths.unsqueeze(1))).any()
    assert sample_cells(lengths, 10, 0).sum(dim=1).tolist() == [1, 3, 7, 10]


def test_cell_sampling_is_uniform():
    torch.manual_seed(0)
    lengths = torch.full((20000,), 5)
    freq = sample_cells(lengths, 5, 2).float().mean(dim=0)
    assert torch.allclose(freq, torch.full((5,), 0.4), atol=0.02)
