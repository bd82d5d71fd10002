"""Task costs: the test error of a finished sequence against its reference.

A cost is the *task* side of learning to search: it scores finished roll-outs
(lower is better) and knows its reference policy's continuation (what the
reference roll-out appends after a forced token). The search side (roll-in,
roll-out, sampling) never looks inside a cost.

Every cost works on whole batches of sequences at once: ``hyps`` and ``refs``
are right-padded LongTensors of dictionary ids with explicit lengths; nothing
past a length is read, and sequences carry no EOS.

Users add costs from their own ``--user-dir`` code::

    from searnn_fairseq.costs import SequenceCost, register_cost

    @register_cost("my_cost")
    class MyCost(SequenceCost):
        def __call__(self, hyps, hyp_lens, refs, ref_lens): ...
"""

import re
from typing import Callable, Dict, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor

COST_REGISTRY: Dict[str, Type["SequenceCost"]] = {}


def register_cost(name: str) -> Callable[[Type["SequenceCost"]], Type["SequenceCost"]]:
    def wrap(cls):
        if name in COST_REGISTRY:
            raise ValueError(f"cost {name!r} is already registered")
        cls.name = name
        COST_REGISTRY[name] = cls
        return cls

    return wrap


def build_cost(name: str, dictionary) -> "SequenceCost":
    if name not in COST_REGISTRY:
        raise ValueError(
            f"unknown --cost {name!r}; valid choices: {', '.join(sorted(COST_REGISTRY))}"
        )
    cls = COST_REGISTRY[name]
    cls.check_dictionary(dictionary)
    return cls(dictionary)


class SequenceCost:
    """Base class: batched test error plus the reference roll-out."""

    name = "base"

    def __init__(self, dictionary):
        self.dictionary = dictionary
        self.pad = dictionary.pad()
        self.eos = dictionary.eos()

    def __call__(self, hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_lens: Tensor) -> Tensor:
        """Cost of each hypothesis against its reference, shape (N,), float."""
        raise NotImplementedError

    def reference_rollout(
        self, prefixes: Tensor, cells: Tensor, forced: Tensor, refs: Tensor, ref_lens: Tensor
    ):
        """Finish ``prefixes[i, :cells[i]] + forced[i]`` with the reference policy.

        The paper's reference policy (and ours by default) copies the ground
        truth after the forced cell: ``ref[cells[i] + 1 : ref_lens[i]]``. This is
        optimal for Hamming; a cost with a better oracle overrides this method.
        A forced EOS ends the sequence at the forced cell.

        Returns right-padded ``(hyps, hyp_lens)``.
        """
        n = prefixes.size(0)
        device = prefixes.device
        ends_here = forced.eq(self.eos)
        tail = (ref_lens - cells - 1).clamp(min=0)
        hyp_lens = torch.where(ends_here, cells, cells + 1 + tail)
        width = max(int(hyp_lens.max().item()) if n else 0, 1)
        pos = torch.arange(width, device=device).unsqueeze(0).expand(n, width)
        cell = cells.unsqueeze(1)
        # One pad column keeps gather legal when prefixes (first cell) or refs
        # (all references empty) have width 0; it is never selected.
        prefixes = F.pad(prefixes, (0, 1), value=self.pad)
        refs = F.pad(refs, (0, 1), value=self.pad)
        from_prefix = prefixes.gather(1, pos.clamp(max=prefixes.size(1) - 1))
        from_ref = refs.gather(1, pos.clamp(max=refs.size(1) - 1))
        hyps = torch.where(pos < cell, from_prefix, from_ref)
        hyps = torch.where(pos == cell, forced.unsqueeze(1).expand(n, width), hyps)
        hyps = hyps.masked_fill(pos >= hyp_lens.unsqueeze(1), self.pad)
        return hyps, hyp_lens

    @classmethod
    def check_dictionary(cls, dictionary) -> None:
        """Raise ValueError when the task's dictionary cannot support this cost."""


def _positions(width: int, device) -> Tensor:
    """Row vector 0..width-1, shape (1, width), for masking by lengths."""
    return torch.arange(width, device=device).unsqueeze(0)


@register_cost("hamming")
class HammingCost(SequenceCost):
    """Number of positions that differ, over max(hyp_len, ref_len) positions.

    A position present in only one of the two sequences is an error.
    """

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        width = min(hyps.size(1), refs.size(1))
        common = torch.minimum(hyp_lens, ref_lens).unsqueeze(1)
        differs = hyps[:, :width] != refs[:, :width]
        mismatches = (differs & (_positions(width, hyps.device) < common)).sum(1)
        return (mismatches + (hyp_lens - ref_lens).abs()).float()


@register_cost("normalized_hamming")
class NormalizedHammingCost(HammingCost):
    """Hamming distance divided by the reference length."""

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        return super().__call__(hyps, hyp_lens, refs, ref_lens) / ref_lens.clamp(min=1).float()


