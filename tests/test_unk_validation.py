"""Targets may hold <unk> (a word outside the dictionary): scoring them in eval
mode (validation loss, fairseq-generate --score-reference) stays finite, while
decoding still predicts only real tokens."""

import math

import torch

import tiny

# "z" and "y" are not in the letter dictionary: they encode as <unk>.
PAIRS = [("abc", "azc"), ("hg", "y"), ("gfedc", "abcd")]


def unk_batch(task):
    sample = tiny.batch(task.target_dictionary, PAIRS)
    assert sample["target"].eq(task.target_dictionary.unk()).sum() == 2
    return sample


def test_validation_loss_is_finite_on_targets_with_unk():
    task, model, crit = tiny.build("searnn_gru", ["--criterion", "searnn_ll", "--cost", "hamming"])
    sample = unk_batch(task)
    model.eval()
    with torch.no_grad():
        loss, _, log = crit(model, sample)
    assert torch.isfinite(loss) and math.isfinite(log["loss"]) and math.isfinite(log["nll_loss"])


def test_score_reference_is_finite_on_targets_with_unk():
    from fairseq.sequence_scorer import SequenceScorer

    task, model, _ = tiny.build("searnn_gru", ["--criterion", "searnn_ll", "--cost", "hamming"])
    sample = unk_batch(task)
    model.eval()
    hypos = SequenceScorer(task.target_dictionary).generate([model], sample)
    assert all(math.isfinite(h[0]["score"]) for h in hypos)
    assert all(torch.isfinite(h[0]["positional_scores"]).all() for h in hypos)


def test_eval_scores_mask_only_tokens_no_target_holds():
    task, model, _ = tiny.build("searnn_gru", ["--criterion", "searnn_ll", "--cost", "hamming"])
    d = task.target_dictionary
    sample = unk_batch(task)
    model.eval()
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    fillers = [i for i, s in enumerate(d.symbols) if s.startswith("madeupword")]
    assert fillers and torch.isinf(lprobs[..., [d.bos(), d.pad(), *fillers]]).all()
    assert torch.isfinite(lprobs[..., d.unk()]).all()
    assert torch.allclose(lprobs.exp().sum(-1), torch.ones(lprobs.shape[:-1]), atol=1e-5)


def test_generation_never_emits_unk_bos_or_padding_even_when_they_score_highest():
    from fairseq.sequence_generator import SequenceGenerator

    task, model, crit = tiny.build("searnn_gru", ["--criterion", "searnn_ll", "--cost", "hamming"])
    d = task.target_dictionary
    with torch.no_grad():
        model.decoder.fc_out.bias[[d.bos(), d.unk(), d.pad()]] = 100.0
    sample = unk_batch(task)
    model.eval()
    hypos = SequenceGenerator([model], d, beam_size=2, max_len_b=8).generate([model], sample)
    emitted = torch.cat([h[0]["tokens"] for h in hypos])
    assert not emitted.eq(d.unk()).any() and not emitted.eq(d.bos()).any()
    assert not emitted.eq(d.pad()).any()
    with torch.no_grad():
        _, _, log = crit(model, sample)  # validation decoding, and a finite loss
    assert math.isfinite(log["loss"])
