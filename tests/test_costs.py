"""Tests for searnn_fairseq.costs: each cost against hand-computed values or a
reference implementation (textbook DP, sacrebleu), plus properties."""

import random

import pytest
import sacrebleu
import torch

import textbook
from fairseq.data import Dictionary
from hypothesis import given, settings
from hypothesis import strategies as st

from searnn_fairseq.costs import (
    COST_REGISTRY,
    SequenceCost,
    build_cost,
    levenshtein,
)

PAD = 1  # fairseq's default pad id, used to right-pad batches here


@pytest.fixture(scope="module")
def letters():
    d = Dictionary()
    for s in "abcdef":
        d.add_symbol(s)
    return d


@pytest.fixture(scope="module")
def tags():
    d = Dictionary()
    for s in ["O", "B-NP", "I-NP", "B-VP", "I-VP"]:
        d.add_symbol(s)
    d.pad_to_multiple_(8)  # adds "madeupword" fillers, which must read as "O"
    return d


def batch(seqs, fill=PAD):
    """Right-pad lists of ids into (LongTensor (N, W), lengths (N,))."""
    width = max([len(s) for s in seqs] + [1])
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def encode(d, words):
    return [d.index(w) for w in words]


def cost_of(cost, hyp_seqs, ref_seqs, fill=PAD):
    hyps, hyp_lens = batch(hyp_seqs, fill)
    refs, ref_lens = batch(ref_seqs, fill)
    out = cost(hyps, hyp_lens, refs, ref_lens)
    assert out.dtype == torch.float32 and out.shape == (len(hyp_seqs),)
    return out


def random_pairs(rng, count, max_len, vocab, min_len=0):
    ids = list(range(4, 4 + vocab))
    return [
        (
            [rng.choice(ids) for _ in range(rng.randint(min_len, max_len))],
            [rng.choice(ids) for _ in range(rng.randint(min_len, max_len))],
        )
        for _ in range(count)
    ]


# ---------------------------------------------------------------- registry


def test_build_cost_unknown_lists_choices(letters):
    with pytest.raises(ValueError) as err:
        build_cost("nope", letters)
    for name in ["hamming", "normalized_hamming", "edit", "bleu", "chunk_f1"]:
        assert name in str(err.value)


def test_build_cost_builds_registered_class(letters):
    cost = build_cost("edit", letters)
    assert isinstance(cost, COST_REGISTRY["edit"]) and cost.name == "edit"


@pytest.mark.parametrize("name", ["hamming", "normalized_hamming", "edit", "bleu", "chunk_f1"])
def test_empty_batch(name, tags):
    cost = COST_REGISTRY[name](tags)
    empty = torch.zeros(0, 3, dtype=torch.long)
    lens = torch.zeros(0, dtype=torch.long)
    out = cost(empty, lens, empty, lens)
    assert out.shape == (0,) and out.dtype == torch.float32


# ---------------------------------------------------------------- hamming


def test_hamming_hand_examples(letters):
    d = letters
    hyps = [encode(d, "abc"), encode(d, "abd"), encode(d, "ab"), encode(d, "abcde"), []]
    refs = [encode(d, "abc"), encode(d, "abc"), encode(d, "abcd"), encode(d, "xbc"), encode(d, "ab")]
    expected = [0.0, 1.0, 2.0, 3.0, 2.0]  # "abcde" vs "xbc": a/x + 2 extra
    assert cost_of(build_cost("hamming", d), hyps, refs).tolist() == expected
    normalized = cost_of(build_cost("normalized_hamming", d), hyps, refs)
    assert torch.allclose(normalized, torch.tensor([0.0, 1 / 3, 2 / 4, 3 / 3, 2 / 2]))


def test_hamming_ignores_entries_past_lengths(letters):
    cost = build_cost("hamming", letters)
    a = encode(letters, "ab")
    # Same sequences, different garbage past the lengths.
    assert cost_of(cost, [a], [a], fill=7).item() == 0.0
    hyps = torch.tensor([a + [5, 6]])
    refs = torch.tensor([a + [8, 9]])
    lens = torch.tensor([2])
    assert cost(hyps, lens, refs, lens).item() == 0.0