def levenshtein(hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_lens: Tensor) -> Tensor:
    """Unit-cost edit distance of each (hyp, ref) pair, shape (N,), int64.

    Row-by-row DP over hypothesis positions, each row computed for the whole
    batch and every reference position at once. Columns past a reference's
    length hold garbage but never flow into D[i][ref_len] (D[i][j] only
    depends on columns <= j); rows past a hypothesis's length are not applied.
    """
    n = hyps.size(0)
    if n == 0:
        return hyp_lens.new_zeros(0)
    hyp_width = int(hyp_lens.max())
    ref_width = int(ref_lens.max())
    refs = refs[:, :ref_width]
    cols = torch.arange(ref_width + 1, device=hyps.device).unsqueeze(0)
    dist = cols.expand(n, ref_width + 1)  # D[0][j] = j insertions
    for i in range(1, hyp_width + 1):
        substitute = dist[:, :-1] + (refs != hyps[:, i - 1 : i]).long()
        delete = dist[:, 1:] + 1
        # E: the row without insertions (steps within the row).
        no_insert = torch.cat([dist[:, :1] + 1, torch.minimum(substitute, delete)], dim=1)
        # D[i][j] = min(E[j], D[i][j-1] + 1) = j + min_{k<=j} (E[k] - k).
        row = cols + torch.cummin(no_insert - cols, dim=1).values
        dist = torch.where((i <= hyp_lens).unsqueeze(1), row, dist)
    return dist.gather(1, ref_lens.unsqueeze(1)).squeeze(1)


@register_cost("edit")
class EditCost(SequenceCost):
    """Levenshtein distance divided by the reference length."""

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        dist = levenshtein(hyps, hyp_lens, refs, ref_lens)
        return dist.float() / ref_lens.clamp(min=1).float()


def clipped_ngram_matches(
    hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_lens: Tensor, max_order: int = 4
) -> Tuple[Tensor, Tensor]:
    """BLEU's clipped n-gram matches and hypothesis n-gram totals, each (N, max_order).

    N-grams are compared exactly (no hashing): the n-gram at hyp position i
    equals the one at position j iff the (n-1)-grams there do and tokens
    i+n-1, j+n-1 do, so pairwise equality grows one order at a time. Each
    distinct hyp n-gram is counted once, at its first occurrence, as
    min(count in hyp, count in ref).
    """
    hyp_width = int(hyp_lens.max()) if hyps.size(0) else 0
    ref_width = int(ref_lens.max()) if hyps.size(0) else 0
    hyps, refs = hyps[:, :hyp_width], refs[:, :ref_width]
    same_hh = hyps.unsqueeze(2) == hyps.unsqueeze(1)  # (N, H, H)
    same_hr = hyps.unsqueeze(2) == refs.unsqueeze(1)  # (N, H, R)
    match_hh, match_hr = same_hh, same_hr
    correct, total = [], []
    for n in range(1, max_order + 1):
        if n > 1:
            match_hh = match_hh[:, :-1, :-1] & same_hh[:, n - 1 :, n - 1 :]
            match_hr = match_hr[:, :-1, :-1] & same_hr[:, n - 1 :, n - 1 :]
        num_hyp_ngrams = (hyp_lens - n + 1).clamp(min=0)
        valid_h = _positions(match_hh.size(1), hyps.device) < num_hyp_ngrams.unsqueeze(1)
        valid_r = _positions(match_hr.size(2), hyps.device) < (ref_lens - n + 1).unsqueeze(1)
        hyp_count = (match_hh & valid_h.unsqueeze(1)).sum(2)
        ref_count = (match_hr & valid_r.unsqueeze(1)).sum(2)
        # Earlier positions j < i of a valid i are valid, so no mask is needed.
        width = match_hh.size(1)
        earlier = torch.ones(width, width, dtype=torch.bool, device=hyps.device).tril(-1)
        first = valid_h & ~(match_hh & earlier).any(2)
        correct.append(torch.where(first, torch.minimum(hyp_count, ref_count), 0).sum(1))
        total.append(num_hyp_ngrams)
    return torch.stack(correct, 1), torch.stack(total, 1)


def sentence_bleu(hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_lens: Tensor) -> Tensor:
    """Sentence BLEU in [0, 100] as sacrebleu.sentence_bleu computes it, float64.

    sacrebleu's defaults: smooth_method="exp" (the k-th order with no match,
    counting from 1, gets precision 1 / (2^k * total)), effective order (only
    orders with total > 0 enter the geometric mean), BLEU = 0 when no n-gram
    matches at all, brevity penalty exp(1 - ref_len / hyp_len) when
    hyp_len < ref_len and 0 for an empty hypothesis.
    """
    correct, total = clipped_ngram_matches(hyps, hyp_lens, refs, ref_lens)
    correct, total = correct.double(), total.double()
    has_ngrams = total > 0
    unmatched = has_ngrams & (correct == 0)
    halvings = torch.cumsum(unmatched.long(), dim=1).double()
    denominator = total.clamp(min=1)
    precision = torch.where(
        unmatched, 100.0 / (torch.pow(2.0, halvings) * denominator), 100.0 * correct / denominator
    )
    log_precision = torch.where(has_ngrams, precision.log(), torch.zeros_like(precision))
    effective_order = has_ngrams.sum(1).clamp(min=1)
    geometric_mean = torch.exp(log_precision.sum(1) / effective_order)
    sys_len, ref_len = hyp_lens.double(), ref_lens.double()
    brevity = torch.where(
        sys_len < ref_len, torch.exp(1 - ref_len / sys_len.clamp(min=1)), torch.ones_like(sys_len)
    )
    brevity = brevity.masked_fill(sys_len == 0, 0.0)
    # Unigram matches are zero exactly when every order's are.
    return torch.where(correct[:, 0] > 0, brevity * geometric_mean, torch.zeros_like(sys_len))


