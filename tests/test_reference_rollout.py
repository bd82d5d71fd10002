"""Tests for the reference roll-outs of searnn_fairseq.costs: the copy (the
paper's reference policy) against a per-row Python loop, and the best roll-outs
against brute force (every continuation for edit distance, every reference
suffix with sacrebleu for BLEU)."""

import itertools
import random

import pytest
import sacrebleu
import torch

import textbook
from fairseq.data import Dictionary

from searnn_fairseq.costs import (
    COST_REGISTRY,
    append_suffixes,
    build_cost,
    forced_heads,
    levenshtein,
    sentence_bleu,
    suffix_bleu,
)

PAD = 1


@pytest.fixture(scope="module")
def letters():
    d = Dictionary()
    for s in "abcdef":
        d.add_symbol(s)
    return d


def batch(seqs, fill=PAD, min_width=1):
    """Right-pad lists of ids into (LongTensor (N, W), lengths (N,))."""
    width = max([len(s) for s in seqs] + [min_width])
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def unpad(hyps, hyp_lens):
    return [row[:n] for row, n in zip(hyps.tolist(), hyp_lens.tolist())]


def random_rows(rng, d, count, alphabet, max_prefix, max_ref, eos_rate=0.15):
    """Roll-out rows: (roll-in prefix, cell, forced token, reference). The
    roll-in is gold up to some point, then random, and runs past the cell."""
    rows = []
    for _ in range(count):
        ref = [rng.choice(alphabet) for _ in range(rng.randint(0, max_ref))]
        cell = rng.randint(0, max_prefix)
        gold_until = rng.randint(0, cell)
        prefix = ref[:gold_until] + [rng.choice(alphabet) for _ in range(cell + 3)]
        prefix = prefix[: cell + rng.randint(0, 2)]  # the roll-in goes on past the cell
        forced = d.eos() if rng.random() < eos_rate else rng.choice(alphabet)
        rows.append((prefix, cell, forced, ref))
    return rows


def rollout(cost, rows, prefix_fill=9):
    prefixes, _ = batch([r[0] for r in rows], fill=prefix_fill, min_width=0)
    refs, ref_lens = batch([r[3] for r in rows])
    cells = torch.tensor([r[1] for r in rows], dtype=torch.long)
    forced = torch.tensor([r[2] for r in rows], dtype=torch.long)
    hyps, hyp_lens = cost.reference_rollout(prefixes, cells, forced, refs, ref_lens)
    assert hyps.dtype == torch.long and hyp_lens.shape == (len(rows),)
    assert all(t == PAD for row, n in zip(hyps.tolist(), hyp_lens.tolist()) for t in row[n:])
    return unpad(hyps, hyp_lens)


def head_of(d, prefix, cell, forced):
    """What every reference roll-out keeps: the prefix, then the forced token unless it is EOS."""
    return prefix[:cell] + ([] if forced == d.eos() else [forced])


def suffix_start(finished, head, ref):
    """j such that finished == head + ref[j:]; fails if there is none."""
    assert finished[: len(head)] == head
    tail = finished[len(head) :]
    j = len(ref) - len(tail)
    assert j >= 0 and ref[j:] == tail, (finished, head, ref)
    return j


# ---------------------------------------------------------------- interface


def test_build_cost_reference_rollout_modes(letters):
    assert build_cost("edit", letters).reference_rollout_mode == "copy"
    for name in ["hamming", "normalized_hamming", "edit", "bleu", "chunk_f1"]:
        assert COST_REGISTRY[name].reference_rollouts == ("copy", "best")
    assert build_cost("edit", letters, reference_rollout="best").reference_rollout_mode == "best"
    with pytest.raises(ValueError) as err:
        build_cost("edit", letters, reference_rollout="nope")
    assert "copy" in str(err.value) and "best" in str(err.value)


def test_cost_without_best_rollout_is_refused(letters):
    from searnn_fairseq.costs import SequenceCost, register_cost

    @register_cost("_copy_only_for_test")
    class CopyOnly(SequenceCost):
        def __call__(self, hyps, hyp_lens, refs, ref_lens):
            return hyp_lens.float()

    try:
        assert build_cost("_copy_only_for_test", letters).reference_rollout_mode == "copy"
        with pytest.raises(ValueError, match="no 'best' reference roll-out"):
            build_cost("_copy_only_for_test", letters, reference_rollout="best")
    finally:
        del COST_REGISTRY["_copy_only_for_test"]


