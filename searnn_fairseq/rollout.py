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
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .vocabulary import action_mask  # noqa: F401  (the engine's callers build its mask from here)

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
    rollin_stop_at_eos: bool = False  # a roll-in ends at its first EOS: later cells get no cost vector


@dataclass
class SearchResult:
    rollin_tokens: Tensor  # (B, T) the roll-in trajectory; pad past each target (or past an EOS it stopped at)
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
        hyps = [F.pad(h, (0, width - h.size(1)), value=pad) for h in self.hyps]
        return torch.cat(self.ids), torch.cat(hyps), torch.cat(self.lens)


@dataclass
class _Branches:
    """Learned roll-outs that start decoding at the next step: the roll-in row
    each one copies, its forced token and its roll-out id."""

    rows: Tensor
    tokens: Tensor
    ids: Tensor

    @classmethod
    def none(cls, like: Tensor) -> "_Branches":
        empty = like.new_zeros(0)
        return cls(empty, empty, empty)

    def select(self, mask: Tensor) -> "_Branches":
        return _Branches(self.rows[mask], self.tokens[mask], self.ids[mask])


@dataclass
class _Rollouts:
    """Every roll-out started so far. Ids count roll-outs in the order they
    start, the K slots of a cell consecutive, so that scattering costs by id and
    viewing them as (-1, K) lines them up with ``cells``."""

    cells: List[Tensor] = field(default_factory=list)  # (n, 2) (sentence, position)
    actions: List[Tensor] = field(default_factory=list)  # (n, K) forced tokens
    valid: List[Tensor] = field(default_factory=list)
    learned: List[Tensor] = field(default_factory=list)
    # roll-outs that need no network (reference policy, or a forced EOS): the
    # cost's reference roll-out finishes them when they are scored
    quick_ids: List[Tensor] = field(default_factory=list)
    quick_sentences: List[Tensor] = field(default_factory=list)
    finished: _FinishedRollouts = field(default_factory=_FinishedRollouts)
    count: int = 0
    learned_count: int = 0
    decoded_tokens: int = 0  # decoder row-steps, roll-in included

    def start(self, sentences: Tensor, position: int, actions: Tensor, valid: Tensor, quick: Tensor):
        """Record the roll-outs of the cells ``(sentences, position)``; returns
        the learned ones' mask and every slot's id, both (n, K)."""
        k = actions.size(1)
        ids = self.count + torch.arange(sentences.numel() * k, device=actions.device).view(-1, k)
        self.count += ids.numel()
        learned = valid & ~quick
        self.cells.append(torch.stack([sentences, torch.full_like(sentences, position)], dim=1))
        self.actions.append(actions)
        self.valid.append(valid)
        self.learned.append(learned)
        self.quick_ids.append(ids[quick])
        self.quick_sentences.append(sentences.unsqueeze(1).expand_as(actions)[quick])
        return learned, ids


