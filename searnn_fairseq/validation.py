"""Validation decoding: the greedy prediction fairseq-generate --beam 1 makes, and its cost.

The criteria report this cost in validation, so ``--best-checkpoint-metric cost``
selects checkpoints on the test error. Decoding stops where fairseq-generate's
does (a * source length + b tokens, at least ``min_len``), never at a limit taken
from the reference: a model that never emits EOS must pay for its whole output,
as it does in fairseq-generate's score.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

from searnn_fairseq.rollout import (
    clamp_to_decoder,
    encoder_out_for_rows,
    eval_mode,
    reference_lengths,
    reorder_incremental_state,
)


def validation_caps(src_lengths: Tensor, max_len_a: float, max_len_b: int, model) -> Tensor:
    """Hypothesis length limits as fairseq-generate sets them (a * source length + b), not
    from the reference: validation must decode as the test does, and a model that never
    emits EOS must pay for its whole output, as fairseq-generate's score makes it pay."""
    caps = torch.floor(max_len_a * src_lengths.float() + max_len_b).long()
    return clamp_to_decoder(caps, model)


def greedy_decode(
    model, net_input: Dict[str, Tensor], caps: Tensor, action_mask: Tensor, eos: int, pad: int, *, min_len: int = 0
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


@dataclass
class GreedyValidation:
    """Scores a model's greedy predictions with the task cost."""

    cost: object  # a SequenceCost
    action_mask: Tensor
    pad: int
    eos: int
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1

    def decode(self, model, sample) -> Tuple[Tensor, Tensor]:
        """Each sentence's greedy prediction (right-padded, without EOS) and its length."""
        net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
        caps = validation_caps(net_input["src_lengths"], self.max_len_a, self.max_len_b, model)
        return greedy_decode(model, net_input, caps, self.action_mask, self.eos, self.pad, min_len=self.min_len)

    def costs(self, model, sample) -> Tensor:
        """(B,) cost of each sentence's greedy prediction against its reference."""
        target = sample["target"]
        _, ref_lens = reference_lengths(target, self.pad, self.eos)
        hyps, hyp_lens = self.decode(model, sample)
        return self.cost(hyps, hyp_lens, target, ref_lens)
