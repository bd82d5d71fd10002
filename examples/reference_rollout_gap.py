"""How far the paper's reference roll-out (copy the reference after the forced token) is from the
best one (``--reference-rollout best``), measured on a trained model's own roll-ins.

    python examples/reference_rollout_gap.py runs/spelling-0.5/data \\
        --path runs/spelling-0.5/mle-seed1/checkpoint_best.pt --user-dir searnn_fairseq \\
        --task translation --source-lang src --target-lang tgt --batch-size 128 \\
        --criterion searnn_ll --cost edit --rollin learned --rollout mixed \\
        --token-sampling policy --sampled-tokens 5 [--subset valid] [--batches 10]

The flags after DATA are fairseq-train's (the task, the criterion and its search; the model comes
from ``--path``). The search runs twice on each batch from the same random state, once per
reference roll-out, so the roll-ins, the cells, the forced tokens and the coins that choose the
learned or the reference policy are the same; only the reference roll-outs' costs can differ. It
prints, over the reference roll-outs: the share whose cost the best roll-out lowers and the mean
costs; over the cells: the share whose least-cost token (LL's target, ties to the ground truth)
changes. Where that share is small, LL trains on nearly the same targets under both.
"""

import copy
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import checkpoint_diagnostics  # noqa: E402
from searnn_fairseq.losses import target_slots  # noqa: E402
from searnn_fairseq.rollout import SearchResult  # noqa: E402


@dataclass
class Gap:
    cells: int = 0
    reference_rollouts: int = 0
    lowered: int = 0  # reference roll-outs whose cost the best roll-out lowers
    copy_cost: float = 0.0  # summed over the reference roll-outs
    best_cost: float = 0.0
    target_changed: int = 0  # cells whose least-cost token differs

    def add(self, copied: SearchResult, best: SearchResult) -> None:
        same_search = all(torch.equal(getattr(copied, name), getattr(best, name))
                          for name in ("rollin_tokens", "cells", "actions", "valid", "learned"))
        if not same_search:
            raise RuntimeError("the two searches differ beyond their reference roll-outs' costs: the search "
                               "consumed the random state differently")
        reference = copied.valid & ~copied.learned
        self.cells += copied.cells.size(0)
        self.reference_rollouts += int(reference.sum())
        self.lowered += int((best.costs < copied.costs - 1e-9)[reference].sum())
        self.copy_cost += float(copied.costs[reference].sum())
        self.best_cost += float(best.costs[reference].sum())
        self.target_changed += int(least_cost_slot(copied).ne(least_cost_slot(best)).sum())

    def rows(self):
        per_rollout = max(self.reference_rollouts, 1)
        return [
            ("cells", f"{self.cells}"),
            ("reference roll-outs", f"{self.reference_rollouts}"),
            ("reference roll-outs whose cost best lowers", f"{100 * self.lowered / per_rollout:.2f}%"),
            ("mean cost of a reference roll-out, copy", f"{self.copy_cost / per_rollout:.4f}"),
            ("mean cost of a reference roll-out, best", f"{self.best_cost / per_rollout:.4f}"),
            ("cells whose least-cost token changes", f"{100 * self.target_changed / max(self.cells, 1):.2f}%"),
        ]


def least_cost_slot(result: SearchResult) -> torch.Tensor:
    """Per cell, LL's target slot, as the criterion picks it (slot 0 holds the ground truth)."""
    return target_slots(result.costs, result.valid, torch.zeros_like(result.cells[:, 0]))


def measure(model, copied_criterion, best_criterion, batches, seed: int = 1) -> Gap:
    gap = Gap()
    model.train()  # as in training: the search itself turns dropout off unless --rollout-dropout
    for i, sample in enumerate(batches):
        torch.manual_seed(seed + i)
        copied = copied_criterion.search(model, sample)
        torch.manual_seed(seed + i)
        best = best_criterion.search(model, sample)
        gap.add(copied, best)
    return gap


def main(argv=None) -> None:
    args, task, model = checkpoint_diagnostics.load(argv, batches=10)
    criteria = {}
    for mode in ("copy", "best"):
        settings = copy.deepcopy(args)
        settings.reference_rollout = mode
        criteria[mode] = task.build_criterion(settings)
    batches = checkpoint_diagnostics.batches(args, task)
    gap = measure(model, criteria["copy"], criteria["best"], batches, seed=args.seed)
    print(f"| {args.path} on {args.subset} ({args.batches or 'all'} batches) | |\n|---|---|")
    for name, value in gap.rows():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
