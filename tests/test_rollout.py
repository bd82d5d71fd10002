"""The batched roll-out engine against a plain one-roll-out-at-a-time decoder."""

import pytest
import torch

import textbook
import tiny
from searnn_fairseq.rollout import reference_lengths, rollout_caps

ARCHS = ["lstm", "transformer", "searnn_gru", "searnn_gru_aligned"]

SEARCH_SETTINGS = {
    "all-tokens-learned": ["--token-sampling", "all", "--rollin", "learned", "--rollout", "learned"],
    "topk-cells-mixed": [
        "--token-sampling", "topk", "--sampled-tokens", "3", "--sampled-cells", "2",
        "--rollin", "reference", "--rollout", "mixed",
    ],
    "uniform-mixed-chunked": [
        "--token-sampling", "uniform", "--sampled-tokens", "4", "--rollin", "mixed",
        "--rollout", "mixed", "--rollout-chunk-size", "2",
    ],
    "policy-learned-short-cap": [
        "--token-sampling", "policy", "--sampled-tokens", "2", "--rollin", "learned",
        "--rollout", "learned", "--rollout-max-len-a", "0.5", "--rollout-max-len-b", "0",
    ],
}

PAIRS = [("abc", "abcd"), ("h", ""), ("gfedc", "abcde"), ("bb", "c"), ("aceg", "hhh")]


def decode_one(model, net_input, prefix, cap, action_mask, eos):
    """Teacher-force BOS + prefix on a batch of one, then decode greedily to EOS or the cap."""
    encoder_out = model.encoder.forward_torchscript(net_input)
    state = {}
    fed = [eos]
    hyp = list(prefix)
    logits = None
    for token in [None] + list(prefix):
        if token is not None:
            fed.append(token)
        logits = model.decoder(torch.tensor([fed]), encoder_out=encoder_out, incremental_state=state)[0][0, -1]
    while len(hyp) < cap:
        best = int(logits.masked_fill(~action_mask, float("-inf")).argmax())
        if best == eos:
            break
        hyp.append(best)
        fed.append(best)
        logits = model.decoder(torch.tensor([fed]), encoder_out=encoder_out, incremental_state=state)[0][0, -1]
    return hyp


def greedy_rollin(model, net_input, length, action_mask):
    """The learned roll-in: greedy predictions fed back for exactly `length` cells."""
    encoder_out = model.encoder.forward_torchscript(net_input)
    state = {}
    fed = [model.decoder.dictionary.eos()]
    out = []
    for _ in range(length):
        logits = model.decoder(torch.tensor([fed]), encoder_out=encoder_out, incremental_state=state)[0][0, -1]
        best = int(logits.masked_fill(~action_mask, float("-inf")).argmax())
        out.append(best)
        fed.append(best)
    return out


def one_sentence(net_input, b, pad=1):
    """Sentence b alone, without the batch's padding."""
    tokens = net_input["src_tokens"][b]
    tokens = tokens[tokens.ne(pad)].unsqueeze(0)
    return {"src_tokens": tokens, "src_lengths": torch.tensor([tokens.size(1)])}


@pytest.mark.parametrize("setting", sorted(SEARCH_SETTINGS))
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_rollout_costs_equal_one_at_a_time_decoding(arch, setting):
    flags = ["--criterion", "searnn_ll", "--cost", "hamming", *SEARCH_SETTINGS[setting]]
    task, model, criterion = tiny.build(arch, flags, seed=1)
    d = task.target_dictionary
    sample = tiny.batch(d, PAIRS)
    model.train()
    torch.manual_seed(3)
    result = criterion.search(model, sample)
    assert model.training, "the search must leave the model in training mode"

    model.eval()
    target = sample["target"]
    num_cells, ref_lens = reference_lengths(target, d.pad(), d.eos())
    caps = rollout_caps(ref_lens, criterion.policy, model)
    action_mask = criterion.action_mask
    rollin_policy = SEARCH_SETTINGS[setting][SEARCH_SETTINGS[setting].index("--rollin") + 1]
    checked_learned = 0
    with torch.no_grad():
        for b in range(target.size(0)):
            trajectory = result.rollin_tokens[b, : num_cells[b]].tolist()
            if rollin_policy == "learned":
                assert trajectory == greedy_rollin(model, one_sentence(sample["net_input"], b), int(num_cells[b]), action_mask)
            elif rollin_policy == "reference":
                assert trajectory == target[b, : num_cells[b]].tolist()
        for m, (b, t) in enumerate(result.cells.tolist()):
            ref = target[b, : ref_lens[b]].tolist()
            prefix = result.rollin_tokens[b, :t].tolist()
            assert result.actions[m, 0] == target[b, t], "the ground truth is always rolled out"
            for k, a in enumerate(result.actions[m].tolist()):
                if not result.valid[m, k]:
                    continue
                if a == d.eos():
                    hyp = prefix
                elif result.learned[m, k]:
                    hyp = decode_one(model, one_sentence(sample["net_input"], b), prefix + [a], int(caps[b]), action_mask, d.eos())
                    checked_learned += 1
                else:
                    hyp = prefix + [a] + ref[t + 1 :]
                assert result.costs[m, k].item() == float(textbook.hamming(hyp, ref)), (b, t, a, hyp, ref)
    if "learned" in setting or "mixed" in setting:
        assert checked_learned > 0


