"""fairseq criteria for SEARNN: searnn_ll, searnn_llcas, searnn_shl, searnn_kl.

One training step: sample cells, roll in and roll out (``rollout.search``),
score the roll-in trajectory with ``model(...)`` (the only forward that carries
gradients, so DDP synchronises them), then apply a cost-sensitive loss to the
sampled cells. With ``--token-sampling all`` the loss runs over the whole
vocabulary (the paper's LL / LLCAS / SHL); otherwise over the sampled tokens
only (sLL / sLLCAS, section 5).

In evaluation mode (fairseq's validation) the criterion reports the
teacher-forced NLL as ``loss`` and the task cost of the greedy prediction as
``cost``, so ``--best-checkpoint-metric cost`` selects on the test error.

The options and their checks are in ``config``; the schedules that ease
fine-tuning an MLE model (``--rollin-warmup-updates``, ``--mle-weight-decay-updates``)
in ``searnn_fairseq.schedule``.
"""

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.logging import metrics

from searnn_fairseq import losses
from searnn_fairseq.costs import build_cost
from searnn_fairseq.criterions.config import SearnnConfig, check_config
from searnn_fairseq.rollout import (
    SearchPolicy,
    SearchResult,
    check_incremental,
    chunk_net_input,
    merge_chunks,
    reference_lengths,
    search,
)
from searnn_fairseq.sampling import TokenChooser, sample_cells, unigram_log_weights
from searnn_fairseq.schedule import FineTuningSchedule, num_updates_of, record_num_updates  # noqa: F401
from searnn_fairseq.validation import GreedyValidation
from searnn_fairseq.vocabulary import action_mask

logger = logging.getLogger(__name__)


