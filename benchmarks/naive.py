"""The roll-outs of a SearchResult, decoded one (cell, token) pair at a time.

This is what a direct implementation of Algorithm 1 does with the sentences of
a batch in parallel: keep the roll-in state of every cell, then for each cell
and each token start a separate greedy decode from that state. It is the
baseline that shows what ``searnn_fairseq.rollout.search`` buys, and a second
implementation its costs must agree with.
"""

import torch

from searnn_fairseq.rollout import eval_mode, reference_lengths, reorder_incremental_state, rollout_caps


def _copy_state(state):
    # incremental state is {module key: {name: tensor}}, mutated in place by decoders
    return {key: {name: value.clone() if torch.is_tensor(value) else value for name, value in inner.items()}
            for key, inner in state.items()}


def naive_search(model, sample, result, criterion):
    """Costs (M, K) of ``result``'s roll-outs, recomputed pair by pair."""
    target = sample["target"]
    pad, eos = criterion.padding_idx, criterion.eos
    net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
    num_cells, ref_lens = reference_lengths(target, pad, eos)
    caps = rollout_caps(ref_lens, criterion.policy, model)
    forbidden = ~criterion.action_mask.to(target.device)
    costs = torch.zeros_like(result.costs)
    with eval_mode(model):
        decoder = model.decoder
        encoder_out = model.encoder.forward_torchscript(net_input)
        # roll-in along the trajectory, keeping a copy of the state at every cell
        state, snapshots = {}, []
        tokens = torch.full((target.size(0), 1), eos, dtype=torch.long, device=target.device)
        for step in range(target.size(1)):
            decoder(tokens, encoder_out=encoder_out, incremental_state=state)
            snapshots.append(_copy_state(state))
            next_token = result.rollin_tokens[:, step].masked_fill(result.rollin_tokens[:, step].eq(pad), eos)
            tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)

        positions = result.cells[:, 1]
        for t in positions.unique().tolist():
            cells_here = (positions == t).nonzero().squeeze(1)
            sentences = result.cells[cells_here, 0]
            for k in range(result.actions.size(1)):
                forced = result.actions[cells_here, k]
                learned = result.learned[cells_here, k]
                valid = result.valid[cells_here, k]
                hyps, hyp_lens = criterion.cost.reference_rollout(
                    result.rollin_tokens[sentences], torch.full_like(sentences, t), forced,
                    target[sentences], ref_lens[sentences],
                )
                if learned.any():
                    rows = sentences[learned]
                    cont, cont_lens = _greedy_from(
                        decoder, model.encoder, snapshots[t], encoder_out, tokens[rows, : t + 1], rows,
                        forced[learned], caps[rows], forbidden, eos, pad,
                    )
                    width = max(hyps.size(1), cont.size(1))
                    hyps = torch.nn.functional.pad(hyps, (0, width - hyps.size(1)), value=pad)
                    hyps[learned] = torch.nn.functional.pad(cont, (0, width - cont.size(1)), value=pad)
                    hyp_lens = hyp_lens.clone()
                    hyp_lens[learned] = cont_lens
                scored = criterion.cost(hyps, hyp_lens, target[sentences], ref_lens[sentences])
                costs[cells_here, k] = torch.where(valid, scored, torch.zeros_like(scored))
    return costs


def _greedy_from(decoder, encoder, snapshot, encoder_out, prefix, rows, forced, caps, forbidden, eos, pad):
    """Greedy decode of ``rows`` from a roll-in snapshot, with ``forced`` as the next token."""
    state = _copy_state(snapshot)
    reorder_incremental_state(decoder, state, rows)
    enc = encoder.reorder_encoder_out(encoder_out, rows)
    tokens = torch.cat([prefix, forced.unsqueeze(1)], dim=1)
    n = rows.numel()
    width = int(caps.max())
    out = torch.full((n, width), pad, dtype=torch.long, device=rows.device)
    start = prefix.size(1) - 1  # hypothesis positions already fixed: prefix + forced
    out[:, : start + 1] = tokens[:, 1:][:, :width]
    lens = torch.full((n,), start + 1, dtype=torch.long, device=rows.device)
    alive = lens < caps
    while alive.any():
        logits = decoder(tokens, encoder_out=enc, incremental_state=state)[0][:, -1, :]
        best = logits.masked_fill(forbidden, float("-inf")).argmax(dim=1)
        stop = alive & best.eq(eos)
        go = alive & ~stop
        position = tokens.size(1) - 1
        out[go, position] = best[go]
        lens[go] = position + 1
        alive = go & (lens < caps)
        tokens = torch.cat([tokens, best.masked_fill(~go, eos).unsqueeze(1)], dim=1)
    return out, lens
