"""examples/exposure_gap.py: the counts on hand-built sentences, and on a tiny model greedy errors
equal to the validation's Hamming cost and no disagreement between greedy and teacher-forced
decoding on the reference's path."""

import pytest
import torch

import tiny
from examples.exposure_gap import Gap, first_mistake, measure

EOS = 2


def test_first_mistake_counts_the_end_of_the_output():
    assert first_mistake([5, 6], [5, 6], EOS) is None
    assert first_mistake([5, 9, 7], [5, 6, 7, 8], EOS) == 1
    assert first_mistake([5, 6, 7], [5, 6], EOS) == 2  # went on where the reference ends
    assert first_mistake([5], [5, 6], EOS) == 1  # ended where the reference goes on


def test_a_mistake_then_an_output_too_short():
    gap = Gap()
    gap.add(hyp=[5, 9, 7], ref=[5, 6, 7, 8], forced=[5, 9, 7, 4, EOS], eos=EOS)
    assert (gap.sentences, gap.tokens, gap.greedy_errors, gap.teacher_forced_errors) == (1, 4, 2, 2)
    assert (gap.sentences_with_mistake, gap.tokens_after_mistake) == (1, 2)
    assert (gap.greedy_errors_after_mistake, gap.teacher_forced_errors_after_mistake) == (1, 1)
    assert gap.disagreements_on_path == 0


def test_an_output_too_long_and_a_perfect_one():
    gap = Gap()
    gap.add(hyp=[5, 6, 7], ref=[5, 6], forced=[5, 6, 7], eos=EOS)
    gap.add(hyp=[5, 6], ref=[5, 6], forced=[5, 6, EOS], eos=EOS)
    assert (gap.tokens, gap.greedy_errors, gap.teacher_forced_errors) == (4, 1, 0)
    assert (gap.sentences_with_mistake, gap.tokens_after_mistake, gap.greedy_errors_after_mistake) == (1, 0, 0)
    assert gap.disagreements_on_path == 0
    rows = dict(gap.rows())
    assert rows["greedy error (the test's)"] == "25.00%"
    assert rows["excess: greedy - teacher-forced"] == "25.00 points, 100.00% of the greedy error"


def test_greedy_and_teacher_forcing_that_differ_on_the_reference_path_are_counted():
    gap = Gap()
    gap.add(hyp=[5, 6], ref=[5, 6], forced=[5, 7, EOS], eos=EOS)
    assert gap.disagreements_on_path == 1


@pytest.mark.parametrize("arch", ["searnn_gru", "searnn_gru_aligned"])
def test_on_a_model_greedy_errors_are_the_validation_cost_and_both_decodings_agree_on_the_path(arch):
    task, model, criterion = tiny.build(arch, ["--criterion", "searnn_mle", "--cost", "hamming",
                                               "--valid-max-len-a", "1", "--valid-max-len-b", "3"], seed=3)
    model.train()  # the measure must decode without dropout, as validation does
    samples = [tiny.batch(task.target_dictionary, tiny.random_pairs(16, seed=s, same_length=True)) for s in (1, 2)]
    gap = measure(model, criterion.validation, samples)
    with torch.no_grad():
        expected = sum(criterion.validation.costs(model, sample).sum().item() for sample in samples)
    assert gap.sentences == 32 and gap.greedy_errors == expected > 0
    assert gap.sentences_with_mistake > 0 and gap.teacher_forced_errors > 0
    assert gap.disagreements_on_path == 0
