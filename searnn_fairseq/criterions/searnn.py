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
"""

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from searnn_fairseq import losses
from searnn_fairseq.costs import COST_REGISTRY, build_cost
from searnn_fairseq.rollout import (
    ROLLIN_CHOICES,
    ROLLOUT_CHOICES,
    ROLLOUT_COIN_CHOICES,
    SearchPolicy,
    SearchResult,
    action_mask,
    check_incremental,
    greedy_decode,
    reference_lengths,
    search,
    validation_caps,
)
from searnn_fairseq.sampling import TOKEN_SAMPLING_CHOICES, mark_duplicates, sample_cells, sample_tokens

logger = logging.getLogger(__name__)


@dataclass
class SearnnConfig(FairseqDataclass):
    rollin: ChoiceEnum(ROLLIN_CHOICES) = field(
        default="learned", metadata={"help": "roll-in policy: ground truth, the model's greedy predictions, or a per-step mix"}
    )
    rollin_ref_prob: float = field(
        default=0.5, metadata={"help": "mixed roll-in: probability, at each step, of following the ground truth"}
    )
    rollout: ChoiceEnum(ROLLOUT_CHOICES) = field(
        default="mixed", metadata={"help": "roll-out policy: copy the ground truth, greedy decoding, or a per-roll-out mix"}
    )
    rollout_ref_prob: float = field(
        default=0.5, metadata={"help": "mixed roll-out: probability of following the reference policy"}
    )
    rollout_coin: ChoiceEnum(ROLLOUT_COIN_CHOICES) = field(
        default="cell",
        metadata={"help": "mixed roll-out: one coin per cell, shared by all its tokens so their costs are "
                          "comparable, or one coin per roll-out"},
    )
    cost: str = field(
        default="hamming",
        metadata={"help": "task cost of a finished sequence (hamming, normalized_hamming, edit, bleu, chunk_f1, or one registered from --user-dir)"},
    )
    token_sampling: ChoiceEnum(TOKEN_SAMPLING_CHOICES) = field(
        default="all", metadata={"help": "which tokens to roll out at each cell; the ground truth is always one of them"}
    )
    sampled_tokens: int = field(
        default=5, metadata={"help": "tokens rolled out per cell, ground truth included (not used with 'all')"}
    )
    full_softmax: bool = field(
        default=False,
        metadata={"help": "searnn_ll with token sampling: normalise over the whole dictionary and take a* among the "
                          "sampled tokens (the paper's Table 2 'LL' rows) instead of the sampled softmax (sLL)"},
    )
    sampled_cells: int = field(
        default=0, metadata={"help": "cells per sequence that get a cost vector, drawn uniformly (0 = every cell)"}
    )
    cost_scale: float = field(default=1.0, metadata={"help": "multiplies the costs in LLCAS and SHL"})
    temperature: float = field(default=1.0, metadata={"help": "KL: soft target q = softmax(-(c - min c) / temperature)"})
    biased_temperature: float = field(
        default=2.0, metadata={"help": "'biased' token sampling draws from p^(1/T): T > 1 boosts unlikely tokens"}
    )
    mle_weight: float = field(
        default=0.0, metadata={"help": "adds this times the teacher-forced token NLL of the ground truth (warm starts)"}
    )
    rollout_dropout: bool = field(
        default=False, metadata={"help": "keep dropout on during roll-in and roll-outs (off by default)"}
    )
    rollout_max_len_a: float = field(
        default=1.0, metadata={"help": "learned roll-outs stop at EOS or after a * reference length + b tokens"}
    )
    rollout_max_len_b: int = field(default=5, metadata={"help": "see --rollout-max-len-a"})
    valid_max_len_a: float = field(
        default=0.0,
        metadata={"help": "validation's greedy decoding stops at EOS or after a * source length + b tokens; "
                          "the defaults are fairseq-generate's --max-len-a/--max-len-b, so the validation cost "
                          "scores what fairseq-generate --beam 1 outputs (with a > 0, fairseq-generate takes "
                          "the batch's padded source width instead of each sentence's length)"},
    )
    valid_max_len_b: int = field(default=200, metadata={"help": "see --valid-max-len-a"})
    valid_min_len: int = field(
        default=1, metadata={"help": "validation's greedy hypotheses are at least this long (fairseq-generate's --min-len)"}
    )
    rollout_chunk_size: int = field(
        default=0,
        metadata={"help": "roll out this many sentences at a time to bound memory (0 = the whole batch at once)"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


class SearnnCriterion(FairseqCriterion):
    """Shared SEARNN machinery; subclasses choose the cell loss."""

    supports_full_softmax = False

    def __init__(self, task, cfg: SearnnConfig):
        super().__init__(task)
        self.cfg = cfg
        self.sentence_avg = cfg.sentence_avg
        dictionary = task.target_dictionary
        self.eos = dictionary.eos()
        self._validate(cfg, dictionary)
        self.cost = build_cost(cfg.cost, dictionary)
        self.cost.check_dictionary(dictionary)
        self.action_mask = action_mask(dictionary)
        self.actions = self.action_mask.nonzero().squeeze(1)
        self.num_tokens = min(cfg.sampled_tokens, int(self.actions.numel()))
        if cfg.token_sampling != "all" and cfg.sampled_tokens > self.num_tokens:
            logger.warning(
                f"--sampled-tokens {cfg.sampled_tokens} exceeds the {self.num_tokens} predictable "
                f"tokens of the target dictionary; rolling out all {self.num_tokens}"
            )
        self._unigram_log_weights = None  # built at the first unigram draw, once the train split is loaded
        self.policy = SearchPolicy(
            rollin=cfg.rollin,
            rollin_ref_prob=cfg.rollin_ref_prob,
            rollout=cfg.rollout,
            rollout_ref_prob=cfg.rollout_ref_prob,
            rollout_coin=cfg.rollout_coin,
            max_len_a=cfg.rollout_max_len_a,
            max_len_b=cfg.rollout_max_len_b,
            dropout=cfg.rollout_dropout,
        )

    @classmethod
    def _validate(cls, cfg: SearnnConfig, dictionary) -> None:
        def fail(message):
            raise ValueError(f"searnn criterion: {message}")

        if cfg.cost not in COST_REGISTRY:
            fail(f"unknown --cost {cfg.cost!r}; valid choices: {', '.join(sorted(COST_REGISTRY))}")
        for name in ("rollin_ref_prob", "rollout_ref_prob"):
            value = getattr(cfg, name)
            if not 0.0 <= value <= 1.0:
                fail(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if cfg.sampled_tokens < 1:
            fail(f"--sampled-tokens must be >= 1 (the ground truth is always one of them), got {cfg.sampled_tokens}")
        if cfg.sampled_cells < 0:
            fail(f"--sampled-cells must be >= 0 (0 = every cell), got {cfg.sampled_cells}")
        if cfg.temperature <= 0 or cfg.biased_temperature <= 0:
            fail("--temperature and --biased-temperature must be > 0")
        if cfg.mle_weight < 0 or cfg.cost_scale < 0:
            fail("--mle-weight and --cost-scale must be >= 0")
        if cfg.rollout_max_len_a < 0 or cfg.rollout_max_len_b < 0 or cfg.rollout_chunk_size < 0:
            fail("--rollout-max-len-a, --rollout-max-len-b and --rollout-chunk-size must be >= 0")
        if cfg.valid_max_len_a < 0 or cfg.valid_max_len_b < 0 or cfg.valid_min_len < 0:
            fail("--valid-max-len-a, --valid-max-len-b and --valid-min-len must be >= 0")
        if cfg.full_softmax and not cls.supports_full_softmax:
            fail(
                "--full-softmax is only defined for searnn_ll (LLCAS, SHL and KL would need costs for the "
                f"tokens that were not rolled out); {cls.__name__} got it"
            )

    # the loss of each cell: (N, K) scores, costs, valid and (N,) target slots -> (N,)
    def cell_losses(self, scores, costs, valid, target):
        raise NotImplementedError

    def unigram_log_weights(self, train_subset: str = "train") -> torch.Tensor:
        """log(count + 1) of each token among the training targets (add-one smoothing: an unseen
        token can still be drawn). The counts are the target dictionary's, except EOS: fairseq's
        dict.txt does not list it, so it loads with count 1 although every target ends with one,
        and it would almost never be drawn as a competitor (sLL then never learns when not to
        stop). EOS gets the number of training targets."""
        if self._unigram_log_weights is None:
            dictionary = self.task.target_dictionary
            counts = torch.tensor(dictionary.count, dtype=torch.float)
            train = getattr(self.task, "datasets", {}).get(train_subset)
            if train is not None:
                counts[self.eos] = max(float(counts[self.eos]), float(len(train)))
            else:
                logger.warning(
                    f"unigram token sampling: no '{train_subset}' split loaded, so EOS keeps its dictionary "
                    f"count ({int(counts[self.eos])}) and is rarely sampled"
                )
            self._unigram_log_weights = torch.log(counts + 1.0)
        return self._unigram_log_weights

    def choose_actions(self, policy_logits, gold):
        if self.cfg.token_sampling == "all":
            actions = self.actions.to(gold.device)
            tokens = torch.cat([gold.unsqueeze(1), actions.unsqueeze(0).expand(gold.size(0), -1)], dim=1)
        else:
            tokens = sample_tokens(
                self.cfg.token_sampling,
                self.num_tokens,
                gold,
                self.action_mask.to(gold.device),
                policy_logits=policy_logits,
                unigram_log_weights=self.unigram_log_weights() if self.cfg.token_sampling == "unigram" else None,
                biased_temperature=self.cfg.biased_temperature,
            )
        return tokens, ~mark_duplicates(tokens)

    def search(self, model, sample) -> SearchResult:
        """Roll-in and roll-outs for the batch, ``rollout_chunk_size`` sentences at a time."""
        target = sample["target"]
        num_cells, _ = reference_lengths(target, self.padding_idx, self.eos)
        cell_mask = sample_cells(num_cells, target.size(1), self.cfg.sampled_cells)
        chunk = self.cfg.rollout_chunk_size or target.size(0)
        parts = []
        for start in range(0, target.size(0), chunk):
            rows = slice(start, start + chunk)
            net_input = self._chunk_net_input(sample["net_input"], rows)
            parts.append(
                search(
                    model, net_input, target[rows], cell_mask[rows], self.choose_actions, self.cost,
                    self.action_mask, self.policy, self.padding_idx, self.eos,
                )
            )
        return _merge(parts, chunk)

    def _chunk_net_input(self, net_input, rows):
        """The encoder inputs of some sentences, without columns that are padding
        for all of them (fairseq's LSTM encoder insists on a tight batch)."""
        chunk = {k: v[rows] for k, v in net_input.items() if k != "prev_output_tokens"}
        src = chunk.get("src_tokens")
        if torch.is_tensor(src) and src.dim() == 2 and not src.is_floating_point():
            chunk["src_tokens"] = src[:, src.ne(self.padding_idx).any(dim=0)]
        elif torch.is_tensor(src) and "src_lengths" in chunk:  # dense features, right-padded
            chunk["src_tokens"] = src[:, : int(chunk["src_lengths"].max())]
        return chunk

    def forward(self, model, sample, reduce=True):
        check_incremental(model)
        if not model.training:
            return self.evaluate(model, sample)
        return self.train_forward(model, sample)

    def train_forward(self, model, sample):
        target = sample["target"]
        result = self.search(model, sample)

        net_output = model(**{**sample["net_input"], "prev_output_tokens": self._shift_right(result.rollin_tokens)})
        logits = net_output[0]
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        rollin_nll = F.nll_loss(
            lprobs.view(-1, lprobs.size(-1)), target.view(-1), ignore_index=self.padding_idx, reduction="sum"
        )

        cell_logits = logits[result.cells[:, 0], result.cells[:, 1]]
        scores, costs, valid, gold_slots = self._loss_inputs(cell_logits, result)
        target_slots = losses.target_slots(costs, valid, gold_slots)
        loss = self.cell_losses(scores, costs, valid, target_slots).sum()

        if self.cfg.mle_weight > 0:
            mle_nll = rollin_nll if self.cfg.rollin == "reference" else self.teacher_forced_nll(model, sample)
            loss = loss + self.cfg.mle_weight * mle_nll

        num_cells = result.cells.size(0)
        sample_size = target.size(0) if self.sentence_avg else num_cells
        valid_costs = result.costs[result.valid]
        logging_output = {
            "loss": loss.item(),
            "nll_loss": rollin_nll.item(),
            "ntokens": sample["ntokens"],
            "nsentences": target.size(0),
            "sample_size": sample_size,
            "cells": num_cells,
            "rollouts": result.num_rollouts,
            "learned_rollouts": result.num_learned_rollouts,
            "decoded_tokens": result.decoded_tokens,
            "rollout_cost_sum": valid_costs.sum().item(),
            "min_cost_sum": result.costs.masked_fill(~result.valid, math.inf).min(dim=1).values.sum().item()
            if num_cells
            else 0.0,
            "target_not_gold": (target_slots != gold_slots).sum().item(),
        }
        return loss, sample_size, logging_output

    def _loss_inputs(self, cell_logits, result: SearchResult):
        """Scores, costs, valid mask and ground-truth slots over the loss's token set."""
        if self.cfg.token_sampling != "all" and not self.cfg.full_softmax:
            scores = cell_logits.gather(1, result.actions)
            return scores, result.costs, result.valid, torch.zeros_like(result.actions[:, 0])
        # Full vocabulary, as in the paper. Tokens that are not rolled out
        # (padding, UNK, fillers; with --full-softmax also the unsampled ones) take
        # the worst cost of their cell, so a* is always a rolled-out token; LL still
        # normalises over every token exactly as MLE does.
        worst = result.costs.masked_fill(~result.valid, -math.inf).max(dim=1, keepdim=True).values
        costs = worst.expand_as(cell_logits).clone()
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
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        return F.nll_loss(
            lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1), ignore_index=self.padding_idx, reduction="sum"
        )

    def evaluate(self, model, sample):
        """Validation: teacher-forced NLL and the cost of the greedy prediction."""
        target = sample["target"]
        nll = self.teacher_forced_nll(model, sample)
        _, ref_lens = reference_lengths(target, self.padding_idx, self.eos)
        net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
        caps = validation_caps(net_input["src_lengths"], self.cfg.valid_max_len_a, self.cfg.valid_max_len_b, model)
        hyps, hyp_lens = greedy_decode(
            model, net_input, caps, self.action_mask, self.eos, self.padding_idx, min_len=self.cfg.valid_min_len
        )
        greedy_cost = self.cost(hyps, hyp_lens, target, ref_lens)
        ntokens = sample["ntokens"]
        logging_output = {
            "loss": nll.item(),
            "nll_loss": nll.item(),
            "ntokens": ntokens,
            "nsentences": target.size(0),
            "sample_size": ntokens,
            "greedy_cost_sum": greedy_cost.sum().item(),
        }
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
        if any("greedy_cost_sum" in log for log in logging_outputs):
            metrics.log_scalar("cost", total("greedy_cost_sum") / max(nsentences, 1), nsentences, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _merge(parts, chunk: int) -> SearchResult:
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
    """Soft-target loss -sum q log p, q = softmax(-(c - min c)/T) (the authors' LLCAS code)."""

    def cell_losses(self, scores, costs, valid, target):
        return losses.soft_target_loss(scores, costs, valid, target, temperature=self.cfg.temperature)


@register_criterion("searnn_mle", dataclass=SearnnConfig)
class SearnnMLECriterion(SearnnCriterion):
    """The MLE baseline: fairseq's token cross-entropy in training, with the SEARNN
    criteria's validation (greedy prediction's ``cost``), so MLE and SEARNN runs
    select checkpoints on the same metric. Search options are ignored."""

    def train_forward(self, model, sample):
        nll = self.teacher_forced_nll(model, sample)
        ntokens = sample["ntokens"]
        sample_size = sample["target"].size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": nll.item(),
            "nll_loss": nll.item(),
            "ntokens": ntokens,
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return nll, sample_size, logging_output