def test_normalized_hamming_empty_reference(letters):
    cost = build_cost("normalized_hamming", letters)
    assert cost_of(cost, [encode(letters, "ab")], [[]]).item() == 2.0


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(4, 6), max_size=8),
    st.lists(st.integers(4, 6), max_size=8),
)
def test_hamming_bounds(hyp, ref):
    cost = cost_of(COST_REGISTRY["hamming"](Dictionary()), [hyp], [ref]).item()
    assert abs(len(hyp) - len(ref)) <= cost <= max(len(hyp), len(ref))
    assert (cost == 0) == (hyp == ref)


# ---------------------------------------------------------------- edit


def test_edit_hand_examples():
    d = Dictionary()
    for s in "kitensg":
        d.add_symbol(s)
    cost = build_cost("edit", d)
    hyps = [encode(d, "kitten"), encode(d, "sitting"), encode(d, ""), encode(d, "kit")]
    refs = [encode(d, "sitting"), encode(d, "kitten"), encode(d, "kit"), encode(d, "")]
    out = cost_of(cost, hyps, refs)
    assert torch.allclose(out, torch.tensor([3 / 7, 3 / 6, 3 / 3, 3 / 1]))


def test_edit_matches_textbook_dp():
    rng = random.Random(0)
    pairs = random_pairs(rng, 300, max_len=12, vocab=4)
    hyps, hyp_lens = batch([h for h, _ in pairs], fill=0)
    refs, ref_lens = batch([r for _, r in pairs], fill=9)
    got = levenshtein(hyps, hyp_lens, refs, ref_lens).tolist()
    assert got == [textbook.levenshtein(h, r) for h, r in pairs]
    cost = COST_REGISTRY["edit"](Dictionary())(hyps, hyp_lens, refs, ref_lens)
    expected = [textbook.levenshtein(h, r) / max(len(r), 1) for h, r in pairs]
    assert torch.allclose(cost, torch.tensor(expected))


def distance(a, b):
    ha, la = batch([a])
    hb, lb = batch([b])
    return levenshtein(ha, la, hb, lb).item()


short_seqs = st.lists(st.integers(4, 6), max_size=7)


@settings(max_examples=60, deadline=None)
@given(short_seqs, short_seqs, short_seqs)
def test_edit_distance_metric_properties(a, b, c):
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, c) <= distance(a, b) + distance(b, c)
    # The cost is the distance normalised by the reference length.
    cost = cost_of(COST_REGISTRY["edit"](Dictionary()), [a], [b]).item()
    assert cost * max(len(b), 1) == pytest.approx(distance(a, b))


# ---------------------------------------------------------------- bleu


def as_words(ids):
    return " ".join(f"w{i}" for i in ids)


def sacrebleu_cost(hyp, ref):
    return 1 - sacrebleu.sentence_bleu(as_words(hyp), [as_words(ref)], tokenize="none").score / 100


def test_bleu_matches_sacrebleu():
    rng = random.Random(1)
    pairs = random_pairs(rng, 300, max_len=30, vocab=4, min_len=1)
    pairs += random_pairs(rng, 100, max_len=3, vocab=3, min_len=1)  # short hyps
    pairs += [(h, h) for h, _ in pairs[:50]]  # identical pairs
    pairs += [([4, 5, 6, 7], [4, 5, 6, 7, 4, 5]), ([4], [5, 6]), ([4, 4, 4], [4])]
    hyps, hyp_lens = batch([h for h, _ in pairs], fill=0)
    refs, ref_lens = batch([r for _, r in pairs], fill=4)  # fill collides with real ids
    got = COST_REGISTRY["bleu"](Dictionary())(hyps, hyp_lens, refs, ref_lens)
    expected = torch.tensor([sacrebleu_cost(h, r) for h, r in pairs])
    assert torch.allclose(got.double(), expected.double(), atol=1e-4, rtol=0)
    # The smoothing must matter: some costs are strictly between 0 and 1.
    assert ((expected > 0.01) & (expected < 0.99)).sum() > 50


def test_bleu_empty_hypothesis_costs_one():
    assert cost_of(COST_REGISTRY["bleu"](Dictionary()), [[]], [[4, 5]]).item() == 1.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(4, 7), min_size=1, max_size=10), st.lists(st.integers(4, 7), min_size=1, max_size=10))
