"""fairseq scorers for the SEARNN paper's test errors: ``--scoring hamming`` and ``--scoring edit``.

Both are corpus-normalised the way the paper reports them (Section 4): the total
number of errors over the whole test set divided by the total reference length,
in percent. ``fairseq-generate ... --scoring hamming`` ends with a line like::

    Generate test with beam=1: HAMMING = 2.84 (131 errors / 4617 reference tokens, 626 sentences)

Sequences are compared as whitespace-separated tokens (``add_string(ref, pred)``,
which fairseq-generate calls with the detokenised target and top hypothesis; EOS
is not part of either string). For character tasks (OCR letters, spelling
characters) one token is one character.

- hamming: errors of a pair = positions i < min(len) where the tokens differ, plus
  |len(pred) - len(ref)| (every position past the shorter sequence is an error),
  the same definition as ``searnn_fairseq.costs.HammingCost``.
- edit: unit-cost Levenshtein distance (insertions, deletions, substitutions),
  computed with the batched DP ``searnn_fairseq.costs.levenshtein``.

If every reference is empty (total length 0) the score is 0.0 when there are no
errors and ``inf`` otherwise.
"""

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import SCORER_REGISTRY, BaseScorer, register_scorer

from searnn_fairseq.costs import levenshtein

# Pairs are buffered and scored this many at a time (one batched DP per chunk).
_CHUNK = 2048


class _CorpusErrorRate(BaseScorer):
    """Sum of per-pair errors / sum of reference lengths, in percent."""

    label = "ERRORS"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.reset()

    def reset(self) -> None:
        self._errors = 0
        self.ref_length = 0
        self.sentences = 0
        self._vocab: Dict[str, int] = {}
        self._pending: List[Tuple[List[int], List[int]]] = []

    def _ids(self, text: str) -> List[int]:
        return [self._vocab.setdefault(token, len(self._vocab)) for token in text.split()]

    def add_string(self, ref: str, pred: str) -> None:
        ref_ids, pred_ids = self._ids(ref), self._ids(pred)
        self.ref_length += len(ref_ids)
        self.sentences += 1
        self._pending.append((ref_ids, pred_ids))
        if len(self._pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._errors += int(self._pair_errors(self._pending).sum())
            self._pending = []

    @property
    def errors(self) -> int:
        """Total errors of all the pairs added so far."""
        self._flush()
        return self._errors

    @staticmethod
    def _pad(seqs: List[List[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.full((len(seqs), max(int(lengths.max()), 1)), -1, dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out, lengths

    def _pair_errors(self, pairs: List[Tuple[List[int], List[int]]]) -> torch.Tensor:
        raise NotImplementedError

    def score(self) -> float:
        if self.ref_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return 100.0 * self.errors / self.ref_length

    def result_string(self) -> str:
        score = self.score()
        return (
            f"{self.label} = {score:.2f} ({self.errors} errors / {self.ref_length} "
            f"reference tokens, {self.sentences} sentences)"
        )


def _register(name, config):
    """register_scorer, tolerating a second import of this module."""

    def wrap(cls):
        if name in SCORER_REGISTRY:
            return SCORER_REGISTRY[name]
        return register_scorer(name, dataclass=config)(cls)

    return wrap


@dataclass
class HammingScorerConfig(FairseqDataclass):
    pass


@_register("hamming", HammingScorerConfig)
class HammingScorer(_CorpusErrorRate):
    """Corpus Hamming error rate (the paper's OCR metric), in percent."""

    label = "HAMMING"

    def _pair_errors(self, pairs):
        refs, ref_lens = self._pad([r for r, _ in pairs])
        hyps, hyp_lens = self._pad([h for _, h in pairs])
        width = min(refs.size(1), hyps.size(1))
        common = torch.minimum(ref_lens, hyp_lens).unsqueeze(1)
        positions = torch.arange(width).unsqueeze(0)
        differs = (refs[:, :width] != hyps[:, :width]) & (positions < common)
        return differs.sum(1) + (ref_lens - hyp_lens).abs()


@dataclass
class EditScorerConfig(FairseqDataclass):
    pass


@_register("edit", EditScorerConfig)
class EditScorer(_CorpusErrorRate):
    """Corpus edit (Levenshtein) error rate (the paper's Spelling metric), in percent."""

    label = "EDIT"

    def _pair_errors(self, pairs):
        refs, ref_lens = self._pad([r for r, _ in pairs])
        hyps, hyp_lens = self._pad([h for _, h in pairs])
        return levenshtein(hyps, hyp_lens, refs, ref_lens)
