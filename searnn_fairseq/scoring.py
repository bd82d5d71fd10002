"""fairseq scorers for the SEARNN paper's test errors: ``--scoring hamming``, ``--scoring edit`` and
``--scoring chunk_f1`` (CoNLL chunking's F1, the figure chunking papers quote; see ChunkF1Scorer).

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


def conll_chunks(tags: List[str]) -> List[Tuple[int, int, str]]:
    """The chunks (start, end exclusive, type) of an IOB tag sequence, by conlleval's rules: a
    chunk starts at B-X, or at I-X after O or a tag of another type; it ends before O, before a
    B- tag, or before a tag of another type. Any tag that is not B-X or I-X (O, <unk>, ...) is
    outside every chunk."""
    chunks, start, kind = [], None, None
    for position, tag in enumerate([*tags, "O"]):
        prefix, _, tag_type = tag.partition("-")
        if prefix not in ("B", "I") or not tag_type:
            prefix, tag_type = "O", None
        if start is not None and (prefix in ("B", "O") or tag_type != kind):
            chunks.append((start, position, kind))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = position, tag_type
    return chunks


@dataclass
class ChunkF1ScorerConfig(FairseqDataclass):
    pass


@_register("chunk_f1", ChunkF1ScorerConfig)
class ChunkF1Scorer(BaseScorer):
    """Corpus chunk F1 (conlleval's figure, in percent) of IOB2 tag sequences.

    A predicted chunk is correct when a reference chunk has the same start, end and type;
    precision = correct / predicted chunks, recall = correct / reference chunks, F1 their
    harmonic mean, all summed over the corpus. Hypotheses need not have the reference's length
    (a sequence model may emit more or fewer tags): chunks are compared as (start, end, type)
    spans, which for equal lengths is conlleval's count exactly.
    """

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.reset()

    def reset(self) -> None:
        self.correct = self.predicted = self.gold = self.sentences = 0

    def add_string(self, ref: str, pred: str) -> None:
        gold, predicted = set(conll_chunks(ref.split())), set(conll_chunks(pred.split()))
        self.correct += len(gold & predicted)
        self.predicted += len(predicted)
        self.gold += len(gold)
        self.sentences += 1

    def precision(self) -> float:
        return 100.0 * self.correct / self.predicted if self.predicted else 0.0

    def recall(self) -> float:
        return 100.0 * self.correct / self.gold if self.gold else 0.0

    def score(self) -> float:
        total = self.predicted + self.gold
        return 200.0 * self.correct / total if total else 0.0

    def result_string(self) -> str:
        return (f"CHUNK_F1 = {self.score():.2f} (precision {self.precision():.2f}, recall {self.recall():.2f}; "
                f"{self.correct} correct of {self.predicted} predicted and {self.gold} reference chunks, "
                f"{self.sentences} sentences)")
