"""Task costs: the test error of a finished sequence against its reference.

A cost is the *task* side of learning to search: it scores finished roll-outs
(lower is better) and knows its reference policy's continuation (what the
reference roll-out appends after a forced token: the paper's copy of the ground
truth, or with ``reference_rollout="best"`` the cost's own oracle). The search
side (roll-in, roll-out, sampling) never looks inside a cost.

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


# How a reference roll-out finishes a sequence after its forced token:
#   copy  the paper's reference policy, the ground truth after the forced cell;
#   best  the cost's own oracle, the continuation of least cost (or an
#         approximation where the exact one is intractable, see each cost).
REFERENCE_ROLLOUTS = ("copy", "best")


def build_cost(name: str, dictionary, reference_rollout: str = "copy") -> "SequenceCost":
    if name not in COST_REGISTRY:
        raise ValueError(
            f"unknown --cost {name!r}; valid choices: {', '.join(sorted(COST_REGISTRY))}"
        )
    if reference_rollout not in REFERENCE_ROLLOUTS:
        raise ValueError(
            f"unknown --reference-rollout {reference_rollout!r}; "
            f"valid choices: {', '.join(REFERENCE_ROLLOUTS)}"
        )
    cls = COST_REGISTRY[name]
    if reference_rollout not in cls.reference_rollouts:
        raise ValueError(
            f"--cost {name} has no {reference_rollout!r} reference roll-out; "
            f"valid choices: {', '.join(cls.reference_rollouts)}"
        )
    cls.check_dictionary(dictionary)
    cost = cls(dictionary)
    cost.reference_rollout_mode = reference_rollout
    return cost


class SequenceCost:
    """Base class: batched test error plus the reference roll-out."""

    name = "base"
    # The reference roll-outs this cost implements (see REFERENCE_ROLLOUTS);
    # build_cost sets the one in use.
    reference_rollouts: Tuple[str, ...] = ("copy",)
    reference_rollout_mode = "copy"

    def __init__(self, dictionary):
        self.dictionary = dictionary
        self.pad = dictionary.pad()
        self.eos = dictionary.eos()

    def __call__(self, hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_lens: Tensor) -> Tensor:
        """Cost of each hypothesis against its reference, shape (N,), float."""
        raise NotImplementedError

    def reference_rollout(
        self, prefixes: Tensor, cells: Tensor, forced: Tensor, refs: Tensor, ref_lens: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Finish ``prefixes[i, :cells[i]] + forced[i]`` with the reference policy.

        ``reference_rollout_mode`` picks the policy: "copy" (the default) or
        "best" (see ``best_rollout``). A forced EOS ends the sequence at the
        forced cell, whatever the policy.

        Returns right-padded ``(hyps, hyp_lens)``.
        """
        if self.reference_rollout_mode == "best":
            return self.best_rollout(prefixes, cells, forced, refs, ref_lens)
        return self.copy_rollout(prefixes, cells, forced, refs, ref_lens)

    def copy_rollout(
        self, prefixes: Tensor, cells: Tensor, forced: Tensor, refs: Tensor, ref_lens: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """The paper's reference policy: copy the ground truth after the forced
        cell, ``ref[cells[i] + 1 : ref_lens[i]]`` (nothing past the reference)."""
        heads, head_lens = forced_heads(prefixes, cells, forced, self.eos, self.pad)
        starts = self._no_suffix_after_eos(forced, torch.minimum(cells + 1, ref_lens), ref_lens)
        return append_suffixes(heads, head_lens, refs, ref_lens, starts, self.pad)

    def best_rollout(
        self, prefixes: Tensor, cells: Tensor, forced: Tensor, refs: Tensor, ref_lens: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """The continuation of least cost; a cost that has one lists "best" in
        ``reference_rollouts`` and overrides this method."""
        raise NotImplementedError(f"cost {self.name!r} has no best reference roll-out")

    def _no_suffix_after_eos(self, forced: Tensor, starts: Tensor, ref_lens: Tensor) -> Tensor:
        """``starts``, but the end of the reference (an empty suffix) where EOS is forced."""
        return torch.where(forced.eq(self.eos), ref_lens, starts)

    @classmethod
    def check_dictionary(cls, dictionary) -> None:
        """Raise ValueError when the task's dictionary cannot support this cost."""


def _positions(width: int, device) -> Tensor:
    """Row vector 0..width-1, shape (1, width), for masking by lengths."""
    return torch.arange(width, device=device).unsqueeze(0)


def forced_heads(
    prefixes: Tensor, cells: Tensor, forced: Tensor, eos: int, pad: int
) -> Tuple[Tensor, Tensor]:
    """The fixed start of each reference roll-out: ``prefixes[i, :cells[i]] +
    forced[i]``, or the prefix alone where the forced token is EOS (the
    sequence ends there). Right-padded, with lengths."""
    n = prefixes.size(0)
    ends_here = forced.eq(eos)
    head_lens = torch.where(ends_here, cells, cells + 1)
    width = int(cells.max()) + 1 if n else 1
    pos = _positions(width, prefixes.device).expand(n, width)
    # One pad column keeps gather legal when prefixes have width 0 (first cell).
    prefixes = F.pad(prefixes, (0, 1), value=pad)
    heads = prefixes.gather(1, pos.clamp(max=prefixes.size(1) - 1))
    heads = torch.where(pos == cells.unsqueeze(1), forced.unsqueeze(1).expand(n, width), heads)
    return heads.masked_fill(pos >= head_lens.unsqueeze(1), pad), head_lens


def append_suffixes(
    heads: Tensor, head_lens: Tensor, refs: Tensor, ref_lens: Tensor, starts: Tensor, pad: int
) -> Tuple[Tensor, Tensor]:
    """``heads[i, :head_lens[i]] + refs[i, starts[i] : ref_lens[i]]``, right-padded
    to at least one column, with lengths (``starts[i] <= ref_lens[i]``)."""
    n = heads.size(0)
    hyp_lens = head_lens + ref_lens - starts
    width = max(int(hyp_lens.max()) if n else 0, 1)
    pos = _positions(width, heads.device).expand(n, width)
    head = head_lens.unsqueeze(1)
    # One pad column keeps gather legal when every head or reference is empty.
    heads = F.pad(heads, (0, 1), value=pad)
    refs = F.pad(refs, (0, 1), value=pad)
    from_head = heads.gather(1, pos.clamp(max=heads.size(1) - 1))
    from_ref = refs.gather(1, (pos - head + starts.unsqueeze(1)).clamp(0, refs.size(1) - 1))
    hyps = torch.where(pos < head, from_head, from_ref)
    return hyps.masked_fill(pos >= hyp_lens.unsqueeze(1), pad), hyp_lens


@register_cost("hamming")
class HammingCost(SequenceCost):
    """Number of positions that differ, over max(hyp_len, ref_len) positions.

    A position present in only one of the two sequences is an error.

    Its best reference roll-out is the copy, which is optimal: positions up to
    the forced cell are fixed, and the copy matches every later position and
    makes the lengths equal where they still can be.
    """

    reference_rollouts = ("copy", "best")

    def best_rollout(self, prefixes, cells, forced, refs, ref_lens):
        return self.copy_rollout(prefixes, cells, forced, refs, ref_lens)

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


def prefix_distances(hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_width: int) -> Tensor:
    """Unit-cost edit distance from each whole hypothesis to every reference
    prefix ``ref[:j]``, j = 0..ref_width: the last row D[hyp_len][:] of the
    edit-distance table, shape (N, ref_width + 1), int64.

    Row-by-row DP over hypothesis positions, each row computed for the whole
    batch and every reference position at once. Columns past a reference's
    length hold garbage (D[i][j] only depends on columns <= j, so they never
    reach a valid one); rows past a hypothesis's length are not applied.
    """
    n = hyps.size(0)
    cols = torch.arange(ref_width + 1, device=hyps.device).unsqueeze(0)
    dist = cols.expand(n, ref_width + 1)  # D[0][j] = j insertions
    if n == 0:
        return dist
    hyp_width = int(hyp_lens.max())
    refs = refs[:, :ref_width]
    for i in range(1, hyp_width + 1):
        substitute = dist[:, :-1] + (refs != hyps[:, i - 1 : i]).long()
        delete = dist[:, 1:] + 1
        # E: the row without insertions (steps within the row).
        no_insert = torch.cat([dist[:, :1] + 1, torch.minimum(substitute, delete)], dim=1)
        # D[i][j] = min(E[j], D[i][j-1] + 1) = j + min_{k<=j} (E[k] - k).
        row = cols + torch.cummin(no_insert - cols, dim=1).values
        dist = torch.where((i <= hyp_lens).unsqueeze(1), row, dist)
    return dist


def levenshtein(hyps: Tensor, hyp_lens: Tensor, refs: Tensor, ref_lens: Tensor) -> Tensor:
    """Unit-cost edit distance of each (hyp, ref) pair, shape (N,), int64."""
    if hyps.size(0) == 0:
        return hyp_lens.new_zeros(0)
    dist = prefix_distances(hyps, hyp_lens, refs, int(ref_lens.max()))
    return dist.gather(1, ref_lens.unsqueeze(1)).squeeze(1)


def last_best_start(scores: Tensor, valid: Tensor, lowest: bool, tolerance: float = 0.0) -> Tensor:
    """Per row, the largest column index j among the valid columns whose score
    is the best (lowest or highest) one, up to ``tolerance``. Rows without a
    valid column get -1."""
    sign = -1.0 if lowest else 1.0
    scores = sign * scores.masked_fill(~valid, sign * float("-inf"))
    best = scores.max(1, keepdim=True).values
    tied = valid & (scores >= best - tolerance)
    cols = torch.arange(scores.size(1), device=scores.device).unsqueeze(0)
    return torch.where(tied, cols, -1).max(1).values


@register_cost("edit")
class EditCost(SequenceCost):
    """Levenshtein distance divided by the reference length.

    Its best reference roll-out is exact: it finishes the head p = prefix +
    forced with the reference suffix ref[j:] for the j minimising D[|p|][j],
    the distance from p to ref[:j]. That is optimal: any finished sequence
    p + s is aligned with ref by matching p to some ref[:j] and s to ref[j:],
    so ED(p + s, ref) >= min_j D[|p|][j], and p + ref[j:] reaches that bound
    (align p as in D[|p|][j], then match ref[j:] exactly). Among tied j it
    takes the largest, the shortest continuation: every tied j gives the same
    (least) cost, so only determinism matters, and the shortest sequence is
    the cheapest to score. A gold head ref[:t+1] has the unique best j = t+1,
    which is the copy.
    """

    reference_rollouts = ("copy", "best")

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        dist = levenshtein(hyps, hyp_lens, refs, ref_lens)
        return dist.float() / ref_lens.clamp(min=1).float()

    def best_rollout(self, prefixes, cells, forced, refs, ref_lens):
        heads, head_lens = forced_heads(prefixes, cells, forced, self.eos, self.pad)
        ref_width = int(ref_lens.max()) if ref_lens.numel() else 0
        dist = prefix_distances(heads, head_lens, refs, ref_width)
        valid = _positions(ref_width + 1, refs.device) <= ref_lens.unsqueeze(1)
        starts = last_best_start(dist.double(), valid, lowest=True)
        starts = self._no_suffix_after_eos(forced, starts, ref_lens)
        return append_suffixes(heads, head_lens, refs, ref_lens, starts, self.pad)


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
    """Sentence BLEU in [0, 100] as sacrebleu.sentence_bleu computes it, float64."""
    correct, total = clipped_ngram_matches(hyps, hyp_lens, refs, ref_lens)
    return bleu_from_counts(correct, total, hyp_lens, ref_lens)


def bleu_from_counts(correct: Tensor, total: Tensor, hyp_lens: Tensor, ref_lens: Tensor) -> Tensor:
    """Sentence BLEU in [0, 100] from clipped n-gram matches and hypothesis
    n-gram totals (..., max_order), float64, shape (...).

    sacrebleu's defaults: smooth_method="exp" (the k-th order with no match,
    counting from 1, gets precision 1 / (2^k * total)), effective order (only
    orders with total > 0 enter the geometric mean), BLEU = 0 when no n-gram
    matches at all, brevity penalty exp(1 - ref_len / hyp_len) when
    hyp_len < ref_len and 0 for an empty hypothesis.
    """
    correct, total = correct.double(), total.double()
    has_ngrams = total > 0
    unmatched = has_ngrams & (correct == 0)
    halvings = torch.cumsum(unmatched.long(), dim=-1).double()
    denominator = total.clamp(min=1)
    precision = torch.where(
        unmatched, 100.0 / (torch.pow(2.0, halvings) * denominator), 100.0 * correct / denominator
    )
    log_precision = torch.where(has_ngrams, precision.log(), torch.zeros_like(precision))
    effective_order = has_ngrams.sum(-1).clamp(min=1)
    geometric_mean = torch.exp(log_precision.sum(-1) / effective_order)
    sys_len, ref_len = hyp_lens.double(), ref_lens.double()
    brevity = torch.where(
        sys_len < ref_len, torch.exp(1 - ref_len / sys_len.clamp(min=1)), torch.ones_like(sys_len)
    )
    brevity = brevity.masked_fill(sys_len == 0, 0.0)
    # Unigram matches are zero exactly when every order's are.
    return torch.where(correct[..., 0] > 0, brevity * geometric_mean, torch.zeros_like(sys_len))


def suffix_bleu(
    heads: Tensor, head_lens: Tensor, refs: Tensor, ref_lens: Tensor, max_order: int = 4
) -> Tensor:
    """Sentence BLEU of every ``heads[i, :head_lens[i]] + refs[i, j : ref_lens[i]]``,
    j = 0..W with W = max(ref_lens), shape (N, W + 1), float64; columns
    j > ref_lens[i] are meaningless.

    Counts instead of candidates: only n-grams of the reference can match, so
    with k indexing the reference's distinct n-grams (at their first
    position), the clipped matches of candidate j are
    sum_k min(in_head[k] + in_suffix[j, k] + across[j, k], in_ref[k]), where
    ``across`` counts the n-grams made of the head's last a tokens and the
    suffix's first n - a. That costs O(N * ref_len^2) per order, against
    O(N * ref_len * (head_len + ref_len)^2) for scoring every candidate.
    """
    n = heads.size(0)
    width = int(ref_lens.max()) if n else 0
    device = refs.device
    # At least one column each, so that gathers and cumsums stay legal.
    head_width = max(int(head_lens.max()) if n else 0, 1)
    heads = heads[:, :head_width]
    heads = F.pad(heads, (0, head_width - heads.size(1)), value=-1)
    # (N, W + 1): column j = W stands for the empty suffix; masks exclude it from every n-gram.
    refs = F.pad(refs[:, :width], (0, 1), value=-2)
    ref_pos, head_pos = _positions(width + 1, device), _positions(head_width, device)
    hyp_lens = head_lens.unsqueeze(1) + ref_lens.unsqueeze(1) - ref_pos  # (N, W + 1), over j
    # same_*[m]: the m-grams at two positions are equal (False where one runs past the width).
    same_rr = [None, refs.unsqueeze(2) == refs.unsqueeze(1)]  # (N, W + 1, W + 1)
    same_hr = [None, heads.unsqueeze(2) == refs.unsqueeze(1)]  # (N, H, W + 1)
    for m in range(2, max_order + 1):
        same_rr.append(_grow_ngram_match(same_rr[m - 1], same_rr[1], m))
        same_hr.append(_grow_ngram_match(same_hr[m - 1], same_hr[1], m))
    # fits_ref[m][j]: an m-gram of the reference starts at j; ref_pairs[m][j, k]:
    # the reference m-grams at j and k exist and are equal.
    fits_ref = [None] + [ref_pos + m <= ref_lens.unsqueeze(1) for m in range(1, max_order + 1)]
    ref_pairs = [None] + [
        same_rr[m] & fits_ref[m].unsqueeze(1) & fits_ref[m].unsqueeze(2)
        for m in range(1, max_order + 1)
    ]
    count = torch.int32  # exact, and cheaper than int64 on (N, W + 1, W + 1) tensors
    correct, total = [], []
    for order in range(1, max_order + 1):
        # in_hyp[j, k] starts as in_suffix: reference n-grams at positions >= j
        # equal to the one at k; so in_ref is its row j = 0, and k is the first
        # position of its n-gram when all of them lie at or after k.
        in_hyp = ref_pairs[order].flip(1).cumsum(1, dtype=count).flip(1)
        in_ref = in_hyp[:, 0]
        first = fits_ref[order] & (torch.diagonal(in_hyp, dim1=1, dim2=2) == in_ref)
        head_valid = head_pos + order <= head_lens.unsqueeze(1)
        in_head = (same_hr[order] & head_valid.unsqueeze(2)).sum(1, dtype=count)
        in_hyp = in_hyp + in_head.unsqueeze(1)
        for a in range(1, order):
            # Across the junction: the head's last a tokens equal ref[k : k + a] ...
            last = (head_lens - a).clamp(min=0).view(n, 1, 1).expand(n, 1, width + 1)
            tail_matches = same_hr[a].gather(1, last) & (head_lens >= a).view(n, 1, 1)
            # ... and ref[j : j + order - a] equals ref[k + a : k + order] (both exist).
            shifted = ref_pairs[order - a][:, :, a:]
            shifted = F.pad(shifted, (0, width + 1 - shifted.size(2)), value=False)
            in_hyp += shifted & tail_matches
        clipped = torch.minimum(in_hyp, in_ref.unsqueeze(1)).masked_fill_(~first.unsqueeze(1), 0)
        correct.append(clipped.sum(2))
        total.append((hyp_lens - order + 1).clamp(min=0))
    return bleu_from_counts(
        torch.stack(correct, -1), torch.stack(total, -1), hyp_lens.clamp(min=0),
        ref_lens.unsqueeze(1).expand_as(hyp_lens),
    )


def _grow_ngram_match(shorter: Tensor, same_token: Tensor, m: int) -> Tensor:
    """m-gram equality of positions (i, j) from the (m-1)-gram equality and
    the token equality of i + m - 1 and j + m - 1; False where an m-gram would
    run past the width."""
    rows, cols = max(same_token.size(1) - m + 1, 0), max(same_token.size(2) - m + 1, 0)
    grown = torch.zeros_like(same_token)
    grown[:, :rows, :cols] = shorter[:, :rows, :cols] & same_token[:, m - 1 :, m - 1 :]
    return grown


@register_cost("bleu")
class BleuCost(SequenceCost):
    """1 - smoothed sentence BLEU / 100, on token ids.

    Its best reference roll-out is the best reference suffix: it finishes the
    head p = prefix + forced with the ref[j:], j = 0..ref_len, that gives
    p + ref[j:] the highest sentence BLEU, j chosen per roll-out. The exact
    optimum over all continuations is intractable; this one is at least as
    good as the copy (j = cell + 1 is a candidate) and, unlike it, can skip
    or repeat reference tokens after an early or late forced token. Among tied
    j (BLEU within ``tie_tolerance``) it takes the largest, the shortest
    continuation: tied candidates have the same cost, and the shortest is the
    cheapest to score.
    """

    reference_rollouts = ("copy", "best")
    tie_tolerance = 1e-9  # BLEU points
    # Bound on the elements of the (rows x suffixes x n-grams) tensors that
    # suffix_bleu allocates a few of; larger batches are scored in row chunks.
    max_chunk_elements = 1 << 24

    def __call__(self, hyps, hyp_lens, refs, ref_lens):
        cost = 1.0 - sentence_bleu(hyps, hyp_lens, refs, ref_lens) / 100.0
        # exp(mean(log p)) of perfect precisions can round to just above 100.
        return cost.clamp(min=0.0).float()

    def best_rollout(self, prefixes, cells, forced, refs, ref_lens):
        heads, head_lens = forced_heads(prefixes, cells, forced, self.eos, self.pad)
        ref_width = int(ref_lens.max()) if ref_lens.numel() else 0
        scores = torch.zeros(heads.size(0), ref_width + 1, dtype=torch.float64, device=refs.device)
        rows_per_chunk = max(1, self.max_chunk_elements // (ref_width + 1) ** 2)
        for i in range(0, heads.size(0), rows_per_chunk):
            chunk = slice(i, i + rows_per_chunk)
            bleu = suffix_bleu(heads[chunk], head_lens[chunk], refs[chunk], ref_lens[chunk])
            scores[chunk, : bleu.size(1)] = bleu
        valid = _positions(ref_width + 1, refs.device) <= ref_lens.unsqueeze(1)
        # Candidates whose BLEU differ only by rounding (e.g. precisions
        # 3/4, 1/2 against 3/5, 5/8) count as tied.
        best = last_best_start(scores, valid, lowest=False, tolerance=self.tie_tolerance)
        best = self._no_suffix_after_eos(forced, best, ref_lens)
        return append_suffixes(heads, head_lens, refs, ref_lens, best, self.pad)


def _column(x: Tensor, index: Tensor, fill) -> Tensor:
    """x[i, index[i]] per row, ``fill`` where index[i] is past x's width."""
    x = F.pad(x, (0, 1), value=fill)  # keeps gather legal for width 0
    picked = x.gather(1, index.clamp(max=x.size(1) - 1).unsqueeze(1)).squeeze(1)
    return torch.where(index < x.size(1) - 1, picked, torch.full_like(picked, fill))


def _last_marked_position(marks: Tensor) -> Tensor:
    """Per position, the last marked position at or before it (-1 if none)."""
    pos = _positions(marks.size(1), marks.device).expand_as(marks)
    return torch.cummax(torch.where(marks, pos, -1), dim=1).values


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

    Its best reference roll-out is exact: the copy, with two repairs. The
    copy is not optimal after a forced tag that breaks a gold chunk: its
    copied remainder forms a spurious chunk (forced O, then I-NP I-NP of the
    gold B-NP I-NP I-NP O B-VP, gives F1 1/2; O tags instead give 2/3). Why
    the repaired copy is optimal: chunks that end before the forced cell t
    are fixed; the predicted chunk through t (if any) has a fixed start and
    type, so it is correct only if it extends to the end of the gold chunk of
    that start and type; every other chunk lies after t, where each gold
    chunk reproduced adds one to both the correct and the predicted counts
    (which raises F1 = 2 correct / (predicted + gold)) and any other chunk
    only adds to the predicted count. So the best continuation extends the
    chunk through t when it can be correct, reproduces every gold chunk that
    starts after t, and predicts nothing else:
      - the rest of a gold chunk through t that the prediction cannot match
        becomes "O" (or, without an "O" symbol, UNK, which reads as outside);
      - a gold chunk that starts right after t with the type of the tag at t
        starts with its B- tag (an I- tag would extend the chunk through t).
    Where that type has no B- tag no continuation can start the chunk there,
    and the copy's I- tags cost nothing.
    """

    reference_rollouts = ("copy", "best")

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
        # The B- tag of each chunk type, -1 where the dictionary has none.
        begin_of = [-1] * len(type_ids)
        for index, (kind, typ) in enumerate(zip(kinds, types)):
            if kind == _BEGIN:
                begin_of[typ] = index
        self.begin_of_type = torch.tensor(begin_of + [-1], dtype=torch.long)  # last: _NO_TYPE
        self.outside = dictionary.index("O")  # UNK where there is no "O"

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

    def best_rollout(self, prefixes, cells, forced, refs, ref_lens):
        hyps, hyp_lens = self.copy_rollout(prefixes, cells, forced, refs, ref_lens)
        device = hyps.device
        pos = _positions(hyps.size(1), device)
        cell, after = cells.unsqueeze(1), (cells + 1).unsqueeze(1)
        continues = ~forced.eq(self.eos)
        gold_starts, gold_type, gold_end = self._chunks(refs, ref_lens)
        gold_start_of = _last_marked_position(gold_starts)
        # The head's chunk starts only look back, so they are those of the finished copy.
        head_starts, head_type, _ = self._chunks(hyps, torch.minimum(cells + 1, hyp_lens))
        head_start_of = _last_marked_position(head_starts)
        type_at_cell = _column(head_type, cells, _NO_TYPE)
        gold_type_at_cell = _column(gold_type, cells, _NO_TYPE)
        # The rest of the gold chunk through t, unless the head's chunk there matches it.
        broken = (gold_type_at_cell != _NO_TYPE) & continues & ~(
            (type_at_cell == gold_type_at_cell)
            & (_column(head_start_of, cells, -1) == _column(gold_start_of, cells, -2))
        )
        rest = (pos > cell) & (pos <= _column(gold_end, cells, -1).unsqueeze(1))
        rest &= broken.unsqueeze(1) & (pos < hyp_lens.unsqueeze(1))
        hyps = hyps.masked_fill(rest, self.outside)
        # A gold chunk right after t, of the type of the tag at t, starts with its B- tag.
        begin = self.begin_of_type.to(device)[type_at_cell]
        restart = (
            continues
            & (type_at_cell != _NO_TYPE)
            & _column(gold_starts, cells + 1, False)
            & (_column(gold_type, cells + 1, _NO_TYPE) == type_at_cell)
            & (begin >= 0)
            & (cells + 1 < hyp_lens)
        )
        at_next = (pos == after) & restart.unsqueeze(1)
        hyps = torch.where(at_next, begin.unsqueeze(1).expand_as(hyps), hyps)
        return hyps, hyp_lens

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
