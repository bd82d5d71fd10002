"""Search and loss paths beyond the defaults: the mixed roll-out coin per roll-out,
the observed frequencies of the roll-in and roll-out coins, dropout during the
search, SHL and KL at the criterion level against hand values (and KL's target
mass on tokens that are never predictions), and the batched engine against
one-at-a-time decoding under the edit and BLEU costs."""

import math

import pytest
import sacrebleu
import torch

import test_rollout as one_at_a_time
import textbook
import tiny
from searnn_fairseq.rollout import reference_lengths, rollout_caps

NO_DROPOUT = ["--dropout", "0"]


def stops_at_once(model, eos):
    """The model's greedy token is always EOS: a learned roll-in then differs from
    the gold at every cell but the last, and a learned roll-out ends at once."""
    with torch.no_grad():
        model.decoder.fc_out.bias[eos] = 50.0


def search_once(flags, pairs, seed, extra=NO_DROPOUT):
    task, model, criterion = tiny.build("lstm", ["--criterion", "searnn_ll", "--cost", "hamming", *flags], extra=extra)
    d = task.target_dictionary
    stops_at_once(model, d.eos())
    sample = tiny.batch(d, pairs)
    model.train()
    torch.manual_seed(seed)
    return d, sample, criterion.search(model, sample)


def within_three_std(hits, trials, p):
    share = hits / trials
    return abs(share - p) <= 3 * math.sqrt(p * (1 - p) / trials), share


# ------------------------------------------------------------ the mixed roll-out coin


MANY = tiny.random_pairs(80, seed=4, min_len=2, max_len=6)


@pytest.mark.parametrize("coin", ["cell", "rollout"])
def test_rollout_coin_per_cell_or_per_rollout(coin):
    flags = ["--rollin", "reference", "--rollout", "mixed", "--rollout-ref-prob", "0.5", "--rollout-coin", coin,
             "--token-sampling", "all"]
    d, _, result = search_once(flags, MANY, seed=0)
    # a forced EOS never runs the network, whatever the coin: leave it out
    coined = result.valid & result.actions.ne(d.eos())
    learned = (result.learned & coined).sum(dim=1)
    slots = coined.sum(dim=1)
    assert (slots == 8).all()  # the 8 letters; the gold's second slot is a duplicate
    all_learned, all_reference = learned == slots, learned == 0
    mixed = ~all_learned & ~all_reference
    cells = result.cells.size(0)
    assert cells > 300
    if coin == "cell":
        assert not mixed.any(), "one coin per cell: its roll-outs are all reference or all learned"
        assert all_learned.sum() > 100 and all_reference.sum() > 100
    else:
        # all 8 alike has probability 2 / 2^8 per cell
        assert mixed.float().mean() > 0.95, mixed.float().mean()
    assert result.num_learned_rollouts == int((result.learned & result.valid).sum())


# ------------------------------------------------------------ coin frequencies


FREQUENT = tiny.random_pairs(600, seed=5, min_len=2, max_len=8)


def test_mixed_rollin_follows_the_reference_with_the_set_probability():
    flags = ["--rollin", "mixed", "--rollin-ref-prob", "0.2", "--rollout", "reference",
             "--token-sampling", "topk", "--sampled-tokens", "1"]
    d, sample, result = search_once(flags, FREQUENT, seed=0)
    target = sample["target"]
    num_cells, _ = reference_lengths(target, d.pad(), d.eos())
    # every cell but the final EOS one: the gold is a letter, the greedy token EOS
    informative = torch.arange(target.size(1)).unsqueeze(0) < (num_cells - 1).unsqueeze(1)
    chosen = result.rollin_tokens[informative]
    followed = chosen.eq(target[informative])
    assert (followed | chosen.eq(d.eos())).all(), "a roll-in step takes the gold or the greedy token"
    trials = int(informative.sum())
    assert trials > 2500
    ok, share = within_three_std(int(followed.sum()), trials, 0.2)
    assert ok, share


