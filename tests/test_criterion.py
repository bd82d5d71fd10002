"""The fairseq criteria: MLE equivalence, validation, options, gradient path."""

import math

import pytest
import torch
from fairseq.logging import metrics

import tiny

REF_REF_LL = [
    "--criterion", "searnn_ll", "--rollin", "reference", "--rollout", "reference",
    "--token-sampling", "all", "--cost", "hamming",
]
PAIRS = [("abc", "abcd"), ("h", ""), ("gfedc", "abcdefg"), ("bb", "c")]


def loss_and_grads(model, criterion, sample):
    model.zero_grad()
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    return loss.detach(), sample_size, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["lstm", "transformer", "searnn_gru"])
def test_ll_with_reference_policies_equals_mle(arch):
    no_dropout = ["--dropout", "0"] + (["--decoder-dropout-out", "0"] if arch == "searnn_gru" else [])
    task, model, searnn = tiny.build(arch, REF_REF_LL, extra=no_dropout)
    mle = task.build_criterion(tiny.parse(arch, ["--criterion", "cross_entropy"], no_dropout))
    sample = tiny.batch(task.target_dictionary, PAIRS)
    model.train()
    loss_s, size_s, grads_s = loss_and_grads(model, searnn, sample)
    loss_m, size_m, grads_m = loss_and_grads(model, mle, sample)
    assert size_s == size_m == sample["ntokens"]
    assert torch.allclose(loss_s, loss_m, rtol=1e-6)
    assert grads_s.keys() == grads_m.keys() and grads_s
    for name in grads_m:
        assert torch.allclose(grads_s[name], grads_m[name], atol=1e-6), name


def test_sampled_ll_with_full_softmax_is_mle_under_reference_policies():
    """With reference roll-in and roll-out a* is the ground truth, so --full-softmax LL over
    sampled tokens is MLE again, while sLL only normalises over the K sampled tokens."""
    sampled = [*REF_REF_LL, "--token-sampling", "topk", "--sampled-tokens", "2"]
    task, model, full = tiny.build("lstm", sampled + ["--full-softmax"], extra=["--dropout", "0"])
    _, _, sll = tiny.build("lstm", sampled, extra=["--dropout", "0"])
    mle = task.build_criterion(tiny.parse("lstm", ["--criterion", "cross_entropy"], ["--dropout", "0"]))
    sample = tiny.batch(task.target_dictionary, PAIRS)
    model.train()
    loss_full, loss_mle = full(model, sample)[0], mle(model, sample)[0]
    assert torch.allclose(loss_full, loss_mle, rtol=1e-6)
    # dropping every token but two from the normaliser can only raise the gold's probability
    assert sll(model, sample)[0] < loss_mle - 1e-3


def test_unigram_statistics_count_one_eos_per_training_target(caplog):
    """fairseq's dict.txt has no EOS count (it loads as 1); unigram sampling must still see EOS
    as often as it occurs among the targets, once per sentence."""
    task, _, crit = tiny.build("lstm", ["--criterion", "searnn_ll", "--token-sampling", "unigram"])
    dictionary = task.target_dictionary
    assert dictionary.count[dictionary.eos()] == 1
    task.datasets["train"] = [None] * 500  # only its length matters
    weights = crit.unigram_log_weights()
    assert weights[dictionary.eos()] == pytest.approx(math.log(501))
    letter = dictionary.index("a")
    assert weights[letter] == pytest.approx(math.log(dictionary.count[letter] + 1))

    _, _, no_train = tiny.build("lstm", ["--criterion", "searnn_ll", "--token-sampling", "unigram"])
    no_train.task.datasets.pop("train", None)
    assert no_train.unigram_log_weights()[dictionary.eos()] == pytest.approx(math.log(2))
    assert "no 'train' split loaded" in caplog.text


def test_mle_weight_adds_the_teacher_forced_nll():
    flags = ["--criterion", "searnn_llcas", "--rollin", "learned", "--rollout", "learned", "--cost", "hamming"]
    task, model, plain = tiny.build("lstm", flags, extra=["--dropout", "0"])
    _, _, weighted = tiny.build("lstm", flags + ["--mle-weight", "0.5"], extra=["--dropout", "0"])
    mle = task.build_criterion(tiny.parse("lstm", ["--criterion", "cross_entropy"], ["--dropout", "0"]))
    sample = tiny.batch(task.target_dictionary, PAIRS)
    model.train()
    base = plain(model, sample)[0]
    both = weighted(model, sample)[0]
    nll = mle(model, sample)[0]
    assert torch.allclose(both, base + 0.5 * nll, rtol=1e-5)