def test_every_cell_and_token_is_rolled_out_once():
    task, model, criterion = tiny.build("lstm", ["--criterion", "searnn_ll", "--token-sampling", "all"])
    d = task.target_dictionary
    sample = tiny.batch(d, PAIRS)
    result = criterion.search(model, sample)
    num_cells, _ = reference_lengths(sample["target"], d.pad(), d.eos())
    assert result.cells.size(0) == int(num_cells.sum())
    num_actions = int(criterion.action_mask.sum())
    # every action once per cell; the ground truth's duplicate slot is skipped
    assert result.num_rollouts == result.cells.size(0) * num_actions
    assert (result.valid.sum(dim=1) == num_actions).all()


def test_transformer_cross_attention_cache_follows_a_same_size_reorder():
    """fairseq skips reordering the cross-attention cache when the row count is
    unchanged (a beam-search shortcut); our reorder must not."""
    from searnn_fairseq.rollout import reorder_incremental_state

    task, model, _ = tiny.build("transformer")
    model.eval()
    d = task.target_dictionary
    sample = tiny.batch(d, PAIRS[:3])
    net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
    with torch.no_grad():
        enc = model.encoder.forward_torchscript(net_input)
        state = {}
        tokens = torch.full((3, 1), d.eos())
        model.decoder(tokens, encoder_out=enc, incremental_state=state)
        order = torch.tensor([2, 0, 1])
        reorder_incremental_state(model.decoder, state, order)
        enc_r = model.encoder.reorder_encoder_out(enc, order)
        step = torch.cat([tokens, torch.full((3, 1), d.index("a"))], dim=1)
        got = model.decoder(step, encoder_out=enc_r, incremental_state=state)[0][:, -1]
        fresh = {}
        model.decoder(tokens, encoder_out=enc_r, incremental_state=fresh)
        want = model.decoder(step, encoder_out=enc_r, incremental_state=fresh)[0][:, -1]
    assert torch.allclose(got, want, atol=1e-5)


def test_a_roll_in_that_emits_eos_early_keeps_costs_exact_and_loss_finite():
    flags = ["--criterion", "searnn_llcas", "--cost", "edit", "--rollin", "learned", "--rollout", "learned"]
    task, model, criterion = tiny.build("lstm", flags, seed=2)
    d = task.target_dictionary
    with torch.no_grad():
        model.decoder.fc_out.bias[d.eos()] = 50.0  # the model wants to stop at once
    sample = tiny.batch(d, PAIRS)
    model.train()
    result = criterion.search(model, sample)
    num_cells, ref_lens = reference_lengths(sample["target"], d.pad(), d.eos())
    inside = torch.arange(result.rollin_tokens.size(1)).unsqueeze(0) < num_cells.unsqueeze(1)
    assert result.rollin_tokens[inside].eq(d.eos()).all()
    # a roll-out forced off EOS stops right after its forced token
    for m, (b, t) in enumerate(result.cells.tolist()):
        for k, a in enumerate(result.actions[m].tolist()):
            if not result.valid[m, k]:
                continue
            hyp = [d.eos()] * t + ([] if a == d.eos() else [a])
            ref = sample["target"][b, : ref_lens[b]].tolist()
            expected = textbook.levenshtein(hyp, ref) / max(len(ref), 1)
            assert abs(result.costs[m, k].item() - expected) < 1e-6
    loss = criterion(model, sample)[0]
    loss.backward()
    assert torch.isfinite(loss)

