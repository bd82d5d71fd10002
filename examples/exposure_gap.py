"""How much of a trained model's greedy error comes from decoding after its own mistakes: the
exposure bias that SEARNN's learned roll-in trains against, and so the most it can remove.

    python examples/exposure_gap.py runs/conll/data --path runs/conll/mle-seed1/checkpoint_best.pt \\
        --user-dir searnn_fairseq --task factored_translation --source-lang words --target-lang chunk \\
        --source-factor pos --criterion searnn_mle --cost normalized_hamming \\
        --valid-max-len-a 1 --valid-max-len-b 5 [--subset valid] [--batches N]

The flags after DATA are fairseq-train's (the task, the criterion and its validation decoding; the
model comes from ``--path``). Each sentence is decoded twice: greedily, as validation and
``fairseq-generate --beam 1`` decode, and with the reference prefix at every position (teacher
forcing, the best token at each). Up to its first mistake the greedy decoder reads the reference's
prefix and must predict what teacher forcing predicts (counted: ``disagreements on the reference's
path``, 0 for a sound decoder); after it, it reads its own. Errors are Hamming errors over the
reference's tokens, as the test counts them (an output of the wrong length: one error per missing
or extra token; teacher forcing has the reference's length). The excess of greedy over
teacher-forced errors is what the model loses to its own prefixes.
"""

import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import checkpoint_diagnostics  # noqa: E402
from searnn_fairseq.rollout import eval_mode, reference_lengths  # noqa: E402
from searnn_fairseq.validation import GreedyValidation  # noqa: E402


@dataclass
class Gap:
    """Counts summed over the sentences measured; ``rows`` turns them into rates."""

    sentences: int = 0
    tokens: int = 0  # reference tokens (without EOS)
    greedy_errors: int = 0
    teacher_forced_errors: int = 0
    sentences_with_mistake: int = 0
    tokens_after_mistake: int = 0  # reference tokens after the greedy decoder's first mistake
    greedy_errors_after_mistake: int = 0  # there, and the extra tokens of outputs too long
    teacher_forced_errors_after_mistake: int = 0
    disagreements_on_path: int = 0

    def add(self, hyp: list, ref: list, forced: list, eos: int) -> None:
        """One sentence: its greedy output ``hyp``, reference ``ref`` (both without EOS) and the
        teacher-forced predictions ``forced`` (one per reference token, then one for its EOS)."""
        mistake = first_mistake(hyp, ref, eos)
        greedy_wrong = [t >= len(hyp) or t >= len(ref) or hyp[t] != ref[t] for t in range(max(len(hyp), len(ref)))]
        forced_wrong = [forced[t] != ref[t] for t in range(len(ref))]
        self.sentences += 1
        self.tokens += len(ref)
        self.greedy_errors += sum(greedy_wrong)
        self.teacher_forced_errors += sum(forced_wrong)
        on_path = len(ref) + 1 if mistake is None else mistake + 1
        self.disagreements_on_path += sum(a != b for a, b in zip((hyp + [eos])[:on_path], forced[:on_path]))
        if mistake is not None:
            self.sentences_with_mistake += 1
            self.tokens_after_mistake += max(0, len(ref) - mistake - 1)
            self.greedy_errors_after_mistake += sum(greedy_wrong[mistake + 1:])
            self.teacher_forced_errors_after_mistake += sum(forced_wrong[mistake + 1:])

    def rows(self):
        def rate(errors, tokens):
            return f"{100 * errors / max(tokens, 1):.2f}%"

        excess = self.greedy_errors - self.teacher_forced_errors
        return [
            ("sentences / reference tokens", f"{self.sentences} / {self.tokens}"),
            ("greedy error (the test's)", rate(self.greedy_errors, self.tokens)),
            ("teacher-forced error", rate(self.teacher_forced_errors, self.tokens)),
            ("excess: greedy - teacher-forced", f"{100 * excess / max(self.tokens, 1):.2f} points, "
                                                f"{rate(excess, self.greedy_errors)} of the greedy error"),
            ("sentences with a greedy mistake", rate(self.sentences_with_mistake, self.sentences)),
            ("reference tokens after the first mistake", rate(self.tokens_after_mistake, self.tokens)),
            ("error after the first mistake, greedy / teacher-forced",
             f"{rate(self.greedy_errors_after_mistake, self.tokens_after_mistake)} / "
             f"{rate(self.teacher_forced_errors_after_mistake, self.tokens_after_mistake)}"),
            ("disagreements on the reference's path", f"{self.disagreements_on_path}"),
        ]


def first_mistake(hyp: list, ref: list, eos: int):
    """The first position where the greedy output, EOS included, leaves the reference (None: none)."""
    hyp, ref = hyp + [eos], ref + [eos]
    return next((t for t in range(min(len(hyp), len(ref))) if hyp[t] != ref[t]), None)


def teacher_forced_predictions(model, sample, validation: GreedyValidation) -> torch.Tensor:
    """(B, T) the best token at each position given the reference prefix, among the tokens the
    greedy decoder may choose there (EOS only from ``min_len`` on)."""
    with eval_mode(model):
        logits = model(**sample["net_input"])[0]
    forbidden = ~validation.action_mask.to(logits.device)
    logits = logits.masked_fill(forbidden, float("-inf"))
    logits[:, :validation.min_len, validation.eos] = float("-inf")
    return logits.argmax(dim=-1)


def measure(model, validation: GreedyValidation, batches) -> Gap:
    gap = Gap()
    for sample in batches:
        target = sample["target"]
        _, ref_lens = reference_lengths(target, validation.pad, validation.eos)
        with torch.no_grad():
            hyps, hyp_lens = validation.decode(model, sample)
            forced = teacher_forced_predictions(model, sample, validation)
        for i in range(target.size(0)):
            n = int(ref_lens[i])
            gap.add(hyps[i, :int(hyp_lens[i])].tolist(), target[i, :n].tolist(), forced[i, :n + 1].tolist(),
                    validation.eos)
    return gap


def main(argv=None) -> None:
    args, task, model = checkpoint_diagnostics.load(argv)
    gap = measure(model, task.build_criterion(args).validation, checkpoint_diagnostics.batches(args, task))
    print(f"| {args.path} on {args.subset} | |\n|---|---|")
    for name, value in gap.rows():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
