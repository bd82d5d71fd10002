"""Schedules for SEARNN as fine-tuning of an MLE model.

``--rollin-warmup-updates`` moves the roll-in from the reference to the configured one,
``--mle-weight-decay-updates`` fades ``--mle-weight`` out. Both follow fairseq's update count,
which fairseq hands to the model (not to the criterion) before every training step and on
resume; ``record_num_updates`` keeps it on the model, where the criterion reads it.
"""

import functools
from dataclasses import replace

from fairseq.models import BaseFairseqModel

from searnn_fairseq.rollout import SearchPolicy


class FineTuningSchedule:
    """The search policy and MLE weight of each update."""

    def __init__(self, cfg, policy: SearchPolicy):
        self.cfg = cfg
        self.policy = policy

    @property
    def scheduled(self) -> bool:
        """Whether the roll-in or the MLE weight changes with the update count."""
        return bool(self.cfg.rollin_warmup_updates or self.cfg.mle_weight_decay_updates)

    def rollin_ref_prob(self, num_updates: int) -> float:
        """The probability of following the ground truth at this update: 1 at update 0, falling
        linearly to the configured roll-in's (0 learned, --rollin-ref-prob mixed, 1 reference)."""
        final = {"reference": 1.0, "learned": 0.0}.get(self.cfg.rollin, self.cfg.rollin_ref_prob)
        if not self.cfg.rollin_warmup_updates:
            return final
        return final + (1.0 - final) * _remaining(num_updates, self.cfg.rollin_warmup_updates)

    def policy_at(self, num_updates: int) -> SearchPolicy:
        """The search policy of this update: during the roll-in warm-up, a mixed roll-in with
        ``rollin_ref_prob``; afterwards exactly the configured one."""
        if self.cfg.rollin == "reference" or num_updates >= self.cfg.rollin_warmup_updates:
            return self.policy
        return replace(self.policy, rollin="mixed", rollin_ref_prob=self.rollin_ref_prob(num_updates))

    def mle_weight(self, num_updates: int) -> float:
        """--mle-weight, falling linearly to 0 over --mle-weight-decay-updates (constant without it)."""
        if not self.cfg.mle_weight_decay_updates:
            return self.cfg.mle_weight
        return self.cfg.mle_weight * _remaining(num_updates, self.cfg.mle_weight_decay_updates)

    def logging_output(self, num_updates: int, nsentences: int) -> dict:
        """The scheduled values of this update, weighted by sentences so that summed outputs average them."""
        output = {}
        if self.cfg.rollin_warmup_updates:
            output["rollin_ref_prob_sum"] = self.rollin_ref_prob(num_updates) * nsentences
        if self.cfg.mle_weight_decay_updates:
            output["mle_weight_sum"] = self.mle_weight(num_updates) * nsentences
        return output


def _remaining(num_updates: int, span: int) -> float:
    """The share of a linear schedule over ``span`` > 0 updates still to go: 1 at update 0, 0 from ``span`` on."""
    return max(0.0, 1.0 - num_updates / span)


NUM_UPDATES = "searnn_num_updates"


def record_num_updates() -> None:
    """Keep fairseq's update count on the model. fairseq hands it to the model only
    (``FairseqTask.train_step`` calls ``model.set_num_updates`` before every forward,
    ``Trainer.load_checkpoint`` on resume, through DDP wrappers to the model), so the count a
    criterion reads there is fairseq's own: it survives resumes, and restarts at 0 when
    ``--finetune-from-model`` resets the optimizer."""
    original = BaseFairseqModel.set_num_updates
    if getattr(original, "records_num_updates", False):
        return

    @functools.wraps(original)
    def set_num_updates(self, num_updates):
        self.__dict__[NUM_UPDATES] = num_updates  # a plain attribute: not a parameter, buffer or submodule
        original(self, num_updates)

    set_num_updates.records_num_updates = True
    BaseFairseqModel.set_num_updates = set_num_updates


record_num_updates()


def num_updates_of(model) -> int:
    """fairseq's update count, as ``record_num_updates`` kept it on the (DDP-unwrapped) model."""
    while not hasattr(model, NUM_UPDATES) and hasattr(model, "module"):
        model = model.module
    if not hasattr(model, NUM_UPDATES):
        raise RuntimeError(
            "--rollin-warmup-updates and --mle-weight-decay-updates follow fairseq's update count, but the "
            f"model ({type(model).__name__}) was never given one: fairseq's FairseqTask.train_step gives it "
            "through model.set_num_updates (a model overriding it must call BaseFairseqModel's)")
    return getattr(model, NUM_UPDATES)