class _BatchSearch:
    """The decoding state of one batch: the rows of the shared incremental state
    and what they have produced.

    The first ``num_rollin_rows`` rows are the roll-in's, one per sentence, until
    it has covered the widest target; every other row is a live learned
    roll-out. ``tokens`` holds each row's input so far (BOS first),
    ``row_sentence`` the sentence it reads, ``row_rollout`` its roll-out id
    (-1 on roll-in rows).
    """

    def __init__(self, model, encoder_out: Dict, target: Tensor, cell_mask: Tensor, choose_actions, *,
                 action_mask: Tensor, policy: SearchPolicy, pad: int, eos: int):
        self.model, self.encoder_out, self.target = model, encoder_out, target
        self.choose_actions, self.policy, self.pad, self.eos = choose_actions, policy, pad, eos
        self.device = target.device
        self.bsz, self.width = target.shape
        self.num_cells, self.ref_lens = reference_lengths(target, pad, eos)
        inside = torch.arange(self.width, device=self.device).unsqueeze(0) < self.num_cells.unsqueeze(1)
        self.cell_mask = cell_mask & inside
        self.caps = rollout_caps(self.ref_lens, policy, model)
        self.forbidden = ~action_mask.to(self.device)
        self.rollin = target.new_full((self.bsz, self.width), pad)
        self.rollin_end = self.num_cells  # cells each sentence's roll-in reaches
        self.rollouts = _Rollouts()

        self.state: Dict[str, Dict[str, Optional[Tensor]]] = {}
        self.tokens = target.new_full((self.bsz, 1), eos)
        self.row_sentence = torch.arange(self.bsz, device=self.device)
        self.row_rollout = torch.full((self.bsz,), -1, dtype=torch.long, device=self.device)
        self.row_encoder_out = encoder_out
        self.num_rollin_rows = self.bsz

    def run(self) -> None:
        """Decode, one position per step, until the roll-in has covered every
        target and every learned roll-out has ended."""
        for step in range(self._num_steps()):
            if self.tokens.size(0) == 0:
                break
            logits, greedy = self._decode_step()
            next_tokens = self._roll_in(step, greedy)
            ended = self._finish_ended_rollouts(step, greedy)
            branches = self._branch_off_rollin(step, logits)
            if not self._advance(step, ended, next_tokens, branches):
                break

    def _num_steps(self) -> int:
        longest_rollout = int(self.caps.max().item()) + 1 if self.bsz else 0
        return max(longest_rollout, self.width)

    def _decode_step(self) -> Tuple[Tensor, Tensor]:
        """Every row predicts its next position: (logits, greedy token among the actions)."""
        decoded = self.model.decoder(self.tokens, encoder_out=self.row_encoder_out, incremental_state=self.state)
        logits = decoded[0][:, -1, :]
        self.rollouts.decoded_tokens += self.tokens.size(0)
        greedy = logits.masked_fill(self.forbidden, float("-inf")).argmax(dim=1)
        return logits, greedy

    def _roll_in(self, step: int, greedy: Tensor) -> Tensor:
        """Record the roll-in's token at ``step``; returns every row's next input."""
        next_tokens = greedy.clone()
        if self.num_rollin_rows:
            choice = self._rollin_choice(step, greedy[: self.bsz])
            inside = step < self.rollin_end
            self.rollin[:, step] = torch.where(inside, choice, torch.full_like(choice, self.pad))
            # sentences past their end keep feeding EOS: their rows are idle
            next_tokens[: self.bsz] = torch.where(inside, choice, torch.full_like(choice, self.eos))
            if self.policy.rollin_stop_at_eos:
                stops_here = inside & choice.eq(self.eos)
                self.rollin_end = torch.where(stops_here, torch.full_like(self.rollin_end, step + 1), self.rollin_end)
        return next_tokens

    def _rollin_choice(self, step: int, greedy: Tensor) -> Tensor:
        gold = self.target[:, step]
        if self.policy.rollin == "reference":
            return gold
        if self.policy.rollin == "learned":
            return greedy
        follow = torch.rand(self.bsz, device=self.device) < self.policy.rollin_ref_prob
        return torch.where(follow, gold, greedy)

    def _finish_ended_rollouts(self, step: int, greedy: Tensor) -> Tensor:
        """Learned roll-outs that stop here, at EOS or at their cap, hand in their
        hypotheses; returns the mask of their rows."""
        hyp_len_if_continuing = step + 1
        is_rollout = self.row_rollout >= 0
        ended = is_rollout & (greedy.eq(self.eos) | (hyp_len_if_continuing >= self.caps[self.row_sentence]))
        if ended.any():
            rows = ended.nonzero().squeeze(1)
            with_token = greedy[rows].ne(self.eos)
            hyps = torch.cat([self.tokens[rows, 1:], greedy[rows].unsqueeze(1)], dim=1)
            lens = torch.full_like(rows, step) + with_token.long()
            past_end = torch.arange(hyps.size(1), device=self.device).unsqueeze(0) >= lens.unsqueeze(1)
            self.rollouts.finished.add(self.row_rollout[rows], hyps.masked_fill(past_end, self.pad), lens)
        return ended

    def _branch_off_rollin(self, step: int, logits: Tensor) -> _Branches:
        """Start the roll-outs of the cells at ``step``; returns the learned ones
        that go on decoding from their sentence's roll-in row."""
        if step >= self.width:
            return _Branches.none(self.tokens)
        sentences = (self.cell_mask[:, step] & (step < self.rollin_end)).nonzero().squeeze(1)
        if not sentences.numel():
            return _Branches.none(self.tokens)
        chosen, valid = self.choose_actions(logits[sentences], self.target[sentences, step])
        learned, ids = self.rollouts.start(sentences, step, chosen, valid, self._needs_no_network(chosen, valid))
        branches = _Branches(sentences.unsqueeze(1).expand_as(chosen)[learned], chosen[learned], ids[learned])
        self.rollouts.learned_count += branches.ids.numel()
        return self._finish_capped_at_forced_token(step, branches)

    def _needs_no_network(self, chosen: Tensor, valid: Tensor) -> Tensor:
        """Roll-outs that follow the reference policy, or whose forced token is EOS."""
        quick = chosen.eq(self.eos)
        if self.policy.rollout == "reference":
            quick = torch.ones_like(quick)
        elif self.policy.rollout == "mixed":
            coin_shape = (chosen.size(0), 1) if self.policy.rollout_coin == "cell" else chosen.shape
            coins = torch.rand(coin_shape, device=self.device) < self.policy.rollout_ref_prob
            quick |= coins.expand_as(chosen)
        return quick & valid

    def _finish_capped_at_forced_token(self, step: int, branches: _Branches) -> _Branches:
        """A roll-out capped right at its forced token is done before it decodes."""
        done_now = step + 1 >= self.caps[branches.rows]
        if not done_now.any():
            return branches
        rows = branches.rows[done_now]
        hyps = torch.cat([self.tokens[rows, 1:], branches.tokens[done_now].unsqueeze(1)], dim=1)
        self.rollouts.finished.add(branches.ids[done_now], hyps, torch.full_like(rows, step + 1))
        return branches.select(~done_now)

    def _advance(self, step: int, ended: Tensor, next_tokens: Tensor, branches: _Branches) -> bool:
        """The rows of the next step: live roll-in rows, live roll-outs, new
        branches. False when none is left."""
        keep = ~ended
        if step + 1 >= self.width:
            keep[: self.num_rollin_rows] = False
            self.num_rollin_rows = 0
        kept = keep.nonzero().squeeze(1)
        new_order = torch.cat([kept, branches.rows])
        if new_order.numel() == 0:
            return False
        num_rows = self.tokens.size(0)
        next_inputs = torch.cat([next_tokens[kept], branches.tokens]).unsqueeze(1)
        self.tokens = torch.cat([self.tokens[new_order], next_inputs], dim=1)
        self.row_rollout = torch.cat([self.row_rollout[kept], branches.ids])
        if not torch.equal(new_order, torch.arange(num_rows, device=self.device)):
            self._reorder_rows(new_order)
        return True

    def _reorder_rows(self, new_order: Tensor) -> None:
        self.row_sentence = self.row_sentence[new_order]
        reorder_incremental_state(self.model.decoder, self.state, new_order)
        self.row_encoder_out = encoder_out_for_rows(self.model, self.encoder_out, self.row_sentence)


