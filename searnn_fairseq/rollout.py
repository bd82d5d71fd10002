"""The roll-in / roll-out engine: cost vectors for SEARNN, batched.

Generic over fairseq encoder-decoder models whose decoder is a
``FairseqIncrementalDecoder`` (fairseq's lstm and transformer, our searnn_gru).
It knows nothing of the task: costs come from a ``SequenceCost`` and the tokens
to try at each cell from a caller-supplied ``choose_actions``.

How the batching works. All rows share one incremental state: the roll-in rows
(one per sentence) and every live learned roll-out. Decoding runs in absolute
time: at step t every row consumes its token for position t - 1 and predicts
position t. A roll-out from cell t branches off its sentence's roll-in row right
after step t (the roll-in state has then read the prefix y_<t), so every row of
the batch always sits at the same position. That keeps the transformer's
positional embeddings and key/value caches valid without padding, and rolls
out every (sentence, cell, token) of the batch in at most
``max roll-out length`` decoder calls. Branching, finishing and dropping rows
are one ``reorder_incremental_state`` each. Reference roll-outs and roll-outs
whose forced token is EOS never run the network.

Everything here runs under ``torch.no_grad()`` with the model in eval mode
(dropout off, unless asked): the gradient-carrying forward on the roll-in
trajectory is the criterion's job, through ``model(...)``.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

ROLLIN_CHOICES = ("reference", "learned", "mixed")
ROLLOUT_CHOICES = ("reference", "learned", "mixed")
ROLLOUT_COIN_CHOICES = ("cell", "rollout")


@dataclass
class SearchPolicy:
    """The search side of learning to search."""

    rollin: str = "learned"
    rollin_ref_prob: float = 0.5  # mixed roll-in: per-step chance to follow the reference
    rollout: str = "mixed"
    rollout_ref_prob: float = 0.5  # mixed roll-out: chance to follow the reference
    rollout_coin: str = "cell"  # mixed roll-out: one coin per cell (all its tokens) or per roll-out
    max_len_a: float = 1.0  # learned roll-outs stop at EOS or at a * ref_len + b tokens
    max_len_b: int = 5
    dropout: bool = False  # keep the model's dropout on during roll-in/roll-out


@dataclass
class SearchResult:
    rollin_tokens: Tensor  # (B, T) the roll-in trajectory; pad past each target
    cells: Tensor  # (M, 2) (sentence, position) of each cell that got a cost vector
    actions: Tensor  # (M, K) tokens forced at those cells; slot 0 is the ground truth
    valid: Tensor  # (M, K) False for duplicate slots, which are not rolled out
    costs: Tensor  # (M, K) cost of each roll-out (0 where not valid)
    learned: Tensor  # (M, K) True where the roll-out ran the model (learned policy)
    num_rollouts: int = 0
    num_learned_rollouts: int = 0
    decoded_tokens: int = 0  # decoder row-steps spent, roll-in included


# (policy_logits (n, V), gold (n,)) -> (tokens (n, K), valid (n, K))
ActionChooser = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


@contextmanager
def eval_mode(model, keep_dropout: bool = False):
    """Evaluate without touching the caller's train/eval flag for good."""
    was_training = model.training
    if not keep_dropout:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def reorder_incremental_state(decoder, state: Dict, new_order: Tensor) -> None:
    """``decoder.reorder_incremental_state_scripting`` that also works when the
    row count does not change.

    fairseq's MultiheadAttention skips its encoder-decoder key/value cache when
    the new order has as many rows as the cache (a beam-search shortcut, since
    beams of one sentence share it). Our reorders permute, duplicate and drop
    rows of different sentences, so we reorder that cache ourselves first; the
    shortcut then sees a cache of the right size and leaves it alone.
    """
    for module in decoder.modules():
        if getattr(module, "encoder_decoder_attention", False) and hasattr(
            module, "_get_input_buffer"
        ):
            buffer = module._get_input_buffer(state)
            if buffer:
                for key, value in buffer.items():
                    if value is not None:
                        buffer[key] = value.index_select(0, new_order)
                module._set_input_buffer(state, buffer)
    decoder.reorder_incremental_state_scripting(state, new_order)


def encoder_out_for_rows(model, encoder_out: Dict, sentences: Tensor) -> Dict:
    """The encoder output row-aligned with decoder rows reading ``sentences``.

    A decoder that declares ``reads_encoder_out_once`` (searnn_gru) keeps what it
    needs in its incremental state after its first step, so the copy, which for
    thousands of roll-out rows costs as much as the decoder step, is skipped.
    """
    if getattr(model.decoder, "reads_encoder_out_once", False):
        return encoder_out
    return model.encoder.reorder_encoder_out(encoder_out, sentences)