# ---------------------------------------------------------------- copy


@pytest.fixture(scope="module")
def tags():
    d = Dictionary()
    for s in ["O", "B-NP", "I-NP", "B-VP", "I-VP"]:
        d.add_symbol(s)
    return d


@pytest.mark.parametrize("name", ["hamming", "normalized_hamming", "edit", "bleu", "chunk_f1"])
def test_copy_is_the_default_and_matches_a_loop(name, letters, tags):
    d = tags if name == "chunk_f1" else letters
    rng = random.Random(3)
    rows = random_rows(rng, d, 60, list(range(d.nspecial, len(d))), max_prefix=6, max_ref=6)
    expected = [
        head_of(d, prefix, cell, forced) + ([] if forced == d.eos() else ref[cell + 1 :])
        for prefix, cell, forced, ref in rows
    ]
    assert rollout(build_cost(name, d), rows) == expected
    assert rollout(build_cost(name, d, reference_rollout="copy"), rows) == expected


def test_copy_first_cell_with_empty_prefixes(letters):
    d = letters
    a, b, c = (d.index(s) for s in "abc")
    rows = [([], 0, c, [a, b, c]), ([], 0, d.eos(), [a])]
    assert rollout(build_cost("edit", d), rows) == [[c, b, c], []]
    assert rollout(build_cost("edit", d, reference_rollout="best"), rows) == [[c, b, c], []]


# ---------------------------------------------------------------- hamming


@pytest.mark.parametrize("name", ["hamming", "normalized_hamming"])
def test_hamming_best_is_the_copy(name, letters):
    d = letters
    rows = random_rows(random.Random(4), d, 60, list(range(4, 10)), max_prefix=6, max_ref=6)
    best = rollout(build_cost(name, d, reference_rollout="best"), rows)
    assert best == rollout(build_cost(name, d), rows)


# ---------------------------------------------------------------- edit


def all_sequences(alphabet, max_len):
    return [list(s) for n in range(max_len + 1) for s in itertools.product(alphabet, repeat=n)]


def test_edit_best_against_every_continuation(letters):
    """Brute force: the least edit distance over every continuation of length
    <= ref_len + 2 (an optimal one is never longer than the reference)."""
    d = letters
    alphabet = [d.index(s) for s in "abc"]
    rng = random.Random(5)
    cost = build_cost("edit", d, reference_rollout="best")
    continuations = {n: all_sequences(alphabet, n) for n in range(8)}
    for _ in range(4):
        rows = random_rows(rng, d, 10, alphabet, max_prefix=5, max_ref=5)
        finished = rollout(cost, rows)
        heads, candidates, refs, owner = [], [], [], []
        for i, (prefix, cell, forced, ref) in enumerate(rows):
            head = head_of(d, prefix, cell, forced)
            heads.append(head)
            if forced == d.eos():
                assert finished[i] == head
                continue
            for cont in continuations[len(ref) + 2]:
                candidates.append(head + cont)
                refs.append(ref)
                owner.append(i)
        hyps, hyp_lens = batch(candidates)
        ref_ids, ref_lens = batch(refs)
        dist = levenshtein(hyps, hyp_lens, ref_ids, ref_lens)
        least = {}
        for i, dd in zip(owner, dist.tolist()):
            least[i] = min(least.get(i, dd), dd)
        for i, (prefix, cell, forced, ref) in enumerate(rows):
            if forced == d.eos():
                continue
            assert textbook.levenshtein(finished[i], ref) == least[i], rows[i]
            # Ties: the largest j among the minimisers of D[|head|][j] = ED(head, ref[:j]).
            j = suffix_start(finished[i], heads[i], ref)
            last_row = [textbook.levenshtein(heads[i], ref[:k]) for k in range(len(ref) + 1)]
            assert j == max(k for k, v in enumerate(last_row) if v == min(last_row)), rows[i]