@pytest.mark.parametrize("coin", ["cell", "rollout"])
def test_mixed_rollout_is_reference_with_the_set_probability(coin):
    flags = ["--rollin", "reference", "--rollout", "mixed", "--rollout-ref-prob", "0.7", "--rollout-coin", coin,
             "--token-sampling", "uniform", "--sampled-tokens", "3"]
    d, _, result = search_once(flags, FREQUENT, seed=1)
    coined = result.valid & result.actions.ne(d.eos())
    if coin == "cell":
        # one draw per cell: read it off the gold's slot (never EOS but at the last cell)
        drawn = coined[:, 0]
        reference = ~result.learned[:, 0][drawn]
    else:
        reference = ~result.learned[coined]
    trials = reference.numel()
    assert trials > (2500 if coin == "cell" else 8000)
    ok, share = within_three_std(int(reference.sum()), trials, 0.7)
    assert ok, share


# ------------------------------------------------------------ --rollout-dropout


@pytest.mark.parametrize("rollin", ["reference", "learned"])
@pytest.mark.parametrize("keep_dropout", [False, True])
def test_rollout_dropout_makes_the_search_depend_on_the_seed(keep_dropout, rollin):
    flags = ["--criterion", "searnn_ll", "--cost", "hamming", "--rollin", rollin, "--rollout", "learned",
             "--token-sampling", "all"] + (["--rollout-dropout"] if keep_dropout else [])
    task, model, criterion = tiny.build("lstm", flags, extra=["--dropout", "0.5"], seed=2)
    with torch.no_grad():  # larger weights: dropout then changes greedy decisions
        for p in model.parameters():
            p.mul_(5)
    sample = tiny.batch(task.target_dictionary, tiny.random_pairs(12, seed=6, min_len=2, max_len=6))
    model.train()

    def run(seed):
        torch.manual_seed(seed)
        result = criterion.search(model, sample)
        assert model.training
        return result

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first.rollin_tokens, again.rollin_tokens) and torch.equal(first.costs, again.costs)
    same_rollin = torch.equal(first.rollin_tokens, other.rollin_tokens)
    same_costs = torch.equal(first.costs, other.costs)
    if not keep_dropout:
        assert same_rollin and same_costs, "without --rollout-dropout the search runs with dropout off"
        model.eval()
        torch.manual_seed(3)
        assert torch.equal(criterion.search(model, sample).costs, first.costs)
    elif rollin == "reference":
        assert same_rollin and not same_costs, "with --rollout-dropout the learned roll-outs see dropout"
        assert (first.costs != other.costs).float().mean() > 0.1
    else:
        assert not same_rollin, "with --rollout-dropout the learned roll-in sees dropout"


# ------------------------------------------------------------ SHL and KL at the criterion level


HAND_PAIRS = [("abc", "abcd"), ("h", ""), ("gfe", "ba"), ("bb", "cac")]
REF_REF = ["--rollin", "reference", "--rollout", "reference", "--token-sampling", "all", "--cost", "hamming"]


def predictable(d):
    """Tokens a model may predict, listed independently of the plugin."""
    never = {d.pad(), d.bos(), d.unk()}
    return [i for i, s in enumerate(d.symbols) if i not in never and not s.startswith("madeupword")]


def hand_cells(task, model, sample):
    """(logits (V,), {token: Hamming cost}) of every cell under reference roll-in and
    roll-out: forcing a at cell t gives ref[:t] + [a] + ref[t+1:], forcing EOS ref[:t]."""
    d = task.target_dictionary
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]  # the roll-in is the gold: teacher forcing
    target = sample["target"]
    for b in range(target.size(0)):
        tokens = [x for x in target[b].tolist() if x != d.pad()]
        ref = tokens[:-1]
        for t in range(len(tokens)):
            costs = {}
            for a in predictable(d):
                hyp = ref[:t] if a == d.eos() else ref[:t] + [a] + ref[t + 1:]
                costs[a] = textbook.hamming(hyp, ref)
            assert costs[tokens[t]] == 0
            yield logits[b, t].tolist(), costs


def log_softmax(scores):
    top = max(scores)
    norm = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - norm for s in scores]


