"""The options shared by the SEARNN criteria, and their checks."""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from searnn_fairseq.costs import COST_REGISTRY
from searnn_fairseq.rollout import ROLLIN_CHOICES, ROLLOUT_CHOICES, ROLLOUT_COIN_CHOICES
from searnn_fairseq.sampling import TOKEN_SAMPLING_CHOICES


@dataclass
class SearnnConfig(FairseqDataclass):
    rollin: ChoiceEnum(ROLLIN_CHOICES) = field(
        default="learned", metadata={"help": "roll-in policy: ground truth, the model's greedy predictions, or a per-step mix"}
    )
    rollin_stop_at_eos: bool = field(
        default=False,
        metadata={"help": "a roll-in ends at the first EOS it predicts: the cells after it get no cost vector and "
                          "no loss (by default it goes on to the reference's length, the EOS counting as an error)"},
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
    reference_rollout: ChoiceEnum(["copy", "best"]) = field(
        default="copy",
        metadata={"help": "reference roll-out after a forced token: copy the reference from the next position "
                          "(the paper's), or the cost's best continuation (edit: least edit distance; bleu: the "
                          "best reference suffix; chunk_f1: the copy with broken chunks repaired; hamming: same as copy)"},
    )
    token_sampling: ChoiceEnum(TOKEN_SAMPLING_CHOICES) = field(
        default="all", metadata={"help": "which tokens to roll out at each cell; the ground truth is always one of them"}
    )
    sampled_tokens: int = field(
        default=5, metadata={"help": "tokens rolled out per cell, ground truth included (not used with 'all')"}
    )
    full_softmax: bool = field(
        default=False,
        metadata={"help": "with token sampling, normalise over the whole dictionary instead of over the sampled "
                          "tokens: searnn_ll takes a* among the sampled tokens (the paper's Table 2 'LL' rows), "
                          "searnn_kl puts its soft target on the sampled tokens; the unsampled ones are trained down"},
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
    rollin_warmup_updates: int = field(
        default=0,
        metadata={"help": "over the first N updates the roll-in moves from the reference to --rollin: the "
                          "probability of following the ground truth falls linearly from 1 to the configured "
                          "value (0 for learned, --rollin-ref-prob for mixed); for fine-tuning an MLE model "
                          "(0 = the configured roll-in from the start)"},
    )
    mle_weight_decay_updates: int = field(
        default=0,
        metadata={"help": "--mle-weight falls linearly to 0 over the first N updates (0 = constant)"},
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


def check_config(cfg: SearnnConfig, supports_full_softmax: bool, criterion: str) -> None:
    """Refuse bad options before training, with a message naming the option."""
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
    if cfg.rollin_warmup_updates < 0 or cfg.mle_weight_decay_updates < 0:
        fail("--rollin-warmup-updates and --mle-weight-decay-updates must be >= 0")
    if cfg.mle_weight_decay_updates and not cfg.mle_weight:
        fail("--mle-weight-decay-updates decays --mle-weight, which is 0: set --mle-weight")
    if cfg.rollout_max_len_a < 0 or cfg.rollout_max_len_b < 0 or cfg.rollout_chunk_size < 0:
        fail("--rollout-max-len-a, --rollout-max-len-b and --rollout-chunk-size must be >= 0")
    if cfg.valid_max_len_a < 0 or cfg.valid_max_len_b < 0 or cfg.valid_min_len < 0:
        fail("--valid-max-len-a, --valid-max-len-b and --valid-min-len must be >= 0")
    if cfg.full_softmax and not supports_full_softmax:
        fail(
            "--full-softmax is only defined for searnn_ll and searnn_kl (LLCAS and SHL would need costs "
            f"for the tokens that were not rolled out); {criterion} got it"
        )