def test_bleu_cost_in_unit_interval(hyp, ref):
    bleu = COST_REGISTRY["bleu"](Dictionary())
    cost = cost_of(bleu, [hyp], [ref]).item()
    assert 0.0 <= cost <= 1.0
    if len(hyp) >= 4:
        assert cost_of(bleu, [hyp], [hyp]).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- chunk_f1


@pytest.mark.parametrize(
    "hyp, ref, f1",
    [
        ("B-NP I-NP O B-VP", "B-NP I-NP O B-NP", 0.5),  # type differs on one chunk
        ("B-NP I-NP O B-NP", "B-NP I-NP O B-NP", 1.0),
        ("B-NP O B-NP", "B-NP I-NP B-NP", 0.5),  # first chunk ends too early
        ("O I-NP I-NP", "O B-NP I-NP", 1.0),  # I- after O starts a chunk
        ("B-VP I-NP", "B-VP B-NP", 1.0),  # I- of another type starts a chunk
        ("B-NP B-NP", "B-NP I-NP", 0.0),  # 2 predicted, 1 gold, 0 correct
        ("O O", "O O", 1.0),  # no chunks on either side
        ("O O", "B-NP O", 0.0),
        ("B-NP", "O", 0.0),
        ("B-NP I-NP I-NP O", "B-NP I-NP", 0.0),  # longer hyp: chunk ends later
        ("B-NP I-NP B-VP", "B-NP I-NP", 2 / 3),
    ],
)
def test_chunk_f1_hand_examples(tags, hyp, ref, f1):
    cost = build_cost("chunk_f1", tags)
    out = cost_of(cost, [encode(tags, hyp.split())], [encode(tags, ref.split())])
    assert out.item() == pytest.approx(1 - f1)


def test_chunk_f1_batched_and_specials_are_outside(tags):
    cost = build_cost("chunk_f1", tags)
    filler = tags.index("madeupword0000")
    assert filler != tags.unk()
    hyps = [encode(tags, "B-NP I-NP".split()) + [filler], encode(tags, "B-VP".split()) + [tags.eos()]]
    refs = [encode(tags, "B-NP I-NP O".split()), encode(tags, "B-VP O".split())]
    # Garbage past the lengths (B-NP everywhere) must not create chunks.
    out = cost_of(cost, hyps, refs, fill=tags.index("B-NP"))
    assert out.tolist() == [0.0, 0.0]


def test_chunk_f1_rejects_non_tag_dictionary(letters, tags):
    with pytest.raises(ValueError, match="BIO"):
        build_cost("chunk_f1", letters)
    COST_REGISTRY["chunk_f1"].check_dictionary(tags)  # does not raise


# ---------------------------------------------------------------- reference roll-out


def test_reference_rollout_hand_example(letters):
    d = letters
    a, b, c, dd, e, f = encode(d, "abcdef")
    cost = SequenceCost(d)
    prefixes, _ = batch([[a, b], [], [b], [a, b, c]], fill=9)
    cells = torch.tensor([2, 0, 1, 3])
    forced = torch.tensor([c, f, d.eos(), dd])
    refs, ref_lens = batch([[a, b, dd, e], [c, dd], [a, b, c], [a, b]], fill=9)
    hyps, hyp_lens = cost.reference_rollout(prefixes, cells, forced, refs, ref_lens)
    expected = [
        [a, b, c, e],  # forced token replaces ref[2], then ref[3:]
        [f, dd],  # first cell: forced, then ref[1:]
        [b],  # forced EOS ends the sequence at the cell
        [a, b, c, dd],  # past the reference: nothing to copy
    ]
    assert hyp_lens.tolist() == [len(s) for s in expected]
    for row, seq in zip(hyps.tolist(), expected):
        assert row[: len(seq)] == seq
        assert all(t == d.pad() for t in row[len(seq) :])


def test_reference_rollout_first_cell_with_empty_prefixes(letters):
    d = letters
    cost = SequenceCost(d)
    a, b, c = encode(d, "abc")
    prefixes = torch.zeros(2, 0, dtype=torch.long)
    refs, ref_lens = batch([[a, b, c], [a]])
    hyps, hyp_lens = cost.reference_rollout(
        prefixes, torch.tensor([0, 0]), torch.tensor([c, d.eos()]), refs, ref_lens
    )
    assert hyp_lens.tolist() == [3, 0]
    assert hyps[0].tolist() == [c, b, c]