def test_edit_best_hand_examples(letters):
    d = letters
    a, b, c, e, f = (d.index(s) for s in "abcef")
    rows = [
        ([a, c], 2, e, [a, b, c, e]),  # b was skipped: stop, not repeat e (copy: a c e e)
        ([a, a], 2, b, [a, b, c, e]),  # a was repeated: finish with c e (copy: a a b e)
        ([a, b], 2, c, [a, b, c]),  # the gold token: the copy
        ([a, b, c], 3, f, [a, b, c]),  # past the reference: nothing to add
    ]
    best = rollout(build_cost("edit", d, reference_rollout="best"), rows)
    assert best == [[a, c, e], [a, a, b, c, e], [a, b, c], [a, b, c, f]]
    assert [textbook.levenshtein(h, r[3]) for h, r in zip(best, rows)] == [1, 1, 0, 1]
    copy = rollout(build_cost("edit", d), rows)
    assert [textbook.levenshtein(h, r[3]) for h, r in zip(copy, rows)] == [2, 2, 0, 1]


def test_edit_best_never_worse_than_copy(letters):
    d = letters
    rows = random_rows(random.Random(6), d, 300, list(range(4, 8)), max_prefix=12, max_ref=12)
    for name in ["copy", "best"]:
        finished = rollout(build_cost("edit", d, reference_rollout=name), rows)
        if name == "copy":
            copy = [textbook.levenshtein(h, r[3]) for h, r in zip(finished, rows)]
    best = [textbook.levenshtein(h, r[3]) for h, r in zip(finished, rows)]
    assert all(x <= y for x, y in zip(best, copy)) and sum(best) < sum(copy)


# ---------------------------------------------------------------- bleu


def as_words(ids):
    return " ".join(f"w{i}" for i in ids)


def sacre_bleu(hyp, ref):
    return sacrebleu.sentence_bleu(as_words(hyp), [as_words(ref)], tokenize="none").score