@pytest.mark.parametrize("criterion", ["searnn_ll", "searnn_llcas", "searnn_shl", "searnn_kl"])
@pytest.mark.parametrize("sampling", [["--token-sampling", "all"], ["--token-sampling", "biased", "--sampled-tokens", "3"]])
def test_training_step_is_finite_on_edge_case_batches(criterion, sampling):
    """Length-1 targets, a target longer than the roll-out cap, mixed lengths."""
    flags = ["--criterion", criterion, "--rollin", "mixed", "--rollout", "mixed", "--cost", "edit",
             "--rollout-max-len-a", "0.2", "--rollout-max-len-b", "1", *sampling]
    task, model, crit = tiny.build("lstm", flags)
    pairs = [("a", ""), ("b", "a"), ("abcdefgh", "hgfedcbahgfedcba"), ("cc", "dd")]
    sample = tiny.batch(task.target_dictionary, pairs)
    model.train()
    loss, sample_size, log = crit(model, sample)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() >= 0
    assert sample_size == log["cells"] == sample["ntokens"]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for key, value in log.items():
        assert isinstance(value, (int, float)), key


def generate_cost_sum(task, model, sample, max_len_b):
    """Summed Hamming cost of fairseq's own beam-1 search (what fairseq-generate scores)."""
    from fairseq.sequence_generator import SequenceGenerator

    d = task.target_dictionary
    generator = SequenceGenerator([model], d, beam_size=1, max_len_a=0, max_len_b=max_len_b)
    total = 0.0
    for b, hypos in enumerate(generator.generate([model], sample)):
        hyp = [d[i] for i in hypos[0]["tokens"].tolist() if i != d.eos()]
        ref = [d[i] for i in sample["target"][b].tolist() if i not in (d.eos(), d.pad())]
        total += sum(x != y for x, y in zip(hyp, ref)) + abs(len(hyp) - len(ref))
    return total


def test_validation_scores_what_fairseq_generate_outputs():
    task, model, crit = tiny.build("searnn_gru", ["--criterion", "searnn_llcas", "--cost", "hamming"])
    sample = tiny.batch(task.target_dictionary, PAIRS)
    model.eval()
    with torch.no_grad():
        _, _, log = crit(model, sample)
        assert log["greedy_cost_sum"] == generate_cost_sum(task, model, sample, max_len_b=200)
    assert model.training is False


def test_validation_makes_a_model_that_never_stops_pay_for_its_whole_output():
    """The length limit comes from --valid-max-len-b as in fairseq-generate, never from the
    reference (which once capped a looping model at reference length + 5)."""
    flags = ["--criterion", "searnn_llcas", "--cost", "hamming", "--valid-max-len-b", "9"]
    task, model, crit = tiny.build("searnn_gru", flags)
    d = task.target_dictionary
    output_layer = model.decoder.output_layer
    model.decoder.output_layer = lambda features: output_layer(features).index_fill(-1, torch.tensor([d.eos()]), -1e4)
    sample = tiny.batch(d, PAIRS)
    model.eval()
    with torch.no_grad():
        _, _, log = crit(model, sample)
        expected = generate_cost_sum(task, model, sample, max_len_b=9)
    # every hypothesis is 9 tokens long, so each costs at least 9 - len(reference)
    assert expected >= sum(9 - len(t) for _, t in PAIRS)
    assert log["greedy_cost_sum"] == expected


def test_reduce_metrics_logs_the_training_statistics():
    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_llcas", "--token-sampling", "uniform", "--sampled-tokens", "2"])
    sample = tiny.batch(task.target_dictionary, PAIRS)
    model.train()
    logs = [crit(model, sample)[2], crit(model, sample)[2]]
    with metrics.aggregate() as agg:
        type(crit).reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["rollouts"] == logs[0]["rollouts"] + logs[1]["rollouts"]
    assert values["rollouts"] == 2 * sample["ntokens"] * 2
    for key in ("loss", "nll_loss", "rollout_cost", "min_cost", "learned_rollouts"):
        assert key in values
    # every roll-in row is decoded at every step, learned roll-outs come on top
    assert values["decoded_tokens"] > 2 * sample["target"].numel()
    assert type(crit).logging_outputs_can_be_summed()