def check_incremental(model) -> None:
    from fairseq.models import FairseqIncrementalDecoder

    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, FairseqIncrementalDecoder):
        raise ValueError(
            "SEARNN needs an encoder-decoder model whose decoder supports incremental "
            f"decoding (a FairseqIncrementalDecoder); got {type(decoder).__name__}"
        )


def reference_lengths(target: Tensor, pad: int, eos: int) -> Tuple[Tensor, Tensor]:
    """(cells per sentence incl. the final EOS cell, reference length without EOS)."""
    cells = target.ne(pad).sum(dim=1)
    last = target.gather(1, (cells - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return cells, cells - last.eq(eos).long()


def rollout_caps(ref_lens: Tensor, policy: SearchPolicy, model) -> Tensor:
    caps = torch.floor(policy.max_len_a * ref_lens.float() + policy.max_len_b).long()
    return clamp_to_decoder(torch.maximum(caps, ref_lens), model)


def validation_caps(src_lengths: Tensor, max_len_a: float, max_len_b: int, model) -> Tensor:
    """Hypothesis length limits as fairseq-generate sets them (a * source length + b), not
    from the reference: validation must decode as the test does, and a model that never
    emits EOS must pay for its whole output, as fairseq-generate's score makes it pay."""
    caps = torch.floor(max_len_a * src_lengths.float() + max_len_b).long()
    return clamp_to_decoder(caps, model)


def clamp_to_decoder(caps: Tensor, model) -> Tensor:
    limit = model.max_decoder_positions()
    if limit is not None and limit < 1e8:
        # the decoder reads BOS plus the hypothesis, and must still predict EOS
        caps = caps.clamp(max=int(limit) - 2)
    return caps.clamp(min=1)


class _FinishedRollouts:
    """Collects the hypotheses of finished learned roll-outs."""

    def __init__(self):
        self.ids: List[Tensor] = []
        self.hyps: List[Tensor] = []
        self.lens: List[Tensor] = []

    def add(self, ids: Tensor, hyps: Tensor, lens: Tensor) -> None:
        if ids.numel():
            self.ids.append(ids)
            self.hyps.append(hyps)
            self.lens.append(lens)

    def padded(self, pad: int, device) -> Tuple[Tensor, Tensor, Tensor]:
        if not self.ids:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty.view(0, 1), empty
        width = max(h.size(1) for h in self.hyps)
        hyps = [torch.nn.functional.pad(h, (0, width - h.size(1)), value=pad) for h in self.hyps]
        return torch.cat(self.ids), torch.cat(hyps), torch.cat(self.lens)


def search(
    model,
    net_input: Dict[str, Tensor],
    target: Tensor,
    cell_mask: Tensor,
    choose_actions: ActionChooser,
    cost,
    action_mask: Tensor,
    policy: SearchPolicy,
    pad: int,
    eos: int,
) -> SearchResult:
    """Roll in, then roll out every chosen token of every cell in ``cell_mask``.

    target: (B, T) right-padded references ending in EOS, as fairseq collates them.
    cell_mask: (B, T) cells that get a cost vector (only cells inside the target).
    action_mask: (V,) tokens that can be predicted; roll-in and roll-out argmaxes
    are taken over these only.
    """
    check_incremental(model)
    device = target.device
    bsz, width = target.shape
    num_cells, ref_lens = reference_lengths(target, pad, eos)
    cell_mask = cell_mask & (torch.arange(width, device=device).unsqueeze(0) < num_cells.unsqueeze(1))
    caps = rollout_caps(ref_lens, policy, model)
    forbidden = ~action_mask.to(device)

    with eval_mode(model, keep_dropout=policy.dropout):
        decoder = model.decoder
        encoder_out = model.encoder.forward_torchscript(net_input)
        state: Dict[str, Dict[str, Optional[Tensor]]] = {}

        rollin = target.new_full((bsz, width), pad)
        tokens = target.new_full((bsz, 1), eos)  # every row's input so far, BOS first
        row_sentence = torch.arange(bsz, device=device)
        row_rollout = torch.full((bsz,), -1, dtype=torch.long, device=device)
        row_encoder_out = encoder_out
        num_rollin_rows = bsz

        cells: List[Tensor] = []
        actions: List[Tensor] = []
        valids: List[Tensor] = []
        learned_masks: List[Tensor] = []
        # roll-outs that need no network: reference policy, or a forced EOS
        quick_ids: List[Tensor] = []
        quick_cells: List[Tensor] = []
        finished = _FinishedRollouts()
        num_rollouts = 0
        num_learned = 0
        decoded = 0
        max_steps = int(caps.max().item()) + 1 if bsz else 0

        for step in range(max(max_steps, width)):
            num_rows = tokens.size(0)
            if num_rows == 0:
                break
            logits = decoder(tokens, encoder_out=row_encoder_out, incremental_state=state)[0][:, -1, :]
            decoded += num_rows
            greedy = logits.masked_fill(forbidden, float("-inf")).argmax(dim=1)
            next_tokens = greedy.clone()

            # roll-in rows choose their token for this position
            if num_rollin_rows:
                gold_now = target[:, step]
                if policy.rollin == "reference":
                    choice = gold_now
                elif policy.rollin == "learned":
                    choice = greedy[:bsz]
                else:
                    follow = torch.rand(bsz, device=device) < policy.rollin_ref_prob
                    choice = torch.where(follow, gold_now, greedy[:bsz])
                inside = step < num_cells
                rollin[:, step] = torch.where(inside, choice, torch.full_like(choice, pad))
                # sentences past their end keep feeding EOS: their rows are idle
                next_tokens[:bsz] = torch.where(inside, choice, torch.full_like(choice, eos))

            # learned roll-outs already running: stop at EOS or at the cap
            hyp_len_if_continuing = step + 1
            is_rollout = row_rollout >= 0
            ended = is_rollout & (
                greedy.eq(eos) | (hyp_len_if_continuing >= caps[row_sentence])
            )
            if ended.any():
                rows = ended.nonzero().squeeze(1)
                with_token = greedy[rows].ne(eos)
                hyps = torch.cat([tokens[rows, 1:], greedy[rows].unsqueeze(1)], dim=1)
                lens = torch.full_like(rows, step) + with_token.long()
                hyps = hyps.masked_fill(
                    torch.arange(hyps.size(1), device=device).unsqueeze(0) >= lens.unsqueeze(1), pad
                )
                finished.add(row_rollout[rows], hyps, lens)

            # new roll-outs branch off the roll-in at this cell
            branch_rows = tokens.new_zeros(0)
            branch_tokens = tokens.new_zeros(0)
            branch_ids = tokens.new_zeros(0)
            if step < width:
                at_cell = cell_mask[:, step].nonzero().squeeze(1)
                if at_cell.numel():
                    chosen, valid = choose_actions(logits[at_cell], target[at_cell, step])
                    k = chosen.size(1)
                    ids = num_rollouts + torch.arange(at_cell.numel() * k, device=device).view(-1, k)
                    num_rollouts += ids.numel()
                    cells.append(torch.stack([at_cell, torch.full_like(at_cell, step)], dim=1))
                    actions.append(chosen)
                    valids.append(valid)
                    quick = chosen.eq(eos)
                    if policy.rollout == "reference":
                        quick = torch.ones_like(quick)
                    elif policy.rollout == "mixed":
                        coin_shape = (chosen.size(0), 1) if policy.rollout_coin == "cell" else chosen.shape
                        coins = torch.rand(coin_shape, device=device) < policy.rollout_ref_prob
                        quick |= coins.expand_as(chosen)
                    quick &= valid
                    learned = valid & ~quick
                    learned_masks.append(learned)
                    quick_ids.append(ids[quick])
                    quick_cells.append(at_cell.unsqueeze(1).expand_as(chosen)[quick])
                    branch_rows = at_cell.unsqueeze(1).expand_as(chosen)[learned]
                    branch_tokens = chosen[learned]
                    branch_ids = ids[learned]
                    num_learned += branch_ids.numel()
                    # a roll-out capped right at its forced token is already done
                    done_now = hyp_len_if_continuing >= caps[branch_rows]
                    if done_now.any():
                        rows = branch_rows[done_now]
                        hyps = torch.cat([tokens[rows, 1:], branch_tokens[done_now].unsqueeze(1)], dim=1)
                        finished.add(branch_ids[done_now], hyps, torch.full_like(rows, step + 1))
                        branch_rows, branch_tokens = branch_rows[~done_now], branch_tokens[~done_now]
                        branch_ids = branch_ids[~done_now]

            # the next batch: live roll-in rows, live roll-outs, new branches
            keep = ~ended
            if step + 1 >= width:
                keep[:num_rollin_rows] = False
                num_rollin_rows = 0
            kept = keep.nonzero().squeeze(1)
            new_order = torch.cat([kept, branch_rows])
            if new_order.numel() == 0:
                break
            tokens = torch.cat(
                [tokens[new_order], torch.cat([next_tokens[kept], branch_tokens]).unsqueeze(1)], dim=1
            )
            row_rollout = torch.cat([row_rollout[kept], branch_ids])
            if not torch.equal(new_order, torch.arange(num_rows, device=device)):
                row_sentence = row_sentence[new_order]
                reorder_incremental_state(decoder, state, new_order)
                row_encoder_out = encoder_out_for_rows(model, encoder_out, row_sentence)

    return _score(
        cost, target, rollin, ref_lens, cells, actions, valids, learned_masks, quick_ids, quick_cells,
        finished, num_rollouts, num_learned, decoded, pad,
    )


def _score(
    cost, target, rollin, ref_lens, cells, actions, valids, learned_masks, quick_ids, quick_cells,
    finished, num_rollouts, num_learned, decoded, pad,
) -> SearchResult:
    """Build every roll-out's hypothesis and cost them all in one call."""
    device = target.device
    if not cells:
        empty = target.new_zeros(0, 1)
        return SearchResult(
            rollin, target.new_zeros(0, 2), empty, empty.bool(), empty.float(), empty.bool(), 0, 0, decoded
        )
    cells_t = torch.cat(cells)
    actions_t = torch.cat(actions)
    valid_t = torch.cat(valids)
    k = actions_t.size(1)
    flat_actions = actions_t.view(-1)

    ids_q = torch.cat(quick_ids)
    sent_q = torch.cat(quick_cells)
    cell_pos = cells_t[:, 1].unsqueeze(1).expand(-1, k).reshape(-1)
    hyps_q, lens_q = cost.reference_rollout(
        rollin[sent_q], cell_pos[ids_q], flat_actions[ids_q], target[sent_q], ref_lens[sent_q]
    )
    ids_l, hyps_l, lens_l = finished.padded(pad, device)

    width = max(hyps_q.size(1), hyps_l.size(1), 1)
    hyps = torch.cat(
        [
            torch.nn.functional.pad(hyps_q, (0, width - hyps_q.size(1)), value=pad),
            torch.nn.functional.pad(hyps_l, (0, width - hyps_l.size(1)), value=pad),
        ]
    )
    ids = torch.cat([ids_q, ids_l])
    sentence_of_rollout = cells_t[:, 0].unsqueeze(1).expand(-1, k).reshape(-1)[ids]
    scored = cost(hyps, torch.cat([lens_q, lens_l]), target[sentence_of_rollout], ref_lens[sentence_of_rollout])
    costs = torch.zeros(num_rollouts, device=device)
    costs[ids] = scored.float()
    return SearchResult(
        rollin_tokens=rollin,
        cells=cells_t,
        actions=actions_t,
        valid=valid_t,
        costs=costs.view(-1, k),
        learned=torch.cat(learned_masks),
        num_rollouts=int(valid_t.sum().item()),
        num_learned_rollouts=num_learned,
        decoded_tokens=decoded,
    )


def action_mask(dictionary) -> Tensor:
    """(V,) True for tokens that are real predictions: not padding, BOS, UNK or
    the fillers fairseq adds to round the dictionary size."""
    actions = torch.ones(len(dictionary), dtype=torch.bool)
    for index in {dictionary.pad(), dictionary.bos(), dictionary.unk()}:
        actions[index] = False
    for index, symbol in enumerate(dictionary.symbols):
        if symbol.startswith("madeupword"):
            actions[index] = False
    return actions


def greedy_decode(
    model, net_input: Dict[str, Tensor], caps: Tensor, action_mask: Tensor, eos: int, pad: int, min_len: int = 0
):
    """Plain greedy decoding (validation, and the naive reference in tests and
    benchmarks): returns right-padded hypotheses without EOS and their lengths.
    EOS cannot end a hypothesis shorter than ``min_len`` (fairseq-generate's ``--min-len``)."""
    bsz = caps.size(0)
    device = caps.device
    forbidden = ~action_mask.to(device)
    forbidden_before_min_len = forbidden.clone()
    forbidden_before_min_len[eos] = True
    with eval_mode(model):
        encoder_out = model.encoder.forward_torchscript(net_input)
        row_encoder_out = encoder_out
        state: Dict = {}
        tokens = torch.full((bsz, 1), eos, dtype=torch.long, device=device)
        rows = torch.arange(bsz, device=device)
        out = torch.full((bsz, int(caps.max().item()) if bsz else 0), pad, dtype=torch.long, device=device)
        lens = caps.clone()
        for step in range(out.size(1) + 1):
            if rows.numel() == 0:
                break
            logits = model.decoder(tokens, encoder_out=row_encoder_out, incremental_state=state)[0][:, -1, :]
            step_forbidden = forbidden_before_min_len if step < min_len else forbidden
            best = logits.masked_fill(step_forbidden, float("-inf")).argmax(dim=1)
            stop = best.eq(eos) | (step >= caps[rows])
            lens[rows[stop]] = step
            go = ~stop
            if step < out.size(1):
                out[rows[go], step] = best[go]
            if not go.any():
                break
            keep = go.nonzero().squeeze(1)
            rows = rows[keep]
            tokens = torch.cat([tokens[keep], best[keep].unsqueeze(1)], dim=1)
            if keep.numel() != go.numel():
                reorder_incremental_state(model.decoder, state, keep)
                row_encoder_out = encoder_out_for_rows(model, encoder_out, rows)
    return out, lens