def test_shl_criterion_equals_the_hand_value():
    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_shl", "--cost-scale", "2", *REF_REF], extra=NO_DROPOUT)
    sample = tiny.batch(task.target_dictionary, HAND_PAIRS)
    model.train()
    loss, sample_size, log = crit(model, sample)
    expected = 0.0
    for scores, costs in hand_cells(task, model, sample):
        worst = max(costs.values())  # tokens never rolled out take the worst cost of their cell
        (gold,) = [a for a in costs if costs[a] == 0]  # the ground truth, the only zero cost
        expected += max(s + 2 * costs.get(v, worst) for v, s in enumerate(scores)) - scores[gold]
    assert sample_size == log["cells"] == sample["ntokens"]
    assert math.isclose(loss.item(), expected, rel_tol=1e-5), (loss.item(), expected)


def test_kl_criterion_equals_the_hand_value():
    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_kl", "--temperature", "2", *REF_REF],
                                   extra=NO_DROPOUT)
    sample = tiny.batch(task.target_dictionary, HAND_PAIRS)
    model.train()
    loss, sample_size, _ = crit(model, sample)
    expected = 0.0
    for scores, costs in hand_cells(task, model, sample):
        # q over the rolled-out tokens only; p over the whole dictionary
        weights = {a: math.exp(-c / 2) for a, c in costs.items()}
        total = sum(weights.values())
        log_p = log_softmax(scores)
        expected -= sum(w / total * log_p[a] for a, w in weights.items())
    assert sample_size == sample["ntokens"]
    assert math.isclose(loss.item(), expected, rel_tol=1e-5), (loss.item(), expected)


def logits_after_backward(crit, model, sample):
    """The decoder's gradient-carrying output logits, with their gradient after the loss's backward."""
    captured = []

    def keep_logits(module, args, output):
        if output[0].requires_grad:
            output[0].retain_grad()
            captured.append(output[0])

    handle = model.decoder.register_forward_hook(keep_logits)
    try:
        loss, _, _ = crit(model, sample)
        loss.backward()
    finally:
        handle.remove()
    assert len(captured) == 1, "one gradient-carrying forward"
    return captured[0]


def target_distributions(crit, model, sample):
    """The KL loss's target q at every cell, read off the gradient: for
    -sum q log softmax(s), dloss/ds = softmax(s) - q."""
    logits = logits_after_backward(crit, model, sample)
    cells = logits.grad.abs().sum(dim=-1) > 0
    return torch.softmax(logits.detach()[cells], dim=-1) - logits.grad[cells]


@pytest.mark.parametrize("policies", [REF_REF, ["--rollin", "learned", "--rollout", "mixed", "--token-sampling", "all",
                                                "--cost", "edit"]])
def test_kl_puts_no_target_mass_on_tokens_that_are_never_predictions(policies):
    """Padding, BOS, UNK and the fillers are never rolled out: they have no cost,
    so with --token-sampling all the soft target gives them nothing (it once gave
    them the worst cost, hence a positive share of q)."""
    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_kl", *policies], extra=NO_DROPOUT)
    d = task.target_dictionary
    sample = tiny.batch(d, HAND_PAIRS)
    model.train()
    torch.manual_seed(0)
    q = target_distributions(crit, model, sample)
    assert q.size(0) == sample["ntokens"]
    never = torch.ones(len(d), dtype=torch.bool)
    never[predictable(d)] = False
    assert never.sum() == 7
    assert q[:, never].abs().max().item() < 1e-6, q[:, never].sum(dim=1)
    assert torch.allclose(q[:, ~never].sum(dim=1), torch.ones(q.size(0)), atol=1e-5)
    assert (q[:, ~never] > 0).all()



def test_kl_full_softmax_targets_the_sampled_tokens_and_trains_the_rest_down():
    """With token sampling and --full-softmax, KL's p is over the whole dictionary: the soft
    target sits on the sampled tokens only (summing to 1), every other token has q = 0 and gets
    gradient p (trained down); the sampled softmax instead leaves the other tokens' logits alone."""
    sampling = ["--token-sampling", "topk", "--sampled-tokens", "3"]
    task, model, crit = tiny.build("lstm", ["--criterion", "searnn_kl", *REF_REF, *sampling, "--full-softmax"],
                                   extra=NO_DROPOUT)
    sample = tiny.batch(task.target_dictionary, HAND_PAIRS)
    model.train()
    q = target_distributions(crit, model, sample)
    assert q.size(0) == sample["ntokens"]
    targeted = q.abs() > 1e-6
    assert (targeted.sum(dim=1) <= 3).all() and (targeted.sum(dim=1) >= 1).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(q.size(0)), atol=1e-5)
    assert (q >= -1e-6).all()

    _, model_s, crit_s = tiny.build("lstm", ["--criterion", "searnn_kl", *REF_REF, *sampling], extra=NO_DROPOUT)
    model_s.load_state_dict(model.state_dict())
    model_s.train()
    logits = logits_after_backward(crit_s, model_s, sample)
    grad = logits.grad.reshape(-1, logits.size(-1))
    cells = grad.abs().sum(dim=1) > 0
    assert ((grad[cells].abs() > 0).sum(dim=1) <= 3).all(), "the sampled softmax touches the sampled logits only"