def search(
    model,
    net_input: Dict[str, Tensor],
    target: Tensor,
    cell_mask: Tensor,
    choose_actions: ActionChooser,
    cost,
    *,
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
    with eval_mode(model, keep_dropout=policy.dropout):
        encoder_out = model.encoder.forward_torchscript(net_input)
        batch = _BatchSearch(
            model, encoder_out, target, cell_mask, choose_actions,
            action_mask=action_mask, policy=policy, pad=pad, eos=eos,
        )
        batch.run()
    return _score(cost, batch)


def _score(cost, batch: _BatchSearch) -> SearchResult:
    """Build every roll-out's hypothesis and cost them all in one call."""
    record = batch.rollouts
    if not record.cells:
        empty = batch.target.new_zeros(0, 1)
        return SearchResult(
            batch.rollin, batch.target.new_zeros(0, 2), empty, empty.bool(), empty.float(), empty.bool(),
            0, 0, record.decoded_tokens,
        )
    cells = torch.cat(record.cells)
    actions = torch.cat(record.actions)
    valid = torch.cat(record.valid)
    ids, hyps, hyp_lens = _hypotheses(cost, batch, cells, actions)
    sentence_of_rollout = cells[:, 0].unsqueeze(1).expand(-1, actions.size(1)).reshape(-1)[ids]
    scored = cost(hyps, hyp_lens, batch.target[sentence_of_rollout], batch.ref_lens[sentence_of_rollout])
    costs = torch.zeros(record.count, device=batch.device)
    costs[ids] = scored.float()
    return SearchResult(
        rollin_tokens=batch.rollin,
        cells=cells,
        actions=actions,
        valid=valid,
        costs=costs.view(-1, actions.size(1)),
        learned=torch.cat(record.learned),
        num_rollouts=int(valid.sum().item()),
        num_learned_rollouts=record.learned_count,
        decoded_tokens=record.decoded_tokens,
    )


def _hypotheses(cost, batch: _BatchSearch, cells: Tensor, actions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(roll-out ids, right-padded hypotheses, lengths) of every roll-out: the
    quick ones finished by the cost's reference roll-out, the learned ones as decoded."""
    record = batch.rollouts
    quick_ids = torch.cat(record.quick_ids)
    quick_sentences = torch.cat(record.quick_sentences)
    position = cells[:, 1].unsqueeze(1).expand(-1, actions.size(1)).reshape(-1)
    quick_hyps, quick_lens = cost.reference_rollout(
        batch.rollin[quick_sentences], position[quick_ids], actions.view(-1)[quick_ids],
        batch.target[quick_sentences], batch.ref_lens[quick_sentences],
    )
    learned_ids, learned_hyps, learned_lens = record.finished.padded(batch.pad, batch.device)
    width = max(quick_hyps.size(1), learned_hyps.size(1), 1)
    hyps = torch.cat(
        [
            F.pad(quick_hyps, (0, width - quick_hyps.size(1)), value=batch.pad),
            F.pad(learned_hyps, (0, width - learned_hyps.size(1)), value=batch.pad),
        ]
    )
    return torch.cat([quick_ids, learned_ids]), hyps, torch.cat([quick_lens, learned_lens])


def chunk_net_input(net_input: Dict[str, Tensor], rows: slice, pad: int) -> Dict[str, Tensor]:
    """The encoder inputs of some sentences, without columns that are padding
    for all of them (fairseq's LSTM encoder insists on a tight batch)."""
    chunk = {k: v[rows] for k, v in net_input.items() if k != "prev_output_tokens"}
    src = chunk.get("src_tokens")
    if torch.is_tensor(src) and src.dim() == 2 and not src.is_floating_point():
        columns = src.ne(pad).any(dim=0)
    elif torch.is_tensor(src) and "src_lengths" in chunk:  # dense features, right-padded
        columns = torch.arange(src.size(1), device=src.device) < chunk["src_lengths"].max()
    else:
        return chunk
    # aligned source streams (a source factor) lose the same columns
    for key, value in chunk.items():
        if torch.is_tensor(value) and value.dim() >= 2 and value.shape[:2] == src.shape[:2]:
            chunk[key] = value[:, columns]
    return chunk


def merge_chunks(parts: Sequence[SearchResult], chunk: int) -> SearchResult:
    """One SearchResult from the results of consecutive chunks of ``chunk`` sentences."""
    if len(parts) == 1:
        return parts[0]
    offsets = [torch.tensor([i * chunk, 0], device=p.cells.device) for i, p in enumerate(parts)]
    with_cells = [p for p in parts if p.cells.numel()] or parts[:1]
    return SearchResult(
        rollin_tokens=torch.cat([p.rollin_tokens for p in parts]),
        cells=torch.cat([p.cells + offset for p, offset in zip(parts, offsets)]),
        actions=torch.cat([p.actions for p in with_cells]),
        valid=torch.cat([p.valid for p in with_cells]),
        costs=torch.cat([p.costs for p in with_cells]),
        learned=torch.cat([p.learned for p in with_cells]),
        num_rollouts=sum(p.num_rollouts for p in parts),
        num_learned_rollouts=sum(p.num_learned_rollouts for p in parts),
        decoded_tokens=sum(p.decoded_tokens for p in parts),
    )