class SearnnCriterion(FairseqCriterion):
    """Shared SEARNN machinery; subclasses choose the cell loss."""

    supports_full_softmax = False

    def __init__(self, task, cfg: SearnnConfig):
        super().__init__(task)
        self.cfg = cfg
        self.sentence_avg = cfg.sentence_avg
        dictionary = task.target_dictionary
        self.eos = dictionary.eos()
        check_config(cfg, self.supports_full_softmax, type(self).__name__)
        self.cost = build_cost(cfg.cost, dictionary, reference_rollout=cfg.reference_rollout)
        self.cost.check_dictionary(dictionary)
        self.action_mask = action_mask(dictionary)
        self.num_tokens = self._tokens_per_cell(cfg)
        self._unigram_log_weights = None  # built at the first unigram draw, once the train split is loaded
        self.choose_actions = TokenChooser(
            cfg.token_sampling, self.num_tokens, self.action_mask, cfg.biased_temperature, self.unigram_log_weights
        )
        self.policy = SearchPolicy(
            rollin=cfg.rollin,
            rollin_ref_prob=cfg.rollin_ref_prob,
            rollout=cfg.rollout,
            rollout_ref_prob=cfg.rollout_ref_prob,
            rollout_coin=cfg.rollout_coin,
            max_len_a=cfg.rollout_max_len_a,
            max_len_b=cfg.rollout_max_len_b,
            dropout=cfg.rollout_dropout,
            rollin_stop_at_eos=cfg.rollin_stop_at_eos,
        )
        self.schedule = FineTuningSchedule(cfg, self.policy)
        self.validation = GreedyValidation(
            self.cost, self.action_mask, self.padding_idx, self.eos,
            max_len_a=cfg.valid_max_len_a, max_len_b=cfg.valid_max_len_b, min_len=cfg.valid_min_len,
        )

    def _tokens_per_cell(self, cfg: SearnnConfig) -> int:
        predictable = int(self.action_mask.sum())
        if cfg.token_sampling != "all" and cfg.sampled_tokens > predictable:
            logger.warning(
                f"--sampled-tokens {cfg.sampled_tokens} exceeds the {predictable} predictable "
                f"tokens of the target dictionary; rolling out all {predictable}"
            )
        return min(cfg.sampled_tokens, predictable)

    # the loss of each cell: (N, K) scores, costs, valid and (N,) target slots -> (N,)
    def cell_losses(self, scores, costs, valid, target):
        raise NotImplementedError

    def unigram_log_weights(self, train_subset: str = "train") -> torch.Tensor:
        """The unigram sampler's log weights (``sampling.unigram_log_weights``), built once."""
        if self._unigram_log_weights is None:
            train = getattr(self.task, "datasets", {}).get(train_subset)
            self._unigram_log_weights = unigram_log_weights(
                self.task.target_dictionary, None if train is None else len(train), train_subset
            )
        return self._unigram_log_weights

    def search(self, model, sample, policy: Optional[SearchPolicy] = None) -> SearchResult:
        """Roll-in and roll-outs for the batch, ``rollout_chunk_size`` sentences at a time."""
        target = sample["target"]
        num_cells, _ = reference_lengths(target, self.padding_idx, self.eos)
        cell_mask = sample_cells(num_cells, target.size(1), self.cfg.sampled_cells)
        chunk = self.cfg.rollout_chunk_size or target.size(0)
        parts = []
        for start in range(0, target.size(0), chunk):
            rows = slice(start, start + chunk)
            net_input = chunk_net_input(sample["net_input"], rows, self.padding_idx)
            parts.append(
                search(
                    model, net_input, target[rows], cell_mask[rows], self.choose_actions, self.cost,
                    action_mask=self.action_mask, policy=policy or self.policy, pad=self.padding_idx, eos=self.eos,
                )
            )
        return merge_chunks(parts, chunk)

    def forward(self, model, sample, reduce=True):
        check_incremental(model)
        if not model.training:
            return self.evaluate(model, sample)
        return self.train_forward(model, sample)

    def train_forward(self, model, sample):
        num_updates = num_updates_of(model) if self.schedule.scheduled else 0
        policy, mle_weight = self.schedule.policy_at(num_updates), self.schedule.mle_weight(num_updates)
        result = self.search(model, sample, policy)
        rollin_output = model(**{**sample["net_input"], "prev_output_tokens": self._shift_right(result.rollin_tokens)})
        # the target positions the roll-in reached (all of them, unless it stopped at an early EOS)
        reached = sample["target"].masked_fill(result.rollin_tokens.eq(self.padding_idx), self.padding_idx)
        rollin_nll = self._nll(model, rollin_output, reached)

        cell_logits = rollin_output[0][result.cells[:, 0], result.cells[:, 1]]
        scores, costs, valid, gold_slots = self._loss_inputs(cell_logits, result)
        target_slots = losses.target_slots(costs, valid, gold_slots)
        loss = self.cell_losses(scores, costs, valid, target_slots).sum()
        if mle_weight > 0:
            mle_nll = rollin_nll if policy.rollin == "reference" else self.teacher_forced_nll(model, sample)
            loss = loss + mle_weight * mle_nll

        sample_size = sample["target"].size(0) if self.sentence_avg else result.cells.size(0)
        logging_output = {
            **_nll_logging_output(loss, rollin_nll, sample, sample_size),
            **_search_logging_output(result, target_slots != gold_slots),
            **self.schedule.logging_output(num_updates, sample["target"].size(0)),
        }
        return loss, sample_size, logging_output

    def _loss_inputs(self, cell_logits, result: SearchResult):
        """Scores, costs, valid mask and ground-truth slots over the loss's token set."""
        if self.cfg.token_sampling != "all" and not self.cfg.full_softmax:
            scores = cell_logits.gather(1, result.actions)
            return scores, result.costs, result.valid, torch.zeros_like(result.actions[:, 0])
        # Full vocabulary, as in the paper. Tokens that are not rolled out
        # (padding, UNK, fillers; with --full-softmax also the unsampled ones) have
        # no cost (losses.NO_COST): a* is always a rolled-out token, LLCAS and SHL
        # give them the worst cost of their cell, KL no target mass; LL still
        # normalises over every token exactly as MLE does.
        costs = result.costs.new_full(cell_logits.shape, losses.NO_COST)
        rows = torch.arange(costs.size(0), device=costs.device).unsqueeze(1).expand_as(result.actions)
        costs[rows[result.valid], result.actions[result.valid]] = result.costs[result.valid]
        valid = torch.ones_like(cell_logits, dtype=torch.bool)
        return cell_logits, costs, valid, result.actions[:, 0]

    def _shift_right(self, tokens):
        """prev_output_tokens for a trajectory: EOS first, as fairseq's collater does."""
        prev = torch.full_like(tokens, self.padding_idx)
        prev[:, 0] = self.eos
        prev[:, 1:] = tokens[:, :-1]
        return prev.masked_fill(tokens.eq(self.padding_idx), self.padding_idx)

    def teacher_forced_nll(self, model, sample):
        return self._nll(model, model(**sample["net_input"]), sample["target"])

    def _nll(self, model, net_output, target):
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        return F.nll_loss(
            lprobs.view(-1, lprobs.size(-1)), target.view(-1), ignore_index=self.padding_idx, reduction="sum"
        )

    def evaluate(self, model, sample):
        """Validation: teacher-forced NLL and the cost of the greedy prediction."""
        nll = self.teacher_forced_nll(model, sample)
        ntokens = sample["ntokens"]
        greedy_cost = self.validation.costs(model, sample)
        logging_output = {**_nll_logging_output(nll, nll, sample, ntokens), "greedy_cost_sum": greedy_cost.sum().item()}
        return nll, ntokens, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        ntokens = total("ntokens")
        nsentences = total("nsentences")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        cells = total("cells")
        if cells:
            rollouts = total("rollouts")
            metrics.log_scalar("rollout_cost", total("rollout_cost_sum") / max(rollouts, 1), rollouts, round=4)
            metrics.log_scalar("min_cost", total("min_cost_sum") / cells, cells, round=4)
            metrics.log_scalar("target_not_gold", total("target_not_gold") / cells, cells, round=4)
            metrics.log_scalar("rollouts", rollouts, priority=900, round=0)
            metrics.log_scalar("learned_rollouts", total("learned_rollouts"), round=0)
            metrics.log_scalar("decoded_tokens", total("decoded_tokens"), round=0)
        for name in ("rollin_ref_prob", "mle_weight"):
            if any(f"{name}_sum" in log for log in logging_outputs):
                metrics.log_scalar(name, total(f"{name}_sum") / max(nsentences, 1), nsentences, round=4)
        if any("greedy_cost_sum" in log for log in logging_outputs):
            metrics.log_scalar("cost", total("greedy_cost_sum") / max(nsentences, 1), nsentences, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _nll_logging_output(loss, nll, sample, sample_size) -> dict:
    return {
        "loss": loss.item(),
        "nll_loss": nll.item(),
        "ntokens": sample["ntokens"],
        "nsentences": sample["target"].size(0),
        "sample_size": sample_size,
    }


def _search_logging_output(result: SearchResult, target_not_gold: torch.Tensor) -> dict:
    num_cells = result.cells.size(0)
    return {
        "cells": num_cells,
        "rollouts": result.num_rollouts,
        "learned_rollouts": result.num_learned_rollouts,
        "decoded_tokens": result.decoded_tokens,
        "rollout_cost_sum": result.costs[result.valid].sum().item(),
        "min_cost_sum": result.costs.masked_fill(~result.valid, math.inf).min(dim=1).values.sum().item()
        if num_cells
        else 0.0,
        "target_not_gold": target_not_gold.sum().item(),
    }


@register_criterion("searnn_ll", dataclass=SearnnConfig)
class SearnnLLCriterion(SearnnCriterion):
    """LL (eq. 3); sLL when tokens are sampled, unless --full-softmax."""

    supports_full_softmax = True

    def cell_losses(self, scores, costs, valid, target):
        return losses.log_loss(scores, costs, valid, target)


@register_criterion("searnn_llcas", dataclass=SearnnConfig)
class SearnnLLCASCriterion(SearnnCriterion):
    """LLCAS (eq. 4); sLLCAS when tokens are sampled."""

    def cell_losses(self, scores, costs, valid, target):
        return losses.cost_augmented_log_loss(scores, costs, valid, target, cost_scale=self.cfg.cost_scale)


@register_criterion("searnn_shl", dataclass=SearnnConfig)
class SearnnSHLCriterion(SearnnCriterion):
    """Structured hinge loss (eq. 5)."""

    def cell_losses(self, scores, costs, valid, target):
        return losses.structured_hinge_loss(scores, costs, valid, target, cost_scale=self.cfg.cost_scale)


@register_criterion("searnn_kl", dataclass=SearnnConfig)
class SearnnKLCriterion(SearnnCriterion):
    """Soft-target loss -sum q log p, q = softmax(-(c - min c)/T) (the authors' LLCAS code); with
    --full-softmax, p is over the whole dictionary and q is 0 on the tokens not rolled out."""

    supports_full_softmax = True

    def cell_losses(self, scores, costs, valid, target):
        return losses.soft_target_loss(scores, costs, valid, target, temperature=self.cfg.temperature)


@register_criterion("searnn_mle", dataclass=SearnnConfig)
class SearnnMLECriterion(SearnnCriterion):
    """The MLE baseline: fairseq's token cross-entropy in training, with the SEARNN
    criteria's validation (greedy prediction's ``cost``), so MLE and SEARNN runs
    select checkpoints on the same metric. Search options are ignored."""

    def train_forward(self, model, sample):
        nll = self.teacher_forced_nll(model, sample)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        return nll, sample_size, _nll_logging_output(nll, nll, sample, sample_size)