def test_suffix_bleu_equals_sentence_bleu_of_every_candidate():
    """The n-gram counting over all suffixes at once against scoring each
    explicit candidate head + ref[j:]; padding of either side never matches."""
    gen = torch.Generator().manual_seed(9)
    for _ in range(60):
        n, width, head_width = 12, int(torch.randint(0, 13, (1,), generator=gen)), 12
        vocab = int(torch.randint(2, 8, (1,), generator=gen))
        refs = torch.randint(4, 4 + vocab, (n, width), generator=gen)
        ref_lens = torch.randint(0, width + 1, (n,), generator=gen)
        prefixes = torch.randint(4, 4 + vocab, (n, head_width), generator=gen)
        cells = torch.randint(0, head_width + 1, (n,), generator=gen)
        forced = torch.randint(4, 4 + vocab, (n,), generator=gen)
        # Padding equal to a real token, on both sides.
        refs = refs.masked_fill(torch.arange(width) >= ref_lens.unsqueeze(1), 4)
        heads, head_lens = forced_heads(prefixes, cells, forced, eos=2, pad=4)
        scores = suffix_bleu(heads, head_lens, refs, ref_lens)
        assert scores.shape == (n, int(ref_lens.max()) + 1) and scores.dtype == torch.float64
        rows, starts = (torch.arange(width + 1) <= ref_lens.unsqueeze(1)).nonzero(as_tuple=True)
        hyps, hyp_lens = append_suffixes(
            heads[rows], head_lens[rows], refs[rows], ref_lens[rows], starts, pad=4
        )
        expected = sentence_bleu(hyps, hyp_lens, refs[rows], ref_lens[rows])
        assert torch.allclose(scores[rows, starts], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("max_chunk_elements", [1 << 24, 64])
def test_bleu_best_against_every_suffix(letters, max_chunk_elements):
    """Brute force with sacrebleu: the highest BLEU over every reference
    suffix, and among (numerically) tied suffixes the largest j."""
    d = letters
    rng = random.Random(7)
    cost = build_cost("bleu", d, reference_rollout="best")
    cost.max_chunk_elements = max_chunk_elements  # 64: one roll-out per chunk
    rows = random_rows(rng, d, 40, list(range(4, 8)), max_prefix=10, max_ref=10)
    rows += random_rows(rng, d, 20, list(range(4, 6)), max_prefix=4, max_ref=4)
    finished = rollout(cost, rows)
    for (prefix, cell, forced, ref), hyp in zip(rows, finished):
        head = head_of(d, prefix, cell, forced)
        if forced == d.eos():
            assert hyp == head
            continue
        scores = [sacre_bleu(head + ref[j:], ref) for j in range(len(ref) + 1)]
        j = suffix_start(hyp, head, ref)
        assert scores[j] == pytest.approx(max(scores), abs=1e-6)
        assert all(s < max(scores) - 1e-6 for s in scores[j + 1 :]), (head, ref, scores)


def test_bleu_best_never_worse_than_copy(letters):
    d = letters
    rows = random_rows(random.Random(8), d, 200, list(range(4, 9)), max_prefix=15, max_ref=15)
    copy = rollout(build_cost("bleu", d), rows)
    best = rollout(build_cost("bleu", d, reference_rollout="best"), rows)
    copy_bleu = [sacre_bleu(h, r[3]) for h, r in zip(copy, rows)]
    best_bleu = [sacre_bleu(h, r[3]) for h, r in zip(best, rows)]
    assert all(b >= c - 1e-6 for b, c in zip(best_bleu, copy_bleu))
    assert sum(best_bleu) > sum(copy_bleu)


# ---------------------------------------------------------------- chunk F1


def chunked_tags(rng, d, max_len):
    """Tags that mostly form chunks: B-X I-X..., O, and now and then a bare I-X."""
    inside = [s for s in d.symbols if s.startswith("I-")]
    tags = []
    while len(tags) < max_len:
        i_tag = rng.choice(inside)
        b_tag = "B-" + i_tag[2:]
        if rng.random() < 0.25 or b_tag not in d.symbols:
            tags.append(i_tag if rng.random() < 0.5 else "O")
        else:
            tags += [b_tag] + [i_tag] * rng.randint(0, 3)
    return [d.index(t) for t in tags[: rng.randint(0, max_len)]]


def test_chunk_f1_best_against_every_continuation():
    """Brute force over every tag continuation of length <= ref_len - cell;
    "I-PP" has no B- tag, and one dictionary has no "O" (UNK stands in)."""
    for symbols in (["O", "B-NP", "I-NP", "B-VP", "I-VP", "I-PP"], ["B-NP", "I-NP", "I-VP"]):
        d = Dictionary()
        for sym in symbols:
            d.add_symbol(sym)
        alphabet = list(range(d.nspecial, len(d)))
        cost = build_cost("chunk_f1", d, reference_rollout="best")
        rng = random.Random(10)
        rows = random_rows(rng, d, 30, alphabet, max_prefix=4, max_ref=5)
        for prefix, cell, forced, _ in random_rows(rng, d, 90, alphabet, max_prefix=4, max_ref=5):
            ref = chunked_tags(rng, d, 5)
            rows.append((ref[: rng.randint(0, cell)] + prefix, cell, forced, ref))
        finished = rollout(cost, rows)
        tags = sorted(set(alphabet) | {d.index("O")})  # with UNK where "O" is missing
        candidates, refs, owner = [], [], []
        for i, (prefix, cell, forced, ref) in enumerate(rows):
            head = head_of(d, prefix, cell, forced)
            assert finished[i][: len(head)] == head
            conts = [[]] if forced == d.eos() else all_sequences(tags, max(len(ref) - cell, 0))
            candidates += [head + c for c in conts]
            refs += [ref] * len(conts)
            owner += [i] * len(conts)
        ref_ids, ref_lens = batch(refs)
        brute = cost(*batch(candidates), ref_ids, ref_lens).tolist()
        least = {}
        for i, c in zip(owner, brute):
            least[i] = min(least.get(i, c), c)
        got = cost(*batch(finished), *batch([r[3] for r in rows])).tolist()
        assert got == pytest.approx([least[i] for i in range(len(rows))], abs=1e-6)
        copy = cost(*batch(rollout(build_cost("chunk_f1", d), rows)), *batch([r[3] for r in rows]))
        assert sum(got) < sum(copy.tolist())


def test_chunk_f1_best_hand_example(tags):
    d = tags
    o, b_np, i_np, b_vp, i_vp = (d.index(s) for s in ["O", "B-NP", "I-NP", "B-VP", "I-VP"])
    rows = [
        ([], 0, o, [b_np, i_np, i_np, o, b_vp]),  # breaks the NP: its rest becomes O
        ([b_vp], 1, i_vp, [b_vp, i_vp, i_vp, o]),  # the gold token: the copy
        ([o], 1, b_np, [o, o, i_np, i_np]),  # I-NP right after an NP tag starts with B-NP
    ]
    best = rollout(build_cost("chunk_f1", d, reference_rollout="best"), rows)
    assert best == [[o, o, o, o, b_vp], [b_vp, i_vp, i_vp, o], [o, b_np, b_np, i_np]]


def test_best_rollout_empty_batch(letters, tags):
    for name in ["edit", "bleu", "hamming", "chunk_f1"]:
        cost = build_cost(name, tags if name == "chunk_f1" else letters, reference_rollout="best")
        empty = torch.zeros(0, 3, dtype=torch.long)
        lens = torch.zeros(0, dtype=torch.long)
        hyps, hyp_lens = cost.reference_rollout(empty, lens, lens, empty, lens)
        assert hyps.size(0) == 0 and hyp_lens.shape == (0,)


@pytest.mark.parametrize("cost", ["edit", "bleu"])
def test_training_step_with_best_reference_rollouts(cost):
    import tiny

    flags = ["--criterion", "searnn_ll", "--cost", cost, "--reference-rollout", "best",
             "--rollin", "learned", "--rollout", "reference"]
    task, model, crit = tiny.build("searnn_gru", flags)
    assert crit.cost.reference_rollout_mode == "best"
    sample = tiny.batch(task.target_dictionary, tiny.random_pairs(6, seed=1))
    loss, _, _ = crit(model, sample)
    loss.backward()
    assert torch.isfinite(loss)


def gap_between_the_two_roll_outs(cost):
    """examples/reference_rollout_gap.py's measure on a tiny untrained model, whose roll-ins and
    learned roll-outs are far from the references (mixed roll-out: both kinds of roll-out)."""
    import tiny
    from examples.reference_rollout_gap import measure

    flags = ["--criterion", "searnn_ll", "--cost", cost, "--rollin", "learned", "--rollout", "mixed"]
    task, model, copied = tiny.build("searnn_gru", [*flags, "--reference-rollout", "copy"], seed=2)
    _, _, best = tiny.build("searnn_gru", [*flags, "--reference-rollout", "best"], seed=2)
    batches = [tiny.batch(task.target_dictionary, tiny.random_pairs(8, seed=s)) for s in (1, 2)]
    return measure(model, copied, best, batches)


def test_the_gap_measure_finds_edit_costs_that_best_lowers_and_none_that_it_raises():
    gap = gap_between_the_two_roll_outs("edit")
    assert gap.reference_rollouts > 0 and gap.lowered > 0
    assert gap.best_cost < gap.copy_cost  # per roll-out, best <= copy: test_edit_best_never_worse_than_copy


def test_the_gap_measure_finds_no_gap_for_hamming_whose_best_is_the_copy():
    gap = gap_between_the_two_roll_outs("hamming")
    assert gap.reference_rollouts > 0
    assert (gap.lowered, gap.target_changed, gap.copy_cost) == (0, 0, gap.best_cost)


def test_the_gap_measure_refuses_searches_that_differ_beyond_their_costs():
    import tiny
    from examples.reference_rollout_gap import Gap

    task, model, crit = tiny.build("searnn_gru", ["--criterion", "searnn_ll", "--cost", "edit",
                                                  "--token-sampling", "uniform", "--sampled-tokens", "2"])
    sample = tiny.batch(task.target_dictionary, tiny.random_pairs(8, seed=1))
    torch.manual_seed(1)
    first = crit.search(model, sample)
    torch.manual_seed(2)
    second = crit.search(model, sample)
    with pytest.raises(RuntimeError, match="differ beyond"):
        Gap().add(first, second)