class CountingWrapper(torch.nn.Module):
    """Stands in for DDP: only calls through forward() are synchronised."""

    def __init__(self, model):
        super().__init__()
        self.module = model
        self.inside_forward = False
        self.ungated_grad_calls = 0

        def watch(module, args):
            if torch.is_grad_enabled() and not self.inside_forward:
                self.ungated_grad_calls += 1

        model.decoder.register_forward_pre_hook(watch)
        model.encoder.register_forward_pre_hook(watch)

    def forward(self, *args, **kwargs):
        self.inside_forward = True
        try:
            return self.module(*args, **kwargs)
        finally:
            self.inside_forward = False

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@pytest.mark.parametrize("flags", [["--mle-weight", "0"], ["--mle-weight", "1"]])
def test_gradient_carrying_forward_goes_through_the_wrapped_model(flags):
    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_llcas", *flags])
    wrapped = CountingWrapper(model)
    wrapped.train()
    loss = crit(wrapped, tiny.batch(task.target_dictionary, PAIRS))[0]
    loss.backward()
    assert wrapped.ungated_grad_calls == 0
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cost", "nope"], "valid choices"),
        (["--rollin-ref-prob", "1.5"], "rollin-ref-prob"),
        (["--rollout-ref-prob", "-0.1"], "rollout-ref-prob"),
        (["--sampled-tokens", "0"], "sampled-tokens"),
        (["--sampled-cells", "-1"], "sampled-cells"),
        (["--temperature", "0"], "temperature"),
        (["--valid-max-len-b", "-1"], "valid-max-len"),
        (["--cost", "chunk_f1"], "BIO"),
        (["--token-sampling", "topk", "--full-softmax"], "only defined for searnn_ll"),
    ],
)
def test_bad_options_fail_before_training_with_a_clear_message(flags, message):
    with pytest.raises(ValueError, match=message):
        tiny.build("lstm", ["--criterion", "searnn_llcas", *flags])


@pytest.mark.parametrize("flag", ["--rollin", "--rollout", "--token-sampling"])
def test_unknown_policy_names_are_rejected_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit):
        tiny.parse("lstm", ["--criterion", "searnn_llcas", flag, "bogus"])
    assert "invalid choice" in capsys.readouterr().err


def test_too_many_sampled_tokens_are_clamped_with_a_warning(caplog):
    _, _, crit = tiny.build("lstm", ["--criterion", "searnn_ll", "--token-sampling", "uniform", "--sampled-tokens", "500"])
    assert crit.num_tokens == int(crit.action_mask.sum())
    assert "exceeds" in caplog.text


def test_a_decoder_without_incremental_decoding_is_refused():
    from fairseq.models import FairseqDecoder

    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_ll"])

    class PlainDecoder(FairseqDecoder):
        def forward(self, prev_output_tokens, encoder_out=None, **kwargs):
            raise AssertionError("never called")

    model.decoder = PlainDecoder(task.target_dictionary)
    for training in (True, False):  # fairseq validates once before the first update
        model.train(training)
        with pytest.raises(ValueError, match="incremental"):
            crit(model, tiny.batch(task.target_dictionary, PAIRS))


def test_searnn_mle_trains_exactly_like_cross_entropy():
    task, model, baseline = tiny.build("lstm", ["--criterion", "searnn_mle"], extra=["--dropout", "0"])
    mle = task.build_criterion(tiny.parse("lstm", ["--criterion", "cross_entropy"], ["--dropout", "0"]))
    sample = tiny.batch(task.target_dictionary, PAIRS)
    model.train()
    loss_b, size_b, grads_b = loss_and_grads(model, baseline, sample)
    loss_m, size_m, grads_m = loss_and_grads(model, mle, sample)
    assert size_b == size_m and torch.allclose(loss_b, loss_m)
    assert all(torch.allclose(grads_b[n], grads_m[n]) for n in grads_m)
    model.eval()
    with torch.no_grad():
        assert "greedy_cost_sum" in baseline(model, sample)[2]