# ------------------------------------------------------------ the engine under edit and BLEU


def edit_cost(hyp, ref):
    return textbook.levenshtein(hyp, ref) / max(len(ref), 1)


def bleu_cost(hyp, ref):
    def words(ids):
        return " ".join(f"w{i}" for i in ids)

    return 1 - sacrebleu.sentence_bleu(words(hyp), [words(ref)], tokenize="none").score / 100


COSTS = {"edit": (edit_cost, 1e-6), "bleu": (bleu_cost, 1e-4)}
ENGINE_SETTINGS = {
    "learned-rollin": ["--rollin", "learned", "--rollout", "mixed", "--rollout-coin", "rollout",
                       "--token-sampling", "uniform", "--sampled-tokens", "4"],
    "mixed-rollin-best": ["--rollin", "mixed", "--rollout", "mixed", "--rollout-coin", "rollout",
                          "--token-sampling", "topk", "--sampled-tokens", "3", "--reference-rollout", "best"],
}


@pytest.mark.parametrize("setting", sorted(ENGINE_SETTINGS))
@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize("arch", one_at_a_time.ARCHS)
def test_batched_costs_equal_one_at_a_time_decoding_under_edit_and_bleu(arch, cost, setting):
    flags = ["--criterion", "searnn_llcas", "--cost", cost, *ENGINE_SETTINGS[setting]]
    task, model, criterion = tiny.build(arch, flags, seed=1)
    d = task.target_dictionary
    sample = tiny.batch(d, one_at_a_time.PAIRS)
    model.train()
    torch.manual_seed(3)
    result = criterion.search(model, sample)

    model.eval()
    score, tolerance = COSTS[cost]
    best = "--reference-rollout" in ENGINE_SETTINGS[setting]
    target = sample["target"]
    num_cells, ref_lens = reference_lengths(target, d.pad(), d.eos())
    caps = rollout_caps(ref_lens, criterion.policy, model)
    kinds = set()
    with torch.no_grad():
        for b in range(target.size(0)):
            if setting == "learned-rollin":
                trajectory = result.rollin_tokens[b, : num_cells[b]].tolist()
                source = one_at_a_time.one_sentence(sample["net_input"], b)
                assert trajectory == one_at_a_time.greedy_rollin(model, source, int(num_cells[b]), criterion.action_mask)
        for m, (b, t) in enumerate(result.cells.tolist()):
            ref = target[b, : ref_lens[b]].tolist()
            prefix = result.rollin_tokens[b, :t].tolist()
            for k, a in enumerate(result.actions[m].tolist()):
                if not result.valid[m, k]:
                    continue
                if a == d.eos():
                    expected, kind = score(prefix, ref), "eos"
                elif result.learned[m, k]:
                    source = one_at_a_time.one_sentence(sample["net_input"], b)
                    hyp = one_at_a_time.decode_one(model, source, prefix + [a], int(caps[b]), criterion.action_mask, d.eos())
                    expected, kind = score(hyp, ref), "learned"
                elif best:  # the best reference suffix (exact for edit distance)
                    expected = min(score(prefix + [a] + ref[j:], ref) for j in range(len(ref) + 1))
                    kind = "reference"
                else:
                    expected, kind = score(prefix + [a] + ref[t + 1:], ref), "reference"
                kinds.add(kind)
                got = result.costs[m, k].item()
                assert abs(got - expected) <= tolerance, (b, t, a, kind, got, expected)
    assert kinds == {"eos", "learned", "reference"}