@register_cost("bleu")
class BleuCost(SequenceCost):
    """1 - smoothed sentence BLEU / 100, on token ids."""

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        cost = 1.0 - sentence_bleu(hyps, hyp_lens, refs, ref_lens) / 100.0
        # exp(mean(log p)) of perfect precisions can round to just above 100.
        return cost.clamp(min=0.0).float()


# A BIO tag: kind B or I, then a chunk type. Anything else reads as "O".
_BIO_TAG = re.compile(r"^([BI])-(.+)$")
_OUTSIDE, _BEGIN, _INSIDE = 0, 1, 2
_NO_TYPE = -1


@register_cost("chunk_f1")
class ChunkF1Cost(SequenceCost):
    """1 - chunk F1 (conlleval rules) of IOB2 tag sequences.

    A chunk starts at B-X, or at I-X whose previous tag is not of type X
    (conlleval's I-after-O rule); it ends where the next tag is not I-X. A
    predicted chunk is correct when a gold chunk has the same start, end and
    type. Dictionary symbols that are not B-/I- tags (specials, fillers, "O")
    are outside any chunk.
    """

    def __init__(self, dictionary):
        super().__init__(dictionary)
        kinds, types, type_ids = [], [], {}
        for symbol in dictionary.symbols:
            tag = _BIO_TAG.match(symbol)
            if tag is None:
                kinds.append(_OUTSIDE)
                types.append(_NO_TYPE)
            else:
                kinds.append(_BEGIN if tag.group(1) == "B" else _INSIDE)
                types.append(type_ids.setdefault(tag.group(2), len(type_ids)))
        self.kind_of = torch.tensor(kinds, dtype=torch.long)
        self.type_of = torch.tensor(types, dtype=torch.long)

    @classmethod
    def check_dictionary(cls, dictionary) -> None:
        symbols = [
            s for s in dictionary.symbols[dictionary.nspecial :] if not s.startswith("madeupword")
        ]
        if not any(_BIO_TAG.match(s) for s in symbols):
            raise ValueError(
                f"--cost {cls.name} needs a target dictionary of BIO tags (B-X, I-X, O), "
                f"but none of its {len(symbols)} symbols matches ^[BI]-.+$ "
                f"(first symbols: {symbols[:5]}); use a tagging task or another --cost"
            )

    def _chunks(self, tags: Tensor, lens: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per position: does a chunk start here, its type, where it ends."""
        width = tags.size(1)
        pos = _positions(width, tags.device)
        inside_len = pos < lens.unsqueeze(1)
        # Tokens past a length may be anything: read them as padding (outside).
        tags = tags.masked_fill(~inside_len, self.pad)
        kind = self.kind_of.to(tags.device)[tags]
        typ = self.type_of.to(tags.device)[tags]
        prev_type = F.pad(typ[:, :-1], (1, 0), value=_NO_TYPE)
        next_kind = F.pad(kind[:, 1:], (0, 1), value=_OUTSIDE)
        next_type = F.pad(typ[:, 1:], (0, 1), value=_NO_TYPE)
        starts = (kind == _BEGIN) | ((kind == _INSIDE) & (prev_type != typ))
        continues = (next_kind == _INSIDE) & (next_type == typ)
        ends = (kind != _OUTSIDE) & ~continues
        # The end of the chunk at position t is the first end at or after t.
        end_marks = torch.where(ends, pos.expand_as(ends), width)
        end_of = torch.cummin(end_marks.flip(1), dim=1).values.flip(1)
        return starts, typ, end_of

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        hyp_starts, hyp_type, hyp_end = self._chunks(hyps, hyp_lens)
        ref_starts, ref_type, ref_end = self._chunks(refs, ref_lens)
        w = min(hyps.size(1), refs.size(1))
        same_chunk = (
            hyp_starts[:, :w]
            & ref_starts[:, :w]
            & (hyp_type[:, :w] == ref_type[:, :w])
            & (hyp_end[:, :w] == ref_end[:, :w])
        )
        correct = same_chunk.sum(1).float()
        predicted_plus_gold = (hyp_starts.sum(1) + ref_starts.sum(1)).float()
        # F1 = 2PR / (P + R) = 2 correct / (predicted + gold); 1 when both are empty.
        f1 = torch.where(
            predicted_plus_gold > 0,
            2 * correct / predicted_plus_gold.clamp(min=1),
            torch.ones_like(correct),
        )
        return 1.0 - f1
